//! POSIX message queues of the tree: each one created once ([`crate::files::mqueue::create`]),
//! however many descriptions of the tree have it, and every description opened from it.

use std::collections::HashMap;
use std::os::fd::OwnedFd;

use crate::images::{FileIdentity, Mqueue};

use super::RestoreError;

/// The queues made so far, by inode at dump time.
#[derive(Default)]
pub struct Mqueues {
    made: HashMap<(u64, u64), OwnedFd>,
}

impl Mqueues {
    /// A new description (access mode and O_NONBLOCK of `flags`) of queue `q` (`ident`),
    /// created first if no description made it yet; `who` names the fds for messages.
    pub fn open(
        &mut self,
        ident: &FileIdentity,
        q: &Mqueue,
        flags: u32,
        who: &str,
    ) -> Result<OwnedFd, RestoreError> {
        let what = |why: String| {
            RestoreError::Ipc(format!(
                "{who}: the POSIX message queue /{} cannot be restored: {why}",
                q.name
            ))
        };
        let queue = match self.made.entry((ident.dev, ident.ino)) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(crate::files::mqueue::create(q, ident.mode).map_err(what)?)
            }
        };
        crate::files::mqueue::open_description(queue, flags as i32)
            .map_err(|e| what(format!("opening it again failed: {e}")))
    }
}
