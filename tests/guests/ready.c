/*
 * Signals readiness on husk's boot-timer port (0x440) twice (only the first write
 * counts), prints a marker and resets.
 */
#include "guest.h"

#define BOOT_TIMER_PORT 0x440

void guest_main(u32 start_info)
{
	(void)start_info;
	outb(BOOT_TIMER_PORT, 1);
	outb(BOOT_TIMER_PORT, 1);
	serial_puts("ready: signalled\n");
	guest_exit(0);
}
