//! The bootstrap region: where the restorer blob, its arguments, the sigframe and the restorer's
//! stack live while the task's memory is replaced.
//!
//! It must be free both in the image's address space (it survives the morph) and in crest's own
//! (the child is a copy of crest until the restorer runs). crest maps it MAP_SHARED from a memfd
//! *before* the fork, at one address, so the child inherits it in place and crest keeps seeing
//! what the restorer writes there (its progress report). After the restored task has returned
//! into its own registers, crest unmaps the region in the task (see `finish.rs`).
//!
//! Layout, every part page-aligned:
//! `[blob][RestorerArgs + arrays][sigframe][stack][park area for the vDSO/vvar]`

use std::mem::size_of;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::images::{ProcessImage, Vma, VmaBacking};
use crate::proc::MapRange;

use super::blob::abi::{
    self, ITimerSpec, ITimerVal, PageRunArg, PosixLockArg, PosixTimerArm, Range, RestorerArgs,
    RseqArg, SpecialMove, ThreadArg, VmaArg,
};
use super::files::OpenedFiles;
use super::RestoreError;

/// Stack for the restorer's own code (it uses little; the blob has no recursion).
const RESTORER_STACK: u64 = 64 * 1024;
/// Stack of each other thread while it sets itself up (a few calls deep).
const THREAD_STACK: u64 = 16 * 1024;
/// Size of one siginfo.
const SIGINFO_SIZE: u64 = 128;
/// Room for the list of crest's own mappings the child fills in before the jump.
pub const MAX_UNMAP_RANGES: u64 = 4096;
/// Lowest address the region may take: well above mmap_min_addr and the null page.
const LOWEST_ADDRESS: u64 = 1 << 32;
/// Highest user address on x86_64 with 4-level paging and on aarch64 with 48-bit VAs.
const HIGHEST_ADDRESS: u64 = 0x7fff_ffff_f000;

/// Where each part of the region lies, as offsets from its start.
#[derive(Debug, Clone, Copy)]
struct Layout {
    args: u64,
    unmap: u64,
    vmas: u64,
    runs: u64,
    close_fds: u64,
    timers: u64,
    /// `PosixLockArg` array.
    posix_locks: u64,
    /// `ThreadArg` array (threads other than the leader).
    thread_args: u64,
    /// Their pending siginfos, 128 bytes each, thread after thread.
    pending: u64,
    /// The `u32` group list of the credential switch.
    groups: u64,
    /// The VMA names, each NUL-terminated, one after the other.
    names: u64,
    sigframe: u64,
    stack_top: u64,
    /// Per-thread restorer stacks, `thread_block` bytes each (the threads go back into their
    /// registers through ptrace, so they need no signal frame).
    threads: u64,
    thread_block: u64,
    park: u64,
    total: u64,
}

/// How many entries each array of the args area holds.
#[derive(Debug, Clone, Copy)]
struct Counts {
    vmas: u64,
    runs: u64,
    close_fds: u64,
    timers: u64,
    posix_locks: u64,
    /// Threads other than the leader, and all their pending signals.
    threads: u64,
    pending: u64,
    /// Supplementary groups of the credential switch.
    groups: u64,
    /// Bytes of the VMA names, NULs included.
    name_bytes: u64,
}

impl Layout {
    fn new(code_size: u64, counts: Counts, frame_size: u64, park_size: u64, page: u64) -> Layout {
        let up = |v: u64| v.div_ceil(page) * page;
        let args = up(code_size);
        let unmap = args + (size_of::<RestorerArgs>() as u64).next_multiple_of(64);
        let vmas = unmap + MAX_UNMAP_RANGES * size_of::<Range>() as u64;
        let runs = vmas + counts.vmas * size_of::<VmaArg>() as u64;
        let close_fds = runs + counts.runs * size_of::<PageRunArg>() as u64;
        let timers = (close_fds + counts.close_fds * 4).next_multiple_of(8);
        let posix_locks = timers + counts.timers * size_of::<PosixTimerArm>() as u64;
        let thread_args = posix_locks + counts.posix_locks * size_of::<PosixLockArg>() as u64;
        let pending = thread_args + counts.threads * size_of::<ThreadArg>() as u64;
        let groups = (pending + counts.pending * SIGINFO_SIZE).next_multiple_of(8);
        let names = groups + counts.groups * 4;
        let sigframe = up(names + counts.name_bytes);
        let stack_bottom = up(sigframe + frame_size);
        let stack_top = stack_bottom + RESTORER_STACK;
        let threads = up(stack_top);
        let thread_block = THREAD_STACK;
        let park = threads + counts.threads * thread_block;
        let total = up(park + park_size);
        Layout {
            args,
            unmap,
            vmas,
            runs,
            close_fds,
            timers,
            posix_locks,
            thread_args,
            pending,
            groups,
            names,
            sigframe,
            stack_top,
            threads,
            thread_block,
            park,
            total,
        }
    }
}

/// One piece of crest's own vDSO/vvar and where the image wants it.
#[derive(Debug, Clone)]
pub struct Special {
    pub current: MapRange,
    pub target: u64,
}

/// Where the pages of one process come from, besides the page file copied in.
pub struct PageSources<'a> {
    /// Lazy pages (userfaultfd).
    pub lazy: bool,
    /// Mapped pages (`--pages map`).
    pub mapped: Option<&'a crate::mapped::MapPlan>,
    /// VMAs filled before the fork and shared with children ([`super::cow`]), and where.
    pub premaps: &'a [super::cow::Premap],
    pub premap_area: (u64, u64),
}

/// The mapped bootstrap region. Unmapped from crest when dropped.
pub struct Bootstrap {
    addr: u64,
    layout: Layout,
    entry: u64,
    gadget: u64,
    /// For each POSIX lock the restorer takes, the start of the message if it cannot.
    posix_lock_subjects: Vec<String>,
    /// The first free address of the park area once the vDSO/vvar pieces have their places.
    park_free: u64,
    /// Lazy restore: the task creates a userfaultfd before the jump ([`crate::lazy`]).
    uffd_wanted: bool,
    /// The stored pages left to the page server.
    lazy: Vec<crate::lazy::plan::Piece>,
}

impl Bootstrap {
    /// Whether the task must create a userfaultfd for lazy pages before the jump.
    pub fn uffd_wanted(&self) -> bool {
        self.uffd_wanted
    }

    /// The task's userfaultfd number (it writes it here before reporting ready).
    pub fn set_uffd(&mut self, fd: i32) {
        self.args_mut().uffd = fd;
    }

    /// The fd number of the task's userfaultfd, once the task made it.
    pub fn uffd_in_task(&self) -> Option<i32> {
        // SAFETY: a plain read of an i32 inside the mapped args; volatile because the task
        // wrote it through its own mapping of the shared region.
        let fd = unsafe { std::ptr::read_volatile(std::ptr::addr_of!(self.args().uffd)) };
        (fd >= 0).then_some(fd)
    }

    /// The stored pages the page server fills while the process runs.
    pub fn lazy_pieces(&self) -> &[crate::lazy::plan::Piece] {
        &self.lazy
    }

    pub fn addr(&self) -> u64 {
        self.addr
    }
    pub fn len(&self) -> u64 {
        self.layout.total
    }
    pub fn entry(&self) -> u64 {
        self.addr + self.entry
    }
    /// Address of the blob's `syscall; int3` gadget.
    pub fn gadget(&self) -> u64 {
        self.addr + self.gadget
    }
    pub fn stack_top(&self) -> u64 {
        self.addr + self.layout.stack_top
    }
    pub fn args_addr(&self) -> u64 {
        self.addr + self.layout.args
    }

    /// The arguments, shared with the child (and the restorer, which writes its progress there).
    pub fn args(&self) -> &RestorerArgs {
        // SAFETY: the region is mapped for as long as `self` lives, args is inside it and
        // suitably aligned (page-aligned offset); RestorerArgs is plain old data.
        unsafe { &*(self.args_addr() as *const RestorerArgs) }
    }

    fn args_mut(&mut self) -> &mut RestorerArgs {
        // SAFETY: as in args(); &mut self guarantees no other reference from this process.
        unsafe { &mut *(self.args_addr() as *mut RestorerArgs) }
    }

    /// Reads the restorer's progress report. Volatile: the restorer writes it behind our back.
    pub fn progress(&self) -> abi::Progress {
        // SAFETY: the field lies inside the mapped region; a volatile read of plain data.
        unsafe { std::ptr::read_volatile(&self.args().progress) }
    }

    /// What the restorer's POSIX lock number `index` is, in words (for its failure).
    pub fn posix_lock_subject(&self, index: u64) -> Option<&str> {
        self.posix_lock_subjects
            .get(index as usize)
            .map(String::as_str)
    }

    /// The first thread (other than the leader) that reported a failed setup step, if any.
    /// Lets created thread `i` (0 for the first after the leader) go on to its breakpoint:
    /// it waits in its restorer until crest traces it (see `ThreadArg::go`).
    pub fn let_thread_go(&self, i: usize) {
        let args = self.args();
        assert!(
            (i as u64) < args.nr_threads,
            "thread {i} of {}",
            args.nr_threads
        );
        let t = (args.threads as *mut ThreadArg).wrapping_add(i);
        // SAFETY: crest wrote nr_threads ThreadArgs inside the region, mapped shared in crest
        // and in the task at the same address; `go` is an aligned i32 the thread reads
        // atomically, and nothing else in crest refers to it.
        let go = unsafe { std::sync::atomic::AtomicI32::from_ptr(std::ptr::addr_of_mut!((*t).go)) };
        go.store(abi::THREAD_GO, std::sync::atomic::Ordering::Release);
        // SAFETY: FUTEX_WAKE (shared) of at most one waiter on that word; no memory is written.
        unsafe { libc::syscall(libc::SYS_futex, go.as_ptr(), libc::FUTEX_WAKE, 1) };
    }

    pub fn thread_failure(&self) -> Option<(i32, abi::Progress)> {
        let args = self.args();
        (0..args.nr_threads).find_map(|i| {
            let t = (args.threads as *const ThreadArg).wrapping_add(i as usize);
            // SAFETY: crest wrote nr_threads ThreadArgs inside the mapped region; the volatile
            // read sees what the thread wrote before the process exited.
            let (tid, progress) = unsafe {
                (
                    std::ptr::read_volatile(&(*t).tid),
                    std::ptr::read_volatile(&(*t).progress),
                )
            };
            (progress.error != 0).then_some((tid, progress))
        })
    }

    /// Writes the list of crest's own mappings for the restorer to remove. Called in the child
    /// just before the jump, when its address space no longer changes.
    pub fn set_unmap_list(&mut self, ranges: &[Range]) -> Result<(), String> {
        if ranges.len() as u64 > MAX_UNMAP_RANGES {
            return Err(format!(
                "crest has {} mappings, more than the {MAX_UNMAP_RANGES} the restorer can take",
                ranges.len()
            ));
        }
        let at = self.addr + self.layout.unmap;
        // SAFETY: the destination array lies inside the mapped region with room for
        // MAX_UNMAP_RANGES entries (Layout::new), and is 8-byte aligned.
        unsafe { std::ptr::copy_nonoverlapping(ranges.as_ptr(), at as *mut Range, ranges.len()) };
        let args = self.args_mut();
        args.unmap = at;
        args.nr_unmap = ranges.len() as u64;
        Ok(())
    }

    /// Adds the AIO rings the task created (files/aio.rs) to the restorer's moves: parked like
    /// the vDSO while the image's memory is mapped, then placed at the image's address. Called
    /// in the child, once; the park area has room for every ring of the image.
    pub fn add_ring_moves(&mut self, rings: &[crate::files::aio::RingMove]) -> Result<(), String> {
        let park_end = self.addr + self.layout.total;
        let mut park = self.park_free;
        let args = self.args_mut();
        for r in rings {
            let n = args.nr_special as usize;
            if n >= abi::MAX_SPECIAL_MOVES {
                return Err(format!(
                    "more than {} vDSO/vvar pieces and AIO rings to move",
                    abi::MAX_SPECIAL_MOVES
                ));
            }
            if park + r.len > park_end {
                return Err("the restorer's park area has no room for an AIO ring".into());
            }
            args.special[n] = SpecialMove {
                current: r.current,
                park,
                target: r.target,
                len: r.len,
            };
            args.nr_special += 1;
            park += r.len;
        }
        self.park_free = park;
        Ok(())
    }

    /// Maps the region for `p` and fills in everything but the unmap list.
    pub fn create(
        p: &ProcessImage,
        own: &[MapRange],
        specials: &[Special],
        files: &OpenedFiles,
        sources: PageSources<'_>,
    ) -> Result<Bootstrap, RestoreError> {
        let PageSources {
            lazy,
            mapped,
            premaps,
            premap_area,
        } = sources;
        let page = crate::arch::page_size();
        let blob = super::blob::restorer();
        let thread = &p.threads[0];
        let xstate_len = match &thread.regs {
            crate::images::ArchRegs::X86_64 { xstate, .. } => xstate.len(),
            crate::images::ArchRegs::Aarch64 { fpsimd, .. } => fpsimd.len(),
        };
        let mut names = Vec::new();
        let (mut vma_args, runs, lazy_pieces) =
            vma_args(p, files, &mut names, lazy, mapped, premaps)?;
        let close: Vec<i32> = helper_fds(files);
        // The AIO rings the task creates wait in the park area too (add_ring_moves).
        let park_size: u64 = specials
            .iter()
            .map(|s| s.current.end - s.current.start)
            .chain(
                p.vmas
                    .iter()
                    .filter(|v| matches!(v.backing, VmaBacking::AioRing(_)))
                    .map(|v| v.end - v.start),
            )
            .sum();
        let timers = posix_timer_args(p.pid, &p.task.posix_timers);
        let posix_locks = crate::files::locks::restorer_posix_locks(p);
        let counts = Counts {
            vmas: vma_args.len() as u64,
            runs: runs.len() as u64,
            close_fds: close.len() as u64,
            timers: timers.len() as u64,
            posix_locks: posix_locks.len() as u64,
            threads: p.threads.len() as u64 - 1,
            pending: p.threads[1..]
                .iter()
                .map(|t| t.state.pending.len() as u64)
                .sum(),
            groups: super::creds::nr_groups(p),
            name_bytes: names.len() as u64,
        };
        let mut creds = super::creds::plan(p)?;
        let frame_size = crate::arch::sigframe::frame_size(xstate_len) as u64;
        let layout = Layout::new(blob.code_size() as u64, counts, frame_size, park_size, page);
        let addr = find_hole(&p.vmas, own, layout.total, page).ok_or_else(|| {
            RestoreError::Unsupported(format!("no address range of {} bytes is free in both crest and the image of pid {} for the restorer", layout.total, p.pid))
        })?;
        map_shared_region(addr, layout.total)?;
        let mut boot = Bootstrap {
            addr,
            layout,
            entry: blob.entry_offset(),
            gadget: blob.gadget_offset(),
            posix_lock_subjects: crate::files::locks::posix_subjects(p),
            park_free: 0,
            uffd_wanted: !lazy_pieces.is_empty(),
            lazy: lazy_pieces,
        };

        // SAFETY: [addr, addr + total) was just mapped read-write for us and nothing else refers to it.
        let region =
            unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, layout.total as usize) };
        blob.install(&mut region[..layout.args as usize], addr)
            .map_err(|e| RestoreError::Internal(format!("installing the restorer blob: {e}")))?;

        let vmas_at = addr + layout.vmas;
        let runs_at = addr + layout.runs;
        let close_at = addr + layout.close_fds;
        for v in vma_args.iter_mut().filter(|v| v.name != 0) {
            // vma_args() left the offset in `names` plus one; now the address is known.
            v.name += addr + layout.names - 1;
        }
        write_array(region, layout.names, &names);
        write_array(region, layout.vmas, &vma_args);
        write_array(region, layout.runs, &runs);
        write_array(region, layout.close_fds, &close);
        write_array(region, layout.timers, &timers);
        write_array(region, layout.groups, &p.creds.groups);
        creds.groups = addr + layout.groups;
        write_array(region, layout.posix_locks, &posix_locks);

        let frame_addr = addr + layout.sigframe;
        let frame =
            &mut region[layout.sigframe as usize..(layout.stack_top - RESTORER_STACK) as usize];
        let sigreturn_sp = crate::arch::sigframe::build_with_altstack(
            &thread.regs,
            thread.sigmask,
            thread.state.altstack,
            frame_addr,
            frame,
        )?;

        let thread_args = thread_args(p, &layout, addr, region);
        write_array(region, layout.thread_args, &thread_args);

        let mut special = [SpecialMove::default(); abi::MAX_SPECIAL_MOVES];
        let mut park = addr + layout.park;
        for (slot, s) in special.iter_mut().zip(specials) {
            let len = s.current.end - s.current.start;
            *slot = SpecialMove {
                current: s.current.start,
                park,
                target: s.target,
                len,
            };
            park += len;
        }
        boot.park_free = park;

        let mut auxv = [0u64; abi::MAX_AUXV_WORDS];
        auxv[..p.mm.auxv.len()].copy_from_slice(&p.mm.auxv);
        let args_addr = boot.args_addr();
        let auxv_addr = args_addr + std::mem::offset_of!(RestorerArgs, auxv) as u64;
        let mm = &p.mm;
        let args = RestorerArgs {
            magic: abi::ARGS_MAGIC,
            abi_version: abi::ABI_VERSION,
            page_size: page as u32,
            progress: abi::Progress::default(),
            bootstrap: Range {
                start: addr,
                len: layout.total,
            },
            unmap: addr + layout.unmap,
            nr_unmap: 0,
            special,
            nr_special: specials.len() as u64,
            vmas: vmas_at,
            nr_vmas: vma_args.len() as u64,
            runs: runs_at,
            nr_runs: runs.len() as u64,
            pages_fd: files.pages.as_raw_fd(),
            _pad0: 0,
            close_fds: close_at,
            nr_close_fds: close.len() as u64,
            mm: abi::PrctlMmMap {
                start_code: mm.start_code,
                end_code: mm.end_code,
                start_data: mm.start_data,
                end_data: mm.end_data,
                start_brk: mm.start_brk,
                brk: mm.brk,
                start_stack: mm.start_stack,
                arg_start: mm.arg_start,
                arg_end: mm.arg_end,
                env_start: mm.env_start,
                env_end: mm.env_end,
                auxv: auxv_addr,
                auxv_size: (p.mm.auxv.len() * 8) as u32,
                exe_fd: files.exe.as_raw_fd() as u32,
            },
            auxv,
            rseq: rseq_arg(thread.rseq),
            tls: crate::arch::morph::thread_pointers(&thread.regs),
            sigreturn_sp,
            itimers: itimer_args(&p.task.itimers),
            nr_itimers: if p.task.itimers.len() == 3 { 3 } else { 0 },
            _pad1: 0,
            posix_timers: addr + layout.timers,
            nr_posix_timers: timers.len() as u64,
            threads: addr + layout.thread_args,
            nr_threads: thread_args.len() as u64,
            creds,
            sigtrap_action: sigtrap_action(p),
            posix_locks: addr + layout.posix_locks,
            nr_posix_locks: posix_locks.len() as u64,
            uffd: if boot.uffd_wanted {
                abi::UFFD_WANTED
            } else {
                abi::UFFD_NONE
            },
            _pad2: 0,
            premap_area: Range {
                start: premap_area.0,
                len: premap_area.1,
            },
        };
        *boot.args_mut() = args;
        Ok(boot)
    }
}

impl Drop for Bootstrap {
    fn drop(&mut self) {
        // SAFETY: we mapped exactly this range in create(); nothing in crest refers to it after drop.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.layout.total as usize) };
    }
}

/// The image's SIGTRAP disposition, for crest to install after the last breakpoint (see
/// `RestorerArgs::sigtrap_action`).
fn sigtrap_action(p: &ProcessImage) -> abi::KernelSigaction {
    let sig = libc::SIGTRAP as usize;
    match p.task.sigactions.get(sig - 1) {
        Some(a) => abi::KernelSigaction {
            handler: a.handler,
            flags: a.flags,
            restorer: a.restorer,
            mask: a.mask,
        },
        None => abi::KernelSigaction {
            handler: (p.sig_ignored >> (sig - 1)) & 1,
            flags: 0,
            restorer: 0,
            mask: 0,
        },
    }
}

/// Sets the parent-death signal the leader restores after its credential switch (called in
/// the child, which alone knows whether the signal is kept).
impl Bootstrap {
    pub fn set_pdeath_after_creds(&mut self, sig: u32) {
        self.args_mut().creds.pdeath_signal = sig;
    }

    /// Address of the image's SIGTRAP action inside the region.
    /// Room crest may write into and the task read from once the restorer has run: the unmap
    /// list, which the restorer no longer needs then. (address, length)
    pub fn scratch(&self) -> (u64, usize) {
        (
            self.addr + self.layout.unmap,
            (MAX_UNMAP_RANGES as usize) * size_of::<Range>(),
        )
    }

    pub fn sigtrap_action_addr(&self) -> u64 {
        self.args_addr() + std::mem::offset_of!(RestorerArgs, sigtrap_action) as u64
    }
}

/// Every thread but the leader: its restorer stack in its own block of the region, its
/// pending signals copied into the pending area, and what it sets up itself.
fn thread_args(p: &ProcessImage, layout: &Layout, addr: u64, region: &mut [u8]) -> Vec<ThreadArg> {
    let mut out = Vec::with_capacity(p.threads.len().saturating_sub(1));
    let mut pending_at = layout.pending;
    for (i, t) in p.threads.iter().enumerate().skip(1) {
        let block = layout.threads + (i as u64 - 1) * layout.thread_block;
        let pending = addr + pending_at;
        for info in &t.state.pending {
            region[pending_at as usize..(pending_at + SIGINFO_SIZE) as usize].copy_from_slice(info);
            pending_at += SIGINFO_SIZE;
        }
        let altstack = t.state.altstack.unwrap_or_default();
        out.push(ThreadArg {
            tid: t.tid,
            go: 0,
            stack_top: addr + block + layout.thread_block,
            stack_size: THREAD_STACK,
            altstack_sp: altstack.sp,
            altstack_size: altstack.size,
            altstack_flags: altstack.flags as u64,
            tls: crate::arch::morph::thread_pointers(&t.regs),
            rseq: rseq_arg(t.rseq),
            clear_child_tid: t.state.clear_child_tid,
            robust_list: t.state.robust_list,
            robust_list_len: t.state.robust_list_len,
            pending,
            nr_pending: t.state.pending.len() as u64,
            progress: abi::Progress::default(),
            args: addr + layout.args,
            name: thread_name(&t.state.name),
        });
    }
    out
}

/// A thread name as PR_SET_NAME takes it: at most 15 bytes, NUL-terminated.
fn thread_name(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (slot, b) in out
        .iter_mut()
        .zip(name.bytes().filter(|b| *b != 0).take(15))
    {
        *slot = b;
    }
    out
}

fn rseq_arg(r: Option<crate::images::RseqRegistration>) -> RseqArg {
    match r {
        Some(r) => RseqArg {
            present: 1,
            len: r.abi_size,
            signature: r.signature,
            _pad: 0,
            ptr: r.abi_pointer,
        },
        None => RseqArg::default(),
    }
}

/// The image's interval timers in the restorer's layout (zeros when none were recorded).
///
/// A periodic timer can read "value 0, interval N": it expired and its signal is still
/// pending, and the kernel re-arms ITIMER_REAL only when that signal is dequeued. setitimer
/// with value 0 would disarm it for good, so such a timer is armed one interval ahead instead.
fn itimer_args(itimers: &[crate::images::ITimer]) -> [ITimerVal; 3] {
    let mut out = [ITimerVal::default(); 3];
    for (slot, t) in out.iter_mut().zip(itimers) {
        let value_us = if t.value_us == 0 {
            t.interval_us
        } else {
            t.value_us
        };
        *slot = ITimerVal {
            interval_sec: (t.interval_us / 1_000_000) as i64,
            interval_usec: (t.interval_us % 1_000_000) as i64,
            value_sec: (value_us / 1_000_000) as i64,
            value_usec: (value_us % 1_000_000) as i64,
        };
    }
    out
}

/// The armed POSIX timers the restorer arms (a disarmed one was created and stays disarmed; one
/// signalling a thread other than the leader is created and armed by crest once the thread
/// exists). As with itimers, a periodic timer that expired with its signal still pending is
/// armed one interval ahead.
fn posix_timer_args(pid: i32, timers: &[crate::images::PosixTimer]) -> Vec<PosixTimerArm> {
    timers
        .iter()
        .filter(|t| t.value_ns != 0 || t.interval_ns != 0)
        .filter(|t| !super::task_state::created_late(pid, timers, t))
        .map(timer_arm)
        .collect()
}

/// What arms timer `t`: its time left (a periodic timer that expired with its signal pending
/// is armed one interval ahead) and its period.
pub fn timer_arm(t: &crate::images::PosixTimer) -> PosixTimerArm {
    const NS: u64 = 1_000_000_000;
    let value_ns = if t.value_ns == 0 {
        t.interval_ns
    } else {
        t.value_ns
    };
    PosixTimerArm {
        id: t.id,
        _pad: 0,
        spec: ITimerSpec {
            interval_sec: (t.interval_ns / NS) as i64,
            interval_nsec: (t.interval_ns % NS) as i64,
            value_sec: (value_ns / NS) as i64,
            value_nsec: (value_ns % NS) as i64,
        },
    }
}

fn write_array<T: Copy>(region: &mut [u8], offset: u64, items: &[T]) {
    let bytes = std::mem::size_of_val(items);
    let dest = &mut region[offset as usize..offset as usize + bytes];
    // SAFETY: dest has exactly `bytes` bytes; T is plain old data (repr(C) ABI structs or i32),
    // and copying bytes into a byte slice needs no alignment.
    unsafe { std::ptr::copy_nonoverlapping(items.as_ptr() as *const u8, dest.as_mut_ptr(), bytes) };
}

/// The fds the restorer closes once memory is in place: page file, exe, mapped files, shared
/// memory.
fn helper_fds(files: &OpenedFiles) -> Vec<i32> {
    let mut fds = vec![files.pages.as_raw_fd(), files.exe.as_raw_fd()];
    fds.extend(files.mapped.iter().flatten().map(|f| f.as_raw_fd()));
    fds.extend(files.shmem.values().map(|f| f.as_raw_fd()));
    fds
}

/// Translates the image's VMAs into the restorer's mmap calls. vDSO and vvar are not mapped:
/// the restorer moves the running kernel's own pieces into place instead. The names the
/// restorer gives back (`[anon:NAME]`, `[anon_shmem:NAME]`) go into `names`, each
/// NUL-terminated; a VmaArg's `name` is then its offset there plus one (0: no name), for the
/// caller to turn into an address.
///
/// With `lazy`, the stored pages of lazy VMAs ([`crate::lazy::plan`]) but those under a
/// thread's stack pointer are left out of the runs the restorer copies and returned apart, for
/// the page server.
#[allow(clippy::type_complexity)]
fn vma_args(
    p: &ProcessImage,
    files: &OpenedFiles,
    names: &mut Vec<u8>,
    lazy: bool,
    mapped: Option<&crate::mapped::MapPlan>,
    premaps: &[super::cow::Premap],
) -> Result<(Vec<VmaArg>, Vec<PageRunArg>, Vec<crate::lazy::plan::Piece>), RestoreError> {
    let page = crate::arch::page_size();
    let mut out = Vec::with_capacity(p.vmas.len());
    let mut runs_out: Vec<PageRunArg> = Vec::with_capacity(p.page_runs.len());
    let mut lazy_out = Vec::new();
    let stack_pages = if lazy {
        crate::lazy::plan::eager_stack_pages(p, page)
    } else {
        Vec::new()
    };
    let mut run = 0usize;
    for vma in &p.vmas {
        if matches!(
            vma.backing,
            VmaBacking::Vdso | VmaBacking::Vvar | VmaBacking::AioRing(_)
        ) {
            // Moved into place instead (AIO rings: created by the task, files/aio.rs).
            continue;
        }
        let first_run = run;
        while run < p.page_runs.len() && p.page_runs[run].vaddr < vma.end {
            run += 1;
        }
        let nr_runs = run - first_run;
        let mut flags = if vma.shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
        // Shared memory is filled by crest before the fork (shmem.rs), once for every
        // process that maps it: the restorer only maps it.
        let mut nr_runs = nr_runs;
        let (fd, file_offset) = match vma.backing {
            VmaBacking::File { file, offset } => {
                let fd = files.mapped[file as usize].as_ref().ok_or_else(|| {
                    RestoreError::Internal(format!("file of VMA {:#x} not opened", vma.start))
                })?;
                (fd.as_raw_fd(), offset)
            }
            VmaBacking::SharedAnonymous { object, offset, .. } => {
                let fd = files.shmem.get(&object).ok_or_else(|| {
                    RestoreError::Internal(format!(
                        "shared memory of VMA {:#x} not opened",
                        vma.start
                    ))
                })?;
                // A private mapping of the object keeps its runs: the pages it wrote, copied
                // over the object's like a private file mapping's.
                if vma.shared {
                    nr_runs = 0;
                }
                (fd.as_raw_fd(), offset)
            }
            // Created and filled by crest before the fork (sysv.rs); attached by id.
            VmaBacking::SysvShm { id } => {
                nr_runs = 0;
                (id, 0)
            }
            _ => {
                flags |= libc::MAP_ANONYMOUS;
                (-1, 0)
            }
        };
        let (flags, madvise, mut extra) = crate::pstate::vmflags::restore_args(&vma.flags, flags);
        if matches!(vma.backing, VmaBacking::SysvShm { .. }) {
            extra |= abi::VMA_EXTRA_SHMAT;
        }
        let name = match vma.anon_name() {
            Some(n) => {
                // Validated: at most 79 bytes, no NUL.
                debug_assert!(n.len() < abi::VMA_NAME_MAX);
                let at = names.len() as u64 + 1;
                names.extend_from_slice(n.as_bytes());
                names.push(0);
                at
            }
            None => 0,
        };
        debug_assert_eq!(vma.start % page, 0);
        if let Some(m) = premaps.iter().find(|m| m.start == vma.start) {
            // Filled by the task before it forked its children (cow.rs): moved into place.
            out.push(VmaArg {
                start: vma.start,
                len: vma.end - vma.start,
                prot: vma.prot,
                flags: flags as u32,
                fd: -1,
                fill: abi::VMA_FILL_PREMAPPED,
                file_offset: m.slot,
                madvise,
                extra,
                nr_hot_runs: 0,
                first_run: runs_out.len() as u32,
                nr_runs: 0,
                name,
            });
            continue;
        }
        let vma_runs = &p.page_runs[first_run..first_run + nr_runs];
        let map_plan = mapped.filter(|m| nr_runs > 0 && m.maps(vma.start));
        let map = map_plan.is_some();
        // Mapped VMAs: the mapped runs, then `nr_hot_runs` ranges of them to fault in
        // written (MapPlan::hot_parts).
        let mut nr_hot_runs = 0;
        let (copy, lazy_pieces) = if let Some(plan) = map_plan {
            let mapped = crate::mapped::pieces(vma_runs, page);
            let hot = if vma.prot & libc::PROT_WRITE as u32 != 0 {
                plan.hot_parts(&mapped)
            } else {
                Vec::new()
            };
            nr_hot_runs = hot.len() as u32;
            let pieces = mapped
                .into_iter()
                .chain(hot)
                .map(|m| crate::lazy::plan::Piece {
                    vaddr: m.vaddr,
                    len: m.len,
                    file_offset: m.file_offset,
                })
                .collect();
            (pieces, Vec::new())
        } else if lazy && nr_runs > 0 && crate::lazy::plan::is_lazy_vma(vma) {
            crate::lazy::plan::split_runs(vma_runs, page, &stack_pages)
        } else {
            let all = vma_runs
                .iter()
                .map(|r| crate::lazy::plan::Piece {
                    vaddr: r.vaddr,
                    len: r.npages * page,
                    file_offset: r.file_offset,
                })
                .collect();
            (all, Vec::new())
        };
        let first_arg = runs_out.len();
        runs_out.extend(copy.iter().map(|c| PageRunArg {
            vaddr: c.vaddr,
            len: c.len,
            file_offset: c.file_offset,
        }));
        let fill = if !lazy_pieces.is_empty() {
            abi::VMA_FILL_LAZY
        } else if map {
            abi::VMA_FILL_MAP
        } else if !copy.is_empty() {
            abi::VMA_FILL_COPY
        } else {
            abi::VMA_FILL_NONE
        };
        lazy_out.extend(lazy_pieces);
        out.push(VmaArg {
            start: vma.start,
            len: vma.end - vma.start,
            prot: vma.prot,
            flags: flags as u32,
            fd,
            fill,
            file_offset,
            madvise,
            extra,
            nr_hot_runs,
            first_run: first_arg as u32,
            nr_runs: copy.len() as u32 - nr_hot_runs,
            name,
        });
    }
    Ok((out, runs_out, lazy_out))
}

/// Finds `len` bytes (plus a guard page either side) that neither the image nor crest uses.
fn find_hole(image: &[Vma], own: &[MapRange], len: u64, page: u64) -> Option<u64> {
    let used: Vec<(u64, u64)> = image
        .iter()
        .map(|v| (v.start, v.end))
        .chain(own.iter().map(|m| (m.start, m.end)))
        .collect();
    find_hole_among(used, len, page)
}

/// Finds `len` bytes (plus a guard page either side) outside every `(start, end)` of `used`.
pub(super) fn find_hole_among(mut used: Vec<(u64, u64)>, len: u64, page: u64) -> Option<u64> {
    used.sort_unstable();
    let want = len + 2 * page;
    let mut cursor = LOWEST_ADDRESS;
    for (start, end) in used {
        if start >= cursor && start - cursor >= want {
            break;
        }
        cursor = cursor.max(end);
    }
    (cursor.checked_add(want)? <= HIGHEST_ADDRESS).then_some(cursor + page)
}

/// Maps a memfd read-write-execute and shared at exactly `addr`; the fd itself is closed at once
/// (the mapping keeps the memory alive).
fn map_shared_region(addr: u64, len: u64) -> Result<(), RestoreError> {
    let os = |what: &str| RestoreError::Os {
        what: what.to_string(),
        source: std::io::Error::last_os_error(),
    };
    // SAFETY: the name is a valid C string; memfd_create has no other preconditions.
    let raw = unsafe { libc::memfd_create(c"crest-restorer".as_ptr(), libc::MFD_CLOEXEC) };
    if raw < 0 {
        return Err(os("memfd_create for the restorer region"));
    }
    // SAFETY: raw is a fresh descriptor we own.
    let fd: OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(raw) };
    // SAFETY: ftruncate on our own memfd.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } < 0 {
        return Err(os("sizing the restorer region"));
    }
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping; the range was chosen free.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            libc::MAP_SHARED | libc::MAP_FIXED_NOREPLACE,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(os(&format!("mapping the restorer region at {addr:#x}")));
    }
    if p as u64 != addr {
        // SAFETY: unmapping what the kernel just gave us at another address.
        unsafe { libc::munmap(p, len as usize) };
        return Err(RestoreError::Internal(format!(
            "restorer region landed at {:#x} instead of {addr:#x}",
            p as u64
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::VmaFlags;

    fn vma(start: u64, end: u64) -> Vma {
        Vma {
            start,
            end,
            prot: 3,
            shared: false,
            backing: VmaBacking::Anonymous,
            flags: VmaFlags::default(),
            name: String::new(),
            guard_ranges: Vec::new(),
        }
    }

    #[test]
    fn hole_avoids_both_address_spaces() {
        let page = 4096;
        let image = vec![vma(LOWEST_ADDRESS, LOWEST_ADDRESS + 0x10000)];
        let own = vec![MapRange {
            start: LOWEST_ADDRESS + 0x12000,
            end: LOWEST_ADDRESS + 0x20000,
            name: String::new(),
        }];
        let hole = find_hole(&image, &own, 0x8000, page).unwrap();
        for (s, e) in [
            (LOWEST_ADDRESS, LOWEST_ADDRESS + 0x10000),
            (LOWEST_ADDRESS + 0x12000, LOWEST_ADDRESS + 0x20000),
        ] {
            assert!(
                hole + 0x8000 + page <= s || hole >= e + page,
                "hole {hole:#x} overlaps {s:#x}-{e:#x}"
            );
        }
        assert_eq!(hole, LOWEST_ADDRESS + 0x20000 + page);
    }

    #[test]
    fn expired_periodic_timers_are_armed_one_interval_ahead() {
        use crate::images::{ITimer, PosixTimer};
        let it = itimer_args(&[
            ITimer {
                interval_us: 5000,
                value_us: 0,
            },
            ITimer {
                interval_us: 0,
                value_us: 0,
            },
            ITimer {
                interval_us: 2_500_000,
                value_us: 1_200_000,
            },
        ]);
        assert_eq!(
            (it[0].value_sec, it[0].value_usec, it[0].interval_usec),
            (0, 5000, 5000)
        );
        assert_eq!(
            (it[1].value_sec, it[1].value_usec),
            (0, 0),
            "a disarmed timer stays disarmed"
        );
        assert_eq!(
            (it[2].value_sec, it[2].value_usec, it[2].interval_sec),
            (1, 200_000, 2)
        );

        let timer = |id, value_ns, interval_ns| PosixTimer {
            id,
            value_ns,
            interval_ns,
            ..Default::default()
        };
        let armed = posix_timer_args(
            1,
            &[
                timer(1, 0, 7_000_000),
                timer(2, 0, 0),
                timer(3, 1_500_000_000, 0),
            ],
        );
        let got: Vec<(i32, i64, i64)> = armed
            .iter()
            .map(|a| (a.id, a.spec.value_sec, a.spec.value_nsec))
            .collect();
        assert_eq!(got, vec![(1, 0, 7_000_000), (3, 1, 500_000_000)]);
    }

    #[test]
    fn layout_parts_do_not_overlap() {
        let counts = Counts {
            vmas: 50,
            runs: 300,
            close_fds: 5,
            timers: 3,
            posix_locks: 2,
            threads: 4,
            pending: 2,
            groups: 3,
            name_bytes: 77,
        };
        let l = Layout::new(10000, counts, 20000, 3 * 4096, 4096);
        let parts = [
            l.args,
            l.unmap,
            l.vmas,
            l.runs,
            l.close_fds,
            l.timers,
            l.posix_locks,
            l.thread_args,
            l.pending,
            l.groups,
            l.names,
            l.sigframe,
            l.stack_top,
            l.threads,
            l.park,
            l.total,
        ];
        assert!(parts.windows(2).all(|w| w[0] <= w[1]), "{l:?}");
        assert!(l.args >= 10000 && l.sigframe.is_multiple_of(4096) && l.total - l.park >= 3 * 4096);
        assert!(
            l.names >= l.groups + 3 * 4 && l.sigframe >= l.names + 77,
            "{l:?}"
        );
    }
}
