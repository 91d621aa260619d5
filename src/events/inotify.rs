//! inotify instances, both sides.
//!
//! Dump: the fdinfo of an inotify instance lists every watch (wd, inode, device, mask and a
//! file handle). The watched file's path comes from the handle: opened with open_by_handle_at
//! on a mount of its filesystem, the path read back from `/proc/self/fd/N`, then checked to
//! name that very inode. Refused: a watch on a deleted file, a watch whose path cannot be
//! found, and events queued and not read yet (reading them would take them from the process).
//!
//! Restore: inotify_init1, then each watch in ascending wd order: INOTIFY_IOC_SETNEXTWD so the
//! kernel hands out the original wd, inotify_add_watch with the recorded mask, and a check that
//! the wd and the inode are the ones dumped.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::images::{FileIdentity, FileKind, Inotify, InotifyWatch};
use crate::proc::{InotifyLine, Proc};
use crate::sys;

use super::EventError;

/// The image's record of the inotify instance at fd `fd` of `proc` whose fdinfo listed
/// `lines`; the refusal (without pid and fd) when it cannot be restored.
pub fn identity(
    proc: &Proc,
    fd: RawFd,
    lines: &[InotifyLine],
    dev: u64,
    ino: u64,
) -> Result<FileIdentity, String> {
    let queued = queued_bytes(proc.pid(), fd)?;
    if queued > 0 {
        return Err(format!(
            "an inotify instance with {queued} bytes of events not read yet; crest cannot put \
             queued inotify events back, so dump again once the process has read them"
        ));
    }
    let mut watches = Vec::with_capacity(lines.len());
    for l in lines {
        let path = watched_path(proc, l)?;
        watches.push(InotifyWatch {
            wd: l.wd,
            mask: l.mask,
            path,
            dev: l.st_dev(),
            ino: l.ino,
        });
    }
    watches.sort_by_key(|w| w.wd);
    Ok(crate::files::object_identity(
        "anon_inode:inotify".into(),
        FileKind::Inotify(Inotify { watches }),
        dev,
        ino,
    ))
}

/// Bytes of events queued in the inotify instance at fd `fd` of `pid` (FIONREAD on a copy).
fn queued_bytes(pid: i32, fd: RawFd) -> Result<i32, String> {
    let copy = sys::pidfd_open(pid)
        .and_then(|pidfd| sys::pidfd_getfd(&pidfd, fd))
        .map_err(|e| format!("an inotify instance crest cannot look into (pidfd_getfd: {e})"))?;
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to a live variable.
    if unsafe { libc::ioctl(copy.as_raw_fd(), libc::FIONREAD, &mut n) } != 0 {
        return Err(format!(
            "an inotify instance whose queue crest cannot measure (ioctl FIONREAD: {})",
            std::io::Error::last_os_error()
        ));
    }
    Ok(n)
}

/// The path of the inode a watch is on, from its file handle.
fn watched_path(proc: &Proc, l: &InotifyLine) -> Result<String, String> {
    let what = format!("an inotify instance whose watch {}", l.wd);
    let Some((handle_type, handle)) = &l.handle else {
        return Err(format!(
            "{what} has no file handle in fdinfo (a kernel without CONFIG_EXPORTFS), so crest \
             cannot find the watched file"
        ));
    };
    let mounts = proc
        .mount_points_of(l.st_dev())
        .map_err(|e| e.to_string())?;
    let mut deleted = false;
    for mount in mounts {
        let Ok(file) = open_handle(&mount, *handle_type, handle) else {
            continue;
        };
        let Ok(link) = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) else {
            continue;
        };
        let shown = link.to_string_lossy().into_owned();
        if shown.ends_with(" (deleted)") {
            deleted = true;
            continue;
        }
        let Ok(md) = std::fs::symlink_metadata(&link) else {
            continue;
        };
        if md.dev() == l.st_dev() && md.ino() == l.ino && shown.starts_with('/') {
            return Ok(shown);
        }
    }
    if deleted {
        return Err(format!(
            "{what} is on a deleted file (inode {}), which crest cannot watch again",
            l.ino
        ));
    }
    Err(format!(
        "{what} is on inode {} of device {}:{}, whose path crest cannot find",
        l.ino,
        libc::major(l.st_dev()),
        libc::minor(l.st_dev())
    ))
}

/// open_by_handle_at(mount of `mount`, handle, O_PATH).
fn open_handle(mount: &PathBuf, handle_type: i32, handle: &[u8]) -> std::io::Result<OwnedFd> {
    let dir = std::fs::File::open(mount)?;
    // struct file_handle: u32 handle_bytes, i32 handle_type, then the bytes; u32-aligned.
    let mut buf = vec![0u32; 2 + handle.len().div_ceil(4)];
    buf[0] = handle.len() as u32;
    buf[1] = handle_type as u32;
    // SAFETY: buf has room for the 8-byte header and handle.len() bytes after it.
    unsafe {
        std::ptr::copy_nonoverlapping(
            handle.as_ptr(),
            buf.as_mut_ptr().add(2).cast::<u8>(),
            handle.len(),
        )
    };
    // SAFETY: buf is a valid struct file_handle; the result is a new fd or -1.
    let raw = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            dir.as_raw_fd(),
            buf.as_mut_ptr(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh descriptor the kernel just gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(raw as RawFd) })
}

fn fail(what: String) -> EventError {
    EventError {
        what,
        source: std::io::Error::last_os_error(),
    }
}

/// `INOTIFY_IOC_SETNEXTWD`: `_IOW('I', 0, __u32)` (CONFIG_CHECKPOINT_RESTORE).
const INOTIFY_IOC_SETNEXTWD: libc::c_ulong = 0x4004_4900;

/// A new inotify instance with the watches of `ino`, each under its wd, and the status flags
/// (O_NONBLOCK) of `status_flags`, close-on-exec.
pub fn create(ino: &Inotify, status_flags: u32) -> Result<OwnedFd, EventError> {
    let nonblock = status_flags as i32 & libc::O_NONBLOCK;
    // SAFETY: inotify_init1 takes flags and returns a new fd or -1.
    let raw = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | nonblock) };
    if raw < 0 {
        return Err(fail("an inotify instance (inotify_init1)".into()));
    }
    // SAFETY: raw is a fresh descriptor the kernel just gave us.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    for w in &ino.watches {
        let changed = |why: String| EventError {
            what: format!("the inotify watch {} on {}: {why}", w.wd, w.path),
            source: std::io::Error::from_raw_os_error(libc::ESTALE),
        };
        match std::fs::symlink_metadata(&w.path) {
            Ok(md) if md.dev() == w.dev && md.ino() == w.ino => {}
            Ok(_) => {
                return Err(changed(
                    "the path names another file than at dump time (replaced or renamed)".into(),
                ))
            }
            Err(e) => return Err(changed(format!("the file cannot be found ({e})"))),
        }
        // SAFETY: the ioctl takes the wanted wd as its integer argument, no pointer.
        if unsafe { libc::ioctl(fd.as_raw_fd(), INOTIFY_IOC_SETNEXTWD, w.wd as libc::c_ulong) } != 0
        {
            return Err(fail(format!(
                "setting the next watch descriptor to {} (ioctl INOTIFY_IOC_SETNEXTWD; needs \
                 CONFIG_CHECKPOINT_RESTORE)",
                w.wd
            )));
        }
        let path = CString::new(w.path.as_bytes()).map_err(|_| changed("NUL in path".into()))?;
        /// IN_MASK_ADD, IN_MASK_CREATE: how to add, not state (never in fdinfo's mask).
        const HOW: u32 = 0x2000_0000 | 0x1000_0000;
        // SAFETY: path is a valid C string.
        let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), w.mask & !HOW) };
        if wd < 0 {
            return Err(fail(format!(
                "watching {} with mask {:#x} (inotify_add_watch)",
                w.path, w.mask
            )));
        }
        if wd != w.wd {
            return Err(changed(format!("the kernel gave it wd {wd}")));
        }
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Proc {
        Proc::open(std::process::id() as i32).unwrap()
    }

    #[test]
    fn watches_come_back_with_their_wds_masks_and_paths() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let dmd = std::fs::metadata(dir.path()).unwrap();
        let fmd = std::fs::metadata(&file).unwrap();
        let ino = Inotify {
            watches: vec![
                InotifyWatch {
                    wd: 3,
                    mask: libc::IN_CREATE | libc::IN_DELETE,
                    path: dir.path().to_string_lossy().into_owned(),
                    dev: dmd.dev(),
                    ino: dmd.ino(),
                },
                InotifyWatch {
                    wd: 7,
                    mask: libc::IN_MODIFY | libc::IN_ONESHOT,
                    path: file.to_string_lossy().into_owned(),
                    dev: fmd.dev(),
                    ino: fmd.ino(),
                },
            ],
        };
        let fd = create(&ino, libc::O_NONBLOCK as u32).unwrap();
        let info = me().fdinfo(fd.as_raw_fd()).unwrap();
        let mut got: Vec<(i32, u32, u64)> =
            info.inotify.iter().map(|l| (l.wd, l.mask, l.ino)).collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                (3, libc::IN_CREATE | libc::IN_DELETE, dmd.ino()),
                (7, libc::IN_MODIFY | libc::IN_ONESHOT, fmd.ino())
            ]
        );
        // And the dump side finds the same paths again.
        let back = identity(&me(), fd.as_raw_fd(), &info.inotify, 0, 0).unwrap();
        assert_eq!(back.kind, FileKind::Inotify(ino.clone()));
        // An event queued: refused with its size.
        std::fs::write(dir.path().join("new"), b"").unwrap();
        let err = identity(&me(), fd.as_raw_fd(), &info.inotify, 0, 0).unwrap_err();
        assert!(err.contains("bytes of events not read yet"), "{err}");
    }

    #[test]
    fn a_replaced_file_is_not_watched_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let md = std::fs::metadata(&file).unwrap();
        let _keep = std::fs::File::open(&file).unwrap();
        std::fs::remove_file(&file).unwrap();
        std::fs::write(&file, b"x").unwrap();
        let ino = Inotify {
            watches: vec![InotifyWatch {
                wd: 1,
                mask: libc::IN_MODIFY,
                path: file.to_string_lossy().into_owned(),
                dev: md.dev(),
                ino: md.ino(),
            }],
        };
        let err = create(&ino, 0).unwrap_err().to_string();
        assert!(err.contains("another file"), "{err}");
    }
}
