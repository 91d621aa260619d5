//! What the kernel knows about one IP datagram socket that the socket itself does not say,
//! asked through NETLINK_SOCK_DIAG (`net/ipv4/inet_diag.c`, `udp_diag.c`: the interface
//! `ss -u` uses): its shutdown state and the memory its receive queue holds.
//!
//! shutdown(2) of a UDP socket sets the same bits as a TCP one (RCV_SHUTDOWN, SEND_SHUTDOWN),
//! but no getsockopt reads them, and poll shows only the read side. The kernel lists every
//! UDP (or UDP-Lite) socket of the network namespace with INET_DIAG_SHUTDOWN; crest picks the
//! one with the socket's inode.

use std::os::fd::AsRawFd;

use nix::errno::Errno;

/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `INET_DIAG_SHUTDOWN` (linux/inet_diag.h): a u8 of RCV_SHUTDOWN | SEND_SHUTDOWN.
const INET_DIAG_SHUTDOWN: u16 = 8;
/// `struct nlmsghdr`, `struct inet_diag_req_v2` and `struct inet_diag_msg` sizes.
const NLMSG_HDR: usize = 16;
const REQ_V2: usize = 56;
const DIAG_MSG: usize = 72;
/// Offsets in `struct inet_diag_msg` (after family, state, timer, retrans and the 48-byte id).
const MSG_RQUEUE: usize = 56;
const MSG_INODE: usize = 68;
const NLMSG_DONE: u16 = 3;
const NLMSG_ERROR: u16 = 2;

/// RCV_SHUTDOWN and SEND_SHUTDOWN, as the kernel keeps them in `sk_shutdown`.
pub const RCV_SHUTDOWN: u8 = 1;
pub const SEND_SHUTDOWN: u8 = 2;

/// The kernel's account of one datagram socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DatagramDiag {
    /// RCV_SHUTDOWN | SEND_SHUTDOWN.
    pub shutdown: u8,
    /// Bytes of receive-queue memory in use (0: nothing queued).
    pub rqueue: u32,
}

/// Asks the kernel about the socket with inode `ino` among the sockets of `family`
/// (AF_INET, AF_INET6) and `protocol` (IPPROTO_UDP, IPPROTO_UDPLITE). Ok(None): the kernel
/// lists no such socket; Err: it cannot be asked (no udp_diag, or the netlink socket fails).
pub fn datagram(family: i32, protocol: i32, ino: u64) -> Result<Option<DatagramDiag>, Errno> {
    let nl = super::sock::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_SOCK_DIAG)?;
    let mut req = Vec::with_capacity(NLMSG_HDR + REQ_V2);
    req.extend_from_slice(&((NLMSG_HDR + REQ_V2) as u32).to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // sequence number
    req.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    req.push(family as u8);
    req.push(protocol as u8);
    req.push(0); // no extensions: INET_DIAG_SHUTDOWN comes with every message
    req.push(0);
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    req.extend_from_slice(&[0u8; 48]); // an all-zero id: every address and port
                                       // SAFETY: req is a readable buffer of req.len() bytes; the kernel is the peer.
    if unsafe { libc::send(nl.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(Errno::last());
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut found = None;
    loop {
        // SAFETY: buf is writable for buf.len() bytes.
        let n = unsafe { libc::recv(nl.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            match Errno::last() {
                Errno::EINTR => continue,
                e => return Err(e),
            }
        }
        let data = &buf[..n as usize];
        if data.is_empty() {
            return Ok(found);
        }
        let mut off = 0;
        while off + NLMSG_HDR <= data.len() {
            let len = u32_at(data, off) as usize;
            let ty = u16_at(data, off + 4);
            if len < NLMSG_HDR || off + len > data.len() {
                return Err(Errno::EBADMSG);
            }
            match ty {
                NLMSG_DONE => return Ok(found),
                NLMSG_ERROR => {
                    let code = data
                        .get(off + NLMSG_HDR..off + NLMSG_HDR + 4)
                        .map_or(0, |b| i32::from_ne_bytes(b.try_into().unwrap()));
                    return Err(Errno::from_raw(-code));
                }
                _ => {
                    if let Some(d) = parse(&data[off + NLMSG_HDR..off + len], ino) {
                        found = Some(d);
                    }
                }
            }
            off += (len + 3) & !3;
        }
    }
}

/// The diag of one `inet_diag_msg` (and its attributes) if it is the socket `ino`'s.
fn parse(msg: &[u8], ino: u64) -> Option<DatagramDiag> {
    if msg.len() < DIAG_MSG || u64::from(u32_at(msg, MSG_INODE)) != ino {
        return None;
    }
    let mut d = DatagramDiag {
        shutdown: 0,
        rqueue: u32_at(msg, MSG_RQUEUE),
    };
    let mut at = DIAG_MSG;
    while at + 4 <= msg.len() {
        let len = u16_at(msg, at) as usize;
        let ty = u16_at(msg, at + 2);
        if len < 4 || at + len > msg.len() {
            break;
        }
        if ty == INET_DIAG_SHUTDOWN && len > 4 {
            d.shutdown = msg[at + 4];
        }
        at += (len + 3) & !3;
    }
    Some(d)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes(b[at..at + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn inode(fd: &std::net::UdpSocket) -> u64 {
        std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .unwrap()
            .ino()
    }

    #[test]
    fn shutdown_bits_and_queued_memory_of_udp_sockets_are_reported() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        a.connect(b.local_addr().unwrap()).unwrap();
        let ask = |s: &std::net::UdpSocket| {
            datagram(libc::AF_INET, libc::IPPROTO_UDP, inode(s))
                .expect("udp_diag answers")
                .expect("the socket is listed")
        };
        assert_eq!(ask(&a), DatagramDiag::default());
        a.send(b"queued").unwrap();
        assert!(ask(&b).rqueue > 0, "{:?}", ask(&b));
        // SAFETY: shutdown on a socket this test owns.
        assert_eq!(unsafe { libc::shutdown(a.as_raw_fd(), libc::SHUT_WR) }, 0);
        assert_eq!(ask(&a).shutdown, SEND_SHUTDOWN);
        // SAFETY: as above.
        assert_eq!(unsafe { libc::shutdown(a.as_raw_fd(), libc::SHUT_RD) }, 0);
        assert_eq!(ask(&a).shutdown, SEND_SHUTDOWN | RCV_SHUTDOWN);
        let gone = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let ino = inode(&gone);
        drop(gone);
        assert_eq!(datagram(libc::AF_INET, libc::IPPROTO_UDP, ino), Ok(None));
    }
}
