//! Private memory (anonymous, or written pages of a private file mapping) shared copy-on-write
//! between a parent and its children.
//!
//! After fork, a parent and its child hold the same physical pages for every private page
//! neither has written since. Restoring each process's memory on its own would keep every
//! byte but give each process its own copy: a forked tree (nginx's workers, a zygote's
//! children) would need several times the memory it had. So a VMA that a parent and a child
//! both have (same range, plain private anonymous memory) is "premapped": the parent task maps
//! it and fills it *before* it forks its children, at a slot of a reservation every task
//! inherits; each child then inherits the parent's pages copy-on-write and writes only the
//! pages whose content differs from its parent's (the image says which), dropping the pages it
//! did not have. The restorer moves the slot to its place with mremap, which keeps the
//! sharing, and unmaps the rest of the reservation.
//!
//! Only copied pages are premapped: with `--pages map` or lazy pages every process's memory
//! comes from the page file anyway.

use std::collections::{BTreeMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use crate::images::{PageRun, ProcessImage, Vma, VmaBacking};

use super::tree::TreePlan;
use super::RestoreError;

/// Bytes read from the page file at a time when comparing a child's pages with its parent's.
const COMPARE_CHUNK: u64 = 1 << 20;

/// One premapped VMA of one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Premap {
    pub start: u64,
    pub len: u64,
    /// Where the task fills it before forking its children, inside the reservation.
    pub slot: u64,
    /// The process (index into the image's processes) whose slot this process inherits and
    /// changes only where it differs; None: this process maps and fills the slot itself.
    pub inherit_from: Option<usize>,
    pub noreserve: bool,
    /// A private file mapping: the file (index into the process's files) and the offset.
    pub file: Option<(u32, u64)>,
}

/// The premaps of every process of the tree, and the reservation that holds their slots.
#[derive(Default)]
pub struct CowPlan {
    per_process: Vec<Vec<Premap>>,
    reservation: Option<Reservation>,
}

impl CowPlan {
    /// Finds the VMAs to premap. `enabled` is false when pages are not copied (mapped or lazy).
    pub fn plan(
        tree: &TreePlan,
        processes: &[ProcessImage],
        enabled: bool,
    ) -> Result<CowPlan, RestoreError> {
        let mut per_process = vec![Vec::new(); processes.len()];
        if !enabled || processes.len() < 2 {
            return Ok(CowPlan {
                per_process,
                reservation: None,
            });
        }
        let page = crate::arch::page_size();
        let candidates: Vec<Candidates<'_>> = processes
            .iter()
            .map(|p| {
                p.vmas
                    .iter()
                    .filter(|v| is_premappable(v))
                    .map(|v| ((v.start, v.end), (v, backing(p, v))))
                    .collect()
            })
            .collect();
        // Slots are per address range: a slot a child inherits is at the address its own
        // VMA of that range would use.
        let mut slots: BTreeMap<(u64, u64), u64> = BTreeMap::new();
        let mut next = 0u64;
        let mut marked: Vec<HashSet<(u64, u64)>> = vec![HashSet::new(); processes.len()];
        // Parents before children: walk the task tree from the root.
        let mut stack: Vec<(usize, Option<usize>)> = vec![(0, None)];
        while let Some((t, parent_proc)) = stack.pop() {
            let task = &tree.tasks[t];
            let own = task.process;
            let children: Vec<usize> = task
                .children_before
                .iter()
                .chain(&task.children_after)
                .copied()
                .collect();
            if let Some(p) = own {
                let child_procs: Vec<usize> = children
                    .iter()
                    .filter_map(|&c| tree.tasks[c].process)
                    .collect();
                for (&key, &(vma, what)) in &candidates[p] {
                    // The same memory in both: same range, flags and backing.
                    let same = |q: usize| {
                        candidates[q]
                            .get(&key)
                            .is_some_and(|(w, b)| w.flags == vma.flags && *b == what)
                    };
                    let inherit = parent_proc.filter(|&pp| marked[pp].contains(&key) && same(pp));
                    let child_wants = child_procs.iter().any(|&c| same(c));
                    if inherit.is_none() && !child_wants {
                        continue;
                    }
                    marked[p].insert(key);
                    let slot = *slots.entry(key).or_insert_with(|| {
                        let at = next;
                        // A guard page apart, so two slots never merge into one VMA.
                        next += key.1 - key.0 + page;
                        at
                    });
                    per_process[p].push(Premap {
                        start: key.0,
                        len: key.1 - key.0,
                        slot,
                        inherit_from: inherit,
                        noreserve: vma.flags.noreserve,
                        file: match vma.backing {
                            VmaBacking::File { file, offset } => Some((file, offset)),
                            _ => None,
                        },
                    });
                }
            }
            for c in children {
                stack.push((c, own.or(parent_proc)));
            }
        }
        if next == 0 {
            return Ok(CowPlan {
                per_process,
                reservation: None,
            });
        }
        let reservation = Reservation::make(processes, next, page)?;
        for premaps in &mut per_process {
            for m in premaps.iter_mut() {
                m.slot += reservation.start;
            }
        }
        Ok(CowPlan {
            per_process,
            reservation: Some(reservation),
        })
    }

    /// The premapped VMAs of process `p`.
    pub fn of(&self, p: usize) -> &[Premap] {
        self.per_process.get(p).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The reservation `(start, len)`, or (0, 0) when nothing is premapped.
    pub fn area(&self) -> (u64, u64) {
        self.reservation
            .as_ref()
            .map(|r| (r.start, r.len))
            .unwrap_or((0, 0))
    }

    /// In the task of process `p`, before it forks its children: fills its slots, from the
    /// page file or, for a slot inherited from its parent, by writing only what differs from
    /// the parent's pages.
    pub fn premap_in_task(
        &self,
        p: usize,
        processes: &[ProcessImage],
        files: &super::files::OpenedFiles,
    ) -> Result<(), String> {
        let pages = files.pages.as_fd();
        let image = &processes[p];
        for m in self.of(p) {
            let runs = runs_within(&image.page_runs, m.start, m.start + m.len);
            let file = match m.file {
                None => None,
                Some((index, offset)) => {
                    let fd = files.mapped.get(index as usize).and_then(Option::as_ref);
                    let fd = fd.ok_or_else(|| {
                        format!("the file of the mapping {:#x} is not open", m.start)
                    })?;
                    Some((fd.as_fd(), offset))
                }
            };
            let result = match m.inherit_from {
                None => fill_fresh(m, file, runs, pages),
                Some(pp) => {
                    let parent = runs_within(&processes[pp].page_runs, m.start, m.start + m.len);
                    fill_difference(m, runs, parent, pages)
                }
            };
            result.map_err(|e| {
                format!(
                    "filling the memory {:#x}-{:#x} it shares with its parent: {e}",
                    m.start,
                    m.start + m.len
                )
            })?;
        }
        Ok(())
    }
}

/// A process's premappable VMAs by range, with what is behind each.
type Candidates<'a> = BTreeMap<(u64, u64), (&'a Vma, Backing)>;

/// What is behind a premappable VMA: None for anonymous memory, or the file's device, inode
/// and the mapping's offset (file indices are per process).
type Backing = Option<(u64, u64, u64)>;

fn backing(p: &ProcessImage, v: &Vma) -> Backing {
    match v.backing {
        VmaBacking::File { file, offset } => {
            p.files.get(file as usize).map(|f| (f.dev, f.ino, offset))
        }
        _ => None,
    }
}

/// Plain private memory, anonymous or of a file: what a child inherits and the restorer can
/// move into place.
fn is_premappable(v: &Vma) -> bool {
    let f = &v.flags;
    matches!(v.backing, VmaBacking::Anonymous | VmaBacking::File { .. })
        && !v.shared
        && !(f.growsdown
            || f.locked
            || f.lockonfault
            || f.sealed
            || f.droppable
            || f.wipeonfork
            || f.dontfork)
        && v.guard_ranges.is_empty()
}

/// The runs of `runs` (sorted) that lie in [start, end).
fn runs_within(runs: &[PageRun], start: u64, end: u64) -> &[PageRun] {
    let from = runs.partition_point(|r| r.vaddr < start);
    let to = runs.partition_point(|r| r.vaddr < end);
    &runs[from..to]
}

/// Maps the slot anew (whatever the task inherited there) and reads the runs into it.
fn fill_fresh(
    m: &Premap,
    file: Option<(BorrowedFd<'_>, u64)>,
    runs: &[PageRun],
    pages: BorrowedFd<'_>,
) -> std::io::Result<()> {
    map_slot(m, file)?;
    let page = crate::arch::page_size();
    for r in runs {
        // SAFETY: the run lies inside the VMA (validated image), so inside the slot just
        // mapped read-write; nothing else in this task refers to that memory.
        let dst = unsafe { slot_bytes(m, r.vaddr, r.npages * page) };
        read_exact_at(pages, dst, r.file_offset)?;
    }
    Ok(())
}

/// The slot holds the parent's pages (inherited by fork): writes the pages whose content
/// differs and drops the pages the parent has and this process had not (back to zero, or to
/// the file's content in a file mapping), so every page it did not change stays shared with
/// the parent.
fn fill_difference(
    m: &Premap,
    runs: &[PageRun],
    parent: &[PageRun],
    pages: BorrowedFd<'_>,
) -> std::io::Result<()> {
    let page = crate::arch::page_size();
    let parent_has = |vaddr: u64| {
        let i = parent.partition_point(|r| r.vaddr + r.npages * page <= vaddr);
        parent.get(i).is_some_and(|r| r.vaddr <= vaddr)
    };
    let mut buf = vec![0u8; COMPARE_CHUNK as usize];
    for r in runs {
        let mut done = 0u64;
        let len = r.npages * page;
        while done < len {
            let n = (len - done).min(COMPARE_CHUNK);
            let chunk = &mut buf[..n as usize];
            read_exact_at(pages, chunk, r.file_offset + done)?;
            let vaddr = r.vaddr + done;
            // SAFETY: inside the slot, which this task inherited read-write from its parent.
            let dst = unsafe { slot_bytes(m, vaddr, n) };
            for (i, (want, have)) in chunk
                .chunks(page as usize)
                .zip(dst.chunks_mut(page as usize))
                .enumerate()
            {
                // Reading a page the parent does not have would only map the zero page.
                if !parent_has(vaddr + i as u64 * page) || want != have {
                    have.copy_from_slice(want);
                }
            }
            done += n;
        }
    }
    // Pages the parent has and this process does not: zero here (never touched, or zero), or
    // the file's own page in a file mapping.
    let mut cursor_runs = runs.iter().peekable();
    for pr in parent {
        let (a, b) = (pr.vaddr, pr.vaddr + pr.npages * page);
        let mut cursor = a;
        while let Some(r) = cursor_runs.peek() {
            let (ra, rb) = (r.vaddr, r.vaddr + r.npages * page);
            if rb <= cursor {
                cursor_runs.next();
                continue;
            }
            if ra >= b {
                break;
            }
            if ra > cursor {
                drop_pages(m, cursor, ra)?;
            }
            cursor = rb;
            if rb > b {
                break;
            }
            cursor_runs.next();
        }
        if cursor < b {
            drop_pages(m, cursor, b)?;
        }
    }
    Ok(())
}

/// pread until `buf` is full; end of file is an error (the page file is shorter than the
/// image says).
fn read_exact_at(fd: BorrowedFd<'_>, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        match nix::sys::uio::pread(fd, buf, offset as i64) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Maps the slot of `m` read-write, replacing whatever is there: anonymous memory, or the
/// file `file` at its offset, privately.
fn map_slot(m: &Premap, file: Option<(BorrowedFd<'_>, u64)>) -> std::io::Result<()> {
    let mut flags = libc::MAP_PRIVATE | libc::MAP_FIXED;
    let (fd, offset) = match file {
        Some((fd, offset)) => (fd.as_raw_fd(), offset),
        None => {
            flags |= libc::MAP_ANONYMOUS;
            (-1, 0)
        }
    };
    if m.noreserve {
        flags |= libc::MAP_NORESERVE;
    }
    // SAFETY: MAP_FIXED inside the reservation crest made for the slots (nothing of this
    // task lives there).
    let got = unsafe {
        libc::mmap(
            m.slot as *mut libc::c_void,
            m.len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd,
            offset as libc::off_t,
        )
    };
    if got == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Makes [from, to) of the VMA what it was before anything was written there in this process
/// (MADV_DONTNEED on a private mapping: zero, or the file's content), leaving the parent's
/// pages alone.
fn drop_pages(m: &Premap, from: u64, to: u64) -> std::io::Result<()> {
    let at = m.slot + (from - m.start);
    // SAFETY: a range of the slot, private anonymous memory only this code uses.
    let r = unsafe {
        libc::madvise(
            at as *mut libc::c_void,
            (to - from) as usize,
            libc::MADV_DONTNEED,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The slot bytes of the VMA range [vaddr, vaddr + len).
///
/// # Safety
/// The range must lie inside the VMA of `m`, whose slot is mapped read-write, and no other
/// reference to that memory may be alive.
unsafe fn slot_bytes<'a>(m: &Premap, vaddr: u64, len: u64) -> &'a mut [u8] {
    debug_assert!(vaddr >= m.start && vaddr + len <= m.start + m.len);
    let at = m.slot + (vaddr - m.start);
    // SAFETY: the caller's contract.
    unsafe { std::slice::from_raw_parts_mut(at as *mut u8, len as usize) }
}

/// Address space for the slots, reserved (PROT_NONE, nothing committed) in crest before the
/// fork where no process of the tree has a VMA and crest has nothing.
struct Reservation {
    start: u64,
    len: u64,
}

impl Reservation {
    fn make(processes: &[ProcessImage], len: u64, page: u64) -> Result<Reservation, RestoreError> {
        let own = crate::proc::own_maps()
            .map_err(|e| RestoreError::Internal(format!("listing crest's own mappings: {e}")))?;
        let used: Vec<(u64, u64)> = processes
            .iter()
            .flat_map(|p| p.vmas.iter().map(|v| (v.start, v.end)))
            .chain(own.iter().map(|m| (m.start, m.end)))
            .collect();
        let start = super::bootstrap::find_hole_among(used, len, page).ok_or_else(|| {
            RestoreError::Internal(format!(
                "no room of {len} bytes for the memory shared between processes"
            ))
        })?;
        // SAFETY: MAP_FIXED_NOREPLACE at a hole no mapping of crest uses.
        let got = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                len as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE
                    | libc::MAP_ANONYMOUS
                    | libc::MAP_NORESERVE
                    | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if got as u64 != start {
            return Err(RestoreError::Os {
                what: format!("reserving {len} bytes at {start:#x} for shared private memory"),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Reservation { start, len })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // SAFETY: unmapping the reservation crest made; the tasks have their own copies.
        unsafe { libc::munmap(self.start as *mut libc::c_void, self.len as usize) };
    }
}
