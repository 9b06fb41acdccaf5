//! How the runtime gets a sandbox to run containers in: the [`Hypervisor`] trait and its
//! backends. Nothing above this module touches KVM, device internals or how the agent is
//! reached: a backend starts the sandbox up to a serving agent, hands out connections to
//! it, says what it can do, and stops it, releasing everything it started.
//!
//! - `host` ([`host::HostBackend`]): the agent as a host process, PID 1 of its own PID
//!   and mount namespaces (`husk-agent --isolate`). No VM and no hardware isolation:
//!   only ever chosen explicitly.
//! - `builtin`: the in-process VMM (`husk-vmm`) booting the guest (next).

pub mod builtin;
pub mod cgroup;
pub mod host;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use husk_protocol::{Connector, HybridVsockConnector, UnixConnector, AGENT_VSOCK_PORT};
use husk_vmm::{DriveConfig, NetConfig};
use serde::{Deserialize, Serialize};

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
    /// {0}
    Unsupported(String),
    /// {0}
    Drive(#[from] husk_vmm::DriveError),
}

/// Where sandboxes' Unix sockets live. Not in their own directories: a socket's path must
/// fit in 107 bytes, and a sandbox directory under a state root does not leave room (CRI's
/// container ids alone have 64 characters). A leading dot: no container id can take it
/// when the state root is the default `/run/husk`.
const SOCKET_ROOT: &str = "/run/husk/.sockets";

/// The socket directory of the sandbox whose directory is `sandbox_dir`, named by a hash
/// of that path (so the same for every process that knows it). Its backend creates it.
pub fn socket_dir(sandbox_dir: &Path) -> PathBuf {
    Path::new(SOCKET_ROOT).join(sandbox_name(sandbox_dir))
}

/// A short name for the sandbox whose directory is `sandbox_dir`, the same in every
/// process: a hash of the path. Its socket directory and its cgroup are named by it.
pub fn sandbox_name(sandbox_dir: &Path) -> String {
    use sha2::{Digest, Sha256};
    use std::os::unix::ffi::OsStrExt;
    let digest = Sha256::digest(sandbox_dir.as_os_str().as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates the sandbox's socket directory, open to its owner only: whoever can connect
/// to the agent's or the VMM's socket controls the sandbox's containers.
fn create_socket_dir(sandbox_dir: &Path) -> Result<(), HypervisorError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = socket_dir(sandbox_dir);
    let failed = |source| HypervisorError::Directory {
        path: dir.clone(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(failed)?;
    // `recursive` leaves an existing directory's mode alone.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(failed)
}

/// Removes the socket directory that holds `socket` (as a sandbox's state records its
/// agent's address), with everything in it; a socket anywhere else is left alone.
pub fn remove_socket_dir_of(socket: &Path) {
    let Some(dir) = socket
        .parent()
        .filter(|dir| dir.parent() == Some(Path::new(SOCKET_ROOT)))
    else {
        return;
    };
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            log::warn!("removing {}: {e}", dir.display());
        }
    }
}

/// The backends, as configuration and the command line name them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The in-process VMM.
    Builtin,
    /// The agent as a host process: no VM.
    Host,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Builtin => "builtin",
            Kind::Host => "host",
        })
    }
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
    /// Adds a drive the guest will see. Before `start` the guest finds it at boot; once the
    /// sandbox runs it goes into a free spare slot (virtio-mmio has no hotplug), where it
    /// needs an id and the guest cannot tell that it is read-only (mount it read-only).
    fn add_drive(&mut self, drive: DriveConfig) -> Result<(), HypervisorError>;
    /// Takes out a drive added once the sandbox ran, by its id, when nothing in the guest
    /// uses it any more (it reads as an empty disk afterwards); before `start`, forgets a
    /// drive added so far. Drives the guest found at boot stay.
    fn remove_drive(&mut self, id: &str) -> Result<(), HypervisorError>;
    /// Makes a host directory visible to the running sandbox's agent, under `id`;
    /// answers the path the agent finds it at. Only backends whose containers' root file
    /// systems are directories (the host backend) can.
    fn share_directory(&mut self, path: &Path, id: &str) -> Result<PathBuf, HypervisorError> {
        let _ = (path, id);
        Err(HypervisorError::Unsupported(format!(
            "the {} backend cannot share directories",
            self.kind()
        )))
    }
    /// Takes back a directory shared under `id`, once nothing in the sandbox uses it.
    fn unshare_directory(&mut self, id: &str) -> Result<(), HypervisorError> {
        Err(HypervisorError::Unsupported(format!(
            "the {} backend shares no directory '{id}'",
            self.kind()
        )))
    }
    /// Gives the sandbox a network interface on `net`'s tap, before it starts. Only a VM
    /// has interfaces of its own: other backends' containers join the pod's network
    /// namespace as it is.
    fn add_network_interface(&mut self, net: NetConfig) -> Result<(), HypervisorError> {
        drop(net);
        Err(HypervisorError::Unsupported(format!(
            "the {} backend has no network interfaces of its own",
            self.kind()
        )))
    }
    /// Where the agent listens, for this process and for later `husk` commands.
    fn agent_address(&self) -> Result<AgentAddress, HypervisorError>;
    /// Opens connections to the agent (control and stdio streams).
    fn agent_connector(&self) -> Result<Arc<dyn Connector>, HypervisorError> {
        Ok(self.agent_address()?.connector())
    }
    /// The host processes of the sandbox (for accounting and `husk ps`).
    fn pids(&self) -> Vec<u32>;
    /// Stops the sandbox and everything in it; safe to call more than once.
    fn stop(&mut self) -> Result<(), HypervisorError>;
}

/// Where a sandbox's agent can be reached from any process on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AgentAddress {
    /// The host backend's agent socket.
    Unix { path: PathBuf },
    /// The VMM's hybrid vsock socket and the agent's vsock port in the guest.
    HybridVsock { uds: PathBuf, port: u32 },
}

/// How long the VMM and guest may take to accept a vsock connection.
const VSOCK_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl AgentAddress {
    pub fn hybrid_vsock(uds: PathBuf) -> AgentAddress {
        AgentAddress::HybridVsock {
            uds,
            port: AGENT_VSOCK_PORT,
        }
    }

    pub fn connector(&self) -> Arc<dyn Connector> {
        match self {
            AgentAddress::Unix { path } => Arc::new(UnixConnector(path.clone())),
            AgentAddress::HybridVsock { uds, port } => Arc::new(HybridVsockConnector {
                uds_path: uds.clone(),
                port: *port,
                timeout: VSOCK_CONNECT_TIMEOUT,
            }),
        }
    }
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

/// The last non-empty line of a log file (an agent's, a guest console's), for errors that
/// say why a sandbox ended; "(empty)" when there is none.
pub(crate) fn last_log_line(path: &std::path::Path) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| {
            text.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "(empty)".into())
}
