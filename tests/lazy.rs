//! `crest restore --lazy-pages`: the tree runs before its private memory is read; crest's page
//! server fills it on fault and in the background (src/lazy/).

mod common;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// With -d, crest restore exits once the tree runs; a daemon serves the rest of the memory,
/// writes the statistics and exits once every page is in. The root's parent is the daemon
/// until then, and the test (a subreaper) afterwards.
#[test]
fn lazy_pages_with_detach_are_served_by_a_daemon_until_every_page_is_in() {
    let mut v = Victim::start(Kind::Memcheck);
    let dir = v.work.join("img");
    dump(v.pid, &dir, false).assert_ok();
    v.reap();
    let before = v.last_logged();
    let stats = v.work.join("stats.json");
    let out = restore_detached(
        &dir,
        &["--lazy-pages", "--stats-json", stats.to_str().unwrap()],
    );
    out.assert_ok();
    v.mark_restored();
    let daemon = lazy_daemon_pid(&out);
    v.wait_logging_after(before);
    v.verify()
        .expect("the process verifies while the daemon serves its pages");
    reap_pid(daemon, CREST_TIMEOUT).expect("the daemon exits once every page is in");
    let text = std::fs::read_to_string(&stats).expect("the daemon wrote the statistics");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let lazy = &json["lazy"];
    assert_eq!(
        lazy["fault_bytes"].as_u64().unwrap()
            + lazy["background_bytes"].as_u64().unwrap()
            + lazy["dropped_bytes"].as_u64().unwrap(),
        lazy["lazy_bytes"].as_u64().unwrap(),
        "every lazy byte is copied once or given up: {lazy}"
    );
    v.verify().expect("verifies once the daemon is gone");
    v.request_exit(0);
    v.reap();
}

/// The daemon killed while pages are still loading (its page server held back by the test
/// hook): the watchdog kills the tree rather than let it run on with zeros.
#[test]
fn the_page_daemon_killed_mid_load_takes_the_tree_with_it() {
    let mut v = Victim::start(Kind::Memcheck);
    let dir = v.work.join("img");
    dump(v.pid, &dir, false).assert_ok();
    v.reap();
    let hold = v.work.join("never");
    let out = spawn_crest_with(
        ["restore", "-d", "--lazy-pages", "-D", dir.to_str().unwrap()],
        |cmd| {
            cmd.env("CREST_LAZY_TEST_HOLD", &hold);
        },
    )
    .wait(CREST_TIMEOUT);
    out.assert_ok();
    v.mark_restored();
    let daemon = lazy_daemon_pid(&out);
    let watchdogs: Vec<i32> = descendants(daemon)
        .into_iter()
        .filter(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.contains("lazy-watchdog"))
        })
        .collect();
    assert_eq!(watchdogs.len(), 1, "one watchdog runs beside the daemon");
    kill(Pid::from_raw(daemon), Signal::SIGKILL).expect("SIGKILL to the daemon");
    reap_pid(daemon, TIMEOUT).expect("the daemon is reaped");
    match v.reap() {
        Some(nix::sys::wait::WaitStatus::Signaled(_, Signal::SIGKILL, _)) => {}
        other => panic!("the restored process should have been killed, got {other:?}"),
    }
    for w in watchdogs {
        reap_pid(w, TIMEOUT).expect("the watchdog ends");
        assert_no_process(w, "the watchdog after killing the tree");
    }
}

/// Starts `crest restore --lazy-pages` of `dir` (attached) with its statistics in `stats`.
fn spawn_lazy(dir: &std::path::Path, stats: &std::path::Path) -> CrestProcess {
    spawn_crest(lazy_args(dir, stats))
}

/// As [`spawn_lazy`], with the page server's background pass held until `hold` exists (the
/// test hook `CREST_LAZY_TEST_HOLD`), so the memory comes in through the program's faults.
fn spawn_lazy_held(
    dir: &std::path::Path,
    stats: &std::path::Path,
    hold: &std::path::Path,
) -> CrestProcess {
    spawn_crest_with(lazy_args(dir, stats), |cmd| {
        cmd.env("CREST_LAZY_TEST_HOLD", hold);
    })
}

fn lazy_args<'a>(dir: &'a std::path::Path, stats: &'a std::path::Path) -> [&'a std::ffi::OsStr; 6] {
    [
        "restore".as_ref(),
        "--lazy-pages".as_ref(),
        "--stats-json".as_ref(),
        stats.as_os_str(),
        "-D".as_ref(),
        dir.as_os_str(),
    ]
}

/// Waits until crest wrote its statistics (every page is in) and returns the "lazy" part.
fn lazy_stats(restore: &mut CrestProcess, stats: &std::path::Path) -> serde_json::Value {
    let text = wait_for("every lazy page to be in", CREST_TIMEOUT, || {
        if !restore.running() {
            return Some(Err(()));
        }
        std::fs::read_to_string(stats)
            .ok()
            .filter(|t| t.ends_with('\n'))
            .map(Ok)
    })
    .unwrap_or_else(|()| panic!("crest restore exited before all pages were in"));
    let json: serde_json::Value = serde_json::from_str(&text).expect("statistics are JSON");
    json["lazy"].clone()
}

#[test]
fn memcheck_restored_lazily_verifies_all_its_memory() {
    let mut v = Victim::start(Kind::Memcheck);
    let dir = v.work.join("img");
    dump(v.pid, &dir, false).assert_ok();
    v.reap();
    let before = v.last_logged();
    let stats = v.work.join("stats.json");
    let mut restore = spawn_lazy(&dir, &stats);
    v.mark_restored();
    v.wait_logging_after(before);
    // Verified while pages may still be loading, and again once all are in.
    v.verify().expect("the lazily restored process verifies");
    let lazy = lazy_stats(&mut restore, &stats);
    let total = lazy["lazy_bytes"].as_u64().unwrap();
    assert!(
        total > 40 << 20,
        "most of memcheck's memory is lazy: {lazy}"
    );
    assert_eq!(
        lazy["fault_bytes"].as_u64().unwrap()
            + lazy["background_bytes"].as_u64().unwrap()
            + lazy["dropped_bytes"].as_u64().unwrap(),
        total,
        "every lazy byte is copied once or given up: {lazy}"
    );
    v.verify().expect("verifies once every page is in");
    v.request_exit(7);
    let out = restore.wait(TIMEOUT);
    assert_eq!(out.status.code(), Some(7), "{out}");
    v.reap();
}

/// The restored process forks, munmaps, mremaps and discards (MADV_DONTNEED) parts of its
/// memory before any of it is loaded (the background pass is held until then): the child sees
/// its parent's memory, moved memory keeps its data, and unmapped or discarded memory is never
/// filled again with the stored pages.
#[test]
fn memory_map_changes_during_the_load_are_followed() {
    let mut v = Victim::start(Kind::Lazymm);
    v.verify().expect("lazymm verifies before the dump");
    let dir = v.work.join("img");
    dump(v.pid, &dir, false).assert_ok();
    v.reap();
    let before = v.last_logged();
    let ctl = v.ctl.clone();
    std::fs::write(ctl.join("mutate"), "").unwrap();
    let hold = v.work.join("background-may-start");
    let stats = v.work.join("stats.json");
    let mut restore = spawn_lazy_held(&dir, &stats, &hold);
    v.mark_restored();
    v.wait_logging_after(before);
    let mutated = wait_for("the restored process to change its memory", TIMEOUT, || {
        std::fs::read_to_string(ctl.join("mutated")).ok()
    });
    assert_eq!(
        mutated.trim(),
        "ok",
        "after the changes, before the background pass"
    );
    std::fs::write(&hold, "").unwrap();
    let lazy = lazy_stats(&mut restore, &stats);
    assert_eq!(lazy["forks"].as_u64(), Some(1), "{lazy}");
    // r1 (2 MiB), r3 (2 MiB), the middle of r4 (1 MiB) and 512 KiB of r5 were given up.
    assert!(
        lazy["dropped_bytes"].as_u64().unwrap() >= (5 << 20) + (512 << 10),
        "unmapped and discarded memory is dropped from the load: {lazy}"
    );
    v.verify()
        .expect("every region as the process left it, once every page is in");
    v.request_exit(0);
    let out = restore.wait(TIMEOUT);
    assert_eq!(out.status.code(), Some(0), "{out}");
    v.reap();
}

/// A multi-threaded victim (13 threads, rseq, per-thread signal masks and TLS) restored with
/// lazy pages: every thread faults on its memory at once.
#[test]
fn threads_restored_lazily_verify() {
    let mut v = Victim::start(Kind::MThreads);
    v.verify().expect("mthreads verifies before the dump");
    let dir = v.work.join("img");
    dump(v.pid, &dir, false).assert_ok();
    v.reap();
    let before = v.last_logged();
    let stats = v.work.join("stats.json");
    if crest::arch::LAZY_PAGES_FOR_THREADS_REFUSED.is_some() {
        // Refused here (arm64) before anything runs, naming the process.
        let out = spawn_crest(lazy_args(&dir, &stats)).wait(TIMEOUT);
        out.assert_failed()
            .assert_stderr_mentions(&format!("lazy pages for pid {} (", v.pid))
            .assert_stderr_mentions("restore without --lazy-pages");
        assert!(!pid_exists(v.pid), "nothing runs under pid {}", v.pid);
        return;
    }
    // The background pass waits until the threads have verified, so their memory comes in
    // through their faults.
    let hold = v.work.join("background-may-start");
    let mut restore = spawn_lazy_held(&dir, &stats, &hold);
    v.mark_restored();
    v.wait_logging_after(before);
    v.verify().expect("the lazily restored threads verify");
    std::fs::write(&hold, "").unwrap();
    let lazy = lazy_stats(&mut restore, &stats);
    assert!(lazy["faults"].as_u64().unwrap() > 0, "{lazy}");
    v.verify().expect("verifies once every page is in");
    v.request_exit(0);
    let out = restore.wait(TIMEOUT);
    assert_eq!(out.status.code(), Some(0), "{out}");
    v.reap();
}

/// crest killed while pages are loading (the background pass held, so most are not in): the
/// watchdog kills the restored process, which never runs on with zeros for its memory, and
/// nothing is left behind.
#[test]
fn crest_killed_mid_load_takes_the_tree_with_it() {
    let mut v = Victim::start(Kind::Memcheck);
    let dir = v.work.join("img");
    dump(v.pid, &dir, false).assert_ok();
    v.reap();
    let before = v.last_logged();
    let hold = v.work.join("never");
    let restore = spawn_crest_with(
        [
            "restore".as_ref(),
            "--lazy-pages".as_ref(),
            "-D".as_ref(),
            dir.as_os_str(),
        ],
        |cmd| {
            cmd.env("CREST_LAZY_TEST_HOLD", &hold);
        },
    );
    v.mark_restored();
    v.wait_logging_after(before);
    let watchdogs: Vec<i32> = descendants(restore.pid())
        .into_iter()
        .filter(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.contains("lazy-watchdog"))
        })
        .collect();
    assert_eq!(watchdogs.len(), 1, "one watchdog runs beside crest");
    kill(Pid::from_raw(restore.pid()), Signal::SIGKILL).expect("SIGKILL to crest");
    let out = restore.wait(TIMEOUT);
    assert!(!out.success());
    // The test is a child subreaper: the orphaned victim and watchdog are ours to reap.
    match v.reap() {
        Some(nix::sys::wait::WaitStatus::Signaled(_, Signal::SIGKILL, _)) => {}
        other => panic!("the restored process should have been killed, got {other:?}"),
    }
    for w in watchdogs {
        reap_pid(w, TIMEOUT).expect("the watchdog ends");
        assert_no_process(w, "the watchdog after killing the tree");
    }
    // The memcheck log never shows a line from a process that ran on with zeros: it was
    // killed while blocked on a fault or logging normally; either way its last line is sane.
    v.assert_log_consecutive();
}
