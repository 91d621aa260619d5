//! crest as a CRaC engine: the work the engine executable (`crestengine`, built by the `crac/`
//! workspace member, which also builds the crlib v2 library `libcrestengine.so`) does for a
//! CRaC JVM.
//!
//! Checkpoint ([`checkpoint`]): started by the JVM (or by the library engine inside it), the
//! engine double-forks so the process that dumps is not a descendant of the JVM (crest refuses
//! to dump its own ancestors), exits 0 at once, and the grandchild dumps the JVM (its parent at
//! start) with crest's dump while the JVM waits in `sigwaitinfo` for SIGRTMIN+2. The files the
//! JVM wrote into the image directory (`tags`, `score`, `engine`, ...) are put back beside crest's image after
//! the dump (which replaces the directory), as is any other file there that is not crest's
//! (crest's end in `.img`), together with [`SIDECAR`] (the JVM's pid and the
//! tid of the thread waiting inside the engine). Then: the dump ended the JVM (default), or with
//! `CRAC_CRIU_LEAVE_RUNNING` the JVM gets SIGRTMIN+2 with value 0; a failed dump sends -1.
//!
//! Restore ([`restore`]): the restoring JVM execs the engine in place; it restores the image
//! with the restoring process's standard fds in place of the dumped ones, sends SIGRTMIN+2 with
//! the value of `CRAC_NEW_ARGS_ID` to the restored JVM (to the thread waiting in the engine
//! when the image names it), and stays its parent: it forwards signals and exits with its
//! status.

mod checkpoint;
mod restore;
mod signal;

pub use checkpoint::{checkpoint, CheckpointRequest};
pub use restore::{restore, stdio_inherit, RestoreRequest};
pub use signal::{restore_signal, send_restore_data};

use std::path::{Path, PathBuf};

/// The file beside crest's image that says which process and thread called the engine.
pub const SIDECAR: &str = "crac-engine";

/// What a dump or restore the engine ran said when it failed (crest's own typed errors).
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Errors of the CRaC engine.
#[derive(Debug, thiserror::Error)]
pub enum CracError {
    #[error("{what}: {source}")]
    Os {
        what: String,
        source: std::io::Error,
    },
    #[error("the engine cannot leave the JVM's process tree (pid {jvm}): {why}")]
    Detach { jvm: i32, why: String },
    #[error("dump of JVM pid {pid} into {dir} failed: {source}")]
    Dump {
        pid: i32,
        dir: PathBuf,
        source: Cause,
    },
    #[error("restore from {dir} failed: {source}")]
    Restore { dir: PathBuf, source: Cause },
    #[error("image {dir}: {what}")]
    Image { dir: PathBuf, what: String },
}

impl CracError {
    fn os(what: impl Into<String>, source: std::io::Error) -> CracError {
        CracError::Os {
            what: what.into(),
            source,
        }
    }
}

/// This process's controlling terminal, if it has one, opened close-on-exec by its own name
/// (`/dev/pts/N`, ...), not as `/dev/tty` (crest compares terminals by device number).
pub fn open_controlling_terminal() -> Option<i32> {
    // SAFETY: open of a constant path; the descriptor is closed below.
    let alias = unsafe {
        libc::open(
            c"/dev/tty".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if alias < 0 {
        return None;
    }
    let mut dev: libc::c_uint = 0;
    // SAFETY: TIOCGDEV writes the terminal's device number into `dev`.
    let rc = unsafe { libc::ioctl(alias, libc::TIOCGDEV, &mut dev) };
    // SAFETY: alias is ours.
    unsafe { libc::close(alias) };
    if rc != 0 {
        return None;
    }
    // The kernel's encoding: minor bits 0-7 and 20-31, major bits 8-19.
    let (major, minor) = ((dev >> 8) & 0xfff, (dev & 0xff) | ((dev >> 12) & 0xfff00));
    let rdev = libc::makedev(major, minor);
    let path = ["/dev/pts", "/dev"].iter().find_map(|d| {
        std::fs::read_dir(d).ok()?.flatten().find_map(|e| {
            use std::os::unix::fs::{FileTypeExt, MetadataExt};
            let m = std::fs::metadata(e.path()).ok()?;
            (m.file_type().is_char_device() && m.rdev() == rdev && e.file_name() != "tty")
                .then(|| e.path())
        })
    })?;
    let c =
        std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str())).ok()?;
    // SAFETY: open of a valid path; the descriptor is returned to the caller.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    (fd >= 0).then_some(fd)
}

/// When one of this process's standard fds is on a terminal (else when `ctty`, a descriptor of
/// its controlling terminal, is given), makes fd 0 that terminal (crest takes its standard
/// input as the terminal of a `--shell-job`), keeping what fd 0 was: `Some(Some(fd))` with a
/// copy of the old fd 0 (close-on-exec), `Some(None)` when fd 0 was the terminal already, None
/// when there is no terminal.
pub fn terminal_on_stdin(ctty: Option<i32>) -> Option<Option<i32>> {
    // SAFETY: isatty only inspects descriptor numbers.
    let tty = (0..3)
        .find(|&fd| unsafe { libc::isatty(fd) } == 1)
        .or(ctty)?;
    if tty == 0 {
        return Some(None);
    }
    // SAFETY: F_DUPFD_CLOEXEC and dup2 on open descriptor numbers; fd 0 is replaced only once
    // its copy exists.
    unsafe {
        let saved = libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3);
        if libc::dup2(tty, 0) < 0 {
            return None;
        }
        Some((saved >= 0).then_some(saved))
    }
}

/// What [`SIDECAR`] records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sidecar {
    /// The JVM's pid at dump time.
    pub pid: i32,
    /// The thread that waits inside the engine for the restore data, when known (the library
    /// engine says; the executable protocol does not).
    pub tid: Option<i32>,
}

impl Sidecar {
    pub fn render(&self) -> String {
        let mut s = format!("pid={}\n", self.pid);
        if let Some(t) = self.tid {
            s += &format!("tid={t}\n");
        }
        s
    }

    pub fn parse(text: &str) -> Option<Sidecar> {
        let mut pid = None;
        let mut tid = None;
        for line in text.lines() {
            match line.split_once('=') {
                Some(("pid", v)) => pid = v.trim().parse().ok(),
                Some(("tid", v)) => tid = v.trim().parse().ok(),
                _ => {}
            }
        }
        Some(Sidecar { pid: pid?, tid })
    }

    /// The sidecar of the image in `dir`, if it has a readable one.
    pub fn read(dir: &Path) -> Option<Sidecar> {
        Sidecar::parse(&std::fs::read_to_string(dir.join(SIDECAR)).ok()?)
    }
}

/// Where private memory comes from at restore (crest restore's `--pages`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pages {
    Copy,
    Map,
    Lazy,
}

impl std::str::FromStr for Pages {
    type Err = String;
    fn from_str(s: &str) -> Result<Pages, String> {
        match s {
            "copy" => Ok(Pages::Copy),
            "map" => Ok(Pages::Map),
            "lazy" => Ok(Pages::Lazy),
            _ => Err(format!("{s:?} is not a page source (copy, map or lazy)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_round_trips() {
        for s in [
            Sidecar {
                pid: 42,
                tid: Some(43),
            },
            Sidecar { pid: 7, tid: None },
        ] {
            assert_eq!(Sidecar::parse(&s.render()), Some(s));
        }
        assert_eq!(Sidecar::parse("tid=3\n"), None);
    }

    #[test]
    fn page_sources_parse() {
        assert_eq!("map".parse::<Pages>(), Ok(Pages::Map));
        assert!("mmap".parse::<Pages>().is_err());
    }
}
