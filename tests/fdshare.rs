//! Processes that share an fd table (clone with CLONE_FILES, not threads): dumped with the
//! table once and restored sharing it again, through the `crest` binary.

mod common;

use common::*;

/// kcmp(KCMP_FILES): whether two processes hold the same fd table.
fn same_table(a: i32, b: i32) -> bool {
    const KCMP_FILES: libc::c_long = 2;
    // SAFETY: kcmp only reads kernel objects of the two pids.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, a, b, KCMP_FILES, 0, 0) };
    assert!(r >= 0, "kcmp {a} {b}: {}", std::io::Error::last_os_error());
    r == 0
}

fn pids(v: &Victim) -> Vec<i32> {
    let text = wait_for("the victim's pids", TIMEOUT, || {
        std::fs::read_to_string(v.ctl.join("pids")).ok()
    });
    text.split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

#[test]
fn processes_sharing_an_fd_table_share_it_again_after_restore() {
    let mut v = Victim::start(Kind::Fdshare);
    let [a, b, c] = pids(&v)[..] else {
        panic!("three helpers")
    };
    v.verify().expect("the victim verifies before the dump");
    assert!(same_table(v.pid, a) && same_table(v.pid, c) && !same_table(v.pid, b));
    let fds = v.fd_table();

    let dir = v.work.join("img");
    dump(v.pid, &dir, false).assert_ok();
    v.reap();
    for p in [a, b, c] {
        reap_pid(p, TIMEOUT).unwrap_or_else(|e| panic!("helper {p}: {e}"));
        assert_no_process(p, "after the dump");
    }
    // The table's owner is the root; A and C (A's child) name it, B has its own.
    let json = show_json(&dir);
    let owner_of = |pid: i32| {
        json["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pid"].as_i64() == Some(pid as i64))
            .unwrap_or_else(|| panic!("no process {pid} in {json}"))["fd_table_of"]
            .as_i64()
    };
    assert_eq!(owner_of(v.pid), None);
    assert_eq!(owner_of(a), Some(v.pid as i64));
    assert_eq!(owner_of(c), Some(v.pid as i64));
    assert_eq!(owner_of(b), None);

    for round in 1..=2 {
        if round == 2 {
            // Dump the restored tree again and restore that image.
            let again = v.work.join("img2");
            dump(v.pid, &again, false).assert_ok();
            v.reap();
            for p in [a, b, c] {
                reap_pid(p, TIMEOUT).unwrap_or_else(|e| panic!("helper {p}: {e}"));
            }
            restore_detached(&again, &[]).assert_ok();
        } else {
            restore_detached(&dir, &[]).assert_ok();
        }
        v.mark_restored();
        // fds at dump are back (same files, same offsets: the victim checks those), the
        // helpers hold the root's table again, and an fd opened or closed by one is seen by
        // the other.
        v.verify()
            .unwrap_or_else(|e| panic!("round {round}: after restore: {e}"));
        assert_eq!(v.fd_table(), fds, "round {round}: the root's fds changed");
        assert!(
            same_table(v.pid, a),
            "round {round}: A has a table of its own"
        );
        assert!(
            same_table(v.pid, c),
            "round {round}: C has a table of its own"
        );
        assert!(
            !same_table(v.pid, b),
            "round {round}: B shares the root's table"
        );
        assert_eq!(fd_table(a), fds, "round {round}: A's fds");
        assert_eq!(fd_table(b), fds, "round {round}: B's fds");
    }
    v.exit_cleanly();
}

#[test]
fn a_table_shared_by_children_whose_parent_left_it_is_refused() {
    let mut v = Victim::start_with(Kind::Fdshare, |c| {
        c.env("CREST_FDSHARE_APART", "1");
    });
    let [x, y] = pids(&v)[..] else {
        panic!("two children")
    };
    assert!(same_table(x, y) && !same_table(v.pid, x));
    let out = dump(v.pid, &v.work.join("img"), false);
    out.assert_failed().assert_stderr_mentions(&format!(
        "processes {y} and {x} share an fd table (CLONE_FILES), but the parent {} of {y} \
             does not share it",
        v.pid
    ));
    // Refused before anything was changed: all three run on.
    v.assert_running();
    assert!(pid_exists(x) && pid_exists(y));
    v.verify().expect("the victim verifies after the refusal");
    v.exit_cleanly();
}
