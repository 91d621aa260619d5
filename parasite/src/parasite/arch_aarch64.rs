//! aarch64 pieces of the parasite: the syscall numbers it uses and its final breakpoint.

use core::arch::asm;

/// Syscall numbers (include/uapi/asm-generic/unistd.h).
pub mod nr {
    pub const PERSONALITY: usize = 92;
    pub const GET_ROBUST_LIST: usize = 100;
    pub const GETITIMER: usize = 102;
    pub const TIMER_GETOVERRUN: usize = 109;
    pub const TIMER_GETTIME: usize = 108;
    pub const SIGALTSTACK: usize = 132;
    pub const RT_SIGACTION: usize = 134;
    pub const PRCTL: usize = 167;
    pub const MEMBARRIER: usize = 283;
}

/// Stops the thread for good: `brk #0` raises SIGTRAP (si_code TRAP_BRKPT) with pc left on the
/// instruction itself, so a thread that were ever resumed here would stop again.
pub fn trap() -> ! {
    loop {
        // SAFETY: brk only raises SIGTRAP; it touches no memory and no register.
        unsafe { asm!("brk #0", options(nomem, nostack)) };
    }
}
