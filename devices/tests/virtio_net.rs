//! Layer-2 tests of virtio-net: a host-side driver plays the guest on real guest memory,
//! and a real tap is the host end. Each test makes its taps in a network namespace of
//! its own (so nothing shows on the host, and nothing is left when it ends) and watches
//! and feeds them through a raw packet socket bound to the tap interface: frames the
//! device writes to the tap (tx) arrive on the socket, frames sent on the socket come out
//! of the tap (rx).
//!
//! They need root (a namespace, a tap): one that cannot get them fails and says why.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use husk_devices::virtio::net::testing::{disable_ipv6, set_mtu, NetNs, PacketSocket};
use husk_devices::virtio::net::{
    features as net, gso, hdr_flags, Net, NetConfig, NetCounters, Tap, TapError, MAX_FRAME_LEN,
    QUEUE_MAX_SIZE, RX_QUEUE, STATUS_LINK_UP, TX_QUEUE, VNET_HDR_LEN,
};
use husk_devices::virtio::testing::{guest_memory, Desc, TestDriver, VIRTQ_DESC_F_NEXT};
use husk_devices::virtio::{device_type, features, VirtioDevice};

const MEM_SIZE: usize = 32 << 20;
const MAC: [u8; 6] = [0x02, 0x48, 0x55, 0x53, 0x4b, 0x01];
const PEER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x99];
/// An ethertype for local experiments (IEEE 802): no stack in the namespace answers it.
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
const WAIT: Duration = Duration::from_secs(3);
/// The features a Linux guest acknowledges when the device offers all of them.
const ALL: u64 = features::VERSION_1
    | features::RING_EVENT_IDX
    | features::RING_INDIRECT_DESC
    | net::MAC
    | net::STATUS
    | net::MRG_RXBUF
    | net::CSUM
    | net::HOST_TSO4
    | net::HOST_TSO6
    | net::GUEST_CSUM
    | net::GUEST_TSO4
    | net::GUEST_TSO6;
/// A driver that takes no offloads and no mergeable buffers.
const PLAIN: u64 = features::VERSION_1 | net::MAC | net::STATUS;

/// A namespace for one test, or a failure that says why there is none.
fn netns() -> NetNs {
    NetNs::new().unwrap_or_else(|e| {
        panic!("cannot create a network namespace ({e}): the virtio-net tests need root (CAP_SYS_ADMIN and CAP_NET_ADMIN)")
    })
}

/// The guest side of one interface, and the packet socket on its tap.
struct Nic {
    drv: TestDriver,
    dev: Arc<Mutex<Net>>,
    sock: PacketSocket,
    name: String,
    /// Guest addresses of the rx chains the driver posted, by head.
    rx_bufs: std::collections::HashMap<u16, Vec<(u64, u32)>>,
}

impl Nic {
    /// A tap in `ns` (MTU `mtu`), up, without IPv6 chatter, a packet socket on it
    /// (`vnet_hdr`: its frames carry a virtio_net_hdr), and a device on it, not started.
    fn new(ns: &NetNs, mtu: Option<u32>, vnet_hdr: bool) -> Nic {
        let (tap, sock) = ns
            .run(move || -> Result<(Tap, PacketSocket), String> {
                let tap = Tap::open("husk%d").map_err(|e| e.to_string())?;
                disable_ipv6(tap.name()).map_err(|e| format!("disabling IPv6: {e}"))?;
                if let Some(mtu) = mtu {
                    set_mtu(tap.name(), mtu).map_err(|e| format!("setting the MTU: {e}"))?;
                }
                tap.set_up().map_err(|e| e.to_string())?;
                let sock = PacketSocket::bind(tap.name(), vnet_hdr)
                    .map_err(|e| format!("packet socket: {e}"))?;
                Ok((tap, sock))
            })
            .unwrap_or_else(|e| panic!("cannot set up a tap (the tests need root): {e}"));
        let name = tap.name().to_owned();
        let dev = Arc::new(Mutex::new(
            Net::new(NetConfig { tap, mac: MAC }).expect("creating the net device"),
        ));
        let drv = TestDriver::new(dev.clone(), guest_memory(MEM_SIZE));
        Nic {
            drv,
            dev,
            sock,
            name,
            rx_bufs: Default::default(),
        }
    }

    /// A started device on a fresh tap.
    fn started(ns: &NetNs, features: u64) -> Nic {
        let mut nic = Nic::new(ns, None, false);
        nic.drv.start(features, QUEUE_MAX_SIZE);
        nic
    }

    fn counters(&self) -> NetCounters {
        self.dev.lock().unwrap().counters()
    }

    /// Publishes a tx chain: the header and the frame, split at the given offsets.
    fn send_split(&mut self, hdr: [u8; VNET_HDR_LEN], frame: &[u8], cuts: &[usize]) -> u16 {
        let mut bytes = hdr.to_vec();
        bytes.extend_from_slice(frame);
        let mut descs = Vec::new();
        let mut at = 0;
        for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
            let piece = &bytes[at..cut];
            descs.push(Desc::readable(
                self.drv.alloc_bytes(piece),
                piece.len() as u32,
            ));
            at = cut;
        }
        let head = self.drv.add_chain(TX_QUEUE, &descs);
        self.drv.notify(TX_QUEUE);
        self.drv.run_events();
        head
    }

    /// Sends a frame with a zero header in one descriptor (after the header's own).
    fn send(&mut self, frame: &[u8]) -> u16 {
        self.send_split([0; VNET_HDR_LEN], frame, &[VNET_HDR_LEN])
    }

    /// The next frame the device wrote to the tap.
    fn sink(&self) -> Option<Vec<u8>> {
        self.sock.recv(WAIT).expect("reading the packet socket")
    }

    /// Posts an rx chain of buffers of the given sizes.
    fn post_rx(&mut self, sizes: &[u32]) -> u16 {
        let descs: Vec<Desc> = sizes
            .iter()
            .map(|&len| Desc::writable(self.drv.alloc(u64::from(len)), len))
            .collect();
        let head = self.drv.add_chain(RX_QUEUE, &descs);
        self.rx_bufs
            .insert(head, descs.iter().map(|d| (d.addr, d.len)).collect());
        head
    }

    /// Posts `count` rx chains of one buffer of `len` bytes, and notifies.
    fn post_rx_many(&mut self, count: usize, len: u32) {
        for _ in 0..count {
            self.post_rx(&[len]);
        }
        self.drv.notify(RX_QUEUE);
    }

    /// Runs the device until `count` rx chains are used (or the wait is over).
    fn rx_used(&mut self, count: usize) -> Vec<(u16, u32)> {
        let deadline = Instant::now() + WAIT;
        let mut used = Vec::new();
        while used.len() < count && Instant::now() < deadline {
            self.drv.run_events_for(20);
            self.drv.run_events();
            while let Some((head, len)) = self.drv.used(RX_QUEUE) {
                used.push((head as u16, len));
            }
        }
        used
    }

    /// The bytes the device wrote into the rx chain `head` (`len` of them).
    fn rx_bytes(&self, head: u16, len: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut left = len as usize;
        for &(addr, size) in &self.rx_bufs[&head] {
            let n = left.min(size as usize);
            out.extend(self.drv.read_bytes(addr, n));
            left -= n;
        }
        out
    }

    /// Receives `count` frames: (header, frame) each, reassembled from mergeable buffers
    /// by `num_buffers` as a Linux driver does.
    fn receive(&mut self, count: usize) -> Vec<([u8; VNET_HDR_LEN], Vec<u8>)> {
        let mut frames = Vec::new();
        let mut pending = std::collections::VecDeque::new();
        let deadline = Instant::now() + WAIT;
        while frames.len() < count && Instant::now() < deadline {
            pending.extend(self.rx_used(1));
            while let Some(&(head, len)) = pending.front() {
                let first = self.rx_bytes(head, len);
                assert!(
                    first.len() >= VNET_HDR_LEN,
                    "a used rx chain without a header"
                );
                let num = u16::from_le_bytes([first[10], first[11]]) as usize;
                assert!(num >= 1, "num_buffers is 0");
                if pending.len() < num {
                    break;
                }
                pending.pop_front();
                let mut bytes = first;
                for _ in 1..num {
                    let (head, len) = pending.pop_front().unwrap();
                    bytes.extend(self.rx_bytes(head, len));
                }
                let hdr: [u8; VNET_HDR_LEN] = bytes[..VNET_HDR_LEN].try_into().unwrap();
                frames.push((hdr, bytes[VNET_HDR_LEN..].to_vec()));
            }
        }
        assert!(pending.is_empty(), "used rx chains left over: {pending:?}");
        frames
    }

    /// Sends a frame into the tap from the packet socket (the device's rx).
    fn inject(&self, frame: &[u8]) {
        self.sock.send(frame).expect("sending on the packet socket");
    }

    fn assert_healthy(&mut self) {
        assert!(!self.drv.needs_reset(), "the device asked for a reset");
    }
}

/// An Ethernet frame of `len` bytes in all (at least 14) from the peer to `dst`, its
/// payload a pattern that depends on `seed`.
fn frame(dst: [u8; 6], len: usize, seed: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&PEER_MAC);
    f.extend_from_slice(&ETHERTYPE);
    f.extend((0..len.saturating_sub(14)).map(|i| (i as u8).wrapping_mul(31) ^ seed));
    f
}

/// An IPv4/UDP frame with `payload`, its UDP checksum left to be completed (the
/// pseudo-header sum in place, as Linux leaves it for CHECKSUM_PARTIAL), and the
/// virtio_net_hdr that asks for it: (header, frame).
fn udp_frame(payload: &[u8]) -> ([u8; VNET_HDR_LEN], Vec<u8>) {
    let ip_len = 20 + 8 + payload.len();
    let mut f = Vec::new();
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&PEER_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let src = [10, 0, 0, 1];
    let dst = [10, 0, 0, 2];
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let csum = !ones_sum(&ip, 0) as u16;
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    f.extend_from_slice(&ip);
    let udp_len = (8 + payload.len()) as u16;
    // Pseudo header: addresses, protocol, length.
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&udp_len.to_be_bytes());
    let partial = fold(ones_sum(&pseudo, 0)) as u16;
    f.extend_from_slice(&4000u16.to_be_bytes());
    f.extend_from_slice(&5000u16.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&partial.to_be_bytes());
    f.extend_from_slice(payload);
    let mut hdr = [0u8; VNET_HDR_LEN];
    hdr[0] = hdr_flags::NEEDS_CSUM;
    hdr[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start: the UDP header
    hdr[8..10].copy_from_slice(&6u16.to_le_bytes()); // csum_offset: its checksum
    (hdr, f)
}

fn ones_sum(bytes: &[u8], start: u32) -> u32 {
    let mut sum = start;
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    fold(sum)
}

fn fold(mut sum: u32) -> u32 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// Whether the UDP checksum of an IPv4/UDP frame is right.
fn udp_checksum_ok(f: &[u8]) -> bool {
    let udp = &f[34..];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&f[26..34]);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
    fold(ones_sum(udp, ones_sum(&pseudo, 0))) == 0xffff
}

/// Whether an interface of that name exists in the namespace.
fn interface_exists(ns: &NetNs, name: &str) -> bool {
    let name = std::ffi::CString::new(name).unwrap();
    // SAFETY: a NUL-terminated string.
    ns.run(move || unsafe { libc::if_nametoindex(name.as_ptr()) } != 0)
}

#[test]
fn configuration_and_features() {
    let ns = netns();
    let mut nic = Nic::new(&ns, None, false);
    {
        let dev = nic.dev.lock().unwrap();
        assert_eq!(dev.device_type(), device_type::NET);
        assert_eq!(dev.mac(), MAC);
        assert_eq!(dev.queue_max_sizes(), &[QUEUE_MAX_SIZE, QUEUE_MAX_SIZE]);
    }
    let offered = nic.drv.device_features();
    // Every tap of a kernel of the last decade takes these guest offloads.
    assert_eq!(offered, ALL, "offered {offered:#x}");
    let mut config = [0u8; 8];
    nic.drv.read_config(0, &mut config);
    assert_eq!(config[..6], MAC);
    assert_eq!(u16::from_le_bytes([config[6], config[7]]), STATUS_LINK_UP);
    let mut past = [0xffu8; 4];
    nic.drv.read_config(8, &mut past);
    assert_eq!(past, [0; 4], "bytes past the configuration read as zero");
    assert_eq!(nic.drv.queue_num_max(RX_QUEUE), u32::from(QUEUE_MAX_SIZE));
    assert_eq!(nic.drv.queue_num_max(TX_QUEUE), u32::from(QUEUE_MAX_SIZE));
    nic.drv.start(ALL, QUEUE_MAX_SIZE);
    nic.assert_healthy();
}

#[test]
fn tx_frames_reach_the_tap() {
    let ns = netns();
    let mut nic = Nic::started(&ns, ALL);
    let sizes = [14usize, 60, 61, 1000, 1514];
    let mut bytes = 0;
    for (i, &len) in sizes.iter().enumerate() {
        let f = frame([0xff; 6], len, i as u8);
        // Split anywhere: inside the header, at it, inside the frame.
        let total = VNET_HDR_LEN + len;
        let cuts: Vec<usize> = [5, VNET_HDR_LEN, VNET_HDR_LEN + 7]
            .into_iter()
            .filter(|&c| c < total)
            .collect();
        let head = nic.send_split([0; VNET_HDR_LEN], &f, &cuts);
        assert_eq!(
            nic.drv.used(TX_QUEUE),
            Some((u32::from(head), 0)),
            "the tx chain is used with length 0"
        );
        assert_eq!(nic.sink().as_deref(), Some(&f[..]), "frame {i}");
        bytes += len as u64;
    }
    let c = nic.counters();
    assert_eq!((c.tx_frames, c.tx_bytes), (sizes.len() as u64, bytes));
    assert_eq!((c.tx_dropped, c.tx_bad_chains), (0, 0));
    assert!(
        nic.drv.take_interrupts() > 0,
        "the driver heard of the used chains"
    );
    nic.assert_healthy();
}

#[test]
fn tx_partial_checksums_are_taken_and_bad_headers_dropped() {
    let ns = netns();
    let mut nic = Nic::started(&ns, ALL);
    let (hdr, f) = udp_frame(b"checksum me, please");
    assert!(!udp_checksum_ok(&f));
    nic.send_split(hdr, &f, &[VNET_HDR_LEN]);
    let got = nic.sink().expect("the frame reached the tap");
    // The packet socket sees the frame before any device would complete its checksum:
    // what matters is that the tap took the header and the frame whole.
    assert_eq!(got.len(), f.len());
    assert_eq!(got[..34], f[..34]);
    assert_eq!(got[42..], f[42..]);

    // A GSO type the kernel does not know: the tap refuses it, the device drops the
    // frame, counts it and goes on.
    let mut bad = [0u8; VNET_HDR_LEN];
    bad[1] = 0x55;
    bad[4..6].copy_from_slice(&100u16.to_le_bytes());
    nic.send_split(bad, &frame([0xff; 6], 200, 1), &[VNET_HDR_LEN]);
    assert_eq!(nic.sock.recv(Duration::from_millis(200)).unwrap(), None);
    let c = nic.counters();
    assert_eq!((c.tx_frames, c.tx_dropped), (1, 1));

    let good = frame([0xff; 6], 100, 2);
    nic.send(&good);
    assert_eq!(nic.sink(), Some(good));
    nic.assert_healthy();
}

/// A TCPv4 GSO frame of 30000 bytes of payload from a driver that took HOST_TSO4: the
/// tap takes it whole (the kernel segments it where it must).
#[test]
fn tx_gso_frames_are_taken_whole() {
    let ns = netns();
    let mut nic = Nic::started(&ns, ALL);
    let sent = tcp_gso_frame(30_000, 1448);
    let mut hdr = [0u8; VNET_HDR_LEN];
    hdr[..10].copy_from_slice(&sent[..10]);
    let wire = &sent[10..];
    let head = nic.send_split(hdr, wire, &[VNET_HDR_LEN, VNET_HDR_LEN + 54, 20_000]);
    assert_eq!(nic.drv.used(TX_QUEUE), Some((u32::from(head), 0)));
    let got = nic.sink().expect("the GSO frame reached the tap");
    assert_eq!(got.len(), wire.len());
    assert_eq!(got[54..], wire[54..]);
    let c = nic.counters();
    assert_eq!(
        (c.tx_frames, c.tx_bytes, c.tx_dropped),
        (1, wire.len() as u64, 0)
    );
    nic.assert_healthy();
}

#[test]
fn rx_frames_reach_the_guest() {
    let ns = netns();
    let mut nic = Nic::started(&ns, PLAIN);
    nic.post_rx_many(8, 2048);
    let sent: Vec<Vec<u8>> = [60usize, 100, 1514]
        .iter()
        .enumerate()
        .map(|(i, &len)| frame(MAC, len, i as u8))
        .collect();
    for f in &sent {
        nic.inject(f);
    }
    let got = nic.receive(sent.len());
    assert_eq!(got.len(), sent.len());
    for ((hdr, f), want) in got.iter().zip(&sent) {
        let mut expected = [0u8; VNET_HDR_LEN];
        expected[10] = 1; // num_buffers: 1 without mergeable buffers
        assert_eq!(*hdr, expected);
        assert_eq!(f, want);
    }
    let c = nic.counters();
    assert_eq!(c.rx_frames, 3);
    assert_eq!(c.rx_bytes, (60 + 100 + 1514) as u64);
    assert_eq!((c.rx_dropped, c.rx_bad_chains), (0, 0));
    nic.assert_healthy();
}

#[test]
fn rx_partial_checksums_reach_a_guest_that_takes_them() {
    let ns = netns();
    // A packet socket with vnet headers sends CHECKSUM_PARTIAL frames, as the host's
    // stack does with a tap that takes checksum offload.
    let mut nic = Nic::new(&ns, None, true);
    nic.drv.start(ALL, QUEUE_MAX_SIZE);
    nic.post_rx_many(4, 2048);
    let (hdr, f) = udp_frame(b"partial");
    let mut sent = hdr[..10].to_vec();
    sent.extend_from_slice(&f);
    nic.inject(&sent);
    let got = nic.receive(1);
    assert_eq!(got.len(), 1);
    let (rx_hdr, rx_frame) = &got[0];
    assert_eq!(rx_hdr[0] & hdr_flags::NEEDS_CSUM, hdr_flags::NEEDS_CSUM);
    assert_eq!(rx_hdr[6..10], hdr[6..10], "csum_start and csum_offset");
    assert_eq!(rx_frame, &f);

    // A driver without GUEST_CSUM gets the checksum completed.
    nic.drv.reset();
    nic.drv.start(PLAIN, QUEUE_MAX_SIZE);
    nic.rx_bufs.clear();
    nic.post_rx_many(4, 2048);
    nic.inject(&sent);
    let got = nic.receive(1);
    assert_eq!(got.len(), 1);
    let (rx_hdr, rx_frame) = &got[0];
    assert_eq!(rx_hdr[0] & hdr_flags::NEEDS_CSUM, 0);
    assert!(udp_checksum_ok(rx_frame), "the checksum was completed");
    nic.assert_healthy();
}

/// A TCPv4 segment of `payload_len` bytes (a GSO frame when `gso_size` is set), with a
/// 10-byte virtio_net_hdr in front for the packet socket.
fn tcp_gso_frame(payload_len: usize, gso_size: u16) -> Vec<u8> {
    let ip_len = 20 + 20 + payload_len;
    let mut f = Vec::new();
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&PEER_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0];
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
    let csum = !ones_sum(&ip, 0) as u16;
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut pseudo = vec![10, 0, 0, 1, 10, 0, 0, 2, 0, 6];
    pseudo.extend_from_slice(&((20 + payload_len) as u16).to_be_bytes());
    let partial = fold(ones_sum(&pseudo, 0)) as u16;
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&4000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&5000u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x18; // PSH, ACK
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    tcp[16..18].copy_from_slice(&partial.to_be_bytes());
    f.extend_from_slice(&tcp);
    f.extend((0..payload_len).map(|i| (i % 251) as u8));
    let mut hdr = vec![0u8; 10];
    hdr[0] = hdr_flags::NEEDS_CSUM;
    hdr[1] = gso::TCPV4;
    hdr[2..4].copy_from_slice(&54u16.to_le_bytes()); // hdr_len
    hdr[4..6].copy_from_slice(&gso_size.to_le_bytes());
    hdr[6..8].copy_from_slice(&34u16.to_le_bytes());
    hdr[8..10].copy_from_slice(&16u16.to_le_bytes());
    hdr.extend(f);
    hdr
}

#[test]
fn mergeable_rx_buffers_take_a_large_gso_frame() {
    let ns = netns();
    let mut nic = Nic::new(&ns, None, true);
    nic.drv.start(ALL, QUEUE_MAX_SIZE);
    // Buffers of 1526 bytes, as a Linux guest posts without big packets... and smaller.
    nic.post_rx_many(64, 1000);
    let sent = tcp_gso_frame(30_000, 1448);
    nic.inject(&sent);
    let got = nic.receive(1);
    assert_eq!(got.len(), 1, "the GSO frame arrived whole");
    let (hdr, f) = &got[0];
    let wire = &sent[10..];
    assert_eq!(f.len(), wire.len());
    assert_eq!(hdr[1], gso::TCPV4, "gso_type");
    assert_eq!(u16::from_le_bytes([hdr[4], hdr[5]]), 1448, "gso_size");
    let num = u16::from_le_bytes([hdr[10], hdr[11]]) as usize;
    assert_eq!(num, (VNET_HDR_LEN + wire.len()).div_ceil(1000));
    // The IP and TCP headers may have been touched by the stack (ids, checksums); the
    // payload must be intact.
    assert_eq!(f[54..], wire[54..]);
    assert_eq!(nic.counters().rx_frames, 1);

    // A jumbo frame without GSO, split over buffers of 1000 bytes.
    let ns_mtu = &ns;
    let name = nic.name.clone();
    ns_mtu
        .run(move || set_mtu(&name, 9000))
        .expect("setting a 9000-byte MTU");
    let jumbo = frame(MAC, 9014, 7);
    let mut sent = vec![0u8; 10];
    sent.extend_from_slice(&jumbo);
    nic.inject(&sent);
    let got = nic.receive(1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, jumbo);
    let num = u16::from_le_bytes([got[0].0[10], got[0].0[11]]) as usize;
    assert_eq!(num, (VNET_HDR_LEN + jumbo.len()).div_ceil(1000));
    let c = nic.counters();
    assert_eq!((c.rx_frames, c.rx_dropped, c.rx_bad_chains), (2, 0, 0));
    nic.assert_healthy();
}

#[test]
fn without_mergeable_buffers_a_frame_too_large_is_dropped() {
    let ns = netns();
    let mut nic = Nic::new(&ns, Some(9000), false);
    nic.drv.start(PLAIN, QUEUE_MAX_SIZE);
    nic.post_rx_many(1, 1526);
    nic.inject(&frame(MAC, 3000, 1));
    let small = frame(MAC, 100, 2);
    nic.inject(&small);
    let got = nic.receive(1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, small, "the next frame took the buffer");
    let c = nic.counters();
    assert_eq!((c.rx_frames, c.rx_dropped), (1, 1));
    nic.assert_healthy();
}

#[test]
fn back_pressure_holds_frames_until_the_guest_has_buffers() {
    let ns = netns();
    let mut nic = Nic::started(&ns, ALL);
    const COUNT: usize = 200;
    let sent: Vec<Vec<u8>> = (0..COUNT).map(|i| frame(MAC, 200 + i, i as u8)).collect();
    for f in &sent {
        nic.inject(f);
    }
    // The device reads one frame, finds no buffer, and stops reading the tap: the
    // event loop then stays quiet (no busy loop on a readable tap).
    nic.drv.run_events_for(100);
    nic.drv.run_events();
    assert_eq!(
        nic.drv.run_events_for(200),
        0,
        "the device kept polling the tap"
    );
    let c = nic.counters();
    assert_eq!(c.rx_frames, 0);
    assert!(c.rx_waits >= 1);
    // Buffers come in small batches, each followed by a notification.
    let mut got = Vec::new();
    while got.len() < COUNT {
        nic.post_rx_many(16, 1526);
        let batch = nic.receive(16.min(COUNT - got.len()));
        assert!(!batch.is_empty(), "frames stopped after {}", got.len());
        got.extend(batch);
    }
    assert_eq!(got.len(), COUNT);
    for (i, ((_, f), want)) in got.iter().zip(&sent).enumerate() {
        assert_eq!(f, want, "frame {i} in order");
    }
    let c = nic.counters();
    assert_eq!((c.rx_frames, c.rx_dropped), (COUNT as u64, 0));
    nic.assert_healthy();
}

#[test]
fn hostile_tx_chains_are_dropped_and_the_device_goes_on() {
    let ns = netns();
    let mut nic = Nic::started(&ns, ALL);
    let mut expect_bad = 0;
    let mut check = |nic: &mut Nic, what: &str, head: u16| {
        nic.drv.notify(TX_QUEUE);
        nic.drv.run_events();
        assert_eq!(
            nic.drv.used(TX_QUEUE),
            Some((u32::from(head), 0)),
            "{what}: used with length 0"
        );
        expect_bad += 1;
        assert_eq!(nic.counters().tx_bad_chains, expect_bad, "{what}");
        nic.assert_healthy();
    };
    // Shorter than the header.
    let addr = nic.drv.alloc_bytes(&[0; 11]);
    let head = nic.drv.add_chain(TX_QUEUE, &[Desc::readable(addr, 11)]);
    check(&mut nic, "too short", head);
    // Longer than the longest frame.
    let big = (MAX_FRAME_LEN + 1) as u32;
    let addr = nic.drv.alloc(u64::from(big));
    let head = nic.drv.add_chain(TX_QUEUE, &[Desc::readable(addr, big)]);
    check(&mut nic, "oversized", head);
    // Outside guest memory, and across its end.
    let hdr = nic.drv.alloc(12);
    let head = nic.drv.add_chain(
        TX_QUEUE,
        &[Desc::readable(hdr, 12), Desc::readable(1 << 40, 100)],
    );
    check(&mut nic, "outside memory", head);
    let head = nic
        .drv
        .add_chain(TX_QUEUE, &[Desc::readable(MEM_SIZE as u64 - 50, 100)]);
    check(&mut nic, "across the end of memory", head);
    // A device-writable descriptor.
    let hdr = nic.drv.alloc(12);
    let data = nic.drv.alloc(100);
    let head = nic.drv.add_chain(
        TX_QUEUE,
        &[Desc::readable(hdr, 12), Desc::writable(data, 100)],
    );
    check(&mut nic, "write-only descriptor", head);
    // A loop: descriptor 0 points to itself with NEXT.
    let addr = nic.drv.alloc(64);
    // Slots after the chains above; the driver's next slot is free.
    let slot = 100;
    nic.drv
        .write_desc(TX_QUEUE, slot, addr, 64, VIRTQ_DESC_F_NEXT, slot);
    nic.drv.publish_avail(TX_QUEUE, slot);
    check(&mut nic, "looping chain", slot);
    assert_eq!(nic.sock.recv(Duration::from_millis(100)).unwrap(), None);
    // Still working.
    let f = frame([0xff; 6], 500, 3);
    nic.send(&f);
    assert_eq!(nic.sink(), Some(f));
    let c = nic.counters();
    assert_eq!((c.tx_frames, c.tx_dropped), (1, 0));
}

#[test]
fn hostile_rx_chains_are_returned_unused_and_the_device_goes_on() {
    let ns = netns();
    let mut nic = Nic::started(&ns, ALL);
    // A device-readable buffer, one too short for the header, one outside memory, one
    // with a readable descriptor after a writable one: all returned with length 0.
    let ro = nic.drv.alloc(2048);
    let short = nic.drv.alloc(11);
    let (w, r) = (nic.drv.alloc(100), nic.drv.alloc(100));
    let bad = [
        nic.drv.add_chain(RX_QUEUE, &[Desc::readable(ro, 2048)]),
        nic.drv.add_chain(RX_QUEUE, &[Desc::writable(short, 11)]),
        nic.drv
            .add_chain(RX_QUEUE, &[Desc::writable(1 << 40, 2048)]),
        nic.drv
            .add_chain(RX_QUEUE, &[Desc::writable(w, 100), Desc::readable(r, 100)]),
    ];
    let good = nic.post_rx(&[2048]);
    nic.drv.notify(RX_QUEUE);
    nic.drv.run_events();
    let f = frame(MAC, 300, 9);
    nic.inject(&f);
    let used = nic.rx_used(bad.len() + 1);
    let expected: Vec<(u16, u32)> = bad
        .iter()
        .map(|&h| (h, 0))
        .chain(std::iter::once((good, (VNET_HDR_LEN + f.len()) as u32)))
        .collect();
    assert_eq!(used, expected);
    assert_eq!(
        nic.drv.read_bytes(ro, 16),
        vec![0; 16],
        "readable buffer untouched"
    );
    assert_eq!(nic.rx_bytes(good, 312)[VNET_HDR_LEN..], f[..]);
    let c = nic.counters();
    assert_eq!((c.rx_bad_chains, c.rx_frames, c.rx_dropped), (4, 1, 0));
    nic.assert_healthy();
}

#[test]
fn a_broken_ring_asks_for_a_reset_and_a_reset_recovers() {
    let ns = netns();
    let mut nic = Nic::started(&ns, ALL);
    // The avail index jumps past the queue size: the ring is broken.
    nic.drv.set_avail_idx(TX_QUEUE, QUEUE_MAX_SIZE + 5);
    nic.drv.notify(TX_QUEUE);
    nic.drv.run_events();
    assert!(nic.drv.needs_reset());
    // Frames on the tap are not read by a broken device (and it does not spin).
    nic.inject(&frame(MAC, 100, 1));
    nic.drv.run_events();
    assert_eq!(nic.drv.run_events_for(100), 0);
    nic.drv.reset();
    nic.drv.start(ALL, QUEUE_MAX_SIZE);
    nic.rx_bufs.clear();
    let f = frame([0xff; 6], 100, 4);
    nic.send(&f);
    assert_eq!(nic.sink(), Some(f));
    nic.post_rx_many(4, 2048);
    let g = frame(MAC, 120, 5);
    nic.inject(&g);
    // The frame sent while broken may arrive first; the new one must arrive.
    let got = nic.receive(2);
    assert!(got.iter().any(|(_, f)| *f == g), "{} frames", got.len());
    nic.assert_healthy();
}

#[test]
fn event_idx_suppresses_interrupts() {
    let ns = netns();
    let mut nic = Nic::started(&ns, ALL);
    // used_event 2: the driver wants to hear only once the 3rd chain is used.
    nic.drv.set_used_event(TX_QUEUE, 2);
    nic.drv.take_interrupts();
    for i in 0..2 {
        nic.send(&frame([0xff; 6], 100, i));
    }
    assert_eq!(
        nic.drv.take_interrupts(),
        0,
        "no interrupt before used_event"
    );
    nic.send(&frame([0xff; 6], 100, 2));
    assert_eq!(nic.drv.take_interrupts(), 1);
    for _ in 0..3 {
        assert!(nic.sink().is_some());
    }
}

#[test]
fn two_devices_at_once() {
    let ns = netns();
    let mut a = Nic::started(&ns, ALL);
    let mut b = Nic::started(&ns, PLAIN);
    assert_ne!(a.name, b.name);
    a.post_rx_many(4, 2048);
    b.post_rx_many(4, 2048);
    let fa = frame([0xff; 6], 100, 0xa);
    let fb = frame([0xff; 6], 200, 0xb);
    a.send(&fa);
    b.send(&fb);
    assert_eq!(a.sink(), Some(fa));
    assert_eq!(b.sink(), Some(fb));
    let ga = frame(MAC, 300, 1);
    let gb = frame(MAC, 400, 2);
    a.inject(&ga);
    b.inject(&gb);
    assert_eq!(a.receive(1)[0].1, ga);
    assert_eq!(b.receive(1)[0].1, gb);
    assert_eq!(a.counters().rx_frames, 1);
    assert_eq!(b.counters().rx_frames, 1);
}

#[test]
fn taps_go_with_their_devices() {
    let ns = netns();
    let nic = Nic::started(&ns, ALL);
    let name = nic.name.clone();
    assert!(interface_exists(&ns, &name));
    drop(nic);
    assert!(!interface_exists(&ns, &name), "the tap outlived its device");
}

#[test]
fn tap_errors() {
    let ns = netns();
    assert!(matches!(
        Tap::open("a-name-far-too-long"),
        Err(TapError::InvalidName(_))
    ));
    let result = ns.run(|| {
        let first = Tap::open("hx%d").map_err(|e| e.to_string())?;
        let name = first.name().to_owned();
        // A tap without IFF_MULTI_QUEUE has one queue: a second open is refused.
        let second = Tap::open(&name);
        Ok::<_, String>((name, second.map(|_| ()).map_err(|e| e.to_string())))
    });
    let (name, second) = result.expect("opening a tap");
    assert!(name.starts_with("hx"), "{name}");
    let err = second.expect_err("a second open of one tap");
    assert!(err.contains(&name), "{err}");
}

/// Inputs of the `virtio_net` fuzz target that once found bugs, replayed through the
/// same harness (`husk_devices::virtio::net::fuzzing::run`), plus hand-written hostile
/// ones: all zeros, all ones, every byte value, and programs made of one operation.
#[test]
fn fuzz_regressions_replay() {
    use husk_devices::virtio::net::fuzzing;
    let mut inputs = husk_devices::virtio::testing::fuzz_regressions("virtio_net");
    inputs.push(Vec::new());
    inputs.push((0u8..=255).collect());
    inputs.push(vec![0xff; 600]);
    inputs.push(vec![0; 600]);
    for setup in [0u8, 0x07, 0x2f, 0x47] {
        for op in 0u8..8 {
            let mut input = vec![setup];
            for i in 0..40u8 {
                input.extend_from_slice(&[op, i.wrapping_mul(37), 0xff, i, 0x81, i, 0, 0]);
                input.extend_from_slice(&[0x01, 0x05, 0x40, 0, 0xdc, 0x05, 0x22, 0, 0x06, 0]);
            }
            inputs.push(input);
        }
    }
    for input in &inputs {
        fuzzing::run(input);
    }
}

/// The harness really reaches every outcome: a hand-made input (the fuzzer's seed) gets
/// frames written, refused by the tap and dropped as bad chains, frames received (one
/// over several mergeable buffers), a bad rx chain, and a broken ring.
#[test]
fn fuzz_harness_reaches_every_outcome() {
    use husk_devices::virtio::net::fuzzing;
    #[rustfmt::skip]
    let seed: Vec<u8> = vec![
        0x2f,                                   // mergeable, EVENT_IDX, offloads, queue of 256
        0, 112, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // tx: 112 bytes in 2 pieces
        0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,  // tx: 8 bytes, too short
        0, 200, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // tx: a writable piece
        0, 100, 0, 0, 0, 0, 0, 0, 0x55, 0, 0, 100, 0, 0, 0, 0, 0, 0, 0, // tx: GSO type 0x55, refused
        1, 0xd0, 0x07, 0, 2,                    // rx: 2000 bytes outside memory
        1, 0xd0, 0x07, 0, 0,                    // rx: 2000 bytes, three times
        1, 0xd0, 0x07, 0, 0,
        1, 0xd0, 0x07, 0, 0,
        2, 100, 0, 1,                           // a frame of 114 bytes into the tap
        7,                                      // a step: the device reads the tap
        2, 0x88, 0x13, 2,                       // a frame of 5014 bytes: 3 buffers
        1, 0xd0, 0x07, 0, 0,                    // rx: one more buffer
        5, 0,                                   // notify rx
        4, 1, 0xe9, 0x03,                       // the tx avail index jumps to 1001
        5, 1,                                   // notify tx: broken
        0, 112, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // (reset, then) tx again
    ];
    let summary = fuzzing::run(&seed);
    assert_eq!(
        summary,
        fuzzing::Summary {
            tx_frames: 2,
            tx_refused: 1,
            tx_bad: 2,
            rx_frames: 2,
            rx_bad: 1,
            broken: 1,
        }
    );
}

/// Pseudo-random programs through the harness: the device does what it must.
#[test]
fn fuzz_harness_random_programs() {
    use husk_devices::virtio::net::fuzzing;
    let mut total = fuzzing::Summary::default();
    for input in husk_devices::virtio::testing::random_programs(0x2545_f491_4f6c_dd1d, 200, 8, 400)
    {
        let s = fuzzing::run(&input);
        total.tx_frames += s.tx_frames;
        total.tx_refused += s.tx_refused;
        total.tx_bad += s.tx_bad;
        total.rx_frames += s.rx_frames;
        total.rx_bad += s.rx_bad;
        total.broken += s.broken;
    }
    assert!(
        total.tx_frames > 0 && total.tx_bad > 0 && total.rx_frames > 0 && total.rx_bad > 0,
        "{total:?}"
    );
}
