//! Thin wrappers for the few syscalls neither std nor nix offers (kcmp, pidfd_open/pidfd_getfd,
//! prlimit on another pid, uname's release string, giving up the controlling terminal).
//!
//! Each wrapper returns the raw [`Errno`]; callers add the context (pid, fd, file) that makes
//! an error actionable.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

use crate::blob::abi::CloneArgs;

/// `kcmp(2)` type comparing two file descriptors' open file descriptions (`KCMP_FILE`).
const KCMP_FILE: libc::c_int = 0;

/// What [`kcmp`] compares between two processes (include/uapi/linux/kcmp.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kcmp {
    /// The address space (CLONE_VM).
    Vm = 1,
    /// The fd table (CLONE_FILES).
    Files = 2,
    /// Root, cwd and umask (CLONE_FS).
    Fs = 3,
}

/// Whether processes `pid1` and `pid2` share the kernel object `kind` names (the fd
/// arguments are unused for these kinds). Needs what [`kcmp_same_file`] needs.
pub fn kcmp(pid1: i32, pid2: i32, kind: Kcmp, a: u64, b: u64) -> Result<bool, Errno> {
    raw_kcmp(pid1, pid2, kind as libc::c_int, a, b)
}

/// Whether fd `fd1` of `pid1` and fd `fd2` of `pid2` refer to the same open file description
/// (what `dup` and `fork` share, with its offset and status flags).
///
/// kcmp needs PTRACE_MODE_READ access to both processes and a kernel built with
/// CONFIG_KCMP (or CONFIG_CHECKPOINT_RESTORE before 5.12); without it the call fails with
/// ENOSYS.
pub fn kcmp_same_file(pid1: i32, pid2: i32, fd1: RawFd, fd2: RawFd) -> Result<bool, Errno> {
    raw_kcmp(pid1, pid2, KCMP_FILE, fd1 as u64, fd2 as u64)
}

/// Whether fd `fd` of `pid` is the file registered in the epoll instance at fd `epfd` of
/// `epoll_pid` as its `toff`-th registration (0 for the first) under the target fd number `tfd`
/// (`KCMP_EPOLL_TFD`, Linux 4.13+). Fails with ENOENT when the epoll has no such registration.
pub fn kcmp_epoll_target(
    pid: i32,
    epoll_pid: i32,
    fd: RawFd,
    epfd: RawFd,
    tfd: RawFd,
    toff: u32,
) -> Result<bool, Errno> {
    /// `struct kcmp_epoll_slot` (include/uapi/linux/kcmp.h).
    #[repr(C)]
    struct Slot {
        efd: u32,
        tfd: u32,
        toff: u32,
    }
    const KCMP_EPOLL_TFD: libc::c_long = 7;
    let slot = Slot {
        efd: epfd as u32,
        tfd: tfd as u32,
        toff,
    };
    // SAFETY: kcmp reads one kcmp_epoll_slot from the pointer, which lives across the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid as libc::c_long,
            epoll_pid as libc::c_long,
            KCMP_EPOLL_TFD,
            fd as libc::c_ulong,
            &slot as *const Slot as libc::c_ulong,
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(r == 0)
}

/// `pidfd_open(pid, flags)`; `flags` may hold PIDFD_NONBLOCK (O_NONBLOCK).
pub fn pidfd_open_flags(pid: i32, flags: u32) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes only integers and returns a new fd or -1.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_open,
            pid as libc::c_long,
            flags as libc::c_long,
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    // SAFETY: r is a fresh descriptor the kernel just gave us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

fn raw_kcmp(pid1: i32, pid2: i32, kind: libc::c_int, a: u64, b: u64) -> Result<bool, Errno> {
    // SAFETY: kcmp takes only integers; KCMP_FILE, VM, FILES and FS read no user memory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid1 as libc::c_long,
            pid2 as libc::c_long,
            kind as libc::c_long,
            a as libc::c_ulong,
            b as libc::c_ulong,
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    // kcmp orders the kernel pointers: 0 means equal, 1/2 less/greater.
    Ok(r == 0)
}

/// `kcmp(2)` type comparing two processes' address spaces (`KCMP_VM`).
const KCMP_VM: libc::c_int = 1;

/// Whether `pid1` and `pid2` share one address space (one `mm`): threads of one process, or a
/// vfork parent and its child until the child calls exec or exits. Same requirements as
/// [`kcmp_same_file`].
pub fn kcmp_same_vm(pid1: i32, pid2: i32) -> Result<bool, Errno> {
    // SAFETY: kcmp takes only integers; KCMP_VM reads no user memory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid1 as libc::c_long,
            pid2 as libc::c_long,
            KCMP_VM as libc::c_long,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(r == 0)
}

/// `pidfd_open(pid, 0)`: a descriptor that refers to exactly this process, immune to pid reuse.
pub fn pidfd_open(pid: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes only integers and returns a new fd or -1.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_long, 0 as libc::c_long) };
    if r < 0 {
        return Err(Errno::last());
    }
    // SAFETY: r is a fresh descriptor the kernel just gave us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// `pidfd_getfd(pidfd, fd, 0)` (5.6+): a duplicate, in this process, of the target's fd `fd`,
/// sharing its open file description. Needs PTRACE_MODE_ATTACH_REALCREDS over the target.
pub fn pidfd_getfd(pidfd: &OwnedFd, fd: RawFd) -> Result<OwnedFd, Errno> {
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_getfd takes only integers and returns a new fd or -1.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_getfd,
            pidfd.as_raw_fd() as libc::c_long,
            fd as libc::c_long,
            0 as libc::c_long,
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    // SAFETY: r is a fresh descriptor the kernel just gave us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// Number of resource limits the kernel knows (`RLIM_NLIMITS`: RLIMIT_CPU 0 .. RLIMIT_RTTIME 15).
pub const RLIMIT_COUNT: u32 = 16;

/// Soft and hard limit of `resource` for process `pid`, via `prlimit64(pid, resource, NULL, &old)`.
/// RLIM_INFINITY reads as `u64::MAX`.
pub fn get_rlimit(pid: i32, resource: u32) -> Result<(u64, u64), Errno> {
    let mut old = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `old` is a valid, writable rlimit64; the new-limit pointer is NULL (read only).
    let r = unsafe {
        libc::prlimit64(
            pid,
            resource as libc::__rlimit_resource_t,
            std::ptr::null(),
            &mut old,
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok((old.rlim_cur, old.rlim_max))
}

/// `uname -r`: the running kernel's release string.
pub fn kernel_release() -> Result<String, Errno> {
    // SAFETY: utsname is plain old data; all-zero is a valid value.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a valid, writable utsname.
    if unsafe { libc::uname(&mut uts) } < 0 {
        return Err(Errno::last());
    }
    let bytes: Vec<u8> = uts
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Forks this process like fork() (no shared memory, `exit_signal` to the parent) with clone3 and
/// `set_tid`, so that the child gets pid `pid` (Linux 5.5+; needs CAP_CHECKPOINT_RESTORE or
/// CAP_SYS_ADMIN over the pid namespace). Returns 0 in the child and the child's pid in the
/// parent. EEXIST means the pid is taken.
///
/// # Safety
/// As with a raw fork: glibc's fork handlers do not run, so the child must not rely on glibc's
/// cached thread id (no raise(), no pthread calls) and the caller must be single-threaded, or
/// the child must only call async-signal-safe functions.
pub unsafe fn clone3_with_pid(pid: i32, exit_signal: i32) -> Result<i32, Errno> {
    // SAFETY: the caller's contract is this function's.
    unsafe { clone3_with_pid_flags(pid, exit_signal, 0) }
}

/// As [`clone3_with_pid`], with extra clone `flags` (e.g. CLONE_FILES).
///
/// # Safety
/// As [`clone3_with_pid`].
pub unsafe fn clone3_with_pid_flags(pid: i32, exit_signal: i32, flags: u64) -> Result<i32, Errno> {
    let tids: [libc::pid_t; 1] = [pid];
    let args = CloneArgs {
        flags,
        exit_signal: exit_signal as u64,
        set_tid: tids.as_ptr() as u64,
        set_tid_size: 1,
        ..CloneArgs::default()
    };
    // SAFETY: tids outlives the call (set_tid points into it); the rest is the caller's.
    unsafe { clone3(&args) }
}

/// Forks like fork() with extra clone `flags` (e.g. CLONE_NEWPID|CLONE_NEWNS) and
/// `exit_signal` to the parent, through clone3. Returns 0 in the child.
///
/// # Safety
/// As [`clone3_with_pid`].
pub unsafe fn clone3_flags(flags: u64, exit_signal: i32) -> Result<i32, Errno> {
    let args = CloneArgs {
        flags,
        exit_signal: exit_signal as u64,
        ..CloneArgs::default()
    };
    // SAFETY: as the caller's contract says.
    unsafe { clone3(&args) }
}

/// # Safety
/// As [`clone3_with_pid`]; every pointer in `args` must be valid for the call.
unsafe fn clone3(args: &CloneArgs) -> Result<i32, Errno> {
    // SAFETY: args outlives the call; the fork-like semantics are the caller's contract.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(r as i32)
    }
}

/// Makes the calling process drop its controlling terminal (`TIOCNOTTY`), staying in its
/// session and process group; nothing happens without one. Only async-signal-safe calls (open,
/// ioctl, close), so a freshly forked child or a `pre_exec` closure may call it: the tests use
/// it so the processes they dump are not attached to the terminal the tests run on (a dump
/// refuses those without --shell-job).
pub fn give_up_controlling_terminal() {
    // SAFETY: open(2) of a constant NUL-terminated path; the fd is ours and closed below.
    let tty = unsafe {
        libc::open(
            c"/dev/tty".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if tty < 0 {
        return; // ENXIO: no controlling terminal to give up
    }
    // SAFETY: TIOCNOTTY takes no argument; for a process that leads no session it clears only
    // this process's controlling terminal.
    unsafe {
        libc::ioctl(tty, libc::TIOCNOTTY);
        libc::close(tty);
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (and the threads it starts): crest
/// must not die of a ^C or a hang-up while a restored tree still needs it (a lazy page server);
/// the signals stay pending and are forwarded to the tree once crest waits for it.
pub fn block_termination_signals() {
    let mut mask = nix::sys::signal::SigSet::empty();
    for sig in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGHUP,
    ] {
        mask.add(sig);
    }
    let _ = mask.thread_block();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn kcmp_tells_dup_from_separate_open() {
        let me = std::process::id() as i32;
        let a = std::fs::File::open("/proc/self/status").unwrap();
        let b = std::fs::File::open("/proc/self/status").unwrap();
        let a2 = nix::unistd::dup(&a).unwrap();
        assert!(kcmp_same_file(me, me, a.as_raw_fd(), a2.as_raw_fd()).unwrap());
        assert!(!kcmp_same_file(me, me, a.as_raw_fd(), b.as_raw_fd()).unwrap());
    }

    #[test]
    fn pidfd_getfd_shares_the_description() {
        let me = std::process::id() as i32;
        let f = std::fs::File::open("/proc/self/status").unwrap();
        let pidfd = pidfd_open(me).unwrap();
        let copy = pidfd_getfd(&pidfd, f.as_raw_fd()).unwrap();
        assert!(kcmp_same_file(me, me, f.as_raw_fd(), copy.as_raw_fd()).unwrap());
    }

    #[test]
    fn rlimit_of_self_matches_getrlimit() {
        let me = std::process::id() as i32;
        let (soft, hard) = get_rlimit(me, libc::RLIMIT_NOFILE).unwrap();
        let (s2, h2) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!((soft, hard), (s2, h2));
        assert_eq!(get_rlimit(me, 99), Err(Errno::EINVAL));
    }

    #[test]
    fn kernel_release_is_not_empty() {
        let r = kernel_release().unwrap();
        assert!(r.chars().next().unwrap().is_ascii_digit(), "{r}");
    }
}
