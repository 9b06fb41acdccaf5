#!/bin/sh
# Scenario group "virtio" (issues 3 and 7, layer 5): Linux's own virtio-blk, virtio-vsock and
# virtio-net drivers in the built guest kernel, against husk's devices under `husk vmm`. The
# guest is the kernel with the device-test initramfs (tests/lab/guest: busybox, labtool,
# init.sh), which runs the test named by `husk.test=` on its command line. One guest boot
# per test:
#
#   blk    drives lab-rw (ext4 made here with mkfs.ext4 -d) and lab-ro (ext4, ro=on). The
#          guest sees each drive with the size of its file, the read-only flag and the serial
#          given with id=; reads the host's files; writes files of known patterns on lab-rw,
#          syncs, unmounts, remounts and reads them back; every write to lab-ro fails (on the
#          mounted filesystem, raw to the device, and after `blockdev --setrw`); then it
#          resets (reboot=k). Then here: husk exited 0, e2fsck -fn of both images is clean,
#          every byte of the guest's files (dumped with debugfs) is the expected pattern, and
#          lab-ro's image has the same sha256 as before.
#   fsync  drives lab-raw (raw) and lab-ext4 (ext4), write-back caches (VIRTIO_BLK_F_FLUSH).
#          The guest writes raw to lab-raw and a file on lab-ext4, fsyncs both and prints
#          LABGUEST-FSYNC-DONE; at that line husk is killed with SIGKILL. Then here: the
#          raw image holds the pattern, e2fsck replays the journal and then finds the
#          filesystem clean, and the file holds the pattern, byte for byte.
#   vsock  `--vsock cid=3,uds=U`. Guest-initiated: the guest sends VSOCK_BYTES (256 MiB) to
#          CID 2 port 6000 (a labtool server here on U_6000), then opens VSOCK_CONNS (64)
#          connections at once to port 6001 (U_6001), half sending and half receiving 64 KiB
#          each; a connection to port 6002, where nothing listens, is reset. Host-initiated:
#          `CONNECT 5999` (nothing listens there in the guest) is refused; labtool here sends
#          VSOCK_BYTES to guest port 5000 through U (CONNECT 5000), then opens VSOCK_CONNS
#          connections at once, mixed. Every transfer is verified byte by byte against the
#          pattern and both ends' checksums are compared. The rates of the two big transfers
#          (measured by the sender, from its request to the receiver's verdict) are printed
#          as `FIGURE:` lines, a benchmark figure, not a check, with the rate of the same
#          pattern through a pipe here without a VM (what the CPU alone allows) to compare with.
#   hotplug  drives attached to and detached from the running VM (virtio-mmio has no
#          hotplug: the VMM gives the VM empty spare slots). Run by husk-vmm's example
#          `spare_drives` (SPARE_DRIVES), which boots the guest with 2 spare slots and acts
#          on the guest's LABGUEST-ATTACH/DETACH lines through the VMM's drive handle. The
#          guest sees the empty slots (size 0, no serial); then lab-hot-ro (ext4 made here,
#          read-only) appears with its size and serial, Linux's virtio_blk printing the new
#          size, its /data reads back and a raw write to it fails; it is detached (size 0
#          again); lab-hot-rw (raw, writable) appears and takes a fsynced 1 MiB that reads
#          back; detached; lab-hot-ro goes into a slot once more and reads back. Then here:
#          every attach and detach succeeded, the read-only image is unchanged and the
#          writable one holds the guest's 1 MiB. It needs SPARE_DRIVES (`cargo build
#          --release -p husk-vmm --example spare_drives`; run.sh builds and carries it).
#   net    virtio-net (issue 7) between the guest and a network namespace made here
#          (husk-lab-net, iproute2's ip, IPROUTE2), deleted at the end. There: htap0, made
#          here (persistent, 10.77.0.1/24); husk runs in the namespace (`ip netns exec`)
#          with --net tap=htap0 and --net tap=htap1, which husk makes itself and this script
#          then sets to 10.78.0.1/24, MTU 9000. The guest finds its interfaces by MAC and
#          sets 10.77.0.2/24 (MTU 1500) and 10.78.0.2/24 (MTU 9000). (a) pings and a TCP
#          exchange (labtool, put and get at once) on each interface; (b) NET_BYTES (1 GiB)
#          guest -> host and host -> guest over TCP on net0, verified byte for byte, both
#          ends' checksums compared, rates as FIGURE: lines; (c) net1 carries all of (a), a
#          16 MiB TCP transfer each way and (d): a UDP datagram of MTU-28 bytes with DF gets
#          through each way (received and verified), one byte more is refused (EMSGSIZE),
#          and ping -s MTU-28; (e) while the guest floods UDP at the host on net0 for 10 s,
#          it reads its drive lab-net (virtio-blk) back and sends 8 MiB over vsock: both
#          complete, verified, with the flood still running. Then host-initiated: pings,
#          TCP to the guest's server on each interface, the DF datagrams towards the guest.
#          Afterwards husk's htap1 is gone, and after `ip netns del` nothing is left.
#
# Arguments: the tests to run (default: blk fsync vsock hotplug net), one guest boot each.
# Environment: HUSK_LAB_LIB, HUSK, GUEST_KERNEL, DEVTEST_INITRD (the device-test initramfs),
# LABTOOL (labtool built for this host), MKFS_EXT4, DEBUGFS, E2FSCK (e2fsprogs), GNU_DATE,
# GNU_TIMEOUT, BOOT_TIMEOUT (seconds per guest boot, default 300), VSOCK_BYTES (default
# 268435456), VSOCK_CONNS (default 64), SPARE_DRIVES (hotplug only), IPROUTE2 (net only),
# NET_BYTES (default 1073741824), NET_TIMEOUT (seconds for the guest's part of net, default
# 600; husk is killed 60 s later).
set -u
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$HUSK_LAB_LIB"
begin
need_file "$HUSK" "the husk binary"
need_file "$GUEST_KERNEL" "the guest kernel"
need_file "$DEVTEST_INITRD" "the device-test initramfs"
need_file "$LABTOOL" "labtool"
for tool in "$MKFS_EXT4" "$DEBUGFS" "$E2FSCK"; do need_file "$tool" "e2fsprogs' tool"; done
BOOT_TIMEOUT=${BOOT_TIMEOUT:-300}
VSOCK_BYTES=${VSOCK_BYTES:-268435456}
VSOCK_CONNS=${VSOCK_CONNS:-64}
MEM_MIB=256
TESTS=${*:-blk fsync vsock hotplug net}
NET_BYTES=${NET_BYTES:-1073741824}
NET1_BYTES=${NET1_BYTES:-16777216}
NET_TIMEOUT=${NET_TIMEOUT:-600}
NET_FLOOD_SECONDS=${NET_FLOOD_SECONDS:-10}
NET_BLK_BYTES=${NET_BLK_BYTES:-8388608}
NET_VSOCK_BYTES=${NET_VSOCK_BYTES:-8388608}

# ---- running a VM ----------------------------------------------------------------------

# The VM's drives (husk --drive specs, separated by spaces; paths without spaces or commas),
# vsock socket (empty: none), network interfaces (husk --net specs, separated by spaces)
# and the network namespace husk runs in (empty: the lab's own; `ip netns exec`) for the
# next vm_start; VM_TIMEOUT, if set, replaces BOOT_TIMEOUT for it.
DRIVES=""
VSOCK_UDS=""
NETS=""
NETNS=""

# vm_start NAME CMDLINE [killable]: starts husk vmm in the background with the device-test
# guest, 1 vCPU, 256 MiB, the drives and vsock above; console to $SCRATCH/NAME.raw, stderr
# to $SCRATCH/NAME.err. Sets VM_PID and VM_T0. Without "killable" husk runs under
# `timeout BOOT_TIMEOUT` (status 124 when it expires; VM_PID is timeout's, which passes a
# SIGTERM on); with it, VM_PID is husk itself.
vm_start() {
    _name=$1
    _test=${2#husk.test=}
    _test=${_test%% *}
    # reboot=k: the guest's `reboot -f` resets through the i8042 and husk exits 0.
    set -- "$HUSK" vmm --kernel "$GUEST_KERNEL" --initrd "$DEVTEST_INITRD" --vcpus 1 \
        --mem-mib "$MEM_MIB" --cmdline "console=ttyS0 reboot=k panic=-1 $2"
    for _d in $DRIVES; do set -- "$@" --drive "$_d"; done
    if [ -n "$VSOCK_UDS" ]; then set -- "$@" --vsock "cid=3,uds=$VSOCK_UDS"; fi
    for _n in $NETS; do set -- "$@" --net "$_n"; done
    # `ip netns exec` execs husk itself (no fork): VM_PID stays husk's (or timeout's).
    if [ -n "$NETNS" ]; then set -- "$IPROUTE2" netns exec "$NETNS" "$@"; fi
    echo "== husk vmm: husk.test=$_test ($*)"
    VM_T0=$(now_ns)
    if [ "${3:-}" = killable ]; then
        "$@" </dev/null >"$SCRATCH/$_name.raw" 2>"$SCRATCH/$_name.err" &
    else
        "$GNU_TIMEOUT" -k 5 "${VM_TIMEOUT:-$BOOT_TIMEOUT}" "$@" </dev/null \
            >"$SCRATCH/$_name.raw" 2>"$SCRATCH/$_name.err" &
    fi
    VM_PID=$!
}

# vm_wait NAME: waits for the VMM; sets RUN_RC, RUN_MS and $SCRATCH/NAME.out.
vm_wait() {
    wait "$VM_PID"
    RUN_RC=$?
    RUN_MS=$((($(now_ns) - VM_T0) / 1000000))
    tr -d '\r' <"$SCRATCH/$1.raw" >"$SCRATCH/$1.out"
}

# wait_console NAME TEXT: waits until the console shows the line TEXT, the VMM ends, or
# BOOT_TIMEOUT passes since the start; succeeds only in the first case.
wait_console() {
    _deadline=$(($(now_ns) / 1000000000 + ${VM_TIMEOUT:-$BOOT_TIMEOUT}))
    while :; do
        if tr -d '\r' <"$SCRATCH/$1.raw" | grep -qx "$2"; then return 0; fi
        # kill -0 also succeeds for an exited child not yet reaped; the shell reaps it
        # while it runs the next foreground command (sleep), so this ends one round later.
        kill -0 "$VM_PID" 2>/dev/null || return 1
        [ "$(($(now_ns) / 1000000000))" -lt "$_deadline" ] || return 1
        sleep 0.05
    done
}

# check_exit NAME: husk exited 0.
check_exit() {
    if [ "$RUN_RC" -eq 124 ]; then
        fail "[$1] husk exits 0: it was killed after ${VM_TIMEOUT:-$BOOT_TIMEOUT} s"
    else
        check "[$1] husk exits 0 after the guest's reset (status $RUN_RC after $RUN_MS ms)" \
            test "$RUN_RC" -eq 0
    fi
}

# guest_checks NAME [EXPECTED]: one check per LABGUEST-PASS/FAIL line of the guest, then:
# the guest ran its test to the end (LABGUEST-DONE; skipped for fsync, killed on purpose),
# no kernel panic, no oops or I/O error on the console (but for lines matching the
# extended regular expression EXPECTED, which the test provokes on purpose).
guest_checks() {
    grep -E '^LABGUEST-(PASS|FAIL): ' "$SCRATCH/$1.out" >"$SCRATCH/$1.results"
    while IFS= read -r _line; do
        case "$_line" in
            LABGUEST-PASS:*) pass "[$1, guest] ${_line#LABGUEST-PASS: }" ;;
            *) fail "[$1, guest] ${_line#LABGUEST-FAIL: }" ;;
        esac
    done <"$SCRATCH/$1.results"
    if [ "$1" != fsync ]; then
        check "[$1] the guest ran its test to the end (LABGUEST-DONE $1)" \
            grep -qx "LABGUEST-DONE $1" "$SCRATCH/$1.out"
    fi
    _problems=$(grep -E 'Kernel panic|Oops|BUG:|I/O error|blk_update_request|EXT4-fs error' \
        "$SCRATCH/$1.out" | grep -vE "${2:-^\$}" | head -n 3)
    check "[$1] no panic, oops or I/O error on the guest console${_problems:+ ($_problems)}" \
        test -z "$_problems"
}

# check_drive NAME SERIAL DEVICE SECTORS RO: the guest's LABGUEST-DRIVE line for SERIAL.
check_drive() {
    _line=$(grep -E "^LABGUEST-DRIVE [a-z]+ .* serial=$2\$" "$SCRATCH/$1.out" | head -n 1)
    _want="$3 size=$4 ro=$5 serial=$2"
    if [ "${_line#LABGUEST-DRIVE }" = "$_want" ]; then
        pass "[$1] the guest sees drive $2 as: $_want"
    else
        fail "[$1] the guest sees drive $2 as '$_want', saw '${_line:-no drive with that serial}'"
    fi
}

# show NAME: the console and stderr of a run, after a failure.
show() {
    echo "   the whole run:"
    show_run "$1"
}

# mkext4 IMAGE MIB [DIR]: a fresh ext4 image, populated from DIR.
mkext4() {
    if ! "$MKFS_EXT4" -q -F -E lazy_itable_init=0,lazy_journal_init=0 ${3:+-d "$3"} \
        "$1" "${2}M" >"$SCRATCH/mkfs.log" 2>&1; then
        cat "$SCRATCH/mkfs.log"
        die "mkfs.ext4 of $1 failed"
    fi
}

# dump_check NAME IMAGE PATH SEED BYTES: PATH in the ext4 IMAGE is BYTES bytes of pattern(SEED).
dump_check() {
    rm -f "$SCRATCH/dump"
    "$DEBUGFS" -R "dump $3 $SCRATCH/dump" "$2" >"$SCRATCH/debugfs.log" 2>&1
    if [ ! -f "$SCRATCH/dump" ]; then
        fail "[$1] debugfs dumps $3 from $(basename "$2"): $(tail -n 1 "$SCRATCH/debugfs.log")"
        return
    fi
    if _res=$("$LABTOOL" check "$4" "$5" "$SCRATCH/dump" 2>&1); then
        pass "[$1] $3 in $(basename "$2") is exactly $5 bytes of pattern($4), byte for byte"
    else
        fail "[$1] $3 in $(basename "$2"): $_res"
    fi
}

# e2fsck_clean NAME IMAGE: e2fsck -fn finds nothing to fix.
e2fsck_clean() {
    "$E2FSCK" -fn "$2" >"$SCRATCH/e2fsck.log" 2>&1
    _rc=$?
    if [ "$_rc" -eq 0 ]; then
        pass "[$1] e2fsck -fn $(basename "$2") is clean"
    else
        fail "[$1] e2fsck -fn $(basename "$2") is clean: exit status $_rc (expected 0):"
        sed 's/^/    e2fsck| /' "$SCRATCH/e2fsck.log" | head -n 20
    fi
}

sha() { sha256sum "$1" | cut -d' ' -f1; }

# ---- the tests -----------------------------------------------------------------------------

test_blk() {
    before=$FAILS
    mkdir -p "$SCRATCH/rw-root" "$SCRATCH/ro-root"
    echo "made on the host" >"$SCRATCH/rw-root/hello"
    "$LABTOOL" gen 21 2097152 >"$SCRATCH/ro-root/data"
    mkext4 "$SCRATCH/rw.img" 64 "$SCRATCH/rw-root"
    mkext4 "$SCRATCH/ro.img" 16 "$SCRATCH/ro-root"
    ro_sha=$(sha "$SCRATCH/ro.img")
    DRIVES="path=$SCRATCH/rw.img,id=lab-rw path=$SCRATCH/ro.img,ro=on,id=lab-ro"
    VSOCK_UDS=""
    vm_start blk "husk.test=blk"
    vm_wait blk
    check_exit blk
    check_drive blk lab-rw vda $((64 * 2048)) 0
    check_drive blk lab-ro vdb $((16 * 2048)) 1
    guest_checks blk
    e2fsck_clean blk "$SCRATCH/rw.img"
    dump_check blk "$SCRATCH/rw.img" /big 11 4194304
    dump_check blk "$SCRATCH/rw.img" /dir/odd 12 1048699
    small=$("$DEBUGFS" -R "cat /dir/small" "$SCRATCH/rw.img" 2>/dev/null)
    check "[blk] /dir/small in rw.img reads 'written in the guest' (saw '$small')" \
        test "$small" = "written in the guest"
    after=$(sha "$SCRATCH/ro.img")
    check "[blk] the read-only drive's image is unchanged (sha256 $after, before $ro_sha)" \
        test "$after" = "$ro_sha"
    e2fsck_clean blk "$SCRATCH/ro.img"
    if [ "$FAILS" -gt "$before" ]; then show blk; fi
    rm -f "$SCRATCH/rw.img" "$SCRATCH/ro.img" "$SCRATCH/dump"
}

test_fsync() {
    before=$FAILS
    "$GNU_TIMEOUT" 60 dd if=/dev/zero of="$SCRATCH/raw.img" bs=1M count=8 2>/dev/null
    mkext4 "$SCRATCH/ext4.img" 64
    DRIVES="path=$SCRATCH/raw.img,id=lab-raw path=$SCRATCH/ext4.img,id=lab-ext4"
    VSOCK_UDS=""
    vm_start fsync "husk.test=fsync" killable
    if wait_console fsync LABGUEST-FSYNC-DONE; then
        kill -9 "$VM_PID"
        pass "[fsync] the guest printed LABGUEST-FSYNC-DONE; husk got SIGKILL at once"
    else
        kill -9 "$VM_PID" 2>/dev/null
        fail "[fsync] the guest prints LABGUEST-FSYNC-DONE within ${BOOT_TIMEOUT} s (husk killed)"
    fi
    vm_wait fsync
    check "[fsync] husk died of SIGKILL (status $RUN_RC, expected 137)" test "$RUN_RC" -eq 137
    guest_checks fsync
    done_lines=$(grep -c '^write-fsync: done' "$SCRATCH/fsync.out")
    check "[fsync] the guest saw both fsyncs return ($done_lines 'write-fsync: done' lines)" \
        test "$done_lines" -eq 2
    if res=$(head -c 4194304 "$SCRATCH/raw.img" | "$LABTOOL" check 31 4194304 2>&1); then
        pass "[fsync] raw.img starts with the 4 MiB of pattern(31) fsynced raw, byte for byte"
    else
        fail "[fsync] raw.img: $res"
    fi
    # The guest died with the filesystem mounted: e2fsck replays the journal (exit status
    # 0 or 1: nothing or something fixed), and then must find it clean.
    "$E2FSCK" -fy "$SCRATCH/ext4.img" >"$SCRATCH/e2fsck.log" 2>&1
    rc=$?
    if [ "$rc" -le 1 ]; then
        pass "[fsync] e2fsck -fy ext4.img recovers it (exit status $rc)"
    else
        fail "[fsync] e2fsck -fy ext4.img: exit status $rc (expected 0 or 1)"
        sed 's/^/    e2fsck| /' "$SCRATCH/e2fsck.log" | head -n 20
    fi
    e2fsck_clean fsync "$SCRATCH/ext4.img"
    dump_check fsync "$SCRATCH/ext4.img" /durable 32 3145728
    if [ "$FAILS" -gt "$before" ]; then show fsync; fi
    rm -f "$SCRATCH/raw.img" "$SCRATCH/ext4.img" "$SCRATCH/dump"
}

# host_server NAME PORT COUNT: a labtool server, in the background, for COUNT of the guest's
# connections to host port PORT (the Unix socket <uds>_PORT); its output in
# $SCRATCH/NAME.log.
host_server() {
    "$LABTOOL" serve --unix "${VSOCK_UDS}_$2" --count "$3" --timeout "$BOOT_TIMEOUT" \
        >"$SCRATCH/$1.log" 2>&1 &
}

# host_client NAME PORT ARGS...: a labtool client to guest port PORT (CONNECT PORT through
# the Unix socket); its output in $SCRATCH/NAME.log and on stdout.
# shellcheck disable=SC2317 # called through check
host_client() {
    _name=$1
    _port=$2
    shift 2
    "$LABTOOL" client --hybrid "$VSOCK_UDS:$_port" --timeout "$BOOT_TIMEOUT" "$@" \
        >"$SCRATCH/$_name.log" 2>&1
    _rc=$?
    sed 's/^/    host| /' "$SCRATCH/$_name.log"
    return "$_rc"
}

# host_refused PORT: `CONNECT PORT` (no listener in the guest) ends in a closed connection.
# shellcheck disable=SC2317 # called through check
host_refused() {
    if "$LABTOOL" client --hybrid "$VSOCK_UDS:$1" --timeout 60 put 1 1 >"$SCRATCH/refused.log" 2>&1; then
        sed 's/^/    host| /' "$SCRATCH/refused.log"
        return 1
    fi
    sed -n 's/^client: FAIL: connection 0: /    host| connection refused: /p' "$SCRATCH/refused.log"
    grep -q 'closed the connection after' "$SCRATCH/refused.log"
}

# finish_bg PID SECONDS: waits for the background process PID, killing it if it is still
# running after SECONDS; sets BG_RC to its exit status.
finish_bg() {
    _i=0
    while kill -0 "$1" 2>/dev/null && [ "$_i" -lt $(($2 * 20)) ]; do
        sleep 0.05
        _i=$((_i + 1))
    done
    kill "$1" 2>/dev/null
    wait "$1"
    BG_RC=$?
}

# figure DIRECTION LOG: the FIGURE line of the big transfer whose sender's log is LOG
# ("client: PUT ... in S s = R MB/s").
figure() {
    _rate=$(sed -n 's/^client: PUT .* in [0-9.]* s = \([0-9.]*\) MB\/s$/\1/p' "$2" | head -n 1)
    echo "FIGURE: vsock $1 $((VSOCK_BYTES / 1048576)) MiB: ${_rate:-?} MB/s"
}

test_vsock() {
    before=$FAILS
    mib=$((VSOCK_BYTES / 1048576))
    VSOCK_UDS=$SCRATCH/vsock.sock
    DRIVES=""
    rm -f "$VSOCK_UDS" "${VSOCK_UDS}_6000" "${VSOCK_UDS}_6001"
    host_server up 6000 1
    up_pid=$!
    host_server many 6001 "$VSOCK_CONNS"
    many_pid=$!
    # Both servers listen before the guest starts.
    for _ in $(seq 100); do
        if grep -q listening "$SCRATCH/up.log" && grep -q listening "$SCRATCH/many.log"; then
            break
        fi
        sleep 0.05
    done
    vm_start vsock "husk.test=vsock husk.vsock_bytes=$VSOCK_BYTES husk.vsock_conns=$VSOCK_CONNS husk.vsock_timeout=$BOOT_TIMEOUT"
    if wait_console vsock LABGUEST-HOST-TURN &&
        wait_console vsock "serve: listening on vsock port 5000 for $((VSOCK_CONNS + 1)) connection(s)"; then
        echo "   guest-initiated part done; host-initiated part:"
        check "[vsock] host-initiated: CONNECT 5999 (nothing listens there in the guest) is refused" \
            host_refused 5999
        check "[vsock] host-initiated (CONNECT 5000): $mib MiB host -> guest, verified, checksums equal" \
            host_client put-big 5000 put 51 "$VSOCK_BYTES"
        check "[vsock] host-initiated (CONNECT 5000): $VSOCK_CONNS connections at once, mixed put/get of 64 KiB, all verified" \
            host_client many-in 5000 --conns "$VSOCK_CONNS" mixed 2000 65536
        # The guest waits for connections that may never come: do not wait for its timeout.
        if [ "$FAILS" -gt "$before" ]; then kill "$VM_PID" 2>/dev/null; fi
    else
        fail "[vsock] the guest finishes its guest-initiated part (LABGUEST-HOST-TURN) within ${BOOT_TIMEOUT} s, its server listening"
    fi
    vm_wait vsock
    check_exit vsock
    guest_checks vsock
    # The guest is gone: its connections are over; a server still waiting never gets them.
    finish_bg "$up_pid" 10
    up_rc=$BG_RC
    finish_bg "$many_pid" 10
    many_rc=$BG_RC
    sed 's/^/    host| /' "$SCRATCH/up.log" "$SCRATCH/many.log"
    check "[vsock] guest-initiated: the host server on port 6000 received $mib MiB, verified (status $up_rc)" \
        test "$up_rc" -eq 0
    check "[vsock] guest-initiated: the host server on port 6001 served $VSOCK_CONNS connections at once, verified (status $many_rc)" \
        test "$many_rc" -eq 0
    grep -E '^(client|serve): ' "$SCRATCH/vsock.out" | sed 's/^/    guest| /'
    echo "   vsock rates, husk vmm, 1 vCPU: each measured by the sender, from its request to the receiver's verdict"
    figure "guest->host" "$SCRATCH/vsock.out"
    figure "host->guest" "$SCRATCH/put-big.log"
    # The same pattern through a pipe here, without a VM: what the CPU alone allows (in the
    # lab, the software CPU bounds everything; compare the figures as ratios to this one).
    _t0=$(now_ns)
    if "$LABTOOL" gen 61 "$VSOCK_BYTES" | "$LABTOOL" check 61 "$VSOCK_BYTES" >/dev/null; then
        _ns=$(($(now_ns) - _t0))
        echo "FIGURE: pipe (labtool gen | check, no VM) $mib MiB: $(awk -v b="$VSOCK_BYTES" -v ns="$_ns" 'BEGIN { printf "%.1f", b / 1e6 / (ns / 1e9) }') MB/s"
    fi
    if [ "$FAILS" -gt "$before" ]; then show vsock; fi
}

test_hotplug() {
    before=$FAILS
    [ -n "${SPARE_DRIVES:-}" ] ||
        die "hotplug needs SPARE_DRIVES: husk-vmm's example spare_drives (cargo build --release -p husk-vmm --example spare_drives)"
    need_file "$SPARE_DRIVES" "husk-vmm's example spare_drives"
    mkdir -p "$SCRATCH/hot-root"
    "$LABTOOL" gen 21 2097152 >"$SCRATCH/hot-root/data"
    mkext4 "$SCRATCH/hot-ro.img" 16 "$SCRATCH/hot-root"
    "$GNU_TIMEOUT" 60 dd if=/dev/zero of="$SCRATCH/hot-rw.img" bs=1M count=4 2>/dev/null
    ro_sha=$(sha "$SCRATCH/hot-ro.img")
    set -- "$SPARE_DRIVES" --kernel "$GUEST_KERNEL" --initrd "$DEVTEST_INITRD" \
        --mem-mib "$MEM_MIB" --spares 2 --console "$SCRATCH/hotplug.console" \
        --cmdline "console=ttyS0 reboot=k panic=-1 husk.test=hotplug husk.hot_write_ro=1 husk.hot_ro_sectors=$((16 * 2048)) husk.hot_rw_sectors=$((4 * 2048))" \
        --drive "lab-hot-ro=$SCRATCH/hot-ro.img,ro" --drive "lab-hot-rw=$SCRATCH/hot-rw.img"
    echo "== spare_drives: husk.test=hotplug ($*)"
    run_vm hotplug "$BOOT_TIMEOUT" "$@"
    tr -d '\r' <"$SCRATCH/hotplug.console" >"$SCRATCH/hotplug.out"
    sed 's/^/    host| /' "$SCRATCH/hotplug.err"
    check_exit hotplug
    # The raw write the guest makes to the read-only drive on purpose fails in the device.
    guest_checks hotplug 'I/O error, dev vd[a-z]+, sector [0-9]+ op 0x1:\(WRITE\)|Buffer I/O error on dev vd[a-z]+, logical block [0-9]+, lost async page write'
    for action in "attached lab-hot-ro" "detached lab-hot-ro" "attached lab-hot-rw" \
        "detached lab-hot-rw"; do
        count=$(grep -c "^spare_drives: $action " "$SCRATCH/hotplug.err")
        check "[hotplug] spare_drives $action through the drive handle ($count times)" \
            test "$count" -ge 1
    done
    check "[hotplug] spare_drives reports no failure" \
        test -z "$(grep 'spare_drives: FAIL' "$SCRATCH/hotplug.err")"
    # Linux's virtio_blk heard the configuration change and read the new capacity.
    check "[hotplug] the guest kernel's virtio_blk reports the attached drive's new size" \
        grep -qE "\[vd[a-z]+\] new size: $((16 * 2048)) 512-byte logical blocks" \
        "$SCRATCH/hotplug.out"
    after=$(sha "$SCRATCH/hot-ro.img")
    check "[hotplug] the read-only image is unchanged (sha256 $after, before $ro_sha)" \
        test "$after" = "$ro_sha"
    e2fsck_clean hotplug "$SCRATCH/hot-ro.img"
    if res=$(head -c 1048576 "$SCRATCH/hot-rw.img" | "$LABTOOL" check 24 1048576 2>&1); then
        pass "[hotplug] hot-rw.img starts with the guest's 1 MiB of pattern(24), byte for byte"
    else
        fail "[hotplug] hot-rw.img: $res"
    fi
    if [ "$FAILS" -gt "$before" ]; then show hotplug; fi
    rm -f "$SCRATCH/hot-ro.img" "$SCRATCH/hot-rw.img"
}

# ---- net -----------------------------------------------------------------------------------

NS=husk-lab-net
# in_ns COMMAND...: runs COMMAND in the test's network namespace.
in_ns() { "$IPROUTE2" netns exec "$NS" "$@"; }

# net_bg NAME COMMAND...: a labtool (or other) process in the namespace, in the background,
# its output in $SCRATCH/NAME.log; sets BG_PID.
net_bg() {
    _name=$1
    shift
    in_ns "$@" >"$SCRATCH/$_name.log" 2>&1 &
    BG_PID=$!
}

# net_step DESCRIPTION COMMAND...: a check whose command's output is shown, prefixed.
# shellcheck disable=SC2317 # called through check
net_step() {
    _what=$1
    shift
    if _out=$("$@" 2>&1); then
        pass "$_what"
        _rc=0
    else
        fail "$_what"
        _rc=1
    fi
    echo "$_out" | sed 's/^/    host| /'
    return "$_rc"
}

# net_figure WHAT OP SEED LOG: the FIGURE line of the client transfer OP (PUT or GET) of
# pattern(SEED) in LOG ("client: OP seed=SEED bytes=N ... in S s = R MB/s").
net_figure() {
    _line=$(grep -E "^client: $2 seed=$3 " "$4" | head -n 1)
    _rate=$(echo "$_line" | sed -n 's/.* = \([0-9.]*\) MB\/s$/\1/p')
    _bytes=$(echo "$_line" | sed -n 's/.* bytes=\([0-9]*\) .*/\1/p')
    echo "FIGURE: net $1 $((${_bytes:-0} / 1048576)) MiB: ${_rate:-?} MB/s"
}

test_net() {
    before=$FAILS
    [ -n "${IPROUTE2:-}" ] || die "net needs IPROUTE2 (iproute2's ip; run.sh carries it)"
    need_file "$IPROUTE2" "iproute2's ip"
    mib=$((NET_BYTES / 1048576))
    mac0=02:77:00:00:00:02
    mac1=02:78:00:00:00:02
    mtu1=9000
    big=$((mtu1 - 28))
    # The host end: a namespace of its own, deleted at the end with all it holds. htap0 is
    # made here (persistent, iproute2) and husk attaches to it; htap1 is made by husk itself
    # (and goes with it); both get their address, htap1 its MTU, once they exist.
    "$IPROUTE2" netns del "$NS" 2>/dev/null
    if ! out=$("$IPROUTE2" netns add "$NS" 2>&1 && "$IPROUTE2" -n "$NS" link set lo up 2>&1 &&
        "$IPROUTE2" -n "$NS" tuntap add dev htap0 mode tap vnet_hdr 2>&1 &&
        "$IPROUTE2" -n "$NS" addr add 10.77.0.1/24 dev htap0 2>&1 &&
        "$IPROUTE2" -n "$NS" link set htap0 up 2>&1); then
        fail "[net] the host end: netns $NS with the tap htap0 (10.77.0.1/24): $out"
        "$IPROUTE2" netns del "$NS" 2>/dev/null
        return
    fi
    pass "[net] the host end: netns $NS, the tap htap0 made there (10.77.0.1/24, up)"
    "$GNU_TIMEOUT" 60 "$LABTOOL" gen 91 "$NET_BLK_BYTES" >"$SCRATCH/net-blk.img"
    VSOCK_UDS=$SCRATCH/net.vsock
    rm -f "$VSOCK_UDS" "${VSOCK_UDS}_6000"
    "$LABTOOL" serve --unix "${VSOCK_UDS}_6000" --count 1 --timeout "$NET_TIMEOUT" \
        >"$SCRATCH/net-vsock.log" 2>&1 &
    vsock_pid=$!
    net_bg net-s0 "$LABTOOL" serve --tcp-listen 10.77.0.1:7000 --count 4 --timeout "$NET_TIMEOUT"
    s0_pid=$BG_PID
    DRIVES="path=$SCRATCH/net-blk.img,ro=on,id=lab-net"
    NETS="tap=htap0,mac=$mac0 tap=htap1,mac=$mac1"
    NETNS=$NS
    VM_TIMEOUT=$((NET_TIMEOUT + 60))
    vm_start net "husk.test=net husk.net0=$mac0,10.77.0.2/24,10.77.0.1,1500 husk.net1=$mac1,10.78.0.2/24,10.78.0.1,$mtu1 husk.net_bytes=$NET_BYTES husk.net1_bytes=$NET1_BYTES husk.net_timeout=$NET_TIMEOUT husk.flood_seconds=$NET_FLOOD_SECONDS husk.flood_blk_bytes=$NET_BLK_BYTES husk.flood_vsock_bytes=$NET_VSOCK_BYTES"
    NETS=""
    NETNS=""
    # husk makes htap1 when it builds the VM, long before the guest needs it.
    i=0
    while ! "$IPROUTE2" -n "$NS" link show htap1 >/dev/null 2>&1 && [ "$i" -lt 600 ] &&
        kill -0 "$VM_PID" 2>/dev/null; do
        sleep 0.05
        i=$((i + 1))
    done
    if out=$("$IPROUTE2" -n "$NS" link set htap1 mtu "$mtu1" 2>&1 &&
        "$IPROUTE2" -n "$NS" addr add 10.78.0.1/24 dev htap1 2>&1 &&
        "$IPROUTE2" -n "$NS" link set htap1 up 2>&1); then
        pass "[net] husk made the tap htap1 in the namespace it runs in; set to 10.78.0.1/24, MTU $mtu1, up"
    else
        fail "[net] husk makes the tap htap1 in its namespace (then 10.78.0.1/24, MTU $mtu1): $out"
    fi
    net_bg net-s1 "$LABTOOL" serve --tcp-listen 10.78.0.1:7000 --count 4 --timeout "$NET_TIMEOUT"
    s1_pid=$BG_PID
    net_bg net-u1 "$LABTOOL" udp-recv 10.78.0.1:7100 "$big" --timeout "$NET_TIMEOUT"
    u1_pid=$BG_PID
    if wait_console net LABGUEST-HOST-TURN; then
        echo "   the guest's part is done; the host's part:"
        net_step "[net] host-initiated: ping 10.77.0.2 (net0) from the host end" \
            in_ns ping -c 2 -W 5 10.77.0.2
        net_step "[net] host-initiated: ping -s $big 10.78.0.2 (net1, MTU $mtu1) from the host end" \
            in_ns ping -c 2 -W 5 -s "$big" 10.78.0.2
        net_step "[net] host-initiated: TCP to the guest's 10.77.0.2:5000 (net0), 1 MiB host -> guest, verified, checksums equal" \
            in_ns "$LABTOOL" client --tcp 10.77.0.2:5000 --retry 10 --timeout 120 put 131 1048576
        net_step "[net] host-initiated: TCP to the guest's 10.78.0.2:5000 (net1), 1 MiB guest -> host, verified, checksums equal" \
            in_ns "$LABTOOL" client --tcp 10.78.0.2:5000 --retry 10 --timeout 120 get 132 1048576
        net_step "[net] host-initiated: a UDP datagram of $big bytes with DF to the guest's net1 (MTU $mtu1) is sent" \
            in_ns "$LABTOOL" udp-send 10.78.0.2:7100 "$big" --df
        if out=$(in_ns "$LABTOOL" udp-send 10.78.0.2:7100 $((big + 1)) --df 2>&1); then
            fail "[net] host-initiated: a UDP datagram of $((big + 1)) bytes with DF on htap1 (MTU $mtu1) is refused: it was sent"
        else
            pass "[net] host-initiated: a UDP datagram of $((big + 1)) bytes with DF on htap1 (MTU $mtu1) is refused ($(echo "$out" | sed 's/^udp-send: FAIL: //'))"
        fi
        if [ "$FAILS" -gt "$before" ]; then kill "$VM_PID" 2>/dev/null; fi
    else
        fail "[net] the guest finishes its part (LABGUEST-HOST-TURN) within $NET_TIMEOUT s"
    fi
    vm_wait net
    VM_TIMEOUT=""
    check_exit net
    guest_checks net
    # The guest is gone: servers still waiting never get their connections.
    for pid_name in "$s0_pid net-s0 10.77.0.1:7000 4" "$s1_pid net-s1 10.78.0.1:7000 4" \
        "$u1_pid net-u1 10.78.0.1:7100 1" "$vsock_pid net-vsock vsock:6000 1"; do
        # shellcheck disable=SC2086 # the words of pid_name
        set -- $pid_name
        finish_bg "$1" 10
        sed 's/^/    host| /' "$SCRATCH/$2.log"
        check "[net] the host's server on $3 got its $4 connection(s)/datagram(s) from the guest, verified (status $BG_RC)" \
            test "$BG_RC" -eq 0
    done
    grep -E '^(client|serve|udp-send|udp-recv): |^labguest: (udp|client|serve)|^LABGUEST-NOTE' \
        "$SCRATCH/net.out" | sed 's/^/    guest| /'
    grep '^LABGUEST-NET-IF ' "$SCRATCH/net.out" | sed 's/^/    guest| /'
    echo "   the host end's counters (htap0: net0, with the flood):"
    "$IPROUTE2" -n "$NS" -s link show htap0 2>&1 | sed 's/^/    host| /'
    # husk's own tap went with husk; the one made here stays until the namespace goes.
    check "[net] husk's tap htap1 is gone after husk exited" \
        sh -c "! '$IPROUTE2' -n '$NS' link show htap1 >/dev/null 2>&1"
    "$IPROUTE2" netns del "$NS"
    check "[net] the namespace $NS is deleted, and the tap htap0 with its qdisc with it (ip netns list: '$("$IPROUTE2" netns list | tr '\n' ' ')')" \
        sh -c "! '$IPROUTE2' netns list | grep -q '^$NS' && [ ! -e /run/netns/$NS ] && ! ls /sys/class/net | grep -q '^htap'"
    echo "   net rates, husk vmm, 1 vCPU, TCP measured by the guest's client, from its request to the peer's verdict (PUT) or its last byte verified (GET):"
    net_figure "guest->host (net0, MTU 1500)" PUT 71 "$SCRATCH/net.out"
    net_figure "host->guest (net0, MTU 1500)" GET 72 "$SCRATCH/net.out"
    net_figure "guest->host (net1, MTU $mtu1)" PUT 121 "$SCRATCH/net.out"
    net_figure "host->guest (net1, MTU $mtu1)" GET 122 "$SCRATCH/net.out"
    if [ "$FAILS" -gt "$before" ]; then show net; fi
    rm -f "$SCRATCH/net-blk.img"
    VSOCK_UDS=""
    DRIVES=""
}

for t in $TESTS; do
    case "$t" in
        blk) test_blk ;;
        fsync) test_fsync ;;
        vsock) test_vsock ;;
        hotplug) test_hotplug ;;
        net) test_net ;;
        *) die "unknown test '$t' (blk, fsync, vsock, hotplug, net)" ;;
    esac
done
summary virtio
