//! The fork phase of a tree restore, as each task lives it.
//!
//! crest forks the root; every task (a copy of crest until its restorer runs) then forks its
//! own children with their original pids, sets up its session and process group as the plan
//! says ([`super::tree`]), and either becomes its process ([`super::child::run`]) or, for a
//! zombie, exits the way it exited, leaving its parent a child to reap.
//!
//! Every task inherits every descriptor crest opened, the pipes of every other task included.
//! Each closes at once what is not its own or its descendants': so a task that dies early
//! shows as end-of-file on its status pipe, and a crest that dies shows to every waiting task.

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use crate::images::ProcessImage;

use super::bootstrap::{Bootstrap, Special};
use super::child::{self, ChildPlan};
use super::files::OpenedFiles;
use super::fork::{self, Forked};
use super::tree::{Group, GroupHelper, SessionHelper, TreePlan};
use super::tty::TaskTerminal;

/// How long a task waits for the leader of the group it joins (a sibling or cousin forked at
/// the same time) to have made the group.
const GROUP_WAIT: Duration = Duration::from_secs(10);

/// The pipes between crest and one task: crest reads `status` and writes `go`.
#[derive(Debug, Clone, Copy)]
pub struct TaskPipes {
    pub status_r: RawFd,
    pub status_w: RawFd,
    pub go_r: RawFd,
    pub go_w: RawFd,
}

/// Everything the tasks need after the fork; each task has its own copy.
pub struct TreeCtx<'a> {
    pub plan: &'a TreePlan,
    pub processes: &'a [ProcessImage],
    /// Per process (index into `processes`).
    pub files: &'a [OpenedFiles],
    pub specials: &'a [Vec<Special>],
    pub boots: &'a mut [Bootstrap],
    /// Per task (index into `plan.tasks`).
    pub pipes: &'a [TaskPipes],
    /// The root keeps its parent-death signal (crest stays its parent).
    pub keep_root_pdeath: bool,
    pub fd_base: RawFd,
    /// crest's process group: the "outer" group of the plan.
    pub crest_pgid: i32,
    /// crest's terminal for a shell job, and terminals of the machine ([`super::tty`]).
    pub terminals: &'a [TaskTerminal],
    /// Fd tables shared between processes ([`super::fdshare`]).
    pub tables: &'a super::fdshare::FdTables,
    /// Private memory shared copy-on-write with children ([`super::cow`]).
    pub cow: &'a super::cow::CowPlan,
}

/// Entry of task `i` right after its fork. Never returns.
pub fn task_main(ctx: &mut TreeCtx<'_>, i: usize) -> ! {
    let status = ctx.pipes[i].status_w;
    let descendants = ctx.plan.descendants(i);
    // A sharer's table is its parent's, already cleared of what is not the group's.
    let shares = matches!(ctx.tables.role(i), super::fdshare::Role::Sharer(_));
    for (j, p) in ctx.pipes.iter().enumerate().filter(|_| !shares) {
        close(p.status_r);
        close(p.go_w);
        if j != i && !descendants.contains(&j) {
            close(p.status_w);
            close(p.go_r);
        }
    }
    // Before the children are forked, so they inherit it (cow.rs).
    if let Some(p) = ctx.plan.tasks[i].process {
        if let Err(msg) = ctx.cow.premap_in_task(p, ctx.processes, &ctx.files[p]) {
            child::fail(status, &msg);
        }
    }
    if let Err(msg) = fork_and_group(ctx, i) {
        child::fail(status, &msg);
    }
    // Only the pipes of subtrees forked into a table of their own: a child sharing this
    // table needs its own (and so on down).
    let apart: Vec<usize> = match ctx.tables.role(i) {
        super::fdshare::Role::Alone => descendants,
        _ => ctx.plan.tasks[i]
            .children_before
            .iter()
            .chain(&ctx.plan.tasks[i].children_after)
            .filter(|&&c| ctx.tables.forked_apart(c))
            .flat_map(|&c| std::iter::once(c).chain(ctx.plan.descendants(c)))
            .collect(),
    };
    for &j in &apart {
        close(ctx.pipes[j].status_w);
        close(ctx.pipes[j].go_r);
    }
    let task = &ctx.plan.tasks[i];
    if let Some((wait_status, comm)) = &task.zombie {
        become_zombie(status, *wait_status, comm);
    }
    let p = task.process.expect("a live task has a process record");
    let zombie_children: Vec<(i32, i32)> = task
        .children_before
        .iter()
        .chain(&task.children_after)
        .map(|&c| &ctx.plan.tasks[c])
        .filter(|c| c.zombie.is_some())
        .map(|c| (c.pid, c.exit_signal))
        .collect();
    // The boots slice is reborrowed for this task alone; no other task's is touched.
    let boot = &mut ctx.boots[p];
    child::run(ChildPlan {
        image: &ctx.processes[p],
        keep_pdeath: i != 0 || ctx.keep_root_pdeath,
        files: &ctx.files[p],
        specials: &ctx.specials[p],
        boot,
        status_fd: status,
        go_fd: ctx.pipes[i].go_r,
        fd_base: ctx.fd_base,
        zombie_children,
        epoll_registrations: crate::events::epoll::registered_by_task(ctx.processes, p),
        table: ctx.tables.task_table(i, ctx.plan, ctx.files, ctx.pipes),
        group_helpers: task.group_helpers.clone(),
        session_helpers: task.session_helpers.clone(),
    })
}

/// Forks the task's children around its setsid/setpgid (and the helpers that lead groups and
/// sessions whose leaders had exited, [`super::tree`]), then joins its group.
fn fork_and_group(ctx: &mut TreeCtx<'_>, i: usize) -> Result<(), String> {
    let task = ctx.plan.tasks[i].clone();
    for &c in &task.children_before {
        fork_child(ctx, c)?;
    }
    if task.setsid {
        // SAFETY: setsid has no preconditions.
        if unsafe { libc::setsid() } < 0 {
            return Err(format!(
                "setsid for pid {} failed: {}",
                task.pid,
                std::io::Error::last_os_error()
            ));
        }
        // The session's controlling terminal, before the children that share it are forked.
        for t in ctx.terminals {
            t.after_setsid(task.pid)?;
        }
    }
    if task.lead_group {
        // SAFETY: setpgid on ourselves.
        if unsafe { libc::setpgid(0, 0) } < 0 {
            return Err(format!(
                "making pid {} the leader of its process group failed: {}",
                task.pid,
                std::io::Error::last_os_error()
            ));
        }
    }
    for t in ctx.terminals {
        t.after_group(task.pid)?;
    }
    // In this task's final session, before the members that join them are forked.
    for helper in &task.group_helpers {
        fork_group_helper(helper.pid)?;
    }
    for &c in &task.children_after {
        fork_child(ctx, c)?;
    }
    for helper in &task.session_helpers {
        fork_session_helper(ctx, helper)?;
    }
    if let Some(group) = task.join_group {
        join_group(task.pid, group, ctx.crest_pgid)?;
    }
    Ok(())
}

/// Forks the helper that leads session `h.pid` again: it calls setsid() and forks the
/// session's members with CLONE_PARENT (so they are the forking task's children, in the
/// session), then waits to be killed ([`end_helpers`]). A failure of its own is reported on
/// the status pipe of a member it could not fork.
fn fork_session_helper(ctx: &mut TreeCtx<'_>, h: &SessionHelper) -> Result<(), String> {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    match fork::fork_with_pid_flags(h.pid, h.exit_signal, 0) {
        Ok(Forked::Parent) => return Ok(()),
        Err(e) => return Err(format!("forking a helper to lead session {}: {e}", h.pid)),
        Ok(Forked::Child) => {}
    }
    let first_status = ctx.pipes[h.members[0]].status_w;
    // SAFETY: plain syscalls on ourselves.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != parent {
            libc::_exit(0);
        }
        if libc::setsid() < 0 {
            let err = std::io::Error::last_os_error();
            child::fail(
                first_status,
                &format!("setsid for session {} failed: {err}", h.pid),
            );
        }
    }
    for &m in &h.members {
        let member = &ctx.plan.tasks[m];
        let status = ctx.pipes[m].status_w;
        if ctx.tables.clone_flags(m) != 0 {
            child::fail(
                status,
                &format!(
                    "pid {} shares its fd table with its parent, but its session's helper forks \
                     it; crest cannot restore that",
                    member.pid
                ),
            );
        }
        // The exit signal of a CLONE_PARENT child is its forker's (this helper's).
        match fork::fork_with_pid_flags(member.pid, 0, libc::CLONE_PARENT as u64) {
            Ok(Forked::Child) => task_main(ctx, m),
            Ok(Forked::Parent) => {}
            Err(e) => child::fail(status, &format!("forking pid {}: {e}", member.pid)),
        }
    }
    // SAFETY: plain syscalls on ourselves; this process only waits to be killed.
    unsafe {
        libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
        loop {
            libc::pause();
        }
    }
}

/// Forks a helper under `pid` that leads a process group of that id (whose original leader
/// had exited at dump time) until its parent kills it ([`end_group_helpers`]). Its exit
/// signal is 0: its end sends its parent no SIGCHLD.
fn fork_group_helper(pid: i32) -> Result<(), String> {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    match fork::fork_with_pid_flags(pid, 0, 0) {
        Ok(Forked::Parent) => Ok(()),
        Ok(Forked::Child) => {
            // SAFETY: plain syscalls on ourselves; this process only waits to be killed.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != parent {
                    libc::_exit(0);
                }
                // Holding none of the tree's descriptors (pipes would not see their end).
                libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
                if libc::setpgid(0, 0) != 0 {
                    libc::_exit(1);
                }
                loop {
                    libc::pause();
                }
            }
        }
        Err(e) => Err(format!("forking a helper to lead process group {pid}: {e}")),
    }
}

/// Once every member of each helper's group has joined it (the members may be anywhere in the
/// tree, still being set up), kills and reaps the helper; the group (and session) lives on
/// through them. A session helper's end sent its parent a signal: taken out of the pending
/// set (the image's own pending signals are queued afterwards).
pub fn end_helpers(groups: &[GroupHelper], sessions: &[SessionHelper]) -> Result<(), String> {
    let all = groups.iter().map(|g| (g.pid, &g.members, 0)).chain(
        sessions
            .iter()
            .map(|s| (s.pid, &s.group_members, s.exit_signal)),
    );
    for (pid, members, signal) in all {
        end_helper(pid, members)?;
        if signal > 0 {
            // SAFETY: sigset_t is plain data; a zero timeout only polls (the signal is blocked
            // in every task until the restorer's sigreturn).
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, signal);
                let zero = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                while libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) == signal {}
            }
        }
    }
    Ok(())
}

/// Waits until every one of `members` is in process group `pid`, then kills and reaps the
/// helper `pid` (a child of this task).
fn end_helper(pid: i32, members: &[i32]) -> Result<(), String> {
    let deadline = Instant::now() + GROUP_WAIT;
    for &member in members {
        // SAFETY: getpgid has no preconditions.
        while unsafe { libc::getpgid(member) } != pid {
            if Instant::now() > deadline {
                return Err(format!(
                    "pid {member} did not join process group {pid} within {} s",
                    GROUP_WAIT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    // SAFETY: signalling and reaping our own child.
    let reaped = unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), libc::__WALL)
    };
    if reaped != pid {
        return Err(format!(
            "reaping the helper that led process group {pid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn fork_child(ctx: &mut TreeCtx<'_>, c: usize) -> Result<(), String> {
    let child = &ctx.plan.tasks[c];
    match fork::fork_with_pid_flags(child.pid, child.exit_signal, ctx.tables.clone_flags(c)) {
        Ok(Forked::Child) => task_main(ctx, c),
        Ok(Forked::Parent) => Ok(()),
        Err(e) => Err(format!("forking pid {}: {e}", child.pid)),
    }
}

/// `setpgid(0, pgid)`, retried while the group does not exist yet (EPERM): its leader is
/// another task of the tree that makes it right after its own fork.
fn join_group(pid: i32, group: Group, crest_pgid: i32) -> Result<(), String> {
    let pgid = match group {
        Group::Tree(p) => p,
        Group::Outer => crest_pgid,
    };
    let deadline = Instant::now() + GROUP_WAIT;
    loop {
        // SAFETY: setpgid on ourselves.
        if unsafe { libc::setpgid(0, pgid) } == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EPERM) || Instant::now() > deadline {
            return Err(format!("pid {pid} cannot join process group {pgid}: {err}"));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// A zombie of the image: reports its setup, then ends as the original did, so its parent
/// reaps it with the same wait status. Its name is the original's.
fn become_zombie(status: RawFd, wait_status: i32, comm: &str) -> ! {
    let name = std::ffi::CString::new(
        comm.as_bytes()
            .iter()
            .copied()
            .filter(|b| *b != 0)
            .collect::<Vec<u8>>(),
    )
    .unwrap_or_default();
    // SAFETY: PR_SET_NAME reads at most 16 bytes of a valid C string.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
    child::report_ready(status);
    close(status);
    let sig = wait_status & 0x7f;
    if sig == 0 {
        // SAFETY: _exit has no preconditions.
        unsafe { libc::_exit((wait_status >> 8) & 0xff) };
    }
    // Killed by a signal: die of it, without a core file (the original's is long written).
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on ourselves with valid arguments.
    unsafe {
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        libc::signal(sig, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::kill(libc::getpid(), sig);
        // A signal whose default is not to end the process cannot have ended it: SIGKILL.
        libc::kill(libc::getpid(), libc::SIGKILL);
        libc::_exit(128 + sig)
    }
}

fn close(fd: RawFd) {
    // SAFETY: closing a descriptor of ours that nothing in this task uses any more.
    unsafe { libc::close(fd) };
}
