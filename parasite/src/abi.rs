//! The contract between crest and its two blobs, the restorer and the parasite (bottom section).
//!
//! This one file is compiled into both sides: into the freestanding blobs (`parasite/`) and into
//! crest (`src/blob.rs` includes it with `#[path]`). Everything is `#[repr(C)]`, made of
//! fixed-size integers, and addressed with absolute addresses inside the bootstrap region, which
//! crest maps (MAP_SHARED, from a memfd) at the same address in itself and in the restored task
//! before the fork, so both sides see the same bytes.
//!
//! Bootstrap region layout (all offsets page-aligned, chosen by crest):
//! `[blob code+data][RestorerArgs][arrays referenced by RestorerArgs][sigframe][stack][park area]`

/// `RestorerArgs::magic`: "CRESTRST" little-endian, checked by the blob first thing.
pub const ARGS_MAGIC: u64 = 0x5453_5254_5345_5243;
/// Bumped whenever a structure in this file changes.
pub const ABI_VERSION: u32 = 15;

/// Most areas the restorer moves into place: `[vvar*]` pieces and the `[vdso]` (8), and the
/// rings of AIO contexts the task created (32, the image's limit per process).
pub const MAX_SPECIAL_MOVES: usize = 8 + 32;
/// Words of the saved auxiliary vector the restorer can carry (the kernel keeps fewer).
pub const MAX_AUXV_WORDS: usize = 128;

/// An address range.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Range {
    pub start: u64,
    pub len: u64,
}

/// Moving one piece of the restoring kernel's vDSO/vvar: first parked inside the bootstrap
/// region (so the image's VMAs can be mapped anywhere), then moved to where the image had it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SpecialMove {
    /// Where the piece is now (in the forked child).
    pub current: u64,
    /// Where it waits while the image's memory is mapped (inside the park area).
    pub park: u64,
    /// Where the image had it.
    pub target: u64,
    pub len: u64,
}

/// How the restorer fills a VMA after mapping it.
pub const VMA_FILL_NONE: u32 = 0;
/// Copy the VMA's page runs from `RestorerArgs::pages_fd` with pread.
pub const VMA_FILL_COPY: u32 = 1;
/// Lazy pages (`crest restore --lazy-pages`): copy the VMA's page runs (the pages under a
/// thread's stack pointer, possibly none) like `VMA_FILL_COPY`, then register the whole VMA
/// with `RestorerArgs::uffd` (UFFDIO_REGISTER, missing-page mode); crest's page server fills
/// the rest.
pub const VMA_FILL_LAZY: u32 = 2;
/// Mapped pages (`crest restore --pages map`): after mapping the VMA anonymous, map each of its
/// page runs over it from `RestorerArgs::pages_fd` (MAP_PRIVATE|MAP_FIXED at the run's file
/// offset, copy-on-write from the page cache); nothing is read. The gaps stay anonymous.
pub const VMA_FILL_MAP: u32 = 3;
/// Premapped (memory a child shares copy-on-write with its parent, see crest's
/// `restore/cow.rs`): the task mapped and filled the VMA before the restorer ran, at
/// `file_offset` inside `RestorerArgs::premap_area`; the restorer moves it into place with
/// mremap (keeping the sharing) and maps nothing.
pub const VMA_FILL_PREMAPPED: u32 = 4;

/// Most madvise() advices one VMA carries: SEQUENTIAL or RANDOM, DONTFORK, DONTDUMP, HUGEPAGE
/// or NOHUGEPAGE, WIPEONFORK, MERGEABLE (6), with room to spare.
pub const MAX_MADVISE: usize = 8;
/// `VmaArg::extra`: lock the VMA with mlock2(MLOCK_ONFAULT) (smaps `lf`), after filling it.
pub const VMA_EXTRA_LOCK_ONFAULT: u32 = 1;
/// `VmaArg::extra`: seal the VMA with mseal() (smaps `sl`), last.
pub const VMA_EXTRA_SEAL: u32 = 2;
/// `VmaArg::extra`: the VMA is a SysV shared memory attachment: attach segment `fd` (its id)
/// with shmat at `start` instead of mmap (read-only without PROT_WRITE, executable with
/// PROT_EXEC), then apply `prot` if it differs.
pub const VMA_EXTRA_SHMAT: u32 = 4;
/// Longest name PR_SET_VMA_ANON_NAME takes, in bytes, the terminating NUL included
/// (ANON_VMA_NAME_MAX_LEN, include/linux/mm_types.h).
pub const VMA_NAME_MAX: usize = 80;

/// One VMA to map, with the exact arguments of its `mmap` call.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct VmaArg {
    pub start: u64,
    pub len: u64,
    /// Final protection, applied with mprotect after the pages are filled.
    pub prot: u32,
    /// mmap flags (MAP_PRIVATE/MAP_SHARED, MAP_ANONYMOUS, MAP_GROWSDOWN, MAP_NORESERVE, ...);
    /// the restorer adds MAP_FIXED itself.
    pub flags: u32,
    /// fd of the backing file in the task, or -1 for anonymous memory.
    pub fd: i32,
    /// VMA_FILL_*.
    pub fill: u32,
    /// Byte offset in the backing file.
    pub file_offset: u64,
    /// madvise() advice values to apply after mapping (0 = none), e.g. MADV_DONTFORK; room for
    /// every advice a VMA can carry at once (see `MAX_MADVISE`).
    pub madvise: [u32; MAX_MADVISE],
    /// VMA_EXTRA_* bits: what else to do once the VMA is mapped and filled.
    pub extra: u32,
    /// With `VMA_FILL_MAP`: how many runs after the `nr_runs` mapped ones are ranges of those
    /// to fault in written at once (MADV_POPULATE_WRITE: the pages the program writes first;
    /// copied now, while the process has one thread, each saves a copy-on-write fault later,
    /// and the TLB shootdown that fault sends to every other CPU running the process). Their
    /// `file_offset` is unused. 0 otherwise.
    pub nr_hot_runs: u32,
    /// Index of the first of this VMA's page runs in `RestorerArgs::runs`, and their count.
    pub first_run: u32,
    pub nr_runs: u32,
    /// Address (inside the bootstrap region) of the NUL-terminated name to give the VMA with
    /// prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME) once it is mapped (`[anon:NAME]` or
    /// `[anon_shmem:NAME]` in maps), at most `VMA_NAME_MAX` bytes with the NUL; 0: no name.
    pub name: u64,
}

/// `len` bytes at `vaddr` come from `file_offset` of the page file.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct PageRunArg {
    pub vaddr: u64,
    pub len: u64,
    pub file_offset: u64,
}

/// `struct prctl_mm_map` for PR_SET_MM / PR_SET_MM_MAP (include/uapi/linux/prctl.h), 104 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct PrctlMmMap {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    /// Pointer to the auxv words (crest points it at `RestorerArgs::auxv`).
    pub auxv: u64,
    /// Size of the auxv in bytes.
    pub auxv_size: u32,
    /// fd of the executable for /proc/PID/exe, or -1 to keep it.
    pub exe_fd: u32,
}

/// `struct clone_args` (include/uapi/linux/sched.h), the 88-byte version with set_tid and
/// cgroup. Not part of the contract as such: kept here because both crest (forking the task) and
/// the restorer (creating its threads) call clone3.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}

/// The thread's rseq registration to recreate (`present == 0`: none).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct RseqArg {
    pub present: u32,
    pub len: u32,
    pub signature: u32,
    pub _pad: u32,
    pub ptr: u64,
}

/// Where the restorer got to, written into `RestorerArgs::progress` before each step so that
/// crest can say which step failed (the blob has no other way to report).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Start = 1,
    ParkSpecial = 2,
    UnmapOwn = 3,
    MapVma = 4,
    FillPages = 5,
    ProtectVma = 6,
    Madvise = 7,
    PlaceSpecial = 8,
    SetMm = 9,
    CloseFds = 10,
    Rseq = 11,
    ThreadArea = 12,
    Sigreturn = 13,
    BadArgs = 14,
    Timers = 15,
    CreateThread = 16,
    ThreadSetup = 17,
    /// Switching to the image's credentials; `detail` says which call (CREDS_STEP_*).
    Creds = 18,
    LockVma = 19,
    SealVma = 20,
    PosixLock = 21,
    NameVma = 22,
    /// Registering a lazy VMA with the userfaultfd (`detail`: its start).
    RegisterLazy = 23,
    /// Mapping a page run of the page file over a VMA (`detail`: the run's address).
    MapPages = 24,
    /// Moving a premapped VMA into place with mremap (`detail`: its start).
    MovePremapped = 25,
}

/// `Progress::detail` of a `Step::Creds` failure (and of a thread's `ThreadSetup` failure in
/// its credential switch, as `CREDS_DETAIL_BASE + CREDS_STEP_*`): which call failed.
pub const CREDS_STEP_KEEP_CAPS: u64 = 1;
pub const CREDS_STEP_SETGROUPS: u64 = 2;
pub const CREDS_STEP_SETRESGID: u64 = 3;
pub const CREDS_STEP_SETFSGID: u64 = 4;
pub const CREDS_STEP_SETRESUID: u64 = 5;
pub const CREDS_STEP_SETFSUID: u64 = 6;
pub const CREDS_STEP_CAPSET_INHERITABLE: u64 = 7;
pub const CREDS_STEP_AMBIENT: u64 = 8;
pub const CREDS_STEP_BOUNDING: u64 = 9;
pub const CREDS_STEP_SECUREBITS: u64 = 10;
pub const CREDS_STEP_CAPSET: u64 = 11;
/// A thread's `ThreadSetup` detail for a failed credential switch step.
pub const CREDS_DETAIL_BASE: u64 = 1 << 32;

/// The name of a CREDS_STEP_* value, for messages.
pub fn creds_step_name(step: u64) -> &'static str {
    match step {
        CREDS_STEP_KEEP_CAPS => "prctl(PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP)",
        CREDS_STEP_SETGROUPS => "setgroups",
        CREDS_STEP_SETRESGID => "setresgid",
        CREDS_STEP_SETFSGID => "setfsgid",
        CREDS_STEP_SETRESUID => "setresuid",
        CREDS_STEP_SETFSUID => "setfsuid",
        CREDS_STEP_CAPSET_INHERITABLE => "capset (inheritable set)",
        CREDS_STEP_AMBIENT => "prctl(PR_CAP_AMBIENT_RAISE)",
        CREDS_STEP_BOUNDING => "prctl(PR_CAPBSET_DROP)",
        CREDS_STEP_SECUREBITS => "prctl(PR_SET_SECUREBITS)",
        CREDS_STEP_CAPSET => "capset",
        _ => "an unknown call",
    }
}

impl Step {
    pub fn from_u32(v: u32) -> Option<Step> {
        Some(match v {
            1 => Step::Start,
            2 => Step::ParkSpecial,
            3 => Step::UnmapOwn,
            4 => Step::MapVma,
            5 => Step::FillPages,
            6 => Step::ProtectVma,
            7 => Step::Madvise,
            8 => Step::PlaceSpecial,
            9 => Step::SetMm,
            10 => Step::CloseFds,
            11 => Step::Rseq,
            12 => Step::ThreadArea,
            13 => Step::Sigreturn,
            14 => Step::BadArgs,
            15 => Step::Timers,
            16 => Step::CreateThread,
            17 => Step::ThreadSetup,
            18 => Step::Creds,
            19 => Step::LockVma,
            20 => Step::SealVma,
            21 => Step::PosixLock,
            22 => Step::NameVma,
            23 => Step::RegisterLazy,
            24 => Step::MapPages,
            25 => Step::MovePremapped,
            _ => return None,
        })
    }

    pub fn describe(self) -> &'static str {
        match self {
            Step::Start => "starting",
            Step::ParkSpecial => "parking the vDSO/vvar",
            Step::UnmapOwn => "unmapping crest's own memory",
            Step::MapVma => "mapping a VMA",
            Step::FillPages => "copying pages from the page file",
            Step::ProtectVma => "setting a VMA's protection",
            Step::Madvise => "applying madvise to a VMA",
            Step::PlaceSpecial => "moving the vDSO/vvar into place",
            Step::SetMm => "setting the mm fields (PR_SET_MM_MAP)",
            Step::CloseFds => "closing helper fds",
            Step::Rseq => "registering rseq",
            Step::ThreadArea => "setting the thread pointer",
            Step::Sigreturn => "returning into the saved registers (rt_sigreturn)",
            Step::BadArgs => "checking its arguments",
            Step::Timers => "arming the interval and POSIX timers",
            Step::CreateThread => "creating a thread (clone3 with set_tid)",
            Step::ThreadSetup => {
                "setting up a thread (tid address, robust list, rseq, pending signals, \
                 credentials)"
            }
            Step::Creds => "switching to the image's credentials",
            Step::LockVma => "locking a VMA on fault (mlock2 MLOCK_ONFAULT)",
            Step::SealVma => "sealing a VMA (mseal)",
            Step::PosixLock => "taking back a POSIX lock (fcntl F_SETLK)",
            Step::NameVma => {
                "naming an anonymous VMA (prctl PR_SET_VMA_ANON_NAME; the kernel needs \
                 CONFIG_ANON_VMA_NAME)"
            }
            Step::RegisterLazy => {
                "registering a lazy VMA with the userfaultfd (ioctl UFFDIO_REGISTER)"
            }
            Step::MapPages => "mapping pages of the page file over a VMA (mmap MAP_PRIVATE)",
            Step::MovePremapped => {
                "moving memory shared with the parent process into place (mremap)"
            }
        }
    }
}

/// `Progress::detail` of a `Step::BadArgs` failure: which check of `RestorerArgs` failed.
pub const BAD_ARGS_MAGIC: u64 = 1;
pub const BAD_ARGS_VERSION: u64 = 2;
/// `nr_special` exceeds MAX_SPECIAL_MOVES.
pub const BAD_ARGS_NR_SPECIAL: u64 = 3;
/// An array pointer is not 8-byte aligned.
pub const BAD_ARGS_ALIGNMENT: u64 = 4;

/// Progress and error report, shared with crest through the bootstrap mapping.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// The `Step` being carried out.
    pub step: u32,
    /// Negative errno of the failing syscall, 0 while all is well.
    pub error: i32,
    /// The address or index the step was working on (VMA start, run address, fd).
    pub detail: u64,
}

/// Everything the restorer needs, at the start of the args area of the bootstrap region.
/// The arrays it points at (`unmap`, `vmas`, `runs`, `close_fds`) must be 8-byte aligned: the
/// restorer reads them with aligned loads and refuses (BAD_ARGS_ALIGNMENT) otherwise.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RestorerArgs {
    pub magic: u64,
    pub abi_version: u32,
    /// Page size the image and this machine share.
    pub page_size: u32,
    pub progress: Progress,

    /// The whole bootstrap region (never unmapped by the restorer itself).
    pub bootstrap: Range,
    /// crest's own mappings in the child, to unmap (bootstrap and vDSO/vvar excluded):
    /// a `Range` array.
    pub unmap: u64,
    pub nr_unmap: u64,
    /// vDSO/vvar pieces to park and then place.
    pub special: [SpecialMove; MAX_SPECIAL_MOVES],
    pub nr_special: u64,

    /// `VmaArg` array, sorted by address.
    pub vmas: u64,
    pub nr_vmas: u64,
    /// `PageRunArg` array, sorted by address.
    pub runs: u64,
    pub nr_runs: u64,
    /// fd of the page file, -1 when no page is stored.
    pub pages_fd: i32,
    pub _pad0: u32,

    /// Helper fds (page file, mapped files, exe) to close once memory is in place: an `i32` array.
    pub close_fds: u64,
    pub nr_close_fds: u64,

    pub mm: PrctlMmMap,
    pub auxv: [u64; MAX_AUXV_WORDS],

    pub rseq: RseqArg,
    /// x86_64: FS and GS base (not restored by rt_sigreturn). aarch64: tls[0] = TPIDR_EL0.
    pub tls: [u64; 2],

    /// Stack pointer value for the final rt_sigreturn (x86_64: the frame address + 8).
    pub sigreturn_sp: u64,

    /// ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF, armed right before rt_sigreturn so no expiry
    /// is lost to the morph; only when `nr_itimers` is 3 (0: the image has none recorded).
    pub itimers: [ITimerVal; 3],
    pub nr_itimers: u32,
    pub _pad1: u32,
    /// `PosixTimerArm` array: POSIX timers crest already created (with their original ids) in
    /// the task, armed right before rt_sigreturn.
    pub posix_timers: u64,
    pub nr_posix_timers: u64,

    /// `ThreadArg` array: every thread but the leader, created by the restorer once the memory
    /// is in place.
    pub threads: u64,
    pub nr_threads: u64,

    /// The credentials every thread switches to once its creation and everything else that
    /// needs crest's privileges is done (`present == 0`: keep crest's own).
    pub creds: CredsArg,
    /// The image's SIGTRAP disposition. The restorer's breakpoints make the kernel reset an
    /// ignored or blocked SIGTRAP to SIG_DFL (`force_sig_info_to_task`), so crest installs this
    /// through the syscall gadget after the last breakpoint.
    pub sigtrap_action: KernelSigaction,
    /// `PosixLockArg` array: the process's POSIX locks, taken after `close_fds` (any close of a
    /// file by its owner drops the owner's POSIX locks on it; `Progress::detail` = index).
    pub posix_locks: u64,
    pub nr_posix_locks: u64,
    /// The userfaultfd of lazy pages: `UFFD_NONE` without lazy VMAs; `UFFD_WANTED` when the
    /// forked task must create one before the jump (it writes the fd number here); the
    /// restorer registers every `VMA_FILL_LAZY` VMA with it and closes it right after mapping
    /// the memory, so the restored process never holds it (crest has its own copy).
    pub uffd: i32,
    pub _pad2: u32,
    /// Where the task's premapped VMAs wait (`VMA_FILL_PREMAPPED`), with the slots of other
    /// processes it inherited: kept by the unmap of crest's mappings, unmapped whole once the
    /// VMAs are moved out. `len == 0`: none.
    pub premap_area: Range,
}

/// `RestorerArgs::uffd`: no lazy pages.
pub const UFFD_NONE: i32 = -1;
/// `RestorerArgs::uffd`: the task creates the userfaultfd before jumping into the restorer.
pub const UFFD_WANTED: i32 = -2;

/// Credentials for the restorer to switch to, in the order that keeps the capabilities needed
/// for each step (see `switch_creds` in the restorer).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct CredsArg {
    /// 0: no switch (the image runs with crest's own credentials).
    pub present: u32,
    /// PR_GET_SECUREBITS of the image.
    pub securebits: u32,
    /// Real, effective, saved, filesystem.
    pub uid: [u32; 4],
    pub gid: [u32; 4],
    /// `u32` array of supplementary groups (8-byte aligned), for setgroups.
    pub groups: u64,
    pub nr_groups: u64,
    pub cap_inheritable: u64,
    pub cap_permitted: u64,
    pub cap_effective: u64,
    pub cap_bounding: u64,
    pub cap_ambient: u64,
    /// /proc/sys/kernel/cap_last_cap of the restoring kernel: the highest bit to look at.
    pub last_cap: u32,
    /// The parent-death signal the leader sets again after its switch (a credential change
    /// clears it), 0 for none.
    pub pdeath_signal: u32,
}

/// The kernel's `struct flock` on 64-bit architectures (include/uapi/asm-generic/fcntl.h),
/// 32 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Flock {
    /// F_RDLCK (0), F_WRLCK (1) or F_UNLCK (2).
    pub l_type: i16,
    /// SEEK_SET (0): `l_start` is an absolute offset.
    pub l_whence: i16,
    pub _pad0: i32,
    pub l_start: i64,
    /// 0: to the end of the file, however far it grows.
    pub l_len: i64,
    pub l_pid: i32,
    pub _pad1: i32,
}

/// One POSIX lock to take with `fcntl(fd, F_SETLK, &lock)`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct PosixLockArg {
    pub fd: i32,
    pub _pad: i32,
    pub lock: Flock,
}

/// One thread the restorer creates with clone3(CLONE_THREAD, set_tid = [tid]). The new thread
/// starts on `stack_top`, sets up what is per-thread, stops on a breakpoint (crest traces it)
/// and returns into its saved registers with rt_sigreturn from its own frame.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadArg {
    pub tid: i32,
    /// 0 until crest traces the thread, then [`THREAD_GO`] (crest writes it and wakes the
    /// futex): the thread waits for it before its breakpoint, which only a traced thread may
    /// reach.
    pub go: i32,
    /// 16-byte aligned top of this thread's restorer stack, inside the bootstrap region.
    pub stack_top: u64,
    pub stack_size: u64,
    /// The thread's alternate signal stack to set with sigaltstack (`altstack_size == 0`:
    /// none, as a new thread starts). The thread goes back into its own registers through
    /// ptrace, not rt_sigreturn, so nothing else would restore it.
    pub altstack_sp: u64,
    pub altstack_size: u64,
    pub altstack_flags: u64,
    /// x86_64: FS base (via CLONE_SETTLS) and GS base. aarch64: TPIDR_EL0 in tls[0].
    pub tls: [u64; 2],
    pub rseq: RseqArg,
    pub clear_child_tid: u64,
    pub robust_list: u64,
    pub robust_list_len: u64,
    /// 128-byte siginfos pending for this thread only, queued again by the thread itself.
    pub pending: u64,
    pub nr_pending: u64,
    /// Written by the thread when a step fails (the process then exits).
    pub progress: Progress,
    /// The `RestorerArgs` (for the credentials every thread switches to).
    pub args: u64,
    /// The thread's name for PR_SET_NAME, NUL-terminated; empty keeps the leader's.
    pub name: [u8; 16],
}

/// The value of `ThreadArg::go` that lets a created thread go on to its breakpoint.
pub const THREAD_GO: i32 = 1;

/// One POSIX timer to arm with timer_settime(id, 0, &spec, NULL).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct PosixTimerArm {
    pub id: i32,
    pub _pad: i32,
    pub spec: ITimerSpec,
}

// ------------------------------------------------------------------------------------------
// The parasite: runs inside a stopped task of the process being dumped.
//
// crest maps the parasite blob into the task through a shared memfd (also mapped in crest),
// writes a `ParasiteArgs` into the shared area, points the thread's registers at
// `parasite_main(args)` on a stack inside the area, and lets it run with every signal blocked.
// The parasite carries out `cmd`, writes its results into the same area, and stops on a
// breakpoint (int3 / brk #0); crest reads the results and puts the thread back as it was.
// ------------------------------------------------------------------------------------------

/// `ParasiteArgs::magic`: "CRESTPAR" little-endian.
pub const PARASITE_MAGIC: u64 = 0x5241_5054_5345_5243;

/// Collect all process-wide and thread state the parasite can see (see `ParasiteState`).
pub const PARASITE_CMD_COLLECT: u32 = 1;
/// Do nothing and stop at once (used to check the blob runs, and by fault-injection tests).
pub const PARASITE_CMD_PING: u32 = 2;
/// Collect only the running thread's own state: `altstack`, `clear_child_tid`, `robust_list`,
/// `robust_list_len`, `name` and `securebits` of `ParasiteState` (the rest stays zero). crest runs COLLECT once, in
/// the leader, and this in every other thread.
pub const PARASITE_CMD_COLLECT_THREAD: u32 = 3;

/// Most POSIX timers one collection reports.
pub const MAX_POSIX_TIMERS: usize = 64;

/// `ParasiteArgs::failed_call`: which call of the command failed first (0: none).
/// `failed_arg` then says which instance: the signal, the timer index, the itimer.
/// The arguments themselves were unusable (bad magic, version, command or timer count).
pub const PARASITE_CALL_ARGS: u32 = 1;
/// rt_sigaction(failed_arg, NULL, &old).
pub const PARASITE_CALL_SIGACTION: u32 = 2;
/// sigaltstack(NULL, &old).
pub const PARASITE_CALL_SIGALTSTACK: u32 = 3;
/// getitimer(failed_arg).
pub const PARASITE_CALL_GETITIMER: u32 = 4;
/// timer_gettime / timer_getoverrun of timer_ids[failed_arg].
pub const PARASITE_CALL_TIMER: u32 = 5;
/// prctl(PR_GET_TID_ADDRESS).
pub const PARASITE_CALL_TID_ADDRESS: u32 = 6;
/// get_robust_list(0, ...).
pub const PARASITE_CALL_ROBUST_LIST: u32 = 7;
/// personality(0xffffffff).
pub const PARASITE_CALL_PERSONALITY: u32 = 8;
/// prctl(PR_GET_PDEATHSIG).
pub const PARASITE_CALL_PDEATHSIG: u32 = 9;
/// prctl(PR_GET_DUMPABLE).
pub const PARASITE_CALL_DUMPABLE: u32 = 10;
/// prctl(PR_GET_NO_NEW_PRIVS).
pub const PARASITE_CALL_NO_NEW_PRIVS: u32 = 11;
/// prctl(PR_GET_CHILD_SUBREAPER).
pub const PARASITE_CALL_CHILD_SUBREAPER: u32 = 12;
/// prctl(PR_GET_NAME).
pub const PARASITE_CALL_NAME: u32 = 13;
/// prctl(PR_GET_SECUREBITS).
pub const PARASITE_CALL_SECUREBITS: u32 = 14;

/// The kernel's `struct sigaction` as rt_sigaction reads and writes it (x86_64 and aarch64).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelSigaction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

/// `stack_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct StackT {
    pub sp: u64,
    pub flags: i32,
    pub _pad: i32,
    pub size: u64,
}

/// `struct itimerval` (timevals as seconds and microseconds).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ITimerVal {
    pub interval_sec: i64,
    pub interval_usec: i64,
    pub value_sec: i64,
    pub value_usec: i64,
}

/// `struct itimerspec` (timespecs as seconds and nanoseconds).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ITimerSpec {
    pub interval_sec: i64,
    pub interval_nsec: i64,
    pub value_sec: i64,
    pub value_nsec: i64,
}

/// One POSIX timer as the parasite reads it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct TimerState {
    pub spec: ITimerSpec,
    pub overrun: i32,
    /// 0, or the negative errno of timer_gettime/timer_getoverrun.
    pub error: i32,
}

/// What `PARASITE_CMD_COLLECT` reports (`PARASITE_CMD_COLLECT_THREAD`: only the per-thread
/// fields `altstack`, `clear_child_tid`, `robust_list`, `robust_list_len`, `name`, `tsc`,
/// `mce_kill`, `speculation`, `tagged_addr`, `timerslack`). Each field
/// is the raw result of the named call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ParasiteState {
    /// rt_sigaction(sig, NULL, &old) for sig = 1..=64 (index sig - 1; SIGKILL/SIGSTOP included).
    pub sigactions: [KernelSigaction; 64],
    /// sigaltstack(NULL, &old).
    pub altstack: StackT,
    /// getitimer(ITIMER_REAL / ITIMER_VIRTUAL / ITIMER_PROF).
    pub itimers: [ITimerVal; 3],
    /// timer_gettime + timer_getoverrun for each of `ParasiteArgs::timer_ids`.
    pub timers: [TimerState; MAX_POSIX_TIMERS],
    /// prctl(PR_GET_TID_ADDRESS).
    pub clear_child_tid: u64,
    /// get_robust_list(0, &head, &len).
    pub robust_list: u64,
    pub robust_list_len: u64,
    /// personality(0xffffffff).
    pub personality: u64,
    /// prctl(PR_GET_PDEATHSIG), prctl(PR_GET_DUMPABLE), prctl(PR_GET_NO_NEW_PRIVS),
    /// prctl(PR_GET_CHILD_SUBREAPER).
    pub pdeath_signal: u64,
    pub dumpable: u64,
    pub no_new_privs: u64,
    pub child_subreaper: u64,
    /// prctl(PR_GET_NAME): the running thread's name (comm), NUL-padded.
    pub name: [u8; 16],
    /// prctl(PR_GET_SECUREBITS) of the running thread (securebits are per-thread credentials).
    pub securebits: u64,
    /// Process-wide, each the raw result (a negative errno when the kernel lacks the call):
    /// prctl(PR_GET_THP_DISABLE), membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS),
    /// prctl(PR_GET_MDWE), prctl(PR_GET_MEMORY_MERGE).
    pub thp_disable: i64,
    pub membarrier: i64,
    pub mdwe: i64,
    pub memory_merge: i64,
    /// The running thread's own, raw like the above: prctl(PR_GET_TSC) (the value it stores,
    /// or the negative errno), prctl(PR_MCE_KILL_GET), prctl(PR_GET_SPECULATION_CTRL) for
    /// PR_SPEC_STORE_BYPASS, PR_SPEC_INDIRECT_BRANCH and PR_SPEC_L1D_FLUSH,
    /// prctl(PR_GET_TAGGED_ADDR_CTRL), prctl(PR_GET_TIMERSLACK).
    pub tsc: i64,
    pub mce_kill: i64,
    pub speculation: [i64; 3],
    pub tagged_addr: i64,
    pub timerslack: i64,
}

/// Everything exchanged with the parasite, at the start of the args area of its mapping.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ParasiteArgs {
    pub magic: u64,
    pub abi_version: u32,
    /// PARASITE_CMD_*.
    pub cmd: u32,
    /// Written by the parasite: 1 when the command completed.
    pub done: u32,
    /// Written by the parasite: 0, or the negative errno of the first call that failed.
    pub error: i32,
    /// Which call failed first (PARASITE_CALL_*), 0 when none.
    pub failed_call: u32,
    /// Which instance of that call (signal number, timer index, itimer), see PARASITE_CALL_*.
    pub failed_arg: u32,
    /// Input: the POSIX timer ids to read (from /proc/PID/timers), at most MAX_POSIX_TIMERS.
    pub nr_timer_ids: u32,
    pub _pad: u32,
    pub timer_ids: [i32; MAX_POSIX_TIMERS],
    pub state: ParasiteState,
}
