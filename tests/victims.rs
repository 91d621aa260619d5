//! The victims and the harness on their own, without crest: each victim starts, verifies itself,
//! notices when its memory is changed behind its back, and exits on request. If these fail, the
//! crest tests cannot be trusted either way.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use common::*;
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;

#[test]
fn memcheck_verifies_itself_and_notices_a_changed_byte() {
    let mut v = Victim::start(Kind::Memcheck);
    let first = v.verify().expect("fresh memcheck verifies");
    let second = v.verify().expect("memcheck verifies twice");
    assert!(second > first, "the counter does not advance");
    v.assert_running();
    v.assert_log_consecutive();

    // The largest private anonymous read-write VMA holds pseudo-random data (the 32 MiB mmap,
    // possibly merged with the 16 MiB malloc'd block and others): change one byte of it through
    // /proc/PID/mem, and the victim must say so; put it back, and it must be content again.
    let maps = procfs::process::Process::new(v.pid)
        .unwrap()
        .maps()
        .unwrap();
    let area = maps
        .iter()
        .filter(|m| {
            m.perms.contains(procfs::process::MMPermissions::READ)
                && m.perms.contains(procfs::process::MMPermissions::WRITE)
                && m.perms.contains(procfs::process::MMPermissions::PRIVATE)
                && matches!(m.pathname, procfs::process::MMapPath::Anonymous)
        })
        .max_by_key(|m| m.address.1 - m.address.0)
        .expect("an anonymous rw area");
    assert!(
        area.address.1 - area.address.0 >= 32 << 20,
        "no 32 MiB area: {area:?}"
    );
    let mem = OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{}/mem", v.pid))
        .unwrap();
    // The area may be several merged mappings (how they merge depends on the page size): from
    // its middle on, the first page with no zero word is random data (the sparse mapping's
    // pages are mostly zeros).
    let mut page = vec![0u8; 4096];
    let addr = (area.address.0 + (area.address.1 - area.address.0) / 2..area.address.1)
        .step_by(4096)
        .find(|&at| {
            mem.read_exact_at(&mut page, at).is_ok()
                && page.chunks_exact(8).all(|w| w.iter().any(|&b| b != 0))
        })
        .expect("a page of random data in the area")
        + 2048;
    let mut byte = [0u8; 1];
    mem.read_exact_at(&mut byte, addr).unwrap();
    mem.write_all_at(&[byte[0] ^ 0x40], addr).unwrap();
    let err = v.verify().expect_err("a changed byte went unnoticed");
    assert!(err.contains("random"), "unexpected complaint: {err}");
    mem.write_all_at(&byte, addr).unwrap();
    v.verify().expect("memcheck verifies once the byte is back");

    v.request_exit(7);
    assert!(matches!(v.reap(), Some(WaitStatus::Exited(_, 7))));
}

#[test]
fn fds_verifies_itself_and_exits_on_request() {
    let mut v = Victim::start(Kind::Fds);
    let first = v.verify().expect("fresh fds victim verifies");
    let second = v.verify().expect("fds victim verifies twice");
    assert!(second > first);
    let fds: Vec<i32> = v.fd_table().into_keys().collect();
    assert_eq!(fds, [0, 1, 2, 3, 4, 5, 6, 7, 8, 150]);
    v.request_exit(0);
    assert!(matches!(v.reap(), Some(WaitStatus::Exited(_, 0))));
}

#[test]
fn threads_victim_runs_two_threads() {
    let mut v = Victim::start(Kind::Threads);
    v.verify().expect("threads victim verifies");
    let tasks = std::fs::read_dir(format!("/proc/{}/task", v.pid))
        .unwrap()
        .count();
    assert_eq!(tasks, 2);
    let at = v.last_logged();
    v.wait_logging_after(at + 2);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(v.pid), Signal::SIGTERM).unwrap();
    // No handler: SIGTERM's default action ends it.
    assert!(matches!(
        v.reap(),
        Some(WaitStatus::Signaled(_, Signal::SIGTERM, _))
    ));
}
