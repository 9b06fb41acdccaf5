/* COM1 output, reset and the few libc functions the compiler may call. */
#include "guest.h"

#define COM1 0x3f8
#define COM1_LSR (COM1 + 5)
#define LSR_THR_EMPTY 0x20
/* Bounded wait for the transmitter: a missing UART must not hang the guest. */
#define THR_POLL_LIMIT 100000

void *memcpy(void *dst, const void *src, uptr n)
{
	u8 *d = dst;
	const u8 *s = src;
	while (n--)
		*d++ = *s++;
	return dst;
}

void *memset(void *dst, int c, uptr n)
{
	u8 *d = dst;
	while (n--)
		*d++ = (u8)c;
	return dst;
}

void serial_putc(char c)
{
	for (u32 i = 0; i < THR_POLL_LIMIT; i++) {
		if (inb(COM1_LSR) & LSR_THR_EMPTY)
			break;
	}
	outb(COM1, (u8)c);
}

void serial_puts(const char *s)
{
	while (*s) {
		if (*s == '\n')
			serial_putc('\r');
		serial_putc(*s++);
	}
}

/* Decimal without a division: 32-bit code has no libgcc for 64-bit divides. */
void serial_put_u64(u64 value)
{
	static const u64 powers[] = {
		10000000000000000000ULL, 1000000000000000000ULL, 100000000000000000ULL,
		10000000000000000ULL, 1000000000000000ULL, 100000000000000ULL,
		10000000000000ULL, 1000000000000ULL, 100000000000ULL, 10000000000ULL,
		1000000000ULL, 100000000ULL, 10000000ULL, 1000000ULL, 100000ULL,
		10000ULL, 1000ULL, 100ULL, 10ULL, 1ULL,
	};
	int started = 0;
	for (u32 i = 0; i < sizeof(powers) / sizeof(powers[0]); i++) {
		char digit = '0';
		while (value >= powers[i]) {
			value -= powers[i];
			digit++;
		}
		if (digit != '0' || started || powers[i] == 1) {
			serial_putc(digit);
			started = 1;
		}
	}
}

void serial_put_phys_str(uptr addr, u32 max)
{
	for (u32 i = 0; i < max; i++) {
		char c = (char)phys_read8(addr + i);
		if (c == 0)
			return;
		serial_putc(c);
	}
}

void guest_exit(u8 code)
{
	outb(0x64, 0xfe);
	outb(0xf4, code);
	for (;;)
		__asm__ volatile("cli; hlt");
}
