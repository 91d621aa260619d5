//! The socket options of a TCP socket that a restore sets again: both sides of
//! [`crate::images::validate::TCP_SOCKOPTS`].
//!
//! A dump records an option only when its value differs from a fresh socket's of the same
//! family, read the same way on this machine: what the program set (or its socket inherited
//! from a listener), never the machine's defaults. The buffer sizes are the exception: an
//! established connection's grow by themselves (autotuning), so SO_SNDBUF/SO_RCVBUF are
//! recorded only when SO_BUF_LOCK says the program set them. TCP_QUICKACK is a transient mode
//! rather than a setting, and TCP_MAXSEG/TCP_WINDOW_CLAMP of a connection are negotiated
//! values (the MSS comes back through the repair options); none of those is recorded.

use std::os::fd::{AsFd, BorrowedFd};

use nix::errno::Errno;

use crate::images::validate::{SOCKOPT_VALUE_MAX, TCP_SOCKOPTS};
use crate::images::SockOpt;

use super::sock;

/// The name of an option, for messages.
pub fn name(level: i32, opt: i32) -> String {
    TCP_SOCKOPTS
        .iter()
        .find(|(l, n, _)| *l == level && *n == opt)
        .map(|(_, _, s)| s.to_string())
        .unwrap_or_else(|| format!("option {level}/{opt}"))
}

fn is_buffer(level: i32, opt: i32) -> bool {
    level == libc::SOL_SOCKET && (opt == libc::SO_SNDBUF || opt == libc::SO_RCVBUF)
}

/// Options that must be set before bind(2) (they decide whether and where it binds).
pub fn before_bind(o: &SockOpt) -> bool {
    matches!(
        (o.level, o.name),
        (libc::SOL_SOCKET, libc::SO_REUSEADDR)
            | (libc::SOL_SOCKET, libc::SO_REUSEPORT)
            | (libc::SOL_SOCKET, libc::SO_BINDTODEVICE)
            | (libc::SOL_SOCKET, libc::SO_MARK)
            | (libc::IPPROTO_IP, libc::IP_FREEBIND)
            | (libc::IPPROTO_IP, libc::IP_TRANSPARENT)
            | (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)
    )
}

/// The options of `fd` (a TCP socket of `family`) a restore must set, and its SO_BUF_LOCK bits.
pub fn read(fd: BorrowedFd, family: i32, established: bool) -> Result<(Vec<SockOpt>, u32), Errno> {
    let fresh = sock::tcp_socket(family)?;
    let buf_lock = sock::get_int(fd, libc::SOL_SOCKET, sock::SO_BUF_LOCK)? as u32 & 3;
    let mut out = Vec::new();
    for &(level, opt, _) in TCP_SOCKOPTS {
        if is_buffer(level, opt) {
            let bit = if opt == libc::SO_SNDBUF { 1 } else { 2 };
            if buf_lock & bit != 0 {
                let value = sock::get_bytes(fd, level, opt, 4)?;
                out.push(SockOpt {
                    level,
                    name: opt,
                    value,
                });
            }
            continue;
        }
        if established && (level, opt) == (libc::IPPROTO_TCP, libc::TCP_MAXSEG) {
            continue;
        }
        if family == libc::AF_INET && level == libc::IPPROTO_IPV6 {
            continue;
        }
        // An option this kernel or family does not have is one the program cannot have set.
        let Ok(value) = sock::get_bytes(fd, level, opt, SOCKOPT_VALUE_MAX) else {
            continue;
        };
        let Ok(default) = sock::get_bytes(fresh.as_fd(), level, opt, SOCKOPT_VALUE_MAX) else {
            continue;
        };
        if value != default && !value.is_empty() {
            out.push(SockOpt {
                level,
                name: opt,
                value,
            });
        }
    }
    Ok((out, buf_lock))
}

/// Sets the options `opts` for which `pick` is true. Buffer sizes are set with
/// SO_SNDBUFFORCE/SO_RCVBUFFORCE (getsockopt reports twice what was asked, and a program may
/// have been allowed beyond the sysctl maximum).
pub fn apply(
    fd: BorrowedFd,
    opts: &[SockOpt],
    pick: impl Fn(&SockOpt) -> bool,
) -> Result<(), String> {
    for o in opts.iter().filter(|o| pick(o)) {
        let r = if is_buffer(o.level, o.name) {
            let v = o
                .value
                .get(..4)
                .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .unwrap_or(0);
            let force = if o.name == libc::SO_SNDBUF {
                libc::SO_SNDBUFFORCE
            } else {
                libc::SO_RCVBUFFORCE
            };
            sock::set_int(fd, libc::SOL_SOCKET, force, v / 2)
        } else {
            sock::set_bytes(fd, o.level, o.name, &o.value)
        };
        r.map_err(|e| format!("setting {} failed: {e}", name(o.level, o.name)))?;
    }
    Ok(())
}

/// Puts back which buffer sizes count as set by the program (SO_BUF_LOCK), after any forced
/// sizes crest used.
pub fn apply_buf_lock(fd: BorrowedFd, bits: u32) -> Result<(), String> {
    sock::set_int(fd, libc::SOL_SOCKET, sock::SO_BUF_LOCK, bits as i32)
        .map_err(|e| format!("setting SO_BUF_LOCK failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_options_the_program_set_are_recorded_and_set_back() {
        let s = sock::tcp_socket(libc::AF_INET6).unwrap();
        let (opts, lock) = read(s.as_fd(), libc::AF_INET6, false).unwrap();
        assert!(opts.is_empty(), "{opts:?}");
        assert_eq!(lock, 0);
        sock::set_int(s.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1).unwrap();
        sock::set_int(s.as_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1).unwrap();
        sock::set_int(s.as_fd(), libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 77).unwrap();
        sock::set_int(s.as_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, 100_000).unwrap();
        let (opts, lock) = read(s.as_fd(), libc::AF_INET6, false).unwrap();
        let names: Vec<String> = opts.iter().map(|o| name(o.level, o.name)).collect();
        assert_eq!(
            names,
            ["IPV6_V6ONLY", "SO_RCVBUF", "TCP_NODELAY", "TCP_KEEPIDLE"]
        );
        assert_eq!(lock, 2);

        let t = sock::tcp_socket(libc::AF_INET6).unwrap();
        apply(t.as_fd(), &opts, |_| true).unwrap();
        apply_buf_lock(t.as_fd(), lock).unwrap();
        assert_eq!(
            read(t.as_fd(), libc::AF_INET6, false).unwrap(),
            (opts, lock)
        );
    }
}
