/*
 * husk test guests: the shared freestanding support (COM1 output, reset, port I/O,
 * MP table parsing). Guests poll everything: no interrupts, no exceptions, no SSE.
 */
#ifndef HUSK_GUEST_H
#define HUSK_GUEST_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef unsigned long uptr; /* pointer-sized: 32 or 64 bits */

static inline void outb(u16 port, u8 value)
{
	__asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port));
}

static inline u8 inb(u16 port)
{
	u8 value;
	__asm__ volatile("inb %1, %0" : "=a"(value) : "Nd"(port));
	return value;
}

static inline void cpu_relax(void)
{
	__asm__ volatile("pause" ::: "memory");
}

/* Physical memory access (paging is off, or identity-mapped in long mode). */
static inline u8 phys_read8(uptr addr)
{
	return *(volatile u8 *)addr;
}
static inline u16 phys_read16(uptr addr)
{
	return *(volatile u16 *)addr;
}
static inline u32 phys_read32(uptr addr)
{
	return *(volatile u32 *)addr;
}
static inline u64 phys_read64(uptr addr)
{
	/* Two 32-bit reads: fine for the static boot data guests read. */
	return (u64)phys_read32(addr) | ((u64)phys_read32(addr + 4) << 32);
}
static inline void phys_write32(uptr addr, u32 value)
{
	*(volatile u32 *)addr = value;
}

/* lib.c */
void *memcpy(void *dst, const void *src, uptr n);
void *memset(void *dst, int c, uptr n);
void serial_putc(char c);
void serial_puts(const char *s);
void serial_put_u64(u64 value);
/* Prints at most `max` bytes of the NUL-terminated string at physical `addr`. */
void serial_put_phys_str(uptr addr, u32 max);
/*
 * Ends the guest: i8042 reset (0xFE to port 0x64: husk exits 0), then QEMU's
 * isa-debug-exit (port 0xf4: QEMU exits with (code << 1) | 1), then halts for good.
 */
void __attribute__((noreturn)) guest_exit(u8 code);

/* mp.c: the Intel MP spec 1.4 tables. */
#define MP_MAX_CPUS 256
struct mp_info {
	const char *error; /* NULL when the tables were found and valid */
	u32 floating_addr; /* where "_MP_" was found */
	u32 cpus;          /* enabled processor entries */
	u32 bsp_count;     /* entries with the BSP flag */
	u32 bsp_apic_id;
	u8 apic_ids[MP_MAX_CPUS]; /* APIC id of enabled processor entry i */
	u32 ioapics;
};
void mp_scan(struct mp_info *info);

/* Boot reports shared by bootinfo (PVH) and bootinfo64 (Linux boot protocol). */
struct boot_report {
	const char *error;
	u64 ram_bytes;
	u64 initrd_addr;
	u64 initrd_bytes;
	uptr cmdline_addr;
};
/* Prints "<name>: ram_bytes=.. cpus=.. initrd_bytes=.. initrd_sum=.. cmdline=..". */
void print_boot_report(const char *name, const struct boot_report *report);

#endif
