//! SysV message queues and semaphore sets the tree uses.
//!
//! Scope: a queue a process of the tree was the last to send to or receive from (msg_lspid,
//! msg_lrpid), a set one of whose semaphores a process of the tree was the last to operate on
//! (semctl GETPID). Earlier use leaves no trace the kernel shows, so a queue or set the tree
//! used before someone else did is not captured (it stays in the IPC namespace). Each one is
//! stored once per tree: id, key, mode, owner and creator; for a queue its qbytes limit and
//! every queued message (type and bytes), read without consuming them (msgrcv MSG_COPY, which
//! needs a kernel built with CONFIG_CHECKPOINT_RESTORE: without it the dump refuses as
//! before); for a set every semaphore's value (GETALL) and last pid (GETPID).
//!
//! Not captured and not detected: the SEM_UNDO adjustments of the tree's processes (the kernel
//! shows them nowhere), send/receive/operation times.

use crate::images::{SysvIpc, SysvIpcPerm, SysvMessage, SysvMsgQueue, SysvSemSet};

/// msgrcv flag: copy the message at index `msgtyp` without removing it (include/uapi/linux/msg.h).
const MSG_COPY: i32 = 0o40000;

fn perm(id: i32, p: &libc::ipc_perm) -> SysvIpcPerm {
    SysvIpcPerm {
        id,
        key: p.__key,
        mode: p.mode as u32 & 0o777,
        uid: p.uid,
        gid: p.gid,
        cuid: p.cuid,
        cgid: p.cgid,
    }
}

/// `msgctl(id, IPC_STAT)`.
pub fn msg_stat(id: i32) -> std::io::Result<libc::msqid_ds> {
    // SAFETY: an all-zero msqid_ds is valid plain data, filled by the kernel.
    let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes one msqid_ds into `ds`.
    if unsafe { libc::msgctl(id, libc::IPC_STAT, &mut ds) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ds)
}

/// `semctl(id, 0, IPC_STAT)`.
pub fn sem_stat(id: i32) -> std::io::Result<libc::semid_ds> {
    // SAFETY: an all-zero semid_ds is valid plain data, filled by the kernel.
    let mut ds: libc::semid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes one semid_ds through the pointer argument.
    if unsafe { libc::semctl(id, 0, libc::IPC_STAT, &mut ds as *mut libc::semid_ds) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ds)
}

/// Every semaphore's value (GETALL) and last pid (GETPID) of set `id` with `n` semaphores.
pub fn sem_values(id: i32, n: usize) -> std::io::Result<(Vec<u16>, Vec<i32>)> {
    let mut values = vec![0u16; n];
    // SAFETY: GETALL writes `n` (the set's size) unsigned shorts into `values`.
    if unsafe { libc::semctl(id, 0, libc::GETALL, values.as_mut_ptr()) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut pids = Vec::with_capacity(n);
    for i in 0..n {
        // SAFETY: GETPID takes no buffer.
        let pid = unsafe { libc::semctl(id, i as i32, libc::GETPID) };
        if pid < 0 {
            return Err(std::io::Error::last_os_error());
        }
        pids.push(pid);
    }
    Ok((values, pids))
}

/// The queued messages of queue `id` (`count` of them, `bytes` in all), oldest first, copied
/// with msgrcv MSG_COPY (nothing is removed).
fn messages(id: i32, count: u64, bytes: u64) -> Result<Vec<SysvMessage>, String> {
    let text = bytes.max(1) as usize;
    // mtype (a long) followed by the text.
    let mut buf = vec![0u8; std::mem::size_of::<libc::c_long>() + text];
    let mut out = Vec::with_capacity(count as usize);
    for index in 0..count {
        // SAFETY: `buf` holds a long and `text` bytes, as msgrcv is told.
        let n = unsafe {
            libc::msgrcv(
                id,
                buf.as_mut_ptr().cast(),
                text,
                index as libc::c_long,
                MSG_COPY | libc::IPC_NOWAIT,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ENOSYS) => "its messages cannot be read without consuming them: \
                                       this kernel has no msgrcv MSG_COPY \
                                       (CONFIG_CHECKPOINT_RESTORE); remove the queue's use \
                                       from the program, or dump it before it makes one"
                    .to_string(),
                _ => format!("msgrcv MSG_COPY of message {index} failed: {e}"),
            });
        }
        let (head, data) = buf.split_at(std::mem::size_of::<libc::c_long>());
        out.push(SysvMessage {
            mtype: libc::c_long::from_ne_bytes(head.try_into().expect("a long")),
            data: data[..n as usize].to_vec(),
        });
    }
    Ok(out)
}

/// The queues and sets the tree (`tree`: its pids) used last, and what cannot be captured,
/// each as (pid, what) for a refusal.
pub fn capture(tree: &[i32]) -> Result<(SysvIpc, Vec<(i32, String)>), crate::proc::ProcError> {
    let mut ipc = SysvIpc::default();
    let mut refused = Vec::new();
    for q in crate::proc::sysvipc::msg_queues()? {
        let Some(&pid) = [q.last_sender, q.last_receiver]
            .iter()
            .find(|p| tree.contains(p))
        else {
            continue;
        };
        let what = |why: String| {
            format!(
                "it used the SysV message queue id {} (key {:#x}), which cannot be dumped: {why}",
                q.id, q.key
            )
        };
        let got = msg_stat(q.id)
            .map_err(|e| format!("msgctl IPC_STAT failed: {e}"))
            .and_then(|ds| {
                let messages = messages(q.id, ds.msg_qnum, ds.__msg_cbytes)?;
                Ok(SysvMsgQueue {
                    perm: perm(q.id, &ds.msg_perm),
                    qbytes: ds.msg_qbytes,
                    last_sender: ds.msg_lspid,
                    last_receiver: ds.msg_lrpid,
                    messages,
                })
            });
        match got {
            Ok(queue) => ipc.queues.push(queue),
            Err(why) => refused.push((pid, what(why))),
        }
    }
    for set in crate::proc::sysvipc::sem_sets()? {
        let got = sem_stat(set.id).and_then(|ds| {
            let (values, pids) = sem_values(set.id, ds.sem_nsems as usize)?;
            Ok((ds, values, pids))
        });
        let (ds, values, pids) = match got {
            Ok(x) => x,
            Err(e) => {
                // Removed meanwhile, or unreadable: refused only if the tree used it.
                if let Some(pid) = (0..set.nsems)
                    // SAFETY: GETPID takes no buffer.
                    .map(|n| unsafe { libc::semctl(set.id, n as i32, libc::GETPID) })
                    .find(|p| tree.contains(p))
                {
                    refused.push((
                        pid,
                        format!(
                            "it used the SysV semaphore set id {} (key {:#x}), which cannot be \
                             read: {e}",
                            set.id, set.key
                        ),
                    ));
                }
                continue;
            }
        };
        if pids.iter().any(|p| tree.contains(p)) {
            ipc.sems.push(SysvSemSet {
                perm: perm(set.id, &ds.sem_perm),
                values,
                pids,
            });
        }
    }
    Ok((ipc, refused))
}

/// Whether queue `q` is as the dump left it (same key, messages and last users): nobody outside
/// the tree has used it since.
fn queue_unchanged(q: &SysvMsgQueue, ds: &libc::msqid_ds) -> bool {
    let bytes: usize = q.messages.iter().map(|m| m.data.len()).sum();
    ds.msg_perm.__key == q.perm.key
        && ds.msg_qnum == q.messages.len() as u64
        && ds.__msg_cbytes == bytes as u64
        && ds.msg_lspid == q.last_sender
        && ds.msg_lrpid == q.last_receiver
}

/// After the tree was killed: removes the queues and sets the image holds, since the image owns
/// them now and a restore recreates them under the same id and key. One that someone outside
/// the tree used after the dump (its last users or content changed) is left, with a note. Use
/// by others that left no trace cannot be seen. Returns the notes.
pub fn remove_captured(ipc: &SysvIpc) -> Vec<String> {
    let mut notes = Vec::new();
    let left = |what: String| {
        format!(
            "{what} was used by a process outside the tree after the dump; it was left in \
             place, and a restore on this machine will refuse until it is removed"
        )
    };
    for q in &ipc.queues {
        let id = q.perm.id;
        let Ok(ds) = msg_stat(id) else { continue };
        let what = format!("SysV message queue {id} (key {:#x})", q.perm.key);
        if !queue_unchanged(q, &ds) {
            notes.push(left(what));
        // SAFETY: IPC_RMID takes no buffer.
        } else if unsafe { libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()) } < 0 {
            notes.push(format!(
                "removing {what} failed: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    for set in &ipc.sems {
        let id = set.perm.id;
        let Ok(ds) = sem_stat(id) else { continue };
        let what = format!("SysV semaphore set {id} (key {:#x})", set.perm.key);
        let now = sem_values(id, ds.sem_nsems as usize).ok();
        if ds.sem_perm.__key != set.perm.key
            || now.as_ref() != Some(&(set.values.clone(), set.pids.clone()))
        {
            notes.push(left(what));
        // SAFETY: IPC_RMID takes no buffer.
        } else if unsafe { libc::semctl(id, 0, libc::IPC_RMID) } < 0 {
            notes.push(format!(
                "removing {what} failed: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A private queue with two messages and a private set with values: captured as they are
    /// (messages left in place), and removed by remove_captured while unchanged.
    #[test]
    fn queue_and_set_are_read_without_consuming_and_removed_when_unchanged() {
        let me = std::process::id() as i32;
        // SAFETY: (whole block) IPC calls on objects this test creates, with buffers that live
        // through the calls.
        let (msq, sem) = unsafe {
            let msq = libc::msgget(libc::IPC_PRIVATE, libc::IPC_CREAT | 0o640);
            let sem = libc::semget(libc::IPC_PRIVATE, 2, libc::IPC_CREAT | 0o600);
            assert!(msq >= 0 && sem >= 0, "{}", std::io::Error::last_os_error());
            for (t, text) in [(5 as libc::c_long, &b"hello"[..]), (2, b"")] {
                let mut m = t.to_ne_bytes().to_vec();
                m.extend_from_slice(text);
                assert_eq!(
                    libc::msgsnd(msq, m.as_ptr().cast(), text.len(), libc::IPC_NOWAIT),
                    0
                );
            }
            let mut vals = [3u16, 9];
            assert_eq!(libc::semctl(sem, 0, libc::SETALL, vals.as_mut_ptr()), 0);
            (msq, sem)
        };
        let (ipc, refused) = capture(&[me]).unwrap();
        let cleanup = || {
            // SAFETY: removing the objects this test made (no buffers).
            unsafe {
                libc::msgctl(msq, libc::IPC_RMID, std::ptr::null_mut());
                libc::semctl(sem, 0, libc::IPC_RMID);
            }
        };
        let q = ipc.queues.iter().find(|q| q.perm.id == msq).cloned();
        let s = ipc.sems.iter().find(|s| s.perm.id == sem).cloned();
        if refused.iter().any(|(_, w)| w.contains("MSG_COPY")) {
            cleanup();
            eprintln!("this kernel has no MSG_COPY: {refused:?}");
            return;
        }
        let (Some(q), Some(s)) = (q, s) else {
            cleanup();
            panic!("not captured: {ipc:?} {refused:?}");
        };
        assert_eq!(q.perm.mode, 0o640);
        assert_eq!(q.last_sender, me);
        assert_eq!(
            q.messages,
            vec![
                SysvMessage {
                    mtype: 5,
                    data: b"hello".to_vec()
                },
                SysvMessage {
                    mtype: 2,
                    data: vec![]
                }
            ]
        );
        assert_eq!(msg_stat(msq).unwrap().msg_qnum, 2, "nothing consumed");
        assert_eq!(
            (s.values.clone(), s.pids.clone()),
            (vec![3, 9], vec![me, me])
        );
        // Changed since: left, with a note.
        let ipc_one = SysvIpc {
            queues: vec![q],
            sems: vec![s],
        };
        // SAFETY: SETVAL takes an int argument.
        unsafe { libc::semctl(sem, 1, libc::SETVAL, 4) };
        let notes = remove_captured(&ipc_one);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].contains(&format!("semaphore set {sem}")),
            "{notes:?}"
        );
        assert!(msg_stat(msq).is_err(), "the unchanged queue was removed");
        assert!(sem_stat(sem).is_ok(), "the changed set was left");
        cleanup();
    }
}
