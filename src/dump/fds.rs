//! The fd table, the cwd and the exe.
//!
//! Regular files, directories and character devices are recorded by path and checked by
//! identity; AF_UNIX sockets are recorded for a restore to recreate ([`super::sockets`]),
//! pipes with their buffered bytes or as shared with another process ([`super::pipes`]). Fds that share one open file description (dup, inheritance) must come back
//! sharing it — same offset, same O_APPEND — so they are grouped: candidates have the same
//! (dev, ino), and kcmp(KCMP_FILE) tells whether two of them are one description. File locks
//! come from the same fdinfo files ([`crate::files::locks`]).

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::files::locks;
use crate::images::{Fd, FileIdentity, FileKind, MappingLock, OpenFileDescription, PosixLock, Vma};
use crate::proc::{FdTarget, OpenFd, Proc};
use crate::sys;

use super::files::{same_inode, FileTable};
use super::pipes;
use super::problems::Problems;
use super::sockets::Sockets;
use super::tty;
use super::DumpError;

/// O_CLOEXEC as fdinfo shows it (the kernel adds it to `flags:` for an fd with FD_CLOEXEC).
const O_CLOEXEC: u32 = libc::O_CLOEXEC as u32;

/// The process's open file descriptions and fds.
#[derive(Debug, Default)]
pub struct FdTable {
    pub open_files: Vec<OpenFileDescription>,
    pub fds: Vec<Fd>,
    /// The process's POSIX record locks (flock and OFD locks are in `open_files`).
    pub posix_locks: Vec<PosixLock>,
    /// flocks held only through mappings of `vmas`.
    pub mapping_locks: Vec<MappingLock>,
    /// What the dump's report says about these fds (state left behind on purpose).
    pub notes: Vec<String>,
    /// Files that messages queued in the process's UNIX sockets carry (SCM_RIGHTS), open in
    /// crest until the dump ends ([`super::scm`]): crest's fd -> the description it is.
    pub carried: HashMap<i32, u32>,
    /// The descriptions that only such a queue holds (no fd of the process), each with one of
    /// crest's fds on it.
    pub in_flight: Vec<(u32, i32)>,
    /// crest's fds of `carried`, kept open.
    pub carried_fds: Vec<std::os::fd::OwnedFd>,
}

use crate::files::mqueue::MQUEUE_MAGIC;

/// statfs `f_type` of procfs (linux/magic.h).
const PROC_SUPER_MAGIC: i64 = 0x9fa0;

fn refuse(pid: i32, fd: i32, what: String) -> DumpError {
    DumpError::UnsupportedFd { pid, fd, what }
}

/// Reads every fd of the stopped process (`vmas`, already collected, account for locks held
/// through mappings). `shell_fds` are the fds that the terminal survey ([`super::tty`])
/// accepted as the shell's terminal; any other terminal is refused. Every fd crest cannot dump
/// is named, all of them in one refusal.
pub fn collect(
    proc: &Proc,
    files: &mut FileTable,
    vmas: &[Vma],
    shell_fds: &[i32],
) -> Result<FdTable, DumpError> {
    let mut walk = FdWalk {
        proc,
        shell_fds,
        tty_drivers: None,
        table: FdTable::default(),
        by_inode: HashMap::new(),
        sockets: Sockets::new(proc.pid()),
        lock_collector: locks::Collector::default(),
        owners: crate::files::fown::OwnerReader::new(proc.pid()),
    };
    let mut problems = Problems::new();
    for entry in proc.fds()? {
        let added = walk.add_fd(&entry, files);
        problems.take(added)?;
    }
    problems.finish()?;
    // Whether each pipe is whole in the tree is decided once every process is collected
    // (shared.rs); until then it is recorded as external.
    let carried = walk.sockets.take_passed();
    let mut table = walk.table;
    (table.posix_locks, table.mapping_locks) = walk.lock_collector.finish(proc, vmas)?;
    table.notes = walk.sockets.notes;
    super::scm::add_carried(proc.pid(), &mut table, files, carried)?;
    Ok(table)
}

/// A walk over some of crest's own fds: the files that messages queued in UNIX sockets carry,
/// recorded like any fd (their descriptions grouped with kcmp, with crest's fd numbers).
pub(super) struct OwnWalk<'a>(FdWalk<'a>);

impl<'a> OwnWalk<'a> {
    /// `own`: crest's own process.
    pub fn new(own: &'a Proc) -> OwnWalk<'a> {
        OwnWalk(FdWalk {
            proc: own,
            shell_fds: &[],
            tty_drivers: None,
            table: FdTable::default(),
            by_inode: HashMap::new(),
            sockets: Sockets::new(own.pid()),
            lock_collector: locks::Collector::default(),
            owners: crate::files::fown::OwnerReader::new(own.pid()),
        })
    }

    /// Records crest's fds `fds` into `files`; returns the files that the queues of sockets
    /// among them carry in turn (open in crest), and crest's fd of each refusal.
    pub fn add(
        &mut self,
        fds: &[i32],
        files: &mut FileTable,
    ) -> Result<Vec<std::os::fd::OwnedFd>, (i32, DumpError)> {
        let entries = self.0.proc.fds().map_err(|e| (-1, e.into()))?;
        for fd in fds {
            let entry = entries.iter().find(|e| e.fd == *fd).ok_or_else(|| {
                (
                    *fd,
                    DumpError::UnsupportedFd {
                        pid: self.0.proc.pid(),
                        fd: *fd,
                        what: "not open in crest any more (a bug in crest)".into(),
                    },
                )
            })?;
            if matches!(entry.target, FdTarget::Socket(_)) {
                // SAFETY: `fd` is one of crest's own fds, which the caller keeps open for the
                // whole walk; it is only borrowed for this check.
                let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(*fd) };
                // A TCP connection would be put in repair mode on crest's account: refused
                // before that (see super::scm::unsupported).
                if crate::net::tcp_dump::is_tcp(borrowed) {
                    return Err((
                        *fd,
                        DumpError::UnsupportedFd {
                            pid: self.0.proc.pid(),
                            fd: *fd,
                            what: "a TCP socket".into(),
                        },
                    ));
                }
            }
            self.0.add_fd(entry, files).map_err(|e| (*fd, e))?;
        }
        Ok(self.0.sockets.take_passed())
    }

    /// What the walk recorded: descriptions, and crest's fds on them.
    pub fn into_table(self) -> FdTable {
        self.0.table
    }
}

/// The state of one pass over a process's fds.
struct FdWalk<'a> {
    proc: &'a Proc,
    shell_fds: &'a [i32],
    tty_drivers: Option<Vec<crate::proc::TtyDriver>>,
    table: FdTable,
    /// (dev, ino) -> descriptions of that inode seen so far, with one fd holding each.
    by_inode: HashMap<(u64, u64), Vec<(u32, i32)>>,
    sockets: Sockets,
    lock_collector: locks::Collector,
    owners: crate::files::fown::OwnerReader,
}

impl FdWalk<'_> {
    /// Records one fd (`entry`), grouping it with the fds of the same description.
    fn add_fd(&mut self, entry: &OpenFd, files: &mut FileTable) -> Result<(), DumpError> {
        let proc = self.proc;
        let pid = proc.pid();
        let fd = entry.fd;
        let path = match &entry.target {
            FdTarget::Path {
                path,
                deleted: false,
            } => Some(path.clone()),
            FdTarget::Path {
                path,
                deleted: true,
            } => return self.add_deleted(entry, path, files),
            FdTarget::Socket(_) | FdTarget::Pipe(_) => None,
            FdTarget::AnonInode(kind)
                if crate::events::handles(kind)
                    || matches!(kind.as_str(), "[eventpoll]" | "inotify" | "[pidfd]") =>
            {
                None
            }
            FdTarget::AnonInode(kind) => return Err(refuse(pid, fd, crate::events::refusal(kind))),
            FdTarget::Memfd(_) => None,
            FdTarget::Namespace { ns, ino } => return self.add_namespace(entry, ns, *ino, files),
            FdTarget::Other(link) => {
                return Err(refuse(
                    pid,
                    fd,
                    format!("of a kind crest cannot restore ({link})"),
                ))
            }
        };
        let md = proc.stat_link(&format!("fd/{fd}"))?;
        let terminal = match &path {
            Some(_) if md.file_type().is_char_device() => {
                let drivers = self
                    .tty_drivers
                    .get_or_insert_with(|| crate::proc::tty_drivers().unwrap_or_default());
                match tty::classify(drivers, md.rdev()) {
                    // The survey accepted it as a device of the machine unless it is the
                    // shell's terminal (`--shell-job`).
                    Some(kind) if kind.reopened_by_path() => self.shell_fds.contains(&fd),
                    Some(_) => true,
                    None => false,
                }
            }
            _ => false,
        };
        let idx = match path {
            // Never reopened by path: the shell's terminal becomes the restoring crest's.
            Some(path) if terminal => {
                if !self.shell_fds.contains(&fd) {
                    // The survey of the frozen tree refuses these first, with the reason.
                    return Err(DumpError::Terminal {
                        pid,
                        what: format!(
                            "fd {fd} is the terminal {} ({}), which cannot be restored",
                            path.display(),
                            tty::numbers(md.rdev())
                        ),
                    });
                }
                files.add_identity(md.dev(), md.ino(), || {
                    Ok::<_, DumpError>(FileIdentity {
                        path: path.to_string_lossy().into_owned(),
                        kind: FileKind::ShellTerminal { rdev: md.rdev() },
                        dev: md.dev(),
                        ino: md.ino(),
                        size: 0,
                        mtime_sec: 0,
                        mtime_nsec: 0,
                        mode: md.mode(),
                    })
                })?
            }
            // mq_open(3): a queue, captured with its attributes and messages.
            Some(path) if proc.link_fs_type(&format!("fd/{fd}"))? == MQUEUE_MAGIC => {
                return self.add_mqueue(entry, &path, false, &md, files)
            }
            Some(path) if md.file_type().is_fifo() => super::fifos::add(&path, &md, files)
                .map_err(|why| refuse(pid, fd, format!("the FIFO {}: {why}", path.display())))?,
            Some(path) => add_checked(&path, &md, files)
                .map_err(|why| refuse(pid, fd, format!("{}: {why}", path.display())))?,
            // Shared by dup'ed fds like any file: one entry per pipe inode; which end a
            // description is, is its access mode.
            None if matches!(entry.target, FdTarget::Pipe(_)) => {
                files.add_identity(md.dev(), md.ino(), || {
                    Ok::<_, DumpError>(pipes::identity(&md))
                })?
            }
            // Its own entry: every event fd has the same anonymous inode.
            None if matches!(&entry.target, FdTarget::AnonInode(_)) => {
                let FdTarget::AnonInode(kind) = &entry.target else {
                    unreachable!("matched above")
                };
                let info = proc.fdinfo(fd)?;
                match kind.as_str() {
                    "[eventpoll]" => {
                        let ident = crate::events::epoll::identity(&info.epoll, md.dev(), md.ino());
                        return self.add_description(entry, files.push(ident), &md, files);
                    }
                    "inotify" => {
                        let ident = crate::events::inotify::identity(
                            proc,
                            fd,
                            &info.inotify,
                            md.dev(),
                            md.ino(),
                        )
                        .map_err(|why| refuse(pid, fd, why))?;
                        return self.add_description(entry, files.push(ident), &md, files);
                    }
                    "[pidfd]" => {
                        let ident = crate::events::pidfd::identity(
                            info.pidfd_pid,
                            info.flags,
                            md.dev(),
                            md.ino(),
                        )
                        .map_err(|why| refuse(pid, fd, why))?;
                        return self.add_description(entry, files.push(ident), &md, files);
                    }
                    _ => {}
                }
                let event = info.event.ok_or_else(|| {
                    refuse(
                        pid,
                        fd,
                        format!("an {kind} whose state fdinfo does not show"),
                    )
                })?;
                files.push(crate::events::identity(kind, &event, md.dev(), md.ino()))
            }
            // One entry per memfd inode, whatever fds and mappings lead to it.
            None if matches!(&entry.target, FdTarget::Memfd(_)) => {
                let FdTarget::Memfd(shown) = &entry.target else {
                    unreachable!("matched above")
                };
                let name = super::memfd::name_from(shown);
                files.add_identity(md.dev(), md.ino(), || {
                    let file = proc.reopen_fd(fd)?;
                    super::memfd::identity(&file, &name).map_err(|why| refuse(pid, fd, why))
                })?
            }
            // Shared by dup'ed fds like any file: one entry per socket inode.
            None => {
                let sockets = &mut self.sockets;
                files.add_identity(md.dev(), md.ino(), || sockets.record(fd, &md))?
            }
        };
        self.add_description(entry, idx, &md, files)
    }

    /// Records fd `entry` on the file of namespace `ns` (inode `ino`): kept when it is crest's
    /// own namespace of that type (the one the process is in and is restored into).
    fn add_namespace(
        &mut self,
        entry: &OpenFd,
        ns: &str,
        ino: u64,
        files: &mut FileTable,
    ) -> Result<(), DumpError> {
        let (pid, fd) = (self.proc.pid(), entry.fd);
        if crate::proc::own_namespace(ns) != Some(ino) {
            return Err(refuse(
                pid,
                fd,
                format!(
                    "the file of a {ns} namespace ({ns}:[{ino}]) other than the process's own; \
                     crest restores only files of the namespaces it restores the process into"
                ),
            ));
        }
        let md = self.proc.stat_link(&format!("fd/{fd}"))?;
        let idx = files.add_identity(md.dev(), md.ino(), || {
            Ok::<_, DumpError>(crate::files::object_identity(
                format!("/proc/self/ns/{ns}"),
                FileKind::Namespace { ns: ns.to_string() },
                md.dev(),
                md.ino(),
            ))
        })?;
        self.add_description(entry, idx, &md, files)
    }

    /// Records fd `entry` on a file that was deleted (`path` is what the fd's link shows,
    /// without " (deleted)"): stored and recreated as an unlinked file, or reopened through
    /// another link that survives ([`crate::files::ghost`]).
    fn add_deleted(
        &mut self,
        entry: &OpenFd,
        path: &Path,
        files: &mut FileTable,
    ) -> Result<(), DumpError> {
        let (proc, fd) = (self.proc, entry.fd);
        let pid = proc.pid();
        let md = proc.stat_link(&format!("fd/{fd}"))?;
        let fs_type = proc.link_fs_type(&format!("fd/{fd}"))?;
        if fs_type == MQUEUE_MAGIC {
            return self.add_mqueue(entry, path, true, &md, files);
        }
        if fs_type == PROC_SUPER_MAGIC {
            return Err(refuse(
                pid,
                fd,
                format!(
                    "{} (deleted), a /proc file of a process that has ended, which crest \
                     cannot open again",
                    path.display()
                ),
            ));
        }
        if md.file_type().is_symlink() && md.nlink() == 0 {
            let ident =
                crate::files::deleted_symlink::identity(pid, fd, path, &md).map_err(|why| {
                    refuse(
                        pid,
                        fd,
                        format!("the deleted symbolic link {} {why}", path.display()),
                    )
                })?;
            let idx = files.add_identity(md.dev(), md.ino(), || Ok::<_, DumpError>(ident))?;
            return self.add_description(entry, idx, &md, files);
        }
        if md.file_type().is_char_device() && md.nlink() == 0 {
            let ident = crate::files::devnode::identity(path, &md).map_err(|why| {
                refuse(
                    pid,
                    fd,
                    format!("the deleted file {} {why}", path.display()),
                )
            })?;
            let idx = files.add_identity(md.dev(), md.ino(), || Ok::<_, DumpError>(ident))?;
            return self.add_description(entry, idx, &md, files);
        }
        if md.file_type().is_fifo() && md.nlink() == 0 {
            let idx = super::fifos::add_deleted(path, &md, files).map_err(|why| {
                refuse(
                    pid,
                    fd,
                    format!("the deleted FIFO {}: {why}", path.display()),
                )
            })?;
            return self.add_description(entry, idx, &md, files);
        }
        let limit = files.ghost_limit();
        let found = crate::files::ghost::classify(&md, path, limit, || {
            proc.reopen_fd_readonly(fd)
                .map_err(|e| std::io::Error::other(e.to_string()))
        })
        .map_err(|why| refuse(pid, fd, why))?;
        let idx = match found {
            crate::files::ghost::Found::Linked(other) => add_checked(&other, &md, files)
                .map_err(|why| refuse(pid, fd, format!("{}: {why}", other.display())))?,
            crate::files::ghost::Found::Ghost(ident) => {
                files.add_identity(md.dev(), md.ino(), || Ok::<_, DumpError>(*ident))?
            }
        };
        self.add_description(entry, idx, &md, files)
    }

    /// Records fd `entry` on a POSIX message queue shown as `path` (`/NAME`), `unlinked` or
    /// not: one entry per queue inode, captured once ([`crate::files::mqueue`]).
    fn add_mqueue(
        &mut self,
        entry: &OpenFd,
        path: &Path,
        unlinked: bool,
        md: &std::fs::Metadata,
        files: &mut FileTable,
    ) -> Result<(), DumpError> {
        let (proc, fd) = (self.proc, entry.fd);
        let pid = proc.pid();
        let shown = path.display().to_string();
        let idx = files.add_identity(md.dev(), md.ino(), || {
            let queue = proc.reopen_fd(fd)?;
            crate::files::mqueue::identity(queue, &shown, unlinked)
                .map_err(|why| refuse(pid, fd, format!("the POSIX message queue {shown}: {why}")))
        })?;
        self.add_description(entry, idx, md, files)
    }

    /// Records fd `entry`, whose file is `idx` of `files` (`md`: its fstat), grouping it with
    /// the fds of the same description.
    fn add_description(
        &mut self,
        entry: &OpenFd,
        idx: u32,
        md: &std::fs::Metadata,
        files: &mut FileTable,
    ) -> Result<(), DumpError> {
        let pid = self.proc.pid();
        let fd = entry.fd;
        let info = self.proc.fdinfo(fd)?;
        let cloexec = info.flags & O_CLOEXEC != 0;
        let shown = match &entry.target {
            FdTarget::Path { path, .. } => path.display().to_string(),
            FdTarget::Socket(ino) => format!("socket:[{ino}]"),
            FdTarget::Pipe(ino) => format!("pipe:[{ino}]"),
            other => format!("{other:?}"),
        };
        let held = self
            .lock_collector
            .fd(pid, fd, &shown, &files.get(idx).kind, &info.locks)?;
        let key = (md.dev(), md.ino());
        let mut description = None;
        for &(desc, other_fd) in self.by_inode.get(&key).into_iter().flatten() {
            let same =
                sys::kcmp_same_file(pid, pid, other_fd, fd).map_err(|errno| DumpError::Kcmp {
                    pid,
                    fd1: other_fd,
                    fd2: fd,
                    errno,
                })?;
            if same {
                description = Some(desc);
                break;
            }
        }
        let description = match description {
            Some(d) => d,
            None => {
                let d = self.table.open_files.len() as u32;
                let owner = match &entry.target {
                    FdTarget::AnonInode(kind) if kind == "[pidfd]" => None,
                    _ => self
                        .owners
                        .read(fd, info.flags)
                        .map_err(|what| refuse(pid, fd, what))?,
                };
                self.table.open_files.push(OpenFileDescription {
                    // Tree-wide ids are given once every process is collected (shared.rs).
                    id: 0,
                    file: idx,
                    flags: info.flags & !O_CLOEXEC,
                    pos: info.pos,
                    locks: held,
                    owner,
                });
                self.by_inode.entry(key).or_default().push((d, fd));
                d
            }
        };
        self.table.fds.push(Fd {
            fd,
            description,
            cloexec,
        });
        Ok(())
    }
}

impl FdTable {
    /// One fd of the process that uses description `d`.
    pub fn holder(&self, d: u32) -> i32 {
        self.fds
            .iter()
            .find(|f| f.description == d)
            .map(|f| f.fd)
            .expect("every description has an fd")
    }

    /// A process and fd that hold description `d` of process `pid`: one of its fds, or for a
    /// description only a socket queue holds, crest's fd on it.
    pub fn holder_of(&self, pid: i32, d: u32) -> (i32, i32) {
        if let Some(f) = self.fds.iter().find(|f| f.description == d) {
            return (pid, f.fd);
        }
        let fd = self
            .in_flight
            .iter()
            .find(|(desc, _)| *desc == d)
            .map(|(_, fd)| *fd)
            .expect("every description has an fd, or crest holds it");
        (std::process::id() as i32, fd)
    }
}

/// Adds a file that a restore will reopen by `path`, after checking that `path` still names
/// the inode the process has open (`md`).
fn add_checked(path: &Path, md: &std::fs::Metadata, files: &mut FileTable) -> Result<u32, String> {
    // An O_PATH | O_NOFOLLOW descriptor of a symbolic link holds the link itself.
    let by_path = if md.file_type().is_symlink() {
        std::fs::symlink_metadata(path)
    } else {
        std::fs::metadata(path)
    }
    .map_err(|e| format!("cannot stat the path: {e}"))?;
    if !same_inode(md, &by_path) {
        return Err(format!(
            "the path now names another file (inode {} on device {}:{}; the process has inode \
             {} on device {}:{} open), so it cannot be reopened: something was mounted over \
             it, or the file was replaced without being deleted; close the file in the \
             program, or undo the mount, before dumping",
            by_path.ino(),
            libc::major(by_path.dev()),
            libc::minor(by_path.dev()),
            md.ino(),
            libc::major(md.dev()),
            libc::minor(md.dev()),
        ));
    }
    files.add(path, md).map_err(|why| why.to_string())
}

/// Records `/proc/PID/cwd`, which must be a directory still reachable by its path.
pub fn cwd(proc: &Proc, files: &mut FileTable) -> Result<u32, DumpError> {
    let pid = proc.pid();
    let path = proc.cwd()?;
    directory(proc, "cwd", &path, files).map_err(|why| DumpError::Cwd {
        pid,
        path: path.display().to_string(),
        why,
    })
}

/// Records `/proc/PID/root` (the directory a chroot made the process's "/"), which must be a
/// directory of crest's mount namespace still reachable by the path crest sees; None when it
/// is crest's own root. Every other path of the process (fds, mappings, cwd, exe) is read by
/// crest through /proc, hence from crest's root, so only the root itself needs recording.
pub fn root(proc: &Proc, files: &mut FileTable) -> Result<Option<u32>, DumpError> {
    let pid = proc.pid();
    let path = proc.root()?;
    let refuse = |why: String| DumpError::Root {
        pid,
        root: path.display().to_string(),
        why,
    };
    if path == Path::new("/") {
        // The same "/" as crest's, not one that only looks like it from another root.
        let theirs = proc.stat_link("root")?;
        let ours = std::fs::metadata("/").map_err(|e| refuse(format!("cannot stat /: {e}")))?;
        if !same_inode(&theirs, &ours) {
            return Err(refuse(
                "it is not crest's root directory, and its path from crest's root is unknown \
                 (crest runs chrooted, or the process's root is outside crest's root)"
                    .into(),
            ));
        }
        return Ok(None);
    }
    directory(proc, "root", &path, files)
        .map(Some)
        .map_err(refuse)
}

/// Records the directory `/proc/PID/<link>` (`cwd` or `root`), shown as `path`: reopened by
/// its path at restore, or, removed since, made again there and removed again (a ghost).
fn directory(proc: &Proc, link: &str, path: &Path, files: &mut FileTable) -> Result<u32, String> {
    let md = proc.stat_link(link).map_err(|e| e.to_string())?;
    if !md.is_dir() {
        return Err("it is not a directory".into());
    }
    if let Some(removed) = path.to_str().and_then(|p| p.strip_suffix(" (deleted)")) {
        if proc.link_fs_type(link).map_err(|e| e.to_string())? == PROC_SUPER_MAGIC {
            return Err(format!(
                "it is the /proc directory of a process that has ended ({removed}), which \
                 crest cannot make again"
            ));
        }
        // A removed directory: made again at restore, entered, and removed again.
        let removed = Path::new(removed);
        let found = crate::files::ghost::classify(&md, removed, files.ghost_limit(), || {
            unreachable!("a directory is not opened")
        })?;
        let crate::files::ghost::Found::Ghost(ident) = found else {
            return Err("a removed directory that is still linked".into());
        };
        return files.add_identity(md.dev(), md.ino(), || Ok(*ident));
    }
    add_checked(path, &md, files)
}

/// Records `/proc/PID/exe`, which must be a regular file still reachable by its path.
pub fn exe(proc: &Proc, files: &mut FileTable) -> Result<u32, DumpError> {
    let pid = proc.pid();
    let path = proc.exe()?;
    let md = proc.stat_link("exe")?;
    let refuse = |why: String| DumpError::Exe {
        pid,
        path: path.display().to_string(),
        why,
    };
    let shown = path.to_string_lossy();
    if let Some(removed) = shown.strip_suffix(" (deleted)") {
        if !md.is_file() {
            return Err(refuse("it is not a regular file".into()));
        }
        // Stored and recreated like any deleted file (its mappings are the same file), or
        // reopened through another name that still links it.
        let found =
            crate::files::ghost::classify(&md, Path::new(removed), files.ghost_limit(), || {
                std::fs::File::open(format!("/proc/{pid}/exe"))
            })
            .map_err(refuse)?;
        return match found {
            crate::files::ghost::Found::Linked(other) => add_checked(&other, &md, files)
                .map_err(|why| refuse(format!("{}: {why}", other.display()))),
            crate::files::ghost::Found::Ghost(ident) => {
                files.add_identity(md.dev(), md.ino(), || Ok(*ident))
            }
        };
    }
    let idx = add_checked(&path, &md, files).map_err(refuse)?;
    if !md.is_file() {
        return Err(refuse("it is not a regular file".into()));
    }
    Ok(idx)
}
