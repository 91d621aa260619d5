//! Sockets of the fd table: which AF_UNIX sockets a restore can recreate, and what it needs
//! to do so.
//!
//! crest takes its own duplicate of the process's fd (pidfd_getfd: the same socket) to ask it
//! its family and type, and asks the kernel (sock_diag, [`super::sockdiag`]) what it is doing.
//! Three cases come back faithfully and cover what a JVM has:
//! - an unbound socket never connected (socket(2) alone);
//! - an unbound end of a connected pair whose peer has been closed — JDK 17's NIO keeps one to
//!   dup2 over fds it closes asynchronously (socketpair, then close one end). Unread bytes its
//!   peer left are captured with MSG_PEEK (a stream socket's queue is plain bytes unless it
//!   carries fds or credentials, which are refused);
//! - a socket bound to a path and listening, with no connection waiting — HotSpot's attach
//!   listener, `/tmp/.java_pid<pid>`, bound as `.java_pid<pid>.tmp` and renamed. sock_diag
//!   gives the inode of the socket file; crest finds it under the bound name or, after a rename,
//!   in the same directory.
//!
//! Everything else (other families, live peers, bound but idle sockets, abstract names,
//! connections waiting to be accepted) is refused with what it is.

use std::fs::Metadata;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::images::{FileIdentity, FileKind, UnixSocket, UnixSocketState};
use crate::sys;

use super::sockdiag::{self, UnixDiag, TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN};
use super::DumpError;

/// Most unread bytes crest captures from a socket whose peer is closed (the images crate
/// accepts up to 64 MiB; a default UNIX socket queue holds far less).
const QUEUED_MAX: u32 = 16 << 20;

/// Reads the sockets of one process; opens its pidfd on first use.
pub struct Sockets {
    pid: i32,
    pidfd: Option<OwnedFd>,
}

impl Sockets {
    pub fn new(pid: i32) -> Sockets {
        Sockets { pid, pidfd: None }
    }

    fn refuse(&self, fd: i32, what: String) -> DumpError {
        DumpError::UnsupportedFd {
            pid: self.pid,
            fd,
            what,
        }
    }

    /// A duplicate, in crest, of the process's fd `fd`.
    fn copy(&mut self, fd: i32) -> Result<OwnedFd, DumpError> {
        if self.pidfd.is_none() {
            let pidfd = sys::pidfd_open(self.pid).map_err(|errno| {
                self.refuse(
                    fd,
                    format!("a socket, and crest cannot open a pidfd to inspect it ({errno})"),
                )
            })?;
            self.pidfd = Some(pidfd);
        }
        let pidfd = self.pidfd.as_ref().expect("opened above");
        sys::pidfd_getfd(pidfd, fd).map_err(|errno| {
            self.refuse(
                fd,
                format!(
                    "a socket that crest cannot duplicate to inspect it (pidfd_getfd: {errno}; \
                     it needs Linux 5.6+ and ptrace access)"
                ),
            )
        })
    }

    /// Records the socket behind fd `fd` (`md`: fstat of it) for a restore to recreate.
    pub fn record(&mut self, fd: i32, md: &Metadata) -> Result<FileIdentity, DumpError> {
        let ino = md.ino();
        let copy = self.copy(fd)?;
        let family = sockopt(&copy, libc::SO_DOMAIN).map_err(|e| {
            self.refuse(
                fd,
                format!("a socket (inode {ino}) whose family cannot be read: {e}"),
            )
        })?;
        if family != libc::AF_UNIX {
            if let Some(r) = super::netsockets::record(self.pid, fd, md, &copy, family) {
                return r;
            }
            return Err(self.refuse(
                fd,
                format!(
                    "{} socket (inode {ino}); only AF_UNIX sockets can be dumped",
                    family_name(family)
                ),
            ));
        }
        let sock_type = sockopt(&copy, libc::SO_TYPE).map_err(|e| {
            self.refuse(
                fd,
                format!("a UNIX socket (inode {ino}) whose type cannot be read: {e}"),
            )
        })?;
        let ty = type_name(sock_type);
        let diag = sockdiag::query(ino)
            .map_err(|e| self.refuse(fd, format!("a UNIX {ty} socket (inode {ino}): {e}")))?;
        let what = |state: &str| format!("a UNIX {ty} socket (inode {ino}) {state}");
        let identity = |path: String, mode: u32, state: UnixSocketState| FileIdentity {
            path,
            kind: FileKind::UnixSocket(UnixSocket {
                sock_type: sock_type as u32,
                state,
            }),
            dev: md.dev(),
            ino,
            size: 0,
            mtime_sec: 0,
            mtime_nsec: 0,
            mode,
        };
        match diag.state {
            TCP_LISTEN => {
                let (path, mode, removed) = self.listening_file(fd, &diag, &what)?;
                let waiting = diag.pending.len().max(diag.rqueue as usize);
                if waiting > 0 {
                    return Err(self.refuse(
                        fd,
                        what(&format!(
                            "listening on {path} with {waiting} connection(s) waiting to be \
                             accepted, which cannot be carried over; dump it when they are"
                        )),
                    ));
                }
                let state = UnixSocketState::Listening {
                    backlog: diag.wqueue,
                    removed,
                };
                Ok(identity(path, mode, state))
            }
            TCP_ESTABLISHED => {
                if let Some(name) = &diag.name {
                    return Err(self.refuse(
                        fd,
                        what(&format!(
                            "connected under the address {} (a connection accepted by the \
                             listener there, or a bound socket that connected); crest can dump \
                             only unbound connected sockets whose peer is closed",
                            name_text(name)
                        )),
                    ));
                }
                let queued = self.queued(fd, &copy, &diag, sock_type, &what)?;
                // A live peer must be in the tree too; shared.rs checks that once every
                // process is collected.
                let state = match diag.peer {
                    None | Some(0) => UnixSocketState::PeerClosed { queued },
                    Some(peer) => UnixSocketState::Connected { peer, queued },
                };
                Ok(identity(String::new(), md.mode(), state))
            }
            TCP_CLOSE => {
                if let Some(name) = &diag.name {
                    return Err(self.refuse(
                        fd,
                        what(&format!(
                            "bound to {} but neither listening nor connected; crest cannot \
                             dump it yet",
                            name_text(name)
                        )),
                    ));
                }
                if diag.shutdown != 0 || diag.rqueue != 0 {
                    return Err(self.refuse(
                        fd,
                        what("that is unconnected but shut down or holding data"),
                    ));
                }
                Ok(identity(
                    String::new(),
                    md.mode(),
                    UnixSocketState::Unconnected,
                ))
            }
            state => Err(self.refuse(
                fd,
                what(&format!(
                    "in state {state} (connecting or closing); crest can dump only unconnected, \
                     listening or peer-closed UNIX sockets"
                )),
            )),
        }
    }

    /// Where a listening socket's file is now, its mode, and whether it is gone.
    fn listening_file(
        &self,
        fd: i32,
        diag: &UnixDiag,
        what: &dyn Fn(&str) -> String,
    ) -> Result<(String, u32, bool), DumpError> {
        let name = match &diag.name {
            None => {
                return Err(self.refuse(fd, what("listening without a name (not bound)")));
            }
            Some(n) if n.first() == Some(&0) => {
                return Err(self.refuse(
                    fd,
                    what(&format!(
                        "listening on the abstract name {}; abstract names cannot be dumped yet",
                        name_text(n)
                    )),
                ))
            }
            Some(n) => PathBuf::from(std::ffi::OsStr::from_bytes(n)),
        };
        let shown = name.display().to_string();
        if !name.is_absolute() {
            return Err(self.refuse(
                fd,
                what(&format!(
                    "listening on the relative path {shown:?}, which cannot be resolved after \
                     the fact"
                )),
            ));
        }
        let Some((ino, dev)) = diag.vfs else {
            return Err(self.refuse(
                fd,
                what(&format!(
                    "listening on {shown}, but the kernel does not say which file it is"
                )),
            ));
        };
        match find_socket_file(&name, ino, dev) {
            Some((path, mode)) => {
                let path = path.to_str().map(str::to_string).ok_or_else(|| {
                    self.refuse(
                        fd,
                        what(&format!(
                            "listening on {}, a path that is not UTF-8",
                            path.display()
                        )),
                    )
                })?;
                Ok((path, mode, false))
            }
            // Removed since it was bound: the restore binds and removes it again. Its mode is
            // gone with it; owner-only is what the file has while it briefly exists.
            None => {
                let path = name.to_str().map(str::to_string).ok_or_else(|| {
                    self.refuse(
                        fd,
                        what(&format!("listening on {shown}, a path that is not UTF-8")),
                    )
                })?;
                Ok((path, libc::S_IFSOCK | 0o600, true))
            }
        }
    }

    /// The bytes the peer sent and nobody read yet, peeked without consuming them.
    fn queued(
        &self,
        fd: i32,
        copy: &OwnedFd,
        diag: &UnixDiag,
        sock_type: i32,
        what: &dyn Fn(&str) -> String,
    ) -> Result<Vec<u8>, DumpError> {
        let n = diag.rqueue;
        if n == 0 {
            return Ok(Vec::new());
        }
        if sock_type != libc::SOCK_STREAM {
            return Err(self.refuse(
                fd,
                what(&format!(
                    "holding unread messages ({n} bytes); crest can capture unread data only \
                     from stream sockets"
                )),
            ));
        }
        if n > QUEUED_MAX {
            return Err(self.refuse(
                fd,
                what(&format!(
                    "holding {n} unread bytes, more than the {QUEUED_MAX} crest captures"
                )),
            ));
        }
        // MSG_PEEK would start at, and move, a peek offset the program set: refuse rather than
        // change its state.
        match sockopt(copy, libc::SO_PEEK_OFF) {
            Ok(-1) => {}
            Ok(off) => {
                return Err(self.refuse(
                    fd,
                    what(&format!(
                        "with {n} unread bytes and a peek offset ({off}) set by the program; \
                         crest cannot capture them without moving it"
                    )),
                ))
            }
            Err(e) => {
                return Err(self.refuse(fd, what(&format!("whose peek offset cannot be read: {e}"))))
            }
        }
        let peeked = peek(copy, n as usize).map_err(|e| {
            self.refuse(
                fd,
                what(&format!("with {n} unread bytes that cannot be read: {e}")),
            )
        })?;
        match peeked {
            Peeked::Data(bytes) if bytes.len() == n as usize => Ok(bytes),
            Peeked::Data(bytes) => Err(self.refuse(
                fd,
                what(&format!(
                    "with {n} unread bytes of which crest could peek only {} (they come from \
                     several senders); it cannot capture them",
                    bytes.len()
                )),
            )),
            Peeked::Ancillary => Err(self.refuse(
                fd,
                what(&format!(
                    "with {n} unread bytes that carry file descriptors or credentials \
                     (SCM_RIGHTS/SCM_CREDENTIALS); crest cannot capture them"
                )),
            )),
        }
    }
}

/// Finds the socket file with inode `ino` on device `dev`: at `bound` (the name it was bound
/// to) or, when renamed since, in the same directory. Returns its path and st_mode.
fn find_socket_file(bound: &Path, ino: u64, dev: u64) -> Option<(PathBuf, u32)> {
    let is_it = |md: &Metadata| md.file_type().is_socket() && md.ino() == ino && md.dev() == dev;
    if let Ok(md) = std::fs::symlink_metadata(bound) {
        if is_it(&md) {
            return Some((bound.to_path_buf(), md.mode()));
        }
    }
    let dir = bound.parent()?;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        if entry.ino() != ino {
            continue;
        }
        if let Ok(md) = entry.metadata() {
            if is_it(&md) {
                return Some((entry.path(), md.mode()));
            }
        }
    }
    None
}

/// `getsockopt(SOL_SOCKET, opt)` of an int option.
fn sockopt(fd: &OwnedFd, opt: libc::c_int) -> Result<i32, Errno> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len are valid for writes of the sizes given.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(v)
}

enum Peeked {
    Data(Vec<u8>),
    /// The data came with control messages (any fds received were closed).
    Ancillary,
}

/// Peeks at up to `n` queued bytes without consuming them.
fn peek(fd: &OwnedFd, n: usize) -> Result<Peeked, Errno> {
    let mut data = vec![0u8; n];
    // Room for a few control messages; what matters is whether there is any.
    let mut control = [0u64; 64];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: n,
    };
    // SAFETY: msghdr is plain old data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    let got = loop {
        // SAFETY: msg points at iov (n writable bytes of `data`) and `control`, both alive.
        let r = unsafe {
            libc::recvmsg(
                fd.as_raw_fd(),
                &mut msg,
                libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
            )
        };
        if r < 0 && Errno::last() == Errno::EINTR {
            continue;
        }
        if r < 0 {
            return Err(Errno::last());
        }
        break r as usize;
    };
    if msg.msg_controllen > 0 || msg.msg_flags & libc::MSG_CTRUNC != 0 {
        close_passed_fds(&msg);
        return Ok(Peeked::Ancillary);
    }
    data.truncate(got);
    Ok(Peeked::Data(data))
}

/// Closes the fds an SCM_RIGHTS message put into crest (a peek duplicates them).
fn close_passed_fds(msg: &libc::msghdr) {
    // SAFETY: msg was filled by recvmsg; the CMSG_* macros walk its control buffer within
    // msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c) as *const libc::c_int;
                let bytes = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..bytes / std::mem::size_of::<libc::c_int>() {
                    libc::close(std::ptr::read_unaligned(data.add(i)));
                }
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
}

fn family_name(family: i32) -> String {
    match family {
        libc::AF_INET => "an IPv4 (AF_INET)".into(),
        libc::AF_INET6 => "an IPv6 (AF_INET6)".into(),
        libc::AF_NETLINK => "a netlink".into(),
        libc::AF_PACKET => "a packet".into(),
        libc::AF_VSOCK => "a vsock".into(),
        other => format!("an address family {other}"),
    }
}

fn type_name(sock_type: i32) -> String {
    match sock_type {
        libc::SOCK_STREAM => "stream".into(),
        libc::SOCK_DGRAM => "datagram".into(),
        libc::SOCK_SEQPACKET => "seqpacket".into(),
        other => format!("type-{other}"),
    }
}

/// A socket name for messages: the path, or `@name` for an abstract one.
fn name_text(name: &[u8]) -> String {
    match name.split_first() {
        Some((0, rest)) => format!("@{}", String::from_utf8_lossy(rest)),
        _ => String::from_utf8_lossy(name).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::{UnixListener, UnixStream};

    /// Records our own fd through the same path a dump takes (pidfd_getfd on ourselves).
    fn record_own<F: AsFd + AsRawFd>(f: &F) -> Result<FileIdentity, DumpError> {
        let md = std::fs::metadata(format!("/proc/self/fd/{}", f.as_raw_fd())).unwrap();
        Sockets::new(std::process::id() as i32).record(f.as_raw_fd(), &md)
    }

    fn state(ident: &FileIdentity) -> &UnixSocketState {
        match &ident.kind {
            FileKind::UnixSocket(s) => &s.state,
            other => panic!("not a socket: {other:?}"),
        }
    }

    #[test]
    fn pair_ends_are_recorded_with_their_unread_bytes() {
        let (a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"left behind").unwrap();
        // While the peer is open, the end is recorded as connected to it (whether the peer is
        // in the tree is the tree's question, shared.rs).
        let b_ino = nix::sys::stat::fstat(&b).unwrap().st_ino;
        let ident = record_own(&a).unwrap();
        assert_eq!(
            state(&ident),
            &UnixSocketState::Connected {
                peer: b_ino,
                queued: b"left behind".to_vec()
            }
        );
        drop(b);
        let ident = record_own(&a).unwrap();
        assert_eq!(ident.path, "");
        assert_eq!(
            state(&ident),
            &UnixSocketState::PeerClosed {
                queued: b"left behind".to_vec()
            }
        );
        // The peek consumed nothing.
        let mut buf = [0u8; 32];
        let n = nix::unistd::read(&a, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"left behind");
    }

    #[test]
    fn data_with_passed_fds_is_refused_and_left_in_place() {
        let (a, b) = UnixStream::pair().unwrap();
        let null = std::fs::File::open("/dev/null").unwrap();
        send_with_fd(&b, b'x', null.as_raw_fd());
        drop(b);
        let err = record_own(&a).unwrap_err().to_string();
        assert!(err.contains("SCM_RIGHTS"), "{err}");
        let mut buf = [0u8; 4];
        assert_eq!(nix::unistd::read(&a, &mut buf).unwrap(), 1);
    }

    /// Sends one byte with `fd` attached (SCM_RIGHTS).
    fn send_with_fd(sock: &UnixStream, byte: u8, fd: i32) {
        let mut data = [byte];
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut control = [0u64; 8];
        // SAFETY: msghdr is plain old data; all-zero is a valid value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE only computes a size.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as usize;
        // SAFETY: the control buffer holds CMSG_SPACE(4) bytes, enough for one header and an int;
        // sendmsg reads only what msg describes.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut i32, fd);
            assert_eq!(libc::sendmsg(sock.as_raw_fd(), &msg, 0), 1);
        }
    }

    #[test]
    fn unconnected_socket_is_recorded() {
        // SAFETY: socket(2) takes only integers.
        let raw =
            unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
        assert!(raw >= 0);
        // SAFETY: raw is a fresh descriptor we own.
        let s = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
        let ident = record_own(&s).unwrap();
        assert_eq!(state(&ident), &UnixSocketState::Unconnected);
        match ident.kind {
            FileKind::UnixSocket(u) => assert_eq!(u.sock_type, libc::SOCK_SEQPACKET as u32),
            _ => unreachable!(),
        }
    }

    #[test]
    fn renamed_listener_is_found_and_waiting_connections_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bound = dir.path().join("attach.tmp");
        let l = UnixListener::bind(&bound).unwrap();
        // SAFETY: listen on our own socket only sets its backlog.
        assert_eq!(unsafe { libc::listen(l.as_raw_fd(), 5) }, 0);
        let path = dir.path().join("attach");
        std::fs::rename(&bound, &path).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let ident = record_own(&l).unwrap();
        assert_eq!(ident.path, path.to_str().unwrap());
        assert_eq!(ident.mode & 0o7777, 0o600);
        assert_eq!(
            state(&ident),
            &UnixSocketState::Listening {
                backlog: 5,
                removed: false
            }
        );

        let c = UnixStream::connect(&path).unwrap();
        let err = record_own(&l).unwrap_err().to_string();
        assert!(err.contains("1 connection(s) waiting"), "{err}");
        drop(l.accept().unwrap());
        drop(c);

        std::fs::remove_file(&path).unwrap();
        let ident = record_own(&l).unwrap();
        assert_eq!(ident.path, bound.to_str().unwrap());
        assert!(matches!(
            state(&ident),
            UnixSocketState::Listening { removed: true, .. }
        ));
    }

    #[test]
    fn other_families_are_refused_by_name() {
        let s = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = record_own(&s).unwrap_err().to_string();
        assert!(err.contains("IPv4"), "{err}");
    }
}
