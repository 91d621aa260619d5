//! Restore: read and validate an image, fork a task with the original pid, give it the image's
//! files and settings, and morph it into the dumped process through the restorer blob.
//!
//! Order matters for "a failed restore leaves nothing half-built": everything that can be
//! checked in crest (the image, every file, the vDSO, the pid) is checked before the fork; after
//! the fork, the child is traced with PTRACE_O_EXITKILL and killed and reaped on any failure.

pub mod blob;
mod bootstrap;
mod child;
pub(crate) mod creds;
mod files;
mod finish;
mod fork;
mod pipes;
mod sockets;
mod specials;
mod task_state;
mod wait;

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use crate::images::{self, Image, ProcessImage};

pub use wait::Restored;

/// What `crest restore` was asked to do.
pub struct RestoreOptions {
    pub dir: PathBuf,
    /// Also check the page data against its checksums first.
    pub verify: bool,
    /// crest exits once the process runs (`-d`) instead of staying its parent until it ends.
    pub detached: bool,
}

/// Why a restore failed. Every variant says what failed, where, and what the user can do.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Image(#[from] images::ImageError),
    #[error("the image cannot be used: {0}")]
    BadImage(String),
    #[error("{path} {problem}; restore it as it was at dump time, or dump again")]
    File { path: String, problem: String },
    #[error("pid {pid} is in use by another process; crest restores processes under their original pid, so stop that process first")]
    PidTaken { pid: i32 },
    #[error("pid {pid} is still held by a zombie after {waited} s: the dumped process was killed but its parent has not reaped it; the parent must wait() for it before pid {pid} can be restored")]
    PidHeldByZombie { pid: i32, waited: u64 },
    #[error("not supported yet: {0}")]
    Unsupported(String),
    #[error("insufficient privilege: {0}")]
    Privilege(String),
    #[error("{what}: {source}")]
    Os {
        what: String,
        source: std::io::Error,
    },
    #[error("pid {pid}: preparing the restored task failed: {message}")]
    ChildSetup { pid: i32, message: String },
    #[error("pid {pid}: the restorer {how} while {step} (at {detail:#x}){errno}")]
    Restorer {
        pid: i32,
        how: String,
        step: String,
        detail: u64,
        errno: String,
    },
    #[error(transparent)]
    Arch(#[from] crate::arch::ArchError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Restores the image in `opts.dir`. On success the restored process runs under its original
/// pid as a child of crest.
pub fn restore(opts: &RestoreOptions) -> Result<Restored, RestoreError> {
    let image = images::open_image(&opts.dir)?;
    if opts.verify {
        images::verify_pages(&opts.dir, &image)?;
    }
    let p = single_process(&image)?;
    check_supported(p)?;
    // The parent-death signal stands for "my parent ended". After restore the parent is crest:
    // kept while crest waits for the process, which ends only with it; with -d crest exits at
    // once, which would fire the signal, so it is left unset then.
    let keep_pdeath = p.task.pdeath_signal != 0 && !opts.detached;
    if p.task.pdeath_signal != 0 && opts.detached {
        crate::warn!(
            "pid {} had parent-death signal {}; it is not restored with -d, since crest, its parent after restore, exits at once",
            p.pid,
            p.task.pdeath_signal
        );
    }
    fork::wait_until_pid_free(p.pid)?;
    // Thread ids are released as soon as the threads exit; only the leader can linger.
    if let Some(t) = p
        .threads
        .iter()
        .skip(1)
        .find(|t| crate::proc::pid_in_use(t.tid))
    {
        return Err(RestoreError::PidTaken { pid: t.tid });
    }

    let files = files::open_all(p, &image.dir.join(&p.pages_file))?;
    let own = crate::proc::own_maps()
        .map_err(|e| RestoreError::Internal(format!("listing crest's own mappings: {e}")))?;
    let specials = specials::plan(p, &own)?;
    let mut boot = bootstrap::Bootstrap::create(p, &own, &specials, &files)?;
    let base = files::helper_fd_base(p);
    let (mut status_rx, status_tx) = pipe_above(base)?;
    let (go_rx, mut go_tx) = pipe_above(base)?;

    match fork::fork_with_pid(p.pid)? {
        fork::Forked::Child => child::run(child::ChildPlan {
            image: p,
            keep_pdeath,
            files: &files,
            specials: &specials,
            boot: &mut boot,
            status_fd: status_tx.as_raw_fd(),
            go_fd: go_rx.as_raw_fd(),
            fd_base: base,
        }),
        fork::Forked::Parent { pid } => {
            let guard = finish::ChildGuard::new(pid);
            // crest's copies of the child's ends and of the image files are no longer needed;
            // closing the write end lets a dead child show as end-of-file.
            drop(status_tx);
            drop(go_rx);
            drop(files);
            finish::wait_ready(pid, &mut status_rx)?;
            finish::run_restorer(pid, &boot, p, &mut status_rx, &mut go_tx)?;
            guard.disarm();
            Ok(Restored::new(pid))
        }
    }
}

fn single_process(image: &Image) -> Result<&ProcessImage, RestoreError> {
    match image.processes.as_slice() {
        [p] => Ok(p),
        [] => Err(RestoreError::BadImage("it holds no process".into())),
        many => Err(RestoreError::Unsupported(format!(
            "restoring a tree of {} processes",
            many.len()
        ))),
    }
}

/// Refuses, before anything is touched, what this version cannot restore faithfully.
fn check_supported(p: &ProcessImage) -> Result<(), RestoreError> {
    if cfg!(not(target_arch = "x86_64")) {
        return Err(RestoreError::Unsupported(format!(
            "restoring on {}",
            std::env::consts::ARCH
        )));
    }
    if p.sig_caught != 0 && p.task.sigactions.len() != 64 {
        return Err(RestoreError::BadImage(format!(
            "pid {} had signal handlers (mask {:#x}) but the image does not record them",
            p.pid, p.sig_caught
        )));
    }
    creds::plan(p).map(|_| ())
}

/// A pipe whose two ends are numbered at or above `base` (so they survive the child moving the
/// image's fds into place) and close-on-exec.
fn pipe_above(base: RawFd) -> Result<(File, File), RestoreError> {
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| RestoreError::Os {
            what: "creating a pipe".into(),
            source: e.into(),
        })?;
    Ok((
        File::from(move_above(r, base)?),
        File::from(move_above(w, base)?),
    ))
}

fn move_above(fd: OwnedFd, base: RawFd) -> Result<OwnedFd, RestoreError> {
    if fd.as_raw_fd() >= base {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own.
    let moved = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, base) };
    if moved < 0 {
        return Err(RestoreError::Os {
            what: format!("moving a pipe above fd {base}"),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: moved is a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(moved) })
}
