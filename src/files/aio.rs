//! AIO contexts (io_setup(2)): the ring a context maps into its process, at dump and restore.
//!
//! The kernel keeps an AIO context in the mm (fs/aio.c) and maps its ring, `struct aio_ring`
//! (id, nr, head, tail, magic, compat_features, incompat_features, header_length: 32 bytes)
//! followed by `nr` `struct io_event`s of 32 bytes, as a shared mapping of an anonymous aio
//! inode (`/[aio] (deleted)` in maps). The context id the program holds *is* the ring's user
//! address; the kernel finds the context from the `id` word of the ring. Completions are
//! written at the kernel's own copy of the tail (and mirrored to `aio_ring.tail`);
//! io_getevents reads from `aio_ring.head`, which user space may also advance itself.
//!
//! Dump: the ring's header and its completed, unreaped events (from head to tail) go into
//! the image ([`AioRing`]); its pages are not dumped as memory. Requests submitted and not
//! yet completed cannot be seen from user space at all — the kernel shows no count of them,
//! neither in /proc nor in the ring — so they cannot be refused: a completion arriving after
//! the dump is missing from the restored ring (see the README's state table).
//!
//! Restore, in the forked task before it jumps into the restorer ([`create_in_task`]):
//! io_setup with a size that gives a ring of the same number of events; then requests that
//! complete at once (IOCB_CMD_POLL for POLLOUT on an eventfd, always writable) until the
//! kernel's tail is the image's tail, reaped as they go except the last `unreaped` ones, so the
//! kernel accounts the ring's unreaped events as in use exactly as before; then those slots
//! are overwritten with the image's events and `head` is set. The restorer moves the ring to
//! its image address with mremap like it moves the vDSO (parked in the bootstrap region while
//! the image's memory is mapped, then placed); the kernel follows the move
//! (aio_ring_mremap) and the context id becomes the image's address again.

use crate::images::validate::{aio_ring_events, AIO_EVENT_SIZE, AIO_RING_HEADER};
use crate::images::{AioRing, ProcessImage, VmaBacking, VmaFlags};

/// `aio_ring.magic` (AIO_RING_MAGIC, fs/aio.c).
const RING_MAGIC: u32 = 0xa10a_10a1;
/// `aio_ring.incompat_features` the kernel sets (AIO_RING_INCOMPAT_FEATURES).
const RING_INCOMPAT: u32 = 0;
/// IOCB_CMD_POLL (include/uapi/linux/aio_abi.h).
const IOCB_CMD_POLL: u16 = 5;
/// Requests submitted by one io_submit while the tail is brought into place.
const BATCH: usize = 64;

/// The ring header (`struct aio_ring` without the events).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    nr: u32,
    head: u32,
    tail: u32,
    magic: u32,
    incompat: u32,
    header_length: u32,
}

impl Header {
    fn parse(b: &[u8; AIO_RING_HEADER as usize]) -> Header {
        let word = |i: usize| u32::from_ne_bytes(b[i * 4..i * 4 + 4].try_into().unwrap());
        Header {
            nr: word(1),
            head: word(2),
            tail: word(3),
            magic: word(4),
            incompat: word(6),
            header_length: word(7),
        }
    }
}

/// Byte offset of event slot `slot` in the ring.
fn slot_offset(slot: u32) -> u64 {
    AIO_RING_HEADER + slot as u64 * AIO_EVENT_SIZE
}

/// The events from `head` to `tail` as `(ring offset, length)` pieces (two when they wrap).
fn unreaped_pieces(nr: u32, head: u32, tail: u32) -> Vec<(u64, usize)> {
    let bytes = |n: u32| n as usize * AIO_EVENT_SIZE as usize;
    if head <= tail {
        vec![(slot_offset(head), bytes(tail - head))]
    } else {
        vec![
            (slot_offset(head), bytes(nr - head)),
            (slot_offset(0), bytes(tail)),
        ]
    }
}

/// Events between `head` and `tail` in a ring of `nr`.
fn unreaped(nr: u32, head: u32, tail: u32) -> u32 {
    ((tail as u64 + nr as u64 - head as u64) % nr as u64) as u32
}

/// Dump: the ring mapped at `start..end` in the frozen process `pid`, with smaps VmFlags
/// `flag_codes` and protection `prot` (PROT_*). Errors say why it cannot be restored.
pub fn collect(
    pid: i32,
    start: u64,
    end: u64,
    prot: u32,
    flag_codes: &[String],
) -> Result<AioRing, String> {
    // VM_DONTEXPAND is the kernel's own flag on every ring; anything else the program set
    // (mlock, madvise) a restored ring would not have.
    let codes: Vec<String> = flag_codes.iter().filter(|c| *c != "de").cloned().collect();
    let flags = crate::pstate::vmflags::classify(&codes, false)?;
    if flags != VmaFlags::default() {
        return Err(format!(
            "it is the ring of an AIO context with mlock or madvise state ({flags:?}), which a \
             restored ring would not have"
        ));
    }
    let rw = crate::images::PROT_READ | crate::images::PROT_WRITE;
    if prot != rw {
        return Err(
            "it is the ring of an AIO context whose protection was changed (mprotect); a \
             restored ring is readable and writable"
                .into(),
        );
    }
    let mut raw = [0u8; AIO_RING_HEADER as usize];
    crate::ptrace::read_memory(pid, start, &mut raw)
        .map_err(|e| format!("cannot read the AIO ring's header: {e}"))?;
    let h = Header::parse(&raw);
    let nr = aio_ring_events(end - start);
    if h.magic != RING_MAGIC
        || h.incompat != RING_INCOMPAT
        || h.header_length as u64 != AIO_RING_HEADER
        || h.nr as u64 != nr
    {
        return Err(format!(
            "its AIO ring header is not one crest knows (magic {:#x}, incompatible features \
             {:#x}, header length {}, {} events in {} bytes)",
            h.magic,
            h.incompat,
            h.header_length,
            h.nr,
            end - start
        ));
    }
    // The kernel takes head modulo nr (aio_read_events_ring); the tail is its own copy's.
    let head = h.head % h.nr;
    if h.tail >= h.nr {
        return Err(format!(
            "its AIO ring's tail {} lies outside its {} events (the program overwrote it)",
            h.tail, h.nr
        ));
    }
    let pieces: Vec<(u64, usize)> = unreaped_pieces(h.nr, head, h.tail)
        .into_iter()
        .filter(|p| p.1 > 0)
        .map(|(off, len)| (start + off, len))
        .collect();
    let total: usize = pieces.iter().map(|p| p.1).sum();
    let mut events = vec![0u8; total];
    let got = crate::ptrace::read_memory_vectored(pid, &pieces, &mut events)
        .map_err(|e| format!("cannot read the AIO ring's unreaped events: {e}"))?;
    if got != total {
        return Err(format!(
            "read only {got} of the {total} bytes of the AIO ring's unreaped events"
        ));
    }
    Ok(AioRing {
        nr: h.nr,
        head,
        tail: h.tail,
        events,
    })
}

/// A ring created in the task, to be moved from `current` to `target` by the restorer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingMove {
    pub current: u64,
    pub len: u64,
    pub target: u64,
}

/// The io_setup size that gives a ring of `nr` events: the kernel doubles the request (at
/// least 4 per possible CPU), adds 2 and fills whole pages (ioctx_alloc, aio_setup_ring).
fn request_for(nr: u32) -> u32 {
    (nr.saturating_sub(2) / 2).max(1)
}

/// `struct iocb` (include/uapi/linux/aio_abi.h), little-endian layout of x86_64 and arm64.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct Iocb {
    data: u64,
    key: u32,
    rw_flags: i32,
    opcode: u16,
    reqprio: i16,
    fildes: u32,
    buf: u64,
    nbytes: u64,
    offset: i64,
    reserved2: u64,
    flags: u32,
    resfd: u32,
}
const _: () = assert!(std::mem::size_of::<Iocb>() == 64);

/// One AIO context of the task, destroyed on drop unless kept.
struct Context {
    id: u64,
    keep: bool,
}

impl Drop for Context {
    fn drop(&mut self) {
        if !self.keep {
            // SAFETY: io_destroy of a context this task created; it takes only the id.
            unsafe { libc::syscall(libc::SYS_io_destroy, self.id) };
        }
    }
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Restore, in the forked task: creates every AIO context of the image with its ring in the
/// image's state (see the module comment) and returns where each ring is now and where the
/// restorer must move it. Runs after the task's fds are in place (it opens and closes an
/// eventfd of its own).
pub fn create_in_task(p: &ProcessImage) -> Result<Vec<RingMove>, String> {
    let rings: Vec<(u64, u64, &AioRing)> = p
        .vmas
        .iter()
        .filter_map(|v| match &v.backing {
            VmaBacking::AioRing(r) => Some((v.start, v.end, r)),
            _ => None,
        })
        .collect();
    if rings.is_empty() {
        return Ok(Vec::new());
    }
    // SAFETY: eventfd takes no pointers; the descriptor is owned below.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if efd < 0 {
        return Err(format!(
            "cannot create an eventfd to restore AIO contexts: {}",
            errno()
        ));
    }
    // SAFETY: efd was just returned by eventfd and is owned by nobody else.
    let efd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(efd) };
    let mut moves = Vec::with_capacity(rings.len());
    let mut made = Vec::with_capacity(rings.len());
    for (start, end, ring) in rings {
        let ctx = create_one(ring, std::os::fd::AsRawFd::as_raw_fd(&efd)).map_err(|why| {
            format!(
                "cannot restore the AIO context at {start:#x} (ring of {} events): {why}",
                ring.nr
            )
        })?;
        moves.push(RingMove {
            current: ctx.id,
            len: end - start,
            target: start,
        });
        made.push(ctx);
    }
    for ctx in &mut made {
        ctx.keep = true;
    }
    Ok(moves)
}

/// Creates one context and brings its ring into `ring`'s state.
fn create_one(ring: &AioRing, efd: i32) -> Result<Context, String> {
    let mut id: u64 = 0;
    // SAFETY: io_setup writes the context id into `id`, a valid u64.
    if unsafe {
        libc::syscall(
            libc::SYS_io_setup,
            request_for(ring.nr),
            &mut id as *mut u64,
        )
    } != 0
    {
        let e = errno();
        return Err(if e.raw_os_error() == Some(libc::EAGAIN) {
            format!("io_setup: {e} (the system-wide limit /proc/sys/fs/aio-max-nr is reached)")
        } else {
            format!("io_setup: {e}")
        });
    }
    let ctx = Context { id, keep: false };
    let h = header(id);
    if h.nr != ring.nr || h.magic != RING_MAGIC || h.header_length as u64 != AIO_RING_HEADER {
        return Err(format!(
            "this kernel made a ring of {} events (the dumping machine's had {}; its size \
             depends on the number of CPUs)",
            h.nr, ring.nr
        ));
    }
    let nr = ring.nr;
    let keep = unreaped(nr, ring.head, ring.tail);
    // Completions the kernel must count to reach the image's tail; the last `keep` stay in
    // the ring, unreaped, where the image's events go.
    let total = if ring.tail >= keep {
        ring.tail
    } else {
        ring.tail + nr
    };
    let iocb = Iocb {
        opcode: IOCB_CMD_POLL,
        fildes: efd as u32,
        buf: libc::POLLOUT as u64,
        ..Iocb::default()
    };
    let ptrs = [&iocb as *const Iocb; BATCH];
    let mut events = vec![[0u8; AIO_EVENT_SIZE as usize]; BATCH];
    let (mut submitted, mut reaped) = (0u32, 0u32);
    while submitted < total {
        let in_ring = submitted - reaped;
        let reap_first = submitted < total - keep;
        let n = if reap_first {
            (total - keep - submitted).min(BATCH as u32)
        } else {
            (total - submitted).min(BATCH as u32)
        };
        // SAFETY: io_submit reads `n` iocb pointers from `ptrs`, each pointing at `iocb`.
        let r = unsafe { libc::syscall(libc::SYS_io_submit, id, n as libc::c_long, ptrs.as_ptr()) };
        if r < 0 {
            let e = errno();
            if e.raw_os_error() == Some(libc::EAGAIN) && in_ring > 0 {
                // Request slots still held on another CPU's cache: give one back.
                reap(id, 1, &mut events)?;
                reaped += 1;
                continue;
            }
            return Err(format!("io_submit of a no-op poll request: {e}"));
        }
        let r = r as u32;
        submitted += r;
        if reap_first {
            reap(id, r, &mut events)?;
            reaped += r;
        }
    }
    let h = header(id);
    if h.tail != ring.tail {
        return Err(format!(
            "the no-op requests left the tail at {}, not {} (they did not complete at once)",
            h.tail, ring.tail
        ));
    }
    // The image's events into the slots from head to tail, then the head.
    let base = id as *mut u8;
    let mut from = 0usize;
    for (off, len) in unreaped_pieces(nr, ring.head, ring.tail) {
        // SAFETY: the ring is mapped read-write at `id` and holds `nr` event slots; the pieces
        // lie inside them, and `ring.events` holds their bytes (validated at image load).
        unsafe {
            std::ptr::copy_nonoverlapping(
                ring.events[from..from + len].as_ptr(),
                base.add(off as usize),
                len,
            )
        };
        from += len;
    }
    // SAFETY: `head` is the third u32 of the ring header, mapped read-write at `id`.
    unsafe { std::ptr::write_volatile((id + 8) as *mut u32, ring.head) };
    Ok(ctx)
}

/// Reaps exactly `n` completed events of context `id`.
fn reap(id: u64, n: u32, buf: &mut [[u8; 32]]) -> Result<(), String> {
    let mut left = n;
    while left > 0 {
        let want = left.min(buf.len() as u32) as libc::c_long;
        // SAFETY: io_getevents writes at most `want` 32-byte events into `buf`; a null timeout
        // waits, and every request submitted completed already.
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_getevents,
                id,
                want,
                want,
                buf.as_mut_ptr(),
                std::ptr::null::<libc::timespec>(),
            )
        };
        if r < 0 {
            let e = errno();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(format!("io_getevents: {e}"));
        }
        left -= r as u32;
    }
    Ok(())
}

/// The header of the ring mapped at `id` in this task.
fn header(id: u64) -> Header {
    let mut raw = [0u8; AIO_RING_HEADER as usize];
    // SAFETY: io_setup mapped the ring at `id`, at least one page, readable; volatile because
    // the kernel writes it.
    for (i, b) in raw.iter_mut().enumerate() {
        *b = unsafe { std::ptr::read_volatile((id as *const u8).add(i)) };
    }
    Header::parse(&raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreaped_events_wrap_at_the_ring_end() {
        assert_eq!(unreaped(127, 3, 3), 0);
        assert_eq!(unreaped(127, 3, 10), 7);
        assert_eq!(unreaped(127, 120, 2), 9);
        assert_eq!(unreaped_pieces(127, 3, 10), vec![(32 + 3 * 32, 7 * 32)]);
        assert_eq!(
            unreaped_pieces(127, 120, 2),
            vec![(32 + 120 * 32, 7 * 32), (32, 2 * 32)]
        );
    }

    #[test]
    fn the_request_size_gives_back_the_ring_size() {
        // The kernel's sizing on a machine with few CPUs (max(n, 4 * cpus) below n).
        let kernel = |n: u32| {
            let events = n * 2 + 2;
            let pages = (32 + 32 * events as u64).div_ceil(4096);
            ((pages * 4096 - 32) / 32) as u32
        };
        for nr in [127u32, 255, 383, 1023, 8191] {
            assert_eq!(kernel(request_for(nr)), nr, "nr {nr}");
        }
    }

    /// A context made here, with completions reaped and not, comes back the same after
    /// create_one: tail, head, unreaped events, and a new request completes after them.
    #[test]
    fn a_context_is_made_again_with_its_tail_head_and_events() {
        // SAFETY: eventfd takes no pointers.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(efd >= 0);
        let mut events = Vec::new();
        for i in 0..5u8 {
            events.extend_from_slice(&[i + 1; 32]);
        }
        for (head, tail) in [(0u32, 0u32), (10, 15), (125, 3), (126, 0)] {
            let n = unreaped(127, head, tail) as usize;
            let ring = AioRing {
                nr: 127,
                head,
                tail,
                events: events[..n * 32].to_vec(),
            };
            let ctx = match create_one(&ring, efd) {
                Ok(c) => c,
                Err(e) if e.contains("this kernel made a ring") => return, // many CPUs
                Err(e) => panic!("{e}"),
            };
            let h = header(ctx.id);
            assert_eq!((h.head, h.tail), (head, tail));
            let mut got = vec![[0u8; 32]; 8];
            // SAFETY: io_getevents writes at most 8 events into `got`; zero timeout.
            let zero = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            let r = unsafe {
                libc::syscall(
                    libc::SYS_io_getevents,
                    ctx.id,
                    0,
                    8,
                    got.as_mut_ptr(),
                    &zero,
                )
            };
            assert_eq!(r as usize, n, "head {head} tail {tail}");
            for (i, e) in got[..n].iter().enumerate() {
                assert_eq!(*e, [i as u8 + 1; 32]);
            }
            // A new request completes at the restored tail.
            let iocb = Iocb {
                opcode: IOCB_CMD_POLL,
                fildes: efd as u32,
                buf: libc::POLLOUT as u64,
                data: 77,
                ..Iocb::default()
            };
            let ptrs = [&iocb as *const Iocb];
            // SAFETY: one iocb pointer.
            let r = unsafe { libc::syscall(libc::SYS_io_submit, ctx.id, 1, ptrs.as_ptr()) };
            assert_eq!(r, 1);
            assert_eq!(header(ctx.id).tail, (tail + 1) % 127);
        }
        // SAFETY: closing the eventfd made above.
        unsafe { libc::close(efd) };
    }
}
