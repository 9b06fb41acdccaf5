//! The container's `/dev`.
//!
//! Unless the spec bind-mounts `/dev` from outside (then it is left alone), the container
//! gets the usual minimal `/dev`, as runc gives it: a tmpfs (the spec's own `/dev` mount,
//! or one the agent adds), the nodes `null zero full random urandom tty` (made with
//! `mknod`, or bind-mounted from the agent's `/dev` where `mknod` is not allowed), a fresh
//! devpts instance on `/dev/pts` (`newinstance,ptmxmode=0666`) with `/dev/ptmx` →
//! `pts/ptmx`, a tmpfs on `/dev/shm`, and the links `fd` → `/proc/self/fd`, `stdin`,
//! `stdout`, `stderr` → `/proc/self/fd/{0,1,2}`. The spec's own `/dev/pts` and `/dev/shm`
//! mounts take the place of the agent's. Then the spec's `linux.devices` are made.
//! Everything is created through the rootfs fd (see `mounts.rs`): nothing escapes.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount};
use rustix::fs::{self, AtFlags, FileType, Mode};
use rustix::io::Errno;
use rustix::mount::{self as mnt, MountFlags};
use rustix::process::{Gid, Uid};

use super::mounts::{self, Kind, MountError};

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum DeviceError {
    /// {what} {path}: {step}: {source}
    Node {
        what: String,
        path: String,
        step: &'static str,
        source: Errno,
    },
    /// {what} {path}: major {major} / minor {minor} out of range
    Number {
        what: String,
        path: String,
        major: i64,
        minor: i64,
    },
    /// {what} {path}: "a" is not a device type (c, b, u or p)
    Type { what: String, path: String },
    /// {0}
    Mount(#[from] MountError),
}

/// What the spec mounts itself under `/dev`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DevPlan {
    /// The spec mounts something on `/dev`.
    pub dev: bool,
    /// ... and it is a bind mount (then the agent adds nothing to it).
    pub dev_is_bind: bool,
    /// The spec mounts `/dev/pts`.
    pub pts: bool,
    /// The spec mounts `/dev/shm`.
    pub shm: bool,
}

impl DevPlan {
    pub fn new(spec_mounts: &[Mount]) -> DevPlan {
        let mut plan = DevPlan::default();
        for m in spec_mounts {
            let dest = m.destination();
            if dest == Path::new("/dev") {
                plan.dev = true;
                let bind = m.typ().as_deref() == Some("bind")
                    || m.options()
                        .iter()
                        .flatten()
                        .any(|o| o == "bind" || o == "rbind");
                plan.dev_is_bind = bind;
            } else if dest == Path::new("/dev/pts") {
                plan.pts = true;
            } else if dest == Path::new("/dev/shm") {
                plan.shm = true;
            }
        }
        plan
    }
}

/// The nodes every container gets: name, major, minor (all character devices, 0666).
const DEFAULT_NODES: [(&str, u32, u32); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

const LINKS: [(&str, &str); 5] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
];

/// Before the spec's mounts: a tmpfs on `/dev` if the spec has none.
pub fn mount_dev(root: BorrowedFd<'_>, plan: &DevPlan) -> Result<(), DeviceError> {
    if !plan.dev {
        mounts::mount_fs(
            root,
            "/dev",
            Path::new("/dev"),
            "tmpfs",
            MountFlags::NOSUID | MountFlags::STRICTATIME,
            "mode=755,size=65536k",
        )?;
    }
    Ok(())
}

/// After the spec's mounts: the default nodes, pts, shm and links (unless `/dev` is a
/// bind mount), then the spec's devices.
pub fn populate(
    root: BorrowedFd<'_>,
    plan: &DevPlan,
    devices: &[LinuxDevice],
) -> Result<(), DeviceError> {
    if !plan.dev_is_bind {
        default_dev(root, plan)?;
    }
    for (index, device) in devices.iter().enumerate() {
        make_device(root, &format!("linux.devices[{index}]"), device)?;
    }
    Ok(())
}

fn default_dev(root: BorrowedFd<'_>, plan: &DevPlan) -> Result<(), DeviceError> {
    let what = "/dev";
    let dev = mounts::create_in_root(root, Path::new("/dev"), Kind::Dir).map_err(|source| {
        DeviceError::Node {
            what: what.to_owned(),
            path: "/dev".to_owned(),
            step: "opening it",
            source,
        }
    })?;
    for (name, major, minor) in DEFAULT_NODES {
        let made = fs::mknodat(
            &dev,
            name,
            FileType::CharacterDevice,
            Mode::from_bits_truncate(0o666),
            fs::makedev(major, minor),
        );
        match made {
            Ok(()) | Err(Errno::EXIST) => {}
            // No CAP_MKNOD (or a nodev-locked context): borrow the agent's node.
            Err(Errno::PERM) | Err(Errno::ACCESS) => bind_host_node(root, name)?,
            Err(source) => {
                return Err(DeviceError::Node {
                    what: what.to_owned(),
                    path: format!("/dev/{name}"),
                    step: "mknod",
                    source,
                })
            }
        }
    }
    if !plan.pts {
        mounts::mount_fs(
            root,
            "/dev/pts",
            Path::new("/dev/pts"),
            "devpts",
            MountFlags::NOSUID | MountFlags::NOEXEC,
            "newinstance,ptmxmode=0666,mode=0620,gid=5",
        )?;
    }
    if !plan.shm {
        mounts::mount_fs(
            root,
            "/dev/shm",
            Path::new("/dev/shm"),
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            "mode=1777,size=65536k",
        )?;
    }
    for (name, target) in LINKS {
        match fs::symlinkat(target, &dev, name) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(source) => {
                return Err(DeviceError::Node {
                    what: what.to_owned(),
                    path: format!("/dev/{name}"),
                    step: "symlink",
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Bind-mounts the agent's `/dev/<name>` onto an empty file at the container's.
fn bind_host_node(root: BorrowedFd<'_>, name: &str) -> Result<(), DeviceError> {
    let path = format!("/dev/{name}");
    let err = |step, source| DeviceError::Node {
        what: "/dev".to_owned(),
        path: path.clone(),
        step,
        source,
    };
    let target = mounts::create_in_root(root, Path::new(&path), Kind::File)
        .map_err(|e| err("creating it", e))?;
    mnt::mount_bind(path.as_str(), mounts::fd_path(&target))
        .map_err(|e| err("binding the agent's node", e))
}

/// Makes one of the spec's `linux.devices` (left alone if the path exists already).
fn make_device(root: BorrowedFd<'_>, what: &str, device: &LinuxDevice) -> Result<(), DeviceError> {
    let path = device.path();
    let shown = path.display().to_string();
    let err = |step, source| DeviceError::Node {
        what: what.to_owned(),
        path: shown.clone(),
        step,
        source,
    };
    let file_type = match device.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => FileType::CharacterDevice,
        LinuxDeviceType::B => FileType::BlockDevice,
        LinuxDeviceType::P => FileType::Fifo,
        LinuxDeviceType::A => {
            return Err(DeviceError::Type {
                what: what.to_owned(),
                path: shown,
            })
        }
    };
    let (major, minor) = (device.major(), device.minor());
    let number = match (u32::try_from(major), u32::try_from(minor)) {
        (Ok(ma), Ok(mi)) => fs::makedev(ma, mi),
        _ if file_type == FileType::Fifo => fs::makedev(0, 0),
        _ => {
            return Err(DeviceError::Number {
                what: what.to_owned(),
                path: shown,
                major,
                minor,
            })
        }
    };
    let (parent, name) = match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => (parent, name),
        _ => return Err(err("not a file path", Errno::INVAL)),
    };
    let dir: OwnedFd = mounts::create_in_root(root, parent, Kind::Dir)
        .map_err(|e| err("creating its directory", e))?;
    let mode = Mode::from_bits_truncate(device.file_mode().unwrap_or(0o666) & 0o7777);
    match fs::mknodat(&dir, name, file_type, mode, number) {
        Ok(()) => {}
        Err(Errno::EXIST) => return Ok(()),
        Err(e) => return Err(err("mknod", e)),
    }
    if device.uid().is_some() || device.gid().is_some() {
        fs::chownat(
            &dir,
            name,
            device.uid().map(Uid::from_raw),
            device.gid().map(Gid::from_raw),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| err("chown", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_reads_the_spec_dev_mounts() -> Result<(), serde_json::Error> {
        let mounts: Vec<Mount> = serde_json::from_str(
            r#"[{"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
                {"destination": "/dev/pts/", "type": "devpts", "source": "devpts"}]"#,
        )?;
        assert_eq!(
            DevPlan::new(&mounts),
            DevPlan {
                dev: true,
                dev_is_bind: false,
                pts: true,
                shm: false
            }
        );
        let mounts: Vec<Mount> = serde_json::from_str(
            r#"[{"destination": "/dev", "source": "/dev", "options": ["rbind", "rw"]}]"#,
        )?;
        let plan = DevPlan::new(&mounts);
        assert!(plan.dev && plan.dev_is_bind && !plan.pts);
        assert_eq!(DevPlan::new(&[]), DevPlan::default());
        Ok(())
    }
}
