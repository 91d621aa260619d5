//! Terminals (`--shell-job`): a process on a terminal is refused without `-j` and left
//! running; with `-j` it is dumped by a crest running on that terminal and restored onto the
//! terminal the restoring crest runs on, as its fds' terminal, its controlling terminal and in
//! the foreground when it was, writing there afterwards; a pseudo-terminal pair inside the
//! tree is refused. Every terminal here is a pty the test makes itself, so the tests need none
//! of their own (CI has none).

mod common;

use std::fs;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{open, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::stat::Mode;

use common::*;

/// A pty pair made by the test, both ends close-on-exec from the start (tests run in parallel
/// threads: another test's child must not inherit them).
struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
    path: PathBuf,
    /// Output read from the master so far.
    seen: String,
}

impl Pty {
    fn open() -> Pty {
        let master =
            nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).unwrap();
        nix::pty::grantpt(&master).unwrap();
        nix::pty::unlockpt(&master).unwrap();
        let path = PathBuf::from(nix::pty::ptsname_r(&master).unwrap());
        let slave = open(
            &path,
            OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        // SAFETY: into_raw_fd hands over the descriptor posix_openpt opened.
        let master = unsafe { OwnedFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(master)) };
        Pty {
            master,
            slave,
            path,
            seen: String::new(),
        }
    }

    fn rdev(&self) -> u64 {
        fs::metadata(&self.path).unwrap().rdev()
    }

    /// The slave, for a child's stdin, stdout or stderr.
    fn stdio(&self) -> Stdio {
        Stdio::from(self.slave.try_clone().unwrap())
    }

    /// Reads the master until `done` holds for what was read since `from` (an offset in
    /// `seen`), failing the test after [`TIMEOUT`].
    fn read_until(&mut self, from: usize, what: &str, done: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        while !done(&self.seen[from..]) {
            assert!(
                start.elapsed() < TIMEOUT,
                "timed out waiting for {what} on {}; read: {:?}",
                self.path.display(),
                &self.seen[from..]
            );
            let mut fds = [PollFd::new(self.master.as_fd(), PollFlags::POLLIN)];
            if poll(&mut fds, PollTimeout::from(100u16)).unwrap() == 0 {
                continue;
            }
            let mut buf = [0u8; 4096];
            match nix::unistd::read(&self.master, &mut buf) {
                Ok(n) => self.seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                // EIO: no slave open at the moment (between a dump and a restore).
                Err(nix::errno::Errno::EIO) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => panic!("reading {}: {e}", self.path.display()),
            }
        }
        self.seen[from..].to_string()
    }

    /// Waits for `n` more tick lines and returns the tick numbers read since `from`.
    fn ticks_after(&mut self, from: usize, n: usize) -> Vec<u64> {
        let text = self.read_until(from, &format!("{n} tick lines"), |s| ticks(s).len() >= n);
        ticks(&text)
    }
}

/// The numbers of the complete `tick N` lines of `text`.
fn ticks(text: &str) -> Vec<u64> {
    text.split('\n')
        .filter(|l| l.ends_with('\r') || l.ends_with("\r\n"))
        .filter_map(|l| l.trim().strip_prefix("tick ")?.parse().ok())
        .collect()
}

/// A python3 program writing `tick N` to its stdout (the terminal) every 20 ms; a write that
/// fails is recorded in the file named by its first argument.
const TICKER: &str = r#"
import os, sys, time
errors = sys.argv[1]
i = 0
while True:
    try:
        os.write(1, b"tick %d\n" % i)
    except OSError as e:
        with open(errors, "a") as f:
            f.write("tick %d: %s\n" % (i, e))
    i += 1
    time.sleep(0.02)
"#;

/// A stand-in for a job-control shell on its terminal: runs the ticker as a job in a process
/// group of its own, in the foreground (argv[1] "fg") or in the background ("bg").
const SHELL: &str = r#"
import os, sys, signal
signal.signal(signal.SIGTTOU, signal.SIG_IGN)
pid = os.fork()
if pid == 0:
    os.setpgid(0, 0)
    if sys.argv[1] == "fg":
        os.tcsetpgrp(0, os.getpid())
    os.execvp("python3", ["python3"] + sys.argv[2:])
os.waitpid(pid, 0)
"#;

/// A program that makes a pty pair, runs the ticker on the slave as its controlling terminal
/// in a child, and reads the master: what `script` or an expect-like program does.
const PAIR: &str = r#"
import os, sys, fcntl, termios
m, s = os.openpty()
pid = os.fork()
if pid == 0:
    os.setsid()
    fcntl.ioctl(s, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(s, fd)
    os.execvp("python3", ["python3"] + sys.argv[1:])
os.close(s)
while True:
    os.read(m, 4096)
"#;

struct Work {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Work {
    fn new() -> Work {
        setup();
        let tmp = tempfile::Builder::new()
            .prefix("crest-tty-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let dir = tmp.path().to_path_buf();
        for (name, text) in [
            ("ticker.py", TICKER),
            ("shell.py", SHELL),
            ("pair.py", PAIR),
        ] {
            fs::write(dir.join(name), text).unwrap();
        }
        Work { _tmp: tmp, dir }
    }

    fn errors(&self) -> PathBuf {
        self.dir.join("write-errors")
    }

    /// `python3 SCRIPT ARGS...` on `pty` (stdin, stdout, stderr), in a new session; with
    /// `ctty`, the pty becomes the session's controlling terminal (`setsid -c`).
    fn start(&self, pty: Option<&Pty>, ctty: bool, script: &str, args: &[&str]) -> i32 {
        let mut cmd = Command::new("python3");
        cmd.arg(self.dir.join(script))
            .args(args)
            .current_dir(&self.dir);
        match pty {
            Some(p) => cmd.stdin(p.stdio()).stdout(p.stdio()).stderr(p.stdio()),
            None => cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        };
        session_on_stdin(&mut cmd, ctty);
        let child = cmd.spawn().expect("start python3");
        let pid = child.id() as i32;
        // Reaped by pid (reap_pid), like the restored processes that are not std children.
        drop(child);
        pid
    }

    fn ticker_args(&self) -> Vec<String> {
        vec![
            self.dir.join("ticker.py").display().to_string(),
            self.errors().display().to_string(),
        ]
    }
}

/// In the child before exec: a new session, with its stdin terminal as controlling terminal
/// when `ctty`; nothing inherited above stderr.
fn session_on_stdin(cmd: &mut Command, ctty: bool) {
    // SAFETY: setsid, ioctl and close_range are async-signal-safe system calls that touch no
    // locks or memory.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid()?;
            if ctty && libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as i32) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// `/proc/PID/stat` fields 5-8: group, session, controlling terminal, its foreground group.
#[derive(Debug, PartialEq, Eq)]
struct TtyIds {
    pgid: i32,
    sid: i32,
    tty_nr: u64,
    tpgid: i32,
}

fn tty_ids(pid: i32) -> TtyIds {
    try_tty_ids(pid).unwrap_or_else(|| panic!("process {pid} is gone"))
}

fn try_tty_ids(pid: i32) -> Option<TtyIds> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let n = |i: usize| f[i].parse::<i64>().unwrap();
    let tty = n(4) as u64;
    Some(TtyIds {
        pgid: n(2) as i32,
        sid: n(3) as i32,
        tty_nr: libc::makedev(libc::major(tty), libc::minor(tty)),
        tpgid: n(5) as i32,
    })
}

fn kill_and_reap(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    reap_pid(pid, TIMEOUT).unwrap();
}

/// `crest ARGS...` with its standard input (and output) on `pty`'s slave; `session`: in a new
/// session whose controlling terminal is that pty (a shell's terminal).
fn crest_on(pty: &Pty, session: bool, args: &[&str]) -> CrestProcess {
    let stdin = pty.stdio();
    spawn_crest_with(args, move |cmd| {
        cmd.stdin(stdin);
        if session {
            session_on_stdin(cmd, true);
        }
    })
}

fn image_arg(dir: &Path) -> String {
    dir.display().to_string()
}

/// What fd `fd` of `pid` is open on.
fn fd_target(pid: i32, fd: i32) -> PathBuf {
    fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap()
}

#[test]
fn a_process_on_its_terminal_is_refused_without_shell_job_and_runs_on() {
    let work = Work::new();
    let mut a = Pty::open();
    let errors = work.errors().display().to_string();
    let pid = work.start(Some(&a), true, "ticker.py", &[&errors]);
    a.ticks_after(0, 2);
    let img = work.dir.join("img");
    let pid_s = pid.to_string();

    // Without -j: every terminal fd and the controlling terminal, naming the flag.
    let out = spawn_crest(["dump", "-t", &pid_s, "-D", &image_arg(&img)]).wait(CREST_TIMEOUT);
    out.assert_failed()
        .assert_stderr_mentions(&format!(
            "process {pid}: fd 0, fd 1, fd 2 and its controlling terminal are on the terminal {}",
            a.path.display()
        ))
        .assert_stderr_mentions("--shell-job (-j)");
    // With -j, but crest's standard input is not that terminal.
    let out = spawn_crest(["dump", "-j", "-t", &pid_s, "-D", &image_arg(&img)]).wait(CREST_TIMEOUT);
    out.assert_failed()
        .assert_stderr_mentions("not the terminal crest runs on")
        .assert_stderr_mentions("standard input is not a terminal");
    // With -j on another terminal.
    let other = Pty::open();
    let out = crest_on(
        &other,
        false,
        &["dump", "-j", "-t", &pid_s, "-D", &image_arg(&img)],
    )
    .wait(CREST_TIMEOUT);
    out.assert_failed()
        .assert_stderr_mentions(&format!("crest runs on {}", other.path.display()));
    assert!(!img.exists(), "a refused dump left an image");

    // Untouched: not traced, still writing to its terminal, without errors.
    wait_for("the tracer to let go", TIMEOUT, || {
        (tracer_pid(pid) == Some(0)).then_some(())
    });
    let from = a.seen.len();
    a.ticks_after(from, 3);
    assert!(!work.errors().exists());
    kill_and_reap(pid);
}

#[test]
fn a_session_on_its_terminal_is_restored_onto_the_restoring_crests_terminal() {
    let work = Work::new();
    let mut a = Pty::open();
    let errors = work.errors().display().to_string();
    let pid = work.start(Some(&a), true, "ticker.py", &[&errors]);
    let before = tty_ids(pid);
    assert_eq!(
        (before.sid, before.tty_nr, before.tpgid),
        (pid, a.rdev(), pid),
        "the victim leads its session on its terminal, in the foreground"
    );
    a.ticks_after(0, 2);
    let img = work.dir.join("img");
    let pid_s = pid.to_string();
    crest_on(
        &a,
        false,
        &["dump", "-j", "-t", &pid_s, "-D", &image_arg(&img)],
    )
    .wait(CREST_TIMEOUT)
    .assert_ok();
    reap_pid(pid, TIMEOUT).unwrap();
    let last_before = *ticks(&a.seen).last().unwrap();
    // The old terminal goes away (its window closed): nothing of it may be reused.
    drop(a);
    let show = show_json(&img);
    assert_eq!(
        show["inventory"]["shell_job"]["ctty_session"], pid,
        "{:#}",
        show["inventory"]
    );

    let mut b = Pty::open();
    // Without -j the image is refused, naming the flag; nothing is restored.
    let out = crest_on(&b, false, &["restore", "-d", "-D", &image_arg(&img)]).wait(CREST_TIMEOUT);
    out.assert_failed()
        .assert_stderr_mentions("--shell-job (-j)");
    assert!(!pid_exists(pid));

    // Not from a shell whose controlling terminal it is: crest does not take it away.
    let out =
        crest_on(&b, true, &["restore", "-j", "-d", "-D", &image_arg(&img)]).wait(CREST_TIMEOUT);
    out.assert_failed()
        .assert_stderr_mentions(&format!("process {pid} led its own session"))
        .assert_stderr_mentions("controlling terminal of crest's session");
    assert!(!pid_exists(pid));

    crest_on(&b, false, &["restore", "-j", "-d", "-D", &image_arg(&img)])
        .wait(CREST_TIMEOUT)
        .assert_ok();
    // Its own session again, with the new terminal as controlling terminal, in the foreground.
    let after = tty_ids(pid);
    assert_eq!(
        after,
        TtyIds {
            pgid: pid,
            sid: pid,
            tty_nr: b.rdev(),
            tpgid: pid
        }
    );
    for fd in 0..3 {
        assert_eq!(fd_target(pid, fd), b.path, "fd {fd}");
    }
    // It goes on counting where it was, on the new terminal, and no write fails.
    let got = b.ticks_after(0, 3);
    assert!(got[0] > last_before, "{got:?} after {last_before}");
    assert!(
        !work.errors().exists(),
        "{}",
        fs::read_to_string(work.errors()).unwrap_or_default()
    );
    kill_and_reap(pid);
}

/// Starts the shell stand-in on `a` with the ticker as a job in the foreground or background;
/// returns (shell pid, job pid).
fn start_job(work: &Work, a: &mut Pty, fg: bool) -> (i32, i32) {
    let args = work.ticker_args();
    let shell = work.start(
        Some(a),
        true,
        "shell.py",
        &[if fg { "fg" } else { "bg" }, &args[0], &args[1]],
    );
    let job = wait_for("the shell's job", TIMEOUT, || {
        let kids = fs::read_to_string(format!("/proc/{shell}/task/{shell}/children")).ok()?;
        let job: i32 = kids.split_whitespace().next()?.parse().ok()?;
        // Exec'd and in its own group (tcsetpgrp done for a foreground job).
        let ids = try_tty_ids(job)?;
        (ids.pgid == job && (!fg || ids.tpgid == job)).then_some(job)
    });
    a.ticks_after(0, 2);
    (shell, job)
}

#[test]
fn a_shell_job_comes_back_in_the_foreground_of_the_restoring_crests_terminal() {
    let work = Work::new();
    let mut a = Pty::open();
    let (shell, job) = start_job(&work, &mut a, true);
    let img = work.dir.join("img");
    let job_s = job.to_string();
    crest_on(
        &a,
        false,
        &["dump", "-j", "-t", &job_s, "-D", &image_arg(&img)],
    )
    .wait(CREST_TIMEOUT)
    .assert_ok();
    // The shell reaps its killed job and ends.
    reap_pid(shell, TIMEOUT).unwrap();
    let last_before = *ticks(&a.seen).last().unwrap();
    drop(a);
    let inv = &show_json(&img)["inventory"];
    assert_eq!(inv["shell_job"]["ctty_session"], shell, "{inv:#}");
    assert_eq!(inv["shell_job"]["foreground"], job, "{inv:#}");

    // crest restore runs as the shell of terminal B would run it: in B's session, B its
    // controlling terminal. It stays the job's parent (no -d), as a shell's command would.
    let mut b = Pty::open();
    // On terminal B without being in its session: the job cannot get B as its controlling
    // terminal.
    let out = crest_on(&b, false, &["restore", "-j", "-D", &image_arg(&img)]).wait(CREST_TIMEOUT);
    out.assert_failed()
        .assert_stderr_mentions("but crest's controlling terminal is");
    assert!(!pid_exists(job));
    let mut crest = crest_on(&b, true, &["restore", "-j", "-D", &image_arg(&img)]);
    let crest_pid = crest.pid();
    let got = b.ticks_after(0, 3);
    let after = tty_ids(job);
    assert_eq!(
        after,
        TtyIds {
            pgid: job,
            sid: crest_pid,
            tty_nr: b.rdev(),
            tpgid: job
        },
        "in crest's session, its own group in the foreground of crest's terminal"
    );
    assert!(got[0] > last_before, "{got:?} after {last_before}");
    assert!(!work.errors().exists());
    assert!(crest.running());
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(job),
        nix::sys::signal::Signal::SIGKILL,
    );
    crest.wait(CREST_TIMEOUT);
    assert!(!pid_exists(job));
}

#[test]
fn a_background_shell_job_stays_in_the_background() {
    let work = Work::new();
    let mut a = Pty::open();
    let (shell, job) = start_job(&work, &mut a, false);
    assert_eq!(tty_ids(job).tpgid, shell, "the shell keeps the foreground");
    let img = work.dir.join("img");
    let job_s = job.to_string();
    crest_on(
        &a,
        false,
        &["dump", "-j", "-t", &job_s, "-D", &image_arg(&img)],
    )
    .wait(CREST_TIMEOUT)
    .assert_ok();
    reap_pid(shell, TIMEOUT).unwrap();
    let inv = &show_json(&img)["inventory"];
    assert!(inv["shell_job"]["foreground"].is_null(), "{inv:#}");

    let mut b = Pty::open();
    let mut crest = crest_on(&b, true, &["restore", "-j", "-D", &image_arg(&img)]);
    let crest_pid = crest.pid();
    b.ticks_after(0, 3);
    let after = tty_ids(job);
    assert_eq!(
        (after.pgid, after.sid, after.tty_nr, after.tpgid),
        (job, crest_pid, b.rdev(), crest_pid),
        "crest's group keeps the foreground"
    );
    assert!(crest.running());
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(job),
        nix::sys::signal::Signal::SIGKILL,
    );
    crest.wait(CREST_TIMEOUT);
}

#[test]
fn a_pty_pair_inside_the_tree_is_refused_with_or_without_shell_job() {
    let work = Work::new();
    let args = work.ticker_args();
    let owner = work.start(None, false, "pair.py", &[&args[0], &args[1]]);
    let child = wait_for("the pty's child", TIMEOUT, || {
        let kids = fs::read_to_string(format!("/proc/{owner}/task/{owner}/children")).ok()?;
        let c: i32 = kids.split_whitespace().next()?.parse().ok()?;
        (try_tty_ids(c)?.tty_nr != 0).then_some(c)
    });
    let img = work.dir.join("img");
    let owner_s = owner.to_string();
    for extra in [&[][..], &["-j"][..]] {
        let mut args = vec!["dump", "-t", &owner_s, "-D"];
        let img_s = image_arg(&img);
        args.push(&img_s);
        args.extend_from_slice(extra);
        let out = spawn_crest(&args).wait(CREST_TIMEOUT);
        out.assert_failed()
            .assert_stderr_mentions("a pseudo-terminal pair is inside the tree")
            .assert_stderr_mentions(&format!("its master held by process {owner} fd"))
            .assert_stderr_mentions(&format!("process {child} fd 1"))
            .assert_stderr_mentions(&format!("process {child} (its controlling terminal)"));
        assert!(!img.exists());
    }
    // Both run on, untraced.
    for pid in [owner, child] {
        wait_for("the tracer to let go", TIMEOUT, || {
            (tracer_pid(pid) == Some(0)).then_some(())
        });
        assert!(matches!(proc_state(pid), Some('S' | 'R')), "{pid} runs on");
    }
    kill_and_reap(child);
    kill_and_reap(owner);
}

/// Holds the machine's console through a node of its own (5:1, made with mknod in the work
/// directory, as a program that logs to the console does through /dev/console) and answers
/// "state" with the fd's device, whether it is a terminal, its access mode, and the process's
/// controlling terminal (none: the console never becomes one).
const CONSOLE_VICTIM: &str = r#"
import fcntl, json, os, socket, sys
node = sys.argv[2]
os.mknod(node, 0o600 | 0o020000, os.makedev(5, 1))
try:
    fd = os.open(node, os.O_WRONLY)
except OSError as e:
    fd = -1
    why = str(e)

def state():
    if fd < 0:
        return {"unavailable": why}
    tty_nr = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[4])
    st = os.fstat(fd)
    return [fd, os.major(st.st_rdev), os.minor(st.st_rdev), os.isatty(fd),
            fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE, tty_nr]

serve(lambda data: json.dumps(state()))
"#;

/// Starts a victim that makes a device node (its second argument, in a fresh work directory)
/// and opens it, and returns its first answer; None (the test skips, saying so) on a machine
/// or container where the device cannot be opened.
fn start_on_device(
    script: &str,
    device: &str,
) -> Option<(tempfile::TempDir, ControlledVictim, String)> {
    setup();
    let work = tempfile::tempdir().unwrap();
    let node = work.path().join("device");
    let v = ControlledVictim::start(script, work.path(), &[node.as_os_str()]);
    let before = v.ask(b"state");
    if before.contains("unavailable") {
        eprintln!("skipped: {device} cannot be opened on this machine: {before}");
        return None;
    }
    Some((work, v, before))
}

#[test]
fn an_fd_on_the_machine_s_console_is_reopened_by_path_without_shell_job() {
    let Some((work, v, before)) = start_on_device(CONSOLE_VICTIM, "the console 5:1") else {
        return;
    };
    let state: serde_json::Value = serde_json::from_str(&before).unwrap();
    assert_eq!(
        (state[1].as_u64(), state[2].as_u64()),
        (Some(5), Some(1)),
        "{before}"
    );
    assert_eq!(state[3], true, "the console is a terminal: {before}");
    assert_eq!(state[5], 0, "no controlling terminal: {before}");

    v.cycle(work.path(), &before, |image| {
        let json = image.to_string();
        assert!(
            json.contains("\"CharDevice\""),
            "the console as a device: {json}"
        );
    });
}

/// A session leader (the victim runs in a session of its own) whose controlling terminal is a
/// virtual console of the machine: it opens a node of its own for vt 4:23 without O_NOCTTY,
/// which makes the console its controlling terminal and its group the foreground one, and
/// answers "state" with the fd's device, its controlling terminal (tty_nr), whether its group
/// is the terminal's foreground group, and whether /dev/tty (its controlling terminal) opens.
const VT_VICTIM: &str = r#"
import json, os, sys
node = sys.argv[2]
os.mknod(node, 0o600 | 0o020000, os.makedev(4, 23))
try:
    fd = os.open(node, os.O_RDWR | os.O_NONBLOCK)
except OSError as e:
    fd = -1
    why = str(e)

def state():
    if fd < 0:
        return {"unavailable": why}
    tty_nr = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[4])
    st = os.fstat(fd)
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NONBLOCK))
        dev_tty = "opens"
    except OSError as e:
        dev_tty = str(e)
    return [fd, os.major(st.st_rdev), os.minor(st.st_rdev), os.major(tty_nr), tty_nr & 0xff,
            os.tcgetpgrp(fd) == os.getpgrp(), os.getsid(0) == os.getpid(), dev_tty]

serve(lambda data: json.dumps(state()))
"#;

#[test]
fn a_virtual_console_controlling_a_session_of_the_tree_controls_it_again() {
    let Some((work, v, before)) = start_on_device(VT_VICTIM, "the virtual console 4:23") else {
        return;
    };
    let state: serde_json::Value = serde_json::from_str(&before).unwrap();
    assert_eq!(
        (state[3].as_u64(), state[4].as_u64()),
        (Some(4), Some(23)),
        "{before}"
    );
    assert_eq!(state[5], true, "in the foreground: {before}");
    assert_eq!(state[7], "opens", "/dev/tty: {before}");

    v.cycle(work.path(), &before, |image| {
        let session = image["inventory"]["machine_ttys"][0]["session"].as_i64();
        assert_eq!(session, Some(v.pid() as i64), "{image}");
    });
}
