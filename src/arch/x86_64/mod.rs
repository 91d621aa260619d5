//! x86_64: register layouts, the syscall-restart fix-up and the rt_sigframe.

pub mod infect;
pub mod morph;
pub mod regs;
pub mod sigframe;
