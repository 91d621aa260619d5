//! Semantic checks of one [`ProcessImage`]. An image is input like any other: every length,
//! offset, index and address is bounds-checked here, with checked arithmetic, before a restore
//! acts on it. Each failure names the offending item.

use crate::error::ImageError;
use crate::schema::*;

/// Addresses at or above this are outside any user address space (57-bit with 5-level paging
/// on x86_64, 52 bits on arm64).
pub const USER_ADDRESS_LIMIT: u64 = 1 << 57;
/// Number of registers in x86_64 `user_regs_struct` (NT_PRSTATUS).
pub const X86_64_GPR_COUNT: usize = 27;
/// Number of registers in arm64 `user_pt_regs` (x0-x30, sp, pc, pstate).
pub const AARCH64_GPR_COUNT: usize = 34;
/// The legacy XSAVE region (512) plus the XSAVE header (64): the smallest standard-format area.
pub const XSTATE_MIN: usize = 576;
/// Far above any XSAVE area a CPU reports today (AMX brings it to ~11 KiB).
pub const XSTATE_MAX: usize = 64 << 10;
/// `struct user_fpsimd_state`: 32 128-bit registers, fpsr, fpcr (and padding).
pub const FPSIMD_MIN: usize = 32 * 16 + 8;
/// The kernel keeps at most this many auxv words (`AT_VECTOR_SIZE` is far below it).
pub const AUXV_MAX_WORDS: usize = 128;
/// `RLIM_NLIMITS`.
pub const RLIMIT_COUNT: u32 = 16;
/// `NGROUPS_MAX`.
pub const GROUPS_MAX: usize = 65536;
/// The kernel requires an rseq area of at least the original 32-byte layout, 32-byte aligned.
const RSEQ_MIN_SIZE: u32 = 32;

/// Checks one process record against itself, the size of its page file and the page size.
///
/// The page file's presence and role are checked by the caller (it knows the inventory).
pub fn validate_process(
    p: &ProcessImage,
    page_file_size: u64,
    page_size: u64,
) -> Result<(), ImageError> {
    check(p, page_file_size, page_size)
        .map_err(|what| ImageError::InvalidProcess { pid: p.pid, what })
}

/// `Ok` or a description of the first problem.
pub(crate) fn check(p: &ProcessImage, page_file_size: u64, page_size: u64) -> Result<(), String> {
    if page_size == 0 || !page_size.is_power_of_two() {
        return Err(format!("page size {page_size} is not a power of two"));
    }
    if p.pid <= 0 {
        return Err(format!("pid {} is not positive", p.pid));
    }
    if p.comm.contains('\0') {
        return Err("comm contains a NUL byte".into());
    }
    if p.creds.groups.len() > GROUPS_MAX {
        return Err(format!(
            "{} supplementary groups (at most {GROUPS_MAX})",
            p.creds.groups.len()
        ));
    }
    check_file_name(&p.pages_file).map_err(|e| format!("page file name: {e}"))?;
    check_threads(p)?;
    check_files(p)?;
    check_mm(&p.mm)?;
    check_vmas(p, page_size)?;
    check_page_runs(p, page_file_size, page_size)?;
    check_fds(p)?;
    check_rlimits(&p.rlimits)?;
    Ok(())
}

/// A name that stays inside the image directory and can be created there.
pub(crate) fn check_file_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(format!("{name:?} is not a file name"));
    }
    if name.contains('/') || name.contains('\0') {
        return Err(format!("{name:?} contains '/' or a NUL byte"));
    }
    Ok(())
}

fn check_address(what: &str, addr: u64) -> Result<(), String> {
    if addr >= USER_ADDRESS_LIMIT {
        return Err(format!(
            "{what} {addr:#x} is outside the user address space"
        ));
    }
    Ok(())
}

fn check_threads(p: &ProcessImage) -> Result<(), String> {
    let Some(leader) = p.threads.first() else {
        return Err("has no threads".into());
    };
    if leader.tid != p.pid {
        return Err(format!(
            "first thread has tid {}, the leader's tid must equal the pid",
            leader.tid
        ));
    }
    let mut tids: Vec<i32> = Vec::with_capacity(p.threads.len());
    for t in &p.threads {
        if t.tid <= 0 {
            return Err(format!("thread tid {} is not positive", t.tid));
        }
        tids.push(t.tid);
        check_regs(t.tid, &t.regs)?;
        if let Some(rseq) = &t.rseq {
            if rseq.abi_size < RSEQ_MIN_SIZE {
                return Err(format!(
                    "thread {}: rseq area of {} bytes (at least {RSEQ_MIN_SIZE})",
                    t.tid, rseq.abi_size
                ));
            }
            if rseq.abi_pointer == 0 || rseq.abi_pointer % u64::from(RSEQ_MIN_SIZE) != 0 {
                return Err(format!(
                    "thread {}: rseq area at {:#x} is not 32-byte aligned",
                    t.tid, rseq.abi_pointer
                ));
            }
            let end = rseq
                .abi_pointer
                .checked_add(u64::from(rseq.abi_size))
                .ok_or_else(|| format!("thread {}: rseq area wraps around", t.tid))?;
            check_address(&format!("thread {}: rseq area end", t.tid), end - 1)?;
        }
    }
    tids.sort_unstable();
    if let Some(w) = tids.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("tid {} appears twice", w[0]));
    }
    Ok(())
}

fn check_regs(tid: i32, regs: &ArchRegs) -> Result<(), String> {
    let host = Arch::host();
    match (regs, host) {
        (ArchRegs::X86_64 { gpr, xstate }, Arch::X86_64) => {
            if gpr.len() != X86_64_GPR_COUNT {
                return Err(format!(
                    "thread {tid}: {} general registers, x86_64 has {X86_64_GPR_COUNT}",
                    gpr.len()
                ));
            }
            if !(XSTATE_MIN..=XSTATE_MAX).contains(&xstate.len()) {
                return Err(format!(
                    "thread {tid}: xstate area of {} bytes (must be {XSTATE_MIN} to {XSTATE_MAX})",
                    xstate.len()
                ));
            }
        }
        (ArchRegs::Aarch64 { gpr, fpsimd, .. }, Arch::Aarch64) => {
            if gpr.len() != AARCH64_GPR_COUNT {
                return Err(format!(
                    "thread {tid}: {} general registers, aarch64 has {AARCH64_GPR_COUNT}",
                    gpr.len()
                ));
            }
            if !(FPSIMD_MIN..=XSTATE_MAX).contains(&fpsimd.len()) {
                return Err(format!(
                    "thread {tid}: FP/SIMD state of {} bytes (must be {FPSIMD_MIN} to {XSTATE_MAX})",
                    fpsimd.len()
                ));
            }
        }
        (ArchRegs::X86_64 { .. }, other) | (ArchRegs::Aarch64 { .. }, other) => {
            return Err(format!(
                "thread {tid}: registers of another architecture than {}",
                other.name()
            ));
        }
    }
    Ok(())
}

fn check_files(p: &ProcessImage) -> Result<(), String> {
    for (i, f) in p.files.iter().enumerate() {
        if !f.path.starts_with('/') || f.path.contains('\0') {
            return Err(format!(
                "file {i} has path {:?}, not an absolute path",
                f.path
            ));
        }
    }
    let file = |what: &str, idx: u32| -> Result<&FileIdentity, String> {
        p.files.get(idx as usize).ok_or_else(|| {
            format!(
                "{what} refers to file {idx}, but the process lists {} files",
                p.files.len()
            )
        })
    };
    let exe = file("exe", p.exe_file)?;
    if exe.kind != FileKind::Regular {
        return Err(format!("exe {:?} is not a regular file", exe.path));
    }
    let cwd = file("cwd", p.cwd_file)?;
    if cwd.kind != FileKind::Directory {
        return Err(format!("cwd {:?} is not a directory", cwd.path));
    }
    for (i, d) in p.open_files.iter().enumerate() {
        file(&format!("open file description {i}"), d.file)?;
    }
    Ok(())
}

fn check_mm(mm: &MmFields) -> Result<(), String> {
    let fields = [
        ("start_code", mm.start_code),
        ("end_code", mm.end_code),
        ("start_data", mm.start_data),
        ("end_data", mm.end_data),
        ("start_brk", mm.start_brk),
        ("brk", mm.brk),
        ("start_stack", mm.start_stack),
        ("arg_start", mm.arg_start),
        ("arg_end", mm.arg_end),
        ("env_start", mm.env_start),
        ("env_end", mm.env_end),
    ];
    for (name, value) in fields {
        check_address(&format!("mm field {name}"), value)?;
    }
    // The orderings PR_SET_MM_MAP insists on (kernel/sys.c: validate_prctl_map_addr).
    let pairs = [
        ("start_code", mm.start_code, "end_code", mm.end_code),
        ("start_data", mm.start_data, "end_data", mm.end_data),
        ("start_brk", mm.start_brk, "brk", mm.brk),
        ("arg_start", mm.arg_start, "arg_end", mm.arg_end),
        ("env_start", mm.env_start, "env_end", mm.env_end),
    ];
    for (a, av, b, bv) in pairs {
        if av > bv {
            return Err(format!("mm field {a} {av:#x} is above {b} {bv:#x}"));
        }
    }
    if !mm.auxv.len().is_multiple_of(2) {
        return Err(format!(
            "auxv has {} words, not (type, value) pairs",
            mm.auxv.len()
        ));
    }
    if mm.auxv.len() > AUXV_MAX_WORDS {
        return Err(format!(
            "auxv has {} words (at most {AUXV_MAX_WORDS})",
            mm.auxv.len()
        ));
    }
    Ok(())
}

fn check_vmas(p: &ProcessImage, page_size: u64) -> Result<(), String> {
    let mut prev_end = 0u64;
    for (i, v) in p.vmas.iter().enumerate() {
        let what = || format!("VMA {i} ({:#x}-{:#x})", v.start, v.end);
        if v.start % page_size != 0 || v.end % page_size != 0 {
            return Err(format!("{} is not page-aligned", what()));
        }
        if v.start >= v.end {
            return Err(format!("{} is empty or reversed", what()));
        }
        if v.end > USER_ADDRESS_LIMIT {
            return Err(format!("{} is outside the user address space", what()));
        }
        if i > 0 && v.start < prev_end {
            return Err(format!(
                "{} overlaps or precedes the VMA before it (which ends at {prev_end:#x})",
                what()
            ));
        }
        prev_end = v.end;
        if v.prot & !(PROT_READ | PROT_WRITE | PROT_EXEC) != 0 {
            return Err(format!(
                "{} has unknown protection bits {:#x}",
                what(),
                v.prot
            ));
        }
        if v.name.contains('\0') {
            return Err(format!("{} has a name with a NUL byte", what()));
        }
        if let VmaBacking::File { file, offset } = v.backing {
            let f = p.files.get(file as usize).ok_or_else(|| {
                format!(
                    "{} maps file {file}, but the process lists {} files",
                    what(),
                    p.files.len()
                )
            })?;
            if f.kind == FileKind::Directory {
                return Err(format!("{} maps the directory {:?}", what(), f.path));
            }
            if offset % page_size != 0 {
                return Err(format!(
                    "{} maps file offset {offset:#x}, not page-aligned",
                    what()
                ));
            }
            offset
                .checked_add(v.end - v.start)
                .ok_or_else(|| format!("{} file offset {offset:#x} overflows", what()))?;
        }
    }
    Ok(())
}

fn check_page_runs(p: &ProcessImage, page_file_size: u64, page_size: u64) -> Result<(), String> {
    let mut prev_end = 0u64;
    for (i, r) in p.page_runs.iter().enumerate() {
        let what = || format!("page run {i} ({} pages at {:#x})", r.npages, r.vaddr);
        if r.npages == 0 {
            return Err(format!("{} is empty", what()));
        }
        if r.vaddr % page_size != 0 {
            return Err(format!("{} is not page-aligned", what()));
        }
        if r.file_offset % page_size != 0 {
            return Err(format!(
                "{} has page file offset {:#x}, not page-aligned",
                what(),
                r.file_offset
            ));
        }
        let len = r
            .npages
            .checked_mul(page_size)
            .ok_or_else(|| format!("{} is impossibly long", what()))?;
        let end = r
            .vaddr
            .checked_add(len)
            .filter(|&e| e <= USER_ADDRESS_LIMIT)
            .ok_or_else(|| format!("{} runs past the user address space", what()))?;
        if i > 0 && r.vaddr < prev_end {
            return Err(format!(
                "{} overlaps or precedes the run before it (which ends at {prev_end:#x})",
                what()
            ));
        }
        prev_end = end;
        match r.file_offset.checked_add(len) {
            Some(file_end) if file_end <= page_file_size => {}
            _ => {
                return Err(format!(
                    "{} at page file offset {:#x} runs past the end of the {page_file_size}-byte page file {:?}",
                    what(),
                    r.file_offset,
                    p.pages_file
                ))
            }
        }
        // The VMA with the greatest start <= vaddr is the only one that can hold the run.
        let idx = p.vmas.partition_point(|v| v.start <= r.vaddr);
        let vma = idx
            .checked_sub(1)
            .and_then(|k| p.vmas.get(k))
            .filter(|v| end <= v.end)
            .ok_or_else(|| format!("{} does not lie inside one VMA", what()))?;
        match vma.backing {
            VmaBacking::Anonymous | VmaBacking::File { .. } => {}
            VmaBacking::Vdso | VmaBacking::Vvar => {
                return Err(format!(
                    "{} lies in the {} area {:#x}-{:#x}, whose pages are never stored",
                    what(),
                    if vma.backing == VmaBacking::Vdso {
                        "vdso"
                    } else {
                        "vvar"
                    },
                    vma.start,
                    vma.end
                ))
            }
        }
    }
    Ok(())
}

fn check_fds(p: &ProcessImage) -> Result<(), String> {
    let mut fds: Vec<i32> = Vec::with_capacity(p.fds.len());
    for fd in &p.fds {
        if fd.fd < 0 {
            return Err(format!("fd {} is negative", fd.fd));
        }
        if fd.description as usize >= p.open_files.len() {
            return Err(format!(
                "fd {} refers to open file description {}, but the process lists {}",
                fd.fd,
                fd.description,
                p.open_files.len()
            ));
        }
        fds.push(fd.fd);
    }
    fds.sort_unstable();
    if let Some(w) = fds.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("fd {} appears twice", w[0]));
    }
    Ok(())
}

fn check_rlimits(rlimits: &[Rlimit]) -> Result<(), String> {
    let mut seen = 0u32;
    for r in rlimits {
        if r.resource >= RLIMIT_COUNT {
            return Err(format!(
                "rlimit resource {} (at most {})",
                r.resource,
                RLIMIT_COUNT - 1
            ));
        }
        if seen & (1 << r.resource) != 0 {
            return Err(format!("rlimit resource {} appears twice", r.resource));
        }
        seen |= 1 << r.resource;
        if r.soft > r.hard {
            return Err(format!(
                "rlimit resource {}: soft limit {} above hard limit {}",
                r.resource, r.soft, r.hard
            ));
        }
    }
    Ok(())
}
