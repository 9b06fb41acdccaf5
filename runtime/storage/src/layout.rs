//! Reading an OCI image layout (a directory, or a tar of one) with every blob verified,
//! and choosing the manifest to unpack.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use serde::de::IgnoredAny;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::{ImageDefaults, StorageError};

/// The largest manifest, index or config we read into memory. The OCI spec suggests 4 MiB
/// for manifests; configs with long histories can be bigger.
const MAX_JSON: u64 = 64 << 20;

/// What a compressed tar source keeps in memory for the no-write cache check: its JSON
/// files up to this size each, and this much in all.
const MAX_KEPT_FILE: u64 = 4 << 20;
const MAX_KEPT_TOTAL: u64 = 64 << 20;

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
const LAYER_TYPES: [&str; 7] = [
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

/// The annotations that name an index entry (OCI's, and the one containerd exports).
const NAME_ANNOTATIONS: [&str; 2] = [
    "org.opencontainers.image.ref.name",
    "io.containerd.image.name",
];

/// Nested indexes followed at most (a loop of indexes cannot exist with content
/// addressing, but a deep chain is still not worth following).
const MAX_NESTING: usize = 4;

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub annotations: Option<HashMap<String, String>>,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Platform {
    pub architecture: String,
    pub os: String,
}

#[derive(Debug, Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Manifest {
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// Just enough of a JSON blob to tell an index from a manifest when its descriptor has
/// no media type.
#[derive(Deserialize)]
struct Sniff {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct ConfigBlob {
    #[serde(default)]
    config: Option<ContainerConfig>,
}

/// `config.config` of an image config; any field may be missing or null.
#[derive(Deserialize)]
struct ContainerConfig {
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
    #[serde(rename = "User", default)]
    user: Option<String>,
}

/// Where an image layout's files are.
pub(crate) enum Layout {
    Dir(PathBuf),
    /// A plain tar: each regular file's data offset and size in it.
    Tar {
        path: PathBuf,
        files: HashMap<String, (u64, u64)>,
    },
    /// The small JSON files of a compressed tar (`source` for messages).
    Memory {
        source: PathBuf,
        files: HashMap<String, Vec<u8>>,
    },
}

pub(crate) enum Opened {
    Layout(Layout),
    /// A gzip-compressed tar, as a [`Layout::Memory`] of its small files.
    GzipTar(Layout),
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

pub(crate) fn open(source: &Path) -> Result<Opened, StorageError> {
    let src_err = |e| StorageError::Source {
        path: source.into(),
        source: e,
    };
    let meta = fs::metadata(source).map_err(src_err)?;
    if meta.is_dir() {
        if !source.join("index.json").is_file() {
            return Err(StorageError::NotLayout(source.into()));
        }
        return Ok(Opened::Layout(Layout::Dir(source.into())));
    }
    let mut magic = Vec::with_capacity(2);
    File::open(source)
        .and_then(|f| f.take(2).read_to_end(&mut magic))
        .map_err(src_err)?;
    if magic == GZIP_MAGIC {
        Ok(Opened::GzipTar(small_files(source)?))
    } else {
        Ok(Opened::Layout(Layout::tar(source)?))
    }
}

/// A file's name inside a layout tar (`./index.json` and `index.json` alike); `None` for
/// names that climb out.
fn layout_name(path: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

/// Scans a compressed tar once, keeping only files that look like JSON and are small.
fn small_files(source: &Path) -> Result<Layout, StorageError> {
    let src_err = |e| StorageError::Source {
        path: source.into(),
        source: e,
    };
    let file = File::open(source).map_err(src_err)?;
    let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(BufReader::new(file)));
    let mut files = HashMap::new();
    let mut total = 0;
    for entry in archive.entries().map_err(src_err)? {
        let mut entry = entry.map_err(src_err)?;
        let size = entry.size();
        if !entry.header().entry_type().is_file() || size > MAX_KEPT_FILE {
            continue;
        }
        if total + size > MAX_KEPT_TOTAL {
            break;
        }
        let Some(name) = entry.path().ok().and_then(|p| layout_name(&p)) else {
            continue;
        };
        let mut data = Vec::new();
        entry.read_to_end(&mut data).map_err(src_err)?;
        if data.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
            total += size;
            files.insert(name, data);
        }
    }
    Ok(Layout::Memory {
        source: source.into(),
        files,
    })
}

/// Decompresses a gzip-compressed tar so that its blobs can be read by offset.
pub(crate) fn decompress(source: &Path, dst: &Path) -> Result<(), StorageError> {
    let file = File::open(source).map_err(|e| StorageError::Source {
        path: source.into(),
        source: e,
    })?;
    let mut out = File::create(dst).map_err(StorageError::io(dst))?;
    io::copy(
        &mut flate2::read::MultiGzDecoder::new(BufReader::new(file)),
        &mut out,
    )
    .map_err(|e| StorageError::Source {
        path: source.into(),
        source: e,
    })?;
    Ok(())
}

impl Layout {
    /// Indexes a plain tar by its headers alone (seeking past the data).
    pub(crate) fn tar(path: &Path) -> Result<Layout, StorageError> {
        let src_err = |e| StorageError::Source {
            path: path.into(),
            source: e,
        };
        let file = File::open(path).map_err(src_err)?;
        let mut archive = tar::Archive::new(file);
        let mut files = HashMap::new();
        for entry in archive.entries_with_seek().map_err(src_err)? {
            let entry = entry.map_err(src_err)?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            if let Some(name) = entry.path().ok().and_then(|p| layout_name(&p)) {
                files.insert(name, (entry.raw_file_position(), entry.size()));
            }
        }
        if !files.contains_key("index.json") {
            return Err(StorageError::NotLayout(path.into()));
        }
        Ok(Layout::Tar {
            path: path.into(),
            files,
        })
    }

    fn source(&self) -> &Path {
        match self {
            Layout::Dir(p) | Layout::Tar { path: p, .. } | Layout::Memory { source: p, .. } => p,
        }
    }

    /// A file of the layout; `None` if it has none by that name.
    fn open_file(&self, name: &str) -> io::Result<Option<Box<dyn Read + '_>>> {
        match self {
            Layout::Dir(root) => match File::open(root.join(name)) {
                Ok(f) => Ok(Some(Box::new(f))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            },
            Layout::Tar { path, files } => match files.get(name) {
                Some(&(offset, size)) => {
                    let mut f = File::open(path)?;
                    f.seek(SeekFrom::Start(offset))?;
                    Ok(Some(Box::new(f.take(size))))
                }
                None => Ok(None),
            },
            Layout::Memory { files, .. } => Ok(files
                .get(name)
                .map(|data| Box::new(data.as_slice()) as Box<dyn Read>)),
        }
    }

    fn read_index(&self) -> Result<Index, StorageError> {
        let src_err = |e| StorageError::Source {
            path: self.source().into(),
            source: e,
        };
        let Some(file) = self.open_file("index.json").map_err(src_err)? else {
            return Err(StorageError::NotLayout(self.source().into()));
        };
        let mut data = Vec::new();
        file.take(MAX_JSON)
            .read_to_end(&mut data)
            .map_err(src_err)?;
        serde_json::from_slice(&data).map_err(|source| StorageError::Json {
            what: "index.json".into(),
            source,
        })
    }

    /// A blob's content, verified as it is read: call [`Verified::finish`] at the end.
    pub(crate) fn open_blob(
        &self,
        desc: &Descriptor,
    ) -> Result<Verified<Box<dyn Read + '_>>, StorageError> {
        let name = blob_name(&desc.digest)?;
        let reader = self
            .open_file(&name)
            .map_err(|source| StorageError::Blob {
                digest: desc.digest.clone(),
                source,
            })?
            .ok_or_else(|| StorageError::MissingBlob {
                digest: desc.digest.clone(),
            })?;
        Ok(Verified {
            // One byte more than promised is enough to tell that there is more.
            inner: reader.take(desc.size.saturating_add(1)),
            hasher: Sha256::new(),
            count: 0,
            digest: desc.digest.clone(),
            size: desc.size,
        })
    }

    /// A small blob (manifest, index, config), verified.
    fn read_blob(&self, desc: &Descriptor, what: &str) -> Result<Vec<u8>, StorageError> {
        if desc.size > MAX_JSON {
            return Err(StorageError::Unsupported(format!(
                "the {what} {} is {} bytes long, more than {MAX_JSON}",
                desc.digest, desc.size
            )));
        }
        let mut blob = self.open_blob(desc)?;
        let mut data = Vec::new();
        blob.read_to_end(&mut data)
            .map_err(|source| StorageError::Blob {
                digest: desc.digest.clone(),
                source,
            })?;
        blob.finish()?;
        Ok(data)
    }
}

/// `blobs/sha256/<hex>` for `sha256:<hex>`; anything else is refused, which also keeps
/// a digest from naming a path outside the layout.
fn blob_name(digest: &str) -> Result<String, StorageError> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
        {
            Ok(format!("blobs/sha256/{hex}"))
        }
        _ => Err(StorageError::BadDigest(digest.to_string())),
    }
}

/// A blob reader that hashes and counts what passes through it.
pub(crate) struct Verified<R> {
    inner: io::Take<R>,
    hasher: Sha256,
    count: u64,
    digest: String,
    size: u64,
}

impl<R: Read> Read for Verified<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

impl<R: Read> Verified<R> {
    /// Reads what the consumer left (decompressors and tar stop at their end markers)
    /// and checks the size and digest.
    pub(crate) fn finish(&mut self) -> Result<(), StorageError> {
        io::copy(self, &mut io::sink()).map_err(|source| StorageError::Blob {
            digest: self.digest.clone(),
            source,
        })?;
        if self.count != self.size {
            return Err(StorageError::SizeMismatch {
                digest: self.digest.clone(),
                expected: self.size,
                actual: self.count,
            });
        }
        let actual = hex::encode(self.hasher.clone().finalize());
        if self.digest.strip_prefix("sha256:") != Some(actual.as_str()) {
            return Err(StorageError::DigestMismatch {
                digest: self.digest.clone(),
                actual,
            });
        }
        Ok(())
    }
}

/// The manifest to unpack.
#[derive(Debug)]
pub(crate) struct Resolved {
    /// `sha256:<hex>`, checked by [`blob_name`].
    pub digest: String,
    pub manifest: Manifest,
}

impl Resolved {
    pub(crate) fn key(&self) -> String {
        format!(
            "sha256-{}",
            self.digest.strip_prefix("sha256:").unwrap_or(&self.digest)
        )
    }
}

fn name_of(desc: &Descriptor) -> Option<&str> {
    let annotations = desc.annotations.as_ref()?;
    NAME_ANNOTATIONS
        .iter()
        .find_map(|a| annotations.get(*a).map(String::as_str))
}

fn names(descs: &[&Descriptor]) -> String {
    let names: Vec<&str> = descs
        .iter()
        .map(|d| name_of(d).unwrap_or(&d.digest))
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// The platform images are picked for: the host's, in OCI's terms.
fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    ("linux", arch)
}

fn for_host<'a>(descs: &[&'a Descriptor]) -> Option<&'a Descriptor> {
    let (os, arch) = host_platform();
    descs.iter().copied().find(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == os && p.architecture == arch)
    })
}

/// Chooses the manifest as [`crate::unpack_image`] documents.
pub(crate) fn resolve(layout: &Layout, reference: Option<&str>) -> Result<Resolved, StorageError> {
    let index = layout.read_index()?;
    let all: Vec<&Descriptor> = index.manifests.iter().collect();
    let candidates: Vec<&Descriptor> = match reference {
        Some(r) => all.iter().copied().filter(|d| has_name(d, r)).collect(),
        None => all.clone(),
    };
    let chosen = match candidates.as_slice() {
        [] => {
            return Err(match reference {
                Some(r) => StorageError::NoSuchReference {
                    reference: r.to_string(),
                    available: names(&all),
                },
                None => StorageError::NoManifest,
            })
        }
        [only] => *only,
        several => {
            // The platform variants of one image (as containerd exports them) are one
            // choice, not several.
            let variants = several.iter().all(|d| d.platform.is_some());
            match for_host(several) {
                Some(d) if variants => d,
                _ => return Err(StorageError::SeveralManifests(names(several))),
            }
        }
    };
    follow(layout, chosen, 0)
}

fn has_name(desc: &Descriptor, reference: &str) -> bool {
    desc.annotations.as_ref().is_some_and(|a| {
        NAME_ANNOTATIONS
            .iter()
            .any(|n| a.get(*n).is_some_and(|v| v == reference))
    })
}

/// From an index entry to a manifest, through nested indexes.
fn follow(layout: &Layout, desc: &Descriptor, depth: usize) -> Result<Resolved, StorageError> {
    let data = layout.read_blob(desc, "manifest")?;
    let json_err = |source| StorageError::Json {
        what: format!("manifest {}", desc.digest),
        source,
    };
    let sniff: Sniff = serde_json::from_slice(&data).map_err(json_err)?;
    let media_type = desc.media_type.clone().or(sniff.media_type);
    let is_index = match media_type.as_deref() {
        Some(t) if INDEX_TYPES.contains(&t) => true,
        Some(t) if MANIFEST_TYPES.contains(&t) => false,
        Some(t) => {
            return Err(StorageError::Unsupported(format!(
                "the manifest {} has the media type {t}",
                desc.digest
            )))
        }
        None => sniff.manifests.is_some(),
    };
    if !is_index {
        let manifest = serde_json::from_slice(&data).map_err(json_err)?;
        return Ok(Resolved {
            digest: desc.digest.clone(),
            manifest,
        });
    }
    if depth >= MAX_NESTING {
        return Err(StorageError::Unsupported(format!(
            "image indexes nested deeper than {MAX_NESTING}"
        )));
    }
    let index: Index = serde_json::from_slice(&data).map_err(json_err)?;
    let entries: Vec<&Descriptor> = index.manifests.iter().collect();
    let (os, arch) = host_platform();
    let chosen = match entries.as_slice() {
        // A lone entry without a platform is taken as it is.
        [only] if only.platform.is_none() => *only,
        _ => for_host(&entries).ok_or_else(|| StorageError::NoPlatform {
            digest: desc.digest.clone(),
            platform: format!("{os}/{arch}"),
        })?,
    };
    follow(layout, chosen, depth + 1)
}

/// Refuses layers that cannot be unpacked, before anything is.
pub(crate) fn check_layer_type(desc: &Descriptor) -> Result<(), StorageError> {
    match desc.media_type.as_deref() {
        None => Ok(()),
        Some(t) if LAYER_TYPES.contains(&t) => Ok(()),
        Some(t) if t.ends_with("zstd") => Err(StorageError::Unsupported(format!(
            "the layer {} is zstd-compressed ({t}); only tar and tar+gzip layers are supported",
            desc.digest
        ))),
        Some(t) => Err(StorageError::Unsupported(format!(
            "the layer {} has the media type {t}",
            desc.digest
        ))),
    }
}

/// How a layer's bytes are compressed, from their first bytes (more reliable than media
/// types, which some tools get wrong).
pub(crate) enum Compression {
    None,
    Gzip,
}

pub(crate) fn sniff_compression(head: &[u8], digest: &str) -> Result<Compression, StorageError> {
    if head.starts_with(&GZIP_MAGIC) {
        Ok(Compression::Gzip)
    } else if head.starts_with(&ZSTD_MAGIC) {
        Err(StorageError::Unsupported(format!(
            "the layer {digest} is zstd-compressed; only tar and tar+gzip layers are supported"
        )))
    } else {
        Ok(Compression::None)
    }
}

/// The image's process defaults, from its (verified) config blob.
pub(crate) fn read_defaults(
    layout: &Layout,
    config: &Descriptor,
) -> Result<ImageDefaults, StorageError> {
    let data = layout.read_blob(config, "config")?;
    let blob: ConfigBlob = serde_json::from_slice(&data).map_err(|source| StorageError::Json {
        what: format!("image config {}", config.digest),
        source,
    })?;
    let Some(c) = blob.config else {
        return Ok(ImageDefaults::default());
    };
    let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
    Ok(ImageDefaults {
        env: c.env.unwrap_or_default(),
        entrypoint: c.entrypoint.unwrap_or_default(),
        cmd: c.cmd.unwrap_or_default(),
        working_dir: non_empty(c.working_dir),
        user: non_empty(c.user),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_name_blobs_inside_the_layout() {
        let hex = "a".repeat(64);
        assert_eq!(
            blob_name(&format!("sha256:{hex}")).unwrap(),
            format!("blobs/sha256/{hex}")
        );
        for bad in [
            "sha256:../../../etc/passwd".to_string(),
            format!("sha512:{hex}"),
            format!("sha256:{}", "A".repeat(64)),
            "sha256:abc".to_string(),
        ] {
            assert!(
                matches!(blob_name(&bad), Err(StorageError::BadDigest(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn layout_names() {
        assert_eq!(
            layout_name(Path::new("./index.json")).unwrap(),
            "index.json"
        );
        assert_eq!(
            layout_name(Path::new("blobs/sha256/ab")).unwrap(),
            "blobs/sha256/ab"
        );
        assert!(layout_name(Path::new("../index.json")).is_none());
    }

    #[test]
    fn verification_catches_size_and_content() {
        let data = b"hello".to_vec();
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
        let mut files = HashMap::new();
        files.insert(blob_name(&digest).unwrap(), data);
        let layout = Layout::Memory {
            source: "mem".into(),
            files,
        };
        let desc = |digest: &str, size| Descriptor {
            media_type: None,
            digest: digest.into(),
            size,
            annotations: None,
            platform: None,
        };
        assert_eq!(layout.read_blob(&desc(&digest, 5), "x").unwrap(), b"hello");
        assert!(matches!(
            layout.read_blob(&desc(&digest, 4), "x"),
            Err(StorageError::SizeMismatch { actual: 5, .. })
        ));
        assert!(matches!(
            layout.read_blob(&desc(&digest, 6), "x"),
            Err(StorageError::SizeMismatch { actual: 5, .. })
        ));
        let other = format!("sha256:{}", "0".repeat(64));
        assert!(matches!(
            layout.read_blob(&desc(&other, 5), "x"),
            Err(StorageError::MissingBlob { .. })
        ));
    }
}
