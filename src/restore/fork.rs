//! Forking the task that becomes the restored process, under its original pid.

use std::time::{Duration, Instant};

use nix::errno::Errno;

use super::RestoreError;

/// How long a restore waits for a pid held only by a zombie. The dumped process was killed
/// but its parent has not reaped it yet; an init that reaps orphans lazily can take seconds.
const ZOMBIE_WAIT: Duration = Duration::from_secs(15);

/// Which side of the fork we are on.
pub enum Forked {
    Child,
    Parent,
}

/// Forks crest so that the child gets pid `pid` (clone3 with set_tid), and its parent gets
/// `exit_signal` when it ends.
///
/// The child is a plain copy of crest, like after fork(); it must leave through the restorer or
/// `_exit` (see [`crate::sys::clone3_with_pid`]). crest is single-threaded on this path.
pub fn fork_with_pid(pid: i32, exit_signal: i32) -> Result<Forked, RestoreError> {
    fork_with_pid_flags(pid, exit_signal, 0)
}

/// As [`fork_with_pid`], with extra clone `flags` (CLONE_FILES for a shared fd table).
pub fn fork_with_pid_flags(pid: i32, exit_signal: i32, flags: u64) -> Result<Forked, RestoreError> {
    // SAFETY: the caller is single-threaded here (crest, or a task forking its children), and
    // the child only runs restore::spawn, which ends in the restorer or _exit; with
    // CLONE_FILES it shares the fd table of a task that installs it for both.
    match unsafe { crate::sys::clone3_with_pid_flags(pid, exit_signal, flags) } {
        Ok(0) => Ok(Forked::Child),
        Ok(got) if got == pid => Ok(Forked::Parent),
        Ok(got) => {
            // Cannot happen with set_tid; never go on with a task under another pid.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(got), nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(got), None);
            Err(RestoreError::Internal(format!("clone3 gave pid {got} instead of {pid}")))
        }
        Err(Errno::EEXIST) => Err(RestoreError::PidTaken { pid }),
        Err(Errno::EPERM) => Err(RestoreError::Privilege(format!(
            "clone3 with set_tid refused (EPERM) for pid {pid}: restore needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN"
        ))),
        Err(e) => Err(RestoreError::Os { what: format!("clone3 with set_tid {pid}"), source: e.into() }),
    }
}

/// Makes sure `pid` is free. A live process holding it is an error at once; a zombie (the
/// dumped process, killed, not yet reaped by its parent) is waited for, up to [`ZOMBIE_WAIT`].
pub fn wait_until_pid_free(pid: i32) -> Result<(), RestoreError> {
    let deadline = Instant::now() + ZOMBIE_WAIT;
    let mut told = false;
    while crate::proc::pid_in_use(pid) {
        let state = crate::proc::Proc::open(pid)
            .and_then(|p| p.status())
            .map(|s| s.state);
        let dying = match state {
            // Gone between the two looks: free now.
            Err(crate::proc::ProcError::NoSuchProcess { .. }) => return Ok(()),
            // A zombie, or a task being reaped right now ('X', or its /proc files failing
            // while the directory still shows): the pid frees itself once the parent waits.
            Ok('Z') | Ok('X') | Err(_) => true,
            Ok(_) => false,
        };
        if !dying {
            return Err(RestoreError::PidTaken { pid });
        }
        if Instant::now() >= deadline {
            // A status that stays unreadable is not known to be a zombie.
            return Err(match state {
                Ok('Z') => RestoreError::PidHeldByZombie {
                    pid,
                    waited: ZOMBIE_WAIT.as_secs(),
                },
                _ => RestoreError::PidTaken { pid },
            });
        }
        if !told && matches!(state, Ok('Z')) {
            // Said whatever the verbosity: the restore may sit here for seconds.
            crate::warn!(
                "pid {pid} is still held by a zombie (the dumped process, dead but not yet \
                 reaped by its parent); waiting up to {} s for it to be reaped",
                ZOMBIE_WAIT.as_secs()
            );
            told = true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}
