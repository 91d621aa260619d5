//! Event fds (eventfd, signalfd, timerfd) survive dump and restore with their state: the
//! counter and semaphore mode, the signal mask (and the signal waiting for it), the timers'
//! clocks, periods and time left.

mod common;

use common::*;

#[test]
fn event_fds_keep_their_state_through_three_cycles() {
    let mut v = Victim::start(Kind::Events);
    v.verify().expect("the victim verifies before any dump");
    for cycle in 1..=3 {
        let dir = v.work.join(format!("img{cycle}"));
        let before = v.last_logged();
        dump(v.pid, &dir, false).assert_ok();
        v.reap();
        let shown = crest(["show".as_ref(), dir.as_os_str()]);
        shown.assert_ok();
        assert!(
            shown.stdout.contains("eventfd, count 3, semaphore")
                && shown.stdout.contains("signalfd for")
                && shown.stdout.contains("timerfd on clock 1"),
            "cycle {cycle}: {shown}"
        );
        restore_detached(&dir, &[]).assert_ok();
        v.mark_restored();
        v.wait_logging_after(before);
        v.verify().unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
    }
}
