//! Recreating AF_PACKET sockets ([`PacketSocket`]) in crest before the fork, in the order the
//! kernel needs: the socket with its protocol, the options (PACKET_VERSION and PACKET_RESERVE
//! before any ring), the filter, bind to the interface, the copy threshold, the memberships
//! (each as many times as it was taken), the rings, and last the fanout group (which takes
//! only a socket already receiving).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use crate::files::sockopts;
use crate::images::{PacketRing, PacketSocket};

use super::RestoreError;

/// SOCK_PACKET, the obsolete interface bound by device name.
const SOCK_PACKET: u32 = 10;
/// PACKET_VERSION's value for TPACKET_V3, whose rings take a `tpacket_req3`.
const TPACKET_V3: i32 = 2;
/// Setting options of SOL_PACKET (linux/if_packet.h).
const PACKET_ADD_MEMBERSHIP: i32 = 1;
const PACKET_RX_RING: i32 = 5;
const PACKET_COPY_THRESH: i32 = 7;
const PACKET_VERSION: i32 = 10;
const PACKET_TX_RING: i32 = 13;
const PACKET_FANOUT: i32 = 18;
/// PACKET_FANOUT_FLAG_UNIQUEID (in the flags byte of the value getsockopt gives): the kernel
/// picked the id; the restore asks for that id by number.
const FANOUT_UNIQUEID: u32 = 0x20 << 24;

/// Creates the packet socket `p` with the file status flags `status_flags`; close-on-exec.
pub fn create(p: &PacketSocket, status_flags: u32) -> Result<OwnedFd, RestoreError> {
    let text = sockopts::packet_text(p);
    let fail = |what: String| RestoreError::Os {
        what: format!("the {text}: {what}"),
        source: std::io::Error::last_os_error(),
    };
    let errno_fail = |what: String, e: nix::errno::Errno| RestoreError::Os {
        what: format!("the {text}: {what}"),
        source: std::io::Error::from_raw_os_error(e as i32),
    };
    if p.ifindex != 0 {
        check_interface(p.ifindex, &p.ifname).map_err(|why| RestoreError::Os {
            what: format!("the {text}: {why}"),
            source: std::io::Error::from_raw_os_error(libc::ENODEV),
        })?;
    }
    let sock = sockopts::socket(
        libc::AF_PACKET,
        p.sock_type as i32,
        i32::from(p.protocol.to_be()),
    )
    .map_err(|e| errno_fail("socket".into(), e))?;
    let fd = sock.as_fd();
    sockopts::apply(fd, &p.options).map_err(|e| RestoreError::Os {
        what: format!("the {text}: {e}"),
        source: std::io::Error::last_os_error(),
    })?;
    crate::files::sockfilter::attach(fd, &p.filter, p.filter_locked).map_err(|e| {
        RestoreError::Os {
            what: format!("the {text}: {e}"),
            source: std::io::Error::last_os_error(),
        }
    })?;
    if p.ifindex != 0 {
        bind(&sock, p).map_err(|()| fail(format!("bind to {}", p.ifname)))?;
    }
    let set = |name: i32, value: &[u8], what: &str| {
        sockopts::set(fd, libc::SOL_PACKET, name, value).map_err(|e| errno_fail(what.into(), e))
    };
    if p.copy_thresh != 0 {
        set(
            PACKET_COPY_THRESH,
            &p.copy_thresh.to_ne_bytes(),
            "PACKET_COPY_THRESH",
        )?;
    }
    for m in &p.memberships {
        // struct packet_mreq_max: ifindex, type, address length, address (at least 8 bytes).
        let mut mreq = Vec::with_capacity(8 + 32);
        mreq.extend_from_slice(&m.ifindex.to_ne_bytes());
        mreq.extend_from_slice(&m.mr_type.to_ne_bytes());
        mreq.extend_from_slice(&(m.address.len() as u16).to_ne_bytes());
        mreq.extend_from_slice(&m.address);
        mreq.resize(mreq.len().max(16), 0);
        for _ in 0..m.count {
            set(
                PACKET_ADD_MEMBERSHIP,
                &mreq,
                &format!(
                    "membership of type {} on interface {} (PACKET_ADD_MEMBERSHIP)",
                    m.mr_type, m.ifindex
                ),
            )?;
        }
    }
    let v3 = p
        .options
        .iter()
        .find(|o| o.level == libc::SOL_PACKET && o.name == PACKET_VERSION)
        .and_then(|o| o.value.get(..4))
        .is_some_and(|v| i32::from_ne_bytes(v.try_into().unwrap()) == TPACKET_V3);
    for (name, ring, what) in [
        (
            PACKET_RX_RING,
            &p.rx_ring,
            "the receive ring (PACKET_RX_RING)",
        ),
        (
            PACKET_TX_RING,
            &p.tx_ring,
            "the transmit ring (PACKET_TX_RING)",
        ),
    ] {
        if let Some(r) = ring {
            set(name, &ring_request(r, v3), what)?;
        }
    }
    if p.fanout != 0 {
        let value = p.fanout & !FANOUT_UNIQUEID;
        set(
            PACKET_FANOUT,
            &value.to_ne_bytes(),
            &format!("joining fanout group {} (PACKET_FANOUT)", p.fanout & 0xffff),
        )?;
    }
    if status_flags as i32 & libc::O_NONBLOCK != 0 {
        // SAFETY: F_SETFL on a descriptor we own.
        if unsafe { libc::fcntl(sock.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } < 0 {
            return Err(fail("making it non-blocking".into()));
        }
    }
    Ok(sock)
}

/// `struct tpacket_req3` for a TPACKET_V3 socket, else `struct tpacket_req` (its first four
/// fields).
fn ring_request(r: &PacketRing, v3: bool) -> Vec<u8> {
    let mut fields = vec![r.block_size, r.block_nr, r.frame_size, r.frame_nr];
    if v3 {
        fields.extend([r.retire_tmo, r.sizeof_priv, r.features]);
    }
    fields.iter().flat_map(|v| v.to_ne_bytes()).collect()
}

/// The interface `ifindex` exists here and is still called `ifname`.
fn check_interface(ifindex: i32, ifname: &str) -> Result<(), String> {
    match crate::net::packetdiag::interface_name(ifindex) {
        None => Err(format!(
            "it was bound to interface {ifname} (index {ifindex}), which this machine does \
             not have"
        )),
        Some(now) if now != ifname => Err(format!(
            "it was bound to interface {ifname} (index {ifindex}), but index {ifindex} is now \
             {now}"
        )),
        Some(_) => Ok(()),
    }
}

/// Binds `sock` to `p`'s interface: by index (struct sockaddr_ll) or, for SOCK_PACKET, by
/// name (struct sockaddr with the name in sa_data).
fn bind(sock: &OwnedFd, p: &PacketSocket) -> Result<(), ()> {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = if p.sock_type == SOCK_PACKET {
        // SAFETY: sockaddr_storage is larger than and aligned for sockaddr.
        let a = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr) };
        a.sa_family = libc::AF_PACKET as libc::sa_family_t;
        for (d, s) in a.sa_data.iter_mut().zip(p.ifname.bytes().take(13)) {
            *d = s as libc::c_char;
        }
        std::mem::size_of::<libc::sockaddr>()
    } else {
        // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_ll.
        let a = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_ll) };
        a.sll_family = libc::AF_PACKET as u16;
        a.sll_protocol = p.protocol.to_be();
        a.sll_ifindex = p.ifindex;
        std::mem::size_of::<libc::sockaddr_ll>()
    };
    // SAFETY: ss holds a valid address of `len` bytes.
    let r = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&ss as *const libc::sockaddr_storage).cast(),
            len as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(())
    } else {
        Ok(())
    }
}
