# The closing-states victim of tests/tcp.rs: one connection from the test per TCP state a
# connection passes through while it closes, for each of IPv4 (127.0.0.1), IPv6 (::1) and an
# IPv4-mapped address of a dual-stack socket. The test is the peer, outside the tree.
#
# Control files in CTL (argv[1]):
#   ports        written at start: "<v4 port> <v6 port> <mapped port>"
#   filled-F     the "closing" connection of family F filled the test's window and shut down
#                (the test then sends its FIN, which makes it CLOSING)
#   state        once every connection is in its state, and again on state-request: one line
#                per connection: "F KIND state=S unread=N unacked=N local=A peer=A"
#   sent         one line per connection that filled the test's window: "F KIND <bytes>"
#   go           the test asks for the rest: each connection does what a program does next
#   result       one line per connection, "F KIND ok" or "F KIND FAIL <what>"
#
# Per connection (KIND, the first byte the test sends is its index in KINDS):
#   close_wait  the test sent "cw-data" and shut down; next: read it and end of file, send
#               "cw-reply", shut down
#   fin_wait2   this end sent "fw2" and shut down, the test read it; next: read the test's
#               "fw2-late" and end of file
#   fin_wait1   this end filled the test's window and shut down; next: end of file once the
#               test has read everything and shut down
#   last_ack    the test sent "la" and shut down, then this end filled its window and shut
#               down; next: read "la" and end of file
#   closing     this end filled the test's window and shut down, then the test shut down;
#               next: end of file
#   closed      the test sent "cl-data" and shut down, this end shut down too; next: read
#               "cl-data" and end of file, and a write fails with EPIPE
import errno, fcntl, os, socket, struct, sys, termios, time

ctl = sys.argv[1]
KINDS = ["close_wait", "fin_wait2", "fin_wait1", "last_ack", "closing", "closed"]
STATE_NAMES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
               6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN",
               11: "CLOSING"}
WANT = {"close_wait": "CLOSE_WAIT", "fin_wait2": "FIN_WAIT2", "fin_wait1": "FIN_WAIT1",
        "last_ack": "LAST_ACK", "closing": "CLOSING", "closed": "CLOSE"}
SIOCOUTQ = termios.TIOCOUTQ
SO_PEERNAME = 28  # Linux; python has no name for it


def put(name, text):
    tmp = os.path.join(ctl, name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, os.path.join(ctl, name))


def wait_file(name):
    while not os.path.exists(os.path.join(ctl, name)):
        time.sleep(0.01)


def state(s):
    return STATE_NAMES.get(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0], "?")


def ioctl_int(s, req):
    return struct.unpack("i", fcntl.ioctl(s.fileno(), req, b"\0\0\0\0"))[0]


def wait_state(s, want):
    while state(s) != want:
        time.sleep(0.005)


def pattern(n):
    return bytes((i * 7) % 251 for i in range(n))


def fill(s):
    # Writes the pattern without blocking until the socket is full.
    s.setblocking(False)
    data = pattern(1 << 22)
    sent = 0
    while True:
        try:
            n = s.send(data[sent:sent + 65536])
        except BlockingIOError:
            break
        sent += n
    s.setblocking(True)
    return sent


fams = [("v4", socket.AF_INET, "127.0.0.1"), ("v6", socket.AF_INET6, "::1"),
        ("mapped", socket.AF_INET6, "::ffff:127.0.0.1")]
listeners = []
for name, family, addr in fams:
    l = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        l.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if addr == "::1" else 0)
    l.bind((addr, 0))
    l.listen(16)
    listeners.append((name, l))
put("ports", " ".join(str(l.getsockname()[1]) for _, l in listeners))

conns = {}
sent = {}
for name, l in listeners:
    for _ in KINDS:
        s, _ = l.accept()
        kind = KINDS[s.recv(1)[0]]
        conns[(name, kind)] = s

for (name, kind), s in conns.items():
    if kind == "close_wait":
        wait_state(s, "CLOSE_WAIT")
    elif kind == "fin_wait2":
        s.sendall(b"fw2")
        s.shutdown(socket.SHUT_WR)
    elif kind == "fin_wait1":
        sent[(name, kind)] = fill(s)
        s.shutdown(socket.SHUT_WR)
    elif kind == "last_ack":
        wait_state(s, "CLOSE_WAIT")
        sent[(name, kind)] = fill(s)
        s.shutdown(socket.SHUT_WR)
    elif kind == "closing":
        sent[(name, kind)] = fill(s)
        s.shutdown(socket.SHUT_WR)
        put("filled-" + name, "")
    elif kind == "closed":
        wait_state(s, "CLOSE_WAIT")
        s.shutdown(socket.SHUT_WR)
for (name, kind), s in conns.items():
    wait_state(s, WANT[kind])
put("sent", "".join("%s %s %d\n" % (n, k, v) for (n, k), v in sorted(sent.items())))


def describe():
    out = []
    for (name, kind), s in sorted(conns.items()):
        peer = s.getsockopt(socket.SOL_SOCKET, SO_PEERNAME,
                            28 if s.family == socket.AF_INET6 else 16)
        out.append("%s %s state=%s unread=%d unacked=%d local=%r peer=%s\n" % (
            name, kind, state(s), ioctl_int(s, termios.FIONREAD), ioctl_int(s, SIOCOUTQ),
            s.getsockname(), peer.hex()))
    return "".join(out)


put("state", describe())
while not os.path.exists(os.path.join(ctl, "go")):
    if os.path.exists(os.path.join(ctl, "state-request")):
        os.unlink(os.path.join(ctl, "state-request"))
        put("state", describe())
    time.sleep(0.01)


def read_all(s):
    s.settimeout(30)
    data = b""
    while True:
        b = s.recv(65536)
        if not b:
            return data
        data += b


def check(name, kind, s):
    if kind == "close_wait":
        got = read_all(s)
        if got != b"cw-data":
            return "read %r" % got
        s.sendall(b"cw-reply")
        s.shutdown(socket.SHUT_WR)
    elif kind == "fin_wait2":
        got = read_all(s)
        if got != b"fw2-late":
            return "read %r" % got
    elif kind in ("fin_wait1", "closing"):
        got = read_all(s)
        if got != b"":
            return "read %r" % got
    elif kind == "last_ack":
        got = read_all(s)
        if got != b"la":
            return "read %r" % got
    elif kind == "closed":
        got = read_all(s)
        if got != b"cl-data":
            return "read %r" % got
        try:
            s.send(b"x", socket.MSG_NOSIGNAL)
            return "a write succeeded"
        except OSError as e:
            if e.errno != errno.EPIPE:
                return "write: %s" % e
    return None


order = ["close_wait", "closed", "fin_wait2", "last_ack", "closing", "fin_wait1"]
result = []
for name, _ in listeners:
    for kind in order:
        try:
            err = check(name, kind, conns[(name, kind)])
        except OSError as e:
            err = "%s" % e
        result.append("%s %s %s\n" % (name, kind, "ok" if err is None else "FAIL " + err))
put("result", "".join(result))
time.sleep(3600)
