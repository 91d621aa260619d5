//! A dump that fails at any step leaves the target exactly as it was: for every fault-injection
//! step (crate::fault), a child blocked in pause() is dumped with the failure injected, and its
//! registers, signal mask, the code bytes under the syscall stub, its memory, mappings and fds
//! must be what they were before, and it must go on handling signals.

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use super::testutil::{
    count_signals, pattern_page, pause_forever, seize_and_stop, signal_count, spawn_with,
    wait_interrupt_stop, wait_until, Region, SharedPage,
};
use super::*;
use crate::images::ArchRegs;
use crate::proc::{MapEntry, OpenFd};
use crate::ptrace;

/// Every step a dump of a single-threaded process reaches, in order. The remote syscalls are
/// memfd_create, mmap, close (mapping the parasite), brk, munmap (the cure); see crate::infect.
const STEPS: &[&str] = &[
    "seize",
    "remote-syscall-1",
    "remote-syscall-2",
    "remote-syscall-3",
    "blob-mapped",
    "parasite-command",
    "remote-syscall-4",
    "before-cure",
    "remote-syscall-5",
    "pages",
];

/// Everything a failed dump must leave as it was, as seen from outside.
#[derive(Debug, PartialEq)]
struct Observed {
    regs: ArchRegs,
    sigmask: u64,
    /// The first 24 bytes of every executable mapping (the stub goes into one of them).
    code: Vec<(u64, Vec<u8>)>,
    memory: Vec<u8>,
    maps: Vec<MapEntry>,
    fds: Vec<OpenFd>,
}

/// Seizes the child, records what it looks like, and lets it go.
fn observe(pid: i32, region: &Region) -> Observed {
    seize_and_stop(pid);
    let proc = Proc::open(pid).unwrap();
    let maps = proc.maps().unwrap();
    let code = maps
        .iter()
        .filter(|m| m.exec && m.name != crate::proc::MapName::Vsyscall)
        .map(|m| {
            let mut b = vec![0u8; 24];
            crate::ptrace::read_memory(pid, m.start, &mut b).unwrap();
            (m.start, b)
        })
        .collect();
    let mut memory = vec![0u8; region.len];
    crate::ptrace::read_memory(pid, region.addr, &mut memory).unwrap();
    let seen = Observed {
        regs: crate::arch::regs::capture(pid).unwrap(),
        sigmask: ptrace::get_sigmask(pid).unwrap(),
        code,
        memory,
        maps,
        fds: proc.fds().unwrap(),
    };
    ptrace::detach(pid, 0).unwrap();
    seen
}

#[test]
fn a_dump_failing_at_any_step_leaves_the_process_as_it_was() {
    let ps = crate::arch::page_size() as usize;
    let tmp = tempfile::tempdir().unwrap();
    let mut region = Region::new(8, false);
    for i in 0..8 {
        region.bytes()[i * ps..(i + 1) * ps].copy_from_slice(&pattern_page(3, i, ps));
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(tmp.path().join("data"))
        .unwrap();
    let dirf = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(tmp.path())
        .unwrap();
    let page = SharedPage::new();
    let mut child = spawn_with(
        &[(file.as_raw_fd(), 4, false), (dirf.as_raw_fd(), 7, true)],
        &page,
        || count_signals(&page, libc::SIGUSR1, libc::SA_RESTART, &[]),
        pause_forever,
    );
    let pid = child.pid;
    assert!(wait_until(|| child.state() == 'S'));
    let dir = tmp.path().join("img");

    for (n, step) in STEPS.iter().enumerate() {
        let before = observe(pid, &region);
        assert_eq!(before.memory[..ps], pattern_page(3, 0, ps)[..]);

        let injection = crate::fault::inject_here(step);
        let err = dump(&DumpOptions {
            pid,
            dir: dir.clone(),
            leave_running: false,
            ..Default::default()
        })
        .unwrap_err();
        drop(injection);
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("injected failure at {step} ")),
            "{step}: {msg}"
        );
        assert!(!dir.exists(), "{step}: an image was left");

        assert!(
            wait_until(|| child.tracer() == 0 && child.state() == 'S'),
            "{step}: not released"
        );
        let after = observe(pid, &region);
        assert_eq!(after.regs, before.regs, "{step}: registers");
        assert_eq!(after.sigmask, before.sigmask, "{step}: signal mask");
        assert_eq!(after.code, before.code, "{step}: code bytes");
        assert!(after.memory == before.memory, "{step}: memory");
        assert_eq!(after.maps, before.maps, "{step}: mappings");
        assert_eq!(after.fds, before.fds, "{step}: fds");

        // It keeps working: it handles a signal and goes back to its pause.
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGUSR1) };
        assert!(
            wait_until(|| signal_count(&page, libc::SIGUSR1) == n as u64 + 1),
            "{step}: the child no longer handles signals"
        );
        assert!(wait_until(|| child.state() == 'S'));
    }

    // Without an injected failure the same child dumps fine, and is then gone.
    dump(&DumpOptions {
        pid,
        dir: dir.clone(),
        leave_running: false,
        ..Default::default()
    })
    .unwrap();
    assert!(child.reaped_already());
    assert!(open_image(&dir).is_ok());
    let _ = (&file, &dirf);
}

fn open_image(dir: &std::path::Path) -> Result<crate::images::Image, crate::images::ImageError> {
    crate::images::open_image(dir)
}

/// Every step a dump of a multi-threaded process reaches: the single-threaded ones plus
/// `thread-parasite`, in the first thread after the leader, at its breakpoint.
const THREADED_STEPS: &[&str] = &[
    "seize",
    "remote-syscall-1",
    "remote-syscall-2",
    "remote-syscall-3",
    "blob-mapped",
    "parasite-command",
    "thread-parasite",
    "remote-syscall-4",
    "before-cure",
    "remote-syscall-5",
    "pages",
];

/// What each thread looks like from outside, and the process's mappings and fds.
#[derive(Debug, PartialEq)]
struct ObservedThreads {
    threads: Vec<(i32, ArchRegs, u64)>,
    maps: Vec<MapEntry>,
    fds: Vec<OpenFd>,
}

fn observe_threads(pid: i32, tids: &[i32]) -> ObservedThreads {
    for &tid in tids {
        ptrace::seize(tid, nix::sys::ptrace::Options::empty()).unwrap();
        ptrace::interrupt(tid).unwrap();
    }
    for &tid in tids {
        wait_interrupt_stop(tid);
    }
    let proc = Proc::open(pid).unwrap();
    let seen = ObservedThreads {
        threads: tids
            .iter()
            .map(|&tid| {
                (
                    tid,
                    crate::arch::regs::capture(tid).unwrap(),
                    ptrace::get_sigmask(tid).unwrap(),
                )
            })
            .collect(),
        maps: proc.maps().unwrap(),
        fds: proc.fds().unwrap(),
    };
    for &tid in tids {
        ptrace::detach(tid, 0).unwrap();
    }
    seen
}

#[test]
fn a_multithreaded_dump_failing_at_any_step_leaves_every_thread_as_it_was() {
    use super::testutil::{slot, slot_word, spawn_threads_with, thread_tids, Work};
    // Threads blocked for good in calls that are re-executed the same way after each stop, so
    // their registers read the same between dumps; each handles SIGUSR2 sent to it alone.
    let works = [
        Work::Pause,
        Work::FutexForever,
        Work::PollForever,
        Work::CondWait,
    ];
    let tmp = tempfile::tempdir().unwrap();
    let page = SharedPage::new();
    let mut child = spawn_threads_with(
        &page,
        &works,
        || count_signals(&page, libc::SIGUSR1, libc::SA_RESTART, &[]),
        pause_forever,
    );
    let pid = child.pid;
    let tids: Vec<i32> = std::iter::once(pid)
        .chain(thread_tids(&page, works.len()))
        .collect();
    let state = |tid: i32| {
        procfs::process::Process::new(pid)
            .and_then(|p| p.task_from_tid(tid))
            .and_then(|t| t.stat())
            .map(|s| s.state)
            .unwrap_or('?')
    };
    let all_asleep = || tids.iter().all(|&t| state(t) == 'S');
    assert!(wait_until(all_asleep));
    let dir = tmp.path().join("img");

    for (n, step) in THREADED_STEPS.iter().enumerate() {
        let before = observe_threads(pid, &tids);
        let injection = crate::fault::inject_here(step);
        let err = dump(&DumpOptions {
            pid,
            dir: dir.clone(),
            leave_running: false,
            ..Default::default()
        })
        .unwrap_err();
        drop(injection);
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("injected failure at {step} ")),
            "{step}: {msg}"
        );
        assert!(!dir.exists(), "{step}: an image was left");
        assert!(
            wait_until(|| child.tracer() == 0 && all_asleep()),
            "{step}: not released"
        );
        let after = observe_threads(pid, &tids);
        for (b, a) in before.threads.iter().zip(&after.threads) {
            assert_eq!(a, b, "{step}: thread {} (registers, mask)", b.0);
        }
        assert_eq!(after.maps, before.maps, "{step}: mappings");
        assert_eq!(after.fds, before.fds, "{step}: fds");

        // Every worker still handles a signal of its own and goes back to its wait.
        for (i, &tid) in tids[1..].iter().enumerate() {
            // SAFETY: signalling our own child's thread.
            unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, libc::SIGUSR2) };
            assert!(
                wait_until(|| slot_word(&page, i, slot::SIGUSR2) == n as u64 + 1),
                "{step}: thread {tid} no longer handles signals"
            );
        }
        // The leader too.
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGUSR1) };
        assert!(
            wait_until(|| signal_count(&page, libc::SIGUSR1) == n as u64 + 1),
            "{step}: the leader no longer handles signals"
        );
        assert!(wait_until(all_asleep));
    }

    dump(&DumpOptions {
        pid,
        dir: dir.clone(),
        leave_running: false,
        ..Default::default()
    })
    .unwrap();
    assert!(child.reaped_already());
    assert_eq!(
        open_image(&dir).unwrap().processes[0].threads.len(),
        works.len() + 1
    );
}
