//! husk's emulated devices.
//!
//! `legacy` holds the few PC devices a microVM still needs (the COM1 console, the i8042
//! reset line and husk's boot-timer port); `bus` routes port and MMIO accesses from vCPU
//! exits to them; `virtio` holds the virtio-mmio transport and the virtio devices.
//!
//! Nothing in this crate knows about KVM: devices see only offsets and bytes, and raise
//! interrupts or events through `EventFd`s that the VMM wires to KVM.

pub mod bus;
pub mod legacy;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
