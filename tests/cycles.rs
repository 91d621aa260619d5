//! Dump and restore cycles of real processes through the `crest` binary: the victim keeps its
//! pid, its memory, its fds and its log across repeated dump/restore, `-R` leaves it running,
//! and a restore onto a pid that is taken is refused.

mod common;

use common::*;

/// The image of the ~80 MiB memcheck victim, whose 16 MiB sparse area is almost all zero and
/// must not be stored, has to stay under this (the acceptance bound).
const MAX_IMAGE_BYTES: u64 = 72 * 1024 * 1024;

#[test]
fn three_dump_restore_cycles_keep_pid_memory_and_log() {
    let mut v = Victim::start(Kind::Memcheck);
    let counter = v.verify().expect("victim verifies before any dump");
    let fds_before = v.fd_table();
    let mut last_dir = None;

    for cycle in 1..=3 {
        let dir = v.work.join(format!("img{cycle}"));
        let before = v.last_logged();
        dump(v.pid, &dir, false).assert_ok();
        // The default dump kills the process once the image is complete.
        v.reap();

        let stats = v.work.join(format!("restore{cycle}.json"));
        let restored = restore_detached(&dir, &["--stats-json", stats.to_str().unwrap()]);
        restored
            .assert_ok()
            .assert_stderr_mentions(&format!("restored pid {} (1 process, ", v.pid));
        // The statistics name every phase until the tree ran, in order, and add up.
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
        let names: Vec<&str> = json["phases_us"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[0].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "validate",
                "pid wait",
                "files",
                "bootstrap",
                "fork",
                "memory",
                "threads",
                "finish",
                "release"
            ],
            "cycle {cycle}: {json}"
        );
        let sum: u64 = json["phases_us"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[1].as_u64().unwrap())
            .sum();
        assert_eq!(
            json["total_us"].as_u64(),
            Some(sum),
            "cycle {cycle}: {json}"
        );
        assert_eq!(json["pid"].as_i64(), Some(v.pid as i64), "{json}");
        v.mark_restored();
        let now = v.wait_logging_after(before);
        v.assert_running();
        let verified = v.verify().unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        assert!(
            verified >= now && now > before,
            "cycle {cycle}: counter went backwards"
        );
        assert_eq!(v.fd_table(), fds_before, "cycle {cycle}: fd table changed");
        v.assert_log_consecutive();
        last_dir = Some(dir);
    }

    let counter_end = v.verify().expect("victim verifies after three cycles");
    assert!(counter_end > counter);
    v.assert_log_consecutive();
    let dir = last_dir.unwrap();
    let size = image_size(&dir);
    assert!(
        size < MAX_IMAGE_BYTES,
        "the last image is {size} bytes, not under {MAX_IMAGE_BYTES}: zero pages stored?"
    );
}

#[test]
fn leave_running_keeps_the_victim_and_its_image_restores_later() {
    let mut v = Victim::start(Kind::Memcheck);
    v.verify().expect("victim verifies before the dump");
    let fds_before = v.fd_table();
    let dir = v.work.join("img");

    let at_dump = v.last_logged();
    dump(v.pid, &dir, true).assert_ok();
    let at_return = v.last_logged();
    // Still the same process, released (not traced, not stopped), logging and intact.
    v.assert_running();
    wait_for("the tracer to let go", TIMEOUT, || {
        (tracer_pid(v.pid) == Some(0)).then_some(())
    });
    // The image holds a counter of at most at_return + 1 (frozen between the increment and
    // the write), so by `after` the original has logged past anything the image can replay.
    let after = v.wait_logging_after(at_return + 2);
    v.verify().expect("victim verifies after a -R dump");
    assert_eq!(v.fd_table(), fds_before, "-R changed the fd table");
    v.assert_log_consecutive();

    // Once the original is gone, the image restores.
    v.kill();
    let lines = v.log_entries();
    assert!(lines.last().unwrap().1 >= after);
    let pidfile = v.work.join("restored.pid");
    restore_detached(&dir, &["--pidfile", pidfile.to_str().unwrap()]).assert_ok();
    v.mark_restored();
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        v.pid_str(),
        "pid file"
    );
    // The restored process resumes from the dump, so its counter restarts from the image's
    // (below what the original logged since): wait for new lines rather than a higher counter.
    v.wait_log_grows(lines.len());
    let resumed = &v.log_entries()[lines.len()];
    assert!(
        resumed.1 > at_dump && resumed.1 <= after,
        "the restored process logged n={} first; the image was taken between n={at_dump} and n={after}",
        resumed.1
    );
    v.assert_running();
    v.verify()
        .expect("victim verifies after restoring a -R image");
    assert_eq!(v.fd_table(), fds_before, "fd table after restore");
}

#[test]
fn restore_onto_a_taken_pid_is_refused_and_leaves_the_owner_alone() {
    let v = Victim::start(Kind::Memcheck);
    let dir = v.work.join("img");
    dump(v.pid, &dir, true).assert_ok();
    let fds_before = v.fd_table();

    let out = restore_detached(&dir, &[]);
    out.assert_failed().assert_stderr_mentions(&v.pid_str());

    let at = v.last_logged();
    v.wait_logging_after(at + 3);
    v.assert_running();
    v.verify()
        .expect("the running owner of the pid verifies after the refused restore");
    assert_eq!(v.fd_table(), fds_before);
    v.assert_log_consecutive();
}

#[test]
fn fds_cwd_umask_rlimits_and_shared_memory_survive() {
    let mut v = Victim::start(Kind::Fds);
    v.verify().expect("fds victim verifies before any dump");
    let fds_before = v.fd_table();
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", v.pid)).unwrap();
    let environ = std::fs::read(format!("/proc/{}/environ", v.pid)).unwrap();

    for round in 1..=2 {
        let dir = v.work.join(format!("img{round}"));
        let before = v.last_logged();
        dump(v.pid, &dir, false).assert_ok();
        v.reap();
        restore_detached(&dir, &[]).assert_ok();
        v.mark_restored();
        v.wait_logging_after(before);
        v.assert_running();
        v.verify().unwrap_or_else(|e| panic!("round {round}: {e}"));
        v.assert_log_consecutive();
        assert_eq!(v.fd_table(), fds_before, "round {round}: fd table");
        let now = |what| std::fs::read(format!("/proc/{}/{what}", v.pid)).unwrap();
        assert_eq!(now("cmdline"), cmdline, "round {round}: cmdline");
        assert_eq!(now("environ"), environ, "round {round}: environ");

        // A -R dump of the restored process leaves it running with all of the above intact.
        // (Its image is not restored: the victim goes on writing its data file through a
        // non-append fd, and a restore refuses a file that changed under such an fd.)
        let before = v.last_logged();
        dump(v.pid, &v.work.join(format!("img{round}-R")), true).assert_ok();
        v.wait_logging_after(before + 3);
        v.verify()
            .unwrap_or_else(|e| panic!("round {round}, after -R: {e}"));
        assert_eq!(
            v.fd_table(),
            fds_before,
            "round {round}, after -R: fd table"
        );
    }
}

/// A killed process holds its pid as a zombie until its parent reaps it. A restore started
/// before that waits for the pid instead of failing (here the test itself is the lazy parent).
#[test]
fn restore_waits_for_the_dumped_zombie_to_be_reaped() {
    let mut v = Victim::start(Kind::Memcheck);
    let dir = v.work.join("img");
    dump(v.pid, &dir, false).assert_ok();
    wait_for("the dumped victim to become a zombie", TIMEOUT, || {
        (proc_state(v.pid) == Some('Z')).then_some(())
    });

    let pid = v.pid;
    let reaper = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(700));
        reap_pid(pid, TIMEOUT)
    });
    restore_detached(&dir, &[]).assert_ok();
    reaper.join().unwrap().expect("the zombie was reaped");
    v.mark_restored();
    v.assert_running();
    v.verify().expect("the restored victim verifies");
}
