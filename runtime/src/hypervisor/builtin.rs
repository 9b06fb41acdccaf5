//! The builtin backend: the in-process VMM (`husk-vmm`) boots the guest kernel with the
//! agent as its init, and the agent is reached over the VMM's hybrid vsock socket, which
//! later `husk` commands can use as well.
//!
//! The VM runs on a thread of this process ("husk-vmm", which starts the vCPU threads);
//! the sandbox lives exactly as long as the process holding it.
//!
//! Drives added before the start are the VM's own (the guest finds them at boot, and
//! read-only ones are read-only to its kernel). virtio-mmio has no hotplug, so the VM also
//! gets [`DEFAULT_SPARE_DRIVES`] empty drive slots, and drives added after the start go
//! into those and come out again with `remove_drive`. The guest kernel cannot learn that
//! such a drive is read-only (the slot's features were fixed at boot): the device refuses
//! its writes, and the guest must mount it read-only.

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use husk_vmm::{
    ConsoleConfig, DriveConfig, DriveHandle, KernelConfig, MemoryConfig, NetConfig, StopHandle,
    VcpuConfig, Vmm, VmmConfig, VsockConfig, DEFAULT_CMDLINE,
};

use super::cgroup::SandboxCgroup;
use super::{connect_agent, AgentAddress, Capabilities, Hypervisor, HypervisorError, Kind};

/// How long the guest may take to boot to a serving agent. Generous: in the nested lab
/// (a software CPU) a boot takes about ten seconds, and several may run at once.
const BOOT_PATIENCE: Duration = Duration::from_secs(180);

/// The guest's vsock context id; each VM has its own device, so every one can use 3.
const GUEST_CID: u64 = 3;

/// Empty drive slots a VM gets for drives added while it runs (a pod's later containers).
/// Each costs one virtio-mmio window and one of the 19 interrupt lines the VMM has for
/// virtio devices (vsock and the boot drives take others), an empty `/dev/vdX` in the
/// guest, and nothing else.
pub const DEFAULT_SPARE_DRIVES: u8 = 4;

pub struct BuiltinConfig {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub memory_mib: u64,
    pub vcpus: u8,
    /// The sandbox's own directory: the vsock socket and the guest console's log.
    pub dir: PathBuf,
    pub kvm_device: PathBuf,
}

struct Running {
    stop: StopHandle,
    drives: DriveHandle,
    thread: JoinHandle<()>,
    /// This process's place while it holds the VM; left after the VM ended.
    cgroup: Option<SandboxCgroup>,
}

pub struct BuiltinBackend {
    config: BuiltinConfig,
    spare_drives: u8,
    drives: Vec<DriveConfig>,
    /// The VM's network interfaces, until it is built.
    nets: Vec<NetConfig>,
    running: Option<Running>,
}

impl BuiltinBackend {
    /// A backend whose VM will have [`DEFAULT_SPARE_DRIVES`] spare drive slots.
    pub fn new(config: BuiltinConfig) -> BuiltinBackend {
        BuiltinBackend {
            config,
            spare_drives: DEFAULT_SPARE_DRIVES,
            drives: Vec::new(),
            nets: Vec::new(),
            running: None,
        }
    }

    /// Sets how many drives can be added once the VM runs (the next start's VM).
    pub fn with_spare_drives(mut self, spare_drives: u8) -> BuiltinBackend {
        self.spare_drives = spare_drives;
        self
    }

    fn uds(&self) -> PathBuf {
        super::socket_dir(&self.config.dir).join("vsock.sock")
    }

    /// The guest console's log.
    pub fn console_log(&self) -> PathBuf {
        self.config.dir.join("console.log")
    }

    fn vmm_config(&mut self) -> VmmConfig {
        VmmConfig {
            memory: MemoryConfig {
                size_mib: self.config.memory_mib,
            },
            vcpus: VcpuConfig {
                count: self.config.vcpus,
            },
            kernel: KernelConfig {
                path: self.config.kernel.clone(),
                initrd: Some(self.config.initrd.clone()),
                cmdline: DEFAULT_CMDLINE.to_owned(),
            },
            console: ConsoleConfig::File(self.console_log()),
            drives: self.drives.clone(),
            vsock: Some(VsockConfig {
                guest_cid: GUEST_CID,
                uds_path: self.uds(),
            }),
            nets: std::mem::take(&mut self.nets),
            kvm_device: self.config.kvm_device.clone(),
            start_time: Instant::now(),
            seccomp: true,
        }
    }
}

impl Hypervisor for BuiltinBackend {
    fn kind(&self) -> Kind {
        Kind::Builtin
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            isolated_by_vm: true,
            rootfs_as_block_device: true,
        }
    }

    fn start(&mut self) -> Result<(), HypervisorError> {
        if self.running.is_some() {
            return Ok(());
        }
        let dir = &self.config.dir;
        std::fs::create_dir_all(dir).map_err(|source| HypervisorError::Directory {
            path: dir.clone(),
            source,
        })?;
        super::create_socket_dir(dir)?;
        // This process now holds a VM: every thread of it gets the deny-list of what
        // none of them ever does, before the guest runs; and it moves into a cgroup of
        // the sandbox's own, which accounts the VM's overhead.
        husk_vmm::confine_process()
            .map_err(|e| HypervisorError::Start(std::io::Error::other(e.to_string())))?;
        let cgroup = match SandboxCgroup::enter(&super::sandbox_name(dir)) {
            Ok(cgroup) => Some(cgroup),
            Err(e) => {
                log::warn!("the sandbox's overhead is not accounted apart: {e}");
                None
            }
        };
        let config = self.vmm_config();
        let spare_drives = self.spare_drives;
        let ended: Arc<Mutex<Option<String>>> = Arc::default();
        let (built_tx, built_rx) = mpsc::channel();
        let ended_by_thread = ended.clone();
        // The VM is built on its own thread and runs there: nothing of it has to cross
        // threads but the stop handle.
        let thread = std::thread::Builder::new()
            .name("husk-vmm".into())
            .spawn(move || {
                let vmm = match Vmm::with_spare_drives(config, spare_drives) {
                    Ok(vmm) => vmm,
                    Err(e) => {
                        let _ = built_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = built_tx.send(Ok((vmm.stop_handle(), vmm.drive_handle())));
                let how = match vmm.run() {
                    Ok(exit) => format!("the VM ended: {}", exit.reason),
                    Err(e) => format!("the VM failed: {e}"),
                };
                log::debug!("{how}");
                *ended_by_thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(how);
            })
            .map_err(HypervisorError::Start)?;
        let (stop, drives) = match built_rx.recv() {
            Ok(Ok(handles)) => handles,
            Ok(Err(message)) => {
                let _ = thread.join();
                return Err(HypervisorError::Start(std::io::Error::other(message)));
            }
            Err(_) => {
                let _ = thread.join();
                return Err(HypervisorError::Start(std::io::Error::other(
                    "the VMM thread ended before the VM was built",
                )));
            }
        };
        let console = self.console_log();
        self.running = Some(Running {
            stop,
            drives,
            thread,
            cgroup,
        });
        let answered = connect_agent(
            AgentAddress::hybrid_vsock(self.uds()).connector(),
            BOOT_PATIENCE,
            || {
                let how = ended.lock().unwrap_or_else(|p| p.into_inner()).clone()?;
                Some(format!(
                    "{how}; guest console: {}",
                    super::last_log_line(&console)
                ))
            },
        );
        if answered.is_err() {
            let _ = self.stop();
        }
        answered.map(|_| ())
    }

    fn add_drive(&mut self, drive: DriveConfig) -> Result<(), HypervisorError> {
        match &self.running {
            // Into a spare slot: the guest sees it at once.
            Some(running) => Ok(running.drives.attach(drive)?),
            None => {
                self.drives.push(drive);
                Ok(())
            }
        }
    }

    fn remove_drive(&mut self, id: &str) -> Result<(), HypervisorError> {
        match &self.running {
            Some(running) => Ok(running.drives.detach(id)?),
            None => {
                let before = self.drives.len();
                self.drives.retain(|d| d.id.as_deref() != Some(id));
                if self.drives.len() == before {
                    return Err(husk_vmm::DriveError::UnknownId(id.to_owned()).into());
                }
                Ok(())
            }
        }
    }

    fn add_network_interface(&mut self, net: NetConfig) -> Result<(), HypervisorError> {
        if self.running.is_some() {
            // virtio-mmio has no hotplug, and a pod's network is set before it starts.
            return Err(HypervisorError::Unsupported(
                "network interfaces are added before the VM starts".into(),
            ));
        }
        self.nets.push(net);
        Ok(())
    }

    fn agent_address(&self) -> Result<AgentAddress, HypervisorError> {
        if self.running.is_none() {
            return Err(HypervisorError::NotRunning);
        }
        Ok(AgentAddress::hybrid_vsock(self.uds()))
    }

    fn pids(&self) -> Vec<u32> {
        // The VM is this process.
        self.running.iter().map(|_| std::process::id()).collect()
    }

    fn stop(&mut self) -> Result<(), HypervisorError> {
        if let Some(running) = self.running.take() {
            running.stop.stop();
            let _ = running.thread.join();
            if let Some(cgroup) = running.cgroup {
                cgroup.leave();
            }
        }
        // The VMM leaves its sockets behind (`<uds>`, and the `<uds>_<port>` listeners
        // of whoever took guest connections): they go with the sandbox.
        super::remove_socket_dir_of(&self.uds());
        Ok(())
    }
}

impl Drop for BuiltinBackend {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> BuiltinBackend {
        BuiltinBackend::new(BuiltinConfig {
            kernel: "/nonexistent/vmlinux".into(),
            initrd: "/nonexistent/initrd".into(),
            memory_mib: 64,
            vcpus: 1,
            dir: "/nonexistent/sandbox".into(),
            kvm_device: "/dev/kvm".into(),
        })
    }

    fn drive(id: &str) -> DriveConfig {
        DriveConfig {
            path: format!("/images/{id}.img").into(),
            read_only: true,
            id: Some(id.into()),
        }
    }

    #[test]
    fn before_the_start_drives_are_the_vms_own_and_can_be_taken_back() {
        let mut b = backend();
        assert_eq!(b.spare_drives, DEFAULT_SPARE_DRIVES);
        b.add_drive(drive("rootfs0")).expect("adding");
        b.add_drive(drive("rootfs1")).expect("adding");
        b.remove_drive("rootfs0").expect("removing");
        assert_eq!(b.vmm_config().drives, vec![drive("rootfs1")]);
        let err = b.remove_drive("rootfs0").expect_err("removed twice");
        assert!(err.to_string().contains("rootfs0"), "{err}");
        assert_eq!(backend().with_spare_drives(0).spare_drives, 0);
    }
}
