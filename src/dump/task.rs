//! Process-wide state read from outside: resource limits and the mm fields (credentials are
//! in [`super::creds`]).

use crate::images::{MmFields, Rlimit};
use crate::proc::Proc;
use crate::sys;

use super::DumpError;

/// Every resource limit (RLIMIT 0..RLIM_NLIMITS) via prlimit64 on the pid, or from
/// `/proc/PID/limits` when prlimit64 is refused (another user's process and no
/// CAP_SYS_RESOURCE).
pub fn rlimits(proc: &Proc) -> Result<Vec<Rlimit>, DumpError> {
    let pid = proc.pid();
    match rlimits_prlimit(pid) {
        Err(DumpError::Rlimit {
            errno: nix::errno::Errno::EPERM,
            ..
        }) if proc.limits()?.len() as u32 == sys::RLIMIT_COUNT => Ok(proc
            .limits()?
            .into_iter()
            .zip(0..)
            .map(|((soft, hard), resource)| Rlimit {
                resource,
                soft,
                hard,
            })
            .collect()),
        r => r,
    }
}

fn rlimits_prlimit(pid: i32) -> Result<Vec<Rlimit>, DumpError> {
    (0..sys::RLIMIT_COUNT)
        .map(|resource| {
            let (soft, hard) =
                sys::get_rlimit(pid, resource).map_err(|errno| DumpError::Rlimit {
                    pid,
                    resource,
                    errno,
                })?;
            Ok(Rlimit {
                resource,
                soft,
                hard,
            })
        })
        .collect()
}

/// The mm fields from `/proc/PID/stat` and `/proc/PID/auxv`, and `brk` as the process's own
/// brk(0) returned it (stat shows only start_brk; the end of `[heap]` is page-rounded).
pub fn mm(proc: &Proc, brk: u64) -> Result<(MmFields, String, i32), DumpError> {
    let s = proc.mm_stat()?;
    let auxv = proc.auxv()?;
    Ok((
        MmFields {
            start_code: s.start_code,
            end_code: s.end_code,
            start_data: s.start_data,
            end_data: s.end_data,
            start_brk: s.start_brk,
            brk,
            start_stack: s.start_stack,
            arg_start: s.arg_start,
            arg_end: s.arg_end,
            env_start: s.env_start,
            env_end: s.env_end,
            auxv,
        },
        s.comm,
        s.ppid,
    ))
}
