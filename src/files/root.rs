//! A process's root directory (chroot).
//!
//! Dump: `dump::fds::root` records `/proc/PID/root` when it is not crest's "/", as a directory
//! of the process's file table (reopened by the path crest sees, checked by device and inode,
//! or made again when it was removed), like the working directory. Every other path of the
//! process (fds, mappings, cwd, exe, socket files) is read by crest through /proc and so is
//! already a path from crest's root, opened or bound by crest before the task is forked.
//!
//! Restore: the task enters its root last, once everything path-based was opened for it and
//! every /proc/self file it writes was written, and before it turns into the process: it
//! changes into the root, chroots to ".", and changes into its working directory, which may
//! lie outside the root (a chroot without a chdir keeps the old one, and the process keeps
//! it that way).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The root directory of process `pid` as crest sees it, when it is not crest's "/": where the
/// absolute names the process uses (a UNIX socket's bound path) lie. `Err` with the path when
/// the root was removed (such names cannot be found or made again there).
pub fn of_process(pid: i32) -> Result<Option<PathBuf>, String> {
    let Some(root) = crate::proc::Proc::open(pid)
        .ok()
        .and_then(|p| p.root().ok())
    else {
        return Ok(None);
    };
    if root == Path::new("/") {
        return Ok(None);
    }
    if root.to_string_lossy().ends_with(" (deleted)") {
        return Err(root.display().to_string());
    }
    Ok(Some(root))
}

/// The path crest sees for the absolute `name` of a process whose root is `root`.
pub fn below(root: &Path, name: &Path) -> PathBuf {
    root.join(name.strip_prefix("/").unwrap_or(name))
}

/// Makes `root` the calling task's root directory and `cwd` its working directory. Needs
/// CAP_SYS_CHROOT (the restoring task is crest's, before its credentials are switched).
pub fn enter(root: &OwnedFd, cwd: &OwnedFd) -> Result<(), String> {
    let err = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    // SAFETY: fchdir on a directory descriptor we own.
    if unsafe { libc::fchdir(root.as_raw_fd()) } < 0 {
        return Err(err("cannot change into the root directory"));
    }
    // SAFETY: "." is a valid C string; chroot has no memory preconditions.
    if unsafe { libc::chroot(c".".as_ptr()) } < 0 {
        return Err(err("cannot make the root directory the root (chroot)"));
    }
    // SAFETY: fchdir on a directory descriptor we own.
    if unsafe { libc::fchdir(cwd.as_raw_fd()) } < 0 {
        return Err(err(
            "cannot change into the working directory after the chroot",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_names_lie_below_the_root() {
        assert_eq!(
            below(Path::new("/srv/jail"), Path::new("/run/s.sock")),
            Path::new("/srv/jail/run/s.sock")
        );
        assert_eq!(
            of_process(std::process::id() as i32),
            Ok(None),
            "the test runs with the machine's root"
        );
    }
    use std::os::unix::fs::MetadataExt;

    /// In a child process (a chroot cannot be undone): the root and cwd are what was given,
    /// also for a cwd outside the root.
    #[test]
    fn enters_the_root_and_keeps_a_cwd_outside_it() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: chroot needs root");
            return;
        }
        let top = tempfile::tempdir().unwrap();
        let root_dir = top.path().join("jail");
        std::fs::create_dir(&root_dir).unwrap();
        std::fs::write(root_dir.join("inside"), b"in").unwrap();
        let open = |p: &std::path::Path| -> OwnedFd { std::fs::File::open(p).unwrap().into() };
        let (root, cwd) = (open(&root_dir), open(top.path()));
        let want_root = std::fs::metadata(&root_dir).unwrap();
        let want_cwd = std::fs::metadata(top.path()).unwrap();
        // SAFETY: the child only makes syscalls and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // Raw syscalls only: the test process has other threads, so no allocation here.
            let same = |path: &std::ffi::CStr, want: &std::fs::Metadata| {
                // SAFETY: stat is plain data; stat writes into it.
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                // SAFETY: a valid C string and a valid stat buffer.
                (unsafe { libc::stat(path.as_ptr(), &mut st) }) == 0
                    && st.st_ino == want.ino()
                    && st.st_dev == want.dev()
            };
            let entered = enter(&root, &cwd).is_ok();
            // SAFETY: a valid C string.
            let inside = unsafe { libc::open(c"/inside".as_ptr(), libc::O_RDONLY) };
            let ok = entered && same(c"/", &want_root) && same(c".", &want_cwd) && inside >= 0;
            // SAFETY: _exit has no preconditions.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
}
