//! `containerd-shim-husk-v2` under a real, private containerd (layer 4, host backend),
//! driven with the unmodified `ctr`. As root, with Debian's containerd.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use husk_tests::containerd::{Containerd, BUSYBOX_IMAGE};
use husk_tests::process::processes_with;
use husk_tests::{scratch_dir, ScratchDir};

const RUNTIME: &str = "io.containerd.husk.v2";

/// containerd with husk's shim on its PATH and a private husk configuration.
fn containerd_with_husk(name: &str) -> (Containerd, ScratchDir) {
    assert!(
        rustix::process::geteuid().is_root(),
        "containerd runs containers and must run as root"
    );
    let scratch = scratch_dir(name).expect("scratch");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/build-busybox-image.sh");
    let built = Command::new(&script)
        .env("HUSK_CACHE_DIR", scratch.path())
        .output()
        .expect("build-busybox-image.sh ran");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    // The state root holds sockets: a short path.
    let state = PathBuf::from(format!("/tmp/husk-shim-state-{}", std::process::id()));
    std::fs::write(
        scratch.join("config.toml"),
        format!(
            "hypervisor = \"host\"\nroot = \"{}\"\ncache = \"{}\"\n",
            state.display(),
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
    containerd
        .import(&scratch.join("images/busybox.tar"))
        .expect("import");
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
    let state = format!("/tmp/husk-shim-state-{}", std::process::id());
    assert!(
        processes_with(&state).is_empty(),
        "{:?}",
        processes_with(&state)
    );
    let _ = std::fs::remove_dir_all(&state);
    drop(scratch);
}
