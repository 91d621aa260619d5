//! The monotonic and boot-time clocks across a dump and a restore: `--clocks carry-on` (the
//! default on x86_64) gives the restored tree a time namespace whose clocks carry on from where
//! they stood at the dump (so its timers and timeouts do not all expire at once);
//! `--host-clocks` (`--clocks host`) shows it the host's. A restored tree
//! (in its own time namespace) dumps and restores again; a tree spread over two time namespaces
//! is refused, naming each process.

mod common;

use std::ffi::OsStr;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Answers "clocks" with "MONOTONIC BOOTTIME" (seconds, as floats).
const CLOCKS_VICTIM: &str = r#"
import time
serve(lambda data: "%.6f %.6f" % (time.monotonic(), time.clock_gettime(time.CLOCK_BOOTTIME)))
"#;

/// How long the test leaves between a dump and its restore: the time a restored tree must not
/// see.
const AWAY: Duration = Duration::from_secs(2);

fn clocks(v: &ControlledVictim) -> (f64, f64) {
    let text = v.ask(b"clocks");
    let mut it = text
        .split(' ')
        .map(|w| w.parse::<f64>().expect("a clock reading"));
    (it.next().unwrap(), it.next().unwrap())
}

/// Dumps `v` into `dir`, waits [`AWAY`], restores it with `extra`; returns how far each clock
/// moved between the readings around all that, and how long that took on the test's clock.
fn away_and_back(v: &ControlledVictim, dir: &std::path::Path, extra: &[&str]) -> (f64, f64, f64) {
    let (m0, b0) = clocks(v);
    let t0 = Instant::now();
    dump(v.pid(), dir, false).assert_ok();
    reap_pid(v.pid(), TIMEOUT).expect("the dumped victim is gone");
    std::thread::sleep(AWAY);
    restore_detached(dir, extra).assert_ok();
    let (m1, b1) = clocks(v);
    (m1 - m0, b1 - b0, t0.elapsed().as_secs_f64())
}

/// The test's own CLOCK_MONOTONIC (crest's namespace), in seconds.
fn host_monotonic() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

#[test]
fn clocks_carry_on_from_the_dump_and_again_after_a_second_restore() {
    setup();
    let work = tempfile::tempdir().unwrap();
    let v = ControlledVictim::start(CLOCKS_VICTIM, work.path(), &[]);
    let own_ns = std::fs::read_link("/proc/self/ns/time").unwrap();

    // Asked for: on aarch64 the default is still the host's clocks.
    let (mono, boot, real) = away_and_back(&v, &work.path().join("img"), &["--clocks", "carry-on"]);
    let away = AWAY.as_secs_f64();
    assert!(
        mono >= 0.0 && mono < real - away + 0.5,
        "the restored tree's monotonic clock moved {mono:.3} s over {real:.3} s, {away} s of them between dump and restore"
    );
    assert!(
        boot >= 0.0 && boot < real - away + 0.5,
        "the restored tree's boot-time clock moved {boot:.3} s over {real:.3} s"
    );
    let ns = std::fs::read_link(format!("/proc/{}/ns/time", v.pid())).unwrap();
    assert_ne!(
        ns, own_ns,
        "the restored tree has a time namespace of its own"
    );

    // The restored tree lives in that namespace: it dumps, and its clocks carry on again.
    let (mono, boot, real) =
        away_and_back(&v, &work.path().join("img2"), &["--clocks", "carry-on"]);
    assert!(
        mono >= 0.0 && mono < real - away + 0.5 && boot < real - away + 0.5,
        "after the second restore the clocks moved {mono:.3} s / {boot:.3} s over {real:.3} s"
    );

    // --host-clocks: the tree reads the host's clocks, the time away (all three times) included.
    let (mono, _, _) = away_and_back(&v, &work.path().join("img3"), &["--host-clocks"]);
    assert!(
        mono >= away,
        "with --host-clocks the clock moved {mono:.3} s"
    );
    let (theirs, host) = (clocks(&v).0, host_monotonic());
    assert!(
        (theirs - host).abs() < 0.5,
        "with --host-clocks the tree's monotonic clock reads {theirs:.3} s, the host's {host:.3} s"
    );
    let ns = std::fs::read_link(format!("/proc/{}/ns/time", v.pid())).unwrap();
    assert_eq!(
        ns, own_ns,
        "--host-clocks restores into crest's time namespace"
    );
}

/// Starts two children: `unshare --time --fork sleep` (its children get another time namespace
/// than its own) and a python that moves itself into that namespace (setns); answers "state"
/// with "PID_UNSHARE PID_SLEEP PID_SETNS".
const TWO_NAMESPACES_VICTIM: &str = r#"
import ctypes, os, subprocess, time
unshare = subprocess.Popen(["unshare", "--time", "--fork", "sleep", "1000"])
def sleeper():
    try:
        kids = open("/proc/%d/task/%d/children" % (unshare.pid, unshare.pid)).read().split()
        return int(kids[0]) if kids else None
    except OSError:
        return None
while sleeper() is None:
    time.sleep(0.01)
sleep_pid = sleeper()
mover = subprocess.Popen(["python3", "-c", """
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open("/proc/%s/ns/time" % sys.argv[1], os.O_RDONLY)
if libc.setns(fd, 0x80) != 0:  # CLONE_NEWTIME
    raise OSError(ctypes.get_errno(), "setns")
open(sys.argv[2], "w").close()
time.sleep(1000)
""", str(sleep_pid), _sys.argv[1] + ".moved"])
while not os.path.exists(_sys.argv[1] + ".moved"):
    time.sleep(0.01)
serve(lambda data: "%d %d %d" % (unshare.pid, sleep_pid, mover.pid))
"#;

/// Kills the victim and its descendants when the test ends, however it ends: all first, so
/// that each is reaped by its parent or, orphaned, by the test (a child subreaper).
struct KillOnDrop(Vec<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &pid in &self.0 {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        for &pid in &self.0 {
            let _ = reap_pid(pid, TIMEOUT);
        }
    }
}

#[test]
fn a_tree_over_two_time_namespaces_is_refused_naming_each_process() {
    setup();
    let work = tempfile::tempdir().unwrap();
    let v = ControlledVictim::start(TWO_NAMESPACES_VICTIM, work.path(), &[] as &[&OsStr]);
    let before = v.ask(b"state");
    let pids: Vec<i32> = before.split(' ').map(|w| w.parse().unwrap()).collect();
    let _tree = KillOnDrop([v.pid()].iter().chain(&pids).copied().collect());
    let (unshare, mover) = (pids[0], pids[2]);
    let dir = work.path().join("img");
    dump(v.pid(), &dir, false)
        .assert_failed()
        .assert_stderr_mentions(&format!(
            "process {unshare}: its children get another time namespace than its own"
        ))
        .assert_stderr_mentions(&format!(
            "process {mover}: it is in another time namespace than the root of the tree"
        ));
    assert!(!dir.exists(), "a refused dump writes no image");
    assert_eq!(v.ask(b"state"), before, "the victim runs on as before");
    for pid in pids {
        assert!(pid_exists(pid), "{pid} runs on");
    }
}
