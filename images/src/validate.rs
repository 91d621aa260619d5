//! Semantic checks of one [`ProcessImage`]. An image is input like any other: every length,
//! offset, index and address is bounds-checked here, with checked arithmetic, before a restore
//! acts on it. Each failure names the offending item.

use crate::error::ImageError;
use crate::schema::*;

mod aio;
mod fdtable;
mod ghost;
mod net;

pub use aio::{aio_ring_events, AIO_EVENT_SIZE, AIO_RINGS_MAX, AIO_RING_HEADER};
pub use ghost::GHOST_SIZE_MAX;
pub use net::{
    socket_option_name, NETLINK_PROTOCOLS, SOCKET_OPTIONS, SOCKET_OPTION_MAX, SOL_ICMPV6,
    SOL_PACKET, SOL_RAW, SOL_UDPLITE,
};

/// Addresses at or above this are outside any user address space (57-bit with 5-level paging
/// on x86_64, 52 bits on arm64).
pub const USER_ADDRESS_LIMIT: u64 = 1 << 57;
/// Number of registers in x86_64 `user_regs_struct` (NT_PRSTATUS).
pub const X86_64_GPR_COUNT: usize = 27;
/// Number of registers in arm64 `user_pt_regs` (x0-x30, sp, pc, pstate).
pub const AARCH64_GPR_COUNT: usize = 34;
/// The legacy XSAVE region (512) plus the XSAVE header (64): the smallest standard-format area.
pub const XSTATE_MIN: usize = 576;
/// Far above any XSAVE area a CPU reports today (AMX brings it to ~11 KiB).
pub const XSTATE_MAX: usize = 64 << 10;
/// `struct user_fpsimd_state`: 32 128-bit registers, fpsr, fpcr (and padding).
pub const FPSIMD_MIN: usize = 32 * 16 + 8;
/// The kernel keeps at most this many auxv words (`AT_VECTOR_SIZE` is far below it).
pub const AUXV_MAX_WORDS: usize = 128;
/// `RLIM_NLIMITS`.
pub const RLIMIT_COUNT: u32 = 16;
/// `NGROUPS_MAX`.
pub const GROUPS_MAX: usize = 65536;
/// The kernel requires an rseq area of at least the original 32-byte layout, 32-byte aligned.
const RSEQ_MIN_SIZE: u32 = 32;
/// Signals 1..=64 have a disposition each.
pub const SIGACTION_COUNT: usize = 64;
/// ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF.
pub const ITIMER_COUNT: usize = 3;
/// Bytes of a `siginfo_t` as PTRACE_PEEKSIGINFO returns it and rt_sigqueueinfo takes it.
pub const SIGINFO_SIZE: usize = 128;
/// Most signals one queue (a thread's or the process's) may hold in an image.
pub const PENDING_MAX: usize = 4096;
/// Most POSIX timers an image may hold (what the parasite can report).
pub const POSIX_TIMERS_MAX: usize = 64;
/// The smallest alternate signal stack the kernel accepts (MINSIGSTKSZ, 2048 on x86_64; arm64
/// asks for more, which its kernel checks itself).
pub const ALTSTACK_MIN: u64 = 2048;
/// Far above any sensible alternate signal stack.
pub const ALTSTACK_MAX: u64 = 1 << 30;
/// SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET: the UNIX socket types a restore can create.
pub const UNIX_SOCK_STREAM: u32 = 1;
pub const UNIX_SOCK_DGRAM: u32 = 2;
pub const UNIX_SOCK_SEQPACKET: u32 = 5;
/// `sizeof(sun_path)`.
pub const UNIX_PATH_MAX: usize = 108;
/// listen(2) caps its backlog at net.core.somaxconn, itself an int; anything above is nonsense.
pub const UNIX_BACKLOG_MAX: u32 = i32::MAX as u32;
/// Most bytes of unread data an image may hold for one socket (a UNIX stream socket's queue
/// is bounded by its peer's send buffer, a few hundred KiB by default).
pub const UNIX_QUEUED_MAX: usize = 64 << 20;
/// The socket options a TCP socket record may carry, (level, name, what it is called): a
/// restore sets nothing else. Generic Linux numbers (the same on x86_64 and aarch64).
pub const TCP_SOCKOPTS: &[(i32, i32, &str)] = &[
    (1, 2, "SO_REUSEADDR"),
    (1, 15, "SO_REUSEPORT"),
    (1, 25, "SO_BINDTODEVICE"),
    (1, 36, "SO_MARK"),
    (0, 15, "IP_FREEBIND"),
    (0, 19, "IP_TRANSPARENT"),
    (41, 26, "IPV6_V6ONLY"),
    (1, 7, "SO_SNDBUF"),
    (1, 8, "SO_RCVBUF"),
    (1, 5, "SO_DONTROUTE"),
    (1, 9, "SO_KEEPALIVE"),
    (1, 10, "SO_OOBINLINE"),
    (1, 11, "SO_NO_CHECK"),
    (1, 12, "SO_PRIORITY"),
    (1, 13, "SO_LINGER"),
    (1, 18, "SO_RCVLOWAT"),
    (1, 20, "SO_RCVTIMEO"),
    (1, 21, "SO_SNDTIMEO"),
    (1, 29, "SO_TIMESTAMP"),
    (1, 35, "SO_TIMESTAMPNS"),
    (1, 46, "SO_BUSY_POLL"),
    (1, 75, "SO_RCVMARK"),
    (0, 1, "IP_TOS"),
    (0, 2, "IP_TTL"),
    (41, 16, "IPV6_UNICAST_HOPS"),
    (41, 67, "IPV6_TCLASS"),
    (6, 1, "TCP_NODELAY"),
    (6, 2, "TCP_MAXSEG"),
    (6, 3, "TCP_CORK"),
    (6, 4, "TCP_KEEPIDLE"),
    (6, 5, "TCP_KEEPINTVL"),
    (6, 6, "TCP_KEEPCNT"),
    (6, 7, "TCP_SYNCNT"),
    (6, 8, "TCP_LINGER2"),
    (6, 9, "TCP_DEFER_ACCEPT"),
    (6, 13, "TCP_CONGESTION"),
    (6, 18, "TCP_USER_TIMEOUT"),
    (6, 23, "TCP_FASTOPEN"),
    (6, 25, "TCP_NOTSENT_LOWAT"),
];
/// Longest option value (TCP_CONGESTION and SO_BINDTODEVICE are 16-byte names).
pub const SOCKOPT_VALUE_MAX: usize = 16;
/// Most bytes one TCP queue may hold in an image (the kernel's own limits are far lower).
pub const TCP_QUEUED_MAX: usize = 64 << 20;

/// Largest shared memory object an image may describe (far above any real one).
pub const SHMEM_SIZE_MAX: u64 = 1 << 46;
/// A thread name (comm) is at most TASK_COMM_LEN - 1 bytes.
pub const THREAD_NAME_MAX: usize = 15;

/// Checks one process record against itself, the size of its page file and the page size.
///
/// The page file's presence and role are checked by the caller (it knows the inventory).
pub fn validate_process(
    p: &ProcessImage,
    page_file_size: u64,
    page_size: u64,
) -> Result<(), ImageError> {
    check(p, page_file_size, page_size)
        .map_err(|what| ImageError::InvalidProcess { pid: p.pid, what })
}

/// `Ok` or a description of the first problem.
pub(crate) fn check(p: &ProcessImage, page_file_size: u64, page_size: u64) -> Result<(), String> {
    if page_size == 0 || !page_size.is_power_of_two() {
        return Err(format!("page size {page_size} is not a power of two"));
    }
    if p.pid <= 0 {
        return Err(format!("pid {} is not positive", p.pid));
    }
    if p.comm.contains('\0') {
        return Err("comm contains a NUL byte".into());
    }
    if p.creds.groups.len() > GROUPS_MAX {
        return Err(format!(
            "{} supplementary groups (at most {GROUPS_MAX})",
            p.creds.groups.len()
        ));
    }
    check_creds(&p.creds)?;
    check_file_name(&p.pages_file).map_err(|e| format!("page file name: {e}"))?;
    check_threads(p)?;
    check_files(p)?;
    check_mm(&p.mm)?;
    check_vmas(p, page_size)?;
    aio::check_count(p)?;
    check_page_runs(p, page_file_size, page_size)?;
    check_memfd_runs(p, page_file_size, page_size)?;
    check_sysv_shm(p, page_file_size, page_size)?;
    ghost::check_ghost_runs(p, page_file_size, page_size)?;
    check_fds(p)?;
    check_locks(p)?;
    check_code_ids(p)?;
    check_rlimits(&p.rlimits)?;
    check_task(&p.task)?;
    Ok(())
}

/// Every SECBIT_* flag and lock of linux/securebits.h (bits 0 to 7).
pub const SECUREBITS_ALL: u32 = 0xff;

/// Capability sets the kernel could have produced: effective and ambient within permitted,
/// ambient within inheritable; securebits only the defined flags.
fn check_creds(c: &Creds) -> Result<(), String> {
    if c.cap_effective & !c.cap_permitted != 0 {
        return Err(format!(
            "effective capabilities {:#x} outside the permitted set {:#x}",
            c.cap_effective, c.cap_permitted
        ));
    }
    if c.cap_ambient & !(c.cap_permitted & c.cap_inheritable) != 0 {
        return Err(format!(
            "ambient capabilities {:#x} outside permitted {:#x} and inheritable {:#x}",
            c.cap_ambient, c.cap_permitted, c.cap_inheritable
        ));
    }
    if c.securebits & !SECUREBITS_ALL != 0 {
        return Err(format!("unknown securebits {:#x}", c.securebits));
    }
    Ok(())
}

/// A name that stays inside the image directory and can be created there.
pub(crate) fn check_file_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(format!("{name:?} is not a file name"));
    }
    if name.contains('/') || name.contains('\0') {
        return Err(format!("{name:?} contains '/' or a NUL byte"));
    }
    Ok(())
}

fn check_address(what: &str, addr: u64) -> Result<(), String> {
    if addr >= USER_ADDRESS_LIMIT {
        return Err(format!(
            "{what} {addr:#x} is outside the user address space"
        ));
    }
    Ok(())
}

fn check_threads(p: &ProcessImage) -> Result<(), String> {
    check_thread_list(p.pid, &p.threads)
}

/// The threads of process `pid`: the leader (tid == pid) first, every tid positive and listed
/// once (a restore recreates each with clone3(set_tid), which fails on a tid taken twice), and
/// each thread's own state sound.
pub(crate) fn check_thread_list(pid: i32, threads: &[ThreadImage]) -> Result<(), String> {
    let Some(leader) = threads.first() else {
        return Err("has no threads".into());
    };
    if leader.tid != pid {
        return Err(format!(
            "first thread has tid {}, the leader's tid must equal the pid",
            leader.tid
        ));
    }
    let mut tids: Vec<i32> = Vec::with_capacity(threads.len());
    for t in threads {
        if t.tid <= 0 {
            return Err(format!("thread tid {} is not positive", t.tid));
        }
        tids.push(t.tid);
        check_regs(t.tid, &t.regs)?;
        if let Some(rseq) = &t.rseq {
            if rseq.abi_size < RSEQ_MIN_SIZE {
                return Err(format!(
                    "thread {}: rseq area of {} bytes (at least {RSEQ_MIN_SIZE})",
                    t.tid, rseq.abi_size
                ));
            }
            if rseq.abi_pointer == 0 || rseq.abi_pointer % u64::from(RSEQ_MIN_SIZE) != 0 {
                return Err(format!(
                    "thread {}: rseq area at {:#x} is not 32-byte aligned",
                    t.tid, rseq.abi_pointer
                ));
            }
            let end = rseq
                .abi_pointer
                .checked_add(u64::from(rseq.abi_size))
                .ok_or_else(|| format!("thread {}: rseq area wraps around", t.tid))?;
            check_address(&format!("thread {}: rseq area end", t.tid), end - 1)?;
        }
        check_thread_state(t.tid, &t.state)?;
    }
    tids.sort_unstable();
    if let Some(w) = tids.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("tid {} appears twice", w[0]));
    }
    Ok(())
}

fn check_regs(tid: i32, regs: &ArchRegs) -> Result<(), String> {
    let host = Arch::host();
    match (regs, host) {
        (ArchRegs::X86_64 { gpr, xstate }, Arch::X86_64) => {
            if gpr.len() != X86_64_GPR_COUNT {
                return Err(format!(
                    "thread {tid}: {} general registers, x86_64 has {X86_64_GPR_COUNT}",
                    gpr.len()
                ));
            }
            if !(XSTATE_MIN..=XSTATE_MAX).contains(&xstate.len()) {
                return Err(format!(
                    "thread {tid}: xstate area of {} bytes (must be {XSTATE_MIN} to {XSTATE_MAX})",
                    xstate.len()
                ));
            }
        }
        (ArchRegs::Aarch64 { gpr, fpsimd, .. }, Arch::Aarch64) => {
            if gpr.len() != AARCH64_GPR_COUNT {
                return Err(format!(
                    "thread {tid}: {} general registers, aarch64 has {AARCH64_GPR_COUNT}",
                    gpr.len()
                ));
            }
            if !(FPSIMD_MIN..=XSTATE_MAX).contains(&fpsimd.len()) {
                return Err(format!(
                    "thread {tid}: FP/SIMD state of {} bytes (must be {FPSIMD_MIN} to {XSTATE_MAX})",
                    fpsimd.len()
                ));
            }
        }
        (ArchRegs::X86_64 { .. }, other) | (ArchRegs::Aarch64 { .. }, other) => {
            return Err(format!(
                "thread {tid}: registers of another architecture than {}",
                other.name()
            ));
        }
    }
    Ok(())
}

fn check_files(p: &ProcessImage) -> Result<(), String> {
    for (i, f) in p.files.iter().enumerate() {
        check_file_path(i, f)?;
    }
    let file = |what: &str, idx: u32| -> Result<&FileIdentity, String> {
        p.files.get(idx as usize).ok_or_else(|| {
            format!(
                "{what} refers to file {idx}, but the process lists {} files",
                p.files.len()
            )
        })
    };
    let exe = file("exe", p.exe_file)?;
    // A deleted executable is a recreated regular file.
    let ghost_file = matches!(exe.kind, FileKind::Ghost(_)) && exe.mode & 0o170000 == 0o100000;
    if exe.kind != FileKind::Regular && !ghost_file {
        return Err(format!("exe {:?} is not a regular file", exe.path));
    }
    // A removed directory is a recreated one.
    let is_dir = |f: &FileIdentity| {
        f.kind == FileKind::Directory
            || (matches!(f.kind, FileKind::Ghost(_)) && f.mode & 0o170000 == 0o040000)
    };
    let cwd = file("cwd", p.cwd_file)?;
    if !is_dir(cwd) {
        return Err(format!("cwd {:?} is not a directory", cwd.path));
    }
    if let Some(idx) = p.root_file {
        let root = file("root", idx)?;
        if !is_dir(root) {
            return Err(format!("root {:?} is not a directory", root.path));
        }
    }
    for (i, d) in p.open_files.iter().enumerate() {
        let f = file(&format!("open file description {i}"), d.file)?;
        // A pipe description is its read end, its write end, or (opened anew through
        // /proc/PID/fd) both; O_ACCMODE 3 means neither.
        if matches!(
            f.kind,
            FileKind::Pipe(_) | FileKind::Fifo(_) | FileKind::DeletedFifo { .. }
        ) && d.flags & 3 == 3
        {
            return Err(format!(
                "open file description {i} of pipe inode {} has access mode 3",
                f.ino
            ));
        }
        if let Some(o) = &d.owner {
            check_owner(i, o)?;
        }
    }
    Ok(())
}

/// An owner names a thread, process or group (or nobody, with a signal set) and a signal a
/// process can be sent.
fn check_owner(i: usize, o: &FileOwner) -> Result<(), String> {
    if o.id < 0 || !(0..=64).contains(&o.signal) || (o.id == 0 && o.signal == 0) {
        return Err(format!(
            "open file description {i} has the owner {} {} with signal {}",
            match o.kind {
                OwnerKind::Thread => "thread",
                OwnerKind::Process => "process",
                OwnerKind::ProcessGroup => "process group",
            },
            o.id,
            o.signal
        ));
    }
    Ok(())
}

/// A pipe has no path; the image may hold at most [`PIPE_SIZE_MAX`] bytes of one.
fn check_pipe(i: usize, f: &FileIdentity, pipe: &Pipe) -> Result<(), String> {
    let fifo = matches!(f.kind, FileKind::Fifo(_) | FileKind::DeletedFifo { .. });
    if fifo && !f.path.starts_with('/') {
        return Err(format!(
            "file {i} is a FIFO whose path {:?} is not absolute",
            f.path
        ));
    }
    if !fifo && !f.path.is_empty() {
        return Err(format!("file {i} is a pipe with a path"));
    }
    if let Pipe::Internal { size, buffered } = pipe {
        if *size == 0 || *size > PIPE_SIZE_MAX {
            return Err(format!(
                "file {i} is a pipe of {size} bytes (between 1 and {PIPE_SIZE_MAX})"
            ));
        }
        if buffered.len() > *size as usize {
            return Err(format!(
                "file {i} is a pipe of {size} bytes holding {} buffered bytes",
                buffered.len()
            ));
        }
    }
    Ok(())
}

/// Every file is reopened or recreated by an absolute path, except an unbound socket, which has
/// no path at all.
/// An event fd's state: a timer on a clock timerfd knows, with sane times and flags.
fn check_event(i: usize, ev: &EventFd) -> Result<(), String> {
    if let EventFd::Timer {
        clock,
        value_ns,
        interval_ns,
        settime_flags,
        ..
    } = *ev
    {
        // CLOCK_REALTIME, MONOTONIC, BOOTTIME, REALTIME_ALARM, BOOTTIME_ALARM.
        if ![0, 1, 7, 8, 9].contains(&clock) {
            return Err(format!("file {i} is a timerfd on clock {clock}"));
        }
        // TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET.
        if settime_flags & !3 != 0 {
            return Err(format!(
                "file {i} is a timerfd with settime flags {settime_flags:#o}"
            ));
        }
        // Far beyond any timer: a hundred years, in nanoseconds (and within an i64 of them).
        const FAR: u64 = 100 * 365 * 86400 * 1_000_000_000;
        if value_ns > FAR || interval_ns > FAR {
            return Err(format!(
                "file {i} is a timerfd set {value_ns}/{interval_ns} ns away"
            ));
        }
    }
    Ok(())
}

/// [`check_file_path`] of file 0, for the tests of the crate.
#[cfg(test)]
pub(crate) fn check_file_for_tests(f: &FileIdentity) -> Result<(), String> {
    check_file_path(0, f)
}

/// Whether `t` is a name crest gives its network lock tables (nothing nft could misread).
fn lock_name_ok(t: &str) -> bool {
    t.starts_with("crest-")
        && t.len() <= 64
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A TCP socket's record: its family, addresses of that family, known options, sane queues.
fn check_tcp(_i: usize, f: &FileIdentity, t: &TcpSocket) -> Result<(), String> {
    use std::net::SocketAddr;
    if !f.path.is_empty() {
        return Err("with a path".into());
    }
    let v6 = match t.family {
        2 => false,
        10 => true,
        other => return Err(format!("of address family {other}")),
    };
    let addr_ok = |a: &SocketAddr| a.is_ipv6() == v6;
    for o in &t.options {
        if !TCP_SOCKOPTS
            .iter()
            .any(|(l, n, _)| *l == o.level && *n == o.name)
        {
            return Err(format!("with unknown option {}/{}", o.level, o.name));
        }
        if o.value.is_empty() || o.value.len() > SOCKOPT_VALUE_MAX {
            return Err(format!(
                "with option {}/{} of {} bytes",
                o.level,
                o.name,
                o.value.len()
            ));
        }
    }
    if t.buf_lock & !3 != 0 {
        return Err(format!("with buffer lock bits {:#x}", t.buf_lock));
    }
    match &t.state {
        TcpState::Unbound => Ok(()),
        TcpState::Bound { local } => match addr_ok(local) {
            true => Ok(()),
            false => Err(format!("bound to {local}, not of its family")),
        },
        TcpState::Listening { local, backlog } => {
            if !addr_ok(local) {
                return Err(format!("listening on {local}, not of its family"));
            }
            if *backlog > i32::MAX as u32 {
                return Err(format!("listening with backlog {backlog}"));
            }
            Ok(())
        }
        TcpState::Connecting {
            local,
            remote,
            network_lock,
            ..
        } => {
            if !addr_ok(local) || !addr_ok(remote) {
                return Err(format!("connecting {local} -> {remote}, not of its family"));
            }
            if !lock_name_ok(network_lock) {
                return Err(format!("with network lock table name {network_lock:?}"));
            }
            Ok(())
        }
        TcpState::Closed {
            local,
            remote,
            recv_queue,
        } => {
            if !addr_ok(local) || !addr_ok(remote) {
                return Err(format!(
                    "closed after a connection {local} -> {remote}, not of its family"
                ));
            }
            if recv_queue.len() > TCP_QUEUED_MAX {
                return Err(format!(
                    "closed with {} bytes unread (at most {TCP_QUEUED_MAX})",
                    recv_queue.len()
                ));
            }
            Ok(())
        }
        TcpState::Established(c) => {
            if !addr_ok(&c.local) || !addr_ok(&c.remote) {
                return Err(format!(
                    "connected {} -> {}, not of its family",
                    c.local, c.remote
                ));
            }
            if c.send_queue.len() > TCP_QUEUED_MAX || c.recv_queue.len() > TCP_QUEUED_MAX {
                return Err(format!(
                    "with queues of {} and {} bytes (at most {TCP_QUEUED_MAX})",
                    c.send_queue.len(),
                    c.recv_queue.len()
                ));
            }
            if c.unsent as usize > c.send_queue.len() {
                return Err(format!(
                    "with {} unsent bytes in a send queue of {}",
                    c.unsent,
                    c.send_queue.len()
                ));
            }
            if c.phase == TcpPhase::FinWait2 && !c.send_queue.is_empty() {
                return Err(format!(
                    "in FIN_WAIT2 (everything acknowledged) with {} bytes to send",
                    c.send_queue.len()
                ));
            }
            if c.tcp_options & !7 != 0 || c.snd_wscale > 14 || c.rcv_wscale > 14 {
                return Err(format!(
                    "with TCP options {:#x} and window scales {}/{}",
                    c.tcp_options, c.snd_wscale, c.rcv_wscale
                ));
            }
            if !lock_name_ok(&c.network_lock) {
                return Err(format!("locked by table {:?}", c.network_lock));
            }
            Ok(())
        }
    }
}

/// A UNIX socket: a known type, a name that fits sun_path (a path exactly when bound to one),
/// a state its type can have, and a queue of bounded size.
fn check_unix_socket(i: usize, f: &FileIdentity, s: &UnixSocket) -> Result<(), String> {
    if ![UNIX_SOCK_STREAM, UNIX_SOCK_DGRAM, UNIX_SOCK_SEQPACKET].contains(&s.sock_type) {
        return Err(format!(
            "file {i} is a UNIX socket of unknown type {}",
            s.sock_type
        ));
    }
    let stream = s.sock_type != UNIX_SOCK_DGRAM;
    // sun_path holds 108 bytes; a path also needs its terminating NUL.
    match &s.name {
        UnixName::Unnamed => {
            if !f.path.is_empty() {
                return Err(format!("file {i} is an unbound UNIX socket with a path"));
            }
        }
        UnixName::Path { bound, dir, .. } => {
            // A relative name is bound from an absolute directory, and an absolute one from
            // the root of a chrooted process (or none); the file's path is absolute.
            let relative = !bound.starts_with('/');
            let from_dir = !dir.is_empty();
            if bound.is_empty()
                || bound.len() >= UNIX_PATH_MAX
                || bound.contains('\0')
                || (relative && !from_dir)
            {
                return Err(format!(
                    "file {i} is a UNIX socket bound to {bound:?} (from directory {dir:?}), not \
                     a path of at most {} bytes, relative only when an absolute directory is \
                     given",
                    UNIX_PATH_MAX - 1
                ));
            }
            if from_dir && (!dir.starts_with('/') || dir.contains('\0')) {
                return Err(format!(
                    "file {i} is a UNIX socket bound from directory {dir:?}, not an absolute path"
                ));
            }
            let p = &f.path;
            if !p.starts_with('/') || (!from_dir && p.len() >= UNIX_PATH_MAX) || p.contains('\0') {
                return Err(format!(
                    "file {i} is a UNIX socket whose file is at {p:?}, not an absolute path{}",
                    if from_dir {
                        String::new()
                    } else {
                        format!(" of at most {} bytes", UNIX_PATH_MAX - 1)
                    }
                ));
            }
        }
        UnixName::Abstract { name } => {
            if !f.path.is_empty() || name.len() >= UNIX_PATH_MAX {
                return Err(format!(
                    "file {i} is a UNIX socket with an abstract name of {} bytes and path {:?}",
                    name.len(),
                    f.path
                ));
            }
        }
    }
    net::check_options(i, "UNIX socket", &s.options)?;
    if let Some(c) = &s.peer_creds {
        // PID_MAX_LIMIT: no pid is above 4 Mi; none (pid 0) is recorded as no creds at all.
        if c.pid <= 0 || c.pid > 4 << 20 {
            return Err(format!(
                "file {i} is a UNIX socket whose peer credentials name pid {}",
                c.pid
            ));
        }
    }
    if s.shutdown & !3 != 0 {
        return Err(format!(
            "file {i} is a UNIX socket with shutdown bits {:#x}",
            s.shutdown
        ));
    }
    let queued: usize = s.queue.iter().map(|m| m.data.len()).sum();
    if queued > UNIX_QUEUED_MAX {
        return Err(format!(
            "file {i} is a UNIX socket with {queued} queued bytes (at most {UNIX_QUEUED_MAX})"
        ));
    }
    if s.queue.iter().any(|m| m.from.len() > UNIX_PATH_MAX) {
        return Err(format!(
            "file {i} is a UNIX socket with a message from a too long name"
        ));
    }
    if s.sock_type == libc::SOCK_STREAM as u32
        && s.queue
            .iter()
            .any(|m| m.data.is_empty() && !m.fds.is_empty())
    {
        return Err(format!(
            "file {i} is a UNIX stream socket with a message of no bytes that carries files"
        ));
    }
    if stream && s.queue.iter().any(|m| !m.from.is_empty()) {
        return Err(format!(
            "file {i} is a UNIX stream or seqpacket socket with a message from a named sender"
        ));
    }
    let named = s.name != UnixName::Unnamed;
    match &s.state {
        UnixSocketState::Listening { backlog, pending } => {
            if *backlog > UNIX_BACKLOG_MAX {
                return Err(format!(
                    "file {i} is a UNIX socket listening with backlog {backlog} (at most \
                     {UNIX_BACKLOG_MAX})"
                ));
            }
            if !stream {
                return Err(format!("file {i} is a listening UNIX datagram socket"));
            }
            if !named {
                return Err(format!(
                    "file {i} is a UNIX socket listening without a name"
                ));
            }
            if pending.len() as u64 > u64::from(*backlog) + 1 {
                return Err(format!(
                    "file {i} is a UNIX socket with {} connections waiting and backlog {backlog}",
                    pending.len()
                ));
            }
            if !s.queue.is_empty() {
                return Err(format!(
                    "file {i} is a listening UNIX socket with queued data"
                ));
            }
        }
        UnixSocketState::Connected { .. }
        | UnixSocketState::PeerClosed
        | UnixSocketState::Queued { .. }
        | UnixSocketState::External { .. } => {
            if stream && named {
                return Err(format!(
                    "file {i} is a connected UNIX stream socket recorded with a name"
                ));
            }
            if let UnixSocketState::External { peer_name } = &s.state {
                if peer_name.is_empty() || peer_name.len() > UNIX_PATH_MAX {
                    return Err(format!(
                        "file {i} is a UNIX socket connected to an external peer of a name of \
                         {} bytes",
                        peer_name.len()
                    ));
                }
            }
            if let UnixSocketState::Queued { .. } = s.state {
                if !stream || !s.queue.is_empty() {
                    return Err(format!(
                        "file {i} is a UNIX socket waiting to be accepted with a type or a \
                         queue it cannot have"
                    ));
                }
            }
        }
        UnixSocketState::Unconnected => {}
    }
    Ok(())
}

/// An inotify instance's watches: positive wds in ascending order, each on an absolute path.
fn check_inotify(i: usize, ino: &Inotify) -> Result<(), String> {
    let mut last = 0;
    for w in &ino.watches {
        if w.wd <= last {
            return Err(format!(
                "file {i} is an inotify instance whose watches are not by ascending positive wd \
                 ({} after {last})",
                w.wd
            ));
        }
        last = w.wd;
        if !w.path.starts_with('/') || w.path.contains('\0') {
            return Err(format!(
                "file {i} is an inotify instance watching {:?}, not an absolute path",
                w.path
            ));
        }
    }
    Ok(())
}

/// What epolls and pidfds refer to in other processes: every epoll target is an open file
/// description of the tree (`descriptions`: the ids every process lists), and not the epoll
/// itself; every pidfd names a task of the tree (`tasks`).
fn check_references(
    processes: &[ProcessImage],
    descriptions: &std::collections::HashMap<u32, (u64, u64)>,
    tasks: &std::collections::HashSet<i32>,
) -> Result<(), String> {
    for p in processes {
        for d in &p.open_files {
            let Some(f) = p.files.get(d.file as usize) else {
                continue;
            };
            match &f.kind {
                FileKind::Epoll(ep) => {
                    for t in &ep.targets {
                        if !descriptions.contains_key(&t.description) {
                            return Err(format!(
                                "process {}: epoll description {} has target fd {} with \
                                 description {}, which no process has",
                                p.pid, d.id, t.fd, t.description
                            ));
                        }
                        if t.description == d.id {
                            return Err(format!(
                                "process {}: epoll description {} has itself as a target",
                                p.pid, d.id
                            ));
                        }
                    }
                }
                FileKind::TreeProc { pid } if !tasks.contains(pid) => {
                    return Err(format!(
                        "process {}: description {} is a /proc file of pid {pid}, which is \
                         not a task of the tree",
                        p.pid, d.id
                    ));
                }
                FileKind::Pidfd { pid } if *pid != -1 && !tasks.contains(pid) => {
                    return Err(format!(
                        "process {}: description {} is a pidfd of pid {pid}, which is not a \
                         task of the tree",
                        p.pid, d.id
                    ));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// A queue name mq_open accepts, attributes it can create, messages that fit them.
fn check_mqueue(i: usize, q: &Mqueue) -> Result<(), String> {
    let what = || format!("file {i} is a POSIX message queue {:?}", q.name);
    if q.name.is_empty() || q.name.len() > 255 || q.name.contains(['/', '\0']) {
        return Err(format!("{} with a name mq_open does not accept", what()));
    }
    if q.maxmsg <= 0 || q.msgsize <= 0 {
        return Err(format!(
            "{} with {} messages of {} bytes at most",
            what(),
            q.maxmsg,
            q.msgsize
        ));
    }
    if q.messages.len() as i64 > q.maxmsg {
        return Err(format!(
            "{} holding {} messages, more than its limit of {}",
            what(),
            q.messages.len(),
            q.maxmsg
        ));
    }
    if let Some(m) = q.messages.iter().find(|m| m.data.len() as i64 > q.msgsize) {
        return Err(format!(
            "{} holding a message of {} bytes, longer than its limit of {}",
            what(),
            m.data.len(),
            q.msgsize
        ));
    }
    if q.messages.windows(2).any(|w| w[0].priority < w[1].priority) {
        return Err(format!(
            "{} whose messages are not in receive order (highest priority first)",
            what()
        ));
    }
    Ok(())
}

fn check_file_path(i: usize, f: &FileIdentity) -> Result<(), String> {
    if f.path.contains('\0') {
        return Err(format!("file {i} has a path with a NUL byte"));
    }
    if let FileKind::Pipe(pipe) | FileKind::Fifo(pipe) = &f.kind {
        return check_pipe(i, f, pipe);
    }
    if let FileKind::DeletedDevice { rdev, .. } = f.kind {
        if !f.path.starts_with('/') || f.mode & 0o170000 != 0o020000 {
            return Err(format!(
                "file {i} is a deleted device node {:?} (device {rdev:#x}) with mode {:o}, not a \
                 character device at an absolute path",
                f.path, f.mode
            ));
        }
    }
    if let FileKind::DeletedSymlink { target, .. } = &f.kind {
        if !f.path.starts_with('/') || f.mode & 0o170000 != 0o120000 || target.contains('\0') {
            return Err(format!(
                "file {i} is a deleted symbolic link {:?} with mode {:o} or a bad target",
                f.path, f.mode
            ));
        }
    }
    if let FileKind::DeletedFifo { pipe, .. } = &f.kind {
        if !matches!(pipe, Pipe::Internal { .. }) || f.mode & 0o170000 != 0o010000 {
            return Err(format!(
                "file {i} is a deleted FIFO that is not internal to the tree or has mode {:o}",
                f.mode
            ));
        }
        return check_pipe(i, f, pipe);
    }
    if let FileKind::Event(ev) = &f.kind {
        return check_event(i, ev);
    }
    if let FileKind::Inotify(ino) = &f.kind {
        return check_inotify(i, ino);
    }
    if let FileKind::Pidfd { pid } = f.kind {
        // -1: a process that had exited and been reaped.
        if pid <= 0 && pid != -1 {
            return Err(format!("file {i} is a pidfd of pid {pid}"));
        }
        return Ok(());
    }
    // Created anew; its path is what the fd's link read.
    if let FileKind::Epoll(_) = f.kind {
        return Ok(());
    }
    if let FileKind::Memfd { name, seals } = &f.kind {
        return check_memfd(i, f, name, *seals);
    }
    if let FileKind::Ghost(_) = &f.kind {
        return ghost::check_ghost(i, f);
    }
    if let FileKind::Mqueue(q) = &f.kind {
        return check_mqueue(i, q);
    }
    if let FileKind::Namespace { ns } = &f.kind {
        if !crate::schema::NAMESPACE_TYPES.contains(&ns.as_str())
            || f.path != format!("/proc/self/ns/{ns}")
        {
            return Err(format!(
                "file {i} is a namespace file of type {ns:?} at {:?}, not /proc/self/ns/ of a \
                 namespace type",
                f.path
            ));
        }
        return Ok(());
    }
    if let FileKind::TreeProc { pid } = f.kind {
        let prefix = format!("/proc/{pid}");
        let rest = f.path.strip_prefix(&prefix);
        if pid <= 0 || !rest.is_some_and(|r| r.is_empty() || r.starts_with('/')) {
            return Err(format!(
                "file {i} is a /proc file of pid {pid} at {:?}, not under {prefix}",
                f.path
            ));
        }
        return Ok(());
    }
    if let FileKind::Tcp(t) = &f.kind {
        return check_tcp(i, f, t).map_err(|e| format!("file {i} is a TCP socket {e}"));
    }
    if let FileKind::Udp(u) = &f.kind {
        return net::check_udp(i, f, u);
    }
    if let FileKind::Netlink(n) = &f.kind {
        return net::check_netlink(i, f, n);
    }
    if let FileKind::Packet(p) = &f.kind {
        return net::check_packet(i, f, p);
    }
    if let FileKind::UnixSocket(s) = &f.kind {
        return check_unix_socket(i, f, s);
    }
    if !f.path.starts_with('/') {
        return Err(format!(
            "file {i} has path {:?}, not an absolute path",
            f.path
        ));
    }
    Ok(())
}

fn check_mm(mm: &MmFields) -> Result<(), String> {
    let fields = [
        ("start_code", mm.start_code),
        ("end_code", mm.end_code),
        ("start_data", mm.start_data),
        ("end_data", mm.end_data),
        ("start_brk", mm.start_brk),
        ("brk", mm.brk),
        ("start_stack", mm.start_stack),
        ("arg_start", mm.arg_start),
        ("arg_end", mm.arg_end),
        ("env_start", mm.env_start),
        ("env_end", mm.env_end),
    ];
    for (name, value) in fields {
        check_address(&format!("mm field {name}"), value)?;
    }
    // The orderings PR_SET_MM_MAP insists on (kernel/sys.c: validate_prctl_map_addr).
    let pairs = [
        ("start_code", mm.start_code, "end_code", mm.end_code),
        ("start_data", mm.start_data, "end_data", mm.end_data),
        ("start_brk", mm.start_brk, "brk", mm.brk),
        ("arg_start", mm.arg_start, "arg_end", mm.arg_end),
        ("env_start", mm.env_start, "env_end", mm.env_end),
    ];
    for (a, av, b, bv) in pairs {
        if av > bv {
            return Err(format!("mm field {a} {av:#x} is above {b} {bv:#x}"));
        }
    }
    if !mm.auxv.len().is_multiple_of(2) {
        return Err(format!(
            "auxv has {} words, not (type, value) pairs",
            mm.auxv.len()
        ));
    }
    if mm.auxv.len() > AUXV_MAX_WORDS {
        return Err(format!(
            "auxv has {} words (at most {AUXV_MAX_WORDS})",
            mm.auxv.len()
        ));
    }
    Ok(())
}

/// Longest name PR_SET_VMA_ANON_NAME accepts, without the NUL (ANON_VMA_NAME_MAX_LEN - 1).
const ANON_NAME_MAX: usize = 79;

/// A `[anon:NAME]` or `[anon_shmem:NAME]` name is one the kernel would take back: at most 79
/// bytes of printable ASCII other than `\`, `` ` ``, `$`, `[` and `]` (what
/// PR_SET_VMA_ANON_NAME accepts), on the backing that shows it.
fn check_anon_name(v: &Vma) -> Result<(), String> {
    let Some(name) = v.anon_name() else {
        if v.name.starts_with("[anon:") || v.name.starts_with("[anon_shmem:") {
            return Err(format!(
                "is named {:?}, which only anonymous memory of the matching kind shows",
                v.name
            ));
        }
        return Ok(());
    };
    if name.len() > ANON_NAME_MAX {
        return Err(format!(
            "has an anonymous name of {} bytes (at most {ANON_NAME_MAX})",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(' '..='~').contains(c) || "\\`$[]".contains(*c))
    {
        return Err(format!(
            "has the anonymous name {name:?}, with {c:?}, which PR_SET_VMA_ANON_NAME refuses"
        ));
    }
    Ok(())
}

fn check_vmas(p: &ProcessImage, page_size: u64) -> Result<(), String> {
    let mut prev_end = 0u64;
    for (i, v) in p.vmas.iter().enumerate() {
        let what = || format!("VMA {i} ({:#x}-{:#x})", v.start, v.end);
        if v.start % page_size != 0 || v.end % page_size != 0 {
            return Err(format!("{} is not page-aligned", what()));
        }
        if v.start >= v.end {
            return Err(format!("{} is empty or reversed", what()));
        }
        let mut guard_end = v.start;
        for &(gs, ge) in &v.guard_ranges {
            if gs % page_size != 0
                || ge % page_size != 0
                || gs >= ge
                || gs < guard_end
                || ge > v.end
            {
                return Err(format!(
                    "{} has guard range {gs:#x}-{ge:#x}, not a sorted page-aligned range inside it",
                    what()
                ));
            }
            guard_end = ge;
        }
        if v.end > USER_ADDRESS_LIMIT {
            return Err(format!("{} is outside the user address space", what()));
        }
        if i > 0 && v.start < prev_end {
            return Err(format!(
                "{} overlaps or precedes the VMA before it (which ends at {prev_end:#x})",
                what()
            ));
        }
        prev_end = v.end;
        if v.prot & !(PROT_READ | PROT_WRITE | PROT_EXEC) != 0 {
            return Err(format!(
                "{} has unknown protection bits {:#x}",
                what(),
                v.prot
            ));
        }
        if v.name.contains('\0') {
            return Err(format!("{} has a name with a NUL byte", what()));
        }
        check_anon_name(v).map_err(|e| format!("{} {e}", what()))?;
        if let VmaBacking::AioRing(ring) = &v.backing {
            aio::check(v, ring).map_err(|e| format!("{} {e}", what()))?;
        }
        if let VmaBacking::File { file, offset } = v.backing {
            let f = p.files.get(file as usize).ok_or_else(|| {
                format!(
                    "{} maps file {file}, but the process lists {} files",
                    what(),
                    p.files.len()
                )
            })?;
            if f.kind == FileKind::Directory {
                return Err(format!("{} maps the directory {:?}", what(), f.path));
            }
            if let FileKind::UnixSocket(_) = f.kind {
                return Err(format!("{} maps a UNIX socket", what()));
            }
            if let FileKind::Udp(_) | FileKind::Netlink(_) | FileKind::Packet(_) = f.kind {
                return Err(format!("{} maps a socket", what()));
            }
            if let FileKind::Pipe(_) | FileKind::Fifo(_) | FileKind::DeletedFifo { .. } = f.kind {
                return Err(format!("{} maps a pipe", what()));
            }
            if let FileKind::Tcp(_) = f.kind {
                return Err(format!("{} maps a TCP socket", what()));
            }
            if let FileKind::Mqueue(_) | FileKind::TreeProc { .. } | FileKind::Namespace { .. } =
                f.kind
            {
                return Err(format!(
                    "{} maps a message queue, a /proc file or a namespace file",
                    what()
                ));
            }
            if offset % page_size != 0 {
                return Err(format!(
                    "{} maps file offset {offset:#x}, not page-aligned",
                    what()
                ));
            }
            offset
                .checked_add(v.end - v.start)
                .ok_or_else(|| format!("{} file offset {offset:#x} overflows", what()))?;
        }
        if let VmaBacking::SharedAnonymous { size, offset, .. } = v.backing {
            if offset % page_size != 0 || size % page_size != 0 || size > SHMEM_SIZE_MAX {
                return Err(format!(
                    "{} maps shared memory of size {size:#x} at offset {offset:#x} (not \
                     page-aligned, or larger than {SHMEM_SIZE_MAX:#x})",
                    what()
                ));
            }
            // A mapping may reach past the object's end (mmap allows it; touching that part
            // raises SIGBUS): only the page runs must stay inside the object.
            if offset.checked_add(v.end - v.start).is_none() {
                return Err(format!(
                    "{} maps {:#x} bytes at offset {offset:#x} of a shared memory object, \
                     past any size",
                    what(),
                    v.end - v.start
                ));
            }
        }
    }
    Ok(())
}

/// The tree's clock readings: a time namespace can only carry on from a positive reading (its
/// clocks may never read below zero). (Boot time may read a little behind monotonic: the two
/// are read one after the other, and in a time namespace through offsets set the same way.)
pub(crate) fn check_clocks(c: &TreeClocks) -> Result<(), String> {
    if c.monotonic_ns <= 0 || c.boottime_ns <= 0 {
        return Err(format!(
            "the tree's clocks at the dump (monotonic {} ns, boot time {} ns) are not positive",
            c.monotonic_ns, c.boottime_ns
        ));
    }
    Ok(())
}

pub(crate) fn check_machine_ttys(ttys: &[MachineTty], tree: &[TreeTask]) -> Result<(), String> {
    let task = |pid: i32| tree.iter().find(|t| t.pid == pid);
    for (i, t) in ttys.iter().enumerate() {
        if !t.path.starts_with('/') || t.path.contains('\0') {
            return Err(format!("machine terminal {i} has the path {:?}", t.path));
        }
        if task(t.session).is_none_or(|s| s.sid != s.pid) {
            return Err(format!(
                "machine terminal {} controls session {}, which no task of the tree leads",
                t.path, t.session
            ));
        }
        if let Some(pgid) = t.foreground {
            if task(pgid).is_none_or(|g| g.pgid != g.pid || g.sid != t.session) {
                return Err(format!(
                    "machine terminal {}'s foreground group {pgid} is not a group of its \
                     session led by a task of the tree",
                    t.path
                ));
            }
        }
        if ttys[..i]
            .iter()
            .any(|o| o.rdev == t.rdev || o.session == t.session)
        {
            return Err(format!(
                "machine terminal {} or its session {} is listed twice",
                t.path, t.session
            ));
        }
    }
    Ok(())
}

/// The terminal record of a shell job: present when some fd is on the shell's terminal, its
/// session either led by a task of the tree or outside it, its foreground group led by a task
/// of the tree.
pub(crate) fn check_shell_job(
    job: Option<&ShellJob>,
    tree: &[TreeTask],
    processes: &[ProcessImage],
) -> Result<(), String> {
    let task = |pid: i32| tree.iter().find(|t| t.pid == pid);
    let Some(job) = job else {
        for p in processes {
            if p.files
                .iter()
                .any(|f| matches!(f.kind, FileKind::ShellTerminal { .. }))
            {
                return Err(format!(
                    "process {} has an fd on the shell's terminal, but the image records no \
                     shell job",
                    p.pid
                ));
            }
        }
        return Ok(());
    };
    if let Some(sid) = job.ctty_session {
        if sid <= 0 {
            return Err(format!("the terminal's session {sid} is not a pid"));
        }
        if task(sid).is_some_and(|t| t.sid != t.pid) {
            return Err(format!(
                "the terminal's session is {sid}, but task {sid} does not lead a session"
            ));
        }
    }
    if let Some(pgid) = job.foreground {
        match task(pgid) {
            Some(t) if t.pgid == t.pid => {}
            _ => {
                return Err(format!(
                    "the terminal's foreground group {pgid} is not led by a task of the tree"
                ))
            }
        }
    }
    Ok(())
}

/// The tree of an image: the root first, every pid once, parents listed before their children,
/// a process record for each live task and for nothing else, zombies without children, and the
/// things several processes share described alike in each (a shared memory object has one
/// size; a description id names one file).
pub(crate) fn check_tree(
    root_pid: i32,
    tree: &[TreeTask],
    processes: &[ProcessImage],
) -> Result<(), String> {
    use std::collections::{HashMap, HashSet};
    match tree.first() {
        Some(t) if t.pid == root_pid => {}
        Some(t) => {
            return Err(format!(
                "the tree starts with pid {}, not the root pid {root_pid}",
                t.pid
            ))
        }
        None => return Err("the tree lists no task".into()),
    }
    let mut seen: HashMap<i32, &TreeTask> = HashMap::new();
    for (i, t) in tree.iter().enumerate() {
        // A group or session 0 is one whose leader is outside the dumping pid namespace.
        if t.pid <= 0 || t.pgid < 0 || t.sid < 0 {
            return Err(format!(
                "task {} has a non-positive pid, or a negative group {} or session {}",
                t.pid, t.pgid, t.sid
            ));
        }
        if !(1..=64).contains(&t.exit_signal) && t.exit_signal != 0 {
            return Err(format!(
                "task {} has exit signal {}, not a signal number",
                t.pid, t.exit_signal
            ));
        }
        if i > 0 {
            match seen.get(&t.ppid) {
                Some(parent) if matches!(parent.state, TreeTaskState::Alive) => {}
                Some(_) => {
                    return Err(format!(
                        "task {} has the zombie {} as its parent",
                        t.pid, t.ppid
                    ))
                }
                None => {
                    return Err(format!(
                        "task {}'s parent {} is not listed before it",
                        t.pid, t.ppid
                    ))
                }
            }
        }
        if let TreeTaskState::Zombie { comm, .. } = &t.state {
            if comm.len() > THREAD_NAME_MAX || comm.contains('\0') {
                return Err(format!("zombie {} has an invalid name {comm:?}", t.pid));
            }
            if i == 0 {
                return Err(format!("the root {} is a zombie", t.pid));
            }
        }
        if seen.insert(t.pid, t).is_some() {
            return Err(format!("pid {} appears twice in the tree", t.pid));
        }
    }
    let alive: HashSet<i32> = tree
        .iter()
        .filter(|t| t.state == TreeTaskState::Alive)
        .map(|t| t.pid)
        .collect();
    let recorded: HashSet<i32> = processes.iter().map(|p| p.pid).collect();
    if let Some(pid) = alive.difference(&recorded).next() {
        return Err(format!("live task {pid} has no process record"));
    }
    if let Some(pid) = recorded.difference(&alive).next() {
        return Err(format!(
            "process record {pid} is not a live task of the tree"
        ));
    }
    // Thread ids are pids too: none may be taken twice in the whole tree.
    let mut tids: HashSet<i32> = tree.iter().map(|t| t.pid).collect();
    for p in processes {
        for t in p.threads.iter().skip(1) {
            if !tids.insert(t.tid) {
                return Err(format!(
                    "thread {} of process {} reuses a pid of the tree",
                    t.tid, p.pid
                ));
            }
        }
    }
    check_sysv_shm_tree(processes)?;
    check_sysv_ipc(processes)?;
    let mut objects: HashMap<u64, u64> = HashMap::new();
    let mut descriptions: HashMap<u32, (u64, u64)> = HashMap::new();
    let mut memfds: HashMap<u64, &FileIdentity> = HashMap::new();
    for p in processes {
        for v in &p.vmas {
            if let VmaBacking::SharedAnonymous { object, size, .. } = v.backing {
                if *objects.entry(object).or_insert(size) != size {
                    return Err(format!(
                        "process {} maps shared memory object {object} with another size",
                        p.pid
                    ));
                }
            }
        }
        for f in &p.files {
            if let FileKind::Memfd { .. } = &f.kind {
                let first = memfds.entry(f.ino).or_insert(f);
                if (&first.kind, first.size, first.mode) != (&f.kind, f.size, f.mode) {
                    return Err(format!(
                        "process {} has memfd {} with another name, size, mode or seals than \
                         another process",
                        p.pid, f.ino
                    ));
                }
            }
        }
        for d in &p.open_files {
            let f = p
                .files
                .get(d.file as usize)
                .ok_or_else(|| format!("process {}: description {} has no file", p.pid, d.id))?;
            if *descriptions.entry(d.id).or_insert((f.dev, f.ino)) != (f.dev, f.ino) {
                return Err(format!(
                    "process {}: description {} names another file than in other processes",
                    p.pid, d.id
                ));
            }
        }
    }
    ghost::check_tree(processes)?;
    fdtable::check_tree(tree, processes)?;
    check_carried(processes, &descriptions)?;
    let tasks: HashSet<i32> = tree.iter().map(|t| t.pid).collect();
    check_references(processes, &descriptions, &tasks)
}

/// Most files one UNIX message carries (SCM_MAX_FD).
const CARRIED_MAX: usize = 253;

/// Every file a queued UNIX message carries (SCM_RIGHTS) is a description of the tree, at
/// most [`CARRIED_MAX`] per message.
fn check_carried(
    processes: &[ProcessImage],
    descriptions: &std::collections::HashMap<u32, (u64, u64)>,
) -> Result<(), String> {
    for p in processes {
        for f in &p.files {
            let FileKind::UnixSocket(s) = &f.kind else {
                continue;
            };
            for (i, m) in s.queue.iter().enumerate() {
                if m.fds.len() > CARRIED_MAX {
                    return Err(format!(
                        "process {}: message {} of UNIX socket inode {} carries {} files (at \
                         most {CARRIED_MAX})",
                        p.pid,
                        i + 1,
                        f.ino,
                        m.fds.len()
                    ));
                }
                if let Some(id) = m.fds.iter().find(|id| !descriptions.contains_key(id)) {
                    return Err(format!(
                        "process {}: message {} of UNIX socket inode {} carries description \
                         {id}, which no process of the tree has",
                        p.pid,
                        i + 1,
                        f.ino
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Longest memfd name memfd_create(2) accepts (MFD_NAME_MAX_LEN).
pub const MEMFD_NAME_MAX: usize = 249;

fn check_memfd(i: usize, f: &FileIdentity, name: &str, seals: u32) -> Result<(), String> {
    if name.len() > MEMFD_NAME_MAX || name.contains('\0') {
        return Err(format!(
            "file {i} is a memfd whose name is longer than {MEMFD_NAME_MAX} bytes or holds a NUL"
        ));
    }
    if f.path != format!("/memfd:{name}") {
        return Err(format!(
            "file {i} is a memfd named {name:?} whose path is {:?}",
            f.path
        ));
    }
    if seals & !MEMFD_SEALS != 0 {
        return Err(format!("file {i} is a memfd with unknown seals {seals:#x}"));
    }
    if f.size > SHMEM_SIZE_MAX {
        return Err(format!(
            "file {i} is a memfd of {} bytes (at most {SHMEM_SIZE_MAX:#x})",
            f.size
        ));
    }
    Ok(())
}

/// Each SysV segment of the process has a positive id, a size, permission bits only, and
/// page runs that are sorted, do not overlap and lie inside the segment and the page file.
fn check_sysv_shm(p: &ProcessImage, page_file_size: u64, page_size: u64) -> Result<(), String> {
    for seg in &p.sysv_shm {
        let what = format!("SysV segment {} of process {}", seg.id, p.pid);
        if seg.id < 0 || seg.size == 0 || seg.mode & !0o777 != 0 {
            return Err(format!(
                "{what} has a negative id, no size or mode bits beyond the permissions"
            ));
        }
        let size = seg
            .size
            .checked_next_multiple_of(page_size)
            .ok_or_else(|| format!("{what} is impossibly large"))?;
        let mut prev_end = 0u64;
        for r in &seg.runs {
            let len = r.npages.checked_mul(page_size);
            let end = len.and_then(|l| r.offset.checked_add(l));
            let file_end = len.and_then(|l| r.file_offset.checked_add(l));
            let bad = r.npages == 0
                || r.offset % page_size != 0
                || r.file_offset % page_size != 0
                || r.offset < prev_end
                || end.is_none_or(|e| e > size)
                || file_end.is_none_or(|e| e > page_file_size);
            if bad {
                return Err(format!(
                    "{what}: run of {} pages at offset {:#x} (page file offset {:#x}) is empty, \
                     unaligned, out of order or outside the segment or the page file",
                    r.npages, r.offset, r.file_offset
                ));
            }
            prev_end = end.unwrap_or(size);
        }
    }
    Ok(())
}

/// Each SysV segment is stored by one process only, and every VMA attaching one names a stored
/// segment and covers all of it.
fn check_sysv_shm_tree(processes: &[ProcessImage]) -> Result<(), String> {
    let mut sizes: std::collections::HashMap<i32, u64> = std::collections::HashMap::new();
    for p in processes {
        for seg in &p.sysv_shm {
            if sizes.insert(seg.id, seg.size).is_some() {
                return Err(format!("SysV segment {} is stored twice", seg.id));
            }
        }
    }
    for p in processes {
        for v in &p.vmas {
            if let VmaBacking::SysvShm { id } = v.backing {
                let size = sizes.get(&id).ok_or_else(|| {
                    format!(
                        "process {} attaches SysV segment {id}, which the image does not hold",
                        p.pid
                    )
                })?;
                // The VMA is the size rounded up to a page (64 KiB at most).
                let len = v.end - v.start;
                if len < *size || len - size >= 1 << 16 || !v.shared {
                    return Err(format!(
                        "process {} attaches SysV segment {id} at {:#x}-{:#x}, which is not \
                         the segment's whole size or not shared",
                        p.pid, v.start, v.end
                    ));
                }
            }
        }
    }
    Ok(())
}

/// SysV message queues and semaphore sets: held by the root's image only, each id once, with
/// permission bits only, positive message types, and one pid per semaphore value.
fn check_sysv_ipc(processes: &[ProcessImage]) -> Result<(), String> {
    use std::collections::HashSet;
    for p in processes.iter().skip(1) {
        if p.sysv_ipc != SysvIpc::default() {
            return Err(format!(
                "process {} holds SysV queues or semaphore sets; only the root's image does",
                p.pid
            ));
        }
    }
    let Some(root) = processes.first() else {
        return Ok(());
    };
    let perm_ok =
        |what: String, perm: &SysvIpcPerm, ids: &mut HashSet<i32>| -> Result<(), String> {
            if perm.id < 0 || perm.mode & !0o777 != 0 || !ids.insert(perm.id) {
                return Err(format!(
                "{what} has a negative id, mode bits beyond the permissions, or is stored twice"
            ));
            }
            Ok(())
        };
    let mut ids = HashSet::new();
    for q in &root.sysv_ipc.queues {
        let what = format!("SysV message queue {}", q.perm.id);
        perm_ok(what.clone(), &q.perm, &mut ids)?;
        if let Some(m) = q.messages.iter().find(|m| m.mtype <= 0) {
            return Err(format!(
                "{what} holds a message of type {} (not positive)",
                m.mtype
            ));
        }
    }
    let mut ids = HashSet::new();
    for set in &root.sysv_ipc.sems {
        let what = format!("SysV semaphore set {}", set.perm.id);
        perm_ok(what.clone(), &set.perm, &mut ids)?;
        if set.values.is_empty() || set.values.len() != set.pids.len() {
            return Err(format!(
                "{what} has no semaphores, or not one pid per semaphore value"
            ));
        }
    }
    Ok(())
}

/// Each memfd run names a memfd of the process, lies inside it (its size rounded up to pages)
/// and inside the page file; runs are sorted by memfd and offset and do not overlap.
fn check_memfd_runs(p: &ProcessImage, page_file_size: u64, page_size: u64) -> Result<(), String> {
    let mut prev = None;
    for (i, r) in p.memfd_runs.iter().enumerate() {
        let what = format!(
            "memfd run {i} ({} pages at offset {:#x} of memfd {})",
            r.npages, r.offset, r.ino
        );
        let f = p
            .files
            .iter()
            .find(|f| f.ino == r.ino && matches!(f.kind, FileKind::Memfd { .. }))
            .ok_or_else(|| format!("{what} names no memfd of the process"))?;
        let run = ContentRun {
            key: r.ino,
            offset: r.offset,
            npages: r.npages,
            file_offset: r.file_offset,
            size: f.size,
            whose: "memfd",
        };
        check_content_run(&what, &run, &mut prev, p, page_file_size, page_size)?;
    }
    Ok(())
}

/// A run of a file's content stored in the page file (a memfd's, a ghost file's).
pub(super) struct ContentRun {
    /// The file it belongs to: runs are sorted by it, then by offset.
    pub key: u64,
    /// Byte offset in the file.
    pub offset: u64,
    pub npages: u64,
    /// Byte offset in the page file.
    pub file_offset: u64,
    /// The file's size in bytes.
    pub size: u64,
    /// The file in words, for messages ("memfd": "runs past the memfd's N bytes").
    pub whose: &'static str,
}

/// Run `r` (`what`) is not empty, page-aligned, lies inside its file (the size rounded up to
/// pages) and inside the page file of `p`, and after the run before it (`prev`: its key and
/// end, updated to this run's).
pub(super) fn check_content_run(
    what: &str,
    r: &ContentRun,
    prev: &mut Option<(u64, u64)>,
    p: &ProcessImage,
    page_file_size: u64,
    page_size: u64,
) -> Result<(), String> {
    if r.npages == 0 {
        return Err(format!("{what} is empty"));
    }
    if !r.offset.is_multiple_of(page_size) || !r.file_offset.is_multiple_of(page_size) {
        return Err(format!(
            "{what} or its page file offset {:#x} is not page-aligned",
            r.file_offset
        ));
    }
    let len = r
        .npages
        .checked_mul(page_size)
        .ok_or_else(|| format!("{what} is impossibly long"))?;
    let size = r.size.div_ceil(page_size) * page_size;
    let end = r
        .offset
        .checked_add(len)
        .filter(|&e| e <= size)
        .ok_or_else(|| format!("{what} runs past the {}'s {} bytes", r.whose, r.size))?;
    if let Some((key, prev_end)) = *prev {
        if r.key < key || (r.key == key && r.offset < prev_end) {
            return Err(format!("{what} overlaps or precedes the run before it"));
        }
    }
    *prev = Some((r.key, end));
    check_in_page_file(what, r.file_offset, len, page_file_size, &p.pages_file)
}

/// `len` bytes at `file_offset` lie inside the page file `name` of `page_file_size` bytes.
fn check_in_page_file(
    what: &str,
    file_offset: u64,
    len: u64,
    page_file_size: u64,
    name: &str,
) -> Result<(), String> {
    match file_offset.checked_add(len) {
        Some(file_end) if file_end <= page_file_size => Ok(()),
        _ => Err(format!(
            "{what} at page file offset {file_offset:#x} runs past the end of the \
             {page_file_size}-byte page file {name:?}"
        )),
    }
}

fn check_page_runs(p: &ProcessImage, page_file_size: u64, page_size: u64) -> Result<(), String> {
    let mut prev_end = 0u64;
    for (i, r) in p.page_runs.iter().enumerate() {
        let what = || format!("page run {i} ({} pages at {:#x})", r.npages, r.vaddr);
        if r.npages == 0 {
            return Err(format!("{} is empty", what()));
        }
        if r.vaddr % page_size != 0 {
            return Err(format!("{} is not page-aligned", what()));
        }
        if r.file_offset % page_size != 0 {
            return Err(format!(
                "{} has page file offset {:#x}, not page-aligned",
                what(),
                r.file_offset
            ));
        }
        let len = r
            .npages
            .checked_mul(page_size)
            .ok_or_else(|| format!("{} is impossibly long", what()))?;
        let end = r
            .vaddr
            .checked_add(len)
            .filter(|&e| e <= USER_ADDRESS_LIMIT)
            .ok_or_else(|| format!("{} runs past the user address space", what()))?;
        if i > 0 && r.vaddr < prev_end {
            return Err(format!(
                "{} overlaps or precedes the run before it (which ends at {prev_end:#x})",
                what()
            ));
        }
        prev_end = end;
        check_in_page_file(&what(), r.file_offset, len, page_file_size, &p.pages_file)?;
        // The VMA with the greatest start <= vaddr is the only one that can hold the run.
        let idx = p.vmas.partition_point(|v| v.start <= r.vaddr);
        let vma = idx
            .checked_sub(1)
            .and_then(|k| p.vmas.get(k))
            .filter(|v| end <= v.end)
            .ok_or_else(|| format!("{} does not lie inside one VMA", what()))?;
        match vma.backing {
            VmaBacking::Anonymous | VmaBacking::File { .. } => {}
            VmaBacking::SharedAnonymous { size, offset, .. } => {
                if offset.checked_add(end - vma.start).is_none_or(|e| e > size) {
                    return Err(format!(
                        "{} reaches past the end of its shared memory object of {size:#x} \
                         bytes",
                        what()
                    ));
                }
            }
            VmaBacking::SysvShm { id } => {
                return Err(format!(
                    "{} lies in SysV segment {id}, whose pages are stored with the segment",
                    what()
                ))
            }
            VmaBacking::AioRing(_) => {
                return Err(format!(
                    "{} lies in the AIO ring {:#x}-{:#x}, whose events are stored with it",
                    what(),
                    vma.start,
                    vma.end
                ))
            }
            VmaBacking::Vdso | VmaBacking::Vvar => {
                return Err(format!(
                    "{} lies in the {} area {:#x}-{:#x}, whose pages are never stored",
                    what(),
                    if vma.backing == VmaBacking::Vdso {
                        "vdso"
                    } else {
                        "vvar"
                    },
                    vma.start,
                    vma.end
                ))
            }
        }
    }
    Ok(())
}

fn check_fds(p: &ProcessImage) -> Result<(), String> {
    let mut fds: Vec<i32> = Vec::with_capacity(p.fds.len());
    for fd in &p.fds {
        if fd.fd < 0 {
            return Err(format!("fd {} is negative", fd.fd));
        }
        if fd.description as usize >= p.open_files.len() {
            return Err(format!(
                "fd {} refers to open file description {}, but the process lists {}",
                fd.fd,
                fd.description,
                p.open_files.len()
            ));
        }
        fds.push(fd.fd);
    }
    fds.sort_unstable();
    if let Some(w) = fds.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("fd {} appears twice", w[0]));
    }
    Ok(())
}

/// Kinds of file a restore reopens by path, the only ones a lock is restored on.
fn lockable(kind: &FileKind) -> bool {
    matches!(
        kind,
        FileKind::Regular
            | FileKind::Directory
            | FileKind::CharDevice { .. }
            | FileKind::ContentInImage
            | FileKind::Ghost(_)
    )
}

/// A range fcntl can express: start and end within an off_t.
fn check_lock_range(what: &str, r: &LockRange) -> Result<(), String> {
    let end = r.start.checked_add(r.len);
    if r.start > i64::MAX as u64 || end.is_none_or(|e| e > i64::MAX as u64) {
        return Err(format!(
            "{what}: range of {} bytes from {} does not fit in a file offset",
            r.len, r.start
        ));
    }
    Ok(())
}

/// Each code file once, in range, regular, with a digest of a sane shape.
fn check_code_ids(p: &ProcessImage) -> Result<(), String> {
    let mut last = None;
    for c in &p.code_ids {
        let f = p
            .files
            .get(c.file as usize)
            .ok_or_else(|| format!("code id of file {} out of range", c.file))?;
        if last.is_some_and(|l| l >= c.file) {
            return Err(format!(
                "code ids are not sorted by file at file {}",
                c.file
            ));
        }
        last = Some(c.file);
        if f.kind != FileKind::Regular {
            return Err(format!(
                "code id of {:?}, which is not a regular file",
                f.path
            ));
        }
        match &c.digest {
            CodeDigest::BuildId(id) if id.is_empty() || id.len() > BUILD_ID_MAX => {
                return Err(format!(
                    "build-id of {:?} is {} bytes (1 to {BUILD_ID_MAX})",
                    f.path,
                    id.len()
                ))
            }
            CodeDigest::Blake3 { ranges, .. }
                if ranges.is_empty()
                    || ranges.len() > 4096
                    || ranges
                        .iter()
                        .any(|&(o, l)| l == 0 || o.checked_add(l).is_none_or(|e| e > f.size)) =>
            {
                return Err(format!(
                    "content hash of {:?} covers ranges outside its {} bytes",
                    f.path, f.size
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_locks(p: &ProcessImage) -> Result<(), String> {
    for (i, d) in p.open_files.iter().enumerate() {
        if d.locks.is_empty() {
            continue;
        }
        // check_files has checked the index.
        let f = &p.files[d.file as usize];
        if !lockable(&f.kind) {
            return Err(format!(
                "open file description {i} holds locks but is not a file reopened by path"
            ));
        }
        let flocks = d
            .locks
            .iter()
            .filter(|l| matches!(l, DescriptionLock::Flock(_)))
            .count();
        if flocks > 1 {
            return Err(format!(
                "open file description {i} holds {flocks} flock locks"
            ));
        }
        let leases = d
            .locks
            .iter()
            .filter(|l| matches!(l, DescriptionLock::Lease(_)))
            .count();
        if leases > 1 {
            return Err(format!("open file description {i} holds {leases} leases"));
        }
        for l in &d.locks {
            if let DescriptionLock::Lease(lease) = l {
                if !(0..=64).contains(&lease.signal) {
                    return Err(format!(
                        "open file description {i} has a lease signalling with signal {}",
                        lease.signal
                    ));
                }
                if lease.breaking == Some(LeaseBreak::ToRead) && lease.ty != LockType::Write {
                    return Err(format!(
                        "open file description {i} has a read lease being broken to a read lease"
                    ));
                }
            }
        }
        for l in &d.locks {
            if let DescriptionLock::Ofd { range, .. } = l {
                check_lock_range(&format!("OFD lock of open file description {i}"), range)?;
            }
        }
    }
    for l in &p.posix_locks {
        let what = format!("POSIX lock on fd {}", l.fd);
        let Some(fd) = p.fds.iter().find(|f| f.fd == l.fd) else {
            return Err(format!("{what}: the process has no such fd"));
        };
        // check_fds and check_files have checked the indexes.
        let f = &p.files[p.open_files[fd.description as usize].file as usize];
        if !lockable(&f.kind) {
            return Err(format!("{what}: not a file reopened by path"));
        }
        check_lock_range(&what, &l.range)?;
    }
    for l in &p.mapping_locks {
        let mapped = p
            .vmas
            .iter()
            .any(|v| matches!(v.backing, VmaBacking::File { file, .. } if file == l.file));
        if !mapped || !matches!(l.lock, DescriptionLock::Flock(_)) {
            return Err(format!(
                "lock of a mapping of file {}: no VMA maps that file, or it is not a flock",
                l.file
            ));
        }
    }
    Ok(())
}

fn check_rlimits(rlimits: &[Rlimit]) -> Result<(), String> {
    let mut seen = 0u32;
    for r in rlimits {
        if r.resource >= RLIMIT_COUNT {
            return Err(format!(
                "rlimit resource {} (at most {})",
                r.resource,
                RLIMIT_COUNT - 1
            ));
        }
        if seen & (1 << r.resource) != 0 {
            return Err(format!("rlimit resource {} appears twice", r.resource));
        }
        seen |= 1 << r.resource;
        if r.soft > r.hard {
            return Err(format!(
                "rlimit resource {}: soft limit {} above hard limit {}",
                r.resource, r.soft, r.hard
            ));
        }
    }
    Ok(())
}

/// Process-wide state collected by the parasite.
pub(crate) fn check_task(t: &TaskState) -> Result<(), String> {
    // SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU: the signals that put a process into a group stop.
    if !matches!(t.group_stop, 0 | 19..=22) {
        return Err(format!(
            "group stop signal {} is not a stop signal",
            t.group_stop
        ));
    }
    if !(t.sigactions.is_empty() || t.sigactions.len() == SIGACTION_COUNT) {
        return Err(format!(
            "{} signal dispositions (0 or {SIGACTION_COUNT})",
            t.sigactions.len()
        ));
    }
    if !(t.itimers.is_empty() || t.itimers.len() == ITIMER_COUNT) {
        return Err(format!(
            "{} interval timers (0 or {ITIMER_COUNT})",
            t.itimers.len()
        ));
    }
    if t.posix_timers.len() > POSIX_TIMERS_MAX {
        return Err(format!(
            "{} POSIX timers (at most {POSIX_TIMERS_MAX})",
            t.posix_timers.len()
        ));
    }
    let mut ids: Vec<i32> = t.posix_timers.iter().map(|pt| pt.id).collect();
    if let Some(&id) = ids.iter().find(|&&id| id < 0) {
        return Err(format!("POSIX timer id {id} is negative"));
    }
    ids.sort_unstable();
    if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("POSIX timer id {} appears twice", w[0]));
    }
    check_settings(&t.settings)?;
    check_pending("process-wide", &t.shared_pending)
}

/// Process settings within the kernel's bounds, so a restore never asks for a value the
/// kernel could not have reported.
fn check_settings(s: &ProcessSettings) -> Result<(), String> {
    if !(-1000..=1000).contains(&s.oom_score_adj) {
        return Err(format!(
            "oom_score_adj {} (must be -1000 to 1000)",
            s.oom_score_adj
        ));
    }
    if s.membarrier & !MEMBARRIER_REGISTRATIONS != 0 {
        return Err(format!(
            "membarrier registrations {:#x} name unknown commands",
            s.membarrier
        ));
    }
    if s.thp_disable > 3 {
        return Err(format!("PR_GET_THP_DISABLE value {:#x}", s.thp_disable));
    }
    if s.tsc > 2 || s.mce_kill > 2 {
        return Err(format!(
            "PR_GET_TSC {} or PR_MCE_KILL_GET {} out of range",
            s.tsc, s.mce_kill
        ));
    }
    Ok(())
}

/// Most words of a CPU affinity mask (8192 CPUs, the kernel's largest NR_CPUS).
pub const AFFINITY_WORDS_MAX: usize = 128;

fn check_sched(tid: i32, s: &ThreadSched) -> Result<(), String> {
    if !matches!(s.policy, 0..=3 | 5..=7) {
        return Err(format!(
            "thread {tid}: unknown scheduling policy {}",
            s.policy
        ));
    }
    if !(-20..=19).contains(&s.nice) || s.priority > 99 {
        return Err(format!(
            "thread {tid}: nice {} or priority {} out of range",
            s.nice, s.priority
        ));
    }
    if s.util_min > 1024 || s.util_max > 1024 {
        return Err(format!(
            "thread {tid}: utilization clamps {}..{} beyond 1024",
            s.util_min, s.util_max
        ));
    }
    if s.affinity.len() > AFFINITY_WORDS_MAX {
        return Err(format!(
            "thread {tid}: CPU affinity mask of {} words (at most {AFFINITY_WORDS_MAX})",
            s.affinity.len()
        ));
    }
    Ok(())
}

/// A queue of pending signals: bounded, each a whole siginfo of a real signal number.
fn check_pending(whose: &str, queue: &[Vec<u8>]) -> Result<(), String> {
    if queue.len() > PENDING_MAX {
        return Err(format!(
            "{} {whose} pending signals (at most {PENDING_MAX})",
            queue.len()
        ));
    }
    for (i, info) in queue.iter().enumerate() {
        if info.len() != SIGINFO_SIZE {
            return Err(format!(
                "{whose} pending signal {i}: siginfo of {} bytes (must be {SIGINFO_SIZE})",
                info.len()
            ));
        }
        let signo = i32::from_ne_bytes(info[..4].try_into().expect("4 bytes"));
        if !(1..=SIGACTION_COUNT as i32).contains(&signo) {
            return Err(format!(
                "{whose} pending signal {i}: signal number {signo} (must be 1 to {SIGACTION_COUNT})"
            ));
        }
    }
    Ok(())
}

/// Per-thread state collected by the parasite and PTRACE_PEEKSIGINFO.
pub(crate) fn check_thread_state(tid: i32, s: &ThreadState) -> Result<(), String> {
    check_pending(&format!("thread {tid}"), &s.pending)?;
    // The kernel's comm holds 15 bytes and a NUL (TASK_COMM_LEN).
    if s.name.len() > THREAD_NAME_MAX || s.name.contains('\0') {
        return Err(format!(
            "thread {tid}: name {:?} is not a thread name (at most {THREAD_NAME_MAX} bytes, no NUL)",
            s.name
        ));
    }
    if let Some(alt) = &s.altstack {
        if !(ALTSTACK_MIN..=ALTSTACK_MAX).contains(&alt.size) {
            return Err(format!(
                "thread {tid}: alternate signal stack of {} bytes (must be {ALTSTACK_MIN} to \
                 {ALTSTACK_MAX})",
                alt.size
            ));
        }
        let end = alt
            .sp
            .checked_add(alt.size)
            .ok_or_else(|| format!("thread {tid}: alternate signal stack wraps around"))?;
        check_address(
            &format!("thread {tid}: alternate signal stack end"),
            end - 1,
        )?;
    }
    check_address(&format!("thread {tid}: clear_child_tid"), s.clear_child_tid)?;
    check_address(&format!("thread {tid}: robust list"), s.robust_list)?;
    if let Some(sched) = &s.sched {
        check_sched(tid, sched)?;
    }
    Ok(())
}

#[cfg(test)]
mod task_tests {
    use super::*;

    fn siginfo(signo: i32) -> Vec<u8> {
        let mut v = vec![0u8; SIGINFO_SIZE];
        v[..4].copy_from_slice(&signo.to_ne_bytes());
        v
    }

    fn full_task() -> TaskState {
        TaskState {
            sigactions: vec![SigAction::default(); SIGACTION_COUNT],
            itimers: vec![ITimer::default(); ITIMER_COUNT],
            posix_timers: vec![
                PosixTimer {
                    id: 0,
                    ..Default::default()
                },
                PosixTimer {
                    id: 3,
                    ..Default::default()
                },
            ],
            shared_pending: vec![siginfo(10), siginfo(34)],
            ..Default::default()
        }
    }

    #[test]
    fn anonymous_vma_names_are_bounded_and_match_their_backing() {
        let vma = |backing: VmaBacking, name: &str| Vma {
            start: 0x10000,
            end: 0x20000,
            prot: PROT_READ,
            shared: matches!(backing, VmaBacking::SharedAnonymous { .. }),
            backing,
            flags: VmaFlags::default(),
            name: name.into(),
            guard_ranges: Vec::new(),
        };
        let shm = VmaBacking::SharedAnonymous {
            object: 7,
            size: 0x10000,
            offset: 0,
        };
        let private = vma(VmaBacking::Anonymous, "[anon:JVM heap 1]");
        assert_eq!(private.anon_name(), Some("JVM heap 1"));
        check_anon_name(&private).unwrap();
        let shared = vma(shm.clone(), "[anon_shmem:ring]");
        assert_eq!(shared.anon_name(), Some("ring"));
        check_anon_name(&shared).unwrap();
        let longest = format!("[anon:{}]", "n".repeat(79));
        check_anon_name(&vma(VmaBacking::Anonymous, &longest)).unwrap();
        assert_eq!(vma(VmaBacking::Anonymous, "[heap]").anon_name(), None);
        check_anon_name(&vma(VmaBacking::Anonymous, "[heap]")).unwrap();

        let too_long = format!("[anon:{}]", "n".repeat(80));
        let err = check_anon_name(&vma(VmaBacking::Anonymous, &too_long)).unwrap_err();
        assert!(err.contains("80 bytes"), "{err}");
        for bad in ["[anon:a$b]", "[anon:a[b]", "[anon:tab\there]", "[anon:x`y]"] {
            assert!(
                check_anon_name(&vma(VmaBacking::Anonymous, bad)).is_err(),
                "{bad} accepted"
            );
        }
        // A name the other kind of memory shows is no name the kernel would have given it.
        assert!(check_anon_name(&vma(shm, "[anon:x]")).is_err());
        assert!(check_anon_name(&vma(VmaBacking::Anonymous, "[anon_shmem:x]")).is_err());
    }

    #[test]
    fn a_shared_mapping_may_reach_past_its_object_but_its_pages_may_not() {
        let page = 0x1000;
        let vma = Vma {
            start: 0x10000,
            end: 0x15000,
            prot: PROT_READ | PROT_WRITE,
            shared: true,
            backing: VmaBacking::SharedAnonymous {
                object: 7,
                size: 0x3000,
                offset: 0x1000,
            },
            flags: VmaFlags::default(),
            name: String::new(),
            guard_ranges: Vec::new(),
        };
        let run = |vaddr: u64| PageRun {
            vaddr,
            npages: 1,
            file_offset: 0,
        };
        let p = |runs: Vec<PageRun>| ProcessImage {
            vmas: vec![vma.clone()],
            page_runs: runs,
            ..crate::tests::sample_process()
        };
        check_vmas(&p(vec![]), page).unwrap();
        check_page_runs(&p(vec![run(0x11000)]), 0x10000, page).unwrap();
        let err = check_page_runs(&p(vec![run(0x12000)]), 0x10000, page).unwrap_err();
        assert!(
            err.contains("past the end of its shared memory object"),
            "{err}"
        );
    }

    #[test]
    fn epoll_targets_and_pidfds_must_name_what_the_tree_has() {
        use std::collections::{HashMap, HashSet};
        let anon = |kind: FileKind| FileIdentity {
            path: "anon_inode:[eventpoll]".into(),
            kind,
            dev: 0,
            ino: 0,
            size: 0,
            mtime_sec: 0,
            mtime_nsec: 0,
            mode: 0,
        };
        let target = |description: u32| EpollTarget {
            fd: 5,
            description,
            events: 0x19,
            data: 7,
        };
        let process = |kind: FileKind| ProcessImage {
            files: vec![anon(kind)],
            open_files: vec![OpenFileDescription {
                id: 3,
                file: 0,
                flags: 2,
                pos: 0,
                locks: vec![],
                owner: None,
            }],
            pid: 10,
            ..crate::tests::sample_process()
        };
        let descriptions: HashMap<u32, (u64, u64)> = [(3, (0, 0)), (4, (0, 0))].into();
        let tasks: HashSet<i32> = [10].into();
        let ok = process(FileKind::Epoll(Epoll {
            targets: vec![target(4)],
        }));
        check_references(&[ok], &descriptions, &tasks).unwrap();
        let missing = process(FileKind::Epoll(Epoll {
            targets: vec![target(9)],
        }));
        let err = check_references(&[missing], &descriptions, &tasks).unwrap_err();
        assert!(err.contains("description 9"), "{err}");
        let itself = process(FileKind::Epoll(Epoll {
            targets: vec![target(3)],
        }));
        let err = check_references(&[itself], &descriptions, &tasks).unwrap_err();
        assert!(err.contains("itself"), "{err}");
        let outside = process(FileKind::Pidfd { pid: 99 });
        let err = check_references(&[outside], &descriptions, &tasks).unwrap_err();
        assert!(err.contains("pid 99"), "{err}");
        let mut bad = Inotify {
            watches: vec![InotifyWatch {
                wd: 2,
                mask: 0x100,
                path: "/tmp".into(),
                dev: 1,
                ino: 2,
            }],
        };
        check_inotify(0, &bad).unwrap();
        bad.watches.push(bad.watches[0].clone());
        assert!(check_inotify(0, &bad).unwrap_err().contains("ascending"));
    }

    /// A live task with parent 1.
    fn alive_task(pid: i32, pgid: i32, sid: i32) -> TreeTask {
        TreeTask {
            pid,
            ppid: 1,
            pgid,
            sid,
            exit_signal: 17,
            state: TreeTaskState::Alive,
        }
    }

    #[test]
    fn a_shell_job_names_a_session_leader_and_a_group_leader_of_the_tree() {
        let task = alive_task;
        // 10 was started by a shell (session 5) as its own group; 11 leads a session.
        let tree = vec![task(10, 10, 5), task(11, 11, 11), task(12, 10, 5)];
        let job = |ctty_session, foreground| ShellJob {
            rdev: 0x8800,
            ctty_session,
            foreground,
        };
        check_shell_job(None, &tree, &[]).unwrap();
        check_shell_job(Some(&job(Some(5), Some(10))), &tree, &[]).unwrap();
        check_shell_job(Some(&job(Some(11), Some(11))), &tree, &[]).unwrap();
        let e = check_shell_job(Some(&job(Some(12), None)), &tree, &[]).unwrap_err();
        assert!(e.contains("does not lead a session"), "{e}");
        let e = check_shell_job(Some(&job(Some(5), Some(12))), &tree, &[]).unwrap_err();
        assert!(e.contains("foreground group 12"), "{e}");
        let e = check_shell_job(Some(&job(Some(5), Some(7))), &tree, &[]).unwrap_err();
        assert!(e.contains("foreground group 7"), "{e}");
    }

    #[test]
    fn a_machine_terminal_controls_a_session_led_in_the_tree_once() {
        let task = alive_task;
        let tree = vec![task(10, 10, 5), task(11, 11, 11), task(12, 12, 11)];
        let tty = |path: &str, session, foreground| MachineTty {
            path: path.into(),
            rdev: 0x417,
            session,
            foreground,
        };
        check_machine_ttys(&[tty("/dev/tty23", 11, Some(12))], &tree).unwrap();
        let e = check_machine_ttys(&[tty("/dev/tty23", 5, None)], &tree).unwrap_err();
        assert!(e.contains("no task of the tree leads"), "{e}");
        let e = check_machine_ttys(&[tty("/dev/tty23", 11, Some(10))], &tree).unwrap_err();
        assert!(e.contains("foreground group 10"), "{e}");
        let e = check_machine_ttys(&[tty("tty23", 11, None)], &tree).unwrap_err();
        assert!(e.contains("path"), "{e}");
        let twice = [tty("/dev/tty23", 11, None), tty("/dev/tty23", 11, None)];
        assert!(check_machine_ttys(&twice, &tree)
            .unwrap_err()
            .contains("twice"));
    }

    #[test]
    fn credentials_the_kernel_could_not_produce_are_refused() {
        let ok = Creds {
            uid: [65534, 65533, 65532, 65533],
            groups: vec![100],
            cap_inheritable: 0x400,
            cap_permitted: 0x2400,
            cap_effective: 0x400,
            cap_bounding: 0x1ff_ffff_ffff,
            cap_ambient: 0x400,
            securebits: 0x10,
            ..Creds::default()
        };
        check_creds(&ok).unwrap();
        let refused = |c: Creds, needle: &str| {
            let e = check_creds(&c).unwrap_err();
            assert!(e.contains(needle), "{e}");
        };
        refused(
            Creds {
                cap_effective: 0x1,
                ..ok.clone()
            },
            "effective capabilities",
        );
        refused(
            Creds {
                cap_ambient: 0x2000,
                ..ok.clone()
            },
            "ambient capabilities",
        );
        refused(
            Creds {
                securebits: 0x100,
                ..ok.clone()
            },
            "unknown securebits",
        );
    }

    #[test]
    fn collected_and_empty_task_state_pass() {
        check_task(&TaskState::default()).unwrap();
        check_task(&full_task()).unwrap();
        let thread = ThreadState {
            name: "worker-1".into(),
            altstack: Some(AltStack {
                sp: 0x7f00_0000_0000,
                flags: 0,
                size: 64 << 10,
            }),
            pending: vec![siginfo(21)],
            clear_child_tid: 0x7f00_0001_0000,
            robust_list: 0x7f00_0001_0040,
            robust_list_len: 24,
            sched: Some(ThreadSched {
                nice: 5,
                affinity: vec![3],
                ..Default::default()
            }),
        };
        check_thread_state(1, &thread).unwrap();
        let bad_nice = ThreadState {
            sched: Some(ThreadSched {
                nice: 40,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(check_thread_state(1, &bad_nice).is_err());
        let mut bad = TaskState::default();
        bad.settings.oom_score_adj = 1001;
        assert!(check_task(&bad).unwrap_err().contains("oom_score_adj"));
        bad.settings.oom_score_adj = 500;
        bad.settings.membarrier = 1 << 3;
        assert!(check_task(&bad).unwrap_err().contains("membarrier"));
        check_thread_state(1, &ThreadState::default()).unwrap();
    }

    #[test]
    fn broken_task_state_is_refused_with_a_reason() {
        let refused = |t: TaskState, needle: &str| {
            let e = check_task(&t).unwrap_err();
            assert!(e.contains(needle), "{e}");
        };
        let mut t = full_task();
        t.sigactions.pop();
        refused(t, "signal dispositions");
        let mut t = full_task();
        t.group_stop = 9;
        refused(t, "not a stop signal");
        let mut t = full_task();
        t.itimers.push(ITimer::default());
        refused(t, "interval timers");
        let mut t = full_task();
        t.posix_timers[1].id = 0;
        refused(t, "appears twice");
        let mut t = full_task();
        t.posix_timers = (0..65)
            .map(|id| PosixTimer {
                id,
                ..Default::default()
            })
            .collect();
        refused(t, "POSIX timers");
        let mut t = full_task();
        t.shared_pending[1].push(0);
        refused(t, "129 bytes");
        let mut t = full_task();
        t.shared_pending[0] = siginfo(65);
        refused(t, "signal number 65");
        let mut t = full_task();
        t.shared_pending = vec![siginfo(10); PENDING_MAX + 1];
        refused(t, "pending signals");

        let alt = |size, sp| ThreadState {
            altstack: Some(AltStack { sp, flags: 0, size }),
            ..Default::default()
        };
        assert!(check_thread_state(1, &alt(1024, 0x1000))
            .unwrap_err()
            .contains("alternate signal stack of 1024 bytes"));
        assert!(check_thread_state(1, &alt(1 << 31, 0x1000)).is_err());
        assert!(check_thread_state(1, &alt(8192, u64::MAX - 100)).is_err());
        assert!(check_thread_state(1, &alt(8192, USER_ADDRESS_LIMIT)).is_err());
        let pending = ThreadState {
            pending: vec![vec![0; 12]],
            ..Default::default()
        };
        assert!(check_thread_state(7, &pending)
            .unwrap_err()
            .contains("thread 7 pending signal 0"));
        let named = |name: &str| ThreadState {
            name: name.into(),
            ..Default::default()
        };
        check_thread_state(1, &named("C2 CompilerThre")).unwrap();
        check_thread_state(1, &named("pool:1")).unwrap();
        assert!(check_thread_state(1, &named("sixteen-bytes-xx"))
            .unwrap_err()
            .contains("name"));
        assert!(check_thread_state(1, &named("a\0b")).is_err());
    }

    fn thread(tid: i32) -> ThreadImage {
        let regs = match Arch::host() {
            Arch::X86_64 => ArchRegs::X86_64 {
                gpr: vec![0; X86_64_GPR_COUNT],
                xstate: vec![0; XSTATE_MIN],
            },
            Arch::Aarch64 => ArchRegs::Aarch64 {
                gpr: vec![0; AARCH64_GPR_COUNT],
                fpsimd: vec![0; FPSIMD_MIN],
                tls: 0,
            },
        };
        ThreadImage {
            tid,
            sigmask: 0,
            regs,
            rseq: None,
            state: ThreadState::default(),
        }
    }

    #[test]
    fn threads_start_with_the_leader_and_each_tid_appears_once() {
        let many: Vec<ThreadImage> = std::iter::once(100).chain(101..1100).map(thread).collect();
        check_thread_list(100, &many).unwrap();
        // Any order after the leader.
        let mut shuffled = many.clone();
        shuffled[1..].reverse();
        check_thread_list(100, &shuffled).unwrap();

        let refused = |threads: Vec<ThreadImage>, needle: &str| {
            let e = check_thread_list(100, &threads).unwrap_err();
            assert!(e.contains(needle), "{e}");
        };
        refused(vec![], "no threads");
        refused(vec![thread(101), thread(100)], "leader");
        refused(
            vec![thread(100), thread(101), thread(101)],
            "tid 101 appears twice",
        );
        refused(
            vec![thread(100), thread(102), thread(100)],
            "tid 100 appears twice",
        );
        refused(vec![thread(100), thread(0)], "not positive");
        let mut bad = vec![thread(100), thread(101)];
        bad[1].state.robust_list = USER_ADDRESS_LIMIT;
        refused(bad, "thread 101: robust list");
        let mut bad = vec![thread(100), thread(101)];
        match &mut bad[1].regs {
            ArchRegs::X86_64 { gpr, .. } | ArchRegs::Aarch64 { gpr, .. } => gpr.pop(),
        };
        refused(bad, "thread 101");
    }
}

#[cfg(test)]
mod socket_tests {
    use super::*;

    fn socket(path: &str, sock_type: u32, name: UnixName, state: UnixSocketState) -> FileIdentity {
        FileIdentity {
            path: path.into(),
            kind: FileKind::UnixSocket(UnixSocket {
                sock_type,
                state,
                name,
                queue: Vec::new(),
                shutdown: 0,
                passcred: false,
                sndbuf: 212992,
                rcvbuf: 212992,
                options: Vec::new(),
                peer_creds: None,
            }),
            dev: 8,
            ino: 77,
            size: 0,
            mtime_sec: 0,
            mtime_nsec: 0,
            mode: 0o140600,
        }
    }

    fn path(bound: &str) -> UnixName {
        UnixName::Path {
            bound: bound.into(),
            uid: 0,
            gid: 0,
            dir: String::new(),
            removed: false,
        }
    }

    fn relative(bound: &str, dir: &str) -> UnixName {
        UnixName::Path {
            bound: bound.into(),
            uid: 0,
            gid: 0,
            dir: dir.into(),
            removed: false,
        }
    }

    fn with_peer_creds(mut f: FileIdentity, pid: i32) -> FileIdentity {
        if let FileKind::UnixSocket(s) = &mut f.kind {
            s.peer_creds = Some(MessageCreds {
                pid,
                uid: 1001,
                gid: 1001,
            });
        }
        f
    }

    fn with_queue(mut f: FileIdentity, from: &[u8], data: &[u8]) -> FileIdentity {
        if let FileKind::UnixSocket(s) = &mut f.kind {
            s.queue.push(UnixMessage {
                from: from.to_vec(),
                data: data.to_vec(),
                fds: vec![],
                creds: None,
            });
        }
        f
    }

    #[test]
    fn carried_files_must_be_descriptions_of_the_tree_and_streams_carry_them_with_bytes() {
        let mut p = crate::tests::sample_process();
        let mut sock = socket(
            "",
            UNIX_SOCK_DGRAM,
            UnixName::Unnamed,
            UnixSocketState::Unconnected,
        );
        if let FileKind::UnixSocket(s) = &mut sock.kind {
            s.queue.push(UnixMessage {
                from: vec![],
                data: vec![],
                fds: vec![3],
                creds: None,
            });
        }
        p.files.push(sock.clone());
        let processes = [p];
        let known: std::collections::HashMap<u32, (u64, u64)> = [(3, (8, 1))].into();
        check_carried(&processes, &known).unwrap();
        let err = check_carried(&processes, &Default::default()).unwrap_err();
        assert!(err.contains("carries description 3"), "{err}");
        if let FileKind::UnixSocket(s) = &mut sock.kind {
            s.queue[0].fds = vec![3; CARRIED_MAX + 1];
        }
        let mut p = crate::tests::sample_process();
        p.files.push(sock.clone());
        let err = check_carried(&[p], &known).unwrap_err();
        assert!(err.contains("carries 254 files"), "{err}");
        // A stream message carrying files has bytes: the files go with them.
        if let FileKind::UnixSocket(s) = &mut sock.kind {
            s.sock_type = UNIX_SOCK_STREAM;
            s.queue[0].fds = vec![3];
        }
        let err = check_file_path(0, &sock).unwrap_err();
        assert!(err.contains("no bytes that carries files"), "{err}");
    }

    #[test]
    fn unix_sockets_need_a_path_exactly_when_bound_to_one() {
        use UnixSocketState::*;
        let listening = || Listening {
            backlog: 5,
            pending: vec![],
        };
        let abs = || UnixName::Abstract {
            name: b"crest".to_vec(),
        };
        let ok = [
            socket("", UNIX_SOCK_STREAM, UnixName::Unnamed, Unconnected),
            with_queue(
                socket("", UNIX_SOCK_STREAM, UnixName::Unnamed, PeerClosed),
                b"",
                b"abc",
            ),
            socket(
                "/tmp/.java_pid42",
                UNIX_SOCK_SEQPACKET,
                path("/tmp/.java_pid42.tmp"),
                listening(),
            ),
            socket("", UNIX_SOCK_STREAM, abs(), listening()),
            socket(
                "/run/app/s.sock",
                UNIX_SOCK_STREAM,
                relative("s.sock", "/run/app"),
                listening(),
            ),
            // Bound by a chrooted process (root /srv/jail) to an absolute name.
            socket(
                "/srv/jail/run/s.sock",
                UNIX_SOCK_STREAM,
                relative("/run/s.sock", "/srv/jail"),
                listening(),
            ),
            with_queue(
                socket("/tmp/d", UNIX_SOCK_DGRAM, path("/tmp/d"), Unconnected),
                b"\0client",
                b"datagram",
            ),
            socket("", UNIX_SOCK_DGRAM, abs(), Connected { peer: 9 }),
            with_peer_creds(
                socket("", UNIX_SOCK_STREAM, UnixName::Unnamed, PeerClosed),
                4 << 20,
            ),
            socket(
                "",
                UNIX_SOCK_STREAM,
                UnixName::Unnamed,
                External {
                    peer_name: b"/dev/log".to_vec(),
                },
            ),
        ];
        for f in &ok {
            check_file_path(0, f).unwrap_or_else(|e| panic!("{f:?}: {e}"));
        }
        let long = format!("/{}", "x".repeat(UNIX_PATH_MAX));
        let bad = [
            (
                "unbound with a path",
                socket("/tmp/s", UNIX_SOCK_STREAM, UnixName::Unnamed, Unconnected),
            ),
            (
                "listening without a name",
                socket("", UNIX_SOCK_STREAM, UnixName::Unnamed, listening()),
            ),
            (
                "peer credentials of pid 0",
                with_peer_creds(socket("", UNIX_SOCK_STREAM, abs(), listening()), 0),
            ),
            (
                "peer credentials of a pid above the kernel's limit",
                with_peer_creds(
                    socket("", UNIX_SOCK_STREAM, abs(), listening()),
                    (4 << 20) + 1,
                ),
            ),
            (
                "bound without a path",
                socket("", UNIX_SOCK_STREAM, path("/tmp/s"), listening()),
            ),
            (
                "relative path",
                socket("tmp/s", UNIX_SOCK_STREAM, path("tmp/s"), listening()),
            ),
            (
                "path too long",
                socket(&long, UNIX_SOCK_STREAM, path(&long), listening()),
            ),
            (
                "relative name from a relative directory",
                socket(
                    "/tmp/s",
                    UNIX_SOCK_STREAM,
                    relative("s", "tmp"),
                    listening(),
                ),
            ),
            (
                "absolute name from a relative root",
                socket(
                    "/tmp/s",
                    UNIX_SOCK_STREAM,
                    relative("/s", "tmp"),
                    listening(),
                ),
            ),
            (
                "relative name whose file has a relative path",
                socket("s", UNIX_SOCK_STREAM, relative("s", "/tmp"), listening()),
            ),
            (
                "unknown type",
                socket("", 3, UnixName::Unnamed, Unconnected),
            ),
            ("an option crest does not set", {
                let mut f = socket("", UNIX_SOCK_STREAM, UnixName::Unnamed, Unconnected);
                if let FileKind::UnixSocket(s) = &mut f.kind {
                    s.options.push(SetSockOpt {
                        level: 1,
                        name: 9999,
                        value: vec![1, 0, 0, 0],
                    });
                }
                f
            }),
            (
                "listening datagram",
                socket("/tmp/s", UNIX_SOCK_DGRAM, path("/tmp/s"), listening()),
            ),
            (
                "named stream message",
                with_queue(
                    socket(
                        "",
                        UNIX_SOCK_STREAM,
                        UnixName::Unnamed,
                        Connected { peer: 3 },
                    ),
                    b"/tmp/x",
                    b"a",
                ),
            ),
            (
                "connected stream with a name",
                socket("", UNIX_SOCK_STREAM, abs(), Connected { peer: 3 }),
            ),
            (
                "too many waiting",
                socket(
                    "",
                    UNIX_SOCK_STREAM,
                    abs(),
                    Listening {
                        backlog: 0,
                        pending: vec![1, 2],
                    },
                ),
            ),
            (
                "external without a name",
                socket(
                    "",
                    UNIX_SOCK_DGRAM,
                    UnixName::Unnamed,
                    External { peer_name: vec![] },
                ),
            ),
        ];
        for (what, f) in &bad {
            assert!(check_file_path(0, f).is_err(), "{what} was accepted");
        }
        let mut shut = socket("", UNIX_SOCK_STREAM, UnixName::Unnamed, Unconnected);
        if let FileKind::UnixSocket(s) = &mut shut.kind {
            s.shutdown = 4;
        }
        assert!(check_file_path(0, &shut).is_err());
    }
}

#[cfg(test)]
mod sysv_ipc_tests {
    use super::*;

    fn perm(id: i32) -> SysvIpcPerm {
        SysvIpcPerm {
            id,
            key: 0x51,
            mode: 0o640,
            uid: 0,
            gid: 0,
            cuid: 0,
            cgid: 0,
        }
    }

    fn ipc() -> SysvIpc {
        SysvIpc {
            queues: vec![SysvMsgQueue {
                perm: perm(3),
                qbytes: 16384,
                last_sender: 10,
                last_receiver: 0,
                messages: vec![SysvMessage {
                    mtype: 2,
                    data: b"x".to_vec(),
                }],
            }],
            sems: vec![SysvSemSet {
                perm: perm(3),
                values: vec![1, 2],
                pids: vec![10, 0],
            }],
        }
    }

    #[test]
    fn queues_and_sets_are_checked() {
        let mut root = crate::tests::sample_process();
        let mut other = root.clone();
        other.pid += 1;
        root.sysv_ipc = ipc();
        check_sysv_ipc(&[root.clone(), other.clone()]).unwrap();
        other.sysv_ipc = ipc();
        let err = check_sysv_ipc(&[root.clone(), other]).unwrap_err();
        assert!(err.contains("only the root's image"), "{err}");
        type Spoil = fn(&mut SysvIpc);
        let bad: [(&str, Spoil); 5] = [
            ("not positive", |i| i.queues[0].messages[0].mtype = 0),
            ("stored twice", |i| i.queues.push(i.queues[0].clone())),
            ("mode bits", |i| i.sems[0].perm.mode = 0o1777),
            ("negative id", |i| i.queues[0].perm.id = -1),
            ("one pid per", |i| {
                i.sems[0].pids.pop().map(drop).unwrap_or(())
            }),
        ];
        for (what, edit) in bad {
            let mut p = root.clone();
            edit(&mut p.sysv_ipc);
            let err = check_sysv_ipc(&[p]).expect_err(what);
            assert!(err.contains(what), "{what}: {err}");
        }
    }
}

/// A working set ([`WorkingSet`]) fits the image's processes: each recorded pid is a process of
/// the image, listed once, in order; its ranges are page-aligned, sorted, not overlapping, and each lies
/// inside one stored page run (which lies inside one VMA), so that a prefetch never touches
/// memory the image does not store.
pub(crate) fn check_working_set(
    ws: &WorkingSet,
    processes: &[ProcessImage],
    page_size: u64,
) -> Result<(), String> {
    let mut prev_pid = None;
    for w in &ws.processes {
        if prev_pid.is_some_and(|p| p >= w.pid) {
            return Err(format!("pid {} is listed out of order or twice", w.pid));
        }
        prev_pid = Some(w.pid);
        let p = processes
            .iter()
            .find(|p| p.pid == w.pid)
            .ok_or_else(|| format!("pid {} is not a process of the image", w.pid))?;
        check_ranges(w.pid, "range", &w.ranges, p, page_size)?;
        check_ranges(w.pid, "written range", &w.written, p, page_size)?;
    }
    Ok(())
}

/// Ranges `(vaddr, npages)` of a working set: sorted, not overlapping, each inside one stored
/// page run of `p`.
fn check_ranges(
    pid: i32,
    kind: &str,
    ranges: &[(u64, u64)],
    p: &ProcessImage,
    page_size: u64,
) -> Result<(), String> {
    let mut prev_end = 0u64;
    for (i, &(vaddr, npages)) in ranges.iter().enumerate() {
        let what = || format!("pid {pid}: {kind} {i} ({npages} pages at {vaddr:#x})");
        if npages == 0 {
            return Err(format!("{} is empty", what()));
        }
        if vaddr % page_size != 0 {
            return Err(format!("{} is not page-aligned", what()));
        }
        let end = npages
            .checked_mul(page_size)
            .and_then(|len| vaddr.checked_add(len))
            .filter(|&e| e <= USER_ADDRESS_LIMIT)
            .ok_or_else(|| format!("{} runs past the user address space", what()))?;
        if i > 0 && vaddr < prev_end {
            return Err(format!(
                "{} overlaps or precedes the range before it",
                what()
            ));
        }
        prev_end = end;
        // The run with the greatest vaddr <= the range's start is the only one that can
        // hold it.
        let idx = p.page_runs.partition_point(|r| r.vaddr <= vaddr);
        let inside = idx
            .checked_sub(1)
            .and_then(|k| p.page_runs.get(k))
            .is_some_and(|r| end <= r.vaddr + r.npages * page_size);
        if !inside {
            return Err(format!(
                "{} does not lie inside one stored page run of the image",
                what()
            ));
        }
    }
    Ok(())
}
