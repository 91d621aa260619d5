//! AF_UNIX sockets of every kind across dump and restore (issue #10, item 3): the unix victim
//! (tests/victims/unix.c) checks each socket's type, name, peer name, queue sizes, SO_PASSCRED
//! and listening state before the dump and after each restore, and at the end reads every
//! queue, talks both ways on each pair, accepts the connections that waited in its listeners
//! (in order) and checks the shutdown states. What crest refuses is refused naming the process
//! and fd, and the process runs on untouched.

mod common;

use std::ffi::OsStr;
use std::io::Read;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener, UnixStream};

use common::*;

fn start(args: &[&str]) -> Victim {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let v = Victim::start_with(Kind::Unix, move |cmd| {
        cmd.args(&args);
    });
    v.verify_with("check")
        .unwrap_or_else(|e| panic!("before any dump: {e}"));
    v
}

/// A dump that must fail: it names the process and `fd` and every `needle`, and leaves the
/// victim running, unchanged (its checks still pass).
fn assert_refused(v: &Victim, fd: i32, needles: &[&str]) {
    let dir = v.work.join("refused");
    let out = dump(v.pid, &dir, false);
    out.assert_failed()
        .assert_stderr_mentions(&format!("process {}", v.pid))
        .assert_stderr_mentions(&format!("fd {fd}"));
    for n in needles {
        out.assert_stderr_mentions(n);
    }
    v.assert_running();
    v.verify_with("check")
        .unwrap_or_else(|e| panic!("after the refused dump: {e}"));
}

#[test]
fn every_kind_of_unix_socket_survives_two_cycles_with_its_data_names_and_peers() {
    let mut v = start(&[]);
    let fds_before = v.fd_table();
    for cycle in 1..=2 {
        let dir = v.work.join(format!("img{cycle}"));
        let before = v.last_logged();
        dump(v.pid, &dir, false).assert_ok();
        v.reap();
        let text = show_json(&dir).to_string();
        for want in ["Queued", "Abstract", "Listening", "\"from\""] {
            assert!(text.contains(want), "cycle {cycle}: no {want} in {text}");
        }
        restore_detached(&dir, &[]).assert_ok();
        v.mark_restored();
        v.wait_logging_after(before);
        v.verify_with("check")
            .unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        assert_eq!(v.fd_table(), fds_before, "cycle {cycle}: fd table changed");
    }
    v.verify_with("final")
        .unwrap_or_else(|e| panic!("final check after two cycles: {e}"));
}

#[test]
fn a_connection_to_a_server_outside_the_tree_is_refused_or_connected_again_with_ext_unix_sk() {
    let name = format!("crest-test-ext-{}", std::process::id());
    let server = UnixListener::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
    let mut v = start(&["ext", &name]);
    let (_old, _) = server.accept().unwrap();
    assert_refused(&v, 120, &[&format!("@{name}"), "--ext-unix-sk"]);

    let dir = v.work.join("img");
    let before = v.last_logged();
    dump_with(v.pid, &dir, &[OsStr::new("--ext-unix-sk")]).assert_ok();
    v.reap();
    // Without the option the restore refuses, naming the outside peer.
    let out = restore_detached(&dir, &[]);
    out.assert_failed()
        .assert_stderr_mentions(&format!("@{name}"))
        .assert_stderr_mentions("--ext-unix-sk");
    restore_detached(&dir, &["--ext-unix-sk"]).assert_ok();
    v.mark_restored();
    v.wait_logging_after(before);
    // The restored socket is a new connection to the same server.
    let (mut new, _) = server.accept().unwrap();
    v.verify_with("final").unwrap();
    new.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut got = [0u8; 3];
    new.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ext");
}

/// Files in flight are dumped and sent again (tests/scm.rs checks what arrives).
#[test]
fn an_fd_in_flight_no_longer_stops_a_dump() {
    let mut v = start(&["scm"]);
    let dir = v.work.join("img");
    let before = v.last_logged();
    dump(v.pid, &dir, false).assert_ok();
    v.reap();
    let text = show_json(&dir).to_string();
    let carries = text
        .match_indices("\"fds\":[")
        .any(|(i, m)| text[i + m.len()..].starts_with(|c: char| c.is_ascii_digit()));
    assert!(carries, "no message carrying a file in {text}");
    restore_detached(&dir, &[]).assert_ok();
    v.mark_restored();
    v.wait_logging_after(before);
    v.verify_with("check")
        .unwrap_or_else(|e| panic!("after the restore: {e}"));
}

#[test]
fn a_waiting_connection_that_already_sent_data_is_refused() {
    let v = start(&["pending-data"]);
    assert_refused(&v, 120, &["waits to be accepted with data already sent"]);
}

#[test]
fn a_waiting_connection_from_outside_the_tree_is_refused_never_dropped() {
    let v = start(&[]);
    let _outside = UnixStream::connect(v.ctl.join("listen")).unwrap();
    assert_refused(
        &v,
        111,
        &[
            "3 connection(s) waiting",
            "1 of them from a process outside",
        ],
    );
}

#[test]
fn a_datagram_from_a_named_socket_outside_the_tree_is_refused_with_the_count() {
    let v = start(&[]);
    let name = format!("crest-test-dg-{}", std::process::id());
    let outside = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
    outside.send_to(b"x", v.ctl.join("dgram")).unwrap();
    assert_refused(
        &v,
        106,
        &[&format!("3 queued datagram(s), 1 of them from @{name}")],
    );
}

/// Holds AF_UNIX sockets whose SO_PEERCRED names different processes and ids, and reports, for
/// each, what getsockopt(SO_PEERCRED) says (pid, uid, gid) and whether the pair still carries a
/// byte: a stream pair it made itself (the channel its children send their sockets through); a
/// datagram pair that a child made under uid/gid 60001 and then exited (zdtm's sock_peercred);
/// a listener; a connection to it from a child under uid/gid 60002 that exited (the connecting
/// end names the listener, the accepted end the dead child).
const PEERCRED_VICTIM: &str = r#"
import json, os, socket, struct
me = os.getpid()
def creds(s):
    return list(struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)))
own = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
def child(ids, make):
    pid = os.fork()
    if pid == 0:
        os.setgid(ids)
        os.setuid(ids)
        made = make()
        socket.send_fds(own[1], [b"x"], [s.fileno() for s in made])
        os._exit(0)
    _, fds, _, _ = socket.recv_fds(own[0], 1, 2)
    assert os.waitpid(pid, 0)[1] == 0
    return pid, [socket.socket(fileno=fd) for fd in fds]
c1, pair = child(60001, lambda: socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM))
name = b"\0crest-peercred-%d" % me
lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
lst.bind(name)
lst.listen(4)
def connect():
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect(name)
    return [c]
c2, (client,) = child(60002, connect)
accepted, _ = lst.accept()

def carries(a, b):
    a.send(b"p")
    return b.recv(1) == b"p"

def state():
    return json.dumps({
        "pids": [me, c1, c2],
        "own": [creds(own[0]), creds(own[1])],
        "child": [creds(pair[0]), creds(pair[1])],
        "listener": creds(lst),
        "client": creds(client),
        "accepted": creds(accepted),
        "talk": [carries(own[0], own[1]), carries(pair[1], pair[0]),
                 carries(client, accepted), carries(accepted, client)],
    }, sort_keys=True)

serve(lambda data: state())
"#;

#[test]
fn so_peercred_of_pairs_listeners_and_connections_names_their_makers_after_a_restore() {
    setup();
    let work = tempfile::tempdir().unwrap();
    let v = ControlledVictim::start(PEERCRED_VICTIM, work.path(), &[]);
    let pid = v.pid();
    let before = v.ask(b"state");
    let state: serde_json::Value = serde_json::from_str(&before).unwrap();
    let (uid, gid) = (
        nix::unistd::geteuid().as_raw() as i64,
        nix::unistd::getegid().as_raw() as i64,
    );
    let pids = &state["pids"];
    assert_eq!(pids[0], pid, "{before}");
    let mine = serde_json::json!([pid, uid, gid]);
    let first = serde_json::json!([pids[1], 60001, 60001]);
    assert_eq!(state["own"], serde_json::json!([mine, mine]), "{before}");
    assert_eq!(
        state["child"],
        serde_json::json!([first, first]),
        "{before}"
    );
    assert_eq!(state["listener"], mine, "{before}");
    assert_eq!(
        state["client"], mine,
        "the connecting end names the listener: {before}"
    );
    assert_eq!(
        state["accepted"],
        serde_json::json!([pids[2], 60002, 60002]),
        "the accepted end names the connector: {before}"
    );
    assert_eq!(
        state["talk"],
        serde_json::json!([true, true, true, true]),
        "{before}"
    );

    let with_r = work.path().join("img-R");
    dump(pid, &with_r, true).assert_ok();
    assert_eq!(v.ask(b"state"), before, "after a dump with -R");
    let json = show_json(&with_r).to_string();
    assert!(
        json.contains("peer_creds"),
        "no peer credentials in the image: {json}"
    );

    let dir = work.path().join("img");
    dump(pid, &dir, false).assert_ok();
    reap_pid(pid, TIMEOUT).expect("the dumped victim is gone");
    restore_detached(&dir, &[]).assert_ok();
    assert_eq!(v.ask(b"state"), before, "after a dump and restore");

    // The image of the dump with -R, restored once the process is gone.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    reap_pid(pid, TIMEOUT).expect("the restored victim is gone");
    restore_detached(&with_r, &[]).assert_ok();
    assert_eq!(
        v.ask(b"state"),
        before,
        "after restoring the image of the dump with -R"
    );
}

/// Holds, as its standard input, a listener the test made (the test, outside the tree, is its
/// creator, as a supervisor handing a service its socket is, and still runs at restore), and
/// answers "state" with the listener's SO_PEERCRED (pid, uid, gid: its maker's at listen).
const OUTSIDE_LISTENER_VICTIM: &str = r#"
import socket, struct
s = socket.socket(fileno=0)

def state():
    pid, uid, gid = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return "%d %d %d" % (pid, uid, gid)

serve(lambda data: state())
"#;

#[test]
fn a_listener_made_by_a_process_outside_the_tree_that_still_runs_keeps_its_ids_under_another_pid() {
    setup();
    let work = tempfile::tempdir().unwrap();
    let name = format!("crest-test-outside-listener-{}", std::process::id());
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let listener = UnixListener::bind_addr(&addr).unwrap();
    let v = ControlledVictim::start_with_stdin(
        OUTSIDE_LISTENER_VICTIM,
        work.path(),
        &[],
        std::process::Stdio::from(std::os::fd::OwnedFd::from(listener)),
    );
    let me = std::process::id();
    assert_eq!(v.ask(b"state"), format!("{me} 0 0"), "made by the test");
    let dir = work.path().join("img");
    dump(v.pid(), &dir, false).assert_ok();
    reap_pid(v.pid(), TIMEOUT).expect("the dumped victim is gone");
    let out = restore_detached(&dir, &[]);
    out.assert_ok();
    out.assert_stderr_mentions(&format!("naming pid {me}, which a process outside"));
    let after = v.ask(b"state");
    let fields: Vec<&str> = after.split(' ').collect();
    assert_eq!(fields[1..], ["0", "0"], "uid and gid kept: {after}");
    assert_ne!(fields[0], me.to_string(), "another pid: {after}");
    // The restored listener accepts under its name.
    UnixStream::connect_addr(&addr).expect("the restored listener takes connections");
}
