#!/usr/bin/env bash
# Dump speed on a JVM with a few hundred MiB live: how long `crest dump -R` keeps it stopped.
#
# Builds crest (release), compiles tests/java/Victim.java, starts it in mode `garbage LIVE 600`
# (LIVE MiB of live long[] chunks after 600 MiB of garbage; G1, -Xmx1g), then runs
# `crest dump -R --stats-json` RUNS times and prints, per run, the time the JVM was stopped,
# the page capture, the writing done after the release, the GC hint and the image size; at the
# end it asks the JVM to verify its live data. Needs root and a JDK (JAVA_HOME or the default).
# Ends only the process it started, by pid.
#
# usage: bash tests/dump-speed.sh [LIVE_MIB (300)] [RUNS (3)]
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
JAVA_BIN=${JAVA_HOME:+$JAVA_HOME/bin/}
LIVE=${1:-300}
RUNS=${2:-3}

# shellcheck source=tests/demo-common.sh
source "$ROOT/tests/demo-common.sh"

JVM_PID=
WORK=$(mktemp -d "${TMPDIR:-/tmp}/crest-dump-speed.XXXXXX")
cleanup() {
    if [ -n "$JVM_PID" ] && kill -0 "$JVM_PID" 2>/dev/null; then
        kill -KILL "$JVM_PID" 2>/dev/null || true
        for _ in $(seq 1 500); do kill -0 "$JVM_PID" 2>/dev/null || break; sleep 0.01; done
    fi
    if [ -n "$JVM_PID" ]; then rm -f "/tmp/hsperfdata_$(id -un)/$JVM_PID" "/tmp/.java_pid$JVM_PID"; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

build_crest
mkdir "$WORK/classes" "$WORK/ctl"
"${JAVA_BIN}javac" -d "$WORK/classes" tests/java/Victim.java
LOG=$WORK/ctl/log
start_detached "$WORK/stderr" "${JAVA_BIN}java" -Xmx1g -XX:+UseG1GC -cp "$WORK/classes" \
    Victim "$WORK/ctl" "$LOG" garbage "$LIVE" 600
JVM_PID=$!
disown "$JVM_PID" # ended by pid in cleanup; no job-control message then
for _ in $(seq 1 6000); do [ "$(log_lines)" -gt 0 ] && break; sleep 0.01; done
if [ "$(log_lines)" -eq 0 ]; then
    echo "the JVM did not start:" >&2
    cat "$WORK/stderr" >&2
    exit 1
fi
echo "JVM pid $JVM_PID ($("${JAVA_BIN}java" -version 2>&1 | head -n 1)), $LIVE MiB live," \
    "$(grep -E '^VmRSS' /proc/$JVM_PID/status | tr -s ' \t' ' ')"

for run in $(seq 1 "$RUNS"); do
    "$CREST" dump -t "$JVM_PID" -D "$WORK/img" -R --stats-json "$WORK/stats.json" 2>/dev/null
    python3 - "$WORK/stats.json" "$run" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s = r["stats"]
ph = dict(s["phases_us"])
ms = lambda us: us / 1000
print(f"run {sys.argv[2]}: stopped {ms(s['frozen_us']):.1f} ms (pages {ms(ph['pages']):.1f} ms), "
      f"written after the release {ms(ph['write']):.1f} ms, hint {ms(ph['hint']):.1f} ms, "
      f"image {r['image_bytes'] / 2**20:.1f} MiB, rss {s['rss_bytes'] / 2**20:.1f} MiB")
hint = s["gc_hint"]
if not isinstance(hint, dict) or "Done" not in hint:
    print(f"  gc hint: {hint}")
PY
done

rm -f "$WORK/ctl/verify-result"
touch "$WORK/ctl/verify-request"
for _ in $(seq 1 3000); do [ -f "$WORK/ctl/verify-result" ] && break; sleep 0.01; done
echo "live data check after the dumps: $(cat "$WORK/ctl/verify-result" 2>/dev/null || echo 'no answer')"
