//! Every structure crest writes to disk, in one place.
//!
//! Metadata files hold one of these structures encoded with postcard (compact, serde-driven);
//! page files hold raw page-aligned bytes and no header, so a restore can `mmap` them or serve
//! them through userfaultfd. `crest show --json` prints these same structures through serde_json.
//!
//! Changing a structure here changes the on-disk format: bump [`crate::FORMAT_VERSION`].

use serde::{Deserialize, Serialize};

/// The machine architecture an image was taken on. A restore refuses any other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// The architecture this build of crest runs on.
    pub fn host() -> Arch {
        if cfg!(target_arch = "aarch64") {
            Arch::Aarch64
        } else {
            Arch::X86_64
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }
}

/// What a file listed in the inventory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileRole {
    /// A postcard-encoded [`ProcessImage`] (`process-<pid>.img`).
    Process,
    /// Raw page data (`pages-<pid>.img`), addressed by [`PageRun::file_offset`].
    Pages,
}

/// One file of the image directory, as the inventory records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name inside the image directory (no slashes).
    pub name: String,
    pub role: FileRole,
    /// Exact size in bytes.
    pub size: u64,
    /// BLAKE3 hash of the whole file. Metadata files are always checked against it;
    /// page files only by `crest verify` / `crest restore --verify`.
    pub blake3: [u8; 32],
}

/// The image's table of contents: `inventory.img`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    pub arch: Arch,
    /// Page size of the dumping machine, in bytes.
    pub page_size: u64,
    /// `uname -r` of the dumping machine (informational; the vDSO check is what matters).
    pub kernel_release: String,
    /// Version of crest that wrote the image.
    pub crest_version: String,
    /// Unix time of the dump, in milliseconds.
    pub created_unix_ms: u64,
    /// Pid of the root of the dumped tree.
    pub root_pid: i32,
    /// Every other file of the image.
    pub files: Vec<FileEntry>,
    pub stats: DumpStats,
    /// Every task of the dumped tree, the root first, parents before their children: live
    /// processes (each with a `process-<pid>.img`) and zombies.
    pub tree: Vec<TreeTask>,
    /// Set when the tree was attached to the terminal crest dump ran on (`--shell-job`): a
    /// restore needs `--shell-job` too, and gives the tree the terminal crest restore runs on.
    pub shell_job: Option<ShellJob>,
    /// Terminals of the machine itself (a virtual console, a serial port) that were the
    /// controlling terminal of a session led by a task of the tree.
    pub machine_ttys: Vec<MachineTty>,
    /// The session of the root's parent at dump time (the one the tree was started from; 0: a
    /// session led outside crest's pid namespace, as in a container), or -1 when unknown (the
    /// root's parent itself is outside crest's pid namespace). A restore gives the root's own
    /// session, when no task of the tree leads it, and this one to crest's session; any other
    /// session whose leader has exited is made again by a helper.
    pub caller_sid: i32,
    /// The tree's monotonic and boot-time clocks when it was frozen, as its processes read them
    /// (their time namespace's offsets included). A restore gives the tree a time namespace
    /// whose clocks carry on from these values, as after a suspend, unless told otherwise.
    pub clocks: TreeClocks,
}

/// Readings of the clocks a time namespace virtualizes, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeClocks {
    /// CLOCK_MONOTONIC.
    pub monotonic_ns: i64,
    /// CLOCK_BOOTTIME.
    pub boottime_ns: i64,
}

/// A terminal of the machine (a virtual console `/dev/ttyN`, a serial port) that controlled a
/// session of the tree. Its device node reaches the same terminal at restore: the session's
/// leader opens `path` after its `setsid()` and takes the terminal with `TIOCSCTTY` (which
/// fails when another session controls it), and the foreground group is set again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineTty {
    /// A device node of the terminal (one a process of the tree had open, else one under /dev).
    pub path: String,
    /// Its device number at dump time; the node must still have it.
    pub rdev: u64,
    /// The session it controlled: a task of the tree that leads its session.
    pub session: i32,
    /// Its foreground process group, when a task of the tree led it.
    pub foreground: Option<i32>,
}

/// How a tree dumped with `--shell-job` used the terminal of the shell that ran crest. Every fd
/// of the tree on that terminal is a [`FileKind::ShellTerminal`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShellJob {
    /// The terminal's device number (st_rdev) at dump time: crest's standard input then.
    pub rdev: u64,
    /// The session whose controlling terminal it was, when processes of the tree had it as
    /// their controlling terminal: a pid of the tree (its session leader, which takes the
    /// restoring crest's terminal as controlling terminal after its setsid), or the session
    /// the root was started in (crest's own at restore, which must have the terminal as its
    /// controlling terminal already).
    pub ctty_session: Option<i32>,
    /// The terminal's foreground process group at dump time, when it was a group led by a
    /// process of the tree: that process makes its group the foreground one again at restore.
    pub foreground: Option<i32>,
}

/// One process of the dumped tree as the tree sees it: its place (parent, process group,
/// session) and whether it is alive. Ids are as the dumping crest's pid namespace saw them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeTask {
    pub pid: i32,
    /// The parent; for the root, its parent outside the tree (crest becomes its parent).
    pub ppid: i32,
    /// Process group id.
    pub pgid: i32,
    /// Session id.
    pub sid: i32,
    /// The signal the parent gets when this process ends (stat field 38; SIGCHLD normally).
    pub exit_signal: i32,
    pub state: TreeTaskState,
}

impl TreeTask {
    /// The tree of a lone process `pid` in its own process group and session (for tests and
    /// tools that build an image by hand).
    pub fn lone(pid: i32) -> Vec<TreeTask> {
        vec![TreeTask {
            pid,
            ppid: 1,
            pgid: pid,
            sid: pid,
            exit_signal: 17,
            state: TreeTaskState::Alive,
        }]
    }
}

/// Whether a task of the tree was alive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TreeTaskState {
    /// Alive: its `process-<pid>.img` holds the rest.
    Alive,
    /// Exited, not yet reaped by its parent. Restored as a child that exits the same way, so
    /// the parent's wait() reports `wait_status` (exit code << 8, or the killing signal).
    Zombie { wait_status: i32, comm: String },
}

/// What a dump did, for `crest show` and `--stats-json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DumpStats {
    /// Pages covered by the dumped VMAs.
    pub pages_scanned: u64,
    /// Pages neither present nor swapped (nothing to store).
    pub pages_absent: u64,
    /// Pages present in RAM or swapped out: `pages_scanned - pages_absent`.
    pub pages_present: u64,
    /// Present pages skipped because the file behind a mapping holds them unchanged.
    pub pages_file_backed: u64,
    /// Present pages whose content was all zero (not stored).
    pub pages_zero: u64,
    /// Pages stored in page files.
    pub pages_written: u64,
    /// Bytes of page data written.
    pub bytes_written: u64,
    /// Resident set size of the dumped processes just before the freeze, in bytes.
    pub rss_bytes: u64,
    /// What asking the JVM to collect its garbage before the freeze did.
    pub gc_hint: GcHintStats,
    /// Named phases and their duration in microseconds, in the order they ran.
    pub phases_us: Vec<(String, u64)>,
    /// Microseconds the target was stopped: from the freeze until it was released (`-R`), or
    /// until the image was complete (otherwise; the kill follows at once).
    pub frozen_us: u64,
}

/// The GC hint of a dump: HotSpot JVMs are asked for a full GC (and to give free heap and
/// native memory back) through the attach API before they are frozen.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub enum GcHintStats {
    /// The process is not a HotSpot JVM (or the image predates the hint).
    #[default]
    NotAJvm,
    /// Turned off (`--no-gc-hint`).
    Off,
    /// Not done, and why (attach disabled, no answer in time, ...); the dump went on without it.
    Skipped {
        reason: String,
    },
    Done(GcHintDone),
}

/// What a completed GC hint reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GcHintDone {
    /// Attach protocol version spoken (1 up to JDK 23, 2 from JDK 24).
    pub protocol_version: u32,
    /// Java heap committed and used before the GC, in bytes (0 when the JVM did not say).
    pub heap_committed_before: u64,
    pub heap_used_before: u64,
    /// The same after the GC and the heap shrink.
    pub heap_committed_after: u64,
    pub heap_used_after: u64,
    /// The JVM's answer to `System.trim_native_heap`, when the JDK has it.
    pub native_trim: Option<String>,
    /// Resident set size before the hint, in bytes (compare with [`DumpStats::rss_bytes`]).
    pub rss_before_bytes: u64,
    /// Microseconds the hint took (the process ran meanwhile).
    pub elapsed_us: u64,
}

/// One process of the dumped tree: `process-<pid>.img`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessImage {
    pub pid: i32,
    /// Parent pid at dump time (the inventory's tree is what a restore follows).
    pub ppid: i32,
    /// `comm` (thread name of the leader, at most 15 bytes).
    pub comm: String,
    pub creds: Creds,
    /// Index into [`ProcessImage::files`] of `/proc/PID/exe`.
    pub exe_file: u32,
    /// Threads; the first is the leader (tid == pid).
    pub threads: Vec<ThreadImage>,
    pub mm: MmFields,
    /// Memory areas, sorted by address, not overlapping. `[vsyscall]` is never listed.
    pub vmas: Vec<Vma>,
    /// Stored pages, sorted by address; each run lies inside one VMA.
    pub page_runs: Vec<PageRun>,
    /// Name of the page file inside the image directory (`pages-<pid>.img`).
    pub pages_file: String,
    /// Files this process maps or has open, each checked at restore.
    pub files: Vec<FileIdentity>,
    /// Open file descriptions; several fds may share one (dup, fork).
    pub open_files: Vec<OpenFileDescription>,
    pub fds: Vec<Fd>,
    /// Current working directory, as an index into [`ProcessImage::files`].
    pub cwd_file: u32,
    /// Root directory (chroot), as an index into [`ProcessImage::files`]; None when it is the
    /// root of crest's mount namespace ("/"). A restore enters it last, after every file of
    /// the process was opened and bound by the paths crest sees.
    pub root_file: Option<u32>,
    pub umask: u32,
    pub rlimits: Vec<Rlimit>,
    /// Signals whose disposition is SIG_IGN (bit n-1 for signal n), from /proc/PID/status.
    pub sig_ignored: u64,
    /// Signals with a handler installed (bit n-1 for signal n), from /proc/PID/status.
    pub sig_caught: u64,
    /// BLAKE3 of the `[vdso]` contents at dump; a restore needs the same vDSO.
    pub vdso_blake3: Option<[u8; 32]>,
    /// Process-wide state only the process itself can report (collected by the parasite).
    pub task: TaskState,
    /// POSIX record locks (fcntl F_SETLK, lockf) the process holds. flock and OFD locks belong
    /// to open file descriptions instead ([`OpenFileDescription::locks`]).
    pub posix_locks: Vec<PosixLock>,
    /// flock locks held by open file descriptions that only the process's mappings refer to.
    pub mapping_locks: Vec<MappingLock>,
    /// Stored content of the memfds ([`FileKind::Memfd`]) of [`ProcessImage::files`] whose
    /// content this process holds: each memfd's content is stored once in the tree, by the
    /// first process (in tree order) that has it open or mapped. Sorted by memfd, then offset.
    pub memfd_runs: Vec<MemfdRun>,
    /// The SysV shared memory segments this process is the first of the tree to attach
    /// (each segment is stored once in the tree), with their content in its page file.
    pub sysv_shm: Vec<SysvShmSegment>,
    /// The content identity of the process's code files: its exe and every file it maps with
    /// PROT_EXEC (one entry per file, sorted by file). A restore checks each before any
    /// process is touched: size and mtime do not catch a library a package upgrade replaced in
    /// place with one of the same size and mtime.
    pub code_ids: Vec<CodeId>,
    /// Stored content of the unlinked files ([`FileKind::Ghost`]) of [`ProcessImage::files`]
    /// whose content this process holds: each ghost file's content is stored once in the tree,
    /// by the first process (in tree order) that has it open or mapped. Sorted by file, then
    /// offset.
    pub ghost_runs: Vec<GhostRun>,
    /// The SysV message queues and semaphore sets processes of the tree used last, stored
    /// once per tree, in the root's image (empty in every other process's).
    pub sysv_ipc: SysvIpc,
    /// The process shares its fd table (clone with CLONE_FILES, not a thread) with this
    /// earlier process of the image, the table's owner: a restore forks it with CLONE_FILES
    /// and installs the table's fds once, the owner's [`ProcessImage::fds`] (this process's
    /// list is the same table). None: a table of its own.
    #[serde(default)]
    pub fd_table_of: Option<i32>,
}

/// SysV message queues and semaphore sets of the tree: each one a process of the tree was the
/// last to use (msg lspid/lrpid, a semaphore's sempid). Restored before any fork under the
/// same id (the ipc sysctls `kernel/msg_next_id`, `kernel/sem_next_id`) and key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysvIpc {
    pub queues: Vec<SysvMsgQueue>,
    pub sems: Vec<SysvSemSet>,
}

/// Id, key, owner and creator, and permission bits of a SysV IPC object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysvIpcPerm {
    pub id: i32,
    /// Key it was created with (IPC_PRIVATE = 0).
    pub key: i32,
    /// Permission bits (the low 9 bits of the mode).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Creator's user and group (the restore creates the object as them).
    pub cuid: u32,
    pub cgid: u32,
}

/// A SysV message queue (msgget) with its queued messages, read without consuming them
/// (msgrcv MSG_COPY). The pid of its last sender and receiver are given back when they are
/// processes of the tree (a short-lived task with that pid sends/receives at restore).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysvMsgQueue {
    pub perm: SysvIpcPerm,
    /// msg_qbytes: the most bytes the queue holds.
    pub qbytes: u64,
    /// Last sender and receiver (msg_lspid, msg_lrpid); 0 for none.
    pub last_sender: i32,
    pub last_receiver: i32,
    /// Queued messages, oldest first.
    pub messages: Vec<SysvMessage>,
}

/// One queued message: its type (positive) and bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysvMessage {
    pub mtype: i64,
    pub data: Vec<u8>,
}

/// A SysV semaphore set (semget): each semaphore's value and the pid of the last process to
/// operate on it (sempid; given back when it is a process of the tree). SEM_UNDO adjustments
/// of the tree's processes are not visible from outside: not captured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysvSemSet {
    pub perm: SysvIpcPerm,
    pub values: Vec<u16>,
    /// sempid of each semaphore, as many as `values`.
    pub pids: Vec<i32>,
}

/// `npages` consecutive stored pages of the unlinked file `file` (an index into
/// [`ProcessImage::files`], a regular [`FileKind::Ghost`]), from byte `offset` of it, found at
/// `file_offset` of the page file. Holes (SEEK_HOLE) and pages holding only zeros are not
/// stored: they read as zero after the restore, which sizes the file first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GhostRun {
    pub file: u32,
    /// Byte offset in the file; a multiple of the page size.
    pub offset: u64,
    pub npages: u64,
    /// Byte offset in the page file; a multiple of the page size.
    pub file_offset: u64,
}

/// A SysV shared memory segment (shmget) that processes of the tree attach. Restored under
/// the same id (through the ipc sysctl `kernel/shm_next_id`) and key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysvShmSegment {
    pub id: i32,
    /// Key it was created with (IPC_PRIVATE = 0); a segment marked for removal has key 0.
    pub key: i32,
    /// Permission bits (the low 9 bits of `shm_perm.mode`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Creator's user and group (the restore creates the segment as them).
    pub cuid: u32,
    pub cgid: u32,
    /// Size in bytes given to shmget.
    pub size: u64,
    /// SHM_LOCK was applied (SHM_LOCKED in the mode).
    pub locked: bool,
    /// IPC_RMID was called while it was attached (SHM_DEST): removed again once every
    /// restored process has attached it.
    pub removed: bool,
    /// Stored (non-zero) pages, sorted by offset.
    pub runs: Vec<SysvShmRun>,
}

/// `npages` consecutive stored pages of a SysV segment from byte `offset` of it, found at
/// `file_offset` of the page file of the process whose image holds the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysvShmRun {
    pub offset: u64,
    pub npages: u64,
    pub file_offset: u64,
}

/// What file [`CodeId::file`] (an index into [`ProcessImage::files`]) held at dump time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeId {
    pub file: u32,
    pub digest: CodeDigest,
}

/// How a code file's content is identified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CodeDigest {
    /// The ELF NT_GNU_BUILD_ID note (1 to [`BUILD_ID_MAX`] bytes): the linker derives it from
    /// the content, and reading it costs the ELF and program headers and one note segment.
    BuildId(Vec<u8>),
    /// For a file without a build-id: BLAKE3 over the byte ranges `(offset, length)` of the
    /// file, in order and concatenated. The whole file when it is at most
    /// [`CODE_HASH_WHOLE_MAX`] bytes; else its first [`CODE_HASH_HEAD`] bytes (headers) and
    /// the ranges the process maps executable (the code it runs).
    Blake3 {
        ranges: Vec<(u64, u64)>,
        hash: [u8; 32],
    },
}

/// The longest build-id a [`CodeDigest::BuildId`] holds (SHA-1 ids are 20 bytes).
pub const BUILD_ID_MAX: usize = 64;
/// Files up to this size without a build-id are hashed whole.
pub const CODE_HASH_WHOLE_MAX: u64 = 16 << 20;
/// How much of the start of a larger file without a build-id is hashed.
pub const CODE_HASH_HEAD: u64 = 1 << 20;

/// `npages` consecutive stored pages of the memfd with inode `ino` (a [`FileKind::Memfd`] of
/// the process's files), from byte `offset` of it, found at `file_offset` of the page file.
/// Pages that were never written or hold only zeros are not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemfdRun {
    pub ino: u64,
    /// Byte offset in the memfd; a multiple of the page size.
    pub offset: u64,
    pub npages: u64,
    /// Byte offset in the page file; a multiple of the page size.
    pub file_offset: u64,
}

/// The seals a memfd can carry (F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE,
/// F_SEAL_FUTURE_WRITE, F_SEAL_EXEC).
pub const MEMFD_SEALS: u32 = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20;
/// F_SEAL_SEAL: no more seals may be added (what a memfd made without MFD_ALLOW_SEALING has).
pub const F_SEAL_SEAL: u32 = 0x1;

/// Process-wide state that /proc and ptrace do not show, collected by the parasite, plus the
/// process-wide pending signals (PTRACE_PEEKSIGINFO with PTRACE_PEEKSIGINFO_SHARED).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskState {
    /// Dispositions of signals 1..=64 (index = signal - 1); empty when not collected.
    pub sigactions: Vec<SigAction>,
    /// ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF, in that order.
    pub itimers: Vec<ITimer>,
    pub posix_timers: Vec<PosixTimer>,
    /// Process-wide pending signals, each a raw 128-byte siginfo, oldest first.
    pub shared_pending: Vec<Vec<u8>>,
    /// personality(2) flags.
    pub personality: u32,
    /// PR_GET_PDEATHSIG (0: none).
    pub pdeath_signal: u32,
    /// PR_GET_DUMPABLE.
    pub dumpable: u32,
    /// PR_GET_NO_NEW_PRIVS.
    pub no_new_privs: bool,
    /// PR_GET_CHILD_SUBREAPER.
    pub child_subreaper: bool,
    /// The signal of the group stop the process was in at dump time (SIGSTOP, SIGTSTP,
    /// SIGTTIN or SIGTTOU; it was in state T), 0 when it was not stopped. A restore leaves it
    /// stopped.
    pub group_stop: u32,
    /// Settings of the process outside signals and timers (OOM score, audit login uid,
    /// transparent huge pages, membarrier registrations, per-thread prctl flags the threads
    /// share).
    pub settings: ProcessSettings,
}

/// `/proc/PID/loginuid` of a process that never had one set.
pub const LOGINUID_UNSET: u32 = u32::MAX;

/// The membarrier(2) registrations a process can hold (MEMBARRIER_CMD_REGISTER_*), as
/// MEMBARRIER_CMD_GET_REGISTRATIONS reports them (each as its REGISTER_* command bit,
/// include/uapi/linux/membarrier.h): REGISTER_GLOBAL_EXPEDITED (1 << 2),
/// REGISTER_PRIVATE_EXPEDITED (1 << 4), REGISTER_PRIVATE_EXPEDITED_SYNC_CORE (1 << 6),
/// REGISTER_PRIVATE_EXPEDITED_RSEQ (1 << 8).
pub const MEMBARRIER_REGISTRATIONS: u32 = (1 << 2) | (1 << 4) | (1 << 6) | (1 << 8);

/// Process-wide settings a restore gives back, and the per-thread prctl flags every thread
/// shares (a dump refuses threads that differ from the leader in them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSettings {
    /// `/proc/PID/oom_score_adj`, -1000 to 1000.
    pub oom_score_adj: i32,
    /// `/proc/PID/loginuid` (the audit login uid); [`LOGINUID_UNSET`] when never set.
    pub loginuid: u32,
    /// PR_GET_THP_DISABLE: 0, or 1 with PR_THP_DISABLE_EXCEPT_ADVISED (2) when that was asked.
    pub thp_disable: u32,
    /// MEMBARRIER_CMD_GET_REGISTRATIONS: a subset of [`MEMBARRIER_REGISTRATIONS`].
    pub membarrier: u32,
    /// PR_GET_TSC: PR_TSC_ENABLE (1) or PR_TSC_SIGSEGV (2); 0 where the architecture has no
    /// such control.
    pub tsc: u32,
    /// PR_MCE_KILL_GET: PR_MCE_KILL_LATE (0), PR_MCE_KILL_EARLY (1), PR_MCE_KILL_DEFAULT (2).
    pub mce_kill: u32,
    /// PR_GET_SPECULATION_CTRL for PR_SPEC_STORE_BYPASS, PR_SPEC_INDIRECT_BRANCH and
    /// PR_SPEC_L1D_FLUSH (PR_SPEC_* bits; 0 when the machine is not affected).
    pub speculation: [u32; 3],
}

impl Default for ProcessSettings {
    fn default() -> ProcessSettings {
        ProcessSettings {
            oom_score_adj: 0,
            loginuid: LOGINUID_UNSET,
            thp_disable: 0,
            membarrier: 0,
            tsc: 0,
            mce_kill: 2,
            speculation: [0; 3],
        }
    }
}

/// Scheduling state of one thread: `sched_getattr(2)`, `sched_getaffinity(2)` and the timer
/// slack (`/proc/PID/task/TID/timerslack_ns`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadSched {
    /// SCHED_OTHER (0), SCHED_FIFO (1), SCHED_RR (2), SCHED_BATCH (3), SCHED_IDLE (5),
    /// SCHED_DEADLINE (6), SCHED_EXT (7).
    pub policy: u32,
    /// SCHED_FLAG_RESET_ON_FORK (1) and the other flags sched_getattr reports.
    pub flags: u64,
    /// Nice value, -20 to 19 (SCHED_OTHER, SCHED_BATCH).
    pub nice: i32,
    /// Real-time priority, 1 to 99 (SCHED_FIFO, SCHED_RR), else 0.
    pub priority: u32,
    /// SCHED_DEADLINE parameters in nanoseconds.
    pub runtime: u64,
    pub deadline: u64,
    pub period: u64,
    /// Utilization clamps, 0 to 1024 (the defaults 0 and 1024 mean none asked).
    pub util_min: u32,
    pub util_max: u32,
    /// CPU affinity mask, 64 CPUs per word, CPU n at bit n % 64 of word n / 64.
    pub affinity: Vec<u64>,
    /// Timer slack in nanoseconds (PR_GET_TIMERSLACK).
    pub timerslack_ns: u64,
}

impl Default for ThreadSched {
    fn default() -> ThreadSched {
        ThreadSched {
            policy: 0,
            flags: 0,
            nice: 0,
            priority: 0,
            runtime: 0,
            deadline: 0,
            period: 0,
            util_min: 0,
            util_max: 1024,
            affinity: Vec::new(),
            timerslack_ns: 50_000,
        }
    }
}

/// The kernel's `struct sigaction` for one signal (rt_sigaction layout).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigAction {
    /// Handler address, or 0 (SIG_DFL) / 1 (SIG_IGN).
    pub handler: u64,
    /// SA_* flags (SA_SIGINFO, SA_ONSTACK, SA_RESTART, SA_RESTORER, ...).
    pub flags: u64,
    /// sa_restorer (meaningful with SA_RESTORER).
    pub restorer: u64,
    /// Signals blocked while the handler runs (bit n-1 for signal n).
    pub mask: u64,
}

/// One interval timer (getitimer), times in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ITimer {
    pub interval_us: u64,
    pub value_us: u64,
}

/// One POSIX timer (timer_create), as /proc/PID/timers and timer_gettime report it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PosixTimer {
    /// The timer id the program holds.
    pub id: i32,
    /// CLOCK_* id.
    pub clock: i32,
    /// SIGEV_SIGNAL, SIGEV_NONE, SIGEV_THREAD_ID (SIGEV_THREAD is SIGEV_THREAD_ID in the kernel).
    pub notify: i32,
    pub signo: i32,
    /// sigev_value, passed to the handler in si_value.
    pub sigev_value: u64,
    /// Thread to signal for SIGEV_THREAD_ID.
    pub notify_tid: i32,
    /// Remaining time to the next expiry and the period, in nanoseconds (0: disarmed / one-shot).
    pub value_ns: u64,
    pub interval_ns: u64,
    /// timer_getoverrun at dump (informational: the kernel offers no way to set it).
    pub overrun: i32,
}

/// User and group ids (real, effective, saved, filesystem), supplementary groups, capability
/// sets and securebits: the credentials every thread of the process had (a process whose
/// threads differ is refused).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Creds {
    pub uid: [u32; 4],
    pub gid: [u32; 4],
    pub groups: Vec<u32>,
    /// `CapInh:`, `CapPrm:`, `CapEff:`, `CapBnd:`, `CapAmb:` of /proc/PID/status (bit n =
    /// capability n).
    pub cap_inheritable: u64,
    pub cap_permitted: u64,
    pub cap_effective: u64,
    pub cap_bounding: u64,
    pub cap_ambient: u64,
    /// PR_GET_SECUREBITS (SECBIT_* of linux/securebits.h), read inside the process.
    pub securebits: u32,
}

/// The mm fields `PR_SET_MM_MAP` restores, so /proc/PID/{cmdline,environ,auxv,stat} read
/// the same after restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmFields {
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
    /// The saved auxiliary vector as (type, value) words, ending with AT_NULL.
    pub auxv: Vec<u64>,
}

/// One thread's CPU state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreadImage {
    pub tid: i32,
    /// Blocked signal mask (bit n-1 for signal n).
    pub sigmask: u64,
    pub regs: ArchRegs,
    /// The thread's rseq registration, if any.
    pub rseq: Option<RseqRegistration>,
    /// Per-thread state only the thread itself (or PTRACE_PEEKSIGINFO) can report.
    pub state: ThreadState,
}

/// Per-thread state collected by the parasite and PTRACE_PEEKSIGINFO.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadState {
    /// The thread's name (/proc/PID/task/TID/comm, at most 15 bytes); empty when unknown.
    pub name: String,
    /// sigaltstack; None when disabled.
    pub altstack: Option<AltStack>,
    /// Signals pending for this thread only, each a raw 128-byte siginfo, oldest first.
    pub pending: Vec<Vec<u8>>,
    /// set_tid_address / CLONE_CHILD_CLEARTID address (PR_GET_TID_ADDRESS).
    pub clear_child_tid: u64,
    /// get_robust_list: head address and length (0 when none).
    pub robust_list: u64,
    pub robust_list_len: u64,
    /// Scheduling policy, priority, affinity and timer slack; `None` in images that did not
    /// record them (a restore then leaves what the thread inherits).
    pub sched: Option<ThreadSched>,
}

/// An alternate signal stack (stack_t).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AltStack {
    pub sp: u64,
    /// SS_AUTODISARM and friends (SS_ONSTACK is a state, not restored).
    pub flags: i32,
    pub size: u64,
}

/// Register state in the kernel's regset layouts, kept raw so nothing is lost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ArchRegs {
    /// `user_regs_struct` (NT_PRSTATUS, 27 u64) with the syscall-restart fix-up already applied,
    /// and the standard-format XSAVE area (NT_X86_XSTATE) of the size the kernel reported.
    X86_64 {
        gpr: Vec<u64>,
        #[serde(with = "crate::bytes")]
        xstate: Vec<u8>,
    },
    /// NT_PRSTATUS (x0-x30, sp, pc, pstate), NT_PRFPREG bytes (528; followed by the NT_ARM_SVE
    /// regset as captured when the thread's SVE registers were live) and TPIDR_EL0.
    Aarch64 {
        gpr: Vec<u64>,
        #[serde(with = "crate::bytes")]
        fpsimd: Vec<u8>,
        tls: u64,
    },
}

/// rseq registration as PTRACE_GET_RSEQ_CONFIGURATION reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RseqRegistration {
    pub abi_pointer: u64,
    pub abi_size: u32,
    pub signature: u32,
}

/// Protection bits of a VMA (same values as PROT_*).
pub const PROT_READ: u32 = 1;
pub const PROT_WRITE: u32 = 2;
pub const PROT_EXEC: u32 = 4;

/// One memory area.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    /// PROT_* bits.
    pub prot: u32,
    /// MAP_SHARED (true) or MAP_PRIVATE (false).
    pub shared: bool,
    pub backing: VmaBacking,
    /// The VmFlags of /proc/PID/smaps that a restore must reproduce.
    pub flags: VmaFlags,
    /// The name /proc/PID/maps shows: a path, `[heap]`, `[stack]`, `[anon:name]`, or empty.
    pub name: String,
    /// Guard regions inside the VMA (`madvise(MADV_GUARD_INSTALL)`, Linux 6.13+; VmFlags `gu`,
    /// pagemap bit 58 from 6.15): `(start, end)` address ranges, page-aligned, sorted, that
    /// fault on any access. Installed again by the restore.
    #[serde(default)]
    pub guard_ranges: Vec<(u64, u64)>,
}

impl Vma {
    /// The name given with prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME), which a restore gives back:
    /// NAME of `[anon:NAME]` on private anonymous memory or of `[anon_shmem:NAME]` on shared
    /// anonymous memory; None for any other name or backing.
    pub fn anon_name(&self) -> Option<&str> {
        let prefix = match self.backing {
            VmaBacking::Anonymous => "[anon:",
            VmaBacking::SharedAnonymous { .. } => "[anon_shmem:",
            _ => return None,
        };
        self.name.strip_prefix(prefix)?.strip_suffix(']')
    }
}

/// What is behind a VMA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmaBacking {
    /// Private anonymous memory (heap, stack and `[anon:...]` included).
    Anonymous,
    /// A file, as an index into [`ProcessImage::files`], at a byte offset.
    File { file: u32, offset: u64 },
    /// Shared anonymous memory (MAP_SHARED|MAP_ANONYMOUS, `/dev/zero (deleted)` in maps): a
    /// shmem object, which every process of the tree that maps it shares. `object` is its inode
    /// number (the same in every process of the image that maps it), `size` its size in bytes,
    /// `offset` where in it this VMA starts. Its content is stored once, in the page runs of
    /// the first VMA of the image (in tree order) that maps each range.
    SharedAnonymous { object: u64, size: u64, offset: u64 },
    /// A whole SysV shared memory segment attached with shmat (`/SYSV<key> (deleted)` in
    /// maps), by its id; the segment ([`SysvShmSegment`]) is stored once in the tree, by the
    /// first process (in tree order) that attaches it.
    SysvShm { id: i32 },
    /// The vDSO code; placed by moving the restoring kernel's own vDSO.
    Vdso,
    /// A `[vvar]`, `[vvar_vclock]` or other `[vvar*]` piece; never dumped, moved like the vDSO.
    Vvar,
    /// The ring of an AIO context (io_setup(2); `/[aio] (deleted)` in maps), whose address is
    /// the context id the program holds. Its pages are not stored: the restore creates a
    /// context with a ring of `nr` events, brings the kernel's tail to `tail`, moves the ring
    /// here and writes `head` and the completed, unreaped events back (crest's files/aio.rs).
    AioRing(AioRing),
}

/// What an AIO ring held at dump time (`struct aio_ring`, fs/aio.c): its size in events and
/// its completed events not yet reaped by io_getevents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AioRing {
    /// Events the ring holds (`aio_ring.nr`, the kernel's rounded-up count).
    pub nr: u32,
    /// Index of the oldest unreaped event (`aio_ring.head`), `< nr`.
    pub head: u32,
    /// Index where the next completion goes (`aio_ring.tail`), `< nr`.
    pub tail: u32,
    /// The `struct io_event`s from `head` up to `tail` (wrapping at `nr`), 32 bytes each.
    pub events: Vec<u8>,
}

/// The smaps VmFlags that are state of their own (not derived from the protection, the
/// mapping type or the file), each restored: by an mmap flag, an madvise, mlock2 or mseal.
/// A dump refuses a VMA with a flag it cannot restore.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmaFlags {
    /// `gd`: MAP_GROWSDOWN (the main stack).
    pub growsdown: bool,
    /// `lo`: MAP_LOCKED.
    pub locked: bool,
    /// `nr`: MAP_NORESERVE.
    pub noreserve: bool,
    /// `dd`: MADV_DONTDUMP.
    pub dontdump: bool,
    /// `dc`: MADV_DONTFORK.
    pub dontfork: bool,
    /// `hg`: MADV_HUGEPAGE.
    pub hugepage: bool,
    /// `nh`: MADV_NOHUGEPAGE.
    pub nohugepage: bool,
    /// `mg`: MADV_MERGEABLE.
    pub mergeable: bool,
    /// `sr`: MADV_SEQUENTIAL.
    pub sequential: bool,
    /// `rr`: MADV_RANDOM.
    pub random: bool,
    /// `wf`: MADV_WIPEONFORK.
    pub wipeonfork: bool,
    /// `lf`: locked on fault (mlock2 MLOCK_ONFAULT); comes with `locked`.
    pub lockonfault: bool,
    /// `sl`: sealed with mseal(2).
    pub sealed: bool,
    /// `dp`: MAP_DROPPABLE (anonymous memory the kernel may drop under pressure).
    pub droppable: bool,
    /// `mw` on a MAP_SHARED file mapping: the file was opened for writing, so the mapping may
    /// be made writable (mprotect) even when it is read-only now; a restore opens it so too.
    pub shared_maywrite: bool,
}

/// `npages` consecutive stored pages starting at `vaddr`, found at `file_offset` of the page file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRun {
    pub vaddr: u64,
    pub npages: u64,
    /// Byte offset in the page file; a multiple of the page size.
    pub file_offset: u64,
}

/// A file as it was at dump time, so a restore can tell whether it changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    /// Absolute path at dump time.
    pub path: String,
    pub kind: FileKind,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: i64,
    /// st_mode permission and type bits.
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    Regular,
    Directory,
    /// A character device (e.g. /dev/null), reopened by path and checked by device number.
    CharDevice {
        rdev: u64,
    },
    /// A regular file whose content the image holds, so it is recreated at restore rather than
    /// checked: HotSpot's performance-data file `/tmp/hsperfdata_<user>/<pid>`, a shared
    /// writable mapping that the JVM rewrites all the time and that another JVM deletes when it
    /// sees the pid dead. The restore creates it (and its directory, mode 0755) if missing,
    /// empties it, sizes it to [`FileIdentity::size`] with [`FileIdentity::mode`], and the
    /// stored pages of its shared mappings are written back through them.
    ContentInImage,
    /// An AF_UNIX socket, created anew at restore. `dev`/`ino` are those of the socket inode
    /// the process had open (sockfs); `size` and the mtime are 0. For a socket bound to a path
    /// ([`UnixName::Path`]), [`FileIdentity::path`] is where its socket file was at dump time
    /// (the name it was bound to, or where that file was renamed since) and `mode` is that
    /// file's; any other socket has an empty path.
    UnixSocket(UnixSocket),
    /// An anonymous pipe (pipefs). `dev`/`ino` are the pipe inode's, [`FileIdentity::path`]
    /// is empty, `size`, the mtime and `mode` are 0. Which end an open file description is
    /// comes from its O_ACCMODE (O_RDONLY: the read end, O_WRONLY: the write end).
    Pipe(Pipe),
    /// A terminal that was the one crest dump ran on (the shell's terminal, `--shell-job`):
    /// restored as a new open file description of the terminal crest restore runs on (its
    /// standard input), with the recorded flags; never reopened by path. `rdev` is the device
    /// number at dump time.
    ShellTerminal {
        rdev: u64,
    },
    /// An event fd (eventfd, signalfd, timerfd), created anew at restore with its state.
    /// `dev`/`ino` are the anonymous inode's (one for every such fd of the machine), the path
    /// is what the fd's link read (`anon_inode:[eventfd]`), size, mtime and mode are 0.
    Event(EventFd),
    /// A memfd (memfd_create(2)), recreated at restore with its content (stored in the page
    /// file of the first process of the tree that holds it, [`ProcessImage::memfd_runs`]).
    /// [`FileIdentity::path`] is `/memfd:NAME`, `ino` its inode (the same in every process of
    /// the image that holds it: one object), `size` its size in bytes, `mode` its mode.
    /// `seals` are its F_GET_SEALS bits ([`MEMFD_SEALS`]); a memfd made without
    /// MFD_ALLOW_SEALING has exactly [`F_SEAL_SEAL`].
    Memfd {
        name: String,
        seals: u32,
    },
    /// A TCP socket (IPv4 or IPv6), created anew at restore. `dev`/`ino` are those of the
    /// socket inode the process had open (sockfs); the path is empty; size, mtime and mode are 0.
    Tcp(TcpSocket),
    /// An epoll instance (epoll_create1(2)), created anew at restore and given its targets
    /// again. `dev`/`ino` are the anonymous inode's, the path `anon_inode:[eventpoll]`, size,
    /// mtime and mode 0.
    Epoll(Epoll),
    /// An inotify instance (inotify_init1(2)) with its watches, each added again under its wd.
    /// `dev`/`ino` are the anonymous inode's, the path `anon_inode:inotify`.
    Inotify(Inotify),
    /// A pidfd (pidfd_open(2)) of process `pid` of the tree, opened again by the restored
    /// process that holds it once that process exists. `dev`/`ino` are the pidfs inode's.
    /// pid -1: of a process that had exited and been reaped; the restore makes a pidfd of a
    /// process that exits at once, one per inode.
    Pidfd {
        pid: i32,
    },
    /// An IPv4 or IPv6 UDP socket, created anew at restore (socket, options, bind, connect).
    /// `dev`/`ino` are the socket inode's (sockfs); the path is empty; size, mtime and mode
    /// are 0.
    Udp(UdpSocket),
    /// A netlink socket, created anew at restore with its protocol, port id, groups and
    /// options. `dev`/`ino` are the socket inode's (sockfs); the path is empty; size, mtime and
    /// mode are 0.
    Netlink(NetlinkSocket),
    /// An AF_PACKET socket (packet(7)), created anew at restore with its protocol, interface,
    /// options, memberships, rings and fanout group. `dev`/`ino` are the socket inode's
    /// (sockfs); the path is empty; size, mtime and mode are 0.
    Packet(PacketSocket),
    /// A named FIFO (mkfifo(3)) at [`FileIdentity::path`]; `dev`/`ino`/`mode` are the FIFO
    /// file's, size and mtime 0. Restored by opening the path again (crest holds it open read-
    /// write while the descriptions are made, so none waits for the other end), then each
    /// description through that open FIFO with its recorded access mode and flags. The path
    /// must still name a FIFO (the same one or a new one). [`Pipe::Internal`]: no process
    /// outside the tree held the FIFO at dump time; its buffer (size and bytes) is put back.
    /// [`Pipe::External`]: a process outside the tree held it; the bytes are still in that
    /// process's pipe and are left there.
    Fifo(Pipe),
    /// A named FIFO whose last name was removed while the tree held it open (fd links show
    /// `PATH (deleted)`; [`FileIdentity::path`] is that path, `mode` the FIFO's). No process
    /// outside the tree held it at dump time (`pipe` is [`Pipe::Internal`]). Restored as a new
    /// FIFO made in that directory (under the old name when it is free, else a temporary one),
    /// given `uid`/`gid` and the mode, opened read-write by crest and removed again; then as
    /// [`FileKind::Fifo`].
    DeletedFifo {
        pipe: Pipe,
        uid: u32,
        gid: u32,
    },
    /// A character device node removed while the tree held it open (fd links show `PATH
    /// (deleted)`; [`FileIdentity::path`] is that path, `mode` the node's): a node with the
    /// same device number `rdev`, mode and owner is made again in that directory (under the
    /// old name when free), opened, and removed again. Never a terminal.
    DeletedDevice {
        rdev: u64,
        uid: u32,
        gid: u32,
    },
    /// A symbolic link removed while the tree held it itself (`O_PATH | O_NOFOLLOW`; fd links
    /// show `PATH (deleted)`): made again pointing at `target` in that directory (under the
    /// old name when free), opened the same way, given its owner, and removed again.
    DeletedSymlink {
        target: String,
        uid: u32,
        gid: u32,
    },
    /// A symbolic link itself (held by an `O_PATH | O_NOFOLLOW` descriptor), at
    /// [`FileIdentity::path`]: opened the same way again and checked by identity like a
    /// regular file (inode, size, mtime).
    Symlink,
    /// A regular file or directory that was unlinked while the process held it open or mapped
    /// (a "ghost": `/proc/PID/fd/N` and maps show `PATH (deleted)`, st_nlink 0). Recreated at
    /// restore in the directory of [`FileIdentity::path`] (its path at dump time, without the
    /// " (deleted)"), opened, and unlinked again, with the recorded mode, owner and times; a
    /// regular file gets [`FileIdentity::size`] and its stored content
    /// ([`ProcessImage::ghost_runs`]), a directory is empty (a removed directory always is).
    /// `dev`/`ino` are the inode's at dump time: one object for every process of the image
    /// that holds it. The type bits of [`FileIdentity::mode`] say file or directory.
    Ghost(Ghost),
    /// A POSIX message queue (mq_open(3)), created anew at restore in crest's IPC namespace
    /// under its name, refilled with its messages, and unlinked again if it was; each open
    /// file description is then a new open of it with its access mode and O_NONBLOCK.
    /// [`FileIdentity::path`] is `/NAME` as the fd's link showed it (without " (deleted)"),
    /// `dev`/`ino` the queue inode's (one queue for every description of the image that
    /// has it), `mode` its mode; size and mtime are 0.
    Mqueue(Mqueue),
    /// A file under `/proc/PID/` of process `pid` of the image (a `/proc/self/` path reads
    /// as the holder's own pid), [`FileIdentity::path`] its path: opened again by path, with the
    /// recorded flags and offset, by the restored process that holds it once the processes of
    /// the tree exist (crest gives it a stand-in until then). `dev`/`ino`/`mode` are the
    /// dumped file's, not checked.
    TreeProc {
        pid: i32,
    },
    /// A namespace file (`/proc/PID/ns/NAME`, `open(2)`ed or kept from `setns(2)` work; its link
    /// reads `NAME:[INODE]`) of the holder's own namespace of type `ns`, which is crest's too
    /// (a process in other namespaces is refused): opened again at restore as the restoring
    /// crest's `/proc/self/ns/NAME`, the namespace the process is restored into.
    /// [`FileIdentity::path`] is `/proc/self/ns/NAME`; `dev`/`ino` are the dumped nsfs
    /// inode's, not checked (another machine's namespace has other numbers).
    Namespace {
        ns: String,
    },
}

/// The namespace types whose files [`FileKind::Namespace`] can name.
pub const NAMESPACE_TYPES: [&str; 8] =
    ["pid", "mnt", "net", "ipc", "uts", "user", "time", "cgroup"];

/// A POSIX message queue's attributes and content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mqueue {
    /// The name without its leading '/'.
    pub name: String,
    /// Unlinked (mq_unlink) while open: restored unlinked.
    pub unlinked: bool,
    pub uid: u32,
    pub gid: u32,
    /// mq_maxmsg and mq_msgsize (mq_getattr).
    pub maxmsg: i64,
    pub msgsize: i64,
    /// The queued messages in the order mq_receive returns them (highest priority first,
    /// oldest first within a priority); sending them in this order rebuilds the queue.
    pub messages: Vec<MqMessage>,
}

/// One queued message of a [`Mqueue`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MqMessage {
    pub priority: u32,
    pub data: Vec<u8>,
}

/// What a restore needs, beyond [`FileIdentity`], to recreate an unlinked file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ghost {
    pub uid: u32,
    pub gid: u32,
    pub atime_sec: i64,
    pub atime_nsec: i64,
}

/// A TCP socket as a restore recreates it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpSocket {
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u32,
    pub state: TcpState,
    /// Socket options whose value differs from a fresh socket's of the same family (so only
    /// what the program set, or inherited from its listener), each set again at restore.
    pub options: Vec<SockOpt>,
    /// SO_BUF_LOCK bits (1: SO_SNDBUF set by the program, 2: SO_RCVBUF); the matching
    /// SO_SNDBUF/SO_RCVBUF values are in `options` (as getsockopt reports them: doubled).
    pub buf_lock: u32,
}

/// One socket option: `getsockopt(level, name)`'s bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SockOpt {
    pub level: i32,
    pub name: i32,
    pub value: Vec<u8>,
}

/// What a TCP socket was doing at dump time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TcpState {
    /// socket(2) alone.
    Unbound,
    /// Bound to `local`, neither listening nor connected.
    Bound { local: std::net::SocketAddr },
    /// Listening on `local` with `backlog`, no connection waiting to be accepted (a dump
    /// refuses one that has some).
    Listening {
        local: std::net::SocketAddr,
        backlog: u32,
    },
    /// An established connection, captured in repair mode (TCP_REPAIR).
    Established(TcpConnection),
    /// Connecting (SYN_SENT): the SYN sent, no answer yet. `send_seq` is the initial sequence
    /// number plus one (the SYN's); the restore connects again from it, so the SYN the peer
    /// may get twice is the same one.
    Connecting {
        local: std::net::SocketAddr,
        remote: std::net::SocketAddr,
        send_seq: u32,
        network_lock: String,
    },
    /// Closed after a connection (both ends shut down, or reset, the error read): reads give
    /// what is left of `recv_queue`, then end of file; writes fail with EPIPE; the peer's
    /// address stays (SO_PEERNAME).
    Closed {
        local: std::net::SocketAddr,
        remote: std::net::SocketAddr,
        recv_queue: Vec<u8>,
    },
}

/// An established TCP connection as TCP_REPAIR reads it. Sequence numbers are those the
/// kernel reports with TCP_QUEUE_SEQ: `send_seq` is the next byte the program would write
/// (write_seq), `recv_seq` the next byte expected from the peer (rcv_nxt).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpConnection {
    pub local: std::net::SocketAddr,
    pub remote: std::net::SocketAddr,
    pub send_seq: u32,
    pub recv_seq: u32,
    /// Written and not acknowledged by the peer (sent or not yet sent), oldest first: it ends
    /// at `send_seq`.
    pub send_queue: Vec<u8>,
    /// How many bytes at the end of `send_queue` had not been sent yet.
    pub unsent: u32,
    /// Received and not read by the program, oldest first: it ends at `recv_seq`.
    pub recv_queue: Vec<u8>,
    /// The MSS clamp (TCP_MAXSEG in repair mode).
    pub mss: u32,
    /// Options negotiated at connect time (TCP_INFO tcpi_options: 1 timestamps, 2 SACK,
    /// 4 window scaling) and the window scales.
    pub tcp_options: u8,
    pub snd_wscale: u8,
    pub rcv_wscale: u8,
    /// TCP_TIMESTAMP (the timestamp clock the peer sees), when timestamps are on.
    pub timestamp: u32,
    /// TCP_REPAIR_WINDOW: snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup.
    pub window: [u32; 5],
    /// The nftables table (family inet) that drops this connection's packets from the dump
    /// until a restore has brought the socket back; the restore deletes it.
    pub network_lock: String,
    /// How far it had got in closing: which FINs were sent and received. The sequence
    /// numbers count them (a FIN takes one), the queues do not.
    pub phase: TcpPhase,
}

/// The TCP states of a connection with a socket (TIME_WAIT has none): which FINs were
/// exchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TcpPhase {
    /// No FIN either way.
    Established,
    /// The program's FIN sent (shutdown for writing), not acknowledged yet.
    FinWait1,
    /// The program's FIN sent and acknowledged; the peer may still send.
    FinWait2,
    /// The peer's FIN received (the program reads end of file once the queue is read); the
    /// program may still send.
    CloseWait,
    /// The peer's FIN received, then the program's sent, not acknowledged yet.
    LastAck,
    /// Both FINs sent at once: the peer's received, the program's not acknowledged yet.
    Closing,
}

impl TcpPhase {
    /// Whether the peer's FIN was received (so `recv_seq` counts it).
    pub fn fin_received(self) -> bool {
        matches!(
            self,
            TcpPhase::CloseWait | TcpPhase::LastAck | TcpPhase::Closing
        )
    }

    /// Whether the program's FIN was sent (so `send_seq` counts it).
    pub fn fin_sent(self) -> bool {
        !matches!(self, TcpPhase::Established | TcpPhase::CloseWait)
    }

    /// Whether the program's FIN was sent and is not acknowledged yet (so the kernel's count
    /// of unacknowledged bytes includes it).
    pub fn fin_unacked(self) -> bool {
        self.fin_sent() && self != TcpPhase::FinWait2
    }

    /// The kernel's name of the state.
    pub fn name(self) -> &'static str {
        match self {
            TcpPhase::Established => "ESTABLISHED",
            TcpPhase::FinWait1 => "FIN_WAIT1",
            TcpPhase::FinWait2 => "FIN_WAIT2",
            TcpPhase::CloseWait => "CLOSE_WAIT",
            TcpPhase::LastAck => "LAST_ACK",
            TcpPhase::Closing => "CLOSING",
        }
    }
}

/// The targets registered in an epoll instance, in the order fdinfo lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Epoll {
    pub targets: Vec<EpollTarget>,
}

/// One registration (EPOLL_CTL_ADD) of an epoll instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpollTarget {
    /// The fd number it was registered under (the kernel's key with the file; the process may
    /// have closed or reused that number since).
    pub fd: i32,
    /// The tree-wide id ([`OpenFileDescription::id`]) of the open file description registered.
    pub description: u32,
    /// The event mask as the kernel keeps it, EPOLLET/EPOLLONESHOT/EPOLLWAKEUP/EPOLLEXCLUSIVE
    /// included (a fired EPOLLONESHOT registration keeps only those flag bits).
    pub events: u32,
    /// The user data (epoll_data_t) returned with its events.
    pub data: u64,
}

/// The watches of an inotify instance, by ascending wd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inotify {
    pub watches: Vec<InotifyWatch>,
}

/// One watch of an inotify instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InotifyWatch {
    /// The watch descriptor inotify_add_watch returned (and the events carry).
    pub wd: i32,
    /// The mask as fdinfo shows it (IN_ONESHOT and IN_EXCL_UNLINK included).
    pub mask: u32,
    /// Absolute path of the watched inode at dump time.
    pub path: String,
    /// The watched inode's st_dev and st_ino at dump time, checked again at restore.
    pub dev: u64,
    pub ino: u64,
}

/// The state of an event fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventFd {
    /// eventfd(2): the counter, and EFD_SEMAPHORE.
    Counter { count: u64, semaphore: bool },
    /// signalfd(2): the signals it reads (bit n-1 for signal n).
    Signals { mask: u64 },
    /// timerfd_create(2) + timerfd_settime(2): clock id, expirations not read yet, the time to
    /// the next expiry and the period (ns; 0 and 0: disarmed), and the settime flags
    /// (TFD_TIMER_ABSTIME, TFD_TIMER_CANCEL_ON_SET).
    Timer {
        clock: i32,
        ticks: u64,
        value_ns: u64,
        interval_ns: u64,
        settime_flags: u32,
    },
}

/// Most bytes an image may record as buffered in one pipe, and largest pipe size (root may
/// raise pipes beyond /proc/sys/fs/pipe-max-size, but not this far in practice).
pub const PIPE_SIZE_MAX: u32 = 64 << 20;

/// A pipe as a restore can bring it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Pipe {
    /// Both ends are held by the process. Restored as a fresh pipe of `size` bytes
    /// (F_SETPIPE_SZ) holding `buffered`, the bytes written and not yet read at dump time.
    Internal { size: u32, buffered: Vec<u8> },
    /// Only some ends are held by the process; another process holds the rest (a shell or a
    /// test reading the process's stdout). Restored by opening the same pipe again through a
    /// live process that still holds it (`/proc/PID/fd/N`). Bytes buffered in it belong to
    /// the peer's view of the pipe and are left where they are.
    External,
}

/// An AF_UNIX socket as a restore can recreate it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnixSocket {
    /// SOCK_STREAM (1), SOCK_DGRAM (2) or SOCK_SEQPACKET (5).
    pub sock_type: u32,
    pub state: UnixSocketState,
    /// The name it is bound to, bound again at restore. A connected stream or seqpacket
    /// socket is always [`UnixName::Unnamed`] here: an accepted connection carries its
    /// listener's name, which the listener holds (the restored one reports no name).
    pub name: UnixName,
    /// What its receive queue held: bytes (stream, as one message), records (seqpacket) or
    /// datagrams, oldest first; queued again from their sender at restore.
    pub queue: Vec<UnixMessage>,
    /// sock_diag `UNIX_DIAG_SHUTDOWN`: RCV_SHUTDOWN (1) | SEND_SHUTDOWN (2), applied with
    /// shutdown(2) once its data is queued.
    pub shutdown: u8,
    /// SO_PASSCRED.
    pub passcred: bool,
    /// SO_SNDBUF and SO_RCVBUF as getsockopt reports them (the kernel's doubled values).
    pub sndbuf: u32,
    pub rcvbuf: u32,
    /// The other SOL_SOCKET options whose value differs from a fresh UNIX socket's of the same
    /// type (SO_PASSSEC, SO_PASSPIDFD, SO_RCVLOWAT, SO_SNDTIMEO, SO_TIMESTAMP, SO_PEEK_OFF ...),
    /// set again once the socket is connected and its queue refilled.
    #[serde(default)]
    pub options: Vec<SetSockOpt>,
    /// SO_PEERCRED: the pid (as crest's pid namespace sees it), uid and gid the kernel recorded
    /// for its peer when the connection was made (socketpair: the creator; connect: the
    /// listener's as of listen(2); accept: the connector; a listener: its own as of listen).
    /// None when it has none (pid 0: a fresh or datagram-connected socket). Made again at
    /// restore by a short-lived process under that pid and those ids.
    #[serde(default)]
    pub peer_creds: Option<MessageCreds>,
}

/// The address an AF_UNIX socket is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UnixName {
    Unnamed,
    /// Bound to the path `bound` (what getsockname(2) reports); its socket file is at
    /// [`FileIdentity::path`] (where it was renamed since, or `bound`) with
    /// [`FileIdentity::mode`] and owner `uid`/`gid`. The restore binds `bound`, gives the file
    /// its owner and mode, and renames it to the path.
    Path {
        bound: String,
        uid: u32,
        gid: u32,
        /// For a relative `bound` (what getsockname reports then), the absolute directory it
        /// was bound from (the process's working directory at bind time): the restore binds
        /// the same relative name from there. For an absolute `bound` of a chrooted process,
        /// its root directory (the restore binds the name from a thread chrooted there);
        /// empty for any other absolute `bound`.
        #[serde(default)]
        dir: String,
        /// The socket file had been removed at dump time: the restore binds (connects what
        /// must connect to it), then removes it again, so the socket is as unreachable by
        /// name as it was.
        removed: bool,
    },
    /// An abstract name: the bytes after the leading NUL (autobind names included).
    Abstract {
        name: Vec<u8>,
    },
}

impl UnixName {
    /// The name as the kernel reports it (sun_path bytes: a leading NUL for an abstract name);
    /// empty when unnamed.
    pub fn raw(&self) -> Vec<u8> {
        match self {
            UnixName::Unnamed => Vec::new(),
            UnixName::Path { bound, .. } => bound.as_bytes().to_vec(),
            UnixName::Abstract { name } => {
                let mut raw = vec![0];
                raw.extend_from_slice(name);
                raw
            }
        }
    }
}

/// One message of a UNIX socket's receive queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnixMessage {
    /// The sender's name as the receiver would read it ([`UnixName::raw`]); empty when the
    /// sender is unnamed. A named sender is a socket of the tree (a dump refuses others).
    pub from: Vec<u8>,
    pub data: Vec<u8>,
    /// The open file descriptions it carries (SCM_RIGHTS), in order, by tree-wide id
    /// ([`OpenFileDescription::id`]). A description that only the queue holds is among the
    /// open files of the socket's process with no fd referring to it.
    #[serde(default)]
    pub fds: Vec<u32>,
    /// The credentials it carries (SCM_CREDENTIALS: what a receiver with SO_PASSCRED reads),
    /// when the receiver had SO_PASSCRED at dump time.
    #[serde(default)]
    pub creds: Option<MessageCreds>,
}

/// The sender's credentials attached to a queued UNIX message, or a socket's SO_PEERCRED
/// (struct ucred).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageCreds {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// What an AF_UNIX socket was doing at dump time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UnixSocketState {
    /// Neither connected nor listening (socket(2) alone, or bound: see [`UnixSocket::name`]).
    Unconnected,
    /// Connected, and its peer has been closed: a stream or seqpacket socket reads its queue,
    /// then end of file, and writes fail with EPIPE; a datagram socket's sends fail with
    /// ECONNREFUSED. Restored as one end of a fresh pair whose other end queues the data and
    /// is closed.
    PeerClosed,
    /// Connected to socket inode `peer`, which a process of the tree holds. Stream and
    /// seqpacket sockets (the peer names this one back) and a datagram socket connected to an
    /// unnamed one come back as a fresh socketpair; a datagram socket connected to a named
    /// one connects to that name again.
    Connected { peer: u64 },
    /// A client whose connection waits in the accept queue of listener inode `listener`, held
    /// in the tree: connected to the restored listener again, in queue order.
    Queued { listener: u64 },
    /// Connected to a socket no process of the tree holds, named `peer_name`
    /// ([`UnixName::raw`]) — a server outside the tree (`--ext-unix-sk`): the restore connects
    /// to that name again (a new connection to the server).
    External { peer_name: Vec<u8> },
    /// Bound and listening. `backlog` is the listen(2) backlog the kernel reported (sock_diag
    /// `UNIX_DIAG_RQLEN`); `pending` the inodes of the clients (held in the tree) whose
    /// connections wait to be accepted, oldest first.
    Listening { backlog: u32, pending: Vec<u64> },
}

/// A UDP socket (AF_INET or AF_INET6, SOCK_DGRAM, IPPROTO_UDP) as a restore recreates it.
/// Its receive queue was empty at dump time (a dump refuses one holding datagrams) and nothing
/// was corked in its send queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpSocket {
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u32,
    /// The address it is bound to (getsockname); None when it never was (port 0).
    pub local: Option<UdpEndpoint>,
    /// The address it is connected to (getpeername); None when not connected.
    pub peer: Option<UdpEndpoint>,
    /// Options that differ from a fresh socket's, set again before bind and connect.
    pub options: Vec<SetSockOpt>,
    /// Its classic BPF socket filter (SO_ATTACH_FILTER), empty when it has none.
    #[serde(default)]
    pub filter: Vec<BpfInsn>,
    /// SO_LOCK_FILTER: the filter cannot be changed or removed.
    #[serde(default)]
    pub filter_locked: bool,
    /// Some: not UDP but another IP datagram socket recorded the same way: a raw socket
    /// (SOCK_RAW, any IP protocol; its addresses carry port 0, a raw socket has none) or a ping
    /// socket (SOCK_DGRAM with IPPROTO_ICMP or IPPROTO_ICMPV6; its port is the echo id) or a
    /// UDP-Lite socket (SOCK_DGRAM with IPPROTO_UDPLITE, addressed like UDP). It had no packets
    /// queued (a dump refuses those, as for UDP).
    #[serde(default)]
    pub other: Option<IpSocketKind>,
    /// shutdown(2) state: RCV_SHUTDOWN (1) | SEND_SHUTDOWN (2), set again after connect.
    #[serde(default)]
    pub shutdown: u8,
}

/// The type and protocol of an IP socket other than UDP, for socket(2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpSocketKind {
    /// SOCK_RAW (3) or SOCK_DGRAM (2).
    pub sock_type: u32,
    pub protocol: u32,
}

/// One instruction of a classic BPF program (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BpfInsn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// An IPv4 or IPv6 socket address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpEndpoint {
    /// The address in network byte order: 4 bytes in an AF_INET socket, 16 in an AF_INET6 one
    /// (an IPv4 peer of a dual-stack socket is IPv4-mapped, `::ffff:a.b.c.d`).
    pub ip: Vec<u8>,
    pub port: u16,
    /// IPv6 only: sin6_flowinfo and sin6_scope_id (the interface of a link-local address).
    pub flowinfo: u32,
    pub scope_id: u32,
}

/// One setsockopt(2) a restore repeats on a recreated socket: level, option name and the value
/// bytes. Only the options of [`crate::validate::SOCKET_OPTIONS`] are accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetSockOpt {
    pub level: i32,
    pub name: i32,
    pub value: Vec<u8>,
}

/// An AF_PACKET socket as a restore recreates it. Captured packets waiting to be read at dump
/// time are not kept (a packet socket sees copies of traffic; the dump says how many bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PacketSocket {
    /// SOCK_RAW (3), SOCK_DGRAM (2) or SOCK_PACKET (10, the obsolete interface).
    pub sock_type: u32,
    /// The protocol it receives (ETH_P_*, host byte order); 0: none (it receives nothing).
    pub protocol: u16,
    /// The interface it is bound to (0: every interface) and that interface's name at dump
    /// time; a restore binds to the interface of that index only if it has that name.
    pub ifindex: i32,
    pub ifname: String,
    /// Options that differ from a fresh socket's (PACKET_VERSION, PACKET_RESERVE,
    /// PACKET_AUXDATA, ... and SOL_SOCKET ones), set before bind and the rings.
    pub options: Vec<SetSockOpt>,
    /// PACKET_COPY_THRESH (0: never set).
    pub copy_thresh: u32,
    /// Interface memberships (PACKET_ADD_MEMBERSHIP), each taken `count` times.
    pub memberships: Vec<PacketMembership>,
    /// The receive and transmit rings' configuration (PACKET_RX_RING, PACKET_TX_RING); their
    /// frames are not kept. A dump refuses a ring a process has mapped.
    pub rx_ring: Option<PacketRing>,
    pub tx_ring: Option<PacketRing>,
    /// PACKET_FANOUT as getsockopt reads it (group id | type << 16 | flags << 24); 0: none.
    pub fanout: u32,
    /// Its classic BPF socket filter (SO_ATTACH_FILTER), empty when it has none.
    pub filter: Vec<BpfInsn>,
    /// SO_LOCK_FILTER.
    pub filter_locked: bool,
}

/// One membership of a packet socket (`struct packet_diag_mclist`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PacketMembership {
    pub ifindex: i32,
    /// How many times it was added.
    pub count: u32,
    /// PACKET_MR_MULTICAST (0), PACKET_MR_PROMISC (1), PACKET_MR_ALLMULTI (2),
    /// PACKET_MR_UNICAST (3).
    pub mr_type: u16,
    /// The link-layer address, at most 32 bytes.
    pub address: Vec<u8>,
}

/// A packet socket ring's configuration (the fields of `struct tpacket_req3`; TPACKET_V1 and
/// V2 rings use the first four).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PacketRing {
    pub block_size: u32,
    pub block_nr: u32,
    pub frame_size: u32,
    pub frame_nr: u32,
    pub retire_tmo: u32,
    pub sizeof_priv: u32,
    pub features: u32,
}

/// A netlink socket as a restore recreates it. Its receive queue was empty and no dump reply
/// was in progress at dump time (a dump refuses either).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetlinkSocket {
    /// SOCK_RAW (3) or SOCK_DGRAM (2).
    pub sock_type: u32,
    /// NETLINK_ROUTE (0), NETLINK_SOCK_DIAG (4) or NETLINK_KOBJECT_UEVENT (15).
    pub protocol: u32,
    /// The port id it is bound to (nl_pid); 0 when it never was bound (nor sent anything). A
    /// restore binds the same port id, or fails if another socket holds it.
    pub port_id: u32,
    /// The multicast groups it is subscribed to (group numbers, from 1), ascending.
    pub groups: Vec<u32>,
    /// The default destination set by connect(2) (port id and group number); 0 and 0 when not
    /// connected.
    pub dst_port_id: u32,
    pub dst_group: u32,
    /// Options that differ from a fresh socket's (SOL_NETLINK flags, buffer sizes, ...).
    pub options: Vec<SetSockOpt>,
}

/// An open file description (what `open` returns and `dup` shares).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenFileDescription {
    /// Identifies the description in the whole tree: descriptions with the same id in several
    /// processes are one description (inherited across fork), restored once and shared.
    pub id: u32,
    /// Index into [`ProcessImage::files`].
    pub file: u32,
    /// File status flags from fdinfo (O_ACCMODE, O_APPEND, O_NONBLOCK, ...), without O_CLOEXEC.
    pub flags: u32,
    /// File offset.
    pub pos: u64,
    /// Locks held by this description (shared by every fd and process that has it).
    pub locks: Vec<DescriptionLock>,
    /// Where signal-driven I/O sends its signal (fcntl F_SETOWN_EX / F_SETSIG), when set.
    pub owner: Option<FileOwner>,
}

/// The owner of an open file description (fcntl F_SETOWN_EX) and the signal it is sent
/// (F_SETSIG): with O_ASYNC, the kernel signals it when I/O becomes possible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOwner {
    pub kind: OwnerKind,
    /// The owning thread, process or process group (0: none).
    pub id: i32,
    /// F_SETSIG's signal; 0 means SIGIO without siginfo details.
    pub signal: i32,
    /// Real and effective uid of whoever set the owner: the kernel checks them against the
    /// owner's uids before each signal.
    pub uid: u32,
    pub euid: u32,
}

/// What [`FileOwner::id`] names (F_OWNER_TID, F_OWNER_PID, F_OWNER_PGRP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OwnerKind {
    Thread,
    Process,
    ProcessGroup,
}

/// Shared (read) or exclusive (write).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockType {
    Read,
    Write,
}

/// The bytes a record lock covers: `len` bytes from `start`, or from `start` to the end of
/// the file however far it grows when `len` is 0 (fcntl's convention). `start + len` fits in
/// an off_t (i64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRange {
    pub start: u64,
    pub len: u64,
}

/// A lock owned by an open file description: released when its last fd closes, kept across
/// dup and fork.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DescriptionLock {
    /// flock(2) on the whole file: LOCK_SH (Read) or LOCK_EX (Write).
    Flock(LockType),
    /// An open file description record lock (fcntl F_OFD_SETLK).
    Ofd { ty: LockType, range: LockRange },
    /// A lease (fcntl F_SETLEASE), taken again by the restored process on the first of its
    /// fds with the description (the lease break signal goes to it); a description shared by
    /// several processes has it in the first of them only.
    Lease(Lease),
}

/// A lease of an open file description.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// F_RDLCK (Read) or F_WRLCK (Write); for a lease being broken, the type it is taken as
    /// again before it is broken again.
    pub ty: LockType,
    /// Being broken (a conflicting open waits for it): to a read lease, or to none.
    pub breaking: Option<LeaseBreak>,
    /// F_GETSIG of the description: the signal a lease break sends (0: SIGIO).
    pub signal: i32,
}

/// What a lease being broken is to become.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseBreak {
    /// A write lease broken by a read-only open: downgraded to a read lease.
    ToRead,
    /// Broken by an open for writing (or a write lease by any open): given up.
    ToNone,
}

/// A POSIX record lock (fcntl F_SETLK, lockf): owned by the process, dropped by the kernel
/// when the process closes any fd of the file. `fd` is an fd of the process on that file,
/// opened with the access the lock needs (the one the kernel lists the lock under).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PosixLock {
    pub fd: i32,
    pub ty: LockType,
    pub range: LockRange,
}

/// A flock held by an open file description that no fd refers to any more, only the process's
/// mappings of the file: HotSpot flocks its hsperfdata file, maps it and closes the fd. A
/// restore takes it on the descriptor it maps the file through, so it lasts as long as the
/// mappings do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingLock {
    /// Index into [`ProcessImage::files`] of a file some VMA maps.
    pub file: u32,
    pub lock: DescriptionLock,
}

/// One descriptor of the fd table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fd {
    pub fd: i32,
    /// Index into [`ProcessImage::open_files`].
    pub description: u32,
    /// FD_CLOEXEC.
    pub cloexec: bool,
}

/// One resource limit (RLIMIT_* number, soft and hard; u64::MAX is RLIM_INFINITY).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    pub resource: u32,
    pub soft: u64,
    pub hard: u64,
}

/// The pages each restored process touched in the first moments after a restore
/// (`working-set.img`, written by `crest restore --record-working-set`): later lazy and mapped
/// restores of the same image bring these in first. Not listed in the inventory (recording it
/// must not change the image); tied to its dump by the inventory's hash instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkingSet {
    /// BLAKE3 of the `inventory.img` of the dump it was recorded on: a working set of another
    /// dump (a stale file) is refused.
    pub inventory_blake3: [u8; 32],
    /// Unix time of the recording, in milliseconds.
    pub recorded_unix_ms: u64,
    /// How long after the tree ran the pages were recorded, in milliseconds.
    pub window_ms: u64,
    /// How they were recorded.
    pub source: WorkingSetSource,
    /// One entry per recorded process, sorted by pid.
    pub processes: Vec<ProcessWorkingSet>,
}

/// Where a working set's pages came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkingSetSource {
    /// The page faults a lazy restore served (`--pages lazy`).
    LazyFaults,
    /// The pages present in the process's page tables (/proc/PID/pagemap) after a mapped
    /// restore (`--pages map`).
    MappedPresent,
}

/// The pages one process touched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessWorkingSet {
    pub pid: i32,
    /// `(vaddr, npages)`, sorted, not overlapping; each lies inside one stored
    /// [`PageRun`] of the process.
    pub ranges: Vec<(u64, u64)>,
    /// The pages of `ranges` the process also wrote, in the same form (a mapped restore's
    /// recording tells them apart: a written page was copied out of the page file). Empty
    /// when the recording could not tell (lazy faults).
    pub written: Vec<(u64, u64)>,
}

impl ProcessWorkingSet {
    /// Pages recorded.
    pub fn pages(&self) -> u64 {
        self.ranges.iter().map(|r| r.1).sum()
    }
}
