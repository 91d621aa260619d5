//! aarch64 register state: same interface as `x86_64/regs.rs`. Capturing registers is not
//! supported yet and says so at run time; the accessors already follow the NT_PRSTATUS layout
//! `{x0-x30, sp, pc, pstate}`.

use crate::arch::ArchError;
use crate::images::ArchRegs;
use crate::ptrace::{self, PtraceError};

/// NT_PRSTATUS (elf.h): `user_pt_regs`.
const NT_PRSTATUS: u32 = 1;
/// NT_PRFPREG (elf.h): `user_fpsimd_state`.
const NT_PRFPREG: u32 = 2;
/// NT_ARM_TLS (elf.h): TPIDR_EL0 (and TPIDR2_EL0 on SME machines).
const NT_ARM_TLS: u32 = 0x401;

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

/// Reads only the general registers (NT_PRSTATUS) of the stopped thread `tid`.
pub fn read_gprs(tid: i32) -> Result<Vec<u64>, RegsError> {
    let mut bytes = [0u8; GPR_WORDS * 8];
    let n = ptrace::get_regset(tid, NT_PRSTATUS, &mut bytes)?;
    if n != bytes.len() {
        return Err(RegsError::Arch {
            tid,
            err: ArchError::BadRegset {
                what: "NT_PRSTATUS",
                got: n,
                expected: bytes.len(),
            },
        });
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().expect("chunks_exact(8)")))
        .collect())
}

/// Writes the general registers (NT_PRSTATUS) of the stopped thread `tid`.
pub fn write_gprs(tid: i32, gpr: &[u64]) -> Result<(), RegsError> {
    if gpr.len() != GPR_WORDS {
        return Err(RegsError::Arch {
            tid,
            err: ArchError::BadRegset {
                what: "general registers to write",
                got: gpr.len() * 8,
                expected: GPR_WORDS * 8,
            },
        });
    }
    let bytes: Vec<u8> = gpr.iter().flat_map(|w| w.to_ne_bytes()).collect();
    ptrace::set_regset(tid, NT_PRSTATUS, &bytes)?;
    Ok(())
}

/// Puts back general registers, FP/SIMD state and TPIDR_EL0 into the stopped thread `tid`.
pub fn restore(tid: i32, regs: &ArchRegs) -> Result<(), RegsError> {
    let ArchRegs::Aarch64 { gpr, fpsimd, tls } = regs else {
        return Err(RegsError::Arch {
            tid,
            err: ArchError::Incompatible("the registers are not aarch64 registers".into()),
        });
    };
    write_gprs(tid, gpr)?;
    ptrace::set_regset(tid, NT_PRFPREG, fpsimd)?;
    ptrace::set_regset(tid, NT_ARM_TLS, &tls.to_ne_bytes())?;
    Ok(())
}

fn gpr(regs: &ArchRegs) -> Result<&[u64], ArchError> {
    match regs {
        ArchRegs::Aarch64 { gpr, .. } if gpr.len() == GPR_WORDS => Ok(gpr),
        _ => Err(ArchError::Incompatible(
            "the registers are not aarch64 registers".into(),
        )),
    }
}

/// The general registers (NT_PRSTATUS words) of a captured register set, as
/// [`read_gprs`] would read them from the thread.
pub fn general(regs: &ArchRegs) -> Result<&[u64], ArchError> {
    gpr(regs)
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
