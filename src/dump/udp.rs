//! UDP sockets (IPv4 and IPv6): what a restore needs to recreate one — its local address
//! (getsockname; port 0: never bound), its peer (getpeername: connected), and the options that
//! differ from a fresh socket's ([`crate::files::sockopts`]).
//!
//! Refused, each with what it is:
//! - datagrams waiting in the receive queue: MSG_PEEK shows only the first one (a peek offset,
//!   SO_PEEK_OFF, would walk through them, but the senders' addresses cannot be given back to
//!   datagrams queued anew, and a connected socket only takes datagrams from its peer), so
//!   crest refuses rather than drop them, naming the next datagram's size and the receive
//!   memory in use;
//! - a pending error (an ICMP error not yet reported, or the IP_RECVERR error queue);
//! - data corked in the send queue (UDP_CORK or MSG_MORE);
//! - encapsulation sockets (UDP_ENCAP: IPsec ESP-in-UDP, L2TP, GTP — kernel tunnel state) and
//!   sockets carrying an eBPF filter (a classic BPF filter is recorded and attached again);
//! - members of a multicast group: no getsockopt lists a socket's memberships, but every group
//!   a socket joins is joined on its interface (/proc/net/igmp, igmp6), and MCAST_MSFILTER
//!   tells, for one such (interface, group), whether this socket is a member.
//!
//! The shutdown state (shutdown(2): no getsockopt reads it, poll shows only the read side)
//! comes from sock_diag ([`crate::net::inetdiag`]) and is set again at restore. Without
//! udp_diag in the kernel, a socket shut down for reading is refused and one shut down for
//! writing only cannot be seen.
//!
//! UDP-Lite sockets (IPPROTO_UDPLITE) are recorded as UDP ones, with their checksum coverage
//! options (UDPLITE_SEND_CSCOV, UDPLITE_RECV_CSCOV).

use std::fs::Metadata;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use nix::errno::Errno;

use crate::files::sockopts;
use crate::images::{FileIdentity, FileKind, IpSocketKind, UdpEndpoint, UdpSocket};

use super::DumpError;

/// UDP_ENCAP (linux/udp.h).
const UDP_ENCAP: i32 = 100;
/// SO_GET_FILTER (= SO_ATTACH_FILTER).
const SO_GET_FILTER: i32 = 26;
/// SO_MEMINFO: `u32 meminfo[SK_MEMINFO_VARS]`, SK_MEMINFO_RMEM_ALLOC first.
const SO_MEMINFO: i32 = 55;
/// SIOCOUTQ (= TIOCOUTQ): bytes in the send queue.
const SIOCOUTQ: libc::c_ulong = 0x5411;
/// How long a non-empty send queue may take to drain (a datagram in flight to a NIC holds its
/// memory until the NIC is done) before it counts as corked.
const SEND_QUEUE_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// Records the UDP socket `copy` (crest's duplicate of `pid`'s fd `fd`).
pub fn record(
    pid: i32,
    fd: i32,
    md: &Metadata,
    copy: &OwnedFd,
    family: i32,
) -> Result<FileIdentity, DumpError> {
    record_inet(pid, fd, md, copy, family, None)
}

/// Records the UDP socket, or with `raw` Some(protocol) the raw IP socket of that protocol,
/// `copy` (crest's duplicate of `pid`'s fd `fd`). A raw socket is checked like a UDP one
/// (queued packets, pending errors, memberships and filters); its addresses have no port.
pub fn record_inet(
    pid: i32,
    fd: i32,
    md: &Metadata,
    copy: &OwnedFd,
    family: i32,
    other: Option<IpSocketKind>,
) -> Result<FileIdentity, DumpError> {
    let raw = other
        .filter(|k| k.sock_type == libc::SOCK_RAW as u32)
        .map(|k| k.protocol as i32);
    let ino = md.ino();
    let fam = if family == libc::AF_INET6 {
        "IPv6"
    } else {
        "IPv4"
    };
    let kind = match (other, raw) {
        (None, _) => format!("a UDP/{fam} socket"),
        (_, Some(p)) => format!("a raw {fam} socket of protocol {p}"),
        (Some(k), None) if k.protocol == libc::IPPROTO_UDPLITE as u32 => {
            format!("a UDP-Lite/{fam} socket")
        }
        (Some(_), None) => format!("a ping (ICMP datagram) {fam} socket"),
    };
    let refuse = |what: String| DumpError::UnsupportedFd {
        pid,
        fd,
        what: format!("{kind} (inode {ino}) {what}"),
    };
    let sock = copy.as_fd();
    // A raw socket's port is its protocol: what counts is the address alone.
    let portless = |e: Option<UdpEndpoint>| match raw {
        None => e.filter(|e| e.port != 0),
        Some(_) => e
            .filter(|e| e.ip.iter().any(|b| *b != 0))
            .map(|e| UdpEndpoint { port: 0, ..e }),
    };
    let local = address(copy, false)
        .map(portless)
        .map_err(|e| refuse(format!("whose address cannot be read ({e})")))?;
    let peer = match address_any_port(copy, true) {
        Ok(p) => portless(p),
        Err(Errno::ENOTCONN) => None,
        Err(e) => return Err(refuse(format!("whose peer cannot be read ({e})"))),
    };
    let at = match (&local, &peer) {
        (Some(l), Some(p)) => format!(
            "bound to {}, connected to {}",
            sockopts::endpoint_text(l),
            sockopts::endpoint_text(p)
        ),
        (Some(l), None) => format!("bound to {}", sockopts::endpoint_text(l)),
        _ => "unbound".to_string(),
    };
    let refuse = |what: String| refuse(format!("{at}, {what}"));

    let mut p = libc::pollfd {
        fd: copy.as_raw_fd(),
        events: libc::POLLIN | libc::POLLPRI | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: p is one valid pollfd; a zero timeout does not block.
    if unsafe { libc::poll(&mut p, 1, 0) } < 0 {
        return Err(refuse(format!(
            "whose state cannot be polled ({})",
            Errno::last()
        )));
    }
    // UDP and UDP-Lite: the shutdown state and the queued memory, from sock_diag.
    let udp_protocol = match other {
        None => Some(libc::IPPROTO_UDP),
        Some(k) if raw.is_none() && k.protocol == libc::IPPROTO_UDPLITE as u32 => {
            Some(libc::IPPROTO_UDPLITE)
        }
        Some(_) => None,
    };
    let diag = udp_protocol.and_then(|proto| {
        crate::net::inetdiag::datagram(family, proto, ino)
            .ok()
            .flatten()
    });
    let shutdown = diag.map_or(0, |d| d.shutdown);
    if diag.is_none() && p.revents & libc::POLLRDHUP != 0 {
        return Err(refuse(
            "shut down for reading (shutdown(2)); crest cannot restore a shut-down UDP socket"
                .into(),
        ));
    }
    if p.revents & libc::POLLERR != 0 {
        return Err(refuse(
            "with an error the program has not read yet (an ICMP error such as port \
             unreachable, or the IP_RECVERR error queue); crest cannot carry it over: dump it \
             once the program has read it"
                .into(),
        ));
    }
    // A socket shut down for reading always polls readable: its queue is what counts.
    let queued = match diag {
        Some(d) if d.shutdown & crate::net::inetdiag::RCV_SHUTDOWN != 0 => d.rqueue > 0,
        _ => p.revents & libc::POLLIN != 0,
    };
    if queued {
        let next = next_datagram_len(copy);
        let rmem = sockopts::get(sock, libc::SOL_SOCKET, SO_MEMINFO)
            .ok()
            .and_then(|m| {
                m.get(..4)
                    .map(|b| u32::from_ne_bytes(b.try_into().unwrap()))
            });
        let next = next.map_or(String::new(), |n| format!("the next holds {n} bytes; "));
        let rmem = rmem.map_or(String::new(), |m| {
            format!("{m} bytes of receive buffer in use")
        });
        return Err(refuse(format!(
            "with datagrams waiting to be read ({next}{rmem}); crest cannot put received \
             datagrams back with their senders' addresses and does not drop them: dump it \
             when the program has read them"
        )));
    }
    let unsent = match unsent_bytes(copy) {
        // A ping socket has no SIOCOUTQ; it sends each echo at once (it cannot cork).
        Err(Errno::ENOTTY) if other.is_some() && raw.is_none() => 0,
        r => r.map_err(|e| refuse(format!("whose send queue cannot be read ({e})")))?,
    };
    if unsent > 0 {
        return Err(refuse(format!(
            "with {unsent} bytes not sent yet (corked with UDP_CORK or MSG_MORE); crest cannot \
             carry them over: dump it once the program has sent them"
        )));
    }
    match sockopts::get_int(sock, libc::SOL_UDP, UDP_ENCAP) {
        Ok(0) | Err(_) => {}
        Ok(kind) => {
            return Err(refuse(format!(
                "used for UDP encapsulation (UDP_ENCAP type {kind}: IPsec ESP-in-UDP, L2TP, GTP \
                 or similar); the kernel's tunnel state cannot be dumped"
            )))
        }
    }
    let (filter, filter_locked) = crate::files::sockfilter::read(sock).map_err(refuse)?;
    if let Some(g) = crate::proc::joined_groups()
        .into_iter()
        .find(|g| is_member(copy, family, g))
    {
        let group = match <[u8; 4]>::try_from(&g.group[..]) {
            Ok(v4) => std::net::Ipv4Addr::from(v4).to_string(),
            Err(_) => <[u8; 16]>::try_from(&g.group[..]).map_or_else(
                |_| "?".into(),
                |v6| std::net::Ipv6Addr::from(v6).to_string(),
            ),
        };
        return Err(refuse(format!(
            "a member of the multicast group {group} on {} (interface {}); crest cannot \
             restore multicast memberships yet: dump the program before it joins the group",
            g.device, g.ifindex
        )));
    }

    let (ty, protocol) = match other {
        None => (libc::SOCK_DGRAM, libc::IPPROTO_UDP),
        Some(k) => (k.sock_type as i32, k.protocol as i32),
    };
    let fresh = sockopts::socket(family, ty, protocol).map_err(|e| {
        refuse(format!(
            "(crest cannot create such a socket to compare: {e})"
        ))
    })?;
    let mut levels = vec![libc::SOL_SOCKET, libc::SOL_IP];
    levels.push(match (other, udp_protocol) {
        (None, _) => libc::SOL_UDP,
        (Some(_), Some(_)) => crate::images::validate::SOL_UDPLITE,
        (Some(_), None) => crate::images::validate::SOL_RAW,
    });
    if family == libc::AF_INET6 {
        levels.push(libc::SOL_IPV6);
        if raw.is_some() {
            levels.push(crate::images::validate::SOL_ICMPV6);
        }
    }
    let options = sockopts::differing(sock, fresh.as_fd(), &levels);
    Ok(crate::files::object_identity(
        String::new(),
        FileKind::Udp(UdpSocket {
            family: family as u32,
            local,
            peer,
            options,
            filter,
            filter_locked,
            other,
            shutdown,
        }),
        md.dev(),
        ino,
    ))
}

/// Refuses a socket with a BPF filter attached (SO_ATTACH_FILTER / SO_ATTACH_BPF).
pub fn filter_check(sock: &OwnedFd) -> Result<(), String> {
    let mut len: libc::socklen_t = 0;
    let mut dummy = [0u8; 8];
    // SAFETY: with a length of 0 the kernel only reports the filter's size in len.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_GET_FILTER,
            dummy.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(format!(
            "with a socket filter crest cannot read (SO_GET_FILTER: {}; an eBPF program?); \
             socket filters cannot be dumped",
            Errno::last()
        ));
    }
    if len > 0 {
        return Err(format!(
            "with a BPF socket filter of {len} instructions (SO_ATTACH_FILTER); socket \
             filters cannot be dumped yet"
        ));
    }
    Ok(())
}

/// Whether the socket joined `g` (getsockopt MCAST_MSFILTER finds its membership, or fails
/// with EADDRNOTAVAIL). IPv4 groups are asked at SOL_IP (an IPv6 socket may join them there
/// too), IPv6 groups at SOL_IPV6 of an IPv6 socket.
fn is_member(sock: &OwnedFd, family: i32, g: &crate::proc::JoinedGroup) -> bool {
    const MCAST_MSFILTER: i32 = 48;
    // struct group_filter: gf_interface, padding, gf_group (sockaddr_storage), gf_fmode,
    // gf_numsrc, gf_slist[1].
    const GROUP: usize = 8;
    let mut buf = [0u64; 34];
    // SAFETY: the buffer is 272 bytes, u64-aligned; viewed as bytes to fill the fields.
    let bytes: &mut [u8] = unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast(), 272) };
    bytes[..4].copy_from_slice(&g.ifindex.to_ne_bytes());
    let level = match g.group.len() {
        4 => {
            bytes[GROUP..GROUP + 2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            bytes[GROUP + 4..GROUP + 8].copy_from_slice(&g.group);
            libc::SOL_IP
        }
        16 if family == libc::AF_INET6 => {
            bytes[GROUP..GROUP + 2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            bytes[GROUP + 8..GROUP + 24].copy_from_slice(&g.group);
            libc::SOL_IPV6
        }
        _ => return false,
    };
    let mut len: libc::socklen_t = 272;
    // SAFETY: buf holds 272 writable bytes; len says so.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            level,
            MCAST_MSFILTER,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    r == 0
}

/// The size of the next datagram (FIONREAD).
fn next_datagram_len(sock: &OwnedFd) -> Option<i32> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::FIONREAD, &mut n) };
    (r == 0).then_some(n)
}

/// Bytes in the send queue once datagrams already handed to the device have left (SIOCOUTQ).
fn unsent_bytes(sock: &OwnedFd) -> Result<i32, Errno> {
    let start = std::time::Instant::now();
    loop {
        let mut n: libc::c_int = 0;
        // SAFETY: SIOCOUTQ writes one int.
        if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCOUTQ as _, &mut n) } < 0 {
            return Err(Errno::last());
        }
        if n == 0 || start.elapsed() > SEND_QUEUE_WAIT {
            return Ok(n);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// getsockname (`peer` false) or getpeername of an IPv4/IPv6 socket; None for port 0.
pub fn address(sock: &OwnedFd, peer: bool) -> Result<Option<UdpEndpoint>, Errno> {
    Ok(address_any_port(sock, peer)?.filter(|e| e.port != 0))
}

/// getsockname (`peer` false) or getpeername of an IPv4/IPv6 socket, port 0 included.
fn address_any_port(sock: &OwnedFd, peer: bool) -> Result<Option<UdpEndpoint>, Errno> {
    let ss = crate::net::sock::raw_name(sock.as_fd(), peer)?;
    let e = match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in (family AF_INET).
            let a: &libc::sockaddr_in = unsafe { &*(&ss as *const _ as *const libc::sockaddr_in) };
            UdpEndpoint {
                ip: a.sin_addr.s_addr.to_ne_bytes().to_vec(),
                port: u16::from_be(a.sin_port),
                flowinfo: 0,
                scope_id: 0,
            }
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6 (family AF_INET6).
            let a: &libc::sockaddr_in6 =
                unsafe { &*(&ss as *const _ as *const libc::sockaddr_in6) };
            UdpEndpoint {
                ip: a.sin6_addr.s6_addr.to_vec(),
                port: u16::from_be(a.sin6_port),
                flowinfo: a.sin6_flowinfo,
                scope_id: a.sin6_scope_id,
            }
        }
        _ => return Err(Errno::EAFNOSUPPORT),
    };
    Ok(Some(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket as Std;

    fn record_own(s: &Std) -> Result<FileIdentity, DumpError> {
        let md = std::fs::metadata(format!("/proc/self/fd/{}", s.as_raw_fd())).unwrap();
        let copy = s.as_fd().try_clone_to_owned().unwrap();
        let family = sockopts::get_int(copy.as_fd(), libc::SOL_SOCKET, libc::SO_DOMAIN).unwrap();
        record(std::process::id() as i32, s.as_raw_fd(), &md, &copy, family)
    }

    fn udp(ident: &FileIdentity) -> &UdpSocket {
        match &ident.kind {
            FileKind::Udp(u) => u,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_classic_bpf_filter_is_recorded_with_its_lock() {
        use crate::images::BpfInsn;
        let a = Std::bind("127.0.0.1:0").unwrap();
        let prog = [
            BpfInsn {
                code: 0x6,
                jt: 0,
                jf: 0,
                k: 0xffff,
            },
            BpfInsn {
                code: 0x6,
                jt: 0,
                jf: 0,
                k: 0,
            },
        ];
        crate::files::sockfilter::attach(a.as_fd(), &prog, true).unwrap();
        let ident = record_own(&a).unwrap();
        let u = udp(&ident);
        assert_eq!((&u.filter[..], u.filter_locked), (&prog[..], true));
    }

    #[test]
    fn bound_and_connected_sockets_are_recorded_with_their_options() {
        let a = Std::bind("127.0.0.1:0").unwrap();
        let b = Std::bind("127.0.0.1:0").unwrap();
        a.set_broadcast(true).unwrap();
        a.connect(b.local_addr().unwrap()).unwrap();
        let ident = record_own(&a).unwrap();
        let u = udp(&ident);
        assert_eq!(u.family, libc::AF_INET as u32);
        let local = u.local.as_ref().unwrap();
        assert_eq!(
            sockopts::endpoint_text(local),
            a.local_addr().unwrap().to_string()
        );
        assert_eq!(
            sockopts::endpoint_text(u.peer.as_ref().unwrap()),
            b.local_addr().unwrap().to_string()
        );
        assert_eq!(sockopts::describe(&u.options), "SO_BROADCAST=1");

        let v6 = Std::bind("[::1]:0").unwrap();
        let ident = record_own(&v6).unwrap();
        let u = udp(&ident);
        assert_eq!(u.family, libc::AF_INET6 as u32);
        assert_eq!(
            sockopts::endpoint_text(u.local.as_ref().unwrap()),
            v6.local_addr().unwrap().to_string()
        );
        assert!(u.peer.is_none());
    }

    #[test]
    fn unbound_socket_has_no_address() {
        let s = sockopts::socket(libc::AF_INET6, libc::SOCK_DGRAM, 0).unwrap();
        let s = Std::from(s);
        let ident = record_own(&s).unwrap();
        assert_eq!(udp(&ident).local, None);
        assert_eq!(udp(&ident).peer, None);
    }

    #[test]
    fn queued_datagrams_are_refused_and_left_in_place() {
        let a = Std::bind("127.0.0.1:0").unwrap();
        let b = Std::bind("127.0.0.1:0").unwrap();
        b.send_to(b"hello", a.local_addr().unwrap()).unwrap();
        b.send_to(b"again", a.local_addr().unwrap()).unwrap();
        let err = record_own(&a).unwrap_err().to_string();
        assert!(err.contains("datagrams waiting"), "{err}");
        assert!(err.contains("the next holds 5 bytes"), "{err}");
        let mut buf = [0u8; 16];
        assert_eq!(a.recv(&mut buf).unwrap(), 5);
        assert_eq!(a.recv(&mut buf).unwrap(), 5);
        record_own(&a).unwrap();
    }

    #[test]
    fn pending_error_is_refused() {
        let a = Std::bind("127.0.0.1:0").unwrap();
        let gone = Std::bind("127.0.0.1:0").unwrap();
        let to = gone.local_addr().unwrap();
        drop(gone);
        a.connect(to).unwrap();
        a.send(b"x").unwrap();
        // The port unreachable error arrives asynchronously; wait for it through poll.
        let mut p = libc::pollfd {
            fd: a.as_raw_fd(),
            events: 0,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        assert_eq!(unsafe { libc::poll(&mut p, 1, 5000) }, 1);
        let err = record_own(&a).unwrap_err().to_string();
        assert!(err.contains("error the program has not read"), "{err}");
    }

    #[test]
    fn multicast_members_are_refused() {
        let s = Std::bind("127.0.0.1:0").unwrap();
        let other = Std::bind("127.0.0.1:0").unwrap();
        let group = std::net::Ipv4Addr::new(239, 7, 7, 7);
        s.join_multicast_v4(&group, &std::net::Ipv4Addr::LOCALHOST)
            .unwrap();
        let err = record_own(&s).unwrap_err().to_string();
        assert!(err.contains("multicast group 239.7.7.7 on lo"), "{err}");
        // Another socket is not a member because this one is.
        record_own(&other).unwrap();
        let v6 = Std::bind("[::1]:0").unwrap();
        let group6: std::net::Ipv6Addr = "ff02::7:7".parse().unwrap();
        v6.join_multicast_v6(&group6, 1).unwrap();
        let err = record_own(&v6).unwrap_err().to_string();
        assert!(err.contains("multicast group ff02::7:7"), "{err}");
    }

    #[test]
    fn corked_data_is_refused() {
        let a = Std::bind("127.0.0.1:0").unwrap();
        let b = Std::bind("127.0.0.1:0").unwrap();
        a.connect(b.local_addr().unwrap()).unwrap();
        sockopts::set(
            a.as_fd(),
            libc::SOL_UDP,
            libc::UDP_CORK,
            &1i32.to_ne_bytes(),
        )
        .unwrap();
        a.send(b"held back").unwrap();
        let err = record_own(&a).unwrap_err().to_string();
        assert!(err.contains("not sent yet"), "{err}");
    }
}
