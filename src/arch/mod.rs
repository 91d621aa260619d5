//! Everything that differs between CPU architectures, behind one interface.
//!
//! Callers use `arch::regs`, `arch::sigframe` and the constants here; each architecture provides
//! files with the same names and the same functions (`x86_64/regs.rs` / `aarch64/regs.rs`, ...).

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "aarch64")]
pub use aarch64::*;

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use x86_64::*;

/// Errors from architecture-specific code.
#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    /// {0} is not supported on this architecture yet
    #[error("{0} is not supported on {arch} yet", arch = std::env::consts::ARCH)]
    Unsupported(&'static str),
    /// A register set had an unexpected size.
    #[error("{what} has {got} bytes, expected {expected}")]
    BadRegset {
        what: &'static str,
        got: usize,
        expected: usize,
    },
    /// The image's register state cannot be restored on this machine.
    #[error("{0}")]
    Incompatible(String),
}

/// The machine's page size, read at run time (never assumed).
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v > 0 {
        v as u64
    } else {
        4096
    }
}
