//! A process's place in its tree (`/proc/PID/stat`: parent, process group, session, terminal,
//! exit signal and code), its children (`/proc/PID/task/TID/children` of every thread) and its
//! namespaces (`/proc/PID/ns/*`).

use super::{Proc, ProcError};

/// What `/proc/PID/stat` says about a process's place in the tree. Ids are as crest's pid
/// namespace sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeIds {
    pub pid: i32,
    /// State letter (R, S, D, T, t, Z, X, ...).
    pub state: char,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// Device number of the controlling terminal (0: none).
    pub tty_nr: i32,
    /// Foreground process group of the controlling terminal (-1: none).
    pub tpgid: i32,
    /// Signal sent to the parent when the process ends (SIGCHLD for a plain fork).
    pub exit_signal: i32,
    /// The wait status the parent will see (meaningful for a zombie).
    pub exit_code: i32,
    pub comm: String,
}

/// The namespaces a dump requires to be crest's own, as named in `/proc/PID/ns`.
pub const NAMESPACES: [&str; 8] = crate::images::NAMESPACE_TYPES;

impl Proc {
    /// The process's ids from `/proc/PID/stat`.
    pub fn tree_ids(&self) -> Result<TreeIds, ProcError> {
        let s = self
            .proc
            .stat()
            .map_err(|e| ProcError::procfs(self.pid, "stat", e))?;
        Ok(TreeIds {
            pid: self.pid,
            state: s.state,
            ppid: s.ppid,
            pgid: s.pgrp,
            sid: s.session,
            tty_nr: s.tty_nr,
            tpgid: s.tpgid,
            exit_signal: s.exit_signal.unwrap_or(libc::SIGCHLD),
            exit_code: s.exit_code.unwrap_or(0),
            comm: s.comm,
        })
    }

    /// The children of every thread of the process (`/proc/PID/task/TID/children`), ascending.
    /// Exact only while the process cannot fork: frozen, or a zombie.
    pub fn children(&self) -> Result<Vec<i32>, ProcError> {
        let mut out = Vec::new();
        for tid in self.tasks()? {
            let what = format!("task/{tid}/children");
            let task = match self.proc.task_from_tid(tid) {
                Ok(t) => t,
                // A thread that ended meanwhile has no children to report.
                Err(procfs::ProcError::NotFound(_)) => continue,
                Err(e) => return Err(ProcError::procfs(self.pid, &what, e)),
            };
            match task.children() {
                Ok(kids) => out.extend(kids.into_iter().map(|k| k as i32)),
                Err(procfs::ProcError::NotFound(_)) => continue,
                Err(e) => return Err(ProcError::procfs(self.pid, &what, e)),
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// The inode of namespace `ns` (one of [`NAMESPACES`]), `None` when the kernel lacks it.
    pub fn namespace(&self, ns: &str) -> Result<Option<u64>, ProcError> {
        namespace_inode(&format!("/proc/{}/ns/{ns}", self.pid))
            .map_err(|e| ProcError::io(self.pid, &format!("ns/{ns}"), e))
    }
}

/// The inode of crest's own namespace `ns`, `None` when the kernel lacks it.
pub fn own_namespace(ns: &str) -> Option<u64> {
    namespace_inode(&format!("/proc/self/ns/{ns}"))
        .ok()
        .flatten()
}

fn namespace_inode(path: &str) -> Result<Option<u64>, std::io::Error> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(m.ino())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_listed_and_its_ids_read() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let me = Proc::open(std::process::id() as i32).unwrap();
        let kids = me.children().unwrap();
        assert!(kids.contains(&(child.id() as i32)), "{kids:?}");
        let ids = Proc::open(child.id() as i32).unwrap().tree_ids().unwrap();
        assert_eq!(ids.ppid, std::process::id() as i32);
        assert_eq!(ids.exit_signal, libc::SIGCHLD);
        // SAFETY: getpgrp/getsid cannot fail for the calling process.
        let (pgid, sid) = unsafe { (libc::getpgrp(), libc::getsid(0)) };
        assert_eq!((ids.pgid, ids.sid), (pgid, sid));
        for ns in NAMESPACES {
            assert_eq!(
                Proc::open(child.id() as i32)
                    .unwrap()
                    .namespace(ns)
                    .unwrap(),
                own_namespace(ns),
                "{ns}"
            );
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
