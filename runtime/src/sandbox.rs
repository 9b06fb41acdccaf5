//! A sandbox: a started backend and the control connection to its agent.
//!
//! Starting one picks the backend the settings name, gives it the drives the containers'
//! root file systems need, waits for the agent and hands it the sandbox-wide settings.
//! Stopping it (or dropping it) stops the backend, which ends everything inside.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use husk_protocol::{Interface, Route, SandboxConfig};
use husk_vmm::DriveConfig;

use crate::agent::{AgentClient, ClientError};
use crate::hypervisor::builtin::{BuiltinBackend, BuiltinConfig};
use crate::hypervisor::host::{HostBackend, HostConfig};
use crate::hypervisor::{AgentAddress, Capabilities, Hypervisor, HypervisorError, Kind};
use crate::network::{self, NetworkError, PodNetwork};

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum SandboxError {
    /// {0}
    Hypervisor(#[from] HypervisorError),
    /// the sandbox's agent: {0}
    Agent(#[from] ClientError),
    /// the host cannot boot the guest: {0}
    NoVm(String),
    /// a drive without an id cannot be found in the guest
    DriveWithoutId,
    /// the pod's network: {0}
    Network(#[from] NetworkError),
}

/// What a sandbox is made of.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    pub hypervisor: Kind,
    /// The sandbox's own directory (sockets, logs, the host agent's run directory).
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub memory_mib: u64,
    pub vcpus: u8,
    pub hostname: Option<String>,
    /// The pod's network namespace (CNI's), when the spec names one by path. A VM gets
    /// its interfaces from there (`network`); other backends' containers join it.
    pub netns: Option<PathBuf>,
    /// Name servers and search domains for a VM's `/etc/resolv.conf`.
    pub dns_servers: Vec<String>,
    pub dns_search: Vec<String>,
}

/// Something given to a running sandbox for one container, by its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attachment {
    Drive(String),
    Directory(String),
}

pub struct Sandbox {
    hypervisor: Box<dyn Hypervisor>,
    agent: Arc<AgentClient>,
    /// How many drives were ever added (their serials stay unique).
    drives_added: usize,
    /// The pod's interfaces wired to the VM's, unwired when this goes (after the backend
    /// stopped: fields drop in order).
    _network: Option<PodNetwork>,
}

/// A backend chosen and set up, not yet started.
pub struct PreparedSandbox {
    hypervisor: Box<dyn Hypervisor>,
    hostname: Option<String>,
    drives_added: usize,
    dns_servers: Vec<String>,
    dns_search: Vec<String>,
    /// The interfaces and routes the agent sets up, and what to unwire at the end.
    interfaces: Vec<Interface>,
    routes: Vec<Route>,
    network: Option<PodNetwork>,
}

impl PreparedSandbox {
    /// Picks the backend the options name.
    pub fn new(options: &SandboxOptions) -> Result<PreparedSandbox, SandboxError> {
        let hypervisor: Box<dyn Hypervisor> = match options.hypervisor {
            Kind::Builtin => {
                for path in [&options.kernel, &options.initrd] {
                    if !path.is_file() {
                        return Err(SandboxError::NoVm(format!(
                            "{} is missing (build the guest with resources/build-guest.sh, \
                             or set kernel/initrd in the configuration)",
                            path.display()
                        )));
                    }
                }
                Box::new(BuiltinBackend::new(BuiltinConfig {
                    kernel: options.kernel.clone(),
                    initrd: options.initrd.clone(),
                    memory_mib: options.memory_mib,
                    vcpus: options.vcpus,
                    dir: options.dir.clone(),
                    kvm_device: crate::guest::kvm_device(),
                }))
            }
            Kind::Host => {
                log::info!(
                    "hypervisor \"host\": the containers run in namespaces on this host, \
                     with no VM and no hardware isolation"
                );
                Box::new(HostBackend::new(HostConfig {
                    agent: crate::hypervisor::host::default_agent()?,
                    dir: options.dir.clone(),
                }))
            }
        };
        let mut prepared = PreparedSandbox {
            hypervisor,
            hostname: options.hostname.clone(),
            drives_added: 0,
            dns_servers: options.dns_servers.clone(),
            dns_search: options.dns_search.clone(),
            interfaces: Vec::new(),
            routes: Vec::new(),
            network: None,
        };
        // A VM's interfaces come from the pod's namespace; other backends' containers
        // join that namespace themselves (the spec names it).
        if let Some(netns) = &options.netns {
            if prepared.capabilities().isolated_by_vm {
                prepared.attach_network(netns)?;
            }
        }
        Ok(prepared)
    }

    /// Wires the pod's interfaces to taps and gives the VM a device on each.
    fn attach_network(&mut self, netns: &Path) -> Result<(), SandboxError> {
        let attached = network::attach(netns)?;
        // Kept first: dropping it unwires, should a device not be taken.
        self.network = Some(attached.network);
        for net in attached.nets {
            self.hypervisor.add_network_interface(net)?;
        }
        self.interfaces = attached.interfaces;
        self.routes = attached.routes;
        Ok(())
    }

    pub fn capabilities(&self) -> Capabilities {
        self.hypervisor.capabilities()
    }

    /// Adds a drive the guest finds at boot; answers its id.
    pub fn add_drive(&mut self, drive: DriveConfig) -> Result<String, SandboxError> {
        add_drive(&mut *self.hypervisor, &mut self.drives_added, drive)
    }

    /// Starts the backend and configures its agent.
    pub fn start(self) -> Result<Sandbox, SandboxError> {
        let PreparedSandbox {
            mut hypervisor,
            hostname,
            drives_added,
            dns_servers,
            dns_search,
            interfaces,
            routes,
            network,
        } = self;
        hypervisor.start()?;
        let agent = AgentClient::connect(hypervisor.agent_connector()?)?;
        agent.configure_sandbox(SandboxConfig {
            hostname,
            time_unix_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .and_then(|d| u64::try_from(d.as_nanos()).ok()),
            entropy: entropy(),
            dns_servers,
            dns_search,
            interfaces,
            routes,
        })?;
        Ok(Sandbox {
            hypervisor,
            agent: Arc::new(agent),
            drives_added,
            _network: network,
        })
    }
}

impl Sandbox {
    /// The control connection, shared (a signal thread uses it too).
    pub fn agent(&self) -> &Arc<AgentClient> {
        &self.agent
    }

    pub fn capabilities(&self) -> Capabilities {
        self.hypervisor.capabilities()
    }

    /// How many drives were added so far, removed ones included.
    pub fn drives_added(&self) -> usize {
        self.drives_added
    }

    /// Adds a drive to the running sandbox (a pod's next container); answers its id.
    pub fn add_drive(&mut self, drive: DriveConfig) -> Result<String, SandboxError> {
        add_drive(&mut *self.hypervisor, &mut self.drives_added, drive)
    }

    /// Makes a host directory visible to the running sandbox under `id`; answers where
    /// the agent finds it.
    pub fn share_directory(&mut self, path: &Path, id: &str) -> Result<PathBuf, SandboxError> {
        Ok(self.hypervisor.share_directory(path, id)?)
    }

    /// Takes back a drive or directory given to the running sandbox, once nothing in it
    /// uses that any more.
    pub fn detach(&mut self, attachment: &Attachment) -> Result<(), SandboxError> {
        let detached = match attachment {
            Attachment::Drive(id) => self.hypervisor.remove_drive(id),
            Attachment::Directory(id) => self.hypervisor.unshare_directory(id),
        };
        Ok(detached?)
    }

    pub fn agent_address(&self) -> Result<AgentAddress, SandboxError> {
        Ok(self.hypervisor.agent_address()?)
    }

    /// The sandbox's host processes other than this one.
    pub fn backend_pids(&self) -> Vec<i32> {
        let me = std::process::id();
        self.hypervisor
            .pids()
            .into_iter()
            .filter(|pid| *pid != me)
            .filter_map(|pid| i32::try_from(pid).ok())
            .collect()
    }

    /// Stops the backend and everything in it.
    pub fn stop(mut self) -> Result<(), SandboxError> {
        Ok(self.hypervisor.stop()?)
    }
}

/// Adds `drive` (which must carry an id: the runtime finds drives by it) and counts it.
fn add_drive(
    hypervisor: &mut dyn Hypervisor,
    drives_added: &mut usize,
    drive: DriveConfig,
) -> Result<String, SandboxError> {
    let id = drive.id.clone().ok_or(SandboxError::DriveWithoutId)?;
    hypervisor.add_drive(drive)?;
    *drives_added += 1;
    Ok(id)
}

/// Seed for the guest's entropy pool; a sandbox without it still works, just starts with
/// less entropy.
fn entropy() -> Vec<u8> {
    let mut seed = vec![0u8; 64];
    match rustix::rand::getrandom(&mut seed, rustix::rand::GetRandomFlags::empty()) {
        Ok(n) => {
            seed.truncate(n);
            seed
        }
        Err(_) => Vec::new(),
    }
}
