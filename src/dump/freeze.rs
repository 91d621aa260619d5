//! Freezing the target with ptrace and letting it go again.
//!
//! [`Frozen`] owns every seized thread. Dropping it (on any error path) detaches them all, so a
//! failed dump leaves the process running exactly as before: crest changes nothing in a
//! tracee, it only reads.

use std::collections::HashSet;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::ptrace::Options;

use crate::proc::Proc;
use crate::ptrace::{self, PtraceError, Stop, PTRACE_EVENT_STOP};

use super::DumpError;

/// How many signal-delivery stops a thread may report before it reaches the interrupt stop.
/// Each one is a signal that was already pending; a process flooded with signals would
/// otherwise keep the freeze going forever.
const MAX_SIGNAL_STOPS: usize = 1000;
/// How many times the thread list may grow during a freeze. Each round stops every thread
/// listed so far, so only threads created by not-yet-stopped threads can appear; a process
/// that still produces new ones after this many rounds is creating threads faster than crest
/// can stop them.
const MAX_FREEZE_ROUNDS: usize = 1000;
/// Non-blocking polls for the leader's stop before each look at whether it has exited.
const LEADER_POLLS: u32 = 64;

/// What a reported stop means while waiting for an interrupt stop.
enum Next {
    /// The wait is over: the thread is in its interrupt stop, or has ended.
    Done(State),
    /// A signal was re-delivered; the interrupt stop is still to come.
    Again,
}

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
    /// The stop signal of the group stop the process was in when seized (see
    /// [`Frozen::group_stop`]).
    group_stop: Option<i32>,
}

impl Frozen {
    /// Seizes every thread of the process (PTRACE_SEIZE, no signal sent, then PTRACE_INTERRUPT)
    /// and waits until each is in its interrupt stop; then lists `/proc/PID/task` again and
    /// does the same for threads that appeared meanwhile, until a listing shows no new thread.
    /// That terminates: a thread in a ptrace stop creates no threads, so once every listed
    /// thread is stopped the next listing is complete (copy_process links a new thread into the
    /// group before clone returns to its creator, and the creator can only stop after that).
    ///
    /// A thread that exits while it is being seized is dropped: ESRCH from the seize, EPERM for
    /// a thread already past exit_notify, or an exit reported by the wait (which also reaps it,
    /// as its tracer must). The leader exiting is an error: the process cannot be dumped without
    /// it. A signal-delivery stop seen on the way is re-injected with PTRACE_CONT, so the signal
    /// is delivered as if crest were not there.
    ///
    /// Cost per thread: one openat (the listing), PTRACE_SEIZE, PTRACE_INTERRUPT and one waitpid.
    /// All interrupts of a round go out before the first wait, so the threads stop in parallel.
    pub fn freeze(proc: &Proc) -> Result<Frozen, DumpError> {
        let pid = proc.pid();
        let mut frozen = Frozen {
            pid,
            threads: Vec::new(),
            group_stop: None,
        };
        let mut known: HashSet<i32> = HashSet::new();
        for round in 0.. {
            if round == MAX_FREEZE_ROUNDS {
                return Err(DumpError::ThreadChurn {
                    pid,
                    rounds: MAX_FREEZE_ROUNDS,
                });
            }
            let new: Vec<i32> = proc
                .tasks()?
                .into_iter()
                .filter(|tid| !known.contains(tid))
                .collect();
            if new.is_empty() {
                break;
            }
            if round == 0 && new.first() != Some(&pid) {
                // /proc/PID/task lists the leader as long as the process exists.
                return Err(DumpError::NoSuchProcess { pid });
            }
            let first = frozen.threads.len();
            for tid in new {
                match ptrace::seize(tid, Options::empty()) {
                    Ok(()) => {
                        known.insert(tid);
                        frozen.threads.push((tid, State::Running));
                    }
                    Err(PtraceError::NoSuchThread { .. }) if tid != pid => {
                        crate::info!(2, "thread {tid} exited before it could be seized");
                    }
                    Err(PtraceError::Seize {
                        errno: Errno::EPERM,
                        ..
                    }) if tid != pid && proc.task_ended(tid) => {
                        crate::info!(2, "thread {tid} was exiting when crest seized it");
                    }
                    Err(e) => return Err(DumpError::thread(pid, tid, e)),
                }
            }
            for i in first..frozen.threads.len() {
                let tid = frozen.threads[i].0;
                // A seized thread that has exited is still ours to reap, so the interrupt
                // succeeds on it and the wait below reports its end.
                ptrace::interrupt(tid).map_err(|e| DumpError::thread(pid, tid, e))?;
            }
            // The leader last: if it exits while others live, the kernel holds back its exit
            // report until the group is empty (`delay_group_leader`), so it gets a wait that
            // can notice that instead of blocking.
            for i in first..frozen.threads.len() {
                let tid = frozen.threads[i].0;
                if tid != pid {
                    frozen.threads[i].1 = frozen.wait_interrupt_stop(tid)?;
                }
            }
            if first == 0 {
                frozen.threads[0].1 = frozen.wait_leader_stop()?;
            }
            // Exited threads are reaped: forget them (their tid may even come back as a new
            // thread, which the next listing then seizes).
            frozen.threads.retain(|&(tid, state)| {
                let gone = state == State::Gone;
                if gone {
                    known.remove(&tid);
                }
                !gone
            });
        }
        // Leader first, the rest in ascending order.
        frozen.threads.sort_by_key(|&(tid, _)| (tid != pid, tid));
        Ok(frozen)
    }

    /// The frozen threads: the leader first, the others by ascending tid.
    pub fn tids(&self) -> Vec<i32> {
        self.threads.iter().map(|&(tid, _)| tid).collect()
    }

    /// The signal that stopped the process (SIGSTOP, SIGTSTP, SIGTTIN or SIGTTOU) when it was
    /// in a group stop (state T) as crest seized it; None when it was running.
    ///
    /// A seized thread of a stopped group reports its interrupt stop as PTRACE_EVENT_STOP with
    /// the group's stop signal instead of SIGTRAP (kernel/signal.c `do_jobctl_trap`). Once
    /// resumed by the tracer it re-traps once into the group stop (the infection code resumes
    /// it past that), and when crest detaches, the kernel puts it back into the group stop
    /// (`__ptrace_unlink` while SIGNAL_STOP_STOPPED), so a stopped process stays stopped.
    pub fn group_stop(&self) -> Option<i32> {
        self.group_stop
    }

    /// Waits for the interrupt stop of thread `tid` (not the leader).
    fn wait_interrupt_stop(&mut self, tid: i32) -> Result<State, DumpError> {
        let mut signals = 0;
        loop {
            let stop = ptrace::wait_stop(tid).map_err(|e| DumpError::thread(self.pid, tid, e))?;
            if let Next::Done(state) = self.on_stop(tid, stop, &mut signals)? {
                return Ok(state);
            }
        }
    }

    /// Waits for the leader's interrupt stop without blocking on a leader that has exited
    /// while other threads live on: the kernel reports its end only once the group is empty.
    fn wait_leader_stop(&mut self) -> Result<State, DumpError> {
        let pid = self.pid;
        let (mut signals, mut polls) = (0, 0u32);
        loop {
            match ptrace::try_wait_stop(pid).map_err(|e| DumpError::thread(pid, pid, e))? {
                Some(stop) => {
                    if let Next::Done(state) = self.on_stop(pid, stop, &mut signals)? {
                        return Ok(state);
                    }
                    polls = 0;
                }
                None if polls < LEADER_POLLS => {
                    polls += 1;
                    std::thread::yield_now();
                }
                None => {
                    if Proc::open(pid).map(|p| p.task_ended(pid)).unwrap_or(true) {
                        self.mark(pid, State::Gone);
                        return Err(DumpError::ThreadGone {
                            pid,
                            tid: pid,
                            how: "exited while its other threads live on (the main thread \
                                  called pthread_exit?)"
                                .into(),
                        });
                    }
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
        }
    }

    /// Handles one stop reported while waiting for `tid`'s interrupt stop. `signals` counts the
    /// signal-delivery stops seen so far.
    fn on_stop(&mut self, tid: i32, stop: Stop, signals: &mut usize) -> Result<Next, DumpError> {
        let pid = self.pid;
        match stop {
            Stop::Event {
                event: PTRACE_EVENT_STOP,
                sig,
            } => {
                if sig != libc::SIGTRAP && tid == pid {
                    self.group_stop = Some(sig);
                }
                Ok(Next::Done(State::Stopped))
            }
            Stop::Signal(sig) => {
                if *signals == MAX_SIGNAL_STOPS {
                    return Err(DumpError::SignalStorm { pid, tid });
                }
                *signals += 1;
                // The interrupt stays pending (JOBCTL_TRAP_INTERRUPT) across this CONT, so
                // the thread stops again right after the signal is handled.
                crate::info!(
                    2,
                    "thread {tid}: re-delivering signal {sig} before the freeze"
                );
                ptrace::cont(tid, sig).map_err(|e| DumpError::thread(pid, tid, e))?;
                Ok(Next::Again)
            }
            stop @ (Stop::Exited(_) | Stop::Killed(_)) => {
                // The wait reaped it: there is nothing left to release.
                self.mark(tid, State::Gone);
                if tid == pid {
                    return Err(DumpError::ThreadGone {
                        pid,
                        tid,
                        how: describe_end(stop),
                    });
                }
                crate::info!(2, "thread {tid} {} while being frozen", describe_end(stop));
                Ok(Next::Done(State::Gone))
            }
            other => {
                // Nothing else can be reported without ptrace options; detach handles it.
                self.mark(tid, State::Stopped);
                Err(DumpError::UnexpectedStop {
                    pid,
                    tid,
                    stop: format!("{other:?}"),
                })
            }
        }
    }

    fn mark(&mut self, tid: i32, state: State) {
        if let Some(t) = self.threads.iter_mut().find(|t| t.0 == tid) {
            t.1 = state;
        }
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
    ///
    /// The leader is waited for last: a traced thread that dies stays a zombie until its tracer
    /// reaps it, and the kernel reports the leader's end only once every other thread of the
    /// group is reaped (`delay_group_leader`), so waiting for the leader first would block for
    /// ever.
    pub fn kill(mut self) -> Result<(), DumpError> {
        let mut threads = std::mem::take(&mut self.threads);
        let pid = self.pid;
        threads.sort_by_key(|&(tid, _)| tid == pid);
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
