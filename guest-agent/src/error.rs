//! The agent's errors. Each is printed as one `husk-agent: error: ...` line; none is fatal
//! for PID 1.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create mount point {path}: {source}")]
    MountPoint {
        path: &'static str,
        source: io::Error,
    },
    #[error("cannot mount {fstype} on {target}: {source}")]
    Mount {
        fstype: &'static str,
        target: &'static str,
        source: io::Error,
    },
    #[error("cannot move the root off the initramfs: {step}: {source}")]
    LeaveInitramfs {
        step: &'static str,
        source: io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: &'static str,
        source: io::Error,
    },
    #[error("{path}: {what}")]
    Parse {
        path: &'static str,
        what: &'static str,
    },
    #[error("cannot signal readiness on I/O port {port:#x}: ioperm: {source}")]
    Ioperm { port: u16, source: io::Error },
    #[cfg(not(target_arch = "x86_64"))]
    #[error("cannot signal readiness: port I/O is not supported on this architecture")]
    NoPortIo,
}
