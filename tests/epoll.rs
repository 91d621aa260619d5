//! epoll, inotify and pidfd survive dump and restore: every epoll registration (fd number,
//! events, data, ET/ONESHOT, a fired one-shot, a target moved to another fd, an epoll inside
//! an epoll, a signalfd woken by a signal sent after the restore), every inotify watch under its wd, a pidfd of the process itself. The victim
//! checks what epoll_wait and inotify report; the test compares the fdinfo lines before the
//! dump and after the restore.

mod common;

use common::*;

/// The state lines of the fdinfo of fd `fd` of `pid`: epoll registrations (tfd, events, data)
/// and inotify watches (wd, ino, sdev, mask), sorted.
fn state_lines(pid: i32, fd: i32) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
    let mut lines: Vec<String> = text
        .lines()
        .filter_map(|l| {
            if l.starts_with("tfd:") {
                // tfd: N events: E data: D  pos:.. ino:.. sdev:.. (the target's inode is new).
                let w: Vec<&str> = l.split_whitespace().collect();
                Some(w[..6].join(" "))
            } else if l.starts_with("inotify ") {
                let w: Vec<&str> = l
                    .split_whitespace()
                    .filter(|f| {
                        ["wd:", "ino:", "sdev:", "mask:", "ignored_mask:"]
                            .iter()
                            .any(|k| f.starts_with(k))
                    })
                    .collect();
                Some(w.join(" "))
            } else {
                None
            }
        })
        .collect();
    lines.sort();
    lines
}

fn snapshot(pid: i32) -> Vec<(i32, Vec<String>)> {
    [100, 107, 120]
        .into_iter()
        .map(|fd| (fd, state_lines(pid, fd)))
        .collect()
}

#[test]
fn epolls_inotify_and_a_pidfd_keep_their_state_through_two_cycles() {
    let mut v = Victim::start(Kind::Epoll);
    v.verify().expect("the victim verifies before any dump");
    for cycle in 1..=2 {
        let before = snapshot(v.pid);
        assert_eq!(
            before[0].1.len(),
            10,
            "the outer epoll's targets: {before:?}"
        );
        assert_eq!(before[2].1.len(), 2, "the inotify watches: {before:?}");
        let dir = v.work.join(format!("img{cycle}"));
        let logged = v.last_logged();
        dump(v.pid, &dir, false).assert_ok();
        v.reap();
        let shown = crest(["show".as_ref(), dir.as_os_str()]);
        shown.assert_ok();
        assert!(
            shown.stdout.contains("epoll: fd ")
                && shown.stdout.contains("events 0x40000000 data 0x1008")
                && shown.stdout.contains("inotify: wd 2")
                && shown
                    .stdout
                    .contains(&format!("pidfd of process {}", v.pid)),
            "cycle {cycle}: {shown}"
        );
        restore_detached(&dir, &[]).assert_ok();
        v.mark_restored();
        v.wait_logging_after(logged);
        assert_eq!(
            snapshot(v.pid),
            before,
            "cycle {cycle}: fdinfo after the restore"
        );
        v.verify().unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
    }
}

#[test]
fn an_epoll_and_a_pidfd_dumped_with_leave_running_are_unchanged() {
    let v = Victim::start(Kind::Epoll);
    v.verify().expect("the victim verifies before the dump");
    let before = snapshot(v.pid);
    let dir = v.work.join("img");
    dump(v.pid, &dir, true).assert_ok();
    let logged = v.last_logged();
    v.wait_logging_after(logged + 3);
    assert_eq!(snapshot(v.pid), before, "fdinfo after a dump with -R");
    v.verify().expect("the victim verifies after the dump");
}
