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
