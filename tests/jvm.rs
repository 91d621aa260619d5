//! The HotSpot JVM (issue #4): a busy Java program (tests/java/Victim.java: a thread pool, a
//! scheduled executor ticking every millisecond, a producer/consumer on a blocking queue,
//! JIT-hot loops, 64 MiB of live arrays with a known checksum, allocation churn, an append-mode
//! log) goes through three dump/restore cycles on JDK 17 and on JDK 25, verifying itself after
//! each (System.gc() included); afterwards it is a normal JVM: `jcmd PID VM.version` answers and
//! SIGTERM runs its shutdown hook and ends it with its own exit code. A JVM with 1000 threads
//! dumps and restores with every thread under its tid.
//!
//! The Java sources are compiled at test time with each JDK's own javac. A JDK that is not
//! installed is skipped with a "SKIPPED ..." line in the test output. JVMs are heavy on a 2-core machine,
//! so the tests of this file run one at a time (JVM_LOCK).

mod common;

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::hash::{Hash, Hasher};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::http::HttpConnection;
use common::*;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

static JVM_LOCK: Mutex<()> = Mutex::new(());

/// One JVM test at a time (a failed test poisons the lock; the next one still runs).
fn jvm_lock() -> MutexGuard<'static, ()> {
    JVM_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The heap limit the victims run with: room for 64 MiB of live arrays and the churn.
const XMX: &str = "-Xmx256m";

/// An installed JDK.
struct Jdk {
    version: u32,
    home: PathBuf,
}

impl Jdk {
    /// The JDK of this feature version, or None (saying so on stderr) when it is not installed.
    fn find(version: u32) -> Option<Jdk> {
        // Debian names a JDK's directory after the architecture it is built for.
        let deb_arch = if cfg!(target_arch = "aarch64") {
            "arm64"
        } else {
            "amd64"
        };
        let mut homes = vec![PathBuf::from(match version {
            17 => format!("/usr/lib/jvm/java-17-openjdk-{deb_arch}"),
            25 => format!("/usr/lib/jvm/temurin-25-jdk-{deb_arch}"),
            _ => panic!("no known location for JDK {version}"),
        })];
        // The machine's default javac, if it belongs to a JDK of this version.
        if let Ok(javac) = fs::canonicalize("/usr/bin/javac") {
            if let Some(home) = javac.parent().and_then(Path::parent) {
                homes.push(home.to_path_buf());
            }
        }
        for home in &homes {
            let jdk = Jdk {
                version,
                home: home.clone(),
            };
            let complete = ["java", "javac", "jar", "jcmd"]
                .iter()
                .all(|tool| jdk.bin(tool).is_file());
            if complete && jdk.release_version().as_deref() == Some(&version.to_string()) {
                return Some(jdk);
            }
        }
        say_skipped(&format!(
            "JDK {version} not found at {} (java, javac, jar and jcmd of that version)",
            homes
                .iter()
                .map(|h| h.display().to_string())
                .collect::<Vec<_>>()
                .join(" or ")
        ));
        None
    }

    fn bin(&self, tool: &str) -> PathBuf {
        self.home.join("bin").join(tool)
    }

    /// The feature version in the JDK's `release` file (JAVA_VERSION="17.0.15" -> "17").
    fn release_version(&self) -> Option<String> {
        let text = fs::read_to_string(self.home.join("release")).ok()?;
        let line = text.lines().find(|l| l.starts_with("JAVA_VERSION="))?;
        let v = line.trim_start_matches("JAVA_VERSION=").trim_matches('"');
        Some(v.split('.').next()?.to_string())
    }

    /// Compiles tests/java/*.java with this JDK's javac, once per content, into a directory
    /// that is never rewritten (a running or dumped JVM may have its classes or jar open).
    /// Returns the class directory and a jar of it.
    fn compile(&self) -> (PathBuf, PathBuf) {
        let src_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/java");
        let mut sources: Vec<PathBuf> = fs::read_dir(&src_dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", src_dir.display()))
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.extension() == Some(OsStr::new("java")))
            .collect();
        sources.sort();
        let mut h = DefaultHasher::new();
        for s in &sources {
            s.file_name().hash(&mut h);
            fs::read(s).expect("read java source").hash(&mut h);
        }
        self.home.hash(&mut h);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("java")
            .join(format!("jdk{}-{:016x}", self.version, h.finish()));
        let classes = dir.join("classes");
        let jar = dir.join("victim.jar");
        if classes.is_dir() && jar.is_file() {
            return (classes, jar);
        }
        // Build in a private directory beside it (one file system: the aarch64 runner keeps
        // this cache on the host while the rest of the tmpdir is the guest's) and rename it
        // into place whole.
        fs::create_dir_all(dir.parent().unwrap()).expect("create java dir");
        let tmp = tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(dir.parent().unwrap())
            .expect("create java build dir");
        let tmp_classes = tmp.path().join("classes");
        let out = run(
            Command::new(self.bin("javac"))
                .arg("-d")
                .arg(&tmp_classes)
                .args(&sources),
            JVM_TIMEOUT,
        );
        assert!(out.status.success(), "javac failed: {out}");
        let out = run(
            Command::new(self.bin("jar"))
                .arg("--create")
                .arg("--file")
                .arg(tmp.path().join("victim.jar"))
                .arg("--main-class")
                .arg("Victim")
                .arg("-C")
                .arg(&tmp_classes)
                .arg("."),
            JVM_TIMEOUT,
        );
        assert!(out.status.success(), "jar failed: {out}");
        let built = tmp.keep();
        if fs::rename(&built, &dir).is_err() {
            // Another test binary built the same content first: use theirs.
            let _ = fs::remove_dir_all(&built);
        }
        assert!(
            classes.is_dir() && jar.is_file(),
            "no classes in {}",
            dir.display()
        );
        (classes, jar)
    }

    /// Starts the Java victim in `mode` with `classpath` (the class directory or the jar).
    fn start(&self, classpath: &Path, mode: &[&str]) -> Jvm {
        self.start_with_flags(classpath, &[XMX], mode)
    }

    /// Like [`Jdk::start`], with these JVM options instead of the default heap limit.
    fn start_with_flags(&self, classpath: &Path, flags: &[&str], mode: &[&str]) -> Jvm {
        let mut pre: Vec<&OsStr> = flags.iter().map(OsStr::new).collect();
        pre.extend(["-cp".as_ref(), classpath.as_os_str(), "Victim".as_ref()]);
        Jvm(Victim::start_program(
            Kind::Java,
            &self.bin("java"),
            &pre,
            |cmd| {
                cmd.args(mode)
                    .env_remove("JAVA_TOOL_OPTIONS")
                    .env_remove("_JAVA_OPTIONS")
                    .env_remove("JDK_JAVA_OPTIONS");
            },
        ))
    }
}

/// A JVM victim. Dropping it kills the JVM by pid like any victim, then removes what a killed
/// JVM leaves behind under its pid: its performance-data file and its attach socket.
struct Jvm(Victim);

impl Drop for Jvm {
    fn drop(&mut self) {
        self.0.kill();
        let pid = self.0.pid;
        if !pid_exists(pid) {
            let _ = fs::remove_file(hsperfdata(pid));
            let _ = fs::remove_file(format!("/tmp/.java_pid{pid}"));
        }
    }
}

impl std::ops::Deref for Jvm {
    type Target = Victim;
    fn deref(&self) -> &Victim {
        &self.0
    }
}

impl std::ops::DerefMut for Jvm {
    fn deref_mut(&mut self) -> &mut Victim {
        &mut self.0
    }
}

/// What a helper command did.
struct Output {
    what: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} -> {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what, self.status, self.stdout, self.stderr
        )
    }
}

/// Runs a command to completion with its output in temporary files (no pipes: nothing can be
/// left holding them), killing it by pid if it takes longer than `timeout`.
fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut out = tempfile::tempfile_in(env!("CARGO_TARGET_TMPDIR")).expect("stdout file");
    let mut err = tempfile::tempfile_in(env!("CARGO_TARGET_TMPDIR")).expect("stderr file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup stdout file"))
        .stderr(err.try_clone().expect("dup stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {timeout:?}");
        }
        sleep(Duration::from_millis(20));
    };
    let read = |f: &mut File| {
        let mut bytes = Vec::new();
        f.seek(SeekFrom::Start(0)).expect("seek output");
        f.read_to_end(&mut bytes).expect("read output");
        String::from_utf8_lossy(&bytes).into_owned()
    };
    Output {
        what,
        status,
        stdout: read(&mut out),
        stderr: read(&mut err),
    }
}

/// The JVM's performance-data file: a shared file mapping of /tmp/hsperfdata_<user>/<pid>.
fn hsperfdata(pid: i32) -> PathBuf {
    let user = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .expect("look up the user")
        .expect("the user has a name");
    PathBuf::from(format!("/tmp/hsperfdata_{}/{pid}", user.name))
}

/// The victim's own threads (named cv-...): long-lived, so a restore must bring back each one
/// under its tid. The JVM's own threads (compiler threads in particular) come and go.
fn victim_threads(pid: i32) -> BTreeMap<i32, TaskInfo> {
    tasks(pid)
        .into_iter()
        .filter(|(_, t)| t.comm.starts_with("cv-"))
        .collect()
}

/// Dumps (killing it) and restores the victim once; returns the dump and restore wall times and
/// the image size, after checking its threads came back under their tids.
fn cycle(v: &mut Victim, dir: &Path, before_restore: impl FnOnce()) -> (Duration, Duration, u64) {
    let ours = victim_threads(v.pid);
    let t0 = Instant::now();
    dump(v.pid, dir, false).assert_ok();
    let dump_time = t0.elapsed();
    v.reap();
    before_restore();
    let t1 = Instant::now();
    restore_detached(dir, &[]).assert_ok();
    let restore_time = t1.elapsed();
    v.mark_restored();
    assert_tasks_kept(v.pid, &ours, false, false, &dir.display().to_string());
    (dump_time, restore_time, image_size(dir))
}

/// Three dump/restore cycles of the full Java victim, then jcmd and SIGTERM.
fn three_cycles_then_jcmd_and_sigterm(version: u32, from_jar: bool) {
    let Some(jdk) = Jdk::find(version) else {
        return;
    };
    let _serial = jvm_lock();
    let (classes, jar) = jdk.compile();
    let mut v = jdk.start(if from_jar { &jar } else { &classes }, &["full"]);
    v.verify()
        .unwrap_or_else(|e| panic!("JDK {version}: the victim fails before any dump: {e}"));
    let perf = hsperfdata(v.pid);
    let perf_len = fs::metadata(&perf)
        .unwrap_or_else(|e| panic!("JDK {version}: no {} ({e})", perf.display()))
        .len();
    let mut previous: Option<PathBuf> = None;

    for n in 1..=3 {
        let ctx = format!("JDK {version}, cycle {n}");
        let dir = v.work.join(format!("img{n}"));
        let fds_before = v.fd_table();
        let at = v.last_logged();
        let (dump_time, restore_time, size) = cycle(&mut v, &dir, || {
            if n == 2 {
                // What another JVM starting now would do: it deletes the performance-data file
                // of a pid that is not running. The restore must bring it back.
                fs::remove_file(&perf)
                    .unwrap_or_else(|e| panic!("{ctx}: remove {}: {e}", perf.display()));
            }
        });
        // The time until the restored JVM logs a line it had not logged when crest returned.
        let t = Instant::now();
        v.wait_log_grows(v.log_entries().len());
        let first_line = t.elapsed();
        v.wait_logging_after(at);
        v.assert_running();
        v.verify().unwrap_or_else(|e| panic!("{ctx}: {e}"));
        // The GC hint before the first dump starts the JVM's attach listener: one socket more,
        // nothing else changed.
        let mut fds_after = v.fd_table();
        if n == 1 {
            let added: Vec<i32> = fds_after
                .keys()
                .filter(|fd| !fds_before.contains_key(fd))
                .copied()
                .collect();
            assert!(added.len() <= 1, "{ctx}: fds {added:?} appeared");
            for fd in added {
                assert_eq!(
                    fds_after.remove(&fd).as_deref(),
                    Some("Socket"),
                    "{ctx}: fd {fd}"
                );
            }
        }
        assert_eq!(fds_after, fds_before, "{ctx}: fd table changed");
        v.assert_log_consecutive();
        let len = fs::metadata(&perf)
            .unwrap_or_else(|e| panic!("{ctx}: {} after the restore: {e}", perf.display()))
            .len();
        assert_eq!(len, perf_len, "{ctx}: size of {}", perf.display());
        eprintln!(
            "{ctx}: dump {dump_time:?}, image {:.1} MiB, restore {restore_time:?}, \
             first log line {first_line:?} later",
            size as f64 / (1024.0 * 1024.0)
        );
        // Images are large: keep only the newest.
        if let Some(old) = previous.replace(dir) {
            let _ = fs::remove_dir_all(old);
        }
    }

    // A restored JVM is a normal JVM: the attach mechanism works (SIGQUIT, then a UNIX socket
    // its Attach Listener thread creates)...
    let out = run(
        Command::new(jdk.bin("jcmd"))
            .arg("-J-Dsun.tools.attach.attachTimeout=60000")
            .arg(v.pid_str())
            .arg("VM.version"),
        JVM_TIMEOUT,
    );
    assert!(
        out.status.success() && out.stdout.contains(&format!("JDK {version}")),
        "JDK {version}: jcmd VM.version on the restored JVM: {out}"
    );
    v.verify()
        .unwrap_or_else(|e| panic!("JDK {version}: after jcmd: {e}"));

    // ...and SIGTERM runs its shutdown hooks and ends it with the JVM's own code, 128 + 15.
    kill(Pid::from_raw(v.pid), Signal::SIGTERM).expect("send SIGTERM");
    let status = v.reap();
    assert_eq!(
        status,
        Some(WaitStatus::Exited(Pid::from_raw(v.pid), 143)),
        "JDK {version}: how the restored JVM ended on SIGTERM; stderr: {}",
        v.stderr_text()
    );
    let hook = fs::read_to_string(v.ctl.join("shutdown-hook-ran"))
        .unwrap_or_else(|e| panic!("JDK {version}: the shutdown hook did not run: {e}"));
    assert!(
        hook.starts_with(&format!("pid {} ", v.pid)),
        "JDK {version}: the shutdown hook wrote {hook:?}"
    );
}

#[test]
fn jdk17_three_cycles_then_jcmd_and_sigterm() {
    // Run from a jar: the JVM keeps it open.
    three_cycles_then_jcmd_and_sigterm(17, true);
}

#[test]
fn jdk25_three_cycles_then_jcmd_and_sigterm() {
    // Run from the class directory.
    three_cycles_then_jcmd_and_sigterm(25, false);
}

#[test]
fn jvm_with_1000_threads_dumps_and_restores() {
    const N: usize = 1000;
    let Some(jdk) = Jdk::find(17).or_else(|| Jdk::find(25)) else {
        return;
    };
    let _serial = jvm_lock();
    let (classes, _) = jdk.compile();
    let n = N.to_string();
    let mut v = jdk.start(&classes, &["threads", &n]);
    v.verify()
        .unwrap_or_else(|e| panic!("the {N}-thread JVM fails before the dump: {e}"));
    let sleepers = victim_threads(v.pid)
        .values()
        .filter(|t| t.comm.starts_with("cv-t-"))
        .count();
    assert_eq!(sleepers, N, "the victim's sleeping threads");
    let total = thread_ids(v.pid).len();

    let dir = v.work.join("img");
    let at = v.last_logged();
    let (dump_time, restore_time, size) = cycle(&mut v, &dir, || {});
    let restored = thread_ids(v.pid).len();
    assert!(
        restored > N,
        "the restored JVM has {restored} threads, not the {N} sleepers and its own"
    );
    v.wait_logging_after(at);
    v.assert_running();
    v.verify()
        .unwrap_or_else(|e| panic!("the restored {N}-thread JVM: {e}"));
    eprintln!(
        "JDK {}, {N} threads ({total} in all before the dump, {restored} after the restore): \
         dump {dump_time:?}, image {:.1} MiB, restore {restore_time:?}",
        jdk.version,
        size as f64 / (1024.0 * 1024.0)
    );
}

#[test]
fn jvm_victim_verifies_itself_and_exits_on_request() {
    // Without crest: the Java victim starts, verifies, and its exit request runs the shutdown
    // hook and ends the JVM with the code asked for.
    let Some(jdk) = Jdk::find(17).or_else(|| Jdk::find(25)) else {
        return;
    };
    let _serial = jvm_lock();
    let (classes, _) = jdk.compile();
    let mut v = jdk.start(&classes, &["full"]);
    let first = v.verify().expect("fresh Java victim verifies");
    let second = v.verify().expect("Java victim verifies twice");
    assert!(second > first, "the log counter does not advance");
    v.request_exit(7);
    let status = v.reap();
    assert_eq!(
        status,
        Some(WaitStatus::Exited(Pid::from_raw(v.pid), 7)),
        "exit status; stderr: {}",
        v.stderr_text()
    );
    assert!(
        v.ctl.join("shutdown-hook-ran").is_file(),
        "the shutdown hook did not run"
    );
}

/// `jcmd PID VM.version` against the victim; fails the test unless the JVM answers.
fn jcmd_version(jdk: &Jdk, v: &Victim, ctx: &str) {
    let out = run(
        Command::new(jdk.bin("jcmd"))
            .arg("-J-Dsun.tools.attach.attachTimeout=60000")
            .arg(v.pid_str())
            .arg("VM.version"),
        JVM_TIMEOUT,
    );
    assert!(
        out.status.success() && out.stdout.contains(&format!("JDK {}", jdk.version)),
        "{ctx}: jcmd VM.version: {out}"
    );
}

/// Once jcmd has attached, the JVM has its attach listener: a thread blocked in accept() on a
/// UNIX socket bound as /tmp/.java_pid<pid>.tmp and renamed to /tmp/.java_pid<pid>. Dumps and
/// restores carry it over (the killed JVM's socket file is replaced), jcmd attaches to the
/// restored listener without signalling the JVM, and the JVM can be dumped again: dump ->
/// restore -> jcmd -> dump -> restore -> jcmd.
fn attach_listener_survives_cycles(version: u32) {
    let Some(jdk) = Jdk::find(version) else {
        return;
    };
    let _serial = jvm_lock();
    let (classes, _) = jdk.compile();
    let mut v = jdk.start(&classes, &["threads", "8"]);
    v.verify()
        .unwrap_or_else(|e| panic!("JDK {version}: the victim fails before any dump: {e}"));
    jcmd_version(&jdk, &v, &format!("JDK {version}, before any dump"));
    let socket = PathBuf::from(format!("/tmp/.java_pid{}", v.pid));
    for n in 1..=2 {
        let ctx = format!("JDK {version}, cycle {n}");
        let dir = v.work.join(format!("img{n}"));
        let at = v.last_logged();
        cycle(&mut v, &dir, || {});
        v.wait_logging_after(at);
        v.verify().unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let md = fs::symlink_metadata(&socket)
            .unwrap_or_else(|e| panic!("{ctx}: {} after the restore: {e}", socket.display()));
        assert!(
            std::os::unix::fs::FileTypeExt::is_socket(&md.file_type()),
            "{ctx}: {} is not a socket",
            socket.display()
        );
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o7777,
            0o600,
            "{ctx}: mode of {} (jcmd insists on owner-only access)",
            socket.display()
        );
        jcmd_version(&jdk, &v, &ctx);
        v.verify()
            .unwrap_or_else(|e| panic!("{ctx}: after jcmd: {e}"));
        let _ = fs::remove_dir_all(&dir);
    }
}

#[test]
fn jdk17_attach_listener_survives_dump_restore_jcmd_chains() {
    attach_listener_survives_cycles(17);
}

#[test]
fn jdk25_attach_listener_survives_dump_restore_jcmd_chains() {
    attach_listener_survives_cycles(25);
}

/// `VmRSS` of a process, in bytes.
fn rss_bytes(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line");
    kib * 1024
}

/// One run of the garbage-heavy victim (32 MiB live after 600 MiB of garbage, G1, -Xmx1g):
/// dump with `extra` options, restore, verify the live data. Returns the RSS just before the
/// dump, the image size and the dump's statistics.
fn garbage_heavy_cycle(jdk: &Jdk, classes: &Path, extra: &[&str]) -> (u64, u64, serde_json::Value) {
    let ctx = format!("JDK {}, dump {extra:?}", jdk.version);
    let mut v = jdk.start_with_flags(
        classes,
        &["-Xmx1g", "-XX:+UseG1GC"],
        &["garbage", "32", "600"],
    );
    v.verify()
        .unwrap_or_else(|e| panic!("{ctx}: the victim fails before the dump: {e}"));
    let dir = v.work.join("img");
    let stats_file = v.work.join("stats.json");
    let rss = rss_bytes(v.pid);
    let mut args: Vec<&OsStr> = vec!["--stats-json".as_ref(), stats_file.as_os_str()];
    args.extend(extra.iter().map(OsStr::new));
    dump_with(v.pid, &dir, &args).assert_ok();
    v.reap();
    let stats: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&stats_file).expect("read --stats-json file"))
            .expect("--stats-json writes JSON");
    let size = image_size(&dir);
    assert_eq!(stats["image_bytes"].as_u64(), Some(size), "{ctx}: {stats}");
    // Zero pages of anonymous memory are never written (the pagemap side is checked by the
    // page-dump unit tests). A page of a private file mapping that the JVM wrote zeros into is
    // stored (it differs from the file under it): a few such pages are allowed, never more than
    // one page in a hundred.
    let page_size = show_json(&dir)["inventory"]["page_size"]
        .as_u64()
        .expect("page size in the inventory") as usize;
    for file in image_files(&dir).into_iter().filter(|f| is_page_file(f)) {
        let data = fs::read(&file).expect("read page file");
        let pages = data.len() / page_size;
        let zero = data
            .chunks(page_size)
            .filter(|p| p.iter().all(|&b| b == 0))
            .count();
        assert!(
            zero * 100 <= pages,
            "{ctx}: {} holds {zero} all-zero pages of {pages}",
            file.display()
        );
    }

    let at = v.last_logged();
    restore_detached(&dir, &[]).assert_ok();
    v.mark_restored();
    v.wait_logging_after(at);
    v.verify()
        .unwrap_or_else(|e| panic!("{ctx}: the restored JVM: {e}"));
    (rss, size, stats)
}

/// The GC hint on a JVM that holds 32 MiB of live arrays after churning through 600 MiB of
/// garbage: the default dump writes at most half the JVM's RSS, less than a dump without the
/// hint, and both images restore into a JVM whose live data verifies.
fn gc_hint_shrinks_a_garbage_heavy_jvm(version: u32) {
    let Some(jdk) = Jdk::find(version) else {
        return;
    };
    let _serial = jvm_lock();
    let (classes, _) = jdk.compile();

    let (rss_plain, plain, plain_stats) = garbage_heavy_cycle(&jdk, &classes, &["--no-gc-hint"]);
    assert_eq!(plain_stats["stats"]["gc_hint"], "Off", "{plain_stats}");
    let (rss, hinted, stats) = garbage_heavy_cycle(&jdk, &classes, &[]);
    let done = &stats["stats"]["gc_hint"]["Done"];
    let protocol = if version >= 24 { 2 } else { 1 };
    assert_eq!(done["protocol_version"], protocol, "{stats}");
    assert!(
        done["heap_committed_after"].as_u64() < done["heap_committed_before"].as_u64(),
        "JDK {version}: the hint did not shrink the heap: {stats}"
    );
    let s = &stats["stats"];
    for key in [
        "pages_scanned",
        "pages_present",
        "pages_zero",
        "pages_written",
        "bytes_written",
    ] {
        assert!(s[key].is_u64(), "JDK {version}: no {key} in {stats}");
    }
    let phases: Vec<&str> = s["phases_us"]
        .as_array()
        .expect("phases")
        .iter()
        .map(|p| p[0].as_str().expect("phase name"))
        .collect();
    for phase in ["hint", "freeze", "parasite", "pages", "write"] {
        assert!(
            phases.contains(&phase),
            "JDK {version}: no {phase} phase: {phases:?}"
        );
    }
    eprintln!(
        "JDK {version}: rss {:.1} MiB -> image {:.1} MiB with the GC hint; rss {:.1} MiB -> \
         image {:.1} MiB without",
        mib(rss),
        mib(hinted),
        mib(rss_plain),
        mib(plain)
    );
    assert!(
        hinted <= rss / 2,
        "JDK {version}: image {hinted} bytes is more than half the RSS {rss}: {stats}"
    );
    assert!(
        hinted < plain,
        "JDK {version}: the hinted image ({hinted} bytes) is not smaller than the plain one \
         ({plain} bytes)"
    );
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[test]
fn jdk17_gc_hint_shrinks_a_garbage_heavy_jvm() {
    gc_hint_shrinks_a_garbage_heavy_jvm(17);
}

#[test]
fn jdk25_gc_hint_shrinks_a_garbage_heavy_jvm() {
    gc_hint_shrinks_a_garbage_heavy_jvm(25);
}

/// Three copies of one JVM image restored with `--pidns` beside the original (dumped with
/// `-R`): each runs under the original's pid in its own pid namespace, logs to the file it was
/// given (`--inherit-fd`), and answers jcmd (its attach socket and perf data live in the copy's
/// private /tmp).
fn three_jvm_copies_in_pid_namespaces(version: u32) {
    let Some(jdk) = Jdk::find(version) else {
        return;
    };
    let _serial = jvm_lock();
    let (classes, _) = jdk.compile();
    let v = jdk.start(&classes, &["threads", "4"]);
    v.verify()
        .unwrap_or_else(|e| panic!("JDK {version}: the victim fails before the dump: {e}"));
    let dir = v.work.join("img");
    dump(v.pid, &dir, true).assert_ok();

    // The three restores run at once.
    let _ends = PidnsCopies(
        (1..=3)
            .map(|i| v.work.join(format!("copy-{i}.pid")))
            .collect(),
    );
    let mut running = Vec::new();
    for i in 1..=3 {
        let log = v.work.join(format!("copy-{i}.log"));
        let file = File::create(&log).unwrap();
        let pidfile = v.work.join(format!("copy-{i}.pid"));
        let crest = spawn_pidns_copy(&dir, &v.log, &file, &pidfile);
        running.push((crest, file, pidfile, log));
    }
    let mut copies = Vec::new();
    for (crest, file, pidfile, log) in running {
        crest.wait(CREST_TIMEOUT).assert_ok();
        drop(file);
        let pid: i32 = fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        copies.push((pid, log));
    }
    for (pid, log) in &copies {
        let ctx = format!("JDK {version}, copy {pid}");
        // It logs under the original's pid, as its namespace shows it, into its own file.
        let want = format!("pid={} n=", v.pid);
        wait_for(&format!("{ctx} to log"), JVM_TIMEOUT, || {
            let text = fs::read_to_string(log).ok()?;
            (text.lines().filter(|l| l.starts_with(&want)).count() >= 3).then_some(())
        });
        let out = run(
            Command::new(jdk.bin("jcmd"))
                .arg("-J-Dsun.tools.attach.attachTimeout=60000")
                .arg(pid.to_string())
                .arg("VM.version"),
            JVM_TIMEOUT,
        );
        assert!(
            out.status.success() && out.stdout.contains(&format!("JDK {version}")),
            "{ctx}: jcmd VM.version: {out}"
        );
    }
    v.verify()
        .unwrap_or_else(|e| panic!("JDK {version}: the original after three copies: {e}"));
    for (pid, _) in copies {
        PidnsCopies::end(pid);
    }
}

#[test]
fn jdk17_three_copies_in_pid_namespaces_answer() {
    three_jvm_copies_in_pid_namespaces(17);
}

#[test]
fn jdk25_three_copies_in_pid_namespaces_answer() {
    three_jvm_copies_in_pid_namespaces(25);
}

/// A JVM that started a child with ProcessBuilder and talks to it through pipes: the dump
/// takes both, the restore brings both back under their pids, the JVM still the child's
/// parent, and the round trips go on with none lost, three times in a row.
fn jvm_with_a_child_process(version: u32) {
    let Some(jdk) = Jdk::find(version) else {
        return;
    };
    let _serial = jvm_lock();
    let (classes, _) = jdk.compile();
    let mut v = Jvm(Victim::start_program(
        Kind::Java,
        &jdk.bin("java"),
        &[
            OsStr::new(XMX),
            OsStr::new("-cp"),
            classes.as_os_str(),
            OsStr::new("ChildTalk"),
        ],
        |cmd| {
            cmd.env_remove("JAVA_TOOL_OPTIONS")
                .env_remove("_JAVA_OPTIONS")
                .env_remove("JDK_JAVA_OPTIONS");
        },
    ));
    // Forked by the thread running main, not by the leader: look at every thread's children.
    let child = wait_for("the JVM's child", JVM_TIMEOUT, || {
        let tasks = procfs::process::Process::new(v.pid).ok()?.tasks().ok()?;
        tasks
            .flatten()
            .filter_map(|t| t.children().ok())
            .flatten()
            .map(|c| c as i32)
            .next()
    });
    for n in 1..=3 {
        let ctx = format!("JDK {version}, cycle {n}");
        let dir = v.work.join(format!("img{n}"));
        let at = v.last_logged();
        dump(v.pid, &dir, false).assert_ok();
        v.reap();
        reap_pid(child, JVM_TIMEOUT).unwrap_or_else(|e| panic!("{ctx}: the child: {e}"));
        restore_detached(&dir, &[]).assert_ok();
        v.mark_restored();
        v.wait_logging_after(at + 20);
        let ppid = procfs::process::Process::new(child)
            .and_then(|p| p.stat())
            .map(|s| s.ppid)
            .unwrap_or_else(|e| panic!("{ctx}: the child {child} is not back: {e}"));
        assert_eq!(ppid, v.pid, "{ctx}: the child's parent");
        v.assert_log_consecutive();
        let _ = fs::remove_dir_all(&dir);
    }
    let _ = kill(Pid::from_raw(child), Signal::SIGKILL);
    let _ = reap_pid(child, JVM_TIMEOUT);
}

#[test]
fn jdk17_jvm_with_a_child_process_keeps_talking_to_it() {
    jvm_with_a_child_process(17);
}

#[test]
fn jdk25_jvm_with_a_child_process_keeps_talking_to_it() {
    jvm_with_a_child_process(25);
}

/// The clients the test keeps connected to a `server` mode victim across its dumps.
struct ServerClients {
    ports: BTreeMap<String, u16>,
    http4: HttpConnection,
    http6: HttpConnection,
    echo: Vec<std::net::TcpStream>,
    udp: std::net::UdpSocket,
}

impl ServerClients {
    fn connect(v: &Victim) -> ServerClients {
        let ports_file = v.ctl.join("ports");
        let text = wait_for("the server's ports", JVM_TIMEOUT, || {
            fs::read_to_string(&ports_file).ok()
        });
        let ports: BTreeMap<String, u16> = text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(k, p)| (k.to_string(), p.parse().expect("port")))
            .collect();
        let v4 = |name: &str| std::net::SocketAddr::from(([127, 0, 0, 1], ports[name]));
        let http4 = HttpConnection::open(v4("http4"));
        let http6 = HttpConnection::open(std::net::SocketAddr::from((
            std::net::Ipv6Addr::LOCALHOST,
            ports["http6"],
        )));
        let echo = (0..16)
            .map(|_| {
                let s = std::net::TcpStream::connect(v4("nio")).expect("connect to the NIO server");
                s.set_read_timeout(Some(JVM_TIMEOUT)).unwrap();
                s
            })
            .collect();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket");
        udp.set_read_timeout(Some(JVM_TIMEOUT)).unwrap();
        udp.connect(v4("udp")).expect("connect the UDP socket");
        ServerClients {
            ports,
            http4,
            http6,
            echo,
            udp,
        }
    }

    /// Every server answers on every connection the test holds, and on new ones; `round`
    /// makes each round's payloads differ.
    fn exercise(&mut self, v: &Victim, round: u32, ctx: &str) {
        let pid = v.pid;
        let a = self
            .http4
            .hello(pid, &format!("{ctx}, kept IPv4 HTTP connection"));
        let b = self
            .http6
            .hello(pid, &format!("{ctx}, kept IPv6 HTTP connection"));
        assert!(b > a, "{ctx}: the request counter went from {a} to {b}");
        let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], self.ports["http4"]));
        HttpConnection::open(v4).hello(pid, &format!("{ctx}, new IPv4 HTTP connection"));
        let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, self.ports["http6"]));
        HttpConnection::open(v6).hello(pid, &format!("{ctx}, new IPv6 HTTP connection"));

        let nio = std::net::SocketAddr::from(([127, 0, 0, 1], self.ports["nio"]));
        let mut fresh = std::net::TcpStream::connect(nio)
            .unwrap_or_else(|e| panic!("{ctx}: new connection to the NIO server: {e}"));
        fresh.set_read_timeout(Some(JVM_TIMEOUT)).unwrap();
        for (i, s) in self
            .echo
            .iter_mut()
            .chain(std::iter::once(&mut fresh))
            .enumerate()
        {
            use std::io::Write;
            let msg = format!("round {round} client {i}\n");
            s.write_all(msg.as_bytes())
                .unwrap_or_else(|e| panic!("{ctx}: NIO client {i}: send: {e}"));
            let mut back = vec![0u8; msg.len()];
            s.read_exact(&mut back)
                .unwrap_or_else(|e| panic!("{ctx}: NIO client {i}: echo: {e}"));
            assert_eq!(back, msg.as_bytes(), "{ctx}: NIO client {i}");
        }

        let msg = format!("datagram {round}");
        self.udp.send(msg.as_bytes()).expect("send a datagram");
        let mut buf = [0u8; 256];
        let n = self
            .udp
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("{ctx}: UDP echo: {e}"));
        assert_eq!(
            &buf[..n],
            format!("echo:{msg}").as_bytes(),
            "{ctx}: UDP echo"
        );

        let name = format!("file-{round}");
        fs::write(v.ctl.join("watched").join(&name), b"").expect("create a watched file");
        let want = format!("ENTRY_CREATE {name}\n");
        wait_for(
            &format!("{ctx}: the WatchService sees {name}"),
            JVM_TIMEOUT,
            || {
                // An error here would leave the connection out of step: fail at once.
                let (_, seen) = self
                    .http4
                    .get("/watch")
                    .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                seen.contains(&want).then_some(())
            },
        );
    }
}

/// Issue #10's JVM proof: a JVM serving HTTP on 127.0.0.1 and [::1], an NIO echo server with 16
/// connected clients, a DatagramChannel and a WatchService is dumped and restored (killed, then
/// left running with -R, then killed again); after each restore every connection the test held
/// carries on (the keep-alive HTTP connections get their next answer on the same connection),
/// new connections are accepted, the UDP echo answers and the WatchService sees new files.
fn servers_carry_on(version: u32) {
    let Some(jdk) = Jdk::find(version) else {
        return;
    };
    let _serial = jvm_lock();
    let (classes, _) = jdk.compile();
    let mut v = jdk.start(&classes, &["server"]);
    let mut clients = ServerClients::connect(&v);
    clients.exercise(&v, 0, &format!("JDK {version}, before any dump"));
    for (round, leave_running) in [(1, false), (2, true), (3, false)] {
        let ctx = format!("JDK {version}, cycle {round} (-R: {leave_running})");
        let dir = v.work.join(format!("img{round}"));
        let at = v.last_logged();
        if leave_running {
            dump(v.pid, &dir, true).assert_ok();
        } else {
            cycle(&mut v, &dir, || {});
        }
        v.wait_logging_after(at);
        clients.exercise(&v, round, &ctx);
        v.verify().unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let _ = fs::remove_dir_all(&dir);
    }
}

#[test]
fn jdk17_http_nio_udp_and_watch_servers_carry_on_across_dumps() {
    servers_carry_on(17);
}

#[test]
fn jdk25_http_nio_udp_and_watch_servers_carry_on_across_dumps() {
    servers_carry_on(25);
}

/// The full Java victim restored with mapped pages (its relocated CDS archive and the written
/// pages of libjvm's data are private file mappings: their stored pages come from the page file
/// too), then with lazy pages, then copied: it verifies after each and answers jcmd.
fn page_modes(version: u32) {
    let Some(jdk) = Jdk::find(version) else {
        return;
    };
    let _serial = jvm_lock();
    let (classes, _) = jdk.compile();
    let mut v = jdk.start(&classes, &["full"]);
    v.verify().expect("fresh Java victim verifies");
    for (round, mode) in ["map", "lazy", "map", "copy"].iter().enumerate() {
        let dir = v.work.join(format!("img{round}"));
        dump(v.pid, &dir, false).assert_ok();
        v.reap();
        let stats = v.work.join(format!("stats{round}.json"));
        let out = restore_detached(
            &dir,
            &["--pages", mode, "--stats-json", stats.to_str().unwrap()],
        );
        out.assert_ok();
        v.mark_restored();
        v.verify()
            .unwrap_or_else(|e| panic!("JDK {version}, {mode} pages: {e}"));
        jcmd_version(&jdk, &v, &format!("{mode} pages"));
        if *mode == "lazy" {
            // A process whose memory is still registered with userfaultfd is refused by a
            // dump: the next round waits for the page-server daemon to be done.
            reap_pid(lazy_daemon_pid(&out), CREST_TIMEOUT).expect("the page-server daemon ends");
        }
    }
}

#[test]
fn jdk17_restores_with_every_page_source() {
    page_modes(17);
}

#[test]
fn jdk25_restores_with_every_page_source() {
    page_modes(25);
}
