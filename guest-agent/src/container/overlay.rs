//! A container's writable overlay over a shared image (`Rootfs { overlay: true }`): the
//! image (a directory, or the mount point of its drive) is the lower layer, and
//! `<container dir>/overlay/upper` the upper layer, so the container's writes land in its
//! own directory and the image stays as it was (overlayfs never writes to a lower layer).
//! The merged tree, `<container dir>/overlay/merged`, is the container's rootfs.
//!
//! The overlay is mounted in the agent's own mount namespace, before the container's
//! process exists: the container's mount namespace starts as a copy of the agent's, finds
//! the merged tree at the same path and binds and pivots into it like any rootfs (and
//! `root.readonly` remounts that bind read-only, which the overlay allows). The mount in
//! the agent's namespace is the one to tear down, with the container: after its processes
//! are gone and before its drive is released.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::io::Errno;
use rustix::mount::{MountFlags, UnmountFlags};

/// `f_type` of an overlayfs (`OVERLAYFS_SUPER_MAGIC`).
const OVERLAYFS_MAGIC: u64 = 0x794c_7630;

/// The most option bytes `mount(2)` passes on (one page, with its final NUL): longer
/// options would be cut short, and the overlay would fail with a confusing error.
const MAX_OPTIONS: usize = 4095;

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum OverlayError {
    /// creating {path}: {source}
    Create { path: String, source: io::Error },
    /// checking the file system of {path}: {source}
    Statfs { path: String, source: Errno },
    /// the overlay's upper directory {path} is on overlayfs, which cannot hold an overlay's upper layer: give the agent a run directory on another file system (tmpfs, ext4, xfs)
    UpperOnOverlay { path: String },
    /// the overlay's options for {merged} are {len} bytes, more than mount(2) takes (4095): shorten the rootfs or run directory paths
    TooLong { merged: String, len: usize },
    /// the overlay's options for {merged} contain a NUL byte
    Nul { merged: String },
    /// mounting an overlay of {lower} on {merged}: {source}
    Mount {
        lower: String,
        merged: String,
        source: Errno,
    },
    /// unmounting the overlay on {merged}: {source}
    Unmount { merged: String, source: Errno },
}

/// An overlay mounted for one container; unmounted by [`Overlay::unmount`].
#[derive(Debug)]
pub struct Overlay {
    merged: PathBuf,
}

impl Overlay {
    /// Mounts an overlay of `lower` with its upper, work and merged directories under
    /// `<container_dir>/overlay`, which must not exist yet: an upper left from an earlier
    /// container of the same id must not show through.
    pub fn mount(lower: &Path, container_dir: &Path) -> Result<Overlay, OverlayError> {
        let base = container_dir.join("overlay");
        let upper = base.join("upper");
        let work = base.join("work");
        let merged = base.join("merged");
        for dir in [&base, &upper, &work, &merged] {
            std::fs::create_dir(dir).map_err(|source| OverlayError::Create {
                path: dir.display().to_string(),
                source,
            })?;
        }
        check_upper_fs(&base)?;
        let options = options(lower, &upper, &work);
        let data = CString::new(options).map_err(|_| OverlayError::Nul {
            merged: merged.display().to_string(),
        })?;
        if data.as_bytes().len() > MAX_OPTIONS {
            return Err(OverlayError::TooLong {
                merged: merged.display().to_string(),
                len: data.as_bytes().len(),
            });
        }
        // nosuid and nodev, as the drives images come on are mounted: an image is not
        // trusted to bring set-uid programs or device nodes (the container's /dev is made
        // apart from it).
        let flags = MountFlags::NOSUID | MountFlags::NODEV;
        rustix::mount::mount("overlay", &merged, "overlay", flags, data.as_c_str()).map_err(
            |source| OverlayError::Mount {
                lower: lower.display().to_string(),
                merged: merged.display().to_string(),
                source,
            },
        )?;
        Ok(Overlay { merged })
    }

    /// The merged tree: the container's rootfs.
    pub fn merged(&self) -> &Path {
        &self.merged
    }

    /// Unmounts the overlay. The container's processes are gone by now, and their mount
    /// namespaces held copies of the mount, not this one; if something of the agent's
    /// still uses it, it is detached instead (and goes when that lets go).
    pub fn unmount(&self) -> Result<(), OverlayError> {
        let err = |source| OverlayError::Unmount {
            merged: self.merged.display().to_string(),
            source,
        };
        match rustix::mount::unmount(&self.merged, UnmountFlags::empty()) {
            Ok(()) => Ok(()),
            Err(Errno::BUSY) => {
                log::warn!(
                    "the overlay on {} is busy: detaching it",
                    self.merged.display()
                );
                rustix::mount::unmount(&self.merged, UnmountFlags::DETACH).map_err(err)
            }
            Err(e) => Err(err(e)),
        }
    }
}

/// Refuses an upper layer on overlayfs, which the kernel does not take (its error would
/// only say "invalid argument").
fn check_upper_fs(path: &Path) -> Result<(), OverlayError> {
    let stat = rustix::fs::statfs(path).map_err(|source| OverlayError::Statfs {
        path: path.display().to_string(),
        source,
    })?;
    // `f_type` is signed on some targets; the magic numbers are what matters.
    if stat.f_type as u64 == OVERLAYFS_MAGIC {
        return Err(OverlayError::UpperOnOverlay {
            path: path.display().to_string(),
        });
    }
    Ok(())
}

/// The overlay's mount options, each path escaped as overlayfs parses them.
fn options(lower: &Path, upper: &Path, work: &Path) -> Vec<u8> {
    let mut options = Vec::new();
    for (key, path) in [
        ("lowerdir=", lower),
        ("upperdir=", upper),
        ("workdir=", work),
    ] {
        if !options.is_empty() {
            options.push(b',');
        }
        options.extend_from_slice(key.as_bytes());
        escape_into(&mut options, path);
    }
    options
}

/// overlayfs splits its options at ',' and lower layers at ':', and takes a '\' as
/// escaping the next byte: so a path with any of them needs them escaped.
fn escape_into(out: &mut Vec<u8>, path: &Path) {
    for &b in path.as_os_str().as_bytes() {
        if matches!(b, b',' | b':' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_name_the_three_directories() {
        let options = options(
            Path::new("/run/husk/.drives/img"),
            Path::new("/run/husk/c1/overlay/upper"),
            Path::new("/run/husk/c1/overlay/work"),
        );
        assert_eq!(
            String::from_utf8_lossy(&options),
            "lowerdir=/run/husk/.drives/img,upperdir=/run/husk/c1/overlay/upper,\
             workdir=/run/husk/c1/overlay/work"
        );
    }

    #[test]
    fn separators_in_paths_are_escaped() {
        let options = options(
            Path::new("/images/a,b:c\\d"),
            Path::new("/u"),
            Path::new("/w"),
        );
        assert_eq!(
            String::from_utf8_lossy(&options),
            "lowerdir=/images/a\\,b\\:c\\\\d,upperdir=/u,workdir=/w"
        );
    }

    #[test]
    fn a_missing_upper_is_an_error_not_a_panic() {
        let missing = Path::new("/nonexistent/husk-overlay-test");
        assert!(matches!(
            check_upper_fs(missing),
            Err(OverlayError::Statfs { .. })
        ));
    }
}
