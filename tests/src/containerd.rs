//! A private containerd for the end-to-end tests and benchmarks (DESIGN.md: containerd
//! without systemd): Debian's `containerd` run as a child process with a configuration,
//! root, state and sockets of its own under one directory, driven with the unmodified
//! `ctr`. Dropping it stops containerd and every shim it started, unmounts what they left
//! and removes the directory.
//!
//! [`Containerd::start_cri`] starts one with its CRI plugin as well, for a CRI client
//! ([`crate::cri`]): runtimes `runc` (the default) and `husk`, the pause image of
//! resources/build-pause-image.sh as its sandbox image, no CNI (the tests' pods use the
//! host's network). [`husk_shim_env`] is the environment under which containerd finds
//! and configures husk's shim.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{processes_with, run_with_timeout, Run};
use crate::Error;

/// The image name the busybox image carries (resources/build-busybox-image.sh).
pub const BUSYBOX_IMAGE: &str = "docker.io/library/busybox:latest";

/// The namespace the tests use with `ctr`.
pub const NAMESPACE: &str = "husk-test";

/// The namespace of containerd's CRI plugin: its pods and containers, and the images it
/// can run, live there.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// The image name the pause image carries (resources/build-pause-image.sh): the CRI
/// plugin's `sandbox_image`.
pub const PAUSE_IMAGE: &str = "localhost/husk-pause:latest";

/// husk's runtime type in containerd (the shim binary `containerd-shim-husk-v2`).
pub const HUSK_RUNTIME: &str = "io.containerd.husk.v2";

/// The CRI runtime handlers of [`Containerd::start_cri`]: runc, the default, and husk.
pub const RUNC_HANDLER: &str = "runc";
pub const HUSK_HANDLER: &str = "husk";

/// The CNI network of [`Containerd::start_cri_with_cni`]: Debian's `bridge` plugin on
/// this bridge, the gateway's address on it, and `host-local` addresses from the subnet.
/// One such network at a time on a host (one test uses it).
pub const CNI_BRIDGE: &str = "husk-cni0";
pub const CNI_SUBNET: &str = "10.89.0.0/24";
pub const CNI_GATEWAY: &str = "10.89.0.1";

/// Where Debian's containernetworking-plugins installs the plugins.
const CNI_BIN_DIR: &str = "/usr/lib/cni";

pub struct Containerd {
    dir: PathBuf,
    /// Pods get [`CNI_BRIDGE`]'s network; the drop removes the bridge.
    cni: bool,
    child: Option<Child>,
    /// What was added to containerd's environment (a restart passes it again).
    env: Vec<(String, OsString)>,
    /// The namespaces whose tasks and containers the drop removes.
    namespaces: &'static [&'static str],
}

impl Containerd {
    /// Starts containerd and waits until it answers. Its directory is under /tmp: the
    /// sockets' paths must stay short.
    pub fn start(name: &str) -> Result<Containerd, Error> {
        Containerd::start_with_env(name, &[])
    }

    /// The same, with variables added to containerd's environment (which its shims
    /// inherit: a PATH that finds a shim, a runtime's configuration).
    pub fn start_with_env(name: &str, env: &[(&str, OsString)]) -> Result<Containerd, Error> {
        Containerd::start_config(name, env, false, false)
    }

    /// The same, with the CRI plugin enabled (see the module's documentation; the
    /// configuration is in [`cri_config`]). The images CRI runs, the pause image among
    /// them, are imported with [`Containerd::import_cri`]; a CRI client must wait until
    /// the plugin is initialized ([`crate::cri::CriClient::connect`] does).
    pub fn start_cri(name: &str, env: &[(&str, OsString)]) -> Result<Containerd, Error> {
        Containerd::start_config(name, env, true, false)
    }

    /// The same, with a CNI network for pods that do not use the host's: a bridge
    /// ([`CNI_BRIDGE`]) with the gateway's address and host-local addresses (see
    /// [`cni_conflist`]). Needs Debian's containernetworking-plugins.
    pub fn start_cri_with_cni(name: &str, env: &[(&str, OsString)]) -> Result<Containerd, Error> {
        if !Path::new(CNI_BIN_DIR).join("bridge").is_file() {
            return Err(Error(format!(
                "no CNI plugins in {CNI_BIN_DIR} (apt-get install containernetworking-plugins)"
            )));
        }
        Containerd::start_config(name, env, true, true)
    }

    fn start_config(
        name: &str,
        env: &[(&str, OsString)],
        cri: bool,
        cni: bool,
    ) -> Result<Containerd, Error> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let binary = which("containerd").ok_or_else(|| {
            Error("containerd is not installed (apt-get install containerd)".into())
        })?;
        let dir = PathBuf::from(format!(
            "/tmp/husk-ctd-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error(format!("creating {}: {e}", dir.display())))?;
        // containerd's own default for what the opt plugin installs is /opt/containerd:
        // a private one keeps the host untouched.
        let mut config = format!(
            "version = 2\n\
             root = \"{root}\"\n\
             state = \"{state}\"\n\
             disabled_plugins = [{disabled}]\n\
             [grpc]\n  address = \"{sock}\"\n\
             [ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [debug]\n  address = \"\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n",
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            sock = dir.join("c.sock").display(),
            opt = dir.join("opt").display(),
            disabled = if cri {
                ""
            } else {
                "\"io.containerd.grpc.v1.cri\""
            },
        );
        if cri {
            config.push_str(&cri_config(&dir));
        }
        if cni {
            let net_d = dir.join("cni/net.d");
            std::fs::create_dir_all(&net_d)
                .and_then(|()| {
                    std::fs::write(net_d.join("10-husk-test.conflist"), cni_conflist(&dir))
                })
                .map_err(|e| Error(format!("writing the CNI configuration: {e}")))?;
        }
        std::fs::write(dir.join("config.toml"), config)
            .map_err(|e| Error(format!("writing containerd's config: {e}")))?;
        let mut containerd = Containerd {
            dir,
            cni,
            child: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            namespaces: if cri {
                &[NAMESPACE, CRI_NAMESPACE]
            } else {
                &[NAMESPACE]
            },
        };
        containerd.child = Some(containerd.spawn(&binary)?);
        containerd.wait_until_serving()?;
        Ok(containerd)
    }

    /// Runs containerd with this directory's configuration, its log appended to the log.
    fn spawn(&self, binary: &Path) -> Result<Child, Error> {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("containerd.log"))
            .map_err(|e| Error(format!("containerd's log: {e}")))?;
        Command::new(binary)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| Error(format!("cannot start containerd: {e}")))
    }

    /// Stops containerd as a service manager would (SIGTERM: its shims, and the tasks they
    /// hold, stay), then starts it again on the same directories and waits until it
    /// answers.
    pub fn restart(&mut self) -> Result<(), Error> {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            child
                .wait()
                .map_err(|e| Error(format!("waiting for containerd: {e}")))?;
        }
        let binary =
            which("containerd").ok_or_else(|| Error("containerd is no longer installed".into()))?;
        self.child = Some(self.spawn(&binary)?);
        self.wait_until_serving()
    }

    fn wait_until_serving(&mut self) -> Result<(), Error> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let run = self.ctr(&["version"])?;
            if run.code() == Some(0) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(Error(format!(
                        "containerd exited with {status}: {}",
                        self.log()
                    )));
                }
            }
            if Instant::now() >= deadline {
                return Err(Error(format!(
                    "containerd did not answer within 30 s: {}",
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// containerd's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    pub fn address(&self) -> PathBuf {
        self.dir.join("c.sock")
    }

    /// The directory that holds all of this containerd's files (root, state, sockets,
    /// configuration, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A `ctr` command against this containerd, in the test namespace.
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        self.ctr_command_in(NAMESPACE, args)
    }

    /// A `ctr` command against this containerd, in `namespace`.
    pub fn ctr_command_in(&self, namespace: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(self.address())
            .args(["--namespace", namespace])
            .args(args);
        cmd
    }

    /// Runs `ctr ARGS` in the test namespace (60 s at most).
    pub fn ctr(&self, args: &[&str]) -> Result<Run, Error> {
        self.ctr_in(NAMESPACE, args)
    }

    /// Runs `ctr ARGS` in `namespace` (60 s at most).
    pub fn ctr_in(&self, namespace: &str, args: &[&str]) -> Result<Run, Error> {
        run_with_timeout(
            &mut self.ctr_command_in(namespace, args),
            Duration::from_secs(60),
        )
    }

    /// Imports an OCI image tar into the test namespace (`ctr image import`); returns
    /// nothing, the image is then known by the name its index carries.
    pub fn import(&self, image: &Path) -> Result<(), Error> {
        self.import_into(NAMESPACE, image)
    }

    /// Imports an OCI image tar into CRI's namespace, where the CRI plugin finds it (as
    /// its sandbox image, or as a container's image) without pulling.
    pub fn import_cri(&self, image: &Path) -> Result<(), Error> {
        self.import_into(CRI_NAMESPACE, image)
    }

    fn import_into(&self, namespace: &str, image: &Path) -> Result<(), Error> {
        let image = image.to_string_lossy();
        let run = self.ctr_in(namespace, &["image", "import", &image])?;
        if run.code() != Some(0) {
            return Err(Error(format!(
                "ctr -n {namespace} image import failed\n{}",
                run.describe()
            )));
        }
        Ok(())
    }
}

/// The CRI plugin's part of the configuration, for a containerd whose files are under
/// `dir`. Every path the plugin writes is there, and it opens no fixed TCP port:
/// - runtimes: `runc` (the default, `runtime_handler` "" or "runc"), with runc's state
///   under `dir` too (ids of concurrent runs cannot clash there), and `husk`;
/// - `sandbox_image`: the local pause image (no registry is reached);
/// - `restrict_oom_score_adj`: a container's oom_score_adj may not go below
///   containerd's own, since these machines give no CAP_SYS_RESOURCE to lower it;
/// - cgroupfs, not systemd (there is no systemd here); host cgroups are v1 (hybrid);
/// - no AppArmor or SELinux: the test pods ask for no profile or label, and a host may
///   have neither;
/// - CNI: Debian's plugins, and a private configuration directory, empty unless the
///   containerd was started with [`Containerd::start_cri_with_cni`] (CRI calls no CNI
///   plugin for the pods that use the host's network);
/// - the streaming server (exec, attach, port-forward URLs, unused by ExecSync) on an
///   ephemeral loopback port, so that concurrent containerds do not fight over 10010.
pub fn cri_config(dir: &Path) -> String {
    const CRI: &str = "plugins.\"io.containerd.grpc.v1.cri\"";
    format!(
        "[{CRI}]\n\
         \x20 sandbox_image = \"{PAUSE_IMAGE}\"\n\
         \x20 restrict_oom_score_adj = true\n\
         \x20 disable_apparmor = true\n\
         \x20 enable_selinux = false\n\
         \x20 stream_server_address = \"127.0.0.1\"\n\
         \x20 stream_server_port = \"0\"\n\
         [{CRI}.containerd]\n\
         \x20 snapshotter = \"overlayfs\"\n\
         \x20 default_runtime_name = \"{RUNC_HANDLER}\"\n\
         [{CRI}.containerd.runtimes.{RUNC_HANDLER}]\n\
         \x20 runtime_type = \"io.containerd.runc.v2\"\n\
         [{CRI}.containerd.runtimes.{RUNC_HANDLER}.options]\n\
         \x20 SystemdCgroup = false\n\
         \x20 Root = \"{runc_root}\"\n\
         [{CRI}.containerd.runtimes.{HUSK_HANDLER}]\n\
         \x20 runtime_type = \"{HUSK_RUNTIME}\"\n\
         [{CRI}.cni]\n\
         \x20 bin_dir = \"{CNI_BIN_DIR}\"\n\
         \x20 conf_dir = \"{cni}/net.d\"\n",
        runc_root = dir.join("runc").display(),
        cni = dir.join("cni").display(),
    )
}

/// The CNI network list of [`Containerd::start_cri_with_cni`]: a bridge that is the
/// pods' gateway, no masquerading (the traffic stays on this host), host-local addresses
/// recorded under `dir`.
pub fn cni_conflist(dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "husk-test",
        "plugins": [{
            "type": "bridge",
            "bridge": CNI_BRIDGE,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": CNI_SUBNET, "gateway": CNI_GATEWAY }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": dir.join("cni/ipam").to_string_lossy(),
            },
        }],
    })
    .to_string()
}

/// The environment under which containerd runs husk's shim, for the test `name`: the
/// husk binaries' directory first on PATH (containerd finds `containerd-shim-husk-v2`
/// there), and `HUSK_CONFIG` naming a private configuration, written into `scratch`:
/// the host backend (DESIGN.md, layer 4), the state root [`husk_state_root`] and an
/// image cache in `scratch`.
pub fn husk_shim_env(name: &str, scratch: &Path) -> Result<Vec<(&'static str, OsString)>, Error> {
    let config = scratch.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "hypervisor = \"host\"\nroot = \"{}\"\ncache = \"{}\"\n",
            husk_state_root(name),
            scratch.join("cache").display()
        ),
    )
    .map_err(|e| Error(format!("writing {}: {e}", config.display())))?;
    // The shim is built next to husk.
    let husk = crate::husk::husk_binary()?;
    let bin_dir = husk
        .parent()
        .ok_or_else(|| Error(format!("{} has no parent directory", husk.display())))?;
    let mut path = OsString::from(bin_dir);
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    Ok(vec![("PATH", path), ("HUSK_CONFIG", config.into())])
}

/// The husk state root of the test `name` (see [`husk_shim_env`]): short, since it holds
/// sockets, and its own. The test removes it when done.
pub fn husk_state_root(name: &str) -> String {
    format!("/tmp/husk-shim-state-{name}-{}", std::process::id())
}

/// The pause image as resources/build-pause-image.sh builds it, into
/// `dir/images/pause.tar`; returns that path.
pub fn pause_image(dir: &Path) -> Result<PathBuf, Error> {
    crate::rootfs::image_from_script(dir, "build-pause-image.sh", "pause.tar")
}

impl Containerd {
    /// Kills and deletes every task and container of `namespace` through containerd, as
    /// a user would: container processes are no children of the shims and would outlive
    /// them. In CRI's namespace this bypasses the CRI plugin, which may be deleting the
    /// same tasks as their exits reach it: a task that is gone is done with.
    fn remove_all(&self, namespace: &str) {
        let list = |what: &str| -> Vec<String> {
            self.ctr_in(namespace, &[what, "ls", "-q"])
                .map(|run| run.stdout.lines().map(str::to_owned).collect())
                .unwrap_or_default()
        };
        let tasks = list("task");
        // Every task is killed before any is deleted, so that no deletion (a pod
        // sandbox's, say) waits on containers of its pod that still run.
        for task in &tasks {
            let _ = self.ctr_in(
                namespace,
                &["task", "kill", "--signal", "SIGKILL", "--all", task],
            );
        }
        for task in &tasks {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                match self.ctr_in(namespace, &["task", "delete", task]) {
                    Ok(run) if run.code() == Some(0) => break,
                    _ if !list("task").contains(task) => break,
                    _ => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        for container in list("container") {
            let _ = self.ctr_in(namespace, &["container", "rm", &container]);
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for namespace in self.namespaces {
            self.remove_all(namespace);
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Shims outlive containerd by design; ours name our socket on their command line.
        let address = self.address().to_string_lossy().into_owned();
        for _ in 0..100 {
            let shims = processes_with(&address);
            if shims.is_empty() {
                break;
            }
            for (pid, _) in shims {
                if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Whatever the shims had mounted (rootfs overlays) under our directory.
        let dir = self.dir.to_string_lossy().into_owned();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&dir))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for point in points {
            let _ = Command::new("umount").args(["-l", point]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if self.cni {
            let _ = Command::new("ip")
                .args(["link", "del", CNI_BRIDGE])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}
