/*
 * The same boot report as bootinfo, through the Linux 64-bit boot protocol: e820 table,
 * ramdisk and command line from boot_params (the zero page).
 */
#include "guest.h"

#define E820_RAM 1
#define BP_EXT_RAMDISK_IMAGE 0x0c0
#define BP_EXT_RAMDISK_SIZE 0x0c4
#define BP_EXT_CMD_LINE_PTR 0x0c8
#define BP_E820_ENTRIES 0x1e8
#define BP_BOOT_FLAG 0x1fe
#define BP_HEADER 0x202
#define BP_RAMDISK_IMAGE 0x218
#define BP_RAMDISK_SIZE 0x21c
#define BP_CMD_LINE_PTR 0x228
#define BP_E820_TABLE 0x2d0
#define E820_MAX_ENTRIES 128
#define HDRS_MAGIC 0x53726448

/*
 * The boot protocol maps only the first GiB, but husk may place the initrd anywhere
 * in low RAM (up to 3 GiB): identity-map the first 4 GiB with 2 MiB pages, as a kernel
 * sets up its own page tables before it touches the initrd.
 */
#define PTE_PRESENT_WRITABLE 0x3
#define PTE_HUGE 0x80
static u64 pml4[512] __attribute__((aligned(4096)));
static u64 pdpt[512] __attribute__((aligned(4096)));
static u64 pd[4][512] __attribute__((aligned(4096)));

static void map_low_4gib(void)
{
	for (u64 g = 0; g < 4; g++) {
		for (u64 i = 0; i < 512; i++)
			pd[g][i] = ((g << 30) | (i << 21)) | PTE_PRESENT_WRITABLE | PTE_HUGE;
		pdpt[g] = (u64)(uptr)pd[g] | PTE_PRESENT_WRITABLE;
	}
	pml4[0] = (u64)(uptr)pdpt | PTE_PRESENT_WRITABLE;
	__asm__ volatile("mov %0, %%cr3" : : "r"((u64)(uptr)pml4) : "memory");
}

void guest_main(uptr bp)
{
	struct boot_report report = { 0 };
	map_low_4gib();
	if (phys_read16(bp + BP_BOOT_FLAG) != 0xaa55 || phys_read32(bp + BP_HEADER) != HDRS_MAGIC) {
		report.error = "boot_params has no boot flag or HdrS header";
	} else {
		u32 entries = phys_read8(bp + BP_E820_ENTRIES);
		if (entries == 0 || entries > E820_MAX_ENTRIES)
			report.error = "boot_params has no valid e820 table";
		for (u32 i = 0; i < entries && i < E820_MAX_ENTRIES; i++) {
			/* struct boot_e820_entry: u64 addr, u64 size, u32 type (packed, 20 bytes) */
			uptr e = bp + BP_E820_TABLE + i * 20;
			if (phys_read32(e + 16) == E820_RAM)
				report.ram_bytes += phys_read64(e + 8);
		}
		report.cmdline_addr = (uptr)phys_read32(bp + BP_CMD_LINE_PTR) |
				      ((uptr)phys_read32(bp + BP_EXT_CMD_LINE_PTR) << 32);
		report.initrd_addr = (u64)phys_read32(bp + BP_RAMDISK_IMAGE) |
				     ((u64)phys_read32(bp + BP_EXT_RAMDISK_IMAGE) << 32);
		report.initrd_bytes = (u64)phys_read32(bp + BP_RAMDISK_SIZE) |
				      ((u64)phys_read32(bp + BP_EXT_RAMDISK_SIZE) << 32);
	}
	print_boot_report("bootinfo64", &report);
	guest_exit(0);
}
