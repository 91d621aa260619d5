//! `/proc/PID/timers`: the process's POSIX timers (id, signal, sigev_value, notification,
//! clock). The procfs crate does not offer this file, so it is parsed here.
//!
//! The kernel prints one block per timer (fs/proc/base.c, `show_timer`):
//! ```text
//! ID: 0
//! signal: 36/000000001234abcd
//! notify: signal/pid.6654
//! ClockID: 1
//! ```
//! `signal` is the signal number and sigev_value (hex, as a pointer); `notify` is the kind
//! (`signal`, `none`, `thread`) and whether a thread (`tid`) or the process (`pid`) is
//! signalled, with its id.

use std::io::Read;

use super::{Proc, ProcError};

/// `SIGEV_*` (include/uapi/asm-generic/siginfo.h).
pub const SIGEV_SIGNAL: i32 = 0;
pub const SIGEV_NONE: i32 = 1;
pub const SIGEV_THREAD: i32 = 2;
pub const SIGEV_THREAD_ID: i32 = 4;

/// One POSIX timer as `/proc/PID/timers` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PosixTimerInfo {
    pub id: i32,
    pub signo: i32,
    pub sigev_value: u64,
    /// SIGEV_SIGNAL, SIGEV_NONE or SIGEV_THREAD, with SIGEV_THREAD_ID or-ed in when a thread is
    /// signalled.
    pub notify: i32,
    /// The thread signalled with SIGEV_THREAD_ID; 0 when the process is.
    pub notify_tid: i32,
    pub clock: i32,
}

impl Proc {
    /// The process's POSIX timers, ascending by id.
    pub fn posix_timers(&self) -> Result<Vec<PosixTimerInfo>, ProcError> {
        let mut text = String::new();
        self.open_file("timers")?
            .read_to_string(&mut text)
            .map_err(|e| ProcError::io(self.pid, "timers", e))?;
        parse_timers(&text).map_err(|detail| ProcError::Parse {
            path: format!("/proc/{}/timers", self.pid),
            detail,
        })
    }
}

fn parse_timers(text: &str) -> Result<Vec<PosixTimerInfo>, String> {
    let mut timers = Vec::new();
    let mut current: Option<Partial> = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (key, value) = line
            .split_once(':')
            .ok_or_else(|| format!("line {line:?} has no colon"))?;
        let value = value.trim();
        if key == "ID" {
            if let Some(p) = current.take() {
                timers.push(p.finish()?);
            }
            current = Some(Partial {
                id: number(value, "ID")?,
                ..Partial::default()
            });
            continue;
        }
        let p = current
            .as_mut()
            .ok_or_else(|| format!("{key}: before the first ID: line"))?;
        match key {
            "signal" => {
                let (signo, val) = value
                    .split_once('/')
                    .ok_or_else(|| format!("signal: {value:?} has no '/'"))?;
                p.signo = Some(number(signo, "signal")?);
                p.sigev_value = Some(
                    u64::from_str_radix(val, 16)
                        .map_err(|e| format!("sigev_value {val:?}: {e}"))?,
                );
            }
            "notify" => {
                let (kind, target) = value
                    .split_once('/')
                    .ok_or_else(|| format!("notify: {value:?} has no '/'"))?;
                let base = match kind {
                    "signal" => SIGEV_SIGNAL,
                    "none" => SIGEV_NONE,
                    "thread" => SIGEV_THREAD,
                    other => return Err(format!("unknown notification kind {other:?}")),
                };
                let (whom, id) = target
                    .split_once('.')
                    .ok_or_else(|| format!("notify target {target:?} has no '.'"))?;
                let id: i32 = number(id, "notify")?;
                let (notify, tid) = match whom {
                    "tid" => (base | SIGEV_THREAD_ID, id),
                    "pid" => (base, 0),
                    other => return Err(format!("unknown notification target {other:?}")),
                };
                p.notify = Some((notify, tid));
            }
            "ClockID" => p.clock = Some(number(value, "ClockID")?),
            // Lines a newer kernel may add are no reason to fail.
            _ => {}
        }
    }
    if let Some(p) = current.take() {
        timers.push(p.finish()?);
    }
    timers.sort_by_key(|t| t.id);
    if let Some(w) = timers.windows(2).find(|w| w[0].id == w[1].id) {
        return Err(format!("timer id {} listed twice", w[0].id));
    }
    Ok(timers)
}

fn number<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    s.trim()
        .parse()
        .map_err(|e| format!("{what}: {s:?} is not a number: {e}"))
}

#[derive(Default)]
struct Partial {
    id: i32,
    signo: Option<i32>,
    sigev_value: Option<u64>,
    notify: Option<(i32, i32)>,
    clock: Option<i32>,
}

impl Partial {
    fn finish(self) -> Result<PosixTimerInfo, String> {
        let missing = |what: &str| format!("timer {} has no {what}: line", self.id);
        let (notify, notify_tid) = self.notify.ok_or_else(|| missing("notify"))?;
        Ok(PosixTimerInfo {
            id: self.id,
            signo: self.signo.ok_or_else(|| missing("signal"))?,
            sigev_value: self.sigev_value.ok_or_else(|| missing("signal"))?,
            notify,
            notify_tid,
            clock: self.clock.ok_or_else(|| missing("ClockID"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_output_parses_sorted_by_id() {
        let text = "ID: 2\nsignal: 10/00000000fffffffb\nnotify: signal/tid.6654\nClockID: -6\n\
                    ID: 1\nsignal: 36/000000001234abcd\nnotify: none/pid.6654\nClockID: 0\n\
                    ID: 0\nsignal: 36/000000001234abcd\nnotify: signal/pid.6654\nClockID: 1\n";
        let t = parse_timers(text).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(
            t[0],
            PosixTimerInfo {
                id: 0,
                signo: 36,
                sigev_value: 0x1234_abcd,
                notify: SIGEV_SIGNAL,
                notify_tid: 0,
                clock: 1
            }
        );
        assert_eq!(t[1].notify, SIGEV_NONE);
        assert_eq!(t[2].notify, SIGEV_SIGNAL | SIGEV_THREAD_ID);
        assert_eq!(t[2].notify_tid, 6654);
        assert_eq!(t[2].clock, -6);
        assert_eq!(t[2].sigev_value, 0xffff_fffb);
        assert!(parse_timers("").unwrap().is_empty());
    }

    #[test]
    fn broken_output_is_refused() {
        assert!(parse_timers("signal: 1/0\n").is_err());
        assert!(parse_timers("ID: 0\nsignal: 1/0\nClockID: 0\n").is_err());
        assert!(parse_timers("ID: 0\nsignal: 1/0\nnotify: weird/pid.1\nClockID: 0\n").is_err());
        assert!(parse_timers("ID: x\n").is_err());
        let twice = "ID: 0\nsignal: 1/0\nnotify: signal/pid.1\nClockID: 0\n";
        assert!(parse_timers(&format!("{twice}{twice}")).is_err());
    }

    #[test]
    fn a_real_timer_shows_up() {
        let mut id: libc::timer_t = std::ptr::null_mut();
        // SAFETY: sigevent is plain data; all-zero is a valid value.
        let mut ev: libc::sigevent = unsafe { std::mem::zeroed() };
        ev.sigev_notify = libc::SIGEV_NONE;
        ev.sigev_value = libc::sigval {
            sival_ptr: 0x5eed as *mut libc::c_void,
        };
        // SAFETY: `ev` and `id` are valid for the call.
        assert_eq!(
            unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut ev, &mut id) },
            0
        );
        let me = Proc::open(std::process::id() as i32).unwrap();
        let timers = me.posix_timers().unwrap();
        let found = timers.iter().find(|t| t.id == id as usize as i32);
        // SAFETY: deleting the timer created above.
        unsafe { libc::timer_delete(id) };
        let t = found.expect("the new timer is listed");
        assert_eq!(t.notify, SIGEV_NONE);
        assert_eq!(t.sigev_value, 0x5eed);
        assert_eq!(t.clock, libc::CLOCK_MONOTONIC);
    }
}
