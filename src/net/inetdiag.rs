//! What the kernel knows about one IP datagram socket that the socket itself does not say,
//! asked through NETLINK_SOCK_DIAG (`net/ipv4/inet_diag.c`, `udp_diag.c`: the interface
//! `ss -u` uses): its shutdown state and the memory its receive queue holds.
//!
//! shutdown(2) of a UDP socket sets the same bits as a TCP one (RCV_SHUTDOWN, SEND_SHUTDOWN),
//! but no getsockopt reads them, and poll shows only the read side. The kernel lists every
//! UDP (or UDP-Lite) socket of the network namespace with INET_DIAG_SHUTDOWN; crest picks the
//! one with the socket's inode.

use nix::errno::Errno;

use super::diag::{attributes, u32_at};

/// `INET_DIAG_SHUTDOWN` (linux/inet_diag.h): a u8 of RCV_SHUTDOWN | SEND_SHUTDOWN.
const INET_DIAG_SHUTDOWN: u16 = 8;
/// `struct inet_diag_msg` size.
const DIAG_MSG: usize = 72;
/// Offsets in `struct inet_diag_msg` (after family, state, timer, retrans and the 48-byte id).
const MSG_RQUEUE: usize = 56;
const MSG_INODE: usize = 68;

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
    // struct inet_diag_req_v2: family, protocol, no extensions (INET_DIAG_SHUTDOWN comes with
    // every message), every state, an all-zero id (every address and port).
    let mut req = vec![family as u8, protocol as u8, 0, 0];
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req.extend_from_slice(&[0u8; 48]);
    let mut found = None;
    super::diag::dump(&req, |msg| {
        if let Some(d) = parse(msg, ino) {
            found = Some(d);
        }
    })?;
    Ok(found)
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
    for (ty, payload) in attributes(msg, DIAG_MSG) {
        if ty == INET_DIAG_SHUTDOWN && !payload.is_empty() {
            d.shutdown = payload[0];
        }
    }
    Some(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
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
