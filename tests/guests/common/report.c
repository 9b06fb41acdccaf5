/* The one-line boot report of the bootinfo guests. */
#include "guest.h"

#define CMDLINE_PRINT_MAX 2048

void print_boot_report(const char *name, const struct boot_report *report)
{
	struct mp_info mp;
	mp_scan(&mp);

	u32 sum = 0;
	if (!report->error) {
		for (u64 i = 0; i < report->initrd_bytes; i++)
			sum += phys_read8((uptr)(report->initrd_addr + i));
	}
	if (report->error) {
		serial_puts(name);
		serial_puts(": error: ");
		serial_puts(report->error);
		serial_puts("\n");
	}
	if (mp.error) {
		serial_puts(name);
		serial_puts(": error: MP table: ");
		serial_puts(mp.error);
		serial_puts("\n");
	}
	serial_puts(name);
	serial_puts(": ram_bytes=");
	serial_put_u64(report->ram_bytes);
	serial_puts(" cpus=");
	serial_put_u64(mp.cpus);
	serial_puts(" apic_ids=");
	for (u32 i = 0; i < mp.cpus && i < MP_MAX_CPUS; i++) {
		if (i)
			serial_putc(',');
		serial_put_u64(mp.apic_ids[i]);
	}
	serial_puts(" initrd_bytes=");
	serial_put_u64(report->initrd_bytes);
	serial_puts(" initrd_sum=");
	serial_put_u64(sum);
	serial_puts(" cmdline=");
	if (report->cmdline_addr)
		serial_put_phys_str(report->cmdline_addr, CMDLINE_PRINT_MAX);
	serial_puts("\n");
}
