//! Private memory a process shares copy-on-write with its parent stays shared after a restore
//! (zdtm cow00/cow01): the restored child holds the very page frames of its parent for every
//! page neither changed, and its own for the pages it wrote, with every byte as it was.

mod common;

use common::*;

/// K and G, from the victim's CTL/info.
fn members(v: &Victim) -> Vec<(String, i32)> {
    let text = wait_for("the cow victim's info file", TIMEOUT, || {
        std::fs::read_to_string(v.ctl.join("info")).ok()
    });
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(name, pid)| (name.to_string(), pid.trim().parse().expect("a pid")))
        .collect()
}

#[test]
fn memory_shared_copy_on_write_stays_shared_after_restore() {
    let mut v = Victim::start(Kind::Cow);
    let members = members(&v);
    v.verify()
        .expect("the victim shares its pages before any dump");
    for cycle in 1..=2 {
        let dir = v.work.join(format!("img{cycle}"));
        dump(v.pid, &dir, false).assert_ok();
        v.reap();
        for (name, pid) in &members {
            reap_pid(*pid, TIMEOUT).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_no_process(*pid, &format!("after the dump, {name}"));
        }
        restore_detached(&dir, &[]).assert_ok();
        v.mark_restored();
        v.verify().unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
    }
}

#[test]
fn memory_shared_copy_on_write_survives_a_dump_that_leaves_it_running() {
    let v = Victim::start(Kind::Cow);
    let dir = v.work.join("img");
    dump(v.pid, &dir, true).assert_ok();
    v.verify()
        .expect("the pages are still shared after a dump with -R");
}
