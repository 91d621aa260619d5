//! Pipes across dump and restore (issue #4): the pipes victim (tests/victims/pipes.c) holds
//! two pipes of its own with unread data — one blocking with a dup'ed write end, one
//! O_NONBLOCK and enlarged — and writes its log lines to stdout. Its own pipes come back with
//! their data, size and flags; a stdout pipe whose read end only the test holds is reconnected,
//! so lines the restored victim writes still reach the test; and once nobody holds that read
//! end any more, the restore refuses with the fd and the pipe inode. A pipe with signal-driven
//! I/O (O_ASYNC, F_SETOWN, F_SETSIG) still signals its owner after a restore.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;

use common::*;

#[test]
fn internal_pipes_keep_their_data_through_two_cycles() {
    let mut v = Victim::start(Kind::Pipes);
    v.verify().expect("victim verifies before any dump");
    for cycle in 1..=2 {
        let dir = v.work.join(format!("img{cycle}"));
        let before = v.last_logged();
        dump(v.pid, &dir, false).assert_ok();
        v.reap();
        let text = show_json(&dir).to_string();
        assert!(
            text.contains("Internal") && text.contains("131072"),
            "cycle {cycle}: the image does not record the victim's pipes: {text}"
        );
        assert!(
            text.contains(&format!(
                "\"id\":{},\"kind\":\"Process\",\"signal\":{}",
                v.pid,
                libc::SIGRTMIN() + 3
            )),
            "cycle {cycle}: the image does not record pipe E's owner and signal"
        );
        let shown = crest(["show".as_ref(), dir.as_os_str()]);
        shown.assert_ok();
        assert!(
            shown.stdout.contains("pipe:[") && shown.stdout.contains("buffered bytes"),
            "cycle {cycle}: crest show does not list the pipes: {shown}"
        );
        restore_detached(&dir, &[]).assert_ok();
        v.mark_restored();
        v.wait_logging_after(before);
        v.assert_running();
        // Reads back this generation's data in order, then writes the next one.
        v.verify().unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        v.verify()
            .unwrap_or_else(|e| panic!("cycle {cycle}, second verify: {e}"));
        v.assert_log_consecutive();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The `n=` counter of a victim log line.
fn counter(line: &str) -> Option<u64> {
    line.split("n=").nth(1)?.trim().parse().ok()
}

/// Waits for a stdout line whose counter is above `after`.
fn wait_line_after(lines: &mpsc::Receiver<String>, after: u64, what: &str) -> u64 {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                if let Some(n) = counter(&line).filter(|&n| n > after) {
                    return n;
                }
            }
            Err(e) => panic!("{what}: no stdout line after n={after}: {e}"),
        }
    }
}

#[test]
fn a_stdout_pipe_read_by_the_test_is_reconnected() {
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let mut v = Victim::start_with(Kind::Pipes, move |cmd| {
        cmd.stdout(Stdio::from(write_end));
    });
    // Only the test reads the pipe; the victim holds only its write end. While the victim is
    // dumped and gone the pipe has no writer and reads see end of file: the reader keeps
    // polling (and keeps the read end open) until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, lines) = mpsc::channel();
    let reader = thread::spawn({
        let stop = stop.clone();
        move || {
            let mut r = BufReader::new(std::fs::File::from(read_end));
            let mut line = String::new();
            while !stop.load(Ordering::SeqCst) {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) => thread::sleep(std::time::Duration::from_millis(10)),
                    Ok(_) => {
                        let _ = tx.send(line.clone());
                    }
                    Err(e) => panic!("reading the victim's stdout: {e}"),
                }
            }
        }
    });
    wait_line_after(&lines, 0, "before any dump");

    for cycle in 1..=2 {
        let dir = v.work.join(format!("img{cycle}"));
        dump(v.pid, &dir, false).assert_ok();
        v.reap();
        let text = show_json(&dir).to_string();
        assert!(
            text.contains("External"),
            "cycle {cycle}: stdout is not recorded as a shared pipe: {text}"
        );
        // The victim is gone: the last line it wrote carries the counter it resumes from.
        let dumped_at = v.last_logged();
        restore_detached(&dir, &[]).assert_ok();
        v.mark_restored();
        v.assert_running();
        let n = wait_line_after(&lines, dumped_at, &format!("cycle {cycle}"));
        assert!(n > dumped_at);
        v.verify().unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    // With its reader gone, the pipe cannot be reconnected: the restore says which fd and pipe.
    let dir = v.work.join("img-orphan");
    dump(v.pid, &dir, false).assert_ok();
    v.reap();
    stop.store(true, Ordering::SeqCst);
    reader.join().expect("the reader thread");
    drop(lines);
    let out = restore_detached(&dir, &[]);
    out.assert_failed()
        .assert_stderr_mentions("fd 1")
        .assert_stderr_mentions("pipe inode");
    assert_no_process(v.pid, "a restore refused for a pipe nobody holds");
}
