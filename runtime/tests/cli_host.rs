//! The `husk` command line end to end with the host backend (layer 4): `husk run`, the
//! runc-style lifecycle, the image cache, bad input, and what is left after crashes.
//! Real containers, as root; every husk command runs with a private state root, cache
//! and configuration file.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use husk_tests::process::{processes_with, run_with_timeout, Run};
use husk_tests::rootfs::{build_busybox_tree, busybox_bundle};
use husk_tests::{scratch_dir, ScratchDir};

const TIMEOUT: Duration = Duration::from_secs(60);

/// A private husk installation: configuration, state root and cache in a scratch dir.
struct Husk {
    dir: ScratchDir,
}

impl Husk {
    fn new(name: &str) -> Husk {
        assert!(
            rustix::process::geteuid().is_root(),
            "the host backend creates containers and must run as root"
        );
        let dir = scratch_dir(name).expect("scratch");
        std::fs::write(
            dir.join("config.toml"),
            format!(
                "hypervisor = \"host\"\nroot = \"{}\"\ncache = \"{}\"\n",
                dir.join("state").display(),
                dir.join("cache").display()
            ),
        )
        .expect("config");
        Husk { dir }
    }

    fn command(&self) -> Command {
        let mut cmd = husk_tests::husk::husk_command().expect("husk binary");
        cmd.env("HUSK_CONFIG", self.dir.join("config.toml"));
        cmd
    }

    fn run(&self, args: &[&str]) -> Run {
        let mut cmd = self.command();
        cmd.args(args);
        run_with_timeout(&mut cmd, TIMEOUT).expect("husk ran")
    }

    /// Runs and expects success.
    fn ok(&self, args: &[&str]) -> Run {
        let run = self.run(args);
        assert_eq!(run.code(), Some(0), "{}", run.describe());
        run
    }

    /// Runs and expects failure with one error line containing `needle`.
    fn fails(&self, args: &[&str], needle: &str) -> Run {
        let run = self.run(args);
        assert_eq!(run.code(), Some(1), "{}", run.describe());
        assert!(
            run.error_lines().iter().any(|l| l.contains(needle)),
            "expected an error about {needle:?}\n{}",
            run.describe()
        );
        run
    }

    /// A bundle whose process runs `args`, with its own copy of the busybox tree.
    fn bundle(&self, name: &str, args: &[&str]) -> PathBuf {
        let bundle = self.dir.join(name);
        busybox_bundle(&bundle, args).expect("bundle");
        bundle
    }

    /// A busybox tree of the test's own, for --rootfs.
    fn rootfs(&self) -> PathBuf {
        let rootfs = self.dir.join("rootfs");
        build_busybox_tree(&rootfs).expect("rootfs");
        rootfs
    }

    fn state(&self, id: &str) -> serde_json::Value {
        let run = self.ok(&["state", id]);
        serde_json::from_str(&run.stdout).expect("state is JSON")
    }

    /// Polls `husk state` until the container reports `status`.
    fn wait_for_status(&self, id: &str, status: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while self.state(id)["status"] != status {
            assert!(Instant::now() < deadline, "{id} never became {status}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `husk create` with stdout and stderr to files in the scratch dir (the sandbox
    /// process keeps them open for the container).
    fn create(&self, id: &str, bundle: &Path) {
        let out = std::fs::File::create(self.dir.join(format!("{id}.out"))).expect("out");
        let err = std::fs::File::create(self.dir.join(format!("{id}.err"))).expect("err");
        let status = self
            .command()
            .args(["create", "--bundle"])
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .status()
            .expect("husk create ran");
        let errors =
            std::fs::read_to_string(self.dir.join(format!("{id}.err"))).unwrap_or_default();
        assert!(status.success(), "husk create {id}: {status}\n{errors}");
    }

    fn output_of(&self, id: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{id}.out"))).unwrap_or_default()
    }

    /// Asserts nothing of the container is left: no process naming it, no mount under
    /// the scratch dir, no state.
    fn assert_no_residue(&self, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let needle = self.dir.join("state").join(id);
        let needle = needle.to_string_lossy();
        loop {
            let left = processes_with(&needle);
            if left.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "processes left: {left:#?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let scratch = self.dir.path().to_string_lossy().into_owned();
        let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&scratch)).collect();
        assert!(left.is_empty(), "mounts left: {left:#?}");
        assert!(
            !self.dir.join("state").join(id).exists(),
            "state of {id} left"
        );
    }
}

#[test]
fn run_passes_output_and_exit_codes_through() {
    let husk = Husk::new("cli-run");
    let rootfs = husk.rootfs();
    let rootfs = rootfs.to_str().expect("utf-8");

    let run = husk.ok(&["run", "--rootfs", rootfs, "--", "echo", "hello"]);
    assert_eq!(run.stdout, "hello\n", "{}", run.describe());
    assert!(
        run.stderr.contains("no VM and no hardware isolation"),
        "the host backend is announced\n{}",
        run.describe()
    );

    let run = husk.run(&[
        "run",
        "--rootfs",
        rootfs,
        "--",
        "sh",
        "-c",
        "echo err >&2; exit 7",
    ]);
    assert_eq!(run.code(), Some(7), "{}", run.describe());
    assert!(run.stderr.contains("err\n"), "{}", run.describe());

    // The container's first process is PID 1 of its namespace, which no signal from
    // inside can kill; a child killed by a signal is reported the shell's way.
    let run = husk.run(&[
        "run",
        "--rootfs",
        rootfs,
        "--",
        "sh",
        "-c",
        "sh -c 'kill -9 $$'; exit $?",
    ]);
    assert_eq!(run.code(), Some(128 + 9), "{}", run.describe());

    // -i: stdin reaches the container, and its end of file too.
    let mut cmd = husk.command();
    cmd.args([
        "run",
        "-i",
        "--rootfs",
        rootfs,
        "-e",
        "GREETING=hi",
        "--",
        "sh",
        "-c",
    ])
    .arg("echo $GREETING; cat")
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("husk run -i");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"from stdin\n").expect("write");
    }
    let output = child.wait_with_output().expect("husk run -i finished");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "hi\nfrom stdin\n");

    // Writes to a --rootfs directory go to an overlay: the directory is unchanged.
    husk.ok(&[
        "run",
        "--rootfs",
        rootfs,
        "--",
        "sh",
        "-c",
        "echo x > /written; rm /bin/ls",
    ]);
    assert!(!Path::new(rootfs).join("written").exists());
    assert!(Path::new(rootfs).join("bin/ls").exists());

    // Nothing is left after runs.
    husk.ok(&["list", "-q"])
        .stdout
        .is_empty()
        .then_some(())
        .expect("no containers");
}

#[test]
fn the_runc_lifecycle_and_its_wrong_states() {
    let husk = Husk::new("cli-lifecycle");
    let bundle = husk.bundle("bundle", &["sh", "-c", "echo started; exec sleep 1000"]);
    husk.create("box", &bundle);
    let state = husk.state("box");
    assert_eq!(state["status"], "created", "{state}");
    assert_eq!(state["bundle"], bundle.to_str().expect("utf-8"));
    assert!(state["pid"].as_i64().is_some_and(|p| p > 0), "{state}");
    assert!(husk.ok(&["list"]).stdout.contains("box"));
    husk.fails(&["exec", "box", "true"], "created");

    husk.ok(&["start", "box"]);
    assert_eq!(husk.state("box")["status"], "running");
    husk.fails(&["start", "box"], "running");
    husk.fails(&["delete", "box"], "running");
    husk.fails(
        &["create", "--bundle", bundle.to_str().expect("utf-8"), "box"],
        "already exists",
    );

    let ps = husk.ok(&["ps", "--format", "json", "box"]);
    let pids: Vec<i32> = serde_json::from_str(&ps.stdout).expect("pids");
    assert!(!pids.is_empty(), "{}", ps.describe());

    let exec = husk.ok(&["exec", "box", "sh", "-c", "echo in the container"]);
    assert_eq!(exec.stdout, "in the container\n");
    let exec = husk.run(&["exec", "box", "sh", "-c", "exit 4"]);
    assert_eq!(exec.code(), Some(4), "{}", exec.describe());

    // PID 1 of the container ignores TERM (no handler); KILL from outside ends it.
    husk.ok(&["kill", "box", "KILL"]);
    husk.wait_for_status("box", "stopped");
    assert_eq!(husk.state("box")["exitCode"], 128 + 9);
    assert_eq!(husk.output_of("box"), "started\n");
    husk.fails(&["start", "box"], "stopped");
    husk.fails(&["kill", "box"], "stopped");
    husk.ok(&["delete", "box"]);
    husk.fails(&["state", "box"], "does not exist");
    husk.assert_no_residue("box");
}

#[test]
fn two_sandboxes_at_once() {
    let husk = Husk::new("cli-two");
    let bundle_a = husk.bundle("a", &["sleep", "1000"]);
    let bundle_b = husk.bundle("b", &["sleep", "1000"]);
    husk.create("one", &bundle_a);
    husk.create("two", &bundle_b);
    husk.ok(&["start", "one"]);
    husk.ok(&["start", "two"]);
    husk.ok(&["exec", "one", "sh", "-c", "echo one > /mark"]);
    // Separate sandboxes: the second does not see the first's file.
    let run = husk.run(&["exec", "two", "cat", "/mark"]);
    assert_ne!(run.code(), Some(0), "{}", run.describe());
    assert!(
        bundle_a.join("rootfs/mark").exists(),
        "bundle writes land in the bundle"
    );
    let list = husk.ok(&["list", "--format", "json"]);
    let all: serde_json::Value = serde_json::from_str(&list.stdout).expect("json");
    assert_eq!(all.as_array().map(Vec::len), Some(2), "{all}");
    husk.ok(&["delete", "--force", "one"]);
    husk.ok(&["delete", "--force", "two"]);
    husk.assert_no_residue("one");
    husk.assert_no_residue("two");
}

#[test]
fn a_killed_sandbox_process_is_cleaned_up_by_delete_force() {
    let husk = Husk::new("cli-kill9");
    let bundle = husk.bundle("bundle", &["sleep", "1000"]);
    husk.create("victim", &bundle);
    husk.ok(&["start", "victim"]);
    let pid = husk.state("victim")["pid"].as_i64().expect("pid") as i32;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).expect("pid"),
        rustix::process::Signal::KILL,
    )
    .expect("kill -9");
    // The next commands notice, and never hang.
    husk.wait_for_status("victim", "stopped");
    husk.fails(&["start", "victim"], "stopped");
    husk.fails(&["exec", "victim", "true"], "stopped");
    husk.ok(&["delete", "--force", "victim"]);
    husk.assert_no_residue("victim");
    // --force on what is gone is fine, as with runc.
    husk.ok(&["delete", "--force", "victim"]);
}

#[test]
fn bad_input_gets_one_clear_error_and_changes_nothing() {
    let husk = Husk::new("cli-bad");
    let empty = husk.dir.join("empty");
    std::fs::create_dir_all(&empty).expect("dir");
    let empty_str = empty.to_str().expect("utf-8");
    husk.fails(
        &["create", "--bundle", empty_str, "x"],
        "has no config.json",
    );

    std::fs::write(empty.join("config.json"), "{ not json").expect("write");
    husk.fails(&["create", "--bundle", empty_str, "x"], "config.json");

    let bundle = husk.bundle("wrong", &["true"]);
    let text = std::fs::read_to_string(bundle.join("config.json")).expect("read");
    let mut json: serde_json::Value = serde_json::from_str(&text).expect("json");
    json["process"]["user"]["uid"] = "root".into();
    std::fs::write(bundle.join("config.json"), json.to_string()).expect("write");
    husk.fails(
        &["create", "--bundle", bundle.to_str().expect("utf-8"), "x"],
        "process.user.uid",
    );

    let bundle = husk.bundle("norootfs", &["true"]);
    std::fs::remove_dir_all(bundle.join("rootfs")).expect("rm");
    husk.fails(
        &["create", "--bundle", bundle.to_str().expect("utf-8"), "x"],
        "is not a directory",
    );
    husk.fails(
        &["run", "--rootfs", "/nonexistent", "--", "true"],
        "is not a directory",
    );

    husk.fails(
        &[
            "create",
            "--bundle",
            bundle.to_str().expect("utf-8"),
            "../x",
        ],
        "not valid",
    );
    husk.fails(&["start", "nobody"], "does not exist");
    husk.fails(&["delete", "nobody"], "does not exist");
    husk.fails(&["kill", "nobody", "NOSUCHSIG"], "unknown signal");
    husk.fails(
        &["run", "--image", "/nonexistent.tar", "--", "true"],
        "nonexistent",
    );
    husk.fails(&["run", "--env", "novalue", "--", "true"], "KEY=VALUE");
    assert!(husk.ok(&["list", "-q"]).stdout.is_empty());

    // The configuration: an unknown key is named.
    std::fs::write(
        husk.dir.join("config.toml"),
        "hypervisor = \"host\"\nmemroy_mib = 1\n",
    )
    .expect("write");
    husk.fails(&["list"], "memroy_mib");
    std::fs::write(husk.dir.join("config.toml"), "").expect("write");
    let run = husk
        .command()
        .args(["--root"])
        .arg(husk.dir.join("state"))
        .args(["run", "--rootfs", empty_str, "--", "true"])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&run.stderr);
    if husk_vmm::kvm_flavour() != husk_vmm::KvmFlavour::Hardware {
        assert!(
            stderr.contains("--hypervisor host"),
            "without hardware KVM and without a choice, husk says how to choose: {stderr}"
        );
    }
}

#[test]
fn an_interrupted_run_leaves_nothing() {
    let husk = Husk::new("cli-sigint");
    let rootfs = husk.rootfs();
    // Interrupt at several points of the start, and once while the container runs.
    for delay_ms in [0u64, 5, 20, 50, 100, 300] {
        let id = format!("int{delay_ms}");
        let mut child = husk
            .command()
            .args(["run", "--name", &id, "--rootfs"])
            .arg(&rootfs)
            // PID 1 of the container: it needs a handler to die of SIGINT.
            .args(["--", "sh", "-c", "trap 'exit 130' INT; sleep 1000 & wait"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("husk run");
        std::thread::sleep(Duration::from_millis(delay_ms));
        let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
        let deadline = Instant::now() + TIMEOUT;
        let mut next_signal = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            // Again every 100 ms: a SIGINT that reaches the container's PID 1 before its
            // shell set the trap is ignored (as PID 1 ignores signals it has no handler
            // for), and the next one ends it.
            if Instant::now() >= next_signal {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
                next_signal = Instant::now() + Duration::from_millis(100);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!("husk run ignored SIGINT after {delay_ms} ms");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(
            !status.success(),
            "interrupted after {delay_ms} ms: {status}"
        );
        husk.assert_no_residue(&id);
    }
}

fn busybox_image(dir: &Path) -> PathBuf {
    husk_tests::rootfs::busybox_image(dir).expect("the busybox image")
}

/// The entries of the cache's image directory.
fn cached_images(husk: &Husk) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(husk.dir.join("cache/images"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn images_are_unpacked_once_and_never_written() {
    let husk = Husk::new("cli-image");
    let image = busybox_image(&husk.dir.join("source"));
    let image = image.to_str().expect("utf-8");
    let debug_run = |args: &[&str]| {
        let mut cmd = husk.command();
        cmd.env("HUSK_LOG", "debug").args(args);
        run_with_timeout(&mut cmd, TIMEOUT).expect("husk ran")
    };
    let first = debug_run(&[
        "run",
        "--image",
        image,
        "--",
        "sh",
        "-c",
        "echo hi > /bin/new; echo $PATH",
    ]);
    assert_eq!(first.code(), Some(0), "{}", first.describe());
    assert!(
        first.stdout.starts_with("/usr/local/sbin"),
        "the image's PATH\n{}",
        first.describe()
    );
    assert!(
        first.stderr.contains("image cache miss"),
        "{}",
        first.describe()
    );
    let entries = cached_images(&husk);
    assert_eq!(entries.len(), 1, "{entries:?}");
    let rootfs = husk
        .dir
        .join("cache/images")
        .join(&entries[0])
        .join("rootfs");
    assert!(
        !rootfs.join("bin/new").exists(),
        "a container wrote into the cached image"
    );

    let second = debug_run(&["run", "--image", image, "--", "cat", "/bin/new"]);
    assert_ne!(
        second.code(),
        Some(0),
        "a new container sees the old one's write\n{}",
        second.describe()
    );
    assert!(
        second.stderr.contains("image cache hit"),
        "{}",
        second.describe()
    );
    assert!(
        !second.stderr.contains("image cache miss"),
        "{}",
        second.describe()
    );
    assert_eq!(cached_images(&husk), entries);

    // The default image is the set-up's: HUSK_CACHE_DIR/images/busybox.tar.
    let mut cmd = husk.command();
    cmd.env("HUSK_CACHE_DIR", husk.dir.join("source"))
        .args(["run", "--", "echo", "default"]);
    let run = run_with_timeout(&mut cmd, TIMEOUT).expect("husk ran");
    assert_eq!(run.stdout, "default\n", "{}", run.describe());
}

#[test]
fn a_damaged_image_is_refused_and_caches_nothing() {
    let husk = Husk::new("cli-bad-image");
    let image = busybox_image(&husk.dir.join("source"));
    let layout = husk.dir.join("layout");
    std::fs::create_dir_all(&layout).expect("dir");
    let status = Command::new("tar")
        .arg("-xf")
        .arg(&image)
        .arg("-C")
        .arg(&layout)
        .status()
        .expect("tar");
    assert!(status.success());
    // The largest blob is the layer: flip its last byte.
    let blobs = layout.join("blobs/sha256");
    let layer = std::fs::read_dir(&blobs)
        .expect("blobs")
        .filter_map(Result::ok)
        .max_by_key(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .expect("a blob");
    let digest = layer.file_name().to_string_lossy().into_owned();
    let mut bytes = std::fs::read(layer.path()).expect("read");
    if let Some(last) = bytes.last_mut() {
        *last ^= 0xff;
    }
    std::fs::write(layer.path(), &bytes).expect("write");
    husk.fails(
        &[
            "run",
            "--image",
            layout.to_str().expect("utf-8"),
            "--",
            "true",
        ],
        &digest,
    );
    std::fs::remove_file(layer.path()).expect("rm");
    husk.fails(
        &[
            "run",
            "--image",
            layout.to_str().expect("utf-8"),
            "--",
            "true",
        ],
        &digest,
    );
    assert!(
        cached_images(&husk).is_empty(),
        "{:?}",
        cached_images(&husk)
    );
    assert!(husk.ok(&["list", "-q"]).stdout.is_empty());
}

/// Everything read from a pty master, gathered by a thread until the slave side closes.
fn gather(master: &std::os::fd::OwnedFd) -> std::sync::Arc<std::sync::Mutex<String>> {
    use std::io::Read;
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut file = std::fs::File::from(master.try_clone().expect("dup"));
    let sink = text.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = file.read(&mut buf) {
            if n == 0 {
                break;
            }
            let mut text = sink.lock().expect("lock");
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

/// Sets the pty's size to the 30x100 that TERMINAL_SCRIPT waits for, and gathers its
/// output.
fn sized_and_gathered(master: &std::os::fd::OwnedFd) -> std::sync::Arc<std::sync::Mutex<String>> {
    let size = rustix::termios::Winsize {
        ws_row: 30,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(master, size).expect("size");
    gather(master)
}

fn wait_for_text(text: &std::sync::Mutex<String>, needle: &str) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let now = text.lock().expect("lock").clone();
        if now.contains(needle) {
            return now;
        }
        assert!(Instant::now() < deadline, "never saw {needle:?} in {now:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A shell script for a terminal test: shows the terminal, waits until its size is 30x100,
/// then echoes a line typed at it.
const TERMINAL_SCRIPT: &str =
    "[ -t 0 ] && [ -t 1 ] && echo on a terminal; i=0; while [ \"$(stty size)\" != '30 100' ] && [ $i -lt 100 ]; \
                               do sleep 0.1; i=$((i+1)); done; echo size $(stty size); read l; \
                               echo \"got $l\"";

#[test]
fn run_with_a_terminal() {
    let husk = Husk::new("cli-tty");
    let rootfs = husk.rootfs();
    let (master, slave) = husk_tests::process::pty().expect("a pty");
    let output = sized_and_gathered(&master);
    let mut child = husk
        .command()
        .args(["run", "-t", "-i", "--rootfs"])
        .arg(&rootfs)
        .args(["--", "sh", "-c", TERMINAL_SCRIPT])
        .stdin(slave.try_clone().expect("dup"))
        .stdout(slave.try_clone().expect("dup"))
        .stderr(slave)
        .spawn()
        .expect("husk run -t");
    wait_for_text(&output, "size 30 100");
    rustix::io::write(&master, b"typed\n").expect("type");
    let text = wait_for_text(&output, "got typed");
    assert!(text.contains("on a terminal"), "{text:?}");
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}: {text:?}");
    // husk put its terminal back as it found it (raw mode clears ECHO).
    let mode = rustix::termios::tcgetattr(&master).expect("tcgetattr");
    assert!(
        mode.local_modes.contains(rustix::termios::LocalModes::ECHO),
        "husk left its terminal raw"
    );
}

#[test]
fn create_hands_the_terminal_to_the_console_socket() {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let husk = Husk::new("cli-console");
    let bundle = husk.bundle("bundle", &["sh", "-c", TERMINAL_SCRIPT]);
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    spec["process"]["terminal"] = true.into();
    std::fs::write(&path, spec.to_string()).expect("write");
    let bundle_str = bundle.to_str().expect("utf-8");

    husk.fails(
        &["create", "--bundle", bundle_str, "box"],
        "--console-socket",
    );
    let socket = husk.dir.join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    let receiver = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut name = [0u8; 64];
        let received = rustix::net::recvmsg(
            &stream,
            &mut [std::io::IoSliceMut::new(&mut name)],
            &mut control,
            RecvFlags::empty(),
        )
        .expect("recvmsg");
        let name = String::from_utf8_lossy(&name[..received.bytes]).into_owned();
        let fd = control
            .drain()
            .find_map(|m| match m {
                RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
                _ => None,
            })
            .expect("a terminal fd");
        (name, fd)
    });
    husk.ok(&[
        "create",
        "--bundle",
        bundle_str,
        "--console-socket",
        socket.to_str().expect("utf-8"),
        "box",
    ]);
    let (name, master) = receiver.join().expect("receiver");
    assert!(name.starts_with("/dev/pts/"), "{name}");
    let output = sized_and_gathered(&master);
    husk.ok(&["start", "box"]);
    wait_for_text(&output, "size 30 100");
    rustix::io::write(&master, b"typed\n").expect("type");
    wait_for_text(&output, "got typed");
    husk.wait_for_status("box", "stopped");
    assert_eq!(husk.state("box")["exitCode"], 0);
    husk.ok(&["delete", "box"]);
    husk.assert_no_residue("box");
}

#[test]
fn exec_with_a_terminal_and_errors_in_a_json_log() {
    let husk = Husk::new("cli-exec-tty");
    let bundle = husk.bundle("bundle", &["sleep", "1000"]);
    husk.create("box", &bundle);
    husk.ok(&["start", "box"]);
    let (master, slave) = husk_tests::process::pty().expect("a pty");
    let output = sized_and_gathered(&master);
    let mut child = husk
        .command()
        .args(["exec", "-t", "box", "sh", "-c", TERMINAL_SCRIPT])
        .stdin(slave.try_clone().expect("dup"))
        .stdout(slave.try_clone().expect("dup"))
        .stderr(slave)
        .spawn()
        .expect("husk exec -t");
    wait_for_text(&output, "size 30 100");
    rustix::io::write(&master, b"typed\n").expect("type");
    let text = wait_for_text(&output, "got typed");
    assert!(text.contains("on a terminal"), "{text:?}");
    assert!(child.wait().expect("wait").success());

    // runc's --log and --log-format json: one JSON object per line, errors included.
    let log = husk.dir.join("husk.log");
    let run = husk.run(&[
        "--log",
        log.to_str().expect("utf-8"),
        "--log-format",
        "json",
        "kill",
        "box",
        "NOSIG",
    ]);
    assert_eq!(run.code(), Some(1), "{}", run.describe());
    assert!(run.stderr.contains("unknown signal"), "{}", run.describe());
    let text = std::fs::read_to_string(&log).expect("log");
    let entry: serde_json::Value =
        serde_json::from_str(text.lines().last().expect("a line")).expect("json");
    assert_eq!(entry["level"], "error", "{entry}");
    assert!(
        entry["msg"]
            .as_str()
            .is_some_and(|m| m.contains("unknown signal")),
        "{entry}"
    );
    assert!(
        entry["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{entry}"
    );
    husk.ok(&["delete", "--force", "box"]);
    husk.assert_no_residue("box");
}
