//! What the fds of the tree refer to in other fds and processes, resolved once every process is
//! collected and every open file description has its tree-wide id: the targets of each epoll
//! ([`crate::events::epoll`]) and the process of each pidfd ([`crate::events::pidfd`]).

use crate::events::{epoll, pidfd};
use std::collections::HashSet;

use crate::images::{EventFd, FileKind};

use super::process::CollectedProcess;
use super::DumpError;

/// Resolves every epoll target to a description of the tree and checks every pidfd's process;
/// refuses, all at once, what cannot be restored.
pub fn resolve(procs: &mut [CollectedProcess]) -> Result<(), DumpError> {
    let holders: Vec<epoll::Holder> = procs
        .iter()
        .map(|p| epoll::Holder {
            pid: p.pid(),
            fds: p
                .fd_table
                .fds
                .iter()
                .map(|f| (f.fd, p.fd_table.open_files[f.description as usize].id))
                .collect(),
        })
        .collect();
    let signalfds: HashSet<u32> = procs
        .iter()
        .flat_map(|p| {
            p.fd_table
                .open_files
                .iter()
                .filter_map(|d| match &p.files.get(d.file).kind {
                    FileKind::Event(EventFd::Signals { .. }) => Some(d.id),
                    _ => None,
                })
        })
        .collect();
    let tree: Vec<(i32, i32)> = procs.iter().map(|p| (p.pid(), p.ppid)).collect();
    let mut problems = Vec::new();
    for p in procs.iter_mut() {
        let pid = p.pid();
        for d in 0..p.fd_table.open_files.len() as u32 {
            let file = p.fd_table.open_files[d as usize].file;
            let id = p.fd_table.open_files[d as usize].id;
            let (holder, fd) = p.fd_table.holder_of(pid, d);
            match &mut p.files.get_mut(file).kind {
                FileKind::Epoll(ep) => {
                    problems.extend(epoll::resolve(holder, fd, &mut ep.targets, &holders));
                    problems.extend(epoll::signalfd_problems(
                        holder,
                        fd,
                        id,
                        &ep.targets,
                        &holders,
                        &signalfds,
                    ));
                }
                FileKind::Pidfd { pid: target } => {
                    if let Err(why) = pidfd::check_target(*target, &tree) {
                        problems.push(format!("process {pid}: fd {fd} is {why}"));
                    }
                }
                _ => {}
            }
        }
    }
    match problems.len() {
        0 => Ok(()),
        _ => Err(DumpError::Refused { problems }),
    }
}
