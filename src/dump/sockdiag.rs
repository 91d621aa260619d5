//! What the kernel knows about one AF_UNIX socket, asked through NETLINK_SOCK_DIAG
//! (`net/unix/diag.c`, the interface `ss -x` uses).
//!
//! Neither the socket itself nor /proc tells what a restore needs: /proc/net/unix shows no peer
//! and no backlog, and getsockname(2) shows the name a socket was bound to, not where its socket
//! file is now (HotSpot binds `.java_pid<pid>.tmp` and renames it). sock_diag reports the peer's
//! inode (0 once the peer is closed: the kernel orphans a released socket), the bound file's
//! inode and device, the listen backlog, the pending connections, the queued bytes and the
//! shutdown state, for one socket chosen by inode number.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;

/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `UDIAG_SHOW_*` (linux/unix_diag.h): what to report.
const UDIAG_SHOW_NAME: u32 = 0x01;
const UDIAG_SHOW_VFS: u32 = 0x02;
const UDIAG_SHOW_PEER: u32 = 0x04;
const UDIAG_SHOW_ICONS: u32 = 0x08;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
/// `UNIX_DIAG_*` attribute types.
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_ICONS: u16 = 3;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_SHUTDOWN: u16 = 6;
/// `struct nlmsghdr` and `struct unix_diag_msg` sizes.
const NLMSG_HDR: usize = 16;
const UNIX_DIAG_MSG: usize = 16;

/// Socket states as sock_diag reports them (the TCP_* values the UNIX code borrows).
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_LISTEN: u8 = 10;

/// Errors asking the kernel about a socket.
#[derive(Debug, thiserror::Error)]
pub enum SockDiagError {
    /// The kernel has no UNIX sock_diag (CONFIG_UNIX_DIAG, module `unix_diag`).
    #[error(
        "the kernel does not answer UNIX socket queries ({errno}); load the unix_diag module \
         (modprobe unix_diag) or use a kernel built with CONFIG_UNIX_DIAG"
    )]
    Unavailable { errno: Errno },
    /// The socket is not known to the kernel's UNIX socket table (not AF_UNIX, or gone).
    #[error("the kernel knows no UNIX socket with inode {ino}")]
    NotFound { ino: u64 },
    #[error("sock_diag query for socket inode {ino}: {what}: {errno}")]
    Io {
        ino: u64,
        what: &'static str,
        errno: Errno,
    },
    #[error("sock_diag answered with a malformed message for socket inode {ino}: {detail}")]
    Malformed { ino: u64, detail: String },
}

/// The kernel's account of one AF_UNIX socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnixDiag {
    pub ino: u64,
    /// SOCK_STREAM, SOCK_DGRAM or SOCK_SEQPACKET.
    pub sock_type: u8,
    /// TCP_ESTABLISHED (connected), TCP_CLOSE (unconnected), TCP_LISTEN, ...
    pub state: u8,
    /// The address it is bound to (sun_path bytes, a leading NUL for an abstract name), if any.
    pub name: Option<Vec<u8>>,
    /// The socket file it created when bound to a path: (inode, device in userspace encoding).
    pub vfs: Option<(u64, u64)>,
    /// The peer's inode; 0 when the peer has been closed.
    pub peer: Option<u64>,
    /// Inodes of the connections waiting to be accepted (listening sockets).
    pub pending: Vec<u64>,
    /// Listening: connections queued and the backlog. Otherwise: bytes unread in the receive
    /// queue (for datagrams, the size of the next one) and bytes sent but not yet read by the peer.
    pub rqueue: u32,
    pub wqueue: u32,
    /// RCV_SHUTDOWN (1) | SEND_SHUTDOWN (2).
    pub shutdown: u8,
}

/// A NETLINK_SOCK_DIAG socket, close-on-exec.
fn diag_socket() -> Result<OwnedFd, SockDiagError> {
    crate::net::sock::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_SOCK_DIAG)
        .map_err(|errno| SockDiagError::Unavailable { errno })
}

/// A SOCK_DIAG_BY_FAMILY request (NLM_F_REQUEST and `flags`) for the AF_UNIX sockets of every
/// state with inode `ino`, asking for the attributes `show`.
fn unix_request(flags: i32, ino: u32, show: u32) -> Vec<u8> {
    let mut req = Vec::with_capacity(NLMSG_HDR + 24);
    req.extend_from_slice(&((NLMSG_HDR + 24) as u32).to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&((libc::NLM_F_REQUEST | flags) as u16).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // sequence number
    req.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
                                                // struct unix_diag_req
    req.push(libc::AF_UNIX as u8);
    req.push(0); // protocol
    req.extend_from_slice(&0u16.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    req.extend_from_slice(&ino.to_ne_bytes());
    req.extend_from_slice(&show.to_ne_bytes());
    // No cookie (INET_DIAG_NOCOOKIE): the inode alone picks the socket.
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req
}

/// Asks the kernel about the AF_UNIX socket with inode `ino`.
pub fn query(ino: u64) -> Result<UnixDiag, SockDiagError> {
    let ino32 = u32::try_from(ino).map_err(|_| SockDiagError::NotFound { ino })?;
    let io = |what: &'static str| SockDiagError::Io {
        ino,
        what,
        errno: Errno::last(),
    };
    let nl = diag_socket()?;
    let show =
        UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN;
    let req = unix_request(0, ino32, show);
    // SAFETY: req is a readable buffer of req.len() bytes; no address (the kernel is the peer).
    let sent = unsafe { libc::send(nl.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if sent < 0 {
        let errno = Errno::last();
        return Err(match errno {
            Errno::ENOENT | Errno::EOPNOTSUPP | Errno::EPROTONOSUPPORT => {
                SockDiagError::Unavailable { errno }
            }
            _ => SockDiagError::Io {
                ino,
                what: "send",
                errno,
            },
        });
    }
    // Large enough for a listening socket with thousands of pending connections.
    let mut buf = vec![0u8; 256 * 1024];
    let n = loop {
        // SAFETY: buf is a writable buffer of buf.len() bytes.
        let n = unsafe {
            libc::recv(
                nl.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
            )
        };
        if n < 0 && Errno::last() == Errno::EINTR {
            continue;
        }
        if n < 0 {
            return Err(io("recv"));
        }
        break n as usize;
    };
    if n > buf.len() {
        return Err(SockDiagError::Malformed {
            ino,
            detail: format!("an answer of {n} bytes, larger than {}", buf.len()),
        });
    }
    parse(ino, &buf[..n])
}

/// The socket files (inode, device) that a live AF_UNIX socket of crest's network namespace
/// is bound to: a file listed here is in use, one missing is stale.
pub fn bound_files() -> Result<std::collections::HashSet<(u64, u64)>, SockDiagError> {
    let io = |what: &'static str| SockDiagError::Io {
        ino: 0,
        what,
        errno: Errno::last(),
    };
    let nl = diag_socket()?;
    // Inode 0: every socket.
    let req = unix_request(libc::NLM_F_DUMP, 0, UDIAG_SHOW_VFS);
    // SAFETY: req is a readable buffer of req.len() bytes.
    if unsafe { libc::send(nl.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(SockDiagError::Unavailable {
            errno: Errno::last(),
        });
    }
    let mut out = std::collections::HashSet::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: buf is a writable buffer of buf.len() bytes.
        let n = unsafe { libc::recv(nl.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 && Errno::last() == Errno::EINTR {
            continue;
        }
        if n < 0 {
            return Err(io("recv"));
        }
        let mut at = 0usize;
        let n = n as usize;
        while at + NLMSG_HDR <= n {
            let len = u32_at(&buf, at) as usize;
            if len < NLMSG_HDR || at + len > n {
                return Err(SockDiagError::Malformed {
                    ino: 0,
                    detail: format!("a dump message of length {len} at {at}"),
                });
            }
            let ty = u16_at(&buf, at + 4);
            if ty == libc::NLMSG_DONE as u16 {
                return Ok(out);
            }
            let d = parse_msg(None, &buf[at..at + len])?;
            if let Some(vfs) = d.vfs {
                out.insert(vfs);
            }
            at += len.next_multiple_of(4);
        }
        if n == 0 {
            return Ok(out);
        }
    }
}

/// A socket name for messages: the path, or `@name` for an abstract one.
pub fn name_text(name: &[u8]) -> String {
    match name.split_first() {
        Some((0, rest)) => format!("@{}", String::from_utf8_lossy(rest)),
        _ => String::from_utf8_lossy(name).into_owned(),
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses one answer: an `nlmsghdr` with either an error or a `unix_diag_msg` and attributes.
fn parse(ino: u64, msg: &[u8]) -> Result<UnixDiag, SockDiagError> {
    parse_msg(Some(ino), msg)
}

/// [`parse`] of one message of a dump (`expect`: None) or of an answer about one inode.
fn parse_msg(expect: Option<u64>, msg: &[u8]) -> Result<UnixDiag, SockDiagError> {
    let ino = expect.unwrap_or(0);
    let bad = |detail: String| SockDiagError::Malformed { ino, detail };
    if msg.len() < NLMSG_HDR {
        return Err(bad(format!("{} bytes, shorter than a header", msg.len())));
    }
    let len = (u32_at(msg, 0) as usize).min(msg.len());
    let ty = u16_at(msg, 4);
    if ty == libc::NLMSG_ERROR as u16 {
        if len < NLMSG_HDR + 4 {
            return Err(bad("a truncated error".into()));
        }
        let err = -(u32_at(msg, NLMSG_HDR) as i32);
        return Err(match Errno::from_raw(err) {
            Errno::ENOENT => SockDiagError::NotFound { ino },
            errno @ (Errno::EOPNOTSUPP | Errno::EINVAL) => SockDiagError::Unavailable { errno },
            errno => SockDiagError::Io {
                ino,
                what: "query",
                errno,
            },
        });
    }
    if ty != SOCK_DIAG_BY_FAMILY {
        return Err(bad(format!("message type {ty}")));
    }
    let body = &msg[NLMSG_HDR..len];
    if body.len() < UNIX_DIAG_MSG {
        return Err(bad(format!("a body of {} bytes", body.len())));
    }
    let mut d = UnixDiag {
        ino: u64::from(u32_at(body, 4)),
        sock_type: body[1],
        state: body[2],
        ..UnixDiag::default()
    };
    if expect.is_some() && d.ino != ino {
        return Err(bad(format!("the answer is about inode {}", d.ino)));
    }
    let mut at = UNIX_DIAG_MSG;
    while at + 4 <= body.len() {
        let alen = u16_at(body, at) as usize;
        let aty = u16_at(body, at + 2) & 0x3fff; // without NLA_F_NESTED / NLA_F_NET_BYTEORDER
        if alen < 4 || at + alen > body.len() {
            return Err(bad(format!("attribute {aty} of length {alen} at {at}")));
        }
        let payload = &body[at + 4..at + alen];
        let need = |n: usize| {
            if payload.len() < n {
                Err(bad(format!("attribute {aty} of {} bytes", payload.len())))
            } else {
                Ok(())
            }
        };
        match aty {
            UNIX_DIAG_NAME => {
                // The kernel copies sun_path as bound; a path name ends with its NUL.
                let name = match payload.first() {
                    Some(0) => payload.to_vec(),
                    _ => payload.split(|b| *b == 0).next().unwrap_or(&[]).to_vec(),
                };
                d.name = Some(name);
            }
            UNIX_DIAG_VFS => {
                need(8)?;
                let dev = u32_at(payload, 4);
                // The kernel's dev_t: 12-bit major above a 20-bit minor (MINORBITS).
                let dev = libc::makedev(dev >> 20, dev & 0xf_ffff);
                d.vfs = Some((u64::from(u32_at(payload, 0)), dev));
            }
            UNIX_DIAG_PEER => {
                need(4)?;
                d.peer = Some(u64::from(u32_at(payload, 0)));
            }
            UNIX_DIAG_ICONS => {
                d.pending = payload
                    .chunks_exact(4)
                    .map(|c| u64::from(u32_at(c, 0)))
                    .collect();
            }
            UNIX_DIAG_RQLEN => {
                need(8)?;
                d.rqueue = u32_at(payload, 0);
                d.wqueue = u32_at(payload, 4);
            }
            UNIX_DIAG_SHUTDOWN => {
                need(1)?;
                d.shutdown = payload[0];
            }
            _ => {}
        }
        at += alen.next_multiple_of(4);
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::net::{UnixListener, UnixStream};

    fn ino<F: AsFd>(f: &F) -> u64 {
        nix::sys::stat::fstat(f.as_fd()).unwrap().st_ino
    }

    #[test]
    fn closed_peer_reads_as_inode_zero_with_both_directions_shut() {
        use std::io::Write;
        let (a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"abc").unwrap();
        let peer = ino(&b);
        let live = query(ino(&a)).unwrap();
        assert_eq!(live.state, TCP_ESTABLISHED);
        assert_eq!(live.peer, Some(peer));
        assert_eq!(live.rqueue, 3);
        assert_eq!(live.name, None);
        drop(b);
        let d = query(ino(&a)).unwrap();
        assert_eq!(d.sock_type as i32, libc::SOCK_STREAM);
        assert_eq!(d.state, TCP_ESTABLISHED);
        assert!(matches!(d.peer, None | Some(0)), "{d:?}");
        assert_eq!(d.shutdown, 3);
        assert_eq!(d.rqueue, 3);
    }

    #[test]
    fn listener_reports_backlog_file_and_pending_connections() {
        let dir = tempfile::tempdir().unwrap();
        let bound = dir.path().join("s.tmp");
        let l = UnixListener::bind(&bound).unwrap();
        // std listens with backlog 128; set ours as HotSpot does.
        // SAFETY: listen on a socket we own; it only changes the backlog of a listener.
        assert_eq!(unsafe { libc::listen(l.as_raw_fd(), 5) }, 0);
        let moved = dir.path().join("s");
        std::fs::rename(&bound, &moved).unwrap();
        let d = query(ino(&l)).unwrap();
        assert_eq!(d.state, TCP_LISTEN);
        assert_eq!(d.wqueue, 5, "backlog");
        assert_eq!(d.rqueue, 0);
        assert_eq!(
            d.name.as_deref(),
            Some(bound.as_os_str().as_encoded_bytes())
        );
        let md = std::fs::symlink_metadata(&moved).unwrap();
        assert_eq!(d.vfs, Some((md.ino(), md.dev())));

        let _c = UnixStream::connect(&moved).unwrap();
        let d = query(ino(&l)).unwrap();
        assert_eq!(d.rqueue, 1);
        assert_eq!(d.pending.len(), 1);
    }

    #[test]
    fn bound_files_lists_live_sockets_only() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live");
        let l = UnixListener::bind(&live).unwrap();
        let stale = dir.path().join("stale");
        drop(UnixListener::bind(&stale).unwrap());
        let files = bound_files().unwrap();
        let key = |p: &std::path::Path| {
            let md = std::fs::symlink_metadata(p).unwrap();
            (md.ino(), md.dev())
        };
        assert!(files.contains(&key(&live)));
        assert!(!files.contains(&key(&stale)));
        drop(l);
    }

    #[test]
    fn closed_socket_is_not_found() {
        let (a, b) = UnixStream::pair().unwrap();
        let gone = ino(&a);
        drop((a, b));
        assert!(matches!(query(gone), Err(SockDiagError::NotFound { .. })));
    }
}
