#!/bin/bash
# Runs a group of Linux-guest scenarios (DESIGN.md, layer 5): directly on a host with
# hardware KVM, otherwise inside the nested lab (tests/lab/lab.sh), in one lab boot.
#
#   tests/lab/run.sh linux-boot        the test: the built guest boots under husk vmm with
#                                      1 and 2 vCPUs to `husk-agent ready` and a clean exit,
#                                      seeing the configured CPUs and memory
#   tests/lab/run.sh bench-boot [RUNS] the benchmark (not a test): the same guest booted to
#                                      agent-ready-and-exit by husk and by QEMU microvm,
#                                      RUNS times each (default 3), interleaved; medians
#                                      and the ratio husk/QEMU
#   tests/lab/run.sh bench-blk [RUNS]  the benchmark (not a test): fio in the device-test
#                                      guest (built with fio) on the raw virtio-blk disk
#                                      of husk and of QEMU microvm (cache=writeback), the
#                                      same 256 MiB raw image, RUNS times each (default 3),
#                                      interleaved; per workload median IOPS and MB/s and
#                                      the ratio husk/QEMU
#   tests/lab/run.sh --kvm-situation   prints "hardware", or why this host cannot boot a
#                                      standard Linux guest (for scripts that choose)
#   tests/lab/run.sh selftest          the lab itself: /dev/kvm and QEMU microvm booting the
#                                      guest kernel with a busybox initramfs (and husk too)
#   tests/lab/run.sh agent             the test: the agent suite (guest-agent/tests/
#                                      agent_suite.rs) against the agent as PID 1 of the
#                                      built guest under husk vmm, over vsock, one VM per
#                                      test, cgroup v2 limits, OOM events and stats included
#   tests/lab/run.sh runtime [RUNS]    the test: the husk command line with the builtin
#                                      backend (husk run from the default image and from a
#                                      bundle, the runc-style lifecycle, kill -9 of a sandbox
#                                      then delete --force), then RUNS (default 3) husk run
#                                      vs runc run of one bundle as FIGURE: lines
#   tests/lab/run.sh containerd [RUNS] the test: husk's containerd shim (containerd-shim-
#                                      husk-v2) with the builtin backend under a private
#                                      containerd driven by ctr (ctr run --rm, a detached
#                                      task with exec/ps/kill/delete, a pod of two
#                                      containers in one shim, a VM on a pod network
#                                      namespace wired by tc), then RUNS (default 3) ctr
#                                      run --rm with husk vs runc as FIGURE: lines
#   tests/lab/run.sh virtio [TEST]...  the test: Linux's virtio-blk, virtio-vsock and
#                                      virtio-net drivers against husk's devices, with the
#                                      device-test guest (tests/lab/guest); TESTs: blk fsync
#                                      vsock hotplug net (default: all, each one guest boot;
#                                      hotplug: drives put into and taken out of spare slots
#                                      of the running VM; net: two interfaces on taps in a
#                                      network namespace of the lab, TCP both ways, MTU 9000,
#                                      a UDP flood that must not starve blk and vsock);
#                                      prints FIGURE: lines with the vsock and net rates
#   tests/lab/run.sh bench-net [RUNS]  the benchmark (not a test, not in CI): TCP guest ->
#                                      lab host and lab host -> guest through husk's
#                                      virtio-net and QEMU microvm's (tap, vhost=off), the
#                                      same guest, RUNS times each (default 3), interleaved;
#                                      median MB/s each way and the ratio husk/QEMU
#
# Exit status: 0 when every check passed (for bench-boot, bench-blk and bench-net: every
# run was valid), else
# non-zero; 125 when the lab itself failed (timeout, no status).
#
# Environment:
#   HUSK_LAB_MODE      auto (default): direct on hardware KVM, else the lab; `lab` or
#                      `direct` to force one
#   HUSK_BIN           the husk binary to test (default: target/release/husk, built first
#                      with `cargo build --release -p husk-runtime`)
#   HUSK_CACHE_DIR     default /var/cache/husk; the guest is $HUSK_CACHE_DIR/guest/vmlinux
#                      and initramfs.cpio (resources/build-guest.sh builds them)
#   HUSK_GUEST_KERNEL, HUSK_GUEST_INITRD   override those two paths
#   HUSK_BOOT_TIMEOUT  seconds after which one guest boot is killed and failed (default 300;
#                      a boot takes ~3 s in the lab)
#   HUSK_VSOCK_BYTES, HUSK_VSOCK_CONNS   virtio: the size of each big vsock transfer (default
#                      268435456) and the number of concurrent connections (default 64)
#   HUSK_FIO_RUNTIME, HUSK_FIO_ENGINE    bench-blk: seconds per fio workload (default 5) and
#                      fio's I/O engine in the guest (default libaio; io_uring, psync)
#   HUSK_NET_BYTES     virtio net: the size of each big TCP transfer (default 1073741824);
#                      bench-net: of each measured transfer (default 268435456)
#   HUSK_NET_TIMEOUT   virtio net: seconds the guest's part may take (default 600)
#   and lab.sh's HUSK_LAB_TIMEOUT, HUSK_LAB_MEM_MIB, HUSK_LAB_SMP, HUSK_LAB_KEEP.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE_DIR=${HUSK_CACHE_DIR:-/var/cache/husk}
GUEST_KERNEL=${HUSK_GUEST_KERNEL:-$CACHE_DIR/guest/vmlinux}
GUEST_INITRD=${HUSK_GUEST_INITRD:-$CACHE_DIR/guest/initramfs.cpio}
MODE=${HUSK_LAB_MODE:-auto}
# shellcheck source-path=SCRIPTDIR source=../../scripts/lib.sh
. "$REPO/scripts/lib.sh" # apt_install

die() {
    echo "lab: FAIL: $*" >&2
    exit 1
}

usage() {
    sed -n '/^#   tests\/lab\/run.sh linux-boot/,/^# Exit status/p' "${BASH_SOURCE[0]}" |
        sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

# Hardware KVM: /dev/kvm exists, the CPU has VT-x or AMD-V, and /dev/kvm is not PVM's.
kvm_situation() {
    if [ ! -c /dev/kvm ]; then
        echo "this host has no /dev/kvm"
    elif [ -d /sys/module/kvm_pvm ]; then
        echo "this host's /dev/kvm is PVM (kvm_pvm), which cannot boot a standard Linux guest"
    elif ! grep -qwE 'vmx|svm' /proc/cpuinfo; then
        echo "this host's CPU has neither vmx nor svm"
    else
        echo hardware
    fi
}

[ $# -ge 1 ] || usage
# For scripts that choose between running directly and the lab.
if [ "$1" = --kvm-situation ]; then
    kvm_situation
    exit 0
fi
GROUP=$1
shift
case "$GROUP" in
    linux-boot | selftest | agent) [ $# -eq 0 ] || usage ;;
    virtio)
        for t in "$@"; do
            case "$t" in blk | fsync | vsock | hotplug | net) ;; *) usage ;; esac
        done
        ;;
    bench-boot | bench-blk | bench-net | runtime | containerd)
        RUNS=${1:-3}
        if [ $# -gt 1 ] || ! [[ "$RUNS" =~ ^[1-9][0-9]*$ ]]; then usage; fi
        if [ "$GROUP" = bench-net ]; then
            [[ "${HUSK_NET_BYTES:-268435456}" =~ ^[1-9][0-9]*$ ]] ||
                die "HUSK_NET_BYTES must be a number of bytes"
        fi
        if [ "$GROUP" = bench-blk ]; then
            [[ "${HUSK_FIO_RUNTIME:-5}" =~ ^[1-9][0-9]*$ ]] ||
                die "HUSK_FIO_RUNTIME must be a number of seconds"
            [[ "${HUSK_FIO_ENGINE:-libaio}" =~ ^[a-z_0-9]+$ ]] ||
                die "HUSK_FIO_ENGINE must be the name of one of fio's engines"
        fi
        ;;
    *) usage ;;
esac

situation=$(kvm_situation)
case "$MODE" in
    auto) if [ "$situation" = hardware ]; then where=direct; else where=lab; fi ;;
    lab | direct) where=$MODE ;;
    *) die "HUSK_LAB_MODE must be auto, lab or direct, not '$MODE'" ;;
esac
if [ "$where" = direct ]; then
    [ "$situation" = hardware ] ||
        echo "lab: warning: running directly although $situation" >&2
    echo "lab: running $GROUP directly on this host's /dev/kvm" >&2
else
    if [ "$situation" = hardware ]; then
        echo "lab: running $GROUP in the nested lab (HUSK_LAB_MODE=lab)" >&2
    else
        echo "lab: running $GROUP in the nested lab: $situation" >&2
    fi
fi

husk_binary() {
    if [ -n "${HUSK_BIN:-}" ]; then
        if [ ! -f "$HUSK_BIN" ] || [ ! -x "$HUSK_BIN" ]; then
            die "HUSK_BIN=$HUSK_BIN is not an executable file"
        fi
        realpath "$HUSK_BIN"
        return
    fi
    (cd "$REPO" && cargo build --release --quiet -p husk-runtime) >&2 ||
        die "cargo build --release -p husk-runtime failed"
    local bin=${CARGO_TARGET_DIR:-$REPO/target}/release/husk
    [ -x "$bin" ] || die "the build left no $bin"
    echo "$bin"
}

need_guest() {
    [ -f "$GUEST_KERNEL" ] ||
        die "no guest kernel $GUEST_KERNEL: build it with resources/build-guest.sh"
    [ -f "$GUEST_INITRD" ] ||
        die "no guest initramfs $GUEST_INITRD: build it with resources/build-guest.sh"
}

# The scenario's files and environment, the same whether it runs in the lab or not.
gnu_date=$(command -v date) || die "GNU coreutils' date is needed"
gnu_timeout=$(command -v timeout) || die "GNU coreutils' timeout is needed"
FILES=("$HERE/scenarios/lib.sh" "$gnu_date" "$gnu_timeout")
ENVS=("HUSK_LAB_LIB=$HERE/scenarios/lib.sh" "GNU_DATE=$gnu_date" "GNU_TIMEOUT=$gnu_timeout"
    "BOOT_TIMEOUT=${HUSK_BOOT_TIMEOUT:-300}")
ARGS=()
WORK=$(mktemp -d "${TMPDIR:-/tmp}/husk-lab-run.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

qemu_files() {
    local qemu
    qemu=$(command -v qemu-system-x86_64) || die "qemu-system-x86_64 is not installed"
    # microvm loads its firmware (qboot) from ../share/qemu next to the binary.
    FILES+=("$qemu" "$(dirname "$qemu")/../share/qemu/bios-microvm.bin")
    ENVS+=("QEMU=$qemu")
}

case "$GROUP" in
    linux-boot)
        scenario=$HERE/scenarios/linux-boot.sh
        need_guest
        husk=$(husk_binary)
        FILES+=("$husk" "$GUEST_KERNEL" "$GUEST_INITRD")
        ENVS+=("HUSK=$husk" "GUEST_KERNEL=$GUEST_KERNEL" "GUEST_INITRD=$GUEST_INITRD")
        ;;
    bench-boot)
        scenario=$HERE/scenarios/bench-boot.sh
        need_guest
        apt_install qemu-system-x86
        husk=$(husk_binary)
        qemu_files
        FILES+=("$husk" "$GUEST_KERNEL" "$GUEST_INITRD")
        ENVS+=("HUSK=$husk" "GUEST_KERNEL=$GUEST_KERNEL" "GUEST_INITRD=$GUEST_INITRD" "RUNS=$RUNS")
        ;;
    bench-blk)
        scenario=$HERE/scenarios/bench-blk.sh
        [ -f "$GUEST_KERNEL" ] ||
            die "no guest kernel $GUEST_KERNEL: build it with resources/build-guest.sh"
        apt_install qemu-system-x86 busybox-static cpio gcc libc6-dev fio
        # The device-test guest with fio and the libraries it needs.
        "$HERE/guest/build.sh" --fio "$WORK/guest" >/dev/null ||
            die "tests/lab/guest/build.sh --fio failed"
        husk=$(husk_binary)
        qemu_files
        # microvm with acpi=off (the guest kernel has no ACPI) loads qboot.rom instead.
        FILES+=("$(dirname "${FILES[-1]}")/qboot.rom")
        FILES+=("$husk" "$GUEST_KERNEL" "$WORK/guest/devtest.cpio")
        ENVS+=("HUSK=$husk" "GUEST_KERNEL=$GUEST_KERNEL" "FIO_INITRD=$WORK/guest/devtest.cpio"
            "RUNS=$RUNS" "FIO_RUNTIME=${HUSK_FIO_RUNTIME:-5}"
            "FIO_ENGINE=${HUSK_FIO_ENGINE:-libaio}")
        ;;
    bench-net)
        scenario=$HERE/scenarios/bench-net.sh
        [ -f "$GUEST_KERNEL" ] ||
            die "no guest kernel $GUEST_KERNEL: build it with resources/build-guest.sh"
        apt_install qemu-system-x86 busybox-static cpio gcc libc6-dev iproute2
        "$HERE/guest/build.sh" "$WORK/guest" >/dev/null ||
            die "tests/lab/guest/build.sh failed"
        husk=$(husk_binary)
        qemu_files
        # microvm with acpi=off (the guest kernel has no ACPI) loads qboot.rom instead.
        FILES+=("$(dirname "${FILES[-1]}")/qboot.rom")
        iproute2=$(realpath "$(PATH=$PATH:/usr/sbin:/sbin command -v ip)") ||
            die "ip is not installed (iproute2)"
        FILES+=("$husk" "$GUEST_KERNEL" "$WORK/guest/devtest.cpio" "$WORK/guest/labtool"
            "$iproute2")
        ENVS+=("HUSK=$husk" "GUEST_KERNEL=$GUEST_KERNEL"
            "DEVTEST_INITRD=$WORK/guest/devtest.cpio" "LABTOOL=$WORK/guest/labtool"
            "IPROUTE2=$iproute2" "RUNS=$RUNS" "NET_BYTES=${HUSK_NET_BYTES:-268435456}")
        ;;
    selftest)
        scenario=$HERE/scenarios/selftest.sh
        [ -f "$GUEST_KERNEL" ] ||
            die "no guest kernel $GUEST_KERNEL: build it with resources/build-guest.sh (or set HUSK_GUEST_KERNEL)"
        apt_install qemu-system-x86 busybox-static cpio
        ldd /bin/busybox >/dev/null 2>&1 && die "/bin/busybox is not the static busybox"
        # A busybox initramfs whose /init reports the CPUs and memory the guest sees.
        root=$WORK/guest-root
        mkdir -p "$root"/{bin,proc}
        cp /bin/busybox "$root/bin/busybox"
        for applet in sh mount grep sed cat reboot; do ln -s busybox "$root/bin/$applet"; done
        cat >"$root/init" <<'INIT'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
echo "lab-guest: cpus=$(grep -c ^processor /proc/cpuinfo) mem_total_kib=$(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo)"
reboot -f
INIT
        chmod 755 "$root/init"
        (cd "$root" && find . | cpio -o -H newc --quiet) >"$WORK/busybox-guest.cpio"
        qemu_files
        FILES+=("$GUEST_KERNEL" "$WORK/busybox-guest.cpio")
        ENVS+=("GUEST_KERNEL=$GUEST_KERNEL" "GUEST_INITRD=$WORK/busybox-guest.cpio")
        if [ "${HUSK_SELFTEST_HUSK:-1}" = 1 ]; then
            husk=$(husk_binary)
            FILES+=("$husk")
            ENVS+=("HUSK=$husk")
        fi
        ;;
    agent)
        scenario=$HERE/scenarios/agent.sh
        need_guest
        apt_install e2fsprogs busybox-static
        mkfs=$(PATH=$PATH:/usr/sbin:/sbin command -v mkfs.ext4) ||
            die "mkfs.ext4 is not installed (e2fsprogs)"
        # The suite's test binary, as cargo test builds it.
        suite=$(cd "$REPO" && cargo test --quiet -p husk-agent --test agent_suite --no-run \
            --message-format=json |
            sed -n 's/.*"executable":"\([^"]*agent_suite[^"]*\)".*/\1/p' | tail -n 1) ||
            die "cargo test -p husk-agent --test agent_suite --no-run failed"
        if [ -z "$suite" ] || [ ! -x "$suite" ]; then
            die "cargo test -p husk-agent --test agent_suite --no-run built no test binary"
        fi
        husk=$(husk_binary)
        FILES+=("$suite" "$husk" "$GUEST_KERNEL" "$GUEST_INITRD" "$mkfs")
        ENVS+=("AGENT_SUITE=$suite" "HUSK=$husk" "GUEST_KERNEL=$GUEST_KERNEL"
            "GUEST_INITRD=$GUEST_INITRD" "MKFS_EXT4=$mkfs")
        ;;
    runtime)
        scenario=$HERE/scenarios/runtime.sh
        need_guest
        apt_install e2fsprogs busybox-static runc
        mkfs=$(PATH=$PATH:/usr/sbin:/sbin command -v mkfs.ext4) ||
            die "mkfs.ext4 is not installed (e2fsprogs)"
        HUSK_CACHE_DIR=$CACHE_DIR "$REPO/resources/build-busybox-image.sh" >&2 ||
            die "resources/build-busybox-image.sh failed"
        husk=$(husk_binary)
        FILES+=("$husk" "$GUEST_KERNEL" "$GUEST_INITRD" "$mkfs" /bin/busybox
            "$CACHE_DIR/images/busybox.tar")
        ENVS+=("HUSK=$husk" "GUEST_KERNEL=$GUEST_KERNEL" "GUEST_INITRD=$GUEST_INITRD"
            "MKFS_EXT4=$mkfs" "BUSYBOX=/bin/busybox" "BUSYBOX_IMAGE=$CACHE_DIR/images/busybox.tar"
            "RUNS=$RUNS")
        if runc=$(command -v runc); then
            FILES+=("$runc")
            ENVS+=("RUNC=$runc")
        fi
        ;;
    containerd)
        scenario=$HERE/scenarios/containerd.sh
        need_guest
        apt_install e2fsprogs busybox-static containerd runc iproute2
        mkfs=$(PATH=$PATH:/usr/sbin:/sbin command -v mkfs.ext4) ||
            die "mkfs.ext4 is not installed (e2fsprogs)"
        tools=()
        for tool in containerd ctr runc containerd-shim-runc-v2 ip tc; do
            path=$(PATH=$PATH:/usr/sbin:/sbin command -v "$tool") ||
                die "$tool is not installed (containerd, runc, iproute2)"
            # The file itself: /usr/sbin/ip is a link to /bin/ip.
            tools+=("$(realpath "$path")")
        done
        HUSK_CACHE_DIR=$CACHE_DIR "$REPO/resources/build-busybox-image.sh" >&2 ||
            die "resources/build-busybox-image.sh failed"
        husk=$(husk_binary)
        # The shim is built next to husk (`cargo build --release -p husk-runtime`).
        shim=$(dirname "$husk")/containerd-shim-husk-v2
        [ -x "$shim" ] || die "no $shim next to $husk: cargo build --release -p husk-runtime builds both"
        FILES+=("$husk" "$shim" "$GUEST_KERNEL" "$GUEST_INITRD" "$mkfs"
            "$CACHE_DIR/images/busybox.tar" "${tools[@]}")
        ENVS+=("HUSK=$husk" "HUSK_SHIM=$shim" "GUEST_KERNEL=$GUEST_KERNEL"
            "GUEST_INITRD=$GUEST_INITRD" "MKFS_EXT4=$mkfs"
            "BUSYBOX_IMAGE=$CACHE_DIR/images/busybox.tar" "CONTAINERD=${tools[0]}"
            "CTR=${tools[1]}" "RUNC=${tools[2]}" "RUNC_SHIM=${tools[3]}"
            "IPROUTE2=${tools[4]}" "TC=${tools[5]}" "RUNS=$RUNS")
        ;;
    virtio)
        scenario=$HERE/scenarios/virtio.sh
        [ -f "$GUEST_KERNEL" ] ||
            die "no guest kernel $GUEST_KERNEL: build it with resources/build-guest.sh"
        apt_install busybox-static cpio e2fsprogs gcc libc6-dev iproute2
        # The device-test guest: labtool (static, for both ends) and its initramfs.
        "$HERE/guest/build.sh" "$WORK/guest" >/dev/null ||
            die "tests/lab/guest/build.sh failed"
        tools=()
        for tool in mkfs.ext4 debugfs e2fsck; do
            path=$(PATH=$PATH:/usr/sbin:/sbin command -v "$tool") ||
                die "$tool is not installed (e2fsprogs)"
            tools+=("$path")
        done
        husk=$(husk_binary)
        # hotplug's host side: husk-vmm's example that attaches and detaches drives when
        # the guest asks on its console.
        (cd "$REPO" && cargo build --release --quiet -p husk-vmm --example spare_drives) >&2 ||
            die "cargo build --release -p husk-vmm --example spare_drives failed"
        spare_drives=${CARGO_TARGET_DIR:-$REPO/target}/release/examples/spare_drives
        # net's host end: iproute2's ip (netns, tuntap), which replaces busybox's in the lab.
        iproute2=$(realpath "$(PATH=$PATH:/usr/sbin:/sbin command -v ip)") ||
            die "ip is not installed (iproute2)"
        FILES+=("$husk" "$GUEST_KERNEL" "$WORK/guest/devtest.cpio" "$WORK/guest/labtool"
            "$spare_drives" "${tools[@]}" "$iproute2")
        ENVS+=("HUSK=$husk" "GUEST_KERNEL=$GUEST_KERNEL"
            "DEVTEST_INITRD=$WORK/guest/devtest.cpio" "LABTOOL=$WORK/guest/labtool"
            "MKFS_EXT4=${tools[0]}" "DEBUGFS=${tools[1]}" "E2FSCK=${tools[2]}"
            "VSOCK_BYTES=${HUSK_VSOCK_BYTES:-268435456}" "VSOCK_CONNS=${HUSK_VSOCK_CONNS:-64}"
            "SPARE_DRIVES=$spare_drives" "IPROUTE2=$iproute2"
            "NET_BYTES=${HUSK_NET_BYTES:-1073741824}" "NET_TIMEOUT=${HUSK_NET_TIMEOUT:-600}")
        ARGS=("$@")
        ;;
esac

if [ "$where" = lab ]; then
    lab_args=()
    for f in "${FILES[@]}"; do lab_args+=(-f "$f"); done
    for e in "${ENVS[@]}"; do lab_args+=(-e "$e"); done
    status=0
    "$HERE/lab.sh" "${lab_args[@]}" -- "$scenario" "${ARGS[@]}" || status=$?
    exit "$status"
fi
status=0
env "${ENVS[@]}" sh "$scenario" "${ARGS[@]}" </dev/null || status=$?
exit "$status"
