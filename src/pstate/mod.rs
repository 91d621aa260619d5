//! Per-process and per-thread settings that are neither memory, files nor signals: the OOM
//! score adjustment, the audit login uid, transparent-huge-page and membarrier state, the
//! per-thread prctl flags (TSC access, machine-check kill policy, speculation controls), the
//! scheduling policy, nice value, CPU affinity and timer slack of every thread; and the checks
//! that refuse, at dump time, the settings crest cannot give back.
//!
//! Each kind keeps both sides in its own module: what the dump reads (from /proc, through
//! syscalls on the tid, or through the parasite) and what the restore does (in the forked
//! child before the morph, for what belongs to the process and survives it; or from crest once
//! every thread exists, for what is per thread). A setting the restore cannot give back makes
//! the restore fail with a message naming the pid and the setting, never a process that runs
//! with another value.

mod process;
mod refusals;
mod sched;
pub mod vmflags;

use crate::blob::abi::ParasiteState;
use crate::images::{ProcessImage, TaskState, ThreadImage};
use crate::proc::{Proc, ProcError};

/// What the parasite read for the settings, raw (negative errnos included), in one thread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawThread {
    pub tsc: i64,
    pub mce_kill: i64,
    pub speculation: [i64; 3],
    pub tagged_addr: i64,
    pub timerslack: i64,
}

/// What the parasite read for the whole process, raw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawProcess {
    pub thp_disable: i64,
    pub membarrier: i64,
    pub mdwe: i64,
    pub memory_merge: i64,
}

/// The parasite's raw settings: the process's, and each thread's in the order of the tids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Raw {
    pub process: RawProcess,
    pub threads: Vec<RawThread>,
}

impl RawThread {
    pub fn from_parasite(s: &ParasiteState) -> RawThread {
        RawThread {
            tsc: s.tsc,
            mce_kill: s.mce_kill,
            speculation: s.speculation,
            tagged_addr: s.tagged_addr,
            timerslack: s.timerslack,
        }
    }
}

impl RawProcess {
    pub fn from_parasite(s: &ParasiteState) -> RawProcess {
        RawProcess {
            thp_disable: s.thp_disable,
            membarrier: s.membarrier,
            mdwe: s.mdwe,
            memory_merge: s.memory_merge,
        }
    }
}

/// Why a process's settings cannot be dumped.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A setting crest cannot restore; the text names it and its value.
    #[error("process {pid}: {what}; crest cannot restore it, so it does not dump the process")]
    Refused { pid: i32, what: String },
    #[error("process {pid}, thread {tid}: {call} failed: {errno}")]
    Syscall {
        pid: i32,
        tid: i32,
        call: &'static str,
        errno: nix::errno::Errno,
    },
    #[error(transparent)]
    Proc(#[from] ProcError),
}

/// Dump side: reads the settings of the stopped process `proc` (threads `tids`, leader first,
/// in the order of `threads` and `raw.threads`) into `task` and each thread's state, refusing
/// what a restore could not give back.
pub fn collect(
    proc: &Proc,
    raw: &Raw,
    task: &mut TaskState,
    threads: &mut [ThreadImage],
) -> Result<(), StateError> {
    let pid = proc.pid();
    refusals::check(proc, raw, threads)?;
    task.settings = process::collect(proc, raw)?;
    for (thread, r) in threads.iter_mut().zip(&raw.threads) {
        thread.state.sched = Some(sched::collect(pid, thread.tid, r)?);
    }
    Ok(())
}

/// Restore side, in the forked child before the morph: the process-wide settings and the
/// leader's prctl flags (threads the restorer creates inherit them).
pub fn restore_in_child(p: &ProcessImage) -> Result<(), String> {
    process::restore(p)
}

/// Restore side, from crest once the restorer has created every thread (all stopped under
/// crest's ptrace): each thread's scheduling state and timer slack.
///
/// The restorer cloned every other thread from the leader before any of this, so each has the
/// leader's state as it is now (scheduling, affinity and timer slack are inherited by clone;
/// the leader's own is restored below, after this is read). A thread whose saved state is
/// exactly that is left alone: for a JVM nearly every thread, which saves a /proc read and two
/// system calls a thread (5 ms for a thousand threads).
pub fn restore_threads(p: &ProcessImage) -> Result<(), String> {
    let inherited = match p.threads.len() {
        0 | 1 => None,
        _ => Some(sched::current(p.pid)?),
    };
    for t in &p.threads {
        if let Some(s) = &t.state.sched {
            let cloned = t.tid != p.pid;
            if cloned
                && inherited
                    .as_ref()
                    .is_some_and(|have| sched::already(have, s))
            {
                continue;
            }
            sched::restore(p.pid, t.tid, s)?;
        }
    }
    Ok(())
}
