//! SysV shared memory: a keyed segment attached twice (read-write and read-only) and a segment
//! marked for removal while attached, both shared by a parent and its child
//! (tests/victims/ipc.c). A dump stores each segment once; the restore recreates it under the
//! same id and key, with owner, creator, mode, size and content, attached at the same addresses
//! in both processes, and removed again when it was. /proc/sysvipc/shm shows the same segments
//! before and after (but for pids, times and memory use).
//!
//! The victim also holds a SysV message queue with three messages of different types and a
//! semaphore set of three, used by both processes: captured (messages copied without being
//! consumed), removed by the dump, and recreated under the same id and key with the same
//! messages, values, owner, mode, qbytes and last pids; /proc/sysvipc/msg and sem show the same
//! lines before and after (but for times).

mod common;

use std::fs;

use common::*;

/// key, id, perms, size, nattch, uid, gid, cuid, cgid of segment `id` in /proc/sysvipc/shm.
fn sysvipc_line(id: i32) -> Option<Vec<String>> {
    fs::read_to_string("/proc/sysvipc/shm")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .find(|f| f.len() > 10 && f[1] == id.to_string())
        .map(|f| [&f[0..4], &f[6..11]].concat())
}

/// /proc/sysvipc/msg: key, msqid, perms, cbytes, qnum, lspid, lrpid, uid, gid, cuid, cgid of
/// queue `id`.
fn msg_line(id: i32) -> Option<Vec<String>> {
    table_line("/proc/sysvipc/msg", id, 11)
}

/// /proc/sysvipc/sem: key, semid, perms, nsems, uid, gid, cuid, cgid of set `id`.
fn sem_line(id: i32) -> Option<Vec<String>> {
    table_line("/proc/sysvipc/sem", id, 8)
}

fn table_line(path: &str, id: i32, fields: usize) -> Option<Vec<String>> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .find(|f| f.len() >= fields && f[1] == id.to_string())
        .map(|f| f[..fields].to_vec())
}

/// The addresses and permissions of the `/SYSV` mappings of `pid`.
fn sysv_maps(pid: i32) -> Vec<String> {
    fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("/SYSV"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            format!("{} {} {} {}", f[0], f[1], f[4], f[5])
        })
        .collect()
}

/// Removes the victim's SysV objects (by key) when the test ends, however it ends: a victim
/// killed by its guard never runs its own cleanup, and its objects would outlive it, keyed by
/// its pid (a later victim with the same pid could not create its own).
struct IpcObjects {
    keys: [i32; 3],
}

impl Drop for IpcObjects {
    fn drop(&mut self) {
        let [shm, msg, sem] = self.keys;
        // SAFETY: (whole block) IPC calls on ids looked up by key; none takes a buffer.
        unsafe {
            let id = libc::shmget(shm, 0, 0);
            if id >= 0 {
                libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
            }
            let id = libc::msgget(msg, 0);
            if id >= 0 {
                libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut());
            }
            let id = libc::semget(sem, 0, 0);
            if id >= 0 {
                libc::semctl(id, 0, libc::IPC_RMID);
            }
        }
    }
}

struct Started {
    /// Removed when the test ends (an attached segment goes once its users are killed).
    _objects: IpcObjects,
    v: Victim,
    child: VictimChild,
    ids: (i32, i32),
    /// The message queue and the semaphore set.
    qs: (i32, i32),
    info: String,
}

fn info_field(text: &str, name: &str) -> i32 {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

fn start() -> Started {
    let v = Victim::start(Kind::Ipc);
    let text = v.ctl_file("info");
    let field = |name: &str| info_field(&text, name);
    let child = VictimChild(field("child "));
    let ids = (field("A "), field("B "));
    let qs = (field("Q "), field("S "));
    let objects = IpcObjects {
        keys: [field("key "), field("qkey "), field("skey ")],
    };
    v.verify().expect("the victim verifies before any dump");
    Started {
        _objects: objects,
        v,
        child,
        ids,
        qs,
        info: text,
    }
}

#[test]
fn sysv_shared_memory_keeps_id_key_owner_content_and_attachments_across_two_cycles() {
    let Started {
        _objects,
        mut v,
        child,
        ids: (a, b),
        qs: (q, s),
        ..
    } = start();
    let before = (sysvipc_line(a), sysvipc_line(b));
    assert!(before.0.is_some() && before.1.is_some(), "{before:?}");
    let ipc_before = (msg_line(q), sem_line(s));
    let qline = ipc_before
        .0
        .clone()
        .expect("the queue in /proc/sysvipc/msg");
    assert_eq!(
        (qline[3].as_str(), qline[4].as_str()),
        ("37", "3"),
        "three messages, 37 bytes: {qline:?}"
    );
    assert!(ipc_before.1.is_some(), "the set in /proc/sysvipc/sem");
    let maps = (sysv_maps(v.pid), sysv_maps(child.0));
    assert_eq!(maps.0.len(), 3, "{maps:?}");

    for cycle in 1..=2 {
        let dir = v.work.join(format!("img{cycle}"));
        dump(v.pid, &dir, false).assert_ok();
        v.reap();
        reap_pid(child.0, TIMEOUT).unwrap_or_else(|e| panic!("the child: {e}"));
        // The image owns the segments now: the dump removed A, and B went with its users.
        assert_eq!(
            sysvipc_line(a),
            None,
            "cycle {cycle}: A is left after the dump"
        );
        assert_eq!(
            sysvipc_line(b),
            None,
            "cycle {cycle}: B is left after the dump"
        );
        assert_eq!(
            (msg_line(q), sem_line(s)),
            (None, None),
            "cycle {cycle}: the queue and set are left after the dump"
        );
        let image = show_json(&dir);
        let ipc = &image["processes"][0]["sysv_ipc"];
        let queue = &ipc["queues"][0];
        assert_eq!(queue["perm"]["id"], q, "{ipc}");
        let types: Vec<i64> = queue["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["mtype"].as_i64().unwrap())
            .collect();
        assert_eq!(types, [3, 1, 2], "{ipc}");
        assert_eq!(ipc["sems"][0]["perm"]["id"], s, "{ipc}");
        assert_eq!(
            ipc["sems"][0]["values"],
            serde_json::json!([5, 7, 11]),
            "{ipc}"
        );
        let stored: Vec<i64> = image["processes"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["sysv_shm"].as_array().unwrap().clone())
            .map(|s| s["id"].as_i64().unwrap())
            .collect();
        assert_eq!(stored.len(), 2, "each segment is stored once: {stored:?}");
        let parent = &image["processes"][0];
        let seg_a = parent["sysv_shm"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == a)
            .expect("A stored by the parent");
        let pages: u64 = seg_a["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["npages"].as_u64().unwrap())
            .sum();
        assert_eq!(
            pages, 3,
            "pages 0 to 2 of A (page 1 holds the echo words): {seg_a}"
        );

        restore_detached(&dir, &[]).assert_ok();
        v.mark_restored();
        assert!(
            pid_exists(child.0),
            "cycle {cycle}: the child was not restored"
        );
        assert_eq!((sysvipc_line(a), sysvipc_line(b)), before, "cycle {cycle}");
        assert_eq!((msg_line(q), sem_line(s)), ipc_before, "cycle {cycle}");
        assert_eq!(
            (sysv_maps(v.pid), sysv_maps(child.0)),
            maps,
            "cycle {cycle}"
        );
        v.assert_verifies_with_child(&child, cycle);
    }
    v.exit_cleanly();
    assert_eq!(sysvipc_line(a), None);
    assert_eq!(sysvipc_line(b), None, "B is gone with its last user");
    assert_eq!((msg_line(q), sem_line(s)), (None, None));
}

/// A restore while a segment with the key of a dumped one exists (another instance of the
/// program, or the segment left behind) is refused, naming the segment and how to remove it,
/// and changes nothing; once it is removed, the restore goes through.
#[test]
fn restore_refuses_a_segment_whose_key_is_taken() {
    let Started {
        _objects,
        mut v,
        child,
        ids: (a, _),
        ..
    } = start();
    let key: i32 = fs::read_to_string(v.ctl.join("info"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("key "))
        .and_then(|s| s.trim().parse().ok())
        .expect("key in info");
    let dir = v.work.join("img");
    dump(v.pid, &dir, false).assert_ok();
    v.reap();
    reap_pid(child.0, TIMEOUT).unwrap_or_else(|e| panic!("the child: {e}"));
    // SAFETY: creates a new segment; no memory is passed.
    let other = unsafe { libc::shmget(key, 4096, libc::IPC_CREAT | libc::IPC_EXCL | 0o600) };
    assert!(other >= 0, "shmget: {}", std::io::Error::last_os_error());
    let taken = sysvipc_line(other);
    restore_detached(&dir, &[])
        .assert_failed()
        .assert_stderr_mentions(&format!("SysV shared memory segment {a}"))
        .assert_stderr_mentions("exists already")
        .assert_stderr_mentions(&format!("ipcrm -m {other}"));
    assert_eq!(sysvipc_line(other), taken, "the other segment is untouched");
    assert!(!pid_exists(v.pid) && !pid_exists(child.0));
    // SAFETY: IPC_RMID takes no buffer.
    assert_eq!(
        unsafe { libc::shmctl(other, libc::IPC_RMID, std::ptr::null_mut()) },
        0
    );

    restore_detached(&dir, &[]).assert_ok();
    v.mark_restored();
    v.verify().expect("restored once the key is free");
    v.request_exit(0);
    v.reap();
}

/// A restore while a message queue and a semaphore set hold the keys of the dumped ones is
/// refused, naming both and the ipcrm commands, and creates nothing (no segment either); once
/// they are removed, the restore goes through.
#[test]
fn restore_refuses_a_queue_and_a_set_whose_keys_are_taken() {
    let Started {
        _objects,
        mut v,
        child,
        ids: (a, b),
        qs: (q, s),
        info,
    } = start();
    let (qkey, skey) = (info_field(&info, "qkey "), info_field(&info, "skey "));
    let dir = v.work.join("img");
    dump(v.pid, &dir, false).assert_ok();
    v.reap();
    reap_pid(child.0, TIMEOUT).unwrap_or_else(|e| panic!("the child: {e}"));
    // SAFETY: creates a new queue and set; no memory is passed.
    let (oq, os) = unsafe {
        (
            libc::msgget(qkey, libc::IPC_CREAT | libc::IPC_EXCL | 0o600),
            libc::semget(skey, 1, libc::IPC_CREAT | libc::IPC_EXCL | 0o600),
        )
    };
    assert!(oq >= 0 && os >= 0, "{}", std::io::Error::last_os_error());
    let taken = (msg_line(oq), sem_line(os));
    restore_detached(&dir, &[])
        .assert_failed()
        .assert_stderr_mentions(&format!("SysV message queue {q}"))
        .assert_stderr_mentions(&format!("ipcrm -q {oq}"))
        .assert_stderr_mentions(&format!("SysV semaphore set {s}"))
        .assert_stderr_mentions(&format!("ipcrm -s {os}"));
    assert_eq!(
        (msg_line(oq), sem_line(os)),
        taken,
        "the others are untouched"
    );
    if oq != q {
        assert_eq!(msg_line(q), None, "nothing created");
    }
    if os != s {
        assert_eq!(sem_line(s), None, "nothing created");
    }
    assert_eq!(
        (sysvipc_line(a), sysvipc_line(b)),
        (None, None),
        "no segment left"
    );
    assert!(!pid_exists(v.pid) && !pid_exists(child.0));
    // SAFETY: IPC_RMID takes no buffer.
    unsafe {
        assert_eq!(libc::msgctl(oq, libc::IPC_RMID, std::ptr::null_mut()), 0);
        assert_eq!(libc::semctl(os, 0, libc::IPC_RMID), 0);
    }

    restore_detached(&dir, &[]).assert_ok();
    v.mark_restored();
    v.verify().expect("restored once the keys are free");
    v.request_exit(0);
    v.reap();
}

/// A dump with -R leaves the queue and set in place, as they are (the tree goes on using
/// them), while the image holds them too.
#[test]
fn a_dump_with_leave_running_keeps_the_queue_and_set() {
    let Started {
        _objects,
        mut v,
        child,
        qs: (q, s),
        ..
    } = start();
    let before = (msg_line(q), sem_line(s));
    let dir = v.work.join("img");
    dump(v.pid, &dir, true).assert_ok();
    assert_eq!((msg_line(q), sem_line(s)), before, "left as they were");
    let image = show_json(&dir);
    assert_eq!(
        image["processes"][0]["sysv_ipc"]["queues"][0]["perm"]["id"],
        q
    );
    assert_eq!(
        image["processes"][0]["sysv_ipc"]["sems"][0]["perm"]["id"],
        s
    );
    v.verify().expect("the tree runs on with its queue and set");
    assert_eq!(
        (msg_line(q), sem_line(s)),
        before,
        "as they were, after a verify"
    );
    v.request_exit(0);
    v.reap();
    drop(child);
}
