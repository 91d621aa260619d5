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
