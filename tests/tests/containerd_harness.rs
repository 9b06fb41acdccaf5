//! The private containerd harness that the shim's end-to-end tests stand on, checked with
//! containerd's own runtime (runc): it starts, imports the busybox image that
//! resources/build-busybox-image.sh builds, runs a container with `ctr run`, and leaves
//! nothing behind when dropped. As root, with Debian's containerd and runc.

use std::path::Path;

use husk_tests::containerd::{Containerd, BUSYBOX_IMAGE};
use husk_tests::process::processes_with;
use husk_tests::scratch_dir;

#[test]
fn a_private_containerd_runs_the_busybox_image_with_runc_and_cleans_up() {
    assert!(
        rustix::process::geteuid().is_root(),
        "containerd runs containers and must run as root"
    );
    let scratch = scratch_dir("containerd-harness").expect("scratch");
    let image = husk_tests::rootfs::busybox_image(scratch.path()).expect("the busybox image");

    let containerd = Containerd::start("harness").expect("containerd");
    let address = containerd.address().to_string_lossy().into_owned();
    containerd.import(&image).expect("import");
    // Ids unique to this run: runc keeps its state in one place for every containerd.
    let (first, second) = (
        format!("harness-{}-1", std::process::id()),
        format!("harness-{}-2", std::process::id()),
    );
    let run = containerd
        .ctr(&[
            "run",
            "--rm",
            BUSYBOX_IMAGE,
            &first,
            "sh",
            "-c",
            "echo hello; exit 3",
        ])
        .expect("ctr run");
    assert_eq!(
        run.code(),
        Some(3),
        "{}\n{}",
        run.describe(),
        containerd.log()
    );
    assert_eq!(run.stdout, "hello\n", "{}", run.describe());
    // A container left running, for the clean-up to deal with.
    let run = containerd
        .ctr(&["run", "-d", BUSYBOX_IMAGE, &second, "sleep", "7391"])
        .expect("ctr run -d");
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    drop(containerd);
    assert!(
        processes_with("sleep 7391").is_empty(),
        "the container's process is left"
    );
    assert!(
        processes_with(&address).is_empty(),
        "{:?}",
        processes_with(&address)
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let dir = address.trim_end_matches("/c.sock");
    assert!(!mounts.contains(dir), "mounts left under {dir}");
    assert!(!Path::new(dir).exists(), "{dir} left");
}
