//! Unlinked ("ghost") files and directories (tests/victims/ghost.c): a sparse scratch file
//! open read-write at an offset, mapped MAP_SHARED and MAP_PRIVATE and shared by a parent and
//! its child; a file deleted under one of its two names; a removed directory open as an fd and
//! as the child's cwd; a MAP_PRIVATE mapping of a deleted file; a file made with O_TMPFILE; a
//! removed character device node.
//! A dump stores each once (data only, holes skipped) with mode, owner and times; a restore
//! recreates them, unlinked again, so fd links, maps lines, fdinfo and the files' stat are as
//! before, over two cycles. A file with more data than `--ghost-limit` is refused, naming it
//! and the option, and the tree runs on untouched.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::MetadataExt;

use common::*;

fn start() -> (Victim, VictimChild) {
    let v = Victim::start(Kind::Ghost);
    let child = v.info_child();
    (v, child)
}

/// The maps lines of `pid` that name a deleted file, without the device and inode columns
/// (a recreated file is another inode).
fn deleted_maps(pid: i32) -> Vec<String> {
    fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .filter(|l| l.ends_with(" (deleted)") && !l.contains("/memfd:"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            format!("{} {} {} {}", f[0], f[1], f[2], f[5..].join(" "))
        })
        .collect()
}

/// `pos:` and `flags:` of /proc/PID/fdinfo/FD.
fn fdinfo(pid: i32, fd: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("pos:") || l.starts_with("flags:"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn link(pid: i32, what: &str) -> String {
    fs::read_link(format!("/proc/{pid}/{what}"))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| format!("<{e}>"))
}

/// What is compared before and after: the fds' links and fdinfo, the deleted maps lines, the
/// stat of each ghost (type and mode, owner, size, links), and where they are.
fn state(pid: i32, fds: &[i32]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for &fd in fds {
        let md = fs::metadata(format!("/proc/{pid}/fd/{fd}")).unwrap();
        out.insert(format!("fd {fd} link"), link(pid, &format!("fd/{fd}")));
        out.insert(format!("fd {fd} fdinfo"), fdinfo(pid, fd));
        out.insert(
            format!("fd {fd} stat"),
            format!(
                "mode {:o} owner {}:{} size {} links {}",
                md.mode(),
                md.uid(),
                md.gid(),
                if md.is_dir() { 0 } else { md.size() },
                md.nlink()
            ),
        );
    }
    out.insert("cwd".into(), link(pid, "cwd"));
    out.insert("maps".into(), deleted_maps(pid).join("\n"));
    out
}

/// atime and mtime of what `/proc/PID/WHAT` leads to.
fn times(pid: i32, what: &str) -> (i64, i64, i64, i64) {
    let md = fs::metadata(format!("/proc/{pid}/{what}")).unwrap();
    (md.atime(), md.atime_nsec(), md.mtime(), md.mtime_nsec())
}

/// The `/proc/PID/map_files` entry of the mapping of `name` (deleted).
fn map_file(pid: i32, name: &str) -> String {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let line = maps
        .lines()
        .find(|l| l.ends_with(&format!("/{name} (deleted)")))
        .unwrap_or_else(|| panic!("no mapping of {name} in {maps}"));
    let range = line.split_whitespace().next().unwrap();
    format!("map_files/{range}")
}

/// Each ghost is stored once, by the parent, data only: scratch (64 MiB long) costs its few
/// pages of data; the directory and the hard-linked file store nothing.
fn check_image(image: &serde_json::Value, work: &std::path::Path) {
    let parent = &image["processes"][0];
    let child = &image["processes"][1];
    assert_eq!(child["ghost_runs"], serde_json::json!([]), "{child}");
    let files = parent["files"].as_array().unwrap();
    let index = |name: &str| {
        let path = work.join(name).display().to_string();
        files
            .iter()
            .position(|f| f["path"] == path.as_str())
            .unwrap_or_else(|| panic!("no file {path} in {parent}"))
    };
    let pages = |file: usize| -> u64 {
        parent["ghost_runs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["file"] == file)
            .map(|r| r["npages"].as_u64().unwrap())
            .sum()
    };
    let scratch = index("scratch");
    let g = &files[scratch]["kind"]["Ghost"];
    assert_eq!(
        (g["uid"].as_u64(), g["gid"].as_u64()),
        (Some(1234), Some(5678))
    );
    assert_eq!(files[scratch]["size"].as_u64(), Some((64 << 20) + 7));
    let n = pages(scratch);
    assert!((3..=5).contains(&n), "scratch stored {n} pages: {parent}");
    assert_eq!(pages(index("mapped-only")), 2);
    assert!(files[index("gonedir")]["kind"]["Ghost"].is_object());
    assert_eq!(files[index("linked-b")]["kind"], "Regular");
}

#[test]
fn ghost_files_keep_content_holes_sharing_and_attributes_across_two_cycles() {
    let (mut v, child) = start();
    v.verify().expect("the victim verifies before any dump");

    for cycle in 1..=2 {
        let before = (state(v.pid, &[100, 101, 102]), state(child.0, &[100]));
        let scratch_atime = times(v.pid, "fd/100").0;
        let dir_times = times(v.pid, "fd/102");
        let mapped_times = times(v.pid, &map_file(v.pid, "mapped-only"));

        let dir = v.work.join(format!("img{cycle}"));
        dump(v.pid, &dir, false).assert_ok();
        v.reap();
        check_image(&show_json(&dir), &v.work);
        let pages: u64 = image_files(&dir)
            .iter()
            .filter(|p| is_page_file(p))
            .map(|p| fs::metadata(p).unwrap().len())
            .sum();
        assert!(
            pages < 16 << 20,
            "a 64 MiB sparse file made {pages} bytes of pages"
        );
        reap_pid(child.0, TIMEOUT).unwrap_or_else(|e| panic!("the child: {e}"));
        assert_no_process(child.0, "after the dump, the child");

        restore_detached(&dir, &[]).assert_ok();
        v.mark_restored();
        assert!(
            pid_exists(child.0),
            "cycle {cycle}: the child was not restored"
        );
        let mut after = (state(v.pid, &[100, 101, 102]), state(child.0, &[100]));
        // The file deleted under one name is reopened through the name it still has.
        let linked = after.0.remove("fd 101 link").unwrap();
        assert_eq!(linked, v.work.join("linked-b").display().to_string());
        after
            .0
            .insert("fd 101 link".into(), before.0["fd 101 link"].clone());
        assert_eq!(before, after, "cycle {cycle}: (parent, child) state");
        assert_eq!(
            times(v.pid, "fd/100").0,
            scratch_atime,
            "cycle {cycle}: scratch atime"
        );
        assert_eq!(
            times(v.pid, "fd/102"),
            dir_times,
            "cycle {cycle}: gonedir times"
        );
        assert_eq!(
            times(v.pid, &map_file(v.pid, "mapped-only")),
            mapped_times,
            "cycle {cycle}: mapped-only times"
        );
        // Nothing of crest's is left in the victim's directory.
        let mut names: Vec<String> = fs::read_dir(&v.work)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with("img"))
            .collect();
        names.sort();
        assert_eq!(names, ["ctl", "linked-b"], "cycle {cycle}");

        v.assert_verifies_with_child(&child, cycle);
    }
    v.exit_cleanly();
    assert!(!pid_exists(child.0), "the child outlived the victim");
}

#[test]
fn a_ghost_file_over_the_limit_is_refused_naming_it_and_the_option() {
    let (v, child) = start();
    v.verify().expect("the victim verifies before the dump");
    let before = (state(v.pid, &[100, 101, 102]), state(child.0, &[100]));
    let dir = v.work.join("img");
    let out = dump_with(
        v.pid,
        &dir,
        &[OsStr::new("--ghost-limit"), OsStr::new("8K")],
    );
    out.assert_failed();
    let scratch = v.work.join("scratch").display().to_string();
    for pid in [v.pid, child.0] {
        let line = out
            .stderr
            .lines()
            .find(|l| l.contains(&format!("process {pid}: fd 100")))
            .unwrap_or_else(|| panic!("no problem names process {pid} fd 100: {out}"));
        assert!(
            line.contains(&scratch) && line.contains("--ghost-limit") && line.contains("8192"),
            "{line}"
        );
    }
    assert!(!dir.exists(), "a refused dump left {}", dir.display());
    // Both run on untouched.
    wait_for("the tracer to let go", TIMEOUT, || {
        (tracer_pid(v.pid) == Some(0) && tracer_pid(child.0) == Some(0)).then_some(())
    });
    v.wait_logging_after(v.last_logged() + 3);
    v.verify()
        .expect("the victim verifies after the refused dump");
    assert_eq!(
        before,
        (state(v.pid, &[100, 101, 102]), state(child.0, &[100]))
    );
    assert!(matches!(proc_state(child.0), Some('S' | 'R')));
}

/// The maps lines of `pid` that name `path`, without the device and inode columns.
fn maps_of(pid: i32, path: &str) -> Vec<String> {
    fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .filter(|l| l.contains(path))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            format!("{} {} {} {}", f[0], f[1], f[2], f[5..].join(" "))
        })
        .collect()
}

/// A program whose executable was deleted while it runs: the dump stores the executable like
/// any deleted file, the restore recreates it (unlinked again) and makes it the exe again, so
/// /proc/PID/exe and the maps lines of its code show the same " (deleted)" path, and the
/// program runs on, over two cycles.
#[test]
fn a_deleted_executable_is_recreated_as_exe_and_mappings_across_two_cycles() {
    let bin_dir = tempfile::Builder::new()
        .prefix("crest-deleted-exe-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let copy = bin_dir.path().join("victim-copy");
    // Copied by cp, not by this process: a test thread forking meanwhile would inherit our
    // descriptor open for writing until its exec, and exec of the copy would fail (ETXTBSY).
    let copied = std::process::Command::new("cp")
        .arg(victim_binary(Kind::Memcheck))
        .arg(&copy)
        .status()
        .unwrap();
    assert!(copied.success(), "cp: {copied}");
    let mut v = Victim::start_program(Kind::Memcheck, &copy, &[], |_| {});
    fs::remove_file(&copy).unwrap();
    let shown = format!("{} (deleted)", copy.display());
    assert_eq!(link(v.pid, "exe"), shown);
    v.verify().expect("the victim verifies before any dump");
    let maps = maps_of(v.pid, &copy.display().to_string());
    assert!(
        maps.iter()
            .any(|l| l.contains(" r-xp ") && l.ends_with(&shown)),
        "{maps:?}"
    );

    for cycle in 1..=2 {
        let dir = v.work.join(format!("img{cycle}"));
        dump(v.pid, &dir, false).assert_ok();
        v.reap();
        let image = show_json(&dir);
        let p = &image["processes"][0];
        let exe = &p["files"][p["exe_file"].as_u64().unwrap() as usize];
        assert!(exe["kind"].get("Ghost").is_some(), "cycle {cycle}: {exe}");
        assert!(!copy.exists());

        restore_detached(&dir, &[]).assert_ok();
        v.mark_restored();
        assert_eq!(link(v.pid, "exe"), shown, "cycle {cycle}");
        assert_eq!(
            maps_of(v.pid, &copy.display().to_string()),
            maps,
            "cycle {cycle}"
        );
        assert!(!copy.exists(), "cycle {cycle}: the recreated exe is linked");
        let seen = v.last_logged();
        v.wait_logging_after(seen + 3);
        v.verify()
            .unwrap_or_else(|e| panic!("cycle {cycle}: the victim: {e}"));
    }
}
