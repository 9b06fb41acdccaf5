//! Per-thread seccomp filters for the husk process (vCPU threads, the VMM event loop,
//! runtime threads). The filters themselves arrive with the defence-in-depth work; this
//! crate exists now so that the workspace has its final shape and the dependency is
//! pinned with the rest of the rust-vmm set.

pub use seccompiler;
