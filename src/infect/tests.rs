//! Infection of real forked children: the parasite runs, and the cure leaves every register,
//! code byte, mapping, fd and blocked syscall as it was.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;

use super::*;
use crate::dump::testutil::{pause_forever, seize_and_stop, spawn_with, wait_until, SharedPage};
use crate::images::ArchRegs;
use crate::ptrace;

/// A child seized and stopped by this test thread; detached on drop.
struct Seized {
    tid: i32,
}

impl Seized {
    fn new(tid: i32) -> Seized {
        seize_and_stop(tid);
        Seized { tid }
    }
}

impl Drop for Seized {
    fn drop(&mut self) {
        let _ = ptrace::detach(self.tid, 0);
    }
}

/// Everything the cure must put back, as seen from outside.
#[derive(Debug, PartialEq)]
struct Observed {
    regs: ArchRegs,
    sigmask: u64,
    stub: Vec<u8>,
    maps: Vec<MapEntry>,
    fds: Vec<OpenFd>,
}

fn observe(pid: i32) -> Observed {
    let proc = Proc::open(pid).unwrap();
    let maps = proc.maps().unwrap();
    let stub_at = stub_address(&maps).unwrap();
    let mut stub = vec![0u8; remote::STUB_AREA];
    ptrace::read_memory(pid, stub_at, &mut stub).unwrap();
    Observed {
        regs: crate::arch::regs::capture(pid).unwrap(),
        sigmask: ptrace::get_sigmask(pid).unwrap(),
        stub,
        maps,
        fds: proc.fds().unwrap(),
    }
}

/// A SIGUSR1 handler for the children: counts in word 6 of the shared page.
static mut COUNTER_PAGE: u64 = 0;

extern "C" fn count_sigusr1(_: libc::c_int) {
    // SAFETY: COUNTER_PAGE was set before the handler was installed and points at the shared
    // page; the atomic add is async-signal-safe.
    unsafe {
        let p = COUNTER_PAGE as *const std::sync::atomic::AtomicU64;
        (*p.add(6)).fetch_add(1, Ordering::SeqCst);
    }
}

fn install_counter(page_addr: u64) {
    // SAFETY: runs in the freshly forked child before anything else uses the static; then a
    // plain sigaction with a valid handler.
    unsafe {
        COUNTER_PAGE = page_addr;
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = count_sigusr1 as extern "C" fn(libc::c_int) as usize;
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
}

#[test]
fn ping_and_cure_put_everything_back() {
    let page = SharedPage::new();
    let addr = page.addr();
    let child = spawn_with(&[], &page, || install_counter(addr), pause_forever);
    let pid = child.pid;
    assert!(wait_until(|| child.state() == 'S'));
    {
        let _seized = Seized::new(pid);
        let before = observe(pid);

        let mut parasite = Parasite::inject(pid, pid).unwrap();
        // The comparison below can tell: the infected thread does look different.
        assert_ne!(observe(pid), before);
        let (map_at, map_len) = parasite.remote_mapping().unwrap();
        let during = Proc::open(pid).unwrap().maps().unwrap();
        let m = during.iter().find(|m| m.start == map_at).unwrap();
        assert_eq!(m.end - m.start, map_len);
        assert!(m.shared && m.exec, "{m:?}");
        assert!(m.display_name.contains("crest-parasite"), "{m:?}");
        let (stub_at, original) = parasite.stub_area();
        assert_eq!(original, before.stub);
        let mut now = [0u8; 8];
        ptrace::read_memory(pid, stub_at, &mut now).unwrap();
        assert_eq!(now, crate::arch::infect::SYSCALL_STUB);
        assert_eq!(parasite.remote_syscalls(), 3);

        parasite.ping().unwrap();
        parasite.ping().unwrap();
        parasite.cure().unwrap();

        assert_eq!(observe(pid), before);
    }
    // Detached: the child still pauses, and still handles signals.
    assert!(wait_until(|| child.tracer() == 0 && child.state() == 'S'));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    assert!(wait_until(|| page.word(6).load(Ordering::SeqCst) == 1));
    assert!(wait_until(|| child.state() == 'S'));
}

#[test]
fn a_sleep_interrupted_by_the_seize_resumes_and_completes_after_the_cure() {
    let page = SharedPage::new();
    let child = spawn_with(
        &[],
        &page,
        || {},
        || {
            page.word(2).store(1, Ordering::SeqCst);
            // A relative sleep: the seize interrupts it with -ERESTART_RESTARTBLOCK, and only
            // the kernel's restart block knows the time left.
            let ts = libc::timespec {
                tv_sec: 3,
                tv_nsec: 0,
            };
            // SAFETY: valid timespec; no remainder requested.
            let r = unsafe { libc::syscall(libc::SYS_nanosleep, &ts, std::ptr::null_mut::<u8>()) };
            page.word(3).store(r as u64, Ordering::SeqCst);
            page.word(4).store(1, Ordering::SeqCst);
            pause_forever()
        },
    );
    let pid = child.pid;
    assert!(wait_until(
        || page.word(2).load(Ordering::SeqCst) == 1 && child.state() == 'S'
    ));
    {
        let _seized = Seized::new(pid);
        let before = observe(pid);
        let ArchRegs::X86_64 { gpr, .. } = &before.regs else {
            unreachable!()
        };
        use crate::arch::regs::{ORIG_RAX, RAX};
        assert_eq!(gpr[ORIG_RAX], libc::SYS_nanosleep as u64);
        assert_eq!(gpr[RAX] as i64, -516, "-ERESTART_RESTARTBLOCK");

        let mut parasite = Parasite::inject(pid, pid).unwrap();
        parasite.collect(&[]).unwrap();
        assert!(parasite.brk().unwrap() > 0);
        parasite.cure().unwrap();
        assert_eq!(observe(pid), before);
    }
    // The kernel restarts the sleep through its restart block (restart_syscall), and the sleep
    // then ends normally: nanosleep returns 0, not -1/EINTR.
    let in_restart = || {
        matches!(
            procfs::process::Process::new(pid).and_then(|p| p.syscall()),
            Ok(procfs::process::Syscall::Blocked { syscall_number, .. })
                if syscall_number == libc::SYS_restart_syscall
        )
    };
    assert!(
        page.word(4).load(Ordering::SeqCst) == 0 && wait_until(in_restart),
        "the sleep was not restarted"
    );
    assert!(wait_until(|| page.word(4).load(Ordering::SeqCst) == 1));
    assert_eq!(page.word(3).load(Ordering::SeqCst), 0, "nanosleep failed");
}

#[test]
fn a_read_on_a_pipe_gets_the_data_written_after_the_cure() {
    let page = SharedPage::new();
    let (r, w) = nix::unistd::pipe().unwrap();
    let child = spawn_with(
        &[(r.as_raw_fd(), 3, false)],
        &page,
        || {},
        || {
            let mut buf = [0u8; 32];
            // SAFETY: reading into a local buffer from fd 3 (the pipe).
            let n = unsafe { libc::read(3, buf.as_mut_ptr().cast(), buf.len()) };
            page.word(3).store(n as u64, Ordering::SeqCst);
            for (i, chunk) in buf.chunks_exact(8).enumerate() {
                page.word(8 + i).store(
                    u64::from_ne_bytes(chunk.try_into().unwrap()),
                    Ordering::SeqCst,
                );
            }
            page.word(4).store(1, Ordering::SeqCst);
            pause_forever()
        },
    );
    drop(r);
    let pid = child.pid;
    assert!(wait_until(|| child.state() == 'S'));
    {
        let _seized = Seized::new(pid);
        let before = observe(pid);
        let mut parasite = Parasite::inject(pid, pid).unwrap();
        parasite.collect(&[]).unwrap();
        parasite.cure().unwrap();
        assert_eq!(observe(pid), before);
    }
    assert!(wait_until(|| child.tracer() == 0));
    assert_eq!(
        page.word(4).load(Ordering::SeqCst),
        0,
        "read returned early"
    );
    nix::unistd::write(&w, b"after the cure").unwrap();
    assert!(wait_until(|| page.word(4).load(Ordering::SeqCst) == 1));
    assert_eq!(page.word(3).load(Ordering::SeqCst), 14);
    let mut got = Vec::new();
    for i in 0..2 {
        got.extend_from_slice(&page.word(8 + i).load(Ordering::SeqCst).to_ne_bytes());
    }
    assert_eq!(&got[..14], b"after the cure");
}

#[test]
fn collect_reads_the_childs_signal_state() {
    let page = SharedPage::new();
    let addr = page.addr();
    let child = spawn_with(
        &[],
        &page,
        || {
            install_counter(addr);
            // SAFETY: plain signal-state calls in the child.
            unsafe {
                libc::signal(libc::SIGUSR2, libc::SIG_IGN);
                libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1);
            }
        },
        pause_forever,
    );
    let pid = child.pid;
    assert!(wait_until(|| child.state() == 'S'));
    let _seized = Seized::new(pid);
    let mut parasite = Parasite::inject(pid, pid).unwrap();
    // A timer id the process does not have is reported, not ignored.
    let err = parasite.collect(&[4242]).unwrap_err();
    assert!(
        matches!(
            err,
            InfectError::Parasite {
                arg: 0,
                errno: Errno::EINVAL,
                ..
            }
        ),
        "{err}"
    );
    let state = parasite.collect(&[]).unwrap();
    parasite.cure().unwrap();
    let usr1 = state.sigactions[libc::SIGUSR1 as usize - 1];
    assert_eq!(
        usr1.handler,
        count_sigusr1 as extern "C" fn(libc::c_int) as usize as u64
    );
    assert_eq!(state.sigactions[libc::SIGUSR2 as usize - 1].handler, 1);
    assert_eq!(state.sigactions[libc::SIGKILL as usize - 1].handler, 0);
    assert_eq!(state.child_subreaper, 1);
    // The test harness's child got PR_SET_PDEATHSIG(SIGKILL) from spawn_with.
    assert_eq!(state.pdeath_signal, libc::SIGKILL as u64);
    assert_eq!(state.dumpable, 1);
}

#[test]
fn a_failed_infection_leaves_nothing_behind() {
    let page = SharedPage::new();
    let child = spawn_with(&[], &page, || {}, pause_forever);
    let pid = child.pid;
    assert!(wait_until(|| child.state() == 'S'));
    let _seized = Seized::new(pid);
    let before = observe(pid);
    for step in [
        "remote-syscall-1",
        "remote-syscall-2",
        "remote-syscall-3",
        "blob-mapped",
    ] {
        let guard = fault::inject_here(step);
        let err = Parasite::inject(pid, pid).unwrap_err();
        drop(guard);
        assert!(
            matches!(&err, InfectError::Injected(i) if i.step == step),
            "{step}: {err}"
        );
        assert_eq!(observe(pid), before, "after a failure at {step}");
    }
    // A failure after the parasite ran, and one inside the cure (its munmap).
    let guard = fault::inject_here("parasite-command");
    let mut parasite = Parasite::inject(pid, pid).unwrap();
    assert!(matches!(parasite.ping(), Err(InfectError::Injected(_))));
    drop(parasite);
    drop(guard);
    assert_eq!(observe(pid), before);
    let guard = fault::inject_here("remote-syscall-4");
    let parasite = Parasite::inject(pid, pid).unwrap();
    assert!(matches!(parasite.cure(), Err(InfectError::Injected(_))));
    drop(guard);
    assert_eq!(observe(pid), before);
}

#[test]
fn the_stub_goes_into_private_program_code_only() {
    let entry = |start: u64, len: u64, exec: bool, shared: bool, name: MapName| MapEntry {
        start,
        end: start + len,
        read: true,
        write: false,
        exec,
        shared,
        offset: 0,
        dev: (0, 0),
        inode: 0,
        name,
        display_name: String::new(),
        vm_flags: crate::proc::VmFlags::empty(),
        flag_codes: Vec::new(),
    };
    let file = || MapName::Path {
        path: "/bin/x".into(),
        deleted: false,
    };
    let maps = vec![
        entry(0x1000, 0x1000, false, false, file()),
        entry(0x2000, 0x800, true, false, file()),
        entry(0x3000, 0x1000, true, true, file()),
        entry(0x4000, 0x2000, true, false, MapName::Vdso),
        entry(0x8000, 0x1000, true, false, file()),
    ];
    assert_eq!(stub_address(&maps), Some(0x8000));
    assert_eq!(stub_address(&maps[..4]), None);
}

/// Registers and signal mask of each thread.
fn thread_states(tids: &[i32]) -> Vec<(ArchRegs, u64)> {
    tids.iter()
        .map(|&tid| {
            (
                crate::arch::regs::capture(tid).unwrap(),
                ptrace::get_sigmask(tid).unwrap(),
            )
        })
        .collect()
}

#[test]
fn each_thread_runs_the_parasite_in_turn_and_is_put_back_at_once() {
    use crate::dump::testutil::{
        progress, slot, slot_word, spawn_threads, thread_name, thread_tids, threads_progress, Work,
    };
    let works = [Work::AltStack, Work::TimedWait, Work::Busy];
    let page = SharedPage::new();
    let child = spawn_threads(&page, &works, || {});
    let pid = child.pid;
    let workers = thread_tids(&page, works.len());
    {
        let _seized: Vec<Seized> = std::iter::once(pid)
            .chain(workers.iter().copied())
            .map(Seized::new)
            .collect();
        let before = thread_states(&workers);
        let maps = Proc::open(pid).unwrap().maps().unwrap();

        let mut parasite = Parasite::inject(pid, pid).unwrap();
        let leader = parasite.collect(&[]).unwrap();
        assert_ne!(leader.sigactions[libc::SIGUSR2 as usize - 1].handler, 0);
        for (i, &tid) in workers.iter().enumerate() {
            let s = parasite.collect_thread(tid).unwrap();
            // This thread's own state, not the leader's.
            let w = |n| slot_word(&page, i, n);
            assert_eq!(s.clear_child_tid, w(slot::CLEAR_CHILD_TID), "thread {tid}");
            assert_ne!(s.clear_child_tid, leader.clear_child_tid);
            assert_eq!(
                (s.robust_list, s.robust_list_len),
                (w(slot::ROBUST_HEAD), w(slot::ROBUST_LEN))
            );
            let alt = if s.altstack.flags & libc::SS_DISABLE != 0 {
                (0, 0)
            } else {
                (s.altstack.sp, s.altstack.size)
            };
            assert_eq!(alt, (w(slot::ALT_SP), w(slot::ALT_SIZE)));
            assert_eq!(&s.name[..10], &thread_name(i)[..10]);
            // Only the per-thread fields are filled.
            assert_eq!(s.sigactions[libc::SIGUSR2 as usize - 1].handler, 0);
            // Put back at once: the next thread runs on the same stack.
            assert_eq!(thread_states(&[tid])[0], before[i], "thread {tid}");
        }
        // The infected thread may run the per-thread command too.
        let again = parasite.collect_thread(pid).unwrap();
        assert_eq!(again.clear_child_tid, leader.clear_child_tid);
        // A thread crest has not seized cannot be used.
        assert!(parasite.collect_thread(i32::MAX).is_err());
        parasite.cure().unwrap();
        assert_eq!(thread_states(&workers), before);
        assert_eq!(Proc::open(pid).unwrap().maps().unwrap(), maps);
    }
    // Detached: every thread carries on.
    let at = progress(&page, works.len());
    assert!(threads_progress(&page, &at, 3));
    for i in 0..works.len() {
        assert_eq!(slot_word(&page, i, slot::FAILURES), 0);
    }
}
