//! Freezing the target with ptrace and letting it go again.
//!
//! [`Frozen`] owns every seized thread. Dropping it (on any error path) detaches them all, so a
//! failed dump leaves the process running exactly as before: crest changes nothing in a
//! tracee, it only reads.

use std::time::Instant;

use nix::sys::ptrace::Options;

use crate::ptrace::{self, PtraceError, Stop, PTRACE_EVENT_STOP};

use super::DumpError;

/// How many signal-delivery stops a thread may report before it reaches the interrupt stop.
/// Each one is a signal that was already pending; a process flooded with signals would
/// otherwise keep the freeze going forever.
const MAX_SIGNAL_STOPS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Seized; not (or no longer) known to be in a ptrace stop.
    Running,
    /// In an interrupt or group stop; ptrace requests work.
    Stopped,
    /// Exited or killed; nothing left to release.
    Gone,
}

/// The seized threads of one process.
#[derive(Debug)]
pub struct Frozen {
    pid: i32,
    threads: Vec<(i32, State)>,
    since: Instant,
}

impl Frozen {
    /// Seizes every thread in `tids` (PTRACE_SEIZE, no signal sent, then PTRACE_INTERRUPT) and
    /// waits until each is in its interrupt stop. A signal-delivery stop seen on the way is
    /// re-injected with PTRACE_CONT, so the signal is delivered as if crest were not there.
    pub fn freeze(pid: i32, tids: &[i32]) -> Result<Frozen, DumpError> {
        let mut frozen = Frozen {
            pid,
            threads: Vec::with_capacity(tids.len()),
            since: Instant::now(),
        };
        for &tid in tids {
            ptrace::seize(tid, Options::empty()).map_err(|e| DumpError::thread(pid, tid, e))?;
            frozen.threads.push((tid, State::Running));
        }
        for &tid in tids {
            ptrace::interrupt(tid).map_err(|e| DumpError::thread(pid, tid, e))?;
        }
        for i in 0..frozen.threads.len() {
            let tid = frozen.threads[i].0;
            let state = frozen.wait_interrupt_stop(tid)?;
            frozen.threads[i].1 = state;
        }
        Ok(frozen)
    }

    fn wait_interrupt_stop(&mut self, tid: i32) -> Result<State, DumpError> {
        for _ in 0..MAX_SIGNAL_STOPS {
            match ptrace::wait_stop(tid).map_err(|e| DumpError::thread(self.pid, tid, e))? {
                Stop::Event {
                    event: PTRACE_EVENT_STOP,
                    ..
                } => return Ok(State::Stopped),
                Stop::Signal(sig) => {
                    // The interrupt stays pending (JOBCTL_TRAP_INTERRUPT) across this CONT, so
                    // the thread stops again right after the signal is handled.
                    crate::info!(
                        2,
                        "thread {tid}: re-delivering signal {sig} before the freeze"
                    );
                    ptrace::cont(tid, sig).map_err(|e| DumpError::thread(self.pid, tid, e))?;
                }
                stop @ (Stop::Exited(_) | Stop::Killed(_)) => {
                    self.mark(tid, State::Gone);
                    return Err(DumpError::ThreadGone {
                        pid: self.pid,
                        tid,
                        how: describe_end(stop),
                    });
                }
                other => {
                    // Nothing else can be reported without ptrace options; detach handles it.
                    self.mark(tid, State::Stopped);
                    return Err(DumpError::UnexpectedStop {
                        pid: self.pid,
                        tid,
                        stop: format!("{other:?}"),
                    });
                }
            }
        }
        Err(DumpError::SignalStorm { pid: self.pid, tid })
    }

    fn mark(&mut self, tid: i32, state: State) {
        if let Some(t) = self.threads.iter_mut().find(|t| t.0 == tid) {
            t.1 = state;
        }
    }

    /// Microseconds since the first thread was seized.
    pub fn elapsed_us(&self) -> u64 {
        self.since.elapsed().as_micros() as u64
    }

    /// Detaches every thread: the process carries on from where it stopped, as if nothing
    /// happened (an interrupted syscall is restarted by the kernel as for any ptrace stop).
    pub fn release(mut self) -> Result<(), DumpError> {
        let threads = std::mem::take(&mut self.threads);
        let mut first_err = None;
        for (tid, state) in threads {
            if let Err(e) = release_thread(tid, state) {
                first_err.get_or_insert(DumpError::thread(self.pid, tid, e));
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Kills the process with SIGKILL while it is still stopped (so it runs no further
    /// instruction), then collects each thread's end so the pid can be reused by a restore.
    pub fn kill(mut self) -> Result<(), DumpError> {
        let threads = std::mem::take(&mut self.threads);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .map_err(|errno| DumpError::Kill {
            pid: self.pid,
            errno,
        })?;
        for (tid, state) in threads {
            if state == State::Gone {
                continue;
            }
            loop {
                match ptrace::wait_stop(tid) {
                    Ok(stop) if stop.is_gone() => break,
                    // A stop that raced with SIGKILL: SIGKILL wakes it; wait again.
                    Ok(_) => {}
                    // Already collected (e.g. by its parent): nothing left to wait for.
                    Err(PtraceError::Wait {
                        errno: nix::errno::Errno::ECHILD,
                        ..
                    }) => break,
                    Err(e) => return Err(DumpError::thread(self.pid, tid, e)),
                }
            }
        }
        Ok(())
    }
}

fn describe_end(stop: Stop) -> String {
    match stop {
        Stop::Exited(code) => format!("exited with status {code}"),
        Stop::Killed(sig) => format!("was killed by signal {sig}"),
        other => format!("{other:?}"),
    }
}

/// Detaches one thread whatever its state. A thread that is running (seized but not yet
/// stopped) must be stopped first: PTRACE_DETACH only works on a stopped tracee.
fn release_thread(tid: i32, state: State) -> Result<(), PtraceError> {
    match state {
        State::Gone => Ok(()),
        State::Stopped => match ptrace::detach(tid, 0) {
            Err(PtraceError::NoSuchThread { .. }) => Ok(()),
            r => r,
        },
        State::Running => {
            match ptrace::interrupt(tid) {
                Err(PtraceError::NoSuchThread { .. }) => return Ok(()),
                r => r?,
            }
            match ptrace::wait_stop(tid)? {
                stop if stop.is_gone() => Ok(()),
                // Detaching from a signal-delivery stop with that signal delivers it.
                Stop::Signal(sig) => ptrace::detach(tid, sig),
                _ => ptrace::detach(tid, 0),
            }
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for (tid, state) in std::mem::take(&mut self.threads) {
            if let Err(e) = release_thread(tid, state) {
                crate::warn!(
                    "could not release thread {tid} of process {}: {e}",
                    self.pid
                );
            }
        }
    }
}
