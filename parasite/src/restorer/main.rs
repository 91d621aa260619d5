//! The restorer: freestanding code that crest copies into the bootstrap region of a forked task
//! and jumps to. It turns the task into the image's process: it moves the vDSO/vvar aside,
//! unmaps everything of crest's, maps and fills the image's VMAs, puts the vDSO/vvar where the
//! image had them, sets the mm fields, closes crest's helper fds, re-registers rseq, sets the
//! thread pointer and returns into the saved registers with rt_sigreturn.
//!
//! It has no libc and no TLS and runs with only the bootstrap region guaranteed to exist, so it
//! touches nothing outside `RestorerArgs` and the arrays it points at. It reports progress and
//! errors through `RestorerArgs::progress` (shared memory that crest reads after the task
//! exits), because there is nobody to return an error to.

#![no_std]
#![no_main]

#[path = "../abi.rs"]
#[allow(dead_code)]
mod abi;

#[cfg_attr(target_arch = "x86_64", path = "arch_x86_64.rs")]
#[cfg_attr(target_arch = "aarch64", path = "arch_aarch64.rs")]
#[allow(dead_code)]
mod arch;

mod creds;
mod sys;

use abi::{
    CloneArgs, ITimerVal, PageRunArg, PosixLockArg, PosixTimerArm, PrctlMmMap, Progress, Range,
    RestorerArgs, Step, ThreadArg, VmaArg, ABI_VERSION, ARGS_MAGIC, CREDS_DETAIL_BASE,
    MAX_SPECIAL_MOVES, VMA_EXTRA_LOCK_ONFAULT, VMA_EXTRA_SEAL, VMA_EXTRA_SHMAT, VMA_FILL_LAZY, VMA_FILL_MAP, VMA_FILL_NONE, VMA_FILL_PREMAPPED,
};
use core::ptr;

/// PR_SET_MM_MAP takes the structure's size and refuses anything but its own.
const _: () = assert!(core::mem::size_of::<PrctlMmMap>() == 104);
const _: () = assert!(core::mem::size_of::<abi::Flock>() == 32);

/// Exit code when the restorer fails a step (details in `progress`).
const EXIT_FAILED: i32 = 127;
/// Exit code of a panic (cannot happen without a bug in the blob; nothing is formatted).
const EXIT_PANIC: i32 = 126;

/// `Progress::detail` values for `Step::BadArgs`, saying which check failed.
mod bad {
    pub use crate::abi::{
        BAD_ARGS_ALIGNMENT as ALIGNMENT, BAD_ARGS_MAGIC as MAGIC,
        BAD_ARGS_NR_SPECIAL as NR_SPECIAL, BAD_ARGS_VERSION as VERSION,
    };
}

/// Access to the arguments through the raw pointer only: `progress` is written while the rest
/// is read, so no reference to the whole structure is ever formed.
struct Ctx {
    args: *mut RestorerArgs,
}

impl Ctx {
    /// Records the step about to run (and what it works on) before running it.
    fn step(&self, step: Step, detail: u64) {
        // SAFETY: `args` is valid for the whole run (crest's contract); volatile because crest
        // reads this from the shared mapping after the task is gone.
        unsafe {
            let p = ptr::addr_of_mut!((*self.args).progress);
            ptr::write_volatile(ptr::addr_of_mut!((*p).step), step as u32);
            ptr::write_volatile(ptr::addr_of_mut!((*p).detail), detail);
        }
    }

    /// Records the error of the current step and ends the task.
    fn fail(&self, error: i32) -> ! {
        // SAFETY: as in `step`.
        unsafe {
            let p = ptr::addr_of_mut!((*self.args).progress);
            ptr::write_volatile(ptr::addr_of_mut!((*p).error), error);
        }
        sys::exit_group(EXIT_FAILED)
    }

    fn bad_args(&self, which: u64) -> ! {
        self.step(Step::BadArgs, which);
        self.fail(-sys::EINVAL)
    }

    fn check(&self, r: sys::SysResult) -> usize {
        match r {
            Ok(v) => v,
            Err(e) => self.fail(e),
        }
    }

    fn args(&self) -> *const RestorerArgs {
        self.args
    }
}

/// Reads element `i` of an array of `T` at address `base` inside the bootstrap region.
///
/// # Safety
/// `base` must point at least `i + 1` valid, aligned `T`s.
unsafe fn at<T: Copy>(base: u64, i: u64) -> T {
    // SAFETY: guaranteed by the caller.
    unsafe { ptr::read((base as *const T).add(i as usize)) }
}

fn overlaps(a_start: u64, a_len: u64, b: Range) -> bool {
    a_start < b.start.wrapping_add(b.len) && b.start < a_start.wrapping_add(a_len)
}

/// The entry point crest jumps to, on a 16-byte aligned stack inside the bootstrap region.
#[no_mangle]
pub extern "C" fn restorer_main(args: *mut RestorerArgs) -> ! {
    let ctx = Ctx { args };
    ctx.step(Step::Start, 0);
    // SAFETY: crest passes a pointer to a filled-in RestorerArgs inside the bootstrap region,
    // which stays mapped (and is never a target of the calls below) for the whole run.
    let a = unsafe { &*ctx.args() };
    check_args(&ctx, a);
    park_special(&ctx, a);
    unmap_own(&ctx, a);
    move_premapped(&ctx, a);
    map_vmas(&ctx, a);
    close_uffd(&ctx, a);
    place_special(&ctx, a);
    set_mm(&ctx);
    close_fds(&ctx, a);
    take_posix_locks(&ctx, a);
    create_threads(&ctx, a);
    switch_creds(&ctx, a);
    register_rseq(&ctx, a);
    set_thread_area(&ctx, a);
    arm_timers(&ctx, a);

    ctx.step(Step::Sigreturn, a.sigreturn_sp);
    // SAFETY: crest built a valid rt_sigframe at sigreturn_sp (its sigframe builder's result).
    unsafe { arch::sigreturn(a.sigreturn_sp) }
}

fn check_args(ctx: &Ctx, a: &RestorerArgs) {
    if a.magic != ARGS_MAGIC {
        ctx.bad_args(bad::MAGIC);
    }
    if a.abi_version != ABI_VERSION {
        ctx.bad_args(bad::VERSION);
    }
    if a.nr_special > MAX_SPECIAL_MOVES as u64 {
        ctx.bad_args(bad::NR_SPECIAL);
    }
    // The arrays are read with aligned loads (arm64 builds with strict-align).
    let arrays =
        a.unmap | a.vmas | a.runs | a.close_fds | a.posix_timers | a.threads | a.posix_locks;
    if !arrays.is_multiple_of(8) {
        ctx.bad_args(bad::ALIGNMENT);
    }
}

/// Moves the vDSO/vvar of the restoring kernel into the park area, so that the image's VMAs can
/// be mapped wherever the image had them.
fn park_special(ctx: &Ctx, a: &RestorerArgs) {
    for s in a.special.iter().take(a.nr_special as usize) {
        ctx.step(Step::ParkSpecial, s.current);
        ctx.check(sys::mremap_fixed(s.current, s.len, s.park));
    }
}

fn unmap_own(ctx: &Ctx, a: &RestorerArgs) {
    for i in 0..a.nr_unmap {
        // SAFETY: crest wrote nr_unmap Ranges at `unmap` (alignment checked).
        let r: Range = unsafe { at(a.unmap, i) };
        ctx.step(Step::UnmapOwn, r.start);
        if overlaps(r.start, r.len, a.bootstrap) {
            // Unmapping the region we run from would kill us with no report.
            ctx.fail(-sys::EINVAL);
        }
        ctx.check(sys::munmap(r.start, r.len));
    }
}

/// Moves the VMAs the task premapped into place (mremap keeps the pages it shares with its
/// parent and children shared), then unmaps what is left of the premap area (slots of other
/// processes it inherited). Before any other VMA is mapped: the slots lie where no VMA of the
/// tree goes, but a move must not land on a slot not moved yet.
fn move_premapped(ctx: &Ctx, a: &RestorerArgs) {
    let area = a.premap_area;
    if area.len == 0 {
        return;
    }
    for i in 0..a.nr_vmas {
        // SAFETY: crest wrote nr_vmas VmaArgs at `vmas` (alignment checked).
        let v: VmaArg = unsafe { at(a.vmas, i) };
        if v.fill != VMA_FILL_PREMAPPED {
            continue;
        }
        ctx.step(Step::MovePremapped, v.start);
        let slot = v.file_offset;
        let inside = slot >= area.start
            && v.len <= area.len
            && slot - area.start <= area.len - v.len;
        if !inside || overlaps(v.start, v.len, a.bootstrap) || overlaps(v.start, v.len, area) {
            ctx.fail(-sys::EINVAL);
        }
        let got = ctx.check(sys::mremap_fixed(slot, v.len, v.start));
        if got as u64 != v.start {
            ctx.fail(-sys::EINVAL);
        }
    }
    ctx.step(Step::UnmapOwn, area.start);
    ctx.check(sys::munmap(area.start, area.len));
}

fn map_vmas(ctx: &Ctx, a: &RestorerArgs) {
    for i in 0..a.nr_vmas {
        // SAFETY: crest wrote nr_vmas VmaArgs at `vmas` (alignment checked).
        let v: VmaArg = unsafe { at(a.vmas, i) };
        map_vma(ctx, a, &v);
    }
}

fn map_vma(ctx: &Ctx, a: &RestorerArgs, v: &VmaArg) {
    ctx.step(Step::MapVma, v.start);
    if overlaps(v.start, v.len, a.bootstrap) {
        // MAP_FIXED would silently replace the code and stack we run on.
        ctx.fail(-sys::EEXIST);
    }
    // Pages are written with pread, so the VMA must be writable while it is filled (mapped
    // pages are not written); a premapped VMA is read-write already.
    let premapped = v.fill == VMA_FILL_PREMAPPED;
    let add_write = v.fill != VMA_FILL_NONE
        && v.fill != VMA_FILL_MAP
        && (premapped || v.prot & sys::PROT_WRITE == 0);
    let prot = if add_write {
        v.prot | sys::PROT_WRITE
    } else {
        v.prot
    };
    if premapped {
        // Moved into place by move_premapped.
    } else if v.extra & VMA_EXTRA_SHMAT != 0 {
        attach_sysv(ctx, v);
    } else {
        let got = ctx.check(sys::mmap(
            v.start,
            v.len,
            prot,
            v.flags | sys::MAP_FIXED,
            v.fd,
            v.file_offset,
        ));
        if got as u64 != v.start {
            ctx.fail(-sys::EINVAL);
        }
    }

    if v.fill == VMA_FILL_MAP {
        map_pages(ctx, a, v);
        populate_hot(ctx, a, v);
    } else if v.fill != VMA_FILL_NONE && !premapped {
        fill_pages(ctx, a, v);
    }
    if v.fill == VMA_FILL_LAZY {
        // After the eager pages are in: missing-page mode only fires on absent pages.
        ctx.step(Step::RegisterLazy, v.start);
        if a.uffd < 0 {
            ctx.fail(-sys::EINVAL);
        }
        ctx.check(sys::uffd_register_missing(a.uffd, v.start, v.len));
    }
    if add_write && (!premapped || v.prot != sys::PROT_READ | sys::PROT_WRITE) {
        ctx.step(Step::ProtectVma, v.start);
        ctx.check(sys::mprotect(v.start, v.len, v.prot));
    }
    for &advice in &v.madvise {
        if advice != 0 {
            ctx.step(Step::Madvise, v.start);
            ctx.check(sys::madvise(v.start, v.len, advice));
        }
    }
    if v.name != 0 {
        ctx.step(Step::NameVma, v.start);
        ctx.check(sys::name_vma(v.start, v.len, v.name));
    }
    if v.extra & VMA_EXTRA_LOCK_ONFAULT != 0 {
        ctx.step(Step::LockVma, v.start);
        ctx.check(sys::mlock2(v.start, v.len, sys::MLOCK_ONFAULT));
    }
    // Last: a sealed VMA refuses any later mprotect, madvise or munmap.
    if v.extra & VMA_EXTRA_SEAL != 0 {
        ctx.step(Step::SealVma, v.start);
        ctx.check(sys::mseal(v.start, v.len));
    }
}

/// Attaches SysV segment `v.fd` (its id) at `v.start`, with the protection `v.prot`. The
/// segment was created and filled by crest before the fork.
fn attach_sysv(ctx: &Ctx, v: &VmaArg) {
    let mut flags = sys::SHM_REMAP;
    if v.prot & sys::PROT_WRITE == 0 {
        flags |= sys::SHM_RDONLY;
    }
    if v.prot & sys::PROT_EXEC != 0 {
        flags |= sys::SHM_EXEC;
    }
    let got = ctx.check(sys::shmat(v.fd, v.start, flags));
    if got as u64 != v.start {
        ctx.fail(-sys::EINVAL);
    }
    // shmat gives read (and write, and exec) access; a later mprotect may have taken some.
    let given = sys::PROT_READ
        | (v.prot & sys::PROT_WRITE)
        | (v.prot & sys::PROT_EXEC);
    if v.prot != given {
        ctx.step(Step::ProtectVma, v.start);
        ctx.check(sys::mprotect(v.start, v.len, v.prot));
    }
}

/// The restored process must not keep the userfaultfd of lazy pages: crest has its copy, and
/// every lazy VMA is registered by now.
fn close_uffd(ctx: &Ctx, a: &RestorerArgs) {
    if a.uffd >= 0 {
        ctx.step(Step::CloseFds, a.uffd as u32 as u64);
        ctx.check(sys::close(a.uffd));
    }
}

fn fill_pages(ctx: &Ctx, a: &RestorerArgs, v: &VmaArg) {
    let first = v.first_run as u64;
    let end = first + v.nr_runs as u64;
    if end > a.nr_runs {
        ctx.step(Step::FillPages, v.start);
        ctx.fail(-sys::EINVAL);
    }
    for i in first..end {
        // SAFETY: crest wrote nr_runs PageRunArgs at `runs`; `i < nr_runs` was checked above.
        let run: PageRunArg = unsafe { at(a.runs, i) };
        ctx.step(Step::FillPages, run.vaddr);
        let inside =
            run.vaddr >= v.start && run.len <= v.len && run.vaddr - v.start <= v.len - run.len;
        if !inside {
            // pread would write over memory that is not this (writable) VMA.
            ctx.fail(-sys::EINVAL);
        }
        read_fully(ctx, a.pages_fd, run.vaddr, run.len, run.file_offset);
        if v.prot & sys::PROT_EXEC != 0 {
            arch::sync_icache(run.vaddr, run.len);
        }
    }
}

/// Maps the VMA's page runs from the page file over it, copy-on-write (`VMA_FILL_MAP`): the
/// pages come from the page cache when first touched. Only MAP_NORESERVE is kept of the VMA's
/// flags (crest maps only plain private VMAs this way, anonymous or of a file).
fn map_pages(ctx: &Ctx, a: &RestorerArgs, v: &VmaArg) {
    let first = v.first_run as u64;
    let end = first + v.nr_runs as u64;
    if end > a.nr_runs {
        ctx.step(Step::MapPages, v.start);
        ctx.fail(-sys::EINVAL);
    }
    let flags = sys::MAP_PRIVATE | sys::MAP_FIXED | (v.flags & sys::MAP_NORESERVE);
    for i in first..end {
        // SAFETY: crest wrote nr_runs PageRunArgs at `runs`; `i < nr_runs` was checked above.
        let run: PageRunArg = unsafe { at(a.runs, i) };
        ctx.step(Step::MapPages, run.vaddr);
        let inside =
            run.vaddr >= v.start && run.len <= v.len && run.vaddr - v.start <= v.len - run.len;
        if !inside {
            // MAP_FIXED would replace memory that is not this VMA.
            ctx.fail(-sys::EINVAL);
        }
        let got = ctx.check(sys::mmap(
            run.vaddr,
            run.len,
            v.prot,
            flags,
            a.pages_fd,
            run.file_offset,
        ));
        if got as u64 != run.vaddr {
            ctx.fail(-sys::EINVAL);
        }
    }
}

/// Faults in, written, the hot ranges of a mapped VMA (`VmaArg::nr_hot_runs`): each page is
/// copied from the page cache now. Only a speed-up: a range the kernel does not populate
/// (a kernel without MADV_POPULATE_WRITE, memory short) is left to fault as usual.
fn populate_hot(ctx: &Ctx, a: &RestorerArgs, v: &VmaArg) {
    let first = v.first_run as u64 + v.nr_runs as u64;
    let end = first + v.nr_hot_runs as u64;
    if v.nr_hot_runs == 0 || v.prot & sys::PROT_WRITE == 0 {
        return;
    }
    if end > a.nr_runs {
        ctx.step(Step::MapPages, v.start);
        ctx.fail(-sys::EINVAL);
    }
    for i in first..end {
        // SAFETY: crest wrote nr_runs PageRunArgs at `runs`; `i < nr_runs` was checked above.
        let run: PageRunArg = unsafe { at(a.runs, i) };
        let inside =
            run.vaddr >= v.start && run.len <= v.len && run.vaddr - v.start <= v.len - run.len;
        if inside {
            let _ = sys::madvise(run.vaddr, run.len, sys::MADV_POPULATE_WRITE);
        }
    }
}

/// pread may return short counts (a signal, a page-cache boundary); loop until done.
fn read_fully(ctx: &Ctx, fd: i32, buf: u64, len: u64, off: u64) {
    let mut done = 0u64;
    while done < len {
        match sys::pread64(fd, buf + done, len - done, off + done) {
            Ok(0) => ctx.fail(-sys::EIO), // the page file is shorter than the image says
            Ok(n) => done += n as u64,
            Err(e) if e == -sys::EINTR => continue,
            Err(e) => ctx.fail(e),
        }
    }
}

fn place_special(ctx: &Ctx, a: &RestorerArgs) {
    for s in a.special.iter().take(a.nr_special as usize) {
        ctx.step(Step::PlaceSpecial, s.target);
        if overlaps(s.target, s.len, a.bootstrap) {
            ctx.fail(-sys::EEXIST);
        }
        ctx.check(sys::mremap_fixed(s.park, s.len, s.target));
    }
}

fn set_mm(ctx: &Ctx) {
    ctx.step(Step::SetMm, 0);
    // SAFETY: only the address of the field is taken; crest filled it (and mm.auxv points at
    // RestorerArgs::auxv), the kernel reads 104 bytes from it.
    let map = unsafe { ptr::addr_of!((*ctx.args()).mm) };
    ctx.check(sys::prctl_set_mm_map(
        map as *const u8,
        core::mem::size_of::<PrctlMmMap>(),
    ));
}

fn close_fds(ctx: &Ctx, a: &RestorerArgs) {
    for i in 0..a.nr_close_fds {
        // SAFETY: crest wrote nr_close_fds i32s at `close_fds` (alignment checked).
        let fd: i32 = unsafe { at(a.close_fds, i) };
        ctx.step(Step::CloseFds, fd as u32 as u64);
        ctx.check(sys::close(fd));
    }
}

/// POSIX locks belong to the process and vanish on any close of the file by it, so they are
/// taken only now that every helper fd is closed. F_SETLK, not F_SETLKW: a lock someone else
/// took since the dump fails the restore instead of hanging it.
fn take_posix_locks(ctx: &Ctx, a: &RestorerArgs) {
    for i in 0..a.nr_posix_locks {
        // SAFETY: crest wrote nr_posix_locks PosixLockArgs at `posix_locks` (alignment checked);
        // only addresses are computed here, the kernel reads the struct flock.
        let arg = unsafe { (a.posix_locks as *const PosixLockArg).add(i as usize) };
        // SAFETY: as above, `arg` points at a valid PosixLockArg.
        let fd = unsafe { (*arg).fd };
        ctx.step(Step::PosixLock, i);
        // SAFETY: as above.
        let lock = unsafe { ptr::addr_of!((*arg).lock) };
        ctx.check(sys::fcntl_setlk(fd, lock as *const u8));
    }
}

fn register_rseq(ctx: &Ctx, a: &RestorerArgs) {
    if a.rseq.present == 0 {
        return;
    }
    ctx.step(Step::Rseq, a.rseq.ptr);
    ctx.check(sys::rseq(a.rseq.ptr, a.rseq.len, a.rseq.signature));
}

fn set_thread_area(ctx: &Ctx, a: &RestorerArgs) {
    ctx.step(Step::ThreadArea, a.tls[0]);
    if let Err(e) = arch::set_thread_area(a.tls) {
        ctx.fail(e as i32);
    }
}

/// A thread of the same process, sharing everything a pthread shares; CLONE_SETTLS installs
/// the thread pointer (x86_64 FS base, aarch64 TPIDR_EL0) from `tls[0]`.
const THREAD_FLAGS: u64 = 0x100 /* CLONE_VM */
    | 0x200 /* CLONE_FS */
    | 0x400 /* CLONE_FILES */
    | 0x800 /* CLONE_SIGHAND */
    | 0x10000 /* CLONE_THREAD */
    | 0x40000 /* CLONE_SYSVSEM */
    | 0x80000 /* CLONE_SETTLS */;

/// Creates every other thread under its original tid, once the memory it returns into is in
/// place. Each inherits the leader's mask (everything blocked) until its own rt_sigreturn.
fn create_threads(ctx: &Ctx, a: &RestorerArgs) {
    for i in 0..a.nr_threads {
        let t = (a.threads as *mut ThreadArg).wrapping_add(i as usize);
        // SAFETY: crest wrote nr_threads ThreadArgs at `threads` (alignment checked).
        let ta: ThreadArg = unsafe { ptr::read(t) };
        ctx.step(Step::CreateThread, ta.tid as u32 as u64);
        let tids = [ta.tid];
        let args = CloneArgs {
            flags: THREAD_FLAGS,
            pidfd: 0,
            child_tid: 0,
            parent_tid: 0,
            exit_signal: 0,
            stack: ta.stack_top - ta.stack_size,
            stack_size: ta.stack_size,
            tls: ta.tls[0],
            set_tid: tids.as_ptr() as u64,
            set_tid_size: 1,
            cgroup: 0,
        };
        // SAFETY: the stack lies in the bootstrap region, which stays mapped until crest
        // removes it after every thread is back in its own registers; thread_main never returns.
        let r = unsafe {
            arch::clone3_thread(
                &args as *const CloneArgs as *const u8,
                core::mem::size_of::<CloneArgs>(),
                thread_main,
                t as u64,
            )
        };
        if r < 0 {
            ctx.fail(r as i32);
        }
        if r as i32 != ta.tid {
            ctx.fail(-sys::EINVAL);
        }
    }
}

/// The leader's credential switch, once every thread exists (their creation with set_tid
/// needs crest's capabilities); each thread switches its own in `thread_main`. A credential
/// change clears the parent-death signal, so the leader sets it again.
fn switch_creds(ctx: &Ctx, a: &RestorerArgs) {
    if a.creds.present == 0 {
        return;
    }
    if let Err((step, e)) = creds::switch(&a.creds) {
        ctx.step(Step::Creds, step);
        ctx.fail(e);
    }
    if a.creds.pdeath_signal != 0 {
        ctx.step(Step::Creds, 0);
        ctx.check(sys::set_pdeath_signal(a.creds.pdeath_signal));
    }
}

/// Where a created thread starts: its per-thread state, then the breakpoint where crest puts
/// its own registers back.
extern "C" fn thread_main(arg: u64) -> ! {
    let t = arg as *mut ThreadArg;
    // SAFETY: `arg` is this thread's ThreadArg in the bootstrap region (create_threads).
    let ta: ThreadArg = unsafe { ptr::read(t) };
    let fail = |detail: u64, error: i32| -> ! {
        // SAFETY: this thread's own progress slot; crest reads it after the process exits.
        unsafe {
            ptr::write_volatile(
                ptr::addr_of_mut!((*t).progress),
                Progress {
                    step: Step::ThreadSetup as u32,
                    error,
                    detail,
                },
            )
        };
        sys::exit_group(EXIT_FAILED)
    };
    if ta.name[0] != 0 {
        if let Err(e) = sys::set_name(ta.name.as_ptr()) {
            fail(0, e);
        }
    }
    sys::set_tid_address(ta.clear_child_tid);
    // The kernel accepts only sizeof(struct robust_list_head); head 0 means none.
    let len = if ta.robust_list_len != 0 {
        ta.robust_list_len
    } else {
        24
    };
    if let Err(e) = sys::set_robust_list(ta.robust_list, len) {
        fail(ta.robust_list, e);
    }
    if ta.rseq.present != 0 {
        if let Err(e) = sys::rseq(ta.rseq.ptr, ta.rseq.len, ta.rseq.signature) {
            fail(ta.rseq.ptr, e);
        }
    }
    if let Err(e) = arch::set_thread_area(ta.tls) {
        fail(ta.tls[0], e as i32);
    }
    // SAFETY: `args` is the RestorerArgs the leader runs from; only `creds` is read, which
    // nobody writes any more.
    let creds = unsafe { &(*(ta.args as *const RestorerArgs)).creds };
    if let Err((step, e)) = creds::switch(creds) {
        fail(CREDS_DETAIL_BASE + step, e);
    }
    let tgid = sys::getpid();
    for i in 0..ta.nr_pending {
        let info = ta.pending + i * 128;
        // SAFETY: crest wrote nr_pending 128-byte siginfos at `pending`.
        let sig: i32 = unsafe { ptr::read(info as *const i32) };
        if let Err(e) = sys::rt_tgsigqueueinfo(tgid, ta.tid, sig, info as *const u8) {
            fail(sig as u64, e);
        }
    }
    if ta.altstack_size != 0 {
        if let Err(e) = sys::sigaltstack(ta.altstack_sp, ta.altstack_flags as i32, ta.altstack_size)
        {
            fail(ta.altstack_sp, e);
        }
    }
    // The breakpoint needs a tracer: crest traces the thread once the leader reaches its own,
    // then says go. Threads are made without crest following each creation (no ptrace stop
    // per clone), which is what makes a thousand of them cheap.
    // SAFETY: `go` is an aligned i32 of this thread's ThreadArg; crest writes it from its
    // mapping of the region, so it is read atomically.
    let go = unsafe { core::sync::atomic::AtomicI32::from_ptr(ptr::addr_of_mut!((*t).go)) };
    while go.load(core::sync::atomic::Ordering::Acquire) != abi::THREAD_GO {
        // EAGAIN (already set) and EINTR just look again.
        let _ = sys::futex_wait(go.as_ptr(), 0);
    }
    // crest catches the thread on this breakpoint and puts its registers, extended state and
    // signal mask back by ptrace: one stop instead of three (breakpoint, entry and exit of
    // rt_sigreturn), which a thousand threads feel.
    arch::stop_for_crest()
}

/// Timers last: every expiry from here on reaches the restored program (its signals stay
/// pending until rt_sigreturn installs the image's mask).
fn arm_timers(ctx: &Ctx, a: &RestorerArgs) {
    if a.nr_itimers == 3 {
        for (which, value) in a.itimers.iter().enumerate() {
            ctx.step(Step::Timers, which as u64);
            ctx.check(sys::setitimer(
                which,
                value as *const ITimerVal as *const u8,
            ));
        }
    }
    for i in 0..a.nr_posix_timers {
        // SAFETY: crest wrote nr_posix_timers PosixTimerArms at `posix_timers` (alignment checked).
        let t: PosixTimerArm = unsafe { at(a.posix_timers, i) };
        ctx.step(Step::Timers, t.id as u32 as u64);
        ctx.check(sys::timer_settime(t.id, ptr::addr_of!(t.spec) as *const u8));
    }
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    sys::exit_group(EXIT_PANIC)
}
