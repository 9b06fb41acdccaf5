/*
 * Linux 64-bit boot protocol entry: long mode, identity-mapped low memory,
 * RSI = guest-physical address of boot_params. Sets a stack, clears .bss and calls
 * guest_main(boot_params).
 */
	.section .text.entry, "ax"
	.code64
	.globl start64
start64:
	cli
	cld
	leaq stack_top(%rip), %rsp
	movq %rsi, %rbx         /* keep boot_params across the .bss clear */
	leaq __bss_start(%rip), %rdi
	leaq __bss_end(%rip), %rcx
	subq %rdi, %rcx
	xorl %eax, %eax
	rep stosb
	movq %rbx, %rdi
	call guest_main
	movl $1, %edi
	call guest_exit

	.section .bss
	.balign 16
	.space 16384
stack_top:

	.section .note.GNU-stack, "", @progbits
