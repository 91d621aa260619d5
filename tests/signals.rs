//! Issue #3: the state only the process itself can see survives dump and restore. The signals
//! victim (tests/victims/signals.c) installs SA_SIGINFO|SA_ONSTACK|SA_RESTART handlers with
//! sa_masks on an alternate stack, ignores SIGPIPE, ticks an ITIMER_REAL (5 ms) and a POSIX
//! timer (7 ms, SIGRTMIN+2, value 0x5eed), arms ITIMER_VIRTUAL/PROF, keeps SIGUSR2, SIGRTMIN+5
//! (twice) and SIGRTMIN+6 blocked and pending with sigqueue values, and sets prctl state; on
//! request it checks all of that from the inside, and that both timers still fire.

mod common;

use common::*;
use serde_json::Value;

const SIGHUP: i32 = 1;
const SIGQUIT: i32 = 3;
const SIGUSR1: i32 = 10;
const SIGUSR2: i32 = 12;
const SIGPIPE: i32 = 13;
const SIGALRM: i32 = 14;
const SIGTERM: i32 = 15;
const SIGCHLD: i32 = 17;
const SIGWINCH: i32 = 28;

const SA_SIGINFO: u64 = 0x4;
const SA_RESTORER: u64 = 0x0400_0000;
const SA_ONSTACK: u64 = 0x0800_0000;
const SA_RESTART: u64 = 0x1000_0000;
/// glibc sets SA_RESTORER on x86_64; arm64 has no sa_restorer (the vDSO's trampoline).
const SA_WANTED: u64 = SA_SIGINFO
    | SA_ONSTACK
    | SA_RESTART
    | if cfg!(target_arch = "x86_64") {
        SA_RESTORER
    } else {
        0
    };
/// si_code of sigqueue(3) / pthread_sigqueue(3).
const SI_QUEUE: i32 = -1;

/// What the victim queued and keeps blocked (see signals.c).
const USR2_VALUE: i32 = 0x1234;
const RT6_VALUE: i32 = 0x77;
const TIMER_VALUE: u64 = 0x5eed;

/// The victim's real-time signals, from glibc's SIGRTMIN as the victim reported it.
struct Rt {
    timer: i32,
    held5: i32,
    held6: i32,
}

fn rt(info: &SignalsInfo) -> Rt {
    Rt {
        timer: info.sigrtmin + 2,
        held5: info.sigrtmin + 5,
        held6: info.sigrtmin + 6,
    }
}

/// The sa_mask the victim gives each of its handlers (mirrors `install_handlers` in signals.c).
fn expected_sa_mask(sig: i32, r: &Rt) -> u64 {
    let pair = match sig {
        SIGUSR1 => [SIGHUP, SIGTERM],
        SIGALRM => [SIGUSR1, r.timer],
        SIGUSR2 => [SIGHUP, SIGQUIT],
        s if s == r.timer => [SIGALRM, SIGWINCH],
        s if s == r.held5 => [SIGUSR1, SIGALRM],
        s if s == r.held6 => [SIGTERM, SIGCHLD],
        s => panic!("no handler expected for signal {s}"),
    };
    sig_bit(pair[0]) | sig_bit(pair[1])
}

/// Checks from the outside what the victim holds pending: SIGUSR2 and SIGRTMIN+5 process-wide
/// (sigqueue to the pid), SIGRTMIN+6 on the thread (pthread_sigqueue), all of them blocked.
fn assert_held_pending(v: &Victim, r: &Rt, context: &str) {
    let st = signal_status(v.pid);
    let shared = sig_bit(SIGUSR2) | sig_bit(r.held5);
    let thread = sig_bit(r.held6);
    assert_eq!(
        st.blocked & (shared | thread),
        shared | thread,
        "{context}: SigBlk {:#x} lacks a held signal",
        st.blocked
    );
    assert_eq!(
        st.shared_pending & (shared | thread),
        shared,
        "{context}: ShdPnd {:#x}, want SIGUSR2 and SIGRTMIN+5 process-wide",
        st.shared_pending
    );
    assert_eq!(
        st.thread_pending & (shared | thread),
        thread,
        "{context}: SigPnd {:#x}, want SIGRTMIN+6 on the thread",
        st.thread_pending
    );
}

/// Dispositions seen from the outside: what is ignored and what is caught.
fn assert_dispositions(v: &Victim, info: &SignalsInfo, context: &str) {
    let st = signal_status(v.pid);
    let caught = info.handlers.iter().fold(0, |m, h| m | sig_bit(h.0));
    assert_eq!(
        st.caught, caught,
        "{context}: SigCgt {:#x}, want {caught:#x}",
        st.caught
    );
    assert!(
        st.ignored & sig_bit(SIGPIPE) != 0,
        "{context}: SIGPIPE is not ignored (SigIgn {:#x})",
        st.ignored
    );
}

/// The counters moved forward: the process went on handling its timers and its own SIGUSR1s.
fn assert_grew(now: SignalCounts, before: SignalCounts, context: &str) {
    assert!(
        now.counter > before.counter
            && now.alrm > before.alrm
            && now.posix_timer > before.posix_timer
            && now.usr1 > before.usr1,
        "{context}: counters did not all grow: {before:?} -> {now:?}"
    );
}

#[test]
fn signals_victim_verifies_itself_and_notices_tampering() {
    // Without crest: the victim's checks pass on a fresh process and fail when its signal state
    // is disturbed, or the crest tests below could not be trusted.
    let mut v = Victim::start(Kind::Signals);
    let info = v.signals_info();
    let r = rt(&info);
    let first = v.verify_signals(false).expect("fresh victim verifies");
    let second = v.verify_signals(false).expect("victim verifies twice");
    assert_grew(second, first, "between two verifies");
    assert_held_pending(&v, &r, "fresh victim");
    assert_dispositions(&v, &info, "fresh victim");
    let timers = proc_timers(v.pid);
    assert!(
        timers.contains(&format!("ID: {}\n", info.timer_id))
            && timers.contains(&format!("signal: {}/{:016x}\n", r.timer, TIMER_VALUE)),
        "/proc/{}/timers does not show the victim's timer: {timers:?}",
        v.pid
    );
    v.assert_log_consecutive();

    // A third SIGRTMIN+5 from outside: the pending set looks the same, the final check counts.
    // SAFETY: kill(2) on the pid of a process this test started and still owns.
    assert_eq!(unsafe { libc::kill(v.pid, r.held5) }, 0);
    v.verify_signals(false)
        .expect("an extra instance of a held signal changes nothing until it is let in");
    let err = v
        .verify_signals(true)
        .expect_err("a third SIGRTMIN+5 went unnoticed");
    assert!(err.contains("SIGRTMIN+5"), "unexpected complaint: {err}");
    v.request_exit(5);
    assert!(matches!(
        v.reap(),
        Some(nix::sys::wait::WaitStatus::Exited(_, 5))
    ));

    // A SIGUSR1 the victim did not send itself (si_code SI_USER, no value) is noticed too.
    let w = Victim::start(Kind::Signals);
    w.verify_signals(false)
        .expect("second fresh victim verifies");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(w.pid),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .unwrap();
    let err = w
        .verify_signals(false)
        .expect_err("a foreign SIGUSR1 went unnoticed");
    assert!(err.contains("SIGUSR1"), "unexpected complaint: {err}");
}

#[test]
fn two_dump_restore_cycles_keep_handlers_altstack_timers_and_pending_signals() {
    let mut v = Victim::start(Kind::Signals);
    let info = v.signals_info();
    let r = rt(&info);
    let mut last = v
        .verify_signals(false)
        .expect("victim verifies before any dump");
    let timers = proc_timers(v.pid);
    let fds_before = v.fd_table();

    for cycle in 1..=2 {
        let ctx = format!("cycle {cycle}");
        let dir = v.work.join(format!("img{cycle}"));
        let before = v.last_logged();
        dump(v.pid, &dir, false).assert_ok();
        v.reap();

        restore_detached(&dir, &[]).assert_ok();
        v.mark_restored();
        v.wait_logging_after(before);
        v.assert_running();
        let now = v
            .verify_signals(false)
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        assert_grew(now, last, &ctx);
        assert_eq!(
            proc_timers(v.pid),
            timers,
            "{ctx}: /proc/PID/timers changed"
        );
        assert_held_pending(&v, &r, &ctx);
        assert_dispositions(&v, &info, &ctx);
        assert_eq!(v.fd_table(), fds_before, "{ctx}: fd table changed");
        v.assert_log_consecutive();
        last = now;
    }

    // Let the held signals in: each arrives once, with the value and sender it was queued with.
    let fin = v
        .verify_signals(true)
        .expect("final check after two cycles");
    assert_grew(fin, last, "final check");
    let st = signal_status(v.pid);
    let held = sig_bit(SIGUSR2) | sig_bit(r.held5) | sig_bit(r.held6);
    assert_eq!(
        (st.blocked | st.shared_pending | st.thread_pending) & held,
        0,
        "held signals still blocked or pending after the final check: {st:?}"
    );
    v.verify_signals(false)
        .expect("the delivered signals stay delivered exactly once");
    v.assert_log_consecutive();
}

#[test]
fn leave_running_with_the_parasite_then_restore_the_image() {
    let mut v = Victim::start(Kind::Signals);
    let info = v.signals_info();
    let r = rt(&info);
    let before = v
        .verify_signals(false)
        .expect("victim verifies before the dump");
    let timers = proc_timers(v.pid);
    let fds_before = v.fd_table();
    let dir = v.work.join("img");

    let at_dump = v.last_logged();
    dump(v.pid, &dir, true).assert_ok();
    let at_return = v.last_logged();
    v.assert_running();
    wait_for("the tracer to let go", TIMEOUT, || {
        (tracer_pid(v.pid) == Some(0)).then_some(())
    });
    let after = v.wait_logging_after(at_return + 2);
    let now = v
        .verify_signals(false)
        .expect("victim verifies after a -R dump");
    assert_grew(now, before, "after -R");
    assert_eq!(proc_timers(v.pid), timers, "-R changed /proc/PID/timers");
    assert_held_pending(&v, &r, "after -R");
    assert_dispositions(&v, &info, "after -R");
    assert_eq!(v.fd_table(), fds_before, "-R changed the fd table");
    v.assert_log_consecutive();

    // `crest show` tells about the handlers and timers (loosely: the wording is show's own).
    let out = crest(["show".as_ref(), dir.as_os_str()]);
    out.assert_ok();
    let text = out.stdout.to_lowercase();
    let alrm_handler = format!("{:x}", info.handler(SIGALRM));
    assert!(
        (text.contains("sigalrm") || text.contains(&alrm_handler)) && text.contains("timer"),
        "crest show mentions neither SIGALRM's handler nor the timers: {out}"
    );
    let json = show_json(&dir);
    let task = &json["processes"][0]["task"];
    assert_eq!(
        task["sigactions"][(SIGALRM - 1) as usize]["handler"].as_u64(),
        Some(info.handler(SIGALRM)),
        "show --json: SIGALRM's handler; task = {task}"
    );
    assert_eq!(
        task["posix_timers"].as_array().map(Vec::len),
        Some(1),
        "show --json: POSIX timers; task = {task}"
    );

    // Once the original is gone, the image restores with all of it, pending signals included.
    v.kill();
    let lines = v.log_entries();
    assert!(lines.last().unwrap().1 >= after);
    restore_detached(&dir, &[]).assert_ok();
    v.mark_restored();
    v.wait_log_grows(lines.len());
    let resumed = &v.log_entries()[lines.len()];
    assert!(
        resumed.1 > at_dump && resumed.1 <= after,
        "the restored process logged n={} first; the image was taken between n={at_dump} and n={after}",
        resumed.1
    );
    v.assert_running();
    assert_eq!(
        proc_timers(v.pid),
        timers,
        "/proc/PID/timers after restoring the -R image"
    );
    assert_held_pending(&v, &r, "restored -R image");
    let fin = v
        .verify_signals(true)
        .expect("final check after restoring a -R image");
    assert_grew(fin, before, "restored -R image");
    assert_eq!(v.fd_table(), fds_before, "fd table after restore");
}

/// A raw 128-byte siginfo from the image: (si_signo, si_code, si_pid, si_value as int).
fn siginfo_fields(raw: &Value) -> (i32, i32, i32, i32) {
    let bytes: Vec<u8> = raw
        .as_array()
        .unwrap_or_else(|| panic!("siginfo is not an array: {raw}"))
        .iter()
        .map(|b| b.as_u64().expect("siginfo byte") as u8)
        .collect();
    assert_eq!(bytes.len(), 128, "siginfo of {} bytes", bytes.len());
    let i32_at = |off: usize| i32::from_ne_bytes(bytes[off..off + 4].try_into().unwrap());
    // struct siginfo: si_signo, si_errno, si_code, padding; then the union, whose _rt member
    // is si_pid, si_uid, si_value.
    (i32_at(0), i32_at(8), i32_at(16), i32_at(24))
}

fn u64_at(v: &Value, what: &str) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{what} is not an unsigned number: {v}"))
}

#[test]
fn the_image_records_handlers_altstack_timers_pending_signals_and_prctl_state() {
    let mut v = Victim::start(Kind::Signals);
    let info = v.signals_info();
    let r = rt(&info);
    v.verify_signals(false)
        .expect("victim verifies before the dump");
    let dir = v.work.join("img");
    dump(v.pid, &dir, false).assert_ok();
    v.reap();

    let json = show_json(&dir);
    let p = &json["processes"][0];
    let task = &p["task"];
    let thread = &p["threads"][0];

    // Every disposition: the handlers with their flags, restorer and mask; SIG_IGN; SIG_DFL.
    let sa = task["sigactions"]
        .as_array()
        .unwrap_or_else(|| panic!("no sigactions in the image: {task}"));
    assert_eq!(sa.len(), 64, "sigactions for signals 1..=64");
    for &(sig, handler) in &info.handlers {
        let a = &sa[(sig - 1) as usize];
        let what = format!("signal {sig}");
        assert_eq!(u64_at(&a["handler"], &what), handler, "{what}: handler");
        let flags = u64_at(&a["flags"], &what);
        assert_eq!(
            flags & SA_WANTED,
            SA_WANTED,
            "{what}: flags {flags:#x} lack SA_SIGINFO|SA_ONSTACK|SA_RESTART|SA_RESTORER"
        );
        assert_eq!(
            u64_at(&a["restorer"], &what),
            info.restorer,
            "{what}: restorer"
        );
        assert_eq!(
            u64_at(&a["mask"], &what),
            expected_sa_mask(sig, &r),
            "{what}: sa_mask"
        );
    }
    assert_eq!(
        u64_at(&sa[(SIGPIPE - 1) as usize]["handler"], "SIGPIPE"),
        1,
        "SIGPIPE is SIG_IGN"
    );
    assert_eq!(
        u64_at(&sa[(SIGTERM - 1) as usize]["handler"], "SIGTERM"),
        0,
        "SIGTERM is SIG_DFL"
    );

    // Pending signals with their siginfo, wherever the image keeps them, in queue order.
    let mut pending: Vec<(i32, i32, i32, i32)> = Vec::new();
    for list in [&task["shared_pending"], &thread["state"]["pending"]] {
        let list = list
            .as_array()
            .unwrap_or_else(|| panic!("pending list missing: {p}"));
        pending.extend(list.iter().map(siginfo_fields));
    }

    // Interval timers: REAL at 5 ms; VIRTUAL and PROF at 500 s, set to 1000 s (the kernel may
    // add a tick to a CPU timer's value).
    let it = task["itimers"]
        .as_array()
        .unwrap_or_else(|| panic!("no itimers: {task}"));
    assert_eq!(it.len(), 3, "ITIMER_REAL, VIRTUAL, PROF: {task}");
    assert_eq!(u64_at(&it[0]["interval_us"], "ITIMER_REAL"), 5000);
    // The value may be 0: the kernel re-arms ITIMER_REAL only when its SIGALRM is dequeued
    // (it_real_fn returns HRTIMER_NORESTART), so a process stopped after an expiry reads 0
    // remaining until then. A restore must still arm such a timer; that it keeps firing is
    // checked end to end by the cycle tests.
    let real_value = u64_at(&it[0]["value_us"], "ITIMER_REAL");
    assert!(real_value <= 5000, "ITIMER_REAL value {real_value} us");
    for (i, name) in [(1, "ITIMER_VIRTUAL"), (2, "ITIMER_PROF")] {
        assert_eq!(u64_at(&it[i]["interval_us"], name), 500_000_000, "{name}");
        let value = u64_at(&it[i]["value_us"], name);
        assert!(
            (1..=1_000_100_000).contains(&value),
            "{name} value {value} us"
        );
    }

    // The POSIX timer, by the id the program holds.
    let pt = task["posix_timers"]
        .as_array()
        .unwrap_or_else(|| panic!("no posix_timers: {task}"));
    assert_eq!(pt.len(), 1, "one POSIX timer: {task}");
    let t = &pt[0];
    assert_eq!(
        t["id"].as_i64(),
        Some(info.timer_id as i64),
        "timer id: {t}"
    );
    assert_eq!(
        t["clock"].as_i64(),
        Some(libc::CLOCK_MONOTONIC as i64),
        "clock: {t}"
    );
    assert_eq!(
        t["notify"].as_i64(),
        Some(libc::SIGEV_SIGNAL as i64),
        "notify: {t}"
    );
    assert_eq!(t["signo"].as_i64(), Some(r.timer as i64), "signo: {t}");
    assert_eq!(u64_at(&t["sigev_value"], "sigev_value"), TIMER_VALUE);
    assert_eq!(u64_at(&t["interval_ns"], "interval_ns"), 7_000_000);
    let value = u64_at(&t["value_ns"], "value_ns");
    assert!(
        (1..=7_000_000).contains(&value),
        "POSIX timer value {value} ns"
    );

    // The thread: altstack, blocked mask, clear-child-tid, robust list.
    let state = &thread["state"];
    let alt = &state["altstack"];
    assert_eq!(
        (
            alt["sp"].as_u64(),
            alt["size"].as_u64(),
            alt["flags"].as_i64()
        ),
        (Some(info.altstack_sp), Some(info.altstack_size), Some(0)),
        "altstack: {state}"
    );
    let held = sig_bit(SIGUSR2) | sig_bit(r.held5) | sig_bit(r.held6);
    let sigmask = u64_at(&thread["sigmask"], "sigmask");
    assert_eq!(sigmask & held, held, "sigmask {sigmask:#x}");
    assert_eq!(
        u64_at(&state["robust_list"], "robust_list"),
        info.robust_list
    );
    assert_eq!(
        u64_at(&state["robust_list_len"], "robust_list_len"),
        info.robust_len
    );
    if let Some(tid_address) = info.tid_address {
        assert_eq!(
            u64_at(&state["clear_child_tid"], "clear_child_tid"),
            tid_address
        );
    }

    // The held signals, each with its sigqueue value and sender.
    let of = |sig: i32| -> Vec<(i32, i32, i32, i32)> {
        pending.iter().copied().filter(|s| s.0 == sig).collect()
    };
    assert_eq!(
        of(SIGUSR2),
        vec![(SIGUSR2, SI_QUEUE, v.pid, USR2_VALUE)],
        "pending SIGUSR2 (signo, code, pid, value); all pending: {pending:?}"
    );
    assert_eq!(
        of(r.held5),
        vec![(r.held5, SI_QUEUE, v.pid, 1), (r.held5, SI_QUEUE, v.pid, 2)],
        "pending SIGRTMIN+5; all pending: {pending:?}"
    );
    assert_eq!(
        of(r.held6),
        vec![(r.held6, SI_QUEUE, v.pid, RT6_VALUE)],
        "pending SIGRTMIN+6; all pending: {pending:?}"
    );

    // prctl state.
    assert_eq!(task["child_subreaper"].as_bool(), Some(true), "{task}");
    assert_eq!(task["no_new_privs"].as_bool(), Some(true), "{task}");
    assert_eq!(task["dumpable"].as_u64(), Some(1), "{task}");
    assert_eq!(task["pdeath_signal"].as_u64(), Some(0), "{task}");
}

/// A POSIX timer that signals a thread other than the leader (SIGEV_THREAD_ID) is created
/// again, under its id, once that thread exists, and keeps signalling it alone.
#[test]
fn a_timer_signalling_a_second_thread_keeps_signalling_it() {
    let mut v = Victim::start(Kind::ThreadTimer);
    v.verify().expect("the victim verifies before any dump");
    for cycle in 1..=2 {
        let dir = v.work.join(format!("thtimer{cycle}"));
        v.dump_restore_verify(&dir, &format!("cycle {cycle}"));
    }
}
