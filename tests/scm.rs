//! Files and credentials in flight in UNIX socket queues (SCM_RIGHTS, SCM_CREDENTIALS): the scm
//! victim (tests/victims/scm.c) queues a message carrying a pipe's read end with bytes in it, a
//! file at an offset and a datagram socket with a queue of its own (all closed by the sender),
//! a record carrying its own socket and one carrying the same file again, and the test sends a
//! datagram with its credentials to a socket with SO_PASSCRED (and, in a mode, the victim
//! queues its own credentials). After a restore the victim receives every message and checks
//! what came with it (the pipe carries data, the file has its offset and one description, the
//! socket its queue, the credentials are the sender's).

mod common;

use std::os::unix::net::UnixDatagram;

use common::*;

fn start(mode: &str) -> Victim {
    let args = vec![std::process::id().to_string(), mode.to_string()];
    let v = Victim::start_with(Kind::Scm, move |cmd| {
        cmd.args(&args);
    });
    UnixDatagram::unbound()
        .unwrap()
        .send_to(b"from-test", v.ctl.join("cred"))
        .unwrap();
    v.verify_with("check")
        .unwrap_or_else(|e| panic!("before any dump: {e}"));
    v
}

/// The fd table, a pipe's inode left out (a restored pipe is a new one).
fn fd_kinds(v: &Victim) -> std::collections::BTreeMap<i32, String> {
    let mut t = v.fd_table();
    for what in t.values_mut() {
        if what.starts_with("Pipe(") {
            *what = "Pipe".into();
        }
    }
    t
}

/// The descriptions that queued messages carry, per message, as `crest show --json` lists them.
fn carried(dir: &std::path::Path) -> Vec<usize> {
    let json = show_json(dir);
    let mut counts = Vec::new();
    let mut stack = vec![&json];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Object(m) => {
                if let (Some(serde_json::Value::Array(fds)), true) =
                    (m.get("fds"), m.contains_key("data"))
                {
                    counts.push(fds.len());
                }
                stack.extend(m.values());
            }
            serde_json::Value::Array(a) => stack.extend(a),
            _ => {}
        }
    }
    counts.sort_unstable();
    counts
}

#[test]
fn files_and_credentials_in_flight_come_back_with_their_messages() {
    let mut v = start("");
    let fds_before = fd_kinds(&v);
    let dir = v.work.join("img");
    let before = v.last_logged();
    dump(v.pid, &dir, false).assert_ok();
    v.reap();
    // A stream peek runs on through plain bytes into the piece that carries files:
    // "headfiles" carries three; "tail", "in-sock" and "from-test" nothing; "self", "dup",
    // "ev" and "me" one each.
    assert_eq!(carried(&dir), vec![0, 0, 0, 1, 1, 1, 1, 3]);
    restore_detached(&dir, &[]).assert_ok();
    v.mark_restored();
    v.wait_logging_after(before);
    // Only the fds the process had: what the queues carry is in the queues alone.
    assert_eq!(fd_kinds(&v), fds_before, "fd table changed");
    v.verify_with("final")
        .unwrap_or_else(|e| panic!("after the restore: {e}"));
}

#[test]
fn a_dump_that_leaves_the_process_running_takes_nothing_from_its_queues() {
    let mut v = start("");
    let dir = v.work.join("img");
    dump(v.pid, &dir, true).assert_ok();
    // The original still receives every message with its files.
    v.verify_with("final")
        .unwrap_or_else(|e| panic!("after the dump with -R: {e}"));
    v.kill();
    let before = v.last_logged();
    restore_detached(&dir, &[]).assert_ok();
    v.mark_restored();
    v.wait_logging_after(before);
    v.verify_with("final")
        .unwrap_or_else(|e| panic!("after the restore: {e}"));
}

/// The victim's own credentials, queued in its own socket: the pid is free when the queue is
/// filled again (the victim is not restored yet), so crest holds it with a placeholder.
#[test]
fn credentials_of_a_process_of_the_tree_come_back() {
    let mut v = start("tree-creds");
    let dir = v.work.join("img");
    let before = v.last_logged();
    dump(v.pid, &dir, false).assert_ok();
    v.reap();
    restore_detached(&dir, &[]).assert_ok();
    v.mark_restored();
    v.wait_logging_after(before);
    v.verify_with("final")
        .unwrap_or_else(|e| panic!("after the restore: {e}"));
}

#[test]
fn sockets_carried_too_deep_memfds_and_tcp_sockets_in_flight_are_refused_naming_the_socket() {
    for (mode, needle) in [
        ("deep", "levels deep"),
        ("memfd", "is a memfd"),
        ("tcp", "is a TCP socket"),
    ] {
        let v = start(mode);
        let ino = std::fs::metadata(format!("/proc/{}/fd/120", v.pid))
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap();
        let out = dump(v.pid, &v.work.join("refused"), false);
        out.assert_failed()
            .assert_stderr_mentions(&format!("process {}", v.pid))
            .assert_stderr_mentions(needle)
            .assert_stderr_mentions("SCM_RIGHTS");
        if mode != "deep" {
            out.assert_stderr_mentions(&format!("UNIX socket (inode {ino})"));
        }
        v.assert_running();
        v.verify_with("final")
            .unwrap_or_else(|e| panic!("{mode}: after the refused dump: {e}"));
    }
}

#[test]
fn files_in_flight_that_a_child_holds_too_come_back_as_the_childs_descriptions() {
    let mut v = start("tree");
    let child = v.info_child();
    let dir = v.work.join("img");
    let before = v.last_logged();
    dump(v.pid, &dir, false).assert_ok();
    v.reap();
    reap_pid(child.0, TIMEOUT).unwrap_or_else(|e| panic!("the child: {e}"));
    restore_detached(&dir, &[]).assert_ok();
    v.mark_restored();
    v.wait_logging_after(before);
    assert!(pid_exists(child.0), "the child was not restored");
    v.verify_with("final")
        .unwrap_or_else(|e| panic!("after the restore: {e}"));
}
