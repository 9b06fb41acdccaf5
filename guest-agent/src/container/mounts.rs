//! The container's mount tree: the rootfs bind, the spec's mounts, `pivot_root`, masked
//! and read-only paths, a read-only root.
//!
//! Every path inside the rootfs is resolved by the kernel with `openat2(rootfs_fd, path,
//! RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`: `..` and absolute symlinks stay inside the
//! rootfs, whatever the image holds, and `/proc/<pid>/root`-style magic links are refused.
//! The result is an `O_PATH` fd; the mount goes onto `/proc/self/fd/<n>` (the agent's own
//! `/proc`, still reachable before `pivot_root`), so the kernel mounts on exactly the
//! inode that was resolved. Missing directories (and files, for file bind mounts) are
//! created one component at a time in their already-resolved parent with `mkdirat` /
//! `openat(O_CREAT|O_EXCL)`, which never follow a symlink; a dangling symlink on the way
//! is followed (inside the rootfs) and its target created.
//!
//! After `pivot_root` nothing outside the rootfs is reachable any more, so masked and
//! read-only paths use plain paths.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::Mount;
use rustix::fs::{self, Mode, OFlags, ResolveFlags, StatVfsMountFlags};
use rustix::io::Errno;
use rustix::mount::{self as mnt, MountFlags, MountPropagationFlags, UnmountFlags};

/// A mount option the agent refuses.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum OptionError {
    /// option {0:?}: idmapped mounts are not supported
    Idmap(String),
    /// option {0:?}: recursive mount attributes are not supported
    RecursiveAttr(String),
    /// option {0:?}: contains a NUL byte
    Nul(String),
}

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum MountError {
    /// {what} {path}: cannot open it inside the rootfs: {source}
    Resolve {
        what: String,
        path: String,
        source: Errno,
    },
    /// {what} {path}: cannot create it inside the rootfs: {source}
    Create {
        what: String,
        path: String,
        source: Errno,
    },
    /// {what} on {path}: {source}
    Mount {
        what: String,
        path: String,
        source: Errno,
    },
    /// {what} {path}: {error}
    Options {
        what: String,
        path: String,
        error: OptionError,
    },
    /// {what}.source: missing (a bind mount needs one)
    NoSource { what: String },
    /// {what}.source {path}: {source}
    Source {
        what: String,
        path: String,
        source: std::io::Error,
    },
    /// rootfs {path}: {step}: {source}
    Rootfs {
        path: String,
        step: &'static str,
        source: Errno,
    },
    /// pivot_root into the rootfs: {step}: {source}
    Pivot { step: &'static str, source: Errno },
    /// linux.maskedPaths {path}: {source}
    Mask { path: String, source: Errno },
    /// linux.readonlyPaths {path}: {source}
    Readonly { path: String, source: Errno },
    /// root.readonly: remounting / read-only: {0}
    RootReadonly(Errno),
    /// linux.rootfsPropagation: applying it to /: {0}
    RootPropagation(Errno),
}

/// A spec mount's options, split into what `mount(2)` takes.
#[derive(Debug, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags to set.
    pub flags: MountFlags,
    /// Flags the options explicitly cleared (`rw`, `suid`, `dev`, ...).
    pub cleared: MountFlags,
    /// `bind` or `rbind`.
    pub bind: bool,
    /// `rbind`.
    pub recursive: bool,
    /// A propagation option (`private`, `rslave`, ...), applied after the mount.
    pub propagation: Option<MountPropagationFlags>,
    /// Everything else, for the file system: `mode=755,size=65536k`.
    pub data: String,
}

/// Splits mount options into flags and file-system data. Later options win over earlier
/// ones (`ro,rw` is read-write). Options for userspace (`x-*`), `defaults`, `remount`,
/// `tmpcopyup`, `iversion` and `noiversion` are ignored.
pub fn parse_options(options: &[String]) -> Result<MountOptions, OptionError> {
    let mut o = MountOptions {
        flags: MountFlags::empty(),
        cleared: MountFlags::empty(),
        bind: false,
        recursive: false,
        propagation: None,
        data: String::new(),
    };
    for option in options {
        let set = match option.as_str() {
            "ro" => MountFlags::RDONLY,
            "nosuid" => MountFlags::NOSUID,
            "nodev" => MountFlags::NODEV,
            "noexec" => MountFlags::NOEXEC,
            "sync" => MountFlags::SYNCHRONOUS,
            "dirsync" => MountFlags::DIRSYNC,
            "mand" => MountFlags::PERMIT_MANDATORY_FILE_LOCKING,
            "noatime" => MountFlags::NOATIME,
            "nodiratime" => MountFlags::NODIRATIME,
            "relatime" => MountFlags::RELATIME,
            "strictatime" => MountFlags::STRICTATIME,
            "silent" => MountFlags::SILENT,
            "lazytime" => MountFlags::LAZYTIME,
            "nosymfollow" => MountFlags::NOSYMFOLLOW,
            _ => MountFlags::empty(),
        };
        let clear = match option.as_str() {
            "rw" => MountFlags::RDONLY,
            "suid" => MountFlags::NOSUID,
            "dev" => MountFlags::NODEV,
            "exec" => MountFlags::NOEXEC,
            "async" => MountFlags::SYNCHRONOUS,
            "nomand" => MountFlags::PERMIT_MANDATORY_FILE_LOCKING,
            "atime" => MountFlags::NOATIME,
            "diratime" => MountFlags::NODIRATIME,
            "norelatime" => MountFlags::RELATIME,
            "nostrictatime" => MountFlags::STRICTATIME,
            "loud" => MountFlags::SILENT,
            "nolazytime" => MountFlags::LAZYTIME,
            "symfollow" => MountFlags::NOSYMFOLLOW,
            _ => MountFlags::empty(),
        };
        if !set.is_empty() {
            o.flags |= set;
            o.cleared -= set;
            continue;
        }
        if !clear.is_empty() {
            o.flags -= clear;
            o.cleared |= clear;
            continue;
        }
        if let Some(propagation) = parse_propagation(option) {
            o.propagation = Some(propagation);
            continue;
        }
        match option.as_str() {
            "bind" => o.bind = true,
            "rbind" => {
                o.bind = true;
                o.recursive = true;
            }
            "defaults" | "remount" | "tmpcopyup" | "iversion" | "noiversion" => {}
            x if x.starts_with("x-") => {}
            "idmap" | "ridmap" => return Err(OptionError::Idmap(option.clone())),
            "rro" | "rrw" | "rnosuid" | "rsuid" | "rnodev" | "rdev" | "rnoexec" | "rexec"
            | "rnoatime" | "ratime" | "rrelatime" | "rnorelatime" | "rstrictatime"
            | "rnostrictatime" | "rnodiratime" | "rdiratime" | "rnosymfollow" | "rsymfollow" => {
                return Err(OptionError::RecursiveAttr(option.clone()))
            }
            x if x.contains('\0') => return Err(OptionError::Nul(option.clone())),
            _ => {
                if !o.data.is_empty() {
                    o.data.push(',');
                }
                o.data.push_str(option);
            }
        }
    }
    Ok(o)
}

/// A propagation name (`rootfsPropagation` or a mount option) as flags.
pub fn parse_propagation(value: &str) -> Option<MountPropagationFlags> {
    let (recursive, kind) = match value.strip_prefix('r') {
        Some(rest @ ("private" | "slave" | "shared" | "unbindable")) => (true, rest),
        _ => (false, value),
    };
    let flags = match kind {
        "private" => MountPropagationFlags::PRIVATE,
        "slave" => MountPropagationFlags::DOWNSTREAM,
        "shared" => MountPropagationFlags::SHARED,
        "unbindable" => MountPropagationFlags::UNBINDABLE,
        _ => return None,
    };
    Some(if recursive {
        flags | MountPropagationFlags::REC
    } else {
        flags
    })
}

/// What to create when a destination is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

const RESOLVE: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);
/// Dangling symlinks followed while creating one path, at most (the kernel's own limit).
const MAX_SYMLINKS: usize = 40;

/// Opens `path` inside `root` (`..` and symlinks cannot leave it) as an `O_PATH` fd.
pub fn open_in_root(root: BorrowedFd<'_>, path: &Path) -> Result<OwnedFd, Errno> {
    let path: &Path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    loop {
        match fs::openat2(
            root,
            path,
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        ) {
            // EAGAIN: a rename or mount raced with the lookup; try again.
            Err(Errno::AGAIN) | Err(Errno::INTR) => continue,
            other => return other,
        }
    }
}

/// Opens `path` inside `root`, creating what is missing (directories on the way, and the
/// last component as `kind`), never outside `root`.
pub fn create_in_root(root: BorrowedFd<'_>, path: &Path, kind: Kind) -> Result<OwnedFd, Errno> {
    let mut path = path.to_path_buf();
    for _ in 0..MAX_SYMLINKS {
        match walk(root, &path, kind)? {
            Walked::Done(fd) => return Ok(fd),
            Walked::Dangling(next) => path = next,
        }
    }
    Err(Errno::LOOP)
}

enum Walked {
    Done(OwnedFd),
    /// The walk met a dangling symlink: this is the path with the link's target in place.
    Dangling(PathBuf),
}

fn walk(root: BorrowedFd<'_>, path: &Path, kind: Kind) -> Result<Walked, Errno> {
    match open_in_root(root, path) {
        Err(Errno::NOENT) => {}
        other => return other.map(Walked::Done),
    }
    let components: Vec<Component<'_>> = path
        .components()
        .filter(|c| {
            !matches!(
                c,
                Component::RootDir | Component::CurDir | Component::Prefix(_)
            )
        })
        .collect();
    let mut parent = open_in_root(root, Path::new("."))?;
    let mut prefix = PathBuf::from("/");
    for (i, component) in components.iter().enumerate() {
        prefix.push(component);
        match open_in_root(root, &prefix) {
            Ok(fd) => {
                parent = fd;
                continue;
            }
            Err(Errno::NOENT) => {}
            Err(e) => return Err(e),
        }
        let Component::Normal(name) = component else {
            // `..` of a directory that exists cannot be missing.
            return Err(Errno::NOENT);
        };
        let last = i + 1 == components.len();
        let created = if last && kind == Kind::File {
            fs::openat(
                &parent,
                *name,
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                Mode::from_bits_truncate(0o644),
            )
            .map(drop)
        } else {
            fs::mkdirat(&parent, *name, Mode::from_bits_truncate(0o755))
        };
        match created {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                // Someone made it meanwhile, or it is a dangling symlink.
                if let Some(next) = dangling_target(&parent, name, &prefix, &components[i + 1..]) {
                    return Ok(Walked::Dangling(next));
                }
            }
            Err(e) => return Err(e),
        }
        parent = open_in_root(root, &prefix)?;
    }
    Ok(Walked::Done(parent))
}

/// If `name` in `dir` is a symlink whose target is missing, the path to create instead:
/// the link's target (resolved from the link's directory, `prefix`'s parent) followed by
/// the components after it.
fn dangling_target(
    dir: &OwnedFd,
    name: &OsStr,
    prefix: &Path,
    rest: &[Component<'_>],
) -> Option<PathBuf> {
    let target = fs::readlinkat(dir, name, Vec::new()).ok()?;
    let target = Path::new(OsStr::from_bytes(target.as_bytes()));
    let mut next = if target.is_absolute() {
        target.to_path_buf()
    } else {
        prefix.parent().unwrap_or(Path::new("/")).join(target)
    };
    for c in rest {
        next.push(c);
    }
    Some(next)
}

/// The magic-link path through which the kernel reaches what `fd` refers to.
pub fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Turns `/` private (or a slave, for the slave and shared propagations, so nothing the
/// container mounts goes back to the agent), binds the rootfs onto itself (so it is a
/// mount point, as `pivot_root` needs) and returns an `O_PATH` fd of it.
pub fn prepare_rootfs(
    rootfs: &Path,
    propagation: Option<MountPropagationFlags>,
) -> Result<OwnedFd, MountError> {
    let err = |step, source| MountError::Rootfs {
        path: rootfs.display().to_string(),
        step,
        source,
    };
    let base = match propagation {
        Some(p)
            if p.intersects(MountPropagationFlags::DOWNSTREAM | MountPropagationFlags::SHARED) =>
        {
            MountPropagationFlags::DOWNSTREAM
        }
        _ => MountPropagationFlags::PRIVATE,
    };
    mnt::mount_change("/", base | MountPropagationFlags::REC)
        .map_err(|e| err("making / private", e))?;
    mnt::mount_bind_recursive(rootfs, rootfs).map_err(|e| err("binding it onto itself", e))?;
    fs::open(
        rootfs,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err("opening it", e))
}

/// Mounts the spec's mounts in order, each destination resolved inside the rootfs.
pub fn mount_all(root: BorrowedFd<'_>, mounts: &[Mount]) -> Result<(), MountError> {
    for (index, mount) in mounts.iter().enumerate() {
        mount_one(root, &format!("mounts[{index}]"), mount)?;
    }
    Ok(())
}

/// Mounts one spec mount (`what` names it in errors).
pub fn mount_one(root: BorrowedFd<'_>, what: &str, mount: &Mount) -> Result<(), MountError> {
    let dest = mount.destination();
    let path = dest.display().to_string();
    let options =
        parse_options(mount.options().as_deref().unwrap_or_default()).map_err(|error| {
            MountError::Options {
                what: what.to_owned(),
                path: path.clone(),
                error,
            }
        })?;
    let typ = mount.typ().as_deref().unwrap_or("");
    let mount_err = |kind: &str, source| MountError::Mount {
        what: format!("{what} ({kind})"),
        path: path.clone(),
        source,
    };
    if options.bind || typ == "bind" {
        let source = mount
            .source()
            .as_ref()
            .ok_or_else(|| MountError::NoSource {
                what: what.to_owned(),
            })?;
        let meta = std::fs::metadata(source).map_err(|e| MountError::Source {
            what: what.to_owned(),
            path: source.display().to_string(),
            source: e,
        })?;
        let kind = if meta.is_dir() { Kind::Dir } else { Kind::File };
        let target = create(root, what, dest, kind)?;
        let bound = if options.recursive {
            mnt::mount_bind_recursive(source, fd_path(&target))
        } else {
            mnt::mount_bind(source, fd_path(&target))
        };
        bound.map_err(|e| mount_err("bind", e))?;
        if !options.flags.is_empty() {
            // Flags on a bind mount take a second, remounting call.
            let mounted = resolve(root, what, dest)?;
            let keep = existing_flags(&mounted) - options.cleared;
            mnt::mount_remount(
                fd_path(&mounted),
                options.flags | keep | MountFlags::BIND,
                "",
            )
            .map_err(|e| mount_err("remounting the bind mount", e))?;
        }
    } else {
        let fstype = match typ {
            // cgroup v1 is not offered: the guest runs cgroup v2 only.
            "cgroup" | "cgroup2" => "cgroup2",
            other => other,
        };
        let source = mount
            .source()
            .as_ref()
            .map(|s| s.as_os_str().to_owned())
            .unwrap_or_else(|| fstype.into());
        let data = CString::new(options.data.clone()).map_err(|_| MountError::Options {
            what: what.to_owned(),
            path: path.clone(),
            error: OptionError::Nul(options.data.clone()),
        })?;
        let target = create(root, what, dest, Kind::Dir)?;
        let data = (!options.data.is_empty()).then_some(data.as_c_str());
        mnt::mount(source, fd_path(&target), fstype, options.flags, data)
            .map_err(|e| mount_err(fstype, e))?;
    }
    if let Some(propagation) = options.propagation {
        let mounted = resolve(root, what, dest)?;
        mnt::mount_change(fd_path(&mounted), propagation)
            .map_err(|e| mount_err("changing its propagation", e))?;
    }
    Ok(())
}

/// Mounts a file system the agent adds itself (not from the spec), `what` naming it.
pub fn mount_fs(
    root: BorrowedFd<'_>,
    what: &str,
    dest: &Path,
    fstype: &str,
    flags: MountFlags,
    data: &str,
) -> Result<(), MountError> {
    let target = create(root, what, dest, Kind::Dir)?;
    let data = CString::new(data).map_err(|_| MountError::Options {
        what: what.to_owned(),
        path: dest.display().to_string(),
        error: OptionError::Nul(data.to_owned()),
    })?;
    mnt::mount(
        fstype,
        fd_path(&target),
        fstype,
        flags,
        Some(data.as_c_str()),
    )
    .map_err(|source| MountError::Mount {
        what: format!("{what} ({fstype})"),
        path: dest.display().to_string(),
        source,
    })
}

fn create(
    root: BorrowedFd<'_>,
    what: &str,
    dest: &Path,
    kind: Kind,
) -> Result<OwnedFd, MountError> {
    create_in_root(root, dest, kind).map_err(|source| MountError::Create {
        what: what.to_owned(),
        path: dest.display().to_string(),
        source,
    })
}

fn resolve(root: BorrowedFd<'_>, what: &str, dest: &Path) -> Result<OwnedFd, MountError> {
    open_in_root(root, dest).map_err(|source| MountError::Resolve {
        what: what.to_owned(),
        path: dest.display().to_string(),
        source,
    })
}

/// The flags of the mount `fd` is on that a bind remount must repeat (the kernel refuses
/// to drop them where they are locked, and silently dropping them would loosen the mount).
fn existing_flags(fd: &OwnedFd) -> MountFlags {
    let Ok(stat) = fs::fstatvfs(fd) else {
        return MountFlags::empty();
    };
    let mut flags = MountFlags::empty();
    for (st, ms) in [
        (StatVfsMountFlags::NOSUID, MountFlags::NOSUID),
        (StatVfsMountFlags::NODEV, MountFlags::NODEV),
        (StatVfsMountFlags::NOEXEC, MountFlags::NOEXEC),
    ] {
        if stat.f_flag.contains(st) {
            flags |= ms;
        }
    }
    flags
}

/// Makes the rootfs (`root`) the root of the mount namespace and detaches the old root.
pub fn pivot_root(root: OwnedFd) -> Result<(), MountError> {
    let err = |step, source| MountError::Pivot { step, source };
    rustix::process::fchdir(&root).map_err(|e| err("entering the rootfs", e))?;
    drop(root);
    // With new_root == put_old, the old root ends up stacked on "." and can be detached
    // right away: no directory for it is needed inside the container.
    rustix::process::pivot_root(".", ".").map_err(|e| err("pivot_root", e))?;
    // A slave, so that detaching it cannot propagate anywhere.
    mnt::mount_change(
        ".",
        MountPropagationFlags::DOWNSTREAM | MountPropagationFlags::REC,
    )
    .map_err(|e| err("making the old root a slave", e))?;
    mnt::unmount(".", UnmountFlags::DETACH).map_err(|e| err("detaching the old root", e))?;
    rustix::process::chdir("/").map_err(|e| err("chdir /", e))
}

/// Applies `linux.rootfsPropagation` to the new root (after `pivot_root`).
pub fn set_root_propagation(propagation: MountPropagationFlags) -> Result<(), MountError> {
    mnt::mount_change("/", propagation).map_err(MountError::RootPropagation)
}

/// Hides each path: `/dev/null` over a file, an empty read-only tmpfs over a directory.
/// Paths that do not exist are skipped.
pub fn mask_paths(paths: &[String]) -> Result<(), MountError> {
    for path in paths {
        let err = |source| MountError::Mask {
            path: path.clone(),
            source,
        };
        let stat = match fs::stat(path.as_str()) {
            Ok(stat) => stat,
            Err(Errno::NOENT) | Err(Errno::NOTDIR) => continue,
            Err(e) => return Err(err(e)),
        };
        if fs::FileType::from_raw_mode(stat.st_mode) == fs::FileType::Directory {
            mnt::mount("tmpfs", path.as_str(), "tmpfs", MountFlags::RDONLY, None).map_err(err)?;
        } else {
            mnt::mount_bind("/dev/null", path.as_str()).map_err(err)?;
        }
    }
    Ok(())
}

/// Makes each path read-only (a bind of itself, remounted read-only). Paths that do not
/// exist are skipped.
pub fn readonly_paths(paths: &[String]) -> Result<(), MountError> {
    for path in paths {
        let err = |source| MountError::Readonly {
            path: path.clone(),
            source,
        };
        match mnt::mount_bind_recursive(path.as_str(), path.as_str()) {
            Ok(()) => {}
            Err(Errno::NOENT) | Err(Errno::NOTDIR) => continue,
            Err(e) => return Err(err(e)),
        }
        let fd =
            fs::open(path.as_str(), OFlags::PATH | OFlags::CLOEXEC, Mode::empty()).map_err(err)?;
        let flags = existing_flags(&fd) | MountFlags::RDONLY | MountFlags::BIND;
        mnt::mount_remount(path.as_str(), flags, "").map_err(err)?;
    }
    Ok(())
}

/// Remounts the root read-only (`root.readonly`).
pub fn readonly_root() -> Result<(), MountError> {
    let fd = fs::open("/", OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
        .map_err(MountError::RootReadonly)?;
    let flags = existing_flags(&fd) | MountFlags::RDONLY | MountFlags::BIND;
    mnt::mount_remount("/", flags, "").map_err(MountError::RootReadonly)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[&str]) -> Result<MountOptions, OptionError> {
        parse_options(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn options_split_into_flags_and_data() -> Result<(), OptionError> {
        let o = opts(&[
            "nosuid",
            "noexec",
            "nodev",
            "mode=755",
            "size=65536k",
            "strictatime",
        ])?;
        assert_eq!(
            o.flags,
            MountFlags::NOSUID | MountFlags::NOEXEC | MountFlags::NODEV | MountFlags::STRICTATIME
        );
        assert_eq!(o.data, "mode=755,size=65536k");
        assert!(!o.bind && o.propagation.is_none());

        let o = opts(&[
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
            "gid=5",
            "nosuid",
        ])?;
        assert_eq!(o.flags, MountFlags::NOSUID);
        assert_eq!(o.data, "newinstance,ptmxmode=0666,mode=0620,gid=5");
        Ok(())
    }

    #[test]
    fn later_options_win() -> Result<(), OptionError> {
        let o = opts(&["ro", "rw", "nosuid", "suid", "noexec"])?;
        assert_eq!(o.flags, MountFlags::NOEXEC);
        assert_eq!(o.cleared, MountFlags::RDONLY | MountFlags::NOSUID);
        let o = opts(&["rw", "ro"])?;
        assert_eq!(o.flags, MountFlags::RDONLY);
        assert!(o.cleared.is_empty());
        Ok(())
    }

    #[test]
    fn bind_and_propagation_options() -> Result<(), OptionError> {
        let o = opts(&["rbind", "ro", "rprivate", "x-whatever", "defaults"])?;
        assert!(o.bind && o.recursive);
        assert_eq!(o.flags, MountFlags::RDONLY);
        assert_eq!(
            o.propagation,
            Some(MountPropagationFlags::PRIVATE | MountPropagationFlags::REC)
        );
        assert_eq!(o.data, "");
        let o = opts(&["bind", "slave"])?;
        assert!(o.bind && !o.recursive);
        assert_eq!(o.propagation, Some(MountPropagationFlags::DOWNSTREAM));
        Ok(())
    }

    #[test]
    fn refused_options() {
        assert!(matches!(opts(&["idmap"]), Err(OptionError::Idmap(_))));
        assert!(matches!(opts(&["rro"]), Err(OptionError::RecursiveAttr(_))));
        assert!(matches!(opts(&["a\0b"]), Err(OptionError::Nul(_))));
    }

    #[test]
    fn propagation_names() {
        use MountPropagationFlags as P;
        assert_eq!(parse_propagation("rslave"), Some(P::DOWNSTREAM | P::REC));
        assert_eq!(parse_propagation("shared"), Some(P::SHARED));
        assert_eq!(
            parse_propagation("runbindable"),
            Some(P::UNBINDABLE | P::REC)
        );
        assert_eq!(parse_propagation("rprivate"), Some(P::PRIVATE | P::REC));
        assert_eq!(parse_propagation("rw"), None);
        assert_eq!(parse_propagation("r"), None);
        assert_eq!(parse_propagation(""), None);
    }

    /// A scratch directory, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> std::io::Result<Scratch> {
            let dir = std::env::temp_dir().join(format!("husk-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            Ok(Scratch(dir))
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn hostile_symlinks_stay_inside_the_root() -> Result<(), Box<dyn std::error::Error>> {
        let scratch = Scratch::new("resolve")?;
        let root_dir = scratch.0.join("root");
        std::fs::create_dir_all(root_dir.join("etc"))?;
        std::fs::create_dir_all(root_dir.join("sub"))?;
        std::os::unix::fs::symlink("/etc", root_dir.join("evil"))?;
        std::os::unix::fs::symlink("../../../../../../etc", root_dir.join("sub/up"))?;
        std::os::unix::fs::symlink("/nowhere/deeper", root_dir.join("dangling"))?;
        std::os::unix::fs::symlink("/proc/self/root/etc", root_dir.join("magic"))?;
        let root = fs::open(
            &root_dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let name = format!("husk-escape-test-{}", std::process::id());
        let host = Path::new("/etc").join(&name);

        // An absolute symlink: resolved against the root, not the host.
        let fd = create_in_root(root.as_fd(), &Path::new("/evil").join(&name), Kind::Dir)?;
        assert!(root_dir.join("etc").join(&name).is_dir());
        assert!(!host.exists(), "{} was created on the host", host.display());
        assert_eq!(
            fs::fstat(&fd)?.st_ino,
            fs::stat(root_dir.join("etc").join(&name))?.st_ino
        );

        // `..` beyond the root, through a relative link and literally.
        create_in_root(
            root.as_fd(),
            &Path::new("/sub/up").join(&name).join("file"),
            Kind::File,
        )?;
        assert!(root_dir.join("etc").join(&name).join("file").is_file());
        create_in_root(
            root.as_fd(),
            &Path::new("/../../..").join("etc").join("dots"),
            Kind::Dir,
        )?;
        assert!(root_dir.join("etc/dots").is_dir());
        assert!(!Path::new("/etc/dots").exists());

        // A dangling symlink: its target is created, inside the root.
        create_in_root(root.as_fd(), Path::new("/dangling/x"), Kind::Dir)?;
        assert!(root_dir.join("nowhere/deeper/x").is_dir());
        assert!(!Path::new("/nowhere").exists());

        // A symlink to a magic link path is just a path inside the root (no /proc here).
        create_in_root(root.as_fd(), Path::new("/magic"), Kind::Dir)?;
        assert!(root_dir.join("proc/self/root/etc").is_dir());

        // Opening never creates.
        assert_eq!(
            open_in_root(root.as_fd(), Path::new("/missing")).err(),
            Some(Errno::NOENT)
        );
        assert!(!host.exists());
        Ok(())
    }

    #[test]
    fn symlink_loops_end() -> Result<(), Box<dyn std::error::Error>> {
        let scratch = Scratch::new("loop")?;
        std::os::unix::fs::symlink("/b", scratch.0.join("a"))?;
        std::os::unix::fs::symlink("/a", scratch.0.join("b"))?;
        let root = fs::open(
            &scratch.0,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        assert!(create_in_root(root.as_fd(), Path::new("/a/x"), Kind::Dir).is_err());
        Ok(())
    }

    use std::os::fd::AsFd;
}
