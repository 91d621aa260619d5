//! Per-thread state of a frozen thread: registers (with the syscall-restart fix-up applied to
//! the saved copy only, the rseq abort to both), blocked-signal mask, rseq registration and
//! the signals pending for the thread alone.

use std::collections::BTreeMap;

use crate::arch::regs::{self, SyscallRestart};
use crate::images::ThreadState;
use crate::images::{ArchRegs, RseqRegistration, ThreadImage};
use crate::proc::Proc;
use crate::ptrace;

use super::DumpError;

/// `RSEQ_CS_FLAG_NO_RESTART_ON_SIGNAL` (linux/rseq.h): a critical section that must not be
/// aborted when a signal arrives.
const RSEQ_CS_FLAG_NO_RESTART_ON_SIGNAL: u32 = 1 << 1;
/// `struct rseq` up to and including `flags`: cpu_id_start u32, cpu_id u32, rseq_cs u64,
/// flags u32.
const RSEQ_HEAD: usize = 20;
/// `struct rseq_cs`: version u32, flags u32, start_ip u64, post_commit_offset u64, abort_ip u64.
const RSEQ_CS_SIZE: usize = 32;

/// What was captured for one thread, with what the fix-ups did (for the log).
#[derive(Debug)]
pub struct CapturedThread {
    pub image: ThreadImage,
    pub restart: SyscallRestart,
    /// `Some(abort_ip)` when the thread was inside an rseq critical section and will resume at
    /// its abort handler.
    pub rseq_abort: Option<u64>,
}

/// Captures every frozen thread of `tids` (of `proc`), in that order, with its pending signals
/// (read before any parasite runs: crest's own code must not see or consume them). Also
/// returns what the user should know: the threads whose syscall returns EINTR after restore
/// (grouped by syscall: a JVM has hundreds of threads parked the same way) and those moved to an
/// rseq abort handler.
pub fn capture_all(
    proc: &Proc,
    tids: &[i32],
) -> Result<(Vec<ThreadImage>, Vec<String>), DumpError> {
    let pid = proc.pid();
    let mut threads = Vec::with_capacity(tids.len());
    let mut interrupted: BTreeMap<u64, Vec<i32>> = BTreeMap::new();
    let mut rseq_aborts = Vec::new();
    for &tid in tids {
        let mut captured = capture(proc, tid)?;
        captured.image.state.pending = super::parasite::pending(pid, tid, false)?;
        if let SyscallRestart::Interrupted { nr } = captured.restart {
            interrupted.entry(nr).or_default().push(tid);
        }
        if let Some(ip) = captured.rseq_abort {
            rseq_aborts.push((tid, ip));
        }
        threads.push(captured.image);
    }
    let mut notes: Vec<String> = interrupted
        .iter()
        .map(|(nr, tids)| {
            let name = crate::arch::syscall_name(*nr);
            let call = match name {
                Some(name) => format!("{name}()"),
                None => format!("system call number {nr}"),
            };
            format!(
                "{} stopped in {call}, which will return EINTR after restore: {}",
                describe_tids(tids),
                eintr_consequence(name)
            )
        })
        .collect();
    notes.extend(rseq_aborts.iter().map(|(tid, ip)| {
        format!("thread {tid} was inside an rseq critical section; it resumes at {ip:#x}")
    }));
    Ok((threads, notes))
}

/// What an EINTR from the interrupted system call `name` means for the restored program, in
/// words: for the calls that wait, nothing a program written for signals does not already
/// handle.
fn eintr_consequence(name: Option<&str>) -> &'static str {
    match name.unwrap_or("") {
        "futex" => {
            "a timed futex wait that ends early, which glibc's and the JVM's locks and condition \
             variables treat as a spurious wake-up and wait again: harmless"
        }
        "nanosleep" | "clock_nanosleep" => {
            "the sleep ends early; sleep(3), Java's Thread.sleep and most loops sleep again for \
             the time left, a program that calls nanosleep once may wake early"
        }
        "poll" | "ppoll" | "select" | "pselect6" | "epoll_wait" | "epoll_pwait"
        | "epoll_pwait2" => {
            "the wait returns as after a signal; event loops call it again: harmless"
        }
        _ => {
            "the call returns as if a signal had interrupted it; programs that handle signals \
             retry it"
        }
    }
}

/// `thread 12 was` or `3 threads (12, 13, 15) were`, naming at most a few tids.
fn describe_tids(tids: &[i32]) -> String {
    const SHOWN: usize = 8;
    match tids {
        [tid] => format!("thread {tid} was"),
        _ => {
            let mut names: Vec<String> = tids.iter().take(SHOWN).map(i32::to_string).collect();
            if tids.len() > SHOWN {
                names.push("...".into());
            }
            format!("{} threads ({}) were", tids.len(), names.join(", "))
        }
    }
}

/// Captures the state of the stopped thread `tid` of `proc`.
pub fn capture(proc: &Proc, tid: i32) -> Result<CapturedThread, DumpError> {
    let pid = proc.pid();
    refuse_lost_state(pid, tid)?;
    let mut regs = regs::capture(tid).map_err(|e| DumpError::Regs { pid, err: e })?;
    let sigmask = ptrace::get_sigmask(tid).map_err(|e| DumpError::thread(pid, tid, e))?;
    let rseq = ptrace::rseq_configuration(tid).map_err(|e| DumpError::thread(pid, tid, e))?;
    let restart =
        regs::fixup_syscall_restart(&mut regs).map_err(|e| DumpError::Arch { pid, tid, err: e })?;
    if let SyscallRestart::Interrupted { nr } = restart {
        let call = crate::arch::syscall_name(nr).unwrap_or("a system call");
        crate::info!(
            1,
            "thread {tid} was in {call} (number {nr}), which cannot be restarted after restore: \
             it will return EINTR"
        );
    }
    let rseq_abort = match &rseq {
        Some(r) => rseq_fixup(pid, tid, r, &mut regs)?,
        None => None,
    };
    if let Some(abort_ip) = rseq_abort {
        // The live thread goes to the abort handler too. Once the parasite has run, the kernel
        // may clear rseq_cs on a return to user space outside the section (kernel/rseq.c,
        // `rseq_ip_fixup`), so the thread, resumed inside it, would no longer be aborted when
        // it should. Aborting is always allowed: the kernel does it on any preemption.
        let arch_err = |err| DumpError::Arch { pid, tid, err };
        let mut live = regs::capture(tid).map_err(|e| DumpError::Regs { pid, err: e })?;
        regs::set_instruction_pointer(&mut live, abort_ip).map_err(arch_err)?;
        regs::restore(tid, &live).map_err(|e| DumpError::Regs { pid, err: e })?;
    }
    Ok(CapturedThread {
        image: ThreadImage {
            tid,
            sigmask,
            regs,
            rseq,
            // Filled in by the parasite (and PTRACE_PEEKSIGINFO).
            state: ThreadState::default(),
        },
        restart,
        rseq_abort,
    })
}

/// Refuses per-thread kernel state that no image field carries, which a restored thread would
/// silently be without: syscall user dispatch (prctl(PR_SET_SYSCALL_USER_DISPATCH)) and a
/// core-scheduling cookie (prctl(PR_SCHED_CORE)).
fn refuse_lost_state(pid: i32, tid: i32) -> Result<(), DumpError> {
    let refuse = |what: String| DumpError::ThreadState { pid, tid, what };
    if let Some(sud) =
        ptrace::syscall_user_dispatch(tid).map_err(|e| DumpError::thread(pid, tid, e))?
    {
        return Err(refuse(format!(
            "uses syscall user dispatch (prctl(PR_SET_SYSCALL_USER_DISPATCH), mode {}, \
             selector at {:#x}, syscalls allowed from {:#x}-{:#x})",
            sud.mode,
            sud.selector,
            sud.offset,
            sud.offset.wrapping_add(sud.len)
        )));
    }
    if let Some(cookie) = core_sched_cookie(tid) {
        return Err(refuse(format!(
            "has a core-scheduling cookie ({cookie:#x}, prctl(PR_SCHED_CORE)): the threads it \
             shares a core with could not be told apart after a restore"
        )));
    }
    Ok(())
}

/// `PR_SCHED_CORE`, `PR_SCHED_CORE_GET` (include/uapi/linux/prctl.h), `PIDTYPE_PID`.
const PR_SCHED_CORE: libc::c_int = 62;
const PR_SCHED_CORE_GET: libc::c_ulong = 0;
const PIDTYPE_PID: libc::c_ulong = 0;

/// The thread's core-scheduling cookie, when it has one. None also when the kernel has no
/// core scheduling (CONFIG_SCHED_CORE: EINVAL) or cannot say (the thread just exited): a cookie
/// is only ever set through prctl, which such a kernel refuses.
fn core_sched_cookie(tid: i32) -> Option<u64> {
    let mut cookie = 0u64;
    // SAFETY: PR_SCHED_CORE_GET writes one u64 to the address given, which is `cookie`.
    let r = unsafe {
        libc::prctl(
            PR_SCHED_CORE,
            PR_SCHED_CORE_GET,
            tid as libc::c_ulong,
            PIDTYPE_PID,
            &mut cookie as *mut u64,
        )
    };
    (r == 0 && cookie != 0).then_some(cookie)
}

/// If the thread stopped inside an rseq critical section that restarts on preemption, moves
/// the saved instruction pointer to the section's abort handler — what the kernel would do on
/// return to user space (kernel/rseq.c `rseq_ip_fixup`), which a restored thread would
/// otherwise skip since its `rseq_cs` may point at a section it is no longer in.
fn rseq_fixup(
    pid: i32,
    tid: i32,
    rseq: &RseqRegistration,
    regs: &mut ArchRegs,
) -> Result<Option<u64>, DumpError> {
    let rseq_err = |detail: String| DumpError::Rseq { pid, tid, detail };
    let mut head = [0u8; RSEQ_HEAD];
    ptrace::read_memory(pid, rseq.abi_pointer, &mut head).map_err(|e| {
        rseq_err(format!(
            "reading struct rseq at {:#x}: {e}",
            rseq.abi_pointer
        ))
    })?;
    let u32_at = |b: &[u8], o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |b: &[u8], o: usize| u64::from_ne_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let cs_ptr = u64_at(&head, 8);
    let rseq_flags = u32_at(&head, 16);
    if cs_ptr == 0 {
        return Ok(None);
    }
    let mut cs = [0u8; RSEQ_CS_SIZE];
    ptrace::read_memory(pid, cs_ptr, &mut cs)
        .map_err(|e| rseq_err(format!("reading struct rseq_cs at {cs_ptr:#x}: {e}")))?;
    let version = u32_at(&cs, 0);
    if version != 0 {
        return Err(rseq_err(format!(
            "critical section descriptor at {cs_ptr:#x} has version {version}; crest knows only \
             version 0"
        )));
    }
    let flags = u32_at(&cs, 4) | rseq_flags;
    let start_ip = u64_at(&cs, 8);
    let post_commit_offset = u64_at(&cs, 16);
    let abort_ip = u64_at(&cs, 24);
    if flags & RSEQ_CS_FLAG_NO_RESTART_ON_SIGNAL != 0 {
        return Ok(None);
    }
    let ip = regs::instruction_pointer(regs).map_err(|e| DumpError::Arch { pid, tid, err: e })?;
    if ip >= start_ip && ip - start_ip < post_commit_offset {
        regs::set_instruction_pointer(regs, abort_ip).map_err(|e| DumpError::Arch {
            pid,
            tid,
            err: e,
        })?;
        crate::info!(
            1,
            "thread {tid} stopped inside an rseq critical section at {ip:#x}; it will resume at \
             the abort handler {abort_ip:#x}"
        );
        return Ok(Some(abort_ip));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::describe_tids;

    #[test]
    fn many_threads_are_named_in_one_short_note() {
        assert_eq!(describe_tids(&[12]), "thread 12 was");
        assert_eq!(describe_tids(&[12, 13, 15]), "3 threads (12, 13, 15) were");
        let many: Vec<i32> = (100..1100).collect();
        assert_eq!(
            describe_tids(&many),
            "1000 threads (100, 101, 102, 103, 104, 105, 106, 107, ...) were"
        );
    }

    #[test]
    fn a_core_scheduling_cookie_is_seen_where_the_kernel_can_set_one() {
        use super::{core_sched_cookie, PIDTYPE_PID, PR_SCHED_CORE};
        const PR_SCHED_CORE_CREATE: libc::c_ulong = 1;
        // SAFETY: gettid has no preconditions.
        let own = unsafe { libc::gettid() };
        assert_eq!(core_sched_cookie(own), None, "the test thread has a cookie");
        // A thread of its own, since a cookie cannot be taken away again.
        std::thread::spawn(|| {
            // SAFETY: as above.
            let tid = unsafe { libc::gettid() };
            // SAFETY: PR_SCHED_CORE_CREATE for the calling thread (pid 0) reads no memory.
            let r = unsafe { libc::prctl(PR_SCHED_CORE, PR_SCHED_CORE_CREATE, 0, PIDTYPE_PID, 0) };
            if r == 0 {
                assert!(
                    core_sched_cookie(tid).is_some(),
                    "cookie of thread {tid} not seen"
                );
            } else {
                // No CONFIG_SCHED_CORE (or no SMT): no thread can have a cookie.
                assert_eq!(core_sched_cookie(tid), None);
            }
        })
        .join()
        .unwrap();
    }
}

#[cfg(test)]
mod note_tests {
    use super::*;

    #[test]
    fn interrupted_waits_are_explained_in_words() {
        assert!(eintr_consequence(Some("futex")).contains("harmless"));
        assert!(eintr_consequence(Some("clock_nanosleep")).contains("sleep again"));
        assert!(eintr_consequence(Some("epoll_wait")).contains("harmless"));
        assert!(eintr_consequence(None).contains("as if a signal had interrupted it"));
        assert_eq!(describe_tids(&[7]), "thread 7 was");
        assert_eq!(describe_tids(&[7, 8]), "2 threads (7, 8) were");
    }
}
