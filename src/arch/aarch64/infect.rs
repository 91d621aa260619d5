//! aarch64 side of infection (`crate::infect`): same names as `x86_64/infect.rs`.
//!
//! Registers are the NT_PRSTATUS words (`user_pt_regs`: x0-x30, sp, pc, pstate). The stub is
//! written with PTRACE_POKEDATA, after which the kernel keeps the instruction cache coherent.

use crate::arch::ArchError;

use super::regs::GPR_WORDS;

/// Syscall numbers crest runs in a target (include/uapi/asm-generic/unistd.h).
pub mod nr {
    pub const CLOSE: u64 = 57;
    pub const BRK: u64 = 214;
    pub const MUNMAP: u64 = 215;
    pub const MMAP: u64 = 222;
    pub const MEMFD_CREATE: u64 = 279;
}

/// `svc #0` (01 00 00 d4) followed by `brk #0` (00 00 20 d4).
pub const SYSCALL_STUB: [u8; 8] = [0x01, 0x00, 0x00, 0xd4, 0x00, 0x00, 0x20, 0xd4];
/// Offset of the trap instruction in [`SYSCALL_STUB`].
pub const STUB_TRAP_OFFSET: u64 = 4;
/// si_code of the SIGTRAP `brk` raises: TRAP_BRKPT.
pub const TRAP_SI_CODE: i32 = 1;

const X8: usize = 8;
const LR: usize = 30;
const SP: usize = 31;
const PC: usize = 32;

fn check(gpr: &[u64]) -> Result<(), ArchError> {
    if gpr.len() != GPR_WORDS {
        return Err(ArchError::BadRegset {
            what: "aarch64 general registers",
            got: gpr.len() * 8,
            expected: GPR_WORDS * 8,
        });
    }
    Ok(())
}

/// `brk` is reported with pc still on the instruction.
pub fn trap_address(ip: u64) -> u64 {
    ip
}

/// Sets `gpr` up to run syscall `nr` with `args` on the stub at `stub` (x8 = number, x0-x5 =
/// arguments). The kernel already rewound an interrupted syscall before the ptrace stop
/// (arch/arm64/kernel/signal.c, `do_signal`), so nothing else needs clearing.
pub fn set_syscall(gpr: &mut [u64], stub: u64, nr: u64, args: [u64; 6]) -> Result<(), ArchError> {
    check(gpr)?;
    gpr[..6].copy_from_slice(&args);
    gpr[X8] = nr;
    gpr[PC] = stub;
    Ok(())
}

/// The syscall's return value (x0).
pub fn syscall_result(gpr: &[u64]) -> Result<i64, ArchError> {
    check(gpr)?;
    Ok(gpr[0] as i64)
}

/// Sets `gpr` up to call `entry(arg)` with sp at the 16-byte aligned `stack_top` (AAPCS64
/// passes the return address in lr, not on the stack). Returns sp.
pub fn set_call(gpr: &mut [u64], entry: u64, stack_top: u64, arg: u64) -> Result<u64, ArchError> {
    check(gpr)?;
    let sp = stack_top & !15;
    gpr[0] = arg;
    gpr[LR] = 0;
    gpr[SP] = sp;
    gpr[PC] = entry;
    Ok(sp)
}

/// The instruction pointer (pc) in `gpr`.
pub fn ip(gpr: &[u64]) -> Result<u64, ArchError> {
    check(gpr)?;
    Ok(gpr[PC])
}
