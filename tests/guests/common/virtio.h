/*
 * A tiny polling virtio-mmio driver (virtio 1.2, section 4.2: the modern "version 2"
 * register layout) with split virtqueues in guest RAM, for the husk test guests.
 * No interrupts: the guests notify through QueueNotify and poll the used rings.
 */
#ifndef HUSK_GUEST_VIRTIO_H
#define HUSK_GUEST_VIRTIO_H

#include "guest.h"

/* MMIO register offsets (virtio 1.2, 4.2.2). */
#define VIRTIO_MMIO_MAGIC 0x000
#define VIRTIO_MMIO_VERSION 0x004
#define VIRTIO_MMIO_DEVICE_ID 0x008
#define VIRTIO_MMIO_VENDOR_ID 0x00c
#define VIRTIO_MMIO_DEVICE_FEATURES 0x010
#define VIRTIO_MMIO_DEVICE_FEATURES_SEL 0x014
#define VIRTIO_MMIO_DRIVER_FEATURES 0x020
#define VIRTIO_MMIO_DRIVER_FEATURES_SEL 0x024
#define VIRTIO_MMIO_QUEUE_SEL 0x030
#define VIRTIO_MMIO_QUEUE_NUM_MAX 0x034
#define VIRTIO_MMIO_QUEUE_NUM 0x038
#define VIRTIO_MMIO_QUEUE_READY 0x044
#define VIRTIO_MMIO_QUEUE_NOTIFY 0x050
#define VIRTIO_MMIO_INTERRUPT_STATUS 0x060
#define VIRTIO_MMIO_INTERRUPT_ACK 0x064
#define VIRTIO_MMIO_STATUS 0x070
#define VIRTIO_MMIO_QUEUE_DESC_LOW 0x080
#define VIRTIO_MMIO_QUEUE_DESC_HIGH 0x084
#define VIRTIO_MMIO_QUEUE_DRIVER_LOW 0x090
#define VIRTIO_MMIO_QUEUE_DRIVER_HIGH 0x094
#define VIRTIO_MMIO_QUEUE_DEVICE_LOW 0x0a0
#define VIRTIO_MMIO_QUEUE_DEVICE_HIGH 0x0a4
#define VIRTIO_MMIO_CONFIG_GENERATION 0x0fc
#define VIRTIO_MMIO_CONFIG 0x100

#define VIRTIO_MMIO_MAGIC_VALUE 0x74726976 /* "virt" */

/* Device status bits (2.1). */
#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER 2
#define VIRTIO_STATUS_DRIVER_OK 4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 64
#define VIRTIO_STATUS_FAILED 128

/* Feature bits. */
#define VIRTIO_F_VERSION_1 (1ULL << 32)

/* Device ids (5). */
#define VIRTIO_ID_BLOCK 2
#define VIRTIO_ID_VSOCK 19

/* Split virtqueue descriptor flags (2.7.5). */
#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2

/* The largest queue the guests use: small, everything is polled one request at a time. */
#define VIRTQ_MAX_SIZE 16

struct virtq_desc {
	u64 addr;
	u32 len;
	u16 flags;
	u16 next;
};

struct virtq_avail {
	u16 flags;
	u16 idx;
	u16 ring[VIRTQ_MAX_SIZE];
	u16 used_event;
};

struct virtq_used_elem {
	u32 id;
	u32 len;
};

struct virtq_used {
	u16 flags;
	u16 idx;
	struct virtq_used_elem ring[VIRTQ_MAX_SIZE];
	u16 avail_event;
};

/* The rings of one queue, in guest RAM (physical = virtual: paging is off). */
struct virtq_rings {
	struct virtq_desc desc[VIRTQ_MAX_SIZE] __attribute__((aligned(16)));
	struct virtq_avail avail __attribute__((aligned(16)));
	struct virtq_used used __attribute__((aligned(16)));
};

struct virtq {
	u16 index;      /* queue index on the device */
	u16 size;       /* number of descriptors (a power of two <= VIRTQ_MAX_SIZE) */
	u16 avail_idx;  /* next avail index the driver publishes */
	u16 last_used;  /* next used index the driver reads */
	u16 num_free;
	u16 free_head;
	u16 chain_len[VIRTQ_MAX_SIZE]; /* descriptors in the chain headed at i */
	struct virtq_rings *rings;
};

/* One device found on the command line. */
struct virtio_dev {
	uptr base;
	u32 size;
	u32 irq;
	u32 device_id;
	u64 offered;  /* the device's feature bits */
	u64 accepted; /* what the driver wrote back */
};

/* One buffer of a descriptor chain. */
struct vbuf {
	uptr addr;
	u32 len;
	u32 writable; /* device-writable (VIRTQ_DESC_F_WRITE) */
};

/* Register access: 32-bit wide, as 4.2.2.2 requires. */
static inline u32 virtio_read32(const struct virtio_dev *d, u32 off)
{
	return *(volatile u32 *)(d->base + off);
}
static inline void virtio_write32(const struct virtio_dev *d, u32 off, u32 value)
{
	*(volatile u32 *)(d->base + off) = value;
}
static inline void compiler_barrier(void)
{
	__asm__ volatile("" ::: "memory");
}

/*
 * Copies the PVH command line (hvm_start_info.cmdline_paddr) into `buf` (NUL-terminated,
 * at most `max` - 1 bytes). Returns NULL, or an error.
 */
const char *pvh_cmdline(u32 start_info, char *buf, u32 max);

/*
 * Finds the `virtio_mmio.device=<size>@<addr>:<irq>` entries of `cmdline`, in order,
 * and keeps the ones whose DeviceID register is `device_id` (after checking the magic
 * value and version 2). Entries with DeviceID 0 (an empty slot) are skipped; an entry
 * with a bad magic or version is reported on COM1 with `who` as prefix. Returns how many
 * were stored in `out` (at most `max`).
 */
u32 virtio_find(const char *who, const char *cmdline, u32 device_id, struct virtio_dev *out,
		u32 max);

/*
 * Resets the device, sets ACKNOWLEDGE and DRIVER, reads the offered features, accepts
 * `wanted` & offered (VERSION_1 must be offered and is always accepted), sets
 * FEATURES_OK and checks that it stuck. Returns NULL or an error (the device is then
 * marked FAILED).
 */
const char *virtio_negotiate(struct virtio_dev *d, u64 wanted);

/*
 * Sets up queue `index` with at most `size` descriptors (less if QueueNumMax is less)
 * on `rings`. Returns NULL or an error.
 */
const char *virtq_setup(struct virtio_dev *d, struct virtq *q, u16 index, u16 size,
			struct virtq_rings *rings);

/* Sets DRIVER_OK; returns NULL or an error (the device asked for a reset). */
const char *virtio_driver_ok(struct virtio_dev *d);

/* Writes 0 to Status and checks it reads back 0. Returns NULL or an error. */
const char *virtio_reset(struct virtio_dev *d);

/* The device status register. */
u32 virtio_status(const struct virtio_dev *d);

/* Device config space reads (the generation counter guards the 64-bit read). */
u8 virtio_config8(const struct virtio_dev *d, u32 off);
u32 virtio_config32(const struct virtio_dev *d, u32 off);
u64 virtio_config64(const struct virtio_dev *d, u32 off);

/*
 * Publishes a chain of `n` buffers on the avail ring (without notifying). Returns the
 * head descriptor index, or -1 when there are not enough free descriptors.
 */
int virtq_add(struct virtq *q, const struct vbuf *bufs, u32 n);

/* Notifies the device that queue `q` has new buffers (QueueNotify). */
void virtq_kick(struct virtio_dev *d, struct virtq *q);

/*
 * Takes one used element, if there is one: returns its head (and frees its chain),
 * storing the used length in *len; -1 if the used ring holds nothing new, -2 if the
 * device returned a head the driver never published.
 */
int virtq_get_used(struct virtq *q, u32 *len);

/*
 * Polls for one used element at most `polls` times (each poll also reads the UART
 * status register: a VM exit, so the bound is a time of microseconds per poll on any
 * host). Returns as virtq_get_used, -1 on timeout.
 */
int virtq_wait_used(struct virtq *q, u32 *len, u32 polls);

/* A pause of one VM exit (reads the UART status register). */
void virtio_delay(void);

/* Command line helpers: `key` includes the '=' ("test.port="). */
/* Returns 1 and stores the value of the first `key<number>` token, else 0. */
int cmdline_u32(const char *cmdline, const char *key, u32 *value);
/* Returns 1 if some `key<number>` token has the value `value`. */
int cmdline_has_u32(const char *cmdline, const char *key, u32 value);

/* Output helpers. */
void put_hex(u64 value);
/* Prints up to `n` bytes, non-printable ones as '?'. */
void put_bytes(const u8 *s, u32 n);

/* The device tests' verdict: check_fail prints `<who>: FAIL <what>` and counts it;
 * check_failed counts a failure whose FAIL line the caller printed itself;
 * check_verdict prints `<who>: FAIL <n> check(s) failed`, or `<who>: PASS` when none
 * did. */
void check_fail(const char *who, const char *what);
void check_failed(void);
void check_verdict(const char *who);

#endif
