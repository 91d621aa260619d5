//! Memory contents: pagemap scan, zero-page skip and the page writer.
//!
//! For each area the dump hands over, the pagemap is read in batches of up to
//! [`PAGEMAP_BATCH`] entries; pages neither present nor swapped are skipped (they read as zero,
//! or as the file, after restore), and so are unmodified page-cache pages of private file
//! mappings. The rest is read [`READ_BATCH`] bytes at a time with process_vm_readv, each page is
//! tested for all-zero content, and non-zero pages go to the page file as runs.
//!
//! Shared anonymous memory lives in a shmem object that pagemap shows only where this process
//! has the page mapped; its content is read from the object itself (through
//! `/proc/PID/map_files`), skipping holes with SEEK_DATA/SEEK_HOLE. A shared file mapping whose
//! content the image keeps is read from its file the same way.

mod background;
mod pagemap;
mod reader;
mod shmem;
mod sink;
mod sysv;
mod zero;

pub use background::{prefaulted_buffers, BackgroundWriter};
pub use pagemap::{
    classify, select_runs, split_shared, PageClass, PM_FILE, PM_GUARD_REGION, PM_PRESENT, PM_SWAP,
};
pub use sink::{Counted, PageSink, RunWriter};
pub use sysv::{dump_sysv, SysvSource};
pub use zero::is_zero;

use crate::images::{ImageError, MemfdRun, PageRun, Vma, VmaBacking};
use crate::proc::{Proc, ProcError};
use crate::progress::Progress;
use crate::ptrace::PtraceError;

use reader::MemoryReader;

/// Pagemap entries read per `pread` (512 KiB of entries, 256 MiB of address space with 4 KiB
/// pages).
pub const PAGEMAP_BATCH: usize = 64 * 1024;
/// Bytes of memory read per process_vm_readv / pread batch.
pub const READ_BATCH: usize = 8 << 20;

/// Errors saving memory contents.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error(transparent)]
    Proc(#[from] ProcError),
    #[error(transparent)]
    Ptrace(#[from] PtraceError),
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A page that pagemap reported present could not be read.
    #[error("process {pid}: cannot read memory at {addr:#x}: {detail}")]
    Unreadable { pid: i32, addr: u64, detail: String },
    /// The shmem object behind a shared anonymous mapping could not be read.
    #[error(
        "process {pid}: cannot read the shared memory object behind {start:#x}-{end:#x}: {err}"
    )]
    Shmem {
        pid: i32,
        start: u64,
        end: u64,
        err: std::io::Error,
    },
    /// An unlinked file's content could not be read.
    #[error("process {pid}: cannot read the deleted file {path} through {via}: {err}")]
    Ghost {
        pid: i32,
        path: String,
        via: String,
        err: std::io::Error,
    },
    /// A memfd's content could not be read.
    #[error("process {pid}: cannot read the memfd {name} (inode {ino}) through {via}: {err}")]
    Memfd {
        pid: i32,
        name: String,
        ino: u64,
        via: String,
        err: std::io::Error,
    },
}

/// Where a memfd's content is read from: one of the process's fds on it, or one of its
/// mappings of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemfdSource {
    Fd(i32),
    Mapping { start: u64, end: u64 },
}

impl MemfdSource {
    /// The file mappings among `vmas`, as (file index, the mapping as a source).
    pub fn mappings(vmas: &[Vma]) -> impl Iterator<Item = (u32, MemfdSource)> + '_ {
        vmas.iter().filter_map(|v| match v.backing {
            VmaBacking::File { file, .. } => Some((
                file,
                MemfdSource::Mapping {
                    start: v.start,
                    end: v.end,
                },
            )),
            _ => None,
        })
    }
}

/// A memfd whose content is to be saved, whole (`size` bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemfdArea {
    pub ino: u64,
    pub name: String,
    pub size: u64,
    pub source: MemfdSource,
}

/// How an area's content is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AreaKind {
    /// Private memory (anonymous, heap, stack); pagemap decides what to read.
    PrivateAnonymous,
    /// A private file mapping: only pages written since mapping (COW copies) are stored.
    PrivateFile,
    /// A private mapping of a crest page file (a `--pages map` restore): private anonymous
    /// memory to the image, whose every page is read (pages never touched since the restore
    /// are the image's, not zeros); only zero pages are left out.
    ImagePages,
    /// MAP_SHARED|MAP_ANONYMOUS: the shmem object's pages in `[offset, offset + size)`.
    SharedAnonymous { offset: u64 },
    /// A shared file mapping whose file content the image stores (HotSpot's hsperfdata): the
    /// file's pages in `[offset, offset + size)`, read from the file like a shmem object.
    SharedFile { offset: u64 },
}

/// One memory area whose content is to be saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Area {
    pub start: u64,
    pub end: u64,
    pub kind: AreaKind,
    /// PROT_READ is set (process_vm_readv can read it).
    pub readable: bool,
}

/// Page counts of a dump; `scanned == absent + file_backed + zero + written`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageCounts {
    pub scanned: u64,
    pub absent: u64,
    pub file_backed: u64,
    pub zero: u64,
    pub written: u64,
    pub bytes_written: u64,
}

impl PageCounts {
    /// Adds another process's counts.
    pub fn add(&mut self, other: &PageCounts) {
        self.scanned += other.scanned;
        self.absent += other.absent;
        self.file_backed += other.file_backed;
        self.zero += other.zero;
        self.written += other.written;
        self.bytes_written += other.bytes_written;
    }
}

/// What [`dump_pages`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageDump {
    /// Stored runs, ascending, each inside one area.
    pub runs: Vec<PageRun>,
    /// Stored memfd content ([`dump_memfds`]).
    pub memfd_runs: Vec<MemfdRun>,
    /// Stored content of unlinked files ([`crate::files::ghost::dump_content`]).
    pub ghost_runs: Vec<crate::images::GhostRun>,
    pub counts: PageCounts,
}

/// Stores the content of `areas` (ascending, not overlapping) of the stopped process into
/// `out`, advancing `progress` by the bytes of every page present (what the dump reads).
pub fn dump_pages<S: PageSink>(
    proc: &Proc,
    areas: &[Area],
    page_size: u64,
    out: &mut S,
    progress: &Progress,
) -> Result<PageDump, PageError> {
    let mut counts = PageCounts::default();
    let present = |c: &PageCounts| c.scanned - c.absent;
    let mut writer = RunWriter::new(out, page_size);
    let mut reader = MemoryReader::new(proc);
    let mut pagemap = None;
    let mut entries = vec![0u64; PAGEMAP_BATCH];

    for area in areas {
        match area.kind {
            AreaKind::SharedAnonymous { offset } | AreaKind::SharedFile { offset } => {
                let before = present(&counts);
                shmem::dump_area(proc, area, offset, page_size, &mut writer, &mut counts)?;
                progress.advance((present(&counts) - before) * page_size);
            }
            AreaKind::ImagePages => {
                let npages = (area.end - area.start) / page_size;
                counts.scanned += npages;
                let before = present(&counts);
                store_runs(
                    &[(area.start, npages)],
                    area,
                    true,
                    page_size,
                    &mut reader,
                    &mut writer,
                    &mut counts,
                )?;
                progress.advance((present(&counts) - before) * page_size);
            }
            AreaKind::PrivateAnonymous | AreaKind::PrivateFile => {
                if pagemap.is_none() {
                    pagemap = Some(proc.pagemap()?);
                }
                let pm = pagemap.as_ref().expect("opened above");
                let file_mapping = area.kind == AreaKind::PrivateFile;
                let mut vaddr = area.start;
                while vaddr < area.end {
                    let n = (((area.end - vaddr) / page_size) as usize).min(PAGEMAP_BATCH);
                    pm.read(vaddr / page_size, &mut entries[..n])?;
                    let before = present(&counts);
                    let mut runs = Vec::new();
                    select_runs(
                        &entries[..n],
                        vaddr,
                        page_size,
                        file_mapping,
                        &mut counts,
                        &mut runs,
                    );
                    // A zero page copied-on-write in a file mapping differs from the file under
                    // it, so only anonymous areas may leave zero pages out.
                    let skip_zero = !file_mapping;
                    for (group, shared) in split_shared(&runs, &entries[..n], vaddr, page_size) {
                        // Pages shared copy-on-write go through /proc/PID/mem (see
                        // split_shared): as for an area without PROT_READ.
                        let via = Area {
                            readable: area.readable && !shared,
                            ..*area
                        };
                        store_runs(
                            &group,
                            &via,
                            skip_zero,
                            page_size,
                            &mut reader,
                            &mut writer,
                            &mut counts,
                        )?;
                    }
                    progress.advance((present(&counts) - before) * page_size);
                    vaddr += n as u64 * page_size;
                }
            }
        }
        writer.end_area();
    }
    counts.written = writer.pages();
    counts.bytes_written = counts.written * page_size;
    Ok(PageDump {
        runs: writer.finish(),
        memfd_runs: Vec::new(),
        ghost_runs: Vec::new(),
        counts,
    })
}

/// Stores the non-zero pages of the memfds `memfds` (sorted by inode) of the stopped process
/// into `out`, after what [`dump_pages`] stored, adding their runs and counts to `dump`.
pub fn dump_memfds<S: PageSink>(
    proc: &Proc,
    memfds: &[MemfdArea],
    page_size: u64,
    out: &mut S,
    dump: &mut PageDump,
) -> Result<(), PageError> {
    for m in memfds {
        let (file, via) = match m.source {
            MemfdSource::Fd(fd) => (proc.reopen_fd(fd)?, format!("fd {fd}")),
            MemfdSource::Mapping { start, end } => (
                proc.open_map_file(start, end)?,
                format!("its mapping {start:#x}-{end:#x}"),
            ),
        };
        let runs = dump_file_content(&file, m.size, page_size, out, &mut dump.counts, |err| {
            PageError::Memfd {
                pid: proc.pid(),
                name: m.name.clone(),
                ino: m.ino,
                via: via.clone(),
                err,
            }
        })?;
        dump.memfd_runs.extend(runs.into_iter().map(|r| MemfdRun {
            ino: m.ino,
            offset: r.vaddr,
            npages: r.npages,
            file_offset: r.file_offset,
        }));
    }
    Ok(())
}

/// Stores the non-zero pages of the first `size` bytes of `file` (a memfd, an unlinked file)
/// into `out`, skipping holes with SEEK_DATA/SEEK_HOLE, and adds them to `counts`. The runs
/// returned give file offsets in place of addresses (`vaddr`).
pub fn dump_file_content<S: PageSink>(
    file: &std::fs::File,
    size: u64,
    page_size: u64,
    out: &mut S,
    counts: &mut PageCounts,
    err: impl Fn(std::io::Error) -> PageError,
) -> Result<Vec<PageRun>, PageError> {
    let mut own = PageCounts::default();
    let mut writer = RunWriter::new(out, page_size);
    let len = size.div_ceil(page_size) * page_size;
    shmem::dump_object(file, 0, len, 0, page_size, &mut writer, &mut own, err)?;
    own.written = writer.pages();
    own.bytes_written = own.written * page_size;
    counts.add(&own);
    Ok(writer.finish())
}

/// Reads the page runs in batches of at most [`READ_BATCH`] bytes, each into a buffer from the
/// sink, and stores their pages.
fn store_runs<S: PageSink>(
    runs: &[(u64, u64)],
    area: &Area,
    skip_zero: bool,
    page_size: u64,
    reader: &mut MemoryReader,
    writer: &mut RunWriter<S>,
    counts: &mut PageCounts,
) -> Result<(), PageError> {
    let batch_pages = (READ_BATCH as u64 / page_size).max(1);
    let mut ranges: Vec<(u64, usize)> = Vec::new();
    let mut batch_len = 0u64;
    let mut flush =
        |ranges: &mut Vec<(u64, usize)>, batch_len: &mut u64| -> Result<(), PageError> {
            if ranges.is_empty() {
                return Ok(());
            }
            let mut data = writer.buffer(*batch_len as usize);
            reader.read(ranges, &mut data, area.readable)?;
            let stretches = keep_pages(&mut data, ranges, skip_zero, page_size, counts);
            writer.push_buffer(&stretches, data)?;
            ranges.clear();
            *batch_len = 0;
            Ok(())
        };
    for &(start, npages) in runs {
        let mut addr = start;
        let mut left = npages;
        while left > 0 {
            let room = batch_pages - batch_len / page_size;
            let take = left.min(room);
            ranges.push((addr, (take * page_size) as usize));
            batch_len += take * page_size;
            addr += take * page_size;
            left -= take;
            if batch_len / page_size == batch_pages {
                flush(&mut ranges, &mut batch_len)?;
            }
        }
    }
    flush(&mut ranges, &mut batch_len)
}

/// Keeps the pages of `data` (the `ranges`' bytes back to back) that must be stored: all of
/// them, or only the non-zero ones when `skip_zero`. Kept pages are moved down so they stay
/// back to back and `data` is cut to them; returns their (address, page count) stretches in
/// order. Moving pages inside the buffer spares a copy into a second one.
pub(crate) fn keep_pages(
    data: &mut Vec<u8>,
    ranges: &[(u64, usize)],
    skip_zero: bool,
    page_size: u64,
    counts: &mut PageCounts,
) -> Vec<(u64, u64)> {
    let ps = page_size as usize;
    let mut stretches: Vec<(u64, u64)> = Vec::new();
    let mut src = 0usize;
    let mut dst = 0usize;
    for &(addr, len) in ranges {
        for i in 0..len / ps {
            let page = src + i * ps;
            if skip_zero && is_zero(&data[page..page + ps]) {
                counts.zero += 1;
                continue;
            }
            if dst != page {
                data.copy_within(page..page + ps, dst);
            }
            dst += ps;
            let vaddr = addr + (i * ps) as u64;
            match stretches.last_mut() {
                Some((start, n)) if *start + *n * page_size == vaddr => *n += 1,
                _ => stretches.push((vaddr, 1)),
            }
        }
        src += len;
    }
    data.truncate(dst);
    stretches
}

#[cfg(test)]
mod tests;
