//! End-to-end dumps of real forked children, read back with `images::open_image`.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::testutil::{
    pattern_page, pause_forever, spawn, spawn_with, wait_until, Region, SharedPage,
};
use super::*;
use crate::images::{open_image, ArchRegs, FileKind, PageRun, VmaBacking};

fn stored(runs: &[PageRun], data: &[u8], vaddr: u64, ps: u64) -> Option<Vec<u8>> {
    runs.iter()
        .find(|r| r.vaddr <= vaddr && vaddr < r.vaddr + r.npages * ps)
        .map(|r| {
            let off = (r.file_offset + (vaddr - r.vaddr)) as usize;
            data[off..off + ps as usize].to_vec()
        })
}

fn block_sigusr1() {
    // SAFETY: sigset manipulation on a local, then sigprocmask; async-signal-safe.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

#[test]
fn leave_running_dump_is_complete_and_the_child_runs_on() {
    let ps = crate::arch::page_size();
    let psz = ps as usize;
    let tmp = tempfile::tempdir().unwrap();

    // Memory: 32 pattern pages, 16 written-zero pages, 16 untouched pages.
    let mut region = Region::new(64, false);
    for i in 0..32 {
        region.bytes()[i * psz..(i + 1) * psz].copy_from_slice(&pattern_page(7, i, psz));
    }
    region.bytes()[32 * psz..48 * psz].fill(0);
    // Shared anonymous memory the child never touches.
    let mut shared = Region::new(2, true);
    shared.bytes()[psz..].copy_from_slice(&pattern_page(8, 1, psz));

    // Files: an append-mode log shared by fds 5 and 6, the same file opened again as fd 7,
    // the directory as fd 8 with close-on-exec.
    let log_path = tmp.path().join("log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .unwrap();
    let log2 = std::fs::OpenOptions::new()
        .read(true)
        .open(&log_path)
        .unwrap();
    let dirf = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(tmp.path())
        .unwrap();
    let fds = [
        (log.as_raw_fd(), 5, false),
        (log.as_raw_fd(), 6, false),
        (log2.as_raw_fd(), 7, false),
        (dirf.as_raw_fd(), 8, true),
    ];
    let page = SharedPage::new();
    let mut child = spawn(&fds, &page, || {
        block_sigusr1();
        // SAFETY: write(2) on the fd set up above.
        unsafe { libc::write(5, b"hello".as_ptr().cast(), 5) };
    });
    let pid = child.pid;

    let dir = tmp.path().join("img");
    let report = dump(&DumpOptions {
        pid,
        dir: dir.clone(),
        leave_running: true,
        ..Default::default()
    })
    .unwrap();
    assert!(report.render().contains(&format!("dumped process {pid}")));

    // The child carries on, untraced.
    let at = page.counter();
    assert!(
        wait_until(|| page.counter() > at + 5),
        "child stopped running"
    );
    assert_eq!(child.tracer(), 0);
    assert!(!child.reaped_already());

    let image = open_image(&dir).unwrap();
    assert_eq!(image.inventory.root_pid, pid);
    assert_eq!(image.inventory.page_size, ps);
    let p = &image.processes[0];
    assert_eq!(p.pid, pid);
    assert_eq!(p.threads.len(), 1);
    let t = &p.threads[0];
    assert_eq!(t.tid, pid);
    assert_eq!(t.sigmask, 1 << (libc::SIGUSR1 - 1));
    if let ArchRegs::X86_64 { gpr, xstate } = &t.regs {
        assert_eq!(gpr.len(), 27);
        assert!(xstate.len() >= 576);
    } else {
        panic!("x86_64 registers expected");
    }
    assert!(t.rseq.is_some(), "glibc registers rseq");
    assert_eq!(&p.mm.auxv[p.mm.auxv.len() - 2..], &[libc::AT_NULL, 0]);
    assert!(p.vdso_blake3.is_some());
    assert!(p.vmas.iter().any(|v| v.backing == VmaBacking::Vdso));
    assert!(p.vmas.iter().all(|v| v.name != "[vsyscall]"));
    assert_eq!(
        p.files[p.exe_file as usize].path,
        std::fs::read_link("/proc/self/exe")
            .unwrap()
            .to_str()
            .unwrap()
    );
    assert_eq!(p.files[p.cwd_file as usize].kind, FileKind::Directory);
    assert_eq!(p.creds.uid[0], nix::unistd::getuid().as_raw());
    assert_eq!(p.rlimits.len(), 16);

    // Memory: the region's VMA and exactly its pattern pages.
    let vma = p
        .vmas
        .iter()
        .find(|v| v.start <= region.addr && region.addr < v.end)
        .unwrap();
    assert_eq!(vma.backing, VmaBacking::Anonymous);
    assert!(!vma.shared);
    let data = std::fs::read(dir.join(&p.pages_file)).unwrap();
    for i in 0..64u64 {
        let got = stored(&p.page_runs, &data, region.addr + i * ps, ps);
        if i < 32 {
            assert_eq!(got, Some(pattern_page(7, i as usize, psz)), "page {i}");
        } else {
            assert_eq!(got, None, "page {i} is zero and must not be stored");
        }
    }
    let svma = p.vmas.iter().find(|v| v.start == shared.addr).unwrap();
    assert!(svma.shared);
    assert!(
        matches!(svma.backing, VmaBacking::SharedAnonymous { size, offset: 0, .. } if size == svma.end - svma.start),
        "{:?}",
        svma.backing
    );
    assert_eq!(
        stored(&p.page_runs, &data, shared.addr + ps, ps),
        Some(pattern_page(8, 1, psz))
    );
    assert_eq!(stored(&p.page_runs, &data, shared.addr, ps), None);

    // Fds: 0-2 share /dev/null; 5 and 6 share the log description (offset 5, O_APPEND);
    // 7 has its own description of the same file; 8 is the directory, close-on-exec.
    let fd = |n: i32| *p.fds.iter().find(|f| f.fd == n).unwrap();
    let desc = |n: i32| &p.open_files[fd(n).description as usize];
    assert_eq!(p.fds.len(), 7, "{:?}", p.fds);
    assert_eq!(fd(0).description, fd(1).description);
    assert_eq!(fd(1).description, fd(2).description);
    assert!(matches!(
        p.files[desc(0).file as usize].kind,
        FileKind::CharDevice { .. }
    ));
    assert_eq!(fd(5).description, fd(6).description);
    assert_ne!(fd(5).description, fd(7).description);
    assert_eq!(desc(5).file, desc(7).file);
    assert_eq!(desc(5).pos, 5);
    assert_eq!(desc(7).pos, 0);
    assert_ne!(desc(5).flags & libc::O_APPEND as u32, 0);
    assert_eq!(desc(5).flags & libc::O_CLOEXEC as u32, 0);
    assert_eq!(
        p.files[desc(5).file as usize].path,
        log_path.to_str().unwrap()
    );
    assert!(fd(8).cloexec && !fd(5).cloexec);
    assert_eq!(p.files[desc(8).file as usize].kind, FileKind::Directory);

    // Stats add up.
    let s = &image.inventory.stats;
    assert_eq!(
        s.pages_scanned,
        s.pages_absent + s.pages_file_backed + s.pages_zero + s.pages_written
    );
    assert!(s.pages_zero >= 16);
    assert!(s.pages_written >= 33);
    assert_eq!(s.bytes_written, s.pages_written * ps);
    assert!(s.rss_bytes > 0);
    let names: Vec<&str> = s.phases_us.iter().map(|(n, _)| n.as_str()).collect();
    // With -R the process runs on as soon as its memory is read; the writing comes after.
    assert_eq!(
        names,
        [
            "hint", "prepare", "freeze", "threads", "parasite", "collect", "resolve", "pages",
            "release", "write"
        ]
    );
    assert_eq!(s.pages_present, s.pages_scanned - s.pages_absent);
    assert_eq!(s.gc_hint, crate::images::GcHintStats::NotAJvm);

    // A second dump into the same directory replaces the image.
    page.word(1).store(0, std::sync::atomic::Ordering::SeqCst);
    dump(&DumpOptions {
        pid,
        dir: dir.clone(),
        leave_running: true,
        ..Default::default()
    })
    .unwrap();
    assert!(open_image(&dir).is_ok());
    assert!(!child.reaped_already());
    let _ = (&log, &log2, &dirf);
}

#[test]
fn default_dump_kills_the_process_once_the_image_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let page = SharedPage::new();
    let mut child = spawn(&[], &page, || {});
    let dir = tmp.path().join("img");
    let report = dump(&DumpOptions {
        pid: child.pid,
        dir: dir.clone(),
        leave_running: false,
        ..Default::default()
    })
    .unwrap();
    assert!(!report.left_running);
    // crest, as tracer and here also the parent, collected the child's end.
    assert!(child.reaped_already());
    let image = open_image(&dir).unwrap();
    assert_eq!(image.processes[0].pid, child.pid);
}

#[test]
fn a_thread_blocked_in_a_restartable_syscall_gets_the_restart_fixup() {
    let tmp = tempfile::tempdir().unwrap();
    let page = SharedPage::new();
    // pause() returns -ERESTARTNOHAND when interrupted: the image must re-execute it.
    let child = spawn_with(&[], &page, || {}, pause_forever);
    assert!(wait_until(|| child.state() == 'S'));
    let dir = tmp.path().join("img");
    dump(&DumpOptions {
        pid: child.pid,
        dir: dir.clone(),
        leave_running: true,
        ..Default::default()
    })
    .unwrap();
    let image = open_image(&dir).unwrap();
    let ArchRegs::X86_64 { gpr, .. } = &image.processes[0].threads[0].regs else {
        panic!("x86_64 registers expected");
    };
    use crate::arch::regs::{ORIG_RAX, RIP};
    assert_eq!(gpr[ORIG_RAX], libc::SYS_pause as u64);
    assert_eq!(gpr[10], libc::SYS_pause as u64, "rax = orig_rax");
    // rip was moved back onto the `syscall` instruction (0f 05).
    let mut insn = [0u8; 2];
    crate::ptrace::read_memory(child.pid, gpr[RIP], &mut insn).unwrap();
    assert_eq!(insn, [0x0f, 0x05]);
    // The live child is untouched: still in pause, untraced.
    assert!(wait_until(|| child.tracer() == 0 && child.state() == 'S'));
}

#[test]
fn a_missing_pid_is_a_clear_error_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("img");
    let err = dump(&DumpOptions {
        pid: 0x7fff_fff0,
        dir: dir.clone(),
        leave_running: false,
        ..Default::default()
    })
    .unwrap_err();
    assert!(
        matches!(err, DumpError::NoSuchProcess { pid: 0x7fff_fff0 }),
        "{err:?}"
    );
    assert!(err.to_string().contains("does not exist"));
    assert!(!dir.exists());
}

extern "C" fn idle_thread(_: *mut libc::c_void) -> libc::c_int {
    loop {
        // SAFETY: a raw ppoll with no fds and no timeout blocks until a signal; this thread
        // shares no state and calls nothing of glibc's that would touch its (borrowed) TLS.
        unsafe {
            libc::syscall(
                libc::SYS_ppoll,
                std::ptr::null_mut::<libc::pollfd>(),
                0,
                std::ptr::null::<libc::timespec>(),
                std::ptr::null::<libc::sigset_t>(),
            )
        };
    }
}

#[test]
fn a_raw_clone_thread_is_dumped_and_the_process_keeps_running() {
    let tmp = tempfile::tempdir().unwrap();
    let stack = Region::new(16, false);
    let stack_top = stack.addr + stack.len as u64;
    let page = SharedPage::new();
    let mut child = spawn(&[], &page, || {
        let flags = libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM;
        // SAFETY: the new thread runs on its own stack (inherited mapping) and only pauses.
        let r = unsafe {
            libc::clone(
                idle_thread,
                stack_top as *mut libc::c_void,
                flags,
                std::ptr::null_mut(),
            )
        };
        if r <= 0 {
            // SAFETY: give up without unwinding; the parent then times out waiting.
            unsafe { libc::_exit(1) };
        }
    });
    let pid = child.pid;
    let tids = || {
        procfs::process::Process::new(pid)
            .and_then(|p| p.tasks())
            .map(|t| {
                t.filter_map(|t| t.ok())
                    .map(|t| t.tid)
                    .collect::<Vec<i32>>()
            })
            .unwrap_or_default()
    };
    assert!(wait_until(|| tids().len() == 2));
    let other = *tids().iter().find(|&&t| t != child.pid).unwrap();
    let dir = tmp.path().join("img");
    dump(&DumpOptions {
        pid: child.pid,
        dir: dir.clone(),
        leave_running: true,
        ..Default::default()
    })
    .unwrap();
    let at = page.counter();
    assert!(wait_until(|| page.counter() > at + 5));
    assert!(!child.reaped_already());
    assert_eq!(child.tracer(), 0);
    assert_eq!(tids().len(), 2, "a thread was lost");

    let image = open_image(&dir).unwrap();
    let threads = &image.processes[0].threads;
    assert_eq!(threads.len(), 2);
    assert_eq!(threads[0].tid, child.pid);
    assert_eq!(threads[1].tid, other);
    // A CLONE_VM thread starts without rseq (kernel/rseq.c, rseq_fork) and this one never
    // registered; the leader keeps glibc's.
    assert!(threads[0].rseq.is_some());
    assert!(threads[1].rseq.is_none());
    // Stopped in ppoll without timeout: -ERESTARTNOHAND, so the image re-executes it.
    let ArchRegs::X86_64 { gpr, .. } = &threads[1].regs else {
        panic!("x86_64 registers expected");
    };
    use crate::arch::regs::{ORIG_RAX, RAX, RIP, RSP};
    assert_eq!(gpr[ORIG_RAX], libc::SYS_ppoll as u64);
    assert_eq!(gpr[RAX], libc::SYS_ppoll as u64);
    let mut insn = [0u8; 2];
    crate::ptrace::read_memory(child.pid, gpr[RIP], &mut insn).unwrap();
    assert_eq!(insn, [0x0f, 0x05]);
    assert!(stack.addr < gpr[RSP] && gpr[RSP] <= stack_top);
    // Its own (empty) per-thread state, not the leader's.
    let st = &threads[1].state;
    assert_eq!((st.clear_child_tid, st.robust_list), (0, 0));
    assert_eq!(st.altstack, None);
}

#[test]
fn a_failure_while_frozen_releases_the_process_and_leaves_no_image() {
    let tmp = tempfile::tempdir().unwrap();
    // An io_uring instance: something crest refuses.
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup writes at most 120 bytes of io_uring_params into a live buffer
    // and returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4, params.as_mut_ptr()) } as i32;
    assert!(
        raw >= 0,
        "io_uring_setup: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: raw is a descriptor we just created and own.
    let efd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
    let page = SharedPage::new();
    let mut child = spawn(&[(efd.as_raw_fd(), 4, false)], &page, || {});
    drop(efd);
    let dir = tmp.path().join("img");
    // An old image in the way must survive a failed dump untouched.
    std::fs::create_dir(&dir).unwrap();
    std::fs::File::create(dir.join("marker"))
        .unwrap()
        .write_all(b"old")
        .unwrap();
    let err = dump(&DumpOptions {
        pid: child.pid,
        dir: dir.clone(),
        leave_running: false,
        ..Default::default()
    })
    .unwrap_err();
    assert!(
        matches!(&err, DumpError::UnsupportedFd { pid, fd: 4, what } if *pid == child.pid && what.contains("io_uring")),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("fd 4") && msg.contains(&child.pid.to_string()),
        "{msg}"
    );
    assert_eq!(std::fs::read(dir.join("marker")).unwrap(), b"old");
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        1,
        "no temporary left"
    );
    let at = page.counter();
    assert!(wait_until(|| page.counter() > at + 5), "child must run on");
    assert_eq!(child.tracer(), 0);
    assert!(!child.reaped_already());
}

#[test]
fn dumping_crest_itself_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let err = dump(&DumpOptions {
        pid: std::process::id() as i32,
        dir: tmp.path().join("img"),
        leave_running: true,
        ..Default::default()
    })
    .unwrap_err();
    assert!(matches!(err, DumpError::SelfDump { .. }));
}

#[test]
fn dumping_an_ancestor_of_crest_is_refused_saying_why() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = nix::unistd::getppid().as_raw();
    let err = dump(&DumpOptions {
        pid: parent,
        dir: tmp.path().join("img"),
        leave_running: true,
        ..Default::default()
    })
    .unwrap_err();
    assert!(
        matches!(err, DumpError::AncestorDump { pid, .. } if pid == parent),
        "{err}"
    );
    assert!(err.to_string().contains("an ancestor of crest"), "{err}");
    assert!(!tmp.path().join("img").exists());
}

#[test]
fn an_already_traced_process_is_refused_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let page = SharedPage::new();
    let child = spawn(&[], &page, || {});
    crate::ptrace::seize(child.pid, nix::sys::ptrace::Options::empty()).unwrap();
    let err = dump(&DumpOptions {
        pid: child.pid,
        dir: tmp.path().join("img"),
        leave_running: true,
        ..Default::default()
    })
    .unwrap_err();
    assert!(
        matches!(err, DumpError::AlreadyTraced { pid, tracer } if pid == child.pid && tracer == nix::unistd::gettid().as_raw()),
        "{err:?}"
    );
    // Still ours to release: interrupt, wait, detach.
    crate::ptrace::interrupt(child.pid).unwrap();
    crate::ptrace::wait_stop(child.pid).unwrap();
    crate::ptrace::detach(child.pid, 0).unwrap();
    let at = page.counter();
    assert!(wait_until(|| page.counter() > at + 2));
}

/// Offset of `si_value` in a siginfo of a queued signal (`_rt`: pid, uid, then the sigval).
const SI_VALUE: usize = 24;
const SI_PID: usize = 16;
const SI_QUEUE: i32 = -1;
const SI_TKILL: i32 = -6;

fn si_i32(info: &[u8], off: usize) -> i32 {
    i32::from_ne_bytes(info[off..off + 4].try_into().unwrap())
}

#[test]
fn the_parasite_collects_what_the_child_set_up_and_the_child_runs_on() {
    use super::testutil::{count_signals, counting_handler, pause_forever, signal_count};
    let tmp = tempfile::tempdir().unwrap();
    let page = SharedPage::new();
    let altstack = Region::new(16, false);
    let (alt_sp, alt_size) = (altstack.addr, altstack.len as u64);
    let rtsig = libc::SIGRTMIN() + 2;
    let tid_addr = page.addr() + 8 * 200;
    let robust_head = page.addr() + 8 * 210;
    let child = spawn_with(
        &[],
        &page,
        || {
            count_signals(
                &page,
                libc::SIGUSR1,
                libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART,
                &[libc::SIGUSR2, libc::SIGTERM],
            );
            count_signals(&page, libc::SIGALRM, libc::SA_RESTART, &[]);
            count_signals(&page, rtsig, libc::SA_SIGINFO | libc::SA_RESTART, &[]);
            // SAFETY: (whole block) plain process-state calls with valid local arguments.
            unsafe {
                libc::signal(libc::SIGHUP, libc::SIG_IGN);
                let ss = libc::stack_t {
                    ss_sp: alt_sp as *mut libc::c_void,
                    ss_flags: 0,
                    ss_size: alt_size as usize,
                };
                assert_eq!(libc::sigaltstack(&ss, std::ptr::null_mut()), 0);
                let tick = libc::timeval {
                    tv_sec: 0,
                    tv_usec: 5000,
                };
                let it = libc::itimerval {
                    it_interval: tick,
                    it_value: tick,
                };
                assert_eq!(
                    libc::setitimer(libc::ITIMER_REAL, &it, std::ptr::null_mut()),
                    0
                );
                let mut ev: libc::sigevent = std::mem::zeroed();
                ev.sigev_notify = libc::SIGEV_SIGNAL;
                ev.sigev_signo = rtsig;
                ev.sigev_value = libc::sigval {
                    sival_ptr: 0xfeed as *mut libc::c_void,
                };
                let mut timer: libc::timer_t = std::ptr::null_mut();
                assert_eq!(
                    libc::timer_create(libc::CLOCK_MONOTONIC, &mut ev, &mut timer),
                    0
                );
                let spec = libc::itimerspec {
                    it_interval: libc::timespec {
                        tv_sec: 0,
                        tv_nsec: 7_000_000,
                    },
                    it_value: libc::timespec {
                        tv_sec: 0,
                        tv_nsec: 7_000_000,
                    },
                };
                assert_eq!(
                    libc::timer_settime(timer, 0, &spec, std::ptr::null_mut()),
                    0
                );

                // Held signals: one queued to the process with a value, one to the thread.
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGUSR2);
                libc::sigaddset(&mut set, libc::SIGTTIN);
                libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                let value = libc::sigval {
                    sival_ptr: 0xabcdef as *mut libc::c_void,
                };
                assert_eq!(libc::sigqueue(libc::getpid(), libc::SIGUSR2, value), 0);
                libc::syscall(
                    libc::SYS_tgkill,
                    libc::getpid(),
                    libc::gettid(),
                    libc::SIGTTIN,
                );

                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1);
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                libc::syscall(libc::SYS_set_tid_address, tid_addr);
                libc::syscall(libc::SYS_set_robust_list, robust_head, 24usize);
                libc::personality(libc::ADDR_NO_RANDOMIZE as libc::c_ulong);
            }
        },
        pause_forever,
    );
    let pid = child.pid;
    // Both timers tick.
    assert!(wait_until(
        || signal_count(&page, libc::SIGALRM) > 2 && signal_count(&page, rtsig) > 2
    ));

    let dir = tmp.path().join("img");
    dump(&DumpOptions {
        pid,
        dir: dir.clone(),
        leave_running: true,
        ..Default::default()
    })
    .unwrap();

    // The child runs on: untraced, its timers still tick, its held signals still pending.
    assert!(wait_until(|| child.tracer() == 0));
    let (alrm, rt) = (
        signal_count(&page, libc::SIGALRM),
        signal_count(&page, rtsig),
    );
    assert!(wait_until(
        || signal_count(&page, libc::SIGALRM) > alrm + 2 && signal_count(&page, rtsig) > rt + 2
    ));
    let status = procfs::process::Process::new(pid)
        .unwrap()
        .status()
        .unwrap();
    assert_ne!(
        status.shdpnd & (1 << (libc::SIGUSR2 - 1)),
        0,
        "SIGUSR2 consumed"
    );
    assert_ne!(
        status.sigpnd & (1 << (libc::SIGTTIN - 1)),
        0,
        "SIGTTIN consumed"
    );
    assert_eq!(signal_count(&page, libc::SIGUSR1), 0);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    assert!(wait_until(|| signal_count(&page, libc::SIGUSR1) == 1));

    let image = open_image(&dir).unwrap();
    let p = &image.processes[0];
    let t = &p.task;
    assert_eq!(t.sigactions.len(), 64);
    let usr1 = t.sigactions[libc::SIGUSR1 as usize - 1];
    assert_eq!(usr1.handler, counting_handler());
    let want = (libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART) as u64;
    assert_eq!(usr1.flags & want, want);
    const SA_RESTORER: u64 = 0x0400_0000;
    assert_ne!(usr1.flags & SA_RESTORER, 0, "glibc sets a restorer");
    assert_ne!(usr1.restorer, 0);
    assert_eq!(
        usr1.mask,
        (1 << (libc::SIGUSR2 - 1)) | (1 << (libc::SIGTERM - 1))
    );
    assert_eq!(
        t.sigactions[libc::SIGHUP as usize - 1].handler,
        1,
        "SIG_IGN"
    );
    assert_eq!(
        t.sigactions[libc::SIGINT as usize - 1].handler,
        0,
        "SIG_DFL"
    );
    assert_eq!(t.sigactions[rtsig as usize - 1].handler, counting_handler());

    assert_eq!(t.itimers.len(), 3);
    assert_eq!(t.itimers[0].interval_us, 5000);
    // 0 when it expired with its SIGALRM still pending (re-armed on dequeue); restore arms it.
    assert!(t.itimers[0].value_us <= 5000);
    assert_eq!(t.itimers[1], crate::images::ITimer::default());
    assert_eq!(t.posix_timers.len(), 1);
    let pt = t.posix_timers[0];
    assert_eq!(pt.signo, rtsig);
    assert_eq!(pt.sigev_value, 0xfeed);
    assert_eq!(pt.notify, libc::SIGEV_SIGNAL);
    assert_eq!(pt.clock, libc::CLOCK_MONOTONIC);
    assert_eq!(pt.interval_ns, 7_000_000);
    assert!(pt.value_ns > 0 && pt.value_ns <= 7_000_000);

    let queued: Vec<&Vec<u8>> = t
        .shared_pending
        .iter()
        .filter(|i| si_i32(i, 0) == libc::SIGUSR2)
        .collect();
    assert_eq!(queued.len(), 1, "{:?}", t.shared_pending);
    assert_eq!(queued[0].len(), 128);
    assert_eq!(si_i32(queued[0], 8), SI_QUEUE);
    assert_eq!(si_i32(queued[0], SI_PID), pid);
    assert_eq!(
        u64::from_ne_bytes(queued[0][SI_VALUE..SI_VALUE + 8].try_into().unwrap()),
        0xabcdef
    );
    assert_eq!(t.pdeath_signal, libc::SIGKILL as u32);
    assert!(t.child_subreaper);
    assert!(t.no_new_privs);
    assert_eq!(t.dumpable, 1);
    assert_eq!(t.personality & 0xffff_ff00, libc::ADDR_NO_RANDOMIZE as u32);

    let th = &p.threads[0].state;
    let alt = th.altstack.expect("sigaltstack");
    assert_eq!((alt.sp, alt.size), (alt_sp, alt_size));
    assert_eq!(th.clear_child_tid, tid_addr);
    assert_eq!((th.robust_list, th.robust_list_len), (robust_head, 24));
    let held: Vec<&Vec<u8>> = th
        .pending
        .iter()
        .filter(|i| si_i32(i, 0) == libc::SIGTTIN)
        .collect();
    assert_eq!(held.len(), 1, "{:?}", th.pending);
    assert_eq!(si_i32(held[0], 8), SI_TKILL);
    // brk comes from the process itself: at or past the heap's start.
    assert!(p.mm.brk >= p.mm.start_brk);
    drop(altstack);
}

#[test]
fn a_pending_sigtrap_is_refused_and_stays_pending() {
    let tmp = tempfile::tempdir().unwrap();
    let page = SharedPage::new();
    let child = spawn_with(
        &[],
        &page,
        || {
            // SAFETY: signal-mask calls on a local set, then a signal to this very thread.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGTRAP);
                libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                libc::syscall(
                    libc::SYS_tgkill,
                    libc::getpid(),
                    libc::gettid(),
                    libc::SIGTRAP,
                );
            }
        },
        super::testutil::pause_forever,
    );
    assert!(wait_until(|| child.state() == 'S'));
    let dir = tmp.path().join("img");
    let err = dump(&DumpOptions {
        pid: child.pid,
        dir: dir.clone(),
        leave_running: true,
        ..Default::default()
    })
    .unwrap_err();
    assert!(
        matches!(err, DumpError::PendingSigtrap { pid, tid, shared: false } if pid == child.pid && tid == pid),
        "{err:?}"
    );
    assert!(err.to_string().contains("SIGTRAP"), "{err}");
    assert!(!dir.exists());
    assert!(wait_until(|| child.tracer() == 0));
    let status = procfs::process::Process::new(child.pid)
        .unwrap()
        .status()
        .unwrap();
    assert_ne!(
        status.sigpnd & (1 << (libc::SIGTRAP - 1)),
        0,
        "SIGTRAP lost"
    );
}

#[test]
fn a_slow_dump_names_the_phase_that_dominated() {
    let page = crate::arch::page_size();
    let mut stats = DumpStats {
        pages_present: (3 << 30) / page,
        pages_file_backed: (1 << 29) / page,
        bytes_written: 1 << 30,
        phases_us: vec![
            ("freeze".into(), 2_000),
            ("pages".into(), 5_000_000),
            ("write".into(), 1_100_000),
        ],
        ..Default::default()
    };
    assert_eq!(
        slowest_phase(&stats).as_deref(),
        Some("pages: 5.0 s of 6.1 s, 2.5 GiB of memory read at 512 MiB/s, 1.0 GiB written")
    );
    stats.phases_us = vec![("freeze".into(), 2_000), ("pages".into(), 500_000)];
    assert_eq!(
        slowest_phase(&stats),
        None,
        "a fast dump needs no explanation"
    );
}

/// A POSIX message queue with a notification registered (mq_notify) is refused (naming it),
/// and the process left running; the SysV queue and semaphore set it used last are not among
/// the refusals.
#[test]
fn notified_posix_queues_are_refused_by_name_sysv_queues_and_sets_are_not() {
    // SAFETY: (whole block) IPC calls with valid arguments; the objects are removed below.
    let (msq, sem) = unsafe {
        let msq = libc::msgget(libc::IPC_PRIVATE, libc::IPC_CREAT | 0o600);
        let sem = libc::semget(libc::IPC_PRIVATE, 2, libc::IPC_CREAT | 0o600);
        assert!(msq >= 0 && sem >= 0, "{}", std::io::Error::last_os_error());
        (msq, sem)
    };
    let mq_name = format!("/crest-test-{}", std::process::id());
    let mq_c = std::ffi::CString::new(mq_name.clone()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let page = SharedPage::new();
    let child = spawn_with(
        &[],
        &page,
        || {
            // SAFETY: (whole block) one message sent, one semaphore operation, one queue opened,
            // with buffers that live through the calls.
            unsafe {
                #[repr(C)]
                struct Msg {
                    mtype: libc::c_long,
                    text: [u8; 4],
                }
                let m = Msg {
                    mtype: 1,
                    text: *b"ping",
                };
                libc::msgsnd(msq, (&m as *const Msg).cast(), 4, 0);
                let mut op = libc::sembuf {
                    sem_num: 1,
                    sem_op: 1,
                    sem_flg: 0,
                };
                libc::semop(sem, &mut op, 1);
                let q = libc::mq_open(
                    mq_c.as_ptr(),
                    libc::O_CREAT | libc::O_RDWR,
                    0o600,
                    std::ptr::null_mut::<libc::mq_attr>(),
                );
                let mut ev: libc::sigevent = std::mem::zeroed();
                ev.sigev_notify = libc::SIGEV_SIGNAL;
                ev.sigev_signo = libc::SIGUSR1;
                libc::mq_notify(q, &ev);
            }
        },
        super::testutil::pause_forever,
    );
    let dir = tmp.path().join("img");
    let err = dump(&DumpOptions {
        pid: child.pid,
        dir: dir.clone(),
        leave_running: true,
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    // SAFETY: removing the objects this test made.
    unsafe {
        libc::msgctl(msq, libc::IPC_RMID, std::ptr::null_mut());
        libc::semctl(sem, 0, libc::IPC_RMID);
        let c = std::ffi::CString::new(mq_name.clone()).unwrap();
        libc::mq_unlink(c.as_ptr());
    }
    // SysV queues and sets are captured now (dump/sysv_ipc.rs): not refused.
    assert!(!err.contains("SysV message queue"), "{err}");
    assert!(!err.contains("SysV semaphore set"), "{err}");
    assert!(
        err.contains(&format!("POSIX message queue {mq_name}")),
        "{err}"
    );
    assert!(err.contains("notification registered"), "{err}");
    assert!(!dir.exists());
    // Just detached, it may still be on its way back into pause(): wait for it to sleep.
    assert!(
        wait_until(|| child.tracer() == 0 && child.state() == 'S'),
        "the child waits on as before, untraced: {}",
        child.state()
    );
}
