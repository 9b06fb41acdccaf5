#!/bin/sh
# Scenario "runtime" (issue 5, layer 5): the husk command line with the builtin backend,
# each container in its own VM booted from the built guest:
#   1. `husk run` of echo hello from the default busybox image (cold cache), and of a
#      failing command (warm cache: exit status 3 comes back);
#   2. `husk run --bundle` of a bundle's process;
#   3. the runc-style lifecycle once: create, state, start, exec, kill, state, delete;
#   4. `kill -9` of a sandbox's husk process, then `husk delete --force`: no process, no
#      file left;
#   5. the figures: `husk run` (warm) against `runc run` of the same bundle, RUNS times
#      each, interleaved, medians and the ratio (FIGURE: lines).
#
# Environment: HUSK_LAB_LIB, HUSK, GUEST_KERNEL, GUEST_INITRD, MKFS_EXT4, BUSYBOX_IMAGE
# (the OCI image tar), BUSYBOX (static busybox for the bundle), RUNC (optional: the runc
# binary for the figures), RUNS (default 3), GNU_DATE, GNU_TIMEOUT, BOOT_TIMEOUT.
set -u
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$HUSK_LAB_LIB"
begin
need_file "$HUSK" "the husk binary"
need_file "$GUEST_KERNEL" "the guest kernel"
need_file "$GUEST_INITRD" "the guest initramfs"
need_file "$MKFS_EXT4" "mkfs.ext4"
need_file "$BUSYBOX_IMAGE" "the busybox OCI image"
need_file "$BUSYBOX" "busybox"

STATE=$SCRATCH/state
CACHE=$SCRATCH/cache
mkdir -p "$CACHE/images"
cp "$BUSYBOX_IMAGE" "$CACHE/images/busybox.tar"
cat >"$SCRATCH/config.toml" <<EOF
hypervisor = "builtin"
kernel = "$GUEST_KERNEL"
initrd = "$GUEST_INITRD"
memory_mib = 256
root = "$STATE"
cache = "$CACHE"
EOF
export HUSK_CONFIG=$SCRATCH/config.toml HUSK_CACHE_DIR=$CACHE HUSK_MKFS_EXT4=$MKFS_EXT4
T=$BOOT_TIMEOUT

# husk ARGS...: runs husk with a timeout; stdout in $SCRATCH/out, stderr in $SCRATCH/err,
# the status in RC.
husk() {
    "$GNU_TIMEOUT" -k 5 "$T" "$HUSK" "$@" </dev/null >"$SCRATCH/out" 2>"$SCRATCH/err"
    RC=$?
}

show() {
    sed 's/^/    | /' "$SCRATCH/out" "$SCRATCH/err"
}

echo "== husk run from the default image"
husk run -- echo hello
check "husk run -- echo hello prints hello and exits 0 (status $RC)" \
    test "$RC" -eq 0 -a "$(cat "$SCRATCH/out")" = hello || show
husk run -- sh -c 'echo to stderr >&2; exit 3'
check "husk run of a failing command exits with its status 3 (status $RC)" \
    test "$RC" -eq 3 || show
check "its stderr comes through" grep -q "to stderr" "$SCRATCH/err"

echo "== husk run --bundle"
BUNDLE=$SCRATCH/bundle
mkdir -p "$BUNDLE/rootfs/bin" "$BUNDLE/rootfs/proc" "$BUNDLE/rootfs/dev" "$BUNDLE/rootfs/sys" \
    "$BUNDLE/rootfs/tmp"
cp "$BUSYBOX" "$BUNDLE/rootfs/bin/busybox"
ln -s busybox "$BUNDLE/rootfs/bin/sh"
# The process is the bundle's own; husk's default spec would do the same.
bundle_spec() {
    cat >"$BUNDLE/config.json" <<EOF
{"ociVersion": "1.0.2",
 "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "cwd": "/",
   "args": $1, "env": ["PATH=/bin"]},
 "root": {"path": "rootfs"},
 "hostname": "bundle",
 "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]}],
 "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}, {"type": "ipc"}]}}
EOF
}
bundle_spec '["/bin/busybox", "sh", "-c", "echo from the bundle on $(/bin/busybox hostname)"]'
husk run --bundle "$BUNDLE"
check "husk run --bundle runs the bundle's process (status $RC)" \
    test "$RC" -eq 0 -a "$(cat "$SCRATCH/out")" = "from the bundle on bundle" || show

echo "== the runc-style lifecycle"
bundle_spec '["/bin/busybox", "sh", "-c", "echo started; exec /bin/busybox sleep 1000"]'
"$GNU_TIMEOUT" -k 5 "$T" "$HUSK" create --bundle "$BUNDLE" box </dev/null \
    >"$SCRATCH/box.out" 2>"$SCRATCH/box.err"
check "husk create box" test $? -eq 0 || sed 's/^/    | /' "$SCRATCH/box.err"
husk state box
check "state says created" grep -q '"status": "created"' "$SCRATCH/out" || show
husk start box
check "husk start box" test "$RC" -eq 0 || show
husk exec box /bin/busybox sh -c 'echo inside; exit 4'
check "husk exec returns the process's output and status 4 (status $RC)" \
    test "$RC" -eq 4 -a "$(cat "$SCRATCH/out")" = inside || show
husk delete box
check "husk delete of a running container fails" test "$RC" -eq 1 || show
husk kill box KILL
check "husk kill box KILL" test "$RC" -eq 0 || show
i=0
while husk state box && ! grep -q '"status": "stopped"' "$SCRATCH/out" && [ $i -lt 300 ]; do
    sleep 0.1
    i=$((i + 1))
done
check "state says stopped with exit code 137" grep -q '"exitCode": 137' "$SCRATCH/out" || show
check "the container's output reached create's stdout" grep -q started "$SCRATCH/box.out"
husk delete box
check "husk delete box" test "$RC" -eq 0 || show
check "nothing of box is left in the state root" test ! -e "$STATE/box"

echo "== kill -9 of a sandbox's husk, then delete --force"
bundle_spec '["/bin/busybox", "sleep", "1000"]'
"$GNU_TIMEOUT" -k 5 "$T" "$HUSK" create --bundle "$BUNDLE" --pid-file "$SCRATCH/victim.pid" \
    victim </dev/null >/dev/null 2>"$SCRATCH/victim.err"
check "husk create victim" test $? -eq 0 || sed 's/^/    | /' "$SCRATCH/victim.err"
husk start victim
pid=$(cat "$SCRATCH/victim.pid")
kill -9 "$pid"
sleep 0.5
husk state victim
check "a killed sandbox reports stopped" grep -q '"status": "stopped"' "$SCRATCH/out" || show
husk delete --force victim
check "husk delete --force victim" test "$RC" -eq 0 || show
check "the sandbox process is gone" test ! -d "/proc/$pid"
left=$(grep -l "[s]andbox-process" /proc/[0-9]*/cmdline 2>/dev/null | wc -l)
check "no process of any sandbox is left ($left)" test "$left" -eq 0
check "nothing of victim is left in the state root" test ! -e "$STATE/victim"

echo "== figures: husk run (builtin, warm cache) vs runc run, ${RUNS:-3} runs each"
bundle_spec '["/bin/busybox", "echo", "hello"]'
if [ -n "${RUNC:-}" ] && [ -x "$RUNC" ]; then
    # runc needs a cgroup file system; the lab's minimal init mounts none.
    if ! grep -q cgroup /proc/mounts; then
        mkdir -p /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup
    fi
    : >"$SCRATCH/husk.ms"
    : >"$SCRATCH/runc.ms"
    n=0
    while [ $n -lt "${RUNS:-3}" ]; do
        run_vm husk-run "$T" "$HUSK" run --bundle "$BUNDLE"
        [ "$RUN_RC" -eq 0 ] && echo "$RUN_MS" >>"$SCRATCH/husk.ms"
        # The lab runs from its initramfs, where pivot_root is refused.
        run_vm runc-run "$T" "$RUNC" --root "$SCRATCH/runc" run --no-pivot --bundle "$BUNDLE" "runc$n"
        if [ "$RUN_RC" -eq 0 ]; then
            echo "$RUN_MS" >>"$SCRATCH/runc.ms"
        elif [ $n -eq 0 ]; then
            echo "runc run failed ($RUN_RC):"
            sed 's/^/    | /' "$SCRATCH/runc-run.out" "$SCRATCH/runc-run.err"
        fi
        n=$((n + 1))
    done
    husk_ms=$(sort -n "$SCRATCH/husk.ms" | awk '{ a[NR] = $1 } END { if (NR) print a[int((NR + 1) / 2)] }')
    runc_ms=$(sort -n "$SCRATCH/runc.ms" | awk '{ a[NR] = $1 } END { if (NR) print a[int((NR + 1) / 2)] }')
    if [ -n "$husk_ms" ] && [ -n "$runc_ms" ]; then
        echo "FIGURE: runtime-run husk_builtin_ms=$husk_ms runc_ms=$runc_ms ratio=$(awk -v h="$husk_ms" -v r="$runc_ms" 'BEGIN { printf "%.2f", h / r }')"
    else
        echo "FIGURE: runtime-run not measured: a run failed (husk: $(wc -l <"$SCRATCH/husk.ms") ok, runc: $(wc -l <"$SCRATCH/runc.ms") ok)"
    fi
else
    echo "FIGURE: runtime-run not measured: no runc carried into the lab"
fi
summary runtime
