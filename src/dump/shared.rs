//! What the processes of a tree share, resolved once every process is collected.
//!
//! - Open file descriptions inherited across fork are one description: each gets a tree-wide
//!   id (kcmp KCMP_FILE between a holder in each process), so a restore opens it once and every
//!   process gets the same one back (one offset, one set of status flags, one lock owner).
//! - A pipe whose read and write ends are both held inside the tree is whole: its buffered bytes
//!   are captured (once) and it is recreated; one with an end outside stays external.
//! - UNIX sockets: pairs, waiting connections and outside peers ([`super::unix_tree`]).
//! - Shared anonymous memory is one shmem object per inode: its content is stored once, by the
//!   first VMA of the tree that maps each range; a memfd's, by the first process that holds it.
//! - Fd tables shared by CLONE_FILES: [`super::fdshare`]. Address spaces and fs info shared by
//!   CLONE_VM or CLONE_FS between two processes cannot be restored yet: refused, naming both.

use std::collections::{HashMap, HashSet};

use crate::images::{FileKind, Pipe, VmaBacking};
use crate::pages::AreaKind;
use crate::sys::{self, Kcmp};

use super::pipes;
use super::process::CollectedProcess;
use super::DumpError;

/// Resolves everything the processes of `procs` (in tree order) share.
/// `ext_unix_sk`: UNIX connections to named sockets outside the tree are allowed.
pub fn resolve(procs: &mut [CollectedProcess], ext_unix_sk: bool) -> Result<(), DumpError> {
    refuse_shared_tables(procs)?;
    refuse_inherited_aio_rings(procs)?;
    super::fdshare::group(procs)?;
    super::unix_tree::resolve(procs, ext_unix_sk)?;
    assign_description_ids(procs)?;
    super::fdshare::check_agree(procs)?;
    crate::files::locks::keep_leases_once(procs.iter_mut().map(|p| &mut p.fd_table.open_files));
    super::scm::to_tree_ids(procs)?;
    super::references::resolve(procs)?;
    classify_pipes(procs)?;
    super::fifos::classify(procs)?;
    super::procfiles::mark_tree_proc_files(procs)?;
    store_shared_memory_once(procs);
    Ok(())
}

/// An AIO ring mapped by two processes of the tree: a child forked after `io_setup` inherits
/// the ring's mapping but not the context, which stays its parent's (io_getevents on it fails
/// in the child). Nothing outside the processes tells which one has the context, and a
/// restore would give each a working one: refused, naming both.
fn refuse_inherited_aio_rings(procs: &[CollectedProcess]) -> Result<(), DumpError> {
    let mut seen: HashMap<u64, (i32, u64)> = HashMap::new();
    let mut problems = Vec::new();
    for p in procs {
        for &(ino, start) in &p.vmas.aio_rings {
            match seen.get(&ino) {
                Some(&(first, at)) => problems.push(DumpError::SharedAioRing {
                    pid: p.pid(),
                    start,
                    first,
                    at,
                }),
                None => {
                    seen.insert(ino, (p.pid(), start));
                }
            }
        }
    }
    DumpError::refused(problems)
}

/// CLONE_VM and CLONE_FS shared between two processes (not threads) of the tree.
fn refuse_shared_tables(procs: &[CollectedProcess]) -> Result<(), DumpError> {
    let mut problems = Vec::new();
    for (i, a) in procs.iter().enumerate() {
        for b in &procs[i + 1..] {
            for (kind, what) in [
                (
                    Kcmp::Vm,
                    "an address space (CLONE_VM, or a vfork still running)",
                ),
                (Kcmp::Fs, "a working directory and umask (CLONE_FS)"),
            ] {
                match sys::kcmp(a.pid(), b.pid(), kind, 0, 0) {
                    Ok(true) => problems.push(DumpError::SharedBetweenProcesses {
                        pid1: a.pid(),
                        pid2: b.pid(),
                        what,
                    }),
                    Ok(false) => {}
                    Err(errno) => {
                        return Err(DumpError::Kcmp {
                            pid: a.pid(),
                            fd1: -1,
                            fd2: -1,
                            errno,
                        })
                    }
                }
            }
        }
    }
    DumpError::refused(problems)
}

/// Gives every open file description a tree-wide id; descriptions that kcmp finds to be one
/// (inherited across fork, or passed over a socket) get the same.
fn assign_description_ids(procs: &mut [CollectedProcess]) -> Result<(), DumpError> {
    // (dev, ino) -> (process, holder pid, a holder fd, id) of each description of that inode
    // seen so far (the holder is crest for a description only a socket queue holds).
    type Holder = (i32, i32, i32, u32);
    let mut seen: HashMap<(u64, u64), Vec<Holder>> = HashMap::new();
    let mut next_id = 0u32;
    for p in procs.iter_mut() {
        let pid = p.pid();
        for d in 0..p.fd_table.open_files.len() as u32 {
            let f = p.description_file(d);
            let key = (f.dev, f.ino);
            let (holder, fd) = p.fd_table.holder_of(pid, d);
            let mut id = None;
            for &(other_proc, other, other_fd, other_id) in seen.get(&key).into_iter().flatten() {
                if other_proc == pid {
                    continue;
                }
                let same = sys::kcmp_same_file(other, holder, other_fd, fd).map_err(|errno| {
                    DumpError::Kcmp {
                        pid,
                        fd1: other_fd,
                        fd2: fd,
                        errno,
                    }
                })?;
                if same {
                    id = Some(other_id);
                    break;
                }
            }
            let id = id.unwrap_or_else(|| {
                next_id += 1;
                next_id - 1
            });
            p.fd_table.open_files[d as usize].id = id;
            seen.entry(key).or_default().push((pid, holder, fd, id));
        }
    }
    Ok(())
}

/// Marks each pipe whose read and write ends are both inside the tree as internal, with its
/// buffered bytes, in every process that holds it.
fn classify_pipes(procs: &mut [CollectedProcess]) -> Result<(), DumpError> {
    #[derive(Default)]
    struct Ends {
        reader: Option<(i32, i32)>,
        writer: Option<(i32, i32)>,
    }
    let mut pipes_seen: HashMap<(u64, u64), Ends> = HashMap::new();
    let crest = std::process::id() as i32;
    for p in procs.iter() {
        // An end that only a socket queue holds (SCM_RIGHTS) is in the tree too: crest holds it.
        let held = p
            .fd_table
            .fds
            .iter()
            .map(|f| (f.description, p.pid(), f.fd));
        let carried = p.fd_table.in_flight.iter().map(|&(d, fd)| (d, crest, fd));
        for (d, holder, fd) in held.chain(carried) {
            let ident = p.description_file(d);
            if !matches!(ident.kind, FileKind::Pipe(_)) {
                continue;
            }
            let ends = pipes_seen.entry((ident.dev, ident.ino)).or_default();
            let flags = p.fd_table.open_files[d as usize].flags as i32;
            if flags & libc::O_ACCMODE != libc::O_WRONLY {
                ends.reader = ends.reader.or(Some((holder, fd)));
            }
            if flags & libc::O_ACCMODE != libc::O_RDONLY {
                ends.writer = ends.writer.or(Some((holder, fd)));
            }
        }
    }
    for ((dev, ino), ends) in pipes_seen {
        let pipe: Pipe = match (ends.reader, ends.writer) {
            (Some((pid, fd)), Some(_)) => pipes::capture(pid, fd, ino)?,
            // Only one end in the tree: external, unless the other end is closed everywhere
            // (then nobody outside can hold it, and the pipe is recreated with that end closed).
            (Some((pid, fd)), None) => match pipes::widowed(pid, fd, ino, true)? {
                true => pipes::capture(pid, fd, ino)?,
                false => continue,
            },
            (None, Some((pid, fd))) => match pipes::widowed(pid, fd, ino, false)? {
                true => pipes::capture_size(pid, fd, ino)?,
                false => continue,
            },
            (None, None) => continue,
        };
        for p in procs.iter_mut() {
            p.files.set_kind_of(dev, ino, FileKind::Pipe(pipe.clone()));
        }
    }
    Ok(())
}

/// Keeps the content of each range of a shared memory object in the first VMA (in tree order)
/// that maps it; the others are not read again.
fn store_shared_memory_once(procs: &mut [CollectedProcess]) {
    let mut stored: HashSet<(u64, u64, u64)> = HashSet::new();
    for p in procs.iter_mut() {
        let mut skip = HashSet::new();
        for v in &p.vmas.vmas {
            if let VmaBacking::SharedAnonymous { object, offset, .. } = v.backing {
                if !stored.insert((object, offset, v.end - v.start)) {
                    skip.insert(v.start);
                }
            }
        }
        p.vmas.areas.retain(|a| {
            !(matches!(a.kind, AreaKind::SharedAnonymous { .. }) && skip.contains(&a.start))
        });
    }
    // A memfd's content is stored whole by the first process that holds it.
    let mut memfds: HashSet<u64> = HashSet::new();
    for p in procs.iter_mut() {
        p.vmas.memfds.retain(|m| memfds.insert(m.ino));
    }
    // So is an unlinked file's.
    let mut ghosts: HashSet<(u64, u64)> = HashSet::new();
    for p in procs.iter_mut() {
        p.vmas.ghosts.retain(|g| ghosts.insert((g.dev, g.ino)));
    }
}
