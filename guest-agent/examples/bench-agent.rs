//! Agent benchmark (issue 4): the agent on the host against `runc`, side by side, on the
//! same busybox bundle, as root.
//!
//!     cargo run --release -p husk-agent --example bench-agent -- 20
//!
//! - create-to-first-output: from the create call (or runc's spawn) until the first
//!   byte of `echo hello` arrives, then the container is waited for and removed;
//! - exec round trip: `true` exec'd into a running container and waited for.
//!
//! Medians over N runs (default 20), interleaved, and the ratios agent / runc. It needs
//! `runc` (Debian's package) and `/bin/busybox` (busybox-static).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use husk_protocol::{CreateContainer, ExecProcess, Rootfs, StdioConfig, StreamKind, UnixConnector};
use husk_runtime::agent::AgentClient;
use oci_spec::runtime::Spec;

fn spec(args: &[&str], rootfs: &Path) -> Spec {
    let mut spec = Spec::default();
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
    process.set_terminal(Some(false));
    spec.set_process(Some(process));
    let mut root = spec.root().clone().unwrap_or_default();
    root.set_path(rootfs.to_path_buf());
    spec.set_root(Some(root));
    spec
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn run() -> Result<(), String> {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20)
        .max(1);
    let rootfs = husk_tests::rootfs::busybox_rootfs().map_err(|e| e.0)?;
    let dir = std::env::temp_dir().join(format!("husk-bench-agent-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let result = bench(runs, &rootfs, &dir);
    let _ = Command::new("runc")
        .args(["--root"])
        .arg(dir.join("runc"))
        .args(["delete", "-f", "bench-exec"])
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn agent_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // target/<profile>/examples/bench-agent → target/<profile>/husk-agent
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("husk-agent"))
        .ok_or("no target directory")?;
    if !bin.exists() {
        return Err(format!(
            "{} is missing: cargo build --release -p husk-agent",
            bin.display()
        ));
    }
    Ok(bin)
}

fn bench(runs: usize, rootfs: &Path, dir: &Path) -> Result<(), String> {
    let socket = dir.join("agent.sock");
    let mut agent = Command::new(agent_binary()?)
        .arg("--listen")
        .arg(format!("unix:{}", socket.display()))
        .arg("--run-dir")
        .arg(dir.join("run"))
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let client = loop {
        match AgentClient::connect(Arc::new(UnixConnector(socket.clone()))) {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                let _ = agent.kill();
                return Err(format!("the agent never answered: {e}"));
            }
        }
    };
    let result = measure(runs, rootfs, dir, &client);
    let _ = agent.kill();
    let _ = agent.wait();
    result
}

fn measure(runs: usize, rootfs: &Path, dir: &Path, client: &AgentClient) -> Result<(), String> {
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(&bundle).map_err(|e| e.to_string())?;
    let write_spec = |args: &[&str]| -> Result<(), String> {
        let json = serde_json::to_vec(&spec(args, rootfs)).map_err(|e| e.to_string())?;
        std::fs::write(bundle.join("config.json"), json).map_err(|e| e.to_string())
    };
    let runc = |args: &[&str]| {
        let mut c = Command::new("runc");
        c.arg("--root").arg(dir.join("runc")).args(args);
        c
    };
    let e = |e: husk_runtime::agent::ClientError| e.to_string();
    let (mut agent_first, mut runc_first) = (Vec::new(), Vec::new());
    write_spec(&["echo", "hello"])?;
    for i in 0..runs {
        let id = format!("first-{i}");
        let out = client
            .open_stream(&id, None, StreamKind::Stdout)
            .map_err(e)?;
        let start = Instant::now();
        client
            .create_container(CreateContainer {
                container_id: id.clone(),
                spec: serde_json::to_value(spec(&["echo", "hello"], rootfs))
                    .map_err(|e| e.to_string())?,
                rootfs: Rootfs::Directory {
                    path: rootfs.to_path_buf(),
                    overlay: false,
                },
                stdio: StdioConfig {
                    stdout: true,
                    ..Default::default()
                },
            })
            .map_err(e)?;
        client.start_container(&id).map_err(e)?;
        let mut byte = [0u8; 1];
        (&out).read_exact(&mut byte).map_err(|e| e.to_string())?;
        agent_first.push(start.elapsed());
        client.wait(&id, None).map_err(e)?;
        client.remove_container(&id, false).map_err(e)?;

        let start = Instant::now();
        let mut child = runc(&["run", "-b"])
            .arg(&bundle)
            .arg(format!("runc-first-{i}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("runc: {e}"))?;
        let mut stdout = child.stdout.take().ok_or("no runc stdout")?;
        stdout
            .read_exact(&mut byte)
            .map_err(|e| format!("runc output: {e}"))?;
        runc_first.push(start.elapsed());
        child.wait().map_err(|e| e.to_string())?;
    }

    // Exec round trips into one running container each.
    let (mut agent_exec, mut runc_exec) = (Vec::new(), Vec::new());
    client
        .create_container(CreateContainer {
            container_id: "exec".into(),
            spec: serde_json::to_value(spec(&["sleep", "1000"], rootfs))
                .map_err(|e| e.to_string())?,
            rootfs: Rootfs::Directory {
                path: rootfs.to_path_buf(),
                overlay: false,
            },
            stdio: StdioConfig::default(),
        })
        .map_err(e)?;
    client.start_container("exec").map_err(e)?;
    write_spec(&["sleep", "1000"])?;
    let status = runc(&["run", "-d", "-b"])
        .arg(&bundle)
        .arg("bench-exec")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err("runc run -d failed".into());
    }
    let process = spec(&["true"], rootfs)
        .process()
        .clone()
        .ok_or("no process")?;
    for i in 0..runs {
        let exec_id = format!("e{i}");
        let start = Instant::now();
        client
            .exec(ExecProcess {
                container_id: "exec".into(),
                exec_id: exec_id.clone(),
                process: process.clone(),
                stdio: StdioConfig::default(),
            })
            .map_err(e)?;
        client.wait("exec", Some(&exec_id)).map_err(e)?;
        agent_exec.push(start.elapsed());

        let start = Instant::now();
        let status = runc(&["exec", "bench-exec", "true"])
            .status()
            .map_err(|e| e.to_string())?;
        runc_exec.push(start.elapsed());
        if !status.success() {
            return Err("runc exec failed".into());
        }
    }
    client.remove_container("exec", true).map_err(e)?;

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (af, rf) = (median(agent_first), median(runc_first));
    let (ae, re) = (median(agent_exec), median(runc_exec));
    println!(
        "husk-agent on the host vs runc {} runs each, interleaved, median:",
        runs
    );
    println!(
        "{:<28} {:>10} {:>10} {:>12}",
        "", "agent ms", "runc ms", "agent/runc"
    );
    println!(
        "{:<28} {:>10.2} {:>10.2} {:>12.2}",
        "create to first output",
        ms(af),
        ms(rf),
        ms(af) / ms(rf)
    );
    println!(
        "{:<28} {:>10.2} {:>10.2} {:>12.2}",
        "exec round trip (true)",
        ms(ae),
        ms(re),
        ms(ae) / ms(re)
    );
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("bench-agent: {e}");
        std::process::exit(1);
    }
}
