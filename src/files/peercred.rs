//! SO_PEERCRED of an AF_UNIX socket: the pid, uid and gid the kernel recorded for its peer
//! when the connection was made. Read at dump time, and again after the restore made the
//! socket, to see that it came back.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

use crate::images::MessageCreds;

/// The socket's SO_PEERCRED, or None when it has none (the kernel reports pid 0: a fresh
/// socket, or a datagram socket connected with connect(2)). The pid is as the caller's pid
/// namespace sees it (0, so none, for a pid it cannot see).
pub fn read(fd: BorrowedFd<'_>) -> Result<Option<MessageCreds>, Errno> {
    let mut c = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: c and len are valid for writes of the sizes given.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut c as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok((c.pid > 0).then_some(MessageCreds {
        pid: c.pid,
        uid: c.uid,
        gid: c.gid,
    }))
}

/// "pid P uid U gid G", or "none", for messages.
pub fn shown(c: Option<MessageCreds>) -> String {
    match c {
        Some(c) => format!("pid {} uid {} gid {}", c.pid, c.uid, c.gid),
        None => "none".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::{UnixDatagram, UnixStream};

    #[test]
    fn a_pair_names_its_creator_and_a_fresh_socket_none() {
        let (a, b) = UnixStream::pair().unwrap();
        let me = std::process::id() as i32;
        // SAFETY: geteuid/getegid only read the caller's ids.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        for s in [&a, &b] {
            assert_eq!(
                read(s.as_fd()).unwrap(),
                Some(MessageCreds { pid: me, uid, gid })
            );
        }
        let lone = UnixDatagram::unbound().unwrap();
        assert_eq!(read(lone.as_fd()).unwrap(), None);
        assert_eq!(shown(None), "none");
    }
}
