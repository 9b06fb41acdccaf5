//! The boot GDT and the segment descriptors KVM's `kvm_segment` needs for the same entries.

use kvm_bindings::kvm_segment;

/// Builds a raw GDT descriptor from flags (the 4 bits above the limit plus the access
/// byte, as `0xFAA`-style `flags`), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// Index of each entry; the selector is index * 8.
pub const CODE_INDEX: u16 = 1;
pub const DATA_INDEX: u16 = 2;
pub const TSS_INDEX: u16 = 3;

/// The four boot GDT entries for a mode: null, code, data, TSS. 64-bit code has L set and
/// D clear; 32-bit (PVH) code has D set.
pub fn boot_gdt(long_mode: bool) -> [u64; 4] {
    let code = if long_mode { 0xa09b } else { 0xc09b };
    [
        gdt_entry(0, 0, 0),
        gdt_entry(code, 0, 0xfffff),
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x808b, 0, 0xfffff),
    ]
}

/// The `kvm_segment` equivalent of GDT entry `index`, as the CPU would have it cached
/// after loading the selector.
pub fn kvm_segment_from_gdt(entry: u64, index: u16) -> kvm_segment {
    let access = (entry >> 40) as u8;
    let flags = (entry >> 52) as u8;
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let granular = flags & 0x8 != 0;
    kvm_segment {
        base,
        // With G set the limit counts 4 KiB pages: the cached limit covers the last page.
        limit: if granular {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: index * 8,
        type_: access & 0xf,
        present: (access >> 7) & 1,
        dpl: (access >> 5) & 3,
        db: (flags >> 2) & 1,
        s: (access >> 4) & 1,
        l: (flags >> 1) & 1,
        g: granular as u8,
        avl: flags & 1,
        unusable: if access & 0x80 == 0 { 1 } else { 0 },
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_code_segment_decodes() {
        let gdt = boot_gdt(true);
        let cs = kvm_segment_from_gdt(gdt[1], CODE_INDEX);
        assert_eq!(gdt[1], 0x00af_9b00_0000_ffff);
        assert_eq!((cs.base, cs.limit, cs.selector), (0, 0xffff_ffff, 8));
        assert_eq!(
            (cs.type_, cs.present, cs.s, cs.l, cs.db, cs.g),
            (0xb, 1, 1, 1, 0, 1)
        );
        let cs32 = kvm_segment_from_gdt(boot_gdt(false)[1], CODE_INDEX);
        assert_eq!((cs32.l, cs32.db), (0, 1));
        let tss = kvm_segment_from_gdt(gdt[3], TSS_INDEX);
        assert_eq!((tss.type_, tss.s, tss.selector), (0xb, 0, 0x18));
    }
}
