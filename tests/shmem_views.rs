//! A private mapping of a shared anonymous memory object (opened through
//! /proc/PID/map_files, as zdtm shmemfd-priv does): the pages the process wrote are its own,
//! the others still show the object, live; both come back so. A private view of a part of the
//! object that the process no longer maps shared is refused, naming the mapping.

mod common;

use common::*;

const VICTIM: &str = r#"
import ctypes, json, mmap, os, sys
P = 4096
shared = mmap.mmap(-1, 5 * P, flags=mmap.MAP_SHARED)
addr = ctypes.addressof(ctypes.c_char.from_buffer(shared))
for i in range(5):
    shared[i * P] = 10 + i
fd = os.open("/proc/self/map_files/%x-%x" % (addr, addr + 5 * P), os.O_RDWR)
# A private view of pages 1..4 of the object.
view = mmap.mmap(fd, 4 * P, flags=mmap.MAP_PRIVATE, offset=P)
os.close(fd)
view[P] = 99            # the view's own copy of object page 2
if sys.argv[2] == "gone":
    shared.close()      # nothing shared maps the object any more

def state(cmd):
    if cmd == b"poke" and not shared.closed:
        shared[3 * P] = 77   # object page 3: the view sees it (it never wrote there)
    return json.dumps({
        "view": [view[i * P] for i in range(4)],
        "shared": None if shared.closed else [shared[i * P] for i in range(5)],
    })

serve(state)
"#;

#[test]
fn a_private_view_of_shared_memory_keeps_its_own_pages_and_sees_the_object() {
    setup();
    let work = tempfile::tempdir().unwrap();
    let v = ControlledVictim::start(VICTIM, work.path(), &["kept".as_ref()]);
    let before = v.ask(b"state");
    let state: serde_json::Value = serde_json::from_str(&before).unwrap();
    assert_eq!(
        state["view"],
        serde_json::json!([11, 99, 13, 14]),
        "{before}"
    );
    v.cycle(work.path(), &before, |_| {});
    // Still a live view of the object where it never wrote, its own copy where it did.
    let after: serde_json::Value = serde_json::from_str(&v.ask(b"poke")).unwrap();
    assert_eq!(
        after["view"],
        serde_json::json!([11, 99, 77, 14]),
        "{after}"
    );
    assert_eq!(after["shared"][3], 77, "{after}");
    assert_eq!(
        after["shared"][2], 12,
        "the view's write stayed its own: {after}"
    );
}

#[test]
fn a_private_view_of_shared_memory_no_longer_mapped_shared_is_refused() {
    setup();
    let work = tempfile::tempdir().unwrap();
    let v = ControlledVictim::start(VICTIM, work.path(), &["gone".as_ref()]);
    let before = v.ask(b"state");
    let dir = work.path().join("img");
    dump(v.pid(), &dir, false)
        .assert_failed()
        .assert_stderr_mentions(&format!("process {}", v.pid()))
        .assert_stderr_mentions("no longer maps shared");
    assert_eq!(
        v.ask(b"state"),
        before,
        "the refused victim runs on as it was"
    );
}
