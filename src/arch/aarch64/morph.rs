//! aarch64 pieces of the morph (same interface as x86_64/morph.rs). The restore path refuses
//! aarch64 images before forking until the aarch64 issue completes the register side.

use crate::images::ArchRegs;

/// TPIDR_EL0 (the thread pointer) in slot 0; aarch64 has no second one.
pub fn thread_pointers(regs: &ArchRegs) -> [u64; 2] {
    match regs {
        ArchRegs::Aarch64 { tls, .. } => [*tls, 0],
        ArchRegs::X86_64 { .. } => [0, 0],
    }
}

/// Switches to the restorer's stack and calls its entry with `args` in x0.
///
/// # Safety
/// As on x86_64: `entry` is the installed restorer entry, `stack_top` the top of its stack
/// inside the bootstrap region, `args` its RestorerArgs. Nothing of crest runs afterwards.
pub unsafe fn jump_to_restorer(entry: u64, stack_top: u64, args: u64) -> ! {
    // SAFETY: upheld by the caller; sp is kept 16-byte aligned as AAPCS64 requires.
    unsafe {
        core::arch::asm!(
            "mov sp, {stack}",
            "mov x29, xzr",
            "blr {entry}",
            "brk #0",
            stack = in(reg) stack_top & !15,
            entry = in(reg) entry,
            in("x0") args,
            options(noreturn)
        )
    }
}

pub type UserRegs = libc::user_regs_struct;

/// Sets up `regs` so that resuming at `gadget` (an `svc #0`) runs syscall `nr` with `args`.
pub fn prepare_remote_syscall(regs: &mut UserRegs, gadget: u64, nr: u64, args: &[u64]) {
    regs.pc = gadget;
    regs.regs[8] = nr;
    for (i, value) in args.iter().take(6).enumerate() {
        regs.regs[i] = *value;
    }
}

pub fn syscall_result(regs: &UserRegs) -> i64 {
    regs.regs[0] as i64
}

/// Restoring registers is not supported on aarch64 yet.
pub fn check_fpu_compatible(_pid: i32, _regs: &ArchRegs) -> Result<(), super::super::ArchError> {
    Err(super::super::ArchError::Unsupported("restoring registers"))
}
