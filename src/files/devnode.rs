//! Character device nodes that were removed while a process held them open
//! ([`FileKind::DeletedDevice`]): the open file is the driver's, the node only named it. A
//! restore makes a node with the same device number again in its old directory (under the
//! old name when it is free, so fd links show `PATH (deleted)` as before), gives it the mode
//! and owner, keeps an O_PATH descriptor of it and removes it; every description is then a
//! new open of that node through `/proc/self/fd/N`.
//!
//! Terminals are refused: a terminal's state (session, foreground group, line settings, the
//! other side of a pty) is not in its node.

use std::ffi::CString;
use std::fs::Metadata;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::images::{FileIdentity, FileKind};

/// Whether character device `rdev` is a terminal (a tty, the console, a pty of either side).
fn is_terminal(rdev: u64) -> bool {
    let major = libc::major(rdev);
    matches!(major, 4 | 5 | 128..=143)
}

/// The image's description of the removed character device node `md` once at `path`
/// (without " (deleted)"), or why it is refused.
pub fn identity(path: &Path, md: &Metadata) -> Result<FileIdentity, String> {
    let rdev = md.rdev();
    if is_terminal(rdev) {
        return Err(format!(
            "is a removed terminal device node ({}:{}), whose terminal crest cannot restore \
             through a new node",
            libc::major(rdev),
            libc::minor(rdev)
        ));
    }
    let shown = path.to_str().ok_or("its path is not valid UTF-8")?;
    if !shown.starts_with('/') {
        return Err("its path is not absolute".into());
    }
    Ok(FileIdentity {
        path: shown.to_string(),
        kind: FileKind::DeletedDevice {
            rdev,
            uid: md.uid(),
            gid: md.gid(),
        },
        dev: md.dev(),
        ino: md.ino(),
        size: 0,
        mtime_sec: md.mtime(),
        mtime_nsec: md.mtime_nsec(),
        mode: md.mode(),
    })
}

/// Makes the node of `ident` ([`FileKind::DeletedDevice`]) again, removed again at once, and
/// returns an O_PATH descriptor of it, or what went wrong.
pub fn recreate(ident: &FileIdentity) -> Result<OwnedFd, String> {
    let FileKind::DeletedDevice { rdev, uid, gid } = ident.kind else {
        return Err("is not a removed device node".into());
    };
    let (name, dir) = super::remake_name(Path::new(&ident.path), "dev")?;
    let cname = CString::new(name.to_string_lossy().as_bytes())
        .map_err(|_| "has a NUL byte in its path".to_string())?;
    // SAFETY: cname is NUL-terminated; mknod makes one node there or fails.
    if unsafe { libc::mknod(cname.as_ptr(), libc::S_IFCHR | 0o600, rdev as libc::dev_t) } < 0 {
        return Err(format!(
            "cannot be made again in {} (mknod of device {}:{}): {}",
            dir.display(),
            libc::major(rdev),
            libc::minor(rdev),
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: cname is NUL-terminated; an O_PATH open does not open the device.
    let raw = unsafe { libc::open(cname.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    let opened = if raw < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        // SAFETY: raw is a fresh descriptor we own.
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    };
    // SAFETY: cname is NUL-terminated; this removes the node made above, whatever happened.
    let removed = unsafe { libc::unlink(cname.as_ptr()) };
    let fd = opened.map_err(|e| format!("cannot be opened once made again: {e}"))?;
    if removed < 0 {
        return Err(format!(
            "cannot be removed again once made: {}",
            std::io::Error::last_os_error()
        ));
    }
    // fchown/fchmod do not take O_PATH descriptors; the /proc link reaches the node.
    let link = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL");
    // Owner first: a chown clears set-id bits that the mode then puts back.
    // SAFETY: link is NUL-terminated; chown changes only the node we made.
    let owned = unsafe { libc::chown(link.as_ptr(), uid, gid) } == 0;
    // SAFETY: link is NUL-terminated; chmod changes only the node we made.
    if !owned || unsafe { libc::chmod(link.as_ptr(), ident.mode & 0o7777) } < 0 {
        return Err(format!(
            "cannot be given its owner {uid}:{gid} and mode {:o}: {}",
            ident.mode & 0o7777,
            std::io::Error::last_os_error()
        ));
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removed_null_device_comes_back_as_the_same_device_and_terminals_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("null");
        let c = CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: c is NUL-terminated.
        let made = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o640, libc::makedev(1, 3)) };
        assert_eq!(made, 0, "{}", std::io::Error::last_os_error());
        let md = std::fs::symlink_metadata(&path).unwrap();
        let ident = identity(&path, &md).unwrap();
        std::fs::remove_file(&path).unwrap();
        let node = recreate(&ident).unwrap();
        let link = format!("/proc/self/fd/{}", node.as_raw_fd());
        let st = std::fs::metadata(&link).unwrap();
        assert_eq!(st.rdev(), libc::makedev(1, 3));
        assert_eq!(st.mode(), libc::S_IFCHR | 0o640);
        assert_eq!(st.nlink(), 0);
        assert_eq!(
            std::fs::read_link(&link).unwrap().to_str().unwrap(),
            format!("{} (deleted)", path.display())
        );
        let err = identity(
            Path::new("/dev/tty"),
            &std::fs::metadata("/dev/tty").unwrap(),
        )
        .unwrap_err();
        assert!(err.contains("terminal"), "{err}");
    }
}
