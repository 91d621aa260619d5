//! Settings crest cannot give back, refused at dump time: memory-deny-write-execute
//! (PR_SET_MDWE), KSM merging of the whole process (PR_SET_MEMORY_MERGE), the tagged address
//! ABI (PR_SET_TAGGED_ADDR_CTRL, x86 LAM), IO-flusher threads (PR_SET_IO_FLUSHER), x86 shadow
//! stacks, and threads whose inherited prctl flags differ from the leader's (a restore sets
//! them once, in the leader, and every thread inherits them).

use crate::images::ThreadImage;
use crate::proc::{Proc, PF_IO_FLUSHER};

use super::{Raw, StateError};

/// `untag_mask` of a process that never asked for address tagging (per architecture).
const NO_UNTAG: &str = crate::arch::DEFAULT_UNTAG_MASK;

pub fn check(proc: &Proc, raw: &Raw, threads: &[ThreadImage]) -> Result<(), StateError> {
    let pid = proc.pid();
    let refuse = |what: String| Err(StateError::Refused { pid, what });
    if raw.process.mdwe > 0 {
        return refuse(format!(
            "memory-deny-write-execute is on (PR_GET_MDWE {:#x})",
            raw.process.mdwe
        ));
    }
    if raw.process.memory_merge > 0 {
        return refuse("KSM merging of the whole process is on (PR_SET_MEMORY_MERGE)".into());
    }
    let leader = raw.threads.first().copied().unwrap_or_default();
    for (t, r) in threads.iter().zip(&raw.threads) {
        let tid = t.tid;
        if r.tagged_addr > 0 {
            return refuse(format!(
                "thread {tid} uses the tagged address ABI (PR_GET_TAGGED_ADDR_CTRL {:#x})",
                r.tagged_addr
            ));
        }
        if proc.task_flags(tid)? & PF_IO_FLUSHER == PF_IO_FLUSHER {
            return refuse(format!("thread {tid} is an IO flusher (PR_SET_IO_FLUSHER)"));
        }
        if let Some(features) = proc.task_status_line(tid, "x86_Thread_features")? {
            if features.split_whitespace().any(|f| f == "shstk") {
                return refuse(format!("thread {tid} runs with an x86 shadow stack"));
            }
        }
        if let Some(mask) = proc.task_status_line(tid, "untag_mask")? {
            if mask != NO_UNTAG {
                return refuse(format!(
                    "thread {tid} uses linear address masking (untag_mask {mask})"
                ));
            }
        }
        let differs = |what: &str, a: i64, b: i64| {
            refuse(format!(
                "thread {tid} has {what} {a}, the leader {b}; a restore sets it once for all \
                 threads"
            ))
        };
        if r.tsc != leader.tsc {
            return differs("PR_GET_TSC", r.tsc, leader.tsc);
        }
        if r.mce_kill != leader.mce_kill {
            return differs("PR_MCE_KILL_GET", r.mce_kill, leader.mce_kill);
        }
        for which in 0..3 {
            if r.speculation[which] != leader.speculation[which] {
                return differs(
                    super::process::SPEC_NAMES[which],
                    r.speculation[which],
                    leader.speculation[which],
                );
            }
        }
    }
    Ok(())
}
