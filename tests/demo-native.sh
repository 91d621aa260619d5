#!/usr/bin/env bash
# crest demo: checkpoint a running process and bring it back under the same pid.
#
# Builds crest (release), compiles the memcheck victim (tests/victims/memcheck.c: ~80 MiB mapped,
# 48 MiB of pseudo-random data, a 16 MiB mostly-zero area, an append-mode log written every
# 20 ms), starts it detached, dumps it with `crest dump` (which kills it), restores it with
# `crest restore -d`, asks the restored process to check all of its memory, and prints the
# timings. Needs root (or CAP_CHECKPOINT_RESTORE + CAP_SYS_PTRACE). Ends only the process it
# started, by pid.
#
# usage: bash tests/demo-native.sh [--keep]   (--keep: keep the image, for crest show)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

# shellcheck source=tests/demo-common.sh
source "$ROOT/tests/demo-common.sh"

VICTIM_PID=
WORK=$(mktemp -d "${TMPDIR:-/tmp}/crest-demo.XXXXXX")
cleanup() {
    keep_image_if_asked demo-native-image
    if [ -n "$VICTIM_PID" ] && kill -0 "$VICTIM_PID" 2>/dev/null; then
        kill -KILL "$VICTIM_PID" 2>/dev/null || true
        # Our child only until the first dump; afterwards init reaps it. Wait until it is gone.
        for _ in $(seq 1 500); do kill -0 "$VICTIM_PID" 2>/dev/null || break; sleep 0.01; done
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
parse_demo_args "$@"

build_crest

echo "== compiling the victim"
cc -O1 -g -o "$WORK/memcheck" tests/victims/memcheck.c

CTL=$WORK/ctl
LOG=$CTL/log
IMG=$WORK/image
mkdir "$CTL"

echo "== starting the victim"
start_detached "$CTL/stderr" "$WORK/memcheck" "$CTL" "$LOG" 0x5eed
VICTIM_PID=$!

for _ in $(seq 1 2000); do [ "$(log_lines)" -gt 0 ] && break; sleep 0.01; done
if [ "$(log_lines)" -eq 0 ]; then
    echo "the victim did not start:" >&2
    cat "$CTL/stderr" >&2
    exit 1
fi
echo "victim pid $VICTIM_PID: $(grep -E '^(VmSize|VmRSS)' /proc/$VICTIM_PID/status | tr -s ' \t' ' ' | paste -sd, -)"
echo "last log line: $(tail -n 1 "$LOG")"

echo "== crest dump -t $VICTIM_PID -D $IMG"
# bash reports a background job killed by a signal on its own stderr; keep that notice out of
# the demo's output (crest's own stderr still goes to the terminal through fd 3).
exec 3>&2 2>/dev/null
t0=$(now_ns)
if ! "$CREST" dump -t "$VICTIM_PID" -D "$IMG" 2>&3; then
    exec 2>&3 3>&-
    echo "crest dump failed" >&2
    exit 1
fi
T_DUMP=$(ms_since "$t0")
# The dump killed the victim; it is our child, so reap it (its pid must be free to restore).
wait "$VICTIM_PID" || true
exec 2>&3 3>&-
if kill -0 "$VICTIM_PID" 2>/dev/null; then
    echo "pid $VICTIM_PID still exists after the dump" >&2
    exit 1
fi
IMG_BYTES=$(find "$IMG" -type f -printf '%s\n' | awk '{ s += $1 } END { print s }')
IMG_MIB=$(awk -v b="$IMG_BYTES" 'BEGIN { printf "%.1f", b / 1048576 }')
echo "image: $IMG_MIB MiB"
ls -l "$IMG"

LINES_BEFORE=$(log_lines)
echo "== crest restore -D $IMG -d"
t0=$(now_ns)
"$CREST" restore -D "$IMG" -d --pidfile "$WORK/restored.pid"
T_RESTORE=$(ms_since "$t0")
RESTORED_PID=$(cat "$WORK/restored.pid")
echo "restored pid: $RESTORED_PID (original $VICTIM_PID)"
[ "$RESTORED_PID" = "$VICTIM_PID" ] || { echo "restored under another pid" >&2; exit 1; }

for _ in $(seq 1 20000); do [ "$(log_lines)" -gt "$LINES_BEFORE" ] && break; sleep 0.001; done
T_FIRST_LINE=$(ms_since "$t0")
if [ "$(log_lines)" -le "$LINES_BEFORE" ]; then
    echo "the restored process does not log" >&2
    exit 1
fi
echo "first new log line: $(sed -n "$((LINES_BEFORE + 1))p" "$LOG")"

echo "== asking the restored process to verify its memory"
rm -f "$CTL/verify-result"
t0=$(now_ns)
touch "$CTL/verify-request"
for _ in $(seq 1 2000); do [ -f "$CTL/verify-result" ] && break; sleep 0.01; done
T_VERIFY=$(ms_since "$t0")
RESULT=$(cat "$CTL/verify-result" 2>/dev/null || echo "no answer")
echo "victim says: $RESULT"

echo
echo "| step                                        | result |"
echo "|---------------------------------------------|--------|"
printf "| %-43s | %s ms |\n" "crest dump (freeze, write image, kill)" "$T_DUMP"
printf "| %-43s | %s MiB |\n" "image size" "$IMG_MIB"
printf "| %-43s | %s ms |\n" "crest restore -d (until crest exits)" "$T_RESTORE"
printf "| %-43s | %s ms |\n" "restore start to first new log line" "$T_FIRST_LINE"
printf "| %-43s | %s |\n" "self-check of all memory after restore" "$RESULT"
echo
echo "(the victim logs every 20 ms, so up to 20 ms of the first-line time is its own sleep;"
echo " the self-check time, $T_VERIFY ms, is the victim re-reading 80 MiB, not crest)"

case "$RESULT" in
    ok*) exit 0 ;;
    *) exit 1 ;;
esac
