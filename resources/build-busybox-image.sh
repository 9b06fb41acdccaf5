#!/usr/bin/env bash
# Builds husk's default container image, busybox, as an OCI image layout tar (what
# `ctr images import` and husk's image storage take), offline, from Debian's
# busybox-static (/bin/busybox):
#
#   ${HUSK_CACHE_DIR:-/var/cache/husk}/images/busybox.tar
#     oci-layout, index.json (one manifest, named docker.io/library/busybox:latest),
#     blobs/sha256/<hex>: the manifest, the image config and one gzipped layer with
#     bin/busybox, a symlink to it for each applet, /etc/passwd and /etc/group, and the
#     empty directories a container expects.
#
# The layer is built deterministically (sorted names, owner 0, mtime 0, `gzip -n`), so the
# same busybox gives the same digests. The work is skipped when the image is newer than
# /bin/busybox and this script. Every digest and size is checked before the image is
# renamed into place. Prints the image's path on stdout; progress goes to stderr.
#
# Other images on the same busybox root file system differ only in their name and in
# what they run: the options below make them (resources/build-pause-image.sh is one), so
# that no second script repeats the layout code.
#
# Usage: resources/build-busybox-image.sh [--name REF] [--output FILE]
#                                         [--entrypoint JSON] [--cmd JSON]
#   --name REF         the image name in index.json (default docker.io/library/busybox:latest)
#   --output FILE      where the tar goes (default $HUSK_CACHE_DIR/images/busybox.tar)
#   --entrypoint JSON  the config's Entrypoint, a JSON array of strings (default: none)
#   --cmd JSON         the config's Cmd, a JSON array of strings (default ["sh"])
# (needs busybox-static, coreutils, tar, gzip)
set -euo pipefail
umask 022

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
readonly SCRIPT=$SCRIPT_DIR/${BASH_SOURCE[0]##*/}
# shellcheck source-path=SCRIPTDIR source=../scripts/lib.sh
. "$SCRIPT_DIR/../scripts/lib.sh"

readonly BUSYBOX=/bin/busybox
IMAGE=${HUSK_CACHE_DIR:-/var/cache/husk}/images/busybox.tar
IMAGE_NAME=docker.io/library/busybox:latest
ENTRYPOINT=
CMD='["sh"]'
readonly IMAGE_PATH_ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

readonly MT_MANIFEST=application/vnd.oci.image.manifest.v1+json
readonly MT_INDEX=application/vnd.oci.image.index.v1+json
readonly MT_CONFIG=application/vnd.oci.image.config.v1+json
readonly MT_LAYER=application/vnd.oci.image.layer.v1.tar+gzip

die() {
    printf 'build-busybox-image: error: %s\n' "$*" >&2
    exit 1
}

TEMPS=()
cleanup() {
    local t
    for t in "${TEMPS[@]+"${TEMPS[@]}"}"; do rm -rf -- "$t"; done
}
trap cleanup EXIT

# The same options for every tar made here, so that the same input gives the same bytes.
TAR_DETERMINISTIC=(--sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=gnu)
readonly TAR_DETERMINISTIC

sha256_of() { sha256sum -- "$1" | cut -d' ' -f1; }
size_of() { stat -c %s -- "$1"; }

# A JSON array of strings, as far as this script needs to know: [] or ["...",...] with no
# backslash (the arrays are written into the config as they are given).
is_json_array() {
    [[ $1 =~ ^\[\ *\]$ || $1 =~ ^\[\ *\"[^\"\\]*\"(\ *,\ *\"[^\"\\]*\")*\ *\]$ ]]
}

parse_args() {
    while [ $# -gt 0 ]; do
        [ $# -ge 2 ] || die "$1 needs a value (see the usage at the top of $SCRIPT)"
        case $1 in
        --name) IMAGE_NAME=$2 ;;
        --output) IMAGE=$2 ;;
        --entrypoint) ENTRYPOINT=$2 ;;
        --cmd) CMD=$2 ;;
        *) die "unknown option $1 (see the usage at the top of $SCRIPT)" ;;
        esac
        shift 2
    done
    [[ $IMAGE_NAME =~ ^[a-z0-9./:_-]+$ ]] || die "bad image name: $IMAGE_NAME"
    [[ $IMAGE == *.tar ]] || die "the output must be a .tar file: $IMAGE"
    if [ -n "$ENTRYPOINT" ]; then
        is_json_array "$ENTRYPOINT" || die "--entrypoint is no JSON array of strings: $ENTRYPOINT"
    fi
    is_json_array "$CMD" || die "--cmd is no JSON array of strings: $CMD"
    IMAGES=$(dirname -- "$IMAGE")
    # What the image is built from besides busybox and this script: an image built with
    # other options is out of date.
    KEY="name=$IMAGE_NAME entrypoint=$ENTRYPOINT cmd=$CMD"
    readonly IMAGE IMAGE_NAME ENTRYPOINT CMD IMAGES KEY
}

# Fills the rootfs directory $1.
build_rootfs() {
    local root=$1 applet
    mkdir -p "$root"/{bin,dev,etc,proc,root,sys,tmp,var}
    chmod 0755 "$root" "$root"/{bin,dev,etc,proc,sys,var}
    chmod 0700 "$root/root"
    chmod 1777 "$root/tmp"
    install -m 0755 "$BUSYBOX" "$root/bin/busybox"
    # One link per applet, where Debian's busybox would install it (`usr/bin/env`, ...).
    while IFS= read -r applet; do
        case $applet in
        '' | bin/busybox) continue ;;
        /* | *..*) die "$BUSYBOX --list-full gave an unexpected path: $applet" ;;
        esac
        case $applet in
        */*)
            mkdir -p "$root/${applet%/*}"
            chmod 0755 "$root/${applet%/*}"
            ;;
        esac
        ln -sf /bin/busybox "$root/$applet"
    done < <("$BUSYBOX" --list-full)
    [ -L "$root/bin/sh" ] || die "$BUSYBOX has no sh applet"
    printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'nobody:x:65534:65534:nobody:/:/bin/false' \
        >"$root/etc/passwd"
    printf '%s\n' 'root:x:0:' 'nogroup:x:65534:' >"$root/etc/group"
    chmod 0644 "$root/etc/passwd" "$root/etc/group"
}

# Moves file $1 into $BLOBS under its digest, which it leaves in BLOB_HEX (and the size
# in BLOB_SIZE).
add_blob() {
    BLOB_HEX=$(sha256_of "$1")
    BLOB_SIZE=$(size_of "$1")
    mv -f -- "$1" "$BLOBS/$BLOB_HEX"
}

# Builds the layout in directory $1.
build_layout() {
    local layout=$1 work=$1.work layer_hex layer_size diff_id config_hex config_size
    local manifest_hex manifest_size
    BLOBS=$layout/blobs/sha256
    mkdir -p "$BLOBS" "$work"
    build_rootfs "$work/rootfs"

    tar "${TAR_DETERMINISTIC[@]}" -C "$work/rootfs" -cf "$work/layer.tar" .
    diff_id=$(sha256_of "$work/layer.tar")
    gzip -n -9 -c "$work/layer.tar" >"$work/layer.tar.gz"
    add_blob "$work/layer.tar.gz"
    layer_hex=$BLOB_HEX layer_size=$BLOB_SIZE

    local run=
    [ -z "$ENTRYPOINT" ] || run=",\"Entrypoint\":$ENTRYPOINT"
    run+=",\"Cmd\":$CMD"
    printf '{"architecture":"amd64","os":"linux","config":{"Env":["%s"]%s},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
        "$IMAGE_PATH_ENV" "$run" "$diff_id" >"$work/config.json"
    add_blob "$work/config.json"
    config_hex=$BLOB_HEX config_size=$BLOB_SIZE

    printf '{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"%s","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"%s","digest":"sha256:%s","size":%s}]}' \
        "$MT_MANIFEST" "$MT_CONFIG" "$config_hex" "$config_size" \
        "$MT_LAYER" "$layer_hex" "$layer_size" >"$work/manifest.json"
    add_blob "$work/manifest.json"
    manifest_hex=$BLOB_HEX manifest_size=$BLOB_SIZE

    printf '{"schemaVersion":2,"mediaType":"%s","manifests":[{"mediaType":"%s","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"latest"}}]}' \
        "$MT_INDEX" "$MT_MANIFEST" "$manifest_hex" "$manifest_size" "$IMAGE_NAME" \
        >"$layout/index.json"
    printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
    rm -rf -- "$work"
}

# The descriptors in JSON file $1, as `<hex> <size>` lines in document order.
descriptors() {
    grep -o '"digest":"sha256:[0-9a-f]\{64\}","size":[0-9]*' "$1" |
        sed 's/.*sha256:\([0-9a-f]*\)","size":\([0-9]*\)/\1 \2/'
}

# Fails unless every descriptor in JSON file $1 names a blob in $2 of its size.
check_descriptors() {
    local hex size
    while read -r hex size; do
        [ -f "$2/$hex" ] || die "${1##*/} names a missing blob sha256:$hex"
        [ "$(size_of "$2/$hex")" = "$size" ] || die "blob sha256:$hex is not $size bytes, as ${1##*/} says"
    done < <(descriptors "$1")
}

# Checks layout $1: every blob is named by its digest, every descriptor of index.json and
# of the manifest names a blob of its size, and the config's diff_id is the digest of the
# uncompressed layer.
verify_layout() {
    local blobs=$1/blobs/sha256 blob manifests manifest config layer diff_id
    for blob in "$blobs"/*; do
        [ "$(sha256_of "$blob")" = "${blob##*/}" ] || die "blob ${blob##*/} does not match its digest"
    done
    manifests=$(descriptors "$1/index.json" | cut -d' ' -f1)
    if [ -z "$manifests" ] || [ "$(printf '%s\n' "$manifests" | wc -l)" -ne 1 ]; then
        die "index.json must list one manifest"
    fi
    check_descriptors "$1/index.json" "$blobs"
    manifest=$blobs/$manifests
    check_descriptors "$manifest" "$blobs"
    config=$(descriptors "$manifest" | sed -n 1p | cut -d' ' -f1)
    layer=$(descriptors "$manifest" | sed -n 2p | cut -d' ' -f1)
    if [ -z "$config" ] || [ -z "$layer" ]; then
        die "the manifest lacks a config or a layer"
    fi
    diff_id=$(gzip -dc "$blobs/$layer" | sha256sum | cut -d' ' -f1)
    grep -q "\"diff_ids\":\[\"sha256:$diff_id\"\]" "$blobs/$config" ||
        die "the config's diff_id is not the digest of the uncompressed layer ($diff_id)"
    gzip -dc "$blobs/$layer" | tar -tf - ./bin/sh ./bin/busybox ./etc/passwd >/dev/null ||
        die "the layer lacks bin/sh, bin/busybox or etc/passwd"
}

main() {
    parse_args "$@"
    local what=${IMAGE##*/}
    [ -x "$BUSYBOX" ] || die "$BUSYBOX not found (install Debian's busybox-static: apt-get install busybox-static)"
    "$BUSYBOX" --list-full >/dev/null 2>&1 || die "$BUSYBOX has no --list-full (not Debian's busybox-static?)"
    if [ -f "$IMAGE" ] && [ "$IMAGE" -nt "$BUSYBOX" ] && [ "$IMAGE" -nt "$SCRIPT" ] &&
        [ "$(cat -- "$IMAGE.key" 2>/dev/null)" = "$KEY" ]; then
        step "$what: up to date"
        printf '%s\n' "$IMAGE"
        return 0
    fi
    mkdir -p "$IMAGES" 2>/dev/null ||
        die "cannot create $IMAGES (run as root, or set HUSK_CACHE_DIR to a writable directory)"

    step "$what: building $IMAGE ($IMAGE_NAME) from $BUSYBOX"
    local tmp
    # In $IMAGES, so that the finished tar is renamed into place on the same file system.
    tmp=$(mktemp -d "$IMAGES/.$what.XXXXXX")
    TEMPS+=("$tmp")
    build_layout "$tmp/layout"
    verify_layout "$tmp/layout"
    tar "${TAR_DETERMINISTIC[@]}" -C "$tmp/layout" -cf "$tmp/image.tar" oci-layout index.json blobs
    chmod 0644 "$tmp/image.tar"
    # The image first, then its key: a run stopped between the two leaves a new image
    # with an old key, which the next run rebuilds (the other order could leave an old
    # image that looks up to date).
    printf '%s\n' "$KEY" >"$tmp/image.key"
    mv -f -- "$tmp/image.tar" "$IMAGE"
    mv -f -- "$tmp/image.key" "$IMAGE.key"
    step "$what: done"
    printf '%s\n' "$IMAGE"
}

main "$@"
