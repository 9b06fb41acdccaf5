//! Guest RAM: anonymous host memory mapped into the VM.

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::layout::ram_regions;

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum MemoryError {
    /// Cannot allocate {0} MiB of guest memory: {1}
    Allocate(u64, vm_memory::mmap::FromRangesError),
}

/// Allocates `size_mib` MiB of guest RAM laid out as `layout::ram_regions` says. Pages
/// are reserved lazily (the mapping is `MAP_NORESERVE`): the host pays only for what the
/// guest touches.
pub fn create_guest_memory(size_mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let regions: Vec<(GuestAddress, usize)> = ram_regions(size_mib << 20)
        .into_iter()
        .map(|(start, size)| (GuestAddress(start), size as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&regions).map_err(|e| MemoryError::Allocate(size_mib, e))
}
