/*
 * PVH boot report: the RAM in hvm_start_info's memory map, the CPUs in the MP table,
 * the initrd (first module) and the command line.
 */
#include "guest.h"

#define HVM_START_MAGIC 0x336ec578
#define E820_RAM 1

void guest_main(u32 start_info)
{
	struct boot_report report = { 0 };
	if (phys_read32(start_info) != HVM_START_MAGIC) {
		report.error = "hvm_start_info magic is wrong";
	} else {
		/* struct hvm_start_info (version >= 1): magic, version, flags, nr_modules, ... */
		u32 nr_modules = phys_read32(start_info + 12);
		u64 modlist = phys_read64(start_info + 16);
		report.cmdline_addr = (uptr)phys_read64(start_info + 24);
		u64 memmap = phys_read64(start_info + 40);
		u32 entries = phys_read32(start_info + 48);
		if (phys_read32(start_info + 4) < 1 || memmap == 0 || entries == 0)
			report.error = "hvm_start_info has no memory map";
		for (u32 i = 0; i < entries; i++) {
			/* struct hvm_memmap_table_entry: addr, size, type, reserved */
			uptr e = (uptr)memmap + i * 24;
			if (phys_read32(e + 16) == E820_RAM)
				report.ram_bytes += phys_read64(e + 8);
		}
		if (nr_modules > 0 && modlist != 0) {
			/* struct hvm_modlist_entry: paddr, size, cmdline_paddr, reserved */
			report.initrd_addr = phys_read64((uptr)modlist);
			report.initrd_bytes = phys_read64((uptr)modlist + 8);
		}
	}
	print_boot_report("bootinfo", &report);
	guest_exit(0);
}
