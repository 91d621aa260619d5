//! The restore's side of epolls, inotify instances and pidfds: created in crest like the other
//! descriptions ([`create`]); the epolls' targets registered once every file of the tree is
//! open ([`register`]). The kinds' own logic is in [`crate::events`].

use std::os::fd::OwnedFd;

use crate::images::{FileIdentity, FileKind, ProcessImage};

use super::files::TreeFiles;
use super::RestoreError;

fn os(pid: i32, e: crate::events::EventError) -> RestoreError {
    RestoreError::Os {
        what: format!("pid {pid}: {}", e.what),
        source: e.source,
    }
}

/// crest's descriptor for a description of `ident` (an epoll without its targets yet, an
/// inotify instance with its watches, a stand-in for a pidfd) of process `pid`.
pub fn create(pid: i32, ident: &FileIdentity, flags: u32) -> Result<OwnedFd, RestoreError> {
    match &ident.kind {
        FileKind::Epoll(_) => crate::events::epoll::create(flags).map_err(|e| os(pid, e)),
        FileKind::Inotify(ino) => {
            crate::events::inotify::create(ino, flags).map_err(|e| os(pid, e))
        }
        FileKind::Pidfd {
            pid: crate::events::pidfd::DEAD,
        } => crate::events::pidfd::dead(ident.ino, flags).map_err(|source| RestoreError::Os {
            what: format!("pid {pid}: a pidfd of a process that has exited (fork, pidfd_open)"),
            source,
        }),
        FileKind::Pidfd { .. } => {
            crate::events::pidfd::placeholder().map_err(|source| RestoreError::Os {
                what: format!("pid {pid}: a stand-in for a pidfd (pidfd_open of crest)"),
                source,
            })
        }
        other => Err(RestoreError::Internal(format!(
            "pid {pid}: {other:?} is not an epoll, inotify or pidfd"
        ))),
    }
}

/// Registers the targets of every epoll of the tree, every file of which `tree` holds open.
pub fn register(processes: &[ProcessImage], tree: &TreeFiles) -> Result<(), RestoreError> {
    crate::events::epoll::register_all(processes, |id| tree.description(id)).map_err(|e| {
        RestoreError::Os {
            what: e.what,
            source: e.source,
        }
    })
}
