//! The host backend: the agent as a host process (root), PID 1 of its own PID and mount
//! namespaces (`husk-agent --listen unix:DIR/agent.sock --run-dir DIR/run --isolate`), so
//! stopping or killing it ends every container process and mount of the sandbox. It
//! gives no hardware isolation; the runtime announces it when it is chosen.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
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
        self.config.dir.join("agent.sock")
    }
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
        // A Unix socket path has room for 107 bytes; say so now, not after a timeout.
        if self.socket().as_os_str().len() > 107 {
            return Err(HypervisorError::Start(std::io::Error::other(format!(
                "the agent's socket path {} is longer than a Unix socket allows (107 \
                 bytes): use a shorter state root",
                self.socket().display()
            ))));
        }
        let log = std::fs::File::create(dir.join("agent.log")).map_err(directory)?;
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
        Ok(())
    }
}

impl Drop for HostBackend {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
