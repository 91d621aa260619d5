//! Test harness shared by the integration tests: builds the C victims in `tests/victims/`,
//! starts them detached, talks to them through their control directory, runs the real `crest`
//! binary, and ends every process it started — by pid, never by name.
//!
//! Each test owns its victim and so its pid: a restore needs only that pid to be free, which no
//! other test touches, so the tests run in parallel without a global lock.
//!
//! The test process makes itself a child subreaper: a process restored with `-d` has crest as
//! its parent, and when crest exits the kernel re-parents it to the nearest subreaper ancestor
//! (PR_SET_CHILD_SUBREAPER, prctl(2)), that is to us, so we can reap it by pid.

#![allow(dead_code)]

pub mod http;

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::hash::{Hash, Hasher};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Once, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tempfile::TempDir;

/// How long to wait for a victim or crest before failing a test. Generous: it only fails a test
/// that is stuck, it never measures anything.
pub const TIMEOUT: Duration = Duration::from_secs(20);
/// How long one crest command may run (a debug build dumps ~60 MiB well within this).
pub const CREST_TIMEOUT: Duration = Duration::from_secs(300);
/// How long to wait for a JVM victim: to start (a JVM with a 64 MiB heap to fill on 2 busy
/// cores), to answer a verify (which waits for every thread and runs a full GC), to shut down.
/// aarch64 runs under qemu's emulation (tests/aarch64.sh): a JVM there takes 26-38 s to start
/// on a quiet host, and a CI run once saw one take over 120 s.
pub const JVM_TIMEOUT: Duration = Duration::from_secs(if cfg!(target_arch = "aarch64") {
    360
} else {
    120
});
/// What the fds victim expects in its environment (it checks the variable after a restore).
pub const VICTIM_ENV: (&str, &str) = ("CREST_VICTIM_ENV", "environment-survives-restore");

const POLL: Duration = Duration::from_millis(10);

/// Once per test binary: become a child subreaper (see the module comment).
pub fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
    });
}

/// Says loudly that the running test is skipped and why (a program it needs is missing): on
/// stderr itself rather than through the test harness's captured output, so the line shows in
/// `cargo test`'s output even though the test then passes.
pub fn say_skipped(reason: &str) {
    use std::io::Write;
    let name = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    let _ = writeln!(std::io::stderr(), "SKIPPED {name}: {reason}");
}

/// Polls `cond` until it returns `Some`, or fails the test after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        sleep(POLL);
    }
}

// ---------------------------------------------------------------------------------------------
// Victims
// ---------------------------------------------------------------------------------------------

/// The victim programs in tests/victims/.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// ~80 MiB of patterns, an append-mode log; verifies all of its memory on request.
    Memcheck,
    /// fd table, cwd, umask, rlimits, shared anonymous memory, cmdline/environ/auxv.
    Fds,
    /// Two threads: crest must refuse it and leave it running.
    Threads,
    /// Signal handlers on an alternate stack, SIG_IGN, interval and POSIX timers, blocked
    /// pending signals, prctl state (issue #3); answers [`Victim::verify_signals`].
    Signals,
    /// 13 threads (issue #4): condvar timed waits, sleepers, busy workers under a mutex,
    /// per-thread masks, pending signals, altstacks and TLS, sched_getcpu through rseq; every
    /// thread checks its tid and makes progress between verifies.
    MThreads,
    /// 300 threads (issue #12); each checks its tid, name, TLS and whether SIGTRAP is blocked,
    /// and makes progress between verifies.
    ManyThreads,
    /// AF_UNIX sockets (peer-closed pairs, an unconnected one, a listener with a thread blocked
    /// in accept) and an hsperfdata-like shared file mapping (issue #4).
    Sockets,
    /// Pipes with unread data: one blocking with a dup'ed write end, one O_NONBLOCK and
    /// enlarged; writes its log lines to stdout too (issue #4).
    Pipes,
    /// A second thread owning a POSIX timer that signals it alone (tests/victims/thtimer.c).
    ThreadTimer,
    /// Event fds (tests/victims/events.c): an eventfd, a signalfd with a queued signal, a
    /// periodic and a one-shot timerfd.
    Events,
    /// An epoll with targets of every kind and an epoll inside it, an inotify instance and a
    /// pidfd (tests/victims/epoll.c).
    Epoll,
    /// A process tree (issue #9): children in the same and in a new session, one in its own
    /// group, grandchildren, a zombie, shared anonymous memory, pipes between processes and one
    /// file description all of them write through.
    Tree,
    /// A SIGTRAP handler counting kills and raises; optionally in the middle of a vfork.
    Jobctl,
    /// Drops from root to ids, groups, capabilities and securebits of its own, and checks
    /// them (and what they allow) on request.
    Creds,
    /// Per-process settings (tests/victims/pstate.c): oom_score_adj, loginuid, THP disable,
    /// timer slack, machine-check kill policy, membarrier registrations, nice, CPU affinity,
    /// advised/locked-on-fault/sealed mappings, shared writable file mappings, an O_PATH fd.
    Pstate,
    /// File locks of every kind (flock shared and exclusive, POSIX read/write ranges through
    /// two descriptions of a mapped file, OFD locks); `locks --check CTL PID` checks them from
    /// another process, as the victim's verify does from a child.
    Locks,
    /// Holds known values in every vector register (xmm, ymm or zmm and the AVX-512 mask
    /// registers, as the CPU has them) while it waits, and checks them on request
    /// (tests/victims/vregs.c); writes `mode sse|avx|avx512` to `CTL/info`.
    Vregs,
    /// Two processes (tests/victims/refused.c) that each hold an epoll fd (fd 101), a deleted
    /// file (fd 102) and a mapping of a deleted file: everything a dump must refuse, named at
    /// once.
    Refused,
    /// memfds (tests/victims/memfd.c): a sealed one open as an fd, one open and mapped
    /// MAP_SHARED and shared with a forked child, one mapped MAP_PRIVATE with private changes.
    Memfd,
    /// Unlinked files and directories (tests/victims/ghost.c): a sparse scratch file open,
    /// mapped shared and private and shared with a forked child, a deleted hard link, a removed
    /// directory open and as the child's cwd, a mapping of a deleted file.
    Ghost,
    /// AF_UNIX sockets of every kind (tests/victims/unix.c): stream, seqpacket and datagram
    /// pairs with data in flight, bound and abstract datagram sockets, listeners with
    /// connections waiting, a bound idle socket; answers [`Victim::verify_with`] "final".
    Unix,
    /// SysV shared memory (tests/victims/ipc.c): a keyed segment attached read-write and
    /// read-only, a removed (IPC_RMID) segment still attached, both shared with a child.
    Ipc,
    /// Named FIFOs with buffered data, open read, write and read-write, shared with a child
    /// (tests/victims/fifos.c); writes `child PID` to `CTL/info`.
    Fifos,
    /// Files of the rest of the fd table (tests/victims/ftable.c): /proc and /sys files at an
    /// offset, O_DIRECT, O_NOATIME and O_PATH descriptions.
    Ftable,
    /// Processes sharing an fd table (tests/victims/fdshare.c); writes their pids to
    /// `CTL/pids`.
    Fdshare,
    /// POSIX message queues (tests/victims/mqueue.c): a named queue with messages of several
    /// priorities open twice (read-write, write-only non-blocking) and an unlinked queue, all
    /// shared with a child; writes `child PID` and `name /QUEUE` to `CTL/info`.
    Mqueue,
    /// UNIX socket queues holding messages that carry files (a pipe end, a file, sockets,
    /// one socket in its own queue) and credentials (tests/victims/scm.c); answers
    /// [`Victim::verify_with`] "final".
    Scm,
    /// Chrooted processes (tests/victims/chroot.c): children with different roots, one
    /// inherited, one whose cwd is outside its root, one whose root was removed; writes
    /// `child PID` (then `B`, `C`, `D` PIDs) to `CTL/info`.
    Chroot,
    /// Two AIO contexts with completed, unreaped events, one wrapping at its ring's end
    /// (tests/victims/aio.c); answers [`Victim::verify_with`] "final"; started with the data
    /// file's path as its third argument.
    Aio,
    /// A process that forks, unmaps, moves and discards its memory when `CTL/mutate` appears
    /// (tests/victims/lazymm.c); writes `CTL/mutated`.
    Lazymm,
    /// A private anonymous region shared copy-on-write by a root, its child K (which changed
    /// some pages) and K's child G (tests/victims/cow.c); writes `K PID` and `G PID` to
    /// `CTL/info`.
    Cow,
    /// A JVM running tests/java/Victim.java (started with [`Victim::start_program`]; the comm
    /// of a JVM's main thread is `java`).
    Java,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Memcheck => "memcheck",
            Kind::Fds => "fds",
            Kind::Threads => "threads",
            Kind::Signals => "signals",
            Kind::MThreads => "mthreads",
            Kind::ManyThreads => "manythreads",
            Kind::Sockets => "sockets",
            Kind::Pipes => "pipes",
            Kind::Tree => "tree",
            Kind::Events => "events",
            Kind::Epoll => "epoll",
            Kind::ThreadTimer => "thtimer",
            Kind::Jobctl => "jobctl",
            Kind::Creds => "creds",
            Kind::Pstate => "pstate",
            Kind::Locks => "locks",
            Kind::Vregs => "vregs",
            Kind::Refused => "refused",
            Kind::Memfd => "memfd",
            Kind::Ghost => "ghost",
            Kind::Unix => "unix",
            Kind::Ipc => "ipc",
            Kind::Fifos => "fifos",
            Kind::Ftable => "ftable",
            Kind::Fdshare => "fdshare",
            Kind::Mqueue => "mqueue",
            Kind::Scm => "scm",
            Kind::Chroot => "chroot",
            Kind::Aio => "aio",
            Kind::Lazymm => "lazymm",
            Kind::Cow => "cow",
            Kind::Java => "java",
        }
    }

    fn cflags(self) -> &'static [&'static str] {
        match self {
            Kind::Threads
            | Kind::MThreads
            | Kind::ManyThreads
            | Kind::Sockets
            | Kind::Vregs
            | Kind::ThreadTimer => &["-pthread"],
            _ => &[],
        }
    }

    /// How long to wait for this kind of victim to start, answer or die.
    pub fn timeout(self) -> Duration {
        match self {
            Kind::Java => JVM_TIMEOUT,
            _ => TIMEOUT,
        }
    }
}

fn victims_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/victims")
}

/// Compiles a victim once per content: the output lives in a directory named after a hash of the
/// sources and flags, so a binary that a running (or dumped) victim uses is never replaced.
pub fn victim_binary(kind: Kind) -> PathBuf {
    assert!(
        kind != Kind::Java,
        "the JVM victim is started by tests/jvm.rs, not compiled here"
    );
    static BUILT: OnceLock<std::sync::Mutex<BTreeMap<&'static str, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = built.get(kind.name()) {
        return p.clone();
    }
    let src = victims_src().join(format!("{}.c", kind.name()));
    let header = victims_src().join("victim.h");
    let mut flags = vec!["-O1", "-g", "-Wall", "-Wextra"];
    flags.extend_from_slice(kind.cflags());
    let mut h = DefaultHasher::new();
    fs::read(&src).expect("read victim source").hash(&mut h);
    fs::read(&header).expect("read victim.h").hash(&mut h);
    flags.hash(&mut h);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("victims")
        .join(format!("{}-{:016x}", kind.name(), h.finish()));
    let out = dir.join(kind.name());
    if !out.exists() {
        fs::create_dir_all(&dir).expect("create victim build dir");
        let tmp = dir.join(format!("{}.tmp{}", kind.name(), std::process::id()));
        let res = Command::new("cc")
            .args(&flags)
            .arg("-o")
            .arg(&tmp)
            .arg(&src)
            .output()
            .expect("run cc (install gcc)");
        assert!(
            res.status.success(),
            "compiling {} failed:\n{}",
            src.display(),
            String::from_utf8_lossy(&res.stderr)
        );
        fs::rename(&tmp, &out).expect("rename victim binary");
    }
    built.insert(kind.name(), out.clone());
    out
}

/// A victim process this test started (and, after a restore, the restored process with the same
/// pid). Dropping it kills the process by pid with SIGKILL and reaps it, if it may still exist.
pub struct Victim {
    pub kind: Kind,
    pub pid: i32,
    /// Control directory: verify-request/verify-result/exit-request, the victim's stderr.
    pub ctl: PathBuf,
    /// The victim's append-mode log.
    pub log: PathBuf,
    /// Scratch space for the test (image directories go here).
    pub work: PathBuf,
    /// Whether a process of ours may exist under `pid` (false once it has been reaped).
    alive: bool,
    _tmp: TempDir,
}

impl Victim {
    pub fn start(kind: Kind) -> Victim {
        Victim::start_with(kind, |_| {})
    }

    /// Starts a victim detached (own session, stdin/stdout /dev/null, stderr to a file, every
    /// inherited fd above 2 closed) after letting `customize` adjust the command.
    pub fn start_with(kind: Kind, customize: impl FnOnce(&mut Command)) -> Victim {
        Victim::start_program(kind, &victim_binary(kind), &[], customize)
    }

    /// Starts `program PRE_ARGS... CTL_DIR LOG_FILE` detached like [`Victim::start_with`] (for
    /// victims that are not compiled C, such as `java -cp DIR Victim`), and waits up to
    /// [`Kind::timeout`] for its first log line.
    pub fn start_program(
        kind: Kind,
        bin: &Path,
        pre_args: &[&OsStr],
        customize: impl FnOnce(&mut Command),
    ) -> Victim {
        Victim::start_program_in(kind, bin, pre_args, true, customize)
    }

    /// Starts a victim like [`Victim::start_with`], but in a new process group of the test's
    /// session instead of a session of its own: its process group is then not orphaned, so
    /// SIGTSTP, SIGTTIN and SIGTTOU stop it (the kernel discards them in an orphaned group).
    pub fn start_in_process_group(kind: Kind, args: &[&str]) -> Victim {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        Victim::start_program_in(kind, &victim_binary(kind), &[], false, move |cmd| {
            cmd.args(&args);
        })
    }

    fn start_program_in(
        kind: Kind,
        bin: &Path,
        pre_args: &[&OsStr],
        new_session: bool,
        customize: impl FnOnce(&mut Command),
    ) -> Victim {
        setup();
        let tmp = tempfile::Builder::new()
            .prefix(&format!("crest-{}-", kind.name()))
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("create work dir");
        let work = tmp.path().to_path_buf();
        let ctl = work.join("ctl");
        fs::create_dir(&ctl).expect("create ctl dir");
        let log = ctl.join("log");
        let stderr = File::create(ctl.join("stderr")).expect("create stderr file");

        let mut cmd = Command::new(bin);
        cmd.args(pre_args)
            .arg(&ctl)
            .arg(&log)
            .current_dir(&work)
            .env(VICTIM_ENV.0, VICTIM_ENV.1)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        if kind == Kind::Fds {
            cmd.arg("an extra argument").arg("--with=an-equals-sign");
        }
        customize(&mut cmd);
        // SAFETY: the closure runs in the forked child before exec and calls only setsid(2) or
        // setpgid(2), and close_range(2): async-signal-safe system calls that touch no locks or
        // memory.
        unsafe {
            cmd.pre_exec(move || {
                if new_session {
                    nix::unistd::setsid()?;
                } else {
                    nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))?;
                    crest::sys::give_up_controlling_terminal();
                }
                // Mark everything above stderr close-on-exec (not closed: std's exec-error pipe
                // must survive until exec), so the victim holds no fd it did not open itself.
                if libc::close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as i32) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let pid = child.id() as i32;
        // Reaped by pid with waitpid, like the restored instances that are not std children.
        drop(child);
        let mut v = Victim {
            kind,
            pid,
            ctl,
            log,
            work,
            alive: true,
            _tmp: tmp,
        };
        v.wait_started();
        v
    }

    fn wait_started(&mut self) {
        let what = format!("{} (pid {}) to start logging", self.kind.name(), self.pid);
        let start = Instant::now();
        loop {
            if !self.log_entries().is_empty() {
                note_time(&what, start.elapsed());
                return;
            }
            if let Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) =
                waitpid(Pid::from_raw(self.pid), Some(WaitPidFlag::WNOHANG))
            {
                self.alive = false;
                panic!(
                    "{} exited at start: {}",
                    self.kind.name(),
                    self.stderr_text()
                );
            }
            if start.elapsed() >= self.kind.timeout() {
                // Slow or stuck: what each of its threads is doing tells which.
                panic!(
                    "timed out waiting for {what}: {}\n{}",
                    self.stderr_text(),
                    hang_report(self.pid)
                );
            }
            sleep(POLL);
        }
    }

    pub fn pid_str(&self) -> String {
        self.pid.to_string()
    }

    /// What the victim wrote to its stderr (its FAIL reasons, or why it died).
    pub fn stderr_text(&self) -> String {
        fs::read_to_string(self.ctl.join("stderr")).unwrap_or_default()
    }

    /// Asks the victim to check all of its state; returns its counter, or what it found wrong.
    pub fn verify(&self) -> Result<u64, String> {
        let text = self.verify_exchange(None)?;
        let words: Vec<&str> = text.split_whitespace().collect();
        match words.as_slice() {
            ["ok", pid, counter] if *pid == self.pid_str() => Ok(counter
                .parse()
                .map_err(|_| format!("bad verify result {text:?}"))?),
            _ => Err(format!(
                "{} (pid {}) reports: {}",
                self.kind.name(),
                self.pid,
                text.trim()
            )),
        }
    }

    /// Sends a verify request holding `body` (for victims that take one, such as
    /// [`Kind::Unix`]); returns the counter, or what the victim found wrong.
    pub fn verify_with(&self, body: &str) -> Result<u64, String> {
        let text = self.verify_exchange(Some(body))?;
        let words: Vec<&str> = text.split_whitespace().collect();
        match words.as_slice() {
            ["ok", pid, counter] if *pid == self.pid_str() => counter
                .parse()
                .map_err(|_| format!("bad verify result {text:?}")),
            _ => Err(format!(
                "{} (pid {}) reports: {}",
                self.kind.name(),
                self.pid,
                text.trim()
            )),
        }
    }

    /// Asks the signals victim to check its state ([`Kind::Signals`]); with `final` it also
    /// lets its held pending signals in and checks what they carried (once per process: they
    /// are gone afterwards). Returns its counters, or what it found wrong.
    pub fn verify_signals(&self, final_check: bool) -> Result<SignalCounts, String> {
        assert_eq!(
            self.kind,
            Kind::Signals,
            "verify_signals on a {} victim",
            self.kind.name()
        );
        let text = self.verify_exchange(Some(if final_check { "final\n" } else { "check\n" }))?;
        let words: Vec<&str> = text.split_whitespace().collect();
        let bad = || format!("bad verify result {text:?}");
        match words.as_slice() {
            ["ok", pid, n, alrm, timer, usr1] if *pid == self.pid_str() => Ok(SignalCounts {
                counter: n.parse().map_err(|_| bad())?,
                alrm: alrm.parse().map_err(|_| bad())?,
                posix_timer: timer.parse().map_err(|_| bad())?,
                usr1: usr1.parse().map_err(|_| bad())?,
            }),
            _ => Err(format!(
                "{} (pid {}) reports: {}",
                self.kind.name(),
                self.pid,
                text.trim()
            )),
        }
    }

    /// The `key value` lines the signals victim writes to `CTL/info` at start.
    pub fn signals_info(&self) -> SignalsInfo {
        let path = self.ctl.join("info");
        let text =
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        SignalsInfo::parse(&text)
            .unwrap_or_else(|| panic!("malformed {}: {text:?}", path.display()))
    }

    /// Places a verify request (with `body`, written atomically, or as an empty file) and
    /// waits for the raw result text.
    fn verify_exchange(&self, body: Option<&str>) -> Result<String, String> {
        let request = self.ctl.join("verify-request");
        let result = self.ctl.join("verify-result");
        let _ = fs::remove_file(&result);
        match body {
            None => {
                File::create(&request).expect("create verify-request");
            }
            Some(body) => {
                // Temporary name + rename: the victim never reads half a request.
                let tmp = self.ctl.join("verify-request.tmp");
                fs::write(&tmp, body).expect("write verify-request");
                fs::rename(&tmp, &request).expect("rename verify-request");
            }
        }
        let start = Instant::now();
        let text = loop {
            // The victim writes the result to a temporary name and renames it: whole or absent.
            if let Ok(text) = fs::read_to_string(&result) {
                let what = format!("{} (pid {}) to verify", self.kind.name(), self.pid);
                note_time(&what, start.elapsed());
                break text;
            }
            if !pid_exists(self.pid) || proc_state(self.pid) == Some('Z') {
                let _ = fs::remove_file(&request);
                return Err(format!(
                    "{} (pid {}) died before answering: {}",
                    self.kind.name(),
                    self.pid,
                    self.stderr_text()
                ));
            }
            if start.elapsed() > self.kind.timeout() {
                let _ = fs::remove_file(&request);
                return Err(format!(
                    "{} (pid {}) did not answer a verify request within {:?} (state {:?})",
                    self.kind.name(),
                    self.pid,
                    self.kind.timeout(),
                    proc_state(self.pid)
                ));
            }
            sleep(POLL);
        };
        let _ = fs::remove_file(&result);
        Ok(text)
    }

    /// Asks the victim to exit with `code`.
    pub fn request_exit(&self, code: i32) {
        let tmp = self.ctl.join("exit-request.tmp");
        fs::write(&tmp, format!("{code}\n")).expect("write exit request");
        fs::rename(&tmp, self.ctl.join("exit-request")).expect("rename exit request");
    }

    /// Asks the victim to exit with 0 and checks that it did (reaping it).
    pub fn exit_cleanly(&mut self) {
        self.request_exit(0);
        let status = self.reap();
        assert!(
            matches!(status, Some(WaitStatus::Exited(_, 0))),
            "{status:?}: {}",
            self.stderr_text()
        );
    }

    /// The text of the file `name` the victim writes (atomically) in its control directory,
    /// once it is there.
    pub fn ctl_file(&self, name: &str) -> String {
        let path = self.ctl.join(name);
        wait_for(&format!("the victim's {name} file"), TIMEOUT, || {
            fs::read_to_string(&path).ok()
        })
    }

    /// The child named by the victim's info file ("child PID" on its first line).
    pub fn info_child(&self) -> VictimChild {
        let text = self.ctl_file("info");
        let child = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("child "))
            .and_then(|s| s.trim().parse().ok())
            .expect("child PID");
        VictimChild(child)
    }

    /// After cycle `cycle`: the victim verifies and its child `child` still runs.
    pub fn assert_verifies_with_child(&self, child: &VictimChild, cycle: u32) {
        self.verify()
            .unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        assert!(
            matches!(proc_state(child.0), Some('S' | 'R')),
            "cycle {cycle}: the child is {:?}: {}",
            proc_state(child.0),
            self.stderr_text()
        );
    }

    /// Complete lines of the log as (pid, counter). Every line must parse: a torn or foreign
    /// line means a write was lost, duplicated in part, or the fd pointed somewhere else.
    pub fn log_entries(&self) -> Vec<(i32, u64)> {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        complete
            .lines()
            .map(|l| parse_log_line(l).unwrap_or_else(|| panic!("malformed log line {l:?}")))
            .collect()
    }

    /// The counter of the last complete log line (0 before the first).
    pub fn last_logged(&self) -> u64 {
        self.log_entries().last().map(|e| e.1).unwrap_or(0)
    }

    /// Waits until the victim logs a line with a counter above `after`, under its own pid;
    /// returns that counter. Fails the test if any line carries another pid.
    pub fn wait_logging_after(&self, after: u64) -> u64 {
        let what = format!(
            "{} (pid {}) to log past n={after}",
            self.kind.name(),
            self.pid
        );
        let start = Instant::now();
        loop {
            let entries = self.log_entries();
            if let Some(bad) = entries.iter().find(|e| e.0 != self.pid) {
                panic!(
                    "log of pid {} has a line from pid {}: {:?}",
                    self.pid, bad.0, bad
                );
            }
            if let Some(e) = entries.iter().rev().find(|e| e.1 > after) {
                note_time(&what, start.elapsed());
                return e.1;
            }
            assert!(
                start.elapsed() < self.kind.timeout(),
                "timed out waiting for {what} (state {:?}); stderr: {}",
                proc_state(self.pid),
                self.stderr_text()
            );
            sleep(POLL);
        }
    }

    /// Waits until the log has more than `lines_before` complete lines, all under the victim's
    /// pid (for a restore of a `-R` image, whose counter restarts below what the original
    /// logged since).
    pub fn wait_log_grows(&self, lines_before: usize) {
        let what = format!("{} (pid {}) to log a new line", self.kind.name(), self.pid);
        let start = Instant::now();
        loop {
            let entries = self.log_entries();
            if let Some(bad) = entries.iter().find(|e| e.0 != self.pid) {
                panic!(
                    "log of pid {} has a line from pid {}: {:?}",
                    self.pid, bad.0, bad
                );
            }
            if entries.len() > lines_before {
                note_time(&what, start.elapsed());
                return;
            }
            assert!(
                start.elapsed() < self.kind.timeout(),
                "timed out waiting for {what} (state {:?}); stderr: {}",
                proc_state(self.pid),
                self.stderr_text()
            );
            sleep(POLL);
        }
    }

    /// The log is exactly n=1, 2, 3, ... under one pid: no tick lost or written twice, as
    /// holds across dumps that kill and restores that resume.
    pub fn assert_log_consecutive(&self) {
        let entries = self.log_entries();
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(
                *e,
                (self.pid, i as u64 + 1),
                "log line {} of pid {} breaks the sequence: {:?}",
                i + 1,
                self.pid,
                &entries[i.saturating_sub(2)..(i + 3).min(entries.len())]
            );
        }
    }

    /// Waits for the process (killed by a dump, or told to exit) to die and reaps it.
    /// Returns its wait status when we were its parent (None when another process reaped it).
    pub fn reap(&mut self) -> Option<WaitStatus> {
        let st = reap_pid(self.pid, self.kind.timeout())
            .unwrap_or_else(|e| panic!("{} (pid {}) did not die: {e}", self.kind.name(), self.pid));
        self.alive = false;
        assert!(
            !pid_exists(self.pid),
            "pid {} still exists after it was reaped",
            self.pid
        );
        st
    }

    /// After a successful restore: a process of ours exists under the pid again.
    pub fn mark_restored(&mut self) {
        self.alive = true;
    }

    /// The pid exists, is not a zombie, and runs our program (comm as before the dump).
    pub fn assert_running(&self) {
        assert!(pid_exists(self.pid), "pid {} does not exist", self.pid);
        let stat = procfs::process::Process::new(self.pid)
            .and_then(|p| p.stat())
            .unwrap_or_else(|e| panic!("read /proc/{}/stat: {e}", self.pid));
        assert!(
            !matches!(stat.state, 'Z' | 'X' | 't' | 'T'),
            "pid {} is in state {} (not running)",
            self.pid,
            stat.state
        );
        assert_eq!(stat.comm, self.kind.name(), "comm of pid {}", self.pid);
    }

    /// The fd table as (fd -> what it points to), to compare before a dump and after a restore.
    pub fn fd_table(&self) -> BTreeMap<i32, String> {
        fd_table(self.pid)
    }

    /// Kills the process by pid and reaps it.
    pub fn kill(&mut self) {
        if self.alive {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
            self.reap();
        }
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        if self.alive {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
            let _ = reap_pid(self.pid, TIMEOUT);
        }
    }
}

/// What the signals victim reports on a successful verify. All counts are cumulative over the
/// life of the process (they live in its memory, so they carry over a dump and restore).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalCounts {
    /// Main-loop ticks (the log counter).
    pub counter: u64,
    /// SIGALRMs from ITIMER_REAL handled.
    pub alrm: u64,
    /// POSIX timer signals (SIGRTMIN+2) handled.
    pub posix_timer: u64,
    /// SIGUSR1s the victim sent itself and handled.
    pub usr1: u64,
}

/// The signals victim's own account of what it set up (`CTL/info`), to compare with an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalsInfo {
    /// glibc's SIGRTMIN (34: glibc keeps 32 and 33 for itself).
    pub sigrtmin: i32,
    /// The kernel id of its POSIX timer.
    pub timer_id: i32,
    pub altstack_sp: u64,
    pub altstack_size: u64,
    /// sa_restorer glibc installed with every handler.
    pub restorer: u64,
    /// (signal, handler address) of every handler it installed.
    pub handlers: Vec<(i32, u64)>,
    /// get_robust_list(0): head address and length (glibc registers one per thread).
    pub robust_list: u64,
    pub robust_len: u64,
    /// PR_GET_TID_ADDRESS (None when the kernel lacks CONFIG_CHECKPOINT_RESTORE).
    pub tid_address: Option<u64>,
}

impl SignalsInfo {
    fn parse(text: &str) -> Option<SignalsInfo> {
        fn num(s: &str) -> Option<u64> {
            match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => s.parse().ok(),
            }
        }
        let mut info = SignalsInfo {
            sigrtmin: 0,
            timer_id: -1,
            altstack_sp: 0,
            altstack_size: 0,
            restorer: 0,
            handlers: Vec::new(),
            robust_list: 0,
            robust_len: 0,
            tid_address: None,
        };
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["sigrtmin", v] => info.sigrtmin = v.parse().ok()?,
                ["timer_id", v] => info.timer_id = v.parse().ok()?,
                ["altstack_sp", v] => info.altstack_sp = num(v)?,
                ["altstack_size", v] => info.altstack_size = num(v)?,
                ["restorer", v] => info.restorer = num(v)?,
                ["robust_list", v] => info.robust_list = num(v)?,
                ["robust_len", v] => info.robust_len = num(v)?,
                ["tid_address", v] => info.tid_address = Some(num(v)?),
                ["handler", sig, addr] => info.handlers.push((sig.parse().ok()?, num(addr)?)),
                _ => return None,
            }
        }
        (info.sigrtmin > 0 && info.timer_id >= 0 && !info.handlers.is_empty()).then_some(info)
    }

    /// The handler address installed for `sig`.
    pub fn handler(&self, sig: i32) -> u64 {
        self.handlers
            .iter()
            .find(|h| h.0 == sig)
            .unwrap_or_else(|| panic!("the victim installed no handler for signal {sig}"))
            .1
    }
}

fn parse_log_line(line: &str) -> Option<(i32, u64)> {
    let rest = line.strip_prefix("pid=")?;
    let (pid, n) = rest.split_once(" n=")?;
    Some((pid.parse().ok()?, n.parse().ok()?))
}

// ---------------------------------------------------------------------------------------------
// Processes by pid
// ---------------------------------------------------------------------------------------------

/// Whether any process (zombies included) has this pid: kill(pid, 0).
/// Every descendant of `pid`, parents before children.
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(proc) = procfs::process::Process::new(p) else {
            continue;
        };
        for task in proc.tasks().into_iter().flatten().flatten() {
            for child in task.children().unwrap_or_default() {
                out.push(child as i32);
                todo.push(child as i32);
            }
        }
    }
    out
}

/// A child of a victim (by pid), killed and reaped if the test ends early.
pub struct VictimChild(pub i32);

impl Drop for VictimChild {
    fn drop(&mut self) {
        let pid = self.0;
        if pid_exists(pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        // Its parent is the victim while that lives, and reaps it; only a child re-parented to
        // us (the victim ended first) is ours to reap. Waiting to reap it otherwise would take
        // the whole timeout.
        let ours = procfs::process::Process::new(pid)
            .and_then(|p| p.stat())
            .is_ok_and(|st| st.ppid == std::process::id() as i32);
        if ours {
            let _ = reap_pid(pid, TIMEOUT);
        }
    }
}

pub fn pid_exists(pid: i32) -> bool {
    match kill(Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(Errno::ESRCH) => false,
        Err(e) => panic!("kill({pid}, 0): {e}"),
    }
}

/// The state letter of /proc/PID/stat, if the process exists.
pub fn proc_state(pid: i32) -> Option<char> {
    procfs::process::Process::new(pid)
        .and_then(|p| p.stat())
        .ok()
        .map(|s| s.state)
}

/// TracerPid of /proc/PID/status.
pub fn tracer_pid(pid: i32) -> Option<i32> {
    procfs::process::Process::new(pid)
        .and_then(|p| p.status())
        .ok()
        .map(|s| s.tracerpid)
}

/// The signal masks of /proc/PID/status (bit n-1 for signal n).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalStatus {
    /// SigBlk: the thread's blocked mask.
    pub blocked: u64,
    /// SigIgn: signals whose disposition is SIG_IGN.
    pub ignored: u64,
    /// SigCgt: signals with a handler.
    pub caught: u64,
    /// ShdPnd: pending for the whole process.
    pub shared_pending: u64,
    /// SigPnd: pending for the (leader) thread.
    pub thread_pending: u64,
}

/// The signal masks /proc/PID/status shows.
pub fn signal_status(pid: i32) -> SignalStatus {
    let st = procfs::process::Process::new(pid)
        .and_then(|p| p.status())
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    SignalStatus {
        blocked: st.sigblk,
        ignored: st.sigign,
        caught: st.sigcgt,
        shared_pending: st.shdpnd,
        thread_pending: st.sigpnd,
    }
}

/// One thread as /proc/PID/task/TID shows it: what a restore must give back to each tid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInfo {
    /// The thread's name (`comm`).
    pub comm: String,
    /// SigBlk: the thread's blocked mask.
    pub blocked: u64,
    /// SigPnd: signals pending for this thread alone.
    pub pending: u64,
}

/// The tids of a process (/proc/PID/task), sorted.
pub fn thread_ids(pid: i32) -> Vec<i32> {
    let proc = procfs::process::Process::new(pid).unwrap_or_else(|e| panic!("pid {pid}: {e}"));
    let mut tids: Vec<i32> = proc
        .tasks()
        .unwrap_or_else(|e| panic!("list /proc/{pid}/task: {e}"))
        .filter_map(|t| t.ok().map(|t| t.tid))
        .collect();
    tids.sort_unstable();
    tids
}

/// Every thread of a process with its name and signal state. A thread that exits while it is
/// read is left out (a JVM starts and ends threads of its own at any time).
pub fn tasks(pid: i32) -> BTreeMap<i32, TaskInfo> {
    let proc = procfs::process::Process::new(pid).unwrap_or_else(|e| panic!("pid {pid}: {e}"));
    proc.tasks()
        .unwrap_or_else(|e| panic!("list /proc/{pid}/task: {e}"))
        .filter_map(|t| t.ok())
        .filter_map(|t| {
            let stat = t.stat().ok()?;
            let status = t.status().ok()?;
            Some((
                t.tid,
                TaskInfo {
                    comm: stat.comm,
                    blocked: status.sigblk,
                    pending: status.sigpnd,
                },
            ))
        })
        .collect()
}

/// Fails the test unless every thread of `before` exists in `pid` now under the same tid with
/// the same name (and, with `signals`, the same blocked and pending masks); with `exact`, no
/// other thread exists either.
pub fn assert_tasks_kept(
    pid: i32,
    before: &BTreeMap<i32, TaskInfo>,
    exact: bool,
    signals: bool,
    context: &str,
) {
    let now = tasks(pid);
    for (tid, was) in before {
        let Some(is) = now.get(tid) else {
            panic!(
                "{context}: thread {tid} ({}) of pid {pid} is gone; threads now: {:?}",
                was.comm,
                now.iter()
                    .map(|(t, i)| (*t, i.comm.as_str()))
                    .collect::<Vec<_>>()
            );
        };
        assert_eq!(
            is.comm, was.comm,
            "{context}: name of thread {tid} of pid {pid}"
        );
        if signals {
            assert_eq!(
                is.blocked, was.blocked,
                "{context}: blocked mask of thread {tid} ({}) of pid {pid}: {:#x}, was {:#x}",
                was.comm, is.blocked, was.blocked
            );
            assert_eq!(
                is.pending, was.pending,
                "{context}: pending signals of thread {tid} ({}) of pid {pid}: {:#x}, was {:#x}",
                was.comm, is.pending, was.pending
            );
        }
    }
    if exact {
        let extra: Vec<_> = now.keys().filter(|t| !before.contains_key(t)).collect();
        assert!(
            extra.is_empty(),
            "{context}: pid {pid} has threads it did not have before: {extra:?}"
        );
    }
}

/// Bit of signal `sig` in a kernel signal mask.
pub fn sig_bit(sig: i32) -> u64 {
    1u64 << (sig - 1)
}

/// /proc/PID/timers: every POSIX timer with its id, signal and sigev_value, notification and
/// clock (procfs has no parser for it; the text is compared whole).
pub fn proc_timers(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/timers"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/timers: {e}"))
}

/// The fd table of a process as (fd -> target). A socket shows without its inode number: a
/// restore recreates sockets, so they come back as new inodes.
pub fn fd_table(pid: i32) -> BTreeMap<i32, String> {
    let proc = procfs::process::Process::new(pid).unwrap_or_else(|e| panic!("pid {pid}: {e}"));
    proc.fd()
        .unwrap_or_else(|e| panic!("list fds of pid {pid}: {e}"))
        .map(|fd| {
            let fd = fd.unwrap_or_else(|e| panic!("fd of pid {pid}: {e}"));
            let target = match fd.target {
                procfs::process::FDTarget::Socket(_) => "Socket".to_string(),
                other => format!("{other:?}"),
            };
            (fd.fd, target)
        })
        .collect()
}

/// Waits up to `timeout` for `pid` to die and reaps it if it is our child. A process whose
/// parent is still someone else (a crest that has not exited yet) is waited for until it is
/// gone or becomes our child. Returns the wait status when we reaped it.
pub fn reap_pid(pid: i32, timeout: Duration) -> Result<Option<WaitStatus>, String> {
    let start = Instant::now();
    loop {
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(st @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => return Ok(Some(st)),
            Ok(_) => {}
            Err(Errno::ECHILD) => {
                if !pid_exists(pid) {
                    return Ok(None);
                }
            }
            Err(e) => return Err(format!("waitpid({pid}): {e}")),
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "pid {pid} still exists after {timeout:?} (state {:?})",
                proc_state(pid)
            ));
        }
        sleep(POLL);
    }
}

/// Fails the test if a process exists under `pid` — after killing and reaping it, so a test
/// that finds a stray restored process does not leave it behind.
pub fn assert_no_process(pid: i32, context: &str) {
    if pid_exists(pid) {
        let state = proc_state(pid);
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = reap_pid(pid, TIMEOUT);
        panic!("{context}: a process with pid {pid} exists afterwards (state {state:?})");
    }
}

/// A pid that no process has right now: that of a child that has exited and been reaped.
pub fn free_pid() -> i32 {
    let mut child = Command::new("true").spawn().expect("spawn true");
    let pid = child.id() as i32;
    child.wait().expect("wait true");
    assert!(!pid_exists(pid));
    pid
}

// ---------------------------------------------------------------------------------------------
// The crest binary
// ---------------------------------------------------------------------------------------------

pub fn crest_bin() -> &'static str {
    env!("CARGO_BIN_EXE_crest")
}

/// What one crest run did.
pub struct CrestOutput {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CrestOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Fails the test unless crest exited 0.
    pub fn assert_ok(&self) -> &Self {
        assert!(self.success(), "{self}");
        self
    }

    /// Fails the test unless crest exited non-zero and said why on stderr.
    pub fn assert_failed(&self) -> &Self {
        assert!(
            self.status.code().is_some_and(|c| c != 0),
            "expected a non-zero exit: {self}"
        );
        assert!(
            self.stderr.to_lowercase().contains("error"),
            "expected an error message on stderr: {self}"
        );
        self
    }

    /// Fails the test unless stderr mentions `needle`.
    pub fn assert_stderr_mentions(&self, needle: &str) -> &Self {
        assert!(
            self.stderr.contains(needle),
            "expected stderr to mention {needle:?}: {self}"
        );
        self
    }
}

impl std::fmt::Display for CrestOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "crest {} -> {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.status,
            self.stdout,
            self.stderr
        )
    }
}

/// With CREST_TEST_TIMES set in the environment, prints how long `what` took to stderr (seen
/// with `--nocapture`; tests/aarch64.sh passes CREST_* variables into the guest): where a slow
/// run spends its time, crest command by command and victim start by victim start.
pub fn note_time(what: &str, took: Duration) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("CREST_TEST_TIMES").is_some()) {
        let thread = std::thread::current();
        // A slow step says what the machine had: short of memory, everything crawls.
        let machine = if took >= Duration::from_secs(30) {
            let mem = <procfs::Meminfo as procfs::Current>::current()
                .map(|m| {
                    format!(
                        "memory available {} of {} MiB",
                        m.mem_available.unwrap_or(0) >> 20,
                        m.mem_total >> 20
                    )
                })
                .unwrap_or_default();
            let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
            format!(" ({mem}; load {})", load.trim())
        } else {
            String::new()
        };
        eprintln!(
            "[{}] {what}: {:.1} s{machine}",
            thread.name().unwrap_or("?"),
            took.as_secs_f64()
        );
    }
}

/// A running crest whose stdout/stderr go to unnamed temporary files (not pipes: a pipe leaked
/// into a restored process would keep a reader waiting for as long as that process lives).
/// Dropping it kills crest by pid if it is still running.
pub struct CrestProcess {
    child: Option<Child>,
    args: Vec<String>,
    out: File,
    err: File,
}

impl CrestProcess {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("crest already waited for").id() as i32
    }

    /// Whether crest is still running.
    pub fn running(&mut self) -> bool {
        let child = self.child.as_mut().expect("crest already waited for");
        child.try_wait().expect("try_wait crest").is_none()
    }

    /// Waits for crest to exit (failing the test after `timeout`) and collects its output.
    pub fn wait(mut self, timeout: Duration) -> CrestOutput {
        let mut child = self.child.take().expect("crest already waited for");
        let start = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().expect("try_wait crest") {
                break st;
            }
            if start.elapsed() > timeout {
                // Where it hangs, for a hang seen once in a while: crest's threads and every
                // task it traces, each with its state, wait channel, system call and kernel
                // stack, and what crest wrote so far.
                let report = hang_report(child.id() as i32);
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "crest {} did not finish within {timeout:?}\n{report}--- stderr so far ---\n{}",
                    self.args.join(" "),
                    read_all(&mut self.err)
                );
            }
            sleep(POLL);
        };
        note_time(&format!("crest {}", self.args.join(" ")), start.elapsed());
        CrestOutput {
            args: std::mem::take(&mut self.args),
            status,
            stdout: read_all(&mut self.out),
            stderr: read_all(&mut self.err),
        }
    }
}

impl Drop for CrestProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The threads of `pid` and of every task it traces: state, wait channel, current system call
/// (`/proc/TID/syscall`) and kernel stack, one block per thread.
pub fn hang_report(pid: i32) -> String {
    let read = |path: String| {
        std::fs::read_to_string(&path)
            .map(|s| s.trim_end().to_string())
            .unwrap_or_else(|e| format!("({path}: {e})"))
    };
    // Unlike thread_ids, tolerant of tasks that end while they are listed.
    let threads = |p: procfs::process::Process| -> Vec<i32> {
        p.tasks()
            .into_iter()
            .flatten()
            .flatten()
            .map(|t| t.tid)
            .collect()
    };
    // Tasks whose tracer is crest: the tree being dumped or restored.
    let traced = procfs::process::all_processes()
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(threads)
        .filter(|&tid| tracer_pid(tid) == Some(pid));
    // A machine short of memory stalls everything (a small VM holding images in tmpfs).
    let mut out = match <procfs::Meminfo as procfs::Current>::current() {
        Ok(m) => format!(
            "--- memory: total {} MiB, available {} MiB, free {} MiB, shmem {} MiB\n",
            m.mem_total >> 20,
            m.mem_available.unwrap_or(0) >> 20,
            m.mem_free >> 20,
            m.shmem.unwrap_or(0) >> 20
        ),
        Err(e) => format!("--- memory: /proc/meminfo: {e}\n"),
    };
    let own = procfs::process::Process::new(pid)
        .map(threads)
        .unwrap_or_default();
    // Twice, with the thread samples between: a file that grows is progress, not a hang.
    out.push_str(&open_file_sizes(pid));
    let own_tids: Vec<i32> = own.clone();
    for tid in own.into_iter().chain(traced) {
        let state = proc_state(tid).unwrap_or('?');
        out.push_str(&format!(
            "--- task {tid} ({}) state {state}, wchan {}, syscall {}\n{}\n",
            read(format!("/proc/{tid}/comm")),
            read(format!("/proc/{tid}/wchan")),
            read(format!("/proc/{tid}/syscall")),
            read(format!("/proc/{tid}/stack")),
        ));
        // A running thread of crest shows no stack: say whether it spins in user space or in
        // the kernel, and where.
        if state == 'R' && own_tids.contains(&tid) {
            out.push_str(&where_it_runs(pid, tid));
        }
    }
    out.push_str(&open_file_sizes(pid));
    out
}

/// The regular files `pid` has open, with their sizes now.
fn open_file_sizes(pid: i32) -> String {
    let mut out = String::from("--- regular files open in crest:");
    for fd in fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(target) = fs::read_link(fd.path()) else {
            continue;
        };
        if let Ok(meta) = fs::metadata(fd.path()) {
            if meta.is_file() {
                out.push_str(&format!(" {} ({} bytes);", target.display(), meta.len()));
            }
        }
    }
    out.push('\n');
    out
}

/// For a thread that keeps running: its user and system time over 200 ms, and a few samples
/// of its program counter (stopped for a moment with PTRACE_SEIZE + PTRACE_INTERRUPT, then
/// let go), each with the mapping it falls in and the offset there (for addr2line).
fn where_it_runs(pid: i32, tid: i32) -> String {
    let times = || -> Option<(u64, u64)> {
        let stat = procfs::process::Process::new(pid)
            .ok()?
            .task_from_tid(tid)
            .ok()?
            .stat()
            .ok()?;
        Some((stat.utime, stat.stime))
    };
    let before = times();
    sleep(Duration::from_millis(200));
    let after = times();
    let mut out = match (before, after) {
        (Some((u0, s0)), Some((u1, s1))) => {
            format!(
                "    over 200 ms: user {} ticks, system {} ticks\n",
                u1 - u0,
                s1 - s0
            )
        }
        _ => "    (its times could not be read)\n".to_string(),
    };
    let maps = procfs::process::Process::new(pid)
        .and_then(|p| p.maps())
        .map(|m| m.0)
        .unwrap_or_default();
    for _ in 0..5 {
        let at = match sample_pc(tid) {
            Ok(pcs) => pcs,
            Err(e) => {
                out.push_str(&format!("    pc sample failed: {e}\n"));
                break;
            }
        };
        for (name, addr) in at {
            let place = maps
                .iter()
                .find(|m| (m.address.0..m.address.1).contains(&addr))
                .map(|m| format!("{:?} + {:#x}", m.pathname, addr - m.address.0 + m.offset))
                .unwrap_or_else(|| "no mapping".into());
            out.push_str(&format!("    {name} {addr:#x}: {place}\n"));
        }
        sleep(Duration::from_millis(50));
    }
    out
}

/// The thread's program counter (and link register on aarch64), read at a ptrace stop the
/// thread leaves again at once.
fn sample_pc(tid: i32) -> Result<Vec<(&'static str, u64)>, Errno> {
    use nix::sys::ptrace;
    let t = Pid::from_raw(tid);
    ptrace::seize(t, ptrace::Options::empty())?;
    let got = ptrace::interrupt(t)
        .and_then(|_| waitpid(t, Some(WaitPidFlag::__WALL)))
        .and_then(|_| ptrace::getregs(t));
    let _ = ptrace::detach(t, None);
    let regs = got?;
    #[cfg(target_arch = "x86_64")]
    return Ok(vec![("pc", regs.rip)]);
    #[cfg(target_arch = "aarch64")]
    return Ok(vec![("pc", regs.pc), ("lr", regs.regs[30])]);
}

fn read_all(f: &mut File) -> String {
    let mut s = String::new();
    f.seek(SeekFrom::Start(0)).expect("seek output file");
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).expect("read output file");
    s.push_str(&String::from_utf8_lossy(&bytes));
    s
}

/// Starts `crest ARGS...` in the background.
pub fn spawn_crest<I, S>(args: I) -> CrestProcess
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    spawn_crest_with(args, |_| {})
}

/// Starts `crest ARGS...` after letting `customize` adjust the command (a pre_exec hook that
/// changes what crest inherits, say).
pub fn spawn_crest_with<I, S>(args: I, customize: impl FnOnce(&mut Command)) -> CrestProcess
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    setup();
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = tempfile::tempfile_in(env!("CARGO_TARGET_TMPDIR")).expect("stdout file");
    let err = tempfile::tempfile_in(env!("CARGO_TARGET_TMPDIR")).expect("stderr file");
    let mut cmd = Command::new(crest_bin());
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup stdout file"))
        .stderr(err.try_clone().expect("dup stderr file"));
    customize(&mut cmd);
    let child = cmd.spawn().expect("start crest");
    CrestProcess {
        child: Some(child),
        args: args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        out,
        err,
    }
}

/// Runs `crest ARGS...` to completion.
pub fn crest<I, S>(args: I) -> CrestOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    spawn_crest(args).wait(CREST_TIMEOUT)
}

/// `crest dump -t PID -D DIR [-R]`.
pub fn dump(pid: i32, dir: &Path, leave_running: bool) -> CrestOutput {
    let r: &[&OsStr] = if leave_running { &["-R".as_ref()] } else { &[] };
    dump_with(pid, dir, r)
}

/// `crest dump -t PID -D DIR EXTRA...`.
pub fn dump_with(pid: i32, dir: &Path, extra: &[&OsStr]) -> CrestOutput {
    let pid = pid.to_string();
    let mut args: Vec<&OsStr> = vec![
        "dump".as_ref(),
        "-t".as_ref(),
        pid.as_ref(),
        "-D".as_ref(),
        dir.as_os_str(),
    ];
    args.extend_from_slice(extra);
    crest(args)
}

/// `crest restore -D DIR -d [EXTRA...]`.
pub fn restore_detached(dir: &Path, extra: &[&str]) -> CrestOutput {
    let mut args: Vec<&OsStr> = vec![
        "restore".as_ref(),
        "-D".as_ref(),
        dir.as_os_str(),
        "-d".as_ref(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    crest(args)
}

// ---------------------------------------------------------------------------------------------
// Image directories
// ---------------------------------------------------------------------------------------------

/// `crest show DIR --json`, parsed.
pub fn show_json(dir: &Path) -> serde_json::Value {
    let out = crest(["show".as_ref(), dir.as_os_str(), "--json".as_ref()]);
    out.assert_ok();
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("crest show --json is not JSON ({e}): {out}"))
}

/// The regular files of an image directory, sorted by name.
pub fn image_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read image dir {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    files
}

/// Total size in bytes of the files of an image directory.
pub fn image_size(dir: &Path) -> u64 {
    image_files(dir)
        .iter()
        .map(|p| fs::metadata(p).expect("stat image file").len())
        .sum()
}

/// Page files hold raw page data (`pages-<pid>.img`); every other file is metadata.
pub fn is_page_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("pages-"))
}

/// Replaces `dst` with a fresh copy of the image directory `src` (same 0700/0600 modes).
pub fn copy_image(src: &Path, dst: &Path) {
    if dst.exists() {
        fs::remove_dir_all(dst).expect("remove old copy");
    }
    fs::create_dir(dst).expect("create copy dir");
    fs::set_permissions(dst, fs::Permissions::from_mode(0o700)).expect("chmod copy dir");
    for f in image_files(src) {
        let to = dst.join(f.file_name().expect("file name"));
        fs::copy(&f, &to).expect("copy image file");
    }
}

/// Flips every bit of the byte at `offset` of `file`.
pub fn flip_byte(file: &Path, offset: u64) {
    let mut bytes = fs::read(file).expect("read file to corrupt");
    bytes[offset as usize] ^= 0xff;
    fs::write(file, bytes).expect("write corrupted file");
}

/// Starts `crest restore --pidns -d --pidfile PIDFILE --inherit-fd fd[9]:RESOURCE -D DIR` with
/// `out` as crest's fd 9: a copy of the image in its own pid namespace whose file RESOURCE is
/// `out` instead.
pub fn spawn_pidns_copy(dir: &Path, resource: &Path, out: &File, pidfile: &Path) -> CrestProcess {
    use std::os::fd::AsRawFd;
    let raw = out.as_raw_fd();
    let inherit = format!("fd[9]:{}", resource.display());
    let args = [
        "restore".as_ref(),
        "--pidns".as_ref(),
        "-d".as_ref(),
        "--pidfile".as_ref(),
        pidfile.as_os_str(),
        "--inherit-fd".as_ref(),
        OsStr::new(&inherit),
        "-D".as_ref(),
        dir.as_os_str(),
    ];
    spawn_crest_with(args, |cmd| {
        // SAFETY: fcntl/dup2 in the forked child before exec are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                // dup2 onto itself would leave close-on-exec set.
                let r = if raw == 9 {
                    libc::fcntl(9, libc::F_SETFD, 0)
                } else {
                    libc::dup2(raw, 9)
                };
                if r < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    })
}

/// Starts `cmd` in a session of its own, its standard streams on /dev/null unless `cmd` set
/// them, and returns its pid (it is reaped by pid, like restored processes).
pub fn spawn_in_own_session(mut cmd: Command) -> i32 {
    setup();
    // SAFETY: setsid in the forked child before exec is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("start {:?}: {e}", cmd.get_program()));
    let pid = child.id() as i32;
    // Reaped by pid with waitpid (reap_pid), like the restored processes that are not std
    // children.
    drop(child);
    pid
}

impl Victim {
    /// One dump (which kills it) and detached restore, then waits for it to log again and
    /// verify itself; `ctx` names the cycle in a failure.
    pub fn dump_restore_verify(&mut self, dir: &Path, ctx: &str) {
        let before = self.last_logged();
        dump(self.pid, dir, false).assert_ok();
        self.reap();
        restore_detached(dir, &[]).assert_ok();
        self.mark_restored();
        self.wait_logging_after(before);
        self.verify().unwrap_or_else(|e| panic!("{ctx}: {e}"));
    }
}

/// Ends the `--pidns` copies whose pid files it lists when dropped, whatever happened to the
/// test: each copy's namespace init (its root's parent) is killed, which ends the namespace.
#[derive(Default)]
pub struct PidnsCopies(pub Vec<PathBuf>);

impl PidnsCopies {
    /// Ends the copy whose root is `root` now.
    pub fn end(root: i32) {
        let init = procfs::process::Process::new(root)
            .and_then(|p| p.stat())
            .map(|s| s.ppid)
            .unwrap_or(0);
        // Only a copy's own init, crest: a pid reused since by another process (of another
        // test running beside this one) is not ours to end.
        let is_crest = procfs::process::Process::new(init)
            .and_then(|p| p.stat())
            .is_ok_and(|s| s.comm == "crest");
        if init > 1 && is_crest {
            let _ = kill(Pid::from_raw(init), Signal::SIGKILL);
            let _ = reap_pid(init, TIMEOUT);
            let _ = reap_pid(root, TIMEOUT);
        }
    }
}

impl Drop for PidnsCopies {
    fn drop(&mut self) {
        for pidfile in &self.0 {
            if let Some(root) = fs::read_to_string(pidfile)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
            {
                if pid_exists(root) {
                    PidnsCopies::end(root);
                }
            }
        }
    }
}

/// A python3 program given as source (`python3 -c SCRIPT ARGS...`), started in a session of its
/// own with no stdio, killed and reaped whatever happens to the test.
pub struct PythonVictim {
    pub pid: i32,
}

impl PythonVictim {
    pub fn start(script: &str, args: &[&OsStr]) -> PythonVictim {
        PythonVictim::start_with_stdin(script, args, Stdio::null())
    }

    /// As [`PythonVictim::start`], with `stdin` as its standard input.
    pub fn start_with_stdin(script: &str, args: &[&OsStr], stdin: Stdio) -> PythonVictim {
        let mut cmd = Command::new("python3");
        cmd.arg("-c")
            .arg(script)
            .args(args)
            .stdin(stdin)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        PythonVictim {
            pid: spawn_in_own_session(cmd),
        }
    }
}

/// What every [`ControlledVictim`] script starts with: `ctl`, a UDP socket bound on
/// 127.0.0.1, and `serve(answer)`, which writes `{"ctl": PORT}` to the file named by the first
/// argument (through a rename, so it is read whole) and then sends back `answer(datagram)` for
/// each datagram.
const PY_CONTROL: &str = r#"
import json as _json, os as _os, socket as _socket, sys as _sys
ctl = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
ctl.bind(("127.0.0.1", 0))

def serve(answer):
    ready = _sys.argv[1]
    with open(ready + ".tmp", "w") as f:
        _json.dump({"ctl": ctl.getsockname()[1]}, f)
    _os.rename(ready + ".tmp", ready)
    while True:
        data, peer = ctl.recvfrom(1000)
        ctl.sendto(answer(data).encode(), peer)
"#;

/// A python3 victim that answers on a UDP control port of 127.0.0.1 (its script ends by
/// calling `serve`, see [`PY_CONTROL`]).
pub struct ControlledVictim {
    pub victim: PythonVictim,
    ctl: std::net::UdpSocket,
    port: u16,
}

impl ControlledVictim {
    /// Starts `script` with the ready file (in `work`) and `args`, and waits for its port.
    pub fn start(script: &str, work: &Path, args: &[&OsStr]) -> ControlledVictim {
        ControlledVictim::start_with_stdin(script, work, args, Stdio::null())
    }

    /// As [`ControlledVictim::start`], with `stdin` as the victim's standard input.
    pub fn start_with_stdin(
        script: &str,
        work: &Path,
        args: &[&OsStr],
        stdin: Stdio,
    ) -> ControlledVictim {
        let ready = work.join("ready");
        let mut all = vec![ready.as_os_str()];
        all.extend_from_slice(args);
        let victim = PythonVictim::start_with_stdin(&format!("{PY_CONTROL}{script}"), &all, stdin);
        let text = wait_for("the victim's control port", TIMEOUT, || {
            fs::read_to_string(&ready).ok()
        });
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("the victim's ready file is not JSON ({e}): {text}"));
        let ctl = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        ctl.set_read_timeout(Some(TIMEOUT)).unwrap();
        ControlledVictim {
            victim,
            ctl,
            port: v["ctl"].as_u64().expect("a control port") as u16,
        }
    }

    pub fn pid(&self) -> i32 {
        self.victim.pid
    }

    /// Dumps the victim into `work`/img (it is killed), hands `crest show --json` of the image
    /// to `image`, restores it detached, then dumps it again with -R into `work`/img-R; after
    /// the restore and after the second dump its answer to "state" must still be `before`.
    pub fn cycle(&self, work: &Path, before: &str, image: impl Fn(&serde_json::Value)) {
        let dir = work.join("img");
        dump(self.pid(), &dir, false).assert_ok();
        reap_pid(self.pid(), TIMEOUT).expect("the dumped victim is gone");
        image(&show_json(&dir));
        restore_detached(&dir, &[]).assert_ok();
        assert_eq!(self.ask(b"state"), before, "after the restore");
        let dir = work.join("img-R");
        dump(self.pid(), &dir, true).assert_ok();
        assert_eq!(self.ask(b"state"), before, "after a dump with -R");
    }

    /// Sends `msg` and returns the answer.
    pub fn ask(&self, msg: &[u8]) -> String {
        self.ctl
            .send_to(msg, ("127.0.0.1", self.port))
            .expect("send to the victim");
        let mut buf = vec![0u8; 65536];
        let n = self
            .ctl
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no answer to {msg:?}: {e}"));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

impl Drop for PythonVictim {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        let _ = reap_pid(self.pid, TIMEOUT);
    }
}

/// The pid of the lazy-pages daemon a `crest restore -d --lazy-pages` named on its stderr.
pub fn lazy_daemon_pid(out: &CrestOutput) -> i32 {
    let at = out
        .stderr
        .find("the daemon (pid ")
        .unwrap_or_else(|| panic!("no daemon named: {out}"));
    let rest = &out.stderr[at + "the daemon (pid ".len()..];
    rest[..rest.find(')').expect("a closing parenthesis")]
        .parse()
        .expect("a pid")
}
