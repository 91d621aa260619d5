//! The x86_64 `struct rt_sigframe` that rt_sigreturn consumes (arch/x86/include/asm/sigframe.h).
//!
//! The restorer ends with rt_sigreturn on a frame built here, which loads every general
//! register, rflags, the signal mask, the alternate signal stack and the whole XSAVE state in
//! one step. Layout, from the frame address:
//!
//! ```text
//!   0  pretcode            u64 (unused: nobody returns through it)
//!   8  ucontext            uc_flags, uc_link, uc_stack {ss_sp, ss_flags i32 + pad, ss_size},
//!                          uc_mcontext (struct sigcontext_64, 256 bytes), uc_sigmask (8)
//! 312  siginfo             128 bytes (zero)
//! 440  ... padding to 64 ...
//!      fpstate             XSAVE area (standard format), 64-byte aligned, then magic2 (u32)
//! ```
//!
//! The kernel finds the frame at rsp - 8 (it expects to be entered after a `ret` popped
//! `pretcode`), so rt_sigreturn must run with rsp = frame address + 8.

use crate::arch::ArchError;
use crate::images::ArchRegs;

/// Word indices in `user_regs_struct` (NT_PRSTATUS), kept in one place.
use super::regs as gpr;
use super::regs::GPR_WORDS;

/// The u64 fields at the start of `struct sigcontext_64`, in order, as `user_regs_struct` indices.
const SIGCONTEXT_GPRS: [usize; 18] = [
    gpr::R8,
    gpr::R9,
    gpr::R10,
    gpr::R11,
    gpr::R12,
    gpr::R13,
    gpr::R14,
    gpr::R15,
    gpr::RDI,
    gpr::RSI,
    gpr::RBP,
    gpr::RBX,
    gpr::RDX,
    gpr::RAX,
    gpr::RCX,
    gpr::RSP,
    gpr::RIP,
    gpr::EFLAGS,
];

// Offsets from the frame address.
const UC: usize = 8;
const UC_FLAGS: usize = UC;
const UC_LINK: usize = UC + 8;
const UC_STACK_SP: usize = UC + 16;
const UC_STACK_FLAGS: usize = UC + 24;
const UC_STACK_SIZE: usize = UC + 32;
const MCONTEXT: usize = UC + 40;
const SIGMASK: usize = MCONTEXT + SIGCONTEXT_SIZE;
const SIGINFO: usize = SIGMASK + 8;
/// End of the fixed part (`sizeof(struct rt_sigframe)` = 440).
const FRAME_END: usize = SIGINFO + 128;

// Offsets inside `struct sigcontext_64` (uapi/asm/sigcontext.h), after the 18 u64 above.
const SC_CS: usize = 144;
const SC_GS: usize = 146;
const SC_FS: usize = 148;
const SC_SS: usize = 150;
const SC_FPSTATE: usize = 184;
const SIGCONTEXT_SIZE: usize = 256;

/// uc_flags (arch/x86/include/uapi/asm/ucontext.h): the fpstate carries extended (XSAVE)
/// state; `uc_mcontext.ss` is valid; restore ss exactly instead of the kernel's "fix up a
/// broken ss" heuristic for old DOSEMU/CRIU frames.
const UC_FP_XSTATE: u64 = 0x1;
const UC_SIGCONTEXT_SS: u64 = 0x2;
const UC_STRICT_RESTORE_SS: u64 = 0x4;
/// `ss_flags` value that turns the alternate signal stack off.
const SS_DISABLE: i32 = 2;

/// `struct _fpx_sw_bytes` lives in the software-available bytes of the FXSAVE area.
const SW_BYTES: usize = 464;
const SW_BYTES_LEN: usize = 48;
const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
/// Follows the XSAVE area; the kernel checks it to know the extended state is complete.
const FP_XSTATE_MAGIC2: u32 = 0x4650_5845;
const MAGIC2_SIZE: usize = 4;
/// XSAVE header: xstate_bv at 512, xcomp_bv at 520 (0 in standard format).
const XSTATE_BV: usize = 512;
const XCOMP_BV: usize = 520;
/// Legacy FXSAVE area plus XSAVE header: the smallest valid XSAVE area.
const XSTATE_MIN: usize = 576;
/// x87 and SSE, which the legacy area always holds.
const XFEATURE_MASK_FPSSE: u64 = 0x3;
/// XRSTOR needs its memory operand 64-byte aligned.
const FPSTATE_ALIGN: usize = 64;
/// Spare room at the end of the frame.
const SLACK: usize = 64;

/// The alternate signal stack to install with the frame; `None` disables it.
pub use crate::images::AltStack;

/// Bytes needed for a frame with an xstate area of `xstate_len` bytes (frame + 64-byte aligned
/// fpstate + magic2 + slack), whatever the frame address.
pub fn frame_size(xstate_len: usize) -> usize {
    (FRAME_END + (FPSTATE_ALIGN - 1) + xstate_len + MAGIC2_SIZE + SLACK).next_multiple_of(16)
}

/// Builds the rt_sigframe that rt_sigreturn consumes, for a frame placed at `frame_addr`
/// (crest writes `out` at that address). Returns the sp value to use for rt_sigreturn
/// (frame_addr + 8). The alternate signal stack is disabled.
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
    let (gprs, xstate) = match regs {
        ArchRegs::X86_64 { gpr, xstate } => (gpr, xstate),
        _ => {
            return Err(ArchError::Incompatible(
                "the image holds registers of another architecture than x86_64".into(),
            ))
        }
    };
    if gprs.len() != GPR_WORDS {
        return Err(ArchError::BadRegset {
            what: "x86_64 general registers (NT_PRSTATUS)",
            got: gprs.len() * 8,
            expected: GPR_WORDS * 8,
        });
    }
    check_xstate(xstate)?;
    let (xstate, xfeatures) = frame_xstate(xstate)?;

    let fp_addr = (frame_addr + FRAME_END as u64).next_multiple_of(FPSTATE_ALIGN as u64);
    let fp = (fp_addr - frame_addr) as usize;
    let needed = fp + xstate.len() + MAGIC2_SIZE;
    if out.len() < needed {
        return Err(ArchError::BadRegset {
            what: "buffer for the rt_sigframe",
            got: out.len(),
            expected: needed,
        });
    }
    let out = &mut out[..needed];
    out.fill(0);

    put_u64(
        out,
        UC_FLAGS,
        UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS,
    );
    put_u64(out, UC_LINK, 0);
    let stack = altstack.unwrap_or(AltStack {
        sp: 0,
        flags: SS_DISABLE,
        size: 0,
    });
    put_u64(out, UC_STACK_SP, stack.sp);
    out[UC_STACK_FLAGS..UC_STACK_FLAGS + 4].copy_from_slice(&stack.flags.to_le_bytes());
    put_u64(out, UC_STACK_SIZE, stack.size);

    for (i, &reg) in SIGCONTEXT_GPRS.iter().enumerate() {
        put_u64(out, MCONTEXT + 8 * i, gprs[reg]);
    }
    put_u16(out, MCONTEXT + SC_CS, gprs[gpr::CS] as u16);
    // fs/gs in sigcontext_64 are ignored by a 64-bit rt_sigreturn (the kernel writes 0 there
    // itself); FS/GS base are set by the restorer with arch_prctl.
    put_u16(out, MCONTEXT + SC_GS, 0);
    put_u16(out, MCONTEXT + SC_FS, 0);
    put_u16(out, MCONTEXT + SC_SS, gprs[gpr::SS] as u16);
    // err, trapno, oldmask, cr2 stay 0.
    put_u64(out, MCONTEXT + SC_FPSTATE, fp_addr);
    put_u64(out, SIGMASK, sigmask);

    let area = &mut out[fp..fp + xstate.len()];
    area.copy_from_slice(xstate);
    write_sw_bytes(area, xstate.len(), xfeatures);
    out[fp + xstate.len()..needed].copy_from_slice(&FP_XSTATE_MAGIC2.to_le_bytes());

    Ok(frame_addr + 8)
}

/// Fills `struct _fpx_sw_bytes`, without which the kernel restores only the legacy x87/SSE
/// part (`check_xstate_in_sigframe` in arch/x86/kernel/fpu/signal.c falls back to FXRSTOR when
/// magic1 or magic2 do not match, silently dropping AVX and later state).
fn write_sw_bytes(area: &mut [u8], xstate_len: usize, xfeatures: u64) {
    area[SW_BYTES..SW_BYTES + SW_BYTES_LEN].fill(0);
    put_u32(area, SW_BYTES, FP_XSTATE_MAGIC1);
    put_u32(area, SW_BYTES + 4, (xstate_len + MAGIC2_SIZE) as u32);
    put_u64(area, SW_BYTES + 8, xfeatures);
    put_u32(area, SW_BYTES + 16, xstate_len as u32);
}

/// XTILEDATA (AMX tiles): the one state component a process must ask the kernel for with
/// `arch_prctl(ARCH_REQ_XCOMP_PERM)` before using it (Documentation/arch/x86/xstate.rst).
pub const XFEATURE_XTILEDATA: u32 = 18;

/// The part of the saved XSAVE area the frame carries, and the components it restores.
///
/// NT_X86_XSTATE is as large as every component the CPU supports, AMX tile data included
/// (`fpu_user_cfg.max_size`), but `check_xstate_in_sigframe` only accepts an `xstate_size` up
/// to the task's own `fpstate->user_size`, which leaves out the dynamically enabled components
/// (AMX) unless the task asked for them. A larger size makes the kernel fall back to FXRSTOR:
/// the upper halves of the YMM registers, the AVX-512 state and the rest would be silently
/// reset. So the frame carries the area only up to the end of the last component the thread
/// uses (the header's `xstate_bv`; components not listed are in their initial state, and the
/// kernel initialises what the frame does not restore); a thread that uses AMX tile data keeps
/// the whole area, and its process asks for AMX first ([`dynamic_features`]).
fn frame_xstate(xstate: &[u8]) -> Result<(&[u8], u64), ArchError> {
    let used = get_u64(xstate, XSTATE_BV) | XFEATURE_MASK_FPSSE;
    let len = used_len(xstate);
    if len > xstate.len() {
        return Err(ArchError::Incompatible(format!(
            "the saved FPU state has {} bytes, but its components {used:#x} end at byte {len} on \
             this CPU; restore on a machine with the same CPU features",
            xstate.len()
        )));
    }
    Ok((&xstate[..len], used))
}

/// The bytes of the standard-format XSAVE area `xstate` (at least [`XSTATE_MIN`] long) up to
/// the end of the last state component its header says is in use, on this CPU: what a frame
/// carries, and all a dump keeps (the rest is components in their initial state, zeros in the
/// area; AMX tile data alone is 8 KiB a thread on CPUs that have it).
pub fn used_len(xstate: &[u8]) -> usize {
    let used = get_u64(xstate, XSTATE_BV) | XFEATURE_MASK_FPSSE;
    let ends = component_ends();
    (2..63u32)
        .filter(|bit| used & (1 << bit) != 0)
        .map(|bit| ends[bit as usize] as usize)
        .fold(XSTATE_MIN, usize::max)
}

/// Records in the software-reserved bytes of the XSAVE area `xstate` (464..512 of the legacy
/// area: XRSTOR and the kernel's SETREGSET ignore them, a frame gets its own) the size of the
/// whole area and the components this CPU enabled, in the layout the kernel gives a signal
/// frame's: a stored area cut after its last component in use ([`used_len`]) still says how
/// large it was where it was dumped ([`full_len`]).
pub fn stamp_full_len(xstate: &mut [u8]) {
    let n = xstate.len();
    put_u32(xstate, SW_BYTES, FP_XSTATE_MAGIC1);
    put_u32(xstate, SW_BYTES + 4, (n + MAGIC2_SIZE) as u32);
    put_u64(xstate, SW_BYTES + 8, enabled_xfeatures());
    put_u32(xstate, SW_BYTES + 16, n as u32);
}

/// The size of the whole XSAVE area where `xstate` was dumped ([`stamp_full_len`]); the
/// area's own length when it carries no such record (an image of an older crest).
pub fn full_len(xstate: &[u8]) -> usize {
    if xstate.len() >= XSTATE_MIN && get_u32(xstate, SW_BYTES) == FP_XSTATE_MAGIC1 {
        (get_u32(xstate, SW_BYTES + 16) as usize).max(xstate.len())
    } else {
        xstate.len()
    }
}

/// The dynamically enabled state components (AMX tile data) the saved XSAVE area uses, as
/// component numbers; the restored process needs `arch_prctl(ARCH_REQ_XCOMP_PERM)` for each
/// before its frame can be loaded.
pub fn dynamic_features(regs: &ArchRegs) -> Vec<u32> {
    match regs {
        ArchRegs::X86_64 { xstate, .. } if xstate.len() >= XSTATE_MIN => {
            let used = get_u64(xstate, XSTATE_BV);
            if used & (1 << XFEATURE_XTILEDATA) != 0 {
                vec![XFEATURE_XTILEDATA]
            } else {
                Vec::new()
            }
        }
        _ => Vec::new(),
    }
}

/// Checks that the XSAVE area can be loaded with XRSTOR on this CPU: XRSTOR raises #GP (and
/// rt_sigreturn kills the task with SIGSEGV) for a compacted area or for state components the
/// CPU has not enabled in XCR0.
fn check_xstate(xstate: &[u8]) -> Result<(), ArchError> {
    if xstate.len() < XSTATE_MIN {
        return Err(ArchError::BadRegset {
            what: "x86_64 XSAVE area (NT_X86_XSTATE)",
            got: xstate.len(),
            expected: XSTATE_MIN,
        });
    }
    if xstate.len() > u32::MAX as usize / 2 {
        return Err(ArchError::BadRegset {
            what: "x86_64 XSAVE area (NT_X86_XSTATE)",
            got: xstate.len(),
            expected: XSTATE_MIN,
        });
    }
    if get_u64(xstate, XCOMP_BV) != 0 {
        return Err(ArchError::Incompatible(
            "the saved XSAVE area is in compacted format; NT_X86_XSTATE gives the standard \
             format"
                .into(),
        ));
    }
    let used = get_u64(xstate, XSTATE_BV);
    let enabled = enabled_xfeatures();
    if used & !enabled != 0 {
        return Err(ArchError::Incompatible(format!(
            "the saved FPU state uses XSAVE components {:#x} that this CPU does not enable \
             (XCR0 = {enabled:#x}); restore on a machine with the same CPU features",
            used & !enabled
        )));
    }
    Ok(())
}

/// Where each XSAVE state component ends in the standard format (offset + size; 0 for none),
/// asked of the CPU once: CPUID traps to the hypervisor in a virtual machine (microseconds
/// each), and a frame is built for every thread of every restored process.
fn component_ends() -> &'static [u32; 64] {
    static ENDS: std::sync::OnceLock<[u32; 64]> = std::sync::OnceLock::new();
    ENDS.get_or_init(|| {
        let mut ends = [0u32; 64];
        let enabled = enabled_xfeatures();
        for (bit, end) in ends.iter_mut().enumerate().take(63).skip(2) {
            if enabled & (1 << bit) != 0 {
                // CPUID leaf 0xD sub-leaf n: EAX is the size of component n, EBX its offset
                // in the standard (non-compacted) format.
                let leaf = core::arch::x86_64::__cpuid_count(0xd, bit as u32);
                *end = leaf.ebx + leaf.eax;
            }
        }
        ends
    })
}

/// XCR0: the state components the kernel enabled on this CPU (asked once, see
/// [`component_ends`]).
pub fn enabled_xfeatures() -> u64 {
    static XCR0: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *XCR0.get_or_init(read_xcr0)
}

fn read_xcr0() -> u64 {
    // CPUID.1:ECX.OSXSAVE (bit 27) says XGETBV may be used.
    let leaf1 = core::arch::x86_64::__cpuid(1);
    if leaf1.ecx & (1 << 27) == 0 {
        return XFEATURE_MASK_FPSSE;
    }
    let (lo, hi): (u32, u32);
    // SAFETY: XGETBV with ecx = 0 reads XCR0; OSXSAVE was checked above.
    unsafe {
        core::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi,
                         options(nomem, nostack, preserves_flags));
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Asks the kernel for the dynamically enabled state components the image's threads use
/// (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), in the restored process before its frames are loaded:
/// without the permission the kernel rejects a frame carrying AMX tile data.
pub fn request_dynamic_features(threads: &[&ArchRegs]) -> Result<(), String> {
    /// arch/x86/include/uapi/asm/prctl.h
    const ARCH_REQ_XCOMP_PERM: libc::c_ulong = 0x1023;
    let mut wanted: Vec<u32> = threads.iter().flat_map(|r| dynamic_features(r)).collect();
    wanted.sort_unstable();
    wanted.dedup();
    for feature in wanted {
        // SAFETY: arch_prctl with an integer argument; nothing is read or written in memory.
        let r = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                feature as libc::c_ulong,
            )
        };
        if r != 0 {
            return Err(format!(
                "the image's threads use the AMX state component {feature}, and the kernel \
                 refused it to the restored process (arch_prctl ARCH_REQ_XCOMP_PERM): {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn get_u64(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

fn get_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::arch::x86_64::__cpuid_count;

    const RBX: u64 = 0x1122_3344_5566_7788;
    const R12: u64 = 0x99aa_bbcc_ddee_ff00;
    const XMM0_LO: u64 = 0x0123_4567_89ab_cdef;
    const XMM0_HI: u64 = 0xfedc_ba98_7654_3210;
    const YMM0_HI: u64 = 0x0f0e_0d0c_0b0a_0908;
    /// SIGUSR1 and SIGUSR2 (10 and 12): bit n-1 of the kernel sigset.
    const MASK: u64 = (1 << 9) | (1 << 11);
    /// XMM0 in the legacy FXSAVE area.
    const XMM0_OFF: usize = 160;
    /// xstate component 2: the upper halves of the YMM registers.
    const XFEATURE_YMM: u64 = 1 << 2;

    #[repr(C, align(64))]
    struct XsaveBuf([u8; 64 * 1024]);

    /// The XSAVE area of the current thread, in standard format, as big as CPUID says.
    fn xsave_current() -> Vec<u8> {
        // CPUID leaf 0xD sub-leaf 0: EBX is the XSAVE area size for the components in XCR0.
        let size = __cpuid_count(0xd, 0).ebx as usize;
        let mut buf = Box::new(XsaveBuf([0; 64 * 1024]));
        assert!(size >= XSTATE_MIN && size <= buf.0.len());
        // SAFETY: the buffer is 64-byte aligned and larger than the XSAVE area for XCR0;
        // edx:eax = all ones requests every enabled component.
        unsafe {
            core::arch::asm!("xsave64 [{0}]", in(reg) buf.0.as_mut_ptr(),
                             in("eax") u32::MAX, in("edx") u32::MAX, options(nostack));
        }
        buf.0[..size].to_vec()
    }

    /// Offset of the YMM_Hi128 component in the standard XSAVE layout.
    fn ymm_offset() -> usize {
        // CPUID leaf 0xD sub-leaf 2 describes component 2.
        __cpuid_count(0xd, 2).ebx as usize
    }

    fn have_avx() -> bool {
        enabled_xfeatures() & XFEATURE_YMM != 0
    }

    fn selectors() -> (u64, u64) {
        let (cs, ss): (u16, u16);
        // SAFETY: reading segment selectors has no side effects.
        unsafe {
            core::arch::asm!("mov {0:x}, cs", "mov {1:x}, ss", out(reg) cs, out(reg) ss,
                             options(nomem, nostack, preserves_flags));
        }
        (cs.into(), ss.into())
    }

    /// Entered by rt_sigreturn: hands the registers under test to `check_landing` before any
    /// compiler-generated code can touch them.
    #[unsafe(naked)]
    extern "C" fn landing() -> ! {
        core::arch::naked_asm!(
            "mov rdi, rbx",
            "mov rsi, r12",
            "movq rdx, xmm0",
            "pshufd xmm1, xmm0, 0xee",
            "movq rcx, xmm1",
            "xor r8d, r8d",
            "test r13, r13",
            "jz 2f",
            "vextractf128 xmm2, ymm0, 1",
            "movq r8, xmm2",
            "2:",
            "call {check}",
            "ud2",
            check = sym check_landing,
        )
    }

    /// Exits with 0 when every value came through, else with a bit per wrong value.
    extern "C" fn check_landing(rbx: u64, r12: u64, lo: u64, hi: u64, ymm_hi: u64) -> ! {
        let mut code = 0;
        if rbx != RBX {
            code |= 1;
        }
        if r12 != R12 {
            code |= 2;
        }
        if lo != XMM0_LO || hi != XMM0_HI {
            code |= 4;
        }
        if have_avx() && ymm_hi != YMM0_HI {
            code |= 8;
        }
        let mut mask = 0u64;
        // SAFETY: rt_sigprocmask reads nothing (set = NULL) and writes 8 bytes to `mask`.
        let r = unsafe {
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_BLOCK,
                std::ptr::null::<u64>(),
                &mut mask as *mut u64,
                8,
            )
        };
        if r != 0 || mask != MASK {
            code |= 16;
        }
        // SAFETY: _exit ends the forked child without running the parent's atexit handlers.
        unsafe { libc::_exit(code) }
    }

    fn regs_for_landing(stack_top: u64) -> ArchRegs {
        let (cs, ss) = selectors();
        let mut gprs = vec![0u64; GPR_WORDS];
        gprs[gpr::RBX] = RBX;
        gprs[gpr::R12] = R12;
        gprs[gpr::R13] = have_avx() as u64;
        gprs[gpr::RIP] = landing as *const () as u64;
        // As after a `call`: rsp + 8 is 16-byte aligned at function entry; landing itself
        // calls, so start it on a 16-byte boundary.
        gprs[gpr::RSP] = stack_top & !15;
        gprs[gpr::EFLAGS] = 0x202;
        gprs[gpr::CS] = cs;
        gprs[gpr::SS] = ss;
        gprs[15] = u64::MAX; // orig_rax: not in a syscall

        let mut xstate = xsave_current();
        xstate[XMM0_OFF..XMM0_OFF + 8].copy_from_slice(&XMM0_LO.to_le_bytes());
        xstate[XMM0_OFF + 8..XMM0_OFF + 16].copy_from_slice(&XMM0_HI.to_le_bytes());
        let mut bv = get_u64(&xstate, XSTATE_BV) | XFEATURE_MASK_FPSSE;
        if have_avx() {
            let off = ymm_offset();
            xstate[off..off + 8].copy_from_slice(&YMM0_HI.to_le_bytes());
            bv |= XFEATURE_YMM;
        }
        put_u64(&mut xstate, XSTATE_BV, bv);
        ArchRegs::X86_64 { gpr: gprs, xstate }
    }

    #[test]
    fn rt_sigreturn_loads_the_frame() {
        let stack = vec![0u8; 256 * 1024];
        let regs = regs_for_landing(stack.as_ptr() as u64 + stack.len() as u64);
        let ArchRegs::X86_64 { xstate, .. } = &regs else {
            unreachable!()
        };
        let mut buf = vec![0u8; frame_size(xstate.len()) + 64];
        // An address that is 8 but not 64-byte aligned, so the fpstate needs padding.
        let base = buf.as_ptr() as u64;
        let skip = (72 - (base % 64) as usize) % 64;
        let frame_addr = base + skip as u64;
        let sp = build(&regs, MASK, frame_addr, &mut buf[skip..]).unwrap();
        assert_eq!(sp, frame_addr + 8);

        // SAFETY: the child only switches to the prepared stack and frame (copied by fork at
        // the same addresses) and ends in check_landing's _exit; it takes no locks.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                // SAFETY: `sp` points 8 bytes into a complete rt_sigframe; rt_sigreturn does not
                // return, and continues at `landing` on `stack`.
                unsafe {
                    core::arch::asm!("mov rsp, {0}", "mov eax, 15", "syscall", "ud2",
                                     in(reg) sp, options(noreturn));
                }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(
                    status,
                    nix::sys::wait::WaitStatus::Exited(child, 0),
                    "exit code bits: 1 rbx, 2 r12, 4 xmm0, 8 ymm0, 16 signal mask"
                );
            }
        }
        drop(stack);
    }

    fn sample_regs(xstate_len: usize) -> ArchRegs {
        let gprs: Vec<u64> = (0..GPR_WORDS as u64).map(|i| 0x1000 + i).collect();
        let mut xstate = vec![0u8; xstate_len];
        if xstate_len >= XSTATE_MIN {
            put_u64(&mut xstate, XSTATE_BV, XFEATURE_MASK_FPSSE);
        }
        xstate[XMM0_OFF] = 0x77;
        ArchRegs::X86_64 { gpr: gprs, xstate }
    }

    #[test]
    fn frame_layout() {
        let regs = sample_regs(1024);
        let mut out = vec![0xffu8; frame_size(1024)];
        let frame_addr = 0x7fff_0000_1008;
        build(&regs, 0x8000_0001, frame_addr, &mut out).unwrap();
        // sigcontext: r8 first, then ..., rip at word 16, eflags at 17.
        assert_eq!(get_u64(&out, MCONTEXT), 0x1000 + gpr::R8 as u64);
        assert_eq!(get_u64(&out, MCONTEXT + 8 * 15), 0x1000 + gpr::RSP as u64);
        assert_eq!(get_u64(&out, MCONTEXT + 8 * 16), 0x1000 + gpr::RIP as u64);
        assert_eq!(out[MCONTEXT + SC_CS], (0x1000 + gpr::CS) as u8);
        assert_eq!(out[MCONTEXT + SC_SS], (0x1000 + gpr::SS) as u8);
        assert_eq!(get_u64(&out, SIGMASK), 0x8000_0001);
        assert_eq!(get_u64(&out, UC_FLAGS), 0x7);
        assert_eq!(get_u32(&out, UC_STACK_FLAGS), SS_DISABLE as u32);
        let fp_addr = get_u64(&out, MCONTEXT + SC_FPSTATE);
        assert_eq!(fp_addr % 64, 0);
        assert!(fp_addr >= frame_addr + FRAME_END as u64);
        let fp = (fp_addr - frame_addr) as usize;
        assert_eq!(out[fp + XMM0_OFF], 0x77);
        assert_eq!(get_u32(&out, fp + SW_BYTES), FP_XSTATE_MAGIC1);
        // Only x87/SSE in use: the frame carries the legacy area and the header.
        assert_eq!(get_u32(&out, fp + SW_BYTES + 4), XSTATE_MIN as u32 + 4);
        assert_eq!(get_u64(&out, fp + SW_BYTES + 8), XFEATURE_MASK_FPSSE);
        assert_eq!(get_u32(&out, fp + SW_BYTES + 16), XSTATE_MIN as u32);
        assert_eq!(get_u32(&out, fp + XSTATE_MIN), FP_XSTATE_MAGIC2);
        // The siginfo is zero.
        assert!(out[SIGINFO..FRAME_END].iter().all(|&b| b == 0));
    }

    /// NT_X86_XSTATE is as large as every component the CPU has (AMX included), but the kernel
    /// only loads a frame whose xstate_size fits the task's own (non-AMX) size: the frame must
    /// stop after the last component in use, here AVX, whatever the kernel's sw bytes said.
    #[test]
    fn frame_stops_after_the_last_component_in_use() {
        if !have_avx() {
            return;
        }
        let ymm = __cpuid_count(0xd, 2);
        let ymm_end = (ymm.ebx + ymm.eax) as usize;
        let big = ymm_end + 8192 + 64;
        let mut regs = sample_regs(big);
        if let ArchRegs::X86_64 { xstate, .. } = &mut regs {
            put_u32(xstate, SW_BYTES, FP_XSTATE_MAGIC1);
            put_u64(xstate, SW_BYTES + 8, 0x6_02e7);
            put_u64(xstate, XSTATE_BV, XFEATURE_MASK_FPSSE | XFEATURE_YMM);
            xstate[ymm.ebx as usize] = 0x5a;
        }
        let mut out = vec![0u8; frame_size(big)];
        build(&regs, 0, 0x10000, &mut out).unwrap();
        let fp = (get_u64(&out, MCONTEXT + SC_FPSTATE) - 0x10000) as usize;
        assert_eq!(
            get_u64(&out, fp + SW_BYTES + 8),
            XFEATURE_MASK_FPSSE | XFEATURE_YMM
        );
        assert_eq!(get_u32(&out, fp + SW_BYTES + 16), ymm_end as u32);
        assert_eq!(get_u32(&out, fp + SW_BYTES + 4), ymm_end as u32 + 4);
        assert_eq!(get_u32(&out, fp + ymm_end), FP_XSTATE_MAGIC2);
        assert_eq!(out[fp + ymm.ebx as usize], 0x5a);
        assert!(dynamic_features(&regs).is_empty());
    }

    #[test]
    fn a_stored_area_ends_after_its_last_component_in_use_and_knows_its_whole_size() {
        if !have_avx() {
            return;
        }
        let ymm = __cpuid_count(0xd, 2);
        let ymm_end = (ymm.ebx + ymm.eax) as usize;
        let whole = ymm_end + 8192 + 64;
        let ArchRegs::X86_64 { mut xstate, .. } = sample_regs(whole) else {
            unreachable!()
        };
        stamp_full_len(&mut xstate);
        assert_eq!(get_u32(&xstate, SW_BYTES + 16), whole as u32);
        put_u64(&mut xstate, XSTATE_BV, XFEATURE_MASK_FPSSE);
        assert_eq!(
            used_len(&xstate),
            XSTATE_MIN,
            "x87 and SSE only: the legacy area"
        );
        put_u64(&mut xstate, XSTATE_BV, XFEATURE_MASK_FPSSE | XFEATURE_YMM);
        assert_eq!(used_len(&xstate), ymm_end);
        xstate.truncate(ymm_end);
        assert_eq!(
            full_len(&xstate),
            whole,
            "the whole size stays known once cut"
        );
        // A frame built from the cut area is the one built from the whole area.
        let cut = ArchRegs::X86_64 {
            gpr: vec![0; GPR_WORDS],
            xstate: xstate.clone(),
        };
        let mut padded = xstate.clone();
        padded.resize(whole, 0);
        let uncut = ArchRegs::X86_64 {
            gpr: vec![0; GPR_WORDS],
            xstate: padded,
        };
        let (mut a, mut b) = (vec![0u8; frame_size(whole)], vec![0u8; frame_size(whole)]);
        build(&cut, 0, 0x10000, &mut a).unwrap();
        build(&uncut, 0, 0x10000, &mut b).unwrap();
        assert!(a == b, "same frame from the cut and the whole area");
        // An area without the record (an older image): its own length.
        put_u32(&mut xstate, SW_BYTES, 0);
        assert_eq!(full_len(&xstate), ymm_end);
    }

    #[test]
    fn altstack_is_written() {
        let regs = sample_regs(XSTATE_MIN);
        let mut out = vec![0u8; frame_size(XSTATE_MIN)];
        let alt = AltStack {
            sp: 0x7000_0000,
            flags: 0,
            size: 0x8000,
        };
        build_with_altstack(&regs, 0, Some(alt), 0x20000, &mut out).unwrap();
        assert_eq!(get_u64(&out, UC_STACK_SP), 0x7000_0000);
        assert_eq!(get_u32(&out, UC_STACK_FLAGS), 0);
        assert_eq!(get_u64(&out, UC_STACK_SIZE), 0x8000);
    }

    #[test]
    fn bad_input_is_refused() {
        let mut out = vec![0u8; frame_size(4096)];
        let short = sample_regs(512);
        assert!(matches!(
            build(&short, 0, 0x10000, &mut out),
            Err(ArchError::BadRegset { got: 512, .. })
        ));
        let ArchRegs::X86_64 { xstate, .. } = sample_regs(1024) else {
            unreachable!()
        };
        let few = ArchRegs::X86_64 {
            gpr: vec![0; 17],
            xstate: xstate.clone(),
        };
        assert!(matches!(
            build(&few, 0, 0x10000, &mut out),
            Err(ArchError::BadRegset { got: 136, .. })
        ));
        let mut compacted = xstate.clone();
        put_u64(&mut compacted, XCOMP_BV, 1 << 63 | 3);
        let compacted = ArchRegs::X86_64 {
            gpr: vec![0; GPR_WORDS],
            xstate: compacted,
        };
        assert!(matches!(
            build(&compacted, 0, 0x10000, &mut out),
            Err(ArchError::Incompatible(_))
        ));
        // A component outside XCR0 (bit 62 is reserved, never enabled).
        let mut alien = xstate.clone();
        put_u64(&mut alien, XSTATE_BV, 1 << 62 | 3);
        let alien = ArchRegs::X86_64 {
            gpr: vec![0; GPR_WORDS],
            xstate: alien,
        };
        assert!(matches!(
            build(&alien, 0, 0x10000, &mut out),
            Err(ArchError::Incompatible(_))
        ));
        let ok = ArchRegs::X86_64 {
            gpr: vec![0; GPR_WORDS],
            xstate,
        };
        let mut small = vec![0u8; 1024];
        assert!(matches!(
            build(&ok, 0, 0x10000, &mut small),
            Err(ArchError::BadRegset { got: 1024, .. })
        ));
        let other = ArchRegs::Aarch64 {
            gpr: vec![0; 34],
            fpsimd: vec![0; 528],
            tls: 0,
        };
        assert!(matches!(
            build(&other, 0, 0x10000, &mut out),
            Err(ArchError::Incompatible(_))
        ));
    }
}
