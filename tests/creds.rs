//! Credentials: a process running as another user, with supplementary groups, capability sets
//! (inheritable, permitted, effective, bounding, ambient), securebits and no_new_privs of its
//! own (tests/victims/creds.c), is dumped and restored by crest running as root, and comes
//! back with exactly those credentials (compared from outside, in /proc/PID/status, and from
//! inside, by the victim, which also checks what they allow and forbid).

mod common;

use common::*;

/// The credential lines of /proc/PID/status.
fn cred_lines(pid: i32) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    text.lines()
        .filter(|l| {
            [
                "Uid:",
                "Gid:",
                "Groups:",
                "CapInh:",
                "CapPrm:",
                "CapEff:",
                "CapBnd:",
                "CapAmb:",
                "NoNewPrivs:",
            ]
            .iter()
            .any(|k| l.starts_with(k))
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn another_users_credentials_survive_dump_and_restore() {
    let mut v = Victim::start(Kind::Creds);
    v.verify().expect("fresh victim verifies");
    let before = cred_lines(v.pid);
    assert_eq!(before.len(), 9, "{before:?}");
    assert!(
        before[0].contains("65534\t65533\t65532\t65533"),
        "{before:?}"
    );
    assert!(
        before.iter().any(|l| l == "CapAmb:\t0000000000000400"),
        "{before:?}"
    );

    for cycle in 1..=2 {
        let dir = v.work.join(format!("img{cycle}"));
        dump(v.pid, &dir, false).assert_ok();
        v.reap();
        let image = show_json(&dir);
        let creds = &image["processes"][0]["creds"];
        assert_eq!(
            creds["uid"],
            serde_json::json!([65534, 65533, 65532, 65533])
        );
        assert_eq!(creds["groups"], serde_json::json!([100, 4242, 65534]));
        assert_eq!(creds["cap_ambient"], 0x400);
        // SECBIT_KEEP_CAPS, as PR_GET_SECUREBITS reported it inside the process.
        assert_eq!(creds["securebits"], 0x10, "creds in the image: {creds}");

        let at = v.last_logged();
        restore_detached(&dir, &[]).assert_ok();
        v.mark_restored();
        v.wait_logging_after(at);
        v.assert_running();
        assert_eq!(cred_lines(v.pid), before, "cycle {cycle}: /proc/PID/status");
        v.verify()
            .unwrap_or_else(|e| panic!("cycle {cycle}: the restored victim: {e}"));
        v.assert_log_consecutive();
    }
}
