//! Layer-2 tests of virtio-vsock: a host-side driver plays the guest on real guest
//! memory, and real Unix sockets under a temporary directory play the host.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use husk_devices::virtio::testing::{guest_memory, Desc, TestDriver};
use husk_devices::virtio::vsock::packet::{op, shutdown, PacketHeader, HDR_LEN, TYPE_STREAM};
use husk_devices::virtio::vsock::{
    Vsock, VsockError, CREDIT_UPDATE_THRESHOLD, MAX_PKT_PAYLOAD, RX_QUEUE, TX_BUF_ALLOC, TX_QUEUE,
};
use husk_devices::virtio::{device_type, features, VirtioDevice};

const CID: u64 = 3;
const QSIZE: u16 = 256;
const RX_BUF: u32 = HDR_LEN as u32 + 4096;
/// Give up on anything the device should do "soon" after this long.
const PATIENCE: Duration = Duration::from_secs(10);

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "husk-vsock-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creating a temporary directory for the sockets");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One received packet.
#[derive(Debug, Clone)]
struct Pkt {
    hdr: PacketHeader,
    data: Vec<u8>,
}

/// The guest: a driver, its rx buffers, and what it has received.
struct Guest {
    drv: TestDriver,
    dev: Arc<Mutex<Vsock>>,
    uds: PathBuf,
    /// Guest address of the rx buffer in each descriptor slot.
    rx_addr: Vec<u64>,
    rx_posted: usize,
    started: bool,
    inbox: VecDeque<Pkt>,
    /// Guest-side receive accounting per (guest port, host port): buf_alloc, fwd_cnt.
    credit: HashMap<(u32, u32), (u32, u32)>,
    _dir: TempDir,
}

impl Guest {
    fn new() -> Self {
        Self::with_features(features::VERSION_1 | features::RING_EVENT_IDX)
    }

    fn with_features(features: u64) -> Self {
        let mut guest = Self::unstarted();
        guest.start(features);
        guest
    }

    fn unstarted() -> Self {
        let dir = TempDir::new();
        let uds = dir.0.join("v.sock");
        let dev = Arc::new(Mutex::new(
            Vsock::new(CID, uds.clone()).expect("creating the vsock device"),
        ));
        let drv = TestDriver::new(dev.clone(), guest_memory(64 << 20));
        Self {
            drv,
            dev,
            uds,
            rx_addr: Vec::new(),
            rx_posted: 0,
            started: false,
            inbox: VecDeque::new(),
            credit: HashMap::new(),
            _dir: dir,
        }
    }

    fn start(&mut self, features: u64) {
        self.drv.start(features, QSIZE);
        self.started = true;
        self.rx_posted = 0;
        self.inbox.clear();
        if self.rx_addr.is_empty() {
            self.rx_addr = (0..QSIZE)
                .map(|_| self.drv.alloc(u64::from(RX_BUF)))
                .collect();
        }
        self.post_rx(usize::from(QSIZE));
    }

    /// The driver resets the device.
    fn reset(&mut self) {
        self.drv.reset();
        self.started = false;
    }

    /// Posts `n` rx buffers (one writable descriptor each).
    fn post_rx(&mut self, n: usize) {
        for _ in 0..n {
            // add_chain uses consecutive slots, so the slot is the posting count mod size.
            let slot = self.rx_posted % usize::from(QSIZE);
            let addr = self.rx_addr[slot];
            let head = self
                .drv
                .add_chain(RX_QUEUE, &[Desc::writable(addr, RX_BUF)]);
            assert_eq!(usize::from(head), slot);
            self.rx_posted += 1;
        }
        self.drv.notify(RX_QUEUE);
    }

    fn run(&mut self) {
        self.drv.run_events();
    }

    /// Collects used rx buffers into the inbox and gives them back.
    fn collect(&mut self) {
        if !self.started {
            return;
        }
        let mut reposts = 0;
        while let Some((head, len)) = self.drv.used(RX_QUEUE) {
            reposts += 1;
            if len == 0 {
                continue;
            }
            assert!(len as usize >= HDR_LEN, "rx packet of {len} bytes");
            let addr = self.rx_addr[head as usize];
            let raw = self.drv.read_bytes(addr, len as usize);
            let mut hdr_raw = [0u8; HDR_LEN];
            hdr_raw.copy_from_slice(&raw[..HDR_LEN]);
            let hdr = PacketHeader::from_bytes(&hdr_raw);
            assert_eq!(hdr.len as usize, len as usize - HDR_LEN, "{hdr:?}");
            if hdr.op != op::RST {
                // An RST answering a packet for another CID comes from that CID.
                assert_eq!(hdr.src_cid, 2, "{hdr:?}");
            }
            assert_eq!(hdr.dst_cid, CID, "{hdr:?}");
            assert_eq!(hdr.type_, TYPE_STREAM, "{hdr:?}");
            self.inbox.push_back(Pkt {
                hdr,
                data: raw[HDR_LEN..].to_vec(),
            });
        }
        if reposts > 0 {
            self.post_rx(reposts);
        }
    }

    /// Runs the device and returns everything it sent.
    fn poll(&mut self) -> Vec<Pkt> {
        self.run();
        self.collect();
        self.run();
        self.collect();
        self.inbox.drain(..).collect()
    }

    /// Waits (running the device's event loop) until a packet matching `pred` arrives;
    /// packets before it are returned too.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&Pkt) -> bool) -> (Pkt, Vec<Pkt>) {
        let start = Instant::now();
        let mut before = Vec::new();
        loop {
            self.drv.run_events_for(20);
            self.run();
            self.collect();
            while let Some(pkt) = self.inbox.pop_front() {
                if pred(&pkt) {
                    let rest: Vec<Pkt> = self.inbox.drain(..).collect();
                    self.inbox.extend(rest);
                    return (pkt, before);
                }
                before.push(pkt);
            }
            assert!(
                start.elapsed() < PATIENCE,
                "no {what} from the device; got {:?}",
                before.iter().map(|p| p.hdr).collect::<Vec<_>>()
            );
        }
    }

    /// Puts a chain on the tx queue and lets the device process it.
    fn send_chain(&mut self, descs: &[Desc]) {
        self.drv.add_chain(TX_QUEUE, descs);
        self.drv.notify(TX_QUEUE);
        self.run();
        let (_, len) = self
            .drv
            .used(TX_QUEUE)
            .expect("the device did not complete a tx chain");
        assert_eq!(len, 0);
    }

    /// Sends a packet from guest port `src` to host port `dst`.
    fn send(&mut self, src: u32, dst: u32, op: u16, flags: u32, data: &[u8]) {
        let (buf_alloc, fwd_cnt) = *self
            .credit
            .entry((src, dst))
            .or_insert((TX_BUF_ALLOC as u32, 0));
        let hdr = PacketHeader {
            src_cid: CID,
            dst_cid: 2,
            src_port: src,
            dst_port: dst,
            len: data.len() as u32,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc,
            fwd_cnt,
        };
        self.send_raw(&hdr, data);
    }

    fn send_raw(&mut self, hdr: &PacketHeader, data: &[u8]) {
        let mut bytes = hdr.to_bytes().to_vec();
        bytes.extend_from_slice(data);
        let addr = self.drv.alloc_bytes(&bytes);
        self.send_chain(&[Desc::readable(addr, bytes.len() as u32)]);
    }

    /// The guest consumed `n` bytes of a connection: its fwd_cnt moves on.
    fn consumed(&mut self, src: u32, dst: u32, n: usize) {
        let entry = self
            .credit
            .entry((src, dst))
            .or_insert((TX_BUF_ALLOC as u32, 0));
        entry.1 = entry.1.wrapping_add(n as u32);
    }

    fn set_buf_alloc(&mut self, src: u32, dst: u32, buf_alloc: u32) {
        self.credit.entry((src, dst)).or_insert((0, 0)).0 = buf_alloc;
    }

    fn connections(&self) -> usize {
        self.dev.lock().unwrap().connection_count()
    }

    /// A host client that sent `CONNECT port`, and the REQUEST the guest got.
    fn host_connect(&mut self, port: u32) -> (UnixStream, PacketHeader) {
        let mut client = UnixStream::connect(&self.uds).expect("connecting to the vsock socket");
        client
            .write_all(format!("CONNECT {port}\n").as_bytes())
            .unwrap();
        client.set_nonblocking(true).unwrap();
        let (req, before) = self.wait_for("REQUEST", |p| {
            p.hdr.op == op::REQUEST && p.hdr.dst_port == port
        });
        assert!(before.is_empty(), "unexpected packets {before:?}");
        assert!(req.hdr.src_port >= 1024, "{:?}", req.hdr);
        assert_eq!(req.hdr.buf_alloc as usize, TX_BUF_ALLOC);
        assert!(req.data.is_empty());
        (client, req.hdr)
    }

    /// Host-initiated connection accepted by the guest; returns the client (past its
    /// `OK` line) and (guest port, host port).
    fn host_connection(&mut self, port: u32) -> (UnixStream, (u32, u32)) {
        let (mut client, req) = self.host_connect(port);
        self.send(port, req.src_port, op::RESPONSE, 0, &[]);
        let line = read_exact_from(self, &mut client, format!("OK {}\n", req.src_port).len());
        assert_eq!(line, format!("OK {}\n", req.src_port).into_bytes());
        (client, (port, req.src_port))
    }
}

/// Reads exactly `n` bytes from a non-blocking host socket, running the device.
fn read_exact_from(guest: &mut Guest, stream: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let start = Instant::now();
    let mut buf = vec![0u8; 65536];
    while out.len() < n {
        match stream.read(&mut buf[..(n - out.len()).min(65536)]) {
            Ok(0) => panic!("host socket closed after {} of {n} bytes", out.len()),
            Ok(k) => out.extend_from_slice(&buf[..k]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                assert!(
                    start.elapsed() < PATIENCE,
                    "host socket got {} of {n} bytes",
                    out.len()
                );
                guest.drv.run_events_for(10);
                guest.run();
                guest.collect();
            }
            Err(e) => panic!("reading a host socket: {e}"),
        }
    }
    out
}

/// Waits until a non-blocking host socket reads end of file (or a reset), running the
/// device; returns what it read before.
fn read_to_eof(guest: &mut Guest, stream: &mut UnixStream) -> Vec<u8> {
    let mut out = Vec::new();
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return out,
            Ok(k) => out.extend_from_slice(&buf[..k]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                assert!(start.elapsed() < PATIENCE, "host socket never closed");
                guest.drv.run_events_for(10);
                guest.run();
                guest.collect();
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return out,
            Err(e) => panic!("reading a host socket: {e}"),
        }
    }
}

/// Whether a non-blocking socket has nothing to read and is still open.
fn is_open_and_idle(stream: &mut UnixStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(stream.read(&mut buf), Err(e) if e.kind() == ErrorKind::WouldBlock)
}

/// Collects RW payloads of one connection until `n` bytes arrived.
fn guest_read(guest: &mut Guest, conn: (u32, u32), n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < n {
        let (pkt, before) = guest.wait_for("data", |p| {
            p.hdr.op == op::RW && (p.hdr.dst_port, p.hdr.src_port) == conn
        });
        for other in before {
            assert!(
                (other.hdr.dst_port, other.hdr.src_port) != conn
                    || other.hdr.op == op::CREDIT_UPDATE,
                "unexpected {:?}",
                other.hdr
            );
        }
        out.extend_from_slice(&pkt.data);
        guest.consumed(conn.0, conn.1, pkt.data.len());
    }
    assert_eq!(out.len(), n, "more data than expected");
    out
}

fn pattern(seed: u32, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(seed * 7) as u8)
        .collect()
}

#[test]
fn identity_config_and_features() {
    let mut g = Guest::unstarted();
    assert_eq!(g.dev.lock().unwrap().device_type(), device_type::VSOCK);
    assert_eq!(
        g.drv.device_features(),
        features::VERSION_1 | features::RING_EVENT_IDX
    );
    for q in 0..3 {
        assert_eq!(g.drv.queue_num_max(q), 256);
    }
    let mut config = [0u8; 8];
    g.drv.read_config(0, &mut config);
    assert_eq!(u64::from_le_bytes(config), CID);
    let mut tail = [0xffu8; 4];
    g.drv.read_config(6, &mut tail);
    assert_eq!(tail, [0, 0, 0, 0]);
}

#[test]
fn constructor_checks() {
    let dir = TempDir::new();
    for cid in [0, 1, 2, u64::from(u32::MAX), u64::MAX] {
        let err = Vsock::new(cid, dir.0.join(format!("c{cid}"))).err();
        assert!(matches!(err, Some(VsockError::InvalidCid(c)) if c == cid));
    }
    let path = dir.0.join("taken");
    std::fs::write(&path, b"").unwrap();
    let err = Vsock::new(3, path.clone()).err().expect("an existing path");
    assert!(matches!(err, VsockError::PathExists(_)));
    assert!(err.to_string().contains("already exists"), "{err}");
    let missing = dir.0.join("no/such/dir/v.sock");
    assert!(matches!(
        Vsock::new(3, missing),
        Err(VsockError::Bind { .. })
    ));
    // Dropping the device removes its socket, so the path can be reused.
    let ok = dir.0.join("v.sock");
    drop(Vsock::new(3, ok.clone()).unwrap());
    drop(Vsock::new(3, ok).unwrap());
}

#[test]
fn host_connect_and_data_both_ways() {
    let mut g = Guest::new();
    let (mut client, conn) = g.host_connection(52);
    // Host -> guest.
    client.write_all(b"hello guest").unwrap();
    assert_eq!(guest_read(&mut g, conn, 11), b"hello guest");
    // Guest -> host, with bytes past the first line that must stay data.
    let big = pattern(1, 100_000);
    for chunk in big.chunks(MAX_PKT_PAYLOAD) {
        g.send(conn.0, conn.1, op::RW, 0, chunk);
    }
    assert_eq!(read_exact_from(&mut g, &mut client, big.len()), big);
    // The host forwarded 100_000 bytes: the guest heard of the freed credit.
    let (update, _) = g.wait_for("CREDIT_UPDATE", |p| p.hdr.op == op::CREDIT_UPDATE);
    assert!(update.hdr.fwd_cnt >= 65536, "{:?}", update.hdr);
    assert_eq!(g.connections(), 1);
}

#[test]
fn data_sent_with_the_connect_line_is_not_lost() {
    let mut g = Guest::new();
    let mut client = UnixStream::connect(&g.uds).unwrap();
    client.write_all(b"CONNECT 9\nearly bytes").unwrap();
    client.set_nonblocking(true).unwrap();
    let (req, _) = g.wait_for("REQUEST", |p| p.hdr.op == op::REQUEST);
    let conn = (9, req.hdr.src_port);
    g.send(conn.0, conn.1, op::RESPONSE, 0, &[]);
    let ok = format!("OK {}\n", conn.1);
    assert_eq!(
        read_exact_from(&mut g, &mut client, ok.len()),
        ok.as_bytes()
    );
    assert_eq!(guest_read(&mut g, conn, 11), b"early bytes");
}

#[test]
fn guest_refuses_host_connect() {
    let mut g = Guest::new();
    let (mut client, req) = g.host_connect(77);
    g.send(77, req.src_port, op::RST, 0, &[]);
    assert!(read_to_eof(&mut g, &mut client).is_empty());
    assert_eq!(g.connections(), 0);
}

#[test]
fn bad_connect_lines_are_dropped() {
    let mut g = Guest::new();
    for line in [
        b"HELLO\n".to_vec(),
        b"CONNECT abc\n".to_vec(),
        b"CONNECT 99999999999\n".to_vec(),
        vec![b'C'; 200],
    ] {
        let mut client = UnixStream::connect(&g.uds).unwrap();
        client.write_all(&line).unwrap();
        client.set_nonblocking(true).unwrap();
        assert!(read_to_eof(&mut g, &mut client).is_empty());
        assert!(g.poll().is_empty());
    }
    // The listener still works.
    let (_client, _) = g.host_connection(5);
}

#[test]
fn guest_connects_to_host_listener() {
    let mut g = Guest::new();
    let listener = UnixListener::bind(format!("{}_1234", g.uds.display())).unwrap();
    g.send(4000, 1234, op::REQUEST, 0, &[]);
    let (resp, before) = g.wait_for("RESPONSE", |p| p.hdr.op == op::RESPONSE);
    assert!(before.is_empty());
    assert_eq!((resp.hdr.src_port, resp.hdr.dst_port), (1234, 4000));
    let (mut host, _) = listener.accept().unwrap();
    host.set_nonblocking(true).unwrap();
    let conn = (4000, 1234);
    g.send(4000, 1234, op::RW, 0, b"ping");
    assert_eq!(read_exact_from(&mut g, &mut host, 4), b"ping");
    host.write_all(b"pong").unwrap();
    assert_eq!(guest_read(&mut g, conn, 4), b"pong");
    // A second guest connection to the same host port is separate.
    g.send(4001, 1234, op::REQUEST, 0, &[]);
    g.wait_for("RESPONSE", |p| {
        p.hdr.op == op::RESPONSE && p.hdr.dst_port == 4001
    });
    assert_eq!(g.connections(), 2);
}

#[test]
fn guest_connect_without_listener_gets_rst() {
    let mut g = Guest::new();
    g.send(4000, 999, op::REQUEST, 0, &[]);
    let pkts = g.poll();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(pkts[0].hdr.op, op::RST);
    assert_eq!((pkts[0].hdr.src_port, pkts[0].hdr.dst_port), (999, 4000));
    assert_eq!(g.connections(), 0);
}

#[test]
fn packets_for_unknown_connections_get_rst() {
    let mut g = Guest::new();
    for o in [
        op::RESPONSE,
        op::SHUTDOWN,
        op::RW,
        op::CREDIT_UPDATE,
        op::CREDIT_REQUEST,
    ] {
        g.send(5000, 6000, o, 0, if o == op::RW { b"x" } else { b"" });
        let pkts = g.poll();
        assert_eq!(pkts.len(), 1, "op {o}: {pkts:?}");
        assert_eq!(pkts[0].hdr.op, op::RST);
        assert_eq!((pkts[0].hdr.src_port, pkts[0].hdr.dst_port), (6000, 5000));
    }
    // An RST is never answered.
    g.send(5000, 6000, op::RST, 0, &[]);
    assert!(g.poll().is_empty());
}

#[test]
fn credit_limits_what_the_device_sends_the_guest() {
    let mut g = Guest::new();
    let (mut client, req) = g.host_connect(60);
    let conn = (60, req.src_port);
    // The guest accepts with a small receive buffer.
    const GUEST_BUF: u32 = 8192;
    g.set_buf_alloc(conn.0, conn.1, GUEST_BUF);
    g.send(conn.0, conn.1, op::RESPONSE, 0, &[]);
    let ok = format!("OK {}\n", conn.1);
    read_exact_from(&mut g, &mut client, ok.len());

    let data = pattern(3, 40_000);
    client.write_all(&data).unwrap();
    let mut got = Vec::new();
    let mut updates = 0;
    while got.len() < data.len() {
        // Without returning credit, the device sends at most GUEST_BUF bytes.
        let mut window = 0usize;
        let start = Instant::now();
        loop {
            g.drv.run_events_for(10);
            let pkts = g.poll();
            let mut asked = false;
            for p in pkts {
                match p.hdr.op {
                    op::RW => {
                        window += p.data.len();
                        got.extend_from_slice(&p.data);
                    }
                    op::CREDIT_REQUEST => asked = true,
                    other => panic!("unexpected op {other}"),
                }
            }
            assert!(window <= GUEST_BUF as usize, "credit exceeded: {window}");
            if got.len() == data.len() {
                break;
            }
            if window == GUEST_BUF as usize {
                // Out of credit: the device asks for more and stops reading the socket.
                if !asked {
                    let more = g.poll();
                    assert!(
                        more.iter().all(|p| p.hdr.op == op::CREDIT_REQUEST),
                        "{more:?}"
                    );
                }
                g.drv.run_events_for(50);
                assert!(g.poll().is_empty(), "device sent past the credit");
                break;
            }
            assert!(start.elapsed() < PATIENCE, "no data from the device");
        }
        // The guest application reads the data and the guest returns the credit.
        g.consumed(conn.0, conn.1, window);
        g.send(conn.0, conn.1, op::CREDIT_UPDATE, 0, &[]);
        updates += 1;
    }
    assert_eq!(got, data);
    assert!(updates >= 4, "{updates} credit updates for 40000 bytes");
}

#[test]
fn a_host_reader_that_does_not_read_stops_a_fair_guest() {
    let mut g = Guest::new();
    let listener = UnixListener::bind(format!("{}_700", g.uds.display())).unwrap();
    g.send(800, 700, op::REQUEST, 0, &[]);
    let (resp, _) = g.wait_for("RESPONSE", |p| p.hdr.op == op::RESPONSE);
    let (mut host, _) = listener.accept().unwrap();
    host.set_nonblocking(true).unwrap();

    // The guest sends as its credit allows, never more.
    let mut peer_buf = resp.hdr.buf_alloc;
    let mut peer_fwd = resp.hdr.fwd_cnt;
    let mut sent: u32 = 0;
    let mut seq = 0u32;
    let mut expected = Vec::new();
    let mut stalled = false;
    while sent < 64 << 20 {
        let credit = peer_buf - sent.wrapping_sub(peer_fwd);
        if credit == 0 {
            // Let the device flush what it can and tell about it.
            g.drv.run_events_for(20);
            let pkts = g.poll();
            for p in &pkts {
                assert_eq!(p.hdr.op, op::CREDIT_UPDATE, "{:?}", p.hdr);
                peer_buf = p.hdr.buf_alloc;
                peer_fwd = p.hdr.fwd_cnt;
            }
            if pkts.is_empty() {
                stalled = true;
                break;
            }
            continue;
        }
        let n = credit.min(MAX_PKT_PAYLOAD as u32) as usize;
        let chunk = pattern(seq, n);
        seq += 1;
        g.send(800, 700, op::RW, 0, &chunk);
        expected.extend_from_slice(&chunk);
        sent += n as u32;
        for p in g.poll() {
            assert_eq!(p.hdr.op, op::CREDIT_UPDATE, "{:?}", p.hdr);
            peer_buf = p.hdr.buf_alloc;
            peer_fwd = p.hdr.fwd_cnt;
        }
    }
    assert!(stalled, "the guest was never stopped ({sent} bytes)");
    // What the host did not take is held by the device, within what it advertised.
    let in_device = sent - peer_fwd;
    assert!(in_device as usize <= TX_BUF_ALLOC, "{in_device}");
    assert_eq!(peer_buf as usize, TX_BUF_ALLOC);

    // Once the host reads, everything arrives in order and the guest gets its credit.
    let received = read_exact_from(&mut g, &mut host, sent as usize);
    assert!(received == expected, "the host got different bytes");
    // The guest hears of the freed space: at most one update's worth is unreported.
    let (update, _) = g.wait_for("CREDIT_UPDATE", |p| {
        p.hdr.op == op::CREDIT_UPDATE && sent.wrapping_sub(p.hdr.fwd_cnt) < CREDIT_UPDATE_THRESHOLD
    });
    assert!(update.hdr.fwd_cnt <= sent);

    // A guest that ignores the credit gets an RST.
    let flood = vec![7u8; MAX_PKT_PAYLOAD];
    g.send(801, 700, op::REQUEST, 0, &[]);
    g.wait_for("RESPONSE", |p| {
        p.hdr.op == op::RESPONSE && p.hdr.dst_port == 801
    });
    let (_host2, _) = listener.accept().unwrap();
    let mut rst = false;
    for _ in 0..256 {
        g.send(801, 700, op::RW, 0, &flood);
        if g.poll()
            .iter()
            .any(|p| p.hdr.op == op::RST && p.hdr.dst_port == 801)
        {
            rst = true;
            break;
        }
    }
    assert!(rst, "a guest overrunning its credit was never reset");
}

#[test]
fn host_shuts_down_first() {
    let mut g = Guest::new();
    let (mut client, conn) = g.host_connection(61);
    client.write_all(b"last words").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(guest_read(&mut g, conn, 10), b"last words");
    let (sd, _) = g.wait_for("SHUTDOWN", |p| p.hdr.op == op::SHUTDOWN);
    assert_eq!(sd.hdr.flags, shutdown::SEND);
    // The other direction still works.
    g.send(conn.0, conn.1, op::RW, 0, b"reply");
    assert_eq!(read_exact_from(&mut g, &mut client, 5), b"reply");
    // The guest closes: the host sees end of file, the guest gets its RST.
    g.send(conn.0, conn.1, op::SHUTDOWN, shutdown::BOTH, &[]);
    assert!(read_to_eof(&mut g, &mut client).is_empty());
    let (rst, _) = g.wait_for("RST", |p| p.hdr.op == op::RST);
    assert_eq!((rst.hdr.dst_port, rst.hdr.src_port), conn);
    assert_eq!(g.connections(), 0);
}

#[test]
fn guest_shuts_down_first() {
    let mut g = Guest::new();
    let (mut client, conn) = g.host_connection(62);
    g.send(conn.0, conn.1, op::RW, 0, b"request");
    g.send(conn.0, conn.1, op::SHUTDOWN, shutdown::SEND, &[]);
    assert_eq!(read_to_eof(&mut g, &mut client), b"request");
    // The host answers and closes.
    client.write_all(b"response").unwrap();
    drop(client);
    assert_eq!(guest_read(&mut g, conn, 8), b"response");
    let (sd, _) = g.wait_for("SHUTDOWN", |p| p.hdr.op == op::SHUTDOWN);
    assert_ne!(sd.hdr.flags & shutdown::SEND, 0);
    g.wait_for("RST", |p| p.hdr.op == op::RST);
    assert_eq!(g.connections(), 0);
}

#[test]
fn guest_close_with_data_the_host_never_reads_times_out() {
    // Only the bound matters here: the connection ends (at CLOSE_TIMEOUT) even though
    // the host never reads and never closes.
    let mut g = Guest::new();
    let listener = UnixListener::bind(format!("{}_710", g.uds.display())).unwrap();
    g.send(810, 710, op::REQUEST, 0, &[]);
    g.wait_for("RESPONSE", |p| p.hdr.op == op::RESPONSE);
    let (_host, _) = listener.accept().unwrap();
    let chunk = vec![1u8; MAX_PKT_PAYLOAD];
    for _ in 0..4 {
        g.send(810, 710, op::RW, 0, &chunk);
    }
    g.send(810, 710, op::SHUTDOWN, shutdown::BOTH, &[]);
    assert_eq!(g.connections(), 1);
    g.wait_for("RST", |p| p.hdr.op == op::RST);
    assert_eq!(g.connections(), 0);
}

#[test]
fn device_reset_closes_host_sockets_and_keeps_the_listener() {
    let mut g = Guest::new();
    let (mut client, _) = g.host_connection(63);
    let listener = UnixListener::bind(format!("{}_720", g.uds.display())).unwrap();
    g.send(820, 720, op::REQUEST, 0, &[]);
    g.wait_for("RESPONSE", |p| p.hdr.op == op::RESPONSE);
    let (mut host, _) = listener.accept().unwrap();
    host.set_nonblocking(true).unwrap();
    assert_eq!(g.connections(), 2);

    g.reset();
    g.run();
    assert_eq!(g.connections(), 0);
    assert!(read_to_eof(&mut g, &mut client).is_empty());
    assert!(read_to_eof(&mut g, &mut host).is_empty());

    // Restarted, the device serves new connections on the same socket.
    g.start(features::VERSION_1);
    let (mut client, conn) = g.host_connection(64);
    client.write_all(b"again").unwrap();
    assert_eq!(guest_read(&mut g, conn, 5), b"again");
}

#[test]
fn connect_while_stopped_is_refused() {
    let mut g = Guest::unstarted();
    let mut client = UnixStream::connect(&g.uds).unwrap();
    client.write_all(b"CONNECT 5\n").unwrap();
    client.set_nonblocking(true).unwrap();
    assert!(read_to_eof(&mut g, &mut client).is_empty());
}

/// Runs `connect` on a thread while the test thread drives the device with `answer`.
fn with_connector<T: Send + 'static>(
    g: &mut Guest,
    connect: impl FnOnce(husk_devices::virtio::vsock::VsockConnector) -> T + Send + 'static,
    mut answer: impl FnMut(&mut Guest, &Pkt),
) -> T {
    let connector = g.dev.lock().unwrap().connector();
    let handle = std::thread::spawn(move || connect(connector));
    let start = Instant::now();
    while !handle.is_finished() {
        assert!(start.elapsed() < PATIENCE, "the connector never returned");
        g.drv.run_events_for(10);
        for p in g.poll() {
            answer(g, &p);
        }
    }
    handle.join().expect("connector thread")
}

#[test]
fn connector_success_refused_and_timeout() {
    let mut g = Guest::unstarted();
    // Not started: refused at once.
    let err = with_connector(
        &mut g,
        |c| c.connect(5, Duration::from_secs(5)).unwrap_err(),
        |_, p| panic!("{p:?}"),
    );
    assert_eq!(err.kind(), ErrorKind::NotConnected);
    g.start(features::VERSION_1 | features::RING_EVENT_IDX);

    // Accepted.
    let mut conn = None;
    let mut stream = with_connector(
        &mut g,
        |c| c.connect(90, Duration::from_secs(5)),
        |g, p| {
            if p.hdr.op == op::REQUEST {
                assert_eq!(p.hdr.dst_port, 90);
                conn = Some((90, p.hdr.src_port));
                g.send(90, p.hdr.src_port, op::RESPONSE, 0, &[]);
            }
        },
    )
    .expect("connector to an accepting guest");
    let conn = conn.unwrap();
    stream.write_all(b"direct").unwrap();
    assert_eq!(guest_read(&mut g, conn, 6), b"direct");
    g.send(conn.0, conn.1, op::RW, 0, b"back");
    stream.set_nonblocking(true).unwrap();
    assert_eq!(read_exact_from(&mut g, &mut stream, 4), b"back");

    // Refused.
    let err = with_connector(
        &mut g,
        |c| c.connect(91, Duration::from_secs(5)).unwrap_err(),
        |g, p| {
            if p.hdr.op == op::REQUEST {
                g.send(91, p.hdr.src_port, op::RST, 0, &[]);
            }
        },
    );
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);

    // No answer: timed out, and the half-open connection is reset.
    let before = g.connections();
    let mut request = None;
    let mut rst = None;
    let err = with_connector(
        &mut g,
        |c| c.connect(92, Duration::from_millis(200)).unwrap_err(),
        |_, p| match p.hdr.op {
            op::REQUEST => request = Some(p.hdr),
            op::RST => rst = Some(p.hdr),
            other => panic!("unexpected op {other}"),
        },
    );
    assert_eq!(err.kind(), ErrorKind::TimedOut);
    let request = request.expect("the guest never saw the REQUEST");
    let rst = rst.unwrap_or_else(|| g.wait_for("RST", |p| p.hdr.op == op::RST).0.hdr);
    assert_eq!(rst.src_port, request.src_port);
    assert_eq!(g.connections(), before);
}

#[test]
fn many_connections_at_once() {
    let mut g = Guest::new();
    const N: usize = 64;
    let mut clients = Vec::new();
    for i in 0..N {
        let mut client = UnixStream::connect(&g.uds).unwrap();
        client
            .write_all(format!("CONNECT {}\n", 100 + i).as_bytes())
            .unwrap();
        client.set_nonblocking(true).unwrap();
        clients.push(client);
    }
    let mut conns = HashMap::new();
    let start = Instant::now();
    while conns.len() < N {
        assert!(start.elapsed() < PATIENCE, "{} REQUESTs", conns.len());
        g.drv.run_events_for(10);
        for p in g.poll() {
            assert_eq!(p.hdr.op, op::REQUEST);
            conns.insert(p.hdr.dst_port, p.hdr.src_port);
        }
    }
    let host_ports: std::collections::HashSet<_> = conns.values().collect();
    assert_eq!(host_ports.len(), N, "host ports are not unique");
    for (&gp, &hp) in &conns {
        g.send(gp, hp, op::RESPONSE, 0, &[]);
    }
    for (i, client) in clients.iter_mut().enumerate() {
        let gp = 100 + i as u32;
        let ok = format!("OK {}\n", conns[&gp]);
        assert_eq!(read_exact_from(&mut g, client, ok.len()), ok.as_bytes());
        client.write_all(&pattern(i as u32, 3000)).unwrap();
    }
    // All data reaches the guest, per connection in order.
    let mut got: HashMap<u32, Vec<u8>> = HashMap::new();
    let start = Instant::now();
    while got.values().map(Vec::len).sum::<usize>() < N * 3000 {
        assert!(start.elapsed() < PATIENCE, "data missing");
        g.drv.run_events_for(10);
        for p in g.poll() {
            assert_eq!(p.hdr.op, op::RW, "{:?}", p.hdr);
            got.entry(p.hdr.dst_port).or_default().extend(p.data);
        }
    }
    for i in 0..N {
        assert_eq!(got[&(100 + i as u32)], pattern(i as u32, 3000), "conn {i}");
    }
    // And back.
    for i in 0..N {
        let gp = 100 + i as u32;
        g.send(gp, conns[&gp], op::RW, 0, &pattern(1000 + i as u32, 2000));
    }
    for (i, client) in clients.iter_mut().enumerate() {
        assert_eq!(
            read_exact_from(&mut g, client, 2000),
            pattern(1000 + i as u32, 2000)
        );
    }
    assert_eq!(g.connections(), N);
}

#[test]
fn rx_queue_full_keeps_packets_until_buffers_come() {
    let mut g = Guest::unstarted();
    g.drv
        .start(features::VERSION_1 | features::RING_EVENT_IDX, QSIZE);
    g.rx_addr = (0..QSIZE).map(|_| g.drv.alloc(u64::from(RX_BUF))).collect();
    // No rx buffers: REQUESTs wait.
    let mut clients = Vec::new();
    for i in 0..8 {
        let mut c = UnixStream::connect(&g.uds).unwrap();
        c.write_all(format!("CONNECT {}\n", 10 + i).as_bytes())
            .unwrap();
        clients.push(c);
    }
    g.drv.run_events_for(50);
    g.run();
    assert!(g.drv.used(RX_QUEUE).is_none());
    // Two buffers: two REQUESTs, then six more after more buffers.
    g.post_rx(2);
    g.run();
    let mut n = 0;
    while g.drv.used(RX_QUEUE).is_some() {
        n += 1;
    }
    assert_eq!(n, 2);
    g.post_rx(10);
    g.run();
    while g.drv.used(RX_QUEUE).is_some() {
        n += 1;
    }
    assert_eq!(n, 8);
}

#[test]
fn hostile_tx_packets_are_dropped_and_the_device_keeps_working() {
    let mut g = Guest::new();
    let (mut client, conn) = g.host_connection(65);

    // Too-short header: dropped quietly.
    let addr = g.drv.alloc_bytes(&[1u8; 20]);
    g.send_chain(&[Desc::readable(addr, 20)]);
    assert!(g.poll().is_empty());

    // A writable descriptor on tx: dropped.
    let hdr = PacketHeader {
        src_cid: CID,
        dst_cid: 2,
        src_port: conn.0,
        dst_port: conn.1,
        len: 0,
        type_: TYPE_STREAM,
        op: op::CREDIT_REQUEST,
        flags: 0,
        buf_alloc: 4096,
        fwd_cnt: 0,
    };
    let addr = g.drv.alloc_bytes(&hdr.to_bytes());
    g.send_chain(&[Desc::writable(addr, HDR_LEN as u32)]);
    assert!(g.poll().is_empty());

    // Header split over two descriptors and payload in a third: fine.
    let mut rw = hdr;
    rw.op = op::RW;
    rw.len = 3;
    let raw = rw.to_bytes();
    let a = g.drv.alloc_bytes(&raw[..10]);
    let b = g.drv.alloc_bytes(&raw[10..]);
    let c = g.drv.alloc_bytes(b"abc");
    g.send_chain(&[
        Desc::readable(a, 10),
        Desc::readable(b, 34),
        Desc::readable(c, 3),
    ]);
    assert_eq!(read_exact_from(&mut g, &mut client, 3), b"abc");

    // Wrong source CID: dropped, no RST, the connection is untouched.
    let mut spoof = rw;
    spoof.src_cid = 7;
    g.send_raw(&spoof, b"xyz");
    assert!(g.poll().is_empty());
    assert!(is_open_and_idle(&mut client));

    // Not for the host: RST from the CID it was for.
    let mut other = hdr;
    other.dst_cid = 9;
    other.dst_port = 5;
    g.send_raw(&other, &[]);
    let pkts = g.poll();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].hdr.op, op::RST);

    // Not a stream (SEQPACKET REQUEST): RST.
    let mut seq = hdr;
    seq.type_ = 2;
    seq.op = op::REQUEST;
    seq.dst_port = 4444;
    g.send_raw(&seq, &[]);
    let pkts = g.poll();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].hdr.op, op::RST);

    // len past the buffer, and past the maximum, on other connections: RST each.
    for (len, avail) in [
        (1000u32, 10usize),
        (MAX_PKT_PAYLOAD as u32 + 1, MAX_PKT_PAYLOAD + 1),
    ] {
        let mut bad = rw;
        bad.src_port = 3333;
        bad.len = len;
        g.send_raw(&bad, &vec![0u8; avail]);
        let pkts = g.poll();
        assert_eq!(pkts.len(), 1, "len {len}");
        assert_eq!(pkts[0].hdr.op, op::RST);
    }

    // Unknown op on the live connection: it is reset and the host socket closes.
    let mut unknown = hdr;
    unknown.op = 99;
    g.send_raw(&unknown, &[]);
    let pkts = g.poll();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].hdr.op, op::RST);
    assert!(read_to_eof(&mut g, &mut client).is_empty());
    assert_eq!(g.connections(), 0);

    // A chain whose descriptor points outside guest memory: dropped.
    g.send_chain(&[Desc::readable(1 << 40, 64)]);
    assert!(g.poll().is_empty());

    // Still working.
    let (mut client, conn) = g.host_connection(66);
    client.write_all(b"ok").unwrap();
    assert_eq!(guest_read(&mut g, conn, 2), b"ok");
    assert!(!g.drv.needs_reset());
}

#[test]
fn bad_rx_buffers_are_returned_unused() {
    let mut g = Guest::unstarted();
    g.drv.start(features::VERSION_1, QSIZE);
    // A readable rx buffer, a too-short one, then a good one.
    let a = g.drv.alloc(4096);
    let b = g.drv.alloc(16);
    let c = g.drv.alloc(u64::from(RX_BUF));
    g.drv.add_chain(RX_QUEUE, &[Desc::readable(a, 4096)]);
    g.drv.add_chain(RX_QUEUE, &[Desc::writable(b, 16)]);
    g.drv.add_chain(RX_QUEUE, &[Desc::writable(c, RX_BUF)]);
    g.drv.notify(RX_QUEUE);
    g.send(1, 2, op::RW, 0, b"z"); // unknown connection: RST
    assert_eq!(g.drv.used(RX_QUEUE), Some((0, 0)));
    assert_eq!(g.drv.used(RX_QUEUE), Some((1, 0)));
    assert_eq!(g.drv.used(RX_QUEUE), Some((2, HDR_LEN as u32)));
    let mut raw = [0u8; HDR_LEN];
    raw.copy_from_slice(&g.drv.read_bytes(c, HDR_LEN));
    assert_eq!(PacketHeader::from_bytes(&raw).op, op::RST);
    assert!(!g.drv.needs_reset());
}

#[test]
fn a_corrupt_ring_needs_a_reset_and_notifications_before_start_are_ignored() {
    let mut g = Guest::unstarted();
    // Notifications before DRIVER_OK do nothing.
    g.drv.notify(TX_QUEUE);
    g.drv.notify(RX_QUEUE);
    g.run();
    g.start(features::VERSION_1 | features::RING_EVENT_IDX);
    g.drv.set_avail_idx(TX_QUEUE, 1000);
    g.drv.notify(TX_QUEUE);
    g.run();
    assert!(g.drv.needs_reset());
    g.reset();
    g.start(features::VERSION_1);
    let (mut client, conn) = g.host_connection(67);
    client.write_all(b"fine").unwrap();
    assert_eq!(guest_read(&mut g, conn, 4), b"fine");
}

#[test]
fn works_without_event_idx() {
    let mut g = Guest::with_features(features::VERSION_1);
    let (mut client, conn) = g.host_connection(68);
    let data = pattern(9, 20_000);
    client.write_all(&data).unwrap();
    assert_eq!(guest_read(&mut g, conn, data.len()), data);
}

/// Inputs of the `vsock_packet` fuzz target that once found bugs, replayed through the
/// same harness (`husk_devices::virtio::vsock::fuzzing::run`), plus a few hand-made ones.
#[test]
fn fuzz_regressions_replay() {
    use husk_devices::virtio::vsock::fuzzing;
    let mut inputs = husk_devices::virtio::testing::fuzz_regressions("vsock_packet");
    inputs.push((0u8..=255).collect());
    inputs.push(vec![0xff; 300]);
    for input in &inputs {
        fuzzing::run(input);
    }
}

/// The harness really drives a connection: a hand-made input (the fuzzer's seed) gets a
/// guest connection to a host listener accepted, data both ways, a clean close and a
/// host CONNECT.
#[test]
fn fuzz_harness_reaches_connections() {
    use husk_devices::virtio::vsock::fuzzing;
    #[rustfmt::skip]
    let seed: Vec<u8> = vec![
        1,                                  // EVENT_IDX
        3, 3, 2, 0, 16, 2, 0, 16, 2, 0, 16, 2, 0, 16, // four rx buffers
        0, 0, 0, 0, 0, 0, 1, 0, 0, 16, 0, 0, 0, 0, 0, 255, 0, // REQUEST to port 1
        8,                                  // the host listener accepts
        0, 0, 0, 0, 0, 10, 5, 0, 0, 16, 0, 0, 0, 0, 5, // RW of 10 bytes
        104, 101, 108, 108, 111, 119, 111, 114, 108, 100, 255, 0,
        7, 0, 0, 4,                         // the host writes 256 bytes
        3, 0, 2, 0, 16,                     // one more rx buffer
        0, 0, 0, 0, 0, 0, 4, 3, 0, 16, 0, 0, 0, 0, 0, 255, 0, // SHUTDOWN both
        6, 0,                               // a host client: CONNECT 5
        3, 1, 2, 0, 16, 2, 0, 16,           // two more rx buffers
    ];
    let ops = fuzzing::run(&seed);
    for (wanted, name) in [
        (op::RESPONSE, "RESPONSE"),
        (op::RW, "RW"),
        (op::RST, "RST"),
        (op::REQUEST, "REQUEST"),
    ] {
        assert!(ops.contains(&wanted), "no {name} in {ops:?}");
    }
}

#[test]
fn event_idx_suppresses_interrupts_until_used_event() {
    let mut g = Guest::new();
    g.drv.take_interrupts();
    // The driver wants an interrupt only once the used index passes 3.
    g.drv.set_used_event(RX_QUEUE, 2);
    g.drv.set_used_event(TX_QUEUE, 100);
    for port in 0..2 {
        g.send(7000 + port, 7100, op::RW, 0, b"?"); // RSTs for unknown connections
    }
    assert_eq!(g.drv.take_interrupts(), 0);
    g.send(7002, 7100, op::RW, 0, b"?");
    assert_eq!(g.drv.take_interrupts(), 1);
    assert_eq!(g.poll().len(), 3);
}
