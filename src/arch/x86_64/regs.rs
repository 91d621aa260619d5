//! x86_64 register state: capture through PTRACE_GETREGSET, the syscall-restart fix-up, and
//! access to the instruction pointer.
//!
//! Registers are kept in the kernel's own regset layouts ([`ArchRegs::X86_64`]): NT_PRSTATUS is
//! `struct user_regs_struct` (27 u64), NT_X86_XSTATE the standard-format XSAVE area.

use crate::arch::ArchError;
use crate::images::ArchRegs;
use crate::ptrace::{self, PtraceError};

/// NT_PRSTATUS (elf.h): the general registers.
const NT_PRSTATUS: u32 = 1;
/// NT_X86_XSTATE (elf.h): the XSAVE area in standard (non-compacted) format.
const NT_X86_XSTATE: u32 = 0x202;
/// `user_regs_struct` is 27 u64 for a 64-bit task; a compat (32-bit) task reports 17 u32.
pub const GPR_WORDS: usize = 27;
/// Buffer for NT_X86_XSTATE. The size comes from CPUID leaf 0xD and is whatever the kernel
/// returns (11008 bytes with AMX on Sapphire Rapids); 64 KiB leaves room for future features.
const XSTATE_BUF: usize = 64 * 1024;

thread_local! {
    /// The buffer NT_X86_XSTATE is read into (ptrace calls for one tracee all come from one
    /// crest thread anyway).
    static XSTATE_SCRATCH: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(vec![0u8; XSTATE_BUF]);
}

/// Word indices in `user_regs_struct` (arch/x86/include/asm/user_64.h), the NT_PRSTATUS order:
/// r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs eflags rsp ss
/// fs_base gs_base ds es fs gs.
pub const R15: usize = 0;
pub const R14: usize = 1;
pub const R13: usize = 2;
pub const R12: usize = 3;
pub const RBP: usize = 4;
pub const RBX: usize = 5;
pub const R11: usize = 6;
pub const R10: usize = 7;
pub const R9: usize = 8;
pub const R8: usize = 9;
pub const RAX: usize = 10;
pub const RCX: usize = 11;
pub const RDX: usize = 12;
pub const RSI: usize = 13;
pub const RDI: usize = 14;
pub const ORIG_RAX: usize = 15;
pub const RIP: usize = 16;
pub const CS: usize = 17;
pub const EFLAGS: usize = 18;
pub const RSP: usize = 19;
pub const SS: usize = 20;
pub const FS_BASE: usize = 21;
pub const GS_BASE: usize = 22;

/// Kernel-internal restart codes a thread stopped in a syscall may hold in rax
/// (include/linux/errno.h); user space never sees them.
const ERESTARTSYS: i64 = 512;
const ERESTARTNOINTR: i64 = 513;
const ERESTARTNOHAND: i64 = 514;
const ERESTART_RESTARTBLOCK: i64 = 516;
/// The length of the `syscall` instruction (0f 05).
const SYSCALL_INSN_LEN: u64 = 2;

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
    /// Not stopped inside an interrupted syscall: nothing changed.
    None,
    /// The syscall will be executed again after restore (rax = orig_rax, rip moved back onto
    /// the `syscall` instruction).
    Reexecute { nr: u64 },
    /// The syscall (`nr`) used a kernel restart block, which cannot be carried over: it returns
    /// -EINTR after restore, as after a signal with SA_RESTART unset.
    Interrupted { nr: u64 },
}

/// Reads the general registers and the XSAVE area of the stopped thread `tid`.
pub fn capture(tid: i32) -> Result<ArchRegs, RegsError> {
    let mut gpr_bytes = [0u8; GPR_WORDS * 8];
    let n = ptrace::get_regset(tid, NT_PRSTATUS, &mut gpr_bytes)?;
    if n != gpr_bytes.len() {
        // The returned size is how the kernel tells a compat (ia32/x32) task from a native one.
        return Err(RegsError::Arch {
            tid,
            err: ArchError::BadRegset {
                what: "NT_PRSTATUS (a 32-bit task? only 64-bit processes can be dumped)",
                got: n,
                expected: gpr_bytes.len(),
            },
        });
    }
    let gpr: Vec<u64> = gpr_bytes
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().expect("chunks_exact(8)")))
        .collect();

    // The kernel writes only the area's real size (a few KiB) into the large buffer: read into
    // one scratch buffer per crest thread and copy out that much, rather than allocating and
    // zeroing 64 KiB for each of a JVM's thousand threads.
    let read = XSTATE_SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let n = ptrace::get_regset(tid, NT_X86_XSTATE, &mut scratch)?;
        Ok::<_, PtraceError>(scratch[..n].to_vec())
    });
    let xstate = read.map_err(|e| match e {
        PtraceError::Request {
            errno: nix::errno::Errno::ENODEV,
            ..
        } => RegsError::Arch {
            tid,
            err: ArchError::Unsupported("a CPU without XSAVE"),
        },
        e => RegsError::Ptrace(e),
    })?;
    let mut xstate = xstate;
    let n = xstate.len();
    // The legacy FXSAVE area (512 bytes) plus the XSAVE header (64 bytes) is the minimum.
    if n < 576 {
        return Err(RegsError::Arch {
            tid,
            err: ArchError::BadRegset {
                what: "NT_X86_XSTATE",
                got: n,
                expected: 576,
            },
        });
    }
    // Only up to the last component in use: the rest is zeros (initial state), and a JVM's
    // thousand threads would otherwise carry 8 KiB of unused AMX tile space each into the
    // image, the restore's decoding and hashing. The whole size is recorded in the area, and
    // [`restore`] pads it back to that.
    super::sigframe::stamp_full_len(&mut xstate);
    xstate.truncate(super::sigframe::used_len(&xstate).min(n));
    Ok(ArchRegs::X86_64 { gpr, xstate })
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

/// Puts back into the stopped thread `tid` everything [`capture`] read: the general registers
/// and the XSAVE area (the kernel wants the whole standard-format area, as GETREGSET returned
/// it: what capture left out is zeros).
pub fn restore(tid: i32, regs: &ArchRegs) -> Result<(), RegsError> {
    restore_with_orig_rax(tid, regs, None)
}

/// [`restore`] for a thread that leaves the restorer from a breakpoint stop instead of through
/// rt_sigreturn: orig_rax is -1, as rt_sigreturn leaves it, so that the kernel, resuming the
/// thread from its signal stop, restarts no system call (the image's registers have the
/// restart rules applied already, see [`fixup_syscall_restart`]).
pub fn restore_outside_syscall(tid: i32, regs: &ArchRegs) -> Result<(), RegsError> {
    restore_with_orig_rax(tid, regs, Some(u64::MAX))
}

fn restore_with_orig_rax(
    tid: i32,
    regs: &ArchRegs,
    orig_rax: Option<u64>,
) -> Result<(), RegsError> {
    let (gpr_words, xstate) = match regs {
        ArchRegs::X86_64 { gpr, xstate } => (gpr, xstate),
        _ => {
            return Err(RegsError::Arch {
                tid,
                err: ArchError::Incompatible("the registers are not x86_64 registers".into()),
            })
        }
    };
    let mut words = gpr_words.clone();
    // write_gprs refuses a set of the wrong length, so a missing slot cannot slip through.
    if let (Some(orig), Some(slot)) = (orig_rax, words.get_mut(ORIG_RAX)) {
        *slot = orig;
    }
    write_gprs(tid, &words)?;
    // The kernel takes only the whole area: zeros (initial state) after what was kept.
    let full = super::sigframe::full_len(xstate);
    if full > xstate.len() {
        let mut whole = xstate.clone();
        whole.resize(full, 0);
        ptrace::set_regset(tid, NT_X86_XSTATE, &whole)?;
    } else {
        ptrace::set_regset(tid, NT_X86_XSTATE, xstate)?;
    }
    Ok(())
}

fn gpr_mut(regs: &mut ArchRegs) -> Result<&mut [u64], ArchError> {
    gpr(regs)?;
    match regs {
        ArchRegs::X86_64 { gpr, .. } => Ok(gpr),
        _ => Err(ArchError::Incompatible(
            "the registers are not x86_64 registers".into(),
        )),
    }
}

fn gpr(regs: &ArchRegs) -> Result<&[u64], ArchError> {
    match regs {
        ArchRegs::X86_64 { gpr, .. } if gpr.len() == GPR_WORDS => Ok(gpr),
        ArchRegs::X86_64 { gpr, .. } => Err(ArchError::BadRegset {
            what: "saved x86_64 general registers",
            got: gpr.len() * 8,
            expected: GPR_WORDS * 8,
        }),
        _ => Err(ArchError::Incompatible(
            "the registers are not x86_64 registers".into(),
        )),
    }
}

/// Applies the x86 syscall-restart rules to *saved* registers (never to a live thread).
///
/// A ptrace stop happens inside `get_signal()`, before the arch signal code would rewrite rax
/// and rip, so a thread stopped in an interrupted syscall shows the raw -ERESTART* code. The
/// restore returns through rt_sigreturn, which sets orig_rax = -1 so the kernel restarts
/// nothing itself; the image must therefore hold what the kernel would have done
/// (arch/x86/kernel/signal.c, `arch_do_signal_or_restart` with no handler):
/// - -ERESTARTSYS, -ERESTARTNOINTR, -ERESTARTNOHAND: rax = orig_rax, rip -= 2 (re-execute);
/// - -ERESTART_RESTARTBLOCK: the restart block lives in the kernel and cannot be carried over,
///   so the call returns -EINTR.
pub fn fixup_syscall_restart(regs: &mut ArchRegs) -> Result<SyscallRestart, ArchError> {
    let gpr = gpr_mut(regs)?;
    let orig_rax = gpr[ORIG_RAX] as i64;
    if orig_rax < 0 {
        return Ok(SyscallRestart::None);
    }
    let rax = gpr[RAX] as i64;
    match -rax {
        ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
            gpr[RAX] = gpr[ORIG_RAX];
            gpr[RIP] = gpr[RIP].wrapping_sub(SYSCALL_INSN_LEN);
            Ok(SyscallRestart::Reexecute {
                nr: orig_rax as u64,
            })
        }
        ERESTART_RESTARTBLOCK => {
            gpr[RAX] = (-(libc::EINTR as i64)) as u64;
            Ok(SyscallRestart::Interrupted {
                nr: orig_rax as u64,
            })
        }
        _ => Ok(SyscallRestart::None),
    }
}

/// The general registers (NT_PRSTATUS words) of a captured register set, as
/// [`read_gprs`] would read them from the thread.
pub fn general(regs: &ArchRegs) -> Result<&[u64], ArchError> {
    gpr(regs)
}

/// The saved instruction pointer (rip).
pub fn instruction_pointer(regs: &ArchRegs) -> Result<u64, ArchError> {
    Ok(gpr(regs)?[RIP])
}

/// Sets the saved instruction pointer (rip), e.g. to an rseq abort handler.
pub fn set_instruction_pointer(regs: &mut ArchRegs, ip: u64) -> Result<(), ArchError> {
    gpr_mut(regs)?[RIP] = ip;
    Ok(())
}

/// The saved stack pointer (rsp).
pub fn stack_pointer(regs: &ArchRegs) -> Result<u64, ArchError> {
    Ok(gpr(regs)?[RSP])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs_with(orig_rax: i64, rax: i64, rip: u64) -> ArchRegs {
        let mut gpr = vec![0u64; GPR_WORDS];
        gpr[ORIG_RAX] = orig_rax as u64;
        gpr[RAX] = rax as u64;
        gpr[RIP] = rip;
        ArchRegs::X86_64 {
            gpr,
            xstate: vec![0; 576],
        }
    }

    fn rax_rip(regs: &ArchRegs) -> (i64, u64) {
        let g = gpr(regs).unwrap();
        (g[RAX] as i64, g[RIP])
    }

    #[test]
    fn restartable_codes_reexecute_the_syscall() {
        for code in [ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND] {
            let mut r = regs_with(35, -code, 0x1002);
            assert_eq!(
                fixup_syscall_restart(&mut r).unwrap(),
                SyscallRestart::Reexecute { nr: 35 }
            );
            assert_eq!(rax_rip(&r), (35, 0x1000));
        }
    }

    #[test]
    fn restart_block_becomes_eintr() {
        let mut r = regs_with(230, -ERESTART_RESTARTBLOCK, 0x2002);
        assert_eq!(
            fixup_syscall_restart(&mut r).unwrap(),
            SyscallRestart::Interrupted { nr: 230 }
        );
        assert_eq!(rax_rip(&r), (-(libc::EINTR as i64), 0x2002));
    }

    #[test]
    fn outside_a_syscall_nothing_changes() {
        // orig_rax = -1: not in a syscall, even if rax happens to look like a restart code.
        let mut r = regs_with(-1, -ERESTARTSYS, 0x3000);
        assert_eq!(fixup_syscall_restart(&mut r).unwrap(), SyscallRestart::None);
        assert_eq!(rax_rip(&r), (-ERESTARTSYS, 0x3000));
        // A syscall that completed (or failed with an ordinary error) is left alone.
        let mut r = regs_with(0, -(libc::EAGAIN as i64), 0x3000);
        assert_eq!(fixup_syscall_restart(&mut r).unwrap(), SyscallRestart::None);
        assert_eq!(rax_rip(&r), (-(libc::EAGAIN as i64), 0x3000));
    }

    #[test]
    fn instruction_pointer_round_trips_and_wrong_arch_is_refused() {
        let mut r = regs_with(-1, 0, 0x4000);
        assert_eq!(instruction_pointer(&r).unwrap(), 0x4000);
        set_instruction_pointer(&mut r, 0x5000).unwrap();
        assert_eq!(instruction_pointer(&r).unwrap(), 0x5000);
        let other = ArchRegs::Aarch64 {
            gpr: vec![0; 34],
            fpsimd: vec![],
            tls: 0,
        };
        assert!(instruction_pointer(&other).is_err());
    }
}
