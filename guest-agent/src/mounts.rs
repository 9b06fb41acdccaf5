//! The file systems PID 1 mounts before anything else: a tmpfs root in place of the
//! initramfs, proc, sysfs, devtmpfs, the pty and shared-memory file systems, `/run`, and
//! cgroup v2.

use std::ffi::CStr;
use std::path::Path;

use rustix::mount::MountFlags;

use crate::error::Error;

struct Mount {
    fstype: &'static str,
    target: &'static str,
    flags: MountFlags,
    data: Option<&'static CStr>,
}

const SAFE: MountFlags = MountFlags::NOSUID.union(MountFlags::NODEV);

/// In order: a target may lie on an earlier mount.
const MOUNTS: [Mount; 7] = [
    Mount {
        fstype: "proc",
        target: "/proc",
        flags: SAFE.union(MountFlags::NOEXEC),
        data: None,
    },
    Mount {
        fstype: "sysfs",
        target: "/sys",
        flags: SAFE.union(MountFlags::NOEXEC),
        data: None,
    },
    Mount {
        fstype: "devtmpfs",
        target: "/dev",
        flags: MountFlags::NOSUID.union(MountFlags::NOEXEC),
        data: Some(c"mode=0755"),
    },
    Mount {
        fstype: "devpts",
        target: "/dev/pts",
        flags: MountFlags::NOSUID.union(MountFlags::NOEXEC),
        data: Some(c"mode=0620,ptmxmode=0666"),
    },
    Mount {
        fstype: "tmpfs",
        target: "/dev/shm",
        flags: SAFE,
        data: Some(c"mode=1777"),
    },
    Mount {
        fstype: "tmpfs",
        target: "/run",
        flags: SAFE,
        data: Some(c"mode=0755"),
    },
    Mount {
        fstype: "cgroup2",
        target: "/sys/fs/cgroup",
        flags: SAFE.union(MountFlags::NOEXEC),
        data: None,
    },
];

/// Where the new root is mounted before it is moved onto `/`.
const NEW_ROOT: &str = "/.husk-root";

/// Replaces an initramfs root with a tmpfs mounted over it.
///
/// The kernel refuses `pivot_root` while the root is the initramfs itself (a mount with
/// no parent), and containers are set up with `pivot_root`. So, as `switch_root` does,
/// a tmpfs is moved onto `/` and becomes the root. The agent keeps running from its
/// file in the initramfs (it re-executes itself through `/proc/self/exe`), so nothing
/// needs copying. A root that is not a RAM file system (a disk) is left alone.
pub fn leave_initramfs() -> Result<(), Error> {
    const RAMFS_MAGIC: u64 = 0x8584_58f6;
    const TMPFS_MAGIC: u64 = 0x0102_1994;
    let step = |step: &'static str| {
        move |e: rustix::io::Errno| Error::LeaveInitramfs {
            step,
            source: e.into(),
        }
    };
    let root_type = rustix::fs::statfs("/").map_err(step("statfs /"))?.f_type as u64;
    if root_type != RAMFS_MAGIC && root_type != TMPFS_MAGIC {
        return Ok(());
    }
    std::fs::create_dir_all(NEW_ROOT).map_err(|source| Error::LeaveInitramfs {
        step: "creating /.husk-root",
        source,
    })?;
    rustix::mount::mount(
        "tmpfs",
        NEW_ROOT,
        "tmpfs",
        MountFlags::NOSUID,
        Some(c"mode=0755"),
    )
    .map_err(step("mounting a tmpfs on /.husk-root"))?;
    // The directories the initramfs had that nothing mounts over.
    for (dir, mode) in [("root", 0o700), ("tmp", 0o1777)] {
        let path = Path::new(NEW_ROOT).join(dir);
        rustix::fs::mkdir(&path, rustix::fs::Mode::from_raw_mode(mode))
            .map_err(step("creating /root and /tmp"))?;
        // mkdir applies the umask; the sticky /tmp must be exactly 1777.
        rustix::fs::chmod(&path, rustix::fs::Mode::from_raw_mode(mode))
            .map_err(step("creating /root and /tmp"))?;
    }
    rustix::process::chdir(NEW_ROOT).map_err(step("chdir /.husk-root"))?;
    rustix::mount::mount_move(".", "/").map_err(step("moving /.husk-root onto /"))?;
    rustix::process::chroot(".").map_err(step("chroot"))?;
    rustix::process::chdir("/").map_err(step("chdir /"))?;
    Ok(())
}

/// Mounts them all; returns the errors (each mount is tried regardless of the others).
pub fn mount_all() -> Vec<Error> {
    MOUNTS.iter().filter_map(|m| mount(m).err()).collect()
}

fn mount(m: &Mount) -> Result<(), Error> {
    let target = Path::new(m.target);
    if let Err(source) = std::fs::create_dir_all(target) {
        return Err(Error::MountPoint {
            path: m.target,
            source,
        });
    }
    if is_mount_point(target)? {
        return Ok(());
    }
    rustix::mount::mount(m.fstype, target, m.fstype, m.flags, m.data).map_err(|e| Error::Mount {
        fstype: m.fstype,
        target: m.target,
        source: e.into(),
    })
}

/// Whether `path` is already a mount point: its device differs from its parent's.
fn is_mount_point(path: &'static Path) -> Result<bool, Error> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    Ok(device(path)? != device(parent)?)
}

fn device(path: &Path) -> Result<u64, Error> {
    rustix::fs::stat(path)
        .map(|st| st.st_dev)
        .map_err(|e| Error::Read {
            path: "a mount point",
            source: e.into(),
        })
}
