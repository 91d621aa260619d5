//! `crest restore --pidns`: the tree restored into a fresh pid namespace, where it keeps its
//! original pids, so that several copies of one image can run at once (the "fork a warmed-up
//! JVM by restoring its checkpoint" use), with the original still running beside them.
//!
//! crest forks a helper into a new pid namespace and a new mount namespace (clone3 with
//! CLONE_NEWPID|CLONE_NEWNS). The helper is the namespace's pid 1: it mounts a /proc of its
//! own (so every /proc/PID the restore reads names the namespace's pids), gives the copy a
//! private /tmp (a JVM's attach socket and perf data are per-pid files in /tmp, which copies
//! with one pid would otherwise share) into which it binds, from the machine's /tmp, the
//! entries holding files the image needs there, then runs the whole restore as crest would and
//! reports to crest. It stays as the namespace's init: it
//! reaps orphans, forwards every signal it can catch (but SIGCHLD) to the root, and exits with the root's status
//! once the root ends (which ends the namespace, and every process left in it).

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};

use crate::images::FileKind;

use super::{RestoreError, RestoreOptions, Restored};

/// Restores `opts` (with `pidns` set) into a new pid namespace.
pub fn restore(opts: &RestoreOptions) -> Result<Restored, RestoreError> {
    // Read and check the image here too, so a bad image is refused before anything is forked.
    let image = crate::images::open_image(&opts.dir)?;
    let tmp = tmp_plan(&image);
    if tmp.is_none() {
        crate::warn!(
            "the image uses /tmp itself (as a working directory, say): the copy shares /tmp \
             with other copies and the original (a JVM's attach socket and perf data are named \
             by pid there)"
        );
    }
    let (mut report_r, report_w) = pipe()?;
    // SAFETY: crest is single-threaded here; the child only runs init_main, which ends in
    // _exit.
    let child = unsafe {
        crate::sys::clone3_flags(
            (libc::CLONE_NEWPID | libc::CLONE_NEWNS) as u64,
            libc::SIGCHLD,
        )
    }
    .map_err(|e| RestoreError::Os {
        what: "creating a pid namespace for the copy (clone3 CLONE_NEWPID|CLONE_NEWNS; needs \
               CAP_SYS_ADMIN)"
            .into(),
        source: e.into(),
    })?;
    if child == 0 {
        drop(report_r);
        init_main(opts, tmp.as_deref(), report_w);
    }
    drop(report_w);
    let mut first = [0u8; 1];
    let ok = matches!(report_r.read(&mut first), Ok(1) if first[0] == b'R');
    if !ok {
        let mut msg = String::new();
        let _ = report_r.read_to_string(&mut msg);
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child), None);
        return Err(RestoreError::PidNamespace(if msg.is_empty() {
            "the namespace's init ended without a report".into()
        } else {
            msg
        }));
    }
    // The root is the init's only child; crest sees it under another pid.
    let root = crate::proc::Proc::open(child)
        .and_then(|p| p.children())
        .ok()
        .and_then(|kids| kids.first().copied())
        .ok_or_else(|| {
            RestoreError::Internal(format!("the copy's root below pid {child} is gone"))
        })?;
    Ok(Restored::under(child, root))
}

/// The entries of the machine's /tmp (names directly in /tmp) that the copy's private /tmp
/// must show, because files of the image live under them; `None` when the image uses /tmp
/// itself, which then cannot be private. What a restore creates anew in /tmp (a perf-data file
/// whose content the image holds, a UNIX socket bound directly in /tmp, such as a JVM's attach
/// listener) is made in the private /tmp instead.
fn tmp_plan(image: &crate::images::Image) -> Option<Vec<String>> {
    let mut binds: Vec<String> = Vec::new();
    for f in image.processes.iter().flat_map(|p| &p.files) {
        if f.path == "/tmp" {
            return None;
        }
        let Some(rest) = f.path.strip_prefix("/tmp/") else {
            continue;
        };
        let top = rest.split('/').next().unwrap_or(rest);
        let created = match f.kind {
            FileKind::ContentInImage => true,
            // Made again where it was (and unlinked at once).
            FileKind::Ghost(_) => !rest.contains('/'),
            FileKind::UnixSocket(_) => !rest.contains('/'),
            _ => false,
        };
        if !created && !top.is_empty() && !binds.iter().any(|b| b == top) {
            binds.push(top.to_string());
        }
    }
    Some(binds)
}

/// The namespace's init. Never returns.
fn init_main(opts: &RestoreOptions, tmp: Option<&[String]>, mut report: File) -> ! {
    let result = setup_mounts(tmp).and_then(|()| {
        let here = RestoreOptions {
            pidns: false,
            ..opts.clone()
        };
        super::restore(&here).map_err(|e| e.to_string())
    });
    match result {
        Ok(restored) => {
            let _ = report.write_all(b"R");
            drop(report);
            // crest's own stdin/stdout/stderr are not the init's to keep: a shell waiting for
            // crest's output would wait for as long as the copy runs.
            detach_stdio();
            // Forwards signals to the root and ends with it, taking the namespace along.
            let code = restored
                .wait_forwarding(&super::wait::forwardable_signals())
                .unwrap_or(1);
            // SAFETY: _exit has no preconditions.
            unsafe { libc::_exit(code) }
        }
        Err(msg) => {
            let _ = report.write_all(format!("E{msg}").as_bytes());
            // SAFETY: _exit has no preconditions.
            unsafe { libc::_exit(1) }
        }
    }
}

fn detach_stdio() {
    let null = CString::new("/dev/null").expect("no NUL");
    // SAFETY: open and dup2 on descriptors of our own.
    unsafe {
        let fd = libc::open(null.as_ptr(), libc::O_RDWR);
        if fd >= 0 {
            for target in 0..3 {
                libc::dup2(fd, target);
            }
            if fd > 2 {
                libc::close(fd);
            }
        }
    }
}

/// Mount propagation made private (nothing of ours reaches the host), a fresh /proc for the new
/// pid namespace, and a fresh /tmp showing the machine's entries `tmp` names (when `Some`).
fn setup_mounts(tmp: Option<&[String]>) -> Result<(), String> {
    let mount = |src: &str,
                 target: &str,
                 fstype: Option<&str>,
                 flags: libc::c_ulong,
                 data: Option<&str>| {
        let c = |s: &str| CString::new(s).expect("no NUL in a mount argument");
        let (src, target) = (c(src), c(target));
        let fstype = fstype.map(c);
        let data = data.map(c);
        // SAFETY: valid C strings or null pointers, as mount(2) takes them.
        let r = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()),
                flags,
                data.as_ref()
                    .map_or(std::ptr::null(), |d| d.as_ptr() as *const libc::c_void),
            )
        };
        if r != 0 {
            return Err(format!(
                "mounting {} on {}: {}",
                src.to_string_lossy(),
                target.to_string_lossy(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    };
    mount("none", "/", None, libc::MS_REC | libc::MS_PRIVATE, None)?;
    mount(
        "proc",
        "/proc",
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )?;
    let Some(binds) = tmp else {
        return Ok(());
    };
    // The machine's /tmp, still reachable through this descriptor once the tmpfs covers it.
    let old_tmp = std::fs::File::open("/tmp").map_err(|e| format!("opening /tmp: {e}"))?;
    let old = format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&old_tmp)
    );
    mount(
        "tmpfs",
        "/tmp",
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=1777"),
    )?;
    for name in binds {
        let source = format!("{old}/{name}");
        let target = format!("/tmp/{name}");
        let md = std::fs::symlink_metadata(&source)
            .map_err(|e| format!("the image needs /tmp/{name}: {e}"))?;
        let made = if md.is_dir() {
            std::fs::create_dir(&target)
        } else {
            std::fs::File::create(&target).map(drop)
        };
        made.map_err(|e| format!("making a mount point for /tmp/{name}: {e}"))?;
        mount(&source, &target, None, libc::MS_BIND | libc::MS_REC, None)?;
    }
    Ok(())
}

fn pipe() -> Result<(File, File), RestoreError> {
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| RestoreError::Os {
            what: "creating a pipe".into(),
            source: e.into(),
        })?;
    Ok((File::from(r), File::from(w)))
}
