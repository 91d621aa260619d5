//! Multi-threaded processes (issue #4): the 13-thread mthreads victim goes through repeated
//! dump/restore cycles under its pid, every thread under its own tid with its own name, blocked
//! mask and pending signals, and its threads carry on (timed condvar waits, sleepers, busy
//! workers under a mutex, sched_getcpu through rseq) — the victim checks all of that itself on
//! every verify. A `-R` dump leaves it running and its image restores later.

mod common;

use std::collections::BTreeMap;

use common::*;

/// The leader and twelve workers.
const THREADS: usize = 13;

/// The threads of a running mthreads victim, checked for the shape the victim promises.
fn mthreads_tasks(v: &Victim) -> BTreeMap<i32, TaskInfo> {
    let tasks = tasks(v.pid);
    assert_eq!(
        tasks.len(),
        THREADS,
        "mthreads (pid {}) runs {} threads: {tasks:?}",
        v.pid,
        tasks.len()
    );
    // Every thread holds one thread-directed signal, blocked by that thread alone.
    for (tid, t) in &tasks {
        assert_eq!(
            t.pending.count_ones(),
            1,
            "thread {tid} ({}) should hold exactly one pending signal: {:#x}",
            t.comm,
            t.pending
        );
        assert_eq!(
            t.pending & t.blocked,
            t.pending,
            "thread {tid} ({}): its pending signal is not blocked",
            t.comm
        );
    }
    tasks
}

/// Waits until no thread of `pid` is traced any more (a `-R` dump detaches from each).
fn wait_untraced(pid: i32) {
    wait_for("every thread to be released by the tracer", TIMEOUT, || {
        let proc = procfs::process::Process::new(pid).ok()?;
        let traced = proc
            .tasks()
            .ok()?
            .filter_map(|t| t.ok()?.status().ok())
            .any(|s| s.tracerpid != 0);
        (!traced).then_some(())
    });
}

#[test]
fn mthreads_three_cycles_keep_pid_tids_and_thread_state() {
    let mut v = Victim::start(Kind::MThreads);
    v.verify().expect("mthreads verifies before any dump");
    let before = mthreads_tasks(&v);

    for cycle in 1..=3 {
        let ctx = format!("cycle {cycle}");
        let dir = v.work.join(format!("img{cycle}"));
        let fds_before = v.fd_table();
        let at = v.last_logged();
        dump(v.pid, &dir, false).assert_ok();
        v.reap();

        restore_detached(&dir, &[]).assert_ok();
        v.mark_restored();
        // Straight after the restore: the same 13 tids, each with its name, mask and pending
        // signal.
        assert_tasks_kept(v.pid, &before, true, true, &ctx);
        v.wait_logging_after(at);
        v.assert_running();
        v.verify().unwrap_or_else(|e| panic!("{ctx}: {e}"));
        assert_tasks_kept(v.pid, &before, true, true, &format!("{ctx}, after verify"));
        assert_eq!(v.fd_table(), fds_before, "{ctx}: fd table changed");
        v.assert_log_consecutive();
    }
    v.verify()
        .expect("mthreads verifies again after three cycles");
}

#[test]
fn mthreads_leave_running_then_restore_the_image() {
    let mut v = Victim::start(Kind::MThreads);
    v.verify().expect("mthreads verifies before the dump");
    let before = mthreads_tasks(&v);
    let fds_before = v.fd_table();
    let dir = v.work.join("img");

    dump(v.pid, &dir, true).assert_ok();
    let at_return = v.last_logged();
    // The same process runs on, every thread released, and nothing about its threads changed.
    v.assert_running();
    wait_untraced(v.pid);
    let after = v.wait_logging_after(at_return + 2);
    v.verify().expect("mthreads verifies after a -R dump");
    assert_tasks_kept(v.pid, &before, true, true, "after the -R dump");
    assert_eq!(v.fd_table(), fds_before, "-R changed the fd table");
    v.assert_log_consecutive();

    // Once the original is gone, its image restores: the threads come back under their tids.
    v.kill();
    let lines = v.log_entries();
    assert!(lines.last().unwrap().1 >= after);
    restore_detached(&dir, &[]).assert_ok();
    v.mark_restored();
    assert_tasks_kept(v.pid, &before, true, true, "restored from the -R image");
    // The counter restarts from the image's, below what the original logged since.
    v.wait_log_grows(lines.len());
    v.assert_running();
    v.verify()
        .expect("mthreads verifies after restoring the -R image");
    assert_eq!(v.fd_table(), fds_before, "fd table after the restore");
}

#[test]
fn mthreads_verifies_itself_notices_a_stray_signal_and_exits_on_request() {
    // Without crest: the victim's own checks pass, and fail when a thread's state changes
    // behind its back, so their passing after a restore means something.
    let mut v = Victim::start(Kind::MThreads);
    let first = v.verify().expect("fresh mthreads verifies");
    let second = v.verify().expect("mthreads verifies twice");
    assert!(second > first, "the counter does not advance");
    let tasks = mthreads_tasks(&v);

    // Thread 1 blocks SIGUSR1: one sent to it stays pending, which nobody in the victim did.
    let (tid, _) = tasks
        .iter()
        .find(|(_, t)| t.comm == "mt-condvar-1")
        .expect("thread mt-condvar-1");
    // SAFETY: tgkill(2) with plain integers; the thread belongs to our own victim.
    let r = unsafe { libc::syscall(libc::SYS_tgkill, v.pid, *tid, libc::SIGUSR1) };
    assert_eq!(r, 0, "tgkill: {}", std::io::Error::last_os_error());
    let err = v
        .verify()
        .expect_err("a stray pending signal goes unnoticed");
    assert!(
        err.contains("signal 10 is pending"),
        "unexpected complaint: {err}"
    );

    v.request_exit(7);
    let st = v.reap();
    assert_eq!(
        st,
        Some(nix::sys::wait::WaitStatus::Exited(
            nix::unistd::Pid::from_raw(v.pid),
            7
        )),
        "exit status"
    );
}

/// A restore needs every thread id of the image free, not only the leader's pid: one taken by
/// another process is refused before anything is forked, naming the id, and the holder is
/// left alone.
#[test]
fn a_thread_id_in_use_by_another_process_is_refused() {
    let mut v = Victim::start(Kind::MThreads);
    let tids = thread_ids(v.pid);
    let dir = v.work.join("img");
    dump(v.pid, &dir, false).assert_ok();
    v.reap();
    // The last worker's id, taken by a process of ours (clone3 with set_tid, as crest does).
    let taken = *tids.last().expect("mthreads has workers");
    let holder = hold_pid(taken);

    restore_detached(&dir, &[])
        .assert_failed()
        .assert_stderr_mentions(&format!("pid {taken} is in use"));
    assert!(
        !std::path::Path::new(&format!("/proc/{}", v.pid)).exists(),
        "nothing of the refused restore runs under pid {}",
        v.pid
    );
    assert_eq!(
        proc_state(holder.0),
        Some('S'),
        "the holder of {taken} is untouched"
    );
}

/// A child of the test under a chosen pid, asleep until dropped (killed and reaped).
struct PidHolder(i32);

impl Drop for PidHolder {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, None);
    }
}

/// Forks a [`PidHolder`] under `pid` (clone3 with set_tid, crest's own wrapper).
fn hold_pid(pid: i32) -> PidHolder {
    // SAFETY: a fork-like clone3; the child only makes raw system calls (ppoll with nothing to
    // wait for, until killed), which is safe in a child of a threaded process.
    let got = unsafe { crest::sys::clone3_with_pid(pid, libc::SIGCHLD) }
        .unwrap_or_else(|e| panic!("clone3 with set_tid {pid}: {e}"));
    if got == 0 {
        loop {
            // SAFETY: raw system calls only, see above.
            unsafe {
                libc::syscall(libc::SYS_ppoll, 0usize, 0usize, 0usize, 0usize);
            }
        }
    }
    assert_eq!(got, pid, "clone3 with set_tid {pid}");
    let holder = PidHolder(pid);
    wait_for("the pid holder to sleep", TIMEOUT, || {
        (proc_state(pid) == Some('S')).then_some(())
    });
    holder
}
