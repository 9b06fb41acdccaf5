#!/bin/bash
# husk's nested lab (DESIGN.md, "How husk is tested", layer 5).
#
# Boots a QEMU virtual machine with a software CPU (TCG, `-cpu max`, which emulates AMD SVM)
# running Debian's cloud kernel with kvm-amd loaded, so that a VMM inside it has a
# hardware-style /dev/kvm and can boot real Linux guests on hosts whose own /dev/kvm cannot
# (PVM) or that have none. Inside the lab, a scenario script runs as root; then the lab
# powers off.
#
#   tests/lab/lab.sh [-f PATH]... [-e NAME=VALUE]... [-t SECONDS] -- SCENARIO [ARG]...
#
#   -f PATH        carry PATH (a file or a directory) into the lab at the same path; an
#                  executable brings the shared libraries `ldd` names for it
#   -e NAME=VALUE  set this environment variable for the scenario
#   -t SECONDS     kill the lab after this long and fail (default $HUSK_LAB_TIMEOUT or 900)
#   SCENARIO       a POSIX shell script (busybox sh runs it in the lab) with its arguments
#
# The lab's console (kernel messages and the scenario's output) streams to stdout. The
# scenario's exit status comes back on a second serial port, which only /init writes
# ("LAB-EXIT <status>"), and becomes this script's exit status. The lab is a failure,
# exit status 125 with a `lab: FAIL` line, when it times out, when kvm-amd does not load,
# or when no status comes back (hang, crash, panic): never a pass. A lab that stops
# running altogether (no heartbeat from its /init for $HUSK_LAB_STALL s, default 150) is
# reported with QEMU's view of its CPU and booted once more; a second such stop fails.
#
# Environment: HUSK_CACHE_DIR (default /var/cache/husk; the lab kernel and modules are
# cached in $HUSK_CACHE_DIR/lab), HUSK_LAB_TIMEOUT, HUSK_LAB_STALL, HUSK_LAB_MEM_MIB (default 3072),
# HUSK_LAB_SMP (the lab's vCPUs, default 1), HUSK_LAB_KEEP=1 (keep the work directory).
# Installs what it needs from Debian: qemu-system-x86, busybox-static, cpio.
set -euo pipefail

LAB_FAIL=125
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${HUSK_CACHE_DIR:-/var/cache/husk}/lab
TIMEOUT=${HUSK_LAB_TIMEOUT:-900}
MEM_MIB=${HUSK_LAB_MEM_MIB:-3072}
SMP=${HUSK_LAB_SMP:-1}

CLEANUP=() # directories to remove when the harness dies
die() {
    echo "lab: FAIL: $*" >&2
    if [ ${#CLEANUP[@]} -gt 0 ]; then rm -rf "${CLEANUP[@]}"; fi
    exit "$LAB_FAIL"
}

usage() {
    sed -n '/^#   tests/,/^#   SCENARIO/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

files=()
envs=()
while [ $# -gt 0 ]; do
    case "$1" in
        -f) [ $# -ge 2 ] || usage; files+=("$2"); shift 2 ;;
        -e) [ $# -ge 2 ] || usage
            [[ "$2" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "-e wants NAME=VALUE, not '$2'"
            envs+=("$2"); shift 2 ;;
        -t) [ $# -ge 2 ] || usage; TIMEOUT=$2; shift 2 ;;
        --) shift; break ;;
        -h|--help) usage ;;
        *) break ;;
    esac
done
[ $# -ge 1 ] || usage
SCENARIO=$1
shift
[ -f "$SCENARIO" ] || die "no scenario script $SCENARIO"
[[ "$TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "the timeout must be a number of seconds, not '$TIMEOUT'"
[ "$(id -u)" = 0 ] || die "the lab needs root (it installs Debian packages and writes $CACHE)"

# shellcheck source-path=SCRIPTDIR source=../../scripts/lib.sh
. "$REPO/scripts/lib.sh"
apt_install qemu-system-x86 busybox-static cpio
BUSYBOX=/bin/busybox
if ldd "$BUSYBOX" >/dev/null 2>&1; then
    die "$BUSYBOX is not the static busybox (install busybox-static)"
fi

# The lab kernel: Debian's cloud kernel (the package linux-image-cloud-amd64 depends on)
# and its modules, downloaded once into $CACHE/kernel: irqbypass, kvm, kvm-amd for the
# VMMs under test, overlay for containerd's overlayfs snapshotter (the containerd
# scenario) and tun for virtio-net's taps (the virtio scenario's net test, bench-net);
# veth, sch_ingress, cls_u32 and act_mirred for a pod network wired the tcfilter way (the
# containerd scenario). A cache from before a module was added here is downloaded again.
MODULES="irqbypass kvm kvm-amd overlay tun veth sch_ingress cls_u32 act_mirred"
lab_kernel_complete() {
    [ -f "$1/complete" ] || return 1
    local mod
    for mod in $MODULES; do
        [ -f "$1/$mod.ko" ] || return 1
    done
}
fetch_lab_kernel() {
    local dir=$CACHE/kernel
    lab_kernel_complete "$dir" && return 0
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock"
    flock 9
    if lab_kernel_complete "$dir"; then
        exec 9>&-
        return 0
    fi
    local tmp
    tmp=$(mktemp -d "$CACHE/.download.XXXXXX")
    CLEANUP+=("$tmp")
    chmod 755 "$tmp" # apt's _apt user downloads into it
    # With the package lists as they are first; after `apt-get update` if that fails (no
    # lists yet, or lists naming a version the mirror no longer has).
    local pkg="" attempt
    for attempt in cached updated; do
        if [ "$attempt" = updated ]; then apt-get update -qq || true; fi
        pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
            awk '/Depends: linux-image-[0-9]/ { print $2; exit }') || true
        [ -n "$pkg" ] || continue
        echo "lab: downloading the lab kernel $pkg into $dir" >&2
        if (cd "$tmp" && apt-get download -q "$pkg" >"$tmp/apt.log" 2>&1); then
            break
        fi
        cat "$tmp/apt.log" >&2
        pkg=""
    done
    [ -n "$pkg" ] || die "cannot download the package that linux-image-cloud-amd64 depends on"
    dpkg-deb -x "$tmp"/*.deb "$tmp/x"
    mkdir -p "$tmp/kernel"
    local vmlinuz
    vmlinuz=$(find "$tmp/x/boot" -name 'vmlinuz-*' | head -n 1)
    [ -n "$vmlinuz" ] || die "$pkg has no /boot/vmlinuz-*"
    cp "$vmlinuz" "$tmp/kernel/vmlinuz"
    local mod file
    for mod in $MODULES; do
        file=$(find "$tmp/x/lib/modules" -name "$mod.ko" -o -name "$mod.ko.xz" | head -n 1)
        [ -n "$file" ] || die "$pkg has no module $mod"
        case "$file" in
            *.xz) xz -dc "$file" >"$tmp/kernel/$mod.ko" ;;
            *) cp "$file" "$tmp/kernel/$mod.ko" ;;
        esac
    done
    dpkg-deb -f "$tmp"/*.deb Package Version >"$tmp/kernel/PACKAGE"
    touch "$tmp/kernel/complete"
    rm -rf "$dir"
    mv "$tmp/kernel" "$dir"
    rm -rf "$tmp"
    CLEANUP=()
    exec 9>&-
}

started=$EPOCHREALTIME
fetch_lab_kernel

WORK=$(mktemp -d "${TMPDIR:-/tmp}/husk-lab.XXXXXX")
if [ "${HUSK_LAB_KEEP:-0}" = 1 ]; then
    echo "lab: work directory $WORK (kept)" >&2
else
    trap 'rm -rf "$WORK"' EXIT
fi
ROOT=$WORK/root
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,etc,lab/modules}

cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in $("$BUSYBOX" --list-full); do
    [ -e "$ROOT/$applet" ] || ln -s /bin/busybox "$ROOT/$applet"
done
cp "$CACHE"/kernel/*.ko "$ROOT/lab/modules/"

# carry PATH: copies it (dereferenced) to the same path in the lab, and for a dynamically
# linked executable also every shared library ldd names.
carry() {
    local path=$1
    [ -e "$path" ] || die "cannot carry $path into the lab: it does not exist"
    case "$path" in /*) ;; *) die "carry wants absolute paths, not $path" ;; esac
    mkdir -p "$ROOT$(dirname "$path")"
    if [ -d "$path" ]; then
        cp -a "$path/." "$ROOT$path/"
        return 0
    fi
    rm -f "$ROOT$path" # it may be one of busybox's applet links
    cp -L "$path" "$ROOT$path"
    if [ -x "$path" ] && ldd "$path" >/dev/null 2>&1; then
        local lib
        for lib in $(ldd "$path" | grep -o '/[^ ]*'); do
            [ -e "$ROOT$lib" ] && continue
            mkdir -p "$ROOT$(dirname "$lib")"
            cp -L "$lib" "$ROOT$lib"
        done
    fi
}
for f in "${files[@]}"; do
    carry "$f"
done
cp "$SCENARIO" "$ROOT/lab/scenario"

# The scenario's environment and arguments, quoted for the lab's shell.
{
    for e in "${envs[@]}"; do
        printf 'export %s=%q\n' "${e%%=*}" "${e#*=}"
    done
    printf 'set --'
    for a in "$@"; do printf ' %q' "$a"; done
    printf '\n'
} >"$ROOT/lab/env"

cat >"$ROOT/init" <<'INIT'
#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# /tmp and /run stay on the initramfs (already in RAM): carried files may live there.
mkdir -p /dev/pts /dev/shm /root
mount -t devpts devpts /dev/pts

# The heartbeat on the third serial port, which the host watches (boot_lab in lab.sh).
beat=$(sed -n 's/.*husk_lab\.beat=\([0-9][0-9]*\).*/\1/p' /proc/cmdline)
(while :; do echo "beat $(cut -d' ' -f1 /proc/uptime)" >/dev/ttyS2; sleep "${beat:-10}"; done) \
    </dev/null >/dev/null 2>&1 &

# finish STATUS: reports STATUS on the result port (ttyS1) and powers off. Closing a serial
# tty waits until its output is sent, so nothing written before is lost.
finish() {
    echo "LAB-EXIT $1"
    exec </dev/null >/dev/null 2>&1
    echo "LAB-EXIT $1" >/dev/ttyS1
    poweroff -f
    reboot -f
}

for m in irqbypass kvm kvm-amd; do
    insmod /lab/modules/$m.ko || { echo "lab: FAIL: insmod $m.ko failed"; finish 125; }
done
[ -c /dev/kvm ] || { echo "lab: FAIL: no /dev/kvm after loading kvm-amd"; finish 125; }
# overlayfs, for containerd's snapshotter; a scenario that needs it fails without it.
insmod /lab/modules/overlay.ko || echo "lab: warning: insmod overlay.ko failed"
# tun, for the taps of virtio-net; veth and the tc pieces of a pod network. A scenario
# that needs one fails without it.
for m in tun veth sch_ingress cls_u32 act_mirred; do
    insmod /lab/modules/$m.ko || echo "lab: warning: insmod $m.ko failed"
done
echo "lab: kernel $(uname -r) with kvm-amd up after $(cut -d' ' -f1 /proc/uptime) s"
. /lab/env
cd /tmp
sh /lab/scenario "$@" </dev/null
rc=$?
echo "lab: scenario finished at $(cut -d' ' -f1 /proc/uptime) s of lab uptime"
finish $rc
INIT
chmod 755 "$ROOT/init"

(cd "$ROOT" && find . | cpio -o -H newc --quiet) >"$WORK/lab.cpio"
size_mib=$(( $(stat -c %s "$WORK/lab.cpio") / 1048576 ))
prepared=$EPOCHREALTIME
echo "lab: initramfs of ${size_mib} MiB ready in $(awk "BEGIN { printf \"%.1f\", $prepared - $started }") s; booting the lab (timeout ${TIMEOUT} s)" >&2

# One boot of the lab. The lab's /init writes a heartbeat to a third serial port every
# $BEAT s; a lab whose heartbeat stops for $STALL s has a kernel that no longer runs at all
# (its own timeouts, which would end a hung scenario, cannot fire either). That has been
# seen once in CI: the first nested guest boot never printed, and the lab sat silent until
# its timeout. Such a wedge of the emulated CPU is reported with QEMU's view of the CPU
# and the lab is booted once more; a second wedge fails.
BEAT=10
STALL=${HUSK_LAB_STALL:-150}
boot_lab() {
    : >"$WORK/result"
    : >"$WORK/heartbeat"
    rm -f "$WORK/qemu.rc" "$WORK/monitor.in" "$WORK/monitor.out"
    mkfifo "$WORK/monitor.in" "$WORK/monitor.out"
    # QEMU opens the monitor's FIFOs at start-up: keep both ends open here, so that it
    # neither blocks on them nor sees them closed.
    exec 7<>"$WORK/monitor.in" 8<>"$WORK/monitor.out"
    {
        timeout -k 10 "$TIMEOUT" qemu-system-x86_64 \
            -M q35,accel=tcg -cpu max -m "$MEM_MIB" -smp "$SMP" \
            -nodefaults -no-user-config -display none -no-reboot \
            -chardev stdio,id=console,signal=off -serial chardev:console \
            -chardev file,id=result,path="$WORK/result" -serial chardev:result \
            -chardev file,id=heartbeat,path="$WORK/heartbeat" -serial chardev:heartbeat \
            -chardev pipe,id=monitor,path="$WORK/monitor" -mon chardev=monitor,mode=readline \
            -kernel "$CACHE/kernel/vmlinuz" -initrd "$WORK/lab.cpio" \
            -append "console=ttyS0 panic=-1 quiet husk_lab.beat=$BEAT" \
            </dev/null 2>"$WORK/qemu.err"
        echo $? >"$WORK/qemu.rc"
    } | tr -d '\r' &
    local job=$! size=0 last_size=0 last_change=$SECONDS
    WEDGED=0
    while [ ! -f "$WORK/qemu.rc" ]; do
        sleep 2
        size=$(stat -c %s "$WORK/heartbeat")
        if [ "$size" != "$last_size" ]; then
            last_size=$size
            last_change=$SECONDS
        elif [ $((SECONDS - last_change)) -ge "$STALL" ] && [ ! -f "$WORK/qemu.rc" ]; then
            WEDGED=1
            echo "lab: the lab stopped running: no heartbeat from its /init for $STALL s" >&2
            echo "lab: QEMU's view of the CPU:" >&2
            printf 'info registers\n' >&7
            sleep 2
            timeout 2 cat <&8 | tr -d '\r' | grep -E '^(RIP|RAX|CS |EFER|CR0)' |
                sed 's/^/lab: qemu: /' >&2 || true
            printf 'quit\n' >&7
            break
        fi
    done
    wait "$job" || true
    exec 7>&- 8>&-
    qemu_rc=$(cat "$WORK/qemu.rc" 2>/dev/null || echo 137)
}

set +e
boot_lab
if [ "$WEDGED" = 1 ]; then
    echo "lab: booting the lab once more (one wedge of QEMU's software CPU is tolerated)" >&2
    boot_lab
    if [ "$WEDGED" = 1 ]; then
        echo "lab: FAIL: the lab stopped running twice" >&2
        exit "$LAB_FAIL"
    fi
fi
set -e
finished=$EPOCHREALTIME
elapsed=$(awk "BEGIN { printf \"%.1f\", $finished - $prepared }")

status=$(tr -d '\r\000' <"$WORK/result" | sed -n 's/^LAB-EXIT \([0-9][0-9]*\)$/\1/p' | tail -n 1)
if [ "$qemu_rc" = 124 ] || [ "$qemu_rc" = 137 ]; then
    echo "lab: FAIL: the lab did not finish within ${TIMEOUT} s and was killed (${elapsed} s)" >&2
    exit "$LAB_FAIL"
fi
if [ -z "$status" ]; then
    echo "lab: FAIL: the lab reported no scenario status (QEMU exit status $qemu_rc after ${elapsed} s)" >&2
    if [ -s "$WORK/qemu.err" ]; then sed 's/^/lab: qemu: /' "$WORK/qemu.err" >&2; fi
    exit "$LAB_FAIL"
fi
echo "lab: the lab ran for ${elapsed} s (boot, scenario, power-off); scenario exit status $status" >&2
exit "$status"
