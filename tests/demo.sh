#!/usr/bin/env bash
# crest demo: checkpoint a running JVM and bring it back under the same pid.
#
# Builds crest (release), compiles the bundled demo application (tests/java/Demo.java: 48 MiB of
# live data, a 1 ms scheduled ticker, a worker pool, a log line every 10 ms) with the machine's
# javac, starts it, `crest dump`s it (which kills it), `crest restore -d`s it, measures how long
# the restored JVM takes to print again, asks it to re-check its live data, and prints the
# timings. Needs root (or CAP_CHECKPOINT_RESTORE + CAP_SYS_PTRACE) and a JDK (javac, java; JDK 17
# by default, or set JAVA_HOME). Ends only the process it started, by pid.
#
# usage: bash tests/demo.sh        (tests/demo-native.sh does the same for a C program)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
JAVA_BIN=${JAVA_HOME:+$JAVA_HOME/bin/}

# shellcheck source=tests/demo-common.sh
source "$ROOT/tests/demo-common.sh"

JVM_PID=
WORK=$(mktemp -d "${TMPDIR:-/tmp}/crest-demo.XXXXXX")
cleanup() {
    if [ -n "$JVM_PID" ] && kill -0 "$JVM_PID" 2>/dev/null; then
        kill -KILL "$JVM_PID" 2>/dev/null || true
        for _ in $(seq 1 500); do kill -0 "$JVM_PID" 2>/dev/null || break; sleep 0.01; done
    fi
    # A JVM killed by a signal leaves its perf-data file behind; remove only ours.
    if [ -n "$JVM_PID" ]; then rm -f "/tmp/hsperfdata_$(id -un)/$JVM_PID"; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

build_crest

echo "== compiling the demo application ($("${JAVA_BIN}javac" -version 2>&1))"
mkdir "$WORK/classes"
"${JAVA_BIN}javac" -d "$WORK/classes" tests/java/Demo.java

LOG=$WORK/demo.log
CHECK=$WORK/check
IMG=$WORK/image

echo "== starting the JVM (cold start, timed until its first line)"
t0=$(now_ns)
start_detached "$WORK/stderr" "${JAVA_BIN}java" -Xmx512m -cp "$WORK/classes" Demo "$LOG" "$CHECK"
JVM_PID=$!
for _ in $(seq 1 30000); do [ "$(log_lines)" -gt 0 ] && break; sleep 0.001; done
T_COLD=$(ms_since "$t0")
for _ in $(seq 1 3000); do [ "$(log_lines)" -gt 20 ] && break; sleep 0.01; done
if [ "$(log_lines)" -le 20 ]; then
    echo "the JVM did not start:" >&2
    cat "$WORK/stderr" >&2
    exit 1
fi
echo "JVM pid $JVM_PID: $(ls /proc/$JVM_PID/task | wc -l) threads, $(grep -E '^VmRSS' /proc/$JVM_PID/status | tr -s ' \t' ' ')"
echo "last log line: $(tail -n 1 "$LOG")"

echo "== crest dump -t $JVM_PID -D $IMG"
exec 3>&2 2>/dev/null
t0=$(now_ns)
if ! "$CREST" dump -t "$JVM_PID" -D "$IMG" 2>&3; then
    exec 2>&3 3>&-
    echo "crest dump failed" >&2
    exit 1
fi
T_DUMP=$(ms_since "$t0")
wait "$JVM_PID" || true
exec 2>&3 3>&-
IMG_BYTES=$(find "$IMG" -type f -printf '%s\n' | awk '{ s += $1 } END { print s }')
IMG_MIB=$(awk -v b="$IMG_BYTES" 'BEGIN { printf "%.1f", b / 1048576 }')
echo "image: $IMG_MIB MiB"

LINES_BEFORE=$(log_lines)
echo "== crest restore -D $IMG -d"
t0=$(now_ns)
"$CREST" restore -D "$IMG" -d --pidfile "$WORK/restored.pid"
T_RESTORE=$(ms_since "$t0")
RESTORED_PID=$(cat "$WORK/restored.pid")
echo "restored pid: $RESTORED_PID (original $JVM_PID), $(ls /proc/$RESTORED_PID/task | wc -l) threads"
[ "$RESTORED_PID" = "$JVM_PID" ] || { echo "restored under another pid" >&2; exit 1; }
for _ in $(seq 1 20000); do [ "$(log_lines)" -gt "$LINES_BEFORE" ] && break; sleep 0.001; done
T_FIRST_LINE=$(ms_since "$t0")
if [ "$(log_lines)" -le "$LINES_BEFORE" ]; then
    echo "the restored JVM does not print" >&2
    exit 1
fi
echo "first line of the restored JVM: $(sed -n "$((LINES_BEFORE + 1))p" "$LOG")"

echo "== asking the restored JVM to re-check its live data"
touch "$CHECK"
for _ in $(seq 1 2000); do [ -s "$CHECK.result" ] && break; sleep 0.01; done
RESULT=$(cat "$CHECK.result" 2>/dev/null || echo "no answer")
echo "JVM says: $RESULT"

echo
echo "| step                                        | result |"
echo "|---------------------------------------------|--------|"
printf "| %-43s | %s ms |\n" "crest dump (freeze, write image, kill)" "$T_DUMP"
printf "| %-43s | %s MiB |\n" "image size" "$IMG_MIB"
printf "| %-43s | %s ms |\n" "crest restore -d (until crest exits)" "$T_RESTORE"
printf "| %-43s | %s ms |\n" "restore start to the JVM's next line" "$T_FIRST_LINE"
printf "| %-43s | %s |\n" "live data check after restore" "$RESULT"
printf "| %-43s | %s ms |\n" "baseline: JVM cold start to its first line" "$T_COLD"
printf "| %-43s | %s |\n" "cold start / restore-to-next-line" "$(awk -v c="$T_COLD" -v r="$T_FIRST_LINE" 'BEGIN { printf "%.1fx", c / r }')"
echo
echo "(the JVM prints every 10 ms, so up to 10 ms of the next-line time is its own sleep)"
case "$RESULT" in
    ok*) exit 0 ;;
    *) exit 1 ;;
esac
