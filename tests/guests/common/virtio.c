/* The polling virtio-mmio driver of the test guests (see virtio.h). */
#include "virtio.h"

#define HVM_START_MAGIC 0x336ec578
#define COM1_LSR 0x3fd

void virtio_delay(void)
{
	(void)inb(COM1_LSR);
}

const char *pvh_cmdline(u32 start_info, char *buf, u32 max)
{
	buf[0] = 0;
	if (phys_read32(start_info) != HVM_START_MAGIC)
		return "hvm_start_info magic is wrong";
	uptr addr = (uptr)phys_read64(start_info + 24);
	if (addr == 0)
		return "no command line";
	u32 i = 0;
	for (; i + 1 < max; i++) {
		char c = (char)phys_read8(addr + i);
		if (c == 0)
			break;
		buf[i] = c;
	}
	buf[i] = 0;
	if (i + 1 == max)
		return "command line too long";
	return 0;
}

static int is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n';
}

static int starts_with(const char *s, const char *prefix)
{
	while (*prefix) {
		if (*s++ != *prefix++)
			return 0;
	}
	return 1;
}

static u32 hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return (u32)(c - '0');
	if (c >= 'a' && c <= 'f')
		return (u32)(c - 'a' + 10);
	if (c >= 'A' && c <= 'F')
		return (u32)(c - 'A' + 10);
	return 16;
}

/* Parses a number (decimal, or hex with 0x) at *p; advances *p. Returns 0 if none. */
static int parse_number(const char **p, u64 *out)
{
	const char *s = *p;
	u64 v = 0;
	int digits = 0;
	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		s += 2;
		while (hex_digit(*s) < 16) {
			v = (v << 4) | hex_digit(*s++);
			digits++;
		}
	} else {
		while (*s >= '0' && *s <= '9') {
			v = v * 10 + (u64)(*s++ - '0');
			digits++;
		}
	}
	if (!digits)
		return 0;
	*out = v;
	*p = s;
	return 1;
}

/* Parses "<size>[K|M]@<addr>:<irq>" (the Linux virtio_mmio.device= syntax). */
static int parse_mmio_entry(const char *s, struct virtio_dev *d)
{
	u64 size, addr, irq;
	if (!parse_number(&s, &size))
		return 0;
	if (*s == 'K' || *s == 'k') {
		size <<= 10;
		s++;
	} else if (*s == 'M' || *s == 'm') {
		size <<= 20;
		s++;
	}
	if (*s++ != '@' || !parse_number(&s, &addr) || *s++ != ':' || !parse_number(&s, &irq))
		return 0;
	if (*s && !is_space(*s))
		return 0;
	if (size < 0x100 || addr == 0 || addr > 0xffffffffULL - size)
		return 0;
	d->base = (uptr)addr;
	d->size = (u32)size;
	d->irq = (u32)irq;
	return 1;
}

u32 virtio_find(const char *who, const char *cmdline, u32 device_id, struct virtio_dev *out,
		u32 max)
{
	static const char key[] = "virtio_mmio.device=";
	u32 found = 0;
	const char *p = cmdline;
	while (*p) {
		while (is_space(*p))
			p++;
		if (starts_with(p, key)) {
			struct virtio_dev d = { 0 };
			if (!parse_mmio_entry(p + sizeof(key) - 1, &d)) {
				serial_puts(who);
				serial_puts(": error: cannot parse a virtio_mmio.device= entry\n");
			} else if (virtio_read32(&d, VIRTIO_MMIO_MAGIC) != VIRTIO_MMIO_MAGIC_VALUE) {
				serial_puts(who);
				serial_puts(": error: bad magic value at ");
				put_hex(d.base);
				serial_puts("\n");
			} else if (virtio_read32(&d, VIRTIO_MMIO_VERSION) != 2) {
				serial_puts(who);
				serial_puts(": error: not a modern (version 2) virtio-mmio device at ");
				put_hex(d.base);
				serial_puts("\n");
			} else {
				d.device_id = virtio_read32(&d, VIRTIO_MMIO_DEVICE_ID);
				if (d.device_id == device_id && found < max)
					out[found++] = d;
			}
		}
		while (*p && !is_space(*p))
			p++;
	}
	return found;
}

u32 virtio_status(const struct virtio_dev *d)
{
	return virtio_read32(d, VIRTIO_MMIO_STATUS);
}

static void set_status(struct virtio_dev *d, u32 bits)
{
	virtio_write32(d, VIRTIO_MMIO_STATUS, virtio_status(d) | bits);
}

const char *virtio_reset(struct virtio_dev *d)
{
	virtio_write32(d, VIRTIO_MMIO_STATUS, 0);
	/* 4.2.3.1: the reset is complete when Status reads back 0. */
	for (u32 i = 0; i < 1000; i++) {
		if (virtio_status(d) == 0)
			return 0;
	}
	return "the device status did not read back 0 after a reset";
}

const char *virtio_negotiate(struct virtio_dev *d, u64 wanted)
{
	const char *err = virtio_reset(d);
	if (err)
		return err;
	set_status(d, VIRTIO_STATUS_ACKNOWLEDGE);
	set_status(d, VIRTIO_STATUS_DRIVER);
	virtio_write32(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
	u64 lo = virtio_read32(d, VIRTIO_MMIO_DEVICE_FEATURES);
	virtio_write32(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
	u64 hi = virtio_read32(d, VIRTIO_MMIO_DEVICE_FEATURES);
	d->offered = lo | (hi << 32);
	if (!(d->offered & VIRTIO_F_VERSION_1)) {
		set_status(d, VIRTIO_STATUS_FAILED);
		return "the device does not offer VIRTIO_F_VERSION_1";
	}
	d->accepted = d->offered & (wanted | VIRTIO_F_VERSION_1);
	virtio_write32(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	virtio_write32(d, VIRTIO_MMIO_DRIVER_FEATURES, (u32)d->accepted);
	virtio_write32(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	virtio_write32(d, VIRTIO_MMIO_DRIVER_FEATURES, (u32)(d->accepted >> 32));
	set_status(d, VIRTIO_STATUS_FEATURES_OK);
	if (!(virtio_status(d) & VIRTIO_STATUS_FEATURES_OK)) {
		set_status(d, VIRTIO_STATUS_FAILED);
		return "the device did not keep FEATURES_OK";
	}
	return 0;
}

const char *virtq_setup(struct virtio_dev *d, struct virtq *q, u16 index, u16 size,
			struct virtq_rings *rings)
{
	virtio_write32(d, VIRTIO_MMIO_QUEUE_SEL, index);
	if (virtio_read32(d, VIRTIO_MMIO_QUEUE_READY) != 0)
		return "QueueReady is not 0 before the queue is set up";
	u32 max = virtio_read32(d, VIRTIO_MMIO_QUEUE_NUM_MAX);
	if (max == 0)
		return "QueueNumMax is 0: the queue does not exist";
	if (size > VIRTQ_MAX_SIZE)
		size = VIRTQ_MAX_SIZE;
	while (size > max)
		size >>= 1;
	if (size == 0)
		return "no usable queue size";
	memset(rings, 0, sizeof(*rings));
	q->index = index;
	q->size = size;
	q->avail_idx = 0;
	q->last_used = 0;
	q->num_free = size;
	q->free_head = 0;
	q->rings = rings;
	for (u16 i = 0; i < size; i++) {
		rings->desc[i].next = (u16)(i + 1);
		q->chain_len[i] = 0;
	}
	virtio_write32(d, VIRTIO_MMIO_QUEUE_NUM, size);
	virtio_write32(d, VIRTIO_MMIO_QUEUE_DESC_LOW, (u32)(uptr)rings->desc);
	virtio_write32(d, VIRTIO_MMIO_QUEUE_DESC_HIGH, 0);
	virtio_write32(d, VIRTIO_MMIO_QUEUE_DRIVER_LOW, (u32)(uptr)&rings->avail);
	virtio_write32(d, VIRTIO_MMIO_QUEUE_DRIVER_HIGH, 0);
	virtio_write32(d, VIRTIO_MMIO_QUEUE_DEVICE_LOW, (u32)(uptr)&rings->used);
	virtio_write32(d, VIRTIO_MMIO_QUEUE_DEVICE_HIGH, 0);
	virtio_write32(d, VIRTIO_MMIO_QUEUE_READY, 1);
	if (virtio_read32(d, VIRTIO_MMIO_QUEUE_READY) != 1)
		return "QueueReady does not read back 1";
	return 0;
}

const char *virtio_driver_ok(struct virtio_dev *d)
{
	set_status(d, VIRTIO_STATUS_DRIVER_OK);
	u32 status = virtio_status(d);
	if (status & VIRTIO_STATUS_NEEDS_RESET)
		return "the device set DEVICE_NEEDS_RESET";
	if (!(status & VIRTIO_STATUS_DRIVER_OK))
		return "DRIVER_OK did not stick";
	return 0;
}

u8 virtio_config8(const struct virtio_dev *d, u32 off)
{
	return *(volatile u8 *)(d->base + VIRTIO_MMIO_CONFIG + off);
}

u32 virtio_config32(const struct virtio_dev *d, u32 off)
{
	return *(volatile u32 *)(d->base + VIRTIO_MMIO_CONFIG + off);
}

u64 virtio_config64(const struct virtio_dev *d, u32 off)
{
	/* 2.5.1: two 32-bit reads are not atomic; retry while the generation changes. */
	for (u32 tries = 0;; tries++) {
		u32 gen = virtio_read32(d, VIRTIO_MMIO_CONFIG_GENERATION);
		u64 v = (u64)virtio_config32(d, off) | ((u64)virtio_config32(d, off + 4) << 32);
		if (virtio_read32(d, VIRTIO_MMIO_CONFIG_GENERATION) == gen || tries > 100)
			return v;
	}
}

int virtq_add(struct virtq *q, const struct vbuf *bufs, u32 n)
{
	if (n == 0 || n > q->num_free)
		return -1;
	struct virtq_desc *desc = q->rings->desc;
	u16 head = q->free_head;
	u16 i = head;
	for (u32 k = 0; k < n; k++) {
		desc[i].addr = (u64)bufs[k].addr;
		desc[i].len = bufs[k].len;
		desc[i].flags = (u16)((bufs[k].writable ? VIRTQ_DESC_F_WRITE : 0) |
				      (k + 1 < n ? VIRTQ_DESC_F_NEXT : 0));
		if (k + 1 < n)
			i = desc[i].next;
	}
	q->free_head = desc[i].next;
	q->num_free = (u16)(q->num_free - n);
	q->chain_len[head] = (u16)n;
	volatile struct virtq_avail *avail = &q->rings->avail;
	avail->ring[q->avail_idx & (q->size - 1)] = head;
	/* The ring entry (and the descriptors) before the index: x86 keeps store order. */
	compiler_barrier();
	q->avail_idx++;
	avail->idx = q->avail_idx;
	compiler_barrier();
	return head;
}

void virtq_kick(struct virtio_dev *d, struct virtq *q)
{
	compiler_barrier();
	virtio_write32(d, VIRTIO_MMIO_QUEUE_NOTIFY, q->index);
}

int virtq_get_used(struct virtq *q, u32 *len)
{
	volatile struct virtq_used *used = &q->rings->used;
	compiler_barrier();
	if (used->idx == q->last_used)
		return -1;
	compiler_barrier();
	volatile struct virtq_used_elem *e = &used->ring[q->last_used & (q->size - 1)];
	u32 id = e->id;
	*len = e->len;
	q->last_used++;
	if (id >= q->size || q->chain_len[id] == 0)
		return -2;
	/* Put the chain back on the free list. */
	u16 n = q->chain_len[id];
	u16 last = (u16)id;
	for (u16 k = 1; k < n; k++)
		last = q->rings->desc[last].next;
	q->rings->desc[last].next = q->free_head;
	q->free_head = (u16)id;
	q->num_free = (u16)(q->num_free + n);
	q->chain_len[id] = 0;
	return (int)id;
}

int virtq_wait_used(struct virtq *q, u32 *len, u32 polls)
{
	for (u32 i = 0; i < polls; i++) {
		int head = virtq_get_used(q, len);
		if (head != -1)
			return head;
		virtio_delay();
	}
	return -1;
}

static int parse_u32_token(const char *s, u32 *value)
{
	u64 v;
	if (!parse_number(&s, &v) || (*s && !is_space(*s)) || v > 0xffffffffULL)
		return 0;
	*value = (u32)v;
	return 1;
}

int cmdline_u32(const char *cmdline, const char *key, u32 *value)
{
	const char *p = cmdline;
	u32 klen = 0;
	while (key[klen])
		klen++;
	while (*p) {
		while (is_space(*p))
			p++;
		if (starts_with(p, key) && parse_u32_token(p + klen, value))
			return 1;
		while (*p && !is_space(*p))
			p++;
	}
	return 0;
}

int cmdline_has_u32(const char *cmdline, const char *key, u32 value)
{
	const char *p = cmdline;
	u32 klen = 0;
	while (key[klen])
		klen++;
	while (*p) {
		while (is_space(*p))
			p++;
		u32 v;
		if (starts_with(p, key) && parse_u32_token(p + klen, &v) && v == value)
			return 1;
		while (*p && !is_space(*p))
			p++;
	}
	return 0;
}

void put_hex(u64 value)
{
	static const char digits[] = "0123456789abcdef";
	serial_puts("0x");
	int started = 0;
	for (int shift = 60; shift >= 0; shift -= 4) {
		u32 nibble = (u32)(value >> shift) & 0xf;
		if (nibble || started || shift == 0) {
			serial_putc(digits[nibble]);
			started = 1;
		}
	}
}

void put_bytes(const u8 *s, u32 n)
{
	for (u32 i = 0; i < n; i++)
		serial_putc(s[i] >= 0x20 && s[i] < 0x7f ? (char)s[i] : '?');
}

static u32 check_failures;

void check_fail(const char *who, const char *what)
{
	serial_puts(who);
	serial_puts(": FAIL ");
	serial_puts(what);
	serial_puts("\n");
	check_failed();
}

void check_failed(void)
{
	check_failures++;
}

void check_verdict(const char *who)
{
	serial_puts(who);
	if (check_failures) {
		serial_puts(": FAIL ");
		serial_put_u64(check_failures);
		serial_puts(" check(s) failed\n");
	} else {
		serial_puts(": PASS\n");
	}
}
