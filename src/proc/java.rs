//! What the JVM support ([`crate::jvm`]) reads from `/proc`: the pid as the process's own pid
//! namespace sees it (HotSpot names its attach socket and hsperfdata file after it), the
//! command line and environment (where `-XX:` options hide when there is no hsperfdata), and the
//! `/proc/PID/root` and `/proc/PID/cwd` paths through which crest reaches the process's own
//! `/tmp` and working directory.

use std::io::Read;
use std::path::PathBuf;

use super::{Proc, ProcError};

impl Proc {
    /// The pid in the process's innermost pid namespace: the last field of `NSpid:` in
    /// `/proc/PID/status`. Kernels before 4.1 have no `NSpid:`; there the pid is returned as it
    /// is (such kernels cannot show a namespaced pid anyway).
    pub fn ns_pid(&self) -> Result<i32, ProcError> {
        let s = self
            .proc
            .status()
            .map_err(|e| ProcError::procfs(self.pid, "status", e))?;
        Ok(s.nspid
            .and_then(|ids| ids.last().copied())
            .unwrap_or(self.pid))
    }

    /// `/proc/PID/cmdline` split at its NULs. Read raw rather than through procfs, which fails on
    /// an argument that is not UTF-8; such bytes become U+FFFD here.
    pub fn cmdline(&self) -> Result<Vec<String>, ProcError> {
        let bytes = self.read_raw("cmdline")?;
        Ok(split_nul(&bytes)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect())
    }

    /// `/proc/PID/environ` as (name, value) pairs in the order the process received them.
    /// This is the environment at exec time: later `setenv` calls in the process do not show.
    pub fn environ(&self) -> Result<Vec<(String, String)>, ProcError> {
        let bytes = self.read_raw("environ")?;
        Ok(split_nul(&bytes)
            .filter_map(|entry| {
                let eq = entry.iter().position(|&b| b == b'=')?;
                Some((
                    String::from_utf8_lossy(&entry[..eq]).into_owned(),
                    String::from_utf8_lossy(&entry[eq + 1..]).into_owned(),
                ))
            })
            .collect())
    }

    /// `/proc/PID/root`: the process's root directory as a path crest can open files under
    /// (its `/tmp` is `root_path().join("tmp")`, whatever mount namespace it lives in).
    pub fn root_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.pid))
    }

    /// `/proc/PID/cwd`: the process's working directory as a path crest can create files in.
    pub fn cwd_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/cwd", self.pid))
    }

    fn read_raw(&self, what: &str) -> Result<Vec<u8>, ProcError> {
        let mut bytes = Vec::new();
        self.open_file(what)?
            .read_to_end(&mut bytes)
            .map_err(|e| ProcError::io(self.pid, what, e))?;
        Ok(bytes)
    }
}

/// The NUL-terminated strings of a cmdline/environ buffer (a missing final NUL is tolerated:
/// a process may overwrite its argument area).
fn split_nul(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let bytes = bytes.strip_suffix(b"\0").unwrap_or(bytes);
    bytes.split(|&b| b == 0).filter(move |_| !bytes.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cmdline_environ_and_ns_pid() {
        let me = Proc::open(std::process::id() as i32).unwrap();
        let args: Vec<String> = std::env::args().collect();
        assert_eq!(me.cmdline().unwrap(), args);
        // The environment at exec time holds PATH (cargo sets it for the test binary).
        let env = me.environ().unwrap();
        let path = std::env::var("PATH").unwrap();
        assert!(env.iter().any(|(k, v)| k == "PATH" && *v == path));
        // Whatever pid namespace the tests run in, the innermost pid is a valid pid.
        assert!(me.ns_pid().unwrap() > 0);
        assert_eq!(
            me.root_path(),
            PathBuf::from(format!("/proc/{}/root", me.pid()))
        );
    }

    #[test]
    fn split_nul_handles_edges() {
        let v: Vec<&[u8]> = split_nul(b"a\0bc\0\0d\0").collect();
        assert_eq!(v, vec![&b"a"[..], b"bc", b"", b"d"]);
        let v: Vec<&[u8]> = split_nul(b"a\0b").collect();
        assert_eq!(v, vec![&b"a"[..], b"b"]);
        assert_eq!(split_nul(b"").count(), 0);
        assert_eq!(split_nul(b"\0").count(), 0);
    }
}
