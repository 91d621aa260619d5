//! Thin wrappers over the socket calls the TCP code makes: options as bytes or ints, addresses
//! as `std::net::SocketAddr`, TCP_INFO, the queue ioctls.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

/// TCP_REPAIR and friends (linux/tcp.h).
pub const TCP_REPAIR: i32 = 19;
pub const TCP_REPAIR_QUEUE: i32 = 20;
pub const TCP_QUEUE_SEQ: i32 = 21;
pub const TCP_REPAIR_OPTIONS: i32 = 22;
pub const TCP_TIMESTAMP: i32 = 24;
pub const TCP_REPAIR_WINDOW: i32 = 29;
pub const TCP_NO_QUEUE: i32 = 0;
pub const TCP_RECV_QUEUE: i32 = 1;
pub const TCP_SEND_QUEUE: i32 = 2;
/// SO_BUF_LOCK (Linux 5.14+): which of SO_SNDBUF/SO_RCVBUF the program set.
pub const SO_BUF_LOCK: i32 = 72;
/// SIOCOUTQNSD: bytes written and not yet sent.
pub const SIOCOUTQNSD: libc::c_ulong = 0x894B;

/// tcpi_options bits.
pub const TCPI_OPT_TIMESTAMPS: u8 = 1;
pub const TCPI_OPT_SACK: u8 = 2;
pub const TCPI_OPT_WSCALE: u8 = 4;

/// TCP states (include/net/tcp_states.h).
pub fn state_name(state: u8) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "unknown",
    }
}
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_SYN_SENT: u8 = 2;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_LISTEN: u8 = 10;

/// The phase of a connection in the TCP state `state`; None for a state without a connection
/// crest can carry (closed, listening, SYN_SENT, SYN_RECV, TIME_WAIT).
pub fn tcp_phase(state: u8) -> Option<crate::images::TcpPhase> {
    use crate::images::TcpPhase;
    Some(match state {
        TCP_ESTABLISHED => TcpPhase::Established,
        4 => TcpPhase::FinWait1,
        5 => TcpPhase::FinWait2,
        8 => TcpPhase::CloseWait,
        9 => TcpPhase::LastAck,
        11 => TcpPhase::Closing,
        _ => return None,
    })
}

/// `getsockopt(level, name)` into at most `max` bytes.
pub fn get_bytes(fd: BorrowedFd, level: i32, name: i32, max: usize) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; max];
    let mut len = max as libc::socklen_t;
    // SAFETY: buf and len are valid for writes of the sizes given.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    buf.truncate(len as usize);
    Ok(buf)
}

/// `setsockopt(level, name, value)`.
pub fn set_bytes(fd: BorrowedFd, level: i32, name: i32, value: &[u8]) -> Result<(), Errno> {
    // SAFETY: value is readable for value.len() bytes.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

pub fn get_int(fd: BorrowedFd, level: i32, name: i32) -> Result<i32, Errno> {
    let b = get_bytes(fd, level, name, 4)?;
    if b.len() != 4 {
        return Err(Errno::EINVAL);
    }
    Ok(i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

pub fn set_int(fd: BorrowedFd, level: i32, name: i32, v: i32) -> Result<(), Errno> {
    set_bytes(fd, level, name, &v.to_ne_bytes())
}

/// An ioctl that reports an int (SIOCINQ, SIOCOUTQ, SIOCOUTQNSD).
pub fn ioctl_int(fd: BorrowedFd, req: libc::c_ulong) -> Result<i32, Errno> {
    let mut v: libc::c_int = 0;
    // SAFETY: these ioctls write one int to the pointer.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, &mut v as *mut libc::c_int) };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(v)
}

/// A new socket of the given kind, close-on-exec.
pub fn socket(family: i32, ty: i32, protocol: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: socket(2) takes only integers.
    let raw = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, protocol) };
    if raw < 0 {
        return Err(Errno::last());
    }
    // SAFETY: raw is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// A new TCP socket (close-on-exec) of `family`.
pub fn tcp_socket(family: i32) -> Result<OwnedFd, Errno> {
    socket(family, libc::SOCK_STREAM, libc::IPPROTO_TCP)
}

fn from_storage(ss: &libc::sockaddr_storage) -> Result<SocketAddr, Errno> {
    match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Ok(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Ok(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => Err(Errno::EAFNOSUPPORT),
    }
}

fn to_storage(a: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in.
            let sin = unsafe {
                &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in6.
            let sin6 = unsafe {
                &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            sin6.sin6_flowinfo = v6.flowinfo();
            sin6.sin6_scope_id = v6.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// getsockname(2) (`peer` false) or getpeername(2): the address as the kernel wrote it, of
/// any family.
pub fn raw_name(fd: BorrowedFd, peer: bool) -> Result<libc::sockaddr_storage, Errno> {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let p = (&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr>();
    // SAFETY: ss and len are valid for writes of the sizes given.
    let r = unsafe {
        if peer {
            libc::getpeername(fd.as_raw_fd(), p, &mut len)
        } else {
            libc::getsockname(fd.as_raw_fd(), p, &mut len)
        }
    };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(ss)
}

/// getsockname(2) or getpeername(2).
fn name(fd: BorrowedFd, peer: bool) -> Result<SocketAddr, Errno> {
    from_storage(&raw_name(fd, peer)?)
}

pub fn local_addr(fd: BorrowedFd) -> Result<SocketAddr, Errno> {
    name(fd, false)
}

pub fn peer_addr(fd: BorrowedFd) -> Result<SocketAddr, Errno> {
    name(fd, true)
}

/// The signature of bind(2) and connect(2).
type AddrCall =
    unsafe extern "C" fn(libc::c_int, *const libc::sockaddr, libc::socklen_t) -> libc::c_int;

/// bind(2) or connect(2) (`call`) of `fd` to `a`.
fn with_addr(fd: BorrowedFd, a: &SocketAddr, call: AddrCall) -> Result<(), Errno> {
    let (ss, len) = to_storage(a);
    // SAFETY: ss holds a valid address of len bytes.
    let r = unsafe {
        call(
            fd.as_raw_fd(),
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

pub fn bind(fd: BorrowedFd, a: &SocketAddr) -> Result<(), Errno> {
    with_addr(fd, a, libc::bind)
}

pub fn connect(fd: BorrowedFd, a: &SocketAddr) -> Result<(), Errno> {
    with_addr(fd, a, libc::connect)
}

/// The fields of TCP_INFO crest reads.
#[derive(Debug, Clone, Copy)]
pub struct TcpInfo {
    pub state: u8,
    pub options: u8,
    pub snd_wscale: u8,
    pub rcv_wscale: u8,
    /// For a listener: connections waiting to be accepted (the kernel's alias of tcpi_unacked).
    pub unacked: u32,
    /// For a listener: its backlog (alias of tcpi_sacked).
    pub sacked: u32,
    /// Segments sent (tcpi_segs_out; 0 on kernels without it): a closed socket that sent any
    /// had a connection (a disconnect or a refused connect sets it back to 0).
    pub segs_out: u32,
}

pub fn tcp_info(fd: BorrowedFd) -> Result<TcpInfo, Errno> {
    let b = get_bytes(fd, libc::IPPROTO_TCP, libc::TCP_INFO, 144)?;
    if b.len() < 32 {
        return Err(Errno::EINVAL);
    }
    let u32_at = |at: usize| u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    Ok(TcpInfo {
        state: b[0],
        options: b[5],
        snd_wscale: b[6] & 0xf,
        rcv_wscale: b[6] >> 4,
        unacked: u32_at(24),
        sacked: u32_at(28),
        segs_out: if b.len() >= 140 { u32_at(136) } else { 0 },
    })
}

/// Peeks at up to `n` bytes (asks for one more, to see whether there are more).
pub fn peek(fd: BorrowedFd, n: usize) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; n + 1];
    loop {
        // SAFETY: buf is writable for buf.len() bytes.
        let r = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if r < 0 && Errno::last() == Errno::EINTR {
            continue;
        }
        if r < 0 {
            let e = Errno::last();
            // An empty queue in repair mode reads as "would block".
            if e == Errno::EAGAIN && n == 0 {
                return Ok(Vec::new());
            }
            return Err(e);
        }
        buf.truncate(r as usize);
        return Ok(buf);
    }
}

/// Sends all of `data` without waiting: a full send buffer is an error (EAGAIN).
pub fn send_all_nonblocking(fd: BorrowedFd, mut data: &[u8]) -> Result<(), Errno> {
    while !data.is_empty() {
        // SAFETY: data is readable for its length.
        let r = unsafe {
            libc::send(
                fd.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            let e = Errno::last();
            if e == Errno::EINTR {
                continue;
            }
            return Err(e);
        }
        data = &data[r as usize..];
    }
    Ok(())
}

/// Sends all of `data` (blocking socket), in chunks of at most `chunk` bytes, halving the chunk
/// when the kernel cannot allocate one that large (repair-mode queue filling makes one buffer
/// per call).
pub fn send_chunked(fd: BorrowedFd, mut data: &[u8], mut chunk: usize) -> Result<(), Errno> {
    while !data.is_empty() {
        let n = data.len().min(chunk);
        // SAFETY: data is readable for n bytes.
        let r = unsafe { libc::send(fd.as_raw_fd(), data.as_ptr().cast(), n, libc::MSG_NOSIGNAL) };
        if r < 0 {
            let e = Errno::last();
            match e {
                Errno::EINTR => continue,
                Errno::ENOMEM if chunk > 1024 => {
                    chunk /= 2;
                    continue;
                }
                _ => return Err(e),
            }
        }
        data = &data[r as usize..];
    }
    Ok(())
}

/// The address as the network carries it: an IPv4-mapped IPv6 address is IPv4.
pub fn on_the_wire(a: &SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => *a,
        },
        SocketAddr::V4(_) => *a,
    }
}

/// sendto(2) of `buf` on `fd` to `a`.
pub fn send_to(fd: BorrowedFd, buf: &[u8], a: &SocketAddr) -> Result<usize, Errno> {
    let (ss, len) = to_storage(a);
    // SAFETY: buf is valid for reads of its length; ss holds a valid address of len bytes.
    let r = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            0,
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(r as usize)
}

/// The peer's address as SO_PEERNAME gives it: unlike getpeername(2), also for a socket
/// closed after a connection (the kernel keeps the address until the socket is
/// disconnected or connected again).
pub fn kept_peer_addr(fd: BorrowedFd) -> Result<SocketAddr, Errno> {
    // The kernel wants room for no more than the address it has.
    let room = if get_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)? == libc::AF_INET6 {
        std::mem::size_of::<libc::sockaddr_in6>()
    } else {
        std::mem::size_of::<libc::sockaddr_in>()
    };
    let raw = get_bytes(fd, libc::SOL_SOCKET, libc::SO_PEERNAME, room)?;
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let n = raw.len().min(std::mem::size_of::<libc::sockaddr_storage>());
    // SAFETY: ss is valid for writes of its size and n is at most that; raw holds n bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(
            raw.as_ptr(),
            (&mut ss as *mut libc::sockaddr_storage).cast::<u8>(),
            n,
        )
    };
    from_storage(&ss)
}
