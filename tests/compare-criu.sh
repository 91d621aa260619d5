#!/usr/bin/env bash
# crest beside CRIU: restore -> first HTTP 200 of a JVM HTTP server with a few hundred MiB live.
#
# Builds crest (release), compiles the demo application (tests/java/Demo.java) and starts it with
# LIVE_MIB of live data (-Ddemo.live.mib) and a heap that holds it. For each run and each tool
# (crest, crest --no-gc-hint, CRIU) it starts a fresh JVM (timed: cold start -> first HTTP 200
# on /hello), opens a keep-alive HTTP connection to it, dumps it (the dump kills it), restores it
# detached and times restore start -> first HTTP 200 on a new connection (polled by connecting
# again and again, no fixed sleep), asks again on the kept connection, asks the JVM to re-check
# its live data (/check must say ok), then ends the restored JVM by pid. One JVM start before the
# runs warms the page cache (the JDK's files); the images are read back from the page cache.
# At the end it prints a table: per tool the image size, the dump time, the restore time and
# restore -> first HTTP 200 (median, min, max over the runs), the ratio crest/CRIU, and the cold
# start -> first HTTP 200 of the same JVM as the baseline.
#
# The tools run as they would for a JVM started from a shell in a session of its own (no
# terminal): crest dump -t PID -D DIR / crest restore -D DIR -d, and
# criu dump -t PID -D DIR --tcp-established / criu restore -D DIR --tcp-established -d
# (the kept connection needs --tcp-established). CRIU_DUMP_OPTS and CRIU_RESTORE_OPTS add
# options to CRIU's (e.g. --file-locks); JAVA_OPTS adds options to the JVM's; TOOLS picks the
# tools (default "crest crest-no-gc-hint criu").
#
# A run that fails is reported and left out of the table, and the script then exits with 1. CRIU's
# restore fails when another JVM started between its dump and its restore: a starting HotSpot
# deletes the /tmp/hsperfdata_<user>/<pid> files of pids that are not running, and CRIU needs
# the file the dumped JVM mapped (crest stores its content). JAVA_OPTS=-XX:+PerfDisableSharedMem
# avoids that file.
#
# Needs root, a JDK (JAVA_HOME or the default java/javac) and a CRIU binary that works on this
# kernel: CRIU=/path/to/criu. Without one (or when `criu check` fails) it says so and skips.
# Ends only the processes it started or restored, by pid, and leaves none behind.
#
# usage: CRIU=/path/to/criu bash tests/compare-criu.sh [RUNS (3)] [LIVE_MIB (200)]
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
JAVA_BIN=${JAVA_HOME:+$JAVA_HOME/bin/}
RUNS=${1:-3}
LIVE=${2:-200}
TOOLS=${TOOLS:-crest crest-no-gc-hint criu}

case "$RUNS$LIVE" in
    *[!0-9]* | '') echo "usage: CRIU=/path/to/criu bash $0 [RUNS (3)] [LIVE_MIB (200)]" >&2; exit 2 ;;
esac
if [ "$RUNS" -lt 1 ] || [ "$LIVE" -lt 1 ]; then
    echo "RUNS and LIVE_MIB must be at least 1" >&2
    exit 2
fi
for tool in $TOOLS; do
    case "$tool" in
        crest | crest-no-gc-hint | criu) ;;
        *) echo "unknown tool in TOOLS: $tool (crest, crest-no-gc-hint, criu)" >&2; exit 2 ;;
    esac
done

skip() {
    echo "compare-criu: SKIPPED: $*"
    exit 0
}
if [ -z "${CRIU:-}" ]; then
    skip "no CRIU binary given; run it as CRIU=/path/to/criu bash $0 (CRIU 4.2 or later: older ones do not work on recent kernels)"
fi
if [ ! -x "$CRIU" ]; then
    skip "CRIU=$CRIU is not an executable file"
fi
if [ "$(id -u)" != 0 ]; then
    skip "CRIU needs root (and so does this comparison)"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/crest-compare-criu.XXXXXX")
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT

if ! "$CRIU" check >"$WORK/criu-check.txt" 2>&1; then
    sed 's/^/  criu check: /' "$WORK/criu-check.txt" | tail -n 20
    skip "$CRIU check says CRIU does not work here"
fi
echo "== $("$CRIU" --version | head -n 1 | tr -s ' \t' ' '): criu check says: $(tail -n 1 "$WORK/criu-check.txt")"

# shellcheck source=tests/demo-common.sh
source "$ROOT/tests/demo-common.sh"
build_crest

echo "== compiling the demo application ($("${JAVA_BIN}javac" -version 2>&1))"
mkdir "$WORK/classes"
"${JAVA_BIN}javac" -d "$WORK/classes" tests/java/Demo.java

# The live data is in 1 MiB arrays, which G1 keeps as humongous objects in two regions each: the
# heap holds three times the live data and some room for the rest.
HEAP_MIB=$((LIVE * 3 + 256))

cat >"$WORK/compare.py" <<'PY'
"""Runs the comparison; every process it starts or restores is ended by pid before it exits."""
import ctypes
import http.client
import os
import pwd
import shutil
import signal
import statistics
import subprocess
import sys
import time

crest, criu, java, classes, work, runs, live, heap, tools = sys.argv[1:10]
runs, live = int(runs), int(live)
tools = tools.split()
criu_dump_opts = os.environ.get("CRIU_DUMP_OPTS", "").split()
criu_restore_opts = os.environ.get("CRIU_RESTORE_OPTS", "").split()
java_opts = os.environ.get("JAVA_OPTS", "").split()
perfdata_dir = f"/tmp/hsperfdata_{pwd.getpwuid(os.geteuid()).pw_name}"

# A restored JVM's parent (crest or criu) exits once it runs: as a subreaper this script gets it
# as a child, so it can reap it once it has ended it.
PR_SET_CHILD_SUBREAPER = 36
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
    sys.exit("prctl(PR_SET_CHILD_SUBREAPER) failed")

live_pids = set()  # processes of this run still to end


class Failure(Exception):
    pass


def now():
    return time.monotonic_ns()


def ms_since(t0):
    return (now() - t0) / 1e6


def end(pid):
    """Ends one process of the run by pid and waits until it is gone."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:  # not (or no longer) our child: wait until it is gone
        deadline = time.monotonic() + 30
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.01)
    live_pids.discard(pid)
    for leftover in (f"{perfdata_dir}/{pid}", f"/tmp/.java_pid{pid}"):
        try:
            os.unlink(leftover)
        except FileNotFoundError:
            pass


def connect(port):
    """An HTTP connection to the demo; the connect itself may take 200 ms before it is retried."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=0.2)
    conn.connect()
    conn.sock.settimeout(30)
    conn.auto_open = 0  # the kept connection must never be replaced silently by a new one
    return conn


def get(conn, path):
    conn.request("GET", path)
    resp = conn.getresponse()
    return resp.status, resp.read().decode()


def get_once(port, path):
    conn = connect(port)
    try:
        return get(conn, path)
    finally:
        conn.close()


def wait_200(port, what, pid):
    """Polls GET /hello on new connections until one answers 200; returns the answer."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            status, body = get_once(port, "/hello")
            if status == 200:
                return body
        except (OSError, http.client.HTTPException):
            pass
        if not os.path.exists(f"/proc/{pid}"):
            raise Failure(f"{what}: pid {pid} is gone before answering HTTP")
        time.sleep(0.0005)
    raise Failure(f"{what}: no HTTP 200 from port {port} within 120 s")


def drop_criu_locks(ports):
    """Removes the iptables rules CRIU's dump added for the kept connection (CRIU's mark 0xc114
    and both its ports): a failed CRIU restore leaves them in place."""
    for tool in ("iptables", "ip6tables"):
        listed = subprocess.run([tool, "-S"], capture_output=True, text=True)
        for rule in listed.stdout.splitlines():
            words = rule.split()
            if (words[:1] == ["-A"] and "0xc114" in words
                    and all(str(p) in words for p in ports)):
                subprocess.run([tool, "-D"] + words[1:], check=False)
                print(f"removed CRIU's network lock rule: {tool} {rule}", flush=True)


def image_bytes(path):
    total = 0
    for top, _, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(top, name)).st_size
    return total


def tail(path, lines=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except FileNotFoundError:
        return "(no log)\n"


def start_jvm(tag):
    """Starts a fresh demo JVM in a session of its own; returns (process, port, cold start ms)."""
    port_file = f"{work}/{tag}.port"
    log = f"{work}/{tag}.log"
    with open(f"{work}/{tag}.stderr", "wb") as err:
        t0 = now()
        proc = subprocess.Popen(
            [java, f"-Xmx{heap}m", f"-Ddemo.live.mib={live}"] + java_opts
            + ["-cp", classes, "Demo", log, port_file],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            start_new_session=True, close_fds=True)
    live_pids.add(proc.pid)
    deadline = time.monotonic() + 120
    while not (os.path.exists(port_file) and os.path.getsize(port_file) > 0):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise Failure(f"the JVM did not start:\n{tail(f'{work}/{tag}.stderr')}")
        time.sleep(0.0005)
    port = int(open(port_file).read())
    wait_200(port, "cold start", proc.pid)
    cold = ms_since(t0)
    # Let it settle as the demo does: the ticker, the pool and a few log lines.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if os.path.exists(log) and sum(1 for _ in open(log)) > 20:
            break
        time.sleep(0.01)
    return proc, port, cold


def commands(tool, pid, img, pidfile, tag):
    if tool in ("crest", "crest-no-gc-hint"):
        extra = ["--no-gc-hint"] if tool == "crest-no-gc-hint" else []
        return ([crest, "dump", "-t", str(pid), "-D", img] + extra,
                [crest, "restore", "-D", img, "-d", "--pidfile", pidfile])
    os.mkdir(img)
    return ([criu, "dump", "-t", str(pid), "-D", img, "--tcp-established",
             "-o", f"{work}/{tag}.dump.log"] + criu_dump_opts,
            [criu, "restore", "-D", img, "--tcp-established", "-d", "--pidfile", pidfile,
             "-o", f"{work}/{tag}.restore.log"] + criu_restore_opts)


def run_once(tool, run):
    tag = f"{tool}-{run}"
    img = f"{work}/{tag}.img"
    pidfile = f"{work}/{tag}.pid"
    proc, port, cold = start_jvm(tag)
    pid = proc.pid
    kept = connect(port)
    kept_port = kept.sock.getsockname()[1]
    restored_ok = False
    try:
        status, before = get(kept, "/hello")
        if status != 200:
            raise Failure(f"{tag}: the kept connection got {status} before the dump")
        kept_name = kept.sock.getsockname()
        with open(f"/proc/{pid}/maps") as maps:
            mapped_perfdata = any(f"{perfdata_dir}/{pid}" in line for line in maps)
        dump_cmd, restore_cmd = commands(tool, pid, img, pidfile, tag)
        with open(f"{work}/{tag}.dump.err", "wb") as err:
            t0 = now()
            r = subprocess.run(dump_cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
            dump_ms = ms_since(t0)
        if r.returncode != 0:
            raise Failure(f"{tag}: {' '.join(dump_cmd)} failed (exit {r.returncode}):\n"
                          f"{tail(f'{work}/{tag}.dump.err')}{tail(f'{work}/{tag}.dump.log')}")
        try:
            proc.wait(timeout=30)  # the dump killed it: reap it so that its pid is free again
        except subprocess.TimeoutExpired:
            raise Failure(f"{tag}: pid {pid} still runs after the dump")
        live_pids.discard(pid)
        size = image_bytes(img)
        with open(f"{work}/{tag}.restore.err", "wb") as err:
            t0 = now()
            r = subprocess.run(restore_cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
            restore_ms = ms_since(t0)
            if os.path.exists(pidfile) and os.path.getsize(pidfile) > 0:
                live_pids.add(int(open(pidfile).read()))
            if r.returncode != 0:
                why = ""
                perfdata = f"{perfdata_dir}/{pid}"
                if tool == "criu" and mapped_perfdata and not os.path.exists(perfdata):
                    why = (f"(the JVM's {perfdata}, which it mapped, was deleted between the dump"
                           " and the restore, most likely by another JVM starting meanwhile (it"
                           " removes the files of pids that are not running); CRIU needs it)\n")
                raise Failure(f"{tag}: {' '.join(restore_cmd)} failed (exit {r.returncode}):\n"
                              f"{why}{tail(f'{work}/{tag}.restore.err')}"
                              f"{tail(f'{work}/{tag}.restore.log')}")
            restored = int(open(pidfile).read())
            wait_200(port, f"{tag} restore", restored)
            http_ms = ms_since(t0)
        if restored != pid:
            raise Failure(f"{tag}: restored as pid {restored}, not {pid}")
        status, after = get(kept, "/hello")
        if status != 200 or kept.sock.getsockname() != kept_name:
            raise Failure(f"{tag}: the kept connection got {status} {after!r} after the restore")
        status, check = get_once(port, "/check")
        if status != 200 or not check.startswith("ok"):
            raise Failure(f"{tag}: /check after the restore answered {status} {check!r}")
        restored_ok = True
        print(f"{tag}: cold start {cold:.0f} ms, dump {dump_ms:.0f} ms, image "
              f"{size / 1048576:.1f} MiB, restore {restore_ms:.0f} ms, first 200 {http_ms:.0f} ms;"
              f" kept connection {before!r} -> {after!r}; /check {check!r}", flush=True)
        return {"cold": cold, "dump": dump_ms, "size": size, "restore": restore_ms,
                "http": http_ms}
    finally:
        kept.close()
        for p in list(live_pids):
            end(p)
        if tool == "criu" and not restored_ok:
            drop_criu_locks((port, kept_port))
        shutil.rmtree(img, ignore_errors=True)


def spread(values):
    return (f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})")


def main():
    proc, _, cold = start_jvm("warmup")  # warms the page cache with the JDK's files
    end(proc.pid)
    print(f"warm-up start (not counted): first HTTP 200 after {cold:.0f} ms", flush=True)
    results = {tool: [] for tool in tools}
    failures = []
    for run in range(1, runs + 1):
        for tool in tools:  # interleaved, so that a slower moment of the machine hits every tool
            try:
                results[tool].append(run_once(tool, run))
            except Failure as e:
                print(f"FAILED: {e}", flush=True)
                failures.append(f"{tool}-{run}")
    results = {tool: rs for tool, rs in results.items() if rs}
    if not results:
        raise Failure("every run failed")
    colds = [r["cold"] for rs in results.values() for r in rs]
    med = {tool: statistics.median(r["http"] for r in rs) for tool, rs in results.items()}
    print()
    print(f"{runs} runs per tool, {live} MiB live data, -Xmx{heap}m {' '.join(java_opts)}; "
          "times in ms, median (min-max)")
    print()
    print("| tool | image size | dump (kills) | restore (until the tool exits) "
          "| restore start -> first HTTP 200 | crest/CRIU (first 200, medians) |")
    print("|---|---|---|---|---|---|")
    for tool, rs in results.items():
        runs_note = f" ({len(rs)} runs)" if len(rs) != runs else ""
        ratio = (f"{med[tool] / med['criu']:.2f}" if "criu" in med and tool != "criu" else "")
        size = statistics.median(r["size"] for r in rs) / 1048576
        print(f"| {tool}{runs_note} | {size:.1f} MiB | {spread([r['dump'] for r in rs])} "
              f"| {spread([r['restore'] for r in rs])} | {spread([r['http'] for r in rs])} "
              f"| {ratio} |")
    print(f"| cold start (baseline, {len(colds)} starts) | | | | {spread(colds)} | |")
    if failures:
        raise Failure(f"{len(failures)} runs failed and are not in the table: "
                      f"{', '.join(failures)} (their messages are above)")


try:
    main()
except Failure as e:
    print(f"compare-criu: FAILED: {e}", file=sys.stderr)
    sys.exit(1)
finally:
    for p in list(live_pids):
        end(p)
PY

echo "== $RUNS runs of: $TOOLS ($("${JAVA_BIN}java" -version 2>&1 | head -n 1), $LIVE MiB live)"
python3 "$WORK/compare.py" "$CREST" "$CRIU" "${JAVA_BIN}java" "$WORK/classes" "$WORK" "$RUNS" \
    "$LIVE" "$HEAP_MIB" "$TOOLS"
