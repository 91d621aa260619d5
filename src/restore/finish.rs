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
//!
//! The breakpoints have a side effect: the kernel raises a breakpoint's SIGTRAP with
//! `force_sig`, which resets a blocked or ignored SIGTRAP to SIG_DFL
//! (kernel/signal.c `force_sig_info_to_task`), and the restorer runs with every signal
//! blocked. So once every thread is past its breakpoint, crest installs the image's SIGTRAP
//! action again with a remote rt_sigaction, and, when the restorer switched credentials (which
//! resets the dumpable flag of the mm), the image's dumpable flag with a remote prctl. A
//! process that was in a group stop at dump time gets SIGSTOP while still traced: when crest
//! detaches, each thread takes it before running any instruction of the program.

use std::fs::File;
use std::io::{Read, Write};

use nix::sys::ptrace;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use std::collections::{HashMap, VecDeque};

use crate::images::ProcessImage;

use super::blob::abi::Step;
use super::bootstrap::Bootstrap;
use super::child::GO_MESSAGE_LEN;
use super::RestoreError;

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

/// A process of the tree on its way through the restorer, as crest follows it.
pub struct Restoring<'a> {
    pub pid: i32,
    pub boot: &'a Bootstrap,
    pub image: &'a ProcessImage,
    /// The dumped tree (groups and sessions decide how a stopped process is stopped again).
    pub tree: &'a [crate::images::TreeTask],
    pub status: &'a mut File,
}

/// How crest traces the tasks and threads it restores: syscall stops told apart, and every
/// task killed if crest dies.
const TRACE_OPTIONS: ptrace::Options =
    ptrace::Options::PTRACE_O_TRACESYSGOOD.union(ptrace::Options::PTRACE_O_EXITKILL);

/// Traces the ready task and sends it into the restorer. Its threads are caught later, with
/// every other process's, by [`catch_all`].
pub fn start(r: &mut Restoring<'_>, go: &mut File) -> Result<(), RestoreError> {
    let pid = r.pid;
    let tpid = Pid::from_raw(pid);
    let ptrace_err = |what: &str, e: nix::Error| RestoreError::Os {
        what: format!("{what} (pid {pid})"),
        source: std::io::Error::from(e),
    };

    // The threads the restorer creates are traced later, once all exist ([`catch_all`]).
    ptrace::seize(tpid, TRACE_OPTIONS)
        .map_err(|e| ptrace_err("PTRACE_SEIZE of the restored task", e))?;
    ptrace::interrupt(tpid).map_err(|e| ptrace_err("PTRACE_INTERRUPT", e))?;
    wait_for(tpid, r.boot, r.status, |s| {
        matches!(s, WaitStatus::PtraceEvent(_, _, libc::PTRACE_EVENT_STOP))
    })?;

    // The child's own rseq area (crest's glibc registered it): the child unregisters it before
    // jumping, with exactly the values the kernel holds.
    let own_rseq = crate::ptrace::rseq_configuration(pid).map_err(|e| {
        RestoreError::Internal(format!("reading the rseq registration of pid {pid}: {e}"))
    })?;
    crate::arch::morph::check_fpu_compatible(pid, &r.image.threads[0].regs)?;
    ptrace::cont(tpid, None).map_err(|e| ptrace_err("PTRACE_CONT", e))?;

    let mut msg = [0u8; GO_MESSAGE_LEN];
    if let Some(rs) = own_rseq {
        msg[0..8].copy_from_slice(&rs.abi_pointer.to_le_bytes());
        msg[8..12].copy_from_slice(&rs.abi_size.to_le_bytes());
        msg[12..16].copy_from_slice(&rs.signature.to_le_bytes());
    }
    go.write_all(&msg).map_err(|e| RestoreError::Os {
        what: format!("releasing pid {pid} into the restorer"),
        source: e,
    })
}

/// Finishes a process whose threads are all caught, through remote calls in its leader (the
/// blob's gadget, each traced to its exit): the image's SIGTRAP action back (the restorer's
/// breakpoint reset it), dumpable again after a credential switch, the bootstrap region
/// removed, and a process that was stopped stopped again.
pub fn finish_process(r: &mut Restoring<'_>, caught: &[Caught]) -> Result<(), RestoreError> {
    let pid = r.pid;
    let tpid = Pid::from_raw(pid);
    let (boot, image) = (r.boot, r.image);
    let ptrace_err = |what: &str, e: nix::Error| RestoreError::Os {
        what: format!("{what} (pid {pid})"),
        source: std::io::Error::from(e),
    };
    // Every thread exists now, stopped: give each its scheduling state and timer slack.
    crate::pstate::restore_threads(image)
        .map_err(|message| RestoreError::ChildSetup { pid, message })?;
    let leader_regs = caught
        .iter()
        .find(|t| t.tid == pid)
        .and_then(|t| t.leader)
        .map(|(regs, _)| regs)
        .ok_or_else(|| RestoreError::Internal(format!("the leader {pid} was not caught")))?;
    let status = &mut *r.status;
    let mut remote = |nr: i64, args: &[u64], what: String| -> Result<(), RestoreError> {
        let mut call = leader_regs;
        crate::arch::morph::prepare_remote_syscall(&mut call, boot.gadget(), nr as u64, args);
        ptrace::setregs(tpid, call)
            .map_err(|e| ptrace_err(&format!("setting registers for {what}"), e))?;
        step_to_syscall_stop(tpid, boot, status)?;
        step_to_syscall_stop(tpid, boot, status)?;
        let after = ptrace::getregs(tpid)
            .map_err(|e| ptrace_err(&format!("reading registers after {what}"), e))?;
        let res = crate::arch::morph::syscall_result(&after);
        if res < 0 {
            return Err(RestoreError::Os {
                what: format!("{what} in pid {pid}"),
                source: std::io::Error::from_raw_os_error((-res) as i32),
            });
        }
        Ok(())
    };
    remote(
        libc::SYS_rt_sigaction,
        &[libc::SIGTRAP as u64, boot.sigtrap_action_addr(), 0, 8],
        "installing the image's SIGTRAP action (rt_sigaction)".into(),
    )?;
    if boot.args().creds.present != 0 {
        remote(
            libc::SYS_prctl,
            &[
                libc::PR_SET_DUMPABLE as u64,
                image.task.dumpable as u64,
                0,
                0,
                0,
            ],
            format!(
                "setting dumpable to {} after the credential switch (prctl PR_SET_DUMPABLE)",
                image.task.dumpable
            ),
        )?;
    }
    // Guard regions (MADV_GUARD_INSTALL) back in place, now that the restorer has mapped and
    // filled the memory around them.
    const MADV_GUARD_INSTALL: u64 = 102;
    for v in &image.vmas {
        for &(start, end) in &v.guard_ranges {
            remote(
                libc::SYS_madvise,
                &[start, end - start, MADV_GUARD_INSTALL],
                format!(
                    "installing the guard region {start:#x}-{end:#x} (madvise MADV_GUARD_INSTALL)"
                ),
            )?;
        }
    }
    create_thread_timers(image, boot, &mut remote)?;
    remote(
        libc::SYS_munmap,
        &[boot.addr(), boot.len()],
        format!(
            "unmapping the restorer region {:#x}+{:#x}",
            boot.addr(),
            boot.len()
        ),
    )?;
    if image.task.group_stop != 0 {
        // Still traced: the threads take the stop on their way out of the ptrace stop, before
        // any instruction of the program; with the recorded signal when that is sure to stop
        // it (the parent's waitid sees which), else SIGSTOP (see restore::jobctl).
        let sig = super::jobctl::stop_signal(image, r.tree);
        let sig = Signal::try_from(sig).unwrap_or(Signal::SIGSTOP);
        nix::sys::signal::kill(tpid, sig)
            .map_err(|e| ptrace_err(&format!("stopping the restored process again ({sig})"), e))?;
    }
    Ok(())
}

/// A system call run in a task through the restorer blob's gadget: number, arguments, what it
/// does (for the error).
type RemoteCall<'a> = dyn FnMut(i64, &[u64], String) -> Result<(), RestoreError> + 'a;

/// Creates (under their ids) and arms the POSIX timers that signal a thread other than the
/// leader, which did not exist when the others were made, by remote calls in the leader; the
/// arguments go through the bootstrap region's scratch area, which crest maps too.
fn create_thread_timers(
    image: &ProcessImage,
    boot: &Bootstrap,
    remote: &mut RemoteCall<'_>,
) -> Result<(), RestoreError> {
    use super::task_state;
    /// PR_TIMER_CREATE_RESTORE_IDS (Linux 6.16+) and its values.
    const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
    let mut timers: Vec<&crate::images::PosixTimer> = image
        .task
        .posix_timers
        .iter()
        .filter(|t| task_state::created_late(image.pid, &image.task.posix_timers, t))
        .collect();
    // In id order: a kernel without chosen ids hands them out in sequence.
    timers.sort_by_key(|t| t.id);
    let chosen = task_state::chosen_timer_ids();
    if timers.is_empty() {
        return Ok(());
    }
    let (scratch, len) = boot.scratch();
    let event_at = scratch;
    let id_at = scratch + 64;
    let spec_at = scratch + 128;
    assert!(
        len >= 256,
        "the scratch area holds a sigevent, an id and an itimerspec"
    );
    if chosen {
        remote(
            libc::SYS_prctl,
            &[PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0],
            "creating POSIX timers with chosen ids (prctl PR_TIMER_CREATE_RESTORE_IDS)".into(),
        )?;
    }
    for t in timers {
        let event = task_state::sigevent(t);
        let arm = super::bootstrap::timer_arm(t);
        // SAFETY: the scratch area lies inside the bootstrap region, mapped shared at the same
        // address in crest and in the task; nothing else uses it once the restorer has run.
        unsafe {
            std::ptr::write_unaligned(event_at as *mut task_state::KernelSigevent, event);
            std::ptr::write_unaligned(id_at as *mut i32, t.id);
            std::ptr::write_unaligned(spec_at as *mut super::blob::abi::ITimerSpec, arm.spec);
        }
        let mut tries = 0;
        let got = loop {
            remote(
                libc::SYS_timer_create,
                &[t.clock as u64, event_at, id_at],
                format!(
                    "recreating POSIX timer {} for thread {} (timer_create)",
                    t.id, t.notify_tid
                ),
            )?;
            // SAFETY: as above; the kernel wrote the id it used.
            let got = unsafe { std::ptr::read_unaligned(id_at as *const i32) };
            // Without chosen ids the kernel hands ids out in sequence: the ones below are
            // created and deleted again until the wanted one comes.
            if chosen || got >= t.id || tries >= task_state::SEQUENTIAL_ID_GAP_MAX {
                break got;
            }
            tries += 1;
            remote(
                libc::SYS_timer_delete,
                &[got as u64],
                format!("deleting POSIX timer {got}, made to reach id {}", t.id),
            )?;
            // SAFETY: as above.
            unsafe { std::ptr::write_unaligned(id_at as *mut i32, t.id) };
        };
        if got != t.id {
            return Err(RestoreError::Internal(format!(
                "POSIX timer {} of pid {} came back with id {got}",
                t.id, image.pid
            )));
        }
        if t.value_ns != 0 || t.interval_ns != 0 {
            remote(
                libc::SYS_timer_settime,
                &[t.id as u64, 0, spec_at, 0],
                format!("arming POSIX timer {} (timer_settime)", t.id),
            )?;
        }
    }
    if !chosen {
        return Ok(());
    }
    remote(
        libc::SYS_prctl,
        &[PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0],
        "ending chosen timer ids (prctl PR_TIMER_CREATE_RESTORE_IDS)".into(),
    )
}

/// Lets every caught thread go with its own registers and mask; signals pending for it are
/// delivered on its way back to user space. `user_sigtraps` are the (process, thread) pairs
/// someone sent SIGTRAP to while the restorer ran (see [`catch_all`]): sent again, now by
/// crest.
pub fn release(caught: Vec<Caught>, user_sigtraps: Vec<(i32, i32)>) -> Result<(), RestoreError> {
    for t in caught {
        let tid = Pid::from_raw(t.tid);
        let err = |what: &str, e: String| {
            RestoreError::Internal(format!("{what} of thread {}: {e}", t.tid))
        };
        if let Some((regs, mask)) = t.leader {
            ptrace::setregs(tid, regs)
                .map_err(|e| err("restoring the registers", e.to_string()))?;
            crate::ptrace::set_sigmask(t.tid, mask)
                .map_err(|e| err("restoring the signal mask", e.to_string()))?;
        }
        if let Some(state) = &t.late_state {
            crate::arch::morph::put_back_late_state(t.tid, state)
                .map_err(|e| err("restoring the extended register state", e))?;
        }
        ptrace::detach(tid, None).map_err(|e| err("PTRACE_DETACH", e.to_string()))?;
    }
    for (pid, tid) in user_sigtraps {
        // SAFETY: tgkill takes integers only.
        unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, libc::SIGTRAP) };
    }
    Ok(())
}

/// Whether the SIGTRAP `tid` stopped with comes from a breakpoint (the restorer's), not from
/// kill, tgkill or sigqueue.
fn is_breakpoint(tid: Pid) -> bool {
    ptrace::getsiginfo(tid)
        .map(|si| si.si_code == crate::arch::infect::TRAP_SI_CODE)
        .unwrap_or(false)
}

/// A thread stopped right after its rt_sigreturn: its registers and mask as they are to be.
pub struct Caught {
    tid: i32,
    /// A leader's registers and signal mask, to be put back at the release (the cleanup's
    /// remote calls run in it with every signal blocked); None for the other threads, which
    /// got theirs back by ptrace at their breakpoint and run nothing before the release.
    leader: Option<(crate::arch::morph::UserRegs, u64)>,
    /// Register state rt_sigreturn does not load and the cleanup's system calls would drop
    /// (aarch64: live SVE registers), put back by ptrace at the release.
    late_state: Option<Vec<u8>>,
}

/// Where a traced thread of the restored task is on its way out of the restorer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Running restorer code.
    Restoring,
    /// A leader stopped on the breakpoint, now stepping into rt_sigreturn.
    EnteringSigreturn,
    /// A leader's rt_sigreturn entered; its exit stop comes next.
    LeavingSigreturn,
}

/// Why [`catch_all`] could not handle one thread's stop.
enum StopError {
    /// A ptrace request found the thread gone: its process was killed (a thread failed its
    /// setup and ended it) after this stop was reported. The thread's exit comes next and says
    /// why, so the catch goes on to it.
    Gone,
    Failed(RestoreError),
}

impl From<RestoreError> for StopError {
    fn from(e: RestoreError) -> Self {
        match e {
            RestoreError::Os { ref source, .. } if source.raw_os_error() == Some(libc::ESRCH) => {
                StopError::Gone
            }
            e => StopError::Failed(e),
        }
    }
}

/// Maps a failed ptrace request on a thread being caught: gone, or an internal error saying
/// what crest was doing.
fn ptrace_failed(
    what: impl FnOnce() -> String,
) -> impl FnOnce(crate::ptrace::PtraceError) -> StopError {
    move |e| match e {
        crate::ptrace::PtraceError::NoSuchThread { .. } => StopError::Gone,
        e => StopError::Failed(RestoreError::Internal(format!("{}: {e}", what()))),
    }
}

/// [`ptrace_failed`] for the register requests of `crate::arch::regs`.
fn regs_failed(
    what: impl FnOnce() -> String,
) -> impl FnOnce(crate::arch::regs::RegsError) -> StopError {
    move |e| match e {
        crate::arch::regs::RegsError::Ptrace(e) => ptrace_failed(what)(e),
        e => StopError::Failed(RestoreError::Internal(format!("{}: {e}", what()))),
    }
}

/// Runs every leader up to the exit of its rt_sigreturn, and every thread the restorer created
/// up to its breakpoint, and holds them there. A leader gets every signal blocked: rt_sigreturn
/// installed the image's mask, and the restorer armed the timers, so an unblocked pending
/// signal would be delivered in the middle of the cleanup that runs in it. The other threads
/// get their registers, extended state and mask back by ptrace at the breakpoint (what their
/// rt_sigreturn would have loaded; the restorer set their alternate stack) and run nothing
/// until the release.
///
/// Works on every process of the tree at once: each thread's process is known from the image
/// (every tid is restored as it was), so a failure names the right process and step.
///
/// A SIGTRAP sent by someone else while the restorer runs stays pending (every signal is
/// blocked), until a thread's breakpoint unblocks SIGTRAP in that thread (force_sig does); it
/// then shows up as a signal-delivery stop that is not a breakpoint. It is suppressed, so it
/// does not run the program's handler on the restorer's stack, and the (process, thread) pairs
/// it was meant for are returned, to be sent SIGTRAP again once the program runs.
#[allow(clippy::type_complexity)]
///
/// The leader's restorer creates the other threads untraced; each waits in the restorer until
/// crest, at the leader's breakpoint, traces it and lets it go on to its own breakpoint. So
/// creating a thread costs crest no ptrace stop, and catching it one (a leader takes three:
/// breakpoint, rt_sigreturn entry and exit).
///
/// `phases` gets "memory" ended once every leader is at its breakpoint (memory loaded, threads
/// created), and "threads" once every thread is caught.
pub fn catch_all(
    procs: &mut [Restoring<'_>],
    phases: &mut crate::phases::Phases,
) -> Result<(Vec<Caught>, Vec<(i32, i32)>), RestoreError> {
    // Each thread's process and its place among the process's threads.
    let owner: HashMap<i32, (usize, usize)> = procs
        .iter()
        .enumerate()
        .flat_map(|(i, r)| {
            r.image
                .threads
                .iter()
                .enumerate()
                .map(move |(j, t)| (t.tid, (i, j)))
        })
        .collect();
    let nr_threads: usize = procs.iter().map(|r| r.image.threads.len()).sum();
    let mut phase: HashMap<i32, Phase> = procs.iter().map(|r| (r.pid, Phase::Restoring)).collect();
    let mut caught = Vec::with_capacity(nr_threads);
    let mut user_sigtraps = Vec::new();
    let pid = procs.first().map_or(0, |r| r.pid);
    let os = |what: String, e: nix::Error| RestoreError::Os {
        what,
        source: e.into(),
    };
    // The threads crest resumed and waits for, each to its next stop. Waiting for one thread
    // at a time (in the order they were resumed) instead of for any: a wait for any child
    // looks at every traced thread in the kernel, which made catching n threads cost n^2.
    // Every thread in here runs towards a stop (none waits for another), so each wait ends.
    let mut running: VecDeque<i32> = procs.iter().map(|r| r.pid).collect();
    let leaders: std::collections::HashSet<i32> = running.iter().copied().collect();
    // The processes whose restorer still loads memory.
    let mut loading: std::collections::HashSet<i32> = running.iter().copied().collect();
    while caught.len() < nr_threads {
        let next = running.pop_front();
        // A leader is waited for among all: the exit of a leader whose traced threads are not
        // reaped yet is never reported (the kernel holds it back until they are), so a wait
        // for it alone would hang when its process fails. A leader stops only a few times.
        let target = next.filter(|t| !leaders.contains(t));
        let ws = match waitpid(
            target.map(Pid::from_raw),
            Some(nix::sys::wait::WaitPidFlag::__WALL),
        ) {
            Ok(ws) => ws,
            Err(nix::Error::EINTR) => {
                if let Some(n) = next {
                    running.push_front(n);
                }
                continue;
            }
            // A thread that is gone already (its process failed): whatever reports next says
            // why.
            Err(nix::Error::ECHILD) if target.is_some() => continue,
            Err(e) => {
                return Err(os(
                    format!("waiting for the threads of the tree of pid {pid}"),
                    e,
                ))
            }
        };
        let Some(tid) = ws.pid() else { continue };
        let raw = tid.as_raw();
        if target.is_none() && Some(raw) != next {
            // The wait for any gave another thread: `next` is still to stop, and `raw` no
            // longer waits in the queue.
            running.extend(next);
            if let Some(i) = running.iter().position(|&t| t == raw) {
                running.remove(i);
            }
        }
        // Every stop below resumes the thread but the last (it is caught then).
        running.push_back(raw);
        let Some(&(owner_idx, thread_idx)) = owner.get(&raw) else {
            return Err(RestoreError::Internal(format!(
                "a task {raw} that is not in the image reported a stop ({ws:?})"
            )));
        };
        let this = &mut procs[owner_idx];
        let (pid, boot) = (this.pid, this.boot);
        let step = (|| -> Result<(), StopError> {
            match (ws, phase.get(&raw).copied()) {
                (WaitStatus::PtraceEvent(_, _, libc::PTRACE_EVENT_STOP), _) => {
                    phase.entry(raw).or_insert(Phase::Restoring);
                    ptrace::cont(tid, None).map_err(|e| os(format!("starting thread {raw}"), e))?;
                }
                (WaitStatus::Stopped(_, Signal::SIGTRAP), p) if !is_breakpoint(tid) => {
                    user_sigtraps.push((pid, raw));
                    if p == Some(Phase::Restoring) || p.is_none() {
                        ptrace::cont(tid, None)
                    } else {
                        ptrace::syscall(tid, None)
                    }
                    .map_err(|e| os(format!("holding back a SIGTRAP sent to thread {raw}"), e))?;
                }
                (WaitStatus::Stopped(_, Signal::SIGTRAP), None | Some(Phase::Restoring))
                    if raw != pid =>
                {
                    // A created thread at its breakpoint: its own registers, extended state and
                    // mask go back by ptrace, and it stays in this stop until the release (a
                    // stopped thread takes no signal: one sent to the process waits for a thread
                    // that runs and does not block it).
                    let thread = &this.image.threads[thread_idx];
                    crate::arch::regs::restore_outside_syscall(raw, &thread.regs).map_err(
                        regs_failed(|| format!("putting back the registers of thread {raw}")),
                    )?;
                    crate::ptrace::set_sigmask(raw, thread.sigmask).map_err(ptrace_failed(
                        || format!("putting back the signal mask of thread {raw}"),
                    ))?;
                    phase.remove(&raw);
                    running.pop_back();
                    caught.push(Caught {
                        tid: raw,
                        leader: None,
                        late_state: None,
                    });
                }
                (WaitStatus::Stopped(_, Signal::SIGTRAP), None | Some(Phase::Restoring)) => {
                    // The restorer is done: memory loaded, every thread created and waiting.
                    trace_threads(this, &mut phase, &mut running)?;
                    if loading.remove(&pid) && loading.is_empty() {
                        phases.end("memory");
                    }
                    phase.insert(raw, Phase::EnteringSigreturn);
                    crate::arch::morph::step_over_breakpoint(raw).map_err(regs_failed(|| {
                        format!("stepping thread {raw} over the restorer's breakpoint")
                    }))?;
                    ptrace::syscall(tid, None)
                        .map_err(|e| os(format!("stepping thread {raw} into rt_sigreturn"), e))?;
                }
                (WaitStatus::PtraceSyscall(_), Some(Phase::EnteringSigreturn)) => {
                    phase.insert(raw, Phase::LeavingSigreturn);
                    ptrace::syscall(tid, None)
                        .map_err(|e| os(format!("stepping thread {raw} out of rt_sigreturn"), e))?;
                }
                (WaitStatus::PtraceSyscall(_), Some(Phase::LeavingSigreturn)) => {
                    // Only leaders come through rt_sigreturn, and only they run code before the
                    // release (the cleanup's remote calls): their registers are kept to be put
                    // back, and every signal is blocked in them meanwhile.
                    let regs = ptrace::getregs(tid)
                        .map_err(|e| os(format!("reading the registers of thread {raw}"), e))?;
                    let mask = crate::ptrace::get_sigmask(raw).map_err(ptrace_failed(|| {
                        format!("reading the signal mask of thread {raw}")
                    }))?;
                    crate::ptrace::set_sigmask(raw, u64::MAX).map_err(ptrace_failed(|| {
                        format!("blocking signals in thread {raw}")
                    }))?;
                    phase.remove(&raw);
                    running.pop_back();
                    caught.push(Caught {
                        tid: raw,
                        leader: Some((regs, mask)),
                        late_state: crate::arch::morph::late_state(
                            &this.image.threads[thread_idx].regs,
                        ),
                    });
                }
                (WaitStatus::Exited(..) | WaitStatus::Signaled(..), _) => {
                    let how = match ws {
                        WaitStatus::Exited(_, code) => format!("exited with status {code}"),
                        WaitStatus::Signaled(_, sig, _) => format!("was killed by {sig}"),
                        _ => unreachable!(),
                    };
                    return Err(StopError::Failed(failure(
                        pid,
                        boot,
                        this.status,
                        format!("thread {raw} {how}"),
                    )));
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
                    return Err(StopError::Failed(crash(pid, tid, sig, boot, this.status)));
                }
                (WaitStatus::Stopped(_, sig), _) => {
                    ptrace::cont(tid, Some(sig))
                        .map_err(|e| os(format!("passing {sig} to thread {raw}"), e))?;
                }
                (other, p) => {
                    return Err(StopError::Failed(RestoreError::Internal(format!(
                        "unexpected stop of thread {raw} ({other:?}) while {p:?}"
                    ))));
                }
            }
            Ok(())
        })();
        match step {
            Ok(()) | Err(StopError::Gone) => {}
            Err(StopError::Failed(e)) => return Err(e),
        }
    }
    if !loading.is_empty() {
        phases.end("memory");
    }
    phases.end("threads");
    Ok((caught, user_sigtraps))
}

/// Traces every thread the restorer of `r` created (each waits in the restorer for this) and
/// lets it go on to its breakpoint, where [`catch_all`] takes it.
fn trace_threads(
    r: &mut Restoring<'_>,
    phase: &mut HashMap<i32, Phase>,
    running: &mut VecDeque<i32>,
) -> Result<(), RestoreError> {
    for (i, t) in r.image.threads.iter().enumerate().skip(1) {
        let tid = Pid::from_raw(t.tid);
        if let Err(e) = ptrace::seize(tid, TRACE_OPTIONS) {
            // Most likely the thread is gone or going (ESRCH, or EPERM once it is exiting):
            // its own setup failed and it ends the process. The restore fails either way: the
            // process is ended here and its report, or the thread's, says why.
            // Waits for any task, not for the leader: its exit is held back until its traced
            // threads are reaped (see catch_all).
            let leader = Pid::from_raw(r.pid);
            let _ = nix::sys::signal::kill(leader, Signal::SIGKILL);
            loop {
                match waitpid(None, Some(nix::sys::wait::WaitPidFlag::__WALL)) {
                    Ok(WaitStatus::Exited(p, _) | WaitStatus::Signaled(p, _, _)) if p == leader => {
                        break
                    }
                    Err(nix::Error::EINTR) | Ok(_) => {}
                    Err(_) => break,
                }
            }
            return Err(failure(
                r.pid,
                r.boot,
                r.status,
                format!(
                    "could not trace its thread {tid} (PTRACE_SEIZE: {})",
                    e.desc()
                ),
            ));
        }
        r.boot.let_thread_go(i - 1);
        phase.insert(t.tid, Phase::Restoring);
        running.push_back(t.tid);
    }
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
    let step = match Step::from_u32(progress.step) {
        Some(Step::Creds) => format!(
            "{}: {}",
            Step::Creds.describe(),
            super::blob::abi::creds_step_name(progress.detail)
        ),
        Some(Step::ThreadSetup) if progress.detail >= super::blob::abi::CREDS_DETAIL_BASE => {
            format!(
                "{}: {}",
                Step::Creds.describe(),
                super::blob::abi::creds_step_name(
                    progress.detail - super::blob::abi::CREDS_DETAIL_BASE
                )
            )
        }
        Some(s) => s.describe().to_string(),
        None => "before its first step".to_string(),
    };
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
