//! ext4_image with Debian's e2fsprogs (mkfs.ext4, e2fsck, debugfs).
//!
//! One test: it changes HUSK_MKFS_EXT4, which other tests in the same process would see.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::Path;
use std::process::Command;

use common::*;
use husk_storage::{ext4_image, tree_key, unpack_image, Cache, StorageError};

fn debugfs(image: &Path, request: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", request])
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fsck(image: &Path) {
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn ext4_images_are_built_once_and_check_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tree");
    fs::create_dir_all(dir.join("etc/deep/er")).unwrap();
    fs::write(dir.join("etc/hostname"), b"husk\n").unwrap();
    fs::write(dir.join("etc/deep/er/big"), vec![7u8; 3 << 20]).unwrap();
    symlink("etc/hostname", dir.join("link")).unwrap();
    fs::hard_link(dir.join("etc/hostname"), dir.join("hard")).unwrap();
    for i in 0..300 {
        fs::write(dir.join(format!("etc/f{i}")), b"").unwrap();
    }
    std::os::unix::fs::chown(dir.join("etc/hostname"), Some(1234), Some(5678)).unwrap();
    let cache = Cache::new(tmp.path().join("cache"));
    let key = tree_key(&dir).unwrap();

    // No mkfs: a clear error, and nothing left behind.
    std::env::set_var("HUSK_MKFS_EXT4", "/nonexistent/mkfs.ext4");
    let err = ext4_image(&cache, &key, &dir).unwrap_err();
    assert!(matches!(err, StorageError::NoMkfs(_)), "{err}");
    assert!(
        err.to_string().contains("apt-get install e2fsprogs"),
        "{err}"
    );
    // A failing mkfs: its temp file is removed.
    std::env::set_var("HUSK_MKFS_EXT4", "/bin/false");
    let err = ext4_image(&cache, &key, &dir).unwrap_err();
    assert!(matches!(err, StorageError::Mkfs { .. }), "{err}");
    assert!(list(&cache.root().join("tmp")).is_empty());
    assert!(list(&cache.root().join("images")).is_empty());
    std::env::remove_var("HUSK_MKFS_EXT4");

    let image = ext4_image(&cache, &key, &dir).unwrap();
    assert_eq!(
        image,
        cache.root().join("images").join(&key).join("rootfs.ext4")
    );
    fsck(&image);
    assert_eq!(debugfs(&image, "cat /etc/hostname"), "husk\n");
    assert_eq!(debugfs(&image, "cat /hard"), "husk\n");
    assert_eq!(debugfs(&image, "cat /etc/deep/er/big").len(), 3 << 20);
    let stat = debugfs(&image, "stat /etc/hostname");
    assert!(
        stat.contains("User:  1234") && stat.contains("Group:  5678"),
        "{stat}"
    );
    assert!(debugfs(&image, "stat /link").contains("Fast link dest: \"etc/hostname\""));
    let features = debugfs(&image, "features");
    assert!(!features.contains("has_journal"), "{features}");
    assert!(list(&cache.root().join("tmp")).is_empty());

    // The second call builds nothing, even with mkfs gone.
    let inode = fs::metadata(&image).unwrap().ino();
    std::env::set_var("HUSK_MKFS_EXT4", "/nonexistent/mkfs.ext4");
    let again = ext4_image(&cache, &key, &dir).unwrap();
    std::env::remove_var("HUSK_MKFS_EXT4");
    assert_eq!(again, image);
    assert_eq!(fs::metadata(&again).unwrap().ino(), inode);

    // An unpacked image's entry takes its block image beside the rootfs.
    let layout = tmp.path().join("layout");
    let layer = Layer::new()
        .file_as("bin/sh", b"not really", 0o755, 0, 0)
        .char_device("dev/null", 1, 3);
    simple_image(&layout, &[(LAYER_GZIP, layer.gzip())]);
    let unpacked = unpack_image(&cache, &layout, None).unwrap();
    let image = ext4_image(&cache, &unpacked.key, &unpacked.rootfs).unwrap();
    assert_eq!(image, unpacked.rootfs.with_file_name("rootfs.ext4"));
    fsck(&image);
    assert_eq!(debugfs(&image, "cat /bin/sh"), "not really");
    assert!(debugfs(&image, "stat /dev/null").contains("character special"));
    assert!(list(&cache.root().join("tmp")).is_empty());

    assert!(matches!(
        ext4_image(&cache, "../escape", &dir),
        Err(StorageError::BadKey(_))
    ));
}
