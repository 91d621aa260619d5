//! Terminals at restore: a tree dumped with `--shell-job` gets the terminal crest restore runs
//! on (its standard input), as CRIU does for a shell job.
//!
//! - Every fd that was on the shell's terminal ([`FileKind::ShellTerminal`]) becomes a new open
//!   file description of crest's terminal (`/proc/self/fd/0` opened anew, `O_NOCTTY`), with
//!   the recorded flags.
//! - The controlling terminal: when the tree's terminal session is the one the root was
//!   started in, that session is crest's at restore ([`super::tree`]) and its tasks inherit
//!   crest's controlling terminal, which must therefore be the terminal crest runs on. When a
//!   task of the tree led that session, it takes crest's terminal with `TIOCSCTTY` right after
//!   its `setsid()`, before it forks the children that share it; that needs a terminal that no
//!   session controls yet (`TIOCSCTTY` without force does not steal one).
//! - The foreground process group: when it was a group of the tree, its leader makes it the
//!   foreground group again (`tcsetpgrp`) right after making the group; tasks start with every
//!   signal blocked, so a background caller is not stopped by SIGTTOU.
//!
//! Without `--shell-job`, an image that needs a terminal is refused before anything is touched.
//!
//! A terminal of the machine itself (a virtual console, a serial port) that controlled a
//! session of the tree ([`MachineTty`]) is opened by its device node before the fork, checked to
//! be the same device, and taken by the session's leader after its `setsid()` the same way.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::images::{FileKind, Image, MachineTty};

use super::RestoreError;

/// crest's terminal (or a terminal of the machine), opened for the tasks, and what they do
/// with it.
pub struct Terminal {
    fd: OwnedFd,
    ctty_leader: Option<i32>,
    foreground: Option<i32>,
    /// A terminal of the machine, by device number; None: crest's own.
    machine: Option<u64>,
}

/// What one task needs of the terminal after its fork (a copy per task).
#[derive(Debug, Clone, Copy)]
pub struct TaskTerminal {
    /// crest's terminal, inherited by every task (above the fd base, closed before the restorer).
    fd: RawFd,
    /// The task that takes it as controlling terminal after its setsid.
    ctty_leader: Option<i32>,
    /// The task whose group becomes the foreground group once it exists.
    foreground: Option<i32>,
    /// A terminal of the machine, by device number; None: crest's own.
    machine: Option<u64>,
}

impl Terminal {
    pub fn for_tasks(&self) -> TaskTerminal {
        TaskTerminal {
            fd: self.fd.as_raw_fd(),
            ctty_leader: self.ctty_leader,
            foreground: self.foreground,
            machine: self.machine,
        }
    }
}

/// Opens every terminal of the machine that controlled a session of the tree, by its device
/// node, for the session's leader; a node that is missing or is another device now fails the
/// restore before any process is made.
pub fn open_machine(image: &Image) -> Result<Vec<Terminal>, RestoreError> {
    let base = super::files::helper_fd_base(&image.processes);
    image
        .inventory
        .machine_ttys
        .iter()
        .map(|m| {
            Ok(Terminal {
                fd: above(open_machine_tty(m)?, base)?,
                ctty_leader: Some(m.session),
                foreground: m.foreground,
                machine: Some(m.rdev),
            })
        })
        .collect()
}

fn open_machine_tty(m: &MachineTty) -> Result<OwnedFd, RestoreError> {
    let fail = |problem: String| RestoreError::File {
        path: m.path.clone(),
        problem: format!(
            "(the controlling terminal {} of session {}) {problem}",
            numbers(m.rdev),
            m.session
        ),
    };
    let path = std::ffi::CString::new(m.path.as_str())
        .map_err(|_| fail("has a NUL byte in its path".into()))?;
    // SAFETY: path is a valid C string; O_NOCTTY: the open itself takes no terminal.
    let raw = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if raw < 0 {
        return Err(fail(format!(
            "cannot be opened: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: raw is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let st = nix::sys::stat::fstat(&fd).map_err(|e| fail(format!("cannot be examined: {e}")))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFCHR || !same_device(st.st_rdev, m.rdev) {
        return Err(fail(format!(
            "is not that terminal any more (device {})",
            numbers(st.st_rdev)
        )));
    }
    Ok(fd)
}

fn refuse(msg: String) -> RestoreError {
    RestoreError::Terminal(msg)
}

/// Whether the image needs a terminal, and if so whether crest can give it: None when it needs
/// none. Checked before any process is touched. `detached`: crest exits once the tree runs.
pub fn plan(
    image: &Image,
    shell_job: bool,
    detached: bool,
) -> Result<Option<Terminal>, RestoreError> {
    let job = image.inventory.shell_job.as_ref();
    let terminal_fd = image.processes.iter().find_map(|p| {
        p.fds.iter().find_map(|f| {
            let d = p.open_files.get(f.description as usize)?;
            let file = p.files.get(d.file as usize)?;
            matches!(file.kind, FileKind::ShellTerminal { .. }).then_some((p.pid, f.fd))
        })
    });
    if job.is_none() && terminal_fd.is_none() {
        return Ok(None);
    }
    if !shell_job {
        let what = match terminal_fd {
            Some((pid, fd)) => format!("process {pid} had fd {fd} on the terminal of the shell"),
            None => "the tree was attached to the terminal of the shell".to_string(),
        };
        return Err(refuse(format!(
            "{what} that ran crest dump --shell-job; restore it with --shell-job (-j), from \
             the terminal it should be attached to"
        )));
    }
    let own = own_terminal()?;
    let fd = open_own(libc::O_RDWR as u32, 0)?;
    let fd = above(fd, super::files::helper_fd_base(&image.processes))?;
    let (mut ctty_leader, mut foreground) = (None, None);
    if let Some(job) = job {
        let in_tree = |pid: i32| image.inventory.tree.iter().any(|t| t.pid == pid);
        let crest_ctty = crate::proc::Proc::open(std::process::id() as i32)
            .and_then(|p| p.tree_ids())
            .map(|ids| ids.tty_nr as u32 as u64)
            .map_err(|e| RestoreError::Internal(format!("reading crest's own stat: {e}")))?;
        let crest_ctty = (crest_ctty != 0)
            .then(|| libc::makedev(libc::major(crest_ctty), libc::minor(crest_ctty)));
        match job.ctty_session {
            Some(sid) if in_tree(sid) => {
                if crest_ctty.is_some_and(|c| same_device(c, own)) {
                    return Err(refuse(format!(
                        "process {sid} led its own session with the shell's terminal as \
                         controlling terminal; the terminal crest runs on ({}) is the \
                         controlling terminal of crest's session, which crest will not take \
                         away from its shell: run crest restore --shell-job on a terminal that \
                         no session controls",
                        numbers(own)
                    )));
                }
                ctty_leader = Some(sid);
            }
            Some(_) if !crest_ctty.is_some_and(|c| same_device(c, own)) => {
                return Err(refuse(format!(
                    "the tree's processes had the shell's terminal as controlling terminal \
                     in the session they were started in, which is crest's session at \
                     restore; crest's standard input is terminal {}, but crest's \
                     controlling terminal is {}: run crest restore --shell-job from the \
                     shell of the terminal the tree should be attached to",
                    numbers(own),
                    crest_ctty.map_or("none".to_string(), numbers)
                )));
            }
            Some(_) | None => {}
        }
        foreground = job.foreground.filter(|&p| in_tree(p));
        if detached && foreground.is_some() && ctty_leader.is_none() {
            crate::warn!(
                "the tree was in the foreground of its terminal and is restored so, in crest's \
                 session; with -d crest exits at once, and the shell that started crest then \
                 takes the foreground back (the tree's reads from the terminal then fail): run \
                 crest restore --shell-job without -d to keep it in the foreground"
            );
        }
    }
    Ok(Some(Terminal {
        fd,
        ctty_leader,
        foreground,
        machine: None,
    }))
}

/// A new open file description of crest's terminal with the status flags `flags` (access mode,
/// O_NONBLOCK, O_APPEND, ...), never becoming anyone's controlling terminal by the open,
/// numbered at `base` or above.
pub fn open_own(flags: u32, base: RawFd) -> Result<OwnedFd, RestoreError> {
    let own = own_terminal()?;
    let flags = (flags as i32)
        & !(libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_CLOEXEC | libc::O_NOCTTY);
    let path = c"/proc/self/fd/0";
    // SAFETY: path is a valid C string; open has no other preconditions.
    let raw = unsafe { libc::open(path.as_ptr(), flags | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(RestoreError::Os {
            what: "opening crest's terminal (its standard input) anew for the restored tree".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: raw is a descriptor we just opened and own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let st = nix::sys::stat::fstat(&fd).map_err(|e| RestoreError::Os {
        what: "examining crest's terminal".into(),
        source: e.into(),
    })?;
    if !same_device(st.st_rdev, own) {
        return Err(RestoreError::Internal(format!(
            "reopening crest's terminal {} gave device {}",
            numbers(own),
            numbers(st.st_rdev)
        )));
    }
    above(fd, base)
}

/// crest's standard input's device, which must be a terminal.
fn own_terminal() -> Result<u64, RestoreError> {
    let stdin = std::io::stdin();
    let not_tty = || {
        refuse(
            "the image was dumped with --shell-job: the tree is restored onto the terminal crest \
             restore runs on, but crest's standard input is not a terminal"
                .into(),
        )
    };
    let st = nix::sys::stat::fstat(&stdin).map_err(|_| not_tty())?;
    // SAFETY: isatty only inspects the descriptor.
    if st.st_mode & libc::S_IFMT != libc::S_IFCHR || unsafe { libc::isatty(0) } != 1 {
        return Err(not_tty());
    }
    Ok(st.st_rdev)
}

fn same_device(a: u64, b: u64) -> bool {
    libc::major(a) == libc::major(b) && libc::minor(a) == libc::minor(b)
}

fn numbers(rdev: u64) -> String {
    format!("{}:{}", libc::major(rdev), libc::minor(rdev))
}

fn above(fd: OwnedFd, base: RawFd) -> Result<OwnedFd, RestoreError> {
    if fd.as_raw_fd() >= base {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC on a valid fd has no memory-safety preconditions.
    let moved = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, base) };
    if moved < 0 {
        return Err(RestoreError::Os {
            what: format!("moving crest's terminal above fd {base}"),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: moved is a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(moved) })
}

impl TaskTerminal {
    /// In task `pid` right after its setsid: takes the terminal as controlling terminal when
    /// the task led the terminal's session.
    pub fn after_setsid(&self, pid: i32) -> Result<(), String> {
        if self.ctty_leader != Some(pid) {
            return Ok(());
        }
        // SAFETY: TIOCSCTTY takes an integer (0: do not steal from another session).
        if unsafe { libc::ioctl(self.fd, libc::TIOCSCTTY, 0) } < 0 {
            let err = std::io::Error::last_os_error();
            let why = if err.raw_os_error() == Some(libc::EPERM) {
                " (it is the controlling terminal of another session)"
            } else {
                ""
            };
            return Err(format!(
                "pid {pid}: making {} its controlling terminal (TIOCSCTTY) failed{why}: {err}",
                self.name()
            ));
        }
        Ok(())
    }

    /// In task `pid` right after it made its group (setsid or setpgid): makes the group the
    /// terminal's foreground group when it was at dump time.
    pub fn after_group(&self, pid: i32) -> Result<(), String> {
        if self.foreground != Some(pid) {
            return Ok(());
        }
        // SAFETY: tcsetpgrp on a descriptor we hold; SIGTTOU is blocked in every task.
        if unsafe { libc::tcsetpgrp(self.fd, pid) } < 0 {
            return Err(format!(
                "pid {pid}: making its process group the foreground group of {} (tcsetpgrp) \
                 failed: {}",
                self.name(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    fn name(&self) -> String {
        match self.machine {
            Some(rdev) => format!("the terminal {}", numbers(rdev)),
            None => "crest's terminal".into(),
        }
    }
}
