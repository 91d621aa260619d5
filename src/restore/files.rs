//! Opening, in crest, every file the image maps or has open, and checking that each is still the
//! file that was dumped.
//!
//! Files are opened before the fork so that a missing or changed file is refused while nothing
//! has been touched yet, and so the check runs on the very descriptor the restored process gets
//! (fstat of the open fd: no window for the path to be swapped afterwards). The child inherits
//! these descriptors and moves them to their final numbers. Sockets ([`super::sockets`]) and
//! pipes ([`super::pipes`]) are created or found rather than opened by path.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use std::collections::HashMap;

use crate::images::{FileIdentity, FileKind, ProcessImage, VmaBacking};

use super::shmem::SharedMemory;
use super::RestoreError;

/// What the processes of a tree share, opened once for all of them: open file descriptions by
/// their tree-wide id, and the pipes.
#[derive(Default)]
pub struct TreeFiles {
    descriptions: HashMap<u32, OwnedFd>,
    pipes: super::pipes::Pipes,
    /// Descriptors the caller hands in for files of the image (`--inherit-fd`), by resource.
    inherited: Vec<(String, OwnedFd)>,
    /// The UNIX sockets of the tree, made together.
    pub unix: super::sockets::UnixSockets,
    /// `--tcp-close`: connections are made again closed ([`closed_instead`]).
    pub tcp_close: bool,
    /// TCP connections rebuilt in repair mode, until the tree is about to run.
    pub tcp: crate::net::tcp_restore::Repaired,
    /// Memfds whose own descriptor (the one memfd_create made) a description already took.
    memfd_originals: std::collections::HashSet<u64>,
    /// POSIX message queues, each created once.
    mqueues: super::mqueue::Mqueues,
    /// Removed device nodes and symbolic links made again (O_PATH), by their (dev, ino) at
    /// dump time.
    devnodes: HashMap<(u64, u64), OwnedFd>,
}

/// `--inherit-fd fd[N]:RESOURCE`: crest's own descriptor N takes the place of the file the
/// image names RESOURCE (CRIU's spelling): a path as `crest show` lists it, or `pipe:[INODE]`
/// / `socket:[INODE]` for a pipe or a socket. Every description of that file in the tree gets
/// N's description instead, unchecked: the caller decides what the restored tree writes to (the
/// way to give each of several copies of one image its own output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InheritFd {
    pub fd: RawFd,
    pub resource: String,
}

impl std::str::FromStr for InheritFd {
    type Err = String;

    fn from_str(s: &str) -> Result<InheritFd, String> {
        let bad = || format!("{s:?} is not fd[N]:RESOURCE (e.g. fd[3]:/var/log/app.log)");
        let rest = s.strip_prefix("fd[").ok_or_else(bad)?;
        let (n, resource) = rest.split_once("]:").ok_or_else(bad)?;
        let fd: RawFd = n.parse().map_err(|_| bad())?;
        if fd < 0 || resource.is_empty() {
            return Err(bad());
        }
        Ok(InheritFd {
            fd,
            resource: resource.to_string(),
        })
    }
}

impl TreeFiles {
    /// Takes a duplicate (at `base` or above) of each inherited descriptor, checking it is open.
    pub fn with_inherited(inherit: &[InheritFd], base: RawFd) -> Result<TreeFiles, RestoreError> {
        let mut out = TreeFiles::default();
        for i in inherit {
            // SAFETY: F_DUPFD_CLOEXEC on a descriptor number; EBADF if it is not open.
            let raw = unsafe { libc::fcntl(i.fd, libc::F_DUPFD_CLOEXEC, base) };
            if raw < 0 {
                return Err(RestoreError::Os {
                    what: format!(
                        "--inherit-fd fd[{}]:{}: crest's fd {} is not open",
                        i.fd, i.resource, i.fd
                    ),
                    source: std::io::Error::last_os_error(),
                });
            }
            // SAFETY: raw is a new descriptor we own.
            out.inherited
                .push((i.resource.clone(), unsafe { OwnedFd::from_raw_fd(raw) }));
        }
        Ok(out)
    }

    /// crest's descriptor of the description with tree-wide id `id`, once opened.
    pub fn description(&self, id: u32) -> Option<RawFd> {
        self.descriptions.get(&id).map(|fd| fd.as_raw_fd())
    }

    /// The inherited descriptor standing for `ident`, if the caller gave one.
    fn inherited_for(&self, ident: &FileIdentity) -> Option<&OwnedFd> {
        let names = match ident.kind {
            FileKind::Pipe(_) => vec![format!("pipe:[{}]", ident.ino)],
            FileKind::UnixSocket(_) => vec![format!("socket:[{}]", ident.ino), ident.path.clone()],
            FileKind::Tcp(_) | FileKind::Udp(_) | FileKind::Netlink(_) | FileKind::Packet(_) => {
                vec![format!("socket:[{}]", ident.ino)]
            }
            _ => vec![ident.path.clone()],
        };
        self.inherited
            .iter()
            .find(|(r, _)| names.iter().any(|n| !n.is_empty() && n == r))
            .map(|(_, fd)| fd)
    }
}

/// Descriptors crest opened for one process, all numbered at or above `base`.
pub struct OpenedFiles {
    /// One descriptor per `ProcessImage::open_files` entry, positioned at its recorded offset;
    /// a description shared with other processes of the tree is one description for all.
    pub descriptions: Vec<OwnedFd>,
    /// The shared memory objects the process maps, by object (inode at dump time).
    pub shmem: HashMap<u64, OwnedFd>,
    /// Backing files of file VMAs, indexed like `ProcessImage::files` (None when not mapped).
    pub mapped: Vec<Option<OwnedFd>>,
    /// The executable, for PR_SET_MM_MAP's exe_fd.
    pub exe: OwnedFd,
    /// The working directory.
    pub cwd: OwnedFd,
    /// The root directory, when the process was chrooted.
    pub root: Option<OwnedFd>,
    /// The image's page file.
    pub pages: OwnedFd,
}

/// Lowest descriptor number crest uses for its own files in the restored tasks: above every
/// fd any process of the image has, so moving image fds into place never overwrites one of
/// crest's (every task inherits all of them).
pub fn helper_fd_base(processes: &[ProcessImage]) -> RawFd {
    let highest = processes
        .iter()
        .flat_map(|p| p.fds.iter().map(|f| f.fd))
        .max()
        .unwrap_or(2);
    highest.max(2) + 1
}

/// The fd numbers of process `p` on its description `i`, for messages ("3, 7").
fn fds_of(p: &ProcessImage, i: usize) -> String {
    let fds: Vec<String> = p
        .fds
        .iter()
        .filter(|f| f.description as usize == i)
        .map(|f| f.fd.to_string())
        .collect();
    fds.join(", ")
}

/// A new descriptor (at `base` or above) for the description `fd` already opened.
fn share(fd: &OwnedFd, base: RawFd) -> Result<OwnedFd, RestoreError> {
    let copy = fd.try_clone().map_err(|e| RestoreError::Os {
        what: "duplicating a shared descriptor".into(),
        source: e,
    })?;
    above(copy, base, "a shared descriptor")
}

/// Opens and checks everything `p` needs, moving each descriptor to `base` or above;
/// descriptions and pipes shared with other processes come from `tree`, and shared memory
/// from `shmem`.
pub fn open_all(
    p: &ProcessImage,
    pages_path: &std::path::Path,
    base: RawFd,
    tree: &mut TreeFiles,
    shmem: &SharedMemory,
) -> Result<OpenedFiles, RestoreError> {
    // Everything that is checked comes first, so a changed file is refused before crest
    // writes anything to disk; then files whose content the image holds are recreated and
    // sockets created.
    let mut descriptions: Vec<Option<OwnedFd>> = (0..p.open_files.len()).map(|_| None).collect();
    for (slot, ofd) in descriptions.iter_mut().zip(&p.open_files) {
        if let Some(fd) = open_checked(p, ofd, base, tree, shmem)? {
            *slot = Some(share(fd, base)?);
        }
    }

    let mut mapped: Vec<Option<OwnedFd>> = (0..p.files.len()).map(|_| None).collect();
    let writable = shared_writable_files(p);
    for vma in &p.vmas {
        if let VmaBacking::File { file, .. } = vma.backing {
            let slot = &mut mapped[file as usize];
            let ident = file_at(p, file)?;
            if slot.is_some() || ident.kind == FileKind::ContentInImage {
                continue;
            }
            if let FileKind::Memfd { .. } = ident.kind {
                *slot = Some(share(shmem.memfd(ident.ino)?, base)?);
                continue;
            }
            let mode = if writable.contains(&file) {
                libc::O_RDWR
            } else {
                libc::O_RDONLY
            };
            if let FileKind::Ghost(_) = ident.kind {
                // Opened as the program had it (read-only unless a shared mapping may
                // write), so the mapping's VM_MAYWRITE is as before.
                // O_NOATIME: mapping it must not change the atime just restored.
                let ghost = shmem.ghost(ident.dev, ident.ino)?;
                let proc_path = format!("/proc/self/fd/{}", ghost.as_raw_fd());
                let fd = open_path(&proc_path, mode | libc::O_NOATIME | libc::O_CLOEXEC, base)
                    .or_else(|_| open_path(&proc_path, mode | libc::O_CLOEXEC, base))?;
                *slot = Some(fd);
                continue;
            }
            let fd = open_path(&ident.path, mode | libc::O_CLOEXEC, base)?;
            check_identity(&fd, ident, false, 0)?;
            check_code(p, file, &fd, ident)?;
            *slot = Some(fd);
        }
    }

    let exe_ident = file_at(p, p.exe_file)?;
    let exe = if let FileKind::Ghost(_) = exe_ident.kind {
        // A deleted executable, recreated (and unlinked again) with its content.
        let ghost = shmem.ghost(exe_ident.dev, exe_ident.ino)?;
        open_path(
            &format!("/proc/self/fd/{}", ghost.as_raw_fd()),
            libc::O_RDONLY | libc::O_CLOEXEC,
            base,
        )?
    } else {
        open_path(&exe_ident.path, libc::O_RDONLY | libc::O_CLOEXEC, base)?
    };
    check_identity(&exe, exe_ident, false, 0)?;
    check_code(p, p.exe_file, &exe, exe_ident)?;

    let cwd = open_directory(p, p.cwd_file, base, shmem)?;
    let root = p
        .root_file
        .map(|i| open_directory(p, i, base, shmem))
        .transpose()
        .map_err(|e| match e {
            RestoreError::File { path, problem } => RestoreError::File {
                path: format!("{path} (the root directory, chroot, of process {})", p.pid),
                problem,
            },
            e => e,
        })?;

    // Recreated (emptied and sized) once, before anything maps or opens them.
    for (slot, ident) in mapped.iter_mut().zip(&p.files) {
        if ident.kind == FileKind::ContentInImage {
            *slot = Some(recreate_content_file(ident, base)?);
        }
    }
    for (i, (slot, ofd)) in descriptions.iter_mut().zip(&p.open_files).enumerate() {
        if slot.is_none() {
            *slot = Some(share(open_made(p, i, ofd, base, tree)?, base)?);
        }
    }
    let mut shared_memory = HashMap::new();
    for vma in &p.vmas {
        if let VmaBacking::SharedAnonymous { object, .. } = vma.backing {
            if let std::collections::hash_map::Entry::Vacant(e) = shared_memory.entry(object) {
                e.insert(share(shmem.get(object)?, base)?);
            }
        }
    }
    let descriptions = descriptions
        .into_iter()
        .map(|d| d.expect("every description was opened above"))
        .collect();

    let pages_str = pages_path.to_string_lossy();
    let pages = open_path(&pages_str, libc::O_RDONLY | libc::O_CLOEXEC, base)?;

    Ok(OpenedFiles {
        descriptions,
        shmem: shared_memory,
        mapped,
        exe,
        cwd,
        root,
        pages,
    })
}

/// The directory `index` of `p` (its cwd or root), opened by its path and checked, or, removed
/// at dump time, the one recreated (and removed again).
fn open_directory(
    p: &ProcessImage,
    index: u32,
    base: RawFd,
    shmem: &SharedMemory,
) -> Result<OwnedFd, RestoreError> {
    let ident = file_at(p, index)?;
    let fd = if let FileKind::Ghost(_) = ident.kind {
        share(shmem.ghost(ident.dev, ident.ino)?, base)?
    } else {
        open_path(
            &ident.path,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            base,
        )?
    };
    check_identity(&fd, ident, false, 0)?;
    Ok(fd)
}

/// Opens description `ofd` of `p` if it is a file checked against the image (a regular file,
/// a directory, a device, a memfd ...), once for the tree: crest's descriptor of it, kept in
/// `tree`. None for what is made rather than opened ([`open_made`]).
pub(super) fn open_checked<'t>(
    p: &ProcessImage,
    ofd: &crate::images::OpenFileDescription,
    base: RawFd,
    tree: &'t mut TreeFiles,
    shmem: &SharedMemory,
) -> Result<Option<&'t OwnedFd>, RestoreError> {
    if tree.descriptions.contains_key(&ofd.id) {
        return Ok(tree.descriptions.get(&ofd.id));
    }
    let ident = file_at(p, ofd.file)?;
    if let Some(fd) = tree.inherited_for(ident) {
        let fd = share(fd, base)?;
        return Ok(Some(tree.descriptions.entry(ofd.id).or_insert(fd)));
    }
    if matches!(
        ident.kind,
        FileKind::UnixSocket(_)
            | FileKind::Tcp(_)
            | FileKind::Udp(_)
            | FileKind::Netlink(_)
            | FileKind::Packet(_)
            | FileKind::ContentInImage
            | FileKind::Pipe(_)
            | FileKind::Fifo(_)
            | FileKind::DeletedFifo { .. }
            | FileKind::Event(_)
            | FileKind::Epoll(_)
            | FileKind::Inotify(_)
            | FileKind::Pidfd { .. }
            | FileKind::Mqueue(_)
            | FileKind::TreeProc { .. }
    ) {
        return Ok(None);
    }
    let fd = match ident.kind {
        FileKind::Memfd { .. } => {
            let first = tree.memfd_originals.insert(ident.ino);
            reopen_memfd(shmem.memfd(ident.ino)?, ident, ofd, base, first)?
        }
        FileKind::Ghost(_) => {
            reopen_memfd(shmem.ghost(ident.dev, ident.ino)?, ident, ofd, base, false)?
        }
        FileKind::DeletedSymlink { .. } => match tree.devnodes.entry((ident.dev, ident.ino)) {
            std::collections::hash_map::Entry::Occupied(e) => share(e.get(), base)?,
            std::collections::hash_map::Entry::Vacant(e) => {
                let link = crate::files::deleted_symlink::recreate(ident).map_err(|problem| {
                    RestoreError::File {
                        path: ident.path.clone(),
                        problem: format!("(a removed symbolic link at dump time) {problem}"),
                    }
                })?;
                share(e.insert(link), base)?
            }
        },
        FileKind::DeletedDevice { .. } => {
            let node = match tree.devnodes.entry((ident.dev, ident.ino)) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(crate::files::devnode::recreate(ident).map_err(|problem| {
                        RestoreError::File {
                            path: ident.path.clone(),
                            problem: format!("(a removed device node at dump time) {problem}"),
                        }
                    })?)
                }
            };
            let fd = open_path(
                &format!("/proc/self/fd/{}", node.as_raw_fd()),
                reopen_flags(ofd.flags) | libc::O_NOCTTY | libc::O_CLOEXEC,
                base,
            )?;
            check_identity(&fd, ident, false, ofd.pos)?;
            fd
        }
        _ => open_description(ident, ofd, base)?,
    };
    Ok(Some(tree.descriptions.entry(ofd.id).or_insert(fd)))
}

/// Makes description `ofd` (index `i`) of `p`, one that is created rather than opened (a
/// socket, a pipe, an event fd ...), once for the tree: crest's descriptor of it, kept in
/// `tree`.
pub(super) fn open_made<'t>(
    p: &ProcessImage,
    i: usize,
    ofd: &crate::images::OpenFileDescription,
    base: RawFd,
    tree: &'t mut TreeFiles,
) -> Result<&'t OwnedFd, RestoreError> {
    if tree.descriptions.contains_key(&ofd.id) {
        return Ok(&tree.descriptions[&ofd.id]);
    }
    let ident = file_at(p, ofd.file)?;
    let fd = match &ident.kind {
        FileKind::UnixSocket(_) => above(tree.unix.take(ident, ofd.flags)?, base, "a UNIX socket")?,
        FileKind::Tcp(t) => {
            let who = format!("pid {} fd {}", p.pid, fds_of(p, i));
            let closed = tree.tcp_close.then(|| closed_instead(t)).flatten();
            if let (Some(_), crate::images::TcpState::Established(c)) = (&closed, &t.state) {
                tree.tcp.unlock_at_resume(&c.network_lock);
            }
            let t = closed.as_ref().unwrap_or(t);
            let s = crate::net::tcp_restore::create(t, ofd.flags, &who, &mut tree.tcp).map_err(
                |e| RestoreError::Os {
                    what: e.what,
                    source: std::io::Error::from_raw_os_error(
                        e.errno.map_or(libc::EINVAL, |e| e as i32),
                    ),
                },
            )?;
            above(s, base, "a TCP socket")?
        }
        FileKind::Udp(u) => above(super::udp::create(u, ofd.flags)?, base, "a UDP socket")?,
        FileKind::Netlink(n) => above(
            super::netlink::create(n, ofd.flags)?,
            base,
            "a netlink socket",
        )?,
        FileKind::Packet(packet) => above(
            super::packet::create(packet, ofd.flags)?,
            base,
            "a packet socket",
        )?,
        FileKind::Pipe(pipe) => {
            let fds: Vec<String> = p
                .fds
                .iter()
                .filter(|f| f.description as usize == i)
                .map(|f| f.fd.to_string())
                .collect();
            let fds = format!("pid {} fd {}", p.pid, fds.join(", "));
            above(tree.pipes.open(ident, pipe, ofd, &fds)?, base, "a pipe")?
        }
        FileKind::Fifo(pipe) => above(
            tree.pipes.open_fifo(
                ident,
                pipe,
                ofd,
                &format!("pid {} fd {}", p.pid, fds_of(p, i)),
            )?,
            base,
            "a FIFO",
        )?,
        FileKind::DeletedFifo { pipe, uid, gid } => above(
            tree.pipes.open_deleted_fifo(
                ident,
                pipe,
                (*uid, *gid),
                ofd,
                &format!("pid {} fd {}", p.pid, fds_of(p, i)),
            )?,
            base,
            "a deleted FIFO",
        )?,
        FileKind::Event(ev) => above(
            crate::events::create(ev, ofd.flags).map_err(|e| RestoreError::Os {
                what: format!("pid {}: {}", p.pid, e.what),
                source: e.source,
            })?,
            base,
            "an event fd",
        )?,
        FileKind::Epoll(_) | FileKind::Inotify(_) | FileKind::Pidfd { .. } => above(
            super::epoll::create(p.pid, ident, ofd.flags)?,
            base,
            "an epoll, inotify or pidfd",
        )?,
        // Opened again by the task that holds it (procfiles.rs).
        FileKind::TreeProc { .. } => above(
            super::procfiles::placeholder().map_err(|e| RestoreError::Os {
                what: format!("pid {}: opening /dev/null as a stand-in", p.pid),
                source: e,
            })?,
            base,
            "a stand-in",
        )?,
        FileKind::Mqueue(q) => above(
            tree.mqueues.open(
                ident,
                q,
                ofd.flags,
                &format!("pid {} fd {}", p.pid, fds_of(p, i)),
            )?,
            base,
            "a message queue",
        )?,
        _ => open_description(ident, ofd, base)?,
    };
    Ok(tree.descriptions.entry(ofd.id).or_insert(fd))
}

/// For `--tcp-close`: connection `t` as a socket closed after it (its addresses and unread
/// bytes kept); None for a socket that is not connected.
fn closed_instead(t: &crate::images::TcpSocket) -> Option<crate::images::TcpSocket> {
    let crate::images::TcpState::Established(c) = &t.state else {
        return None;
    };
    Some(crate::images::TcpSocket {
        state: crate::images::TcpState::Closed {
            local: c.local,
            remote: c.remote,
            recv_queue: c.recv_queue.clone(),
        },
        ..t.clone()
    })
}

/// The files that some MAP_SHARED mapping writes through, or may write through after an
/// mprotect (smaps `mw`: the process opened the file for writing). One descriptor serves every
/// mapping of a file, so it is opened read-write when any of them needs it.
fn shared_writable_files(p: &ProcessImage) -> std::collections::HashSet<u32> {
    p.vmas
        .iter()
        .filter(|v| {
            v.shared && (v.prot & crate::images::PROT_WRITE != 0 || v.flags.shared_maywrite)
        })
        .filter_map(|v| match v.backing {
            VmaBacking::File { file, .. } => Some(file),
            _ => None,
        })
        .collect()
}

/// Compares the content of code file `file` of `p` (its exe or a file it maps executable),
/// open as `fd`, with the build-id or hash the dump recorded.
fn check_code(
    p: &ProcessImage,
    file: u32,
    fd: &OwnedFd,
    ident: &FileIdentity,
) -> Result<(), RestoreError> {
    let Some(c) = p.code_ids.iter().find(|c| c.file == file) else {
        return Ok(());
    };
    let copy = fd.try_clone().map_err(|e| RestoreError::Os {
        what: format!("duplicating crest's descriptor of {}", ident.path),
        source: e,
    })?;
    crate::files::codeid::check(&std::fs::File::from(copy), &c.digest).map_err(|problem| {
        RestoreError::File {
            path: ident.path.clone(),
            problem,
        }
    })
}

/// Opens the file of an open file description by path with its flags, checks it is the file
/// that was dumped, and puts it at the recorded offset (an O_PATH descriptor has no offset:
/// it is opened O_PATH again and not positioned).
fn open_description(
    ident: &FileIdentity,
    ofd: &crate::images::OpenFileDescription,
    base: RawFd,
) -> Result<OwnedFd, RestoreError> {
    if let FileKind::ShellTerminal { .. } = ident.kind {
        return super::tty::open_own(ofd.flags, base);
    }
    let flags = reopen_flags(ofd.flags);
    let fd = open_path(&ident.path, flags | libc::O_NOCTTY | libc::O_CLOEXEC, base)?;
    let appending = ofd.flags as i32 & libc::O_APPEND != 0
        && ofd.flags as i32 & libc::O_ACCMODE != libc::O_RDONLY;
    check_identity(&fd, ident, appending, ofd.pos)?;
    let o_path = ofd.flags as i32 & libc::O_PATH != 0;
    if !o_path
        && matches!(
            ident.kind,
            FileKind::Regular | FileKind::Directory | FileKind::ContentInImage
        )
    {
        seek(&fd, ofd.pos, &ident.path)?;
    }
    Ok(fd)
}

/// A description of a memfd (or, with `first` false, of a recreated unlinked file): the first read-write one is the descriptor memfd_create made
/// itself, as a program's own memfd descriptor is (such a descriptor does not count as a
/// writer, so exec of the memfd works: reopening it read-write through /proc would make exec
/// fail with ETXTBSY); any other is a new open through `/proc/self/fd/N`. Then its flags and
/// offset are put back.
fn reopen_memfd(
    memfd: &OwnedFd,
    ident: &FileIdentity,
    ofd: &crate::images::OpenFileDescription,
    base: RawFd,
    first: bool,
) -> Result<OwnedFd, RestoreError> {
    let flags = reopen_flags(ofd.flags);
    let fd = if first && flags & libc::O_ACCMODE == libc::O_RDWR {
        let fd = share(memfd, base)?;
        // SAFETY: F_SETFL on a descriptor we own; it changes only its status flags.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_ACCMODE) } < 0 {
            return Err(RestoreError::Os {
                what: format!("setting the status flags of {}", ident.path),
                source: std::io::Error::last_os_error(),
            });
        }
        fd
    } else {
        open_path(
            &format!("/proc/self/fd/{}", memfd.as_raw_fd()),
            flags | libc::O_CLOEXEC,
            base,
        )?
    };
    if ofd.flags as i32 & libc::O_PATH == 0 {
        seek(&fd, ofd.pos, &ident.path)?;
    }
    Ok(fd)
}

/// The flags to open a description with `flags` (fdinfo's) again: O_CREAT/O_TRUNC/O_EXCL
/// never come from fdinfo, but an image never gets to ask for them; a file made with
/// O_TMPFILE keeps that flag (__O_TMPFILE | O_DIRECTORY) in its description, and opening the
/// regular file again with it would fail (O_DIRECTORY) or make another file.
fn reopen_flags(flags: u32) -> i32 {
    let mut flags = flags as i32
        & !(libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_CLOEXEC | libc::O_NOCTTY);
    if flags & libc::O_TMPFILE == libc::O_TMPFILE {
        flags &= !libc::O_TMPFILE;
    }
    flags
}

fn file_at(p: &ProcessImage, index: u32) -> Result<&FileIdentity, RestoreError> {
    // open_image validated every index; this only guards against a caller bug.
    p.files.get(index as usize).ok_or_else(|| {
        RestoreError::BadImage(format!("pid {}: file index {index} out of range", p.pid))
    })
}

/// Opens `path` and moves the descriptor to `base` or above (close-on-exec: crest never execs,
/// and the child clears the flag where the image wants it clear).
fn open_path(path: &str, flags: i32, base: RawFd) -> Result<OwnedFd, RestoreError> {
    let cpath = CString::new(path)
        .map_err(|_| RestoreError::BadImage(format!("file path {path:?} contains a NUL byte")))?;
    // SAFETY: cpath is a valid NUL-terminated string; open has no other preconditions.
    let raw = unsafe { libc::open(cpath.as_ptr(), flags, 0) };
    if raw < 0 {
        return Err(RestoreError::File {
            path: path.to_string(),
            problem: format!("cannot be opened: {}", std::io::Error::last_os_error()),
        });
    }
    // SAFETY: raw is a descriptor we just opened and own.
    let first = unsafe { OwnedFd::from_raw_fd(raw) };
    above(first, base, path)
}

/// `fd`, moved to `base` or above (close-on-exec) if it is below.
pub(super) fn above(fd: OwnedFd, base: RawFd, what: &str) -> Result<OwnedFd, RestoreError> {
    if fd.as_raw_fd() >= base {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC on a valid fd has no memory-safety preconditions.
    let moved = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, base) };
    if moved < 0 {
        return Err(RestoreError::Os {
            what: format!("moving the descriptor of {what} above fd {base}"),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: moved is a new descriptor we own; `fd` is closed when dropped.
    Ok(unsafe { OwnedFd::from_raw_fd(moved) })
}

/// Creates (or takes over) a file whose content the image holds: its directory (mode 0755)
/// if missing, the file with the recorded mode, emptied and then sized as recorded, so every
/// page the image does not store reads as zero, as it did (only non-zero pages are stored).
/// Neither the directory nor the file may be a symlink, and an existing file must belong to
/// crest's user: crest writes into it.
fn recreate_content_file(ident: &FileIdentity, base: RawFd) -> Result<OwnedFd, RestoreError> {
    let fail = |problem: String| RestoreError::File {
        path: ident.path.clone(),
        problem,
    };
    let last = || std::io::Error::last_os_error();
    let path = std::path::Path::new(&ident.path);
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(RestoreError::BadImage(format!(
            "file {:?} has no directory and name",
            ident.path
        )));
    };
    let cdir = CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| RestoreError::BadImage(format!("path {:?} has a NUL byte", ident.path)))?;
    let cname = CString::new(name.as_encoded_bytes())
        .map_err(|_| RestoreError::BadImage(format!("path {:?} has a NUL byte", ident.path)))?;
    // SAFETY: cdir is a valid C string.
    if unsafe { libc::mkdir(cdir.as_ptr(), 0o755) } == 0 {
        // mkdir applies crest's umask; the JVM made it 0755 and checks it is not writable by
        // others.
        // SAFETY: cdir is a valid C string naming the directory just created.
        unsafe { libc::chmod(cdir.as_ptr(), 0o755) };
    } else if last().raw_os_error() != Some(libc::EEXIST) {
        return Err(fail(format!(
            "cannot be recreated: its directory cannot be created: {}",
            last()
        )));
    }
    // SAFETY: cdir is a valid C string; O_NOFOLLOW refuses a symlink in place of the directory.
    let dirfd = unsafe {
        libc::open(
            cdir.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if dirfd < 0 {
        return Err(fail(format!(
            "cannot be recreated: its directory cannot be opened: {}",
            last()
        )));
    }
    // SAFETY: dirfd is a fresh descriptor we own.
    let dirfd = unsafe { OwnedFd::from_raw_fd(dirfd) };
    let mode = ident.mode & 0o7777;
    // SAFETY: cname is a valid C string, dirfd a directory we own.
    let raw = unsafe {
        libc::openat(
            dirfd.as_raw_fd(),
            cname.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    if raw < 0 {
        return Err(fail(format!("cannot be recreated: {}", last())));
    }
    // SAFETY: raw is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let st = nix::sys::stat::fstat(&fd).map_err(|e| fail(format!("cannot be examined: {e}")))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(fail("exists and is not a regular file".into()));
    }
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if st.st_uid != me {
        return Err(fail(format!(
            "exists and belongs to uid {}, not to crest's uid {me}",
            st.st_uid
        )));
    }
    // SAFETY: fchmod and ftruncate on a regular file we own.
    let sized = unsafe {
        libc::fchmod(fd.as_raw_fd(), mode) == 0
            && libc::ftruncate(fd.as_raw_fd(), 0) == 0
            && libc::ftruncate(fd.as_raw_fd(), ident.size as libc::off_t) == 0
    };
    if !sized {
        return Err(fail(format!(
            "cannot be given mode {mode:o} and size {}: {}",
            ident.size,
            last()
        )));
    }
    above(fd, base, &ident.path)
}

fn seek(fd: &OwnedFd, pos: u64, path: &str) -> Result<(), RestoreError> {
    // SAFETY: lseek on a valid fd has no memory-safety preconditions.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), pos as libc::off_t, libc::SEEK_SET) };
    if r < 0 {
        return Err(RestoreError::File {
            path: path.to_string(),
            problem: format!(
                "cannot seek to offset {pos}: {}",
                std::io::Error::last_os_error()
            ),
        });
    }
    Ok(())
}

/// Compares the open file with what the dump recorded. A log opened for appending may have grown
/// (and so changed its mtime), but not shrunk below the recorded offset; anything else that
/// differs means the file is not the one the process had.
fn check_identity(
    fd: &OwnedFd,
    want: &FileIdentity,
    appending: bool,
    pos: u64,
) -> Result<(), RestoreError> {
    let st = nix::sys::stat::fstat(fd).map_err(|e| RestoreError::File {
        path: want.path.clone(),
        problem: format!("cannot be examined: {e}"),
    })?;
    let changed = |what: String| RestoreError::File {
        path: want.path.clone(),
        problem: format!("changed since the dump: {what}"),
    };
    match want.kind {
        // Recreated from the image: whatever it was at dump time does not matter.
        FileKind::ContentInImage => {
            if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                return Err(changed("it is no longer a regular file".into()));
            }
            return Ok(());
        }
        // Opened through /proc, never by path; a FIFO is checked when its path is opened.
        FileKind::Pipe(_) | FileKind::Fifo(_) | FileKind::DeletedFifo { .. } => {
            if st.st_mode & libc::S_IFMT != libc::S_IFIFO {
                return Err(changed("it is not a pipe".into()));
            }
            return Ok(());
        }
        // Created anew, never opened by path.
        FileKind::Event(_)
        | FileKind::Memfd { .. }
        | FileKind::Ghost(_)
        | FileKind::DeletedSymlink { .. }
        | FileKind::Epoll(_)
        | FileKind::Inotify(_)
        | FileKind::Pidfd { .. }
        | FileKind::Mqueue(_)
        | FileKind::TreeProc { .. } => return Ok(()),
        // crest's own namespace of that type, whichever inode it has here.
        FileKind::Namespace { .. } => return Ok(()),
        // crest's own terminal, never opened by path.
        FileKind::ShellTerminal { .. } => {
            if st.st_mode & libc::S_IFMT != libc::S_IFCHR {
                return Err(changed("it is not a terminal".into()));
            }
            return Ok(());
        }
        // Created anew, never opened by path.
        FileKind::UnixSocket(_)
        | FileKind::Tcp(_)
        | FileKind::Udp(_)
        | FileKind::Netlink(_)
        | FileKind::Packet(_) => {
            if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
                return Err(changed("it is not a socket".into()));
            }
            return Ok(());
        }
        FileKind::CharDevice { rdev } | FileKind::DeletedDevice { rdev, .. } => {
            if st.st_mode & libc::S_IFMT != libc::S_IFCHR || st.st_rdev != rdev {
                return Err(changed(format!(
                    "was character device {}:{}, now mode {:o} rdev {}:{}",
                    libc::major(rdev),
                    libc::minor(rdev),
                    st.st_mode,
                    libc::major(st.st_rdev),
                    libc::minor(st.st_rdev)
                )));
            }
            return Ok(());
        }
        FileKind::Directory => {
            if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                return Err(changed("it is no longer a directory".into()));
            }
        }
        FileKind::Regular => {
            if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                return Err(changed("it is no longer a regular file".into()));
            }
        }
        FileKind::Symlink => {
            if st.st_mode & libc::S_IFMT != libc::S_IFLNK {
                return Err(changed("it is no longer a symbolic link".into()));
            }
        }
    }
    // /proc and /sys files get new inode numbers (and sizes, times) as the kernel makes
    // them; the path and the type are what identify them.
    if is_pseudo_fs(fd) {
        return Ok(());
    }
    if st.st_dev != want.dev || st.st_ino != want.ino {
        return Err(changed(format!(
            "it is a different file now (device/inode {}/{} instead of {}/{})",
            st.st_dev, st.st_ino, want.dev, want.ino
        )));
    }
    if want.kind == FileKind::Directory {
        return Ok(());
    }
    let size = st.st_size as u64;
    if appending {
        if size < pos {
            return Err(changed(format!(
                "it shrank to {size} bytes, below the recorded offset {pos}"
            )));
        }
        return Ok(());
    }
    if size != want.size {
        return Err(changed(format!(
            "size {size} bytes instead of {}",
            want.size
        )));
    }
    if st.st_mtime != want.mtime_sec || st.st_mtime_nsec != want.mtime_nsec {
        return Err(changed("its modification time differs".into()));
    }
    Ok(())
}

/// Whether `fd` is a file of procfs or sysfs.
fn is_pseudo_fs(fd: &OwnedFd) -> bool {
    const PROC_SUPER_MAGIC: i64 = 0x9fa0;
    const SYSFS_MAGIC: i64 = 0x6265_6572;
    nix::sys::statfs::fstatfs(fd).is_ok_and(|s| {
        let t = s.filesystem_type().0;
        t == PROC_SUPER_MAGIC || t == SYSFS_MAGIC
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_o_tmpfile_description_is_reopened_as_a_plain_file() {
        let tmpfile = (libc::O_RDWR | libc::O_TMPFILE | libc::O_APPEND) as u32;
        assert_eq!(reopen_flags(tmpfile), libc::O_RDWR | libc::O_APPEND);
        let dir = (libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) as u32;
        assert_eq!(reopen_flags(dir), libc::O_DIRECTORY);
    }

    #[test]
    fn proc_and_sys_files_are_checked_by_type_only() {
        let fd = open_path("/proc/1/status", libc::O_RDONLY, 3).unwrap();
        let mut ident = FileIdentity {
            path: "/proc/1/status".into(),
            kind: FileKind::Regular,
            dev: 0,
            ino: 1,
            size: 99,
            mtime_sec: 0,
            mtime_nsec: 0,
            mode: 0,
        };
        check_identity(&fd, &ident, false, 0).unwrap();
        ident.kind = FileKind::Directory;
        assert!(check_identity(&fd, &ident, false, 0).is_err());
        let sys = open_path("/sys/devices/system/cpu/online", libc::O_RDONLY, 3).unwrap();
        ident.kind = FileKind::Regular;
        check_identity(&sys, &ident, false, 0).unwrap();
    }

    #[test]
    fn inherit_fd_is_parsed_in_criu_s_spelling() {
        let i: InheritFd = "fd[3]:/var/log/app.log".parse().unwrap();
        assert_eq!((i.fd, i.resource.as_str()), (3, "/var/log/app.log"));
        let p: InheritFd = "fd[1]:pipe:[4242]".parse().unwrap();
        assert_eq!((p.fd, p.resource.as_str()), (1, "pipe:[4242]"));
        for bad in ["3:/x", "fd[x]:/x", "fd[3]", "fd[-1]:/x", "fd[3]:"] {
            assert!(bad.parse::<InheritFd>().is_err(), "{bad}");
        }
    }
    use std::io::Write;

    fn identity(path: &std::path::Path) -> FileIdentity {
        let m = std::fs::metadata(path).unwrap();
        crate::files::stat_identity(path.to_string_lossy().into_owned(), FileKind::Regular, &m)
    }

    #[test]
    fn unchanged_file_passes_and_changed_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lib.so");
        std::fs::write(&path, b"abc").unwrap();
        let ident = identity(&path);
        let fd = open_path(&ident.path, libc::O_RDONLY, 10).unwrap();
        assert!(fd.as_raw_fd() >= 10);
        check_identity(&fd, &ident, false, 0).unwrap();

        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"d")
            .unwrap();
        let err = check_identity(&fd, &ident, false, 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("lib.so") && err.contains("size 4"), "{err}");
    }

    #[test]
    fn appended_log_may_grow_but_not_shrink_below_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        std::fs::write(&path, b"line1\n").unwrap();
        let ident = identity(&path);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"line2\n")
            .unwrap();
        let fd = open_path(&ident.path, libc::O_WRONLY | libc::O_APPEND, 3).unwrap();
        check_identity(&fd, &ident, true, 6).unwrap();
        std::fs::write(&path, b"x").unwrap();
        let err = check_identity(&fd, &ident, true, 6)
            .unwrap_err()
            .to_string();
        assert!(err.contains("shrank"), "{err}");
    }

    #[test]
    fn content_file_is_recreated_empty_sized_and_with_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("hsperfdata_x/4242");
        let mut ident = identity(&std::env::current_exe().unwrap());
        ident.path = path.to_string_lossy().into_owned();
        ident.kind = FileKind::ContentInImage;
        ident.size = 32768;
        ident.mode = libc::S_IFREG | 0o600;
        // Missing, directory included: both are created.
        let fd = recreate_content_file(&ident, 20).unwrap();
        assert!(fd.as_raw_fd() >= 20);
        check_identity(&fd, &ident, false, 0).unwrap();
        let md = std::fs::metadata(&path).unwrap();
        assert_eq!((md.len(), md.permissions().mode() & 0o7777), (32768, 0o600));
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o7777, 0o755);
        drop(fd);
        // Present with stale content of another size: emptied, then sized.
        std::fs::write(&path, vec![7u8; 40000]).unwrap();
        drop(recreate_content_file(&ident, 3).unwrap());
        let data = std::fs::read(&path).unwrap();
        assert_eq!(data.len(), 32768);
        assert!(data.iter().all(|b| *b == 0));
        // Never through a symlink.
        std::fs::remove_file(&path).unwrap();
        let target = root.path().join("elsewhere");
        std::fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let err = recreate_content_file(&ident, 3).unwrap_err().to_string();
        assert!(err.contains("4242"), "{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    }

    #[test]
    fn replaced_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        std::fs::write(&path, b"abc").unwrap();
        let ident = identity(&path);
        // Keep the old inode alive so the new file cannot reuse its number.
        let _old = std::fs::File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"abc").unwrap();
        let fd = open_path(&ident.path, libc::O_RDONLY, 3).unwrap();
        let err = check_identity(&fd, &ident, false, 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("different file"), "{err}");
    }
}
