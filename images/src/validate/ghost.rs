//! Unlinked ("ghost") files ([`FileKind::Ghost`]) and their stored content
//! ([`ProcessImage::ghost_runs`]).

use std::collections::HashMap;

use crate::schema::*;

use super::{check_content_run, ContentRun, SHMEM_SIZE_MAX};

const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;

/// Largest size of a ghost file crest accepts in an image (the shmem bound: ftruncate to it
/// must be possible, and a run offset must not overflow).
pub const GHOST_SIZE_MAX: u64 = SHMEM_SIZE_MAX;

/// A ghost is a regular file or a directory, at an absolute path that has a directory and a
/// name (where the restore recreates it), with no NUL byte.
pub(super) fn check_ghost(i: usize, f: &FileIdentity) -> Result<(), String> {
    let ty = f.mode & S_IFMT;
    if ty != S_IFREG && ty != S_IFDIR {
        return Err(format!(
            "file {i} is an unlinked file of mode {:o}: only regular files and directories \
             can be",
            f.mode
        ));
    }
    let name = f.path.rsplit('/').next().unwrap_or("");
    if !f.path.starts_with('/') || f.path.contains('\0') || name.is_empty() || name == ".." {
        return Err(format!(
            "file {i} is an unlinked file at {:?}, not an absolute path with a name",
            f.path
        ));
    }
    if f.size > GHOST_SIZE_MAX {
        return Err(format!(
            "file {i} is an unlinked file of {} bytes (at most {GHOST_SIZE_MAX:#x})",
            f.size
        ));
    }
    Ok(())
}

/// Each run names a regular ghost file of the process, lies inside it (its size rounded up to
/// pages) and inside the page file; runs are sorted by file and offset and do not overlap.
pub(super) fn check_ghost_runs(
    p: &ProcessImage,
    page_file_size: u64,
    page_size: u64,
) -> Result<(), String> {
    let mut prev = None;
    for (i, r) in p.ghost_runs.iter().enumerate() {
        let what = format!(
            "ghost run {i} ({} pages at offset {:#x} of file {})",
            r.npages, r.offset, r.file
        );
        let f = p
            .files
            .get(r.file as usize)
            .filter(|f| matches!(f.kind, FileKind::Ghost(_)) && f.mode & S_IFMT == S_IFREG)
            .ok_or_else(|| format!("{what} names no unlinked regular file"))?;
        let run = ContentRun {
            key: u64::from(r.file),
            offset: r.offset,
            npages: r.npages,
            file_offset: r.file_offset,
            size: f.size,
            whose: "file",
        };
        check_content_run(&what, &run, &mut prev, p, page_file_size, page_size)?;
    }
    Ok(())
}

/// Tree-wide: every process that holds one ghost (by dump-time device and inode) describes it
/// the same way, and its content is stored by one process only.
pub(super) fn check_tree(processes: &[ProcessImage]) -> Result<(), String> {
    let mut seen: HashMap<(u64, u64), (&FileIdentity, Option<i32>)> = HashMap::new();
    for p in processes {
        for (i, f) in p.files.iter().enumerate() {
            if !matches!(f.kind, FileKind::Ghost(_)) {
                continue;
            }
            let stores = p.ghost_runs.iter().any(|r| r.file as usize == i);
            let entry = seen.entry((f.dev, f.ino)).or_insert((f, None));
            let first = entry.0;
            if (&first.path, first.size, first.mode) != (&f.path, f.size, f.mode) {
                return Err(format!(
                    "process {} describes the unlinked file {} (inode {}) otherwise than \
                     another process",
                    p.pid, f.path, f.ino
                ));
            }
            if stores {
                if let Some(other) = entry.1 {
                    if other != p.pid {
                        return Err(format!(
                            "processes {other} and {} both store the content of the unlinked \
                             file {} (inode {})",
                            p.pid, f.path, f.ino
                        ));
                    }
                }
                entry.1 = Some(p.pid);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(pid: i32, runs: bool) -> ProcessImage {
        let mut p = crate::tests::sample_process();
        p.pid = pid;
        let mut f = p.files[0].clone();
        f.kind = FileKind::Ghost(Ghost {
            uid: 0,
            gid: 0,
            atime_sec: 0,
            atime_nsec: 0,
        });
        f.path = "/tmp/x".into();
        f.ino = 99;
        p.files.push(f);
        if runs {
            p.ghost_runs = vec![GhostRun {
                file: (p.files.len() - 1) as u32,
                offset: 0,
                npages: 1,
                file_offset: 0,
            }];
        }
        p
    }

    #[test]
    fn one_ghost_is_described_alike_and_stored_once_in_the_tree() {
        check_tree(&[process(10, true), process(11, false)]).unwrap();
        let err = check_tree(&[process(10, true), process(11, true)]).unwrap_err();
        assert!(err.contains("both store"), "{err}");
        let mut other = process(11, false);
        other.files.last_mut().unwrap().size += 1;
        let err = check_tree(&[process(10, true), other]).unwrap_err();
        assert!(err.contains("otherwise"), "{err}");
    }
}
