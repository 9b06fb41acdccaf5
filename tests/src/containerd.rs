//! A private containerd for the end-to-end tests and benchmarks (DESIGN.md: containerd
//! without systemd): Debian's `containerd` run as a child process with a configuration,
//! root, state and sockets of its own under one directory, driven with the unmodified
//! `ctr`. Dropping it stops containerd and every shim it started, unmounts what they left
//! and removes the directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{processes_with, run_with_timeout, Run};
use crate::Error;

/// The image name the busybox image carries (resources/build-busybox-image.sh).
pub const BUSYBOX_IMAGE: &str = "docker.io/library/busybox:latest";

/// The namespace the tests use (CRI's is `k8s.io`).
pub const NAMESPACE: &str = "husk-test";

pub struct Containerd {
    dir: PathBuf,
    child: Option<Child>,
}

impl Containerd {
    /// Starts containerd and waits until it answers. Its directory is under /tmp: the
    /// sockets' paths must stay short.
    pub fn start(name: &str) -> Result<Containerd, Error> {
        Containerd::start_with_env(name, &[])
    }

    /// The same, with variables added to containerd's environment (which its shims
    /// inherit: a PATH that finds a shim, a runtime's configuration).
    pub fn start_with_env(
        name: &str,
        env: &[(&str, std::ffi::OsString)],
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
        let config = format!(
            "version = 2\n\
             root = \"{root}\"\n\
             state = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n\
             [ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [debug]\n  address = \"\"\n",
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            sock = dir.join("c.sock").display(),
        );
        std::fs::write(dir.join("config.toml"), config)
            .map_err(|e| Error(format!("writing containerd's config: {e}")))?;
        let log = std::fs::File::create(dir.join("containerd.log"))
            .map_err(|e| Error(format!("containerd's log: {e}")))?;
        let child = Command::new(binary)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| Error(format!("cannot start containerd: {e}")))?;
        let mut containerd = Containerd {
            dir,
            child: Some(child),
        };
        containerd.wait_until_serving()?;
        Ok(containerd)
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

    /// A `ctr` command against this containerd, in the test namespace.
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(self.address())
            .args(["--namespace", NAMESPACE])
            .args(args);
        cmd
    }

    /// Runs `ctr ARGS` (60 s at most).
    pub fn ctr(&self, args: &[&str]) -> Result<Run, Error> {
        run_with_timeout(&mut self.ctr_command(args), Duration::from_secs(60))
    }

    /// Imports an OCI image tar (`ctr image import`); returns nothing, the image is then
    /// known by the name its index carries.
    pub fn import(&self, image: &Path) -> Result<(), Error> {
        let image = image.to_string_lossy();
        let run = self.ctr(&["image", "import", &image])?;
        if run.code() != Some(0) {
            return Err(Error(format!(
                "ctr image import failed\n{}",
                run.describe()
            )));
        }
        Ok(())
    }
}

impl Containerd {
    /// Kills and deletes every task and container of the test namespace through
    /// containerd, as a user would: container processes are no children of the shims and
    /// would outlive them.
    fn remove_all(&self) {
        let list = |what: &str| -> Vec<String> {
            self.ctr(&[what, "ls", "-q"])
                .map(|run| run.stdout.lines().map(str::to_owned).collect())
                .unwrap_or_default()
        };
        for task in list("task") {
            let _ = self.ctr(&["task", "kill", "--signal", "SIGKILL", "--all", &task]);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                match self.ctr(&["task", "delete", &task]) {
                    Ok(run) if run.code() == Some(0) => break,
                    _ => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        for container in list("container") {
            let _ = self.ctr(&["container", "rm", &container]);
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.remove_all();
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
    }
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}
