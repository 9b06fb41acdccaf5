//! A busybox root file system for test containers, from Debian's `busybox-static`
//! (`/bin/busybox`): `bin/busybox` and a link for each of its applets, plus the few
//! files a container expects. Built once per busybox binary under
//! `target/husk-test-rootfs/<hash>/` and shared read-only by the tests (a test that
//! writes gets its own copy or a tmpfs mount from its spec).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{build_dirs, Error};

/// Debian's statically linked busybox.
pub const BUSYBOX: &str = "/bin/busybox";

/// The rootfs directory, built if missing.
pub fn busybox_rootfs() -> Result<PathBuf, Error> {
    // One builder per process (tests run on parallel threads); processes race safely
    // through the rename below.
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILDING.lock().unwrap_or_else(|p| p.into_inner());
    let busybox = read_busybox()?;
    let mut hasher = DefaultHasher::new();
    busybox.hash(&mut hasher);
    let dir = build_dirs()?
        .target
        .join("husk-test-rootfs")
        .join(format!("{:016x}", hasher.finish()));
    let done = dir.join(".complete");
    if done.exists() {
        return Ok(dir.join("rootfs"));
    }
    // Built in a fresh directory and renamed into place, so concurrent tests never see
    // half a rootfs.
    let building = dir.with_extension(format!("building-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&building);
    build(&building.join("rootfs"), &busybox)?;
    std::fs::write(building.join(".complete"), b"")
        .map_err(|e| Error(format!("marking {}: {e}", building.display())))?;
    if std::fs::rename(&building, &dir).is_err() {
        // Another test won the race; its rootfs is as good as ours.
        let _ = std::fs::remove_dir_all(&building);
    }
    if !done.exists() {
        return Err(Error(format!("{} was not built", dir.display())));
    }
    Ok(dir.join("rootfs"))
}

/// Builds the same tree at `root`, a directory of the caller's own (to write to, or to
/// add files to).
pub fn build_busybox_tree(root: &Path) -> Result<(), Error> {
    build(root, &read_busybox()?)
}

fn read_busybox() -> Result<Vec<u8>, Error> {
    std::fs::read(BUSYBOX).map_err(|e| {
        Error(format!(
            "{BUSYBOX}: {e} (install Debian's busybox-static: apt-get install busybox-static)"
        ))
    })
}

fn build(root: &Path, busybox: &[u8]) -> Result<(), Error> {
    let mkdir = |rel: &str| {
        std::fs::create_dir_all(root.join(rel))
            .map_err(|e| Error(format!("creating {rel} in {}: {e}", root.display())))
    };
    for dir in [
        "bin",
        "etc",
        "proc",
        "sys",
        "dev",
        "tmp",
        "root",
        "home/user",
    ] {
        mkdir(dir)?;
    }
    let write = |rel: &str, data: &[u8]| {
        std::fs::write(root.join(rel), data)
            .map_err(|e| Error(format!("writing {rel} in {}: {e}", root.display())))
    };
    write("bin/busybox", busybox)?;
    set_mode(&root.join("bin/busybox"), 0o755)?;
    set_mode(&root.join("tmp"), 0o1777)?;
    write(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n",
    )?;
    write("etc/group", b"root:x:0:\nuser:x:1000:\n")?;
    // A file only root may write, for the permission tests.
    write("etc/root-only", b"root's\n")?;
    set_mode(&root.join("etc/root-only"), 0o644)?;
    let list = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .map_err(|e| Error(format!("{BUSYBOX} --list: {e}")))?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = root.join("bin").join(applet);
        if applet != "busybox" && !link.exists() {
            std::os::unix::fs::symlink("busybox", &link)
                .map_err(|e| Error(format!("linking {}: {e}", link.display())))?;
        }
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error(format!("chmod {}: {e}", path.display())))
}

/// An OCI bundle at `dir` whose process runs `args` (no terminal, as root, cwd /) on its
/// own copy of the busybox tree (`dir/rootfs`), in fresh PID, mount, IPC, UTS and
/// network namespaces with /proc, /dev and /dev/pts: what runc needs, and husk too.
pub fn busybox_bundle(dir: &Path, args: &[&str]) -> Result<(), Error> {
    build_busybox_tree(&dir.join("rootfs"))?;
    let namespaces: Vec<serde_json::Value> = ["pid", "mount", "ipc", "uts", "network"]
        .iter()
        .map(|t| serde_json::json!({ "type": t }))
        .collect();
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": 0, "gid": 0 },
            "args": args,
            "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_KILL", "CAP_CHOWN", "CAP_SETUID", "CAP_SETGID"],
                "effective": ["CAP_KILL", "CAP_CHOWN", "CAP_SETUID", "CAP_SETGID"],
                "permitted": ["CAP_KILL", "CAP_CHOWN", "CAP_SETUID", "CAP_SETGID"]
            },
            "noNewPrivileges": true
        },
        "root": { "path": "rootfs", "readonly": false },
        "hostname": "bundle",
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            { "destination": "/dev/pts", "type": "devpts", "source": "devpts",
              "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"] }
        ],
        "linux": { "namespaces": namespaces }
    });
    let text = serde_json::to_string_pretty(&spec)
        .map_err(|e| Error(format!("the bundle's config.json: {e}")))?;
    std::fs::write(dir.join("config.json"), text)
        .map_err(|e| Error(format!("writing {}/config.json: {e}", dir.display())))
}

/// The busybox OCI image as the set-up builds it (resources/build-busybox-image.sh), into
/// `dir/images/busybox.tar`; returns that path.
pub fn busybox_image(dir: &Path) -> Result<std::path::PathBuf, Error> {
    image_from_script(dir, "build-busybox-image.sh", "busybox.tar")
}

/// Runs `resources/SCRIPT` with `HUSK_CACHE_DIR=dir`; the image it builds is
/// `dir/images/TAR`.
pub fn image_from_script(dir: &Path, script: &str, tar: &str) -> Result<PathBuf, Error> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../resources")
        .join(script);
    let out = Command::new(&script)
        .env("HUSK_CACHE_DIR", dir)
        .output()
        .map_err(|e| Error(format!("{}: {e}", script.display())))?;
    if !out.status.success() {
        return Err(Error(format!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(dir.join("images").join(tar))
}
