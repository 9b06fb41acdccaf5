/*
 * The application processors' start-up code, copied to 0x10000 (SIPI vector 0x10):
 * each AP starts here in real mode with CS = 0x1000, IP = 0, records its initial APIC
 * id (CPUID leaf 1) in ap_seen[], counts itself in ap_count with a locked increment,
 * and halts for good.
 */
	.section .rodata.trampoline, "a"
	.code16
	.globl ap_trampoline, ap_trampoline_end, ap_count_offset, ap_seen_offset
ap_trampoline:
	cli
	movw %cs, %ax
	movw %ax, %ds
	movl $1, %eax
	cpuid
	shrl $24, %ebx
	movb $1, (ap_seen - ap_trampoline)(%bx)
	lock incl (ap_count - ap_trampoline)
1:
	hlt
	jmp 1b

	.balign 4
ap_count:
	.long 0
ap_seen:
	.space 256
ap_trampoline_end:

	.balign 4
ap_count_offset:
	.long ap_count - ap_trampoline
ap_seen_offset:
	.long ap_seen - ap_trampoline

	.section .note.GNU-stack, "", @progbits
