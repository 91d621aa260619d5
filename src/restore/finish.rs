//! Driving the child from crest: wait until it is ready, trace it, let it run the restorer, catch
//! it right after rt_sigreturn, remove the bootstrap region from it, and let it go.
//!
//! Why trace at all: the restorer's code, arguments and sigframe live in the bootstrap region,
//! which the restored program must not keep. Code cannot unmap the memory it runs from and then
//! return, so crest does it from outside: the restorer stops on a breakpoint just before
//! rt_sigreturn, crest steps the task through that syscall (PTRACE_SYSCALL: entry, exit), then
//! runs one munmap in the task through the blob's `syscall` gadget, puts back the registers
//! rt_sigreturn produced and detaches. Tracing with PTRACE_O_EXITKILL also means a crest that
//! dies mid-restore takes the half-built task with it.

use std::fs::File;
use std::io::{Read, Write};

use nix::sys::ptrace;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use std::collections::HashMap;

use crate::images::ProcessImage;

use super::blob::abi::Step;
use super::bootstrap::Bootstrap;
use super::child::GO_MESSAGE_LEN;
use super::RestoreError;

/// Kills and reaps the child unless disarmed: a failed restore leaves nothing behind.
pub struct ChildGuard {
    pid: i32,
    armed: bool,
}

impl ChildGuard {
    pub fn new(pid: i32) -> ChildGuard {
        ChildGuard { pid, armed: true }
    }
    pub fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.armed {
            let pid = Pid::from_raw(self.pid);
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
    }
}

/// Waits for the child's setup report; returns once it is ready for the jump.
pub fn wait_ready(pid: i32, status: &mut File) -> Result<(), RestoreError> {
    let mut first = [0u8; 1];
    match status.read(&mut first) {
        Ok(1) if first[0] == b'R' => Ok(()),
        Ok(1) => {
            let mut msg = String::new();
            let _ = status.read_to_string(&mut msg);
            Err(RestoreError::ChildSetup { pid, message: msg })
        }
        _ => Err(RestoreError::ChildSetup {
            pid,
            message: "the child exited before reporting".into(),
        }),
    }
}

/// Traces the ready child, lets it run the restorer and finishes the restore. On return every
/// thread runs the restored program, untraced.
pub fn run_restorer(
    pid: i32,
    boot: &Bootstrap,
    image: &ProcessImage,
    status: &mut File,
    go: &mut File,
) -> Result<(), RestoreError> {
    let tpid = Pid::from_raw(pid);
    let ptrace_err = |what: &str, e: nix::Error| RestoreError::Os {
        what: format!("{what} (pid {pid})"),
        source: std::io::Error::from(e),
    };

    // TRACECLONE: every thread the restorer creates is traced from its first instruction.
    let options = ptrace::Options::PTRACE_O_TRACESYSGOOD
        | ptrace::Options::PTRACE_O_EXITKILL
        | ptrace::Options::PTRACE_O_TRACECLONE;
    ptrace::seize(tpid, options).map_err(|e| ptrace_err("PTRACE_SEIZE of the restored task", e))?;
    ptrace::interrupt(tpid).map_err(|e| ptrace_err("PTRACE_INTERRUPT", e))?;
    wait_for(tpid, boot, status, |s| {
        matches!(s, WaitStatus::PtraceEvent(_, _, libc::PTRACE_EVENT_STOP))
    })?;

    // The child's own rseq area (crest's glibc registered it): the child unregisters it before
    // jumping, with exactly the values the kernel holds.
    let own_rseq = crate::ptrace::rseq_configuration(pid).map_err(|e| {
        RestoreError::Internal(format!("reading the rseq registration of pid {pid}: {e}"))
    })?;
    crate::arch::morph::check_fpu_compatible(pid, &image.threads[0].regs)?;
    ptrace::cont(tpid, None).map_err(|e| ptrace_err("PTRACE_CONT", e))?;

    let mut msg = [0u8; GO_MESSAGE_LEN];
    if let Some(r) = own_rseq {
        msg[0..8].copy_from_slice(&r.abi_pointer.to_le_bytes());
        msg[8..12].copy_from_slice(&r.abi_size.to_le_bytes());
        msg[12..16].copy_from_slice(&r.signature.to_le_bytes());
    }
    go.write_all(&msg).map_err(|e| RestoreError::Os {
        what: format!("releasing pid {pid} into the restorer"),
        source: e,
    })?;

    let mut restored = catch_threads_after_sigreturn(pid, image.threads.len(), boot, status)?;

    // munmap(bootstrap) inside the task through the leader, via the gadget, traced to its exit.
    let leader_regs = restored
        .iter()
        .find(|t| t.tid == pid)
        .map(|t| t.regs)
        .ok_or_else(|| RestoreError::Internal(format!("the leader {pid} was not caught")))?;
    let mut call = leader_regs;
    crate::arch::morph::prepare_remote_syscall(
        &mut call,
        boot.gadget(),
        libc::SYS_munmap as u64,
        &[boot.addr(), boot.len()],
    );
    ptrace::setregs(tpid, call).map_err(|e| ptrace_err("setting registers for munmap", e))?;
    step_to_syscall_stop(tpid, boot, status)?;
    step_to_syscall_stop(tpid, boot, status)?;
    let after =
        ptrace::getregs(tpid).map_err(|e| ptrace_err("reading registers after munmap", e))?;
    let r = crate::arch::morph::syscall_result(&after);
    if r != 0 {
        return Err(RestoreError::Os {
            what: format!(
                "unmapping the restorer region {:#x}+{:#x} in pid {pid}",
                boot.addr(),
                boot.len()
            ),
            source: std::io::Error::from_raw_os_error((-r) as i32),
        });
    }

    // Let every thread go with its own registers and mask; signals pending for it are
    // delivered on its way back to user space.
    for t in restored.drain(..) {
        let tid = Pid::from_raw(t.tid);
        let err = |what: &str, e: String| {
            RestoreError::Internal(format!("{what} of thread {}: {e}", t.tid))
        };
        ptrace::setregs(tid, t.regs).map_err(|e| err("restoring the registers", e.to_string()))?;
        crate::ptrace::set_sigmask(t.tid, t.mask)
            .map_err(|e| err("restoring the signal mask", e.to_string()))?;
        ptrace::detach(tid, None).map_err(|e| err("PTRACE_DETACH", e.to_string()))?;
    }
    Ok(())
}

/// A thread stopped right after its rt_sigreturn: its registers and mask as they are to be.
struct Caught {
    tid: i32,
    regs: crate::arch::morph::UserRegs,
    mask: u64,
}

/// Where a traced thread of the restored task is on its way out of the restorer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Running restorer code.
    Restoring,
    /// Stopped on the breakpoint, now stepping into rt_sigreturn.
    EnteringSigreturn,
    /// rt_sigreturn entered; its exit stop comes next.
    LeavingSigreturn,
}

/// Runs every thread (the leader and those the restorer creates) up to the exit of its
/// rt_sigreturn and holds it there with every signal blocked: rt_sigreturn installed the
/// image's mask, and the restorer armed the timers, so an unblocked pending signal would be
/// delivered in the middle of the cleanup.
fn catch_threads_after_sigreturn(
    pid: i32,
    nr_threads: usize,
    boot: &Bootstrap,
    status: &mut File,
) -> Result<Vec<Caught>, RestoreError> {
    let mut phase: HashMap<i32, Phase> = HashMap::from([(pid, Phase::Restoring)]);
    let mut caught = Vec::with_capacity(nr_threads);
    let os = |what: String, e: nix::Error| RestoreError::Os {
        what,
        source: e.into(),
    };
    while caught.len() < nr_threads {
        let ws = match waitpid(None, Some(nix::sys::wait::WaitPidFlag::__WALL)) {
            Ok(ws) => ws,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(os(format!("waiting for the threads of pid {pid}"), e)),
        };
        let Some(tid) = ws.pid() else { continue };
        let raw = tid.as_raw();
        match (ws, phase.get(&raw).copied()) {
            // The leader created a thread; the new thread's first stop follows (or came first).
            (WaitStatus::PtraceEvent(_, _, libc::PTRACE_EVENT_CLONE), _) => {
                ptrace::cont(tid, None)
                    .map_err(|e| os(format!("resuming {raw} after clone"), e))?;
            }
            (WaitStatus::PtraceEvent(_, _, libc::PTRACE_EVENT_STOP), _) => {
                phase.entry(raw).or_insert(Phase::Restoring);
                ptrace::cont(tid, None).map_err(|e| os(format!("starting thread {raw}"), e))?;
            }
            (WaitStatus::Stopped(_, Signal::SIGTRAP), None | Some(Phase::Restoring)) => {
                phase.insert(raw, Phase::EnteringSigreturn);
                ptrace::syscall(tid, None)
                    .map_err(|e| os(format!("stepping thread {raw} into rt_sigreturn"), e))?;
            }
            (WaitStatus::PtraceSyscall(_), Some(Phase::EnteringSigreturn)) => {
                phase.insert(raw, Phase::LeavingSigreturn);
                ptrace::syscall(tid, None)
                    .map_err(|e| os(format!("stepping thread {raw} out of rt_sigreturn"), e))?;
            }
            (WaitStatus::PtraceSyscall(_), Some(Phase::LeavingSigreturn)) => {
                let regs = ptrace::getregs(tid)
                    .map_err(|e| os(format!("reading the registers of thread {raw}"), e))?;
                let mask = crate::ptrace::get_sigmask(raw).map_err(|e| {
                    RestoreError::Internal(format!("reading the signal mask of thread {raw}: {e}"))
                })?;
                crate::ptrace::set_sigmask(raw, u64::MAX).map_err(|e| {
                    RestoreError::Internal(format!("blocking signals in thread {raw}: {e}"))
                })?;
                phase.remove(&raw);
                caught.push(Caught {
                    tid: raw,
                    regs,
                    mask,
                });
            }
            (WaitStatus::Exited(..) | WaitStatus::Signaled(..), _) => {
                let how = match ws {
                    WaitStatus::Exited(_, code) => format!("exited with status {code}"),
                    WaitStatus::Signaled(_, sig, _) => format!("was killed by {sig}"),
                    _ => unreachable!(),
                };
                return Err(failure(pid, boot, status, format!("thread {raw} {how}")));
            }
            (
                WaitStatus::Stopped(
                    _,
                    sig @ (Signal::SIGSEGV
                    | Signal::SIGBUS
                    | Signal::SIGILL
                    | Signal::SIGFPE
                    | Signal::SIGTRAP),
                ),
                _,
            ) => {
                return Err(crash(pid, tid, sig, boot, status));
            }
            (WaitStatus::Stopped(_, sig), _) => {
                ptrace::cont(tid, Some(sig))
                    .map_err(|e| os(format!("passing {sig} to thread {raw}"), e))?;
            }
            (other, p) => {
                return Err(RestoreError::Internal(format!(
                    "unexpected stop of thread {raw} ({other:?}) while {p:?}"
                )));
            }
        }
    }
    Ok(caught)
}

/// Resumes the task up to its next syscall-entry or syscall-exit stop.
fn step_to_syscall_stop(pid: Pid, boot: &Bootstrap, status: &mut File) -> Result<(), RestoreError> {
    ptrace::syscall(pid, None).map_err(|e| RestoreError::Os {
        what: format!("PTRACE_SYSCALL (pid {pid})"),
        source: e.into(),
    })?;
    wait_for(pid, boot, status, |s| {
        matches!(s, WaitStatus::PtraceSyscall(_))
    })
}

/// Waits for the stop `expected` accepts. Signals that arrive meanwhile are passed on (they stay
/// pending: the child blocks everything until rt_sigreturn installs the image's mask). An exit
/// or a crash becomes an error that says which restorer step failed.
fn wait_for(
    pid: Pid,
    boot: &Bootstrap,
    status: &mut File,
    expected: impl Fn(&WaitStatus) -> bool,
) -> Result<(), RestoreError> {
    loop {
        let ws = match waitpid(pid, Some(nix::sys::wait::WaitPidFlag::__WALL)) {
            Ok(ws) => ws,
            Err(nix::Error::EINTR) => continue,
            Err(e) => {
                return Err(RestoreError::Os {
                    what: format!("waiting for pid {pid}"),
                    source: e.into(),
                })
            }
        };
        if expected(&ws) {
            return Ok(());
        }
        match ws {
            WaitStatus::Exited(_, code) => {
                return Err(failure(
                    pid.as_raw(),
                    boot,
                    status,
                    format!("exited with status {code}"),
                ))
            }
            WaitStatus::Signaled(_, sig, _) => {
                return Err(failure(
                    pid.as_raw(),
                    boot,
                    status,
                    format!("was killed by {sig}"),
                ))
            }
            WaitStatus::Stopped(
                _,
                sig @ (Signal::SIGSEGV
                | Signal::SIGBUS
                | Signal::SIGILL
                | Signal::SIGFPE
                | Signal::SIGTRAP),
            ) => return Err(crash(pid.as_raw(), pid, sig, boot, status)),
            WaitStatus::Stopped(_, sig) => {
                ptrace::cont(pid, Some(sig)).map_err(|e| RestoreError::Os {
                    what: format!("passing {sig} to pid {pid}"),
                    source: e.into(),
                })?;
            }
            _ => {
                ptrace::cont(pid, None).map_err(|e| RestoreError::Os {
                    what: format!("resuming pid {pid}"),
                    source: e.into(),
                })?;
            }
        }
    }
}

/// The error for a thread of the restored task that stopped on a fault signal.
fn crash(pid: i32, tid: Pid, sig: Signal, boot: &Bootstrap, status: &mut File) -> RestoreError {
    let addr = ptrace::getsiginfo(tid).map(|si| {
        // SAFETY: for these fault signals the kernel fills si_addr.
        unsafe { si.si_addr() as u64 }
    });
    let at = addr
        .map(|a| format!(" at address {a:#x}"))
        .unwrap_or_default();
    failure(
        pid,
        boot,
        status,
        format!("thread {tid} crashed with {sig}{at}"),
    )
}

/// Builds the error for a child that died: its own message if it sent one, else the restorer's
/// progress report from the shared region.
fn failure(pid: i32, boot: &Bootstrap, status: &mut File, how: String) -> RestoreError {
    let mut buf = Vec::new();
    let _ = status.read_to_end(&mut buf);
    if buf.first() == Some(&b'E') {
        return RestoreError::ChildSetup {
            pid,
            message: String::from_utf8_lossy(&buf[1..]).into_owned(),
        };
    }
    let (who, progress) = match boot.thread_failure() {
        Some((tid, progress)) => (format!(" in thread {tid}"), progress),
        None => (String::new(), boot.progress()),
    };
    if progress.step == Step::PosixLock as u32 {
        if let Some(subject) = boot.posix_lock_subject(progress.detail) {
            return RestoreError::ChildSetup {
                pid,
                message: format!(
                    "{subject}: {}",
                    crate::files::locks::why_not(-progress.error)
                ),
            };
        }
    }
    let step = Step::from_u32(progress.step)
        .map(|s| s.describe())
        .unwrap_or("before its first step");
    let errno = if progress.error < 0 {
        format!(": {}", std::io::Error::from_raw_os_error(-progress.error))
    } else {
        String::new()
    };
    RestoreError::Restorer {
        pid,
        how,
        step: format!("{step}{who}"),
        detail: progress.detail,
        errno,
    }
}
