#!/bin/sh
# Scenario "linux-boot" (issue 2, item 7): the built guest kernel + initramfs boot under
# `husk vmm` with 1 and then 2 vCPUs and 256 MiB to `husk-agent ready` and a clean exit
# (husk.exit_after_ready: the agent resets the guest, reboot=k goes through the i8042, husk
# exits 0). Checked per boot:
#   - husk exits 0 (within BOOT_TIMEOUT seconds);
#   - the console shows `husk-agent ready`;
#   - the agent's `husk-agent: cpus=<n> mem_total_kib=<m>` has n = the configured vCPUs and
#     m within [MEM_MIN_KIB, MEM_MAX_KIB] (see below);
#   - no kernel panic and no `husk-agent: error` on the console (with panic=-1 a panic after
#     `ready` would also end in a reset and status 0);
#   - stderr has `husk: guest ready after N ms` (the agent's write to the boot-timer port).
#
# Environment: HUSK_LAB_LIB, HUSK, GUEST_KERNEL, GUEST_INITRD, GNU_DATE, GNU_TIMEOUT,
# BOOT_TIMEOUT (seconds per boot, default 300; a boot takes ~3 s in the lab).
set -u
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$HUSK_LAB_LIB"
begin
need_file "$HUSK" "the husk binary"
need_file "$GUEST_KERNEL" "the guest kernel"
need_file "$GUEST_INITRD" "the guest initramfs"
BOOT_TIMEOUT=${BOOT_TIMEOUT:-300}
CMDLINE="console=ttyS0 reboot=k panic=-1 husk.exit_after_ready"
MEM_MIB=256

# The window for MemTotal with 256 MiB configured. The upper bound is the RAM husk's memory
# map gives the guest: 256 MiB minus the legacy hole [0x9fc00, 0x100000) = 0x60400 bytes,
# i.e. 262144 - 385 = 261759 KiB; MemTotal is below it because the kernel keeps its own
# image, the page array (64 bytes per 4 KiB page: 4 MiB here) and early allocations out of
# it. The lower bound, 200 MiB, allows ~60 MiB of such reservations, where this guest kernel
# was measured to keep ~16 MiB (MemTotal 245984 KiB of 261752 KiB usable, 6.1 allnoconfig +
# fragment, 1 vCPU). With those ~16 MiB, a guest given the default 128 MiB, or anything
# below ~216 MiB, falls below the window, and one given ~272 MiB or more falls above it.
MEM_MAX_KIB=$((MEM_MIB * 1024 - 0x60400 / 1024))
MEM_MIN_KIB=$((200 * 1024))

boot() {
    n=$1
    name=vcpus$n
    echo "== husk vmm --vcpus $n --mem-mib $MEM_MIB --cmdline \"$CMDLINE\""
    run_vm "$name" "$BOOT_TIMEOUT" "$HUSK" vmm --kernel "$GUEST_KERNEL" --initrd "$GUEST_INITRD" \
        --vcpus "$n" --mem-mib "$MEM_MIB" --cmdline "$CMDLINE"
    before=$FAILS
    out=$SCRATCH/$name.out
    err=$SCRATCH/$name.err

    if [ "$RUN_RC" -eq 124 ]; then
        fail "[$n vCPU] husk exits 0: it was killed after ${BOOT_TIMEOUT} s"
    else
        check "[$n vCPU] husk exits 0 (status $RUN_RC after $RUN_MS ms)" test "$RUN_RC" -eq 0
    fi

    check "[$n vCPU] the console shows 'husk-agent ready'" grep -qF 'husk-agent ready' "$out"

    report=$(sed -n 's/.*husk-agent: cpus=\([0-9][0-9]*\) mem_total_kib=\([0-9][0-9]*\).*/\1 \2/p' "$out" | head -n 1)
    if [ -z "$report" ]; then
        fail "[$n vCPU] the console shows 'husk-agent: cpus=<n> mem_total_kib=<m>'"
    else
        cpus=${report% *}
        mem=${report#* }
        check "[$n vCPU] the guest sees $n CPU(s) (cpus=$cpus)" test "$cpus" -eq "$n"
        check "[$n vCPU] the guest sees 256 MiB: $MEM_MIN_KIB <= mem_total_kib=$mem <= $MEM_MAX_KIB" \
            test "$mem" -ge "$MEM_MIN_KIB" -a "$mem" -le "$MEM_MAX_KIB"
    fi

    # panic=-1 turns a kernel panic (e.g. PID 1 dying after it printed ready) into a reset,
    # which husk also ends with status 0: rule it out from the console.
    problems=$(grep -E 'Kernel panic|husk-agent: error' "$out" | head -n 3)
    check "[$n vCPU] no kernel panic and no agent error on the console${problems:+ ($problems)}" \
        test -z "$problems"

    ready=$(grep -E '^husk: guest ready after [0-9]+(\.[0-9]+)? ms$' "$err" | head -n 1)
    check "[$n vCPU] stderr shows 'husk: guest ready after N ms' (${ready#husk: guest ready after })" \
        test -n "$ready"

    if [ "$FAILS" -gt "$before" ]; then
        echo "   the whole run (failed):"
        show_run "$name"
    else
        echo "   the agent's lines and stderr:"
        grep -F 'husk-agent' "$out" | sed 's/^/    console| /'
        sed 's/^/    stderr | /' "$err"
    fi
}

boot 1
boot 2
summary linux-boot
