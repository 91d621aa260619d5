//! POSIX message queues (mq_open): a named queue holding messages of several priorities, open
//! in two descriptions (read-write; write-only and non-blocking), and an unlinked queue, all
//! shared by a parent and its child (tests/victims/mqueue.c). A dump captures each queue once
//! with its name, mode, owner, limits and messages (received and sent back, so the queue is
//! left as it was) and, when it kills the tree, removes the named queue; the restore creates
//! both again, refills them in the same order, unlinks the one that was, and gives each
//! process its descriptions with their access modes and flags. The victim checks names,
//! attributes, modes and every message in order; the queues' status lines read the same.

mod common;

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::MetadataExt;

use common::*;

/// Unlinks the victim's named queue when the test ends, however it ends.
struct QueueName(String);

impl Drop for QueueName {
    fn drop(&mut self) {
        let c = CString::new(self.0.clone()).unwrap();
        // SAFETY: mq_unlink takes a NUL-terminated name.
        unsafe { libc::mq_unlink(c.as_ptr()) };
    }
}

fn queue_exists(name: &str) -> bool {
    let c = CString::new(name).unwrap();
    // SAFETY: mq_open without O_CREAT takes the name and flags only.
    let fd = unsafe { libc::mq_open(c.as_ptr(), libc::O_RDONLY) };
    if fd < 0 {
        return false;
    }
    // SAFETY: closing the descriptor just opened.
    unsafe { libc::close(fd) };
    true
}

/// What read(2) of the queue behind `pid`'s fd `fd` shows (QSIZE, notification), and the
/// queue's inode.
fn status(pid: i32, fd: i32) -> (String, u64) {
    let path = format!("/proc/{pid}/fd/{fd}");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    (text, fs::metadata(&path).unwrap().ino())
}

/// The image's queue named `name`, from the first process that lists it.
fn image_queue(image: &serde_json::Value, name: &str) -> serde_json::Value {
    image["processes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["files"].as_array().unwrap().clone())
        .find(|f| f["kind"]["Mqueue"]["name"] == name)
        .unwrap_or_else(|| panic!("no queue {name} in the image"))
}

#[test]
fn message_queues_keep_name_attributes_messages_and_sharing_across_cycles() {
    let mut v = Victim::start(Kind::Mqueue);
    let child = v.info_child();
    let info = v.ctl_file("info");
    let name = info
        .lines()
        .find_map(|l| l.strip_prefix("name "))
        .expect("name in CTL/info")
        .to_string();
    let _guard = QueueName(name.clone());
    v.verify().expect("the victim verifies before any dump");
    let (before, _) = status(v.pid, 100);
    let (gone_before, _) = status(v.pid, 102);
    assert!(before.starts_with("QSIZE:19 "), "{before}");

    // Left running: the dump reads the messages and puts them back.
    let dir = v.work.join("img-running");
    dump(v.pid, &dir, true).assert_ok();
    v.verify()
        .expect("the victim verifies after a dump that left it running");
    assert_eq!(status(v.pid, 100).0, before);

    for cycle in 1..=2 {
        let dir = v.work.join(format!("img{cycle}"));
        dump(v.pid, &dir, false).assert_ok();
        v.reap();
        reap_pid(child.0, TIMEOUT).unwrap_or_else(|e| panic!("the child: {e}"));
        assert!(
            !queue_exists(&name),
            "cycle {cycle}: the dump that killed the tree left {name}"
        );
        let image = show_json(&dir);
        let q = image_queue(&image, name.trim_start_matches('/'));
        let prios: Vec<u64> = q["kind"]["Mqueue"]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["priority"].as_u64().unwrap())
            .collect();
        assert_eq!(prios, [9, 5, 5, 1, 0], "{q}");
        assert_eq!(q["kind"]["Mqueue"]["maxmsg"], 8, "{q}");
        assert_eq!(q["kind"]["Mqueue"]["unlinked"], false, "{q}");
        let gone = image_queue(&image, &format!("{}-gone", name.trim_start_matches('/')));
        assert_eq!(gone["kind"]["Mqueue"]["unlinked"], true, "{gone}");

        restore_detached(&dir, &[]).assert_ok();
        v.mark_restored();
        assert!(
            pid_exists(child.0),
            "cycle {cycle}: the child was not restored"
        );
        assert!(queue_exists(&name), "cycle {cycle}: {name} was not made");
        let (after, ino) = status(v.pid, 100);
        assert_eq!(after, before, "cycle {cycle}");
        assert_eq!(status(v.pid, 102).0, gone_before, "cycle {cycle}");
        for (pid, fd) in [(v.pid, 101), (child.0, 100), (child.0, 101)] {
            assert_eq!(
                status(pid, fd).1,
                ino,
                "cycle {cycle}: pid {pid} fd {fd} is another queue"
            );
        }
        assert_eq!(
            status(child.0, 102).1,
            status(v.pid, 102).1,
            "cycle {cycle}: the unlinked queue is not shared"
        );
        v.assert_verifies_with_child(&child, cycle);
    }
    v.exit_cleanly();
    assert!(!pid_exists(child.0), "the child outlived the victim");
}
