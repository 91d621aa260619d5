//! Which signal stops a restored process that was stopped when it was dumped.
//!
//! A parent sees the signal that stopped its child (`waitid(WSTOPPED)` reports it in
//! `si_status`), so the restore stops the process with the signal recorded at dump when that
//! signal is sure to stop it again: SIGSTOP always; SIGTSTP, SIGTTIN and SIGTTOU only when
//! their action is the default one, some thread does not block them, and the process group is
//! not orphaned (the kernel discards these three in an orphaned group, `do_signal_stop` /
//! `is_current_pgrp_orphaned` in kernel/signal.c). Otherwise SIGSTOP, which always stops it:
//! the process is stopped either way.

use crate::images::{ProcessImage, TreeTask, TreeTaskState};

/// The signal to stop the restored process `image` with (its group stop recorded at dump),
/// given the dumped tree.
pub fn stop_signal(image: &ProcessImage, tree: &[TreeTask]) -> i32 {
    let sig = image.task.group_stop as i32;
    if sig == libc::SIGSTOP || !matches!(sig, libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU) {
        return libc::SIGSTOP;
    }
    let default = image
        .task
        .sigactions
        .get(sig as usize - 1)
        .is_none_or(|a| a.handler == 0 /* SIG_DFL */);
    let bit = 1u64 << (sig - 1);
    let deliverable = image.threads.iter().any(|t| t.sigmask & bit == 0);
    if default && deliverable && !orphaned_group(image.pid, tree) {
        sig
    } else {
        libc::SIGSTOP
    }
}

/// Whether the process group of `pid` is orphaned once the tree is restored: no live member
/// has a parent in another group of the same session. The root's parent is crest (or, once
/// crest exits, the subreaper above it), compared by crest's own group and session.
fn orphaned_group(pid: i32, tree: &[TreeTask]) -> bool {
    let Some(me) = tree.iter().find(|t| t.pid == pid) else {
        return true;
    };
    let outside = (nix::unistd::getpgrp().as_raw(), getsid());
    !tree
        .iter()
        .filter(|m| m.pgid == me.pgid && matches!(m.state, TreeTaskState::Alive))
        .any(|m| {
            let (ppgid, psid) = tree
                .iter()
                .find(|p| p.pid == m.ppid)
                .map_or(outside, |p| (p.pgid, p.sid));
            ppgid != m.pgid && psid == m.sid
        })
}

fn getsid() -> i32 {
    nix::unistd::getsid(None).map_or(-1, |s| s.as_raw())
}
