//! PostgreSQL from Debian (`postgresql` package), run as user postgres with a data directory
//! of its own: its whole tree (postmaster, checkpointer, background writer, walwriter,
//! autovacuum launcher, logical replication launcher) is dumped and restored three times, with
//! a client transaction open across each dump. The server holds a SysV interlock segment
//! (tests/sysv_ipc.rs), POSIX dynamic shared memory under /dev/shm (shared file mappings) and a
//! large shared anonymous mapping. Checked: every committed row is there after each restore,
//! the client's open transaction goes on and commits on its connection, new connections work,
//! and the segment keeps its id. Skipped, saying so, when PostgreSQL is not installed.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// The postgres tree the test started; on drop every process of it is killed and reaped by pid.
struct Postgres {
    root: i32,
    port: u16,
    sock: PathBuf,
    /// What a killed postgres leaves behind: its SysV segment and /dev/shm files.
    leftovers: std::cell::RefCell<(Option<i32>, Vec<PathBuf>)>,
    _work: tempfile::TempDir,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Stopped first: a postmaster whose children die starts new ones unless it can no
        // longer run; the whole tree is killed below, the postmaster first.
        let _ = kill(Pid::from_raw(self.root), Signal::SIGSTOP);
        let pids: Vec<i32> = std::iter::once(self.root)
            .chain(descendants(self.root))
            .collect();
        // The dynamic shared memory files mapped now (workers add some after the start).
        for &pid in &pids {
            let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
            let found = maps
                .lines()
                .filter_map(|l| l.split_whitespace().nth(5))
                .filter(|p| p.starts_with("/dev/shm/PostgreSQL."))
                .map(PathBuf::from);
            self.leftovers.borrow_mut().1.extend(found);
        }
        for &pid in &pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        for &pid in &pids {
            let _ = reap_pid(pid, TIMEOUT);
        }
        let (segment, files) = &*self.leftovers.borrow();
        if let Some(id) = segment {
            // SAFETY: IPC_RMID takes no buffer.
            unsafe { libc::shmctl(*id, libc::IPC_RMID, std::ptr::null_mut()) };
        }
        for f in files {
            let _ = std::fs::remove_file(f);
        }
    }
}

fn user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&name)).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A command run as user postgres.
fn as_postgres(program: &Path, (uid, gid): (u32, u32)) -> Command {
    let mut cmd = Command::new(program);
    cmd.uid(uid).gid(gid).env("LC_ALL", "C");
    cmd
}

impl Postgres {
    fn start() -> Option<Postgres> {
        let ids = user_ids("postgres");
        if !Path::new(BIN).join("postgres").is_file() || ids.is_none() {
            say_skipped("PostgreSQL 15 is not installed (apt-get install postgresql)");
            return None;
        }
        let ids = ids.unwrap();
        let work = tempfile::Builder::new()
            .prefix("crest-postgres-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("create work dir");
        let data = work.path().join("data");
        let sock = work.path().join("sock");
        std::fs::create_dir(&sock).unwrap();
        for d in [work.path(), &sock] {
            std::os::unix::fs::chown(d, Some(ids.0), Some(ids.1)).unwrap();
        }
        let init = as_postgres(&Path::new(BIN).join("initdb"), ids)
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .output()
            .expect("run initdb");
        assert!(init.status.success(), "initdb: {init:?}");
        let port = free_port();
        let mut cmd = as_postgres(&Path::new(BIN).join("postgres"), ids);
        cmd.arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(&sock)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .current_dir(work.path());
        let root = spawn_in_own_session(cmd);
        let pg = Postgres {
            root,
            port,
            sock,
            leftovers: Default::default(),
            _work: work,
        };
        pg.wait_ready();
        let maps = std::fs::read_to_string(format!("/proc/{root}/maps")).unwrap_or_default();
        *pg.leftovers.borrow_mut() = (
            sysv_segment(root).and_then(|s| s.parse().ok()),
            maps.lines()
                .filter_map(|l| l.split_whitespace().nth(5))
                .filter(|p| p.starts_with("/dev/shm/PostgreSQL."))
                .map(PathBuf::from)
                .collect(),
        );
        Some(pg)
    }

    fn psql(&self, host: &Path) -> Command {
        let mut cmd = Command::new(Path::new(BIN).join("psql"));
        cmd.arg("-h")
            .arg(host)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-X",
                "-A",
                "-t",
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-d", "postgres"])
            .env("LC_ALL", "C");
        cmd
    }

    /// Runs `sql` on a new connection (TCP, or the unix socket) and returns its output.
    fn query(&self, sql: &str, unix: bool) -> Result<String, String> {
        let host = if unix {
            self.sock.clone()
        } else {
            PathBuf::from("127.0.0.1")
        };
        let out = self
            .psql(&host)
            .args(["-c", sql])
            .output()
            .expect("run psql");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).to_string())
        }
    }

    fn wait_ready(&self) {
        wait_for("PostgreSQL to accept connections", TIMEOUT, || {
            self.query("select 1", false).ok().filter(|s| s == "1")
        });
    }

    fn pids(&self) -> Vec<i32> {
        let mut v: Vec<i32> = std::iter::once(self.root)
            .chain(descendants(self.root))
            .collect();
        v.sort_unstable();
        v
    }
}

/// A psql client fed through a pipe, its transaction open.
struct Client(Child);

impl Client {
    fn send(&mut self, sql: &str) {
        let stdin = self.0.stdin.as_mut().unwrap();
        stdin.write_all(sql.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// id of the segment postgres attaches, from /proc/PID/maps (inode of the /SYSV mapping).
fn sysv_segment(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .ok()?
        .lines()
        .find(|l| l.contains("/SYSV"))
        .and_then(|l| l.split_whitespace().nth(4).map(str::to_string))
}

#[test]
fn postgres_tree_keeps_committed_rows_and_an_open_transaction_across_three_cycles() {
    let Some(pg) = Postgres::start() else {
        return;
    };
    pg.query(
        "create table t(n int primary key, s text); \
         insert into t select g, 'row ' || g from generate_series(1, 1000) g",
        false,
    )
    .expect("create the table");
    let mut committed = 1000;
    let segment = sysv_segment(pg.root).expect("postgres attaches a SysV segment");
    let shm = std::fs::read_to_string(format!("/proc/{}/maps", pg.root)).unwrap();
    assert!(shm.contains("/dev/shm/PostgreSQL."), "{shm}");

    for cycle in 1..=3 {
        let ctx = format!("cycle {cycle}");
        // A client with a transaction open across the dump.
        let mut client = Client(
            pg.psql(Path::new("127.0.0.1"))
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start psql"),
        );
        let open_row = 10_000 + cycle;
        client.send(&format!(
            "begin; insert into t values ({open_row}, 'open in cycle {cycle}');\n"
        ));
        wait_for("the client's transaction to be open", TIMEOUT, || {
            pg.query(
                "select count(*) from pg_stat_activity where state = 'idle in transaction'",
                true,
            )
            .ok()
            .filter(|n| n == "1")
        });
        pg.query(
            &format!("insert into t values ({}, 'committed')", 2000 + cycle),
            true,
        )
        .unwrap();
        committed += 1;

        // The postmaster and its five helpers, and the client's backend: the backends of the
        // finished queries are gone.
        let before = wait_for("the backends of finished queries to end", TIMEOUT, || {
            Some(pg.pids()).filter(|p| p.len() == 7)
        });
        let dir = pg._work.path().join(format!("img{cycle}"));
        dump(pg.root, &dir, false).assert_ok();
        for &pid in &before {
            let _ = reap_pid(pid, TIMEOUT);
            assert_no_process(pid, &format!("{ctx}: after the dump"));
        }
        restore_detached(&dir, &[]).assert_ok();
        assert_eq!(pg.pids(), before, "{ctx}: the processes of the tree");
        assert_eq!(sysv_segment(pg.root).as_ref(), Some(&segment), "{ctx}");

        // New connections, both ways, see every committed row and not the open one.
        let count = pg
            .query("select count(*) from t", false)
            .unwrap_or_else(|e| {
                panic!("{ctx}: a new TCP connection: {e}");
            });
        assert_eq!(count, committed.to_string(), "{ctx}");
        let open = pg
            .query(
                &format!("select count(*) from t where n = {open_row}"),
                true,
            )
            .unwrap_or_else(|e| panic!("{ctx}: a new unix socket connection: {e}"));
        assert_eq!(
            open, "0",
            "{ctx}: the open transaction's row is not visible yet"
        );

        // The client goes on in its transaction and commits.
        client.send("insert into t values (-1 * 1, 'x') on conflict do nothing; commit;\n\\q\n");
        let out = std::mem::replace(&mut client.0, Command::new("true").spawn().unwrap())
            .wait_with_output()
            .unwrap();
        assert!(
            out.status.success(),
            "{ctx}: the client failed after the restore: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        committed += if cycle == 1 { 2 } else { 1 };
        let count = pg.query("select count(*) from t", false).unwrap();
        assert_eq!(
            count,
            committed.to_string(),
            "{ctx}: after the client's commit"
        );
        let sum = pg
            .query("select sum(n) from t where n between 1 and 1000", true)
            .unwrap();
        assert_eq!(sum, "500500", "{ctx}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
