//! `crest check`: probes, for real, every kernel feature and privilege crest relies on and says
//! what stops working without each.
//!
//! Nothing here is inferred from version numbers: each probe performs the operation crest will
//! perform (seize a child, read its memory, fork with a chosen pid, ...). Children made for the
//! probes are killed by pid and reaped before [`run`] returns.

use std::fmt::Write as _;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use caps::{CapSet, Capability};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::ptrace::Options;
use nix::unistd::ForkResult;

use crate::images::{host_page_size, Arch};
use crate::{proc, ptrace, sys};

/// What a feature is needed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Dump,
    Restore,
    DumpAndRestore,
    /// Used when available (lazy pages, a faster or more exact dump); dump and restore work
    /// without it.
    Optional,
}

impl Need {
    fn label(self) -> &'static str {
        match self {
            Need::Dump => "dump",
            Need::Restore => "restore",
            Need::DumpAndRestore => "dump+restore",
            Need::Optional => "optional",
        }
    }

    fn for_dump(self) -> bool {
        matches!(self, Need::Dump | Need::DumpAndRestore)
    }

    fn for_restore(self) -> bool {
        matches!(self, Need::Restore | Need::DumpAndRestore)
    }
}

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Works; the text says what the probe saw.
    Present(String),
    /// Does not work; the text says why.
    Missing(String),
}

/// One feature or privilege and how its probe went.
#[derive(Debug, Clone)]
pub struct Probe {
    pub name: &'static str,
    pub need: Need,
    pub status: Status,
    /// What stops working when the feature is missing.
    pub without: &'static str,
}

impl Probe {
    pub fn present(&self) -> bool {
        matches!(self.status, Status::Present(_))
    }
}

/// Everything `crest check` found.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub kernel_release: String,
    pub arch: Arch,
    pub page_size: u64,
    pub probes: Vec<Probe>,
}

impl CheckReport {
    /// Whether everything a dump needs is present.
    pub fn can_dump(&self) -> bool {
        self.probes
            .iter()
            .filter(|p| p.need.for_dump())
            .all(Probe::present)
    }

    /// Whether everything a restore needs is present.
    pub fn can_restore(&self) -> bool {
        self.probes
            .iter()
            .filter(|p| p.need.for_restore())
            .all(Probe::present)
    }

    /// Whether everything dump and restore need is present (`crest check` exits 0).
    pub fn can_dump_and_restore(&self) -> bool {
        self.can_dump() && self.can_restore()
    }

    /// The probe called `name`.
    pub fn probe(&self, name: &str) -> Option<&Probe> {
        self.probes.iter().find(|p| p.name == name)
    }

    /// The report for a terminal: one line per probe, the consequence under each missing one,
    /// and a verdict for dump and restore.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "crest check: Linux {} on {}, page size {} bytes",
            self.kernel_release,
            self.arch.name(),
            self.page_size
        );
        out.push('\n');
        let width = self.probes.iter().map(|p| p.name.len()).max().unwrap_or(0);
        for p in &self.probes {
            let (mark, text) = match &p.status {
                Status::Present(t) => ("present", t),
                Status::Missing(t) => ("MISSING", t),
            };
            let _ = writeln!(
                out,
                "  [{mark}] {:<width$}  ({}) {text}",
                p.name,
                p.need.label()
            );
            if !p.present() {
                let _ = writeln!(out, "            {:<width$}  without it: {}", "", p.without);
            }
        }
        out.push('\n');
        let verdict = |ok: bool, need: fn(Need) -> bool| -> String {
            if ok {
                "can work".to_string()
            } else {
                let missing: Vec<&str> = self
                    .probes
                    .iter()
                    .filter(|p| need(p.need) && !p.present())
                    .map(|p| p.name)
                    .collect();
                format!("cannot work (missing: {})", missing.join(", "))
            }
        };
        let _ = writeln!(out, "dump:    {}", verdict(self.can_dump(), Need::for_dump));
        let _ = writeln!(
            out,
            "restore: {}",
            verdict(self.can_restore(), Need::for_restore)
        );
        out
    }
}

/// Probe names, also used by the tests to check the report is complete.
pub const PTRACE_SEIZE: &str = "PTRACE_SEIZE + PTRACE_INTERRUPT";
pub const RSEQ_CONFIG: &str = "PTRACE_GET_RSEQ_CONFIGURATION";
pub const PROCESS_VM_READV: &str = "process_vm_readv";
pub const PIDFD_GETFD: &str = "pidfd_open + pidfd_getfd";
pub const MAP_FILES: &str = "/proc/PID/map_files";
pub const KCMP: &str = "kcmp KCMP_FILE";
pub const PAGEMAP: &str = "/proc/PID/pagemap";
pub const PAGEMAP_PFN: &str = "pagemap PFNs";
pub const MEMFD: &str = "memfd_create";
pub const CLONE3_SET_TID: &str = "clone3 with set_tid";
pub const PR_SET_MM_MAP: &str = "prctl PR_SET_MM_MAP";
pub const YAMA: &str = "Yama ptrace_scope";
pub const RESTORE_PRIVILEGE: &str = "restore privilege";
pub const CAP_CHECKPOINT_RESTORE: &str = "CAP_CHECKPOINT_RESTORE";
pub const CAP_SYS_PTRACE: &str = "CAP_SYS_PTRACE";
pub const CAP_SYS_ADMIN: &str = "CAP_SYS_ADMIN";
pub const CAP_SYS_RESOURCE: &str = "CAP_SYS_RESOURCE";
pub const NETWORK_LOCK: &str = "network lock (nftables)";
pub const USERFAULTFD: &str = "userfaultfd with events";

/// Runs every probe.
pub fn run() -> CheckReport {
    let mut probes = Vec::new();
    let caps = Caps::read();

    match ProbeChild::spawn() {
        Ok(child) => probe_child(&child, &mut probes),
        Err(why) => {
            // Without a child none of the per-process probes can run; each says so.
            let why = format!("cannot start a probe child: {why}");
            for (name, need, without) in CHILD_PROBES {
                probes.push(Probe {
                    name,
                    need,
                    status: Status::Missing(why.clone()),
                    without,
                });
            }
        }
    }
    probes.push(probe(KCMP, Need::Dump, probe_kcmp(), "fds that share one open file description (dup'd, like 1 and 2 on one log) cannot be recognised, so a dump refuses them"));
    let (pagemap, pfn) = probe_pagemap();
    probes.push(probe(
        PAGEMAP,
        Need::Dump,
        pagemap,
        "a dump cannot tell which pages are present, so it cannot store memory",
    ));
    probes.push(probe(PAGEMAP_PFN, Need::Optional, pfn, "pages that map the shared zero page are read and skipped by content, which makes a dump slower"));
    probes.push(probe(
        MEMFD,
        Need::DumpAndRestore,
        probe_memfd(),
        "the parasite and restorer blobs cannot be mapped into a process",
    ));
    probes.push(probe(
        CLONE3_SET_TID,
        Need::Restore,
        probe_clone3_set_tid(),
        "restore cannot give processes their original pids",
    ));
    probes.push(probe(PR_SET_MM_MAP, Need::Restore, probe_prctl_mm_map(), "a restored process's /proc/PID/cmdline, environ, auxv and brk cannot be set to the saved values"));
    probes.push(probe(
        YAMA,
        Need::Dump,
        probe_yama(&caps),
        "a dump cannot attach to the target with ptrace",
    ));
    probes.push(probe(
        RESTORE_PRIVILEGE,
        Need::Restore,
        if caps.checkpoint_restore || caps.sys_admin {
            Status::Present("CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN is in the effective set".into())
        } else {
            Status::Missing("neither CAP_CHECKPOINT_RESTORE nor CAP_SYS_ADMIN is in the effective set".into())
        },
        "restore cannot choose pids (clone3 set_tid) nor open /proc/PID/map_files; run crest as root or give it CAP_CHECKPOINT_RESTORE",
    ));
    probes.push(probe(
        CAP_CHECKPOINT_RESTORE,
        Need::Optional,
        caps.status(Capability::CAP_CHECKPOINT_RESTORE),
        "without it (or CAP_SYS_ADMIN) crest cannot choose pids or read map_files",
    ));
    probes.push(probe(
        CAP_SYS_PTRACE,
        Need::Optional,
        caps.status(Capability::CAP_SYS_PTRACE),
        "only processes of crest's own user that Yama allows can be dumped",
    ));
    probes.push(probe(
        CAP_SYS_ADMIN,
        Need::Optional,
        caps.status(Capability::CAP_SYS_ADMIN),
        "pagemap shows no PFNs (zero pages are found by content)",
    ));
    probes.push(probe(
        CAP_SYS_RESOURCE,
        Need::Optional,
        caps.status(Capability::CAP_SYS_RESOURCE),
        "a resource limit above crest's own hard limit cannot be restored",
    ));
    probes.push(probe(
        NETWORK_LOCK,
        Need::Optional,
        match crate::net::lock::probe() {
            Ok(seen) => Status::Present(seen),
            Err(why) => Status::Missing(why),
        },
        "established TCP connections cannot be dumped (their packets must be blocked from the dump until the restore); install nftables",
    ));
    probes.push(probe(
        USERFAULTFD,
        Need::Optional,
        match crate::lazy::uffd::create() {
            Ok(_) => {
                Status::Present("created one with the fork, remap, remove and unmap events".into())
            }
            Err(why) => Status::Missing(why),
        },
        "crest restore --lazy-pages cannot be used (memory is copied before the process runs)",
    ));

    CheckReport {
        kernel_release: sys::kernel_release().unwrap_or_else(|e| format!("unknown ({e})")),
        arch: Arch::host(),
        page_size: host_page_size(),
        probes,
    }
}

fn probe(name: &'static str, need: Need, status: Status, without: &'static str) -> Probe {
    Probe {
        name,
        need,
        status,
        without,
    }
}

/// The probes that run against a child process, with what they are needed for and what
/// stops working without them.
const CHILD_PROBES: [(&str, Need, &str); 5] = [
    (PTRACE_SEIZE, Need::Dump, "crest cannot stop a process to dump it"),
    (RSEQ_CONFIG, Need::Dump, "a thread's rseq registration (glibc registers one in every thread) cannot be saved, so a dump refuses the process"),
    (PROCESS_VM_READV, Need::Dump, "memory cannot be read in large batches; a dump cannot store pages"),
    (PIDFD_GETFD, Need::Dump, "a dump cannot take a duplicate of the target's file descriptors to read their state"),
    (MAP_FILES, Need::Dump, "the exact file behind a mapping (a replaced or deleted one) cannot be identified"),
];

fn probe_child(child: &ProbeChild, probes: &mut Vec<Probe>) {
    let mut push = |name: &str, status: Status| {
        let (name, need, without) = CHILD_PROBES
            .into_iter()
            .find(|(n, _, _)| *n == name)
            .expect("every child probe is listed in CHILD_PROBES");
        probes.push(Probe {
            name,
            need,
            status,
            without,
        });
    };
    let seized = probe_seize(child.pid);
    let is_seized = matches!(seized, Status::Present(_));
    push(PTRACE_SEIZE, seized);
    push(
        RSEQ_CONFIG,
        if is_seized {
            probe_rseq(child.pid)
        } else {
            Status::Missing("not tested: the probe child could not be seized".into())
        },
    );
    push(PROCESS_VM_READV, probe_vm_readv(child));
    push(PIDFD_GETFD, probe_pidfd_getfd(child));
    push(MAP_FILES, probe_map_files(child));
}

/// What the probe child writes into its private copy of `ProbeChild::page`, so a read that
/// returns it provably came from the child.
const CHILD_MARKER: &[u8; 16] = b"crest-check-chld";

/// A forked child that writes [`CHILD_MARKER`] into its copy of a private page, reports that
/// through a pipe and then sleeps until it is killed (by pid, on drop).
struct ProbeChild {
    pid: i32,
    /// The private anonymous page whose child copy holds the marker (ours stays zero).
    page: memmap2::MmapMut,
    /// Our end of the pipe; the child has a copy of the same open file description.
    pipe_read: OwnedFd,
}

impl ProbeChild {
    fn spawn() -> Result<ProbeChild, String> {
        let mut page = memmap2::MmapMut::map_anon(host_page_size() as usize)
            .map_err(|e| format!("mmap: {e}"))?;
        let (pipe_read, pipe_write) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe2: {e}"))?;
        let parent = nix::unistd::getpid().as_raw();
        // SAFETY: the child only writes to memory it owns and makes async-signal-safe system
        // calls (prctl, getppid, write, pause, _exit) before it dies, so forking from a
        // multithreaded process is sound.
        match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
            ForkResult::Child => {
                page[..CHILD_MARKER.len()].copy_from_slice(CHILD_MARKER);
                // SAFETY: prctl/getppid/write/pause/_exit are async-signal-safe and take only
                // integers or the address of a live local byte.
                unsafe {
                    // Die with the thread that forked us, so a crashed check leaves no child.
                    libc::prctl(
                        libc::PR_SET_PDEATHSIG,
                        libc::SIGKILL as libc::c_ulong,
                        0,
                        0,
                        0,
                    );
                    if libc::getppid() != parent {
                        libc::_exit(1);
                    }
                    let ready = 1u8;
                    libc::write(pipe_write.as_raw_fd(), (&ready as *const u8).cast(), 1);
                    loop {
                        libc::pause();
                    }
                }
            }
            ForkResult::Parent { child } => {
                drop(pipe_write);
                let child = ProbeChild {
                    pid: child.as_raw(),
                    page,
                    pipe_read,
                };
                let mut byte = [0u8; 1];
                match nix::unistd::read(&child.pipe_read, &mut byte) {
                    Ok(1) => Ok(child),
                    Ok(_) => Err("the probe child exited before it was ready".into()),
                    Err(e) => Err(format!("waiting for the probe child: {e}")),
                }
            }
        }
    }
}

impl Drop for ProbeChild {
    fn drop(&mut self) {
        kill_and_reap(self.pid);
    }
}

/// SIGKILLs our child `pid` and waits until it is gone (a traced child may first report stops).
fn kill_and_reap(pid: i32) {
    // SAFETY: kill takes only integers; `pid` is our own unreaped child, so it cannot have
    // been reused by another process.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid, writable int.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        if r == pid && (libc::WIFEXITED(status) || libc::WIFSIGNALED(status)) {
            return;
        }
        if r < 0 && Errno::last() != Errno::EINTR {
            return;
        }
    }
}

fn probe_seize(pid: i32) -> Status {
    if let Err(e) = ptrace::seize(pid, Options::empty()) {
        return Status::Missing(e.to_string());
    }
    if let Err(e) = ptrace::interrupt(pid) {
        return Status::Missing(e.to_string());
    }
    match ptrace::wait_stop(pid) {
        Ok(ptrace::Stop::Event {
            event: ptrace::PTRACE_EVENT_STOP,
            ..
        }) => Status::Present("seized a child and stopped it with PTRACE_INTERRUPT".into()),
        Ok(other) => Status::Missing(format!(
            "the interrupted child reported {other:?} instead of an interrupt stop"
        )),
        Err(e) => Status::Missing(e.to_string()),
    }
}

fn probe_rseq(pid: i32) -> Status {
    match ptrace::rseq_configuration(pid) {
        Ok(Some(r)) => Status::Present(format!(
            "read the child's rseq area at {:#x} ({} bytes)",
            r.abi_pointer, r.abi_size
        )),
        Ok(None) => Status::Present("the kernel answered; the child has no rseq registered".into()),
        Err(e) => Status::Missing(e.to_string()),
    }
}

fn probe_vm_readv(child: &ProbeChild) -> Status {
    let mut buf = [0u8; CHILD_MARKER.len()];
    match ptrace::read_memory(child.pid, child.page.as_ptr() as u64, &mut buf) {
        Ok(()) if &buf == CHILD_MARKER && child.page[..CHILD_MARKER.len()] != CHILD_MARKER[..] => {
            Status::Present("read the child's private memory".into())
        }
        Ok(()) => Status::Missing("the read returned other bytes than the child wrote".into()),
        Err(e) => Status::Missing(e.to_string()),
    }
}

fn probe_pidfd_getfd(child: &ProbeChild) -> Status {
    let pidfd = match sys::pidfd_open(child.pid) {
        Ok(fd) => fd,
        Err(e) => return Status::Missing(format!("pidfd_open: {e} (needs Linux 5.3+)")),
    };
    // The child inherited our pipe's read end at the same number.
    let copy = match sys::pidfd_getfd(&pidfd, child.pipe_read.as_raw_fd()) {
        Ok(fd) => fd,
        Err(e) => {
            return Status::Missing(format!(
                "pidfd_getfd: {e} (needs Linux 5.6+ and ptrace rights over the target)"
            ))
        }
    };
    let ino = |fd: OwnedFd| File::from(fd).metadata().map(|m| (m.dev(), m.ino()));
    let ours = nix::unistd::dup(&child.pipe_read)
        .map_err(std::io::Error::from)
        .and_then(&ino);
    match (ours, ino(copy)) {
        (Ok(a), Ok(b)) if a == b => Status::Present("took a copy of one of the child's fds".into()),
        (Ok(_), Ok(_)) => Status::Missing("the copied fd refers to another file".into()),
        (Err(e), _) | (_, Err(e)) => Status::Missing(format!("fstat: {e}")),
    }
}

fn probe_map_files(child: &ProbeChild) -> Status {
    // The child is a fork of us: our file mappings are its file mappings.
    let maps = match proc::own_maps() {
        Ok(m) => m,
        Err(e) => return Status::Missing(e.to_string()),
    };
    let Some(m) = maps.iter().find(|m| m.name.starts_with('/')) else {
        return Status::Missing("crest has no file mapping to look up".into());
    };
    let opened = proc::Proc::open(child.pid).and_then(|p| p.open_map_file(m.start, m.end));
    match opened {
        Ok(f) => match (f.metadata(), std::fs::metadata(&m.name)) {
            (Ok(a), Ok(b)) if (a.dev(), a.ino()) == (b.dev(), b.ino()) => {
                Status::Present(format!("opened the child's mapping of {}", m.name))
            }
            (Ok(_), Ok(_)) => {
                Status::Missing(format!("map_files gave another file than {}", m.name))
            }
            (Err(e), _) | (_, Err(e)) => Status::Missing(format!("fstat: {e}")),
        },
        Err(e) => Status::Missing(format!(
            "{e} (needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN)"
        )),
    }
}

fn probe_kcmp() -> Status {
    let me = nix::unistd::getpid().as_raw();
    let (a, b) = match nix::unistd::pipe2(OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => return Status::Missing(format!("pipe2: {e}")),
    };
    let a2 = match nix::unistd::dup(&a) {
        Ok(fd) => fd,
        Err(e) => return Status::Missing(format!("dup: {e}")),
    };
    let same = sys::kcmp_same_file(me, me, a.as_raw_fd(), a2.as_raw_fd());
    let different = sys::kcmp_same_file(me, me, a.as_raw_fd(), b.as_raw_fd());
    match (same, different) {
        (Ok(true), Ok(false)) => Status::Present("told a dup'd fd from another file".into()),
        (Ok(_), Ok(_)) => Status::Missing("kcmp gave wrong answers".into()),
        (Err(e), _) | (_, Err(e)) => {
            Status::Missing(format!("{e} (needs a kernel with CONFIG_KCMP)"))
        }
    }
}

/// Pagemap of a page we just wrote: the present bit must be set; the PFN shows with
/// CAP_SYS_ADMIN only (it reads as zero otherwise).
fn probe_pagemap() -> (Status, Status) {
    let ps = host_page_size();
    let mut page = match memmap2::MmapMut::map_anon(ps as usize) {
        Ok(p) => p,
        Err(e) => {
            let s = Status::Missing(format!("mmap: {e}"));
            return (s.clone(), s);
        }
    };
    page[0] = 1;
    let me = nix::unistd::getpid().as_raw();
    let mut entry = [0u64; 1];
    let read = proc::Proc::open(me)
        .and_then(|p| p.pagemap())
        .and_then(|pm| pm.read(page.as_ptr() as u64 / ps, &mut entry));
    if let Err(e) = read {
        let s = Status::Missing(e.to_string());
        return (
            s.clone(),
            Status::Missing("not tested: pagemap is unreadable".into()),
        );
    }
    const PRESENT: u64 = 1 << 63;
    const PFN_MASK: u64 = (1 << 55) - 1;
    if entry[0] & PRESENT == 0 {
        let s = Status::Missing("a page just written does not show as present".into());
        return (
            s,
            Status::Missing("not tested: pagemap shows no present bits".into()),
        );
    }
    let pfn = if entry[0] & PFN_MASK != 0 {
        Status::Present("a written page shows its page frame number".into())
    } else {
        Status::Missing("PFNs read as zero (they need CAP_SYS_ADMIN)".into())
    };
    (
        Status::Present("a written page shows as present".into()),
        pfn,
    )
}

fn probe_memfd() -> Status {
    match nix::sys::memfd::memfd_create(c"crest-check", nix::sys::memfd::MFdFlags::MFD_CLOEXEC) {
        Ok(fd) => {
            let f = File::from(fd);
            match f.set_len(host_page_size()).and_then(|()| {
                memmap2::MmapOptions::new()
                    .len(host_page_size() as usize)
                    .map_raw(&f)
                    .map(|_| ())
            }) {
                Ok(()) => Status::Present("created and mapped a memfd".into()),
                Err(e) => Status::Missing(format!("cannot size or map a memfd: {e}")),
            }
        }
        Err(e) => Status::Missing(format!("memfd_create: {e}")),
    }
}

/// Forks a child with clone3 and `set_tid` = a pid we just freed, and checks it got that pid.
fn probe_clone3_set_tid() -> Status {
    for _ in 0..8 {
        let target = match free_pid() {
            Ok(pid) => pid,
            Err(e) => return Status::Missing(format!("cannot find a free pid to ask for: {e}")),
        };
        // SAFETY: the child immediately calls _exit (a bare exit_group syscall) and touches
        // nothing else, which is safe whatever state glibc is in.
        match unsafe { crate::sys::clone3_with_pid(target, libc::SIGCHLD) } {
            Ok(0) => {
                // SAFETY: _exit only ends this (child) process.
                unsafe { libc::_exit(0) };
            }
            Ok(got) => {
                reap(got);
                return if got == target {
                    Status::Present(format!("forked a child with the chosen pid {target}"))
                } else {
                    Status::Missing(format!("asked for pid {target} and got {got}"))
                };
            }
            Err(e) => return match e {
                    // Someone took the pid in between: pick another.
                Errno::EEXIST => continue,
                Errno::ENOSYS => Status::Missing("clone3 does not exist (needs Linux 5.3+)".into()),
                Errno::EPERM => Status::Missing("EPERM: choosing a pid needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN over the pid namespace".into()),
                e @ (Errno::EINVAL | Errno::E2BIG) => Status::Missing(format!("{e}: set_tid is not supported (needs Linux 5.5+)")),
                e => Status::Missing(format!("clone3: {e}")),

            },
        }
    }
    Status::Missing("every pid tried was taken before clone3 could use it".into())
}

/// A pid that was just in use by a child of ours and is free now: pids are handed out in
/// increasing order, so it will not be reused before the pid counter wraps.
fn free_pid() -> Result<i32, Errno> {
    // SAFETY: the child only calls _exit, which is async-signal-safe.
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Child => {
            // SAFETY: _exit only ends this (child) process.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            reap(child.as_raw());
            Ok(child.as_raw())
        }
    }
}

/// Waits for our child `pid` to exit.
fn reap(pid: i32) {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid, writable int.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        if r == pid || (r < 0 && Errno::last() != Errno::EINTR) {
            return;
        }
    }
}

/// `prctl(PR_SET_MM, PR_SET_MM_MAP_SIZE, &size)`: the kernel reports the size of the
/// `struct prctl_mm_map` it accepts, which exists only with CONFIG_CHECKPOINT_RESTORE.
fn probe_prctl_mm_map() -> Status {
    const PR_SET_MM: libc::c_int = 35;
    const PR_SET_MM_MAP_SIZE: libc::c_ulong = 15;
    const PRCTL_MM_MAP_SIZE: u32 = 104;
    let mut size: u32 = 0;
    // SAFETY: the kernel writes one u32 to `size`, which is live and writable.
    let r = unsafe {
        libc::prctl(
            PR_SET_MM,
            PR_SET_MM_MAP_SIZE,
            &mut size as *mut u32,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if r != 0 {
        return Status::Missing(format!(
            "{} (the kernel needs CONFIG_CHECKPOINT_RESTORE)",
            Errno::last()
        ));
    }
    if size != PRCTL_MM_MAP_SIZE {
        return Status::Missing(format!("the kernel expects a {size}-byte prctl_mm_map, crest knows the {PRCTL_MM_MAP_SIZE}-byte one"));
    }
    Status::Present(format!("the kernel takes a {size}-byte prctl_mm_map"))
}

/// Yama's ptrace_scope: 0 classic permissions, 1 descendants only, 2 CAP_SYS_PTRACE only,
/// 3 no ptrace at all (Documentation/admin-guide/LSM/Yama.rst).
fn probe_yama(caps: &Caps) -> Status {
    // This sysctl is one integer that procfs offers no reader for, and src/proc has none yet;
    // reading it here keeps `crest check` complete.
    let scope = match std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope") {
        Ok(s) => s.trim().parse::<u32>().ok(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Status::Present("Yama is not active".into());
        }
        Err(e) => {
            return Status::Missing(format!(
                "cannot read /proc/sys/kernel/yama/ptrace_scope: {e}"
            ))
        }
    };
    match (scope, caps.sys_ptrace) {
        (Some(0), _) => Status::Present("ptrace_scope 0 (classic ptrace permissions)".into()),
        (Some(s @ (1 | 2)), true) => {
            Status::Present(format!("ptrace_scope {s}, and crest has CAP_SYS_PTRACE"))
        }
        (Some(1), false) => Status::Missing(
            "ptrace_scope 1 and no CAP_SYS_PTRACE: only crest's own descendants can be traced"
                .into(),
        ),
        (Some(2), false) => Status::Missing("ptrace_scope 2: tracing needs CAP_SYS_PTRACE".into()),
        (Some(3), _) => Status::Missing("ptrace_scope 3: ptrace is disabled until reboot".into()),
        (other, _) => Status::Missing(format!("unknown ptrace_scope {other:?}")),
    }
}

/// The effective capabilities crest cares about.
struct Caps {
    checkpoint_restore: bool,
    sys_ptrace: bool,
    sys_admin: bool,
    sys_resource: bool,
    error: Option<String>,
}

impl Caps {
    fn read() -> Caps {
        match caps::read(None, CapSet::Effective) {
            Ok(set) => Caps {
                checkpoint_restore: set.contains(&Capability::CAP_CHECKPOINT_RESTORE),
                sys_ptrace: set.contains(&Capability::CAP_SYS_PTRACE),
                sys_admin: set.contains(&Capability::CAP_SYS_ADMIN),
                sys_resource: set.contains(&Capability::CAP_SYS_RESOURCE),
                error: None,
            },
            Err(e) => Caps {
                checkpoint_restore: false,
                sys_ptrace: false,
                sys_admin: false,
                sys_resource: false,
                error: Some(e.to_string()),
            },
        }
    }

    fn status(&self, cap: Capability) -> Status {
        if let Some(e) = &self.error {
            return Status::Missing(format!("cannot read capabilities: {e}"));
        }
        let held = match cap {
            Capability::CAP_CHECKPOINT_RESTORE => self.checkpoint_restore,
            Capability::CAP_SYS_PTRACE => self.sys_ptrace,
            Capability::CAP_SYS_ADMIN => self.sys_admin,
            Capability::CAP_SYS_RESOURCE => self.sys_resource,
            _ => false,
        };
        if held {
            Status::Present("in the effective set".into())
        } else {
            Status::Missing("not in the effective set".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [&str; 19] = [
        PTRACE_SEIZE,
        RSEQ_CONFIG,
        PROCESS_VM_READV,
        PIDFD_GETFD,
        MAP_FILES,
        KCMP,
        PAGEMAP,
        PAGEMAP_PFN,
        MEMFD,
        CLONE3_SET_TID,
        PR_SET_MM_MAP,
        YAMA,
        RESTORE_PRIVILEGE,
        CAP_CHECKPOINT_RESTORE,
        CAP_SYS_PTRACE,
        CAP_SYS_ADMIN,
        CAP_SYS_RESOURCE,
        NETWORK_LOCK,
        USERFAULTFD,
    ];

    /// This machine (and CI: root on the same kind of machine) has everything dump and restore
    /// need. Optional rows must agree with facts checked independently here: the capability
    /// rows with capget, PFN visibility with CAP_SYS_ADMIN. These machines run as root without
    /// CAP_SYS_RESOURCE, so that row is expected to be missing there.
    #[test]
    fn everything_dump_and_restore_need_is_present_here() {
        let report = run();
        let missing: Vec<String> = report
            .probes
            .iter()
            .filter(|p| p.need != Need::Optional && !p.present())
            .map(|p| format!("{}: {:?}", p.name, p.status))
            .collect();
        assert!(
            missing.is_empty(),
            "missing: {missing:#?}\n{}",
            report.render()
        );
        assert!(report.can_dump_and_restore());
        assert_eq!(report.page_size, host_page_size());
        assert!(!report.kernel_release.is_empty());
        // The rseq probe saw glibc's registration, not just an answer.
        let rseq = report.probe(RSEQ_CONFIG).unwrap();
        assert!(
            matches!(&rseq.status, Status::Present(t) if t.contains("rseq area at")),
            "{rseq:?}"
        );

        let has = |cap| caps::has_cap(None, CapSet::Effective, cap).unwrap();
        for (name, cap) in [
            (CAP_CHECKPOINT_RESTORE, Capability::CAP_CHECKPOINT_RESTORE),
            (CAP_SYS_PTRACE, Capability::CAP_SYS_PTRACE),
            (CAP_SYS_ADMIN, Capability::CAP_SYS_ADMIN),
            (CAP_SYS_RESOURCE, Capability::CAP_SYS_RESOURCE),
        ] {
            assert_eq!(report.probe(name).unwrap().present(), has(cap), "{name}");
        }
        assert_eq!(
            report.probe(PAGEMAP_PFN).unwrap().present(),
            has(Capability::CAP_SYS_ADMIN)
        );
    }

    #[test]
    fn probe_children_are_gone() {
        let child = ProbeChild::spawn().expect("spawn");
        let pid = child.pid;
        drop(child);
        // The child was reaped: it is not our child any more, nor a zombie.
        // SAFETY: `status` is valid; WNOHANG never blocks.
        let r = unsafe { libc::waitpid(pid, &mut 0, libc::WNOHANG | libc::__WALL) };
        assert_eq!(r, -1);
        assert_eq!(Errno::last(), Errno::ECHILD);
    }

    #[test]
    fn render_mentions_every_probe() {
        let report = run();
        let text = report.render();
        for name in ALL {
            assert!(report.probe(name).is_some(), "no probe {name}");
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        assert_eq!(report.probes.len(), ALL.len());
        assert!(text.contains("dump:    can work"), "{text}");
        assert!(text.contains("restore: can work"), "{text}");
    }

    #[test]
    fn missing_probe_says_what_stops_working() {
        let mut report = run();
        let p = report
            .probes
            .iter_mut()
            .find(|p| p.name == CLONE3_SET_TID)
            .unwrap();
        p.status = Status::Missing("EPERM".into());
        assert!(!report.can_dump_and_restore());
        assert!(report.can_dump());
        let text = report.render();
        assert!(text.contains("[MISSING] clone3 with set_tid"), "{text}");
        assert!(
            text.contains("without it: restore cannot give processes their original pids"),
            "{text}"
        );
        assert!(
            text.contains("restore: cannot work (missing: clone3 with set_tid)"),
            "{text}"
        );

        // An optional feature does not decide the verdict.
        let mut report = run();
        let p = report
            .probes
            .iter_mut()
            .find(|p| p.name == PAGEMAP_PFN)
            .unwrap();
        p.status = Status::Missing("EPERM".into());
        assert!(report.can_dump_and_restore());
    }
}
