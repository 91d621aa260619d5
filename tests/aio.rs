//! AIO contexts (io_setup): tests/victims/aio.c holds two, with reads completed and not yet
//! reaped, the events of one wrapping at its ring's end. A dump records each ring (size,
//! head, tail, the unreaped events) instead of its memory; a restore creates the contexts
//! again at the same addresses (the context id is the ring's address) with the same head,
//! tail and events, so io_getevents returns the waiting reads and a new read completes at the
//! next slot. The victim checks the ring headers at every verify, and its "final" verify reaps
//! and checks the events and submits a new read.

mod common;

use common::*;

/// The victim's CTL/info values.
fn info(v: &Victim) -> std::collections::HashMap<String, u64> {
    v.ctl_file("info")
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, n)| (k.to_string(), n.parse().unwrap()))
        .collect()
}

/// The image's AIO rings of its one process, by address.
fn image_rings(dir: &std::path::Path) -> Vec<(u64, serde_json::Value)> {
    let image = show_json(dir);
    image["processes"][0]["vmas"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["backing"].get("AioRing").is_some())
        .map(|v| {
            (
                v["start"].as_u64().unwrap(),
                v["backing"]["AioRing"].clone(),
            )
        })
        .collect()
}

fn aio_maps(pid: i32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("/[aio]"))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

#[test]
fn aio_contexts_keep_their_address_head_tail_and_unreaped_events() {
    let mut v = Victim::start_with(Kind::Aio, |cmd| {
        cmd.arg("data.txt");
    });
    let want = info(&v);
    assert_eq!(want["tail_a"] - want["head_a"], 3, "{want:?}");
    assert!(want["head_b"] > want["tail_b"], "{want:?}");
    v.verify().expect("the victim verifies before any dump");
    let maps = aio_maps(v.pid);
    assert_eq!(maps.len(), 2, "{maps:?}");

    // Left running: the dump only reads the rings.
    let dir = v.work.join("img-running");
    dump(v.pid, &dir, true).assert_ok();
    v.verify()
        .expect("the victim verifies after a dump that left it running");
    let rings = image_rings(&dir);
    assert_eq!(rings.len(), 2, "{rings:?}");
    for (_, r) in &rings {
        let unreaped = (r["tail"].as_u64().unwrap() + r["nr"].as_u64().unwrap()
            - r["head"].as_u64().unwrap())
            % r["nr"].as_u64().unwrap();
        assert_eq!(
            r["events"].as_array().map(Vec::len),
            Some(unreaped as usize * 32),
            "{r}"
        );
        assert!(unreaped > 0, "{r}");
    }

    for cycle in 1..=2 {
        let dir = v.work.join(format!("img{cycle}"));
        dump(v.pid, &dir, false).assert_ok();
        v.reap();
        restore_detached(&dir, &[]).assert_ok();
        v.mark_restored();
        assert_eq!(aio_maps(v.pid), maps, "cycle {cycle}: the rings moved");
        v.verify().unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
    }
    v.verify_with("final")
        .expect("the restored victim reaps its waiting reads and a new read completes");
    v.exit_cleanly();
}

/// Makes an AIO context, then forks a child (which inherits the ring's mapping but not the
/// context) and answers "state" with the child's pid and whether io_getevents works on the
/// context in the parent.
const FORKED_RING_VICTIM: &str = r#"
import ctypes, os, signal
libc = ctypes.CDLL(None, use_errno=True)
io_setup, io_getevents = {"x86_64": (206, 208), "aarch64": (0, 4)}[os.uname().machine]
ctx = ctypes.c_ulong(0)
assert libc.syscall(io_setup, 8, ctypes.byref(ctx)) == 0, ctypes.get_errno()
child = os.fork()
if child == 0:
    libc.prctl(1, 9)  # PR_SET_PDEATHSIG: SIGKILL, so the child ends with the victim
    signal.pause()
    os._exit(0)

def state():
    live = libc.syscall(io_getevents, ctx, ctypes.c_long(0), ctypes.c_long(0), None, None) == 0
    return "child %d context %#x live %s" % (child, ctx.value, live)

serve(lambda data: state())
"#;

#[test]
fn a_ring_inherited_by_fork_is_refused_naming_both_processes_and_the_tree_runs_on() {
    setup();
    let work = tempfile::tempdir().unwrap();
    let v = ControlledVictim::start(FORKED_RING_VICTIM, work.path(), &[]);
    let before = v.ask(b"state");
    assert!(before.ends_with("live True"), "{before}");
    let child: i32 = before.split(' ').nth(1).unwrap().parse().unwrap();
    let dir = work.path().join("img");
    dump(v.pid(), &dir, false)
        .assert_failed()
        .assert_stderr_mentions(&format!("process {child}: the AIO ring at"))
        .assert_stderr_mentions(&format!("also mapped by process {}", v.pid()));
    assert!(!dir.exists(), "a refused dump writes no image");
    assert_eq!(v.ask(b"state"), before, "the victim runs on as before");
}
