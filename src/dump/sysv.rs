//! SysV shared memory attached by the tree (`/SYSV<key> (deleted)` in maps).
//!
//! Scope: the segments that processes of the tree have attached. A segment is an object of
//! the IPC namespace, not of a process; a segment nobody in the tree has attached is left
//! where it is (it outlives the processes anyway). Each attached segment is recorded once in
//! the tree (by the first process, in tree order, that attaches it): id, key, permissions,
//! owner and creator, size, SHM_LOCKED and SHM_DEST (IPC_RMID pending), and its non-zero
//! pages, read through `/proc/PID/map_files` (which opens the segment's shmem object, so the
//! dump neither attaches it nor changes its attach count). An attachment is restored with
//! shmat at the same address (the restorer blob), read-only when it was.
//!
//! Refused: a segment of another IPC namespace than crest's, an attachment that no longer
//! covers the whole segment (split by mprotect or partly unmapped), hugetlb segments.

use std::os::unix::fs::MetadataExt;

use crate::images::SysvShmSegment;
use crate::proc::{MapEntry, Proc};

/// A segment a process attaches, as found by the VMA scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysvArea {
    /// The attachment (a mapping of the process) its content is read through.
    pub start: u64,
    pub end: u64,
    /// The segment, without its runs (filled by the page dump).
    pub segment: SysvShmSegment,
}

/// SHM_DEST and SHM_LOCKED in `shm_perm.mode` (include/uapi/linux/shm.h).
const SHM_DEST: u32 = 0o1000;
const SHM_LOCKED: u32 = 0o2000;

/// The segment record from `shmctl(IPC_STAT)`.
pub fn segment_from(id: i32, ds: &libc::shmid_ds) -> SysvShmSegment {
    let mode = ds.shm_perm.mode as u32;
    SysvShmSegment {
        id,
        key: ds.shm_perm.__key,
        mode: mode & 0o777,
        uid: ds.shm_perm.uid,
        gid: ds.shm_perm.gid,
        cuid: ds.shm_perm.cuid,
        cgid: ds.shm_perm.cgid,
        size: ds.shm_segsz as u64,
        locked: mode & SHM_LOCKED != 0,
        removed: mode & SHM_DEST != 0,
        runs: Vec::new(),
    }
}

/// `shmctl(id, IPC_STAT)`.
pub fn stat(id: i32) -> std::io::Result<libc::shmid_ds> {
    // SAFETY: an all-zero shmid_ds is valid plain data, filled by the kernel.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes one shmid_ds into `ds`.
    if unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ds)
}

/// Whether process `pid` is in crest's own IPC namespace (segment ids are per namespace).
fn same_ipc_namespace(pid: i32) -> Result<bool, String> {
    let ns = |p: &str| {
        std::fs::metadata(p)
            .map(|m| (m.dev(), m.ino()))
            .map_err(|e| format!("cannot read {p}: {e}"))
    };
    Ok(ns(&format!("/proc/{pid}/ns/ipc"))? == ns("/proc/self/ns/ipc")?)
}

/// The segment behind the SysV mapping `m` of `proc` (its inode in maps is the segment id), or
/// why it cannot be dumped.
pub fn attachment(proc: &Proc, m: &MapEntry) -> Result<SysvArea, String> {
    if !same_ipc_namespace(proc.pid())? {
        return Err(
            "the process is in another IPC namespace than crest; run crest in that namespace"
                .into(),
        );
    }
    let id = i32::try_from(m.inode).map_err(|_| format!("segment id {} is invalid", m.inode))?;
    let ds = stat(id).map_err(|e| format!("shmctl IPC_STAT of segment {id} failed: {e}"))?;
    let segment = segment_from(id, &ds);
    let page = crate::arch::page_size();
    if m.offset != 0 || m.end - m.start != segment.size.div_ceil(page) * page {
        return Err(format!(
            "the attachment of segment {id} ({} bytes) no longer covers the whole segment (split \
             by mprotect or partly unmapped); crest restores whole attachments only",
            segment.size
        ));
    }
    Ok(SysvArea {
        start: m.start,
        end: m.end,
        segment,
    })
}

/// Where the page dump reads `a`'s segment.
pub fn source(a: &SysvArea) -> crate::pages::SysvSource {
    crate::pages::SysvSource {
        start: a.start,
        end: a.end,
        size: a.segment.size,
    }
}

/// The segments `areas` with their stored runs (`runs[i]` of `areas[i]`).
pub fn with_runs(
    areas: &[SysvArea],
    runs: Vec<Vec<crate::images::SysvShmRun>>,
) -> Vec<SysvShmSegment> {
    areas
        .iter()
        .zip(runs)
        .map(|(a, runs)| SysvShmSegment {
            runs,
            ..a.segment.clone()
        })
        .collect()
}

/// Keeps each segment in the first process (in tree order) that attaches it: `areas[i]` are
/// the segments of the tree's i-th process; later copies are dropped.
pub fn store_once(areas: &mut [&mut Vec<SysvArea>]) {
    let mut seen = std::collections::HashSet::new();
    for list in areas.iter_mut() {
        list.retain(|a| seen.insert(a.segment.id));
    }
}

/// After the tree was killed: removes the segments the image holds that nobody attaches any
/// more and that were not already being removed, since the image now owns them and a restore
/// recreates them under the same id and key. Returns what could not be removed, in words.
pub fn remove_captured(segments: &[SysvShmSegment]) -> Vec<String> {
    let mut notes = Vec::new();
    for s in segments.iter().filter(|s| !s.removed) {
        // The killed processes are gone, but the last reference to a memory map may be
        // dropped a moment later (a /proc reader holding it): wait for a while for the
        // attach count to drop.
        let mut tries = 0;
        let ds = loop {
            match stat(s.id) {
                Ok(ds) if ds.shm_nattch != 0 && tries < 200 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Ok(ds) => break Some(ds),
                // Gone already (removed by someone else).
                Err(_) => break None,
            }
        };
        let Some(ds) = ds else { continue };
        if ds.shm_perm.__key != s.key || ds.shm_nattch != 0 {
            notes.push(format!(
                "SysV shared memory segment {} (key {:#x}) is still attached by {} process(es) \
                 outside the tree; it was left in place, and a restore on this machine will \
                 refuse until it is removed",
                s.id, s.key, ds.shm_nattch
            ));
            continue;
        }
        // SAFETY: IPC_RMID takes no buffer.
        if unsafe { libc::shmctl(s.id, libc::IPC_RMID, std::ptr::null_mut()) } < 0 {
            notes.push(format!(
                "removing SysV shared memory segment {} (key {:#x}) failed: {}",
                s.id,
                s.key,
                std::io::Error::last_os_error()
            ));
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_become_the_segment() {
        // SAFETY: plain data.
        let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
        ds.shm_perm.__key = 0x1234;
        ds.shm_perm.mode = (0o640 | SHM_DEST | SHM_LOCKED) as _;
        ds.shm_perm.uid = 7;
        ds.shm_perm.gid = 8;
        ds.shm_perm.cuid = 9;
        ds.shm_perm.cgid = 10;
        ds.shm_segsz = 5000;
        let s = segment_from(42, &ds);
        assert_eq!((s.id, s.key, s.mode, s.size), (42, 0x1234, 0o640, 5000));
        assert_eq!((s.uid, s.gid, s.cuid, s.cgid), (7, 8, 9, 10));
        assert!(s.locked && s.removed);
        ds.shm_perm.mode = 0o600;
        let s = segment_from(42, &ds);
        assert!(!s.locked && !s.removed);
    }

    #[test]
    fn each_segment_is_stored_by_the_first_process() {
        let area = |id: i32| SysvArea {
            start: 0,
            end: 4096,
            segment: SysvShmSegment {
                id,
                key: 0,
                mode: 0o600,
                uid: 0,
                gid: 0,
                cuid: 0,
                cgid: 0,
                size: 4096,
                locked: false,
                removed: false,
                runs: vec![],
            },
        };
        let mut a = vec![area(1), area(2)];
        let mut b = vec![area(2), area(3)];
        store_once(&mut [&mut a, &mut b]);
        assert_eq!(a.len(), 2);
        assert_eq!(b.iter().map(|x| x.segment.id).collect::<Vec<_>>(), [3]);
    }
}
