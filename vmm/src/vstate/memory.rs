//! Guest RAM: anonymous host memory mapped into the VM.

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::x86_64::layout::ram_regions;

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum MemoryError {
    /// Cannot allocate {0} MiB of guest memory: {1}
    Allocate(u64, vm_memory::mmap::FromRangesError),
    /// Cannot keep guest memory out of core dumps: {0}
    DontDump(std::io::Error),
}

/// Allocates `size_mib` MiB of guest RAM laid out as `layout::ram_regions` says. Pages
/// are reserved lazily (the mapping is `MAP_NORESERVE`): the host pays only for what the
/// guest touches. The guest's memory is its own: should husk dump core, none of it goes
/// into the dump (`MADV_DONTDUMP`).
pub fn create_guest_memory(size_mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let regions: Vec<(GuestAddress, usize)> = ram_regions(size_mib << 20)
        .into_iter()
        .map(|(start, size)| (GuestAddress(start), size as usize))
        .collect();
    let memory =
        GuestMemoryMmap::from_ranges(&regions).map_err(|e| MemoryError::Allocate(size_mib, e))?;
    for region in memory.iter() {
        // SAFETY: the range is exactly one mapping that `memory` owns and keeps mapped;
        // MADV_DONTDUMP changes only whether a core dump includes it, not its contents.
        let rc = unsafe {
            libc::madvise(
                region.as_ptr().cast(),
                region.len() as usize,
                libc::MADV_DONTDUMP,
            )
        };
        if rc != 0 {
            return Err(MemoryError::DontDump(std::io::Error::last_os_error()));
        }
    }
    Ok(memory)
}
