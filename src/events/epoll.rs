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
//!
//! signalfd targets are the exception: the kernel hooks a signalfd registration on the signal
//! queue of the task that calls EPOLL_CTL_ADD (signalfd_poll waits on `current`'s), so one added
//! by crest would wait for crest's signals and never wake for the restored process's. Those
//! are added by the restored task itself ([`registered_by_task`], [`register_in_task`]), by a
//! process that holds both the epoll and the signalfd (the dump refuses an epoll whose signalfd
//! no such process holds: [`signalfd_problems`]).

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::images::{Epoll, EpollTarget, EventFd, FileIdentity, FileKind, ProcessImage};
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
struct ToFill {
    pid: i32,
    epoll: RawFd,
    /// The targets crest adds (all but signalfds).
    targets: Vec<EpollTarget>,
}

/// Adds the targets of every epoll of `processes` again, once per epoll description;
/// `description` gives crest's descriptor of a description by tree-wide id (every file of the
/// tree is open by now).
pub fn register_all(
    processes: &[ProcessImage],
    description: impl Fn(u32) -> Option<RawFd>,
) -> Result<(), EventError> {
    let mut fill: Vec<ToFill> = Vec::new();
    let mut sources: HashMap<u32, RawFd> = HashMap::new();
    let signalfds = signalfd_ids(processes);
    for (p, id, ep) in each_epoll(processes) {
        let missing = |id: u32| EventError {
            what: format!(
                "the epoll of pid {}: description {id} was not opened",
                p.pid
            ),
            source: std::io::Error::from_raw_os_error(libc::EBADF),
        };
        let epoll = description(id).ok_or_else(|| missing(id))?;
        for t in ep
            .targets
            .iter()
            .filter(|t| signalfds.contains(&t.description))
        {
            if registering_process(processes, id, t.description).is_none() {
                return Err(EventError {
                    what: format!(
                        "the epoll of pid {} watches a signalfd (fd {}) that no process \
                         holding the epoll holds; the image is damaged",
                        p.pid, t.fd
                    ),
                    source: std::io::Error::from_raw_os_error(libc::EINVAL),
                });
            }
        }
        let crests: Vec<EpollTarget> = ep
            .targets
            .iter()
            .filter(|t| !signalfds.contains(&t.description))
            .copied()
            .collect();
        for t in &crests {
            sources.insert(
                t.description,
                description(t.description).ok_or_else(|| missing(t.description))?,
            );
        }
        fill.push(ToFill {
            pid: p.pid,
            epoll,
            targets: crests,
        });
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

/// Every epoll description of `processes` once: the first process holding it, its tree-wide
/// id and its record.
fn each_epoll(processes: &[ProcessImage]) -> Vec<(&ProcessImage, u32, &Epoll)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for p in processes {
        for d in &p.open_files {
            if let Some(FileIdentity {
                kind: FileKind::Epoll(ep),
                ..
            }) = p.files.get(d.file as usize)
            {
                if seen.insert(d.id) {
                    out.push((p, d.id, ep));
                }
            }
        }
    }
    out
}

/// The tree-wide ids of the signalfd descriptions of `processes`.
fn signalfd_ids(processes: &[ProcessImage]) -> HashSet<u32> {
    processes
        .iter()
        .flat_map(|p| {
            p.open_files.iter().filter_map(move |d| {
                match p.files.get(d.file as usize).map(|f| &f.kind) {
                    Some(FileKind::Event(EventFd::Signals { .. })) => Some(d.id),
                    _ => None,
                }
            })
        })
        .collect()
}

/// The process (index into `processes`) that adds signalfd `target` to epoll `epoll` at
/// restore: the first one holding both descriptions.
fn registering_process(processes: &[ProcessImage], epoll: u32, target: u32) -> Option<usize> {
    let holds = |p: &ProcessImage, id: u32| p.open_files.iter().any(|d| d.id == id);
    processes
        .iter()
        .position(|p| holds(p, epoll) && holds(p, target))
}

/// An EPOLL_CTL_ADD the restored task makes itself (a signalfd target, see the module
/// comment): into the epoll description `epoll` (tree-wide id), `target` as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskRegistration {
    pub epoll: u32,
    pub target: EpollTarget,
}

/// The registrations process `index` of `processes` makes itself once its fds are in place.
pub fn registered_by_task(processes: &[ProcessImage], index: usize) -> Vec<TaskRegistration> {
    let signalfds = signalfd_ids(processes);
    if signalfds.is_empty() {
        return Vec::new();
    }
    let mut mine = Vec::new();
    for (_, id, ep) in each_epoll(processes) {
        for t in ep
            .targets
            .iter()
            .filter(|t| signalfds.contains(&t.description))
        {
            if registering_process(processes, id, t.description) == Some(index) {
                mine.push(TaskRegistration {
                    epoll: id,
                    target: *t,
                });
            }
        }
    }
    mine
}

/// Makes `registrations` from the restored task, after its fds are installed: `description`
/// gives the task's (crest's inherited) descriptor of a description by tree-wide id. Each
/// target is added under its recorded fd number, whatever the task holds there is put back
/// afterwards (with its close-on-exec flag); spare copies go at `spare_from` or above.
pub fn register_in_task(
    registrations: &[TaskRegistration],
    description: impl Fn(u32) -> Option<RawFd>,
    spare_from: RawFd,
) -> Result<(), String> {
    for r in registrations {
        let t = &r.target;
        let (Some(ep), Some(src)) = (description(r.epoll), description(t.description)) else {
            return Err(format!(
                "the signalfd registered as fd {} of an epoll is not among the task's files",
                t.fd
            ));
        };
        let os = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
        // SAFETY: F_GETFD only reads the descriptor flags of a number (EBADF if free).
        let held_flags = unsafe { libc::fcntl(t.fd, libc::F_GETFD) };
        let saved = if held_flags >= 0 {
            // SAFETY: F_DUPFD_CLOEXEC copies an open descriptor to a free number >= spare_from.
            let copy = unsafe { libc::fcntl(t.fd, libc::F_DUPFD_CLOEXEC, spare_from) };
            if copy < 0 {
                return Err(os(&format!("cannot set fd {} aside (fcntl F_DUPFD)", t.fd)));
            }
            Some(copy)
        } else {
            None
        };
        // SAFETY: dup3 onto a number whose previous file (if any) is kept in `saved`.
        if unsafe { libc::dup3(src, t.fd, libc::O_CLOEXEC) } < 0 {
            return Err(os(&format!(
                "cannot place the signalfd at fd {} (dup3)",
                t.fd
            )));
        }
        let mut ev = libc::epoll_event {
            events: t.events,
            u64: t.data,
        };
        // SAFETY: ev is a valid epoll_event; both descriptors are open.
        let added = unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, t.fd, &mut ev) } == 0;
        let add_error = os(&format!(
            "cannot register the signalfd at fd {} (events {:#x}, data {:#x}) in its epoll \
             (epoll_ctl EPOLL_CTL_ADD)",
            t.fd, t.events, t.data
        ));
        match saved {
            Some(copy) => {
                let flags = if held_flags & libc::FD_CLOEXEC != 0 {
                    libc::O_CLOEXEC
                } else {
                    0
                };
                // SAFETY: puts the task's own file back at its number; `copy` is ours.
                let back = unsafe { libc::dup3(copy, t.fd, flags) };
                // SAFETY: closes the spare copy made above.
                unsafe { libc::close(copy) };
                if back < 0 {
                    return Err(os(&format!("cannot put fd {} back (dup3)", t.fd)));
                }
            }
            // SAFETY: the number was free before; free it again.
            None => unsafe {
                libc::close(t.fd);
            },
        }
        if !added {
            return Err(add_error);
        }
    }
    Ok(())
}

/// Refusals for epolls whose signalfd targets no process holding the epoll also holds: the
/// registration must be made again by such a process (see the module comment). `holders`
/// lists the fds of every process; `signalfds` the tree-wide ids of the signalfds.
pub fn signalfd_problems(
    pid: i32,
    epfd: RawFd,
    epoll: u32,
    targets: &[EpollTarget],
    holders: &[Holder],
    signalfds: &HashSet<u32>,
) -> Vec<String> {
    let holds = |h: &Holder, id: u32| h.fds.iter().any(|f| f.1 == id);
    targets
        .iter()
        .filter(|t| signalfds.contains(&t.description))
        .filter(|t| {
            !holders
                .iter()
                .any(|h| holds(h, epoll) && holds(h, t.description))
        })
        .map(|t| {
            format!(
                "process {pid}: fd {epfd} is an epoll instance watching a signalfd (registered as \
                 fd {}) that no process holding the epoll holds; a signalfd reports the signals \
                 of the process that registered it, which crest cannot tell: keep the signalfd \
                 open in a process that holds the epoll",
                t.fd
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(fd: RawFd, description: u32) -> EpollTarget {
        EpollTarget {
            fd,
            description,
            events: libc::EPOLLIN as u32,
            data: 7,
        }
    }

    #[test]
    fn a_signalfd_target_needs_a_process_holding_it_and_the_epoll() {
        // Epoll 1 watches signalfd 2 (registered as fd 5) and pipe 3 (fd 6).
        let targets = [target(5, 2), target(6, 3)];
        let signalfds: HashSet<u32> = [2].into();
        let both = [Holder {
            pid: 10,
            fds: vec![(4, 1), (5, 2), (6, 3)],
        }];
        assert!(signalfd_problems(10, 4, 1, &targets, &both, &signalfds).is_empty());
        // The epoll's holder lost the signalfd; only another process holds it.
        let apart = [
            Holder {
                pid: 10,
                fds: vec![(4, 1), (6, 3)],
            },
            Holder {
                pid: 11,
                fds: vec![(5, 2)],
            },
        ];
        let problems = signalfd_problems(10, 4, 1, &targets, &apart, &signalfds);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("process 10: fd 4") && problems[0].contains("registered as fd 5"),
            "{}",
            problems[0]
        );
    }
}
