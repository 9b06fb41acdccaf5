#!/usr/bin/env bash
# Builds the sandbox ("pause") image that the CRI tests give containerd as its
# `sandbox_image`, offline, as an OCI image layout tar:
#
#   ${HUSK_CACHE_DIR:-/var/cache/husk}/images/pause.tar, named localhost/husk-pause:latest
#
# It is the busybox image of resources/build-busybox-image.sh (same root file system,
# same checks, same caching), built by that script with another name and another
# process: a busybox shell that holds the pod's namespaces until it is killed. It waits
# on a long `sleep` in the background, so that the trap runs at once on SIGTERM or
# SIGINT (a shell runs traps only between commands, and `wait` is interruptible); the
# trap ends the sleep too, since the shell may not be its PID namespace's init (SIGKILL
# needs no trap). The name is under localhost/ so that a mistake never pulls a real
# image from a registry. Prints the image's path on stdout; progress goes to stderr.
#
# Usage: resources/build-pause-image.sh   (needs what build-busybox-image.sh needs)
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR

readonly IMAGE=${HUSK_CACHE_DIR:-/var/cache/husk}/images/pause.tar
readonly IMAGE_NAME=localhost/husk-pause:latest
# No double quote or backslash in it: it goes into the JSON array as it is.
readonly PAUSE='trap '\''kill $! 2>/dev/null; exit 0'\'' TERM INT; while :; do sleep 3600 & wait $!; done'

exec "$SCRIPT_DIR/build-busybox-image.sh" \
    --name "$IMAGE_NAME" \
    --output "$IMAGE" \
    --entrypoint "[\"/bin/sh\",\"-c\",\"$PAUSE\"]" \
    --cmd '[]'
