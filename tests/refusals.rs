//! What crest cannot dump it refuses with a message naming the pid (and the fd), writes no
//! image, and leaves the process running exactly as before. (A multi-threaded process used to be
//! refused; it is dumped now, which one test here checks.)

mod common;

use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;

use common::*;

/// No image and no leftover temporary directory beside where the image would have gone:
/// `parent` holds nothing but the entries named in `expected`.
fn assert_no_image_written(parent: &Path, dir: &Path, expected: &[&str]) {
    assert!(!dir.exists(), "a refused dump left {}", dir.display());
    let mut entries: Vec<String> = std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        expected,
        "a refused dump left something in {}",
        parent.display()
    );
}

/// After a refused dump: not traced, not stopped, still logging, still intact.
fn assert_left_running(v: &Victim) {
    wait_for("the tracer to let go", TIMEOUT, || {
        (tracer_pid(v.pid) == Some(0)).then_some(())
    });
    let at = v.last_logged();
    v.wait_logging_after(at + 3);
    v.assert_running();
    if v.kind != Kind::Threads {
        v.assert_log_consecutive();
    }
    v.verify()
        .expect("the victim verifies after the refused dump");
}

#[test]
fn dumping_a_pid_that_does_not_exist_fails_naming_it() {
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = work.path().join("img");
    let pid = free_pid();
    let out = dump(pid, &dir, false);
    out.assert_failed().assert_stderr_mentions(&pid.to_string());
    assert_no_image_written(work.path(), &dir, &[]);
}

#[test]
fn a_two_thread_process_is_no_longer_refused_and_left_running() {
    let v = Victim::start(Kind::Threads);
    let dir = v.work.join("img");
    assert_eq!(
        std::fs::read_dir(format!("/proc/{}/task", v.pid))
            .unwrap()
            .count(),
        2
    );
    dump(v.pid, &dir, true).assert_ok();
    let image = show_json(&dir);
    assert_eq!(
        image["processes"][0]["threads"].as_array().map(Vec::len),
        Some(2),
        "both threads are in the image"
    );
    assert_left_running(&v);
    assert_eq!(
        std::fs::read_dir(format!("/proc/{}/task", v.pid))
            .unwrap()
            .count(),
        2,
        "a thread was lost"
    );
}

#[test]
fn a_fanotify_fd_is_refused_and_the_process_left_running() {
    // stdin is a fanotify instance, which crest does not restore; the victim never reads stdin.
    // SAFETY: fanotify_init takes integers and returns a new descriptor or -1.
    let raw = unsafe { libc::fanotify_init(libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC, 0) };
    assert!(
        raw >= 0,
        "fanotify_init: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: raw is a descriptor we just created and own.
    let fan = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    let v = Victim::start_with(Kind::Memcheck, move |cmd| {
        cmd.stdin(Stdio::from(fan));
    });
    let dir = v.work.join("img");
    let out = dump(v.pid, &dir, true);
    out.assert_failed().assert_stderr_mentions(&v.pid_str());
    assert!(
        out.stderr.contains("fd 0") && out.stderr.contains("fanotify instance"),
        "the refusal should name the fd and what it is: {out}"
    );
    assert_no_image_written(&v.work, &dir, &["ctl"]);
    assert_left_running(&v);
}

#[test]
fn a_working_directory_in_the_proc_of_an_ended_process_is_refused() {
    let v = Victim::start_with(Kind::Memcheck, |cmd| {
        // SAFETY: fork, chdir, kill and waitpid between fork and exec are async-signal-safe;
        // the grandchild only pauses until it is killed.
        unsafe {
            cmd.pre_exec(|| {
                let p = libc::fork();
                if p == 0 {
                    libc::pause();
                    libc::_exit(0);
                }
                let dir = std::ffi::CString::new(format!("/proc/{p}")).unwrap();
                if p < 0 || libc::chdir(dir.as_ptr()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::kill(p, libc::SIGKILL);
                libc::waitpid(p, std::ptr::null_mut(), 0);
                Ok(())
            });
        }
    });
    let cwd = std::fs::read_link(format!("/proc/{}/cwd", v.pid)).unwrap();
    assert!(cwd.to_string_lossy().ends_with(" (deleted)"), "{cwd:?}");
    let dir = v.work.join("img");
    let out = dump(v.pid, &dir, false);
    out.assert_failed()
        .assert_stderr_mentions(&v.pid_str())
        .assert_stderr_mentions("the /proc directory of a process that has ended");
    assert_no_image_written(&v.work, &dir, &["ctl"]);
    assert_left_running(&v);
}

#[test]
fn a_socket_fd_is_refused_and_the_process_left_running() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let v = Victim::start_with(Kind::Memcheck, move |cmd| {
        cmd.stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)));
    });
    let dir = v.work.join("img");
    let out = dump(v.pid, &dir, false);
    out.assert_failed().assert_stderr_mentions(&v.pid_str());
    assert!(
        out.stderr.contains("fd 0") || out.stderr.to_lowercase().contains("socket"),
        "the refusal should name the fd: {out}"
    );
    assert_no_image_written(&v.work, &dir, &["ctl"]);
    assert_left_running(&v);
    drop(ours);
}

/// The `key value` lines of a file the victim wrote in its control directory.
fn info(v: &Victim, name: &str) -> std::collections::BTreeMap<String, String> {
    let path = v.ctl.join(name);
    let text = wait_for(&format!("{}", path.display()), TIMEOUT, || {
        std::fs::read_to_string(&path).ok()
    });
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn every_refused_fd_and_mapping_of_every_process_is_named_in_one_refusal() {
    let v = Victim::start(Kind::Refused);
    let parent = info(&v, "info");
    let child: i32 = parent["child"].parse().unwrap();
    let child_info = info(&v, "child-info");
    let child_log = v.ctl.join("child-log");
    let child_ticks = || {
        std::fs::read_to_string(&child_log)
            .unwrap_or_default()
            .lines()
            .count()
    };

    let dir = v.work.join("img");
    // Without --leave-running: a refused dump kills nothing either. The deleted files would be
    // stored and recreated, but each has more data than this --ghost-limit allows.
    let out = dump_with(
        v.pid,
        &dir,
        &[
            std::ffi::OsStr::new("--ghost-limit"),
            std::ffi::OsStr::new("10"),
        ],
    );
    out.assert_failed();
    assert_eq!(
        out.stderr.matches("the tree cannot be dumped").count(),
        1,
        "one refusal: {out}"
    );
    let problems: Vec<&str> = out
        .stderr
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("- "))
        .collect();
    let expected = [
        (v.pid, "fd 101", "io_uring"),
        (v.pid, "fd 102", "deleted file"),
        (
            v.pid,
            &*format!("mapping {}", parent["mapped"]),
            "has been deleted",
        ),
        (
            v.pid,
            &*format!("mapping {}", parent["privshm"]),
            "no longer maps shared",
        ),
        (child, "fd 101", "io_uring"),
        (child, "fd 102", "deleted file"),
        (
            child,
            &*format!("mapping {}", child_info["mapped"]),
            "has been deleted",
        ),
        (
            child,
            &*format!("mapping {}", child_info["privshm"]),
            "no longer maps shared",
        ),
    ];
    for (pid, thing, kind) in expected {
        let prefix = format!("process {pid}: ");
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with(&prefix) && p.contains(thing) && p.contains(kind)),
            "no problem line names process {pid}, {thing} ({kind}): {out}"
        );
    }
    assert_eq!(problems.len(), expected.len(), "{out}");
    assert_no_image_written(&v.work, &dir, &["ctl"]);

    // Both run on untouched: the parent (its verify checks its objects and that the child
    // lives) and the child (which exits if one of its objects changed).
    assert_left_running(&v);
    wait_for("the tracer to let go of the child", TIMEOUT, || {
        (tracer_pid(child) == Some(0)).then_some(())
    });
    let ticks = child_ticks();
    wait_for("the child to tick on", TIMEOUT, || {
        (child_ticks() > ticks + 3).then_some(())
    });
    assert!(
        matches!(proc_state(child), Some('S' | 'R')),
        "child {child} is {:?}: {}",
        proc_state(child),
        v.stderr_text()
    );

    // The child dies with its parent (PR_SET_PDEATHSIG) and comes to us, the subreaper.
    drop(v);
    reap_pid(child, TIMEOUT).unwrap();
}
