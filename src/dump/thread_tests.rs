//! Dumps of multi-threaded children: every thread is frozen, captured and visited by the
//! parasite, the image records each thread's own state, and every thread carries on.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use super::testutil::{
    progress, slot, slot_word, spawn_with, thread_tids, threads_progress, wait_until, SharedPage,
    Work,
};
use super::*;
use crate::arch::regs::{FS_BASE, ORIG_RAX, RAX, RIP};
use crate::images::{open_image, ArchRegs, ProcessImage, ThreadImage};

/// The twelve threads of the main victim.
const WORKS: [Work; 12] = [
    Work::TimedWait,
    Work::TimedWait,
    Work::TimedWait,
    Work::Sleep,
    Work::Sleep,
    Work::Sleep,
    Work::Busy,
    Work::Busy,
    Work::AltStack,
    Work::CondWait,
    Work::Waker,
    Work::GetCpu,
];

fn gpr(t: &ThreadImage) -> &[u64] {
    match &t.regs {
        ArchRegs::X86_64 { gpr, .. } => gpr,
        other => panic!("x86_64 registers expected, got {other:?}"),
    }
}

fn thread(p: &ProcessImage, tid: i32) -> &ThreadImage {
    p.threads
        .iter()
        .find(|t| t.tid == tid)
        .unwrap_or_else(|| panic!("thread {tid} missing from the image"))
}

fn syscall_insn_at(pid: i32, addr: u64) -> bool {
    let mut insn = [0u8; 2];
    crate::ptrace::read_memory(pid, addr, &mut insn).unwrap();
    insn == [0x0f, 0x05]
}

/// Checks the image against what each thread reported about itself.
fn check_image(dir: &std::path::Path, pid: i32, page: &SharedPage) {
    let image = open_image(dir).unwrap();
    let p = &image.processes[0];
    assert_eq!(p.threads.len(), WORKS.len() + 1);
    assert_eq!(p.threads[0].tid, pid, "the leader comes first");
    assert_eq!(p.threads[0].state.name, p.comm);
    let tids: BTreeSet<i32> = p.threads.iter().map(|t| t.tid).collect();
    assert_eq!(tids.len(), p.threads.len(), "tids are distinct");
    let reported: BTreeSet<i32> = thread_tids(page, WORKS.len()).into_iter().collect();
    assert_eq!(
        tids.iter()
            .copied()
            .filter(|&t| t != pid)
            .collect::<BTreeSet<_>>(),
        reported
    );
    let mut rseq_areas = BTreeSet::new();
    let mut sleepers_in_nanosleep = 0;
    let mut sleepers = Vec::new();
    for (i, work) in WORKS.iter().enumerate() {
        let w = |n| slot_word(page, i, n);
        let t = thread(p, w(slot::TID) as i32);
        let name = super::testutil::thread_name(i);
        assert_eq!(t.state.name.as_bytes(), &name[..9], "the thread's name");
        assert_eq!(
            t.sigmask,
            w(slot::SIGMASK),
            "{work:?} thread {}: mask",
            t.tid
        );
        let alt = t.state.altstack.map(|a| (a.sp, a.size)).unwrap_or((0, 0));
        assert_eq!(
            alt,
            (w(slot::ALT_SP), w(slot::ALT_SIZE)),
            "{work:?}: altstack"
        );
        assert_eq!(t.state.clear_child_tid, w(slot::CLEAR_CHILD_TID));
        assert_ne!(
            t.state.clear_child_tid, 0,
            "glibc sets CLONE_CHILD_CLEARTID"
        );
        assert_eq!(
            (t.state.robust_list, t.state.robust_list_len),
            (w(slot::ROBUST_HEAD), w(slot::ROBUST_LEN))
        );
        assert_ne!(t.state.robust_list, 0, "glibc registers a robust list");
        // The thread pointer (TLS) is each thread's own.
        assert_eq!(gpr(t)[FS_BASE], w(slot::SELF), "{work:?}: fs_base");
        if w(slot::RSEQ) != 0 {
            let r = t.rseq.expect("glibc registered rseq in this thread");
            assert_eq!(r.abi_pointer, w(slot::RSEQ));
            rseq_areas.insert(r.abi_pointer);
        }
        let g = gpr(t);
        // Whatever the thread was doing, no kernel-internal restart code is left in the image:
        // the fix-up turned each into a re-execution or EINTR.
        let rax = g[RAX] as i64;
        if matches!(work, Work::Sleep | Work::AltStack) {
            sleepers.push((g[ORIG_RAX] as i64, rax));
        }
        assert!(!(512..=516).contains(&-rax), "{work:?}: rax {rax}");
        match work {
            // Caught inside the timed futex wait: it used a restart block, so the image makes
            // it return EINTR (a spurious wake-up glibc's condvar handles). (rax 0 or
            // -ETIMEDOUT: caught just as the call returned.)
            Work::TimedWait if g[ORIG_RAX] == libc::SYS_futex as u64 => {
                assert!(
                    [-libc::EINTR, -libc::ETIMEDOUT, 0].contains(&(rax as i32)),
                    "{work:?}: {rax}"
                );
            }
            Work::Sleep | Work::AltStack if g[ORIG_RAX] == libc::SYS_clock_nanosleep as u64 => {
                assert!([-libc::EINTR, 0].contains(&(rax as i32)), "{work:?}: {rax}");
                if rax == -(libc::EINTR as i64) {
                    sleepers_in_nanosleep += 1;
                }
            }
            // An untimed futex wait still waiting is simply executed again.
            Work::CondWait
                if g[ORIG_RAX] == libc::SYS_futex as u64 && rax as u64 == g[ORIG_RAX] =>
            {
                assert!(syscall_insn_at(pid, g[RIP]));
            }
            _ => {}
        }
    }
    assert!(
        sleepers_in_nanosleep > 0,
        "no sleeper was caught in its sleep: (orig_rax, rax) {sleepers:?}"
    );
    if !rseq_areas.is_empty() {
        assert_eq!(
            rseq_areas.len(),
            WORKS.len(),
            "each thread has its own rseq area"
        );
    }
    // Process-wide state was collected once, from the leader.
    assert_eq!(p.task.sigactions.len(), 64);
    assert_ne!(p.task.sigactions[libc::SIGUSR2 as usize - 1].handler, 0);
}

/// After a dump: untraced, every thread still makes progress and has seen its TLS value,
/// signal mask and altstack unchanged, and each handles a signal sent to it alone.
fn check_carries_on(child: &super::testutil::Child, page: &SharedPage) {
    assert!(wait_until(|| child.tracer() == 0));
    let at = progress(page, WORKS.len());
    assert!(
        threads_progress(page, &at, 3),
        "a thread stopped making progress: {at:?} -> {:?}",
        progress(page, WORKS.len())
    );
    for (i, work) in WORKS.iter().enumerate() {
        assert_eq!(
            slot_word(page, i, slot::FAILURES),
            0,
            "{work:?} thread: its TLS, mask or altstack changed"
        );
    }
    let leader = page.counter();
    assert!(wait_until(|| page.counter() > leader + 3));
}

#[test]
fn a_twelve_thread_process_is_dumped_thread_by_thread_and_carries_on() {
    let tmp = tempfile::tempdir().unwrap();
    let page = SharedPage::new();
    let mut child = super::testutil::spawn_threads(&page, &WORKS, || {});
    let pid = child.pid;
    assert!(threads_progress(&page, &[0; WORKS.len()], 2));
    let dir = tmp.path().join("img");

    let report = dump(&DumpOptions {
        pid,
        dir: dir.clone(),
        leave_running: true,
        ..Default::default()
    })
    .unwrap();
    let names: Vec<&str> = report
        .stats
        .phases_us
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "hint", "prepare", "freeze", "threads", "parasite", "collect", "resolve", "pages",
            "release", "write", "commit"
        ]
    );
    check_carries_on(&child, &page);
    check_image(&dir, pid, &page);

    // Again, now that the released sleepers are inside restart_syscall; then a dump that
    // kills: every traced thread's end is collected, the leader's last.
    dump(&DumpOptions {
        pid,
        dir: dir.clone(),
        leave_running: true,
        ..Default::default()
    })
    .unwrap();
    check_carries_on(&child, &page);
    let image = open_image(&dir).unwrap();
    assert_eq!(image.processes[0].threads.len(), WORKS.len() + 1);
    dump(&DumpOptions {
        pid,
        dir: dir.clone(),
        leave_running: false,
        ..Default::default()
    })
    .unwrap();
    assert!(child.reaped_already());
    assert_eq!(open_image(&dir).unwrap().processes[0].threads.len(), 13);
}

/// Threads that block every signal: a thread's signals pending for it alone are recorded in
/// its own image thread, the process-wide ones once.
#[test]
fn pending_signals_are_recorded_per_thread() {
    let tmp = tempfile::tempdir().unwrap();
    let page = SharedPage::new();
    let works = [Work::Sleep, Work::Pause];
    let child = super::testutil::spawn_threads(&page, &works, || {});
    let pid = child.pid;
    let tids = thread_tids(&page, works.len());
    // Every worker blocks SIGUSR1, so one sent to a worker alone stays pending for it.
    // SAFETY: signalling our own child's threads.
    unsafe {
        libc::syscall(libc::SYS_tgkill, pid, tids[1], libc::SIGUSR1);
    }
    let pending = |tid: i32| {
        procfs::process::Process::new(pid)
            .and_then(|p| p.task_from_tid(tid))
            .and_then(|t| t.status())
            .map(|s| s.sigpnd)
            .unwrap_or(0)
    };
    assert!(wait_until(
        || pending(tids[1]) & (1 << (libc::SIGUSR1 - 1)) != 0
    ));
    let dir = tmp.path().join("img");
    dump(&DumpOptions {
        pid,
        dir: dir.clone(),
        leave_running: true,
        ..Default::default()
    })
    .unwrap();
    let image = open_image(&dir).unwrap();
    let p = &image.processes[0];
    let signo = |i: &Vec<u8>| i32::from_ne_bytes(i[0..4].try_into().unwrap());
    let t = thread(p, tids[1]);
    assert_eq!(
        t.state.pending.iter().map(signo).collect::<Vec<_>>(),
        [libc::SIGUSR1]
    );
    assert!(thread(p, tids[0]).state.pending.is_empty());
    assert!(p.threads[0].state.pending.is_empty());
    // Still pending in the live thread: nothing consumed it.
    assert!(wait_until(|| child.tracer() == 0));
    assert_ne!(pending(tids[1]) & (1 << (libc::SIGUSR1 - 1)), 0);
}

/// The child's threads keep starting short-lived threads: some are created and some exit
/// while crest freezes the process. Each dump must still hold a consistent set of threads, and
/// the process carries on.
#[test]
fn threads_created_and_exiting_during_the_freeze_do_not_break_the_dump() {
    extern "C" fn short_lived(_: *mut libc::c_void) -> *mut libc::c_void {
        let page = CHURN_PAGE.load(Ordering::SeqCst) as *const std::sync::atomic::AtomicU64;
        // SAFETY: CHURN_PAGE points at the child's live shared page; word 2 is in bounds.
        unsafe { (*page.add(2)).fetch_add(1, Ordering::SeqCst) };
        std::ptr::null_mut()
    }
    extern "C" fn spawner(_: *mut libc::c_void) -> *mut libc::c_void {
        loop {
            // SAFETY: pthread_create of a detached thread with a valid entry point.
            unsafe {
                let mut attr: libc::pthread_attr_t = std::mem::zeroed();
                libc::pthread_attr_init(&mut attr);
                libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
                let mut t: libc::pthread_t = 0;
                libc::pthread_create(&mut t, &attr, short_lived, std::ptr::null_mut());
                libc::pthread_attr_destroy(&mut attr);
                let ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 50_000,
                };
                libc::nanosleep(&ts, std::ptr::null_mut());
            }
        }
    }
    static CHURN_PAGE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    let tmp = tempfile::tempdir().unwrap();
    let page = SharedPage::new();
    let addr = page.addr();
    let mut child = spawn_with(
        &[],
        &page,
        move || {
            CHURN_PAGE.store(addr, Ordering::SeqCst);
            for _ in 0..2 {
                let mut t: libc::pthread_t = 0;
                // SAFETY: pthread_create with a valid entry point and no argument.
                unsafe {
                    libc::pthread_create(&mut t, std::ptr::null(), spawner, std::ptr::null_mut())
                };
            }
        },
        || loop {
            page.word(1).fetch_add(1, Ordering::SeqCst);
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 1_000_000,
            };
            // SAFETY: valid timespec; a null remainder pointer is allowed.
            unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
        },
    );
    let pid = child.pid;
    let started = || page.word(2).load(Ordering::SeqCst);
    assert!(wait_until(|| started() > 100));
    let dir = tmp.path().join("img");
    for round in 0..5 {
        dump(&DumpOptions {
            pid,
            dir: dir.clone(),
            leave_running: true,
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("dump {round}: {e}"));
        let image = open_image(&dir).unwrap();
        let p = &image.processes[0];
        assert_eq!(p.threads[0].tid, pid);
        let tids: BTreeSet<i32> = p.threads.iter().map(|t| t.tid).collect();
        assert_eq!(tids.len(), p.threads.len());
        // The leader and both spawners at least; every recorded thread belonged to the process.
        assert!(p.threads.len() >= 3, "{round}: {:?}", tids);
        assert!(wait_until(|| child.tracer() == 0));
        let (at, leader) = (started(), page.counter());
        assert!(
            wait_until(|| started() > at + 50 && page.counter() > leader + 3),
            "{round}: the child stopped starting threads"
        );
    }
    dump(&DumpOptions {
        pid,
        dir: dir.clone(),
        leave_running: false,
        ..Default::default()
    })
    .unwrap();
    assert!(child.reaped_already());
}
