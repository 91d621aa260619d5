//! The SysV message queues and semaphore sets of crest's IPC namespace, from
//! /proc/sysvipc/msg and /proc/sysvipc/sem (the procfs crate reads only the shm table).

use super::ProcError;

/// A message queue: its id, key, and the last processes to send to and receive from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsgQueue {
    pub key: i32,
    pub id: i32,
    pub messages: u64,
    pub last_sender: i32,
    pub last_receiver: i32,
}

/// A semaphore set: its id, key and number of semaphores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SemSet {
    pub key: i32,
    pub id: i32,
    pub nsems: u32,
}

/// Every message queue of the namespace.
pub fn msg_queues() -> Result<Vec<MsgQueue>, ProcError> {
    let text = read("/proc/sysvipc/msg")?;
    parse_msg(&text).map_err(|why| bad("/proc/sysvipc/msg", why))
}

/// Every semaphore set of the namespace.
pub fn sem_sets() -> Result<Vec<SemSet>, ProcError> {
    let text = read("/proc/sysvipc/sem")?;
    parse_sem(&text).map_err(|why| bad("/proc/sysvipc/sem", why))
}

fn read(path: &str) -> Result<String, ProcError> {
    std::fs::read_to_string(path).map_err(|err| ProcError::Io {
        path: path.to_string(),
        err,
    })
}

fn bad(path: &str, detail: String) -> ProcError {
    ProcError::Parse {
        path: path.to_string(),
        detail,
    }
}

/// Fields of the data lines (the first line is the header).
fn rows(text: &str, min_fields: usize) -> Result<Vec<Vec<i64>>, String> {
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<i64> = l
                .split_whitespace()
                .map(|w| w.parse::<i64>().map_err(|e| format!("{w:?} in {l:?}: {e}")))
                .collect::<Result<_, _>>()?;
            if f.len() < min_fields {
                return Err(format!("{l:?} has {} fields", f.len()));
            }
            Ok(f)
        })
        .collect()
}

fn parse_msg(text: &str) -> Result<Vec<MsgQueue>, String> {
    // key msqid perms cbytes qnum lspid lrpid uid gid cuid cgid stime rtime ctime
    Ok(rows(text, 7)?
        .into_iter()
        .map(|f| MsgQueue {
            key: f[0] as i32,
            id: f[1] as i32,
            messages: f[4] as u64,
            last_sender: f[5] as i32,
            last_receiver: f[6] as i32,
        })
        .collect())
}

fn parse_sem(text: &str) -> Result<Vec<SemSet>, String> {
    // key semid perms nsems uid gid cuid cgid otime ctime
    Ok(rows(text, 4)?
        .into_iter()
        .map(|f| SemSet {
            key: f[0] as i32,
            id: f[1] as i32,
            nsems: f[3] as u32,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_tables_parse() {
        let msg = "       key      msqid perms      cbytes       qnum lspid lrpid   uid   gid  cuid  cgid      stime      rtime      ctime\n      1234          3   600          10          2   501   502     0     0     0     0 1700000000          0 1700000000\n";
        assert_eq!(
            parse_msg(msg).unwrap(),
            vec![MsgQueue {
                key: 1234,
                id: 3,
                messages: 2,
                last_sender: 501,
                last_receiver: 502
            }]
        );
        let sem = "       key      semid perms      nsems   uid   gid  cuid  cgid      otime      ctime\n         0          7   600          3     0     0     0     0          0 1700000000\n";
        assert_eq!(
            parse_sem(sem).unwrap(),
            vec![SemSet {
                key: 0,
                id: 7,
                nsems: 3
            }]
        );
        assert!(parse_sem("header\n 1 x 3 4\n").is_err());
        // The machine's own tables parse too.
        msg_queues().unwrap();
        sem_sets().unwrap();
    }
}
