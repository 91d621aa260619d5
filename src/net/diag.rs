//! NETLINK_SOCK_DIAG dumps: one SOCK_DIAG_BY_FAMILY request with NLM_F_DUMP, every answer
//! message handed to the caller. The per-family requests and answers are in
//! [`super::inetdiag`] (UDP, UDP-Lite) and [`super::packetdiag`] (AF_PACKET).

use std::os::fd::AsRawFd;

use nix::errno::Errno;

/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `struct nlmsghdr` size.
const NLMSG_HDR: usize = 16;
const NLMSG_DONE: u16 = 3;
const NLMSG_ERROR: u16 = 2;

/// Sends the family's request `body` (the struct after the netlink header) as a dump and calls
/// `each` with the payload of every answer (after its netlink header) until the kernel is done.
pub fn dump(body: &[u8], mut each: impl FnMut(&[u8])) -> Result<(), Errno> {
    let nl = super::sock::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_SOCK_DIAG)?;
    let mut req = Vec::with_capacity(NLMSG_HDR + body.len());
    req.extend_from_slice(&((NLMSG_HDR + body.len()) as u32).to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // sequence number
    req.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    req.extend_from_slice(body);
    // SAFETY: req is a readable buffer of req.len() bytes; the kernel is the peer.
    if unsafe { libc::send(nl.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(Errno::last());
    }
    let mut buf = vec![0u8; 64 * 1024];
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
            return Ok(());
        }
        let mut off = 0;
        while off + NLMSG_HDR <= data.len() {
            let len = u32_at(data, off) as usize;
            let ty = u16_at(data, off + 4);
            if len < NLMSG_HDR || off + len > data.len() {
                return Err(Errno::EBADMSG);
            }
            match ty {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let code = data
                        .get(off + NLMSG_HDR..off + NLMSG_HDR + 4)
                        .map_or(0, |b| i32::from_ne_bytes(b.try_into().unwrap()));
                    return Err(Errno::from_raw(-code));
                }
                _ => each(&data[off + NLMSG_HDR..off + len]),
            }
            off += (len + 3) & !3;
        }
    }
}

/// The netlink attributes (type, payload) of `msg` from offset `at` on.
pub fn attributes(msg: &[u8], mut at: usize) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while at + 4 <= msg.len() {
        let len = u16_at(msg, at) as usize;
        let ty = u16_at(msg, at + 2);
        if len < 4 || at + len > msg.len() {
            break;
        }
        out.push((ty, &msg[at + 4..at + len]));
        at += (len + 3) & !3;
    }
    out
}

pub fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes(b[at..at + 2].try_into().unwrap())
}

pub fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
}
