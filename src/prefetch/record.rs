//! Recording a working set after a lazy or mapped restore, and writing it beside the image.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::ranges_from_pages;
use crate::images::{self, Image, ProcessWorkingSet, WorkingSet, WorkingSetSource};

/// Why a working set could not be recorded (the restore itself is done: crest warns).
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("the lazy page server recorded nothing (it failed)")]
    NoLazyRecord,
    #[error("reading /proc/{pid}/pagemap: {source}")]
    Pagemap {
        pid: i32,
        source: crate::proc::ProcError,
    },
    #[error(transparent)]
    Write(#[from] images::ImageError),
}

/// How long the automatic recording of a first mapped restore watches ([`Recording::auto`]):
/// long enough for a program's first response after a restore, short enough that what the
/// restore brings in first is what precedes it.
pub const AUTO_WINDOW: Duration = Duration::from_millis(100);

/// A recording in progress, kept by the restore until its window is over.
#[derive(Debug)]
pub struct Recording {
    image: Image,
    window: Duration,
    how: How,
    /// Made by crest on its own (the first mapped restore of an image), not asked for: it
    /// says what it did only with -v.
    pub automatic: bool,
}

#[derive(Debug)]
enum How {
    /// The page server records the faults ([`crate::lazy::LazyStats::recorded`]).
    Lazy,
    /// The stored ranges mapped from the page file, by pid; the window runs from `released`.
    Mapped {
        ranges: HashMap<i32, Vec<(u64, u64)>>,
        released: Instant,
    },
}

/// Whether a working set may be written into the image directory `dir` (not on a read-only
/// filesystem, not a directory crest may not write).
pub fn dir_writable(dir: &std::path::Path) -> bool {
    nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_ok()
}

/// What was recorded.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: std::path::PathBuf,
    pub window_ms: u64,
    /// (pid, pages, of which written; None when the recording cannot tell).
    pub pages: Vec<(i32, u64, Option<u64>)>,
}

impl Recorded {
    pub fn text(&self) -> String {
        let per: Vec<String> = self
            .pages
            .iter()
            .map(|(pid, n, written)| match written {
                Some(w) => format!("pid {pid} {n} page(s), {w} of them written"),
                None => format!("pid {pid} {n} page(s)"),
            })
            .collect();
        format!(
            "working set of the first {} ms recorded in {}: {}",
            self.window_ms,
            self.path.display(),
            if per.is_empty() {
                "no page".to_string()
            } else {
                per.join(", ")
            }
        )
    }
}

impl Recording {
    /// Recording from the faults of a lazy restore.
    pub fn lazy(image: Image, window: Duration) -> Recording {
        Recording {
            image,
            window,
            how: How::Lazy,
            automatic: false,
        }
    }

    /// Recording the pages present after a mapped restore released at `released`; `mapped`
    /// says, by pid, the start addresses of the VMAs whose pages are mapped from the image.
    pub fn mapped(
        image: Image,
        window: Duration,
        mapped: &HashMap<i32, crate::mapped::MapPlan>,
        released: Instant,
    ) -> Recording {
        let page = image.inventory.page_size;
        let mut ranges = HashMap::new();
        for p in &image.processes {
            let Some(plan) = mapped.get(&p.pid) else {
                continue;
            };
            let mut rs = Vec::new();
            for v in p.vmas.iter().filter(|v| plan.maps(v.start)) {
                let first = p.page_runs.partition_point(|r| r.vaddr < v.start);
                for r in p.page_runs[first..].iter().take_while(|r| r.vaddr < v.end) {
                    rs.push((r.vaddr, r.vaddr + r.npages * page));
                }
            }
            ranges.insert(p.pid, rs);
        }
        Recording {
            image,
            window,
            how: How::Mapped { ranges, released },
            automatic: false,
        }
    }

    /// The same recording, made by crest on its own ([`Recording::automatic`]).
    pub fn auto(mut self) -> Recording {
        self.automatic = true;
        self
    }

    /// Ends the recording and writes the working set. Lazy: `lazy` is what the page server
    /// returned (it held its background pass until the window ended). Mapped: waits until the
    /// window is over, then reads the present pages.
    pub fn finish(self, lazy: Option<&crate::lazy::LazyStats>) -> Result<Recorded, RecordError> {
        let page = self.image.inventory.page_size;
        let runs_of = |pid: i32| {
            self.image
                .processes
                .iter()
                .find(|p| p.pid == pid)
                .map(|p| &p.page_runs[..])
                .unwrap_or(&[])
        };
        // (pid, pages touched, pages of those written: empty when unknown).
        type Touched = Vec<(i32, Vec<u64>, Vec<u64>)>;
        let (source, touched): (WorkingSetSource, Touched) = match &self.how {
            How::Lazy => {
                let l = lazy.ok_or(RecordError::NoLazyRecord)?;
                let touched = l
                    .recorded
                    .iter()
                    .map(|(pid, pages)| (*pid, pages.clone(), Vec::new()))
                    .collect();
                (WorkingSetSource::LazyFaults, touched)
            }
            How::Mapped { ranges, released } => {
                // crest does not die of a ^C meanwhile: the signals stay pending (and are
                // forwarded to the tree once crest waits for it).
                crate::sys::block_termination_signals();
                let end = *released + self.window;
                let now = Instant::now();
                if end > now {
                    std::thread::sleep(end - now);
                }
                let mut out = Vec::new();
                for (&pid, rs) in ranges {
                    let pm = match crate::proc::Proc::open(pid).and_then(|p| p.pagemap()) {
                        Ok(pm) => pm,
                        Err(e) => {
                            let what = format!(
                                "pid {pid} ended before its working set was recorded ({e}); \
                                 it is left out"
                            );
                            if self.automatic {
                                crate::info!(1, "{what}");
                            } else {
                                crate::warn!("{what}");
                            }
                            continue;
                        }
                    };
                    let (mut pages, mut written) = (Vec::new(), Vec::new());
                    for &(s, e) in rs {
                        match pm.touched_pages(s, e, page) {
                            Ok(t) => {
                                pages.extend(t.iter().map(|t| t.addr));
                                written.extend(t.iter().filter(|t| t.written).map(|t| t.addr));
                            }
                            Err(source) => return Err(RecordError::Pagemap { pid, source }),
                        }
                    }
                    out.push((pid, pages, written));
                }
                (WorkingSetSource::MappedPresent, out)
            }
        };
        let mut processes: Vec<ProcessWorkingSet> = touched
            .into_iter()
            .map(|(pid, pages, written)| ProcessWorkingSet {
                pid,
                ranges: ranges_from_pages(pages, runs_of(pid), page),
                written: ranges_from_pages(written, runs_of(pid), page),
            })
            .filter(|p| !p.ranges.is_empty())
            .collect();
        processes.sort_by_key(|p| p.pid);
        let ws = WorkingSet {
            inventory_blake3: self.image.inventory_blake3,
            recorded_unix_ms: super::unix_ms(),
            window_ms: self.window.as_millis() as u64,
            source,
            processes,
        };
        images::write_working_set(&self.image, &ws)?;
        Ok(Recorded {
            path: self.image.dir.join(images::WORKING_SET_FILE),
            window_ms: ws.window_ms,
            pages: ws
                .processes
                .iter()
                .map(|p| {
                    let written = (ws.source == WorkingSetSource::MappedPresent)
                        .then(|| p.written.iter().map(|r| r.1).sum());
                    (p.pid, p.pages(), written)
                })
                .collect(),
        })
    }
}
