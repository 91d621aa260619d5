//! Matching the image's `[vdso]` and `[vvar*]` areas with the running kernel's.
//!
//! The dumped program may call into the vDSO at the address it had (glibc caches the entry
//! points), so the restorer moves this kernel's vDSO and vvar pieces to the image's addresses.
//! That is only right when this kernel's vDSO is the same code: same pieces, same sizes, same
//! bytes. Otherwise the restore is refused before anything is touched (placing trampolines for
//! a different vDSO is later work).

use crate::images::{ProcessImage, VmaBacking};
use crate::proc::MapRange;

use super::blob::abi::MAX_SPECIAL_MOVES;
use super::bootstrap::Special;
use super::RestoreError;

fn is_special(name: &str) -> bool {
    name == "[vdso]" || name.starts_with("[vvar")
}

/// Pairs every vDSO/vvar piece of the image with crest's own piece of the same name and size.
pub fn plan(p: &ProcessImage, own: &[MapRange]) -> Result<Vec<Special>, RestoreError> {
    let mismatch = |what: String| {
        RestoreError::Unsupported(format!(
            "the vDSO of this kernel differs from the one pid {} had at dump time ({what}); restoring across kernels",
            p.pid
        ))
    };
    let mut out = Vec::new();
    for vma in p
        .vmas
        .iter()
        .filter(|v| matches!(v.backing, VmaBacking::Vdso | VmaBacking::Vvar))
    {
        let size = vma.end - vma.start;
        let mine = own
            .iter()
            .find(|m| m.name == vma.name && is_special(&m.name))
            .ok_or_else(|| mismatch(format!("this kernel maps no {}", vma.name)))?;
        if mine.end - mine.start != size {
            return Err(mismatch(format!(
                "{} is {} bytes here, {size} in the image",
                vma.name,
                mine.end - mine.start
            )));
        }
        if matches!(vma.backing, VmaBacking::Vdso) {
            if let Some(want) = p.vdso_blake3 {
                // SAFETY: [mine.start, mine.end) is this process's own [vdso] mapping, which is
                // readable and stays mapped for the life of the process.
                let bytes =
                    unsafe { std::slice::from_raw_parts(mine.start as *const u8, size as usize) };
                if *blake3::hash(bytes).as_bytes() != want {
                    return Err(mismatch("its code differs".into()));
                }
            }
        }
        out.push(Special {
            current: mine.clone(),
            target: vma.start,
        });
    }
    if out.len() > MAX_SPECIAL_MOVES {
        return Err(mismatch(format!(
            "{} vDSO/vvar pieces, at most {MAX_SPECIAL_MOVES} supported",
            out.len()
        )));
    }
    Ok(out)
}
