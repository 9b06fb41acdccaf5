/*
 * PVH entry: 32-bit protected mode, paging off, EBX = guest-physical address of
 * struct hvm_start_info. Loads the guest's own flat GDT (the loader's is not promised
 * to stay valid), sets a stack, clears .bss and calls guest_main(start_info).
 */
	.section .note.pvh, "a"
	.balign 4
	.long 4                 /* namesz: "Xen\0" */
	.long 4                 /* descsz */
	.long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.long pvh_start32       /* desc: the 32-bit physical entry address */

	.section .text.entry, "ax"
	.code32
	.globl pvh_start32
pvh_start32:
	cli
	cld
	lgdt gdt_desc
	ljmp $0x08, $1f
1:
	movl $0x10, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %fs
	movl %eax, %gs
	movl %eax, %ss
	movl $stack_top, %esp
	movl %ebx, %esi         /* keep start_info across the .bss clear */
	movl $__bss_start, %edi
	movl $__bss_end, %ecx
	subl %edi, %ecx
	xorl %eax, %eax
	rep stosb
	pushl %esi
	call guest_main
	pushl $1
	call guest_exit

	.section .rodata
	.balign 8
gdt:
	.quad 0                         /* null */
	.quad 0x00cf9b000000ffff        /* 0x08: flat 32-bit code */
	.quad 0x00cf93000000ffff        /* 0x10: flat 32-bit data */
gdt_end:
gdt_desc:
	.word gdt_end - gdt - 1
	.long gdt

	.section .bss
	.balign 16
	.space 16384
stack_top:

	.section .note.GNU-stack, "", @progbits
