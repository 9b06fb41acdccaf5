//! Guest-physical memory layout. Low memory holds what the VMM writes for the guest before
//! it starts (boot GDT, boot information, page tables, command line, MP table); kernels
//! load at or above 1 MiB; the 3–4 GiB hole holds the APICs and device MMIO windows.

/// The boot GDT (and an empty IDT right after it).
pub const BOOT_GDT_START: u64 = 0x500;
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH: `hvm_start_info`, then its module list (the initrd).
pub const PVH_INFO_START: u64 = 0x6000;
pub const PVH_MODLIST_START: u64 = 0x6040;
/// 64-bit boot protocol: the zero page (`boot_params`). PVH: the memory map.
pub const ZERO_PAGE_START: u64 = 0x7000;
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// Stack for the 64-bit boot protocol entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables for the 64-bit boot protocol.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Kernel command line; 2048 bytes is the x86 kernel's COMMAND_LINE_SIZE.
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// The extended BIOS data area: where the MP table lives and where the guest looks for it.
pub const EBDA_START: u64 = 0x9fc00;
/// Kernels load above the first MiB.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the MMIO hole below 4 GiB; RAM beyond it continues at 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// Virtio-mmio windows, one page each, from here upward (inside the hole).
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// IOAPIC pins for virtio devices: 5..=23 (0-4 are the PIT, keyboard, cascade and COMs,
/// and the IOAPIC has 24 pins, all in the MP table).
pub const VIRTIO_IRQ_FIRST: u32 = 5;
pub const VIRTIO_IRQ_LAST: u32 = 23;
pub const FIRST_ADDR_PAST_32BITS: u64 = 1 << 32;
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// KVM needs three pages for the TSS and one for the identity map on Intel; place them
/// just below the IOAPIC, inside the hole.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// The RAM regions for `mem_size` bytes of guest memory: below the MMIO hole, then above
/// 4 GiB for what does not fit.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_HOLE_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_HOLE_START),
            (FIRST_ADDR_PAST_32BITS, mem_size - MMIO_HOLE_START),
        ]
    }
}

/// E820 types the guest sees.
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// The memory map given to the guest (e820 or the PVH memmap), as (start, size, type):
/// conventional memory up to the EBDA, the EBDA reserved, then RAM from 1 MiB. The VGA
/// and BIOS area (640 KiB – 1 MiB) is left out, as on a PC.
pub fn memory_map(mem_size: u64) -> Vec<(u64, u64, u32)> {
    let mut map = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, 0xa0000 - EBDA_START, E820_RESERVED),
    ];
    for (start, size) in ram_regions(mem_size) {
        let (start, size) = if start == 0 {
            (HIMEM_START, size.saturating_sub(HIMEM_START))
        } else {
            (start, size)
        };
        if size > 0 {
            map.push((start, size, E820_RAM));
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_region_and_map_skips_the_legacy_hole() {
        let mib = 1 << 20;
        assert_eq!(ram_regions(128 * mib), vec![(0, 128 * mib)]);
        let map = memory_map(128 * mib);
        let ram: u64 = map.iter().filter(|e| e.2 == E820_RAM).map(|e| e.1).sum();
        assert_eq!(ram, 128 * mib - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn large_memory_continues_above_4g() {
        let gib = 1u64 << 30;
        assert_eq!(ram_regions(5 * gib), vec![(0, 3 * gib), (4 * gib, 2 * gib)]);
        let map = memory_map(5 * gib);
        assert_eq!(map.last(), Some(&(4 * gib, 2 * gib, E820_RAM)));
    }
}
