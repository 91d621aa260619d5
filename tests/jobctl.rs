//! SIGTRAP handlers, job-control stops, tracers and vfork (tests/victims/jobctl.c).
//!
//! crest's parasite and restorer stop on breakpoints, whose SIGTRAP the kernel forces through
//! (resetting a blocked or ignored SIGTRAP to SIG_DFL); a process's own SIGTRAP handler must
//! survive that. A process stopped by SIGSTOP or SIGTSTP is dumped and restored stopped. A
//! process traced by someone else, or in the middle of a vfork, is refused in words.

mod common;

use std::time::Duration;

use common::*;

/// CTL_DIR/traps: (SIGTRAPs from kill, SIGTRAPs from raise, si_pid of the last kill).
fn traps(v: &Victim) -> (u64, u64, i32) {
    let text = std::fs::read_to_string(v.ctl.join("traps")).unwrap_or_default();
    let w: Vec<&str> = text.split_whitespace().collect();
    match w.as_slice() {
        [k, r, p] => (k.parse().unwrap(), r.parse().unwrap(), p.parse().unwrap()),
        _ => (0, 0, 0),
    }
}

fn send(pid: i32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).expect("kill");
}

fn wait_state(pid: i32, want: char, what: &str) {
    wait_for(what, TIMEOUT, || {
        (proc_state(pid) == Some(want)).then_some(())
    });
}

#[test]
fn a_sigtrap_handler_survives_dump_and_restore() {
    use nix::sys::signal::Signal;
    let mut v = Victim::start(Kind::Jobctl);
    // Before any crest: the handler counts a kill and a raise, and the victim lives.
    send(v.pid, Signal::SIGTRAP);
    wait_for("the first SIGTRAP to be counted", TIMEOUT, || {
        (traps(&v).0 == 1).then_some(())
    });
    v.verify()
        .expect("fresh victim verifies (raise(SIGTRAP) runs its handler)");
    let me = std::process::id() as i32;
    wait_for("the raised SIGTRAP to be counted", TIMEOUT, || {
        (traps(&v) == (1, 1, me)).then_some(())
    });

    // With -R the process runs on with its handler (the parasite's breakpoints must not reset it).
    let dir = v.work.join("img-r");
    dump(v.pid, &dir, true).assert_ok();
    v.verify().expect("the handler survives a dump with -R");
    send(v.pid, Signal::SIGTRAP);
    wait_for("a SIGTRAP after dump -R", TIMEOUT, || {
        (traps(&v).0 == 2).then_some(())
    });
    v.assert_running();

    let dir = v.work.join("img");
    dump(v.pid, &dir, false).assert_ok();
    v.reap();
    let before = traps(&v);
    restore_detached(&dir, &[]).assert_ok();
    v.mark_restored();
    v.wait_logging_after(v.last_logged());
    // kill -TRAP from the test: the restored handler runs and the process lives on.
    send(v.pid, Signal::SIGTRAP);
    wait_for("a SIGTRAP after restore to be counted", TIMEOUT, || {
        (traps(&v).0 == before.0 + 1).then_some(())
    });
    assert_eq!(traps(&v).2, me, "si_pid of the SIGTRAP sent after restore");
    v.assert_running();
    // raise(SIGTRAP) inside the restored process, and the action reads back unchanged.
    v.verify()
        .expect("after restore, raise(SIGTRAP) runs the handler and the action is unchanged");
    wait_for("the raised SIGTRAP to be counted", TIMEOUT, || {
        (traps(&v).1 == before.1 + 1).then_some(())
    });
    let at = v.last_logged();
    v.wait_logging_after(at + 2);
    v.assert_running();
}

#[test]
fn a_process_ignoring_sigtrap_is_refused_and_left_as_it_was() {
    // The victim inherits SIG_IGN for SIGTRAP: ignored signals survive exec.
    let v = Victim::start_with(Kind::Memcheck, |cmd| {
        use std::os::unix::process::CommandExt;
        // SAFETY: signal(2) with SIG_IGN is async-signal-safe and touches no memory.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGTRAP, libc::SIG_IGN);
                Ok(())
            });
        }
    });
    assert_ne!(signal_status(v.pid).ignored & sig_bit(libc::SIGTRAP), 0);
    let dir = v.work.join("img");
    let out = dump(v.pid, &dir, true);
    out.assert_failed()
        .assert_stderr_mentions(&v.pid_str())
        .assert_stderr_mentions("ignores SIGTRAP");
    assert!(!dir.exists());
    assert_ne!(
        signal_status(v.pid).ignored & sig_bit(libc::SIGTRAP),
        0,
        "SIGTRAP is still ignored"
    );
    v.wait_logging_after(v.last_logged() + 2);
    v.verify().expect("the victim verifies after the refusal");
}

/// Dumps a stopped victim (with -R first: it stays stopped), restores it, and checks that it
/// is stopped after the restore and carries on after SIGCONT.
fn stopped_round_trip(mut v: Victim, stop: nix::sys::signal::Signal, expect_sig: &str) {
    use nix::sys::signal::Signal;
    send(v.pid, stop);
    wait_state(v.pid, 'T', "the victim to stop");
    let dir = v.work.join("img-r");
    dump(v.pid, &dir, true).assert_ok();
    assert_eq!(proc_state(v.pid), Some('T'), "stopped after dump -R");
    assert_eq!(tracer_pid(v.pid), Some(0));
    let text = crest(["show".as_ref(), dir.as_os_str()]);
    text.assert_ok().assert_ok();
    assert!(
        text.stdout.contains(&format!("stopped by {expect_sig}")),
        "show names the stop signal: {text}"
    );

    let dir = v.work.join("img");
    dump(v.pid, &dir, false).assert_ok();
    v.reap();
    let lines = v.log_entries().len();
    restore_detached(&dir, &[]).assert_ok();
    v.mark_restored();
    wait_state(v.pid, 'T', "the restored victim to be stopped");
    assert_eq!(tracer_pid(v.pid), Some(0));
    // The parent (this test, the subreaper the restored victim was handed to) sees the
    // signal that stopped it, as before the dump.
    assert_eq!(
        stop_signal_seen_by_parent(v.pid),
        stop as i32,
        "the restored victim is stopped by another signal than {expect_sig}"
    );
    // Stopped means stopped: nothing was logged since the restore (checked once the stop has
    // been observed; a running process logs every 10 ms).
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        v.log_entries().len(),
        lines,
        "the restored process ran while stopped"
    );
    assert_eq!(proc_state(v.pid), Some('T'));

    send(v.pid, Signal::SIGCONT);
    v.wait_log_grows(lines);
    v.assert_running();
    v.assert_log_consecutive();
    v.verify()
        .expect("the restored victim verifies after SIGCONT");
}

/// The stop signal `waitid(WSTOPPED | WNOWAIT)` reports to the parent of `pid`.
fn stop_signal_seen_by_parent(pid: i32) -> i32 {
    use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
    match waitid(
        Id::Pid(nix::unistd::Pid::from_raw(pid)),
        WaitPidFlag::WSTOPPED | WaitPidFlag::WNOWAIT,
    ) {
        Ok(WaitStatus::Stopped(_, sig)) => sig as i32,
        other => panic!("waitid(WSTOPPED) on {pid}: {other:?}"),
    }
}

#[test]
fn a_process_stopped_by_sigstop_is_restored_stopped() {
    stopped_round_trip(
        Victim::start(Kind::Jobctl),
        nix::sys::signal::Signal::SIGSTOP,
        "SIGSTOP",
    );
}

#[test]
fn a_process_stopped_by_sigtstp_is_restored_stopped() {
    // SIGTSTP stops only a process whose process group is not orphaned.
    stopped_round_trip(
        Victim::start_in_process_group(Kind::Jobctl, &[]),
        nix::sys::signal::Signal::SIGTSTP,
        "SIGTSTP",
    );
}

#[test]
fn a_process_traced_by_another_tracer_is_refused_in_words() {
    let v = Victim::start(Kind::Jobctl);
    let pid = v.pid;
    let (seized_tx, seized_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    // The tracer is a thread of the test: PTRACE_SEIZE does not stop the tracee, and the
    // kernel detaches it when the tracing thread exits.
    let tracer = std::thread::spawn(move || {
        nix::sys::ptrace::seize(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::ptrace::Options::empty(),
        )
        .expect("PTRACE_SEIZE");
        seized_tx.send(nix::unistd::gettid().as_raw()).unwrap();
        let _ = done_rx.recv();
    });
    let tracer_tid = seized_rx.recv().unwrap();
    // TracerPid names the tracing thread.
    assert_eq!(tracer_pid(pid), Some(tracer_tid));
    let dir = v.work.join("img");
    let out = dump(pid, &dir, true);
    out.assert_failed()
        .assert_stderr_mentions(&v.pid_str())
        .assert_stderr_mentions("already traced by process");
    assert!(
        !out.stderr.contains("Errno") && !out.stderr.contains("{"),
        "{out}"
    );
    assert!(!dir.exists());
    done_tx.send(()).unwrap();
    tracer.join().unwrap();
    wait_for("the test's tracer to let go", TIMEOUT, || {
        (tracer_pid(pid) == Some(0)).then_some(())
    });
    v.wait_logging_after(v.last_logged() + 2);
    v.verify().expect("the victim verifies after the refusal");
}

#[test]
fn a_process_in_the_middle_of_vfork_is_refused_naming_both_pids() {
    let v = Victim::start_with(Kind::Jobctl, |cmd| {
        cmd.arg("vfork");
    });
    let child = wait_for("the vfork child", TIMEOUT, || {
        std::fs::read_to_string(format!("/proc/{}/task/{}/children", v.pid, v.pid))
            .ok()
            .and_then(|s| {
                s.split_whitespace()
                    .next()
                    .map(|w| w.parse::<i32>().unwrap())
            })
    });
    let child_guard = ChildPid(child);
    for target in [v.pid, child] {
        let dir = v.work.join(format!("img-{target}"));
        let out = dump(target, &dir, true);
        out.assert_failed()
            .assert_stderr_mentions(&format!("process {} is in the middle of a vfork", v.pid))
            .assert_stderr_mentions(&format!("child {child}"));
        assert!(!dir.exists());
    }
    assert_eq!(tracer_pid(v.pid), Some(0));
    drop(child_guard);
    // Once the vfork child is gone, the parent runs on.
    v.wait_logging_after(v.last_logged() + 2);
    v.verify()
        .expect("the parent verifies once its vfork child is gone");
}

/// Kills the vfork child by pid (it is the victim's child, reaped by the victim's kernel
/// side: a vfork parent does not reap it; it stays a zombie until the victim dies).
struct ChildPid(i32);

impl Drop for ChildPid {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}
