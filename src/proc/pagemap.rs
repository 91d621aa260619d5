//! `/proc/PID/pagemap`: one u64 per virtual page, read in large batches with `pread`.
//!
//! procfs's `PageMap::get_range_info` decodes entry by entry into an enum; the dump reads
//! millions of entries, so it takes the raw words and tests the bits itself (see
//! `crate::pages::pagemap` for their meaning).

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::ProcError;

/// An open pagemap file.
#[derive(Debug)]
pub struct Pagemap {
    pid: i32,
    file: File,
}

impl Pagemap {
    pub(super) fn new(pid: i32, file: File) -> Pagemap {
        Pagemap { pid, file }
    }

    /// Fills `entries` with the pagemap words of the pages starting at page index
    /// `first_page` (virtual address / page size), with as few `pread` calls as the kernel
    /// allows.
    pub fn read(&self, first_page: u64, entries: &mut [u64]) -> Result<(), ProcError> {
        let mut bytes = vec![0u8; entries.len() * 8];
        let mut done = 0usize;
        let base = first_page * 8;
        while done < bytes.len() {
            match self.file.read_at(&mut bytes[done..], base + done as u64) {
                Ok(0) => {
                    return Err(ProcError::Parse {
                        path: format!("/proc/{}/pagemap", self.pid),
                        detail: format!(
                            "end of file at page {:#x}",
                            first_page + (done / 8) as u64
                        ),
                    })
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ProcError::io(self.pid, "pagemap", e)),
            }
        }
        for (entry, chunk) in entries.iter_mut().zip(bytes.chunks_exact(8)) {
            *entry = u64::from_ne_bytes(chunk.try_into().expect("chunks_exact(8)"));
        }
        Ok(())
    }
}

/// Present in RAM (bit 63) or swapped out (bit 62): the page was touched since it was mapped.
const TOUCHED: u64 = (1 << 63) | (1 << 62);
/// A page of a file (or of shared anonymous memory) rather than the process's own (bit 61).
const FILE_PAGE: u64 = 1 << 61;

impl Pagemap {
    /// The pages of `start..end` (page-aligned, pages of `page` bytes) that are present or
    /// swapped, by address: in a private file mapping, those the process read (or the kernel
    /// mapped around a read, see fault_around_bytes) or wrote. `written` says whether the page
    /// is the process's own copy (anonymous, or swapped) rather than the file's page: in a
    /// private file mapping, the pages it wrote.
    pub fn touched_pages(
        &self,
        start: u64,
        end: u64,
        page: u64,
    ) -> Result<Vec<TouchedPage>, ProcError> {
        const BATCH: u64 = 64 << 10;
        let mut out = Vec::new();
        let mut entries = vec![0u64; BATCH as usize];
        let mut at = start / page;
        let last = end / page;
        while at < last {
            let n = (last - at).min(BATCH);
            let chunk = &mut entries[..n as usize];
            self.read(at, chunk)?;
            out.extend(
                chunk
                    .iter()
                    .enumerate()
                    .filter(|(_, &e)| e & TOUCHED != 0)
                    .map(|(i, &e)| TouchedPage {
                        addr: (at + i as u64) * page,
                        written: e & FILE_PAGE == 0,
                    }),
            );
            at += n;
        }
        Ok(out)
    }
}

/// A page [`Pagemap::touched_pages`] found present or swapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TouchedPage {
    pub addr: u64,
    /// The process's own copy, not the page of the file mapped there.
    pub written: bool,
}
