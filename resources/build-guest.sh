#!/usr/bin/env bash
# Builds the husk guest into a cache outside the checkout:
#   - the guest kernel (vmlinux) from Debian's linux-source-6.1:
#     `make ARCH=x86_64 allnoconfig` with KCONFIG_ALLCONFIG=resources/kernel/husk-guest.config,
#     then `make vmlinux`; every option of the fragment is checked to have landed in .config;
#   - the static husk-agent (x86_64-unknown-linux-gnu, +crt-static);
#   - an uncompressed newc initramfs holding only the agent as /init and its directories.
#
# Cache layout (HUSK_CACHE_DIR, default /var/cache/husk):
#   kbuild/linux-source-6.1_<version>/   unpacked source and build tree, reused by rebuilds
#   kernel-<hash>/{vmlinux,config,inputs}  one built kernel per input hash (fragment,
#                                        linux-source version, toolchain, this recipe)
#   guest/{vmlinux,initramfs.cpio,husk-agent,kernel.config}   the published guest
#                                        (what `husk vmm` boots by default)
#
# Usage: resources/build-guest.sh   (as root on a fresh Debian 12, it apt-get installs what
# it needs; otherwise those packages must already be installed). A cold kernel build takes
# about 10 minutes on 2 cores; with a warm cache the script takes seconds. Concurrent runs
# wait for each other (flock). Prints the published paths as name=path lines on stdout;
# progress goes to stderr.
set -euo pipefail
umask 022

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
readonly SCRIPT_DIR REPO
readonly FRAGMENT=$SCRIPT_DIR/kernel/husk-guest.config
readonly CACHE=${HUSK_CACHE_DIR:-/var/cache/husk}
readonly GUEST=$CACHE/guest
readonly SRC_PKG=linux-source-6.1
readonly SRC_TARBALL=/usr/src/linux-source-6.1.tar.xz
readonly SRC_TOPDIR=linux-source-6.1
readonly AGENT_TARGET=x86_64-unknown-linux-gnu
readonly PACKAGES=(linux-source-6.1 build-essential flex bison bc libelf-dev libssl-dev cpio xz-utils)

log() { printf 'build-guest: %s\n' "$*" >&2; }
die() {
    printf 'build-guest: error: %s\n' "$*" >&2
    exit 1
}

TEMPS=()
cleanup() {
    local t
    for t in "${TEMPS[@]+"${TEMPS[@]}"}"; do rm -rf -- "$t"; done
}
trap cleanup EXIT

# --- (a) packages -------------------------------------------------------------------------

install_packages() {
    local p missing=()
    for p in "${PACKAGES[@]}"; do
        if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
            missing+=("$p")
        fi
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "missing packages: ${missing[*]} (run as root, or apt-get install them)"
    command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get (Debian 12 expected)"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
}

# --- (b) kernel ---------------------------------------------------------------------------

# The option lines of a config fragment: CONFIG_X=value, comments and blanks dropped.
fragment_options() {
    sed -e 's/[[:space:]]*$//' -e '/^CONFIG_[A-Za-z0-9_]*=/!d' "$1"
}

# Fails, naming every option, unless each `CONFIG_X=v` of fragment $1 is in config $2
# (and each `CONFIG_X=n` is not set there).
verify_config() {
    local fragment=$1 config=$2 line opt val got bad=()
    while IFS= read -r line; do
        opt=${line%%=*}
        val=${line#*=}
        got=$(grep -E "^$opt=|^# $opt is not set" "$config" || true)
        if [ "$val" = n ]; then
            case $got in "$opt="*) bad+=("$opt=n, but .config has $got") ;; esac
        elif [ "$got" != "$line" ]; then
            bad+=("$line, but .config has ${got:-no $opt}")
        fi
    done < <(fragment_options "$fragment")
    if [ ${#bad[@]} -gt 0 ]; then
        printf 'build-guest: error: kernel option not applied: %s\n' "${bad[@]}" >&2
        die "$config lacks ${#bad[@]} option(s) of $fragment (unmet dependencies? see 'make menuconfig' help)"
    fi
}

# Unpacks the source (once per package version) into $KTREE.
unpack_source() {
    local root=${KTREE%/*}
    if [ -f "$root/.unpacked" ] && [ -f "$KTREE/Makefile" ]; then
        return 0
    fi
    [ -f "$SRC_TARBALL" ] || die "$SRC_TARBALL not found (is $SRC_PKG installed?)"
    log "unpacking $SRC_TARBALL into $root"
    rm -rf -- "$root"
    mkdir -p "$root"
    tar -xJf "$SRC_TARBALL" -C "$root"
    [ -f "$KTREE/Makefile" ] || die "$SRC_TARBALL did not unpack to $SRC_TOPDIR/"
    touch "$root/.unpacked"
    # Trees of other source versions are dead weight now.
    find "$CACHE/kbuild" -mindepth 1 -maxdepth 1 ! -name "${root##*/}" -exec rm -rf -- {} +
}

# Configures and builds vmlinux in $KTREE; its log goes to $KTREE/../build.log.
build_kernel() {
    local blog=${KTREE%/*}/build.log
    local kmake=(make -C "$KTREE" ARCH=x86_64 KBUILD_BUILD_USER=husk KBUILD_BUILD_HOST=husk)
    log "configuring: allnoconfig + $FRAGMENT"
    "${kmake[@]}" KCONFIG_ALLCONFIG="$FRAGMENT" allnoconfig >"$blog" 2>&1 ||
        { tail -n 40 "$blog" >&2; die "kernel configuration failed (log: $blog)"; }
    verify_config "$FRAGMENT" "$KTREE/.config"
    log "building vmlinux with $(nproc) jobs (5-10 min cold on 2 cores; log: $blog)"
    "${kmake[@]}" -j"$(nproc)" vmlinux >>"$blog" 2>&1 ||
        { tail -n 60 "$blog" >&2; die "kernel build failed (log: $blog)"; }
    verify_config "$FRAGMENT" "$KTREE/.config"
}

# Sets KDIR to the cached kernel for the current inputs, building it if needed.
ensure_kernel() {
    local version recipe toolchain inputs key start tmp
    version=$(dpkg-query -W -f='${Version}' "$SRC_PKG")
    # The recipe is the text of the functions that configure, build and check the kernel.
    recipe=$(declare -f fragment_options verify_config build_kernel)
    toolchain=$(gcc -dumpfullversion -dumpversion; ld --version | sed -n 1p)
    inputs=$(printf 'fragment sha256 %s\nsource %s %s\ntoolchain %s\nrecipe\n%s\n' \
        "$(sha256sum <"$FRAGMENT" | cut -d' ' -f1)" "$SRC_PKG" "$version" \
        "$(echo "$toolchain" | tr '\n' ' ')" "$recipe")
    key=$(printf '%s' "$inputs" | sha256sum | cut -c1-16)
    KDIR=$CACHE/kernel-$key
    KTREE=$CACHE/kbuild/${SRC_PKG}_${version//[^A-Za-z0-9.+~-]/_}/$SRC_TOPDIR

    if [ -f "$KDIR/vmlinux" ] && [ -f "$KDIR/config" ]; then
        log "kernel: cached $KDIR"
        touch "$KDIR" # most recently used, for prune_kernels
        return 0
    fi
    start=$SECONDS
    unpack_source
    build_kernel
    tmp=$(mktemp -d "$CACHE/.kernel-$key.XXXXXX")
    TEMPS+=("$tmp")
    cp "$KTREE/vmlinux" "$tmp/vmlinux"
    cp "$KTREE/.config" "$tmp/config"
    printf '%s\n' "$inputs" >"$tmp/inputs"
    chmod 0755 "$tmp"
    rm -rf -- "$KDIR"
    mv -T "$tmp" "$KDIR"
    log "kernel: built $KDIR in $((SECONDS - start)) s"
}

# Keeps the 3 most recently used kernel-<hash> directories (the current one included).
prune_kernels() {
    local old
    # shellcheck disable=SC2012 # the names are kernel-<hex>: ls's sort by time is safe
    while IFS= read -r old; do
        rm -rf -- "$old"
    done < <(ls -1dt "$CACHE"/kernel-* | tail -n +4)
}

# --- (c) agent ----------------------------------------------------------------------------

# Sets AGENT to the freshly built static husk-agent.
build_agent() {
    local cargo target_dir headers
    cargo=$(command -v cargo || true)
    if [ -z "$cargo" ] && [ -x "${HOME:-/root}/.cargo/bin/cargo" ]; then
        cargo=${HOME:-/root}/.cargo/bin/cargo
    fi
    [ -n "$cargo" ] || die "cargo not found (install Rust with rustup, or put cargo on PATH)"
    log "building husk-agent (static, $AGENT_TARGET)"
    # An explicit --target keeps RUSTFLAGS away from host build scripts and proc macros.
    (cd "$REPO" && RUSTFLAGS="-C target-feature=+crt-static" \
        "$cargo" build --release -p husk-agent --target "$AGENT_TARGET") >&2 ||
        die "cargo build of husk-agent failed"
    target_dir=${CARGO_TARGET_DIR:-$REPO/target}
    case $target_dir in /*) ;; *) target_dir=$REPO/$target_dir ;; esac
    AGENT=$target_dir/$AGENT_TARGET/release/husk-agent
    [ -f "$AGENT" ] || die "cargo did not produce $AGENT"
    headers=$(readelf -lW "$AGENT") || die "readelf cannot read $AGENT"
    case $headers in
    *INTERP*) die "$AGENT is dynamically linked (has PT_INTERP); it must be static to run as /init" ;;
    esac
}

# --- (d) initramfs ------------------------------------------------------------------------

# Writes the initramfs (newc, uncompressed, reproducible) to $1.
build_initramfs() {
    local out=$1 stage
    stage=$(mktemp -d "$CACHE/.initramfs.XXXXXX")
    TEMPS+=("$stage")
    mkdir -p "$stage"/{dev,proc,sys,run,root,tmp}
    chmod 0700 "$stage/root"
    chmod 1777 "$stage/tmp"
    install -m 0755 "$AGENT" "$stage/init"
    # The kernel's built-in initramfs has /dev/console too; ours keeps the archive
    # self-sufficient where mknod is allowed (root outside restricted containers).
    if ! mknod -m 0600 "$stage/dev/console" c 5 1 2>/dev/null; then
        log "note: cannot mknod dev/console here; the kernel's built-in one is used"
    fi
    find "$stage" -exec touch -h -d @0 {} +
    (cd "$stage" && find . -mindepth 1 | sed 's|^\./||' | LC_ALL=C sort |
        cpio --quiet -o -H newc -R 0:0 --reproducible) >"$out"
}

# --- (e) publish --------------------------------------------------------------------------

# Atomically installs file $1 as $GUEST/$2 with mode $3 (unless it is already identical).
publish() {
    local src=$1 dst=$GUEST/$2 mode=$3 tmp
    if [ -f "$dst" ] && cmp -s "$src" "$dst"; then
        chmod "$mode" "$dst"
        return 0
    fi
    tmp=$(mktemp "$GUEST/.$2.XXXXXX")
    TEMPS+=("$tmp")
    cp "$src" "$tmp"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$dst"
}

main() {
    [ "$(uname -m)" = x86_64 ] || die "the guest is built for x86_64 on an x86_64 host (this is $(uname -m))"
    [ -f "$FRAGMENT" ] || die "missing $FRAGMENT"
    mkdir -p "$CACHE" "$CACHE/kbuild" "$GUEST" 2>/dev/null ||
        die "cannot create $CACHE (run as root, or set HUSK_CACHE_DIR to a writable directory)"
    exec 9>"$CACHE/.build-guest.lock"
    if ! flock -n 9; then
        log "waiting for another build-guest.sh run (lock $CACHE/.build-guest.lock)"
        flock 9
    fi

    # Temporaries left by an earlier run that was killed (this run holds the lock).
    rm -rf -- "$CACHE"/.kernel-*.?????? "$CACHE"/.initramfs.?????? \
        "$CACHE"/.initramfs.cpio.?????? "$GUEST"/.*.??????

    local start=$SECONDS cpio
    install_packages
    build_agent
    ensure_kernel
    prune_kernels
    cpio=$(mktemp "$CACHE/.initramfs.cpio.XXXXXX")
    TEMPS+=("$cpio")
    build_initramfs "$cpio"

    publish "$KDIR/vmlinux" vmlinux 0755
    publish "$KDIR/config" kernel.config 0644
    publish "$AGENT" husk-agent 0755
    publish "$cpio" initramfs.cpio 0644
    log "done in $((SECONDS - start)) s"

    printf 'kernel=%s\n' "$GUEST/vmlinux"
    printf 'initramfs=%s\n' "$GUEST/initramfs.cpio"
    printf 'agent=%s\n' "$GUEST/husk-agent"
    printf 'kernel_config=%s\n' "$GUEST/kernel.config"
}

main "$@"
