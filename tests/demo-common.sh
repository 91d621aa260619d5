# Helpers shared by tests/demo.sh and tests/demo-native.sh (sourced, not run). They expect
# ROOT (the repository), WORK (a scratch directory) and LOG (the program's log file).

now_ns() { date +%s%N; }
ms_since() { awk -v a="$1" -v b="$(now_ns)" 'BEGIN { printf "%.1f", (b - a) / 1e6 }'; }
log_lines() { if [ -f "$LOG" ]; then wc -l <"$LOG"; else echo 0; fi; }

# parse_demo_args "$@": --keep keeps the image (KEEP=1); anything else is a usage error.
KEEP=
parse_demo_args() {
    for arg in "$@"; do
        case "$arg" in
            --keep) KEEP=1 ;;
            *) echo "usage: bash $0 [--keep]   (--keep: keep the image for crest show)" >&2; exit 2 ;;
        esac
    done
}

# With --keep, moves the image ($IMG) to target/<name> and says how to look at it; called by
# the scripts' cleanup, so a failed run keeps what it wrote too.
keep_image_if_asked() {
    local name=$1
    if [ -n "$KEEP" ] && [ -d "${IMG:-}" ]; then
        rm -rf "${ROOT:?}/target/$name"
        mv "$IMG" "$ROOT/target/$name"
        echo "image kept in target/$name: look at it with target/release/crest show target/$name"
    fi
}

# Builds crest in release mode into $CREST and makes sure dump and restore can work here.
build_crest() {
    echo "== building crest (release; the first build takes a few minutes)"
    cargo build --release
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
