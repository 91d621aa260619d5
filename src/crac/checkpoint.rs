//! The checkpoint side of the engine: leave the JVM's process tree, dump the JVM, tell it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{send_restore_data, CracError, Sidecar, SIDECAR};

/// `crestengine checkpoint DIR`.
#[derive(Debug, Clone)]
pub struct CheckpointRequest {
    /// The image directory (relative paths are the JVM's working directory's, which the engine
    /// inherits).
    pub dir: PathBuf,
    /// `CRAC_CRIU_LEAVE_RUNNING` / `keep_running`: the JVM runs on after the dump.
    pub leave_running: bool,
    /// The JVM thread waiting inside the engine (the library engine passes it): the signal
    /// goes to it alone, and the image records it for the restore.
    pub tid: Option<i32>,
}

/// The most bytes of the JVM's own files (see [`carried_files`]) kept across the dump.
const CARRIED_LIMIT: u64 = 64 << 20;

/// The files beside an image that are not crest's (crest's all end in `.img`): what the JVM
/// or the library engine wrote there (`tags`, `score`, `engine`, user data, ...), read before
/// the dump replaces the directory, to be written into the new one. The engine's own sidecar
/// is written anew.
fn carried_files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut total = 0u64;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.ends_with(".img") || name == SIDECAR {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        if total + meta.len() > CARRIED_LIMIT {
            eprintln!(
                "crestengine: warning: {} is not kept beside the new image (the files kept \
                 there are limited to {} MiB)",
                entry.path().display(),
                CARRIED_LIMIT >> 20
            );
            continue;
        }
        if let Ok(bytes) = std::fs::read(entry.path()) {
            total += bytes.len() as u64;
            out.push((name, bytes));
        }
    }
    out
}

/// How long the detached dumper waits to be re-parented and for the JVM to reap the engine.
const DETACH_TIMEOUT: Duration = Duration::from_secs(30);

/// What the process the JVM started sees: `Ok(())` once the dumper runs on its own (the caller
/// exits 0). The dumper itself never returns: it exits 0 when the dump succeeded, 1 otherwise.
pub fn checkpoint(req: &CheckpointRequest) -> Result<(), CracError> {
    // SAFETY: getppid and getpid have no preconditions.
    let (jvm, me) = unsafe { (libc::getppid(), libc::getpid()) };
    let dir = std::path::absolute(&req.dir)
        .map_err(|e| CracError::os(format!("resolving {}", req.dir.display()), e))?;
    // The files the JVM wrote there, read before the dump replaces the directory.
    let carried = carried_files(&dir);
    // SAFETY: crestengine is single-threaded here (nothing has started a thread yet), so the
    // child may run any code.
    match unsafe { libc::fork() } {
        -1 => return Err(CracError::os("fork", std::io::Error::last_os_error())),
        0 => {}
        _ => return Ok(()),
    }
    let code = match dump_detached(req, jvm, me, &dir, &carried) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("crestengine: checkpoint failed: {e}");
            if let Err(e2) = send_restore_data(jvm, req.tid, -1) {
                eprintln!("crestengine: cannot tell the JVM: {e2}");
            }
            1
        }
    };
    std::process::exit(code);
}

fn dump_detached(
    req: &CheckpointRequest,
    jvm: i32,
    engine: i32,
    dir: &std::path::Path,
    carried: &[(String, Vec<u8>)],
) -> Result<(), CracError> {
    let detach = |why: String| CracError::Detach { jvm, why };
    let deadline = Instant::now() + DETACH_TIMEOUT;
    // Re-parented once the engine process exited (to init or a subreaper).
    loop {
        // SAFETY: getppid has no preconditions.
        let parent = unsafe { libc::getppid() };
        if parent == jvm {
            return Err(detach(
                "the JVM is a child subreaper, so the dumping process stays its descendant".into(),
            ));
        }
        if parent != engine {
            break;
        }
        if Instant::now() > deadline {
            return Err(detach(format!(
                "the engine process {engine} did not exit within {DETACH_TIMEOUT:?}"
            )));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    // And once the JVM reaped it: no zombie child of the JVM's is left in the dumped tree.
    // SAFETY: kill with signal 0 only checks that the pid exists.
    while unsafe { libc::kill(engine, 0) } == 0 {
        if Instant::now() > deadline {
            return Err(detach(format!(
                "the JVM did not reap the engine process {engine} within {DETACH_TIMEOUT:?}"
            )));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    // Still in the JVM's session: its controlling terminal, if it has one.
    let ctty = super::open_controlling_terminal();
    // Out of the JVM's session and process group, so the dumped tree is the JVM's alone.
    // SAFETY: setsid has no preconditions (it fails harmlessly for a group leader).
    unsafe { libc::setsid() };
    // A JVM started from a shell has the shell's terminal, which this process inherited on
    // one of its standard fds, or at least as its session's terminal; crest takes its
    // standard input as that terminal.
    let on_terminal = super::terminal_on_stdin(ctty);
    let opts = crate::dump::DumpOptions {
        pid: jvm,
        dir: dir.to_path_buf(),
        leave_running: req.leave_running,
        // The JVM sits inside the engine call at a safepoint: its attach listener would not
        // answer a GC request now (and its heap was already collected).
        gc_hint: false,
        shell_job: on_terminal.is_some(),
        ..Default::default()
    };
    crate::dump::dump(&opts).map_err(|e| CracError::Dump {
        pid: jvm,
        dir: dir.to_path_buf(),
        source: e.into(),
    })?;
    let mut files: Vec<(String, Vec<u8>)> = carried.to_vec();
    let sidecar = Sidecar {
        pid: jvm,
        tid: req.tid,
    }
    .render()
    .into_bytes();
    files.push((SIDECAR.to_string(), sidecar));
    for (name, bytes) in &files {
        let path = dir.join(name);
        if let Err(e) = std::fs::write(&path, bytes) {
            // The image itself is complete; without the sidecar the restore signals the
            // whole process instead of the waiting thread.
            eprintln!("crestengine: warning: cannot write {}: {e}", path.display());
        }
    }
    if req.leave_running {
        send_restore_data(jvm, req.tid, 0)?;
    }
    Ok(())
}
