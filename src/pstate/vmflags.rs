//! The VmFlags of `/proc/PID/smaps` (Documentation/filesystems/proc.rst): which are state of
//! their own that a restore must give back, which follow from the protection, the mapping type
//! or the file (and come back with them), and which crest cannot restore (the dump refuses
//! them, naming the pid, the mapping and the flag).
//!
//! Dump side: [`classify`]. Restore side: [`restore_args`], the mmap flags, madvise advices
//! and mlock2/mseal steps the restorer applies after mapping a VMA.

use crate::blob::abi::{MAX_MADVISE, VMA_EXTRA_LOCK_ONFAULT, VMA_EXTRA_SEAL};
use crate::images::VmaFlags;

/// What one VmFlags code is to a restore.
#[derive(Clone, Copy)]
enum Code {
    /// Follows from the protection, MAP_SHARED/MAP_PRIVATE, the file's open mode or the
    /// kernel's own bookkeeping; the restored mapping gets it back by itself.
    Derived,
    /// State of its own: recorded in [`VmaFlags`] and restored.
    State(fn(&mut VmaFlags)),
    /// Cannot be restored: the reason.
    Refused(&'static str),
}

fn code(c: &str) -> Option<Code> {
    use Code::*;
    Some(match c {
        // Protection and mapping type (prot, MAP_SHARED) and what the file's open mode allows
        // (mr/mw/me/ms; a shared writable file mapping records `mw`, below).
        "rd" | "wr" | "ex" | "sh" | "mr" | "mw" | "me" | "ms" => Derived,
        // Accounted (private writable without MAP_NORESERVE) and the soft-dirty tracking bit.
        "ac" | "sd" => Derived,
        // VM_DENYWRITE, shown by kernels before 5.15 on executables: no restore concern.
        "dw" => Derived,
        "gd" => State(|f| f.growsdown = true),
        "lo" => State(|f| f.locked = true),
        "lf" => State(|f| f.lockonfault = true),
        "nr" => State(|f| f.noreserve = true),
        "sr" => State(|f| f.sequential = true),
        "rr" => State(|f| f.random = true),
        "dc" => State(|f| f.dontfork = true),
        "dd" => State(|f| f.dontdump = true),
        "hg" => State(|f| f.hugepage = true),
        "nh" => State(|f| f.nohugepage = true),
        "mg" => State(|f| f.mergeable = true),
        "wf" => State(|f| f.wipeonfork = true),
        "sl" => State(|f| f.sealed = true),
        "dp" => State(|f| f.droppable = true),
        // Guard regions: where they are is read from the pagemap (dump::vmas), and they are
        // installed again after the restorer (restore::finish).
        "gu" => Derived,
        "pf" | "io" => Refused("it maps device memory (VM_PFNMAP/VM_IO)"),
        "mm" => Refused("it is a driver's mixed map (VM_MIXEDMAP)"),
        "de" => Refused("it is a driver's or the kernel's special mapping (VM_DONTEXPAND)"),
        "ar" => Refused("it carries an architecture-specific flag (VM_ARCH_1)"),
        "ht" => Refused("it is hugetlb memory"),
        "sf" => Refused("it is a synchronous-fault DAX mapping (MAP_SYNC)"),
        "nl" => Refused("it is a non-linear mapping"),
        "um" | "uw" | "ui" => Refused("it is registered with userfaultfd"),
        "ss" => Refused("it is a shadow stack"),
        "bt" => Refused("it is a BTI-guarded mapping (PROT_BTI)"),
        "mt" => Refused("it is an MTE-tagged mapping (PROT_MTE)"),
        _ => return None,
    })
}

/// The restorable state among a VMA's VmFlags codes, or why the VMA cannot be restored (a
/// flag crest does not know counts as one it cannot restore). `shared_file` says whether it
/// is a MAP_SHARED file mapping, where `mw` is recorded.
pub fn classify(codes: &[String], shared_file: bool) -> Result<VmaFlags, String> {
    let mut flags = VmaFlags::default();
    for c in codes {
        match code(c) {
            Some(Code::Derived) => {}
            Some(Code::State(set)) => set(&mut flags),
            Some(Code::Refused(why)) => return Err(format!("{why} (VmFlags `{c}`)")),
            None => {
                return Err(format!(
                    "it carries the VmFlags flag `{c}`, which crest does not know how to restore"
                ))
            }
        }
    }
    flags.shared_maywrite = shared_file && codes.iter().any(|c| c == "mw");
    Ok(flags)
}

/// `MAP_DROPPABLE` (include/uapi/linux/mman.h, Linux 6.11+): a mapping type, like
/// MAP_PRIVATE.
const MAP_DROPPABLE: i32 = 0x08;
/// The mapping-type bits of mmap's flags.
const MAP_TYPE: i32 = 0x0f;

/// What the restorer does for a VMA's flags: the mmap flags to add to `map_flags` (which
/// holds the mapping type), the madvise advices to apply, and the VMA_EXTRA_* steps.
pub fn restore_args(f: &VmaFlags, map_flags: i32) -> (i32, [u32; MAX_MADVISE], u32) {
    let mut map = map_flags;
    if f.growsdown {
        map |= libc::MAP_GROWSDOWN;
    }
    if f.noreserve {
        map |= libc::MAP_NORESERVE;
    }
    // Locked on fault: mlock2(MLOCK_ONFAULT) once filled; MAP_LOCKED would fault it all in.
    if f.locked && !f.lockonfault {
        map |= libc::MAP_LOCKED;
    }
    if f.droppable {
        map = (map & !MAP_TYPE) | MAP_DROPPABLE;
    }
    let advice = [
        (f.sequential, libc::MADV_SEQUENTIAL),
        (f.random, libc::MADV_RANDOM),
        (f.dontfork, libc::MADV_DONTFORK),
        (f.dontdump, libc::MADV_DONTDUMP),
        (f.hugepage, libc::MADV_HUGEPAGE),
        (f.nohugepage, libc::MADV_NOHUGEPAGE),
        (f.mergeable, libc::MADV_MERGEABLE),
        (f.wipeonfork, libc::MADV_WIPEONFORK),
    ];
    let mut madvise = [0u32; MAX_MADVISE];
    for (slot, (_, value)) in madvise.iter_mut().zip(advice.iter().filter(|(on, _)| *on)) {
        *slot = *value as u32;
    }
    let mut extra = 0;
    if f.lockonfault {
        extra |= VMA_EXTRA_LOCK_ONFAULT;
    }
    if f.sealed {
        extra |= VMA_EXTRA_SEAL;
    }
    (map, madvise, extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn every_advice_is_recorded_and_applied() {
        let f = classify(
            &codes("rd wr mr mw me ac sr dc dd hg mg wf sd lo lf sl"),
            false,
        )
        .unwrap();
        assert!(f.sequential && f.dontfork && f.dontdump && f.hugepage && f.mergeable);
        assert!(f.wipeonfork && f.locked && f.lockonfault && f.sealed);
        assert!(!f.random && !f.nohugepage && !f.shared_maywrite);
        let (map, madvise, extra) = restore_args(&f, libc::MAP_PRIVATE);
        assert_eq!(
            map & libc::MAP_LOCKED,
            0,
            "locked on fault is mlock2, not MAP_LOCKED"
        );
        let mut got: Vec<u32> = madvise.iter().copied().filter(|&a| a != 0).collect();
        got.sort_unstable();
        let mut want = vec![
            libc::MADV_SEQUENTIAL,
            libc::MADV_DONTFORK,
            libc::MADV_DONTDUMP,
            libc::MADV_HUGEPAGE,
            libc::MADV_MERGEABLE,
            libc::MADV_WIPEONFORK,
        ]
        .into_iter()
        .map(|a| a as u32)
        .collect::<Vec<_>>();
        want.sort_unstable();
        assert_eq!(got, want, "none of the advices may be dropped");
        assert_eq!(extra, VMA_EXTRA_LOCK_ONFAULT | VMA_EXTRA_SEAL);

        let f = classify(&codes("rd mr rr nh gd nr lo dp"), false).unwrap();
        let (map, madvise, extra) = restore_args(&f, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS);
        assert_eq!(map & MAP_TYPE, MAP_DROPPABLE);
        assert_ne!(map & libc::MAP_ANONYMOUS, 0);
        assert_ne!(map & libc::MAP_GROWSDOWN, 0);
        assert_ne!(map & libc::MAP_NORESERVE, 0);
        assert_ne!(map & libc::MAP_LOCKED, 0);
        assert_eq!(
            madvise[..2],
            [libc::MADV_RANDOM as u32, libc::MADV_NOHUGEPAGE as u32]
        );
        assert_eq!(extra, 0);
    }

    #[test]
    fn may_write_is_kept_for_shared_file_mappings_only() {
        assert!(
            classify(&codes("rd mr mw ms sh"), true)
                .unwrap()
                .shared_maywrite
        );
        assert!(!classify(&codes("rd mr mw"), false).unwrap().shared_maywrite);
        assert!(
            !classify(&codes("rd mr ms sh"), true)
                .unwrap()
                .shared_maywrite
        );
    }

    #[test]
    fn what_cannot_be_restored_is_refused_by_name() {
        for (c, needle) in [
            ("um", "userfaultfd"),
            ("ss", "shadow stack"),
            ("mm", "VM_MIXEDMAP"),
            ("zz", "`zz`"),
        ] {
            let err = classify(&codes(&format!("rd mr {c}")), false).unwrap_err();
            assert!(err.contains(needle), "{c}: {err}");
        }
    }
}
