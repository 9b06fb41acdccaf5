//! unpack_image against image layouts built here (run as root: devices, owners).

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::{Arc, Barrier};

use common::*;
use husk_storage::{unpack_image, Cache, ImageDefaults, StorageError};

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap()
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

/// Three layers exercising every kind of entry, whiteouts and replacements.
fn rich_layers() -> Vec<(&'static str, Vec<u8>)> {
    let one = Layer::new()
        .dir("etc")
        .file("etc/hostname", b"one")
        .hardlink("etc/hostlink", "etc/hostname")
        .file_as("bin/tool", b"#!/bin/sh\n", 0o4755, 1000, 1001)
        .dir("data")
        .file("data/old1", b"old")
        .dir("data/sub")
        .file("data/sub/old2", b"old")
        .file("gone.txt", b"bye")
        .symlink("link", "etc/hostname")
        .dir("keep")
        .file("keep/a", b"a")
        .dir("usr")
        .dir("usr/lib")
        .symlink("lib", "/usr/lib")
        .dir("dev")
        .char_device("dev/null", 1, 3)
        .fifo("run/fifo")
        .dir_as("ro", 0o555)
        .file("ro/inside", b"ro");
    // Same-layer entries on both sides of the opaque marker survive it.
    let two = Layer::new()
        .file(".wh.gone.txt", b"")
        .file("data/sub/new2", b"new2")
        .file("data/.wh..wh..opq", b"")
        .file("data/new", b"new")
        .file_as("etc/hostname", b"two", 0o600, 0, 0)
        .file("ro/more", b"more");
    let three = Layer::new()
        .file("keep", b"now a file")
        .file("/lib/x", b"through the symlink");
    vec![
        (LAYER_GZIP, one.gzip()),
        (LAYER_TAR, two.tar()),
        (DOCKER_GZIP, three.gzip()),
    ]
}

#[test]
fn layers_apply_in_order_with_whiteouts_links_devices_and_owners() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    simple_image(&layout, &rich_layers());
    let cache = Cache::new(tmp.path().join("cache"));
    let image = unpack_image(&cache, &layout, None).unwrap();
    let root = &image.rootfs;
    assert!(image.key.starts_with("sha256-"));
    assert_eq!(
        *root,
        tmp.path()
            .join("cache/images")
            .join(&image.key)
            .join("rootfs")
    );

    assert_eq!(read(&root.join("etc/hostname")), "two");
    assert_eq!(mode(&root.join("etc/hostname")), 0o600);
    // The hard link keeps the first layer's file.
    assert_eq!(read(&root.join("etc/hostlink")), "one");
    let tool = fs::metadata(root.join("bin/tool")).unwrap();
    assert_eq!((tool.uid(), tool.gid()), (1000, 1001));
    assert_eq!(tool.mode() & 0o7777, 0o4755);
    assert_eq!(tool.mtime(), MTIME as i64);
    // Implicit parents are made.
    assert!(root.join("bin").is_dir());

    // Whiteout and opaque directory.
    assert!(!root.join("gone.txt").exists());
    assert_eq!(list(&root.join("data")), ["new", "sub"]);
    assert_eq!(list(&root.join("data/sub")), ["new2"]);

    assert_eq!(
        fs::read_link(root.join("link")).unwrap(),
        Path::new("etc/hostname")
    );
    assert_eq!(read(&root.join("keep")), "now a file");
    // An absolute symlink in a parent resolves inside the root.
    assert_eq!(read(&root.join("usr/lib/x")), "through the symlink");
    assert_eq!(
        fs::read_link(root.join("lib")).unwrap(),
        Path::new("/usr/lib")
    );

    let null = fs::symlink_metadata(root.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), 0x103);
    assert_eq!(null.mode() & 0o7777, 0o666);
    let fifo = fs::symlink_metadata(root.join("run/fifo")).unwrap();
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.mode() & 0o7777, 0o640);

    // A read-only directory still takes later layers' entries, and keeps its mode.
    assert_eq!(read(&root.join("ro/more")), "more");
    assert_eq!(mode(&root.join("ro")), 0o555);
    // Directory mtimes are the layers', not the time of unpacking.
    assert_eq!(
        fs::metadata(root.join("data")).unwrap().mtime(),
        MTIME as i64
    );

    assert_eq!(
        image.defaults,
        ImageDefaults {
            env: vec!["PATH=/usr/bin:/bin".into(), "FOO=bar".into()],
            entrypoint: vec!["/bin/entry".into()],
            cmd: vec!["run".into()],
            working_dir: Some("/work".into()),
            user: Some("1000:1000".into()),
        }
    );
    let entry = tmp.path().join("cache/images").join(&image.key);
    assert_eq!(list(&entry), [".complete", "defaults.json", "rootfs"]);
    assert!(list(&tmp.path().join("cache/tmp")).is_empty());
}

#[test]
fn entries_cannot_write_outside_the_root() {
    let tmp = tempfile::tempdir().unwrap();
    // Outside targets under the test's own temp dir, named uniquely.
    let outside = tmp.path().join("outside");
    let outside_s = outside.to_str().unwrap();
    let layout = tmp.path().join("layout");
    let layer = Layer::new()
        .symlink("evil", outside_s)
        .file("evil/x", b"escaped?")
        .symlink("up", "../../../../../../../../..")
        .file(&format!("up{outside_s}/y"), b"escaped?")
        .symlink("file-link", &format!("{outside_s}-file"))
        .file("file-link", b"replaces the symlink");
    simple_image(&layout, &[(LAYER_TAR, layer.tar())]);
    let cache = Cache::new(tmp.path().join("cache"));
    let image = unpack_image(&cache, &layout, None).unwrap();
    assert!(!outside.exists());
    assert!(!Path::new(&format!("{outside_s}-file")).exists());
    let inside = image.rootfs.join(outside.strip_prefix("/").unwrap());
    assert_eq!(read(&inside.join("x")), "escaped?");
    assert_eq!(read(&inside.join("y")), "escaped?");
    assert_eq!(
        read(&image.rootfs.join("file-link")),
        "replaces the symlink"
    );

    // `..` in entry names and in hard link targets is refused outright.
    for (i, layer) in [
        Layer::new().file("a/../../x", b"no"),
        Layer::new().hardlink("hl", "../../../etc/passwd"),
        Layer::new().file(".wh..", b""),
    ]
    .into_iter()
    .enumerate()
    {
        let layout = tmp.path().join(format!("bad{i}"));
        simple_image(&layout, &[(LAYER_TAR, layer.tar())]);
        let cache = Cache::new(tmp.path().join(format!("cache{i}")));
        let err = unpack_image(&cache, &layout, None).unwrap_err();
        assert!(matches!(err, StorageError::Escape { .. }), "{err}");
        assert!(list(&cache.root().join("images")).is_empty());
        assert!(list(&cache.root().join("tmp")).is_empty());
    }
    assert!(!tmp.path().join("x").exists());
}

#[test]
fn tar_sources_work_like_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    simple_image(&layout, &rich_layers());
    let plain = tmp.path().join("image.tar");
    let gz = tmp.path().join("image.tar.gz");
    tar_of(&layout, &plain, false);
    tar_of(&layout, &gz, true);

    let from_dir = unpack_image(&Cache::new(tmp.path().join("c0")), &layout, None).unwrap();
    for (i, source) in [&plain, &gz].into_iter().enumerate() {
        let cache = Cache::new(tmp.path().join(format!("c{}", i + 1)));
        let image = unpack_image(&cache, source, None).unwrap();
        assert_eq!(image.key, from_dir.key);
        assert_eq!(image.defaults, from_dir.defaults);
        assert_eq!(read(&image.rootfs.join("usr/lib/x")), "through the symlink");
        assert_eq!(list(&image.rootfs.join("data")), ["new", "sub"]);
        assert!(list(&cache.root().join("tmp")).is_empty());

        // The second time is a hit that writes nothing, for a compressed tar too.
        let inode = fs::metadata(cache.root().join("images").join(&image.key))
            .unwrap()
            .ino();
        fs::remove_dir(cache.root().join("tmp")).unwrap();
        let again = unpack_image(&cache, source, None).unwrap();
        assert_eq!(again.rootfs, image.rootfs);
        assert!(!cache.root().join("tmp").exists());
        let after = fs::metadata(cache.root().join("images").join(&image.key))
            .unwrap()
            .ino();
        assert_eq!(inode, after);
    }
}

#[test]
fn bad_blobs_are_errors_naming_the_digest_and_publish_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let layers = || {
        vec![
            (LAYER_GZIP, Layer::new().file("a", b"a").gzip()),
            (LAYER_TAR, Layer::new().file("b", b"b").tar()),
        ]
    };
    type Damage = fn(&Path, &serde_json::Value) -> String;
    let damages: [(&str, Damage); 4] = [
        ("wrong digest", |layout, manifest| {
            // Same size, other content: only the digest can tell.
            let digest = layer_digest(layout, manifest, 1);
            let path = blob_path(layout, &digest);
            let mut data = fs::read(&path).unwrap();
            let n = data.iter().position(|&b| b == b'b').unwrap();
            data[n] = b'c';
            fs::write(path, data).unwrap();
            digest
        }),
        ("missing layer", |layout, manifest| {
            let digest = layer_digest(layout, manifest, 0);
            fs::remove_file(blob_path(layout, &digest)).unwrap();
            digest
        }),
        ("longer layer", |layout, manifest| {
            let digest = layer_digest(layout, manifest, 1);
            let path = blob_path(layout, &digest);
            let mut data = fs::read(&path).unwrap();
            data.extend_from_slice(&[0; 512]);
            fs::write(path, data).unwrap();
            digest
        }),
        ("wrong config", |layout, manifest| {
            let digest = manifest_json(layout, manifest)["config"]["digest"]
                .as_str()
                .unwrap()
                .to_string();
            fs::write(blob_path(layout, &digest), b"{}").unwrap();
            digest
        }),
    ];
    for (i, (what, damage)) in damages.into_iter().enumerate() {
        let layout = tmp.path().join(format!("layout{i}"));
        let manifest = simple_image(&layout, &layers());
        let digest = damage(&layout, &manifest);
        let cache = Cache::new(tmp.path().join(format!("cache{i}")));
        let err = unpack_image(&cache, &layout, None).unwrap_err();
        assert!(err.to_string().contains(&digest), "{what}: {err}");
        assert!(list(&cache.root().join("images")).is_empty(), "{what}");
        assert!(list(&cache.root().join("tmp")).is_empty(), "{what}");
    }
}

fn manifest_json(layout: &Path, desc: &serde_json::Value) -> serde_json::Value {
    let digest = desc["digest"].as_str().unwrap();
    serde_json::from_slice(&fs::read(blob_path(layout, digest)).unwrap()).unwrap()
}

fn layer_digest(layout: &Path, desc: &serde_json::Value, n: usize) -> String {
    manifest_json(layout, desc)["layers"][n]["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_second_unpack_reads_no_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let manifest = simple_image(&layout, &rich_layers());
    let cache = Cache::new(tmp.path().join("cache"));
    let first = unpack_image(&cache, &layout, None).unwrap();
    let entry = cache.root().join("images").join(&first.key);
    let inode = fs::metadata(&entry).unwrap().ino();
    let rootfs_inode = fs::metadata(&first.rootfs).unwrap().ino();

    // Without its layers the image could not be unpacked again.
    for n in 0..3 {
        fs::remove_file(blob_path(&layout, &layer_digest(&layout, &manifest, n))).unwrap();
    }
    let second = unpack_image(&cache, &layout, None).unwrap();
    assert_eq!(second.key, first.key);
    assert_eq!(second.rootfs, first.rootfs);
    assert_eq!(second.defaults, first.defaults);
    assert_eq!(fs::metadata(&entry).unwrap().ino(), inode);
    assert_eq!(fs::metadata(&second.rootfs).unwrap().ino(), rootfs_inode);
    assert!(list(&cache.root().join("tmp")).is_empty());
}

#[test]
fn concurrent_unpacks_publish_one_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    simple_image(&layout, &rich_layers());
    let cache = Arc::new(Cache::new(tmp.path().join("cache")));
    let barrier = Arc::new(Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (cache, barrier, layout) = (cache.clone(), barrier.clone(), layout.clone());
            std::thread::spawn(move || {
                barrier.wait();
                unpack_image(&cache, &layout, None).unwrap()
            })
        })
        .collect();
    let images: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for image in &images {
        assert_eq!(image.rootfs, images[0].rootfs);
        assert_eq!(read(&image.rootfs.join("etc/hostname")), "two");
    }
    assert_eq!(list(&cache.root().join("images")), [images[0].key.clone()]);
    assert!(list(&cache.root().join("tmp")).is_empty());
}

#[test]
fn references_choose_the_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let image = |name: &str| {
        let layer = Layer::new().file("name", name.as_bytes()).gzip();
        put_image(&layout, &config(&[name]), &[(LAYER_GZIP, layer)])
    };
    let a = named(image("a"), "org.opencontainers.image.ref.name", "a");
    let b = named(
        image("b"),
        "io.containerd.image.name",
        "docker.io/library/b:latest",
    );
    write_index(&layout, vec![a, b]);
    let cache = Cache::new(tmp.path().join("cache"));

    let got = unpack_image(&cache, &layout, Some("docker.io/library/b:latest")).unwrap();
    assert_eq!(read(&got.rootfs.join("name")), "b");
    assert_eq!(got.defaults.cmd, ["b"]);
    let got = unpack_image(&cache, &layout, Some("a")).unwrap();
    assert_eq!(read(&got.rootfs.join("name")), "a");

    let err = unpack_image(&cache, &layout, None).unwrap_err();
    assert!(matches!(err, StorageError::SeveralManifests(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("a") && msg.contains("docker.io/library/b:latest"),
        "{msg}"
    );
    let err = unpack_image(&cache, &layout, Some("c")).unwrap_err();
    assert!(matches!(err, StorageError::NoSuchReference { .. }), "{err}");
}

#[test]
fn nested_indexes_pick_linux_amd64() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let image = |name: &str, arch: &str| {
        let layer = Layer::new().file("arch", name.as_bytes()).gzip();
        let mut desc = put_image(&layout, &config(&[]), &[(LAYER_GZIP, layer)]);
        desc["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
        desc
    };
    let arm = image("arm64", "arm64");
    let amd = image("amd64", "amd64");
    let list_json = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [arm, amd],
    });
    let nested = put_blob(&layout, INDEX, &serde_json::to_vec(&list_json).unwrap());
    write_index(
        &layout,
        vec![named(nested, "org.opencontainers.image.ref.name", "multi")],
    );
    let cache = Cache::new(tmp.path().join("cache"));
    let got = unpack_image(&cache, &layout, None).unwrap();
    assert_eq!(read(&got.rootfs.join("arch")), "amd64");
    assert_eq!(
        got.key,
        format!("sha256-{}", &amd["digest"].as_str().unwrap()[7..])
    );
    assert_eq!(got.defaults.cmd, Vec::<String>::new());
}

#[test]
fn zstd_layers_are_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    simple_image(
        &layout,
        &[
            (LAYER_TAR, Layer::new().file("a", b"a").tar()),
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                vec![0x28, 0xb5, 0x2f, 0xfd, 0],
            ),
        ],
    );
    let cache = Cache::new(tmp.path().join("cache"));
    let err = unpack_image(&cache, &layout, None).unwrap_err();
    assert!(err.to_string().contains("zstd"), "{err}");
    assert!(list(&cache.root().join("images")).is_empty());
    assert!(list(&cache.root().join("tmp")).is_empty());
}

#[test]
fn a_directory_without_an_index_is_not_an_image() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::new(tmp.path().join("cache"));
    let err = unpack_image(&cache, tmp.path(), None).unwrap_err();
    assert!(matches!(err, StorageError::NotLayout(_)), "{err}");
}

#[test]
fn leftovers_do_not_break_later_unpacks() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let manifest = simple_image(&layout, &[(LAYER_TAR, Layer::new().file("a", b"a").tar())]);
    let key = format!("sha256-{}", &manifest["digest"].as_str().unwrap()[7..]);
    let cache = Cache::new(tmp.path().join("cache"));
    // A killed builder's temp dir (a pid above pid_max is never alive) under our key...
    let stale = cache.root().join("tmp").join(format!("{key}.2147483000.0"));
    fs::create_dir_all(stale.join("rootfs")).unwrap();
    // ...and a damaged entry without its `.complete` marker.
    let entry = cache.root().join("images").join(&key);
    fs::create_dir_all(entry.join("rootfs")).unwrap();
    fs::write(entry.join("rootfs/junk"), b"").unwrap();

    let image = unpack_image(&cache, &layout, None).unwrap();
    assert_eq!(list(&image.rootfs), ["a"]);
    assert_eq!(list(&entry), [".complete", "defaults.json", "rootfs"]);
    // The young stale build stays (it might be a live builder in another PID
    // namespace); only our own builds are gone.
    assert_eq!(
        list(&cache.root().join("tmp")),
        [format!("{key}.2147483000.0")]
    );
}
