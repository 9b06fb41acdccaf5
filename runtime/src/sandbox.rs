//! A sandbox: a started backend and the control connection to its agent.
//!
//! Starting one picks the backend the settings name, gives it the drives the containers'
//! root file systems need, waits for the agent and hands it the sandbox-wide settings.
//! Stopping it (or dropping it) stops the backend, which ends everything inside.

use std::path::PathBuf;
use std::sync::Arc;

use husk_protocol::SandboxConfig;
use husk_vmm::DriveConfig;

use crate::agent::{AgentClient, ClientError};
use crate::hypervisor::builtin::{BuiltinBackend, BuiltinConfig};
use crate::hypervisor::host::{HostBackend, HostConfig};
use crate::hypervisor::{AgentAddress, Capabilities, Hypervisor, HypervisorError, Kind};

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum SandboxError {
    /// {0}
    Hypervisor(#[from] HypervisorError),
    /// the sandbox's agent: {0}
    Agent(#[from] ClientError),
    /// the host cannot boot the guest: {0}
    NoVm(String),
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
}

pub struct Sandbox {
    hypervisor: Box<dyn Hypervisor>,
    agent: Arc<AgentClient>,
}

/// A backend chosen and set up, not yet started: drives can still be added.
pub struct PreparedSandbox {
    hypervisor: Box<dyn Hypervisor>,
    hostname: Option<String>,
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
        Ok(PreparedSandbox {
            hypervisor,
            hostname: options.hostname.clone(),
        })
    }

    pub fn capabilities(&self) -> Capabilities {
        self.hypervisor.capabilities()
    }

    pub fn add_drive(&mut self, drive: DriveConfig) -> Result<(), SandboxError> {
        Ok(self.hypervisor.add_drive(drive)?)
    }

    /// Starts the backend and configures its agent.
    pub fn start(self) -> Result<Sandbox, SandboxError> {
        let PreparedSandbox {
            mut hypervisor,
            hostname,
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
            ..SandboxConfig::default()
        })?;
        Ok(Sandbox {
            hypervisor,
            agent: Arc::new(agent),
        })
    }
}

impl Sandbox {
    /// The control connection, shared (a signal thread uses it too).
    pub fn agent(&self) -> &Arc<AgentClient> {
        &self.agent
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
