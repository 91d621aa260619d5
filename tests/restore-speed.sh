#!/usr/bin/env bash
# Restore speed apart from page loading: how long `crest restore` takes until the tree runs,
# per phase (the restore statistics), for a JVM or a C process with many threads.
#
# Builds crest (release) unless CREST is set, starts the victim, dumps it once (which ends it),
# then restores it RUNS times with `crest restore -d --stats-json` (page cache warm: the image
# was just written), killing the restored process by pid after each run, and prints every run's
# statistics and the median per phase. Needs root (and a JDK for `jvm`). Ends only the process
# it started, by pid.
#
# usage: bash tests/restore-speed.sh jvm THREADS [RUNS (5)]   (Victim "threads THREADS")
#        bash tests/restore-speed.sh c THREADS [RUNS (5)]     (tests/bench/sleepers.c)
# PAGES=copy|map|lazy (default copy) restores with that page source (`--pages`); RESTORE_ARGS
# adds options to every restore (e.g. --no-prefetch).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
KIND=${1:?usage: restore-speed.sh jvm|c THREADS [RUNS]}
THREADS=${2:?usage: restore-speed.sh jvm|c THREADS [RUNS]}
RUNS=${3:-5}
JAVA_BIN=${JAVA_HOME:+$JAVA_HOME/bin/}

# shellcheck source=tests/demo-common.sh
source "$ROOT/tests/demo-common.sh"

PID=
WORK=$(mktemp -d "${TMPDIR:-/tmp}/crest-restore-speed.XXXXXX")
LOG=$WORK/ctl/log
end_victim() {
    if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
        kill -KILL "$PID" 2>/dev/null || true
    fi
    if [ -n "$PID" ]; then
        for _ in $(seq 1 1000); do kill -0 "$PID" 2>/dev/null || break; sleep 0.01; done
    fi
}
cleanup() {
    end_victim
    if [ -n "$PID" ]; then rm -f "/tmp/hsperfdata_$(id -un)/$PID" "/tmp/.java_pid$PID"; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

if [ -z "${CREST:-}" ]; then
    build_crest >/dev/null
fi
mkdir "$WORK/classes" "$WORK/ctl"
case "$KIND" in
    jvm)
        "${JAVA_BIN}javac" -d "$WORK/classes" tests/java/*.java
        start_detached "$WORK/stderr" "${JAVA_BIN}java" -Xmx256m -cp "$WORK/classes" \
            Victim "$WORK/ctl" "$LOG" threads "$THREADS"
        ;;
    c)
        cc -O2 -pthread -o "$WORK/sleepers" tests/bench/sleepers.c
        start_detached "$WORK/stderr" "$WORK/sleepers" "$THREADS" "$LOG"
        ;;
    *) echo "unknown kind $KIND (jvm or c)" >&2; exit 2 ;;
esac
PID=$!
disown "$PID"
for _ in $(seq 1 6000); do [ "$(log_lines)" -gt 0 ] && break; sleep 0.01; done
if [ "$(log_lines)" -eq 0 ]; then
    echo "the victim did not start:" >&2
    cat "$WORK/stderr" >&2
    exit 1
fi
# Let a JVM finish starting its threads before the dump.
for _ in $(seq 1 6000); do
    [ "$(ls /proc/$PID/task | wc -l)" -ge "$THREADS" ] && break
    sleep 0.01
done
echo "$KIND victim pid $PID with $(ls /proc/$PID/task | wc -l) threads"
"$CREST" dump -t "$PID" -D "$WORK/img" 2>"$WORK/dump.err" || { cat "$WORK/dump.err" >&2; exit 1; }
for _ in $(seq 1 1000); do kill -0 "$PID" 2>/dev/null || break; sleep 0.01; done
# Read the image once so that every run finds it in the page cache.
cat "$WORK"/img/* >/dev/null

for run in $(seq 1 "$RUNS"); do
    # shellcheck disable=SC2086
    "$CREST" restore -d --pages "${PAGES:-copy}" ${RESTORE_ARGS:-} -D "$WORK/img" \
        --stats-json "$WORK/stats$run.json" 2>"$WORK/restore.err" \
        || { cat "$WORK/restore.err" >&2; exit 1; }
    n=$(log_lines)
    for _ in $(seq 1 1000); do [ "$(log_lines)" -gt "$n" ] && break; sleep 0.01; done
    [ "$(log_lines)" -gt "$n" ] || { echo "run $run: the restored process does not log" >&2; exit 1; }
    end_victim
done

python3 - "$WORK" "$RUNS" <<'PY'
import json, statistics, sys
work, runs = sys.argv[1], int(sys.argv[2])
stats = [json.load(open(f"{work}/stats{i}.json")) for i in range(1, runs + 1)]
names = [n for n, _ in stats[0]["phases_us"]]
ms = lambda us: f"{us / 1000:.1f}"
print(f"{stats[0]['threads']} threads, {stats[0]['page_bytes'] / 2**20:.1f} MiB of pages; ms per run:")
print("run   total  " + "  ".join(f"{n:>9}" for n in names))
for i, s in enumerate(stats, 1):
    ph = dict(s["phases_us"])
    print(f"{i:<4} {ms(s['total_us']):>6}  " + "  ".join(f"{ms(ph.get(n, 0)):>9}" for n in names))
med = lambda xs: statistics.median(xs)
print(f"med  {ms(med([s['total_us'] for s in stats])):>6}  "
      + "  ".join(f"{ms(med([dict(s['phases_us']).get(n, 0) for s in stats])):>9}" for n in names))
PY
