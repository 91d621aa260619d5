//! AF_PACKET sockets (packet(7)): what a restore needs to make one again — its type and
//! protocol, the interface it is bound to, the options that differ from a fresh socket's, the
//! copy threshold, its memberships and rings (from sock_diag, [`crate::net::packetdiag`]),
//! its fanout group and its classic BPF filter.
//!
//! Captured packets waiting to be read are not kept: a packet socket receives copies of
//! traffic, and putting them back would mean sending them onto the interface again. The dump
//! says how many bytes it leaves behind (a note in its report), as the kernel drops copies
//! under load. Refused: a fanout group steered by a BPF program, an eBPF filter, a socket the
//! kernel's packet_diag does not list; a ring a process has mapped is refused with the
//! mapping (its frames are kernel memory the image does not hold).

use std::fs::Metadata;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use crate::files::sockopts;
use crate::images::{FileIdentity, FileKind, PacketMembership, PacketSocket};
use crate::net::packetdiag;

use super::DumpError;

/// PACKET_FANOUT (SOL_PACKET).
const PACKET_FANOUT: i32 = 18;

/// A recorded packet socket and, if captured packets were waiting, the note that says they
/// were left behind.
pub struct Recorded {
    pub identity: FileIdentity,
    pub note: Option<String>,
}

/// Records the packet socket `copy` (crest's duplicate of `pid`'s fd `fd`, of type `ty`).
pub fn record(
    pid: i32,
    fd: i32,
    md: &Metadata,
    copy: &OwnedFd,
    ty: i32,
) -> Result<Recorded, DumpError> {
    let ino = md.ino();
    let refuse = |what: String| DumpError::UnsupportedFd {
        pid,
        fd,
        what: format!("a packet socket (inode {ino}) {what}"),
    };
    let diag = match packetdiag::query(ino) {
        Ok(Some(d)) => d,
        Ok(None) => {
            return Err(refuse(
                "that the kernel's packet socket list (sock_diag) does not show".into(),
            ))
        }
        Err(e) => {
            return Err(refuse(format!(
                "whose memberships and rings cannot be read: the kernel does not answer \
                 packet sock_diag queries ({e}); load the packet_diag module (modprobe \
                 packet_diag)"
            )))
        }
    };
    let sock = copy.as_fd();
    let fanout = sockopts::get_int(sock, libc::SOL_PACKET, PACKET_FANOUT).unwrap_or(0) as u32;
    if matches!((fanout >> 16) & 0xff, 6 | 7) {
        return Err(refuse(format!(
            "in fanout group {} steered by a BPF program (PACKET_FANOUT_CBPF/EBPF), which \
             crest cannot carry over",
            fanout & 0xffff
        )));
    }
    let (filter, filter_locked) = crate::files::sockfilter::read(sock).map_err(refuse)?;
    let ifname = match diag.ifindex {
        0 => String::new(),
        i => packetdiag::interface_name(i).ok_or_else(|| {
            refuse(format!(
                "bound to interface index {i}, whose name cannot be read"
            ))
        })?,
    };
    // A fresh socket of protocol 0 receives nothing while it serves as the comparison.
    let fresh = sockopts::socket(libc::AF_PACKET, ty, 0).map_err(|e| {
        refuse(format!(
            "(crest cannot create a packet socket to compare: {e})"
        ))
    })?;
    let options = sockopts::differing(sock, fresh.as_fd(), &[libc::SOL_SOCKET, libc::SOL_PACKET]);
    let packet = PacketSocket {
        sock_type: ty as u32,
        protocol: diag.protocol,
        ifindex: diag.ifindex,
        ifname,
        options,
        copy_thresh: diag.copy_thresh,
        memberships: diag
            .memberships
            .iter()
            .map(|m| PacketMembership {
                ifindex: m.ifindex,
                count: m.count,
                mr_type: m.mr_type,
                address: m.address.clone(),
            })
            .collect(),
        rx_ring: diag.rx_ring,
        tx_ring: diag.tx_ring,
        fanout,
        filter,
        filter_locked,
    };
    let note = (diag.rmem > 0).then(|| {
        format!(
            "process {pid}: fd {fd} ({}) had {} bytes of captured packets waiting to be read; \
             they are not carried over (copies of traffic, as the kernel drops under load)",
            sockopts::packet_text(&packet),
            diag.rmem
        )
    });
    Ok(Recorded {
        identity: crate::files::object_identity(
            String::new(),
            FileKind::Packet(packet),
            md.dev(),
            ino,
        ),
        note,
    })
}
