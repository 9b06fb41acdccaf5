#!/bin/bash
# Builds the device-test guest of the layer-5 virtio scenarios (scenarios/virtio.sh) into
# OUTDIR:
#   OUTDIR/labtool             labtool.c, static (gcc -static): the lab host's copy
#   OUTDIR/devtest.cpio        an uncompressed newc initramfs: busybox-static with its
#                              applet links in /bin, the same static labtool in /bin, and
#                              init.sh as /init (the test is chosen by husk.test=...);
#                              with --fio also Debian's fio at its own path (/usr/bin/fio)
#                              with every shared library `ldd` names for it and the
#                              dynamic loader, each at its own path (for husk.test=fio, the
#                              bench-blk scenario)
#
#   tests/lab/guest/build.sh [--fio] OUTDIR
#
# Needs gcc with the static glibc (libc6-dev), busybox-static and cpio; as root it
# apt-get installs busybox-static and cpio (and with --fio, fio) when they are missing.
# Takes about a second. With --fio the initramfs is ~85 MiB: Debian's fio links the
# libraries of all its engines (ceph, glusterfs, rdma, pmem, ...), ~80 MiB with their own.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
die() {
    echo "guest/build.sh: error: $*" >&2
    exit 1
}
WITH_FIO=0
if [ "${1:-}" = --fio ]; then
    WITH_FIO=1
    shift
fi
[ $# -eq 1 ] || die "usage: tests/lab/guest/build.sh [--fio] OUTDIR"
OUT=$1
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# shellcheck source-path=SCRIPTDIR source=../../../scripts/lib.sh
. "$REPO/scripts/lib.sh" # apt_install
apt_install busybox-static cpio
if [ "$WITH_FIO" = 1 ]; then apt_install fio; fi
BUSYBOX=/bin/busybox
if ldd "$BUSYBOX" >/dev/null 2>&1; then
    die "$BUSYBOX is not the static busybox (install busybox-static)"
fi
command -v gcc >/dev/null || die "gcc is needed (build-essential)"

gcc -O2 -Wall -Wextra -Werror -static -o "$OUT/labtool" "$HERE/labtool.c" ||
    die "gcc -static of labtool.c failed (is libc6-dev with libc.a installed?)"
if readelf -lW "$OUT/labtool" | grep -q INTERP; then
    die "$OUT/labtool is not static"
fi

stage=$(mktemp -d "$OUT/.stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,dev,proc,sys,mnt,tmp}
cp "$BUSYBOX" "$stage/bin/busybox"
for applet in $("$BUSYBOX" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$stage/bin/$applet"
done
cp "$OUT/labtool" "$stage/bin/labtool"
install -m 0755 "$HERE/init.sh" "$stage/init"
if [ "$WITH_FIO" = 1 ]; then
    # fio at its own path, and every library ldd names (the loader too) at its own path
    # (real directories here, also where the host's /lib is a merged-/usr symlink): the
    # loader's default directories and the libraries' RUNPATHs then find them all.
    fio=$(command -v fio) || die "fio is not installed"
    fio=$(realpath "$fio")
    mkdir -p "$stage$(dirname "$fio")"
    cp "$fio" "$stage$fio"
    libs=$(ldd "$fio" | grep -o '/[^ ]*' | sort -u) || die "ldd $fio failed"
    [ -n "$libs" ] || die "ldd names no libraries for $fio"
    for lib in $libs; do
        mkdir -p "$stage$(dirname "$lib")"
        cp -L "$lib" "$stage$lib"
    done
fi
mknod -m 0600 "$stage/dev/console" c 5 1 2>/dev/null || true
(cd "$stage" && find . -mindepth 1 | sed 's|^\./||' | LC_ALL=C sort |
    cpio --quiet -o -H newc -R 0:0) >"$OUT/devtest.cpio"
echo "labtool=$OUT/labtool"
echo "initramfs=$OUT/devtest.cpio"
if [ "$WITH_FIO" = 1 ]; then echo "fio=$fio ($(fio --version))"; fi
