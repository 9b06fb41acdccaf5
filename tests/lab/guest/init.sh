#!/bin/sh
# /init of the device-test guest (tests/lab/guest/build.sh puts it in an initramfs with
# busybox-static and labtool). The test is chosen on the kernel command line:
#
#   husk.test=blk     Drives found by serial (GET_ID): lab-rw (ext4) and lab-ro (ext4 on a
#                     read-only drive). Reports every drive's name, size, read-only flag and
#                     serial; on lab-rw reads the host's /hello, writes three files of known
#                     patterns, syncs, unmounts, drops the caches, mounts it again and
#                     verifies them (read back from the device); on lab-ro verifies the host's
#                     /data, then tries to write (to the mounted fs, raw to the device, also
#                     after `blockdev --setrw`): each attempt must fail.
#   husk.test=fsync   Drives lab-raw (raw) and lab-ext4 (ext4). Writes 4 MiB raw to lab-raw
#                     and fsyncs, writes /durable on lab-ext4 and fsyncs it (and the
#                     directory), then prints LABGUEST-FSYNC-DONE and keeps writing
#                     (unsynced) until the host kill -9s the VMM at that line.
#   husk.test=vsock   Listens on vsock port husk.vsock_port (default 5000) for
#                     1 + husk.vsock_conns connections; first runs the guest-initiated part
#                     (to CID 2: a put of husk.vsock_bytes bytes to port husk.vsock_up_port,
#                     then husk.vsock_conns concurrent mixed put/get connections to port
#                     husk.vsock_many_port, and a connection to husk.vsock_none_port, where
#                     nothing listens, which must be reset), then prints LABGUEST-HOST-TURN
#                     and waits for the host-initiated part to finish (its own server's
#                     connections).
#   husk.test=hotplug Drives attached to and detached from the running VM (spare slots,
#                     needs a host that acts on the requests, e.g. husk-vmm's example
#                     `spare_drives`). Every spare slot is an empty disk (size 0). Asks for
#                     lab-hot-ro (ext4 holding /data, pattern 21, 2 MiB; read-only) with
#                     "LABGUEST-ATTACH lab-hot-ro", waits for a drive with that serial and a
#                     size, checks its size (husk.hot_ro_sectors), mounts it read-only and
#                     checks /data (with husk.hot_write_ro=1 also: a raw write to it fails,
#                     refused by the device, since the slot cannot tell the kernel that the
#                     disk is read-only; with husk.hot_mount_rw=1, LABGUEST-NOTE lines say
#                     what a read-write mount of it does); then asks for its detach and
#                     waits for its size to be 0 again; then lab-hot-rw (raw,
#                     husk.hot_rw_sectors, writable): a fsynced write read back with the
#                     page cache dropped, and its detach; then lab-hot-ro once more, in a
#                     slot that held a drive before.
#   husk.test=net     virtio-net (needs the host side of scenarios/virtio.sh's net test). The
#                     interfaces are given as husk.net0=MAC,ADDR/PREFIX,HOST,MTU (and
#                     husk.net1=...): the guest finds each by its MAC, sets its MTU and
#                     address and brings it up (busybox ip), then: pings each HOST; TCP
#                     exchanges (labtool client --tcp, mixed put/get of 64 KiB on 2
#                     connections) with the host's server HOST:7000 on each; on net1 a UDP
#                     datagram of MTU-28 bytes with DF (IP_PMTUDISC_DO) to HOST:7100 is
#                     sent, one byte more is refused (EMSGSIZE), and husk.net1_bytes go
#                     each way over TCP at that MTU; on net0 husk.net_bytes go guest -> host
#                     (PUT) and host -> guest (GET) over TCP, both verified byte for byte
#                     and both ends' checksums compared (the rates: the client lines);
#                     then a UDP flood to net0's HOST:7009 for husk.flood_seconds while the
#                     drive lab-net (husk.flood_blk_bytes of pattern 91) is read back from
#                     the device and husk.flood_vsock_bytes are sent over vsock to CID 2
#                     port 6000: both must complete while the flood runs. Then
#                     LABGUEST-HOST-TURN: the host connects to the guest's TCP server on
#                     port 5000 (once on each interface) and sends a DF datagram of MTU-28
#                     bytes to net1's ADDR:7100; the guest waits for them.
#   husk.test=netbench  A benchmark, not a test (bench-net): husk.net0 as above, then
#                     husk.net_bytes guest -> host (PUT) and host -> guest (GET) over TCP to
#                     HOST:7000; each rate is the client's line (LABGUEST-NETBENCH ...).
#   husk.test=fio     A benchmark, not a test (bench-blk; needs an initramfs built with
#                     `build.sh --fio`): fio against the raw first drive /dev/vda, direct=1,
#                     the workloads of fio_workloads below one after the other, each
#                     husk.fio_runtime seconds (default 5) with the engine husk.fio_engine
#                     (default libaio; psync, io_uring); each result is a line
#                     "LABGUEST-FIO <workload> <fio's terse (version 3) line>", and the drive
#                     is described by "LABGUEST-FIO-DRIVE ..." first.
#
# Each result is a line "LABGUEST-PASS: ..." or "LABGUEST-FAIL: ..."; the host scenario turns
# them into checks. "LABGUEST-DONE <test>" is the last line of a test that ran to its end;
# then the guest resets with `reboot -f` (reboot=k: husk exits 0).
export PATH=/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

param() {
    # shellcheck disable=SC2013 # the command line is words
    for word in $(cat /proc/cmdline); do
        case "$word" in "$1="*) echo "${word#*=}"; return 0 ;; esac
    done
    echo "$2"
}

ok() { echo "LABGUEST-PASS: $*"; }
bad() { echo "LABGUEST-FAIL: $*"; }
# expect_ok WHAT COMMAND...: PASS if COMMAND succeeds; FAIL with its output otherwise.
expect_ok() {
    _what=$1
    shift
    if _out=$("$@" 2>&1); then ok "$_what"; else bad "$_what: '$*' failed: $_out"; fi
}
# expect_fail WHAT COMMAND...: PASS if COMMAND fails (showing its error), FAIL otherwise.
expect_fail() {
    _what=$1
    shift
    if _out=$("$@" 2>&1); then
        bad "$_what: expected '$*' to fail, it succeeded${_out:+ ($_out)}"
    else
        ok "$_what (refused: $(echo "$_out" | head -n 1))"
    fi
}
# report_drives: one line per virtio drive, which the host checks: its name, size in
# 512-byte sectors, read-only flag and serial (GET_ID).
report_drives() {
    found=0
    for d in /sys/block/vd*; do
        [ -e "$d" ] || continue
        found=1
        echo "LABGUEST-DRIVE ${d##*/} size=$(cat "$d/size") ro=$(cat "$d/ro") serial=$(cat "$d/serial" 2>/dev/null || echo -)"
    done
    [ "$found" = 1 ] || bad "the guest has virtio drives (/sys/block has: $(echo /sys/block/*))"
}
# dev_by_serial SERIAL: the /dev path of the drive with that serial (found by GET_ID).
dev_by_serial() {
    for d in /sys/block/vd*; do
        if [ "$(cat "$d/serial" 2>/dev/null)" = "$1" ]; then
            echo "/dev/${d##*/}"
            return 0
        fi
    done
    bad "no drive has the serial $1"
    return 1
}

test_blk() {
    report_drives
    rw=$(dev_by_serial lab-rw) || return
    ro=$(dev_by_serial lab-ro) || return
    mkdir -p /mnt/rw /mnt/ro
    if ! out=$(mount -t ext4 "$rw" /mnt/rw 2>&1); then
        bad "mount ext4 $rw (lab-rw): $out"
        return
    fi
    ok "mounted the ext4 filesystem of $rw (lab-rw)"
    expect_ok "the host's file /hello on lab-rw reads 'made on the host'" \
        grep -qx 'made on the host' /mnt/rw/hello
    mkdir -p /mnt/rw/dir
    if ! { labtool gen 11 4194304 >/mnt/rw/big && labtool gen 12 1048699 >/mnt/rw/dir/odd &&
        echo "written in the guest" >/mnt/rw/dir/small; }; then
        bad "writing the files on $rw failed"
    fi
    expect_ok "sync" sync
    expect_ok "unmount $rw" umount /mnt/rw
    echo 3 >/proc/sys/vm/drop_caches
    if ! out=$(mount -t ext4 -o ro "$rw" /mnt/rw 2>&1); then
        bad "mount $rw again: $out"
        return
    fi
    expect_ok "/big (4 MiB, pattern 11) reads back from lab-rw after a remount" \
        labtool check 11 4194304 /mnt/rw/big
    expect_ok "/dir/odd (1048699 bytes, pattern 12) reads back from lab-rw after a remount" \
        labtool check 12 1048699 /mnt/rw/dir/odd
    umount /mnt/rw

    if ! out=$(mount -t ext4 -o ro "$ro" /mnt/ro 2>&1); then
        bad "mount ext4 -o ro $ro (lab-ro): $out"
        return
    fi
    ok "mounted the ext4 of the read-only drive $ro (lab-ro) read-only"
    expect_ok "the host's /data (2 MiB, pattern 21) reads back from the read-only drive" \
        labtool check 21 2097152 /mnt/ro/data
    expect_fail "creating a file on the read-only drive's filesystem fails" \
        labtool write-fsync /mnt/ro/new 22 4096
    umount /mnt/ro
    expect_fail "writing to the read-only $ro fails" \
        labtool write-fsync "$ro" 23 65536
    expect_fail "dd onto the read-only $ro fails" \
        dd if=/dev/zero of="$ro" bs=4096 count=16 conv=fsync
    # Linux refuses the write itself (the drive offers VIRTIO_BLK_F_RO); clearing the flag
    # does not make the disk writable either.
    blockdev --setrw "$ro" 2>/dev/null
    expect_fail "dd onto $ro after 'blockdev --setrw' still fails" \
        dd if=/dev/zero of="$ro" bs=4096 count=16 conv=fsync
}

# sized_dev_by_serial SERIAL: the /dev path of the drive with that serial and a non-zero
# size, if there is one now (the size first: reading a serial sends GET_ID).
sized_dev_by_serial() {
    for d in /sys/block/vd*; do
        [ "$(cat "$d/size" 2>/dev/null || echo 0)" != 0 ] || continue
        if [ "$(cat "$d/serial" 2>/dev/null)" = "$1" ]; then
            echo "/dev/${d##*/}"
            return 0
        fi
    done
    return 1
}

# hot_attach SERIAL: asks the host for the drive and waits up to 60 s for it; sets HOT_DEV
# to its /dev path.
hot_attach() {
    echo "LABGUEST-ATTACH $1"
    _i=0
    while [ "$_i" -lt 6000 ]; do
        if HOT_DEV=$(sized_dev_by_serial "$1"); then return 0; fi
        sleep 0.01
        _i=$((_i + 1))
    done
    bad "drive $1 appears with a size within 60 s of LABGUEST-ATTACH (drives: $(report_drives | tr '\n' ';'))"
    return 1
}

# hot_detach SERIAL DEV: asks the host to take the drive out, waits up to 60 s for DEV to
# read as empty (size 0, no serial).
hot_detach() {
    echo "LABGUEST-DETACH $1"
    _i=0
    while [ "$_i" -lt 6000 ]; do
        if [ "$(cat "/sys/block/${2#/dev/}/size")" = 0 ]; then
            _serial=$(cat "/sys/block/${2#/dev/}/serial" 2>/dev/null)
            if [ -z "$_serial" ]; then
                ok "$1 detached: $2 is empty again (size 0, no serial)"
            else
                bad "$1 detached: $2 has size 0 but still the serial '$_serial'"
            fi
            return 0
        fi
        sleep 0.01
        _i=$((_i + 1))
    done
    bad "$1 detached: $2 still has size $(cat "/sys/block/${2#/dev/}/size") 60 s after LABGUEST-DETACH"
}

test_hotplug() {
    report_drives
    spares=0
    for d in /sys/block/vd*; do
        [ -e "$d" ] || continue
        if [ "$(cat "$d/size")" = 0 ] && [ -z "$(cat "$d/serial" 2>/dev/null)" ]; then
            spares=$((spares + 1))
        fi
    done
    if [ "$spares" -gt 0 ]; then
        ok "the guest sees $spares empty drive slot(s) (size 0, no serial)"
    else
        bad "the guest sees empty drive slots (size 0, no serial)"
        return
    fi

    hot_attach lab-hot-ro || return
    ro=$HOT_DEV
    size=$(cat "/sys/block/${ro#/dev/}/size")
    want=$(param husk.hot_ro_sectors 0)
    if [ "$size" = "$want" ]; then
        ok "lab-hot-ro attached while running: $ro, size $size sectors, serial lab-hot-ro (GET_ID)"
    else
        bad "lab-hot-ro attached while running: $ro has size $size, expected $want"
    fi
    dmesg | grep -E "\[${ro#/dev/}\]|${ro#/dev/}: detected capacity change" | tail -n 2 |
        sed 's/^/labguest: kernel: /'
    mkdir -p /mnt/hot
    if out=$(mount -t ext4 -o ro "$ro" /mnt/hot 2>&1); then
        ok "mounted the ext4 of the attached $ro (lab-hot-ro) read-only"
        expect_ok "/data (2 MiB, pattern 21) reads back from the attached lab-hot-ro" \
            labtool check 21 2097152 /mnt/hot/data
        umount /mnt/hot
    else
        bad "mount ext4 -o ro $ro (lab-hot-ro): $out"
    fi
    if [ "$(param husk.hot_mount_rw 0)" = 1 ]; then
        # Not a check: what a read-write mount of read-only media in a spare slot does
        # (the kernel believes the disk writable; the device refuses the writes).
        if out=$(mount -t ext4 "$ro" /mnt/hot 2>&1); then
            echo "LABGUEST-NOTE: a read-write mount of lab-hot-ro succeeded: $(grep " /mnt/hot " /proc/mounts)"
            touch /mnt/hot/new 2>&1 | sed 's/^/LABGUEST-NOTE: touch: /'
            sync
            echo "LABGUEST-NOTE: after a write and sync: $(grep " /mnt/hot " /proc/mounts)"
            umount /mnt/hot
        else
            echo "LABGUEST-NOTE: a read-write mount of lab-hot-ro failed: $out"
            # What the agent does then: a read-only mount.
            if out=$(mount -t ext4 -o ro "$ro" /mnt/hot 2>&1) &&
                labtool check 21 2097152 /mnt/hot/data >/dev/null 2>&1; then
                echo "LABGUEST-NOTE: a read-only mount after it works and /data reads back"
            else
                echo "LABGUEST-NOTE: a read-only mount after it fails: $out"
            fi
            umount /mnt/hot 2>/dev/null
        fi
    fi
    if [ "$(param husk.hot_write_ro 0)" = 1 ]; then
        # The kernel thinks the disk writable (the slot's features were fixed at boot):
        # the write reaches the device, which refuses it (an I/O error on the console).
        expect_fail "a raw write to the attached read-only $ro fails (refused by the device)" \
            labtool write-fsync "$ro" 23 65536
    fi
    hot_detach lab-hot-ro "$ro"

    hot_attach lab-hot-rw || return
    rw=$HOT_DEV
    size=$(cat "/sys/block/${rw#/dev/}/size")
    want=$(param husk.hot_rw_sectors 0)
    if [ "$size" = "$want" ]; then
        ok "lab-hot-rw attached while running: $rw, size $size sectors"
    else
        bad "lab-hot-rw attached while running: $rw has size $size, expected $want"
    fi
    if labtool write-fsync "$rw" 24 1048576; then
        echo 3 >/proc/sys/vm/drop_caches
        expect_ok "1 MiB written raw to the attached lab-hot-rw (pattern 24) reads back" \
            sh -c "head -c 1048576 $rw | labtool check 24 1048576"
    else
        bad "write-fsync of 1 MiB (pattern 24) to the attached $rw (lab-hot-rw)"
    fi
    hot_detach lab-hot-rw "$rw"

    # A slot that held a drive takes one again.
    hot_attach lab-hot-ro || return
    ok "lab-hot-ro attached a second time: $HOT_DEV"
    if out=$(mount -t ext4 -o ro "$HOT_DEV" /mnt/hot 2>&1); then
        expect_ok "/data reads back from lab-hot-ro attached a second time ($HOT_DEV)" \
            labtool check 21 2097152 /mnt/hot/data
        umount /mnt/hot
    else
        bad "mount ext4 -o ro $HOT_DEV (lab-hot-ro, second time): $out"
    fi
    hot_detach lab-hot-ro "$HOT_DEV"
}

test_fsync() {
    report_drives
    raw=$(dev_by_serial lab-raw) || return
    ext=$(dev_by_serial lab-ext4) || return
    # "write back": the drive offers VIRTIO_BLK_F_FLUSH, so every fsync below ends in a
    # flush request that husk completes only once the data is written to the image.
    cache=$(cat "/sys/block/${raw#/dev/}/queue/write_cache")
    if [ "$cache" = "write back" ]; then
        ok "the drives are write-back caches (fsync sends flushes): $raw is '$cache'"
    else
        bad "the drives are write-back caches (fsync sends flushes): $raw is '$cache'"
    fi
    if ! labtool write-fsync "$raw" 31 4194304; then
        bad "write-fsync of 4 MiB (pattern 31) to the raw $raw (lab-raw)"
        return
    fi
    mkdir -p /mnt/rw
    if ! out=$(mount -t ext4 "$ext" /mnt/rw 2>&1); then
        bad "mount ext4 $ext (lab-ext4): $out"
        return
    fi
    if ! labtool write-fsync /mnt/rw/durable 32 3145728; then
        bad "write-fsync of /durable (3 MiB, pattern 32) on the ext4 of $ext (lab-ext4)"
        return
    fi
    echo "LABGUEST-FSYNC-DONE"
    # Keep the filesystem mounted and busy (unsynced writes) until the host kills the VMM.
    while :; do
        labtool gen 33 1048576 >/mnt/rw/scratch
        sleep 1
    done
}

test_vsock() {
    port=$(param husk.vsock_port 5000)
    bytes=$(param husk.vsock_bytes 268435456)
    conns=$(param husk.vsock_conns 64)
    up=$(param husk.vsock_up_port 6000)
    many=$(param husk.vsock_many_port 6001)
    none=$(param husk.vsock_none_port 6002)
    timeout=$(param husk.vsock_timeout 600)
    labtool serve --vsock-port "$port" --count $((conns + 1)) --timeout "$timeout" &
    server=$!
    if labtool client --vsock "2:$up" --timeout "$timeout" put 41 "$bytes"; then
        ok "guest-initiated: $bytes bytes guest -> host (CID 2 port $up), checksums equal"
    else
        bad "guest-initiated: $bytes bytes guest -> host (CID 2 port $up)"
    fi
    if labtool client --vsock "2:$many" --conns "$conns" --timeout "$timeout" mixed 1000 65536; then
        ok "guest-initiated: $conns concurrent connections to CID 2 port $many, mixed put/get of 64 KiB, all verified"
    else
        bad "guest-initiated: $conns concurrent connections to CID 2 port $many"
    fi
    # Nothing listens on the host's port: husk finds no socket <uds>_P and resets the
    # connection, which connect() reports as ECONNRESET (not a timeout).
    if out=$(labtool client --vsock "2:$none" --timeout 60 put 1 1 2>&1); then
        bad "a connection to CID 2 port $none (no listener on the host) is refused: it was accepted"
    else
        case "$out" in
            *"Connection reset by peer"*)
                ok "a connection to CID 2 port $none (no listener on the host) is reset at once ($(echo "$out" | head -n 1 | sed 's/^client: FAIL: connection 0: //'))" ;;
            *) bad "a connection to CID 2 port $none (no listener on the host) is reset at once: $out" ;;
        esac
    fi
    echo "LABGUEST-HOST-TURN"
    if wait "$server"; then
        ok "guest server on port $port: the host's $((conns + 1)) connections all verified"
    else
        bad "guest server on port $port: not every one of the host's $((conns + 1)) connections was verified (or it timed out)"
    fi
}

# iface_by_mac MAC: the name of the network interface with that MAC address.
iface_by_mac() {
    for n in /sys/class/net/*; do
        if [ "$(cat "$n/address" 2>/dev/null)" = "$1" ]; then
            echo "${n##*/}"
            return 0
        fi
    done
    return 1
}

# net_setup NAME SPEC: configures the interface SPEC (MAC,ADDR/PREFIX,HOST,MTU) describes
# and sets NET_IF and NET_HOST; fails if it cannot.
net_setup() {
    _spec=$2
    _mac=${_spec%%,*}
    _spec=${_spec#*,}
    _cidr=${_spec%%,*}
    _spec=${_spec#*,}
    NET_HOST=${_spec%%,*}
    _mtu=${_spec#*,}
    if ! NET_IF=$(iface_by_mac "$_mac"); then
        bad "$1: an interface with the MAC $_mac (have: $(for n in /sys/class/net/*; do printf '%s=%s ' "${n##*/}" "$(cat "$n/address")"; done))"
        return 1
    fi
    _drv=$(basename "$(readlink "/sys/class/net/$NET_IF/device/driver" 2>/dev/null)")
    if ! _out=$(ip link set "$NET_IF" mtu "$_mtu" 2>&1 && ip addr add "$_cidr" dev "$NET_IF" 2>&1 &&
        ip link set "$NET_IF" up 2>&1); then
        bad "$1: configuring $NET_IF ($_mac) with $_cidr, MTU $_mtu: $_out"
        return 1
    fi
    _have_mtu=$(cat "/sys/class/net/$NET_IF/mtu")
    if [ "$_drv" = virtio_net ] && [ "$_have_mtu" = "$_mtu" ]; then
        ok "$1: $NET_IF ($_mac, driver $_drv) up with $_cidr and MTU $_have_mtu"
    else
        bad "$1: $NET_IF ($_mac) has driver '$_drv' (expected virtio_net) and MTU $_have_mtu (expected $_mtu)"
    fi
    echo "LABGUEST-NET-IF $1 $NET_IF mac=$_mac addr=$_cidr mtu=$_have_mtu features=$(cat "/sys/class/net/$NET_IF/device/features" 2>/dev/null) carrier=$(cat "/sys/class/net/$NET_IF/carrier" 2>/dev/null)"
}

# ping_host NAME HOST [SIZE]: pings HOST until it answers (up to 30 s: the host end may
# still be coming up), then 3 more times.
ping_host() {
    _i=0
    while ! ping -c 1 -W 1 ${3:+-s "$3"} "$2" >/dev/null 2>&1; do
        _i=$((_i + 1))
        if [ "$_i" -ge 30 ]; then
            bad "$1: ping ${3:+-s $3 }$2 gets no answer within 30 s"
            return 1
        fi
    done
    if _out=$(ping -c 3 -W 5 ${3:+-s "$3"} "$2" 2>&1); then
        ok "$1: ping ${3:+-s $3 }$2: $(echo "$_out" | grep -E 'packets transmitted')"
    else
        bad "$1: ping ${3:+-s $3 }$2: $_out"
    fi
}

test_net() {
    bytes=$(param husk.net_bytes 1073741824)
    bytes1=$(param husk.net1_bytes 16777216)
    timeout=$(param husk.net_timeout 600)
    flood=$(param husk.flood_seconds 10)
    blk_bytes=$(param husk.flood_blk_bytes 8388608)
    vsock_bytes=$(param husk.flood_vsock_bytes 8388608)
    net_setup net0 "$(param husk.net0 none)" || return
    if0=$NET_IF host0=$NET_HOST
    net_setup net1 "$(param husk.net1 none)" || return
    if1=$NET_IF host1=$NET_HOST
    mtu1=$(cat "/sys/class/net/$if1/mtu")
    # The host's part comes after LABGUEST-HOST-TURN; the servers listen from the start.
    labtool serve --tcp-listen 0.0.0.0:5000 --count 2 --timeout "$timeout" &
    tcp_server=$!
    labtool udp-recv "0.0.0.0:7100" $((mtu1 - 28)) --timeout "$timeout" &
    udp_server=$!

    # (a) reachability and a TCP exchange on each interface
    ping_host net0 "$host0"
    ping_host net1 "$host1"
    for words in "0 $if0 $host0" "1 $if1 $host1"; do
        # shellcheck disable=SC2086 # the words: index, interface, host
        set -- $words
        if labtool client --tcp "$3:7000" --conns 2 --retry 30 --timeout 120 mixed $((100 + $1 * 10)) 65536; then
            ok "net$1 ($2): TCP exchange with $3:7000, 2 connections at once, 64 KiB each way, verified"
        else
            bad "net$1 ($2): TCP exchange with $3:7000"
        fi
    done

    # (d) the MTU of net1: a datagram that fills it with DF goes through, one byte more is
    # refused; a ping that fills it; TCP at that MTU both ways
    big=$((mtu1 - 28))
    expect_ok "net1 ($if1, MTU $mtu1): a UDP datagram of $big bytes with DF to $host1:7100 is sent" \
        labtool udp-send "$host1:7100" "$big" --df
    expect_fail "net1 ($if1, MTU $mtu1): a UDP datagram of $((big + 1)) bytes with DF is refused" \
        labtool udp-send "$host1:7100" $((big + 1)) --df
    ping_host net1 "$host1" "$big"
    if labtool client --tcp "$host1:7000" --timeout "$timeout" put 121 "$bytes1" &&
        labtool client --tcp "$host1:7000" --timeout "$timeout" get 122 "$bytes1"; then
        ok "net1 ($if1, MTU $mtu1): $bytes1 bytes guest -> host and host -> guest over TCP, verified, checksums equal"
    else
        bad "net1 ($if1, MTU $mtu1): $bytes1 bytes each way over TCP"
    fi

    # (b) the big transfers on net0
    if labtool client --tcp "$host0:7000" --timeout "$timeout" put 71 "$bytes"; then
        ok "net0 ($if0): $bytes bytes guest -> host over TCP, verified by the host, checksums equal"
    else
        bad "net0 ($if0): $bytes bytes guest -> host over TCP"
    fi
    if labtool client --tcp "$host0:7000" --timeout "$timeout" get 72 "$bytes"; then
        ok "net0 ($if0): $bytes bytes host -> guest over TCP, verified here, checksums equal"
    else
        bad "net0 ($if0): $bytes bytes host -> guest over TCP"
    fi

    # (e) a UDP flood on net0 does not starve the other devices
    if blk=$(dev_by_serial lab-net); then
        echo 3 >/proc/sys/vm/drop_caches
        t0=$(date +%s)
        head -c "$blk_bytes" "$blk" | labtool check 91 "$blk_bytes" >/dev/null
        echo "LABGUEST-NOTE: reading $blk_bytes bytes of $blk without a flood took $(($(date +%s) - t0)) s"
        labtool udp-send "$host0:7009" 1400 --seconds "$flood" >/tmp/flood.log 2>&1 &
        flooder=$!
        sleep 1
        echo 3 >/proc/sys/vm/drop_caches
        t0=$(date +%s)
        if head -c "$blk_bytes" "$blk" | labtool check 91 "$blk_bytes" >/dev/null; then
            blk_ok=1
        else
            blk_ok=0
        fi
        t_blk=$(($(date +%s) - t0))
        labtool client --vsock 2:6000 --timeout 120 put 92 "$vsock_bytes" >/tmp/vsock.log 2>&1
        vsock_rc=$?
        t_all=$(($(date +%s) - t0))
        if kill -0 "$flooder" 2>/dev/null; then still=1; else still=0; fi
        wait "$flooder"
        flood_rc=$?
        sed 's/^/labguest: /' /tmp/flood.log /tmp/vsock.log
        if [ "$flood_rc" = 0 ] && grep -q '^udp-send: flood' /tmp/flood.log; then
            ok "flood: the guest flooded $host0:7009 with UDP for $flood s ($(sed -n 's/^udp-send: flood to [^:]*:[0-9]*: //p' /tmp/flood.log))"
        else
            bad "flood: the UDP flood ran (status $flood_rc): $(cat /tmp/flood.log)"
        fi
        if [ "$blk_ok" = 1 ] && [ "$still" = 1 ]; then
            ok "flood: during it, $blk_bytes bytes of the drive lab-net ($blk) read back from the device, verified, in $t_blk s"
        else
            bad "flood: reading $blk_bytes bytes of lab-net ($blk) during the flood (verified: $blk_ok, the flood still running after it and the vsock put: $still)"
        fi
        if [ "$vsock_rc" = 0 ] && [ "$still" = 1 ]; then
            ok "flood: during it, $vsock_bytes bytes went to the host over vsock (CID 2 port 6000), verified ($t_all s after the flood's first second for both)"
        else
            bad "flood: $vsock_bytes bytes over vsock during the flood (status $vsock_rc, the flood still running after it: $still)"
        fi
    fi

    echo "LABGUEST-HOST-TURN"
    if wait "$tcp_server"; then
        ok "host-initiated: the guest's TCP server on port 5000 served the host's 2 connections, verified"
    else
        bad "host-initiated: the guest's TCP server on port 5000 did not serve 2 verified connections (or timed out)"
    fi
    if wait "$udp_server"; then
        ok "host-initiated: a UDP datagram of $big bytes with DF from the host arrived on net1 ($if1, MTU $mtu1), verified"
    else
        bad "host-initiated: a UDP datagram of $big bytes with DF from the host on net1 ($if1, MTU $mtu1)"
    fi
}

test_netbench() {
    bytes=$(param husk.net_bytes 268435456)
    net_setup net0 "$(param husk.net0 none)" || return
    ping_host net0 "$NET_HOST"
    for op in put get; do
        if out=$(labtool client --tcp "$NET_HOST:7000" --retry 30 --timeout 600 "$op" 73 "$bytes" 2>&1); then
            echo "$out" | sed -n "s/^client: [A-Z]* .* = \([0-9.]*\) MB\/s$/LABGUEST-NETBENCH $op \1/p"
        else
            bad "netbench: $op of $bytes bytes to $NET_HOST:7000: $out"
        fi
        echo "$out" | sed 's/^/labguest: /'
    done
}

# fio_workloads: one line per bench-blk workload: name, rw, block size, iodepth, extra fio
# options. The name says it all: the host's table shows the names as they are.
fio_workloads() {
    cat <<'EOF'
randread-4k-qd1 randread 4k 1 -
randread-4k-qd32 randread 4k 32 -
randwrite-4k-qd1 randwrite 4k 1 -
randwrite-4k-qd32 randwrite 4k 32 -
read-1m-qd8 read 1m 8 -
write-1m-qd8 write 1m 8 -
randwrite-4k-qd1-fsync randwrite 4k 1 --fsync=1
EOF
}

test_fio() {
    runtime=$(param husk.fio_runtime 5)
    engine=$(param husk.fio_engine libaio)
    dev=/dev/vda
    if ! command -v fio >/dev/null; then
        bad "fio is in the initramfs (build it with tests/lab/guest/build.sh --fio)"
        return
    fi
    if [ ! -b "$dev" ]; then
        bad "the guest has the drive $dev (/sys/block has: $(echo /sys/block/*))"
        return
    fi
    q=/sys/block/vda
    echo "LABGUEST-FIO-DRIVE vda size=$(cat $q/size) ro=$(cat $q/ro) write_cache='$(cat $q/queue/write_cache)' scheduler='$(cat $q/queue/scheduler)' hw_queues=$(echo $q/mq/* | wc -w) max_segments=$(cat $q/queue/max_segments) max_sectors_kb=$(cat $q/queue/max_sectors_kb) features=$(cat $q/device/features 2>/dev/null) engine=$engine runtime=${runtime}s $(fio --version)"
    fio_workloads | while read -r name rw bs depth extra; do
        [ "$extra" = - ] && extra=""
        # shellcheck disable=SC2086 # $extra is zero or more options
        if out=$(fio --name="$name" --filename="$dev" --rw="$rw" --bs="$bs" \
            --iodepth="$depth" --ioengine="$engine" --direct=1 --runtime="$runtime" \
            --time_based --norandommap --randrepeat=0 --output-format=terse \
            --terse-version=3 $extra </dev/null 2>&1); then
            line=$(echo "$out" | grep '^3;' | tail -n 1)
            if [ -n "$line" ]; then
                echo "LABGUEST-FIO $name $line"
                continue
            fi
        fi
        bad "fio $name ($rw, bs $bs, iodepth $depth, $engine${extra:+, $extra}) on $dev: $(echo "$out" | tail -n 3 | tr '\n' ' ')"
    done
}

test=$(param husk.test none)
echo "labguest: test=$test kernel=$(uname -r) cpus=$(grep -c ^processor /proc/cpuinfo)"
case "$test" in
    blk) test_blk ;;
    fsync) test_fsync ;;
    vsock) test_vsock ;;
    hotplug) test_hotplug ;;
    fio) test_fio ;;
    net) test_net ;;
    netbench) test_netbench ;;
    *) bad "unknown husk.test=$test (blk, fsync, vsock, hotplug, fio, net, netbench)" ;;
esac
echo "LABGUEST-DONE $test"
reboot -f
sleep 10
echo "labguest: reboot -f returned"
