//! aarch64 system-call shims, the final jump into rt_sigreturn and the syscall gadget.
//!
//! Linux arm64 syscall ABI: number in x8, arguments in x0..x5, `svc #0`, result in x0; no other
//! register is clobbered.

use core::arch::{asm, global_asm};

pub mod nr {
    pub const FCNTL: usize = 25;
    pub const CLOSE: usize = 57;
    pub const PREAD64: usize = 67;
    pub const EXIT_GROUP: usize = 94;
    pub const PRCTL: usize = 167;
    pub const MUNMAP: usize = 215;
    pub const SHMAT: usize = 196;
    pub const MREMAP: usize = 216;
    pub const MMAP: usize = 222;
    pub const MPROTECT: usize = 226;
    pub const MADVISE: usize = 233;
    pub const RSEQ: usize = 293;
    pub const SETITIMER: usize = 103;
    pub const TIMER_SETTIME: usize = 110;
    pub const GETPID: usize = 172;
    pub const SET_TID_ADDRESS: usize = 96;
    pub const SET_ROBUST_LIST: usize = 99;
    pub const RT_TGSIGQUEUEINFO: usize = 240;
    pub const SIGALTSTACK: usize = 132;
    pub const CLONE3: usize = 435;
    pub const FUTEX: usize = 98;
    pub const SETGROUPS: usize = 159;
    pub const SETRESUID: usize = 147;
    pub const SETRESGID: usize = 149;
    pub const SETFSUID: usize = 151;
    pub const SETFSGID: usize = 152;
    pub const CAPGET: usize = 90;
    pub const CAPSET: usize = 91;
    pub const MLOCK2: usize = 284;
    pub const MSEAL: usize = 462;
    pub const IOCTL: usize = 29;
}

/// # Safety
/// The caller makes sure the syscall's arguments are valid for it.
#[inline(always)]
pub unsafe fn syscall0(n: usize) -> isize {
    let ret: isize;
    // SAFETY: a plain `svc #0` with the kernel's register convention.
    unsafe {
        asm!("svc #0", in("x8") n, lateout("x0") ret, options(nostack));
    }
    ret
}

/// # Safety
/// As [`syscall0`].
#[inline(always)]
pub unsafe fn syscall1(n: usize, a1: usize) -> isize {
    let ret: isize;
    // SAFETY: see syscall0.
    unsafe {
        asm!("svc #0", in("x8") n, inlateout("x0") a1 as isize => ret, options(nostack));
    }
    ret
}

/// # Safety
/// As [`syscall0`].
#[inline(always)]
pub unsafe fn syscall2(n: usize, a1: usize, a2: usize) -> isize {
    let ret: isize;
    // SAFETY: see syscall0.
    unsafe {
        asm!("svc #0", in("x8") n, inlateout("x0") a1 as isize => ret, in("x1") a2,
             options(nostack));
    }
    ret
}

/// # Safety
/// As [`syscall0`].
#[inline(always)]
pub unsafe fn syscall3(n: usize, a1: usize, a2: usize, a3: usize) -> isize {
    let ret: isize;
    // SAFETY: see syscall0.
    unsafe {
        asm!("svc #0", in("x8") n, inlateout("x0") a1 as isize => ret, in("x1") a2,
             in("x2") a3, options(nostack));
    }
    ret
}

/// # Safety
/// As [`syscall0`].
#[inline(always)]
pub unsafe fn syscall4(n: usize, a1: usize, a2: usize, a3: usize, a4: usize) -> isize {
    let ret: isize;
    // SAFETY: see syscall0.
    unsafe {
        asm!("svc #0", in("x8") n, inlateout("x0") a1 as isize => ret, in("x1") a2,
             in("x2") a3, in("x3") a4, options(nostack));
    }
    ret
}

/// # Safety
/// As [`syscall0`].
#[inline(always)]
pub unsafe fn syscall5(n: usize, a1: usize, a2: usize, a3: usize, a4: usize, a5: usize) -> isize {
    let ret: isize;
    // SAFETY: see syscall0.
    unsafe {
        asm!("svc #0", in("x8") n, inlateout("x0") a1 as isize => ret, in("x1") a2,
             in("x2") a3, in("x3") a4, in("x4") a5, options(nostack));
    }
    ret
}

/// # Safety
/// As [`syscall0`].
#[inline(always)]
pub unsafe fn syscall6(
    n: usize,
    a1: usize,
    a2: usize,
    a3: usize,
    a4: usize,
    a5: usize,
    a6: usize,
) -> isize {
    let ret: isize;
    // SAFETY: see syscall0.
    unsafe {
        asm!("svc #0", in("x8") n, inlateout("x0") a1 as isize => ret, in("x1") a2,
             in("x2") a3, in("x3") a4, in("x4") a5, in("x5") a6, options(nostack));
    }
    ret
}

/// Sets TPIDR_EL0 (the thread pointer, which rt_sigreturn does not restore). tls[1] is unused.
pub fn set_thread_area(tls: [u64; 2]) -> Result<(), isize> {
    // SAFETY: writing TPIDR_EL0 only changes the thread pointer; the restorer has no TLS.
    unsafe {
        asm!("msr tpidr_el0, {0}", in(reg) tls[0], options(nostack, nomem));
    }
    Ok(())
}

/// Makes the instruction cache coherent with what was just written at `start..start + len`
/// (mapped): data cache cleaned to the point of unification, instruction cache invalidated,
/// line by line with CTR_EL0's line sizes. pread fills pages through the data side only, and
/// a fresh page's instruction-cache sync happens when its page-table entry is made, before
/// the data lands.
pub fn sync_icache(start: u64, len: u64) {
    if len == 0 {
        return;
    }
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effects.
    unsafe { asm!("mrs {0}, ctr_el0", out(reg) ctr, options(nomem, nostack)) };
    let dline = 4u64 << ((ctr >> 16) & 0xf);
    let iline = 4u64 << (ctr & 0xf);
    let end = start + len;
    if ctr & (1 << 28) == 0 {
        let mut at = start & !(dline - 1);
        while at < end {
            // SAFETY: `at` lies in the mapped range; cleaning a line changes no memory.
            unsafe { asm!("dc cvau, {0}", in(reg) at, options(nostack)) };
            at += dline;
        }
    }
    // SAFETY: a barrier orders the maintenance above.
    unsafe { asm!("dsb ish", options(nostack)) };
    if ctr & (1 << 29) == 0 {
        let mut at = start & !(iline - 1);
        while at < end {
            // SAFETY: as above; invalidating instruction-cache lines changes no memory.
            unsafe { asm!("ic ivau, {0}", in(reg) at, options(nostack)) };
            at += iline;
        }
    }
    // SAFETY: barriers only.
    unsafe { asm!("dsb ish", "isb", options(nostack)) };
}

/// clone3 for a thread; see the x86_64 file.
///
/// # Safety
/// As on x86_64.
pub unsafe fn clone3_thread(
    args: *const u8,
    size: usize,
    entry: extern "C" fn(u64) -> !,
    arg: u64,
) -> isize {
    let ret: isize;
    // SAFETY: upheld by the caller; `arg` and `entry` travel in callee-saved x21/x22, which the
    // child inherits.
    unsafe {
        asm!(
            "svc #0",
            "cbnz x0, 2f",
            "mov x29, xzr",
            "mov x0, x21",
            "blr x22",
            "brk #0",
            "2:",
            inlateout("x0") args as usize => ret,
            in("x1") size,
            in("x8") nr::CLONE3,
            in("x21") arg,
            in("x22") entry,
            options(nostack)
        );
    }
    ret
}

/// Stops at a breakpoint (crest, tracing the task, catches this SIGTRAP as "about to
/// rt_sigreturn"; `brk` leaves pc on itself, so crest steps pc over it), then switches to the
/// frame's stack and calls rt_sigreturn. On arm64 the kernel reads the frame at sp itself.
///
/// # Safety
/// `sp` must be the (16-byte aligned) address of a valid rt_sigframe built by crest.
pub unsafe fn sigreturn(sp: u64) -> ! {
    // SAFETY: the caller provides a valid frame; rt_sigreturn does not return on success, and
    // the final `brk` stops the task if it ever did.
    unsafe {
        asm!(
            "brk #0",
            "mov sp, {sp}",
            "mov x8, #139",
            "svc #0",
            "brk #1",
            sp = in(reg) sp,
            options(noreturn)
        );
    }
}

/// See the x86_64 file: a breakpoint crest takes, again if ever resumed here.
pub fn stop_for_crest() -> ! {
    loop {
        // SAFETY: brk only raises SIGTRAP, which the tracer (crest) takes.
        unsafe { asm!("brk #0", options(nostack)) };
    }
}

// crest runs munmap of the bootstrap region through this after the task is back in its own
// registers (see the x86_64 file).
global_asm!(
    ".pushsection .text.crest_syscall_gadget,\"ax\",%progbits",
    ".globl crest_syscall_gadget",
    ".type crest_syscall_gadget,%function",
    ".p2align 2",
    "crest_syscall_gadget:",
    "svc #0",
    "brk #0",
    ".size crest_syscall_gadget, . - crest_syscall_gadget",
    ".popsection",
);
