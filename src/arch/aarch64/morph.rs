//! aarch64 pieces of the morph (same interface as x86_64/morph.rs): jumping into the restorer,
//! the thread pointer it sets, the registers for the syscalls crest runs in the restored task
//! afterwards, and stepping over the restorer's breakpoint (`brk` leaves pc on itself).

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

/// Checks that the image's registers are aarch64 registers in the layouts this kernel uses
/// (NT_PRFPREG is the same 528 bytes on every arm64 kernel), and that a machine without SVE is
/// not asked to load live SVE registers.
pub fn check_fpu_compatible(pid: i32, regs: &ArchRegs) -> Result<(), super::super::ArchError> {
    use super::super::ArchError;
    match regs {
        ArchRegs::Aarch64 { gpr, fpsimd, .. }
            if gpr.len() == super::regs::GPR_WORDS && fpsimd.len() >= super::regs::FPSIMD_BYTES =>
        {
            if fpsimd.len() > super::regs::FPSIMD_BYTES && !super::regs::have_sve() {
                return Err(ArchError::Incompatible(format!(
                    "pid {pid}: the image holds live SVE registers, and this CPU or kernel has \
                     no SVE"
                )));
            }
            Ok(())
        }
        ArchRegs::Aarch64 { gpr, fpsimd, .. } => Err(ArchError::Incompatible(format!(
            "pid {pid}: the image's aarch64 registers have {} general registers and {} bytes \
             of FP/SIMD state, this machine uses {} and at least {}",
            gpr.len(),
            fpsimd.len(),
            super::regs::GPR_WORDS,
            super::regs::FPSIMD_BYTES
        ))),
        ArchRegs::X86_64 { .. } => Err(ArchError::Incompatible(format!(
            "pid {pid}: the image holds x86_64 registers"
        ))),
    }
}

/// The live SVE registers of a thread (the NT_ARM_SVE regset as captured), which rt_sigreturn
/// does not load from crest's frame and which any system call would drop again (the kernel
/// discards SVE state at syscall entry): crest puts them back by ptrace as the thread is
/// released, after the cleanup's system calls.
pub fn late_state(regs: &ArchRegs) -> Option<Vec<u8>> {
    super::regs::sve_state(regs).map(<[u8]>::to_vec)
}

/// Loads the SVE registers [`late_state`] gave into the stopped thread `tid`.
pub fn put_back_late_state(tid: i32, state: &[u8]) -> Result<(), String> {
    super::regs::set_sve_state(tid, state).map_err(|e| e.to_string())
}

/// Moves the stopped thread `tid`, which stopped on the restorer's `brk #0` before its
/// rt_sigreturn, past that instruction: an arm64 breakpoint leaves pc on itself, so resuming
/// it as it is would only trap again.
pub fn step_over_breakpoint(tid: i32) -> Result<(), super::regs::RegsError> {
    let mut gpr = super::regs::read_gprs(tid)?;
    gpr[super::regs::PC] += 4;
    super::regs::write_gprs(tid, &gpr)
}
