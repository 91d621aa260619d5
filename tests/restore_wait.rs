//! `crest restore` without `-d`: crest stays the restored process's parent, exits with its exit
//! status, and forwards SIGTERM to it.

mod common;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Dumps a fresh memcheck victim (killing it) and starts an attached `crest restore` of it;
/// returns once the restored process is logging again.
fn restored_attached() -> (Victim, CrestProcess) {
    let mut v = Victim::start(Kind::Memcheck);
    let dir = v.work.join("img");
    dump(v.pid, &dir, false).assert_ok();
    v.reap();
    // Only now is the log final: sampled before the dump, lines the original wrote while the
    // dump ran would pass for the restored process's and let the test race an unfinished restore.
    let before = v.last_logged();

    let mut restore = spawn_crest(["restore".as_ref(), "-D".as_ref(), dir.as_os_str()]);
    v.mark_restored();
    let exited_early = wait_for("the restored process to log", CREST_TIMEOUT, || {
        if !restore.running() {
            return Some(true);
        }
        (v.last_logged() > before).then_some(false)
    });
    if exited_early {
        panic!(
            "crest restore exited before the process logged: {}",
            restore.wait(TIMEOUT)
        );
    }
    v.wait_logging_after(before);
    v.assert_running();
    assert!(
        restore.running(),
        "attached crest restore exited while the process runs"
    );
    (v, restore)
}

#[test]
fn attached_restore_exits_with_the_restored_process_status() {
    let (mut v, restore) = restored_attached();
    v.verify().expect("restored process verifies");
    v.request_exit(42);
    let out = restore.wait(TIMEOUT);
    assert_eq!(
        out.status.code(),
        Some(42),
        "crest should exit with the process's status: {out}"
    );
    // crest was the parent and reaped it.
    v.reap();
}

#[test]
fn attached_restore_forwards_sigterm() {
    let (mut v, restore) = restored_attached();
    kill(Pid::from_raw(restore.pid()), Signal::SIGTERM).expect("SIGTERM to crest");
    let out = restore.wait(TIMEOUT);
    // The victim has no handler, so SIGTERM kills it; crest reports that as 128 + 15.
    assert_eq!(
        out.status.code(),
        Some(128 + 15),
        "crest should report death by SIGTERM: {out}"
    );
    v.reap();
}

/// A parent-death signal means "my parent ended". Restored attached, crest is the parent and
/// stays until the process ends, so the signal is kept: killing crest delivers it. Restored
/// with -d, crest exits at once, so the signal is left unset and the process runs on.
#[test]
fn parent_death_signal_follows_crest_only_when_attached() {
    let pdeath = || {
        let mut v = Victim::start_with(Kind::Memcheck, |cmd| {
            cmd.env("MEMCHECK_PDEATHSIG", (Signal::SIGUSR1 as i32).to_string());
        });
        let dir = v.work.join("img");
        dump(v.pid, &dir, false).assert_ok();
        v.reap();
        (v, dir)
    };

    let (mut v, dir) = pdeath();
    let before = v.last_logged();
    let restore = spawn_crest(["restore".as_ref(), "-D".as_ref(), dir.as_os_str()]);
    v.mark_restored();
    v.wait_logging_after(before);
    kill(Pid::from_raw(restore.pid()), Signal::SIGKILL).expect("SIGKILL to crest");
    restore.wait(TIMEOUT);
    // The test is a child subreaper, so the orphan is ours to reap.
    match v.reap() {
        Some(nix::sys::wait::WaitStatus::Signaled(_, Signal::SIGUSR1, _)) => {}
        other => panic!("the restored process should have died of SIGUSR1, got {other:?}"),
    }

    let (mut v, dir) = pdeath();
    let before = v.last_logged();
    restore_detached(&dir, &[]).assert_ok();
    v.mark_restored();
    v.wait_logging_after(before);
    v.assert_running();
    v.verify()
        .expect("the -d restored process runs on after crest exited");
}
