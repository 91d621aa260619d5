//! SO_PEERCRED of the restored AF_UNIX sockets: made so that the kernel records the peer
//! credentials (pid, uid, gid) they had.
//!
//! The kernel takes them from the task that makes the connection: socketpair(2) gives both
//! ends the creator's; listen(2) gives a listener its own; connect(2) gives the connecting
//! socket its listener's (as of listen) and the connection it queues the connector's. crest
//! makes every socket before the tree is forked, so what would name crest is made instead by a
//! short-lived child of crest's ([`as_creator`]) under the recorded pid (clone3 set_tid) with
//! the recorded uid and gid, sharing crest's fd table so that what it makes is crest's. It is
//! reaped at once, which frees the pid for the task restored under it; the kernel keeps the
//! pid's number in the socket after that.
//!
//! - a pair whose ends name the same creator: socketpair under it;
//! - a stream or seqpacket pair whose ends name different ones (a connection made with
//!   listen/connect/accept): a listener on a fresh abstract name under the one the connecting
//!   end names, connect under the one the accepted end names, accept in crest (the accepted end
//!   then has that abstract name, where the original had its listener's);
//! - a survivor of a closed pair: socketpair under what it names;
//! - a listener: listen(2) under what it names (its clients, those restored waiting in its
//!   queue included, get them from it).
//!
//! Left as crest makes them: the connection a waiting client queued (accepted after the
//! restore, it names crest: its credentials are not readable at dump time), and old images'
//! sockets, which have no record. [`check`] warns about any made socket whose SO_PEERCRED
//! differs from the record.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::images::MessageCreds;

use super::RestoreError;

/// What a child under a creator's credentials does (only raw system calls: it is a copy of
/// crest sharing its fd table).
#[derive(Clone, Copy)]
enum Act {
    /// socketpair(2) of the type.
    Pair(i32),
    /// listen(2) on crest's descriptor with the backlog.
    Listen(RawFd, i32),
    /// socket(2) of the type, bound to a fresh abstract name (autobind), listening.
    Listener(i32),
    /// socket(2) of the type, connected to the address.
    Connect(i32, libc::sockaddr_un, libc::socklen_t),
}

/// What the child reports through its pipe: the step that failed (0: none), its errno, and
/// the descriptors it made (-1: none).
#[repr(C)]
#[derive(Clone, Copy)]
struct Report {
    step: i32,
    errno: i32,
    fds: [RawFd; 2],
}

const STEP_SETRESGID: i32 = 1;
const STEP_SETRESUID: i32 = 2;
const STEP_ACT: i32 = 3;

/// Runs `act` in a child of crest's under pid `c.pid` with uid and gid `c.uid`/`c.gid` (real,
/// effective and saved), sharing crest's fd table; reaps it. `what` names the socket for
/// messages. Returns the descriptors it made, now crest's.
fn as_creator(c: MessageCreds, act: Act, what: &str) -> Result<Vec<OwnedFd>, RestoreError> {
    // A pid a process outside the tree holds (a supervisor that handed the tree a socket pair
    // or a listener, still running) cannot be taken: the socket is made under the recorded ids
    // by a child of crest's with a pid of its own, and the change is said.
    let pid_free = match super::fork::wait_until_pid_free(c.pid) {
        Ok(()) => true,
        Err(RestoreError::PidTaken { .. }) => {
            crate::warn!(
                "{what} had peer credentials (SO_PEERCRED) naming pid {}, which a process \
                 outside the restored tree holds now: it is made again with uid {} and gid {} \
                 but names another pid (restore with --pidns to keep the pid too)",
                c.pid,
                c.uid,
                c.gid
            );
            false
        }
        Err(e) => return Err(e),
    };
    let mut p = [-1; 2];
    // SAFETY: pipe2 writes two descriptors into `p`.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(RestoreError::Os {
            what: format!("making a pipe for the maker of {what}"),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: both are fresh descriptors crest owns.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    // SAFETY: crest is single-threaded on this path (the restore makes its sockets before it
    // forks the tree); the child only makes raw system calls and ends with _exit.
    let forked = unsafe {
        if pid_free {
            crate::sys::clone3_with_pid_flags(c.pid, libc::SIGCHLD, libc::CLONE_FILES as u64)
        } else {
            crate::sys::clone3_flags(libc::CLONE_FILES as u64, libc::SIGCHLD)
        }
    };
    let maker = match forked {
        Ok(0) => {
            // SAFETY: only raw system calls from here to _exit: the child is a copy of crest
            // that shares its fd table (it closes nothing) and may not run crest's code.
            unsafe {
                let report = child(c, act);
                libc::write(
                    w.as_raw_fd(),
                    (&report as *const Report).cast(),
                    std::mem::size_of::<Report>(),
                );
                libc::_exit(0)
            }
        }
        Ok(got) if got == c.pid || !pid_free => got,
        Ok(got) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(got),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(got), None);
            return Err(RestoreError::Internal(format!(
                "clone3 gave pid {got} instead of {}",
                c.pid
            )));
        }
        Err(nix::errno::Errno::EEXIST) => {
            return Err(RestoreError::Unsupported(format!(
                "{what} had peer credentials (SO_PEERCRED) naming pid {}, which another \
                 process took while crest restored: restore again",
                c.pid
            )))
        }
        Err(e) => {
            return Err(RestoreError::Os {
                what: format!(
                    "forking a process under pid {} (clone3 with set_tid) to make {what}",
                    c.pid
                ),
                source: e.into(),
            })
        }
    };
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child, with a valid status pointer.
        let got = unsafe { libc::waitpid(maker, &mut status, libc::__WALL) };
        if got == maker {
            break;
        }
        let e = std::io::Error::last_os_error();
        if got < 0 && e.raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return Err(RestoreError::Os {
            what: format!("reaping the maker of {what} (pid {maker})"),
            source: e,
        });
    }
    drop(w);
    let mut report = Report {
        step: -1,
        errno: 0,
        fds: [-1; 2],
    };
    // SAFETY: read into a plain-old-data struct of the size given.
    let n = unsafe {
        libc::read(
            r.as_raw_fd(),
            (&mut report as *mut Report).cast(),
            std::mem::size_of::<Report>(),
        )
    };
    if n != std::mem::size_of::<Report>() as isize {
        return Err(RestoreError::Internal(format!(
            "the maker of {what} under pid {} ended without reporting",
            c.pid
        )));
    }
    // SAFETY: the child made these descriptors in the fd table crest shares, and reported them;
    // nothing else owns them.
    let fds: Vec<OwnedFd> = report
        .fds
        .iter()
        .filter(|&&fd| fd >= 0)
        .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    let failed = match report.step {
        0 => return Ok(fds),
        STEP_SETRESGID => format!("setresgid to gid {}", c.gid),
        STEP_SETRESUID => format!("setresuid to uid {}", c.uid),
        _ => match act {
            Act::Pair(_) => "socketpair".into(),
            Act::Listen(..) => "listen".into(),
            Act::Listener(_) => "socket, bind or listen (a listener to connect through)".into(),
            Act::Connect(..) => "socket or connect".into(),
        },
    };
    Err(RestoreError::Os {
        what: format!(
            "making {what} under its peer credentials (pid {} uid {} gid {}): {failed}",
            c.pid, c.uid, c.gid
        ),
        source: std::io::Error::from_raw_os_error(report.errno),
    })
}

/// The child's work: take the ids, then act.
///
/// # Safety
/// Only for the child of [`as_creator`]: raw system calls on its own descriptors.
unsafe fn child(c: MessageCreds, act: Act) -> Report {
    let fail = |step| Report {
        step,
        // SAFETY: reads the calling thread's errno.
        errno: unsafe { *libc::__errno_location() },
        fds: [-1; 2],
    };
    // SAFETY: raw system calls with integer arguments and pointers to locals.
    unsafe {
        if libc::setresgid(c.gid, c.gid, c.gid) != 0 {
            return fail(STEP_SETRESGID);
        }
        if libc::setresuid(c.uid, c.uid, c.uid) != 0 {
            return fail(STEP_SETRESUID);
        }
        let mut fds = [-1; 2];
        let ok = match act {
            Act::Pair(ty) => {
                libc::socketpair(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) == 0
            }
            Act::Listen(fd, backlog) => libc::listen(fd, backlog) == 0,
            Act::Listener(ty) => {
                fds[0] = libc::socket(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0);
                let family = libc::sockaddr_un {
                    sun_family: libc::AF_UNIX as libc::sa_family_t,
                    sun_path: [0; 108],
                };
                // An address of the family alone: the kernel picks a fresh abstract name.
                fds[0] >= 0
                    && libc::bind(
                        fds[0],
                        (&family as *const libc::sockaddr_un).cast(),
                        std::mem::size_of::<libc::sa_family_t>() as libc::socklen_t,
                    ) == 0
                    && libc::listen(fds[0], 1) == 0
            }
            Act::Connect(ty, addr, len) => {
                fds[0] = libc::socket(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0);
                fds[0] >= 0
                    && libc::connect(fds[0], (&addr as *const libc::sockaddr_un).cast(), len) == 0
            }
        };
        let mut report = if ok {
            Report {
                step: 0,
                errno: 0,
                fds,
            }
        } else {
            fail(STEP_ACT)
        };
        // What the child made is reported even when a later step failed, so that crest
        // closes it.
        report.fds = fds;
        report
    }
}

/// The two ends of a pair whose recorded peer credentials are `a` and `b`, made so that they
/// read the same; None when crest's own socketpair is what comes closest (no record).
pub fn pair(
    ty: i32,
    a: Option<MessageCreds>,
    b: Option<MessageCreds>,
    what: &str,
) -> Result<Option<(OwnedFd, OwnedFd)>, RestoreError> {
    let two = |mut v: Vec<OwnedFd>| -> Result<(OwnedFd, OwnedFd), RestoreError> {
        match (v.pop(), v.pop()) {
            (Some(second), Some(first)) => Ok((first, second)),
            _ => Err(RestoreError::Internal(format!(
                "making {what}: fewer than two sockets came back"
            ))),
        }
    };
    match (a, b) {
        (Some(x), Some(y)) if x == y => two(as_creator(x, Act::Pair(ty), what)?).map(Some),
        (Some(x), Some(y)) if ty != libc::SOCK_DGRAM => connection(ty, x, y, what).map(Some),
        // A datagram pair naming two creators, or one end with none: no single socketpair
        // makes that; the first end's creator makes it.
        (Some(x), _) | (None, Some(x)) => two(as_creator(x, Act::Pair(ty), what)?).map(Some),
        (None, None) => Ok(None),
    }
}

/// A connection whose connecting end names `x` (its listener's) and whose accepted end names
/// `y` (its connector's).
fn connection(
    ty: i32,
    x: MessageCreds,
    y: MessageCreds,
    what: &str,
) -> Result<(OwnedFd, OwnedFd), RestoreError> {
    let listener = as_creator(x, Act::Listener(ty), what)?
        .pop()
        .ok_or_else(|| RestoreError::Internal(format!("making {what}: no listener came back")))?;
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: addr and len are valid for writes of the sizes given.
    if unsafe {
        libc::getsockname(
            listener.as_raw_fd(),
            (&mut addr as *mut libc::sockaddr_un).cast(),
            &mut len,
        )
    } != 0
    {
        return Err(RestoreError::Os {
            what: format!("reading the name of the listener made for {what}"),
            source: std::io::Error::last_os_error(),
        });
    }
    let client = as_creator(y, Act::Connect(ty, addr, len), what)?
        .pop()
        .ok_or_else(|| RestoreError::Internal(format!("making {what}: no client came back")))?;
    // SAFETY: accept4 on a listener crest owns, without an address.
    let accepted = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if accepted < 0 {
        return Err(RestoreError::Os {
            what: format!("accepting the connection made for {what}"),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: a fresh descriptor crest owns.
    Ok((client, unsafe { OwnedFd::from_raw_fd(accepted) }))
}

/// The survivor of a pair whose other end was closed, and that other end, made so that the
/// survivor reads `c`; None without a record.
pub fn survivor(
    ty: i32,
    c: Option<MessageCreds>,
    ino: u64,
) -> Result<Option<(OwnedFd, OwnedFd)>, RestoreError> {
    pair(
        ty,
        c,
        c,
        &format!("UNIX socket inode {ino} (whose peer was closed)"),
    )
}

/// listen(2) on `fd` (UNIX socket inode `ino`) with `backlog`, under `c` when recorded.
pub fn listen(
    fd: &OwnedFd,
    backlog: i32,
    c: Option<MessageCreds>,
    ino: u64,
) -> Result<(), RestoreError> {
    match c {
        Some(c) => as_creator(
            c,
            Act::Listen(fd.as_raw_fd(), backlog),
            &format!("the UNIX listener of inode {ino}"),
        )
        .map(drop),
        None => {
            // SAFETY: listen on a bound socket crest owns.
            if unsafe { libc::listen(fd.as_raw_fd(), backlog) } < 0 {
                return Err(RestoreError::Os {
                    what: format!("listening on UNIX socket inode {ino}"),
                    source: std::io::Error::last_os_error(),
                });
            }
            Ok(())
        }
    }
}

/// Warns when the SO_PEERCRED of the made socket `fd` (inode `ino`) differs from `recorded`.
pub fn check(fd: &OwnedFd, recorded: Option<MessageCreds>, ino: u64) {
    let Ok(now) = crate::files::peercred::read(fd.as_fd()) else {
        return;
    };
    // An old image has no record; a socket crest connects itself names no one it cannot know.
    if recorded.is_some() && now != recorded {
        crate::warn!(
            "UNIX socket inode {ino}: its peer credentials (SO_PEERCRED) were {} and are {} \
             after the restore",
            crate::files::peercred::shown(recorded),
            crate::files::peercred::shown(now)
        );
    }
}
