/*
 * A spare virtio-blk slot through a real vCPU (the VMM's drive handle at work): the first
 * virtio-blk device of the command line must be an empty slot. The guest
 *  - starts it and checks that it is empty: capacity 0, and a read and GET_ID fail with
 *    VIRTIO_BLK_S_IOERR;
 *  - prints "LABGUEST-ATTACH l1-spare", on which the host attaches a read-only drive
 *    with that id, and polls InterruptStatus for the configuration-change bit
 *    (VIRTIO_MMIO_INT_CONFIG, bit 1); then checks that ConfigGeneration
 *    changed, reads the new capacity (`test.spare_sectors=<n>` expected), GET_ID (the id),
 *    reads sector 0 (printed as a sum the host compares) and checks that a write fails
 *    with IOERR (the slot cannot offer VIRTIO_BLK_F_RO after boot);
 *  - prints "LABGUEST-DETACH l1-spare", polls for the configuration change again and
 *    checks that the slot is empty once more.
 * Prints "virtio-blk-spare: ..." lines and "virtio-blk-spare: PASS" or "... FAIL ...";
 * then resets.
 */
#include "common/virtio.h"

#define WHO "virtio-blk-spare"
#define ID "l1-spare"
#define SECTOR 512

#define VIRTIO_BLK_F_SEG_MAX (1ULL << 2)
#define VIRTIO_BLK_F_RO (1ULL << 5)
#define VIRTIO_BLK_F_FLUSH (1ULL << 9)
#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_ID_BYTES 20

#define VIRTIO_MMIO_INT_CONFIG 2

/* Request completion: a few hundred thousand VM exits, seconds on any host. */
#define REQUEST_POLLS 400000
/* Waiting for the host to act on a console line: many VM exits, far longer. */
#define CHANGE_POLLS 20000000

struct blk_req_hdr {
	u32 type;
	u32 reserved;
	u64 sector;
};

static char cmdline[4096];
static struct virtio_dev drives[1];
static struct virtq_rings rings;
static struct virtq queue;
static struct blk_req_hdr hdr;
static u8 status_byte;
static u8 data[SECTOR];
static void fail(const char *what)
{
	check_fail(WHO, what);
}

/* One request with one data buffer; its status, or -1 if it never completed. */
static int request(struct virtio_dev *d, u32 type, u64 sector, u8 *buf, u32 len, int device_writes)
{
	struct vbuf bufs[3];
	u32 n = 0;
	u32 used_len = 0;
	hdr.type = type;
	hdr.reserved = 0;
	hdr.sector = sector;
	status_byte = 0xee;
	bufs[n++] = (struct vbuf){ (uptr)&hdr, sizeof(hdr), 0 };
	if (len)
		bufs[n++] = (struct vbuf){ (uptr)buf, len, (u32)device_writes };
	bufs[n++] = (struct vbuf){ (uptr)&status_byte, 1, 1 };
	int head = virtq_add(&queue, bufs, n);
	if (head < 0)
		return -1;
	virtq_kick(d, &queue);
	if (virtq_wait_used(&queue, &used_len, REQUEST_POLLS) != head)
		return -1;
	return status_byte;
}

static void expect_status(const char *what, int status, int want)
{
	if (status == want)
		return;
	serial_puts(WHO ": FAIL ");
	serial_puts(what);
	serial_puts(": status ");
	serial_put_u64((u32)status);
	serial_puts(", expected ");
	serial_put_u64((u32)want);
	serial_puts("\n");
	check_failed();
}

/* Whether the NUL-padded `id` is ID. */
static int is_id(const u8 *id)
{
	const char *want = ID;
	for (u32 i = 0; i < VIRTIO_BLK_ID_BYTES; i++) {
		if (id[i] != (u8)*want)
			return 0;
		if (*want)
			want++;
	}
	return 1;
}

/* Asks the host for `action` and waits for the configuration-change interrupt cause. */
static int await_change(struct virtio_dev *d, const char *action)
{
	serial_puts(action);
	serial_puts(" " ID "\n");
	for (u32 i = 0; i < CHANGE_POLLS; i++) {
		u32 isr = virtio_read32(d, VIRTIO_MMIO_INTERRUPT_STATUS);
		if (isr & VIRTIO_MMIO_INT_CONFIG) {
			virtio_write32(d, VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_CONFIG);
			return 1;
		}
		virtio_delay();
	}
	fail("no configuration-change interrupt after the request");
	return 0;
}

/* Checks that the slot is empty: capacity 0, reads and GET_ID fail. */
static void check_empty(struct virtio_dev *d, const char *when)
{
	u64 capacity = virtio_config64(d, 0);
	serial_puts(WHO ": ");
	serial_puts(when);
	serial_puts(": capacity=");
	serial_put_u64(capacity);
	serial_puts(" generation=");
	serial_put_u64(virtio_read32(d, VIRTIO_MMIO_CONFIG_GENERATION));
	serial_puts("\n");
	if (capacity != 0)
		fail("an empty slot has a capacity");
	expect_status("read from an empty slot", request(d, VIRTIO_BLK_T_IN, 0, data, SECTOR, 1),
		      VIRTIO_BLK_S_IOERR);
	expect_status("get-id of an empty slot",
		      request(d, VIRTIO_BLK_T_GET_ID, 0, data, VIRTIO_BLK_ID_BYTES, 1),
		      VIRTIO_BLK_S_IOERR);
}

void guest_main(u32 start_info)
{
	const char *err = pvh_cmdline(start_info, cmdline, sizeof(cmdline));
	if (err) {
		fail(err);
		guest_exit(1);
	}
	u32 expected = 0;
	if (!cmdline_u32(cmdline, "test.spare_sectors=", &expected))
		fail("no test.spare_sectors= on the command line");
	if (virtio_find(WHO, cmdline, VIRTIO_ID_BLOCK, drives, 1) != 1) {
		fail("no virtio-blk device on the command line");
		guest_exit(1);
	}
	struct virtio_dev *d = &drives[0];
	err = virtio_negotiate(d, VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_RO | VIRTIO_BLK_F_FLUSH);
	if (!err)
		err = virtq_setup(d, &queue, 0, VIRTQ_MAX_SIZE, &rings);
	if (!err)
		err = virtio_driver_ok(d);
	if (err) {
		fail(err);
		guest_exit(1);
	}
	if (d->offered & VIRTIO_BLK_F_RO)
		fail("a spare slot offers VIRTIO_BLK_F_RO");
	check_empty(d, "empty");
	u32 gen_before = virtio_read32(d, VIRTIO_MMIO_CONFIG_GENERATION);

	if (await_change(d, "LABGUEST-ATTACH")) {
		u32 gen = virtio_read32(d, VIRTIO_MMIO_CONFIG_GENERATION);
		u64 capacity = virtio_config64(d, 0);
		static u8 id[VIRTIO_BLK_ID_BYTES + 1];
		memset(id, 0, sizeof(id));
		int st = request(d, VIRTIO_BLK_T_GET_ID, 0, id, VIRTIO_BLK_ID_BYTES, 1);
		expect_status("get-id of the attached drive", st, VIRTIO_BLK_S_OK);
		u32 id_len = 0;
		while (id_len < VIRTIO_BLK_ID_BYTES && id[id_len])
			id_len++;
		memset(data, 0, SECTOR);
		st = request(d, VIRTIO_BLK_T_IN, 0, data, SECTOR, 1);
		expect_status("read of sector 0 of the attached drive", st, VIRTIO_BLK_S_OK);
		u64 sum = 0;
		for (u32 i = 0; i < SECTOR; i++)
			sum = sum * 31 + data[i];
		serial_puts(WHO ": attached: capacity=");
		serial_put_u64(capacity);
		serial_puts(" serial=");
		put_bytes(id, id_len);
		serial_puts(" generation_changed=");
		serial_puts(gen != gen_before ? "yes" : "no");
		serial_puts(" sector0_sum=");
		put_hex(sum);
		serial_puts("\n");
		if (gen == gen_before)
			fail("ConfigGeneration did not change with the media");
		if (capacity != expected)
			fail("the attached drive's capacity is not test.spare_sectors");
		if (!is_id(id))
			fail("the attached drive's serial is not " ID);
		memset(data, 0x77, SECTOR);
		expect_status("write to the attached read-only drive",
			      request(d, VIRTIO_BLK_T_OUT, 0, data, SECTOR, 0), VIRTIO_BLK_S_IOERR);
		if (await_change(d, "LABGUEST-DETACH"))
			check_empty(d, "detached");
	}
	if (virtio_status(d) & VIRTIO_STATUS_NEEDS_RESET)
		fail("the device set DEVICE_NEEDS_RESET");
	check_verdict(WHO);
	guest_exit(0);
}
