//! Recreating UDP sockets ([`UdpSocket`]) in crest before the fork: a socket of the same
//! family, the recorded options (SO_REUSEADDR, IPV6_V6ONLY, SO_BINDTODEVICE ... all before
//! bind), bind to the recorded address and port, connect to the recorded peer.
//!
//! The local address a connected socket reports is the one the route chose at connect time;
//! binding it explicitly before connecting gives the same address and port. (After a later
//! connect(AF_UNSPEC) the original would fall back to the address it was bound to, possibly
//! the wildcard; the restored one keeps the specific address.)

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use crate::files::sockopts;
use crate::images::{UdpEndpoint, UdpSocket};

use super::RestoreError;

/// Binds with `bind` with IP_FREEBIND on, then gives IP_FREEBIND its value again; None when
/// the option cannot be read or set.
fn bind_free(
    sock: std::os::fd::BorrowedFd<'_>,
    bind: &dyn Fn() -> std::io::Result<()>,
) -> Option<std::io::Result<()>> {
    let was = sockopts::get_int(sock, libc::SOL_IP, libc::IP_FREEBIND).ok()?;
    sockopts::set(sock, libc::SOL_IP, libc::IP_FREEBIND, &1i32.to_ne_bytes()).ok()?;
    let r = bind();
    sockopts::set(sock, libc::SOL_IP, libc::IP_FREEBIND, &was.to_ne_bytes()).ok()?;
    Some(r)
}

/// Creates the UDP socket `u` with the file status flags `status_flags`; close-on-exec.
pub fn create(u: &UdpSocket, status_flags: u32) -> Result<OwnedFd, RestoreError> {
    let text = sockopts::udp_text(u);
    let fail = |what: String| RestoreError::Os {
        what: format!("the {text}: {what}"),
        source: std::io::Error::last_os_error(),
    };
    let family = u.family as i32;
    let (ty, protocol) = match u.other {
        None => (libc::SOCK_DGRAM, libc::IPPROTO_UDP),
        Some(k) => (k.sock_type as i32, k.protocol as i32),
    };
    let sock = sockopts::socket(family, ty, protocol).map_err(|_| fail("socket".into()))?;
    sockopts::apply(sock.as_fd(), &u.options).map_err(|e| RestoreError::Os {
        what: format!("the {text}: {e}"),
        source: std::io::Error::last_os_error(),
    })?;
    crate::files::sockfilter::attach(sock.as_fd(), &u.filter, u.filter_locked).map_err(|e| {
        RestoreError::Os {
            what: format!("the {text}: {e}"),
            source: std::io::Error::last_os_error(),
        }
    })?;
    if let Some(local) = &u.local {
        let (addr, len) = sockaddr(family, local)?;
        let bind = || {
            // SAFETY: addr holds a valid socket address of `len` bytes.
            let r = unsafe {
                libc::bind(
                    sock.as_raw_fd(),
                    (&addr as *const libc::sockaddr_storage).cast(),
                    len,
                )
            };
            if r < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        let bound = match bind() {
            // An address the host does not have: the program bound it with IP_FREEBIND and
            // may have turned that off since. Bound the same way, the option then put back.
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                bind_free(sock.as_fd(), &bind).unwrap_or(Err(e))
            }
            r => r,
        };
        if let Err(source) = bound {
            let hint = if source.raw_os_error() == Some(libc::EADDRINUSE) {
                " (another socket holds that address: the dumped process still running, or \
                 another program; stop it first)"
            } else {
                ""
            };
            return Err(RestoreError::Os {
                what: format!(
                    "the {text}: bind to {}{hint}",
                    sockopts::endpoint_text(local)
                ),
                source,
            });
        }
    }
    if let Some(peer) = &u.peer {
        let (addr, len) = sockaddr(family, peer)?;
        // SAFETY: addr holds a valid socket address of `len` bytes.
        if unsafe {
            libc::connect(
                sock.as_raw_fd(),
                (&addr as *const libc::sockaddr_storage).cast(),
                len,
            )
        } < 0
        {
            return Err(fail(format!(
                "connect to {}",
                sockopts::endpoint_text(peer)
            )));
        }
    }
    if u.shutdown != 0 {
        let how = match u.shutdown {
            1 => libc::SHUT_RD,
            2 => libc::SHUT_WR,
            _ => libc::SHUT_RDWR,
        };
        // SAFETY: shutdown on a socket we own. An unconnected socket answers ENOTCONN but the
        // kernel sets its shutdown bits all the same (as it did for the program).
        if unsafe { libc::shutdown(sock.as_raw_fd(), how) } < 0
            && std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOTCONN)
        {
            return Err(fail("shutdown".into()));
        }
    }
    if status_flags as i32 & libc::O_NONBLOCK != 0 {
        // SAFETY: F_SETFL on a descriptor we own.
        if unsafe { libc::fcntl(sock.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } < 0 {
            return Err(fail("making it non-blocking".into()));
        }
    }
    Ok(sock)
}

/// The socket address of `e` in `family`.
fn sockaddr(
    family: i32,
    e: &UdpEndpoint,
) -> Result<(libc::sockaddr_storage, libc::socklen_t), RestoreError> {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let bad = || {
        RestoreError::BadImage(format!(
            "a UDP address of {} bytes in family {family}",
            e.ip.len()
        ))
    };
    match family {
        libc::AF_INET => {
            let ip: [u8; 4] = e.ip[..].try_into().map_err(|_| bad())?;
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            let a = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            a.sin_family = libc::AF_INET as libc::sa_family_t;
            a.sin_port = e.port.to_be();
            a.sin_addr.s_addr = u32::from_ne_bytes(ip);
            Ok((
                ss,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ))
        }
        libc::AF_INET6 => {
            let ip: [u8; 16] = e.ip[..].try_into().map_err(|_| bad())?;
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            let a = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            a.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            a.sin6_port = e.port.to_be();
            a.sin6_addr.s6_addr = ip;
            a.sin6_flowinfo = e.flowinfo;
            a.sin6_scope_id = e.scope_id;
            Ok((
                ss,
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            ))
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::SetSockOpt;
    use std::net::UdpSocket as Std;

    fn endpoint(addr: std::net::SocketAddr) -> UdpEndpoint {
        match addr {
            std::net::SocketAddr::V4(a) => UdpEndpoint {
                ip: a.ip().octets().to_vec(),
                port: a.port(),
                flowinfo: 0,
                scope_id: 0,
            },
            std::net::SocketAddr::V6(a) => UdpEndpoint {
                ip: a.ip().octets().to_vec(),
                port: a.port(),
                flowinfo: 0,
                scope_id: 0,
            },
        }
    }

    #[test]
    fn bound_connected_socket_comes_back_and_exchanges_datagrams() {
        for (family, any) in [(libc::AF_INET, "127.0.0.1:0"), (libc::AF_INET6, "[::1]:0")] {
            let peer = Std::bind(any).unwrap();
            // A free port: bind one, note it, let it go.
            let port_holder = Std::bind(any).unwrap();
            let local = port_holder.local_addr().unwrap();
            drop(port_holder);
            let u = UdpSocket {
                family: family as u32,
                local: Some(endpoint(local)),
                peer: Some(endpoint(peer.local_addr().unwrap())),
                options: vec![SetSockOpt {
                    level: libc::SOL_SOCKET,
                    name: libc::SO_REUSEADDR,
                    value: 1i32.to_ne_bytes().to_vec(),
                }],
                filter: Vec::new(),
                filter_locked: false,
                shutdown: 0,
                other: None,
            };
            let s = Std::from(create(&u, (libc::O_RDWR | libc::O_NONBLOCK) as u32).unwrap());
            assert_eq!(s.local_addr().unwrap(), local);
            assert_eq!(s.peer_addr().unwrap(), peer.local_addr().unwrap());
            assert_eq!(
                sockopts::get_int(s.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR),
                Ok(1)
            );
            s.send(b"ping").unwrap();
            let mut buf = [0u8; 8];
            let (n, from) = peer.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], from), (&b"ping"[..], local));
            peer.send_to(b"pong", local).unwrap();
            s.set_nonblocking(false).unwrap();
            assert_eq!(s.recv(&mut buf).unwrap(), 4);
        }
    }

    #[test]
    fn an_address_bound_with_ip_freebind_since_turned_off_is_bound_again_and_the_option_stays_off()
    {
        // A documentation address (RFC 3849) no host has.
        let ip: std::net::Ipv6Addr = "2001:db8::ff00:42:8329".parse().unwrap();
        let local =
            std::net::SocketAddr::new(ip.into(), 56000 + (std::process::id() % 1000) as u16);
        let u = UdpSocket {
            family: libc::AF_INET6 as u32,
            local: Some(endpoint(local)),
            peer: None,
            options: vec![],
            filter: Vec::new(),
            filter_locked: false,
            shutdown: 0,
            other: None,
        };
        let s = Std::from(create(&u, libc::O_RDWR as u32).unwrap());
        assert_eq!(s.local_addr().unwrap(), local);
        assert_eq!(
            sockopts::get_int(s.as_fd(), libc::SOL_IP, libc::IP_FREEBIND),
            Ok(0)
        );
    }

    #[test]
    fn a_recorded_filter_is_attached_again_and_locked() {
        use crate::images::BpfInsn;
        let prog = vec![BpfInsn {
            code: 0x6,
            jt: 0,
            jf: 0,
            k: 0xffff,
        }];
        let u = UdpSocket {
            family: libc::AF_INET as u32,
            local: None,
            peer: None,
            options: vec![],
            filter: prog.clone(),
            filter_locked: true,
            shutdown: 0,
            other: None,
        };
        let s = create(&u, libc::O_RDWR as u32).unwrap();
        assert_eq!(
            crate::files::sockfilter::read(s.as_fd()).unwrap(),
            (prog, true)
        );
    }

    #[test]
    fn a_raw_ip_socket_comes_back_bound_with_its_protocol_and_options() {
        let u = UdpSocket {
            family: libc::AF_INET as u32,
            local: Some(UdpEndpoint {
                ip: vec![127, 0, 0, 1],
                port: 0,
                flowinfo: 0,
                scope_id: 0,
            }),
            peer: None,
            options: vec![SetSockOpt {
                level: libc::SOL_IP,
                name: libc::IP_HDRINCL,
                value: 1i32.to_ne_bytes().to_vec(),
            }],
            filter: Vec::new(),
            filter_locked: false,
            shutdown: 0,
            other: Some(crate::images::IpSocketKind {
                sock_type: libc::SOCK_RAW as u32,
                protocol: 253,
            }),
        };
        let s = create(&u, libc::O_RDWR as u32).unwrap();
        let int = |level, name| sockopts::get_int(s.as_fd(), level, name);
        assert_eq!(int(libc::SOL_SOCKET, libc::SO_TYPE), Ok(libc::SOCK_RAW));
        assert_eq!(int(libc::SOL_SOCKET, libc::SO_PROTOCOL), Ok(253));
        assert_eq!(int(libc::SOL_IP, libc::IP_HDRINCL), Ok(1));
        let name = std::net::UdpSocket::from(s).local_addr().unwrap();
        assert_eq!(name.ip().to_string(), "127.0.0.1");
    }

    #[test]
    fn taken_port_is_reported() {
        let holder = Std::bind("127.0.0.1:0").unwrap();
        let u = UdpSocket {
            family: libc::AF_INET as u32,
            local: Some(endpoint(holder.local_addr().unwrap())),
            peer: None,
            options: vec![],
            filter: Vec::new(),
            filter_locked: false,
            shutdown: 0,
            other: None,
        };
        let err = create(&u, 0).unwrap_err().to_string();
        assert!(err.contains("another socket holds that address"), "{err}");
    }
}
