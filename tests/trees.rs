//! Whole process trees (issue #9): a dump takes the root and every descendant, frozen together;
//! a restore brings back every process under its pid, with its parent, process group and
//! session, zombies included, and what they share still shared (the root also holds a pidfd of
//! its grandchild D, which must still name D).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// (parent, group, session, state) of a process, from /proc/PID/stat.
type Ids = (i32, i32, i32, char);

fn ids(pid: i32) -> Option<Ids> {
    let s = procfs::process::Process::new(pid).ok()?.stat().ok()?;
    Some((s.ppid, s.pgrp, s.session, s.state))
}

/// The tree victim with the pids of its members (CTL/pids).
struct Tree {
    v: Victim,
    /// Every member but the root: A, B, C, D, E and the zombie Z.
    members: Vec<(String, i32)>,
}

impl Tree {
    fn start() -> Tree {
        let v = Victim::start(Kind::Tree);
        let path = v.ctl.join("pids");
        let text = wait_for("the tree's pids file", TIMEOUT, || {
            fs::read_to_string(&path).ok()
        });
        let members = text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(name, _)| *name != "root")
            .map(|(name, pid)| (name.to_string(), pid.trim().parse().expect("a pid")))
            .collect();
        Tree { v, members }
    }

    fn pid(&self, name: &str) -> i32 {
        self.members
            .iter()
            .find(|m| m.0 == name)
            .expect("a member")
            .1
    }

    /// Parent, group, session and state of the root and every member.
    fn snapshot(&self) -> BTreeMap<i32, Ids> {
        std::iter::once(self.v.pid)
            .chain(self.members.iter().map(|m| m.1))
            .map(|p| {
                (
                    p,
                    ids(p).unwrap_or_else(|| panic!("pid {p} does not exist")),
                )
            })
            .collect()
    }

    /// After a dump: the root and every member are gone (reaped by us, the subreaper they
    /// end with), none left running.
    fn reap_all(&mut self) {
        self.v.reap();
        for (name, pid) in &self.members {
            reap_pid(*pid, TIMEOUT).unwrap_or_else(|e| panic!("member {name}: {e}"));
            assert_no_process(*pid, &format!("after the dump, member {name}"));
        }
    }

    /// Every record of the shared records file is whole, and each process's records are in
    /// sequence with none missing: the file description (and its offset) stayed one.
    fn assert_records_whole(&self) {
        let data = fs::read(self.v.ctl.join("records")).expect("read records");
        assert_eq!(data.len() % 24, 0, "a torn record");
        let mut last: BTreeMap<i32, u64> = BTreeMap::new();
        for (i, rec) in data.chunks(24).enumerate() {
            let text = std::str::from_utf8(rec).expect("text record");
            let mut words = text.split_whitespace();
            let (Some(pid), Some(seq)) = (words.next(), words.next()) else {
                panic!("record {i} is {text:?}");
            };
            let (pid, seq): (i32, u64) = (pid.parse().unwrap(), seq.parse().unwrap());
            let prev = last.insert(pid, seq).unwrap_or(0);
            assert_eq!(
                seq,
                prev + 1,
                "record {i}: pid {pid} wrote {seq} after {prev}"
            );
        }
        assert!(last.len() >= 6, "records of {} processes only", last.len());
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        for (_, pid) in &self.members {
            if pid_exists(*pid) {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
        }
        let _ = kill(Pid::from_raw(self.v.pid), Signal::SIGKILL);
        let _ = reap_pid(self.v.pid, TIMEOUT);
        for (_, pid) in &self.members {
            let _ = reap_pid(*pid, TIMEOUT);
        }
    }
}

#[test]
fn a_tree_restores_three_times_under_its_pids_groups_and_sessions() {
    let mut t = Tree::start();
    t.v.verify().expect("the tree verifies before any dump");
    let before = t.snapshot();
    let root = t.v.pid;
    // The layout the victim promises, so the test checks what it means to.
    assert_eq!(before[&root].2, root, "the root leads its session");
    assert_eq!(
        before[&t.pid("A")],
        (root, root, root, before[&t.pid("A")].3)
    );
    assert_eq!(before[&t.pid("B")].1, t.pid("B"));
    assert_eq!(before[&t.pid("C")].2, t.pid("C"));
    assert_eq!(before[&t.pid("D")].1, t.pid("D"));
    assert_eq!(before[&t.pid("E")].1, t.pid("C"));
    assert_eq!(before[&t.pid("Z")].3, 'Z');

    for cycle in 1..=3 {
        let dir = t.v.work.join(format!("img{cycle}"));
        let out = dump(root, &dir, false);
        out.assert_ok();
        assert!(out.stderr.contains("5 descendant(s), 1 zombie(s)"), "{out}");
        t.reap_all();

        restore_detached(&dir, &[]).assert_ok();
        t.v.mark_restored();
        let after = t.snapshot();
        // The root's parent is now the restoring crest's parent (us), as for any restore.
        let strip = |m: &BTreeMap<i32, Ids>| {
            m.iter()
                .map(|(&p, &(pp, g, s, st))| {
                    let pp = if p == root { 0 } else { pp };
                    // A running process may be seen in R, S or D; a zombie is a zombie.
                    (p, (pp, g, s, st == 'Z'))
                })
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(strip(&after), strip(&before), "cycle {cycle}");
        t.v.verify()
            .unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        t.assert_records_whole();
    }
    // The zombie's parent reaps it with the status it had at the first dump.
    fs::write(t.v.ctl.join("final"), b"").unwrap();
    t.v.verify()
        .expect("the root reaps its zombie with status 42");
    assert!(!pid_exists(t.pid("Z")), "the zombie was not reaped");
}

#[test]
fn a_bash_loop_running_sleep_carries_on_after_restore() {
    setup();
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let log = work.path().join("count");
    let script = format!(
        "i=0; while true; do i=$((i+1)); echo $i >> {}; sleep 0.05; done",
        log.display()
    );
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(&script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let bash = spawn_in_own_session(cmd);
    let count = |p: &Path| -> usize {
        fs::read_to_string(p)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    wait_for("bash to count", TIMEOUT, || {
        (count(&log) >= 3).then_some(())
    });
    let sleep_pid = wait_for("bash's sleep child", TIMEOUT, || {
        let kids = procfs::process::Process::new(bash)
            .ok()?
            .task_main_thread()
            .ok()?
            .children()
            .ok()?;
        kids.first().map(|&k| k as i32)
    });
    let dir = work.path().join("img");
    let out = dump(bash, &dir, false);
    out.assert_ok();
    let _ = reap_pid(bash, TIMEOUT);
    let _ = reap_pid(sleep_pid, TIMEOUT);
    assert_no_process(bash, "after the dump");
    let at_dump = count(&log);

    restore_detached(&dir, &[]).assert_ok();
    wait_for("the restored bash to count on", TIMEOUT, || {
        (count(&log) >= at_dump + 3).then_some(())
    });
    let lines: Vec<u64> = fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(
        lines.windows(2).all(|w| w[1] == w[0] + 1),
        "the count skipped or repeated: {lines:?}"
    );
    let _ = kill(Pid::from_raw(bash), Signal::SIGKILL);
    let _ = reap_pid(bash, TIMEOUT);
    // Its current sleep is reparented to us when bash dies: end it too.
    std::thread::sleep(Duration::from_millis(100));
    for p in procfs::process::all_processes().unwrap().flatten() {
        if let Ok(st) = p.stat() {
            if st.ppid == std::process::id() as i32 && st.comm == "sleep" {
                let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
                let _ = reap_pid(p.pid, TIMEOUT);
            }
        }
    }
}

/// A tree with a session whose leader has exited: the root (a subreaper) forked A, A made a
/// session and forked X into it, then ended, so X is the root's child in a session (and group)
/// of no one in the tree. Only a fork from inside a session puts a process in it: a helper
/// under A's pid makes the session again and forks X with CLONE_PARENT, so X is the root's
/// child in session A, group A, and the helper is gone once the tree runs.
#[test]
fn a_session_whose_leader_exited_is_made_again_by_a_helper() {
    setup();
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let ready = work.path().join("member");
    let script = r#"
import ctypes, os, sys, time
ctypes.CDLL(None).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
r, w = os.pipe()
leader = os.fork()
if leader == 0:
    os.setsid()
    member = os.fork()
    if member == 0:
        while True:
            time.sleep(1)
    os.write(w, str(member).encode())
    os._exit(0)
member = int(os.read(r, 32))
os.waitpid(leader, 0)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(f"{member} {leader}")
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
while True:
    time.sleep(1)
"#;
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(script)
        .arg(&ready)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let root = spawn_in_own_session(cmd);
    let text = wait_for("the member's pid", TIMEOUT, || {
        fs::read_to_string(&ready).ok()
    });
    let mut words = text.split_whitespace().map(|w| w.parse::<i32>().unwrap());
    let (member, leader) = (words.next().unwrap(), words.next().unwrap());
    let before = ids(member).expect("the member");
    assert_eq!(before.2, leader, "the member is in the leader's session");
    assert_eq!(before.0, root, "the member is the root's child now");

    assert_eq!(before.1, leader, "the member is in the leader's group");
    let root_before = ids(root).expect("the root");

    for cycle in 1..=2 {
        let dir = work.path().join(format!("img{cycle}"));
        dump(root, &dir, false).assert_ok();
        reap_pid(root, TIMEOUT).expect("the dumped root is gone");
        reap_pid(member, TIMEOUT).expect("the dumped member is gone");
        restore_detached(&dir, &[]).assert_ok();
        let after = ids(member).expect("the restored member runs");
        assert_eq!(
            (after.0, after.1, after.2),
            (before.0, before.1, before.2),
            "cycle {cycle}: the member's parent, group and session"
        );
        let root_after = ids(root).expect("the restored root runs");
        assert_eq!((root_after.1, root_after.2), (root_before.1, root_before.2));
        assert!(
            !pid_exists(leader),
            "cycle {cycle}: the session's helper is gone"
        );
        // The root sees no child but the member (the helper left no zombie behind).
        assert_eq!(descendants(root), vec![member], "cycle {cycle}");
    }
    let _ = kill(Pid::from_raw(member), Signal::SIGKILL);
    let _ = kill(Pid::from_raw(root), Signal::SIGKILL);
    let _ = reap_pid(root, TIMEOUT);
    let _ = reap_pid(member, TIMEOUT);
}

/// A root, and a child D in the process group of the root's other child C, which has exited
/// since (zdtm zombie01 and session01 have such groups).
const ORPHANED_GROUP_VICTIM: &str = r#"
import ctypes, json, os, time
c = os.fork()
if c == 0:
    while True:
        time.sleep(100)
os.setpgid(c, c)
d = os.fork()
if d == 0:
    ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    os.setpgid(0, c)
    while True:
        time.sleep(100)
while os.getpgid(d) != c:
    time.sleep(0.001)
os.kill(c, 9)
os.waitpid(c, 0)

def state():
    return json.dumps({
        "c": c, "d": d,
        "d_group": os.getpgid(d), "d_session": os.getsid(d),
        "root": [os.getpgid(0), os.getsid(0)],
        "c_exists": os.path.exists("/proc/%d" % c),
    })

serve(lambda data: state())
"#;

#[test]
fn a_process_group_whose_leader_exited_is_made_again_around_its_members() {
    setup();
    let work = tempfile::tempdir().unwrap();
    let v = ControlledVictim::start(ORPHANED_GROUP_VICTIM, work.path(), &[]);
    let before = v.ask(b"state");
    let state: serde_json::Value = serde_json::from_str(&before).unwrap();
    let (c, d) = (state["c"].as_i64().unwrap(), state["d"].as_i64().unwrap());
    assert_eq!(state["d_group"], c, "{before}");
    assert_eq!(state["c_exists"], false, "{before}");

    let dir = work.path().join("img");
    dump(v.pid(), &dir, false).assert_ok();
    reap_pid(v.pid(), TIMEOUT).expect("the dumped root is gone");
    reap_pid(d as i32, TIMEOUT).expect("the dumped child is gone");
    restore_detached(&dir, &[]).assert_ok();
    assert_eq!(v.ask(b"state"), before, "after the restore");
    assert!(
        !pid_exists(c as i32),
        "the helper that led group {c} is gone"
    );
    dump(v.pid(), &work.path().join("img-R"), true).assert_ok();
    assert_eq!(v.ask(b"state"), before, "after a dump with -R");
}

/// A process whose session leader has exited (started with `nohup` from a shell that ended
/// since): its own session becomes crest's at restore, as for any root started from a shell.
/// Only a *non-root* process in such a session is refused (see above).
#[test]
fn a_root_whose_session_leader_exited_is_dumped_and_restored() {
    setup();
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let ready = work.path().join("root");
    let script = r#"
import os, sys, time
os.setsid()
if os.fork() == 0:
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    while True:
        time.sleep(0.01)
os._exit(0)
"#;
    let mut launcher = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&ready)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let launcher_pid = launcher.id() as i32;
    launcher.wait().expect("the launcher ends");
    let text = wait_for("the root's pid", TIMEOUT, || {
        fs::read_to_string(&ready).ok()
    });
    let root: i32 = text.trim().parse().unwrap();
    let before = ids(root).expect("the root");
    assert_eq!(
        before.2, launcher_pid,
        "the root is in its gone launcher's session"
    );

    let dir = work.path().join("img");
    dump(root, &dir, false).assert_ok();
    reap_pid(root, TIMEOUT).expect("the dumped root is gone");
    restore_detached(&dir, &[]).assert_ok();
    let after = ids(root).expect("the restored root runs");
    // SAFETY: getsid(0) has no preconditions.
    let ours = unsafe { libc::getsid(0) };
    assert_eq!(
        after.2, ours,
        "the restored root is in crest's session (the caller's)"
    );
    let _ = kill(Pid::from_raw(root), Signal::SIGKILL);
    let _ = reap_pid(root, TIMEOUT);
}
