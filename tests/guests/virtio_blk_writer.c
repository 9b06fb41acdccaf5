/*
 * A write-heavy workload on the first virtio-blk drive, for the host to kill husk in the
 * middle of (tests/tests/vmm_blk_kill.rs). For n = 0, 1, 2, ... it writes block n: 4 KiB
 * (8 sectors) at sector 8 * n, whose 8-byte slot i (i in 0..512) holds two little-endian
 * u32 words: n, then WRITER_MAGIC ^ (seed << 16) ^ i (seed from `test.seed=`, 0 without).
 * Blocks go in batches of BATCH: all writes of a batch on the queue at once and one
 * notify; while the device writes them the guest fills the next batch's buffers (a second
 * set), then waits for every write to complete with OK, then sends a FLUSH; when the FLUSH
 * completes with OK it prints `flushed <N>` (N = the highest block of the batch). COM1
 * output goes byte by byte to the UART (no buffer in the guest), so the line is out
 * before the next batch is sent. When the next block would pass the capacity it prints
 * `writer: disk full blocks=<n>` and resets; any failure prints `writer: error: ...` and
 * resets.
 */
#include "common/virtio.h"

#define WHO "writer"
#define SECTOR 512
#define BLOCK_SECTORS 8
#define BLOCK_BYTES (BLOCK_SECTORS * SECTOR)
#define SLOTS (BLOCK_BYTES / 8)
#define BATCH 4
#define WRITER_MAGIC 0x4b535548u /* "HUSK" */

#define VIRTIO_BLK_F_FLUSH (1ULL << 9)
#define BLK_CFG_CAPACITY 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_S_OK 0

/* Request completion: a few hundred thousand VM exits, seconds on any host. */
#define REQUEST_POLLS 400000

struct blk_req_hdr {
	u32 type;
	u32 reserved;
	u64 sector;
};

static char cmdline[4096];
static struct virtio_dev drive;
static struct virtq_rings rings;
static struct virtq queue;
/* One header, status byte and data block per request of a batch (+1: the FLUSH). */
static struct blk_req_hdr hdrs[BATCH + 1];
static volatile u8 statuses[BATCH + 1];
/* Two sets of buffers: the guest fills one while the device writes the other. */
static u32 blocks[2][BATCH][BLOCK_BYTES / 4] __attribute__((aligned(4096)));

static void __attribute__((noreturn)) fail(const char *what, u64 n)
{
	serial_puts(WHO ": error: ");
	serial_puts(what);
	serial_puts(" (block ");
	serial_put_u64(n);
	serial_puts(")\n");
	guest_exit(1);
}

/* Waits for `count` used elements; fails unless each request's status byte is OK. */
static void wait_ok(u32 count, const char *what, u64 n)
{
	for (u32 k = 0; k < count; k++) {
		u32 len = 0;
		int head = virtq_wait_used(&queue, &len, REQUEST_POLLS);
		if (head == -1)
			fail("timeout waiting for a completion", n);
		if (head < 0)
			fail("the device returned an unknown descriptor", n);
	}
	for (u32 k = 0; k < count; k++)
		if (statuses[k] != VIRTIO_BLK_S_OK)
			fail(what, n);
}

/* Writes block numbers first, first + 1, ... into the first words of buffer set `set`. */
static void fill(u32 set, u64 first)
{
	for (u32 b = 0; b < BATCH; b++) {
		u32 *words = blocks[set][b];
		u32 value = (u32)(first + b);
		for (u32 i = 0; i < SLOTS; i++)
			words[2 * i] = value;
	}
}

void guest_main(u32 start_info)
{
	const char *err = pvh_cmdline(start_info, cmdline, sizeof(cmdline));
	if (err)
		fail(err, 0);
	if (virtio_find(WHO, cmdline, VIRTIO_ID_BLOCK, &drive, 1) != 1)
		fail("no virtio-blk device on the command line", 0);
	u32 seed = 0;
	cmdline_u32(cmdline, "test.seed=", &seed);
	err = virtio_negotiate(&drive, VIRTIO_BLK_F_FLUSH);
	if (!err && !(drive.accepted & VIRTIO_BLK_F_FLUSH))
		err = "VIRTIO_BLK_F_FLUSH is not offered";
	if (!err)
		err = virtq_setup(&drive, &queue, 0, VIRTQ_MAX_SIZE, &rings);
	if (!err && queue.size < 3 * BATCH)
		err = "the queue is too small for a batch";
	if (!err)
		err = virtio_driver_ok(&drive);
	if (err)
		fail(err, 0);
	u64 capacity = virtio_config64(&drive, BLK_CFG_CAPACITY);
	u64 total = capacity / BLOCK_SECTORS;
	serial_puts(WHO ": capacity=");
	serial_put_u64(capacity);
	serial_puts(" blocks=");
	serial_put_u64(total);
	serial_puts(" block_bytes=4096 batch=4 seed=");
	serial_put_u64(seed);
	serial_puts("\n");

	/* The second word of every slot never changes: fill it once. */
	for (u32 set = 0; set < 2; set++)
		for (u32 b = 0; b < BATCH; b++)
			for (u32 i = 0; i < SLOTS; i++)
				blocks[set][b][2 * i + 1] = WRITER_MAGIC ^ (seed << 16) ^ i;

	u64 n = 0;
	u32 set = 0;
	fill(set, n);
	while (n < total) {
		u32 count = total - n < BATCH ? (u32)(total - n) : BATCH;
		for (u32 k = 0; k < count; k++) {
			u32 *words = blocks[set][k];
			hdrs[k] = (struct blk_req_hdr){ VIRTIO_BLK_T_OUT, 0, (n + k) * BLOCK_SECTORS };
			statuses[k] = 0xee; /* not a valid status: the device must overwrite it */
			struct vbuf bufs[3] = {
				{ (uptr)&hdrs[k], sizeof(hdrs[k]), 0 },
				{ (uptr)words, BLOCK_BYTES, 0 },
				{ (uptr)&statuses[k], 1, 1 },
			};
			if (virtq_add(&queue, bufs, 3) < 0)
				fail("queue full", n + k);
		}
		virtq_kick(&drive, &queue);
		/* While the device writes this batch: the next one into the other set. */
		fill(set ^ 1, n + count);
		wait_ok(count, "a write failed", n);

		hdrs[0] = (struct blk_req_hdr){ VIRTIO_BLK_T_FLUSH, 0, 0 };
		statuses[0] = 0xee;
		struct vbuf flush[2] = {
			{ (uptr)&hdrs[0], sizeof(hdrs[0]), 0 },
			{ (uptr)&statuses[0], 1, 1 },
		};
		if (virtq_add(&queue, flush, 2) < 0)
			fail("queue full", n);
		virtq_kick(&drive, &queue);
		wait_ok(1, "a flush failed", n);

		n += count;
		set ^= 1;
		serial_puts("flushed ");
		serial_put_u64(n - 1);
		serial_puts("\n");
	}
	serial_puts(WHO ": disk full blocks=");
	serial_put_u64(n);
	serial_puts("\n");
	guest_exit(0);
}
