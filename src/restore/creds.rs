//! Giving the restored process the image's credentials (the dump side is
//! [`crate::dump::creds`]).
//!
//! The restored task starts as a copy of crest, with crest's credentials, and keeps them while
//! it does what needs them: opening the image's files, creating the task with clone3(set_tid),
//! PR_SET_MM_MAP with a new exe file (CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN), and creating
//! the threads with clone3(set_tid) (CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN in the pid
//! namespace). Credentials belong to each thread, so the restorer switches them in every
//! thread: the leader once its threads exist, each other thread right after its own creation
//! (see `switch_creds` in the restorer for the order of the calls, which keeps the
//! capabilities each step needs until the last one). A credential change clears the
//! parent-death signal of the thread that changes (the restorer sets it again in the leader)
//! and resets the process's dumpable flag, which crest sets again from outside once every
//! thread has switched (`restore::finish`).
//!
//! A process that ran with crest's own credentials (the usual case) is left alone.

use crate::blob::abi::CredsArg;
use crate::images::{Creds, ProcessImage};
use crate::proc::Proc;

use super::RestoreError;

/// CAP_SETGID, CAP_SETUID, CAP_SETPCAP (linux/capability.h).
const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;
const CAP_SETPCAP: u32 = 8;

/// crest's own credentials, in the image's terms.
fn own() -> Result<Creds, RestoreError> {
    let os =
        |what: &str, e: String| RestoreError::Internal(format!("reading crest's own {what}: {e}"));
    let me = Proc::open(std::process::id() as i32).map_err(|e| os("status", e.to_string()))?;
    let s = me.status().map_err(|e| os("status", e.to_string()))?;
    // SAFETY: prctl(PR_GET_SECUREBITS) takes no pointers.
    let bits = unsafe { libc::prctl(libc::PR_GET_SECUREBITS, 0, 0, 0, 0) };
    if bits < 0 {
        return Err(os(
            "securebits",
            std::io::Error::last_os_error().to_string(),
        ));
    }
    let mut groups = s.groups.clone();
    groups.sort_unstable();
    groups.dedup();
    Ok(Creds {
        uid: s.uid,
        gid: s.gid,
        groups,
        cap_inheritable: s.cap_inheritable,
        cap_permitted: s.cap_permitted,
        cap_effective: s.cap_effective,
        cap_bounding: s.cap_bounding,
        cap_ambient: s.cap_ambient,
        securebits: bits as u32,
    })
}

fn same(a: &Creds, b: &Creds) -> bool {
    let mut ga = a.groups.clone();
    ga.sort_unstable();
    ga.dedup();
    let mut gb = b.groups.clone();
    gb.sort_unstable();
    gb.dedup();
    Creds {
        groups: ga,
        ..a.clone()
    } == Creds {
        groups: gb,
        ..b.clone()
    }
}

/// What the restorer gets: the switch to make (`present == 0`: none), with `groups` to be
/// filled in with the address of the group list in the bootstrap region. Refuses, before
/// anything is touched, a switch crest cannot make: one it lacks the capabilities for, or one
/// that needs capabilities this kernel does not know.
pub fn plan(p: &ProcessImage) -> Result<CredsArg, RestoreError> {
    let own = own()?;
    if same(&p.creds, &own) {
        return Ok(CredsArg::default());
    }
    let c = &p.creds;
    let last_cap = crate::proc::cap_last_cap().map_err(|e| {
        RestoreError::Internal(format!("reading the kernel's capability count: {e}"))
    })?;
    let known = if last_cap >= 63 {
        u64::MAX
    } else {
        (1u64 << (last_cap + 1)) - 1
    };
    let used = c.cap_inheritable | c.cap_permitted | c.cap_effective | c.cap_ambient;
    if used & !known != 0 {
        return Err(RestoreError::Unsupported(format!(
            "pid {} holds capabilities {:#x} that this kernel does not know (its last is {last_cap})",
            p.pid,
            used & !known
        )));
    }
    let needed = [CAP_SETGID, CAP_SETUID, CAP_SETPCAP]
        .iter()
        .fold(0u64, |m, cap| m | (1 << cap));
    if own.cap_effective & needed != needed {
        return Err(RestoreError::Privilege(format!(
            "pid {} ran with other credentials (uids {:?}, gids {:?}, groups {:?}, permitted \
             capabilities {:#x}) than crest (uids {:?}, gids {:?}); switching to them needs \
             CAP_SETUID, CAP_SETGID and CAP_SETPCAP, crest's effective set is {:#x}: run crest as \
             root",
            p.pid, c.uid, c.gid, c.groups, c.cap_permitted, own.uid, own.gid, own.cap_effective
        )));
    }
    // capset cannot add to the permitted set, and a capability outside crest's bounding set
    // cannot be raised into the inheritable set either.
    let missing = (c.cap_permitted | c.cap_inheritable) & !own.cap_permitted;
    if missing != 0 {
        return Err(RestoreError::Privilege(format!(
            "pid {} held capabilities crest itself does not have: {}; run crest with them \
             (as root with a full bounding set)",
            p.pid,
            capability_names(missing)
        )));
    }
    Ok(CredsArg {
        present: 1,
        securebits: c.securebits,
        uid: c.uid,
        gid: c.gid,
        groups: 0,
        nr_groups: c.groups.len() as u64,
        cap_inheritable: c.cap_inheritable,
        cap_permitted: c.cap_permitted,
        cap_effective: c.cap_effective,
        cap_bounding: c.cap_bounding & known,
        cap_ambient: c.cap_ambient,
        last_cap,
        pdeath_signal: 0,
    })
}

/// How many supplementary groups the bootstrap region must hold for `p`.
pub fn nr_groups(p: &ProcessImage) -> u64 {
    p.creds.groups.len() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_credentials_need_no_switch_and_others_do() {
        let own = own().unwrap();
        let mut shuffled = own.clone();
        shuffled.groups.reverse();
        assert!(same(&own, &shuffled));
        let other = Creds {
            uid: [65534; 4],
            ..own.clone()
        };
        assert!(!same(&own, &other));
    }
}

/// The capabilities of a bit set by their names (capabilities(7)), e.g. "CAP_AUDIT_CONTROL".
pub fn capability_names(set: u64) -> String {
    const NAMES: [&str; 41] = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_DAC_READ_SEARCH",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETPCAP",
        "CAP_LINUX_IMMUTABLE",
        "CAP_NET_BIND_SERVICE",
        "CAP_NET_BROADCAST",
        "CAP_NET_ADMIN",
        "CAP_NET_RAW",
        "CAP_IPC_LOCK",
        "CAP_IPC_OWNER",
        "CAP_SYS_MODULE",
        "CAP_SYS_RAWIO",
        "CAP_SYS_CHROOT",
        "CAP_SYS_PTRACE",
        "CAP_SYS_PACCT",
        "CAP_SYS_ADMIN",
        "CAP_SYS_BOOT",
        "CAP_SYS_NICE",
        "CAP_SYS_RESOURCE",
        "CAP_SYS_TIME",
        "CAP_SYS_TTY_CONFIG",
        "CAP_MKNOD",
        "CAP_LEASE",
        "CAP_AUDIT_WRITE",
        "CAP_AUDIT_CONTROL",
        "CAP_SETFCAP",
        "CAP_MAC_OVERRIDE",
        "CAP_MAC_ADMIN",
        "CAP_SYSLOG",
        "CAP_WAKE_ALARM",
        "CAP_BLOCK_SUSPEND",
        "CAP_AUDIT_READ",
        "CAP_PERFMON",
        "CAP_BPF",
        "CAP_CHECKPOINT_RESTORE",
    ];
    (0..64)
        .filter(|bit| set & (1u64 << bit) != 0)
        .map(|bit| {
            NAMES
                .get(bit)
                .map(|n| n.to_string())
                .unwrap_or_else(|| format!("capability {bit}"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod capability_name_tests {
    #[test]
    fn capabilities_are_named() {
        assert_eq!(
            super::capability_names((1 << 30) | (1 << 10) | (1 << 50)),
            "CAP_NET_BIND_SERVICE, CAP_AUDIT_CONTROL, capability 50"
        );
    }
}
