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
