//! Tests against real JVMs over their real attach sockets: JDK 17 (`/usr/bin/java`, protocol v1)
//! and JDK 25 (Temurin, protocol v2; skipped with a note when it is not installed).
//!
//! Each test compiles a small program into its own temporary directory, starts it, and kills
//! its JVM by pid (SIGKILL and reap, in a Drop guard, so also when the test panics). The JVM
//! tests take a lock so that only one churns its heap at a time: on a 2-core machine several
//! at once would mostly measure each other.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::attach::{preflight, socket_path};
use super::perfdata::{self, PerfData};
use super::*;

const JDK17: &str = "/usr/bin/java";
const JAVAC: &str = "/usr/bin/javac";
const JDK25: &str = "/usr/lib/jvm/temurin-25-jdk-amd64/bin/java";

/// Generous bound for anything that should take a second or two; only failures wait this long.
const PATIENCE: Duration = Duration::from_secs(60);

/// Holds ~LIVE MiB in 64 KiB arrays (below G1's humongous size, so the live data packs into
/// regions), churns ~GARBAGE MiB, says "ready" and sleeps.
const PROGRAM: &str = r#"
public class HintVictim {
    static byte[][] live;
    public static void main(String[] args) throws Exception {
        int liveMiB = Integer.parseInt(args[0]);
        int garbageMiB = Integer.parseInt(args[1]);
        live = new byte[liveMiB * 16][];
        for (int i = 0; i < live.length; i++) {
            live[i] = new byte[64 << 10];
            live[i][i % 1000] = 1;
        }
        long sum = 0;
        for (int i = 0; i < garbageMiB * 16; i++) {
            byte[] g = new byte[64 << 10];
            g[i % 1000] = (byte) i;
            sum += g[i % 1000];
        }
        System.out.println("ready " + sum);
        System.out.flush();
        while (true) {
            Thread.sleep(60_000);
        }
    }
}
"#;

const LIVE_MIB: u64 = 32;

static ONE_JVM_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    // A test that panicked while holding the lock has already cleaned up after itself.
    ONE_JVM_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A private directory under the system temp dir, removed when dropped.
struct TestDir(PathBuf);

impl TestDir {
    fn new(tag: &str) -> TestDir {
        let path =
            std::env::temp_dir().join(format!("crest-jvm-test-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TestDir(path)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A JVM (or any child) this test started: SIGKILLed by pid and reaped when dropped. A JVM killed
/// so leaves its socket and hsperfdata file behind; those are removed too, by the same pid.
struct Started {
    child: Child,
    pid: i32,
}

impl Started {
    fn spawn(cmd: &mut Command) -> Started {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let pid = child.id() as i32;
        Started { child, pid }
    }

    /// Alive: not exited, not a zombie waiting for us.
    fn alive(&self) -> bool {
        crate::proc::Proc::open(self.pid)
            .and_then(|p| p.status())
            .is_ok_and(|s| s.state != 'Z')
    }

    fn state(&self) -> char {
        crate::proc::Proc::open(self.pid)
            .unwrap()
            .status()
            .unwrap()
            .state
    }

    fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid), sig).unwrap();
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !crate::proc::pid_in_use(self.pid) {
            let _ = fs::remove_file(format!("/tmp/.java_pid{}", self.pid));
            if let Ok(dirs) = fs::read_dir("/tmp") {
                for d in dirs.flatten() {
                    if d.file_name().to_string_lossy().starts_with("hsperfdata_") {
                        let _ = fs::remove_file(d.path().join(self.pid.to_string()));
                    }
                }
            }
        }
    }
}

/// A running test JVM. Field order matters: the process dies before its directory goes.
struct Jvm {
    proc: Started,
    dir: TestDir,
}

impl Jvm {
    /// Compiles the program and starts `java` with `options` and extra `env`, in its own
    /// directory (also its working directory), and waits until it says "ready".
    fn start(java: &str, tag: &str, options: &[&str], env: &[(&str, &str)]) -> Jvm {
        let dir = TestDir::new(tag);
        let src = dir.0.join("HintVictim.java");
        fs::write(&src, PROGRAM).unwrap();
        let javac = Command::new(JAVAC)
            .arg("-d")
            .arg(&dir.0)
            .arg(&src)
            .output()
            .unwrap();
        assert!(javac.status.success(), "javac: {javac:?}");
        let mut cmd = Command::new(java);
        cmd.args(options)
            .arg("-cp")
            .arg(&dir.0)
            .args(["HintVictim", &LIVE_MIB.to_string(), "300"])
            .current_dir(&dir.0)
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.0.join("stdout")).unwrap())
            .stderr(fs::File::create(dir.0.join("stderr")).unwrap());
        for var in ["JAVA_TOOL_OPTIONS", "JDK_JAVA_OPTIONS", "_JAVA_OPTIONS"] {
            cmd.env_remove(var);
        }
        cmd.envs(env.iter().copied());
        let jvm = Jvm {
            proc: Started::spawn(&mut cmd),
            dir,
        };
        let t0 = Instant::now();
        while !jvm.stdout().contains("ready") {
            assert!(
                jvm.proc.alive(),
                "{java} {options:?} exited: {}",
                fs::read_to_string(jvm.dir.0.join("stderr")).unwrap_or_default()
            );
            assert!(t0.elapsed() < PATIENCE, "{java} never got ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        jvm
    }

    fn pid(&self) -> i32 {
        self.proc.pid
    }

    fn stdout(&self) -> String {
        fs::read_to_string(self.dir.0.join("stdout")).unwrap_or_default()
    }

    fn info(&self) -> JvmInfo {
        detect(self.pid()).unwrap().expect("a JVM is detected")
    }

    fn rss(&self) -> u64 {
        crate::proc::Proc::open(self.pid())
            .unwrap()
            .status()
            .unwrap()
            .vm_rss_bytes
    }

    fn socket(&self) -> PathBuf {
        let proc = crate::proc::Proc::open(self.pid()).unwrap();
        socket_path(&proc, self.info().ns_pid)
    }

    /// Neither of the places a trigger file goes holds one.
    fn assert_no_trigger_file(&self) {
        let name = format!(".attach_pid{}", self.info().ns_pid);
        for dir in [self.dir.0.as_path(), Path::new("/tmp")] {
            assert!(
                !dir.join(&name).exists(),
                "{} was left behind",
                dir.join(&name).display()
            );
        }
    }

    fn assert_no_thread_dump(&self) {
        assert!(
            !self.stdout().contains("Full thread dump"),
            "the JVM printed a thread dump: {}",
            self.stdout()
        );
    }
}

fn jdk25() -> Option<&'static str> {
    if Path::new(JDK25).exists() {
        Some(JDK25)
    } else {
        // Straight to stderr, past the harness's capture: a skip must show in the output.
        let name = std::thread::current()
            .name()
            .unwrap_or("a test")
            .to_string();
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {name}: {JDK25} is not installed (JDK 25)"
        );
        None
    }
}

fn soon() -> Instant {
    Instant::now() + PATIENCE
}

#[test]
fn detect_tells_a_jvm_from_other_processes() {
    let _serial = one_at_a_time();
    let jvm = Jvm::start(JDK17, "detect", &["-Xmx256m"], &[]);
    let info = jvm.info();
    assert_eq!(info.pid, jvm.pid());
    assert!(info.ns_pid > 0);
    assert_eq!(info.libjvm.file_name().unwrap(), "libjvm.so");
    assert!(info.libjvm.exists(), "{}", info.libjvm.display());

    let sleep = Started::spawn(Command::new("sleep").arg("100"));
    assert_eq!(detect(sleep.pid).unwrap(), None);
    // pid_max is at most 2^22: this pid cannot exist.
    assert!(matches!(
        detect(0x7fff_fff0),
        Err(JvmError::Proc(crate::proc::ProcError::NoSuchProcess { .. }))
    ));
}

#[test]
fn perfdata_of_a_live_jvm() {
    let _serial = one_at_a_time();
    let jvm = Jvm::start(JDK17, "perfdata", &["-Xmx256m"], &[]);
    let info = jvm.info();
    let proc = crate::proc::Proc::open(jvm.pid()).unwrap();
    let (path, bytes) = perfdata::read_mapped(&proc, info.ns_pid)
        .unwrap()
        .expect("the JVM maps its hsperfdata");
    assert!(
        path.ends_with(info.ns_pid.to_string()),
        "{}",
        path.display()
    );
    let pd = PerfData::parse(&bytes).unwrap();
    assert_eq!(pd.major, 2);
    assert!(pd.accessible);
    assert!(pd.entries.len() > 50, "{} entries", pd.entries.len());
    assert_eq!(pd.attach_supported(), Some(true));
    assert!(pd
        .string("java.property.java.version")
        .is_some_and(|v| v.starts_with("17")));
    assert!(pd.long("sun.os.hrt.frequency").is_some_and(|f| f > 0));
    // Every name is distinct and non-empty: the walk did not drift out of step.
    assert!(pd.entries.iter().all(|e| !e.name.is_empty()));
}

/// Attaches to a fresh JVM (no socket yet: the listener is started with the trigger file and
/// SIGQUIT), then again (socket present), and runs good and bad operations.
fn attach_round(java: &str, tag: &str, version: u32, jdk: &str) {
    let _serial = one_at_a_time();
    let jvm = Jvm::start(java, tag, &["-Xmx256m"], &[]);
    let info = jvm.info();
    assert!(!jvm.socket().exists(), "the listener starts lazily");

    let client = AttachClient::connect(&info, soon()).unwrap();
    assert_eq!(client.protocol_version(), version);
    assert!(jvm.socket().exists());
    jvm.assert_no_trigger_file();
    let out = client.jcmd("VM.version", soon()).unwrap();
    assert!(out.contains(&format!("JDK {jdk}.")), "{out}");

    // A second client finds the socket in place and speaks the same version; a client runs any
    // number of operations, one connection each.
    let again = AttachClient::connect(&info, soon()).unwrap();
    assert_eq!(again.protocol_version(), version);
    let flag = again
        .execute("printflag", &["MaxHeapFreeRatio"], soon())
        .unwrap();
    assert!(flag.starts_with("-XX:MaxHeapFreeRatio="), "{flag}");
    assert!(again.jcmd("VM.uptime", soon()).is_ok());

    match again.jcmd("No.such_command", soon()) {
        Err(JvmError::CommandFailed {
            code,
            command,
            output,
            ..
        }) => {
            assert_ne!(code, 0);
            assert_eq!(command, "jcmd No.such_command");
            assert!(output.contains("Unknown diagnostic command"), "{output}");
        }
        other => panic!("expected CommandFailed, got {other:?}"),
    }
    match again.execute("nosuchop", &[], soon()) {
        Err(JvmError::CommandFailed { code, output, .. }) => {
            assert_ne!(code, 0);
            assert!(output.contains("not recognized"), "{output}");
        }
        other => panic!("expected CommandFailed, got {other:?}"),
    }
    // Still answering after the errors.
    assert!(client.jcmd("VM.uptime", soon()).is_ok());
    assert!(jvm.proc.alive());
    jvm.assert_no_thread_dump();
}

#[test]
fn attach_jdk17_speaks_v1() {
    attach_round(JDK17, "attach17", 1, "17");
}

#[test]
fn attach_jdk25_speaks_v2() {
    if let Some(java) = jdk25() {
        attach_round(java, "attach25", 2, "25");
    }
}

fn flag(client: &AttachClient, name: &str) -> String {
    client
        .execute("printflag", &[name], soon())
        .unwrap()
        .trim()
        .to_string()
}

/// The hint on a G1 JVM that holds 32 MiB after churning 300 MiB: the heap shrinks, RSS drops,
/// the flags are back, the JVM lives on. `preset` gives the ratios on the command line (else
/// they are read through an attach before the hint, which so finds the socket present).
fn hint_round(java: &str, tag: &str, version: u32, preset: Option<(u32, u32)>) {
    let _serial = one_at_a_time();
    let mut options = vec!["-Xmx1g".to_string(), "-XX:+UseG1GC".to_string()];
    if let Some((min, max)) = preset {
        options.push(format!("-XX:MinHeapFreeRatio={min}"));
        options.push(format!("-XX:MaxHeapFreeRatio={max}"));
    }
    let options: Vec<&str> = options.iter().map(String::as_str).collect();
    let jvm = Jvm::start(java, tag, &options, &[]);
    let info = jvm.info();
    let (min, max) = match preset {
        Some((min, max)) => (
            format!("-XX:MinHeapFreeRatio={min}"),
            format!("-XX:MaxHeapFreeRatio={max}"),
        ),
        None => {
            let c = AttachClient::connect(&info, soon()).unwrap();
            (flag(&c, "MinHeapFreeRatio"), flag(&c, "MaxHeapFreeRatio"))
        }
    };
    let rss_before = jvm.rss();

    // The steps' log lines show with --nocapture, or with the failure of this test.
    crate::log::set_verbosity(crate::log::verbosity().max(1));
    let report = gc_hint(&info, &HintOptions { timeout: PATIENCE }).unwrap();
    let rss_after = jvm.rss();
    eprintln!(
        "{tag}: {report:?}; RSS {} -> {} KiB",
        rss_before >> 10,
        rss_after >> 10
    );

    assert_eq!(report.protocol_version, version);
    let before = report.heap_before.expect("GC.heap_info before is readable");
    let after = report.heap_after.expect("GC.heap_info after is readable");
    assert!(
        after.committed_bytes < before.committed_bytes,
        "{before:?} -> {after:?}"
    );
    // The live data cannot have gone anywhere.
    assert!(after.used_bytes >= LIVE_MIB << 20, "{after:?}");
    assert!(after.committed_bytes >= after.used_bytes, "{after:?}");
    // The lowered MaxHeapFreeRatio at work: a plain GC.run leaves ~125 MiB committed here (over
    // 3.5 times the used heap), the hint about 1.2 times.
    assert!(
        after.committed_bytes < after.used_bytes / 2 * 3,
        "{after:?}: the heap did not shrink to its live data"
    );
    assert!(
        report
            .native_trim
            .as_deref()
            .is_some_and(|t| t.contains("Trim native heap")),
        "{:?}",
        report.native_trim
    );
    assert!(rss_after < rss_before, "RSS {rss_before} -> {rss_after}");

    let c = AttachClient::connect(&info, soon()).unwrap();
    assert_eq!(flag(&c, "MinHeapFreeRatio"), min);
    assert_eq!(flag(&c, "MaxHeapFreeRatio"), max);
    assert!(jvm.proc.alive());
    jvm.assert_no_trigger_file();
    jvm.assert_no_thread_dump();
}

#[test]
fn gc_hint_jdk17() {
    hint_round(JDK17, "hint17", 1, None);
}

#[test]
fn gc_hint_jdk25() {
    if let Some(java) = jdk25() {
        hint_round(java, "hint25", 2, Some((20, 50)));
    }
}

/// A JVM with the attach mechanism disabled is refused before anything is sent to it: it
/// prints no thread dump and keeps running.
fn assert_attach_disabled(jvm: &Jvm, how: &str) {
    let info = jvm.info();
    match gc_hint(&info, &HintOptions::default()) {
        Err(JvmError::AttachDisabled { pid, how: h }) => {
            assert_eq!(pid, jvm.pid());
            assert!(h.contains(how), "{h}");
        }
        other => panic!("expected AttachDisabled, got {other:?}"),
    }
    assert!(matches!(
        AttachClient::connect(&info, soon()),
        Err(JvmError::AttachDisabled { .. })
    ));
    // A SIGQUIT, had one been sent, is handled within milliseconds.
    std::thread::sleep(Duration::from_millis(500));
    jvm.assert_no_thread_dump();
    jvm.assert_no_trigger_file();
    assert!(!jvm.socket().exists());
    assert!(jvm.proc.alive());
}

#[test]
fn attach_disabled_seen_in_hsperfdata() {
    let _serial = one_at_a_time();
    let jvm = Jvm::start(
        JDK17,
        "disabled",
        &["-Xmx256m", "-XX:+DisableAttachMechanism"],
        &[],
    );
    assert_attach_disabled(&jvm, "hsperfdata");
}

#[test]
fn attach_disabled_seen_in_options_without_hsperfdata() {
    let _serial = one_at_a_time();
    let jvm = Jvm::start(
        JDK17,
        "disabled-env",
        &["-Xmx256m", "-XX:-UsePerfData"],
        &[("JAVA_TOOL_OPTIONS", "-Xss1m -XX:+DisableAttachMechanism")],
    );
    assert_attach_disabled(&jvm, "JAVA_TOOL_OPTIONS");
    drop(jvm);
    let jvm = Jvm::start(
        JDK17,
        "disabled-cmdline",
        &[
            "-Xmx256m",
            "-XX:-UsePerfData",
            "-XX:+DisableAttachMechanism",
        ],
        &[],
    );
    assert_attach_disabled(&jvm, "command line");
}

/// -Xrs: the JVM has no SIGQUIT handler, so its listener starts at startup and attach works
/// without a signal; once its socket is gone, crest refuses rather than kill it with SIGQUIT.
#[test]
fn xrs_jvm_is_never_sent_sigquit() {
    let _serial = one_at_a_time();
    let jvm = Jvm::start(JDK17, "xrs", &["-Xmx256m", "-Xrs"], &[]);
    let info = jvm.info();
    assert!(jvm.socket().exists(), "-Xrs starts the listener at startup");
    preflight(&info).unwrap();
    let client = AttachClient::connect(&info, soon()).unwrap();
    assert!(client
        .jcmd("VM.version", soon())
        .unwrap()
        .contains("JDK 17."));

    fs::remove_file(jvm.socket()).unwrap();
    assert!(matches!(
        preflight(&info),
        Err(JvmError::NoSigquitHandler { .. })
    ));
    assert!(matches!(
        AttachClient::connect(&info, soon()),
        Err(JvmError::NoSigquitHandler { .. })
    ));
    assert!(matches!(
        gc_hint(&info, &HintOptions::default()),
        Err(JvmError::NoSigquitHandler { .. })
    ));
    std::thread::sleep(Duration::from_millis(300));
    assert!(jvm.proc.alive());
    jvm.assert_no_trigger_file();
}

/// A stopped JVM gets no SIGQUIT (it would stay pending and print a thread dump later): crest
/// times out, and the JVM runs on normally once continued. Then, with its listener running, a
/// stopped JVM's silence is a timeout too.
#[test]
fn stopped_jvm_times_out_and_survives() {
    let _serial = one_at_a_time();
    let jvm = Jvm::start(JDK17, "stopped", &["-Xmx256m"], &[]);
    let info = jvm.info();
    assert!(!jvm.socket().exists());
    jvm.proc.signal(Signal::SIGSTOP);
    let t0 = Instant::now();
    while jvm.proc.state() != 'T' {
        assert!(t0.elapsed() < PATIENCE, "the JVM never stopped");
        std::thread::sleep(Duration::from_millis(5));
    }

    let short = HintOptions {
        timeout: Duration::from_secs(1),
    };
    let t0 = Instant::now();
    match gc_hint(&info, &short) {
        Err(JvmError::Timeout { pid, after, .. }) => {
            assert_eq!(pid, jvm.pid());
            assert!(after >= Duration::from_millis(900), "{after:?}");
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(t0.elapsed() < PATIENCE);
    assert!(matches!(
        AttachClient::connect(&info, Instant::now() + Duration::from_millis(300)),
        Err(JvmError::Timeout { .. })
    ));
    jvm.assert_no_trigger_file();

    jvm.proc.signal(Signal::SIGCONT);
    std::thread::sleep(Duration::from_millis(500));
    assert!(jvm.proc.alive());
    assert!(!jvm.socket().exists(), "no SIGQUIT was pending");
    jvm.assert_no_thread_dump();

    // The listener runs; stop the JVM again: the connection is accepted by the kernel, the
    // answer never comes.
    let client = AttachClient::connect(&info, soon()).unwrap();
    jvm.proc.signal(Signal::SIGSTOP);
    while jvm.proc.state() != 'T' {
        std::thread::sleep(Duration::from_millis(5));
    }
    match client.jcmd("VM.uptime", Instant::now() + Duration::from_millis(500)) {
        Err(JvmError::Timeout { what, .. }) => assert!(what.contains("VM.uptime"), "{what}"),
        other => panic!("expected Timeout, got {other:?}"),
    }
    jvm.proc.signal(Signal::SIGCONT);
    // The JVM serves the abandoned request once continued, then the next one.
    assert!(client.jcmd("VM.uptime", soon()).is_ok());
    assert!(jvm.proc.alive());
    jvm.assert_no_thread_dump();
}

/// The wait for a listener that never comes: a process that catches SIGQUIT but is no JVM.
/// crest creates the trigger file, signals, polls until the deadline, and removes the file.
#[test]
fn listener_that_never_comes_times_out_and_cleans_up() {
    let dir = TestDir::new("nolistener");
    let log = dir.0.join("quit.log");
    let script = format!(
        "trap 'echo quit >> {}' QUIT; while true; do sleep 0.05; done",
        log.display()
    );
    let sh = Started::spawn(
        Command::new("bash")
            .args(["-c", &script])
            .current_dir(&dir.0)
            .stdin(Stdio::null()),
    );
    let proc = crate::proc::Proc::open(sh.pid).unwrap();
    let quit = 1u64 << (libc::SIGQUIT - 1);
    let t0 = Instant::now();
    while proc.status().unwrap().sig_caught & quit == 0 {
        assert!(t0.elapsed() < PATIENCE, "the trap was never installed");
        std::thread::sleep(Duration::from_millis(5));
    }
    let info = JvmInfo {
        pid: sh.pid,
        ns_pid: proc.ns_pid().unwrap(),
        libjvm: PathBuf::from("/nonexistent/libjvm.so"),
    };
    match AttachClient::connect(&info, Instant::now() + Duration::from_secs(1)) {
        Err(JvmError::Timeout { what, .. }) => assert!(what.contains("SIGQUIT"), "{what}"),
        other => panic!("expected Timeout, got {other:?}"),
    }
    let trigger = format!(".attach_pid{}", info.ns_pid);
    assert!(!dir.0.join(&trigger).exists());
    assert!(!Path::new("/tmp").join(&trigger).exists());
    // The signal did arrive (the trap runs once the current `sleep` ends).
    let t0 = Instant::now();
    while !fs::read_to_string(&log).is_ok_and(|s| s.contains("quit")) {
        assert!(t0.elapsed() < PATIENCE, "the SIGQUIT never arrived");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(sh.alive());
    // The file in the working directory is the one HotSpot looks at first; a pre-existing one
    // (another client's) is left alone.
    let mut f = fs::File::create(dir.0.join(&trigger)).unwrap();
    f.write_all(b"").unwrap();
    let _ = AttachClient::connect(&info, Instant::now() + Duration::from_millis(200));
    assert!(dir.0.join(&trigger).exists());
}
