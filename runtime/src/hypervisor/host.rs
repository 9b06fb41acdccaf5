//! The host backend: the agent as a host process (root), PID 1 of its own PID and mount
//! namespaces (`husk-agent --listen unix:DIR/agent.sock --run-dir DIR/run --isolate`), so
//! stopping or killing it ends every container process and mount of the sandbox. It
//! gives no hardware isolation; the runtime announces it when it is chosen.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use husk_protocol::UnixConnector;

use husk_vmm::DriveConfig;

use super::{connect_agent, AgentAddress, Capabilities, Hypervisor, HypervisorError, Kind};

/// How long a fresh agent may take to listen.
const START_PATIENCE: Duration = Duration::from_secs(10);

pub struct HostConfig {
    /// The `husk-agent` binary.
    pub agent: PathBuf,
    /// The sandbox's own directory: the agent's socket, its run directory and its log.
    pub dir: PathBuf,
}

/// The running agent: its pid, and the thread that started it and waits for it.
struct Keeper {
    pid: u32,
    /// How the agent exited, once it has.
    exited: Arc<Mutex<Option<String>>>,
    thread: JoinHandle<()>,
}

pub struct HostBackend {
    config: HostConfig,
    agent: Option<Keeper>,
}

impl HostBackend {
    pub fn new(config: HostConfig) -> HostBackend {
        HostBackend {
            config,
            agent: None,
        }
    }

    fn socket(&self) -> PathBuf {
        super::socket_dir(&self.config.dir).join("agent.sock")
    }

    /// Where directories are shared with the running agent.
    fn shared(&self) -> PathBuf {
        self.config.dir.join("shared")
    }

    fn shared_path(&self, id: &str) -> Result<PathBuf, HypervisorError> {
        let plain = !id.is_empty() && !id.starts_with('.') && !id.contains('/');
        match plain {
            true => Ok(self.shared().join(id)),
            false => Err(HypervisorError::Unsupported(format!(
                "'{id}' cannot name a shared directory"
            ))),
        }
    }
}

/// Makes `dir` a mount of its own in a peer group of its own (a shared mount), so that a
/// mount namespace copied from this one and made a slave (the agent's) receives the mounts
/// made under it later. Everything else stays private to each side.
fn share_mounts(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    rustix::mount::mount_bind(dir, dir)?;
    let shared = rustix::mount::mount_change(dir, rustix::mount::MountPropagationFlags::SHARED);
    if let Err(e) = shared {
        let _ = rustix::mount::unmount(dir, rustix::mount::UnmountFlags::DETACH);
        return Err(e.into());
    }
    Ok(())
}

/// The agent binary for the host backend: `$HUSK_AGENT`, else `husk-agent` next to the
/// running executable, else the static agent of the built guest.
pub fn default_agent() -> Result<PathBuf, HypervisorError> {
    if let Some(path) = std::env::var_os("HUSK_AGENT") {
        return Ok(PathBuf::from(path));
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("husk-agent")));
    let built = crate::guest::cache_dir().join("guest/husk-agent");
    beside
        .into_iter()
        .chain([built.clone()])
        .find(|p| p.is_file())
        .ok_or_else(|| {
            HypervisorError::NoAgent(format!(
                "no husk-agent next to husk and no {} (build the guest with \
                 resources/build-guest.sh, or set HUSK_AGENT)",
                built.display()
            ))
        })
}

impl Hypervisor for HostBackend {
    fn kind(&self) -> Kind {
        Kind::Host
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            isolated_by_vm: false,
            rootfs_as_block_device: false,
        }
    }

    fn start(&mut self) -> Result<(), HypervisorError> {
        if self.agent.is_some() {
            return Ok(());
        }
        let dir = &self.config.dir;
        let directory = |source| HypervisorError::Directory {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(directory)?;
        super::create_socket_dir(dir)?;
        let log = std::fs::File::create(dir.join("agent.log")).map_err(directory)?;
        share_mounts(&self.shared()).map_err(directory)?;
        let mut command = Command::new(&self.config.agent);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe calls are allowed: prctl, getppid and _exit are plain
        // syscalls, and nothing is allocated.
        unsafe {
            command.pre_exec(move || {
                // The agent (and with it the whole sandbox) dies with the husk process
                // that holds the sandbox, even when that one is killed with SIGKILL.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent died before the prctl: nobody would kill us.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        command
            .arg("--listen")
            .arg(format!("unix:{}", self.socket().display()))
            .arg("--run-dir")
            .arg(dir.join("run"))
            .arg("--isolate")
            .arg("--shared")
            .arg(self.shared())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // The agent is started by a thread of its own that lives until the agent exits:
        // PR_SET_PDEATHSIG fires when the forking *thread* ends, and the caller's thread
        // may be a short-lived worker (the shim's ttrpc threads are).
        let exited: Arc<Mutex<Option<String>>> = Arc::default();
        let (spawned_tx, spawned_rx) = std::sync::mpsc::channel();
        let exited_by_keeper = exited.clone();
        let thread = std::thread::Builder::new()
            .name("host-agent".into())
            .spawn(move || {
                let mut child = match command.spawn() {
                    Ok(child) => child,
                    Err(e) => {
                        let _ = spawned_tx.send(Err(e));
                        return;
                    }
                };
                let _ = spawned_tx.send(Ok(child.id()));
                let how = match child.wait() {
                    Ok(status) => format!("the agent exited with {status}"),
                    // Reaped by someone else (a subreaper's SIGCHLD handler).
                    Err(e) => format!("the agent is gone ({e})"),
                };
                *exited_by_keeper.lock().unwrap_or_else(|p| p.into_inner()) = Some(how);
            })
            .map_err(HypervisorError::Start)?;
        let pid = match spawned_rx.recv() {
            Ok(Ok(pid)) => pid,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(HypervisorError::Start(e));
            }
            Err(_) => {
                let _ = thread.join();
                return Err(HypervisorError::Start(std::io::Error::other(
                    "the agent's keeper thread ended before starting it",
                )));
            }
        };
        self.agent = Some(Keeper {
            pid,
            exited: exited.clone(),
            thread,
        });
        let connector = Arc::new(UnixConnector(self.socket()));
        let log_path = dir.join("agent.log");
        let answered = connect_agent(connector, START_PATIENCE, || {
            let how = exited.lock().unwrap_or_else(|p| p.into_inner()).clone()?;
            Some(format!("{how}: {}", super::last_log_line(&log_path)))
        });
        if answered.is_err() {
            let _ = self.stop();
        }
        answered.map(|_| ())
    }

    fn add_drive(&mut self, _drive: DriveConfig) -> Result<(), HypervisorError> {
        Err(HypervisorError::Unsupported(
            "the host backend has no drives: its containers' root file systems are \
             directories"
                .into(),
        ))
    }

    fn remove_drive(&mut self, id: &str) -> Result<(), HypervisorError> {
        // add_drive never takes one, so no id can name a drive here.
        Err(HypervisorError::Unsupported(format!(
            "the host backend has no drives (asked to remove '{id}')"
        )))
    }

    /// A bind mount under the shared directory, which the agent's mount namespace
    /// receives (it is a slave of it).
    fn share_directory(&mut self, path: &Path, id: &str) -> Result<PathBuf, HypervisorError> {
        if self.agent.is_none() {
            return Err(HypervisorError::NotRunning);
        }
        let target = self.shared_path(id)?;
        let failed = |source| HypervisorError::Directory {
            path: target.clone(),
            source,
        };
        std::fs::create_dir(&target).map_err(failed)?;
        let bound = rustix::mount::mount_bind_recursive(path, &target);
        if let Err(e) = bound {
            let _ = std::fs::remove_dir(&target);
            return Err(failed(e.into()));
        }
        Ok(target)
    }

    fn unshare_directory(&mut self, id: &str) -> Result<(), HypervisorError> {
        let target = self.shared_path(id)?;
        let failed = |source| HypervisorError::Directory {
            path: target.clone(),
            source,
        };
        rustix::mount::unmount(&target, rustix::mount::UnmountFlags::DETACH)
            .map_err(|e| failed(e.into()))?;
        std::fs::remove_dir(&target).map_err(failed)
    }

    fn agent_address(&self) -> Result<AgentAddress, HypervisorError> {
        if self.agent.is_none() {
            return Err(HypervisorError::NotRunning);
        }
        Ok(AgentAddress::Unix {
            path: self.socket(),
        })
    }

    fn pids(&self) -> Vec<u32> {
        self.agent.iter().map(|keeper| keeper.pid).collect()
    }

    fn stop(&mut self) -> Result<(), HypervisorError> {
        if let Some(keeper) = self.agent.take() {
            // The outer agent's death takes its PID namespace, and every container in
            // it, along. Not if it has exited: its pid may be someone else's by now.
            let gone = keeper
                .exited
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some();
            if !gone {
                if let Some(pid) = rustix::process::Pid::from_raw(keeper.pid as i32) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
            let _ = keeper.thread.join();
        }
        super::remove_socket_dir_of(&self.socket());
        // With the directories shared into it (lazily: the whole tree goes).
        match rustix::mount::unmount(self.shared(), rustix::mount::UnmountFlags::DETACH) {
            Ok(()) | Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(HypervisorError::Directory {
                path: self.shared(),
                source: e.into(),
            }),
        }
    }
}

impl Drop for HostBackend {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
