#!/usr/bin/env bash
# Runs crest's tests built for aarch64 inside qemu-system-aarch64 (full-system emulation with a
# Debian arm64 6.12 kernel), one VM per test binary.
#
#   bash tests/aarch64.sh [--kernel 4k|16k|both] [--all] [--no-jdk] [-- CARGO TEST ARGS]
#
# By default it runs the core set on both kernels (what CI runs, ~5 minutes a kernel under
# emulation): the C victims (memory patterns, fds, threads, signals and timers, vector
# registers) through dump/restore cycles (tests victims, cycles, threads, signals,
# vector_registers, thread_restore) and a JDK 17 JVM dumped and restored three times (tests/jvm.rs
# jdk17_three_cycles_then_jcmd_and_sigterm, jvm_victim_verifies_itself_and_exits_on_request,
# one after the other), then files, IPC, event fds and UNIX sockets (tests epoll, events,
# fdshare, fifos, ghost_files, locks, memfd, mqueue, pipes, scm, sysv_ipc, unix_sockets but for
# two tests whose peers are python scripts: the guest has no python3).
# --all runs `--workspace --lib --bins --tests` instead (hours under emulation; a few tests need
# a newer kernel than 6.12 or assume 4K pages). Cargo test args after -- choose the tests
# yourself; the unit tests only, say:
#   bash tests/aarch64.sh -- -p crest-images -p crest --lib
#
# On a fresh Debian 12 x86_64 machine it installs what it needs (qemu-system-arm, the aarch64
# cross compiler and glibc, cpio, the rust targets), fetches the arm64 kernels and busybox-static
# with an apt of its own (own state dir, APT::Architecture=arm64: the host's dpkg is never
# touched), and caches every download under ${XDG_CACHE_HOME:-$HOME/.cache}/crest-aarch64.
# The guest gets busybox, the cross glibc runtime, bash, a `cc` that hands compilations to the
# host's cross compiler (tests/aarch64/cc) and, unless --no-jdk, Debian's arm64 OpenJDK 17 at
# /usr/lib/jvm/java-17-openjdk-arm64 (java, javac, ... also in /usr/bin).
# Then it runs `cargo test --target aarch64-unknown-linux-gnu ...` per kernel with
# tests/aarch64/runner.sh as the cargo target runner, and ends with one line per kernel:
#   aarch64 (4k): N passed, M failed
# It exits non-zero if any test failed or a test binary did not complete.
#
# Environment: CREST_AARCH64_TIMEOUT (seconds one VM may run, default 3600),
# CREST_AARCH64_MEM (guest memory, default 2G), CREST_AARCH64_CACHE (cache dir).
# CREST_TEST_TIMES=1 with `-- ... --nocapture` has the tests print how long each crest command,
# victim start and verify took (and the guest's free memory and load for a slow one).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)

kernels=both
jdk=1
all=0
cargo_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --kernel)
            [ $# -ge 2 ] || { echo "aarch64.sh: --kernel needs 4k, 16k or both" >&2; exit 2; }
            kernels=$2
            shift 2
            ;;
        --kernel=*)
            kernels=${1#--kernel=}
            shift
            ;;
        --no-jdk)
            jdk=0
            shift
            ;;
        --all)
            all=1
            shift
            ;;
        --)
            shift
            cargo_args=("$@")
            break
            ;;
        -h | --help)
            sed -n '2,31p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "aarch64.sh: unknown argument '$1' (cargo test arguments go after --)" >&2
            exit 2
            ;;
    esac
done
case "$kernels" in
    4k) flavours=(4k) ;;
    16k) flavours=(16k) ;;
    both) flavours=(4k 16k) ;;
    *)
        echo "aarch64.sh: --kernel takes 4k, 16k or both, not '$kernels'" >&2
        exit 2
        ;;
esac
# The cargo test runs per kernel, one per line (words split on blanks). Doc-tests are left out:
# rustdoc would boot one VM per doc-test, and they test no architecture-specific code.
if [ ${#cargo_args[@]} -gt 0 ]; then
    [ $all -eq 0 ] || { echo "aarch64.sh: --all and cargo test args exclude each other" >&2; exit 2; }
    runs=(custom)
elif [ $all -eq 1 ]; then
    runs=("--workspace --lib --bins --tests")
else
    runs=(
        "-p crest --test victims --test cycles --test threads --test signals --test vector_registers --test thread_restore"
        # One JVM at a time: two emulated JVMs starting together on the guest's 2 CPUs have
        # taken longer than the tests' JVM start timeout.
        "-p crest --test jvm -- jdk17_three_cycles_then_jcmd_and_sigterm jvm_victim_verifies_itself_and_exits_on_request --test-threads=1"
        # Files, IPC, event fds and UNIX sockets (issues #8, #9); the guest has no python3, so
        # the two socket tests whose peers are python scripts are left out.
        "-p crest --test epoll --test events --test fdshare --test fifos --test ghost_files --test locks --test memfd --test mqueue --test pipes --test scm --test sysv_ipc --test unix_sockets -- --skip so_peercred_of_pairs --skip a_listener_made_by_a_process_outside"
    )
    [ $jdk -eq 1 ] || unset 'runs[1]'
fi

cache=${CREST_AARCH64_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/crest-aarch64}
case "$cache/" in
    "$repo"/*)
        echo "aarch64.sh: the cache dir $cache is inside the repository; choose another" >&2
        exit 2
        ;;
esac
mkdir -p "$cache"

log() { echo "aarch64.sh: $*" >&2; }

# --- 1. host packages -------------------------------------------------------------------------
need_pkgs=()
command -v qemu-system-aarch64 >/dev/null || need_pkgs+=(qemu-system-arm)
command -v aarch64-linux-gnu-gcc >/dev/null || need_pkgs+=(gcc-aarch64-linux-gnu)
[ -e /usr/aarch64-linux-gnu/lib/libc.so.6 ] || need_pkgs+=(libc6-dev-arm64-cross)
command -v cpio >/dev/null || need_pkgs+=(cpio)
command -v xz >/dev/null || need_pkgs+=(xz-utils)
command -v gzip >/dev/null || need_pkgs+=(gzip)
command -v dpkg-deb >/dev/null || need_pkgs+=(dpkg)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    log "installing ${need_pkgs[*]}"
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -q
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends \
        "${need_pkgs[@]}"
fi
installed_targets=$(rustup target list --installed)
for t in aarch64-unknown-linux-gnu aarch64-unknown-none; do
    if ! grep -qx "$t" <<<"$installed_targets"; then
        log "rustup target add $t"
        rustup target add "$t"
    fi
done

# --- 2. arm64 packages through an apt of our own ----------------------------------------------
aptdir=$cache/apt
mkdir -p "$aptdir/lists/partial" "$aptdir/archives/partial" "$cache/debs"
[ -e "$aptdir/status" ] || : >"$aptdir/status"
# The host's sources (not its state): every Debian source there serves arm64 too.
apt_opts=(
    -o APT::Architecture=arm64 -o APT::Architectures=arm64
    -o APT::Sandbox::User=root
    -o Dir::State="$aptdir" -o Dir::State::Lists="$aptdir/lists"
    -o Dir::State::status="$aptdir/status"
    -o Dir::Cache="$aptdir" -o Dir::Cache::archives="$aptdir/archives"
    -o Dir::Cache::pkgcache="$aptdir/pkgcache.bin" -o Dir::Cache::srcpkgcache="$aptdir/srcpkgcache.bin"
)
apt_updated=0
arm64_update() {
    log "apt-get update (arm64 lists in $aptdir)"
    # A host source that serves no arm64 (a third-party amd64-only one) makes apt-get fail while
    # the Debian lists are fine: go on, the look-ups below say what is missing.
    if ! apt-get "${apt_opts[@]}" -q update >"$aptdir/update.log" 2>&1; then
        grep -E '^(E|W):' "$aptdir/update.log" >&2 || tail -n 5 "$aptdir/update.log" >&2
        log "apt-get update for arm64 reported errors (see above); going on with the lists it got"
    fi
    apt_updated=1
}
# The lists are refreshed once a day; a meta package's dependency names the current version.
if [ -z "$(find "$aptdir/lists" -maxdepth 1 -name '*_Packages*' -mtime -1 2>/dev/null | head -1)" ]; then
    arm64_update
fi

# Prints the real package a meta package depends on (linux-image-6.12-arm64 -> linux-image-6.12.N+debM-arm64).
resolve_meta() {
    local dep
    dep=$(apt-cache "${apt_opts[@]}" depends "$1" 2>/dev/null |
        sed -n 's/^ *Depends: \(linux-image-[^ <>]*\).*/\1/p' | head -1)
    if [ -z "$dep" ] && [ $apt_updated -eq 0 ]; then
        arm64_update
        dep=$(apt-cache "${apt_opts[@]}" depends "$1" 2>/dev/null |
            sed -n 's/^ *Depends: \(linux-image-[^ <>]*\).*/\1/p' | head -1)
    fi
    [ -n "$dep" ] || { log "cannot resolve the arm64 package $1 (is a Debian 12 source configured?)"; exit 1; }
    echo "$dep"
}

# Prints where PKG's current arm64 .deb is kept in the cache (present or not).
deb_path() {
    local pkg=$1 ver
    ver=$(apt-cache "${apt_opts[@]}" show --no-all-versions "$pkg" 2>/dev/null |
        sed -n 's/^Version: //p' | head -1)
    [ -n "$ver" ] || { log "no arm64 package $pkg"; exit 1; }
    # apt encodes ':' of an epoch as %3a in file names.
    echo "$cache/debs/${pkg}_${ver//:/%3a}_arm64.deb"
}

# Prints the path of PKG's arm64 .deb in the cache, downloading it if needed.
fetch_deb() {
    local pkg=$1 ver file
    file=$(deb_path "$pkg")
    ver=${file##*/"$pkg"_}
    ver=${ver%_arm64.deb}
    if [ ! -s "$file" ]; then
        log "downloading $pkg ${ver//%3a/:} (arm64)"
        (cd "$cache/debs" && apt-get "${apt_opts[@]}" -q download "$pkg" >&2)
    fi
    [ -s "$file" ] || { log "apt-get download $pkg did not leave $file"; exit 1; }
    echo "$file"
}

# --- 3. busybox and the base initramfs per kernel ---------------------------------------------
busybox_deb=$(fetch_deb busybox-static)
busybox=$cache/busybox/$(basename "$busybox_deb" .deb)/bin/busybox
if [ ! -x "$busybox" ]; then
    rm -rf "$cache/busybox"
    mkdir -p "$(dirname "$busybox")"
    dpkg-deb --fsys-tarfile "$busybox_deb" | tar -x -C "$(dirname "$busybox")/.." ./bin/busybox
fi

# The kernel modules the guest loads, in load order (paths under the package's kernel/ dir): 9p
# to share the host tree, the sock_diag families crest asks about sockets, nf_tables for the
# network lock.
modules=(
    fs/netfs/netfs net/9p/9pnet net/9p/9pnet_virtio fs/9p/9p
    net/unix/unix_diag net/netlink/netlink_diag net/packet/af_packet_diag
    net/ipv4/inet_diag net/ipv4/tcp_diag net/ipv4/udp_diag net/ipv4/raw_diag
    crypto/crc32c_generic lib/libcrc32c net/netfilter/nfnetlink net/netfilter/nf_tables
)

# Small arm64 packages whose files go into every base initramfs: bash (tests run `bash -c`) with
# its libtinfo, zlib (the JDK's libzip needs it), nft and its libraries (crest's network lock).
extras_dir=$cache/extras
extras=(bash libtinfo6 zlib1g nftables libnftables1 libmnl0 libnftnl11 libjansson4 libedit2
    libxtables12 libbsd0 libmd0 libgmp10)
extras_debs=()
for p in "${extras[@]}"; do
    extras_debs+=("$(fetch_deb "$p")")
done
extras_stamp=$(for d in "${extras_debs[@]}"; do basename "$d"; done)
if [ "$(cat "$extras_dir.list" 2>/dev/null)" != "$extras_stamp" ]; then
    rm -rf "$extras_dir"
    mkdir -p "$extras_dir"
    for d in "${extras_debs[@]}"; do
        dpkg-deb -x "$d" "$extras_dir"
    done
    echo "$extras_stamp" >"$extras_dir.list"
fi

# Debian's arm64 OpenJDK 17 (jre + jdk headless) unpacked into $cache/jdk17/<version>; the runner
# shares its usr/lib/jvm and etc/java-17-openjdk with the guest at those paths.
jdk_root=
if [ $jdk -eq 1 ]; then
    jdk_ver=$(basename "$(deb_path openjdk-17-jdk-headless)" _arm64.deb)
    jdk_root=$cache/jdk17/${jdk_ver#openjdk-17-jdk-headless_}
    if [ ! -x "$jdk_root/usr/lib/jvm/java-17-openjdk-arm64/bin/javac" ]; then
        jdk_debs=("$(fetch_deb openjdk-17-jre-headless)" "$(fetch_deb openjdk-17-jdk-headless)")
        log "unpacking the arm64 OpenJDK 17"
        rm -rf "$cache/jdk17"
        mkdir -p "$jdk_root"
        for d in "${jdk_debs[@]}"; do
            dpkg-deb -x "$d" "$jdk_root"
        done
        # Unpacked (~260 MB), the packages (~110 MB) are not needed any more.
        rm -f "${jdk_debs[@]}"
    fi
fi

# Prepares $cache/kernels/<real package>/{Image,modules/,base.cpio.gz} and prints that dir. The
# package itself (~90 MB) is removed once its Image and modules are out.
prepare_kernel() {
    local flavour=$1 meta real deb dir work m ko name
    case "$flavour" in
        4k) meta=linux-image-6.12-arm64 ;;
        16k) meta=linux-image-6.12-arm64-16k ;;
    esac
    real=$(resolve_meta "$meta")
    dir=$cache/kernels/$real
    if [ ! -s "$dir/Image" ] || [ "$(cat "$dir/modules.list" 2>/dev/null)" != "${modules[*]}" ]; then
        deb=$(fetch_deb "$real")
        log "unpacking $real"
        work=$dir.work
        rm -rf "$work" "$dir"
        mkdir -p "$work/deb" "$dir/modules"
        local patterns=('./boot/vmlinuz-*')
        for m in "${modules[@]}"; do
            patterns+=("*/kernel/$m.ko*")
        done
        # Only the kernel image and those modules (the whole package is ~500 MB unpacked).
        dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work/deb" --wildcards "${patterns[@]}"
        # busybox insmod wants plain .ko files.
        for m in "${modules[@]}"; do
            name=$(basename "$m")
            ko=$(find "$work/deb" -path "*/kernel/$m.ko*" | head -1)
            [ -n "$ko" ] || { log "$real has no module $m"; exit 1; }
            case "$ko" in
                *.xz) xz -dc "$ko" >"$dir/modules/$name.ko" ;;
                *.zst) zstd -dc "$ko" >"$dir/modules/$name.ko" ;;
                *.gz) gzip -dc "$ko" >"$dir/modules/$name.ko" ;;
                *) cp "$ko" "$dir/modules/$name.ko" ;;
            esac
        done
        ko=$(find "$work/deb/boot" -name 'vmlinuz-*' | head -1)
        mv "$ko" "$dir/Image"
        basename "$ko" >"$dir/version"
        echo "${modules[*]}" >"$dir/modules.list"
        rm -rf "$work"
        rm -f "$deb"
        # An older kernel of this flavour (before a security update) is not used any more.
        local old
        for old in "$cache"/kernels/linux-image-*; do
            [ "$old" != "$dir" ] || continue
            case "$flavour:$old" in
                4k:*-arm64 | 16k:*-arm64-16k) rm -rf "$old" ;;
            esac
        done
    fi
    # The base initramfs: busybox, the cross glibc runtime, the modules, tests/aarch64/{init,cc}.
    local sum
    sum=$( (cat "$here/aarch64/init" "$here/aarch64/cc" "$busybox"; echo "${modules[*]}" "$extras_stamp"
        ls -l /usr/aarch64-linux-gnu/lib) | sha256sum | cut -c1-16)
    if [ ! -s "$dir/base.cpio.gz" ] || [ "$(cat "$dir/base.sum" 2>/dev/null)" != "$sum" ]; then
        local r=$dir.root
        rm -rf "$r"
        mkdir -p "$r"/{bin,sbin,dev,proc,sys,tmp,run,etc,root,mnt,modules,lib/aarch64-linux-gnu,usr/bin,usr/sbin,usr/aarch64-linux-gnu}
        cp "$busybox" "$r/bin/busybox"
        local n=0
        for m in "${modules[@]}"; do
            # The init loads them in file-name order.
            cp "$dir/modules/$(basename "$m").ko" "$r/modules/$(printf '%02d' $n)-$(basename "$m").ko"
            n=$((n + 1))
        done
        # The cross glibc runtime as the guest's (not the sanitizers, static archives or crt files).
        local f
        for f in /usr/aarch64-linux-gnu/lib/*.so*; do
            case "$(basename "$f")" in
                lib[ahlt]san.so* | libubsan.so*) continue ;;
            esac
            cp -a "$f" "$r/lib/aarch64-linux-gnu/"
        done
        cp -a "$extras_dir"/lib/aarch64-linux-gnu/*.so* "$extras_dir"/usr/lib/aarch64-linux-gnu/*.so* \
            "$r/lib/aarch64-linux-gnu/" 2>/dev/null || true
        cp "$extras_dir/bin/bash" "$r/bin/bash"
        cp "$extras_dir/usr/sbin/nft" "$r/usr/sbin/nft"
        ln -s aarch64-linux-gnu/ld-linux-aarch64.so.1 "$r/lib/ld-linux-aarch64.so.1"
        ln -s ../../lib/aarch64-linux-gnu "$r/usr/aarch64-linux-gnu/lib"
        ln -s lib "$r/lib64"
        printf '/lib/aarch64-linux-gnu\n' >"$r/etc/ld.so.conf"
        printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$r/etc/passwd"
        printf 'root:x:0:\ntty:x:5:\nnogroup:x:65534:\n' >"$r/etc/group"
        printf '127.0.0.1 localhost\n::1 localhost\n' >"$r/etc/hosts"
        cp "$here/aarch64/init" "$r/init"
        cp "$here/aarch64/cc" "$r/bin/cc"
        chmod 755 "$r/init" "$r/bin/cc"
        (cd "$r" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -1) >"$dir/base.cpio.gz"
        echo "$sum" >"$dir/base.sum"
        rm -rf "$r"
    fi
    echo "$dir"
}

# --- 4. cargo test under the runner, per kernel -----------------------------------------------
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="$here/aarch64/runner.sh"

summaries=()
status=0
out=$(mktemp "${TMPDIR:-/tmp}/crest-aarch64.XXXXXX")
trap 'rm -f "$out"' EXIT
for flavour in "${flavours[@]}"; do
    kdir=$(prepare_kernel "$flavour")
    export CREST_AARCH64_KERNEL=$kdir/Image
    export CREST_AARCH64_INITRD=$kdir/base.cpio.gz
    export CREST_AARCH64_FLAVOUR=$flavour
    export CREST_AARCH64_JDK=$jdk_root
    # 16K granules need a cpu that has them (cortex-a72 has none and hangs silently); emulated
    # pointer authentication triples the run time, so it stays off.
    export CREST_AARCH64_CPU=max,pauth=off
    passed=0
    failed=0
    for run in "${runs[@]}"; do
        if [ "$run" = custom ]; then
            args=("${cargo_args[@]}")
        else
            read -r -a args <<<"$run"
        fi
        log "cargo test --target aarch64-unknown-linux-gnu ${args[*]} ($flavour kernel $(cat "$kdir/version"))"
        set +e
        (cd "$repo" && cargo test --target aarch64-unknown-linux-gnu --no-fail-fast "${args[@]}") 2>&1 |
            tee "$out"
        rc=${PIPESTATUS[0]}
        set -e
        # cargo's per-binary lines: "test result: ok. 12 passed; 0 failed; 1 ignored; ..."
        p=$(sed -n 's/.*test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\1/p' "$out" |
            awk '{s+=$1} END {print s+0}')
        f=$(sed -n 's/.*test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\2/p' "$out" |
            awk '{s+=$1} END {print s+0}')
        # A binary that died without its result line (VM timeout, crash) counts as one failure.
        binaries=$(grep -c '^     Running ' "$out" || true)
        results=$(grep -c 'test result: ' "$out" || true)
        missing=$((binaries - results))
        if [ $missing -gt 0 ]; then
            f=$((f + missing))
            log "$missing test binaries ($flavour) ended without a result line"
        fi
        if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
            f=1
            log "cargo test ($flavour) exited with $rc (build error?) without a failed test"
        fi
        passed=$((passed + p))
        failed=$((failed + f))
    done
    [ "$failed" -eq 0 ] || status=1
    summaries+=("aarch64 ($flavour): $passed passed, $failed failed")
done
for s in "${summaries[@]}"; do
    echo "$s"
done
exit $status
