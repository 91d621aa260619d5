//! TCP over IPv4 and IPv6 across dump and restore (issue #10, item 1): a python3 echo server
//! (tests/tcp/server.py) with listeners on 127.0.0.1, [::1] (IPV6_V6ONLY) and an IPv4-mapped
//! address of a dual-stack socket, options on each, a connection to itself with unread bytes
//! both ways, and connections from the test (outside the tree) with data in flight in both
//! directions. Loopback only; every port is chosen by the kernel (bind to port 0).
//!
//! Checked: after dump (kill) and restore the listeners accept new connections with the same
//! addresses and options; the test's connections carry on in both directions with what was in
//! flight; the self-connection delivers its bytes; `-R` leaves everything working; a listener
//! with a connection waiting to be accepted is refused by name; the network lock (an nftables
//! table named after the pid) exists between dump and restore only, and a failed dump removes
//! it.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

struct Server {
    pid: i32,
    ctl: PathBuf,
    ports: [u16; 3],
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let ctl = dir.path().to_path_buf();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tcp/server.py");
        let mut cmd = Command::new("python3");
        cmd.arg(&script)
            .arg(&ctl)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(ctl.join("stderr")).unwrap());
        let pid = spawn_in_own_session(cmd);
        let text = wait_for("the server's ports", TIMEOUT, || {
            fs::read_to_string(ctl.join("ports")).ok()
        });
        let p: Vec<u16> = text
            .split_whitespace()
            .map(|w| w.parse().unwrap())
            .collect();
        Server {
            pid,
            ctl,
            ports: [p[0], p[1], p[2]],
            _dir: dir,
        }
    }

    fn addrs(&self) -> [SocketAddr; 3] {
        [
            format!("127.0.0.1:{}", self.ports[0]).parse().unwrap(),
            format!("[::1]:{}", self.ports[1]).parse().unwrap(),
            format!("127.0.0.1:{}", self.ports[2]).parse().unwrap(),
        ]
    }

    /// Asks the server for its sockets' addresses and options (and waits for the answer).
    fn state(&self) -> String {
        let _ = fs::remove_file(self.ctl.join("state"));
        fs::write(self.ctl.join("state-request"), "").unwrap();
        wait_for("the server's state", TIMEOUT, || {
            fs::read_to_string(self.ctl.join("state")).ok()
        })
    }

    fn hold(&self) {
        fs::write(self.ctl.join("hold"), "").unwrap();
        wait_for("the server to hold", TIMEOUT, || {
            self.ctl.join("held").exists().then_some(())
        });
    }

    fn release(&self) {
        let _ = fs::remove_file(self.ctl.join("held"));
        fs::remove_file(self.ctl.join("hold")).unwrap();
    }

    fn stderr(&self) -> String {
        fs::read_to_string(self.ctl.join("stderr")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid this test started (or restored).
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        let _ = reap_pid(self.pid, TIMEOUT);
    }
}

fn connect(a: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(a).unwrap_or_else(|e| panic!("connect to {a}: {e}"));
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s
}

/// Sends `msg` and reads its echo.
fn echo(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back)
        .unwrap_or_else(|e| panic!("no echo of {:?}: {e}", String::from_utf8_lossy(msg)));
    assert_eq!(back, msg);
}

/// The nftables lock tables of the dump of `pid`.
fn lock_tables(pid: i32) -> Vec<String> {
    let out = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .or_else(|_| {
            Command::new("/usr/sbin/nft")
                .args(["list", "tables"])
                .output()
        })
        .expect("run nft");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("crest-{pid}-")))
        .map(str::to_string)
        .collect()
}

fn pattern(i: usize) -> u8 {
    (i * 7 % 251) as u8
}

#[test]
fn listeners_and_connections_carry_on_across_dump_and_restore() {
    let srv = Server::start();
    let before = srv.state();
    let [a4, a6, ad] = srv.addrs();

    // A client whose receive buffer the server fills: the server's send queue holds the rest.
    let t4 = socket2_small_rcvbuf(a4);
    let mut t4 = t4;
    t4.write_all(b"B").unwrap();
    let sent: usize = wait_for("the blob", TIMEOUT, || {
        fs::read_to_string(srv.ctl.join("blob-sent")).ok()
    })
    .trim()
    .parse()
    .unwrap();
    let mut t6 = connect(a6);
    echo(&mut t6, b"before over IPv6");
    let mut td = connect(ad);
    echo(&mut td, b"before over the dual-stack socket");
    // What the server has not read when it is dumped.
    srv.hold();
    t4.write_all(b"unread by the server, v4").unwrap();
    t6.write_all(b"unread by the server, v6").unwrap();

    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = work.path().join("img");
    let out = dump(srv.pid, &dir, false);
    out.assert_ok();
    assert!(
        out.stderr.contains("network lock"),
        "the statistics name the lock: {out}"
    );
    reap_pid(srv.pid, TIMEOUT).unwrap();
    assert_eq!(
        lock_tables(srv.pid).len(),
        1,
        "the lock stays until the restore"
    );
    let text = show_json(&dir).to_string();
    assert!(
        text.contains("Listening") && text.contains("Established"),
        "{text}"
    );

    restore_detached(&dir, &[]).assert_ok();
    assert!(
        lock_tables(srv.pid).is_empty(),
        "the restore removes the lock"
    );
    srv.release();

    // The blob (sent, unacknowledged or never sent at dump time), then the echo of what the
    // server had not read.
    let mut got = vec![0u8; sent];
    t4.read_exact(&mut got).expect("the blob after restore");
    assert!(got.iter().enumerate().all(|(i, b)| *b == pattern(i)));
    let mut back = [0u8; 24];
    t4.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"unread by the server, v4");
    t6.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"unread by the server, v6");
    echo(&mut t4, b"after, v4");
    echo(&mut t6, b"after, v6");
    echo(&mut td, b"after, dual-stack");
    for a in [a4, a6, ad] {
        echo(&mut connect(a), format!("new connection to {a}").as_bytes());
    }
    fs::write(srv.ctl.join("selfcheck-request"), "").unwrap();
    let self_check = wait_for("the self-connection check", TIMEOUT, || {
        fs::read_to_string(srv.ctl.join("selfcheck")).ok()
    });
    assert_eq!(self_check, "ok\n", "{}", srv.stderr());
    assert_eq!(srv.state(), before, "addresses and options");
}

/// A client socket with a small receive buffer, connected to `a`.
fn socket2_small_rcvbuf(a: SocketAddr) -> TcpStream {
    // std has no way to set SO_RCVBUF before connect; a raw socket does.
    let family = if a.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket(2) takes only integers.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    // SAFETY: fd is a new socket we own.
    let s = unsafe { <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let size: libc::c_int = 4096;
    // SAFETY: size is a readable int.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            4,
        )
    };
    assert_eq!(r, 0);
    let SocketAddr::V4(v4) = a else {
        panic!("IPv4 only")
    };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sin is a valid sockaddr_in.
    let r = unsafe {
        libc::connect(
            s.as_raw_fd(),
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "connect to {a}");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s
}

#[test]
fn leave_running_keeps_connections_and_removes_the_lock() {
    let srv = Server::start();
    let [a4, a6, _] = srv.addrs();
    let mut t4 = connect(a4);
    let mut t6 = connect(a6);
    echo(&mut t4, b"before");
    echo(&mut t6, b"before");
    let before = srv.state();
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    dump(srv.pid, &work.path().join("img"), true).assert_ok();
    assert!(lock_tables(srv.pid).is_empty(), "-R removes the lock");
    echo(&mut t4, b"after -R");
    echo(&mut t6, b"after -R");
    echo(&mut connect(a4), b"new connection");
    assert_eq!(srv.state(), before, "addresses and options after -R");
}

#[test]
fn a_connection_waiting_to_be_accepted_is_refused() {
    let srv = Server::start();
    let [a4, ..] = srv.addrs();
    let mut t4 = connect(a4);
    echo(&mut t4, b"before");
    srv.hold();
    let mut waiting = connect(a4);
    waiting.write_all(b"queued").unwrap();
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let out = dump(srv.pid, &work.path().join("img"), false);
    out.assert_failed()
        .assert_stderr_mentions(&srv.pid.to_string())
        .assert_stderr_mentions(&format!("listening on {a4} with 1 connection(s) waiting"));
    assert!(
        lock_tables(srv.pid).is_empty(),
        "a refused dump leaves no lock"
    );
    srv.release();
    echo(&mut t4, b"after the refusal");
    let mut back = [0u8; 6];
    waiting.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"queued");
}

#[test]
fn skip_in_flight_leaves_waiting_connections_out_and_says_so() {
    let srv = Server::start();
    let [a4, ..] = srv.addrs();
    let mut t4 = connect(a4);
    echo(&mut t4, b"before");
    srv.hold();
    let _waiting = connect(a4);
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = work.path().join("img");
    // Without the option the refusal says which option would leave them out.
    dump(srv.pid, &dir, false)
        .assert_failed()
        .assert_stderr_mentions("give --skip-in-flight to leave them out");
    let out = dump_with(srv.pid, &dir, &["--skip-in-flight".as_ref()]);
    out.assert_ok().assert_stderr_mentions(&format!(
        "listening on {a4} with 1 connection(s) waiting to be accepted: left out \
         (--skip-in-flight)"
    ));
    reap_pid(srv.pid, TIMEOUT).expect("the dumped server is gone");
    restore_detached(&dir, &[]).assert_ok();
    srv.release();
    echo(&mut t4, b"after the restore");
    let mut fresh = connect(a4);
    echo(&mut fresh, b"a new connection");
}

/// Reads from `s` until end of file or an error (a reset): the connection is over.
fn ends(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => {
                return e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut
            }
        }
    }
}

#[test]
fn tcp_close_at_dump_or_at_restore_brings_connections_back_closed() {
    // Restore --tcp-close: captured as usual, made again closed.
    let srv = Server::start();
    let [a4, ..] = srv.addrs();
    let mut t4 = connect(a4);
    echo(&mut t4, b"before");
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = work.path().join("img");
    dump(srv.pid, &dir, false).assert_ok();
    assert!(!lock_tables(srv.pid).is_empty(), "the connection is locked");
    reap_pid(srv.pid, TIMEOUT).expect("the dumped server is gone");
    restore_detached(&dir, &["--tcp-close"]).assert_ok();
    assert!(
        lock_tables(srv.pid).is_empty(),
        "the restore removes the lock"
    );
    let mut fresh = connect(a4);
    echo(&mut fresh, b"a new connection");
    // The server's end is closed: the old connection ends (a reset once the client writes).
    let _ = t4.write_all(b"anyone?");
    assert!(
        ends(&mut t4),
        "the old connection carries on after --tcp-close"
    );
    drop(srv);

    // Dump --tcp-close: nothing locked, nothing in repair mode; the restore makes the
    // connection a closed socket and the listener listens again.
    let srv = Server::start();
    let [a4, ..] = srv.addrs();
    let mut t4 = connect(a4);
    echo(&mut t4, b"before");
    let dir = work.path().join("img-closed");
    dump_with(srv.pid, &dir, &["--tcp-close".as_ref()]).assert_ok();
    assert!(lock_tables(srv.pid).is_empty(), "--tcp-close locks nothing");
    reap_pid(srv.pid, TIMEOUT).expect("the dumped server is gone");
    // The kernel closed the connection with the process: the client reads end of file.
    assert!(
        ends(&mut t4),
        "the old connection is over once the server is killed"
    );
    restore_detached(&dir, &[]).assert_ok();
    let mut fresh = connect(a4);
    echo(&mut fresh, b"a new connection");
}

#[test]
fn a_failed_dump_removes_the_lock_and_the_connections_work() {
    let srv = Server::start();
    let [a4, a6, _] = srv.addrs();
    let mut t4 = connect(a4);
    let mut t6 = connect(a6);
    echo(&mut t4, b"before");
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = work.path().join("img");
    let out = spawn_crest_with(
        [
            "dump",
            "-t",
            &srv.pid.to_string(),
            "-D",
            dir.to_str().unwrap(),
        ],
        |c| {
            c.env("CREST_FAIL_AT", "pages");
        },
    )
    .wait(CREST_TIMEOUT);
    out.assert_failed()
        .assert_stderr_mentions("injected failure");
    assert!(
        lock_tables(srv.pid).is_empty(),
        "a failed dump removes its lock"
    );
    assert!(!dir.exists());
    echo(&mut t4, b"after the failed dump");
    echo(&mut t6, b"after the failed dump");
}

/// Issue #10's cost: a process holding 1000 established TCP connections (500 to itself, so both
/// ends in the tree, each end with unread bytes) is dumped and restored; every connection then
/// delivers its unread bytes and a new round trip. The same program without connections is the
/// baseline, measured in the same run. The times are printed (run with --nocapture to see them),
/// never asserted.
#[test]
fn a_thousand_established_connections_are_dumped_and_restored() {
    let (base_dump, base_restore, _) = connections_cycle(0);
    let (dump_time, restore_time, stats) = connections_cycle(500);
    eprintln!(
        "1000 established connections: crest dump {dump_time:?}, crest restore {restore_time:?} \
         (without connections: {base_dump:?} and {base_restore:?})\n{stats}"
    );
}

/// Starts tests/tcp/many.py with `pairs` connections to itself, dumps it (killing it),
/// restores it and checks every connection; returns the dump and restore times and the dump's
/// timing line.
fn connections_cycle(pairs: usize) -> (std::time::Duration, std::time::Duration, String) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let ctl = dir.path().to_path_buf();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tcp/many.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .arg(&ctl)
        .arg(pairs.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(ctl.join("stderr")).unwrap());
    let pid = spawn_in_own_session(cmd);
    let guard = Server {
        pid,
        ctl: ctl.clone(),
        ports: [0; 3],
        _dir: dir,
    };
    wait_for("the connections", TIMEOUT, || {
        fs::read_to_string(ctl.join("ready")).ok()
    });
    let img = ctl.join("img");
    let t0 = std::time::Instant::now();
    let out = dump(pid, &img, false);
    let dump_time = t0.elapsed();
    assert!(out.success(), "{out}\nvictim: {}", guard.stderr());
    let _ = reap_pid(pid, TIMEOUT);
    let tables = if pairs > 0 { 1 } else { 0 };
    assert_eq!(
        lock_tables(pid).len(),
        tables,
        "lock tables while the image waits"
    );
    let t1 = std::time::Instant::now();
    restore_detached(&img, &[]).assert_ok();
    let restore_time = t1.elapsed();
    assert!(lock_tables(pid).is_empty(), "the restore removes the lock");
    fs::write(ctl.join("check-request"), "").unwrap();
    let answer = wait_for("the victim's check", TIMEOUT, || {
        fs::read_to_string(ctl.join("check")).ok()
    });
    assert_eq!(answer.trim(), format!("ok {pairs}"), "{}", guard.stderr());
    let stats = out
        .stderr
        .lines()
        .filter(|l| l.contains("time:"))
        .collect::<Vec<_>>()
        .join("\n");
    (dump_time, restore_time, stats)
}

/// Ends the process the test started (or restored) when the test ends.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid this test started (or restored).
        unsafe { libc::kill(self.0, libc::SIGKILL) };
        let _ = reap_pid(self.0, TIMEOUT);
    }
}

/// The connections of tests/tcp/closing.py, one per closing state and family, with the test
/// as the peer: the kinds as the victim names them.
const CLOSING_KINDS: [&str; 6] = [
    "close_wait",
    "fin_wait2",
    "fin_wait1",
    "last_ack",
    "closing",
    "closed",
];

/// A TCP client connected to `a`; with `small`, a 4 KiB receive buffer set before connect,
/// so the victim can fill its window.
fn client(a: SocketAddr, small: bool) -> TcpStream {
    use crest::net::sock;
    use std::os::fd::AsFd;
    let family = if a.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let s = sock::tcp_socket(family).unwrap();
    if small {
        sock::set_int(s.as_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, 4096).unwrap();
    }
    sock::connect(s.as_fd(), &a).unwrap_or_else(|e| panic!("connect to {a}: {e}"));
    let s = TcpStream::from(s);
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s
}

fn read_to_end(s: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap_or_else(|e| {
        let ss = Command::new("ss").args(["-tnoie"]).output().unwrap();
        panic!(
            "{what}: reading to end of file: {e} ({} read)\n{}",
            got.len(),
            String::from_utf8_lossy(&ss.stdout)
        )
    });
    got
}

/// The victim's description of its connections, with the unacknowledged count left out of
/// the connections that filled the test's window (the test's kernel may still open it a
/// little while the victim runs); those must still have some.
fn closing_state(ctl: &Path, request: bool) -> String {
    if request {
        let _ = fs::remove_file(ctl.join("state"));
        fs::write(ctl.join("state-request"), "").unwrap();
    }
    let text = wait_for("the victim's state", TIMEOUT, || {
        fs::read_to_string(ctl.join("state")).ok()
    });
    text.lines()
        .map(|l| {
            let filled = ["fin_wait1", "last_ack", "closing"]
                .iter()
                .any(|k| l.split(' ').nth(1) == Some(k));
            if !filled {
                return format!("{l}\n");
            }
            let words: Vec<&str> = l
                .split(' ')
                .filter(|w| {
                    assert!(*w != "unacked=0", "nothing left to send: {l}");
                    !w.starts_with("unacked=")
                })
                .collect();
            format!("{}\n", words.join(" "))
        })
        .collect()
}

/// Puts one connection from the test into each closing state, for IPv4, IPv6 and an
/// IPv4-mapped address; dumps the victim (killing it, or with `-R`), restores it if killed;
/// compares each connection's state, unread bytes and addresses before and after; then each
/// side does what comes next and both check what they see.
fn closing_states_carry_on(leave_running: bool) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let ctl = dir.path().to_path_buf();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tcp/closing.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .arg(&ctl)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(ctl.join("stderr")).unwrap());
    let pid = spawn_in_own_session(cmd);
    let _victim = KillOnDrop(pid);
    let stderr = || fs::read_to_string(ctl.join("stderr")).unwrap_or_default();
    let ports: Vec<u16> = wait_for("the victim's ports", TIMEOUT, || {
        fs::read_to_string(ctl.join("ports")).ok()
    })
    .split_whitespace()
    .map(|w| w.parse().unwrap())
    .collect();
    let fams = [
        ("v4", format!("127.0.0.1:{}", ports[0])),
        ("v6", format!("[::1]:{}", ports[1])),
        ("mapped", format!("127.0.0.1:{}", ports[2])),
    ];
    let mut peers = std::collections::BTreeMap::new();
    for (fam, addr) in &fams {
        let a: SocketAddr = addr.parse().unwrap();
        for (i, kind) in CLOSING_KINDS.iter().enumerate() {
            let small = ["fin_wait1", "last_ack", "closing"].contains(kind);
            let mut s = client(a, small);
            s.write_all(&[i as u8]).unwrap();
            let first: &[u8] = match *kind {
                "close_wait" => b"cw-data",
                "last_ack" => b"la",
                "closed" => b"cl-data",
                _ => b"",
            };
            if !first.is_empty() {
                s.write_all(first).unwrap();
                s.shutdown(std::net::Shutdown::Write).unwrap();
            }
            peers.insert((*fam, *kind), s);
        }
    }
    for (fam, _) in &fams {
        wait_for("the closing connection's FIN_WAIT1", TIMEOUT, || {
            ctl.join(format!("filled-{fam}")).exists().then_some(())
        });
        peers[&(*fam, "closing")]
            .shutdown(std::net::Shutdown::Write)
            .unwrap();
    }
    let before = closing_state(&ctl, false);
    assert_eq!(before.lines().count(), 18, "{before}");
    for kind in CLOSING_KINDS {
        let want = match kind {
            "closed" => "CLOSE",
            other => &other.to_uppercase(),
        };
        assert_eq!(
            before.matches(&format!(" {kind} state={want} ")).count(),
            3,
            "{before}\n{}",
            stderr()
        );
    }
    let sent: std::collections::BTreeMap<(String, String), usize> =
        fs::read_to_string(ctl.join("sent"))
            .unwrap()
            .lines()
            .map(|l| {
                let w: Vec<&str> = l.split(' ').collect();
                ((w[0].to_string(), w[1].to_string()), w[2].parse().unwrap())
            })
            .collect();

    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let img = work.path().join("img");
    dump(pid, &img, leave_running).assert_ok();
    if !leave_running {
        reap_pid(pid, TIMEOUT).unwrap();
        assert_eq!(
            lock_tables(pid).len(),
            1,
            "the lock stays until the restore"
        );
        let text = show_json(&img).to_string();
        for phase in [
            "FinWait1",
            "FinWait2",
            "CloseWait",
            "LastAck",
            "Closing",
            "Closed",
        ] {
            assert!(text.contains(phase), "{phase} in {text}");
        }
        restore_detached(&img, &[]).assert_ok();
    }
    assert!(lock_tables(pid).is_empty(), "no lock once the victim runs");
    assert_eq!(closing_state(&ctl, true), before, "{}", stderr());

    // What comes next: the test sends what the victim waits for and reads what it sent.
    fs::write(ctl.join("go"), "").unwrap();
    for (fam, _) in &fams {
        let s = peers.get_mut(&(*fam, "fin_wait2")).unwrap();
        assert_eq!(read_to_end(s, "fin_wait2"), b"fw2");
        s.write_all(b"fw2-late").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    for (fam, _) in &fams {
        for kind in ["fin_wait1", "last_ack", "closing"] {
            let s = peers.get_mut(&(*fam, kind)).unwrap();
            let got = read_to_end(s, kind);
            let n = sent[&(fam.to_string(), kind.to_string())];
            assert_eq!(got.len(), n, "{fam} {kind}: bytes before the FIN");
            assert!(
                got.iter().enumerate().all(|(i, b)| *b == pattern(i)),
                "{fam} {kind}: the bytes"
            );
            if kind == "fin_wait1" {
                s.shutdown(std::net::Shutdown::Write).unwrap();
            }
        }
    }
    for (fam, _) in &fams {
        let s = peers.get_mut(&(*fam, "close_wait")).unwrap();
        assert_eq!(read_to_end(s, "close_wait"), b"cw-reply");
    }
    let result = wait_for("the victim's result", TIMEOUT, || {
        fs::read_to_string(ctl.join("result")).ok()
    });
    assert_eq!(result.lines().count(), 18, "{result}");
    assert!(
        result.lines().all(|l| l.ends_with(" ok")),
        "{result}\n{}",
        stderr()
    );
}

#[test]
fn closing_connections_carry_on_after_restore() {
    closing_states_carry_on(false);
}

#[test]
fn closing_connections_carry_on_after_a_dump_that_leaves_them_running() {
    closing_states_carry_on(true);
}

/// One end's report of tests/tcp/bufs.py: bytes sent and received, the offset of the first
/// wrong byte received (-1: none), the segment size (TCP_INFO snd_mss) while full and after.
fn bufs_result(ctl: &Path, role: &str, family: &str) -> (u64, u64, i64, u32, u32) {
    let text = wait_for(
        &format!("the {role}'s result over {family}"),
        TIMEOUT,
        || fs::read_to_string(ctl.join(format!("result-{role}-{family}"))).ok(),
    );
    let w: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(
        (w[0], w[2], w[4], w[6]),
        ("sent", "received", "bad", "mss"),
        "{text}"
    );
    (
        w[1].parse().unwrap(),
        w[3].parse().unwrap(),
        w[5].parse().unwrap(),
        w[7].parse().unwrap(),
        w[8].parse().unwrap(),
    )
}

#[test]
fn connections_with_full_buffers_both_ways_deliver_every_byte_after_restore() {
    // Two processes of the tree, connected over IPv4 and IPv6, one end with 100 MiB buffers
    // (as far as the machine allows), both ends full in both directions with bytes unread,
    // unsent and unacknowledged.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let ctl = dir.path().to_path_buf();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tcp/bufs.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .arg(&ctl)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(ctl.join("stderr")).unwrap());
    let pid = spawn_in_own_session(cmd);
    let _parent = KillOnDrop(pid);
    let stderr = || fs::read_to_string(ctl.join("stderr")).unwrap_or_default();
    let ready = wait_for("the victim's full buffers", TIMEOUT, || {
        fs::read_to_string(ctl.join("ready")).ok()
    });
    let child: i32 = ready.split_whitespace().nth(1).unwrap().parse().unwrap();
    let _child = KillOnDrop(child);
    let img = ctl.join("img");
    let out = dump(pid, &img, false);
    assert!(out.success(), "{out}\nvictim: {}", stderr());
    // Both were killed; the test (a subreaper) reaps the orphaned child too.
    let _ = reap_pid(pid, TIMEOUT);
    let _ = reap_pid(child, TIMEOUT);
    restore_detached(&img, &[]).assert_ok();
    // Each end sends 4 MiB more, shuts down for writing and reads to the end.
    fs::write(ctl.join("go"), "").unwrap();
    for family in ["ipv4", "ipv6"] {
        let parent = bufs_result(&ctl, "parent", family);
        let child = bufs_result(&ctl, "child", family);
        for ((role, me), (peer, them)) in [
            (("parent", parent), ("child", child)),
            (("child", child), ("parent", parent)),
        ] {
            let (_, received, bad, mss_full, mss_after) = me;
            let sent_by_peer = them.0;
            assert_eq!(
                (received, bad),
                (sent_by_peer, -1),
                "over {family}, the {role} received {received} bytes of the {sent_by_peer} \
                 the {peer} sent (first wrong byte at {bad}); victim: {}",
                stderr()
            );
            // The segment size only grows with the peer's largest window; the restore must
            // not bring back the 536-byte default (less the options) instead.
            assert!(
                mss_after >= mss_full,
                "over {family}, the {role} sent segments of {mss_after} bytes after restore, \
                 {mss_full} before"
            );
        }
    }
}

/// Holds two connections whose client ends have IP options set: four NOPs as IPv4
/// IP_OPTIONS, a hop-by-hop header (PadN) as an IPv6 sticky header; answers "state" with the fds
/// and options: crest does not carry IP options on TCP yet, so the dump refuses naming both
/// fds, and the process runs on with its connections.
const IP_OPTIONS_VICTIM: &str = r#"
import socket
HOPOPTS = b"\x00\x00\x01\x04\x00\x00\x00\x00"
pairs = []
for family, host, level, name, value in [
        (socket.AF_INET, "127.0.0.1", socket.IPPROTO_IP, socket.IP_OPTIONS, b"\x01\x01\x01\x01"),
        (socket.AF_INET6, "::1", socket.IPPROTO_IPV6, socket.IPV6_HOPOPTS, HOPOPTS)]:
    l = socket.socket(family)
    l.bind((host, 0))
    l.listen()
    c = socket.socket(family)
    c.setsockopt(level, name, value)
    c.connect(l.getsockname())
    a, _ = l.accept()
    pairs.append((c, a, level, name))

def state():
    out = []
    for c, a, level, name in pairs:
        c.sendall(b"ping")
        out.append("%d %s %s" % (c.fileno(), c.getsockopt(level, name, 64).hex(), a.recv(4).decode()))
    return ", ".join(out)

serve(lambda data: state())
"#;

#[test]
fn tcp_sockets_with_ip_options_are_refused_naming_their_fds_and_run_on() {
    setup();
    let work = tempfile::tempdir().unwrap();
    let v = ControlledVictim::start(IP_OPTIONS_VICTIM, work.path(), &[]);
    let before = v.ask(b"state");
    let fds: Vec<&str> = before
        .split(", ")
        .map(|c| c.split(' ').next().unwrap())
        .collect();
    assert!(
        before.contains(" 01010101 ping") && before.contains(" 0000010400000000 ping"),
        "{before}"
    );
    let dir = work.path().join("img");
    dump(v.pid(), &dir, false)
        .assert_failed()
        .assert_stderr_mentions(&format!("fd {} is a TCP/IPv4", fds[0]))
        .assert_stderr_mentions(&format!("fd {} is a TCP/IPv6", fds[1]))
        .assert_stderr_mentions("IP_OPTIONS")
        .assert_stderr_mentions("IPV6_HOPOPTS");
    assert!(!dir.exists(), "a refused dump writes no image");
    assert_eq!(
        v.ask(b"state"),
        before,
        "the victim runs on with its connections"
    );
}
