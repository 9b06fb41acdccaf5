#!/bin/sh
# Scenario "containerd" (layer 5): husk's containerd shim, containerd-shim-husk-v2, with the
# builtin backend (every sandbox a VM of the built guest under husk's VMM) under a
# private containerd driven by the unmodified `ctr`:
#   a. `ctr run --rm` of a command that prints and exits 3: its output and status come
#      back, and nothing is left (no husk shim process, no husk state, no mounts);
#   b. a detached task: exec (output and status 4), ps, metrics (cgroup v2 in the guest,
#      in containerd's format), kill, STOPPED, task delete, container rm, nothing left;
#   c. a pod of two containers joined by CRI's annotations (a sandbox container and an
#      app container with io.kubernetes.cri.sandbox-id): one shim process (one VM) for
#      both, exec into the app, kill and delete the app then the sandbox, nothing left;
#   d. the figures: `ctr run --rm` of echo hello with husk (builtin) and with runc,
#      RUNS times each, interleaved, medians and the ratio (FIGURE: lines);
#   f. the pod's network: `ctr run --with-ns network:...` of a namespace as CNI leaves
#      one (a veth with an address, MAC, MTU and default route, its peer a gateway in a
#      second namespace): the guest's eth0 gets them, and the container and a server
#      at the gateway talk; no tap or qdisc is left (issue 7's tcfilter wiring);
#   e. the footprint of one idle pod (`sleep`): the PSS of husk's shim process (the VMM),
#      its guest RAM apart, against runc's shim (FIGURE: line).
#
# The private containerd has its own configuration, root, state and sockets under the
# scratch directory, the CRI plugin disabled (as tests/src/containerd.rs, the host-side
# harness), and is run as a background process, no systemd. Its PATH starts with husk's
# bin directory (the shim is found there) and HUSK_CONFIG names a husk configuration with
# hypervisor = "builtin", the guest, and a state root and cache of this scenario's own;
# its shims inherit both.
#
# Environment: HUSK_LAB_LIB, HUSK, HUSK_SHIM, GUEST_KERNEL, GUEST_INITRD, MKFS_EXT4,
# BUSYBOX_IMAGE (the OCI image tar of resources/build-busybox-image.sh), CONTAINERD, CTR,
# RUNC, RUNC_SHIM (containerd-shim-runc-v2), IPROUTE2 (iproute2's ip), TC (its tc), RUNS
# (default 3), GNU_DATE, GNU_TIMEOUT, BOOT_TIMEOUT.
set -u
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$HUSK_LAB_LIB"
begin
need_file "$HUSK" "the husk binary"
need_file "$HUSK_SHIM" "containerd-shim-husk-v2"
need_file "$GUEST_KERNEL" "the guest kernel"
need_file "$GUEST_INITRD" "the guest initramfs"
need_file "$MKFS_EXT4" "mkfs.ext4"
need_file "$BUSYBOX_IMAGE" "the busybox OCI image"
need_file "$CONTAINERD" "containerd"
need_file "$CTR" "ctr"
# shellcheck disable=SC2153 # RUNC comes from the environment
need_file "$RUNC" "runc"
need_file "$RUNC_SHIM" "containerd-shim-runc-v2"
need_file "$IPROUTE2" "iproute2's ip"
need_file "$TC" "iproute2's tc"

RUNS=${RUNS:-3}
T=$BOOT_TIMEOUT
NS=husk-lab
IMAGE=docker.io/library/busybox:latest
HUSK_RUNTIME=io.containerd.husk.v2
RUNC_RUNTIME=io.containerd.runc.v2
# Short paths: both hold Unix sockets.
CTD=$SCRATCH/ctd
HROOT=$SCRATCH/husk
SOCK=$CTD/c.sock
HSTATE=$HROOT/.containerd/$NS # the shim's state root for the namespace (shim::state_root)
mkdir -p "$CTD" "$HROOT" "$SCRATCH/cache"

# Stops containerd and whatever its shims left (when a check failed, or when this runs
# directly on a host): the shims name our socket on their command line.
CTD_PID=
# shellcheck disable=SC2317 # called by the trap
cleanup() {
    if [ -n "$CTD_PID" ]; then
        kill "$CTD_PID" 2>/dev/null
        wait "$CTD_PID" 2>/dev/null
    fi
    # Listed before any is killed: grep itself matches while it runs.
    grep -l "$SOCK" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3 >"$SCRATCH/leftover"
    while read -r p; do kill -9 "$p" 2>/dev/null; done <"$SCRATCH/leftover"
    sleep 0.5
    awk -v d="$SCRATCH/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
        while read -r m; do umount -l "$m" 2>/dev/null; done
    rm -rf "$SCRATCH"
}
trap cleanup EXIT

# runc and containerd need a cgroup file system; the lab's minimal init mounts none.
if ! grep -q cgroup /proc/mounts; then
    mkdir -p /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup
fi

cat >"$SCRATCH/husk.toml" <<EOF
hypervisor = "builtin"
kernel = "$GUEST_KERNEL"
initrd = "$GUEST_INITRD"
memory_mib = 256
vcpus = 1
root = "$HROOT"
cache = "$SCRATCH/cache"
EOF

# runc and NoPivotRoot: the lab runs from its initramfs, where pivot_root is refused (see
# runtime.sh). With the CRI plugin disabled, containerd's configuration holds no options
# for the runc runtime (runtime options live in CRI's section, and the v1 linux runtime's
# `no_shim`/`runtime` do not apply to io.containerd.runc.v2): the client sends them with
# each task. `ctr run --no-pivot` does exactly that: it adds runc's task options
# (containerd.runc.v1.Options) with NoPivotRoot = true, and the runc shim then runs
# `runc create --no-pivot`. So every runc run below passes --no-pivot.
cat >"$CTD/config.toml" <<EOF
version = 2
root = "$CTD/root"
state = "$CTD/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$CTD/opt"
EOF

ctd_path=$(dirname "$HUSK_SHIM"):$(dirname "$RUNC_SHIM"):$(dirname "$RUNC"):$PATH
env PATH="$ctd_path" HUSK_CONFIG="$SCRATCH/husk.toml" HUSK_MKFS_EXT4="$MKFS_EXT4" \
    "$CONTAINERD" --config "$CTD/config.toml" </dev/null >/dev/null 2>"$CTD/containerd.log" &
CTD_PID=$!

# ctr ARGS...: runs ctr against our containerd, in our namespace, with a timeout; stdout
# in $SCRATCH/out, stderr in $SCRATCH/err, the status in RC.
ctr() {
    "$GNU_TIMEOUT" -k 5 "$T" "$CTR" --address "$SOCK" --namespace "$NS" "$@" </dev/null \
        >"$SCRATCH/out" 2>"$SCRATCH/err"
    RC=$?
}

# show: ctr's output and what containerd logged (the shims log there) since the last
# show, at most 20 lines, for a failure.
LOG_SHOWN=0
show() {
    sed 's/^/    | /' "$SCRATCH/out" "$SCRATCH/err"
    grep -v '^[[:space:]]*$' "$CTD/containerd.log" >"$SCRATCH/log"
    _lines=$(wc -l <"$SCRATCH/log")
    tail -n +$((LOG_SHOWN + 1)) "$SCRATCH/log" | tail -n 20 | sed 's/^/    containerd| /'
    LOG_SHOWN=$_lines
}

# expect DESCRIPTION COMMAND...: a check that on failure also shows ctr's output and the
# end of containerd's log.
expect() {
    _what=$1
    shift
    if "$@"; then pass "$_what"; else fail "$_what"; show; fi
}

# husk_shims: the number of containerd-shim-husk-v2 processes.
husk_shims() {
    grep -l "[c]ontainerd-shim-husk-v2" /proc/[0-9]*/cmdline 2>/dev/null | wc -l
}

# list_husk_shims: their command lines, for a failure.
list_husk_shims() {
    grep -l "[c]ontainerd-shim-husk-v2" /proc/[0-9]*/cmdline 2>/dev/null |
        while read -r f; do echo "    shim| $(tr '\0' ' ' <"$f")"; done
}

# our_mounts: the mounts under containerd's directory (rootfs overlays).
our_mounts() {
    awk -v d="$CTD/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo
}

# nothing_left WHAT: checks that no husk shim, no husk state of the namespace and no mount
# under containerd's directory is left. A shim exits shortly after containerd's last call
# to it: wait for that first (a VMM's exit frees its guest memory, slow in the lab).
nothing_left() {
    i=0
    while [ "$(husk_shims)" -gt 0 ] && [ $i -lt 300 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    n=$(husk_shims)
    check "$1: no husk shim process is left ($n)" test "$n" -eq 0
    list_husk_shims
    left=$(ls -A "$HSTATE" 2>/dev/null)
    check "$1: no husk state is left in $HSTATE (${left:-empty})" test -z "$left"
    m=$(our_mounts | wc -l)
    check "$1: no mount under containerd's directory is left ($m)" test "$m" -eq 0
    our_mounts | sed 's/^/    | /'
    # husk-<16 hex digits>; not runc's husk-lab (the namespace) parent.
    left=$(find /sys/fs/cgroup -maxdepth 4 -type d -name 'husk-????????????????' | wc -l)
    check "$1: no sandbox cgroup is left ($left)" test "$left" -eq 0
}

# wait_stopped ID: waits until `ctr task ls` shows the task STOPPED (30 s at most); fails
# at once when there is no such task.
wait_stopped() {
    _until=$(($("$GNU_DATE" +%s) + 30))
    while [ "$("$GNU_DATE" +%s)" -lt "$_until" ]; do
        ctr task ls
        grep -Eq "^$1[[:space:]]" "$SCRATCH/out" || return 1
        grep -Eq "^$1[[:space:]].*STOPPED" "$SCRATCH/out" && return 0
        sleep 0.1
    done
    return 1
}

echo "== a private containerd"
i=0
until "$CTR" --address "$SOCK" version >/dev/null 2>&1; do
    if [ $i -ge 300 ] || ! kill -0 "$CTD_PID" 2>/dev/null; then
        tail -n 30 "$CTD/containerd.log" | sed 's/^/    containerd| /'
        die "containerd did not answer within 30 s"
    fi
    sleep 0.1
    i=$((i + 1))
done
pass "containerd answers on $SOCK"
ctr image import "$BUSYBOX_IMAGE"
expect "ctr image import of the busybox image" test "$RC" -eq 0
ctr image ls -q
expect "the image is known as $IMAGE" grep -qx "$IMAGE" "$SCRATCH/out"

echo "== a. ctr run --rm (husk, builtin)"
ctr run --rm --runtime "$HUSK_RUNTIME" "$IMAGE" c1 sh -c 'echo hello; exit 3'
expect "ctr run --rm prints hello and exits with the container's status 3 (status $RC)" \
    test "$RC" -eq 3 -a "$(cat "$SCRATCH/out")" = hello
# The shim logs (into containerd's log) when its VM's agent is up: the builtin backend ran.
check "the shim booted a guest VM (containerd's log has its 'guest ready after N ms')" \
    grep -q "guest ready after" "$CTD/containerd.log"
nothing_left "a"

echo "== b. a detached task: exec, ps, kill, delete"
ctr run -d --runtime "$HUSK_RUNTIME" "$IMAGE" c2 sleep 1000
expect "ctr run -d c2 sleep 1000 (status $RC)" test "$RC" -eq 0
ctr task exec --exec-id e1 c2 sh -c 'echo in; exit 4'
expect "ctr task exec returns the output and status 4 (status $RC)" \
    test "$RC" -eq 4 -a "$(cat "$SCRATCH/out")" = in
ctr task ps c2
expect "ctr task ps lists a header and the process ($(wc -l <"$SCRATCH/out") lines)" \
    test "$RC" -eq 0 -a "$(wc -l <"$SCRATCH/out")" -ge 2
ctr task metrics c2
expect "ctr task metrics shows the guest's cgroup v2 figures (status $RC)" \
    grep -Eq "^pids.current[[:space:]]+[1-9]" "$SCRATCH/out"
# The pod's overhead in a cgroup of its own: the shim (the VMM) moved into husk-<name>
# below containerd's, which is charged the guest's RAM.
shim_pid=$(grep -l "[c]ontainerd-shim-husk-v2" /proc/[0-9]*/cmdline 2>/dev/null | head -n 1 | cut -d/ -f3)
shim_cgroup=$(sed -n 's/^0:://p' "/proc/${shim_pid:-0}/cgroup" 2>/dev/null)
check "the shim is in a cgroup of the sandbox's own (${shim_cgroup:-none})" \
    test -n "$shim_cgroup" -a "${shim_cgroup##*/husk-}" != "$shim_cgroup"
charged=$(cat "/sys/fs/cgroup${shim_cgroup}/memory.current" 2>/dev/null || echo 0)
check "that cgroup is charged the VM's memory ($((charged >> 20)) MiB)" test "$charged" -ge $((16 << 20))
ctr task ls
expect "ctr task ls shows c2 RUNNING" grep -Eq "^c2[[:space:]].*RUNNING" "$SCRATCH/out"
ctr task kill -s SIGKILL c2
expect "ctr task kill -s SIGKILL c2 (status $RC)" test "$RC" -eq 0
expect "c2 is STOPPED" wait_stopped c2
ctr task delete c2
expect "ctr task delete c2 (status $RC)" test "$RC" -eq 0
ctr container rm c2
expect "ctr container rm c2 (status $RC)" test "$RC" -eq 0
nothing_left "b"

echo "== c. a pod of two containers in one shim (one VM)"
ctr run -d --runtime "$HUSK_RUNTIME" \
    --annotation io.kubernetes.cri.container-type=sandbox \
    --annotation io.kubernetes.cri.sandbox-id=pod1 \
    "$IMAGE" pod1 sleep 1000
expect "ctr run -d of the sandbox container pod1 (status $RC)" test "$RC" -eq 0
ctr run -d --runtime "$HUSK_RUNTIME" \
    --annotation io.kubernetes.cri.container-type=container \
    --annotation io.kubernetes.cri.sandbox-id=pod1 \
    --annotation io.kubernetes.cri.sandbox-name=pod1 \
    "$IMAGE" app1 sh -c 'echo app1 >/tmp/marker; exec sleep 1000'
expect "ctr run -d of the app container app1 in pod1 (status $RC)" test "$RC" -eq 0
ctr task ls
running=$(grep -Ec "^(pod1|app1)[[:space:]].*RUNNING" "$SCRATCH/out")
expect "pod1 and app1 are RUNNING" test "$running" -eq 2
n=$(husk_shims)
check "one husk shim process (one VM) holds both running containers ($n shims)" \
    test "$n" -eq 1 -a "$running" -eq 2
[ "$n" -eq 1 ] || list_husk_shims
ctr task exec --exec-id e2 app1 sh -c 'cat /tmp/marker; exit 5'
expect "ctr task exec into app1 sees app1's files and returns status 5 (status $RC)" \
    test "$RC" -eq 5 -a "$(cat "$SCRATCH/out")" = app1
ctr task exec --exec-id e3 pod1 sh -c 'test ! -e /tmp/marker'
expect "the sandbox container has a root file system of its own (status $RC)" \
    test "$RC" -eq 0
ctr task kill -s SIGKILL app1
expect "ctr task kill -s SIGKILL app1 (status $RC)" test "$RC" -eq 0
expect "app1 is STOPPED" wait_stopped app1
ctr task delete app1
expect "ctr task delete app1 (status $RC)" test "$RC" -eq 0
ctr container rm app1
expect "ctr container rm app1 (status $RC)" test "$RC" -eq 0
ctr task ls
expect "pod1 is still RUNNING after app1 is gone" \
    grep -Eq "^pod1[[:space:]].*RUNNING" "$SCRATCH/out"
ctr task kill -s SIGKILL pod1
expect "ctr task kill -s SIGKILL pod1 (status $RC)" test "$RC" -eq 0
expect "pod1 is STOPPED" wait_stopped pod1
ctr task delete pod1
expect "ctr task delete pod1 (status $RC)" test "$RC" -eq 0
ctr container rm pod1
expect "ctr container rm pod1 (status $RC)" test "$RC" -eq 0
nothing_left "c"
# Whatever a failed step above left would spoil the figures: remove it through containerd.
ctr task ls -q
cp "$SCRATCH/out" "$SCRATCH/tasks"
while read -r t; do
    ctr task kill -s SIGKILL "$t"
    wait_stopped "$t"
    ctr task delete "$t"
done <"$SCRATCH/tasks"
ctr container ls -q
cp "$SCRATCH/out" "$SCRATCH/containers"
while read -r c; do ctr container rm "$c"; done <"$SCRATCH/containers"

echo "== f. the pod's network: the VM wired by tc to a namespace as CNI leaves one"
# The pod's namespace holds eth0, one end of a veth pair, with an address, a MAC, an MTU
# and a default route; the other end, the gateway, is in a second namespace with a real
# stack. husk (the shim) enters the pod's namespace (ctr --with-ns), puts a tap there
# redirected both ways to eth0, gives the VM a virtio-net device with eth0's MAC, and the
# agent configures the guest's eth0 with eth0's addresses, MTU and routes.
POD_NS=husk-lab-pod
PEER_NS=husk-lab-peer
POD_MAC=02:48:55:53:4b:07
ipr() { "$IPROUTE2" "$@"; }
net_cleanup() {
    ipr netns del "$POD_NS" 2>/dev/null
    ipr netns del "$PEER_NS" 2>/dev/null
}
net_cleanup
ipr netns add "$POD_NS" && ipr netns add "$PEER_NS" &&
    ipr -n "$PEER_NS" link add eth0 type veth peer name vpod &&
    ipr -n "$PEER_NS" link set vpod netns "$POD_NS" &&
    ipr -n "$POD_NS" link set vpod name eth0 &&
    ipr -n "$POD_NS" link set eth0 address "$POD_MAC" mtu 1400 up &&
    ipr -n "$POD_NS" address add 10.79.0.2/24 dev eth0 &&
    ipr -n "$POD_NS" route add default via 10.79.0.1 &&
    ipr -n "$PEER_NS" link set lo up &&
    ipr -n "$PEER_NS" link set eth0 mtu 1400 up &&
    ipr -n "$PEER_NS" address add 10.79.0.1/24 dev eth0
check "the pod's network namespace, as CNI leaves one" test $? -eq 0
# The gateway's server: answers one connection with a line and keeps what it heard.
(echo from-the-host | "$GNU_TIMEOUT" 120 "$IPROUTE2" netns exec "$PEER_NS" nc -l -p 7777 \
    >"$SCRATCH/heard" 2>&1) &
SERVER=$!
sleep 0.5
# The pod's resolver configuration, bound at /etc/resolv.conf as CRI does it.
printf 'search pod.test svc.test\nnameserver 10.79.0.53\noptions ndots:5\n' >"$SCRATCH/resolv.conf"
ctr run --rm --runtime "$HUSK_RUNTIME" --with-ns "network:/run/netns/$POD_NS" \
    --mount "type=bind,src=$SCRATCH/resolv.conf,dst=/etc/resolv.conf,options=rbind:ro" "$IMAGE" c6 \
    sh -c 'ip -o address show eth0; ip -o link show eth0; ip route; cat /etc/resolv.conf
           echo from-the-pod | nc 10.79.0.1 7777'
expect "the container ran in the VM with the pod's network (status $RC)" test "$RC" -eq 0
expect "the guest's eth0 has the pod's address" grep -q "inet 10.79.0.2/24" "$SCRATCH/out"
expect "the guest's eth0 has the pod's MAC and MTU" \
    grep -q "mtu 1400 .*link/ether $POD_MAC" "$SCRATCH/out"
expect "the guest has the pod's default route" grep -q "default via 10.79.0.1 dev eth0" "$SCRATCH/out"
expect "the container heard the gateway's server" grep -qx from-the-host "$SCRATCH/out"
# shellcheck disable=SC2317 # called through expect
pod_resolver() {
    grep -qx "nameserver 10.79.0.53" "$SCRATCH/out" &&
        grep -qx "search pod.test svc.test" "$SCRATCH/out"
}
expect "the container's /etc/resolv.conf has the pod's name server and search domains" \
    pod_resolver
wait "$SERVER"
check "the gateway's server heard the container ($(cat "$SCRATCH/heard"))" \
    grep -qx from-the-pod "$SCRATCH/heard"
nothing_left "f"
left=$(ipr -n "$POD_NS" -o link show | grep -c husk-tap)
check "no tap is left in the pod's namespace ($left)" test "$left" -eq 0
ingress=$("$TC" -n "$POD_NS" qdisc show dev eth0 | grep -c ingress)
check "no ingress qdisc is left on the pod's eth0 ($ingress)" test "$ingress" -eq 0
net_cleanup

echo "== d. figures: ctr run --rm of echo hello, husk (builtin) vs runc, $RUNS runs each"
: >"$SCRATCH/husk.ms"
: >"$SCRATCH/runc.ms"
husk_bad=0
n=0
while [ $n -lt "$RUNS" ]; do
    run_vm husk-run "$T" "$CTR" --address "$SOCK" --namespace "$NS" run --rm \
        --runtime "$HUSK_RUNTIME" "$IMAGE" "fh$n" echo hello
    if [ "$RUN_RC" -eq 0 ] && [ "$(cat "$SCRATCH/husk-run.out")" = hello ]; then
        echo "$RUN_MS" >>"$SCRATCH/husk.ms"
        echo "  husk run $n: $RUN_MS ms"
    else
        husk_bad=$((husk_bad + 1))
        echo "  husk run $n failed ($RUN_RC):"
        show_run husk-run
    fi
    run_vm runc-run "$T" "$CTR" --address "$SOCK" --namespace "$NS" run --rm --no-pivot \
        --runtime "$RUNC_RUNTIME" "$IMAGE" "fr$n" echo hello
    if [ "$RUN_RC" -eq 0 ] && [ "$(cat "$SCRATCH/runc-run.out")" = hello ]; then
        echo "$RUN_MS" >>"$SCRATCH/runc.ms"
        echo "  runc run $n: $RUN_MS ms"
    else
        echo "  runc run $n failed ($RUN_RC):"
        show_run runc-run
    fi
    n=$((n + 1))
done
check "every husk ctr run --rm of echo hello printed hello and exited 0 ($husk_bad failed)" \
    test "$husk_bad" -eq 0
nothing_left "d"
husk_ms=$(sort -n "$SCRATCH/husk.ms" | awk '{ a[NR] = $1 } END { if (NR) print a[int((NR + 1) / 2)] }')
runc_ms=$(sort -n "$SCRATCH/runc.ms" | awk '{ a[NR] = $1 } END { if (NR) print a[int((NR + 1) / 2)] }')
if [ -n "$husk_ms" ] && [ -n "$runc_ms" ]; then
    echo "FIGURE: containerd-run husk_builtin_ms=$husk_ms runc_ms=$runc_ms ratio=$(awk -v h="$husk_ms" -v r="$runc_ms" 'BEGIN { printf "%.2f", h / r }')"
else
    echo "FIGURE: containerd-run not measured: a run failed (husk: $(wc -l <"$SCRATCH/husk.ms") ok, runc: $(wc -l <"$SCRATCH/runc.ms") ok)"
fi
echo "== e. figures: one idle pod's husk process (its guest RAM apart) vs runc's shim"
# shim_pid BINARY ID: the long-running shim of container ID.
shim_pid() {
    for f in /proc/[0-9]*/cmdline; do
        case "$(tr '\0' ' ' <"$f" 2>/dev/null)" in
            *"$1 "*"-id $2 "*) p=${f#/proc/}; echo "${p%/cmdline}" ;;
        esac
    done
}
# pss_kib PID GUEST_KIB: "OTHER GUEST", the process's PSS outside and inside the guest's
# RAM: vm-memory maps it as one region of GUEST_KIB, which the kernel may merge with an
# adjacent anonymous mapping of the same protection (seen: 132 KiB more), so a mapping of
# GUEST_KIB to GUEST_KIB + 2 MiB counts as the guest's.
pss_kib() {
    awk -v g="$2" '/^Size:/ { guest = (g > 0 && $2 >= g && $2 <= g + 2048) }
        /^Pss:/ { if (guest) gp += $2; else op += $2 }
        END { print op + 0, gp + 0 }' "/proc/$1/smaps"
}
ctr run -d --runtime "$HUSK_RUNTIME" "$IMAGE" idle-h sleep 1000
expect "ctr run -d of an idle husk pod (status $RC)" test "$RC" -eq 0
ctr run -d --no-pivot --runtime "$RUNC_RUNTIME" "$IMAGE" idle-r sleep 1000
expect "ctr run -d of an idle runc pod (status $RC)" test "$RC" -eq 0
sleep 3
hpid=$(shim_pid containerd-shim-husk-v2 idle-h)
rpid=$(shim_pid containerd-shim-runc-v2 idle-r)
if [ -n "$hpid" ] && [ -n "$rpid" ]; then
    read -r husk_kib guest_kib <<EOF
$(pss_kib "$hpid" $((256 * 1024)))
EOF
    read -r runc_kib _ <<EOF
$(pss_kib "$rpid" 0)
EOF
    check "the husk pod's guest RAM is a mapping of its own ($guest_kib KiB touched)" \
        test "$guest_kib" -gt 0
    awk -v h="$husk_kib" -v g="$guest_kib" -v r="$runc_kib" 'BEGIN {
        printf "FIGURE: containerd-idle-pod husk_shim_pss_mib=%.2f husk_guest_ram_pss_mib=%.2f runc_shim_pss_mib=%.2f ratio=%.2f\n",
            h / 1024, g / 1024, r / 1024, h / r }'
else
    check "both idle pods' shims are found (husk: '$hpid', runc: '$rpid')" false
fi
for t in idle-h idle-r; do
    ctr task kill -s SIGKILL "$t"
    wait_stopped "$t"
    ctr task delete "$t"
    ctr container rm "$t"
done
nothing_left "e"

summary containerd
