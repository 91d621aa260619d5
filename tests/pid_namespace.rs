//! crest inside a pid namespace, as that namespace's pid 1 (started with unshare(1) from
//! util-linux: `unshare --pid --fork --mount-proc`, which makes the forked program pid 1 of a new
//! pid namespace with its own /proc): it dumps a process started in the same namespace, and a
//! restore run the same way brings it back under the pid that namespace gave it. A process in
//! another pid namespace than crest's is refused and left running. A process whose session leader
//! is outside crest's namespace (session 0 there, as in a container) comes back in crest's
//! session, as any process whose session leader is not in the tree.
//!
//! The victims here are started through unshare, not by the harness, and talk through the same
//! control directory protocol (tests/victims/victim.h).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Instant;

use common::*;

/// A control directory with its log, in a fresh work directory.
struct Ctl {
    _tmp: tempfile::TempDir,
    work: PathBuf,
    ctl: PathBuf,
    log: PathBuf,
}

impl Ctl {
    fn new(name: &str) -> Ctl {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("crest-pidns-{name}-"))
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let work = tmp.path().to_path_buf();
        let ctl = work.join("ctl");
        std::fs::create_dir(&ctl).unwrap();
        let log = ctl.join("log");
        Ctl {
            _tmp: tmp,
            work,
            ctl,
            log,
        }
    }

    fn lines(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .count()
    }

    fn wait_logging(&self, more_than: usize) {
        wait_for("the victim to log", TIMEOUT, || {
            (self.lines() > more_than).then_some(())
        });
    }

    /// Asks the victim to verify itself; returns the pid it sees itself under.
    fn verify(&self) -> Result<i32, String> {
        let result = self.ctl.join("verify-result");
        let _ = std::fs::remove_file(&result);
        std::fs::write(self.ctl.join("verify-request"), "").unwrap();
        let text = wait_for("the victim's verify result", TIMEOUT, || {
            std::fs::read_to_string(&result).ok()
        });
        match text.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["ok", pid, _] => Ok(pid.parse().unwrap()),
            _ => Err(text),
        }
    }

    fn request_exit(&self, code: i32) {
        let tmp = self.ctl.join("exit-request.tmp");
        std::fs::write(&tmp, format!("{code}\n")).unwrap();
        std::fs::rename(&tmp, self.ctl.join("exit-request")).unwrap();
    }
}

/// `unshare --pid --fork --mount-proc sh -c SCRIPT`: SCRIPT runs as pid 1 of a new pid
/// namespace (and `exec`s whatever is to be that pid 1).
fn in_new_pid_namespace(script: &str, stderr: &Path) -> Child {
    setup();
    Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            "sh",
            "-c",
            script,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(stderr).unwrap())
        .spawn()
        .expect("run unshare (util-linux)")
}

/// Waits for `child` to end, killing it (by pid) after CREST_TIMEOUT: a hang fails the test.
fn wait_child(child: &mut Child, what: &str, stderr: &Path) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > CREST_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not end within {CREST_TIMEOUT:?}: {}",
                std::fs::read_to_string(stderr).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn crest_as_pid_1_of_a_pid_namespace_dumps_and_restores_there() {
    let c = Ctl::new("pid1");
    let victim = victim_binary(Kind::Threads);
    let img = c.work.join("img");
    let crest_err = c.work.join("crest-dump.stderr");
    // The victim is pid 2 (in a session of its own), crest replaces the shell as pid 1.
    let script = format!(
        "setsid {victim} {ctl} {log} </dev/null >/dev/null 2>{ctl}/stderr &
         while [ ! -s {log} ]; do sleep 0.01; done
         exec {crest} dump -t $! -D {img}",
        victim = victim.display(),
        ctl = c.ctl.display(),
        log = c.log.display(),
        crest = crest_bin(),
        img = img.display(),
    );
    let mut dump = in_new_pid_namespace(&script, &crest_err);
    let status = wait_child(&mut dump, "crest dump as pid 1", &crest_err);
    let err = std::fs::read_to_string(&crest_err).unwrap();
    assert!(status.success(), "crest dump as pid 1 failed: {err}");
    let image = show_json(&img);
    let pid = image["processes"][0]["pid"].as_i64().unwrap() as i32;
    assert_eq!(pid, 2, "the pid as the namespace sees it: {err}");

    restore_as_pid_1_and_end(&c, &img);
}

#[test]
fn a_session_leader_outside_crest_s_namespace_is_crest_s_session_after_restore() {
    let c = Ctl::new("session");
    let victim = victim_binary(Kind::Threads);
    let img = c.work.join("img");
    let crest_err = c.work.join("crest-dump.stderr");
    // No setsid: the victim stays in the test's session, whose leader the namespace cannot see
    // (it reads as session 0 there, as in a container whose runner started its shell outside).
    // The session is one whose leader is not in the tree, so the restore puts the process
    // into crest's own session, as for any process started from a shell.
    let script = format!(
        "{victim} {ctl} {log} </dev/null >/dev/null 2>{ctl}/stderr &
         while [ ! -s {log} ]; do sleep 0.01; done
         {crest} dump -t $! -D {img}",
        victim = victim.display(),
        ctl = c.ctl.display(),
        log = c.log.display(),
        crest = crest_bin(),
        img = img.display(),
    );
    let mut dump = in_new_pid_namespace(&script, &crest_err);
    let status = wait_child(&mut dump, "the namespace's shell", &crest_err);
    let err = std::fs::read_to_string(&crest_err).unwrap();
    assert!(
        status.success(),
        "crest dump in the namespace failed: {err}"
    );
    let image = show_json(&img);
    assert_eq!(image["processes"][0]["pid"].as_i64(), Some(2), "{err}");
    assert_eq!(
        image["inventory"]["tree"][0]["sid"].as_i64(),
        Some(0),
        "{image}"
    );
    restore_as_pid_1_and_end(&c, &img);
}

/// Restores `img` as pid 1 of another new namespace: the process comes back as pid 2 there,
/// runs, and crest exits with its status.
fn restore_as_pid_1_and_end(c: &Ctl, img: &Path) {
    let restore_err = c.work.join("crest-restore.stderr");
    let lines = c.lines();
    let script = format!("exec {} restore -D {}", crest_bin(), img.display());
    let mut restore = in_new_pid_namespace(&script, &restore_err);
    c.wait_logging(lines);
    let seen = c.verify().unwrap_or_else(|e| {
        panic!(
            "the restored victim: {e} {}",
            std::fs::read_to_string(&restore_err).unwrap_or_default()
        )
    });
    assert_eq!(seen, 2, "the restored process's pid in its namespace");
    // crest waits for the restored process and exits with its status.
    c.request_exit(7);
    let status = wait_child(&mut restore, "crest restore as pid 1", &restore_err);
    assert_eq!(
        status.code(),
        Some(7),
        "{}",
        std::fs::read_to_string(&restore_err).unwrap_or_default()
    );
}

#[test]
fn a_target_in_another_pid_namespace_is_refused_and_left_running() {
    let c = Ctl::new("other");
    let victim = victim_binary(Kind::Threads);
    let stderr = c.work.join("unshare.stderr");
    // The victim is pid 1 of a namespace of its own; crest runs in ours.
    let script = format!(
        "exec {} {} {}",
        victim.display(),
        c.ctl.display(),
        c.log.display()
    );
    let mut ns = Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            "setsid",
            "sh",
            "-c",
            &script,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("run unshare (util-linux)");
    c.wait_logging(0);
    // Its pid here: unshare's only child.
    let children =
        std::fs::read_to_string(format!("/proc/{}/task/{}/children", ns.id(), ns.id())).unwrap();
    let pid: i32 = children.split_whitespace().next().unwrap().parse().unwrap();

    let img = c.work.join("img");
    let out = dump(pid, &img, false);
    out.assert_failed()
        .assert_stderr_mentions(&format!("process {pid} is in another pid namespace"));
    assert!(!img.exists());
    wait_for("the tracer to let go", TIMEOUT, || {
        (tracer_pid(pid) == Some(0)).then_some(())
    });
    let lines = c.lines();
    c.wait_logging(lines + 3);
    assert_eq!(c.verify(), Ok(1), "the victim, pid 1 of its namespace");

    c.request_exit(0);
    let status = wait_child(&mut ns, "unshare", &stderr);
    assert!(status.success(), "{status:?}");
}
