//! Builds OCI image layouts for the tests: layers as tars made entry by entry, blobs
//! stored under their digests, manifests and an index.

#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const MTIME: u64 = 1_600_000_000;

pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A layer tar, entry by entry.
pub struct Layer {
    builder: tar::Builder<Vec<u8>>,
}

impl Default for Layer {
    fn default() -> Self {
        Layer::new()
    }
}

impl Layer {
    pub fn new() -> Layer {
        Layer {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, mode: u32, uid: u64, gid: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(MTIME);
        h.set_size(0);
        h
    }

    fn append(&mut self, mut h: tar::Header, path: &str, data: &[u8]) {
        // Written raw: `set_path` refuses `..`, which the escape tests need.
        let name = &mut h.as_old_mut().name;
        name.fill(0);
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.builder.append(&h, data).unwrap();
    }

    pub fn file(self, path: &str, data: &[u8]) -> Layer {
        self.file_as(path, data, 0o644, 0, 0)
    }

    pub fn file_as(mut self, path: &str, data: &[u8], mode: u32, uid: u64, gid: u64) -> Layer {
        let h = Layer::header(tar::EntryType::Regular, mode, uid, gid);
        self.append(h, path, data);
        self
    }

    pub fn dir(self, path: &str) -> Layer {
        self.dir_as(path, 0o755)
    }

    pub fn dir_as(mut self, path: &str, mode: u32) -> Layer {
        let h = Layer::header(tar::EntryType::Directory, mode, 0, 0);
        self.append(h, path, b"");
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Layer {
        let mut h = Layer::header(tar::EntryType::Symlink, 0o777, 0, 0);
        h.set_link_name_literal(target).unwrap();
        self.append(h, path, b"");
        self
    }

    pub fn hardlink(mut self, path: &str, target: &str) -> Layer {
        let mut h = Layer::header(tar::EntryType::Link, 0o644, 0, 0);
        h.set_link_name_literal(target).unwrap();
        self.append(h, path, b"");
        self
    }

    pub fn char_device(mut self, path: &str, major: u32, minor: u32) -> Layer {
        let mut h = Layer::header(tar::EntryType::Char, 0o666, 0, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.append(h, path, b"");
        self
    }

    pub fn fifo(mut self, path: &str) -> Layer {
        let h = Layer::header(tar::EntryType::Fifo, 0o640, 0, 0);
        self.append(h, path, b"");
        self
    }

    pub fn tar(self) -> Vec<u8> {
        self.builder.into_inner().unwrap()
    }

    pub fn gzip(self) -> Vec<u8> {
        gzip(&self.tar())
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

pub fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Stores a blob in the layout; returns its descriptor.
pub fn put_blob(layout: &Path, media_type: &str, data: &[u8]) -> Value {
    let digest = digest_of(data);
    let dir = layout.join("blobs/sha256");
    fs::create_dir_all(&dir).unwrap();
    fs::write(blob_path(layout, &digest), data).unwrap();
    json!({"mediaType": media_type, "digest": digest, "size": data.len()})
}

pub fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

/// A config blob with process defaults.
pub fn config(cmd: &[&str]) -> Value {
    json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/bin:/bin", "FOO=bar"],
            "Entrypoint": ["/bin/entry"],
            "Cmd": cmd,
            "WorkingDir": "/work",
            "User": "1000:1000"
        },
        "rootfs": {"type": "layers", "diff_ids": []}
    })
}

/// Stores an image (config and layers, each `(media type, bytes)`); returns its
/// manifest's descriptor.
pub fn put_image(layout: &Path, config: &Value, layers: &[(&str, Vec<u8>)]) -> Value {
    let config = put_blob(
        layout,
        "application/vnd.oci.image.config.v1+json",
        &serde_json::to_vec(config).unwrap(),
    );
    let layers: Vec<Value> = layers
        .iter()
        .map(|(t, data)| put_blob(layout, t, data))
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": config,
        "layers": layers,
    });
    put_blob(layout, MANIFEST, &serde_json::to_vec(&manifest).unwrap())
}

/// A descriptor with a name annotation.
pub fn named(mut desc: Value, annotation: &str, name: &str) -> Value {
    desc["annotations"] = json!({ annotation: name });
    desc
}

pub fn write_index(layout: &Path, manifests: Vec<Value>) {
    fs::create_dir_all(layout).unwrap();
    fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let index = json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": manifests});
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
}

/// A one-manifest layout of `layers`, with the default config.
pub fn simple_image(layout: &Path, layers: &[(&str, Vec<u8>)]) -> Value {
    let desc = put_image(layout, &config(&["run"]), layers);
    write_index(layout, vec![desc.clone()]);
    desc
}

/// A tar (plain or gzip-compressed) of a layout directory.
pub fn tar_of(layout: &Path, dst: &Path, compress: bool) {
    let mut builder = tar::Builder::new(Vec::new());
    builder.append_dir_all(".", layout).unwrap();
    let data = builder.into_inner().unwrap();
    fs::write(dst, if compress { gzip(&data) } else { data }).unwrap();
}

/// The names in a directory, sorted (empty if it does not exist).
pub fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}
