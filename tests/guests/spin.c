/* Prints a marker and then runs forever: for stopping a VM from the host. */
#include "guest.h"

void guest_main(u32 start_info)
{
	(void)start_info;
	serial_puts("spin: running\n");
	for (;;)
		cpu_relax();
}
