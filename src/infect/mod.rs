//! Compel-style infection: run code inside a seized, stopped thread of the process being
//! dumped, to read what only the process itself can report, and leave it exactly as it was.
//!
//! [`Parasite::inject`]:
//! 1. snapshots `/proc/PID/maps` and the fd table (to check the cure against);
//! 2. saves the thread's registers (general and extended: the parasite's code may use SIMD
//!    registers), its signal mask and the 24 bytes at the start of the first executable
//!    mapping of at least 4096 bytes (the stub area);
//! 3. blocks every signal but SIGTRAP and writes `syscall; int3...` (arm64: `svc #0; brk #0`)
//!    plus the memfd's name over the stub area;
//! 4. maps the parasite through remote syscalls: **(1)** `memfd_create`, crest opens the memfd
//!    through `/proc/PID/fd/N` and sizes it, **(2)** `mmap(NULL, size, RWX, MAP_SHARED, N, 0)`,
//!    **(3)** `close(N)`; crest maps the same memfd and installs the blob relocated for the
//!    target's address.
//!
//! [`Parasite::collect`] and [`Parasite::ping`] write a command into the shared arguments,
//! point the thread at `parasite_main(args)` on a stack inside the mapping, and wait for its
//! breakpoint; [`Parasite::collect_thread`] does the same in another thread of the process (no
//! stub, no mapping of its own: only its registers and mask are saved, and put back right
//! after its run, so threads run one at a time on the same stack); [`Parasite::brk`] runs a
//! remote `brk(0)` (**(4)** in a dump). [`Parasite::cure`] unmaps the blob (**(5)**
//! `munmap`), puts back the stub bytes, the registers and the signal mask, and checks that the
//! maps and fds equal the snapshot. Dropping a `Parasite` that was not cured cures it, so every
//! error path leaves the target as it was. A dump's `thread-parasite` fault step fails a
//! [`Parasite::collect_thread`] run while the thread sits on the parasite's breakpoint.
//!
//! The numbers in bold are the n of the `remote-syscall-<n>` fault-injection steps
//! ([`crate::fault`]); on kernels before 6.3, which refuse MFD_EXEC, memfd_create is retried
//! without it and every later number grows by one.

mod mapping;
mod remote;

#[cfg(all(test, target_arch = "x86_64"))]
mod tests;

use nix::errno::Errno;

use crate::arch::infect::nr;
use crate::arch::regs::RegsError;
use crate::arch::ArchError;
use crate::blob::abi::{
    ParasiteState, MAX_POSIX_TIMERS, PARASITE_CMD_COLLECT, PARASITE_CMD_COLLECT_THREAD,
    PARASITE_CMD_PING,
};
use crate::blob::BlobError;
use crate::fault::{self, Injected};
use crate::proc::{MapEntry, MapName, OpenFd, Proc, ProcError};
use crate::ptrace::PtraceError;

use mapping::{Layout, LocalMap};
use remote::RemoteThread;

/// Name of the memfd the parasite lives in (it shows in /proc/PID/maps while it is there).
const MEMFD_NAME: &[u8] = b"crest-parasite";
/// The stub needs a mapping at least this large (CRIU's rule; any executable mapping has room
/// for the 24-byte stub area, the size only avoids odd tiny mappings).
const MIN_STUB_VMA: u64 = 4096;

const MFD_CLOEXEC: u64 = 0x1;
/// MFD_EXEC (6.3+): ask for an executable memfd even when vm.memfd_noexec makes the default
/// non-executable.
const MFD_EXEC: u64 = 0x10;

/// Errors of infection. Each says which process, thread and step; a failure leaves the target
/// as it was (the cure runs on every path), unless [`InfectError::Leftover`] says otherwise.
#[derive(Debug, thiserror::Error)]
pub enum InfectError {
    #[error(transparent)]
    Proc(#[from] ProcError),
    #[error("thread {tid} of process {pid}: {what}: {err}")]
    Ptrace {
        pid: i32,
        tid: i32,
        what: &'static str,
        err: PtraceError,
    },
    #[error("thread {tid} of process {pid}: {err}")]
    Regs { pid: i32, tid: i32, err: RegsError },
    #[error("thread {tid} of process {pid}: {err}")]
    Arch { pid: i32, tid: i32, err: ArchError },
    #[error(
        "process {pid} has no executable mapping of at least {MIN_STUB_VMA} bytes to run \
         syscalls from; crest cannot infect it"
    )]
    NoStubArea { pid: i32 },
    #[error("thread {tid} of process {pid}: the remote {call} failed: {errno}")]
    RemoteSyscall {
        pid: i32,
        tid: i32,
        call: &'static str,
        errno: Errno,
    },
    #[error(
        "thread {tid} of process {pid}: signal {sig} (si_code {code}) at {ip:#x} (address \
         {addr:#x}) while running {what}; the code crest ran in the process failed (a crest bug)"
    )]
    Fault {
        pid: i32,
        tid: i32,
        what: &'static str,
        sig: i32,
        code: i32,
        ip: u64,
        addr: u64,
    },
    #[error("thread {tid} of process {pid} ended ({how}) while crest was running {what} in it")]
    Gone {
        pid: i32,
        tid: i32,
        what: &'static str,
        how: String,
    },
    #[error(
        "thread {tid} of process {pid} reported an unexpected stop while running {what}: {stop}"
    )]
    UnexpectedStop {
        pid: i32,
        tid: i32,
        what: &'static str,
        stop: String,
    },
    #[error(
        "thread {tid} of process {pid}: {what} before the thread was prepared for it (a crest \
         bug)"
    )]
    NotReady {
        pid: i32,
        tid: i32,
        what: &'static str,
    },
    #[error("thread {tid} of process {pid}: cannot send the deferred SIGSTOP again: {errno}")]
    Resend { pid: i32, tid: i32, errno: Errno },
    #[error("process {pid}: {what}: {err}")]
    Local {
        pid: i32,
        what: &'static str,
        err: std::io::Error,
    },
    #[error("process {pid}: {err}")]
    Blob { pid: i32, err: BlobError },
    #[error(
        "process {pid}: the parasite blob needs {align}-byte alignment, more than the page size; \
         the blob was built wrongly"
    )]
    BlobAlignment { pid: i32, align: u64 },
    #[error("process {pid} has {count} POSIX timers; crest can record at most {MAX_POSIX_TIMERS}")]
    TooManyTimers { pid: i32, count: usize },
    #[error(
        "thread {tid} of process {pid}: the parasite did not complete its command (a crest bug)"
    )]
    NotDone { pid: i32, tid: i32 },
    #[error(
        "thread {tid} of process {pid}: the parasite's call {call} (argument {arg}) failed: \
         {errno}"
    )]
    Parasite {
        pid: i32,
        tid: i32,
        call: &'static str,
        arg: u32,
        errno: Errno,
    },
    #[error(
        "process {pid} still differs from before the infection after the cure: {what}; the \
         process may not be intact"
    )]
    Leftover { pid: i32, what: String },
    #[error(
        "thread {tid} of process {pid}: the code word at {addr:#x} reads {found:#018x} after the \
         cure, not the original {expected:#018x}; the process may crash when it runs there"
    )]
    CodeNotRestored {
        pid: i32,
        tid: i32,
        addr: u64,
        expected: u64,
        found: u64,
    },
    #[error(transparent)]
    Injected(#[from] Injected),
}

impl InfectError {
    fn ptrace(pid: i32, tid: i32, what: &'static str, err: PtraceError) -> InfectError {
        InfectError::Ptrace {
            pid,
            tid,
            what,
            err,
        }
    }
}

/// What the cure compares: the process's mappings and fds before the infection.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    maps: Vec<MapEntry>,
    fds: Vec<OpenFd>,
}

impl Snapshot {
    fn take(proc: &Proc) -> Result<Snapshot, ProcError> {
        Ok(Snapshot {
            maps: proc.maps()?,
            fds: proc.fds()?,
        })
    }

    /// A description of the first difference from `before`, if any.
    fn differs_from(&self, before: &Snapshot) -> Option<String> {
        if self.maps != before.maps {
            let extra = self.maps.iter().find(|m| !before.maps.contains(m));
            let missing = before.maps.iter().find(|m| !self.maps.contains(m));
            return Some(format!(
                "/proc/PID/maps changed (now has {:?}, lost {:?})",
                extra.map(|m| (m.start, m.end, &m.display_name)),
                missing.map(|m| (m.start, m.end, &m.display_name))
            ));
        }
        if self.fds != before.fds {
            let extra = self.fds.iter().find(|f| !before.fds.contains(f));
            let missing = before.fds.iter().find(|f| !self.fds.contains(f));
            return Some(format!(
                "the fd table changed (now has {extra:?}, lost {missing:?})"
            ));
        }
        None
    }
}

/// The stub area: the start of the first executable mapping that is large enough and is plain
/// private program code (never the vDSO, vsyscall or uprobes pages; never a shared mapping,
/// where a write would reach the file or other processes instead of a private copy).
fn stub_address(maps: &[MapEntry]) -> Option<u64> {
    maps.iter()
        .find(|m| {
            m.exec
                && !m.shared
                && m.end - m.start >= MIN_STUB_VMA
                && !matches!(
                    m.name,
                    MapName::Vdso | MapName::Vsyscall | MapName::Vvar(_) | MapName::Other(_)
                )
        })
        .map(|m| m.start)
}

/// Decodes a raw syscall result: -4095..-1 is an errno.
fn syscall_ok(pid: i32, tid: i32, call: &'static str, ret: i64) -> Result<u64, InfectError> {
    if (-4095..0).contains(&ret) {
        Err(InfectError::RemoteSyscall {
            pid,
            tid,
            call,
            errno: Errno::from_raw(-ret as i32),
        })
    } else {
        Ok(ret as u64)
    }
}

/// The name of a PARASITE_CALL_* index, for messages.
fn call_name(call: u32) -> &'static str {
    use crate::blob::abi::*;
    match call {
        PARASITE_CALL_ARGS => "argument check",
        PARASITE_CALL_SIGACTION => "rt_sigaction",
        PARASITE_CALL_SIGALTSTACK => "sigaltstack",
        PARASITE_CALL_GETITIMER => "getitimer",
        PARASITE_CALL_TIMER => "timer_gettime/timer_getoverrun",
        PARASITE_CALL_TID_ADDRESS => "prctl(PR_GET_TID_ADDRESS)",
        PARASITE_CALL_ROBUST_LIST => "get_robust_list",
        PARASITE_CALL_PERSONALITY => "personality",
        PARASITE_CALL_PDEATHSIG => "prctl(PR_GET_PDEATHSIG)",
        PARASITE_CALL_DUMPABLE => "prctl(PR_GET_DUMPABLE)",
        PARASITE_CALL_NO_NEW_PRIVS => "prctl(PR_GET_NO_NEW_PRIVS)",
        PARASITE_CALL_CHILD_SUBREAPER => "prctl(PR_GET_CHILD_SUBREAPER)",
        PARASITE_CALL_NAME => "prctl(PR_GET_NAME)",
        PARASITE_CALL_SECUREBITS => "prctl(PR_GET_SECUREBITS)",
        _ => "an unknown call",
    }
}

/// The parasite inside one stopped thread. Cure it with [`Parasite::cure`]; dropping it cures
/// it too (errors then only go to the log).
#[derive(Debug)]
pub struct Parasite {
    remote: RemoteThread,
    before: Snapshot,
    proc: Proc,
    layout: Layout,
    /// The memfd's fd number in the target while it is open there.
    remote_fd: Option<i32>,
    /// The parasite's mapping in the target (address, length) while it exists.
    remote_map: Option<(u64, u64)>,
    local: Option<LocalMap>,
    cured: bool,
}

impl Parasite {
    /// Infects thread `tid` of process `pid`, which must be seized by the calling thread and be
    /// in a ptrace stop. On error the target is already put back.
    pub fn inject(pid: i32, tid: i32) -> Result<Parasite, InfectError> {
        let proc = Proc::open(pid)?;
        let before = Snapshot::take(&proc)?;
        let stub = stub_address(&before.maps).ok_or(InfectError::NoStubArea { pid })?;
        let remote = RemoteThread::attach(pid, tid, stub)?;
        let page = crate::arch::page_size();
        let mut parasite = Parasite {
            remote,
            before,
            proc,
            layout: Layout::new(crate::blob::parasite(), page),
            remote_fd: None,
            remote_map: None,
            local: None,
            cured: false,
        };
        // From here on, dropping `parasite` cures whatever was done.
        parasite.remote.place_stub(MEMFD_NAME)?;
        parasite.map_blob()?;
        fault::point("blob-mapped")?;
        Ok(parasite)
    }

    pub fn pid(&self) -> i32 {
        self.remote.pid
    }

    pub fn tid(&self) -> i32 {
        self.remote.tid
    }

    /// The parasite's mapping in the target (address, length), while it is mapped.
    pub fn remote_mapping(&self) -> Option<(u64, u64)> {
        self.remote_map
    }

    /// The address and original bytes of the stub area.
    pub fn stub_area(&self) -> (u64, Vec<u8>) {
        (self.remote.stub_addr(), self.remote.original_stub_bytes())
    }

    /// Remote syscalls run so far.
    pub fn remote_syscalls(&self) -> u32 {
        self.remote.syscalls()
    }

    /// The fault-injection point after each remote syscall.
    fn after_syscall(&self) -> Result<(), InfectError> {
        fault::point(&fault::remote_syscall_step(self.remote.syscalls()))?;
        Ok(())
    }

    fn map_blob(&mut self) -> Result<(), InfectError> {
        let (pid, tid) = (self.pid(), self.tid());
        let blob = crate::blob::parasite();
        let page = crate::arch::page_size();
        if blob.load_align() > page {
            return Err(InfectError::BlobAlignment {
                pid,
                align: blob.load_align(),
            });
        }
        let name = self.remote.string_addr();
        let mut ret = self.remote.syscall(
            "memfd_create",
            nr::MEMFD_CREATE,
            [name, MFD_CLOEXEC | MFD_EXEC, 0, 0, 0, 0],
        )?;
        if ret == -(libc::EINVAL as i64) {
            // Kernels before 6.3 know no MFD_EXEC; their memfds are executable anyway.
            self.after_syscall()?;
            ret = self.remote.syscall(
                "memfd_create",
                nr::MEMFD_CREATE,
                [name, MFD_CLOEXEC, 0, 0, 0, 0],
            )?;
        }
        let fd = syscall_ok(pid, tid, "memfd_create", ret)? as i32;
        self.remote_fd = Some(fd);
        self.after_syscall()?;

        let file = self.proc.reopen_fd(fd)?;
        file.set_len(self.layout.total)
            .map_err(|err| InfectError::Local {
                pid,
                what: "sizing the parasite's memfd",
                err,
            })?;

        let prot = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
        let ret = self.remote.syscall(
            "mmap",
            nr::MMAP,
            [
                0,
                self.layout.total,
                prot,
                libc::MAP_SHARED as u64,
                fd as u64,
                0,
            ],
        )?;
        let addr = syscall_ok(pid, tid, "mmap", ret)?;
        self.remote_map = Some((addr, self.layout.total));
        self.after_syscall()?;

        let ret = self
            .remote
            .syscall("close", nr::CLOSE, [fd as u64, 0, 0, 0, 0, 0])?;
        syscall_ok(pid, tid, "close", ret)?;
        self.remote_fd = None;
        self.after_syscall()?;

        let mut local =
            LocalMap::new(file, self.layout.total).map_err(|err| InfectError::Local {
                pid,
                what: "mapping the parasite's memfd in crest",
                err,
            })?;
        local
            .install(blob, addr)
            .map_err(|err| InfectError::Blob { pid, err })?;
        local.write_args(&self.layout, &mapping::new_args(PARASITE_CMD_PING));
        self.local = Some(local);
        Ok(())
    }

    /// Runs one parasite command in the infected thread and returns the argument block with
    /// its results.
    fn run(
        &mut self,
        what: &'static str,
        args: &crate::blob::abi::ParasiteArgs,
    ) -> Result<crate::blob::abi::ParasiteArgs, InfectError> {
        let (pid, tid) = (self.pid(), self.tid());
        let (base, _) = self
            .remote_map
            .ok_or(InfectError::NotReady { pid, tid, what })?;
        let local = self
            .local
            .as_mut()
            .ok_or(InfectError::NotReady { pid, tid, what })?;
        let out = run_command(&mut self.remote, local, &self.layout, base, what, args)?;
        // The parasite sits on its breakpoint, its results read but not yet checked.
        fault::point("parasite-command")?;
        check_done(pid, tid, out)
    }

    /// Runs the parasite with the PING command: it only reports that it ran.
    pub fn ping(&mut self) -> Result<(), InfectError> {
        self.run("the parasite's ping", &mapping::new_args(PARASITE_CMD_PING))
            .map(|_| ())
    }

    /// Collects the state only the process can report; `timer_ids` are the POSIX timers to
    /// read (from /proc/PID/timers).
    pub fn collect(&mut self, timer_ids: &[i32]) -> Result<ParasiteState, InfectError> {
        if timer_ids.len() > MAX_POSIX_TIMERS {
            return Err(InfectError::TooManyTimers {
                pid: self.pid(),
                count: timer_ids.len(),
            });
        }
        let mut args = mapping::new_args(PARASITE_CMD_COLLECT);
        args.nr_timer_ids = timer_ids.len() as u32;
        args.timer_ids[..timer_ids.len()].copy_from_slice(timer_ids);
        let out = self.run("the parasite's collect command", &args)?;
        Ok(out.state)
    }

    /// Runs the parasite's per-thread collection in thread `tid`, another stopped thread of
    /// the same process (seized by the calling thread), and puts that thread back as it was:
    /// its registers (general and extended), signal mask and any SIGSTOP that arrived
    /// meanwhile, on success and on failure alike. The thread is put back while it sits in the
    /// signal-delivery stop of the parasite's trap, so when it is resumed the kernel applies the
    /// syscall-restart rules to its own registers, exactly as for the infected thread.
    ///
    /// Only the per-thread fields of the result are filled (see PARASITE_CMD_COLLECT_THREAD).
    /// Threads run one at a time on the same stack inside the parasite's mapping.
    pub fn collect_thread(&mut self, tid: i32) -> Result<ParasiteState, InfectError> {
        let pid = self.pid();
        let what = "the parasite's per-thread collect command";
        let args = mapping::new_args(PARASITE_CMD_COLLECT_THREAD);
        if tid == self.tid() {
            // The infected thread itself: its state is saved already and put back by the cure.
            return Ok(self.run(what, &args)?.state);
        }
        let (base, _) = self
            .remote_map
            .ok_or(InfectError::NotReady { pid, tid, what })?;
        let local = self
            .local
            .as_mut()
            .ok_or(InfectError::NotReady { pid, tid, what })?;
        let mut remote = RemoteThread::attach_bare(pid, tid)?;
        let result = remote
            .block_signals()
            .and_then(|()| run_command(&mut remote, local, &self.layout, base, what, &args))
            .and_then(|out| {
                // The thread sits on the parasite's breakpoint with crest's registers.
                fault::point("thread-parasite")?;
                Ok(out)
            });
        let restored = remote.restore();
        let out = result?;
        restored?;
        Ok(check_done(pid, tid, out)?.state)
    }

    /// The program break, from a remote `brk(0)` (/proc shows only where the heap starts).
    pub fn brk(&mut self) -> Result<u64, InfectError> {
        let (pid, tid) = (self.pid(), self.tid());
        let ret = self.remote.syscall("brk", nr::BRK, [0; 6])?;
        let brk = syscall_ok(pid, tid, "brk", ret)?;
        self.after_syscall()?;
        Ok(brk)
    }

    /// Removes the parasite and puts the thread back exactly as it was found, then checks that
    /// the process's mappings and fds equal those before the infection.
    pub fn cure(mut self) -> Result<(), InfectError> {
        self.cure_inner()
    }

    fn cure_inner(&mut self) -> Result<(), InfectError> {
        if self.cured {
            return Ok(());
        }
        self.cured = true;
        let (pid, tid) = (self.pid(), self.tid());
        let mut first: Option<InfectError> = None;
        if self.remote.usable() {
            if let Some((addr, len)) = self.remote_map {
                match self
                    .remote
                    .syscall("munmap", nr::MUNMAP, [addr, len, 0, 0, 0, 0])
                    .and_then(|ret| syscall_ok(pid, tid, "munmap", ret))
                {
                    Ok(_) => self.remote_map = None,
                    Err(e) => {
                        first.get_or_insert(e);
                    }
                }
                if let Err(e) = self.after_syscall() {
                    first.get_or_insert(e);
                }
            }
            if let Some(fd) = self.remote_fd {
                match self
                    .remote
                    .syscall("close", nr::CLOSE, [fd as u64, 0, 0, 0, 0, 0])
                    .and_then(|ret| syscall_ok(pid, tid, "close", ret))
                {
                    Ok(_) => self.remote_fd = None,
                    Err(e) => {
                        first.get_or_insert(e);
                    }
                }
                if let Err(e) = self.after_syscall() {
                    first.get_or_insert(e);
                }
            }
            if let Err(e) = self.remote.restore() {
                first.get_or_insert(e);
            }
        }
        self.local = None;
        if self.remote.usable() {
            let check = Snapshot::take(&self.proc)
                .map_err(InfectError::from)
                .and_then(|now| match now.differs_from(&self.before) {
                    Some(what) => Err(InfectError::Leftover { pid, what }),
                    None => Ok(()),
                });
            if let Err(e) = check {
                match &first {
                    None => first = Some(e),
                    Some(_) => {
                        crate::warn!("after curing process {pid}: {e}");
                    }
                }
            }
        }
        match first {
            None => {
                crate::info!(2, "thread {tid} of process {pid}: parasite cured");
                Ok(())
            }
            Some(e) => Err(e),
        }
    }
}

/// Points `remote` at `parasite_main(args)` on the stack at the end of the mapping at `base`,
/// after writing `args` into the shared argument block, and returns the block as the parasite
/// left it at its breakpoint.
fn run_command(
    remote: &mut RemoteThread,
    local: &mut LocalMap,
    layout: &Layout,
    base: u64,
    what: &'static str,
    args: &crate::blob::abi::ParasiteArgs,
) -> Result<crate::blob::abi::ParasiteArgs, InfectError> {
    local.write_args(layout, args);
    let blob = crate::blob::parasite();
    remote.call(
        what,
        base + blob.entry_offset(),
        base + layout.total,
        base + layout.args_off,
        (base, base + blob.code_size() as u64),
    )?;
    Ok(local.read_args(layout))
}

/// The results of a command, or the error the parasite reported.
fn check_done(
    pid: i32,
    tid: i32,
    out: crate::blob::abi::ParasiteArgs,
) -> Result<crate::blob::abi::ParasiteArgs, InfectError> {
    if out.error != 0 {
        return Err(InfectError::Parasite {
            pid,
            tid,
            call: call_name(out.failed_call),
            arg: out.failed_arg,
            errno: Errno::from_raw(-out.error),
        });
    }
    if out.done != 1 {
        return Err(InfectError::NotDone { pid, tid });
    }
    Ok(out)
}

impl Drop for Parasite {
    fn drop(&mut self) {
        if let Err(e) = self.cure_inner() {
            crate::warn!(
                "could not fully cure thread {} of process {}: {e}",
                self.tid(),
                self.pid()
            );
        }
    }
}
