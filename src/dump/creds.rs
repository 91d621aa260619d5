//! The process's credentials: real, effective, saved and filesystem uids and gids,
//! supplementary groups, the five capability sets (from `/proc/PID/task/TID/status`) and
//! securebits (PR_GET_SECUREBITS, read by the parasite in every thread).
//!
//! Linux keeps credentials per thread. glibc makes setuid-family calls process-wide, but
//! capset, PR_SET_SECUREBITS and raw syscalls change only the calling thread; a restore gives
//! every thread the same credentials, so a process whose threads differ is refused, naming the
//! first thread that differs from the leader and how.
//!
//! The restore side is [`crate::restore::creds`].

use crate::images::Creds;
use crate::proc::{Proc, Status};

use super::DumpError;

/// The credentials of one thread as `/proc` and the parasite report them.
fn of(status: &Status, securebits: u32) -> Creds {
    let mut groups = status.groups.clone();
    groups.sort_unstable();
    groups.dedup();
    Creds {
        uid: status.uid,
        gid: status.gid,
        groups,
        cap_inheritable: status.cap_inheritable,
        cap_permitted: status.cap_permitted,
        cap_effective: status.cap_effective,
        cap_bounding: status.cap_bounding,
        cap_ambient: status.cap_ambient,
        securebits,
    }
}

/// What differs between two threads' credentials, in words.
fn differences(a: &Creds, b: &Creds) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = |name: &str, x: String, y: String| {
        if x != y {
            out.push(format!("{name} {y} (the main thread has {x})"));
        }
    };
    field("uids", format!("{:?}", a.uid), format!("{:?}", b.uid));
    field("gids", format!("{:?}", a.gid), format!("{:?}", b.gid));
    field(
        "groups",
        format!("{:?}", a.groups),
        format!("{:?}", b.groups),
    );
    let caps = [
        (
            "inheritable capabilities",
            a.cap_inheritable,
            b.cap_inheritable,
        ),
        ("permitted capabilities", a.cap_permitted, b.cap_permitted),
        ("effective capabilities", a.cap_effective, b.cap_effective),
        ("bounding set", a.cap_bounding, b.cap_bounding),
        ("ambient capabilities", a.cap_ambient, b.cap_ambient),
    ];
    for (name, x, y) in caps {
        field(name, format!("{x:#x}"), format!("{y:#x}"));
    }
    field(
        "securebits",
        format!("{:#x}", a.securebits),
        format!("{:#x}", b.securebits),
    );
    out
}

/// The credentials of the frozen process: those of the leader, after checking that every
/// thread of `tids` (leader first) has the same. `securebits` holds each thread's
/// PR_GET_SECUREBITS, in the order of `tids`.
pub fn collect(proc: &Proc, tids: &[i32], securebits: &[u32]) -> Result<Creds, DumpError> {
    let pid = proc.pid();
    let mut leader: Option<Creds> = None;
    for (i, &tid) in tids.iter().enumerate() {
        let status = if tid == pid {
            proc.status()?
        } else {
            proc.task_status(tid)?
        };
        let creds = of(&status, securebits.get(i).copied().unwrap_or(0));
        match &leader {
            None => leader = Some(creds),
            Some(l) => {
                let diff = differences(l, &creds);
                if !diff.is_empty() {
                    return Err(DumpError::ThreadCredentials {
                        pid,
                        tid,
                        detail: diff.join(", "),
                    });
                }
            }
        }
    }
    leader.ok_or(DumpError::NoSuchProcess { pid })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_each_field_that_differs() {
        let a = Creds {
            uid: [1, 1, 1, 1],
            groups: vec![4, 5],
            cap_permitted: 0x400,
            ..Creds::default()
        };
        assert!(differences(&a, &a.clone()).is_empty());
        let b = Creds {
            uid: [1, 2, 1, 2],
            cap_permitted: 0,
            securebits: 0x10,
            ..a.clone()
        };
        let d = differences(&a, &b);
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(d[0].starts_with("uids [1, 2, 1, 2]"), "{d:?}");
        assert!(d[1].contains("permitted capabilities 0x0"), "{d:?}");
        assert!(d[2].contains("securebits 0x10"), "{d:?}");
    }

    #[test]
    fn own_threads_credentials_are_collected_and_agree() {
        // This test process's threads all share crest's credentials.
        let proc = Proc::open(std::process::id() as i32).unwrap();
        // The test harness's other threads come and go (one per running test), so a thread
        // listed may be gone before its status is read: list again then.
        let c = (0..100)
            .find_map(|_| {
                let tids = proc.tasks().unwrap();
                let bits = vec![0; tids.len()];
                collect(&proc, &tids, &bits).ok()
            })
            .expect("the test's own threads' credentials could be collected");
        let uid = nix::unistd::getuid().as_raw();
        assert_eq!(c.uid[0], uid);
        // SAFETY: prctl(PR_GET_SECUREBITS) takes no pointers.
        let own_bits = unsafe { libc::prctl(libc::PR_GET_SECUREBITS, 0, 0, 0, 0) };
        assert!(own_bits >= 0);
        assert_eq!(c.cap_effective & !c.cap_permitted, 0);
    }
}
