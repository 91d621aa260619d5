//! POSIX message queues (mq_open(3)).
//!
//! Dump: crest opens the queue anew through `/proc/PID/fd/N` (a description of its own, made
//! non-blocking, so the program's O_NONBLOCK is untouched), reads its attributes (mq_getattr),
//! its notification owner (what read(2) of a queue file shows: `NOTIFY_PID:`), and its messages:
//! reading a message removes it, so every message is received and then all are sent back in
//! the same order before anything else happens, which leaves the queue as it was (the tree is
//! frozen, so nobody else receives or sends meanwhile). A registration (mq_notify) is refused:
//! the kernel does not show its sigev_value, so it could not be made again.
//!
//! Restore: the queue is created in crest's IPC namespace under its name (O_EXCL: a queue of
//! that name that exists is refused, as the dump that killed the tree removed the one it
//! captured), owner and mode set, refilled, and unlinked again if it was; every description is
//! a new open of it through `/proc/self/fd/N` with its access mode and O_NONBLOCK.

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use crate::images::{FileIdentity, FileKind, MqMessage, Mqueue};

/// statfs `f_type` of the mqueue filesystem (linux/magic.h).
pub const MQUEUE_MAGIC: i64 = 0x1980_0202;

/// The status line read(2) of a queue file returns: `QSIZE:.. NOTIFY:.. SIGNO:.. NOTIFY_PID:..`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub notify_pid: i32,
    pub signo: i32,
}

/// Parses the status line of a queue file.
pub fn parse_status(text: &str) -> Result<Status, String> {
    let field = |key: &str| -> Result<i32, String> {
        let rest = text
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .ok_or_else(|| format!("no {key} in the queue's status {text:?}"))?;
        rest.parse()
            .map_err(|_| format!("{key} is {rest:?} in the queue's status"))
    };
    Ok(Status {
        notify_pid: field("NOTIFY_PID:")?,
        signo: field("SIGNO:")?,
    })
}

fn getattr(fd: &impl AsRawFd) -> std::io::Result<libc::mq_attr> {
    // SAFETY: an all-zero mq_attr is valid plain data, filled by the kernel.
    let mut attr: libc::mq_attr = unsafe { std::mem::zeroed() };
    // SAFETY: mq_getattr writes one mq_attr into `attr`; the fd is a queue descriptor.
    if unsafe { libc::mq_getattr(fd.as_raw_fd(), &mut attr) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(attr)
}

fn send(fd: &impl AsRawFd, m: &MqMessage) -> std::io::Result<()> {
    // SAFETY: mq_send reads `data.len()` bytes from the message's buffer.
    let r = unsafe {
        libc::mq_send(
            fd.as_raw_fd(),
            m.data.as_ptr().cast(),
            m.data.len(),
            m.priority,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Receives every message of the queue open (read-write, non-blocking) as `fd`, whose
/// messages are at most `msgsize` bytes, then sends them all back in the same order, so the
/// queue is left as it was. Returns them in receive order.
fn drain_and_refill(fd: &impl AsRawFd, msgsize: usize) -> Result<Vec<MqMessage>, String> {
    let mut buf = vec![0u8; msgsize.max(1)];
    let mut messages = Vec::new();
    let mut failure = None;
    loop {
        let mut priority = 0u32;
        // SAFETY: mq_receive writes at most `buf.len()` bytes into `buf` and the priority
        // into `priority`.
        let n = unsafe {
            libc::mq_receive(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut priority,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EAGAIN) {
                failure = Some(format!("mq_receive failed: {e}"));
            }
            break;
        }
        messages.push(MqMessage {
            priority,
            data: buf[..n as usize].to_vec(),
        });
    }
    // Always put back what was taken, even when receiving failed half-way.
    let mut lost = 0;
    let mut first_error = None;
    for m in &messages {
        if let Err(e) = send(fd, m) {
            lost += 1;
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        return Err(format!(
            "putting back its messages (mq_send) failed for {lost} of {}: {e}; they are lost",
            messages.len()
        ));
    }
    match failure {
        Some(f) => Err(f),
        None => Ok(messages),
    }
}

/// The image's description of the queue that `queue` (crest's own read-write descriptor of
/// it, opened through `/proc/PID/fd/N`) is, named `shown` by the fd's link (`/NAME`, without
/// " (deleted)"). Refuses a queue with a notification registration.
pub fn identity(
    mut queue: std::fs::File,
    shown: &str,
    unlinked: bool,
) -> Result<FileIdentity, String> {
    let md = queue
        .metadata()
        .map_err(|e| format!("fstat of the queue failed: {e}"))?;
    let mut text = String::new();
    queue
        .read_to_string(&mut text)
        .map_err(|e| format!("reading the queue's status failed: {e}"))?;
    let status = parse_status(&text)?;
    if status.notify_pid != 0 {
        return Err(format!(
            "has a notification registered by pid {} (mq_notify, signal {}), which crest \
             cannot restore (the kernel does not show its value); cancel it before the dump",
            status.notify_pid, status.signo
        ));
    }
    let name = shown
        .strip_prefix('/')
        .filter(|n| !n.is_empty() && !n.contains('/'))
        .ok_or_else(|| format!("its link {shown:?} is not /NAME"))?;
    // SAFETY: F_GETFL/F_SETFL on crest's own descriptor change only its status flags.
    unsafe {
        let flags = libc::fcntl(queue.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(queue.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0
        {
            return Err(format!(
                "making crest's descriptor of it non-blocking failed: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    let attr = getattr(&queue).map_err(|e| format!("mq_getattr failed: {e}"))?;
    let messages = drain_and_refill(&queue, attr.mq_msgsize as usize)?;
    if messages.len() as i64 != attr.mq_curmsgs {
        return Err(format!(
            "it held {} messages, but {} were received",
            attr.mq_curmsgs,
            messages.len()
        ));
    }
    let kind = FileKind::Mqueue(Mqueue {
        name: name.to_string(),
        unlinked,
        uid: md.uid(),
        gid: md.gid(),
        maxmsg: attr.mq_maxmsg,
        msgsize: attr.mq_msgsize,
        messages,
    });
    let mut ident = super::object_identity(shown.to_string(), kind, md.dev(), md.ino());
    ident.mode = md.mode();
    Ok(ident)
}

/// Creates queue `q` (mode `mode`) in crest's IPC namespace, refilled with its messages, and
/// unlinks it again if it was unlinked. Returns crest's read-write descriptor of it, through
/// which every description is opened ([`open_description`]).
pub fn create(q: &Mqueue, mode: u32) -> Result<OwnedFd, String> {
    let cname = CString::new(format!("/{}", q.name))
        .map_err(|_| format!("the queue name {:?} has a NUL byte", q.name))?;
    // SAFETY: an all-zero mq_attr is valid plain data.
    let mut attr: libc::mq_attr = unsafe { std::mem::zeroed() };
    attr.mq_maxmsg = q.maxmsg;
    attr.mq_msgsize = q.msgsize;
    // SAFETY: mq_open with O_CREAT takes the mode and a pointer to an mq_attr that lives
    // through the call.
    let raw = unsafe {
        libc::mq_open(
            cname.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NONBLOCK | libc::O_CLOEXEC,
            (mode & 0o777) as libc::mode_t,
            &mut attr as *mut libc::mq_attr,
        )
    };
    if raw < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EEXIST) {
            return Err(format!(
                "a queue named /{} exists already (the dump that captured it removes it \
                 only when it kills the tree); remove it with mq_unlink first",
                q.name
            ));
        }
        return Err(format!("mq_open (O_CREAT) failed: {e}"));
    }
    // SAFETY: raw is a new descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let unlink = || {
        // SAFETY: mq_unlink takes a NUL-terminated name.
        unsafe { libc::mq_unlink(cname.as_ptr()) };
    };
    let fill = || -> Result<(), String> {
        // The mode mq_open gave was filtered through crest's umask.
        // SAFETY: fchmod/fchown on a descriptor we own.
        if unsafe { libc::fchmod(fd.as_raw_fd(), (mode & 0o7777) as libc::mode_t) } < 0 {
            return Err(format!(
                "fchmod failed: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: as above.
        if unsafe { libc::fchown(fd.as_raw_fd(), q.uid, q.gid) } < 0 {
            return Err(format!(
                "fchown failed: {}",
                std::io::Error::last_os_error()
            ));
        }
        for m in &q.messages {
            send(&fd, m).map_err(|e| format!("mq_send failed: {e}"))?;
        }
        Ok(())
    };
    if let Err(why) = fill() {
        unlink();
        return Err(why);
    }
    if q.unlinked {
        unlink();
    }
    Ok(fd)
}

/// Removes the named queues of `files` (crest's IPC namespace) after the tree that held them
/// was killed: the image owns them now. One whose message count changed since is left, with
/// a note. Returns the notes.
pub fn remove_captured<'a>(files: impl Iterator<Item = &'a FileIdentity>) -> Vec<String> {
    let mut notes = Vec::new();
    let mut done = std::collections::HashSet::new();
    for f in files {
        let FileKind::Mqueue(q) = &f.kind else {
            continue;
        };
        if q.unlinked || !done.insert(q.name.clone()) {
            continue;
        }
        let Ok(cname) = CString::new(format!("/{}", q.name)) else {
            continue;
        };
        // SAFETY: mq_open without O_CREAT takes the name only.
        let raw = unsafe { libc::mq_open(cname.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if raw < 0 {
            continue;
        }
        // SAFETY: raw is a new descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let same = std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map(|md| md.ino() == f.ino)
            .unwrap_or(false);
        let count = getattr(&fd).map(|a| a.mq_curmsgs).ok();
        if !same {
            continue;
        }
        if count != Some(q.messages.len() as i64) {
            notes.push(format!(
                "the POSIX message queue /{} was used by a process outside the tree after the \
                 dump; it was left in place, and a restore on this machine will refuse until \
                 it is removed",
                q.name
            ));
            continue;
        }
        // SAFETY: mq_unlink takes a NUL-terminated name.
        if unsafe { libc::mq_unlink(cname.as_ptr()) } < 0 {
            notes.push(format!(
                "removing the POSIX message queue /{} failed: {}",
                q.name,
                std::io::Error::last_os_error()
            ));
        }
    }
    notes
}

/// A new description of the queue crest holds as `queue`, with `flags`' access mode and
/// O_NONBLOCK.
pub fn open_description(queue: &OwnedFd, flags: i32) -> std::io::Result<OwnedFd> {
    let path = CString::new(format!("/proc/self/fd/{}", queue.as_raw_fd()))
        .expect("no NUL in a /proc path");
    let flags = flags & (libc::O_ACCMODE | libc::O_NONBLOCK);
    // SAFETY: open of a NUL-terminated path.
    let raw = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: raw is a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_is_parsed() {
        let s =
            parse_status("QSIZE:12         NOTIFY:0     SIGNO:10    NOTIFY_PID:345   \n").unwrap();
        assert_eq!(
            s,
            Status {
                notify_pid: 345,
                signo: 10
            }
        );
        assert!(parse_status("QSIZE:1").is_err());
    }

    /// A queue of this test's: captured with its messages in receive order and left as it
    /// was; created again under another name from the capture, it holds the same messages.
    #[test]
    fn queue_is_captured_without_loss_and_recreated() {
        let name = format!("crest-unit-{}", std::process::id());
        let again = format!("{name}-again");
        let q = Mqueue {
            name: name.clone(),
            unlinked: false,
            uid: 0,
            gid: 0,
            maxmsg: 5,
            msgsize: 16,
            messages: vec![
                MqMessage {
                    priority: 1,
                    data: b"low".to_vec(),
                },
                MqMessage {
                    priority: 7,
                    data: b"high".to_vec(),
                },
                MqMessage {
                    priority: 7,
                    data: b"".to_vec(),
                },
            ],
        };
        let fd = create(&q, 0o640).unwrap();
        let cleanup = || {
            for n in [&name, &again] {
                let c = CString::new(format!("/{n}")).unwrap();
                // SAFETY: mq_unlink takes a NUL-terminated name.
                unsafe { libc::mq_unlink(c.as_ptr()) };
            }
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .unwrap();
        let ident = identity(file, &format!("/{name}"), false);
        let left = getattr(&fd).map(|a| a.mq_curmsgs);
        let FileKind::Mqueue(got) = ident.as_ref().map(|i| i.kind.clone()).unwrap() else {
            cleanup();
            panic!("not a queue");
        };
        let mut copy = got.clone();
        copy.name = again.clone();
        let made = create(&copy, 0o600);
        let drained = made
            .as_ref()
            .map(|f| drain_and_refill(f, 16).unwrap())
            .unwrap();
        cleanup();
        assert_eq!(left.unwrap(), 3);
        assert_eq!(ident.unwrap().mode & 0o777, 0o640);
        let order: Vec<_> = got.messages.iter().map(|m| m.priority).collect();
        assert_eq!(order, [7, 7, 1]);
        assert_eq!(got.messages[0].data, b"high");
        assert_eq!((got.maxmsg, got.msgsize), (5, 16));
        assert_eq!(drained, got.messages);
    }
}
