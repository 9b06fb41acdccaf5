//! Container root file systems, as the backend needs them (the work itself is in the
//! `husk-storage` crate: images, the content cache, block images).
//!
//! | source | host backend | builtin backend |
//! |---|---|---|
//! | a bundle's rootfs | the directory itself (writes land in it, as with runc) | a cached read-only ext4 drive with an overlay in the guest |
//! | a shared directory (`--rootfs`) | the directory under an overlay | the same drive and overlay |
//! | an image | the cached unpacked image under an overlay | the same drive and overlay |
//!
//! Shared sources are never written: the agent puts the container's writes in an overlay
//! of its own (guest memory, or the sandbox directory on the host).

use std::path::{Path, PathBuf};

use husk_protocol::Rootfs;
pub use husk_storage::{Cache, ImageDefaults, StorageError};
use husk_vmm::DriveConfig;
use serde::{Deserialize, Serialize};

use crate::hypervisor::Capabilities;

/// Where a container's root file system comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RootfsSource {
    /// A directory; `shared` ones are never written.
    Directory { path: PathBuf, shared: bool },
    /// An unpacked image in the cache.
    Image { rootfs: PathBuf, key: String },
}

impl RootfsSource {
    pub fn path(&self) -> &Path {
        match self {
            RootfsSource::Directory { path, .. } => path,
            RootfsSource::Image { rootfs, .. } => rootfs,
        }
    }
}

/// An image unpacked into the cache: the source for its containers and their defaults.
pub fn image(
    cache: &Cache,
    image: &Path,
    reference: Option<&str>,
) -> Result<(RootfsSource, ImageDefaults), StorageError> {
    let unpacked = husk_storage::unpack_image(cache, image, reference)?;
    let source = RootfsSource::Image {
        rootfs: unpacked.rootfs,
        key: unpacked.key,
    };
    Ok((source, unpacked.defaults))
}

/// A root file system ready to hand to the agent, with the drive it needs, if any.
pub struct Prepared {
    pub for_agent: Rootfs,
    pub drive: Option<DriveConfig>,
}

/// Prepares `source` for a backend with `capabilities`; a drive it needs gets `serial`
/// (unique in its sandbox, at most 20 bytes), by which the agent finds it.
pub fn prepare(
    cache: &Cache,
    source: &RootfsSource,
    capabilities: &Capabilities,
    serial: &str,
) -> Result<Prepared, StorageError> {
    if capabilities.rootfs_as_block_device {
        let (dir, key) = match source {
            RootfsSource::Image { rootfs, key } => (rootfs.clone(), key.clone()),
            RootfsSource::Directory { path, .. } => (path.clone(), husk_storage::tree_key(path)?),
        };
        let image = husk_storage::ext4_image(cache, &key, &dir)?;
        return Ok(Prepared {
            for_agent: Rootfs::BlockDevice {
                serial: serial.to_owned(),
                fs_type: "ext4".into(),
                overlay: true,
            },
            drive: Some(DriveConfig {
                path: image,
                read_only: true,
                id: Some(serial.to_owned()),
            }),
        });
    }
    let (path, overlay) = match source {
        RootfsSource::Directory { path, shared } => (path.clone(), *shared),
        RootfsSource::Image { rootfs, .. } => (rootfs.clone(), true),
    };
    Ok(Prepared {
        for_agent: Rootfs::Directory { path, overlay },
        drive: None,
    })
}
