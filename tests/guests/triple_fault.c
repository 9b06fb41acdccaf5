/*
 * Loads an empty IDT and executes ud2: the #UD cannot be delivered, nor the #GP or #DF
 * that follow, so the CPU triple-faults (KVM_EXIT_SHUTDOWN). On a PVM host the
 * instruction emulator may stop first with KVM_EXIT_INTERNAL_ERROR instead.
 */
#include "guest.h"

void guest_main(u32 start_info)
{
	(void)start_info;
	struct __attribute__((packed)) {
		u16 limit;
		u32 base;
	} null_idt = { 0, 0 };
	serial_puts("triple_fault: faulting now\n");
	__asm__ volatile("lidt %0; ud2" : : "m"(null_idt));
	serial_puts("triple_fault: error: still running after the fault\n");
	guest_exit(1);
}
