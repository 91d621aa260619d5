//! `/proc/PID/fd` and `/proc/PID/fdinfo`: the fd table.

use std::io::Read;
use std::path::PathBuf;

use super::{Proc, ProcError};

/// What an fd's magic link points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FdTarget {
    /// A path (a file, directory or device); `deleted` when the kernel appended " (deleted)",
    /// which is removed from `path`.
    Path { path: PathBuf, deleted: bool },
    /// `socket:[inode]`.
    Socket(u64),
    /// `pipe:[inode]`.
    Pipe(u64),
    /// `anon_inode:[eventfd]`, `anon_inode:[eventpoll]`, ... (the part after the colon).
    AnonInode(String),
    /// `/memfd:NAME`.
    Memfd(String),
    /// A namespace file (`net:[INODE]`, `mnt:[INODE]`, ...): its type and inode.
    Namespace { ns: String, ino: u64 },
    /// Anything else, as the link reads.
    Other(String),
}

/// One entry of `/proc/PID/fd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenFd {
    pub fd: i32,
    pub target: FdTarget,
}

/// The fields of `/proc/PID/fdinfo/N` crest uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdInfo {
    /// File offset.
    pub pos: u64,
    /// `flags:` (octal in the file): the file status flags, with O_CLOEXEC added by the kernel
    /// when the fd has FD_CLOEXEC.
    pub flags: u32,
    /// `mnt_id:` of the mount the file was opened on.
    pub mnt_id: u64,
    /// `lock:` lines: flock, OFD locks and leases of this open file description, and POSIX
    /// locks of the process set through it.
    pub locks: Vec<super::LockLine>,
    /// `tty-index:` of a pseudo-terminal master (the N of its slave `/dev/pts/N`).
    pub tty_index: Option<u32>,
    /// What an eventfd, signalfd or timerfd shows of its state.
    pub event: Option<EventInfo>,
    /// `tfd:` lines of an epoll instance: its registrations, in the kernel's order.
    pub epoll: Vec<EpollLine>,
    /// `inotify wd:` lines of an inotify instance: its watches.
    pub inotify: Vec<InotifyLine>,
    /// `Pid:` of a pidfd (-1 once that process has been reaped).
    pub pidfd_pid: Option<i32>,
}

/// One `tfd: N events: HEX data: HEX ...` line of an epoll's fdinfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpollLine {
    pub tfd: i32,
    pub events: u32,
    pub data: u64,
}

/// One `inotify wd:HEX ino:HEX sdev:HEX mask:HEX ignored_mask:HEX fhandle-bytes:HEX
/// fhandle-type:HEX f_handle:HEX` line of an inotify instance's fdinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InotifyLine {
    pub wd: i32,
    pub ino: u64,
    /// The superblock's device number in the kernel's own encoding (major << 20 | minor).
    pub sdev: u32,
    pub mask: u32,
    /// The file handle (name_to_handle_at's), when the kernel has CONFIG_EXPORTFS.
    pub handle: Option<(i32, Vec<u8>)>,
}

impl InotifyLine {
    /// The watched inode's filesystem device number as stat shows it (st_dev).
    pub fn st_dev(&self) -> u64 {
        libc::makedev(self.sdev >> 20, self.sdev & 0xf_ffff)
    }
}

/// The `key:value` fields of a space-separated fdinfo line (after its `prefix`).
fn fields<'a>(line: &'a str, prefix: &str) -> Option<Vec<(&'a str, &'a str)>> {
    let rest = line.strip_prefix(prefix)?;
    Some(
        rest.split_whitespace()
            .filter_map(|f| f.split_once(':'))
            .collect(),
    )
}

/// The registrations listed by an epoll's fdinfo (`tfd:` may be padded: `tfd:        5`).
fn parse_epoll(text: &str) -> Result<Vec<EpollLine>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("tfd:") else {
            continue;
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        let bad = || format!("epoll line {line:?}");
        // N events: HEX data: HEX ...
        let tfd = words.first().and_then(|w| w.parse().ok()).ok_or_else(bad)?;
        let value = |key: &str| {
            words
                .iter()
                .position(|w| *w == key)
                .and_then(|i| words.get(i + 1))
                .copied()
        };
        let events = value("events:")
            .and_then(|v| u32::from_str_radix(v, 16).ok())
            .ok_or_else(bad)?;
        let data = value("data:")
            .and_then(|v| u64::from_str_radix(v, 16).ok())
            .ok_or_else(bad)?;
        out.push(EpollLine { tfd, events, data });
    }
    Ok(out)
}

/// The watches listed by an inotify instance's fdinfo.
fn parse_inotify(text: &str) -> Result<Vec<InotifyLine>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(f) = fields(line, "inotify ") else {
            continue;
        };
        let bad = || format!("inotify line {line:?}");
        let get = |key: &str| f.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        let hex = |key: &str| get(key).and_then(|v| u64::from_str_radix(v, 16).ok());
        let handle = match (get("fhandle-type"), get("f_handle")) {
            (Some(t), Some(h)) if h.len() % 2 == 0 => {
                let bytes: Option<Vec<u8>> = (0..h.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&h[i..i + 2], 16).ok())
                    .collect();
                Some((
                    i32::from_str_radix(t, 16).map_err(|_| bad())?,
                    bytes.ok_or_else(bad)?,
                ))
            }
            _ => None,
        };
        out.push(InotifyLine {
            wd: hex("wd").ok_or_else(bad)? as i32,
            ino: hex("ino").ok_or_else(bad)?,
            sdev: hex("sdev").ok_or_else(bad)? as u32,
            mask: hex("mask").ok_or_else(bad)? as u32,
            handle,
        });
    }
    Ok(out)
}

/// The state lines of an event fd's fdinfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventInfo {
    /// `eventfd-count:` (hex) and `eventfd-semaphore:` (0/1, Linux 6.2+; absent: 0).
    EventFd { count: u64, semaphore: bool },
    /// `sigmask:` (hex, the signals the signalfd reads).
    SignalFd { mask: u64 },
    /// `clockid:`, `ticks:`, `settime flags:` (octal), `it_value: (s, ns)`, `it_interval: (s,
    /// ns)`: the remaining time to the next expiry and the period.
    TimerFd {
        clock: i32,
        ticks: u64,
        settime_flags: u32,
        value_ns: u64,
        interval_ns: u64,
    },
}

/// `(sec, nsec)` as timerfd's fdinfo prints it, in nanoseconds.
fn timespec_ns(value: &str) -> Option<u64> {
    let (s, ns) = value
        .trim()
        .strip_prefix('(')?
        .strip_suffix(')')?
        .split_once(',')?;
    let (s, ns): (u64, u64) = (s.trim().parse().ok()?, ns.trim().parse().ok()?);
    s.checked_mul(1_000_000_000)?.checked_add(ns)
}

/// The event state in an fdinfo text, if it is an event fd's.
fn parse_event(text: &str) -> Result<Option<EventInfo>, String> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim))
    };
    let bad = |what: &str, v: &str| format!("{what} {v:?}");
    if let Some(v) = field("eventfd-count") {
        let count = u64::from_str_radix(v, 16).map_err(|_| bad("eventfd-count", v))?;
        let semaphore = field("eventfd-semaphore").is_some_and(|s| s == "1");
        return Ok(Some(EventInfo::EventFd { count, semaphore }));
    }
    if let Some(v) = field("sigmask") {
        let mask = u64::from_str_radix(v, 16).map_err(|_| bad("sigmask", v))?;
        return Ok(Some(EventInfo::SignalFd { mask }));
    }
    if let Some(v) = field("clockid") {
        let clock = v.parse().map_err(|_| bad("clockid", v))?;
        let ticks = field("ticks")
            .and_then(|t| t.parse().ok())
            .ok_or("no ticks: line")?;
        let settime_flags = field("settime flags")
            .and_then(|f| u32::from_str_radix(f, 8).ok())
            .ok_or("no settime flags: line")?;
        let value_ns = field("it_value")
            .and_then(timespec_ns)
            .ok_or("no it_value: line")?;
        let interval_ns = field("it_interval")
            .and_then(timespec_ns)
            .ok_or("no it_interval: line")?;
        return Ok(Some(EventInfo::TimerFd {
            clock,
            ticks,
            settime_flags,
            value_ns,
            interval_ns,
        }));
    }
    Ok(None)
}

fn convert(t: procfs::process::FDTarget) -> FdTarget {
    use procfs::process::FDTarget as T;
    match t {
        T::Path(p) => {
            let s = p.to_string_lossy();
            match s.strip_suffix(" (deleted)") {
                Some(stripped) => FdTarget::Path {
                    path: PathBuf::from(stripped),
                    deleted: true,
                },
                None => FdTarget::Path {
                    path: p,
                    deleted: false,
                },
            }
        }
        T::Socket(ino) => FdTarget::Socket(ino),
        T::Pipe(ino) => FdTarget::Pipe(ino),
        T::AnonInode(s) => FdTarget::AnonInode(s),
        T::MemFD(s) => FdTarget::Memfd(s),
        T::Net(ino) => FdTarget::Namespace {
            ns: "net".into(),
            ino,
        },
        T::Other(kind, ino) if super::tree::NAMESPACES.contains(&kind.as_str()) => {
            FdTarget::Namespace { ns: kind, ino }
        }
        T::Other(kind, ino) => FdTarget::Other(format!("{kind}:[{ino}]")),
        T::Unknown(kind, rest) => FdTarget::Other(format!("{kind}:{rest}")),
    }
}

/// Parses the text of an fdinfo file (`pos:\t0\nflags:\t02100002\nmnt_id:\t25\n...`).
fn parse_fdinfo(text: &str) -> Result<FdInfo, String> {
    let mut pos = None;
    let mut flags = None;
    let mut mnt_id = 0;
    let mut tty_index = None;
    let mut pidfd_pid = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "pos" => {
                pos = Some(
                    value
                        .parse::<u64>()
                        .map_err(|e| format!("pos {value:?}: {e}"))?,
                )
            }
            "flags" => {
                flags = Some(
                    u32::from_str_radix(value, 8).map_err(|e| format!("flags {value:?}: {e}"))?,
                )
            }
            "mnt_id" => mnt_id = value.parse::<u64>().unwrap_or(0),
            "tty-index" => tty_index = value.parse::<u32>().ok(),
            "Pid" => pidfd_pid = value.parse::<i32>().ok(),
            _ => {}
        }
    }
    Ok(FdInfo {
        pos: pos.ok_or("no pos: line")?,
        flags: flags.ok_or("no flags: line")?,
        mnt_id,
        locks: super::locks::fdinfo_locks(text)?,
        tty_index,
        event: parse_event(text)?,
        epoll: parse_epoll(text)?,
        inotify: parse_inotify(text)?,
        pidfd_pid,
    })
}

impl Proc {
    /// Every open fd, ascending.
    pub fn fds(&self) -> Result<Vec<OpenFd>, ProcError> {
        let iter = self
            .proc
            .fd()
            .map_err(|e| ProcError::procfs(self.pid, "fd", e))?;
        let mut fds = Vec::new();
        for fd in iter {
            match fd {
                Ok(info) => fds.push(OpenFd {
                    fd: info.fd,
                    target: convert(info.target),
                }),
                // An fd closed while we list them: the process is stopped, so only a racing
                // close before the freeze can do this; it is gone either way.
                Err(procfs::ProcError::NotFound(_)) => {}
                Err(e) => return Err(ProcError::procfs(self.pid, "fd", e)),
            }
        }
        fds.sort_by_key(|f| f.fd);
        Ok(fds)
    }

    /// Opens the file behind the process's fd `fd` anew, for reading and writing, through the
    /// `/proc/PID/fd/N` magic link (a new open file description of the same file; for a memfd,
    /// the same memory). Needs ptrace access to the process.
    pub fn reopen_fd(&self, fd: i32) -> Result<std::fs::File, ProcError> {
        let what = format!("fd/{fd}");
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{}/{what}", self.pid))
            .map_err(|e| ProcError::io(self.pid, &what, e))
    }

    /// Opens the file behind the process's fd `fd` anew, read-only, through the
    /// `/proc/PID/fd/N` magic link (works for a file that has been unlinked).
    pub fn reopen_fd_readonly(&self, fd: i32) -> Result<std::fs::File, ProcError> {
        let what = format!("fd/{fd}");
        std::fs::File::open(format!("/proc/{}/{what}", self.pid))
            .map_err(|e| ProcError::io(self.pid, &what, e))
    }

    /// `/proc/PID/fdinfo/N`.
    pub fn fdinfo(&self, fd: i32) -> Result<FdInfo, ProcError> {
        let what = format!("fdinfo/{fd}");
        let mut text = String::new();
        self.open_file(&what)?
            .read_to_string(&mut text)
            .map_err(|e| ProcError::io(self.pid, &what, e))?;
        parse_fdinfo(&text).map_err(|detail| ProcError::Parse {
            path: format!("/proc/{}/{what}", self.pid),
            detail,
        })
    }
}

impl Proc {
    /// Where the filesystem with device number `dev` (st_dev) is mounted in the process's
    /// mount namespace: the mount point of every mount of it, the mounts of its root first.
    pub fn mount_points_of(&self, dev: u64) -> Result<Vec<PathBuf>, ProcError> {
        let mounts = self
            .proc
            .mountinfo()
            .map_err(|e| ProcError::procfs(self.pid, "mountinfo", e))?;
        let want = format!("{}:{}", libc::major(dev), libc::minor(dev));
        let mut found: Vec<(bool, PathBuf)> = mounts
            .into_iter()
            .filter(|m| m.majmin == want)
            .map(|m| (m.root != "/", m.mount_point))
            .collect();
        found.sort_by_key(|(not_root, _)| *not_root);
        Ok(found.into_iter().map(|(_, p)| p).collect())
    }
}

/// A live process and one of its fds that hold the pipe with inode `ino`, if any process does
/// (the first found in pid order). Processes that vanish or cannot be read while the scan runs
/// are skipped: they cannot lend the pipe anyway.
pub fn find_pipe_holder(ino: u64) -> Option<(i32, i32)> {
    let all = procfs::process::all_processes().ok()?;
    for process in all.flatten() {
        let Ok(fds) = process.fd() else { continue };
        for info in fds.flatten() {
            if matches!(info.target, procfs::process::FDTarget::Pipe(i) if i == ino) {
                return Some((process.pid, info.fd));
            }
        }
    }
    None
}

/// A process other than crest and those `skip` names that has the inode `(dev, ino)` open,
/// with one such fd: for a FIFO, whose pipe (and buffered bytes) lives as long as anyone holds
/// it. Processes that vanish or whose fds cannot be read are passed over.
pub fn find_inode_holder(
    dev: u64,
    ino: u64,
    skip: &std::collections::HashSet<i32>,
) -> Option<(i32, i32)> {
    use std::os::unix::fs::MetadataExt;
    let me = std::process::id() as i32;
    let all = procfs::process::all_processes().ok()?;
    for process in all.flatten() {
        if process.pid == me || skip.contains(&process.pid) {
            continue;
        }
        let Ok(fds) = process.fd() else { continue };
        for info in fds.flatten() {
            if !matches!(info.target, procfs::process::FDTarget::Path(_)) {
                continue;
            }
            let link = format!("/proc/{}/fd/{}", process.pid, info.fd);
            if let Ok(md) = std::fs::metadata(&link) {
                if md.dev() == dev && md.ino() == ino {
                    return Some((process.pid, info.fd));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_text_parses() {
        let info = parse_fdinfo("pos:\t4096\nflags:\t02102001\nmnt_id:\t31\nino:\t77\n").unwrap();
        assert_eq!(info.pos, 4096);
        assert_eq!(info.flags, 0o2102001);
        assert_eq!(info.mnt_id, 31);
        assert_eq!(info.tty_index, None);
        let master = parse_fdinfo("pos:\t0\nflags:\t02\nmnt_id:\t24\nino:\t90\ntty-index:\t7\n");
        assert_eq!(master.unwrap().tty_index, Some(7));
        assert!(parse_fdinfo("flags:\t0\n").is_err());
        assert!(parse_fdinfo("pos:\tx\nflags:\t0\n").is_err());
    }

    #[test]
    fn epoll_inotify_and_pidfd_lines_parse() {
        let ep = parse_fdinfo(
            "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1038\n\
             tfd:        5 events: 40000019 data:                7  pos:0 ino:1c65ff sdev:f\n\
             tfd:        4 events: 80000019 data: ffffffffffffffff  pos:0 ino:40e sdev:10\n",
        )
        .unwrap();
        assert_eq!(
            ep.epoll,
            vec![
                EpollLine {
                    tfd: 5,
                    events: 0x4000_0019,
                    data: 7
                },
                EpollLine {
                    tfd: 4,
                    events: 0x8000_0019,
                    data: u64::MAX
                }
            ]
        );
        let ino = parse_fdinfo(
            "pos:\t0\nflags:\t04000\nmnt_id:\t17\nino:\t1038\n\
             inotify wd:2 ino:2e1 sdev:fe00001 mask:80000002 ignored_mask:0 fhandle-bytes:8 \
             fhandle-type:1 f_handle:e102000000000000\n",
        )
        .unwrap();
        assert_eq!(
            ino.inotify,
            vec![InotifyLine {
                wd: 2,
                ino: 0x2e1,
                sdev: 0xfe0_0001,
                mask: 0x8000_0002,
                handle: Some((1, vec![0xe1, 2, 0, 0, 0, 0, 0, 0])),
            }]
        );
        assert_eq!(ino.inotify[0].st_dev(), libc::makedev(0xfe, 1));
        let pidfd = parse_fdinfo("pos:\t0\nflags:\t02000002\nPid:\t25120\nNSpid:\t25120\n");
        assert_eq!(pidfd.unwrap().pidfd_pid, Some(25120));
        assert!(parse_fdinfo("pos:\t0\nflags:\t0\ntfd: x events: 1 data: 2\n").is_err());
    }
}
