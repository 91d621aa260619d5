//! Files under `/proc/PID/` of a process of the tree (`/proc/self/...` reads as the
//! process's own pid). A restore opens every file in crest before any process of the tree
//! exists, so such a path cannot be opened then; refused at dump, naming pid, fd and path.
//! Files of other processes' `/proc/PID/` and the rest of /proc and /sys are reopened by path
//! (their inode numbers are not stable: the restore checks only their type, see
//! `restore::files`).

use std::collections::HashSet;

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

/// Refuses every fd of the tree open on a `/proc/PID` path of a process of the tree.
pub fn refuse_tree_proc_files(procs: &[CollectedProcess]) -> Result<(), DumpError> {
    let tree: HashSet<i32> = procs.iter().map(|p| p.pid()).collect();
    let mut problems = Vec::new();
    for p in procs {
        for f in &p.fd_table.fds {
            let ident = p.description_file(f.description);
            match proc_pid_of(&ident.path) {
                Some(target) if tree.contains(&target) => problems.push(DumpError::UnsupportedFd {
                    pid: p.pid(),
                    fd: f.fd,
                    what: format!(
                        "{} (a /proc file of process {target} of the dumped tree, or \
                             /proc/self): a restore opens files before the processes exist, so \
                             crest cannot reopen it",
                        ident.path
                    ),
                }),
                _ => {}
            }
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
    }
}
