//! tree_key: metadata changes change it, nothing else does.

use std::fs::{self, File, FileTimes, Permissions};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::time::{Duration, SystemTime};

use husk_storage::tree_key;

#[test]
fn tree_key_follows_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tree");
    fs::create_dir_all(dir.join("a/b")).unwrap();
    let file = dir.join("a/b/file");
    fs::write(&file, b"12345").unwrap();
    fs::write(dir.join("top"), b"x").unwrap();
    symlink("a/b/file", dir.join("link")).unwrap();
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    let set_mtime = |path| {
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_times(FileTimes::new().set_modified(mtime))
            .unwrap()
    };
    set_mtime(&file);

    let key = tree_key(&dir).unwrap();
    assert!(
        key.starts_with("tree-sha256-") && key.len() == 12 + 64,
        "{key}"
    );
    assert_eq!(tree_key(&dir).unwrap(), key);

    // Mode: changes it; changing it back restores it (ctime is not part of the key).
    fs::set_permissions(&file, Permissions::from_mode(0o600)).unwrap();
    let chmodded = tree_key(&dir).unwrap();
    assert_ne!(chmodded, key);
    fs::set_permissions(&file, Permissions::from_mode(0o644)).unwrap();
    assert_eq!(tree_key(&dir).unwrap(), key);

    // Size: changes it even with the mtime put back.
    fs::write(&file, b"123456").unwrap();
    set_mtime(&file);
    assert_ne!(tree_key(&dir).unwrap(), key);

    // Same size and mtime: not noticed (documented).
    fs::write(&file, b"abcde").unwrap();
    set_mtime(&file);
    assert_eq!(tree_key(&dir).unwrap(), key);

    // Reading files changes nothing; a new entry does; so does a symlink's target.
    fs::read(&file).unwrap();
    assert_eq!(tree_key(&dir).unwrap(), key);
    let copy = tmp.path().join("copy");
    fs::create_dir(&copy).unwrap();
    assert_ne!(tree_key(&copy).unwrap(), key);
    assert!(tree_key(&tmp.path().join("missing")).is_err());
    assert!(tree_key(&file).is_err());
}
