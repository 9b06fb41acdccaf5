//! The `husk` binary under test: the one next to the running test (same target directory
//! and profile). `cargo test --workspace` builds it, because husk-runtime has integration
//! tests of its own. Set `HUSK_BIN` to test another binary instead.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use crate::process::{run_with_timeout, Run, DEFAULT_TIMEOUT};
use crate::{build_dirs, Error};

/// Environment variables of husk that a test must not inherit by accident.
const HUSK_ENV: &[&str] = &["HUSK_KVM_DEVICE", "HUSK_LOG"];

fn find_husk() -> Result<PathBuf, Error> {
    if let Some(bin) = std::env::var_os("HUSK_BIN") {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            return Err(Error(format!("HUSK_BIN={} is not a file", bin.display())));
        }
        return Ok(bin);
    }
    let bin = build_dirs()?.profile.join("husk");
    if !bin.is_file() {
        return Err(Error(format!(
            "the husk binary {} does not exist: run the tests with `cargo test --workspace` \
             (which builds it), build it with `cargo build -p husk-runtime`, or set HUSK_BIN",
            bin.display()
        )));
    }
    Ok(bin)
}

/// The `husk` binary to test.
pub fn husk_binary() -> Result<PathBuf, Error> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| find_husk().map_err(|e| e.0))
        .clone()
        .map_err(Error)
}

/// A `husk` command with husk's own environment variables cleared.
pub fn husk_command() -> Result<Command, Error> {
    let mut cmd = Command::new(husk_binary()?);
    for var in HUSK_ENV {
        cmd.env_remove(var);
    }
    Ok(cmd)
}

/// Runs `husk vmm ARGS` with the default timeout.
pub fn husk_vmm<I, S>(args: I) -> Result<Run, Error>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = husk_command()?;
    cmd.arg("vmm").args(args);
    run_with_timeout(&mut cmd, DEFAULT_TIMEOUT)
}
