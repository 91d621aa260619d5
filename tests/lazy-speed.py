#!/usr/bin/env python3
"""Restore -> first sign of life, --pages copy vs map vs lazy (crest restore, attached).

For each workload and mode, RUNS times: start a fresh process, let it settle, dump it (the
dump kills it), start `crest restore -D IMG --pages MODE --stats-json FILE` and time from
the moment crest is started to the first sign of life of the restored process:
  memcheck  the ~80 MiB test victim (tests/victims/memcheck.c): a new line in its log
  demo      the demo JVM (tests/java/Demo.java, -Ddemo.live.mib=LIVE): the first HTTP 200 on
            /hello on a new connection (polled, no fixed sleep)
With --lazy-pages it also reports when every page was in (from the statistics file, counted
from the start of the restore). The restored process is then ended by pid, and crest with it.
warm: the image files stay in the page cache (each image was just written); cold: they are
evicted first (posix_fadvise POSIX_FADV_DONTNEED on every file of the image).
Modes lazy-prefetch and map-prefetch first do one recording restore of the image
(--record-working-set, 1000 ms, during which the first sign of life is awaited as in a measured
run), end it, then time a restore that prefetches the recorded working set; lazy and map are
timed with --no-prefetch.

usage: python3 tests/lazy-speed.py [RUNS (3)] [LIVE_MIB (200)]
                                   [MODES (copy,map,lazy; also lazy-prefetch,map-prefetch)]
                                   [CACHES (warm,cold)]
Needs root, the release build (cargo build --release), a memcheck victim built by the tests
(cargo test --test lazy) and a JDK. Ends only the processes it started, by pid.
"""
import glob
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
crest = os.path.join(root, "target/release/crest")
runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
live = int(sys.argv[2]) if len(sys.argv) > 2 else 200
modes = (sys.argv[3] if len(sys.argv) > 3 else "copy,map,lazy").split(",")
caches = (sys.argv[4] if len(sys.argv) > 4 else "warm,cold").split(",")
work = tempfile.mkdtemp(prefix="crest-lazy-speed.")
now = time.monotonic


def ms(t0):
    return (now() - t0) * 1000


def wait_until(cond, what, timeout=120):
    deadline = now() + timeout
    while True:
        v = cond()
        if v:
            return v
        if now() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")


def start_memcheck(tag):
    binary = sorted(glob.glob(os.path.join(root, "target/tmp/victims/memcheck-*/memcheck")))[-1]
    ctl = f"{work}/{tag}.ctl"
    os.mkdir(ctl)
    log = f"{work}/{tag}.log"
    p = subprocess.Popen([binary, ctl, log], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True, close_fds=True)
    wait_until(lambda: os.path.exists(log) and os.path.getsize(log) > 200, "memcheck to log")
    return p, log


def compile_demo():
    classes = f"{work}/classes"
    subprocess.run(["javac", "-d", classes, os.path.join(root, "tests/java/Demo.java")],
                   check=True)
    return classes


def get_200(port):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=0.5)
        c.request("GET", "/hello")
        r = c.getresponse()
        r.read()
        c.close()
        return r.status == 200
    except OSError:
        return False


def start_demo(tag, classes):
    port_file = f"{work}/{tag}.port"
    log = f"{work}/{tag}.jlog"
    heap = max(256, live * 3)
    p = subprocess.Popen(["java", f"-Xmx{heap}m", f"-Ddemo.live.mib={live}",
                          "-XX:+PerfDisableSharedMem", "-cp", classes, "Demo", log, port_file],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    wait_until(lambda: os.path.exists(port_file) and os.path.getsize(port_file) > 0, "the JVM")
    port = int(open(port_file).read())
    wait_until(lambda: get_200(port), "the JVM's first 200")
    wait_until(lambda: os.path.exists(log) and sum(1 for _ in open(log)) > 20, "the JVM to settle")
    return p, port


def evict(img):
    """Drops the image's files from the page cache (they were fsync'ed by the dump)."""
    for name in os.listdir(img):
        fd = os.open(os.path.join(img, name), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def one_run(workload, mode, cache, tag, classes):
    if workload == "memcheck":
        p, log = start_memcheck(tag)
    else:
        p, port = start_demo(tag, classes)
    img = f"{work}/{tag}.img"
    subprocess.run([crest, "dump", "-t", str(p.pid), "-D", img], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    p.wait()
    stats = f"{work}/{tag}.stats.json"
    pages = mode.split("-")[0]
    args = [crest, "restore", "-D", img, "--stats-json", stats, "--pages", pages]
    if pages != "copy" and not mode.endswith("-prefetch"):
        args.append("--no-prefetch")

    def sign_of_life():
        if workload == "memcheck":
            size = os.path.getsize(log)
            return lambda: os.path.getsize(log) > size
        return lambda: get_200(port)

    err = open(f"{work}/{tag}.restore.err", "wb")
    if mode.endswith("-prefetch"):
        # The recording restore: the program's first moments, its first response included.
        ws = os.path.join(img, "working-set.img")
        sign = sign_of_life()
        r = subprocess.Popen([crest, "restore", "-D", img, "--pages", pages,
                              "--record-working-set"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        wait_until(sign, "the first sign of life of the recording restore")
        wait_until(lambda: os.path.exists(ws), "the working set")
        os.kill(p.pid, signal.SIGKILL)
        r.wait(timeout=60)
    if cache == "cold":
        evict(img)
    sign = sign_of_life()
    t0 = now()
    r = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    wait_until(sign, "the first sign of life")
    first = ms(t0)
    wait_until(lambda: os.path.exists(stats) and open(stats).read().endswith("\n"),
               "the statistics")
    s = json.load(open(stats))
    all_in = s["lazy"]["all_in_us"] / 1000 if "lazy" in s else None
    pf = s["lazy"].get("prefetch") if "lazy" in s else s.get("prefetch")
    if pf and pf.get("pages"):
        print(f"  {tag}: prefetched {pf['pages']} page(s) in {pf['us'] / 1000:.1f} ms",
              flush=True)
    os.kill(p.pid, signal.SIGKILL)
    r.wait(timeout=60)
    shutil.rmtree(img)
    return first, s["total_us"] / 1000, all_in


def main():
    classes = compile_demo()
    rows = []
    for workload in ("memcheck", "demo"):
        for cache in caches:
            for mode in modes:
                res = [one_run(workload, mode, cache, f"{workload}-{mode}-{cache}-{i}", classes)
                       for i in range(runs)]
                rows.append((workload, f"{mode}, {cache}", res))
                print(f"{workload} {mode} {cache}: " + ", ".join(
                    f"first sign {f:.1f} ms (crest says ran after {t:.1f} ms"
                    + (f", all pages in after {a:.1f} ms" if a is not None else "") + ")"
                    for f, t, a in res), flush=True)
    print()
    print(f"| workload | mode | restore -> first sign of life, median (min-max) ms | "
          f"crest: tree running, median ms | all pages in, median ms |")
    print("|---|---|---|---|---|")
    for workload, mode, res in rows:
        f = [x[0] for x in res]
        t = [x[1] for x in res]
        a = [x[2] for x in res if x[2] is not None]
        print(f"| {workload} | {mode} | {statistics.median(f):.1f} ({min(f):.1f}-{max(f):.1f}) | "
              f"{statistics.median(t):.1f} | "
              f"{statistics.median(a):.1f} |" if a else
              f"| {workload} | {mode} | {statistics.median(f):.1f} ({min(f):.1f}-{max(f):.1f}) | "
              f"{statistics.median(t):.1f} | - |")


try:
    main()
finally:
    shutil.rmtree(work, ignore_errors=True)
