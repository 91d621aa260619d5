//! memfds (memfd_create(2)): open as fds, mapped (MAP_SHARED or MAP_PRIVATE), or both, by one
//! or several processes of the tree. Each is one object, keyed by its inode: its name, size,
//! mode and seals go into a [`FileKind::Memfd`] entry of every process that holds it, and its
//! content is stored once, by the first process of the tree that holds it
//! ([`crate::pages::dump_memfds`], [`super::shared`]). A restore recreates it before the fork
//! ([`crate::restore`]'s memfd module).
//!
//! hugetlbfs memfds (MFD_HUGETLB) are refused.

use std::fs::File;
use std::os::fd::AsRawFd;

use crate::images::{FileIdentity, FileKind, Vma};
use crate::pages::{MemfdArea, MemfdSource};

use super::fds::FdTable;
use super::files::FileTable;

/// HUGETLBFS_MAGIC (include/uapi/linux/magic.h).
const HUGETLBFS_MAGIC: i64 = 0x958458f6;

/// The name of a memfd from what its fd link or maps line shows (`NAME (deleted)` after the
/// `/memfd:` prefix, or the path `/memfd:NAME`).
pub fn name_from(shown: &str) -> String {
    let s = shown.strip_prefix("/memfd:").unwrap_or(shown);
    s.strip_suffix(" (deleted)").unwrap_or(s).to_string()
}

/// The identity of the memfd `file` (opened through /proc/PID/fd/N or map_files) named
/// `name`: its size, mode and seals. Refused (the reason returned) for a hugetlbfs memfd.
pub fn identity(file: &File, name: &str) -> Result<FileIdentity, String> {
    let md = file
        .metadata()
        .map_err(|e| format!("cannot fstat the memfd {name}: {e}"))?;
    // SAFETY: fstatfs on a descriptor we own, into a zeroed statfs.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `st` is a valid out-pointer.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return Err(format!(
            "cannot fstatfs the memfd {name}: {}",
            std::io::Error::last_os_error()
        ));
    }
    if st.f_type as i64 == HUGETLBFS_MAGIC {
        return Err(format!(
            "the memfd {name} is backed by huge pages (MFD_HUGETLB), which crest cannot restore"
        ));
    }
    // SAFETY: F_GET_SEALS on a descriptor we own; no pointer involved.
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 {
        return Err(format!(
            "cannot read the seals of the memfd {name} (fcntl F_GET_SEALS): {}",
            std::io::Error::last_os_error()
        ));
    }
    if name.len() > crate::images::validate::MEMFD_NAME_MAX || name.contains('\0') {
        return Err(format!("the memfd name {name:?} is too long"));
    }
    let kind = FileKind::Memfd {
        name: name.to_string(),
        seals: seals as u32,
    };
    Ok(crate::files::stat_identity(
        format!("/memfd:{name}"),
        kind,
        &md,
    ))
}

/// The memfds of a process whose content is to be read, each once, sorted by inode: through
/// an fd on it when the process has one, else through one of its mappings.
pub fn content_areas(files: &FileTable, fds: &FdTable, vmas: &[Vma]) -> Vec<MemfdArea> {
    let mut out: Vec<MemfdArea> = Vec::new();
    let mut sources: Vec<(u32, MemfdSource)> = fds
        .fds
        .iter()
        .map(|f| {
            (
                fds.open_files[f.description as usize].file,
                MemfdSource::Fd(f.fd),
            )
        })
        .collect();
    sources.extend(MemfdSource::mappings(vmas));
    for (file, source) in sources {
        let ident = files.get(file);
        let FileKind::Memfd { name, .. } = &ident.kind else {
            continue;
        };
        if out.iter().any(|a| a.ino == ident.ino) {
            continue;
        }
        out.push(MemfdArea {
            ino: ident.ino,
            name: name.clone(),
            size: ident.size,
            source,
        });
    }
    out.sort_by_key(|a| a.ino);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_prefix_and_deleted_suffix() {
        assert_eq!(name_from("/memfd:shared (deleted)"), "shared");
        assert_eq!(name_from("/memfd:a b"), "a b");
        assert_eq!(name_from("x (deleted)"), "x");
    }
}
