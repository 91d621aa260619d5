//! Finding and freezing the whole tree: the root and every descendant, all threads of each.
//!
//! Each process is seized as it is found (every thread, until its thread list is stable, see
//! [`Frozen::freeze`]) and only then are its children read: a process whose threads are all in
//! a ptrace stop cannot fork, so its `children` lists are complete. The walk goes on until a
//! last look at every frozen process's children finds no new one (a child that exited and left
//! its own children to a subreaper of the tree is caught that way). Zombies are recorded with
//! their exit status; they cannot be seized and have no children.
//!
//! Everything that can be refused from the outside is checked for every process first, and
//! all of it is reported in one message; the frozen processes are then released untouched.

use std::collections::HashSet;

use crate::images::{ShellJob, TreeTask, TreeTaskState};
use crate::proc::{Proc, ProcError, TreeIds};

use super::freeze::Frozen;
use super::tty::Terminals;
use super::{jobctl, DumpError};

/// A frozen process, checked and ready to be collected.
pub struct FrozenProcess {
    pub proc: Proc,
    pub frozen: Frozen,
    /// Its fds that are the shell's terminal (`--shell-job`).
    pub shell_fds: Vec<i32>,
}

/// The frozen tree: live processes and every task (zombies included), both in tree order
/// (the root first, parents before children).
pub struct FrozenTree {
    pub processes: Vec<FrozenProcess>,
    pub tasks: Vec<TreeTask>,
    /// How the tree uses the terminal of the shell crest runs in (`--shell-job`), if it does.
    pub shell_job: Option<ShellJob>,
    /// Terminals of the machine that control sessions of the tree.
    pub machine_ttys: Vec<crate::images::MachineTty>,
}

/// The processes below `root` (itself included) as they are now, without freezing anything:
/// for work done before the freeze (the GC hint). Tree order.
pub fn descendants(root: i32) -> Vec<i32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        if let Ok(kids) = Proc::open(out[i]).and_then(|p| p.children()) {
            for k in kids {
                if !out.contains(&k) {
                    out.push(k);
                }
            }
        }
        i += 1;
    }
    out
}

/// Freezes `root` and all its descendants. `shell_job`: a tree attached to the terminal crest
/// runs on may be dumped (`--shell-job`).
pub fn freeze(root: &Proc, shell_job: bool) -> Result<FrozenTree, DumpError> {
    let mut tree = FrozenTree {
        processes: Vec::new(),
        tasks: Vec::new(),
        shell_job: None,
        machine_ttys: Vec::new(),
    };
    let mut terminals = Terminals::new(shell_job);
    let mut problems = Vec::new();
    let mut known: HashSet<i32> = HashSet::from([root.pid()]);
    // The tree may live in a time namespace of its own (a tree crest restored does), but in one.
    let time_ns = root.namespace("time")?;
    let mut queue = vec![(root.pid(), None::<i32>)];
    loop {
        while let Some((pid, parent)) = (!queue.is_empty()).then(|| queue.remove(0)) {
            let proc = match Proc::open(pid) {
                Ok(p) => p,
                // Gone (a child reaped by an auto-reaping parent before it was frozen).
                Err(ProcError::NoSuchProcess { .. }) if parent.is_some() => continue,
                Err(e) => return Err(e.into()),
            };
            let ids = match proc.tree_ids() {
                Ok(ids) => ids,
                Err(ProcError::NoSuchProcess { .. }) if parent.is_some() => continue,
                Err(e) => return Err(e.into()),
            };
            if ids.state == 'Z' || ids.state == 'X' {
                if parent.is_none() {
                    return Err(DumpError::Zombie { pid });
                }
                if ids.state == 'Z' {
                    tree.tasks.push(zombie(&ids));
                }
                continue;
            }
            let why = precheck(&proc, time_ns);
            if !why.is_empty() {
                problems.extend(why);
                continue;
            }
            let frozen = match Frozen::freeze(&proc) {
                Ok(f) => f,
                // It exited while being frozen: a zombie now (its parent is frozen), or gone.
                Err(DumpError::NoSuchProcess { .. } | DumpError::ThreadGone { .. })
                    if parent.is_some() =>
                {
                    if let Ok(ids) = proc.tree_ids() {
                        if ids.state == 'Z' {
                            tree.tasks.push(zombie(&ids));
                        }
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            // Read again now that it cannot change: it may have moved group or session.
            let ids = proc.tree_ids()?;
            terminals.survey(&proc, &ids);
            for kid in proc.children()? {
                if known.insert(kid) {
                    queue.push((kid, Some(pid)));
                }
            }
            tree.tasks.push(alive(&ids));
            tree.processes.push(FrozenProcess {
                proc,
                frozen,
                shell_fds: Vec::new(),
            });
        }
        // One more look at every frozen process: nothing new means the tree is complete.
        for p in &tree.processes {
            for kid in p.proc.children()? {
                if known.insert(kid) {
                    queue.push((kid, Some(p.proc.pid())));
                }
            }
        }
        if queue.is_empty() {
            break;
        }
    }
    match terminals.finish(&tree.tasks) {
        Ok(accepted) => {
            for p in &mut tree.processes {
                let pid = p.proc.pid();
                p.shell_fds = accepted
                    .shell_fds
                    .iter()
                    .filter(|(holder, _)| *holder == pid)
                    .map(|(_, fd)| *fd)
                    .collect();
            }
            tree.shell_job = accepted.shell_job;
            tree.machine_ttys = accepted.machine_ttys;
        }
        Err(more) => problems.extend(more),
    }
    DumpError::refused(problems)?;
    order_parents_first(&mut tree);
    Ok(tree)
}

fn zombie(ids: &TreeIds) -> TreeTask {
    tree_task(
        ids,
        TreeTaskState::Zombie {
            wait_status: ids.exit_code,
            comm: ids.comm.chars().take(15).collect(),
        },
    )
}

fn alive(ids: &TreeIds) -> TreeTask {
    tree_task(ids, TreeTaskState::Alive)
}

fn tree_task(ids: &TreeIds, state: TreeTaskState) -> TreeTask {
    TreeTask {
        pid: ids.pid,
        ppid: ids.ppid,
        pgid: ids.pgid,
        sid: ids.sid,
        exit_signal: ids.exit_signal,
        state,
    }
}

/// Tasks found late (a child handed to a subreaper of the tree) may be listed before their
/// parent's other children were; a stable sort by depth keeps parents first.
fn order_parents_first(tree: &mut FrozenTree) {
    let depth = |pid: i32, tasks: &[TreeTask]| {
        let mut d = 0;
        let mut cur = pid;
        while let Some(t) = tasks.iter().skip(1).find(|t| t.pid == cur) {
            d += 1;
            cur = t.ppid;
        }
        d
    };
    let depths: Vec<(i32, usize)> = tree
        .tasks
        .iter()
        .map(|t| (t.pid, depth(t.pid, &tree.tasks)))
        .collect();
    let of = |pid: i32| depths.iter().find(|d| d.0 == pid).map_or(0, |d| d.1);
    tree.tasks.sort_by_key(|t| of(t.pid));
    tree.processes.sort_by_key(|p| of(p.proc.pid()));
}

/// What can be refused from the outside, before the process is touched: every problem found.
fn precheck(proc: &Proc, tree_time_ns: Option<u64>) -> Vec<DumpError> {
    let pid = proc.pid();
    let mut problems = Vec::new();
    let mut say = |e: DumpError| problems.push(e);
    let status = match proc.status() {
        Ok(s) => s,
        Err(e) => return vec![DumpError::from(e)],
    };
    if proc.is_kernel_thread().unwrap_or(false) {
        say(DumpError::KernelThread { pid });
    }
    if status.tracer_pid != 0 {
        say(DumpError::AlreadyTraced {
            pid,
            tracer: status.tracer_pid,
        });
    }
    if status.seccomp != 0 {
        say(DumpError::Seccomp {
            pid,
            tid: pid,
            mode: status.seccomp,
        });
    }
    // A root directory other than crest's (chroot) is recorded with the files (fds::root);
    // one in another mount namespace is refused below. The time namespace is checked apart.
    for ns in crate::proc::NAMESPACES
        .into_iter()
        .filter(|&ns| ns != "time")
    {
        match proc.namespace(ns) {
            Ok(theirs) if theirs != crate::proc::own_namespace(ns) => say(DumpError::Namespace {
                pid,
                ns: ns.to_string(),
            }),
            Ok(_) => {}
            Err(e) => say(e.into()),
        }
    }
    // The time namespace is the tree's (crate::timens): the root's, whichever it is, and the
    // one its children get too.
    match (proc.namespace("time"), proc.namespace("time_for_children")) {
        (Ok(own), _) if own != tree_time_ns => say(DumpError::TimeNamespace {
            pid,
            why: "it is in another time namespace than the root of the tree".into(),
        }),
        (Ok(own), Ok(children)) if own != children => say(DumpError::TimeNamespace {
            pid,
            why: "its children get another time namespace than its own (it called unshare \
                  with CLONE_NEWTIME)"
                .into(),
        }),
        (Err(e), _) | (_, Err(e)) => say(e.into()),
        _ => {}
    }
    // The controlling terminal and terminal fds are looked at once frozen (tty.rs).
    // A vfork in progress, or an ignored SIGTRAP (the parasite's breakpoints would reset it).
    if let Err(e) = jobctl::check_before_freeze(proc, &status) {
        say(e);
    }
    problems
}
