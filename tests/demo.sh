#!/usr/bin/env bash
# crest demo: checkpoint a running JVM and bring it back under the same pid.
#
# Builds crest (release), compiles the bundled demo application (tests/java/Demo.java: an HTTP
# server on 127.0.0.1 with 48 MiB of live data, a 1 ms scheduled ticker, a worker pool, a log line
# every 10 ms) with the machine's javac, starts it, opens a keep-alive HTTP connection to it,
# `crest dump`s it (which kills it), `crest restore -d`s it, measures how long the restored JVM
# takes to answer HTTP (beside the cold start's time to its first answer), asks again on the kept
# connection, asks it to re-check its live data, and prints the timings. Needs root (or CAP_CHECKPOINT_RESTORE + CAP_SYS_PTRACE) and a JDK (javac, java; JDK 17
# by default, or set JAVA_HOME). Ends only the process it started, by pid.
#
# usage: bash tests/demo.sh [--keep]   (--keep: keep the image, for crest show; tests/demo-native.sh
# does the same for a C program)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
JAVA_BIN=${JAVA_HOME:+$JAVA_HOME/bin/}

# shellcheck source=tests/demo-common.sh
source "$ROOT/tests/demo-common.sh"

JVM_PID=
WORK=$(mktemp -d "${TMPDIR:-/tmp}/crest-demo.XXXXXX")
cleanup() {
    keep_image_if_asked demo-image
    if [ -n "$JVM_PID" ] && kill -0 "$JVM_PID" 2>/dev/null; then
        kill -KILL "$JVM_PID" 2>/dev/null || true
        for _ in $(seq 1 500); do kill -0 "$JVM_PID" 2>/dev/null || break; sleep 0.01; done
    fi
    # A JVM killed by a signal leaves its perf-data file behind; remove only ours.
    if [ -n "$JVM_PID" ]; then rm -f "/tmp/hsperfdata_$(id -un)/$JVM_PID"; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
parse_demo_args "$@"

build_crest

echo "== compiling the demo application ($("${JAVA_BIN}javac" -version 2>&1))"
mkdir "$WORK/classes"
"${JAVA_BIN}javac" -d "$WORK/classes" tests/java/Demo.java

LOG=$WORK/demo.log
PORT_FILE=$WORK/port
IMG=$WORK/image

# http_get FD PATH: one HTTP/1.1 GET on the connection open as fd FD; prints "STATUS BODY".
http_get() {
    local fd=$1 path=$2 status line len=0 body=
    printf 'GET %s HTTP/1.1\r\nHost: demo\r\n\r\n' "$path" >&"$fd" || return 1
    read -r -t 30 _ status _ <&"$fd" || return 1
    while IFS= read -r -t 30 line <&"$fd"; do
        line=${line%$'\r'}
        [ -z "$line" ] && break
        case "${line,,}" in content-length:*) len=${line#*: } ;; esac
    done
    if [ "$len" -gt 0 ]; then read -r -t 30 -N "$len" body <&"$fd" || return 1; fi
    echo "$status $body"
}

# http_once PATH: a GET on a new connection (fd 7) to the demo; fails if nobody listens.
http_once() {
    { exec 7<>"/dev/tcp/127.0.0.1/$PORT"; } 2>/dev/null || return 1
    local answer
    answer=$(http_get 7 "$1") || { exec 7>&-; return 1; }
    exec 7>&-
    echo "$answer"
}

# wait_http_200 PATH: polls (1 ms apart) until GET PATH answers 200; prints the answer.
wait_http_200() {
    local answer
    for _ in $(seq 1 30000); do
        answer=$(http_once "$1") && [ "${answer%% *}" = 200 ] && { echo "$answer"; return 0; }
        sleep 0.001
    done
    return 1
}

echo "== starting the JVM (cold start, timed until its first HTTP answer)"
t0=$(now_ns)
start_detached "$WORK/stderr" "${JAVA_BIN}java" -Xmx512m -cp "$WORK/classes" Demo "$LOG" "$PORT_FILE"
JVM_PID=$!
for _ in $(seq 1 30000); do [ -s "$PORT_FILE" ] && break; sleep 0.001; done
if [ ! -s "$PORT_FILE" ]; then
    echo "the JVM did not start:" >&2
    cat "$WORK/stderr" >&2
    exit 1
fi
PORT=$(cat "$PORT_FILE")
FIRST=$(wait_http_200 /hello) || { echo "the JVM does not answer HTTP" >&2; exit 1; }
T_COLD=$(ms_since "$t0")
for _ in $(seq 1 3000); do [ "$(log_lines)" -gt 20 ] && break; sleep 0.01; done
echo "JVM pid $JVM_PID, port $PORT: $(ls /proc/$JVM_PID/task | wc -l) threads, $(grep -E '^VmRSS' /proc/$JVM_PID/status | tr -s ' \t' ' ')"
echo "first answer: $FIRST"

# A client that keeps its connection open across the checkpoint, like a load balancer.
exec 8<>"/dev/tcp/127.0.0.1/$PORT"
echo "kept connection, before the dump: $(http_get 8 /hello)"
echo "last log line: $(tail -n 1 "$LOG")"

THREADS_BEFORE=$(ls /proc/$JVM_PID/task | wc -l)
NAMES_BEFORE=$(cat /proc/$JVM_PID/task/*/comm | sort)
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
ANSWER=$(wait_http_200 /hello) || { echo "the restored JVM does not answer HTTP" >&2; exit 1; }
T_HTTP=$(ms_since "$t0")
RESTORED_PID=$(cat "$WORK/restored.pid")
THREADS_AFTER=$(ls /proc/$RESTORED_PID/task | wc -l)
echo "restored pid: $RESTORED_PID (original $JVM_PID), $THREADS_AFTER threads"
if [ "$THREADS_AFTER" != "$THREADS_BEFORE" ]; then
    # The GC hint talks to the JVM through its attach API (which starts its "Attach Listener"
    # thread) and runs a full GC (for which G1 may start more workers): the image holds the
    # threads the JVM had once the hint was done.
    NEW=$(comm -13 <(echo "$NAMES_BEFORE") <(cat /proc/$RESTORED_PID/task/*/comm | sort) | paste -sd, -)
    echo "($THREADS_BEFORE threads before the dump; the JVM started these during the GC hint: $NEW)"
fi
[ "$RESTORED_PID" = "$JVM_PID" ] || { echo "restored under another pid" >&2; exit 1; }
echo "first answer of the restored JVM: $ANSWER"
for _ in $(seq 1 20000); do [ "$(log_lines)" -gt "$LINES_BEFORE" ] && break; sleep 0.001; done
T_FIRST_LINE=$(ms_since "$t0")
echo "first line of the restored JVM: $(sed -n "$((LINES_BEFORE + 1))p" "$LOG")"
KEPT=$(http_get 8 /hello) || KEPT="no answer"
exec 8>&-
echo "kept connection, after the restore: $KEPT"

echo "== asking the restored JVM to re-check its live data"
RESULT=$(http_once /check) || RESULT="no answer"
RESULT=${RESULT#200 }
echo "JVM says: $RESULT"

echo
echo "| step                                        | result |"
echo "|---------------------------------------------|--------|"
printf "| %-43s | %s ms |\n" "crest dump (freeze, write image, kill)" "$T_DUMP"
printf "| %-43s | %s MiB |\n" "image size" "$IMG_MIB"
printf "| %-43s | %s ms |\n" "crest restore -d (until crest exits)" "$T_RESTORE"
printf "| %-43s | %s ms |\n" "restore start to the first HTTP 200" "$T_HTTP"
printf "| %-43s | %s ms |\n" "restore start to the JVM's next log line" "$T_FIRST_LINE"
printf "| %-43s | %s |\n" "kept keep-alive connection after restore" "$KEPT"
printf "| %-43s | %s |\n" "live data check after restore" "$RESULT"
printf "| %-43s | %s ms |\n" "baseline: cold start to the first HTTP 200" "$T_COLD"
printf "| %-43s | %s |\n" "cold start / restore (first HTTP 200)" "$(awk -v c="$T_COLD" -v r="$T_HTTP" 'BEGIN { printf "%.1fx", c / r }')"
echo
echo "(the JVM logs every 10 ms, so up to 10 ms of the next-line time is its own sleep)"
case "$KEPT $RESULT" in
    200*ok*) exit 0 ;;
    *) exit 1 ;;
esac
