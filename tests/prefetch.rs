//! The recorded working set (`crest restore --record-working-set`, `working-set.img`) and its
//! prefetch by later lazy and mapped restores (src/prefetch/).

mod common;

use std::path::{Path, PathBuf};

use common::*;
use crest::images::{self, ProcessWorkingSet, WorkingSet, WorkingSetSource};

/// The recording window the tests use: short, so that they do not wait long; memcheck logs
/// every 20 ms, so it touches some of its memory meanwhile.
const WINDOW: &str = "--record-working-set=300";

fn working_set_file(dir: &Path) -> PathBuf {
    dir.join("working-set.img")
}

/// Every file of the image and its bytes (to show that recording changes none).
fn image_contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>, u32)> {
    use std::os::unix::fs::PermissionsExt;
    image_files(dir)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n != "working-set.img"))
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            (p, bytes, mode)
        })
        .collect()
}

/// The pages `crest show --json` reports for pid `pid` in the working set, with its source.
fn shown_working_set(dir: &Path, pid: i32) -> (u64, String) {
    let ws = show_json(dir)["working_set"].clone();
    assert!(ws["error"].is_null(), "crest show: {ws}");
    let p = ws["processes"]
        .as_array()
        .unwrap_or_else(|| panic!("no working set shown: {ws}"))
        .iter()
        .find(|p| p["pid"].as_i64() == Some(pid as i64))
        .unwrap_or_else(|| panic!("pid {pid} has no working set: {ws}"))
        .clone();
    (
        p["pages"].as_u64().unwrap(),
        ws["source"].as_str().unwrap().to_string(),
    )
}

/// Starts an attached lazy restore of `dir` with `extra` options and statistics in `stats`.
fn spawn_lazy(dir: &Path, stats: &Path, extra: &[&str]) -> CrestProcess {
    let mut args: Vec<std::ffi::OsString> = vec![
        "restore".into(),
        "--pages".into(),
        "lazy".into(),
        "--stats-json".into(),
        stats.into(),
        "-D".into(),
        dir.into(),
    ];
    args.extend(extra.iter().map(Into::into));
    spawn_crest(args)
}

/// Waits until crest wrote its statistics file and returns it.
fn wait_stats(restore: &mut CrestProcess, stats: &Path) -> serde_json::Value {
    let text = wait_for("crest's statistics", CREST_TIMEOUT, || {
        if !restore.running() {
            return Some(Err(()));
        }
        std::fs::read_to_string(stats)
            .ok()
            .filter(|t| t.ends_with('\n'))
            .map(Ok)
    })
    .unwrap_or_else(|()| panic!("crest restore exited before writing its statistics"));
    serde_json::from_str(&text).expect("statistics are JSON")
}

/// A detached mapped restore of memcheck's image in `dir`, once it logs again; returns its
/// statistics.
fn mapped_restore_with_stats(v: &mut Victim, dir: &Path) -> serde_json::Value {
    let stats = v.work.join("stats.json");
    let before = v.last_logged();
    restore_detached(
        dir,
        &["--pages", "map", "--stats-json", stats.to_str().unwrap()],
    )
    .assert_ok();
    v.mark_restored();
    v.wait_logging_after(before);
    serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap()
}

/// One lazy restore of memcheck's image in `dir` with `extra`, verified, ended; returns the
/// "lazy" part of the statistics.
fn lazy_cycle(v: &mut Victim, dir: &Path, extra: &[&str], name: &str) -> serde_json::Value {
    let before = v.last_logged();
    let stats = v.work.join(format!("{name}.json"));
    let mut restore = spawn_lazy(dir, &stats, extra);
    v.mark_restored();
    v.wait_logging_after(before);
    let json = wait_stats(&mut restore, &stats);
    v.verify().expect("memcheck verifies every page");
    v.request_exit(3);
    let out = restore.wait(TIMEOUT);
    assert_eq!(out.status.code(), Some(3), "{out}");
    v.reap();
    json["lazy"].clone()
}

#[test]
fn lazy_recording_writes_a_working_set_that_later_lazy_restores_prefetch() {
    let mut v = Victim::start(Kind::Memcheck);
    let dir = v.work.join("img");
    dump(v.pid, &dir, false).assert_ok();
    v.reap();
    let image_before = image_contents(&dir);

    // Recording: the file appears once the window is over (before the process is verified,
    // which would touch every page).
    let before = v.last_logged();
    let stats = v.work.join("record.json");
    let mut restore = spawn_lazy(&dir, &stats, &[WINDOW]);
    v.mark_restored();
    v.wait_logging_after(before);
    wait_for("the working set to be written", CREST_TIMEOUT, || {
        working_set_file(&dir).exists().then_some(())
    });
    let recorded = wait_stats(&mut restore, &stats);
    assert_eq!(
        recorded["lazy"]["prefetch"]["pages"].as_u64(),
        Some(0),
        "nothing is prefetched while recording: {recorded}"
    );
    v.verify()
        .expect("memcheck verifies after a recording restore");
    v.request_exit(0);
    let out = restore.wait(TIMEOUT);
    assert_eq!(out.status.code(), Some(0), "{out}");
    assert!(
        out.stderr
            .contains("working set of the first 300 ms recorded in"),
        "{out}"
    );
    v.reap();
    assert_eq!(
        image_contents(&dir),
        image_before,
        "recording changes no file of the image"
    );
    let (pages, source) = shown_working_set(&dir, v.pid);
    assert!(pages > 0, "memcheck touched pages while it ran");
    assert_eq!(source, "LazyFaults");
    let text = crest(["show".as_ref(), dir.as_os_str()]);
    text.assert_ok();
    assert!(
        text.stdout
            .contains("working set (from lazy faults, first 300 ms"),
        "{}",
        text.stdout
    );

    // A later lazy restore prefetches it, and memcheck still verifies every page.
    let lazy = lazy_cycle(&mut v, &dir, &[], "prefetch");
    let prefetched = lazy["prefetch"]["pages"].as_u64().unwrap();
    // Not necessarily all of them: the program may fault on some before the prefetch
    // reaches them (those come in with their fault's batch).
    assert!(
        prefetched > 0,
        "the recorded pages are prefetched ({pages} recorded): {lazy}"
    );
    assert_eq!(
        lazy["fault_bytes"].as_u64().unwrap()
            + lazy["background_bytes"].as_u64().unwrap()
            + lazy["dropped_bytes"].as_u64().unwrap()
            + lazy["prefetch"]["bytes"].as_u64().unwrap(),
        lazy["lazy_bytes"].as_u64().unwrap(),
        "every lazy byte is copied once: {lazy}"
    );
    // --no-prefetch ignores it.
    let lazy = lazy_cycle(&mut v, &dir, &["--no-prefetch"], "noprefetch");
    assert_eq!(lazy["prefetch"]["pages"].as_u64(), Some(0), "{lazy}");
}

#[test]
fn mapped_recording_writes_a_working_set_that_later_mapped_restores_prefetch() {
    let mut v = Victim::start(Kind::Memcheck);
    let dir = v.work.join("img");
    dump(v.pid, &dir, false).assert_ok();
    v.reap();
    let image_before = image_contents(&dir);

    // -d: crest waits for the window, records and exits.
    let out = restore_detached(&dir, &["--pages", "map", WINDOW]);
    out.assert_ok();
    v.mark_restored();
    assert!(
        out.stderr
            .contains("working set of the first 300 ms recorded in"),
        "{out}"
    );
    v.verify()
        .expect("memcheck verifies after a mapped recording restore");
    v.request_exit(0);
    v.reap();
    assert_eq!(
        image_contents(&dir),
        image_before,
        "recording changes no file of the image (page files stay read-only)"
    );
    let (pages, source) = shown_working_set(&dir, v.pid);
    assert!(pages > 0, "memcheck touched pages while it ran");
    assert_eq!(source, "MappedPresent");
    // memcheck rewrites its history ring and counter on every tick: those pages are written.
    let ws = images::read_working_set(&images::open_image(&dir).unwrap())
        .unwrap()
        .unwrap();
    let written: u64 = ws.processes[0].written.iter().map(|r| r.1).sum();
    assert!(
        written > 0 && written < pages,
        "{written} of {pages} recorded pages written"
    );

    // A later mapped restore prefetches it.
    let json = mapped_restore_with_stats(&mut v, &dir);
    assert_eq!(
        json["prefetch"]["pages"].as_u64(),
        Some(pages),
        "the working set's pages are prefetched: {json}"
    );
    v.verify()
        .expect("memcheck verifies after a prefetched mapped restore");
    v.request_exit(0);
    v.reap();
}

#[test]
fn the_first_mapped_restore_of_an_image_records_its_working_set_on_its_own() {
    let mut v = Victim::start(Kind::Memcheck);
    let dir = v.work.join("img");
    dump(v.pid, &dir, false).assert_ok();
    v.reap();
    // --no-prefetch: neither reads nor records one.
    let before = v.last_logged();
    restore_detached(&dir, &["--pages", "map", "--no-prefetch"]).assert_ok();
    v.mark_restored();
    v.wait_logging_after(before);
    assert!(
        !working_set_file(&dir).exists(),
        "--no-prefetch records nothing"
    );
    v.request_exit(0);
    v.reap();
    // A copy restore neither.
    let before = v.last_logged();
    restore_detached(&dir, &[]).assert_ok();
    v.mark_restored();
    v.wait_logging_after(before);
    assert!(
        !working_set_file(&dir).exists(),
        "a copy restore records nothing"
    );
    v.request_exit(0);
    v.reap();

    // The first mapped restore: crest -d exits once the short window is over and the file is
    // written; it says so only with -v.
    let before = v.last_logged();
    let out = restore_detached(&dir, &["--pages", "map"]);
    out.assert_ok();
    v.mark_restored();
    assert!(
        !out.stderr.contains("working set"),
        "quiet without -v: {out}"
    );
    assert!(
        working_set_file(&dir).exists(),
        "the first mapped restore records"
    );
    let (pages, source) = shown_working_set(&dir, v.pid);
    assert!(pages > 0, "memcheck's pages touched in the window");
    assert_eq!(source, "MappedPresent");
    assert_eq!(show_json(&dir)["working_set"]["window_ms"], 100);
    v.wait_logging_after(before);
    v.verify()
        .expect("memcheck verifies after the recording restore");
    v.request_exit(0);
    v.reap();

    // The next one prefetches it, and records nothing new.
    let recorded = std::fs::read(working_set_file(&dir)).unwrap();
    let json = mapped_restore_with_stats(&mut v, &dir);
    assert_eq!(json["prefetch"]["pages"].as_u64(), Some(pages), "{json}");
    assert_eq!(std::fs::read(working_set_file(&dir)).unwrap(), recorded);
    v.verify()
        .expect("memcheck verifies after a prefetched restore");
    v.request_exit(0);
    v.reap();
}

#[test]
fn a_mapped_restore_faults_in_written_the_pages_the_working_set_says_are_written() {
    let mut v = Victim::start(Kind::Memcheck);
    let dir = v.work.join("img");
    dump(v.pid, &dir, false).assert_ok();
    v.reap();
    // memcheck's 32 MiB of random words are only read when it verifies: between ticks, none of
    // their pages is touched. Say that pages 1-4 of that run are written first.
    let image = images::open_image(&dir).unwrap();
    let p = &image.processes[0];
    let ps = image.inventory.page_size;
    let big = *p.page_runs.iter().max_by_key(|r| r.npages).unwrap();
    assert!(big.npages >= 64, "memcheck stores a large run: {big:?}");
    let ws = WorkingSet {
        inventory_blake3: image.inventory_blake3,
        recorded_unix_ms: 1,
        window_ms: 300,
        source: WorkingSetSource::MappedPresent,
        processes: vec![ProcessWorkingSet {
            pid: p.pid,
            ranges: vec![(big.vaddr + ps, 4)],
            written: vec![(big.vaddr + ps, 4)],
        }],
    };
    images::write_working_set(&image, &ws).unwrap();

    let out = restore_detached(&dir, &["--pages", "map", "-v"]);
    out.assert_ok();
    v.mark_restored();
    assert!(
        out.stderr
            .contains("16 KiB of them the working set says are written first"),
        "{out}"
    );
    // Before memcheck verifies anything: the 4 pages are its own copies already, the pages
    // around them untouched (still to be read from the page file when first touched).
    let touched = crest::proc::Proc::open(v.pid)
        .unwrap()
        .pagemap()
        .unwrap()
        .touched_pages(big.vaddr, big.vaddr + 16 * ps, ps)
        .unwrap();
    let written: Vec<u64> = touched
        .iter()
        .filter(|t| t.written)
        .map(|t| t.addr)
        .collect();
    assert_eq!(
        written,
        (1..5).map(|i| big.vaddr + i * ps).collect::<Vec<_>>(),
        "the written pages of the working set are faulted in written: {touched:?}"
    );
    v.verify()
        .expect("memcheck verifies after a mapped restore with hot pages");
    v.request_exit(0);
    v.reap();
}

/// A valid working set of one page run's first page for the image in `dir`.
fn forge(dir: &Path) -> (images::Image, WorkingSet) {
    let image = images::open_image(dir).unwrap();
    let p = &image.processes[0];
    let r = p.page_runs[p.page_runs.len() / 2];
    let ws = WorkingSet {
        inventory_blake3: image.inventory_blake3,
        recorded_unix_ms: 1,
        window_ms: 300,
        source: WorkingSetSource::LazyFaults,
        processes: vec![ProcessWorkingSet {
            pid: p.pid,
            ranges: vec![(r.vaddr, 1)],
            written: Vec::new(),
        }],
    };
    (image, ws)
}

fn plant(dir: &Path, bytes: &[u8]) {
    let path = working_set_file(dir);
    let _ = std::fs::remove_file(&path);
    std::fs::write(&path, bytes).unwrap();
}

#[test]
fn tampered_working_sets_are_refused_before_any_process_is_touched() {
    let mut v = Victim::start(Kind::Memcheck);
    let dir = v.work.join("img");
    dump(v.pid, &dir, false).assert_ok();
    v.reap();
    let (image, ws) = forge(&dir);
    images::write_working_set(&image, &ws).unwrap();
    let valid = std::fs::read(working_set_file(&dir)).unwrap();

    // A flipped byte.
    let mut flipped = valid.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xff;
    plant(&dir, &flipped);
    for mode in ["lazy", "map"] {
        let out = crest([
            "restore".as_ref(),
            "--pages".as_ref(),
            mode.as_ref(),
            "-D".as_ref(),
            dir.as_os_str(),
        ]);
        out.assert_failed().assert_stderr_mentions(&format!(
            "working-set file {} cannot be used (checksum mismatch)",
            working_set_file(&dir).display()
        ));
        assert_no_process(v.pid, "a restore refused for its working set");
    }

    // A range outside every VMA, re-encoded with a valid checksum.
    let mut outside = ws.clone();
    outside.processes[0].ranges.insert(0, (0x1000, 1));
    plant(&dir, &images::encode_working_set(&outside));
    restore_detached(&dir, &["--pages", "map"])
        .assert_failed()
        .assert_stderr_mentions("does not lie inside one stored page run of the image")
        .assert_stderr_mentions("working-set.img");
    assert_no_process(v.pid, "a restore refused for its working set");
    let shown = show_json(&dir)["working_set"]["error"].clone();
    assert!(
        shown
            .as_str()
            .is_some_and(|e| e.contains("working-set.img")),
        "crest show reports the damaged working set: {shown}"
    );

    // --no-prefetch does not read it.
    let before = v.last_logged();
    restore_detached(&dir, &["--pages", "map", "--no-prefetch"]).assert_ok();
    v.mark_restored();
    v.wait_logging_after(before);
    v.verify().expect("verifies");
    v.request_exit(0);
    v.reap();
}

#[test]
fn recording_with_copied_pages_is_refused() {
    let mut v = Victim::start(Kind::Memcheck);
    let dir = v.work.join("img");
    dump(v.pid, &dir, false).assert_ok();
    v.reap();
    restore_detached(&dir, &["--record-working-set"])
        .assert_failed()
        .assert_stderr_mentions(
            "recording a working set with copied pages: a copy restore reads every page before \
             the tree runs",
        );
    assert_no_process(v.pid, "a refused recording");
    assert!(!working_set_file(&dir).exists());
}

/// A new dump into the directory replaces the whole image, working set included; the old
/// working set put back beside the new image is refused as another dump's.
#[test]
fn a_new_dump_drops_the_old_working_set() {
    let mut v = Victim::start(Kind::Memcheck);
    let dir = v.work.join("img");
    dump(v.pid, &dir, false).assert_ok();
    v.reap();
    let (image, ws) = forge(&dir);
    images::write_working_set(&image, &ws).unwrap();
    let old = std::fs::read(working_set_file(&dir)).unwrap();
    let before = v.last_logged();
    restore_detached(&dir, &[]).assert_ok();
    v.mark_restored();
    v.wait_logging_after(before);
    dump(v.pid, &dir, false).assert_ok();
    v.reap();
    assert!(
        !working_set_file(&dir).exists(),
        "the new image comes without the old working set"
    );
    assert!(show_json(&dir)["working_set"].is_null());
    plant(&dir, &old);
    restore_detached(&dir, &["--pages", "map"])
        .assert_failed()
        .assert_stderr_mentions("it was recorded for another dump");
    assert_no_process(v.pid, "a restore refused for a stale working set");
}
