//! The shim's Task service: containerd's calls mapped onto husk's container lifecycle
//! (`crate::container`), events published back to containerd.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use containerd_shim as shim;
use husk_protocol::{Event, ExecProcess, StdioConfig};
use shim::api;
use shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskStart,
};
use shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use shim::protos::protobuf::MessageDyn;
use shim::protos::topics;
use shim::protos::ttrpc::{self, Code};
use shim::{ExitSignal, TtrpcContext, TtrpcResult};

use super::events::Events;
use super::namespaces;
use crate::agent::AgentClient;
use crate::cli::{Context, SandboxFlags};
use crate::container::{self, Launch, Member};
use crate::sandbox::{Attachment, Sandbox};
use crate::spec;
use crate::state::{StateRoot, Status as OciStatus};
use crate::stdio::{HostStdio, Relay, Streams};
use crate::storage::RootfsSource;

/// Where a container's process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Created,
    Running,
    Exited { status: u32, at_ns: u64 },
}

/// containerd's FIFOs for one process (an empty path: none).
#[derive(Debug, Clone, Default)]
struct Fifos {
    stdin: String,
    stdout: String,
    stderr: String,
    terminal: bool,
}

impl Fifos {
    fn stdio_config(&self) -> StdioConfig {
        StdioConfig {
            stdin: !self.stdin.is_empty(),
            stdout: !self.stdout.is_empty(),
            stderr: !self.stderr.is_empty() && !self.terminal,
            terminal: self.terminal,
        }
    }
}

/// A process of a container (its first, or an exec'd one) and where it is in its life.
struct Process {
    fifos: Fifos,
    phase: Mutex<Phase>,
    exited: Condvar,
}

impl Process {
    fn new(fifos: Fifos) -> Process {
        Process {
            fifos,
            phase: Mutex::new(Phase::Created),
            exited: Condvar::new(),
        }
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn exit(&self, status: u32, at_ns: u64) {
        *self.phase() = Phase::Exited { status, at_ns };
        self.exited.notify_all();
    }

    /// Blocks until the process has exited.
    fn wait(&self) -> (u32, u64) {
        let mut phase = self.phase();
        loop {
            if let Phase::Exited { status, at_ns } = *phase {
                return (status, at_ns);
            }
            phase = self.exited.wait(phase).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// The sandbox this shim holds, shared by the containers of its pod.
struct Pod {
    /// The pod's id, which is its sandbox container's: that container's state directory
    /// holds the sandbox's own.
    id: String,
    /// The sandbox container's first process, as the sandbox sees it: the pod's
    /// namespaces are its.
    sandbox_pid: i32,
    agent: Arc<AgentClient>,
    /// `None` once stopped.
    sandbox: Mutex<Option<Sandbox>>,
}

impl Pod {
    fn sandbox(&self) -> MutexGuard<'_, Option<Sandbox>> {
        self.sandbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops the sandbox and everything in it.
    fn stop(&self) {
        if let Some(sandbox) = self.sandbox().take() {
            if let Err(e) = sandbox.stop() {
                log::warn!("pod {}: stopping its sandbox: {e}", self.id);
            }
        }
    }
}

/// One container of this shim.
struct Entry {
    id: String,
    bundle: PathBuf,
    pod: Arc<Pod>,
    agent: Arc<AgentClient>,
    /// What its root file system came into the sandbox as, if anything.
    attachment: Option<Attachment>,
    init: Process,
    execs: Mutex<HashMap<String, Arc<Process>>>,
}

impl Entry {
    fn execs(&self) -> MutexGuard<'_, HashMap<String, Arc<Process>>> {
        self.execs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The container's first process, or one exec'd into it.
    fn process(&self, exec_id: &str) -> TtrpcResult<ProcessRef<'_>> {
        if exec_id.is_empty() {
            return Ok(ProcessRef::Init(&self.init));
        }
        self.execs()
            .get(exec_id)
            .cloned()
            .map(ProcessRef::Exec)
            .ok_or_else(|| error(Code::NOT_FOUND, format!("exec {exec_id} does not exist")))
    }
}

/// The first process, borrowed, or an exec'd one, shared.
enum ProcessRef<'a> {
    Init(&'a Process),
    Exec(Arc<Process>),
}

impl std::ops::Deref for ProcessRef<'_> {
    type Target = Process;
    fn deref(&self) -> &Process {
        match self {
            ProcessRef::Init(p) => p,
            ProcessRef::Exec(p) => p,
        }
    }
}

pub struct TaskService {
    context: Result<Context, String>,
    exit: Arc<ExitSignal>,
    events: Arc<Events>,
    containers: Mutex<HashMap<String, Arc<Entry>>>,
    /// The pod, from its first container's Create on.
    pod: Mutex<Option<Arc<Pod>>>,
    /// Exec'd processes' specs between Exec and their Start.
    pending_execs: Mutex<HashMap<(String, String), oci_spec::runtime::Process>>,
}

fn error(code: Code, message: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
}

fn failed(e: impl std::fmt::Display) -> ttrpc::Error {
    error(Code::INTERNAL, e)
}

fn not_implemented(what: &str) -> ttrpc::Error {
    error(
        Code::UNIMPLEMENTED,
        format!("{what} is not implemented by husk"),
    )
}

pub fn timestamp_now() -> Timestamp {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    timestamp(now.as_nanos() as u64)
}

fn timestamp(ns: u64) -> Timestamp {
    let mut t = Timestamp::new();
    t.seconds = (ns / 1_000_000_000) as i64;
    t.nanos = (ns % 1_000_000_000) as i32;
    t
}

/// The shim's own pid: it holds the sandbox, so it is every task's pid on the host.
fn shim_pid() -> u32 {
    std::process::id()
}

impl TaskService {
    pub fn new(
        context: Result<Context, String>,
        events: Arc<Events>,
        exit: Arc<ExitSignal>,
    ) -> TaskService {
        TaskService {
            context,
            exit,
            events,
            containers: Mutex::default(),
            pod: Mutex::default(),
            pending_execs: Mutex::default(),
        }
    }

    fn context(&self) -> TtrpcResult<&Context> {
        self.context
            .as_ref()
            .map_err(|e| error(Code::FAILED_PRECONDITION, e))
    }

    fn containers(&self) -> MutexGuard<'_, HashMap<String, Arc<Entry>>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pending_execs(
        &self,
    ) -> MutexGuard<'_, HashMap<(String, String), oci_spec::runtime::Process>> {
        self.pending_execs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts an exec'd process: its streams, the agent's exec, and a thread that copies
    /// its output and records and announces its exit.
    fn start_exec(&self, entry: &Arc<Entry>, exec_id: &str) -> TtrpcResult<u32> {
        let process = entry.process(exec_id)?;
        let key = (entry.id.clone(), exec_id.to_owned());
        let spec = self.pending_execs().remove(&key).ok_or_else(|| {
            error(
                Code::FAILED_PRECONDITION,
                format!("exec {exec_id} was started already"),
            )
        })?;
        let stdio = process.fifos.stdio_config();
        let streams =
            Streams::open(&entry.agent, &entry.id, Some(exec_id), stdio).map_err(failed)?;
        let host = open_fifos(&process.fifos).map_err(failed)?;
        let pid = entry
            .agent
            .exec(ExecProcess {
                container_id: entry.id.clone(),
                exec_id: exec_id.to_owned(),
                process: spec,
                stdio,
            })
            .map_err(failed)?;
        *process.phase() = Phase::Running;
        let relay = Relay::start(streams, host).map_err(failed)?;
        let pid = u32::try_from(pid).unwrap_or_default();
        let (entry, exec_id) = (entry.clone(), exec_id.to_owned());
        let events = self.events.clone();
        std::thread::Builder::new()
            .name(format!("wait-{exec_id}"))
            .spawn(move || {
                let (status, at_ns) = match entry.agent.wait(&entry.id, Some(&exec_id)) {
                    Ok(exit) => (exit.status.shell_code() as u32, exit.exited_at_ns),
                    Err(e) => {
                        log::warn!("exec {exec_id}: {e}");
                        (128 + libc::SIGKILL as u32, now_ns())
                    }
                };
                relay.finish(std::time::Duration::from_secs(5));
                if let Ok(process) = entry.process(&exec_id) {
                    process.exit(status, at_ns);
                }
                let event = TaskExit {
                    container_id: entry.id.clone(),
                    id: exec_id.clone(),
                    pid,
                    exit_status: status,
                    exited_at: Some(timestamp(at_ns)).into(),
                    ..Default::default()
                };
                events.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(event));
            })
            .map_err(failed)?;
        Ok(pid)
    }

    fn entry(&self, id: &str) -> TtrpcResult<Arc<Entry>> {
        self.containers()
            .get(id)
            .cloned()
            .ok_or_else(|| error(Code::NOT_FOUND, format!("container {id} does not exist")))
    }

    fn publish(&self, topic: &'static str, event: Box<dyn MessageDyn>) {
        self.events.publish(topic, event);
    }

    /// Creates the container: its rootfs mounted from the request's mounts, its stdio
    /// from containerd's FIFOs, its sandbox started and its process created.
    fn create_container(&self, req: &api::CreateTaskRequest) -> Result<Arc<Entry>, String> {
        let context = self.context.as_ref().map_err(String::clone)?;
        let overrides = super::options::config(req.options.as_ref())?;
        let context = &Context {
            config: match overrides {
                Some(over) => context.config.clone().overridden_by(over),
                None => context.config.clone(),
            },
            root: context.root.clone(),
        };
        let bundle = PathBuf::from(&req.bundle);
        let rootfs = bundle.join("rootfs");
        for mount in &req.rootfs {
            shim::mount::mount_rootfs(
                Some(mount.type_.as_str()).filter(|t| !t.is_empty()),
                Some(mount.source.as_str()).filter(|s| !s.is_empty()),
                &mount.options,
                &rootfs,
            )
            .map_err(|e| format!("mounting the rootfs ({}): {e}", mount.type_))?;
        }
        let created = self.create_on_rootfs(context, req, &bundle);
        if created.is_err() {
            unmount_rootfs(&bundle);
        }
        created
    }

    fn create_on_rootfs(
        &self,
        context: &Context,
        req: &api::CreateTaskRequest,
        bundle: &Path,
    ) -> Result<Arc<Entry>, String> {
        let (mut spec, rootfs) = spec::load_bundle(bundle).map_err(|e| e.to_string())?;
        let annotations: BTreeMap<String, String> = spec
            .annotations()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let pod_id = super::pod_id(&annotations, &req.id);
        let sandbox_pid = match self.pod.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(pod) if pod.id == pod_id => Some(pod.sandbox_pid),
            _ => None,
        };
        namespaces::for_sandbox(&mut spec, sandbox_pid)?;
        let fifos = Fifos {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let stdio = fifos.stdio_config();
        let host = open_fifos(&fifos).map_err(|e| format!("containerd's FIFOs: {e}"))?;
        let source = RootfsSource::Directory {
            path: rootfs,
            shared: false,
        };
        let launch: Launch = context.launch(
            &req.id,
            bundle.to_owned(),
            &spec,
            source,
            &SandboxFlags::default(),
            stdio,
        )?;
        let root = &context.root;
        container::register(&launch, root).map_err(|e| e.to_string())?;
        let (pod, member) = match self.create_or_join(&launch, root, host) {
            Ok(created) => created,
            Err(e) => {
                let _ = root.remove(&req.id);
                return Err(e);
            }
        };
        let entry = Arc::new(Entry {
            id: req.id.clone(),
            bundle: bundle.to_owned(),
            agent: pod.agent.clone(),
            pod,
            attachment: member.attachment().cloned(),
            init: Process::new(fifos),
            execs: Mutex::default(),
        });
        // The holder: waits for the process, then records and announces its exit.
        let waiter = entry.clone();
        let root = root.clone();
        let events = self.events.clone();
        std::thread::Builder::new()
            .name(format!("wait-{}", req.id))
            .spawn(move || {
                let (status, at_ns) = match member.wait(&waiter.agent, &root) {
                    Ok(exit) => (exit.code as u32, exit.at_ns),
                    Err(e) => {
                        log::warn!("container {}: {e}", waiter.id);
                        (128 + libc::SIGKILL as u32, now_ns())
                    }
                };
                waiter.init.exit(status, at_ns);
                let event = TaskExit {
                    container_id: waiter.id.clone(),
                    id: waiter.id.clone(),
                    pid: shim_pid(),
                    exit_status: status,
                    exited_at: Some(timestamp(at_ns)).into(),
                    ..Default::default()
                };
                events.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(event));
            })
            .map_err(|e| e.to_string())?;
        Ok(entry)
    }

    /// The pod's first container starts its sandbox; the others join it.
    fn create_or_join(
        &self,
        launch: &Launch,
        root: &StateRoot,
        host: HostStdio,
    ) -> Result<(Arc<Pod>, Member), String> {
        let pod_id = super::pod_id(&launch.annotations, &launch.id).to_owned();
        let mut slot = self.pod.lock().unwrap_or_else(|p| p.into_inner());
        let pod = match slot.as_ref() {
            Some(pod) if pod.id == pod_id => pod.clone(),
            Some(pod) => {
                return Err(format!(
                    "container {} belongs to pod {pod_id}, but this shim holds pod {}",
                    launch.id, pod.id
                ))
            }
            None if pod_id != launch.id => {
                return Err(format!(
                    "container {} joins pod {pod_id}, which does not exist: a pod's first \
                     container must be its sandbox container, whose id is the pod's",
                    launch.id
                ))
            }
            None => {
                // Held while the sandbox starts, so that nothing joins it before.
                let never = Arc::new(AtomicBool::new(false));
                let held =
                    container::create(launch, root, host, &never).map_err(|e| e.to_string())?;
                let (sandbox, member) = held.into_parts();
                let pod = Arc::new(Pod {
                    id: pod_id,
                    sandbox_pid: member.pid(),
                    agent: sandbox.agent().clone(),
                    sandbox: Mutex::new(Some(sandbox)),
                });
                self.relay_oom_events(&pod.agent)
                    .map_err(|e| e.to_string())?;
                *slot = Some(pod.clone());
                return Ok((pod, member));
            }
        };
        drop(slot);
        let member = match pod.sandbox().as_mut() {
            Some(sandbox) => container::join(sandbox, launch, root, host),
            None => return Err(format!("pod {pod_id} has stopped")),
        }
        .map_err(|e| e.to_string())?;
        Ok((pod, member))
    }

    /// Tells containerd about every OOM kill the agent reports, until the sandbox ends.
    fn relay_oom_events(&self, agent: &AgentClient) -> std::io::Result<()> {
        let reported = agent.subscribe();
        let events = self.events.clone();
        std::thread::Builder::new()
            .name("oom-events".into())
            .spawn(move || {
                for event in reported {
                    if let Event::Oom { container_id } = event {
                        let oom = TaskOOM {
                            container_id,
                            ..Default::default()
                        };
                        let topic = topics::TASK_OOM_EVENT_TOPIC;
                        events.publish(topic, Box::new(oom));
                    }
                }
            })
            .map(drop)
    }

    /// Deletes a container that has exited: the last one of the pod stops the sandbox; any
    /// other leaves it, freeing what the container held in it.
    fn remove_container(&self, entry: &Entry, root: &StateRoot) -> Result<(), String> {
        let others = {
            let mut containers = self.containers();
            containers.remove(&entry.id);
            !containers.is_empty()
        };
        let pod = &entry.pod;
        if !others {
            pod.stop();
            *self.pod.lock().unwrap_or_else(|p| p.into_inner()) = None;
            unmount_rootfs(&entry.bundle);
            root.remove(&entry.id).map_err(|e| e.to_string())?;
            return root.remove(&pod.id).map_err(|e| e.to_string());
        }
        if let Err(e) = pod.agent.remove_container(&entry.id, true) {
            log::warn!("container {}: removing it from its sandbox: {e}", entry.id);
        }
        if let (Some(attachment), Some(sandbox)) = (&entry.attachment, pod.sandbox().as_mut()) {
            if let Err(e) = sandbox.detach(attachment) {
                log::warn!(
                    "container {}: taking back its root file system: {e}",
                    entry.id
                );
            }
        }
        unmount_rootfs(&entry.bundle);
        match entry.id == pod.id {
            // Its directory holds the sandbox's until the pod's last container goes.
            true => root.forget(&entry.id),
            false => root.remove(&entry.id),
        }
        .map_err(|e| e.to_string())
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

/// containerd's FIFOs as the process's stdio (an absent one is /dev/null).
fn open_fifos(req: &Fifos) -> std::io::Result<HostStdio> {
    use std::os::unix::fs::OpenOptionsExt;
    let null = || -> std::io::Result<OwnedFd> {
        Ok(File::options().write(true).open("/dev/null")?.into())
    };
    // Output FIFOs opened read-write never block on a missing reader; containerd reads.
    let output = |path: &str| -> std::io::Result<OwnedFd> {
        match path.is_empty() {
            true => null(),
            false => Ok(File::options().read(true).write(true).open(path)?.into()),
        }
    };
    let stdin = match req.stdin.is_empty() {
        true => None,
        false => {
            // Non-blocking to open without a writer yet, then blocking for the copy.
            let file = File::options()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&req.stdin)?;
            let flags = rustix::fs::fcntl_getfl(&file)?;
            rustix::fs::fcntl_setfl(&file, flags - rustix::fs::OFlags::NONBLOCK)?;
            Some(file.into())
        }
    };
    Ok(HostStdio {
        stdin,
        stdout: output(&req.stdout)?,
        stderr: output(&req.stderr)?,
    })
}

/// Unmounts what `create` mounted at the bundle's rootfs.
fn unmount_rootfs(bundle: &Path) {
    let rootfs = bundle.join("rootfs");
    if let Err(e) = rustix::mount::unmount(&rootfs, rustix::mount::UnmountFlags::DETACH) {
        if e != rustix::io::Errno::INVAL {
            log::warn!("unmounting {}: {e}", rootfs.display());
        }
    }
}

/// What `delete` (the subcommand, after the shim is gone) cleans: the container's state
/// and sandbox leftovers, and the rootfs mount in the bundle (containerd runs `delete`
/// in the bundle directory).
pub fn remove_leftovers(context: &Context, id: &str) -> Result<(), String> {
    let root = &context.root;
    if let Ok(state) = root.load(id) {
        container::teardown(&state)?;
        // The pod's directory, if its sandbox container was deleted already.
        let pod = super::pod_id(&state.annotations, id);
        if pod != id && root.load(pod).is_err() {
            root.remove(pod).map_err(|e| e.to_string())?;
        }
    }
    root.remove(id).map_err(|e| e.to_string())?;
    if let Ok(cwd) = std::env::current_dir() {
        unmount_rootfs(&cwd);
    }
    Ok(())
}

impl shim::Task for TaskService {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        if self.containers().contains_key(&req.id) {
            return Err(error(
                Code::ALREADY_EXISTS,
                format!("container {} already exists", req.id),
            ));
        }
        let entry = self.create_container(&req).map_err(failed)?;
        self.containers().insert(req.id.clone(), entry);
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                checkpoint: req.checkpoint.clone(),
                pid: shim_pid(),
                ..Default::default()
            }),
        );
        Ok(api::CreateTaskResponse {
            pid: shim_pid(),
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let entry = self.entry(&req.id)?;
        if !req.exec_id.is_empty() {
            let pid = self.start_exec(&entry, &req.exec_id)?;
            self.publish(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(TaskExecStarted {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    pid,
                    ..Default::default()
                }),
            );
            return Ok(api::StartResponse {
                pid,
                ..Default::default()
            });
        }
        {
            let mut phase = entry.init.phase();
            if *phase != Phase::Created {
                return Err(error(
                    Code::FAILED_PRECONDITION,
                    format!("container {} is not created", req.id),
                ));
            }
            entry.agent.start_container(&req.id).map_err(failed)?;
            *phase = Phase::Running;
        }
        if let Ok(context) = self.context() {
            let root = &context.root;
            if let Ok(_lock) = root.lock(&req.id) {
                if let Ok(mut state) = root.load(&req.id) {
                    if state.status == OciStatus::Created {
                        state.status = OciStatus::Running;
                        let _ = root.save(&state);
                    }
                }
            }
        }
        self.publish(
            topics::TASK_START_EVENT_TOPIC,
            Box::new(TaskStart {
                container_id: req.id.clone(),
                pid: shim_pid(),
                ..Default::default()
            }),
        );
        Ok(api::StartResponse {
            pid: shim_pid(),
            ..Default::default()
        })
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        let entry = self.entry(&req.id)?;
        if *entry.init.phase() != Phase::Running {
            return Err(error(
                Code::FAILED_PRECONDITION,
                format!("container {} is not running", req.id),
            ));
        }
        let process: oci_spec::runtime::Process = req
            .spec
            .as_ref()
            .ok_or_else(|| error(Code::INVALID_ARGUMENT, "exec without a process spec"))
            .and_then(|any| {
                serde_json::from_slice(&any.value).map_err(|e| {
                    error(
                        Code::INVALID_ARGUMENT,
                        format!("the exec's process spec: {e}"),
                    )
                })
            })?;
        let fifos = Fifos {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        {
            let mut execs = entry.execs();
            if execs.contains_key(&req.exec_id) {
                return Err(error(
                    Code::ALREADY_EXISTS,
                    format!("exec {} already exists", req.exec_id),
                ));
            }
            execs.insert(req.exec_id.clone(), Arc::new(Process::new(fifos)));
        }
        self.pending_execs()
            .insert((req.id.clone(), req.exec_id.clone()), process);
        self.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        );
        Ok(api::Empty::new())
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let entry = self.entry(&req.id)?;
        let exec_id = Some(req.exec_id.as_str()).filter(|e| !e.is_empty());
        let rows = u16::try_from(req.height).unwrap_or(u16::MAX);
        let cols = u16::try_from(req.width).unwrap_or(u16::MAX);
        entry
            .agent
            .resize_terminal(&req.id, exec_id, rows, cols)
            .map_err(failed)?;
        Ok(api::Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        let entry = self.entry(&req.id)?;
        if req.stdin {
            let exec_id = Some(req.exec_id.as_str()).filter(|e| !e.is_empty());
            entry.agent.close_stdin(&req.id, exec_id).map_err(failed)?;
        }
        Ok(api::Empty::new())
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let entry = self.entry(&req.id)?;
        let process = entry.process(&req.exec_id)?;
        let phase = *process.phase();
        let mut response = api::StateResponse {
            id: entry.id.clone(),
            bundle: entry.bundle.to_string_lossy().into_owned(),
            pid: shim_pid(),
            stdin: process.fifos.stdin.clone(),
            stdout: process.fifos.stdout.clone(),
            stderr: process.fifos.stderr.clone(),
            terminal: process.fifos.terminal,
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        response.status = match phase {
            Phase::Created => api::Status::CREATED,
            Phase::Running => api::Status::RUNNING,
            Phase::Exited { status, at_ns } => {
                response.exit_status = status;
                response.exited_at = Some(timestamp(at_ns)).into();
                api::Status::STOPPED
            }
        }
        .into();
        Ok(response)
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let entry = self.entry(&req.id)?;
        let (status, at_ns) = entry.process(&req.exec_id)?.wait();
        Ok(api::WaitResponse {
            exit_status: status,
            exited_at: Some(timestamp(at_ns)).into(),
            ..Default::default()
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let entry = self.entry(&req.id)?;
        if matches!(*entry.process(&req.exec_id)?.phase(), Phase::Exited { .. }) {
            return Err(error(
                Code::NOT_FOUND,
                format!("process {} {} has exited", req.id, req.exec_id),
            ));
        }
        let exec_id = Some(req.exec_id.as_str()).filter(|e| !e.is_empty());
        entry
            .agent
            .signal(&req.id, exec_id, req.signal as i32, req.all)
            .map_err(failed)?;
        Ok(api::Empty::new())
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let entry = self.entry(&req.id)?;
        let pids = entry.agent.pids(&req.id).map_err(failed)?;
        Ok(api::PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| shim::protos::api::ProcessInfo {
                    pid: pid as u32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let entry = self.entry(&req.id)?;
        let process = entry.process(&req.exec_id)?;
        let Phase::Exited { status, at_ns } = *process.phase() else {
            return Err(error(
                Code::FAILED_PRECONDITION,
                format!("process {} {} has not exited", req.id, req.exec_id),
            ));
        };
        let response = api::DeleteResponse {
            pid: shim_pid(),
            exit_status: status,
            exited_at: Some(timestamp(at_ns)).into(),
            ..Default::default()
        };
        if !req.exec_id.is_empty() {
            entry.execs().remove(&req.exec_id);
            return Ok(response);
        }
        let context = self.context()?;
        self.remove_container(&entry, &context.root)
            .map_err(failed)?;
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: req.id.clone(),
                pid: shim_pid(),
                exit_status: status,
                exited_at: Some(timestamp(at_ns)).into(),
                ..Default::default()
            }),
        );
        Ok(response)
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let entry = self.entry(&req.id)?;
        let stats = entry.agent.stats(&req.id).map_err(failed)?;
        let mut any = shim::protos::protobuf::well_known_types::any::Any::new();
        any.type_url = super::metrics::TYPE_URL.to_owned();
        any.value = super::metrics::encode(&stats);
        Ok(api::StatsResponse {
            stats: Some(any).into(),
            ..Default::default()
        })
    }

    /// New resource limits for a container: containerd sends an OCI `LinuxResources` as
    /// JSON.
    fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        let entry = self.entry(&req.id)?;
        let resources = req
            .resources
            .as_ref()
            .ok_or_else(|| error(Code::INVALID_ARGUMENT, "an update without resources"))?;
        let resources: serde_json::Value =
            serde_json::from_slice(&resources.value).map_err(|e| {
                error(
                    Code::INVALID_ARGUMENT,
                    format!("the resources ({}): {e}", resources.type_url),
                )
            })?;
        entry
            .agent
            .update_resources(&req.id, resources)
            .map_err(failed)?;
        Ok(api::Empty::new())
    }

    fn pause(&self, _ctx: &TtrpcContext, _req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        Err(not_implemented("pausing a container"))
    }

    fn resume(&self, _ctx: &TtrpcContext, _req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        Err(not_implemented("resuming a container"))
    }

    fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(not_implemented("checkpointing a container"))
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        self.entry(&req.id)?;
        Ok(api::ConnectResponse {
            shim_pid: shim_pid(),
            task_pid: shim_pid(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        // The shim lives as long as it holds a container.
        if self.containers().is_empty() {
            self.exit.signal();
        }
        Ok(api::Empty::new())
    }
}
