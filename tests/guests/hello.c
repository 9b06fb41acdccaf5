/* Prints a marker on COM1 and resets: the smallest useful guest (and the benchmark's). */
#include "guest.h"

void guest_main(u32 start_info)
{
	(void)start_info;
	serial_puts("husk-test-guest: hello\n");
	guest_exit(0);
}
