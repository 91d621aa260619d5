//! A deadline-bounded AF_UNIX stream connection: connect, send everything, read to EOF, each
//! step giving up when the deadline passes.
//!
//! The socket is non-blocking and every wait is a `poll` bounded by the time left, so no step can
//! hang: not a connect to a listener whose backlog is full (AF_UNIX connect blocks then), not a
//! write to a peer that stopped reading, not a read from a JVM stuck in a long safepoint.
//! Writes use MSG_NOSIGNAL: a JVM that closes its end early must give crest an EPIPE error, not
//! a SIGPIPE that kills it (or the JVM crest's engine library is loaded into).

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Why a step failed.
#[derive(Debug)]
pub(super) enum SockError {
    /// The socket file does not exist (ENOENT).
    Missing,
    /// Nobody listens on the socket file (ECONNREFUSED): a stale file.
    Refused,
    /// The deadline passed.
    Timeout,
    /// The reply grew beyond [`MAX_REPLY`].
    TooLong,
    Io(io::Error),
}

impl SockError {
    /// The error as an `io::Error`, for a report that names the socket's path.
    pub(super) fn into_io(self) -> io::Error {
        match self {
            SockError::Missing => io::Error::from_raw_os_error(libc::ENOENT),
            SockError::Refused => io::Error::from_raw_os_error(libc::ECONNREFUSED),
            SockError::Timeout => io::Error::from(io::ErrorKind::TimedOut),
            SockError::TooLong => io::Error::new(
                io::ErrorKind::InvalidData,
                format!("reply longer than {MAX_REPLY} bytes"),
            ),
            SockError::Io(e) => e,
        }
    }
}

/// Largest reply crest reads: a GC hint's replies are a few KiB; a runaway one is an error.
pub(super) const MAX_REPLY: usize = 16 << 20;

/// Longest path `sockaddr_un` holds, without its terminating NUL.
pub(super) const SUN_PATH_MAX: usize = 107;

/// How long to wait before retrying a connect refused with EAGAIN (backlog full).
const BACKLOG_RETRY: Duration = Duration::from_millis(5);

/// One connected stream socket.
pub(super) struct Conn {
    fd: OwnedFd,
}

/// Milliseconds left until `deadline`, rounded up so a wait never spins at 0; `None` once passed.
fn remaining(deadline: Instant) -> Option<PollTimeout> {
    let left = deadline.checked_duration_since(Instant::now())?;
    if left.is_zero() {
        return None;
    }
    let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    Some(PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX))
}

impl Conn {
    /// Connects to the AF_UNIX stream socket at `path` (at most [`SUN_PATH_MAX`] bytes; the
    /// caller checks and reports a longer one).
    pub(super) fn connect(path: &Path, deadline: Instant) -> Result<Conn, SockError> {
        use std::os::unix::ffi::OsStrExt;
        let bytes = path.as_os_str().as_bytes();
        if bytes.len() > SUN_PATH_MAX || bytes.contains(&0) {
            return Err(SockError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("socket path {} does not fit in sockaddr_un", path.display()),
            )));
        }
        // SAFETY: sockaddr_un is plain data; all zeroes is a valid (empty) address.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
            *dst = src as libc::c_char;
        }
        let addr_len = (std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1)
            as libc::socklen_t;

        // SAFETY: socket() takes only integers and returns a new fd or -1.
        let raw = unsafe {
            libc::socket(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            return Err(SockError::Io(io::Error::last_os_error()));
        }
        // SAFETY: raw is a fresh descriptor the kernel just gave us; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        loop {
            // SAFETY: addr is an initialized sockaddr_un that outlives the call, and addr_len
            // covers sun_family, the path and its NUL, all inside the struct.
            let r = unsafe {
                libc::connect(
                    fd.as_raw_fd(),
                    (&addr as *const libc::sockaddr_un).cast(),
                    addr_len,
                )
            };
            if r == 0 {
                return Ok(Conn { fd });
            }
            match Errno::last() {
                Errno::EINTR => continue,
                Errno::ENOENT => return Err(SockError::Missing),
                Errno::ECONNREFUSED => return Err(SockError::Refused),
                // A non-blocking AF_UNIX connect says EAGAIN while the listener's backlog is
                // full (net/unix/af_unix.c, unix_stream_connect); try again shortly.
                Errno::EAGAIN => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(SockError::Timeout);
                    }
                    std::thread::sleep(BACKLOG_RETRY.min(left));
                }
                e => return Err(SockError::Io(e.into())),
            }
        }
    }

    /// Waits until the socket is ready for `events` or the deadline passes.
    fn wait(&self, events: PollFlags, deadline: Instant) -> Result<(), SockError> {
        loop {
            let Some(timeout) = remaining(deadline) else {
                return Err(SockError::Timeout);
            };
            let mut fds = [PollFd::new(self.fd.as_fd(), events)];
            match poll(&mut fds, timeout) {
                Ok(0) => continue, // woke early by rounding: the loop re-checks the deadline
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(SockError::Io(e.into())),
            }
        }
    }

    /// Sends all of `data`.
    pub(super) fn send_all(&self, mut data: &[u8], deadline: Instant) -> Result<(), SockError> {
        while !data.is_empty() {
            // SAFETY: data is a live slice; send reads at most data.len() bytes from it.
            let n = unsafe {
                libc::send(
                    self.fd.as_raw_fd(),
                    data.as_ptr().cast(),
                    data.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            if n >= 0 {
                data = &data[n as usize..];
                continue;
            }
            match Errno::last() {
                Errno::EINTR => {}
                Errno::EAGAIN => self.wait(PollFlags::POLLOUT, deadline)?,
                e => return Err(SockError::Io(e.into())),
            }
        }
        Ok(())
    }

    /// The inode of this socket (sockfs), by which sock_diag finds it.
    pub(super) fn inode(&self) -> io::Result<u64> {
        let st = nix::sys::stat::fstat(self.fd.as_fd()).map_err(io::Error::from)?;
        Ok(st.st_ino)
    }

    /// Reads until the peer closes its end.
    pub(super) fn read_to_end(&self, deadline: Instant) -> Result<Vec<u8>, SockError> {
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match nix::unistd::read(&self.fd, &mut buf) {
                Ok(0) => return Ok(out),
                Ok(n) => {
                    if out.len() + n > MAX_REPLY {
                        return Err(SockError::TooLong);
                    }
                    out.extend_from_slice(&buf[..n]);
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => self.wait(PollFlags::POLLIN, deadline)?,
                // The JVM closes with shutdown(SHUT_RDWR); a reset after its reply is its end.
                Err(Errno::ECONNRESET) => return Ok(out),
                Err(e) => return Err(SockError::Io(e.into())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;

    fn temp_socket(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        (dir, path)
    }

    #[test]
    fn round_trip_with_a_local_listener() {
        let (_dir, path) = temp_socket("s");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = [0u8; 5];
            s.read_exact(&mut req).unwrap();
            s.write_all(b"0\nhello ").unwrap();
            s.write_all(&req).unwrap();
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let c = Conn::connect(&path, deadline).unwrap();
        c.send_all(b"world", deadline).unwrap();
        assert_eq!(c.read_to_end(deadline).unwrap(), b"0\nhello world");
        server.join().unwrap();
    }

    #[test]
    fn missing_refused_and_silent_peers() {
        let (_dir, path) = temp_socket("s");
        let deadline = Instant::now() + Duration::from_secs(30);
        assert!(matches!(
            Conn::connect(&path, deadline),
            Err(SockError::Missing)
        ));
        // A socket file whose listener is gone.
        drop(UnixListener::bind(&path).unwrap());
        assert!(matches!(
            Conn::connect(&path, deadline),
            Err(SockError::Refused)
        ));
        std::fs::remove_file(&path).unwrap();
        // A listener that accepts (in the backlog) but never answers: the read times out.
        let _listener = UnixListener::bind(&path).unwrap();
        let c = Conn::connect(&path, deadline).unwrap();
        let short = Instant::now() + Duration::from_millis(50);
        assert!(matches!(c.read_to_end(short), Err(SockError::Timeout)));
        // A deadline already passed fails at once.
        assert!(matches!(
            c.read_to_end(Instant::now()),
            Err(SockError::Timeout)
        ));
    }

    #[test]
    fn too_long_a_path_is_refused_before_any_syscall() {
        let long = std::path::PathBuf::from(format!("/tmp/{}", "x".repeat(SUN_PATH_MAX)));
        assert!(matches!(
            Conn::connect(&long, Instant::now() + Duration::from_secs(1)),
            Err(SockError::Io(e)) if e.kind() == io::ErrorKind::InvalidInput
        ));
    }
}
