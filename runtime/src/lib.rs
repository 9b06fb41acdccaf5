//! husk-runtime: sandboxes and their containers, the hypervisor backends, root file
//! systems, and the `husk` command line.

pub mod agent;
pub mod cli;
pub mod config;
pub mod container;
pub mod guest;
pub mod hypervisor;
mod logger;
pub mod network;
pub mod sandbox;
pub mod shim;
pub mod spec;
pub mod state;
pub mod stdio;
pub mod storage;
