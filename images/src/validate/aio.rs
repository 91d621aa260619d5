//! Checks of an AIO ring VMA ([`VmaBacking::AioRing`]).

use crate::schema::*;

/// `sizeof(struct aio_ring)`: the ring header before the events (fs/aio.c).
pub const AIO_RING_HEADER: u64 = 32;
/// `sizeof(struct io_event)` (include/uapi/linux/aio_abi.h).
pub const AIO_EVENT_SIZE: u64 = 32;
/// Most AIO contexts one process may hold in an image (each is moved into place by the
/// restorer like the vDSO, from a fixed-size table).
pub const AIO_RINGS_MAX: usize = 32;

/// The number of events a ring of `len` bytes holds: the kernel fills every page of the ring
/// with events (aio_setup_ring).
pub fn aio_ring_events(len: u64) -> u64 {
    len.saturating_sub(AIO_RING_HEADER) / AIO_EVENT_SIZE
}

/// Checks the ring of VMA `v`: its size agrees with `nr`, head and tail lie in the ring, and
/// the events stored are exactly those between head and tail.
pub(super) fn check(v: &Vma, ring: &AioRing) -> Result<(), String> {
    let len = v.end - v.start;
    if ring.nr as u64 != aio_ring_events(len) || ring.nr == 0 {
        return Err(format!(
            "is an AIO ring of {len:#x} bytes, which holds {} events, but the image says {}",
            aio_ring_events(len),
            ring.nr
        ));
    }
    if ring.head >= ring.nr || ring.tail >= ring.nr {
        return Err(format!(
            "is an AIO ring of {} events whose head {} or tail {} lies outside it",
            ring.nr, ring.head, ring.tail
        ));
    }
    let unreaped = (ring.tail as u64 + ring.nr as u64 - ring.head as u64) % ring.nr as u64;
    if ring.events.len() as u64 != unreaped * AIO_EVENT_SIZE {
        return Err(format!(
            "is an AIO ring with {unreaped} unreaped events (head {}, tail {}) but {} bytes of \
             events",
            ring.head,
            ring.tail,
            ring.events.len()
        ));
    }
    if !v.shared || !v.guard_ranges.is_empty() {
        return Err("is an AIO ring that is not a plain shared mapping".into());
    }
    Ok(())
}

/// Checks that the process holds no more rings than a restore can move.
pub(super) fn check_count(p: &ProcessImage) -> Result<(), String> {
    let n = p
        .vmas
        .iter()
        .filter(|v| matches!(v.backing, VmaBacking::AioRing(_)))
        .count();
    if n > AIO_RINGS_MAX {
        return Err(format!(
            "the process holds {n} AIO contexts, more than the {AIO_RINGS_MAX} a restore can \
             take"
        ));
    }
    Ok(())
}
