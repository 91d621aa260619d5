//! AF_PACKET sockets across dump and restore (issue #10, item 2). The victim is a python3
//! program holding, on the loopback interface only:
//! - a raw packet socket bound to lo for IPv4, with TPACKET_V2, PACKET_AUXDATA, a receive
//!   ring and a promiscuous membership on lo (which sets lo's IFF_PROMISC while it exists);
//! - a datagram packet socket bound to lo for IPv4, with PACKET_RESERVE, PACKET_ORIGDEV and
//!   fanout group 77, which the victim reads to find a datagram the test sends to lo;
//! - an unbound raw packet socket of protocol 0 (it receives nothing).
//!
//! It reports each socket's name and options, whether the ring is there (it maps it and
//! unmaps it at once) and lo's promiscuous flag; after a restore and after a dump with -R
//! everything reports the same, and the datagram socket still captures new traffic.

mod common;

use std::net::UdpSocket;

use common::*;

const VICTIM: &str = r#"
import json, mmap, os, socket, struct, sys, time
SOL_PACKET, ETH_P_IP = 263, 0x0800
lo = socket.if_nametoindex("lo")
a = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
a.setsockopt(SOL_PACKET, 10, 1)  # PACKET_VERSION: TPACKET_V2
a.setsockopt(SOL_PACKET, 8, 1)  # PACKET_AUXDATA
a.bind(("lo", ETH_P_IP))
a.setsockopt(SOL_PACKET, 1, struct.pack("iHH8s", lo, 1, 0, b""))  # promiscuous membership
a.setsockopt(SOL_PACKET, 5, struct.pack("IIII", 4096, 4, 2048, 8))  # PACKET_RX_RING
b = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
b.setsockopt(SOL_PACKET, 12, 64)  # PACKET_RESERVE
b.setsockopt(SOL_PACKET, 9, 1)  # PACKET_ORIGDEV
b.bind(("lo", ETH_P_IP))
b.setsockopt(SOL_PACKET, 18, 77)  # PACKET_FANOUT: group 77, by hash
c = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)

def ring():
    try:
        m = mmap.mmap(a.fileno(), 4096 * 4)
        m.close()
        return "mapped"
    except OSError as e:
        return str(e)

def state():
    flags = int(open("/sys/class/net/lo/flags").read(), 16)
    return {
        "a": [a.getsockname()[:2], a.getsockopt(SOL_PACKET, 10), a.getsockopt(SOL_PACKET, 8), ring()],
        "b": [b.getsockname()[:2], b.getsockopt(SOL_PACKET, 12), b.getsockopt(SOL_PACKET, 9),
              b.getsockopt(SOL_PACKET, 18)],
        "c": [c.getsockname()[:2]],
        "promisc": flags & 0x100 != 0,
        "fds": [s.fileno() for s in (a, b, c, ctl)],
    }

def seen(marker):
    b.setblocking(False)
    end = time.monotonic() + 10
    while time.monotonic() < end:
        try:
            if marker in b.recv(65536):
                return "seen"
        except BlockingIOError:
            time.sleep(0.005)
    return "not seen"

serve(lambda data: json.dumps(state()) if data == b"state" else seen(data))
"#;

/// A datagram with a fresh marker goes over lo; the victim's datagram packet socket sees it.
fn captures(v: &ControlledVictim, round: &str) {
    let marker = format!("crest-packet-marker-{round}-{}", std::process::id());
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    // Port 9 (discard): nobody needs to listen, the packet socket sees it on lo anyway.
    probe.send_to(marker.as_bytes(), ("127.0.0.1", 9)).unwrap();
    assert_eq!(v.ask(marker.as_bytes()), "seen", "{round}");
}

#[test]
fn packet_sockets_keep_interface_options_ring_membership_and_fanout() {
    setup();
    let work = tempfile::tempdir().unwrap();
    let v = ControlledVictim::start(VICTIM, work.path(), &[]);
    let pid = v.pid();

    let before = v.ask(b"state");
    let state: serde_json::Value = serde_json::from_str(&before).unwrap();
    assert_eq!(state["a"][0], serde_json::json!(["lo", 0x0800]), "{before}");
    assert_eq!(state["a"][1], 1, "TPACKET_V2: {before}");
    assert_eq!(state["a"][3], "mapped", "the receive ring: {before}");
    assert_eq!(state["b"][1], 64, "PACKET_RESERVE: {before}");
    assert_eq!(state["b"][3], 77, "fanout group 77: {before}");
    assert_eq!(state["promisc"], true, "lo promiscuous: {before}");
    captures(&v, "before the dump");

    let dir = work.path().join("img");
    dump(pid, &dir, false).assert_ok();
    reap_pid(pid, TIMEOUT).expect("the dumped victim is gone");
    let json = show_json(&dir).to_string();
    assert!(
        json.contains("\"Packet\""),
        "no packet socket in the image: {json}"
    );
    restore_detached(&dir, &[]).assert_ok();
    assert_eq!(v.ask(b"state"), before, "after the restore");
    captures(&v, "after the restore");

    let dir = work.path().join("img-R");
    dump(pid, &dir, true).assert_ok();
    assert_eq!(v.ask(b"state"), before, "after a dump with -R");
    captures(&v, "after a dump with -R");
}
