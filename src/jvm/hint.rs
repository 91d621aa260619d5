//! The GC hint: a full GC with the heap-free ratios lowered, so the collector gives its free
//! committed heap back to the OS before crest freezes the JVM.
//!
//! G1, Parallel and Serial resize the heap after a full GC so that between MinHeapFreeRatio and
//! MaxHeapFreeRatio percent of it is free; with the defaults (40/70 for G1) a JVM that just
//! dropped most of its data keeps much of its heap committed. Lowering MaxHeapFreeRatio to 5 for
//! the GC makes it shrink to little more than the live data; the uncommitted pages are no longer
//! present and the dump skips them. Both flags are manageable (settable at run time) and go back
//! to their values straight after the GC. Collectors that ignore them (ZGC, Shenandoah,
//! Epsilon) are not harmed by the change, and a JVM that refuses it just gets the plain GC.

use std::time::{Duration, Instant};

use super::attach::{self, AttachClient};
use super::heap::{parse_heap_info, parse_heap_ranges};
use super::{HeapUsage, HintOptions, HintReport, JvmError, JvmInfo};

const MIN_FREE: &str = "MinHeapFreeRatio";
const MAX_FREE: &str = "MaxHeapFreeRatio";
/// MaxHeapFreeRatio during the GC: the heap keeps at most 5% free.
const SHRINK_MAX_FREE: u64 = 5;
/// Time the flags get to go back when the hint's own deadline has already passed: leaving
/// them lowered would make the JVM keep shrinking its heap after every full GC from now on.
const RESTORE_GRACE: Duration = Duration::from_secs(5);
/// The diagnostic command that returns freed native (malloc) memory to the OS (JDK 17.0.9+, 21+).
const TRIM_NATIVE: &str = "System.trim_native_heap";
/// How often crest looks at the heap's mappings while the JVM uncommits.
const UNCOMMIT_POLL: Duration = Duration::from_millis(10);
/// How long the heap's accessible memory may stay unchanged before crest stops waiting for it to
/// come down to the committed size (a busy JVM may have grown its heap again meanwhile, and
/// every millisecond here delays the dump). Above the 100 ms G1 waits after a GC before it
/// starts uncommitting, with room for a step or two.
const UNCOMMIT_QUIET: Duration = Duration::from_millis(300);

/// A flag crest changed (or may have changed: a request that timed out may still be applied).
#[derive(Debug, Clone, Copy)]
struct FlagChange {
    name: &'static str,
    original: u64,
    set_to: u64,
}

/// Asks the JVM to collect its garbage and give free memory back: preflight checks, connect
/// (starting the attach listener if needed), `GC.heap_info`, lower the heap-free ratios,
/// `GC.run`, put the ratios back, `System.trim_native_heap` where the JDK has it,
/// `GC.heap_info` again, and wait (within the timeout) until the heap the GC freed is really
/// unmapped, so that a dump right after the hint no longer finds its pages.
///
/// Everything runs within `opts.timeout`, except that when the ratios were lowered they always
/// get put back — after an error or a timeout too — with up to 5 more seconds if the timeout has
/// run out by then. When that fails, [`JvmError::FlagsNotRestored`] says which flag is left at
/// which value and the `jcmd` commands that fix it.
pub fn gc_hint(info: &JvmInfo, opts: &HintOptions) -> Result<HintReport, JvmError> {
    let started = Instant::now();
    let deadline = started + opts.timeout;
    let pid = info.pid;

    attach::preflight(info)?;
    let client = AttachClient::connect(info, deadline)?;
    crate::info!(
        1,
        "JVM {pid}: GC hint over attach protocol v{}",
        client.protocol_version()
    );
    let heap_before = heap_info(&client, deadline)?.usage;
    log_heap(pid, "before the GC", &heap_before);

    collect_shrunk(&client, deadline)?;

    // The GC has done its work: what follows only reports on it, so a failure here (a
    // timeout, most likely) leaves a field empty instead of failing the hint.
    let native_trim = trim_native(&client, deadline).unwrap_or_else(|e| {
        crate::info!(1, "{e}");
        None
    });
    let after = heap_info(&client, deadline).unwrap_or_else(|e| {
        crate::info!(1, "{e}");
        HeapSnapshot {
            usage: None,
            ranges: Vec::new(),
        }
    });
    log_heap(pid, "after the GC", &after.usage);
    if let Some(usage) = after.usage.filter(|_| !after.ranges.is_empty()) {
        if let Err(e) = wait_for_uncommit(pid, &after.ranges, usage.committed_bytes, deadline) {
            crate::info!(1, "{e}");
        }
    }
    let heap_after = after.usage;
    Ok(HintReport {
        protocol_version: client.protocol_version(),
        heap_before,
        heap_after,
        native_trim,
        elapsed: started.elapsed(),
    })
}

/// Lowers the heap-free ratios, runs `GC.run`, and puts the ratios back, on every path.
fn collect_shrunk(client: &AttachClient, deadline: Instant) -> Result<(), JvmError> {
    let pid = client.pid();
    let mut changed = Vec::new();
    let gc = shrink_flags(client, deadline, &mut changed).and_then(|()| {
        crate::info!(1, "JVM {pid}: GC.run");
        client.jcmd("GC.run", deadline).map(drop)
    });
    let restored = restore_flags(client, &changed, deadline);
    match (gc, restored) {
        (gc, Ok(())) => gc,
        (gc, Err(detail)) => {
            let detail = match gc {
                Err(e) => format!("{detail} (the hint had failed: {e})"),
                Ok(()) => detail,
            };
            Err(JvmError::FlagsNotRestored { pid, detail })
        }
    }
}

fn log_heap(pid: i32, when: &str, heap: &Option<HeapUsage>) {
    match heap {
        Some(h) => crate::info!(
            1,
            "JVM {pid}: heap {when}: {} KiB committed, {} KiB used",
            h.committed_bytes >> 10,
            h.used_bytes >> 10
        ),
        None => crate::info!(1, "JVM {pid}: heap {when}: GC.heap_info was not readable"),
    }
}

/// What `GC.heap_info` says: the sizes, and the address ranges the heap reserves.
struct HeapSnapshot {
    usage: Option<HeapUsage>,
    ranges: Vec<(u64, u64)>,
}

/// `GC.heap_info`, parsed; no usage when the JVM refuses the command or crest cannot read its
/// wording.
fn heap_info(client: &AttachClient, deadline: Instant) -> Result<HeapSnapshot, JvmError> {
    match client.jcmd("GC.heap_info", deadline) {
        Ok(out) => Ok(HeapSnapshot {
            usage: parse_heap_info(&out),
            ranges: parse_heap_ranges(&out),
        }),
        Err(JvmError::CommandFailed { output, .. }) => {
            crate::info!(1, "JVM {}: GC.heap_info: {output}", client.pid());
            Ok(HeapSnapshot {
                usage: None,
                ranges: Vec::new(),
            })
        }
        Err(e) => Err(e),
    }
}

/// Bytes of `pid`'s accessible (readable or writable) mappings inside `ranges`: the committed
/// part of the heap as the kernel sees it (HotSpot uncommits by mapping PROT_NONE over it).
fn accessible_bytes(pid: i32, ranges: &[(u64, u64)]) -> Result<u64, JvmError> {
    let maps = crate::proc::Proc::open(pid)?.maps()?;
    Ok(maps
        .iter()
        .filter(|m| m.read || m.write)
        .map(|m| {
            ranges
                .iter()
                .map(|&(lo, hi)| m.end.min(hi).saturating_sub(m.start.max(lo)))
                .sum::<u64>()
        })
        .sum())
}

/// Waits until the heap's accessible memory is down to `committed`. G1 (JDK 16+) gives the
/// regions a GC freed back to the OS in a background task that starts 100 ms after the GC and
/// uncommits at most 128 MiB a step, so `GC.heap_info` reports the smaller size well before
/// the pages are gone; a dump that froze the JVM then would still copy them. Parallel and Serial
/// uncommit inside the GC: there is nothing to wait for. Gives up at `deadline`, or when
/// nothing has changed for [`UNCOMMIT_QUIET`], or as soon as the heap grows again.
fn wait_for_uncommit(
    pid: i32,
    ranges: &[(u64, u64)],
    committed: u64,
    deadline: Instant,
) -> Result<(), JvmError> {
    let started = Instant::now();
    let mut last = accessible_bytes(pid, ranges)?;
    let mut last_change = started;
    while last > committed {
        let now = Instant::now();
        if now >= deadline || now.duration_since(last_change) >= UNCOMMIT_QUIET {
            crate::info!(
                1,
                "JVM {pid}: stopped waiting after {:?}: {} KiB of heap still mapped, {} KiB \
                 committed",
                started.elapsed(),
                last >> 10,
                committed >> 10
            );
            return Ok(());
        }
        std::thread::sleep(UNCOMMIT_POLL.min(deadline - now));
        let now_bytes = accessible_bytes(pid, ranges)?;
        if now_bytes > last {
            crate::info!(
                1,
                "JVM {pid}: the heap grows again; not waiting for it to shrink"
            );
            return Ok(());
        }
        if now_bytes != last {
            last = now_bytes;
            last_change = Instant::now();
        }
    }
    crate::info!(
        1,
        "JVM {pid}: heap memory given back to the OS after {:?}",
        started.elapsed()
    );
    Ok(())
}

/// The value `printflag` shows for flag `name` (`-XX:MaxHeapFreeRatio=70`); `None` for an
/// unknown flag ("no such flag ...") or another wording.
fn parse_flag_value(output: &str, name: &str) -> Option<u64> {
    let prefix = format!("-XX:{name}=");
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

fn print_flag(
    client: &AttachClient,
    name: &str,
    deadline: Instant,
) -> Result<Option<u64>, JvmError> {
    let out = client.execute("printflag", &[name], deadline)?;
    Ok(parse_flag_value(&out, name))
}

/// `VM.set_flag NAME VALUE`. The command reports a refused value (out of range, not manageable)
/// as output with result code 0, and prints nothing on success, so any output is a refusal.
fn set_flag(
    client: &AttachClient,
    name: &str,
    value: u64,
    deadline: Instant,
) -> Result<(), JvmError> {
    let command = format!("VM.set_flag {name} {value}");
    let out = client.jcmd(&command, deadline)?;
    if out.trim().is_empty() {
        Ok(())
    } else {
        Err(JvmError::CommandFailed {
            pid: client.pid(),
            command: format!("jcmd {command}"),
            code: 0,
            output: out.trim().to_string(),
        })
    }
}

/// Lowers MinHeapFreeRatio to 0, then MaxHeapFreeRatio to 5 (in that order, so Min <= Max holds
/// at every step). Records each change in `changed` before asking for it, so one whose answer
/// never came is still put back. A refusal ends the shrink without error: the GC runs anyway.
fn shrink_flags(
    client: &AttachClient,
    deadline: Instant,
    changed: &mut Vec<FlagChange>,
) -> Result<(), JvmError> {
    let pid = client.pid();
    let read = |name| match print_flag(client, name, deadline) {
        Err(JvmError::CommandFailed { output, .. }) => {
            crate::info!(1, "JVM {pid}: printflag {name}: {output}");
            Ok(None)
        }
        other => other,
    };
    let (Some(min), Some(max)) = (read(MIN_FREE)?, read(MAX_FREE)?) else {
        crate::info!(
            1,
            "JVM {pid}: heap-free ratios unknown; GC without shrinking the heap"
        );
        return Ok(());
    };
    crate::info!(1, "JVM {pid}: {MIN_FREE}={min} {MAX_FREE}={max}");
    for (name, original, target) in [(MIN_FREE, min, 0), (MAX_FREE, max, SHRINK_MAX_FREE)] {
        if original <= target {
            continue;
        }
        changed.push(FlagChange {
            name,
            original,
            set_to: target,
        });
        match set_flag(client, name, target, deadline) {
            Ok(()) => {}
            Err(JvmError::CommandFailed { output, .. }) => {
                // Known not applied: nothing to put back for this one.
                changed.pop();
                crate::info!(
                    1,
                    "JVM {pid}: {name} cannot be set ({output}); GC without shrinking the heap"
                );
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Puts the flags in `changed` back, the last changed first (MaxHeapFreeRatio, then
/// MinHeapFreeRatio, keeping Min <= Max at every step), and reads them back. The error says which
/// flag is left at which value and how to fix it.
fn restore_flags(
    client: &AttachClient,
    changed: &[FlagChange],
    deadline: Instant,
) -> Result<(), String> {
    let pid = client.pid();
    if changed.is_empty() {
        return Ok(());
    }
    if !crate::proc::pid_in_use(pid) {
        // The JVM is gone: there is nothing to put back, and the caller reports why.
        return Ok(());
    }
    let deadline = deadline.max(Instant::now() + RESTORE_GRACE);
    let mut failure = None;
    for c in changed.iter().rev() {
        crate::info!(1, "JVM {pid}: {} back to {}", c.name, c.original);
        if let Err(e) = set_flag(client, c.name, c.original, deadline) {
            // Putting Min back while Max is still low would be refused: stop here.
            failure = Some(format!(
                "setting {} back to {} failed: {e}",
                c.name, c.original
            ));
            break;
        }
    }
    let mut left = Vec::new();
    for c in changed.iter().rev() {
        match print_flag(client, c.name, deadline) {
            Ok(Some(v)) if v == c.original => {}
            Ok(Some(v)) => left.push(format!("{} is left at {v} (was {})", c.name, c.original)),
            Ok(None) | Err(_) => left.push(format!(
                "{} may be left at {} (was {}; crest could not read it back)",
                c.name, c.set_to, c.original
            )),
        }
    }
    if left.is_empty() {
        return Ok(());
    }
    let fix: Vec<String> = changed
        .iter()
        .rev()
        .map(|c| format!("`jcmd {pid} VM.set_flag {} {}`", c.name, c.original))
        .collect();
    Err(format!(
        "{}{}; put them back with {} (a JVM that was busy may still apply crest's requests \
         later: check with `jcmd {pid} VM.flags`)",
        left.join(", "),
        failure.map(|f| format!(" ({f})")).unwrap_or_default(),
        fix.join(" and then ")
    ))
}

/// `System.trim_native_heap` when `help` lists it; its output.
fn trim_native(client: &AttachClient, deadline: Instant) -> Result<Option<String>, JvmError> {
    let pid = client.pid();
    let help = match client.jcmd("help", deadline) {
        Ok(h) => h,
        Err(JvmError::CommandFailed { output, .. }) => {
            crate::info!(1, "JVM {pid}: help: {output}");
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    if !help.split_whitespace().any(|w| w == TRIM_NATIVE) {
        crate::info!(1, "JVM {pid}: no {TRIM_NATIVE} in this JDK");
        return Ok(None);
    }
    match client.jcmd(TRIM_NATIVE, deadline) {
        Ok(out) => {
            let out = out.trim().to_string();
            crate::info!(1, "JVM {pid}: {out}");
            Ok(Some(out))
        }
        Err(JvmError::CommandFailed { output, .. }) => {
            crate::info!(1, "JVM {pid}: {TRIM_NATIVE}: {output}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::sync::{Arc, Mutex};

    /// A stand-in attach listener (protocol v1) with HotSpot's rules for the two flags:
    /// Min <= Max at all times, set_flag refusals reported as output with code 0.
    #[derive(Default)]
    struct Fake {
        flags: HashMap<String, u64>,
        /// `jcmd` command lines answered with a refusal.
        refuse: Vec<String>,
        gc_delay: Duration,
        /// Every request, as `op arg0`.
        log: Vec<String>,
    }

    fn read_request(s: &mut UnixStream) -> Vec<String> {
        // "1", op and three arguments, each NUL-terminated.
        let mut bytes = Vec::new();
        let mut b = [0u8; 1];
        while bytes.iter().filter(|&&c| c == 0).count() < 5 {
            if s.read(&mut b).unwrap() == 0 {
                break;
            }
            bytes.push(b[0]);
        }
        bytes
            .split(|&c| c == 0)
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }

    fn answer(fake: &Arc<Mutex<Fake>>, op: &str, arg: &str) -> String {
        let mut f = fake.lock().unwrap();
        f.log.push(format!("{op} {arg}"));
        match op {
            "printflag" => format!("0\n-XX:{arg}={}\n", f.flags[arg]),
            "jcmd" if arg == "GC.run" => {
                let delay = f.gc_delay;
                drop(f);
                std::thread::sleep(delay);
                "0\n".into()
            }
            "jcmd" => {
                if f.refuse.iter().any(|r| r == arg) {
                    return "0\nrefused by the stand-in\n".into();
                }
                let w: Vec<&str> = arg.split(' ').collect();
                let (name, value) = (w[1], w[2].parse::<u64>().unwrap());
                let (min, max) = (f.flags[MIN_FREE], f.flags[MAX_FREE]);
                if (name == MIN_FREE && value > max) || (name == MAX_FREE && value < min) {
                    return format!("0\n{name} ({value}) breaks Min <= Max ({min}, {max})\n");
                }
                f.flags.insert(name.to_string(), value);
                "0\n".into()
            }
            _ => format!("-1\nOperation {op} not recognized!"),
        }
    }

    /// Serves `fake` until dropped; gives a client for it.
    struct Server {
        fake: Arc<Mutex<Fake>>,
        socket: std::path::PathBuf,
        thread: Option<std::thread::JoinHandle<()>>,
        _dir: tempfile::TempDir,
    }

    impl Server {
        fn start(min: u64, max: u64, refuse: &[&str], gc_delay: Duration) -> Server {
            let dir = tempfile::tempdir().unwrap();
            let socket = dir.path().join("attach");
            let listener = UnixListener::bind(&socket).unwrap();
            let fake = Arc::new(Mutex::new(Fake {
                flags: HashMap::from([(MIN_FREE.into(), min), (MAX_FREE.into(), max)]),
                refuse: refuse.iter().map(|r| r.to_string()).collect(),
                gc_delay,
                log: Vec::new(),
            }));
            let f = fake.clone();
            let thread = std::thread::spawn(move || {
                for s in listener.incoming() {
                    let mut s = s.unwrap();
                    let req = read_request(&mut s);
                    if req.get(1).map(String::as_str) == Some("stop") {
                        return;
                    }
                    let reply = answer(&f, &req[1], &req[2]);
                    // The client may have given up (a timeout): its end is then closed.
                    let _ = s.write_all(reply.as_bytes());
                }
            });
            Server {
                fake,
                socket,
                thread: Some(thread),
                _dir: dir,
            }
        }

        fn client(&self) -> AttachClient {
            AttachClient::for_socket(std::process::id() as i32, self.socket.clone(), 1)
        }

        fn flags(&self) -> (u64, u64) {
            let f = self.fake.lock().unwrap();
            (f.flags[MIN_FREE], f.flags[MAX_FREE])
        }

        fn log(&self) -> Vec<String> {
            self.fake.lock().unwrap().log.clone()
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            if let Ok(mut s) = UnixStream::connect(&self.socket) {
                let _ = s.write_all(b"1\0stop\0\0\0\0");
            }
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn ratios_go_down_min_first_and_back_max_first() {
        let server = Server::start(40, 70, &[], Duration::ZERO);
        collect_shrunk(&server.client(), soon()).unwrap();
        assert_eq!(
            server.log(),
            [
                "printflag MinHeapFreeRatio",
                "printflag MaxHeapFreeRatio",
                "jcmd VM.set_flag MinHeapFreeRatio 0",
                "jcmd VM.set_flag MaxHeapFreeRatio 5",
                "jcmd GC.run",
                "jcmd VM.set_flag MaxHeapFreeRatio 70",
                "jcmd VM.set_flag MinHeapFreeRatio 40",
                "printflag MaxHeapFreeRatio",
                "printflag MinHeapFreeRatio",
            ]
        );
        assert_eq!(server.flags(), (40, 70));
    }

    #[test]
    fn ratios_already_low_are_left_alone() {
        let server = Server::start(0, 3, &[], Duration::ZERO);
        collect_shrunk(&server.client(), soon()).unwrap();
        assert_eq!(
            server.log(),
            [
                "printflag MinHeapFreeRatio",
                "printflag MaxHeapFreeRatio",
                "jcmd GC.run"
            ]
        );
        assert_eq!(server.flags(), (0, 3));
    }

    #[test]
    fn a_gc_that_times_out_still_gets_the_ratios_back() {
        let server = Server::start(40, 70, &[], Duration::from_millis(600));
        let deadline = Instant::now() + Duration::from_millis(300);
        match collect_shrunk(&server.client(), deadline) {
            Err(JvmError::Timeout { what, .. }) => assert!(what.contains("GC.run"), "{what}"),
            other => panic!("expected Timeout, got {other:?}"),
        }
        // The restore waited for the stand-in to finish the GC, past the hint's deadline.
        assert_eq!(server.flags(), (40, 70));
        assert!(server.log().ends_with(&[
            "jcmd VM.set_flag MaxHeapFreeRatio 70".to_string(),
            "jcmd VM.set_flag MinHeapFreeRatio 40".to_string(),
            "printflag MaxHeapFreeRatio".to_string(),
            "printflag MinHeapFreeRatio".to_string()
        ]));
    }

    #[test]
    fn a_refused_shrink_still_collects_and_restores_what_changed() {
        let server = Server::start(40, 70, &["VM.set_flag MaxHeapFreeRatio 5"], Duration::ZERO);
        collect_shrunk(&server.client(), soon()).unwrap();
        let log = server.log();
        assert!(log.contains(&"jcmd GC.run".to_string()), "{log:?}");
        assert!(
            log.contains(&"jcmd VM.set_flag MinHeapFreeRatio 40".to_string()),
            "{log:?}"
        );
        assert!(
            !log.contains(&"jcmd VM.set_flag MaxHeapFreeRatio 70".to_string()),
            "{log:?}"
        );
        assert_eq!(server.flags(), (40, 70));
    }

    #[test]
    fn a_failed_restore_says_what_is_left_and_how_to_fix_it() {
        let server = Server::start(40, 70, &["VM.set_flag MaxHeapFreeRatio 70"], Duration::ZERO);
        let pid = std::process::id();
        match collect_shrunk(&server.client(), soon()) {
            Err(JvmError::FlagsNotRestored { detail, .. }) => {
                assert!(
                    detail.contains("MaxHeapFreeRatio is left at 5 (was 70)"),
                    "{detail}"
                );
                assert!(
                    detail.contains("MinHeapFreeRatio is left at 0 (was 40)"),
                    "{detail}"
                );
                assert!(
                    detail.contains(&format!(
                        "`jcmd {pid} VM.set_flag MaxHeapFreeRatio 70` and then `jcmd {pid} \
                         VM.set_flag MinHeapFreeRatio 40`"
                    )),
                    "{detail}"
                );
            }
            other => panic!("expected FlagsNotRestored, got {other:?}"),
        }
        // Min was not even tried: with Max still at 5 it would have been refused.
        assert!(!server
            .log()
            .contains(&"jcmd VM.set_flag MinHeapFreeRatio 40".to_string()));
    }

    #[test]
    fn printflag_values() {
        assert_eq!(
            parse_flag_value("-XX:MaxHeapFreeRatio=70\n", MAX_FREE),
            Some(70)
        );
        assert_eq!(
            parse_flag_value("-XX:MinHeapFreeRatio=0\n", MIN_FREE),
            Some(0)
        );
        assert_eq!(
            parse_flag_value("-XX:MinHeapFreeRatio=0\n", MAX_FREE),
            None,
            "another flag's line"
        );
        assert_eq!(parse_flag_value("no such flag 'Foo'\n", "Foo"), None);
        assert_eq!(parse_flag_value("-XX:Foo=bar\n", "Foo"), None);
    }
}
