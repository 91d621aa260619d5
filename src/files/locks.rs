//! File locks: flock(2), POSIX record locks (fcntl F_SETLK, lockf) and open file description
//! locks (F_OFD_SETLK) and leases (F_SETLEASE), collected at dump and taken again at
//! restore. A lease being broken is refused.
//!
//! Who owns what (fcntl(2), flock(2)): flock and OFD locks belong to an open file description,
//! shared by dup and fork and released when its last fd closes. POSIX locks belong to the
//! process, and the kernel drops all of them on a file as soon as the process closes *any* fd
//! of that file.
//!
//! Dump: `/proc/PID/fdinfo/N` lists the flock, OFD locks and leases whose open file description
//! is the fd's, and the process's POSIX locks set through that description (fs/locks.c
//! `show_fd_locks` compares the lock's `struct file` and owner exactly). That names each lock's
//! description without probing it: a probe (flock or F_OFD_SETLK on crest's pidfd_getfd copy)
//! acts on the very description the target owns, and a probe that succeeds converts or
//! releases the target's own lock. POSIX locks are cross-checked with `/proc/locks`: one the
//! process holds that no fd lists refuses the dump. Blocked requests (`->` in `/proc/locks`;
//! fdinfo lists none) are not locks held: the frozen waiter re-issues its call after restore.
//!
//! Restore: the restored process takes its flock and OFD locks on its restored descriptions
//! once its fds are in place ([`take_description_locks`], from `restore/child.rs`), so they are
//! its own (`/proc/locks` shows its pid for a flock). POSIX locks are taken by the restorer blob
//! after it closed the last helper fd ([`restorer_posix_locks`]), since the child closes
//! crest's copies of the descriptions and the restorer closes the mapped files', exe's and page
//! file's fds. All calls are non-blocking: a lock someone took since the dump fails the restore
//! with pid, fd, file and range; crest kills the half-restored task, which releases whatever it
//! took.

use std::collections::HashSet;

use crate::images::{
    DescriptionLock, FileKind, Lease, LeaseBreak, LockRange, LockType, MappingLock,
    OpenFileDescription, PosixLock, ProcessImage, Vma, VmaBacking,
};
use crate::proc::{LockClass, LockLine, Proc, ProcError};
use crate::restore::blob::abi::{Flock, PosixLockArg};

/// Why the locks of a process cannot be dumped.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("process {pid}: fd {fd} ({file}) {why}; crest cannot dump it yet")]
    Unsupported {
        pid: i32,
        fd: i32,
        file: String,
        why: String,
    },
    #[error(
        "process {pid} holds {count} lock(s) that neither its fds nor its mappings show (the \
         first: {first}); crest cannot tell on which file to take them again"
    )]
    Unattributed {
        pid: i32,
        count: usize,
        first: String,
    },
    #[error(transparent)]
    Proc(#[from] ProcError),
}

/// Whether a lock on a file of this kind can be restored: only files reopened by path are.
pub fn lockable(kind: &FileKind) -> bool {
    matches!(
        kind,
        FileKind::Regular
            | FileKind::Directory
            | FileKind::CharDevice { .. }
            | FileKind::ContentInImage
            | FileKind::Ghost(_)
    )
}

fn lock_type(write: bool) -> LockType {
    if write {
        LockType::Write
    } else {
        LockType::Read
    }
}

fn range(l: &LockLine) -> LockRange {
    LockRange {
        start: l.start,
        len: l.end.map_or(0, |end| end - l.start + 1),
    }
}

/// A POSIX lock line as `/proc/locks` and fdinfo both show it.
type PosixKey = (Option<(u32, u32, u64)>, u64, Option<u64>, bool);

fn key(l: &LockLine) -> PosixKey {
    (l.inode, l.start, l.end, l.write)
}

/// Gathers the locks of one process while its fd table is read, fd after fd.
#[derive(Debug, Default)]
pub struct Collector {
    posix: Vec<PosixLock>,
    /// POSIX locks already recorded: every fd of a description lists them.
    seen: HashSet<PosixKey>,
    /// Inodes on which an fd showed a flock.
    flocked: HashSet<Option<(u32, u32, u64)>>,
}

impl Collector {
    /// Sorts what fdinfo lists under fd `fd` (showing `file`, of `kind`): returns the locks of
    /// its open file description and keeps the POSIX locks of the process.
    pub fn fd(
        &mut self,
        pid: i32,
        fd: i32,
        file: &str,
        kind: &FileKind,
        lines: &[LockLine],
    ) -> Result<Vec<DescriptionLock>, LockError> {
        let refuse = |why: String| LockError::Unsupported {
            pid,
            fd,
            file: file.to_string(),
            why,
        };
        if !lines.is_empty() && !lockable(kind) {
            return Err(refuse(
                "holds a lock, and crest restores locks only on files it reopens by path".into(),
            ));
        }
        let mut description = Vec::new();
        for l in lines.iter().filter(|l| !l.blocked) {
            match &l.class {
                LockClass::Posix => {
                    if self.seen.insert(key(l)) {
                        self.posix.push(PosixLock {
                            fd,
                            ty: lock_type(l.write),
                            range: range(l),
                        });
                    }
                }
                LockClass::Ofd => description.push(DescriptionLock::Ofd {
                    ty: lock_type(l.write),
                    range: range(l),
                }),
                LockClass::Flock => {
                    self.flocked.insert(l.inode);
                    description.push(DescriptionLock::Flock(lock_type(l.write)))
                }
                LockClass::Lease { breaking } => description.push(DescriptionLock::Lease(
                    lease(pid, fd, lock_type(l.write), *breaking).map_err(refuse)?,
                )),
                LockClass::Other(what) => {
                    return Err(refuse(format!(
                        "holds a lock of a kind crest does not know ({what})"
                    )))
                }
            }
        }
        Ok(description)
    }

    /// Once every fd has been seen: the POSIX locks of the process, and the flocks it holds
    /// only through mappings of `vmas` (`/proc/locks` names the process for a flock it took;
    /// its maps show the same device and inode). Refuses when `/proc/locks` shows a lock of
    /// the process that neither an fd nor a mapping accounts for. (OFD locks show no pid
    /// there: one whose description only a mapping holds goes unseen.)
    pub fn finish(
        self,
        proc: &Proc,
        vmas: &[Vma],
    ) -> Result<(Vec<PosixLock>, Vec<MappingLock>), LockError> {
        let pid = proc.pid();
        let mut maps = None;
        let mut mapping_locks: Vec<MappingLock> = Vec::new();
        let mut missing = Vec::new();
        for l in crate::proc::all_locks()? {
            if l.blocked || l.pid != pid {
                continue;
            }
            match l.class {
                LockClass::Posix if self.seen.contains(&key(&l)) => {}
                LockClass::Flock if self.flocked.contains(&l.inode) => {}
                // Always on a description, whose fdinfo shows it wherever it is held (the pid
                // is the one that took it, which may have closed its fd since).
                LockClass::Lease { .. } => {}
                // Taken by this process on a description only another process's fd holds
                // now (inherited, then closed here): that holder's fdinfo shows it, and it is
                // that process's state (recorded with its fds when it is in the tree).
                LockClass::Flock if flock_held_elsewhere(&l, pid) => {}
                LockClass::Flock => {
                    if maps.is_none() {
                        maps = Some(proc.maps()?);
                    }
                    let file = maps
                        .iter()
                        .flatten()
                        .filter(|m| Some((m.dev.0 as u32, m.dev.1 as u32, m.inode)) == l.inode)
                        .find_map(|m| {
                            vmas.iter().find_map(|v| match v.backing {
                                VmaBacking::File { file, .. } if v.start == m.start => Some(file),
                                _ => None,
                            })
                        });
                    match file {
                        Some(file) if !mapping_locks.iter().any(|m| m.file == file) => {
                            mapping_locks.push(MappingLock {
                                file,
                                lock: DescriptionLock::Flock(lock_type(l.write)),
                            })
                        }
                        Some(_) => {}
                        None => missing.push(l),
                    }
                }
                _ => missing.push(l),
            }
        }
        if let Some(first) = missing.first() {
            return Err(LockError::Unattributed {
                pid,
                count: missing.len(),
                first: describe_line(first),
            });
        }
        Ok((self.posix, mapping_locks))
    }
}

/// Whether a process other than `pid` has an fd whose description holds the flock `l` (its
/// fdinfo lists it).
fn flock_held_elsewhere(l: &LockLine, pid: i32) -> bool {
    let Some((maj, min, ino)) = l.inode else {
        return false;
    };
    let dev = libc::makedev(maj, min);
    let mut skip = HashSet::from([pid]);
    // Each round finds one more process holding the inode; a few are plenty.
    for _ in 0..64 {
        let Some((holder, fd)) = crate::proc::find_inode_holder(dev, ino, &skip) else {
            return false;
        };
        let shows = Proc::open(holder)
            .and_then(|p| p.fdinfo(fd))
            .map(|info| {
                info.locks.iter().any(|o| {
                    o.class == LockClass::Flock && o.inode == l.inode && o.write == l.write
                })
            })
            .unwrap_or(false);
        if shows {
            return true;
        }
        skip.insert(holder);
    }
    false
}

/// A lock line in words, for a refusal.
fn describe_line(l: &LockLine) -> String {
    let what = match &l.class {
        LockClass::Posix => describe_posix(lock_type(l.write), &range(l)),
        LockClass::Flock => describe(&DescriptionLock::Flock(lock_type(l.write))),
        LockClass::Ofd => describe(&DescriptionLock::Ofd {
            ty: lock_type(l.write),
            range: range(l),
        }),
        LockClass::Lease { .. } => "lease".into(),
        LockClass::Other(what) => what.clone(),
    };
    let (maj, min, ino) = l.inode.unwrap_or_default();
    format!("{what} on device {maj:x}:{min:x} inode {ino}")
}

fn range_text(r: &LockRange) -> String {
    if r.len == 0 {
        format!("bytes {} to the end of the file", r.start)
    } else {
        format!("bytes {}-{}", r.start, r.start + r.len - 1)
    }
}

fn type_text(ty: LockType) -> &'static str {
    match ty {
        LockType::Read => "read",
        LockType::Write => "write",
    }
}

/// "POSIX write lock on bytes 0-99".
pub fn describe_posix(ty: LockType, r: &LockRange) -> String {
    format!("POSIX {} lock on {}", type_text(ty), range_text(r))
}

/// "exclusive flock lock", "OFD read lock on bytes 10-19".
pub fn describe(lock: &DescriptionLock) -> String {
    match lock {
        DescriptionLock::Flock(LockType::Read) => "shared flock lock".into(),
        DescriptionLock::Flock(LockType::Write) => "exclusive flock lock".into(),
        DescriptionLock::Ofd { ty, range } => {
            format!("OFD {} lock on {}", type_text(*ty), range_text(range))
        }
        DescriptionLock::Lease(l) => format!(
            "{} lease{}",
            type_text(l.ty),
            match l.breaking {
                None => "",
                Some(LeaseBreak::ToRead) => " being broken to a read lease",
                Some(LeaseBreak::ToNone) => " being broken",
            }
        ),
    }
}

fn flock_struct(ty: LockType, r: &LockRange) -> Flock {
    Flock {
        l_type: match ty {
            LockType::Read => libc::F_RDLCK as i16,
            LockType::Write => libc::F_WRLCK as i16,
        },
        l_whence: libc::SEEK_SET as i16,
        // validate.rs keeps start and start + len within an off_t.
        l_start: r.start as i64,
        l_len: r.len as i64,
        // F_OFD_SETLK requires 0.
        l_pid: 0,
        ..Flock::default()
    }
}

/// "fd 5 (/data/x): cannot take back its exclusive flock lock", the start of the message
/// about a lock that cannot be taken again at restore (the error names the pid).
pub fn not_taken_back(p: &ProcessImage, fd: i32, what: &str) -> String {
    let file = p
        .fds
        .iter()
        .find(|f| f.fd == fd)
        .and_then(|f| p.open_files.get(f.description as usize))
        .and_then(|d| p.files.get(d.file as usize))
        .map_or("?", |f| f.path.as_str());
    format!("fd {fd} ({file}): cannot take back its {what}")
}

/// Why taking a lock failed with `errno`, in words.
pub fn why_not(errno: i32) -> String {
    match errno {
        libc::EAGAIN | libc::EACCES => "another process holds a conflicting lock (taken since \
                                        the dump); release it and restore again"
            .to_string(),
        e => std::io::Error::from_raw_os_error(e).to_string(),
    }
}

/// Why taking a lease failed with `errno`, in words.
fn why_no_lease(errno: i32) -> String {
    match errno {
        libc::EAGAIN => "the file is open elsewhere in a way the lease excludes (for writing, \
        or at all for a write lease): someone opened it since the dump, or \
        the process also maps it through another open"
            .to_string(),
        e => std::io::Error::from_raw_os_error(e).to_string(),
    }
}

/// fcntl commands for the signal of a description's owner (include/uapi/asm-generic/fcntl.h).
const F_SETSIG: i32 = 10;
const F_GETSIG: i32 = 11;

/// The lease of `pid`'s fd `fd` as fdinfo shows it (`shown`: READ or WRITE, or for one being
/// broken what it is to become), with the description's F_GETSIG; read on crest's copy of the
/// description (pidfd_getfd), which is no new open of the file.
fn lease(pid: i32, fd: i32, shown: LockType, breaking: bool) -> Result<Lease, String> {
    use std::os::fd::AsRawFd;
    let copy = crate::sys::pidfd_open(pid)
        .and_then(|pidfd| crate::sys::pidfd_getfd(&pidfd, fd))
        .map_err(|e| format!("holds a lease crest cannot look into (pidfd_getfd: {e})"))?;
    let raw = copy.as_raw_fd();
    // SAFETY: (whole block) fcntl queries on crest's own copy of the description, no memory.
    let (signal, target, flags) = unsafe {
        (
            libc::fcntl(raw, F_GETSIG),
            libc::fcntl(raw, libc::F_GETLEASE),
            libc::fcntl(raw, libc::F_GETFL),
        )
    };
    if signal < 0 || target < 0 || flags < 0 {
        return Err(format!(
            "holds a lease crest cannot read (fcntl F_GETSIG/F_GETLEASE: {})",
            std::io::Error::last_os_error()
        ));
    }
    if !breaking {
        return Ok(Lease {
            ty: shown,
            breaking: None,
            signal,
        });
    }
    // Being broken, F_GETLEASE says what it becomes. A write lease broken to a read lease was
    // a write lease; one given up may have been either: a read lease needs a description not
    // open for writing, so that is the one taken again on a read-only description (given up
    // at once by the same break either way).
    let (ty, to) = if target == libc::F_RDLCK {
        (LockType::Write, LeaseBreak::ToRead)
    } else if flags & libc::O_ACCMODE == libc::O_RDONLY {
        (LockType::Read, LeaseBreak::ToNone)
    } else {
        (LockType::Write, LeaseBreak::ToNone)
    };
    Ok(Lease {
        ty,
        breaking: Some(to),
        signal,
    })
}

/// Takes lease `l` on `fd` (a description of the restored process's own, once its fds are in
/// place): F_SETLEASE makes the caller the description's owner, so the break signal goes to
/// the restored process; its F_SETSIG is set again. A lease that was being broken is broken
/// again by an open of the file that conflicts with it (non-blocking: it fails with
/// EWOULDBLOCK once the break has begun), and the signal that break sends the process now is
/// taken back out of its pending set (the original break signalled it already). crest's copies
/// of the description are the same description, so they do not count as other opens.
fn take_lease(fd: i32, l: &Lease) -> Result<(), String> {
    let arg = match l.ty {
        LockType::Read => libc::F_RDLCK,
        LockType::Write => libc::F_WRLCK,
    };
    // SAFETY: F_SETLEASE on an fd of ours takes an int argument.
    if unsafe { libc::fcntl(fd, libc::F_SETLEASE, arg) } != 0 {
        return Err(why_no_lease(
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        ));
    }
    // SAFETY: F_SETSIG on an fd of ours takes an int argument.
    if l.signal != 0 && unsafe { libc::fcntl(fd, F_SETSIG, l.signal) } != 0 {
        return Err(format!(
            "fcntl F_SETSIG {} failed: {}",
            l.signal,
            std::io::Error::last_os_error()
        ));
    }
    let Some(to) = l.breaking else {
        return Ok(());
    };
    let mode = match to {
        LeaseBreak::ToRead => libc::O_RDONLY,
        LeaseBreak::ToNone => libc::O_WRONLY,
    };
    let path = std::ffi::CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL");
    // SAFETY: open of a NUL-terminated path.
    let opened = unsafe { libc::open(path.as_ptr(), mode | libc::O_NONBLOCK | libc::O_CLOEXEC) };
    if opened >= 0 {
        // SAFETY: closing the descriptor just opened.
        unsafe { libc::close(opened) };
        return Err("the open that should break it again did not conflict with it".into());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
        return Err(format!("breaking it again (open) failed: {err}"));
    }
    let sig = if l.signal != 0 { l.signal } else { libc::SIGIO };
    // SAFETY: (whole block) a signal set built on the stack, and a zero-timeout sigtimedwait
    // (every signal is blocked in the restored task at this point) that consumes the one
    // signal the break just queued, if it is pending.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        libc::sigtimedwait(&set, std::ptr::null_mut(), &zero);
    }
    Ok(())
}

/// In a tree whose processes share a description (tree-wide ids already given), keeps its
/// lease in the first process only: that one takes it again (a second F_SETLEASE on a lease
/// being broken would change it).
pub fn keep_leases_once<'a>(tables: impl Iterator<Item = &'a mut Vec<OpenFileDescription>>) {
    let mut seen = HashSet::new();
    for table in tables {
        for d in table.iter_mut() {
            if d.locks
                .iter()
                .any(|l| matches!(l, DescriptionLock::Lease(_)))
                && !seen.insert(d.id)
            {
                d.locks.retain(|l| !matches!(l, DescriptionLock::Lease(_)));
            }
        }
    }
}

/// Takes every flock and OFD lock of `p`'s descriptions on the fd that has them. Runs in the
/// restored process once its fds are in place.
pub fn take_description_locks(p: &ProcessImage) -> Result<(), String> {
    for (i, d) in p.open_files.iter().enumerate() {
        let Some(fd) = p.fds.iter().find(|f| f.description as usize == i) else {
            continue;
        };
        for lock in &d.locks {
            let r = match lock {
                DescriptionLock::Flock(ty) => {
                    let op = match ty {
                        LockType::Read => libc::LOCK_SH,
                        LockType::Write => libc::LOCK_EX,
                    };
                    // SAFETY: flock on an fd of ours; no memory is involved.
                    unsafe { libc::flock(fd.fd, op | libc::LOCK_NB) }
                }
                DescriptionLock::Ofd { ty, range } => {
                    let fl = flock_struct(*ty, range);
                    // SAFETY: `fl` is a valid struct flock (abi::Flock has the kernel's layout)
                    // the kernel only reads.
                    unsafe { libc::fcntl(fd.fd, libc::F_OFD_SETLK, &fl as *const Flock) }
                }
                // The restored process takes it, so the lease break signal goes to it
                // (F_SETLEASE makes the caller the description's owner). crest's copies are
                // the same description, so they do not count as other opens of the file.
                DescriptionLock::Lease(l) => match take_lease(fd.fd, l) {
                    Ok(()) => 0,
                    Err(why) => {
                        return Err(format!(
                            "{}: {why}",
                            not_taken_back(p, fd.fd, &describe(lock))
                        ))
                    }
                },
            };
            if r != 0 {
                let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                return Err(format!(
                    "{}: {}",
                    not_taken_back(p, fd.fd, &describe(lock)),
                    why_not(errno)
                ));
            }
        }
    }
    Ok(())
}

/// Takes every flock of `p.mapping_locks` on the descriptor the restore maps its file through
/// (`mapped`, indexed like `p.files`), before the restorer maps and closes it.
pub fn take_mapping_locks(
    p: &ProcessImage,
    mapped: &[Option<std::os::fd::OwnedFd>],
) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    for l in &p.mapping_locks {
        let DescriptionLock::Flock(ty) = l.lock else {
            continue;
        };
        let path = p
            .files
            .get(l.file as usize)
            .map_or("?", |f| f.path.as_str());
        let Some(fd) = mapped.get(l.file as usize).and_then(Option::as_ref) else {
            return Err(format!(
                "the mapping of {path} has a flock but no descriptor"
            ));
        };
        let op = match ty {
            LockType::Read => libc::LOCK_SH,
            LockType::Write => libc::LOCK_EX,
        };
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(fd.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            return Err(format!(
                "the mapping of {path}: cannot take back its {}: {}",
                describe(&l.lock),
                why_not(errno)
            ));
        }
    }
    Ok(())
}

/// The restorer's list of POSIX locks, in the order of `p.posix_locks` (a failure's
/// `Progress::detail` indexes both).
pub fn restorer_posix_locks(p: &ProcessImage) -> Vec<PosixLockArg> {
    p.posix_locks
        .iter()
        .map(|l| PosixLockArg {
            fd: l.fd,
            _pad: 0,
            lock: flock_struct(l.ty, &l.range),
        })
        .collect()
}

/// [`not_taken_back`] for each of `p.posix_locks`, in order.
pub fn posix_subjects(p: &ProcessImage) -> Vec<String> {
    p.posix_locks
        .iter()
        .map(|l| not_taken_back(p, l.fd, &describe_posix(l.ty, &l.range)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proc::parse_lock_line;

    fn lines(text: &[&str]) -> Vec<LockLine> {
        text.iter().map(|l| parse_lock_line(l).unwrap()).collect()
    }

    #[test]
    fn fdinfo_lines_go_to_their_owner() {
        let mut c = Collector::default();
        let got = c
            .fd(
                7,
                3,
                "/f",
                &FileKind::Regular,
                &lines(&[
                    "1: FLOCK  ADVISORY  WRITE 7 08:01:5 0 EOF",
                    "2: OFDLCK ADVISORY  READ  -1 08:01:5 10 19",
                    "3: POSIX  ADVISORY  WRITE 7 08:01:5 100 EOF",
                ]),
            )
            .unwrap();
        assert_eq!(
            got,
            vec![
                DescriptionLock::Flock(LockType::Write),
                DescriptionLock::Ofd {
                    ty: LockType::Read,
                    range: LockRange { start: 10, len: 10 }
                }
            ]
        );
        // A dup of the same description lists the same POSIX lock: recorded once.
        c.fd(
            7,
            4,
            "/f",
            &FileKind::Regular,
            &lines(&["1: POSIX  ADVISORY  WRITE 7 08:01:5 100 EOF"]),
        )
        .unwrap();
        assert_eq!(
            c.posix,
            vec![PosixLock {
                fd: 3,
                ty: LockType::Write,
                range: LockRange { start: 100, len: 0 }
            }]
        );
    }

    /// A lock on a file crest does not reopen by path (a pipe) is refused naming the fd.
    /// (Leases are captured: tests/locks.rs.)
    #[test]
    fn locks_on_other_kinds_are_refused_naming_the_fd() {
        let mut c = Collector::default();
        let kind = FileKind::Pipe(crate::images::Pipe::External);
        let line = "1: FLOCK  ADVISORY  WRITE 7 00:0e:5 0 EOF";
        let err = c
            .fd(7, 9, "/data/x", &kind, &lines(&[line]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("process 7") && err.contains("fd 9") && err.contains("/data/x"),
            "{err}"
        );
        assert!(err.contains("reopens by path"), "{err}");
    }

    /// A POSIX lock no fd listed (the collector saw no fd at all) refuses the dump.
    #[test]
    fn a_posix_lock_no_fd_listed_is_refused() {
        let file = tempfile::tempfile().unwrap();
        let fl = flock_struct(LockType::Write, &LockRange { start: 3, len: 4 });
        // SAFETY: fcntl on a file we own with a valid struct flock.
        let r = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&file), libc::F_SETLK, &fl) };
        assert_eq!(r, 0);
        let pid = std::process::id() as i32;
        let me = Proc::open(pid).unwrap();
        let err = Collector::default().finish(&me, &[]).unwrap_err();
        assert!(
            matches!(err, LockError::Unattributed { pid: p, count, .. } if p == pid && count >= 1),
            "{err}"
        );
        assert!(
            err.to_string().contains("neither its fds nor its mappings"),
            "{err}"
        );
    }

    #[test]
    fn descriptions_are_worded_with_their_range() {
        assert_eq!(
            describe_posix(
                LockType::Read,
                &LockRange {
                    start: 1000,
                    len: 0
                }
            ),
            "POSIX read lock on bytes 1000 to the end of the file"
        );
        assert_eq!(
            describe(&DescriptionLock::Ofd {
                ty: LockType::Write,
                range: LockRange { start: 0, len: 100 }
            }),
            "OFD write lock on bytes 0-99"
        );
        let fl = flock_struct(LockType::Write, &LockRange { start: 5, len: 0 });
        assert_eq!(
            (fl.l_type, fl.l_whence, fl.l_start, fl.l_len),
            (libc::F_WRLCK as i16, 0, 5, 0)
        );
    }

    /// The layout of abi::Flock is libc's struct flock, as the kernel reads it.
    #[test]
    fn flock_layout_matches_libc() {
        assert_eq!(
            std::mem::size_of::<Flock>(),
            std::mem::size_of::<libc::flock>()
        );
        assert_eq!(
            std::mem::offset_of!(Flock, l_start),
            std::mem::offset_of!(libc::flock, l_start)
        );
        assert_eq!(
            std::mem::offset_of!(Flock, l_len),
            std::mem::offset_of!(libc::flock, l_len)
        );
        assert_eq!(
            std::mem::offset_of!(Flock, l_pid),
            std::mem::offset_of!(libc::flock, l_pid)
        );
    }
}
