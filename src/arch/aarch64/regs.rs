//! aarch64 register state: capture through PTRACE_GETREGSET, the (empty) syscall-restart
//! fix-up, and access to pc and sp.
//!
//! Registers are kept in the kernel's own regset layouts ([`ArchRegs::Aarch64`]): NT_PRSTATUS
//! is `struct user_pt_regs` (x0-x30, sp, pc, pstate: 34 u64), NT_PRFPREG `struct
//! user_fpsimd_state` (v0-v31, fpsr, fpcr: 528 bytes), NT_ARM_TLS TPIDR_EL0.
//!
//! Live SVE registers (the thread ran SVE code since its last system call) are kept too: the
//! NT_ARM_SVE regset as the kernel gives it, after the NT_PRFPREG bytes in the image's `fpsimd`
//! field, and put back by ptrace (the rt_sigframe carries only the FP/SIMD part).
//!
//! State the image does not carry is refused here, naming the thread: a vector length other
//! than crest's own when SVE is not live, SME state (streaming mode, ZA, TPIDR2), pointer
//! authentication keys, and the tagged-address / MTE controls.

use crate::arch::ArchError;
use crate::images::ArchRegs;
use crate::ptrace::{self, PtraceError};

/// NT_PRSTATUS (elf.h): `user_pt_regs`.
const NT_PRSTATUS: u32 = 1;
/// NT_PRFPREG (elf.h): `user_fpsimd_state`.
const NT_PRFPREG: u32 = 2;
/// NT_ARM_TLS (elf.h): TPIDR_EL0 (and TPIDR2_EL0 on SME machines).
const NT_ARM_TLS: u32 = 0x401;
/// NT_ARM_SVE (elf.h): `struct user_sve_header` followed by the registers.
const NT_ARM_SVE: u32 = 0x405;
/// NT_ARM_PAC_ENABLED_KEYS (elf.h): which pointer-authentication keys are enabled (u64).
const NT_ARM_PAC_ENABLED_KEYS: u32 = 0x40a;
/// NT_ARM_TAGGED_ADDR_CTRL (elf.h): prctl(PR_SET_TAGGED_ADDR_CTRL) state, MTE included (u64).
const NT_ARM_TAGGED_ADDR_CTRL: u32 = 0x409;
/// NT_ARM_SSVE (elf.h): streaming-mode SVE (SME), same header as NT_ARM_SVE.
const NT_ARM_SSVE: u32 = 0x40b;
/// NT_ARM_ZA (elf.h): `struct user_za_header`, followed by ZA when it is live.
const NT_ARM_ZA: u32 = 0x40c;

/// `user_pt_regs` is 34 u64: x0-x30, sp, pc, pstate.
pub const GPR_WORDS: usize = 34;
/// `user_fpsimd_state`: 32 x 16 bytes, fpsr, fpcr, 8 bytes of padding.
pub const FPSIMD_BYTES: usize = 528;
/// `struct user_sve_header` / `struct user_za_header`: size u32, max_size u32, vl u16,
/// max_vl u16, flags u16, reserved u16.
const SVE_HEADER: usize = 16;
/// `flags & SVE_PT_REGS_MASK`: SVE_PT_REGS_SVE means the SVE registers are live (the thread ran
/// SVE code since its last syscall); SVE_PT_REGS_FPSIMD means only the FP/SIMD view is.
const SVE_PT_REGS_MASK: u16 = 1;
const SVE_PT_REGS_SVE: u16 = 1;
/// NT_ARM_SVE at the architecture's largest vector length (256 bytes) is about 9 KiB; the
/// image keeps it after the 528 NT_PRFPREG bytes, within the validator's 64 KiB.
const SVE_STATE_MAX: usize = 60 << 10;
pub const SP: usize = 31;
pub const PC: usize = 32;
pub const PSTATE: usize = 33;

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

fn words(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().expect("chunks_exact(8)")))
        .collect()
}

/// A regset crest only inspects: `None` when this kernel or CPU does not have it (EINVAL for an
/// unknown note type, ENODEV for a feature the CPU lacks).
fn optional_regset(tid: i32, note: u32, buf: &mut [u8]) -> Result<Option<usize>, RegsError> {
    match ptrace::get_regset(tid, note, buf) {
        Ok(n) => Ok(Some(n)),
        Err(PtraceError::Request { errno, .. })
            if matches!(
                errno,
                nix::errno::Errno::EINVAL | nix::errno::Errno::ENODEV | nix::errno::Errno::EIO
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(RegsError::Ptrace(e)),
    }
}

fn refuse(tid: i32, what: String) -> RegsError {
    RegsError::Arch {
        tid,
        err: ArchError::Incompatible(what),
    }
}

/// crest's own SVE vector length in bytes (what a process it forks gets), or None without SVE.
fn own_sve_vl() -> Option<u16> {
    /// include/uapi/linux/prctl.h
    const PR_SVE_GET_VL: libc::c_int = 51;
    // SAFETY: prctl(PR_SVE_GET_VL) takes no pointers.
    let r = unsafe { libc::prctl(PR_SVE_GET_VL, 0, 0, 0, 0) };
    (r >= 0).then_some((r & 0xffff) as u16)
}

/// Refuses the extended register state of `tid` that the image does not carry.
fn refuse_extended_state(tid: i32) -> Result<(), RegsError> {
    let mut header = [0u8; SVE_HEADER];
    let u16_at = |b: &[u8], at: usize| u16::from_ne_bytes([b[at], b[at + 1]]);
    let u32_at = |b: &[u8], at: usize| u32::from_ne_bytes(b[at..at + 4].try_into().unwrap());
    if optional_regset(tid, NT_ARM_SVE, &mut header)? == Some(SVE_HEADER) {
        let (vl, flags) = (u16_at(&header, 8), u16_at(&header, 12));
        // Live SVE registers are captured (see `capture`), with their vector length.
        if flags & SVE_PT_REGS_MASK != SVE_PT_REGS_SVE {
            if let Some(own) = own_sve_vl() {
                if own != vl {
                    return Err(refuse(
                        tid,
                        format!(
                            "its SVE vector length is {vl} bytes, crest's is {own}: the image \
                             carries the vector length only with live SVE registers, and the \
                             restored thread would get {own}"
                        ),
                    ));
                }
            }
        }
    }
    if optional_regset(tid, NT_ARM_SSVE, &mut header)? == Some(SVE_HEADER)
        && u16_at(&header, 12) & SVE_PT_REGS_MASK == SVE_PT_REGS_SVE
    {
        return Err(refuse(
            tid,
            "it is in SME streaming mode (PSTATE.SM): crest does not carry SME state".into(),
        ));
    }
    if optional_regset(tid, NT_ARM_ZA, &mut header)? == Some(SVE_HEADER)
        && u32_at(&header, 0) as usize > SVE_HEADER
    {
        return Err(refuse(
            tid,
            "its SME ZA storage is live (PSTATE.ZA): crest does not carry SME state".into(),
        ));
    }
    let mut word = [0u8; 8];
    if optional_regset(tid, NT_ARM_PAC_ENABLED_KEYS, &mut word)? == Some(8) {
        let keys = u64::from_ne_bytes(word);
        if keys != 0 {
            return Err(refuse(
                tid,
                format!(
                    "pointer authentication is enabled for it (keys {keys:#x}, see \
                     NT_ARM_PACA_KEYS): crest does not carry the keys yet, and code signed \
                     with them would fault after restore; run on a CPU or kernel without \
                     pointer authentication (qemu: -cpu max,pauth=off)"
                ),
            ));
        }
    }
    if optional_regset(tid, NT_ARM_TAGGED_ADDR_CTRL, &mut word)? == Some(8) {
        let ctrl = u64::from_ne_bytes(word);
        if ctrl != 0 {
            let mte = ctrl & !1 != 0;
            return Err(refuse(
                tid,
                format!(
                    "it set prctl(PR_SET_TAGGED_ADDR_CTRL) to {ctrl:#x}{}: crest does not \
                     carry the tagged-address ABI or MTE state",
                    if mte { " (memory tagging, MTE)" } else { "" }
                ),
            ));
        }
    }
    Ok(())
}

/// Reads the general registers, the FP/SIMD registers and TPIDR_EL0 of the stopped thread
/// `tid`, after refusing extended state the image does not carry.
pub fn capture(tid: i32) -> Result<ArchRegs, RegsError> {
    let gpr = read_gprs(tid)?;
    refuse_extended_state(tid)?;
    let mut fpsimd = vec![0u8; FPSIMD_BYTES];
    let n = ptrace::get_regset(tid, NT_PRFPREG, &mut fpsimd)?;
    if n != FPSIMD_BYTES {
        return Err(RegsError::Arch {
            tid,
            err: ArchError::BadRegset {
                what: "NT_PRFPREG",
                got: n,
                expected: FPSIMD_BYTES,
            },
        });
    }
    // 16 bytes on SME machines: TPIDR_EL0 then TPIDR2_EL0.
    let mut tls = [0u8; 16];
    let n = ptrace::get_regset(tid, NT_ARM_TLS, &mut tls)?;
    if n < 8 {
        return Err(RegsError::Arch {
            tid,
            err: ArchError::BadRegset {
                what: "NT_ARM_TLS",
                got: n,
                expected: 8,
            },
        });
    }
    if n >= 16 && tls[8..16] != [0; 8] {
        return Err(refuse(
            tid,
            "its TPIDR2_EL0 (SME lazy ZA save) is set: crest does not carry SME state".into(),
        ));
    }
    if let Some(sve) = live_sve(tid)? {
        fpsimd.extend_from_slice(&sve);
    }
    Ok(ArchRegs::Aarch64 {
        gpr,
        fpsimd,
        tls: u64::from_ne_bytes(tls[..8].try_into().expect("8 bytes")),
    })
}

/// The NT_ARM_SVE regset of `tid` (header and registers, as the kernel gives it) when its SVE
/// registers are live, else None.
fn live_sve(tid: i32) -> Result<Option<Vec<u8>>, RegsError> {
    let mut header = [0u8; SVE_HEADER];
    if optional_regset(tid, NT_ARM_SVE, &mut header)? != Some(SVE_HEADER) {
        return Ok(None);
    }
    let flags = u16::from_ne_bytes([header[12], header[13]]);
    if flags & SVE_PT_REGS_MASK != SVE_PT_REGS_SVE {
        return Ok(None);
    }
    let size = u32::from_ne_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    if !(SVE_HEADER..=SVE_STATE_MAX).contains(&size) {
        return Err(RegsError::Arch {
            tid,
            err: ArchError::BadRegset {
                what: "NT_ARM_SVE",
                got: size,
                expected: SVE_STATE_MAX,
            },
        });
    }
    let mut state = vec![0u8; size];
    let n = ptrace::get_regset(tid, NT_ARM_SVE, &mut state)?;
    state.truncate(n);
    Ok(Some(state))
}

/// Whether this machine has SVE (crest can ask for its own vector length).
pub fn have_sve() -> bool {
    own_sve_vl().is_some()
}

/// The live SVE registers kept after the NT_PRFPREG bytes of a captured register set (the
/// image's `fpsimd` field holds NT_PRFPREG, then, only for a thread whose SVE registers were
/// live, the NT_ARM_SVE regset as captured).
pub fn sve_state(regs: &ArchRegs) -> Option<&[u8]> {
    match regs {
        ArchRegs::Aarch64 { fpsimd, .. } if fpsimd.len() > FPSIMD_BYTES => {
            Some(&fpsimd[FPSIMD_BYTES..])
        }
        _ => None,
    }
}

/// Loads SVE registers ([`sve_state`]) into the stopped thread `tid`; this also sets its vector
/// length to the saved one.
pub fn set_sve_state(tid: i32, state: &[u8]) -> Result<(), RegsError> {
    ptrace::set_regset(tid, NT_ARM_SVE, state)?;
    Ok(())
}

/// Nothing to fix: on arm64 the kernel has already rewound pc onto the `svc` and put the first
/// argument back into x0 for every restart code before the ptrace stop
/// (arch/arm64/kernel/signal.c, `do_signal`, "so that a debugger will see the already changed
/// PC"), and x8 still holds the syscall number. A snapshot is re-executable as it is; the x86
/// rule would move pc one instruction too far back. A call that used a restart block
/// (nanosleep, clock_nanosleep, futex and poll with timeouts) runs again from the start with
/// its original arguments, which is what it would do after restore on x86 minus the EINTR.
pub fn fixup_syscall_restart(regs: &mut ArchRegs) -> Result<SyscallRestart, ArchError> {
    gpr(regs)?;
    Ok(SyscallRestart::None)
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
    Ok(words(&bytes))
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

/// [`restore`] for a thread that leaves the restorer from a breakpoint stop instead of through
/// rt_sigreturn. The same on aarch64: a breakpoint is no system call (syscallno is
/// NO_SYSCALL at the stop, and NT_PRSTATUS does not change it), so the kernel restarts none.
pub fn restore_outside_syscall(tid: i32, regs: &ArchRegs) -> Result<(), RegsError> {
    restore(tid, regs)
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
    if fpsimd.len() < FPSIMD_BYTES {
        return Err(RegsError::Arch {
            tid,
            err: ArchError::BadRegset {
                what: "saved NT_PRFPREG",
                got: fpsimd.len(),
                expected: FPSIMD_BYTES,
            },
        });
    }
    ptrace::set_regset(tid, NT_PRFPREG, &fpsimd[..FPSIMD_BYTES])?;
    if let Some(sve) = sve_state(regs) {
        set_sve_state(tid, sve)?;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A child spinning in SVE code (z0 = 7 in every byte, no system call), caught by ptrace:
    /// its live SVE registers are captured after the NT_PRFPREG bytes and put back.
    #[test]
    fn live_sve_registers_are_captured_and_put_back() {
        if !have_sve() {
            eprintln!("no SVE on this machine: nothing to check");
            return;
        }
        // SAFETY: the child only spins in asm and never returns into Rust code.
        let child = match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                // SAFETY: SVE instructions on registers only; the loop never ends.
                unsafe {
                    core::arch::asm!(
                        ".arch_extension sve",
                        "ptrue p0.b",
                        "dup z0.b, #7",
                        "2:",
                        "b 2b",
                        options(noreturn)
                    )
                }
            }
            nix::unistd::ForkResult::Parent { child } => child.as_raw(),
        };
        let kill = |pid: i32| {
            // SAFETY: kill and waitpid on our own child, by pid.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        };
        // Let it reach the loop (it has run SVE code once it spins), then stop it.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let result = (|| -> Result<(), String> {
            ptrace::seize(child, nix::sys::ptrace::Options::empty()).map_err(|e| e.to_string())?;
            ptrace::interrupt(child).map_err(|e| e.to_string())?;
            ptrace::wait_stop(child).map_err(|e| e.to_string())?;
            let regs = capture(child).map_err(|e| e.to_string())?;
            let sve = sve_state(&regs)
                .ok_or("no live SVE state captured")?
                .to_vec();
            let vl = u16::from_ne_bytes([sve[8], sve[9]]) as usize;
            // SVE_PT_SVE_ZREG_OFFSET(vq, 0): z0 right after the 16-byte header.
            if sve.len() < SVE_HEADER + vl
                || sve[SVE_HEADER..SVE_HEADER + vl].iter().any(|&b| b != 7)
            {
                return Err(format!("z0 is not 7 in every byte: {:?}", &sve[..32]));
            }
            restore(child, &regs).map_err(|e| e.to_string())?;
            let again = capture(child).map_err(|e| e.to_string())?;
            if sve_state(&again) != Some(&sve[..]) {
                return Err("the SVE state read back differs".into());
            }
            Ok(())
        })();
        kill(child);
        result.unwrap();
    }
}
