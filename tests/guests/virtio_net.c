/*
 * virtio-net through a real vCPU: the guest is a tiny IPv4 host on the first virtio-net
 * device of the command line. It negotiates VERSION_1 and MAC only (no offloads, no
 * mergeable rx buffers: every frame it gets is whole, in one buffer, with correct
 * checksums), prints the MAC from the config space, posts rx buffers, then
 *  - asks the gateway for its MAC with an ARP request and waits for the reply;
 *  - sends ECHO_COUNT ICMP echo requests to the gateway, one at a time, and checks each
 *    reply (addresses, IPv4 header checksum, ICMP checksum, id, sequence, payload);
 *  - meanwhile answers ARP requests for its own address (the kernel on the other side
 *    may ask before it answers, or to confirm the entry it has) and ignores anything
 *    else (IPv6 neighbour discovery, say).
 * Addresses come from the command line, as dotted quads:
 *   test.ip=<a.b.c.d>       the guest's own address
 *   test.gateway=<a.b.c.d>  the address it pings
 *   test.arp_from_gateway=1 after the echoes, wait until the gateway has asked for the
 *                           guest's MAC at least once (the host makes its kernel ask)
 * Prints "virtio-net: mac ..", "virtio-net: gateway is at ..", one
 * "virtio-net: echo reply from <gw> seq <n> ok" per echo, then "virtio-net: PASS" or
 * "virtio-net: FAIL ..."; then resets.
 *
 * Frames are built and read byte by byte (network byte order, no struct overlays, no
 * struct copies) so that gcc emits nothing PVM cannot emulate.
 */
#include "common/virtio.h"

#define WHO "virtio-net"

#define VIRTIO_ID_NET 1

/* Feature bits (5.1.3). Only MAC is wanted; VERSION_1 is always accepted. */
#define VIRTIO_NET_F_MAC (1ULL << 5)

/* Config layout (5.1.4): mac[6], then status (le16). */
#define NET_CFG_MAC 0

#define RX_QUEUE 0
#define TX_QUEUE 1

/*
 * struct virtio_net_hdr_v1 (5.1.6): flags, gso_type, hdr_len (le16), gso_size (le16),
 * csum_start (le16), csum_offset (le16), num_buffers (le16). With VERSION_1 it is 12
 * bytes whether or not MRG_RXBUF is negotiated.
 */
#define NET_HDR_LEN 12
#define NET_HDR_F_NEEDS_CSUM 1
#define NET_HDR_NUM_BUFFERS 10

/* Ethernet, ARP, IPv4 and ICMP constants. */
#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_ARP 0x0806
#define ARP_LEN 28
#define ARP_REQUEST 1
#define ARP_REPLY 2
#define IP_HLEN 20
#define IPPROTO_ICMP 1
#define ICMP_ECHO_REPLY 0
#define ICMP_ECHO_REQUEST 8
#define ICMP_HLEN 8
#define ECHO_ID 0x4855 /* "HU" */
#define ECHO_PAYLOAD 56 /* what ping sends by default */
#define ECHO_COUNT 3

/*
 * rx buffers: a whole Ethernet frame of the largest MTU (1500) and the header fit in
 * 1526 bytes; without MRG_RXBUF each buffer must hold a whole frame (5.1.6.3.1).
 */
#define RX_BUFFERS 8
#define RX_BUF_LEN 2048
#define TX_BUF_LEN 2048

/*
 * Waits, in polls of the used ring (each one also a VM exit: microseconds here, far
 * less on hardware KVM). The gateway answers within milliseconds of the frame leaving
 * the tap; the bounds only keep a lost frame from hanging the guest.
 */
#define TX_POLLS 400000
#define REPLY_POLLS 200000 /* per attempt */
#define ATTEMPTS 5

static char cmdline[4096];
static struct virtio_dev dev;
static struct virtq_rings rx_rings;
static struct virtq_rings tx_rings;
static struct virtq rxq;
static struct virtq txq;
static u8 rx_bufs[RX_BUFFERS][RX_BUF_LEN] __attribute__((aligned(64)));
static int rx_buf_of_head[VIRTQ_MAX_SIZE]; /* which rx buffer a posted head holds */
static u8 tx_buf[TX_BUF_LEN] __attribute__((aligned(64)));

static u8 my_mac[6];
static u8 my_ip[4];
static u8 gw_ip[4];
static u8 gw_mac[6];
static int gw_mac_known;
static u32 echo_seq;        /* the sequence number of the echo being waited for */
static int echo_answered;   /* its reply arrived and was right */
static int arp_request_answered;
static u32 arp_requests_answered;
static u32 frames_ignored;
static void fail(const char *what)
{
	check_fail(WHO, what);
}

/* ---- output ------------------------------------------------------------------------ */

static void put_hex2(u8 b)
{
	static const char digits[] = "0123456789abcdef";
	serial_putc(digits[b >> 4]);
	serial_putc(digits[b & 15]);
}

static void put_mac(const u8 *mac)
{
	for (u32 i = 0; i < 6; i++) {
		if (i)
			serial_putc(':');
		put_hex2(mac[i]);
	}
}

static void put_ip(const u8 *ip)
{
	for (u32 i = 0; i < 4; i++) {
		if (i)
			serial_putc('.');
		serial_put_u64(ip[i]);
	}
}

/* ---- bytes ------------------------------------------------------------------------- */

static u16 get16(const u8 *p)
{
	return (u16)((p[0] << 8) | p[1]);
}

static void set16(u8 *p, u16 v)
{
	p[0] = (u8)(v >> 8);
	p[1] = (u8)v;
}

static void copy(u8 *dst, const u8 *src, u32 n)
{
	for (u32 i = 0; i < n; i++)
		((volatile u8 *)dst)[i] = src[i];
}

static int same(const u8 *a, const u8 *b, u32 n)
{
	for (u32 i = 0; i < n; i++)
		if (a[i] != b[i])
			return 0;
	return 1;
}

/* The Internet checksum (RFC 1071): the one's complement of the one's complement sum. */
static u16 inet_checksum(const u8 *p, u32 len)
{
	u32 sum = 0;
	for (u32 i = 0; i + 1 < len; i += 2)
		sum += get16(p + i);
	if (len & 1)
		sum += (u32)p[len - 1] << 8;
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (u16)~sum;
}

/* The echo payload of sequence `seq`: a pattern that differs between echoes. */
static u8 echo_byte(u32 seq, u32 i)
{
	return (u8)(i * 3 + seq * 41 + 0x20);
}

/* ---- command line ------------------------------------------------------------------ */

/* Parses "a.b.c.d" at the value of `key` (with its '='); returns 1 if found and valid. */
static int cmdline_ip(const char *key, u8 *ip)
{
	const char *p = cmdline;
	u32 klen = 0;
	while (key[klen])
		klen++;
	while (*p) {
		while (*p == ' ')
			p++;
		u32 k = 0;
		while (k < klen && p[k] == key[k])
			k++;
		if (k == klen) {
			const char *s = p + klen;
			for (u32 i = 0; i < 4; i++) {
				u32 v = 0, digits = 0;
				while (*s >= '0' && *s <= '9' && digits < 4) {
					v = v * 10 + (u32)(*s++ - '0');
					digits++;
				}
				if (!digits || v > 255)
					return 0;
				if (i < 3 && *s++ != '.')
					return 0;
				ip[i] = (u8)v;
			}
			return *s == 0 || *s == ' ';
		}
		while (*p && *p != ' ')
			p++;
	}
	return 0;
}

/* ---- queues ------------------------------------------------------------------------ */

static void post_rx(int buffer)
{
	struct vbuf b;
	b.addr = (uptr)rx_bufs[buffer];
	b.len = RX_BUF_LEN;
	b.writable = 1;
	int head = virtq_add(&rxq, &b, 1);
	if (head < 0) {
		fail("no free rx descriptor to post a buffer");
		return;
	}
	rx_buf_of_head[head] = buffer;
}

/*
 * Sends the frame of `len` bytes at tx_buf + NET_HDR_LEN (header zeroed: no checksum or
 * segmentation offload asked for) and waits until the device has taken it, so that
 * tx_buf may be reused. Returns 1 on success.
 */
static int send_frame(u32 len)
{
	for (u32 i = 0; i < NET_HDR_LEN; i++)
		tx_buf[i] = 0;
	struct vbuf b;
	b.addr = (uptr)tx_buf;
	b.len = NET_HDR_LEN + len;
	b.writable = 0;
	int head = virtq_add(&txq, &b, 1);
	if (head < 0) {
		fail("no free tx descriptor");
		return 0;
	}
	virtq_kick(&dev, &txq);
	u32 used_len;
	int used = virtq_wait_used(&txq, &used_len, TX_POLLS);
	if (used == -1) {
		fail("timeout: the device did not take a tx frame");
		return 0;
	}
	if (used != head) {
		fail("the device returned a tx head that was never posted");
		return 0;
	}
	return 1;
}

/* ---- frames out -------------------------------------------------------------------- */

static u8 *eth_header(const u8 *dst, u16 type)
{
	u8 *f = tx_buf + NET_HDR_LEN;
	copy(f, dst, 6);
	copy(f + 6, my_mac, 6);
	set16(f + 12, type);
	return f + ETH_HLEN;
}

static void send_arp(u16 op, const u8 *dst_mac, const u8 *target_mac, const u8 *target_ip)
{
	u8 *a = eth_header(dst_mac, ETH_P_ARP);
	set16(a, 1);        /* hardware: Ethernet */
	set16(a + 2, ETH_P_IP);
	a[4] = 6;
	a[5] = 4;
	set16(a + 6, op);
	copy(a + 8, my_mac, 6);
	copy(a + 14, my_ip, 4);
	copy(a + 18, target_mac, 6);
	copy(a + 24, target_ip, 4);
	/* Pad to the 60-byte Ethernet minimum, as a NIC would. */
	for (u32 i = ETH_HLEN + ARP_LEN; i < 60; i++)
		tx_buf[NET_HDR_LEN + i] = 0;
	send_frame(60);
}

static void send_echo_request(u32 seq)
{
	u8 *ip = eth_header(gw_mac, ETH_P_IP);
	u32 total = IP_HLEN + ICMP_HLEN + ECHO_PAYLOAD;
	ip[0] = 0x45; /* version 4, 5 words of header */
	ip[1] = 0;
	set16(ip + 2, (u16)total);
	set16(ip + 4, (u16)(0x1000 + seq)); /* identification */
	set16(ip + 6, 0x4000);              /* don't fragment */
	ip[8] = 64;                         /* TTL */
	ip[9] = IPPROTO_ICMP;
	set16(ip + 10, 0);
	copy(ip + 12, my_ip, 4);
	copy(ip + 16, gw_ip, 4);
	set16(ip + 10, inet_checksum(ip, IP_HLEN));

	u8 *icmp = ip + IP_HLEN;
	icmp[0] = ICMP_ECHO_REQUEST;
	icmp[1] = 0;
	set16(icmp + 2, 0);
	set16(icmp + 4, ECHO_ID);
	set16(icmp + 6, (u16)seq);
	for (u32 i = 0; i < ECHO_PAYLOAD; i++)
		icmp[ICMP_HLEN + i] = echo_byte(seq, i);
	set16(icmp + 2, inet_checksum(icmp, ICMP_HLEN + ECHO_PAYLOAD));
	send_frame(ETH_HLEN + total);
}

/* ---- frames in --------------------------------------------------------------------- */

static void handle_arp(const u8 *a, u32 len)
{
	if (len < ARP_LEN || get16(a) != 1 || get16(a + 2) != ETH_P_IP || a[4] != 6 || a[5] != 4)
		return;
	u16 op = get16(a + 6);
	const u8 *sender_mac = a + 8, *sender_ip = a + 14, *target_ip = a + 24;
	if (op == ARP_REQUEST && same(target_ip, my_ip, 4)) {
		/* Someone (the gateway's kernel) asks for us: answer, or it never replies. */
		u8 mac[6], ip[4];
		copy(mac, sender_mac, 6);
		copy(ip, sender_ip, 4);
		serial_puts(WHO ": answering an ARP request from ");
		put_ip(ip);
		serial_puts("\n");
		send_arp(ARP_REPLY, mac, mac, ip);
		arp_requests_answered++;
		arp_request_answered = 1;
	} else if (op == ARP_REPLY && same(sender_ip, gw_ip, 4) && same(target_ip, my_ip, 4)) {
		copy(gw_mac, sender_mac, 6);
		gw_mac_known = 1;
	}
}

static void handle_ipv4(const u8 *ip, u32 len)
{
	if (len < IP_HLEN || (ip[0] >> 4) != 4)
		return;
	u32 ihl = (u32)(ip[0] & 15) * 4;
	u32 total = get16(ip + 2);
	if (ip[9] != IPPROTO_ICMP || !same(ip + 12, gw_ip, 4) || !same(ip + 16, my_ip, 4))
		return;
	if (ihl < IP_HLEN || total < ihl || total > len) {
		fail("a malformed IPv4 packet from the gateway");
		return;
	}
	/* A header with its checksum sums to 0xffff: its complement is 0. */
	if (inet_checksum(ip, ihl) != 0) {
		fail("an IPv4 header checksum from the gateway is wrong");
		return;
	}
	const u8 *icmp = ip + ihl;
	u32 icmp_len = total - ihl;
	if (icmp_len < ICMP_HLEN || icmp[0] != ICMP_ECHO_REPLY)
		return;
	if (inet_checksum(icmp, icmp_len) != 0) {
		fail("an ICMP checksum from the gateway is wrong");
		return;
	}
	if (get16(icmp + 4) != ECHO_ID || get16(icmp + 6) > echo_seq) {
		fail("an echo reply with an unexpected id or sequence");
		return;
	}
	if (get16(icmp + 6) != echo_seq) {
		frames_ignored++; /* a late answer to an earlier echo, sent again */
		return;
	}
	if (icmp_len != ICMP_HLEN + ECHO_PAYLOAD) {
		fail("an echo reply with a payload of the wrong length");
		return;
	}
	for (u32 i = 0; i < ECHO_PAYLOAD; i++) {
		if (icmp[ICMP_HLEN + i] != echo_byte(echo_seq, i)) {
			fail("an echo reply whose payload differs from the request's");
			return;
		}
	}
	echo_answered = 1;
}

static void handle_frame(const u8 *buf, u32 len)
{
	if (len < NET_HDR_LEN + ETH_HLEN) {
		fail("an rx frame shorter than the header and an Ethernet header");
		return;
	}
	/*
	 * Without GUEST_CSUM and GUEST_TSO* the device must not hand over a frame with a
	 * partial checksum or a GSO frame; without MRG_RXBUF num_buffers is 1 (5.1.6.4).
	 */
	if (buf[0] & NET_HDR_F_NEEDS_CSUM)
		fail("an rx frame with NEEDS_CSUM, which was not negotiated");
	if (buf[1] != 0)
		fail("an rx GSO frame, which was not negotiated");
	if (buf[NET_HDR_NUM_BUFFERS] != 1 || buf[NET_HDR_NUM_BUFFERS + 1] != 0)
		fail("an rx frame whose num_buffers is not 1");
	const u8 *f = buf + NET_HDR_LEN;
	len -= NET_HDR_LEN;
	static const u8 broadcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
	if (!same(f, my_mac, 6) && !same(f, broadcast, 6)) {
		frames_ignored++; /* multicast (IPv6 neighbour discovery, say) */
		return;
	}
	u16 type = get16(f + 12);
	if (type == ETH_P_ARP)
		handle_arp(f + ETH_HLEN, len - ETH_HLEN);
	else if (type == ETH_P_IP)
		handle_ipv4(f + ETH_HLEN, len - ETH_HLEN);
	else
		frames_ignored++;
}

/* Handles every frame the device has returned; gives each buffer back. */
static void poll_rx(void)
{
	int posted = 0;
	for (;;) {
		u32 len;
		int head = virtq_get_used(&rxq, &len);
		if (head == -1)
			break;
		if (head < 0) {
			fail("the device returned an rx head that was never posted");
			break;
		}
		int buffer = rx_buf_of_head[head];
		if (len > RX_BUF_LEN)
			fail("the device claims to have written more than the rx buffer holds");
		else
			handle_frame(rx_bufs[buffer], len);
		post_rx(buffer);
		posted = 1;
	}
	if (posted)
		virtq_kick(&dev, &rxq);
}

/* Polls rx until *flag is set, at most `polls` times; returns *flag. */
static int wait_for(const int *flag, u32 polls)
{
	for (u32 i = 0; i < polls && !*(volatile const int *)flag; i++) {
		poll_rx();
		virtio_delay();
	}
	return *flag;
}

/* ---- the test ---------------------------------------------------------------------- */

static int resolve_gateway(void)
{
	static const u8 broadcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
	static const u8 unknown[6] = { 0 };
	for (u32 attempt = 0; attempt < ATTEMPTS && !gw_mac_known; attempt++) {
		send_arp(ARP_REQUEST, broadcast, unknown, gw_ip);
		wait_for(&gw_mac_known, REPLY_POLLS);
	}
	if (!gw_mac_known) {
		fail("timeout: no ARP reply from the gateway");
		return 0;
	}
	serial_puts(WHO ": gateway is at ");
	put_mac(gw_mac);
	serial_puts("\n");
	return 1;
}

static void ping_gateway(u32 seq)
{
	echo_seq = seq;
	echo_answered = 0;
	for (u32 attempt = 0; attempt < ATTEMPTS && !echo_answered; attempt++) {
		send_echo_request(seq);
		wait_for(&echo_answered, REPLY_POLLS);
	}
	if (!echo_answered) {
		fail("timeout: no echo reply from the gateway");
		return;
	}
	serial_puts(WHO ": echo reply from ");
	put_ip(gw_ip);
	serial_puts(" seq ");
	serial_put_u64(seq);
	serial_puts(" ok\n");
}

static void finish(void)
{
	check_verdict(WHO);
	guest_exit(0);
}

void guest_main(u32 start_info)
{
	const char *err = pvh_cmdline(start_info, cmdline, sizeof(cmdline));
	if (err) {
		fail(err);
		finish();
	}
	if (!cmdline_ip("test.ip=", my_ip) || !cmdline_ip("test.gateway=", gw_ip)) {
		fail("test.ip= and test.gateway= (dotted quads) are needed on the command line");
		finish();
	}
	if (virtio_find(WHO, cmdline, VIRTIO_ID_NET, &dev, 1) != 1) {
		fail("no virtio-net device on the command line");
		finish();
	}
	err = virtio_negotiate(&dev, VIRTIO_NET_F_MAC);
	if (!err && !(dev.accepted & VIRTIO_NET_F_MAC))
		err = "the device does not offer VIRTIO_NET_F_MAC";
	if (!err)
		err = virtq_setup(&dev, &rxq, RX_QUEUE, VIRTQ_MAX_SIZE, &rx_rings);
	if (!err)
		err = virtq_setup(&dev, &txq, TX_QUEUE, VIRTQ_MAX_SIZE, &tx_rings);
	if (!err)
		err = virtio_driver_ok(&dev);
	if (err) {
		fail(err);
		finish();
	}
	for (u32 i = 0; i < 6; i++)
		my_mac[i] = virtio_config8(&dev, NET_CFG_MAC + i);
	serial_puts(WHO ": device at ");
	put_hex(dev.base);
	serial_puts(" features=");
	put_hex(dev.offered);
	serial_puts(" accepted=");
	put_hex(dev.accepted);
	serial_puts("\n");
	serial_puts(WHO ": mac ");
	put_mac(my_mac);
	serial_puts("\n");
	serial_puts(WHO ": ip ");
	put_ip(my_ip);
	serial_puts(" gateway ");
	put_ip(gw_ip);
	serial_puts("\n");

	for (u32 i = 0; i < RX_BUFFERS; i++)
		post_rx((int)i);
	virtq_kick(&dev, &rxq);

	if (resolve_gateway()) {
		for (u32 seq = 1; seq <= ECHO_COUNT; seq++)
			ping_gateway(seq);
	}
	u32 want_arp;
	if (cmdline_u32(cmdline, "test.arp_from_gateway=", &want_arp) && want_arp &&
	    !wait_for(&arp_request_answered, ATTEMPTS * REPLY_POLLS))
		fail("timeout: the gateway never asked for the guest's MAC");
	serial_puts(WHO ": answered ");
	serial_put_u64(arp_requests_answered);
	serial_puts(" ARP request(s), ignored ");
	serial_put_u64(frames_ignored);
	serial_puts(" frame(s)\n");

	if (virtio_status(&dev) & VIRTIO_STATUS_NEEDS_RESET)
		fail("the device set DEVICE_NEEDS_RESET");
	err = virtio_reset(&dev);
	if (err)
		fail(err);
	finish();
}
