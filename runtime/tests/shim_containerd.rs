//! `containerd-shim-husk-v2` under a real, private containerd (layer 4, host backend),
//! driven with the unmodified `ctr`. As root, with Debian's containerd.

use std::ffi::OsString;
use std::path::PathBuf;

use husk_tests::containerd::{Containerd, BUSYBOX_IMAGE};
use husk_tests::process::processes_with;
use husk_tests::{scratch_dir, ScratchDir};

const RUNTIME: &str = "io.containerd.husk.v2";

/// The husk state root of a test: short (it holds sockets), and its own.
fn state_root(name: &str) -> String {
    format!("/tmp/husk-shim-state-{name}-{}", std::process::id())
}

/// containerd with husk's shim on its PATH and a private husk configuration.
fn containerd_with_husk(name: &str) -> (Containerd, ScratchDir) {
    assert!(
        rustix::process::geteuid().is_root(),
        "containerd runs containers and must run as root"
    );
    let scratch = scratch_dir(name).expect("scratch");
    let image = husk_tests::rootfs::busybox_image(scratch.path()).expect("the busybox image");
    // The state root holds sockets: a short path.
    let state = state_root(name);
    std::fs::write(
        scratch.join("config.toml"),
        format!(
            "hypervisor = \"host\"\nroot = \"{}\"\ncache = \"{}\"\n",
            state,
            scratch.join("cache").display()
        ),
    )
    .expect("config");
    // The shim is built next to husk.
    let husk = husk_tests::husk::husk_binary().expect("husk binary");
    let bin_dir: PathBuf = husk.parent().expect("a directory").to_owned();
    let mut path = OsString::from(&bin_dir);
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    let containerd = Containerd::start_with_env(
        name,
        &[
            ("PATH", path),
            ("HUSK_CONFIG", scratch.join("config.toml").into()),
        ],
    )
    .expect("containerd");
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
    // --rm deleted the task and the container; nothing of the shim or its sandbox is left.
    let address = containerd.address().to_string_lossy().into_owned();
    assert!(
        processes_with(&address).is_empty(),
        "{:?}",
        processes_with(&address)
    );
    let state = state_root("shim-run");
    assert!(
        processes_with(&state).is_empty(),
        "{:?}",
        processes_with(&state)
    );
    let _ = std::fs::remove_dir_all(&state);
    drop(scratch);
}

#[test]
fn exec_ps_and_kill_of_a_running_task() {
    let (containerd, scratch) = containerd_with_husk("shim-exec");
    let id = format!("shim-exec-{}", std::process::id());
    let ok = |args: &[&str]| {
        let run = containerd.ctr(args).expect("ctr");
        assert_eq!(
            run.code(),
            Some(0),
            "{}\n--- containerd ---\n{}",
            run.describe(),
            containerd.log()
        );
        run
    };
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
    ok(&["task", "kill", "--signal", "SIGKILL", &id]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !ok(&["task", "ls"]).stdout.contains("STOPPED") {
        assert!(
            std::time::Instant::now() < deadline,
            "the task never stopped"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    ok(&["task", "delete", &id]);
    ok(&["container", "rm", &id]);
    assert!(
        processes_with("sleep 7392").is_empty(),
        "{:?}",
        processes_with("sleep 7392")
    );
    let _ = std::fs::remove_dir_all(state_root("shim-exec"));
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
    let _ = std::fs::remove_dir_all(state_root("shim-tty"));
    drop(scratch);
}
