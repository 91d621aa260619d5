//! Chrooted processes (tests/victims/chroot.c): a tree whose main process keeps crest's root
//! while its children have their own (A: WORK/jail with cwd /sub and an fd outside the root;
//! B, A's child: inherited A's root and cwd; C: WORK/jail/inner with its cwd outside the root;
//! D: a removed directory, with an unlinked file inside). A dump records each root (path and
//! identity); a restore enters it last, so each task has its root and cwd again, reads its
//! files through its fds, opens them again and makes new files by paths from its root, finds
//! its UNIX listener (bound to an absolute name from its root) there by that name, and
//! cannot reach what lies outside it, over two cycles and after a dump with -R. A root replaced
//! since the dump is refused at restore, naming it.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;

use common::*;

/// The victim and its children A, B, C, D (from CTL/info).
struct Tree {
    v: Victim,
    kids: Vec<(String, VictimChild)>,
}

fn start() -> Tree {
    let v = Victim::start(Kind::Chroot);
    let info = v.ctl_file("info");
    let kids = info
        .lines()
        .map(|l| {
            let (name, pid) = l.split_once(' ').expect("NAME PID");
            let name = if name == "child" { "A" } else { name };
            (
                name.to_string(),
                VictimChild(pid.trim().parse().expect("a pid")),
            )
        })
        .collect::<Vec<_>>();
    assert_eq!(kids.len(), 4, "{info}");
    Tree { v, kids }
}

impl Tree {
    fn pid(&self, name: &str) -> i32 {
        self.kids.iter().find(|k| k.0 == name).unwrap().1 .0
    }

    fn all(&self) -> Vec<(String, i32)> {
        let mut out = vec![("main".to_string(), self.v.pid)];
        out.extend(self.kids.iter().map(|(n, c)| (n.clone(), c.0)));
        out
    }

    /// Root and cwd of every process as crest sees them: the links, and (but for the removed
    /// one, recreated as another inode) device and inode.
    fn roots(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (name, pid) in self.all() {
            for what in ["root", "cwd"] {
                let link = fs::read_link(format!("/proc/{pid}/{what}")).unwrap();
                let md = fs::metadata(format!("/proc/{pid}/{what}")).unwrap();
                let id = if name == "D" {
                    format!("links {}", md.nlink())
                } else {
                    format!("{}:{}", md.dev(), md.ino())
                };
                out.insert(format!("{name} {what}"), format!("{} {id}", link.display()));
            }
        }
        out
    }

    /// After a dump that ended the tree: every process is gone.
    fn reap_all(&mut self) {
        self.v.reap();
        for (name, c) in &self.kids {
            reap_pid(c.0, TIMEOUT).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_no_process(c.0, &format!("after the dump, {name}"));
        }
    }
}

/// The root path recorded for `pid` in the image (None: crest's "/"), and its file kind.
fn recorded_root(image: &serde_json::Value, pid: i32) -> Option<(String, serde_json::Value)> {
    let p = image["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("no process {pid} in the image"));
    let i = p["root_file"].as_u64()? as usize;
    let f = &p["files"][i];
    Some((f["path"].as_str().unwrap().to_string(), f["kind"].clone()))
}

fn check_image(t: &Tree, dir: &std::path::Path) {
    let image = show_json(dir);
    let work = t.v.work.display().to_string();
    assert_eq!(recorded_root(&image, t.v.pid), None);
    for (name, sub) in [("A", "jail"), ("B", "jail"), ("C", "jail/inner")] {
        let (path, kind) = recorded_root(&image, t.pid(name)).unwrap();
        assert_eq!(path, format!("{work}/{sub}"), "{name}");
        assert_eq!(kind, "Directory", "{name}");
    }
    let (path, kind) = recorded_root(&image, t.pid("D")).unwrap();
    assert_eq!(path, format!("{work}/gone"));
    assert!(kind.get("Ghost").is_some(), "D's root: {kind}");
    // A's listener, bound to /sub/a.sock from its root.
    let a = image["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == t.pid("A"))
        .unwrap();
    let sock = a["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == format!("{work}/jail/sub/a.sock").as_str())
        .unwrap_or_else(|| panic!("no socket file below A's root: {a}"));
    let name = &sock["kind"]["UnixSocket"]["name"]["Path"];
    assert_eq!(name["bound"], "/sub/a.sock", "{sock}");
    assert_eq!(name["dir"], format!("{work}/jail").as_str(), "{sock}");
    let text = crest(["show".as_ref(), dir.as_os_str()]);
    assert!(
        text.stdout.contains(&format!("  root   {work}/jail/inner")),
        "{text}"
    );
}

#[test]
fn chrooted_processes_keep_roots_cwds_and_files_across_two_cycles() {
    let mut t = start();
    t.v.verify().expect("the victim verifies before any dump");
    let before = t.roots();
    assert!(
        before["D root"].ends_with("/gone (deleted) links 0"),
        "{before:?}"
    );
    assert!(!before["C cwd"].contains("/jail"), "{before:?}");

    for cycle in 1..=2 {
        let dir = t.v.work.join(format!("img{cycle}"));
        dump(t.v.pid, &dir, false).assert_ok();
        t.reap_all();
        check_image(&t, &dir);

        restore_detached(&dir, &[]).assert_ok();
        t.v.mark_restored();
        assert_eq!(t.roots(), before, "cycle {cycle}");
        use std::os::unix::fs::FileTypeExt;
        let sock = fs::symlink_metadata(t.v.work.join("jail/sub/a.sock")).unwrap();
        assert!(sock.file_type().is_socket(), "cycle {cycle}");
        assert!(
            fs::symlink_metadata("/sub/a.sock").is_err(),
            "cycle {cycle}: a socket file was made in crest's root"
        );
        assert!(
            !t.v.work.join("gone").exists(),
            "cycle {cycle}: the removed root is linked again"
        );
        let seen = t.v.last_logged();
        t.v.wait_logging_after(seen + 3);
        t.v.verify()
            .unwrap_or_else(|e| panic!("cycle {cycle}: the victim: {e}"));
    }
    t.v.exit_cleanly();
}

#[test]
fn chrooted_processes_run_on_after_a_dump_with_r_and_restore_from_it() {
    let mut t = start();
    t.v.verify().expect("the victim verifies before the dump");
    let before = t.roots();
    let dir = t.v.work.join("img");
    dump(t.v.pid, &dir, true).assert_ok();
    wait_for("the tracer to let go", TIMEOUT, || {
        t.all()
            .iter()
            .all(|(_, pid)| tracer_pid(*pid) == Some(0))
            .then_some(())
    });
    assert_eq!(t.roots(), before, "after -R");
    t.v.verify().expect("the victim verifies after -R");

    t.v.kill();
    for (name, c) in &t.kids {
        reap_pid(c.0, TIMEOUT).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_no_process(c.0, name);
    }
    restore_detached(&dir, &[]).assert_ok();
    t.v.mark_restored();
    assert_eq!(t.roots(), before, "after the restore");
    t.v.verify().expect("the victim verifies after the restore");
    t.v.exit_cleanly();
}

#[test]
fn a_root_replaced_since_the_dump_is_refused_at_restore() {
    let mut t = start();
    t.v.verify().expect("the victim verifies before the dump");
    let dir = t.v.work.join("img");
    dump(t.v.pid, &dir, false).assert_ok();
    t.reap_all();

    // Another directory under the name of C's root, holding C's file: everything C has open
    // is found, only its root is another directory.
    let inner = t.v.work.join("jail/inner");
    let aside = t.v.work.join("inner-aside");
    fs::rename(&inner, &aside).unwrap();
    fs::create_dir(&inner).unwrap();
    fs::rename(aside.join("c-data"), inner.join("c-data")).unwrap();
    let out = restore_detached(&dir, &[]);
    out.assert_failed();
    let c = t.pid("C");
    assert!(
        out.stderr.contains(&format!(
            "{} (the root directory, chroot, of process {c})",
            inner.display()
        )) && out.stderr.contains("changed since the dump"),
        "{out}"
    );
    for (name, pid) in t.all() {
        assert_no_process(pid, &format!("after the refused restore, {name}"));
    }

    // The original back: the restore goes through.
    fs::rename(inner.join("c-data"), aside.join("c-data")).unwrap();
    fs::remove_dir(&inner).unwrap();
    fs::rename(&aside, &inner).unwrap();
    restore_detached(&dir, &[]).assert_ok();
    t.v.mark_restored();
    t.v.verify().expect("the victim verifies after the restore");
    t.v.exit_cleanly();
}

/// A process whose root is in a mount namespace of its own stays refused, naming it and the
/// namespace, and runs on untouched.
#[test]
fn a_root_in_another_mount_namespace_is_refused() {
    let jail = tempfile::Builder::new()
        .prefix("crest-mntns-root-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let jail_path = std::ffi::CString::new(jail.path().as_os_str().as_encoded_bytes()).unwrap();
    let v = Victim::start_with(Kind::Memcheck, move |cmd| {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs in the forked child before exec and makes only unshare and
        // chdir, async-signal-safe system calls, on a C string the closure owns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::chdir(jail_path.as_ptr()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    v.verify().expect("the victim verifies before the dump");
    let dir = v.work.join("img");
    let out = dump(v.pid, &dir, false);
    out.assert_failed();
    assert!(
        out.stderr
            .contains(&format!("process {} is in another mnt namespace", v.pid)),
        "{out}"
    );
    assert!(!dir.exists());
    wait_for("the tracer to let go", TIMEOUT, || {
        (tracer_pid(v.pid) == Some(0)).then_some(())
    });
    v.verify()
        .expect("the victim verifies after the refused dump");
}
