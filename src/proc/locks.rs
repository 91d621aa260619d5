//! File locks as the kernel lists them: the `lock:` lines of `/proc/PID/fdinfo/N` and the lines
//! of `/proc/locks`, which share one format (fs/locks.c, `lock_get_status`):
//!
//! `ID: [-> ]CLASS KIND TYPE PID MAJ:MIN:INO START END|EOF`
//!
//! CLASS is POSIX, OFDLCK, FLOCK, LEASE, DELEG, ACCESS or UNKNOWN; KIND is ADVISORY (MANDATORY on
//! kernels before 5.15) for locks, ACTIVE, BREAKING or BREAKER for leases; TYPE is READ, WRITE or
//! UNLCK. `->` marks a request blocked behind the lock above it (only `/proc/locks` lists
//! those). MAJ and MIN are hex (the superblock's device), START and END are decimal and
//! inclusive.
//!
//! procfs has `procfs::locks()`, but it drops the `->` marker, so a blocked waiter would read
//! as a lock held; hence this parser.

use std::io::Read;

use super::ProcError;

/// The CLASS column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockClass {
    /// fcntl F_SETLK / lockf: owned by a process.
    Posix,
    /// fcntl F_OFD_SETLK: owned by an open file description.
    Ofd,
    /// flock(2): owned by an open file description.
    Flock,
    /// fcntl F_SETLEASE; `breaking` while a conflicting open waits for it to be given up.
    Lease { breaking: bool },
    /// Anything else (DELEG, ACCESS, UNKNOWN, a mandatory lock), as the line reads.
    Other(String),
}

/// One parsed lock line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockLine {
    pub class: LockClass,
    /// A request waiting for the lock before it (`->`), not a lock held.
    pub blocked: bool,
    /// WRITE (true) or READ (false); UNLCK is refused by the parser except for leases being
    /// broken to nothing, which read as false.
    pub write: bool,
    /// Owner's pid (-1 for OFD locks).
    pub pid: i32,
    /// Superblock device (major, minor) and inode; None for `<none>:0` (no inode).
    pub inode: Option<(u32, u32, u64)>,
    /// First byte.
    pub start: u64,
    /// Last byte (inclusive), None for EOF (to the end of the file however far it grows).
    pub end: Option<u64>,
}

/// Parses one line (without the `lock:` prefix of fdinfo).
pub fn parse_lock_line(line: &str) -> Result<LockLine, String> {
    let bad = |what: &str| format!("lock line {line:?}: {what}");
    let mut words = line.split_whitespace();
    let id = words.next().ok_or_else(|| bad("empty"))?;
    if !id.ends_with(':') {
        return Err(bad("no id"));
    }
    let mut class = words.next().ok_or_else(|| bad("no class"))?;
    let blocked = class == "->";
    if blocked {
        class = words.next().ok_or_else(|| bad("no class"))?;
    }
    let kind = words.next().ok_or_else(|| bad("no kind"))?;
    let class = match (class, kind) {
        ("POSIX", "ADVISORY") => LockClass::Posix,
        ("OFDLCK", "ADVISORY") => LockClass::Ofd,
        ("FLOCK", "ADVISORY") => LockClass::Flock,
        ("LEASE", "ACTIVE") => LockClass::Lease { breaking: false },
        ("LEASE", "BREAKING") => LockClass::Lease { breaking: true },
        (c, k) => LockClass::Other(format!("{c} {k}")),
    };
    let write = match words.next().ok_or_else(|| bad("no type"))? {
        "WRITE" => true,
        "READ" => false,
        "UNLCK" if matches!(class, LockClass::Lease { .. } | LockClass::Other(_)) => false,
        t => return Err(bad(&format!("type {t:?}"))),
    };
    let pid = words
        .next()
        .and_then(|p| p.parse::<i32>().ok())
        .ok_or_else(|| bad("no pid"))?;
    let dev_ino = words.next().ok_or_else(|| bad("no device and inode"))?;
    let inode = if dev_ino.starts_with("<none>") {
        None
    } else {
        let mut parts = dev_ino.split(':');
        let mut hex = || {
            parts
                .next()
                .and_then(|p| u32::from_str_radix(p, 16).ok())
                .ok_or_else(|| bad("device"))
        };
        let (maj, min) = (hex()?, hex()?);
        let ino = parts
            .next()
            .and_then(|p| p.parse::<u64>().ok())
            .ok_or_else(|| bad("inode"))?;
        Some((maj, min, ino))
    };
    let start = words
        .next()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| bad("start"))?;
    let end = match words.next().ok_or_else(|| bad("no end"))? {
        "EOF" => None,
        e => Some(e.parse::<u64>().map_err(|_| bad("end"))?),
    };
    if end.is_some_and(|e| e < start) {
        return Err(bad("end before start"));
    }
    Ok(LockLine {
        class,
        blocked,
        write,
        pid,
        inode,
        start,
        end,
    })
}

/// The `lock:` lines of an fdinfo text.
pub(super) fn fdinfo_locks(text: &str) -> Result<Vec<LockLine>, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("lock:"))
        .map(parse_lock_line)
        .collect()
}

/// Every line of `/proc/locks` (blocked requests included; see [`LockLine::blocked`]).
pub fn all_locks() -> Result<Vec<LockLine>, ProcError> {
    let path = "/proc/locks";
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .map_err(|err| ProcError::Io {
            path: path.into(),
            err,
        })?;
    text.lines()
        .map(parse_lock_line)
        .collect::<Result<_, _>>()
        .map_err(|detail| ProcError::Parse {
            path: path.into(),
            detail,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_parses_and_waiters_are_marked() {
        let l = parse_lock_line("1: POSIX  ADVISORY  WRITE 723 00:14:16845 0 EOF").unwrap();
        assert_eq!(
            l,
            LockLine {
                class: LockClass::Posix,
                blocked: false,
                write: true,
                pid: 723,
                inode: Some((0, 0x14, 16845)),
                start: 0,
                end: None,
            }
        );
        let l = parse_lock_line("6: -> POSIX  ADVISORY  READ  1281 fd:00:16200 10 19").unwrap();
        assert!(l.blocked && !l.write);
        assert_eq!(
            (l.inode, l.start, l.end),
            (Some((0xfd, 0, 16200)), 10, Some(19))
        );
        let l = parse_lock_line("7: OFDLCK ADVISORY  READ  -1 00:06:1028 5 EOF").unwrap();
        assert_eq!((l.class, l.pid), (LockClass::Ofd, -1));
        let l = parse_lock_line("2: FLOCK  ADVISORY  WRITE 652 00:14:16763 0 EOF").unwrap();
        assert_eq!(l.class, LockClass::Flock);
        let l = parse_lock_line("3: LEASE  BREAKING  UNLCK 9 08:01:77 0 EOF").unwrap();
        assert_eq!(l.class, LockClass::Lease { breaking: true });
        let l = parse_lock_line("4: LEASE  ACTIVE    READ  9 08:01:77 0 EOF").unwrap();
        assert_eq!(l.class, LockClass::Lease { breaking: false });
        let l = parse_lock_line("5: DELEG  ACTIVE    READ  9 08:01:77 0 EOF").unwrap();
        assert_eq!(l.class, LockClass::Other("DELEG ACTIVE".into()));
        let l = parse_lock_line("8: POSIX  *NOINODE* WRITE 9 <none>:0 0 EOF").unwrap();
        assert_eq!(l.inode, None);
        for bad in [
            "",
            "POSIX ADVISORY WRITE 1 00:01:2 0 EOF",
            "1: POSIX ADVISORY UNLCK 1 00:01:2 0 EOF",
            "1: POSIX ADVISORY WRITE x 00:01:2 0 EOF",
            "1: POSIX ADVISORY WRITE 1 00:01 0 EOF",
            "1: POSIX ADVISORY WRITE 1 00:01:2 9 3",
            "1: POSIX ADVISORY WRITE 1 00:01:2 0",
        ] {
            assert!(parse_lock_line(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn fdinfo_lock_lines_are_found() {
        let text = "pos:\t0\nflags:\t02\nmnt_id:\t1\nino:\t5\n\
                    lock:\t1: FLOCK  ADVISORY  WRITE 10 08:01:5 0 EOF\n\
                    lock:\t2: POSIX  ADVISORY  READ  10 08:01:5 100 199\n";
        let locks = fdinfo_locks(text).unwrap();
        assert_eq!(locks.len(), 2);
        assert_eq!(locks[1].end, Some(199));
        assert!(fdinfo_locks("pos:\t0\nflags:\t0\n").unwrap().is_empty());
    }

    /// The real kernel lists a lock we hold, under our fd and in /proc/locks.
    #[test]
    fn our_own_flock_shows_in_fdinfo_and_proc_locks() {
        use std::os::fd::AsRawFd;
        let file = tempfile::tempfile().unwrap();
        // SAFETY: flock on a file we own.
        assert_eq!(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH) }, 0);
        let me = super::super::Proc::open(std::process::id() as i32).unwrap();
        let locks = me.fdinfo(file.as_raw_fd()).unwrap().locks;
        assert_eq!(locks.len(), 1, "{locks:?}");
        assert_eq!(locks[0].class, LockClass::Flock);
        assert!(!locks[0].write);
        let ino = std::os::unix::fs::MetadataExt::ino(&file.metadata().unwrap());
        assert!(all_locks()
            .unwrap()
            .iter()
            .any(|l| l.class == LockClass::Flock && l.inode.is_some_and(|i| i.2 == ino)));
    }
}
