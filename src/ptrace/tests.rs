//! Tests on real forked children (see `crate::dump::testutil`).

use super::*;
use crate::dump::testutil::{spawn, wait_until, SharedPage};

const NT_PRSTATUS: u32 = 1;

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
fn seize_interrupt_regs_sigmask_rseq_then_detach() {
    let page = SharedPage::new();
    let child = spawn(&[], &page, block_sigusr1);
    let tid = child.pid;

    seize(tid, Options::empty()).unwrap();
    interrupt(tid).unwrap();
    assert_eq!(
        wait_stop(tid).unwrap(),
        Stop::Event {
            event: PTRACE_EVENT_STOP,
            sig: libc::SIGTRAP
        }
    );
    // The tracer is this thread (ptrace attaches to threads), not the process.
    assert_eq!(child.tracer(), nix::unistd::gettid().as_raw());

    let mut gpr = [0u8; 512];
    let n = get_regset(tid, NT_PRSTATUS, &mut gpr).unwrap();
    if cfg!(target_arch = "x86_64") {
        assert_eq!(n, 27 * 8);
    }
    assert_eq!(get_sigmask(tid).unwrap(), 1 << (libc::SIGUSR1 - 1));
    // glibc (2.35+) registers rseq in every thread, and fork keeps the registration.
    let rseq = rseq_configuration(tid)
        .unwrap()
        .expect("rseq registered by glibc");
    assert!(rseq.abi_size >= 32);
    assert_eq!(rseq.abi_pointer % 32, 0);
    if cfg!(target_arch = "x86_64") {
        assert_eq!(rseq.signature, 0x5305_3053);
    }

    // Memory of the stopped child: the counter word in the shared page.
    let mut word = [0u8; 8];
    read_memory(tid, page.addr() + 8, &mut word).unwrap();
    assert_eq!(u64::from_ne_bytes(word), page.counter());
    let stopped_at = page.counter();

    // A mask set and restored through ptrace.
    set_sigmask(tid, 0).unwrap();
    assert_eq!(get_sigmask(tid).unwrap(), 0);
    set_sigmask(tid, 1 << (libc::SIGUSR1 - 1)).unwrap();

    detach(tid, 0).unwrap();
    assert!(
        wait_until(|| page.counter() > stopped_at + 2),
        "child did not resume"
    );
    assert!(wait_until(|| child.tracer() == 0));
}

#[test]
fn a_signal_stop_is_reported_and_reinjected() {
    let page = SharedPage::new();
    // Ignored signals still stop a traced thread (kernel/signal.c sig_ignored: "tracers may
    // want to know about even ignored signal").
    let child = spawn(&[], &page, || {
        // SAFETY: setting a disposition to SIG_IGN is async-signal-safe.
        unsafe { libc::signal(libc::SIGUSR2, libc::SIG_IGN) };
    });
    let tid = child.pid;
    seize(tid, Options::empty()).unwrap();
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(tid, libc::SIGUSR2) }, 0);
    assert_eq!(wait_stop(tid).unwrap(), Stop::Signal(libc::SIGUSR2));
    interrupt(tid).unwrap();
    cont(tid, libc::SIGUSR2).unwrap();
    // The interrupt stays pending across the CONT.
    assert_eq!(
        wait_stop(tid).unwrap(),
        Stop::Event {
            event: PTRACE_EVENT_STOP,
            sig: libc::SIGTRAP
        }
    );
    let at = page.counter();
    detach(tid, 0).unwrap();
    assert!(
        wait_until(|| page.counter() > at + 2),
        "child did not survive the ignored signal"
    );
}

#[test]
fn errors_name_the_thread() {
    match seize(0x7fff_fff0, Options::empty()) {
        Err(PtraceError::NoSuchThread { tid }) => assert_eq!(tid, 0x7fff_fff0),
        other => panic!("expected NoSuchThread, got {other:?}"),
    }
    // A thread we do not trace: requests fail with ESRCH, reported as NoSuchThread.
    let page = SharedPage::new();
    let child = spawn(&[], &page, || {});
    assert!(matches!(
        get_sigmask(child.pid),
        Err(PtraceError::NoSuchThread { .. })
    ));
    let mut buf = [0u8; 16];
    assert!(matches!(
        read_memory(child.pid, 0, &mut buf),
        Err(PtraceError::ShortRead { got: 0, .. })
    ));
}

#[test]
fn wait_status_decoding() {
    // Raw statuses as the kernel builds them (see wait(2)): exited 3, killed by 9, stopped by
    // SIGTRAP with event 128, syscall stop, plain signal stop.
    assert_eq!(Stop::from_wait_status(3 << 8), Stop::Exited(3));
    assert_eq!(Stop::from_wait_status(9), Stop::Killed(9));
    assert_eq!(
        Stop::from_wait_status((128 << 16) | (libc::SIGTRAP << 8) | 0x7f),
        Stop::Event {
            event: 128,
            sig: libc::SIGTRAP
        }
    );
    assert_eq!(
        Stop::from_wait_status(((libc::SIGTRAP | 0x80) << 8) | 0x7f),
        Stop::Syscall
    );
    assert_eq!(Stop::from_wait_status((40 << 8) | 0x7f), Stop::Signal(40));
}
