/*
 * Finds the Intel MP spec 1.4 floating pointer and configuration table the way an
 * operating system does, validates both checksums and collects the processor entries.
 */
#include "guest.h"

#define MP_FLOATING_LEN 16
#define MP_ENTRY_PROCESSOR 0
#define MP_ENTRY_IOAPIC 2
#define MP_CPU_ENABLED 0x1
#define MP_CPU_BSP 0x2

static u8 checksum(uptr addr, u32 len)
{
	u8 sum = 0;
	for (u32 i = 0; i < len; i++)
		sum += phys_read8(addr + i);
	return sum;
}

static int is_signature(uptr addr, const char *sig)
{
	for (u32 i = 0; i < 4; i++) {
		if (phys_read8(addr + i) != (u8)sig[i])
			return 0;
	}
	return 1;
}

/* Looks for a valid floating pointer in [start, start + len), 16-byte aligned. */
static uptr find_floating(uptr start, u32 len)
{
	for (uptr p = start; p + MP_FLOATING_LEN <= start + len; p += 16) {
		if (!is_signature(p, "_MP_"))
			continue;
		u32 paragraphs = phys_read8(p + 8);
		if (paragraphs == 1 && checksum(p, MP_FLOATING_LEN) == 0)
			return p;
	}
	return 0;
}

static void parse_table(struct mp_info *info, uptr table)
{
	if (!is_signature(table, "PCMP")) {
		info->error = "configuration table has no PCMP signature";
		return;
	}
	u32 base_len = phys_read16(table + 4);
	if (base_len < 44 || checksum(table, base_len) != 0) {
		info->error = "configuration table checksum is wrong";
		return;
	}
	/*
	 * Walk the entries by the table length, as Linux does (some firmware, e.g. QEMU
	 * microvm's qboot, leaves the entry count at 0); a non-zero count must match.
	 */
	u32 count = phys_read16(table + 34);
	u32 parsed = 0;
	uptr entry = table + 44;
	uptr end = table + base_len;
	while (entry < end) {
		u8 type = phys_read8(entry);
		u32 size = type == MP_ENTRY_PROCESSOR ? 20 : 8;
		if (type > 4) {
			info->error = "configuration table has an unknown entry type";
			return;
		}
		if (entry + size > end) {
			info->error = "configuration table entries overrun its length";
			return;
		}
		if (type == MP_ENTRY_PROCESSOR) {
			u8 apic_id = phys_read8(entry + 1);
			u8 flags = phys_read8(entry + 3);
			if (flags & MP_CPU_ENABLED) {
				if (info->cpus < MP_MAX_CPUS)
					info->apic_ids[info->cpus] = apic_id;
				info->cpus++;
				if (flags & MP_CPU_BSP) {
					info->bsp_count++;
					info->bsp_apic_id = apic_id;
				}
			}
		} else if (type == MP_ENTRY_IOAPIC) {
			info->ioapics++;
		}
		entry += size;
		parsed++;
	}
	if (count != 0 && count != parsed) {
		info->error = "configuration table entry count does not match its entries";
		return;
	}
	if (info->bsp_count != 1)
		info->error = "configuration table does not name exactly one BSP";
}

void mp_scan(struct mp_info *info)
{
	memset(info, 0, sizeof(*info));
	/* The EBDA segment from the BIOS data area, if a firmware filled it in. */
	uptr ebda = (uptr)phys_read16(0x40e) << 4;
	uptr found = 0;
	if (ebda >= 0x80000 && ebda < 0xa0000)
		found = find_floating(ebda, 1024);
	/* The last KiB of 640 KiB base memory (where husk's EBDA is), then the BIOS ROM. */
	if (!found)
		found = find_floating(0x9fc00, 1024);
	if (!found)
		found = find_floating(0xf0000, 0x10000);
	if (!found) {
		info->error = "no MP floating pointer";
		return;
	}
	info->floating_addr = (u32)found;
	u32 table = phys_read32(found + 4);
	if (table == 0) {
		info->error = "MP floating pointer names a default configuration, no table";
		return;
	}
	parse_table(info, table);
}
