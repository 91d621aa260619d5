//! Fd tables shared between processes ([`ProcessImage::fd_table_of`]).

use std::collections::HashMap;

use crate::schema::*;

/// Each process that shares another's fd table names an earlier process of the image that owns
/// a table of its own, has that process or another sharer of the same table as its parent,
/// and lists the same fds (number, description id, close-on-exec).
pub(super) fn check_tree(tree: &[TreeTask], processes: &[ProcessImage]) -> Result<(), String> {
    let position: HashMap<i32, usize> = processes
        .iter()
        .enumerate()
        .map(|(i, p)| (p.pid, i))
        .collect();
    let parent: HashMap<i32, i32> = tree.iter().map(|t| (t.pid, t.ppid)).collect();
    for (i, p) in processes.iter().enumerate() {
        let Some(owner) = p.fd_table_of else { continue };
        let o = *position.get(&owner).ok_or_else(|| {
            format!(
                "process {} shares the fd table of {owner}, which is not a process of the image",
                p.pid
            )
        })?;
        if o >= i || processes[o].fd_table_of.is_some() {
            return Err(format!(
                "process {} shares the fd table of {owner}, which is not an earlier process \
                 with a table of its own",
                p.pid
            ));
        }
        let ppid = parent.get(&p.pid).copied().unwrap_or(p.ppid);
        let parent_shares = ppid == owner
            || position
                .get(&ppid)
                .is_some_and(|&k| processes[k].fd_table_of == Some(owner));
        if !parent_shares {
            return Err(format!(
                "process {} shares the fd table of {owner}, but its parent {ppid} does not",
                p.pid
            ));
        }
        if table(p)? != table(&processes[o])? {
            return Err(format!(
                "process {} shares the fd table of {owner} but lists other fds",
                p.pid
            ));
        }
    }
    Ok(())
}

/// `(fd, tree-wide description id, close-on-exec)` of each fd, sorted.
fn table(p: &ProcessImage) -> Result<Vec<(i32, u32, bool)>, String> {
    let mut out = p
        .fds
        .iter()
        .map(|f| {
            p.open_files
                .get(f.description as usize)
                .map(|d| (f.fd, d.id, f.cloexec))
                .ok_or_else(|| format!("process {}: fd {} has no description", p.pid, f.fd))
        })
        .collect::<Result<Vec<_>, String>>()?;
    out.sort_unstable();
    Ok(out)
}
