//! husk's configuration file: TOML, at `$HUSK_CONFIG` or `/etc/husk/config.toml`.
//!
//! Every key is optional; command-line flags override the file, and the file overrides
//! the built-in defaults. An unknown key is an error that names it, so a typo never
//! silently falls back to a default.
//!
//! ```toml
//! hypervisor = "host"          # or "builtin"
//! kernel = "/var/cache/husk/guest/vmlinux"
//! initrd = "/var/cache/husk/guest/initramfs.cpio"
//! memory_mib = 256
//! vcpus = 1
//! root = "/run/husk"           # state of sandboxes and containers
//! cache = "/var/cache/husk"    # images and root file systems, by content
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::hypervisor::Kind;

/// Where the file is when `$HUSK_CONFIG` does not say.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/husk/config.toml";

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum ConfigError {
    /// cannot read the configuration {path}: {source}
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// configuration {path}: {message}
    Invalid { path: PathBuf, message: String },
}

/// The file's settings, each `None` when the file does not set it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub hypervisor: Option<Kind>,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub memory_mib: Option<u64>,
    pub vcpus: Option<u8>,
    /// The state root (runc's `--root`).
    pub root: Option<PathBuf>,
    /// The content cache for images and root file systems.
    pub cache: Option<PathBuf>,
}

impl Config {
    /// Reads `$HUSK_CONFIG` (which must exist when set), else `/etc/husk/config.toml` if
    /// it exists, else no settings at all.
    pub fn load() -> Result<Config, ConfigError> {
        match std::env::var_os("HUSK_CONFIG") {
            Some(path) => Config::read(Path::new(&path)),
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                Config::read(Path::new(DEFAULT_CONFIG_PATH))
            }
            None => Ok(Config::default()),
        }
    }

    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })
    }

    /// This configuration with every key that `over` sets taken from `over`.
    pub fn overridden_by(self, over: Config) -> Config {
        Config {
            hypervisor: over.hypervisor.or(self.hypervisor),
            kernel: over.kernel.or(self.kernel),
            initrd: over.initrd.or(self.initrd),
            memory_mib: over.memory_mib.or(self.memory_mib),
            vcpus: over.vcpus.or(self.vcpus),
            root: over.root.or(self.root),
            cache: over.cache.or(self.cache),
        }
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| {
            // toml's message is several lines with a caret drawing; the first line says
            // where and the last what.
            let message = e.message().trim().to_owned();
            match e.span() {
                Some(span) => {
                    let before = &text.as_bytes()[..span.start.min(text.len())];
                    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
                    format!("line {line}: {message}")
                }
                None => message,
            }
        })?;
        if config.memory_mib == Some(0) {
            return Err("memory_mib must be at least 1".into());
        }
        if config.vcpus == Some(0) {
            return Err("vcpus must be at least 1".into());
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_parses() {
        let config = Config::parse(
            "hypervisor = \"host\"\nkernel = \"/k\"\ninitrd = \"/i\"\nmemory_mib = 512\n\
             vcpus = 2\nroot = \"/r\"\ncache = \"/c\"\n",
        )
        .unwrap();
        assert_eq!(
            config,
            Config {
                hypervisor: Some(Kind::Host),
                kernel: Some("/k".into()),
                initrd: Some("/i".into()),
                memory_mib: Some(512),
                vcpus: Some(2),
                root: Some("/r".into()),
                cache: Some("/c".into()),
            }
        );
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let err = Config::parse("hypervisor = \"host\"\nmemroy_mib = 5\n").unwrap_err();
        assert!(
            err.contains("memroy_mib") && err.contains("line 2"),
            "{err}"
        );
        let err = Config::parse("hypervisor = \"qemu\"\n").unwrap_err();
        assert!(err.contains("qemu"), "{err}");
        let err = Config::parse("vcpus = 0\n").unwrap_err();
        assert!(err.contains("vcpus"), "{err}");
        let err = Config::parse("vcpus = \"two\"\n").unwrap_err();
        assert!(err.contains("line 1"), "{err}");
    }
}
