//! aarch64 register state: same interface as `x86_64/regs.rs`. Capturing registers is not
//! supported yet and says so at run time; the accessors already follow the NT_PRSTATUS layout
//! `{x0-x30, sp, pc, pstate}`.

use crate::arch::ArchError;
use crate::images::ArchRegs;
use crate::ptrace::PtraceError;

/// `user_pt_regs` is 34 u64: x0-x30, sp, pc, pstate.
pub const GPR_WORDS: usize = 34;
const SP: usize = 31;
const PC: usize = 32;

/// Errors capturing a thread's registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error(transparent)]
    Ptrace(#[from] PtraceError),
    #[error("thread {tid}: {err}")]
    Arch { tid: i32, err: ArchError },
}

/// What [`fixup_syscall_restart`] did to the saved registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyscallRestart {
    None,
    Reexecute { nr: u64 },
    Interrupted { nr: u64 },
}

/// Not supported on aarch64 yet.
pub fn capture(tid: i32) -> Result<ArchRegs, RegsError> {
    Err(RegsError::Arch {
        tid,
        err: ArchError::Unsupported("dumping registers"),
    })
}

/// On arm64 the kernel has already rewound pc and restored x0 for every restart code before
/// the ptrace stop (arch/arm64/kernel/signal.c, `do_signal`), so a snapshot is re-executable
/// as it is; applying the x86 rule would move pc one instruction too far back. Until register
/// capture exists this reports the missing support rather than pretend.
pub fn fixup_syscall_restart(_regs: &mut ArchRegs) -> Result<SyscallRestart, ArchError> {
    Err(ArchError::Unsupported("dumping registers"))
}

fn gpr(regs: &ArchRegs) -> Result<&[u64], ArchError> {
    match regs {
        ArchRegs::Aarch64 { gpr, .. } if gpr.len() == GPR_WORDS => Ok(gpr),
        _ => Err(ArchError::Incompatible(
            "the registers are not aarch64 registers".into(),
        )),
    }
}

/// The saved pc.
pub fn instruction_pointer(regs: &ArchRegs) -> Result<u64, ArchError> {
    Ok(gpr(regs)?[PC])
}

/// Sets the saved pc.
pub fn set_instruction_pointer(regs: &mut ArchRegs, ip: u64) -> Result<(), ArchError> {
    match regs {
        ArchRegs::Aarch64 { gpr, .. } if gpr.len() == GPR_WORDS => {
            gpr[PC] = ip;
            Ok(())
        }
        _ => Err(ArchError::Incompatible(
            "the registers are not aarch64 registers".into(),
        )),
    }
}

/// The saved sp.
pub fn stack_pointer(regs: &ArchRegs) -> Result<u64, ArchError> {
    Ok(gpr(regs)?[SP])
}
