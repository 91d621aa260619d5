//! `/proc/PID/status` and `/proc/PID/stat`: credentials, signal bitmaps, umask, thread count
//! and the mm fields.

use super::{Proc, ProcError};

/// What crest needs from `/proc/PID/status` (or `/proc/PID/task/TID/status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// `Name:` (comm) as procfs parses it: cut at the first ':' (procfs splits the line on
    /// every colon), so not the exact name of a thread called e.g. `pool:1`.
    pub name: String,
    /// `State:` letter (R, S, D, T, t, Z, ...).
    pub state: char,
    pub ppid: i32,
    /// `TracerPid:`; 0 when not traced.
    pub tracer_pid: i32,
    /// Real, effective, saved, filesystem uid.
    pub uid: [u32; 4],
    /// Real, effective, saved, filesystem gid.
    pub gid: [u32; 4],
    pub groups: Vec<u32>,
    /// `CapInh:`, `CapPrm:`, `CapEff:`, `CapBnd:`, `CapAmb:` (the last two absent before 2.6.25
    /// and 4.3; read as 0 then).
    pub cap_inheritable: u64,
    pub cap_permitted: u64,
    pub cap_effective: u64,
    pub cap_bounding: u64,
    pub cap_ambient: u64,
    /// `Umask:` (absent on kernels before 4.7).
    pub umask: Option<u32>,
    /// `Threads:`.
    pub threads: u64,
    /// `SigBlk:` of this thread.
    pub sig_blocked: u64,
    /// `SigIgn:`, `SigCgt:` (process-wide dispositions).
    pub sig_ignored: u64,
    pub sig_caught: u64,
    /// `Seccomp:` mode (0 none, 1 strict, 2 filter).
    pub seccomp: u32,
    /// `VmRSS:` in bytes (0 for a kernel thread or a zombie).
    pub vm_rss_bytes: u64,
}

/// The mm fields of `/proc/PID/stat` that PR_SET_MM_MAP restores, plus comm and ppid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MmStat {
    pub comm: String,
    pub ppid: i32,
    pub start_code: u64,
    pub end_code: u64,
    pub start_stack: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
}

fn convert(s: procfs::process::Status) -> Status {
    Status {
        state: s.state.chars().next().unwrap_or('?'),
        name: s.name,
        ppid: s.ppid,
        tracer_pid: s.tracerpid,
        uid: [s.ruid, s.euid, s.suid, s.fuid],
        gid: [s.rgid, s.egid, s.sgid, s.fgid],
        groups: s.groups,
        cap_inheritable: s.capinh,
        cap_permitted: s.capprm,
        cap_effective: s.capeff,
        cap_bounding: s.capbnd.unwrap_or(0),
        cap_ambient: s.capamb.unwrap_or(0),
        umask: s.umask,
        threads: s.threads,
        sig_blocked: s.sigblk,
        sig_ignored: s.sigign,
        sig_caught: s.sigcgt,
        seccomp: s.seccomp.unwrap_or(0),
        // procfs reports VmRSS in kB, as the file does.
        vm_rss_bytes: s.vmrss.unwrap_or(0) * 1024,
    }
}

impl Proc {
    /// `/proc/PID/status` of the process (its leader thread).
    pub fn status(&self) -> Result<Status, ProcError> {
        let s = self
            .proc
            .status()
            .map_err(|e| ProcError::procfs(self.pid, "status", e))?;
        Ok(convert(s))
    }

    /// Bytes the process has read with read(2)-like calls so far (`rchar` of /proc/PID/io,
    /// all its threads; a forked process starts at 0): how far a restorer loading pages with
    /// pread(2) has got.
    pub fn bytes_read(&self) -> Result<u64, ProcError> {
        let io = self
            .proc
            .io()
            .map_err(|e| ProcError::procfs(self.pid, "io", e))?;
        Ok(io.rchar)
    }

    /// `/proc/PID/task/TID/status` of one thread.
    pub fn task_status(&self, tid: i32) -> Result<Status, ProcError> {
        let what = format!("task/{tid}/status");
        let task = self
            .proc
            .task_from_tid(tid)
            .map_err(|e| ProcError::procfs(self.pid, &what, e))?;
        let s = task
            .status()
            .map_err(|e| ProcError::procfs(self.pid, &what, e))?;
        Ok(convert(s))
    }

    /// Whether thread `tid` has ended: `/proc/PID/task/TID` is gone, or its state is Z (a
    /// zombie waiting to be reaped) or X (dead). PTRACE_SEIZE refuses such a thread with EPERM
    /// (kernel/ptrace.c `ptrace_attach` checks `exit_state`), which is no permission problem.
    pub fn task_ended(&self, tid: i32) -> bool {
        match self.proc.task_from_tid(tid).and_then(|t| t.stat()) {
            Ok(s) => matches!(s.state, 'Z' | 'X'),
            Err(procfs::ProcError::NotFound(_)) => true,
            // Unreadable for another reason: let the caller report its own error.
            Err(_) => false,
        }
    }

    /// `/proc/PID/limits` as (soft, hard) pairs indexed by RLIMIT_* number (0..16),
    /// RLIM_INFINITY for "unlimited". Readable by anyone, unlike prlimit on another user's
    /// process, which needs CAP_SYS_RESOURCE.
    pub fn limits(&self) -> Result<Vec<(u64, u64)>, ProcError> {
        use procfs::process::{Limit, LimitValue};
        let l = self
            .proc
            .limits()
            .map_err(|e| ProcError::procfs(self.pid, "limits", e))?;
        let v = |x: &LimitValue| match x {
            LimitValue::Unlimited => u64::MAX,
            LimitValue::Value(n) => *n,
        };
        let pair = |x: &Limit| (v(&x.soft_limit), v(&x.hard_limit));
        Ok([
            &l.max_cpu_time,
            &l.max_file_size,
            &l.max_data_size,
            &l.max_stack_size,
            &l.max_core_file_size,
            &l.max_resident_set,
            &l.max_processes,
            &l.max_open_files,
            &l.max_locked_memory,
            &l.max_address_space,
            &l.max_file_locks,
            &l.max_pending_signals,
            &l.max_msgqueue_size,
            &l.max_nice_priority,
            &l.max_realtime_priority,
            &l.max_realtime_timeout,
        ]
        .into_iter()
        .map(pair)
        .collect())
    }

    /// Whether the process is a kernel thread (PF_KTHREAD in the `flags` field of stat): it
    /// has no user memory to dump.
    pub fn is_kernel_thread(&self) -> Result<bool, ProcError> {
        /// PF_KTHREAD (include/linux/sched.h).
        const PF_KTHREAD: u32 = 0x0020_0000;
        let s = self
            .proc
            .stat()
            .map_err(|e| ProcError::procfs(self.pid, "stat", e))?;
        Ok(s.flags & PF_KTHREAD != 0)
    }

    /// The mm fields of `/proc/PID/stat`. The kernel shows them only to a reader with
    /// PTRACE_MODE_READ access (otherwise they read as 0), so this must run as crest's tracer.
    pub fn mm_stat(&self) -> Result<MmStat, ProcError> {
        let s = self
            .proc
            .stat()
            .map_err(|e| ProcError::procfs(self.pid, "stat", e))?;
        let pid = self.pid;
        let need = |v: Option<u64>, field: &str| {
            v.ok_or_else(|| ProcError::Parse {
                path: format!("/proc/{pid}/stat"),
                detail: format!("field {field} is missing (kernel older than 3.5?)"),
            })
        };
        Ok(MmStat {
            start_data: need(s.start_data, "start_data")?,
            end_data: need(s.end_data, "end_data")?,
            start_brk: need(s.start_brk, "start_brk")?,
            arg_start: need(s.arg_start, "arg_start")?,
            arg_end: need(s.arg_end, "arg_end")?,
            env_start: need(s.env_start, "env_start")?,
            env_end: need(s.env_end, "env_end")?,
            comm: s.comm,
            ppid: s.ppid,
            start_code: s.startcode,
            end_code: s.endcode,
            start_stack: s.startstack,
        })
    }
}
