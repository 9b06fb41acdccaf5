//! The shim's Task service: containerd's calls mapped onto husk's container lifecycle
//! (`crate::container`), events published back to containerd.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use containerd_shim as shim;
use husk_protocol::StdioConfig;
use shim::api;
use shim::protos::events::task::{TaskCreate, TaskDelete, TaskExit, TaskStart};
use shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use shim::protos::protobuf::MessageDyn;
use shim::protos::topics;
use shim::protos::ttrpc::{self, context::Context as TtrpcCallContext, Code};
use shim::publisher::RemotePublisher;
use shim::{ExitSignal, TtrpcContext, TtrpcResult};

use crate::agent::AgentClient;
use crate::cli::{Context, SandboxFlags};
use crate::container::{self, Launch};
use crate::spec;
use crate::state::Status as OciStatus;
use crate::stdio::HostStdio;
use crate::storage::RootfsSource;

/// Where a container's process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Created,
    Running,
    Exited { status: u32, at_ns: u64 },
}

/// One container of this shim.
struct Entry {
    id: String,
    bundle: PathBuf,
    request: api::CreateTaskRequest,
    agent: Arc<AgentClient>,
    phase: Mutex<Phase>,
    exited: Condvar,
}

impl Entry {
    fn phase(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct TaskService {
    context: Result<Context, String>,
    namespace: String,
    exit: Arc<ExitSignal>,
    publisher: Arc<RemotePublisher>,
    containers: Mutex<HashMap<String, Arc<Entry>>>,
}

fn error(code: Code, message: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
}

fn failed(e: impl std::fmt::Display) -> ttrpc::Error {
    error(Code::INTERNAL, e)
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
        namespace: String,
        exit: Arc<ExitSignal>,
        publisher: RemotePublisher,
    ) -> TaskService {
        TaskService {
            context,
            namespace,
            exit,
            publisher: Arc::new(publisher),
            containers: Mutex::default(),
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

    fn entry(&self, id: &str) -> TtrpcResult<Arc<Entry>> {
        self.containers()
            .get(id)
            .cloned()
            .ok_or_else(|| error(Code::NOT_FOUND, format!("container {id} does not exist")))
    }

    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        publish(&self.publisher, &self.namespace, topic, event);
    }

    /// Creates the container: its rootfs mounted from the request's mounts, its stdio
    /// from containerd's FIFOs, its sandbox started and its process created.
    fn create_container(&self, req: &api::CreateTaskRequest) -> Result<Arc<Entry>, String> {
        let context = self.context.as_ref().map_err(String::clone)?;
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
        let (spec, rootfs) = spec::load_bundle(bundle).map_err(|e| e.to_string())?;
        let stdio = StdioConfig {
            stdin: !req.stdin.is_empty(),
            stdout: !req.stdout.is_empty(),
            stderr: !req.stderr.is_empty() && !req.terminal,
            terminal: req.terminal,
        };
        let host = open_fifos(req).map_err(|e| format!("containerd's FIFOs: {e}"))?;
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
        let claim = root.claim(&req.id).map_err(|e| e.to_string())?;
        root.save(&container::initial_state(&launch))
            .map_err(|e| e.to_string())?;
        drop(claim);
        let never = Arc::new(AtomicBool::new(false));
        let held = match container::create(&launch, root, host, &never) {
            Ok(held) => held,
            Err(e) => {
                let _ = root.remove(&req.id);
                return Err(e.to_string());
            }
        };
        let entry = Arc::new(Entry {
            id: req.id.clone(),
            bundle: bundle.to_owned(),
            request: req.clone(),
            agent: held.sandbox().agent().clone(),
            phase: Mutex::new(Phase::Created),
            exited: Condvar::new(),
        });
        // The holder: waits for the process, then records and announces its exit.
        let waiter = entry.clone();
        let root = root.clone();
        let namespace = self.namespace.clone();
        let publisher = self.publisher.clone();
        std::thread::Builder::new()
            .name(format!("wait-{}", req.id))
            .spawn(move || {
                let (status, at_ns) = match held.wait(&root) {
                    Ok(exit) => (exit.code as u32, exit.at_ns),
                    Err(e) => {
                        log::warn!("container {}: {e}", waiter.id);
                        (128 + libc::SIGKILL as u32, now_ns())
                    }
                };
                *waiter.phase() = Phase::Exited { status, at_ns };
                waiter.exited.notify_all();
                let event = TaskExit {
                    container_id: waiter.id.clone(),
                    id: waiter.id.clone(),
                    pid: shim_pid(),
                    exit_status: status,
                    exited_at: Some(timestamp(at_ns)).into(),
                    ..Default::default()
                };
                publish(
                    &publisher,
                    &namespace,
                    topics::TASK_EXIT_EVENT_TOPIC,
                    Box::new(event),
                );
            })
            .map_err(|e| e.to_string())?;
        Ok(entry)
    }
}

/// Sends an event to containerd; a failure is logged, not fatal.
fn publish(publisher: &RemotePublisher, namespace: &str, topic: &str, event: Box<dyn MessageDyn>) {
    let published = publisher.publish(TtrpcCallContext::default(), topic, namespace, event);
    if let Err(e) = published {
        log::warn!("publishing {topic}: {e}");
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

/// containerd's FIFOs as the process's stdio (an absent one is /dev/null).
fn open_fifos(req: &api::CreateTaskRequest) -> std::io::Result<HostStdio> {
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
        if !req.exec_id.is_empty() {
            return Err(error(Code::UNIMPLEMENTED, "exec is not implemented yet"));
        }
        let entry = self.entry(&req.id)?;
        {
            let mut phase = entry.phase();
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

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let entry = self.entry(&req.id)?;
        let phase = *entry.phase();
        let mut response = api::StateResponse {
            id: entry.id.clone(),
            bundle: entry.bundle.to_string_lossy().into_owned(),
            pid: shim_pid(),
            stdin: entry.request.stdin.clone(),
            stdout: entry.request.stdout.clone(),
            stderr: entry.request.stderr.clone(),
            terminal: entry.request.terminal,
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
        let mut phase = entry.phase();
        loop {
            if let Phase::Exited { status, at_ns } = *phase {
                return Ok(api::WaitResponse {
                    exit_status: status,
                    exited_at: Some(timestamp(at_ns)).into(),
                    ..Default::default()
                });
            }
            phase = entry.exited.wait(phase).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let entry = self.entry(&req.id)?;
        if matches!(*entry.phase(), Phase::Exited { .. }) {
            return Err(error(
                Code::NOT_FOUND,
                format!("container {} has exited", req.id),
            ));
        }
        entry
            .agent
            .signal(&req.id, None, req.signal as i32, req.all)
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
        let Phase::Exited { status, at_ns } = *entry.phase() else {
            return Err(error(
                Code::FAILED_PRECONDITION,
                format!("container {} has not exited", req.id),
            ));
        };
        let context = self.context()?;
        context.root.remove(&req.id).map_err(failed)?;
        unmount_rootfs(&entry.bundle);
        self.containers().remove(&req.id);
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
        Ok(api::DeleteResponse {
            pid: shim_pid(),
            exit_status: status,
            exited_at: Some(timestamp(at_ns)).into(),
            ..Default::default()
        })
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let entry = self.entry(&req.id)?;
        let _ = entry;
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
