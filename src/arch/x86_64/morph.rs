//! x86_64 pieces of the morph: jumping into the restorer, the thread pointers it sets, and the
//! registers for the one syscall crest runs in the restored task afterwards.

use crate::images::ArchRegs;

use super::regs::{FS_BASE, GS_BASE};

/// FS and GS base of a thread: rt_sigreturn does not restore them, the restorer sets them with
/// arch_prctl(ARCH_SET_FS/ARCH_SET_GS).
pub fn thread_pointers(regs: &ArchRegs) -> [u64; 2] {
    match regs {
        ArchRegs::X86_64 { gpr, .. } => [gpr[FS_BASE], gpr[GS_BASE]],
        ArchRegs::Aarch64 { .. } => [0, 0],
    }
}

/// Switches to the restorer's stack and calls its entry with `args` as the first argument.
///
/// # Safety
/// `entry` must be the restorer's entry point, installed and executable; `stack_top` the 16-byte
/// aligned top of a stack inside the bootstrap region; `args` the address of its RestorerArgs.
/// The restorer replaces this process's memory: nothing of crest runs after this call.
pub unsafe fn jump_to_restorer(entry: u64, stack_top: u64, args: u64) -> ! {
    // SAFETY: upheld by the caller; `call` pushes the return address so the entry sees the
    // stack alignment the SysV ABI promises (rsp + 8 aligned to 16 at function entry).
    unsafe {
        core::arch::asm!(
            "mov rsp, {stack}",
            "xor ebp, ebp",
            "call {entry}",
            "ud2",
            stack = in(reg) stack_top & !15,
            entry = in(reg) entry,
            in("rdi") args,
            options(noreturn)
        )
    }
}

/// Sets up `regs` so that resuming the task at `gadget` (a `syscall` instruction) runs syscall
/// `nr` with `args`.
pub fn prepare_remote_syscall(
    regs: &mut libc::user_regs_struct,
    gadget: u64,
    nr: u64,
    args: &[u64],
) {
    regs.rip = gadget;
    regs.rax = nr;
    regs.orig_rax = u64::MAX;
    let slots = [
        &mut regs.rdi,
        &mut regs.rsi,
        &mut regs.rdx,
        &mut regs.r10,
        &mut regs.r8,
        &mut regs.r9,
    ];
    for (slot, value) in slots.into_iter().zip(args) {
        *slot = *value;
    }
}

/// The return value of the syscall the task just ran (at its syscall-exit stop).
pub fn syscall_result(regs: &libc::user_regs_struct) -> i64 {
    regs.rax as i64
}

/// Registers of the stopped task, as the libc type ptrace uses.
pub type UserRegs = libc::user_regs_struct;

/// NT_X86_XSTATE: the XSAVE area regset.
const NT_X86_XSTATE: u32 = 0x202;
/// Offset of `xfeatures` in the software-reserved bytes of the FXSAVE header (byte 464 + 8).
const SW_XFEATURES: usize = 472;

/// Refuses an image whose XSAVE area does not fit this CPU and kernel. rt_sigreturn silently
/// falls back to the legacy FP/SSE state when the frame's xstate size exceeds the kernel's, which
/// would lose AVX registers without a word; comparing with a live task (`pid`, traced and
/// stopped, running on this machine) catches that before the morph.
pub fn check_fpu_compatible(pid: i32, regs: &ArchRegs) -> Result<(), super::super::ArchError> {
    use super::super::ArchError;
    let ArchRegs::X86_64 { xstate, .. } = regs else {
        return Err(ArchError::Incompatible(
            "the image holds aarch64 registers".into(),
        ));
    };
    let mut here = vec![0u8; 64 * 1024];
    let len = crate::ptrace::get_regset(pid, NT_X86_XSTATE, &mut here).map_err(|e| {
        ArchError::Incompatible(format!(
            "cannot read this CPU's XSAVE layout from pid {pid}: {e}"
        ))
    })?;
    // A stored area may end after its last component in use (regs::capture), its whole size
    // recorded in it (sigframe::full_len).
    let theirs_len = super::sigframe::full_len(xstate);
    if len != theirs_len {
        return Err(ArchError::Incompatible(format!(
            "the image's XSAVE area is {theirs_len} bytes but this CPU's is {len}: it was dumped \
             on a CPU with other vector-register features"
        )));
    }
    let features =
        |b: &[u8]| u64::from_le_bytes(b[SW_XFEATURES..SW_XFEATURES + 8].try_into().unwrap());
    // The image's are the dumping CPU's XCR0 (stamped by regs::capture; 0 in an older image);
    // ours are this CPU's.
    let (theirs, ours) = (features(xstate), super::sigframe::enabled_xfeatures());
    if theirs & !ours != 0 {
        return Err(ArchError::Incompatible(format!(
            "the image uses XSAVE features {:#x} this CPU lacks (image {theirs:#x}, here {ours:#x})",
            theirs & !ours
        )));
    }
    Ok(())
}

/// Nothing to do on x86_64: `int3` is a trap, rip already points past it when the thread
/// stops on the restorer's breakpoint.
pub fn step_over_breakpoint(_tid: i32) -> Result<(), super::regs::RegsError> {
    Ok(())
}

/// Nothing beyond what rt_sigreturn loads on x86_64 (the frame carries the whole XSAVE area).
pub fn late_state(_regs: &ArchRegs) -> Option<Vec<u8>> {
    None
}

/// See [`late_state`]: never called with anything on x86_64.
pub fn put_back_late_state(_tid: i32, _state: &[u8]) -> Result<(), String> {
    Ok(())
}
