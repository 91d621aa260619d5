# The many-connections victim of tests/tcp.rs: N TCP connections from the process to its own
# listener on 127.0.0.1, so 2N established sockets (both ends in the tree), each side with a
# few unread bytes. It waits with poll(2) (select(2) stops at fd 1024).
#
# Control files in CTL (argv[1]); N is argv[2]:
#   ready            written once every connection is up: "<N>"
#   check-request -> check: "ok <N>" once every connection delivered its unread bytes and a new
#                    round trip in both directions; "FAIL <what>" otherwise
import os, resource, select, socket, sys, time

ctl, n = sys.argv[1], int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
need = 2 * n + 64
if soft < need:
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))


def put(name, text):
    tmp = os.path.join(ctl, name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, os.path.join(ctl, name))


listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.bind(("127.0.0.1", 0))
listener.listen(128)
pairs = []
for i in range(n):
    c = socket.create_connection(listener.getsockname())
    s, _ = listener.accept()
    c.sendall(b"c%05d" % i)
    s.sendall(b"s%05d" % i)
    pairs.append((c, s))
put("ready", "%d" % n)


def recv_exact(sock, size):
    data = b""
    while len(data) < size:
        part = sock.recv(size - len(data))
        if not part:
            raise EOFError("connection closed")
        data += part
    return data


def check():
    for i, (c, s) in enumerate(pairs):
        if recv_exact(s, 6) != b"c%05d" % i or recv_exact(c, 6) != b"s%05d" % i:
            return "FAIL unread bytes of connection %d" % i
        c.sendall(b"ping")
        if recv_exact(s, 4) != b"ping":
            return "FAIL round trip of connection %d" % i
        s.sendall(b"pong")
        if recv_exact(c, 4) != b"pong":
            return "FAIL round trip of connection %d" % i
    return "ok %d" % n


poller = select.poll()
while True:
    if os.path.exists(os.path.join(ctl, "check-request")):
        os.unlink(os.path.join(ctl, "check-request"))
        try:
            put("check", check())
        except Exception as e:
            put("check", "FAIL %r" % e)
    poller.poll(5)
