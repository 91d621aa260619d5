//! What keeps a lazily restored tree from running on with wrong memory when crest dies.
//!
//! The danger: the restored processes' userfaultfds live only in crest (the restorer closes its
//! copy). If crest dies, the kernel releases them, which unregisters every lazy range
//! (fs/userfaultfd.c `userfaultfd_release`); the next touch of a page not yet copied then
//! maps a fresh zero page, and the program runs on with zeros where its data was.
//!
//! The guard: a small process (`crest lazy-watchdog`, started by crest and in a session of its
//! own so a terminal's ^C does not reach it) that holds a copy of every userfaultfd and one end
//! of a socket pair whose other end only crest has. While it holds them, a fault nobody serves
//! waits instead of reading zeros. crest forwards the userfaultfd of every child the tree forks
//! meanwhile (SCM_RIGHTS) and says `D` once every page is in, upon which the watchdog exits
//! (and its copies go). If instead the socket reaches end-of-file without `D` — crest was
//! killed, or its page server failed and dropped its end — the watchdog kills every process
//! of the tree (the roots through pidfds taken at its start, their descendants as /proc shows
//! them) with SIGKILL, says so on its standard error, and only then exits.
//!
//! Left: a child forked in the instant between crest reading its fork event and forwarding its
//! userfaultfd is not covered if crest dies right then (its memory then faults in zeros until
//! the watchdog's kill reaches it a moment later).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use super::LazyError;

/// Message: every page is in; exit without killing.
const DONE: u8 = b'D';
/// Message: hold the descriptor that comes with it.
const HOLD: u8 = b'F';

/// crest's side of the watchdog.
pub struct Watchdog {
    sock: Option<OwnedFd>,
    child: Child,
}

impl Watchdog {
    /// Starts the watchdog over the tree `pids`, holding `uffds` (crest's copies).
    pub fn start(pids: &[i32], uffds: &[RawFd]) -> Result<Watchdog, LazyError> {
        let (ours, theirs) = socket_pair()?;
        let mut keep: Vec<RawFd> = uffds.to_vec();
        keep.push(theirs.as_raw_fd());
        keep.sort_unstable();
        let theirs_fd = theirs.as_raw_fd();
        let exe = std::env::current_exe().map_err(|e| LazyError::Os {
            what: "finding crest's own executable for the watchdog".into(),
            source: e,
        })?;
        let mut cmd = Command::new(exe);
        cmd.arg("lazy-watchdog")
            .arg(theirs_fd.to_string())
            .args(pids.iter().map(|p| p.to_string()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe system calls on the prepared, sorted `keep` list.
        unsafe {
            cmd.pre_exec(move || {
                libc::setsid();
                let mut from: u32 = 3;
                for &k in &keep {
                    let k = k as u32;
                    if k > from {
                        libc::syscall(libc::SYS_close_range, from, k - 1, 0u32);
                    }
                    from = from.max(k + 1);
                    // Kept across exec.
                    libc::fcntl(k as RawFd, libc::F_SETFD, 0);
                }
                libc::syscall(libc::SYS_close_range, from, u32::MAX, 0u32);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| LazyError::Os {
            what: "starting the lazy-pages watchdog".into(),
            source: e,
        })?;
        drop(theirs);
        Ok(Watchdog {
            sock: Some(ours),
            child,
        })
    }

    /// Gives the watchdog a copy of a new userfaultfd (a forked child's).
    pub fn hold(&self, uffd: RawFd) -> Result<(), LazyError> {
        let sock = self.sock.as_ref().expect("open until done");
        send(sock.as_raw_fd(), HOLD, Some(uffd)).map_err(|e| LazyError::Os {
            what: "handing a userfaultfd to the lazy-pages watchdog".into(),
            source: e,
        })
    }

    /// Every page is in: the watchdog exits without killing anything.
    pub fn done(mut self) {
        if let Some(sock) = self.sock.take() {
            let _ = send(sock.as_raw_fd(), DONE, None);
        }
        let _ = self.child.wait();
    }

    /// The page server failed: the watchdog kills the tree (it sees end-of-file without
    /// `D`); returns once it has.
    pub fn kill_tree(mut self) {
        self.sock.take();
        let _ = self.child.wait();
    }
}

fn socket_pair() -> Result<(OwnedFd, OwnedFd), LazyError> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| LazyError::Os {
        what: "creating the socket pair of the lazy-pages watchdog".into(),
        source: e.into(),
    })
}

/// Sends one message: the byte `what`, with `fd` attached (SCM_RIGHTS) when given.
fn send(sock: RawFd, what: u8, fd: Option<RawFd>) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds: Vec<RawFd> = fd.into_iter().collect();
    let rights = [ControlMessage::ScmRights(&fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    let byte = [what];
    let iov = [std::io::IoSlice::new(&byte)];
    loop {
        match sendmsg::<()>(sock, &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one message: its byte (None at end of file) and the descriptor it carries.
fn recv(sock: RawFd) -> Option<(u8, Option<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut byte = [0u8];
    let mut control = nix::cmsg_space!(RawFd);
    let (n, raw) = loop {
        let mut iov = [std::io::IoSliceMut::new(&mut byte)];
        match recvmsg::<()>(
            sock,
            &mut iov,
            Some(&mut control),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => {
                let raw: Vec<RawFd> = m
                    .cmsgs()
                    .into_iter()
                    .flatten()
                    .flat_map(|c| match c {
                        ControlMessageOwned::ScmRights(fds) => fds,
                        _ => Vec::new(),
                    })
                    .collect();
                break (m.bytes, raw);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return None,
        }
    };
    // SAFETY: the kernel installed these descriptors in crest for this message; nothing else
    // owns them.
    let mut fds: Vec<OwnedFd> = raw
        .into_iter()
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    if n == 0 {
        return None;
    }
    Some((byte[0], fds.pop()))
}

/// The watchdog process (`crest lazy-watchdog SOCKET PID...`): returns its exit code.
pub fn run(sock: RawFd, pids: &[i32]) -> i32 {
    // pidfds now, while the tree is crest's and alive: a pid reused later is not killed.
    let roots: Vec<(i32, Option<OwnedFd>)> = pids.iter().map(|&p| (p, pidfd_open(p))).collect();
    let mut held: Vec<OwnedFd> = Vec::new();
    while let Some((what, fd)) = recv(sock) {
        held.extend(fd);
        if what == DONE {
            return 0;
        }
    }
    let killed = kill_tree(&roots);
    if killed.is_empty() {
        // The tree had ended already (a failed restore killed it).
        return 1;
    }
    eprintln!(
        "crest: crest restore ended before every lazy page was in; killed the restored \
         process(es) {} so that they do not run on with missing memory",
        killed
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    drop(held);
    1
}

/// SIGKILLs every live descendant of the tree's processes, then the processes themselves
/// (descendants first: a killed parent's children would leave the tree for init); returns the
/// pids killed.
fn kill_tree(roots: &[(i32, Option<OwnedFd>)]) -> Vec<i32> {
    let mut killed = Vec::new();
    let is_root = |pid: i32| roots.iter().any(|(p, _)| *p == pid);
    // Walk again until a walk finds nobody new alive (a fork may be under way).
    for _ in 0..100 {
        let mut found = Vec::new();
        let mut todo: Vec<i32> = roots.iter().map(|(p, _)| *p).collect();
        let mut seen = std::collections::HashSet::new();
        while let Some(pid) = todo.pop() {
            if !seen.insert(pid) {
                continue;
            }
            let Ok(proc) = crate::proc::Proc::open(pid) else {
                continue;
            };
            if let Ok(kids) = proc.children() {
                todo.extend(kids);
            }
            let alive = proc
                .tree_ids()
                .is_ok_and(|t| t.state != 'Z' && t.state != 'X');
            if alive && !is_root(pid) && !killed.contains(&pid) {
                found.push(pid);
            }
        }
        if found.is_empty() {
            break;
        }
        for &pid in &found {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        killed.extend(found);
    }
    for (pid, fd) in roots {
        if let Some(fd) = fd {
            // SAFETY: pidfd_send_signal on our pidfd, no siginfo.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<u8>(),
                    0,
                )
            };
            if r == 0 {
                killed.push(*pid);
            }
        }
    }
    killed
}

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: r is a new descriptor we own.
    (r >= 0).then(|| unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}
