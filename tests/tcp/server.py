# The TCP victim of tests/tcp.rs: an echo server on three listeners (IPv4 127.0.0.1, IPv6 ::1
# with IPV6_V6ONLY, and an IPv6 socket with IPV6_V6ONLY off bound to ::ffff:127.0.0.1, which
# IPv4 clients reach), with options set on each, plus a connection to itself (both ends in the
# process) with unread bytes in both directions.
#
# Control files in CTL (argv[1]):
#   ports           written at start: "<v4 port> <v6 port> <dual port>"
#   state           written at start, and again on state-request: the addresses and options
#   hold            while it exists, nothing is read or accepted ("held" says it was seen)
#   selfcheck-request -> selfcheck: "ok" once the self-connection delivered its unread bytes
#                     and a new round trip in both directions
# A connection whose first byte is "B" gets a blob (bytes i*7 % 251) written without blocking
# until the socket is full; "blob-sent" then holds its length. Everything else is echoed.
import os, select, socket, sys

ctl = sys.argv[1]
T = socket.IPPROTO_TCP
S = socket.SOL_SOCKET
V6 = socket.IPPROTO_IPV6


def put(name, text):
    tmp = os.path.join(ctl, name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, os.path.join(ctl, name))


def listener(family, addr, backlog, opts):
    s = socket.socket(family, socket.SOCK_STREAM)
    for level, name, value in opts:
        s.setsockopt(level, name, value)
    s.bind(addr)
    s.listen(backlog)
    return s


l4 = listener(socket.AF_INET, ("127.0.0.1", 0), 7,
              [(S, socket.SO_REUSEADDR, 1), (S, socket.SO_KEEPALIVE, 1),
               (T, socket.TCP_KEEPIDLE, 33), (T, socket.TCP_KEEPINTVL, 7),
               (T, socket.TCP_KEEPCNT, 4), (T, socket.TCP_NODELAY, 1),
               (S, socket.SO_RCVBUF, 65536), (socket.IPPROTO_IP, socket.IP_TOS, 0x10)])
l6 = listener(socket.AF_INET6, ("::1", 0), 9,
              [(V6, socket.IPV6_V6ONLY, 1), (T, socket.TCP_DEFER_ACCEPT, 1),
               (S, socket.SO_LINGER, b"\x01\x00\x00\x00\x05\x00\x00\x00")])
ld = listener(socket.AF_INET6, ("::ffff:127.0.0.1", 0), 5,
              [(V6, socket.IPV6_V6ONLY, 0), (S, socket.SO_REUSEPORT, 1)])
for l in (l4, l6, ld):
    l.setblocking(False)

# Both ends in the process, each with bytes the other sent and it has not read.
c2 = socket.create_connection(("127.0.0.1", l4.getsockname()[1]))
s2, _ = l4.accept()
s2.setblocking(True)
c2.sendall(b"to-server")
s2.sendall(b"to-client")

OPTS = [("SO_REUSEADDR", S, socket.SO_REUSEADDR), ("SO_REUSEPORT", S, socket.SO_REUSEPORT),
        ("SO_KEEPALIVE", S, socket.SO_KEEPALIVE), ("TCP_KEEPIDLE", T, socket.TCP_KEEPIDLE),
        ("TCP_KEEPINTVL", T, socket.TCP_KEEPINTVL), ("TCP_KEEPCNT", T, socket.TCP_KEEPCNT),
        ("TCP_NODELAY", T, socket.TCP_NODELAY), ("TCP_DEFER_ACCEPT", T, socket.TCP_DEFER_ACCEPT),
        ("IP_TOS", socket.IPPROTO_IP, socket.IP_TOS)]


def describe(name, s):
    out = [name, repr(s.getsockname()), "blocking=%s" % s.getblocking()]
    try:
        out.append("peer=" + repr(s.getpeername()))
    except OSError:
        pass
    for n, level, opt in OPTS:
        out.append("%s=%d" % (n, s.getsockopt(level, opt)))
    out.append("SO_LINGER=" + s.getsockopt(S, socket.SO_LINGER, 8).hex())
    if s.family == socket.AF_INET6:
        out.append("V6ONLY=%d" % s.getsockopt(V6, socket.IPV6_V6ONLY))
    if name == "l4":
        out.append("SO_RCVBUF=%d" % s.getsockopt(S, socket.SO_RCVBUF))
    return " ".join(out)


def state():
    socks = [("l4", l4), ("l6", l6), ("ld", ld), ("c2", c2), ("s2", s2)]
    return "\n".join(describe(n, s) for n, s in socks) + "\n"


put("state", state())
put("ports", "%d %d %d\n" % (l4.getsockname()[1], l6.getsockname()[1], ld.getsockname()[1]))

conns = []
while True:
    held = os.path.exists(os.path.join(ctl, "hold"))
    if held and not os.path.exists(os.path.join(ctl, "held")):
        put("held", "1")
    if os.path.exists(os.path.join(ctl, "state-request")):
        os.unlink(os.path.join(ctl, "state-request"))
        put("state", state())
    if os.path.exists(os.path.join(ctl, "selfcheck-request")):
        os.unlink(os.path.join(ctl, "selfcheck-request"))
        got_s, got_c = s2.recv(100), c2.recv(100)
        c2.sendall(b"ping")
        s2.sendall(b"pong")
        ping, pong = s2.recv(100), c2.recv(100)
        ok = (got_s, got_c, ping, pong) == (b"to-server", b"to-client", b"ping", b"pong")
        put("selfcheck", "ok\n" if ok else "FAIL %r\n" % ((got_s, got_c, ping, pong),))
    watched = [] if held else [l4, l6, ld] + conns
    r, _, _ = select.select(watched, [], [], 0.02)
    for s in r:
        if s in (l4, l6, ld):
            c, _ = s.accept()
            c.setblocking(True)
            conns.append(c)
            continue
        data = s.recv(65536)
        if not data:
            conns.remove(s)
            s.close()
            continue
        if data[:1] == b"B":
            data = data[1:]
            s.setblocking(False)
            sent = 0
            while True:
                chunk = bytes((i * 7 % 251) for i in range(sent, sent + 4096))
                try:
                    sent += s.send(chunk)
                except BlockingIOError:
                    break
            s.setblocking(True)
            put("blob-sent", "%d\n" % sent)
        if data:
            s.sendall(data)
