//! Sockets of families other than AF_UNIX: UDP and raw IP ([`super::udp`]), netlink
//! ([`super::netlink`]) and packet sockets ([`super::packet`]) are recorded; every other kind
//! is refused with its family, type and protocol and what the user can do. TCP goes back to
//! the caller.

use std::fs::Metadata;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use nix::errno::Errno;

use crate::files::sockopts;
use crate::images::{FileIdentity, IpSocketKind};

use super::DumpError;

/// Records the socket `copy` (crest's duplicate of `pid`'s fd `fd`, family `family`), or
/// refuses it; None for TCP, which the caller handles. What the report should say about it
/// goes into `notes`.
pub fn record(
    pid: i32,
    fd: i32,
    md: &Metadata,
    copy: &OwnedFd,
    family: i32,
    notes: &mut Vec<String>,
) -> Option<Result<FileIdentity, DumpError>> {
    let ino = md.ino();
    let refuse = |what: String| DumpError::UnsupportedFd { pid, fd, what };
    let ty = sockopts::get_int(copy.as_fd(), libc::SOL_SOCKET, libc::SO_TYPE).unwrap_or(-1);
    let protocol =
        sockopts::get_int(copy.as_fd(), libc::SOL_SOCKET, libc::SO_PROTOCOL).unwrap_or(-1);
    let inet = family == libc::AF_INET || family == libc::AF_INET6;
    if inet && ty == libc::SOCK_STREAM && protocol == libc::IPPROTO_TCP {
        return None;
    }
    let described = describe(family, ty, protocol, ino);
    let udp = inet && ty == libc::SOCK_DGRAM && protocol == libc::IPPROTO_UDP;
    let ping = (family == libc::AF_INET && protocol == libc::IPPROTO_ICMP)
        || (family == libc::AF_INET6 && protocol == libc::IPPROTO_ICMPV6);
    let udplite = inet && ty == libc::SOCK_DGRAM && protocol == libc::IPPROTO_UDPLITE;
    let other = match ty {
        libc::SOCK_RAW if inet && protocol > 0 => Some(IpSocketKind {
            sock_type: ty as u32,
            protocol: protocol as u32,
        }),
        libc::SOCK_DGRAM if ping || udplite => Some(IpSocketKind {
            sock_type: ty as u32,
            protocol: protocol as u32,
        }),
        _ => None,
    };
    if family == libc::AF_PACKET {
        return Some(super::packet::record(pid, fd, md, copy, ty).map(|r| {
            notes.extend(r.note);
            r.identity
        }));
    }
    if !udp && other.is_none() && family != libc::AF_NETLINK {
        return Some(Err(refuse(format!(
            "{described}; crest dumps TCP, UDP, UDP-Lite, raw IP, ping, netlink, packet and UNIX sockets, not {}: close it before the \
             dump, or dump the program at a moment it holds none",
            kind_plural(family, ty)
        ))));
    }
    if let Err(why) = same_network_namespace(copy) {
        return Some(Err(refuse(format!(
            "{described} {why}; crest restores sockets in its own network namespace only"
        ))));
    }
    Some(if udp {
        super::udp::record(pid, fd, md, copy, family)
    } else if other.is_some() {
        super::udp::record_inet(pid, fd, md, copy, family, other)
    } else {
        super::netlink::record(pid, fd, md, copy, ty, protocol)
    })
}

/// Whether the socket lives in crest's network namespace (SIOCGSKNS).
fn same_network_namespace(sock: &OwnedFd) -> Result<(), String> {
    const SIOCGSKNS: libc::c_ulong = 0x894C;
    // SAFETY: SIOCGSKNS takes no argument and returns a new descriptor.
    let raw = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCGSKNS as _) };
    if raw < 0 {
        // Kernels without it (before 4.9) cannot say; the process's own namespace was checked.
        return match Errno::last() {
            Errno::ENOTTY | Errno::EINVAL => Ok(()),
            e => Err(format!("whose network namespace cannot be read ({e})")),
        };
    }
    // SAFETY: raw is a fresh descriptor we own.
    let ns = unsafe { OwnedFd::from_raw_fd(raw) };
    let theirs =
        nix::sys::stat::fstat(&ns).map_err(|e| format!("(fstat of its namespace: {e})"))?;
    let ours = std::fs::metadata("/proc/self/ns/net")
        .map_err(|e| format!("(crest's own network namespace: {e})"))?;
    if theirs.st_ino != ours.ino() {
        return Err(format!(
            "created in another network namespace (net:[{}])",
            theirs.st_ino
        ));
    }
    Ok(())
}

/// "an IPv4 raw socket (AF_INET, SOCK_RAW, protocol 1; inode 42)".
pub fn describe(family: i32, ty: i32, protocol: i32, ino: u64) -> String {
    let (article, fam, fam_const) = match family {
        libc::AF_INET => ("an", "IPv4", "AF_INET"),
        libc::AF_INET6 => ("an", "IPv6", "AF_INET6"),
        libc::AF_NETLINK => ("a", "netlink", "AF_NETLINK"),
        libc::AF_PACKET => ("a", "packet", "AF_PACKET"),
        libc::AF_VSOCK => ("a", "vsock", "AF_VSOCK"),
        libc::AF_BLUETOOTH => ("a", "Bluetooth", "AF_BLUETOOTH"),
        libc::AF_ALG => ("an", "AF_ALG", "AF_ALG"),
        libc::AF_XDP => ("an", "XDP", "AF_XDP"),
        libc::AF_CAN => ("a", "CAN", "AF_CAN"),
        libc::AF_TIPC => ("a", "TIPC", "AF_TIPC"),
        _ => ("a", "", ""),
    };
    let (ty_name, ty_const) = type_names(ty);
    if fam.is_empty() {
        return format!(
            "a {ty_name} socket of address family {family} ({ty_const}, protocol {protocol}; \
             inode {ino})"
        );
    }
    let ping = (family == libc::AF_INET && protocol == libc::IPPROTO_ICMP)
        || (family == libc::AF_INET6 && protocol == libc::IPPROTO_ICMPV6);
    let ty_name = if ty == libc::SOCK_DGRAM && ping {
        "ping (ICMP datagram)"
    } else {
        ty_name
    };
    format!("{article} {fam} {ty_name} socket ({fam_const}, {ty_const}, protocol {protocol}; inode {ino})")
}

fn type_names(ty: i32) -> (&'static str, String) {
    match ty {
        libc::SOCK_STREAM => ("stream", "SOCK_STREAM".into()),
        libc::SOCK_DGRAM => ("datagram", "SOCK_DGRAM".into()),
        libc::SOCK_RAW => ("raw", "SOCK_RAW".into()),
        libc::SOCK_SEQPACKET => ("seqpacket", "SOCK_SEQPACKET".into()),
        libc::SOCK_RDM => ("reliable datagram", "SOCK_RDM".into()),
        other => ("", format!("type {other}")),
    }
}

fn kind_plural(family: i32, ty: i32) -> &'static str {
    match (family, ty) {
        (libc::AF_PACKET, _) => "packet sockets",
        (libc::AF_INET | libc::AF_INET6, libc::SOCK_RAW) => "raw IP sockets",
        (libc::AF_INET | libc::AF_INET6, libc::SOCK_DGRAM) => {
            "ICMP (ping) or other non-UDP datagram sockets"
        }
        (libc::AF_INET | libc::AF_INET6, _) => "this kind of IP socket",
        _ => "sockets of this family",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record_own(sock: &OwnedFd) -> Option<Result<FileIdentity, DumpError>> {
        let md = std::fs::metadata(format!("/proc/self/fd/{}", sock.as_raw_fd())).unwrap();
        let family = sockopts::get_int(sock.as_fd(), libc::SOL_SOCKET, libc::SO_DOMAIN).unwrap();
        record(
            std::process::id() as i32,
            sock.as_raw_fd(),
            &md,
            sock,
            family,
            &mut Vec::new(),
        )
    }

    #[test]
    fn raw_ip_sockets_are_recorded_with_their_protocol_address_and_filters() {
        use crate::images::FileKind;
        let raw = sockopts::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP).unwrap();
        // ICMP_FILTER: drop echo requests (type 8).
        sockopts::set(raw.as_fd(), 255, 1, &(1u32 << 8).to_ne_bytes()).unwrap();
        let ident = record_own(&raw).unwrap().unwrap();
        let FileKind::Udp(u) = &ident.kind else {
            panic!("{ident:?}")
        };
        assert_eq!(
            u.other,
            Some(IpSocketKind {
                sock_type: libc::SOCK_RAW as u32,
                protocol: libc::IPPROTO_ICMP as u32
            })
        );
        assert!(u.local.is_none() && u.peer.is_none(), "{u:?}");
        assert_eq!(sockopts::describe(&u.options), "ICMP_FILTER=256");

        let raw6 = sockopts::socket(libc::AF_INET6, libc::SOCK_RAW, 253).unwrap();
        crate::net::sock::bind(raw6.as_fd(), &"[::1]:0".parse().unwrap()).unwrap();
        let ident = record_own(&raw6).unwrap().unwrap();
        let FileKind::Udp(u) = &ident.kind else {
            panic!("{ident:?}")
        };
        assert_eq!(u.other.map(|k| k.protocol), Some(253));
        let local = u.local.as_ref().unwrap();
        assert_eq!(
            (sockopts::endpoint_text(local).as_str(), local.port),
            ("[::1]:0", 0)
        );
    }

    #[test]
    fn ping_sockets_are_recorded_with_their_echo_id() {
        use crate::images::FileKind;
        // Ping sockets exist only for the groups of net.ipv4.ping_group_range.
        let Ok(ping) = sockopts::socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP) else {
            eprintln!("ping sockets are not allowed here (net.ipv4.ping_group_range); skipped");
            return;
        };
        crate::net::sock::bind(ping.as_fd(), &"127.0.0.1:4321".parse().unwrap())
            .unwrap_or_else(|e| panic!("bind the ping socket: {e}"));
        let ident = record_own(&ping).unwrap().unwrap();
        let FileKind::Udp(u) = &ident.kind else {
            panic!("{ident:?}")
        };
        assert_eq!(
            u.other,
            Some(IpSocketKind {
                sock_type: libc::SOCK_DGRAM as u32,
                protocol: libc::IPPROTO_ICMP as u32
            })
        );
        assert_eq!(
            sockopts::endpoint_text(u.local.as_ref().unwrap()),
            "127.0.0.1:4321"
        );
        assert_eq!(
            sockopts::udp_text(u),
            "ping (ICMP datagram) IPv4 socket bound to 127.0.0.1:4321"
        );
    }

    #[test]
    fn packet_sockets_are_recorded_with_their_interface_options_and_rings() {
        use crate::images::FileKind;
        let proto = i32::from((libc::ETH_P_IP as u16).to_be());
        let packet = sockopts::socket(libc::AF_PACKET, libc::SOCK_DGRAM, proto).unwrap();
        let lo = crate::net::packetdiag::interface_name(1).expect("interface 1");
        let set = |name: i32, v: &[u8]| sockopts::set(packet.as_fd(), libc::SOL_PACKET, name, v);
        set(libc::PACKET_VERSION, &1i32.to_ne_bytes()).unwrap(); // TPACKET_V2
        set(libc::PACKET_RESERVE, &32i32.to_ne_bytes()).unwrap();
        // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        sll.sll_ifindex = 1;
        // SAFETY: sll is a valid sockaddr_ll.
        let r = unsafe {
            libc::bind(
                packet.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of_val(&sll) as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
        let ring: Vec<u8> = [4096u32, 1, 2048, 2]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        set(libc::PACKET_RX_RING, &ring).unwrap();
        set(libc::PACKET_FANOUT, &(4242u32 | (1 << 16)).to_ne_bytes()).unwrap();
        let mut notes = Vec::new();
        let md = std::fs::metadata(format!("/proc/self/fd/{}", packet.as_raw_fd())).unwrap();
        let ident = record(
            std::process::id() as i32,
            packet.as_raw_fd(),
            &md,
            &packet,
            libc::AF_PACKET,
            &mut notes,
        )
        .unwrap()
        .unwrap();
        let FileKind::Packet(p) = &ident.kind else {
            panic!("not a packet socket: {ident:?}");
        };
        assert_eq!(
            (p.sock_type, p.protocol, p.ifindex, p.ifname.as_str()),
            (
                libc::SOCK_DGRAM as u32,
                libc::ETH_P_IP as u16,
                1,
                lo.as_str()
            )
        );
        let opt = |name: i32| {
            p.options
                .iter()
                .find(|o| o.level == libc::SOL_PACKET && o.name == name)
                .map(|o| i32::from_ne_bytes(o.value[..4].try_into().unwrap()))
        };
        assert_eq!(opt(libc::PACKET_VERSION), Some(1));
        assert_eq!(opt(libc::PACKET_RESERVE), Some(32));
        let rx = p.rx_ring.expect("the receive ring");
        assert_eq!(
            (rx.block_size, rx.block_nr, rx.frame_size, rx.frame_nr),
            (4096, 1, 2048, 2)
        );
        assert_eq!(p.fanout & 0xffff, 4242);
        assert_eq!((p.fanout >> 16) & 0xff, 1, "PACKET_FANOUT_LB");
        assert!(
            sockopts::packet_text(p).starts_with(&format!(
                "packet socket (SOCK_DGRAM, protocol 0x0800) bound to {lo}"
            )),
            "{}",
            sockopts::packet_text(p)
        );
    }

    #[test]
    fn tcp_goes_back_to_the_caller() {
        let tcp = sockopts::socket(libc::AF_INET6, libc::SOCK_STREAM, 0).unwrap();
        assert!(record_own(&tcp).is_none());
    }
}
