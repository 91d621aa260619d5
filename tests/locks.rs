//! File locks survive dump and restore, held by the restored process with the same semantics:
//! the locks victim (tests/victims/locks.c) holds an exclusive and a shared flock, POSIX read
//! and write locks on several ranges (one up to EOF, one through a second description of a
//! file it also maps), OFD locks, and a flock that only a mapping holds (fd closed, as HotSpot
//! does with its hsperfdata file). After each restore another process (`locks --check`,
//! started here) must find every lock held by the victim's pid and every range between them
//! free; the victim checks the same from a child of its own. A lock someone took meanwhile
//! fails the restore naming pid, fd, file and range, and nothing is left behind. A read and
//! a write lease are taken back by the restored process, and a lease break still signals it;
//! a lease being broken is restored being broken. A real program: sqlite3 inside `BEGIN EXCLUSIVE` keeps its database locked
//! across dump and restore, and commits afterwards.

mod common;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

/// Runs `locks --check CTL PID` as a separate process: Ok, or what it found wrong.
fn check_from_outside(v: &Victim) -> Result<(), String> {
    let out = Command::new(victim_binary(Kind::Locks))
        .arg("--check")
        .arg(&v.ctl)
        .arg(v.pid_str())
        .output()
        .expect("run locks --check");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && text == "ok" {
        Ok(())
    } else {
        Err(format!("{text} {}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// The victim's fds, as tests/victims/locks.c opens them after its log (fd 3).
const FD_FLOCK_EX: i32 = 4;
const FD_POSIX: i32 = 7;
const FD_POSIX_RO: i32 = 8;
const FD_OFD: i32 = 9;

/// The image records each lock with its owner: flock and OFD locks on their description,
/// POSIX locks on the process, with the fd the kernel listed them under.
fn assert_image_records_the_locks(dir: &Path, context: &str) {
    let json = show_json(dir);
    let p = &json["processes"][0];
    let posix = p["posix_locks"].to_string();
    for want in [
        format!(r#"{{"fd":{FD_POSIX},"range":{{"len":100,"start":0}},"ty":"Write"}}"#),
        format!(r#"{{"fd":{FD_POSIX},"range":{{"len":100,"start":200}},"ty":"Read"}}"#),
        format!(r#"{{"fd":{FD_POSIX},"range":{{"len":0,"start":1000}},"ty":"Write"}}"#),
        format!(r#"{{"fd":{FD_POSIX_RO},"range":{{"len":100,"start":500}},"ty":"Read"}}"#),
    ] {
        assert!(posix.contains(&want), "{context}: no {want} in {posix}");
    }
    assert_eq!(
        p["posix_locks"].as_array().map(Vec::len),
        Some(4),
        "{context}: {posix}"
    );
    let descriptions = p["open_files"].to_string();
    for want in [
        r#"{"Flock":"Write"}"#,
        r#"{"Flock":"Read"}"#,
        r#"{"Ofd":{"range":{"len":10,"start":10},"ty":"Write"}}"#,
        r#"{"Ofd":{"range":{"len":10,"start":40},"ty":"Read"}}"#,
    ] {
        assert_eq!(
            descriptions.matches(want).count(),
            1,
            "{context}: {want} once in {descriptions}"
        );
    }
    let mapping = p["mapping_locks"].to_string();
    assert!(
        mapping.contains(r#""lock":{"Flock":"Write"}"#)
            && p["mapping_locks"].as_array().map(Vec::len) == Some(1),
        "{context}: the flock held only through a mapping: {mapping}"
    );
    let shown = crest(["show".as_ref(), dir.as_os_str()]);
    shown.assert_ok();
    assert!(
        shown.stdout.contains("file locks (9):")
            && shown
                .stdout
                .contains(&format!("fd {FD_FLOCK_EX}: exclusive flock lock"))
            && shown.stdout.contains(&format!(
                "fd {FD_POSIX}: POSIX write lock on bytes 1000 to the end of the file"
            )),
        "{context}: crest show does not list the locks: {shown}"
    );
}

#[test]
fn the_checker_sees_the_locks_and_notices_when_they_are_gone() {
    let mut v = Victim::start(Kind::Locks);
    v.verify().expect("fresh victim verifies");
    check_from_outside(&v).expect("another process sees the fresh victim's locks");
    v.request_exit(0);
    v.reap();
    let err = check_from_outside(&v).expect_err("locks of a dead process went unnoticed");
    assert!(err.contains("flock"), "unexpected complaint: {err}");
}

#[test]
fn three_cycles_keep_every_lock_held_by_the_restored_process() {
    let mut v = Victim::start(Kind::Locks);
    v.verify().expect("victim verifies before any dump");
    let fds_before = v.fd_table();
    for cycle in 1..=3 {
        let ctx = format!("cycle {cycle}");
        let dir = v.work.join(format!("img{cycle}"));
        let before = v.last_logged();
        dump(v.pid, &dir, false).assert_ok();
        v.reap();
        assert_image_records_the_locks(&dir, &ctx);

        restore_detached(&dir, &[]).assert_ok();
        v.mark_restored();
        v.wait_logging_after(before);
        v.assert_running();
        check_from_outside(&v).unwrap_or_else(|e| panic!("{ctx}: seen from outside: {e}"));
        v.verify()
            .unwrap_or_else(|e| panic!("{ctx}: seen by the victim: {e}"));
        assert_eq!(v.fd_table(), fds_before, "{ctx}: fd table changed");
        v.assert_log_consecutive();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Whether another open of `path` finds it flocked.
fn flocked(path: &Path) -> bool {
    let f = File::open(path).unwrap();
    // SAFETY: flock on a descriptor we own.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)
}

#[test]
fn a_flock_whose_taker_closed_its_fd_lives_on_in_the_child_holding_it() {
    let mut v = Victim::start_with(Kind::Locks, |cmd| {
        cmd.arg("inherited");
    });
    let child = v.info_child();
    let path = v.ctl.join("flock-inh");
    assert!(flocked(&path), "the child's inherited flock is not held");
    for cycle in 1..=2 {
        let dir = v.work.join(format!("img{cycle}"));
        dump(v.pid, &dir, false).assert_ok();
        v.reap();
        reap_pid(child.0, TIMEOUT).unwrap_or_else(|e| panic!("the child: {e}"));
        assert!(!flocked(&path), "cycle {cycle}: the lock outlived the dump");
        restore_detached(&dir, &[]).assert_ok();
        v.mark_restored();
        assert!(pid_exists(child.0), "cycle {cycle}: no child");
        assert!(flocked(&path), "cycle {cycle}: the inherited flock is gone");
        v.verify()
            .unwrap_or_else(|e| panic!("cycle {cycle}: the other locks: {e}"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_leave_running_dump_leaves_the_locks_in_place() {
    let mut v = Victim::start(Kind::Locks);
    check_from_outside(&v).expect("locks before the dump");
    let dir = v.work.join("img");
    dump(v.pid, &dir, true).assert_ok();
    wait_for("the tracer to let go", TIMEOUT, || {
        (tracer_pid(v.pid) == Some(0)).then_some(())
    });
    let at = v.last_logged();
    v.wait_logging_after(at + 2);
    check_from_outside(&v).expect("-R kept every lock");
    v.verify()
        .expect("the victim still holds its locks after -R");
    assert_image_records_the_locks(&dir, "-R image");

    // The image restores with the locks once the original has gone.
    v.kill();
    let lines = v.log_entries().len();
    restore_detached(&dir, &[]).assert_ok();
    v.mark_restored();
    v.wait_log_grows(lines);
    check_from_outside(&v).expect("locks after restoring the -R image");
    v.verify()
        .expect("victim verifies after restoring the -R image");
}

/// Takes `lock` (F_SETLK or F_OFD_SETLK) on `path` in this test process; the lock lasts as
/// long as the returned file.
fn hold_record_lock(path: &Path, cmd: i32, ty: i32, start: i64, len: i64) -> File {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    // SAFETY: an all-zero struct flock is valid (l_pid 0, as F_OFD_SETLK requires).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = ty as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = len;
    // SAFETY: fcntl on a file we own with a valid struct flock.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), cmd, &fl) };
    assert_eq!(
        r,
        0,
        "{cmd} on {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    f
}

/// A restore that cannot take a lock back fails naming pid, fd, file and range, and no
/// process is left under the pid; once the lock is released the same image restores.
#[test]
fn a_lock_taken_meanwhile_fails_the_restore_and_leaves_nothing() {
    let mut v = Victim::start(Kind::Locks);
    let dir = v.work.join("img");
    dump(v.pid, &dir, false).assert_ok();
    v.reap();
    let pid = v.pid_str();

    // A POSIX lock overlapping the victim's write lock on bytes 0-99 (taken by the restorer).
    let posix = v.ctl.join("posix");
    let held = hold_record_lock(&posix, libc::F_SETLK, libc::F_RDLCK, 50, 10);
    let out = restore_detached(&dir, &[]);
    out.assert_failed()
        .assert_stderr_mentions(&format!("pid {pid}"))
        .assert_stderr_mentions(&format!("fd {FD_POSIX} ({})", posix.display()))
        .assert_stderr_mentions("POSIX write lock on bytes 0-99")
        .assert_stderr_mentions("another process holds a conflicting lock");
    assert_no_process(v.pid, "after the refused restore (POSIX)");
    drop(held);

    // An OFD lock in the free range 20-39 is no conflict, one on 45 conflicts with the OFD read
    // lock on 40-49 only when it is a write lock.
    let ofd = v.ctl.join("ofd");
    let harmless = hold_record_lock(&ofd, libc::F_OFD_SETLK, libc::F_WRLCK, 20, 20);
    let held = hold_record_lock(&ofd, libc::F_OFD_SETLK, libc::F_WRLCK, 45, 1);
    let out = restore_detached(&dir, &[]);
    out.assert_failed()
        .assert_stderr_mentions(&format!("pid {pid}"))
        .assert_stderr_mentions(&format!("fd {FD_OFD} ({})", ofd.display()))
        .assert_stderr_mentions("OFD read lock on bytes 40-49");
    assert_no_process(v.pid, "after the refused restore (OFD)");
    drop(held);

    // A shared flock on the file the victim locks exclusively.
    let ex = v.ctl.join("flock-ex");
    let f = File::open(&ex).unwrap();
    // SAFETY: flock on a file we own.
    assert_eq!(
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) },
        0
    );
    let out = restore_detached(&dir, &[]);
    out.assert_failed()
        .assert_stderr_mentions(&format!("pid {pid}"))
        .assert_stderr_mentions(&format!("fd {FD_FLOCK_EX} ({})", ex.display()))
        .assert_stderr_mentions("exclusive flock lock");
    assert_no_process(v.pid, "after the refused restore (flock)");
    drop(f);

    restore_detached(&dir, &[]).assert_ok();
    v.mark_restored();
    drop(harmless);
    check_from_outside(&v).expect("locks after the restore that could take them");
    v.verify().expect("victim verifies");
}

/// The LEASE lines of /proc/locks that name `pid`.
fn lease_lines(pid: i32) -> Vec<String> {
    std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .filter(|l| l.contains("LEASE") && l.contains(&format!(" {pid} ")))
        .map(str::to_string)
        .collect()
}

/// Whether signal `sig` is pending for process `pid` (SigPnd or ShdPnd of its status).
fn signal_pending(pid: i32, sig: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .filter_map(|l| {
            l.strip_prefix("SigPnd:")
                .or_else(|| l.strip_prefix("ShdPnd:"))
        })
        .filter_map(|m| u64::from_str_radix(m.trim(), 16).ok())
        .any(|m| m & (1 << (sig - 1)) != 0)
}

/// A read lease (fd 10) and a write lease (fd 11) come back held by the restored process,
/// across two cycles: F_GETLEASE reads the same in the victim and /proc/locks names its pid.
/// A lease break after the restore still signals it (an open of the write-leased file from
/// here leaves SIGIO pending in the victim, which blocks it); a lease being broken comes back
/// being broken.
#[test]
fn read_and_write_leases_are_taken_back_and_a_break_still_signals_and_is_kept() {
    use std::os::unix::fs::OpenOptionsExt;
    let mut v = Victim::start_with(Kind::Locks, |cmd| {
        cmd.arg("lease");
    });
    v.verify().expect("the victim verifies before any dump");
    assert_eq!(lease_lines(v.pid).len(), 2, "{:?}", lease_lines(v.pid));
    for cycle in 1..=2 {
        let dir = v.work.join(format!("img{cycle}"));
        dump(v.pid, &dir, false).assert_ok();
        v.reap();
        let image = show_json(&dir);
        let locks: Vec<String> = image["processes"][0]["open_files"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|d| d["locks"].as_array().unwrap().clone())
            .filter(|l| l.get("Lease").is_some())
            .map(|l| l["Lease"]["ty"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(locks, ["Read", "Write"], "cycle {cycle}");
        restore_detached(&dir, &[]).assert_ok();
        v.mark_restored();
        v.verify()
            .unwrap_or_else(|e| panic!("cycle {cycle}: the victim: {e}"));
        check_from_outside(&v).expect("the other locks after the restore");
        assert_eq!(
            lease_lines(v.pid).len(),
            2,
            "cycle {cycle}: {:?}",
            lease_lines(v.pid)
        );
    }

    assert!(!signal_pending(v.pid, libc::SIGIO));
    let wleased = v.ctl.join("wleased");
    let err = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&wleased)
        .expect_err("an open of a write-leased file waits for the break");
    assert_eq!(err.raw_os_error(), Some(libc::EWOULDBLOCK), "{err}");
    wait_for("SIGIO to be pending in the victim", TIMEOUT, || {
        signal_pending(v.pid, libc::SIGIO).then_some(())
    });

    // Being broken (to a read lease) across a dump and restore: the restored process holds it
    // breaking to READ, with the SIGIO it had pending still pending.
    let dir = v.work.join("img-breaking");
    dump(v.pid, &dir, false).assert_ok();
    v.reap();
    let image = show_json(&dir);
    let leases: Vec<serde_json::Value> = image["processes"][0]["open_files"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|d| d["locks"].as_array().unwrap().clone())
        .filter_map(|l| l.get("Lease").cloned())
        .collect();
    assert_eq!(leases[1]["ty"], "Write", "{leases:?}");
    assert_eq!(leases[1]["breaking"], "ToRead", "{leases:?}");
    restore_detached(&dir, &[]).assert_ok();
    v.mark_restored();
    let lines = lease_lines(v.pid);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("BREAKING") && l.contains("READ")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("ACTIVE") && l.contains("READ")),
        "{lines:?}"
    );
    assert!(signal_pending(v.pid, libc::SIGIO));
}

// ---------------------------------------------------------------------------------------------
// sqlite3
// ---------------------------------------------------------------------------------------------

/// `sqlite3 DB SQL` run to completion: (success, stdout, stderr).
fn sqlite(db: &Path, sql: &str) -> (bool, String, String) {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .stdin(Stdio::null())
        .output()
        .expect("run sqlite3");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_locked(db: &Path, context: &str) {
    let (ok, _, err) = sqlite(db, "INSERT INTO t VALUES(2);");
    assert!(
        !ok && err.contains("database is locked"),
        "{context}: another sqlite3 could write (ok {ok}, stderr {err:?})"
    );
}

fn wait_output(path: &Path, needle: &str) {
    wait_for(
        &format!("{needle:?} in {}", path.display()),
        TIMEOUT,
        || {
            std::fs::read_to_string(path)
                .ok()
                .filter(|t| t.contains(needle))
                .map(|_| ())
        },
    );
}

#[test]
fn sqlite3_in_an_exclusive_transaction_keeps_its_database_locked() {
    if Command::new("sqlite3").arg("--version").output().is_err() {
        say_skipped("sqlite3 is not installed (apt-get install sqlite3)");
        return;
    }
    setup();
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let db: PathBuf = work.path().join("test.db");
    let (ok, _, err) = sqlite(&db, "CREATE TABLE t(x); INSERT INTO t VALUES(0);");
    assert!(ok, "creating the database: {err}");

    let out_path = work.path().join("out");
    let open_append = |p: &Path| {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap()
    };
    let mut cmd = Command::new("sqlite3");
    cmd.arg(&db)
        .current_dir(work.path())
        .stdin(Stdio::piped())
        .stdout(open_append(&out_path))
        .stderr(open_append(&work.path().join("err")));
    // SAFETY: setsid and close_range are async-signal-safe system calls (as in Victim::start).
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            if libc::close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as i32) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("start sqlite3");
    let pid = child.id() as i32;
    let mut stdin = child.stdin.take().unwrap();
    drop(child);
    let mut alive = true;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        writeln!(
            stdin,
            "BEGIN EXCLUSIVE;\nINSERT INTO t VALUES(1);\nSELECT 'ready';"
        )
        .unwrap();
        wait_output(&out_path, "ready");
        assert_locked(&db, "before the dump");

        let dir = work.path().join("img");
        dump(pid, &dir, false).assert_ok();
        reap_pid(pid, TIMEOUT).expect("the dumped sqlite3 dies");
        alive = false;
        let json = show_json(&dir).to_string();
        assert!(
            json.contains("posix_locks") && json.contains(r#""ty":"Write""#),
            "the image holds no POSIX write lock of sqlite3: {json}"
        );
        restore_detached(&dir, &[]).assert_ok();
        alive = true;
        assert_locked(&db, "after the restore");

        writeln!(stdin, "COMMIT;\nSELECT 'done', count(*) FROM t;\n.quit").unwrap();
        wait_output(&out_path, "done|2");
        reap_pid(pid, TIMEOUT).expect("the restored sqlite3 quits");
        alive = false;
        let (ok, rows, err) = sqlite(&db, "INSERT INTO t VALUES(2); SELECT x FROM t ORDER BY x;");
        assert!(ok, "writing after the restored sqlite3 committed: {err}");
        assert_eq!(rows, "0\n1\n2\n", "the rows of both writers, in order");
    }));
    if alive {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = reap_pid(pid, TIMEOUT);
    }
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
