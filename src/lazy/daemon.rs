//! `crest restore -d --lazy-pages`: the page server outlives the `crest restore` the user ran.
//!
//! Without `-d`, crest restore stays the tree's parent and serves pages from a thread until
//! every page is in. With `-d` the user expects crest restore to exit once the tree runs, so
//! before anything else it splits in two: the process the user started (the "front") waits,
//! and a child in a session of its own (the daemon) does the whole restore, tells the front
//! how it went, then serves pages until every page is in and exits. The front prints what the
//! daemon reported and exits with success once the tree runs, or with the daemon's error.
//!
//! So, until every page is in, the restored root's parent is the daemon (not crest's caller);
//! the daemon leaves the root alone (it never waits for it), and once it exits the root is
//! reparented as after any `-d` restore. The watchdog ([`super::watchdog`]) guards the tree
//! against the daemon's death as it does against an attached crest's.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};

use super::LazyError;

/// The daemon's side: where it reports.
pub struct Daemon {
    report: Option<std::fs::File>,
}

/// What the front prints and how it exits.
const OK: &str = "ok\n";
const FAILED: &str = "failed\n";

impl Daemon {
    /// Splits the process: returns in the daemon; the front never returns (it exits with the
    /// status the daemon reports). Call before crest starts any thread.
    pub fn split() -> Result<Daemon, LazyError> {
        let os = |what: &str| LazyError::Os {
            what: what.to_string(),
            source: std::io::Error::last_os_error(),
        };
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two new descriptors into `fds`.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(os("creating the pipe to the lazy-pages daemon"));
        }
        // SAFETY: both are new descriptors we own.
        let (read_end, write_end) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: crest is single-threaded here (the caller's contract); the child goes on
        // with ordinary code, as after any fork of a single-threaded program.
        match unsafe { libc::fork() } {
            -1 => Err(os("forking the lazy-pages daemon")),
            0 => {
                drop(read_end);
                // Out of the caller's session: a ^C or a hang-up of its terminal must not end
                // the page server while the tree still needs it.
                // SAFETY: setsid has no preconditions.
                unsafe { libc::setsid() };
                Ok(Daemon {
                    report: Some(std::fs::File::from(write_end)),
                })
            }
            daemon => {
                drop(write_end);
                front(std::fs::File::from(read_end), daemon)
            }
        }
    }

    /// The tree runs: the front prints `text` (the restore's statistics) and exits with
    /// success. The daemon goes on serving pages.
    pub fn report_running(&mut self, text: &str) {
        self.send(OK, text);
    }

    /// The restore failed: the front prints `text` and fails.
    pub fn report_failure(&mut self, text: &str) {
        self.send(FAILED, text);
    }

    fn send(&mut self, status: &str, text: &str) {
        if let Some(mut f) = self.report.take() {
            // The front may be gone (killed): nothing else to do then.
            let _ = f.write_all(format!("{status}{text}").as_bytes());
        }
    }
}

/// The front: waits for the daemon's report, prints it, exits.
fn front(mut from_daemon: std::fs::File, daemon: i32) -> ! {
    let mut text = String::new();
    let _ = from_daemon.read_to_string(&mut text);
    let (code, rest) = if let Some(rest) = text.strip_prefix(OK) {
        (0, rest)
    } else if let Some(rest) = text.strip_prefix(FAILED) {
        (1, rest)
    } else {
        eprintln!(
            "crest: the lazy-pages daemon (pid {daemon}) ended before the tree ran; nothing was \
             left running"
        );
        (1, "")
    };
    if !rest.is_empty() {
        eprint!("{rest}");
    }
    if code == 0 {
        eprintln!(
            "crest: lazy pages: the daemon (pid {daemon}) serves the rest of the memory and exits \
             once every page is in"
        );
    }
    std::process::exit(code)
}
