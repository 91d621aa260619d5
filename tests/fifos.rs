//! Named FIFOs across dump and restore (issue #11): the fifos victim (tests/victims/fifos.c)
//! holds three FIFOs with unread data — one open for read, write and read-write, enlarged; one
//! open read-write that the test holds open too (shared with a process outside the tree); one
//! open only for writing — and a child shares every description. After each restore the victim
//! finds every fd with its access mode, flags and inode, the child's fds the same descriptions,
//! and each FIFO holding exactly the bytes it had. A FIFO whose path is gone, or names something
//! else, fails the restore naming it, leaving no process behind; a FIFO made again at the same
//! path is used. A FIFO removed while open (fifo-d) is made again with its bytes, mode and
//! owner, and removed again.

mod common;

use std::fs;
use std::os::unix::fs::OpenOptionsExt;

use common::*;

fn start() -> (Victim, VictimChild) {
    let v = Victim::start(Kind::Fifos);
    let child = v.info_child();
    (v, child)
}

/// The image's entry for the FIFO at `path` in process `p`.
fn fifo_kind(image: &serde_json::Value, p: usize, path: &std::path::Path) -> serde_json::Value {
    image["processes"][p]["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == path.to_str().unwrap())
        .unwrap_or_else(|| panic!("no {} in process {p}: {image}", path.display()))["kind"]["Fifo"]
        .clone()
}

#[test]
fn fifos_keep_their_data_flags_and_sharing_across_two_cycles() {
    let (mut v, child) = start();
    // The test holds fifo-b open too: it is shared with a process outside the tree.
    let b = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(v.ctl.join("fifo-b"))
        .expect("open fifo-b");
    v.verify().expect("the victim verifies before any dump");
    for cycle in 1..=2u32 {
        let dir = v.work.join(format!("img{cycle}"));
        dump(v.pid, &dir, false).assert_ok();
        v.reap();
        reap_pid(child.0, TIMEOUT).unwrap_or_else(|e| panic!("the child: {e}"));
        let image = show_json(&dir);
        // Each verify drains one generation and writes the next: one before the first
        // dump, two per cycle.
        let generation = 2 * cycle as usize - 1;
        for p in 0..2 {
            let a = fifo_kind(&image, p, &v.ctl.join("fifo-a"));
            assert_eq!(a["Internal"]["size"], 128 * 1024, "{a}");
            assert_eq!(
                a["Internal"]["buffered"].as_array().map(Vec::len),
                Some(5000 + 7 * generation),
                "cycle {cycle}"
            );
            let c = fifo_kind(&image, p, &v.ctl.join("fifo-c"));
            assert_eq!(
                c["Internal"]["buffered"].as_array().map(Vec::len),
                Some(200 + 7 * generation),
                "cycle {cycle}"
            );
            assert_eq!(
                fifo_kind(&image, p, &v.ctl.join("fifo-b")),
                "External",
                "cycle {cycle}"
            );
            let d = image["processes"][p]["files"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["path"] == v.ctl.join("fifo-d").to_str().unwrap())
                .expect("fifo-d in the image")["kind"]["DeletedFifo"]["pipe"]
                .clone();
            assert_eq!(
                d["Internal"]["buffered"].as_array().map(Vec::len),
                Some(200 + 7 * generation),
                "cycle {cycle}: {d}"
            );
        }
        let shown = crest(["show".as_ref(), dir.as_os_str()]);
        shown.assert_ok();
        assert!(
            shown.stdout.contains("fifo-a (FIFO, 131072-byte pipe")
                && shown
                    .stdout
                    .contains("fifo-b (FIFO, also open outside the tree)")
                && shown.stdout.contains("fifo-d (deleted FIFO, owner"),
            "{shown}"
        );
        restore_detached(&dir, &[]).assert_ok();
        v.mark_restored();
        assert!(pid_exists(child.0), "cycle {cycle}: no child");
        v.verify().unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        v.verify()
            .unwrap_or_else(|e| panic!("cycle {cycle}, second verify: {e}"));
        let _ = fs::remove_dir_all(&dir);
    }
    drop(b);
    v.exit_cleanly();
}

#[test]
fn a_fifo_gone_or_replaced_fails_the_restore_naming_it() {
    let (mut v, child) = start();
    v.verify().expect("the victim verifies before any dump");
    let dir = v.work.join("img");
    dump(v.pid, &dir, false).assert_ok();
    v.reap();
    reap_pid(child.0, TIMEOUT).unwrap_or_else(|e| panic!("the child: {e}"));
    let a = v.ctl.join("fifo-a");
    let shown = a.display().to_string();

    fs::remove_file(&a).unwrap();
    restore_detached(&dir, &[])
        .assert_failed()
        .assert_stderr_mentions(&shown)
        .assert_stderr_mentions("no longer exists");
    assert_no_process(v.pid, "a restore refused for a missing FIFO");
    assert_no_process(child.0, "a restore refused for a missing FIFO (child)");

    fs::write(&a, b"a regular file").unwrap();
    restore_detached(&dir, &[])
        .assert_failed()
        .assert_stderr_mentions(&shown)
        .assert_stderr_mentions("no longer a FIFO");
    assert_no_process(v.pid, "a restore refused for a replaced FIFO");
    assert_eq!(
        fs::read(&a).unwrap(),
        b"a regular file",
        "crest wrote to it"
    );

    // Made again at the same path: a FIFO has no content of its own, so it is used.
    fs::remove_file(&a).unwrap();
    nix::unistd::mkfifo(&a, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    restore_detached(&dir, &[]).assert_ok();
    v.mark_restored();
    v.verify().expect("the victim verifies after the restore");
}
