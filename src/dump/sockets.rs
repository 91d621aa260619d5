//! Sockets of the fd table: how each AF_UNIX socket is recorded for a restore to recreate it.
//!
//! crest takes its own duplicate of the process's fd (pidfd_getfd: the same socket) to ask it
//! its family, type and options, and asks the kernel (sock_diag, [`super::sockdiag`]) what it is
//! doing: its state, name, peer, accept queue, queue lengths and shutdown state. Per socket:
//! - the name: a path (sock_diag gives the inode of the socket file; crest finds it under the
//!   bound name or, after a rename, in the same directory, with its mode and owner; a removed
//!   file is recorded as such) or an abstract name. A connected stream or seqpacket socket's
//!   name is not kept: an accepted connection carries its listener's, which the listener has;
//! - its receive queue, peeked without consuming it: a stream socket's bytes; a seqpacket or
//!   datagram socket's records one by one (SO_PEEK_OFF moves through the queue, then is turned
//!   off again), each datagram with its sender's name. A message carrying files
//!   (SCM_RIGHTS) keeps them: the peek opened them in crest, and [`super::scm`] records them;
//!   one carrying credentials (SCM_CREDENTIALS, the receiver has SO_PASSCRED) keeps them too;
//!   any other control message (SCM_SECURITY) is refused;
//! - shutdown state, SO_PASSCRED, buffer sizes, and the other SOL_SOCKET options that differ
//!   from a fresh socket's (SO_PASSSEC, SO_RCVLOWAT, SO_SNDTIMEO ...); SO_PEERCRED (the
//!   peer's pid, uid and gid, [`crate::files::peercred`]);
//! - its state: unconnected (bound or not), listening (with the embryos of the connections
//!   waiting), connected to a peer inode (whether that peer is in the tree, an embryo waiting
//!   in a listener of the tree, or outside, is decided tree-wide in [`super::unix_tree`]), or
//!   connected with its peer closed.

use std::fs::Metadata;
#[cfg(test)]
use std::os::fd::FromRawFd;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::images::{
    FileIdentity, FileKind, MessageCreds, UnixMessage, UnixName, UnixSocket, UnixSocketState,
};
use crate::sys;

use super::sockdiag::{self, UnixDiag, TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN};
use super::DumpError;

/// A UNIX message's security label (linux/socket.h), read with SO_PASSSEC.
const SCM_SECURITY: libc::c_int = 0x03;

/// Most unread bytes crest captures from one socket (the images crate accepts up to 64 MiB; a
/// default UNIX socket queue holds far less).
const QUEUED_MAX: u32 = 16 << 20;
/// Largest single record or datagram crest peeks (a UNIX datagram is bounded by the sender's
/// send buffer, at most a few MiB).
const MESSAGE_MAX: usize = 8 << 20;

/// Reads the sockets of one process; opens its pidfd on first use.
pub struct Sockets {
    pid: i32,
    pidfd: Option<OwnedFd>,
    /// What the dump's report says about these sockets (captured packets left behind).
    pub notes: Vec<String>,
    /// Files that the queues read carry, open in crest.
    passed: Vec<OwnedFd>,
}

impl Sockets {
    pub fn new(pid: i32) -> Sockets {
        Sockets {
            pid,
            pidfd: None,
            notes: Vec::new(),
            passed: Vec::new(),
        }
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
        if (family == libc::AF_INET || family == libc::AF_INET6)
            && crate::net::tcp_dump::is_tcp(std::os::fd::AsFd::as_fd(&copy))
        {
            let tcp = crate::net::tcp_dump::record(self.pid, fd, copy)
                .map_err(|what| self.refuse(fd, what))?;
            return Ok(crate::files::object_identity(
                String::new(),
                FileKind::Tcp(tcp),
                md.dev(),
                ino,
            ));
        }
        if family != libc::AF_UNIX {
            if let Some(r) =
                super::netsockets::record(self.pid, fd, md, &copy, family, &mut self.notes)
            {
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
        let opt = |o: libc::c_int, name: &str| {
            sockopt(&copy, o).map_err(|e| {
                self.refuse(
                    fd,
                    what(&format!("whose option {name} cannot be read: {e}")),
                )
            })
        };
        let passcred = opt(libc::SO_PASSCRED, "SO_PASSCRED")? != 0;
        let sndbuf = opt(libc::SO_SNDBUF, "SO_SNDBUF")? as u32;
        let rcvbuf = opt(libc::SO_RCVBUF, "SO_RCVBUF")? as u32;
        let options = unix_options(&copy, sock_type).map_err(|e| {
            self.refuse(
                fd,
                what(&format!(
                    "whose options cannot be compared with a fresh socket's: {e}"
                )),
            )
        })?;
        let peer_creds =
            crate::files::peercred::read(std::os::fd::AsFd::as_fd(&copy)).map_err(|e| {
                self.refuse(fd, what(&format!("whose SO_PEERCRED cannot be read: {e}")))
            })?;
        let stream = sock_type != libc::SOCK_DGRAM;

        let state = if stream {
            match diag.state {
                TCP_LISTEN => UnixSocketState::Listening {
                    backlog: diag.wqueue,
                    // The clients of the waiting connections (0: a client closed since).
                    pending: diag.pending.clone(),
                },
                TCP_ESTABLISHED => match diag.peer {
                    // A closed peer shuts the survivor down both ways. Otherwise the peer has no
                    // inode because no fd holds it yet: the connection waits in a listener's
                    // accept queue (unix_tree finds whether that listener is in the tree).
                    None | Some(0) if diag.shutdown != 3 => UnixSocketState::External {
                        peer_name: peer_name(&copy).map_err(|e| {
                            self.refuse(fd, what(&format!("whose peer name cannot be read: {e}")))
                        })?,
                    },
                    None | Some(0) => UnixSocketState::PeerClosed,
                    Some(peer) => UnixSocketState::Connected { peer },
                },
                TCP_CLOSE => UnixSocketState::Unconnected,
                state => {
                    return Err(self.refuse(
                        fd,
                        what(&format!(
                            "in state {state} (connecting or closing), which crest cannot \
                             recreate"
                        )),
                    ))
                }
            }
        } else {
            // A datagram socket is "established" as soon as anyone connected to it: only its
            // own peer says whether it is connected.
            match diag.peer {
                None => UnixSocketState::Unconnected,
                Some(0) => UnixSocketState::PeerClosed,
                Some(peer) => UnixSocketState::Connected { peer },
            }
        };
        let connected_stream = stream
            && matches!(
                state,
                UnixSocketState::Connected { .. }
                    | UnixSocketState::PeerClosed
                    | UnixSocketState::External { .. }
            );
        let (name, path, mode) = match &diag.name {
            None => (UnixName::Unnamed, String::new(), md.mode()),
            // An accepted connection's name is its listener's; the restored pair has none.
            Some(_) if connected_stream => (UnixName::Unnamed, String::new(), md.mode()),
            Some(n) if n.first() == Some(&0) => (
                UnixName::Abstract {
                    name: n[1..].to_vec(),
                },
                String::new(),
                md.mode(),
            ),
            Some(_) => self.bound_file(fd, &diag, &what)?,
        };
        let queue = if matches!(state, UnixSocketState::Listening { .. }) {
            Vec::new()
        } else {
            self.queued(fd, &copy, &diag, sock_type, &what)?
        };
        Ok(FileIdentity {
            path,
            kind: FileKind::UnixSocket(UnixSocket {
                sock_type: sock_type as u32,
                state,
                name,
                queue,
                shutdown: diag.shutdown,
                passcred,
                sndbuf,
                rcvbuf,
                options,
                peer_creds,
            }),
            dev: md.dev(),
            ino,
            size: 0,
            mtime_sec: 0,
            mtime_nsec: 0,
            mode,
        })
    }

    /// The name of a socket bound to a path: where its file is now, its mode and owner, and
    /// whether it is gone.
    fn bound_file(
        &self,
        fd: i32,
        diag: &UnixDiag,
        what: &dyn Fn(&str) -> String,
    ) -> Result<(UnixName, String, u32), DumpError> {
        let raw = diag.name.as_deref().unwrap_or_default();
        let name = PathBuf::from(std::ffi::OsStr::from_bytes(raw));
        let shown = name.display().to_string();
        let bound = name.to_str().map(str::to_string).ok_or_else(|| {
            self.refuse(
                fd,
                what(&format!("bound to {shown}, a path that is not UTF-8")),
            )
        })?;
        let Some((ino, dev)) = diag.vfs else {
            return Err(self.refuse(
                fd,
                what(&format!(
                    "bound to {shown}, but the kernel does not say which file it is"
                )),
            ));
        };
        // A relative name was resolved against the working directory of whoever bound it:
        // found by inode from the process's working directory now, or its root.
        // An absolute name of a chrooted process is below its root, unless it was bound
        // before the chroot (the inode tells).
        let chroot = crate::files::root::of_process(self.pid).map_err(|root| {
            self.refuse(
                fd,
                what(&format!(
                    "bound to {shown} by a process whose root directory {root} was removed, \
                     where crest cannot find or make the socket file"
                )),
            )
        })?;
        let (name, dir) = if name.is_absolute() {
            match &chroot {
                Some(root) if find_socket_file(&name, ino, dev).is_none() => {
                    let dir = root.to_str().map(str::to_string).ok_or_else(|| {
                        self.refuse(
                            fd,
                            what(&format!(
                                "bound to {shown} in the root directory {}, a path that is \
                                 not UTF-8",
                                root.display()
                            )),
                        )
                    })?;
                    (crate::files::root::below(root, &name), dir)
                }
                _ => (name, String::new()),
            }
        } else {
            let mut found = None;
            let proc = crate::proc::Proc::open(self.pid).ok();
            let bases = [
                proc.as_ref().and_then(|p| p.cwd().ok()),
                proc.as_ref().and_then(|p| p.root().ok()),
            ];
            for base in bases.into_iter().flatten() {
                let candidate = base.join(&name);
                if find_socket_file(&candidate, ino, dev).is_some() {
                    found = Some((candidate, base));
                    break;
                }
            }
            let Some((abs, base)) = found else {
                return Err(self.refuse(
                    fd,
                    what(&format!(
                        "bound to the relative path {shown:?}, whose socket file is neither \
                         there from the process's working directory nor its root (moved, \
                         removed or the directory changed), so the directory it was bound from \
                         is unknown"
                    )),
                ));
            };
            let base = base.to_str().map(str::to_string).ok_or_else(|| {
                self.refuse(
                    fd,
                    what(&format!(
                        "bound to {shown:?} from {}, a path that is not UTF-8",
                        base.display()
                    )),
                )
            })?;
            (abs, base)
        };
        match find_socket_file(&name, ino, dev) {
            Some((path, md)) => {
                let path = path.to_str().map(str::to_string).ok_or_else(|| {
                    self.refuse(
                        fd,
                        what(&format!(
                            "bound to {}, a path that is not UTF-8",
                            path.display()
                        )),
                    )
                })?;
                let name = UnixName::Path {
                    bound,
                    uid: md.uid(),
                    gid: md.gid(),
                    dir,
                    removed: false,
                };
                Ok((name, path, md.mode()))
            }
            // Removed since it was bound: the restore binds and removes it again. Its mode and
            // owner are gone with it; owner-only, root's, is what it has while it briefly exists.
            None => {
                // A chrooted process's absolute name is bound again below its root.
                let (path, dir) = if !dir.is_empty() && bound.starts_with('/') {
                    (name.display().to_string(), dir)
                } else {
                    (bound.clone(), String::new())
                };
                let name = UnixName::Path {
                    bound,
                    uid: 0,
                    gid: 0,
                    dir,
                    removed: true,
                };
                Ok((name, path, libc::S_IFSOCK | 0o600))
            }
        }
    }

    /// What the socket's receive queue holds, peeked without consuming it.
    fn queued(
        &mut self,
        fd: i32,
        copy: &OwnedFd,
        diag: &UnixDiag,
        sock_type: i32,
        what: &dyn Fn(&str) -> String,
    ) -> Result<Vec<UnixMessage>, DumpError> {
        // For a stream or seqpacket socket rqueue is every byte queued; for a datagram socket
        // the size of the next one (0 also for an empty one, which the walk below finds).
        let n = diag.rqueue;
        if n == 0 && sock_type == libc::SOCK_STREAM {
            return Ok(Vec::new());
        }
        if n == 0 && sock_type == libc::SOCK_SEQPACKET {
            // Nothing but empty records, if anything: one carrying files cannot be stepped over
            // (and once peeked, a peek offset skips it).
            if let Ok(Peeked::Data { fds, .. }) = peek(copy, 1, false) {
                if !fds.is_empty() {
                    return Err(self.refuse(
                        fd,
                        what(&format!(
                            "holding an empty message that carries {} file(s) (SCM_RIGHTS), \
                             which crest cannot step over to capture the rest",
                            fds.len()
                        )),
                    ));
                }
            }
            return Ok(Vec::new());
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
                if n == 0 {
                    return Ok(Vec::new());
                }
                return Err(self.refuse(
                    fd,
                    what(&format!(
                        "with unread data and a peek offset ({off}) set by the program; crest \
                         cannot capture it without moving the offset"
                    )),
                ));
            }
            Err(e) => {
                return Err(self.refuse(fd, what(&format!("whose peek offset cannot be read: {e}"))))
            }
        }
        if sock_type == libc::SOCK_STREAM {
            let peeked = peek(copy, n as usize, false).map_err(|e| {
                self.refuse(
                    fd,
                    what(&format!("with {n} unread bytes that cannot be read: {e}")),
                )
            })?;
            match peeked {
                Peeked::Data {
                    data,
                    fds,
                    creds: None,
                    ..
                } if data.len() == n as usize && fds.is_empty() => {
                    return Ok(vec![UnixMessage {
                        from: Vec::new(),
                        data,
                        fds: Vec::new(),
                        creds: None,
                    }])
                }
                Peeked::Empty => return Ok(Vec::new()),
                // Carrying fds or credentials, or bytes from several senders: the kernel
                // stops a read at each change, so the queue is walked piece by piece.
                _ => {}
            }
        }
        // Records (or pieces of a stream) one by one: with a peek offset of 0 each peek moves
        // past what it returned.
        set_sockopt(copy, libc::SO_PEEK_OFF, 0)
            .map_err(|e| self.refuse(fd, what(&format!("whose queue cannot be walked: {e}"))))?;
        let walked = self.walk_records(fd, copy, diag, what);
        let reset = set_sockopt(copy, libc::SO_PEEK_OFF, -1);
        let messages = walked?;
        reset.map_err(|e| {
            self.refuse(
                fd,
                what(&format!(
                    "whose peek offset cannot be turned off again: {e}"
                )),
            )
        })?;
        Ok(messages)
    }

    /// Walks the queue of `copy` with the peek offset at 0. Files that messages carry
    /// (SCM_RIGHTS) are kept open in crest ([`Sockets::take_passed`]); until the fd walk turns
    /// them into descriptions of the process, each message names them by crest's fd numbers.
    fn walk_records(
        &mut self,
        fd: i32,
        copy: &OwnedFd,
        diag: &UnixDiag,
        what: &dyn Fn(&str) -> String,
    ) -> Result<Vec<UnixMessage>, DumpError> {
        // Only a datagram's sender matters (a seqpacket record comes from the peer).
        let dgram = diag.sock_type as i32 == libc::SOCK_DGRAM;
        let stream = diag.sock_type as i32 == libc::SOCK_STREAM;
        let mut messages: Vec<UnixMessage> = Vec::new();
        let mut total = 0usize;
        loop {
            let peeked = peek(copy, MESSAGE_MAX, dgram).map_err(|e| {
                self.refuse(
                    fd,
                    what(&format!(
                        "whose unread message {} cannot be read: {e}",
                        messages.len() + 1
                    )),
                )
            })?;
            match peeked {
                Peeked::Empty => return Ok(messages),
                Peeked::Unknown(cmsg) => {
                    return Err(self.refuse(
                        fd,
                        what(&format!(
                            "whose unread message {} carries {cmsg}, which crest cannot \
                             capture",
                            messages.len() + 1
                        )),
                    ))
                }
                Peeked::Data {
                    data,
                    from,
                    truncated,
                    fds,
                    creds,
                } => {
                    if truncated {
                        return Err(self.refuse(
                            fd,
                            what(&format!(
                                "holding an unread message larger than the {MESSAGE_MAX} bytes \
                                 crest captures"
                            )),
                        ));
                    }
                    if data.is_empty() && !fds.is_empty() {
                        return Err(self.refuse(
                            fd,
                            what(&format!(
                                "holding an empty message that carries {} file(s) \
                                 (SCM_RIGHTS) after {} others, which crest cannot step over to \
                                 capture the rest",
                                fds.len(),
                                messages.len()
                            )),
                        ));
                    }
                    if data.is_empty() {
                        // End of file of a stream or of a seqpacket socket shut down for
                        // reading, or an empty record, which a peek offset cannot step over.
                        if stream || (diag.shutdown & 1 != 0 && messages.is_empty()) {
                            return Ok(messages);
                        }
                        return Err(self.refuse(
                            fd,
                            what(&format!(
                                "holding an empty message after {} others, which crest cannot \
                                 step over to capture the rest",
                                messages.len()
                            )),
                        ));
                    }
                    total += data.len();
                    if total > QUEUED_MAX as usize {
                        return Err(self.refuse(
                            fd,
                            what(&format!(
                                "holding more than the {QUEUED_MAX} unread bytes crest captures"
                            )),
                        ));
                    }
                    let numbers = fds.iter().map(|f| f.as_raw_fd() as u32).collect();
                    self.passed.extend(fds);
                    messages.push(UnixMessage {
                        from,
                        data,
                        fds: numbers,
                        creds,
                    });
                }
            }
        }
    }

    /// The files that the queues read so far carry, open in crest (each message names them by
    /// these fds' numbers); the caller keeps them open while it needs the numbers.
    pub fn take_passed(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.passed)
    }
}

/// Finds the socket file with inode `ino` on device `dev`: at `bound` (the name it was bound
/// to) or, when renamed since, in the same directory. Returns its path and metadata.
fn find_socket_file(bound: &Path, ino: u64, dev: u64) -> Option<(PathBuf, Metadata)> {
    let is_it = |md: &Metadata| md.file_type().is_socket() && md.ino() == ino && md.dev() == dev;
    if let Ok(md) = std::fs::symlink_metadata(bound) {
        if is_it(&md) {
            return Some((bound.to_path_buf(), md));
        }
    }
    let dir = bound.parent()?;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        if entry.ino() != ino {
            continue;
        }
        if let Ok(md) = entry.metadata() {
            if is_it(&md) {
                return Some((entry.path(), md));
            }
        }
    }
    None
}

/// The SOL_SOCKET options of the UNIX socket `sock` that differ from those of a fresh one of
/// type `sock_type`, but SO_PASSCRED and the buffer sizes, which [`UnixSocket`] holds apart.
fn unix_options(sock: &OwnedFd, sock_type: i32) -> Result<Vec<crate::images::SetSockOpt>, Errno> {
    use crate::files::sockopts;
    use std::os::fd::AsFd;
    let fresh = sockopts::socket(libc::AF_UNIX, sock_type, 0)?;
    let apart = [
        libc::SO_PASSCRED,
        libc::SO_SNDBUF,
        libc::SO_RCVBUF,
        libc::SO_SNDBUFFORCE,
        libc::SO_RCVBUFFORCE,
    ];
    Ok(
        sockopts::differing(sock.as_fd(), fresh.as_fd(), &[libc::SOL_SOCKET])
            .into_iter()
            .filter(|o| !(o.level == libc::SOL_SOCKET && apart.contains(&o.name)))
            .collect(),
    )
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

/// getpeername(2) as the kernel reports names (a leading NUL for an abstract one).
fn peer_name(fd: &OwnedFd) -> Result<Vec<u8>, Errno> {
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: addr and len are valid for writes of the sizes given.
    let r = unsafe {
        libc::getpeername(
            fd.as_raw_fd(),
            (&mut addr as *mut libc::sockaddr_un).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    let off = std::mem::offset_of!(libc::sockaddr_un, sun_path);
    let n = (len as usize).saturating_sub(off).min(addr.sun_path.len());
    let raw: Vec<u8> = addr.sun_path[..n].iter().map(|c| *c as u8).collect();
    Ok(match raw.first() {
        Some(0) => raw,
        _ => raw.split(|b| *b == 0).next().unwrap_or(&[]).to_vec(),
    })
}

/// `setsockopt(SOL_SOCKET, opt)` of an int option.
fn set_sockopt(fd: &OwnedFd, opt: libc::c_int, v: i32) -> Result<(), Errno> {
    // SAFETY: v is a valid int of the size given.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

enum Peeked {
    /// What was read; `from` the sender's name (datagrams), `truncated` when the message was
    /// longer than the buffer; the files it carries (now open in crest) and the sender's
    /// credentials when the receiver has SO_PASSCRED.
    Data {
        data: Vec<u8>,
        from: Vec<u8>,
        truncated: bool,
        fds: Vec<OwnedFd>,
        creds: Option<MessageCreds>,
    },
    /// Nothing queued.
    Empty,
    /// The data came with a control message crest does not capture (named; any fds received
    /// were closed).
    Unknown(String),
}

/// Peeks at up to `n` queued bytes (one record unless a stream) without consuming them.
fn peek(fd: &OwnedFd, n: usize, with_name: bool) -> Result<Peeked, Errno> {
    let mut data = vec![0u8; n];
    // Room for the most fds one message can carry (SCM_MAX_FD, 253) and the credentials.
    let mut control = [0u64; 192];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: n,
    };
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    // SAFETY: msghdr is plain old data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    if with_name {
        msg.msg_name = (&mut addr as *mut libc::sockaddr_un).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    }
    let got = loop {
        // SAFETY: msg points at iov (n writable bytes of `data`), `addr` and `control`, all
        // alive.
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
        if r < 0 && Errno::last() == Errno::EAGAIN {
            return Ok(Peeked::Empty);
        }
        if r < 0 {
            return Err(Errno::last());
        }
        break r as usize;
    };
    let (fds, creds, unknown) = control_messages(&msg);
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Ok(Peeked::Unknown(
            "more control data than crest reads (over 253 file descriptors?)".into(),
        ));
    }
    if let Some(unknown) = unknown {
        return Ok(Peeked::Unknown(unknown));
    }
    data.truncate(got);
    let from = if with_name {
        let off = std::mem::offset_of!(libc::sockaddr_un, sun_path);
        let len = (msg.msg_namelen as usize).saturating_sub(off);
        let path: Vec<u8> = addr.sun_path[..len.min(addr.sun_path.len())]
            .iter()
            .map(|c| *c as u8)
            .collect();
        match path.first() {
            Some(0) => path,
            _ => path.split(|b| *b == 0).next().unwrap_or(&[]).to_vec(),
        }
    } else {
        Vec::new()
    };
    Ok(Peeked::Data {
        data,
        from,
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
        fds,
        creds,
    })
}

/// The fds (now crest's own), the credentials and the name of any other control message that
/// recvmsg put in `msg`.
fn control_messages(msg: &libc::msghdr) -> (Vec<OwnedFd>, Option<MessageCreds>, Option<String>) {
    let mut fds = Vec::new();
    let mut creds = None;
    let mut unknown = None;
    // SAFETY: msg was filled by recvmsg; the CMSG_* macros walk its control buffer within
    // msg_controllen, and each SCM_RIGHTS fd is a new descriptor of crest's that nothing else
    // owns.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            let bytes = ((*c).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
            match ((*c).cmsg_level, (*c).cmsg_type) {
                (libc::SOL_SOCKET, libc::SCM_RIGHTS) => {
                    let ints = data as *const libc::c_int;
                    for i in 0..bytes / std::mem::size_of::<libc::c_int>() {
                        let raw = std::ptr::read_unaligned(ints.add(i));
                        fds.push(<OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw));
                    }
                }
                (libc::SOL_SOCKET, libc::SCM_CREDENTIALS)
                    if bytes >= std::mem::size_of::<libc::ucred>() =>
                {
                    let u = std::ptr::read_unaligned(data as *const libc::ucred);
                    creds = Some(MessageCreds {
                        pid: u.pid,
                        uid: u.uid,
                        gid: u.gid,
                    });
                }
                (libc::SOL_SOCKET, SCM_SECURITY) => {
                    unknown = Some("a security label (SCM_SECURITY, SO_PASSSEC)".to_string())
                }
                (level, ty) => {
                    unknown = Some(format!("a control message of level {level} type {ty}"))
                }
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    (fds, creds, unknown)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};

    /// Records our own fd through the same path a dump takes (pidfd_getfd on ourselves).
    fn record_own<F: AsFd + AsRawFd>(f: &F) -> Result<FileIdentity, DumpError> {
        let md = std::fs::metadata(format!("/proc/self/fd/{}", f.as_raw_fd())).unwrap();
        Sockets::new(std::process::id() as i32).record(f.as_raw_fd(), &md)
    }

    fn sock(ident: &FileIdentity) -> &UnixSocket {
        match &ident.kind {
            FileKind::UnixSocket(s) => s,
            other => panic!("not a socket: {other:?}"),
        }
    }

    fn state(ident: &FileIdentity) -> &UnixSocketState {
        &sock(ident).state
    }

    fn bytes(ident: &FileIdentity) -> Vec<Vec<u8>> {
        sock(ident).queue.iter().map(|m| m.data.clone()).collect()
    }

    #[test]
    fn pair_ends_are_recorded_with_their_unread_bytes_and_shutdown() {
        let (a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"left behind").unwrap();
        // While the peer is open, the end is recorded as connected to it (whether the peer is
        // in the tree is the tree's question, unix_tree.rs).
        let b_ino = nix::sys::stat::fstat(&b).unwrap().st_ino;
        b.shutdown(std::net::Shutdown::Write).unwrap();
        let ident = record_own(&a).unwrap();
        assert_eq!(state(&ident), &UnixSocketState::Connected { peer: b_ino });
        assert_eq!(bytes(&ident), vec![b"left behind".to_vec()]);
        assert_eq!(sock(&ident).shutdown, 1, "the peer shut down writing");
        assert_eq!(sock(record_own(&b).as_ref().unwrap()).shutdown, 2);
        drop(b);
        let ident = record_own(&a).unwrap();
        assert_eq!(ident.path, "");
        assert_eq!(state(&ident), &UnixSocketState::PeerClosed);
        assert_eq!(bytes(&ident), vec![b"left behind".to_vec()]);
        // The peek consumed nothing.
        let mut buf = [0u8; 32];
        let n = nix::unistd::read(&a, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"left behind");
    }

    #[test]
    fn records_and_datagrams_are_recorded_one_by_one_with_their_senders() {
        // SAFETY: socketpair into a valid array.
        let mut sv = [0; 2];
        assert_eq!(
            unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, sv.as_mut_ptr()) },
            0
        );
        // SAFETY: fresh descriptors we own.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) };
        for m in [&b"one"[..], b"two!", b"three"] {
            nix::unistd::write(&b, m).unwrap();
        }
        let ident = record_own(&a).unwrap();
        assert_eq!(
            bytes(&ident),
            vec![b"one".to_vec(), b"two!".to_vec(), b"three".to_vec()]
        );
        assert!(sock(&ident).queue.iter().all(|m| m.from.is_empty()));
        // The walk turned the peek offset off again and consumed nothing.
        assert_eq!(sockopt(&a, libc::SO_PEEK_OFF).unwrap(), -1);
        let mut buf = [0u8; 8];
        assert_eq!(nix::unistd::read(&a, &mut buf).unwrap(), 3);

        let rx_name = format!("crest-test-rx-{}", std::process::id());
        let tx_name = format!("crest-test-tx-{}", std::process::id());
        let addr = |n: &str| {
            <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(n)
                .unwrap()
        };
        let rx = UnixDatagram::bind_addr(&addr(&rx_name)).unwrap();
        let tx = UnixDatagram::bind_addr(&addr(&tx_name)).unwrap();
        let anon = UnixDatagram::unbound().unwrap();
        tx.send_to_addr(b"named", &addr(&rx_name)).unwrap();
        anon.send_to_addr(b"anonymous", &addr(&rx_name)).unwrap();
        let ident = record_own(&rx).unwrap();
        let s = sock(&ident);
        assert_eq!(s.state, UnixSocketState::Unconnected);
        assert_eq!(
            s.name,
            UnixName::Abstract {
                name: rx_name.as_bytes().to_vec()
            }
        );
        let mut from_tx = vec![0];
        from_tx.extend_from_slice(tx_name.as_bytes());
        assert_eq!(
            s.queue,
            vec![
                UnixMessage {
                    from: from_tx,
                    data: b"named".to_vec(),
                    fds: vec![],
                    creds: None,
                },
                UnixMessage {
                    from: vec![],
                    data: b"anonymous".to_vec(),
                    fds: vec![],
                    creds: None,
                }
            ]
        );
        // A datagram socket that connected is connected whatever its diag state says.
        anon.connect_addr(&addr(&rx_name)).unwrap();
        let rx_ino = nix::sys::stat::fstat(&rx).unwrap().st_ino;
        assert_eq!(
            state(&record_own(&anon).unwrap()),
            &UnixSocketState::Connected { peer: rx_ino }
        );
        assert_eq!(
            state(&record_own(&rx).unwrap()),
            &UnixSocketState::Unconnected
        );
    }

    #[test]
    fn passcred_and_buffer_sizes_are_recorded() {
        let (a, _b) = UnixStream::pair().unwrap();
        let fd = a.try_clone().unwrap().into();
        set_sockopt(&fd, libc::SO_PASSCRED, 1).unwrap();
        set_sockopt(&fd, libc::SO_SNDBUF, 100_000).unwrap();
        let s = sock(&record_own(&a).unwrap()).clone();
        assert!(s.passcred);
        assert_eq!(s.sndbuf, 200_000);
        assert!(s.rcvbuf > 0);
    }

    #[test]
    fn passed_fds_are_kept_open_with_their_message_and_left_in_place() {
        let (a, b) = UnixStream::pair().unwrap();
        let null = std::fs::File::open("/dev/null").unwrap();
        (&b).write_all(b"ab").unwrap();
        send_with_fd(&b, b'x', null.as_raw_fd());
        (&b).write_all(b"cd").unwrap();
        drop(b);
        let md = std::fs::metadata(format!("/proc/self/fd/{}", a.as_raw_fd())).unwrap();
        let mut sockets = Sockets::new(std::process::id() as i32);
        let ident = sockets.record(a.as_raw_fd(), &md).unwrap();
        let passed = sockets.take_passed();
        assert_eq!(passed.len(), 1, "one file in flight");
        let queue = &sock(&ident).queue;
        let all: Vec<u8> = queue.iter().flat_map(|m| m.data.clone()).collect();
        assert_eq!(all, b"abxcd");
        // The file goes with the message holding the byte it was sent with, and no other.
        let with: Vec<&UnixMessage> = queue.iter().filter(|m| !m.fds.is_empty()).collect();
        assert_eq!(with.len(), 1, "{queue:?}");
        assert!(with[0].data.ends_with(b"x"), "{queue:?}");
        assert_eq!(with[0].fds, vec![passed[0].as_raw_fd() as u32]);
        assert_eq!(queue.last().unwrap().data, b"cd");
        let held = nix::sys::stat::fstat(&passed[0]).unwrap();
        let orig = nix::sys::stat::fstat(&null).unwrap();
        assert_eq!((held.st_dev, held.st_ino), (orig.st_dev, orig.st_ino));
        // Nothing was consumed, and the peek offset is off again.
        assert_eq!(
            sockopt(&a.try_clone().unwrap().into(), libc::SO_PEEK_OFF).unwrap(),
            -1
        );
        let mut buf = [0u8; 2];
        assert_eq!(nix::unistd::read(&a, &mut buf).unwrap(), 2);
        assert_eq!(&buf, b"ab");
    }

    #[test]
    fn credentials_are_recorded_with_each_message() {
        let (a, b) = UnixStream::pair().unwrap();
        let fd: OwnedFd = a.try_clone().unwrap().into();
        set_sockopt(&fd, libc::SO_PASSCRED, 1).unwrap();
        (&b).write_all(b"c").unwrap();
        let ident = record_own(&a).unwrap();
        let queue = &sock(&ident).queue;
        assert_eq!(queue.len(), 1);
        assert_eq!(queue[0].data, b"c");
        assert_eq!(
            queue[0].creds,
            Some(MessageCreds {
                pid: std::process::id() as i32,
                uid: nix::unistd::getuid().as_raw(),
                gid: nix::unistd::getgid().as_raw(),
            })
        );
    }

    #[test]
    fn an_empty_record_carrying_files_is_refused() {
        let mut sv = [0; 2];
        // SAFETY: socketpair into a valid array.
        assert_eq!(
            unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, sv.as_mut_ptr()) },
            0
        );
        // SAFETY: fresh descriptors we own.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) };
        let null = std::fs::File::open("/dev/null").unwrap();
        crate::restore::scm::send_message(&b, b"", None, &[null.as_raw_fd()], None).unwrap();
        let md = std::fs::metadata(format!("/proc/self/fd/{}", a.as_raw_fd())).unwrap();
        let err = Sockets::new(std::process::id() as i32)
            .record(a.as_raw_fd(), &md)
            .unwrap_err()
            .to_string();
        assert!(err.contains("empty message that carries 1 file"), "{err}");
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
        assert_eq!(sock(&ident).name, UnixName::Unnamed);
        assert_eq!(sock(&ident).sock_type, libc::SOCK_SEQPACKET as u32);
    }

    #[test]
    fn renamed_listener_is_found_with_its_waiting_connections_and_bound_idle_sockets_too() {
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
            sock(&ident).name,
            UnixName::Path {
                bound: bound.to_str().unwrap().into(),
                uid: 0,
                gid: 0,
                dir: String::new(),
                removed: false
            }
        );
        assert_eq!(
            state(&ident),
            &UnixSocketState::Listening {
                backlog: 5,
                pending: vec![]
            }
        );

        let c = UnixStream::connect(&path).unwrap();
        let ident = record_own(&l).unwrap();
        let UnixSocketState::Listening { pending, .. } = state(&ident) else {
            panic!("{ident:?}")
        };
        assert_eq!(pending.len(), 1, "the embryo is listed");
        drop(l.accept().unwrap());
        drop(c);

        std::fs::remove_file(&path).unwrap();
        let ident = record_own(&l).unwrap();
        assert_eq!(ident.path, bound.to_str().unwrap());
        assert!(matches!(
            sock(&ident).name,
            UnixName::Path { removed: true, .. }
        ));

        // Bound, neither listening nor connected.
        let idle_path = dir.path().join("idle");
        // SAFETY: socket(2) takes only integers.
        let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        // SAFETY: raw is a fresh descriptor we own.
        let idle = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, b) in addr
            .sun_path
            .iter_mut()
            .zip(idle_path.as_os_str().as_bytes())
        {
            *d = *b as libc::c_char;
        }
        // SAFETY: addr is a valid sockaddr_un of the size given.
        let r = unsafe {
            libc::bind(
                idle.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0);
        let ident = record_own(&idle).unwrap();
        assert_eq!(state(&ident), &UnixSocketState::Unconnected);
        assert_eq!(ident.path, idle_path.to_str().unwrap());
    }

    #[test]
    fn other_families_are_refused_by_name() {
        // A vsock socket if this kernel has them, else a Bluetooth or CAN one: families crest
        // does not dump.
        let made = [
            libc::AF_VSOCK,
            libc::AF_BLUETOOTH,
            libc::AF_CAN,
            libc::AF_TIPC,
        ]
        .into_iter()
        .find_map(|family| {
            let ty = if family == libc::AF_CAN {
                libc::SOCK_RAW
            } else {
                libc::SOCK_SEQPACKET
            };
            // SAFETY: socket(2) takes only integers.
            let raw = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, 0) };
            // SAFETY: raw is a fresh descriptor nothing else owns.
            (raw >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) })
        });
        let Some(s) = made else {
            eprintln!("SKIPPED other_families_are_refused_by_name: no vsock, Bluetooth, CAN or TIPC sockets here");
            return;
        };
        let err = record_own(&s).unwrap_err().to_string();
        assert!(err.contains("crest dumps TCP, UDP"), "{err}");
        assert!(err.contains("close it before the dump"), "{err}");
    }
}
