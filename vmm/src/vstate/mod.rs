//! KVM state: the VM with its memory and interrupt controllers, and the vCPUs.

pub mod memory;
pub mod vcpu;
pub mod vm;
