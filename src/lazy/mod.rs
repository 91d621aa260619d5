//! Lazy restore over userfaultfd (`crest restore --lazy-pages`): the restored processes run
//! before their private anonymous memory is read; a page server in crest fills it on demand
//! and in the background.
//!
//! - [`plan`]: which VMAs are lazy and which pages stay eager.
//! - [`uffd`]: the userfaultfd calls.
//! - [`pagemap`]: the per-process set of pages still to copy.
//! - [`server`]: the page server loop (faults, fork/remap/unmap/remove events, background).
//! - [`watchdog`]: the process that kills the tree if crest dies before every page is in.
//! - [`daemon`]: with `-d`, the page server lives on in a daemon after `crest restore` exits.
//!
//! Flow: each forked task creates its userfaultfd ([`create_in_task`]) before the jump and
//! writes the number into its restorer arguments; crest takes a copy with pidfd_getfd
//! ([`take_from_task`]); the restorer registers each lazy VMA and closes the task's copy.
//! Once every task is on its way, crest starts the watchdog and the server thread
//! ([`start`]); the restore goes on as in copy mode, and `crest restore` waits for the
//! server ([`Handle::wait`]) before it waits for the tree.

pub mod daemon;
pub mod pagemap;
pub mod plan;
pub mod server;
pub mod uffd;
pub mod watchdog;

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

/// What can go wrong with lazy pages. Every message names the process and what failed.
#[derive(Debug, thiserror::Error)]
pub enum LazyError {
    #[error("{what}: {source}")]
    Os {
        what: String,
        source: std::io::Error,
    },
    #[error("{what} into {who} at {addr:#x} failed: {source}")]
    Uffd {
        what: String,
        who: String,
        addr: u64,
        source: std::io::Error,
    },
    #[error("the page server thread panicked")]
    Panicked,
}

/// One restored process whose memory the server fills.
pub struct LazyProcess {
    pub pid: i32,
    /// crest's copy of the process's userfaultfd.
    pub uffd: OwnedFd,
    /// Its page file.
    pub pages: File,
    /// The stored pages still to copy.
    pub pieces: Vec<plan::Piece>,
    /// The recorded working set ([`crate::prefetch`]): sorted `(start, end)` ranges copied
    /// first, before the background pass.
    pub prefetch: Vec<(u64, u64)>,
}

/// What the page server did.
#[derive(Debug, Clone, Default)]
pub struct LazyStats {
    /// Bytes of memory left to the server at the start.
    pub lazy_bytes: u64,
    /// Page faults served.
    pub faults: u64,
    /// Bytes copied in answer to faults, and by the background pass.
    pub fault_bytes: u64,
    pub background_bytes: u64,
    /// Faults on pages the image does not store, answered with a zero page.
    pub zero_pages: u64,
    /// Bytes never copied because the program unmapped or discarded them first.
    pub dropped_bytes: u64,
    /// Children forked by the tree during the load.
    pub forks: u64,
    /// Microseconds from the start of the restore until every page was in.
    pub all_in_us: u64,
    /// Bytes of the recorded working set copied first, and the microseconds that took (from
    /// the first prefetch copy to the last).
    pub prefetched_bytes: u64,
    pub prefetch_us: u64,
    /// With `--record-working-set`: by restored pid, the stored pages whose faults were served
    /// during the recording window (any order; see [`crate::prefetch`]).
    pub recorded: Vec<(i32, Vec<u64>)>,
}

impl LazyStats {
    pub fn text(&self) -> String {
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        format!(
            "lazy pages: all {:.1} MiB in {:.1} ms after the restore began: {} fault(s) brought \
             {:.1} MiB, the background pass {:.1} MiB, {} zero page(s), {:.1} MiB given up by \
             the program first, {} fork(s)",
            mib(self.lazy_bytes),
            self.all_in_us as f64 / 1000.0,
            self.faults,
            mib(self.fault_bytes),
            mib(self.background_bytes),
            self.zero_pages,
            mib(self.dropped_bytes),
            self.forks
        ) + &if self.prefetched_bytes > 0 {
            format!(
                "; prefetched {} working-set page(s) ({:.1} MiB) in {:.1} ms",
                self.prefetched_bytes / crate::arch::page_size(),
                mib(self.prefetched_bytes),
                self.prefetch_us as f64 / 1000.0
            )
        } else {
            String::new()
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "lazy_bytes": self.lazy_bytes,
            "faults": self.faults,
            "fault_bytes": self.fault_bytes,
            "background_bytes": self.background_bytes,
            "zero_pages": self.zero_pages,
            "dropped_bytes": self.dropped_bytes,
            "forks": self.forks,
            "all_in_us": self.all_in_us,
            "prefetch": {
                "pages": self.prefetched_bytes / crate::arch::page_size(),
                "bytes": self.prefetched_bytes,
                "us": self.prefetch_us,
            },
        })
    }
}

/// In the forked task (same memory as the final process), right before it reports ready:
/// creates the userfaultfd, numbered at or above `fd_base` so it cannot collide with the
/// image's fds. Returns its number, kept open until the restorer closes it.
pub fn create_in_task(fd_base: RawFd) -> Result<RawFd, String> {
    let fd = uffd::create()?;
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own.
    let moved = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, fd_base) };
    if moved < 0 {
        return Err(format!(
            "cannot move the userfaultfd above fd {fd_base}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(moved)
}

/// crest's own copy of fd `fd` of task `pid` (pidfd_getfd).
pub fn take_from_task(pid: i32, fd: RawFd) -> Result<OwnedFd, LazyError> {
    let os = |what: String| LazyError::Os {
        what,
        source: std::io::Error::last_os_error(),
    };
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(os(format!("pidfd_open of pid {pid}")));
    }
    // SAFETY: a new descriptor we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    // SAFETY: pidfd_getfd duplicates fd `fd` of the task into crest.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if r < 0 {
        return Err(os(format!(
            "taking the userfaultfd (fd {fd}) of pid {pid} (pidfd_getfd)"
        )));
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// The running page server.
#[derive(Debug)]
pub struct Handle {
    thread: Option<JoinHandle<Result<LazyStats, LazyError>>>,
    /// Set once the restore is over: only then may the server end and reap the watchdog (the
    /// restore's own waits take any child of crest that ends before).
    may_end: Arc<AtomicBool>,
    /// Set once every restorer registered its lazy memory.
    registered: Arc<AtomicBool>,
    /// Says (or, by closing, that the server ended) when the working set is in.
    prefetched: std::sync::mpsc::Receiver<()>,
}

/// Starts the watchdog over the tree `tree_pids` and the page server thread over `procs`.
/// SIGINT, SIGTERM and SIGHUP are blocked in the calling thread (and so in the server): crest
/// must not die of them while pages are loading; the caller forwards them to the tree once it
/// waits for it.
/// With `record` (`--record-working-set`), the server records the faults of that window
/// (counted from the moment every restorer registered its memory) and holds its background
/// pass until the window is over.
pub fn start(
    procs: Vec<LazyProcess>,
    tree_pids: &[i32],
    restore_start: Instant,
    record: Option<std::time::Duration>,
) -> Result<Handle, LazyError> {
    let uffds: Vec<RawFd> = procs.iter().map(|p| p.uffd.as_raw_fd()).collect();
    let dog = watchdog::Watchdog::start(tree_pids, &uffds)?;
    crate::sys::block_termination_signals();
    let may_end = Arc::new(AtomicBool::new(false));
    let registered = Arc::new(AtomicBool::new(false));
    let (flag, all_registered) = (may_end.clone(), registered.clone());
    let (prefetch_tx, prefetched) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("crest-lazy-pages".into())
        .spawn(move || {
            server::run(
                procs,
                dog,
                restore_start,
                flag,
                all_registered,
                record,
                prefetch_tx,
            )
        })
        .map_err(|e| LazyError::Os {
            what: "starting the page server thread".into(),
            source: e,
        })?;
    Ok(Handle {
        thread: Some(thread),
        may_end,
        registered,
        prefetched,
    })
}

impl Handle {
    /// Every restorer has mapped and registered its lazy memory (every thread is back in its
    /// registers): the background pass may start.
    pub fn registered(&self) {
        self.registered.store(true, Ordering::Release);
    }

    /// Waits until the recorded working set is in (at once when there is none; also when the
    /// server ended or failed). Called after [`Handle::registered`] and before the tree is
    /// released: its threads are all stopped, so the prefetch has the page file and the CPU
    /// to itself, and the program starts with its working set in place.
    pub fn wait_prefetched(&self) {
        let _ = self.prefetched.recv();
    }

    /// Waits until every page is in (or the server failed, and the tree was killed).
    pub fn wait(mut self) -> Result<LazyStats, LazyError> {
        self.may_end.store(true, Ordering::Release);
        let thread = self.thread.take().expect("waited once");
        thread.join().map_err(|_| LazyError::Panicked)?
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // A failed restore: the tree is being killed; the server ends once it is gone.
        self.may_end.store(true, Ordering::Release);
    }
}
