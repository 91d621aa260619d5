#!/usr/bin/env bash
# Cargo target runner for aarch64-unknown-linux-gnu (set by tests/aarch64.sh through
# CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER): `runner.sh BINARY ARGS...` boots one
# qemu-system-aarch64 VM, shares the host directories the binary needs with 9p at the same
# absolute paths, runs BINARY ARGS as root in the current directory with cargo's environment,
# prints its output and exits with its exit code; the VM then powers off.
#
# Needs CREST_AARCH64_KERNEL (an arm64 Image) and CREST_AARCH64_INITRD (the base initramfs of
# tests/aarch64.sh); optional CREST_AARCH64_CPU (default max,pauth=off), CREST_AARCH64_MEM
# (default 2G), CREST_AARCH64_SMP (default 2), CREST_AARCH64_TIMEOUT (seconds, default 3600),
# CREST_AARCH64_JDK (an unpacked Debian arm64 OpenJDK root: its usr/lib/jvm and
# etc/java-17-openjdk are shared at /usr/lib/jvm and /etc/java-17-openjdk, its bin/ linked from
# /usr/bin).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

fail() {
    echo "aarch64 runner: $*" >&2
    exit 101
}

[ $# -ge 1 ] || fail "usage: runner.sh BINARY [ARGS...]"
: "${CREST_AARCH64_KERNEL:?set by tests/aarch64.sh: the arm64 kernel Image}"
: "${CREST_AARCH64_INITRD:?set by tests/aarch64.sh: the base initramfs}"
[ -r "$CREST_AARCH64_KERNEL" ] || fail "cannot read the kernel $CREST_AARCH64_KERNEL"
[ -r "$CREST_AARCH64_INITRD" ] || fail "cannot read the initramfs $CREST_AARCH64_INITRD"
cpu=${CREST_AARCH64_CPU:-max,pauth=off}
mem=${CREST_AARCH64_MEM:-2G}
smp=${CREST_AARCH64_SMP:-2}
limit=${CREST_AARCH64_TIMEOUT:-3600}

bin=$(realpath "$1")
shift
[ -x "$bin" ] || fail "$bin is not an executable"
cwd=$(pwd -P)

# Single-quotes a word for the guest's sh.
q() {
    local s=${1//\'/\'\\\'\'}
    printf "'%s'" "$s"
}

# Host directories shared into the guest: the repository (sources, fixtures, target dir), and
# the binary's and the working directory's if they are elsewhere (a CARGO_TARGET_DIR outside).
shares=("$repo")
for d in "$(dirname "$bin")" "$cwd"; do
    covered=0
    for s in "${shares[@]}"; do
        case "$d/" in "$s"/*) covered=1 ;; esac
    done
    [ $covered -eq 1 ] || shares+=("$d")
done
# Directories shared at another path in the guest: host path and guest path.
other_host=()
other_guest=()
jdk=${CREST_AARCH64_JDK:-}
if [ -n "$jdk" ]; then
    [ -d "$jdk/usr/lib/jvm" ] || fail "CREST_AARCH64_JDK=$jdk has no usr/lib/jvm"
    other_host+=("$jdk/usr/lib/jvm")
    other_guest+=(/usr/lib/jvm)
    for e in "$jdk"/etc/java-*; do
        [ -d "$e" ] || continue
        other_host+=("$e")
        other_guest+=("/etc/$(basename "$e")")
    done
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/crest-aarch64-run.XXXXXX")
cc_pid=
cleanup() {
    [ -z "$cc_pid" ] || kill "$cc_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# The guest's `cc` (tests/aarch64/cc) leaves its command lines in this shared spool directory;
# serve_cc runs each with the cross compiler here and writes back the output and exit code.
spool=$work/spool
mkdir "$spool"
shares+=("$spool")
serve_cc() {
    local req args cwd rc
    while :; do
        for req in "$spool"/*.req; do
            [ -d "$req" ] && [ -e "$req/cwd" ] && [ ! -e "$req/rc" ] || continue
            # A request the guest is removing is gone by now: skip it, never die here.
            mapfile -t args <"$req/args" 2>/dev/null || continue
            cwd=$(cat "$req/cwd" 2>/dev/null) || continue
            # A failing compile is an answer, not an error of this loop (errexit is on).
            rc=0
            (cd "$cwd" && exec aarch64-linux-gnu-gcc "${args[@]}") >"$req/out" 2>"$req/err" </dev/null || rc=$?
            echo "$rc" >"$req/rc.tmp"
            mv "$req/rc.tmp" "$req/rc"
        done
        sleep 0.05
    done
}

# The per-run script, in a second cpio archive appended to the base initramfs.
{
    echo "set -e"
    i=0
    for s in "${shares[@]}"; do
        echo "mkdir -p $(q "$s")"
        echo "mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,access=any host$i $(q "$s")"
        i=$((i + 1))
    done
    for ((j = 0; j < ${#other_host[@]}; j++)); do
        echo "mkdir -p $(q "${other_guest[$j]}")"
        echo "mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,access=any,ro jdk$j $(q "${other_guest[$j]}")"
    done
    if [ -n "$jdk" ]; then
        # java, javac, jcmd, ... on the PATH, as Debian's alternatives would put them.
        echo 'for b in /usr/lib/jvm/java-*-openjdk-arm64/bin/*; do [ -e "/usr/bin/${b##*/}" ] || ln -s "$b" /usr/bin/; done'
    fi
    # The tests' work directories (CARGO_TARGET_TMPDIR: <target>/aarch64-unknown-linux-gnu/tmp)
    # go on a guest tmpfs: processes are dumped and restored with their files on a local file
    # system, as on a real machine, not on 9p (whose requests a ptrace stop can interrupt). The
    # build caches there (victims/, java/) stay shared: the host compiles the victims into it.
    triple_dir=$(dirname "$(dirname "$(dirname "$bin")")")
    if [ "$(basename "$triple_dir")" = aarch64-unknown-linux-gnu ]; then
        tt=$triple_dir/tmp
        echo "mkdir -p $(q "$tt/victims") $(q "$tt/java") /run/keep/victims /run/keep/java"
        echo "mount -o bind $(q "$tt/victims") /run/keep/victims"
        echo "mount -o bind $(q "$tt/java") /run/keep/java"
        echo "mount -t tmpfs -o mode=1777 tmpfs $(q "$tt")"
        echo "mkdir $(q "$tt/victims") $(q "$tt/java")"
        echo "mount -o move /run/keep/victims $(q "$tt/victims")"
        echo "mount -o move /run/keep/java $(q "$tt/java")"
    fi
    echo "set +e"
    # cargo's environment for the test (CARGO_MANIFEST_DIR, CARGO_PKG_*, ...) and the user's
    # RUST_* / CREST_* settings; not the harness's own.
    while IFS= read -r -d '' kv; do
        name=${kv%%=*}
        case "$name" in
            CREST_AARCH64_* | CARGO_TARGET_*_RUNNER | CARGO_TARGET_*_LINKER) continue ;;
            CARGO* | RUST* | CREST*) ;;
            *) continue ;;
        esac
        [[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || continue
        echo "export $name=$(q "${kv#*=}")"
    done < <(env -0)
    echo "export CREST_AARCH64_CC_SPOOL=$(q "$spool")"
    echo "cd $(q "$cwd") || exit 101"
    printf 'exec %s' "$(q "$bin")"
    for a in "$@"; do
        printf ' %s' "$(q "$a")"
    done
    echo
} >"$work/crest-run.sh"
(cd "$work" && echo crest-run.sh | cpio -o -H newc --quiet | gzip -1 >run.cpio.gz)
cat "$CREST_AARCH64_INITRD" "$work/run.cpio.gz" >"$work/initrd"

qemu=(qemu-system-aarch64 -M virt -cpu "$cpu" -smp "$smp" -m "$mem" -nographic -nic none
    -no-reboot -kernel "$CREST_AARCH64_KERNEL" -initrd "$work/initrd"
    -append 'console=ttyAMA0 rdinit=/init panic=-1 quiet')
i=0
for s in "${shares[@]}"; do
    qemu+=(-virtfs "local,path=$s,mount_tag=host$i,security_model=none")
    i=$((i + 1))
done
for ((j = 0; j < ${#other_host[@]}; j++)); do
    qemu+=(-virtfs "local,path=${other_host[$j]},mount_tag=jdk$j,security_model=none,readonly=on")
done

# The console carries the boot and the test's output: print what lies between the markers, keep
# the rest for a diagnosis if the markers never come.
serve_cc &
cc_pid=$!
set +e
timeout -k 10 "$limit" "${qemu[@]}" </dev/null 2>&1 |
    awk -v rcfile="$work/rc" -v bootlog="$work/boot.log" '
        { sub(/\r$/, "") }
        done { next }
        started && index($0, "@@CREST-AARCH64-END rc=") == 1 {
            rc = substr($0, 24); sub(/@@.*/, "", rc); print rc > rcfile; done = 1; next
        }
        started { print; fflush(); next }
        index($0, "@@CREST-AARCH64-BEGIN@@") == 1 { started = 1; next }
        { print > bootlog }
    '
qrc=${PIPESTATUS[0]}
set -e
if [ -s "$work/rc" ]; then
    exit "$(cat "$work/rc")"
fi
if [ "$qrc" -eq 124 ] || [ "$qrc" -eq 137 ]; then
    echo "aarch64 runner: the VM running $bin did not finish within $limit s" >&2
else
    echo "aarch64 runner: the VM running $bin ended (qemu exit $qrc) without the test's exit code" >&2
fi
[ -s "$work/boot.log" ] && tail -n 40 "$work/boot.log" >&2
exit 101
