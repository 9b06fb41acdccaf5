//! Support for the agent suite (`agent_suite.rs`): one agent per test, on one of two
//! targets, driven by the runtime's typed client with busybox containers.
//!
//! - Layer 3 (the default): the agent as a host process, started by the runtime's host
//!   backend (`husk-agent --listen unix:… --isolate`, root: PID 1 of its own PID and
//!   mount namespaces), containers on a busybox rootfs directory.
//! - Layer 5 (`HUSK_AGENT_SUITE=vm`, set by the lab's `agent` scenario): the agent as PID 1
//!   of a `husk vmm` guest, reached over hybrid vsock (port 1024), containers on an ext4
//!   image of the same rootfs on a virtio-blk drive. It needs `HUSK` (the husk binary),
//!   `GUEST_KERNEL`, `GUEST_INITRD` and `MKFS_EXT4`.
//!
//! What a test checks about the agent's machine (its processes, mounts and files) it
//! sees through a probe container that shares the machine's PID namespace, so the same
//! check works on both targets.

#![allow(dead_code)] // each test file uses its own part

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use husk_protocol::{
    Connection, Connector, CreateContainer, ExecProcess, ExitInfo, HybridVsockConnector, Rootfs,
    StdioConfig, StreamKind, AGENT_VSOCK_PORT,
};
use husk_runtime::agent::AgentClient;
use husk_runtime::hypervisor::host::{HostBackend, HostConfig};
use husk_runtime::hypervisor::{connect_agent, Hypervisor};
use husk_tests::rootfs::{build_busybox_tree, busybox_rootfs};
use husk_tests::{scratch_dir, ScratchDir};
use oci_spec::runtime::Spec;

/// Where the agent under test runs.
enum Target {
    Host,
    Vm(VmTools),
}

/// What the VM target needs, from the environment.
struct VmTools {
    husk: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
    mkfs_ext4: PathBuf,
}

fn target() -> Target {
    match std::env::var("HUSK_AGENT_SUITE").as_deref() {
        Err(_) | Ok("host") => Target::Host,
        Ok("vm") => {
            let path = |name: &str| -> PathBuf {
                std::env::var_os(name)
                    .unwrap_or_else(|| panic!("HUSK_AGENT_SUITE=vm needs {name}"))
                    .into()
            };
            Target::Vm(VmTools {
                husk: path("HUSK"),
                kernel: path("GUEST_KERNEL"),
                initrd: path("GUEST_INITRD"),
                mkfs_ext4: path("MKFS_EXT4"),
            })
        }
        Ok(other) => panic!("HUSK_AGENT_SUITE must be host or vm, not {other:?}"),
    }
}

/// Why a test cannot run here, failing loudly rather than passing.
pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the agent tests create containers (and VMs) and must run as root"
    );
}

/// The agent under test with a connected client; the agent (or its VM) is killed on drop.
pub struct TestAgent {
    pub client: AgentClient,
    /// Opens new connections to the agent, as the client does.
    pub connector: Arc<dyn Connector>,
    /// Where the agent keeps container directories, in its own mount namespace.
    pub run_dir: PathBuf,
    /// The agent's pid in the PID namespace of its machine (1 in a VM).
    pub pid: u32,
    /// True for the agent as PID 1 of a VM.
    pub in_vm: bool,
    rootfs: Rootfs,
    sandbox: Sandbox,
    pub dir: ScratchDir,
}

/// What runs the agent.
enum Sandbox {
    /// The runtime's host backend: the agent as PID 1 of its own namespaces
    /// (`husk-agent --isolate`), its log in `<dir>/agent.log`.
    Host(HostBackend),
    /// `husk vmm`, its console in `console` and its own messages beside it in `husk.log`.
    Vm { vmm: Child, console: PathBuf },
}

impl TestAgent {
    pub fn start(name: &str) -> TestAgent {
        require_root();
        let dir = scratch_dir(&format!("agent-{name}")).expect("scratch dir");
        match target() {
            Target::Host => start_on_host(dir),
            Target::Vm(tools) => start_in_vm(dir, &tools),
        }
    }

    /// The container rootfs: the busybox tree; on the host the tests' shared directory,
    /// in the VM this agent's own writable copy of an ext4 image of it (which also holds
    /// the `/evil -> /etc` of `rootfs_with_evil_symlink`).
    pub fn rootfs(&self) -> Rootfs {
        self.rootfs.clone()
    }

    /// A rootfs whose `/evil` is a symlink to `/etc`, and that the test may write.
    pub fn rootfs_with_evil_symlink(&self) -> Rootfs {
        if self.in_vm {
            return self.rootfs();
        }
        let path = self.dir.join("evil-rootfs");
        build_evil_tree(&path);
        Rootfs::Directory {
            path,
            overlay: false,
        }
    }

    /// A rootfs source for overlay tests, with the overlay (`overlay: true`) or without
    /// (a plain view of the source): on the host a busybox tree of this agent's own, which
    /// [`TestAgent::shared_source`] names; in the VM the drive of [`TestAgent::rootfs`].
    pub fn shared_rootfs(&self, overlay: bool) -> Rootfs {
        match self.shared_source() {
            Some(path) => Rootfs::Directory { path, overlay },
            None => Rootfs::BlockDevice {
                serial: "rootfs".into(),
                fs_type: "ext4".into(),
                overlay,
            },
        }
    }

    /// The directory behind [`TestAgent::shared_rootfs`] on the host, built on first use;
    /// `None` in the VM (the source is a drive there).
    pub fn shared_source(&self) -> Option<PathBuf> {
        if self.in_vm {
            return None;
        }
        let path = self.dir.join("shared-rootfs");
        if !path.exists() {
            build_busybox_tree(&path).expect("the shared busybox rootfs");
        }
        Some(path)
    }

    /// Whether containers get cgroup v2 limits, stats and OOM events, and if not, why.
    pub fn cgroups(&self) -> Result<(), String> {
        match &self.client.info().cgroups_unavailable {
            None => Ok(()),
            Some(why) => Err(why.clone()),
        }
    }

    /// What a probe container sees of the agent's machine.
    pub fn look(&self, paths: &[&Path]) -> Look {
        static PROBES: AtomicU32 = AtomicU32::new(0);
        let id = format!("probe-{}", PROBES.fetch_add(1, Ordering::Relaxed));
        // The probe prints, one per line: every process's command line, the agent's mount
        // table and which of `paths` exist in the agent's root. Nothing it runs carries a
        // test's search string on its command line, so it never finds itself.
        let mut script = String::from(
            "for p in /proc/[0-9]*; do echo \"process $(tr '\\0' ' ' < $p/cmdline 2>/dev/null)\"; done; \
             while read -r m; do echo \"mount $m\"; done < /proc/$AGENT/mountinfo; ",
        );
        for i in 0..paths.len() {
            script.push_str(&format!(
                "if [ -e \"/proc/$AGENT/root$P{i}\" ] || [ -L \"/proc/$AGENT/root$P{i}\" ]; then echo \"exists $P{i}\"; fi; "
            ));
        }
        let mut value = json(&spec(&["sh", "-c", &script]));
        let mut env = vec![format!("AGENT={}", self.pid), "PATH=/bin".to_owned()];
        env.extend(
            paths
                .iter()
                .enumerate()
                .map(|(i, p)| format!("P{i}={}", p.display())),
        );
        value["process"]["env"] = serde_json::json!(env);
        // The machine's PID namespace, and the right to look at the agent's /proc entries.
        value["linux"]["namespaces"] = serde_json::json!(value["linux"]["namespaces"]
            .as_array()
            .expect("namespaces")
            .iter()
            .filter(|n| n["type"] != "pid")
            .collect::<Vec<_>>());
        for set in ["bounding", "effective", "permitted"] {
            if let Some(caps) = value["process"]["capabilities"][set].as_array_mut() {
                caps.push("CAP_SYS_PTRACE".into());
            }
        }
        let out = run_value(self, &id, value, None);
        assert_eq!(out.code(), 0, "the probe failed: {}", out.stderr());
        let mut look = Look::default();
        for line in out.stdout().lines() {
            if let Some(p) = line.strip_prefix("process ") {
                look.processes.push(p.to_owned());
            } else if let Some(m) = line.strip_prefix("mount ") {
                look.mounts.push(m.to_owned());
            } else if let Some(e) = line.strip_prefix("exists ") {
                look.existing.push(PathBuf::from(e));
            }
        }
        assert!(
            !look.processes.is_empty() && !look.mounts.is_empty(),
            "the probe saw nothing: {}",
            out.stdout()
        );
        look
    }
}

/// The agent's machine as a probe container saw it.
#[derive(Debug, Default)]
pub struct Look {
    /// Every process's command line, arguments joined by spaces.
    pub processes: Vec<String>,
    /// The agent's /proc/PID/mountinfo.
    pub mounts: Vec<String>,
    /// Those of the asked paths that exist in the agent's root.
    pub existing: Vec<PathBuf>,
}

impl Look {
    pub fn processes_with(&self, needle: &str) -> Vec<&String> {
        self.processes
            .iter()
            .filter(|p| p.contains(needle))
            .collect()
    }
    pub fn mounts_with(&self, needle: &str) -> Vec<&String> {
        self.mounts.iter().filter(|m| m.contains(needle)).collect()
    }
}

fn start_on_host(dir: ScratchDir) -> TestAgent {
    let sandbox_dir = dir.join("sandbox");
    let mut backend = HostBackend::new(HostConfig {
        agent: PathBuf::from(env!("CARGO_BIN_EXE_husk-agent")),
        dir: sandbox_dir.clone(),
    });
    if let Err(e) = backend.start() {
        panic!(
            "the host agent did not start: {e}{}",
            read_logs(&[sandbox_dir.join("agent.log")])
        );
    }
    let connector = backend.agent_connector().expect("the agent's connector");
    let client = AgentClient::connect(connector.clone()).expect("a client of the agent");
    TestAgent {
        client,
        connector,
        run_dir: sandbox_dir.join("run"),
        // PID 1 of its own PID namespace (--isolate), where its containers' are.
        pid: 1,
        in_vm: false,
        rootfs: Rootfs::Directory {
            path: busybox_rootfs().expect("the busybox rootfs"),
            overlay: false,
        },
        sandbox: Sandbox::Host(backend),
        dir,
    }
}

fn start_in_vm(dir: ScratchDir, tools: &VmTools) -> TestAgent {
    // A private, writable copy of the image for this VM.
    let image = dir.join("rootfs.ext4");
    std::fs::copy(vm_image(tools), &image).expect("copying the rootfs image");
    let uds = dir.join("vsock.sock");
    let console = dir.join("console.log");
    // The VMM's own messages, shown with the console when a test fails.
    let vmm_log = std::fs::File::create(dir.join("husk.log")).expect("creating husk.log");
    let mut child = Command::new(&tools.husk)
        .arg("vmm")
        .arg("--kernel")
        .arg(&tools.kernel)
        .arg("--initrd")
        .arg(&tools.initrd)
        .args(["--vcpus", "1", "--mem-mib", "256"])
        .arg(format!("--console=file={}", console.display()))
        .arg(format!("--drive=path={},id=rootfs", image.display()))
        .arg(format!("--vsock=cid=3,uds={}", uds.display()))
        .stdin(Stdio::null())
        .stderr(vmm_log)
        .spawn()
        .expect("starting husk vmm");
    let connector: Arc<dyn Connector> = Arc::new(HybridVsockConnector {
        uds_path: uds,
        port: AGENT_VSOCK_PORT,
        timeout: Duration::from_secs(30),
    });
    // A guest boot takes seconds in the nested lab; give it ample time.
    let answered = connect_agent(connector.clone(), Duration::from_secs(180), || {
        let status = child.try_wait().ok().flatten()?;
        Some(format!("husk exited with {status}"))
    });
    let client = match answered {
        Ok(client) => client,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the agent in the VM never answered: {e}{}",
                read_logs(&vm_logs(&console))
            );
        }
    };
    TestAgent {
        client,
        connector,
        run_dir: PathBuf::from("/run/husk"),
        pid: 1,
        in_vm: true,
        rootfs: Rootfs::BlockDevice {
            serial: "rootfs".into(),
            fs_type: "ext4".into(),
            overlay: false,
        },
        sandbox: Sandbox::Vm {
            vmm: child,
            console,
        },
        dir,
    }
}

/// A VM's console log and husk's own messages beside it.
fn vm_logs(console: &Path) -> [PathBuf; 2] {
    [console.to_path_buf(), console.with_file_name("husk.log")]
}

/// The logs, each under a heading, for a failure message.
fn read_logs(paths: &[PathBuf]) -> String {
    let mut text = String::new();
    for path in paths {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        text.push_str(&format!("\n--- {} ---\n{log}", path.display()));
    }
    text + "--- end ---"
}

/// The busybox rootfs with `/evil -> /etc` besides, at `root`.
fn build_evil_tree(root: &Path) {
    build_busybox_tree(root).expect("the busybox rootfs");
    std::os::unix::fs::symlink("/etc", root.join("evil")).expect("symlink");
}

/// The busybox rootfs with `/evil -> /etc`, as an ext4 image: built once per test process.
fn vm_image(tools: &VmTools) -> PathBuf {
    // The directory lives as long as the process (statics are never dropped).
    static IMAGE_DIR: OnceLock<ScratchDir> = OnceLock::new();
    let dir = IMAGE_DIR.get_or_init(|| {
        let dir = scratch_dir("agent-vm-image").expect("scratch dir");
        let tree = dir.join("tree");
        build_evil_tree(&tree);
        let image = dir.join("rootfs.ext4");
        let file = std::fs::File::create(&image).expect("creating the image");
        file.set_len(32 << 20).expect("sizing the image");
        let status = Command::new(&tools.mkfs_ext4)
            .args(["-q", "-F", "-d"])
            .arg(&tree)
            .arg(&image)
            .status()
            .expect("running mkfs.ext4");
        assert!(status.success(), "mkfs.ext4 -d failed");
        dir
    });
    dir.join("rootfs.ext4")
}

impl TestAgent {
    /// SIGKILL to what runs the agent: the host agent's outer process, or the VMM.
    pub fn kill(&mut self) {
        match &mut self.sandbox {
            Sandbox::Host(backend) => {
                let _ = backend.stop();
            }
            Sandbox::Vm { vmm, .. } => {
                let _ = vmm.kill();
                let _ = vmm.wait();
            }
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let logs = match &self.sandbox {
                Sandbox::Host(_) => vec![self.dir.join("sandbox/agent.log")],
                Sandbox::Vm { console, .. } => vm_logs(console).to_vec(),
            };
            eprintln!("{}", read_logs(&logs));
        }
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

/// `spec` with a writable root (`root.readonly` false).
pub fn writable(mut spec: Spec) -> Spec {
    let mut root = spec.root().clone().expect("the default spec has a root");
    root.set_readonly(Some(false));
    spec.set_root(Some(root));
    spec
}

/// A spec as the protocol carries it.
pub fn json(spec: &Spec) -> serde_json::Value {
    serde_json::to_value(spec).expect("a spec encodes as JSON")
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
pub fn run(agent: &TestAgent, id: &str, spec: Spec, stdin: Option<&[u8]>) -> Output {
    run_value(agent, id, json(&spec), stdin)
}

/// `run` with the spec as JSON.
pub fn run_value(
    agent: &TestAgent,
    id: &str,
    spec: serde_json::Value,
    stdin: Option<&[u8]>,
) -> Output {
    run_on(agent, id, spec, agent.rootfs(), stdin)
}

/// `run_value` on the given rootfs.
pub fn run_on(
    agent: &TestAgent,
    id: &str,
    spec: serde_json::Value,
    rootfs: Rootfs,
    stdin: Option<&[u8]>,
) -> Output {
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
            spec,
            rootfs,
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

/// Runs `sh -c script` in a running container as exec `exec_id`; its exit and stdout.
pub fn exec_script(agent: &TestAgent, container_id: &str, exec_id: &str, script: &str) -> Output {
    let client = &agent.client;
    let stdout = collect(
        client
            .open_stream(container_id, Some(exec_id), StreamKind::Stdout)
            .expect("stdout stream"),
    );
    let stderr = collect(
        client
            .open_stream(container_id, Some(exec_id), StreamKind::Stderr)
            .expect("stderr stream"),
    );
    let mut process = spec(&["sh"]).process().clone().expect("process");
    process.set_args(Some(vec!["sh".into(), "-c".into(), script.into()]));
    client
        .exec(ExecProcess {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
            process,
            stdio: StdioConfig {
                stdout: true,
                stderr: true,
                ..Default::default()
            },
        })
        .expect("exec");
    let exit = client.wait(container_id, Some(exec_id)).expect("wait");
    Output {
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
        exit,
    }
}

/// One entry of a [`snapshot`].
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification and change times, seconds and nanoseconds.
    pub times: [i64; 4],
    /// A file's bytes, a symlink's target; empty for anything else.
    pub content: Vec<u8>,
}

/// Every entry of the tree at `root` (by path relative to it), to tell whether anything
/// in it changed, down to the byte.
pub fn snapshot(root: &Path) -> std::collections::BTreeMap<PathBuf, Entry> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let mut entries = std::collections::BTreeMap::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let path = root.join(&rel);
        let meta = std::fs::symlink_metadata(&path).expect("stat");
        let content = if meta.is_file() {
            std::fs::read(&path).expect("read")
        } else if meta.file_type().is_symlink() {
            std::fs::read_link(&path)
                .expect("readlink")
                .as_os_str()
                .as_bytes()
                .to_vec()
        } else {
            Vec::new()
        };
        if meta.is_dir() {
            for child in std::fs::read_dir(&path).expect("readdir") {
                todo.push(rel.join(child.expect("readdir entry").file_name()));
            }
        }
        entries.insert(
            rel,
            Entry {
                mode: meta.mode(),
                uid: meta.uid(),
                gid: meta.gid(),
                times: [
                    meta.mtime(),
                    meta.mtime_nsec(),
                    meta.ctime(),
                    meta.ctime_nsec(),
                ],
                content,
            },
        );
    }
    entries
}

/// The paths whose entries differ between two snapshots (or are in only one).
pub fn changed(
    before: &std::collections::BTreeMap<PathBuf, Entry>,
    after: &std::collections::BTreeMap<PathBuf, Entry>,
) -> Vec<PathBuf> {
    before
        .keys()
        .chain(after.keys())
        .filter(|path| before.get(*path) != after.get(*path))
        .cloned()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}
