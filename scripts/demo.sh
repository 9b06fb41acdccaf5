#!/usr/bin/env bash
# The main command: installs and builds what husk needs, then runs a container in a husk
# sandbox with `husk run`, saying which backend (and, without hardware KVM, which lab) it
# used.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need_rust

step "packages"
apt_install build-essential qemu-system-x86 busybox-static cpio e2fsprogs

step "guest kernel, agent and initramfs"
resources/build-guest.sh

step "the default busybox image"
resources/build-busybox-image.sh

step "husk"
cargo build --release -p husk-runtime -p husk-agent
husk=target/release/husk
"$husk" info

if [ "$(tests/lab/run.sh --kvm-situation)" = hardware ]; then
    step "a container in a husk microVM (builtin backend, this host's hardware KVM)"
    "$husk" run --hypervisor builtin -- sh -c 'echo "hello from $(hostname), kernel $(uname -r)"'
else
    step "a container with the host backend (no VM: this host cannot boot the guest)"
    "$husk" run --hypervisor host -- sh -c 'echo "hello from $(hostname), in namespaces on this host"'
    step "a container in a husk microVM (builtin backend) inside the nested lab"
    # run.sh says why the lab: QEMU TCG with AMD SVM + kvm-amd gives husk hardware-style
    # KVM there. The scenario runs husk run from the busybox image and a bundle, the
    # runc-style lifecycle and a kill -9 clean-up, each container in its own VM.
    tests/lab/run.sh runtime 1
fi
