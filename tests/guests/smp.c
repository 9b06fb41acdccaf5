/*
 * SMP bring-up the way an OS without ACPI does it: the BSP finds the processors in the
 * MP table and starts each AP with INIT-SIPI-SIPI through its local APIC; the APs run
 * a real-mode trampoline at 0x10000 that counts them. Prints
 * "smp: cpus_online=<n> ap_apic_ids=<ids>" and resets.
 */
#include "guest.h"

#define TRAMPOLINE_ADDR 0x10000
#define SIPI_VECTOR (TRAMPOLINE_ADDR >> 12)

#define LAPIC_BASE 0xfee00000
#define LAPIC_ID (LAPIC_BASE + 0x20)
#define LAPIC_SVR (LAPIC_BASE + 0xf0)
#define LAPIC_ICR_LOW (LAPIC_BASE + 0x300)
#define LAPIC_ICR_HIGH (LAPIC_BASE + 0x310)
#define SVR_ENABLE 0x100
#define SVR_SPURIOUS_VECTOR 0xff
#define ICR_INIT 0x00000500
#define ICR_STARTUP 0x00000600
#define ICR_LEVEL_ASSERT 0x00004000
#define ICR_BUSY 0x00001000

/*
 * How long the BSP waits for the APs, counted in polls of the UART status register: each
 * is a VM exit (microseconds on hardware KVM, tens of microseconds on PVM), so this is
 * seconds in either case, far more than an AP start takes.
 */
#define AP_WAIT_POLLS 2000000
#define ICR_WAIT_POLLS 100000

extern const u8 ap_trampoline[], ap_trampoline_end[];
extern const u32 ap_count_offset, ap_seen_offset;

static int icr_wait_idle(void)
{
	for (u32 i = 0; i < ICR_WAIT_POLLS; i++) {
		if (!(phys_read32(LAPIC_ICR_LOW) & ICR_BUSY))
			return 1;
		cpu_relax();
	}
	return 0;
}

static int send_ipi(u32 apic_id, u32 command)
{
	phys_write32(LAPIC_ICR_HIGH, apic_id << 24);
	phys_write32(LAPIC_ICR_LOW, command);
	return icr_wait_idle();
}

void guest_main(u32 start_info)
{
	(void)start_info;
	struct mp_info mp;
	mp_scan(&mp);
	if (mp.error) {
		serial_puts("smp: error: MP table: ");
		serial_puts(mp.error);
		serial_puts("\n");
		guest_exit(1);
	}
	u32 bsp_id = phys_read32(LAPIC_ID) >> 24;
	if (bsp_id != mp.bsp_apic_id) {
		serial_puts("smp: error: the BSP's APIC id is not the MP table's BSP\n");
		guest_exit(1);
	}

	u32 len = (u32)(ap_trampoline_end - ap_trampoline);
	memcpy((void *)TRAMPOLINE_ADDR, ap_trampoline, len);
	volatile u32 *count = (volatile u32 *)(TRAMPOLINE_ADDR + ap_count_offset);
	volatile u8 *seen = (volatile u8 *)(TRAMPOLINE_ADDR + ap_seen_offset);

	phys_write32(LAPIC_SVR, phys_read32(LAPIC_SVR) | SVR_ENABLE | SVR_SPURIOUS_VECTOR);

	u32 started = 0;
	for (u32 i = 0; i < mp.cpus && i < MP_MAX_CPUS; i++) {
		u32 id = mp.apic_ids[i];
		if (id == bsp_id)
			continue;
		int ok = send_ipi(id, ICR_INIT | ICR_LEVEL_ASSERT);
		ok = ok && send_ipi(id, ICR_STARTUP | SIPI_VECTOR);
		ok = ok && send_ipi(id, ICR_STARTUP | SIPI_VECTOR);
		if (!ok) {
			serial_puts("smp: error: the local APIC stayed busy sending an IPI\n");
			guest_exit(1);
		}
		started++;
	}

	for (u32 i = 0; i < AP_WAIT_POLLS && *count < started; i++)
		(void)inb(0x3f8 + 5);
	if (*count < started)
		serial_puts("smp: error: timed out waiting for the APs\n");

	serial_puts("smp: cpus_online=");
	serial_put_u64(1 + *count);
	serial_puts(" ap_apic_ids=");
	int first = 1;
	for (u32 id = 0; id < 256; id++) {
		if (!seen[id])
			continue;
		if (!first)
			serial_putc(',');
		serial_put_u64(id);
		first = 0;
	}
	serial_puts("\n");
	guest_exit(0);
}
