//! husk-runtime: the husk command line and, as the runtime grows, sandbox lifecycle,
//! hypervisor backends, storage, networking and the containerd shim.

pub mod agent;
pub mod cli;
pub mod guest;
pub mod hypervisor;
mod logger;
