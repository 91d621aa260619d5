//! Per-process settings files of `/proc`: `oom_score_adj`, `loginuid`, the `flags` field of a
//! thread's `stat`, single lines of a thread's `status`; and the same files of the calling
//! process, which a restored task writes to take the image's values.

use std::io::Read;

use super::{Proc, ProcError};

/// `PF_MEMALLOC_NOIO` and `PF_LOCAL_THROTTLE` (include/linux/sched.h): set together by
/// PR_SET_IO_FLUSHER.
pub const PF_IO_FLUSHER: u32 = 0x0008_0000 | 0x0010_0000;

fn parse_number<T: std::str::FromStr>(path: &str, text: &str) -> Result<T, ProcError> {
    text.trim().parse().map_err(|_| ProcError::Parse {
        path: path.to_string(),
        detail: format!("{:?} is not a number", text.trim()),
    })
}

impl Proc {
    fn read_text(&self, what: &str) -> Result<String, ProcError> {
        let mut text = String::new();
        self.open_file(what)?
            .read_to_string(&mut text)
            .map_err(|e| ProcError::io(self.pid, what, e))?;
        Ok(text)
    }

    /// `/proc/PID/oom_score_adj`.
    pub fn oom_score_adj(&self) -> Result<i32, ProcError> {
        let text = self.read_text("oom_score_adj")?;
        parse_number(&format!("/proc/{}/oom_score_adj", self.pid), &text)
    }

    /// `/proc/PID/loginuid` (4294967295 when unset).
    pub fn loginuid(&self) -> Result<u32, ProcError> {
        let text = self.read_text("loginuid")?;
        parse_number(&format!("/proc/{}/loginuid", self.pid), &text)
    }

    /// The `flags` field (PF_*) of `/proc/PID/task/TID/stat`.
    pub fn task_flags(&self, tid: i32) -> Result<u32, ProcError> {
        let what = format!("task/{tid}/stat");
        let s = self
            .proc
            .task_from_tid(tid)
            .and_then(|t| t.stat())
            .map_err(|e| ProcError::procfs(self.pid, &what, e))?;
        Ok(s.flags)
    }

    /// The value of the `key:` line of `/proc/PID/task/TID/status`, if the kernel shows it
    /// (lines such as `x86_Thread_features:` exist only on some architectures and kernels).
    pub fn task_status_line(&self, tid: i32, key: &str) -> Result<Option<String>, ProcError> {
        let text = self.read_text(&format!("task/{tid}/status"))?;
        Ok(text.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k == key).then(|| v.trim().to_string())
        }))
    }
}

fn write_self(file: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(format!("/proc/self/{file}"), value)
}

fn read_self<T: std::str::FromStr>(file: &str) -> Result<T, String> {
    let path = format!("/proc/self/{file}");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    text.trim()
        .parse()
        .map_err(|_| format!("{path} holds {:?}, not a number", text.trim()))
}

/// `/proc/self/oom_score_adj` of the calling process.
pub fn own_oom_score_adj() -> Result<i32, String> {
    read_self("oom_score_adj")
}

/// Writes `/proc/self/oom_score_adj`.
pub fn set_own_oom_score_adj(value: i32) -> std::io::Result<()> {
    write_self("oom_score_adj", &value.to_string())
}

/// `/proc/self/loginuid` of the calling process.
pub fn own_loginuid() -> Result<u32, String> {
    read_self("loginuid")
}

/// Writes `/proc/self/loginuid`.
pub fn set_own_loginuid(value: u32) -> std::io::Result<()> {
    write_self("loginuid", &value.to_string())
}

/// The two-letter VmFlags codes of every mapping of `/proc/PID/smaps`, by start address, as
/// the kernel prints them (procfs drops the codes it does not know, and a dump must see them
/// all to refuse what it cannot restore).
pub fn parse_smaps_vmflags(text: &str) -> Vec<(u64, Vec<String>)> {
    let mut out = Vec::new();
    let mut current: Option<u64> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("VmFlags:") {
            if let Some(start) = current.take() {
                out.push((start, rest.split_whitespace().map(str::to_string).collect()));
            }
            continue;
        }
        // A mapping's header line: "start-end perms offset dev inode [name]".
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((start, end)) = first.split_once('-') {
            if let (Ok(start), Ok(_)) =
                (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
            {
                current = Some(start);
            }
        }
    }
    out
}

impl Proc {
    /// [`parse_smaps_vmflags`] of this process.
    pub fn smaps_vmflags(&self) -> Result<Vec<(u64, Vec<String>)>, ProcError> {
        Ok(parse_smaps_vmflags(&self.read_text("smaps")?))
    }
}
