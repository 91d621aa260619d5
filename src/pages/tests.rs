//! [`dump_pages`] on a real forked child, into a buffer.

use super::*;
use crate::dump::testutil::{pattern_page, spawn, Region, SharedPage};
use crate::images::ImageError;

struct Buf(Vec<u8>);

impl PageSink for Buf {
    fn offset(&self) -> u64 {
        self.0.len() as u64
    }
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// The stored content of `vaddr`, if any run covers it.
fn stored<'a>(dump: &PageDump, data: &'a [u8], vaddr: u64, ps: u64) -> Option<&'a [u8]> {
    dump.runs
        .iter()
        .find(|r| r.vaddr <= vaddr && vaddr < r.vaddr + r.npages * ps)
        .map(|r| {
            let off = (r.file_offset + (vaddr - r.vaddr)) as usize;
            &data[off..off + ps as usize]
        })
}

#[test]
fn stores_exactly_the_non_zero_present_pages() {
    let ps = crate::arch::page_size();
    let psz = ps as usize;
    // 0..8 pattern, 8..12 written zeros, 12..16 never touched, 16 pattern again.
    let mut private = Region::new(17, false);
    for i in (0..8).chain(16..17) {
        private.bytes()[i * psz..(i + 1) * psz].copy_from_slice(&pattern_page(1, i, psz));
    }
    private.bytes()[8 * psz..12 * psz].fill(0);
    // Without PROT_READ: process_vm_readv cannot read it, /proc/PID/mem must.
    let mut hidden = Region::new(2, false);
    hidden.bytes()[..psz].copy_from_slice(&pattern_page(2, 0, psz));
    hidden.protect(libc::PROT_NONE);
    // Shared anonymous memory written before the fork and never touched by the child: the
    // child's pagemap shows nothing, the shmem object holds it.
    let mut shared = Region::new(4, true);
    shared.bytes()[2 * psz..3 * psz].copy_from_slice(&pattern_page(3, 2, psz));

    let page = SharedPage::new();
    let child = spawn(&[], &page, || {});
    let proc = Proc::open(child.pid).unwrap();
    let areas = [
        Area {
            start: private.addr,
            end: private.addr + private.len as u64,
            kind: AreaKind::PrivateAnonymous,
            readable: true,
        },
        Area {
            start: hidden.addr,
            end: hidden.addr + hidden.len as u64,
            kind: AreaKind::PrivateAnonymous,
            readable: false,
        },
        Area {
            start: shared.addr,
            end: shared.addr + shared.len as u64,
            kind: AreaKind::SharedAnonymous { offset: 0 },
            readable: true,
        },
    ];
    let mut areas = areas.to_vec();
    areas.sort_by_key(|a| a.start);
    let mut buf = Buf(Vec::new());
    let dump = dump_pages(
        &proc,
        &areas,
        ps,
        &mut buf,
        &crate::progress::Progress::none(),
    )
    .unwrap();

    for i in (0..8).chain(16..17) {
        let got = stored(&dump, &buf.0, private.addr + i as u64 * ps, ps);
        assert_eq!(got, Some(&pattern_page(1, i, psz)[..]), "private page {i}");
    }
    for i in 8..16 {
        assert!(
            stored(&dump, &buf.0, private.addr + i as u64 * ps, ps).is_none(),
            "page {i}"
        );
    }
    assert_eq!(
        stored(&dump, &buf.0, hidden.addr, ps),
        Some(&pattern_page(2, 0, psz)[..])
    );
    assert!(stored(&dump, &buf.0, hidden.addr + ps, ps).is_none());
    assert_eq!(
        stored(&dump, &buf.0, shared.addr + 2 * ps, ps),
        Some(&pattern_page(3, 2, psz)[..])
    );
    for i in [0u64, 1, 3] {
        assert!(stored(&dump, &buf.0, shared.addr + i * ps, ps).is_none());
    }

    let c = dump.counts;
    assert_eq!(c.scanned, 17 + 2 + 4);
    assert_eq!(c.written, 9 + 1 + 1);
    assert_eq!(c.bytes_written, c.written * ps);
    assert_eq!(buf.0.len() as u64, c.bytes_written);
    // Written zeros are present (4 pages); the untouched ones absent.
    assert!(c.zero >= 4, "{c:?}");
    assert_eq!(
        c.scanned,
        c.absent + c.file_backed + c.zero + c.written,
        "{c:?}"
    );
    // Runs are ascending, page-aligned and never cross an area.
    assert!(dump
        .runs
        .windows(2)
        .all(|w| w[0].vaddr + w[0].npages * ps <= w[1].vaddr));
    for r in &dump.runs {
        assert!(areas
            .iter()
            .any(|a| a.start <= r.vaddr && r.vaddr + r.npages * ps <= a.end));
    }
    // Pages 0..8 are one run: consecutive pages are coalesced.
    assert!(dump
        .runs
        .iter()
        .any(|r| r.vaddr == private.addr && r.npages == 8));
}

#[test]
fn file_mappings_keep_written_zero_pages() {
    // A private file mapping whose page was overwritten with zeros differs from the file;
    // it must be stored although it is all zero, while unwritten pages are left to the file.
    let ps = crate::arch::page_size();
    let psz = ps as usize;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    let mut content = Vec::new();
    for i in 0..3 {
        content.extend_from_slice(&pattern_page(4, i, psz));
    }
    std::fs::write(&path, &content).unwrap();
    let f = std::fs::File::open(&path).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: a fresh private mapping of our file, unmapped at the end.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            3 * psz,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    // SAFETY: page 0 is read (page cache), page 1 is overwritten (COW copy of zeros).
    unsafe {
        std::ptr::read_volatile(p as *const u8);
        std::ptr::write_bytes((p as *mut u8).add(psz), 0, psz);
        std::ptr::read_volatile((p as *const u8).add(2 * psz));
    }
    let page = SharedPage::new();
    let child = spawn(&[], &page, || {});
    let proc = Proc::open(child.pid).unwrap();
    let area = Area {
        start: p as u64,
        end: p as u64 + 3 * ps,
        kind: AreaKind::PrivateFile,
        readable: true,
    };
    let mut buf = Buf(Vec::new());
    let dump = dump_pages(
        &proc,
        &[area],
        ps,
        &mut buf,
        &crate::progress::Progress::none(),
    )
    .unwrap();
    // SAFETY: unmapping what we mapped.
    unsafe { libc::munmap(p, 3 * psz) };

    assert_eq!(dump.runs.len(), 1);
    assert_eq!(dump.runs[0].vaddr, p as u64 + ps);
    assert_eq!(dump.runs[0].npages, 1);
    assert!(buf.0.iter().all(|&b| b == 0));
    assert_eq!(dump.counts.zero, 0);
    assert_eq!(dump.counts.written, 1);
    // The child's pages 0 and 2 are page cache (or not faulted in after fork): never stored.
    assert_eq!(dump.counts.file_backed + dump.counts.absent, 2);
}

#[test]
fn keep_pages_moves_the_kept_pages_together_and_names_their_stretches() {
    let ps = 16u64;
    let page = |b: u8| vec![b; ps as usize];
    // Range A: pages 1, 0, 2 at 0x1000; range B: pages 0, 3 at 0x5000.
    let mut data = [page(1), page(0), page(2), page(0), page(3)].concat();
    let ranges = [(0x1000, 3 * ps as usize), (0x5000, 2 * ps as usize)];
    let mut counts = PageCounts::default();
    let stretches = keep_pages(&mut data, &ranges, true, ps, &mut counts);
    assert_eq!(stretches, vec![(0x1000, 1), (0x1020, 1), (0x5010, 1)]);
    assert_eq!(data, [page(1), page(2), page(3)].concat());
    assert_eq!(counts.zero, 2);

    // Without skip_zero every page stays, and neighbouring pages make one stretch.
    let mut data = [page(1), page(0), page(2)].concat();
    let mut counts = PageCounts::default();
    let stretches = keep_pages(&mut data, &ranges[..1], false, ps, &mut counts);
    assert_eq!(stretches, vec![(0x1000, 3)]);
    assert_eq!(data.len(), 3 * ps as usize);
    assert_eq!(counts.zero, 0);
}

#[test]
fn dump_through_the_background_writer_matches_a_direct_dump() {
    let ps = crate::arch::page_size();
    let psz = ps as usize;
    let mut region = Region::new(64, false);
    for i in (0..64).filter(|i| i % 3 != 0) {
        region.bytes()[i * psz..(i + 1) * psz].copy_from_slice(&pattern_page(7, i, psz));
    }
    let page = SharedPage::new();
    let child = spawn(&[], &page, || {});
    let proc = Proc::open(child.pid).unwrap();
    let areas = [Area {
        start: region.addr,
        end: region.addr + region.len as u64,
        kind: AreaKind::PrivateAnonymous,
        readable: true,
    }];

    let mut direct = Buf(Vec::new());
    let expected = dump_pages(
        &proc,
        &areas,
        ps,
        &mut direct,
        &crate::progress::Progress::none(),
    )
    .unwrap();

    let mut background = BackgroundWriter::spawn(Buf(Vec::new()), 1, false).unwrap();
    let got = dump_pages(
        &proc,
        &areas,
        ps,
        &mut background,
        &crate::progress::Progress::none(),
    )
    .unwrap();
    let (sink, written) = background.finish();
    written.unwrap();
    assert_eq!(got, expected);
    assert_eq!(sink.0, direct.0);
    // Pages 0, 3, ..., 63 (22 of them) were never written.
    assert_eq!(got.counts.written, 64 - 22);
}
