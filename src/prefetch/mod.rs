//! The recorded working set and prefetch (`crest restore --record-working-set`, and every later
//! lazy or mapped restore unless `--no-prefetch`).
//!
//! Recording: a lazy or mapped restore notes which stored pages each restored process touches
//! in its first milliseconds and writes them beside the image as `working-set.img`
//! ([`crate::images::WorkingSet`]; the image itself is not changed):
//! - lazy ([`crate::lazy::server`]): the pages whose faults the page server served during the
//!   window. While recording, the server copies one page per fault and holds its background
//!   pass until the window ends, so every page the program touches faults and nothing else is
//!   counted (a background copy or a fault's neighbours would hide later touches).
//! - map ([`record`]): after the window, the pages present in the process's page tables
//!   (/proc/PID/pagemap) within the ranges mapped from the page file. mincore() would not do:
//!   it reports the page cache, which the image's file keeps whether or not the process read a
//!   page. A read fault also maps the cached neighbours of the page (the kernel's fault-around,
//!   64 KiB by default), so the record can hold a few pages the program did not touch.
//! - copy restores are refused: every page is read before the process runs anyway.
//!
//! Prefetch: a later restore reads the file (refused like any damaged metadata if it is
//! damaged, stale or does not fit the image) and brings those pages in first:
//! - lazy: the page server copies the working-set ranges (neighbouring ranges merged) in large
//!   UFFDIO_COPY batches as soon as the memory is registered, and crest releases the tree only
//!   once they are in (measured: steadier and on median faster than releasing it at once and
//!   prefetching while it runs, when the program's faults and the prefetch compete for the
//!   page server); then faults and the background pass bring the rest.
//! - map ([`mapped`]): posix_fadvise(WILLNEED) on the page-file ranges of the working set
//!   before the fork (in crest's one thread: no helper thread may live across the restore's
//!   forks): the page cache is what makes a mapped restore fast, and this starts the
//!   reads while crest opens files and forks, so the program's first faults find their pages
//!   read (or in flight) instead of starting a small read each.

pub mod mapped;
pub mod record;

use crate::images::{self, Image, PageRun, WorkingSet};

/// Working-set ranges closer than this are prefetched as one (the stored pages between them
/// come along): fewer, larger copies.
pub const MERGE_GAP: u64 = 64 << 10;

/// Written working-set ranges closer than this are copied as one by a mapped restore
/// ([`hot_ranges`]): each page copied costs about what a copy-on-write fault would, so only
/// what splits the mapping into many small VMAs is merged.
pub const HOT_MERGE_GAP: u64 = 8 << 10;

/// The working set to prefetch for a restore of `image`: None with `--no-prefetch`, while
/// recording a new one, or when the image has none. A damaged, stale or misfit file is an
/// error, raised before anything is restored.
pub fn load(image: &Image, wanted: bool) -> Result<Option<WorkingSet>, images::ImageError> {
    if !wanted {
        return Ok(None);
    }
    let ws = images::read_working_set(image)?;
    if let Some(ws) = &ws {
        crate::info!(
            1,
            "working set of {} process(es), {} page(s), recorded over {} ms: prefetched",
            ws.processes.len(),
            ws.processes.iter().map(|p| p.pages()).sum::<u64>(),
            ws.window_ms
        );
    }
    Ok(ws)
}

/// The ranges of process `pid` in `ws`, as sorted `(start, end)` addresses with neighbours
/// less than [`MERGE_GAP`] apart merged.
pub fn merged_ranges(ws: &WorkingSet, pid: i32, page: u64) -> Vec<(u64, u64)> {
    ws.processes
        .iter()
        .find(|p| p.pid == pid)
        .map(|p| merged(&p.ranges, page, MERGE_GAP))
        .unwrap_or_default()
}

/// The pages process `pid` wrote first, by `ws` (only a mapped restore's recording tells):
/// sorted `(start, end)` addresses with neighbours less than [`MERGE_GAP`] apart merged. A
/// mapped restore copies them instead of mapping them ([`crate::mapped::MapPlan`]); merging
/// keeps the VMAs that splits few, and the pages between come along at the cost of a read.
pub fn hot_ranges(ws: &WorkingSet, pid: i32, page: u64) -> Vec<(u64, u64)> {
    ws.processes
        .iter()
        .find(|p| p.pid == pid)
        .map(|p| merged(&p.written, page, HOT_MERGE_GAP))
        .unwrap_or_default()
}

/// `(vaddr, npages)` ranges (sorted) as `(start, end)` with neighbours at most `gap` bytes
/// apart merged.
fn merged(ranges: &[(u64, u64)], page: u64, gap: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for &(vaddr, npages) in ranges {
        let end = vaddr + npages * page;
        match out.last_mut() {
            Some(last) if vaddr <= last.1 + gap => last.1 = last.1.max(end),
            _ => out.push((vaddr, end)),
        }
    }
    out
}

/// Turns touched page addresses (any order, repeats allowed) into working-set ranges
/// `(vaddr, npages)`: sorted, each inside one stored page run of `runs` (sorted); pages the
/// image does not store are left out.
pub fn ranges_from_pages(mut pages: Vec<u64>, runs: &[PageRun], page: u64) -> Vec<(u64, u64)> {
    pages.sort_unstable();
    pages.dedup();
    let mut out: Vec<(u64, u64)> = Vec::new();
    // The run the last range lies in.
    let mut last_run = usize::MAX;
    for addr in pages {
        let idx = runs.partition_point(|r| r.vaddr <= addr);
        let Some(k) = idx.checked_sub(1) else {
            continue;
        };
        let r = &runs[k];
        if addr >= r.vaddr + r.npages * page {
            continue;
        }
        match out.last_mut() {
            Some(last) if last_run == k && last.0 + last.1 * page == addr => last.1 += 1,
            _ => out.push((addr, 1)),
        }
        last_run = k;
    }
    out
}

/// For `crest show`: a line about the working set beside `image` (empty when there is none).
pub fn show_text(image: &Image) -> String {
    match images::read_working_set(image) {
        Ok(None) => String::new(),
        Ok(Some(ws)) => {
            let per: Vec<String> = ws
                .processes
                .iter()
                .map(|p| {
                    format!(
                        "pid {} {} page(s) in {} range(s), {} written",
                        p.pid,
                        p.pages(),
                        p.ranges.len(),
                        p.written.iter().map(|r| r.1).sum::<u64>()
                    )
                })
                .collect();
            format!(
                "working set ({}, first {} ms, recorded {}): {}\n",
                match ws.source {
                    images::WorkingSetSource::LazyFaults => "from lazy faults",
                    images::WorkingSetSource::MappedPresent => "from mapped pages present",
                },
                ws.window_ms,
                crate::show::format_unix_ms(ws.recorded_unix_ms),
                if per.is_empty() {
                    "no page".into()
                } else {
                    per.join(", ")
                }
            )
        }
        Err(e) => format!("working set: {e}\n"),
    }
}

/// For `crest show --json`: the working set (ranges as `[vaddr, npages]`), null when there is
/// none, or `{"error": ...}` when it cannot be used.
pub fn show_json(image: &Image) -> serde_json::Value {
    match images::read_working_set(image) {
        Ok(None) => serde_json::Value::Null,
        Ok(Some(ws)) => serde_json::json!({
            "source": format!("{:?}", ws.source),
            "window_ms": ws.window_ms,
            "recorded_unix_ms": ws.recorded_unix_ms,
            "processes": ws.processes.iter().map(|p| serde_json::json!({
                "pid": p.pid,
                "pages": p.pages(),
                "ranges": p.ranges,
                "written_pages": p.written.iter().map(|r| r.1).sum::<u64>(),
                "written_ranges": p.written,
            })).collect::<Vec<_>>(),
        }),
        Err(e) => serde_json::json!({ "error": e.to_string() }),
    }
}

/// What prefetch did in one restore.
#[derive(Debug, Clone, Default)]
pub struct PrefetchStats {
    /// Pages of the working set brought in (or asked for).
    pub pages: u64,
    /// Microseconds it took.
    pub us: u64,
}

impl PrefetchStats {
    pub fn text(&self) -> String {
        format!(
            "prefetched {} working-set page(s) in {:.1} ms",
            self.pages,
            self.us as f64 / 1000.0
        )
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "pages": self.pages, "us": self.us })
    }
}

/// Now, in milliseconds since the Unix epoch.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::{ProcessWorkingSet, WorkingSetSource};

    fn run(vaddr: u64, npages: u64, file_offset: u64) -> PageRun {
        PageRun {
            vaddr,
            npages,
            file_offset,
        }
    }

    #[test]
    fn touched_pages_become_ranges_split_at_runs_without_unstored_pages() {
        let ps = 0x1000;
        // Two runs that touch in memory, one further up.
        let runs = [
            run(0x10000, 4, 0),
            run(0x14000, 2, 0x8000),
            run(0x20000, 2, 0x4000),
        ];
        let pages = vec![
            0x13000, 0x11000, 0x12000, 0x14000, 0x11000, // across the first two runs
            0x18000, // not stored
            0x21000, 0x5000,
        ];
        assert_eq!(
            ranges_from_pages(pages, &runs, ps),
            vec![(0x11000, 3), (0x14000, 1), (0x21000, 1)]
        );
    }

    #[test]
    fn close_ranges_are_merged_for_prefetch() {
        let ws = WorkingSet {
            inventory_blake3: [0; 32],
            recorded_unix_ms: 0,
            window_ms: 1,
            source: WorkingSetSource::LazyFaults,
            processes: vec![ProcessWorkingSet {
                pid: 7,
                ranges: vec![(0x10000, 1), (0x12000, 2), (0x100000, 1)],
                written: vec![(0x12000, 1), (0x100000, 1)],
            }],
        };
        assert_eq!(
            merged_ranges(&ws, 7, 0x1000),
            vec![(0x10000, 0x14000), (0x100000, 0x101000)]
        );
        assert!(merged_ranges(&ws, 8, 0x1000).is_empty());
        assert_eq!(
            hot_ranges(&ws, 7, 0x1000),
            vec![(0x12000, 0x13000), (0x100000, 0x101000)]
        );
    }
}
