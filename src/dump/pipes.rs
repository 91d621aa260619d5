//! Pipes of the fd table.
//!
//! A pipe whose read and write ends are both held by the process is recorded whole: its size
//! and the bytes buffered in it. Those bytes are captured without consuming them: crest takes
//! its own duplicate of the read end (pidfd_getfd: the same description) and `tee(2)`s it into
//! a private pipe of the same size — tee duplicates pipe buffers by reference and leaves the
//! source untouched — then reads the private pipe.
//!
//! A pipe of which the process holds only one end (its stdout read by a shell or a test) is
//! recorded as external: the restore reopens the same pipe through whichever process still
//! holds it. Bytes buffered in such a pipe are not captured: they are the peer's, and they are
//! still in the kernel's pipe, which outlives the dumped process as long as the peer holds it.

use std::fs::Metadata;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use crate::images::{FileIdentity, FileKind, Pipe, PIPE_SIZE_MAX};
use crate::sys;

use super::DumpError;

/// A pipe identity whose kind is decided once every fd has been seen ([`capture`]).
pub fn identity(md: &Metadata) -> FileIdentity {
    crate::files::object_identity(
        String::new(),
        FileKind::Pipe(Pipe::External),
        md.dev(),
        md.ino(),
    )
}

/// Whether the other end of the pipe behind the process's `fd` (its read end when `reader`,
/// else its write end) is closed everywhere: poll reports POLLHUP on a read end once the pipe
/// has no writer left, POLLERR on a write end once it has no reader (fs/pipe.c `pipe_poll`).
/// Exact, unlike a search of other processes' fds.
pub fn widowed(pid: i32, fd: i32, ino: u64, reader: bool) -> Result<bool, DumpError> {
    let copy = duplicate(pid, fd, ino)?;
    let mut pfd = libc::pollfd {
        fd: copy.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: poll reads and writes the one pollfd it is given; timeout 0 never blocks.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    if n < 0 {
        return Err(DumpError::UnsupportedFd {
            pid,
            fd,
            what: format!(
                "a pipe (inode {ino}) whose other end cannot be checked: poll: {}",
                std::io::Error::last_os_error()
            ),
        });
    }
    let gone = if reader { libc::POLLHUP } else { libc::POLLERR };
    Ok(pfd.revents & gone != 0)
}

/// The size of the pipe behind the process's write end `fd` whose readers are all gone: no
/// byte in it can ever be read, so none is kept.
pub fn capture_size(pid: i32, fd: i32, ino: u64) -> Result<Pipe, DumpError> {
    let copy = duplicate(pid, fd, ino)?;
    // SAFETY: F_GETPIPE_SZ on a valid descriptor only returns an integer.
    let size = unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_GETPIPE_SZ) };
    if size <= 0 || size as u32 > PIPE_SIZE_MAX {
        return Err(DumpError::UnsupportedFd {
            pid,
            fd,
            what: format!("a pipe (inode {ino}) of unexpected size {size}"),
        });
    }
    Ok(Pipe::Internal {
        size: size as u32,
        buffered: Vec::new(),
    })
}

/// crest's own duplicate of the process's pipe descriptor `fd` (the same description).
fn duplicate(pid: i32, fd: i32, ino: u64) -> Result<OwnedFd, DumpError> {
    let refuse = |what: String| DumpError::UnsupportedFd {
        pid,
        fd,
        what: format!("a pipe (inode {ino}) {what}"),
    };
    let pidfd = sys::pidfd_open(pid)
        .map_err(|e| refuse(format!("whose process cannot be opened as a pidfd ({e})")))?;
    sys::pidfd_getfd(&pidfd, fd).map_err(|e| {
        refuse(format!(
            "that crest cannot duplicate (pidfd_getfd: {e}; it needs Linux 5.6+ and ptrace \
             access)"
        ))
    })
}

/// The size and buffered bytes of the pipe behind the process's read end `fd`, left in place.
pub fn capture(pid: i32, fd: i32, ino: u64) -> Result<Pipe, DumpError> {
    let refuse = |what: String| DumpError::UnsupportedFd {
        pid,
        fd,
        what: format!("a pipe (inode {ino}) {what}"),
    };
    let pidfd = sys::pidfd_open(pid)
        .map_err(|e| refuse(format!("whose process cannot be opened as a pidfd ({e})")))?;
    let copy = sys::pidfd_getfd(&pidfd, fd).map_err(|e| {
        refuse(format!(
            "that crest cannot duplicate to read its buffer (pidfd_getfd: {e}; it needs Linux \
             5.6+ and ptrace access)"
        ))
    })?;
    capture_from(copy, &refuse)
}

/// The size and buffered bytes of the pipe (or FIFO) behind `copy`, crest's own readable
/// descriptor of it, left in place; `refuse` words an error about it.
pub fn capture_from(
    copy: OwnedFd,
    refuse: &dyn Fn(String) -> DumpError,
) -> Result<Pipe, DumpError> {
    let os = |what: &str| {
        let e = std::io::Error::last_os_error();
        refuse(format!("whose buffer cannot be read: {what}: {e}"))
    };
    // SAFETY: F_GETPIPE_SZ on a valid descriptor only returns an integer.
    let size = unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_GETPIPE_SZ) };
    if size <= 0 {
        return Err(os("F_GETPIPE_SZ"));
    }
    if size as u32 > PIPE_SIZE_MAX {
        return Err(refuse(format!(
            "of {size} bytes; crest stores pipes of at most {PIPE_SIZE_MAX}"
        )));
    }
    let mut pending: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the pointer, which points to a live c_int.
    if unsafe { libc::ioctl(copy.as_raw_fd(), libc::FIONREAD, &mut pending) } < 0 {
        return Err(os("FIONREAD"));
    }
    let mut buffered = Vec::with_capacity(pending as usize);
    if pending > 0 {
        let (priv_r, priv_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| refuse(format!("whose buffer cannot be copied: pipe2: {e}")))?;
        // As many slots as the source: tee fills at most one slot per source buffer.
        // SAFETY: F_SETPIPE_SZ on a descriptor we own only resizes that pipe.
        if unsafe { libc::fcntl(priv_w.as_raw_fd(), libc::F_SETPIPE_SZ, size) } < 0 {
            return Err(os("F_SETPIPE_SZ on crest's copy"));
        }
        // SAFETY: tee takes two descriptors and integers; the process is frozen, so nobody
        // reads or writes the source meanwhile. SPLICE_F_NONBLOCK: never wait on either pipe.
        let n = unsafe {
            libc::tee(
                copy.as_raw_fd(),
                priv_w.as_raw_fd(),
                pending as usize,
                libc::SPLICE_F_NONBLOCK,
            )
        };
        if n < 0 {
            return Err(os("tee"));
        }
        if n != pending as isize {
            return Err(refuse(format!(
                "holding {pending} bytes of which tee copied only {n}"
            )));
        }
        drop(priv_w);
        std::fs::File::from(priv_r)
            .read_to_end(&mut buffered)
            .map_err(|e| refuse(format!("whose buffer cannot be read back: {e}")))?;
    }
    drop::<OwnedFd>(copy);
    Ok(Pipe::Internal {
        size: size as u32,
        buffered,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn buffered_bytes_are_captured_and_left_in_the_pipe() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut wf = std::fs::File::from(w);
        wf.write_all(b"first ").unwrap();
        wf.write_all(b"second").unwrap();
        let ino = nix::sys::stat::fstat(&r).unwrap().st_ino;
        let pid = std::process::id() as i32;
        let got = capture(pid, r.as_raw_fd(), ino).unwrap();
        match got {
            Pipe::Internal { size, buffered } => {
                assert!(size >= 4096, "{size}");
                assert_eq!(buffered, b"first second");
            }
            other => panic!("{other:?}"),
        }
        drop(wf);
        let mut left = Vec::new();
        std::fs::File::from(r).read_to_end(&mut left).unwrap();
        assert_eq!(left, b"first second");
    }

    #[test]
    fn an_empty_pipe_has_nothing_buffered() {
        let (r, _w) = nix::unistd::pipe().unwrap();
        let ino = nix::sys::stat::fstat(&r).unwrap().st_ino;
        let got = capture(std::process::id() as i32, r.as_raw_fd(), ino).unwrap();
        assert!(matches!(got, Pipe::Internal { buffered, .. } if buffered.is_empty()));
    }
}
