//! Job-control and tracing state that decides whether and how a process can be frozen: a
//! process in a vfork, one that ignores SIGTRAP, and one stopped by a stop signal (group stop).
//!
//! - **vfork:** the parent of a vfork child sleeps in the kernel (killable only) until the
//!   child calls exec or exits, and the two share one address space meanwhile. PTRACE_INTERRUPT
//!   cannot stop a parent in that wait, and the shared memory cannot be restored as two
//!   processes, so both sides are refused before the freeze. Detected with kcmp(KCMP_VM): a
//!   child process (not a thread) with the same mm as the process, or the process with the same
//!   mm as its parent. That is exact, unlike the wait channel or the state letter (a vfork
//!   parent shows D, like any uninterruptible sleep).
//! - **SIGTRAP ignored:** the parasite stops on breakpoints; the kernel delivers a breakpoint's
//!   SIGTRAP with `force_sig`, which resets an ignored (or blocked) SIGTRAP to SIG_DFL
//!   (`force_sig_info_to_task`). The parasite runs with SIGTRAP unblocked, so a handler
//!   survives; SIG_IGN cannot, so such a process is refused. (The restore side reinstalls the
//!   image's SIGTRAP action after its last breakpoint, see `restore::finish`.)
//! - **Group stop:** a process stopped by SIGSTOP/SIGTSTP/SIGTTIN/SIGTTOU reports its
//!   seize-and-interrupt stop with the stop signal instead of SIGTRAP
//!   ([`crate::dump::freeze::Frozen::group_stop`]); the dump records that signal and the
//!   restore stops the process again.

use crate::proc::{Proc, Status};
use crate::sys;

use super::DumpError;

/// Refuses, before any thread is seized, a process that shares its address space with a vfork
/// child or parent, or that ignores SIGTRAP.
pub fn check_before_freeze(proc: &Proc, status: &Status) -> Result<(), DumpError> {
    let pid = proc.pid();
    if status.sig_ignored & sig_bit(libc::SIGTRAP) != 0 {
        return Err(DumpError::SigtrapIgnored { pid });
    }
    check_vfork(proc, status.ppid)
}

fn sig_bit(sig: i32) -> u64 {
    1u64 << (sig - 1)
}

fn check_vfork(proc: &Proc, ppid: i32) -> Result<(), DumpError> {
    let pid = proc.pid();
    let kcmp = |other: i32| {
        sys::kcmp_same_vm(pid, other).map_err(|errno| DumpError::KcmpVm { pid, other, errno })
    };
    for child in proc.children()? {
        match kcmp(child) {
            Ok(true) => return Err(DumpError::Vfork { parent: pid, child }),
            Ok(false) => {}
            // The child exited (and was reaped) meanwhile: it shares nothing any more.
            Err(DumpError::KcmpVm {
                errno: nix::errno::Errno::ESRCH,
                ..
            }) => {}
            Err(e) => return Err(e),
        }
    }
    // A parent outside our reach (pid 0 in another pid namespace, or init) shares no mm.
    if ppid > 1 {
        if let Ok(true) = sys::kcmp_same_vm(ppid, pid) {
            return Err(DumpError::Vfork {
                parent: ppid,
                child: pid,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_process_passes_and_kcmp_sees_its_own_mm() {
        let me = std::process::id() as i32;
        assert_eq!(sys::kcmp_same_vm(me, me), Ok(true));
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let cpid = child.id() as i32;
        assert_eq!(sys::kcmp_same_vm(me, cpid), Ok(false));
        let proc = Proc::open(cpid).unwrap();
        let status = proc.status().unwrap();
        check_before_freeze(&proc, &status).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
