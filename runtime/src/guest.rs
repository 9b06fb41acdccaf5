//! Where the built guest (kernel and initramfs from `resources/build-guest.sh`) lives.

use std::path::PathBuf;

/// The cache `resources/build-guest.sh` builds into: `$HUSK_CACHE_DIR`, else
/// `/var/cache/husk`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("HUSK_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/husk"))
}

/// The default guest kernel.
pub fn default_kernel() -> PathBuf {
    cache_dir().join("guest/vmlinux")
}

/// The default guest initramfs (the agent as `/init`).
pub fn default_initrd() -> PathBuf {
    cache_dir().join("guest/initramfs.cpio")
}

/// The KVM device: `$HUSK_KVM_DEVICE`, else `/dev/kvm`.
pub fn kvm_device() -> PathBuf {
    std::env::var_os("HUSK_KVM_DEVICE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/dev/kvm"))
}
