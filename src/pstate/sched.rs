//! Per-thread scheduling state: policy, flags, nice value, real-time priority, deadline
//! parameters and utilization clamps (sched_getattr/sched_setattr), the CPU affinity
//! (sched_getaffinity/sched_setaffinity) and the timer slack (read by the parasite with
//! PR_GET_TIMERSLACK, restored through `/proc/PID/task/TID/timerslack_ns`).
//!
//! The dump reads them by tid; the restore sets them from crest on every thread once the
//! restorer has created them all, and only where they differ from what the thread
//! inherited, so a restore never needs a privilege the dumped process did not use.

use crate::images::ThreadSched;

use super::{RawThread, StateError};

/// `struct sched_attr` (include/uapi/linux/sched/types.h), SCHED_ATTR_SIZE_VER1.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
    util_min: u32,
    util_max: u32,
}

const SCHED_FIFO: u32 = 1;
const SCHED_RR: u32 = 2;
const SCHED_DEADLINE: u32 = 6;
/// SCHED_FLAG_UTIL_CLAMP_MIN | SCHED_FLAG_UTIL_CLAMP_MAX: set the clamps too.
const SCHED_FLAG_UTIL_CLAMP: u64 = 0x20 | 0x40;
/// Most CPUs an affinity mask can name (the kernel's NR_CPUS limit is 8192).
const AFFINITY_WORDS: usize = 128;

fn get_attr(tid: i32) -> Result<SchedAttr, nix::errno::Errno> {
    let mut attr = SchedAttr::default();
    // SAFETY: the kernel writes at most `size` bytes of struct sched_attr into `attr`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            tid,
            &mut attr as *mut SchedAttr,
            std::mem::size_of::<SchedAttr>() as u32,
            0u32,
        )
    };
    if r != 0 {
        return Err(nix::errno::Errno::last());
    }
    Ok(attr)
}

fn get_affinity(tid: i32) -> Result<Vec<u64>, nix::errno::Errno> {
    let mut mask = vec![0u64; AFFINITY_WORDS];
    // SAFETY: the kernel writes at most the given number of bytes into `mask`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_getaffinity,
            tid,
            mask.len() * 8,
            mask.as_mut_ptr(),
        )
    };
    if r < 0 {
        return Err(nix::errno::Errno::last());
    }
    mask.truncate((r as usize).div_ceil(8));
    while mask.len() > 1 && mask.last() == Some(&0) {
        mask.pop();
    }
    Ok(mask)
}

pub fn collect(pid: i32, tid: i32, raw: &RawThread) -> Result<ThreadSched, StateError> {
    let fail = |call, errno| StateError::Syscall {
        pid,
        tid,
        call,
        errno,
    };
    let a = get_attr(tid).map_err(|e| fail("sched_getattr", e))?;
    let affinity = get_affinity(tid).map_err(|e| fail("sched_getaffinity", e))?;
    if raw.timerslack < 0 {
        return Err(fail(
            "prctl(PR_GET_TIMERSLACK)",
            nix::errno::Errno::from_raw(-raw.timerslack as i32),
        ));
    }
    Ok(thread_sched(a, affinity, raw.timerslack as u64))
}

fn thread_sched(a: SchedAttr, affinity: Vec<u64>, timerslack_ns: u64) -> ThreadSched {
    ThreadSched {
        policy: a.policy,
        flags: a.flags,
        nice: a.nice,
        priority: a.priority,
        runtime: a.runtime,
        deadline: a.deadline,
        period: a.period,
        util_min: a.util_min,
        util_max: a.util_max,
        affinity,
        timerslack_ns,
    }
}

/// Thread `tid`'s scheduling state and timer slack as they are now.
pub fn current(tid: i32) -> Result<ThreadSched, String> {
    let a = get_attr(tid).map_err(|e| format!("sched_getattr of thread {tid}: {e}"))?;
    let affinity =
        get_affinity(tid).map_err(|e| format!("sched_getaffinity of thread {tid}: {e}"))?;
    let path = timerslack_path(tid);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let timerslack_ns = text
        .trim()
        .parse()
        .map_err(|_| format!("{path} holds {text:?}"))?;
    Ok(thread_sched(a, affinity, timerslack_ns))
}

/// Whether a thread whose state is `have` already has the saved state `want` ([`restore`]
/// would change nothing).
pub fn already(have: &ThreadSched, want: &ThreadSched) -> bool {
    let realtime = matches!(want.policy, SCHED_FIFO | SCHED_RR | SCHED_DEADLINE);
    (realtime || have.timerslack_ns == want.timerslack_ns)
        && (want.affinity.is_empty() || have.affinity == want.affinity)
        && (
            have.policy,
            have.flags,
            have.nice,
            have.priority,
            have.runtime,
            have.deadline,
            have.period,
            have.util_min,
            have.util_max,
        ) == (
            want.policy,
            want.flags,
            want.nice,
            want.priority,
            want.runtime,
            want.deadline,
            want.period,
            want.util_min,
            want.util_max,
        )
}

fn os(what: String) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// The timer slack file of one thread: `/proc/TID/timerslack_ns` (the kernel has no
/// per-task copy under `/proc/PID/task/TID/`; a tid opens its thread's `/proc/TID` directory).
fn timerslack_path(tid: i32) -> String {
    format!("/proc/{tid}/timerslack_ns")
}

pub fn restore(pid: i32, tid: i32, s: &ThreadSched) -> Result<(), String> {
    let whose = if tid == pid {
        format!("pid {pid}")
    } else {
        format!("thread {tid} of pid {pid}")
    };
    let realtime = matches!(s.policy, SCHED_FIFO | SCHED_RR | SCHED_DEADLINE);
    // The slack first: a real-time policy pins it to 0 and ignores later writes.
    if !realtime {
        let path = timerslack_path(tid);
        let read = || -> Result<u64, String> {
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
            text.trim()
                .parse()
                .map_err(|_| format!("{path} holds {text:?}"))
        };
        if read()? != s.timerslack_ns {
            std::fs::write(&path, s.timerslack_ns.to_string()).map_err(|e| {
                format!(
                    "cannot set the timer slack of {whose} to {} ns: {e}",
                    s.timerslack_ns
                )
            })?;
            let now = read()?;
            if now != s.timerslack_ns {
                return Err(format!(
                    "the timer slack of {whose} reads {now} ns after setting {} ns",
                    s.timerslack_ns
                ));
            }
        }
    }

    let have = get_affinity(tid).map_err(|e| format!("sched_getaffinity of {whose}: {e}"))?;
    if !s.affinity.is_empty() && have != s.affinity {
        // SAFETY: the kernel reads the given number of bytes from the mask.
        let r = unsafe {
            libc::syscall(
                libc::SYS_sched_setaffinity,
                tid,
                s.affinity.len() * 8,
                s.affinity.as_ptr(),
            )
        };
        if r != 0 {
            return Err(os(format!(
                "cannot set the CPU affinity of {whose} to {}",
                cpu_list(&s.affinity)
            )));
        }
        let now = get_affinity(tid).map_err(|e| format!("sched_getaffinity of {whose}: {e}"))?;
        if now != s.affinity {
            return Err(format!(
                "the CPU affinity of {whose} is {} after setting {} (CPUs missing on this machine?)",
                cpu_list(&now),
                cpu_list(&s.affinity)
            ));
        }
    }

    let have = get_attr(tid).map_err(|e| format!("sched_getattr of {whose}: {e}"))?;
    let mut want = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: s.policy,
        flags: s.flags,
        nice: s.nice,
        priority: s.priority,
        runtime: s.runtime,
        deadline: s.deadline,
        period: s.period,
        util_min: s.util_min,
        util_max: s.util_max,
    };
    let same = |a: &SchedAttr| {
        (
            a.policy, a.flags, a.nice, a.priority, a.runtime, a.deadline, a.period,
        ) == (
            s.policy, s.flags, s.nice, s.priority, s.runtime, s.deadline, s.period,
        ) && (a.util_min, a.util_max) == (s.util_min, s.util_max)
    };
    if same(&have) {
        return Ok(());
    }
    // Clamps only when they differ: a kernel without CONFIG_UCLAMP_TASK reads them as 0 and
    // refuses the flag.
    if (have.util_min, have.util_max) != (s.util_min, s.util_max) {
        want.flags |= SCHED_FLAG_UTIL_CLAMP;
    }
    // SAFETY: the kernel reads `size` bytes of struct sched_attr from `want`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            tid,
            &want as *const SchedAttr,
            0u32,
        )
    };
    if r != 0 {
        return Err(os(format!(
            "cannot set the scheduling of {whose} to policy {} nice {} priority {}",
            s.policy, s.nice, s.priority
        )));
    }
    let now = get_attr(tid).map_err(|e| format!("sched_getattr of {whose}: {e}"))?;
    if !same(&now) {
        return Err(format!(
            "the scheduling of {whose} reads policy {} nice {} priority {} after setting \
             policy {} nice {} priority {}",
            now.policy, now.nice, now.priority, s.policy, s.nice, s.priority
        ));
    }
    Ok(())
}

/// An affinity mask as a CPU list ("0-1,4").
fn cpu_list(mask: &[u64]) -> String {
    let cpus: Vec<usize> = (0..mask.len() * 64)
        .filter(|&c| mask[c / 64] & (1 << (c % 64)) != 0)
        .collect();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_read_like_the_kernel_s() {
        assert_eq!(cpu_list(&[0b1_0011]), "0-1,4");
        assert_eq!(cpu_list(&[0, 1]), "64");
        assert_eq!(cpu_list(&[]), "");
    }

    #[test]
    fn own_scheduling_state_reads_back() {
        let me = nix::unistd::gettid().as_raw();
        let a = get_attr(me).unwrap();
        assert_eq!(a.size as usize, std::mem::size_of::<SchedAttr>());
        let mask = get_affinity(me).unwrap();
        assert!(mask.iter().any(|w| *w != 0), "no CPU in {mask:?}");
    }
}
