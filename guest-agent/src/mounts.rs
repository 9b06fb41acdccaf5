//! The file systems PID 1 mounts before anything else: proc, sysfs, devtmpfs, the pty
//! and shared-memory file systems, `/run`, and cgroup v2.

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
