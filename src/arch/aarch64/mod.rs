//! aarch64: register layouts (NT_PRSTATUS, NT_PRFPREG, NT_ARM_TLS), the refusals of state the
//! image does not carry (SVE, SME, pointer authentication, MTE), the rt_sigframe, and the
//! instruction-cache maintenance code written by crest needs.

pub mod infect;
pub mod morph;
pub mod regs;
pub mod sigframe;

/// Makes the instruction cache coherent with code just written at `start..start + len` (which
/// must be mapped and readable in this process): cleans the data cache to the point of
/// unification and invalidates the instruction cache over the range, line by line, with the
/// line sizes CTR_EL0 gives (Linux lets user space read it). A CPU whose CTR_EL0 says IDC or DIC
/// needs the matching half not.
pub fn sync_icache(start: *const u8, len: usize) {
    if len == 0 {
        return;
    }
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effects (the kernel traps and emulates it if needed).
    unsafe { core::arch::asm!("mrs {0}, ctr_el0", out(reg) ctr, options(nomem, nostack)) };
    let dline = 4u64 << ((ctr >> 16) & 0xf);
    let iline = 4u64 << (ctr & 0xf);
    let (begin, end) = (start as u64, start as u64 + len as u64);
    if ctr & (1 << 28) == 0 {
        let mut at = begin & !(dline - 1);
        while at < end {
            // SAFETY: `at` lies in (the first line of) the mapped range the caller gives;
            // cleaning a cache line changes no memory contents.
            unsafe { core::arch::asm!("dc cvau, {0}", in(reg) at, options(nostack)) };
            at += dline;
        }
    }
    // SAFETY: a barrier only orders the maintenance above.
    unsafe { core::arch::asm!("dsb ish", options(nostack)) };
    if ctr & (1 << 29) == 0 {
        let mut at = begin & !(iline - 1);
        while at < end {
            // SAFETY: as above; invalidating instruction-cache lines changes no memory.
            unsafe { core::arch::asm!("ic ivau, {0}", in(reg) at, options(nostack)) };
            at += iline;
        }
    }
    // SAFETY: barriers only; the isb makes this thread fetch the new code.
    unsafe { core::arch::asm!("dsb ish", "isb", options(nostack)) };
}

/// `untag_mask` in /proc/PID/status of a process that never asked for address tagging: the top byte is always ignored (TBI) for user addresses, so every process shows this mask.
pub const DEFAULT_UNTAG_MASK: &str = "0xffffffffffffff";

/// Whether a restore gives the tree clocks that carry on from the dump unless told otherwise
/// (`crest restore --clocks`, crate::timens). Not yet on arm64: under qemu on Debian's 16K-page
/// kernel a thread of a tree restored into its time namespace a second time once measured a
/// 3 ms nanosleep as shorter (tests/threads.rs, mthreads' sleepers), which no x86_64 run and
/// no 4K run showed; until that is understood arm64 restores keep the host's clocks.
pub const CLOCKS_CARRY_ON_BY_DEFAULT: bool = false;

/// Why lazy pages are refused for a process of more than one thread here, if they are. On
/// arm64 (under qemu, Debian's 4K-page kernel) a thread of a lazily restored process read a
/// word of its thread-local data as zero while its pages were still coming in (tests/lazy.rs
/// `threads_restored_lazily_verify`); single-threaded processes came back whole. Until that is
/// understood such a restore is refused rather than run on with wrong memory.
pub const LAZY_PAGES_FOR_THREADS_REFUSED: Option<&str> = Some(
    "on arm64 a lazily restored thread has read its thread-local data as zeros, which is not \
     understood yet",
);

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
