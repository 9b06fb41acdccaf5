#!/bin/sh
# Scenario "bench-net" (the lab half of the network benchmark; not a test, not in CI): TCP
# throughput between the device-test guest (tests/lab/guest, husk.test=netbench) and the
# lab host, through virtio-net on a tap, served in turn by
#
#   husk vmm --net tap=htap0,mac=MAC           husk's virtio-net device (devices/src/
#                                              virtio/net) on its event loop
#   qemu-system-x86_64 -M microvm,...,acpi=off ... -netdev tap,id=n0,ifname=htap0,
#       script=no,downscript=no,vhost=off -device virtio-net-device,netdev=n0,mac=MAC
#       (-global virtio-mmio.force-legacy=false)
#                                              QEMU's virtio-net device model in QEMU's
#                                              own process; vhost=off so that the device
#                                              model, not the kernel's vhost-net, moves
#                                              the frames, as husk's does
#
# both with 1 vCPU and 256 MiB, the same kernel and initramfs, RUNS times each, interleaved
# (one guest boot per run and VMM). Each VMM runs in a network namespace made for the run
# (`ip netns exec`) holding the tap htap0 (made here, persistent, 10.77.0.1/24, MTU 1500),
# which the VMM attaches to; the namespace is deleted after the run. The guest (10.77.0.2)
# sends NET_BYTES to a labtool server on the host end (guest -> host, PUT) and then receives
# NET_BYTES from it (host -> guest, GET); every byte is checked against the pattern and both
# ends' checksums are compared. Each rate is measured by the guest's client: from its
# request to the server's verdict (PUT), or to its last byte verified (GET). Prints every
# run's rates, then the median MB/s (10^6 bytes/s) of each VMM each way and the ratio
# husk/QEMU as `FIGURE:` lines. In the lab the software CPU bounds everything: read the
# ratios, not the absolute figures. A run whose VMM does not exit 0, whose guest reports a
# failure (LABGUEST-FAIL) or a missing rate makes the benchmark invalid (exit status 1).
#
# Environment: HUSK_LAB_LIB, HUSK, QEMU, GUEST_KERNEL, DEVTEST_INITRD, LABTOOL, IPROUTE2,
# GNU_DATE, GNU_TIMEOUT, RUNS (default 3), BOOT_TIMEOUT (seconds per guest boot, default
# 300), NET_BYTES (default 268435456).
set -u
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$HUSK_LAB_LIB"
begin
need_file "$HUSK" "the husk binary"
need_file "$QEMU" "qemu-system-x86_64"
need_file "$GUEST_KERNEL" "the guest kernel"
need_file "$DEVTEST_INITRD" "the device-test initramfs"
need_file "$LABTOOL" "labtool"
need_file "$IPROUTE2" "iproute2's ip"
RUNS=${RUNS:-3}
BOOT_TIMEOUT=${BOOT_TIMEOUT:-300}
NET_BYTES=${NET_BYTES:-268435456}
MEM_MIB=256
NS=husk-lab-bench
MAC=02:77:00:00:00:02
CMDLINE="console=ttyS0 panic=-1 husk.test=netbench husk.net0=$MAC,10.77.0.2/24,10.77.0.1,1500 husk.net_bytes=$NET_BYTES"

# reboot=k: the guest's `reboot -f` resets through the i8042 and husk exits 0.
husk_run() {
    run_vm "husk$1" "$BOOT_TIMEOUT" "$IPROUTE2" netns exec "$NS" "$HUSK" vmm \
        --kernel "$GUEST_KERNEL" --initrd "$DEVTEST_INITRD" --vcpus 1 --mem-mib "$MEM_MIB" \
        --cmdline "$CMDLINE reboot=k" --net "tap=htap0,mac=$MAC"
}

# QEMU's microvm has no i8042: the guest resets with a triple fault (reboot=t), and
# -no-reboot turns the reset into QEMU's exit. acpi=off: the guest kernel has no ACPI, so
# it finds the virtio-mmio devices only on its command line, which microvm writes only
# without ACPI. force-legacy=false: the modern virtio-mmio transport, as husk's.
qemu_run() {
    run_vm "qemu$1" "$BOOT_TIMEOUT" "$IPROUTE2" netns exec "$NS" "$QEMU" \
        -M microvm,x-option-roms=off,isa-serial=on,rtc=off,acpi=off -enable-kvm -cpu host \
        -m "$MEM_MIB" -smp 1 -nodefaults -no-user-config -display none -no-reboot \
        -serial stdio -kernel "$GUEST_KERNEL" -initrd "$DEVTEST_INITRD" \
        -append "$CMDLINE reboot=t" \
        -global virtio-mmio.force-legacy=false \
        -netdev tap,id=n0,ifname=htap0,script=no,downscript=no,vhost=off \
        -device "virtio-net-device,netdev=n0,mac=$MAC"
}

# host_up: the run's namespace, its tap and the labtool server for the guest's two transfers.
host_up() {
    "$IPROUTE2" netns del "$NS" 2>/dev/null
    "$IPROUTE2" netns add "$NS" && "$IPROUTE2" -n "$NS" link set lo up &&
        "$IPROUTE2" -n "$NS" tuntap add dev htap0 mode tap vnet_hdr &&
        "$IPROUTE2" -n "$NS" addr add 10.77.0.1/24 dev htap0 &&
        "$IPROUTE2" -n "$NS" link set htap0 up || return 1
    "$IPROUTE2" netns exec "$NS" "$LABTOOL" serve --tcp-listen 10.77.0.1:7000 --count 2 \
        --timeout "$BOOT_TIMEOUT" >"$SCRATCH/server.log" 2>&1 &
    SERVER=$!
}

# host_down: the server's status in SERVER_RC; the namespace (and the tap) deleted.
host_down() {
    _i=0
    while kill -0 "$SERVER" 2>/dev/null && [ "$_i" -lt 100 ]; do
        sleep 0.1
        _i=$((_i + 1))
    done
    kill "$SERVER" 2>/dev/null
    wait "$SERVER"
    SERVER_RC=$?
    "$IPROUTE2" netns del "$NS"
}

# parse RUN VMM: appends "VMM put|get MBPS" to $SCRATCH/results and prints them; fails
# when the run is not a valid sample.
parse() {
    _out=$SCRATCH/$2$1.out
    [ "$RUN_RC" -eq 0 ] || { echo "   exit status $RUN_RC (124 = timed out)"; return 1; }
    grep -qx 'LABGUEST-DONE netbench' "$_out" || { echo "   no LABGUEST-DONE netbench"; return 1; }
    if grep -q '^LABGUEST-FAIL: ' "$_out"; then
        grep '^LABGUEST-FAIL: ' "$_out" | sed 's/^/   /'
        return 1
    fi
    [ "$SERVER_RC" -eq 0 ] || {
        echo "   the host's server failed (status $SERVER_RC):"
        sed 's/^/   /' "$SCRATCH/server.log"
        return 1
    }
    _problems=$(grep -E 'Kernel panic|Oops|BUG:' "$_out" | head -n 3)
    [ -z "$_problems" ] || { echo "   on the console: $_problems"; return 1; }
    for _op in put get; do
        _rate=$(sed -n "s/^LABGUEST-NETBENCH $_op \([0-9.]*\)$/\1/p" "$_out" | head -n 1)
        [ -n "$_rate" ] || { echo "   no rate for $_op"; return 1; }
        echo "$2 $_op $_rate" >>"$SCRATCH/results"
        echo "run $1 $2: $_op $_rate MB/s"
    done
}

: >"$SCRATCH/results"
invalid=0
i=1
while [ "$i" -le "$RUNS" ]; do
    for vmm in husk qemu; do
        if ! host_up >"$SCRATCH/host.log" 2>&1; then
            cat "$SCRATCH/host.log"
            die "cannot make the namespace $NS with the tap htap0"
        fi
        "${vmm}_run" "$i"
        host_down
        if [ "$i" -eq 1 ]; then
            sed -n "s/^LABGUEST-NET-IF /$vmm: the guest's interface: /p" "$SCRATCH/$vmm$i.out"
        fi
        if parse "$i" "$vmm" >"$SCRATCH/parse.log"; then
            cat "$SCRATCH/parse.log"
            echo "run $i $vmm: the whole guest run (boot, transfers, reset) took $RUN_MS ms"
        else
            echo "run $i $vmm: INVALID (exit status $RUN_RC after $RUN_MS ms):"
            cat "$SCRATCH/parse.log"
            show_run "$vmm$i"
            invalid=$((invalid + 1))
        fi
    done
    i=$((i + 1))
done
if "$IPROUTE2" netns list | grep -q "^$NS"; then
    echo "bench-net: the namespace $NS is still there"
    invalid=$((invalid + 1))
fi
if [ "$invalid" -gt 0 ]; then
    echo "bench-net: INVALID ($invalid runs failed)"
    exit 1
fi

field() {
    awk -v v="$1" -v o="$2" '$1 == v && $2 == o { print $3 }' "$SCRATCH/results"
}
mib=$((NET_BYTES / 1048576))
echo "bench-net: TCP over virtio-net on a tap (MTU 1500), $mib MiB each way per run, 1 vCPU, $MEM_MIB MiB; median of $RUNS runs of each VMM; QEMU with vhost=off"
for op in put get; do
    case "$op" in put) dir="guest->host" ;; *) dir="host->guest" ;; esac
    # shellcheck disable=SC2046 # word splitting of the sample lists is intended
    h=$(median $(field husk "$op"))
    # shellcheck disable=SC2046
    q=$(median $(field qemu "$op"))
    awk -v d="$dir" -v m="$mib" -v h="$h" -v q="$q" 'BEGIN {
        r = q > 0 ? sprintf("%.2f", h / q) : "?"
        printf "FIGURE: net %s %d MiB: husk %.1f MB/s, QEMU %.1f MB/s, husk/QEMU %s\n", d, m, h, q, r
    }'
done
