//! The fd table, the cwd and the exe.
//!
//! Regular files, directories and character devices are recorded by path and checked by
//! identity; AF_UNIX sockets are recorded for a restore to recreate ([`super::sockets`]),
//! pipes with their buffered bytes or as shared with another process ([`super::pipes`]). Fds that share one open file description (dup, inheritance) must come back
//! sharing it — same offset, same O_APPEND — so they are grouped: candidates have the same
//! (dev, ino), and kcmp(KCMP_FILE) tells whether two of them are one description.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::images::{Fd, OpenFileDescription};
use crate::proc::{FdTarget, OpenFd, Proc};
use crate::sys;

use super::files::{same_inode, FileTable};
use super::pipes;
use super::problems::Problems;
use super::sockets::Sockets;
use super::DumpError;

/// O_CLOEXEC as fdinfo shows it (the kernel adds it to `flags:` for an fd with FD_CLOEXEC).
const O_CLOEXEC: u32 = libc::O_CLOEXEC as u32;

/// The process's open file descriptions and fds.
#[derive(Debug, Default)]
pub struct FdTable {
    pub open_files: Vec<OpenFileDescription>,
    pub fds: Vec<Fd>,
}

fn refuse(pid: i32, fd: i32, what: String) -> DumpError {
    DumpError::UnsupportedFd { pid, fd, what }
}

/// Reads every fd of the stopped process. Every fd crest cannot dump is named, all of them in
/// one refusal.
pub fn collect(proc: &Proc, files: &mut FileTable) -> Result<FdTable, DumpError> {
    let mut table = FdTable::default();
    // (dev, ino) -> descriptions of that inode seen so far, with one fd holding each.
    let mut by_inode: HashMap<(u64, u64), Vec<(u32, i32)>> = HashMap::new();
    let mut sockets = Sockets::new(proc.pid());
    let mut problems = Problems::new();
    for entry in proc.fds()? {
        let added = add_fd(proc, &entry, files, &mut sockets, &mut by_inode, &mut table);
        problems.take(added)?;
    }
    problems.finish()?;
    // Whether each pipe is whole in the tree is decided once every process is collected
    // (shared.rs); until then it is recorded as external.
    Ok(table)
}

/// Records one fd (`entry`) in `table`, grouping it with the fds of the same description.
fn add_fd(
    proc: &Proc,
    entry: &OpenFd,
    files: &mut FileTable,
    sockets: &mut Sockets,
    by_inode: &mut HashMap<(u64, u64), Vec<(u32, i32)>>,
    table: &mut FdTable,
) -> Result<(), DumpError> {
    let pid = proc.pid();
    let fd = entry.fd;
    let path = match &entry.target {
        FdTarget::Path {
            path,
            deleted: false,
        } => Some(path.clone()),
        FdTarget::Path {
            path,
            deleted: true,
        } => {
            return Err(refuse(
                pid,
                fd,
                format!(
                    "a deleted file ({}), which cannot be reopened",
                    path.display()
                ),
            ))
        }
        FdTarget::Socket(_) | FdTarget::Pipe(_) => None,
        FdTarget::AnonInode(kind) => {
            return Err(refuse(pid, fd, format!("an anonymous inode ({kind})")))
        }
        FdTarget::Memfd(name) => return Err(refuse(pid, fd, format!("a memfd ({name})"))),
        FdTarget::Other(link) => {
            return Err(refuse(
                pid,
                fd,
                format!("of a kind crest cannot restore ({link})"),
            ))
        }
    };
    let md = proc.stat_link(&format!("fd/{fd}"))?;
    let idx = match path {
        Some(path) => add_checked(&path, &md, files)
            .map_err(|why| refuse(pid, fd, format!("{}: {why}", path.display())))?,
        // Shared by dup'ed fds like any file: one entry per pipe inode; which end a
        // description is, is its access mode.
        None if matches!(entry.target, FdTarget::Pipe(_)) => {
            files.add_identity(md.dev(), md.ino(), || {
                Ok::<_, DumpError>(pipes::identity(&md))
            })?
        }
        // Shared by dup'ed fds like any file: one entry per socket inode.
        None => files.add_identity(md.dev(), md.ino(), || sockets.record(fd, &md))?,
    };
    let info = proc.fdinfo(fd)?;
    let cloexec = info.flags & O_CLOEXEC != 0;

    let key = (md.dev(), md.ino());
    let mut description = None;
    for &(desc, other_fd) in by_inode.get(&key).into_iter().flatten() {
        let same =
            sys::kcmp_same_file(pid, pid, other_fd, fd).map_err(|errno| DumpError::Kcmp {
                pid,
                fd1: other_fd,
                fd2: fd,
                errno,
            })?;
        if same {
            description = Some(desc);
            break;
        }
    }
    let description = match description {
        Some(d) => d,
        None => {
            let d = table.open_files.len() as u32;
            table.open_files.push(OpenFileDescription {
                // Tree-wide ids are given once every process is collected (shared.rs).
                id: 0,
                file: idx,
                flags: info.flags & !O_CLOEXEC,
                pos: info.pos,
            });
            by_inode.entry(key).or_default().push((d, fd));
            d
        }
    };
    table.fds.push(Fd {
        fd,
        description,
        cloexec,
    });
    Ok(())
}

impl FdTable {
    /// One fd of the process that uses description `d`.
    pub fn holder(&self, d: u32) -> i32 {
        self.fds
            .iter()
            .find(|f| f.description == d)
            .map(|f| f.fd)
            .expect("every description has an fd")
    }
}

/// Adds a file that a restore will reopen by `path`, after checking that `path` still names
/// the inode the process has open (`md`).
fn add_checked(path: &Path, md: &std::fs::Metadata, files: &mut FileTable) -> Result<u32, String> {
    let by_path = std::fs::metadata(path).map_err(|e| format!("cannot stat the path: {e}"))?;
    if !same_inode(md, &by_path) {
        return Err(
            "the path now names another file (renamed or replaced), so it cannot be reopened"
                .into(),
        );
    }
    files.add(path, md).map_err(|why| why.to_string())
}

/// Records `/proc/PID/cwd`, which must be a directory still reachable by its path.
pub fn cwd(proc: &Proc, files: &mut FileTable) -> Result<u32, DumpError> {
    let pid = proc.pid();
    let path = proc.cwd()?;
    let md = proc.stat_link("cwd")?;
    let refuse = |why: String| DumpError::Cwd {
        pid,
        path: path.display().to_string(),
        why,
    };
    if !md.is_dir() {
        return Err(refuse("it is not a directory".into()));
    }
    add_checked(&path, &md, files).map_err(refuse)
}

/// Records `/proc/PID/exe`, which must be a regular file still reachable by its path.
pub fn exe(proc: &Proc, files: &mut FileTable) -> Result<u32, DumpError> {
    let pid = proc.pid();
    let path = proc.exe()?;
    let md = proc.stat_link("exe")?;
    let refuse = |why: String| DumpError::Exe {
        pid,
        path: path.display().to_string(),
        why,
    };
    let shown = path.to_string_lossy();
    if shown.ends_with(" (deleted)") {
        return Err(refuse("the executable has been deleted".into()));
    }
    let idx = add_checked(&path, &md, files).map_err(refuse)?;
    if !md.is_file() {
        return Err(refuse("it is not a regular file".into()));
    }
    Ok(idx)
}
