#!/bin/sh
# Scenario "selftest": proves the lab itself (or a hardware-KVM host) can boot Linux guests,
# independently of husk: /dev/kvm opens, and QEMU's microvm with -enable-kvm boots a guest
# kernel with a small busybox initramfs whose /init prints
# `lab-guest: cpus=<n> mem_total_kib=<m>` and reboots. When HUSK is set, husk vmm boots the
# same guest too (a first look at husk with a real Linux before the agent exists).
#
# Environment: HUSK_LAB_LIB (scenarios/lib.sh), QEMU (qemu-system-x86_64), GUEST_KERNEL,
# GUEST_INITRD (the busybox initramfs), HUSK (optional), BOOT_TIMEOUT (seconds, default 300).
set -u
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$HUSK_LAB_LIB"
begin
need_file "$GUEST_KERNEL" "the guest kernel"
need_file "$GUEST_INITRD" "the guest initramfs"
BOOT_TIMEOUT=${BOOT_TIMEOUT:-300}

check "/dev/kvm is a character device" test -c /dev/kvm

# guest_line NAME: the guest's report line, or nothing.
guest_line() {
    sed -n 's/.*\(lab-guest: cpus=[0-9]* mem_total_kib=[0-9]*\).*/\1/p' "$SCRATCH/$1.out" | head -n 1
}

echo "== QEMU microvm (-enable-kvm -cpu host), 1 vCPU, 256 MiB"
run_vm qemu "$BOOT_TIMEOUT" "$QEMU" -M microvm,x-option-roms=off,isa-serial=on,rtc=off \
    -enable-kvm -cpu host -m 256 -smp 1 -nodefaults -no-user-config -display none \
    -no-reboot -serial stdio -kernel "$GUEST_KERNEL" -initrd "$GUEST_INITRD" \
    -append "console=ttyS0 reboot=t panic=-1"
before=$FAILS
check "QEMU exits 0 after the guest reboots (status $RUN_RC, $RUN_MS ms)" test "$RUN_RC" -eq 0
line=$(guest_line qemu)
check "the guest under QEMU reports its CPUs and memory ($line)" test -n "$line"
if [ "$FAILS" -gt "$before" ]; then show_run qemu; fi

if [ -n "${HUSK:-}" ]; then
    for n in 1 2; do
        echo "== husk vmm, $n vCPU(s), 256 MiB"
        run_vm "husk$n" "$BOOT_TIMEOUT" "$HUSK" vmm --kernel "$GUEST_KERNEL" \
            --initrd "$GUEST_INITRD" --vcpus "$n" --mem-mib 256 \
            --cmdline "console=ttyS0 reboot=k panic=-1"
        before=$FAILS
        check "husk exits 0 after the guest reboots (status $RUN_RC, $RUN_MS ms)" \
            test "$RUN_RC" -eq 0
        line=$(guest_line "husk$n")
        check "the guest under husk reports cpus=$n ($line)" \
            test "${line#lab-guest: cpus="$n" }" != "$line"
        if [ "$FAILS" -gt "$before" ]; then show_run "husk$n"; fi
    done
fi
summary selftest
