#!/bin/sh
# Scenario "bench-blk" (the lab half of the block benchmark; not a test): fio inside the
# built guest kernel with the device-test initramfs built with fio (tests/lab/guest/build.sh
# --fio, husk.test=fio), against the raw virtio-blk disk /dev/vda, with direct=1 (the
# guest's page cache is not measured): 4 KiB random read and write at iodepth 1 and 32,
# 1 MiB sequential read and write at iodepth 8, and 4 KiB random write at iodepth 1 with an
# fsync after every write (the workload list is fio_workloads in guest/init.sh). The disk is
# one IMAGE_MIB (256) MiB raw file, filled with zeroes here, served in turn by
#
#   husk vmm --drive path=IMG                 buffered preadv/pwritev on its event loop,
#                                             fdatasync on FLUSH
#   qemu-system-x86_64 -M microvm,...,acpi=off ... -drive id=d0,file=IMG,format=raw,if=none,
#       cache=writeback,aio=threads -device virtio-blk-device,drive=d0
#       (-global virtio-mmio.force-legacy=false)
#                                             the same: buffered I/O (no O_DIRECT) from
#                                             its thread pool, a write-back cache offered
#                                             to the guest and fdatasync on FLUSH
#
# both with 1 vCPU and 512 MiB, RUNS times each, interleaved (one guest boot per run and
# VMM, all workloads in it). Prints every run's figures, then per workload the median IOPS
# and MB/s of each VMM and the ratio husk/QEMU (of the median IOPS) as `FIGURE:` lines and a
# table. In the lab, the software CPU bounds everything: read the ratios, not the absolute
# figures. A run whose VMM does not exit 0, whose guest reports a failure (LABGUEST-FAIL),
# misses a workload or shows an I/O error makes the benchmark invalid (exit status 1); it
# is not a sample.
#
# Environment: HUSK_LAB_LIB, HUSK, QEMU, GUEST_KERNEL, FIO_INITRD (the device-test
# initramfs with fio), GNU_DATE, GNU_TIMEOUT, RUNS (default 3), BOOT_TIMEOUT (seconds per
# guest boot, default 300), FIO_RUNTIME (seconds per workload, default 5), FIO_ENGINE
# (default libaio), IMAGE_MIB (default 256).
set -u
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$HUSK_LAB_LIB"
begin
need_file "$HUSK" "the husk binary"
need_file "$QEMU" "qemu-system-x86_64"
need_file "$GUEST_KERNEL" "the guest kernel"
need_file "$FIO_INITRD" "the device-test initramfs with fio"
RUNS=${RUNS:-3}
BOOT_TIMEOUT=${BOOT_TIMEOUT:-300}
FIO_RUNTIME=${FIO_RUNTIME:-5}
FIO_ENGINE=${FIO_ENGINE:-libaio}
IMAGE_MIB=${IMAGE_MIB:-256}
# 512, not 256 MiB: the initramfs with fio is ~85 MiB (Debian's fio links the libraries of
# all its engines), and the kernel holds it twice while it unpacks it; in 256 MiB that
# fails ("Initramfs unpacking failed: write error").
MEM_MIB=512
IMG=$SCRATCH/disk.img
CMDLINE="console=ttyS0 panic=-1 husk.test=fio husk.fio_runtime=$FIO_RUNTIME husk.fio_engine=$FIO_ENGINE"

# A raw image of zeroes, every block allocated (not sparse), shared by all runs.
if ! dd if=/dev/zero of="$IMG" bs=1048576 count="$IMAGE_MIB" 2>"$SCRATCH/dd.log"; then
    cat "$SCRATCH/dd.log"
    die "cannot write the $IMAGE_MIB MiB image $IMG"
fi

# reboot=k: the guest's `reboot -f` resets through the i8042 and husk exits 0.
husk_run() {
    run_vm "husk$1" "$BOOT_TIMEOUT" "$HUSK" vmm --kernel "$GUEST_KERNEL" \
        --initrd "$FIO_INITRD" --vcpus 1 --mem-mib "$MEM_MIB" \
        --cmdline "$CMDLINE reboot=k" --drive "path=$IMG"
}

# QEMU's microvm has no i8042: the guest resets with a triple fault (reboot=t), and
# -no-reboot turns the reset into QEMU's exit. acpi=off: the guest kernel has no ACPI, so it
# finds the virtio-mmio devices only on its command line, which microvm writes
# (virtio_mmio.device=..., like husk) only without ACPI. cache=writeback is cache.direct=off (no
# O_DIRECT: the host's page cache, like husk's buffered preadv/pwritev),
# cache.no-flush=off (a guest FLUSH is an fdatasync of the image, like husk's) and a
# write-back cache offered to the guest (VIRTIO_BLK_F_FLUSH, like husk's); aio=threads
# (QEMU's default, spelled out) does the same preadv/pwritev calls, from a thread pool.
# force-legacy=false: the modern virtio-mmio transport (VERSION_1), as husk's, not the
# legacy one microvm offers by default.
qemu_run() {
    run_vm "qemu$1" "$BOOT_TIMEOUT" "$QEMU" \
        -M microvm,x-option-roms=off,isa-serial=on,rtc=off,acpi=off -enable-kvm -cpu host \
        -m "$MEM_MIB" -smp 1 -nodefaults -no-user-config -display none -no-reboot \
        -serial stdio -kernel "$GUEST_KERNEL" -initrd "$FIO_INITRD" \
        -append "$CMDLINE reboot=t" \
        -global virtio-mmio.force-legacy=false \
        -drive "id=d0,file=$IMG,format=raw,if=none,cache=writeback,aio=threads" \
        -device virtio-blk-device,drive=d0
}

# parse RUN VMM: appends "VMM NAME IOPS MBPS" for each workload of the run's console to
# $SCRATCH/results and prints them; fails when the run is not a valid sample.
parse() {
    _out=$SCRATCH/$2$1.out
    [ "$RUN_RC" -eq 0 ] || { echo "   exit status $RUN_RC (124 = timed out)"; return 1; }
    grep -qx 'LABGUEST-DONE fio' "$_out" || { echo "   no LABGUEST-DONE fio"; return 1; }
    if grep -q '^LABGUEST-FAIL: ' "$_out"; then
        grep '^LABGUEST-FAIL: ' "$_out" | sed 's/^/   /'
        return 1
    fi
    _problems=$(grep -E 'Kernel panic|Oops|BUG:|I/O error|blk_update_request' "$_out" | head -n 3)
    [ -z "$_problems" ] || { echo "   on the console: $_problems"; return 1; }
    # fio's terse version 3 line, after the workload's name (so one more than fio's own
    # numbers): field 6 the error, 8 and 9 the read bandwidth (KiB/s) and IOPS, 49 and 50
    # the write ones. MB/s = 10^6 bytes per second.
    sed -n 's/^LABGUEST-FIO \([^ ]*\) \(3;.*\)$/\1;\2/p' "$_out" | awk -F';' -v vmm="$2" '
        $6 != 0 { print "error " $6 " in workload " $1; bad = 1; next }
        NF < 50 { print "short fio line for workload " $1; bad = 1; next }
        { printf "%s %s %.1f %.2f\n", vmm, $1, $9 + $50, ($8 + $49) * 1024 / 1e6 }
        END { exit bad }' >"$SCRATCH/run.results" || {
        sed 's/^/   /' "$SCRATCH/run.results"
        return 1
    }
    _got=$(cut -d' ' -f2 "$SCRATCH/run.results" | tr '\n' ' ')
    if [ -z "$WORKLOADS" ]; then WORKLOADS=$_got; fi
    if [ -z "$_got" ] || [ "$_got" != "$WORKLOADS" ]; then
        echo "   workloads '$_got', expected '$WORKLOADS'"
        return 1
    fi
    while read -r _vmm _name _iops _mbps; do
        echo "run $1 $_vmm: $_name $_iops IOPS $_mbps MB/s"
    done <"$SCRATCH/run.results"
    cat "$SCRATCH/run.results" >>"$SCRATCH/results"
}

WORKLOADS=""
: >"$SCRATCH/results"
invalid=0
i=1
while [ "$i" -le "$RUNS" ]; do
    for vmm in husk qemu; do
        "${vmm}_run" "$i"
        if [ "$i" -eq 1 ]; then
            sed -n "s/^LABGUEST-FIO-DRIVE /$vmm: the guest's drive: /p" "$SCRATCH/$vmm$i.out"
            # For information: kernel warnings while the guest booted under this VMM.
            grep -E 'WARNING:|consistency problem' "$SCRATCH/$vmm$i.out" | head -n 4 |
                sed "s/^/$vmm: on the guest's console: /"
        fi
        if parse "$i" "$vmm" >"$SCRATCH/parse.log"; then
            cat "$SCRATCH/parse.log"
            echo "run $i $vmm: the whole guest run (boot, fio, reset) took $RUN_MS ms"
        else
            echo "run $i $vmm: INVALID (exit status $RUN_RC after $RUN_MS ms):"
            cat "$SCRATCH/parse.log"
            show_run "$vmm$i"
            invalid=$((invalid + 1))
        fi
    done
    i=$((i + 1))
done

if [ "$invalid" -gt 0 ]; then
    echo "bench-blk: INVALID ($invalid runs failed)"
    exit 1
fi

# field VMM NAME COLUMN: the values of COLUMN (3: IOPS, 4: MB/s) over the runs.
field() {
    awk -v v="$1" -v n="$2" -v c="$3" '$1 == v && $2 == n { print $c }' "$SCRATCH/results"
}

echo "bench-blk: fio on the guest's raw /dev/vda (direct=1, $FIO_ENGINE, ${FIO_RUNTIME} s per workload), 1 vCPU, $MEM_MIB MiB, a $IMAGE_MIB MiB raw image; median of $RUNS runs of each VMM"
printf 'bench-blk:   %-24s %11s %10s %11s %10s %10s\n' workload "husk IOPS" "husk MB/s" \
    "QEMU IOPS" "QEMU MB/s" "husk/QEMU"
for name in $WORKLOADS; do
    # shellcheck disable=SC2046 # word splitting of the sample lists is intended
    hi=$(median $(field husk "$name" 3))
    # shellcheck disable=SC2046
    hm=$(median $(field husk "$name" 4))
    # shellcheck disable=SC2046
    qi=$(median $(field qemu "$name" 3))
    # shellcheck disable=SC2046
    qm=$(median $(field qemu "$name" 4))
    awk -v n="$name" -v hi="$hi" -v hm="$hm" -v qi="$qi" -v qm="$qm" 'BEGIN {
        r = qi > 0 ? sprintf("%.2f", hi / qi) : "?"
        printf "bench-blk:   %-24s %11.1f %10.2f %11.1f %10.2f %10s\n", n, hi, hm, qi, qm, r
        printf "FIGURE: blk %s: husk %.1f IOPS %.2f MB/s, QEMU %.1f IOPS %.2f MB/s, husk/QEMU %s\n", n, hi, hm, qi, qm, r
    }' >>"$SCRATCH/table"
done
grep '^bench-blk:' "$SCRATCH/table"
grep '^FIGURE:' "$SCRATCH/table"
echo "bench-blk: husk/QEMU is the ratio of the median IOPS (bytes per request are the same for both)"
