//! `crest restore --lazy-pages`: the tree runs before its private memory is read; crest's page
//! server fills it on fault and in the background (src/lazy/).

mod common;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Starts `crest restore --lazy-pages` of `dir` (attached) with its statistics in `stats`.
fn spawn_lazy(dir: &std::path::Path, stats: &std::path::Path) -> CrestProcess {
    spawn_crest([
        "restore".as_ref(),
        "--lazy-pages".as_ref(),
        "--stats-json".as_ref(),
        stats.as_os_str(),
        "-D".as_ref(),
        dir.as_os_str(),
    ])
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
    assert!(total > 40 << 20, "most of memcheck's memory is lazy: {lazy}");
    assert_eq!(
        lazy["fault_bytes"].as_u64().unwrap() + lazy["background_bytes"].as_u64().unwrap()
            + lazy["dropped_bytes"].as_u64().unwrap(),
        total,
        "every lazy byte is copied once or given up: {lazy}"
    );
    assert!(lazy["faults"].as_u64().unwrap() > 0, "{lazy}");
    v.verify().expect("verifies once every page is in");
    v.request_exit(7);
    let out = restore.wait(TIMEOUT);
    assert_eq!(out.status.code(), Some(7), "{out}");
    v.reap();
}
