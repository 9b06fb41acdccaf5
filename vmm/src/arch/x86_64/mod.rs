//! x86_64: the guest-physical memory layout and the initial CPU state.

pub mod cpuid;
pub mod gdt;
pub mod lapic;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
