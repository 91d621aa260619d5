//! Mapped pages (`crest restore --pages map`): private memory comes back as MAP_PRIVATE
//! mappings of the page file at each run's offset, so nothing is read before the process runs;
//! a page is read from the page cache (or the disk) when first touched and copied when first
//! written. In a private file mapping only the written pages are stored (the rest is the
//! file's): the VMA is mapped from its file, and the stored runs from the page file over it —
//! copying them would cost two copies a page (the file's page, then the stored one over it):
//! a JVM's relocated CDS archive alone took 8 ms of a 17 ms restore that way.
//!
//! Which VMAs: private anonymous or file ones with none of the flags a file mapping cannot carry or
//! would change: not the stack (`growsdown`: a file piece at its bottom would stop it
//! growing), not locked (mlock would read everything at once), not sealed, droppable or
//! wipe-on-fork (the kernel refuses MADV_WIPEONFORK on a file mapping), not named (the kernel
//! names only anonymous VMAs), no guard regions. Everything else is restored as in copy mode.
//!
//! Every stored run (contiguous runs merged) becomes its own file mapping and splits the VMA,
//! so a VMA with `k` runs and `g` gaps turns into `k + g` VMAs. The process must stay under
//! `vm.max_map_count`: the VMAs that bring the most mapped bytes per added VMA are mapped
//! first, while the process's VMA count stays within [`BUDGET_NUM`]/[`BUDGET_DEN`] of the
//! limit (the rest of the limit is left to the program); the others are copied.
//!
//! What differs from anonymous memory (the reason this mode is opt-in; `crest restore --help`
//! says so):
//! - MADV_DONTNEED (or MADV_FREE reclaimed) on a mapped range brings back the image's content on
//!   the next touch instead of zeros: a program that relies on zero-fill after DONTNEED (an
//!   allocator purging free memory and handing it out as zeroed) would see stale data;
//! - mremap growing a mapped piece in place extends it over the page file (later runs' data, or
//!   SIGBUS past the file's end) instead of zeros, and mremap of a range that spans mapped and
//!   anonymous pieces fails (EFAULT);
//! - /proc/PID/maps shows the page file for those ranges (in a private file mapping: for the
//!   pages the program had written), and the image must not change while
//!   the process runs (page files are read-only and a dump never writes into an existing page
//!   file: it makes a new directory and renames it in place, so the old inode stays alive for
//!   as long as it is mapped).
//!
//! A dump of such a process treats a private mapping of a crest page file as private anonymous
//! memory and stores every page of it ([`is_crest_page_file`]), so the new image does not
//! depend on the old one (chains).

use std::collections::BTreeSet;
use std::path::Path;

use crate::images::{PageRun, ProcessImage, Vma, VmaBacking};

/// The process's VMA count after a mapped restore stays within this fraction of
/// `vm.max_map_count`.
pub const BUDGET_NUM: u64 = 3;
pub const BUDGET_DEN: u64 = 4;

/// A stored stretch of memory: `len` bytes at `vaddr`, at `file_offset` of the page file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub vaddr: u64,
    pub len: u64,
    pub file_offset: u64,
}

/// What a mapped restore of one process maps and copies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapStats {
    /// VMAs whose stored pages are mapped, their stored bytes, and the VMAs the mapping adds.
    pub vmas_mapped: u64,
    pub bytes_mapped: u64,
    pub vmas_added: u64,
    /// Mappable VMAs copied because mapping them would pass the VMA budget, and their bytes.
    pub vmas_over_budget: u64,
    pub bytes_over_budget: u64,
    /// Mapped bytes faulted in written by the restorer, the working set saying they are
    /// written first.
    pub bytes_hot: u64,
}

/// Which VMAs of one process are mapped (by start address), and which of their stored pages
/// are copied all the same.
#[derive(Debug, Clone, Default)]
pub struct MapPlan {
    mapped: BTreeSet<u64>,
    /// Byte ranges `(start, end)`, sorted and apart: the pages a recorded working set says the
    /// program wrote first ([`crate::prefetch::hot_ranges`]). Left to the program, each would
    /// cost a copy-on-write fault as soon as it runs (a page mapped by a read fault, or by the
    /// kernel's fault-around, is then written), and that fault a TLB shootdown sent to every
    /// other CPU running the process: an inter-processor interrupt, a VM exit in a virtual
    /// machine. Measured on a JVM (Jetty) on 2 vCPUs: ~870 such faults in the 30 ms after the
    /// release, most of the CPU time until its first response. The restorer faults them in
    /// written instead (MADV_POPULATE_WRITE) while the process has one thread.
    hot: Vec<(u64, u64)>,
    pub stats: MapStats,
}

impl MapPlan {
    /// Whether the VMA starting at `start` gets its pages mapped.
    pub fn maps(&self, start: u64) -> bool {
        self.mapped.contains(&start)
    }

    /// The parts of the pieces of a mapped VMA that are hot, to fault in written: see
    /// [`hot_parts`].
    pub fn hot_parts(&self, pieces: &[Piece]) -> Vec<Piece> {
        hot_parts(pieces, &self.hot)
    }
}

/// The parts of `pieces` (sorted) inside the byte ranges `hot` (sorted, apart), with their
/// file offsets.
pub fn hot_parts(pieces: &[Piece], hot: &[(u64, u64)]) -> Vec<Piece> {
    let mut out = Vec::new();
    for p in pieces {
        let end = p.vaddr + p.len;
        let first = hot.partition_point(|h| h.1 <= p.vaddr);
        for &(hs, he) in hot[first..].iter().take_while(|h| h.0 < end) {
            let (from, to) = (hs.max(p.vaddr), he.min(end));
            out.push(Piece {
                vaddr: from,
                len: to - from,
                file_offset: p.file_offset + (from - p.vaddr),
            });
        }
    }
    out
}

/// Whether `vma`'s stored pages may be mapped from the page file (see the module docs).
pub fn is_mappable_vma(vma: &Vma) -> bool {
    let f = &vma.flags;
    matches!(vma.backing, VmaBacking::Anonymous | VmaBacking::File { .. })
        && !vma.shared
        && !(f.growsdown || f.locked || f.lockonfault || f.sealed || f.droppable || f.wipeonfork)
        && vma.anon_name().is_none()
        && vma.guard_ranges.is_empty()
}

/// The runs of one VMA as mappings: runs that follow each other both in memory and in the page
/// file are one mapping.
pub fn pieces(runs: &[PageRun], page: u64) -> Vec<Piece> {
    let mut out: Vec<Piece> = Vec::with_capacity(runs.len());
    for r in runs {
        let len = r.npages * page;
        match out.last_mut() {
            Some(p) if p.vaddr + p.len == r.vaddr && p.file_offset + p.len == r.file_offset => {
                p.len += len
            }
            _ => out.push(Piece {
                vaddr: r.vaddr,
                len,
                file_offset: r.file_offset,
            }),
        }
    }
    out
}

/// How many VMAs mapping `pieces` (sorted, inside `[start, end)`) over one anonymous VMA adds:
/// the VMA becomes one VMA per piece and per gap.
pub fn added_vmas(start: u64, end: u64, pieces: &[Piece]) -> u64 {
    if pieces.is_empty() {
        return 0;
    }
    let mut parts = 0u64;
    let mut at = start;
    for p in pieces {
        if p.vaddr > at {
            parts += 1; // the gap before it
        }
        parts += 1;
        at = p.vaddr + p.len;
    }
    if at < end {
        parts += 1;
    }
    parts - 1
}

/// Decides which VMAs of `p` are mapped, given the kernel's `max_map_count`; the stored pages
/// within the byte ranges `hot` are copied (see [`MapPlan`]).
pub fn plan(p: &ProcessImage, page: u64, max_map_count: u64, hot: Vec<(u64, u64)>) -> MapPlan {
    plan_vmas(&p.vmas, &p.page_runs, page, max_map_count, hot)
}

/// [`plan`] for the VMAs `vmas` (sorted) and their page runs `page_runs` (sorted).
pub fn plan_vmas(
    vmas: &[Vma],
    page_runs: &[PageRun],
    page: u64,
    max_map_count: u64,
    hot: Vec<(u64, u64)>,
) -> MapPlan {
    struct Candidate {
        start: u64,
        bytes: u64,
        hot: u64,
        added: u64,
    }
    let mut candidates = Vec::new();
    let mut run = 0usize;
    for vma in vmas {
        let first = run;
        while run < page_runs.len() && page_runs[run].vaddr < vma.end {
            run += 1;
        }
        let runs = &page_runs[first..run];
        if runs.is_empty() || !is_mappable_vma(vma) {
            continue;
        }
        let pieces = pieces(runs, page);
        candidates.push(Candidate {
            start: vma.start,
            bytes: pieces.iter().map(|p| p.len).sum(),
            hot: if vma.prot & libc::PROT_WRITE as u32 != 0 {
                hot_parts(&pieces, &hot).iter().map(|p| p.len).sum()
            } else {
                0
            },
            added: added_vmas(vma.start, vma.end, &pieces),
        });
    }
    // Most bytes per added VMA first (VMAs stored whole add none).
    candidates.sort_by(|a, b| {
        (b.bytes as u128 * (a.added as u128 + 1)).cmp(&(a.bytes as u128 * (b.added as u128 + 1)))
    });
    let budget = max_map_count / BUDGET_DEN * BUDGET_NUM;
    let mut count = vmas.len() as u64;
    let mut out = MapPlan {
        hot,
        ..MapPlan::default()
    };
    for c in candidates {
        if count + c.added <= budget {
            count += c.added;
            out.mapped.insert(c.start);
            out.stats.vmas_mapped += 1;
            out.stats.bytes_mapped += c.bytes;
            out.stats.bytes_hot += c.hot;
            out.stats.vmas_added += c.added;
        } else {
            out.stats.vmas_over_budget += 1;
            out.stats.bytes_over_budget += c.bytes;
        }
    }
    out
}

/// Plans a mapped restore of `processes` from the image in `dir`, by pid: refused (before any
/// fork) when the image's filesystem is mounted noexec. Says with `-v` what is mapped, and
/// warns when the VMA budget leaves mappable memory to be copied.
pub fn plan_image(
    dir: &Path,
    processes: &[ProcessImage],
    working_set: Option<&crate::images::WorkingSet>,
) -> Result<std::collections::HashMap<i32, MapPlan>, String> {
    check_image_dir(dir)?;
    let max = crate::proc::max_map_count().map_err(|e| e.to_string())?;
    let page = crate::arch::page_size();
    let mut out = std::collections::HashMap::with_capacity(processes.len());
    for p in processes {
        let hot = working_set
            .map(|ws| crate::prefetch::hot_ranges(ws, p.pid, page))
            .unwrap_or_default();
        let plan = plan(p, page, max, hot);
        let s = &plan.stats;
        crate::info!(
            1,
            "pid {}: {} KiB of pages mapped from {} in {} VMA(s), adding {} VMA(s); {} KiB \
             of them the working set says are written first faulted in written",
            p.pid,
            s.bytes_mapped / 1024,
            p.pages_file,
            s.vmas_mapped,
            s.vmas_added,
            s.bytes_hot / 1024
        );
        if s.vmas_over_budget > 0 {
            crate::warn!(
                "pid {}: {} KiB of pages in {} VMA(s) are copied, not mapped: mapping them would \
                 take the process past {}/{} of vm.max_map_count ({max})",
                p.pid,
                s.bytes_over_budget / 1024,
                s.vmas_over_budget,
                BUDGET_NUM,
                BUDGET_DEN
            );
        }
        out.insert(p.pid, plan);
    }
    Ok(out)
}

/// Refuses a mapped restore from `dir` when its filesystem is mounted noexec: a private file
/// mapping there can never be made executable, so a program that runs code from its anonymous
/// memory (a JIT) would fail.
pub fn check_image_dir(dir: &Path) -> Result<(), String> {
    let st = nix::sys::statvfs::statvfs(dir)
        .map_err(|e| format!("cannot statvfs the image directory {}: {e}", dir.display()))?;
    if st.flags().contains(nix::sys::statvfs::FsFlags::ST_NOEXEC) {
        return Err(format!(
            "mapped pages from {}, which is on a filesystem mounted noexec: the memory could \
             never be made executable again (a JIT would fail); restore with --pages copy or \
             --pages lazy, or move the image",
            dir.display()
        ));
    }
    Ok(())
}

/// Whether `name` is a page file's name, `pages-<pid>.img`.
pub fn is_page_file_name(name: &str) -> bool {
    name.strip_prefix("pages-")
        .and_then(|rest| rest.strip_suffix(".img"))
        .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether a private file mapping of `path` (as maps names it, " (deleted)" taken off; `deleted`
/// when it was) is a crest page file mapped by a `--pages map` restore: its name is
/// `pages-<pid>.img` and, if the file still exists with an `inventory.img` beside it, that
/// inventory starts with crest's image magic. A deleted page file (its image removed or
/// replaced by a later dump) is recognised by its name alone.
///
/// Telling wrong is harmless for the content: such a mapping is dumped as private anonymous
/// memory with every page stored, which is exactly what the process sees at that moment; only
/// its tie to the file is lost (maps shows it anonymous after a restore, and MADV_DONTNEED gives
/// zeros there instead of the file's content).
pub fn is_crest_page_file(path: &Path, deleted: bool) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    if !is_page_file_name(name) {
        return false;
    }
    if deleted {
        return true;
    }
    let Some(dir) = path.parent() else {
        return false;
    };
    let inventory = dir.join(crate::images::INVENTORY_FILE);
    match std::fs::File::open(&inventory) {
        Ok(mut f) => {
            use std::io::Read;
            let mut magic = [0u8; 8];
            f.read_exact(&mut magic).is_ok() && &magic == b"CRESTIMG"
        }
        // The image directory was replaced (a later dump into it) or its inventory removed:
        // the name decides.
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = 4096;

    fn run(vaddr: u64, npages: u64, file_offset: u64) -> PageRun {
        PageRun {
            vaddr,
            npages,
            file_offset,
        }
    }

    #[test]
    fn contiguous_runs_become_one_piece() {
        let runs = [
            run(0x1000, 2, 0),
            run(0x3000, 1, 2 * P),
            run(0x5000, 1, 3 * P),
            run(0x6000, 1, 5 * P),
        ];
        let got = pieces(&runs, P);
        assert_eq!(
            got,
            vec![
                Piece {
                    vaddr: 0x1000,
                    len: 3 * P,
                    file_offset: 0
                },
                Piece {
                    vaddr: 0x5000,
                    len: P,
                    file_offset: 3 * P
                },
                Piece {
                    vaddr: 0x6000,
                    len: P,
                    file_offset: 5 * P
                },
            ]
        );
    }

    #[test]
    fn added_vmas_counts_pieces_and_gaps() {
        let piece = |vaddr, len| Piece {
            vaddr,
            len,
            file_offset: 0,
        };
        // Stored whole: no split.
        assert_eq!(added_vmas(0x1000, 0x3000, &[piece(0x1000, 0x2000)]), 0);
        // A piece in the middle: gap, piece, gap.
        assert_eq!(added_vmas(0x1000, 0x5000, &[piece(0x2000, 0x1000)]), 2);
        // At the start: piece, gap.
        assert_eq!(added_vmas(0x1000, 0x5000, &[piece(0x1000, 0x1000)]), 1);
        // Two pieces touching each other, then a gap.
        assert_eq!(
            added_vmas(
                0x1000,
                0x5000,
                &[piece(0x1000, 0x1000), piece(0x2000, 0x1000)]
            ),
            2
        );
        assert_eq!(added_vmas(0x1000, 0x5000, &[]), 0);
    }

    fn vma(start: u64, end: u64) -> Vma {
        Vma {
            start,
            end,
            prot: 3,
            shared: false,
            backing: VmaBacking::Anonymous,
            flags: crate::images::VmaFlags::default(),
            name: String::new(),
            guard_ranges: Vec::new(),
        }
    }

    #[test]
    fn the_vma_budget_maps_the_cheapest_vmas_and_copies_the_rest() {
        // A: stored whole (adds no VMA). B: three pieces, each followed by a gap (adds 5).
        // C: the stack (never mapped). D: no stored page.
        let mut stack = vma(0x100000, 0x104000);
        stack.flags.growsdown = true;
        let vmas = [
            vma(0x10000, 0x14000),
            vma(0x20000, 0x27000),
            stack,
            vma(0x200000, 0x201000),
        ];
        let runs = [
            run(0x10000, 4, 0),
            run(0x20000, 1, 4 * P),
            run(0x22000, 1, 5 * P),
            run(0x24000, 1, 6 * P),
            run(0x100000, 4, 7 * P),
        ];
        // Plenty of room: A and B are mapped.
        let all = plan_vmas(&vmas, &runs, P, 1000, Vec::new());
        assert!(all.maps(0x10000) && all.maps(0x20000));
        assert!(!all.maps(0x100000) && !all.maps(0x200000));
        assert_eq!(all.stats.vmas_added, 5);
        assert_eq!(all.stats.bytes_mapped, 7 * P);
        assert_eq!(all.stats.vmas_over_budget, 0);
        // Budget 3/4 of 8 = 6: 4 VMAs + A's 0 fit, B's 5 more do not.
        let tight = plan_vmas(&vmas, &runs, P, 8, Vec::new());
        assert!(tight.maps(0x10000) && !tight.maps(0x20000));
        assert_eq!(tight.stats.vmas_over_budget, 1);
        assert_eq!(tight.stats.bytes_over_budget, 3 * P);
    }

    #[test]
    fn hot_parts_are_the_pieces_within_the_hot_ranges() {
        let pieces = [
            Piece {
                vaddr: 0x10000,
                len: 8 * P,
                file_offset: 0,
            },
            Piece {
                vaddr: 0x40000,
                len: 2 * P,
                file_offset: 8 * P,
            },
        ];
        // One hot range inside the first piece, one over the end of the first and past it,
        // one covering the second whole.
        let hot = [(0x12000, 0x13000), (0x17000, 0x20000), (0x3f000, 0x50000)];
        let at = |v: u64, len: u64, off: u64| Piece {
            vaddr: v,
            len: len * P,
            file_offset: off * P,
        };
        assert_eq!(
            hot_parts(&pieces, &hot),
            vec![at(0x12000, 1, 2), at(0x17000, 1, 7), at(0x40000, 2, 8)]
        );
        // Planned: the mapping is the same (no VMA added for them); a VMA without write
        // permission has no hot part (its pages are never written).
        let mut ro = vma(0x40000, 0x42000);
        ro.prot = 1;
        let vmas = [vma(0x10000, 0x18000), ro];
        let runs = [run(0x10000, 8, 0), run(0x40000, 2, 8 * P)];
        let plan = plan_vmas(&vmas, &runs, P, 1000, hot.to_vec());
        assert!(plan.maps(0x10000) && plan.maps(0x40000));
        assert_eq!(plan.stats.bytes_mapped, 10 * P);
        assert_eq!(plan.stats.bytes_hot, 2 * P);
        assert_eq!(plan.stats.vmas_added, 0);
    }

    #[test]
    fn page_file_names() {
        assert!(is_page_file_name("pages-1.img"));
        assert!(is_page_file_name("pages-4194304.img"));
        assert!(!is_page_file_name("pages-.img"));
        assert!(!is_page_file_name("pages-1a.img"));
        assert!(!is_page_file_name("process-1.img"));
        assert!(!is_page_file_name("pages-1.img.bak"));
    }

    #[test]
    fn a_page_file_beside_a_foreign_inventory_is_not_crests() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pages-7.img"), [0u8; 4096]).unwrap();
        assert!(is_crest_page_file(&dir.path().join("pages-7.img"), false));
        std::fs::write(dir.path().join("inventory.img"), b"something else").unwrap();
        assert!(!is_crest_page_file(&dir.path().join("pages-7.img"), false));
        std::fs::write(dir.path().join("inventory.img"), b"CRESTIMG\x0b\0\0\0").unwrap();
        assert!(is_crest_page_file(&dir.path().join("pages-7.img"), false));
        assert!(is_crest_page_file(&dir.path().join("pages-8.img"), true));
        assert!(!is_crest_page_file(&dir.path().join("data.img"), true));
    }
}
