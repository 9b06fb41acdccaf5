//! husk-vmm: the minimal KVM virtual machine monitor that runs inside the husk process.
//!
//! A [`Vmm`] is built from a [`VmmConfig`] in the order a machine comes up:
//!
//! 1. open `/dev/kvm`, create the VM with its in-kernel interrupt controllers and PIT;
//! 2. allocate guest RAM and register it with KVM;
//! 3. load the kernel (ELF with PVH entry, ELF via the 64-bit boot protocol, or bzImage)
//!    and the initrd;
//! 4. create the virtio devices (drives, vsock, spare drive slots) on the MMIO bus, each
//!    with an irqfd and ioeventfds, and load the command line with their
//!    `virtio_mmio.device=` entries;
//!    write the boot information and the MP table; put the legacy devices on the port
//!    bus (COM1, i8042 reset, boot timer);
//! 5. create the vCPUs (CPUID, MSRs, LAPIC) and set the boot vCPU's entry registers.
//!
//! [`Vmm::run`] then starts the event loop thread and one thread per vCPU and blocks until
//! the VM ends: the guest resets or shuts down, a vCPU fails, or someone calls
//! [`StopHandle::stop`]. A [`DriveHandle`] attaches drives to the spare slots and detaches
//! them, before or while the VM runs.
//!
//! The VMM knows nothing about containers, agents or OCI.

mod arch;
mod boot;
pub mod config;
mod device_manager;
mod drives;
mod event_loop;
mod exit;
mod vstate;

use std::io::Write;
use std::os::unix::thread::JoinHandleExt;
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use husk_devices::legacy::{
    BootTimer, Serial, BOOT_TIMER_PORT, COM1_IRQ, COM1_PORT_BASE, COM1_PORT_LEN, I8042,
    I8042_PORT_BASE, I8042_PORT_LEN,
};
use husk_devices::virtio::block::{Block, BlockConfig};
use husk_devices::virtio::net::Net;
pub use husk_devices::virtio::net::{Tap, TapError};
use husk_devices::virtio::vsock::Vsock;
pub use husk_devices::virtio::vsock::VsockConnector;
use husk_devices::{Bus, BusError};
use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use arch::x86_64::mptable::MAX_CPUS;
pub use boot::BootError;
pub use config::{
    ConsoleConfig, DriveConfig, KernelConfig, MemoryConfig, NetConfig, VcpuConfig, VmmConfig,
    VsockConfig, DEFAULT_CMDLINE,
};
pub use device_manager::DeviceError;
pub use drives::{DriveError, DriveHandle};
pub use exit::ExitReason;
/// For the process that holds a VM: the deny-list every one of its threads gets, under
/// the VMM threads' own confinement.
pub use husk_seccomp::{confine_process, SeccompError};

use arch::x86_64::{mptable, regs};
use device_manager::DeviceManager;
use event_loop::EventLoop;
use exit::ExitState;
use vstate::vcpu::Vcpu;

/// Errors building or running a VM. Each message is one line a user can act on.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum Error {
    /// Guest memory must be at least 2 MiB, not {0} MiB
    MemoryTooSmall(u64),
    /// Guest memory of {0} MiB is more than this host's {1} MiB of RAM
    MemoryTooLarge(u64, u64),
    /// A VM needs at least one vCPU
    NoVcpus,
    /// {0} vCPUs requested, but at most {1} are supported here
    TooManyVcpus(u64, u64),
    /// {0}
    Vm(#[from] vstate::vm::VmError),
    /// {0}
    Memory(#[from] vstate::memory::MemoryError),
    /// {0}
    Boot(#[from] BootError),
    /// {0}
    Mptable(#[from] mptable::MptableError),
    /// {0}
    Vcpu(#[from] vstate::vcpu::VcpuError),
    /// Cannot set the boot vCPU's registers: {0}
    Regs(#[from] regs::RegsError),
    /// Cannot open the console file {0}: {1}
    Console(String, std::io::Error),
    /// Cannot create an event fd: {0}
    EventFd(std::io::Error),
    /// Cannot route interrupt {0}: {1}
    Irq(u32, kvm_ioctls::Error),
    /// Cannot place a device on the bus: {0}
    Bus(#[from] BusError),
    /// {0}
    Device(#[from] DeviceError),
    /// Drive {0}: {1}
    Drive(String, husk_devices::virtio::block::BlockError),
    /// vsock: {0}
    Vsock(husk_devices::virtio::vsock::VsockError),
    /// Network interface on tap {0}: {1}
    Net(String, husk_devices::virtio::net::NetError),
    /// {0}
    EventLoop(#[from] event_loop::EventLoopError),
    /// Cannot start a vCPU thread: {0}
    Spawn(std::io::Error),
    /// Cannot install the vCPU kick signal handler: {0}
    Signal(vmm_sys_util::errno::Error),
}

/// Below this the kernel has nowhere to go: it loads at 1 MiB.
pub const MIN_MEMORY_MIB: u64 = 2;

/// Stops a running [`Vmm`] from another thread.
#[derive(Clone)]
pub struct StopHandle(Arc<ExitState>);

impl StopHandle {
    pub fn stop(&self) {
        self.0.request(ExitReason::Stopped);
    }
}

/// How a VM ended, and how long the guest took to say it was ready.
#[derive(Debug)]
pub struct VmExit {
    pub reason: ExitReason,
    /// From the start instant in the config to the guest's first boot-timer write.
    pub ready_after: Option<Duration>,
}

/// A VM, built and ready to run.
pub struct Vmm {
    // Field order is drop order: vCPUs before the VM, the VM before the memory it maps.
    vcpus: Vec<Vcpu>,
    _vm: VmFd,
    _guest_memory: GuestMemoryMmap,
    exit: Arc<ExitState>,
    ready_after: Arc<OnceLock<Duration>>,
    subscribers: Vec<event_loop::Subscriber>,
    vsock_connector: Option<VsockConnector>,
    drive_handle: DriveHandle,
    seccomp: bool,
}

impl Vmm {
    /// Builds a VM without spare drive slots: its drives are the ones in `config`.
    pub fn new(config: VmmConfig) -> Result<Self, Error> {
        Self::with_spare_drives(config, 0)
    }

    /// Builds a VM with `spare_drives` empty drive slots after the devices of `config`
    /// (each one virtio-mmio window and one interrupt line; at most 19 devices in all),
    /// which [`Vmm::drive_handle`] fills and empties while the VM runs. A Linux guest sees
    /// them as empty disks (`/dev/vdX` of size 0) after the drives of `config`.
    pub fn with_spare_drives(mut config: VmmConfig, spare_drives: u8) -> Result<Self, Error> {
        let mem_mib = config.memory.size_mib;
        if mem_mib < MIN_MEMORY_MIB {
            return Err(Error::MemoryTooSmall(mem_mib));
        }
        if let Some(host_mib) = host_memory_mib() {
            if mem_mib > host_mib {
                return Err(Error::MemoryTooLarge(mem_mib, host_mib));
            }
        }
        let vcpu_count = config.vcpus.count;
        if vcpu_count == 0 {
            return Err(Error::NoVcpus);
        }

        let kvm = vstate::vm::open_kvm(&config.kvm_device)?;
        let max_vcpus = (kvm.get_max_vcpus() as u64).min(u64::from(MAX_CPUS));
        if u64::from(vcpu_count) > max_vcpus {
            return Err(Error::TooManyVcpus(u64::from(vcpu_count), max_vcpus));
        }
        let vm = vstate::vm::create_vm(&kvm)?;
        let guest_memory = vstate::memory::create_guest_memory(mem_mib)?;
        vstate::vm::register_memory(&vm, &guest_memory)?;

        let (entry, kernel_end, bzimage_header) =
            boot::load_kernel(&guest_memory, &config.kernel.path)?;
        let initrd = match &config.kernel.initrd {
            Some(path) => Some(boot::load_initrd(&guest_memory, path, kernel_end)?),
            None => None,
        };
        let mut devices = DeviceManager::new();
        for drive in &config.drives {
            let block = Block::new(BlockConfig {
                path: drive.path.clone(),
                read_only: drive.read_only,
                serial: drive.id.clone(),
            })
            .map_err(|e| Error::Drive(drive.path.display().to_string(), e))?;
            devices.add_virtio(&vm, &guest_memory, Arc::new(Mutex::new(block)))?;
        }
        let mut vsock_connector = None;
        if let Some(vsock) = &config.vsock {
            let device =
                Vsock::new(vsock.guest_cid, vsock.uds_path.clone()).map_err(Error::Vsock)?;
            vsock_connector = Some(device.connector());
            devices.add_virtio(&vm, &guest_memory, Arc::new(Mutex::new(device)))?;
        }
        for net in config.nets.drain(..) {
            let name = net.tap.name().to_owned();
            let device = Net::new(husk_devices::virtio::net::NetConfig {
                tap: net.tap,
                mac: net.mac,
            })
            .map_err(|e| Error::Net(name, e))?;
            devices.add_virtio(&vm, &guest_memory, Arc::new(Mutex::new(device)))?;
        }
        // Spare slots last, so that the devices of `config` keep their places (and the
        // guest's names for them) whether or not there are spares.
        let mut spares = Vec::with_capacity(usize::from(spare_drives));
        for _ in 0..spare_drives {
            let slot = Arc::new(Mutex::new(
                Block::empty().map_err(|e| Error::Drive("(spare slot)".into(), e))?,
            ));
            devices.add_virtio(&vm, &guest_memory, slot.clone())?;
            spares.push(slot);
        }
        let boot_ids = config.drives.iter().filter_map(|d| d.id.clone()).collect();
        let drive_handle = DriveHandle::new(spares, boot_ids);
        let mut cmdline = config.kernel.cmdline.trim().to_string();
        for entry in devices.cmdline_entries() {
            cmdline.push(' ');
            cmdline.push_str(entry);
        }
        let cmdline = cmdline.trim();
        boot::load_command_line(&guest_memory, cmdline)?;
        boot::write_boot_info(
            &guest_memory,
            entry,
            mem_mib << 20,
            cmdline.len(),
            initrd,
            bzimage_header,
        )?;
        mptable::write(&guest_memory, vcpu_count)?;

        let exit = Arc::new(ExitState::new());
        let ready_after = Arc::new(OnceLock::new());
        let pio = Arc::new(legacy_bus(&vm, &config, &exit, &ready_after)?);
        let (mmio, subscribers) = devices.into_parts();
        let mmio = Arc::new(mmio);

        let mut vcpus = Vec::with_capacity(usize::from(vcpu_count));
        for id in 0..vcpu_count {
            vcpus.push(Vcpu::new(
                &kvm,
                &vm,
                id,
                vcpu_count,
                pio.clone(),
                mmio.clone(),
                exit.clone(),
            )?);
        }
        regs::setup_boot_vcpu(vcpus[0].fd(), &guest_memory, entry.mode, entry.addr)?;

        Ok(Self {
            vcpus,
            _vm: vm,
            _guest_memory: guest_memory,
            exit,
            ready_after,
            subscribers,
            vsock_connector,
            drive_handle,
            seccomp: config.seccomp,
        })
    }

    /// Attaches and detaches drives in the spare slots, from any thread, before or while
    /// the VM runs.
    pub fn drive_handle(&self) -> DriveHandle {
        self.drive_handle.clone()
    }

    /// Opens streams to guest vsock ports from this process, if the VM has vsock.
    pub fn vsock_connector(&self) -> Option<VsockConnector> {
        self.vsock_connector.clone()
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.exit.clone())
    }

    /// Runs the VM until it ends and returns why.
    pub fn run(mut self) -> Result<VmExit, Error> {
        install_kick_handler()?;
        let subscribers = std::mem::take(&mut self.subscribers);
        let mut event_loop = EventLoop::start(self.exit.clone(), subscribers, self.seccomp)?;

        let mut threads: Vec<JoinHandle<()>> = Vec::with_capacity(self.vcpus.len());
        for (id, vcpu) in self.vcpus.drain(..).enumerate() {
            let (exit, seccomp) = (self.exit.clone(), self.seccomp);
            let spawned = std::thread::Builder::new()
                .name(format!("husk-vcpu-{id}"))
                .spawn(move || {
                    // Before the guest runs a single instruction on this thread.
                    if seccomp {
                        if let Err(e) = husk_seccomp::confine(husk_seccomp::ThreadKind::Vcpu) {
                            exit.request(ExitReason::Seccomp(e.to_string()));
                            return;
                        }
                    }
                    vcpu.run()
                });
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(e) => {
                    self.exit.request(ExitReason::Stopped);
                    stop_vcpus(threads);
                    return Err(Error::Spawn(e));
                }
            }
        }

        let reason = self.exit.wait();
        stop_vcpus(threads);
        event_loop.stop();
        Ok(VmExit {
            reason,
            ready_after: self.ready_after.get().copied(),
        })
    }
}

/// The port bus with COM1, the i8042 and the boot timer.
fn legacy_bus(
    vm: &VmFd,
    config: &VmmConfig,
    exit: &Arc<ExitState>,
    ready_after: &Arc<OnceLock<Duration>>,
) -> Result<Bus, Error> {
    let console: Box<dyn Write + Send> = match &config.console {
        ConsoleConfig::Stdout => Box::new(std::io::stdout()),
        ConsoleConfig::File(path) => Box::new(
            std::fs::File::create(path)
                .map_err(|e| Error::Console(path.display().to_string(), e))?,
        ),
        ConsoleConfig::Off => Box::new(std::io::sink()),
    };
    let com1_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
    vm.register_irqfd(&com1_irq, COM1_IRQ)
        .map_err(|e| Error::Irq(COM1_IRQ, e))?;

    let mut bus = Bus::new();
    bus.insert(
        Arc::new(Mutex::new(Serial::new(com1_irq, console))),
        COM1_PORT_BASE,
        COM1_PORT_LEN,
    )?;
    bus.insert(
        Arc::new(Mutex::new(I8042::new({
            let exit = exit.clone();
            Box::new(move || exit.request(ExitReason::GuestReset))
        }))),
        I8042_PORT_BASE,
        I8042_PORT_LEN,
    )?;
    bus.insert(
        Arc::new(Mutex::new(BootTimer::new(
            config.start_time,
            ready_after.clone(),
        ))),
        BOOT_TIMER_PORT,
        1,
    )?;
    Ok(bus)
}

/// The signal that kicks a vCPU thread out of KVM_RUN when the VM stops.
fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

fn install_kick_handler() -> Result<(), Error> {
    extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
        // Nothing to do: the signal exists to make KVM_RUN return EINTR.
    }
    static INSTALL: Once = Once::new();
    let mut result = Ok(());
    INSTALL.call_once(|| {
        result = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
            .map_err(Error::Signal);
    });
    result
}

/// Waits for every vCPU thread to leave, kicking those still in KVM_RUN. A kick can land
/// just before a thread re-enters KVM_RUN and be lost, so kick until the thread is gone.
fn stop_vcpus(threads: Vec<JoinHandle<()>>) {
    for handle in threads {
        while !handle.is_finished() {
            // SAFETY: the pthread_t comes from a JoinHandle we still own, so the thread
            // has not been joined or detached and the id is valid.
            unsafe { libc::pthread_kill(handle.as_pthread_t(), kick_signal()) };
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = handle.join();
    }
}

/// The host's RAM in MiB, from /proc/meminfo.
fn host_memory_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Which kind of KVM provides the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KvmFlavour {
    /// Intel VT-x or AMD-V (kvm_intel / kvm_amd): boots any x86_64 guest.
    Hardware,
    /// Pagetable-based virtual machine (kvm_pvm): only PVM-enabled guest kernels run at
    /// native speed; other ring-0 code is emulated one instruction at a time.
    Pvm,
    Unknown,
}

/// Tells the KVM flavour from the loaded modules.
pub fn kvm_flavour() -> KvmFlavour {
    let loaded = |m: &str| std::path::Path::new("/sys/module").join(m).exists();
    if loaded("kvm_pvm") {
        KvmFlavour::Pvm
    } else if loaded("kvm_intel") || loaded("kvm_amd") {
        KvmFlavour::Hardware
    } else {
        KvmFlavour::Unknown
    }
}

/// Opens the KVM device at `path` and returns how many vCPUs a VM may have.
pub fn probe_kvm(path: &std::path::Path) -> Result<usize, Error> {
    let kvm = vstate::vm::open_kvm(path)?;
    Ok(kvm.get_max_vcpus().min(usize::from(MAX_CPUS)))
}
