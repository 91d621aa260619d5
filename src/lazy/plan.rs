//! Which memory a lazy restore leaves to the page server, and which pages stay eager.
//!
//! Lazy: private anonymous VMAs the program can read (PROT_NONE memory cannot fault in), with
//! none of the flags that make missing-page mode wrong or impossible: locked (mlock must find
//! the pages present), sealed, droppable (the kernel refuses to register it), wipe-on-fork (a
//! child must see zeros there, not the parent's stored pages) or guard regions (installed by
//! crest after the restorer, into memory that must be complete). Shared memory, file mappings,
//! SysV segments, AIO rings, the vDSO and vvar are filled before the process runs, as in copy
//! mode. Inside a lazy VMA, the pages under each thread's stack pointer (and the x86_64 red
//! zone below it) are copied eagerly too: every thread touches them first thing.

use crate::images::{PageRun, ProcessImage, Vma, VmaBacking};

/// Bytes below the stack pointer a thread may use without moving it (the x86_64 red zone).
const RED_ZONE: u64 = 128;

/// A stored stretch of memory: `len` bytes at `vaddr`, at `file_offset` of the page file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub vaddr: u64,
    pub len: u64,
    pub file_offset: u64,
}

/// Whether the restorer may leave `vma`'s stored pages to the page server.
pub fn is_lazy_vma(vma: &Vma) -> bool {
    let f = &vma.flags;
    matches!(vma.backing, VmaBacking::Anonymous)
        && !vma.shared
        && vma.prot & libc::PROT_READ as u32 != 0
        && !(f.locked || f.lockonfault || f.sealed || f.droppable || f.wipeonfork)
        && vma.guard_ranges.is_empty()
}

/// The pages that stay eager inside lazy VMAs, as sorted page-aligned `(start, end)` ranges:
/// those under each thread's stack pointer, and the command line and environment, which the
/// kernel reads for other processes (/proc/PID/cmdline, environ) through a remote access that
/// cannot wait for a userfaultfd (it would read nothing).
pub fn eager_stack_pages(p: &ProcessImage, page: u64) -> Vec<(u64, u64)> {
    let align = |a: u64| a & !(page - 1);
    let mut out: Vec<(u64, u64)> = p
        .threads
        .iter()
        .filter_map(|t| crate::arch::regs::stack_pointer(&t.regs).ok())
        .map(|sp| {
            let start = sp.saturating_sub(RED_ZONE) & !(page - 1);
            let end = (sp & !(page - 1)) + page;
            (start, end)
        })
        .collect();
    for (start, end) in [
        (p.mm.arg_start, p.mm.arg_end),
        (p.mm.env_start, p.mm.env_end),
    ] {
        if end > start {
            out.push((align(start), align(end - 1) + page));
        }
    }
    out.sort_unstable();
    // Merged, so that the pieces split_runs cuts never overlap.
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(out.len());
    for (s, e) in out {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
}

/// Splits the page runs of one lazy VMA into what the restorer copies (the parts inside
/// `eager`, sorted page-aligned ranges) and what the page server serves.
pub fn split_runs(runs: &[PageRun], page: u64, eager: &[(u64, u64)]) -> (Vec<Piece>, Vec<Piece>) {
    let mut copy = Vec::new();
    let mut lazy = Vec::new();
    for r in runs {
        let mut at = r.vaddr;
        let end = r.vaddr + r.npages * page;
        let piece = |from: u64, to: u64| Piece {
            vaddr: from,
            len: to - from,
            file_offset: r.file_offset + (from - r.vaddr),
        };
        for &(es, ee) in eager {
            if ee <= at || es >= end {
                continue;
            }
            let (es, ee) = (es.max(at), ee.min(end));
            if es > at {
                lazy.push(piece(at, es));
            }
            copy.push(piece(es, ee));
            at = ee;
        }
        if at < end {
            lazy.push(piece(at, end));
        }
    }
    (copy, lazy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(vaddr: u64, npages: u64, file_offset: u64) -> PageRun {
        PageRun {
            vaddr,
            npages,
            file_offset,
        }
    }

    #[test]
    fn stack_pages_are_cut_out_of_the_lazy_runs() {
        let page = 0x1000;
        let runs = [run(0x10000, 8, 0), run(0x20000, 2, 0x8000)];
        let (copy, lazy) = split_runs(&runs, page, &[(0x12000, 0x14000), (0x21000, 0x22000)]);
        assert_eq!(
            copy,
            vec![
                Piece {
                    vaddr: 0x12000,
                    len: 0x2000,
                    file_offset: 0x2000
                },
                Piece {
                    vaddr: 0x21000,
                    len: 0x1000,
                    file_offset: 0x9000
                },
            ]
        );
        assert_eq!(
            lazy,
            vec![
                Piece {
                    vaddr: 0x10000,
                    len: 0x2000,
                    file_offset: 0
                },
                Piece {
                    vaddr: 0x14000,
                    len: 0x4000,
                    file_offset: 0x4000
                },
                Piece {
                    vaddr: 0x20000,
                    len: 0x1000,
                    file_offset: 0x8000
                },
            ]
        );
    }

    #[test]
    fn without_stack_pages_everything_is_lazy() {
        let (copy, lazy) = split_runs(&[run(0x10000, 3, 0x3000)], 0x1000, &[]);
        assert!(copy.is_empty());
        assert_eq!(
            lazy,
            vec![Piece {
                vaddr: 0x10000,
                len: 0x3000,
                file_offset: 0x3000
            }]
        );
    }
}
