//! The host backend: the agent as a host process (root), PID 1 of its own PID and mount
//! namespaces (`husk-agent --listen unix:DIR/agent.sock --run-dir DIR/run --isolate`), so
//! stopping or killing it ends every container process and mount of the sandbox. It
//! gives no hardware isolation; the runtime announces it when it is chosen.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
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

pub struct HostBackend {
    config: HostConfig,
    agent: Option<Child>,
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
                // The signal follows the *thread* that forked, so `start` must be
                // called from a thread that lives as long as the sandbox.
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
        let child = command
            .arg("--listen")
            .arg(format!("unix:{}", self.socket().display()))
            .arg("--run-dir")
            .arg(dir.join("run"))
            .arg("--isolate")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(HypervisorError::Start)?;
        let connector = Arc::new(UnixConnector(self.socket()));
        let log_path = dir.join("agent.log");
        let agent = self.agent.insert(child);
        let answered = connect_agent(connector, START_PATIENCE, || ended(agent, &log_path));
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
        self.agent.iter().map(Child::id).collect()
    }

    fn stop(&mut self) -> Result<(), HypervisorError> {
        if let Some(mut agent) = self.agent.take() {
            // The outer agent's death takes its PID namespace, and every container in
            // it, along.
            let _ = agent.kill();
            let _ = agent.wait();
        }
        Ok(())
    }
}

impl Drop for HostBackend {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// How the agent process ended, with the last line of its log, if it has.
fn ended(agent: &mut Child, log: &Path) -> Option<String> {
    let status = agent.try_wait().ok().flatten()?;
    let last = super::last_log_line(log);
    Some(format!("the agent exited with {status}: {last}"))
}
