//! pidfds, both sides.
//!
//! Dump: a pidfd names a process (fdinfo `Pid:`); it is kept when that process is one of the
//! tree (the holder itself or any other, zombies included). A pidfd of a process that has
//! exited and been reaped (fdinfo `Pid: -1`) is kept too, as pid -1. Refused: a pidfd of a
//! process outside the tree, and a thread pidfd (PIDFD_THREAD).
//!
//! Restore: the restored holder opens it itself with pidfd_open(pid, flags) before it installs
//! its fds (crest's own descriptor for the description is a placeholder, never installed).
//! Its ancestors and itself exist by then, and so do its children (forked first); any other
//! process of the tree is being forked by its own parent at the same time, so the holder
//! waits for it to appear ([`TARGET_WAIT`]): no task's fork waits for another's fds.
//! Each process opens its own: a pidfd description inherited across fork becomes one per
//! process (they share nothing but O_NONBLOCK).
//!
//! A pidfd of a reaped process names nobody: any process that is gone will do. crest makes one
//! per pidfs inode of the image (a child that exits at once, opened with pidfd_open and
//! reaped), so pidfds that named the same dead process share an inode again and those of
//! different ones do not; each further description of that inode is opened again through
//! `/proc/self/fd`. Signals to it fail with ESRCH, as they did.
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::images::{FileIdentity, FileKind, ProcessImage};

/// PIDFD_THREAD (Linux 6.9): the pidfd names a thread, not a process; it shows as O_EXCL.
const PIDFD_THREAD: u32 = libc::O_EXCL as u32;

/// `FileKind::Pidfd`'s pid for a process that has exited and been reaped.
pub const DEAD: i32 = -1;

/// How long a restored holder waits for another process of the tree to be forked.
const TARGET_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The image's record of a pidfd of process `pid` with status flags `flags`, or the refusal.
pub fn identity(pid: Option<i32>, flags: u32, dev: u64, ino: u64) -> Result<FileIdentity, String> {
    let pid = match pid {
        Some(p) if p > 0 || p == DEAD => p,
        Some(0) => {
            return Err(
                "a pidfd of a process in a pid namespace crest cannot see (fdinfo Pid: 0)".into(),
            )
        }
        _ => {
            return Err("a pidfd whose process the kernel does not name (no Pid in fdinfo)".into())
        }
    };
    if flags & PIDFD_THREAD != 0 {
        return Err(format!(
            "a pidfd of thread {pid} (PIDFD_THREAD), which crest cannot restore yet"
        ));
    }
    Ok(crate::files::object_identity(
        "anon_inode:[pidfd]".into(),
        FileKind::Pidfd { pid },
        dev,
        ino,
    ))
}

/// Whether a restored process can get back a pidfd of `target` (any process of the tree, or a
/// reaped one), given the live processes of the tree as (pid, ppid); the refusal otherwise.
pub fn check_target(target: i32, tree: &[(i32, i32)]) -> Result<(), String> {
    if target == DEAD {
        return Ok(());
    }
    if tree.iter().any(|t| t.0 == target) {
        return Ok(());
    }
    Err(format!(
        "a pidfd of process {target}, which is not a live process of the dumped tree; \
         dump a tree that includes it, or close the pidfd first"
    ))
}

/// A stand-in for a pidfd description in crest: a pidfd of crest itself, which the restored
/// task replaces ([`open_in_task`]) before it installs its fds.
pub fn placeholder() -> Result<OwnedFd, std::io::Error> {
    crate::sys::pidfd_open(std::process::id() as i32).map_err(std::io::Error::from)
}

/// In a restored task, before its fds are installed: a pidfd for each pidfd description of
/// `p`, by description index, numbered at `base` or above.
pub fn open_in_task(p: &ProcessImage, base: RawFd) -> Result<HashMap<u32, OwnedFd>, String> {
    let mut out = HashMap::new();
    for (i, d) in p.open_files.iter().enumerate() {
        let Some(FileKind::Pidfd { pid }) = p.files.get(d.file as usize).map(|f| &f.kind) else {
            continue;
        };
        // Made by crest already ([`dead`]): installed as it is.
        if *pid == DEAD {
            continue;
        }
        let flags = d.flags & libc::O_NONBLOCK as u32;
        let start = std::time::Instant::now();
        let fd = loop {
            match crate::sys::pidfd_open_flags(*pid, flags) {
                // Another process of the tree, not forked yet by its parent.
                Err(nix::errno::Errno::ESRCH) if start.elapsed() < TARGET_WAIT => {
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
                Err(e) => {
                    return Err(format!(
                        "cannot open a pidfd of process {pid} (pidfd_open): {e}"
                    ))
                }
                Ok(fd) => break fd,
            }
        };
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own.
        let moved = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, base) };
        if moved < 0 {
            return Err(format!(
                "cannot move a pidfd above fd {base}: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: moved is a new descriptor we own.
        out.insert(i as u32, unsafe { OwnedFd::from_raw_fd(moved) });
    }
    Ok(out)
}

/// One pidfd per dead process of the image, by pidfs inode at dump time: the source each
/// description of that inode is opened again from.
static DEAD_PIDFDS: std::sync::Mutex<Option<HashMap<u64, OwnedFd>>> = std::sync::Mutex::new(None);

/// A new description of a pidfd of a process that has exited and been reaped, the same process
/// for every `ino` (the pidfs inode it had at dump time), with O_NONBLOCK from `flags`.
pub fn dead(ino: u64, flags: u32) -> std::io::Result<OwnedFd> {
    let mut cache = DEAD_PIDFDS.lock().unwrap_or_else(|e| e.into_inner());
    let cache = cache.get_or_insert_with(HashMap::new);
    let source = match cache.entry(ino) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => e.insert(exited_pidfd()?),
    };
    let path = std::ffi::CString::new(format!("/proc/self/fd/{}", source.as_raw_fd()))
        .expect("no NUL in a number");
    let mode = libc::O_RDWR | libc::O_CLOEXEC | (flags as i32 & libc::O_NONBLOCK);
    // SAFETY: path is a valid C string; open returns a new descriptor or -1.
    let raw = unsafe { libc::open(path.as_ptr(), mode) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: raw is a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// A pidfd of a child of crest's that exited at once and has been reaped. Made with clone3,
/// CLONE_PIDFD and no exit signal: nobody's waitpid(-1) can reap it before crest opened it.
fn exited_pidfd() -> std::io::Result<OwnedFd> {
    const CLONE_PIDFD: u64 = 0x1000;
    const P_PIDFD: libc::idtype_t = 3;
    let mut pidfd: libc::c_int = -1;
    // struct clone_args (11 u64 fields): flags, pidfd, child_tid, parent_tid, exit_signal,
    // stack, stack_size, tls, set_tid, set_tid_size, cgroup.
    let mut args = [0u64; 11];
    args[0] = CLONE_PIDFD;
    args[1] = &mut pidfd as *mut libc::c_int as u64;
    // SAFETY: clone3 without CLONE_VM copies crest like fork(); the child only calls _exit,
    // which is async-signal-safe even in a multithreaded parent.
    let child = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            args.as_mut_ptr(),
            std::mem::size_of_val(&args),
        )
    };
    if child < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if child == 0 {
        // SAFETY: _exit ends the child at once, running nothing of the parent's.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: the kernel wrote a new descriptor we own into pidfd.
    let fd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    loop {
        // SAFETY: siginfo_t is plain old data; all-zero is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on our own child's pidfd, info is valid for writes.
        let r = unsafe {
            libc::waitid(
                P_PIDFD,
                fd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::__WALL,
            )
        };
        if r == 0 {
            return Ok(fd);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidfds_of_any_process_of_the_tree_are_kept() {
        // 10 -> 11 -> 12, 10 -> 13
        let tree = [(10, 1), (11, 10), (12, 11), (13, 10)];
        for target in [10, 11, 12, 13] {
            check_target(target, &tree).unwrap();
        }
        let outside = check_target(99, &tree).unwrap_err();
        assert!(outside.contains("not a live process"), "{outside}");
    }

    #[test]
    fn pidfds_of_dead_processes_share_an_inode_exactly_when_they_did() {
        let kept = identity(Some(-1), 0, 1, 2).unwrap();
        assert_eq!(kept.kind, FileKind::Pidfd { pid: DEAD });
        check_target(DEAD, &[(10, 1)]).unwrap();
        let ino = |fd: &OwnedFd| nix::sys::stat::fstat(fd).unwrap().st_ino;
        let (a1, a2) = (dead(1001, 0).unwrap(), dead(1001, 0).unwrap());
        let b = dead(1002, libc::O_NONBLOCK as u32).unwrap();
        assert_eq!(ino(&a1), ino(&a2));
        assert_ne!(ino(&a1), ino(&b));
        assert_ne!(a1.as_raw_fd(), a2.as_raw_fd());
        for fd in [&a1, &a2, &b] {
            let info =
                std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).unwrap();
            assert!(info.contains("Pid:\t-1"), "{info}");
            // SAFETY: pidfd_send_signal with signal 0 and no siginfo.
            let r =
                unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), 0, 0usize, 0) };
            assert_eq!(
                (r, std::io::Error::last_os_error().raw_os_error()),
                (-1, Some(libc::ESRCH))
            );
        }
        // SAFETY: F_GETFL on a descriptor we own.
        let fl = unsafe { libc::fcntl(b.as_raw_fd(), libc::F_GETFL) };
        assert_ne!(fl & libc::O_NONBLOCK, 0);
    }

    #[test]
    fn pid_namespace_and_thread_pidfds_are_refused() {
        assert!(identity(Some(0), 0, 0, 0)
            .unwrap_err()
            .contains("namespace"));
        assert!(identity(Some(5), PIDFD_THREAD, 0, 0)
            .unwrap_err()
            .contains("PIDFD_THREAD"));
        assert_eq!(
            identity(Some(5), 0, 1, 2).unwrap().kind,
            FileKind::Pidfd { pid: 5 }
        );
    }
}
