//! Shared support for husk integration tests and benchmarks.
//!
//! - [`guests`]: the freestanding test guests of `tests/guests/` (DESIGN.md, layer 1),
//!   built with gcc on first use and cached by content hash under
//!   `target/husk-test-guests/<hash>/`.
//! - [`husk`]: finds (and, under cargo, builds) the `husk` binary of the same profile and
//!   runs `husk vmm` with a timeout.
//! - [`process`]: runs any command with a timeout, capturing its output.
//! - [`containerd`]: a private containerd for the end-to-end tests, driven with `ctr`.

pub mod containerd;
pub mod cri;
pub mod elf;
pub mod guests;
pub mod husk;
pub mod netns;
pub mod process;
pub mod rootfs;

use std::fmt;
use std::path::{Path, PathBuf};

/// An error of the test support: its `Debug` form is the plain message, so that
/// `.expect()` in a test prints it readably.
pub struct Error(pub String);

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Error(message)
    }
}

/// Where the running executable was built: `<target>/<profile>/deps/<test>` for a test,
/// `<target>/<profile>/<bin>` for a binary.
#[derive(Clone, Debug)]
pub struct BuildDirs {
    /// `<target>`: cargo's target directory.
    pub target: PathBuf,
    /// `<target>/<profile>`: where cargo puts the binaries of this profile.
    pub profile: PathBuf,
}

/// Finds the target and profile directories from the running executable's path.
pub fn build_dirs() -> Result<BuildDirs, Error> {
    let exe = std::env::current_exe()
        .map_err(|e| Error(format!("cannot find the running executable: {e}")))?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| Error(format!("{} has no parent directory", exe.display())))?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir
            .parent()
            .ok_or_else(|| Error(format!("{} has no parent directory", dir.display())))?;
    }
    let target = dir
        .parent()
        .ok_or_else(|| Error(format!("{} has no parent directory", dir.display())))?;
    Ok(BuildDirs {
        target: target.to_path_buf(),
        profile: dir.to_path_buf(),
    })
}

/// A fresh, empty scratch directory for one test, under the target directory (a real
/// file system, cleaned by `cargo clean`); removed again when dropped.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join<P: AsRef<Path>>(&self, rel: P) -> PathBuf {
        self.0.join(rel)
    }
}

impl std::ops::Deref for ScratchDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        // Best effort: a leftover scratch directory is harmless.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Creates a [`ScratchDir`] named after `name`, unique to this process and call.
pub fn scratch_dir(name: &str) -> Result<ScratchDir, Error> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dirs = build_dirs()?;
    let dir = dirs.target.join("husk-test-scratch").join(format!(
        "{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .map_err(|e| Error(format!("cannot empty {}: {e}", dir.display())))?;
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error(format!("cannot create {}: {e}", dir.display())))?;
    Ok(ScratchDir(dir))
}

/// A path as the `&str` a command line wants; test paths are UTF-8.
pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}
