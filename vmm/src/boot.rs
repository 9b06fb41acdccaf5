//! Loading the guest: kernel, initrd and command line into guest memory, and the boot
//! information each protocol expects (PVH `hvm_start_info` or Linux `boot_params`).

use std::fs::File;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, KernelLoader};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use crate::arch::x86_64::layout::{
    memory_map, CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, MMIO_HOLE_START, PVH_INFO_START,
    PVH_MEMMAP_START, PVH_MODLIST_START, ZERO_PAGE_START,
};
use crate::arch::x86_64::regs::EntryMode;

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum BootError {
    /// Cannot read kernel {0}: {1}
    KernelOpen(PathBuf, std::io::Error),
    /// Kernel {0} is not a regular file
    KernelNotFile(PathBuf),
    /// Kernel {0} is not a kernel image: neither an ELF vmlinux nor a bzImage
    KernelFormat(PathBuf),
    /// Kernel {0} is not a 64-bit x86_64 ELF executable ({1})
    KernelElfKind(PathBuf, String),
    /// Kernel {0} is truncated: a segment ends at byte {1} of a {2}-byte file
    KernelTruncated(PathBuf, u64, u64),
    /// Kernel {0} does not fit in guest memory: it needs {1:#x}..{2:#x}, but kernels must load between 1 MiB and the end of guest RAM at {3:#x}
    KernelTooBig(PathBuf, u64, u64, u64),
    /// Cannot load kernel {0}: {1}
    KernelLoad(PathBuf, linux_loader::loader::Error),
    /// Cannot read initrd {0}: {1}
    InitrdOpen(PathBuf, std::io::Error),
    /// Initrd {0} is not a regular file
    InitrdNotFile(PathBuf),
    /// Initrd {0} ({1} bytes) does not fit in guest memory between the kernel end {2:#x} and {3:#x}
    InitrdTooBig(PathBuf, u64, u64, u64),
    /// Cannot copy initrd {0} into guest memory: {1}
    InitrdLoad(PathBuf, vm_memory::GuestMemoryError),
    /// Kernel command line is invalid or longer than 2048 bytes: {0}
    Cmdline(linux_loader::cmdline::Error),
    /// Cannot write the kernel command line into guest memory: {0}
    CmdlineLoad(linux_loader::loader::Error),
    /// Cannot write the boot information into guest memory: {0}
    BootInfo(linux_loader::configurator::Error),
}

/// Where and how the boot vCPU enters the loaded kernel.
#[derive(Clone, Copy, Debug)]
pub struct KernelEntry {
    pub mode: EntryMode,
    pub addr: u64,
}

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
/// bzImage: "HdrS" at offset 0x202 of the real-mode setup.
const BZIMAGE_MAGIC_OFFSET: usize = 0x202;
const BZIMAGE_MAGIC: &[u8; 4] = b"HdrS";
/// In a bzImage, the 64-bit entry point is 0x200 bytes into the protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// `boot_params.hdr.type_of_loader`: "undefined" boot loader.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const PAGE_SIZE: u64 = 4096;

/// Checks that `path` is a regular file before opening it: opening a FIFO would block.
fn open_image(
    path: &Path,
    open_err: fn(PathBuf, std::io::Error) -> BootError,
    not_file: fn(PathBuf) -> BootError,
) -> Result<(File, u64), BootError> {
    let meta = std::fs::metadata(path).map_err(|e| open_err(path.to_path_buf(), e))?;
    if !meta.is_file() {
        return Err(not_file(path.to_path_buf()));
    }
    let file = File::open(path).map_err(|e| open_err(path.to_path_buf(), e))?;
    Ok((file, meta.len()))
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

/// Checks an ELF kernel's header and program headers before linux-loader copies it, so
/// that a wrong or damaged file gets an error that says what is wrong with it.
fn check_elf(path: &Path, file: &mut File, file_len: u64, mem_end: u64) -> Result<(), BootError> {
    let kind = |what: &str| BootError::KernelElfKind(path.to_path_buf(), what.to_string());
    let truncated = |end: u64| BootError::KernelTruncated(path.to_path_buf(), end, file_len);
    let mut ehdr = [0u8; 64];
    file.rewind()
        .and_then(|_| file.read_exact(&mut ehdr))
        .map_err(|_| truncated(64))?;
    if ehdr[4] != ELFCLASS64 {
        return Err(kind("32-bit ELF"));
    }
    if ehdr[5] != ELFDATA2LSB {
        return Err(kind("big-endian ELF"));
    }
    let machine = u16_at(&ehdr, 18);
    if machine != EM_X86_64 {
        return Err(kind(&format!("machine type {machine}")));
    }
    let phoff = u64_at(&ehdr, 32);
    let phentsize = u64::from(u16_at(&ehdr, 54));
    let phnum = u64::from(u16_at(&ehdr, 56));
    if phentsize != 56 || phnum == 0 {
        return Err(kind("no valid program headers"));
    }
    let ph_end = phoff
        .checked_add(phentsize * phnum)
        .ok_or_else(|| kind("program header offset overflows"))?;
    if ph_end > file_len {
        return Err(truncated(ph_end));
    }
    let mut phdrs = vec![0u8; (phentsize * phnum) as usize];
    file.seek(std::io::SeekFrom::Start(phoff))
        .and_then(|_| file.read_exact(&mut phdrs))
        .map_err(|_| truncated(ph_end))?;
    let mut loads = 0;
    for ph in phdrs.chunks_exact(56) {
        if u32_at(ph, 0) != PT_LOAD {
            continue;
        }
        loads += 1;
        let (offset, paddr, filesz, memsz) = (
            u64_at(ph, 8),
            u64_at(ph, 24),
            u64_at(ph, 32),
            u64_at(ph, 40),
        );
        let file_end = offset
            .checked_add(filesz)
            .ok_or_else(|| kind("segment offset overflows"))?;
        if file_end > file_len {
            return Err(truncated(file_end));
        }
        let mem_end_needed = paddr
            .checked_add(memsz.max(filesz))
            .ok_or_else(|| kind("segment address overflows"))?;
        if paddr < HIMEM_START || mem_end_needed > mem_end {
            return Err(BootError::KernelTooBig(
                path.to_path_buf(),
                paddr,
                mem_end_needed,
                mem_end,
            ));
        }
    }
    if loads == 0 {
        return Err(kind("no loadable segment"));
    }
    Ok(())
}

/// End of the RAM region that starts at 0 (where kernels, initrd and boot data go).
fn low_ram_end(mem: &GuestMemoryMmap) -> u64 {
    mem.iter()
        .map(|r| r.start_addr().raw_value() + r.len())
        .filter(|end| *end <= MMIO_HOLE_START)
        .max()
        .unwrap_or(0)
}

/// Loads the kernel at `path` into `mem`; returns where to enter it, the end of its image
/// and, for a bzImage, its setup header.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    path: &Path,
) -> Result<(KernelEntry, u64, Option<setup_header>), BootError> {
    let (mut file, len) = open_image(path, BootError::KernelOpen, BootError::KernelNotFile)?;
    let mut head = [0u8; BZIMAGE_MAGIC_OFFSET + 4];
    let got =
        read_up_to(&mut file, &mut head).map_err(|e| BootError::KernelOpen(path.into(), e))?;
    let head = &head[..got];
    let load_err = |e| BootError::KernelLoad(path.to_path_buf(), e);

    if head.starts_with(ELF_MAGIC) {
        check_elf(path, &mut file, len, low_ram_end(mem))?;
        let result =
            Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(load_err)?;
        let entry = match result.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) => KernelEntry {
                mode: EntryMode::Pvh,
                addr: addr.raw_value(),
            },
            _ => KernelEntry {
                mode: EntryMode::Linux64,
                addr: result.kernel_load.raw_value(),
            },
        };
        Ok((entry, result.kernel_end, None))
    } else if head.get(BZIMAGE_MAGIC_OFFSET..) == Some(&BZIMAGE_MAGIC[..]) {
        let result = BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
            .map_err(load_err)?;
        let entry = KernelEntry {
            mode: EntryMode::Linux64,
            addr: result.kernel_load.raw_value() + BZIMAGE_64BIT_ENTRY_OFFSET,
        };
        Ok((entry, result.kernel_end, result.setup_header))
    } else {
        Err(BootError::KernelFormat(path.to_path_buf()))
    }
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Loads the initrd at the top of low RAM, page aligned, above the kernel. Returns its
/// guest address and size.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
) -> Result<(u64, u64), BootError> {
    let (mut file, size) = open_image(path, BootError::InitrdOpen, BootError::InitrdNotFile)?;
    let top = low_ram_end(mem);
    let addr = top
        .checked_sub(size)
        .map(|a| a & !(PAGE_SIZE - 1))
        .filter(|a| *a >= kernel_end);
    let Some(addr) = addr else {
        return Err(BootError::InitrdTooBig(
            path.to_path_buf(),
            size,
            kernel_end,
            top,
        ));
    };
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| BootError::InitrdLoad(path.to_path_buf(), e))?;
    Ok((addr, size))
}

/// Builds and writes the command line.
pub fn load_command_line(mem: &GuestMemoryMmap, cmdline: &str) -> Result<(), BootError> {
    let mut line = Cmdline::new(CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)?;
    line.insert_str(cmdline).map_err(BootError::Cmdline)?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &line).map_err(BootError::CmdlineLoad)
}

/// Writes the boot information for `entry.mode`: memory map, command line pointer and
/// initrd location.
pub fn write_boot_info(
    mem: &GuestMemoryMmap,
    entry: KernelEntry,
    mem_size: u64,
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
    bzimage_header: Option<setup_header>,
) -> Result<(), BootError> {
    let map = memory_map(mem_size);
    match entry.mode {
        EntryMode::Pvh => {
            let memmap: Vec<hvm_memmap_table_entry> = map
                .iter()
                .map(|&(addr, size, type_)| hvm_memmap_table_entry {
                    addr,
                    size,
                    type_,
                    reserved: 0,
                })
                .collect();
            let mut info = hvm_start_info {
                magic: XEN_HVM_START_MAGIC,
                version: 1,
                cmdline_paddr: CMDLINE_START,
                memmap_paddr: PVH_MEMMAP_START,
                memmap_entries: memmap.len() as u32,
                ..Default::default()
            };
            let modules: Vec<hvm_modlist_entry> = initrd
                .map(|(paddr, size)| hvm_modlist_entry {
                    paddr,
                    size,
                    ..Default::default()
                })
                .into_iter()
                .collect();
            if !modules.is_empty() {
                info.nr_modules = modules.len() as u32;
                info.modlist_paddr = PVH_MODLIST_START;
            }
            let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
            params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
            if !modules.is_empty() {
                params.set_modules(&modules, GuestAddress(PVH_MODLIST_START));
            }
            PvhBootConfigurator::write_bootparams(&params, mem).map_err(BootError::BootInfo)
        }
        EntryMode::Linux64 => {
            let mut params = boot_params::default();
            if let Some(hdr) = bzimage_header {
                params.hdr = hdr;
            }
            params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
            params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
            params.hdr.header = KERNEL_HDR_MAGIC;
            if params.hdr.kernel_alignment == 0 {
                params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
            }
            params.hdr.cmd_line_ptr = CMDLINE_START as u32;
            params.hdr.cmdline_size = cmdline_len as u32;
            if let Some((addr, size)) = initrd {
                params.hdr.ramdisk_image = addr as u32;
                params.hdr.ramdisk_size = size as u32;
            }
            for (i, &(addr, size, type_)) in map.iter().enumerate() {
                params.e820_table[i] = boot_e820_entry {
                    addr,
                    size,
                    r#type: type_,
                };
            }
            params.e820_entries = map.len() as u8;
            let boot = BootParams::new(&params, GuestAddress(ZERO_PAGE_START));
            LinuxBootConfigurator::write_bootparams(&boot, mem).map_err(BootError::BootInfo)
        }
    }
}
