//! Files in flight: what messages queued in UNIX sockets carry (SCM_RIGHTS).
//!
//! Peeking a queued message ([`super::sockets`]) puts the files it carries into crest as new
//! fds. Each is an open file description like any other, and possibly one that no process
//! holds any more (sent, then closed by the sender). Per process, once its fd table is read:
//! - crest's fds on them are recorded by the same code as a process's fds, from crest's own
//!   fd table ([`super::fds::OwnWalk`]); a socket among them has its own queue peeked in turn,
//!   to at most [`MAX_DEPTH`] levels (a socket queued in itself is recorded once: the file
//!   table knows its inode);
//! - each description is matched (kcmp) with the process's own descriptions: one the process
//!   holds too is that one; the others are added as descriptions of the process that no fd
//!   refers to, crest's fd standing for their holder ([`super::fds::FdTable::holder_of`]);
//! - crest keeps those fds open until the dump ends, so their numbers name them uniquely in
//!   the whole tree; once every description has its tree-wide id ([`super::shared`]), each
//!   message's fds become those ids ([`to_tree_ids`]).

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::images::FileKind;
use crate::proc::Proc;
use crate::sys;

use super::fds::{FdTable, OwnWalk};
use super::files::FileTable;
use super::process::CollectedProcess;
use super::DumpError;

/// How deep sockets carried in queues are followed: a message carrying a socket whose queue
/// carries a socket ... (four levels).
pub const MAX_DEPTH: usize = 4;

/// Records the files `carried` (crest's fds, named by the queues of `files`) as descriptions of
/// process `pid`'s `table`.
pub fn add_carried(
    pid: i32,
    table: &mut FdTable,
    files: &mut FileTable,
    carried: Vec<OwnedFd>,
) -> Result<(), DumpError> {
    if carried.is_empty() {
        return Ok(());
    }
    let own = Proc::open(std::process::id() as i32)?;
    let mut walk = OwnWalk::new(&own);
    let mut level: Vec<i32> = carried.iter().map(|f| f.as_raw_fd()).collect();
    let mut kept = carried;
    for depth in 0.. {
        if level.is_empty() {
            break;
        }
        if depth == MAX_DEPTH {
            let socket = carrier(files, level[0]).unwrap_or(0);
            return Err(DumpError::Carried {
                pid,
                socket,
                what: format!(
                    "a socket whose queue carries files in turn, in sockets nested more than \
                     {MAX_DEPTH} levels deep in flight; crest follows them no deeper"
                ),
            });
        }
        let more = walk.add(&level, files).map_err(|(fd, e)| match e {
            DumpError::UnsupportedFd { what, .. } => DumpError::Carried {
                pid,
                socket: carrier(files, fd).unwrap_or(0),
                what,
            },
            e => e,
        })?;
        level = more.iter().map(|f| f.as_raw_fd()).collect();
        kept.extend(more);
    }
    let own_table = walk.into_table();
    let mut problems = Vec::new();
    for (cd, ofd) in own_table.open_files.iter().enumerate() {
        let ident = files.get(ofd.file);
        if let Some(why) = unsupported(ident) {
            let cfd = own_table.holder(cd as u32);
            problems.push(DumpError::Carried {
                pid,
                socket: carrier(files, cfd).unwrap_or(0),
                what: format!("{why} ({})", shown(ident)),
            });
        }
    }
    DumpError::refused(problems)?;
    let crest = std::process::id() as i32;
    // crest's descriptions -> the process's.
    let mut mapped = Vec::with_capacity(own_table.open_files.len());
    for (cd, ofd) in own_table.open_files.iter().enumerate() {
        let cfd = own_table.holder(cd as u32);
        let inode = |file: u32| {
            let f = files.get(file);
            (f.dev, f.ino)
        };
        let mut found = None;
        for (vd, v) in table.open_files.iter().enumerate() {
            // By inode, not by file entry: every event fd (one anonymous inode) is an entry of
            // its own.
            if inode(v.file) != inode(ofd.file) {
                continue;
            }
            let (hpid, hfd) = table.holder_of(pid, vd as u32);
            let same =
                sys::kcmp_same_file(hpid, crest, hfd, cfd).map_err(|errno| DumpError::Kcmp {
                    pid,
                    fd1: hfd,
                    fd2: cfd,
                    errno,
                })?;
            if same {
                found = Some(vd as u32);
                break;
            }
        }
        let d = match found {
            Some(d) => d,
            None => {
                let d = table.open_files.len() as u32;
                table.open_files.push(ofd.clone());
                table.in_flight.push((d, cfd));
                d
            }
        };
        mapped.push(d);
    }
    for f in &own_table.fds {
        table.carried.insert(f.fd, mapped[f.description as usize]);
    }
    table.carried_fds.extend(kept);
    Ok(())
}

/// Why file `ident` cannot be restored from a queue: its content or state is captured through
/// the process's own fds or mappings only (memfds, deleted files, FIFOs), or per process (TCP
/// connections in repair mode, the shell's terminal, a /proc file of a process, which the
/// process that holds it opens again).
fn unsupported(ident: &crate::images::FileIdentity) -> Option<&'static str> {
    if super::procfiles::proc_pid_of(&ident.path).is_some() {
        return Some("a /proc file of a process");
    }
    Some(match &ident.kind {
        FileKind::Memfd { .. } => "a memfd",
        FileKind::Ghost(_) | FileKind::ContentInImage => "a deleted file",
        FileKind::Fifo(_) => "a FIFO",
        FileKind::Tcp(_) => "a TCP socket",
        FileKind::ShellTerminal { .. } => "a terminal",
        _ => return None,
    })
}

/// A file's name for messages: its path, or its kind and inode.
fn shown(ident: &crate::images::FileIdentity) -> String {
    match ident.path.as_str() {
        "" => format!("inode {}", ident.ino),
        path => path.to_string(),
    }
}

/// The inode of the socket of `files` whose queue names crest's fd `fd`.
fn carrier(files: &FileTable, fd: i32) -> Option<u64> {
    files.all().iter().find_map(|f| match &f.kind {
        FileKind::UnixSocket(s) if s.queue.iter().any(|m| m.fds.contains(&(fd as u32))) => {
            Some(f.ino)
        }
        _ => None,
    })
}

/// Once every description has its tree-wide id: the fds each queued message carries, named by
/// crest's fds until now, become the ids of their descriptions.
pub fn to_tree_ids(procs: &mut [CollectedProcess]) -> Result<(), DumpError> {
    let mut ids: HashMap<u32, u32> = HashMap::new();
    for p in procs.iter() {
        for (&fd, &d) in &p.fd_table.carried {
            ids.insert(fd as u32, p.fd_table.open_files[d as usize].id);
        }
    }
    for p in procs.iter_mut() {
        let pid = p.pid();
        for i in 0..p.files.all().len() as u32 {
            let ident = p.files.get_mut(i);
            let ino = ident.ino;
            let FileKind::UnixSocket(s) = &mut ident.kind else {
                continue;
            };
            for m in &mut s.queue {
                for fd in &mut m.fds {
                    *fd = *ids.get(fd).ok_or_else(|| DumpError::Carried {
                        pid,
                        socket: ino,
                        what: format!(
                            "crest's fd {fd}, which no process's table of carried files lists \
                             (a bug in crest)"
                        ),
                    })?;
                }
            }
        }
    }
    Ok(())
}
