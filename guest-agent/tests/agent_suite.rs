//! Layer 3: the agent as a host process (root, Unix socket), driven by the runtime's
//! typed client, creating real containers from OCI specs in a busybox rootfs.
//!
//! This host's cgroups are v1/hybrid, so the agent gets no cgroup v2 subtree here:
//! memory/pids limits, OOM events and stats are tested in the nested lab (layer 5), and
//! `stats_say_why_there_are_none` checks that the agent says so instead of pretending.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{collect, host_mounts_with, json, processes_with, rootfs, run, spec, HostAgent};
use husk_protocol::Connector;
use husk_protocol::{
    read_frame, write_frame, CreateContainer, ErrorKind, ExecProcess, ExitStatus, Hello,
    HelloReply, StdioConfig, StreamKind, UnixConnector,
};
use husk_runtime::agent::ClientError;

fn agent_error(result: Result<impl std::fmt::Debug, ClientError>) -> husk_protocol::AgentError {
    match result {
        Err(ClientError::Agent(e)) => e,
        other => panic!("expected an error from the agent, got {other:?}"),
    }
}

#[test]
fn echo_with_exit_codes_and_separate_streams() {
    let agent = HostAgent::start("echo");
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
    let agent = HostAgent::start("stdin");
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
    let agent = HostAgent::start("signal");
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
    let agent = HostAgent::start("ns");
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
    let agent = HostAgent::start("user");
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
    let agent = HostAgent::start("exec");
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
            rootfs: rootfs(),
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
    let agent = HostAgent::start("tty");
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
            rootfs: rootfs(),
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
    let agent = HostAgent::start("remove");
    let client = &agent.client;
    client
        .create_container(CreateContainer {
            container_id: "gone".into(),
            spec: json(&spec(&["sleep", "1234"])),
            rootfs: rootfs(),
            stdio: StdioConfig::default(),
        })
        .expect("create");
    client.start_container("gone").expect("start");
    assert!(
        !processes_with("sleep 1234").is_empty(),
        "the container never ran"
    );
    let e = agent_error(client.remove_container("gone", false));
    assert_eq!(e.kind, ErrorKind::WrongState, "{e}");
    client
        .remove_container("gone", true)
        .expect("remove --force");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        processes_with("sleep 1234").is_empty(),
        "a process outlived its container"
    );
    assert!(host_mounts_with(&agent.run_dir.display().to_string()).is_empty());
    assert!(
        !agent.run_dir.join("gone").exists(),
        "the container's directory is left"
    );
}

#[test]
fn stats_say_why_there_are_none() {
    let agent = HostAgent::start("stats");
    let client = &agent.client;
    client
        .create_container(CreateContainer {
            container_id: "s".into(),
            spec: json(&spec(&["true"])),
            rootfs: rootfs(),
            stdio: StdioConfig::default(),
        })
        .expect("create");
    let e = agent_error(client.stats("s"));
    assert_eq!(e.kind, ErrorKind::Unsupported, "{e}");
    assert!(e.message.contains("cgroup"), "{e}");
    client.remove_container("s", true).expect("remove");
}

// ---- bad input: each an error reply, and the agent keeps serving ----------------------

fn create_fails(
    agent: &HostAgent,
    id: &str,
    spec: oci_spec::runtime::Spec,
    rootfs: husk_protocol::Rootfs,
) -> husk_protocol::AgentError {
    let e = agent_error(agent.client.create_container(CreateContainer {
        container_id: id.into(),
        spec: json(&spec),
        rootfs,
        stdio: StdioConfig::default(),
    }));
    agent.client.ping().expect("the agent still serves");
    e
}

#[test]
fn bad_rootfs() {
    let agent = HostAgent::start("bad-rootfs");
    let relative = husk_protocol::Rootfs::Directory {
        path: "rootfs".into(),
    };
    let e = create_fails(&agent, "r1", spec(&["true"]), relative);
    assert!(e.message.contains("rootfs"), "{e}");
    let missing = husk_protocol::Rootfs::Directory {
        path: "/nonexistent/rootfs".into(),
    };
    let e = create_fails(&agent, "r2", spec(&["true"]), missing);
    assert!(e.message.contains("/nonexistent/rootfs"), "{e}");
}

#[test]
fn missing_executable_is_named() {
    let agent = HostAgent::start("noexec");
    let e = create_fails(&agent, "x", spec(&["no-such-program"]), rootfs());
    assert!(e.message.contains("no-such-program"), "{e}");
    assert!(!agent.run_dir.join("x").exists());
}

#[test]
fn a_mount_through_a_symlink_does_not_escape() {
    let agent = HostAgent::start("escape");
    let dir = agent.dir.join("evil-rootfs");
    // A copy of the rootfs with /evil -> /etc (absolute: it would point at the host's
    // /etc if followed outside the rootfs).
    let status = std::process::Command::new("cp")
        .args(["-a"])
        .arg(husk_tests::rootfs::busybox_rootfs().expect("rootfs"))
        .arg(&dir)
        .status()
        .expect("cp");
    assert!(status.success());
    std::os::unix::fs::symlink("/etc", dir.join("evil")).expect("symlink");
    let before = std::fs::read_dir("/etc").expect("host /etc").count();
    let mut spec = spec(&["sh", "-c", "ls /evil > /dev/null; echo ok"]);
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
        rootfs: husk_protocol::Rootfs::Directory { path: dir.clone() },
        stdio: StdioConfig::default(),
    });
    // Either refused or confined to the rootfs's own /etc: never the host's.
    if result.is_ok() {
        client.remove_container("evil", true).expect("remove");
    }
    assert!(
        !std::path::Path::new("/etc/husk-escape").exists(),
        "the mount escaped to the host's /etc"
    );
    assert_eq!(
        std::fs::read_dir("/etc").expect("host /etc").count(),
        before
    );
    assert!(
        host_mounts_with("husk-escape").is_empty(),
        "a mount leaked into the host"
    );
}

#[test]
fn unknown_container_and_duplicate_ids() {
    let agent = HostAgent::start("ids");
    let e = agent_error(agent.client.start_container("nope"));
    assert_eq!(e.kind, ErrorKind::NotFound);
    agent
        .client
        .create_container(CreateContainer {
            container_id: "dup".into(),
            spec: json(&spec(&["true"])),
            rootfs: rootfs(),
            stdio: StdioConfig::default(),
        })
        .expect("create");
    let e = create_fails(&agent, "dup", spec(&["true"]), rootfs());
    assert_eq!(e.kind, ErrorKind::AlreadyExists);
    let e = agent_error(agent.client.start_container("../x"));
    assert_eq!(e.kind, ErrorKind::NotFound);
    agent.client.remove_container("dup", true).expect("remove");
}

#[test]
fn version_mismatch_and_bad_frames() {
    let agent = HostAgent::start("frames");
    let connector = UnixConnector(agent.socket.clone());
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
    let agent = HostAgent::start("bad-ns");
    let mut value = json(&spec(&["true"]));
    value["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}, {"type": "bogus"}]);
    let e = agent_error(agent.client.create_container(CreateContainer {
        container_id: "ns".into(),
        spec: value,
        rootfs: rootfs(),
        stdio: StdioConfig::default(),
    }));
    assert_eq!(e.kind, ErrorKind::InvalidSpec, "{e}");
    assert!(e.message.contains("bogus"), "{e}");
    agent.client.ping().expect("the agent still serves");
}

#[test]
fn an_unknown_seccomp_action_is_named() {
    let agent = HostAgent::start("bad-seccomp");
    let mut value = json(&spec(&["true"]));
    value["linux"]["seccomp"] = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_EXPLODE"}]
    });
    let e = agent_error(agent.client.create_container(CreateContainer {
        container_id: "sc".into(),
        spec: value,
        rootfs: rootfs(),
        stdio: StdioConfig::default(),
    }));
    assert_eq!(e.kind, ErrorKind::InvalidSpec, "{e}");
    assert!(e.message.contains("SCMP_ACT_EXPLODE"), "{e}");
    agent.client.ping().expect("the agent still serves");
}

#[test]
fn a_seccomp_profile_applies_in_the_container() {
    let agent = HostAgent::start("seccomp");
    let mut value = json(&spec(&["sh", "-c", "mkdir /tmp/x; echo rc=$?"]));
    value["linux"]["seccomp"] = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    });
    let client = &agent.client;
    let out = collect(
        client
            .open_stream("sc", None, StreamKind::Stdout)
            .expect("stream"),
    );
    let err = collect(
        client
            .open_stream("sc", None, StreamKind::Stderr)
            .expect("stream"),
    );
    client
        .create_container(CreateContainer {
            container_id: "sc".into(),
            spec: value,
            rootfs: rootfs(),
            stdio: StdioConfig {
                stdout: true,
                stderr: true,
                ..Default::default()
            },
        })
        .expect("create");
    client.start_container("sc").expect("start");
    assert_eq!(
        client.wait("sc", None).expect("wait").status,
        ExitStatus::Code(0)
    );
    let (out, err) = (out.join().expect("reader"), err.join().expect("reader"));
    assert_eq!(String::from_utf8_lossy(&out), "rc=1\n");
    assert!(
        String::from_utf8_lossy(&err).contains("not permitted"),
        "{}",
        String::from_utf8_lossy(&err)
    );
    client.remove_container("sc", false).expect("remove");
}
