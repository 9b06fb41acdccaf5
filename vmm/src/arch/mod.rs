//! Architecture-specific pieces of VM construction. husk supports x86_64 only.

pub mod x86_64;
