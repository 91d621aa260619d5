//! x86_64: register layouts, the syscall-restart fix-up and the rt_sigframe.

pub mod infect;
pub mod morph;
pub mod regs;
pub mod sigframe;

/// Nothing to do on x86_64: instruction fetch snoops the data cache.
pub fn sync_icache(_start: *const u8, _len: usize) {}

/// `untag_mask` in /proc/PID/status of a process that never asked for address tagging: nothing is untagged until a process enables linear address masking (LAM).
pub const DEFAULT_UNTAG_MASK: &str = "0xffffffffffffffff";

/// Whether a restore gives the tree clocks that carry on from the dump unless told otherwise
/// (`crest restore --clocks`, crate::timens).
pub const CLOCKS_CARRY_ON_BY_DEFAULT: bool = true;

/// Why lazy pages are refused for a process of more than one thread here: they are not.
pub const LAZY_PAGES_FOR_THREADS_REFUSED: Option<&str> = None;

/// The kernel's O_LARGEFILE as fdinfo and F_GETFL show it (libc's `O_LARGEFILE` is 0 on
/// 64-bit: a 64-bit program never needs to ask for it, yet open(2) sets it).
pub const KERNEL_O_LARGEFILE: i32 = 0o100000;

/// The name of system call `nr`, for messages; the calls a thread can be stopped in while it
/// waits (others are shown by number).
pub fn syscall_name(nr: u64) -> Option<&'static str> {
    Some(match nr {
        0 => "read",
        1 => "write",
        7 => "poll",
        17 => "pread64",
        19 => "readv",
        20 => "writev",
        23 => "select",
        34 => "pause",
        35 => "nanosleep",
        43 => "accept",
        44 => "sendto",
        45 => "recvfrom",
        46 => "sendmsg",
        47 => "recvmsg",
        61 => "wait4",
        72 => "fcntl",
        73 => "flock",
        128 => "rt_sigtimedwait",
        130 => "rt_sigsuspend",
        202 => "futex",
        230 => "clock_nanosleep",
        232 => "epoll_wait",
        247 => "waitid",
        270 => "pselect6",
        271 => "ppoll",
        281 => "epoll_pwait",
        288 => "accept4",
        _ => return None,
    })
}
