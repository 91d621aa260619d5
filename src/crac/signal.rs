//! The restore-data signal: SIGRTMIN+2 sent with `sigqueue` semantics (si_code SI_QUEUE), the
//! only kind a CRaC JVM accepts, carrying an int.

use super::CracError;

/// SIGRTMIN + 2 as the C library numbers it (glibc's SIGRTMIN is 34: signal 36).
pub fn restore_signal() -> i32 {
    libc::SIGRTMIN() + 2
}

/// The 64-bit Linux siginfo of a queued signal (`_rt` member), 128 bytes.
#[repr(C)]
struct QueuedInfo {
    signo: i32,
    errno: i32,
    code: i32,
    _pad: i32,
    pid: i32,
    uid: u32,
    value: i32,
    _rest: [u8; 128 - 28],
}

/// Sends the restore signal with `value` to process `pid`, or only to its thread `tid`
/// (rt_tgsigqueueinfo: no other thread can take it, whatever its signal mask).
pub fn send_restore_data(pid: i32, tid: Option<i32>, value: i32) -> Result<(), CracError> {
    let sig = restore_signal();
    let info = QueuedInfo {
        signo: sig,
        errno: 0,
        code: libc::SI_QUEUE,
        _pad: 0,
        // SAFETY: getpid and getuid have no preconditions.
        pid: unsafe { libc::getpid() },
        // SAFETY: as above.
        uid: unsafe { libc::getuid() },
        value,
        _rest: [0; 100],
    };
    let rc = match tid {
        // SAFETY: info is a valid 128-byte siginfo that outlives the call.
        Some(t) => unsafe {
            libc::syscall(
                libc::SYS_rt_tgsigqueueinfo,
                pid,
                t,
                sig,
                &info as *const QueuedInfo,
            )
        },
        // SAFETY: as above.
        None => unsafe {
            libc::syscall(
                libc::SYS_rt_sigqueueinfo,
                pid,
                sig,
                &info as *const QueuedInfo,
            )
        },
    };
    if rc != 0 {
        let who = match tid {
            Some(t) => format!("thread {t} of pid {pid}"),
            None => format!("pid {pid}"),
        };
        return Err(CracError::os(
            format!("rt_sigqueueinfo of the restore signal (value {value}) to {who}"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn siginfo_is_128_bytes() {
        assert_eq!(std::mem::size_of::<super::QueuedInfo>(), 128);
    }
}
