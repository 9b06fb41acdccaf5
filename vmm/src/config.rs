//! What a VM is made of. The CLI and the runtime fill these; `Vmm::new` checks them.

use std::path::PathBuf;
use std::time::Instant;

/// Guest RAM.
#[derive(Clone, Debug)]
pub struct MemoryConfig {
    pub size_mib: u64,
}

/// Virtual CPUs.
#[derive(Clone, Debug)]
pub struct VcpuConfig {
    pub count: u8,
}

/// The guest kernel, its command line and optional initramfs.
#[derive(Clone, Debug)]
pub struct KernelConfig {
    /// An ELF `vmlinux` (PVH entry if it has the note, else the 64-bit boot protocol) or
    /// a bzImage.
    pub path: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Passed to the kernel as is; husk appends what its devices need.
    pub cmdline: String,
}

/// Where the guest's COM1 output goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsoleConfig {
    Stdout,
    File(PathBuf),
    Off,
}

/// A whole VM.
#[derive(Clone, Debug)]
pub struct VmmConfig {
    pub memory: MemoryConfig,
    pub vcpus: VcpuConfig,
    pub kernel: KernelConfig,
    pub console: ConsoleConfig,
    /// The KVM device; `/dev/kvm` unless a test or an unusual host says otherwise.
    pub kvm_device: PathBuf,
    /// The instant the boot timer measures from: normally the start of the process.
    pub start_time: Instant,
}

/// The command line husk gives a kernel when the user does not: serial console, reset
/// through the i8042 (which husk turns into a clean exit), reboot at once on a panic so a
/// dead guest never hangs the VMM, and no module loading (the guest kernel has none).
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 nomodule";
