//! The Intel MultiProcessor Specification (1.4) table. Without ACPI it is how a guest
//! finds its CPUs, its IOAPIC and how ISA interrupts are wired; husk writes it into the
//! EBDA, where guests look for it.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{EBDA_START, IOAPIC_ADDR, LAPIC_ADDR};

/// APIC ids are 8 bits and the IOAPIC takes the id after the last CPU.
pub const MAX_CPUS: u8 = 254;
/// Legacy ISA interrupts routed one to one to IOAPIC pins 0..=23, as KVM's default routing.
const IOAPIC_PINS: u8 = 24;

const MPC_SPEC_REV: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
/// Family 6, for the CPU signature field; guests take the real one from CPUID.
const CPU_SIGNATURE: u32 = 0x600;
/// CPUID.1 EDX: FPU and APIC present.
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const ISA_BUS_ID: u8 = 0;

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum MptableError {
    /// The MP table supports 1 to 254 vCPUs, not {0}
    TooManyCpus(u8),
    /// The MP table does not fit in guest memory: {0}
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

/// Bytes whose sum, with the checksum byte, is zero.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

/// The table for `num_cpus` CPUs (APIC ids 0..num_cpus, 0 the boot processor), laid out
/// at `base`: the floating pointer, then the configuration table header and its entries.
pub fn build(num_cpus: u8, base: u64) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(MptableError::TooManyCpus(num_cpus));
    }
    let ioapic_id = num_cpus;

    let mut entries = Vec::new();
    let mut entry_count: u16 = 0;
    for id in 0..num_cpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, id, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        entry_count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    entry_count += 2;
    for irq in 0..IOAPIC_PINS {
        // Polarity and trigger "conform to the bus": edge, active high for ISA.
        entries.extend_from_slice(&[ENTRY_IO_INTERRUPT, INT_TYPE_INT, 0, 0]);
        entries.extend_from_slice(&[ISA_BUS_ID, irq, ioapic_id, irq]);
        entry_count += 1;
    }
    // LINT0 of every local APIC takes the PIC (ExtINT); LINT1 of all (0xff) takes NMIs.
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0]);
    entries.extend_from_slice(&[ISA_BUS_ID, 0, 0, 0]);
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0]);
    entries.extend_from_slice(&[ISA_BUS_ID, 0, 0xff, 1]);
    entry_count += 2;

    const FLOATING_LEN: usize = 16;
    const HEADER_LEN: usize = 44;
    let table_len = HEADER_LEN + entries.len();
    let table_addr = base + FLOATING_LEN as u64;

    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&(table_len as u16).to_le_bytes());
    table.push(MPC_SPEC_REV);
    table.push(0); // checksum, below
    table.extend_from_slice(b"HUSK    "); // OEM id
    table.extend_from_slice(b"MICROVM     "); // product id
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&entry_count.to_le_bytes());
    table.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    table.extend_from_slice(&[0, 0, 0, 0]); // extended table length, checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut floating = Vec::with_capacity(FLOATING_LEN);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&(table_addr as u32).to_le_bytes());
    floating.push(1); // length in 16-byte units
    floating.push(MPC_SPEC_REV);
    floating.push(0); // checksum, below
    floating.extend_from_slice(&[0; 5]); // feature bytes: 0 = a configuration table follows
    floating[10] = checksum(&floating);

    floating.extend_from_slice(&table);
    Ok(floating)
}

/// Writes the table for `num_cpus` CPUs at the start of the EBDA.
pub fn write(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), MptableError> {
    let bytes = build(num_cpus, EBDA_START)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    #[test]
    fn checksums_and_counts_are_valid() {
        for cpus in [1u8, 2, 64, MAX_CPUS] {
            let bytes = build(cpus, EBDA_START).unwrap();
            assert_eq!(&bytes[..4], b"_MP_");
            assert_eq!(sum(&bytes[..16]), 0);
            let table_addr = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as u64;
            assert_eq!(table_addr, EBDA_START + 16);
            let table = &bytes[16..];
            assert_eq!(&table[..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0);
            let count = u16::from_le_bytes([table[34], table[35]]);
            assert_eq!(count as usize, cpus as usize + 2 + 24 + 2);
            // Walk the entries: processors are 20 bytes, the rest 8.
            let mut off = 44;
            let mut processors = 0;
            while off < len {
                if table[off] == ENTRY_PROCESSOR {
                    processors += 1;
                    off += 20;
                } else {
                    off += 8;
                }
            }
            assert_eq!(off, len);
            assert_eq!(processors, cpus);
        }
    }

    #[test]
    fn rejects_zero_and_too_many() {
        assert!(build(0, EBDA_START).is_err());
        assert!(build(255, EBDA_START).is_err());
    }

    #[test]
    fn stays_out_of_guest_ram() {
        // Past ~40 CPUs the table outgrows the 1 KiB EBDA and runs into the legacy
        // 640 KiB - 1 MiB hole, which the memory map also keeps out of RAM; it must end
        // before the kernel's first MiB.
        let bytes = build(MAX_CPUS, EBDA_START).unwrap();
        assert!(EBDA_START + bytes.len() as u64 <= 0x10_0000);
    }
}
