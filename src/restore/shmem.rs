//! Shared anonymous memory (MAP_SHARED|MAP_ANONYMOUS) of a tree: one shmem object per object
//! of the image, created and filled by crest before anything is forked, then mapped by every
//! process that shares it, so writes by one are seen by the others as before the dump.
//!
//! The object is what the kernel itself makes for such a mapping: crest maps a fresh
//! MAP_SHARED|MAP_ANONYMOUS area of the object's size, copies the stored pages into it, and
//! opens it through `/proc/self/map_files/<range>`. Mapping that descriptor gives the same
//! object (`/dev/zero (deleted)` in maps, as originally), and the restorer needs no page copy
//! for it.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::images::{Image, VmaBacking};

use super::RestoreError;

/// The tree's shared memory objects, by object id (inode at dump time).
#[derive(Default)]
pub struct SharedMemory {
    objects: HashMap<u64, OwnedFd>,
    /// The tree's memfds, by inode at dump time (memfd.rs).
    memfds: HashMap<u64, OwnedFd>,
    /// The tree's unlinked files, by (device, inode) at dump time (crate::files::ghost).
    ghosts: crate::files::ghost::Ghosts,
}

impl SharedMemory {
    /// Creates and fills every shared memory object the image's processes map, each once.
    /// Descriptors are numbered at `base` or above.
    pub fn create(image: &Image, base: RawFd) -> Result<SharedMemory, RestoreError> {
        let page = crate::arch::page_size();
        let mut sizes: Vec<(u64, u64)> = Vec::new();
        for p in &image.processes {
            for v in &p.vmas {
                if let VmaBacking::SharedAnonymous { object, size, .. } = v.backing {
                    if !sizes.iter().any(|&(o, _)| o == object) {
                        sizes.push((object, size));
                    }
                }
            }
        }
        let mut out = SharedMemory {
            memfds: super::memfd::create_all(image, base)?,
            ghosts: crate::files::ghost::create_all(image, base)?,
            ..SharedMemory::default()
        };
        for (object, size) in sizes {
            let area = Area::map(object, size)?;
            for p in &image.processes {
                let maps_it = p.vmas.iter().any(|v| {
                    v.shared
                        && matches!(v.backing, VmaBacking::SharedAnonymous { object: o, .. } if o == object)
                });
                if !maps_it {
                    continue;
                }
                let pages = super::open_page_file(image, p)?;
                for v in &p.vmas {
                    let VmaBacking::SharedAnonymous {
                        object: o, offset, ..
                    } = v.backing
                    else {
                        continue;
                    };
                    // A private mapping's runs are its own written pages (copied by its
                    // restorer), not the object's.
                    if o != object || !v.shared {
                        continue;
                    }
                    for r in p
                        .page_runs
                        .iter()
                        .filter(|r| r.vaddr >= v.start && r.vaddr < v.end)
                    {
                        // Validated: the run lies inside the VMA, the VMA inside the object.
                        let at = offset + (r.vaddr - v.start);
                        area.fill(at, r.npages * page, &pages, r.file_offset, p.pid)?;
                    }
                }
            }
            out.objects.insert(object, area.open(base)?);
        }
        Ok(out)
    }

    /// The descriptor of the memfd with inode `ino` at dump time.
    pub fn memfd(&self, ino: u64) -> Result<&OwnedFd, RestoreError> {
        self.memfds
            .get(&ino)
            .ok_or_else(|| RestoreError::Internal(format!("memfd {ino} was not created")))
    }

    /// crest's descriptor of the recreated unlinked file that had inode `(dev, ino)` at dump.
    pub fn ghost(&self, dev: u64, ino: u64) -> Result<&OwnedFd, RestoreError> {
        self.ghosts.get(&(dev, ino)).ok_or_else(|| {
            RestoreError::Internal(format!("deleted file {dev}/{ino} was not recreated"))
        })
    }

    /// The descriptor of object `object`.
    pub fn get(&self, object: u64) -> Result<&OwnedFd, RestoreError> {
        self.objects.get(&object).ok_or_else(|| {
            RestoreError::Internal(format!("shared memory object {object} was not created"))
        })
    }
}

/// A fresh shared anonymous mapping in crest, unmapped when dropped.
struct Area {
    addr: *mut libc::c_void,
    size: u64,
    object: u64,
}

impl Area {
    fn map(object: u64, size: u64) -> Result<Area, RestoreError> {
        // SAFETY: a new shared anonymous mapping at an address the kernel picks.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(RestoreError::Os {
                what: format!("creating shared memory object {object} of {size} bytes"),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Area { addr, size, object })
    }

    /// Reads `len` bytes of the page file at `file_offset` into the object at `at`.
    fn fill(
        &self,
        at: u64,
        len: u64,
        pages: &std::fs::File,
        file_offset: u64,
        pid: i32,
    ) -> Result<(), RestoreError> {
        use std::os::unix::fs::FileExt;
        if at.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(RestoreError::BadImage(format!(
                "pid {pid}: stored pages at {at:#x}+{len:#x} lie outside shared memory object {} \
                 of {} bytes",
                self.object, self.size
            )));
        }
        // SAFETY: [addr + at, addr + at + len) lies inside our mapping (checked above), which
        // nothing else in crest refers to.
        let dst = unsafe {
            std::slice::from_raw_parts_mut((self.addr as *mut u8).add(at as usize), len as usize)
        };
        pages
            .read_exact_at(dst, file_offset)
            .map_err(|e| RestoreError::Os {
                what: format!(
                "reading the stored pages of shared memory object {} from pid {pid}'s page file",
                self.object
            ),
                source: e,
            })
    }

    /// A descriptor of the object behind the mapping, at `base` or above.
    fn open(self, base: RawFd) -> Result<OwnedFd, RestoreError> {
        let start = self.addr as u64;
        let path = format!("/proc/self/map_files/{:x}-{:x}", start, start + self.size);
        let cpath = CString::new(path.clone()).expect("no NUL in a /proc path");
        // SAFETY: cpath is a valid C string.
        let raw = unsafe { libc::open(cpath.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if raw < 0 {
            return Err(RestoreError::Os {
                what: format!(
                    "opening shared memory object {} through {path} (needs \
                     CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN)",
                    self.object
                ),
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: raw is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if fd.as_raw_fd() >= base {
            return Ok(fd);
        }
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own.
        let moved = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, base) };
        if moved < 0 {
            return Err(RestoreError::Os {
                what: format!(
                    "moving shared memory object {} above fd {base}",
                    self.object
                ),
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: moved is a new descriptor we own.
        Ok(unsafe { OwnedFd::from_raw_fd(moved) })
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in map(); the object lives on in the
        // descriptor opened from it.
        unsafe { libc::munmap(self.addr, self.size as usize) };
    }
}
