//! One container in its own sandbox, from launch to exit: the part of the lifecycle that
//! the process holding the sandbox runs (`husk run` itself, or the sandbox process that
//! `husk create` leaves behind).
//!
//! 1. The root file system is prepared for the backend (`storage`).
//! 2. The sandbox starts with the drives that needs.
//! 3. The container's stdio streams are opened and the agent creates it (OCI `create`);
//!    the state says `created`.
//! 4. Someone starts it (`husk start`, or `husk run` at once); its exit is awaited, the
//!    output drained, the state says `stopped` with the exit code, the sandbox stops.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use husk_protocol::{CreateContainer, Rootfs, StdioConfig};
use serde::{Deserialize, Serialize};

use crate::agent::{AgentClient, ClientError};
use crate::hypervisor::{remove_socket_dir_of, AgentAddress, Kind};
use crate::sandbox::{Attachment, PreparedSandbox, Sandbox, SandboxError, SandboxOptions};
use crate::spec;
use crate::state::{ContainerState, ProcessRef, StateError, StateRoot, Status};
use crate::stdio::{HostStdio, Relay, Streams};
use crate::storage::{self, RootfsSource, StorageError};

/// How long the output of an exited process may take to drain.
const DRAIN_PATIENCE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum ContainerError {
    /// {0}
    State(#[from] StateError),
    /// {0}
    Storage(#[from] StorageError),
    /// {0}
    Sandbox(#[from] SandboxError),
    /// the agent: {0}
    Agent(#[from] ClientError),
    /// stdio: {0}
    Stdio(std::io::Error),
    /// interrupted
    Interrupted,
    /// container {id}: its launch settings: {message}
    Launch { id: String, message: String },
}

/// Everything the sandbox's holder needs to create the container. `husk create` writes
/// it for the sandbox process it starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Launch {
    pub id: String,
    pub bundle: PathBuf,
    /// The OCI spec, as JSON.
    pub spec: serde_json::Value,
    pub rootfs: RootfsSource,
    pub annotations: BTreeMap<String, String>,
    pub hypervisor: Kind,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub memory_mib: u64,
    pub vcpus: u8,
    pub cache: PathBuf,
    pub stdio: StdioConfig,
    pub hostname: Option<String>,
    /// runc's `--console-socket`: where the master of the container's terminal goes.
    #[serde(default)]
    pub console_socket: Option<PathBuf>,
}

impl Launch {
    fn path(root: &StateRoot, id: &str) -> PathBuf {
        root.dir(id).join("launch.json")
    }

    /// Writes the launch next to the container's state, for its sandbox process.
    pub fn save(&self, root: &StateRoot) -> Result<(), ContainerError> {
        let json = serde_json::to_vec(self).map_err(|e| ContainerError::Launch {
            id: self.id.clone(),
            message: e.to_string(),
        })?;
        std::fs::write(Launch::path(root, &self.id), json).map_err(|e| ContainerError::Launch {
            id: self.id.clone(),
            message: e.to_string(),
        })
    }

    pub fn load(root: &StateRoot, id: &str) -> Result<Launch, ContainerError> {
        let bad = |message: String| ContainerError::Launch {
            id: id.to_owned(),
            message,
        };
        let json = std::fs::read(Launch::path(root, id)).map_err(|e| bad(e.to_string()))?;
        serde_json::from_slice(&json).map_err(|e| bad(e.to_string()))
    }
}

/// A container created in a sandbox, its output relayed by this process.
pub struct Member {
    id: String,
    /// Its first process's pid, as the sandbox sees it.
    pid: i32,
    relay: Relay,
    /// What its root file system came into the sandbox as, if it needed anything.
    attachment: Option<Attachment>,
}

/// A container created in its own sandbox, held by this process.
pub struct Held {
    sandbox: Sandbox,
    member: Member,
}

/// Set by a signal handler to abandon a start in progress; checked between the steps.
pub type Interrupt = Arc<AtomicBool>;

/// Steps 1-3: prepares, starts and creates; on any failure releases what it took.
pub fn create(
    launch: &Launch,
    root: &StateRoot,
    host: HostStdio,
    interrupt: &Interrupt,
) -> Result<Held, ContainerError> {
    let check = || match interrupt.load(Ordering::SeqCst) {
        true => Err(ContainerError::Interrupted),
        false => Ok(()),
    };
    let (dns_servers, dns_search) = spec::resolver(&launch.spec).unwrap_or_default();
    let options = SandboxOptions {
        hypervisor: launch.hypervisor,
        dir: root.dir(&launch.id).join("sandbox"),
        kernel: launch.kernel.clone(),
        initrd: launch.initrd.clone(),
        memory_mib: launch.memory_mib,
        vcpus: launch.vcpus,
        hostname: launch.hostname.clone(),
        netns: spec::network_namespace_path(&launch.spec),
        dns_servers,
        dns_search,
    };
    let mut prepared = PreparedSandbox::new(&options)?;
    let rootfs = prepare_rootfs(launch, &prepared.capabilities(), &drive_serial(0))?;
    check()?;
    // A drive the guest finds at boot stays as long as the sandbox.
    if let Some(drive) = rootfs.drive {
        prepared.add_drive(drive)?;
    }
    let sandbox = prepared.start()?;
    check()?;
    let member = create_in(&sandbox, launch, rootfs.for_agent, None, root, host)?;
    check()?;
    Ok(Held { sandbox, member })
}

/// Creates the launch's container in a sandbox that already runs (the next container of
/// a pod): its root file system reaches the sandbox while it runs, as a drive or a shared
/// directory.
pub fn join(
    sandbox: &mut Sandbox,
    launch: &Launch,
    root: &StateRoot,
    host: HostStdio,
) -> Result<Member, ContainerError> {
    let serial = drive_serial(sandbox.drives_added());
    let rootfs = prepare_rootfs(launch, &sandbox.capabilities(), &serial)?;
    let (for_agent, attachment) = match (rootfs.drive, rootfs.for_agent) {
        (Some(drive), for_agent) => (for_agent, Attachment::Drive(sandbox.add_drive(drive)?)),
        (None, Rootfs::Directory { path, overlay }) => {
            let path = sandbox.share_directory(&path, &launch.id)?;
            let for_agent = Rootfs::Directory { path, overlay };
            (for_agent, Attachment::Directory(launch.id.clone()))
        }
        (None, Rootfs::BlockDevice { serial, .. }) => {
            return Err(ContainerError::Launch {
                id: launch.id.clone(),
                message: format!("drive {serial} has no image"),
            })
        }
    };
    let created = create_in(
        sandbox,
        launch,
        for_agent,
        Some(attachment.clone()),
        root,
        host,
    );
    if created.is_err() {
        if let Err(e) = sandbox.detach(&attachment) {
            log::warn!(
                "container {}: taking back its root file system: {e}",
                launch.id
            );
        }
    }
    created
}

/// The serial of a sandbox's n-th root file system drive (short: serials have 20 bytes).
fn drive_serial(n: usize) -> String {
    format!("rootfs{n}")
}

fn prepare_rootfs(
    launch: &Launch,
    capabilities: &crate::hypervisor::Capabilities,
    serial: &str,
) -> Result<storage::Prepared, ContainerError> {
    let cache = husk_storage::Cache::new(&launch.cache);
    Ok(storage::prepare(
        &cache,
        &launch.rootfs,
        capabilities,
        serial,
    )?)
}

/// Step 3 in a running sandbox: the container's streams, the agent's create, and the state
/// that says `created`.
fn create_in(
    sandbox: &Sandbox,
    launch: &Launch,
    rootfs: Rootfs,
    attachment: Option<Attachment>,
    root: &StateRoot,
    host: HostStdio,
) -> Result<Member, ContainerError> {
    let agent = sandbox.agent();
    let streams = Streams::open(agent, &launch.id, None, launch.stdio)?;
    let spec = match sandbox.capabilities().isolated_by_vm {
        true => spec::for_vm(&launch.spec),
        false => launch.spec.clone(),
    };
    let pid = agent.create_container(CreateContainer {
        container_id: launch.id.clone(),
        spec,
        rootfs,
        stdio: launch.stdio,
    })?;
    let relay = Relay::start(streams, host).map_err(ContainerError::Stdio)?;
    let _lock = root.lock(&launch.id)?;
    let mut state = root.load(&launch.id)?;
    state.status = Status::Created;
    state.sandbox_process = ProcessRef::current();
    state.backend_pids = sandbox.backend_pids();
    state.agent = Some(sandbox.agent_address()?);
    state.agent_pid = Some(pid);
    root.save(&state)?;
    Ok(Member {
        id: launch.id.clone(),
        pid,
        relay,
        attachment,
    })
}

/// Claims the launch's id in the state root and records it as `creating`; if that cannot
/// be recorded, the claim is given back.
pub fn register(launch: &Launch, root: &StateRoot) -> Result<(), ContainerError> {
    let _claim = root.claim(&launch.id)?;
    root.save(&initial_state(launch)).map_err(|e| {
        let _ = root.remove(&launch.id);
        e.into()
    })
}

/// The state a launch starts with, before its sandbox exists.
pub fn initial_state(launch: &Launch) -> ContainerState {
    ContainerState {
        id: launch.id.clone(),
        status: Status::Creating,
        bundle: launch.bundle.clone(),
        rootfs: launch.rootfs.path().to_owned(),
        created: crate::state::now_rfc3339(),
        annotations: launch.annotations.clone(),
        hypervisor: launch.hypervisor,
        sandbox_process: None,
        backend_pids: Vec::new(),
        agent: None,
        agent_pid: None,
        exit_code: None,
    }
}

impl Held {
    pub fn id(&self) -> &str {
        &self.member.id
    }

    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// Step 4: waits for the container's process to exit, records it and stops the
    /// sandbox.
    pub fn wait(self, root: &StateRoot) -> Result<Exit, ContainerError> {
        let Held { sandbox, member } = self;
        let waited = member.wait(sandbox.agent(), root);
        sandbox.stop()?;
        waited
    }

    /// The sandbox, for more containers to join, and the container in it.
    pub fn into_parts(self) -> (Sandbox, Member) {
        (self.sandbox, self.member)
    }
}

impl Member {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its first process's pid, as the sandbox sees it.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// What its root file system came into the sandbox as, to take back with it.
    pub fn attachment(&self) -> Option<&Attachment> {
        self.attachment.as_ref()
    }

    /// Waits for the container's first process to exit, drains its output and records
    /// the exit; the sandbox stays.
    pub fn wait(self, agent: &AgentClient, root: &StateRoot) -> Result<Exit, ContainerError> {
        let Member { id, relay, .. } = self;
        let exit = match agent.wait(&id, None) {
            Ok(exit) => Exit {
                code: exit.status.shell_code(),
                at_ns: exit.exited_at_ns,
            },
            // The agent is gone (the VM died, or the host agent was killed): the
            // container went with it.
            Err(e) => {
                log::warn!("container {id}: lost its sandbox: {e}");
                Exit {
                    code: 128 + libc::SIGKILL,
                    at_ns: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_nanos() as u64)
                        .unwrap_or_default(),
                }
            }
        };
        relay.finish(DRAIN_PATIENCE);
        root.lock(&id).and_then(|_lock| {
            let mut state = root.load(&id)?;
            state.status = Status::Stopped;
            state.exit_code = Some(exit.code);
            root.save(&state)
        })?;
        Ok(exit)
    }
}

/// How a container's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The shell's convention: the code, or 128 + the signal.
    pub code: i32,
    /// When, in nanoseconds since the Unix epoch (the sandbox's clock).
    pub at_ns: u64,
}

/// How long a teardown waits for a killed sandbox's processes to be gone.
const TEARDOWN_PATIENCE: Duration = Duration::from_secs(10);

/// Ends whatever still runs of a container's sandbox: its holder (and with it the VM, or
/// the host agent and its namespaces), then waits until every process of it is gone.
pub fn teardown(state: &ContainerState) -> Result<(), String> {
    let mut pids: Vec<i32> = state.backend_pids.clone();
    if let Some(holder) = state.sandbox_process.filter(|p| p.is_alive()) {
        if let Some(pid) = rustix::process::Pid::from_raw(holder.pid) {
            // SIGKILL, not a request: this path must work whatever state the holder is in.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        pids.push(holder.pid);
    }
    let deadline = std::time::Instant::now() + TEARDOWN_PATIENCE;
    let running = |pid: &i32| ProcessRef::of(*pid).is_some();
    while pids.iter().any(running) {
        if std::time::Instant::now() >= deadline {
            let left: Vec<i32> = pids.into_iter().filter(running).collect();
            return Err(format!(
                "container {}: its sandbox's processes {left:?} did not end within {:?}",
                state.id, TEARDOWN_PATIENCE
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // The sockets a killed holder left.
    match &state.agent {
        Some(AgentAddress::Unix { path }) => remove_socket_dir_of(path),
        Some(AgentAddress::HybridVsock { uds, .. }) => {
            remove_socket_dir_of(uds);
            // And the cgroup of a killed VM holder, named like its socket directory.
            if let Some(name) = uds.parent().and_then(|dir| dir.file_name()) {
                crate::hypervisor::cgroup::remove_leftover(&name.to_string_lossy());
            }
        }
        None => {}
    }
    Ok(())
}
