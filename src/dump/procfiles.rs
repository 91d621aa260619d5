//! Files under `/proc/PID/` of a process of the tree (`/proc/self/...` reads as the
//! process's own pid). A restore opens every file in crest before any process of the tree
//! exists, so such a file is marked ([`FileKind::TreeProc`]) and opened again by the restored
//! process that holds it, once the tree's processes exist (`restore::procfiles`). A file of a
//! thread other than the leader (`/proc/PID/task/TID/...`) is refused: the restorer creates
//! the other threads last. Files of other processes' `/proc/PID/` and the rest of /proc and
//! /sys are reopened by path (their inode numbers are not stable: the restore checks only their
//! type, see `restore::files`).

use std::collections::HashSet;

use crate::images::FileKind;

use super::process::CollectedProcess;
use super::DumpError;

/// The pid a `/proc/PID` or `/proc/PID/...` path names, if it names one.
pub fn proc_pid_of(path: &str) -> Option<i32> {
    let rest = path.strip_prefix("/proc/")?;
    let pid = rest.split('/').next()?;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// The thread a `/proc/PID/task/TID...` path names, if it names one.
fn task_of(path: &str, pid: i32) -> Option<i32> {
    let rest = path.strip_prefix(&format!("/proc/{pid}/task/"))?;
    rest.split('/').next()?.parse().ok()
}

/// Marks every file of the tree that is a `/proc/PID` path of a process of the tree as
/// [`FileKind::TreeProc`]; refuses one of a thread other than a leader.
pub fn mark_tree_proc_files(procs: &mut [CollectedProcess]) -> Result<(), DumpError> {
    let tree: HashSet<i32> = procs.iter().map(|p| p.pid()).collect();
    let mut problems = Vec::new();
    for p in procs.iter_mut() {
        let pid = p.pid();
        let mut marked = HashSet::new();
        for f in &p.fd_table.fds {
            let file = p.fd_table.open_files[f.description as usize].file;
            let ident = p.files.get(file);
            let Some(target) = proc_pid_of(&ident.path).filter(|t| tree.contains(t)) else {
                continue;
            };
            if !matches!(ident.kind, FileKind::Regular | FileKind::Directory) {
                continue;
            }
            if let Some(tid) = task_of(&ident.path, target).filter(|&t| t != target) {
                problems.push(DumpError::UnsupportedFd {
                    pid,
                    fd: f.fd,
                    what: format!(
                        "{} (a /proc file of thread {tid} of process {target} of the dumped \
                         tree): the restore creates that thread after the files are opened, so \
                         crest cannot reopen it",
                        ident.path
                    ),
                });
                continue;
            }
            marked.insert((file, target));
        }
        for (file, target) in marked {
            p.files.get_mut(file).kind = FileKind::TreeProc { pid: target };
        }
    }
    DumpError::refused(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_pid_paths_are_recognised() {
        assert_eq!(proc_pid_of("/proc/42/status"), Some(42));
        assert_eq!(proc_pid_of("/proc/42"), Some(42));
        assert_eq!(proc_pid_of("/proc/meminfo"), None);
        assert_eq!(proc_pid_of("/proc/sys/kernel/pid_max"), None);
        assert_eq!(proc_pid_of("/tmp/proc/42"), None);
        assert_eq!(task_of("/proc/42/task/43/stat", 42), Some(43));
        assert_eq!(task_of("/proc/42/task/42", 42), Some(42));
        assert_eq!(task_of("/proc/42/status", 42), None);
    }
}
