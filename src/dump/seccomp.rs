//! The seccomp check of every thread but the leader (whose mode is checked before the freeze).
//!
//! Seccomp is per thread: a thread may install a filter of its own. The parasite must not run
//! in such a thread (a filter may refuse or trap its syscalls; strict mode kills the thread on
//! any of them), and a restore could not recreate the filter anyway. The mode is only in
//! `/proc/PID/task/TID/status`, which costs some 50 us a thread to read and parse: a lot for a
//! JVM's thousand threads. So a helper thread reads them (a stopped thread cannot change its
//! mode) while the tracer thread captures registers, and the parasite waits for each thread's
//! verdict just before it runs there: the reads overlap the ptrace work instead of adding to it.

use std::collections::HashMap;
use std::sync::mpsc::{channel, Receiver};
use std::thread::Scope;

use crate::proc::{Proc, ProcError};

use super::DumpError;

/// The helper thread's verdicts, in the order of the tids it was given.
pub struct SeccompWatch<'a> {
    proc: &'a Proc,
    rx: Receiver<(i32, Result<u32, ProcError>)>,
    /// Modes received ahead of the thread asked for.
    early: HashMap<i32, u32>,
}

/// Starts reading the seccomp mode of each of `tids` (stopped threads of `proc`) on a helper
/// thread of `scope`. The helper stops early once the watch is dropped.
pub fn watch<'scope, 'env: 'scope>(
    scope: &'scope Scope<'scope, 'env>,
    proc: &'env Proc,
    tids: Vec<i32>,
) -> SeccompWatch<'env> {
    let (tx, rx) = channel();
    scope.spawn(move || {
        for tid in tids {
            let mode = proc.task_status(tid).map(|s| s.seccomp);
            if tx.send((tid, mode)).is_err() {
                break;
            }
        }
    });
    SeccompWatch {
        proc,
        rx,
        early: HashMap::new(),
    }
}

impl SeccompWatch<'_> {
    /// Waits for thread `tid`'s verdict: an error if it runs under seccomp (or its status
    /// cannot be read; any thread's, since each is needed anyway). A tid the helper was not
    /// given is read here and now.
    pub fn check(&mut self, tid: i32) -> Result<(), DumpError> {
        let mode = match self.early.remove(&tid) {
            Some(mode) => mode,
            None => loop {
                match self.rx.recv() {
                    Ok((t, mode)) if t == tid => break mode?,
                    Ok((t, mode)) => {
                        self.early.insert(t, mode?);
                    }
                    Err(_) => break self.proc.task_status(tid)?.seccomp,
                }
            },
        };
        match mode {
            0 => Ok(()),
            mode => Err(DumpError::Seccomp {
                pid: self.proc.pid(),
                tid,
                mode,
            }),
        }
    }
}
