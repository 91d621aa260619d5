//! Everything crest reads from `/proc`, in one place, through the `procfs` crate where it offers
//! the data (fdinfo, auxv words and pagemap are read raw here because procfs either lacks them or
//! loses their order).
//!
//! `/proc/PID/timers` is parsed here too: procfs does not offer it; so are file locks
//! (`/proc/locks`, fdinfo `lock:` lines), which procfs reads without the blocked-waiter marker.
//!
//! A [`Proc`] holds an open `/proc/PID` directory, so every later read refers to the same process
//! even if the pid were reused.

pub mod bench;
mod fds;
mod java;
mod locks;
mod maps;
mod mcast;
mod meminfo;
mod nstid;
mod pagemap;
mod settings;
mod status;
pub mod sysvipc;
mod timens;
mod timers;
mod tree;
mod tty;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

pub use fds::{
    find_inode_holder, find_pipe_holder, EpollLine, EventInfo, FdInfo, FdTarget, InotifyLine,
    OpenFd,
};
pub use locks::{all_locks, parse_lock_line, LockClass, LockLine};
pub use maps::{own_maps, MapEntry, MapName, MapRange};
pub use mcast::{joined_groups, JoinedGroup};
pub use meminfo::mem_available;
pub use nstid::outer_tid;
pub use pagemap::{Pagemap, TouchedPage};
pub use procfs::process::VmFlags;
pub use settings::{
    own_loginuid, own_oom_score_adj, parse_smaps_vmflags, set_own_loginuid, set_own_oom_score_adj,
    PF_IO_FLUSHER,
};
pub use status::{MmStat, Status};
pub use timens::{offset_line, time_offsets, ClockOffsets};
pub use timers::{PosixTimerInfo, SIGEV_NONE, SIGEV_SIGNAL, SIGEV_THREAD, SIGEV_THREAD_ID};
pub use tree::{own_namespace, TreeIds, NAMESPACES};
pub use tty::{tty_drivers, TtyDriver};

/// Errors reading `/proc`.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The process is gone (or never existed).
    #[error("process {pid} does not exist (check the pid with `ps -p {pid}`)")]
    NoSuchProcess { pid: i32 },
    /// A /proc file was not readable by crest.
    #[error("permission denied reading {path}; run crest as root (it needs CAP_SYS_PTRACE and CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN)")]
    PermissionDenied { path: String },
    /// A /proc file could not be read or parsed by procfs.
    #[error("cannot read {path}: {err}")]
    Procfs {
        path: String,
        err: procfs::ProcError,
    },
    /// A /proc file could not be read.
    #[error("cannot read {path}: {err}")]
    Io { path: String, err: std::io::Error },
    /// A /proc file held something crest did not expect.
    #[error("unexpected contents in {path}: {detail}")]
    Parse { path: String, detail: String },
}

impl ProcError {
    fn procfs(pid: i32, what: &str, err: procfs::ProcError) -> ProcError {
        let path = format!("/proc/{pid}/{what}");
        match err {
            procfs::ProcError::PermissionDenied(_) => ProcError::PermissionDenied { path },
            procfs::ProcError::NotFound(_) if !Path::new(&format!("/proc/{pid}")).exists() => {
                ProcError::NoSuchProcess { pid }
            }
            err => ProcError::Procfs { path, err },
        }
    }

    fn io(pid: i32, what: &str, err: std::io::Error) -> ProcError {
        let path = format!("/proc/{pid}/{what}");
        match err.raw_os_error() {
            Some(libc::EACCES) | Some(libc::EPERM) => ProcError::PermissionDenied { path },
            Some(libc::ESRCH) => ProcError::NoSuchProcess { pid },
            Some(libc::ENOENT) if !Path::new(&format!("/proc/{pid}")).exists() => {
                ProcError::NoSuchProcess { pid }
            }
            _ => ProcError::Io { path, err },
        }
    }
}

/// `/proc/sys/kernel/cap_last_cap`: the highest capability number the running kernel knows.
pub fn cap_last_cap() -> Result<u32, ProcError> {
    sysctl_number("/proc/sys/kernel/cap_last_cap")
}

/// `/proc/sys/vm/max_map_count`: the most VMAs one process may have.
pub fn max_map_count() -> Result<u64, ProcError> {
    sysctl_number("/proc/sys/vm/max_map_count")
}

/// A sysctl file holding one number.
fn sysctl_number<T: std::str::FromStr>(path: &str) -> Result<T, ProcError> {
    let text = std::fs::read_to_string(path).map_err(|err| ProcError::Io {
        path: path.into(),
        err,
    })?;
    text.trim().parse().map_err(|_| ProcError::Parse {
        path: path.into(),
        detail: format!("{:?} is not a number", text.trim()),
    })
}

/// Whether `/proc/PID` exists: the pid is in use, by a live process or by a zombie that its
/// parent has not reaped yet.
pub fn pid_in_use(pid: i32) -> bool {
    pid > 0 && Path::new(&format!("/proc/{pid}")).exists()
}

/// An open `/proc/PID` directory.
#[derive(Debug)]
pub struct Proc {
    proc: procfs::process::Process,
    pid: i32,
}

impl Proc {
    /// Opens `/proc/PID`; a pid that does not exist gives [`ProcError::NoSuchProcess`].
    pub fn open(pid: i32) -> Result<Proc, ProcError> {
        if pid <= 0 {
            return Err(ProcError::NoSuchProcess { pid });
        }
        let proc = procfs::process::Process::new(pid).map_err(|e| match e {
            procfs::ProcError::NotFound(_) => ProcError::NoSuchProcess { pid },
            e => ProcError::procfs(pid, "", e),
        })?;
        Ok(Proc { proc, pid })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Thread ids from `/proc/PID/task`, leader first, the rest ascending.
    pub fn tasks(&self) -> Result<Vec<i32>, ProcError> {
        let iter = self
            .proc
            .tasks()
            .map_err(|e| ProcError::procfs(self.pid, "task", e))?;
        let mut tids = Vec::new();
        for task in iter {
            match task {
                Ok(t) => tids.push(t.tid),
                // A thread that exits while we list them is simply no longer there.
                Err(procfs::ProcError::NotFound(_)) => {}
                Err(e) => return Err(ProcError::procfs(self.pid, "task", e)),
            }
        }
        tids.sort_by_key(|&t| (t != self.pid, t));
        Ok(tids)
    }

    /// The raw auxiliary vector as (type, value) words, up to and including AT_NULL.
    /// (procfs offers it as a map, which loses the order a restore must reproduce.)
    pub fn auxv(&self) -> Result<Vec<u64>, ProcError> {
        let mut bytes = Vec::new();
        self.open_file("auxv")?
            .read_to_end(&mut bytes)
            .map_err(|e| ProcError::io(self.pid, "auxv", e))?;
        if bytes.len() % 16 != 0 {
            return Err(ProcError::Parse {
                path: format!("/proc/{}/auxv", self.pid),
                detail: format!(
                    "{} bytes is not a whole number of (type, value) pairs",
                    bytes.len()
                ),
            });
        }
        let mut words: Vec<u64> = bytes
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().expect("chunks_exact(8)")))
            .collect();
        if let Some(end) = words.chunks_exact(2).position(|p| p[0] == libc::AT_NULL) {
            words.truncate(end * 2 + 2);
        } else {
            words.extend_from_slice(&[libc::AT_NULL, 0]);
        }
        Ok(words)
    }

    /// The target of `/proc/PID/exe`.
    pub fn exe(&self) -> Result<PathBuf, ProcError> {
        self.proc
            .exe()
            .map_err(|e| ProcError::procfs(self.pid, "exe", e))
    }

    /// The target of `/proc/PID/cwd`.
    pub fn cwd(&self) -> Result<PathBuf, ProcError> {
        self.proc
            .cwd()
            .map_err(|e| ProcError::procfs(self.pid, "cwd", e))
    }

    /// The target of `/proc/PID/root` (`/` unless the process chrooted or lives in another
    /// mount namespace root).
    pub fn root(&self) -> Result<PathBuf, ProcError> {
        self.proc
            .root()
            .map_err(|e| ProcError::procfs(self.pid, "root", e))
    }

    /// `stat` (following the magic link) of `/proc/PID/<what>`, e.g. `exe`, `cwd` or `fd/3`: the
    /// identity of the file the process has open, even when its path has changed.
    pub fn stat_link(&self, what: &str) -> Result<std::fs::Metadata, ProcError> {
        std::fs::metadata(format!("/proc/{}/{what}", self.pid))
            .map_err(|e| ProcError::io(self.pid, what, e))
    }

    /// The filesystem type (statfs `f_type`, e.g. 0x19800202 for mqueue) of what the link
    /// `/proc/PID/<what>` (an fd or a map_files entry) leads to.
    pub fn link_fs_type(&self, what: &str) -> Result<i64, ProcError> {
        let st = nix::sys::statfs::statfs(format!("/proc/{}/{what}", self.pid).as_str())
            .map_err(|e| ProcError::io(self.pid, what, std::io::Error::from(e)))?;
        Ok(st.filesystem_type().0 as i64)
    }

    /// Opens `/proc/PID/map_files/<start>-<end>`: the exact file (or shmem object) behind a
    /// mapping, deleted or not. Needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN.
    pub fn open_map_file(&self, start: u64, end: u64) -> Result<File, ProcError> {
        self.open_file(&format!("map_files/{start:x}-{end:x}"))
    }

    /// `/proc/PID/mem`, for reading areas process_vm_readv cannot (no PROT_READ): the kernel
    /// reads it with FOLL_FORCE.
    pub fn mem(&self) -> Result<File, ProcError> {
        self.open_file("mem")
    }

    /// `/proc/PID/pagemap`.
    pub fn pagemap(&self) -> Result<Pagemap, ProcError> {
        Ok(Pagemap::new(self.pid, self.open_file("pagemap")?))
    }

    fn open_file(&self, what: &str) -> Result<File, ProcError> {
        self.proc.open_relative(what).map_err(|e| match e {
            procfs::ProcError::Io(io, _) => ProcError::io(self.pid, what, io),
            e => ProcError::procfs(self.pid, what, e),
        })
    }
}

#[cfg(test)]
mod tests;
