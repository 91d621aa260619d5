//! Socket options of UDP and netlink sockets, both sides: a dump records the options of
//! [`SOCKET_OPTIONS`] whose value differs from a fresh socket's of the same kind (so a value
//! the program never set keeps following the system's default after a restore), and a restore
//! sets them again before bind and connect.
//!
//! The send and receive buffer sizes are special: getsockopt reports twice what was asked
//! (the kernel doubles it for its bookkeeping), and a size the program never set follows
//! net.core.*mem_default. They are recorded only when the program set them (SO_BUF_LOCK, Linux
//! 5.14+), as SO_SNDBUFFORCE / SO_RCVBUFFORCE with half the reported value, which the kernel
//! doubles back (FORCE: not capped by net.core.*mem_max, as the original may have been set
//! by a privileged process; crest restores as root).

use std::os::fd::BorrowedFd;

use nix::errno::Errno;

use crate::images::validate::{socket_option_name, SOCKET_OPTIONS, SOCKET_OPTION_MAX};
use crate::images::SetSockOpt;
use crate::net::sock;

pub const SOL_SOCKET: i32 = libc::SOL_SOCKET;
const SO_SNDBUF: i32 = libc::SO_SNDBUF;
const SO_RCVBUF: i32 = libc::SO_RCVBUF;
const SO_SNDBUFFORCE: i32 = 32;
const SO_RCVBUFFORCE: i32 = 33;
/// SO_BUF_LOCK: which of the buffer sizes the program set (SOCK_SNDBUF_LOCK 1,
/// SOCK_RCVBUF_LOCK 2).
const SO_BUF_LOCK: i32 = 72;

pub use crate::net::sock::{get_int, set_bytes as set, socket};

/// `getsockopt(level, name)` into a buffer of [`SOCKET_OPTION_MAX`] bytes: the value's bytes.
pub fn get(fd: BorrowedFd<'_>, level: i32, name: i32) -> Result<Vec<u8>, Errno> {
    sock::get_bytes(fd, level, name, SOCKET_OPTION_MAX)
}

/// The options of `sock` at the levels `levels` that differ from those of `fresh`, a new
/// socket of the same family, type and protocol; the buffer sizes the program set.
pub fn differing(sock: BorrowedFd<'_>, fresh: BorrowedFd<'_>, levels: &[i32]) -> Vec<SetSockOpt> {
    let mut out = Vec::new();
    for &(level, name, _) in SOCKET_OPTIONS {
        if !levels.contains(&level) || (level == SOL_SOCKET && is_buffer(name)) {
            continue;
        }
        // An option this kernel or this kind of socket does not have fails on both.
        let Ok(value) = get(sock, level, name) else {
            continue;
        };
        if value.is_empty() || get(fresh, level, name).as_deref() == Ok(&value[..]) {
            continue;
        }
        out.push(SetSockOpt { level, name, value });
    }
    // Older kernels have no SO_BUF_LOCK: the sizes are then kept when they differ from a
    // fresh socket's.
    let locked = get_int(sock, SOL_SOCKET, SO_BUF_LOCK).ok();
    for (lock, read, force) in [
        (1, SO_SNDBUF, SO_SNDBUFFORCE),
        (2, SO_RCVBUF, SO_RCVBUFFORCE),
    ] {
        let Ok(v) = get_int(sock, SOL_SOCKET, read) else {
            continue;
        };
        let set_by_program = match locked {
            Some(bits) => bits & lock != 0,
            None => get_int(fresh, SOL_SOCKET, read) != Ok(v),
        };
        if set_by_program {
            out.push(SetSockOpt {
                level: SOL_SOCKET,
                name: force,
                value: (v / 2).to_ne_bytes().to_vec(),
            });
        }
    }
    out
}

fn is_buffer(name: i32) -> bool {
    [SO_SNDBUF, SO_RCVBUF, SO_SNDBUFFORCE, SO_RCVBUFFORCE].contains(&name)
}

/// Sets `options` on `sock`; an error names the option that failed.
pub fn apply(sock: BorrowedFd<'_>, options: &[SetSockOpt]) -> Result<(), String> {
    for o in options {
        let Some(what) = socket_option_name(o.level, o.name) else {
            return Err(format!(
                "socket option {}/{} is not one crest sets",
                o.level, o.name
            ));
        };
        set(sock, o.level, o.name, &o.value).map_err(|e| format!("setting {what}: {e}"))?;
    }
    Ok(())
}

/// Options for people: `SO_REUSEADDR=1, IP_TOS=16`.
pub fn describe(options: &[SetSockOpt]) -> String {
    options
        .iter()
        .map(|o| {
            let what = socket_option_name(o.level, o.name).unwrap_or("?");
            match <[u8; 4]>::try_from(&o.value[..]) {
                Ok(b) => format!("{what}={}", i32::from_ne_bytes(b)),
                Err(_) => format!("{what}=<{} bytes>", o.value.len()),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// An address for people: `127.0.0.1:53`, `[::1]:53`, `[fe80::1%2]:53`.
pub fn endpoint_text(e: &crate::images::UdpEndpoint) -> String {
    if let Ok(v4) = <[u8; 4]>::try_from(&e.ip[..]) {
        return format!("{}:{}", std::net::Ipv4Addr::from(v4), e.port);
    }
    if let Ok(v6) = <[u8; 16]>::try_from(&e.ip[..]) {
        let scope = if e.scope_id != 0 {
            format!("%{}", e.scope_id)
        } else {
            String::new()
        };
        return format!("[{}{scope}]:{}", std::net::Ipv6Addr::from(v6), e.port);
    }
    format!("<{} address bytes>:{}", e.ip.len(), e.port)
}

/// "UDP/IPv4 socket bound to 127.0.0.1:5000, connected to 127.0.0.1:6000 (SO_REUSEADDR=1)".
pub fn udp_text(u: &crate::images::UdpSocket) -> String {
    let family = if u.family == libc::AF_INET6 as u32 {
        "IPv6"
    } else {
        "IPv4"
    };
    let mut out = match u.other {
        None => format!("UDP/{family} socket"),
        Some(k) if k.sock_type == libc::SOCK_RAW as u32 => {
            format!("raw {family} socket of protocol {}", k.protocol)
        }
        Some(k) if k.protocol == libc::IPPROTO_UDPLITE as u32 => {
            format!("UDP-Lite/{family} socket")
        }
        Some(_) => format!("ping (ICMP datagram) {family} socket"),
    };
    match &u.local {
        Some(l) => out += &format!(" bound to {}", endpoint_text(l)),
        None => out += ", unbound",
    }
    if let Some(p) = &u.peer {
        out += &format!(", connected to {}", endpoint_text(p));
    }
    match u.shutdown {
        1 => out += ", shut down for reading",
        2 => out += ", shut down for writing",
        3 => out += ", shut down for reading and writing",
        _ => {}
    }
    if !u.options.is_empty() {
        out += &format!(" ({})", describe(&u.options));
    }
    out
}

/// "packet socket (SOCK_RAW, protocol 0x0800) bound to lo, 1 membership, a receive ring".
pub fn packet_text(p: &crate::images::PacketSocket) -> String {
    let ty = match p.sock_type {
        2 => "SOCK_DGRAM",
        3 => "SOCK_RAW",
        10 => "SOCK_PACKET",
        _ => "?",
    };
    let mut out = format!("packet socket ({ty}, protocol {:#06x})", p.protocol);
    match p.ifindex {
        0 => out += " on every interface",
        _ => out += &format!(" bound to {}", p.ifname),
    }
    if !p.memberships.is_empty() {
        out += &format!(", {} membership(s)", p.memberships.len());
    }
    for (what, ring) in [("receive", &p.rx_ring), ("transmit", &p.tx_ring)] {
        if let Some(r) = ring {
            out += &format!(
                ", a {what} ring of {} blocks of {} bytes",
                r.block_nr, r.block_size
            );
        }
    }
    if p.fanout != 0 {
        out += &format!(", in fanout group {}", p.fanout & 0xffff);
    }
    if !p.options.is_empty() {
        out += &format!(" ({})", describe(&p.options));
    }
    out
}

/// "netlink socket NETLINK_ROUTE, port id 1234, groups 1,5".
pub fn netlink_text(n: &crate::images::NetlinkSocket) -> String {
    let proto = match n.protocol {
        0 => "NETLINK_ROUTE".to_string(),
        4 => "NETLINK_SOCK_DIAG".to_string(),
        15 => "NETLINK_KOBJECT_UEVENT".to_string(),
        other => format!("protocol {other}"),
    };
    let mut out = format!("netlink socket {proto}");
    if n.port_id == 0 {
        out += ", unbound";
    } else {
        out += &format!(", port id {}", n.port_id);
    }
    if !n.groups.is_empty() {
        let groups: Vec<String> = n.groups.iter().map(u32::to_string).collect();
        out += &format!(", groups {}", groups.join(","));
    }
    if n.dst_port_id != 0 || n.dst_group != 0 {
        out += &format!(
            ", connected to port id {} group {}",
            n.dst_port_id, n.dst_group
        );
    }
    if !n.options.is_empty() {
        out += &format!(" ({})", describe(&n.options));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, OwnedFd};

    fn udp() -> OwnedFd {
        socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_UDP).unwrap()
    }

    fn set_int(fd: &OwnedFd, level: i32, name: i32, v: i32) {
        set(fd.as_fd(), level, name, &v.to_ne_bytes()).unwrap();
    }

    #[test]
    fn only_options_the_program_changed_are_recorded_and_come_back() {
        let s = udp();
        let fresh = udp();
        let levels = [SOL_SOCKET, libc::SOL_IP, libc::SOL_UDP];
        assert_eq!(differing(s.as_fd(), fresh.as_fd(), &levels), vec![]);
        set_int(&s, SOL_SOCKET, libc::SO_REUSEADDR, 1);
        set_int(&s, libc::SOL_IP, libc::IP_TOS, 0x10);
        set_int(&s, libc::SOL_IP, libc::IP_PKTINFO, 1);
        set_int(&s, SOL_SOCKET, SO_RCVBUF, 100_000);
        let got = differing(s.as_fd(), fresh.as_fd(), &levels);
        let text = describe(&got);
        assert!(text.contains("SO_REUSEADDR=1"), "{text}");
        assert!(text.contains("IP_TOS=16"), "{text}");
        assert!(text.contains("IP_PKTINFO=1"), "{text}");
        assert!(text.contains("SO_RCVBUFFORCE=100000"), "{text}");
        assert!(!text.contains("SNDBUF"), "{text}");

        let again = udp();
        apply(again.as_fd(), &got).unwrap();
        assert_eq!(differing(again.as_fd(), fresh.as_fd(), &levels), got);
        assert_eq!(
            get_int(again.as_fd(), SOL_SOCKET, SO_RCVBUF),
            get_int(s.as_fd(), SOL_SOCKET, SO_RCVBUF)
        );
    }

    #[test]
    fn unknown_options_are_not_set() {
        let s = udp();
        let filter = SetSockOpt {
            level: SOL_SOCKET,
            name: libc::SO_ATTACH_FILTER,
            value: vec![0; 16],
        };
        let err = apply(s.as_fd(), &[filter]).unwrap_err();
        assert!(err.contains("not one crest sets"), "{err}");
    }
}
