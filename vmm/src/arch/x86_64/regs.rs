//! Initial registers of the boot vCPU for each boot protocol.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::gdt::{boot_gdt, kvm_segment_from_gdt, CODE_INDEX, DATA_INDEX, TSS_INDEX};
use super::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
    PVH_INFO_START, ZERO_PAGE_START,
};

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// How the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// PVH: 32-bit protected mode, paging off, EBX = `hvm_start_info`.
    Pvh,
    /// Linux 64-bit boot protocol: long mode, identity-mapped low memory,
    /// RSI = `boot_params`.
    Linux64,
}

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum RegsError {
    /// Cannot write the boot GDT or page tables into guest memory: {0}
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    /// Cannot set the vCPU's {0} registers: {1}
    Set(&'static str, kvm_ioctls::Error),
    /// Cannot read the vCPU's special registers: {0}
    GetSregs(kvm_ioctls::Error),
}

/// Sets the boot vCPU's general, special and FPU registers to enter at `entry`, writing
/// the boot GDT (and, for long mode, the page tables) into guest memory.
pub fn setup_boot_vcpu(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    mode: EntryMode,
    entry: u64,
) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(|e| RegsError::Set("FPU", e))?;

    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        ..Default::default()
    };
    match mode {
        EntryMode::Pvh => regs.rbx = PVH_INFO_START,
        EntryMode::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
    }
    vcpu.set_regs(&regs)
        .map_err(|e| RegsError::Set("general", e))?;

    let mut sregs = vcpu.get_sregs().map_err(RegsError::GetSregs)?;
    setup_segments(mem, &mut sregs, mode)?;
    match mode {
        EntryMode::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
        }
        EntryMode::Linux64 => {
            write_identity_page_tables(mem)?;
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
    }
    vcpu.set_sregs(&sregs)
        .map_err(|e| RegsError::Set("special", e))
}

fn setup_segments(
    mem: &GuestMemoryMmap,
    sregs: &mut kvm_sregs,
    mode: EntryMode,
) -> Result<(), RegsError> {
    let gdt = boot_gdt(mode == EntryMode::Linux64);
    for (i, entry) in gdt.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + (i as u64) * 8))?;
    }
    // An empty IDT: the guest installs its own before enabling interrupts.
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))?;

    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;

    let code = kvm_segment_from_gdt(gdt[CODE_INDEX as usize], CODE_INDEX);
    let data = kvm_segment_from_gdt(gdt[DATA_INDEX as usize], DATA_INDEX);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment_from_gdt(gdt[TSS_INDEX as usize], TSS_INDEX);
    Ok(())
}

/// Identity-maps the first GiB with 2 MiB pages: enough for the kernel's own early page
/// table setup, which is all the 64-bit boot protocol requires.
fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    const PRESENT_WRITABLE: u64 = 0x3;
    const HUGE_PAGE: u64 = 0x80;
    mem.write_obj(PDPTE_START | PRESENT_WRITABLE, GuestAddress(PML4_START))?;
    mem.write_obj(PDE_START | PRESENT_WRITABLE, GuestAddress(PDPTE_START))?;
    for i in 0..512u64 {
        mem.write_obj(
            (i << 21) | PRESENT_WRITABLE | HUGE_PAGE,
            GuestAddress(PDE_START + i * 8),
        )?;
    }
    Ok(())
}
