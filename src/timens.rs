//! The tree's clocks across a dump and a restore.
//!
//! A tree frozen by a dump and restored later would see CLOCK_MONOTONIC and CLOCK_BOOTTIME jump
//! by the time in between: every deadline it computed from them has passed, so timers and
//! timeouts fire at once, and a fixed-rate task runs all its missed periods back to back (a
//! JVM's 1 ms ScheduledExecutorService ticker restored a minute after its dump first runs
//! 60000 ticks). So the dump records what the tree's clocks read when it was frozen
//! ([`tree_clocks`]), and the restore gives the tree a new time namespace whose offsets make
//! those clocks carry on from there ([`carry_on_for_children`]), as if the machine had been
//! suspended. CLOCK_REALTIME is not virtualized by the kernel and shows the time that passed.
//!
//! The tree may already live in a time namespace (one an earlier restore made): its clocks
//! are read through its offsets, and the dump refuses a tree spread over several namespaces.

use crate::images::TreeClocks;
use crate::proc::{offset_line, time_offsets, ClockOffsets, ProcError};

/// What the clocks of the tree `pid` belongs to read now, through its time namespace.
pub fn tree_clocks(pid: i32) -> Result<TreeClocks, ProcError> {
    let own = time_offsets(None)?;
    let theirs = time_offsets(Some(pid))?;
    // crest's readings are through crest's own namespace: back to the host's, then into theirs.
    Ok(TreeClocks {
        monotonic_ns: clock_ns(libc::CLOCK_MONOTONIC) - own.monotonic_ns + theirs.monotonic_ns,
        boottime_ns: clock_ns(libc::CLOCK_BOOTTIME) - own.boottime_ns + theirs.boottime_ns,
    })
}

/// Why the restored tree keeps the host's clocks.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct TimeNamespaceError {
    what: String,
    #[source]
    source: std::io::Error,
}

impl TimeNamespaceError {
    /// The kernel refused for lack of privilege (CAP_SYS_ADMIN, CAP_SYS_TIME) or of time
    /// namespaces: the restore goes on with the host's clocks.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self.source.raw_os_error(),
            Some(libc::EPERM | libc::EACCES | libc::EINVAL)
        )
    }
}

/// Makes the children crest's calling thread forks from now on start in a new time namespace
/// whose monotonic and boot-time clocks read `clocks` now and carry on from there. Returns the
/// offsets set. Needs CAP_SYS_ADMIN (unshare) and CAP_SYS_TIME (the offsets).
pub fn carry_on_for_children(clocks: &TreeClocks) -> Result<ClockOffsets, TimeNamespaceError> {
    // Read before the unshare, which makes the file show the new namespace.
    let own = time_offsets(None).map_err(|e| TimeNamespaceError {
        what: "reading crest's own time namespace offsets".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    // SAFETY: unshare(2) with CLONE_NEWTIME only changes the namespace this thread's future
    // children get.
    if unsafe { libc::unshare(libc::CLONE_NEWTIME) } != 0 {
        return Err(TimeNamespaceError {
            what: "unshare(CLONE_NEWTIME)".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    let offsets = ClockOffsets {
        monotonic_ns: clocks.monotonic_ns - (clock_ns(libc::CLOCK_MONOTONIC) - own.monotonic_ns),
        boottime_ns: clocks.boottime_ns - (clock_ns(libc::CLOCK_BOOTTIME) - own.boottime_ns),
    };
    // The calling thread's own entry (not /proc/self, the thread group leader's): the new
    // namespace is this thread's alone.
    let path = format!("/proc/{}/timens_offsets", nix::unistd::gettid());
    let text = offset_line("monotonic", offsets.monotonic_ns)
        + &offset_line("boottime", offsets.boottime_ns);
    std::fs::write(&path, text).map_err(|source| TimeNamespaceError {
        what: format!("setting the clock offsets of the new time namespace ({path})"),
        source,
    })?;
    Ok(offsets)
}

/// `clock` now, in nanoseconds, through crest's own time namespace.
fn clock_ns(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec; it cannot fail for these two clocks.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_in_the_new_namespace_reads_the_recorded_clocks() {
        // Ten seconds before now (through crest's namespace, which is the tree's here).
        let now = tree_clocks(std::process::id() as i32).unwrap();
        let earlier = TreeClocks {
            monotonic_ns: now.monotonic_ns - 10_000_000_000,
            boottime_ns: now.boottime_ns - 10_000_000_000,
        };
        // In a thread of its own: the namespace is for that thread's children only.
        let seen = std::thread::spawn(move || {
            carry_on_for_children(&earlier).expect("unshare CLONE_NEWTIME (run as root)");
            let out = std::process::Command::new("cat")
                .arg("/proc/uptime")
                .output()
                .expect("run cat");
            String::from_utf8(out.stdout).unwrap()
        })
        .join()
        .unwrap();
        // /proc/uptime shows CLOCK_BOOTTIME as the reader's namespace sees it.
        let uptime: f64 = seen.split_whitespace().next().unwrap().parse().unwrap();
        // /proc/uptime shows hundredths of a second.
        let want = earlier.boottime_ns as f64 / 1e9;
        assert!(
            uptime >= want - 0.01 && uptime < want + 5.0,
            "the child's boot time reads {uptime} s, want {want} s and a little"
        );
        // crest itself stays in its namespace.
        assert!(tree_clocks(std::process::id() as i32).unwrap().boottime_ns >= now.boottime_ns);
    }
}
