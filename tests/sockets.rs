//! AF_UNIX sockets and a performance-data file across dump and restore (issue #4: what a JVM
//! has open besides plain files): the sockets victim (tests/victims/sockets.c) keeps two
//! socket-pair ends whose peers are closed (one with unread bytes), an unconnected datagram
//! socket, a renamed listening socket whose accept() loop runs in a second thread, and an
//! hsperfdata-like shared file mapping. Across cycles its sockets come back with their flags
//! and state, the listener answers connections again after replacing its stale socket file,
//! and the mapped file comes back with its content even when it was deleted in between.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use common::*;

/// Connects to the victim's listening socket, sends `b`, and returns its answer (b + 1).
fn exchange(path: &Path, b: u8) -> u8 {
    let mut s =
        UnixStream::connect(path).unwrap_or_else(|e| panic!("connect to {}: {e}", path.display()));
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(&[b]).expect("send a byte");
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer)
        .unwrap_or_else(|e| panic!("no answer from {}: {e}", path.display()));
    answer[0]
}

/// Waits until the victim's accept loop has closed the connections it served, so its fd table
/// is `want` again (and a dump finds no accepted connection).
fn wait_connections_closed(v: &Victim, want: &std::collections::BTreeMap<i32, String>) {
    wait_for(
        "the victim to close the connections it served",
        TIMEOUT,
        || (v.fd_table() == *want).then_some(()),
    );
}

fn perf_file(v: &Victim) -> PathBuf {
    v.ctl
        .join("perf")
        .join("hsperfdata_x")
        .join(v.pid.to_string())
}

#[test]
fn sockets_and_perf_file_survive_three_cycles() {
    let mut v = Victim::start(Kind::Sockets);
    v.verify().expect("victim verifies before any dump");
    let fds_before = v.fd_table();
    let listen = v.ctl.join("listen");
    assert_eq!(exchange(&listen, 41), 42, "the listener before any dump");
    wait_connections_closed(&v, &fds_before);
    let perf = perf_file(&v);
    let perf_len = fs::metadata(&perf).expect("perf file").len();

    for cycle in 1..=3 {
        let dir = v.work.join(format!("img{cycle}"));
        let before = v.last_logged();
        dump(v.pid, &dir, false).assert_ok();
        v.reap();

        let json = show_json(&dir);
        let text = json.to_string();
        assert!(
            text.contains("ContentInImage") && text.contains("Listening"),
            "cycle {cycle}: the image does not record the perf file and the listener: {text}"
        );
        // The killed victim leaves its socket file behind; the restore replaces it.
        assert!(
            fs::symlink_metadata(&listen)
                .expect("stale socket file")
                .file_type()
                .is_socket(),
            "cycle {cycle}"
        );
        match cycle {
            // What a JVM starting now would do to the perf file of a dead pid.
            1 => fs::remove_file(&perf).expect("remove the perf file"),
            // Directory and all: the restore recreates both.
            2 => fs::remove_dir_all(perf.parent().unwrap()).expect("remove the perf directory"),
            // Left in place with stale content: the restore overwrites it.
            _ => fs::write(&perf, vec![0xa5u8; 3 * perf_len as usize]).expect("scribble"),
        }

        restore_detached(&dir, &[]).assert_ok();
        v.mark_restored();
        v.wait_logging_after(before);
        v.assert_running();
        v.verify().unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        assert_eq!(v.fd_table(), fds_before, "cycle {cycle}: fd table changed");
        v.assert_log_consecutive();
        let md = fs::metadata(&perf)
            .unwrap_or_else(|e| panic!("cycle {cycle}: {} after restore: {e}", perf.display()));
        assert_eq!(md.len(), perf_len, "cycle {cycle}: perf file size");
        assert_eq!(md.permissions().mode() & 0o7777, 0o600, "cycle {cycle}");
        let dir_mode = fs::metadata(perf.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            dir_mode & 0o7777,
            0o755,
            "cycle {cycle}: perf directory mode"
        );
        // The accept() the second thread was blocked in carries on, on the recreated socket.
        let b = 10 * cycle as u8;
        assert_eq!(exchange(&listen, b), b + 1, "cycle {cycle}: the listener");
        assert_eq!(
            exchange(&listen, b + 1),
            b + 2,
            "cycle {cycle}: the listener again"
        );
        wait_connections_closed(&v, &fds_before);
        v.verify()
            .unwrap_or_else(|e| panic!("cycle {cycle}, after connecting: {e}"));
        let _ = fs::remove_dir_all(&dir);
    }

    v.request_exit(7);
    let status = v.reap();
    assert_eq!(
        status,
        Some(nix::sys::wait::WaitStatus::Exited(
            nix::unistd::Pid::from_raw(v.pid),
            7
        )),
        "stderr: {}",
        v.stderr_text()
    );
}

#[test]
fn a_socket_pair_with_both_ends_open_comes_back_connected_with_its_unread_bytes() {
    let mut v = Victim::start_with(Kind::Sockets, |cmd| {
        cmd.arg("live-pair");
    });
    v.verify().expect("victim verifies before the dump");
    for cycle in 1..=2 {
        let dir = v.work.join(format!("img{cycle}"));
        v.dump_restore_verify(&dir, &format!("cycle {cycle}"));
        assert_eq!(exchange(&v.ctl.join("listen"), 1), 2);
    }
}

#[test]
fn a_perf_file_deleted_before_the_dump_is_stored_and_recreated() {
    let mut v = Victim::start(Kind::Sockets);
    v.verify().expect("victim verifies before the dump");
    let perf = perf_file(&v);
    // Another JVM may delete it while this one still runs (it must not, but the mapping keeps
    // the content either way): the dump reads it through the mapping.
    fs::remove_file(&perf).expect("remove the perf file");
    let dir = v.work.join("img");
    let before = v.last_logged();
    dump(v.pid, &dir, false).assert_ok();
    v.reap();
    restore_detached(&dir, &[]).assert_ok();
    v.mark_restored();
    v.wait_logging_after(before);
    v.verify()
        .expect("the restored victim finds its perf file again");
    assert!(perf.is_file(), "{} was not recreated", perf.display());
}
