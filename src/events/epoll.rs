//! epoll instances, both sides.
//!
//! Dump: the fdinfo of an epoll lists every registration as (target fd number, event mask,
//! data). The kernel keys a registration by (file, fd number at EPOLL_CTL_ADD): the number may
//! since have been closed or reused, so each target is identified with
//! kcmp(KCMP_EPOLL_TFD): first the file the process now holds under that number, then every
//! other fd of the process, then every fd of the other processes of the tree. A target that no
//! process of the tree holds under any fd is refused. The target is recorded as the tree-wide
//! id of its open file description, with the number it was registered under.
//!
//! Restore: every file of the tree is opened in crest first; each epoll is created
//! (epoll_create1) like the other descriptions, and once all of them exist (inner epolls
//! included) [`register_all`] adds every target again under its original fd number, so the
//! restored process's later EPOLL_CTL_MOD/DEL find it: a thread with a private copy of crest's
//! fd table (unshare CLONE_FILES) puts each target description at that number and adds it.
//! The event mask is restored exactly; readiness comes from the targets themselves (a target
//! that is ready when added is reported again, also an edge-triggered one whose edge the
//! process had already consumed: a spurious wakeup, never a lost one).

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::images::{Epoll, EpollTarget, FileIdentity, FileKind, ProcessImage};
use crate::proc::EpollLine;
use crate::sys;

use super::EventError;

/// Not resolved yet: a target's description before [`resolve`] finds it.
pub const UNRESOLVED: u32 = u32::MAX;

/// The bits of an event mask that are flags of the registration, not events
/// (EPOLLEXCLUSIVE, EPOLLWAKEUP, EPOLLONESHOT, EPOLLET).
const PRIVATE_BITS: u32 = (1 << 28) | (1 << 29) | (1 << 30) | (1 << 31);

/// The image's record of an epoll whose fdinfo listed `lines` (targets not resolved yet).
pub fn identity(lines: &[EpollLine], dev: u64, ino: u64) -> FileIdentity {
    crate::files::object_identity(
        "anon_inode:[eventpoll]".into(),
        FileKind::Epoll(Epoll {
            targets: lines
                .iter()
                .map(|l| EpollTarget {
                    fd: l.tfd,
                    description: UNRESOLVED,
                    events: l.events,
                    data: l.data,
                })
                .collect(),
        }),
        dev,
        ino,
    )
}

/// The fds of one process of the tree, with the tree-wide description id of each.
pub struct Holder {
    pub pid: i32,
    pub fds: Vec<(RawFd, u32)>,
}

/// Finds the description of every target of the epoll at fd `epfd` of process `pid`, among
/// the fds of `tree` (`tree` lists `pid` too). Returns what cannot be resolved, one line each.
pub fn resolve(pid: i32, epfd: RawFd, targets: &mut [EpollTarget], tree: &[Holder]) -> Vec<String> {
    let mut problems = Vec::new();
    let own = tree.iter().find(|h| h.pid == pid);
    for i in 0..targets.len() {
        let tfd = targets[i].fd;
        // The n-th registration under that number, in the kernel's (and fdinfo's) order.
        let toff = targets[..i].iter().filter(|t| t.fd == tfd).count() as u32;
        let mut candidates: Vec<(i32, RawFd, u32)> = Vec::new();
        if let Some(h) = own {
            candidates.extend(h.fds.iter().filter(|f| f.0 == tfd).map(|f| (pid, f.0, f.1)));
            candidates.extend(h.fds.iter().filter(|f| f.0 != tfd).map(|f| (pid, f.0, f.1)));
        }
        for h in tree.iter().filter(|h| h.pid != pid) {
            candidates.extend(h.fds.iter().map(|f| (h.pid, f.0, f.1)));
        }
        let mut found = None;
        for (cpid, cfd, id) in candidates {
            match sys::kcmp_epoll_target(cpid, pid, cfd, epfd, tfd, toff) {
                Ok(true) => {
                    found = Some(id);
                    break;
                }
                Ok(false) => {}
                Err(errno) => {
                    problems.push(format!(
                        "process {pid}: fd {epfd} is an epoll instance whose target fd {tfd} \
                         cannot be identified (kcmp KCMP_EPOLL_TFD: {errno}); crest needs a \
                         kernel with CONFIG_KCMP"
                    ));
                    break;
                }
            }
        }
        match found {
            Some(id) => targets[i].description = id,
            None if problems.is_empty() => problems.push(format!(
                "process {pid}: fd {epfd} is an epoll instance with a target registered as fd \
                 {tfd}, whose file no process of the tree holds under any fd any more (it is \
                 kept open elsewhere: by a process outside the tree, a mapping or a message in \
                 flight); crest cannot dump it"
            )),
            None => {}
        }
    }
    problems
}

fn fail(what: String) -> EventError {
    EventError {
        what,
        source: std::io::Error::last_os_error(),
    }
}

/// A new, empty epoll instance with the status flags (O_NONBLOCK) of `status_flags`,
/// close-on-exec.
pub fn create(status_flags: u32) -> Result<OwnedFd, EventError> {
    // SAFETY: epoll_create1 takes a flag and returns a new fd or -1.
    let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if raw < 0 {
        return Err(fail("an epoll instance (epoll_create1)".into()));
    }
    // SAFETY: raw is a fresh descriptor the kernel just gave us.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let nonblock = status_flags as i32 & libc::O_NONBLOCK;
    // SAFETY: F_SETFL on a descriptor we own changes only its status flags.
    if nonblock != 0 && unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, nonblock) } < 0 {
        return Err(fail("the status flags of an epoll instance (fcntl)".into()));
    }
    Ok(fd)
}

/// One epoll of the tree to fill: where to find it and its targets.
struct ToFill<'a> {
    pid: i32,
    epoll: RawFd,
    targets: &'a [EpollTarget],
}

/// Adds the targets of every epoll of `processes` again, once per epoll description;
/// `description` gives crest's descriptor of a description by tree-wide id (every file of the
/// tree is open by now).
pub fn register_all(
    processes: &[ProcessImage],
    description: impl Fn(u32) -> Option<RawFd>,
) -> Result<(), EventError> {
    let mut fill: Vec<ToFill> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut sources: HashMap<u32, RawFd> = HashMap::new();
    for p in processes {
        for d in &p.open_files {
            let Some(FileIdentity {
                kind: FileKind::Epoll(ep),
                ..
            }) = p.files.get(d.file as usize)
            else {
                continue;
            };
            if !seen.insert(d.id) {
                continue;
            }
            let missing = |id: u32| EventError {
                what: format!(
                    "the epoll of pid {}: description {id} was not opened",
                    p.pid
                ),
                source: std::io::Error::from_raw_os_error(libc::EBADF),
            };
            let epoll = description(d.id).ok_or_else(|| missing(d.id))?;
            for t in &ep.targets {
                sources.insert(
                    t.description,
                    description(t.description).ok_or_else(|| missing(t.description))?,
                );
            }
            fill.push(ToFill {
                pid: p.pid,
                epoll,
                targets: &ep.targets,
            });
        }
    }
    if fill.is_empty() {
        return Ok(());
    }
    std::thread::scope(|s| {
        s.spawn(|| fill_in_private_table(&fill, &sources))
            .join()
            .unwrap_or_else(|_| {
                Err(EventError {
                    what: "the epoll registration thread panicked".into(),
                    source: std::io::Error::from_raw_os_error(libc::EIO),
                })
            })
    })
}

/// Runs in a thread of its own: gives it a private copy of crest's fd table, then registers
/// every target under its original number.
fn fill_in_private_table(fill: &[ToFill], sources: &HashMap<u32, RawFd>) -> Result<(), EventError> {
    // SAFETY: unshare(CLONE_FILES) gives this thread its own copy of the fd table; every
    // descriptor the rest of crest owns stays open in the shared table, whatever this thread
    // closes in its copy.
    if unsafe { libc::unshare(libc::CLONE_FILES) } != 0 {
        return Err(fail(
            "a private fd table for the epoll registrations (unshare)".into(),
        ));
    }
    // Everything this thread needs goes above every target number, so putting a target at its
    // number never closes a descriptor still needed.
    let top = fill
        .iter()
        .flat_map(|f| f.targets.iter().map(|t| t.fd))
        .chain(sources.values().copied())
        .chain(fill.iter().map(|f| f.epoll))
        .max()
        .unwrap_or(0)
        + 1;
    let lift = |fd: RawFd| -> Result<RawFd, EventError> {
        // SAFETY: F_DUPFD_CLOEXEC on an open descriptor of this thread's private table.
        let r = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, top) };
        if r < 0 {
            return Err(fail(format!("a copy of descriptor {fd} (fcntl F_DUPFD)")));
        }
        Ok(r)
    };
    let mut lifted: HashMap<u32, RawFd> = HashMap::new();
    for (&id, &fd) in sources {
        lifted.insert(id, lift(fd)?);
    }
    let epolls: Vec<RawFd> = fill
        .iter()
        .map(|f| lift(f.epoll))
        .collect::<Result<_, _>>()?;
    let add = |ep: RawFd, pid: i32, t: &EpollTarget, events: u32| -> Result<(), EventError> {
        let src = lifted[&t.description];
        // SAFETY: dup3 onto a number of this thread's private table; what was there (a copy
        // of one of crest's descriptors, none needed here) is closed in this table only.
        if unsafe { libc::dup3(src, t.fd, libc::O_CLOEXEC) } < 0 {
            return Err(fail(format!(
                "placing the target of pid {pid}'s epoll at fd {} (dup3)",
                t.fd
            )));
        }
        let mut ev = libc::epoll_event {
            events,
            u64: t.data,
        };
        // SAFETY: ev is a valid epoll_event; both descriptors are open.
        let r = unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, t.fd, &mut ev) };
        let result = if r != 0 {
            Err(fail(format!(
                "registering fd {} (events {:#x}, data {:#x}) in an epoll of pid {pid} \
                 (epoll_ctl EPOLL_CTL_ADD)",
                t.fd, t.events, t.data
            )))
        } else {
            Ok(())
        };
        // SAFETY: closes the number in this thread's private table only.
        unsafe { libc::close(t.fd) };
        result
    };
    // First the EPOLLONESHOT registrations that had fired (only flag bits left): added for
    // every event, so those ready now fire at once and are consumed here, which disarms them
    // exactly as they were. One that is not ready is then left armed for nothing but
    // EPOLLERR/EPOLLHUP, which the kernel adds to every registration.
    for (f, &ep) in fill.iter().zip(&epolls) {
        let disarmed: Vec<&EpollTarget> = f
            .targets
            .iter()
            .filter(|t| t.events & !PRIVATE_BITS == 0)
            .collect();
        if disarmed.is_empty() {
            continue;
        }
        let all_events = (libc::EPOLLIN
            | libc::EPOLLOUT
            | libc::EPOLLPRI
            | libc::EPOLLRDHUP
            | libc::EPOLLRDNORM
            | libc::EPOLLRDBAND
            | libc::EPOLLWRNORM
            | libc::EPOLLWRBAND
            | libc::EPOLLMSG) as u32;
        // One at a time, so that an event read here is this registration's: the earlier
        // ones are disarmed, or armed only for an error or hangup they did not have.
        for t in &disarmed {
            add(ep, f.pid, t, t.events | all_events)?;
            let mut out = [libc::epoll_event { events: 0, u64: 0 }];
            // SAFETY: out has room for one event; a zero timeout never blocks.
            let fired = unsafe { libc::epoll_wait(ep, out.as_mut_ptr(), 1, 0) } == 1;
            if fired {
                continue;
            }
            // Not ready: narrowed to what the kernel always adds (EPOLLERR, EPOLLHUP).
            let mut ev = libc::epoll_event {
                events: t.events,
                u64: t.data,
            };
            let src = lifted[&t.description];
            // SAFETY: as in `add`.
            if unsafe { libc::dup3(src, t.fd, libc::O_CLOEXEC) } < 0 {
                return Err(fail(format!("placing a target at fd {} (dup3)", t.fd)));
            }
            // SAFETY: ev is a valid epoll_event; both descriptors are open.
            let r = unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_MOD, t.fd, &mut ev) };
            // SAFETY: closes the number in this thread's private table only.
            unsafe { libc::close(t.fd) };
            if r != 0 {
                return Err(fail(format!(
                    "narrowing fd {} of an epoll of pid {} (epoll_ctl EPOLL_CTL_MOD)",
                    t.fd, f.pid
                )));
            }
        }
    }
    for (f, &ep) in fill.iter().zip(&epolls) {
        for t in f.targets.iter().filter(|t| t.events & !PRIVATE_BITS != 0) {
            add(ep, f.pid, t, t.events)?;
        }
    }
    Ok(())
}
