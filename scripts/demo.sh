#!/usr/bin/env bash
# The main command: installs and builds what husk needs, then boots the husk guest with
# `husk vmm` to `husk-agent ready` and a clean exit.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need_rust

step "packages"
apt_install build-essential qemu-system-x86 busybox-static cpio

step "guest kernel, agent and initramfs"
resources/build-guest.sh

step "husk"
cargo build --release -p husk-runtime
target/release/husk info

step "booting the husk guest"
# run.sh picks the place and says which: directly on hardware KVM, else (PVM here) inside
# the nested lab (QEMU TCG with AMD SVM + kvm-amd). It boots the guest with
# `husk vmm --vcpus 1|2 --mem-mib 256` to `husk-agent ready` and checks what it sees.
tests/lab/run.sh linux-boot
