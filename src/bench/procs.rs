//! The processes a bench starts: spawning a workload in a session of its own, reaping (the
//! bench is a child subreaper, so restored processes whose restoring tool exited become its
//! children), ending a process by pid, and dropping image files from the page cache.
//!
//! Nothing here ends a process the bench did not start or restore: every kill names the pid
//! (or the process group the bench created for the workload, whose leader is that pid).

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{getpgid, Pid};

use super::BenchError;

/// Exit statuses of children reaped while waiting for something else, by pid.
static REAPED: Mutex<Option<HashMap<i32, String>>> = Mutex::new(None);

/// Processes the bench started or restored and has not ended yet (ended on SIGINT/SIGTERM).
static LIVE: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// Remembers a process to end if the bench is interrupted (a restored one: its pid).
pub fn track(pid: i32) {
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).insert(pid);
}

/// The bench's work directory, removed on SIGINT/SIGTERM/SIGHUP (None when kept).
static WORK_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Names the work directory to remove if the bench is interrupted.
pub fn remove_on_signals(dir: Option<PathBuf>) {
    *WORK_DIR.lock().unwrap_or_else(|e| e.into_inner()) = dir;
}

/// Forgets a process that turned out not to be the bench's (a restore that failed).
pub fn untrack(pid: i32) {
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).remove(&pid);
}

/// Set once SIGINT, SIGTERM or SIGHUP arrived: the bench stops starting things, ends what runs
/// and returns.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// Whether the bench was interrupted (every wait loop checks it).
pub fn stopping() -> bool {
    STOPPING.load(Ordering::SeqCst)
}

/// On SIGINT, SIGTERM or SIGHUP: the bench stops (its wait loops see [`stopping`], end what they
/// started and return; nothing new is spawned). On a second one, or when the bench has not
/// stopped within 60 s: end every process it started or restored, by pid, remove the work
/// directory and exit. The workloads run in sessions of their own: a Ctrl-C on the terminal
/// does not reach them.
pub fn end_all_on_signals() -> Result<(), BenchError> {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    // Blocked in this thread and so in the threads started later; a spawned command starts
    // with an empty mask (std resets it).
    set.thread_block()
        .map_err(|e| BenchError::Setup(format!("pthread_sigmask: {e}")))?;
    std::thread::spawn(move || {
        let sig = set.wait().unwrap_or(Signal::SIGTERM);
        eprintln!(
            "\ncrest bench: {} received: stopping, ending the processes it started",
            sig.as_str()
        );
        STOPPING.store(true, Ordering::SeqCst);
        // A second signal, or a bench that does not stop: end everything from here.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(set.wait().unwrap_or(Signal::SIGTERM));
        });
        let sig = rx.recv_timeout(Duration::from_secs(60)).unwrap_or(sig);
        let pids: Vec<i32> = LIVE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect();
        for pid in pids {
            let _ = end(pid);
        }
        if let Some(dir) = WORK_DIR.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        std::process::exit(128 + sig as i32);
    });
    Ok(())
}

/// Makes the bench a child subreaper: a restored process whose restoring tool exits (crest
/// restore -d, criu restore -d) becomes its child, so it can reap it once it ends it.
pub fn become_subreaper() -> Result<(), BenchError> {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) only sets a flag of this process.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(BenchError::Setup(format!(
            "prctl(PR_SET_CHILD_SUBREAPER) failed: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

fn describe(status: WaitStatus) -> Option<(i32, String)> {
    match status {
        WaitStatus::Exited(pid, code) => Some((pid.as_raw(), format!("exit status {code}"))),
        WaitStatus::Signaled(pid, sig, _) => {
            Some((pid.as_raw(), format!("killed by {}", sig.as_str())))
        }
        _ => None,
    }
}

/// Reaps every child that has ended, remembering how each ended.
pub fn reap_all() {
    let mut map = REAPED.lock().unwrap_or_else(|e| e.into_inner());
    let map = map.get_or_insert_with(HashMap::new);
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(status) => {
                if let Some((pid, how)) = describe(status) {
                    // Gone: its pid may be anyone's now.
                    LIVE.lock().unwrap_or_else(|e| e.into_inner()).remove(&pid);
                    map.insert(pid, how);
                }
            }
        }
    }
}

/// How a child the bench spawned ended (once, and only once it has been reaped).
pub fn take_status(pid: i32) -> Option<String> {
    reap_all();
    let mut map = REAPED.lock().unwrap_or_else(|e| e.into_inner());
    map.as_mut().and_then(|m| m.remove(&pid))
}

fn forget_status(pid: i32) {
    let mut map = REAPED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(m) = map.as_mut() {
        m.remove(&pid);
    }
}

/// Whether `pid` runs (exists and is not a zombie).
pub fn running(pid: i32) -> bool {
    reap_all();
    crate::proc::bench::runs(pid)
}

/// Waits until `pid` no longer exists (reaping it if it is the bench's child).
pub fn wait_gone(pid: i32, timeout: Duration) -> Result<(), BenchError> {
    let deadline = Instant::now() + timeout;
    loop {
        reap_all();
        if !crate::proc::bench::exists(pid) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Process(format!(
                "pid {pid} still exists {} s after it was ended",
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Ends a process the bench started or restored, by pid: the whole process group when the
/// process leads one (the bench starts every workload as the leader of a session of its own,
/// and a restore keeps that), and waits until the pid is free again.
pub fn end(pid: i32) -> Result<(), BenchError> {
    if pid <= 1 {
        return Ok(());
    }
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).remove(&pid);
    let target = Pid::from_raw(pid);
    let leader = getpgid(Some(target)) == Ok(target);
    if leader {
        let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
    }
    let _ = kill(target, Signal::SIGKILL);
    wait_gone(pid, Duration::from_secs(60))?;
    if leader {
        // The rest of its group too (a script's JVM): until then it may hold the workload's port.
        wait_group_gone(pid, true)?;
    }
    Ok(())
}

/// Waits until no live process is left in group `pgid` (killing them again with `kill`: the
/// group is one the bench made for a workload).
pub fn wait_group_gone(pgid: i32, kill_them: bool) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while group_alive(pgid) {
        if Instant::now() > deadline {
            return Err(BenchError::Process(format!(
                "processes of group {pgid} still run 60 s after it was ended"
            )));
        }
        if kill_them {
            let _ = kill(Pid::from_raw(-pgid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// `prefix` with `.suffix` appended (not replacing an extension).
pub fn suffixed(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(".");
    s.push(suffix);
    PathBuf::from(s)
}

/// A command the bench runs with its output going to files.
pub struct Spawned {
    pub pid: i32,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

/// Spawns `argv` with stdin from /dev/null, stdout and stderr into `out_prefix`.out/.err (appended), as
/// the leader of a new session (a process to be dumped must not share the bench's terminal).
pub fn spawn(
    argv: &[String],
    out_prefix: &Path,
    cwd: Option<&Path>,
) -> Result<Spawned, BenchError> {
    spawn_with_env(argv, &[], out_prefix, cwd)
}

/// [`spawn`] with extra environment variables.
pub fn spawn_with_env(
    argv: &[String],
    env: &[(String, String)],
    out_prefix: &Path,
    cwd: Option<&Path>,
) -> Result<Spawned, BenchError> {
    let stdout = suffixed(out_prefix, "out");
    let stderr = suffixed(out_prefix, "err");
    let open = |p: &Path| {
        File::create(p)
            .map_err(|e| BenchError::Setup(format!("cannot create {}: {e}", p.display())))
    };
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(open(&stdout)?)
        .stderr(open(&stderr)?)
        .envs(env.iter().map(|(k, v)| (k, v)));
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    // SAFETY: the closure runs in the forked child before exec and only calls setsid and
    // signal(SIG_DFL), which are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // A bench started in the background (nohup, `&` in a script) has these ignored;
            // the workload starts as it would from a terminal.
            for sig in [libc::SIGHUP, libc::SIGINT, libc::SIGQUIT] {
                libc::signal(sig, libc::SIG_DFL);
            }
            Ok(())
        });
    }
    // Under the lock of the live set, so that an interruption either sees this process or
    // stops it from starting.
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    if stopping() {
        return Err(BenchError::Process("interrupted".into()));
    }
    let child = cmd
        .spawn()
        .map_err(|e| BenchError::Process(format!("cannot start {}: {e}", argv[0])))?;
    let pid = child.id() as i32;
    live.insert(pid);
    drop(live);
    forget_status(pid);
    // The bench reaps its children itself (reap_all), by pid.
    drop(child);
    Ok(Spawned {
        pid,
        stdout,
        stderr,
    })
}

/// Runs `argv` to completion (output into `out_prefix`.out/.err); Ok(elapsed) when it exits 0,
/// else the failure with the end of its output.
pub fn run(argv: &[String], out_prefix: &Path, timeout: Duration) -> Result<Duration, String> {
    run_with_env(argv, &[], out_prefix, timeout)
}

/// [`run`] with extra environment variables.
pub fn run_with_env(
    argv: &[String],
    env: &[(String, String)],
    out_prefix: &Path,
    timeout: Duration,
) -> Result<Duration, String> {
    let t0 = Instant::now();
    let s = spawn_with_env(argv, env, out_prefix, None).map_err(|e| e.to_string())?;
    loop {
        if let Some(how) = take_status(s.pid) {
            let elapsed = t0.elapsed();
            if how == "exit status 0" {
                return Ok(elapsed);
            }
            return Err(format!(
                "{} failed ({how}): {}; command: `{}`",
                short(argv),
                tail_of(&[&s.stderr, &s.stdout]),
                argv.join(" ")
            ));
        }
        if stopping() {
            let _ = end(s.pid);
            return Err("interrupted".into());
        }
        if t0.elapsed() > timeout {
            let _ = end(s.pid);
            return Err(format!(
                "`{}` did not finish within {} s",
                argv.join(" "),
                timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A command in two words for messages: its program's name and first argument ("crest
/// restore", "criu dump").
pub fn short(argv: &[String]) -> String {
    let prog = Path::new(&argv[0])
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    match argv.get(1) {
        Some(a) if !a.starts_with('-') => format!("{prog} {a}"),
        _ => prog,
    }
}

/// The last few lines of the given files, joined on one line (for error messages).
pub fn tail_of(files: &[&Path]) -> String {
    let mut lines = Vec::new();
    for f in files {
        if let Ok(text) = std::fs::read_to_string(f) {
            lines.extend(
                text.lines()
                    .map(str::to_string)
                    .filter(|l| !l.trim().is_empty()),
            );
        }
    }
    let start = lines.len().saturating_sub(4);
    let text = lines[start..].join(" | ");
    if text.is_empty() {
        "(no output)".to_string()
    } else {
        text
    }
}

/// Drops every file under `dir` from the page cache (posix_fadvise POSIX_FADV_DONTNEED; never a
/// machine-wide drop_caches).
pub fn evict(dir: &Path) -> Result<(), BenchError> {
    for entry in walk(dir) {
        let f = File::open(&entry).map_err(|e| {
            BenchError::Setup(format!("cannot open {} to evict it: {e}", entry.display()))
        })?;
        nix::fcntl::posix_fadvise(
            &f,
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .map_err(|e| {
            BenchError::Setup(format!(
                "posix_fadvise(DONTNEED) on {}: {e}",
                entry.display()
            ))
        })?;
    }
    Ok(())
}

/// Every regular file under `dir`.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

/// Total size of the files under `dir`, in bytes.
pub fn dir_bytes(dir: &Path) -> u64 {
    walk(dir)
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// Whether any live process is in process group `pgid` (a workload and whatever it started).
pub fn group_alive(pgid: i32) -> bool {
    reap_all();
    !crate::proc::bench::group_members(pgid).is_empty()
}
