//! x86_64 side of infection (`crate::infect`): the syscall stub, the trap it stops on, and the
//! register settings for a remote syscall or a call into the parasite.
//!
//! Registers are the NT_PRSTATUS words (`user_regs_struct`, see `regs.rs` for the indices).

use crate::arch::ArchError;

use super::regs::{EFLAGS, GPR_WORDS, ORIG_RAX, R10, R8, R9, RAX, RDI, RDX, RIP, RSI, RSP};

/// Syscall numbers crest runs in a target (arch/x86/entry/syscalls/syscall_64.tbl).
pub mod nr {
    pub const CLOSE: u64 = 3;
    pub const MMAP: u64 = 9;
    pub const MUNMAP: u64 = 11;
    pub const BRK: u64 = 12;
    pub const MEMFD_CREATE: u64 = 319;
}

/// What crest writes over the first bytes of an executable mapping to run a syscall:
/// `syscall` (0f 05), then `int3` (cc) to stop right after it, padded with more int3.
pub const SYSCALL_STUB: [u8; 8] = [0x0f, 0x05, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc];
/// Offset of the trap instruction in [`SYSCALL_STUB`].
pub const STUB_TRAP_OFFSET: u64 = 2;
/// si_code of the SIGTRAP an `int3` raises in user mode: SI_KERNEL (arch/x86/kernel/traps.c,
/// `do_int3_user` sends it with force_sig).
pub const TRAP_SI_CODE: i32 = 0x80;

/// EFLAGS.TF (single-step) and EFLAGS.DF (direction): code crest runs expects both clear (the
/// ABI requires DF clear at a call; TF would trap after every instruction).
const EFLAGS_TF: u64 = 1 << 8;
const EFLAGS_DF: u64 = 1 << 10;

fn check(gpr: &[u64]) -> Result<(), ArchError> {
    if gpr.len() != GPR_WORDS {
        return Err(ArchError::BadRegset {
            what: "x86_64 general registers",
            got: gpr.len() * 8,
            expected: GPR_WORDS * 8,
        });
    }
    Ok(())
}

/// Where the trap instruction a thread stopped on lies, given its instruction pointer at the
/// stop: `int3` is a trap, so rip already points past it (one byte).
pub fn trap_address(ip: u64) -> u64 {
    ip.wrapping_sub(1)
}

/// Sets `gpr` up to run syscall `nr` with `args` on the stub at `stub`.
///
/// orig_rax = -1 tells the kernel the thread is not inside a syscall, so resuming it from a
/// ptrace stop does no syscall-restart processing (arch/x86/kernel/signal.c: the restart
/// rules apply only when `syscall_get_nr() >= 0`), even if the thread was stopped in one.
pub fn set_syscall(gpr: &mut [u64], stub: u64, nr: u64, args: [u64; 6]) -> Result<(), ArchError> {
    check(gpr)?;
    gpr[RAX] = nr;
    gpr[RDI] = args[0];
    gpr[RSI] = args[1];
    gpr[RDX] = args[2];
    gpr[R10] = args[3];
    gpr[R8] = args[4];
    gpr[R9] = args[5];
    gpr[ORIG_RAX] = u64::MAX;
    gpr[RIP] = stub;
    gpr[EFLAGS] &= !(EFLAGS_TF | EFLAGS_DF);
    Ok(())
}

/// The syscall's return value (a negative errno on failure) after the stub trapped.
pub fn syscall_result(gpr: &[u64]) -> Result<i64, ArchError> {
    check(gpr)?;
    Ok(gpr[RAX] as i64)
}

/// Sets `gpr` up to call `entry(arg)` on a stack whose (exclusive) top is `stack_top`: rsp is
/// the 16-byte aligned top minus 8, where a `call` would have left its return address, so the
/// function sees the frame the System V ABI promises. Returns rsp.
pub fn set_call(gpr: &mut [u64], entry: u64, stack_top: u64, arg: u64) -> Result<u64, ArchError> {
    check(gpr)?;
    let sp = (stack_top & !15) - 8;
    gpr[RIP] = entry;
    gpr[RSP] = sp;
    gpr[RDI] = arg;
    gpr[RAX] = 0;
    gpr[ORIG_RAX] = u64::MAX;
    gpr[EFLAGS] &= !(EFLAGS_TF | EFLAGS_DF);
    Ok(sp)
}

/// The instruction pointer in `gpr`.
pub fn ip(gpr: &[u64]) -> Result<u64, ArchError> {
    check(gpr)?;
    Ok(gpr[RIP])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_registers_follow_the_kernel_abi() {
        let mut g = vec![0u64; GPR_WORDS];
        g[ORIG_RAX] = 35; // stopped inside nanosleep
        g[EFLAGS] = 0x246 | EFLAGS_TF | EFLAGS_DF;
        set_syscall(&mut g, 0x1000, nr::MMAP, [1, 2, 3, 4, 5, 6]).unwrap();
        assert_eq!(g[RAX], 9);
        assert_eq!(
            [g[RDI], g[RSI], g[RDX], g[R10], g[R8], g[R9]],
            [1, 2, 3, 4, 5, 6]
        );
        assert_eq!(g[ORIG_RAX] as i64, -1);
        assert_eq!(g[RIP], 0x1000);
        assert_eq!(g[EFLAGS], 0x246);
        g[RAX] = (-22i64) as u64;
        assert_eq!(syscall_result(&g).unwrap(), -22);
        assert_eq!(trap_address(0x1000 + STUB_TRAP_OFFSET + 1), 0x1002);
        assert_eq!(SYSCALL_STUB[STUB_TRAP_OFFSET as usize], 0xcc);
        assert!(set_syscall(&mut [0; 3], 0, 0, [0; 6]).is_err());
    }

    #[test]
    fn a_call_gets_an_abi_frame() {
        let mut g = vec![0u64; GPR_WORDS];
        let sp = set_call(&mut g, 0x5000, 0x9008, 0x7000).unwrap();
        assert_eq!(sp, 0x8ff8);
        assert_eq!((sp + 8) % 16, 0);
        assert_eq!(g[RSP], sp);
        assert_eq!(g[RIP], 0x5000);
        assert_eq!(g[RDI], 0x7000);
        assert_eq!(ip(&g).unwrap(), 0x5000);
    }
}
