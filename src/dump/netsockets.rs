//! Sockets of families other than AF_UNIX: UDP ([`super::udp`]) and netlink
//! ([`super::netlink`]) are recorded; raw, packet and every other kind is refused with its
//! family, type and protocol and what the user can do. TCP goes back to the caller.

use std::fs::Metadata;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use nix::errno::Errno;

use crate::files::sockopts;
use crate::images::FileIdentity;

use super::DumpError;

/// Records the socket `copy` (crest's duplicate of `pid`'s fd `fd`, family `family`), or
/// refuses it; None for TCP, which the caller handles.
pub fn record(
    pid: i32,
    fd: i32,
    md: &Metadata,
    copy: &OwnedFd,
    family: i32,
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
    if !udp && family != libc::AF_NETLINK {
        return Some(Err(refuse(format!(
            "{described}; crest dumps TCP, UDP, netlink and UNIX sockets, not {}: close it before the \
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
        )
    }

    #[test]
    fn raw_and_packet_sockets_are_refused_by_family_and_type() {
        let raw = sockopts::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP).unwrap();
        let err = record_own(&raw).unwrap().unwrap_err().to_string();
        assert!(err.contains(&format!("fd {}", raw.as_raw_fd())), "{err}");
        assert!(
            err.contains("IPv4 raw socket (AF_INET, SOCK_RAW, protocol 1"),
            "{err}"
        );
        assert!(err.contains("close it before the dump"), "{err}");
        let packet = sockopts::socket(libc::AF_PACKET, libc::SOCK_DGRAM, 0).unwrap();
        let err = record_own(&packet).unwrap().unwrap_err().to_string();
        assert!(
            err.contains("packet datagram socket (AF_PACKET, SOCK_DGRAM"),
            "{err}"
        );
        assert!(err.contains("not packet sockets"), "{err}");
    }

    #[test]
    fn tcp_goes_back_to_the_caller() {
        let tcp = sockopts::socket(libc::AF_INET6, libc::SOCK_STREAM, 0).unwrap();
        assert!(record_own(&tcp).is_none());
    }
}
