//! Named FIFOs of the fd table.
//!
//! A FIFO is a pipe inode with a path: the buffer lives in the kernel while anyone has the
//! FIFO open and is freed with the last opener. Each FIFO is recorded by path (checked to still
//! name the inode the process has open), and once every process of the tree is collected
//! ([`classify`]):
//! - if a process outside the tree also has it open, it is external: its bytes stay in the
//!   pipe that process keeps alive, and the restore just opens the path again;
//! - otherwise its size and buffered bytes are captured without consuming them (the pipe code's
//!   tee, [`super::pipes::capture_from`]) from crest's own descriptor of it: a duplicate of a
//!   read end of the tree (pidfd_getfd), or, when the tree holds only write ends, a new
//!   non-blocking read open of it through `/proc/PID/fd/N` (the process is frozen; the open
//!   only counts one more reader for a moment).

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs::Metadata;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::images::{FileIdentity, FileKind, Pipe};
use crate::sys;

use super::files::{same_inode, FileTable};
use super::process::CollectedProcess;
use super::DumpError;

/// Adds the FIFO `md` that the process has open at `path` (external until [`classify`]).
pub fn add(path: &Path, md: &Metadata, files: &mut FileTable) -> Result<u32, String> {
    let by_path = std::fs::metadata(path).map_err(|e| format!("cannot stat the path: {e}"))?;
    if !same_inode(md, &by_path) {
        return Err(
            "the path now names another file (renamed or replaced), so the FIFO cannot be \
             reopened"
                .into(),
        );
    }
    add_as(path, md, files, FileKind::Fifo(Pipe::External))
}

/// Adds the FIFO `md` whose last name (`path`, without " (deleted)") was removed while the
/// process had it open (external until [`classify`], which refuses it if it stays so).
pub fn add_deleted(path: &Path, md: &Metadata, files: &mut FileTable) -> Result<u32, String> {
    let kind = FileKind::DeletedFifo {
        pipe: Pipe::External,
        uid: md.uid(),
        gid: md.gid(),
    };
    add_as(path, md, files, kind)
}

/// Adds FIFO `md` at the absolute `path` as `kind`, once per inode.
fn add_as(
    path: &Path,
    md: &Metadata,
    files: &mut FileTable,
    kind: FileKind,
) -> Result<u32, String> {
    let shown = path.to_str().ok_or("its path is not valid UTF-8")?;
    if !shown.starts_with('/') {
        return Err("its path is not absolute".into());
    }
    files
        .add_identity(md.dev(), md.ino(), || {
            Ok::<_, String>(FileIdentity {
                path: shown.to_string(),
                kind,
                dev: md.dev(),
                ino: md.ino(),
                size: 0,
                mtime_sec: 0,
                mtime_nsec: 0,
                mode: md.mode(),
            })
        })
        .map_err(|e| e.to_string())
}

/// Where a FIFO is held in the tree: a read end if any, else any end.
#[derive(Default)]
struct Holders {
    reader: Option<(i32, i32)>,
    any: Option<(i32, i32)>,
    path: String,
    /// The owner of a deleted FIFO ([`FileKind::DeletedFifo`]).
    deleted: Option<(u32, u32)>,
}

/// Decides, for every FIFO of the tree, whether it is internal (buffer captured) or external
/// (held outside the tree too), and records it so in every process that holds it.
pub fn classify(procs: &mut [CollectedProcess]) -> Result<(), DumpError> {
    let mut fifos: HashMap<(u64, u64), Holders> = HashMap::new();
    for p in procs.iter() {
        for f in &p.fd_table.fds {
            let ident = p.description_file(f.description);
            let deleted = match ident.kind {
                FileKind::Fifo(_) => None,
                FileKind::DeletedFifo { uid, gid, .. } => Some((uid, gid)),
                _ => continue,
            };
            let h = fifos.entry((ident.dev, ident.ino)).or_default();
            h.path = ident.path.clone();
            h.deleted = deleted;
            let flags = p.fd_table.open_files[f.description as usize].flags as i32;
            if flags & libc::O_ACCMODE != libc::O_WRONLY {
                h.reader = h.reader.or(Some((p.pid(), f.fd)));
            }
            h.any = h.any.or(Some((p.pid(), f.fd)));
        }
    }
    if fifos.is_empty() {
        return Ok(());
    }
    let tree: HashSet<i32> = procs.iter().map(|p| p.pid()).collect();
    for ((dev, ino), h) in fifos {
        let (pid, fd) = h.any.expect("a FIFO of the table has an fd");
        let refuse = |what: String| DumpError::UnsupportedFd {
            pid,
            fd,
            what: format!("the FIFO {} {what}", h.path),
        };
        if let Some((outside, _)) = crate::proc::find_inode_holder(dev, ino, &tree) {
            if h.deleted.is_some() {
                return Err(refuse(format!(
                    "(deleted) that process {outside} outside the tree also holds; crest can \
                     make a deleted FIFO again but not reconnect it to that process"
                )));
            }
            continue;
        }
        let copy = match h.reader {
            Some((rpid, rfd)) => duplicate(rpid, rfd).map_err(&refuse)?,
            None => open_reader(pid, fd).map_err(&refuse)?,
        };
        let pipe = super::pipes::capture_from(copy, &refuse)?;
        let kind = match h.deleted {
            None => FileKind::Fifo(pipe),
            Some((uid, gid)) => FileKind::DeletedFifo { pipe, uid, gid },
        };
        for p in procs.iter_mut() {
            p.files.set_kind_of(dev, ino, kind.clone());
        }
    }
    Ok(())
}

/// crest's duplicate of the process's descriptor `fd` (the same description).
fn duplicate(pid: i32, fd: i32) -> Result<OwnedFd, String> {
    let pidfd = sys::pidfd_open(pid)
        .map_err(|e| format!("whose process cannot be opened as a pidfd ({e})"))?;
    sys::pidfd_getfd(&pidfd, fd).map_err(|e| {
        format!(
            "that crest cannot duplicate to read its buffer (pidfd_getfd: {e}; it needs Linux \
             5.6+ and ptrace access)"
        )
    })
}

/// A new non-blocking read description of the FIFO behind the process's `fd`.
fn open_reader(pid: i32, fd: i32) -> Result<OwnedFd, String> {
    let link = CString::new(format!("/proc/{pid}/fd/{fd}")).expect("no NUL in a /proc path");
    // SAFETY: link is NUL-terminated; open has no other preconditions.
    let raw = unsafe {
        libc::open(
            link.as_ptr(),
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(format!(
            "that crest cannot open for reading its buffer: open: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: raw is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    /// A new FIFO in `dir`, and a read-write open of it.
    fn fifo_in(dir: &Path) -> (std::path::PathBuf, std::fs::File) {
        let p = dir.join("fifo");
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let rw = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        (p, rw)
    }

    #[test]
    fn a_fifo_is_recorded_by_path_and_its_bytes_read_without_consuming_them() {
        let dir = tempfile::tempdir().unwrap();
        let (p, rw) = fifo_in(dir.path());
        let md = rw.metadata().unwrap();
        let mut t = FileTable::default();
        let idx = add(&p, &md, &mut t).unwrap();
        assert_eq!(add(&p, &md, &mut t).unwrap(), idx);
        let ident = t.get(idx);
        assert_eq!(ident.kind, FileKind::Fifo(Pipe::External));
        assert_eq!(ident.path, p.to_str().unwrap());

        (&rw).write_all(b"queued").unwrap();
        // Only a write end here: the buffer is read through a new read open of the FIFO.
        let w = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        let me = std::process::id() as i32;
        let copy = open_reader(me, w.as_raw_fd()).unwrap();
        let refuse = |w: String| DumpError::UnsupportedFd {
            pid: me,
            fd: 0,
            what: w,
        };
        match super::super::pipes::capture_from(copy, &refuse).unwrap() {
            Pipe::Internal { buffered, .. } => assert_eq!(buffered, b"queued"),
            other => panic!("{other:?}"),
        }
        let mut got = [0u8; 6];
        (&rw).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"queued");
    }

    #[test]
    fn a_fifo_whose_path_names_another_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (p, rw) = fifo_in(dir.path());
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, b"x").unwrap();
        let err = add(&p, &rw.metadata().unwrap(), &mut FileTable::default()).unwrap_err();
        assert!(err.contains("another file"), "{err}");
    }
}
