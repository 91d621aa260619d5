//! Content of shared anonymous memory (MAP_SHARED|MAP_ANONYMOUS), read from its shmem object.
//!
//! Pagemap only shows pages this process has faulted in; pages another process wrote (or that
//! were swapped out of the shmem object) would be missed. The object itself, opened through
//! `/proc/PID/map_files/<range>`, holds them all: SEEK_DATA/SEEK_HOLE (supported by shmem,
//! mm/shmem.c `shmem_file_llseek`) skip what was never written, and pread reads the rest.

use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::unistd::{lseek, Whence};

use crate::proc::Proc;

use super::{keep_pages, Area, PageCounts, PageError, PageSink, RunWriter, READ_BATCH};

fn io_err(proc: &Proc, area: &Area, e: std::io::Error) -> PageError {
    PageError::Shmem {
        pid: proc.pid(),
        start: area.start,
        end: area.end,
        err: e,
    }
}

/// Seeks for the next data (`SeekData`) or hole (`SeekHole`) at or after `pos`; `None` when
/// there is no further data (ENXIO).
fn seek<F: AsFd>(file: &F, pos: u64, whence: Whence) -> Result<Option<u64>, std::io::Error> {
    match lseek(file.as_fd(), pos as i64, whence) {
        Ok(off) => Ok(Some(off as u64)),
        Err(Errno::ENXIO) => Ok(None),
        Err(e) => Err(std::io::Error::from(e)),
    }
}

/// Stores the non-zero pages of the shmem object behind `area` (which maps the object from
/// byte `offset`).
pub(super) fn dump_area<S: PageSink>(
    proc: &Proc,
    area: &Area,
    offset: u64,
    page_size: u64,
    writer: &mut RunWriter<S>,
    counts: &mut PageCounts,
) -> Result<(), PageError> {
    let file = proc.open_map_file(area.start, area.end)?;
    let len = area.end - area.start;
    dump_object(
        &file,
        offset,
        len,
        area.start,
        page_size,
        writer,
        counts,
        |e| io_err(proc, area, e),
    )
}

/// Stores the non-zero pages of bytes `[offset, offset + len)` of the shmem-backed `file`,
/// recording the page at `offset + k` under the address `vaddr + k`.
#[allow(clippy::too_many_arguments)]
pub(super) fn dump_object<S: PageSink>(
    file: &std::fs::File,
    offset: u64,
    len: u64,
    vaddr: u64,
    page_size: u64,
    writer: &mut RunWriter<S>,
    counts: &mut PageCounts,
    err: impl Fn(std::io::Error) -> PageError,
) -> Result<(), PageError> {
    let total_pages = len / page_size;
    counts.scanned += total_pages;
    let obj_end = offset + len;
    let batch = (READ_BATCH as u64 / page_size).max(1) * page_size;
    let mut data_pages = 0u64;
    let mut pos = offset;
    while pos < obj_end {
        let Some(data) = seek(file, pos, Whence::SeekData).map_err(&err)? else {
            break;
        };
        if data >= obj_end {
            break;
        }
        let hole = seek(file, data, Whence::SeekHole)
            .map_err(&err)?
            .unwrap_or(obj_end);
        let from = data / page_size * page_size;
        let to = hole
            .div_ceil(page_size)
            .saturating_mul(page_size)
            .min(obj_end);
        let mut chunk = from.max(pos);
        while chunk < to {
            let n = (to - chunk).min(batch) as usize;
            let mut dst = writer.buffer(n);
            let mut got = 0usize;
            while got < n {
                match file.read_at(&mut dst[got..], chunk + got as u64) {
                    // Past the object's end: the rest reads as zero (and is skipped as such).
                    Ok(0) => {
                        dst[got..].fill(0);
                        got = n;
                    }
                    Ok(k) => got += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(err(e)),
                }
            }
            let at = vaddr + (chunk - offset);
            let stretches = keep_pages(&mut dst, &[(at, n)], true, page_size, counts);
            writer.push_buffer(&stretches, dst)?;
            data_pages += n as u64 / page_size;
            chunk += n as u64;
        }
        pos = to.max(pos + page_size);
    }
    counts.absent += total_pages - data_pages;
    Ok(())
}
