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
    /// Where the restore's time went (not kept by a restore into a new pid namespace, whose
    /// work happens in the namespace's init).
    stats: Option<RestoreStats>,
    /// The page server of a lazy restore, while it runs.
    lazy: Option<crate::lazy::Handle>,
    /// `--record-working-set`: the recording to finish ([`crate::prefetch::record`]).
    recording: Option<crate::prefetch::record::Recording>,
}

/// What a restore did and how long each phase took, from crest's start of the restore to the
/// moment the tree runs: validate (read and check the image, plan the forks), pid wait (for
/// a dumped process's zombie to be reaped, or for nothing), files (open every file, socket and shared object of the tree in crest), bootstrap
/// (map each process's restorer region), fork (fork the tasks, which take their fds and
/// process state), memory (the restorers replace memory and load the pages), threads (the
/// restorers make the other threads, which crest catches right after their rt_sigreturn, as
/// the leaders), finish (per-thread scheduling, the cleanup in each leader, signal owners,
/// SysV commits, the network unlocked), release (let every thread run).
#[derive(Debug, Clone)]
pub struct RestoreStats {
    pub phases_us: Vec<(String, u64)>,
    pub processes: usize,
    pub threads: usize,
    /// Bytes of the image's page files.
    pub page_bytes: u64,
    /// A mapped restore's prefetch of the recorded working set (a lazy restore's is in
    /// [`crate::lazy::LazyStats`]).
    pub prefetch: Option<crate::prefetch::PrefetchStats>,
}

impl RestoreStats {
    /// Microseconds from the start of the restore until the tree ran.
    pub fn total_us(&self) -> u64 {
        self.phases_us.iter().map(|(_, us)| us).sum()
    }

    /// One line: `restored pid 42 (1 process, 12 threads, 5.2 MiB of pages) in 9.8 ms:
    /// validate 1.0 ms, ...`.
    pub fn text(&self, pid: i32) -> String {
        format!(
            "restored pid {pid} ({} process{}, {} thread{}, {:.1} MiB of pages) in {:.1} ms: {}",
            self.processes,
            if self.processes == 1 { "" } else { "es" },
            self.threads,
            if self.threads == 1 { "" } else { "s" },
            self.page_bytes as f64 / (1u64 << 20) as f64,
            self.total_us() as f64 / 1000.0,
            crate::phases::text(&self.phases_us)
        ) + &self
            .prefetch
            .as_ref()
            .map_or_else(String::new, |p| format!("; {}", p.text()))
    }

    /// The statistics for `--stats-json`.
    pub fn to_json(&self, pid: i32) -> serde_json::Value {
        serde_json::json!({
            "pid": pid,
            "processes": self.processes,
            "threads": self.threads,
            "page_bytes": self.page_bytes,
            "total_us": self.total_us(),
            "phases_us": self.phases_us,
            "prefetch": self.prefetch.as_ref().map(|p| p.to_json()),
        })
    }
}

const FORWARDED: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

impl Restored {
    pub(super) fn new(pid: i32) -> Restored {
        Restored {
            child: pid,
            root: pid,
            stats: None,
            lazy: None,
            recording: None,
        }
    }

    pub(super) fn with_lazy(mut self, lazy: Option<crate::lazy::Handle>) -> Restored {
        self.lazy = lazy;
        self
    }

    /// With lazy pages: waits until every page is in and says what the page server did. An
    /// error means the server failed and the tree was killed.
    pub fn wait_lazy(&mut self) -> Option<Result<crate::lazy::LazyStats, crate::lazy::LazyError>> {
        self.lazy.take().map(|h| h.wait())
    }

    pub(super) fn with_recording(
        mut self,
        recording: Option<crate::prefetch::record::Recording>,
    ) -> Restored {
        self.recording = recording;
        self
    }

    /// `--record-working-set`: the recording, to finish once the lazy pages are in (see
    /// [`crate::prefetch::record::Recording::finish`]).
    pub fn take_recording(&mut self) -> Option<crate::prefetch::record::Recording> {
        self.recording.take()
    }

    pub(super) fn with_stats(mut self, stats: RestoreStats) -> Restored {
        self.stats = Some(stats);
        self
    }

    /// A tree whose root `root` runs below crest's child `init` (a pid namespace's init).
    pub(super) fn under(init: i32, root: i32) -> Restored {
        Restored {
            child: init,
            root,
            stats: None,
            lazy: None,
            recording: None,
        }
    }

    /// Where the restore's time went, if crest measured it.
    pub fn stats(&self) -> Option<&RestoreStats> {
        self.stats.as_ref()
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
        self.wait_forwarding(&FORWARDED)
    }

    /// Like [`Restored::wait_forwarding_signals`], forwarding `signals` (a proxy parent such
    /// as the CRaC engine's forwards every catchable one).
    pub fn wait_forwarding(self, signals: &[Signal]) -> Result<i32, RestoreError> {
        let os = |what: &str, e: nix::Error| RestoreError::Os {
            what: format!("{what} (pid {})", self.child),
            source: e.into(),
        };
        let mut mask = SigSet::empty();
        for &sig in signals {
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

/// The signals a process standing in for the restored root (a proxy parent, a pid
/// namespace's init) passes on to it: every classic signal but those that cannot be caught
/// (KILL, STOP), SIGCHLD (its own children's) and the ones the kernel raises for a fault of
/// the receiver itself.
pub fn forwardable_signals() -> Vec<Signal> {
    use Signal::*;
    (1..32)
        .filter_map(|n| Signal::try_from(n).ok())
        .filter(|s| {
            !matches!(
                s,
                SIGKILL | SIGSTOP | SIGCHLD | SIGSEGV | SIGBUS | SIGILL | SIGFPE | SIGTRAP
            )
        })
        .collect()
}
