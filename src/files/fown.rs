//! Signal-driven I/O: the owner of an open file description (fcntl F_SETOWN_EX), the signal
//! it is sent (F_SETSIG) and O_ASYNC.
//!
//! The owner and the signal belong to the description, so crest reads them at dump from its
//! own duplicate of the fd (pidfd_getfd), with the uids the kernel recorded when the owner was
//! set (F_GETOWNER_UIDS: they decide whether the owner may be signalled). An owner outside the
//! dumped tree is refused: its pid means nothing after a restore.
//!
//! At restore, O_ASYNC is switched off and on again by the task itself once its fds are in
//! place: opening a file with O_ASYNC sets the flag without arming the kernel's notification,
//! and arming it records the fd number the signal reports (si_fd). The owner is set by crest
//! on its own copy of the description once every thread of the tree exists, from a thread of
//! crest that has taken the recorded uids for the moment.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::images::{Fd, FileOwner, OpenFileDescription, OwnerKind, ProcessImage};
use crate::sys;

const F_SETSIG: i32 = 10;
const F_GETSIG: i32 = 11;
const F_SETOWN_EX: i32 = 15;
const F_GETOWN_EX: i32 = 16;
const F_GETOWNER_UIDS: i32 = 17;
const F_OWNER_TID: i32 = 0;
const F_OWNER_PID: i32 = 1;
const F_OWNER_PGRP: i32 = 2;

/// `struct f_owner_ex`.
#[repr(C)]
#[derive(Default)]
struct OwnerEx {
    kind: i32,
    pid: i32,
}

fn kind_name(kind: OwnerKind) -> &'static str {
    match kind {
        OwnerKind::Thread => "thread",
        OwnerKind::Process => "process",
        OwnerKind::ProcessGroup => "process group",
    }
}

/// Reads the owners of one process's descriptions (dump side).
pub struct OwnerReader {
    pid: i32,
    pidfd: Option<OwnedFd>,
}

impl OwnerReader {
    pub fn new(pid: i32) -> OwnerReader {
        OwnerReader { pid, pidfd: None }
    }

    /// The owner and signal of the description fd `fd` of the process has, `None` when
    /// neither is set. An O_PATH descriptor has none (and cannot be duplicated).
    pub fn read(&mut self, fd: RawFd, flags: u32) -> Result<Option<FileOwner>, String> {
        if flags & libc::O_PATH as u32 != 0 {
            return Ok(None);
        }
        let pidfd = match &self.pidfd {
            Some(p) => p,
            None => {
                let p = sys::pidfd_open(self.pid).map_err(|e| {
                    format!("a file whose owner crest cannot read (pidfd_open: {e})")
                })?;
                self.pidfd.insert(p)
            }
        };
        let copy = sys::pidfd_getfd(pidfd, fd)
            .map_err(|e| format!("a file whose owner crest cannot read (pidfd_getfd: {e})"))?;
        read_owner(&copy)
    }
}

/// The owner and signal of the description `fd` refers to.
fn read_owner(fd: &OwnedFd) -> Result<Option<FileOwner>, String> {
    let mut ex = OwnerEx::default();
    // SAFETY: F_GETOWN_EX writes one struct f_owner_ex to the pointer we pass.
    if unsafe { libc::fcntl(fd.as_raw_fd(), F_GETOWN_EX, &mut ex as *mut OwnerEx) } < 0 {
        return Err(format!(
            "a file whose owner crest cannot read (fcntl F_GETOWN_EX: {})",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: F_GETSIG takes no argument.
    let signal = unsafe { libc::fcntl(fd.as_raw_fd(), F_GETSIG) };
    if signal < 0 {
        return Err(format!(
            "a file whose owner signal crest cannot read (fcntl F_GETSIG: {})",
            std::io::Error::last_os_error()
        ));
    }
    if ex.pid == 0 && signal == 0 {
        return Ok(None);
    }
    let kind = match ex.kind {
        F_OWNER_TID => OwnerKind::Thread,
        F_OWNER_PID => OwnerKind::Process,
        F_OWNER_PGRP => OwnerKind::ProcessGroup,
        other => return Err(format!("a file with an owner of unknown type {other}")),
    };
    let (uid, euid) = if ex.pid == 0 {
        (0, 0)
    } else {
        let mut uids = [0u32; 2];
        // SAFETY: F_GETOWNER_UIDS writes two uid_t values to the pointer we pass.
        if unsafe { libc::fcntl(fd.as_raw_fd(), F_GETOWNER_UIDS, uids.as_mut_ptr()) } < 0 {
            return Err(format!(
                "a file with a signal-driven I/O owner whose uids crest cannot read (fcntl \
                 F_GETOWNER_UIDS: {}; it needs a kernel built with CONFIG_CHECKPOINT_RESTORE)",
                std::io::Error::last_os_error()
            ));
        }
        (uids[0], uids[1])
    };
    Ok(Some(FileOwner {
        kind,
        id: ex.pid,
        signal,
        uid,
        euid,
    }))
}

/// The fds of a process (`fds`, `open_files`) whose owner is not a thread (`tids`) or process
/// group (`pgids`) of the dumped tree, with what to say about each (one fd per description).
pub fn foreign_owners(
    fds: &[Fd],
    open_files: &[OpenFileDescription],
    tids: &HashSet<i32>,
    pgids: &HashSet<i32>,
) -> Vec<(i32, String)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for fd in fds {
        let Some(o) = open_files[fd.description as usize].owner else {
            continue;
        };
        if o.id == 0 || !seen.insert(fd.description) {
            continue;
        }
        let inside = match o.kind {
            OwnerKind::Thread | OwnerKind::Process => tids.contains(&o.id),
            OwnerKind::ProcessGroup => pgids.contains(&o.id),
        };
        if !inside {
            out.push((
                fd.fd,
                format!(
                    "a file whose signal-driven I/O owner (fcntl F_SETOWN) is {} {}, outside \
                     the dumped tree, so a restored tree could not signal it",
                    kind_name(o.kind),
                    o.id
                ),
            ));
        }
    }
    out
}

/// Arms O_ASYNC on the fds of `p` whose description has it (in the restored task, after its
/// fds are in place): off, then on, so the kernel registers the description with this fd
/// number.
pub fn arm_async_in_task(p: &ProcessImage) -> Result<(), String> {
    let mut done = HashSet::new();
    for fd in &p.fds {
        let d = &p.open_files[fd.description as usize];
        if d.flags & libc::O_ASYNC as u32 == 0 || !done.insert(fd.description) {
            continue;
        }
        // SAFETY: F_GETFL on an fd this task just installed.
        let now = unsafe { libc::fcntl(fd.fd, libc::F_GETFL) };
        for flags in [now & !libc::O_ASYNC, now | libc::O_ASYNC] {
            // SAFETY: F_SETFL on an fd of this task changes only its status flags.
            if now < 0 || unsafe { libc::fcntl(fd.fd, libc::F_SETFL, flags) } < 0 {
                return Err(format!(
                    "cannot turn on signal-driven I/O (O_ASYNC) on fd {}: {}",
                    fd.fd,
                    std::io::Error::last_os_error()
                ));
            }
        }
    }
    Ok(())
}

/// crest's copies of the descriptions of the tree that have an owner or signal, kept until
/// every owner exists.
pub struct Owners {
    pending: Vec<(OwnedFd, FileOwner, String)>,
}

impl Owners {
    /// Duplicates the descriptions with an owner (once per tree-wide description) from each
    /// process's opened descriptors (`opened[i]` are `processes[i]`'s, indexed like its
    /// `open_files`).
    pub fn keep(processes: &[ProcessImage], opened: &[&[OwnedFd]]) -> Result<Owners, String> {
        let mut by_id: HashMap<u32, ()> = HashMap::new();
        let mut pending = Vec::new();
        for (p, descs) in processes.iter().zip(opened) {
            for (i, d) in p.open_files.iter().enumerate() {
                let Some(owner) = d.owner else { continue };
                if by_id.insert(d.id, ()).is_some() {
                    continue;
                }
                let fd = p.fds.iter().find(|f| f.description as usize == i);
                let what = format!("process {}: fd {}", p.pid, fd.map_or(-1, |f| f.fd));
                let copy = descs[i]
                    .try_clone()
                    .map_err(|e| format!("{what}: cannot duplicate the descriptor: {e}"))?;
                pending.push((copy, owner, what));
            }
        }
        Ok(Owners { pending })
    }

    /// Sets every kept description's signal and owner (each owner exists now), then closes
    /// crest's copies.
    pub fn apply(self) -> Result<(), String> {
        for (fd, owner, what) in &self.pending {
            // SAFETY: F_SETSIG with a signal number on a descriptor we own.
            if unsafe { libc::fcntl(fd.as_raw_fd(), F_SETSIG, owner.signal) } < 0 {
                return Err(format!(
                    "{what}: cannot set its signal {} (fcntl F_SETSIG): {}",
                    owner.signal,
                    std::io::Error::last_os_error()
                ));
            }
            if owner.id != 0 {
                set_owner_as(fd, owner).map_err(|e| {
                    format!(
                        "{what}: cannot make {} {} its owner (fcntl F_SETOWN_EX, as uid {} \
                         euid {}): {e}",
                        kind_name(owner.kind),
                        owner.id,
                        owner.uid,
                        owner.euid
                    )
                })?;
            }
        }
        Ok(())
    }
}

/// F_SETOWN_EX on `fd` from a thread that holds the owner's recorded real and effective uids
/// (the kernel records the caller's): a raw setresuid changes this thread's credentials only,
/// but a change of euid also resets the whole process's dumpable flag, which is put back.
fn set_owner_as(fd: &OwnedFd, owner: &FileOwner) -> Result<(), std::io::Error> {
    // SAFETY: PR_GET_DUMPABLE takes no argument.
    let dumpable = unsafe { libc::prctl(libc::PR_GET_DUMPABLE) };
    let set = set_owner_in_thread(fd, owner);
    // SAFETY: PR_GET_DUMPABLE takes no argument.
    if dumpable >= 0 && unsafe { libc::prctl(libc::PR_GET_DUMPABLE) } != dumpable {
        // SAFETY: as above.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, dumpable as libc::c_ulong) };
    }
    set
}

fn set_owner_in_thread(fd: &OwnedFd, owner: &FileOwner) -> Result<(), std::io::Error> {
    let raw = fd.as_raw_fd();
    let owner = *owner;
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: geteuid/getuid cannot fail.
            let (my_uid, my_euid) = unsafe { (libc::getuid(), libc::geteuid()) };
            if (owner.uid, owner.euid) != (my_uid, my_euid) {
                // SAFETY: the raw syscall (not glibc's setresuid, which changes every thread)
                // changes the credentials of this short-lived thread only.
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_setresuid,
                        owner.uid as libc::c_long,
                        owner.euid as libc::c_long,
                        -1 as libc::c_long,
                    )
                };
                if r < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            let ex = OwnerEx {
                kind: match owner.kind {
                    OwnerKind::Thread => F_OWNER_TID,
                    OwnerKind::Process => F_OWNER_PID,
                    OwnerKind::ProcessGroup => F_OWNER_PGRP,
                },
                pid: owner.id,
            };
            // SAFETY: F_SETOWN_EX reads one struct f_owner_ex from the pointer we pass; `raw`
            // stays open (the caller holds it) until this scoped thread ends.
            if unsafe { libc::fcntl(raw, F_SETOWN_EX, &ex as *const OwnerEx) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the helper thread panicked")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two new descriptors into the array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both are fresh descriptors nothing else owns.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[test]
    fn a_fresh_pipe_has_no_owner() {
        let (r, _w) = pipe();
        assert_eq!(read_owner(&r).unwrap(), None);
    }

    /// With crest's own uids (another uid would make the whole test process non-dumpable for a
    /// moment, and children other tests fork meanwhile too; zdtm file_fown, run as another
    /// uid, checks that path).
    #[test]
    fn an_owner_and_signal_read_back_as_set() {
        let (r, _w) = pipe();
        // SAFETY: getpid, getuid and geteuid cannot fail.
        let (me, uid, euid) = unsafe { (libc::getpid(), libc::getuid(), libc::geteuid()) };
        let owner = FileOwner {
            kind: OwnerKind::Process,
            id: me,
            signal: libc::SIGRTMIN() + 2,
            uid,
            euid,
        };
        let owners = Owners {
            pending: vec![(r.try_clone().unwrap(), owner, "test".into())],
        };
        owners.apply().unwrap();
        assert_eq!(read_owner(&r).unwrap(), Some(owner));
    }

    #[test]
    fn owners_outside_the_tree_are_named() {
        let owner = |kind, id| {
            Some(FileOwner {
                kind,
                id,
                signal: 0,
                uid: 0,
                euid: 0,
            })
        };
        let ofd = |owner| OpenFileDescription {
            id: 0,
            file: 0,
            flags: 0,
            pos: 0,
            locks: vec![],
            owner,
        };
        let open_files = vec![
            ofd(owner(OwnerKind::Process, 10)),
            ofd(owner(OwnerKind::ProcessGroup, 99)),
            ofd(owner(OwnerKind::Thread, 77)),
            ofd(None),
        ];
        let fds: Vec<Fd> = (0..4)
            .map(|i| Fd {
                fd: i as i32 + 3,
                description: i,
                cloexec: false,
            })
            .collect();
        let tids = HashSet::from([10, 11]);
        let pgids = HashSet::from([10]);
        let found = foreign_owners(&fds, &open_files, &tids, &pgids);
        let fds: Vec<i32> = found.iter().map(|(fd, _)| *fd).collect();
        assert_eq!(fds, vec![4, 5]);
        assert!(found[0].1.contains("process group 99"), "{}", found[0].1);
        assert!(found[1].1.contains("thread 77"), "{}", found[1].1);
    }
}
