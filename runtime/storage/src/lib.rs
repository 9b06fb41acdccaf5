//! Root file systems for husk sandboxes: OCI images unpacked into a content cache, content
//! keys for plain directory trees, and read-only ext4 block images of trees for a VM's
//! virtio-blk drive.
//!
//! # The cache
//!
//! ```text
//! <root>/images/<key>/rootfs/         an unpacked image (read-only by convention)
//! <root>/images/<key>/defaults.json   its process defaults (ImageDefaults)
//! <root>/images/<key>/.complete       written last
//! <root>/images/<key>/rootfs.ext4     a block image of the tree with that key
//! <root>/tmp/<key>.<pid>.<n>/         builds in progress
//! ```
//!
//! Everything is built in a private directory under `tmp/` and published by one
//! `rename` (or, for a block image added to an existing entry, one `link`), so an entry
//! under `images/` only ever appears complete and several processes may fill the same
//! cache at once: whoever publishes first wins, the others drop their copy and use it.
//! A build left behind by a killed process is removed by a later build once its process
//! is gone (and the build is an hour old, in case the cache is shared across PID
//! namespaces). Published entries are never modified; nothing here removes them.
//!
//! Crash consistency: publishing survives a crash of the process at any point. File
//! contents are not fsynced (that would cost one fsync per file of an image), so after a
//! power loss an entry may hold truncated files; removing `<root>/images` is the cure.

mod ext4;
mod layer;
mod layout;
mod tree;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use rustix::io::Errno;
use serde::{Deserialize, Serialize};

pub use ext4::ext4_image;
pub use tree::tree_key;

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum StorageError {
    /// {path}: {source}
    Io { path: PathBuf, source: io::Error },
    /// cannot read the image {path}: {source}
    Source { path: PathBuf, source: io::Error },
    /// {0} is not an OCI image layout (it has no index.json)
    NotLayout(PathBuf),
    /// blob {digest} is missing from the image
    MissingBlob { digest: String },
    /// blob {digest} does not match its digest (its content hashes to sha256:{actual})
    DigestMismatch { digest: String, actual: String },
    /// blob {digest} is {actual} bytes long, its descriptor says {expected}
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
    },
    /// cannot read blob {digest}: {source}
    Blob { digest: String, source: io::Error },
    /// invalid digest {0:?} (only sha256 digests are supported)
    BadDigest(String),
    /// invalid {what}: {source}
    Json {
        what: String,
        source: serde_json::Error,
    },
    /// the image holds no manifest
    NoManifest,
    /// the image holds no manifest named {reference:?} (it has: {available})
    NoSuchReference {
        reference: String,
        available: String,
    },
    /// the image holds several manifests, name one of: {0}
    SeveralManifests(String),
    /// the image index {digest} has no manifest for {platform}
    NoPlatform { digest: String, platform: String },
    /// unsupported: {0}
    Unsupported(String),
    /// layer {digest}, entry {path:?}: {source}
    Layer {
        digest: String,
        path: String,
        source: io::Error,
    },
    /// layer {digest}: entry {path:?} escapes the root file system
    Escape { digest: String, path: String },
    /// invalid cache key {0:?}
    BadKey(String),
    /// cannot find mkfs.ext4 ({0}): install e2fsprogs (apt-get install e2fsprogs) or set HUSK_MKFS_EXT4
    NoMkfs(String),
    /// {program} failed ({status}): {stderr}
    Mkfs {
        program: PathBuf,
        status: ExitStatus,
        stderr: String,
    },
}

impl StorageError {
    fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> StorageError {
        let path = path.into();
        move |source| StorageError::Io { path, source }
    }
}

/// The content cache: `<root>/images/<key>/...`, `<root>/tmp/` for builds in progress.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// An image's process defaults from its config blob (`config.config` of the OCI image
/// config).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageDefaults {
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

/// An unpacked image in the cache. Never modified after it is published.
#[derive(Debug, Clone)]
pub struct UnpackedImage {
    /// `sha256-<hex of the manifest digest>`.
    pub key: String,
    /// The root file system: a directory, read-only by convention.
    pub rootfs: PathBuf,
    pub defaults: ImageDefaults,
}

/// Names inside a cache entry.
const ROOTFS: &str = "rootfs";
const DEFAULTS: &str = "defaults.json";
const COMPLETE: &str = ".complete";
const EXT4: &str = "rootfs.ext4";

/// Unique build names within this process; the pid makes them unique across processes.
static BUILD_COUNTER: AtomicU64 = AtomicU64::new(0);

/// How old a dead process's build must be before it is removed: a PID that looks dead
/// may belong to a live builder in another PID namespace sharing the cache.
const STALE_AGE: Duration = Duration::from_secs(3600);

impl Cache {
    pub fn new(root: impl Into<PathBuf>) -> Cache {
        Cache { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    fn entry_dir(&self, key: &str) -> PathBuf {
        self.images_dir().join(key)
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// A fresh private directory under `tmp/`, removed again unless it is published.
    fn new_build(&self, key: &str) -> Result<Build, StorageError> {
        let tmp = self.tmp_dir();
        fs::create_dir_all(&tmp).map_err(StorageError::io(&tmp))?;
        let images = self.images_dir();
        fs::create_dir_all(&images).map_err(StorageError::io(&images))?;
        self.remove_stale_builds();
        let n = BUILD_COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = tmp.join(format!("{key}.{}.{n}", std::process::id()));
        fs::create_dir(&path).map_err(StorageError::io(&path))?;
        Ok(Build {
            path,
            published: false,
        })
    }

    /// Removes builds whose process is gone. Best effort: a failure here must not fail
    /// the build that triggered it.
    fn remove_stale_builds(&self) {
        let Ok(entries) = fs::read_dir(self.tmp_dir()) else {
            return;
        };
        let me = std::process::id();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(build_pid) else {
                continue;
            };
            if pid == me || process_alive(pid) {
                continue;
            }
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age >= STALE_AGE);
            if old {
                log::debug!("removing the stale build {:?}", entry.path());
                remove_any(&entry.path());
            }
        }
    }
}

/// The pid in a build name `<key>.<pid>.<n>`.
fn build_pid(name: &str) -> Option<u32> {
    let mut parts = name.rsplit('.');
    parts.next()?.parse::<u64>().ok()?;
    parts.next()?.parse().ok()
}

fn process_alive(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    // EPERM means it exists but belongs to someone else.
    !matches!(rustix::process::test_kill_process(pid), Err(Errno::SRCH))
}

/// Removes a file or a whole tree without following symlinks; errors are only logged
/// since callers use it to clean up.
fn remove_any(path: &Path) {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        log::warn!("cannot remove {path:?}: {e}");
    }
}

/// A build directory under `tmp/`; removed on drop unless published.
struct Build {
    path: PathBuf,
    published: bool,
}

/// Who published a cache entry.
#[derive(Debug, PartialEq, Eq)]
enum Publisher {
    Us,
    SomeoneElse,
}

impl Build {
    fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the build to `dst`, which then is no longer ours to remove.
    fn rename_to(&mut self, dst: &Path) -> io::Result<()> {
        fs::rename(&self.path, dst)?;
        self.published = true;
        Ok(())
    }

    /// Renames the build to the entry `dst`. If `dst` exists already (another builder
    /// was first) and is complete, it is used and our build is dropped; an incomplete
    /// one (never made by us: someone damaged the cache) is moved aside and replaced.
    fn publish_dir(mut self, cache: &Cache, dst: &Path) -> Result<Publisher, StorageError> {
        for _ in 0..2 {
            match self.rename_to(dst) {
                Ok(()) => return Ok(Publisher::Us),
                Err(e) if exists_error(&e) => {
                    if dst.join(COMPLETE).exists() {
                        return Ok(Publisher::SomeoneElse);
                    }
                    log::warn!("replacing the incomplete cache entry {dst:?}");
                    let aside = cache.new_build("broken")?;
                    let trash = aside.path().join("entry");
                    match fs::rename(dst, &trash) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => {
                            return Err(StorageError::Io {
                                path: dst.into(),
                                source: e,
                            })
                        }
                    }
                }
                Err(e) => {
                    return Err(StorageError::Io {
                        path: dst.into(),
                        source: e,
                    })
                }
            }
        }
        // Someone keeps putting incomplete entries there.
        Err(StorageError::Io {
            path: dst.into(),
            source: io::Error::new(io::ErrorKind::AlreadyExists, "cannot publish the entry"),
        })
    }
}

impl Drop for Build {
    fn drop(&mut self) {
        if !self.published {
            remove_any(&self.path);
        }
    }
}

/// `rename` onto a non-empty directory, or `link` onto an existing name.
fn exists_error(e: &io::Error) -> bool {
    matches!(
        Errno::from_io_error(e),
        Some(Errno::NOTEMPTY | Errno::EXIST)
    )
}

/// Cache keys become directory names: keep them to a harmless alphabet.
fn check_key(key: &str) -> Result<(), StorageError> {
    let ok = !key.is_empty()
        && key.len() <= 200
        && !key.starts_with('.')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StorageError::BadKey(key.to_string()))
    }
}

/// Unpacks an OCI image given as an image-layout directory (`oci-layout`, `index.json`,
/// `blobs/sha256/..`) or a tar of one (plain or gzip-compressed), into the cache.
///
/// The manifest: with `reference`, the index entry whose annotation
/// `org.opencontainers.image.ref.name` or `io.containerd.image.name` equals it; without,
/// the only one (an error if there are several, unless they are the platform variants of
/// one image). A nested image index is followed to its manifest for this host's
/// platform (linux/amd64 here).
///
/// Every blob read is checked against its digest and size; any error leaves nothing in
/// the cache. Layers are applied in order with overlay whiteouts, and no entry can write
/// outside the root file system (symlinks in paths resolve inside it). A second call for
/// the same image reads the index and manifest only.
pub fn unpack_image(
    cache: &Cache,
    source: &Path,
    reference: Option<&str>,
) -> Result<UnpackedImage, StorageError> {
    // A decompressed copy of a compressed source lives in `_copy` until we are done.
    let (layout, _copy) = match layout::open(source)? {
        layout::Opened::Layout(layout) => (layout, None),
        layout::Opened::GzipTar(small_files) => {
            // Try the hit without writing anything: a compressed tar has no random
            // access, so only its small files (index, manifests) were kept in memory.
            if let Ok(resolved) = layout::resolve(&small_files, reference) {
                if let Some(image) = lookup(cache, &resolved.key())? {
                    return Ok(image);
                }
            }
            let build = cache.new_build("source")?;
            let tar = build.path().join("image.tar");
            layout::decompress(source, &tar)?;
            (layout::Layout::tar(&tar)?, Some(build))
        }
    };
    let resolved = layout::resolve(&layout, reference)?;
    let key = resolved.key();
    if let Some(image) = lookup(cache, &key)? {
        return Ok(image);
    }
    log::debug!("image cache miss for {key}: unpacking {source:?}");
    build_image(cache, &layout, &resolved, &key)
}

/// The published entry for `key`, if there is a complete one.
fn lookup(cache: &Cache, key: &str) -> Result<Option<UnpackedImage>, StorageError> {
    let dir = cache.entry_dir(key);
    if !dir.join(COMPLETE).exists() {
        return Ok(None);
    }
    let path = dir.join(DEFAULTS);
    let bytes = fs::read(&path).map_err(StorageError::io(&path))?;
    let defaults = serde_json::from_slice(&bytes).map_err(|source| StorageError::Json {
        what: format!("{path:?}"),
        source,
    })?;
    log::debug!("image cache hit for {key}");
    Ok(Some(UnpackedImage {
        key: key.to_string(),
        rootfs: dir.join(ROOTFS),
        defaults,
    }))
}

fn build_image(
    cache: &Cache,
    layout: &layout::Layout,
    resolved: &layout::Resolved,
    key: &str,
) -> Result<UnpackedImage, StorageError> {
    // Refuse what cannot be unpacked before unpacking anything.
    for desc in &resolved.manifest.layers {
        layout::check_layer_type(desc)?;
    }
    let defaults = layout::read_defaults(layout, &resolved.manifest.config)?;

    let build = cache.new_build(key)?;
    let rootfs = build.path().join(ROOTFS);
    fs::create_dir(&rootfs).map_err(StorageError::io(&rootfs))?;
    let mut applier = layer::Applier::new(&rootfs);
    for desc in &resolved.manifest.layers {
        applier.apply(layout.open_blob(desc)?, &desc.digest)?;
    }
    applier.finish();

    let path = build.path().join(DEFAULTS);
    let json = serde_json::to_vec_pretty(&defaults).map_err(|source| StorageError::Json {
        what: "image defaults".into(),
        source,
    })?;
    fs::write(&path, json).map_err(StorageError::io(&path))?;
    let path = build.path().join(COMPLETE);
    fs::write(&path, b"").map_err(StorageError::io(&path))?;

    let dst = cache.entry_dir(key);
    match build.publish_dir(cache, &dst)? {
        Publisher::Us => Ok(UnpackedImage {
            key: key.to_string(),
            rootfs: dst.join(ROOTFS),
            defaults,
        }),
        Publisher::SomeoneElse => {
            log::debug!("{key} was published by another builder first; using theirs");
            lookup(cache, key)?.ok_or_else(|| StorageError::Io {
                path: dst,
                source: io::Error::new(io::ErrorKind::NotFound, "the entry vanished"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_names() {
        assert_eq!(build_pid("sha256-abc.123.4"), Some(123));
        assert_eq!(build_pid("tree-sha256-abc.7.0"), Some(7));
        assert_eq!(build_pid("junk"), None);
        assert_eq!(build_pid("a.b.1"), None);
    }

    #[test]
    fn keys() {
        assert!(check_key("sha256-0123abcdef").is_ok());
        for bad in ["", ".x", "a/b", "..", "a b"] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn stale_builds_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let tmp = cache.tmp_dir();
        fs::create_dir_all(&tmp).unwrap();
        // A pid far above pid_max cannot be alive.
        let dead = tmp.join("k.2147483000.0");
        let young_dead = tmp.join("k.2147483001.0");
        let live = tmp.join(format!("k.{}.99", std::process::id()));
        for d in [&dead, &young_dead, &live] {
            fs::create_dir(d).unwrap();
            fs::write(d.join("f"), b"x").unwrap();
        }
        let old = SystemTime::now() - STALE_AGE - Duration::from_secs(60);
        for d in [&dead, &live] {
            fs::File::open(d).unwrap().set_modified(old).unwrap();
        }
        let build = cache.new_build("k").unwrap();
        assert!(!dead.exists());
        assert!(young_dead.exists());
        assert!(live.exists());
        let path = build.path().to_path_buf();
        drop(build);
        assert!(!path.exists());
    }
}
