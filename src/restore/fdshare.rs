//! Fd tables shared between processes (CLONE_FILES), recreated.
//!
//! The processes of a group ([`ProcessImage::fd_table_of`]) are forked with CLONE_FILES from
//! their parent, which is in the group too (the dump refuses other layouts); the first in
//! tree order, the owner, is forked as any process. Every task is a copy of crest until its
//! restorer runs, holding crest's descriptors above the fd base; in a shared table whatever
//! one member opens, moves or closes, the others see. So:
//!
//! - only the owner installs the image's fds (the table is one); the others wait on the
//!   group's pipe until it has, so that no one opens a descriptor meanwhile at a number the
//!   owner is about to fill or close;
//! - a sharer closes only what is its own (its pipes to crest, its copies of the image's
//!   descriptions, its cwd and root); the owner, last, closes everything else of crest's, keeping
//!   the other members' own descriptors and the files their restorers still read (each
//!   restorer closes its own);
//! - crest lets the members of a group go into their restorers only once every member has
//!   reported ready, so the owner's close comes after every member has used what it closes.
//!
//! Threads share their process's table as always (the restorer clones them with CLONE_FILES).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::images::ProcessImage;

use super::files::OpenedFiles;
use super::spawn::TaskPipes;
use super::tree::TreePlan;
use super::RestoreError;

/// How long a sharer waits for the owner of its table to install the fds (a safety net: the
/// owner reports any failure of its own to crest, which then ends the tree).
const INSTALL_WAIT: Duration = Duration::from_secs(60);

/// What a task is to its fd table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A table of its own (the common case).
    Alone,
    /// The first of a group: installs the table's fds.
    Owner(usize),
    /// Forked with CLONE_FILES from its parent; its fds are the owner's.
    Sharer(usize),
}

struct Group {
    /// Plan task indices, the owner first, in tree order.
    members: Vec<usize>,
    /// The group's pipe: the owner writes one byte per sharer once the fds are installed.
    sync_r: RawFd,
    sync_w: RawFd,
}

/// The shared fd tables of a tree restore.
pub struct FdTables {
    roles: Vec<Role>,
    groups: Vec<Group>,
    /// crest's ends of the groups' pipes, closed once the root is forked.
    crest_ends: Vec<OwnedFd>,
}

impl FdTables {
    /// Finds the groups of `processes` in `plan`; their pipes are numbered at `base` or above.
    pub fn plan(
        plan: &TreePlan,
        processes: &[ProcessImage],
        base: RawFd,
    ) -> Result<FdTables, RestoreError> {
        let mut roles = vec![Role::Alone; plan.tasks.len()];
        let mut groups: Vec<Group> = Vec::new();
        let mut crest_ends = Vec::new();
        let task_of = |pid: i32| plan.tasks.iter().position(|t| t.pid == pid);
        for (i, t) in plan.tasks.iter().enumerate() {
            let Some(owner) = t.process.and_then(|p| processes[p].fd_table_of) else {
                continue;
            };
            let o = task_of(owner).filter(|&o| o < i).ok_or_else(|| {
                RestoreError::BadImage(format!(
                    "pid {} shares the fd table of {owner}, which is not an earlier task",
                    t.pid
                ))
            })?;
            let g = match roles[o] {
                Role::Owner(g) => g,
                Role::Alone => {
                    let (r, w) = super::pipe_above(base)?;
                    let (r, w) = (OwnedFd::from(r), OwnedFd::from(w));
                    groups.push(Group {
                        members: vec![o],
                        sync_r: r.as_raw_fd(),
                        sync_w: w.as_raw_fd(),
                    });
                    crest_ends.extend([r, w]);
                    roles[o] = Role::Owner(groups.len() - 1);
                    groups.len() - 1
                }
                Role::Sharer(_) => {
                    return Err(RestoreError::BadImage(format!(
                        "pid {} shares the fd table of {owner}, which shares another's",
                        t.pid
                    )))
                }
            };
            let parent_in = t
                .parent
                .is_some_and(|p| matches!(roles[p], Role::Owner(h) | Role::Sharer(h) if h == g));
            if !parent_in {
                return Err(RestoreError::Unsupported(format!(
                    "pid {} shares the fd table of {owner}, but its parent does not; crest \
                     can give a table only to a child of a process that holds it",
                    t.pid
                )));
            }
            roles[i] = Role::Sharer(g);
            groups[g].members.push(i);
        }
        Ok(FdTables {
            roles,
            groups,
            crest_ends,
        })
    }

    pub fn role(&self, i: usize) -> Role {
        self.roles[i]
    }

    /// The clone flags task `i` is forked with.
    pub fn clone_flags(&self, i: usize) -> u64 {
        match self.roles[i] {
            Role::Sharer(_) => libc::CLONE_FILES as u64,
            _ => 0,
        }
    }

    /// Whether task `c` (a child of `i`) is in another table than `i`'s after its fork: the
    /// task pipes of its subtree are then closed in `i`'s table.
    pub fn forked_apart(&self, c: usize) -> bool {
        !matches!(self.roles[c], Role::Sharer(_))
    }

    /// crest's ends of the groups' pipes: closed once the tasks have theirs.
    pub fn close_crest_ends(&mut self) {
        self.crest_ends.clear();
    }

    /// The tasks crest may send into their restorers once task `i` has reported ready (tasks
    /// are ready in plan order): `i` itself, unless it is in a group whose last member is not
    /// ready yet; the whole group when `i` is its last.
    pub fn startable(&self, i: usize) -> Vec<usize> {
        match self.roles[i] {
            Role::Alone => vec![i],
            Role::Owner(g) | Role::Sharer(g) => {
                let members = &self.groups[g].members;
                if members.last() == Some(&i) {
                    members.clone()
                } else {
                    Vec::new()
                }
            }
        }
    }

    /// What task `i` does about its shared table, if it has one. `files` and `pipes` are
    /// every process's and every task's.
    pub fn task_table(
        &self,
        i: usize,
        plan: &TreePlan,
        files: &[OpenedFiles],
        pipes: &[TaskPipes],
    ) -> Option<TaskTable> {
        let own = |j: usize| -> Vec<RawFd> {
            let mut fds = vec![pipes[j].status_w, pipes[j].go_r];
            if let Some(p) = plan.tasks[j].process {
                fds.extend(files[p].descriptions.iter().map(|d| d.as_raw_fd()));
                fds.push(files[p].cwd.as_raw_fd());
                fds.extend(files[p].root.iter().map(|r| r.as_raw_fd()));
            }
            fds
        };
        match self.roles[i] {
            Role::Alone => None,
            Role::Owner(g) => {
                let group = &self.groups[g];
                let mut keep = Vec::new();
                for &m in &group.members[1..] {
                    keep.extend(own(m));
                    if let Some(p) = plan.tasks[m].process {
                        keep.extend(restorer_fds(&files[p]));
                    }
                }
                Some(TaskTable::Owner {
                    sync_w: group.sync_w,
                    sharers: group.members.len() - 1,
                    keep,
                })
            }
            Role::Sharer(g) => Some(TaskTable::Sharer {
                sync_r: self.groups[g].sync_r,
                close: own(i),
            }),
        }
    }
}

/// The descriptors the restorer of a process reads and then closes itself (its bootstrap's
/// close list).
fn restorer_fds(f: &OpenedFiles) -> Vec<RawFd> {
    let mut fds = vec![f.pages.as_raw_fd(), f.exe.as_raw_fd()];
    fds.extend(f.mapped.iter().flatten().map(|m| m.as_raw_fd()));
    fds.extend(f.shmem.values().map(|m| m.as_raw_fd()));
    fds
}

/// One task's part in its shared fd table (see the module comment).
pub enum TaskTable {
    Owner {
        sync_w: RawFd,
        sharers: usize,
        /// The other members' descriptors, which the owner's last close keeps.
        keep: Vec<RawFd>,
    },
    Sharer {
        sync_r: RawFd,
        /// Its own descriptors, closed before its restorer.
        close: Vec<RawFd>,
    },
}

impl TaskTable {
    /// Whether this task installs the table's fds.
    pub fn installs(&self) -> bool {
        matches!(self, TaskTable::Owner { .. })
    }

    /// A sharer waits until the owner has installed the fds.
    pub fn wait_installed(&self) -> Result<(), String> {
        let TaskTable::Sharer { sync_r, .. } = self else {
            return Ok(());
        };
        let mut pfd = libc::pollfd {
            fd: *sync_r,
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, INSTALL_WAIT.as_millis() as libc::c_int) };
            if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            if r <= 0 {
                return Err(format!(
                    "the owner of the shared fd table did not install its fds within {} s",
                    INSTALL_WAIT.as_secs()
                ));
            }
            break;
        }
        let mut b = 0u8;
        // SAFETY: reads one byte into b.
        if unsafe { libc::read(*sync_r, (&mut b as *mut u8).cast(), 1) } != 1 {
            return Err(format!(
                "waiting for the owner of the shared fd table: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    /// The owner tells every sharer the fds are in place.
    pub fn installed(&self) -> Result<(), String> {
        let TaskTable::Owner {
            sync_w, sharers, ..
        } = self
        else {
            return Ok(());
        };
        let bytes = vec![0u8; *sharers];
        // SAFETY: writes from a valid buffer; a pipe takes far more than a few bytes at once.
        let n = unsafe { libc::write(*sync_w, bytes.as_ptr().cast(), bytes.len()) };
        if n != bytes.len() as isize {
            return Err(format!(
                "telling the sharers of the fd table it is installed: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    /// Right before the restorer: the sharer closes its own descriptors; the owner closes
    /// everything at `base` or above but `keep` (its restorer's) and the other members'.
    pub fn close_before_restorer(&self, keep: &[RawFd], base: RawFd) {
        match self {
            TaskTable::Sharer { close, .. } => {
                for &fd in close {
                    // SAFETY: closing a descriptor only this task uses and no longer needs.
                    unsafe { libc::close(fd) };
                }
            }
            TaskTable::Owner { keep: others, .. } => {
                let mut all: Vec<RawFd> = keep.iter().chain(others).copied().collect();
                all.sort_unstable();
                all.dedup();
                super::child::close_all_but(&all, base);
            }
        }
    }
}
