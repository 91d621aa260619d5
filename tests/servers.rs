//! Real servers from Debian's packages (issue #10): redis-server, memcached, nginx (a master and
//! two workers) and python3's http.server, each started on loopback with clients holding
//! connections and data loaded, go through three dump/restore cycles. After each restore they
//! answer on the connections the clients kept and on new ones, with all their data.
//!
//! A server that is not installed is skipped with a "SKIPPED ..." line in the test output
//! (`.ci/run` installs them all).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::http::HttpConnection;
use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long a restored server may take to answer.
const ANSWER: Duration = Duration::from_secs(30);

/// The program `name` in the system's bin directories, or None after saying the test is
/// skipped.
fn installed(name: &str) -> Option<PathBuf> {
    let found = ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        say_skipped(&format!(
            "{name} is not installed (apt-get install its Debian package)"
        ));
    }
    found
}

/// A TCP port free on 127.0.0.1 and on ::1 right now.
fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = l.local_addr().unwrap().port();
        if TcpListener::bind((Ipv6Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
}

fn v4(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn v6(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv6Addr::LOCALHOST, port))
}

/// Connects to `addr`, retrying until the server listens.
fn connect(addr: SocketAddr) -> TcpStream {
    let s = wait_for(&format!("a connection to {addr}"), ANSWER, || {
        TcpStream::connect(addr).ok()
    });
    s.set_read_timeout(Some(ANSWER)).unwrap();
    s
}

/// A server process tree the test started: its root, and on drop every process of the tree
/// killed and reaped by pid.
struct Server {
    name: &'static str,
    root: i32,
    work: tempfile::TempDir,
}

impl Server {
    fn start(name: &'static str, mut cmd: Command, work: tempfile::TempDir) -> Server {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.path().join("stderr")).unwrap())
            .current_dir(work.path());
        let root = spawn_in_own_session(cmd);
        Server { name, root, work }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.work.path().join("stderr")).unwrap_or_default()
    }

    /// The root and every descendant.
    fn pids(&self) -> Vec<i32> {
        std::iter::once(self.root)
            .chain(descendants(self.root))
            .collect()
    }

    /// One dump (which kills the tree) and detached restore; every process is back under its
    /// pid afterwards.
    fn cycle(&self, round: u32) {
        let ctx = format!("{}, cycle {round}", self.name);
        let before = self.pids();
        let dir = self.work.path().join(format!("img{round}"));
        let out = dump(self.root, &dir, false);
        if !out.status.success() {
            panic!("{ctx}: {out}\nserver stderr: {}", self.stderr());
        }
        for &pid in &before {
            let _ = reap_pid(pid, TIMEOUT);
            assert_no_process(pid, &format!("{ctx}: after the dump"));
        }
        restore_detached(&dir, &[]).assert_ok();
        let mut after = self.pids();
        let mut want = before.clone();
        after.sort_unstable();
        want.sort_unstable();
        assert_eq!(after, want, "{ctx}: the processes of the tree");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Stopped first: a master whose workers die forks new ones (nginx does) unless it can
        // no longer run; then the whole tree, root first.
        let _ = kill(Pid::from_raw(self.root), Signal::SIGSTOP);
        let pids = self.pids();
        for &pid in &pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        for &pid in &pids {
            let _ = reap_pid(pid, TIMEOUT);
        }
    }
}

fn work_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("crest-{name}-"))
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("create work dir")
}

/// A redis client speaking RESP on one connection.
struct Redis {
    reader: BufReader<TcpStream>,
}

impl Redis {
    fn connect(addr: SocketAddr) -> Redis {
        Redis {
            reader: BufReader::new(connect(addr)),
        }
    }

    fn send(&mut self, args: &[&str]) {
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.reader
            .get_mut()
            .write_all(req.as_bytes())
            .expect("send to redis");
    }

    /// One reply: a status, an integer or a bulk string (None for a nil bulk).
    fn reply(&mut self) -> Option<String> {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read from redis");
        let line = line.trim_end();
        match line.as_bytes().first() {
            Some(b'+') | Some(b':') => Some(line[1..].to_string()),
            Some(b'$') => {
                let len: i64 = line[1..].parse().expect("bulk length");
                if len < 0 {
                    return None;
                }
                let mut buf = vec![0u8; len as usize + 2];
                self.reader
                    .read_exact(&mut buf)
                    .expect("read a bulk string");
                buf.truncate(len as usize);
                Some(String::from_utf8(buf).expect("utf-8 value"))
            }
            _ => panic!("redis answered {line:?}"),
        }
    }

    fn command(&mut self, args: &[&str]) -> Option<String> {
        self.send(args);
        self.reply()
    }
}

const REDIS_KEYS: usize = 2000;

fn redis_value(i: usize) -> String {
    format!("value {i} {}", "x".repeat(i % 97))
}

/// Every key has its value, read pipelined on `conn`.
fn redis_check(conn: &mut Redis, ctx: &str) {
    for i in 0..REDIS_KEYS {
        conn.send(&["GET", &format!("key:{i}")]);
    }
    for i in 0..REDIS_KEYS {
        assert_eq!(conn.reply(), Some(redis_value(i)), "{ctx}: key:{i}");
    }
}

#[test]
fn redis_keeps_its_clients_and_data_across_three_cycles() {
    let Some(bin) = installed("redis-server") else {
        return;
    };
    let port = free_port();
    let work = work_dir("redis");
    let mut cmd = Command::new(bin);
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "::1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(work.path());
    let server = Server::start("redis-server", cmd, work);
    let mut kept4 = Redis::connect(v4(port));
    let mut kept6 = Redis::connect(v6(port));
    for i in 0..REDIS_KEYS {
        kept4.send(&["SET", &format!("key:{i}"), &redis_value(i)]);
    }
    for _ in 0..REDIS_KEYS {
        assert_eq!(kept4.reply().as_deref(), Some("OK"));
    }
    assert_eq!(kept6.command(&["INCR", "counter"]).as_deref(), Some("1"));
    for round in 1..=3 {
        server.cycle(round);
        let ctx = format!("redis, after cycle {round}");
        redis_check(&mut kept4, &format!("{ctx}, kept IPv4 connection"));
        let want = (round + 1).to_string();
        assert_eq!(
            kept6.command(&["INCR", "counter"]).as_deref(),
            Some(want.as_str()),
            "{ctx}: INCR on the kept IPv6 connection"
        );
        let mut fresh = Redis::connect(v6(port));
        assert_eq!(
            fresh.command(&["DBSIZE"]).as_deref(),
            Some((REDIS_KEYS + 1).to_string().as_str()),
            "{ctx}: DBSIZE on a new connection"
        );
        redis_check(&mut fresh, &format!("{ctx}, new connection"));
    }
}

/// A memcached client on one connection (text protocol).
struct Memcached {
    reader: BufReader<TcpStream>,
}

impl Memcached {
    fn connect(addr: SocketAddr) -> Memcached {
        Memcached {
            reader: BufReader::new(connect(addr)),
        }
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .expect("read from memcached");
        line.trim_end().to_string()
    }

    fn set(&mut self, key: &str, value: &str) {
        let req = format!("set {key} 0 0 {}\r\n{value}\r\n", value.len());
        self.reader.get_mut().write_all(req.as_bytes()).unwrap();
        assert_eq!(self.line(), "STORED", "set {key}");
    }

    fn get(&mut self, key: &str) -> Option<String> {
        let req = format!("get {key}\r\n");
        self.reader.get_mut().write_all(req.as_bytes()).unwrap();
        let head = self.line();
        if head == "END" {
            return None;
        }
        let len: usize = head
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("memcached answered {head:?}"));
        let mut buf = vec![0u8; len + 2];
        self.reader.read_exact(&mut buf).unwrap();
        buf.truncate(len);
        assert_eq!(self.line(), "END");
        Some(String::from_utf8(buf).unwrap())
    }
}

#[test]
fn memcached_keeps_its_clients_and_data_across_three_cycles() {
    const KEYS: usize = 500;
    let Some(bin) = installed("memcached") else {
        return;
    };
    let port = free_port();
    let work = work_dir("memcached");
    let mut cmd = Command::new(bin);
    // -U 0: no UDP port; -u root: memcached refuses to run as root without saying so.
    cmd.args([
        "-p",
        &port.to_string(),
        "-l",
        "127.0.0.1",
        "-U",
        "0",
        "-u",
        "root",
    ]);
    let server = Server::start("memcached", cmd, work);
    let mut kept = Memcached::connect(v4(port));
    for i in 0..KEYS {
        kept.set(&format!("k{i}"), &format!("v{i}-{}", "y".repeat(i % 50)));
    }
    for round in 1..=3 {
        server.cycle(round);
        let ctx = format!("memcached, after cycle {round}");
        let mut fresh = Memcached::connect(v4(port));
        for i in 0..KEYS {
            let want = format!("v{i}-{}", "y".repeat(i % 50));
            assert_eq!(
                kept.get(&format!("k{i}")),
                Some(want.clone()),
                "{ctx}: kept"
            );
            assert_eq!(fresh.get(&format!("k{i}")), Some(want), "{ctx}: new");
        }
        kept.set(&format!("round{round}"), "r");
        assert_eq!(fresh.get(&format!("round{round}")).as_deref(), Some("r"));
    }
}

#[test]
fn nginx_master_and_workers_keep_their_clients_across_three_cycles() {
    let Some(bin) = installed("nginx") else {
        return;
    };
    let port = free_port();
    let work = work_dir("nginx");
    let root = work.path();
    // The workers run as nobody: the pages are in a directory anyone can read (the work
    // directory may be under a home directory nobody cannot enter).
    let www = tempfile::Builder::new()
        .prefix("crest-nginx-www-")
        .tempdir()
        .expect("create the www dir");
    std::fs::set_permissions(
        www.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(www.path().join("index.html"), "hello from nginx\n").unwrap();
    let big: String = (0..20000).map(|i| format!("line {i}\n")).collect();
    std::fs::write(www.path().join("big.txt"), &big).unwrap();
    let conf = format!(
        "daemon off;\nmaster_process on;\nworker_processes 2;\npid {r}/nginx.pid;\n\
         error_log {r}/error.log;\nevents {{ worker_connections 64; }}\n\
         http {{\n  access_log {r}/access.log;\n  keepalive_timeout 300s;\n  \
         keepalive_requests 10000;\n  client_body_temp_path {r}/body;\n  \
         proxy_temp_path {r}/proxy;\n  fastcgi_temp_path {r}/fastcgi;\n  \
         uwsgi_temp_path {r}/uwsgi;\n  scgi_temp_path {r}/scgi;\n  server {{\n    \
         listen 127.0.0.1:{port};\n    listen [::1]:{port};\n    root {w};\n  }}\n}}\n",
        r = root.display(),
        w = www.path().display()
    );
    std::fs::write(root.join("nginx.conf"), conf).unwrap();
    let mut cmd = Command::new(bin);
    cmd.arg("-e")
        .arg(root.join("error.log"))
        .arg("-c")
        .arg(root.join("nginx.conf"));
    let server = Server::start("nginx", cmd, work);
    wait_for("nginx's two workers", ANSWER, || {
        (descendants(server.root).len() == 2).then_some(())
    });
    let mut kept = [v4(port), v6(port), v4(port)].map(|a| {
        wait_for(&format!("nginx to listen on {a}"), ANSWER, || {
            TcpStream::connect(a).ok()
        });
        HttpConnection::open(a)
    });
    for c in kept.iter_mut() {
        assert_eq!(c.get("/").unwrap(), (200, "hello from nginx\n".into()));
    }
    for round in 1..=3 {
        server.cycle(round);
        let ctx = format!("nginx, after cycle {round}");
        for (i, c) in kept.iter_mut().enumerate() {
            let got = c
                .get("/")
                .unwrap_or_else(|e| panic!("{ctx}: kept connection {i}: {e}"));
            assert_eq!(got, (200, "hello from nginx\n".into()), "{ctx}: kept {i}");
            let got = c.get("/big.txt").unwrap_or_else(|e| panic!("{ctx}: {e}"));
            assert!(got.0 == 200 && got.1 == big, "{ctx}: big.txt on kept {i}");
        }
        for a in [v4(port), v6(port)] {
            let got = HttpConnection::open(a).get("/").unwrap();
            assert_eq!(got, (200, "hello from nginx\n".into()), "{ctx}: new on {a}");
        }
    }
}

#[test]
fn python_http_server_answers_across_three_cycles() {
    let Some(bin) = installed("python3") else {
        return;
    };
    let port = free_port();
    let work = work_dir("pyhttp");
    std::fs::write(work.path().join("hello.txt"), "hello from python\n").unwrap();
    let mut cmd = Command::new(bin);
    cmd.args([
        "-m",
        "http.server",
        "--bind",
        "127.0.0.1",
        &port.to_string(),
    ]);
    let server = Server::start("python3 -m http.server", cmd, work);
    let get = |ctx: &str| {
        let s = connect(v4(port));
        drop(s);
        let (status, body) = HttpConnection::open(v4(port))
            .get("/hello.txt")
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        assert_eq!(
            (status, body.as_str()),
            (200, "hello from python\n"),
            "{ctx}"
        );
    };
    get("before any dump");
    for round in 1..=3 {
        server.cycle(round);
        get(&format!("python3 -m http.server, after cycle {round}"));
    }
}
