//! HotSpot JVM support: detecting a JVM, talking to it through its attach mechanism, and the GC
//! hint crest runs before it freezes one.
//!
//! The hint asks the JVM for a full GC with the heap-free ratios lowered for its duration, so the
//! collector gives the free committed heap back to the OS and the image holds the live data
//! rather than garbage and empty heap: on a G1 JVM with -Xmx1g and 32 MiB live after churning
//! 300 MiB (this module's tests), a plain `GC.run` leaves ~125 MiB committed, the hint ~40 MiB.
//!
//! - [`attach`]: the client side of HotSpot's attach protocol (v1, and v2 of JDK 24+) over the
//!   JVM's `/tmp/.java_pid<pid>` socket, starting the JVM's listener when needed;
//! - [`perfdata`]: the hsperfdata parser, which tells whether the attach mechanism is enabled
//!   before crest signals the JVM;
//! - [`heap`]: committed/used heap out of `GC.heap_info`;
//! - `hint`: the hint itself ([`gc_hint`]).

pub mod attach;
pub mod heap;
mod hint;
pub mod perfdata;
mod socket;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

use nix::errno::Errno;

use crate::proc::{MapName, Proc, ProcError};

pub use attach::AttachClient;
pub use hint::gc_hint;

/// A process found to be a HotSpot JVM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JvmInfo {
    /// The pid as crest sees it.
    pub pid: i32,
    /// The pid as the JVM's own pid namespace sees it: HotSpot names its attach socket, trigger
    /// file and hsperfdata file after this one.
    pub ns_pid: i32,
    /// The `libjvm.so` the process maps.
    pub libjvm: PathBuf,
}

/// `Some(info)` when process `pid` maps a `libjvm.so` (a HotSpot JVM), `None` otherwise
/// (including a zombie or a kernel thread, which map nothing).
pub fn detect(pid: i32) -> Result<Option<JvmInfo>, JvmError> {
    let proc = Proc::open(pid)?;
    let libjvm = proc.maps()?.into_iter().find_map(|m| match m.name {
        MapName::Path { path, .. } if path.file_name().is_some_and(|n| n == "libjvm.so") => {
            Some(path)
        }
        _ => None,
    });
    let Some(libjvm) = libjvm else {
        return Ok(None);
    };
    Ok(Some(JvmInfo {
        pid,
        ns_pid: proc.ns_pid()?,
        libjvm,
    }))
}

/// How the GC hint runs.
#[derive(Debug, Clone)]
pub struct HintOptions {
    /// Bound on the whole hint. Putting the heap flags back after a failure gets its own few
    /// seconds on top when this has run out (see [`gc_hint`]).
    pub timeout: Duration,
}

impl Default for HintOptions {
    fn default() -> Self {
        HintOptions {
            timeout: Duration::from_secs(10),
        }
    }
}

/// Heap sizes from `GC.heap_info`, summed over the collector's spaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapUsage {
    /// Memory the collector holds from the OS for the heap.
    pub committed_bytes: u64,
    /// Bytes occupied by objects (live or not yet collected).
    pub used_bytes: u64,
}

/// What the GC hint did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HintReport {
    /// Attach protocol spoken: 1, or 2 on JDK 24+.
    pub protocol_version: u32,
    /// From `GC.heap_info` before the GC; `None` when its output could not be read.
    pub heap_before: Option<HeapUsage>,
    /// From `GC.heap_info` after the GC and the shrink.
    pub heap_after: Option<HeapUsage>,
    /// Output of `System.trim_native_heap`; `None` when the JDK lacks it.
    pub native_trim: Option<String>,
    pub elapsed: Duration,
}

/// Errors talking to a JVM. A caller running the GC hint warns and dumps without it.
#[derive(Debug, thiserror::Error)]
pub enum JvmError {
    /// Reading /proc failed (the message names the file, hence the pid).
    #[error(transparent)]
    Proc(#[from] ProcError),
    /// The JVM runs with its attach mechanism disabled.
    #[error(
        "JVM {pid} has its attach mechanism disabled ({how}); crest cannot ask it for a GC and \
         sends it no SIGQUIT (that would print a thread dump). Start the JVM without \
         -XX:+DisableAttachMechanism to get the GC hint"
    )]
    AttachDisabled { pid: i32, how: String },
    /// The JVM does not catch SIGQUIT, so the signal that starts its attach listener would kill
    /// it.
    #[error(
        "JVM {pid} does not handle SIGQUIT (it runs with -Xrs, or has not finished starting) and \
         has no attach socket, so the SIGQUIT that starts its attach listener would kill it; \
         crest leaves it alone. A JVM run with -Xrs opens its socket /tmp/.java_pid<pid> at \
         startup: see whether something deleted it"
    )]
    NoSigquitHandler { pid: i32 },
    /// The JVM did not get something done in time.
    #[error(
        "JVM {pid}: gave up after {after:.1?} waiting for {what}; the JVM may be stopped, \
         overloaded or in a long GC pause: try again with a longer timeout"
    )]
    Timeout {
        pid: i32,
        what: String,
        after: Duration,
    },
    /// A socket or file operation failed.
    #[error("JVM {pid}: {}: {err}", path.display())]
    Io {
        pid: i32,
        path: PathBuf,
        err: std::io::Error,
    },
    /// SIGQUIT could not be sent.
    #[error("cannot send SIGQUIT to JVM {pid}: {errno}; run crest as root or as the JVM's user")]
    Signal { pid: i32, errno: Errno },
    /// A request crest was asked to send does not fit the protocol.
    #[error("JVM {pid}: invalid attach request: {detail}")]
    InvalidRequest { pid: i32, detail: String },
    /// The JVM's reply could not be understood.
    #[error("JVM {pid}: unexpected attach reply: {detail}")]
    Protocol { pid: i32, detail: String },
    /// The JVM ran the operation and reported a failure.
    #[error("JVM {pid} refused `{command}` (result code {code}): {output}")]
    CommandFailed {
        pid: i32,
        command: String,
        code: i32,
        output: String,
    },
    /// The heap-free ratios lowered for the hint could not all be put back.
    #[error("JVM {pid}: the heap flags crest lowered for the GC hint were not put back: {detail}")]
    FlagsNotRestored { pid: i32, detail: String },
}
