//! The rest of a VMM thread's confinement, before its seccomp filter: what the thread
//! could still do with the calls its filter allows, taken away too.
//!
//! - **No capabilities.** The thread drops every capability (effective, permitted,
//!   inheritable): capabilities belong to a thread, so the runtime's own threads, which
//!   mount file systems and open taps, keep theirs. What a filtered thread may still do
//!   (write to its file descriptors, connect to a Unix socket) it then does as an
//!   ordinary process of its user would.
//! - **An empty root (vCPU threads).** The thread stops sharing its file-system context
//!   with the process (`unshare(CLONE_FS)`) and changes its root to an empty directory
//!   that nobody can write ([`EMPTY_ROOT`]): no path it could name leads anywhere. The
//!   event loop keeps the host's root, because the hybrid vsock device connects guest
//!   connections to Unix sockets by path (`<uds>_<port>`).
//!
//! A process without `CAP_SYS_CHROOT` (husk run by a user in the `kvm` group) cannot
//! change a thread's root; it gets the rest, and the log says so.

use std::path::Path;

/// The empty directory vCPU threads take as their root.
pub const EMPTY_ROOT: &str = "/run/husk/.empty";

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum JailError {
    /// cannot unshare the thread's file-system context: {0}
    Unshare(std::io::Error),
    /// cannot prepare the empty root /run/husk/.empty: {0}
    EmptyRoot(std::io::Error),
    /// /run/husk/.empty is not empty: refusing it as a thread's root
    RootNotEmpty,
    /// cannot change the thread's root to /run/husk/.empty: {0}
    Chroot(std::io::Error),
    /// cannot drop the thread's capabilities: {0}
    Capabilities(std::io::Error),
}

/// What the calling thread's root becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    /// [`EMPTY_ROOT`], when the process may change a thread's root.
    Empty,
    /// The host's, unchanged.
    Host,
}

/// Confines the calling thread as the module describes, for the rest of its life.
pub fn confine_thread(root: Root) -> Result<(), JailError> {
    if root == Root::Empty {
        if may_chroot() {
            enter_empty_root()?;
        } else {
            log::info!(
                "this process may not change a thread's root (no CAP_SYS_CHROOT): \
                 the VMM's vCPU threads keep the host's"
            );
        }
    }
    let none = rustix::thread::CapabilitySet::empty();
    rustix::thread::set_capabilities(
        None,
        rustix::thread::CapabilitySets {
            effective: none,
            permitted: none,
            inheritable: none,
        },
    )
    .map_err(|e| JailError::Capabilities(e.into()))
}

fn may_chroot() -> bool {
    rustix::thread::capabilities(None).is_ok_and(|sets| {
        sets.effective
            .contains(rustix::thread::CapabilitySet::SYS_CHROOT)
    })
}

fn enter_empty_root() -> Result<(), JailError> {
    // SAFETY: CLONE_FS only gives this thread its own root, working directory and umask;
    // no file descriptor table is unshared, so every fd stays valid everywhere.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS) }
        .map_err(|e| JailError::Unshare(e.into()))?;
    let root = Path::new(EMPTY_ROOT);
    prepare_empty_root(root)?;
    rustix::process::chroot(root).map_err(|e| JailError::Chroot(e.into()))?;
    rustix::process::chdir("/").map_err(|e| JailError::Chroot(e.into()))
}

/// Makes [`EMPTY_ROOT`] (mode 0555) if it is missing, and checks that it is empty.
fn prepare_empty_root(root: &Path) -> Result<(), JailError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(parent) = root.parent() {
        std::fs::create_dir_all(parent).map_err(JailError::EmptyRoot)?;
    }
    match std::fs::DirBuilder::new().mode(0o555).create(root) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(JailError::EmptyRoot(e))
        }
        _ => {}
    }
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o555))
        .map_err(JailError::EmptyRoot)?;
    let mut entries = std::fs::read_dir(root).map_err(JailError::EmptyRoot)?;
    if entries.next().is_some() {
        return Err(JailError::RootNotEmpty);
    }
    Ok(())
}
