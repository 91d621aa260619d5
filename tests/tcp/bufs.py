# The full-buffers victim of tests/tcp.rs: a parent and its child, connected over 127.0.0.1
# and over [::1] (the parent accepts, the child connects). On the parent's end the buffers are
# as large as the machine allows (SO_SNDBUF/SO_RCVBUF to 100 MiB, as CRIU's socket-tcpbuf
# test does); the child's grow by themselves. Both ends fill their connection with
# non-blocking writes until nothing more fits, read half of what they received, and fill
# again: every queue holds bytes, in both directions, sent or not, acknowledged or not.
#
# Each direction carries its own endless pattern (byte i is (7 * i + seed) % 251), so the
# receiver checks every byte and the count.
#
# Control files in CTL (argv[1]):
#   ready          "<parent pid> <child pid>" once both ends are full
#   go             written by the test: each end then sends EXTRA more bytes, shuts down for
#                  writing, reads to the end of file, and writes
#   result-<role>-<family>: "sent <n> received <m> bad <offset of the first wrong byte, or -1>
#                  mss <TCP_INFO snd_mss while full> <snd_mss after go>"
import os, select, socket, struct, sys, time

ctl = sys.argv[1]
EXTRA = 4 << 20
FAMILIES = [(socket.AF_INET, "127.0.0.1", "ipv4"), (socket.AF_INET6, "::1", "ipv6")]
SEEDS = {"parent": 1, "child": 2}


def put(name, text):
    tmp = os.path.join(ctl, name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, os.path.join(ctl, name))


def pattern(seed):
    # Long enough for any slice a send or receive needs, starting anywhere in the period.
    one = bytes((7 * i + seed) % 251 for i in range(251))
    return one * ((1 << 20) // 251 + 2)


def snd_mss(s):
    # struct tcp_info: 8 bytes of u8 fields, then u32 rto, ato, snd_mss.
    info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
    return struct.unpack_from("I", info, 16)[0]


class End:
    def __init__(self, sock, role, family):
        self.sock, self.role, self.family = sock, role, family
        self.out = pattern(SEEDS[role])
        self.inp = pattern(SEEDS["child" if role == "parent" else "parent"])
        self.sent = 0
        self.received = 0
        self.bad = -1
        self.limit = None  # how much to send in all (set at go)
        self.shut = False
        self.eof = False
        self.mss_full = 0
        sock.setblocking(False)

    def fill(self):
        """Writes until nothing more fits (or up to the limit); returns whether it wrote."""
        wrote = False
        while self.limit is None or self.sent < self.limit:
            n = 1 << 20 if self.limit is None else min(1 << 20, self.limit - self.sent)
            off = self.sent % 251
            try:
                k = self.sock.send(self.out[off:off + n])
            except BlockingIOError:
                break
            self.sent += k
            wrote = True
        return wrote

    def drain(self, most=None):
        """Reads what is there (at most `most` bytes), checking it."""
        while most is None or most > 0:
            n = 256 << 10 if most is None else min(256 << 10, most)
            try:
                data = self.sock.recv(n)
            except BlockingIOError:
                return
            if not data:
                self.eof = True
                return
            off = self.received % 251
            if self.bad < 0 and data != self.inp[off:off + len(data)]:
                for j, b in enumerate(data):
                    if b != self.inp[off + j]:
                        self.bad = self.received + j
                        break
            self.received += len(data)
            if most is not None:
                most -= len(data)

    def queued(self):
        import fcntl, termios
        return struct.unpack("i", fcntl.ioctl(self.sock, termios.FIONREAD, b"\0" * 4))[0]


def fill_everything(ends):
    # Fill until no end could write any more for a while (what the peer reads meanwhile, or
    # the kernel moves on to it, makes room again).
    idle = 0
    while idle < 10:
        idle = 0 if any([e.fill() for e in ends]) else idle + 1
        time.sleep(0.01)


listeners = []
for fam, host, name in FAMILIES:
    l = socket.socket(fam, socket.SOCK_STREAM)
    l.bind((host, 0))
    l.listen(4)
    listeners.append(l)
r, w = os.pipe()
child = os.fork()
role = "child" if child == 0 else "parent"
ends = []
if child == 0:
    os.close(r)
    for l, (fam, host, name) in zip(listeners, FAMILIES):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.connect(l.getsockname()[:2])
        ends.append(End(s, role, name))
    for l in listeners:
        l.close()
else:
    os.close(w)
    for l, (fam, host, name) in zip(listeners, FAMILIES):
        s, _ = l.accept()
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            s.setsockopt(socket.SOL_SOCKET, opt, 100 << 20)
        ends.append(End(s, role, name))
    for l in listeners:
        l.close()

# Both processes fill at the same time; each then reads half of what it received and fills
# again, until the peer's filling has stopped too (a pipe says when the child is done).
fill_everything(ends)
for e in ends:
    e.drain(e.queued() // 2)
fill_everything(ends)
for e in ends:
    e.mss_full = snd_mss(e.sock)
if child == 0:
    os.write(w, b"x")
    os.close(w)
else:
    os.read(r, 1)
    os.close(r)
    put("ready", "%d %d" % (os.getpid(), child))

while not os.path.exists(os.path.join(ctl, "go")):
    time.sleep(0.01)

for e in ends:
    e.limit = e.sent + EXTRA
while not all(e.eof and e.shut for e in ends):
    want_w = [e.sock for e in ends if not e.shut]
    want_r = [e.sock for e in ends if not e.eof]
    rd, wr, _ = select.select(want_r, want_w, [], 1.0)
    for e in ends:
        if e.sock in wr:
            e.fill()
            if e.sent >= e.limit and not e.shut:
                e.mss_after = snd_mss(e.sock)
                e.sock.shutdown(socket.SHUT_WR)
                e.shut = True
        if e.sock in rd:
            e.drain()
for e in ends:
    put(
        "result-%s-%s" % (e.role, e.family),
        "sent %d received %d bad %d mss %d %d"
        % (e.sent, e.received, e.bad, e.mss_full, e.mss_after),
    )
