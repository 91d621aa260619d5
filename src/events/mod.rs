//! Event fds: eventfd, signalfd and timerfd, both sides. Each is an anonymous inode whose whole
//! state the kernel shows in fdinfo (`crate::proc::EventInfo`), so a dump reads it from there
//! and a restore creates a new one with that state: the counter and EFD_SEMAPHORE; the signal
//! mask; the clock, the time to the next expiry, the period, the settime flags and the
//! expirations not read yet (TFD_IOC_SET_TICKS).
//!
//! epoll ([`epoll`]), inotify ([`inotify`]) and pidfds ([`pidfd`]) have modules of their own;
//! every other anonymous inode is refused by name ([`refusal`]).

pub mod epoll;
pub mod inotify;
pub mod pidfd;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::images::{EventFd, FileIdentity, FileKind};
use crate::proc::EventInfo;

/// The anon-inode names (`anon_inode:NAME`) of the event fds this module handles.
pub fn handles(anon_kind: &str) -> bool {
    matches!(anon_kind, "[eventfd]" | "[signalfd]" | "[timerfd]")
}

/// Why an fd on the anonymous inode `anon_kind` (`[io_uring]`, `[fanotify]`, ...) that crest
/// does not restore is refused, and what the user can do (the caller names pid and fd).
pub fn refusal(anon_kind: &str) -> String {
    let what = match anon_kind {
        "[io_uring]" => "an io_uring instance, whose rings, registered files and requests in \
                         flight crest cannot capture"
            .to_string(),
        "[fanotify]" => "a fanotify instance, whose marks and pending permission events crest \
                         cannot restore yet"
            .to_string(),
        "[userfaultfd]" => "a userfaultfd, whose registered ranges and pending faults crest \
                            cannot restore"
            .to_string(),
        "[perf_event]" => "a perf_event counter, which crest cannot restore".to_string(),
        k if k.starts_with("bpf") || k.starts_with("[bpf") => {
            format!("a BPF object ({k}), which crest cannot restore")
        }
        k => format!("an anonymous inode of a kind crest does not know ({k})"),
    };
    format!("{what}; close it before the dump, or dump the tree without it")
}

/// The image's record of an event fd whose fdinfo showed `info` (`dev`/`ino`: fstat of it).
pub fn identity(anon_kind: &str, info: &EventInfo, dev: u64, ino: u64) -> FileIdentity {
    let event = match *info {
        EventInfo::EventFd { count, semaphore } => EventFd::Counter { count, semaphore },
        EventInfo::SignalFd { mask } => EventFd::Signals { mask },
        EventInfo::TimerFd {
            clock,
            ticks,
            settime_flags,
            value_ns,
            interval_ns,
        } => EventFd::Timer {
            clock,
            ticks,
            value_ns,
            interval_ns,
            settime_flags,
        },
    };
    crate::files::object_identity(
        format!("anon_inode:{anon_kind}"),
        FileKind::Event(event),
        dev,
        ino,
    )
}

/// Why an event fd could not be created; says which call failed.
#[derive(Debug, thiserror::Error)]
#[error("recreating {what}: {source}")]
pub struct EventError {
    pub what: String,
    pub source: std::io::Error,
}

fn fail(what: String) -> EventError {
    EventError {
        what,
        source: std::io::Error::last_os_error(),
    }
}

fn owned(raw: i32, what: impl FnOnce() -> String) -> Result<OwnedFd, EventError> {
    if raw < 0 {
        return Err(fail(what()));
    }
    // SAFETY: raw is a fresh descriptor the kernel just gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// A new event fd with the state `ev` and the status flags (O_NONBLOCK) of `status_flags`,
/// close-on-exec.
pub fn create(ev: &EventFd, status_flags: u32) -> Result<OwnedFd, EventError> {
    let nonblock = if status_flags as i32 & libc::O_NONBLOCK != 0 {
        libc::O_NONBLOCK
    } else {
        0
    };
    match *ev {
        EventFd::Counter { count, semaphore } => {
            let sem = if semaphore { libc::EFD_SEMAPHORE } else { 0 };
            // SAFETY: eventfd takes integers; the counter is set by a write below (eventfd's
            // own initial value is only 32 bits wide).
            let fd = owned(
                unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | nonblock | sem) },
                || "an eventfd (eventfd)".into(),
            )?;
            if count > 0 {
                let bytes = count.to_ne_bytes();
                // SAFETY: writes 8 bytes from a live buffer.
                let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), 8) };
                if n != 8 {
                    return Err(fail(format!("the count {count} of an eventfd (write)")));
                }
            }
            Ok(fd)
        }
        EventFd::Signals { mask } => {
            // SAFETY: sigset_t is plain data, filled by sigemptyset/sigaddset.
            let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
            // SAFETY: valid set pointer and signal numbers 1..=64.
            unsafe {
                libc::sigemptyset(&mut set);
                for sig in 1..=64 {
                    if mask & (1u64 << (sig - 1)) != 0 {
                        libc::sigaddset(&mut set, sig);
                    }
                }
            }
            // SAFETY: set is a valid sigset_t.
            owned(
                unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | nonblock) },
                || format!("a signalfd for signals {mask:#x} (signalfd)"),
            )
        }
        EventFd::Timer {
            clock,
            ticks,
            value_ns,
            interval_ns,
            settime_flags,
        } => timer(clock, ticks, value_ns, interval_ns, settime_flags, nonblock),
    }
}

fn timer(
    clock: i32,
    ticks: u64,
    value_ns: u64,
    interval_ns: u64,
    settime_flags: u32,
    nonblock: i32,
) -> Result<OwnedFd, EventError> {
    // SAFETY: timerfd_create takes integers.
    let fd = owned(
        unsafe { libc::timerfd_create(clock, libc::TFD_CLOEXEC | nonblock) },
        || format!("a timerfd on clock {clock} (timerfd_create)"),
    )?;
    // A periodic timer that expired with its expirations unread shows no time left: the kernel
    // moves it on only when it is read. Armed one period ahead instead (disarming it would
    // stop it for good).
    let value_ns = if value_ns == 0 { interval_ns } else { value_ns };
    if value_ns != 0 {
        const NS: u64 = 1_000_000_000;
        let ts = |ns: u64| libc::timespec {
            tv_sec: (ns / NS) as libc::time_t,
            tv_nsec: (ns % NS) as libc::c_long,
        };
        let mut value = ts(value_ns);
        let abstime = settime_flags as i32 & libc::TFD_TIMER_ABSTIME != 0;
        if abstime {
            // The image holds the time left; an absolute timer expires at now + that.
            // SAFETY: clock_gettime writes one timespec.
            let mut now: libc::timespec = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            if unsafe { libc::clock_gettime(clock, &mut now) } != 0 {
                return Err(fail(format!("the time of clock {clock} (clock_gettime)")));
            }
            let at = (now.tv_sec as u64 * NS + now.tv_nsec as u64).saturating_add(value_ns);
            value = ts(at);
        }
        let spec = libc::itimerspec {
            it_interval: ts(interval_ns),
            it_value: value,
        };
        let flags =
            settime_flags as i32 & (libc::TFD_TIMER_ABSTIME | libc::TFD_TIMER_CANCEL_ON_SET);
        // SAFETY: spec is a valid itimerspec; the old value is not asked for.
        if unsafe { libc::timerfd_settime(fd.as_raw_fd(), flags, &spec, std::ptr::null_mut()) } != 0
        {
            return Err(fail(format!(
                "a timerfd's expiry in {value_ns} ns every {interval_ns} ns (timerfd_settime)"
            )));
        }
    }
    if ticks > 0 {
        /// `TFD_IOC_SET_TICKS`: `_IOW('T', 0, __u64)` (fs/timerfd.c, CONFIG_CHECKPOINT_RESTORE).
        const TFD_IOC_SET_TICKS: libc::c_ulong = 0x4008_5400;
        // SAFETY: the ioctl reads one u64 from a live variable.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TFD_IOC_SET_TICKS, &ticks as *const u64) } != 0 {
            return Err(fail(format!(
                "the {ticks} unread expirations of a timerfd (ioctl TFD_IOC_SET_TICKS)"
            )));
        }
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_u64(fd: &OwnedFd) -> Option<u64> {
        let mut b = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live buffer.
        let n = unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), 8) };
        (n == 8).then(|| u64::from_ne_bytes(b))
    }

    fn info(fd: &OwnedFd) -> EventInfo {
        let me = crate::proc::Proc::open(std::process::id() as i32).unwrap();
        me.fdinfo(fd.as_raw_fd())
            .unwrap()
            .event
            .expect("an event fd")
    }

    #[test]
    fn an_eventfd_comes_back_with_its_count_and_semaphore_mode() {
        let ev = EventFd::Counter {
            count: 3,
            semaphore: true,
        };
        let fd = create(&ev, libc::O_NONBLOCK as u32).unwrap();
        assert_eq!(
            info(&fd),
            EventInfo::EventFd {
                count: 3,
                semaphore: true
            }
        );
        // Semaphore mode: each read takes 1.
        assert_eq!(read_u64(&fd), Some(1));
        assert_eq!(read_u64(&fd), Some(1));
        assert_eq!(read_u64(&fd), Some(1));
        assert_eq!(read_u64(&fd), None, "non-blocking and empty");
    }

    #[test]
    fn a_signalfd_comes_back_with_its_mask() {
        let mask = (1u64 << (libc::SIGUSR1 - 1)) | (1u64 << (libc::SIGRTMIN() + 2 - 1) as u64);
        let fd = create(&EventFd::Signals { mask }, 0).unwrap();
        assert_eq!(info(&fd), EventInfo::SignalFd { mask });
    }

    #[test]
    fn a_timerfd_comes_back_armed_with_its_unread_expirations() {
        let ev = EventFd::Timer {
            clock: libc::CLOCK_MONOTONIC,
            ticks: 4,
            value_ns: 0,
            interval_ns: 3_000_000_000,
            settime_flags: 0,
        };
        let fd = create(&ev, libc::O_NONBLOCK as u32).unwrap();
        match info(&fd) {
            EventInfo::TimerFd {
                clock,
                ticks,
                value_ns,
                interval_ns,
                ..
            } => {
                assert_eq!(
                    (clock, ticks, interval_ns),
                    (libc::CLOCK_MONOTONIC, 4, 3_000_000_000)
                );
                assert!(value_ns > 0 && value_ns <= 3_000_000_000, "{value_ns}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(read_u64(&fd), Some(4), "the unread expirations");
    }
}
