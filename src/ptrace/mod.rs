//! A small architecture-neutral API over ptrace, used by dump and restore alike.
//!
//! Signals are plain `i32` numbers throughout: nix's `Signal` cannot name real-time signals
//! (32..64), and a seized JVM thread may well stop with one of those.
//!
//! Everything here works on a single thread id; the tracer is the *thread* that seized, so all
//! calls for one tracee must come from the same thread of crest (ptrace(2), "tracer").

mod memory;

pub use memory::{read_memory, read_memory_vectored};

use nix::errno::Errno;
use nix::sys::ptrace::Options;
use nix::unistd::Pid;

use crate::images::RseqRegistration;

/// `PTRACE_GETSIGMASK` (linux/ptrace.h).
const PTRACE_GETSIGMASK: libc::c_uint = 0x420a;
/// `PTRACE_SETSIGMASK` (linux/ptrace.h).
const PTRACE_SETSIGMASK: libc::c_uint = 0x420b;
/// `PTRACE_GET_RSEQ_CONFIGURATION` (5.13+, linux/ptrace.h).
const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
/// `PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG` (6.4+, linux/ptrace.h).
const PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG: libc::c_uint = 0x4211;
/// `PTRACE_PEEKSIGINFO` (linux/ptrace.h).
const PTRACE_PEEKSIGINFO: libc::c_uint = 0x4209;
/// `PTRACE_PEEKSIGINFO_SHARED`: read the process-wide queue instead of the thread's own.
const PTRACE_PEEKSIGINFO_SHARED: u32 = 1;
/// Size of a `siginfo_t` as the kernel copies it out (SI_MAX_SIZE).
pub const SIGINFO_SIZE: usize = 128;
/// siginfos read per PTRACE_PEEKSIGINFO call.
const PEEKSIGINFO_BATCH: usize = 32;
/// More queued signals than any sane process has: RLIMIT_SIGPENDING defaults to about the
/// number of pages of RAM / 8, but a dump of this many is surely a runaway sender.
pub const MAX_PENDING_SIGNALS: usize = 4096;
/// `PTRACE_EVENT_STOP`: the event of an interrupt stop or a group stop of a seized thread.
pub const PTRACE_EVENT_STOP: i32 = 128;

/// Errors from ptrace requests and remote memory reads.
#[derive(Debug, thiserror::Error)]
pub enum PtraceError {
    /// The thread does not exist (any more).
    #[error("thread {tid} does not exist (it may have exited)")]
    NoSuchThread { tid: i32 },
    /// PTRACE_SEIZE was refused.
    #[error(
        "cannot trace thread {tid}: {errno}; crest needs CAP_SYS_PTRACE (run as root), Yama \
         ptrace_scope 0 or 1 with a capable tracer (/proc/sys/kernel/yama/ptrace_scope), and the \
         thread must not already be traced by a debugger (TracerPid in /proc/{tid}/status)"
    )]
    Seize { tid: i32, errno: Errno },
    /// Any other ptrace request failed.
    #[error("{request} on thread {tid} failed: {errno}")]
    Request {
        request: &'static str,
        tid: i32,
        errno: Errno,
    },
    /// waitpid for a traced thread failed.
    #[error("waiting for thread {tid} to stop failed: {errno}")]
    Wait { tid: i32, errno: Errno },
    /// The kernel lacks PTRACE_GET_RSEQ_CONFIGURATION, so rseq state cannot be saved.
    #[error(
        "the kernel cannot report thread {tid}'s rseq registration (PTRACE_GET_RSEQ_CONFIGURATION \
         needs Linux 5.13+): {errno}"
    )]
    RseqUnsupported { tid: i32, errno: Errno },
    /// The rseq registration has flags crest does not understand.
    #[error("thread {tid} registered rseq with flags {flags:#x}, which crest cannot restore")]
    RseqFlags { tid: i32, flags: u32 },
    /// Reading the target's memory failed.
    #[error("reading {len} bytes of process {pid}'s memory at {addr:#x} failed: {errno}")]
    ReadMemory {
        pid: i32,
        addr: u64,
        len: usize,
        errno: Errno,
    },
    /// More signals are queued than crest will record.
    #[error(
        "thread {tid} has more than {limit} {} signals pending; crest refuses to record a queue \
         that long (is something flooding it with signals?)",
        if *shared { "process-wide" } else { "thread" }
    )]
    TooManySignals {
        tid: i32,
        shared: bool,
        limit: usize,
    },
    /// Reading the target's memory returned fewer bytes than asked (an unmapped hole).
    #[error(
        "reading process {pid}'s memory at {addr:#x}: only {got} of {len} bytes readable \
         (did a mapping change while the process was stopped?)"
    )]
    ShortRead {
        pid: i32,
        addr: u64,
        len: usize,
        got: usize,
    },
}

/// One signal as the kernel queued it: the raw 128-byte `siginfo_t`.
#[derive(Clone, PartialEq, Eq)]
pub struct SigInfo(pub [u8; SIGINFO_SIZE]);

impl SigInfo {
    fn i32_at(&self, off: usize) -> i32 {
        i32::from_ne_bytes(self.0[off..off + 4].try_into().expect("4 bytes"))
    }

    /// `si_signo`.
    pub fn signo(&self) -> i32 {
        self.i32_at(0)
    }

    /// `si_code` (SI_USER 0, SI_KERNEL 0x80, SI_QUEUE -1, SI_TKILL -6, TRAP_BRKPT 1, ...).
    /// On both supported architectures the layout is signo, errno, code.
    pub fn code(&self) -> i32 {
        self.i32_at(8)
    }

    /// `si_addr` for faults (SIGSEGV, SIGBUS, SIGILL, SIGTRAP): the first union member, at
    /// offset 16 on 64-bit architectures.
    pub fn addr(&self) -> u64 {
        u64::from_ne_bytes(self.0[16..24].try_into().expect("8 bytes"))
    }
}

impl std::fmt::Debug for SigInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigInfo")
            .field("signo", &self.signo())
            .field("code", &self.code())
            .field("addr", &format_args!("{:#x}", self.addr()))
            .finish()
    }
}

/// What `waitpid` reported for a traced thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A `PTRACE_EVENT_*` stop. `event == PTRACE_EVENT_STOP` is an interrupt stop (`sig` SIGTRAP)
    /// or a group stop (`sig` SIGSTOP, SIGTSTP, SIGTTIN or SIGTTOU).
    Event { event: i32, sig: i32 },
    /// A signal-delivery stop: `sig` is about to be delivered unless the tracer suppresses it.
    Signal(i32),
    /// A syscall-entry or -exit stop (requires PTRACE_O_TRACESYSGOOD).
    Syscall,
    /// The thread exited with this status.
    Exited(i32),
    /// The thread was killed by this signal.
    Killed(i32),
}

impl Stop {
    /// Whether the thread is gone (no further ptrace request can succeed).
    pub fn is_gone(&self) -> bool {
        matches!(self, Stop::Exited(_) | Stop::Killed(_))
    }

    /// Decodes a raw `waitpid` status (see wait(2) and ptrace(2), "Stopped states").
    pub fn from_wait_status(status: i32) -> Stop {
        if libc::WIFEXITED(status) {
            Stop::Exited(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            Stop::Killed(libc::WTERMSIG(status))
        } else {
            let sig = libc::WSTOPSIG(status);
            let event = (status >> 16) & 0xff;
            if event != 0 {
                Stop::Event { event, sig }
            } else if sig == libc::SIGTRAP | 0x80 {
                Stop::Syscall
            } else {
                Stop::Signal(sig)
            }
        }
    }
}

fn pid(tid: i32) -> Pid {
    Pid::from_raw(tid)
}

fn request_error(request: &'static str, tid: i32, errno: Errno) -> PtraceError {
    if errno == Errno::ESRCH {
        // ESRCH also means "not stopped"; a request on a running tracee is a crest bug, so the
        // likeliest reading for a user is that the thread exited.
        PtraceError::NoSuchThread { tid }
    } else {
        PtraceError::Request {
            request,
            tid,
            errno,
        }
    }
}

/// Raw ptrace for requests whose signal argument may be a real-time signal, or that nix lacks.
fn raw(
    request: libc::c_uint,
    name: &'static str,
    tid: i32,
    addr: usize,
    data: usize,
) -> Result<libc::c_long, PtraceError> {
    Errno::clear();
    // SAFETY: every caller passes, for its request, either integers or a pointer to a live buffer
    // of the size the request writes (documented at each call site).
    let r = unsafe {
        libc::ptrace(
            request,
            tid as libc::pid_t,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    };
    if r == -1 {
        let errno = Errno::last();
        if errno != Errno::UnknownErrno {
            return Err(request_error(name, tid, errno));
        }
    }
    Ok(r)
}

/// PTRACE_SEIZE: attach without stopping the thread and without sending it a signal.
pub fn seize(tid: i32, options: Options) -> Result<(), PtraceError> {
    nix::sys::ptrace::seize(pid(tid), options).map_err(|errno| match errno {
        Errno::ESRCH => PtraceError::NoSuchThread { tid },
        errno => PtraceError::Seize { tid, errno },
    })
}

/// PTRACE_INTERRUPT: make a seized thread stop (it reports `Stop::Event` with PTRACE_EVENT_STOP).
pub fn interrupt(tid: i32) -> Result<(), PtraceError> {
    nix::sys::ptrace::interrupt(pid(tid)).map_err(|e| request_error("PTRACE_INTERRUPT", tid, e))
}

/// Waits for the next stop (or the end) of thread `tid`, which need not be our child
/// (`__WALL` also waits for threads that are not thread-group leaders).
pub fn wait_stop(tid: i32) -> Result<Stop, PtraceError> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: `status` is a valid, writable int.
        let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        if r == tid {
            return Ok(Stop::from_wait_status(status));
        }
        let errno = Errno::last();
        if r < 0 && errno == Errno::EINTR {
            continue;
        }
        return Err(PtraceError::Wait { tid, errno });
    }
}

/// Like [`wait_stop`] but does not block: `None` when thread `tid` has nothing to report yet.
pub fn try_wait_stop(tid: i32) -> Result<Option<Stop>, PtraceError> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: `status` is a valid, writable int.
        let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL | libc::WNOHANG) };
        if r == tid {
            return Ok(Some(Stop::from_wait_status(status)));
        }
        if r == 0 {
            return Ok(None);
        }
        let errno = Errno::last();
        if r < 0 && errno == Errno::EINTR {
            continue;
        }
        return Err(PtraceError::Wait { tid, errno });
    }
}

/// PTRACE_CONT, delivering `sig` (0 for none).
pub fn cont(tid: i32, sig: i32) -> Result<(), PtraceError> {
    // The data argument is the signal number; no memory is passed.
    raw(libc::PTRACE_CONT, "PTRACE_CONT", tid, 0, sig as usize).map(|_| ())
}

/// PTRACE_SYSCALL: continue until the next syscall entry or exit, delivering `sig` (0 for none).
pub fn syscall(tid: i32, sig: i32) -> Result<(), PtraceError> {
    // The data argument is the signal number; no memory is passed.
    raw(libc::PTRACE_SYSCALL, "PTRACE_SYSCALL", tid, 0, sig as usize).map(|_| ())
}

/// PTRACE_DETACH, delivering `sig` (0 for none). The thread must be in a ptrace stop.
pub fn detach(tid: i32, sig: i32) -> Result<(), PtraceError> {
    // The data argument is the signal number; no memory is passed.
    raw(libc::PTRACE_DETACH, "PTRACE_DETACH", tid, 0, sig as usize).map(|_| ())
}

/// PTRACE_GETREGSET of `note_type` (NT_PRSTATUS, NT_X86_XSTATE, ...) into `buf`; returns the
/// number of bytes the kernel filled, which tells the layout (e.g. native vs compat).
pub fn get_regset(tid: i32, note_type: u32, buf: &mut [u8]) -> Result<usize, PtraceError> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // GETREGSET writes at most iov_len bytes to iov_base and updates iov_len; both live here.
    raw(
        libc::PTRACE_GETREGSET,
        "PTRACE_GETREGSET",
        tid,
        note_type as usize,
        &mut iov as *mut libc::iovec as usize,
    )?;
    Ok(iov.iov_len)
}

/// PTRACE_SETREGSET of `note_type` from `buf` (its whole length).
pub fn set_regset(tid: i32, note_type: u32, buf: &[u8]) -> Result<(), PtraceError> {
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SETREGSET only reads iov_len bytes from iov_base; the kernel never writes through it.
    raw(
        libc::PTRACE_SETREGSET,
        "PTRACE_SETREGSET",
        tid,
        note_type as usize,
        &mut iov as *mut libc::iovec as usize,
    )?;
    Ok(())
}

/// PTRACE_GETSIGMASK: the thread's blocked-signal mask (bit n-1 for signal n). The kernel's
/// sigset is 8 bytes and the request insists on exactly that size.
pub fn get_sigmask(tid: i32) -> Result<u64, PtraceError> {
    let mut mask: u64 = 0;
    // GETSIGMASK writes exactly addr (8) bytes to data, which points at `mask`.
    raw(
        PTRACE_GETSIGMASK,
        "PTRACE_GETSIGMASK",
        tid,
        8,
        &mut mask as *mut u64 as usize,
    )?;
    Ok(mask)
}

/// PTRACE_SETSIGMASK: set the thread's blocked-signal mask (SIGKILL and SIGSTOP are ignored).
pub fn set_sigmask(tid: i32, mask: u64) -> Result<(), PtraceError> {
    // SETSIGMASK reads exactly addr (8) bytes from data, which points at `mask`.
    raw(
        PTRACE_SETSIGMASK,
        "PTRACE_SETSIGMASK",
        tid,
        8,
        &mask as *const u64 as usize,
    )?;
    Ok(())
}

/// PTRACE_PEEKDATA: the word at `addr` of the stopped thread's address space (read with
/// FOLL_FORCE, so code that is not writable is readable here too).
pub fn peek_word(tid: i32, addr: u64) -> Result<u64, PtraceError> {
    // PEEKDATA returns the word; `raw` tells a word of -1 from an error through errno.
    raw(
        libc::PTRACE_PEEKDATA,
        "PTRACE_PEEKDATA",
        tid,
        addr as usize,
        0,
    )
    .map(|w| w as u64)
}

/// PTRACE_POKEDATA: writes one word at `addr` (FOLL_FORCE: works on read-only code, which the
/// kernel then copies on write for this process only).
pub fn poke_word(tid: i32, addr: u64, word: u64) -> Result<(), PtraceError> {
    // POKEDATA takes the word itself as data; no memory of ours is passed.
    raw(
        libc::PTRACE_POKEDATA,
        "PTRACE_POKEDATA",
        tid,
        addr as usize,
        word as usize,
    )
    .map(|_| ())
}

/// PTRACE_GETSIGINFO: the siginfo of the signal that caused the current stop.
pub fn get_siginfo(tid: i32) -> Result<SigInfo, PtraceError> {
    let mut info = SigInfo([0; SIGINFO_SIZE]);
    // GETSIGINFO writes one siginfo_t (128 bytes) to data, which points at `info.0`.
    raw(
        libc::PTRACE_GETSIGINFO,
        "PTRACE_GETSIGINFO",
        tid,
        0,
        info.0.as_mut_ptr() as usize,
    )?;
    Ok(info)
}

/// `struct ptrace_peeksiginfo_args` (linux/ptrace.h).
#[repr(C)]
struct PeekSiginfoArgs {
    off: u64,
    flags: u32,
    nr: i32,
}

/// PTRACE_PEEKSIGINFO: the signals queued for thread `tid` (`shared` false) or for its whole
/// process (`shared` true), oldest first, without dequeuing them. Refuses more than
/// [`MAX_PENDING_SIGNALS`].
pub fn pending_signals(tid: i32, shared: bool) -> Result<Vec<SigInfo>, PtraceError> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; PEEKSIGINFO_BATCH * SIGINFO_SIZE];
    loop {
        let args = PeekSiginfoArgs {
            off: out.len() as u64,
            flags: if shared { PTRACE_PEEKSIGINFO_SHARED } else { 0 },
            nr: PEEKSIGINFO_BATCH as i32,
        };
        // PEEKSIGINFO reads `args` and writes at most args.nr siginfos (nr * 128 bytes) to
        // data, which points at `buf` of exactly that size.
        let n = raw(
            PTRACE_PEEKSIGINFO,
            "PTRACE_PEEKSIGINFO",
            tid,
            &args as *const PeekSiginfoArgs as usize,
            buf.as_mut_ptr() as usize,
        )? as usize;
        let n = n.min(PEEKSIGINFO_BATCH);
        for chunk in buf[..n * SIGINFO_SIZE].chunks_exact(SIGINFO_SIZE) {
            out.push(SigInfo(chunk.try_into().expect("chunks_exact(128)")));
        }
        if out.len() > MAX_PENDING_SIGNALS {
            return Err(PtraceError::TooManySignals {
                tid,
                shared,
                limit: MAX_PENDING_SIGNALS,
            });
        }
        // The kernel stops early only at the end of the queue (or when crest itself has a
        // signal pending, in which case it returned at least one; asking again is right).
        if n == 0 {
            return Ok(out);
        }
    }
}

/// `struct ptrace_sud_config` (linux/ptrace.h).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyscallUserDispatch {
    /// PR_SYS_DISPATCH_* (0: off).
    pub mode: u64,
    /// Address of the selector byte.
    pub selector: u64,
    /// The address range whose syscalls are never dispatched.
    pub offset: u64,
    pub len: u64,
}

/// PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG: the thread's syscall user dispatch setting
/// (prctl(PR_SET_SYSCALL_USER_DISPATCH)), or `None` when it is off or the kernel has neither
/// the request nor the feature (EIO/EINVAL: before 6.4, or no CONFIG_GENERIC_ENTRY).
pub fn syscall_user_dispatch(tid: i32) -> Result<Option<SyscallUserDispatch>, PtraceError> {
    let mut conf = SyscallUserDispatch::default();
    // The request writes at most addr bytes (the struct's size) to data, which points at `conf`.
    match raw(
        PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG,
        "PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG",
        tid,
        std::mem::size_of::<SyscallUserDispatch>(),
        &mut conf as *mut SyscallUserDispatch as usize,
    ) {
        Err(PtraceError::Request {
            errno: Errno::EIO | Errno::EINVAL,
            ..
        }) => Ok(None),
        Err(e) => Err(e),
        Ok(_) if conf.mode == 0 => Ok(None),
        Ok(_) => Ok(Some(conf)),
    }
}

/// `struct ptrace_rseq_configuration` (linux/ptrace.h).
#[repr(C)]
#[derive(Default)]
struct RseqConfiguration {
    rseq_abi_pointer: u64,
    rseq_abi_size: u32,
    signature: u32,
    flags: u32,
    pad: u32,
}

/// PTRACE_GET_RSEQ_CONFIGURATION: the thread's rseq area, or `None` when it registered none.
pub fn rseq_configuration(tid: i32) -> Result<Option<RseqRegistration>, PtraceError> {
    let mut conf = RseqConfiguration::default();
    // The request writes at most addr bytes (the struct's size) to data, which points at `conf`.
    let r = raw(
        PTRACE_GET_RSEQ_CONFIGURATION,
        "PTRACE_GET_RSEQ_CONFIGURATION",
        tid,
        std::mem::size_of::<RseqConfiguration>(),
        &mut conf as *mut RseqConfiguration as usize,
    );
    match r {
        Err(PtraceError::Request {
            errno: errno @ (Errno::EIO | Errno::EINVAL),
            ..
        }) => return Err(PtraceError::RseqUnsupported { tid, errno }),
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    if conf.rseq_abi_pointer == 0 || conf.rseq_abi_size == 0 {
        return Ok(None);
    }
    if conf.flags != 0 {
        return Err(PtraceError::RseqFlags {
            tid,
            flags: conf.flags,
        });
    }
    Ok(Some(RseqRegistration {
        abi_pointer: conf.rseq_abi_pointer,
        abi_size: conf.rseq_abi_size,
        signature: conf.signature,
    }))
}

#[cfg(test)]
mod tests;
