#!/bin/sh
# Scenario "agent" (issue 4, layer 5): the agent suite (guest-agent/tests/agent_suite.rs)
# against the agent as PID 1 of the built guest under `husk vmm`, over hybrid vsock, with
# HUSK_AGENT_SUITE=vm: each test boots its own VM (1 vCPU, 256 MiB, a private copy of an
# ext4 busybox rootfs on a virtio-blk drive with serial `rootfs`) and drives it with the
# runtime's client. Here, unlike on a cgroup v1 host, containers get cgroup v2 limits, so
# the memory-limit OOM kill and its event, the pids limit and the stats run for real.
# One check: the suite passes (its output is shown).
#
# Environment: HUSK_LAB_LIB, AGENT_SUITE (the suite's test binary), HUSK, GUEST_KERNEL,
# GUEST_INITRD, MKFS_EXT4, GNU_DATE, GNU_TIMEOUT, SUITE_TIMEOUT (seconds for the whole
# suite, default 900), SUITE_THREADS (tests at once, default 1).
set -u
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$HUSK_LAB_LIB"
begin
need_file "$AGENT_SUITE" "the agent suite's test binary"
need_file "$HUSK" "the husk binary"
need_file "$GUEST_KERNEL" "the guest kernel"
need_file "$GUEST_INITRD" "the guest initramfs"
need_file "$MKFS_EXT4" "mkfs.ext4"

echo "== the agent suite in husk VMs ($(basename "$AGENT_SUITE"), ${SUITE_THREADS:-1} test(s) at once)"
{
    HUSK_AGENT_SUITE=vm "$GNU_TIMEOUT" -k 10 "${SUITE_TIMEOUT:-900}" "$AGENT_SUITE" \
        --test-threads "${SUITE_THREADS:-1}" </dev/null 2>&1
    echo $? >"$SCRATCH/rc"
} | sed 's/^/    suite| /'
rc=$(cat "$SCRATCH/rc")
if [ "$rc" -eq 124 ]; then
    fail "the agent suite passes in husk VMs: killed after ${SUITE_TIMEOUT:-900} s"
else
    check "the agent suite passes in husk VMs (exit status $rc)" test "$rc" -eq 0
fi
summary agent
