//! aarch64: same interface as x86_64; every entry point reports "not supported yet" until the
//! aarch64 issue fills it in.

pub mod infect;
pub mod morph;
pub mod regs;
pub mod sigframe;

/// The kernel's O_LARGEFILE as fdinfo and F_GETFL show it (libc's `O_LARGEFILE` is 0 on
/// 64-bit: a 64-bit program never needs to ask for it, yet open(2) sets it).
pub const KERNEL_O_LARGEFILE: i32 = 0o400000;

/// The name of system call `nr`, for messages; the calls a thread can be stopped in while it
/// waits (others are shown by number).
pub fn syscall_name(nr: u64) -> Option<&'static str> {
    Some(match nr {
        22 => "epoll_pwait",
        25 => "fcntl",
        32 => "flock",
        63 => "read",
        64 => "write",
        65 => "readv",
        66 => "writev",
        67 => "pread64",
        72 => "pselect6",
        73 => "ppoll",
        95 => "waitid",
        98 => "futex",
        101 => "nanosleep",
        115 => "clock_nanosleep",
        133 => "rt_sigsuspend",
        137 => "rt_sigtimedwait",
        202 => "accept",
        206 => "sendto",
        207 => "recvfrom",
        211 => "sendmsg",
        212 => "recvmsg",
        242 => "accept4",
        260 => "wait4",
        _ => return None,
    })
}
