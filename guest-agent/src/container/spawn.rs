//! How a container process comes to be.
//!
//! The agent is multi-threaded, so it never sets a container up in a forked copy of
//! itself. [`spawn`] starts a helper, `/proc/self/exe container-init` (or
//! `container-exec`): a fresh, single-threaded process of the agent's own binary, which
//! the agent's `main` hands to [`helper_main`] before doing anything else. The helper gets
//! - its [`SpawnPlan`] as JSON on fd 3 (a pipe; read to EOF),
//! - the *sync* socket on fd 4 (one end of a `socketpair`), on which the helper and its
//!   child report, one JSON object per line: `{"pid": N}`, `{"ready": true}`,
//!   `{"error": "..."}`; the agent writes the line `start` to let an init process exec,
//! - the process's stdio as fds 0, 1, 2, which it passes on untouched.
//!
//! `container-init`: the helper joins the container's cgroup (if any), joins the
//! namespaces the spec gives by path, unshares the others except PID (a new mount
//! namespace always: `pivot_root` must never touch the agent's), unshares the PID
//! namespace if the spec asks for one, and forks. It reports the child's pid (as the agent
//! sees it) and exits 0. The child, PID 1 of the new PID namespace, sets everything up
//! (`setup.rs`), reports ready and waits for `start`; then it execs. The sync socket is
//! close-on-exec in it, so after a successful exec the agent reads EOF; a failure at any
//! point is reported as `{"error"}`, and the child exits 127.
//!
//! `container-exec`: the helper joins the cgroup and every namespace of the container's
//! init process (`/proc/<pid>/ns/{ipc,uts,net,pid,cgroup,mnt}`, skipping those it shares
//! already) and forks; the child applies the process settings, reports ready and execs at
//! once. [`spawn`] waits for that exec (EOF) before returning.
//!
//! After the helper exits, the container process is re-parented to the agent (PID 1, or a
//! child subreaper on the host). [`spawn`] does not wait for the helper itself: the
//! agent's reaper collects it (`waitpid(-1)`).
//!
//! The cgroup is joined *before* a new cgroup namespace is created, so that the
//! container's cgroup is the root of its cgroup namespace.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};
use rustix::io::Errno;
use rustix::net::SendFlags;
use rustix::process::{Pid, Signal};
use rustix::thread::{LinkNameSpaceType, UnshareFlags};
use serde::{Deserialize, Serialize};

use super::{setup, validate, validate_process, SpecError};

/// What the helper is to do; sent to it as JSON on fd 3.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SpawnPlan {
    pub container_id: String,
    pub kind: SpawnKind,
    /// The container's cgroup v2 directory, if any.
    pub cgroup: Option<PathBuf>,
    /// fds 0, 1, 2 are a pty's slave: the process gets it as its controlling terminal.
    pub terminal: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
// Made once per spawn and sent away as JSON: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
pub enum SpawnKind {
    /// A container's first process. `rootfs`: an absolute path, prepared by the agent.
    Init { spec: Spec, rootfs: PathBuf },
    /// Another process in the running container whose init is `init_pid`.
    Exec {
        init_pid: i32,
        process: Process,
        spec: Spec,
    },
}

/// The process's stdio (`/dev/null` where absent).
#[derive(Debug)]
pub struct ProcessStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// A created process.
#[derive(Debug)]
pub struct Spawned {
    /// Its pid, as the agent sees it.
    pub pid: i32,
    /// The sync socket, while an init process waits for `start`.
    sync: Option<Reports>,
}

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum ContainerError {
    /// {0}
    Spec(#[from] SpecError),
    /// serializing the spawn plan: {0}
    Plan(serde_json::Error),
    /// creating the helper's pipe or socket: {0}
    Channel(io::Error),
    /// starting the helper (/proc/self/exe {kind}): {source}
    Helper {
        kind: &'static str,
        source: io::Error,
    },
    /// {0}
    Failed(String),
    /// the helper ended without reporting {0} (it crashed or was killed)
    Vanished(&'static str),
    /// timed out after {secs} s waiting for {waiting_for}
    Timeout {
        secs: u64,
        waiting_for: &'static str,
    },
    /// the sync socket: {0}
    Sync(io::Error),
    /// an unreadable report on the sync socket: {0:?}
    BadReport(String),
}

/// How long the setup of a process may take, from the helper's start to its report of
/// readiness (and from `start` to the exec).
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
const PLAN_FD: RawFd = 3;
const SYNC_FD: RawFd = 4;
const HELPER_EXE: &str = "/proc/self/exe";

/// One line on the sync socket.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Report {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ready: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Starts the helper and waits until the process is ready (an exec'd one: until it has
/// exec'd), or failed (the error names what). Returns its pid as the agent sees it.
/// Blocks, at most [`SETUP_TIMEOUT`]; called from a request thread.
pub fn spawn(plan: &SpawnPlan, stdio: ProcessStdio) -> Result<Spawned, ContainerError> {
    let mut helper = None;
    launch(plan, stdio, &[], &mut helper)
    // `helper` is dropped without a wait: the agent's reaper collects it.
}

impl Spawned {
    /// Init only: lets the created process exec its program, and waits until it has (an
    /// exec failure comes back as the error). A no-op for an exec'd process.
    pub fn start(self) -> Result<(), ContainerError> {
        let Some(mut sync) = self.sync else {
            return Ok(());
        };
        sync.stream()
            .write_all(b"start\n")
            .map_err(ContainerError::Sync)?;
        sync.wait_exec(Instant::now() + SETUP_TIMEOUT, Some(self.pid))
    }
}

/// [`spawn`], with extra environment for the helper; the helper's `Child` goes to
/// `helper` (tests wait for it; the agent leaves it to the reaper).
fn launch(
    plan: &SpawnPlan,
    stdio: ProcessStdio,
    helper_env: &[(&str, &str)],
    helper: &mut Option<Child>,
) -> Result<Spawned, ContainerError> {
    let kind = match &plan.kind {
        SpawnKind::Init { spec, .. } => {
            validate(spec)?;
            "container-init"
        }
        SpawnKind::Exec { process, .. } => {
            validate_process(process)?;
            "container-exec"
        }
    };
    let json = serde_json::to_vec(plan).map_err(ContainerError::Plan)?;
    let (plan_read, plan_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| ContainerError::Channel(e.into()))?;
    let (ours, theirs) = UnixStream::pair().map_err(ContainerError::Channel)?;
    // Above the fds the helper's 3 and 4 are made from, so the dup2s cannot clobber
    // one another.
    let high = |fd: &OwnedFd| {
        rustix::io::fcntl_dupfd_cloexec(fd, SYNC_FD + 1)
            .map_err(|e| ContainerError::Channel(e.into()))
    };
    let plan_read = high(&plan_read)?;
    let theirs = high(&OwnedFd::from(theirs))?;
    let (plan_raw, sync_raw) = (plan_read.as_raw_fd(), theirs.as_raw_fd());

    let mut command = Command::new(HELPER_EXE);
    command
        .arg(kind)
        .stdin(Stdio::from(stdio.stdin))
        .stdout(Stdio::from(stdio.stdout))
        .stderr(Stdio::from(stdio.stderr))
        .envs(helper_env.iter().copied());
    // SAFETY: the closure runs in the forked child before exec and only calls dup2,
    // which is async-signal-safe; dup2 clears close-on-exec on the new fds.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(plan_raw, PLAN_FD) < 0 || libc::dup2(sync_raw, SYNC_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command
        .spawn()
        .map_err(|source| ContainerError::Helper { kind, source })?;
    let helper_pid = child.id();
    *helper = Some(child);
    drop(command);
    drop(plan_read);
    drop(theirs);

    // The helper reads the plan to EOF. If it died first, this fails (EPIPE) and the
    // reports below say why.
    let _ = File::from(plan_write).write_all(&json);

    let mut reports = Reports(BufReader::new(ours));
    let deadline = Instant::now() + SETUP_TIMEOUT;
    let mut pid = None;
    let mut ready = false;
    let result = loop {
        if ready && pid.is_some() {
            break Ok(());
        }
        let waiting_for = if ready {
            "the process's pid"
        } else {
            "the process to be ready"
        };
        match reports.next(deadline, waiting_for) {
            Ok(Some(report)) => {
                if let Some(error) = report.error {
                    break Err(ContainerError::Failed(error));
                }
                if report.pid.is_some() {
                    pid = report.pid;
                }
                ready |= report.ready == Some(true);
            }
            Ok(None) => break Err(ContainerError::Vanished(waiting_for)),
            Err(e) => break Err(e),
        }
    };
    let kill_on_error = |e: ContainerError, pid: Option<i32>| {
        if matches!(e, ContainerError::Timeout { .. }) {
            for target in [pid, i32::try_from(helper_pid).ok()].into_iter().flatten() {
                if let Some(target) = Pid::from_raw(target) {
                    let _ = rustix::process::kill_process(target, Signal::KILL);
                }
            }
        }
        e
    };
    if let Err(e) = result {
        return Err(kill_on_error(e, pid));
    }
    let pid = pid.unwrap_or_default();
    match plan.kind {
        SpawnKind::Init { .. } => Ok(Spawned {
            pid,
            sync: Some(reports),
        }),
        SpawnKind::Exec { .. } => {
            reports
                .wait_exec(deadline, Some(pid))
                .map_err(|e| kill_on_error(e, Some(pid)))?;
            Ok(Spawned { pid, sync: None })
        }
    }
}

/// The agent's end of the sync socket.
#[derive(Debug)]
struct Reports(BufReader<UnixStream>);

impl Reports {
    fn stream(&mut self) -> &mut UnixStream {
        self.0.get_mut()
    }

    /// The next report, `None` at EOF.
    fn next(
        &mut self,
        deadline: Instant,
        waiting_for: &'static str,
    ) -> Result<Option<Report>, ContainerError> {
        let timeout = ContainerError::Timeout {
            secs: SETUP_TIMEOUT.as_secs(),
            waiting_for,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timeout);
        }
        self.0
            .get_ref()
            .set_read_timeout(Some(left))
            .map_err(ContainerError::Sync)?;
        let mut line = String::new();
        match self.0.read_line(&mut line) {
            Ok(0) => Ok(None),
            Ok(_) => serde_json::from_str(line.trim_end())
                .map(Some)
                .map_err(|_| ContainerError::BadReport(line)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(timeout)
            }
            Err(e) => Err(ContainerError::Sync(e)),
        }
    }

    /// Waits for EOF (the process exec'd; its copy of the socket closed on exec) or an
    /// error report (the exec, or what came before it, failed).
    fn wait_exec(&mut self, deadline: Instant, pid: Option<i32>) -> Result<(), ContainerError> {
        loop {
            match self.next(deadline, "the process to exec") {
                Ok(None) => return Ok(()),
                Ok(Some(Report { error: Some(e), .. })) => return Err(ContainerError::Failed(e)),
                Ok(Some(_)) => {}
                Err(e) => {
                    if let Some(pid) = pid.and_then(Pid::from_raw) {
                        let _ = rustix::process::kill_process(pid, Signal::KILL);
                    }
                    return Err(e);
                }
            }
        }
    }
}

/// The helper's and the container child's end of the sync socket (fd 4).
pub struct SyncSocket(OwnedFd);

impl SyncSocket {
    fn send(&self, report: &Report) -> io::Result<()> {
        let mut line = serde_json::to_vec(report).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut left = &line[..];
        while !left.is_empty() {
            // MSG_NOSIGNAL: a closed agent end is an error here, not a SIGPIPE.
            match rustix::net::send(&self.0, left, SendFlags::NOSIGNAL) {
                Ok(n) => left = &left[n..],
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// `{"ready": true}`.
    pub fn ready(&self) -> io::Result<()> {
        self.send(&Report {
            ready: Some(true),
            ..Report::default()
        })
    }

    fn pid(&self, pid: i32) -> io::Result<()> {
        self.send(&Report {
            pid: Some(pid),
            ..Report::default()
        })
    }

    /// `{"error": message}`; if even that fails, the message goes to stderr (the
    /// process's stream) as a last resort.
    fn error(&self, message: &str) {
        let report = Report {
            error: Some(message.to_owned()),
            ..Report::default()
        };
        if self.send(&report).is_err() {
            eprintln!("husk-agent: container setup failed: {message}");
        }
    }

    /// Waits for the agent's `start` line: true for `start`, false at EOF (the agent
    /// dropped the process before starting it).
    pub fn wait_start(&self) -> io::Result<bool> {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match rustix::io::read(&self.0, &mut byte) {
                Ok(0) => return Ok(false),
                Ok(_) if byte[0] == b'\n' => return Ok(line == b"start"),
                Ok(_) => line.push(byte[0]),
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Errors of the helper itself (before its child takes over).
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum HelperError {
    /// unknown helper kind {0:?} (container-init or container-exec)
    UnknownKind(String),
    /// reading the spawn plan from fd 3: {0}
    ReadPlan(io::Error),
    /// parsing the spawn plan: {0}
    ParsePlan(serde_json::Error),
    /// {0}: the plan is not for this kind of helper
    KindMismatch(&'static str),
    /// {0}
    Spec(#[from] SpecError),
    /// joining cgroup {path}: {source}
    Cgroup { path: String, source: io::Error },
    /// linux.namespaces: opening {path}: {source}
    OpenNamespace { path: String, source: Errno },
    /// linux.namespaces: joining the {kind} namespace {path}: {source}
    JoinNamespace {
        kind: String,
        path: String,
        source: Errno,
    },
    /// linux.namespaces: creating new {kinds} namespaces: {source}
    Unshare { kinds: String, source: Errno },
    /// the container's init process {0} is gone
    InitGone(i32),
    /// fork: {0}
    Fork(io::Error),
    /// reporting the pid on the sync socket: {0}
    ReportPid(io::Error),
}

/// The helper side: `husk-agent container-init|container-exec` land here (from `main`,
/// before anything else happens in the process). Never returns on success in the child
/// (it execs); in the helper, returns its exit code: 0 once the child is forked and its
/// pid reported, non-zero after a failure (reported on the sync socket).
pub fn helper_main(kind: &str) -> i32 {
    // SAFETY: fcntl(F_GETFD) only inspects the fd table.
    let open = |fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
    if !open(PLAN_FD) || !open(SYNC_FD) {
        eprintln!(
            "husk-agent {kind}: fds 3 (plan) and 4 (sync socket) are not open: this subcommand \
             is started by the agent itself"
        );
        return 2;
    }
    // SAFETY: fds 3 and 4 were handed to this fresh process by `spawn` (the calling
    // convention of these subcommands) and are open (checked above); nothing else in the
    // process owns them.
    let (plan_fd, sync_fd) =
        unsafe { (OwnedFd::from_raw_fd(PLAN_FD), OwnedFd::from_raw_fd(SYNC_FD)) };
    // Nothing the agent left open (nor the sync socket) may reach the container's program.
    close_on_exec_from(PLAN_FD);
    let sync = SyncSocket(sync_fd);
    match helper(kind, plan_fd, &sync) {
        Ok(()) => 0,
        Err(e) => {
            sync.error(&e.to_string());
            1
        }
    }
}

/// Marks every fd from `first` on close-on-exec: `close_range(CLOSE_RANGE_CLOEXEC)`
/// (Linux 5.11), else one `fcntl` per fd listed in `/proc/self/fd`.
fn close_on_exec_from(first: RawFd) {
    let first = first as libc::c_uint;
    // SAFETY: only sets a flag on fds; nothing is closed now, no owner is invalidated.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        return;
    }
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd: &RawFd| *fd >= first as RawFd)
        .collect();
    for fd in fds {
        // SAFETY: as above; an fd that is gone (the directory's own) just fails.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

fn helper(kind: &str, plan_fd: OwnedFd, sync: &SyncSocket) -> Result<(), HelperError> {
    let kind: &'static str = match kind {
        "container-init" => "container-init",
        "container-exec" => "container-exec",
        other => return Err(HelperError::UnknownKind(other.to_owned())),
    };
    let mut json = Vec::new();
    File::from(plan_fd)
        .read_to_end(&mut json)
        .map_err(HelperError::ReadPlan)?;
    let plan: SpawnPlan = serde_json::from_slice(&json).map_err(HelperError::ParsePlan)?;
    let cgroup = plan.cgroup.as_deref();
    let pid = match (kind, &plan.kind) {
        ("container-init", SpawnKind::Init { spec, rootfs }) => {
            validate(spec)?;
            init_namespaces(spec, cgroup)?;
            fork_child(sync, || {
                setup::container_init(spec, rootfs, plan.terminal, sync)
            })?
        }
        (
            "container-exec",
            SpawnKind::Exec {
                init_pid,
                process,
                spec,
            },
        ) => {
            validate_process(process)?;
            exec_namespaces(*init_pid, cgroup)?;
            fork_child(sync, || {
                setup::container_exec(process, spec, plan.terminal, sync)
            })?
        }
        _ => return Err(HelperError::KindMismatch(kind)),
    };
    sync.pid(pid).map_err(HelperError::ReportPid)
}

/// Forks; the child runs `child` (which only returns on failure), reports its error and
/// exits 127. Returns the child's pid.
fn fork_child(
    sync: &SyncSocket,
    child: impl FnOnce() -> setup::SetupError,
) -> Result<i32, HelperError> {
    // SAFETY: the helper is single-threaded (a fresh exec of the agent's binary that
    // starts no threads), so the child may do anything the parent could.
    match unsafe { libc::fork() } {
        -1 => Err(HelperError::Fork(io::Error::last_os_error())),
        0 => {
            let error = child();
            sync.error(&error.to_string());
            std::process::exit(127)
        }
        pid => Ok(pid),
    }
}

fn join_cgroup(cgroup: &Path) -> Result<(), HelperError> {
    std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string()).map_err(|source| {
        HelperError::Cgroup {
            path: cgroup.display().to_string(),
            source,
        }
    })
}

fn unshare_flag(typ: LinuxNamespaceType) -> UnshareFlags {
    match typ {
        LinuxNamespaceType::Mount => UnshareFlags::NEWNS,
        LinuxNamespaceType::Cgroup => UnshareFlags::NEWCGROUP,
        LinuxNamespaceType::Uts => UnshareFlags::NEWUTS,
        LinuxNamespaceType::Ipc => UnshareFlags::NEWIPC,
        LinuxNamespaceType::User => UnshareFlags::NEWUSER,
        LinuxNamespaceType::Pid => UnshareFlags::NEWPID,
        LinuxNamespaceType::Network => UnshareFlags::NEWNET,
        LinuxNamespaceType::Time => UnshareFlags::NEWTIME,
    }
}

fn link_type(typ: LinuxNamespaceType) -> LinkNameSpaceType {
    match typ {
        LinuxNamespaceType::Mount => LinkNameSpaceType::Mount,
        LinuxNamespaceType::Cgroup => LinkNameSpaceType::ControlGroup,
        LinuxNamespaceType::Uts => LinkNameSpaceType::HostNameAndNISDomainName,
        LinuxNamespaceType::Ipc => LinkNameSpaceType::InterProcessCommunication,
        LinuxNamespaceType::User => LinkNameSpaceType::User,
        LinuxNamespaceType::Pid => LinkNameSpaceType::ProcessID,
        LinuxNamespaceType::Network => LinkNameSpaceType::Network,
        LinuxNamespaceType::Time => LinkNameSpaceType::Time,
    }
}

fn unshare(flags: UnshareFlags) -> Result<(), HelperError> {
    // SAFETY: unshare is unsafe because it can split the fd table (CLONE_FILES) from
    // other threads' view; the flags never include CLONE_FILES, and the helper is
    // single-threaded anyway.
    unsafe { rustix::thread::unshare_unsafe(flags) }.map_err(|source| HelperError::Unshare {
        kinds: format!("{flags:?}"),
        source,
    })
}

/// `container-init`: cgroup, then the namespaces given by path (mount last, as it changes
/// what paths mean), then new ones; a new mount namespace always.
fn init_namespaces(spec: &Spec, cgroup: Option<&Path>) -> Result<(), HelperError> {
    if let Some(cgroup) = cgroup {
        join_cgroup(cgroup)?;
    }
    let mut fresh = UnshareFlags::NEWNS;
    let mut new_pid = false;
    let mut joins = Vec::new();
    let namespaces = spec.linux().as_ref().and_then(|l| l.namespaces().as_ref());
    for ns in namespaces.into_iter().flatten() {
        let typ = ns.typ();
        match ns.path() {
            Some(path) => {
                let fd = rustix::fs::open(
                    path,
                    rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
                .map_err(|source| HelperError::OpenNamespace {
                    path: path.display().to_string(),
                    source,
                })?;
                joins.push((typ, path.display().to_string(), fd));
            }
            None if typ == LinuxNamespaceType::Pid => new_pid = true,
            None => fresh |= unshare_flag(typ),
        }
    }
    joins.sort_by_key(|(typ, _, _)| *typ == LinuxNamespaceType::Mount);
    for (typ, path, fd) in &joins {
        rustix::thread::move_into_link_name_space(fd.as_fd(), Some(link_type(*typ))).map_err(
            |source| HelperError::JoinNamespace {
                kind: typ.to_string(),
                path: path.clone(),
                source,
            },
        )?;
    }
    unshare(fresh)?;
    if new_pid {
        unshare(UnshareFlags::NEWPID)?;
    }
    Ok(())
}

/// `container-exec`: the cgroup, then every namespace of the init process that differs
/// from the helper's own (mount last).
fn exec_namespaces(init_pid: i32, cgroup: Option<&Path>) -> Result<(), HelperError> {
    if let Some(cgroup) = cgroup {
        join_cgroup(cgroup)?;
    }
    const KINDS: [(&str, LinkNameSpaceType); 6] = [
        ("ipc", LinkNameSpaceType::InterProcessCommunication),
        ("uts", LinkNameSpaceType::HostNameAndNISDomainName),
        ("net", LinkNameSpaceType::Network),
        ("pid", LinkNameSpaceType::ProcessID),
        ("cgroup", LinkNameSpaceType::ControlGroup),
        ("mnt", LinkNameSpaceType::Mount),
    ];
    let mut joins = Vec::new();
    for (name, typ) in KINDS {
        let path = format!("/proc/{init_pid}/ns/{name}");
        let fd = match rustix::fs::open(
            path.as_str(),
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) | Err(Errno::SRCH) => return Err(HelperError::InitGone(init_pid)),
            Err(source) => return Err(HelperError::OpenNamespace { path, source }),
        };
        let theirs = rustix::fs::fstat(&fd);
        let ours = rustix::fs::stat(format!("/proc/self/ns/{name}").as_str());
        let same = matches!((theirs, ours), (Ok(a), Ok(b)) if a.st_ino == b.st_ino && a.st_dev == b.st_dev);
        if !same {
            joins.push((name, typ, path, fd));
        }
    }
    for (name, typ, path, fd) in &joins {
        rustix::thread::move_into_link_name_space(fd.as_fd(), Some(*typ)).map_err(|source| {
            HelperError::JoinNamespace {
                kind: (*name).to_owned(),
                path: path.clone(),
                source,
            }
        })?;
    }
    Ok(())
}

/// `husk-agent container-run BUNDLE`: runs the container of `BUNDLE/config.json` in the
/// foreground with this process's stdio (never as its terminal), without a cgroup, the
/// way the agent would create and start it, and returns its exit status (128 + the
/// signal if killed). For manual testing and benchmarks; the agent does not use it.
pub fn run_bundle(bundle: &Path) -> i32 {
    run_bundle_with(bundle, &[])
}

fn run_bundle_with(bundle: &Path, helper_env: &[(&str, &str)]) -> i32 {
    match run_bundle_inner(bundle, helper_env) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("husk-agent container-run: {message}");
            125
        }
    }
}

fn run_bundle_inner(bundle: &Path, helper_env: &[(&str, &str)]) -> Result<i32, String> {
    let config = bundle.join("config.json");
    let json = std::fs::read(&config).map_err(|e| format!("{}: {e}", config.display()))?;
    let spec: Spec =
        serde_json::from_slice(&json).map_err(|e| format!("{}: {e}", config.display()))?;
    let root = spec
        .root()
        .as_ref()
        .map(|r| bundle.join(r.path()))
        .ok_or("root.path: missing")?;
    let rootfs =
        std::fs::canonicalize(&root).map_err(|e| format!("rootfs {}: {e}", root.display()))?;
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .map_err(|e| format!("PR_SET_CHILD_SUBREAPER: {e}"))?;
    let dup =
        |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned().map_err(|e| format!("dup: {e}"));
    let stdio = ProcessStdio {
        stdin: dup(io::stdin().as_fd())?,
        stdout: dup(io::stdout().as_fd())?,
        stderr: dup(io::stderr().as_fd())?,
    };
    let plan = SpawnPlan {
        container_id: bundle
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        kind: SpawnKind::Init { spec, rootfs },
        cgroup: None,
        terminal: false,
    };
    let mut helper = None;
    let spawned = launch(&plan, stdio, helper_env, &mut helper);
    if let Some(mut helper) = helper {
        let _ = helper.wait();
    }
    let spawned = spawned.map_err(|e| e.to_string())?;
    let pid = spawned.pid;
    spawned.start().map_err(|e| e.to_string())?;
    wait_exit(pid)
}

/// Waits for `pid` and turns its status into an exit code.
fn wait_exit(pid: i32) -> Result<i32, String> {
    let target = Pid::from_raw(pid).ok_or_else(|| format!("bad pid {pid}"))?;
    loop {
        match rustix::process::waitpid(Some(target), rustix::process::WaitOptions::empty()) {
            Ok(Some((_, status))) => {
                if let Some(code) = status.exit_status() {
                    return Ok(code);
                }
                if let Some(signal) = status.terminating_signal() {
                    return Ok(128 + signal);
                }
            }
            Ok(None) | Err(Errno::INTR) => {}
            Err(e) => return Err(format!("waitpid {pid}: {e}")),
        }
    }
}

/// In the test binary, the environment variable `HUSK_TEST_HELPER` turns the process into
/// the helper before `main` (and libtest) even start, exactly as `husk-agent
/// container-init` would be: a fresh single-threaded process with fds 3 and 4.
/// `HUSK_TEST_HELPER=container-run HUSK_TEST_BUNDLE=DIR` runs a bundle by hand.
#[cfg(test)]
mod hook {
    pub const ENV: &str = "HUSK_TEST_HELPER";

    #[used]
    #[link_section = ".init_array"]
    static HOOK: extern "C" fn() = run;

    extern "C" fn run() {
        let Ok(kind) = std::env::var(ENV) else {
            return;
        };
        let code = if kind == "container-run" {
            let bundle = std::env::var_os("HUSK_TEST_BUNDLE").unwrap_or_default();
            super::run_bundle_with(std::path::Path::new(&bundle), &[(ENV, "container-init")])
        } else {
            super::helper_main(&kind)
        };
        std::process::exit(code);
    }
}

/// End-to-end: real containers from a busybox rootfs, through the real helper (the test
/// binary re-exec'd, see `hook`), in their own namespaces. Each container's mounts live in
/// its own mount namespace, which disappears with it; the tests check that nothing shows
/// up in the test process's mount table. They need root and Debian's busybox-static
/// (`/bin/busybox`), and say so and pass when either is missing.
#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Once;

    use husk_tests::rootfs::{build_busybox_tree, BUSYBOX};

    fn can_run(test: &str) -> bool {
        // Not a skip: a test that cannot run here fails and says why.
        assert!(
            rustix::process::geteuid().is_root(),
            "{test}: cannot run: needs root"
        );
        assert!(
            Path::new(BUSYBOX).exists(),
            "{test}: cannot run: needs {BUSYBOX} (apt-get install busybox-static)"
        );
        static SUBREAPER: Once = Once::new();
        // Container processes outlive their helper; the test process must inherit them.
        SUBREAPER.call_once(|| {
            let _ = rustix::process::set_child_subreaper(Some(rustix::process::getpid()));
        });
        true
    }

    /// A bundle directory with a writable busybox rootfs (the tests' shared one, plus
    /// files these tests need); removed on drop.
    struct Bundle {
        dir: PathBuf,
        rootfs: PathBuf,
    }

    impl Bundle {
        fn new(tag: &str) -> io::Result<Bundle> {
            let dir = std::env::temp_dir().join(format!("husk-spawn-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let rootfs = dir.join("rootfs");
            build_busybox_tree(&rootfs).map_err(|e| io::Error::other(e.0))?;
            for sub in ["mnt", "secret-dir", "rodir"] {
                std::fs::create_dir_all(rootfs.join(sub))?;
            }
            std::fs::write(rootfs.join("secret-file"), "secret\n")?;
            std::fs::write(rootfs.join("secret-dir/inner"), "inner\n")?;
            std::fs::write(rootfs.join("etc/not-exec"), "data\n")?;
            // A hostile image: a mount destination through this must not reach the host's /etc.
            std::os::unix::fs::symlink("/etc", rootfs.join("mnt/evil"))?;
            std::os::unix::fs::symlink("../../../../../../../etc", rootfs.join("mnt/up"))?;
            Ok(Bundle { dir, rootfs })
        }
    }

    impl Drop for Bundle {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// A runc-style default spec running `args`.
    fn base_spec(args: &[&str]) -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs", "readonly": false},
            "hostname": "husk-test",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
                "cwd": "/",
                "capabilities": {
                    "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_SETUID", "CAP_SETGID"],
                    "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_SETUID", "CAP_SETGID"],
                    "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_SETUID", "CAP_SETGID"]
                },
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1000}],
                "noNewPrivileges": true
            },
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
                {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "size=1m"]}
            ],
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
                "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware", "/secret-file", "/secret-dir", "/does/not/exist"],
                "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger", "/rodir"]
            }
        })
    }

    #[derive(Debug)]
    struct Output {
        code: i32,
        stdout: String,
        stderr: String,
    }

    fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| e.to_string())
    }

    fn collect(fd: OwnedFd) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = File::from(fd).read_to_string(&mut text);
            text
        })
    }

    fn dev_null() -> Result<OwnedFd, String> {
        File::open("/dev/null")
            .map(OwnedFd::from)
            .map_err(|e| e.to_string())
    }

    /// A process's output, being collected.
    struct Collected {
        stdout: std::thread::JoinHandle<String>,
        stderr: std::thread::JoinHandle<String>,
    }

    impl Collected {
        fn wait(self, pid: i32) -> Result<Output, String> {
            let code = wait_exit(pid)?;
            let stdout = self.stdout.join().map_err(|_| "stdout reader panicked")?;
            let stderr = self.stderr.join().map_err(|_| "stderr reader panicked")?;
            Ok(Output {
                code,
                stdout,
                stderr,
            })
        }
    }

    /// A created process (an init one not started yet).
    struct Running {
        spawned: Spawned,
        output: Collected,
    }

    impl Running {
        fn finish(self) -> Result<Output, String> {
            let pid = self.spawned.pid;
            self.spawned.start().map_err(|e| e.to_string())?;
            self.output.wait(pid)
        }
    }

    fn create(plan: &SpawnPlan) -> Result<Running, String> {
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let stdio = ProcessStdio {
            stdin: dev_null()?,
            stdout: out_w,
            stderr: err_w,
        };
        let mut helper = None;
        let kind = match plan.kind {
            SpawnKind::Init { .. } => "container-init",
            SpawnKind::Exec { .. } => "container-exec",
        };
        let spawned = launch(plan, stdio, &[(hook::ENV, kind)], &mut helper);
        if let Some(mut helper) = helper {
            let _ = helper.wait();
        }
        let spawned = spawned.map_err(|e| e.to_string())?;
        Ok(Running {
            spawned,
            output: Collected {
                stdout: collect(out_r),
                stderr: collect(err_r),
            },
        })
    }

    fn init_plan(bundle: &Bundle, spec: serde_json::Value) -> Result<SpawnPlan, String> {
        let spec: Spec = serde_json::from_value(spec).map_err(|e| e.to_string())?;
        Ok(SpawnPlan {
            container_id: "test".to_owned(),
            kind: SpawnKind::Init {
                spec,
                rootfs: bundle.rootfs.clone(),
            },
            cgroup: None,
            terminal: false,
        })
    }

    /// Runs a container to its end, then checks nothing of it stayed mounted here.
    fn run(bundle: &Bundle, spec: serde_json::Value) -> Result<Output, String> {
        let output = create(&init_plan(bundle, spec)?)?.finish();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
        assert!(
            !mounts.contains(&bundle.dir.display().to_string()),
            "a container mount leaked into the test's mount namespace"
        );
        output
    }

    fn script(text: &str) -> serde_json::Value {
        base_spec(&["sh", "-c", text])
    }

    #[test]
    fn echo_and_exit_codes() -> Result<(), String> {
        if !can_run("echo_and_exit_codes") {
            return Ok(());
        }
        let bundle = Bundle::new("echo").map_err(|e| e.to_string())?;
        let out = run(&bundle, base_spec(&["echo", "hello", "world"]))?;
        assert_eq!(
            (out.code, out.stdout.as_str(), out.stderr.as_str()),
            (0, "hello world\n", "")
        );
        let out = run(&bundle, script("echo out; echo err >&2; exit 3"))?;
        assert_eq!(
            (out.code, out.stdout.as_str(), out.stderr.as_str()),
            (3, "out\n", "err\n")
        );
        // Only fds 0, 1, 2 reach the program, even if the agent leaked one (`ls` itself
        // has the directory open as fd 3).
        let leaked = rustix::io::dup(io::stdin().as_fd()).map_err(|e| e.to_string())?;
        let out = run(&bundle, base_spec(&["ls", "/proc/self/fd"]));
        drop(leaked);
        let out = out?;
        assert_eq!(out.stdout, "0\n1\n2\n3\n", "{out:?}");
        let out = run(&bundle, script("kill -TERM $$; echo survived"))?;
        // PID 1 of a PID namespace ignores signals it has no handler for, even from itself.
        assert_eq!(
            (out.code, out.stdout.as_str()),
            (0, "survived\n"),
            "{out:?}"
        );
        let out = run(&bundle, script("sleep 5 & kill -KILL $!; wait $!; echo $?"))?;
        assert_eq!(out.stdout, "137\n");
        Ok(())
    }

    #[test]
    fn pid_hostname_mounts_env_and_dev() -> Result<(), String> {
        if !can_run("pid_hostname_mounts_env_and_dev") {
            return Ok(());
        }
        let bundle = Bundle::new("env").map_err(|e| e.to_string())?;
        let mut spec = script(
            "echo pid=$$; hostname; pwd; echo foo=$FOO home=$HOME; ulimit -n; ulimit -Hn; \
             cat /proc/sys/kernel/domainname; \
             echo forward=$(cat /proc/sys/net/ipv4/ip_forward); \
             grep -E ' / | /proc | /tmp | /dev | /dev/pts | /dev/shm | /dev/mqueue | /sys ' /proc/self/mountinfo | \
               while read -r a b c d mp opts rest; do echo \"mnt $mp $opts ${rest#*- }\"; done; \
             for d in null zero full random urandom tty; do test -c /dev/$d && echo dev-$d; done; \
             readlink /dev/ptmx; readlink /dev/fd; readlink /dev/stdin; \
             echo x > /dev/null && echo null-writable; \
             ls /sys/fs >/dev/null && echo sys-ok; touch /sys/x 2>/dev/null || echo sys-ro; \
             echo data > /tmp/f && cat /tmp/f; umask; \
             stat -c '%n %F %a %u %g %t,%T' /dev/husk-null /dev/sub/fifo",
        );
        spec["linux"]["devices"] = serde_json::json!([
            {"path": "/dev/husk-null", "type": "c", "major": 1, "minor": 3, "fileMode": 0o640, "uid": 1000, "gid": 1000},
            {"path": "/dev/sub/fifo", "type": "p"}
        ]);
        spec["process"]["cwd"] = "/tmp/new/dir".into();
        spec["process"]["env"] = serde_json::json!(["PATH=/bin", "FOO=bar baz"]);
        spec["domainname"] = "husk.example".into();
        spec["linux"]["sysctl"] = serde_json::json!({"net.ipv4.ip_forward": "1"});
        let out = run(&bundle, spec)?;
        assert_eq!(out.code, 0, "{out:?}");
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(
            &lines[..8],
            [
                "pid=1",
                "husk-test",
                "/tmp/new/dir",
                "foo=bar baz home=/root",
                "1000",
                "1024",
                "husk.example",
                "forward=1",
            ],
            "{out:?}"
        );
        for expected in [
            "mnt /proc rw,relatime proc proc rw",
            "mnt /dev rw,nosuid tmpfs tmpfs rw,size=65536k,mode=755",
            "mnt /dev/pts rw,nosuid,noexec,relatime devpts devpts rw,gid=5,mode=620,ptmxmode=666",
            "mnt /dev/shm rw,nosuid,nodev,noexec,relatime tmpfs shm rw,size=65536k",
            "mnt /dev/mqueue rw,nosuid,nodev,noexec,relatime mqueue mqueue rw",
            "mnt /sys ro,nosuid,nodev,noexec,relatime sysfs sysfs ro",
            "mnt /tmp rw,nosuid,nodev,relatime tmpfs tmpfs rw,size=1024k",
            "dev-null",
            "dev-zero",
            "dev-full",
            "dev-random",
            "dev-urandom",
            "dev-tty",
            "pts/ptmx",
            "/proc/self/fd",
            "/proc/self/fd/0",
            "null-writable",
            "sys-ok",
            "sys-ro",
            "data",
            "0022",
            "/dev/husk-null character special file 640 1000 1000 1,3",
            "/dev/sub/fifo fifo 666 0 0 0,0",
        ] {
            assert!(
                lines.iter().any(|l| l.starts_with(expected)),
                "no line starting with {expected:?} in {out:?}"
            );
        }
        assert!(lines.iter().any(|l| l.starts_with("mnt / ")), "{out:?}");
        Ok(())
    }

    #[test]
    fn unprivileged_user_and_capabilities() -> Result<(), String> {
        if !can_run("unprivileged_user_and_capabilities") {
            return Ok(());
        }
        let bundle = Bundle::new("user").map_err(|e| e.to_string())?;
        let mut spec = script(
            "id -u; id -g; id -G; echo x > /etc/root-only || echo denied; cat /etc/root-only; \
             grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs)' /proc/self/status",
        );
        spec["process"]["user"] =
            serde_json::json!({"uid": 1000, "gid": 1000, "additionalGids": [2000, 3000]});
        let net_bind = serde_json::json!(["CAP_NET_BIND_SERVICE"]);
        spec["process"]["capabilities"] = serde_json::json!({
            "bounding": ["CAP_NET_BIND_SERVICE", "CAP_KILL"], "effective": net_bind,
            "permitted": net_bind, "inheritable": net_bind, "ambient": net_bind
        });
        let out = run(&bundle, spec)?;
        assert_eq!(out.code, 0, "{out:?}");
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(
            lines,
            [
                "1000",
                "1000",
                "1000 2000 3000",
                "denied",
                "root's",
                "CapInh:\t0000000000000400",
                "CapPrm:\t0000000000000400",
                "CapEff:\t0000000000000400",
                "CapBnd:\t0000000000000420",
                "CapAmb:\t0000000000000400",
                "NoNewPrivs:\t1",
            ],
            "{out:?}"
        );
        assert!(out.stderr.contains("Permission denied"), "{out:?}");

        // Root with a small bounding set and no_new_privs off.
        let mut spec = script("grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status");
        spec["process"]["noNewPrivileges"] = false.into();
        spec["process"]["capabilities"] = serde_json::json!({"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]});
        let out = run(&bundle, spec)?;
        assert_eq!(
            out.stdout, "CapEff:\t0000000000000020\nCapBnd:\t0000000000000020\nNoNewPrivs:\t0\n",
            "{out:?}"
        );
        Ok(())
    }

    #[test]
    fn masked_readonly_paths_and_readonly_root() -> Result<(), String> {
        if !can_run("masked_readonly_paths_and_readonly_root") {
            return Ok(());
        }
        let bundle = Bundle::new("mask").map_err(|e| e.to_string())?;
        let check = "echo file=$(cat /secret-file); echo dir=$(ls /secret-dir); \
             touch /secret-dir/x 2>/dev/null || echo dir-ro; \
             echo 1 > /proc/sys/kernel/ns_last_pid 2>/dev/null || echo sys-ro; \
             touch /rodir/x 2>/dev/null || echo rodir-ro; \
             touch /newfile 2>/dev/null && echo root-rw || echo root-ro; \
             touch /tmp/x && echo tmp-rw";
        let out = run(&bundle, script(check))?;
        assert_eq!(
            out.stdout, "file=\ndir=\ndir-ro\nsys-ro\nrodir-ro\nroot-rw\ntmp-rw\n",
            "{out:?}"
        );
        let mut spec = script(check);
        spec["root"]["readonly"] = true.into();
        let out = run(&bundle, spec)?;
        assert!(out.stdout.contains("root-ro\ntmp-rw\n"), "{out:?}");
        // The image itself is untouched.
        let secret = std::fs::read_to_string(bundle.rootfs.join("secret-file"))
            .map_err(|e| e.to_string())?;
        assert_eq!(secret, "secret\n");
        Ok(())
    }

    #[test]
    fn mount_destinations_cannot_escape_the_rootfs() -> Result<(), String> {
        if !can_run("mount_destinations_cannot_escape_the_rootfs") {
            return Ok(());
        }
        let bundle = Bundle::new("escape").map_err(|e| e.to_string())?;
        let name = format!("husk-escape-{}", std::process::id());
        let source = bundle.dir.join("volume");
        std::fs::create_dir_all(&source).map_err(|e| e.to_string())?;
        std::fs::write(source.join("marker"), "from the volume\n").map_err(|e| e.to_string())?;
        let mut spec = script(&format!(
            "grep -o ' /etc/{name}[^ ]* ' /proc/self/mountinfo; cat /etc/{name}-bind/marker; \
             touch /etc/{name}-bind/x 2>/dev/null || echo bind-ro"
        ));
        let mounts = spec["mounts"].as_array_mut().ok_or("no mounts")?;
        mounts.push(serde_json::json!({
            "destination": format!("/mnt/evil/{name}"), "type": "tmpfs", "source": "tmpfs"
        }));
        mounts.push(serde_json::json!({
            "destination": format!("/mnt/up/{name}-bind"), "type": "bind",
            "source": source, "options": ["rbind", "ro"]
        }));
        let out = run(&bundle, spec)?;
        assert_eq!(
            out.stdout,
            format!(" /etc/{name} \n /etc/{name}-bind \nfrom the volume\nbind-ro\n"),
            "{out:?}"
        );
        for leaked in [format!("/etc/{name}"), format!("/etc/{name}-bind")] {
            assert!(
                !Path::new(&leaked).exists(),
                "{leaked} was created on the host"
            );
        }
        assert!(bundle.rootfs.join("etc").join(&name).is_dir());
        Ok(())
    }

    #[test]
    fn missing_or_unusable_executable_is_named() -> Result<(), String> {
        if !can_run("missing_or_unusable_executable_is_named") {
            return Ok(());
        }
        let bundle = Bundle::new("noexec").map_err(|e| e.to_string())?;
        let error = create(&init_plan(&bundle, base_spec(&["no-such-program"]))?).err();
        assert_eq!(
            error.as_deref(),
            Some(
                "executable file not found: no-such-program (process.args[0], looked up in \
                 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)"
            )
        );
        let error = create(&init_plan(&bundle, base_spec(&["/etc/not-exec"]))?).err();
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.starts_with("executable file not executable: /etc/not-exec")),
            "{error:?}"
        );
        // Bad input is refused before any process exists.
        let mut spec = base_spec(&["true"]);
        spec["mounts"][0]["destination"] = "proc".into();
        let error = create(&init_plan(&bundle, spec)?).err();
        assert_eq!(
            error.as_deref(),
            Some("mounts[0].destination \"proc\": not an absolute path")
        );
        // A failure deep in the setup names what failed.
        let mut spec = base_spec(&["true"]);
        spec["process"]["cwd"] = "/etc/passwd".into();
        let error = create(&init_plan(&bundle, spec)?).err();
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.starts_with("process.cwd /etc/passwd: ")),
            "{error:?}"
        );
        Ok(())
    }

    #[test]
    fn exec_joins_a_running_container() -> Result<(), String> {
        if !can_run("exec_joins_a_running_container") {
            return Ok(());
        }
        let bundle = Bundle::new("exec").map_err(|e| e.to_string())?;
        let init_spec = base_spec(&["sleep", "30"]);
        let init_plan = init_plan(&bundle, init_spec.clone())?;
        let init = create(&init_plan)?;
        let init_pid = init.spawned.pid;
        let Running {
            spawned,
            output: init_output,
        } = init;
        spawned.start().map_err(|e| e.to_string())?;

        let mut process = init_spec["process"].clone();
        process["args"] = serde_json::json!([
            "sh",
            "-c",
            "echo pid=$$; cat /proc/1/cmdline | tr '\\0' ' '; echo; hostname; id -u; pwd; exit 7"
        ]);
        process["user"] = serde_json::json!({"uid": 1000, "gid": 1000});
        process["cwd"] = "/tmp".into();
        let spec: Spec = serde_json::from_value(init_spec).map_err(|e| e.to_string())?;
        let exec_plan = SpawnPlan {
            container_id: "test".to_owned(),
            kind: SpawnKind::Exec {
                init_pid,
                process: serde_json::from_value(process).map_err(|e| e.to_string())?,
                spec,
            },
            cgroup: None,
            terminal: false,
        };
        // The exec'd process must end before the init: the init's death kills the
        // whole PID namespace.
        let out = create(&exec_plan).and_then(|exec| exec.output.wait(exec.spawned.pid));
        let _ = rustix::process::kill_process(Pid::from_raw(init_pid).ok_or("pid")?, Signal::KILL);
        let init_out = init_output.wait(init_pid)?;
        assert_eq!(init_out.code, 128 + 9);
        let out = out?;
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(out.code, 7, "{out:?}");
        assert!(
            lines.len() == 5 && lines[0] != "pid=1" && lines[0].starts_with("pid="),
            "{out:?}"
        );
        assert_eq!(
            &lines[1..],
            ["sleep 30 ", "husk-test", "1000", "/tmp"],
            "{out:?}"
        );
        Ok(())
    }

    #[test]
    fn terminal_becomes_the_controlling_tty() -> Result<(), String> {
        if !can_run("terminal_becomes_the_controlling_tty") {
            return Ok(());
        }
        let bundle = Bundle::new("tty").map_err(|e| e.to_string())?;
        use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
            .map_err(|e| e.to_string())?;
        grantpt(&master).map_err(|e| e.to_string())?;
        unlockpt(&master).map_err(|e| e.to_string())?;
        let name = ptsname(&master, Vec::new()).map_err(|e| e.to_string())?;
        let slave = rustix::fs::open(
            name.as_c_str(),
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| e.to_string())?;
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| e.to_string());
        let stdio = ProcessStdio {
            stdin: dup(&slave)?,
            stdout: dup(&slave)?,
            stderr: slave,
        };
        let mut plan = init_plan(
            &bundle,
            script("test -t 0 && echo is-a-tty; echo hi > /dev/tty && echo ctty"),
        )?;
        plan.terminal = true;
        let mut helper = None;
        let spawned = launch(&plan, stdio, &[(hook::ENV, "container-init")], &mut helper);
        if let Some(mut helper) = helper {
            let _ = helper.wait();
        }
        let spawned = spawned.map_err(|e| e.to_string())?;
        let pid = spawned.pid;
        spawned.start().map_err(|e| e.to_string())?;
        let reader = collect(master);
        let code = wait_exit(pid)?;
        let text = reader.join().map_err(|_| "reader panicked")?;
        assert_eq!((code, text.as_str()), (0, "is-a-tty\r\nhi\r\nctty\r\n"));
        Ok(())
    }

    /// The spec's seccomp profile applies to the program, with `no_new_privs` as the spec
    /// says: installed right before exec (no_new_privs, or CAP_SYS_ADMIN kept), or before
    /// the capabilities are dropped (neither).
    #[test]
    fn seccomp_profile_applies() -> Result<(), String> {
        if !can_run("seccomp_profile_applies") {
            return Ok(());
        }
        let bundle = Bundle::new("seccomp").map_err(|e| e.to_string())?;
        let check = "mkdir /tmp/d 2>&1; grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status";
        for (no_new_privs, sys_admin) in [(true, false), (false, false), (false, true)] {
            let mut spec = script(check);
            spec["linux"]["seccomp"] = serde_json::json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
            });
            spec["process"]["noNewPrivileges"] = no_new_privs.into();
            if sys_admin {
                for set in ["bounding", "effective", "permitted"] {
                    spec["process"]["capabilities"][set] = serde_json::json!(["CAP_SYS_ADMIN"]);
                }
            }
            let out = run(&bundle, spec)?;
            assert_eq!(
                out.stdout,
                format!(
                    "mkdir: can't create directory '/tmp/d': Operation not permitted\n\
                     NoNewPrivs:\t{}\nSeccomp:\t2\n",
                    u8::from(no_new_privs)
                ),
                "no_new_privs {no_new_privs}, CAP_SYS_ADMIN {sys_admin}: {out:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn helper_refuses_to_run_without_its_fds() {
        // fds 3 and 4 are something else (or nothing) in the test process's threads'
        // view; helper_main must not take them. Run it as a separate process.
        let Ok(out) = Command::new(HELPER_EXE)
            .env(hook::ENV, "container-init")
            .stdin(Stdio::null())
            .output()
        else {
            return;
        };
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr)
            .contains("fds 3 (plan) and 4 (sync socket) are not open"));
    }
}
