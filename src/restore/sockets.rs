//! Recreating the AF_UNIX sockets an image records ([`UnixSocket`]), in crest, before the
//! fork: the child inherits them and moves them to their fd numbers like any open file.
//!
//! Every UNIX socket of the tree is made at once, on the first one a process needs, because
//! they depend on each other (a pair, a client waiting on a listener, a datagram sender):
//! 1. created: a pair (socketpair) for connections whose both ends the tree holds and for a
//!    datagram pair with an unnamed end; a pair whose other end is closed again later for a
//!    socket whose peer was closed; socket(2) for the rest;
//! 2. buffer sizes (SO_SNDBUFFORCE/SO_RCVBUFFORCE) as they were, before any data;
//! 3. names bound: an abstract name as it was; a path after removing a stale socket file there
//!    (a socket file no live socket is bound to — what a killed process leaves; anything else
//!    there is refused), then the file gets its owner and mode and is renamed to where it was;
//! 4. listeners listen, with their backlog; 5. the clients that waited in a listener's accept
//!    queue connect to it again, in queue order;
//! 6. queued data is sent again from its sender: a pair's other end (bytes or records), or
//!    for a datagram the socket of the tree bound to the sender's name, or an unnamed socket;
//!    a message that carried files or credentials is sent with them ([`super::scm`]);
//! 7. datagram sockets connect to their named peer, and `--ext-unix-sk` sockets to their
//!    outside peer's name; 8. removed socket files are removed again; 9. the other end of a
//!    peer-closed pair is closed (the kernel shuts the survivor down as it did the original);
//! 10. shutdown state, SO_PASSCRED and the other recorded options are applied.
//!
//! What cannot come back: the name of an accepted connection (its listener's; the restored
//! end has none). SO_PEERCRED, which the kernel sets from whoever makes the connection, is
//! given back by making pairs and listeners under the recorded pid and ids
//! ([`super::peercred`]), except for a connection still waiting in a listener's queue (its
//! accepted end names crest).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};

use crate::images::{FileIdentity, FileKind, ProcessImage, UnixName, UnixSocket, UnixSocketState};

use super::RestoreError;

/// The UNIX sockets of a tree: planned from every process's image, made together on first use.
#[derive(Default)]
pub struct UnixSockets {
    planned: BTreeMap<u64, (FileIdentity, UnixSocket)>,
    ext_unix_sk: bool,
    made: Option<HashMap<u64, OwnedFd>>,
    /// The files that queued messages carry ([`super::scm`]).
    carried: super::scm::Carried,
}

impl UnixSockets {
    /// Every UNIX socket of `processes`; `ext_unix_sk` allows connecting to outside peers.
    pub fn plan(processes: &[ProcessImage], ext_unix_sk: bool) -> UnixSockets {
        UnixSockets::plan_files(processes.iter().flat_map(|p| &p.files), ext_unix_sk)
    }

    fn plan_files<'a>(
        files: impl Iterator<Item = &'a FileIdentity>,
        ext_unix_sk: bool,
    ) -> UnixSockets {
        let mut planned = BTreeMap::new();
        for f in files {
            if let FileKind::UnixSocket(s) = &f.kind {
                planned
                    .entry(f.ino)
                    .or_insert_with(|| (f.clone(), s.clone()));
            }
        }
        UnixSockets {
            planned,
            ext_unix_sk,
            made: None,
            carried: Default::default(),
        }
    }

    /// The files that queued messages carry, opened in crest, to send with them: given
    /// before the first socket is taken.
    pub fn carry(&mut self, carried: super::scm::Carried) {
        self.carried = carried;
    }

    /// The socket `ident` with the file status flags `status_flags` of its open file
    /// description (close-on-exec). The first call makes every socket of the tree.
    pub fn take(
        &mut self,
        ident: &FileIdentity,
        status_flags: u32,
    ) -> Result<OwnedFd, RestoreError> {
        if self.made.is_none() {
            self.made = Some(make_all(&self.planned, self.ext_unix_sk, &self.carried)?);
        }
        let sock = self
            .made
            .as_mut()
            .expect("made above")
            .remove(&ident.ino)
            .ok_or_else(|| {
                RestoreError::BadImage(format!(
                    "UNIX socket inode {} is opened twice, or is not among the image's files",
                    ident.ino
                ))
            })?;
        set_nonblocking(&sock, status_flags as i32 & libc::O_NONBLOCK != 0)?;
        Ok(sock)
    }
}

type Planned = BTreeMap<u64, (FileIdentity, UnixSocket)>;

/// Whether `ino` and its peer are made as one socketpair.
fn paired(planned: &Planned, ino: u64, s: &UnixSocket) -> Option<u64> {
    let UnixSocketState::Connected { peer } = s.state else {
        return None;
    };
    let (_, other) = planned.get(&peer)?;
    if s.sock_type != libc::SOCK_DGRAM as u32 {
        return Some(peer);
    }
    let back = other.state == UnixSocketState::Connected { peer: ino };
    (back && (s.name == UnixName::Unnamed || other.name == UnixName::Unnamed)).then_some(peer)
}

fn make_all(
    planned: &Planned,
    ext_unix_sk: bool,
    carried: &super::scm::Carried,
) -> Result<HashMap<u64, OwnedFd>, RestoreError> {
    let mut fds: HashMap<u64, OwnedFd> = HashMap::new();
    // Other ends of peer-closed pairs, by the survivor's inode; closed at the end.
    let mut closers: HashMap<u64, OwnedFd> = HashMap::new();
    let inode = |ino: u64| format!("UNIX socket inode {ino}");

    // 1. Created.
    for (&ino, (_, s)) in planned {
        if fds.contains_key(&ino) {
            continue;
        }
        let ty = s.sock_type as i32;
        match &s.state {
            UnixSocketState::Connected { peer } => {
                let Some((_, other)) = planned.get(peer) else {
                    return Err(RestoreError::BadImage(format!(
                        "{} is connected to socket inode {peer}, which no process of the image \
                         holds",
                        inode(ino)
                    )));
                };
                if let Some(peer) = paired(planned, ino, s) {
                    if other.state != (UnixSocketState::Connected { peer: ino }) {
                        return Err(RestoreError::BadImage(format!(
                            "{} is connected to socket inode {peer}, which is not connected back",
                            inode(ino)
                        )));
                    }
                    let made = super::peercred::pair(
                        ty,
                        s.peer_creds,
                        other.peer_creds,
                        &format!("the UNIX socket pair of inodes {ino} and {peer}"),
                    )?;
                    let (a, b) = match made {
                        Some(made) => made,
                        None => pair(ty)?,
                    };
                    fds.insert(ino, a);
                    fds.insert(peer, b);
                } else if other.name == UnixName::Unnamed {
                    return Err(RestoreError::BadImage(format!(
                        "{} is connected to the unnamed socket inode {peer}, which cannot be \
                         reached",
                        inode(ino)
                    )));
                } else {
                    fds.insert(ino, socket(ty)?);
                }
            }
            UnixSocketState::PeerClosed => {
                let (a, b) = match super::peercred::survivor(ty, s.peer_creds, ino)? {
                    Some(made) => made,
                    None => pair(ty)?,
                };
                fds.insert(ino, a);
                closers.insert(ino, b);
            }
            UnixSocketState::External { peer_name } if !ext_unix_sk => {
                return Err(RestoreError::Unsupported(format!(
                    "{} was connected to {}, a socket outside the dumped tree; restore with \
                     --ext-unix-sk to connect it to that name again",
                    inode(ino),
                    crate::dump::sockdiag::name_text(peer_name)
                )));
            }
            UnixSocketState::Queued { listener } => {
                match planned.get(listener).map(|l| &l.1.state) {
                    Some(UnixSocketState::Listening { pending, .. }) if pending.contains(&ino) => {}
                    _ => {
                        return Err(RestoreError::BadImage(format!(
                            "{} waits in the accept queue of socket inode {listener}, which is \
                             not a listener of the image that lists it",
                            inode(ino)
                        )))
                    }
                }
                fds.insert(ino, socket(ty)?);
            }
            _ => {
                fds.insert(ino, socket(ty)?);
            }
        }
    }

    // 2. Buffer sizes (the kernel doubles what it is given).
    for (&ino, (_, s)) in planned {
        let fd = &fds[&ino];
        for (opt, v, name) in [
            (libc::SO_SNDBUFFORCE, s.sndbuf, "SO_SNDBUFFORCE"),
            (libc::SO_RCVBUFFORCE, s.rcvbuf, "SO_RCVBUFFORCE"),
        ] {
            if v > 0 {
                set_int(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    (v / 2).min(i32::MAX as u32) as i32,
                )
                .map_err(|e| os_err(format!("setting {name} of {}", inode(ino)), e))?;
            }
        }
    }

    // 3. Names. Sockets whose file had been removed first: each is bound, then its file is
    // moved out of the way (to a name of crest's in the same directory, removed again in 8.),
    // so that another socket bound to the same path later — whose file survived — finds the
    // path free, as it did in the original. A directory removed since is made again for the
    // time being.
    let mut live: Option<HashSet<(u64, u64)>> = None;
    let mut reach: HashMap<u64, String> = HashMap::new();
    let mut made_dirs: Vec<std::path::PathBuf> = Vec::new();
    for (&ino, (ident, s)) in planned {
        if let UnixName::Path {
            bound,
            uid,
            gid,
            dir,
            removed: true,
        } = &s.name
        {
            make_missing_dirs(std::path::Path::new(&ident.path), &mut made_dirs)?;
            // Another file (not a socket) made at the path since: moved away for the bind.
            let occupant = occupant_aside(&ident.path, ino)?;
            let bound_it = bind_path(&fds[&ino], ident, bound, dir, *uid, *gid, &mut live);
            let shared = planned
                .iter()
                .any(|(&other, (oident, _))| other != ino && oident.path == ident.path);
            let aside = if bound_it.is_ok() && (shared || occupant.is_some()) {
                let aside = aside_path(&ident.path, ino);
                aside.and_then(|aside| {
                    std::fs::rename(&ident.path, &aside).map_err(|e| RestoreError::File {
                        path: ident.path.clone(),
                        problem: format!("cannot be moved aside to {aside} after binding: {e}"),
                    })?;
                    Ok(aside)
                })
            } else {
                Ok(ident.path.clone())
            };
            if let Some(o) = &occupant {
                std::fs::rename(o, &ident.path).map_err(|e| RestoreError::File {
                    path: o.clone(),
                    problem: format!(
                        "(moved aside from {} to bind a socket there) cannot be moved back: {e}",
                        ident.path
                    ),
                })?;
            }
            bound_it?;
            reach.insert(ino, aside?);
        }
    }
    for (&ino, (ident, s)) in planned {
        match &s.name {
            UnixName::Unnamed => {}
            UnixName::Abstract { name } => {
                let (addr, len) = abstract_address(name)?;
                super::scm::after_garbage(|| bind(&fds[&ino], &addr, len)).map_err(|e| {
                    RestoreError::Os {
                        what: format!(
                            "binding {} to the abstract name {} (is the dumped process still \
                         running?)",
                            inode(ino),
                            crate::dump::sockdiag::name_text(&s.name.raw())
                        ),
                        source: e,
                    }
                })?;
            }
            UnixName::Path { removed: true, .. } => {}
            UnixName::Path {
                bound,
                uid,
                gid,
                dir,
                ..
            } => bind_path(&fds[&ino], ident, bound, dir, *uid, *gid, &mut live)?,
        }
    }
    let address_of = |ident: &FileIdentity, s: &UnixSocket| match reach.get(&ident.ino) {
        Some(aside) => address(aside).map(Some),
        None => address_of(ident, s),
    };

    // 4. Listeners.
    for (&ino, (_, s)) in planned {
        if let UnixSocketState::Listening { backlog, .. } = s.state {
            let backlog = backlog.min(i32::MAX as u32) as i32;
            super::peercred::listen(&fds[&ino], backlog, s.peer_creds, ino)?;
        }
    }

    // 5. Clients waiting to be accepted, in queue order.
    for (&ino, (ident, s)) in planned {
        if let UnixSocketState::Listening { pending, .. } = &s.state {
            let (addr, len) = address_of(ident, s)?.expect("a listener has a name");
            for c in pending {
                let fd = fds.get(c).ok_or_else(|| {
                    RestoreError::BadImage(format!(
                        "{} lists socket inode {c} as waiting, which the image does not hold",
                        inode(ino)
                    ))
                })?;
                connect(fd, &addr, len).map_err(|e| RestoreError::Os {
                    what: format!(
                        "connecting {} again to {}, where it waited to be accepted",
                        inode(*c),
                        shown(ident, s)
                    ),
                    source: e,
                })?;
            }
        }
    }

    // 6. Queued data, from its sender.
    let by_name: HashMap<Vec<u8>, u64> = planned
        .iter()
        .filter(|(_, (_, s))| s.name != UnixName::Unnamed)
        .map(|(&ino, (_, s))| (s.name.raw(), ino))
        .collect();
    let mut anonymous: Option<OwnedFd> = None;
    for (&ino, (ident, s)) in planned {
        if s.queue.is_empty() {
            continue;
        }
        let partner = paired(planned, ino, s)
            .map(|p| &fds[&p])
            .or_else(|| closers.get(&ino));
        let addr = address_of(ident, s)?;
        for (i, m) in s.queue.iter().enumerate() {
            let what = || format!("queueing message {} of {} again", i + 1, inode(ino));
            let sender = if !m.from.is_empty() {
                let from = by_name.get(&m.from).ok_or_else(|| {
                    RestoreError::BadImage(format!(
                        "{}: its message {} comes from {}, which no socket of the image is \
                         bound to",
                        inode(ino),
                        i + 1,
                        crate::dump::sockdiag::name_text(&m.from)
                    ))
                })?;
                &fds[from]
            } else if let Some(p) = partner {
                p
            } else {
                if anonymous.is_none() {
                    let a = socket(libc::SOCK_DGRAM)?;
                    set_int(&a, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 32 << 20)
                        .map_err(|e| os_err("sizing a sender socket".into(), e))?;
                    anonymous = Some(a);
                }
                anonymous.as_ref().expect("made above")
            };
            let to = match (&addr, partner) {
                // Sent to the name, unless the sender is the other end of its pair.
                (_, Some(p)) if std::ptr::eq(p, sender) => None,
                (Some(a), _) => Some(a),
                (None, _) => {
                    return Err(RestoreError::BadImage(format!(
                        "{}: queued data whose sender cannot reach it (it has no name and no \
                         pair)",
                        inode(ino)
                    )))
                }
            };
            // A message queued before the receiver set SO_PASSCRED has no sender (pid 0):
            // sent without credentials, it reads the same.
            let creds = m.creds.filter(|c| c.pid != 0);
            if m.fds.is_empty() && creds.is_none() {
                send_all(sender, &m.data, to).map_err(|e| os_err(what(), e))?;
                continue;
            }
            let mut passed = Vec::with_capacity(m.fds.len());
            for id in &m.fds {
                passed.push(carried.fd(*id, &fds).ok_or_else(|| {
                    RestoreError::BadImage(format!(
                        "{}: its message {} carries description {id}, which crest has not \
                         opened",
                        inode(ino),
                        i + 1
                    ))
                })?);
            }
            // A stream's piece carrying files may have begun anywhere in the bytes the peek
            // returned with it (a peek runs on through plain bytes into it): the files go with
            // its last byte, so a reader gets them only once it reads to the end, never with
            // bytes that came before them.
            let to = to.map(|(a, l)| (a, *l));
            let (before, last) = match s.sock_type as i32 {
                libc::SOCK_STREAM if !passed.is_empty() && !m.data.is_empty() => {
                    m.data.split_at(m.data.len() - 1)
                }
                _ => (&[][..], &m.data[..]),
            };
            let context = |e| match e {
                RestoreError::Os { what: w, source } => RestoreError::Os {
                    what: format!("{}: {w}", what()),
                    source,
                },
                e => e,
            };
            if !before.is_empty() {
                super::scm::send_message_as(sender, before, to, &[], creds).map_err(context)?;
            }
            super::scm::send_message_as(sender, last, to, &passed, creds).map_err(context)?;
        }
    }
    drop(anonymous);

    // 7. Connections by name.
    for (&ino, (_, s)) in planned {
        let target = match &s.state {
            UnixSocketState::Connected { peer } if paired(planned, ino, s).is_none() => {
                let (pident, ps) = &planned[peer];
                address_of(pident, ps)?
            }
            UnixSocketState::External { peer_name } => Some(raw_address(peer_name)?),
            _ => None,
        };
        if let Some((addr, len)) = target {
            connect(&fds[&ino], &addr, len).map_err(|e| RestoreError::Os {
                what: format!(
                    "connecting {} to {} again",
                    inode(ino),
                    match &s.state {
                        UnixSocketState::External { peer_name } =>
                            crate::dump::sockdiag::name_text(peer_name),
                        UnixSocketState::Connected { peer } => format!("socket inode {peer}"),
                        _ => String::new(),
                    }
                ),
                source: e,
            })?;
        }
    }

    // 8. Socket files that had been removed, and the directories made for them.
    for aside in reach.values() {
        std::fs::remove_file(aside).map_err(|e| RestoreError::File {
            path: aside.clone(),
            problem: format!("cannot be removed again after binding: {e}"),
        })?;
    }
    for d in made_dirs.iter().rev() {
        std::fs::remove_dir(d).map_err(|e| RestoreError::File {
            path: d.display().to_string(),
            problem: format!(
                "was made again for the sockets bound in it and cannot be removed again: {e}"
            ),
        })?;
    }

    // 9. Peers that were closed.
    drop(closers);

    // 10. Shutdown state and SO_PASSCRED.
    for (&ino, (_, s)) in planned {
        let fd = &fds[&ino];
        let how = match s.shutdown {
            1 => Some(libc::SHUT_RD),
            2 => Some(libc::SHUT_WR),
            3 => Some(libc::SHUT_RDWR),
            _ => None,
        };
        if let Some(how) = how {
            // SAFETY: shutdown on a socket we own.
            if unsafe { libc::shutdown(fd.as_raw_fd(), how) } < 0 {
                return Err(os(&format!("shutting {} down", inode(ino))));
            }
        }
        if s.passcred {
            set_int(fd, libc::SOL_SOCKET, libc::SO_PASSCRED, 1)
                .map_err(|e| os_err(format!("setting SO_PASSCRED of {}", inode(ino)), e))?;
        }
        crate::files::sockopts::apply(std::os::fd::AsFd::as_fd(fd), &s.options).map_err(|e| {
            RestoreError::Unsupported(format!("{} cannot be given its options: {e}", inode(ino)))
        })?;
        super::peercred::check(fd, s.peer_creds, ino);
    }
    Ok(fds)
}

/// "/path" or "@abstract" for messages.
fn shown(ident: &FileIdentity, s: &UnixSocket) -> String {
    match &s.name {
        UnixName::Path { .. } => ident.path.clone(),
        name => crate::dump::sockdiag::name_text(&name.raw()),
    }
}

type Address = (libc::sockaddr_un, libc::socklen_t);

/// Where others reach the socket now: its file's path, or its abstract name.
fn address_of(ident: &FileIdentity, s: &UnixSocket) -> Result<Option<Address>, RestoreError> {
    match &s.name {
        UnixName::Unnamed => Ok(None),
        UnixName::Path { .. } => address(&ident.path).map(Some),
        UnixName::Abstract { name } => abstract_address(name).map(Some),
    }
}

/// The address a kernel-reported name stands for (a leading NUL: abstract).
fn raw_address(raw: &[u8]) -> Result<Address, RestoreError> {
    match raw.split_first() {
        Some((0, name)) => abstract_address(name),
        _ => address(&String::from_utf8_lossy(raw)),
    }
}

fn abstract_address(name: &[u8]) -> Result<Address, RestoreError> {
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if name.len() + 1 > addr.sun_path.len() {
        return Err(RestoreError::BadImage(format!(
            "an abstract socket name of {} bytes does not fit a UNIX socket address",
            name.len()
        )));
    }
    for (dst, src) in addr.sun_path[1..].iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + 1 + name.len();
    Ok((addr, len as libc::socklen_t))
}

fn bind(fd: &OwnedFd, addr: &libc::sockaddr_un, len: libc::socklen_t) -> std::io::Result<()> {
    // SAFETY: addr is a valid sockaddr_un of `len` bytes.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (addr as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Connects (without waiting: a UNIX connection is made at once or refused).
fn connect(fd: &OwnedFd, addr: &libc::sockaddr_un, len: libc::socklen_t) -> std::io::Result<()> {
    set_nonblocking(fd, true).map_err(|_| std::io::Error::last_os_error())?;
    // SAFETY: addr is a valid sockaddr_un of `len` bytes.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (addr as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    let err = std::io::Error::last_os_error();
    set_nonblocking(fd, false).map_err(|_| std::io::Error::last_os_error())?;
    if r < 0 {
        return Err(err);
    }
    Ok(())
}

/// Binds `fd` to the path `bound` (relative to `dir` when that is given), with the socket
/// file's owner and mode, and moves the file to where it was at dump time. A stale socket file
/// in the way is removed first.
fn bind_path(
    fd: &OwnedFd,
    ident: &FileIdentity,
    bound: &str,
    dir: &str,
    uid: u32,
    gid: u32,
    live: &mut Option<HashSet<(u64, u64)>>,
) -> Result<(), RestoreError> {
    // Where the name lands: the absolute path of the new socket file.
    let at = if dir.is_empty() {
        bound.to_string()
    } else if bound.starts_with('/') {
        // Bound by a chrooted process: below its root.
        crate::files::root::below(std::path::Path::new(dir), std::path::Path::new(bound))
            .to_str()
            .map(str::to_string)
            .ok_or_else(|| RestoreError::BadImage(format!("{dir}{bound} is not UTF-8")))?
    } else {
        std::path::Path::new(dir)
            .join(bound)
            .to_str()
            .map(str::to_string)
            .ok_or_else(|| RestoreError::BadImage(format!("{dir}/{bound} is not UTF-8")))?
    };
    remove_stale(&at, live)?;
    if ident.path != at {
        remove_stale(&ident.path, live)?;
    }
    let (addr, len) = address(bound)?;
    let bound_it = if dir.is_empty() {
        bind(fd, &addr, len)
    } else {
        bind_from(fd, &addr, len, dir)
    };
    bound_it.map_err(|e| RestoreError::File {
        path: at.clone(),
        problem: format!("cannot be bound by a UNIX socket: {e}"),
    })?;
    let file_err = |what: &str| RestoreError::File {
        path: at.clone(),
        problem: format!("{what}: {}", std::io::Error::last_os_error()),
    };
    let cpath = CString::new(at.as_str())
        .map_err(|_| RestoreError::BadImage(format!("socket path {at:?} holds a NUL byte")))?;
    // Owner and permissions before listen or rename: until then nobody reaches it through a
    // more permissive mode.
    // SAFETY: cpath is a valid C string.
    if unsafe { libc::lchown(cpath.as_ptr(), uid, gid) } < 0 {
        return Err(file_err(&format!("cannot be given owner {uid}:{gid}")));
    }
    // SAFETY: cpath is a valid C string.
    if unsafe { libc::chmod(cpath.as_ptr(), ident.mode & 0o7777) } < 0 {
        return Err(file_err(&format!(
            "cannot be given mode {:o}",
            ident.mode & 0o7777
        )));
    }
    if ident.path != at {
        std::fs::rename(&at, &ident.path).map_err(|e| RestoreError::File {
            path: at.clone(),
            problem: format!("cannot be renamed to {}: {e}", ident.path),
        })?;
    }
    Ok(())
}

/// Binds `fd` to the relative name in `addr` as resolved from the directory `dir`, or to the
/// absolute name in `addr` as resolved from the root `dir` (a chrooted process's): from a
/// thread of crest's with a working directory and root of its own (unshare(CLONE_FS)), so
/// crest's own stay as they are.
fn bind_from(
    fd: &OwnedFd,
    addr: &libc::sockaddr_un,
    len: libc::socklen_t,
    dir: &str,
) -> std::io::Result<()> {
    let dir = CString::new(dir).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: unshare(CLONE_FS) gives this thread its own cwd; it takes an int.
                if unsafe { libc::unshare(libc::CLONE_FS) } < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // SAFETY: dir is a valid C string.
                if unsafe { libc::chdir(dir.as_ptr()) } < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if addr.sun_path[0] == b'/' as libc::c_char {
                    // SAFETY: "." is a valid C string; the chroot is this thread's alone.
                    if unsafe { libc::chroot(c".".as_ptr()) } < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                bind(fd, addr, len)
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::from_raw_os_error(libc::EIO)))
    })
}

/// Makes the directories missing on the way to `file` (removed since its socket was bound),
/// owner-only; each one made is pushed onto `made`, outermost first.
fn make_missing_dirs(
    file: &std::path::Path,
    made: &mut Vec<std::path::PathBuf>,
) -> Result<(), RestoreError> {
    let Some(parent) = file.parent() else {
        return Ok(());
    };
    let mut missing = Vec::new();
    let mut p = parent;
    while std::fs::symlink_metadata(p).is_err() {
        missing.push(p.to_path_buf());
        match p.parent() {
            Some(up) => p = up,
            None => break,
        }
    }
    for d in missing.into_iter().rev() {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&d)
            .map_err(|e| RestoreError::File {
                path: d.display().to_string(),
                problem: format!(
                    "held sockets at dump time and was removed since; it cannot be made again \
                     for the time of the restore: {e}"
                ),
            })?;
        made.push(d);
    }
    Ok(())
}

/// Where a removed socket's file waits while the restore needs to reach it and another socket
/// is bound to the same path: beside it, under a short name of crest's that still fits a
/// socket address.
fn aside_path(path: &str, ino: u64) -> Result<String, RestoreError> {
    let p = std::path::Path::new(path);
    let dir = p.parent().unwrap_or(std::path::Path::new("/"));
    let aside = dir.join(format!(".c{ino:x}")).display().to_string();
    address(&aside).map_err(|_| {
        RestoreError::Unsupported(format!(
            "{path} was bound by several sockets, one of whose files was removed; crest moves \
             that file aside while restoring, and {aside} is too long for a socket address"
        ))
    })?;
    if std::fs::symlink_metadata(&aside).is_ok() {
        return Err(RestoreError::File {
            path: aside,
            problem: "is in the way of a socket file crest moves aside while restoring".into(),
        });
    }
    Ok(aside)
}

/// Moves a file that is not a socket and lies at `path`, where the removed socket `ino` is to
/// be bound for a moment, to a name of crest's beside it; returns that name (None when the
/// path is free or holds a socket file, which [`remove_stale`] deals with).
fn occupant_aside(path: &str, ino: u64) -> Result<Option<String>, RestoreError> {
    match std::fs::symlink_metadata(path) {
        Ok(md) if !md.file_type().is_socket() => {}
        _ => return Ok(None),
    }
    let p = std::path::Path::new(path);
    let dir = p.parent().unwrap_or(std::path::Path::new("/"));
    let aside = dir
        .join(format!(".crest-occupant-{ino:x}"))
        .display()
        .to_string();
    if std::fs::symlink_metadata(&aside).is_ok() {
        return Err(RestoreError::File {
            path: aside,
            problem: "is in the way of a file crest moves aside while restoring".into(),
        });
    }
    std::fs::rename(path, &aside).map_err(|e| RestoreError::File {
        path: path.to_string(),
        problem: format!(
            "(made since the socket bound there was removed) cannot be moved aside to {aside} \
             for the time of the bind: {e}"
        ),
    })?;
    Ok(Some(aside))
}

/// Removes a socket file at `path` that no live socket is bound to (what a killed process
/// leaves). A path that is not a socket, or one a socket is bound to, is left alone and refused.
fn remove_stale(path: &str, live: &mut Option<HashSet<(u64, u64)>>) -> Result<(), RestoreError> {
    let refuse = |problem: String| RestoreError::File {
        path: path.to_string(),
        problem,
    };
    let md = match std::fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(refuse(format!("cannot be examined: {e}"))),
    };
    if !md.file_type().is_socket() {
        return Err(refuse(
            "exists and is not a socket; a restored UNIX socket is bound there, and crest \
             replaces only a stale socket file"
                .into(),
        ));
    }
    if live.is_none() {
        *live = Some(crate::dump::sockdiag::bound_files().map_err(|e| {
            refuse(format!(
                "is a socket file crest cannot tell stale or in use ({e})"
            ))
        })?);
    }
    let key = (md.ino(), md.dev());
    // A socket that only a queue keeps (one queued in itself, of the dumped process) goes
    // once the kernel collects it.
    if live.as_ref().expect("listed above").contains(&key)
        && super::scm::after_garbage_until(|| {
            crate::dump::sockdiag::bound_files().is_ok_and(|l| !l.contains(&key))
        })
    {
        *live = None;
    }
    if live.as_ref().is_some_and(|l| l.contains(&key)) {
        return Err(refuse(
            "is a socket another process is bound to (listening or not); stop that process \
             first"
                .into(),
        ));
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(refuse(format!(
            "is a stale socket that cannot be removed: {e}"
        ))),
    }
}

fn pair(ty: i32) -> Result<(OwnedFd, OwnedFd), RestoreError> {
    let mut pair = [-1; 2];
    // SAFETY: pair has room for the two descriptors socketpair writes.
    if unsafe { libc::socketpair(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0, pair.as_mut_ptr()) } < 0
    {
        return Err(os(&format!("creating a UNIX socket pair of type {ty}")));
    }
    // SAFETY: both are fresh descriptors we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) })
}

/// Sends `bytes` through `sock` (to `to`, or its peer), all of them: one message, unless a
/// stream splits it.
fn send_all(sock: &OwnedFd, bytes: &[u8], to: Option<&Address>) -> std::io::Result<()> {
    let mut sent = 0;
    loop {
        let rest = &bytes[sent..];
        let (name, namelen) = match to {
            Some((a, l)) => ((a as *const libc::sockaddr_un).cast(), *l),
            None => (std::ptr::null(), 0),
        };
        // SAFETY: rest is a readable slice, name null or a valid address of namelen bytes;
        // MSG_NOSIGNAL keeps a failure from raising SIGPIPE.
        let n = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                rest.as_ptr().cast(),
                rest.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                name,
                namelen,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        sent += n as usize;
        if sent >= bytes.len() {
            return Ok(());
        }
    }
}

fn set_int(fd: &OwnedFd, level: i32, opt: i32, v: i32) -> std::io::Result<()> {
    // SAFETY: v is a valid int of the size given.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&v as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn set_nonblocking(fd: &OwnedFd, on: bool) -> Result<(), RestoreError> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own.
    let fl = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    let want = if on {
        fl | libc::O_NONBLOCK
    } else {
        fl & !libc::O_NONBLOCK
    };
    // SAFETY: as above.
    if fl < 0 || unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, want) } < 0 {
        return Err(os("setting O_NONBLOCK of a UNIX socket"));
    }
    Ok(())
}

fn os(what: &str) -> RestoreError {
    os_err(what.to_string(), std::io::Error::last_os_error())
}

fn os_err(what: String, source: std::io::Error) -> RestoreError {
    RestoreError::Os { what, source }
}

fn socket(ty: i32) -> Result<OwnedFd, RestoreError> {
    // SAFETY: socket(2) takes only integers.
    let raw = unsafe { libc::socket(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(os(&format!("creating a UNIX socket of type {ty}")));
    }
    // SAFETY: raw is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// `sockaddr_un` for `path` and its length.
fn address(path: &str) -> Result<Address, RestoreError> {
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_bytes();
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(RestoreError::BadImage(format!(
            "socket path {path:?} does not fit a UNIX socket address"
        )));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::UnixMessage;
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};

    fn ident(ino: u64, path: &str, mode: u32, s: UnixSocket) -> FileIdentity {
        FileIdentity {
            path: path.into(),
            kind: FileKind::UnixSocket(s),
            dev: 0,
            ino,
            size: 0,
            mtime_sec: 0,
            mtime_nsec: 0,
            mode,
        }
    }

    fn sock(ty: i32, name: UnixName, state: UnixSocketState) -> UnixSocket {
        UnixSocket {
            sock_type: ty as u32,
            state,
            name,
            queue: Vec::new(),
            shutdown: 0,
            passcred: false,
            sndbuf: 0,
            rcvbuf: 0,
            options: Vec::new(),
            peer_creds: None,
        }
    }

    fn msg(from: &[u8], data: &[u8]) -> UnixMessage {
        UnixMessage {
            from: from.to_vec(),
            data: data.to_vec(),
            fds: vec![],
            creds: None,
        }
    }

    fn take(u: &mut UnixSockets, files: &[FileIdentity], ino: u64) -> OwnedFd {
        let f = files.iter().find(|f| f.ino == ino).unwrap();
        u.take(f, libc::O_RDWR as u32).unwrap()
    }

    fn path_name(p: &str) -> UnixName {
        UnixName::Path {
            bound: p.into(),
            uid: 0,
            gid: 0,
            dir: String::new(),
            removed: false,
        }
    }

    fn int_opt(fd: &OwnedFd, opt: i32) -> i32 {
        let (mut v, mut len) = (0i32, 4 as libc::socklen_t);
        // SAFETY: getsockopt of an int into a valid buffer.
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&mut v as *mut i32).cast(),
                &mut len,
            )
        };
        assert_eq!(r, 0);
        v
    }

    #[test]
    fn pairs_come_back_with_data_shutdown_and_options() {
        use UnixSocketState::*;
        let mut a = sock(
            libc::SOCK_SEQPACKET,
            UnixName::Unnamed,
            Connected { peer: 20 },
        );
        a.queue = vec![msg(b"", b"rec1"), msg(b"", b"record2")];
        a.passcred = true;
        a.sndbuf = 100_000;
        let mut b = sock(
            libc::SOCK_SEQPACKET,
            UnixName::Unnamed,
            Connected { peer: 10 },
        );
        b.shutdown = 2; // b shut down writing: a cannot read more than its queue
        let mut c = sock(libc::SOCK_STREAM, UnixName::Unnamed, PeerClosed);
        c.queue = vec![msg(b"", b"queued")];
        let files = [
            ident(10, "", 0o140777, a),
            ident(20, "", 0o140777, b),
            ident(30, "", 0o140777, c),
        ];
        let mut u = UnixSockets::plan_files(files.iter(), false);
        let fa = take(&mut u, &files, 10);
        let fb = take(&mut u, &files, 20);
        let fc = take(&mut u, &files, 30);
        assert_eq!(int_opt(&fa, libc::SO_PASSCRED), 1);
        assert_eq!(int_opt(&fa, libc::SO_SNDBUF), 100_000);
        let mut buf = [0u8; 16];
        assert_eq!(
            nix::unistd::read(&fa, &mut buf).unwrap(),
            4,
            "record boundary kept"
        );
        assert_eq!(nix::unistd::read(&fa, &mut buf).unwrap(), 7);
        assert_eq!(
            nix::unistd::read(&fa, &mut buf).unwrap(),
            0,
            "end of file: b shut down"
        );
        nix::unistd::write(&fa, b"ping").unwrap();
        assert_eq!(nix::unistd::read(&fb, &mut buf).unwrap(), 4);
        assert!(nix::unistd::write(&fb, b"x").is_err(), "b cannot write");
        let mut c = UnixStream::from(fc);
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"queued");
        assert_eq!(c.write(b"x").unwrap_err().raw_os_error(), Some(libc::EPIPE));
    }

    #[test]
    fn datagrams_are_bound_connected_and_queued_from_their_senders() {
        use UnixSocketState::*;
        let tag = format!("crest-rs-{}", std::process::id());
        let rx_name = UnixName::Abstract {
            name: format!("{tag}-rx").into_bytes(),
        };
        let tx_name = UnixName::Abstract {
            name: format!("{tag}-tx").into_bytes(),
        };
        let mut rx = sock(libc::SOCK_DGRAM, rx_name.clone(), Unconnected);
        rx.queue = vec![msg(&tx_name.raw(), b"from tx"), msg(b"", b"from nobody")];
        let tx = sock(libc::SOCK_DGRAM, tx_name.clone(), Connected { peer: 1 });
        let mut p1 = sock(libc::SOCK_DGRAM, UnixName::Unnamed, Connected { peer: 4 });
        p1.queue = vec![msg(b"", b"pair")];
        let p2 = sock(libc::SOCK_DGRAM, UnixName::Unnamed, Connected { peer: 3 });
        let files = [
            ident(1, "", 0o140777, rx),
            ident(2, "", 0o140777, tx),
            ident(3, "", 0o140777, p1),
            ident(4, "", 0o140777, p2),
        ];
        let mut u = UnixSockets::plan_files(files.iter(), false);
        let rx = UnixDatagram::from(take(&mut u, &files, 1));
        let tx = UnixDatagram::from(take(&mut u, &files, 2));
        let p1 = UnixDatagram::from(take(&mut u, &files, 3));
        let p2 = UnixDatagram::from(take(&mut u, &files, 4));
        let mut buf = [0u8; 32];
        let (n, from) = rx.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"from tx");
        use std::os::linux::net::SocketAddrExt;
        assert_eq!(
            from.as_abstract_name(),
            Some(format!("{tag}-tx").as_bytes())
        );
        let (n, from) = rx.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"from nobody");
        assert!(from.is_unnamed());
        // tx is connected to rx by name.
        tx.send(b"again").unwrap();
        assert_eq!(rx.recv(&mut buf).unwrap(), 5);
        assert_eq!(p1.recv(&mut buf).unwrap(), 4);
        p2.send(b"x").unwrap();
        p1.send(b"y").unwrap();
        assert_eq!(p1.recv(&mut buf).unwrap(), 1);
        assert_eq!(p2.recv(&mut buf).unwrap(), 1);
    }

    #[test]
    fn listener_gets_its_waiting_clients_back_in_order_and_replaces_a_stale_file() {
        use UnixSocketState::*;
        let dir = tempfile::tempdir().unwrap();
        let bound = dir.path().join("srv.tmp");
        let path = dir.path().join("srv");
        // A stale socket file where the listener goes.
        drop(UnixListener::bind(&path).unwrap());
        let l = sock(
            libc::SOCK_STREAM,
            path_name(bound.to_str().unwrap()),
            Listening {
                backlog: 3,
                pending: vec![7, 6],
            },
        );
        let mut c6 = sock(libc::SOCK_STREAM, UnixName::Unnamed, Queued { listener: 5 });
        c6.shutdown = 2;
        let c7 = sock(libc::SOCK_STREAM, UnixName::Unnamed, Queued { listener: 5 });
        let files = [
            ident(5, path.to_str().unwrap(), 0o140640, l),
            ident(6, "", 0o140777, c6),
            ident(7, "", 0o140777, c7),
        ];
        let mut u = UnixSockets::plan_files(files.iter(), false);
        let l = UnixListener::from(take(&mut u, &files, 5));
        let c6 = UnixStream::from(take(&mut u, &files, 6));
        let mut c7 = UnixStream::from(take(&mut u, &files, 7));
        assert!(!bound.exists());
        let md = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(md.permissions().mode() & 0o7777, 0o640);
        assert_eq!(
            l.local_addr().unwrap().as_pathname(),
            Some(bound.as_path()),
            "getsockname reports the name it was bound as"
        );
        let (mut first, _) = l.accept().unwrap();
        first.write_all(b"7").unwrap();
        let mut b = [0u8; 1];
        c7.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"7", "the first waiting connection was c7's");
        let (mut second, _) = l.accept().unwrap();
        assert_eq!(second.read(&mut b).unwrap(), 0, "c6 had shut down writing");
        drop(c6);

        // Someone else is bound there now: a second restore must not steal the path.
        let err = UnixSockets::plan_files(files.iter(), false)
            .take(&files[0], 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bound to"), "{err}");
    }

    #[test]
    fn a_bound_path_is_never_removed_when_it_is_not_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("precious");
        std::fs::write(&path, b"data").unwrap();
        let p = path.to_str().unwrap();
        let s = sock(libc::SOCK_DGRAM, path_name(p), UnixSocketState::Unconnected);
        let files = [ident(1, p, 0o140600, s)];
        let err = UnixSockets::plan_files(files.iter(), false)
            .take(&files[0], 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
    }

    #[test]
    fn external_peers_need_the_option_and_are_connected_by_name() {
        let tag = format!("crest-ext-{}", std::process::id());
        let server = UnixListener::bind_addr(
            &<std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(
                tag.as_bytes(),
            )
            .unwrap(),
        )
        .unwrap();
        let mut raw = vec![0];
        raw.extend_from_slice(tag.as_bytes());
        let s = sock(
            libc::SOCK_STREAM,
            UnixName::Unnamed,
            UnixSocketState::External { peer_name: raw },
        );
        let files = [ident(1, "", 0o140777, s)];
        let err = UnixSockets::plan_files(files.iter(), false)
            .take(&files[0], 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--ext-unix-sk"), "{err}");
        let mut u = UnixSockets::plan_files(files.iter(), true);
        let mut c = UnixStream::from(take(&mut u, &files, 1));
        let (mut s, _) = server.accept().unwrap();
        c.write_all(b"!").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        // A removed listener file: bound, then removed again.
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        let g = gone.to_str().unwrap();
        let l = sock(
            libc::SOCK_STREAM,
            UnixName::Path {
                bound: g.into(),
                uid: 0,
                gid: 0,
                dir: String::new(),
                removed: true,
            },
            UnixSocketState::Listening {
                backlog: 1,
                pending: vec![],
            },
        );
        let files = [ident(2, g, 0o140600, l)];
        let fd = take(&mut UnixSockets::plan_files(files.iter(), false), &files, 2);
        assert!(!gone.exists());
        assert_eq!(int_opt(&fd, libc::SO_ACCEPTCONN), 1);
    }
}
