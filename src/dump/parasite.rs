//! The state only the process can report: pending signals (PTRACE_PEEKSIGINFO, from outside)
//! and everything the parasite collects from inside (signal dispositions, timers, personality,
//! prctl flags and brk once for the process; sigaltstack, the clear-child-tid address, the
//! robust list and the name in every thread), converted into the image's [`TaskState`] and [`ThreadState`].

use crate::blob::abi::{ITimerSpec, ITimerVal, ParasiteState};
use crate::fault;
use crate::images::{AltStack, ITimer, PosixTimer, SigAction, TaskState, ThreadState};
use crate::infect::Parasite;
use crate::proc::PosixTimerInfo;
use crate::ptrace::{self, SigInfo};

use super::DumpError;

/// `SS_DISABLE` (include/uapi/linux/signal.h): no alternate signal stack.
const SS_DISABLE: i32 = 2;

/// What the parasite reported, converted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inside {
    /// Process-wide state (everything but `shared_pending`).
    pub task: TaskState,
    /// Each thread's own state (everything but `pending`), in the order of the tids asked for.
    pub threads: Vec<ThreadState>,
    /// The program break.
    pub brk: u64,
    /// PR_GET_SECUREBITS of each thread, in the order of the tids asked for.
    pub securebits: Vec<u32>,
    /// The settings the parasite read, raw, for [`crate::pstate::collect`].
    pub settings: crate::pstate::Raw,
}

/// The signals queued for thread `tid` alone (`shared` false) or for the whole process, as raw
/// siginfos. A pending SIGTRAP is refused: the parasite runs with SIGTRAP unblocked (its
/// breakpoint must stop it), so such a signal would be taken for crest's own trap and lost.
pub fn pending(pid: i32, tid: i32, shared: bool) -> Result<Vec<Vec<u8>>, DumpError> {
    let infos = ptrace::pending_signals(tid, shared).map_err(|e| DumpError::thread(pid, tid, e))?;
    if infos.iter().any(|i: &SigInfo| i.signo() == libc::SIGTRAP) {
        return Err(DumpError::PendingSigtrap { pid, tid, shared });
    }
    Ok(infos.into_iter().map(|i| i.0.to_vec()).collect())
}

/// Infects the leader `pid`, collects the process-wide state and the leader's own there, runs
/// the per-thread collection in every other thread of `tids` (one at a time, each put back
/// right after its run, each only once `may_run(tid)` allowed it), reads brk, and cures. Any
/// failure cures too (the parasite's guard), so the target is left as it was. `tids` must start
/// with the leader.
pub fn collect(
    pid: i32,
    tids: &[i32],
    timers: &[PosixTimerInfo],
    mut may_run: impl FnMut(i32) -> Result<(), DumpError>,
) -> Result<Inside, DumpError> {
    let infect = |err| DumpError::Infect { pid, err };
    let mut parasite = Parasite::inject(pid, pid).map_err(|err| match err {
        // Linux refuses writable executable memory to a process under PR_SET_MDWE (and to one
        // a security module confines so) with EACCES: the parasite cannot get in.
        crate::infect::InfectError::RemoteSyscall {
            call: "mmap",
            errno: nix::errno::Errno::EACCES,
            ..
        } => DumpError::Settings(crate::pstate::StateError::Refused {
            pid,
            what: "it may not map writable executable memory (memory-deny-write-execute, \
            PR_SET_MDWE, or a security module): the parasite's mapping was refused \
            with EACCES"
                .into(),
        }),
        err => infect(err),
    })?;
    let ids: Vec<i32> = timers.iter().map(|t| t.id).collect();
    let state = parasite.collect(&ids).map_err(infect)?;
    let (task, leader) = convert(&state, timers);
    let mut settings = crate::pstate::Raw {
        process: crate::pstate::RawProcess::from_parasite(&state),
        threads: vec![crate::pstate::RawThread::from_parasite(&state)],
    };
    let mut threads = Vec::with_capacity(tids.len());
    let mut securebits = vec![state.securebits as u32];
    threads.push(leader);
    for &tid in tids.iter().filter(|&&tid| tid != pid) {
        may_run(tid)?;
        let state = parasite.collect_thread(tid).map_err(infect)?;
        threads.push(convert_thread(&state));
        securebits.push(state.securebits as u32);
        settings
            .threads
            .push(crate::pstate::RawThread::from_parasite(&state));
    }
    let brk = parasite.brk().map_err(infect)?;
    fault::point("before-cure")?;
    parasite.cure().map_err(infect)?;
    Ok(Inside {
        task,
        threads,
        brk,
        securebits,
        settings,
    })
}

fn timeval_us(sec: i64, usec: i64) -> u64 {
    (sec.max(0) as u64)
        .saturating_mul(1_000_000)
        .saturating_add(usec.max(0) as u64)
}

fn timespec_ns(sec: i64, nsec: i64) -> u64 {
    (sec.max(0) as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(nsec.max(0) as u64)
}

/// An interval timer as getitimer reported it. A periodic timer may read "value 0, interval N"
/// (expired, its SIGALRM not yet dequeued, which is when the kernel re-arms it); the image
/// records that as it is, and restore arms such a timer again (restore::bootstrap::itimer_args).
fn itimer(v: &ITimerVal) -> ITimer {
    ITimer {
        interval_us: timeval_us(v.interval_sec, v.interval_usec),
        value_us: timeval_us(v.value_sec, v.value_usec),
    }
}

fn posix_timer(info: &PosixTimerInfo, spec: &ITimerSpec, overrun: i32) -> PosixTimer {
    PosixTimer {
        id: info.id,
        clock: info.clock,
        notify: info.notify,
        signo: info.signo,
        sigev_value: info.sigev_value,
        notify_tid: info.notify_tid,
        value_ns: timespec_ns(spec.value_sec, spec.value_nsec),
        interval_ns: timespec_ns(spec.interval_sec, spec.interval_nsec),
        overrun,
    }
}

/// Converts the parasite's raw results of a COLLECT run (the timers in the order of
/// `timers`): the process-wide state and the running thread's own.
pub fn convert(s: &ParasiteState, timers: &[PosixTimerInfo]) -> (TaskState, ThreadState) {
    let task = TaskState {
        sigactions: s
            .sigactions
            .iter()
            .map(|a| SigAction {
                handler: a.handler,
                flags: a.flags,
                restorer: a.restorer,
                mask: a.mask,
            })
            .collect(),
        itimers: s.itimers.iter().map(itimer).collect(),
        posix_timers: timers
            .iter()
            .zip(s.timers.iter())
            .map(|(info, t)| posix_timer(info, &t.spec, t.overrun))
            .collect(),
        shared_pending: Vec::new(),
        personality: s.personality as u32,
        pdeath_signal: s.pdeath_signal as u32,
        dumpable: s.dumpable as u32,
        no_new_privs: s.no_new_privs != 0,
        child_subreaper: s.child_subreaper != 0,
        group_stop: 0,
        // Filled in by crate::pstate::collect from these and /proc.
        settings: Default::default(),
    };
    (task, convert_thread(s))
}

/// A thread name (comm) as a string: the bytes up to the NUL, any that are not UTF-8 replaced,
/// and cut to the 15 bytes a comm holds (a replacement character takes 3 bytes) so the image
/// stays valid.
fn thread_name(raw: &[u8; 16]) -> String {
    let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let mut name = String::from_utf8_lossy(&raw[..len]).into_owned();
    while name.len() > crate::images::validate::THREAD_NAME_MAX {
        name.pop();
    }
    name
}

/// Converts the per-thread fields of a COLLECT or COLLECT_THREAD run.
pub fn convert_thread(s: &ParasiteState) -> ThreadState {
    let altstack = (s.altstack.flags & SS_DISABLE == 0).then_some(AltStack {
        sp: s.altstack.sp,
        flags: s.altstack.flags,
        size: s.altstack.size,
    });
    ThreadState {
        name: thread_name(&s.name),
        altstack,
        pending: Vec::new(),
        clear_child_tid: s.clear_child_tid,
        robust_list: s.robust_list,
        robust_list_len: s.robust_list_len,
        // Read by crate::pstate::collect once the parasite is gone.
        sched: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::abi::{KernelSigaction, StackT, TimerState};

    fn empty_state() -> ParasiteState {
        // SAFETY: ParasiteState is made of integers only; all-zero is a valid value.
        unsafe { std::mem::zeroed() }
    }

    #[test]
    fn raw_results_convert_to_the_schema() {
        let mut s = empty_state();
        s.sigactions[9] = KernelSigaction {
            handler: 0x1234,
            flags: 0x0c00_0004,
            restorer: 0x5678,
            mask: 0b110,
        };
        s.altstack = StackT {
            sp: 0x7000,
            flags: 0,
            _pad: 0,
            size: 0x4000,
        };
        s.itimers[0] = ITimerVal {
            interval_sec: 0,
            interval_usec: 5000,
            value_sec: 1,
            value_usec: 250,
        };
        s.timers[0] = TimerState {
            spec: ITimerSpec {
                interval_sec: 0,
                interval_nsec: 7_000_000,
                value_sec: 2,
                value_nsec: 5,
            },
            overrun: 3,
            error: 0,
        };
        s.personality = 0x0040_0000;
        s.pdeath_signal = 9;
        s.dumpable = 1;
        s.no_new_privs = 1;
        s.clear_child_tid = 0xabc0;
        s.robust_list = 0xdef0;
        s.robust_list_len = 24;
        s.name[..9].copy_from_slice(b"worker:1\xff");
        let info = PosixTimerInfo {
            id: 3,
            signo: 36,
            sigev_value: 0x77,
            notify: 0,
            notify_tid: 0,
            clock: 1,
        };
        let (t, th) = convert(&s, &[info]);
        let t = &t;
        assert_eq!(t.sigactions.len(), 64);
        assert_eq!(t.sigactions[9].handler, 0x1234);
        assert_eq!(t.sigactions[9].mask, 0b110);
        assert_eq!(t.itimers.len(), 3);
        assert_eq!(
            t.itimers[0],
            ITimer {
                interval_us: 5000,
                value_us: 1_000_250
            }
        );
        assert_eq!(t.posix_timers.len(), 1);
        let p = t.posix_timers[0];
        assert_eq!((p.id, p.signo, p.sigev_value, p.clock), (3, 36, 0x77, 1));
        assert_eq!(
            (p.value_ns, p.interval_ns, p.overrun),
            (2_000_000_005, 7_000_000, 3)
        );
        assert_eq!(t.personality, 0x0040_0000);
        assert!(t.no_new_privs && !t.child_subreaper);
        assert_eq!((t.pdeath_signal, t.dumpable), (9, 1));
        assert_eq!(
            th.altstack,
            Some(AltStack {
                sp: 0x7000,
                flags: 0,
                size: 0x4000
            })
        );
        assert_eq!(
            (th.clear_child_tid, th.robust_list, th.robust_list_len),
            (0xabc0, 0xdef0, 24)
        );
        // A name is the bytes up to the NUL, whatever they are (comm need not be UTF-8), but
        // never longer than a comm.
        assert_eq!(th.name, "worker:1\u{fffd}");
        assert_eq!(thread_name(b"abcdefghijklmno\0"), "abcdefghijklmno");
        assert_eq!(thread_name(&[0xff; 16]), "\u{fffd}".repeat(5));
        // A per-thread run fills only the thread's fields; they convert alone the same way.
        assert_eq!(convert_thread(&s), th);

        s.altstack.flags = SS_DISABLE;
        assert_eq!(convert_thread(&s).altstack, None);
        assert_eq!(convert(&s, &[]).1.altstack, None);

        // An expired periodic timer waiting for its signal to be dequeued is recorded as the
        // kernel reports it; a disarmed one stays disarmed.
        s.itimers[0] = ITimerVal {
            interval_sec: 0,
            interval_usec: 5000,
            value_sec: 0,
            value_usec: 0,
        };
        s.itimers[1] = ITimerVal::default();
        let t = convert(&s, &[]).0;
        assert_eq!(
            t.itimers[0],
            ITimer {
                interval_us: 5000,
                value_us: 0
            }
        );
        assert_eq!(t.itimers[1], ITimer::default());
    }
}
