#!/bin/sh
# Scenario "bench-boot" (issue 2, the lab half of the benchmark; not a test): the built guest
# kernel + initramfs booted to agent-ready-and-exit (husk.exit_after_ready), 1 vCPU and
# 256 MiB, by `husk vmm` and by QEMU's microvm with -enable-kvm, RUNS times each,
# interleaved. Prints every run's wall time from spawn to exit, the median of each and the
# ratio husk/QEMU. Absolute times in the lab are distorted by its software CPU: read the
# ratio. A run that does not exit 0 or does not show `husk-agent ready` makes the benchmark
# invalid (exit status 1); it is not a sample.
#
# Environment: HUSK_LAB_LIB, HUSK, QEMU, GUEST_KERNEL, GUEST_INITRD, GNU_DATE, GNU_TIMEOUT,
# RUNS (default 3), BOOT_TIMEOUT (seconds per boot, default 300).
set -u
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$HUSK_LAB_LIB"
begin
need_file "$HUSK" "the husk binary"
need_file "$QEMU" "qemu-system-x86_64"
need_file "$GUEST_KERNEL" "the guest kernel"
need_file "$GUEST_INITRD" "the guest initramfs"
RUNS=${RUNS:-3}
BOOT_TIMEOUT=${BOOT_TIMEOUT:-300}
MEM_MIB=256
COMMON_CMDLINE="console=ttyS0 panic=-1 husk.exit_after_ready"

husk_boot() {
    run_vm "husk$1" "$BOOT_TIMEOUT" "$HUSK" vmm --kernel "$GUEST_KERNEL" \
        --initrd "$GUEST_INITRD" --vcpus 1 --mem-mib "$MEM_MIB" \
        --cmdline "$COMMON_CMDLINE reboot=k"
}

# QEMU's microvm has no i8042: the guest resets with a triple fault (reboot=t), and
# -no-reboot turns the reset into QEMU's exit.
qemu_boot() {
    run_vm "qemu$1" "$BOOT_TIMEOUT" "$QEMU" \
        -M microvm,x-option-roms=off,isa-serial=on,rtc=off -enable-kvm -cpu host \
        -m "$MEM_MIB" -smp 1 -nodefaults -no-user-config -display none -no-reboot \
        -serial stdio -kernel "$GUEST_KERNEL" -initrd "$GUEST_INITRD" \
        -append "$COMMON_CMDLINE reboot=t"
}

husk_us=""
husk_ready=""
qemu_us=""
invalid=0
i=1
while [ "$i" -le "$RUNS" ]; do
    for vmm in husk qemu; do
        "${vmm}_boot" "$i"
        if [ "$RUN_RC" -eq 0 ] && grep -qF 'husk-agent ready' "$SCRATCH/$vmm$i.out"; then
            echo "run $i $vmm: $RUN_MS ms"
            if [ "$vmm" = husk ]; then
                husk_us="$husk_us $RUN_US"
                # husk's own timestamp of the agent's boot-timer write, for information
                ready=$(sed -n 's/^husk: guest ready after \([0-9.]*\) ms$/\1/p' "$SCRATCH/husk$i.err")
                [ -n "$ready" ] && husk_ready="$husk_ready $ready"
            else
                qemu_us="$qemu_us $RUN_US"
            fi
        else
            echo "run $i $vmm: INVALID (exit status $RUN_RC after $RUN_MS ms; 124 = timed out)"
            show_run "$vmm$i"
            invalid=$((invalid + 1))
        fi
    done
    i=$((i + 1))
done

if [ "$invalid" -gt 0 ]; then
    echo "bench-boot: INVALID ($invalid runs failed)"
    exit 1
fi
# shellcheck disable=SC2086 # word splitting of the sample lists is intended
husk_med=$(median $husk_us)
# shellcheck disable=SC2086
qemu_med=$(median $qemu_us)
# shellcheck disable=SC2086
ready_med=$(median $husk_ready)
awk -v h="$husk_med" -v q="$qemu_med" -v n="$RUNS" -v r="${ready_med:-?}" 'BEGIN {
    printf "bench-boot: guest boot to agent-ready and exit, 1 vCPU, 256 MiB, %d runs each (median, spawn to exit)\n", n
    printf "bench-boot:   husk vmm      %9.1f ms\n", h / 1000
    printf "bench-boot:   QEMU microvm  %9.1f ms\n", q / 1000
    printf "bench-boot:   ratio husk/QEMU %.2f\n", h / q
    printf "bench-boot:   (husk: guest ready after %s ms, median, from its own process start)\n", r
}'
