//! A restored process and what crest does with it afterwards: let it go (`-d`), or wait for it,
//! forwarding SIGINT/SIGTERM/SIGHUP, and exit with its status.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use super::RestoreError;

/// The restored process, a child of crest (or, with `--pidns`, the init of the namespace the
/// tree runs in, which stands for it).
#[derive(Debug)]
pub struct Restored {
    /// crest's child: what it waits for and forwards signals to.
    child: i32,
    /// The root of the restored tree as crest's pid namespace sees it.
    root: i32,
}

const FORWARDED: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

impl Restored {
    pub(super) fn new(pid: i32) -> Restored {
        Restored {
            child: pid,
            root: pid,
        }
    }

    /// A tree whose root `root` runs below crest's child `init` (a pid namespace's init).
    pub(super) fn under(init: i32, root: i32) -> Restored {
        Restored { child: init, root }
    }

    /// The restored root's pid, as crest's pid namespace sees it (what `--pidfile` records).
    pub fn pid(&self) -> i32 {
        self.root
    }

    /// Leaves the process running on its own; when crest exits it is re-parented (to init or
    /// the nearest child subreaper).
    pub fn detach(self) {}

    /// Waits for the process to end and returns the exit code crest should exit with: its exit
    /// status, or 128 + the signal that killed it (the shell's convention). SIGINT, SIGTERM and
    /// SIGHUP sent to crest meanwhile are forwarded to it.
    pub fn wait_forwarding_signals(self) -> Result<i32, RestoreError> {
        let os = |what: &str, e: nix::Error| RestoreError::Os {
            what: format!("{what} (pid {})", self.child),
            source: e.into(),
        };
        let mut mask = SigSet::empty();
        for sig in FORWARDED {
            mask.add(sig);
        }
        // Blocked signals queue up for the signalfd instead of killing crest.
        mask.thread_block()
            .map_err(|e| os("blocking signals to forward", e))?;
        let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(|e| os("creating a signalfd", e))?;
        let pidfd = pidfd_open(self.child).map_err(|e| os("pidfd_open", e))?;
        let pid = Pid::from_raw(self.child);
        let result = loop {
            let mut fds = [
                PollFd::new(pidfd.as_fd(), PollFlags::POLLIN),
                PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(e) => break Err(os("waiting for the restored process", e)),
            }
            while let Ok(Some(info)) = sfd.read_signal() {
                if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
                    let _ = nix::sys::signal::kill(pid, sig);
                }
            }
            match waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => break Ok(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => break Ok(128 + sig as i32),
                Ok(_) | Err(nix::Error::EINTR) => continue,
                Err(e) => break Err(os("waiting for the restored process", e)),
            }
        };
        let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&mask), None);
        result
    }
}

fn pidfd_open(pid: i32) -> Result<OwnedFd, nix::Error> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(nix::Error::last());
    }
    // SAFETY: r is a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}
