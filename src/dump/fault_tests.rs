//! A dump that fails at any step leaves the target exactly as it was: for every fault-injection
//! step (crate::fault), a child blocked in pause() is dumped with the failure injected, and its
//! registers, signal mask, the code bytes under the syscall stub, its memory, mappings and fds
//! must be what they were before, and it must go on handling signals.

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use super::testutil::{
    count_signals, pattern_page, pause_forever, signal_count, spawn_with, wait_until, Region,
    SharedPage,
};
use super::*;
use crate::images::ArchRegs;
use crate::proc::{MapEntry, OpenFd};
use crate::ptrace::{self, Stop, PTRACE_EVENT_STOP};

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
    ptrace::seize(pid, nix::sys::ptrace::Options::empty()).unwrap();
    ptrace::interrupt(pid).unwrap();
    loop {
        match ptrace::wait_stop(pid).unwrap() {
            Stop::Event {
                event: PTRACE_EVENT_STOP,
                ..
            } => break,
            Stop::Signal(sig) => ptrace::cont(pid, sig).unwrap(),
            other => panic!("unexpected stop {other:?}"),
        }
    }
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
    })
    .unwrap();
    assert!(child.reaped_already());
    assert!(open_image(&dir).is_ok());
    let _ = (&file, &dirf);
}

fn open_image(dir: &std::path::Path) -> Result<crate::images::Image, crate::images::ImageError> {
    crate::images::open_image(dir)
}
