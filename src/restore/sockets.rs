//! Recreating the AF_UNIX sockets an image records ([`UnixSocketState`]), in crest, before the
//! fork: the child inherits them and moves them to their fd numbers like any open file.
//!
//! - Unconnected: socket(2).
//! - Peer closed: socketpair(2); the other end writes what the old peer had left unread, then
//!   is closed — the kernel then shuts the survivor down in both directions exactly as it did
//!   the original (net/unix/af_unix.c, unix_release_sock).
//! - Listening: a stale socket file at the path (left by the dumped process, which was killed)
//!   is removed — only a socket file, and only when nobody listens on it — then the socket is
//!   bound, given the recorded permissions before anyone can connect, and put to listen with
//!   the recorded backlog. A thread that was blocked in accept(2) on it re-enters accept on the
//!   new socket (the syscall restarts).

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;

use crate::images::{FileIdentity, UnixSocket, UnixSocketState};

use super::RestoreError;

/// Creates the socket `s` (`ident` holds its path and mode) with the file status flags
/// `status_flags` of its open file description. The descriptor is close-on-exec.
pub fn create(
    ident: &FileIdentity,
    s: &UnixSocket,
    status_flags: u32,
    pairs: &mut Pairs,
) -> Result<OwnedFd, RestoreError> {
    let ty = s.sock_type as i32;
    let sock = match &s.state {
        UnixSocketState::Unconnected => socket(ty)?,
        UnixSocketState::PeerClosed { queued } => peer_closed(ty, queued)?,
        UnixSocketState::Connected { peer, queued } => pairs.end(ty, ident.ino, *peer, queued)?,
        UnixSocketState::Listening { backlog, removed } => {
            listening(ty, &ident.path, ident.mode, *backlog, *removed)?
        }
    };
    if status_flags as i32 & libc::O_NONBLOCK != 0 {
        // SAFETY: F_SETFL on a descriptor we own.
        if unsafe { libc::fcntl(sock.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } < 0 {
            return Err(os("making a UNIX socket non-blocking"));
        }
    }
    Ok(sock)
}

/// The socket pairs of a tree, made once for both ends: when the first end of a pair is
/// created, the other end waits here (with a way to queue what it had unread) for its own
/// description.
#[derive(Default)]
pub struct Pairs {
    /// By the waiting end's inode at dump time: that end, and a descriptor of the end already
    /// handed out, through which the waiting end's unread bytes are sent.
    waiting: HashMap<u64, (OwnedFd, OwnedFd)>,
}

impl Pairs {
    /// The end `ino` of the pair it forms with `peer`; `queued` is what it had not read.
    fn end(
        &mut self,
        ty: i32,
        ino: u64,
        peer: u64,
        queued: &[u8],
    ) -> Result<OwnedFd, RestoreError> {
        if let Some((mine, other)) = self.waiting.remove(&ino) {
            send_all(&other, queued)?;
            return Ok(mine);
        }
        let (mine, theirs) = pair(ty)?;
        send_all(&theirs, queued)?;
        let sender = mine.try_clone().map_err(|e| RestoreError::Os {
            what: "duplicating one end of a UNIX socket pair".into(),
            source: e,
        })?;
        self.waiting.insert(peer, (theirs, sender));
        Ok(mine)
    }

    /// Ends whose peer never came: the image named a peer no process holds.
    pub fn check_complete(&self) -> Result<(), RestoreError> {
        match self.waiting.keys().next() {
            None => Ok(()),
            Some(ino) => Err(RestoreError::BadImage(format!(
                "a UNIX socket is connected to socket inode {ino}, which no process of the image \
                 holds"
            ))),
        }
    }
}

fn pair(ty: i32) -> Result<(OwnedFd, OwnedFd), RestoreError> {
    let mut pair = [-1; 2];
    // SAFETY: pair has room for the two descriptors socketpair writes.
    if unsafe { libc::socketpair(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0, pair.as_mut_ptr()) } < 0
    {
        return Err(os(&format!("creating a UNIX socket pair of type {ty}")));
    }
    // SAFETY: both are fresh descriptors we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) })
}

/// Sends `bytes` through `sock`, all of them (the pair's buffer holds what it held before).
fn send_all(sock: &OwnedFd, bytes: &[u8]) -> Result<(), RestoreError> {
    let mut sent = 0;
    while sent < bytes.len() {
        let rest = &bytes[sent..];
        // SAFETY: rest is a readable slice; MSG_NOSIGNAL keeps a failure from raising SIGPIPE.
        let n = unsafe {
            libc::send(
                sock.as_raw_fd(),
                rest.as_ptr().cast(),
                rest.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(os(&format!(
                "queueing the {} unread bytes of a UNIX socket (after {sent})",
                bytes.len()
            )));
        }
        sent += n as usize;
    }
    Ok(())
}

fn os(what: &str) -> RestoreError {
    RestoreError::Os {
        what: what.to_string(),
        source: std::io::Error::last_os_error(),
    }
}

fn socket(ty: i32) -> Result<OwnedFd, RestoreError> {
    // SAFETY: socket(2) takes only integers.
    let raw = unsafe { libc::socket(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(os(&format!("creating a UNIX socket of type {ty}")));
    }
    // SAFETY: raw is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// One end of a fresh pair whose other end sent `queued` and was closed.
fn peer_closed(ty: i32, queued: &[u8]) -> Result<OwnedFd, RestoreError> {
    let (keep, other) = pair(ty)?;
    send_all(&other, queued)?;
    drop(other);
    Ok(keep)
}

/// `sockaddr_un` for `path` and its length.
fn address(path: &str) -> Result<(libc::sockaddr_un, libc::socklen_t), RestoreError> {
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_bytes();
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(RestoreError::BadImage(format!(
            "socket path {path:?} does not fit a UNIX socket address"
        )));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

fn listening(
    ty: i32,
    path: &str,
    mode: u32,
    backlog: u32,
    removed: bool,
) -> Result<OwnedFd, RestoreError> {
    let (addr, len) = address(path)?;
    remove_stale(ty, path, &addr, len)?;
    let sock = socket(ty)?;
    // SAFETY: addr is a valid sockaddr_un of `len` bytes.
    let r = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    if r < 0 {
        return Err(RestoreError::File {
            path: path.to_string(),
            problem: format!(
                "cannot be bound by a UNIX socket: {}",
                std::io::Error::last_os_error()
            ),
        });
    }
    let cpath = CString::new(path).expect("checked in address()");
    // Permissions before listen: until then a connect is refused, so no one gets in through a
    // more permissive mode in between.
    // SAFETY: cpath is a valid C string.
    if unsafe { libc::chmod(cpath.as_ptr(), mode & 0o7777) } < 0 {
        return Err(RestoreError::File {
            path: path.to_string(),
            problem: format!(
                "cannot be given mode {:o}: {}",
                mode & 0o7777,
                std::io::Error::last_os_error()
            ),
        });
    }
    let backlog = backlog.min(i32::MAX as u32) as i32;
    // SAFETY: listen on a bound socket we own.
    if unsafe { libc::listen(sock.as_raw_fd(), backlog) } < 0 {
        return Err(os(&format!("listening on {path}")));
    }
    if removed {
        // It had been removed when the process was dumped; it is ours (just bound): remove it
        // again so the socket is as unreachable by name as it was.
        // SAFETY: cpath is a valid C string.
        if unsafe { libc::unlink(cpath.as_ptr()) } < 0 {
            return Err(os(&format!("removing the socket file {path} again")));
        }
    }
    Ok(sock)
}

/// Removes a socket file at `path` that nobody listens on (what a killed process leaves). A
/// path that is not a socket, or a socket someone listens on, is left alone and refused.
fn remove_stale(
    ty: i32,
    path: &str,
    addr: &libc::sockaddr_un,
    len: libc::socklen_t,
) -> Result<(), RestoreError> {
    let refuse = |problem: String| RestoreError::File {
        path: path.to_string(),
        problem,
    };
    let md = match std::fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(refuse(format!("cannot be examined: {e}"))),
    };
    if !md.file_type().is_socket() {
        return Err(refuse(
            "exists and is not a socket; the restored process's listening socket needs that \
             path, and crest replaces only a stale socket file there"
                .into(),
        ));
    }
    // A listener accepts the connection (or has a full queue); a stale file refuses it.
    // SAFETY: socket(2) takes only integers.
    let raw = unsafe {
        libc::socket(
            libc::AF_UNIX,
            ty | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if raw < 0 {
        return Err(os("creating a UNIX socket to probe a socket file"));
    }
    // SAFETY: raw is a fresh descriptor we own.
    let probe = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: addr is a valid sockaddr_un of `len` bytes.
    let r = unsafe {
        libc::connect(
            probe.as_raw_fd(),
            (addr as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    let err = std::io::Error::last_os_error();
    drop(probe);
    match (r, err.raw_os_error()) {
        (_, Some(libc::ECONNREFUSED)) if r < 0 => {}
        (_, Some(libc::ENOENT)) if r < 0 => return Ok(()),
        (0, _) | (_, Some(libc::EAGAIN | libc::EINPROGRESS)) => {
            return Err(refuse(
                "is a socket another process is listening on; stop that process first".into(),
            ))
        }
        _ => {
            return Err(refuse(format!(
                "is a socket file crest cannot tell stale or in use ({err})"
            )))
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(refuse(format!(
            "is a stale socket that cannot be removed: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::{UnixListener, UnixStream};

    fn ident(path: &str, mode: u32) -> FileIdentity {
        FileIdentity {
            path: path.into(),
            kind: crate::images::FileKind::Regular,
            dev: 0,
            ino: 0,
            size: 0,
            mtime_sec: 0,
            mtime_nsec: 0,
            mode,
        }
    }

    fn sock(state: UnixSocketState) -> UnixSocket {
        UnixSocket {
            sock_type: libc::SOCK_STREAM as u32,
            state,
        }
    }

    #[test]
    fn peer_closed_end_reads_its_queue_then_eof_and_cannot_write() {
        let s = sock(UnixSocketState::PeerClosed {
            queued: b"queued".to_vec(),
        });
        let fd = create(
            &ident("", 0o140777),
            &s,
            libc::O_RDWR as u32,
            &mut Pairs::default(),
        )
        .unwrap();
        let mut stream = UnixStream::from(fd);
        let mut got = Vec::new();
        stream.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"queued");
        let err = stream.write(b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
    }

    #[test]
    fn nonblocking_flag_is_applied() {
        let s = sock(UnixSocketState::Unconnected);
        let fd = create(
            &ident("", 0o140777),
            &s,
            (libc::O_RDWR | libc::O_NONBLOCK) as u32,
            &mut Pairs::default(),
        )
        .unwrap();
        // SAFETY: F_GETFL on a descriptor we own.
        let fl = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
        assert_ne!(fl & libc::O_NONBLOCK, 0);
    }

    #[test]
    fn listener_replaces_a_stale_socket_and_keeps_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".java_pid1");
        let p = path.to_str().unwrap();
        // A stale socket file: bound, then its socket closed.
        drop(UnixListener::bind(&path).unwrap());
        let s = sock(UnixSocketState::Listening {
            backlog: 5,
            removed: false,
        });
        let fd = create(
            &ident(p, 0o140600),
            &s,
            libc::O_RDWR as u32,
            &mut Pairs::default(),
        )
        .unwrap();
        let md = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(md.permissions().mode() & 0o7777, 0o600);
        let listener = UnixListener::from(fd);
        let mut c = UnixStream::connect(&path).unwrap();
        let (mut a, _) = listener.accept().unwrap();
        c.write_all(b"!").unwrap();
        let mut b = [0u8; 1];
        a.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"!");

        // Now someone listens there: a second restore must not steal the path.
        let err = create(&ident(p, 0o140600), &s, 0, &mut Pairs::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("another process is listening"), "{err}");
        drop(listener);
    }

    #[test]
    fn listener_never_removes_what_is_not_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("precious");
        std::fs::write(&path, b"data").unwrap();
        let s = sock(UnixSocketState::Listening {
            backlog: 5,
            removed: false,
        });
        let err = create(
            &ident(path.to_str().unwrap(), 0o140600),
            &s,
            0,
            &mut Pairs::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
    }

    #[test]
    fn removed_listener_listens_without_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone");
        let s = sock(UnixSocketState::Listening {
            backlog: 3,
            removed: true,
        });
        let fd = create(
            &ident(path.to_str().unwrap(), 0o140600),
            &s,
            0,
            &mut Pairs::default(),
        )
        .unwrap();
        assert!(!path.exists());
        let (mut v, mut len) = (0i32, 4 as libc::socklen_t);
        // SAFETY: getsockopt of an int into a valid buffer.
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ACCEPTCONN,
                (&mut v as *mut i32).cast(),
                &mut len,
            )
        };
        assert_eq!((r, v), (0, 1), "listening");
    }

    #[test]
    fn a_pair_comes_back_connected_with_each_end_s_unread_bytes() {
        use std::io::{Read, Write};
        let mut pairs = Pairs::default();
        let a = UnixSocket {
            sock_type: libc::SOCK_STREAM as u32,
            state: UnixSocketState::Connected {
                peer: 20,
                queued: b"for a".to_vec(),
            },
        };
        let b = UnixSocket {
            sock_type: libc::SOCK_STREAM as u32,
            state: UnixSocketState::Connected {
                peer: 10,
                queued: b"for b".to_vec(),
            },
        };
        let mut id_a = ident("", 0o140777);
        id_a.ino = 10;
        let mut id_b = ident("", 0o140777);
        id_b.ino = 20;
        let fa = create(&id_a, &a, libc::O_RDWR as u32, &mut pairs).unwrap();
        assert!(pairs.check_complete().is_err(), "b is still waiting");
        let fb = create(&id_b, &b, libc::O_RDWR as u32, &mut pairs).unwrap();
        pairs.check_complete().unwrap();
        let (mut sa, mut sb) = (
            std::os::unix::net::UnixStream::from(fa),
            std::os::unix::net::UnixStream::from(fb),
        );
        let mut buf = [0u8; 5];
        sa.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"for a");
        sb.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"for b");
        sa.write_all(b"ping!").unwrap();
        sb.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping!");
    }
}
