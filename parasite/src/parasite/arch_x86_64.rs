//! x86_64 pieces of the parasite: the syscall numbers it uses and its final breakpoint.

use core::arch::asm;

/// Syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl).
pub mod nr {
    pub const RT_SIGACTION: usize = 13;
    pub const GETITIMER: usize = 36;
    pub const SIGALTSTACK: usize = 131;
    pub const PERSONALITY: usize = 135;
    pub const PRCTL: usize = 157;
    pub const TIMER_GETTIME: usize = 224;
    pub const TIMER_GETOVERRUN: usize = 225;
    pub const GET_ROBUST_LIST: usize = 274;
    pub const MEMBARRIER: usize = 324;
}

/// Stops the thread for good: `int3` raises SIGTRAP (si_code SI_KERNEL), which crest, tracing
/// the thread, sees as a signal-delivery stop with rip just past the instruction. crest never
/// resumes the thread here (it points the registers elsewhere first), but should it ever
/// continue, the loop stops it again.
pub fn trap() -> ! {
    loop {
        // SAFETY: int3 only raises SIGTRAP; it touches no memory and no register but rip.
        unsafe { asm!("int3", options(nomem, nostack)) };
    }
}
