//! Checks of the UDP and netlink sockets an image records ([`FileKind::Udp`],
//! [`FileKind::Netlink`]), and the one list of socket options a restore may set on them.

use crate::schema::*;

/// SOL_SOCKET, SOL_IP, SOL_IPV6, SOL_UDP and SOL_NETLINK.
pub const SOL_SOCKET: i32 = 1;
pub const SOL_IP: i32 = 0;
pub const SOL_IPV6: i32 = 41;
pub const SOL_UDP: i32 = 17;
/// SOL_RAW (ICMP_FILTER of an IPv4 ICMP raw socket, IPV6_CHECKSUM of an IPv6 one) and
/// SOL_ICMPV6 (ICMPV6_FILTER).
pub const SOL_RAW: i32 = 255;
pub const SOL_ICMPV6: i32 = 58;
pub const SOL_NETLINK: i32 = 270;
/// SOL_PACKET (packet sockets' options).
pub const SOL_PACKET: i32 = 263;
/// IPPROTO_UDPLITE, also the level of its options (SOL_UDPLITE).
pub const IPPROTO_UDPLITE: u32 = 136;
pub const SOL_UDPLITE: i32 = 136;

/// Most bytes of one option's value (the largest here is an IPv6 extension header: at most
/// (255 + 1) * 8 bytes).
pub const SOCKET_OPTION_MAX: usize = 2048;

/// Every socket option a dump records and a restore sets again: (level, name, what it is).
/// Options that hold a pointer, state the kernel builds (filters, memberships) or that only
/// read (SO_TYPE, SO_ERROR) are not here. The send and receive buffer sizes are recorded as
/// SO_SNDBUFFORCE / SO_RCVBUFFORCE with the value the program asked for (half what
/// getsockopt reports), and only when the program set them (SO_BUF_LOCK).
pub const SOCKET_OPTIONS: &[(i32, i32, &str)] = &[
    (SOL_SOCKET, 2, "SO_REUSEADDR"),
    (SOL_SOCKET, 5, "SO_DONTROUTE"),
    (SOL_SOCKET, 6, "SO_BROADCAST"),
    (SOL_SOCKET, 9, "SO_KEEPALIVE"),
    (SOL_SOCKET, 10, "SO_OOBINLINE"),
    (SOL_SOCKET, 11, "SO_NO_CHECK"),
    (SOL_SOCKET, 12, "SO_PRIORITY"),
    (SOL_SOCKET, 13, "SO_LINGER"),
    (SOL_SOCKET, 15, "SO_REUSEPORT"),
    (SOL_SOCKET, 16, "SO_PASSCRED"),
    (SOL_SOCKET, 18, "SO_RCVLOWAT"),
    (SOL_SOCKET, 20, "SO_RCVTIMEO"),
    (SOL_SOCKET, 21, "SO_SNDTIMEO"),
    (SOL_SOCKET, 25, "SO_BINDTODEVICE"),
    (SOL_SOCKET, 29, "SO_TIMESTAMP"),
    (SOL_SOCKET, 32, "SO_SNDBUFFORCE"),
    (SOL_SOCKET, 33, "SO_RCVBUFFORCE"),
    (SOL_SOCKET, 34, "SO_PASSSEC"),
    (SOL_SOCKET, 35, "SO_TIMESTAMPNS"),
    (SOL_SOCKET, 36, "SO_MARK"),
    (SOL_SOCKET, 40, "SO_RXQ_OVFL"),
    (SOL_SOCKET, 41, "SO_WIFI_STATUS"),
    (SOL_SOCKET, 42, "SO_PEEK_OFF"),
    (SOL_SOCKET, 45, "SO_SELECT_ERR_QUEUE"),
    (SOL_SOCKET, 46, "SO_BUSY_POLL"),
    (SOL_SOCKET, 49, "SO_INCOMING_CPU"),
    (SOL_SOCKET, 60, "SO_ZEROCOPY"),
    (SOL_SOCKET, 63, "SO_TIMESTAMP_NEW"),
    (SOL_SOCKET, 64, "SO_TIMESTAMPNS_NEW"),
    (SOL_SOCKET, 75, "SO_RCVMARK"),
    (SOL_SOCKET, 76, "SO_PASSPIDFD"),
    (SOL_SOCKET, 83, "SO_PASSRIGHTS"),
    (SOL_IP, 1, "IP_TOS"),
    (SOL_IP, 2, "IP_TTL"),
    (SOL_IP, 3, "IP_HDRINCL"),
    (SOL_IP, 4, "IP_OPTIONS"),
    (SOL_IP, 6, "IP_RECVOPTS"),
    (SOL_IP, 7, "IP_RETOPTS"),
    (SOL_IP, 8, "IP_PKTINFO"),
    (SOL_IP, 10, "IP_MTU_DISCOVER"),
    (SOL_IP, 11, "IP_RECVERR"),
    (SOL_IP, 12, "IP_RECVTTL"),
    (SOL_IP, 13, "IP_RECVTOS"),
    (SOL_IP, 15, "IP_FREEBIND"),
    (SOL_IP, 18, "IP_PASSSEC"),
    (SOL_IP, 19, "IP_TRANSPARENT"),
    (SOL_IP, 20, "IP_RECVORIGDSTADDR"),
    (SOL_IP, 21, "IP_MINTTL"),
    (SOL_IP, 22, "IP_NODEFRAG"),
    (SOL_IP, 23, "IP_CHECKSUM"),
    (SOL_IP, 24, "IP_BIND_ADDRESS_NO_PORT"),
    (SOL_IP, 25, "IP_RECVFRAGSIZE"),
    (SOL_IP, 26, "IP_RECVERR_RFC4884"),
    (SOL_IP, 32, "IP_MULTICAST_IF"),
    (SOL_IP, 33, "IP_MULTICAST_TTL"),
    (SOL_IP, 34, "IP_MULTICAST_LOOP"),
    (SOL_IP, 49, "IP_MULTICAST_ALL"),
    (SOL_IP, 50, "IP_UNICAST_IF"),
    (SOL_IP, 51, "IP_LOCAL_PORT_RANGE"),
    (SOL_IPV6, 11, "IPV6_FLOWINFO"),
    (SOL_IPV6, 16, "IPV6_UNICAST_HOPS"),
    (SOL_IPV6, 17, "IPV6_MULTICAST_IF"),
    (SOL_IPV6, 18, "IPV6_MULTICAST_HOPS"),
    (SOL_IPV6, 19, "IPV6_MULTICAST_LOOP"),
    (SOL_IPV6, 23, "IPV6_MTU_DISCOVER"),
    (SOL_IPV6, 25, "IPV6_RECVERR"),
    (SOL_IPV6, 26, "IPV6_V6ONLY"),
    (SOL_IPV6, 29, "IPV6_MULTICAST_ALL"),
    (SOL_IPV6, 31, "IPV6_RECVERR_RFC4884"),
    (SOL_IPV6, 33, "IPV6_FLOWINFO_SEND"),
    (SOL_IPV6, 36, "IPV6_HDRINCL"),
    (SOL_IPV6, 49, "IPV6_RECVPKTINFO"),
    (SOL_IPV6, 51, "IPV6_RECVHOPLIMIT"),
    (SOL_IPV6, 53, "IPV6_RECVHOPOPTS"),
    // Sticky extension headers sent with every packet (their bytes as set).
    (SOL_IPV6, 54, "IPV6_HOPOPTS"),
    (SOL_IPV6, 55, "IPV6_RTHDRDSTOPTS"),
    (SOL_IPV6, 56, "IPV6_RECVRTHDR"),
    (SOL_IPV6, 57, "IPV6_RTHDR"),
    (SOL_IPV6, 58, "IPV6_RECVDSTOPTS"),
    (SOL_IPV6, 59, "IPV6_DSTOPTS"),
    (SOL_IPV6, 60, "IPV6_RECVPATHMTU"),
    (SOL_IPV6, 62, "IPV6_DONTFRAG"),
    (SOL_IPV6, 66, "IPV6_RECVTCLASS"),
    (SOL_IPV6, 67, "IPV6_TCLASS"),
    (SOL_IPV6, 70, "IPV6_AUTOFLOWLABEL"),
    (SOL_IPV6, 72, "IPV6_ADDR_PREFERENCES"),
    (SOL_IPV6, 73, "IPV6_MINHOPCOUNT"),
    (SOL_IPV6, 74, "IPV6_RECVORIGDSTADDR"),
    (SOL_IPV6, 75, "IPV6_TRANSPARENT"),
    (SOL_IPV6, 76, "IPV6_UNICAST_IF"),
    (SOL_IPV6, 77, "IPV6_RECVFRAGSIZE"),
    (SOL_IPV6, 78, "IPV6_FREEBIND"),
    (SOL_RAW, 1, "ICMP_FILTER"),
    (SOL_RAW, 7, "IPV6_CHECKSUM"),
    (SOL_ICMPV6, 1, "ICMPV6_FILTER"),
    (SOL_UDP, 1, "UDP_CORK"),
    (SOL_UDP, 101, "UDP_NO_CHECK6_TX"),
    (SOL_UDP, 102, "UDP_NO_CHECK6_RX"),
    (SOL_UDP, 103, "UDP_SEGMENT"),
    (SOL_UDP, 104, "UDP_GRO"),
    (SOL_UDPLITE, 10, "UDPLITE_SEND_CSCOV"),
    (SOL_UDPLITE, 11, "UDPLITE_RECV_CSCOV"),
    // Packet sockets: the version and the reserve before any ring, VNET_HDR before its size.
    (SOL_PACKET, 10, "PACKET_VERSION"),
    (SOL_PACKET, 12, "PACKET_RESERVE"),
    (SOL_PACKET, 8, "PACKET_AUXDATA"),
    (SOL_PACKET, 9, "PACKET_ORIGDEV"),
    (SOL_PACKET, 15, "PACKET_VNET_HDR"),
    (SOL_PACKET, 24, "PACKET_VNET_HDR_SZ"),
    (SOL_PACKET, 14, "PACKET_LOSS"),
    (SOL_PACKET, 17, "PACKET_TIMESTAMP"),
    (SOL_PACKET, 19, "PACKET_TX_HAS_OFF"),
    (SOL_PACKET, 20, "PACKET_QDISC_BYPASS"),
    (SOL_PACKET, 23, "PACKET_IGNORE_OUTGOING"),
    (SOL_NETLINK, 3, "NETLINK_PKTINFO"),
    (SOL_NETLINK, 4, "NETLINK_BROADCAST_ERROR"),
    (SOL_NETLINK, 5, "NETLINK_NO_ENOBUFS"),
    (SOL_NETLINK, 8, "NETLINK_LISTEN_ALL_NSID"),
    (SOL_NETLINK, 10, "NETLINK_CAP_ACK"),
    (SOL_NETLINK, 11, "NETLINK_EXT_ACK"),
    (SOL_NETLINK, 12, "NETLINK_GET_STRICT_CHK"),
];

/// The name of option (`level`, `name`) if [`SOCKET_OPTIONS`] lists it.
pub fn socket_option_name(level: i32, name: i32) -> Option<&'static str> {
    SOCKET_OPTIONS
        .iter()
        .find(|(l, n, _)| *l == level && *n == name)
        .map(|(_, _, what)| *what)
}

/// AF_INET, AF_INET6.
pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;
/// NETLINK_ROUTE, NETLINK_SOCK_DIAG, NETLINK_KOBJECT_UEVENT: the netlink protocols a restore
/// recreates (the kernel keeps no per-socket state for them beyond what the image records).
pub const NETLINK_PROTOCOLS: [u32; 3] = [0, 4, 15];
/// SOCK_DGRAM and SOCK_RAW, the two types a netlink socket may have.
pub const NETLINK_TYPES: [u32; 2] = [2, 3];
/// Netlink multicast groups are numbered from 1; no family has anywhere near this many.
pub const NETLINK_GROUP_MAX: u32 = 1 << 16;

pub(crate) fn check_options(i: usize, what: &str, options: &[SetSockOpt]) -> Result<(), String> {
    for o in options {
        let Some(name) = socket_option_name(o.level, o.name) else {
            return Err(format!(
                "file {i} is a {what} with socket option {}/{}, which crest does not set",
                o.level, o.name
            ));
        };
        if o.value.is_empty() || o.value.len() > SOCKET_OPTION_MAX {
            return Err(format!(
                "file {i} is a {what} whose {name} value has {} bytes (1 to \
                 {SOCKET_OPTION_MAX})",
                o.value.len()
            ));
        }
    }
    Ok(())
}

fn no_path(i: usize, f: &FileIdentity, what: &str) -> Result<(), String> {
    if f.path.is_empty() {
        Ok(())
    } else {
        Err(format!("file {i} is a {what} with a path"))
    }
}

pub(super) fn check_udp(i: usize, f: &FileIdentity, u: &UdpSocket) -> Result<(), String> {
    no_path(i, f, "UDP socket")?;
    let ip_len = match u.family {
        AF_INET => 4,
        AF_INET6 => 16,
        other => return Err(format!("file {i} is a UDP socket of family {other}")),
    };
    for (end, addr) in [("local", &u.local), ("peer", &u.peer)] {
        let Some(a) = addr else { continue };
        if a.ip.len() != ip_len {
            return Err(format!(
                "file {i} is a UDP socket whose {end} address has {} bytes (its family has {ip_len})",
                a.ip.len()
            ));
        }
        let udp_like = match u.other {
            None => true,
            Some(k) => k.sock_type == SOCK_DGRAM && k.protocol == IPPROTO_UDPLITE,
        };
        match u.other {
            _ if udp_like && a.port == 0 => {
                return Err(format!("file {i} is a UDP socket with {end} port 0"));
            }
            Some(k) if k.sock_type == SOCK_RAW && a.port != 0 => {
                return Err(format!(
                    "file {i} is a raw IP socket with {end} port {} (raw sockets have none)",
                    a.port
                ));
            }
            _ => {}
        }
        if u.family == AF_INET && (a.flowinfo != 0 || a.scope_id != 0) {
            return Err(format!(
                "file {i} is an IPv4 UDP socket with an IPv6 flow or scope"
            ));
        }
    }
    let udp_like = match u.other {
        None => true,
        Some(k) => k.sock_type == SOCK_DGRAM && k.protocol == IPPROTO_UDPLITE,
    };
    if u.shutdown > 3 {
        return Err(format!(
            "file {i} is a UDP socket with shutdown state {} (at most 3: read and write)",
            u.shutdown
        ));
    }
    if u.peer.is_some() && u.local.is_none() && udp_like {
        return Err(format!(
            "file {i} is a UDP socket connected without a local address"
        ));
    }
    match u.other {
        None => {}
        Some(IpSocketKind {
            sock_type: SOCK_RAW,
            protocol: 1..=IP_PROTOCOL_MAX,
        }) => {}
        Some(IpSocketKind {
            sock_type: SOCK_DGRAM,
            protocol,
        }) if protocol == if u.family == AF_INET6 { 58 } else { 1 } => {}
        Some(IpSocketKind {
            sock_type: SOCK_DGRAM,
            protocol: IPPROTO_UDPLITE,
        }) => {}
        Some(k) => {
            return Err(format!(
                "file {i} is an IP socket of type {} and protocol {}, neither raw, ping nor \
                 UDP-Lite",
                k.sock_type, k.protocol
            ))
        }
    }
    if u.filter.len() > BPF_MAXINSNS {
        return Err(format!(
            "file {i} is a UDP socket with a filter of {} instructions (at most {BPF_MAXINSNS})",
            u.filter.len()
        ));
    }
    check_options(i, "UDP socket", &u.options)
}

/// SOCK_DGRAM and SOCK_RAW.
const SOCK_DGRAM: u32 = 2;
const SOCK_RAW: u32 = 3;
/// Far above IPPROTO_MAX (263 in Linux 6.x, which an IPv6 raw socket may use all of).
const IP_PROTOCOL_MAX: u32 = 65535;

/// BPF_MAXINSNS: the longest classic BPF program the kernel accepts.
pub const BPF_MAXINSNS: usize = 4096;

/// SOCK_DGRAM, SOCK_RAW, SOCK_PACKET.
const PACKET_TYPES: [u32; 3] = [2, 3, 10];
/// PACKET_FANOUT_CBPF and PACKET_FANOUT_EBPF: fanout by a program, which no image carries.
const FANOUT_BY_PROGRAM: [u32; 2] = [6, 7];

pub(super) fn check_packet(i: usize, f: &FileIdentity, p: &PacketSocket) -> Result<(), String> {
    no_path(i, f, "packet socket")?;
    if !PACKET_TYPES.contains(&p.sock_type) {
        return Err(format!(
            "file {i} is a packet socket of type {}",
            p.sock_type
        ));
    }
    if p.ifindex < 0 || (p.ifindex > 0) == p.ifname.is_empty() || p.ifname.len() > 15 {
        return Err(format!(
            "file {i} is a packet socket bound to interface {} named {:?}",
            p.ifindex, p.ifname
        ));
    }
    if let Some(m) = p
        .memberships
        .iter()
        .find(|m| m.address.len() > 32 || m.count == 0 || m.ifindex <= 0 || m.mr_type > 3)
    {
        return Err(format!(
            "file {i} is a packet socket with a membership of type {} on interface {}, taken \
            {} times, with a {}-byte address",
            m.mr_type,
            m.ifindex,
            m.count,
            m.address.len()
        ));
    }
    for (what, ring) in [("receive", &p.rx_ring), ("transmit", &p.tx_ring)] {
        if let Some(r) = ring {
            if r.block_size == 0 || r.block_nr == 0 || r.frame_size == 0 || r.frame_nr == 0 {
                return Err(format!(
                    "file {i} is a packet socket with an empty {what} ring"
                ));
            }
        }
    }
    if FANOUT_BY_PROGRAM.contains(&((p.fanout >> 16) & 0xff)) {
        return Err(format!(
            "file {i} is a packet socket in a fanout group steered by a BPF program"
        ));
    }
    if p.filter.len() > BPF_MAXINSNS {
        return Err(format!(
            "file {i} is a packet socket with a filter of {} instructions (at most \
             {BPF_MAXINSNS})",
            p.filter.len()
        ));
    }
    check_options(i, "packet socket", &p.options)
}

pub(super) fn check_netlink(i: usize, f: &FileIdentity, n: &NetlinkSocket) -> Result<(), String> {
    no_path(i, f, "netlink socket")?;
    if !NETLINK_PROTOCOLS.contains(&n.protocol) {
        return Err(format!(
            "file {i} is a netlink socket of protocol {}, which crest does not restore",
            n.protocol
        ));
    }
    if !NETLINK_TYPES.contains(&n.sock_type) {
        return Err(format!(
            "file {i} is a netlink socket of type {}",
            n.sock_type
        ));
    }
    let mut last = 0;
    for &g in &n.groups {
        if g <= last || g > NETLINK_GROUP_MAX {
            return Err(format!(
                "file {i} is a netlink socket with group {g} out of order or out of range"
            ));
        }
        last = g;
    }
    if n.dst_group > NETLINK_GROUP_MAX {
        return Err(format!(
            "file {i} is a netlink socket connected to group {}",
            n.dst_group
        ));
    }
    check_options(i, "netlink socket", &n.options)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(kind: FileKind) -> FileIdentity {
        FileIdentity {
            path: String::new(),
            kind,
            dev: 8,
            ino: 99,
            size: 0,
            mtime_sec: 0,
            mtime_nsec: 0,
            mode: 0,
        }
    }

    fn endpoint(ip: &[u8], port: u16) -> UdpEndpoint {
        UdpEndpoint {
            ip: ip.to_vec(),
            port,
            flowinfo: 0,
            scope_id: 0,
        }
    }

    fn udp(family: u32, local: Option<UdpEndpoint>, peer: Option<UdpEndpoint>) -> UdpSocket {
        UdpSocket {
            family,
            local,
            peer,
            options: vec![SetSockOpt {
                level: SOL_SOCKET,
                name: 2,
                value: 1i32.to_ne_bytes().to_vec(),
            }],
            filter: Vec::new(),
            filter_locked: false,
            shutdown: 0,
            other: None,
        }
    }

    #[test]
    fn udp_sockets_are_checked() {
        let lo4 = endpoint(&[127, 0, 0, 1], 5353);
        let lo6 = endpoint(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 53);
        for u in [
            udp(AF_INET, None, None),
            udp(AF_INET, Some(lo4.clone()), None),
            udp(AF_INET, Some(lo4.clone()), Some(lo4.clone())),
            udp(AF_INET6, Some(lo6.clone()), Some(lo6.clone())),
            UdpSocket {
                other: Some(IpSocketKind {
                    sock_type: SOCK_RAW,
                    protocol: 262,
                }),
                ..udp(AF_INET6, Some(endpoint(&lo6.ip, 0)), None)
            },
            UdpSocket {
                other: Some(IpSocketKind {
                    sock_type: SOCK_DGRAM,
                    protocol: 1,
                }),
                ..udp(AF_INET, Some(endpoint(&[0; 4], 1234)), None)
            },
            UdpSocket {
                other: Some(IpSocketKind {
                    sock_type: SOCK_DGRAM,
                    protocol: IPPROTO_UDPLITE,
                }),
                shutdown: 3,
                ..udp(AF_INET, Some(lo4.clone()), Some(lo4.clone()))
            },
        ] {
            check_udp(0, &ident(FileKind::Udp(u.clone())), &u).unwrap();
        }
        let kind = |sock_type, protocol, local| UdpSocket {
            other: Some(IpSocketKind {
                sock_type,
                protocol,
            }),
            ..udp(AF_INET, local, None)
        };
        let mut pointer = udp(AF_INET, None, None);
        pointer.options[0].name = 26; // SO_ATTACH_FILTER carries a pointer
        let mut huge = udp(AF_INET, None, None);
        huge.options[0].value = vec![0; SOCKET_OPTION_MAX + 1];
        for (what, u) in [
            ("family", udp(1, None, None)),
            ("v6 address on v4", udp(AF_INET, Some(lo6.clone()), None)),
            (
                "port 0",
                udp(AF_INET, Some(endpoint(&[127, 0, 0, 1], 0)), None),
            ),
            ("peer without local", udp(AF_INET, None, Some(lo4.clone()))),
            ("unknown option", pointer),
            ("raw with a port", kind(SOCK_RAW, 1, Some(lo4.clone()))),
            ("raw of protocol 0", kind(SOCK_RAW, 0, None)),
            ("ping over ICMPv6 on IPv4", kind(SOCK_DGRAM, 58, None)),
            ("stream", kind(1, 6, None)),
            (
                "UDP-Lite port 0",
                kind(
                    SOCK_DGRAM,
                    IPPROTO_UDPLITE,
                    Some(endpoint(&[127, 0, 0, 1], 0)),
                ),
            ),
            (
                "shutdown bits beyond read and write",
                UdpSocket {
                    shutdown: 4,
                    ..udp(AF_INET, None, None)
                },
            ),
            (
                "too long a filter",
                UdpSocket {
                    filter: vec![
                        BpfInsn {
                            code: 6,
                            jt: 0,
                            jf: 0,
                            k: 0
                        };
                        BPF_MAXINSNS + 1
                    ],
                    ..udp(AF_INET, None, None)
                },
            ),
            ("long value", huge),
        ] {
            assert!(
                check_udp(0, &ident(FileKind::Udp(u.clone())), &u).is_err(),
                "{what} was accepted"
            );
        }
        let u = udp(AF_INET, None, None);
        let mut with_path = ident(FileKind::Udp(u.clone()));
        with_path.path = "/tmp/x".into();
        assert!(check_udp(0, &with_path, &u).is_err());
    }

    #[test]
    fn netlink_sockets_are_checked() {
        let good = NetlinkSocket {
            sock_type: 3,
            protocol: 0,
            port_id: 4242,
            groups: vec![1, 5, 40],
            dst_port_id: 0,
            dst_group: 0,
            options: vec![],
        };
        check_netlink(0, &ident(FileKind::Netlink(good.clone())), &good).unwrap();
        let bad = |f: &dyn Fn(&mut NetlinkSocket)| {
            let mut n = good.clone();
            f(&mut n);
            check_netlink(0, &ident(FileKind::Netlink(n.clone())), &n).is_err()
        };
        assert!(bad(&|n| n.protocol = 9), "audit");
        assert!(bad(&|n| n.sock_type = 1), "stream");
        assert!(bad(&|n| n.groups = vec![5, 1]), "unsorted");
        assert!(bad(&|n| n.groups = vec![0]), "group 0");
        assert!(
            bad(&|n| n.options = vec![SetSockOpt {
                level: SOL_NETLINK,
                name: 1,
                value: vec![1, 0, 0, 0]
            }]),
            "add membership through options"
        );
    }

    #[test]
    fn packet_sockets_are_checked() {
        let good = PacketSocket {
            sock_type: 3,
            protocol: 0x0800,
            ifindex: 1,
            ifname: "lo".into(),
            options: vec![SetSockOpt {
                level: SOL_PACKET,
                name: 10,
                value: 2i32.to_ne_bytes().to_vec(),
            }],
            copy_thresh: 0,
            memberships: vec![PacketMembership {
                ifindex: 1,
                count: 2,
                mr_type: 1,
                address: Vec::new(),
            }],
            rx_ring: Some(PacketRing {
                block_size: 4096,
                block_nr: 4,
                frame_size: 2048,
                frame_nr: 8,
                retire_tmo: 60,
                sizeof_priv: 0,
                features: 0,
            }),
            tx_ring: None,
            fanout: 77,
            filter: Vec::new(),
            filter_locked: false,
        };
        check_packet(0, &ident(FileKind::Packet(good.clone())), &good).unwrap();
        let unbound = PacketSocket {
            ifindex: 0,
            ifname: String::new(),
            ..good.clone()
        };
        check_packet(0, &ident(FileKind::Packet(unbound.clone())), &unbound).unwrap();
        let bad = |change: &dyn Fn(&mut PacketSocket)| {
            let mut p = good.clone();
            change(&mut p);
            check_packet(0, &ident(FileKind::Packet(p.clone())), &p).is_err()
        };
        assert!(bad(&|p| p.sock_type = 1), "stream");
        assert!(bad(&|p| p.ifname.clear()), "an interface without a name");
        assert!(
            bad(&|p| p.memberships[0].count = 0),
            "a membership never taken"
        );
        assert!(
            bad(&|p| p.memberships[0].address = vec![0; 33]),
            "a long address"
        );
        assert!(
            bad(&|p| p.rx_ring.as_mut().unwrap().frame_nr = 0),
            "an empty ring"
        );
        assert!(bad(&|p| p.fanout = 77 | (6 << 16)), "fanout by a program");
        assert!(bad(&|p| p.options[0].level = 999), "an unknown option");
    }
}
