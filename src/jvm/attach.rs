//! The client side of HotSpot's attach mechanism on Linux.
//!
//! A JVM's attach listener serves the AF_UNIX stream socket `/tmp/.java_pid<nspid>` in its own
//! root, `<nspid>` being its pid in its own pid namespace. The listener is started lazily: a
//! client creates the trigger file `.attach_pid<nspid>` (in the JVM's working directory, or in its
//! /tmp) and sends SIGQUIT; the JVM's signal dispatcher sees the file and starts the listener
//! instead of printing a thread dump. (A JVM run with -Xrs, which has no SIGQUIT handler,
//! starts its listener at startup instead.)
//!
//! Each operation is one connection: the request, then the reply — an ASCII decimal result
//! code, `\n`, the output — until the JVM closes its end. Requests:
//!
//! - v1: `1\0<op>\0<arg0>\0<arg1>\0<arg2>\0`, always three arguments, the op at most 16 bytes
//!   and each argument at most 1024 (HotSpot drops a longer request without a reply);
//! - v2 (JDK 24+): `2\0<size>\0<op>\0(<arg>\0)*`, `<size>` the decimal byte count of what follows
//!   its NUL, any number of arguments.
//!
//! The version is learned per JVM with a v1 `getversion`: a JVM that does not know the operation
//! answers with a non-zero code (v1 only); otherwise the output is the highest version it
//! speaks. The listener accepts a peer with its own effective uid and gid, or root.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::socket::{Conn, SockError, SUN_PATH_MAX};
use super::{perfdata, JvmError, JvmInfo};
use crate::proc::{FdTarget, Proc, ProcError};

/// Longest v1 operation name (HotSpot's `AttachOperation::name_length_max`).
const V1_MAX_OP: usize = 16;
/// Longest v1 argument (`AttachOperation::arg_length_max`).
const V1_MAX_ARG: usize = 1024;

/// Longest wait for the JVM to close its end of a finished attach connection.
const JVM_CLOSE_WAIT: Duration = Duration::from_secs(1);
/// A v1 request always carries exactly this many arguments.
const V1_ARGS: usize = 3;
/// Largest v2 request body HotSpot reads.
const V2_MAX_BODY: usize = 256 * 1024;

/// First and longest pause while waiting for the listener to come up after SIGQUIT. The first
/// answer usually comes within tens of milliseconds; the pauses grow so a slow JVM is not polled
/// needlessly often.
const FIRST_PAUSE: Duration = Duration::from_millis(5);
const LONGEST_PAUSE: Duration = Duration::from_millis(200);

/// Options in HotSpot that turn the attach mechanism off or on; the last one seen wins.
const DISABLE_ATTACH: &str = "-XX:+DisableAttachMechanism";
const ENABLE_ATTACH: &str = "-XX:-DisableAttachMechanism";

/// Environment variables whose options HotSpot reads, in the order it applies them around the
/// command line (JAVA_TOOL_OPTIONS first, then JDK_JAVA_OPTIONS as the launcher prepends it to
/// the arguments, ..., _JAVA_OPTIONS last).
const ENV_BEFORE_CMDLINE: [&str; 2] = ["JAVA_TOOL_OPTIONS", "JDK_JAVA_OPTIONS"];
const ENV_AFTER_CMDLINE: &str = "_JAVA_OPTIONS";

/// A connection-less handle to one JVM's attach listener: each operation opens its own
/// connection, as HotSpot serves exactly one operation per connection.
#[derive(Debug, Clone)]
pub struct AttachClient {
    pid: i32,
    socket: PathBuf,
    version: u32,
}

/// A reply: result code and output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub code: i32,
    pub output: String,
}

impl AttachClient {
    /// Connects to the JVM's attach listener, starting it when its socket is missing or stale
    /// (after checking that SIGQUIT is safe to send), and learns the protocol version.
    pub fn connect(info: &JvmInfo, deadline: Instant) -> Result<AttachClient, JvmError> {
        let started = Instant::now();
        let pid = info.pid;
        let proc = Proc::open(pid)?;
        let socket = socket_path(&proc, info.ns_pid);
        if socket.as_os_str().len() > SUN_PATH_MAX {
            return Err(JvmError::Io {
                pid,
                path: socket,
                err: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("longer than the {SUN_PATH_MAX} bytes an AF_UNIX address holds"),
                ),
            });
        }
        let conn = open_or_trigger(&proc, info, &socket, deadline, started)?;
        let mut client = AttachClient {
            pid,
            socket,
            version: 1,
        };
        let reply = client.exchange(conn, "getversion", &[], started, deadline)?;
        client.version = if reply.code != 0 {
            // "Operation getversion not recognized!": a JVM from before JDK 24.
            1
        } else {
            let word = reply.output.split_whitespace().next().unwrap_or("");
            match word.parse::<u32>() {
                Ok(v) if v >= 2 => 2,
                Ok(_) => 1,
                Err(_) => {
                    return Err(JvmError::Protocol {
                        pid,
                        detail: format!(
                            "getversion answered {:?}, not a version number",
                            reply.output
                        ),
                    })
                }
            }
        };
        crate::info!(
            1,
            "JVM {pid}: attach listener at {} speaks protocol v{}",
            client.socket.display(),
            client.version
        );
        Ok(client)
    }

    /// A client for a listener at `socket` speaking `version`, without connecting: for tests
    /// against a stand-in listener.
    #[cfg(test)]
    pub(crate) fn for_socket(pid: i32, socket: PathBuf, version: u32) -> AttachClient {
        AttachClient {
            pid,
            socket,
            version,
        }
    }

    pub fn protocol_version(&self) -> u32 {
        self.version
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Runs one attach operation (a fresh connection per operation, as HotSpot wants) and
    /// returns the JVM's output; a non-zero result code is [`JvmError::CommandFailed`] carrying
    /// the output. When this returns, the JVM has closed its side of the connection.
    pub fn execute(&self, op: &str, args: &[&str], deadline: Instant) -> Result<String, JvmError> {
        let started = Instant::now();
        let conn = match Conn::connect(&self.socket, deadline) {
            Ok(c) => c,
            Err(e) => return Err(self.sock_error(e, op, args, started)),
        };
        let reply = self.exchange(conn, op, args, started, deadline)?;
        if reply.code != 0 {
            return Err(JvmError::CommandFailed {
                pid: self.pid,
                command: describe(op, args),
                code: reply.code,
                output: reply.output.trim().to_string(),
            });
        }
        Ok(reply.output)
    }

    /// Runs a diagnostic command, e.g. `GC.run` or `VM.set_flag MaxHeapFreeRatio 5`, through the
    /// `jcmd` operation. An unknown command or bad arguments give [`JvmError::CommandFailed`];
    /// but a command may also report failure in its output with result code 0 (`VM.set_flag`
    /// does), and JDK 24+ streams a command's output after sending code 0 before running it, so
    /// an exception during the run shows only in the output.
    pub fn jcmd(&self, command_line: &str, deadline: Instant) -> Result<String, JvmError> {
        self.execute("jcmd", &[command_line], deadline)
    }

    /// Sends one request on `conn` and reads the whole reply.
    fn exchange(
        &self,
        conn: Conn,
        op: &str,
        args: &[&str],
        started: Instant,
        deadline: Instant,
    ) -> Result<Reply, JvmError> {
        let request =
            encode_request(self.version, op, args).map_err(|detail| JvmError::InvalidRequest {
                pid: self.pid,
                detail,
            })?;
        conn.send_all(&request, deadline)
            .map_err(|e| self.sock_error(e, op, args, started))?;
        let bytes = conn
            .read_to_end(deadline)
            .map_err(|e| self.sock_error(e, op, args, started))?;
        // The JVM's end of the connection, if it still has one, to see it closed (best effort:
        // without sock_diag the wait is skipped). Asked only now: the end a listener accepts
        // gets its inode at accept(2), and reads as inode 0 once released.
        let jvm_end = conn
            .inode()
            .ok()
            .and_then(|ino| crate::dump::sockdiag::query(ino).ok())
            .and_then(|diag| diag.peer)
            .filter(|&peer| peer != 0);
        if let Some(ino) = jvm_end {
            self.wait_until_closed(ino, deadline.min(Instant::now() + JVM_CLOSE_WAIT));
        }
        parse_reply(&bytes).map_err(|detail| JvmError::Protocol {
            pid: self.pid,
            detail: format!("{}: {detail}", describe(op, args)),
        })
    }

    /// Waits (until `deadline`) for the JVM to close its end of a finished connection, socket
    /// inode `ino`. HotSpot shuts the connection down, which ends crest's read, and closes it
    /// a moment later: a dump that froze the JVM in between would find a half-closed
    /// connection in its fd table. Not closing in time is no error: a dump then names the fd.
    fn wait_until_closed(&self, ino: u64, deadline: Instant) {
        let Ok(proc) = Proc::open(self.pid) else {
            return;
        };
        loop {
            let held = proc
                .fds()
                .is_ok_and(|fds| fds.iter().any(|f| f.target == FdTarget::Socket(ino)));
            if !held || Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn sock_error(&self, e: SockError, op: &str, args: &[&str], started: Instant) -> JvmError {
        let pid = self.pid;
        match e {
            SockError::Timeout => JvmError::Timeout {
                pid,
                what: format!("its answer to `{}`", describe(op, args)),
                after: started.elapsed(),
            },
            SockError::TooLong => JvmError::Protocol {
                pid,
                detail: format!(
                    "the reply to `{}` is longer than {} bytes",
                    describe(op, args),
                    super::socket::MAX_REPLY
                ),
            },
            // The listener went away between operations: most likely the JVM exited.
            _ if !jvm_alive(pid) => JvmError::Proc(ProcError::NoSuchProcess { pid }),
            SockError::Missing => JvmError::Io {
                pid,
                path: self.socket.clone(),
                err: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the attach socket disappeared (a /tmp cleaner?); connecting again starts \
                     the listener again",
                ),
            },
            e => JvmError::Io {
                pid,
                path: self.socket.clone(),
                err: e.into_io(),
            },
        }
    }
}

/// `jcmd GC.run` or `printflag MaxHeapFreeRatio`: an operation as people would type it.
fn describe(op: &str, args: &[&str]) -> String {
    let mut s = op.to_string();
    for a in args.iter().filter(|a| !a.is_empty()) {
        s.push(' ');
        s.push_str(a);
    }
    s
}

/// The JVM's attach socket as crest reaches it: `/proc/PID/root/tmp/.java_pid<nspid>`. HotSpot
/// hardcodes /tmp on Linux (not $TMPDIR, not java.io.tmpdir).
pub fn socket_path(proc: &Proc, ns_pid: i32) -> PathBuf {
    proc.root_path()
        .join("tmp")
        .join(format!(".java_pid{ns_pid}"))
}

/// Whether the process is still there and not a zombie.
fn jvm_alive(pid: i32) -> bool {
    Proc::open(pid)
        .and_then(|p| p.status())
        .is_ok_and(|s| !matches!(s.state, 'Z' | 'X'))
}

/// Encodes a request in protocol `version`; the error says what does not fit.
pub(crate) fn encode_request(version: u32, op: &str, args: &[&str]) -> Result<Vec<u8>, String> {
    if op.is_empty() || op.contains(['\0', ' ']) {
        // HotSpot reads options after a space in the operation name.
        return Err(format!(
            "operation name {op:?} must be one word without NULs"
        ));
    }
    if let Some(a) = args.iter().find(|a| a.contains('\0')) {
        return Err(format!("argument {a:?} contains a NUL"));
    }
    let mut body = Vec::new();
    body.extend_from_slice(op.as_bytes());
    body.push(0);
    match version {
        1 => {
            if op.len() > V1_MAX_OP {
                return Err(format!(
                    "operation name {op:?} is longer than {V1_MAX_OP} bytes"
                ));
            }
            if args.len() > V1_ARGS {
                return Err(format!(
                    "{} arguments given, protocol v1 carries {V1_ARGS}",
                    args.len()
                ));
            }
            if let Some(a) = args.iter().find(|a| a.len() > V1_MAX_ARG) {
                return Err(format!(
                    "an argument of {} bytes is longer than the {V1_MAX_ARG} protocol v1 allows",
                    a.len()
                ));
            }
            for i in 0..V1_ARGS {
                body.extend_from_slice(args.get(i).unwrap_or(&"").as_bytes());
                body.push(0);
            }
            let mut req = b"1\0".to_vec();
            req.extend_from_slice(&body);
            Ok(req)
        }
        2 => {
            for a in args {
                body.extend_from_slice(a.as_bytes());
                body.push(0);
            }
            if body.len() > V2_MAX_BODY {
                return Err(format!(
                    "the request is {} bytes, more than the {V2_MAX_BODY} HotSpot reads",
                    body.len()
                ));
            }
            let mut req = format!("2\0{}\0", body.len()).into_bytes();
            req.extend_from_slice(&body);
            Ok(req)
        }
        v => Err(format!("protocol version {v} is unknown")),
    }
}

/// Splits a reply into its result code and output.
pub(crate) fn parse_reply(bytes: &[u8]) -> Result<Reply, String> {
    if bytes.is_empty() {
        return Err(format!(
            "the JVM closed the connection without a reply; its listener accepts only a client \
             with its own effective uid and gid or root (crest runs as euid {}, egid {}), and \
             drops a request it cannot read",
            nix::unistd::geteuid(),
            nix::unistd::getegid()
        ));
    }
    let Some(nl) = bytes.iter().position(|&b| b == b'\n') else {
        // A reply with a code and no output may lack the newline only if cut short.
        return Err(format!(
            "no newline after the result code in {:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(80)])
        ));
    };
    let head = String::from_utf8_lossy(&bytes[..nl]);
    let code = head
        .trim()
        .parse::<i32>()
        .map_err(|_| format!("result code {head:?} is not a number"))?;
    Ok(Reply {
        code,
        output: String::from_utf8_lossy(&bytes[nl + 1..]).into_owned(),
    })
}

/// Connects to the listener, starting it first if its socket is missing or stale.
fn open_or_trigger(
    proc: &Proc,
    info: &JvmInfo,
    socket: &Path,
    deadline: Instant,
    started: Instant,
) -> Result<Conn, JvmError> {
    let pid = info.pid;
    let io = |err: std::io::Error| JvmError::Io {
        pid,
        path: socket.to_path_buf(),
        err,
    };
    match Conn::connect(socket, deadline) {
        Ok(c) => return Ok(c),
        Err(SockError::Missing) => {}
        Err(SockError::Refused) => {
            // Nobody listens on that inode (an AF_UNIX connect with a full backlog waits, it
            // is not refused). Removing the dead file lets the JVM's listener re-create it: a
            // listener that thinks it is running restarts when its file is gone, while with the
            // file in place SIGQUIT would print a thread dump instead.
            crate::info!(
                1,
                "JVM {pid}: removing stale attach socket {}",
                socket.display()
            );
            match std::fs::remove_file(socket) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            }
        }
        Err(SockError::Timeout) => {
            return Err(JvmError::Timeout {
                pid,
                what: format!("a connection to {}", socket.display()),
                after: started.elapsed(),
            })
        }
        Err(e) => return Err(io(e.into_io())),
    }

    check_trigger_safe(proc, info)?;
    wait_until_running(proc, pid, deadline, started)?;
    let status = proc.status()?;
    let trigger = TriggerFile::create(proc, info.ns_pid, status.uid[1], status.gid[1])?;
    crate::info!(
        1,
        "JVM {pid}: starting its attach listener (trigger file {}, SIGQUIT)",
        trigger.describe()
    );
    kill(Pid::from_raw(pid), Signal::SIGQUIT).map_err(|errno| match errno {
        nix::errno::Errno::ESRCH => JvmError::Proc(ProcError::NoSuchProcess { pid }),
        errno => JvmError::Signal { pid, errno },
    })?;

    let mut pause = FIRST_PAUSE;
    loop {
        match Conn::connect(socket, deadline) {
            Ok(c) => return Ok(c),
            Err(SockError::Missing) | Err(SockError::Refused) => {}
            Err(SockError::Timeout) => break,
            Err(e) => return Err(io(e.into_io())),
        }
        if !jvm_alive(pid) {
            return Err(JvmError::Proc(ProcError::NoSuchProcess { pid }));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(LONGEST_PAUSE);
    }
    Err(JvmError::Timeout {
        pid,
        what: format!(
            "its attach listener to open {} after SIGQUIT",
            socket.display()
        ),
        after: started.elapsed(),
    })
    // `trigger` is removed here, on every path.
}

/// Checks, before touching the JVM, what makes the GC hint impossible or harmful: the attach
/// mechanism disabled ([`JvmError::AttachDisabled`]) and, when the listener would have to be
/// started with SIGQUIT because its socket is missing, a JVM that does not catch SIGQUIT
/// ([`JvmError::NoSigquitHandler`]).
pub fn preflight(info: &JvmInfo) -> Result<(), JvmError> {
    let proc = Proc::open(info.pid)?;
    if let Some(how) = attach_disabled(&proc, info.ns_pid)? {
        return Err(JvmError::AttachDisabled { pid: info.pid, how });
    }
    if !socket_path(&proc, info.ns_pid).exists() {
        check_sigquit(&proc, info.pid)?;
    }
    Ok(())
}

/// Whether SIGQUIT may be sent: the attach mechanism is enabled (else the JVM prints a thread
/// dump) and the JVM catches SIGQUIT (else it dies).
fn check_trigger_safe(proc: &Proc, info: &JvmInfo) -> Result<(), JvmError> {
    if let Some(how) = attach_disabled(proc, info.ns_pid)? {
        return Err(JvmError::AttachDisabled { pid: info.pid, how });
    }
    check_sigquit(proc, info.pid)
}

fn check_sigquit(proc: &Proc, pid: i32) -> Result<(), JvmError> {
    let bit = 1u64 << (libc::SIGQUIT - 1);
    let s = proc.status()?;
    if s.sig_caught & bit == 0 || s.sig_ignored & bit != 0 {
        return Err(JvmError::NoSigquitHandler { pid });
    }
    Ok(())
}

/// `Some(how)` when the JVM has its attach mechanism disabled. Asks the JVM's hsperfdata first
/// (the `sun.rt.jvmCapabilities` counter reflects the flag's final value, whatever set it);
/// without one, looks for the option where HotSpot reads options from.
pub(crate) fn attach_disabled(proc: &Proc, ns_pid: i32) -> Result<Option<String>, JvmError> {
    let pid = proc.pid();
    match perfdata::read_mapped(proc, ns_pid)? {
        Some((path, bytes)) => match perfdata::PerfData::parse(&bytes) {
            Ok(pd) => match pd.attach_supported() {
                Some(true) => return Ok(None),
                Some(false) => {
                    return Ok(Some(format!(
                        "{} in its hsperfdata {} says so",
                        perfdata::JVM_CAPABILITIES,
                        path.display()
                    )))
                }
                None => crate::info!(
                    1,
                    "JVM {pid}: no {} in {}; looking at its options",
                    perfdata::JVM_CAPABILITIES,
                    path.display()
                ),
            },
            Err(e) => crate::info!(
                1,
                "JVM {pid}: unreadable hsperfdata {}: {e}; looking at its options",
                path.display()
            ),
        },
        None => crate::info!(1, "JVM {pid}: no hsperfdata mapped; looking at its options"),
    }
    let env = proc.environ()?;
    let env_value = |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut sources: Vec<(String, Vec<String>)> = Vec::new();
    for name in ENV_BEFORE_CMDLINE {
        if let Some(v) = env_value(name) {
            sources.push((name.to_string(), split_options(&v)));
        }
    }
    sources.push(("its command line".to_string(), proc.cmdline()?));
    if let Some(v) = env_value(ENV_AFTER_CMDLINE) {
        sources.push((ENV_AFTER_CMDLINE.to_string(), split_options(&v)));
    }
    Ok(attach_disabled_by_options(&sources))
}

/// Splits an options variable at whitespace (HotSpot also honours quotes there; options with
/// spaces in their values do not matter for the one option crest looks for).
fn split_options(v: &str) -> Vec<String> {
    v.split_whitespace().map(str::to_string).collect()
}

/// The last of `-XX:±DisableAttachMechanism` over the sources in the order HotSpot applies
/// them; `Some(where)` when it disables attach.
fn attach_disabled_by_options(sources: &[(String, Vec<String>)]) -> Option<String> {
    let mut verdict = None;
    for (source, options) in sources {
        for o in options {
            if o == DISABLE_ATTACH {
                verdict = Some(format!("{DISABLE_ATTACH} in {source}"));
            } else if o == ENABLE_ATTACH {
                verdict = None;
            }
        }
    }
    verdict
}

/// Waits while the JVM is stopped (state T, or t under a tracer). crest sends no SIGQUIT to a
/// stopped JVM: the signal would stay pending, and once the JVM continues, with the trigger file
/// long removed, it would print a thread dump instead of starting its listener.
fn wait_until_running(
    proc: &Proc,
    pid: i32,
    deadline: Instant,
    started: Instant,
) -> Result<(), JvmError> {
    let mut pause = FIRST_PAUSE;
    loop {
        let state = proc.status()?.state;
        match state {
            'Z' | 'X' => return Err(JvmError::Proc(ProcError::NoSuchProcess { pid })),
            'T' | 't' => {}
            _ => return Ok(()),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(JvmError::Timeout {
                pid,
                what: format!(
                    "the stopped JVM (state {state}) to continue: crest does not signal a \
                     stopped JVM; continue it with `kill -CONT {pid}`"
                ),
                after: started.elapsed(),
            });
        }
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(LONGEST_PAUSE);
    }
}

/// The `.attach_pid<nspid>` file that tells the JVM's signal dispatcher that a SIGQUIT asks for
/// the attach listener. Removed when dropped, if crest created it.
struct TriggerFile {
    path: PathBuf,
    /// False when the file was already there (another client is attaching): left to it.
    ours: bool,
}

impl TriggerFile {
    /// Creates the file in the JVM's working directory, or in its /tmp when that fails (the two
    /// places HotSpot looks), owned by the JVM's effective uid and gid: HotSpot ignores a trigger
    /// owned by anyone else but root.
    fn create(proc: &Proc, ns_pid: i32, euid: u32, egid: u32) -> Result<TriggerFile, JvmError> {
        let name = format!(".attach_pid{ns_pid}");
        let candidates = [
            proc.cwd_path().join(&name),
            proc.root_path().join("tmp").join(&name),
        ];
        let mut last_err = None;
        for path in candidates {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(f) => {
                    let me = (
                        nix::unistd::geteuid().as_raw(),
                        nix::unistd::getegid().as_raw(),
                    );
                    if me != (euid, egid) {
                        // Root's file would do as well; the JVM's own is what the JDK tools
                        // leave, and the only one that works when crest is not root.
                        if let Err(e) = std::os::unix::fs::fchown(&f, Some(euid), Some(egid)) {
                            crate::info!(
                                1,
                                "process {}: cannot chown {} to {euid}:{egid}: {e}",
                                proc.pid(),
                                path.display()
                            );
                        }
                    }
                    return Ok(TriggerFile { path, ours: true });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Ok(TriggerFile { path, ours: false });
                }
                Err(e) => last_err = Some((path, e)),
            }
        }
        let (path, err) = last_err.expect("two candidates tried");
        Err(JvmError::Io {
            pid: proc.pid(),
            path,
            err,
        })
    }

    fn describe(&self) -> String {
        if self.ours {
            self.path.display().to_string()
        } else {
            format!("{}, already there", self.path.display())
        }
    }
}

impl Drop for TriggerFile {
    fn drop(&mut self) {
        if !self.ours {
            return;
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                crate::warn!("cannot remove {}: {e}", self.path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_requests_always_carry_three_arguments() {
        assert_eq!(
            encode_request(1, "getversion", &[]).unwrap(),
            b"1\0getversion\0\0\0\0"
        );
        assert_eq!(
            encode_request(1, "jcmd", &["GC.run"]).unwrap(),
            b"1\0jcmd\0GC.run\0\0\0"
        );
        assert_eq!(
            encode_request(1, "load", &["instrument", "false", "a=b"]).unwrap(),
            b"1\0load\0instrument\0false\0a=b\0"
        );
    }

    #[test]
    fn v2_requests_carry_their_size() {
        // "jcmd\0GC.run\0" is 12 bytes.
        assert_eq!(
            encode_request(2, "jcmd", &["GC.run"]).unwrap(),
            b"2\x0012\x00jcmd\x00GC.run\x00"
        );
        assert_eq!(
            encode_request(2, "printflag", &["MaxHeapFreeRatio"]).unwrap(),
            b"2\x0027\x00printflag\x00MaxHeapFreeRatio\x00"
        );
        // Any number of arguments.
        let five = encode_request(2, "x", &["1", "2", "3", "4", "5"]).unwrap();
        assert_eq!(five, b"2\x0012\x00x\x001\x002\x003\x004\x005\x00");
    }

    #[test]
    fn requests_that_do_not_fit_are_refused() {
        assert!(encode_request(1, "a_very_long_operation", &[]).is_err());
        assert!(encode_request(1, "jcmd", &["a", "b", "c", "d"]).is_err());
        assert!(encode_request(1, "jcmd", &[&"x".repeat(1025)]).is_err());
        assert!(encode_request(1, "jcmd", &[&"é".repeat(600)]).is_err());
        assert!(encode_request(1, "jcmd", &[&"x".repeat(1024)]).is_ok());
        assert!(encode_request(2, "jcmd", &[&"x".repeat(1025)]).is_ok());
        assert!(encode_request(2, "jcmd", &[&"x".repeat(300 * 1024)]).is_err());
        assert!(encode_request(1, "jcmd", &["a\0b"]).is_err());
        assert!(encode_request(2, "jcmd streaming=0", &[]).is_err());
        assert!(encode_request(2, "", &[]).is_err());
        assert!(encode_request(3, "jcmd", &[]).is_err());
    }

    #[test]
    fn replies_split_into_code_and_output() {
        assert_eq!(
            parse_reply(b"0\n2").unwrap(),
            Reply {
                code: 0,
                output: "2".into()
            }
        );
        assert_eq!(
            parse_reply(b"-1\nOperation getversion not recognized!").unwrap(),
            Reply {
                code: -1,
                output: "Operation getversion not recognized!".into()
            }
        );
        assert_eq!(parse_reply(b"0\n").unwrap().output, "");
        assert!(parse_reply(b"").is_err());
        assert!(parse_reply(b"0").is_err());
        assert!(parse_reply(b"zero\nx").is_err());
    }

    #[test]
    fn the_last_attach_option_wins() {
        let src = |s: &str, o: &[&str]| (s.to_string(), o.iter().map(|x| x.to_string()).collect());
        assert_eq!(
            attach_disabled_by_options(&[src("cmdline", &["java", "-Xmx1g", "Main"])]),
            None
        );
        assert!(
            attach_disabled_by_options(&[src("cmdline", &["java", DISABLE_ATTACH])])
                .unwrap()
                .contains("cmdline")
        );
        assert_eq!(
            attach_disabled_by_options(&[
                src("JAVA_TOOL_OPTIONS", &[DISABLE_ATTACH]),
                src("cmdline", &["java", ENABLE_ATTACH]),
            ]),
            None
        );
        assert!(attach_disabled_by_options(&[
            src("cmdline", &["java", ENABLE_ATTACH]),
            src("_JAVA_OPTIONS", &[DISABLE_ATTACH]),
        ])
        .unwrap()
        .contains("_JAVA_OPTIONS"));
    }
}

#[cfg(test)]
mod close_tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// HotSpot shuts a finished connection down and closes it a moment later; a command
    /// returns only once the listener's end is closed, so a dump right after never freezes
    /// the JVM holding a half-closed connection.
    #[test]
    fn a_command_returns_once_the_listener_closed_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("attach");
        let listener = UnixListener::bind(&socket).unwrap();
        let closed = Arc::new(AtomicBool::new(false));
        let flag = closed.clone();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut b = [0u8; 1];
            // "1", op and three arguments, each NUL-terminated.
            while request.iter().filter(|&&c| c == 0).count() < 5 {
                assert_eq!(s.read(&mut b).unwrap(), 1);
                request.push(b[0]);
            }
            s.write_all(b"0\ndone\n").unwrap();
            s.shutdown(std::net::Shutdown::Both).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            flag.store(true, Ordering::SeqCst);
            drop(s);
        });
        let client = AttachClient::for_socket(std::process::id() as i32, socket, 1);
        let out = client
            .jcmd("VM.version", Instant::now() + Duration::from_secs(60))
            .unwrap();
        assert_eq!(out, "done\n");
        assert!(
            closed.load(Ordering::SeqCst),
            "the command returned before the listener closed its end"
        );
        server.join().unwrap();
    }
}
