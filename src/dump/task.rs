//! Process-wide state read from outside: credentials, resource limits and the mm fields.

use crate::images::{Creds, MmFields, Rlimit};
use crate::proc::{Proc, Status};
use crate::sys;

use super::DumpError;

/// The process's credentials; refused when they differ from crest's own, because a restore
/// forks the process from crest and cannot change credentials yet.
pub fn creds(pid: i32, status: &Status) -> Result<Creds, DumpError> {
    let uid = nix::unistd::getresuid().map_err(|errno| DumpError::Own {
        what: "uids",
        errno,
    })?;
    let gid = nix::unistd::getresgid().map_err(|errno| DumpError::Own {
        what: "gids",
        errno,
    })?;
    // crest's fsuid/fsgid follow its effective ids (it never calls setfsuid).
    let own_uid = [
        uid.real.as_raw(),
        uid.effective.as_raw(),
        uid.saved.as_raw(),
        uid.effective.as_raw(),
    ];
    let own_gid = [
        gid.real.as_raw(),
        gid.effective.as_raw(),
        gid.saved.as_raw(),
        gid.effective.as_raw(),
    ];
    let mut own_groups: Vec<u32> = nix::unistd::getgroups()
        .map_err(|errno| DumpError::Own {
            what: "supplementary groups",
            errno,
        })?
        .into_iter()
        .map(|g| g.as_raw())
        .collect();
    own_groups.sort_unstable();
    own_groups.dedup();
    let mut groups = status.groups.clone();
    groups.sort_unstable();
    groups.dedup();
    if status.uid != own_uid || status.gid != own_gid || groups != own_groups {
        return Err(DumpError::Credentials {
            pid,
            detail: format!(
                "uids {:?} gids {:?} groups {:?}; crest runs with uids {:?} gids {:?} groups {:?}",
                status.uid, status.gid, groups, own_uid, own_gid, own_groups
            ),
        });
    }
    Ok(Creds {
        uid: status.uid,
        gid: status.gid,
        groups: status.groups.clone(),
    })
}

/// Every resource limit (RLIMIT 0..RLIM_NLIMITS) via prlimit64 on the pid.
pub fn rlimits(pid: i32) -> Result<Vec<Rlimit>, DumpError> {
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
