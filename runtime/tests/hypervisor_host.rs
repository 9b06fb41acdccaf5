//! The host backend (layer 4): a real agent as PID 1 of its own namespaces, as root.

use std::path::PathBuf;

use husk_protocol::{CreateContainer, Rootfs, StdioConfig};
use husk_runtime::agent::AgentClient;
use husk_runtime::hypervisor::host::{default_agent, HostBackend, HostConfig};
use husk_runtime::hypervisor::{Hypervisor, HypervisorError, Kind};
use husk_tests::process::processes_with;
use husk_tests::rootfs::busybox_rootfs;
use husk_tests::scratch_dir;

#[test]
fn a_sandbox_runs_a_container_and_stop_leaves_nothing() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the host backend creates containers and must run as root"
    );
    let dir = scratch_dir("host-backend").expect("scratch");
    let agent = default_agent().expect("a husk-agent binary");
    let mut sandbox = HostBackend::new(HostConfig {
        agent,
        dir: dir.join("sandbox"),
    });
    assert_eq!(sandbox.kind(), Kind::Host);
    assert!(!sandbox.capabilities().isolated_by_vm);
    sandbox.start().expect("start");
    assert_eq!(sandbox.pids().len(), 1);
    // Whoever can reach the agent's socket controls the sandbox: its directory is the
    // owner's alone.
    let address = sandbox.agent_address().expect("an address");
    let husk_runtime::hypervisor::AgentAddress::Unix { path } = address else {
        panic!("the host backend's agent has a Unix socket: {address:?}");
    };
    let dir = path.parent().expect("a directory");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir)
            .expect("the socket directory")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o700, "{}", dir.display());
    let client =
        AgentClient::connect(sandbox.agent_connector().expect("connector")).expect("client");
    client.ping().expect("ping");
    let mut spec = oci_spec::runtime::Spec::default();
    let mut process = spec.process().clone().expect("process");
    process.set_args(Some(vec!["sleep".into(), "7531".into()]));
    spec.set_process(Some(process));
    client
        .create_container(CreateContainer {
            container_id: "c".into(),
            spec: serde_json::to_value(&spec).expect("spec"),
            rootfs: Rootfs::Directory {
                path: busybox_rootfs().expect("rootfs"),
                overlay: false,
            },
            stdio: StdioConfig::default(),
        })
        .expect("create");
    client.start_container("c").expect("start");
    assert_eq!(processes_with("sleep 7531").len(), 1);
    sandbox.stop().expect("stop");
    sandbox.stop().expect("a second stop is harmless");
    assert!(sandbox.pids().is_empty());
    // The namespace's processes are killed by the kernel as its PID 1 dies: give it a
    // moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !processes_with("sleep 7531").is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        processes_with("sleep 7531").len(),
        0,
        "a container outlived its sandbox"
    );
    assert!(matches!(
        sandbox.agent_connector(),
        Err(HypervisorError::NotRunning)
    ));
}

#[test]
fn a_missing_agent_binary_is_an_error() {
    let dir = scratch_dir("host-backend-missing").expect("scratch");
    let mut sandbox = HostBackend::new(HostConfig {
        agent: PathBuf::from("/nonexistent/husk-agent"),
        dir: dir.join("sandbox"),
    });
    let e = sandbox.start().expect_err("no agent");
    assert!(matches!(e, HypervisorError::Start(_)), "{e}");
}

#[test]
fn an_agent_that_exits_at_once_is_reported() {
    let dir = scratch_dir("host-backend-exits").expect("scratch");
    let mut sandbox = HostBackend::new(HostConfig {
        agent: PathBuf::from("/bin/false"),
        dir: dir.join("sandbox"),
    });
    let e = sandbox.start().expect_err("the agent exits");
    assert!(matches!(e, HypervisorError::EndedEarly(_)), "{e}");
    assert!(e.to_string().contains("exit status: 1"), "{e}");
    assert!(sandbox.pids().is_empty(), "a failed start leaves nothing");
}

/// What a process holds that a leak would grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    fds: usize,
    threads: usize,
    mounts: usize,
    sockets: usize,
}

fn held_now() -> Held {
    let count = |dir: &str| std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
    Held {
        fds: count("/proc/self/fd"),
        threads: count("/proc/self/task"),
        mounts: std::fs::read_to_string("/proc/self/mountinfo")
            .map(|m| m.lines().count())
            .unwrap_or(0),
        sockets: count("/run/husk/.sockets"),
    }
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Runs one sandbox through its life in this process: start, a container that runs
/// `true` to its exit, stop.
fn one_sandbox(dir: &std::path::Path, rootfs: &std::path::Path, n: usize) {
    use husk_runtime::sandbox::{PreparedSandbox, SandboxOptions};
    let options = SandboxOptions {
        hypervisor: Kind::Host,
        dir: dir.join(format!("sandbox-{n}")),
        kernel: PathBuf::new(),
        initrd: PathBuf::new(),
        memory_mib: 64,
        vcpus: 1,
        hostname: Some(format!("loop-{n}")),
        netns: None,
        dns_servers: Vec::new(),
        dns_search: Vec::new(),
    };
    let sandbox = PreparedSandbox::new(&options)
        .and_then(PreparedSandbox::start)
        .expect("a sandbox");
    let mut spec = oci_spec::runtime::Spec::default();
    let mut process = spec.process().clone().expect("process");
    process.set_args(Some(vec!["true".into()]));
    spec.set_process(Some(process));
    let agent = sandbox.agent();
    agent
        .create_container(CreateContainer {
            container_id: "c".into(),
            spec: serde_json::to_value(&spec).expect("spec"),
            rootfs: Rootfs::Directory {
                path: rootfs.to_owned(),
                overlay: true,
            },
            stdio: StdioConfig::default(),
        })
        .expect("create");
    agent.start_container("c").expect("start");
    let exit = agent.wait("c", None).expect("wait");
    assert_eq!(exit.status.shell_code(), 0);
    sandbox.stop().expect("stop");
}

/// DESIGN's fault tests: sandboxes started and destroyed in a loop in one process leave
/// no growth in its fds, threads, mounts or sandbox sockets, and its memory settles.
#[test]
fn fifty_sandboxes_in_a_loop_leave_nothing_growing() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the host backend creates containers and must run as root"
    );
    let dir = scratch_dir("host-loop").expect("scratch");
    let rootfs = busybox_rootfs().expect("rootfs");
    // Warm-up: the first sandboxes create what stays (the logger, caches, the socket root).
    for n in 0..3 {
        one_sandbox(dir.path(), &rootfs, n);
    }
    let before = held_now();
    let rss_before = rss_kib();
    for n in 3..53 {
        one_sandbox(dir.path(), &rootfs, n);
    }
    let after = held_now();
    let rss_after = rss_kib();
    println!(
        "50 sandboxes: {before:?} before, {after:?} after; RSS {rss_before} KiB before, \
         {rss_after} KiB after"
    );
    // Other tests of this binary run at the same time and hold fds, threads, mounts and
    // sockets of their own for a while: no count may end above where it started, once
    // those are done.
    let grew = |now: &Held| {
        now.fds > before.fds
            || now.threads > before.threads
            || now.mounts > before.mounts
            || now.sockets > before.sockets
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut now = after;
    while grew(&now) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        now = held_now();
    }
    assert!(
        !grew(&now),
        "something grew over 50 sandboxes: {before:?} -> {now:?}"
    );
    // The allocator keeps some memory; 50 leaked sandboxes would keep far more than this.
    assert!(
        rss_after < rss_before + 4096,
        "RSS grew by {} KiB over 50 sandboxes",
        rss_after.saturating_sub(rss_before)
    );
}

/// A directory shared into a host sandbox reaches its agent's mount namespace, and no
/// other sandbox's: each agent receives mounts only into its own shared directory.
#[test]
fn a_shared_directory_reaches_its_own_sandbox_only() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the host backend creates containers and must run as root"
    );
    let dir = scratch_dir("host-shared").expect("scratch");
    let agent = default_agent().expect("a husk-agent binary");
    let sandbox = |name: &str| {
        let mut backend = HostBackend::new(HostConfig {
            agent: agent.clone(),
            dir: dir.join(name),
        });
        backend.start().expect("start");
        backend
    };
    // `first` exists before `second` starts: `second`'s mount namespace is a copy made
    // while `first`'s shared directory was already a shared mount.
    let mut first = sandbox("first");
    let mut second = sandbox("second");
    let source = dir.join("source");
    std::fs::create_dir_all(&source).expect("source");
    std::fs::write(source.join("marker"), "shared").expect("marker");
    let target = first.share_directory(&source, "c1").expect("share");
    let mounted_in = |backend: &HostBackend| {
        let pid = backend.pids()[0];
        let table = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
        table.contains(&*target.to_string_lossy())
    };
    assert!(
        mounted_in(&first),
        "the first sandbox's agent lacks {}",
        target.display()
    );
    assert!(
        !mounted_in(&second),
        "{} reached the second sandbox",
        target.display()
    );
    first.unshare_directory("c1").expect("unshare");
    assert!(!mounted_in(&first), "{} is still mounted", target.display());
    first.stop().expect("stop");
    second.stop().expect("stop");
}
