//! The arm64 `struct rt_sigframe` that rt_sigreturn consumes (arch/arm64/kernel/signal.c,
//! arch/arm64/include/uapi/asm/{sigcontext,ucontext}.h).
//!
//! The restorer ends with rt_sigreturn on a frame built here, which loads x0-x30, sp, pc,
//! pstate, the signal mask, the alternate signal stack and the FP/SIMD registers in one step.
//! Layout, from the frame address (which must be 16-byte aligned: the kernel reads the frame at
//! sp and refuses an sp that is not):
//!
//! ```text
//!    0  siginfo           128 bytes (zero)
//!  128  ucontext          uc_flags u64, uc_link u64, uc_stack {ss_sp u64, ss_flags i32 + pad,
//!                         ss_size u64}, uc_sigmask (8) and padding up to 1024 bits,
//!  304  uc_mcontext       fault_address u64, regs[31], sp, pc, pstate (all u64),
//!  592  __reserved        4096 bytes of records {magic u32, size u32, ...}:
//!                         fpsimd_context (magic 0x46508001, 528 bytes: fpsr u32, fpcr u32,
//!                         vregs[32] of 16 bytes), then the end marker {0, 0}
//! 4688  (end)
//! ```

use crate::arch::ArchError;
use crate::images::ArchRegs;

use super::regs::{FPSIMD_BYTES, GPR_WORDS, PC, PSTATE, SP};

const SIGINFO_SIZE: usize = 128;
const UC: usize = SIGINFO_SIZE;
const UC_FLAGS: usize = UC;
const UC_LINK: usize = UC + 8;
const UC_STACK_SP: usize = UC + 16;
const UC_STACK_FLAGS: usize = UC + 24;
const UC_STACK_SIZE: usize = UC + 32;
const UC_SIGMASK: usize = UC + 40;
/// uc_sigmask is followed by padding to 1024 bits (128 bytes), then the 16-byte aligned
/// sigcontext: 40 + 128 = 168, rounded up to 176.
const MCONTEXT: usize = UC + 176;
const SC_FAULT_ADDRESS: usize = MCONTEXT;
const SC_REGS: usize = MCONTEXT + 8;
const SC_SP: usize = SC_REGS + 31 * 8;
const SC_PC: usize = SC_SP + 8;
const SC_PSTATE: usize = SC_PC + 8;
/// `__reserved` is 16-byte aligned: 8 bytes of padding after pstate.
const SC_RESERVED: usize = (SC_PSTATE + 8).next_multiple_of(16);
const RESERVED_SIZE: usize = 4096;
/// `sizeof(struct rt_sigframe)`.
const RT_SIGFRAME_SIZE: usize = SC_RESERVED + RESERVED_SIZE;

/// `struct fpsimd_context`: head {magic, size}, fpsr, fpcr, then vregs at offset 16.
const FPSIMD_MAGIC: u32 = 0x4650_8001;
const FPSIMD_CONTEXT_SIZE: u32 = 16 + 32 * 16;
/// In `user_fpsimd_state` (NT_PRFPREG): vregs at 0, fpsr at 512, fpcr at 516.
const USER_FPSR: usize = 512;
const USER_FPCR: usize = 516;
/// `ss_flags` value that turns the alternate signal stack off.
const SS_DISABLE: i32 = 2;

/// The alternate signal stack to install with the frame; `None` disables it.
pub use crate::images::AltStack;

/// Bytes needed for a frame. On arm64 the FP/SIMD state fits in the frame's own reserved area,
/// so `_xstate_len` (an x86 notion) does not change the size; 16 spare bytes keep the next
/// frame 16-byte aligned.
pub fn frame_size(_xstate_len: usize) -> usize {
    RT_SIGFRAME_SIZE + 16
}

/// Builds the rt_sigframe that rt_sigreturn consumes, for a frame placed at `frame_addr`
/// (crest writes `out` at that address). Returns the sp value to use for rt_sigreturn (the
/// frame address itself). The alternate signal stack is disabled.
pub fn build(
    regs: &ArchRegs,
    sigmask: u64,
    frame_addr: u64,
    out: &mut [u8],
) -> Result<u64, ArchError> {
    build_with_altstack(regs, sigmask, None, frame_addr, out)
}

/// [`build`] with the alternate signal stack the task had (rt_sigreturn installs it).
pub fn build_with_altstack(
    regs: &ArchRegs,
    sigmask: u64,
    altstack: Option<AltStack>,
    frame_addr: u64,
    out: &mut [u8],
) -> Result<u64, ArchError> {
    let ArchRegs::Aarch64 { gpr, fpsimd, .. } = regs else {
        return Err(ArchError::Incompatible(
            "the image holds registers of another architecture than aarch64".into(),
        ));
    };
    if gpr.len() != GPR_WORDS {
        return Err(ArchError::BadRegset {
            what: "aarch64 general registers (NT_PRSTATUS)",
            got: gpr.len() * 8,
            expected: GPR_WORDS * 8,
        });
    }
    // Live SVE registers may follow (put back by ptrace after rt_sigreturn, see regs.rs).
    if fpsimd.len() < FPSIMD_BYTES {
        return Err(ArchError::BadRegset {
            what: "aarch64 FP/SIMD registers (NT_PRFPREG)",
            got: fpsimd.len(),
            expected: FPSIMD_BYTES,
        });
    }
    if frame_addr % 16 != 0 {
        return Err(ArchError::Incompatible(format!(
            "rt_sigframe address {frame_addr:#x} is not 16-byte aligned"
        )));
    }
    if out.len() < RT_SIGFRAME_SIZE {
        return Err(ArchError::BadRegset {
            what: "buffer for the rt_sigframe",
            got: out.len(),
            expected: RT_SIGFRAME_SIZE,
        });
    }
    let out = &mut out[..RT_SIGFRAME_SIZE];
    out.fill(0);

    put_u64(out, UC_FLAGS, 0);
    put_u64(out, UC_LINK, 0);
    let stack = altstack.unwrap_or(AltStack {
        sp: 0,
        flags: SS_DISABLE,
        size: 0,
    });
    put_u64(out, UC_STACK_SP, stack.sp);
    out[UC_STACK_FLAGS..UC_STACK_FLAGS + 4].copy_from_slice(&stack.flags.to_le_bytes());
    put_u64(out, UC_STACK_SIZE, stack.size);
    put_u64(out, UC_SIGMASK, sigmask);

    put_u64(out, SC_FAULT_ADDRESS, 0);
    for (i, &value) in gpr[..31].iter().enumerate() {
        put_u64(out, SC_REGS + 8 * i, value);
    }
    put_u64(out, SC_SP, gpr[SP]);
    put_u64(out, SC_PC, gpr[PC]);
    put_u64(out, SC_PSTATE, gpr[PSTATE]);

    let rec = SC_RESERVED;
    put_u32(out, rec, FPSIMD_MAGIC);
    put_u32(out, rec + 4, FPSIMD_CONTEXT_SIZE);
    out[rec + 8..rec + 12].copy_from_slice(&fpsimd[USER_FPSR..USER_FPSR + 4]);
    out[rec + 12..rec + 16].copy_from_slice(&fpsimd[USER_FPCR..USER_FPCR + 4]);
    out[rec + 16..rec + 16 + 512].copy_from_slice(&fpsimd[..512]);
    // The end marker {magic 0, size 0} follows; the buffer is zero already.
    Ok(frame_addr)
}

/// Dynamically enabled state components: none that crest knows of on aarch64.
pub fn dynamic_features(_regs: &ArchRegs) -> Vec<u32> {
    Vec::new()
}

/// Nothing to ask the kernel for on aarch64.
pub fn request_dynamic_features(_threads: &[&ArchRegs]) -> Result<(), String> {
    Ok(())
}

fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    const X19: u64 = 0x1122_3344_5566_7788;
    const X20: u64 = 0x99aa_bbcc_ddee_ff00;
    const V8_LO: u64 = 0x0123_4567_89ab_cdef;
    const V8_HI: u64 = 0xfedc_ba98_7654_3210;
    /// SIGUSR1 and SIGUSR2 (10 and 12): bit n-1 of the kernel sigset.
    const MASK: u64 = (1 << 9) | (1 << 11);

    #[test]
    fn layout_matches_the_kernel_structs() {
        assert_eq!(RT_SIGFRAME_SIZE, 4688);
        assert_eq!(SC_RESERVED - MCONTEXT, 288);
        assert_eq!(MCONTEXT % 16, 0);
        let mut gpr: Vec<u64> = (0..GPR_WORDS as u64).map(|i| 0x1000 + i).collect();
        gpr[PSTATE] = 0x2000_0000;
        let mut fpsimd = vec![0u8; FPSIMD_BYTES];
        fpsimd[16 * 8..16 * 8 + 8].copy_from_slice(&V8_LO.to_le_bytes());
        fpsimd[USER_FPSR..USER_FPSR + 4].copy_from_slice(&0x11u32.to_le_bytes());
        fpsimd[USER_FPCR..USER_FPCR + 4].copy_from_slice(&0x0280_0000u32.to_le_bytes());
        let regs = ArchRegs::Aarch64 {
            gpr,
            fpsimd,
            tls: 7,
        };
        let mut out = vec![0xffu8; frame_size(0)];
        let sp = build(&regs, MASK, 0x10_0000, &mut out).unwrap();
        assert_eq!(sp, 0x10_0000);
        let u64_at = |at: usize| u64::from_le_bytes(out[at..at + 8].try_into().unwrap());
        let u32_at = |at: usize| u32::from_le_bytes(out[at..at + 4].try_into().unwrap());
        assert_eq!(u64_at(UC_SIGMASK), MASK);
        assert_eq!(u32_at(UC_STACK_FLAGS), SS_DISABLE as u32);
        assert_eq!(u64_at(SC_REGS), 0x1000);
        assert_eq!(u64_at(SC_REGS + 30 * 8), 0x1000 + 30);
        assert_eq!(u64_at(SC_SP), 0x1000 + 31);
        assert_eq!(u64_at(SC_PC), 0x1000 + 32);
        assert_eq!(u64_at(SC_PSTATE), 0x2000_0000);
        assert_eq!(u32_at(SC_RESERVED), FPSIMD_MAGIC);
        assert_eq!(u32_at(SC_RESERVED + 4), 528);
        assert_eq!(u32_at(SC_RESERVED + 8), 0x11);
        assert_eq!(u32_at(SC_RESERVED + 12), 0x0280_0000);
        assert_eq!(u64_at(SC_RESERVED + 16 + 16 * 8), V8_LO);
        assert_eq!(u64_at(SC_RESERVED + 528), 0, "end marker");
        assert!(build(&regs, 0, 0x10_0008, &mut out).is_err(), "misaligned");
        assert!(
            build(&regs, 0, 0x10_0000, &mut out[..100]).is_err(),
            "short"
        );
    }

    #[cfg(target_arch = "aarch64")]
    mod live {
        use super::*;

        /// Where rt_sigreturn lands: checks x19, x20, v8 and the signal mask, exits with a
        /// bit per mismatch.
        extern "C" fn check_landing(x19: u64, x20: u64, lo: u64, hi: u64) -> ! {
            let mut bad = 0;
            if x19 != X19 {
                bad |= 1;
            }
            if x20 != X20 {
                bad |= 2;
            }
            if lo != V8_LO || hi != V8_HI {
                bad |= 4;
            }
            // SAFETY: sigset_t is plain data; all-zero is a valid (empty) set.
            let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
            // SAFETY: sigprocmask writes the current mask into `set`.
            unsafe { libc::sigprocmask(libc::SIG_BLOCK, std::ptr::null(), &mut set) };
            // SAFETY: reading our own sigset's membership.
            let usr = unsafe {
                libc::sigismember(&set, libc::SIGUSR1) == 1
                    && libc::sigismember(&set, libc::SIGUSR2) == 1
            };
            if !usr {
                bad |= 8;
            }
            // SAFETY: _exit ends the forked child only.
            unsafe { libc::_exit(bad) }
        }

        /// Moves x19, x20 and v8 into the argument registers and calls check_landing.
        #[unsafe(naked)]
        extern "C" fn landing() -> ! {
            core::arch::naked_asm!(
                "mov x0, x19",
                "mov x1, x20",
                "fmov x2, d8",
                "mov x3, v8.d[1]",
                "b {check}",
                check = sym check_landing,
            )
        }

        #[test]
        fn rt_sigreturn_loads_the_frame() {
            let stack = vec![0u8; 256 * 1024];
            let mut gpr = vec![0u64; GPR_WORDS];
            gpr[19] = X19;
            gpr[20] = X20;
            gpr[SP] = (stack.as_ptr() as u64 + stack.len() as u64) & !15;
            gpr[PC] = landing as *const () as usize as u64;
            // EL0t, interrupts unmasked: what a user thread has.
            gpr[PSTATE] = 0;
            let mut fpsimd = vec![0u8; FPSIMD_BYTES];
            fpsimd[16 * 8..16 * 8 + 8].copy_from_slice(&V8_LO.to_le_bytes());
            fpsimd[16 * 8 + 8..16 * 9].copy_from_slice(&V8_HI.to_le_bytes());
            let regs = ArchRegs::Aarch64 {
                gpr,
                fpsimd,
                tls: 0,
            };
            let mut buf = vec![0u8; frame_size(0) + 16];
            let base = buf.as_ptr() as u64;
            let skip = ((16 - base % 16) % 16) as usize;
            let frame_addr = base + skip as u64;
            let sp = build(&regs, MASK, frame_addr, &mut buf[skip..]).unwrap();
            // SAFETY: the child only switches to the prepared frame (copied by fork at the same
            // address) and ends in check_landing's _exit; it takes no locks.
            match unsafe { nix::unistd::fork() }.unwrap() {
                nix::unistd::ForkResult::Child => {
                    // SAFETY: `sp` is a complete rt_sigframe; rt_sigreturn does not return.
                    unsafe {
                        core::arch::asm!("mov sp, {0}", "mov x8, #139", "svc #0", "brk #1",
                                         in(reg) sp, options(noreturn));
                    }
                }
                nix::unistd::ForkResult::Parent { child } => {
                    let status = nix::sys::wait::waitpid(child, None).unwrap();
                    assert_eq!(
                        status,
                        nix::sys::wait::WaitStatus::Exited(child, 0),
                        "exit code bits: 1 x19, 2 x20, 4 v8, 8 signal mask"
                    );
                }
            }
            drop(buf);
        }
    }
}
