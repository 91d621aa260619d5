//! What the kernel knows about one AF_PACKET socket that no getsockopt reports, asked through
//! NETLINK_SOCK_DIAG (`net/packet/diag.c`, the interface `ss -0` uses): the interface
//! memberships (PACKET_ADD_MEMBERSHIP), the ring configurations (PACKET_RX_RING /
//! PACKET_TX_RING), the copy threshold and the receive memory in use.

use nix::errno::Errno;

use super::diag::{attributes, u16_at, u32_at};
use crate::images::PacketRing;

/// `PACKET_SHOW_*` (linux/packet_diag.h).
const SHOW_INFO: u32 = 0x01;
const SHOW_MCLIST: u32 = 0x02;
const SHOW_RING_CFG: u32 = 0x04;
const SHOW_MEMINFO: u32 = 0x10;
/// `PACKET_DIAG_*` attribute types.
const DIAG_INFO: u16 = 0;
const DIAG_MCLIST: u16 = 1;
const DIAG_RX_RING: u16 = 2;
const DIAG_TX_RING: u16 = 3;
const DIAG_MEMINFO: u16 = 6;
/// `struct packet_diag_msg`, `packet_diag_mclist` and `packet_diag_ring` sizes.
const DIAG_MSG: usize = 16;
const MCLIST: usize = 44;
const RING: usize = 28;

/// One membership (`struct packet_diag_mclist`): taken `count` times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub ifindex: i32,
    pub count: u32,
    /// PACKET_MR_MULTICAST, PACKET_MR_PROMISC, PACKET_MR_ALLMULTI, PACKET_MR_UNICAST.
    pub mr_type: u16,
    /// The link-layer address (`alen` bytes).
    pub address: Vec<u8>,
}

/// The kernel's account of one packet socket.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PacketDiag {
    /// The protocol it receives (`pdiag_num`, host byte order).
    pub protocol: u16,
    /// The interface it is bound to (`pdi_index`; 0: every interface).
    pub ifindex: i32,
    /// `pdi_copy_thresh` (PACKET_COPY_THRESH, which cannot be read back otherwise).
    pub copy_thresh: u32,
    /// `pdi_flags & PDI_RUNNING`: hooked into the receive path.
    pub running: bool,
    pub memberships: Vec<Membership>,
    pub rx_ring: Option<PacketRing>,
    pub tx_ring: Option<PacketRing>,
    /// Receive memory in use (SK_MEMINFO_RMEM_ALLOC): captured packets not read yet.
    pub rmem: u32,
}

/// Asks the kernel about the packet socket with inode `ino`. Ok(None): no such socket in
/// crest's network namespace; Err: the kernel cannot be asked (no packet_diag).
pub fn query(ino: u64) -> Result<Option<PacketDiag>, Errno> {
    // struct packet_diag_req: AF_PACKET, every protocol, every inode (the kernel does not
    // filter a dump by inode), what to show, no cookie.
    let mut req = vec![libc::AF_PACKET as u8, 0, 0, 0];
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&(SHOW_INFO | SHOW_MCLIST | SHOW_RING_CFG | SHOW_MEMINFO).to_ne_bytes());
    req.extend_from_slice(&[0xff; 8]);
    let mut found = None;
    super::diag::dump(&req, |msg| {
        if msg.len() >= DIAG_MSG && u64::from(u32_at(msg, 4)) == ino {
            found = Some(parse(msg));
        }
    })?;
    Ok(found)
}

/// The name of interface `ifindex` (if_indextoname), None if there is none.
pub fn interface_name(ifindex: i32) -> Option<String> {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: name has room for IF_NAMESIZE bytes, as if_indextoname requires.
    let got = unsafe { libc::if_indextoname(ifindex as u32, name.as_mut_ptr()) };
    if got.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into `name`.
    Some(
        unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// A ring's configuration (`struct packet_diag_ring`: the fields of `tpacket_req3`).
fn ring(b: &[u8]) -> Option<PacketRing> {
    (b.len() >= RING).then(|| PacketRing {
        block_size: u32_at(b, 0),
        block_nr: u32_at(b, 4),
        frame_size: u32_at(b, 8),
        frame_nr: u32_at(b, 12),
        retire_tmo: u32_at(b, 16),
        sizeof_priv: u32_at(b, 20),
        features: u32_at(b, 24),
    })
}

fn parse(msg: &[u8]) -> PacketDiag {
    let mut d = PacketDiag {
        protocol: u16_at(msg, 2),
        ..PacketDiag::default()
    };
    for (ty, b) in attributes(msg, DIAG_MSG) {
        match ty {
            DIAG_INFO if b.len() >= 24 => {
                d.ifindex = u32_at(b, 0) as i32;
                d.copy_thresh = u32_at(b, 12);
                d.running = u32_at(b, 20) & 1 != 0;
            }
            DIAG_MCLIST => {
                d.memberships = b
                    .chunks_exact(MCLIST)
                    .map(|m| {
                        let alen = (u16_at(m, 10) as usize).min(32);
                        Membership {
                            ifindex: u32_at(m, 0) as i32,
                            count: u32_at(m, 4),
                            mr_type: u16_at(m, 8),
                            address: m[12..12 + alen].to_vec(),
                        }
                    })
                    .collect();
            }
            DIAG_RX_RING => d.rx_ring = ring(b),
            DIAG_TX_RING => d.tx_ring = ring(b),
            DIAG_MEMINFO if b.len() >= 4 => d.rmem = u32_at(b, 0),
            _ => {}
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, AsRawFd};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn memberships_rings_and_the_copy_threshold_are_reported() {
        // ETH_P_ALL on loopback, in network byte order.
        let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
        let s = crate::net::sock::socket(libc::AF_PACKET, libc::SOCK_RAW, proto).unwrap();
        let ino = std::fs::metadata(format!("/proc/self/fd/{}", s.as_raw_fd()))
            .unwrap()
            .ino();
        // SAFETY: if_nametoindex reads a NUL-terminated name.
        let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) } as i32;
        assert!(lo > 0, "the loopback interface");
        let set = |name: i32, value: &[u8]| {
            crate::net::sock::set_bytes(s.as_fd(), libc::SOL_PACKET, name, value).unwrap()
        };
        // struct packet_mreq: ifindex, type, alen, address[8].
        let mut mreq = Vec::new();
        mreq.extend_from_slice(&lo.to_ne_bytes());
        mreq.extend_from_slice(&(libc::PACKET_MR_ALLMULTI as u16).to_ne_bytes());
        mreq.extend_from_slice(&0u16.to_ne_bytes());
        mreq.extend_from_slice(&[0u8; 8]);
        set(libc::PACKET_ADD_MEMBERSHIP, &mreq);
        set(libc::PACKET_ADD_MEMBERSHIP, &mreq);
        set(libc::PACKET_COPY_THRESH, &7i32.to_ne_bytes());
        // struct tpacket_req: block size, block count, frame size, frame count.
        let req: Vec<u8> = [4096u32, 2, 2048, 4]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        set(libc::PACKET_RX_RING, &req);
        let d = query(ino)
            .expect("packet_diag answers")
            .expect("the socket is listed");
        assert!(d.running);
        assert_eq!((d.protocol, d.ifindex), (libc::ETH_P_ALL as u16, 0));
        assert_eq!(d.copy_thresh, 7);
        assert_eq!(
            d.memberships,
            vec![Membership {
                ifindex: lo,
                count: 2,
                mr_type: libc::PACKET_MR_ALLMULTI as u16,
                address: Vec::new(),
            }]
        );
        let rx = d.rx_ring.expect("an RX ring");
        assert_eq!(
            (rx.block_size, rx.block_nr, rx.frame_size, rx.frame_nr),
            (4096, 2, 2048, 4)
        );
        assert_eq!(d.tx_ring, None);
    }
}
