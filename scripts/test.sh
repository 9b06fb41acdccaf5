#!/usr/bin/env bash
# The test command: installs what the tests need, builds the guest and husk, and runs
# every test layer (unit, layer 1 on this host's /dev/kvm, layer 5 Linux boots and Linux's
# virtio drivers against husk's devices, in the nested lab or directly on hardware KVM). Run
# as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need_rust

step "packages"
apt_install build-essential qemu-system-x86 busybox-static cpio e2fsprogs containerd runc \
    protobuf-compiler containernetworking-plugins iproute2

step "guest kernel, agent and initramfs (resources/build-guest.sh)"
resources/build-guest.sh

step "format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings

step "unit, guest-build and layer-1 tests (cargo test --workspace)"
if [ ! -c /dev/kvm ]; then
    echo "husk: this host has no /dev/kvm: the layer-1 VM tests will fail, not skip" >&2
fi
cargo test --workspace

step "layer 5: Linux guest boots (tests/lab/run.sh linux-boot)"
tests/lab/run.sh linux-boot

step "layer 5: virtio-blk, virtio-vsock and virtio-net under Linux (tests/lab/run.sh virtio)"
tests/lab/run.sh virtio

step "layer 5: the agent suite with the agent as PID 1 of husk VMs (tests/lab/run.sh agent)"
tests/lab/run.sh agent

step "layer 5: husk run and the runc-style lifecycle with the builtin backend (tests/lab/run.sh runtime)"
tests/lab/run.sh runtime

step "layer 5: containerd and ctr with husk's shim and the builtin backend (tests/lab/run.sh containerd)"
tests/lab/run.sh containerd

step "all tests passed"
