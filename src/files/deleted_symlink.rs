//! Symbolic links removed while a process held them itself (`O_PATH | O_NOFOLLOW`,
//! [`FileKind::DeletedSymlink`]): a link holds nothing but its target, read at dump through a
//! new O_PATH open of the process's fd; a restore makes the link again in its old directory
//! (under the old name when it is free, so the fd link shows `PATH (deleted)` as before), opens
//! it O_PATH | O_NOFOLLOW, gives it its owner, and removes it again.

use std::ffi::{CString, OsStr};
use std::fs::Metadata;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::images::{FileIdentity, FileKind};

/// The target of the symbolic link an O_PATH descriptor `fd` holds.
fn target_of(fd: &OwnedFd) -> Result<String, String> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: readlinkat writes at most buf.len() bytes; "" with an O_PATH descriptor of a
    // link reads that link.
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(format!(
            "its target cannot be read: {}",
            std::io::Error::last_os_error()
        ));
    }
    buf.truncate(n as usize);
    String::from_utf8(buf).map_err(|_| "its target is not valid UTF-8".to_string())
}

/// The image's description of the removed symbolic link `md` that process `pid` holds at fd
/// `fd`, once at `path` (without " (deleted)"), or why it is refused.
pub fn identity(pid: i32, fd: i32, path: &Path, md: &Metadata) -> Result<FileIdentity, String> {
    let shown = path.to_str().ok_or("its path is not valid UTF-8")?;
    if !shown.starts_with('/') {
        return Err("its path is not absolute".into());
    }
    let link = CString::new(format!("/proc/{pid}/fd/{fd}")).expect("no NUL");
    // SAFETY: link is NUL-terminated; an O_PATH open of the magic link lands on the link the
    // process holds, without following it further.
    let raw = unsafe { libc::open(link.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(format!(
            "cannot be opened to read its target: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: raw is a fresh descriptor we own.
    let held = unsafe { OwnedFd::from_raw_fd(raw) };
    let target = target_of(&held)?;
    Ok(FileIdentity {
        path: shown.to_string(),
        kind: FileKind::DeletedSymlink {
            target,
            uid: md.uid(),
            gid: md.gid(),
        },
        dev: md.dev(),
        ino: md.ino(),
        size: md.size(),
        mtime_sec: md.mtime(),
        mtime_nsec: md.mtime_nsec(),
        mode: md.mode(),
    })
}

/// Makes the link of `ident` ([`FileKind::DeletedSymlink`]) again, opened O_PATH |
/// O_NOFOLLOW and removed again, or says what went wrong.
pub fn recreate(ident: &FileIdentity) -> Result<OwnedFd, String> {
    let FileKind::DeletedSymlink { target, uid, gid } = &ident.kind else {
        return Err("is not a removed symbolic link".into());
    };
    let (name, dir) = super::remake_name(Path::new(&ident.path), "link")?;
    let cname = CString::new(name.as_os_str().as_bytes())
        .map_err(|_| "has a NUL byte in its path".to_string())?;
    let ctarget = CString::new(OsStr::new(target).as_bytes())
        .map_err(|_| "has a NUL byte in its target".to_string())?;
    // SAFETY: both are NUL-terminated; symlink makes one link or fails.
    if unsafe { libc::symlink(ctarget.as_ptr(), cname.as_ptr()) } < 0 {
        return Err(format!(
            "cannot be made again in {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: cname is NUL-terminated; O_PATH | O_NOFOLLOW opens the link itself.
    let raw = unsafe {
        libc::open(
            cname.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    let opened = if raw < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        // SAFETY: raw is a fresh descriptor we own.
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    };
    // SAFETY: cname is NUL-terminated; lchown changes only the link made above.
    let owned = unsafe { libc::lchown(cname.as_ptr(), *uid, *gid) };
    let owner_err = std::io::Error::last_os_error();
    // SAFETY: cname is NUL-terminated; this removes the link made above, whatever happened.
    let removed = unsafe { libc::unlink(cname.as_ptr()) };
    let fd = opened.map_err(|e| format!("cannot be opened once made again: {e}"))?;
    if owned < 0 {
        return Err(format!(
            "cannot be given its owner {uid}:{gid}: {owner_err}"
        ));
    }
    if removed < 0 {
        return Err(format!(
            "cannot be removed again once made: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removed_link_held_o_path_comes_back_with_its_target_and_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("link");
        std::os::unix::fs::symlink("no-such-target", &path).unwrap();
        let c = CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: c is NUL-terminated.
        let raw = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_NOFOLLOW) };
        assert!(raw >= 0);
        // SAFETY: a fresh descriptor we own.
        let held = unsafe { OwnedFd::from_raw_fd(raw) };
        std::fs::remove_file(&path).unwrap();
        let me = std::process::id() as i32;
        let md = std::fs::metadata(format!("/proc/self/fd/{}", held.as_raw_fd())).unwrap();
        assert!(md.file_type().is_symlink());
        let ident = identity(me, held.as_raw_fd(), &path, &md).unwrap();
        assert_eq!(
            ident.kind,
            FileKind::DeletedSymlink {
                target: "no-such-target".into(),
                uid: md.uid(),
                gid: md.gid()
            }
        );
        let back = recreate(&ident).unwrap();
        assert_eq!(target_of(&back).unwrap(), "no-such-target");
        let link = format!("/proc/self/fd/{}", back.as_raw_fd());
        assert_eq!(
            std::fs::read_link(&link).unwrap().to_str().unwrap(),
            format!("{} (deleted)", path.display())
        );
        assert!(std::fs::symlink_metadata(&path).is_err());
    }
}
