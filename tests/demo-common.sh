# Helpers shared by tests/demo.sh and tests/demo-native.sh (sourced, not run). They expect
# ROOT (the repository), WORK (a scratch directory) and LOG (the program's log file).

now_ns() { date +%s%N; }
ms_since() { awk -v a="$1" -v b="$(now_ns)" 'BEGIN { printf "%.1f", (b - a) / 1e6 }'; }
log_lines() { if [ -f "$LOG" ]; then wc -l <"$LOG"; else echo 0; fi; }

# Builds crest in release mode into $CREST and makes sure dump and restore can work here.
build_crest() {
    echo "== building crest (release)"
    cargo build --release --quiet
    CREST=$ROOT/target/release/crest
    if ! "$CREST" check >"$WORK/check.txt"; then
        cat "$WORK/check.txt"
        echo "crest check says dump/restore cannot work here (run as root?)" >&2
        exit 1
    fi
}

# start_detached STDERR_FILE COMMAND...: runs COMMAND in the background in its own session,
# stdio on /dev/null (stderr to STDERR_FILE), every fd above 2 closed: crest refuses fds it
# cannot restore, and a shell may hold some. Its pid is in $! afterwards.
start_detached() {
    local err=$1
    shift
    (
        for fd in /proc/$BASHPID/fd/*; do
            n=${fd##*/}
            if [ "$n" -gt 2 ]; then eval "exec $n>&-"; fi
        done
        exec setsid "$@"
    ) </dev/null >/dev/null 2>"$err" &
}
