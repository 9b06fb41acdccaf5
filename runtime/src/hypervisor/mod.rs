//! How the runtime gets a sandbox to run containers in: the [`Hypervisor`] trait and its
//! backends. Nothing above this module touches KVM, device internals or how the agent is
//! reached: a backend starts the sandbox up to a serving agent, hands out connections to
//! it, says what it can do, and stops it, releasing everything it started.
//!
//! - `host` ([`host::HostBackend`]): the agent as a host process, PID 1 of its own PID
//!   and mount namespaces (`husk-agent --isolate`). No VM and no hardware isolation:
//!   only ever chosen explicitly.
//! - `builtin`: the in-process VMM (`husk-vmm`) booting the guest (next).

pub mod host;

use std::sync::Arc;
use std::time::Duration;

use husk_protocol::Connector;

use crate::agent::{AgentClient, ClientError};

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum HypervisorError {
    /// cannot find the agent binary: {0}
    NoAgent(String),
    /// cannot prepare the sandbox directory {path}: {source}
    Directory {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// cannot start the sandbox: {0}
    Start(std::io::Error),
    /// the sandbox ended before its agent answered ({0})
    EndedEarly(String),
    /// the agent did not answer within {0:?}: {1}
    AgentTimeout(Duration, ClientError),
    /// the sandbox is not running
    NotRunning,
}

/// The backends, as configuration and the command line name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The in-process VMM.
    Builtin,
    /// The agent as a host process: no VM.
    Host,
}

/// What a backend offers, for the layers above to decide with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// Containers run inside a VM (hardware isolation).
    pub isolated_by_vm: bool,
    /// Container root file systems must be block devices (else: host directories).
    pub rootfs_as_block_device: bool,
}

pub trait Hypervisor: Send {
    fn kind(&self) -> Kind;
    fn capabilities(&self) -> Capabilities;
    /// Starts the sandbox and waits until its agent serves.
    fn start(&mut self) -> Result<(), HypervisorError>;
    /// Opens connections to the agent (control and stdio streams).
    fn agent_connector(&self) -> Result<Arc<dyn Connector>, HypervisorError>;
    /// The host processes of the sandbox (for accounting and `husk ps`).
    fn pids(&self) -> Vec<u32>;
    /// Stops the sandbox and everything in it; safe to call more than once.
    fn stop(&mut self) -> Result<(), HypervisorError>;
}

/// Connects to the agent, retrying until it serves, until `patience` runs out or
/// `ended` reports that the sandbox is gone.
pub fn connect_agent(
    connector: Arc<dyn Connector>,
    patience: Duration,
    mut ended: impl FnMut() -> Option<String>,
) -> Result<AgentClient, HypervisorError> {
    let deadline = std::time::Instant::now() + patience;
    loop {
        let error = match AgentClient::connect(connector.clone()) {
            Ok(client) => return Ok(client),
            Err(e) => e,
        };
        if let Some(how) = ended() {
            return Err(HypervisorError::EndedEarly(how));
        }
        if std::time::Instant::now() >= deadline {
            return Err(HypervisorError::AgentTimeout(patience, error));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
