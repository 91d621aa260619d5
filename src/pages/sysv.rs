//! Content of the SysV shared memory segments a process stores (dump/sysv.rs): each read
//! whole through `/proc/PID/map_files` of one of its attachments, which opens the segment's
//! shmem object; pages never written or holding only zeros are skipped (SEEK_DATA/SEEK_HOLE
//! and a zero check, as for shared anonymous memory).

use crate::images::SysvShmRun;
use crate::proc::Proc;

use super::{shmem, PageCounts, PageDump, PageError, PageSink, RunWriter};

/// A segment to store: its size, and an attachment `[start, end)` of it in the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SysvSource {
    pub start: u64,
    pub end: u64,
    pub size: u64,
}

/// Stores the non-zero pages of each segment of `segments` into `out` after what came
/// before, adding their counts to `dump`; returns each segment's runs, in order.
pub fn dump_sysv<S: PageSink>(
    proc: &Proc,
    segments: &[SysvSource],
    page_size: u64,
    out: &mut S,
    dump: &mut PageDump,
) -> Result<Vec<Vec<SysvShmRun>>, PageError> {
    let mut all = Vec::with_capacity(segments.len());
    for s in segments {
        let file = proc.open_map_file(s.start, s.end)?;
        let mut counts = PageCounts::default();
        let mut writer = RunWriter::new(out, page_size);
        let len = s.size.div_ceil(page_size) * page_size;
        shmem::dump_object(
            &file,
            0,
            len,
            0,
            page_size,
            &mut writer,
            &mut counts,
            |err| PageError::Shmem {
                pid: proc.pid(),
                start: s.start,
                end: s.end,
                err,
            },
        )?;
        counts.written = writer.pages();
        counts.bytes_written = counts.written * page_size;
        all.push(
            writer
                .finish()
                .into_iter()
                .map(|r| SysvShmRun {
                    offset: r.vaddr,
                    npages: r.npages,
                    file_offset: r.file_offset,
                })
                .collect(),
        );
        dump.counts.add(&counts);
    }
    Ok(all)
}
