//! UDP and netlink sockets across dump and restore (issue #10, item 2), and the sockets a dump
//! refuses. The victims are python3 programs (loopback only: 127.0.0.1 and ::1, ports chosen
//! by the kernel):
//! - the server holds a bound IPv4 socket with options, a bound IPv6-only socket, a socket
//!   connected to the test, an unbound non-blocking one and a NETLINK_ROUTE socket subscribed
//!   to link notifications, a UDP-Lite socket with a checksum coverage, a connected socket shut
//!   down for writing and a bound one shut down for reading (shutdown(2) comes back: sending
//!   fails with EPIPE, reading gives end of file at once). It answers datagrams on each
//!   (UDP-Lite included), reports its sockets' addresses and
//!   options on request, and asks the kernel for its links (RTM_GETLINK) on request, checking
//!   every reply is addressed to the port id it got when it bound (as libmnl does). Across two
//!   cycles everything it reports stays the same and every socket still answers.
//! - the refused one holds a raw socket, a NETLINK_AUDIT socket and a UDP socket with a datagram
//!   waiting: the dump names each with its pid and fd and leaves the program running, its
//!   datagram still there.

mod common;

use std::fs;
use std::net::UdpSocket;
use std::path::Path;

use common::*;

const SERVER: &str = r#"
import fcntl, json, os, select, socket, struct, sys
ready, tport = sys.argv[1], int(sys.argv[2])
a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
a.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
a.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0x10)
a.setsockopt(socket.IPPROTO_IP, 8, 1)
a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
a.bind(("127.0.0.1", 0))
b = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
b.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
b.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
b.bind(("::1", 0))
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
c.connect(("127.0.0.1", tport))
u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
u.setblocking(False)
l = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, 136)  # IPPROTO_UDPLITE
l.setsockopt(136, 10, 20)  # UDPLITE_SEND_CSCOV
l.bind(("127.0.0.1", 0))
sw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sw.bind(("127.0.0.1", 0))
sw.connect(("127.0.0.1", tport))
sw.shutdown(socket.SHUT_WR)
sr = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sr.bind(("127.0.0.1", 0))
try:
    sr.shutdown(socket.SHUT_RD)  # ENOTCONN, but the kernel sets the bit all the same
except OSError:
    pass
# Blocking: a read shut down returns end of file at once (a non-blocking one says EAGAIN).
n = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
n.bind((0, 1))  # RTNLGRP_LINK
portid = n.getsockname()[0]
seq = 100

def opts(s, names):
    return {k: s.getsockopt(*v) for k, v in names.items()}

def shut_states():
    try:
        sw.send(b"x")
        w = "sent"
    except BrokenPipeError:
        w = "EPIPE"
    try:
        r = "eof" if sr.recv(10) == b"" else "data"
    except OSError as e:
        r = str(e)
    return [w, r, sw.getpeername(), sr.getsockname()[0]]

def state():
    return {
        "l": [l.getsockname(), l.getsockopt(136, 10), l.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)],
        "shut": shut_states(),
        "a": [a.getsockname(), opts(a, {
            "reuseaddr": (socket.SOL_SOCKET, socket.SO_REUSEADDR),
            "tos": (socket.IPPROTO_IP, socket.IP_TOS),
            "pktinfo": (socket.IPPROTO_IP, 8),
            "rcvbuf": (socket.SOL_SOCKET, socket.SO_RCVBUF),
            "sndbuf": (socket.SOL_SOCKET, socket.SO_SNDBUF),
            "ttl": (socket.IPPROTO_IP, socket.IP_TTL)})],
        "b": [b.getsockname(), opts(b, {
            "v6only": (socket.IPPROTO_IPV6, socket.IPV6_V6ONLY),
            "recvpktinfo": (socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO),
            "reuseaddr": (socket.SOL_SOCKET, socket.SO_REUSEADDR)})],
        "c": [c.getsockname(), c.getpeername(), opts(c, {
            "broadcast": (socket.SOL_SOCKET, socket.SO_BROADCAST)})],
        "u": [u.getsockname(), fcntl.fcntl(u, fcntl.F_GETFL) & os.O_NONBLOCK != 0],
        "n": [n.getsockname(), portid, n.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL),
              n.getsockopt(270, 9, 4).hex()],
        "fds": [s.fileno() for s in (a, b, c, u, n, l, sw, sr)],
    }

def links():
    # RTM_GETLINK dump; every reply must carry our port id and sequence number.
    global seq
    seq += 1
    n.send(struct.pack("=IHHII", 32, 18, 0x301, seq, 0) + bytes(16))
    count = 0
    while True:
        data = n.recv(65536)
        off = 0
        while off + 16 <= len(data):
            ln, ty, fl, sq, pid = struct.unpack_from("=IHHII", data, off)
            off += (ln + 3) & ~3
            if sq != seq:
                continue  # a notification
            if pid != portid:
                return "error: reply for port id %d, ours is %d" % (pid, portid)
            if ty == 3:  # NLMSG_DONE
                return "links=%d portid=%d" % (count, portid)
            if ty == 2:
                return "error: NLMSG_ERROR"
            if ty == 16:  # RTM_NEWLINK
                count += 1

with open(ready + ".tmp", "w") as f:
    json.dump({"a": a.getsockname()[1], "b": b.getsockname()[1], "c": c.getsockname()[1],
               "l": l.getsockname()[1]}, f)
os.rename(ready + ".tmp", ready)
while True:
    r, _, _ = select.select([a, b, c, n, l], [], [])
    if n in r:
        n.recv(65536)  # a link notification: read it as any listener does
    if a in r:
        data, peer = a.recvfrom(65536)
        if data == b"state":
            a.sendto(json.dumps(state()).encode(), peer)
        elif data == b"netlink":
            a.sendto(links().encode(), peer)
        else:
            a.sendto(b"a:" + data, peer)
    if b in r:
        data, peer = b.recvfrom(65536)
        b.sendto(b"b:" + data, peer)
    if c in r:
        c.send(b"c:" + c.recv(65536))
    if l in r:
        data, peer = l.recvfrom(65536)
        l.sendto(b"l:" + data, peer)
"#;

/// Sends `msg` from `from` to `to` and returns the answer.
fn ask(from: &UdpSocket, to: (&str, u16), msg: &[u8]) -> String {
    from.send_to(msg, to).expect("send to the victim");
    let mut buf = vec![0u8; 65536];
    let (n, who) = from
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("no answer from {to:?} to {msg:?}: {e}"));
    assert_eq!(who.port(), to.1, "answered from the port asked");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn socket(addr: &str) -> UdpSocket {
    let s = UdpSocket::bind(addr).expect("bind a test socket");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s
}

/// A UDP-Lite socket (IPPROTO_UDPLITE) bound to 127.0.0.1, driven through std's UdpSocket.
fn udplite_socket() -> UdpSocket {
    use std::os::fd::FromRawFd;
    // SAFETY: socket(2) takes only integers.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE) };
    assert!(
        raw >= 0,
        "a UDP-Lite socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: raw is a fresh datagram socket this test owns.
    let s = unsafe { UdpSocket::from_raw_fd(raw) };
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of_val(&addr) as libc::socklen_t;
    // SAFETY: addr is a valid sockaddr_in of `len` bytes.
    let r = unsafe { libc::bind(raw, (&addr as *const libc::sockaddr_in).cast(), len) };
    assert_eq!(
        r,
        0,
        "bind the UDP-Lite socket: {}",
        std::io::Error::last_os_error()
    );
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s
}

fn ports(ready: &Path) -> (u16, u16, u16, u16) {
    let text = wait_for("the victim's ports", TIMEOUT, || {
        fs::read_to_string(ready).ok()
    });
    let v: serde_json::Value = serde_json::from_str(&text).expect("ports as JSON");
    let port = |k: &str| v[k].as_u64().expect("a port") as u16;
    (port("a"), port("b"), port("c"), port("l"))
}

/// Every socket answers; returns the victim's account of its sockets.
fn exercise(
    v4: &UdpSocket,
    v6: &UdpSocket,
    peer: &UdpSocket,
    lite: &UdpSocket,
    (a, b, c, l): (u16, u16, u16, u16),
    ctx: &str,
) -> String {
    assert_eq!(ask(lite, ("127.0.0.1", l), b"four"), "l:four", "{ctx}");
    assert_eq!(ask(v4, ("127.0.0.1", a), b"one"), "a:one", "{ctx}");
    assert_eq!(ask(v6, ("::1", b), b"two"), "b:two", "{ctx}");
    assert_eq!(ask(peer, ("127.0.0.1", c), b"three"), "c:three", "{ctx}");
    let links = ask(v4, ("127.0.0.1", a), b"netlink");
    assert!(
        links.starts_with("links="),
        "{ctx}: the route socket answered {links}"
    );
    assert!(
        !links.starts_with("links=0 "),
        "{ctx}: no link reported: {links}"
    );
    ask(v4, ("127.0.0.1", a), b"state")
}

#[test]
fn udp_and_netlink_sockets_come_back_and_answer() {
    setup();
    let work = tempfile::tempdir().unwrap();
    let ready = work.path().join("ready");
    let peer = socket("127.0.0.1:0");
    let (v4, v6) = (socket("127.0.0.1:0"), socket("[::1]:0"));
    let tport = peer.local_addr().unwrap().port().to_string();
    let victim = PythonVictim::start(SERVER, &[ready.as_os_str(), tport.as_ref()]);
    let pid = victim.pid;
    let ports = ports(&ready);
    let lite = udplite_socket();
    let before = exercise(&v4, &v6, &peer, &lite, ports, "before the dump");
    let fds_before: Vec<i32> = fd_table(pid).into_keys().collect();
    // What the comparison after each restore covers.
    let state: serde_json::Value = serde_json::from_str(&before).expect("state as JSON");
    assert_eq!(state["a"][1]["tos"], 16, "{before}");
    assert_eq!(state["a"][1]["pktinfo"], 1, "{before}");
    assert_eq!(state["a"][1]["rcvbuf"], 131072, "{before}");
    assert_eq!(state["b"][1]["v6only"], 1, "{before}");
    assert_eq!(
        state["c"][1][1],
        peer.local_addr().unwrap().port(),
        "{before}"
    );
    assert_eq!(state["c"][2]["broadcast"], 1, "{before}");
    assert_eq!(state["u"][1], true, "{before}");
    assert_ne!(state["n"][1], 0, "{before}");
    assert_eq!(state["l"][1], 20, "UDPLITE_SEND_CSCOV: {before}");
    assert_eq!(state["l"][2], 136, "IPPROTO_UDPLITE: {before}");
    assert_eq!(state["shut"][0], "EPIPE", "shut down for writing: {before}");
    assert_eq!(state["shut"][1], "eof", "shut down for reading: {before}");

    for cycle in 1..=2 {
        let dir = work.path().join(format!("img{cycle}"));
        dump(pid, &dir, false).assert_ok();
        reap_pid(pid, TIMEOUT).expect("the dumped victim is gone");
        let json = show_json(&dir).to_string();
        assert!(
            json.contains("\"Udp\"") && json.contains("\"Netlink\""),
            "cycle {cycle}: the image records no UDP or netlink socket: {json}"
        );
        // Nothing answers while the process is gone (the kernel drops datagrams to a closed
        // port); the restore brings the same ports back.
        restore_detached(&dir, &[]).assert_ok();
        let after = exercise(
            &v4,
            &v6,
            &peer,
            &lite,
            ports,
            &format!("after restore {cycle}"),
        );
        assert_eq!(
            after, before,
            "cycle {cycle}: the sockets' addresses and options"
        );
        let fds_after: Vec<i32> = fd_table(pid).into_keys().collect();
        assert_eq!(fds_after, fds_before, "cycle {cycle}: the fd numbers");
    }
}

const REFUSED: &str = r#"
import json, os, select, socket, sys
ready = sys.argv[1]
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, 253)
raw.bind(("127.0.0.1", 0))
raw.sendto(b"to-myself", ("127.0.0.1", 0))
audit = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 9)  # NETLINK_AUDIT
q = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
q.bind(("127.0.0.1", 0))
q.sendto(b"waiting", q.getsockname())
ctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
ctl.bind(("127.0.0.1", 0))
with open(ready + ".tmp", "w") as f:
    json.dump({"raw": raw.fileno(), "audit": audit.fileno(), "queued": q.fileno(),
               "ctl": ctl.getsockname()[1]}, f)
os.rename(ready + ".tmp", ready)
while True:
    data, peer = ctl.recvfrom(100)
    q.setblocking(False)
    ctl.sendto(q.recv(100), peer)
"#;

#[test]
fn audit_and_queued_sockets_are_refused_and_left_running() {
    setup();
    let work = tempfile::tempdir().unwrap();
    let ready = work.path().join("ready");
    let victim = PythonVictim::start(REFUSED, &[ready.as_os_str()]);
    let pid = victim.pid;
    let text = wait_for("the victim's fds", TIMEOUT, || {
        fs::read_to_string(&ready).ok()
    });
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let fd = |k: &str| v[k].as_u64().unwrap();

    let dir = work.path().join("img");
    let out = dump(pid, &dir, false);
    out.assert_failed()
        .assert_stderr_mentions(&format!(
            "process {pid}: fd {} is a raw IPv4 socket of protocol 253 (inode",
            fd("raw")
        ))
        .assert_stderr_mentions(&format!(
            "process {pid}: fd {} is a netlink socket of protocol NETLINK_AUDIT (9;",
            fd("audit")
        ))
        .assert_stderr_mentions("close it before the dump")
        .assert_stderr_mentions(&format!(
            "process {pid}: fd {} is a UDP/IPv4 socket",
            fd("queued")
        ))
        .assert_stderr_mentions("with datagrams waiting to be read (the next holds 7 bytes");
    assert!(!dir.exists(), "a refused dump left an image");
    assert_eq!(tracer_pid(pid), Some(0), "pid {pid} is still traced");
    assert!(
        !matches!(proc_state(pid), Some('t' | 'T' | 'Z') | None),
        "pid {pid} is not running"
    );
    // The datagram the dump looked at is still there for the program.
    let ctl = socket("127.0.0.1:0");
    let port = v["ctl"].as_u64().unwrap() as u16;
    assert_eq!(ask(&ctl, ("127.0.0.1", port), b"read it"), "waiting");
}

/// Holds a UDP/IPv4 socket with IP options (four NOPs) and a UDP/IPv6 socket with sticky
/// hop-by-hop and destination-options headers, both bound on loopback, and answers "state"
/// with the options as the kernel reports them.
const IP_OPTIONS_VICTIM: &str = r#"
import socket
PAD = b"\x00\x00\x01\x04\x00\x00\x00\x00"
u4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u4.bind(("127.0.0.1", 0))
u4.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, b"\x01\x01\x01\x01")
u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
u6.bind(("::1", 0))
u6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_HOPOPTS, PAD)
u6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_DSTOPTS, PAD)

def state():
    return " ".join(x.hex() for x in [
        u4.getsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, 64),
        u6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_HOPOPTS, 64),
        u6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_DSTOPTS, 64)])

serve(lambda data: state())
"#;

#[test]
fn ip_options_and_ipv6_sticky_headers_of_udp_sockets_come_back() {
    setup();
    let work = tempfile::tempdir().unwrap();
    let v = ControlledVictim::start(IP_OPTIONS_VICTIM, work.path(), &[]);
    let before = v.ask(b"state");
    assert_eq!(
        before, "01010101 0000010400000000 0000010400000000",
        "set as asked"
    );
    v.cycle(work.path(), &before, |image| {
        let json = image.to_string();
        assert!(json.contains("\"Udp\""), "UDP sockets in the image: {json}");
    });
}
