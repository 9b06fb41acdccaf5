#!/usr/bin/env bash
# The main command: installs and builds what husk needs, then boots the husk guest with
# `husk vmm` to `husk-agent ready` and a clean exit. On hardware KVM it runs directly; on
# a PVM host (no standard Linux guest boots there) it runs inside the nested lab.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

step "packages"
apt_install build-essential qemu-system-x86 busybox-static cpio

step "guest kernel, agent and initramfs"
resources/build-guest.sh

step "husk"
cargo build --release -p husk-runtime
target/release/husk info

step "booting the husk guest"
flavour=$(husk_kvm_flavour)
cmd='husk vmm --vcpus 2 --mem-mib 256 --cmdline "console=ttyS0 reboot=k panic=-1 husk.exit_after_ready"'
if [ "$flavour" = hardware ]; then
    echo "husk: backend: the builtin VMM on this host's hardware KVM" >&2
    echo "+ $cmd" >&2
    target/release/husk vmm --vcpus 2 --mem-mib 256 \
        --cmdline "console=ttyS0 reboot=k panic=-1 husk.exit_after_ready"
else
    echo "husk: this host's /dev/kvm is '$flavour', which cannot boot a Linux guest:" >&2
    echo "husk: backend: the builtin VMM inside the nested lab (QEMU TCG with AMD SVM + kvm-amd)" >&2
    HUSK_LAB_MODE=lab tests/lab/run.sh linux-boot
fi
