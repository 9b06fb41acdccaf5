/*
 * virtio-blk through a real vCPU: for every drive on the command line (in order), negotiate
 * features, read the capacity, GET_ID, then
 *  - a read-write drive: write a pattern to 8 sectors at sector 0 and to the last 8
 *    sectors, FLUSH, read both back and compare;
 *  - a read-only drive (VIRTIO_BLK_F_RO offered, or `test.ro_drive=<index>` on the
 *    command line): a write must fail with VIRTIO_BLK_S_IOERR and sector 0 must read
 *    back as before;
 *  - every drive: a read at the capacity and one straddling it fail with IOERR, an
 *    unknown request type gets UNSUPP, and a reset reads back 0.
 * The pattern byte i of sector s is (u8)(s * 151 + i * 7 + (i >> 8) * 13 + 0x3c), i in
 * 0..512. `test.blk_drives=<n>` makes the guest check it found n drives.
 * Prints one "virtio-blk: drive <i> ..." line per check and "virtio-blk: PASS" or
 * "virtio-blk: FAIL ..." at the end; then resets.
 */
#include "common/virtio.h"

#define WHO "virtio-blk"
#define MAX_DRIVES 20
#define SECTOR 512
#define PATTERN_SECTORS 8
#define DATA_BYTES (PATTERN_SECTORS * SECTOR)

/* Feature bits (5.2.3). */
#define VIRTIO_BLK_F_SEG_MAX (1ULL << 2)
#define VIRTIO_BLK_F_RO (1ULL << 5)
#define VIRTIO_BLK_F_FLUSH (1ULL << 9)

/* Config layout (5.2.4). */
#define BLK_CFG_CAPACITY 0
#define BLK_CFG_SEG_MAX 12

/* Request types and status (5.2.6). */
#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_T_UNKNOWN 0x7f
#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_S_UNSUPP 2
#define VIRTIO_BLK_ID_BYTES 20

/* Request completion: a few hundred thousand VM exits, seconds on any host. */
#define REQUEST_POLLS 400000

struct blk_req_hdr {
	u32 type;
	u32 reserved;
	u64 sector;
};

static char cmdline[4096];
static struct virtio_dev drives[MAX_DRIVES];
static struct virtq_rings rings;
static struct virtq queue;
static struct blk_req_hdr hdr;
static u8 status_byte;
static u8 data[DATA_BYTES];
static u8 before[DATA_BYTES];
static u8 id_buf[VIRTIO_BLK_ID_BYTES];
static u32 failures;

static u8 pattern(u64 sector, u32 i)
{
	return (u8)((u32)sector * 151 + i * 7 + (i >> 8) * 13 + 0x3c);
}

static void drive_line(u32 index, const char *text)
{
	serial_puts(WHO ": drive ");
	serial_put_u64(index);
	serial_puts(" ");
	serial_puts(text);
}

static void fail(u32 index, const char *what)
{
	drive_line(index, "FAIL ");
	serial_puts(what);
	serial_puts("\n");
	failures++;
}

/* The result of one request: its status byte, or a negative value if it never completed. */
#define REQ_TIMEOUT (-1)
#define REQ_BAD_USED (-2)
#define REQ_FULL (-3)

/*
 * Runs one request: header, `segments` data buffers of equal size covering `len` bytes
 * of `buf` (device-writable when `device_writes`), the status byte. Stores the used
 * length in *used_len.
 */
static int request(struct virtio_dev *d, u32 type, u64 sector, u8 *buf, u32 len, u32 segments,
		   int device_writes, u32 *used_len)
{
	struct vbuf bufs[2 + 8];
	u32 n = 0;
	hdr.type = type;
	hdr.reserved = 0;
	hdr.sector = sector;
	status_byte = 0xee; /* not a valid status: the device must overwrite it */
	bufs[n++] = (struct vbuf){ (uptr)&hdr, sizeof(hdr), 0 };
	if (len) {
		if (segments == 0 || segments > 8)
			segments = 1;
		u32 seg = len / segments;
		for (u32 k = 0; k < segments; k++) {
			u32 this_len = k + 1 < segments ? seg : len - seg * k;
			bufs[n++] = (struct vbuf){ (uptr)(buf + seg * k), this_len,
						   (u32)device_writes };
		}
	}
	bufs[n++] = (struct vbuf){ (uptr)&status_byte, 1, 1 };
	int head = virtq_add(&queue, bufs, n);
	if (head < 0)
		return REQ_FULL;
	virtq_kick(d, &queue);
	u32 got_len = 0;
	int used = virtq_wait_used(&queue, &got_len, REQUEST_POLLS);
	if (used == -1)
		return REQ_TIMEOUT;
	if (used != head)
		return REQ_BAD_USED;
	*used_len = got_len;
	return status_byte;
}

static void put_status(int status)
{
	if (status == REQ_TIMEOUT)
		serial_puts("timeout (no used element)");
	else if (status == REQ_BAD_USED)
		serial_puts("bad used element");
	else if (status == REQ_FULL)
		serial_puts("queue full");
	else {
		serial_put_u64((u32)status);
		if (status == VIRTIO_BLK_S_OK)
			serial_puts(" (OK)");
		else if (status == VIRTIO_BLK_S_IOERR)
			serial_puts(" (IOERR)");
		else if (status == VIRTIO_BLK_S_UNSUPP)
			serial_puts(" (UNSUPP)");
	}
}

/* Expects `status` == `want`; prints a FAIL line naming `what` otherwise. */
static int expect_status(u32 index, const char *what, int status, int want)
{
	if (status == want)
		return 1;
	drive_line(index, "FAIL ");
	serial_puts(what);
	serial_puts(": status ");
	put_status(status);
	serial_puts(", expected ");
	put_status(want);
	serial_puts("\n");
	failures++;
	return 0;
}

static void fill_pattern(u64 first_sector)
{
	for (u32 s = 0; s < PATTERN_SECTORS; s++)
		for (u32 i = 0; i < SECTOR; i++)
			data[s * SECTOR + i] = pattern(first_sector + s, i);
}

/* Returns the first differing offset, or DATA_BYTES. */
static u32 check_pattern(u64 first_sector)
{
	for (u32 s = 0; s < PATTERN_SECTORS; s++)
		for (u32 i = 0; i < SECTOR; i++)
			if (data[s * SECTOR + i] != pattern(first_sector + s, i))
				return s * SECTOR + i;
	return DATA_BYTES;
}

static int write_read_pattern(struct virtio_dev *d, u32 index, u64 sector, u32 seg_write,
			      u32 seg_read)
{
	u32 used_len = 0;
	fill_pattern(sector);
	int st = request(d, VIRTIO_BLK_T_OUT, sector, data, DATA_BYTES, seg_write, 0, &used_len);
	if (!expect_status(index, "write", st, VIRTIO_BLK_S_OK))
		return 0;
	st = request(d, VIRTIO_BLK_T_FLUSH, 0, 0, 0, 0, 0, &used_len);
	if (!expect_status(index, "flush", st, VIRTIO_BLK_S_OK))
		return 0;
	memset(data, 0, DATA_BYTES);
	st = request(d, VIRTIO_BLK_T_IN, sector, data, DATA_BYTES, seg_read, 1, &used_len);
	if (!expect_status(index, "read back", st, VIRTIO_BLK_S_OK))
		return 0;
	if (used_len != DATA_BYTES + 1) {
		drive_line(index, "FAIL read back: used length ");
		serial_put_u64(used_len);
		serial_puts(", expected ");
		serial_put_u64(DATA_BYTES + 1);
		serial_puts(" (data + status)\n");
		failures++;
		return 0;
	}
	u32 bad = check_pattern(sector);
	if (bad != DATA_BYTES) {
		drive_line(index, "FAIL read back differs at sector ");
		serial_put_u64(sector + (bad >> 9));
		serial_puts(" byte ");
		serial_put_u64(bad & (SECTOR - 1));
		serial_puts("\n");
		failures++;
		return 0;
	}
	return 1;
}

static void test_drive(u32 index, struct virtio_dev *d)
{
	const char *err = virtio_negotiate(d, VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_RO |
						      VIRTIO_BLK_F_FLUSH);
	if (!err)
		err = virtq_setup(d, &queue, 0, VIRTQ_MAX_SIZE, &rings);
	if (!err)
		err = virtio_driver_ok(d);
	if (err) {
		fail(index, err);
		return;
	}
	u64 capacity = virtio_config64(d, BLK_CFG_CAPACITY);
	u32 seg_max = (d->accepted & VIRTIO_BLK_F_SEG_MAX) ? virtio_config32(d, BLK_CFG_SEG_MAX) : 0;
	int ro_feature = (d->accepted & VIRTIO_BLK_F_RO) != 0;
	int ro = ro_feature || cmdline_has_u32(cmdline, "test.ro_drive=", index);

	u32 used_len = 0;
	memset(id_buf, 0, sizeof(id_buf));
	int st = request(d, VIRTIO_BLK_T_GET_ID, 0, id_buf, sizeof(id_buf), 1, 1, &used_len);
	u32 id_len = 0;
	while (id_len < sizeof(id_buf) && id_buf[id_len])
		id_len++;

	drive_line(index, "at ");
	put_hex(d->base);
	serial_puts(" irq=");
	serial_put_u64(d->irq);
	serial_puts(" features=");
	put_hex(d->offered);
	serial_puts(" capacity=");
	serial_put_u64(capacity);
	serial_puts(" seg_max=");
	serial_put_u64(seg_max);
	serial_puts(ro_feature ? " ro=feature" : (ro ? " ro=cmdline" : " ro=no"));
	serial_puts(" serial=");
	put_bytes(id_buf, id_len);
	serial_puts("\n");

	if (!(d->offered & VIRTIO_BLK_F_FLUSH))
		fail(index, "VIRTIO_BLK_F_FLUSH is not offered");
	expect_status(index, "get-id", st, VIRTIO_BLK_S_OK);
	if (capacity < 2 * PATTERN_SECTORS) {
		fail(index, "capacity is below 16 sectors: too small for the test");
		return;
	}
	/* Data split in several descriptors, within seg_max when the device gives one. */
	u32 seg_write = 2, seg_read = 4;
	if (seg_max) {
		if (seg_write > seg_max)
			seg_write = seg_max;
		if (seg_read > seg_max)
			seg_read = seg_max;
	}

	if (!ro) {
		u32 before_failures = failures;
		if (write_read_pattern(d, index, 0, seg_write, seg_read) &&
		    write_read_pattern(d, index, capacity - PATTERN_SECTORS, seg_read, seg_write) &&
		    failures == before_failures) {
			drive_line(index, "write+flush+read ok: sectors 0..8 and ");
			serial_put_u64(capacity - PATTERN_SECTORS);
			serial_puts("..");
			serial_put_u64(capacity);
			serial_puts("\n");
		}
	} else {
		memset(before, 0, DATA_BYTES);
		st = request(d, VIRTIO_BLK_T_IN, 0, before, DATA_BYTES, seg_read, 1, &used_len);
		if (expect_status(index, "read before the write", st, VIRTIO_BLK_S_OK)) {
			fill_pattern(0);
			st = request(d, VIRTIO_BLK_T_OUT, 0, data, DATA_BYTES, seg_write, 0,
				     &used_len);
			if (expect_status(index, "write to a read-only drive", st,
					  VIRTIO_BLK_S_IOERR)) {
				drive_line(index, "read-only write rejected: status ");
				put_status(st);
				serial_puts("\n");
			}
			memset(data, 0, DATA_BYTES);
			st = request(d, VIRTIO_BLK_T_IN, 0, data, DATA_BYTES, seg_read, 1,
				     &used_len);
			if (expect_status(index, "read after the write", st, VIRTIO_BLK_S_OK)) {
				u32 same = 1;
				for (u32 i = 0; i < DATA_BYTES; i++)
					if (data[i] != before[i])
						same = 0;
				if (same)
					drive_line(index, "read-only data unchanged\n");
				else
					fail(index, "a rejected write changed the data");
			}
		}
	}

	/* Past the end: at the capacity, and 2 sectors from the last one. */
	st = request(d, VIRTIO_BLK_T_IN, capacity, data, SECTOR, 1, 1, &used_len);
	int past_ok = expect_status(index, "read at the capacity", st, VIRTIO_BLK_S_IOERR);
	st = request(d, VIRTIO_BLK_T_IN, capacity - 1, data, 2 * SECTOR, 1, 1, &used_len);
	past_ok &= expect_status(index, "read across the end", st, VIRTIO_BLK_S_IOERR);
	if (past_ok)
		drive_line(index, "read past the end: status 1 (IOERR)\n");

	st = request(d, VIRTIO_BLK_T_UNKNOWN, 0, data, SECTOR, 1, 1, &used_len);
	if (expect_status(index, "unknown request type", st, VIRTIO_BLK_S_UNSUPP))
		drive_line(index, "unknown request type: status 2 (UNSUPP)\n");

	if (virtio_status(d) & VIRTIO_STATUS_NEEDS_RESET)
		fail(index, "the device set DEVICE_NEEDS_RESET");
	err = virtio_reset(d);
	if (err)
		fail(index, err);
}

void guest_main(u32 start_info)
{
	const char *err = pvh_cmdline(start_info, cmdline, sizeof(cmdline));
	if (err) {
		serial_puts(WHO ": FAIL ");
		serial_puts(err);
		serial_puts("\n");
		guest_exit(1);
	}
	u32 n = virtio_find(WHO, cmdline, VIRTIO_ID_BLOCK, drives, MAX_DRIVES);
	u32 expected;
	if (cmdline_u32(cmdline, "test.blk_drives=", &expected) && expected != n) {
		serial_puts(WHO ": FAIL found ");
		serial_put_u64(n);
		serial_puts(" drives, expected ");
		serial_put_u64(expected);
		serial_puts("\n");
		failures++;
	}
	if (n == 0) {
		serial_puts(WHO ": FAIL no virtio-blk device on the command line\n");
		guest_exit(1);
	}
	for (u32 i = 0; i < n; i++)
		test_drive(i, &drives[i]);
	if (failures) {
		serial_puts(WHO ": FAIL ");
		serial_put_u64(failures);
		serial_puts(" check(s) failed\n");
	} else {
		serial_puts(WHO ": PASS drives=");
		serial_put_u64(n);
		serial_puts("\n");
	}
	guest_exit(0);
}
