//! Files in flight: the files that messages queued in UNIX sockets carry (SCM_RIGHTS), and the
//! credentials they carry (SCM_CREDENTIALS).
//!
//! Each carried file is an open file description of the image (a description of the socket's
//! process that no fd may refer to). Before the first UNIX socket is made, crest opens every
//! carried description that is not a UNIX socket, once for the tree like any other
//! ([`open_carried`]); the UNIX sockets among them are made with the others. When the sockets'
//! queues are filled again ([`super::sockets`]), each message is sent with its files
//! ([`send_message`]): from crest's descriptors, in queue order, one sendmsg per message.
//!
//! Credentials are sent as they were read; the kernel takes a pid only while a process has
//! it, and the queues are filled before the tree's processes are forked. For a pid that no
//! process has (one of the tree's), crest forks a placeholder under that pid for the send
//! ([`Placeholder`]): the message keeps the pid (its number, which the receiver reads) after
//! the placeholder ends and is reaped, which frees the number for the task restored under it.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::images::{FileKind, MessageCreds, ProcessImage};

use super::files::{self, TreeFiles};
use super::shmem::SharedMemory;
use super::RestoreError;

/// What the queues of the tree carry, ready to be sent: crest's descriptor of each carried
/// description that is not a UNIX socket, and the inode of each that is.
#[derive(Default)]
pub struct Carried {
    opened: HashMap<u32, OwnedFd>,
    sockets: HashMap<u32, u64>,
}

impl Carried {
    /// crest's descriptor of carried description `id`: one of `opened`, or the UNIX socket
    /// made for it among `made` (by inode).
    pub fn fd(&self, id: u32, made: &HashMap<u64, OwnedFd>) -> Option<RawFd> {
        if let Some(fd) = self.opened.get(&id) {
            return Some(fd.as_raw_fd());
        }
        self.sockets
            .get(&id)
            .and_then(|ino| made.get(ino))
            .map(|fd| fd.as_raw_fd())
    }
}

/// Every description that some queued message of `processes` carries.
fn carried_ids(processes: &[ProcessImage]) -> HashSet<u32> {
    processes
        .iter()
        .flat_map(|p| &p.files)
        .filter_map(|f| match &f.kind {
            FileKind::UnixSocket(s) => Some(s),
            _ => None,
        })
        .flat_map(|s| s.queue.iter().flat_map(|m| m.fds.iter().copied()))
        .collect()
}

/// Opens (in `tree`, once for the tree) every description that a queued message carries and
/// that is not a UNIX socket, and gives the sockets copies of them to send.
pub fn open_carried(
    processes: &[ProcessImage],
    base: RawFd,
    tree: &mut TreeFiles,
    shmem: &SharedMemory,
) -> Result<(), RestoreError> {
    let ids = carried_ids(processes);
    if ids.is_empty() {
        return Ok(());
    }
    let mut carried = Carried::default();
    for p in processes {
        for (i, ofd) in p.open_files.iter().enumerate() {
            if !ids.contains(&ofd.id)
                || carried.opened.contains_key(&ofd.id)
                || carried.sockets.contains_key(&ofd.id)
            {
                continue;
            }
            let ident = p.files.get(ofd.file as usize).ok_or_else(|| {
                RestoreError::BadImage(format!(
                    "process {}: description {} names file {}, which it does not list",
                    p.pid, ofd.id, ofd.file
                ))
            })?;
            if let FileKind::UnixSocket(_) = ident.kind {
                carried.sockets.insert(ofd.id, ident.ino);
                continue;
            }
            let fd = match files::open_checked(p, ofd, base, tree, shmem)? {
                Some(fd) => fd,
                None => files::open_made(p, i, ofd, base, tree)?,
            };
            let copy = fd.try_clone().map_err(|e| RestoreError::Os {
                what: format!(
                    "duplicating description {} of process {}, which a queued message carries",
                    ofd.id, p.pid
                ),
                source: e,
            })?;
            carried.opened.insert(ofd.id, copy);
        }
    }
    if let Some(missing) = ids
        .iter()
        .find(|id| !carried.opened.contains_key(id) && !carried.sockets.contains_key(id))
    {
        return Err(RestoreError::BadImage(format!(
            "a queued UNIX message carries description {missing}, which no process of the image \
             has"
        )));
    }
    tree.unix.carry(carried);
    Ok(())
}

/// Sends one queued message again through `sock` (to `to`, or its peer): `data` with the files
/// `fds` (crest's descriptors) and the credentials `creds`, in one sendmsg; a stream socket
/// takes what the first send leaves of the bytes in further sends.
pub fn send_message(
    sock: &OwnedFd,
    data: &[u8],
    to: Option<(&libc::sockaddr_un, libc::socklen_t)>,
    fds: &[RawFd],
    creds: Option<MessageCreds>,
) -> std::io::Result<()> {
    // Room for SCM_MAX_FD (253) fds and a struct ucred.
    let mut control = [0u64; 192];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain old data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some((addr, len)) = to {
        msg.msg_name = (addr as *const libc::sockaddr_un as *mut libc::sockaddr_un).cast();
        msg.msg_namelen = len;
    }
    let fd_bytes = std::mem::size_of_val(fds) as u32;
    let cred_bytes = std::mem::size_of::<libc::ucred>() as u32;
    // SAFETY: CMSG_SPACE only computes sizes.
    let space = unsafe {
        (if fds.is_empty() {
            0
        } else {
            libc::CMSG_SPACE(fd_bytes)
        }) + (if creds.is_some() {
            libc::CMSG_SPACE(cred_bytes)
        } else {
            0
        })
    } as usize;
    if space > std::mem::size_of_val(&control) {
        return Err(std::io::Error::from_raw_os_error(libc::E2BIG));
    }
    if space > 0 {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: the control buffer holds `space` bytes, room for the headers and payloads
        // written here, which the CMSG_* macros place within msg_controllen.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            if !fds.is_empty() {
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = libc::CMSG_LEN(fd_bytes) as usize;
                let out = libc::CMSG_DATA(c) as *mut RawFd;
                for (i, fd) in fds.iter().enumerate() {
                    std::ptr::write_unaligned(out.add(i), *fd);
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
            if let Some(cr) = creds {
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_CREDENTIALS;
                (*c).cmsg_len = libc::CMSG_LEN(cred_bytes) as usize;
                let u = libc::ucred {
                    pid: cr.pid,
                    uid: cr.uid,
                    gid: cr.gid,
                };
                std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut libc::ucred, u);
            }
        }
    }
    let sent = loop {
        // SAFETY: msg describes `data` (read only by sendmsg), the optional name and the
        // control buffer, all alive; MSG_NOSIGNAL keeps a failure from raising SIGPIPE.
        let n = unsafe {
            libc::sendmsg(
                sock.as_raw_fd(),
                &msg,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        break n as usize;
    };
    if sent < data.len() {
        // Only a stream sends part of a message; the rest goes without control data.
        return send_message(sock, &data[sent..], to, &[], None);
    }
    Ok(())
}

/// Runs `bind`, and when its name is taken (EADDRINUSE) runs it again after the kernel's
/// garbage collector of sockets in flight has had its chance ([`after_garbage_until`]).
pub fn after_garbage(mut bind: impl FnMut() -> std::io::Result<()>) -> std::io::Result<()> {
    let mut last = None;
    after_garbage_until(|| {
        let r = bind();
        let done = !matches!(&r, Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE));
        last = Some(r);
        done
    });
    last.expect("asked at least once")
}

/// Whether `done` comes true once the kernel's garbage collector of UNIX sockets in flight
/// has run: a socket queued in a queue it can itself reach (sent to itself, or two sent to
/// each other) outlives the killed process that held it, name and all, until that collector
/// runs, and it runs only when some UNIX socket is released. crest releases one to start it
/// and looks again a few times while it works (at most about a second in all). `done` is
/// asked first without waiting.
pub fn after_garbage_until(mut done: impl FnMut() -> bool) -> bool {
    if done() {
        return true;
    }
    // SAFETY: socket(2) takes only integers; the fd is closed right away, which is what starts
    // the collector.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd >= 0 {
            libc::close(fd);
        }
    }
    for _ in 0..50 {
        std::thread::sleep(std::time::Duration::from_millis(20));
        if done() {
            return true;
        }
    }
    false
}

/// Sends like [`send_message`]; when the kernel refuses the credentials' pid because no
/// process has it (ESRCH), sends again while a [`Placeholder`] holds that pid.
pub fn send_message_as(
    sock: &OwnedFd,
    data: &[u8],
    to: Option<(&libc::sockaddr_un, libc::socklen_t)>,
    fds: &[RawFd],
    creds: Option<MessageCreds>,
) -> Result<(), RestoreError> {
    match (send_message(sock, data, to, fds, creds), creds) {
        (Err(e), Some(c)) if e.raw_os_error() == Some(libc::ESRCH) => {
            let held = Placeholder::start(c.pid)?;
            let sent = send_message(sock, data, to, fds, creds);
            held.end()?;
            sent.map_err(|e| RestoreError::Os {
                what: format!("sending a message with the credentials of pid {}", c.pid),
                source: e,
            })
        }
        (r, _) => r.map_err(|e| RestoreError::Os {
            what: match creds {
                Some(c) => format!(
                    "sending a message with {} file(s) and the credentials pid {} uid {} gid {}",
                    fds.len(),
                    c.pid,
                    c.uid,
                    c.gid
                ),
                None => format!("sending a message with {} file(s)", fds.len()),
            },
            source: e,
        }),
    }
}

/// A child of crest's under a given pid, waiting for [`Placeholder::end`].
pub struct Placeholder {
    pid: i32,
    release: Option<OwnedFd>,
}

impl Placeholder {
    /// Forks a child under `pid` (clone3 set_tid) that only waits until released.
    pub fn start(pid: i32) -> Result<Placeholder, RestoreError> {
        let mut p = [-1; 2];
        // SAFETY: pipe2 writes two descriptors into `p`.
        if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(RestoreError::Os {
                what: format!("making a pipe for a placeholder of pid {pid}"),
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: both are fresh descriptors crest owns.
        let (r, w) = unsafe {
            (
                <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(p[0]),
                <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(p[1]),
            )
        };
        match super::fork::fork_with_pid(pid, libc::SIGCHLD)? {
            super::fork::Forked::Child => {
                // SAFETY: only raw system calls from here to _exit (the child is a copy of
                // crest and may not run its code): wait for the write end to close, then end.
                unsafe {
                    libc::close(w.as_raw_fd());
                    let mut b = 0u8;
                    loop {
                        let n = libc::read(r.as_raw_fd(), (&mut b as *mut u8).cast(), 1);
                        if n == 0 || (n < 0 && *libc::__errno_location() != libc::EINTR) {
                            break;
                        }
                    }
                    libc::_exit(0);
                }
            }
            super::fork::Forked::Parent => Ok(Placeholder {
                pid,
                release: Some(w),
            }),
        }
    }

    /// Lets the placeholder end and reaps it: its pid is free again.
    pub fn end(mut self) -> Result<(), RestoreError> {
        self.reap()
    }

    fn reap(&mut self) -> Result<(), RestoreError> {
        if self.release.take().is_none() {
            return Ok(());
        }
        loop {
            let mut status = 0;
            // SAFETY: waitpid on our own child, with a valid status pointer.
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::__WALL) };
            if r == self.pid {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            if r < 0 && e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(RestoreError::Os {
                what: format!("reaping the placeholder of pid {}", self.pid),
                source: e,
            });
        }
    }
}

impl Drop for Placeholder {
    fn drop(&mut self) {
        let _ = self.reap();
    }
}
