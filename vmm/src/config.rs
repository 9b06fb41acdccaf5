//! What a VM is made of. The CLI and the runtime fill these; `Vmm::new` checks them.

use std::path::PathBuf;
use std::time::Instant;

use husk_devices::virtio::net::Tap;

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

/// A virtio-blk drive backed by a raw host file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriveConfig {
    pub path: PathBuf,
    /// The guest may read but not write; writes fail with an I/O error.
    pub read_only: bool,
    /// The serial the guest reads with GET_ID (at most 20 bytes); how the runtime finds a
    /// container's drive in the guest.
    pub id: Option<String>,
}

/// A virtio-net interface on a tap the caller opened (in the network namespace the
/// interface belongs to: opening is where the namespace is chosen).
#[derive(Debug)]
pub struct NetConfig {
    pub tap: Tap,
    /// The guest's MAC for the interface.
    pub mac: [u8; 6],
}

/// The virtio-vsock device and its hybrid host side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
    pub guest_cid: u64,
    /// Host clients connect here and send `CONNECT <port>`; guest connections to the host
    /// on port P go to `<uds_path>_P`.
    pub uds_path: PathBuf,
}

/// A whole VM. Not `Clone`: it owns the taps of its network interfaces.
#[derive(Debug)]
pub struct VmmConfig {
    pub memory: MemoryConfig,
    pub vcpus: VcpuConfig,
    pub kernel: KernelConfig,
    pub console: ConsoleConfig,
    /// Drives, in the order the guest sees them (`/dev/vda`, `/dev/vdb`, ...).
    pub drives: Vec<DriveConfig>,
    pub vsock: Option<VsockConfig>,
    /// Network interfaces, in the order the guest finds them.
    pub nets: Vec<NetConfig>,
    /// The KVM device; `/dev/kvm` unless a test or an unusual host says otherwise.
    pub kvm_device: PathBuf,
    /// The instant the boot timer measures from: normally the start of the process.
    pub start_time: Instant,
    /// Each vCPU thread and the event loop confine themselves (`husk-seccomp`: no
    /// capabilities, an empty root for vCPU threads, a seccomp filter) before they handle
    /// anything the guest does. Off only to debug.
    pub seccomp: bool,
}

/// The command line husk gives a kernel when the user does not: serial console, reset
/// through the i8042 (which husk turns into a clean exit), reboot at once on a panic so a
/// dead guest never hangs the VMM, and no module loading (the guest kernel has none).
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 nomodule";
