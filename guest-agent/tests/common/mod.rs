//! Support for layer-3 tests: the agent as a host process on a Unix socket (root), the
//! runtime's typed client, busybox containers.

#![allow(dead_code)] // each test file uses its own part

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use husk_protocol::{
    Connection, CreateContainer, ExitInfo, ExitStatus, Rootfs, StdioConfig, StreamKind,
    UnixConnector,
};
use husk_runtime::agent::AgentClient;
use husk_tests::rootfs::busybox_rootfs;
use husk_tests::{scratch_dir, ScratchDir};
use oci_spec::runtime::{ProcessBuilder, Spec};

/// The agent under test, with its own socket and run directory; killed on drop.
pub struct HostAgent {
    pub child: Child,
    pub client: AgentClient,
    pub socket: PathBuf,
    pub run_dir: PathBuf,
    pub dir: ScratchDir,
}

/// Why a test cannot run here, printed and failing loudly rather than passing.
pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "layer-3 agent tests create containers and must run as root"
    );
}

impl HostAgent {
    pub fn start(name: &str) -> HostAgent {
        require_root();
        let dir = scratch_dir(&format!("agent-{name}")).expect("scratch dir");
        let socket = dir.join("agent.sock");
        let run_dir = dir.join("run");
        let mut child = Command::new(env!("CARGO_BIN_EXE_husk-agent"))
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .arg("--run-dir")
            .arg(&run_dir)
            .stdin(Stdio::null())
            .spawn()
            .expect("starting husk-agent");
        // The socket file appears at bind(), a moment before listen(): retry refused
        // connections until the agent listens.
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = loop {
            match AgentClient::connect(Arc::new(UnixConnector(socket.clone()))) {
                Ok(client) => break client,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("the agent never answered on {}: {e}", socket.display());
                }
            }
        };
        HostAgent {
            child,
            client,
            socket,
            run_dir,
            dir,
        }
    }
}

impl Drop for HostAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A spec like `runc spec` makes (oci-spec's default), running `args` in the busybox
/// rootfs, with a hostname.
pub fn spec(args: &[&str]) -> Spec {
    let mut spec = Spec::default();
    let mut process = spec
        .process()
        .clone()
        .expect("the default spec has a process");
    process.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
    process.set_terminal(Some(false));
    spec.set_process(Some(process));
    spec.set_hostname(Some("husk-test".into()));
    spec
}

/// A spec as the protocol carries it.
pub fn json(spec: &Spec) -> serde_json::Value {
    serde_json::to_value(spec).expect("a spec encodes as JSON")
}

pub fn rootfs() -> Rootfs {
    Rootfs::Directory {
        path: busybox_rootfs().expect("the busybox rootfs"),
    }
}

/// What a container run produced.
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit: ExitInfo,
}

impl Output {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    pub fn code(&self) -> i32 {
        self.exit.status.shell_code()
    }
}

/// Reads a stream to its end on a thread.
pub fn collect(mut conn: Connection) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut data = Vec::new();
        let _ = conn.read_to_end(&mut data);
        data
    })
}

/// Creates, starts and waits for a container; `stdin` is written and closed. Removes
/// the container afterwards.
pub fn run(agent: &HostAgent, id: &str, spec: Spec, stdin: Option<&[u8]>) -> Output {
    let client = &agent.client;
    let stdio = StdioConfig {
        stdin: stdin.is_some(),
        stdout: true,
        stderr: true,
        terminal: false,
    };
    let input = stdin.map(|_| {
        client
            .open_stream(id, None, StreamKind::Stdin)
            .expect("stdin stream")
    });
    let out = collect(
        client
            .open_stream(id, None, StreamKind::Stdout)
            .expect("stdout stream"),
    );
    let err = collect(
        client
            .open_stream(id, None, StreamKind::Stderr)
            .expect("stderr stream"),
    );
    client
        .create_container(CreateContainer {
            container_id: id.into(),
            spec: json(&spec),
            rootfs: rootfs(),
            stdio,
        })
        .expect("create");
    client.start_container(id).expect("start");
    let writer = input.map(|mut conn| {
        let data = stdin.unwrap_or_default().to_vec();
        std::thread::spawn(move || {
            let _ = conn.write_all(&data);
            let _ = conn.shutdown(rustix::net::Shutdown::Write);
        })
    });
    let exit = client.wait(id, None).expect("wait");
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    let output = Output {
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
        exit,
    };
    client.remove_container(id, false).expect("remove");
    output
}

pub fn exited_with(code: i32) -> ExitStatus {
    ExitStatus::Code(code)
}

/// Every line of /proc/self/mountinfo that mentions `needle`.
pub fn host_mounts_with(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// Pids of processes whose command line contains `needle`.
pub fn processes_with(needle: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline)
            .replace('\0', " ")
            .contains(needle)
        {
            pids.push(pid);
        }
    }
    pids
}

pub fn path_exists(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}

pub fn process_builder() -> ProcessBuilder {
    ProcessBuilder::default()
}
