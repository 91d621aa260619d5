//! Planning the tree: which task forks which, in what order, and how each gets its session and
//! process group back — checked before any process is touched.
//!
//! The kernel's rules: a session id is inherited at fork or made by `setsid()` (which fails
//! for a group leader); `setpgid(0, P)` joins group P only if P exists in the caller's
//! session. So each task, right after it is forked, does in this order:
//! 1. forks the children that must keep the session it was born in ("old-session" children),
//!    when it is a session leader itself;
//! 2. calls `setsid()` if it leads a session, or `setpgid(0, 0)` if it leads a group;
//! 3. forks its other children;
//! 4. joins its group when another task leads it (retrying until that leader has done step 2:
//!    the leader may be a sibling or a cousin, forked in parallel).
//!
//! The root's session and group, when it leads neither, are outside the tree: the restored
//! tree gets crest's own instead (what restoring from a shell or a service manager means).
//! A process group whose leader has exited is made again by a helper task under the leader's
//! pid: a live task of the group's session forks it (right after its own setsid/setpgid), the
//! helper makes the group and waits; the members join it; once all of them are in, the host
//! kills and reaps the helper, before it becomes its process (the helper's exit signal is 0, so
//! the restored host never sees a SIGCHLD for it). Layouts that need more (a session whose
//! leader has exited, a task that moved to a session of another branch) are refused, naming
//! the task.

use std::collections::HashMap;

use crate::images::{TreeTask, TreeTaskState};

use super::RestoreError;

/// What one task does between its fork and its own restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskPlan {
    pub pid: i32,
    /// Index of the parent in [`TreePlan::tasks`]; None for the root.
    pub parent: Option<usize>,
    pub exit_signal: i32,
    /// Children forked before [`TaskPlan::setsid`] (indices into the plan).
    pub children_before: Vec<usize>,
    pub setsid: bool,
    /// `setpgid(0, 0)`: it leads its group (and not as a session leader, which setsid makes).
    pub lead_group: bool,
    pub children_after: Vec<usize>,
    /// The group to join once its leader exists; `Some(Outer)` means crest's own group.
    pub join_group: Option<Group>,
    /// Index into `Image::processes` of a live task; None for a zombie.
    pub process: Option<usize>,
    /// A zombie's wait status and name.
    pub zombie: Option<(i32, String)>,
    /// The group-leader helpers this task forks (see the module docs).
    pub group_helpers: Vec<GroupHelper>,
    /// The session-leader helpers this task forks (see the module docs).
    pub session_helpers: Vec<SessionHelper>,
}

/// A helper task that leads a session whose leader had exited: forked by the parent of the
/// session's members (its "host"), it calls setsid() and forks each member with CLONE_PARENT,
/// so the member is in the session and its parent is the host. It ends once the members of
/// its group (the session's own, `pid`) have joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionHelper {
    /// The session's id: the helper's pid.
    pub pid: i32,
    /// The members' exit signal (a CLONE_PARENT child gets its forker's), and so the helper's.
    pub exit_signal: i32,
    /// The tasks it forks (indices into the plan): the session's members whose parent is the
    /// host; their descendants are forked by them as usual.
    pub members: Vec<usize>,
    /// The tasks of the session in group `pid`: the helper leads that group until they joined.
    pub group_members: Vec<i32>,
}

/// A helper task that leads a process group whose leader had exited, until its members are in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupHelper {
    /// The group's id: the helper's pid.
    pub pid: i32,
    /// The tasks that join the group; the helper ends once all of them have.
    pub members: Vec<i32>,
}

/// A process group to join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// The group led by this pid of the tree.
    Tree(i32),
    /// The root's group at dump time, which had no leader in the tree: crest's own now.
    Outer,
}

/// The whole tree, in the image's order (parents before children).
#[derive(Debug, Clone)]
pub struct TreePlan {
    pub tasks: Vec<TaskPlan>,
}

impl TreePlan {
    /// Indices of every task below `i` (not `i` itself).
    pub fn descendants(&self, i: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut stack = vec![i];
        while let Some(j) = stack.pop() {
            for k in self.tasks[j]
                .children_before
                .iter()
                .chain(&self.tasks[j].children_after)
                .chain(
                    self.tasks[j]
                        .session_helpers
                        .iter()
                        .flat_map(|h| &h.members),
                )
            {
                out.push(*k);
                stack.push(*k);
            }
        }
        out
    }
}

fn refuse(msg: String) -> RestoreError {
    RestoreError::Unsupported(msg)
}

/// Plans `tree` (whose live tasks are `process_pids`, in `Image::processes` order).
/// `caller_sid`: the session the tree was started from (`Inventory::caller_sid`; -1: unknown;
/// 0: a session led outside crest's pid namespace).
pub fn plan(
    tree: &[TreeTask],
    process_pids: &[i32],
    caller_sid: i32,
) -> Result<TreePlan, RestoreError> {
    let index: HashMap<i32, usize> = tree.iter().enumerate().map(|(i, t)| (t.pid, i)).collect();
    let root = tree
        .first()
        .ok_or_else(|| RestoreError::BadImage("the tree is empty".into()))?;
    // A session or group whose leader is not in the tree is the one the root was started in
    // (the root may have left it since, by setsid or setpgid, after forking children that
    // stayed): at most one of each, which becomes crest's.
    let outer = |ids: Vec<i32>, what: &str| -> Result<Option<i32>, RestoreError> {
        let mut outside: Vec<i32> = ids.into_iter().filter(|i| !index.contains_key(i)).collect();
        outside.sort_unstable();
        outside.dedup();
        match outside.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(*one)),
            many => Err(refuse(format!(
                "the tree's processes are in {} {what}s whose leaders are not in the tree \
                 ({many:?}); crest can recreate only one, as its own",
                many.len()
            ))),
        }
    };
    // With the caller's session known, the root's own session (when no task leads it) or
    // else the caller's becomes crest's; every other session without a leader in the tree had
    // one that exited: a helper makes it again.
    let (outer_sid, helper_sessions): (Option<i32>, Vec<i32>) = if caller_sid >= 0 {
        let mut leaderless: Vec<i32> = tree
            .iter()
            .map(|t| t.sid)
            .filter(|s| !index.contains_key(s))
            .collect();
        leaderless.sort_unstable();
        leaderless.dedup();
        let outer = if leaderless.contains(&root.sid) {
            Some(root.sid)
        } else {
            leaderless.contains(&caller_sid).then_some(caller_sid)
        };
        // A session led outside the pid namespace reads as 0: no helper can take that pid.
        leaderless.retain(|&s| Some(s) != outer && s > 0);
        (outer, leaderless)
    } else {
        (
            outer(tree.iter().map(|t| t.sid).collect(), "session")?,
            Vec::new(),
        )
    };
    // A helper session's leader also led the session's first group.
    let outer_pgid = outer(
        tree.iter()
            .map(|t| t.pgid)
            .filter(|g| !helper_sessions.contains(g))
            .collect(),
        "process group",
    )?;
    // Session helpers: session id -> (host task, index in its session_helpers).
    let mut sessions: HashMap<i32, (usize, usize)> = HashMap::new();

    let mut tasks: Vec<TaskPlan> = Vec::with_capacity(tree.len());
    // Group-leader helpers: group id -> the task that forks the helper.
    let mut helpers: HashMap<i32, usize> = HashMap::new();
    // The session each task is in when it is forked, as an image sid (None: the outer one).
    let mut born: Vec<Option<i32>> = Vec::with_capacity(tree.len());
    for (i, t) in tree.iter().enumerate() {
        let parent = if i == 0 {
            None
        } else {
            Some(*index.get(&t.ppid).ok_or_else(|| {
                RestoreError::BadImage(format!(
                    "pid {}: parent {} is not in the tree",
                    t.pid, t.ppid
                ))
            })?)
        };
        let leads_session = t.sid == t.pid;
        // Its session as the restore sees it: None is the outer one (crest's).
        let my_sid = (outer_sid != Some(t.sid)).then_some(t.sid);
        let born_sid = match parent {
            None => None,
            Some(pi) => {
                let pt = &tree[pi];
                let p_leads = pt.sid == pt.pid;
                // The parent's session after its own setsid (if any), and before.
                let p_final = if p_leads { Some(pt.pid) } else { born[pi] };
                if leads_session || my_sid == p_final {
                    tasks[pi].children_after.push(i);
                    p_final
                } else if p_leads && my_sid == born[pi] {
                    tasks[pi].children_before.push(i);
                    born[pi]
                } else if helper_sessions.contains(&t.sid) {
                    // Its session's leader has exited: forked by the session's helper, which
                    // the parent forks.
                    match sessions.get(&t.sid) {
                        None => {
                            sessions.insert(t.sid, (pi, tasks[pi].session_helpers.len()));
                            tasks[pi].session_helpers.push(SessionHelper {
                                pid: t.sid,
                                exit_signal: t.exit_signal,
                                members: vec![i],
                                group_members: Vec::new(),
                            });
                        }
                        Some(&(host, k)) => {
                            let h = &mut tasks[host].session_helpers[k];
                            if host != pi || h.exit_signal != t.exit_signal {
                                return Err(refuse(format!(
                                    "session {} (whose leader has exited) holds pid {} and \
                                     pid {}, children of different parents or with different \
                                     exit signals; crest can recreate such a session only \
                                     around one parent",
                                    t.sid, tree[h.members[0]].pid, t.pid
                                )));
                            }
                            h.members.push(i);
                        }
                    }
                    Some(t.sid)
                } else {
                    return Err(refuse(format!(
                        "pid {} is in session {} while its parent {} is in session {}: it \
                         moved to the session of another branch of the tree, or that \
                         session's leader has exited; crest cannot recreate such a session yet",
                        t.pid, t.sid, pt.pid, pt.sid
                    )));
                }
            }
        };
        born.push(born_sid);

        let join_group = if t.pgid == t.pid {
            None
        } else if let Some(&(host, k)) = sessions.get(&t.pgid).filter(|_| t.sid == t.pgid) {
            // The group the session's helper leads (setsid made it).
            tasks[host].session_helpers[k].group_members.push(t.pid);
            Some(Group::Tree(t.pgid))
        } else if index.contains_key(&t.pgid) {
            let leader = &tree[index[&t.pgid]];
            if leader.pgid != leader.pid {
                return Err(refuse(format!(
                    "pid {} is in process group {}, but process {} of the tree leads another \
                     group; the image is inconsistent",
                    t.pid, t.pgid, t.pgid
                )));
            }
            if leader.sid != t.sid {
                return Err(refuse(format!(
                    "pid {} is in process group {} of another session",
                    t.pid, t.pgid
                )));
            }
            Some(Group::Tree(t.pgid))
        } else if outer_pgid == Some(t.pgid) && my_sid.is_none() {
            Some(Group::Outer)
        } else {
            // The leader has exited: a helper under its pid leads the group again, forked by
            // a live task of the same session (the member's parent when it is one).
            if t.pgid <= 0 {
                return Err(refuse(format!(
                    "pid {} is in a process group led outside crest's pid namespace, but not \
                     the tree's outer one; crest cannot recreate it",
                    t.pid
                )));
            }
            let host = match helpers.get(&t.pgid) {
                Some(&host) => host,
                None => {
                    let in_session =
                        |j: usize| tree[j].sid == t.sid && tree[j].state == TreeTaskState::Alive;
                    let host = parent
                        .filter(|&pi| in_session(pi))
                        .or_else(|| (0..i).find(|&j| in_session(j)))
                        .ok_or_else(|| {
                            refuse(format!(
                                "pid {} is in process group {} whose leader has exited, and no \
                                 live process forked before it is in its session {}; crest \
                                 cannot recreate such a group",
                                t.pid, t.pgid, t.sid
                            ))
                        })?;
                    helpers.insert(t.pgid, host);
                    tasks[host].group_helpers.push(GroupHelper {
                        pid: t.pgid,
                        members: Vec::new(),
                    });
                    host
                }
            };
            let helper = tasks[host]
                .group_helpers
                .iter_mut()
                .find(|h| h.pid == t.pgid);
            helper.expect("added above").members.push(t.pid);
            Some(Group::Tree(t.pgid))
        };
        let (process, zombie) = match &t.state {
            TreeTaskState::Alive => (
                Some(
                    process_pids
                        .iter()
                        .position(|&p| p == t.pid)
                        .ok_or_else(|| {
                            RestoreError::BadImage(format!(
                                "live task {} has no process record",
                                t.pid
                            ))
                        })?,
                ),
                None,
            ),
            TreeTaskState::Zombie { wait_status, comm } => {
                (None, Some((*wait_status, comm.clone())))
            }
        };
        tasks.push(TaskPlan {
            pid: t.pid,
            parent,
            exit_signal: t.exit_signal,
            children_before: Vec::new(),
            setsid: leads_session,
            lead_group: t.pgid == t.pid && !leads_session,
            children_after: Vec::new(),
            join_group,
            process,
            zombie,
            group_helpers: Vec::new(),
            session_helpers: Vec::new(),
        });
    }
    Ok(TreePlan { tasks })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(pid: i32, ppid: i32, pgid: i32, sid: i32) -> TreeTask {
        TreeTask {
            pid,
            ppid,
            pgid,
            sid,
            exit_signal: libc::SIGCHLD,
            state: TreeTaskState::Alive,
        }
    }

    fn pids(tree: &[TreeTask]) -> Vec<i32> {
        tree.iter().map(|t| t.pid).collect()
    }

    #[test]
    fn a_root_in_the_callers_session_with_children_in_new_sessions_and_groups() {
        // 100 started from a shell (session 1, group 1); 101 same session and group; 102
        // setsid; 103 its own group; 104 child of 102 in 102's session and group 103? no:
        // 104 in 102's session, its own group; 105 child of 104 joins 104's group.
        let tree = vec![
            task(100, 1, 1, 1),
            task(101, 100, 1, 1),
            task(102, 100, 102, 102),
            task(103, 100, 103, 1),
            task(104, 102, 104, 102),
            task(105, 104, 104, 102),
        ];
        let plan = plan(&tree, &pids(&tree), -1).unwrap();
        let t = &plan.tasks;
        assert!(!t[0].setsid && !t[0].lead_group && t[0].join_group == Some(Group::Outer));
        assert_eq!(t[0].children_after, vec![1, 2, 3]);
        assert!(t[2].setsid && !t[2].lead_group);
        assert!(t[3].lead_group && t[3].join_group.is_none());
        assert_eq!(t[2].children_after, vec![4]);
        assert!(t[4].lead_group);
        assert_eq!(t[5].join_group, Some(Group::Tree(104)));
        assert_eq!(plan.descendants(2), vec![4, 5]);
    }

    #[test]
    fn a_session_leader_forks_old_session_children_first() {
        // 200 leads its own session; 201 was forked by 200 before 200 called setsid? 200's
        // born session is the outer one (1); 201 stayed there.
        let tree = vec![
            task(200, 1, 200, 200),
            task(201, 200, 201, 201),
            task(202, 201, 202, 201),
        ];
        let plan = plan(&tree, &pids(&tree), -1).unwrap();
        assert!(plan.tasks[0].setsid);
        assert_eq!(plan.tasks[1].children_after, vec![2]);
        let old = vec![task(300, 1, 300, 300), task(301, 300, 1, 1)];
        let plan = plan_of(&old);
        assert_eq!(plan.tasks[0].children_before, vec![1]);
        assert_eq!(plan.tasks[1].join_group, Some(Group::Outer));
    }

    fn plan_of(tree: &[TreeTask]) -> TreePlan {
        plan(tree, &pids(tree), -1).unwrap()
    }

    #[test]
    fn a_group_whose_leader_exited_gets_a_helper_leader() {
        // zdtm zombie01: 701 made group 701, forked 702 into it with CLONE_PARENT and exited.
        let mut tree = vec![task(700, 1, 700, 700), task(702, 700, 701, 700)];
        tree[1].state = TreeTaskState::Zombie {
            wait_status: 0,
            comm: "z".into(),
        };
        let plan = plan(&tree, &[700], -1).unwrap();
        let helper = GroupHelper {
            pid: 701,
            members: vec![702],
        };
        assert_eq!(plan.tasks[0].group_helpers, vec![helper]);
        assert_eq!(plan.tasks[1].join_group, Some(Group::Tree(701)));
        // Two members, the second forked by the first, share one helper of the root's.
        let tree = vec![
            task(800, 1, 800, 800),
            task(802, 800, 801, 800),
            task(803, 802, 801, 800),
        ];
        let plan = plan_of(&tree);
        let helper = GroupHelper {
            pid: 801,
            members: vec![802, 803],
        };
        assert_eq!(plan.tasks[0].group_helpers, vec![helper]);
        assert!(plan.tasks[1].group_helpers.is_empty());
        assert_eq!(plan.tasks[2].join_group, Some(Group::Tree(801)));
    }

    #[test]
    fn a_session_whose_leader_exited_gets_a_helper_that_forks_its_members() {
        // 900 (a subreaper) forked 901, which made session 901, forked 902 and 903 into it and
        // exited; 904 is 902's child. The tree was started from session 5.
        let tree = vec![
            task(900, 1, 900, 900),
            task(902, 900, 901, 901),
            task(903, 900, 903, 901),
            task(904, 902, 901, 901),
        ];
        let plan = plan(&tree, &pids(&tree), 5).unwrap();
        let helper = SessionHelper {
            pid: 901,
            exit_signal: libc::SIGCHLD,
            members: vec![1, 2],
            group_members: vec![902, 904],
        };
        assert_eq!(plan.tasks[0].session_helpers, vec![helper]);
        assert!(plan.tasks[0].children_after.is_empty());
        assert_eq!(plan.tasks[1].children_after, vec![3]);
        assert!(plan.tasks[2].lead_group);
        assert_eq!(plan.descendants(0), vec![1, 2, 3]);
        // Without the caller's session (an image that does not say) the one leaderless session
        // is taken as the caller's, crest's at restore: no helper.
        // Started from a session led outside crest's pid namespace (a container): the same.
        let in_container = plan_of_with(&tree, 0).unwrap();
        assert_eq!(in_container.tasks[0].session_helpers.len(), 1);
        let old = plan_of_with(&tree, -1).unwrap();
        assert!(old.tasks[0].session_helpers.is_empty());
        assert_eq!(old.tasks[0].children_before, vec![1, 2]);
        // Members of one such session with different parents: refused.
        let tree = vec![
            task(900, 1, 900, 900),
            task(902, 900, 902, 900),
            task(903, 900, 901, 901),
            task(904, 902, 901, 901),
        ];
        let err = plan_of_with(&tree, 5).unwrap_err().to_string();
        assert!(err.contains("different parents"), "{err}");
    }

    fn plan_of_with(tree: &[TreeTask], caller: i32) -> Result<TreePlan, RestoreError> {
        plan(tree, &pids(tree), caller)
    }

    #[test]
    fn groups_and_sessions_without_a_leader_are_refused() {
        // One session from outside the tree is the caller's (crest's at restore); two cannot be.
        let tree = vec![task(500, 1, 500, 500), task(501, 500, 501, 498)];
        assert_eq!(plan_of(&tree).tasks[0].children_before, vec![1]);
        let tree = vec![
            task(500, 1, 500, 500),
            task(501, 500, 501, 498),
            task(502, 500, 502, 497),
        ];
        let err = plan(&tree, &pids(&tree), -1).unwrap_err().to_string();
        assert!(err.contains("2 sessions") && err.contains("497"), "{err}");
        // A task in a session of another branch of the tree.
        let tree = vec![
            task(600, 1, 600, 600),
            task(601, 600, 601, 601),
            task(602, 600, 602, 601),
        ];
        let err = plan(&tree, &pids(&tree), -1).unwrap_err().to_string();
        assert!(
            err.contains("pid 602") && err.contains("session 601"),
            "{err}"
        );
    }
}
