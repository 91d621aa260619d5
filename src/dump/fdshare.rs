//! Fd tables shared by processes of the tree (clone with CLONE_FILES and not CLONE_THREAD).
//!
//! The processes that share one table form a group; its first process in tree order owns it
//! and the others name it ([`crate::images::ProcessImage::fd_table_of`]). Every member's fds
//! are collected as any process's (the same table read again: same numbers, same
//! descriptions), so what the tree shares is resolved as for fds inherited across fork; the
//! restore installs the table once, the owner's, and forks the others with CLONE_FILES.
//!
//! A restore creates a sharer with CLONE_FILES from its parent, so every sharer's parent must
//! be in the group too; other layouts (a table passed to siblings by a parent that left it
//! since, by exec or unshare) are refused, as are POSIX record locks in a shared table (they
//! belong to the table, and the other members' closes during the restore would drop them).

use std::collections::HashMap;

use crate::sys::{self, Kcmp};

use super::process::CollectedProcess;
use super::DumpError;

/// Finds which processes share an fd table (kcmp KCMP_FILES) and records each sharer's owner;
/// refuses the layouts a restore cannot recreate, naming both processes.
pub fn group(procs: &mut [CollectedProcess]) -> Result<(), DumpError> {
    for i in 1..procs.len() {
        for j in 0..i {
            if procs[j].fd_table_of.is_some() {
                continue;
            }
            let same =
                sys::kcmp(procs[j].pid(), procs[i].pid(), Kcmp::Files, 0, 0).map_err(|errno| {
                    DumpError::Kcmp {
                        pid: procs[i].pid(),
                        fd1: -1,
                        fd2: -1,
                        errno,
                    }
                })?;
            if same {
                procs[i].fd_table_of = Some(procs[j].pid());
                break;
            }
        }
    }
    let owner_of: HashMap<i32, i32> = procs
        .iter()
        .filter_map(|p| p.fd_table_of.map(|o| (p.pid(), o)))
        .collect();
    let mut problems = Vec::new();
    for p in procs.iter() {
        let Some(owner) = p.fd_table_of else { continue };
        if p.ppid != owner && owner_of.get(&p.ppid) != Some(&owner) {
            problems.push(DumpError::SharedFdTable {
                pid: p.pid(),
                owner,
                why: format!(
                    "the parent {} of {} does not share it (a restore can give a table only to \
                     a child of a process that holds it)",
                    p.ppid,
                    p.pid()
                ),
            });
        }
    }
    // POSIX locks belong to the table: any member's.
    for p in procs.iter() {
        let other = p.fd_table_of.or_else(|| {
            owner_of
                .iter()
                .find(|(_, &o)| o == p.pid())
                .map(|(&s, _)| s)
        });
        if let (Some(other), false) = (other, p.fd_table.posix_locks.is_empty()) {
            problems.push(DumpError::SharedFdTable {
                pid: p.pid(),
                owner: other,
                why: format!("{} holds POSIX record locks (fcntl F_SETLK)", p.pid()),
            });
        }
    }
    DumpError::refused(problems)
}

/// Checks each sharer's fds are the owner's (same numbers, descriptions, close-on-exec): the
/// table was read once per process while the tree was frozen, so a difference is a crest bug.
/// Runs once every description has its tree-wide id.
pub fn check_agree(procs: &[CollectedProcess]) -> Result<(), DumpError> {
    let index: HashMap<i32, usize> = procs
        .iter()
        .enumerate()
        .map(|(i, p)| (p.pid(), i))
        .collect();
    for p in procs {
        let Some(owner) = p.fd_table_of else { continue };
        let o = &procs[index[&owner]];
        let (mine, theirs) = (table(p), table(o));
        if mine != theirs {
            let fd = mine
                .iter()
                .find(|f| !theirs.contains(f))
                .or_else(|| theirs.iter().find(|f| !mine.contains(f)))
                .map_or(-1, |f| f.0);
            return Err(DumpError::SharedFdTable {
                pid: p.pid(),
                owner,
                why: format!("fd {fd} read differently in the two while the tree was frozen"),
            });
        }
    }
    Ok(())
}

/// `(fd, tree-wide description id, close-on-exec)` of each fd, sorted.
fn table(p: &CollectedProcess) -> Vec<(i32, u32, bool)> {
    let mut out: Vec<_> = p
        .fd_table
        .fds
        .iter()
        .map(|f| {
            let id = p.fd_table.open_files[f.description as usize].id;
            (f.fd, id, f.cloexec)
        })
        .collect();
    out.sort_unstable();
    out
}
