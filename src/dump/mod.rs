//! `crest dump`: freeze a process with ptrace, collect its state, write an image, then kill it
//! (default) or let it go (`-R`).
//!
//! Phases: hint (a HotSpot JVM is asked for a full GC, [`hint`]) -> prepare (with `-R`, the
//! buffers the memory will be read into) -> freeze (seize + interrupt every thread, re-listing
//! until no new thread appears) -> threads (per thread: registers, signal mask, rseq, pending
//! signals) -> parasite (infect the leader, collect the process-wide state and the leader's own,
//! run the per-thread collection in every other thread, cure) -> collect (VMAs, fds, task state)
//! -> pages (pagemap scan, memory read into buffers a writer thread hashes and writes) ->
//! release (`-R`: as soon as the memory is read) -> write (the page file finished, the process
//! record) -> commit (inventory, atomic rename) -> kill (without `-R`, only now the image is
//! complete). The parasite is the only thing crest ever puts into the target, and it is gone
//! (cured, checked against a snapshot of the maps and fds) before the VMAs are read. A failure at any step cures the parasite (its guard's Drop),
//! detaches the threads ([`freeze::Frozen`]'s Drop) and drops the unfinished image
//! (ImageWriter's Drop), so the target runs on as before. `CREST_FAIL_AT` ([`crate::fault`])
//! makes a dump fail at a named step to test exactly that.

mod creds;
mod fds;
mod fdshare;
mod fifos;
mod files;
mod freeze;
mod hint;
mod jobctl;
mod memfd;
mod netlink;
mod netsockets;
mod packet;
mod parasite;
mod pipes;
mod problems;
mod process;
mod procfiles;
mod references;
mod scm;
mod seccomp;
mod shared;
mod sysv;
pub(crate) mod sysv_ipc;
pub use sysv::stat as sysv_stat;
pub(crate) mod sockdiag;
mod sockets;
mod task;
mod threads;
mod tree;
mod tty;
mod udp;
mod unix_tree;
mod vmas;

// Dumping needs register capture, which exists on x86_64 only so far.
#[cfg(all(test, target_arch = "x86_64"))]
mod fault_tests;
#[cfg(all(test, target_arch = "x86_64"))]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;
#[cfg(all(test, target_arch = "x86_64"))]
mod thread_tests;

use crate::phases::Phases;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;

use crate::arch::regs::RegsError;
use crate::arch::ArchError;
use crate::fault::{self, Injected};
use crate::images::{
    pages_file_name, Arch, DumpStats, GcHintStats, ImageError, ImageWriter, Inventory, ProcessImage,
};
use crate::infect::InfectError;
use crate::pages::{self, BackgroundWriter, PageError, PageSink};
use crate::proc::{Proc, ProcError};
use crate::ptrace::PtraceError;

/// What to dump and how.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    pub pid: i32,
    /// Image directory (replaced atomically if it exists).
    pub dir: PathBuf,
    /// Let the process run on after the dump instead of killing it.
    pub leave_running: bool,
    /// Ask a HotSpot JVM for a full GC (and to give free memory back) before the freeze.
    pub gc_hint: bool,
    /// How long the GC hint may take before the dump goes on without it.
    pub gc_hint_timeout: Duration,
    /// `--shell-job`: the tree may be attached to the terminal crest runs on.
    pub shell_job: bool,
    /// `--ext-unix-sk`: UNIX sockets connected to a named socket outside the tree are dumped
    /// (and connected to that name again at restore) instead of refused.
    pub ext_unix_sk: bool,
    /// `--ghost-limit`: the most data an unlinked file the tree holds may have for the dump to
    /// store it ([`crate::files::ghost::DEFAULT_LIMIT`] by default); a larger one is refused.
    pub ghost_limit: u64,
    /// `--skip-in-flight`: TCP connections waiting in a listener's accept queue are left out
    /// (their clients find them reset) instead of refused.
    pub skip_in_flight: bool,
    /// `--tcp-close`: TCP connections are recorded closed (addresses only), neither locked nor
    /// put in repair mode: for an image whose connections are not going to be restored.
    pub tcp_close: bool,
}

/// The GC hint's default bound: a full GC of a heap of a few GiB fits well within it.
pub const DEFAULT_GC_HINT_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for DumpOptions {
    fn default() -> DumpOptions {
        DumpOptions {
            pid: 0,
            dir: PathBuf::new(),
            leave_running: false,
            gc_hint: true,
            gc_hint_timeout: DEFAULT_GC_HINT_TIMEOUT,
            shell_job: false,
            ext_unix_sk: false,
            ghost_limit: crate::files::ghost::DEFAULT_LIMIT,
            skip_in_flight: false,
            tcp_close: false,
        }
    }
}

/// Buffers of [`pages::READ_BATCH`] bytes that may wait for the page writer.
///
/// A process that is killed after the dump stays stopped until the image is complete anyway,
/// so a short queue (reading overlaps writing) is all it gets. A process that runs on (`-R`) is
/// released as soon as its memory is in crest's hands, so the queue may hold all of it, up to
/// half the memory the machine has available; beyond that the capture waits for the disk.
fn queued_page_buffers(leave_running: bool) -> usize {
    const WRITE_AHEAD: usize = 4;
    if !leave_running {
        return WRITE_AHEAD;
    }
    let budget = crate::proc::mem_available().unwrap_or(0) / 2;
    ((budget / pages::READ_BATCH as u64) as usize).max(WRITE_AHEAD)
}

/// Errors of a dump. Every one leaves the target running as before and no image behind.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("process {pid} does not exist (check the pid with `ps -p {pid}`)")]
    NoSuchProcess { pid: i32 },
    /// SysV message queues or semaphore sets of the tree that cannot be captured.
    #[error("process {pid}: {what}")]
    UnsupportedIpc { pid: i32, what: String },
    #[error("crest cannot dump itself (pid {pid})")]
    SelfDump { pid: i32 },
    #[error(
        "process {pid} is an ancestor of crest (pid {crest}): its tree holds crest itself, which \
         cannot be frozen, and dumping the shell crest runs from would end it; run crest from \
         outside that tree (another terminal or session), or dump one of its children"
    )]
    AncestorDump { pid: i32, crest: i32 },
    #[error("process {pid} is a kernel thread; only user processes can be dumped")]
    KernelThread { pid: i32 },
    #[error("process {pid} is a zombie (it has exited and waits for its parent to reap it)")]
    Zombie { pid: i32 },
    #[error(
        "process {pid} is already traced by process {tracer} (a debugger or strace?); detach it \
         first"
    )]
    AlreadyTraced { pid: i32, tracer: i32 },
    #[error(
        "process {pid} kept creating threads through {rounds} rounds of freezing; crest could \
         not stop them all (try again when it is less busy starting threads)"
    )]
    ThreadChurn { pid: i32, rounds: usize },
    #[error(
        "thread {tid} of process {pid} runs under seccomp (mode {mode}); seccomp filters cannot \
         be dumped yet"
    )]
    Seccomp { pid: i32, tid: i32, mode: u32 },
    #[error(
        "thread {tid} of process {pid} has other credentials than the main thread: {detail}; \
         crest restores one set of credentials for all threads"
    )]
    ThreadCredentials { pid: i32, tid: i32, detail: String },
    /// Per-thread kernel state crest cannot restore (threads.rs).
    #[error("thread {tid} of process {pid} {what}; crest cannot restore that")]
    ThreadState { pid: i32, tid: i32, what: String },
    #[error(
        "process {parent} is in the middle of a vfork: its child {child} shares its memory and \
         has not called exec or exited yet, and the parent waits for that in the kernel; dump \
         again once the child has called exec"
    )]
    Vfork { parent: i32, child: i32 },
    #[error(
        "process {pid}: cannot tell whether process {other} shares its memory (kcmp: {errno})"
    )]
    KcmpVm { pid: i32, other: i32, errno: Errno },
    #[error(
        "process {pid} ignores SIGTRAP (SIG_IGN); crest's parasite stops on breakpoints, whose \
         SIGTRAP makes the kernel reset an ignored SIGTRAP to the default action, so the \
         process cannot be dumped without changing it"
    )]
    SigtrapIgnored { pid: i32 },
    #[error("process {pid}: root directory {root}: {why}")]
    Root { pid: i32, root: String, why: String },
    /// Reading /proc failed (the message names the file, hence the pid).
    #[error(transparent)]
    Proc(ProcError),
    #[error("process {pid}, thread {tid}: {err}")]
    Ptrace {
        pid: i32,
        tid: i32,
        err: PtraceError,
    },
    #[error("process {pid}: {err}")]
    Regs { pid: i32, err: RegsError },
    #[error("process {pid}, thread {tid}: {err}")]
    Arch { pid: i32, tid: i32, err: ArchError },
    #[error("thread {tid} of process {pid} {how} while being frozen")]
    ThreadGone { pid: i32, tid: i32, how: String },
    #[error("thread {tid} of process {pid} reported an unexpected ptrace stop: {stop}")]
    UnexpectedStop { pid: i32, tid: i32, stop: String },
    #[error(
        "thread {tid} of process {pid} kept receiving signals and never reached its ptrace stop"
    )]
    SignalStorm { pid: i32, tid: i32 },
    #[error("process {pid}, thread {tid}: rseq: {detail}")]
    Rseq { pid: i32, tid: i32, detail: String },
    #[error("process {pid}: cannot dump the mapping {start:#x}-{end:#x} {name:?}: {why}")]
    UnsupportedMapping {
        pid: i32,
        start: u64,
        end: u64,
        name: String,
        why: String,
    },
    #[error("process {pid}: fd {fd} is {what}; crest cannot dump it yet")]
    UnsupportedFd { pid: i32, fd: i32, what: String },
    /// A file that a message queued in a UNIX socket carries (SCM_RIGHTS) ([`scm`]).
    #[error(
        "process {pid}: a file that a message queued in its UNIX socket (inode {socket}) carries \
         (SCM_RIGHTS) is {what}; crest cannot dump it yet"
    )]
    Carried { pid: i32, socket: u64, what: String },
    #[error(
        "process {pid}: cannot tell whether fds {fd1} and {fd2} share an open file (kcmp: \
         {errno}); crest needs a kernel with CONFIG_KCMP"
    )]
    Kcmp {
        pid: i32,
        fd1: i32,
        fd2: i32,
        errno: Errno,
    },
    #[error("process {pid}: working directory {path}: {why}")]
    Cwd { pid: i32, path: String, why: String },
    #[error("process {pid}: executable {path}: {why}")]
    Exe { pid: i32, path: String, why: String },
    #[error("process {pid}: cannot read resource limit {resource}: {errno}")]
    Rlimit {
        pid: i32,
        resource: u32,
        errno: Errno,
    },
    #[error("cannot read crest's own {what}: {errno}")]
    Own { what: &'static str, errno: Errno },
    #[error("process {pid}: saving memory failed: {err}")]
    Pages { pid: i32, err: PageError },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("the image is complete, but killing process {pid} failed: {errno}")]
    Kill { pid: i32, errno: Errno },
    #[error(
        "{} of process {pid} has a SIGTRAP pending; crest's parasite stops on SIGTRAP and would \
         lose it, so the process cannot be dumped until the signal is delivered",
        if *shared { "the process-wide queue".to_string() } else { format!("thread {tid}") }
    )]
    PendingSigtrap { pid: i32, tid: i32, shared: bool },
    /// Running the parasite in the process failed (it was cured: the process runs on as before).
    #[error("process {pid}: parasite: {err}")]
    Infect { pid: i32, err: InfectError },
    #[error(transparent)]
    Injected(#[from] Injected),
    #[error(
        "process {pid} is in another {ns} namespace than crest; dumping namespaces is not \
         supported yet (run crest inside the process's namespaces)"
    )]
    Namespace { pid: i32, ns: String },
    /// A process whose time namespace a restore could not give back ([`crate::timens`]).
    #[error("process {pid}: {why}; crest carries one time namespace for the whole tree")]
    TimeNamespace { pid: i32, why: String },
    /// A terminal (fd or controlling terminal) that cannot be restored; `what` says which and
    /// why, naming `--shell-job` where it would help (see `tty.rs`).
    #[error("process {pid}: {what}")]
    Terminal { pid: i32, what: String },
    #[error("the tree cannot be restored as it is: {why}")]
    TreeLayout { why: String },
    #[error("processes {pid1} and {pid2} share {what}; crest cannot restore that yet")]
    SharedBetweenProcesses {
        pid1: i32,
        pid2: i32,
        what: &'static str,
    },
    #[error(
        "process {pid}: the AIO ring at {start:#x} is also mapped by process {first} (at \
         {at:#x}): a ring inherited by fork has no context in the child, and crest cannot tell \
         from outside which process holds the context"
    )]
    SharedAioRing {
        pid: i32,
        start: u64,
        first: i32,
        at: u64,
    },
    #[error("processes {pid} and {owner} share an fd table (CLONE_FILES), but {why}; crest cannot restore that yet")]
    SharedFdTable { pid: i32, owner: i32, why: String },
    /// Several things cannot be dumped; each line names the process and the thing.
    #[error("the tree cannot be dumped, nothing was changed:\n  - {}", problems.join("\n  - "))]
    Refused { problems: Vec<String> },
    /// A process setting (OOM score, scheduling, prctl flags, ...) was refused or unreadable.
    #[error(transparent)]
    Settings(#[from] crate::pstate::StateError),
    #[error(transparent)]
    Locks(#[from] crate::files::locks::LockError),
    /// The network lock or the TCP connections in repair mode ([`crate::net`]).
    #[error("{0}")]
    Network(String),
}

impl DumpError {
    /// `Ok` when nothing was refused, the problem when there is one, otherwise every problem
    /// at once.
    fn refused(mut problems: Vec<DumpError>) -> Result<(), DumpError> {
        match problems.len() {
            0 => Ok(()),
            1 => Err(problems.remove(0)),
            _ => Err(DumpError::Refused {
                problems: problems.iter().map(|p| p.to_string()).collect(),
            }),
        }
    }

    fn thread(pid: i32, tid: i32, err: PtraceError) -> DumpError {
        match err {
            PtraceError::NoSuchThread { .. } if tid == pid && !proc_exists(pid) => {
                DumpError::NoSuchProcess { pid }
            }
            err => DumpError::Ptrace { pid, tid, err },
        }
    }
}

impl From<ProcError> for DumpError {
    fn from(e: ProcError) -> DumpError {
        match e {
            ProcError::NoSuchProcess { pid } => DumpError::NoSuchProcess { pid },
            e => DumpError::Proc(e),
        }
    }
}

/// Refuses every description whose signal-driven I/O owner is not a thread or process group
/// of the tree (files/fown.rs).
fn owners_in_tree(
    procs: &[process::CollectedProcess],
    tasks: &[crate::images::TreeTask],
    problems: &mut problems::Problems,
) -> Result<(), DumpError> {
    let tids: std::collections::HashSet<i32> = procs
        .iter()
        .flat_map(|p| p.threads.iter().map(|t| t.tid))
        .chain(tasks.iter().map(|t| t.pid))
        .collect();
    let pgids = tasks.iter().map(|t| t.pgid).collect();
    for p in procs {
        let t = &p.fd_table;
        for (fd, what) in crate::files::fown::foreign_owners(&t.fds, &t.open_files, &tids, &pgids) {
            let pid = p.proc.pid();
            problems.take::<()>(Err(DumpError::UnsupportedFd { pid, fd, what }))?;
        }
    }
    Ok(())
}

fn proc_exists(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// What a dump did.
#[derive(Debug, Clone)]
pub struct DumpReport {
    pub pid: i32,
    /// The committed image directory.
    pub dir: PathBuf,
    /// As recorded in the image, plus a final "release" phase and the full frozen time.
    pub stats: DumpStats,
    /// Total size of the image files, in bytes.
    pub image_bytes: u64,
    pub vmas: usize,
    pub fds: usize,
    /// Live processes dumped (the root and its descendants).
    pub processes: usize,
    /// Zombies recorded (children that had exited and were not yet reaped).
    pub zombies: usize,
    /// The tree was left running (`-R`) rather than killed.
    pub left_running: bool,
    /// Things the user may want to know (a syscall that will return EINTR, an rseq abort).
    pub notes: Vec<String>,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

impl DumpReport {
    /// A human-readable summary.
    pub fn render(&self) -> String {
        let s = &self.stats;
        let others = match (self.processes.saturating_sub(1), self.zombies) {
            (0, 0) => String::new(),
            (n, 0) => format!(" and {n} descendant(s)"),
            (n, z) => format!(" and {n} descendant(s), {z} zombie(s)"),
        };
        let mut out = format!(
            "dumped process {}{others} into {} ({})\n",
            self.pid,
            self.dir.display(),
            if self.left_running {
                "left running"
            } else {
                "killed"
            }
        );
        out += &format!("  gc hint: {}\n", crate::show::gc_hint_text(&s.gc_hint));
        out += &format!(
            "  memory: {} VMAs, rss {:.1} MiB; pages scanned {}, present {}, file-backed {}, \
             zero {}, written {} ({:.1} MiB)\n",
            self.vmas,
            mib(s.rss_bytes),
            s.pages_scanned,
            s.pages_present,
            s.pages_file_backed,
            s.pages_zero,
            s.pages_written,
            mib(s.bytes_written)
        );
        out += &format!(
            "  fds: {}; image size {:.1} MiB\n",
            self.fds,
            mib(self.image_bytes)
        );
        out += &format!(
            "  time: {}; frozen {:.1} ms\n",
            crate::phases::text(&s.phases_us),
            s.frozen_us as f64 / 1000.0
        );
        if let Some(slowest) = slowest_phase(s) {
            out += &format!("  slowest: {slowest}\n");
        }
        for note in &self.notes {
            out += &format!("  note: {note}\n");
        }
        out
    }

    /// The report for `--stats-json`: the image's statistics plus where the image went.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "pid": self.pid,
            "dir": self.dir.display().to_string(),
            "image_bytes": self.image_bytes,
            "vmas": self.vmas,
            "fds": self.fds,
            "processes": self.processes,
            "zombies": self.zombies,
            "left_running": self.left_running,
            "notes": self.notes,
            "stats": self.stats,
        })
    }
}

/// Dumps shorter than this are not worth explaining.
const SLOW_DUMP_US: u64 = 1_000_000;

/// For a slow dump, the phase that took most of the time, e.g. `pages: 5.0 s of 6.1 s, 1.5 GiB
/// of memory read at 300 MiB/s, 1.2 GiB written` (sizes and rate for the page phase).
fn slowest_phase(s: &DumpStats) -> Option<String> {
    let total: u64 = s.phases_us.iter().map(|(_, us)| us).sum();
    if total < SLOW_DUMP_US {
        return None;
    }
    let (name, us) = s.phases_us.iter().max_by_key(|(_, us)| *us)?;
    let secs = |us: u64| us as f64 / 1e6;
    let mut text = format!("{name}: {:.1} s of {:.1} s", secs(*us), secs(total));
    if name == "pages" && *us > 0 {
        // What the page phase reads: every present page but those left to their file.
        let read = s.pages_present.saturating_sub(s.pages_file_backed) * crate::arch::page_size();
        text += &format!(
            ", {} of memory read at {:.0} MiB/s, {} written",
            size_text(read),
            mib(read) / secs(*us),
            size_text(s.bytes_written)
        );
    }
    Some(text)
}

/// `1.5 GiB` or `12.3 MiB`.
fn size_text(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", mib(bytes))
    }
}

/// Dumps the tree rooted at process `opts.pid` into `opts.dir`.
pub fn dump(opts: &DumpOptions) -> Result<DumpReport, DumpError> {
    let pid = opts.pid;
    if pid == std::process::id() as i32 {
        return Err(DumpError::SelfDump { pid });
    }
    let root = Proc::open(pid)?;
    // What can be refused without touching anything is checked first.
    if root.is_kernel_thread()? {
        return Err(DumpError::KernelThread { pid });
    }
    if root.tree_ids()?.state == 'Z' {
        return Err(DumpError::Zombie { pid });
    }
    let page_size = crate::arch::page_size();

    let mut phases = Phases::new();
    let before = tree::descendants(pid);
    let crest = std::process::id() as i32;
    if before.contains(&crest) {
        return Err(DumpError::AncestorDump { pid, crest });
    }
    let gc_hint = if opts.gc_hint {
        gc_hints(&before, opts.gc_hint_timeout)
    } else {
        GcHintStats::Off
    };
    phases.end("hint");
    // Measured after the hint, which is meant to shrink it.
    let rss_bytes: u64 = before
        .iter()
        .filter_map(|&p| Proc::open(p).and_then(|p| p.status()).ok())
        .map(|s| s.vm_rss_bytes)
        .sum();
    // With -R the whole capture may wait in memory for the writers (see queued_page_buffers);
    // its buffers are made ready now, while the tree still runs.
    let queued_buffers = queued_page_buffers(opts.leave_running);
    let ready_buffers = if opts.leave_running {
        let expected = rss_bytes.min(queued_buffers as u64 * pages::READ_BATCH as u64);
        pages::prefaulted_buffers(expected, pages::READ_BATCH)
    } else {
        Vec::new()
    };
    phases.end("prepare");

    // Declared before the TCP session, so that on failure the session is undone (repair mode
    // off, lock deleted) before the tree is released.
    let frozen;
    let mut procs;
    // The tree's TCP connections are locked before the freeze ([`crate::net::lock`]).
    let net =
        crate::net::tcp_dump::Session::begin(pid, &before, opts.skip_in_flight, opts.tcp_close)
            .map_err(|e| DumpError::Network(e.to_string()))?;
    if net.locked() {
        phases.end("network lock");
    }

    let freeze_start = Instant::now();
    frozen = tree::freeze(&root, opts.shell_job)?;
    // The moment the tree's clocks stop, as far as a restore is concerned (crate::timens).
    let clocks = crate::timens::tree_clocks(pid)?;
    fault::point("seize")?;
    phases.end("freeze");
    // A tree whose sessions and groups a restore could not recreate is refused now, before
    // anything is put into it.
    let caller_sid = frozen
        .tasks
        .first()
        .filter(|root| root.ppid > 0)
        .and_then(|root| nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(root.ppid))).ok())
        .map(|sid| sid.as_raw());
    crate::restore::check_tree_layout(&frozen.tasks, caller_sid.unwrap_or(-1))
        .map_err(|why| DumpError::TreeLayout { why })?;

    // Collect: all of it while the whole tree is frozen, so it is one consistent snapshot.
    // Refusals of every process are reported together (each refused process is released as
    // its collect fails, with its parasite already gone).
    procs = Vec::with_capacity(frozen.processes.len());
    let mut problems = problems::Problems::new();
    for p in frozen.processes {
        procs.extend(problems.take(process::collect(
            p.proc,
            p.frozen,
            &p.shell_fds,
            opts.ghost_limit,
            &mut phases,
        ))?);
    }
    // Read before `-R` ends the TCP session.
    let skipped_in_flight = net.skipped();
    let tree_pids: Vec<i32> = frozen.tasks.iter().map(|t| t.pid).collect();
    owners_in_tree(&procs, &frozen.tasks, &mut problems)?;
    let (sysv_ipc, ipc_refused) = sysv_ipc::capture(&tree_pids)?;
    for (pid, what) in ipc_refused {
        problems.take::<()>(Err(DumpError::UnsupportedIpc { pid, what }))?;
    }
    problems.finish()?;
    let tcp_us = net.spent().as_micros() as u64;
    if tcp_us > 0 {
        // Spent within "collect": the TCP sockets' share of it.
        phases
            .done
            .push(("tcp sockets (in collect)".to_string(), tcp_us));
    }
    shared::resolve(&mut procs, opts.ext_unix_sk)?;
    sysv::store_once(
        &mut procs
            .iter_mut()
            .map(|p| &mut p.vmas.sysv)
            .collect::<Vec<_>>(),
    );
    let mut code_ids = code_ids(&procs)?;
    phases.end("resolve");

    let mut writer = ImageWriter::create(&opts.dir)?;
    // A tree that runs on is released before any page is written, so the writers wait and
    // the capture has the memory bandwidth to itself.
    let held = opts.leave_running;
    let mut ready = Some(ready_buffers);
    let mut captures = Vec::with_capacity(procs.len());
    // What the page phase reads: the resident memory measured before the freeze.
    let progress = crate::progress::Progress::bytes("reading memory", rss_bytes);
    // What the page files get: at most the resident memory, exactly known once read.
    let writing = crate::progress::Progress::held_bytes("writing the image", rss_bytes);
    for p in &procs {
        let background = BackgroundWriter::spawn(
            pages::Counted::new(
                writer.page_file(&pages_file_name(p.pid()))?,
                writing.clone(),
            ),
            queued_buffers,
            held,
        )
        .map_err(|e| DumpError::Own {
            what: "page writer thread",
            errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EAGAIN)),
        })?
        .with_buffers(ready.take().unwrap_or_default());
        let mut sink = FaultSink::new(background);
        let captured = pages::dump_pages(&p.proc, &p.vmas.areas, page_size, &mut sink, &progress)
            .and_then(|mut d| {
                pages::dump_memfds(&p.proc, &p.vmas.memfds, page_size, &mut sink, &mut d)?;
                crate::files::ghost::dump_content(
                    &p.proc,
                    &p.vmas.ghosts,
                    page_size,
                    &mut sink,
                    &mut d,
                )?;
                let sysv: Vec<_> = p.vmas.sysv.iter().map(sysv::source).collect();
                let sysv_runs = pages::dump_sysv(&p.proc, &sysv, page_size, &mut sink, &mut d)?;
                Ok((d, sysv_runs))
            });
        let failed = captured.is_err() || sink.injected.is_some();
        captures.push((captured, sink));
        if failed {
            break;
        }
    }
    progress.finish();
    writing.release();
    writing.set_total(
        captures
            .iter()
            .filter_map(|(c, _)| c.as_ref().ok())
            .map(|(d, _)| d.counts.bytes_written)
            .sum(),
    );
    phases.end("pages");

    // Everything the image needs from the tree is now in crest's memory: a tree that runs on
    // need not wait for the disk.
    let mut frozen_us = 0;
    let mut released = false;
    if opts.leave_running
        && captures
            .iter()
            .all(|(c, s)| c.is_ok() && s.injected.is_none())
    {
        net.leave_running().map_err(DumpError::Network)?;
        for p in &mut procs {
            p.frozen.take().expect("frozen until released").release()?;
        }
        released = true;
        frozen_us = freeze_start.elapsed().as_micros() as u64;
        phases.end("release");
    }

    let mut counts = pages::PageCounts::default();
    let mut runs = Vec::with_capacity(captures.len());
    for (p, (captured, mut sink)) in procs.iter().zip(captures) {
        sink.inner.start();
        let (page_file, written) = sink.inner.finish();
        if let Some(injected) = sink.injected.take() {
            return Err(DumpError::Injected(injected));
        }
        // When the writer failed, reading stopped because of it: its error is the one to
        // report.
        written.map_err(|e| DumpError::Pages {
            pid: p.pid(),
            err: PageError::Image(e),
        })?;
        let (page_dump, sysv_runs) = captured.map_err(|e| match e {
            PageError::Proc(ProcError::NoSuchProcess { pid }) => DumpError::NoSuchProcess { pid },
            err => DumpError::Pages { pid: p.pid(), err },
        })?;
        writer.finish_page_file(page_file.into_inner())?;
        counts.add(&page_dump.counts);
        runs.push((
            page_dump.runs,
            page_dump.memfd_runs,
            page_dump.ghost_runs,
            sysv_runs,
        ));
    }

    let mut notes = skipped_in_flight;
    let (mut nr_vmas, mut nr_fds, mut nr_images) = (0, 0, 0);
    let mut sysv_segments = Vec::new();
    let mut mqueues = Vec::new();
    for (p, (page_runs, memfd_runs, ghost_runs, sysv_runs)) in procs.iter_mut().zip(runs) {
        let mut image = process_image(p, page_runs);
        image.memfd_runs = memfd_runs;
        image.ghost_runs = ghost_runs;
        image.sysv_shm = sysv::with_runs(&p.vmas.sysv, sysv_runs);
        if image.pid == pid {
            image.sysv_ipc = sysv_ipc.clone();
        }
        sysv_segments.extend(image.sysv_shm.iter().cloned());
        mqueues.extend(
            image
                .files
                .iter()
                .filter(|f| matches!(f.kind, crate::images::FileKind::Mqueue(_)))
                .cloned(),
        );
        image.code_ids = std::mem::take(&mut code_ids[nr_images]);
        nr_images += 1;
        nr_vmas += image.vmas.len();
        nr_fds += image.fds.len();
        notes.append(&mut p.notes);
        writer.write_process(&image)?;
    }
    writing.finish();
    phases.end("write");

    if !released {
        // Still stopped, until the kill right after the commit.
        frozen_us = freeze_start.elapsed().as_micros() as u64;
    }
    let mut stats = DumpStats {
        pages_scanned: counts.scanned,
        pages_absent: counts.absent,
        pages_present: counts.scanned - counts.absent,
        pages_file_backed: counts.file_backed,
        pages_zero: counts.zero,
        pages_written: counts.written,
        bytes_written: counts.bytes_written,
        rss_bytes,
        gc_hint,
        phases_us: phases.done.clone(),
        frozen_us,
    };
    let zombies = frozen.tasks.len() - procs.len();
    let inventory = Inventory {
        arch: Arch::host(),
        page_size,
        kernel_release: crate::sys::kernel_release().unwrap_or_default(),
        crest_version: env!("CARGO_PKG_VERSION").to_string(),
        created_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        root_pid: pid,
        files: vec![],
        stats: stats.clone(),
        tree: frozen.tasks,
        shell_job: frozen.shell_job,
        machine_ttys: frozen.machine_ttys,
        caller_sid: caller_sid.unwrap_or(-1),
        clocks,
    };
    writer.commit(inventory)?;
    phases.end("commit");

    // The image is in place; only now may the tree go away. Children first, so that no
    // process of the tree runs on as an orphan while its parent is being killed.
    if !released {
        for p in procs.iter_mut().rev() {
            // Dead, but a pid stays taken until its parent reaps the zombie; a restore waits
            // for that (restore::fork::wait_until_pid_free), so the dump need not.
            p.frozen.take().expect("frozen until killed").kill()?;
        }
        phases.end("kill");
        stats.frozen_us = freeze_start.elapsed().as_micros() as u64;
    }
    if !released {
        net.killed();
        // The image owns the segments now: a restore recreates them under their ids.
        notes.extend(sysv::remove_captured(&sysv_segments));
        notes.extend(sysv_ipc::remove_captured(&sysv_ipc));
        notes.extend(crate::files::mqueue::remove_captured(mqueues.iter()));
    }
    stats.phases_us = phases.done;

    Ok(DumpReport {
        pid,
        dir: opts.dir.clone(),
        image_bytes: dir_size(&opts.dir),
        processes: procs.len(),
        zombies,
        vmas: nr_vmas,
        fds: nr_fds,
        stats,
        left_running: opts.leave_running,
        notes,
    })
}

/// Asks every HotSpot JVM of the tree for its GC hint; what the image records is the first
/// JVM's outcome (the root's when it is one).
fn gc_hints(pids: &[i32], timeout: Duration) -> GcHintStats {
    let mut first = GcHintStats::NotAJvm;
    for &p in pids {
        let Ok(proc) = Proc::open(p) else { continue };
        let stats = hint::run(&proc, timeout);
        if first == GcHintStats::NotAJvm {
            first = stats;
        }
    }
    first
}

/// The content identity (build-id or hash) of each process's exe and executable mappings.
fn code_ids(
    procs: &[process::CollectedProcess],
) -> Result<Vec<Vec<crate::images::CodeId>>, DumpError> {
    let mut ids = crate::files::codeid::CodeIds::default();
    procs
        .iter()
        .map(|p| {
            ids.process(p.files.all(), &p.vmas.vmas, p.exe_file)
                .map_err(|e| DumpError::Exe {
                    pid: p.pid(),
                    path: e.path,
                    why: e.why,
                })
        })
        .collect()
}

/// The image record of a collected process whose pages are stored as `page_runs`.
fn process_image(
    p: &mut process::CollectedProcess,
    page_runs: Vec<crate::images::PageRun>,
) -> ProcessImage {
    let pid = p.pid();
    ProcessImage {
        pid,
        ppid: p.ppid,
        comm: std::mem::take(&mut p.comm),
        creds: p.creds.clone(),
        exe_file: p.exe_file,
        threads: std::mem::take(&mut p.threads),
        mm: p.mm.clone(),
        vmas: std::mem::take(&mut p.vmas.vmas),
        page_runs,
        pages_file: pages_file_name(pid),
        files: std::mem::take(&mut p.files).into_files(),
        open_files: std::mem::take(&mut p.fd_table.open_files),
        fds: std::mem::take(&mut p.fd_table.fds),
        cwd_file: p.cwd_file,
        root_file: p.root_file,
        umask: p.umask,
        rlimits: p.rlimits.clone(),
        sig_ignored: p.sig_ignored,
        sig_caught: p.sig_caught,
        vdso_blake3: p.vmas.vdso_blake3,
        task: std::mem::take(&mut p.task),
        posix_locks: std::mem::take(&mut p.fd_table.posix_locks),
        mapping_locks: std::mem::take(&mut p.fd_table.mapping_locks),
        memfd_runs: Vec::new(),
        sysv_shm: Vec::new(),
        sysv_ipc: Default::default(),
        fd_table_of: p.fd_table_of,
        code_ids: Vec::new(),
        ghost_runs: Vec::new(),
    }
}

/// The page writer with the `pages` fault-injection point: it fails right after the first
/// batch of pages is handed over (an ImageError carries the failure through `dump_pages`;
/// `injected` says it was this). It sits in front of the writer thread because injected
/// failures are set per thread.
struct FaultSink<S: PageSink> {
    inner: S,
    writes: u64,
    injected: Option<Injected>,
}

impl<S: PageSink> FaultSink<S> {
    fn new(inner: S) -> FaultSink<S> {
        FaultSink {
            inner,
            writes: 0,
            injected: None,
        }
    }

    fn after_write(&mut self) -> Result<(), ImageError> {
        self.writes += 1;
        if self.writes == 1 {
            if let Err(injected) = fault::point("pages") {
                let what = injected.to_string();
                self.injected = Some(injected);
                return Err(ImageError::Write {
                    dir: PathBuf::new(),
                    what,
                });
            }
        }
        Ok(())
    }
}

impl<S: PageSink> PageSink for FaultSink<S> {
    fn offset(&self) -> u64 {
        self.inner.offset()
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
        self.inner.write_all(bytes)?;
        self.after_write()
    }

    fn buffer(&mut self, len: usize) -> Vec<u8> {
        self.inner.buffer(len)
    }

    fn write_buffer(&mut self, buf: Vec<u8>) -> Result<(), ImageError> {
        self.inner.write_buffer(buf)?;
        self.after_write()
    }
}

/// Sum of the sizes of the files directly inside `dir` (0 for what cannot be read).
fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
