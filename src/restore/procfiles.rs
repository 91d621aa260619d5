//! `/proc/PID/` files of processes of the tree ([`FileKind::TreeProc`]): crest gives each
//! description a stand-in, and the restored task that holds it opens the path again itself,
//! once it exists (before its fds are installed), with the recorded flags and offset. A file of
//! a process forked after this one (a sibling's) is waited for until that process exists.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::images::{FileKind, ProcessImage};

/// How long a task waits for another process of the tree (forked at the same time) to exist.
const PROCESS_WAIT: Duration = Duration::from_secs(10);

/// The stand-in crest opens for such a description until the task replaces it.
pub fn placeholder() -> std::io::Result<OwnedFd> {
    std::fs::File::open("/dev/null").map(OwnedFd::from)
}

/// In a restored task, before its fds are installed: each `/proc/PID` description of `p`
/// opened again, by description index, numbered at `base` or above.
pub fn open_in_task(p: &ProcessImage, base: RawFd) -> Result<HashMap<u32, OwnedFd>, String> {
    let mut out = HashMap::new();
    for (i, d) in p.open_files.iter().enumerate() {
        let Some(f) = p.files.get(d.file as usize) else {
            continue;
        };
        let FileKind::TreeProc { pid } = f.kind else {
            continue;
        };
        let what = |e: std::io::Error| format!("cannot open {} again: {e}", f.path);
        let path = CString::new(f.path.as_bytes()).map_err(|_| format!("{:?}", f.path))?;
        let flags = (d.flags as i32)
            & !(libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_CLOEXEC | libc::O_NOCTTY);
        let deadline = Instant::now() + PROCESS_WAIT;
        let raw = loop {
            // SAFETY: open of a NUL-terminated path.
            let raw = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
            if raw >= 0 {
                break raw;
            }
            let err = std::io::Error::last_os_error();
            // Not forked yet: its pid is free until then.
            let absent = err.raw_os_error() == Some(libc::ENOENT)
                && !std::path::Path::new(&format!("/proc/{pid}")).exists();
            if !absent || Instant::now() > deadline {
                return Err(what(err));
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        // SAFETY: raw is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if flags & libc::O_PATH == 0 && d.pos != 0 {
            // SAFETY: lseek on a descriptor we own.
            let at = unsafe { libc::lseek(fd.as_raw_fd(), d.pos as libc::off_t, libc::SEEK_SET) };
            if at < 0 {
                return Err(format!(
                    "cannot seek {} to offset {}: {}",
                    f.path,
                    d.pos,
                    std::io::Error::last_os_error()
                ));
            }
        }
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own.
        let moved = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, base) };
        if moved < 0 {
            return Err(what(std::io::Error::last_os_error()));
        }
        // SAFETY: moved is a new descriptor we own.
        out.insert(i as u32, unsafe { OwnedFd::from_raw_fd(moved) });
    }
    Ok(out)
}
