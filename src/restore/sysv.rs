//! SysV shared memory segments of the image (dump/sysv.rs), recreated by crest before
//! anything is forked: under the same id (the ipc sysctl `kernel/shm_next_id`, which the kernel
//! resets to -1 after the allocation) and key, by the same creator (uid and gid switched on
//! crest's own thread for the shmget), with the stored pages written through an attachment of
//! crest's, then owner, permissions and SHM_LOCK. Each restored process attaches its segments
//! itself at their addresses (the restorer blob, shmat). A segment that was marked for removal
//! (IPC_RMID while attached) is removed again once every process has attached it, while
//! crest still holds its own attachment.
//!
//! A segment that exists with the id or key already (the dumped tree still running, or the
//! segment left behind) is a clear error: crest never takes over or replaces a live segment.

use std::io::Write;
use std::os::unix::fs::FileExt;

use crate::images::{Image, SysvShmSegment};

use super::RestoreError;

const SHM_NEXT_ID: &str = "/proc/sys/kernel/shm_next_id";

/// The segments crest created, with its own attachments; removed again if dropped before
/// [`SysvSegments::commit`] (a failed restore).
#[derive(Default)]
pub struct SysvSegments {
    /// (segment, crest's attachment address).
    made: Vec<(SysvShmSegment, usize)>,
    committed: bool,
}

fn os(what: String) -> impl FnOnce(std::io::Error) -> RestoreError {
    move |source| RestoreError::Os { what, source }
}

fn last_os(what: String) -> RestoreError {
    RestoreError::Os {
        what,
        source: std::io::Error::last_os_error(),
    }
}

/// Whether a segment with id `id` exists (IPC_STAT succeeds).
fn id_in_use(id: i32) -> bool {
    crate::dump::sysv_stat(id).is_ok()
}

/// The id of the segment with key `key`, if one exists.
fn key_in_use(key: i32) -> Option<i32> {
    if key == libc::IPC_PRIVATE {
        return None;
    }
    // SAFETY: shmget without IPC_CREAT only looks the key up.
    let id = unsafe { libc::shmget(key, 0, 0) };
    (id >= 0).then_some(id)
}

/// Why `seg` cannot be created, if a segment holds its id or key already.
pub fn conflict(seg: &SysvShmSegment) -> Option<String> {
    let taken = if id_in_use(seg.id) {
        Some(seg.id)
    } else {
        key_in_use(seg.key)
    };
    taken.map(|id| {
        format!(
            "SysV shared memory segment {} (key {:#x}) cannot be restored: segment {id} with \
             that {} exists already (is the dumped program still running, or was it dumped with \
             -R?); stop it, or remove the segment with `ipcrm -m {id}` if nothing uses it",
            seg.id,
            seg.key,
            if id == seg.id { "id" } else { "key" }
        )
    })
}

/// Runs `f` with crest's effective uid and gid (this thread only, raw system calls) switched
/// to `uid`/`gid`, so that what it creates has them as creator; back to root after.
pub(super) fn as_creator<T>(uid: u32, gid: u32, f: impl FnOnce() -> T) -> Result<T, RestoreError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || (uid == 0 && gid == 0) {
        return Ok(f());
    }
    let set = |which: libc::c_long, id: u32| -> Result<(), RestoreError> {
        // SAFETY: setresuid/setresgid with -1 for the unchanged ids; on the calling thread only
        // (the raw system call, not glibc's process-wide wrapper).
        let r = unsafe { libc::syscall(which, -1i64, id as libc::c_long, -1i64) };
        if r < 0 {
            return Err(last_os(format!(
                "switching crest's effective {} to {id} to create a SysV segment",
                if which == libc::SYS_setresuid {
                    "uid"
                } else {
                    "gid"
                }
            )));
        }
        Ok(())
    };
    set(libc::SYS_setresgid, gid)?;
    if let Err(e) = set(libc::SYS_setresuid, uid) {
        let _ = set(libc::SYS_setresgid, 0);
        return Err(e);
    }
    let out = f();
    // Back to euid 0: the kernel gives the permitted capabilities back as effective ones.
    set(libc::SYS_setresuid, 0)?;
    set(libc::SYS_setresgid, 0)?;
    Ok(out)
}

impl SysvSegments {
    /// Creates, fills and attaches (in crest) every segment of the image.
    pub fn create(image: &Image) -> Result<SysvSegments, RestoreError> {
        let mut out = SysvSegments::default();
        let problems: Vec<String> = image
            .processes
            .iter()
            .flat_map(|p| p.sysv_shm.iter().filter_map(conflict))
            .collect();
        if !problems.is_empty() {
            return Err(RestoreError::Ipc(problems.join("; ")));
        }
        for p in &image.processes {
            if p.sysv_shm.is_empty() {
                continue;
            }
            let pages = super::open_page_file(image, p)?;
            for seg in &p.sysv_shm {
                let addr = out.make(seg)?;
                fill(seg, addr, &pages, p.pid)?;
            }
        }
        Ok(out)
    }

    /// Creates segment `seg` under its id and attaches it in crest; returns the address.
    fn make(&mut self, seg: &SysvShmSegment) -> Result<usize, RestoreError> {
        std::fs::OpenOptions::new()
            .write(true)
            .open(SHM_NEXT_ID)
            .and_then(|mut f| f.write_all(seg.id.to_string().as_bytes()))
            .map_err(os(format!(
                "writing {} to {SHM_NEXT_ID} to recreate SysV segment {} under its id",
                seg.id, seg.id
            )))?;
        let key = if seg.removed {
            libc::IPC_PRIVATE
        } else {
            seg.key
        };
        let flags = libc::IPC_CREAT | libc::IPC_EXCL | (seg.mode & 0o777) as i32;
        // SAFETY: shmget creates a new segment; no memory is passed.
        let got = as_creator(seg.cuid, seg.cgid, || unsafe {
            libc::shmget(key, seg.size as usize, flags)
        })?;
        if got < 0 {
            let err = last_os(format!(
                "creating SysV segment {} (key {:#x}, {} bytes) with shmget",
                seg.id, seg.key, seg.size
            ));
            let _ = std::fs::write(SHM_NEXT_ID, "-1");
            return Err(err);
        }
        // SAFETY: attaching the segment just created at an address the kernel picks.
        let addr = unsafe { libc::shmat(got, std::ptr::null(), 0) };
        if addr as isize == -1 {
            let err = last_os(format!("attaching the new SysV segment {got} in crest"));
            remove(got);
            return Err(err);
        }
        self.made.push((
            SysvShmSegment {
                id: got,
                ..seg.clone()
            },
            addr as usize,
        ));
        if got != seg.id {
            return Err(RestoreError::Ipc(format!(
                "SysV segment {} was recreated as segment {got}: the kernel did not take the id \
                 from {SHM_NEXT_ID}",
                seg.id
            )));
        }
        set_owner(seg)?;
        if seg.locked {
            // SAFETY: SHM_LOCK takes no buffer.
            if unsafe { libc::shmctl(seg.id, libc::SHM_LOCK, std::ptr::null_mut()) } < 0 {
                return Err(last_os(format!(
                    "locking SysV segment {} (SHM_LOCK)",
                    seg.id
                )));
            }
        }
        Ok(addr as usize)
    }

    /// Every process has attached its segments: those that were being removed are removed
    /// again (they live on while attached), and crest detaches its own attachments.
    pub fn commit(mut self) -> Result<(), RestoreError> {
        self.committed = true;
        for (seg, addr) in std::mem::take(&mut self.made) {
            if seg.removed {
                // SAFETY: IPC_RMID takes no buffer.
                if unsafe { libc::shmctl(seg.id, libc::IPC_RMID, std::ptr::null_mut()) } < 0 {
                    return Err(last_os(format!(
                        "marking the restored SysV segment {} for removal (IPC_RMID)",
                        seg.id
                    )));
                }
            }
            detach(addr);
        }
        Ok(())
    }
}

impl Drop for SysvSegments {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        for (seg, addr) in self.made.drain(..) {
            remove(seg.id);
            detach(addr);
        }
    }
}

fn remove(id: i32) {
    // SAFETY: IPC_RMID takes no buffer.
    unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
}

fn detach(addr: usize) {
    // SAFETY: `addr` is an attachment crest made itself and nothing in crest refers to.
    unsafe { libc::shmdt(addr as *const libc::c_void) };
}

/// Owner, group and permissions, with IPC_SET (the creator stays who created it).
fn set_owner(seg: &SysvShmSegment) -> Result<(), RestoreError> {
    let mut ds = crate::dump::sysv_stat(seg.id)
        .map_err(os(format!("reading the new SysV segment {}", seg.id)))?;
    ds.shm_perm.uid = seg.uid;
    ds.shm_perm.gid = seg.gid;
    ds.shm_perm.mode = (seg.mode & 0o777) as _;
    // SAFETY: IPC_SET reads one shmid_ds from `ds`.
    if unsafe { libc::shmctl(seg.id, libc::IPC_SET, &mut ds) } < 0 {
        return Err(last_os(format!(
            "setting owner {}:{} and mode {:o} of SysV segment {} (IPC_SET)",
            seg.uid, seg.gid, seg.mode, seg.id
        )));
    }
    Ok(())
}

/// Writes the stored pages of `seg` into crest's attachment at `addr`.
fn fill(
    seg: &SysvShmSegment,
    addr: usize,
    pages: &std::fs::File,
    pid: i32,
) -> Result<(), RestoreError> {
    let page = crate::arch::page_size();
    let size = seg.size.div_ceil(page) * page;
    for r in &seg.runs {
        let len = r.npages * page;
        // Validated (images::validate), checked again since memory is written.
        if r.offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(RestoreError::BadImage(format!(
                "pid {pid}: a stored run of SysV segment {} lies outside it",
                seg.id
            )));
        }
        // SAFETY: [addr + offset, + len) lies inside crest's attachment of the segment (checked
        // above), which nothing else in crest refers to.
        let dst = unsafe {
            std::slice::from_raw_parts_mut((addr as *mut u8).add(r.offset as usize), len as usize)
        };
        pages.read_exact_at(dst, r.file_offset).map_err(os(format!(
            "reading the stored pages of SysV segment {} from pid {pid}'s page file",
            seg.id
        )))?;
    }
    Ok(())
}
