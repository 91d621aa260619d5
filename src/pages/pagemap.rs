//! Which pages of a memory area need storing, decided from their pagemap words alone.
//!
//! Pagemap bits (Documentation/admin-guide/mm/pagemap.rst): 63 present, 62 swapped,
//! 61 file page or shared anonymous, 58 guard region (6.15+), 56 exclusively mapped,
//! 55 soft-dirty, 0-54 PFN or swap type/offset.

use super::PageCounts;

/// Bit 63: the page is in RAM.
pub const PM_PRESENT: u64 = 1 << 63;
/// Bit 62: the page is in swap.
pub const PM_SWAP: u64 = 1 << 62;
/// Bit 61: the page is a page-cache page (or shared anonymous).
pub const PM_FILE: u64 = 1 << 61;

/// Bit 58: the page is a guard region (MADV_GUARD_INSTALL). The kernel keeps guard markers
/// in swap-like entries, so such a page may show the swap bit too; it has no content (any
/// access faults) and the restore installs the guard again.
pub const PM_GUARD_REGION: u64 = 1 << 58;

/// Bit 56: the page is mapped by this process alone. A private page without it is shared
/// copy-on-write with another process (a parent or child); see [`split_shared`].
pub const PM_MMAP_EXCLUSIVE: u64 = 1 << 56;

/// What to do with one page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageClass {
    /// Neither present nor swapped: it reads as zero (or as the file) after restore anyway.
    Absent,
    /// A page-cache page mapped privately and never written (copy-on-write has not happened):
    /// mapping the same file at restore gives the same content.
    FileBacked,
    /// Present or swapped content that must be read (and stored unless it is all zero).
    Read,
}

/// Classifies one pagemap word of a private mapping; `file_mapping` is true when the area
/// maps a file (a written page of such an area is an anonymous COW copy, without the FILE bit).
pub fn classify(entry: u64, file_mapping: bool) -> PageClass {
    if entry & (PM_PRESENT | PM_SWAP) == 0 || entry & PM_GUARD_REGION != 0 {
        PageClass::Absent
    } else if file_mapping && entry & PM_FILE != 0 {
        PageClass::FileBacked
    } else {
        PageClass::Read
    }
}

/// Appends to `runs` the (address, page count) runs of pages to read among `entries`, the
/// pagemap words of the consecutive pages starting at `first_vaddr`, and counts the rest.
/// A run continues the last one in `runs` when it starts right where that one ends, so
/// callers can feed one area in several batches.
pub fn select_runs(
    entries: &[u64],
    first_vaddr: u64,
    page_size: u64,
    file_mapping: bool,
    counts: &mut PageCounts,
    runs: &mut Vec<(u64, u64)>,
) {
    counts.scanned += entries.len() as u64;
    for (i, &entry) in entries.iter().enumerate() {
        match classify(entry, file_mapping) {
            PageClass::Absent => counts.absent += 1,
            PageClass::FileBacked => counts.file_backed += 1,
            PageClass::Read => {
                let vaddr = first_vaddr + i as u64 * page_size;
                match runs.last_mut() {
                    Some((start, n)) if *start + *n * page_size == vaddr => *n += 1,
                    _ => runs.push((vaddr, 1)),
                }
            }
        }
    }
}

/// Splits `runs` (ascending, as [`select_runs`] made them from `entries`, the pagemap words of
/// the pages from `first_vaddr`) into consecutive groups, each flagged `true` when its pages
/// are shared copy-on-write with another process (present without [`PM_MMAP_EXCLUSIVE`], or
/// swapped). Such pages must not be read with process_vm_readv: it pins the pages it reads,
/// and pinning a shared anonymous page makes the kernel give the process a copy of its own
/// ("unshare"), so a dump would double the memory of a forked tree (and a dump with -R would
/// leave it so). /proc/PID/mem reads without pinning.
pub fn split_shared(
    runs: &[(u64, u64)],
    entries: &[u64],
    first_vaddr: u64,
    page_size: u64,
) -> Vec<(Vec<(u64, u64)>, bool)> {
    let mut out: Vec<(Vec<(u64, u64)>, bool)> = Vec::new();
    for &(start, npages) in runs {
        for k in 0..npages {
            let vaddr = start + k * page_size;
            // Runs from an earlier batch of the same area (see select_runs) lie before
            // `first_vaddr`: their words are not in `entries`; they were not shared then.
            let word = vaddr
                .checked_sub(first_vaddr)
                .and_then(|d| entries.get((d / page_size) as usize));
            let shared = word.is_some_and(|&w| {
                w & PM_SWAP != 0 || (w & PM_PRESENT != 0 && w & PM_MMAP_EXCLUSIVE == 0)
            });
            let group = match out.last_mut() {
                Some((g, s)) if *s == shared => g,
                _ => {
                    out.push((Vec::new(), shared));
                    &mut out.last_mut().expect("just pushed").0
                }
            };
            match group.last_mut() {
                Some((s, n)) if *s + *n * page_size == vaddr => *n += 1,
                _ => group.push((vaddr, 1)),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PS: u64 = 4096;
    const ABSENT: u64 = 0;
    const ANON: u64 = PM_PRESENT | 0x1234;
    const SWAPPED: u64 = PM_SWAP | 0x55;
    const FILE: u64 = PM_PRESENT | PM_FILE | 0x99;

    #[test]
    fn pages_shared_with_another_process_are_grouped_apart() {
        const OWN: u64 = PM_PRESENT | PM_MMAP_EXCLUSIVE | 0x10;
        const COW: u64 = PM_PRESENT | 0x20;
        let entries = [OWN, OWN, COW, COW, ABSENT, OWN, SWAPPED, OWN];
        let mut counts = PageCounts::default();
        let mut runs = Vec::new();
        select_runs(&entries, 0x10000, PS, false, &mut counts, &mut runs);
        let groups = split_shared(&runs, &entries, 0x10000, PS);
        assert_eq!(
            groups,
            vec![
                (vec![(0x10000, 2)], false),
                (vec![(0x12000, 2)], true),
                (vec![(0x15000, 1)], false),
                (vec![(0x16000, 1)], true),
                (vec![(0x17000, 1)], false),
            ]
        );
    }

    #[test]
    fn runs_join_consecutive_pages_and_skip_absent_ones() {
        let entries = [ANON, ANON, ABSENT, SWAPPED, ANON, ABSENT, ABSENT, ANON];
        let mut counts = PageCounts::default();
        let mut runs = Vec::new();
        select_runs(&entries, 0x10000, PS, false, &mut counts, &mut runs);
        assert_eq!(runs, vec![(0x10000, 2), (0x13000, 2), (0x17000, 1)]);
        assert_eq!(counts.scanned, 8);
        assert_eq!(counts.absent, 3);
        assert_eq!(counts.file_backed, 0);
    }

    #[test]
    fn guard_pages_are_absent_even_with_the_swap_bit() {
        assert_eq!(
            classify(PM_SWAP | PM_GUARD_REGION, false),
            PageClass::Absent
        );
        assert_eq!(classify(PM_GUARD_REGION, true), PageClass::Absent);
        assert_eq!(classify(SWAPPED, false), PageClass::Read);
    }

    #[test]
    fn file_pages_are_skipped_only_in_file_mappings() {
        // In a private file mapping, FILE pages are unmodified page cache; the COW copy of a
        // written page is anonymous and must be stored.
        let entries = [FILE, ANON, FILE, SWAPPED];
        let mut counts = PageCounts::default();
        let mut runs = Vec::new();
        select_runs(&entries, 0x40000, PS, true, &mut counts, &mut runs);
        assert_eq!(runs, vec![(0x41000, 1), (0x43000, 1)]);
        assert_eq!(counts.file_backed, 2);
        assert_eq!(counts.absent, 0);

        // In an anonymous area the same bit does not mean "unchanged file data".
        let mut counts = PageCounts::default();
        let mut runs = Vec::new();
        select_runs(&entries, 0x40000, PS, false, &mut counts, &mut runs);
        assert_eq!(runs, vec![(0x40000, 4)]);
        assert_eq!(counts.file_backed, 0);
    }

    #[test]
    fn batches_of_one_area_continue_the_previous_run() {
        let mut counts = PageCounts::default();
        let mut runs = Vec::new();
        select_runs(
            &[ABSENT, ANON, ANON],
            0x0,
            PS,
            false,
            &mut counts,
            &mut runs,
        );
        select_runs(
            &[ANON, ABSENT, ANON],
            0x3000,
            PS,
            false,
            &mut counts,
            &mut runs,
        );
        assert_eq!(runs, vec![(0x1000, 3), (0x5000, 1)]);
        assert_eq!(counts.scanned, 6);
        assert_eq!(counts.absent, 2);
    }

    #[test]
    fn an_all_absent_batch_adds_nothing() {
        let mut counts = PageCounts::default();
        let mut runs = Vec::new();
        select_runs(&[ABSENT; 64], 0x0, PS, true, &mut counts, &mut runs);
        assert!(runs.is_empty());
        assert_eq!((counts.scanned, counts.absent), (64, 64));
    }
}
