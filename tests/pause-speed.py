#!/usr/bin/env python3
"""How long the demo JVM takes to answer after a pause, by the length of the pause.

Starts the demo JVM (tests/java/Demo.java, -Ddemo.live.mib=LIVE: a 1 ms fixed-rate ticker, 4
busy workers, an HTTP server on 127.0.0.1), warms it with 50 requests, then for each PAUSE (in
seconds): stops it with SIGSTOP, waits PAUSE, sends a request on a new connection, continues it
with SIGCONT and times the answer from the SIGCONT. No crest involved: this is what a restore
into the host's clocks (`crest restore --host-clocks`, or CRIU) costs a program with fixed-rate
timers, whose missed periods all run on wake-up; crest's default restore keeps the clocks where
they stood at the dump (src/timens.rs). The JVM is ended by pid.

usage: python3 tests/pause-speed.py [LIVE_MIB (200)] [PAUSE ... (1 30 1 30)]
"""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    live = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    pauses = [float(p) for p in sys.argv[2:]] or [1, 30, 1, 30]
    with tempfile.TemporaryDirectory(prefix="crest-pause-") as work:
        subprocess.run(["javac", "-d", work, os.path.join(ROOT, "tests/java/Demo.java")],
                       check=True)
        port_file = os.path.join(work, "port")
        jvm = subprocess.Popen(
            ["java", f"-Xmx{live * 3 + 256}m", f"-Ddemo.live.mib={live}",
             "-XX:+PerfDisableSharedMem", "-cp", work, "Demo", os.path.join(work, "log"),
             port_file],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while not (os.path.exists(port_file) and os.path.getsize(port_file) > 0):
                if jvm.poll() is not None or time.monotonic() > deadline:
                    sys.exit("the demo JVM did not start")
                time.sleep(0.05)
            port = int(open(port_file).read())
            for _ in range(50):
                ask(port).recv(16)
            for pause in pauses:
                os.kill(jvm.pid, signal.SIGSTOP)
                time.sleep(pause)
                conn = ask(port)
                start = time.monotonic()
                os.kill(jvm.pid, signal.SIGCONT)
                head = conn.recv(16)
                took = time.monotonic() - start
                conn.close()
                print(f"pause {pause:6.1f} s -> first answer {1000 * took:6.1f} ms ({head[:12]!r})",
                      flush=True)
                time.sleep(2)
        finally:
            jvm.kill()
            jvm.wait()


def ask(port):
    """A new connection with a request sent (the answer is the caller's to read)."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn.sendall(b"GET /hello HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
    return conn


if __name__ == "__main__":
    main()
