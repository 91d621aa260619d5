//! What `crest bench` reads from /proc: whether a process runs, the members of a process
//! group, the regular files a process holds open for writing, its program, whether a UNIX
//! socket listens (raw: procfs drops the listening flag), and the machine (CPU model, memory,
//! load average).

use std::path::PathBuf;

use procfs::process::{FDPermissions, FDTarget, Process};
use procfs::Current;

/// Whether `pid` exists and is not a zombie (or dead).
pub fn runs(pid: i32) -> bool {
    Process::new(pid)
        .and_then(|p| p.stat())
        .map(|s| !matches!(s.state, 'Z' | 'X'))
        .unwrap_or(false)
}

/// Whether `pid` exists (a zombie too).
pub fn exists(pid: i32) -> bool {
    Process::new(pid).is_ok()
}

/// The live processes of process group `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    all.flatten()
        .filter_map(|p| p.stat().ok())
        .filter(|s| s.pgrp == pgid && !matches!(s.state, 'Z' | 'X'))
        .map(|s| s.pid)
        .collect()
}

/// Regular files (by path) that `pid` holds open for writing.
pub fn files_open_for_writing(pid: i32) -> Vec<PathBuf> {
    let Ok(fds) = Process::new(pid).and_then(|p| p.fd()) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = fds
        .flatten()
        .filter(|fd| fd.mode().contains(FDPermissions::WRITE))
        .filter_map(|fd| match fd.target {
            FDTarget::Path(p) if p.is_absolute() && p.is_file() => Some(p),
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The program `pid` runs.
pub fn exe(pid: i32) -> Option<PathBuf> {
    Process::new(pid).and_then(|p| p.exe()).ok()
}

/// Whether a UNIX socket bound to a path ending in `name` listens (/proc/net/unix: flag
/// __SO_ACCEPTCON, 0x10000).
pub fn unix_listening(name: &str) -> bool {
    std::fs::read_to_string("/proc/net/unix")
        .map(|t| {
            t.lines().skip(1).any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() >= 8
                    && u32::from_str_radix(f[3], 16).is_ok_and(|flags| flags & 0x10000 != 0)
                    && f[7].ends_with(name)
            })
        })
        .unwrap_or(false)
}

/// The load average now: "1min 5min 15min".
pub fn loadavg() -> String {
    procfs::LoadAverage::current()
        .map(|l| format!("{:.2} {:.2} {:.2}", l.one, l.five, l.fifteen))
        .unwrap_or_default()
}

/// The first CPU's model name.
pub fn cpu_model() -> String {
    procfs::CpuInfo::current()
        .ok()
        .and_then(|c| c.model_name(0).map(str::to_string))
        .unwrap_or_default()
}

/// Total memory in MiB.
pub fn mem_total_mib() -> u64 {
    procfs::Meminfo::current()
        .map(|m| m.mem_total / 1048576)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process() {
        let me = std::process::id() as i32;
        assert!(runs(me));
        assert!(exe(me).is_some());
        let f = tempfile::NamedTempFile::new().unwrap();
        let path = f.path().canonicalize().unwrap();
        assert!(files_open_for_writing(me).contains(&path));
        // SAFETY: getpgrp has no preconditions.
        let pgrp = unsafe { libc::getpgrp() };
        assert!(group_members(pgrp).contains(&me));
        assert!(!loadavg().is_empty());
    }
}
