//! Prefetch for a mapped restore: the working set's ranges of each page file are read into the
//! page cache (posix_fadvise WILLNEED, asynchronous readahead) before the fork, so the reads
//! overlap the rest of the restore.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::time::Instant;

use super::{PrefetchStats, MERGE_GAP};
use crate::images::{Image, WorkingSet};

/// The page-file byte ranges `(offset, len)` of the working set of each process of `image`,
/// by page file path, sorted and merged (neighbours closer than [`MERGE_GAP`] are one).
pub fn file_ranges(image: &Image, ws: &WorkingSet) -> Vec<(std::path::PathBuf, Vec<(u64, u64)>)> {
    let page = image.inventory.page_size;
    let by_pid: HashMap<i32, &crate::images::ProcessImage> =
        image.processes.iter().map(|p| (p.pid, p)).collect();
    let mut out = Vec::new();
    for w in &ws.processes {
        let Some(p) = by_pid.get(&w.pid) else {
            continue;
        };
        let mut ranges: Vec<(u64, u64)> = w
            .ranges
            .iter()
            .filter_map(|&(vaddr, npages)| {
                // Checked when the file was read: each range lies inside one run.
                let k = p
                    .page_runs
                    .partition_point(|r| r.vaddr <= vaddr)
                    .checked_sub(1)?;
                let r = &p.page_runs[k];
                Some((r.file_offset + (vaddr - r.vaddr), npages * page))
            })
            .collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (off, len) in ranges {
            match merged.last_mut() {
                Some(last) if off <= last.0 + last.1 + MERGE_GAP => {
                    last.1 = last.1.max(off + len - last.0)
                }
                _ => merged.push((off, len)),
            }
        }
        out.push((image.pages_path(p), merged));
    }
    out
}

/// Starts reading the working set of `image` into the page cache: posix_fadvise(WILLNEED)
/// only queues the reads, so this returns quickly and the reads go on while crest opens files
/// and forks. Run in crest's only thread: a helper thread alive across the restore's forks
/// could leave a lock held in a child.
pub fn readahead(image: &Image, ws: &WorkingSet) -> PrefetchStats {
    let t = Instant::now();
    let pages: u64 = ws.processes.iter().map(|p| p.pages()).sum();
    for (path, ranges) in file_ranges(image, ws) {
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                crate::warn!("prefetch: cannot open {}: {e}", path.display());
                continue;
            }
        };
        for (off, len) in ranges {
            // SAFETY: posix_fadvise on a descriptor we own; it only starts reads.
            let r = unsafe {
                libc::posix_fadvise(
                    file.as_raw_fd(),
                    off as libc::off_t,
                    len as libc::off_t,
                    libc::POSIX_FADV_WILLNEED,
                )
            };
            if r != 0 {
                crate::warn!(
                    "prefetch: posix_fadvise(WILLNEED) on {} at offset {off} failed: {}",
                    path.display(),
                    std::io::Error::from_raw_os_error(r)
                );
                break;
            }
        }
    }
    PrefetchStats {
        pages,
        us: t.elapsed().as_micros() as u64,
    }
}
