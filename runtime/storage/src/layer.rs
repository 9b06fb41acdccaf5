//! Applying image layers to a directory, overlay style.
//!
//! Each entry lands at its path with symlinks in the directories along the way resolved
//! *inside* the root (as if the root were `/`), so no entry, however crafted, can write
//! outside it. The entry's own name is never followed: whatever a lower layer left there
//! is replaced (a directory over a directory is merged). Whiteouts: `.wh.<name>` deletes
//! `<name>` from lower layers, `.wh..wh..opq` empties its directory of everything lower
//! layers put there; entries of the same layer are kept, in whatever order they come.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, FileTimes, Permissions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps, CWD};
use rustix::io::Errno;

use crate::layout::{self, Compression, Verified};
use crate::StorageError;

const OPAQUE: &[u8] = b".wh..wh..opq";
const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Other `.wh..wh.` names are aufs bookkeeping, not content.
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";

/// Symlinks followed at most while resolving one path (Linux's own limit).
const MAX_LINKS: usize = 40;

pub(crate) struct Applier {
    root: PathBuf,
    /// Ownership is applied only when we can (as root).
    owners: bool,
    /// Directory mtimes, set at the end since adding entries changes them.
    dir_times: HashMap<PathBuf, u64>,
}

/// A step of a path being resolved.
enum Step {
    Name(OsString),
    Up,
}

impl Applier {
    pub(crate) fn new(root: &Path) -> Applier {
        Applier {
            root: root.to_path_buf(),
            owners: rustix::process::geteuid().is_root(),
            dir_times: HashMap::new(),
        }
    }

    /// Applies one layer blob, then checks its digest and size.
    pub(crate) fn apply<R: Read>(
        &mut self,
        mut blob: Verified<R>,
        digest: &str,
    ) -> Result<(), StorageError> {
        let result = self.apply_stream(&mut blob, digest);
        // A corrupt blob explains a failure better than what it made tar say.
        blob.finish()?;
        result
    }

    fn apply_stream(&mut self, blob: &mut dyn Read, digest: &str) -> Result<(), StorageError> {
        let mut reader = BufReader::new(blob);
        let head = reader.fill_buf().map_err(|e| layer_error(digest, "", e))?;
        match layout::sniff_compression(head, digest)? {
            Compression::None => self.apply_tar(tar::Archive::new(reader), digest),
            Compression::Gzip => self.apply_tar(
                tar::Archive::new(flate2::read::MultiGzDecoder::new(reader)),
                digest,
            ),
        }
    }

    fn apply_tar<R: Read>(
        &mut self,
        mut archive: tar::Archive<R>,
        digest: &str,
    ) -> Result<(), StorageError> {
        archive.set_preserve_permissions(true);
        archive.set_preserve_mtime(true);
        archive.set_preserve_ownerships(self.owners);
        archive.set_unpack_xattrs(true);
        archive.set_overwrite(true);
        // Real paths (relative to the root) this layer wrote, with their ancestors:
        // what whiteouts of the same layer must spare.
        let mut layer = HashSet::new();
        let entries = archive.entries().map_err(|e| layer_error(digest, "", e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| layer_error(digest, "", e))?;
            self.apply_entry(&mut entry, &mut layer, digest)?;
        }
        Ok(())
    }

    fn apply_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        layer: &mut HashSet<PathBuf>,
        digest: &str,
    ) -> Result<(), StorageError> {
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
            || kind.is_gnu_longlink()
        {
            return Ok(());
        }
        let raw = entry
            .path()
            .map_err(|e| layer_error(digest, "", e))?
            .into_owned();
        let shown = raw.display().to_string();
        let err = |e: io::Error| layer_error(digest, &shown, e);
        let escape = || StorageError::Escape {
            digest: digest.to_string(),
            path: shown.clone(),
        };
        let comps = components(&raw).ok_or_else(escape)?;
        let Some((name, parents)) = comps.split_last() else {
            // The root itself: its metadata is ours to choose.
            return Ok(());
        };
        let name_bytes = name.as_bytes();
        if name_bytes == OPAQUE {
            return self.opaque(parents, layer).map_err(err);
        }
        if name_bytes.starts_with(AUFS_META_PREFIX) {
            return Ok(());
        }
        if let Some(target) = name_bytes.strip_prefix(WHITEOUT_PREFIX) {
            if target.is_empty() || target == b"." || target == b".." {
                return Err(escape());
            }
            return self
                .whiteout(parents, OsStr::from_bytes(target), layer)
                .map_err(err);
        }

        let dir = self.resolve(parents, true).map_err(err)?;
        let rel = dir.join(name);
        let dst = self.root.join(&rel);
        replace(&dst, kind.is_dir()).map_err(err)?;
        if kind.is_hard_link() {
            let link = entry
                .link_name()
                .map_err(err)?
                .ok_or_else(|| err(invalid("a hard link without a target")))?
                .into_owned();
            let link_comps = components(&link).ok_or_else(escape)?;
            let Some((link_name, link_parents)) = link_comps.split_last() else {
                return Err(err(invalid("a hard link to the root")));
            };
            let src = self
                .root
                .join(self.resolve(link_parents, false).map_err(err)?)
                .join(link_name);
            // link(2) does not follow a symlink at `src`: it links the symlink itself.
            fs::hard_link(&src, &dst).map_err(err)?;
        } else if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            self.make_node(entry.header(), kind, &dst).map_err(err)?;
        } else {
            entry.unpack(&dst).map_err(err)?;
            if kind.is_dir() {
                if let Ok(mtime) = entry.header().mtime() {
                    self.dir_times.insert(rel.clone(), mtime);
                }
            }
        }
        mark(layer, &rel);
        Ok(())
    }

    /// Resolves directory components to a real path relative to the root, following
    /// symlinks inside the root; `create` makes missing directories.
    fn resolve(&self, comps: &[OsString], create: bool) -> io::Result<PathBuf> {
        // Holds only real directories, never symlinks: joined to the root it is a path
        // the kernel resolves without leaving the root.
        let mut real = PathBuf::new();
        let mut queue: VecDeque<Step> = comps.iter().cloned().map(Step::Name).collect();
        let mut links = 0;
        while let Some(step) = queue.pop_front() {
            let name = match step {
                Step::Up => {
                    // `..` at the root stays at the root, as in a chroot.
                    real.pop();
                    continue;
                }
                Step::Name(name) => name,
            };
            let candidate = self.root.join(&real).join(&name);
            match fs::symlink_metadata(&candidate) {
                Ok(m) if m.is_dir() => real.push(&name),
                Ok(m) if m.file_type().is_symlink() => {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(Errno::LOOP.into());
                    }
                    let target = fs::read_link(&candidate)?;
                    let mut steps = Vec::new();
                    for c in target.components() {
                        match c {
                            Component::RootDir => real = PathBuf::new(),
                            Component::Normal(s) => steps.push(Step::Name(s.to_owned())),
                            Component::ParentDir => steps.push(Step::Up),
                            Component::CurDir | Component::Prefix(_) => {}
                        }
                    }
                    for s in steps.into_iter().rev() {
                        queue.push_front(s);
                    }
                }
                Ok(_) => return Err(Errno::NOTDIR.into()),
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    fs::create_dir(&candidate)?;
                    real.push(&name);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(real)
    }

    fn whiteout(
        &self,
        parents: &[OsString],
        target: &OsStr,
        layer: &HashSet<PathBuf>,
    ) -> io::Result<()> {
        let dir = match self.resolve(parents, false) {
            Ok(dir) => dir,
            // Nothing there to delete.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Errno::from_io_error(&e) == Some(Errno::NOTDIR) => return Ok(()),
            Err(e) => return Err(e),
        };
        let rel = dir.join(target);
        if layer.contains(&rel) {
            // Whiteouts hide lower layers only.
            return Ok(());
        }
        remove_tree(&self.root.join(rel))
    }

    fn opaque(&self, parents: &[OsString], layer: &mut HashSet<PathBuf>) -> io::Result<()> {
        let dir = self.resolve(parents, true)?;
        mark(layer, &dir);
        self.prune(&dir, layer)
    }

    /// Removes from `rel` everything this layer did not write.
    fn prune(&self, rel: &Path, layer: &HashSet<PathBuf>) -> io::Result<()> {
        for entry in fs::read_dir(self.root.join(rel))? {
            let entry = entry?;
            let child = rel.join(entry.file_name());
            if !layer.contains(&child) {
                remove_tree(&entry.path())?;
            } else if entry.file_type()?.is_dir() {
                self.prune(&child, layer)?;
            }
        }
        Ok(())
    }

    /// Device nodes and fifos, which the tar crate would write as regular files.
    fn make_node(&self, header: &tar::Header, kind: tar::EntryType, dst: &Path) -> io::Result<()> {
        let file_type = if kind.is_character_special() {
            FileType::CharacterDevice
        } else if kind.is_block_special() {
            FileType::BlockDevice
        } else {
            FileType::Fifo
        };
        if !self.owners && file_type != FileType::Fifo {
            log::warn!("skipping the device node {dst:?}: only root can create it");
            return Ok(());
        }
        let mode = header.mode()? & 0o7777;
        // Fifos have no device numbers; writers often leave the fields blank.
        let dev = if file_type == FileType::Fifo {
            0
        } else {
            rustix::fs::makedev(
                header.device_major()?.unwrap_or(0),
                header.device_minor()?.unwrap_or(0),
            )
        };
        rustix::fs::mknodat(CWD, dst, file_type, Mode::from_raw_mode(mode), dev)?;
        if self.owners {
            let id = |n: u64| u32::try_from(n).map_err(|_| invalid("an owner id above 2^32"));
            std::os::unix::fs::lchown(dst, Some(id(header.uid()?)?), Some(id(header.gid()?)?))?;
        }
        // After chown (which clears set-id bits), and in full (the umask trimmed mknod's).
        fs::set_permissions(dst, Permissions::from_mode(mode))?;
        let time = Timespec {
            tv_sec: i64::try_from(header.mtime()?).unwrap_or(i64::MAX),
            tv_nsec: 0,
        };
        let times = Timestamps {
            last_access: time,
            last_modification: time,
        };
        rustix::fs::utimensat(CWD, dst, &times, AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(())
    }

    /// Sets the directory mtimes from the layers; best effort, as they only inform.
    pub(crate) fn finish(self) {
        for (rel, mtime) in self.dir_times {
            let path = self.root.join(rel);
            if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            let time = SystemTime::UNIX_EPOCH + Duration::from_secs(mtime);
            let times = FileTimes::new().set_accessed(time).set_modified(time);
            if let Err(e) = File::open(&path).and_then(|f| f.set_times(times)) {
                log::debug!("cannot set the mtime of {path:?}: {e}");
            }
        }
    }
}

fn layer_error(digest: &str, path: &str, source: io::Error) -> StorageError {
    StorageError::Layer {
        digest: digest.to_string(),
        path: path.to_string(),
        source,
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// An entry path's components; absolute paths count from the root, `None` for `..`.
fn components(path: &Path) -> Option<Vec<OsString>> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(s) => out.push(s.to_owned()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => return None,
        }
    }
    Some(out)
}

/// Makes room at `dst` for a new entry: only a directory over a directory merges.
fn replace(dst: &Path, is_dir: bool) -> io::Result<()> {
    match fs::symlink_metadata(dst) {
        Ok(m) if m.is_dir() && is_dir => Ok(()),
        Ok(m) if m.is_dir() => fs::remove_dir_all(dst),
        Ok(_) => fs::remove_file(dst),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes a file or tree without following symlinks (std's `remove_dir_all` does not).
fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Records `rel` and its ancestors as written by the current layer.
fn mark(layer: &mut HashSet<PathBuf>, rel: &Path) {
    for a in rel.ancestors() {
        // Inserted before means its ancestors were too.
        if a.as_os_str().is_empty() || !layer.insert(a.to_path_buf()) {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn names(p: &str) -> Vec<OsString> {
        components(Path::new(p)).unwrap()
    }

    #[test]
    fn entry_components() {
        assert_eq!(names("/a/./b/"), vec![OsString::from("a"), "b".into()]);
        assert!(components(Path::new("a/../b")).is_none());
        assert!(names("./").is_empty());
    }

    #[test]
    fn resolution_stays_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        symlink("/usr/lib", root.join("lib")).unwrap();
        symlink("../../../../..", root.join("up")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        fs::write(root.join("file"), b"").unwrap();
        let a = Applier::new(&root);
        assert_eq!(
            a.resolve(&names("lib"), false).unwrap(),
            Path::new("usr/lib")
        );
        assert_eq!(a.resolve(&names("up/etc"), true).unwrap(), Path::new("etc"));
        assert!(root.join("etc").is_dir());
        assert_eq!(
            Errno::from_io_error(&a.resolve(&names("loop/x"), true).unwrap_err()),
            Some(Errno::LOOP)
        );
        assert_eq!(
            Errno::from_io_error(&a.resolve(&names("file/x"), true).unwrap_err()),
            Some(Errno::NOTDIR)
        );
        assert_eq!(
            a.resolve(&names("nope/x"), false).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn marks_cover_ancestors() {
        let mut layer = HashSet::new();
        mark(&mut layer, Path::new("a/b/c"));
        mark(&mut layer, Path::new("a/d"));
        let mut all: Vec<_> = layer.into_iter().collect();
        all.sort();
        let want: Vec<PathBuf> = ["a", "a/b", "a/b/c", "a/d"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(all, want);
    }
}
