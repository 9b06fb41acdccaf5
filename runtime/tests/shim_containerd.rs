//! `containerd-shim-husk-v2` under a real, private containerd (layer 4, host backend),
//! driven with the unmodified `ctr`. As root, with Debian's containerd.

use std::path::PathBuf;

use husk_tests::containerd::{husk_shim_env, husk_state_root, Containerd, BUSYBOX_IMAGE};
use husk_tests::process::processes_with;
use husk_tests::{scratch_dir, ScratchDir};

const RUNTIME: &str = "io.containerd.husk.v2";

/// The husk state root of a test: short (it holds sockets), and its own.
fn state_root(name: &str) -> String {
    husk_state_root(name)
}

/// containerd with husk's shim on its PATH and a private husk configuration.
fn containerd_with_husk(name: &str) -> (Containerd, ScratchDir) {
    assert!(
        rustix::process::geteuid().is_root(),
        "containerd runs containers and must run as root"
    );
    let scratch = scratch_dir(name).expect("scratch");
    let image = husk_tests::rootfs::busybox_image(scratch.path()).expect("the busybox image");
    let env = husk_shim_env(name, scratch.path()).expect("husk's shim");
    let containerd = Containerd::start_with_env(name, &env).expect("containerd");
    containerd.import(&image).expect("import");
    (containerd, scratch)
}

#[test]
fn ctr_run_returns_output_and_the_exit_status() {
    let (containerd, scratch) = containerd_with_husk("shim-run");
    let id = format!("shim-run-{}", std::process::id());
    let run = containerd
        .ctr(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            BUSYBOX_IMAGE,
            &id,
            "sh",
            "-c",
            "echo hello; echo err >&2; exit 3",
        ])
        .expect("ctr run");
    assert_eq!(
        run.code(),
        Some(3),
        "{}\n--- containerd ---\n{}",
        run.describe(),
        containerd.log()
    );
    assert_eq!(run.stdout, "hello\n", "{}", run.describe());
    assert!(run.stderr.contains("err"), "{}", run.describe());
    // The shim logs into the bundle's `log` FIFO, which containerd copies into its log.
    let log = containerd.log();
    assert!(
        log.contains("the containers run in namespaces on this host"),
        "{log}"
    );
    // --rm deleted the task and the container; nothing of the shim or its sandbox is left.
    assert_no_leftovers(&containerd, "shim-run");
    drop(scratch);
}

#[test]
fn exec_ps_and_kill_of_a_running_task() {
    let (containerd, scratch) = containerd_with_husk("shim-exec");
    let id = format!("shim-exec-{}", std::process::id());
    let ok = |args: &[&str]| ctr_ok(&containerd, args);
    ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        BUSYBOX_IMAGE,
        &id,
        "sleep",
        "7392",
    ]);
    let exec = containerd
        .ctr(&[
            "task",
            "exec",
            "--exec-id",
            "e1",
            &id,
            "sh",
            "-c",
            "echo inside; exit 4",
        ])
        .expect("ctr task exec");
    assert_eq!(exec.code(), Some(4), "{}", exec.describe());
    assert_eq!(exec.stdout, "inside\n", "{}", exec.describe());
    let ps = ok(&["task", "ps", &id]);
    assert!(
        ps.stdout.lines().count() >= 2,
        "a header and the sleep: {}",
        ps.describe()
    );
    let tasks = ok(&["task", "ls"]);
    assert!(tasks.stdout.contains("RUNNING"), "{}", tasks.describe());
    kill_and_remove(&containerd, &id);
    assert!(
        processes_with("sleep 7392").is_empty(),
        "{:?}",
        processes_with("sleep 7392")
    );
    assert_no_leftovers(&containerd, "shim-exec");
    drop(scratch);
}

/// Runs `ctr` and expects it to succeed.
fn ctr_ok(containerd: &Containerd, args: &[&str]) -> husk_tests::process::Run {
    let run = containerd
        .ctr(args)
        .unwrap_or_else(|e| panic!("{e}\n--- containerd ---\n{}", containerd.log()));
    assert_eq!(
        run.code(),
        Some(0),
        "{}\n--- containerd ---\n{}",
        run.describe(),
        containerd.log()
    );
    run
}

/// The status `ctr task ls` shows for a task (RUNNING, STOPPED, ...).
fn task_status(containerd: &Containerd, id: &str) -> Option<String> {
    let tasks = ctr_ok(containerd, &["task", "ls"]).stdout;
    tasks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.first() == Some(&id)).then(|| fields.last().unwrap_or(&"").to_string())
    })
}

/// Waits (bounded) until a task shows `status` (`None`: until there is no such task).
fn wait_for_task_status<'a>(containerd: &Containerd, id: &str, status: impl Into<Option<&'a str>>) {
    let status = status.into();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let now = task_status(containerd, id);
        if now.as_deref() == status {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "task {id} never became {status:?} (it is {now:?})\n{}",
            containerd.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `ctr run -d` of a container of pod `pod` (the pod's sandbox container when its id is
/// the pod's), with the annotations CRI gives.
fn run_in_pod(containerd: &Containerd, pod: &str, id: &str, command: &[&str]) {
    let kind = match id == pod {
        true => "sandbox",
        false => "container",
    };
    let type_annotation = format!("io.kubernetes.cri.container-type={kind}");
    let pod_annotation = format!("io.kubernetes.cri.sandbox-id={pod}");
    let mut args = vec![
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--annotation",
        &type_annotation,
        "--annotation",
        &pod_annotation,
        BUSYBOX_IMAGE,
        id,
    ];
    args.extend_from_slice(command);
    ctr_ok(containerd, &args);
}

/// The shim processes of this containerd.
fn shims(containerd: &Containerd) -> Vec<(i32, String)> {
    let address = containerd.address().to_string_lossy().into_owned();
    processes_with(&address)
        .into_iter()
        .filter(|(_, cmdline)| cmdline.contains("containerd-shim-husk-v2"))
        .collect()
}

#[test]
fn two_containers_of_a_pod_share_one_shim_and_sandbox() {
    let (containerd, scratch) = containerd_with_husk("shim-pod");
    let pod = format!("shim-pod-{}", std::process::id());
    let app = format!("shim-app-{}", std::process::id());
    run_in_pod(&containerd, &pod, &pod, &["sleep", "7393"]);
    run_in_pod(&containerd, &pod, &app, &["sleep", "7394"]);
    assert_eq!(shims(&containerd).len(), 1, "{:?}", shims(&containerd));
    // One sandbox: the app's exec sees the pod's sandbox container's process too (the host
    // backend's agent runs both in its PID namespace, where `ps` of the exec lists both).
    let exec = containerd
        .ctr(&[
            "task",
            "exec",
            "--exec-id",
            "e1",
            &app,
            "sh",
            "-c",
            "echo in app; exit 6",
        ])
        .expect("ctr task exec");
    assert_eq!(exec.code(), Some(6), "{}", exec.describe());
    assert_eq!(exec.stdout, "in app\n", "{}", exec.describe());
    // The app goes; the pod stays.
    kill_and_remove(&containerd, &app);
    assert_eq!(task_status(&containerd, &pod).as_deref(), Some("RUNNING"));
    assert_eq!(shims(&containerd).len(), 1, "{:?}", shims(&containerd));
    assert!(processes_with("sleep 7394").is_empty());
    // The last one's deletion stops the sandbox and the shim.
    kill_and_remove(&containerd, &pod);
    assert_no_leftovers(&containerd, "shim-pod");
    drop(scratch);
}

#[test]
fn a_killed_shim_ends_its_tasks_and_delete_cleans_up() {
    let (containerd, scratch) = containerd_with_husk("shim-kill");
    let pod = format!("shim-kpod-{}", std::process::id());
    let app = format!("shim-kapp-{}", std::process::id());
    run_in_pod(&containerd, &pod, &pod, &["sleep", "7395"]);
    run_in_pod(&containerd, &pod, &app, &["sleep", "7396"]);
    let shims_now = shims(&containerd);
    assert_eq!(shims_now.len(), 1, "{shims_now:?}");
    // The sandbox's sockets live outside the state root; the cleanup must find them too.
    let state = state_root("shim-kill");
    let pod_state = format!("{state}/.containerd/husk-test/{pod}/state.json");
    let pod_state = std::fs::read_to_string(&pod_state).expect("the pod's state");
    let sockets = socket_dir_in(&pod_state).expect("a socket directory in the state");
    assert!(sockets.is_dir(), "{}", sockets.display());
    let shim = rustix::process::Pid::from_raw(shims_now[0].0).expect("a pid");
    rustix::process::kill_process(shim, rustix::process::Signal::KILL).expect("kill -9");
    // containerd notices the shim's end, cleans up through the `delete` subcommand (which
    // must succeed: containerd logs it otherwise) and forgets both tasks.
    for id in [&app, &pod] {
        wait_for_task_status(&containerd, id, None);
        ctr_ok(&containerd, &["container", "rm", id]);
    }
    let log = containerd.log();
    assert!(!log.contains("failed to clean up"), "{log}");
    assert!(!log.contains("failed to delete"), "{log}");
    assert!(!sockets.exists(), "{} is left", sockets.display());
    assert_no_leftovers(&containerd, "shim-kill");
    drop(scratch);
}

#[test]
fn a_dead_sandbox_stops_every_task_of_its_pod() {
    let (containerd, scratch) = containerd_with_husk("shim-dead");
    let pod = format!("shim-dpod-{}", std::process::id());
    let app = format!("shim-dapp-{}", std::process::id());
    run_in_pod(&containerd, &pod, &pod, &["sleep", "7398"]);
    run_in_pod(&containerd, &pod, &app, &["sleep", "7399"]);
    // The sandbox is the host agent the shim started (`husk-agent ... --isolate`).
    let state = state_root("shim-dead");
    let agents: Vec<(i32, String)> = processes_with(&state)
        .into_iter()
        .filter(|(_, cmdline)| cmdline.contains("--isolate"))
        .collect();
    assert_eq!(agents.len(), 1, "{agents:?}");
    // containerd's events, to see the exits it was told of.
    let events_out = scratch.join("events.txt");
    let mut events = containerd
        .ctr_command(&["events"])
        .stdout(std::fs::File::create(&events_out).expect("events file"))
        .spawn()
        .expect("ctr events");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let agent = rustix::process::Pid::from_raw(agents[0].0).expect("a pid");
    rustix::process::kill_process(agent, rustix::process::Signal::KILL).expect("kill -9");
    for id in [&app, &pod] {
        wait_for_task_status(&containerd, id, "STOPPED");
    }
    let _ = events.kill();
    let _ = events.wait();
    let events = std::fs::read_to_string(&events_out).unwrap_or_default();
    for id in [&app, &pod] {
        let exit = format!("\"container_id\":\"{id}\"");
        assert!(
            events.lines().any(|line| line.contains("/tasks/exit")
                && line.contains(&exit)
                && line.contains("\"exit_status\":137")),
            "no exit with status 137 for {id}:\n{events}"
        );
        ctr_ok(&containerd, &["task", "delete", id]);
        ctr_ok(&containerd, &["container", "rm", id]);
    }
    assert_no_leftovers(&containerd, "shim-dead");
    drop(scratch);
}

#[test]
fn a_restarted_containerd_finds_its_running_tasks() {
    let (mut containerd, scratch) = containerd_with_husk("shim-restart");
    let pod = format!("shim-rpod-{}", std::process::id());
    let app = format!("shim-rapp-{}", std::process::id());
    run_in_pod(&containerd, &pod, &pod, &["sleep", "7400"]);
    run_in_pod(&containerd, &pod, &app, &["sleep", "7401"]);
    containerd.restart().expect("containerd restarts");
    for id in [&pod, &app] {
        let status = task_status(&containerd, id);
        assert_eq!(status.as_deref(), Some("RUNNING"), "{}", containerd.log());
    }
    let exec = containerd
        .ctr(&[
            "task",
            "exec",
            "--exec-id",
            "e1",
            &app,
            "sh",
            "-c",
            "exit 8",
        ])
        .expect("ctr task exec");
    assert_eq!(exec.code(), Some(8), "{}", exec.describe());
    // The shim tells the new containerd of exits: its events reach `ctr events`.
    let events_out = scratch.join("events.txt");
    let mut events = containerd
        .ctr_command(&["events"])
        .stdout(std::fs::File::create(&events_out).expect("events file"))
        .spawn()
        .expect("ctr events");
    std::thread::sleep(std::time::Duration::from_millis(300));
    ctr_ok(&containerd, &["task", "kill", "--signal", "SIGKILL", &app]);
    wait_for_task_status(&containerd, &app, "STOPPED");
    let exit = format!("\"container_id\":\"{app}\"");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let told = loop {
        let events = std::fs::read_to_string(&events_out).unwrap_or_default();
        if events
            .lines()
            .any(|l| l.contains("/tasks/exit") && l.contains(&exit))
        {
            break true;
        }
        if std::time::Instant::now() >= deadline {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let _ = events.kill();
    let _ = events.wait();
    assert!(told, "no /tasks/exit for {app}: {}", containerd.log());
    for id in [&app, &pod] {
        if id == &pod {
            ctr_ok(&containerd, &["task", "kill", "--signal", "SIGKILL", id]);
            wait_for_task_status(&containerd, id, "STOPPED");
        }
        ctr_ok(&containerd, &["task", "delete", id]);
        ctr_ok(&containerd, &["container", "rm", id]);
    }
    assert_no_leftovers(&containerd, "shim-restart");
    drop(scratch);
}

/// The sandbox socket directory (`/run/husk/.sockets/<hash>`) a state file names.
fn socket_dir_in(state: &str) -> Option<PathBuf> {
    const ROOT: &str = "/run/husk/.sockets/";
    let start = state.find(ROOT)?;
    let rest = &state[start + ROOT.len()..];
    let name: String = rest.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
    (!name.is_empty()).then(|| PathBuf::from(ROOT).join(name))
}

/// Kills a task, waits until it stopped, deletes it and its container.
fn kill_and_remove(containerd: &Containerd, id: &str) {
    ctr_ok(containerd, &["task", "kill", "--signal", "SIGKILL", id]);
    wait_for_task_status(containerd, id, "STOPPED");
    ctr_ok(containerd, &["task", "delete", id]);
    ctr_ok(containerd, &["container", "rm", id]);
}

/// No shim, no process of a sandbox, no state under the test's state root and no mount of
/// containerd's left; then the state root goes.
fn assert_no_leftovers(containerd: &Containerd, test: &str) {
    let state = &state_root(test);
    // A shim that containerd ran for a cleanup (`delete`) may still be on its way out.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !shims(containerd).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(shims(containerd).is_empty(), "{:?}", shims(containerd));
    assert!(
        processes_with(state).is_empty(),
        "{:?}",
        processes_with(state)
    );
    let containers = PathBuf::from(state).join(".containerd");
    let left: Vec<_> = std::fs::read_dir(&containers)
        .map(|dir| {
            dir.filter_map(Result::ok)
                .flat_map(|ns| {
                    std::fs::read_dir(ns.path())
                        .into_iter()
                        .flatten()
                        .filter_map(Result::ok)
                        .map(|e| e.path())
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "state left: {left:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let dir = containerd
        .address()
        .parent()
        .map(|d| d.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ours: Vec<&str> = mounts.lines().filter(|l| l.contains(&dir)).collect();
    assert!(ours.is_empty(), "mounts left: {ours:#?}");
    let _ = std::fs::remove_dir_all(state);
}

#[test]
fn runtime_config_path_overrides_the_configuration() {
    let (containerd, scratch) = containerd_with_husk("shim-opts");
    let run = |name: &str, config: &str| {
        let path = scratch.join(format!("{name}.toml"));
        std::fs::write(&path, config).expect("options file");
        let path = path.to_string_lossy().into_owned();
        let id = format!("shim-opts-{name}-{}", std::process::id());
        let args = [
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--runtime-config-path",
            &path,
            BUSYBOX_IMAGE,
            &id,
            "true",
        ];
        containerd.ctr(&args).expect("ctr")
    };
    // The file's keys win over HUSK_CONFIG's (which says host): this one's kernel is used.
    let builtin = run(
        "builtin",
        "hypervisor = \"builtin\"\nkernel = \"/no/such/vmlinux\"\n",
    );
    assert_ne!(builtin.code(), Some(0), "{}", builtin.describe());
    assert!(
        builtin.stderr.contains("/no/such/vmlinux"),
        "{}",
        builtin.describe()
    );
    let bad = run("bad", "memory_mib = 64\nno_such_key = 1\n");
    assert_ne!(bad.code(), Some(0), "{}", bad.describe());
    assert!(bad.stderr.contains("no_such_key"), "{}", bad.describe());
    let good = run("good", "memory_mib = 64\n");
    assert_eq!(good.code(), Some(0), "{}", good.describe());
    for id in ["builtin", "bad"] {
        let id = format!("shim-opts-{id}-{}", std::process::id());
        let _ = containerd.ctr(&["container", "rm", &id]);
    }
    assert_no_leftovers(&containerd, "shim-opts");
    drop(scratch);
}

/// Whether containers here get a cgroup v2 (a pure cgroup v2 host with controllers); the
/// host backend's containers have no cgroup otherwise (this kind of machine: v1 hybrid).
fn host_has_cgroup_v2() -> bool {
    std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
        .is_ok_and(|controllers| !controllers.trim().is_empty())
}

#[test]
fn metrics_of_a_running_task() {
    let (containerd, scratch) = containerd_with_husk("shim-stats");
    let id = format!("shim-stats-{}", std::process::id());
    ctr_ok(
        &containerd,
        &[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            BUSYBOX_IMAGE,
            &id,
            "sleep",
            "7397",
        ],
    );
    let metrics = containerd.ctr(&["task", "metrics", &id]).expect("ctr");
    if host_has_cgroup_v2() {
        assert_eq!(metrics.code(), Some(0), "{}", metrics.describe());
        assert!(
            metrics.stdout.contains("pids.current"),
            "{}",
            metrics.describe()
        );
    } else {
        println!(
            "this host has no cgroup v2 with controllers, so the host backend's containers \
             get no cgroup: checking that metrics say so (the lab checks them)"
        );
        // containerd keeps a metrics error to its log ("no metrics received" to ctr).
        assert_ne!(metrics.code(), Some(0), "{}", metrics.describe());
        let log = containerd.log();
        assert!(
            log.lines()
                .any(|l| l.contains("collecting metrics") && l.contains("cgroup v2 is not usable")),
            "{log}"
        );
    }
    // Pause is not something husk does, and says so.
    let pause = containerd.ctr(&["task", "pause", &id]).expect("ctr");
    assert_ne!(pause.code(), Some(0), "{}", pause.describe());
    assert!(
        pause.stderr.contains("not implemented"),
        "{}",
        pause.describe()
    );
    kill_and_remove(&containerd, &id);
    assert_no_leftovers(&containerd, "shim-stats");
    drop(scratch);
}

#[test]
fn ctr_run_with_a_terminal() {
    use std::io::Read;
    let (containerd, scratch) = containerd_with_husk("shim-tty");
    let id = format!("shim-tty-{}", std::process::id());
    let (master, slave) = husk_tests::process::pty().expect("a pty");
    let mut child = containerd
        .ctr_command(&[
            "run",
            "-t",
            "--rm",
            "--runtime",
            RUNTIME,
            BUSYBOX_IMAGE,
            &id,
            "sh",
            "-c",
            "[ -t 0 ] && [ -t 1 ] && echo on a terminal; exit 5",
        ])
        .stdin(slave.try_clone().expect("dup"))
        .stdout(slave.try_clone().expect("dup"))
        .stderr(slave)
        .spawn()
        .expect("ctr run -t");
    let status = child.wait().expect("wait");
    let mut text = String::new();
    let mut master = std::fs::File::from(master);
    let mut buf = [0u8; 4096];
    // Everything the container wrote is in the pty's buffer; the slave is closed, so
    // reading ends with EIO after it.
    while let Ok(n) = master.read(&mut buf) {
        if n == 0 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(
        text.contains("on a terminal"),
        "{text:?}\n{}",
        containerd.log()
    );
    assert_eq!(status.code(), Some(5), "{text:?}");
    assert_no_leftovers(&containerd, "shim-tty");
    drop(scratch);
}
