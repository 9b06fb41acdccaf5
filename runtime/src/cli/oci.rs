//! runc-compatible commands: `create`, `start`, `state`, `kill`, `delete`, `exec`,
//! `list`, `ps`, with the OCI runtime spec's lifecycle and its errors for operations in
//! the wrong state.
//!
//! `create` leaves a sandbox process behind (`husk sandbox-process`, hidden): it holds
//! the sandbox (with the builtin backend it is the VMM), relays the container's stdio to
//! the descriptors `create` was given, records the exit and stops the sandbox. The other
//! commands find the container through its state and talk to its agent directly.

use std::io::{BufRead, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use husk_protocol::{ExecProcess, StdioConfig};
use std::os::unix::process::CommandExt;

use super::foreground::SignalTarget;
use super::{Context, SandboxFlags};
use crate::agent::AgentClient;
use crate::container::{self, Launch};
use crate::spec;
use crate::state::{ContainerState, StateError, StateRoot, Status};
use crate::stdio::{follow_terminal_size, ConsolePty, HostStdio, RawTerminal, Relay, Streams};
use crate::storage::RootfsSource;

#[derive(Args, Debug)]
pub struct IdArgs {
    /// The container's id
    id: String,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The OCI bundle
    #[arg(short = 'b', long, default_value = ".")]
    bundle: PathBuf,
    /// Write the pid of the process holding the sandbox here
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// A Unix socket to receive the container terminal's master end (runc's protocol)
    #[arg(long)]
    console_socket: Option<PathBuf>,
    #[command(flatten)]
    sandbox: SandboxFlags,
    /// The container's id
    id: String,
}

#[derive(Args, Debug)]
pub struct KillArgs {
    /// Signal every process of the container, not only its first
    #[arg(short = 'a', long)]
    all: bool,
    id: String,
    /// A signal name (TERM, SIGKILL) or number
    #[arg(default_value = "TERM")]
    signal: String,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// Kill the container first if it still runs
    #[arg(short = 'f', long)]
    force: bool,
    id: String,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Give the process a terminal
    #[arg(short = 't', long)]
    tty: bool,
    /// Do not wait: no stdio, no exit status
    #[arg(short = 'd', long)]
    detach: bool,
    /// An environment variable, KEY=VALUE (repeatable)
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    /// The working directory
    #[arg(long)]
    cwd: Option<PathBuf>,
    /// Run as UID[:GID]
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// The process as an OCI process JSON file (instead of the command)
    #[arg(short = 'p', long)]
    process: Option<PathBuf>,
    /// Write the process's pid (as the sandbox sees it) here
    #[arg(long)]
    pid_file: Option<PathBuf>,
    id: String,
    #[arg(trailing_var_arg = true)]
    command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// table or json
    #[arg(short = 'f', long, default_value = "table")]
    format: String,
    /// Ids only
    #[arg(short = 'q', long)]
    quiet: bool,
}

#[derive(Args, Debug)]
pub struct PsArgs {
    /// table or json
    #[arg(short = 'f', long, default_value = "table")]
    format: String,
    id: String,
}

#[derive(Args, Debug)]
pub struct SandboxProcessArgs {
    #[arg(long)]
    id: String,
    /// The pipe to say "ok" or why not on, then close
    #[arg(long)]
    ready_fd: i32,
}

fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

pub fn create(context: &Context, args: CreateArgs) -> Result<ExitCode, String> {
    let root = &context.root;
    crate::state::check_id(&args.id).map_err(text)?;
    let bundle = std::path::absolute(&args.bundle).map_err(text)?;
    let (spec, rootfs) = spec::load_bundle(&bundle).map_err(text)?;
    let terminal = spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    let console_socket = match (terminal, args.console_socket) {
        (true, None) => {
            return Err(
                "the process wants a terminal (process.terminal): give --console-socket".into(),
            )
        }
        (false, Some(_)) => {
            return Err(
                "--console-socket needs a process with a terminal (process.terminal)".into(),
            )
        }
        (_, socket) => socket.map(std::path::absolute).transpose().map_err(text)?,
    };
    let stdio = match terminal {
        true => StdioConfig {
            terminal: true,
            ..StdioConfig::default()
        },
        // A terminal on stdin belongs to the caller's shell: the sandbox process, in a
        // process group of its own, must not read it (it would be stopped with SIGTTIN).
        false => StdioConfig {
            stdin: !rustix::termios::isatty(std::io::stdin()),
            stdout: true,
            stderr: true,
            terminal: false,
        },
    };
    let rootfs = RootfsSource::Directory {
        path: rootfs,
        shared: false,
    };
    let mut launch = context.launch(&args.id, bundle, &spec, rootfs, &args.sandbox, stdio)?;
    launch.console_socket = console_socket;
    container::register(&launch, root).map_err(text)?;
    if let Err(e) = launch.save(root) {
        let _ = root.remove(&args.id);
        return Err(text(e));
    }
    // With a console socket the container's stdio is the terminal: the sandbox process
    // keeps none of ours (a caller reading our output to its end would wait for ever).
    let inherit = launch.console_socket.is_none();
    match spawn_sandbox_process(root, &args.id, inherit) {
        Ok(pid) => {
            if let Some(path) = &args.pid_file {
                write_pid_file(path, pid)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let _ = root.remove(&args.id);
            Err(e)
        }
    }
}

/// Starts `husk sandbox-process` and waits for its word: the container is created, or
/// why not.
fn spawn_sandbox_process(root: &StateRoot, id: &str, inherit_stdio: bool) -> Result<i32, String> {
    let (reader, writer) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| format!("cannot make a pipe: {e}"))?;
    // The child's end must survive exec: a duplicate without CLOEXEC.
    let child_end = rustix::io::fcntl_dupfd_cloexec(&writer, 3)
        .and_then(|fd| {
            rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::empty())?;
            Ok(fd)
        })
        .map_err(|e| format!("cannot make a pipe: {e}"))?;
    drop(writer);
    let exe = std::env::current_exe().map_err(|e| format!("cannot find husk itself: {e}"))?;
    let root_path = std::path::absolute(root.path()).map_err(text)?;
    let log = root.dir(id).join("husk.log");
    let mut command = Command::new(exe);
    command
        .arg("--root")
        .arg(&root_path)
        .arg("--log")
        .arg(&log)
        .arg("sandbox-process")
        .arg("--id")
        .arg(id)
        .arg("--ready-fd")
        .arg(child_end.as_raw_fd().to_string())
        // Out of the caller's process group: a Ctrl-C meant for the caller's shell
        // must not reach the sandbox.
        .process_group(0);
    if !inherit_stdio {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start the sandbox process: {e}"))?;
    drop(child_end);
    // One line: "ok", or why not; nothing (end of file) if the process died first.
    let mut word = String::new();
    let _ = std::io::BufReader::new(std::fs::File::from(reader)).read_line(&mut word);
    if word.trim() == "ok" {
        return Ok(child.id() as i32);
    }
    let _ = child.kill();
    let _ = child.wait();
    let why = match word.trim() {
        "" => format!(
            "the sandbox process ended before the container was created: {}",
            crate::hypervisor::last_log_line(&log)
        ),
        why => why.to_owned(),
    };
    Err(why)
}

fn write_pid_file(path: &Path, pid: i32) -> Result<(), String> {
    // Written whole and renamed, as runc does: readers never see a partial pid.
    let temporary = path.with_extension("husk-tmp");
    std::fs::write(&temporary, pid.to_string())
        .and_then(|()| std::fs::rename(&temporary, path))
        .map_err(|e| format!("cannot write the pid file {}: {e}", path.display()))
}

/// The sandbox process: creates the container, says so, then holds the sandbox until
/// the container's process exits.
pub fn sandbox_process(context: &Context, args: SandboxProcessArgs) -> Result<ExitCode, String> {
    // SAFETY: the fd number comes from `create`, which left exactly this descriptor open
    // for us and closed its own copy; nothing else in this process owns it.
    let ready = unsafe { OwnedFd::from_raw_fd(args.ready_fd) };
    // Not for our children (the host agent): `create` waits for the pipe's end.
    rustix::io::fcntl_setfd(&ready, rustix::io::FdFlags::CLOEXEC)
        .map_err(|e| format!("the ready pipe: {e}"))?;
    let mut ready = std::fs::File::from(ready);
    let root = &context.root;
    let launch = Launch::load(root, &args.id).map_err(text)?;
    // With a console socket the container's terminal is copied to a host pty whose
    // master goes to the socket's owner; else the process's stdio is ours (create's).
    let console = launch
        .console_socket
        .as_ref()
        .map(|socket| {
            let pty = ConsolePty::open()?;
            pty.send_master(socket)?;
            Ok::<_, std::io::Error>(pty)
        })
        .transpose();
    let created = console
        .and_then(|console| {
            let host = match &console {
                Some(pty) => pty.host_stdio()?,
                None => HostStdio::inherited(launch.stdio.stdin)?,
            };
            Ok((console, host))
        })
        .map_err(text)
        .and_then(|(console, host)| {
            let never: container::Interrupt = Arc::new(AtomicBool::new(false));
            let held = container::create(&launch, root, host, &never).map_err(text)?;
            Ok((console, held))
        });
    let (console, held) = match created {
        Ok(held) => held,
        Err(e) => {
            let _ = writeln!(ready, "{e}");
            return Err(e);
        }
    };
    if let Some(pty) = &console {
        // The owner of the master sets the size; the container's terminal follows it.
        let (agent, id) = (held.sandbox().agent().clone(), held.id().to_owned());
        let slave = pty.slave.try_clone().map_err(text)?;
        follow_terminal_size(slave, move |rows, cols| {
            agent.resize_terminal(&id, None, rows, cols).is_ok()
        })
        .map_err(text)?;
    }
    let _ = writeln!(ready, "ok");
    drop(ready);
    held.wait(root).map_err(text)?;
    drop(console);
    Ok(ExitCode::SUCCESS)
}

/// Loads a container's state and connects to its agent, if its sandbox still runs.
fn connect(state: &ContainerState) -> Result<AgentClient, String> {
    let address = state
        .agent
        .as_ref()
        .ok_or_else(|| format!("container {} has no sandbox yet", state.id))?;
    AgentClient::connect(address.connector())
        .map_err(|e| format!("container {}: cannot reach its sandbox: {e}", state.id))
}

fn wrong_state(state: &ContainerState, status: Status, what: &str) -> String {
    format!("container {} is {status}: {what}", state.id)
}

pub fn start(context: &Context, args: IdArgs) -> Result<ExitCode, String> {
    let root = &context.root;
    let _lock = root.lock(&args.id).map_err(text)?;
    let mut state = root.load(&args.id).map_err(text)?;
    let status = state.effective_status();
    if status != Status::Created {
        return Err(wrong_state(
            &state,
            status,
            "only a created container can be started",
        ));
    }
    connect(&state)?
        .start_container(&state.id)
        .map_err(|e| format!("starting container {}: {e}", state.id))?;
    state.status = Status::Running;
    root.save(&state).map_err(text)?;
    Ok(ExitCode::SUCCESS)
}

/// The OCI state of a container, as runc prints it.
fn oci_state(state: &ContainerState) -> serde_json::Value {
    let status = state.effective_status();
    let pid = match status {
        Status::Created | Status::Running => state.sandbox_process.map_or(0, |p| p.pid),
        Status::Creating | Status::Stopped => 0,
    };
    serde_json::json!({
        "ociVersion": "1.0.2",
        "id": state.id,
        "status": status.to_string(),
        "pid": pid,
        "bundle": state.bundle,
        "rootfs": state.rootfs,
        "created": state.created,
        "owner": "",
        "annotations": state.annotations,
        "hypervisor": state.hypervisor.to_string(),
        "exitCode": state.exit_code,
    })
}

pub fn state(context: &Context, args: IdArgs) -> Result<ExitCode, String> {
    let state = context.root.load(&args.id).map_err(text)?;
    let json = serde_json::to_string_pretty(&oci_state(&state)).map_err(text)?;
    println!("{json}");
    Ok(ExitCode::SUCCESS)
}

pub fn kill(context: &Context, args: KillArgs) -> Result<ExitCode, String> {
    let signal = parse_signal(&args.signal)?;
    let state = context.root.load(&args.id).map_err(text)?;
    let status = state.effective_status();
    if !matches!(status, Status::Created | Status::Running) {
        return Err(wrong_state(
            &state,
            status,
            "only a created or running container can be signalled",
        ));
    }
    connect(&state)?
        .signal(&state.id, None, signal, args.all)
        .map_err(|e| format!("signalling container {}: {e}", state.id))?;
    Ok(ExitCode::SUCCESS)
}

/// A signal by number, name or SIG-name.
pub fn parse_signal(signal: &str) -> Result<i32, String> {
    if let Ok(number) = signal.parse::<i32>() {
        if (1..=64).contains(&number) {
            return Ok(number);
        }
    }
    let name = signal.trim_start_matches("SIG");
    let number = match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "WINCH" => libc::SIGWINCH,
        "ALRM" => libc::SIGALRM,
        "PIPE" => libc::SIGPIPE,
        _ => return Err(format!("unknown signal {signal:?}")),
    };
    Ok(number)
}

pub fn delete(context: &Context, args: DeleteArgs) -> Result<ExitCode, String> {
    let root = &context.root;
    let lock = match root.lock(&args.id) {
        Ok(lock) => lock,
        Err(StateError::NotFound(_)) if args.force => return Ok(ExitCode::SUCCESS),
        Err(e) => return Err(text(e)),
    };
    match root.load(&args.id) {
        Ok(state) => {
            let status = state.effective_status();
            if status != Status::Stopped && !args.force {
                return Err(wrong_state(
                    &state,
                    status,
                    "only a stopped container can be deleted (or use --force)",
                ));
            }
            container::teardown(&state)?;
        }
        // A state nobody can read can still be removed by force.
        Err(e @ StateError::Damaged { .. }) if !args.force => return Err(text(e)),
        Err(_) => {}
    }
    drop(lock);
    root.remove(&args.id).map_err(text)?;
    Ok(ExitCode::SUCCESS)
}

pub fn exec(context: &Context, args: ExecArgs) -> Result<ExitCode, String> {
    let root = &context.root;
    let state = root.load(&args.id).map_err(text)?;
    let status = state.effective_status();
    if status != Status::Running {
        return Err(wrong_state(
            &state,
            status,
            "processes can only be started in a running container",
        ));
    }
    let process = exec_process(root, &state, &args)?;
    let terminal = process.terminal().unwrap_or(false);
    let agent = Arc::new(connect(&state)?);
    static EXECS: AtomicU64 = AtomicU64::new(0);
    let exec_id = format!(
        "exec-{}-{}",
        std::process::id(),
        EXECS.fetch_add(1, Ordering::Relaxed)
    );
    let stdio = match args.detach {
        true => StdioConfig::default(),
        false => StdioConfig {
            stdin: true,
            stdout: true,
            stderr: true,
            terminal,
        },
    };
    let target = SignalTarget::new(terminal);
    let signals = target.forward()?;
    let streams = Streams::open(&agent, &state.id, Some(&exec_id), stdio).map_err(text)?;
    let raw = match terminal && !args.detach {
        true => RawTerminal::enter(std::io::stdin().as_fd()).map_err(text)?,
        false => None,
    };
    let pid = agent
        .exec(ExecProcess {
            container_id: state.id.clone(),
            exec_id: exec_id.clone(),
            process,
            stdio,
        })
        .map_err(|e| format!("exec in container {}: {e}", state.id))?;
    if let Some(path) = &args.pid_file {
        write_pid_file(path, pid)?;
    }
    if args.detach {
        return Ok(ExitCode::SUCCESS);
    }
    let relay = Relay::start(streams, HostStdio::inherited(true).map_err(text)?).map_err(text)?;
    target.aim(agent.clone(), &state.id, Some(&exec_id));
    let exited = agent.wait(&state.id, Some(&exec_id));
    relay.finish(Duration::from_secs(5));
    signals.close();
    drop(raw);
    let exit = exited.map_err(|e| format!("waiting for the process: {e}"))?;
    Ok(ExitCode::from(exit.status.shell_code().clamp(0, 255) as u8))
}

/// The process `exec` starts: from `--process`, or the container's own process with the
/// command and the flags' changes (as runc does).
fn exec_process(
    root: &StateRoot,
    state: &ContainerState,
    args: &ExecArgs,
) -> Result<oci_spec::runtime::Process, String> {
    if let Some(path) = &args.process {
        let json = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut de = serde_json::Deserializer::from_slice(&json);
        return serde_path_to_error::deserialize(&mut de)
            .map_err(|e| format!("{}: {}: {}", path.display(), e.path(), e.inner()));
    }
    if args.command.is_empty() {
        return Err("no command to run: give one after the container id, or --process".into());
    }
    let launch = Launch::load(root, &state.id).map_err(text)?;
    let mut spec: oci_spec::runtime::Spec = serde_json::from_value(launch.spec).map_err(text)?;
    spec::apply_overrides(
        &mut spec,
        &spec::ProcessOverrides {
            command: args.command.clone(),
            env: args.env.clone(),
            user: args.user.clone(),
            terminal: args.tty,
            hostname: None,
        },
    )
    .map_err(text)?;
    let mut process = spec.process().clone().unwrap_or_default();
    if !args.tty {
        process.set_terminal(Some(false));
    }
    if let Some(cwd) = &args.cwd {
        process.set_cwd(cwd.clone());
    }
    Ok(process)
}

pub fn list(context: &Context, args: ListArgs) -> Result<ExitCode, String> {
    let root = &context.root;
    let states: Vec<ContainerState> = root
        .ids()
        .map_err(text)?
        .iter()
        .filter_map(|id| root.load(id).ok())
        .collect();
    let mut out = std::io::stdout().lock();
    if args.quiet {
        for state in &states {
            let _ = writeln!(out, "{}", state.id);
        }
        return Ok(ExitCode::SUCCESS);
    }
    match args.format.as_str() {
        "json" => {
            let all: Vec<serde_json::Value> = states.iter().map(oci_state).collect();
            let _ = writeln!(out, "{}", serde_json::Value::Array(all));
        }
        "table" => {
            let _ = writeln!(
                out,
                "{:<24} {:<8} {:<8} {:<9} {:<31} BUNDLE",
                "ID", "PID", "STATUS", "HYPERVISOR", "CREATED"
            );
            for state in &states {
                let oci = oci_state(state);
                let _ = writeln!(
                    out,
                    "{:<24} {:<8} {:<8} {:<9} {:<31} {}",
                    state.id,
                    oci["pid"],
                    state.effective_status(),
                    state.hypervisor,
                    state.created,
                    state.bundle.display()
                );
            }
        }
        other => return Err(format!("--format {other:?}: use table or json")),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn ps(context: &Context, args: PsArgs) -> Result<ExitCode, String> {
    let state = context.root.load(&args.id).map_err(text)?;
    let status = state.effective_status();
    if !matches!(status, Status::Created | Status::Running) {
        return Err(wrong_state(&state, status, "it has no processes"));
    }
    let pids = connect(&state)?.pids(&state.id).map_err(text)?;
    match args.format.as_str() {
        "json" => println!("{}", serde_json::json!(pids)),
        "table" => {
            println!("PID");
            for pid in pids {
                println!("{pid}");
            }
        }
        other => return Err(format!("--format {other:?}: use table or json")),
    }
    Ok(ExitCode::SUCCESS)
}
