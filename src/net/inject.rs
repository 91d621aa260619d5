//! Forged TCP segments: how a restore makes a connection rebuilt in repair mode receive what
//! its peer had sent and TCP_REPAIR cannot set — the peer's FIN (CLOSE_WAIT, LAST_ACK,
//! CLOSING), the peer's acknowledgement of the program's FIN (FIN_WAIT2), the end of a
//! closed connection (a RST). Each is one header-only segment "from" the peer to the local
//! end, built here with its IP header and checksums and sent from a raw socket. The segments
//! carry [`MARK`], which the network lock ([`super::lock`]) lets through while it drops
//! everything else of the connection.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;

use nix::errno::Errno;

use super::sock;

/// The packet mark of crest's own segments (SO_MARK; the lock accepts it).
pub const MARK: u32 = 0xC2E5;

pub const FIN: u8 = 0x01;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;

/// One header-only TCP segment from `from` (the peer) to `to` (the local end).
#[derive(Debug, Clone, Copy)]
pub struct Segment {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// The window field as sent (already scaled down by the peer's window scale).
    pub window: u16,
}

/// The ones' complement sum of `data` (16-bit big-endian words) added to `sum`.
fn sum16(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for w in &mut chunks {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl Segment {
    /// The TCP header (20 bytes, no options) with its checksum over the pseudo-header.
    fn tcp_header(&self, from: IpAddr, to: IpAddr) -> [u8; 20] {
        let mut h = [0u8; 20];
        h[0..2].copy_from_slice(&self.from.port().to_be_bytes());
        h[2..4].copy_from_slice(&self.to.port().to_be_bytes());
        h[4..8].copy_from_slice(&self.seq.to_be_bytes());
        h[8..12].copy_from_slice(&self.ack.to_be_bytes());
        h[12] = 5 << 4;
        h[13] = self.flags;
        h[14..16].copy_from_slice(&self.window.to_be_bytes());
        let pseudo = match (from, to) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mut p = Vec::with_capacity(12);
                p.extend_from_slice(&a.octets());
                p.extend_from_slice(&b.octets());
                p.extend_from_slice(&[0, libc::IPPROTO_TCP as u8, 0, 20]);
                p
            }
            (a, b) => {
                let v6 = |ip: IpAddr| match ip {
                    IpAddr::V6(v) => v.octets(),
                    IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
                };
                let mut p = Vec::with_capacity(40);
                p.extend_from_slice(&v6(a));
                p.extend_from_slice(&v6(b));
                p.extend_from_slice(&[0, 0, 0, 20, 0, 0, 0, libc::IPPROTO_TCP as u8]);
                p
            }
        };
        let c = fold(sum16(sum16(0, &pseudo), &h));
        h[16..18].copy_from_slice(&c.to_be_bytes());
        h
    }

    /// The whole packet, IP header included, as it goes on the wire (an IPv4-mapped address
    /// makes an IPv4 packet).
    pub fn packet(&self) -> Vec<u8> {
        let from = sock::on_the_wire(&self.from);
        let to = sock::on_the_wire(&self.to);
        match (from.ip(), to.ip()) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mut ip = [0u8; 20];
                ip[0] = 0x45;
                ip[2..4].copy_from_slice(&40u16.to_be_bytes());
                ip[6] = 0x40; // don't fragment
                ip[8] = 64;
                ip[9] = libc::IPPROTO_TCP as u8;
                ip[12..16].copy_from_slice(&a.octets());
                ip[16..20].copy_from_slice(&b.octets());
                let c = fold(sum16(0, &ip));
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                let mut p = ip.to_vec();
                p.extend_from_slice(&self.tcp_header(from.ip(), to.ip()));
                p
            }
            (a, b) => {
                let v6 = |ip: IpAddr| match ip {
                    IpAddr::V6(v) => v.octets(),
                    IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
                };
                let mut ip = [0u8; 40];
                ip[0] = 0x60;
                ip[4..6].copy_from_slice(&20u16.to_be_bytes());
                ip[6] = libc::IPPROTO_TCP as u8;
                ip[7] = 64;
                ip[8..24].copy_from_slice(&v6(a));
                ip[24..40].copy_from_slice(&v6(b));
                let mut p = ip.to_vec();
                p.extend_from_slice(&self.tcp_header(a, b));
                p
            }
        }
    }

    /// Sends the segment from a raw socket (needs CAP_NET_RAW and, for the mark,
    /// CAP_NET_ADMIN). The error names the step.
    pub fn send(&self) -> Result<(), (&'static str, Errno)> {
        let to = sock::on_the_wire(&self.to);
        let family = if to.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // IPPROTO_RAW: the packet carries its own IP header.
        let s = sock::socket(family, libc::SOCK_RAW, libc::IPPROTO_RAW)
            .map_err(|e| ("creating a raw socket", e))?;
        sock::set_int(s.as_fd(), libc::SOL_SOCKET, libc::SO_MARK, MARK as i32)
            .map_err(|e| ("SO_MARK on the raw socket", e))?;
        // A raw IPv6 socket takes the protocol, not a port, in the address.
        let dest = SocketAddr::new(to.ip(), 0);
        let dest = match (dest, self.to) {
            (SocketAddr::V6(mut d), SocketAddr::V6(orig)) => {
                d.set_scope_id(orig.scope_id());
                SocketAddr::V6(d)
            }
            (d, _) => d,
        };
        let p = self.packet();
        let n = sock::send_to(s.as_fd(), &p, &dest).map_err(|e| ("sendto", e))?;
        if n != p.len() {
            return Err(("sendto (short)", Errno::EMSGSIZE));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify_to_zero() {
        for (from, to) in [
            ("10.1.2.3:80", "192.168.7.9:40000"),
            ("[::ffff:127.0.0.1]:5", "[::ffff:127.0.0.1]:6"),
            ("[2001:db8::1]:443", "[fe80::2]:1234"),
        ] {
            let seg = Segment {
                from: from.parse().unwrap(),
                to: to.parse().unwrap(),
                seq: 0xdead_beef,
                ack: 0x0102_0304,
                flags: FIN | ACK,
                window: 512,
            };
            let p = seg.packet();
            let (ip_len, src, dst) = if p[0] >> 4 == 4 {
                assert_eq!(fold(sum16(0, &p[..20])), 0, "IPv4 header checksum");
                (20, &p[12..16], &p[16..20])
            } else {
                (40, &p[8..24], &p[24..40])
            };
            assert_eq!(p.len(), ip_len + 20);
            let tcp = &p[ip_len..];
            let mut pseudo = src.to_vec();
            pseudo.extend_from_slice(dst);
            if ip_len == 20 {
                pseudo.extend_from_slice(&[0, 6, 0, 20]);
            } else {
                pseudo.extend_from_slice(&[0, 0, 0, 20, 0, 0, 0, 6]);
            }
            assert_eq!(fold(sum16(sum16(0, &pseudo), tcp)), 0, "{from} -> {to}");
            assert_eq!(u16::from_be_bytes([tcp[0], tcp[1]]), seg.from.port());
            assert_eq!(tcp[13], FIN | ACK);
        }
        // An odd length pads with a zero byte.
        assert_eq!(sum16(0, &[1, 2, 3]), 0x0102 + 0x0300);
    }
}
