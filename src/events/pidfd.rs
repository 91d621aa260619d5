//! pidfds, both sides.
//!
//! Dump: a pidfd names a process (fdinfo `Pid:`); it is kept when that process is the holder
//! itself, one of its ancestors or one of its live children in the tree, since exactly those
//! exist when the restored holder installs its fds (its parent forked it, and it forks its
//! children first). Refused: a pidfd of a process outside the tree or of another process of
//! it, of a process that has exited, and a thread pidfd (PIDFD_THREAD).
//!
//! Restore: the restored holder opens it itself with pidfd_open(pid, flags) before it installs
//! its fds (crest's own descriptor for the description is a placeholder, never installed).
//! Each process opens its own: a pidfd description inherited across fork becomes one per
//! process (they share nothing but O_NONBLOCK).

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::images::{FileIdentity, FileKind, ProcessImage};

/// PIDFD_THREAD (Linux 6.9): the pidfd names a thread, not a process; it shows as O_EXCL.
const PIDFD_THREAD: u32 = libc::O_EXCL as u32;

/// The image's record of a pidfd of process `pid` with status flags `flags`, or the refusal.
pub fn identity(pid: Option<i32>, flags: u32, dev: u64, ino: u64) -> Result<FileIdentity, String> {
    let pid = match pid {
        Some(p) if p > 0 => p,
        _ => {
            return Err(
                "a pidfd of a process that has exited and been reaped; crest cannot \
                        make one again"
                    .into(),
            )
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

/// Whether process `holder` (parent `holder_ppid`) can get back a pidfd of `target`, given the
/// live processes of the tree as (pid, ppid); the refusal otherwise.
pub fn check_target(holder: i32, target: i32, tree: &[(i32, i32)]) -> Result<(), String> {
    let parent_of = |p: i32| tree.iter().find(|t| t.0 == p).map(|t| t.1);
    if target == holder || parent_of(target) == Some(holder) {
        return Ok(());
    }
    let mut p = holder;
    while let Some(pp) = parent_of(p) {
        if pp == target {
            return Ok(());
        }
        p = pp;
    }
    if parent_of(target).is_some() {
        Err(format!(
            "a pidfd of process {target} of the tree, which is neither the process itself, \
             one of its ancestors nor one of its children; crest restores only those yet"
        ))
    } else {
        Err(format!(
            "a pidfd of process {target}, which is not a live process of the dumped tree; \
             dump a tree that includes it, or close the pidfd first"
        ))
    }
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
        let flags = d.flags & libc::O_NONBLOCK as u32;
        let fd = crate::sys::pidfd_open_flags(*pid, flags)
            .map_err(|e| format!("cannot open a pidfd of process {pid} (pidfd_open): {e}"))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidfds_of_self_ancestors_and_children_are_kept() {
        // 10 -> 11 -> 12, 10 -> 13
        let tree = [(10, 1), (11, 10), (12, 11), (13, 10)];
        for (holder, target) in [(11, 11), (12, 10), (12, 11), (10, 11), (10, 13)] {
            check_target(holder, target, &tree).unwrap();
        }
        let cousin = check_target(12, 13, &tree).unwrap_err();
        assert!(cousin.contains("process 13 of the tree"), "{cousin}");
        let grandchild = check_target(10, 12, &tree).unwrap_err();
        assert!(grandchild.contains("neither"), "{grandchild}");
        let outside = check_target(10, 99, &tree).unwrap_err();
        assert!(outside.contains("not a live process"), "{outside}");
    }

    #[test]
    fn exited_and_thread_pidfds_are_refused() {
        assert!(identity(Some(-1), 0, 0, 0).unwrap_err().contains("exited"));
        assert!(identity(Some(5), PIDFD_THREAD, 0, 0)
            .unwrap_err()
            .contains("PIDFD_THREAD"));
        assert_eq!(
            identity(Some(5), 0, 1, 2).unwrap().kind,
            FileKind::Pidfd { pid: 5 }
        );
    }
}
