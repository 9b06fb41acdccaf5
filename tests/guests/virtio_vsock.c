/*
 * virtio-vsock through a real vCPU (virtio 1.2, 5.10), stream sockets, polling. The
 * command line gives the ports:
 *   test.cid=<n>            the guest CID the device must report (optional check)
 *   test.refused_port=<p>   (c) connect to CID 2 port p, where nothing listens: expect RST
 *   test.connect_port=<p>   (b) connect to CID 2 port p, send GUEST_PING, read one line
 *                               back, print it, then SHUTDOWN and expect RST
 *   test.listen_port=<p>    (a) accept a connection from the host on port p, read one
 *                               line (of any length), echo it back upper-cased, then wait
 *                               for the host to close (SHUTDOWN or RST)
 * Phases run in the order c, b, a; packets of any connection are handled whenever they
 * arrive. The guest advertises RX_BUF_ALLOC bytes of receive buffer, checks the device
 * never sends more than that credit allows, and sends CREDIT_UPDATE as it consumes; it
 * respects the device's credit when sending. Prints "virtio-vsock: ..." result lines and
 * "virtio-vsock: PASS" or "virtio-vsock: FAIL ..."; then resets.
 */
#include "common/virtio.h"

#define WHO "virtio-vsock"

#define VSOCK_HOST_CID 2
#define VSOCK_TYPE_STREAM 1
#define OP_REQUEST 1
#define OP_RESPONSE 2
#define OP_RST 3
#define OP_SHUTDOWN 4
#define OP_RW 5
#define OP_CREDIT_UPDATE 6
#define OP_CREDIT_REQUEST 7
#define SHUTDOWN_RCV 1
#define SHUTDOWN_SEND 2

#define HDR_LEN 44
#define RX_QUEUE 0
#define TX_QUEUE 1
#define EVENT_QUEUE 2

/* Receive side: each rx buffer holds a header and up to RX_PAYLOAD bytes. */
#define RX_BUFFERS 8
#define RX_PAYLOAD 512
/* Per-connection receive buffer = the credit the guest advertises (buf_alloc). */
#define RX_BUF_ALLOC 2048
/* Largest payload of one RW packet the guest sends. */
#define TX_CHUNK 1024
#define EVENT_BUFFERS 4
#define MAX_CONNS 4
#define FIRST_LOCAL_PORT 49152

/*
 * Bounds, counted in polls (one VM exit each: microseconds on hardware KVM, tens of
 * microseconds on PVM). A wait for the host or the device gives up after WAIT_POLLS.
 */
#define WAIT_POLLS 1500000
/* How long buffered data may sit before the guest consumes it without a full buffer. */
#define IDLE_POLLS 20000

#define GUEST_PING "guest-to-host ping\n"

enum conn_state { FREE, CONNECTING, ESTABLISHED, CLOSED };

struct conn {
	enum conn_state state;
	int listening_side; /* accepted from the host */
	u32 local_port, peer_port;
	u32 got_rst, peer_shutdown;
	u32 peer_buf_alloc, peer_fwd_cnt; /* the device's view of its buffer */
	u32 tx_cnt;                        /* bytes we sent */
	u32 fwd_cnt;                       /* bytes we consumed */
	u32 rx_len;                        /* bytes buffered, not yet consumed */
	u32 rx_total;                      /* bytes received in all */
	u32 credit_full;                   /* times the device filled our credit */
	u8 rx[RX_BUF_ALLOC];
};

static char cmdline[4096];
static struct virtio_dev dev;
static struct virtq_rings rx_rings, tx_rings, event_rings;
static struct virtq rxq, txq, eventq;
static u8 rx_bufs[RX_BUFFERS][HDR_LEN + RX_PAYLOAD];
static int rx_head_buf[VIRTQ_MAX_SIZE]; /* rx buffer index by descriptor head */
static u32 event_bufs[EVENT_BUFFERS][2];
static int event_head_buf[VIRTQ_MAX_SIZE];
static u8 tx_hdr[HDR_LEN];
static u8 tx_payload[TX_CHUNK];
static u8 line[RX_BUF_ALLOC];
static struct conn conns[MAX_CONNS];
static u64 guest_cid;
static u32 listen_port;
static u32 next_local_port = FIRST_LOCAL_PORT;
static u32 credit_violations;
static u32 protocol_errors;

static void put_le16(u8 *p, u16 v)
{
	p[0] = (u8)v;
	p[1] = (u8)(v >> 8);
}
static void put_le32(u8 *p, u32 v)
{
	for (u32 i = 0; i < 4; i++)
		p[i] = (u8)(v >> (8 * i));
}
static void put_le64(u8 *p, u64 v)
{
	put_le32(p, (u32)v);
	put_le32(p + 4, (u32)(v >> 32));
}
static u16 get_le16(const u8 *p)
{
	return (u16)(p[0] | (p[1] << 8));
}
static u32 get_le32(const u8 *p)
{
	return (u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24);
}
static u64 get_le64(const u8 *p)
{
	return (u64)get_le32(p) | ((u64)get_le32(p + 4) << 32);
}

struct pkt {
	u64 src_cid, dst_cid;
	u32 src_port, dst_port, len;
	u16 type, op;
	u32 flags, buf_alloc, fwd_cnt;
};

static void parse_hdr(const u8 *p, struct pkt *h)
{
	h->src_cid = get_le64(p);
	h->dst_cid = get_le64(p + 8);
	h->src_port = get_le32(p + 16);
	h->dst_port = get_le32(p + 20);
	h->len = get_le32(p + 24);
	h->type = get_le16(p + 28);
	h->op = get_le16(p + 30);
	h->flags = get_le32(p + 32);
	h->buf_alloc = get_le32(p + 36);
	h->fwd_cnt = get_le32(p + 40);
}

static void say(const char *text)
{
	serial_puts(WHO ": ");
	serial_puts(text);
}

static void fail(const char *what)
{
	check_fail(WHO, what);
}

static const char *op_name(u16 op)
{
	switch (op) {
	case OP_REQUEST:
		return "REQUEST";
	case OP_RESPONSE:
		return "RESPONSE";
	case OP_RST:
		return "RST";
	case OP_SHUTDOWN:
		return "SHUTDOWN";
	case OP_RW:
		return "RW";
	case OP_CREDIT_UPDATE:
		return "CREDIT_UPDATE";
	case OP_CREDIT_REQUEST:
		return "CREDIT_REQUEST";
	default:
		return "unknown op";
	}
}

/*
 * Sends one packet (header and payload in separate descriptors) and waits for the device
 * to return it. Ports are (local, peer), the peer is always the host.
 */
static int send_pkt(u32 local_port, u32 peer_port, u16 op, u32 flags, const u8 *payload,
		    u32 len, u32 fwd_cnt)
{
	put_le64(tx_hdr, guest_cid);
	put_le64(tx_hdr + 8, VSOCK_HOST_CID);
	put_le32(tx_hdr + 16, local_port);
	put_le32(tx_hdr + 20, peer_port);
	put_le32(tx_hdr + 24, len);
	put_le16(tx_hdr + 28, VSOCK_TYPE_STREAM);
	put_le16(tx_hdr + 30, op);
	put_le32(tx_hdr + 32, flags);
	put_le32(tx_hdr + 36, RX_BUF_ALLOC);
	put_le32(tx_hdr + 40, fwd_cnt);
	struct vbuf bufs[2] = {
		{ (uptr)tx_hdr, HDR_LEN, 0 },
		{ (uptr)payload, len, 0 },
	};
	int head = virtq_add(&txq, bufs, len ? 2 : 1);
	if (head < 0) {
		fail("the tx queue is full");
		return 0;
	}
	virtq_kick(&dev, &txq);
	u32 used_len;
	int used = virtq_wait_used(&txq, &used_len, WAIT_POLLS);
	if (used != head) {
		fail(used == -1 ? "the device did not return a tx packet"
				: "the device returned a tx head it was not given");
		return 0;
	}
	return 1;
}

static int conn_send_ctl(struct conn *c, u16 op, u32 flags)
{
	return send_pkt(c->local_port, c->peer_port, op, flags, 0, 0, c->fwd_cnt);
}

static struct conn *conn_alloc(void)
{
	for (u32 i = 0; i < MAX_CONNS; i++) {
		if (conns[i].state == FREE || conns[i].state == CLOSED) {
			memset(&conns[i], 0, sizeof(conns[i]));
			return &conns[i];
		}
	}
	return 0;
}

static struct conn *conn_find(u32 local_port, u32 peer_port)
{
	for (u32 i = 0; i < MAX_CONNS; i++) {
		struct conn *c = &conns[i];
		if (c->state != FREE && c->state != CLOSED && c->local_port == local_port &&
		    c->peer_port == peer_port)
			return c;
	}
	return 0;
}

static void post_rx(u32 i)
{
	struct vbuf b = { (uptr)rx_bufs[i], HDR_LEN + RX_PAYLOAD, 1 };
	int head = virtq_add(&rxq, &b, 1);
	if (head < 0) {
		fail("the rx queue is full");
		return;
	}
	rx_head_buf[head] = (int)i;
}

static void post_event(u32 i)
{
	struct vbuf b = { (uptr)event_bufs[i], sizeof(event_bufs[i]), 1 };
	int head = virtq_add(&eventq, &b, 1);
	if (head >= 0)
		event_head_buf[head] = (int)i;
}

static void protocol_error(const char *what, const struct pkt *h)
{
	protocol_errors++;
	say("FAIL ");
	serial_puts(what);
	serial_puts(": op=");
	serial_puts(op_name(h->op));
	serial_puts(" src=");
	serial_put_u64(h->src_cid);
	serial_puts(":");
	serial_put_u64(h->src_port);
	serial_puts(" dst=");
	serial_put_u64(h->dst_cid);
	serial_puts(":");
	serial_put_u64(h->dst_port);
	serial_puts(" len=");
	serial_put_u64(h->len);
	serial_puts("\n");
	check_failed();
}

static void handle_pkt(const struct pkt *h, const u8 *payload)
{
	if (h->dst_cid != guest_cid || h->src_cid != VSOCK_HOST_CID) {
		protocol_error("packet with unexpected CIDs", h);
		return;
	}
	if (h->type != VSOCK_TYPE_STREAM) {
		protocol_error("packet with a type other than STREAM", h);
		return;
	}
	struct conn *c = conn_find(h->dst_port, h->src_port);
	if (!c) {
		if (h->op == OP_REQUEST && h->dst_port == listen_port) {
			c = conn_alloc();
			if (!c) {
				send_pkt(h->dst_port, h->src_port, OP_RST, 0, 0, 0, 0);
				return;
			}
			c->state = ESTABLISHED;
			c->listening_side = 1;
			c->local_port = h->dst_port;
			c->peer_port = h->src_port;
			c->peer_buf_alloc = h->buf_alloc;
			c->peer_fwd_cnt = h->fwd_cnt;
			say("accepted a connection on port ");
			serial_put_u64(h->dst_port);
			serial_puts(" from host port ");
			serial_put_u64(h->src_port);
			serial_puts("\n");
			conn_send_ctl(c, OP_RESPONSE, 0);
		} else if (h->op != OP_RST) {
			/* 5.10.6.4: no such socket, answer RST. */
			send_pkt(h->dst_port, h->src_port, OP_RST, 0, 0, 0, 0);
		}
		return;
	}
	c->peer_buf_alloc = h->buf_alloc;
	c->peer_fwd_cnt = h->fwd_cnt;
	switch (h->op) {
	case OP_RESPONSE:
		if (c->state == CONNECTING)
			c->state = ESTABLISHED;
		else
			protocol_error("RESPONSE on an established connection", h);
		break;
	case OP_RST:
		c->got_rst = 1;
		c->state = CLOSED;
		break;
	case OP_SHUTDOWN:
		c->peer_shutdown |= h->flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
		if (c->peer_shutdown == (SHUTDOWN_RCV | SHUTDOWN_SEND)) {
			/* The peer is done both ways: finish with RST (5.10.6.6). */
			conn_send_ctl(c, OP_RST, 0);
			c->state = CLOSED;
		}
		break;
	case OP_RW:
		if (c->state != ESTABLISHED) {
			protocol_error("RW before the connection is established", h);
			break;
		}
		if (h->len > RX_BUF_ALLOC - c->rx_len) {
			/* More than the credit we gave (buf_alloc - (received - fwd_cnt)). */
			credit_violations++;
			protocol_error("the device sent more than the credit allows", h);
			break;
		}
		memcpy(c->rx + c->rx_len, payload, h->len);
		c->rx_len += h->len;
		c->rx_total += h->len;
		if (c->rx_len == RX_BUF_ALLOC)
			c->credit_full++;
		break;
	case OP_CREDIT_UPDATE:
		break;
	case OP_CREDIT_REQUEST:
		conn_send_ctl(c, OP_CREDIT_UPDATE, 0);
		break;
	default:
		protocol_error("unexpected op", h);
		break;
	}
}

/* Handles everything the device has returned. Returns how many rx packets arrived. */
static u32 poll_device(void)
{
	u32 count = 0, len;
	int head;
	while ((head = virtq_get_used(&rxq, &len)) != -1) {
		if (head < 0) {
			fail("the device returned an rx head it was not given");
			return count;
		}
		int b = rx_head_buf[head];
		struct pkt h;
		parse_hdr(rx_bufs[b], &h);
		count++;
		if (len < HDR_LEN || h.len > RX_PAYLOAD || h.len > len - HDR_LEN) {
			/* The used length must cover the header and the payload it announces. */
			protocol_error("rx packet longer than its used length or buffer", &h);
		} else {
			handle_pkt(&h, rx_bufs[b] + HDR_LEN);
		}
		post_rx((u32)b);
	}
	if (count)
		virtq_kick(&dev, &rxq);
	while ((head = virtq_get_used(&eventq, &len)) != -1) {
		if (head < 0)
			break;
		int b = event_head_buf[head];
		say("event id=");
		serial_put_u64(event_bufs[b][0]);
		serial_puts(event_bufs[b][0] == 0 ? " (TRANSPORT_RESET)\n" : "\n");
		post_event((u32)b);
		virtq_kick(&dev, &eventq);
	}
	return count;
}

/* The device's free credit for our sends. */
static u32 peer_credit(const struct conn *c)
{
	u32 in_flight = c->tx_cnt - c->peer_fwd_cnt;
	return in_flight > c->peer_buf_alloc ? 0 : c->peer_buf_alloc - in_flight;
}

/* Sends `len` bytes on `c`, within the device's credit. Returns 1 on success. */
static int conn_write(struct conn *c, const u8 *data, u32 len)
{
	u32 sent = 0;
	u32 waited = 0;
	int asked = 0;
	while (sent < len) {
		if (c->state != ESTABLISHED) {
			fail("the connection closed while sending");
			return 0;
		}
		u32 n = len - sent;
		u32 credit = peer_credit(c);
		if (n > TX_CHUNK)
			n = TX_CHUNK;
		if (n > credit)
			n = credit;
		if (n == 0) {
			if (!asked) {
				conn_send_ctl(c, OP_CREDIT_REQUEST, 0);
				asked = 1;
			}
			if (!poll_device())
				virtio_delay();
			if (++waited > WAIT_POLLS) {
				fail("no credit from the device to send");
				return 0;
			}
			continue;
		}
		asked = 0;
		waited = 0;
		memcpy(tx_payload, data + sent, n);
		if (!send_pkt(c->local_port, c->peer_port, OP_RW, 0, tx_payload, n, c->fwd_cnt))
			return 0;
		c->tx_cnt += n;
		sent += n;
	}
	return 1;
}

/* Takes the buffered bytes of `c` into `out` and gives the credit back. */
static u32 conn_consume(struct conn *c, u8 *out)
{
	u32 n = c->rx_len;
	memcpy(out, c->rx, n);
	c->rx_len = 0;
	c->fwd_cnt += n;
	if (n && c->state == ESTABLISHED)
		conn_send_ctl(c, OP_CREDIT_UPDATE, 0);
	return n;
}

static int has_newline(const u8 *p, u32 n)
{
	for (u32 i = 0; i < n; i++)
		if (p[i] == '\n')
			return 1;
	return 0;
}

/* Waits (bounded) until `c` leaves CONNECTING. */
static void wait_connected(struct conn *c)
{
	for (u32 i = 0; i < WAIT_POLLS && c->state == CONNECTING; i++) {
		if (!poll_device())
			virtio_delay();
	}
}

static struct conn *connect(u32 port)
{
	struct conn *c = conn_alloc();
	if (!c) {
		fail("no free connection slot");
		return 0;
	}
	c->state = CONNECTING;
	c->local_port = next_local_port++;
	c->peer_port = port;
	conn_send_ctl(c, OP_REQUEST, 0);
	wait_connected(c);
	return c;
}

/* (c): a connection to a host port where nothing listens must be refused. */
static void phase_refused(u32 port)
{
	struct conn *c = connect(port);
	if (!c)
		return;
	say("connect to host port ");
	serial_put_u64(port);
	if (c->state == CLOSED && c->got_rst) {
		serial_puts(": refused (RST) ok\n");
	} else {
		serial_puts(c->state == ESTABLISHED ? ": FAIL accepted, expected RST\n"
						    : ": FAIL no answer, expected RST\n");
		check_failed();
		if (c->state == ESTABLISHED)
			conn_send_ctl(c, OP_RST, 0);
		c->state = CLOSED;
	}
}

/* Reads one line (up to '\n') of at most RX_BUF_ALLOC bytes into `line`. */
static u32 read_line(struct conn *c)
{
	u32 got = 0;
	for (u32 i = 0; i < WAIT_POLLS; i++) {
		if (c->rx_len && has_newline(c->rx, c->rx_len)) {
			if (got + c->rx_len > sizeof(line))
				break;
			got += conn_consume(c, line + got);
			return got;
		}
		if (c->state != ESTABLISHED)
			break;
		if (!poll_device())
			virtio_delay();
	}
	return 0;
}

/* Waits (bounded) for the RST that answers our SHUTDOWN. */
static int shutdown_and_wait(struct conn *c)
{
	conn_send_ctl(c, OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND);
	for (u32 i = 0; i < WAIT_POLLS && c->state != CLOSED; i++) {
		if (!poll_device())
			virtio_delay();
	}
	return c->state == CLOSED;
}

/* (b): the guest connects to the host, sends a line and reads the reply. */
static void phase_connect(u32 port)
{
	struct conn *c = connect(port);
	if (!c)
		return;
	if (c->state != ESTABLISHED) {
		say("connect to host port ");
		serial_put_u64(port);
		serial_puts(c->got_rst ? ": FAIL refused (RST)\n" : ": FAIL no answer\n");
		check_failed();
		c->state = CLOSED;
		return;
	}
	say("connected to host port ");
	serial_put_u64(port);
	serial_puts(" from guest port ");
	serial_put_u64(c->local_port);
	serial_puts("\n");
	static const char ping[] = GUEST_PING;
	if (!conn_write(c, (const u8 *)ping, sizeof(ping) - 1))
		return;
	u32 n = read_line(c);
	if (n == 0) {
		fail("no reply line from the host");
		return;
	}
	say("host replied \"");
	put_bytes(line, n - 1);
	serial_puts("\"\n");
	if (shutdown_and_wait(c)) {
		say("connect: shutdown answered with ");
		serial_puts(c->got_rst ? "RST ok\n" : "close\n");
	} else {
		fail("no RST after our SHUTDOWN");
	}
}

static struct conn *accepted_conn(void)
{
	for (u32 i = 0; i < MAX_CONNS; i++) {
		struct conn *c = &conns[i];
		if (c->listening_side && c->state == ESTABLISHED)
			return c;
	}
	return 0;
}

static u8 upper(u8 b)
{
	return b >= 'a' && b <= 'z' ? (u8)(b - 'a' + 'A') : b;
}

/*
 * (a): the host connected to our port; echo one line upper-cased. The guest consumes
 * only when its buffer is full, a line is complete, or data sat idle for IDLE_POLLS, so
 * a long line makes the device fill the credit window and wait for CREDIT_UPDATE.
 */
static void phase_listen(void)
{
	struct conn *c = 0;
	for (u32 i = 0; i < WAIT_POLLS && !(c = accepted_conn()); i++) {
		if (!poll_device())
			virtio_delay();
	}
	if (!c) {
		fail("the host did not connect to the listening port");
		return;
	}
	u32 total = 0, idle = 0, done = 0, waited = 0;
	while (!done) {
		if (c->rx_len == 0 && c->state != ESTABLISHED) {
			fail("the host closed before a full line arrived");
			return;
		}
		int line_end = c->rx_len && has_newline(c->rx, c->rx_len);
		if (c->rx_len && (line_end || c->rx_len == RX_BUF_ALLOC || idle > IDLE_POLLS)) {
			u32 n = conn_consume(c, line);
			for (u32 i = 0; i < n; i++)
				line[i] = upper(line[i]);
			if (!conn_write(c, line, n))
				return;
			total += n;
			done = line_end;
			idle = 0;
			waited = 0;
			continue;
		}
		if (poll_device()) {
			idle = 0;
			waited = 0;
		} else {
			virtio_delay();
			if (c->rx_len)
				idle++;
			if (++waited > WAIT_POLLS) {
				fail("the host's line did not arrive");
				return;
			}
		}
	}
	say("listen: echoed ");
	serial_put_u64(total);
	serial_puts(" bytes upper-cased on port ");
	serial_put_u64(c->local_port);
	serial_puts(" credit_full=");
	serial_put_u64(c->credit_full);
	serial_puts("\n");
	/* The host closes its end: expect SHUTDOWN (answered with RST) or RST. */
	for (u32 i = 0; i < WAIT_POLLS && c->state == ESTABLISHED; i++) {
		if (!poll_device())
			virtio_delay();
	}
	if (c->state == CLOSED)
		say(c->got_rst ? "listen: host closed (RST)\n" : "listen: host closed (SHUTDOWN)\n");
	else
		fail("the host's close did not reach the guest");
}

void guest_main(u32 start_info)
{
	const char *err = pvh_cmdline(start_info, cmdline, sizeof(cmdline));
	if (err) {
		fail(err);
		guest_exit(1);
	}
	if (virtio_find(WHO, cmdline, VIRTIO_ID_VSOCK, &dev, 1) != 1) {
		fail("no virtio-vsock device on the command line");
		guest_exit(1);
	}
	/* Bit 0 is VIRTIO_VSOCK_F_STREAM (virtio 1.2); accept it if offered. */
	err = virtio_negotiate(&dev, 1ULL << 0);
	if (!err)
		err = virtq_setup(&dev, &rxq, RX_QUEUE, VIRTQ_MAX_SIZE, &rx_rings);
	if (!err)
		err = virtq_setup(&dev, &txq, TX_QUEUE, VIRTQ_MAX_SIZE, &tx_rings);
	if (!err)
		err = virtq_setup(&dev, &eventq, EVENT_QUEUE, VIRTQ_MAX_SIZE, &event_rings);
	if (!err)
		err = virtio_driver_ok(&dev);
	if (err) {
		fail(err);
		guest_exit(1);
	}
	guest_cid = virtio_config64(&dev, 0);
	say("device at ");
	put_hex(dev.base);
	serial_puts(" features=");
	put_hex(dev.offered);
	serial_puts(" guest_cid=");
	serial_put_u64(guest_cid);
	serial_puts("\n");
	u32 want_cid;
	if (cmdline_u32(cmdline, "test.cid=", &want_cid) && want_cid != guest_cid)
		fail("guest_cid differs from test.cid");

	for (u32 i = 0; i < RX_BUFFERS; i++)
		post_rx(i);
	virtq_kick(&dev, &rxq);
	for (u32 i = 0; i < EVENT_BUFFERS; i++)
		post_event(i);
	virtq_kick(&dev, &eventq);

	u32 port;
	if (!cmdline_u32(cmdline, "test.listen_port=", &listen_port))
		listen_port = 0;
	if (cmdline_u32(cmdline, "test.refused_port=", &port))
		phase_refused(port);
	if (cmdline_u32(cmdline, "test.connect_port=", &port))
		phase_connect(port);
	if (listen_port)
		phase_listen();

	if (virtio_status(&dev) & VIRTIO_STATUS_NEEDS_RESET)
		fail("the device set DEVICE_NEEDS_RESET");
	err = virtio_reset(&dev);
	if (err)
		fail(err);
	check_verdict(WHO);
	guest_exit(0);
}
