//! crest as a CRaC engine, driven as a CRaC JVM would drive it: `victims/crac_client.c`, written
//! from the protocols (no CRaC JDK can be installed here), loads `libcrestengine.so` (crlib v2)
//! or spawns `crestengine` (the JDK 17 executable protocol), checkpoints itself from one
//! thread while three others run with 8 MiB of live data, and is restored by a fresh process
//! that hands over restore data through `/dev/shm/crac_<pid>` and the restore signal.
//!
//! Every process a test starts is ended by pid ([`Procs`]); waits are on conditions.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(60);

fn engine() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_crestengine"))
}

/// The library this build made: `cargo build` puts it beside `crestengine` (where it finds
/// the engine); `cargo test` alone leaves it in `deps/` (built there because the tests link
/// the crate), the newer of the two is taken.
fn library() -> PathBuf {
    let beside = engine().with_file_name("libcrestengine.so");
    let deps = engine().with_file_name("deps").join("libcrestengine.so");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (modified(&beside), modified(&deps)) {
        (Some(b), Some(d)) if d > b => deps,
        (None, Some(_)) => deps,
        (Some(_), _) => beside,
        (None, None) => panic!("libcrestengine.so was not built"),
    }
}

/// The environment a client needs: where the engine is when the library is not beside it.
fn engine_env() -> Vec<(&'static str, String)> {
    if library().parent() == engine().parent() {
        Vec::new()
    } else {
        vec![("CREST_ENGINE_BIN", engine().display().to_string())]
    }
}

fn client() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/victims/crac_client.c");
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("crac_client");
            let tmp = out.with_extension(format!("tmp{}", std::process::id()));
            let st = Command::new("cc")
                .args(["-O1", "-Wall", "-Werror", "-o"])
                .arg(&tmp)
                .arg(&src)
                .args(["-pthread", "-ldl"])
                .status()
                .expect("run cc (install gcc)");
            assert!(st.success(), "compiling {}", src.display());
            std::fs::rename(&tmp, &out).unwrap();
            out
        })
        .clone()
}

/// A scratch directory outside /tmp (a restore into a pid namespace gets a /tmp of its own).
fn scratch(name: &str) -> PathBuf {
    let d =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("crac-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Processes a test started and has not reaped, and restored ones (pid, the restoring process
/// that is their parent): ended when the test ends, only while they are still exactly that
/// (a restored pid only while its parent is the restoring process, so a reused pid is never
/// hit).
#[derive(Default)]
struct Procs {
    children: Vec<i32>,
    restored: Vec<(i32, i32)>,
}

impl Procs {
    fn restored(&mut self, pid: i32, parent: &Child) {
        self.restored.push((pid, parent.id() as i32));
    }
}

fn parent_of(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))?
        .trim()
        .parse()
        .ok()
}

impl Drop for Procs {
    fn drop(&mut self) {
        for &(pid, parent) in &self.restored {
            if parent_of(pid) == Some(parent) && self.children.contains(&parent) {
                // SAFETY: kill on the restored child of a process this test started and has
                // not reaped.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        for &pid in &self.children {
            // SAFETY: kill on a child of this test's that it has not reaped (so the pid is
            // still that process's, perhaps a zombie).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Creates the hold file when dropped: a restored client waiting for it ends (also when a test
/// fails before it releases them, e.g. clients in pid namespaces that no guard reaches).
struct Release(PathBuf);

impl Drop for Release {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0, "");
    }
}

/// Starts the client in a session of its own, without the test's descriptors, stdin
/// /dev/null, stdout and stderr into files of `dir` named after `tag`.
fn start(procs: &mut Procs, dir: &Path, tag: &str, args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(client());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join(format!("{tag}.out"))).unwrap())
        .stderr(std::fs::File::create(dir.join(format!("{tag}.err"))).unwrap())
        .envs(env.iter().copied())
        .envs(engine_env());
    // SAFETY: setsid and close_range are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let child = cmd.spawn().expect("start crac_client");
    procs.children.push(child.id() as i32);
    child
}

fn text(dir: &Path, tag: &str, what: &str) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(dir.join(format!("{tag}.{what}"))) {
        f.read_to_string(&mut s).unwrap();
    }
    s
}

fn wait_exit(procs: &mut Procs, child: &mut Child, dir: &Path, tag: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            procs.children.retain(|&p| p != child.id() as i32);
            return st;
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "{tag} did not end; stdout:\n{}stderr:\n{}",
            text(dir, tag, "out"),
            text(dir, tag, "err")
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn wait_output(dir: &Path, tag: &str, needle: &str) {
    let start = Instant::now();
    while !text(dir, tag, "out").contains(needle) {
        assert!(
            start.elapsed() < TIMEOUT,
            "{tag} never printed {needle:?}; stdout:\n{}stderr:\n{}",
            text(dir, tag, "out"),
            text(dir, tag, "err")
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn checkpoint_pid(dir: &Path, tag: &str) -> i32 {
    let out = text(dir, tag, "out");
    out.lines()
        .find_map(|l| l.strip_prefix("checkpointing pid="))
        .unwrap_or_else(|| panic!("no pid in {out:?}"))
        .parse()
        .unwrap()
}

/// What a checkpoint kept running or a restored client says after the engine call.
fn assert_carried_on(dir: &Path, tag: &str, data: i32) {
    let out = text(dir, tag, "out");
    let size = if data > 0 { 4 } else { 0 };
    for want in [
        format!("returned rc=0 size={size} data={data}\n"),
        "data ok\n".to_string(),
        "threads ok 3\n".to_string(),
        "done\n".to_string(),
    ] {
        assert!(
            out.contains(&want),
            "{tag}: no {want:?} in\n{out}stderr:\n{}",
            text(dir, tag, "err")
        );
    }
    if data > 0 {
        let shm = format!("restored shm=from restoring pid {data}\n");
        assert!(out.contains(&shm), "{tag}: no {shm:?} in\n{out}");
    }
}

/// The image is crest's, readable as ever, with the JVM's files beside it.
fn assert_image(img: &Path, pid: i32, tags: bool) {
    let image = crest::images::open_image(img).expect("crest opens the image");
    assert_eq!(image.inventory.root_pid, pid);
    assert!(crest::show::render_text(&image).contains(&pid.to_string()));
    let sidecar = crest::crac::Sidecar::read(img).expect("the engine's sidecar");
    assert_eq!(sidecar.pid, pid);
    if tags {
        let t = std::fs::read_to_string(img.join("tags")).unwrap();
        assert_eq!(t, "label:cpu.arch=test-arch\nbitmap:cpu.features=0501\n");
        let s = std::fs::read_to_string(img.join("score")).unwrap();
        assert_eq!(s, "vm.uptime=1.500000\n");
        assert!(
            sidecar.tid.is_some(),
            "the library engine names the waiting thread"
        );
    }
}

#[test]
fn library_keep_running_then_restore_in_a_fresh_process() {
    let dir = scratch("keep");
    let img = dir.join("img");
    let mut procs = Procs::default();
    let lib = library();
    let (lib, img_s) = (lib.to_str().unwrap(), img.to_str().unwrap());

    // A file the JVM itself writes into the image directory (newer JVMs: `engine`) stays
    // beside crest's image.
    std::fs::create_dir(&img).unwrap();
    std::fs::write(img.join("engine"), "crest\n").unwrap();
    let mut c = start(
        &mut procs,
        &dir,
        "ckpt",
        &["lib", lib, img_s, "checkpoint", "keep"],
        &[],
    );
    let st = wait_exit(&mut procs, &mut c, &dir, "ckpt");
    assert_eq!(st.code(), Some(0), "{}", text(&dir, "ckpt", "err"));
    assert_carried_on(&dir, "ckpt", 0);
    let pid = checkpoint_pid(&dir, "ckpt");
    assert_eq!(
        std::fs::read_to_string(img.join("engine")).unwrap(),
        "crest\n"
    );
    assert_image(&img, pid, true);

    // A fresh process restores it (pages copied), and becomes the restored client's parent.
    let mut r = start(
        &mut procs,
        &dir,
        "rst",
        &["lib", lib, img_s, "restore", "pages=copy"],
        &[],
    );
    procs.restored(pid, &r);
    let st = wait_exit(&mut procs, &mut r, &dir, "rst");
    assert_eq!(st.code(), Some(0), "{}", text(&dir, "rst", "err"));
    assert_carried_on(&dir, "rst", r.id() as i32);
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn library_checkpoint_ends_the_process_and_a_restore_brings_it_back_mapped() {
    let dir = scratch("end");
    let img = dir.join("img");
    let hold = dir.join("hold");
    let _release = Release(hold.clone());
    let mut procs = Procs::default();
    let lib = library();
    let (lib, img_s) = (lib.to_str().unwrap(), img.to_str().unwrap());
    let hold_arg = format!("hold={}", hold.display());

    let mut c = start(
        &mut procs,
        &dir,
        "ckpt",
        &["lib", lib, img_s, "checkpoint", &hold_arg],
        &[],
    );
    let st = wait_exit(&mut procs, &mut c, &dir, "ckpt");
    assert_eq!(st.signal(), Some(libc::SIGKILL), "the dump ends the JVM");
    let pid = checkpoint_pid(&dir, "ckpt");
    assert!(!text(&dir, "ckpt", "out").contains("returned"));
    assert_image(&img, pid, true);

    // Default direct_map=true: crest's mapped pages. The restored client runs under its pid,
    // a child of the restoring process.
    let mut r = start(
        &mut procs,
        &dir,
        "rst",
        &["lib", lib, img_s, "restore"],
        &[],
    );
    procs.restored(pid, &r);
    wait_output(&dir, "rst", "restored shm=");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let ppid = status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .unwrap()
        .trim();
    assert_eq!(
        ppid,
        r.id().to_string(),
        "the restoring process is the parent"
    );
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert!(
        maps.contains(img_s),
        "pages are mapped from the image:\n{maps}"
    );
    std::fs::write(&hold, "").unwrap();
    let st = wait_exit(&mut procs, &mut r, &dir, "rst");
    assert_eq!(st.code(), Some(0), "{}", text(&dir, "rst", "err"));
    assert_carried_on(&dir, "rst", r.id() as i32);
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn library_restores_one_image_twice_at_once_in_pid_namespaces_and_lazily() {
    let dir = scratch("twice");
    let img = dir.join("img");
    let hold = dir.join("hold");
    let _release = Release(hold.clone());
    let mut procs = Procs::default();
    let lib = library();
    let (lib, img_s) = (lib.to_str().unwrap(), img.to_str().unwrap());
    let hold_arg = format!("hold={}", hold.display());

    let mut c = start(
        &mut procs,
        &dir,
        "ckpt",
        &["lib", lib, img_s, "checkpoint", &hold_arg],
        &[],
    );
    assert_eq!(
        wait_exit(&mut procs, &mut c, &dir, "ckpt").signal(),
        Some(libc::SIGKILL)
    );

    let mut a = start(
        &mut procs,
        &dir,
        "a",
        &["lib", lib, img_s, "restore", "pidns"],
        &[],
    );
    let mut b = start(
        &mut procs,
        &dir,
        "b",
        &["lib", lib, img_s, "restore", "pidns"],
        &[],
    );
    // Both run at once (each waits for the hold file), each with its own restore data.
    wait_output(&dir, "a", "restored shm=");
    wait_output(&dir, "b", "restored shm=");
    std::fs::write(&hold, "").unwrap();
    for (child, tag) in [(&mut a, "a"), (&mut b, "b")] {
        let st = wait_exit(&mut procs, child, &dir, tag);
        assert_eq!(st.code(), Some(0), "{}", text(&dir, tag, "err"));
        assert_carried_on(&dir, tag, child.id() as i32);
    }

    // Lazy pages (crest.pages=lazy) under the original pid.
    let pid = checkpoint_pid(&dir, "ckpt");
    let mut l = start(
        &mut procs,
        &dir,
        "lazy",
        &["lib", lib, img_s, "restore", "pages=lazy"],
        &[],
    );
    procs.restored(pid, &l);
    let st = wait_exit(&mut procs, &mut l, &dir, "lazy");
    assert_eq!(st.code(), Some(0), "{}", text(&dir, "lazy", "err"));
    assert_carried_on(&dir, "lazy", l.id() as i32);
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn library_refuses_an_image_whose_constraints_fail_and_a_failed_dump_keeps_the_process() {
    let dir = scratch("refuse");
    let img = dir.join("img");
    let mut procs = Procs::default();
    let lib = library();
    let (lib, img_s) = (lib.to_str().unwrap(), img.to_str().unwrap());

    // A dump that fails: checkpoint() returns non-zero and the process runs on unharmed
    // (here with SIGCHLD ignored: the engine's exit status is lost, the signal says it).
    let env = [("CREST_FAIL_AT", "pages")];
    let mut c = start(
        &mut procs,
        &dir,
        "fail",
        &["lib", lib, img_s, "checkpoint", "keep", "nochld"],
        &env,
    );
    let st = wait_exit(&mut procs, &mut c, &dir, "fail");
    assert_eq!(st.code(), Some(4), "{}", text(&dir, "fail", "out"));
    let out = text(&dir, "fail", "out");
    assert!(
        out.contains("returned rc=2 size=0 data=0\ndata ok\nthreads ok 3\n"),
        "{out}"
    );
    assert!(text(&dir, "fail", "err").contains("injected failure at pages"));
    assert!(!img.join("inventory.img").exists());

    let mut c = start(
        &mut procs,
        &dir,
        "ckpt",
        &["lib", lib, img_s, "checkpoint", "keep"],
        &[],
    );
    assert_eq!(wait_exit(&mut procs, &mut c, &dir, "ckpt").code(), Some(0));
    // The restoring side requires another cpu.arch: restore() returns, nothing is restored.
    let mut r = start(
        &mut procs,
        &dir,
        "rst",
        &["lib", lib, img_s, "restore", "arch=other"],
        &[],
    );
    let st = wait_exit(&mut procs, &mut r, &dir, "rst");
    assert_eq!(st.code(), Some(5));
    assert!(text(&dir, "rst", "out").contains("restore returned 3 failed=1,1 bitmap=2:0501"));
    assert!(text(&dir, "rst", "err").contains("cpu.arch"));
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn executable_protocol_as_a_jdk17_drives_it() {
    let dir = scratch("exec");
    let img = dir.join("img");
    let mut procs = Procs::default();
    let eng = engine();
    let (eng, img_s) = (eng.to_str().unwrap(), img.to_str().unwrap());

    // CRAC_CRIU_LEAVE_RUNNING: the engine exits 0 at once, the dump happens from outside the
    // JVM's tree, and SIGRTMIN+2 comes with 0.
    let mut c = start(
        &mut procs,
        &dir,
        "keep",
        &["exec", eng, img_s, "checkpoint", "keep"],
        &[],
    );
    assert_eq!(
        wait_exit(&mut procs, &mut c, &dir, "keep").code(),
        Some(0),
        "{}",
        text(&dir, "keep", "err")
    );
    assert_carried_on(&dir, "keep", 0);
    assert_image(&img, checkpoint_pid(&dir, "keep"), false);

    // Default: the dump ends the JVM; the restoring JVM execs the engine in place with
    // CRAC_NEW_ARGS_ID; the restored one gets it by sigqueue.
    let mut c = start(
        &mut procs,
        &dir,
        "ckpt",
        &["exec", eng, img_s, "checkpoint"],
        &[],
    );
    assert_eq!(
        wait_exit(&mut procs, &mut c, &dir, "ckpt").signal(),
        Some(libc::SIGKILL)
    );
    let pid = checkpoint_pid(&dir, "ckpt");
    let mut r = start(
        &mut procs,
        &dir,
        "rst",
        &["exec", eng, img_s, "restore"],
        &[],
    );
    procs.restored(pid, &r);
    let st = wait_exit(&mut procs, &mut r, &dir, "rst");
    assert_eq!(st.code(), Some(0), "{}", text(&dir, "rst", "err"));
    assert_carried_on(&dir, "rst", r.id() as i32);
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A JVM started from a shell on a terminal (here a pty of `script`'s): its checkpoint records
/// the terminal as the shell's (crest's --shell-job), and a restore from a shell on another
/// terminal puts the restored client on that one. Either with its output on the terminal, or
/// with every standard fd redirected and the terminal only its session's (a test harness
/// running on a pty that starts the client with pipes).
#[test]
fn library_on_a_terminal_as_a_shell_job() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("SKIPPED: no `script` (util-linux) to make a terminal");
        return;
    }
    for redirected in [false, true] {
        on_a_terminal(redirected);
    }
}

fn on_a_terminal(redirected: bool) {
    let dir = scratch(if redirected { "ctty" } else { "tty" });
    let img = dir.join("img");
    let mut procs = Procs::default();
    let lib = library();
    // The client's output: the terminal (script's typescript on its stdout), or files.
    let output = |tag: &str| dir.join(format!("{tag}.client"));
    let on_terminal = |tag: &str, mode: &str| -> Vec<String> {
        let redirect = if redirected {
            format!(
                " >{} 2>{}",
                output(tag).display(),
                output(tag).with_extension("clienterr").display()
            )
        } else {
            String::new()
        };
        let line = format!(
            "{} lib {} {} {mode} </dev/null{redirect}; echo exit=$?",
            client().display(),
            lib.display(),
            img.display()
        );
        vec![
            "-qec".into(),
            format!("sh -c '{line}'; true"),
            dir.join(format!("{tag}.typescript")).display().to_string(),
        ]
    };
    for (tag, mode, exit) in [
        ("ckpt", "checkpoint", "exit=137"),
        ("rst", "restore", "exit=0"),
    ] {
        let mut cmd = Command::new("script");
        cmd.args(on_terminal(tag, mode))
            .envs(engine_env())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join(format!("{tag}.out"))).unwrap())
            .stderr(std::fs::File::create(dir.join(format!("{tag}.err"))).unwrap());
        // SAFETY: setsid and close_range are async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("start script");
        procs.children.push(child.id() as i32);
        let st = wait_exit(&mut procs, &mut child, &dir, tag);
        assert!(st.success(), "{}", text(&dir, tag, "err"));
        let out = text(&dir, tag, "out");
        assert!(
            out.contains(exit),
            "{tag} (redirected: {redirected}): no {exit} in\n{out}{}",
            std::fs::read_to_string(output(tag).with_extension("clienterr")).unwrap_or_default()
        );
    }
    let out = if redirected {
        std::fs::read_to_string(output("rst")).unwrap()
    } else {
        text(&dir, "rst", "out")
    };
    for want in [
        "returned rc=0 size=4",
        "data ok",
        "threads ok 3",
        "restored shm=",
        "done",
    ] {
        assert!(out.contains(want), "no {want:?} in\n{out}");
    }
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A restored client checkpoints itself again (a second generation, from under the restoring
/// process that is its parent now), and that image restores too.
#[test]
fn library_restored_process_checkpoints_again() {
    let dir = scratch("again");
    let (img, img2) = (dir.join("img"), dir.join("img2"));
    let mut procs = Procs::default();
    let lib = library();
    let (lib, img_s, img2_s) = (
        lib.to_str().unwrap(),
        img.to_str().unwrap(),
        img2.to_str().unwrap(),
    );
    let again = format!("again={img2_s}");

    let mut c = start(
        &mut procs,
        &dir,
        "ckpt",
        &["lib", lib, img_s, "checkpoint", &again],
        &[],
    );
    assert_eq!(
        wait_exit(&mut procs, &mut c, &dir, "ckpt").signal(),
        Some(libc::SIGKILL)
    );
    let pid = checkpoint_pid(&dir, "ckpt");

    // Restored, it checkpoints again and the dump ends it: the restoring process (its proxy
    // parent) exits as it did, 128 + SIGKILL.
    let mut r = start(
        &mut procs,
        &dir,
        "rst",
        &["lib", lib, img_s, "restore"],
        &[],
    );
    procs.restored(pid, &r);
    let st = wait_exit(&mut procs, &mut r, &dir, "rst");
    assert_eq!(
        st.code(),
        Some(128 + libc::SIGKILL),
        "{}",
        text(&dir, "rst", "err")
    );
    let out = text(&dir, "rst", "out");
    assert!(
        out.contains(&format!("restored shm=from restoring pid {}\n", r.id())),
        "{out}"
    );
    assert!(
        out.contains(&format!("checkpointing again pid={pid}\n")),
        "{out}"
    );
    assert_image(&img2, pid, false);
    // Labels stay set; scores are dropped after each checkpoint.
    let tags = std::fs::read_to_string(img2.join("tags")).unwrap();
    assert!(tags.starts_with("label:cpu.arch=test-arch\n"), "{tags}");
    assert_eq!(std::fs::read_to_string(img2.join("score")).unwrap(), "");

    let mut r2 = start(
        &mut procs,
        &dir,
        "rst2",
        &["lib", lib, img2_s, "restore"],
        &[],
    );
    procs.restored(pid, &r2);
    let st = wait_exit(&mut procs, &mut r2, &dir, "rst2");
    assert_eq!(st.code(), Some(0), "{}", text(&dir, "rst2", "err"));
    assert_carried_on(&dir, "rst2", r2.id() as i32);
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}
