//! Read-only ext4 block images of directory trees, for a VM's virtio-blk drive.

use std::collections::HashSet;
use std::env;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{check_key, exists_error, Cache, StorageError, EXT4};

const BLOCK: u64 = 4096;
const INODE_SIZE: u64 = 256;
const MIB: u64 = 1 << 20;

/// Where the mkfs binary is, if not on PATH.
const MKFS_ENV: &str = "HUSK_MKFS_EXT4";

/// A read-only ext4 image of the tree at `dir`, cached as
/// `<root>/images/<key>/rootfs.ext4` (`key` from [`crate::tree_key`], or an unpacked
/// image's key). Built with e2fsprogs' `mkfs.ext4 -d` (from PATH, or `$HUSK_MKFS_EXT4`)
/// under `<root>/tmp` and published atomically; a second call builds nothing.
///
/// The file system has no journal (it is never written), its root is owned by 0:0, and
/// it is sized to the tree plus headroom for metadata.
pub fn ext4_image(cache: &Cache, key: &str, dir: &Path) -> Result<PathBuf, StorageError> {
    check_key(key)?;
    let entry = cache.entry_dir(key);
    let dst = entry.join(EXT4);
    if dst.is_file() {
        log::debug!("block image cache hit for {key}");
        return Ok(dst);
    }
    log::debug!("block image cache miss for {key}: building it from {dir:?}");
    let mkfs = find_mkfs()?;
    let usage = Usage::of(dir)?;
    let mut build = cache.new_build(key)?;
    let file = build.path().join(EXT4);
    make_fs(&mkfs, dir, &file, &usage)?;

    // A new entry is published whole by renaming the build; into an existing one (an
    // unpacked image's) the file is linked, which fails rather than replace a file
    // another builder linked first.
    if !entry.exists() {
        match build.rename_to(&entry) {
            Ok(()) => return Ok(dst),
            Err(e) if exists_error(&e) => {}
            Err(e) => {
                return Err(StorageError::Io {
                    path: entry,
                    source: e,
                })
            }
        }
    }
    match fs::hard_link(&file, &dst) {
        Ok(()) => {}
        Err(e) if exists_error(&e) => {
            log::debug!("{key}'s block image was published by another builder first");
        }
        Err(e) => {
            return Err(StorageError::Io {
                path: dst,
                source: e,
            })
        }
    }
    Ok(dst)
}

fn find_mkfs() -> Result<PathBuf, StorageError> {
    if let Some(path) = env::var_os(MKFS_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        return Err(StorageError::NoMkfs(format!(
            "{MKFS_ENV}={} does not exist",
            path.display()
        )));
    }
    let path = env::var_os("PATH").unwrap_or_default();
    // The sbin directories are often missing from a user's PATH.
    env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join("mkfs.ext4"))
        .find(|p| p.is_file())
        .ok_or_else(|| StorageError::NoMkfs("not on PATH, nor in /usr/sbin or /sbin".into()))
}

/// What a tree needs on ext4 with 4 KiB blocks, roughly but on the safe side.
#[derive(Debug, Default)]
struct Usage {
    blocks: u64,
    inodes: u64,
}

impl Usage {
    fn of(dir: &Path) -> Result<Usage, StorageError> {
        let mut usage = Usage::default();
        // Hard-linked files take their blocks and inode once.
        let mut linked = HashSet::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(path) = stack.pop() {
            let meta = fs::symlink_metadata(&path).map_err(StorageError::io(&path))?;
            if meta.nlink() > 1 && !meta.is_dir() && !linked.insert((meta.dev(), meta.ino())) {
                continue;
            }
            usage.inodes += 1;
            let ft = meta.file_type();
            if ft.is_dir() {
                // ext4 directory entries: 8 bytes and the name, padded to 4.
                let mut bytes = 24;
                for entry in fs::read_dir(&path).map_err(StorageError::io(&path))? {
                    let entry = entry.map_err(StorageError::io(&path))?;
                    bytes += 8 + (entry.file_name().as_bytes().len() as u64).next_multiple_of(4);
                    stack.push(entry.path());
                }
                usage.blocks += bytes.div_ceil(BLOCK);
            } else if ft.is_file() {
                usage.blocks += meta.size().div_ceil(BLOCK);
            } else if ft.is_symlink() && meta.size() >= 60 {
                // Shorter targets live in the inode.
                usage.blocks += 1;
            }
        }
        Ok(usage)
    }

    /// Inodes to ask for: the tree's and a margin (mkfs rounds up to whole tables).
    fn inode_count(&self) -> u64 {
        self.inodes + self.inodes / 4 + 64
    }

    /// The file system's size: data and inode tables, plus 25% and 16 MiB for the rest
    /// of the metadata (bitmaps, group descriptors, extent trees), in whole MiB.
    fn bytes(&self) -> u64 {
        let needed = self.blocks * BLOCK + self.inode_count() * INODE_SIZE;
        (needed + needed / 4 + 16 * MIB).next_multiple_of(MIB)
    }
}

fn make_fs(mkfs: &Path, dir: &Path, file: &Path, usage: &Usage) -> Result<(), StorageError> {
    let size = usage.bytes();
    // Created here (sparse) rather than by mkfs, which not all versions do.
    File::create(file)
        .and_then(|f| f.set_len(size))
        .map_err(StorageError::io(file))?;
    let output = Command::new(mkfs)
        .args(["-q", "-F", "-m", "0", "-b", "4096", "-I", "256"])
        .arg("-N")
        .arg(usage.inode_count().to_string())
        .args([
            "-L",
            "husk-rootfs",
            "-O",
            "^has_journal",
            "-E",
            "root_owner=0:0",
        ])
        .arg("-d")
        .arg(dir)
        .arg(file)
        .arg(format!("{}k", size / 1024))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StorageError::NoMkfs(format!("{}: {e}", mkfs.display())),
            _ => StorageError::Io {
                path: mkfs.into(),
                source: e,
            },
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        return Err(StorageError::Mkfs {
            program: mkfs.into(),
            status: output.status,
            stderr: format!("{}{}", stdout.trim(), stderr.trim()),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_have_headroom() {
        let empty = Usage::default();
        assert_eq!(empty.bytes(), 17 * MIB);
        let big = Usage {
            blocks: 100_000,
            inodes: 10_000,
        };
        let data = 100_000 * BLOCK;
        assert!(big.bytes() >= data + data / 4 + 16 * MIB);
        assert_eq!(big.bytes() % MIB, 0);
        assert!(big.inode_count() > 10_000);
    }
}
