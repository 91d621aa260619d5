//! memfds (memfd_create): open as fds, mapped MAP_SHARED or MAP_PRIVATE, shared by a parent
//! and its child. A dump stores each memfd once with its name, size, seals and content; a
//! restore recreates it before the fork, so the processes share it again, and the fd links
//! and /proc/PID/maps show `/memfd:NAME (deleted)` as before.

mod common;

use std::fs;

use common::*;

fn maps_line(pid: i32, name: &str) -> bool {
    fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_default()
        .lines()
        .any(|l| l.ends_with(&format!("/memfd:{name} (deleted)")))
}

fn fd_link(pid: i32, fd: i32) -> String {
    fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// Each memfd is stored once, by the parent (the first process of the tree), with only its
/// non-zero pages: crest-sealed's pages 0 and 2 (page 1 is a hole, page 3 holds zeros only).
fn check_image(image: &serde_json::Value) {
    let parent = &image["processes"][0];
    let child = &image["processes"][1];
    assert_eq!(child["memfd_runs"], serde_json::json!([]), "{child}");
    let memfd = |name: &str| {
        parent["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["kind"]["Memfd"]["name"] == name)
            .unwrap_or_else(|| panic!("no memfd {name} in {parent}"))
            .clone()
    };
    let pages = |ino: &serde_json::Value| -> u64 {
        parent["memfd_runs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| &r["ino"] == ino)
            .map(|r| r["npages"].as_u64().unwrap())
            .sum()
    };
    let page = image["inventory"]["page_size"].as_u64().unwrap_or(4096);
    let sealed = memfd("crest-sealed");
    assert_eq!(sealed["size"].as_u64(), Some(3 * page + 100));
    assert_eq!(
        sealed["kind"]["Memfd"]["seals"],
        2 | 4,
        "F_SEAL_SHRINK|F_SEAL_GROW"
    );
    assert_eq!(pages(&sealed["ino"]), 2, "{parent}");
    let shared = memfd("crest-shared");
    assert_eq!(shared["kind"]["Memfd"]["seals"], 1, "F_SEAL_SEAL");
    assert!(pages(&shared["ino"]) >= 1);
    assert_eq!(pages(&memfd("crest-private")["ino"]), 2);
}

#[test]
fn memfds_keep_content_name_size_seals_and_sharing_across_two_cycles() {
    let mut v = Victim::start(Kind::Memfd);
    let child = v.info_child();
    v.verify().expect("the victim verifies before any dump");

    for cycle in 1..=2 {
        let dir = v.work.join(format!("img{cycle}"));
        let out = dump(v.pid, &dir, false);
        out.assert_ok();
        v.reap();
        check_image(&show_json(&dir));
        reap_pid(child.0, TIMEOUT).unwrap_or_else(|e| panic!("the child: {e}"));
        assert_no_process(child.0, "after the dump, the child");

        restore_detached(&dir, &[]).assert_ok();
        v.mark_restored();
        assert!(
            pid_exists(child.0),
            "cycle {cycle}: the child was not restored"
        );
        for pid in [v.pid, child.0] {
            assert!(
                maps_line(pid, "crest-shared"),
                "cycle {cycle}: pid {pid} maps"
            );
            assert!(
                maps_line(pid, "crest-private"),
                "cycle {cycle}: pid {pid} maps"
            );
            assert_eq!(fd_link(pid, 101), "/memfd:crest-shared (deleted)");
        }
        assert_eq!(fd_link(v.pid, 100), "/memfd:crest-sealed (deleted)");
        v.assert_verifies_with_child(&child, cycle);
    }
    // The victim kills and waits for its child, then exits.
    v.exit_cleanly();
    assert!(!pid_exists(child.0), "the child outlived the victim");
}
