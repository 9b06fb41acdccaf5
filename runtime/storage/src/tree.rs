//! Content keys for plain directory trees.

use std::ffi::OsString;
use std::fs::{self, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::StorageError;

/// A content key for the directory tree at `dir` (an OCI bundle's rootfs), usable as a
/// cache key: `tree-sha256-<hex>`.
///
/// It hashes the sorted walk of every entry's relative path, file type, mode, owner,
/// size, mtime (in ns), symlink target and device numbers: metadata, not file bytes, so
/// it is cheap for big trees. The price: a file rewritten in place with the same size
/// and mtime (which takes deliberately resetting the mtime) keeps the key. Symlinks are
/// not followed, `dir` itself is.
pub fn tree_key(dir: &Path) -> Result<String, StorageError> {
    let mut hasher = Sha256::new();
    // Versioned, so that a change of the encoding cannot reuse old entries.
    hasher.update(b"husk tree key 1\0");
    let meta = fs::metadata(dir).map_err(StorageError::io(dir))?;
    if !meta.is_dir() {
        return Err(StorageError::Io {
            path: dir.into(),
            source: rustix::io::Errno::NOTDIR.into(),
        });
    }
    record(&mut hasher, Path::new(""), dir, &meta)?;
    // Depth first with an explicit stack (no recursion limit on deep trees); children
    // are pushed in reverse so that they come off sorted.
    let mut stack: Vec<PathBuf> = children(dir, Path::new(""))?;
    while let Some(rel) = stack.pop() {
        let path = dir.join(&rel);
        let meta = fs::symlink_metadata(&path).map_err(StorageError::io(&path))?;
        record(&mut hasher, &rel, &path, &meta)?;
        if meta.is_dir() {
            stack.extend(children(&path, &rel)?);
        }
    }
    Ok(format!("tree-sha256-{}", hex::encode(hasher.finalize())))
}

/// The entries of `path` as paths relative to the tree, in reverse order of name.
fn children(path: &Path, rel: &Path) -> Result<Vec<PathBuf>, StorageError> {
    let mut names = fs::read_dir(path)
        .and_then(|rd| {
            rd.map(|e| e.map(|e| e.file_name()))
                .collect::<Result<Vec<OsString>, _>>()
        })
        .map_err(StorageError::io(path))?;
    names.sort_unstable_by(|a, b| b.as_bytes().cmp(a.as_bytes()));
    Ok(names.into_iter().map(|n| rel.join(n)).collect())
}

/// One entry, length-prefixed field by field so that no two entries encode alike.
fn record(
    hasher: &mut Sha256,
    rel: &Path,
    path: &Path,
    meta: &Metadata,
) -> Result<(), StorageError> {
    let bytes = |h: &mut Sha256, b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        b'd'
    } else if ft.is_symlink() {
        b'l'
    } else if ft.is_char_device() {
        b'c'
    } else if ft.is_block_device() {
        b'b'
    } else if ft.is_fifo() {
        b'p'
    } else if ft.is_socket() {
        b's'
    } else {
        b'f'
    };
    bytes(hasher, rel.as_os_str().as_bytes());
    hasher.update([kind]);
    hasher.update(meta.mode().to_le_bytes());
    hasher.update(meta.uid().to_le_bytes());
    hasher.update(meta.gid().to_le_bytes());
    hasher.update(meta.size().to_le_bytes());
    hasher.update(meta.mtime().to_le_bytes());
    hasher.update(meta.mtime_nsec().to_le_bytes());
    hasher.update(meta.rdev().to_le_bytes());
    let target = if ft.is_symlink() {
        fs::read_link(path).map_err(StorageError::io(path))?
    } else {
        PathBuf::new()
    };
    bytes(hasher, target.as_os_str().as_bytes());
    Ok(())
}
