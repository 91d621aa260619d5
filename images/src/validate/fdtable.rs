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

#[cfg(test)]
mod tests {
    use super::*;

    fn task(pid: i32, ppid: i32) -> TreeTask {
        TreeTask {
            pid,
            ppid,
            pgid: pid,
            sid: pid,
            // SIGCHLD
            exit_signal: 17,
            state: TreeTaskState::Alive,
        }
    }

    fn process(pid: i32, ppid: i32, owner: Option<i32>) -> ProcessImage {
        let mut p = crate::tests::sample_process();
        p.pid = pid;
        p.ppid = ppid;
        p.threads[0].tid = pid;
        p.fd_table_of = owner;
        p
    }

    #[test]
    fn a_sharer_names_an_earlier_owner_its_parent_shares_and_the_same_fds() {
        let tree = [task(10, 1), task(11, 10), task(12, 11), task(13, 10)];
        let ok = [
            process(10, 1, None),
            process(11, 10, Some(10)),
            process(12, 11, Some(10)),
            process(13, 10, None),
        ];
        check_tree(&tree, &ok).unwrap();
        // 12's parent 11 has a table of its own.
        let mut bad = ok.clone();
        bad[1].fd_table_of = None;
        let err = check_tree(&tree, &bad).unwrap_err();
        assert!(err.contains("its parent 11 does not"), "{err}");
        // An owner that is not earlier, or shares another's itself.
        let mut bad = ok.clone();
        bad[1].fd_table_of = Some(12);
        assert!(check_tree(&tree, &bad).is_err());
        // Other fds than the owner's.
        let mut bad = ok.clone();
        bad[2].fds[0].cloexec = !bad[2].fds[0].cloexec;
        let err = check_tree(&tree, &bad).unwrap_err();
        assert!(err.contains("lists other fds"), "{err}");
    }
}
