//! `crest restore --pidns` (issue #9): copies of one image, each in a fresh pid namespace where
//! the tree keeps its pids, running at once beside the original, each with its own output
//! (`--inherit-fd`).

mod common;

use std::fs;
use std::path::Path;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// `NSpid:` of /proc/PID/status: the pid in each namespace, outermost first.
fn nspid(pid: i32) -> Vec<i32> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("NSpid:"))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .filter_map(|w| w.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn ppid(pid: i32) -> i32 {
    procfs::process::Process::new(pid)
        .and_then(|p| p.stat())
        .map(|s| s.ppid)
        .unwrap_or(0)
}

/// A copy of the image (see [`spawn_pidns_copy`]) writing to `out`; returns its root pid as
/// we see it.
fn restore_copy(dir: &Path, resource: &Path, out: &Path, pidfile: &Path) -> i32 {
    let file = fs::File::create(out).expect("create the copy's output");
    spawn_pidns_copy(dir, resource, &file, pidfile)
        .wait(CREST_TIMEOUT)
        .assert_ok();
    fs::read_to_string(pidfile)
        .expect("the pid file")
        .trim()
        .parse()
        .expect("a pid")
}

/// Ends a copy: its namespace's init (the root's parent) is killed, which kills the namespace.
fn end_copy(root: i32) {
    assert_ne!(ppid(root), 0, "copy {root} has no parent");
    PidnsCopies::end(root);
}

#[test]
fn three_copies_of_a_tree_run_at_once_beside_the_original() {
    let v = Victim::start(Kind::Tree);
    let pids_text = wait_for("the tree's pids file", TIMEOUT, || {
        fs::read_to_string(v.ctl.join("pids")).ok()
    });
    let members: Vec<i32> = pids_text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect();
    v.verify().expect("the tree verifies");
    let dir = v.work.join("img");
    dump(v.pid, &dir, true).assert_ok();

    let records = v.ctl.join("records");
    let mut copies = Vec::new();
    let _ends = PidnsCopies((1..=3).map(|i| v.work.join(format!("pid-{i}"))).collect());
    for i in 1..=3 {
        let out = v.work.join(format!("records-{i}"));
        let root = restore_copy(&dir, &records, &out, &v.work.join(format!("pid-{i}")));
        assert_ne!(
            root, v.pid,
            "copy {i} runs under the original's pid in our namespace"
        );
        assert_eq!(
            nspid(root).last().copied(),
            Some(v.pid),
            "copy {i}: the root's pid inside its namespace"
        );
        copies.push((root, out));
    }
    // Every copy runs its whole tree: the records of all six processes grow in its own file.
    for (root, out) in &copies {
        wait_for(&format!("copy {root} to write records"), TIMEOUT, || {
            let data = fs::read(out).ok()?;
            let pids: std::collections::BTreeSet<&str> = data
                .chunks(24)
                .filter_map(|r| std::str::from_utf8(r).ok()?.split_whitespace().next())
                .collect();
            (pids.len() >= 6).then_some(())
        });
        let kids = procfs::process::Process::new(*root)
            .unwrap()
            .task_main_thread()
            .unwrap()
            .children()
            .unwrap();
        assert_eq!(kids.len(), 4, "copy {root}: A, B, C and the zombie");
    }
    // The original is untouched and still answers.
    v.verify().expect("the original tree after three copies");
    for (root, _) in copies {
        end_copy(root);
    }
    for m in members {
        let _ = kill(Pid::from_raw(m), Signal::SIGKILL);
    }
    drop(v);
    for m in pids_text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<i32>().ok())
    {
        let _ = reap_pid(m, TIMEOUT);
    }
}

/// A program whose files live under /tmp: each copy still gets a private /tmp (with the
/// program's directory bound into it), and writes where it was told to.
#[test]
fn copies_of_a_program_working_under_tmp_get_a_private_tmp_with_its_directory() {
    use std::os::unix::process::CommandExt;
    setup();
    let work = tempfile::Builder::new()
        .prefix("crest-pidns-")
        .tempdir_in("/tmp")
        .unwrap();
    let log = work.path().join("log");
    let script = "import time\nn = 0\nwhile True:\n    n += 1\n    print(n, flush=True)\n    time.sleep(0.01)\n";
    let out = fs::File::create(&log).unwrap();
    let mut cmd = std::process::Command::new("python3");
    cmd.arg("-c")
        .arg(script)
        .current_dir(work.path())
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(std::process::Stdio::null());
    // SAFETY: setsid in the forked child before exec is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            Ok(())
        });
    }
    let child = cmd.spawn().expect("start python3");
    let pid = child.id() as i32;
    drop(child);
    wait_for("python3 to write", TIMEOUT, || {
        (fs::read_to_string(&log).ok()?.lines().count() >= 3).then_some(())
    });
    let dir = work.path().join("img");
    dump(pid, &dir, true).assert_ok();
    let mut copies = Vec::new();
    let _ends = PidnsCopies(
        (1..=2)
            .map(|i| work.path().join(format!("pid-{i}")))
            .collect(),
    );
    for i in 1..=2 {
        let out = work.path().join(format!("out-{i}"));
        let root = restore_copy(&dir, &log, &out, &work.path().join(format!("pid-{i}")));
        copies.push((root, out));
    }
    for (root, out) in &copies {
        wait_for(
            &format!("copy {root} to write its own file"),
            TIMEOUT,
            || (fs::read_to_string(out).ok()?.lines().count() >= 3).then_some(()),
        );
        // Its /tmp is not ours, yet its working directory (under /tmp) is.
        let tmp = fs::metadata(format!("/proc/{root}/root/tmp")).unwrap();
        assert_ne!(
            std::os::unix::fs::MetadataExt::dev(&tmp),
            std::os::unix::fs::MetadataExt::dev(&fs::metadata("/tmp").unwrap()),
            "copy {root} shares our /tmp"
        );
        assert_eq!(
            fs::read_link(format!("/proc/{root}/cwd")).unwrap(),
            work.path()
        );
    }
    for (root, _) in copies {
        end_copy(root);
    }
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    let _ = reap_pid(pid, TIMEOUT);
}
