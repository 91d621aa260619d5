//! aarch64: same interface as x86_64; every entry point reports "not supported yet" until the
//! aarch64 issue fills it in.

pub mod infect;
pub mod morph;
pub mod regs;
pub mod sigframe;
