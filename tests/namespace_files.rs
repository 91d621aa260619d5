//! Namespace files held open (`open("/proc/self/ns/net")`, kept for a later `setns(2)`, as
//! container tools and some servers do) across dump and restore. The victim, a python3 program,
//! holds the files of its own net, uts, ipc and mnt namespaces (the net one twice, by dup) and
//! reports, for each fd, whether it names the namespace the process is in now, its close-on-exec
//! flag, and whether `setns(2)` accepts it. After a restore and after a dump with -R it reports
//! the same. A file of a namespace other than the process's own is refused by name, and the
//! process runs on.

mod common;

use common::*;

/// Opens its namespace files, then answers "state" on a UDP control port with a JSON report.
/// With the argument "foreign", it also holds the uts namespace file of a child that made a
/// uts namespace of its own (the child is gone; the fd keeps the namespace alive).
const VICTIM: &str = r#"
import ctypes, json, os, signal, sys
mode = sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
kinds = {"net": 0x40000000, "uts": 0x04000000, "ipc": 0x08000000, "mnt": 0x00020000}
fds = {k: os.open("/proc/self/ns/" + k, os.O_RDONLY) for k in kinds}  # python: O_CLOEXEC
os.set_inheritable(fds["net"], True)
fds["net-dup"] = os.dup(fds["net"])
if mode == "foreign":
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        libc.unshare(kinds["uts"])
        os.write(w, b"x")
        signal.pause()  # the parent kills this child
        os._exit(0)
    os.read(r, 1)
    fds["foreign-uts"] = os.open("/proc/%d/ns/uts" % child, os.O_RDONLY)
    os.kill(child, 9)
    os.waitpid(child, 0)

def state():
    out = {}
    for name, fd in sorted(fds.items()):
        kind = name.replace("-dup", "").replace("foreign-", "")
        here = os.stat("/proc/self/ns/" + kind).st_ino
        ok = libc.setns(fd, kinds[kind]) == 0
        out[name] = [fd, os.fstat(fd).st_ino == here, os.get_inheritable(fd), ok]
    return out

serve(lambda data: json.dumps(state()))
"#;

#[test]
fn files_of_the_process_s_own_namespaces_come_back_naming_its_namespaces() {
    setup();
    let work = tempfile::tempdir().unwrap();
    let v = ControlledVictim::start(VICTIM, work.path(), &["own".as_ref()]);
    let before = v.ask(b"state");
    let state: serde_json::Value = serde_json::from_str(&before).unwrap();
    for name in ["net", "net-dup", "uts", "ipc", "mnt"] {
        assert_eq!(state[name][1], true, "{name} names its namespace: {before}");
        assert_eq!(state[name][3], true, "setns accepts {name}: {before}");
    }
    assert_eq!(state["uts"][2], false, "uts is close-on-exec: {before}");
    assert_eq!(state["net"][2], true, "net is inheritable: {before}");

    v.cycle(work.path(), &before, |image| {
        let json = image.to_string();
        assert!(
            json.contains("\"Namespace\""),
            "no namespace file in the image: {json}"
        );
    });
}

#[test]
fn a_file_of_another_namespace_is_refused_by_fd_and_the_process_runs_on() {
    setup();
    let work = tempfile::tempdir().unwrap();
    let v = ControlledVictim::start(VICTIM, work.path(), &["foreign".as_ref()]);
    let before = v.ask(b"state");
    let state: serde_json::Value = serde_json::from_str(&before).unwrap();
    assert_eq!(
        state["foreign-uts"][1], false,
        "another namespace: {before}"
    );
    let fd = state["foreign-uts"][0].as_i64().unwrap();

    let dir = work.path().join("img");
    dump(v.pid(), &dir, false)
        .assert_failed()
        .assert_stderr_mentions(&format!("fd {fd}"))
        .assert_stderr_mentions("uts namespace");
    assert!(!dir.exists(), "a refused dump writes no image");
    assert_eq!(v.ask(b"state"), before, "the victim runs on as before");
}
