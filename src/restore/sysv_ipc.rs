//! SysV message queues and semaphore sets of the image (dump/sysv_ipc.rs), recreated by crest
//! before anything is forked: under the same id (the ipc sysctls `kernel/msg_next_id` and
//! `kernel/sem_next_id`, which the kernel resets to -1 after the allocation) and key, created
//! as the creator's uid and gid, then owner, permissions and (queues) the qbytes limit with
//! IPC_SET; a queue's messages are sent again in order with their types, a set's values are
//! set with SETALL.
//!
//! The last pids the kernel shows (msg_lspid, msg_lrpid, a semaphore's sempid) cannot be set;
//! when they were processes of the tree, a short-lived task forked under that pid (before the
//! tree is) does the sending, a receive, or the SETVAL, so the restored objects name the same
//! pids and a later dump of the restored tree selects them again. A last pid outside the tree
//! becomes crest's. SEM_UNDO adjustments are not in the image (not visible at dump).
//!
//! A queue or set that exists with the id or key already is a clear error, before anything is
//! created; a failed restore removes what it created.

use std::io::Write;

use crate::dump::sysv_ipc::{msg_stat, sem_stat};
use crate::images::{Image, SysvIpcPerm, SysvMsgQueue, SysvSemSet};

use super::fork::{fork_with_pid, wait_until_pid_free, Forked};
use super::sysv::as_creator;
use super::RestoreError;

const MSG_NEXT_ID: &str = "/proc/sys/kernel/msg_next_id";
const SEM_NEXT_ID: &str = "/proc/sys/kernel/sem_next_id";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Queue,
    Set,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Queue => "SysV message queue",
            Kind::Set => "SysV semaphore set",
        }
    }

    fn sysctl(self) -> &'static str {
        match self {
            Kind::Queue => MSG_NEXT_ID,
            Kind::Set => SEM_NEXT_ID,
        }
    }

    fn ipcrm(self) -> &'static str {
        match self {
            Kind::Queue => "-q",
            Kind::Set => "-s",
        }
    }

    /// The id of the object of this kind with key `key`, if one exists.
    fn by_key(self, key: i32) -> Option<i32> {
        if key == libc::IPC_PRIVATE {
            return None;
        }
        // SAFETY: msgget/semget without IPC_CREAT only look the key up.
        let id = unsafe {
            match self {
                Kind::Queue => libc::msgget(key, 0),
                Kind::Set => libc::semget(key, 0, 0),
            }
        };
        (id >= 0).then_some(id)
    }

    fn exists(self, id: i32) -> bool {
        match self {
            Kind::Queue => msg_stat(id).is_ok(),
            Kind::Set => sem_stat(id).is_ok(),
        }
    }

    fn remove(self, id: i32) {
        // SAFETY: IPC_RMID takes no buffer.
        unsafe {
            match self {
                Kind::Queue => libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()),
                Kind::Set => libc::semctl(id, 0, libc::IPC_RMID),
            };
        }
    }
}

/// Why the object `perm` of kind `kind` cannot be created, if one holds its id or key already.
fn conflict(kind: Kind, perm: &SysvIpcPerm) -> Option<String> {
    let taken = if kind.exists(perm.id) {
        Some(perm.id)
    } else {
        kind.by_key(perm.key)
    };
    taken.map(|id| conflict_message(kind, perm, id))
}

fn conflict_message(kind: Kind, perm: &SysvIpcPerm, id: i32) -> String {
    let noun = match kind {
        Kind::Queue => "queue",
        Kind::Set => "set",
    };
    format!(
        "{} {} (key {:#x}) cannot be restored: {noun} {id} with that {} exists already (is \
         the dumped program still running, or was it dumped with -R?); stop it, or remove the \
         {noun} with `ipcrm {} {id}` if nothing uses it",
        kind.name(),
        perm.id,
        perm.key,
        if id == perm.id { "id" } else { "key" },
        kind.ipcrm()
    )
}

fn last_os(what: String) -> RestoreError {
    RestoreError::Os {
        what,
        source: std::io::Error::last_os_error(),
    }
}

/// Runs `f` in a task forked under pid `pid` (free: the tree is not forked yet), so that what
/// it does to a queue or set records `pid` as its last user. `f` returns an error in words.
fn as_pid(
    pid: i32,
    what: &str,
    f: impl FnOnce() -> Result<(), String>,
) -> Result<(), RestoreError> {
    wait_until_pid_free(pid)?;
    match fork_with_pid(pid, libc::SIGCHLD)? {
        Forked::Child => {
            let code = match f() {
                Ok(()) => 0,
                Err(why) => {
                    eprintln!("crest: {what} as pid {pid}: {why}");
                    1
                }
            };
            // SAFETY: ends this short-lived copy of crest without running crest's exit path.
            unsafe { libc::_exit(code) }
        }
        Forked::Parent => {
            let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
            match status {
                Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => Ok(()),
                other => Err(RestoreError::Ipc(format!(
                    "{what} in a task with pid {pid} failed ({other:?}; see its message above)"
                ))),
            }
        }
    }
}

/// Sends `messages` of `q` to queue `id` (IPC_NOWAIT: the limit was raised to hold them).
fn send_all(id: i32, q: &SysvMsgQueue) -> Result<(), String> {
    for (i, m) in q.messages.iter().enumerate() {
        let mut buf = (m.mtype as libc::c_long).to_ne_bytes().to_vec();
        buf.extend_from_slice(&m.data);
        // SAFETY: `buf` holds a long and `data.len()` bytes, as msgsnd is told.
        if unsafe { libc::msgsnd(id, buf.as_ptr().cast(), m.data.len(), libc::IPC_NOWAIT) } < 0 {
            return Err(format!(
                "msgsnd of message {i} (type {}, {} bytes) failed: {}",
                m.mtype,
                m.data.len(),
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// One empty message sent and received again: the queue (empty) records the caller as its
/// last receiver.
fn receive_once(id: i32) -> Result<(), String> {
    let mut buf = (1 as libc::c_long).to_ne_bytes();
    // SAFETY: `buf` holds a long and no text, as msgsnd and msgrcv are told.
    unsafe {
        if libc::msgsnd(id, buf.as_ptr().cast(), 0, libc::IPC_NOWAIT) < 0
            || libc::msgrcv(id, buf.as_mut_ptr().cast(), 0, 0, libc::IPC_NOWAIT) < 0
        {
            return Err(format!(
                "an empty message sent and received: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// The queues and sets crest created; removed again if dropped before [`SysvIpcObjects::commit`]
/// (a failed restore).
#[derive(Default)]
pub struct SysvIpcObjects {
    made: Vec<(Kind, i32)>,
    committed: bool,
}

impl SysvIpcObjects {
    /// Creates every queue and set of the image (held by the root's image).
    pub fn create(image: &Image) -> Result<SysvIpcObjects, RestoreError> {
        // Every task of the tree, zombies too (their pids are free until they are recreated).
        let tree: Vec<i32> = image.inventory.tree.iter().map(|t| t.pid).collect();
        let queues: Vec<&SysvMsgQueue> = image
            .processes
            .iter()
            .flat_map(|p| &p.sysv_ipc.queues)
            .collect();
        let sems: Vec<&SysvSemSet> = image
            .processes
            .iter()
            .flat_map(|p| &p.sysv_ipc.sems)
            .collect();
        let problems: Vec<String> = queues
            .iter()
            .filter_map(|q| conflict(Kind::Queue, &q.perm))
            .chain(sems.iter().filter_map(|s| conflict(Kind::Set, &s.perm)))
            .collect();
        if !problems.is_empty() {
            return Err(RestoreError::Ipc(problems.join("; ")));
        }
        let mut out = SysvIpcObjects::default();
        for q in queues {
            out.queue(q, &tree)?;
        }
        for s in sems {
            out.set(s, &tree)?;
        }
        Ok(out)
    }

    /// Creates object `perm` with `get` (msgget/semget with IPC_CREAT | IPC_EXCL and the
    /// permission bits) under its id, as its creator; checks the id it got.
    fn make(
        &mut self,
        kind: Kind,
        perm: &SysvIpcPerm,
        get: impl FnOnce(i32, i32) -> i32,
    ) -> Result<(), RestoreError> {
        let sysctl = kind.sysctl();
        std::fs::OpenOptions::new()
            .write(true)
            .open(sysctl)
            .and_then(|mut f| f.write_all(perm.id.to_string().as_bytes()))
            .map_err(|source| RestoreError::Os {
                what: format!(
                    "writing {} to {sysctl} to recreate {} {} under its id",
                    perm.id,
                    kind.name(),
                    perm.id
                ),
                source,
            })?;
        let flags = libc::IPC_CREAT | libc::IPC_EXCL | (perm.mode & 0o777) as i32;
        let got = as_creator(perm.cuid, perm.cgid, || get(perm.key, flags))?;
        if got < 0 {
            let err = last_os(format!(
                "creating {} {} (key {:#x})",
                kind.name(),
                perm.id,
                perm.key
            ));
            let _ = std::fs::write(sysctl, "-1");
            if err_is(&err, libc::EEXIST) {
                // Made between the check and now.
                let id = kind.by_key(perm.key).unwrap_or(perm.id);
                return Err(RestoreError::Ipc(conflict_message(kind, perm, id)));
            }
            return Err(err);
        }
        self.made.push((kind, got));
        if got != perm.id {
            return Err(RestoreError::Ipc(format!(
                "{} {} was recreated as {got}: the kernel did not take the id from {sysctl}",
                kind.name(),
                perm.id
            )));
        }
        Ok(())
    }

    fn queue(&mut self, q: &SysvMsgQueue, tree: &[i32]) -> Result<(), RestoreError> {
        let id = q.perm.id;
        // SAFETY: msgget creates a queue; no memory is passed.
        self.make(Kind::Queue, &q.perm, |key, flags| unsafe {
            libc::msgget(key, flags)
        })?;
        let bytes: u64 = q.messages.iter().map(|m| m.data.len() as u64).sum();
        // Room for every message first (the limit may have been lowered under them).
        set_queue(q, q.qbytes.max(bytes))?;
        if tree.contains(&q.last_receiver) {
            as_pid(
                q.last_receiver,
                &format!("receiving from SysV message queue {id}"),
                || receive_once(id),
            )?;
        }
        if tree.contains(&q.last_sender) {
            as_pid(
                q.last_sender,
                &format!("sending to SysV message queue {id}"),
                || send_all(id, q),
            )?;
        } else {
            send_all(id, q).map_err(|why| {
                RestoreError::Ipc(format!("refilling SysV message queue {id}: {why}"))
            })?;
        }
        if q.qbytes < bytes {
            set_queue(q, q.qbytes)?;
        }
        Ok(())
    }

    fn set(&mut self, s: &SysvSemSet, tree: &[i32]) -> Result<(), RestoreError> {
        let id = s.perm.id;
        let n = s.values.len() as i32;
        // SAFETY: semget creates a set; no memory is passed.
        self.make(Kind::Set, &s.perm, |key, flags| unsafe {
            libc::semget(key, n, flags)
        })?;
        let mut values = s.values.clone();
        // SAFETY: SETALL reads one unsigned short per semaphore of the set from `values`.
        if unsafe { libc::semctl(id, 0, libc::SETALL, values.as_mut_ptr()) } < 0 {
            return Err(last_os(format!(
                "setting the values of SysV semaphore set {id} (SETALL)"
            )));
        }
        let mut pids: Vec<i32> = s
            .pids
            .iter()
            .copied()
            .filter(|p| tree.contains(p))
            .collect();
        pids.sort_unstable();
        pids.dedup();
        for pid in pids {
            as_pid(pid, &format!("setting semaphores of SysV set {id}"), || {
                for (i, (&v, _)) in s
                    .values
                    .iter()
                    .zip(&s.pids)
                    .enumerate()
                    .filter(|(_, (_, &p))| p == pid)
                {
                    // SAFETY: SETVAL takes an int value.
                    if unsafe { libc::semctl(id, i as i32, libc::SETVAL, v as libc::c_int) } < 0 {
                        return Err(format!(
                            "SETVAL of semaphore {i}: {}",
                            std::io::Error::last_os_error()
                        ));
                    }
                }
                Ok(())
            })?;
        }
        let mut ds = sem_stat(id).map_err(|source| RestoreError::Os {
            what: format!("reading the new SysV semaphore set {id}"),
            source,
        })?;
        ds.sem_perm.uid = s.perm.uid;
        ds.sem_perm.gid = s.perm.gid;
        ds.sem_perm.mode = (s.perm.mode & 0o777) as _;
        // SAFETY: IPC_SET reads one semid_ds through the pointer argument.
        if unsafe { libc::semctl(id, 0, libc::IPC_SET, &mut ds as *mut libc::semid_ds) } < 0 {
            return Err(last_os(format!(
                "setting owner {}:{} and mode {:o} of SysV semaphore set {id} (IPC_SET)",
                s.perm.uid, s.perm.gid, s.perm.mode
            )));
        }
        Ok(())
    }

    /// The tree is restored: what crest created is the tree's now.
    pub fn commit(mut self) {
        self.committed = true;
    }
}

fn err_is(e: &RestoreError, errno: i32) -> bool {
    matches!(e, RestoreError::Os { source, .. } if source.raw_os_error() == Some(errno))
}

/// Owner, group, permissions and the qbytes limit `qbytes` of queue `q`, with IPC_SET.
fn set_queue(q: &SysvMsgQueue, qbytes: u64) -> Result<(), RestoreError> {
    let id = q.perm.id;
    let mut ds = msg_stat(id).map_err(|source| RestoreError::Os {
        what: format!("reading the new SysV message queue {id}"),
        source,
    })?;
    ds.msg_perm.uid = q.perm.uid;
    ds.msg_perm.gid = q.perm.gid;
    ds.msg_perm.mode = (q.perm.mode & 0o777) as _;
    ds.msg_qbytes = qbytes as _;
    // SAFETY: IPC_SET reads one msqid_ds from `ds`.
    if unsafe { libc::msgctl(id, libc::IPC_SET, &mut ds) } < 0 {
        return Err(last_os(format!(
            "setting owner {}:{}, mode {:o} and qbytes {qbytes} of SysV message queue {id} \
             (IPC_SET)",
            q.perm.uid, q.perm.gid, q.perm.mode
        )));
    }
    Ok(())
}

impl Drop for SysvIpcObjects {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        for (kind, id) in self.made.drain(..) {
            kind.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicts_name_the_ipcrm_command() {
        let perm = SysvIpcPerm {
            id: 5,
            key: 0x10,
            mode: 0o600,
            uid: 0,
            gid: 0,
            cuid: 0,
            cgid: 0,
        };
        let m = conflict_message(Kind::Queue, &perm, 7);
        assert!(m.starts_with("SysV message queue 5 (key 0x10)"), "{m}");
        assert!(m.contains("queue 7 with that key exists already"), "{m}");
        assert!(m.contains("`ipcrm -q 7`"), "{m}");
        let m = conflict_message(Kind::Set, &perm, 5);
        assert!(m.contains("set 5 with that id exists already"), "{m}");
        assert!(m.contains("`ipcrm -s 5`"), "{m}");
    }

    /// What a failed restore created is removed when dropped; after commit it stays.
    #[test]
    fn a_failed_restore_removes_what_it_created() {
        // SAFETY: creates a queue and a set, removed by the drops below.
        let (q, s) = unsafe {
            (
                libc::msgget(libc::IPC_PRIVATE, libc::IPC_CREAT | 0o600),
                libc::semget(libc::IPC_PRIVATE, 1, libc::IPC_CREAT | 0o600),
            )
        };
        assert!(q >= 0 && s >= 0);
        let made = SysvIpcObjects {
            made: vec![(Kind::Queue, q)],
            committed: false,
        };
        made.commit();
        assert!(Kind::Queue.exists(q), "kept after commit");
        drop(SysvIpcObjects {
            made: vec![(Kind::Queue, q), (Kind::Set, s)],
            committed: false,
        });
        assert!(!Kind::Queue.exists(q) && !Kind::Set.exists(s));
    }

    /// A private queue of this process is found by id, and its key is not looked up.
    #[test]
    fn an_existing_queue_is_a_conflict() {
        // SAFETY: creates a queue, removed below.
        let id = unsafe { libc::msgget(libc::IPC_PRIVATE, libc::IPC_CREAT | 0o600) };
        assert!(id >= 0);
        let perm = SysvIpcPerm {
            id,
            key: 0,
            mode: 0o600,
            uid: 0,
            gid: 0,
            cuid: 0,
            cgid: 0,
        };
        let c = conflict(Kind::Queue, &perm);
        Kind::Queue.remove(id);
        assert!(c.is_some_and(|m| m.contains(&format!("ipcrm -q {id}"))));
        assert_eq!(conflict(Kind::Queue, &perm), None);
    }
}
