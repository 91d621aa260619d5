//! The rest of the fd table (issue #11): /proc and /sys files at an offset (another process's
//! /proc/PID file, /proc/meminfo, a sysfs attribute), O_DIRECT files on tmpfs and on disk, an
//! O_NOATIME and an O_PATH descriptor, a dangling symbolic link held itself (O_PATH |
//! O_NOFOLLOW) and a removed one, each compared through fdinfo (flags and offset) and the fd
//! links before and after two cycles (tests/victims/ftable.c). /proc/self and /proc/PID files
//! of the process itself and of its child are opened again by the restored process, with the
//! same links, offsets and flags. An AIO
//! context whose ring was made read-only is refused at dump naming the process and the ring
//! (AIO contexts themselves are captured: tests/aio.rs). A library the process maps
//! that is replaced in place with the same size and mtime (a package upgrade) fails the restore
//! naming it and its build-id, with no process left behind.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// fdinfo `pos` and `flags` lines and the link of fds `fds` of `pid`.
fn table_of(pid: i32, fds: std::ops::RangeInclusive<i32>) -> BTreeMap<i32, String> {
    fds.map(|fd| {
        let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
        let keep: Vec<&str> = info
            .lines()
            .filter(|l| l.starts_with("pos:") || l.starts_with("flags:"))
            .collect();
        let link = fs::read_link(format!("/proc/{pid}/fd/{fd}"))
            .map(|l| l.display().to_string())
            .unwrap_or_default();
        (fd, format!("{} {link}", keep.join(" ")))
    })
    .collect()
}

/// The state of fds 100..=106 of `pid`: the files every ftable victim holds.
fn table(pid: i32) -> BTreeMap<i32, String> {
    table_of(pid, 100..=106)
}

/// The state of fds 111..=113 of `pid`: its /proc files of the tree.
fn proc_table(pid: i32) -> BTreeMap<i32, String> {
    table_of(pid, 111..=113)
}

struct Dirs {
    disk: tempfile::TempDir,
    tmpfs: tempfile::TempDir,
}

fn dirs() -> Dirs {
    Dirs {
        disk: tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap(),
        tmpfs: tempfile::tempdir_in("/dev/shm").unwrap(),
    }
}

fn start(d: &Dirs, env: &[(&str, &str)]) -> Victim {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let (disk, tmpfs) = (d.disk.path().to_owned(), d.tmpfs.path().to_owned());
    Victim::start_with(Kind::Ftable, move |cmd| {
        cmd.env("CREST_DISK_DIR", disk)
            .env("CREST_TMPFS_DIR", tmpfs);
        for (k, v) in env {
            cmd.env(k, v);
        }
    })
}

#[test]
fn proc_sys_direct_noatime_and_path_fds_keep_path_offset_and_flags() {
    let d = dirs();
    let mut v = start(&d, &[]);
    v.verify().expect("the victim verifies before any dump");
    let before = table(v.pid);
    assert!(before[&100].ends_with(" /proc/1/status"), "{before:?}");
    assert!(before[&100].contains("pos:\t100"), "{before:?}");
    // O_DIRECT (040000), O_NOATIME (01000000), O_PATH (010000000) are in fdinfo.
    assert!(before[&103].contains("flags:\t0140002"), "{before:?}");
    assert!(before[&104].contains("flags:\t01100000"), "{before:?}");
    assert!(before[&105].contains("flags:\t010000000"), "{before:?}");
    for cycle in 1..=2 {
        let dir = v.work.join(format!("img{cycle}"));
        dump(v.pid, &dir, false).assert_ok();
        v.reap();
        restore_detached(&dir, &[]).assert_ok();
        v.mark_restored();
        assert_eq!(table(v.pid), before, "cycle {cycle}");
        v.verify().unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        let _ = fs::remove_dir_all(&dir);
    }
}

/// /proc files of processes of the tree (/proc/self/status, the process's own /proc/PID/stat,
/// its child's /proc/CHILD/status) are opened again by the restored process once the tree
/// exists, with the same links, offsets and flags, and still show the same processes.
#[test]
fn proc_files_of_the_tree_are_opened_again_with_offset_and_flags() {
    let d = dirs();
    let mut v = start(&d, &[("CREST_PROC_SELF", "1")]);
    v.verify().expect("the victim verifies before any dump");
    let children = fs::read_to_string(format!("/proc/{}/task/{}/children", v.pid, v.pid)).unwrap();
    let child = VictimChild(children.trim().parse().expect("one child"));
    let before = proc_table(v.pid);
    assert!(
        before[&111].ends_with(&format!(" /proc/{}/status", v.pid)),
        "{before:?}"
    );
    assert!(
        before[&113].ends_with(&format!(" /proc/{}/status", child.0)),
        "{before:?}"
    );
    for cycle in 1..=2 {
        let dir = v.work.join(format!("img{cycle}"));
        dump(v.pid, &dir, false).assert_ok();
        v.reap();
        reap_pid(child.0, TIMEOUT).unwrap_or_else(|e| panic!("the child: {e}"));
        let image = show_json(&dir);
        let kinds: Vec<&serde_json::Value> = image["processes"][0]["files"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f["kind"].get("TreeProc"))
            .collect();
        assert_eq!(kinds.len(), 3, "cycle {cycle}: {kinds:?}");
        restore_detached(&dir, &[]).assert_ok();
        v.mark_restored();
        assert!(pid_exists(child.0), "cycle {cycle}: the child");
        assert_eq!(proc_table(v.pid), before, "cycle {cycle}");
        v.verify().unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        let _ = fs::remove_dir_all(&dir);
    }
}

#[test]
fn an_aio_ring_made_read_only_is_refused_naming_the_process_and_the_ring() {
    let d = dirs();
    let v = start(&d, &[("CREST_AIO", "1")]);
    v.verify().expect("the victim verifies before any dump");
    let dir = v.work.join("img");
    dump(v.pid, &dir, false)
        .assert_failed()
        .assert_stderr_mentions(&format!("process {}", v.pid))
        .assert_stderr_mentions("ring of an AIO context whose protection was changed")
        .assert_stderr_mentions("[aio]");
    v.assert_running();
    v.verify().expect("the victim runs on after the refusal");
}

/// Builds `lib.so` variants returning `value`, in `dir`.
fn build_lib(dir: &Path, value: i32) -> PathBuf {
    let src = dir.join(format!("lib{value}.c"));
    fs::write(&src, format!("int value(void) {{ return {value}; }}\n")).unwrap();
    let out = dir.join(format!("lib{value}.so"));
    let res = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-Wl,--build-id", "-o"])
        .arg(&out)
        .arg(&src)
        .output()
        .expect("run cc");
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    out
}

/// Rewrites `path` in place (same inode) with `content`, then puts its times back.
fn replace_in_place(path: &Path, content: &[u8]) {
    let md = fs::metadata(path).unwrap();
    fs::write(path, content).unwrap();
    let f = fs::File::options().write(true).open(path).unwrap();
    f.set_times(
        fs::FileTimes::new()
            .set_accessed(md.accessed().unwrap())
            .set_modified(md.modified().unwrap()),
    )
    .unwrap();
    let after = fs::metadata(path).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (after.ino(), after.len(), after.mtime(), after.mtime_nsec()),
        (md.ino(), md.len(), md.mtime(), md.mtime_nsec())
    );
}

#[test]
fn a_library_replaced_in_place_with_the_same_size_and_mtime_fails_the_restore() {
    let d = dirs();
    let one = build_lib(d.disk.path(), 1);
    let two = build_lib(d.disk.path(), 2);
    let (a, b) = (fs::read(&one).unwrap(), fs::read(&two).unwrap());
    assert_eq!(a.len(), b.len(), "the two builds differ in size");
    let lib = d.disk.path().join("libcrest-test.so");
    fs::write(&lib, &a).unwrap();
    let mut v = start(
        &d,
        &[
            ("CREST_LIB", lib.to_str().unwrap()),
            ("CREST_LIB_VALUE", "1"),
        ],
    );
    v.verify().expect("the victim verifies before any dump");
    let dir = v.work.join("img");
    dump(v.pid, &dir, false).assert_ok();
    v.reap();
    let image = show_json(&dir);
    assert!(
        image["processes"][0]["code_ids"]
            .to_string()
            .contains("BuildId"),
        "{}",
        image["processes"][0]["code_ids"]
    );

    replace_in_place(&lib, &b);
    restore_detached(&dir, &[])
        .assert_failed()
        .assert_stderr_mentions(lib.to_str().unwrap())
        .assert_stderr_mentions("build-id")
        .assert_stderr_mentions("replaced in place");
    assert_no_process(v.pid, "a restore refused for a replaced library");

    // The original content back (same size and times): restored and running its code.
    replace_in_place(&lib, &a);
    restore_detached(&dir, &[]).assert_ok();
    v.mark_restored();
    v.verify().expect("the victim verifies after the restore");
}
