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

use crate::images::ArchRegs;

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

/// Traces the ready child, lets it run the restorer and finishes the restore. On return the
/// task runs the restored program, untraced.
pub fn run_restorer(
    pid: i32,
    boot: &Bootstrap,
    regs: &ArchRegs,
    status: &mut File,
    go: &mut File,
) -> Result<(), RestoreError> {
    let tpid = Pid::from_raw(pid);
    let ptrace_err = |what: &str, e: nix::Error| RestoreError::Os {
        what: format!("{what} (pid {pid})"),
        source: std::io::Error::from(e),
    };

    ptrace::seize(
        tpid,
        ptrace::Options::PTRACE_O_TRACESYSGOOD | ptrace::Options::PTRACE_O_EXITKILL,
    )
    .map_err(|e| ptrace_err("PTRACE_SEIZE of the restored task", e))?;
    ptrace::interrupt(tpid).map_err(|e| ptrace_err("PTRACE_INTERRUPT", e))?;
    wait_for(tpid, boot, status, |s| {
        matches!(s, WaitStatus::PtraceEvent(_, _, libc::PTRACE_EVENT_STOP))
    })?;

    // The child's own rseq area (crest's glibc registered it): the child unregisters it before
    // jumping, with exactly the values the kernel holds.
    let own_rseq = crate::ptrace::rseq_configuration(pid).map_err(|e| {
        RestoreError::Internal(format!("reading the rseq registration of pid {pid}: {e}"))
    })?;
    crate::arch::morph::check_fpu_compatible(pid, regs)?;
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

    // The restorer stops on its breakpoint right before rt_sigreturn.
    wait_for(tpid, boot, status, |s| {
        matches!(s, WaitStatus::Stopped(_, Signal::SIGTRAP))
    })?;
    // Step through rt_sigreturn: its entry, then its exit, where the registers are the image's.
    step_to_syscall_stop(tpid, boot, status)?;
    step_to_syscall_stop(tpid, boot, status)?;
    let restored =
        ptrace::getregs(tpid).map_err(|e| ptrace_err("reading the restored registers", e))?;
    // rt_sigreturn installed the image's signal mask, and the restorer armed the timers: an
    // unblocked pending signal would now be delivered on the way back to user space, in the
    // middle of the cleanup below. Block everything until crest lets go.
    let image_mask = crate::ptrace::get_sigmask(pid).map_err(|e| {
        RestoreError::Internal(format!("reading the signal mask of pid {pid}: {e}"))
    })?;
    crate::ptrace::set_sigmask(pid, u64::MAX)
        .map_err(|e| RestoreError::Internal(format!("blocking signals in pid {pid}: {e}")))?;

    // munmap(bootstrap) inside the task, through the gadget, traced to its exit.
    let mut call = restored;
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
    ptrace::setregs(tpid, restored).map_err(|e| ptrace_err("restoring the registers", e))?;
    crate::ptrace::set_sigmask(pid, image_mask).map_err(|e| {
        RestoreError::Internal(format!("restoring the signal mask of pid {pid}: {e}"))
    })?;
    ptrace::detach(tpid, None).map_err(|e| ptrace_err("PTRACE_DETACH", e))?;
    Ok(())
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
            ) => {
                let addr = ptrace::getsiginfo(pid).map(|si| {
                    // SAFETY: for these fault signals the kernel fills si_addr.
                    unsafe { si.si_addr() as u64 }
                });
                let at = addr
                    .map(|a| format!(" at address {a:#x}"))
                    .unwrap_or_default();
                return Err(failure(
                    pid.as_raw(),
                    boot,
                    status,
                    format!("crashed with {sig}{at}"),
                ));
            }
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
    let progress = boot.progress();
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
        step: step.to_string(),
        detail: progress.detail,
        errno,
    }
}
