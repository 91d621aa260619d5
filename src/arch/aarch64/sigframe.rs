//! The aarch64 `struct rt_sigframe`: same interface as `x86_64/sigframe.rs`. Building frames is
//! not supported yet and says so at run time.

use crate::arch::ArchError;
use crate::images::ArchRegs;

/// `struct rt_sigframe` on arm64 (arch/arm64/kernel/signal.c): siginfo (128) + ucontext
/// (uc_flags, uc_link, uc_stack, uc_sigmask padded to 128 bytes, then the 16-byte aligned
/// sigcontext of 288 bytes plus 4096 bytes of `__reserved` records) = 4688 bytes, followed by
/// the frame record {fp, lr} (16). Extended state (SVE) would need more room than `__reserved`.
const RT_SIGFRAME_SIZE: usize = 4688 + 16;

/// The alternate signal stack to install with the frame; `None` disables it.
pub use crate::images::AltStack;

/// Bytes needed for a frame. On arm64 the FP/SIMD state fits in the frame's own reserved area,
/// so `_xstate_len` (an x86 notion) does not change the size.
pub fn frame_size(_xstate_len: usize) -> usize {
    RT_SIGFRAME_SIZE
}

/// Not supported on aarch64 yet.
pub fn build(
    regs: &ArchRegs,
    sigmask: u64,
    frame_addr: u64,
    out: &mut [u8],
) -> Result<u64, ArchError> {
    build_with_altstack(regs, sigmask, None, frame_addr, out)
}

/// Not supported on aarch64 yet.
pub fn build_with_altstack(
    _regs: &ArchRegs,
    _sigmask: u64,
    _altstack: Option<AltStack>,
    _frame_addr: u64,
    _out: &mut [u8],
) -> Result<u64, ArchError> {
    Err(ArchError::Unsupported("restoring registers"))
}

/// Dynamically enabled state components: none that crest knows of on aarch64.
pub fn dynamic_features(_regs: &ArchRegs) -> Vec<u32> {
    Vec::new()
}

/// Nothing to ask the kernel for on aarch64.
pub fn request_dynamic_features(_threads: &[&ArchRegs]) -> Result<(), String> {
    Ok(())
}
