//! Giving the forked child the process-wide and per-thread state the parasite collected:
//! signal dispositions, POSIX timers, personality, prctl flags, the clear-child-tid address,
//! the robust futex list and the pending signals.
//!
//! All of it belongs to the task (its signal struct or its thread), not to its memory, so it
//! survives the morph: the child sets it while it is still a copy of crest, with every signal
//! blocked. Only what must not start before the morph is left to the restorer (arming the
//! timers) or to rt_sigreturn (the blocked mask, the alternate stack).

use crate::images::{PosixTimer, ProcessImage, ThreadImage};

/// `PR_TIMER_CREATE_RESTORE_IDS` (Linux 6.16+): timer_create takes the id to use from its
/// third argument instead of allocating one.
const PR_TIMER_CREATE_RESTORE_IDS: libc::c_int = 77;
const PR_TIMER_CREATE_RESTORE_IDS_ON: libc::c_ulong = 1;
const PR_TIMER_CREATE_RESTORE_IDS_OFF: libc::c_ulong = 0;
/// `SIGEV_THREAD_ID` (glibc's SIGEV_THREAD becomes this in the kernel).
const SIGEV_THREAD_ID: i32 = 4;

/// The kernel's `struct sigaction` for rt_sigaction (glibc's wrapper would replace sa_restorer
/// and refuses signals 32 and 33).
#[repr(C)]
struct KernelSigaction {
    handler: u64,
    flags: u64,
    restorer: u64,
    mask: u64,
}

/// The kernel's `struct sigevent` (64 bytes).
#[repr(C)]
pub(super) struct KernelSigevent {
    value: u64,
    signo: i32,
    notify: i32,
    tid: i32,
    _pad: [i32; 11],
}

fn os_error(what: String) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// Installs every signal's disposition from the image. Images without recorded handlers (none
/// were installed) still get SIG_IGN where the process ignored a signal and SIG_DFL elsewhere,
/// so crest's own dispositions (Rust ignores SIGPIPE) never leak into the restored process.
pub fn set_sigactions(p: &ProcessImage) -> Result<(), String> {
    for sig in 1..=64u32 {
        if sig == libc::SIGKILL as u32 || sig == libc::SIGSTOP as u32 {
            continue;
        }
        let act = match p.task.sigactions.get(sig as usize - 1) {
            Some(a) => KernelSigaction {
                handler: a.handler,
                flags: a.flags,
                restorer: a.restorer,
                mask: a.mask,
            },
            None => {
                let ignored = p.sig_ignored & (1u64 << (sig - 1)) != 0;
                KernelSigaction {
                    handler: ignored as u64,
                    flags: 0,
                    restorer: 0,
                    mask: 0,
                }
            }
        };
        // SAFETY: `act` is a valid kernel sigaction; the old action is not requested. The
        // handler address belongs to the image and is only used once the morph is complete
        // (every signal is blocked until rt_sigreturn).
        let r = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                &act as *const KernelSigaction,
                std::ptr::null::<u8>(),
                8usize,
            )
        };
        if r != 0 {
            return Err(os_error(format!(
                "cannot set the disposition of signal {sig}"
            )));
        }
    }
    Ok(())
}

/// Creates the image's POSIX timers under their original ids, disarmed; the restorer arms them
/// right before rt_sigreturn.
pub fn create_posix_timers(p: &ProcessImage) -> Result<(), String> {
    let now: Vec<PosixTimer> = p
        .task
        .posix_timers
        .iter()
        .filter(|t| !created_late(p.pid, &p.task.posix_timers, t))
        .copied()
        .collect();
    create_timers(p.pid, &now)
}

/// Whether timer `t` signals a thread other than the leader: that thread does not exist before
/// the restorer creates it, so crest creates such a timer afterwards (finish.rs).
pub fn targets_another_thread(pid: i32, t: &PosixTimer) -> bool {
    t.notify & SIGEV_THREAD_ID != 0 && t.notify_tid != pid
}

/// Whether this kernel creates timers under chosen ids (PR_TIMER_CREATE_RESTORE_IDS, Linux
/// 6.16+), asked once. Older kernels (6.12, Debian 12's arm64 kernels among them) hand out ids
/// in sequence per process (`posix_timer_add`: a counter starting at 0 in a fresh process,
/// skipping ids in use), so crest gets an id by creating timers in id order and deleting the
/// ones below it ([`create_timers`]).
pub fn chosen_timer_ids() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // SAFETY: prctl with integer arguments only; turning the mode off changes nothing here.
    *SUPPORTED.get_or_init(|| unsafe {
        libc::prctl(
            PR_TIMER_CREATE_RESTORE_IDS,
            PR_TIMER_CREATE_RESTORE_IDS_OFF,
            0,
            0,
            0,
        ) == 0
    })
}

/// The most timers crest creates and deletes to reach one id on a kernel without chosen ids.
pub const SEQUENTIAL_ID_GAP_MAX: i32 = 1 << 16;

/// Whether crest creates timer `t` (of `timers`, the process's) after the restorer made the
/// threads (finish.rs) rather than in the child before the morph: one that signals another
/// thread, and, on a kernel without chosen ids, every timer with a higher id than such a one
/// (ids come in sequence there, so timers are created in id order).
pub fn created_late(pid: i32, timers: &[PosixTimer], t: &PosixTimer) -> bool {
    targets_another_thread(pid, t)
        || (!chosen_timer_ids()
            && timers
                .iter()
                .any(|o| targets_another_thread(pid, o) && o.id < t.id))
}

/// The kernel sigevent timer `t` is created with.
pub(super) fn sigevent(t: &PosixTimer) -> KernelSigevent {
    KernelSigevent {
        value: t.sigev_value,
        signo: t.signo,
        notify: t.notify,
        // A thread-directed timer targets the same tid after restore.
        tid: if t.notify & SIGEV_THREAD_ID != 0 {
            t.notify_tid
        } else {
            0
        },
        _pad: [0; 11],
    }
}

fn create_timers(pid: i32, timers: &[PosixTimer]) -> Result<(), String> {
    if timers.is_empty() {
        return Ok(());
    }
    if !chosen_timer_ids() {
        let mut sorted = timers.to_vec();
        sorted.sort_by_key(|t| t.id);
        return sorted
            .iter()
            .try_for_each(|t| create_timer_in_sequence(pid, t));
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe {
        libc::prctl(
            PR_TIMER_CREATE_RESTORE_IDS,
            PR_TIMER_CREATE_RESTORE_IDS_ON,
            0,
            0,
            0,
        )
    } != 0
    {
        return Err(os_error(format!(
            "cannot create POSIX timers with chosen ids (PR_TIMER_CREATE_RESTORE_IDS needs Linux 6.16+); pid {} has {} timers",
            pid,
            timers.len()
        )));
    }
    let result = timers.iter().try_for_each(|t| create_timer(pid, t));
    // SAFETY: as above.
    unsafe {
        libc::prctl(
            PR_TIMER_CREATE_RESTORE_IDS,
            PR_TIMER_CREATE_RESTORE_IDS_OFF,
            0,
            0,
            0,
        )
    };
    result
}

/// timer_create(2) of timer `t`'s clock and event; `id` is the id wanted (read by the kernel
/// only with PR_TIMER_CREATE_RESTORE_IDS on) and gets the id the kernel used.
fn timer_create(
    pid: i32,
    t: &PosixTimer,
    event: &KernelSigevent,
    id: &mut libc::c_int,
) -> Result<(), String> {
    // SAFETY: event and id are valid for the call; the kernel may read `id` and writes the id
    // it used back.
    let r = unsafe {
        libc::syscall(
            libc::SYS_timer_create,
            t.clock,
            event as *const KernelSigevent,
            id as *mut libc::c_int,
        )
    };
    if r != 0 {
        return Err(os_error(format!(
            "cannot recreate POSIX timer {} (clock {}) of pid {pid}",
            t.id, t.clock
        )));
    }
    Ok(())
}

fn create_timer(pid: i32, t: &PosixTimer) -> Result<(), String> {
    let event = sigevent(t);
    let mut id: libc::c_int = t.id;
    // With PR_TIMER_CREATE_RESTORE_IDS on, the kernel takes the wanted id from `id`.
    timer_create(pid, t, &event, &mut id)?;
    if id != t.id {
        return Err(format!(
            "POSIX timer {} of pid {pid} came back with id {id}",
            t.id
        ));
    }
    Ok(())
}

/// Creates timer `t` on a kernel that hands out ids in sequence: creates timers until one gets
/// `t.id`, deleting those below it (timers are created in id order, so a later id never comes
/// first).
fn create_timer_in_sequence(pid: i32, t: &PosixTimer) -> Result<(), String> {
    let event = sigevent(t);
    for _ in 0..=SEQUENTIAL_ID_GAP_MAX {
        let mut id: libc::c_int = -1;
        timer_create(pid, t, &event, &mut id)?;
        if id == t.id {
            return Ok(());
        }
        if id > t.id {
            return Err(format!(
                "POSIX timer {} of pid {pid} came back with id {id}: this kernel gives timer \
                 ids in sequence (no PR_TIMER_CREATE_RESTORE_IDS, Linux 6.16+), and the ids \
                 below are taken",
                t.id
            ));
        }
        // SAFETY: deletes the timer just created, by its id.
        unsafe { libc::syscall(libc::SYS_timer_delete, id) };
    }
    Err(format!(
        "POSIX timer {} of pid {pid}: this kernel gives timer ids in sequence (no \
         PR_TIMER_CREATE_RESTORE_IDS, Linux 6.16+) and crest stops after {} tries; restore on \
         a newer kernel",
        t.id, SEQUENTIAL_ID_GAP_MAX
    ))
}

/// personality, child-subreaper, no_new_privs and, when `pdeath`, the parent-death signal
/// (crest, the parent after restore, stays until the process ends; see restore::restore).
pub fn set_process_flags(p: &ProcessImage, pdeath: bool) -> Result<(), String> {
    let t = &p.task;
    // SAFETY: prctl with integer arguments only.
    if pdeath
        && unsafe {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                t.pdeath_signal as libc::c_ulong,
                0,
                0,
                0,
            )
        } != 0
    {
        return Err(os_error(format!(
            "cannot set the parent-death signal {}",
            t.pdeath_signal
        )));
    }
    // SAFETY: personality takes a plain integer.
    if unsafe { libc::personality(t.personality as libc::c_ulong) } < 0 {
        return Err(os_error(format!(
            "cannot set personality {:#x}",
            t.personality
        )));
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe {
        libc::prctl(
            libc::PR_SET_CHILD_SUBREAPER,
            t.child_subreaper as libc::c_ulong,
            0,
            0,
            0,
        )
    } != 0
    {
        return Err(os_error("cannot set the child-subreaper flag".into()));
    }
    // SAFETY: as above; no_new_privs can only be turned on.
    if t.no_new_privs && unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(os_error("cannot set no_new_privs".into()));
    }
    Ok(())
}

/// The thread's clear-child-tid address and robust futex list, taking over from crest's glibc.
pub fn set_thread_links(thread: &ThreadImage) -> Result<(), String> {
    let s = &thread.state;
    // SAFETY: set_tid_address only records the address; the kernel writes it at thread exit.
    unsafe { libc::syscall(libc::SYS_set_tid_address, s.clear_child_tid) };
    // The kernel accepts only sizeof(struct robust_list_head); a head of 0 clears crest's list.
    let len = if s.robust_list_len != 0 {
        s.robust_list_len
    } else {
        24
    };
    // SAFETY: the kernel only records the head; it walks the list when the thread exits.
    if unsafe { libc::syscall(libc::SYS_set_robust_list, s.robust_list, len) } != 0 {
        return Err(os_error(format!(
            "cannot set the robust futex list {:#x} (length {len})",
            s.robust_list
        )));
    }
    Ok(())
}

/// PR_SET_DUMPABLE last: a non-dumpable child would hide its /proc files from crest's checks.
pub fn set_dumpable(p: &ProcessImage) -> Result<(), String> {
    // SAFETY: prctl with integer arguments only.
    if unsafe {
        libc::prctl(
            libc::PR_SET_DUMPABLE,
            p.task.dumpable as libc::c_ulong,
            0,
            0,
            0,
        )
    } != 0
    {
        return Err(os_error(format!(
            "cannot set dumpable to {}",
            p.task.dumpable
        )));
    }
    Ok(())
}

/// Queues the image's pending signals again, process-wide ones and the leader's, each with its original
/// siginfo (a process may send itself any si_code). They stay pending, blocked, until
/// rt_sigreturn installs the image's mask.
pub fn queue_pending_signals(p: &ProcessImage) -> Result<(), String> {
    for info in &p.task.shared_pending {
        queue_signal(p.pid, None, info)?;
    }
    // Only the leader exists before the morph; every other thread queues its own pending
    // signals in the restorer, once it has been created (ThreadArg::pending).
    for info in &p.threads[0].state.pending {
        queue_signal(p.pid, Some(p.pid), info)?;
    }
    Ok(())
}

/// Queues one signal with its siginfo, to the process or to one of its threads.
fn queue_signal(pid: i32, tid: Option<i32>, info: &[u8]) -> Result<(), String> {
    let sig = signo(info)?;
    if info.len() != 128 {
        return Err(format!(
            "a pending signal {sig} in the image has a siginfo of {} bytes",
            info.len()
        ));
    }
    // SAFETY: info is a 128-byte siginfo; the kernel copies it.
    let r = unsafe {
        match tid {
            None => libc::syscall(libc::SYS_rt_sigqueueinfo, pid, sig, info.as_ptr()),
            Some(tid) => libc::syscall(libc::SYS_rt_tgsigqueueinfo, pid, tid, sig, info.as_ptr()),
        }
    };
    if r != 0 {
        let whom = tid.map_or(format!("pid {pid}"), |t| format!("thread {t}"));
        return Err(os_error(format!(
            "cannot queue pending signal {sig} for {whom}"
        )));
    }
    Ok(())
}

fn signo(info: &[u8]) -> Result<i32, String> {
    let sig = info
        .get(..4)
        .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
        .unwrap_or(0);
    if (1..=64).contains(&sig) {
        Ok(sig)
    } else {
        Err(format!(
            "a pending signal in the image has signal number {sig}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` in a forked child (so this test process keeps its own timers, masks and signal
    /// state) and returns what it reports through its exit status.
    fn in_child(f: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
        // SAFETY: the child only runs `f` (plain syscalls) and _exit; no locks are taken.
        match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => {
                let code = match f() {
                    Ok(()) => 0,
                    Err(msg) => {
                        eprintln!("child: {msg}");
                        1
                    }
                };
                // SAFETY: ends the child only.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                match nix::sys::wait::waitpid(child, None).unwrap() {
                    nix::sys::wait::WaitStatus::Exited(_, 0) => Ok(()),
                    other => Err(format!("child ended with {other:?}")),
                }
            }
        }
    }

    #[test]
    fn timers_come_back_under_their_ids() {
        in_child(|| {
            let pid = std::process::id() as i32;
            let timer = |id| PosixTimer {
                id,
                clock: libc::CLOCK_MONOTONIC,
                notify: 0,
                signo: 36,
                sigev_value: 0x5eed,
                ..Default::default()
            };
            create_timers(pid, &[timer(3), timer(7)])?;
            for id in [3, 7] {
                let mut spec = [0i64; 4];
                // SAFETY: reads the timer into a 32-byte itimerspec.
                if unsafe { libc::syscall(libc::SYS_timer_gettime, id, spec.as_mut_ptr()) } != 0 {
                    return Err(os_error(format!("timer {id} does not exist")));
                }
            }
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn pending_signals_are_queued_with_their_values() {
        in_child(|| {
            let pid = std::process::id() as i32;
            let mut block = nix::sys::signal::SigSet::empty();
            block.add(nix::sys::signal::Signal::SIGUSR2);
            block.thread_block().map_err(|e| e.to_string())?;
            // A SI_QUEUE siginfo for SIGUSR2 carrying the value 0x1234 (si_value at byte 24).
            let mut info = vec![0u8; 128];
            info[0..4].copy_from_slice(&libc::SIGUSR2.to_le_bytes());
            info[8..12].copy_from_slice(&libc::SI_QUEUE.to_le_bytes());
            info[24..32].copy_from_slice(&0x1234u64.to_le_bytes());
            queue_signal(pid, Some(pid), &info)?;
            // SAFETY: siginfo_t is plain data; all-zero is a valid value.
            let mut got: libc::siginfo_t = unsafe { std::mem::zeroed() };
            let set = block.as_ref();
            // SAFETY: waits for the blocked SIGUSR2 we just queued; got is a valid siginfo_t.
            let sig = unsafe {
                libc::sigtimedwait(
                    set,
                    &mut got,
                    &libc::timespec {
                        tv_sec: 1,
                        tv_nsec: 0,
                    },
                )
            };
            // SAFETY: si_value is valid for an SI_QUEUE siginfo.
            let value = unsafe { got.si_value().sival_ptr } as u64;
            if sig != libc::SIGUSR2 || got.si_code != libc::SI_QUEUE || value != 0x1234 {
                return Err(format!(
                    "got signal {sig} code {} value {value:#x}",
                    got.si_code
                ));
            }
            Ok(())
        })
        .unwrap();
    }
}
