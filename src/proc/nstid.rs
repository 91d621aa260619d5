//! Finding a thread of a process by its id in the process's own (innermost) pid namespace: the
//! CRaC engine ([`crate::crac`]) signals the thread that called the engine, known by the tid it
//! had at dump time, in a tree restored into a new pid namespace.

use super::ProcError;

/// The tid, as crest's pid namespace sees it, of the thread of process `pid` whose innermost
/// tid is `inner` (the last field of `NSpid:` in `/proc/PID/task/TID/status`); None when no
/// thread of the process has it.
pub fn outer_tid(pid: i32, inner: i32) -> Result<Option<i32>, ProcError> {
    let proc = procfs::process::Process::new(pid).map_err(|e| ProcError::procfs(pid, "", e))?;
    let tasks = proc
        .tasks()
        .map_err(|e| ProcError::procfs(pid, "task", e))?;
    for task in tasks.flatten() {
        let Ok(status) = task.status() else {
            continue; // the thread ended meanwhile
        };
        let innermost = status.nspid.as_ref().and_then(|ids| ids.last().copied());
        if innermost.unwrap_or(task.tid) == inner {
            return Ok(Some(task.tid));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_thread_is_found_by_its_tid() {
        let pid = std::process::id() as i32;
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        assert_eq!(super::outer_tid(pid, tid).unwrap(), Some(tid));
        assert_eq!(super::outer_tid(pid, i32::MAX).unwrap(), None);
    }
}
