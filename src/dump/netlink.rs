//! Netlink sockets: protocol, type, bound port id (getsockname), multicast groups
//! (NETLINK_LIST_MEMBERSHIPS, every group, not only the first 32 that getsockname shows), the
//! default destination set by connect (getpeername) and the options that differ from a fresh
//! socket's ([`crate::files::sockopts`]).
//!
//! Only protocols whose kernel side keeps nothing per socket beyond that are recorded:
//! NETLINK_ROUTE, NETLINK_SOCK_DIAG and NETLINK_KOBJECT_UEVENT. Others (audit, netfilter queues,
//! generic netlink families, ...) tie kernel state to the socket's port id that is dropped
//! when the socket closes, and are refused.
//!
//! Refused as well: messages waiting to be read (replies to a request, or notifications — the
//! program waits for them or counts on them; the kernel's cannot be sent again by anyone but
//! the kernel), a dump reply in progress (the kernel sends the rest as the program reads:
//! netlink_diag's NDIAG_FLAG_CB_RUNNING), a pending error (such as ENOBUFS after an overrun),
//! and BPF filters (libudev's filtered monitors).

use std::fs::Metadata;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use nix::errno::Errno;

use crate::files::sockopts;
use crate::images::validate::NETLINK_PROTOCOLS;
use crate::images::{FileIdentity, FileKind, NetlinkSocket};

use super::DumpError;

/// NETLINK_LIST_MEMBERSHIPS (linux/netlink.h).
const NETLINK_LIST_MEMBERSHIPS: i32 = 9;
/// SOL_NETLINK.
const SOL_NETLINK: i32 = 270;

/// Records the netlink socket `copy` (crest's duplicate of `pid`'s fd `fd`).
pub fn record(
    pid: i32,
    fd: i32,
    md: &Metadata,
    copy: &OwnedFd,
    sock_type: i32,
    protocol: i32,
) -> Result<FileIdentity, DumpError> {
    let ino = md.ino();
    let name = protocol_name(protocol);
    let refuse = |what: String| DumpError::UnsupportedFd {
        pid,
        fd,
        what: format!("a netlink socket of protocol {name} ({protocol}; inode {ino}) {what}"),
    };
    if !NETLINK_PROTOCOLS.contains(&(protocol as u32)) {
        return Err(refuse(
            "whose kernel side keeps state crest cannot dump; crest restores only \
             NETLINK_ROUTE, NETLINK_SOCK_DIAG and NETLINK_KOBJECT_UEVENT sockets: close it \
             before the dump"
                .into(),
        ));
    }
    let sock = copy.as_fd();
    let (port_id, _) =
        nl_name(copy, false).map_err(|e| refuse(format!("whose port id cannot be read ({e})")))?;
    let (dst_port_id, dst_mask) =
        nl_name(copy, true).map_err(|e| refuse(format!("whose peer cannot be read ({e})")))?;
    let dst_group = if dst_mask == 0 {
        0
    } else {
        dst_mask.trailing_zeros() + 1
    };
    let groups =
        memberships(copy).map_err(|e| refuse(format!("whose groups cannot be read ({e})")))?;
    let refuse = |what: String| refuse(format!("bound to port id {port_id}, {what}"));

    let mut p = libc::pollfd {
        fd: copy.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: p is one valid pollfd; a zero timeout does not block.
    if unsafe { libc::poll(&mut p, 1, 0) } < 0 {
        return Err(refuse(format!(
            "whose state cannot be polled ({})",
            Errno::last()
        )));
    }
    if p.revents & libc::POLLERR != 0 {
        return Err(refuse(
            "with an error the program has not read yet (ENOBUFS: messages were lost to a full \
             receive buffer); crest cannot carry it over: dump it once the program has read it"
                .into(),
        ));
    }
    if p.revents & libc::POLLIN != 0 {
        let rmem = sockopts::get(sock, libc::SOL_SOCKET, 55)
            .ok()
            .and_then(|m| {
                m.get(..4)
                    .map(|b| u32::from_ne_bytes(b.try_into().unwrap()))
            })
            .map_or(String::new(), |m| {
                format!(" ({m} bytes of receive buffer in use)")
            });
        return Err(refuse(format!(
            "with messages waiting to be read{rmem}: replies or notifications the program \
             expects, which only the kernel can send; crest does not drop them: dump it when \
             the program has read them"
        )));
    }
    if port_id != 0 {
        match dump_running(ino, protocol) {
            Ok(false) => {}
            Ok(true) => {
                return Err(refuse(
                    "in the middle of a dump reply (an NLM_F_DUMP request whose answer the \
                     program has not read to its end); dump it when the program has read it"
                        .into(),
                ))
            }
            Err(e) => return Err(refuse(format!("that netlink_diag cannot describe: {e}"))),
        }
    }
    super::udp::filter_check(copy).map_err(refuse)?;
    let fresh = sockopts::socket(libc::AF_NETLINK, sock_type, protocol)
        .map_err(|e| refuse(format!("(crest cannot create one to compare: {e})")))?;
    let options = sockopts::differing(sock, fresh.as_fd(), &[libc::SOL_SOCKET, SOL_NETLINK]);
    Ok(crate::files::object_identity(
        String::new(),
        FileKind::Netlink(NetlinkSocket {
            sock_type: sock_type as u32,
            protocol: protocol as u32,
            port_id,
            groups,
            dst_port_id,
            dst_group,
            options,
        }),
        md.dev(),
        ino,
    ))
}

fn protocol_name(protocol: i32) -> String {
    let known = [
        (0, "NETLINK_ROUTE"),
        (2, "NETLINK_USERSOCK"),
        (4, "NETLINK_SOCK_DIAG"),
        (5, "NETLINK_NFLOG"),
        (6, "NETLINK_XFRM"),
        (7, "NETLINK_SELINUX"),
        (8, "NETLINK_ISCSI"),
        (9, "NETLINK_AUDIT"),
        (10, "NETLINK_FIB_LOOKUP"),
        (11, "NETLINK_CONNECTOR"),
        (12, "NETLINK_NETFILTER"),
        (13, "NETLINK_IP6_FW"),
        (14, "NETLINK_DNRTMSG"),
        (15, "NETLINK_KOBJECT_UEVENT"),
        (16, "NETLINK_GENERIC"),
        (18, "NETLINK_SCSITRANSPORT"),
        (19, "NETLINK_ECRYPTFS"),
        (20, "NETLINK_RDMA"),
        (21, "NETLINK_CRYPTO"),
        (22, "NETLINK_SMC"),
    ];
    known
        .iter()
        .find(|(n, _)| *n == protocol)
        .map_or_else(|| format!("#{protocol}"), |(_, s)| s.to_string())
}

/// getsockname (`peer` false) or getpeername of a netlink socket: (nl_pid, nl_groups).
fn nl_name(sock: &OwnedFd, peer: bool) -> Result<(u32, u32), Errno> {
    let ss = crate::net::sock::raw_name(sock.as_fd(), peer)?;
    // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_nl, plain old data
    // that any bytes make valid; a netlink socket's name is one.
    let a = unsafe { &*(&ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_nl>() };
    Ok((a.nl_pid, a.nl_groups))
}

/// The groups the socket is subscribed to, ascending (NETLINK_LIST_MEMBERSHIPS: a bitmap of
/// u32 words, group n at bit n-1).
fn memberships(sock: &OwnedFd) -> Result<Vec<u32>, Errno> {
    let mut size = 64usize;
    loop {
        let mut words = vec![0u32; size / 4];
        let mut len = size as libc::socklen_t;
        // SAFETY: words holds `size` writable bytes; len says so.
        let r = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                SOL_NETLINK,
                NETLINK_LIST_MEMBERSHIPS,
                words.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if r < 0 {
            return Err(Errno::last());
        }
        // The kernel says how much it needed.
        if len as usize > size {
            size = (len as usize).next_multiple_of(4);
            continue;
        }
        let words = &words[..(len as usize) / 4];
        let mut groups = Vec::new();
        for (i, w) in words.iter().enumerate() {
            for bit in 0..32 {
                if w & (1 << bit) != 0 {
                    groups.push(i as u32 * 32 + bit + 1);
                }
            }
        }
        return Ok(groups);
    }
}

/// Whether the kernel is in the middle of a dump reply to the socket with inode `ino`
/// (netlink_diag, NDIAG_FLAG_CB_RUNNING). A bound socket is listed; one the kernel does not
/// list has nothing running.
fn dump_running(ino: u64, protocol: i32) -> Result<bool, String> {
    const NDIAG_SHOW_FLAGS: u32 = 8;
    const NETLINK_DIAG_FLAGS: u16 = 4;
    const NDIAG_FLAG_CB_RUNNING: u32 = 1;
    /// `struct netlink_diag_msg` size; the inode is at offset 16.
    const MSG: usize = 28;
    use crate::net::diag::{attributes, u32_at};
    // struct netlink_diag_req: family, protocol, pad, inode, what to show, no cookie.
    let mut req = vec![libc::AF_NETLINK as u8, protocol as u8, 0, 0];
    req.extend_from_slice(&(ino as u32).to_ne_bytes());
    req.extend_from_slice(&NDIAG_SHOW_FLAGS.to_ne_bytes());
    req.extend_from_slice(&[0xff; 8]);
    let mut running = false;
    crate::net::diag::dump(&req, |body| {
        if body.len() < MSG || u64::from(u32_at(body, 16)) != ino {
            return;
        }
        for (ty, value) in attributes(body, MSG) {
            if ty & 0x3fff == NETLINK_DIAG_FLAGS && value.len() >= 4 {
                running = u32_at(value, 0) & NDIAG_FLAG_CB_RUNNING != 0;
            }
        }
    })
    .map_err(|e| format!("the kernel answered {e}"))?;
    Ok(running)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record_own(s: &OwnedFd) -> Result<FileIdentity, DumpError> {
        let md = std::fs::metadata(format!("/proc/self/fd/{}", s.as_raw_fd())).unwrap();
        let ty = sockopts::get_int(s.as_fd(), libc::SOL_SOCKET, libc::SO_TYPE).unwrap();
        let proto = sockopts::get_int(s.as_fd(), libc::SOL_SOCKET, libc::SO_PROTOCOL).unwrap();
        record(std::process::id() as i32, s.as_raw_fd(), &md, s, ty, proto)
    }

    fn bind(s: &OwnedFd, port: u32, groups: u32) {
        // SAFETY: sockaddr_nl is plain old data.
        let mut a: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        a.nl_family = libc::AF_NETLINK as u16;
        a.nl_pid = port;
        a.nl_groups = groups;
        // SAFETY: a is a valid sockaddr_nl.
        let r = unsafe {
            libc::bind(
                s.as_raw_fd(),
                (&a as *const libc::sockaddr_nl).cast(),
                std::mem::size_of_val(&a) as u32,
            )
        };
        assert_eq!(r, 0, "{}", Errno::last());
    }

    fn netlink(ident: &FileIdentity) -> &NetlinkSocket {
        match &ident.kind {
            FileKind::Netlink(n) => n,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn route_socket_is_recorded_with_port_groups_and_options() {
        let s = sockopts::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE).unwrap();
        let unbound = record_own(&s).unwrap();
        assert_eq!(netlink(&unbound).port_id, 0);
        // RTNLGRP_LINK (1) and RTNLGRP_IPV4_IFADDR (5) by bind, RTNLGRP_IPV6_ROUTE (11) and 33
        // by setsockopt.
        bind(&s, 0, 1 | 1 << 4);
        for g in [11i32, 33] {
            sockopts::set(
                s.as_fd(),
                SOL_NETLINK,
                libc::NETLINK_ADD_MEMBERSHIP,
                &g.to_ne_bytes(),
            )
            .unwrap();
        }
        sockopts::set(
            s.as_fd(),
            SOL_NETLINK,
            libc::NETLINK_EXT_ACK,
            &1i32.to_ne_bytes(),
        )
        .unwrap();
        let ident = record_own(&s).unwrap();
        let n = netlink(&ident);
        assert_ne!(n.port_id, 0);
        assert_eq!(n.protocol, 0);
        assert_eq!(n.sock_type, libc::SOCK_RAW as u32);
        assert_eq!(n.groups, vec![1, 5, 11, 33]);
        assert_eq!(sockopts::describe(&n.options), "NETLINK_EXT_ACK=1");
    }

    #[test]
    fn unread_reply_and_other_protocols_are_refused() {
        let s = sockopts::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE).unwrap();
        // RTM_GETLINK dump request; its answer waits unread.
        let mut req = Vec::new();
        req.extend_from_slice(&32u32.to_ne_bytes());
        req.extend_from_slice(&18u16.to_ne_bytes()); // RTM_GETLINK
        req.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
        req.extend_from_slice(&[0; 8]);
        req.extend_from_slice(&[0; 16]); // struct ifinfomsg
                                         // SAFETY: req is readable.
        assert!(unsafe { libc::send(s.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } > 0);
        let err = record_own(&s).unwrap_err().to_string();
        assert!(err.contains("messages waiting to be read"), "{err}");

        let audit =
            sockopts::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_AUDIT).unwrap();
        let err = record_own(&audit).unwrap_err().to_string();
        assert!(err.contains("NETLINK_AUDIT (9"), "{err}");
    }
}
