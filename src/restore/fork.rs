//! Forking a task with a chosen pid: clone3 with set_tid (Linux 5.5+, needs
//! CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN over the pid namespace).

use super::RestoreError;

/// `struct clone_args` (include/uapi/linux/sched.h), all u64, version 2 (with cgroup): 88 bytes.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Which side of the fork we are on.
pub enum Forked {
    Child,
    Parent { pid: i32 },
}

/// Forks this process (no shared memory, like fork()) so that the child gets pid `pid`.
///
/// The child is a plain copy of crest on its copy of the stack, like after fork(); glibc's fork
/// handlers do not run, so the child must not rely on glibc's cached thread id (it never calls
/// raise() or pthread functions) and must leave through the restorer or `_exit`.
pub fn fork_with_pid(pid: i32) -> Result<Forked, RestoreError> {
    let tids = [pid as libc::pid_t];
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: tids.as_ptr() as u64,
        set_tid_size: 1,
        ..CloneArgs::default()
    };
    // SAFETY: args and tids outlive the call; without CLONE_VM the child gets a copy of our
    // memory and stack, exactly as with fork(), and crest is single-threaded here.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if r < 0 {
        let err = std::io::Error::last_os_error();
        return Err(match err.raw_os_error() {
            Some(libc::EEXIST) => RestoreError::PidTaken { pid },
            Some(libc::EPERM) => RestoreError::Privilege(format!(
                "clone3 with set_tid refused (EPERM) for pid {pid}: restore needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN"
            )),
            _ => RestoreError::Os { what: format!("clone3 with set_tid {pid}"), source: err },
        });
    }
    if r == 0 {
        return Ok(Forked::Child);
    }
    if r as i32 != pid {
        // Cannot happen with set_tid; never continue with a task under another pid.
        // SAFETY: r is our child; kill and reap it.
        unsafe {
            libc::kill(r as i32, libc::SIGKILL);
            libc::waitpid(r as i32, std::ptr::null_mut(), 0);
        }
        return Err(RestoreError::Internal(format!(
            "clone3 gave pid {r} instead of {pid}"
        )));
    }
    Ok(Forked::Parent { pid })
}

/// True when some task (process, thread or zombie) holds `pid`.
pub fn pid_in_use(pid: i32) -> bool {
    // kill(pid, 0) succeeds for any live task or zombie we may signal, and fails with EPERM for
    // one we may not: both mean the pid is taken. Only ESRCH means it is free.
    // SAFETY: signal 0 sends nothing; kill has no memory-safety preconditions.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}
