//! memfds of a tree: each created once by crest before anything is forked (memfd_create with
//! its name, ftruncate to its size, its content written, its mode set, its seals added last
//! with F_ADD_SEALS), then shared by every process that holds it: descriptions are new opens
//! of it through `/proc/self/fd/N` (files.rs), mappings map it (bootstrap.rs), so
//! /proc/PID/maps and the fd links show `/memfd:NAME (deleted)` as before the dump.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;

use crate::images::{FileKind, Image, F_SEAL_SEAL};

use super::RestoreError;

/// Creates every memfd the image's processes hold, each once, keyed by its inode at dump time;
/// descriptors are numbered at `base` or above.
pub fn create_all(image: &Image, base: RawFd) -> Result<HashMap<u64, OwnedFd>, RestoreError> {
    let page = crate::arch::page_size();
    let mut out: HashMap<u64, OwnedFd> = HashMap::new();
    for p in &image.processes {
        for f in &p.files {
            let FileKind::Memfd { name, seals } = &f.kind else {
                continue;
            };
            if out.contains_key(&f.ino) {
                continue;
            }
            let fail = |what: &str, source: std::io::Error| RestoreError::Os {
                what: format!("{what} for the memfd {name} (inode {} at dump)", f.ino),
                source,
            };
            let cname = CString::new(name.as_str())
                .map_err(|_| RestoreError::BadImage(format!("memfd name {name:?} holds a NUL")))?;
            // Without MFD_ALLOW_SEALING a memfd carries F_SEAL_SEAL from the start.
            let mut flags = libc::MFD_CLOEXEC;
            if *seals != F_SEAL_SEAL {
                flags |= libc::MFD_ALLOW_SEALING;
            }
            // SAFETY: cname is a valid C string; memfd_create has no other preconditions.
            let raw = unsafe { libc::memfd_create(cname.as_ptr(), flags) };
            if raw < 0 {
                return Err(fail("memfd_create", std::io::Error::last_os_error()));
            }
            // SAFETY: raw is a fresh descriptor we own.
            let file = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
            file.set_len(f.size).map_err(|e| fail("ftruncate", e))?;
            for q in &image.processes {
                let runs: Vec<_> = q.memfd_runs.iter().filter(|r| r.ino == f.ino).collect();
                if runs.is_empty() {
                    continue;
                }
                let pages = super::open_page_file(image, q)?;
                for r in runs {
                    // Validated: inside the memfd's size rounded up to pages. The last page
                    // is cut at the size, so writing it does not grow the memfd.
                    let len = (r.npages * page).min(f.size.saturating_sub(r.offset));
                    let mut buf = vec![0u8; len as usize];
                    pages
                        .read_exact_at(&mut buf, r.file_offset)
                        .map_err(|e| fail("reading its stored pages", e))?;
                    file.write_all_at(&buf, r.offset)
                        .map_err(|e| fail("writing its content", e))?;
                }
            }
            // SAFETY: fchmod on a descriptor we own.
            if unsafe { libc::fchmod(file.as_raw_fd(), f.mode & 0o7777) } != 0 {
                return Err(fail("fchmod", std::io::Error::last_os_error()));
            }
            if *seals != F_SEAL_SEAL && *seals != 0 {
                // SAFETY: F_ADD_SEALS on a descriptor we own; no pointer involved.
                if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, *seals as i32) } != 0 {
                    return Err(fail(
                        "adding its seals (F_ADD_SEALS)",
                        std::io::Error::last_os_error(),
                    ));
                }
            }
            let fd = super::files::above(OwnedFd::from(file), base, &format!("the memfd {name}"))?;
            out.insert(f.ino, fd);
        }
    }
    Ok(out)
}
