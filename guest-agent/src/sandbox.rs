//! The sandbox's state: its containers and their processes, and the calls that change
//! them. Every call returns a [`Reply`] or an [`AgentError`]; nothing here panics.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use husk_protocol::{
    AgentError, Call, ContainerStats, CreateContainer, ErrorKind, Event, ExecProcess, ExitInfo,
    Reply, Rootfs, SandboxConfig,
};

use crate::container;
use crate::container::cgroups::{self, Cgroup};
use crate::container::overlay::Overlay;
use crate::container::spawn::{self, SpawnKind, SpawnPlan, Spawned};
use crate::events::{bus, EventBus};
use crate::network;
use crate::reaper::reaper;
use crate::stdio::{self, PendingStreams, ProcessIo};
use crate::system;

/// How long `RemoveContainer { force }` and `Shutdown` wait for killed processes.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// One process: a container's own or an exec'd one.
struct Proc {
    pid: i32,
    io: ProcessIo,
    exit: Mutex<Option<ExitInfo>>,
    exited: Condvar,
}

impl Proc {
    fn exit(&self) -> Option<ExitInfo> {
        *lock(&self.exit)
    }

    /// Waits for the exit, at most `timeout` (`None`: for ever).
    fn wait(&self, timeout: Option<Duration>) -> Option<ExitInfo> {
        let mut exit = lock(&self.exit);
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        while exit.is_none() {
            match deadline {
                None => {
                    exit = self.exited.wait(exit).unwrap_or_else(|p| p.into_inner());
                }
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    exit = self
                        .exited
                        .wait_timeout(exit, left)
                        .map(|(guard, _)| guard)
                        .unwrap_or_else(|p| p.into_inner().0);
                }
            }
        }
        *exit
    }
}

enum State {
    /// Created, waiting for `StartContainer`.
    Created(Spawned),
    /// Started (it may have exited since: see its `Proc`).
    Started,
    /// Being removed.
    Removing,
}

struct Container {
    id: String,
    spec: oci_spec::runtime::Spec,
    state: Mutex<State>,
    init: Arc<Proc>,
    execs: Mutex<HashMap<String, Arc<Proc>>>,
    held: Held,
}

/// What a container holds besides its processes, taken one by one as it is created and
/// given back by [`Sandbox::release`], the one teardown path, whether the create failed
/// half way or the container was removed.
struct Held {
    /// The container's directory under the run directory (its overlay's upper layer is
    /// in it), once this container has made it.
    dir: Option<PathBuf>,
    /// The serial of the drive its rootfs is on.
    drive: Option<String>,
    /// Its overlay over the drive or directory, if its rootfs asked for one.
    overlay: Option<Overlay>,
    cgroup: Option<Cgroup>,
}

pub struct Sandbox {
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Ids whose `CreateContainer` is under way.
    creating: Mutex<std::collections::HashSet<String>>,
    pub streams: PendingStreams,
    /// The drives container root file systems are on.
    drives: system::Drives,
    /// Where container directories go (`/run/husk` in the guest).
    run_dir: PathBuf,
    /// The cgroup v2 directory containers go under, or why there is none.
    cgroup_root: Result<PathBuf, String>,
    /// PID 1 of a VM (true), or a host process (false): only a VM's agent sets the
    /// clock, hostname and entropy of its machine, and powers it off.
    in_vm: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn err(kind: ErrorKind, message: impl Into<String>) -> AgentError {
    AgentError::new(kind, message)
}

impl Sandbox {
    pub fn new(run_dir: PathBuf, in_vm: bool) -> Sandbox {
        let cgroup_root = cgroups::v2_root()
            .map(|root| root.join("husk"))
            .map_err(|e| e.to_string());
        if let Err(why) = &cgroup_root {
            log::warn!("containers get no cgroup (no limits, stats or OOM events): {why}");
        }
        Sandbox {
            containers: Mutex::new(HashMap::new()),
            creating: Mutex::new(std::collections::HashSet::new()),
            streams: PendingStreams::default(),
            // A name no container id can take (ids never start with '.'): a container
            // directory must never be the one the drives are mounted in.
            drives: system::Drives::new(run_dir.join(".drives")),
            run_dir,
            cgroup_root,
            in_vm,
        }
    }

    /// Serves one call.
    pub fn handle(self: &Arc<Self>, call: Call) -> Result<Reply, AgentError> {
        match call {
            Call::Ping => Ok(Reply::Pong),
            Call::ConfigureSandbox(config) => self.configure(&config).map(|()| Reply::Done),
            Call::CreateContainer(create) => self.create(*create),
            Call::StartContainer { container_id } => self.start(&container_id),
            Call::Exec(exec) => self.exec(*exec),
            Call::Signal {
                container_id,
                exec_id,
                signal,
                all,
            } => self.signal(&container_id, exec_id.as_deref(), signal, all),
            Call::Wait {
                container_id,
                exec_id,
            } => {
                let proc = self.process(&container_id, exec_id.as_deref())?;
                proc.wait(None)
                    .map(Reply::Exited)
                    .ok_or_else(|| err(ErrorKind::Failed, "the wait ended without an exit"))
            }
            Call::CloseStdin {
                container_id,
                exec_id,
            } => {
                let proc = self.process(&container_id, exec_id.as_deref())?;
                proc.io
                    .close_stdin()
                    .map(|()| Reply::Done)
                    .map_err(|e| err(ErrorKind::Failed, format!("closing stdin: {e}")))
            }
            Call::ResizeTerminal {
                container_id,
                exec_id,
                rows,
                cols,
            } => {
                let proc = self.process(&container_id, exec_id.as_deref())?;
                proc.io
                    .resize(rows, cols)
                    .map(|()| Reply::Done)
                    .map_err(|e| err(ErrorKind::WrongState, format!("resizing the terminal: {e}")))
            }
            Call::Stats { container_id } => self.stats(&container_id).map(Reply::Stats),
            Call::UpdateResources {
                container_id,
                resources,
            } => self
                .update_resources(&container_id, resources)
                .map(|()| Reply::Done),
            Call::Pids { container_id } => {
                self.pids(&container_id).map(|pids| Reply::Pids { pids })
            }
            Call::RemoveContainer {
                container_id,
                force,
            } => self.remove(&container_id, force).map(|()| Reply::Done),
            Call::Shutdown => self.shutdown().map(|()| Reply::Done),
        }
    }

    fn configure(&self, config: &SandboxConfig) -> Result<(), AgentError> {
        if !self.in_vm {
            // The host backend shares the host's clock, entropy and name.
            return Ok(());
        }
        let failed = |what: &str, e: std::io::Error| err(ErrorKind::Failed, format!("{what}: {e}"));
        if let Some(ns) = config.time_unix_ns {
            system::set_clock(ns).map_err(|e| failed("setting the clock", e))?;
        }
        if !config.entropy.is_empty() {
            system::add_entropy(&config.entropy).map_err(|e| failed("adding entropy", e))?;
        }
        if let Some(name) = &config.hostname {
            rustix::system::sethostname(name.as_bytes())
                .map_err(|e| failed("setting the hostname", e.into()))?;
        }
        if !config.dns_servers.is_empty() || !config.dns_search.is_empty() {
            system::write_resolv_conf(&config.dns_servers, &config.dns_search)
                .map_err(|e| failed("writing /etc/resolv.conf", e))?;
        }
        // Always: a pod without interfaces still has its loopback, which starts down.
        network::configure(&config.interfaces, &config.routes, network::LINK_PATIENCE)
            .map_err(|e| err(ErrorKind::Failed, format!("configuring the network: {e}")))?;
        Ok(())
    }

    fn container(&self, id: &str) -> Result<Arc<Container>, AgentError> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| err(ErrorKind::NotFound, format!("no container '{id}'")))
    }

    fn process(&self, container_id: &str, exec_id: Option<&str>) -> Result<Arc<Proc>, AgentError> {
        let container = self.container(container_id)?;
        match exec_id {
            None => Ok(container.init.clone()),
            Some(exec_id) => lock(&container.execs).get(exec_id).cloned().ok_or_else(|| {
                err(
                    ErrorKind::NotFound,
                    format!("no process '{exec_id}' in container '{container_id}'"),
                )
            }),
        }
    }

    fn create(self: &Arc<Self>, create: CreateContainer) -> Result<Reply, AgentError> {
        let CreateContainer {
            container_id: id,
            spec,
            rootfs,
            stdio: stdio_config,
        } = create;
        check_id(&id)?;
        let spec = container::parse_spec(spec)
            .and_then(|spec| container::validate(&spec).map(|()| spec))
            .map_err(|e| err(ErrorKind::InvalidSpec, e.to_string()))?;
        // Reserve the id first, so two creates of one id cannot both go on.
        {
            let containers = lock(&self.containers);
            if containers.contains_key(&id) || !lock(&self.creating).insert(id.clone()) {
                return Err(err(
                    ErrorKind::AlreadyExists,
                    format!("container '{id}' exists"),
                ));
            }
        }
        let mut held = Held {
            dir: None,
            drive: None,
            overlay: None,
            cgroup: None,
        };
        let result = match self.create_in(&id, &spec, rootfs, stdio_config, &mut held) {
            Ok((spawned, io)) => {
                let pid = spawned.pid;
                let init = self.watch(&id, None, pid, io);
                let container = Arc::new(Container {
                    id: id.clone(),
                    spec,
                    state: Mutex::new(State::Created(spawned)),
                    init,
                    execs: Mutex::new(HashMap::new()),
                    held,
                });
                lock(&self.containers).insert(id.clone(), container);
                Ok(Reply::Process { pid })
            }
            Err(e) => {
                self.release(&id, &held);
                Err(e)
            }
        };
        lock(&self.creating).remove(&id);
        result
    }

    /// Creates the container's process, stopped before it execs. What it takes on the way
    /// goes into `held`, for the caller to keep or, on an error, to release.
    fn create_in(
        &self,
        id: &str,
        spec: &oci_spec::runtime::Spec,
        rootfs: Rootfs,
        stdio_config: husk_protocol::StdioConfig,
        held: &mut Held,
    ) -> Result<(Spawned, ProcessIo), AgentError> {
        let failed = |e: String| err(ErrorKind::Failed, e);
        std::fs::create_dir_all(&self.run_dir)
            .map_err(|e| failed(format!("creating {}: {e}", self.run_dir.display())))?;
        // A fresh directory: one left by an earlier container of this id (whose removal
        // failed) may hold its writes, which must not show through in this one.
        let dir = self.run_dir.join(id);
        std::fs::create_dir(&dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => failed(format!(
                "{} is left from an earlier container '{id}'",
                dir.display()
            )),
            _ => failed(format!("creating {}: {e}", dir.display())),
        })?;
        let dir: &Path = held.dir.insert(dir);
        let (source, overlay) = match rootfs {
            Rootfs::Directory { path, overlay } => {
                if !path.is_absolute() || !path.is_dir() {
                    return Err(err(
                        ErrorKind::InvalidSpec,
                        format!(
                            "rootfs {} is not an absolute path to a directory",
                            path.display()
                        ),
                    ));
                }
                (path, overlay)
            }
            Rootfs::BlockDevice {
                serial,
                fs_type,
                overlay,
            } => {
                let path = self
                    .drives
                    .acquire(&serial, &fs_type, overlay)
                    .map_err(failed)?;
                held.drive = Some(serial);
                (path, overlay)
            }
        };
        let rootfs_path = if overlay {
            let overlay =
                Overlay::mount(&source, dir).map_err(|e| failed(format!("rootfs overlay: {e}")))?;
            held.overlay.insert(overlay).merged().to_path_buf()
        } else {
            source
        };

        let resources = spec.linux().as_ref().and_then(|l| l.resources().clone());
        match &self.cgroup_root {
            Ok(root) => {
                let cgroup = Cgroup::create(root, id, resources.as_ref())
                    .map_err(|e| failed(format!("cgroup: {e}")))?;
                held.cgroup = Some(cgroup);
            }
            Err(why) => {
                if resources.is_some() {
                    log::warn!("container {id}: resource limits not applied: {why}");
                }
            }
        }

        let (fds, io) = stdio::prepare(&self.streams, id, None, stdio_config)
            .map_err(|e| failed(e.to_string()))?;
        let plan = SpawnPlan {
            container_id: id.to_owned(),
            kind: SpawnKind::Init {
                spec: spec.clone(),
                rootfs: rootfs_path,
            },
            cgroup: held.cgroup.as_ref().map(|c| c.path().to_path_buf()),
            terminal: stdio_config.terminal,
        };
        let spawned = spawn::spawn(&plan, fds).map_err(|e| failed(e.to_string()))?;
        Ok((spawned, io))
    }

    /// Records a new process and reports its exit when it comes.
    fn watch(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        pid: i32,
        io: ProcessIo,
    ) -> Arc<Proc> {
        let proc = Arc::new(Proc {
            pid,
            io,
            exit: Mutex::new(None),
            exited: Condvar::new(),
        });
        let for_exit = proc.clone();
        let container_id = container_id.to_owned();
        let exec_id = exec_id.map(str::to_owned);
        reaper().watch(pid, move |info| {
            *lock(&for_exit.exit) = Some(info);
            for_exit.exited.notify_all();
            bus().publish(Event::Exited {
                container_id,
                exec_id,
                info,
            });
        });
        proc
    }

    fn start(&self, id: &str) -> Result<Reply, AgentError> {
        let container = self.container(id)?;
        let mut state = lock(&container.state);
        match std::mem::replace(&mut *state, State::Started) {
            State::Created(spawned) => spawned
                .start()
                .map(|()| Reply::Done)
                .map_err(|e| err(ErrorKind::Failed, format!("starting container '{id}': {e}"))),
            other => {
                *state = other;
                Err(err(
                    ErrorKind::WrongState,
                    format!("container '{id}' was started already"),
                ))
            }
        }
    }

    fn exec(&self, exec: ExecProcess) -> Result<Reply, AgentError> {
        let ExecProcess {
            container_id,
            exec_id,
            process,
            stdio: stdio_config,
        } = exec;
        check_id(&exec_id)?;
        let container = self.container(&container_id)?;
        if !matches!(*lock(&container.state), State::Started) || container.init.exit().is_some() {
            return Err(err(
                ErrorKind::WrongState,
                format!("container '{container_id}' is not running"),
            ));
        }
        if lock(&container.execs).contains_key(&exec_id) {
            return Err(err(
                ErrorKind::AlreadyExists,
                format!("process '{exec_id}' exists in container '{container_id}'"),
            ));
        }
        let (fds, io) = stdio::prepare(&self.streams, &container_id, Some(&exec_id), stdio_config)
            .map_err(|e| err(ErrorKind::Failed, e.to_string()))?;
        let plan = SpawnPlan {
            container_id: container_id.clone(),
            kind: SpawnKind::Exec {
                init_pid: container.init.pid,
                process,
                spec: container.spec.clone(),
            },
            cgroup: container
                .held
                .cgroup
                .as_ref()
                .map(|c| c.path().to_path_buf()),
            terminal: stdio_config.terminal,
        };
        let spawned =
            spawn::spawn(&plan, fds).map_err(|e| err(ErrorKind::Failed, e.to_string()))?;
        let pid = spawned.pid;
        let proc = self.watch(&container_id, Some(&exec_id), pid, io);
        lock(&container.execs).insert(exec_id, proc);
        Ok(Reply::Process { pid })
    }

    fn signal(
        &self,
        id: &str,
        exec_id: Option<&str>,
        signal: i32,
        all: bool,
    ) -> Result<Reply, AgentError> {
        let container = self.container(id)?;
        let proc = self.process(id, exec_id)?;
        let signal = rustix::process::Signal::from_named_raw(signal).ok_or_else(|| {
            err(
                ErrorKind::BadRequest,
                format!("{signal} is not a signal number"),
            )
        })?;
        let mut pids = vec![proc.pid];
        if all && exec_id.is_none() {
            if let Some(cgroup) = container.held.cgroup.as_ref() {
                pids = cgroup
                    .pids()
                    .map_err(|e| err(ErrorKind::Failed, e.to_string()))?;
            }
        }
        if proc.exit().is_some() && pids == [proc.pid] {
            return Err(err(
                ErrorKind::WrongState,
                format!("the process of '{id}' has exited"),
            ));
        }
        for pid in pids {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                // A process that exited in between is not an error.
                let _ = rustix::process::kill_process(pid, signal);
            }
        }
        Ok(Reply::Done)
    }

    /// Runs `with` on a container's cgroup; `what` says what a container without one
    /// cannot have.
    fn with_cgroup<T>(
        &self,
        id: &str,
        what: &str,
        with: impl FnOnce(&Cgroup) -> Result<T, cgroups::CgroupError>,
    ) -> Result<T, AgentError> {
        let container = self.container(id)?;
        let Some(cgroup) = container.held.cgroup.as_ref() else {
            return Err(err(
                ErrorKind::Unsupported,
                format!(
                    "no {what} for container '{id}': {}",
                    self.cgroup_root
                        .as_ref()
                        .err()
                        .map_or("it has no cgroup", |w| w.as_str())
                ),
            ));
        };
        with(cgroup).map_err(|e| err(ErrorKind::Failed, e.to_string()))
    }

    fn stats(&self, id: &str) -> Result<ContainerStats, AgentError> {
        self.with_cgroup(id, "stats", Cgroup::stats)
    }

    fn update_resources(&self, id: &str, resources: serde_json::Value) -> Result<(), AgentError> {
        let resources: oci_spec::runtime::LinuxResources = serde_json::from_value(resources)
            .map_err(|e| err(ErrorKind::InvalidSpec, format!("the resources: {e}")))?;
        self.with_cgroup(id, "resource limits", |cgroup| cgroup.apply(&resources))
    }

    fn pids(&self, id: &str) -> Result<Vec<i32>, AgentError> {
        let container = self.container(id)?;
        if let Some(cgroup) = container.held.cgroup.as_ref() {
            return cgroup
                .pids()
                .map_err(|e| err(ErrorKind::Failed, e.to_string()));
        }
        // Without a cgroup: the processes the agent started that have not exited.
        let mut pids: Vec<i32> = std::iter::once(container.init.clone())
            .chain(lock(&container.execs).values().cloned())
            .filter(|p| p.exit().is_none())
            .map(|p| p.pid)
            .collect();
        pids.sort_unstable();
        Ok(pids)
    }

    fn remove(&self, id: &str, force: bool) -> Result<(), AgentError> {
        let container = self.container(id)?;
        {
            let mut state = lock(&container.state);
            let running = container.init.exit().is_none();
            if matches!(*state, State::Removing) {
                return Err(err(
                    ErrorKind::WrongState,
                    format!("container '{id}' is being removed"),
                ));
            }
            if running && matches!(*state, State::Started) && !force {
                return Err(err(
                    ErrorKind::WrongState,
                    format!("container '{id}' is running: stop it first or remove it with force"),
                ));
            }
            *state = State::Removing;
        }
        self.kill_all(&container);
        if container.init.wait(Some(KILL_WAIT)).is_none() {
            log::warn!("container {id}: its process did not exit after SIGKILL");
        }
        if let Some(cgroup) = container.held.cgroup.as_ref() {
            if let Err(e) = cgroup.kill_all() {
                log::warn!("container {id}: {e}");
            }
        }
        lock(&self.containers).remove(id);
        self.release(id, &container.held);
        Ok(())
    }

    /// Gives back what a container held, once its processes are gone (or were never
    /// started), in the reverse order of taking it: its cgroup; its overlay, before the
    /// drive under it; the drive; and its directory, with the overlay's upper layer.
    /// Failures are logged: the container is gone either way. (Calls still under way may
    /// hold the container itself a moment longer.)
    fn release(&self, id: &str, held: &Held) {
        if let Some(cgroup) = held.cgroup.as_ref() {
            if let Err(e) = cgroup.remove() {
                log::warn!("container {id}: {e}");
            }
        }
        let mut dir = held.dir.as_deref();
        if let Some(overlay) = &held.overlay {
            if let Err(e) = overlay.unmount() {
                // Removing the directory would walk into the merged tree, still mounted.
                log::warn!("container {id}: {e}; its directory is left");
                dir = None;
            }
        }
        if let Some(serial) = &held.drive {
            self.drives.release(serial);
        }
        if let Some(dir) = dir {
            if let Err(e) = std::fs::remove_dir_all(dir) {
                log::warn!("removing {}: {e}", dir.display());
            }
        }
    }

    /// SIGKILL to every process of the container.
    fn kill_all(&self, container: &Container) {
        let kill = |pid: i32| {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        };
        if let Some(cgroup) = container.held.cgroup.as_ref() {
            if cgroup.kill_all().is_ok() {
                return;
            }
        }
        // With its own PID namespace, killing its PID 1 kills the rest.
        for exec in lock(&container.execs).values() {
            if exec.exit().is_none() {
                kill(exec.pid);
            }
        }
        if container.init.exit().is_none() {
            kill(container.init.pid);
        }
        log::debug!("container {}: killed", container.id);
    }

    fn shutdown(&self) -> Result<(), AgentError> {
        let ids: Vec<String> = lock(&self.containers).keys().cloned().collect();
        for id in ids {
            if let Err(e) = self.remove(&id, true) {
                log::warn!("shutdown: {e}");
            }
        }
        if self.in_vm {
            system::power_off_soon();
        }
        Ok(())
    }

    /// Why containers get no cgroup, if they get none.
    pub fn cgroups_unavailable(&self) -> Option<&str> {
        self.cgroup_root.as_ref().err().map(String::as_str)
    }

    pub fn events(&self) -> &'static EventBus {
        bus()
    }

    /// Polls OOM kill counters of every container and reports increases; runs forever
    /// on its own thread.
    pub fn watch_oom(self: Arc<Self>) {
        let mut seen: HashMap<String, u64> = HashMap::new();
        loop {
            std::thread::sleep(Duration::from_millis(250));
            let containers: Vec<Arc<Container>> =
                lock(&self.containers).values().cloned().collect();
            seen.retain(|id, _| containers.iter().any(|c| &c.id == id));
            for container in containers {
                let Some(cgroup) = container.held.cgroup.as_ref() else {
                    continue;
                };
                let Ok(kills) = cgroup.oom_kills() else {
                    continue;
                };
                let before = seen.insert(container.id.clone(), kills).unwrap_or(0);
                if kills > before {
                    bus().publish(Event::Oom {
                        container_id: container.id.clone(),
                    });
                }
            }
        }
    }
}

/// Container and exec ids name directories and cgroups: keep them plain.
fn check_id(id: &str) -> Result<(), AgentError> {
    if system::is_plain_name(id) && id.len() <= 128 {
        Ok(())
    } else {
        Err(err(
            ErrorKind::BadRequest,
            format!("'{id}' is not a valid id: 1-128 letters, digits, '-', '_' or '.', not starting with '.'"),
        ))
    }
}
