//! The restore side of the engine: restore the JVM under this process, hand it the restore
//! data, stay its parent.

use std::path::PathBuf;

use crate::images::{FileKind, Image};
use crate::restore::InheritFd;

use super::{send_restore_data, CracError, Pages, Sidecar};

/// `crestengine restore DIR`.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    pub dir: PathBuf,
    /// The int the restored JVM receives (`CRAC_NEW_ARGS_ID`: the restoring JVM's pid, which
    /// names its `/dev/shm/crac_<pid>`; 0 for none).
    pub data: i32,
    pub pages: Pages,
    /// Restore into a new pid namespace, so several restores of one image can run at once.
    pub pidns: bool,
}

/// Restores, signals and waits; returns the exit code for this process (the restored JVM's
/// exit status, or 128 + the signal that ended it).
pub fn restore(req: &RestoreRequest) -> Result<i32, CracError> {
    let failed = |e: super::Cause| CracError::Restore {
        dir: req.dir.clone(),
        source: e,
    };
    let image = crate::images::open_image(&req.dir).map_err(|e| failed(e.into()))?;
    let mut inherit = stdio_inherit(&image, |fd| {
        // SAFETY: F_GETFD only reads the flags of a descriptor number.
        unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
    });
    let shell_job = image.inventory.shell_job.is_some();
    if shell_job {
        // crest restores a shell job onto its standard input's terminal; the restored root's
        // own fd 0 stays what this process's was.
        if let Some(Some(saved)) = super::terminal_on_stdin(super::open_controlling_terminal()) {
            for i in inherit.iter_mut().filter(|i| i.fd == 0) {
                i.fd = saved;
            }
        }
    }
    let opts = crate::restore::RestoreOptions {
        dir: req.dir.clone(),
        pidns: req.pidns,
        inherit,
        shell_job,
        lazy_pages: req.pages == Pages::Lazy,
        map_pages: req.pages == Pages::Map,
        host_clocks: !crate::arch::CLOCKS_CARRY_ON_BY_DEFAULT,
        ..Default::default()
    };
    let mut restored = crate::restore::restore(&opts).map_err(|e| failed(e.into()))?;
    let root = restored.pid();
    let sidecar = Sidecar::read(&req.dir);
    let tid = match sidecar.and_then(|s| s.tid) {
        None => None,
        Some(t) if !req.pidns => Some(t),
        Some(t) => crate::proc::outer_tid(root, t).map_err(|e| failed(e.into()))?,
    };
    if let Err(e) = send_restore_data(root, tid, req.data) {
        // Without the signal the restored JVM would wait inside the engine for ever.
        // SAFETY: kill of the restored root, this process's child (or its namespace's init's).
        unsafe { libc::kill(root, libc::SIGKILL) };
        let _ = restored.wait_forwarding(&[]);
        return Err(e);
    }
    if let Some(Err(e)) = restored.wait_lazy() {
        return Err(failed(
            format!("lazy pages failed: {e}; the restored JVM was killed").into(),
        ));
    }
    restored
        .wait_forwarding(&crate::restore::forwardable_signals())
        .map_err(|e| failed(e.into()))
}

/// `--inherit-fd` entries that give the restored root the caller's descriptors 0-2 in place of
/// the files its own 0-2 were (the first of several standard fds on one file wins; `open` says
/// whether the caller has that descriptor). A terminal of a `--shell-job` image is already the
/// restoring terminal, and files that have no name to match by are left as the image has them.
pub fn stdio_inherit(image: &Image, open: impl Fn(i32) -> bool) -> Vec<InheritFd> {
    let root = image.inventory.root_pid;
    let Some(p) = image.processes.iter().find(|p| p.pid == root) else {
        return Vec::new();
    };
    let mut out: Vec<InheritFd> = Vec::new();
    for n in 0..3 {
        let Some(fd) = p.fds.iter().find(|f| f.fd == n) else {
            continue;
        };
        let Some(ident) = p
            .open_files
            .get(fd.description as usize)
            .and_then(|d| p.files.get(d.file as usize))
        else {
            continue;
        };
        let resource = match &ident.kind {
            FileKind::Pipe(_) => format!("pipe:[{}]", ident.ino),
            FileKind::UnixSocket(_)
            | FileKind::Tcp(_)
            | FileKind::Udp(_)
            | FileKind::Netlink(_)
            | FileKind::Packet(_) => format!("socket:[{}]", ident.ino),
            FileKind::ShellTerminal { .. } => continue,
            _ if ident.path.starts_with('/') => ident.path.clone(),
            _ => continue,
        };
        if !open(n) || out.iter().any(|i| i.resource == resource) {
            continue;
        }
        out.push(InheritFd { fd: n, resource });
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn faults_and_stop_are_not_forwarded() {
        let f = crate::restore::forwardable_signals();
        assert!(f.contains(&nix::sys::signal::Signal::SIGTERM));
        assert!(f.contains(&nix::sys::signal::Signal::SIGUSR1));
        assert!(!f.contains(&nix::sys::signal::Signal::SIGKILL));
        assert!(!f.contains(&nix::sys::signal::Signal::SIGSEGV));
        assert!(!f.contains(&nix::sys::signal::Signal::SIGCHLD));
    }
}
