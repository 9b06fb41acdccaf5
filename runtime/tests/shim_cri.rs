//! husk through containerd's CRI plugin, end to end (layer 4, host backend): a CRI
//! client (husk_tests::cri) drives a private containerd as a kubelet would, with the
//! calls that run a pod: RunPodSandbox, CreateContainer, StartContainer, ExecSync,
//! ContainerStatus, StopContainer, RemoveContainer, StopPodSandbox, RemovePodSandbox.
//! The same flow runs first with runc, containerd's own runtime, which checks the client
//! and the harness, then with husk. As root, with Debian's containerd and runc.
//!
//! The steps are printed as they run (`cargo test -- --nocapture` shows them; a failure
//! shows them anyway), and every failure says which step failed, with containerd's log.

use std::path::Path;
use std::time::{Duration, Instant};

use husk_tests::containerd::{
    husk_shim_env, husk_state_root, pause_image, Containerd, BUSYBOX_IMAGE, CNI_GATEWAY,
    HUSK_HANDLER, RUNC_HANDLER,
};
use husk_tests::cri::{api, container_state_name, pod_state_name, CriClient};
use husk_tests::process::processes_with;
use husk_tests::{scratch_dir, Error, ScratchDir};

/// How long a test waits for something that the runtime does by itself (a container's
/// exit, a shim's): far more than it takes, and still a bound.
const WAIT: Duration = Duration::from_secs(60);

/// The bound on one ExecSync.
const EXEC_TIMEOUT: Duration = Duration::from_secs(30);

/// One run of the flow.
struct Case {
    /// The test's name: containerd's directory, the pod's name, husk's state root.
    name: &'static str,
    /// The CRI runtime handler.
    handler: &'static str,
    /// The shim binary that containerd starts for the handler.
    shim: &'static str,
    /// With a second, long-running container in the pod (one shim for both).
    several: bool,
    /// A number unique to the test, in its containers' command lines, to find their
    /// processes (tests run concurrently, each with its own containerd).
    marker: &'static str,
}

/// containerd with its CRI plugin, the two images imported, and a CRI client. The
/// fields drop in order: containerd (and every shim) before husk's state root goes.
struct Setup {
    cri: CriClient,
    containerd: Containerd,
    logs: std::path::PathBuf,
    husk_state: Option<StateRoot>,
    _scratch: ScratchDir,
}

/// husk's state root for the test; removed when dropped, whether the test passed or not.
struct StateRoot(String);

impl Drop for StateRoot {
    fn drop(&mut self) {
        // Best effort: a leftover directory under /tmp is harmless.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Setup {
    fn new(case: &Case) -> Setup {
        Setup::start(case, false)
    }

    /// With `cni`, pods that do not use the host's network get the CNI network of
    /// [`Containerd::start_cri_with_cni`].
    fn start(case: &Case, cni: bool) -> Setup {
        assert!(
            rustix::process::geteuid().is_root(),
            "containerd runs containers and must run as root"
        );
        let scratch = scratch_dir(case.name).expect("scratch");
        let busybox = husk_tests::rootfs::busybox_image(scratch.path()).expect("the busybox image");
        let pause = pause_image(scratch.path()).expect("the pause image");
        let (env, husk_state) = match case.handler {
            HUSK_HANDLER => (
                husk_shim_env(case.name, scratch.path()).expect("husk's shim"),
                Some(StateRoot(husk_state_root(case.name))),
            ),
            _ => (Vec::new(), None),
        };
        let containerd = match cni {
            true => Containerd::start_cri_with_cni(case.name, &env),
            false => Containerd::start_cri(case.name, &env),
        }
        .expect("containerd with CRI");
        for image in [&pause, &busybox] {
            containerd
                .import_cri(image)
                .unwrap_or_else(|e| panic!("{e}\n--- containerd ---\n{}", containerd.log()));
        }
        let cri = CriClient::connect(&containerd.address())
            .unwrap_or_else(|e| panic!("{e}\n--- containerd ---\n{}", containerd.log()));
        let logs = scratch.join("pod-logs");
        std::fs::create_dir_all(&logs).expect("the pods' log directory");
        Setup {
            cri,
            containerd,
            logs,
            husk_state,
            _scratch: scratch,
        }
    }

    /// What a failure message adds: the end of containerd's log and the containers'
    /// logs.
    fn context(&self) -> String {
        let log = self.containerd.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        let mut text = format!("--- containerd log (end) ---\n{tail}\n");
        for entry in walk(&self.logs) {
            let content = std::fs::read_to_string(&entry).unwrap_or_default();
            text.push_str(&format!("--- {} ---\n{content}\n", entry.display()));
        }
        text
    }

    /// The result of `step`, or a panic that says which step failed and why.
    fn ok<T>(&self, step: &str, result: Result<T, Error>) -> T {
        result.unwrap_or_else(|e| panic!("step `{step}` failed: {e}\n{}", self.context()))
    }

    /// Waits (bounded by [`WAIT`]) until `probe` gives a value.
    fn wait_for<T>(&self, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(value) = probe() {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {} s\n{}",
                WAIT.as_secs(),
                self.context()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// ExecSync that must succeed as a call; returns (exit code, stdout, stderr).
    fn exec(&self, id: &str, cmd: &[&str]) -> (i32, String, String) {
        let r = self.ok(
            &format!("ExecSync {cmd:?}"),
            self.cri.exec_sync(id, cmd, EXEC_TIMEOUT),
        );
        (
            r.exit_code,
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
        )
    }

    /// Waits until the container has written /tmp/ready: its shell has set up what the
    /// test relies on (a fifo, a trap).
    fn wait_ready(&self, id: &str, name: &str) {
        self.wait_for(&format!("{name} ready"), || {
            let r = self
                .cri
                .exec_sync(id, &["cat", "/tmp/ready"], EXEC_TIMEOUT)
                .ok()?;
            (r.exit_code == 0).then_some(())
        });
    }

    fn state(&self, id: &str) -> api::ContainerStatus {
        self.ok("ContainerStatus", self.cri.container_status(id))
    }

    /// The shim processes of this containerd (their command line names its socket).
    fn shims(&self, binary: &str) -> Vec<(i32, String)> {
        let address = self.containerd.address().to_string_lossy().into_owned();
        processes_with(&address)
            .into_iter()
            .filter(|(_, cmdline)| cmdline.contains(binary))
            .collect()
    }
}

/// Every file under `dir` (not the directories), recursively; none if it is missing.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => files.extend(walk(&path)),
            _ => files.push(path),
        }
    }
    files
}

/// The mount points at or under `dir`.
fn mounts_under(dir: &str) -> Vec<String> {
    let inside = format!("{}/", dir.trim_end_matches('/'));
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| *p == dir || p.starts_with(&inside))
        .map(str::to_owned)
        .collect()
}

fn is(state: i32, expected: api::ContainerState) -> bool {
    state == i32::from(expected)
}

/// The pod's life, as a kubelet drives it, with the checks of each step.
fn pod_lifecycle(case: &Case) {
    let s = Setup::new(case);
    let step = |text: &str| eprintln!("[{}] {text}", case.name);

    step("Version");
    let version = s.ok("Version", s.cri.version());
    assert_eq!(version.runtime_name, "containerd", "{version:?}");
    assert_eq!(version.runtime_api_version, "v1", "{version:?}");

    step("RunPodSandbox (host network)");
    let uid = format!("{}-{}", case.name, std::process::id());
    let pod_config = husk_tests::cri::host_network_pod(case.name, &uid, &s.logs);
    let pod = s.ok(
        "RunPodSandbox",
        s.cri.run_pod_sandbox(&pod_config, case.handler),
    );
    let status = s.ok("PodSandboxStatus", s.cri.pod_sandbox_status(&pod));
    assert_eq!(
        status.state,
        i32::from(api::PodSandboxState::SandboxReady),
        "the pod is {}",
        pod_state_name(status.state)
    );
    let pods = s.ok("ListPodSandbox", s.cri.list_pod_sandboxes());
    assert!(
        pods.iter()
            .any(|p| p.id == pod && p.runtime_handler == case.handler),
        "pod {pod} with runtime handler {} is not listed: {pods:?}",
        case.handler
    );

    // The main container waits on a fifo, so that the test decides when it exits (by
    // itself, with code 7) while it answers execs until then.
    step("CreateContainer + StartContainer: main");
    let main_script = format!(
        ": main {}; mkfifo /tmp/go || exit 1; echo ready >/tmp/ready; read line </tmp/go; exit 7",
        case.marker
    );
    let main_config = husk_tests::cri::container(
        "main",
        BUSYBOX_IMAGE,
        &["sh", "-c", &main_script],
        &[("WHO", "main")],
    );
    let main = s.ok(
        "CreateContainer main",
        s.cri.create_container(&pod, &main_config, &pod_config),
    );
    s.ok("StartContainer main", s.cri.start_container(&main));
    let status = s.state(&main);
    assert!(
        is(status.state, api::ContainerState::ContainerRunning),
        "main is {}: {status:?}",
        container_state_name(status.state)
    );
    s.wait_ready(&main, "main");

    step("ExecSync: echo hello");
    let (code, stdout, stderr) = s.exec(&main, &["echo", "hello"]);
    assert_eq!((code, stdout.as_str(), stderr.as_str()), (0, "hello\n", ""));
    step("ExecSync: exit 3, with the container's environment and stderr");
    let (code, stdout, stderr) = s.exec(&main, &["sh", "-c", "echo $WHO; echo oops >&2; exit 3"]);
    assert_eq!(
        (code, stdout.as_str(), stderr.as_str()),
        (3, "main\n", "oops\n")
    );

    let second = case.several.then(|| {
        // It ends on SIGTERM with code 0 (a SIGKILL would give 137): StopContainer's
        // stop signal reaches it.
        step("CreateContainer + StartContainer: second, in the same pod");
        let script = format!(
            "trap 'exit 0' TERM; echo ready >/tmp/ready; while :; do sleep {} & wait $!; done",
            case.marker
        );
        let config = husk_tests::cri::container(
            "second",
            BUSYBOX_IMAGE,
            &["sh", "-c", &script],
            &[("WHO", "second")],
        );
        let second = s.ok(
            "CreateContainer second",
            s.cri.create_container(&pod, &config, &pod_config),
        );
        s.ok("StartContainer second", s.cri.start_container(&second));
        s.wait_ready(&second, "second");

        step("ListContainers: both running; ExecSync in each");
        let listed = s.ok("ListContainers", s.cri.list_containers(Some(&pod)));
        for id in [&main, &second] {
            assert!(
                listed
                    .iter()
                    .any(|c| &c.id == id && is(c.state, api::ContainerState::ContainerRunning)),
                "{id} is not listed as running: {listed:?}"
            );
        }
        assert_eq!(listed.len(), 2, "{listed:?}");
        assert_eq!(s.exec(&second, &["sh", "-c", "echo $WHO"]).1, "second\n");
        assert_eq!(s.exec(&main, &["sh", "-c", "echo $WHO"]).1, "main\n");

        step("one shim process for the pod");
        let shims = s.shims(case.shim);
        assert_eq!(
            shims.len(),
            1,
            "the pod's sandbox and both containers must share one {}: {shims:?}",
            case.shim
        );
        second
    });

    // The exec's own result is not checked: once the container's shell has read the
    // line it exits, and its PID namespace may take the exec down with it.
    step("main exits by itself: ContainerStatus EXITED with its code");
    let _ = s
        .cri
        .exec_sync(&main, &["sh", "-c", "echo >/tmp/go"], EXEC_TIMEOUT);
    let status = s.wait_for("main's exit", || {
        let status = s.state(&main);
        is(status.state, api::ContainerState::ContainerExited).then_some(status)
    });
    assert_eq!(status.exit_code, 7, "{status:?}");

    if let Some(second) = &second {
        step("second still runs and answers; StopContainer ends it with SIGTERM");
        let status = s.state(second);
        assert!(
            is(status.state, api::ContainerState::ContainerRunning),
            "second is {}: {status:?}",
            container_state_name(status.state)
        );
        assert_eq!(s.exec(second, &["echo", "still"]).1, "still\n");
        s.ok(
            "StopContainer second",
            s.cri.stop_container(second, Duration::from_secs(30)),
        );
        let status = s.state(second);
        assert!(
            is(status.state, api::ContainerState::ContainerExited),
            "second is {} after StopContainer: {status:?}",
            container_state_name(status.state)
        );
        assert_eq!(
            status.exit_code, 0,
            "not ended by its TERM trap: {status:?}"
        );
    }

    step("StopContainer (exited) + RemoveContainer");
    s.ok(
        "StopContainer main",
        s.cri.stop_container(&main, Duration::ZERO),
    );
    for id in std::iter::once(&main).chain(second.as_ref()) {
        s.ok("RemoveContainer", s.cri.remove_container(id));
        assert!(
            s.cri.container_status(id).is_err(),
            "{id} is still known after RemoveContainer"
        );
    }
    let listed = s.ok("ListContainers", s.cri.list_containers(Some(&pod)));
    assert!(listed.is_empty(), "{listed:?}");

    step("StopPodSandbox + RemovePodSandbox");
    s.ok("StopPodSandbox", s.cri.stop_pod_sandbox(&pod));
    let status = s.ok("PodSandboxStatus", s.cri.pod_sandbox_status(&pod));
    assert_eq!(
        status.state,
        i32::from(api::PodSandboxState::SandboxNotready),
        "the pod is {} after StopPodSandbox",
        pod_state_name(status.state)
    );
    s.ok("RemovePodSandbox", s.cri.remove_pod_sandbox(&pod));
    let pods = s.ok("ListPodSandbox", s.cri.list_pod_sandboxes());
    assert!(pods.iter().all(|p| p.id != pod), "{pods:?}");

    step("nothing left: shims, container processes, mounts, husk state");
    // The shim exits after containerd's Shutdown call, which does not wait for it.
    s.wait_for("the shims' exit", || {
        s.shims("containerd-shim").is_empty().then_some(())
    });
    for process in [
        format!(": main {}", case.marker),
        format!("sleep {}", case.marker),
    ] {
        let left = processes_with(&process);
        assert!(left.is_empty(), "container processes left: {left:?}");
    }
    let dir = s.containerd.dir().to_string_lossy().into_owned();
    let mounts = mounts_under(&dir);
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    if let Some(StateRoot(state)) = &s.husk_state {
        let left = processes_with(state);
        assert!(left.is_empty(), "husk processes left: {left:?}");
        let mounts = mounts_under(state);
        assert!(mounts.is_empty(), "mounts left: {mounts:?}");
        let files = walk(Path::new(state));
        assert!(files.is_empty(), "husk state left: {files:?}");
    }
    step("done");
}

/// The client and the harness, checked with containerd's own runtime (the runc shim also
/// serves a whole pod from one process).
#[test]
fn cri_pod_with_runc() {
    pod_lifecycle(&Case {
        name: "cri-runc",
        handler: RUNC_HANDLER,
        shim: "containerd-shim-runc-v2",
        several: true,
        marker: "7411",
    });
}

/// A pod with husk: its sandbox and one container.
#[test]
fn cri_pod_with_husk() {
    pod_lifecycle(&Case {
        name: "cri-husk",
        handler: HUSK_HANDLER,
        shim: "containerd-shim-husk-v2",
        several: false,
        marker: "7412",
    });
}

/// A pod with husk and two containers, in one shim process.
#[test]
fn cri_pod_of_two_containers_with_husk() {
    pod_lifecycle(&Case {
        name: "cri-husk-pod",
        handler: HUSK_HANDLER,
        shim: "containerd-shim-husk-v2",
        several: true,
        marker: "7413",
    });
}

/// A pod on a CNI network (Debian's bridge and host-local plugins) with husk: its
/// container reaches a TCP server in the host's network namespace, on the bridge's
/// address, and a server in the container is reached from the host at the pod's address.
/// StopPodSandbox then leaves no network namespace behind.
#[test]
fn cri_pod_on_a_cni_network_with_husk() {
    let case = Case {
        name: "cri-husk-cni",
        handler: HUSK_HANDLER,
        shim: "containerd-shim-husk-v2",
        several: false,
        marker: "7415",
    };
    let s = Setup::start(&case, true);
    let step = |text: &str| eprintln!("[{}] {text}", case.name);
    let netns_before = network_namespaces();

    step("RunPodSandbox (CNI network)");
    let uid = format!("{}-{}", case.name, std::process::id());
    let pod_config = husk_tests::cri::pod_network_pod(case.name, &uid, &s.logs);
    let pod = s.ok(
        "RunPodSandbox",
        s.cri.run_pod_sandbox(&pod_config, case.handler),
    );
    let status = s.ok("PodSandboxStatus", s.cri.pod_sandbox_status(&pod));
    let pod_ip: std::net::Ipv4Addr = status
        .network
        .as_ref()
        .map(|n| n.ip.as_str())
        .and_then(|ip| ip.parse().ok())
        .unwrap_or_else(|| panic!("the pod has no IPv4 address: {status:?}\n{}", s.context()));
    assert!(pod_ip.to_string().starts_with("10.89.0."), "{pod_ip}");

    // The host's server, on the bridge (which CNI made for the pod).
    let listener = std::net::TcpListener::bind((CNI_GATEWAY, 0)).expect("a server on the bridge");
    let port = listener.local_addr().expect("its port").port();

    step("a container that talks to the host, then serves it");
    let script = format!(
        ": net {marker}; echo hello-host | nc {CNI_GATEWAY} {port}; echo ready >/tmp/ready; \
         echo hello-pod | nc -l -p 8080; sleep {marker}",
        marker = case.marker
    );
    let config =
        husk_tests::cri::pod_network_container("net", BUSYBOX_IMAGE, &["sh", "-c", &script], &[]);
    let id = s.ok(
        "CreateContainer",
        s.cri.create_container(&pod, &config, &pod_config),
    );
    s.ok("StartContainer", s.cri.start_container(&id));

    listener.set_nonblocking(true).expect("nonblocking");
    let (from_pod, peer) = s.wait_for("the pod's connection to the host", || {
        listener.accept().ok()
    });
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(pod_ip),
        "from the pod's address"
    );
    from_pod.set_nonblocking(false).expect("blocking");
    from_pod
        .set_read_timeout(Some(WAIT))
        .expect("a read timeout");
    let mut said = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&from_pod), &mut said)
        .expect("what the pod said");
    assert_eq!(said, "hello-host\n");
    drop(from_pod);

    s.wait_ready(&id, "net");
    let answer = s.wait_for("the container's server, from the host", || {
        let mut stream = std::net::TcpStream::connect((pod_ip, 8080)).ok()?;
        stream.set_read_timeout(Some(WAIT)).ok()?;
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut stream, &mut answer).ok()?;
        (!answer.is_empty()).then_some(answer)
    });
    assert_eq!(answer, "hello-pod\n");

    step("StopPodSandbox + RemovePodSandbox");
    s.ok("StopPodSandbox", s.cri.stop_pod_sandbox(&pod));
    s.ok("RemovePodSandbox", s.cri.remove_pod_sandbox(&pod));
    s.wait_for("the shim's end", || {
        s.shims(case.shim).is_empty().then_some(())
    });
    assert_eq!(
        network_namespaces(),
        netns_before,
        "CNI's namespace is left"
    );
    step("done");
}

/// The named network namespaces (CNI's are under /var/run/netns).
fn network_namespaces() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/var/run/netns")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// What a test leaves in CRI's namespace (a running pod with a running container, here
/// with runc) goes when the harness's containerd is dropped: processes, shims, mounts
/// (the pod's /dev/shm, the containers' root file systems) and containerd's directory.
#[test]
fn the_harness_cleans_up_a_pod_left_running() {
    let case = Case {
        name: "cri-leftover",
        handler: RUNC_HANDLER,
        shim: "containerd-shim-runc-v2",
        several: false,
        marker: "7414",
    };
    let s = Setup::new(&case);
    let uid = format!("{}-{}", case.name, std::process::id());
    let pod_config = husk_tests::cri::host_network_pod(case.name, &uid, &s.logs);
    let pod = s.ok(
        "RunPodSandbox",
        s.cri.run_pod_sandbox(&pod_config, case.handler),
    );
    let config = husk_tests::cri::container("left", BUSYBOX_IMAGE, &["sleep", case.marker], &[]);
    let id = s.ok(
        "CreateContainer",
        s.cri.create_container(&pod, &config, &pod_config),
    );
    s.ok("StartContainer", s.cri.start_container(&id));
    let dir = s.containerd.dir().to_string_lossy().into_owned();
    let address = s.containerd.address().to_string_lossy().into_owned();
    // runc's start returns before the container's process has exec'd its command.
    let marker = format!("sleep {}", case.marker);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while processes_with(&marker).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        !processes_with(&marker).is_empty(),
        "the container does not run\n{}",
        s.context()
    );
    assert_eq!(s.shims(case.shim).len(), 1, "{:?}", s.shims(case.shim));
    assert!(
        !mounts_under(&dir).is_empty(),
        "the pod has no mounts to clean up"
    );

    drop(s);
    let sleeps = processes_with(&format!("sleep {}", case.marker));
    assert!(sleeps.is_empty(), "container processes left: {sleeps:?}");
    let shims = processes_with(&address);
    assert!(shims.is_empty(), "shims left: {shims:?}");
    let mounts = mounts_under(&dir);
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    assert!(!Path::new(&dir).exists(), "{dir} left");
}
