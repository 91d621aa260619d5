//! Bringing back the pipes an image records ([`Pipe`]), in crest, before the fork: the child
//! inherits the descriptors and moves them to their fd numbers like any open file.
//!
//! Every open file description of a pipe is opened anew through a `/proc/PID/fd/N` link to
//! that pipe: opening a pipe's magic link gives a new description of the same pipe with the
//! access mode asked for (fs/pipe.c, fifo_open; for a pipefs inode it never waits for the
//! other end). So any number of read and write descriptions come back, each with its own
//! status flags.
//! - Internal: crest creates a fresh pipe, sizes it (F_SETPIPE_SZ), writes the buffered bytes
//!   into it, and opens every description through `/proc/self/fd/N`; its own two ends are then
//!   dropped.
//! - External: some live process still holding the same pipe inode lends it
//!   (`/proc/PID/fd/N`). When none does, the pipe is gone and cannot be reconnected.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::images::{FileIdentity, OpenFileDescription, Pipe};

use super::RestoreError;

/// The pipes of a tree, created or found once each, keyed by their inode at dump time.
#[derive(Default)]
pub struct Pipes {
    /// Where each pipe can be opened again: `/proc/PID/fd/N`. Internal pipes also keep the
    /// fresh pipe's read end alive here until every description is open.
    sources: HashMap<(u64, u64), (String, Option<OwnedFd>)>,
    /// The two ends pipe2 made for an internal pipe, until a description takes each: a
    /// description opened through /proc has O_LARGEFILE, which the ends of a program's own
    /// pipe(2) do not have (and F_SETFL cannot clear).
    ends: HashMap<(u64, u64), [Option<OwnedFd>; 2]>,
}

impl Pipes {
    /// A new descriptor (close-on-exec) for the description `ofd` of the pipe `ident`; `fds`
    /// names the fds that use it, for the error.
    pub fn open(
        &mut self,
        ident: &FileIdentity,
        pipe: &Pipe,
        ofd: &OpenFileDescription,
        fds: &str,
    ) -> Result<OwnedFd, RestoreError> {
        if let Pipe::Internal { size, buffered } = pipe {
            let key = (ident.dev, ident.ino);
            if let Entry::Vacant(e) = self.sources.entry(key) {
                let (read, write) = fresh(ident.ino, *size, buffered)?;
                let spare = read.try_clone().map_err(|e| RestoreError::Os {
                    what: format!("{fds}: duplicating pipe inode {}", ident.ino),
                    source: e,
                })?;
                let link = format!("/proc/self/fd/{}", read.as_raw_fd());
                e.insert((link, Some(read)));
                self.ends.insert(key, [Some(spare), Some(write)]);
            }
            if let Some(end) = self.own_end(key, ofd, ident.ino, fds)? {
                return Ok(end);
            }
        }
        self.reopen_source(ident, ofd, fds, || match pipe {
            Pipe::Internal { .. } => unreachable!("an internal pipe's source is made above"),
            Pipe::External => {
                let (pid, fd) = crate::proc::find_pipe_holder(ident.ino).ok_or_else(|| {
                    RestoreError::Unsupported(format!(
                        "{fds} was one end of pipe inode {} whose other end another \
                         process held; no process holds that pipe any more, so it cannot \
                         be reconnected (keep its reader or writer running until the \
                         restore)",
                        ident.ino
                    ))
                })?;
                Ok((format!("/proc/{pid}/fd/{fd}"), None))
            }
        })
    }

    /// One of the ends pipe2 made for the internal pipe `key`, when `ofd` is a read-only or
    /// write-only description without O_LARGEFILE (one of a program's own pipe(2) ends) and
    /// that end is still free, with `ofd`'s O_NONBLOCK and O_DIRECT.
    fn own_end(
        &mut self,
        key: (u64, u64),
        ofd: &OpenFileDescription,
        ino: u64,
        fds: &str,
    ) -> Result<Option<OwnedFd>, RestoreError> {
        let flags = ofd.flags as i32;
        let slot = match flags & libc::O_ACCMODE {
            libc::O_RDONLY => 0,
            libc::O_WRONLY => 1,
            _ => return Ok(None),
        };
        if flags & crate::arch::KERNEL_O_LARGEFILE != 0 {
            return Ok(None);
        }
        let Some(end) = self.ends.get_mut(&key).and_then(|e| e[slot].take()) else {
            return Ok(None);
        };
        let status = flags & (libc::O_NONBLOCK | libc::O_DIRECT);
        // SAFETY: F_SETFL on a descriptor we own changes only its status flags.
        if status != 0 && unsafe { libc::fcntl(end.as_raw_fd(), libc::F_SETFL, status) } < 0 {
            return Err(RestoreError::Os {
                what: format!("{fds}: setting the status flags of pipe inode {ino}"),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Some(end))
    }

    /// A new descriptor for `ofd` through the source of pipe `ident`, found by `make` (a link
    /// to open and what keeps it alive) the first time.
    fn reopen_source(
        &mut self,
        ident: &FileIdentity,
        ofd: &OpenFileDescription,
        fds: &str,
        make: impl FnOnce() -> Result<(String, Option<OwnedFd>), RestoreError>,
    ) -> Result<OwnedFd, RestoreError> {
        let (link, _) = match self.sources.entry((ident.dev, ident.ino)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(make()?),
        };
        reopen(link, ofd.flags, ident.ino, fds)
    }
}

impl Pipes {
    /// A new descriptor (close-on-exec) for the description `ofd` of the named FIFO `ident`
    /// ([`crate::images::FileKind::Fifo`]); `fds` names the fds that use it, for the error.
    /// The first description of a FIFO opens its path: crest keeps a read-write, non-blocking
    /// open of it (so no description waits for the other end, and the pipe outlives the gap
    /// between descriptions), puts an internal FIFO's buffer back, and every description is a
    /// new open of it through `/proc/self/fd/N` with its own access mode and flags.
    pub fn open_fifo(
        &mut self,
        ident: &FileIdentity,
        pipe: &Pipe,
        ofd: &OpenFileDescription,
        fds: &str,
    ) -> Result<OwnedFd, RestoreError> {
        self.reopen_source(ident, ofd, fds, || {
            let keeper = open_fifo_path(&ident.path, fds)?;
            if let Pipe::Internal { size, buffered } = pipe {
                refill(&keeper, &ident.path, *size, buffered)?;
            }
            Ok((
                format!("/proc/self/fd/{}", keeper.as_raw_fd()),
                Some(keeper),
            ))
        })
    }
}

impl Pipes {
    /// A new descriptor for the description `ofd` of the deleted FIFO `ident`
    /// ([`crate::images::FileKind::DeletedFifo`]): the first one makes the FIFO again
    /// ([`recreate_fifo`]), puts its buffer back, and keeps it open; then as [`Pipes::open_fifo`].
    pub fn open_deleted_fifo(
        &mut self,
        ident: &FileIdentity,
        pipe: &Pipe,
        owner: (u32, u32),
        ofd: &OpenFileDescription,
        fds: &str,
    ) -> Result<OwnedFd, RestoreError> {
        self.reopen_source(ident, ofd, fds, || {
            let keeper = recreate_fifo(&ident.path, ident.mode, owner, fds)?;
            if let Pipe::Internal { size, buffered } = pipe {
                refill(&keeper, &ident.path, *size, buffered)?;
            }
            Ok((
                format!("/proc/self/fd/{}", keeper.as_raw_fd()),
                Some(keeper),
            ))
        })
    }
}

/// A new FIFO in the directory of `path` (under `path` itself when that name is free, so the
/// fd links show `PATH (deleted)` as before; else under a temporary name), with `mode`'s
/// permissions and `owner`, opened read-write and non-blocking, and removed again.
fn recreate_fifo(
    path: &str,
    mode: u32,
    owner: (u32, u32),
    fds: &str,
) -> Result<OwnedFd, RestoreError> {
    let fail = |problem: String| RestoreError::File {
        path: path.to_string(),
        problem: format!("({fds}, a deleted FIFO at dump time) {problem}"),
    };
    let (name, dir) =
        crate::files::remake_name(std::path::Path::new(path), "fifo").map_err(fail)?;
    let cname = CString::new(name.to_string_lossy().as_bytes())
        .map_err(|_| RestoreError::BadImage(format!("FIFO path {path:?} has a NUL byte")))?;
    // SAFETY: cname is NUL-terminated; mknod creates one FIFO there or fails.
    if unsafe { libc::mknod(cname.as_ptr(), libc::S_IFIFO | 0o600, 0) } < 0 {
        return Err(fail(format!(
            "cannot be made again in {}: mknod: {}",
            dir.display(),
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: cname is NUL-terminated; the FIFO was just made; a read-write open never waits.
    let raw = unsafe {
        libc::open(
            cname.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    let opened = if raw < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        // SAFETY: raw is a fresh descriptor we own.
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    };
    // SAFETY: cname is NUL-terminated; this removes the FIFO made above, whatever happened.
    let removed = unsafe { libc::unlink(cname.as_ptr()) };
    let fd = opened.map_err(|e| fail(format!("cannot be opened once made again: {e}")))?;
    if removed < 0 {
        return Err(fail(format!(
            "cannot be removed again once made: unlink: {}",
            std::io::Error::last_os_error()
        )));
    }
    // Owner first: a chown clears set-id bits that the mode then puts back.
    // SAFETY: fchown on a descriptor we own changes only that inode.
    let owned = unsafe { libc::fchown(fd.as_raw_fd(), owner.0, owner.1) } == 0;
    // SAFETY: fchmod on a descriptor we own changes only that inode.
    if !owned || unsafe { libc::fchmod(fd.as_raw_fd(), mode & 0o7777) } < 0 {
        return Err(fail(format!(
            "cannot be given its owner {}:{} and mode {:o}: {}",
            owner.0,
            owner.1,
            mode & 0o7777,
            std::io::Error::last_os_error()
        )));
    }
    Ok(fd)
}

/// crest's read-write, non-blocking open of the FIFO at `path`, which must still be a FIFO
/// (checked on an O_PATH descriptor first, so nothing else is ever opened for writing).
fn open_fifo_path(path: &str, fds: &str) -> Result<OwnedFd, RestoreError> {
    let fail = |problem: String| RestoreError::File {
        path: path.to_string(),
        problem: format!("({fds}, a FIFO at dump time) {problem}"),
    };
    let cpath = CString::new(path)
        .map_err(|_| RestoreError::BadImage(format!("FIFO path {path:?} has a NUL byte")))?;
    // SAFETY: cpath is NUL-terminated; an O_PATH open has no other preconditions or effects.
    let raw = unsafe { libc::open(cpath.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if raw < 0 {
        let e = std::io::Error::last_os_error();
        return Err(fail(match e.raw_os_error() {
            Some(libc::ENOENT) => "no longer exists, so it cannot be reopened".into(),
            _ => format!("cannot be opened: {e}"),
        }));
    }
    // SAFETY: raw is a fresh descriptor we own.
    let opath = unsafe { OwnedFd::from_raw_fd(raw) };
    let st = nix::sys::stat::fstat(&opath).map_err(|e| fail(format!("cannot be examined: {e}")))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFIFO {
        return Err(fail(format!(
            "is no longer a FIFO (mode {:o}), so it cannot be reopened",
            st.st_mode
        )));
    }
    let link = CString::new(format!("/proc/self/fd/{}", opath.as_raw_fd()))
        .expect("a /proc path has no NUL byte");
    // SAFETY: link is NUL-terminated; open has no other preconditions.
    let raw = unsafe {
        libc::open(
            link.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(fail(format!(
            "cannot be opened: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: raw is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Sizes the FIFO crest holds open (`keeper`) and puts `buffered` back in it. It must be
/// empty: bytes already there were written by a process outside the tree since the dump.
fn refill(keeper: &OwnedFd, path: &str, size: u32, buffered: &[u8]) -> Result<(), RestoreError> {
    let os = |what: String| RestoreError::Os {
        what: format!("restoring the buffer of FIFO {path}: {what}"),
        source: std::io::Error::last_os_error(),
    };
    let mut pending: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the pointer, which points to a live c_int.
    if unsafe { libc::ioctl(keeper.as_raw_fd(), libc::FIONREAD, &mut pending) } < 0 {
        return Err(os("FIONREAD".into()));
    }
    if pending > 0 {
        return Err(RestoreError::File {
            path: path.to_string(),
            problem: format!(
                "is a FIFO that already holds {pending} bytes another process wrote since the \
                 dump; its {} recorded bytes cannot be put back in order",
                buffered.len()
            ),
        });
    }
    // SAFETY: F_SETPIPE_SZ on a descriptor we own only resizes that pipe.
    if unsafe { libc::fcntl(keeper.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) } < 0 {
        return Err(os(format!("F_SETPIPE_SZ {size}")));
    }
    // Non-blocking, but the pipe is as large as the one that held these bytes.
    let mut f = std::fs::File::from(keeper.try_clone().map_err(|e| RestoreError::Os {
        what: format!("restoring the buffer of FIFO {path}: duplicating crest's descriptor"),
        source: e,
    })?);
    f.write_all(buffered).map_err(|e| RestoreError::Os {
        what: format!(
            "restoring the buffer of FIFO {path}: writing its {} bytes",
            buffered.len()
        ),
        source: e,
    })
}

/// A fresh pipe of `size` bytes holding `buffered`: its read and write ends.
fn fresh(ino: u64, size: u32, buffered: &[u8]) -> Result<(OwnedFd, OwnedFd), RestoreError> {
    let os = |what: &str| RestoreError::Os {
        what: format!("recreating pipe inode {ino}: {what}"),
        source: std::io::Error::last_os_error(),
    };
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| RestoreError::Os {
            what: format!("recreating pipe inode {ino}: pipe2"),
            source: e.into(),
        })?;
    // SAFETY: F_SETPIPE_SZ on a descriptor we own only resizes that pipe.
    if unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) } < 0 {
        return Err(os(&format!("F_SETPIPE_SZ {size}")));
    }
    // The pipe is as large as the one that held these bytes, so the (blocking) write never
    // waits for a reader.
    let mut write = std::fs::File::from(write);
    write.write_all(buffered).map_err(|e| RestoreError::Os {
        what: format!(
            "recreating pipe inode {ino}: writing its {} buffered bytes",
            buffered.len()
        ),
        source: e,
    })?;
    Ok((read, write.into()))
}

/// Opens the pipe behind `link` again as a new description with `flags`' access mode and
/// O_NONBLOCK/O_DIRECT (the status flags a pipe description keeps).
fn reopen(link: &str, flags: u32, ino: u64, fds: &str) -> Result<OwnedFd, RestoreError> {
    let keep = libc::O_ACCMODE | libc::O_NONBLOCK | libc::O_DIRECT;
    let flags = (flags as i32 & keep) | libc::O_CLOEXEC;
    let path = CString::new(link).expect("a /proc path has no NUL byte");
    // SAFETY: path is NUL-terminated; open has no other preconditions.
    let raw = unsafe { libc::open(path.as_ptr(), flags) };
    if raw < 0 {
        return Err(RestoreError::Os {
            what: format!("{fds}: opening pipe inode {ino} again through {link}"),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: raw is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::FileKind;
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;

    fn ident(ino: u64, pipe: Pipe) -> FileIdentity {
        FileIdentity {
            path: String::new(),
            kind: FileKind::Pipe(pipe),
            dev: 0,
            ino,
            size: 0,
            mtime_sec: 0,
            mtime_nsec: 0,
            mode: 0,
        }
    }

    fn ofd(flags: i32) -> OpenFileDescription {
        OpenFileDescription {
            id: 0,
            file: 0,
            flags: flags as u32,
            pos: 0,
            locks: vec![],
            owner: None,
        }
    }

    #[test]
    fn a_programs_own_pipe_ends_come_back_without_o_largefile() {
        let pipe = Pipe::Internal {
            size: 1 << 16,
            buffered: vec![],
        };
        let id = ident(2, pipe.clone());
        let mut pipes = Pipes::default();
        let large = crate::arch::KERNEL_O_LARGEFILE;
        let own = pipes
            .open(&id, &pipe, &ofd(libc::O_RDONLY), "fd 3")
            .unwrap();
        let reopened = pipes
            .open(&id, &pipe, &ofd(libc::O_RDONLY | large), "fd 4")
            .unwrap();
        let second = pipes
            .open(&id, &pipe, &ofd(libc::O_RDONLY), "fd 5")
            .unwrap();
        // SAFETY: F_GETFL on descriptors we own.
        let flags = |fd: &OwnedFd| unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(flags(&own) & large, 0);
        assert_eq!(flags(&reopened) & large, large);
        // Only one description can be pipe2's own read end; another is opened again.
        assert_eq!(flags(&second) & large, large);
    }

    #[test]
    fn an_internal_pipe_comes_back_with_its_bytes_size_and_flags() {
        let pipe = Pipe::Internal {
            size: 1 << 16,
            buffered: b"left unread".to_vec(),
        };
        let id = ident(1, pipe.clone());
        let mut pipes = Pipes::default();
        let r = pipes
            .open(&id, &pipe, &ofd(libc::O_RDONLY | libc::O_NONBLOCK), "fd 3")
            .unwrap();
        let w = pipes
            .open(&id, &pipe, &ofd(libc::O_WRONLY), "fd 4")
            .unwrap();
        drop(pipes);
        // SAFETY: F_GETFL/F_GETPIPE_SZ on descriptors we own.
        let (fl, sz) = unsafe {
            (
                libc::fcntl(r.as_raw_fd(), libc::F_GETFL),
                libc::fcntl(r.as_raw_fd(), libc::F_GETPIPE_SZ),
            )
        };
        assert_eq!(fl & libc::O_NONBLOCK, libc::O_NONBLOCK);
        assert_eq!(fl & libc::O_ACCMODE, libc::O_RDONLY);
        assert_eq!(sz, 1 << 16);
        let mut wf = std::fs::File::from(w);
        wf.write_all(b", then more").unwrap();
        drop(wf);
        let mut got = Vec::new();
        std::fs::File::from(r).read_to_end(&mut got).unwrap();
        assert_eq!(got, b"left unread, then more");
    }

    #[test]
    fn a_fifo_is_reopened_by_path_with_its_bytes_or_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fifo");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let mut id = ident(7, Pipe::External);
        id.path = path.to_str().unwrap().into();
        let pipe = Pipe::Internal {
            size: 1 << 16,
            buffered: b"queued".to_vec(),
        };
        id.kind = FileKind::Fifo(pipe.clone());
        let mut pipes = Pipes::default();
        // A blocking read-only open does not wait: crest holds the FIFO open read-write.
        let r = pipes
            .open_fifo(&id, &pipe, &ofd(libc::O_RDONLY), "pid 1 fd 3")
            .unwrap();
        let w = pipes
            .open_fifo(
                &id,
                &pipe,
                &ofd(libc::O_WRONLY | libc::O_NONBLOCK),
                "pid 1 fd 4",
            )
            .unwrap();
        drop(pipes);
        // SAFETY: F_GETFL/F_GETPIPE_SZ on descriptors we own.
        let (fl, sz) = unsafe {
            (
                libc::fcntl(w.as_raw_fd(), libc::F_GETFL),
                libc::fcntl(r.as_raw_fd(), libc::F_GETPIPE_SZ),
            )
        };
        assert_eq!(
            fl & (libc::O_ACCMODE | libc::O_NONBLOCK),
            libc::O_WRONLY | libc::O_NONBLOCK
        );
        assert_eq!(sz, 1 << 16);
        std::fs::File::from(w).write_all(b", more").unwrap();
        let mut got = Vec::new();
        std::fs::File::from(r).read_to_end(&mut got).unwrap();
        assert_eq!(got, b"queued, more");

        // Not a FIFO any more: refused naming it, and never opened for writing.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"keep").unwrap();
        let err = Pipes::default()
            .open_fifo(&id, &pipe, &ofd(libc::O_WRONLY), "pid 1 fd 4")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("fifo") && err.contains("no longer a FIFO"),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"keep");
        std::fs::remove_file(&path).unwrap();
        let err = Pipes::default()
            .open_fifo(&id, &pipe, &ofd(libc::O_WRONLY), "pid 1 fd 4")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no longer exists") && err.contains("fd 4"),
            "{err}"
        );
    }

    #[test]
    fn an_external_pipe_is_reopened_through_its_holder_or_refused() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let ino = std::fs::File::from(r.try_clone().unwrap())
            .metadata()
            .unwrap()
            .ino();
        let id = ident(ino, Pipe::External);
        let mut pipes = Pipes::default();
        let w2 = pipes
            .open(&id, &Pipe::External, &ofd(libc::O_WRONLY), "fd 1")
            .unwrap();
        std::fs::File::from(w2).write_all(b"via proc").unwrap();
        drop(w);
        let mut got = Vec::new();
        std::fs::File::from(r).read_to_end(&mut got).unwrap();
        assert_eq!(got, b"via proc");

        let mut pipes = Pipes::default();
        let err = pipes
            .open(&id, &Pipe::External, &ofd(libc::O_WRONLY), "fd 1")
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("fd 1") && msg.contains(&format!("pipe inode {ino}")),
            "{msg}"
        );
    }
}
