//! x86_64 system-call shims, the final jump into rt_sigreturn and the syscall gadget.
//!
//! Linux x86_64 syscall ABI: number in rax, arguments in rdi, rsi, rdx, r10, r8, r9; the
//! `syscall` instruction clobbers rcx (return rip) and r11 (rflags); the result comes back in rax.

use core::arch::{asm, global_asm};

pub mod nr {
    pub const FCNTL: usize = 72;
    pub const CLOSE: usize = 3;
    pub const MMAP: usize = 9;
    pub const MPROTECT: usize = 10;
    pub const MUNMAP: usize = 11;
    pub const SHMAT: usize = 30;
    pub const PREAD64: usize = 17;
    pub const MREMAP: usize = 25;
    pub const MADVISE: usize = 28;
    pub const PRCTL: usize = 157;
    pub const ARCH_PRCTL: usize = 158;
    pub const EXIT_GROUP: usize = 231;
    pub const RSEQ: usize = 334;
    pub const SETITIMER: usize = 38;
    pub const TIMER_SETTIME: usize = 223;
    pub const GETPID: usize = 39;
    pub const SET_TID_ADDRESS: usize = 218;
    pub const SET_ROBUST_LIST: usize = 273;
    pub const RT_TGSIGQUEUEINFO: usize = 297;
    pub const SIGALTSTACK: usize = 131;
    pub const CLONE3: usize = 435;
    pub const FUTEX: usize = 202;
    pub const SETGROUPS: usize = 116;
    pub const SETRESUID: usize = 117;
    pub const SETRESGID: usize = 119;
    pub const SETFSUID: usize = 122;
    pub const SETFSGID: usize = 123;
    pub const CAPGET: usize = 125;
    pub const CAPSET: usize = 126;
    pub const MLOCK2: usize = 325;
    pub const MSEAL: usize = 462;
    pub const IOCTL: usize = 16;
}

const ARCH_SET_GS: usize = 0x1001;
const ARCH_SET_FS: usize = 0x1002;

/// # Safety
/// The caller makes sure the syscall's arguments are valid for it.
#[inline(always)]
pub unsafe fn syscall0(n: usize) -> isize {
    let ret: isize;
    // SAFETY: a plain `syscall`; the clobbers are exactly those of the kernel ABI.
    unsafe {
        asm!("syscall", inlateout("rax") n as isize => ret,
             lateout("rcx") _, lateout("r11") _, options(nostack));
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
        asm!("syscall", inlateout("rax") n as isize => ret, in("rdi") a1,
             lateout("rcx") _, lateout("r11") _, options(nostack));
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
        asm!("syscall", inlateout("rax") n as isize => ret, in("rdi") a1, in("rsi") a2,
             lateout("rcx") _, lateout("r11") _, options(nostack));
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
        asm!("syscall", inlateout("rax") n as isize => ret, in("rdi") a1, in("rsi") a2,
             in("rdx") a3, lateout("rcx") _, lateout("r11") _, options(nostack));
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
        asm!("syscall", inlateout("rax") n as isize => ret, in("rdi") a1, in("rsi") a2,
             in("rdx") a3, in("r10") a4, lateout("rcx") _, lateout("r11") _, options(nostack));
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
        asm!("syscall", inlateout("rax") n as isize => ret, in("rdi") a1, in("rsi") a2,
             in("rdx") a3, in("r10") a4, in("r8") a5, lateout("rcx") _, lateout("r11") _,
             options(nostack));
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
        asm!("syscall", inlateout("rax") n as isize => ret, in("rdi") a1, in("rsi") a2,
             in("rdx") a3, in("r10") a4, in("r8") a5, in("r9") a6,
             lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

/// Sets the thread pointer(s): FS and GS base are not part of the sigframe (rt_sigreturn leaves
/// them alone), so they are set here. Returns the first negative errno.
/// clone3 for a thread: the child starts on the stack described in `args` and calls
/// `entry(arg)` there (it never comes back here); the parent gets the child's tid or -errno.
///
/// # Safety
/// `args` must describe a valid stack in memory that stays mapped, `entry` must never return,
/// and the flags must create a thread (CLONE_VM): the child shares this address space.
pub unsafe fn clone3_thread(
    args: *const u8,
    size: usize,
    entry: extern "C" fn(u64) -> !,
    arg: u64,
) -> isize {
    let ret: isize;
    // SAFETY: upheld by the caller. In the child every register but rax and rsp is a copy of
    // the parent's, so `arg` and `entry` travel in callee-saved r12/r13; the child aligns its
    // new stack and calls the entry, never touching the parent's frame.
    unsafe {
        asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "and rsp, -16",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") nr::CLONE3 as isize => ret,
            in("rdi") args,
            in("rsi") size,
            in("r12") arg,
            in("r13") entry,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    ret
}

pub fn set_thread_area(tls: [u64; 2]) -> Result<(), isize> {
    // SAFETY: arch_prctl(ARCH_SET_FS/GS) only changes the segment bases; nothing in the restorer
    // uses FS or GS (no TLS, no stack protector).
    let r = unsafe { syscall2(nr::ARCH_PRCTL, ARCH_SET_FS, tls[0] as usize) };
    if r < 0 {
        return Err(r);
    }
    // SAFETY: as above.
    let r = unsafe { syscall2(nr::ARCH_PRCTL, ARCH_SET_GS, tls[1] as usize) };
    if r < 0 {
        return Err(r);
    }
    Ok(())
}

/// Nothing to do on x86_64: instruction fetch snoops the data cache.
pub fn sync_icache(_start: u64, _len: u64) {}

/// Stops at a breakpoint (crest, tracing the task, catches this SIGTRAP as "about to
/// rt_sigreturn"), then switches to the frame's stack and calls rt_sigreturn.
///
/// All of it is one asm block: once rsp moves, no compiler-generated code may touch the stack.
/// The kernel reads the rt_sigframe at rsp - 8 (it expects to be entered through the `ret` into
/// `pretcode`), which is why crest passes the frame address + 8.
///
/// # Safety
/// `sp` must be the address computed by crest's sigframe builder for a valid frame.
pub unsafe fn sigreturn(sp: u64) -> ! {
    // SAFETY: the caller provides a valid frame; rt_sigreturn does not return on success, and
    // `ud2` stops the task if it ever did.
    unsafe {
        asm!(
            "int3",
            "mov rsp, {sp}",
            "mov eax, 15",
            "syscall",
            "ud2",
            sp = in(reg) sp,
            options(noreturn)
        );
    }
}

/// Stops on a breakpoint, for good: crest catches the thread there, puts its own registers
/// back by ptrace and lets it go from them. Should it ever be resumed here, it stops again.
pub fn stop_for_crest() -> ! {
    loop {
        // SAFETY: int3 only raises SIGTRAP, which the tracer (crest) takes.
        unsafe { asm!("int3", options(nostack)) };
    }
}

// crest runs munmap of the bootstrap region through this after the task is back in its own
// registers: it sets rip here, the syscall registers, and catches the SIGTRAP of the int3.
// Its own section lets the linker script keep it (nothing in the blob references it).
global_asm!(
    ".pushsection .text.crest_syscall_gadget,\"ax\",%progbits",
    ".globl crest_syscall_gadget",
    ".type crest_syscall_gadget,%function",
    "crest_syscall_gadget:",
    "syscall",
    "int3",
    ".size crest_syscall_gadget, . - crest_syscall_gadget",
    ".popsection",
);
