//! The agent suite: real containers from OCI specs in a busybox rootfs, driven by the
//! runtime's typed client. Layer 3 runs it against the agent as a host process (root,
//! Unix socket); layer 5 against the agent as PID 1 of a husk VM over vsock (the lab's
//! `agent` scenario sets `HUSK_AGENT_SUITE=vm`; see `common`).
//!
//! Cgroup v2 limits, stats and OOM events need a cgroup v2 hierarchy. The agent says in
//! its hello whether containers get cgroups; where they do not (this host's cgroups are
//! v1/hybrid), the cgroup tests check that the agent says why, instead of pretending,
//! and print that the limits themselves are tested in the VM.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{
    changed, collect, exec_script, json, run, run_on, run_value, snapshot, spec, writable,
    TestAgent,
};
use husk_protocol::{
    read_frame, write_frame, CreateContainer, ErrorKind, Event, ExecProcess, ExitStatus, Hello,
    HelloReply, StdioConfig, StreamKind,
};
use husk_runtime::agent::ClientError;
use husk_tests::process::processes_with;

fn agent_error(result: Result<impl std::fmt::Debug, ClientError>) -> husk_protocol::AgentError {
    match result {
        Err(ClientError::Agent(e)) => e,
        other => panic!("expected an error from the agent, got {other:?}"),
    }
}

#[test]
fn echo_with_exit_codes_and_separate_streams() {
    let agent = TestAgent::start("echo");
    let ok = run(
        &agent,
        "ok",
        spec(&["sh", "-c", "echo out; echo err >&2"]),
        None,
    );
    assert_eq!(ok.exit.status, ExitStatus::Code(0));
    assert_eq!(ok.stdout(), "out\n");
    assert_eq!(ok.stderr(), "err\n");
    let three = run(&agent, "three", spec(&["sh", "-c", "exit 3"]), None);
    assert_eq!(three.exit.status, ExitStatus::Code(3));
}

#[test]
fn ten_mib_through_stdin() {
    let agent = TestAgent::start("stdin");
    let data: Vec<u8> = (0..10u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let out = run(&agent, "cat", spec(&["sh", "-c", "wc -c; "]), Some(&data));
    assert_eq!(out.code(), 0, "stderr: {}", out.stderr());
    assert_eq!(out.stdout().trim(), (10u32 << 20).to_string());
    let echo = run(&agent, "cat2", spec(&["cat"]), Some(&data));
    assert!(
        echo.stdout == data,
        "cat gave back {} bytes, not the same 10 MiB",
        echo.stdout.len()
    );
}

#[test]
fn death_by_signal_is_reported() {
    let agent = TestAgent::start("signal");
    // Without a PID namespace of its own: as PID 1 of one, the shell would be immune to
    // signals sent from inside it.
    let mut spec = spec(&["sh", "-c", "kill -KILL $$"]);
    let mut linux = spec.linux().clone().expect("linux");
    let namespaces = linux
        .namespaces()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.typ() != oci_spec::runtime::LinuxNamespaceType::Pid)
        .collect();
    linux.set_namespaces(Some(namespaces));
    spec.set_linux(Some(linux));
    let out = run(&agent, "killed", spec, None);
    assert_eq!(out.exit.status, ExitStatus::Signal(9));
    assert_eq!(out.code(), 137);
}

#[test]
fn pid_1_hostname_and_mounts() {
    let agent = TestAgent::start("ns");
    let out = run(
        &agent,
        "ns",
        spec(&[
            "sh",
            "-c",
            "echo $$; hostname; grep -c ' /proc proc ' /proc/mounts; ls /",
        ]),
        None,
    );
    assert_eq!(out.code(), 0, "stderr: {}", out.stderr());
    let lines: Vec<&str> = out
        .stdout
        .split(|&b| b == b'\n')
        .map(|l| std::str::from_utf8(l).unwrap_or(""))
        .collect();
    assert_eq!(lines[0], "1", "echo $$ in the container: {}", out.stdout());
    assert_eq!(lines[1], "husk-test");
    assert_eq!(lines[2], "1", "/proc is mounted once: {}", out.stdout());
    assert!(
        out.stdout().contains("bin"),
        "the rootfs is the container's /: {}",
        out.stdout()
    );
}

#[test]
fn an_unprivileged_user_cannot_write_roots_file() {
    let agent = TestAgent::start("user");
    let mut spec = spec(&["sh", "-c", "id -u; echo x >> /etc/root-only && echo wrote"]);
    let mut process = spec.process().clone().expect("process");
    let mut user = process.user().clone();
    user.set_uid(1000);
    user.set_gid(1000);
    process.set_user(user);
    spec.set_process(Some(process));
    // A writable root, so the write fails for permissions, not for a read-only mount
    // (root writing here would change the rootfs the tests share; uid 1000 cannot).
    let mut root = spec.root().clone().expect("root");
    root.set_readonly(Some(false));
    spec.set_root(Some(root));
    let out = run(&agent, "user", spec, None);
    assert_eq!(out.stdout().lines().next(), Some("1000"));
    assert!(
        !out.stdout().contains("wrote"),
        "uid 1000 wrote a root-owned file"
    );
    assert!(
        out.stderr().contains("ermission denied"),
        "stderr: {}",
        out.stderr()
    );
}

#[test]
fn exec_into_a_running_container() {
    let agent = TestAgent::start("exec");
    let client = &agent.client;
    let out = collect(
        client
            .open_stream("c", None, StreamKind::Stdout)
            .expect("stream"),
    );
    client
        .create_container(CreateContainer {
            container_id: "c".into(),
            spec: json(&spec(&["sh", "-c", "echo started; sleep 30"])),
            rootfs: agent.rootfs(),
            stdio: StdioConfig {
                stdout: true,
                ..Default::default()
            },
        })
        .expect("create");
    client.start_container("c").expect("start");
    let exec_out = collect(
        client
            .open_stream("c", Some("e1"), StreamKind::Stdout)
            .expect("stream"),
    );
    let mut process = spec(&["x"]).process().clone().expect("process");
    process.set_args(Some(vec![
        "sh".into(),
        "-c".into(),
        "echo $$ > /dev/null; hostname; exit 5".into(),
    ]));
    client
        .exec(ExecProcess {
            container_id: "c".into(),
            exec_id: "e1".into(),
            process,
            stdio: StdioConfig {
                stdout: true,
                ..Default::default()
            },
        })
        .expect("exec");
    let exit = client.wait("c", Some("e1")).expect("wait for the exec");
    assert_eq!(exit.status, ExitStatus::Code(5));
    assert_eq!(
        String::from_utf8_lossy(&exec_out.join().expect("reader")),
        "husk-test\n"
    );
    client.signal("c", None, 9, false).expect("kill");
    assert_eq!(
        client.wait("c", None).expect("wait").status,
        ExitStatus::Signal(9)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.join().expect("reader")),
        "started\n"
    );
    client.remove_container("c", false).expect("remove");
}

#[test]
fn a_terminal_sees_a_tty_and_its_size() {
    let agent = TestAgent::start("tty");
    let client = &agent.client;
    let mut tty = client
        .open_stream("t", None, StreamKind::Terminal)
        .expect("terminal stream");
    let mut spec = spec(&[
        "sh",
        "-c",
        "read line; test -t 0 && echo tty=yes; stty size",
    ]);
    let mut process = spec.process().clone().expect("process");
    process.set_terminal(Some(true));
    spec.set_process(Some(process));
    client
        .create_container(CreateContainer {
            container_id: "t".into(),
            spec: json(&spec),
            rootfs: agent.rootfs(),
            stdio: StdioConfig {
                terminal: true,
                ..Default::default()
            },
        })
        .expect("create");
    client.start_container("t").expect("start");
    client.resize_terminal("t", None, 33, 101).expect("resize");
    tty.write_all(b"go\n").expect("typing");
    let exit = client.wait("t", None).expect("wait");
    assert_eq!(exit.status, ExitStatus::Code(0));
    tty.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut screen = Vec::new();
    let _ = tty.read_to_end(&mut screen);
    let screen = String::from_utf8_lossy(&screen);
    assert!(
        screen.contains("tty=yes"),
        "the process has no terminal: {screen:?}"
    );
    assert!(
        screen.contains("33 101"),
        "the resize did not reach the terminal: {screen:?}"
    );
    client.remove_container("t", false).expect("remove");
}

#[test]
fn remove_leaves_no_process_or_mount() {
    let agent = TestAgent::start("remove");
    let client = &agent.client;
    client
        .create_container(CreateContainer {
            container_id: "gone".into(),
            spec: json(&spec(&["sleep", "1234"])),
            rootfs: agent.rootfs(),
            stdio: StdioConfig::default(),
        })
        .expect("create");
    client.start_container("gone").expect("start");
    let container_dir = agent.run_dir.join("gone");
    let look = agent.look(&[&container_dir]);
    assert!(
        !look.processes_with("sleep 1234").is_empty(),
        "the container never ran: {look:?}"
    );
    assert!(!look.existing.is_empty(), "no {}", container_dir.display());
    let e = agent_error(client.remove_container("gone", false));
    assert_eq!(e.kind, ErrorKind::WrongState, "{e}");
    client
        .remove_container("gone", true)
        .expect("remove --force");
    let look = agent.look(&[&container_dir]);
    assert!(
        look.processes_with("sleep 1234").is_empty(),
        "a process outlived its container: {look:?}"
    );
    let dir = container_dir.display().to_string();
    assert!(
        look.mounts_with(&dir).is_empty(),
        "mounts outlived the container: {:?}",
        look.mounts_with(&dir)
    );
    assert!(look.existing.is_empty(), "{dir} is left");
    if agent.cgroups().is_ok() {
        let cgroup = std::path::Path::new("/sys/fs/cgroup/husk/gone");
        let look = agent.look(&[cgroup]);
        assert!(look.existing.is_empty(), "the cgroup {cgroup:?} is left");
    }
}

#[test]
fn killing_the_agent_leaves_nothing_running() {
    let mut agent = TestAgent::start("kill9");
    let client = &agent.client;
    client
        .create_container(CreateContainer {
            container_id: "orphan".into(),
            spec: json(&spec(&["sleep", "4321"])),
            rootfs: agent.rootfs(),
            stdio: StdioConfig::default(),
        })
        .expect("create");
    client.start_container("orphan").expect("start");
    assert!(!agent.look(&[]).processes_with("sleep 4321").is_empty());
    // SIGKILL to the process that was started: the host agent's outer process, or the VMM.
    agent.kill();
    if agent.in_vm {
        // The VM is gone with husk: nothing answers on its vsock socket any more.
        assert!(agent.connector.connect().is_err(), "the VM outlived husk");
        return;
    }
    // On the host: the PID namespace died with its PID 1, and its mounts with it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !processes_with("sleep 4321").is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        processes_with("sleep 4321").is_empty(),
        "a container process outlived the agent"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let run_dir = agent.run_dir.display().to_string();
    assert!(
        !mounts.contains(&run_dir),
        "a container mount reached the host"
    );
}

/// Issue 8's fault test: the agent (or the VMM holding it) dies while a call is in
/// flight. The waiting call fails with "disconnected" instead of hanging, later calls
/// fail the same way, and nothing of the container is left.
#[test]
fn a_call_in_flight_when_the_agent_dies_fails_cleanly() {
    let mut agent = TestAgent::start("kill9-wait");
    let client = &agent.client;
    client
        .create_container(CreateContainer {
            container_id: "waited".into(),
            spec: json(&spec(&["sleep", "4322"])),
            rootfs: agent.rootfs(),
            stdio: StdioConfig::default(),
        })
        .expect("create");
    client.start_container("waited").expect("start");
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    // A second control connection, owned by the waiting thread.
    let waiter = husk_runtime::agent::AgentClient::connect(agent.connector.clone())
        .expect("a second connection");
    std::thread::spawn(move || {
        let _ = done_tx.send(waiter.wait("waited", None));
    });
    // Time for the wait to go out (one frame written); it stays pending while the
    // agent answers other calls.
    std::thread::sleep(Duration::from_millis(300));
    client.ping().expect("ping while the wait is pending");
    assert!(done_rx.try_recv().is_err(), "the wait returned early");
    let client = husk_runtime::agent::AgentClient::connect(agent.connector.clone())
        .expect("a third connection, for after");
    agent.kill();
    let result = done_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the pending wait returns once the agent is gone");
    let error = result.expect_err("a wait on a dead agent cannot succeed");
    assert!(matches!(error, ClientError::Disconnected), "{error}");
    assert!(
        matches!(client.ping(), Err(ClientError::Disconnected)),
        "a call after the agent died"
    );
    if !agent.in_vm {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !processes_with("sleep 4322").is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            processes_with("sleep 4322").is_empty(),
            "a container process outlived the agent"
        );
    }
}

/// A spec running `args` with `resources` (a spec's linux.resources, as JSON).
fn limited(args: &[&str], resources: serde_json::Value) -> serde_json::Value {
    let mut value = json(&spec(args));
    value["linux"]["resources"] = resources;
    value
}

/// Where containers get no cgroup, checks that the agent says, for a container with
/// `spec`'s limits, that they are not applied and why, and returns true: the limits
/// themselves cannot be tested here.
fn limits_unavailable(agent: &TestAgent, id: &str, spec: &serde_json::Value) -> bool {
    let Err(why) = agent.cgroups() else {
        return false;
    };
    assert!(!agent.in_vm, "the agent in the VM has no cgroups: {why}");
    let events = agent.client.subscribe();
    agent
        .client
        .create_container(CreateContainer {
            container_id: id.into(),
            spec: spec.clone(),
            rootfs: agent.rootfs(),
            stdio: StdioConfig::default(),
        })
        .expect("create");
    let said = events
        .recv_timeout(Duration::from_secs(5))
        .into_iter()
        .chain(events.try_iter())
        .any(|event| {
            matches!(&event, Event::Log { message, .. }
                if message.contains(id) && message.contains("resource limits not applied"))
        });
    assert!(
        said,
        "the agent did not say that {id}'s limits are not applied"
    );
    agent.client.remove_container(id, true).expect("remove");
    eprintln!("not applied here ({why}): the limits are tested in the VM (layer 5)");
    true
}

#[test]
fn stats_of_a_running_container() {
    let agent = TestAgent::start("stats");
    let client = &agent.client;
    client
        .create_container(CreateContainer {
            container_id: "s".into(),
            spec: json(&spec(&[
                "sh",
                "-c",
                "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 30",
            ])),
            rootfs: agent.rootfs(),
            stdio: StdioConfig::default(),
        })
        .expect("create");
    if let Err(why) = agent.cgroups() {
        let e = agent_error(client.stats("s"));
        assert_eq!(e.kind, ErrorKind::Unsupported, "{e}");
        assert!(e.message.contains("cgroup"), "{e}");
        client.remove_container("s", true).expect("remove");
        assert!(!agent.in_vm, "the agent in the VM has no cgroups: {why}");
        eprintln!("no stats here ({why}): stats are tested in the VM (layer 5)");
        return;
    }
    client.start_container("s").expect("start");
    // The loop takes a while in the lab: wait until it has used some CPU time.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let stats = loop {
        let stats = client.stats("s").expect("stats");
        if stats.cpu_usage_usec.unwrap_or(0) > 0 || std::time::Instant::now() > deadline {
            break stats;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(stats.cpu_usage_usec.unwrap_or(0) > 0, "{stats:?}");
    assert!(stats.memory_current.unwrap_or(0) > 0, "{stats:?}");
    assert!(!stats.memory_stat.is_empty(), "{stats:?}");
    assert!(stats.pids_current.unwrap_or(0) >= 1, "{stats:?}");
    assert!(stats.io_read_bytes.is_some(), "{stats:?}");
    assert_eq!(
        client.pids("s").expect("pids").len() as u64,
        stats.pids_current.unwrap_or(0)
    );
    client.remove_container("s", true).expect("remove");
}

#[test]
fn a_memory_limit_oom_kills_and_the_event_arrives() {
    let agent = TestAgent::start("oom");
    let limit = 32u64 << 20;
    // `tail` keeps all of a file without newlines in memory.
    let hog = limited(
        &["tail", "/dev/zero"],
        serde_json::json!({"memory": {"limit": limit, "swap": limit}}),
    );
    if limits_unavailable(&agent, "oom", &hog) {
        return;
    }
    let client = &agent.client;
    let events = client.subscribe();
    client
        .create_container(CreateContainer {
            container_id: "oom".into(),
            spec: hog,
            rootfs: agent.rootfs(),
            stdio: StdioConfig::default(),
        })
        .expect("create");
    assert_eq!(client.stats("oom").expect("stats").memory_max, Some(limit));
    client.start_container("oom").expect("start");
    let exit = client.wait("oom", None).expect("wait");
    assert_eq!(
        exit.status,
        ExitStatus::Signal(9),
        "tail was not OOM-killed"
    );
    let oom = events
        .iter()
        .take(1000)
        .find(|e| matches!(e, Event::Oom { container_id } if container_id == "oom"));
    assert!(oom.is_some(), "no OOM event for the container");
    let kills = client.stats("oom").expect("stats").memory_oom_kills;
    assert!(kills >= Some(1), "memory.events counts {kills:?} OOM kills");
    client.remove_container("oom", false).expect("remove");
    client.ping().expect("the agent still serves");
}

#[test]
fn a_pids_limit_stops_a_fork_bomb() {
    let agent = TestAgent::start("pids");
    // Sixty-four sleepers asked for, sixteen pids allowed (the shell is one of them).
    let bomb = limited(
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 64 ]; do sleep 300 & i=$((i+1)); echo $i; done; echo all-forked",
        ],
        serde_json::json!({"pids": {"limit": 16}}),
    );
    if limits_unavailable(&agent, "bomb", &bomb) {
        return;
    }
    // The shell, PID 1 of the container, gets EAGAIN from fork at the limit and gives up;
    // the kernel then ends every process of the container's PID namespace.
    let out = run_value(&agent, "bomb", bomb, None);
    let forked = out
        .stdout()
        .lines()
        .filter_map(|l| l.parse::<u32>().ok())
        .max()
        .unwrap_or(0);
    assert!(
        !out.stdout().contains("all-forked"),
        "64 sleepers despite the limit"
    );
    assert_eq!(
        forked, 15,
        "sleepers forked before the limit (with the shell: 16)"
    );
    assert!(out.stderr().contains("fork"), "stderr: {}", out.stderr());
    // The sandbox is unharmed: other containers still run.
    let after = run(&agent, "after", spec(&["echo", "still here"]), None);
    assert_eq!(after.stdout(), "still here\n");
}

// ---- bad input: each an error reply, and the agent keeps serving ----------------------

fn create_fails(
    agent: &TestAgent,
    id: &str,
    spec: serde_json::Value,
    rootfs: husk_protocol::Rootfs,
) -> husk_protocol::AgentError {
    let e = agent_error(agent.client.create_container(CreateContainer {
        container_id: id.into(),
        spec,
        rootfs,
        stdio: StdioConfig::default(),
    }));
    agent.client.ping().expect("the agent still serves");
    e
}

#[test]
fn bad_rootfs() {
    let agent = TestAgent::start("bad-rootfs");
    let relative = husk_protocol::Rootfs::Directory {
        path: "rootfs".into(),
        overlay: false,
    };
    let e = create_fails(&agent, "r1", json(&spec(&["true"])), relative);
    assert!(e.message.contains("rootfs"), "{e}");
    let missing = husk_protocol::Rootfs::Directory {
        path: "/nonexistent/rootfs".into(),
        overlay: false,
    };
    let e = create_fails(&agent, "r2", json(&spec(&["true"])), missing);
    assert!(e.message.contains("/nonexistent/rootfs"), "{e}");
}

#[test]
fn missing_executable_is_named() {
    let agent = TestAgent::start("noexec");
    let e = create_fails(
        &agent,
        "x",
        json(&spec(&["no-such-program"])),
        agent.rootfs(),
    );
    assert!(e.message.contains("no-such-program"), "{e}");
    let container_dir = agent.run_dir.join("x");
    let look = agent.look(&[&container_dir]);
    assert!(look.existing.is_empty(), "{container_dir:?} is left");
}

#[test]
fn a_mount_through_a_symlink_does_not_escape() {
    let agent = TestAgent::start("escape");
    // The rootfs has /evil -> /etc: absolute, so it would name the agent's own /etc if
    // followed outside the rootfs. A writable root, so the mount point can be made.
    let mut spec = spec(&["sh", "-c", "ls /evil > /dev/null; echo ok"]);
    let mut root = spec.root().clone().expect("root");
    root.set_readonly(Some(false));
    spec.set_root(Some(root));
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    let mut tmpfs = oci_spec::runtime::Mount::default();
    tmpfs.set_destination("/evil/husk-escape".into());
    tmpfs.set_typ(Some("tmpfs".into()));
    tmpfs.set_source(Some("tmpfs".into()));
    mounts.push(tmpfs);
    spec.set_mounts(Some(mounts));
    let client = &agent.client;
    let result = client.create_container(CreateContainer {
        container_id: "evil".into(),
        spec: json(&spec),
        rootfs: agent.rootfs_with_evil_symlink(),
        stdio: StdioConfig::default(),
    });
    // Either refused or confined to the rootfs's own /etc: never the agent's.
    let escaped = std::path::Path::new("/etc/husk-escape");
    let look = agent.look(&[escaped]);
    if result.is_ok() {
        client.remove_container("evil", true).expect("remove");
    }
    assert!(
        look.existing.is_empty(),
        "the mount escaped to the agent's /etc"
    );
    // The container's mounts stay in its own mount namespace, wherever they went.
    let leaked = look.mounts_with("husk-escape");
    assert!(leaked.is_empty(), "a mount leaked to the agent: {leaked:?}");
}

#[test]
fn unknown_container_and_duplicate_ids() {
    let agent = TestAgent::start("ids");
    let e = agent_error(agent.client.start_container("nope"));
    assert_eq!(e.kind, ErrorKind::NotFound);
    agent
        .client
        .create_container(CreateContainer {
            container_id: "dup".into(),
            spec: json(&spec(&["true"])),
            rootfs: agent.rootfs(),
            stdio: StdioConfig::default(),
        })
        .expect("create");
    let e = create_fails(&agent, "dup", json(&spec(&["true"])), agent.rootfs());
    assert_eq!(e.kind, ErrorKind::AlreadyExists);
    let e = agent_error(agent.client.start_container("../x"));
    assert_eq!(e.kind, ErrorKind::NotFound);
    agent.client.remove_container("dup", true).expect("remove");
}

#[test]
fn version_mismatch_and_bad_frames() {
    let agent = TestAgent::start("frames");
    let connector = agent.connector.clone();
    let mut conn = connector.connect().expect("connect");
    write_frame(&mut conn, &Hello::Control { version: 999 }).expect("hello");
    let reply: HelloReply = read_frame(&mut conn).expect("reply");
    assert_eq!(
        reply.result.expect_err("a mismatch").kind,
        ErrorKind::VersionMismatch
    );

    // Garbage instead of a hello: an error reply, and the agent goes on.
    let mut conn = connector.connect().expect("connect");
    conn.write_all(&5u32.to_le_bytes()).expect("len");
    conn.write_all(b"junk!").expect("body");
    let reply: HelloReply = read_frame(&mut conn).expect("reply");
    assert_eq!(
        reply.result.expect_err("garbage").kind,
        ErrorKind::BadRequest
    );

    // A malformed request on a good control connection: error with id 0, still serving.
    let mut conn = connector.connect().expect("connect");
    write_frame(
        &mut conn,
        &Hello::Control {
            version: husk_protocol::PROTOCOL_VERSION,
        },
    )
    .expect("hello");
    let _: HelloReply = read_frame(&mut conn).expect("reply");
    write_frame(
        &mut conn,
        &serde_json::json!({"id": 4, "call": {"call": "launch_missiles"}}),
    )
    .expect("request");
    let answer: husk_protocol::ServerMessage = read_frame(&mut conn).expect("answer");
    match answer {
        husk_protocol::ServerMessage::Response { id, result } => {
            assert_eq!(id, 4);
            assert_eq!(
                result.expect_err("unknown call").kind,
                ErrorKind::BadRequest
            );
        }
        other => panic!("expected a response, got {other:?}"),
    }
    // An oversized frame: refused, and other connections are unaffected.
    conn.write_all(&u32::MAX.to_le_bytes()).expect("len");
    agent.client.ping().expect("the agent still serves");
}

#[test]
fn an_unknown_namespace_type_is_named() {
    let agent = TestAgent::start("bad-ns");
    let mut value = json(&spec(&["true"]));
    value["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}, {"type": "bogus"}]);
    let e = create_fails(&agent, "ns", value, agent.rootfs());
    assert_eq!(e.kind, ErrorKind::InvalidSpec, "{e}");
    assert!(e.message.contains("bogus"), "{e}");
}

#[test]
fn an_unknown_seccomp_action_is_named() {
    let agent = TestAgent::start("bad-seccomp");
    let mut value = json(&spec(&["true"]));
    value["linux"]["seccomp"] = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_EXPLODE"}]
    });
    let e = create_fails(&agent, "sc", value, agent.rootfs());
    assert_eq!(e.kind, ErrorKind::InvalidSpec, "{e}");
    assert!(e.message.contains("SCMP_ACT_EXPLODE"), "{e}");
}

#[test]
fn a_seccomp_profile_applies_in_the_container() {
    let agent = TestAgent::start("seccomp");
    let mut value = json(&spec(&["sh", "-c", "mkdir /tmp/x; echo rc=$?"]));
    value["linux"]["seccomp"] = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    });
    let out = run_value(&agent, "sc", value, None);
    assert_eq!(out.exit.status, ExitStatus::Code(0));
    assert_eq!(out.stdout(), "rc=1\n");
    assert!(out.stderr().contains("not permitted"), "{}", out.stderr());
}

// ---- a writable overlay over a shared rootfs ------------------------------------------

#[test]
fn an_overlay_takes_the_writes_and_the_source_stays_unchanged() {
    let agent = TestAgent::start("overlay");
    let before = agent.shared_source().map(|source| snapshot(&source));
    // A new file, an existing one changed and another removed.
    let out = run_on(
        &agent,
        "writer",
        json(&writable(spec(&[
            "sh",
            "-c",
            "echo new > /new-file && echo changed >> /etc/root-only && rm /etc/group && \
             cat /new-file /etc/root-only && test ! -e /etc/group && echo removed",
        ]))),
        agent.shared_rootfs(true),
        None,
    );
    assert_eq!(out.code(), 0, "stderr: {}", out.stderr());
    assert_eq!(out.stdout(), "new\nroot's\nchanged\nremoved\n");

    // root.readonly still holds over an overlay, and the next overlay starts clean.
    let out = run_on(
        &agent,
        "reader",
        json(&spec(&[
            "sh",
            "-c",
            "test -e /new-file && echo leaked; echo x > /x; echo rc=$?; cat /etc/root-only",
        ])),
        agent.shared_rootfs(true),
        None,
    );
    assert_eq!(out.stdout(), "rc=1\nroot's\n", "stderr: {}", out.stderr());
    assert!(out.stderr().contains("Read-only"), "{}", out.stderr());

    // The source as a container without an overlay sees it (the drive, in the VM) ...
    let out = run_on(
        &agent,
        "plain",
        json(&spec(&[
            "sh",
            "-c",
            "test -e /new-file && echo leaked; cat /etc/root-only /etc/group",
        ])),
        agent.shared_rootfs(false),
        None,
    );
    assert_eq!(
        out.stdout(),
        "root's\nroot:x:0:\nuser:x:1000:\n",
        "stderr: {}",
        out.stderr()
    );
    // ... and on the host, byte for byte.
    if let (Some(before), Some(source)) = (before, agent.shared_source()) {
        let changed = changed(&before, &snapshot(&source));
        assert!(changed.is_empty(), "the source changed: {changed:?}");
    }
}

#[test]
fn two_overlays_on_one_source_see_only_their_own_writes() {
    let agent = TestAgent::start("overlay-two");
    let before = agent.shared_source().map(|source| snapshot(&source));
    let client = &agent.client;
    for id in ["a", "b"] {
        client
            .create_container(CreateContainer {
                container_id: id.into(),
                spec: json(&writable(spec(&["sleep", "1000"]))),
                rootfs: agent.shared_rootfs(true),
                stdio: StdioConfig::default(),
            })
            .expect("create");
        client.start_container(id).expect("start");
    }
    // Both write before either reads.
    for id in ["a", "b"] {
        let script = format!("echo {id} > /who && echo {id} >> /etc/root-only");
        let out = exec_script(&agent, id, "write", &script);
        assert_eq!(out.code(), 0, "{id}: {}", out.stderr());
    }
    for id in ["a", "b"] {
        let out = exec_script(&agent, id, "read", "cat /who /etc/root-only");
        assert_eq!(out.code(), 0, "{id}: {}", out.stderr());
        assert_eq!(out.stdout(), format!("{id}\nroot's\n{id}\n"), "in {id}");
    }
    for id in ["a", "b"] {
        client.remove_container(id, true).expect("remove");
    }
    if let (Some(before), Some(source)) = (before, agent.shared_source()) {
        let changed = changed(&before, &snapshot(&source));
        assert!(changed.is_empty(), "the source changed: {changed:?}");
    }
}

#[test]
fn removing_an_overlay_container_unmounts_it() {
    let agent = TestAgent::start("overlay-remove");
    let client = &agent.client;
    client
        .create_container(CreateContainer {
            container_id: "ov".into(),
            spec: json(&writable(spec(&["sleep", "2345"]))),
            rootfs: agent.shared_rootfs(true),
            stdio: StdioConfig::default(),
        })
        .expect("create");
    client.start_container("ov").expect("start");
    let container_dir = agent.run_dir.join("ov");
    let upper = container_dir.join("overlay/upper");
    let merged = container_dir.join("overlay/merged").display().to_string();
    let look = agent.look(&[&upper]);
    let mounts = look.mounts_with(&merged);
    assert!(
        mounts.len() == 1 && mounts[0].contains(" - overlay "),
        "no overlay on {merged}: {mounts:?}"
    );
    assert_eq!(look.existing, std::slice::from_ref(&upper), "no upper dir");

    client.remove_container("ov", true).expect("remove --force");
    let look = agent.look(&[&upper, &container_dir]);
    let dir = container_dir.display().to_string();
    assert!(
        look.mounts_with(&dir).is_empty(),
        "mounts outlived the container: {:?}",
        look.mounts_with(&dir)
    );
    assert!(look.existing.is_empty(), "left: {:?}", look.existing);

    // A create that fails after the overlay is mounted leaves nothing either.
    let e = create_fails(
        &agent,
        "bad",
        json(&spec(&["no-such-program"])),
        agent.shared_rootfs(true),
    );
    assert!(e.message.contains("no-such-program"), "{e}");
    let bad_dir = agent.run_dir.join("bad");
    let look = agent.look(&[&bad_dir]);
    let dir = bad_dir.display().to_string();
    assert!(
        look.mounts_with(&dir).is_empty(),
        "a failed create left mounts: {:?}",
        look.mounts_with(&dir)
    );
    assert!(look.existing.is_empty(), "a failed create left {dir}");
}
