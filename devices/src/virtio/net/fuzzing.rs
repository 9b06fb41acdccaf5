//! The fuzzing harness of the net device, shared by the `virtio_net` fuzz target and the
//! tests that replay the inputs that once found bugs.
//!
//! [`run`] reads the input as a little program for a hostile guest and a busy host: tx
//! chains of any length (short of the header, past the longest frame) with any header
//! (flags, GSO types and offsets the kernel may refuse), split anywhere, with buffers
//! going the wrong way or lying outside guest memory; rx chains of any shape, the same
//! way; frames of any length sent into the tap from the host; raw descriptors and avail
//! entries; avail index jumps; notifications; resets. The device runs on a real tap in
//! a network namespace of the process's own (made once; it needs root, as the tests do),
//! driven through the same host-side driver as the layer-2 tests.
//!
//! What the device must do, checked after every step for every chain the harness laid
//! out itself: a tx chain is used with length 0 and counted as a frame written, refused
//! by the tap, or (predicted from its shape) a bad chain; an rx chain predicted bad is
//! used with length 0, and a good one holds (with the chains after it, `num_buffers` of
//! them) the next frame sent into the tap, whole, with no frame delivered out of order
//! and none missing that was not counted as dropped; device-readable buffers never
//! change; the device asks for a reset only after the harness broke a ring; and it never
//! panics or spins (the driver's event loop gives up on a device that never goes idle).
//! Once raw descriptors or index jumps are in play the harness only watches for panics
//! until the next reset.
//!
//! The program: a setup byte (bit 0 mergeable rx buffers, bit 1 EVENT_IDX, bit 2
//! checksum and TSO offloads, bits 3-5 the queue size among 1, 2, 4, 16, 64, 256, bit 6
//! hold DRIVER_OK back until the first notification or reset), then up to 64
//! operations (a chain that would overrun its queue is left out), each an
//! opcode byte (mod 8) and its arguments: 0 a tx chain (`Harness::tx`), 1 an rx chain
//! (`Harness::rx`), 2 a frame into the tap, 3 a raw descriptor and maybe an avail entry,
//! 4 an avail index jump, 5 a notification, 6 a reset, 7 nothing (the device runs and
//! is checked after every operation). A missing byte reads as zero.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::testing::{disable_ipv6, set_mtu, NetNs, PacketSocket};
use super::{
    features as net_features, Net, NetConfig, NetCounters, Tap, MAX_FRAME_LEN, RX_QUEUE, TX_QUEUE,
    VNET_HDR_LEN,
};
use crate::virtio::features;
use crate::virtio::testing::{
    guest_memory, Desc, FuzzInput, TestDriver, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};

const MEM_SIZE: u64 = 8 << 20;
/// The rings of each queue: the descriptor table, then the driver area at 4 KiB, then
/// the device area at 8 KiB (room for 256 entries each).
const RINGS: u64 = 0x1_0000;
const RING_STRIDE: u64 = 0x4000;
/// Where chain buffers go.
const ARENA: u64 = 0x10_0000;
const QUEUE_SIZES: [u16; 6] = [1, 2, 4, 16, 64, 256];
const MAX_OPS: usize = 64;
/// The tap's MTU: frames sent into it may be this long (plus the Ethernet header).
const MTU: usize = 9000;
/// What device-readable buffers hold.
const POISON: u8 = 0x5a;
const MAC: [u8; 6] = [0x02, 0x48, 0x55, 0x53, 0x4b, 0xf0];

/// What the harness saw, for tests that check how far an input got.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// tx chains laid out by the harness and checked, by outcome.
    pub tx_frames: u32,
    pub tx_refused: u32,
    pub tx_bad: u32,
    /// Frames the guest received, checked against those sent into the tap.
    pub rx_frames: u32,
    /// rx chains returned unused, as predicted.
    pub rx_bad: u32,
    /// Times the device asked for a reset, after the harness broke a ring.
    pub broken: u32,
}

/// The tap and its packet socket, made once per process in a namespace of its own. The
/// tap is persistent, so that each run attaches to it anew (cheap) instead of making an
/// interface; it goes with the namespace when the process ends.
struct Env {
    ns: NetNs,
    name: String,
    sock: PacketSocket,
}

fn env() -> &'static Mutex<Env> {
    static ENV: OnceLock<Mutex<Env>> = OnceLock::new();
    ENV.get_or_init(|| {
        let ns = NetNs::new().unwrap_or_else(|e| {
            panic!("the virtio-net fuzzing harness needs root (a network namespace): {e}")
        });
        let (name, sock) = ns
            .run(|| -> Result<(String, PacketSocket), String> {
                let tap = Tap::open("fuzz%d").map_err(|e| e.to_string())?;
                let one: libc::c_int = 1;
                // SAFETY: TUNSETPERSIST takes its argument by value.
                if unsafe {
                    libc::ioctl(
                        tap.as_raw_fd(),
                        libc::TUNSETPERSIST,
                        libc::c_ulong::from(one as u32),
                    )
                } < 0
                {
                    return Err(format!(
                        "TUNSETPERSIST: {}",
                        std::io::Error::last_os_error()
                    ));
                }
                disable_ipv6(tap.name()).map_err(|e| e.to_string())?;
                set_mtu(tap.name(), MTU as u32).map_err(|e| e.to_string())?;
                tap.set_up().map_err(|e| e.to_string())?;
                let sock = PacketSocket::bind(tap.name(), false).map_err(|e| e.to_string())?;
                Ok((tap.name().to_owned(), sock))
            })
            .unwrap_or_else(|e| panic!("cannot set up the fuzzing tap: {e}"));
        Mutex::new(Env { ns, name, sock })
    })
}

/// The tap's `tx_dropped`: frames the kernel dropped on their way to the tap's fd (its
/// queue full, say), which the device never saw.
fn kernel_drops(env: &Env) -> u64 {
    let name = format!("{}:", env.name);
    // /proc/thread-self/net is the namespace of the thread that reads it.
    let dev = env
        .ns
        .run(|| std::fs::read_to_string("/proc/thread-self/net/dev"))
        .unwrap_or_else(|e| panic!("cannot read the namespace's /proc/net/dev: {e}"));
    dev.lines()
        .find_map(|line| {
            let rest = line.trim_start().strip_prefix(&name)?;
            rest.split_whitespace().nth(11)?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no {name} in the namespace's /proc/net/dev"))
}

/// Waits until frames sent into the tap reach its fd.
///
/// The tap loses its carrier when the last run's device closes it and gets it back
/// when this run's attaches; until the kernel's link watcher has reacted (soon, but
/// later), the interface's queueing discipline drops what is sent, and `send` still
/// reports success. A frame lost there would look like one the device lost, so probes
/// go through before the run starts.
fn wait_for_carrier(tap: &Tap, sock: &PacketSocket, run_tag: u32) {
    let mut probe = MAC.to_vec();
    probe.extend_from_slice(&[0x02, 0xff]);
    probe.extend_from_slice(&run_tag.to_be_bytes());
    probe.extend_from_slice(&[0x88, 0xb6]);
    probe.extend_from_slice(b"husk carrier probe");
    let mut buf = vec![0u8; MAX_FRAME_LEN + 1];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if sock.send(&probe).is_err() {
            std::thread::sleep(std::time::Duration::from_micros(100));
            continue;
        }
        for _ in 0..10 {
            match tap.read(&mut buf) {
                Ok(n) if buf.get(VNET_HDR_LEN..n) == Some(&probe[..]) => return,
                Ok(_) => {}
                Err(_) => std::thread::sleep(std::time::Duration::from_micros(50)),
            }
        }
    }
    panic!("frames sent into the fuzzing tap never reach it");
}

/// One buffer of a chain the harness laid out.
#[derive(Debug, Clone, Copy)]
struct Piece {
    addr: u64,
    len: u32,
    writable: bool,
}

impl Piece {
    fn in_memory(&self) -> bool {
        self.addr
            .checked_add(u64::from(self.len))
            .is_some_and(|end| end <= MEM_SIZE)
    }
}

/// What the harness expects of an rx chain.
#[derive(Debug)]
struct RxChain {
    pieces: Vec<Piece>,
    /// Predicted to be returned unused.
    bad: bool,
}

struct Harness<'a> {
    drv: TestDriver,
    dev: Arc<Mutex<Net>>,
    sock: &'a PacketSocket,
    env: &'a Env,
    /// Frames the kernel dropped on their way into the tap (its tx_dropped) when the
    /// run began, and how many of those since have been taken as frames gone missing.
    kernel_drops: u64,
    kernel_drops_used: u64,
    features: u64,
    queue_size: u16,
    started: bool,
    /// The harness broke a ring or wrote raw descriptors: only panics count until the
    /// next reset.
    lawless: bool,
    next_free: u64,
    /// tx chains published and not yet seen used, by head: whether predicted bad.
    tx_pending: HashMap<u16, bool>,
    rx_chains: HashMap<u16, RxChain>,
    /// Per queue, the chains the harness published in order (head, descriptors), from
    /// the oldest one still in flight: their descriptors take consecutive slots, so a
    /// new chain must not wrap onto the oldest.
    published: [VecDeque<(u16, usize)>; 2],
    /// Chains seen used, per queue, not yet popped from `published`.
    done: [HashSet<u16>; 2],
    /// This run's tag, in the frames sent into the tap: frames of earlier runs may still
    /// be on their way.
    run_tag: u32,
    /// Frames the device counted as dropped and not yet matched against `injected`.
    unmatched_drops: u64,
    /// A ring was broken and the device reset: which frames went into chains the
    /// harness did not lay out is unknown, so delivered frames are only matched, not
    /// checked for gaps.
    rx_unsynced: bool,
    /// Used rx chains of a frame whose later chains are not used yet.
    rx_partial: VecDeque<(u16, u32)>,
    /// Frames sent into the tap and not yet seen by the guest, in order.
    injected: VecDeque<Vec<u8>>,
    /// Device-readable buffers and what they must still hold.
    readonly: Vec<(u64, Vec<u8>)>,
    /// Counters when last checked.
    last: NetCounters,
    summary: Summary,
}

/// Runs one fuzz input. Panics on any broken invariant.
pub fn run(data: &[u8]) -> Summary {
    static RUNS: AtomicU32 = AtomicU32::new(0);
    let run_tag = RUNS.fetch_add(1, Ordering::Relaxed);
    let env = env().lock().unwrap_or_else(|p| p.into_inner());
    let name = env.name.clone();
    let tap = env
        .ns
        .run(move || Tap::open(&name))
        .unwrap_or_else(|e| panic!("cannot attach to the fuzzing tap: {e}"));
    wait_for_carrier(&tap, &env.sock, run_tag);
    // Frames the last run's device wrote are of no interest.
    while let Ok(Some(_)) = env.sock.recv(std::time::Duration::ZERO) {}
    let dev = Arc::new(Mutex::new(
        Net::new(NetConfig { tap, mac: MAC }).expect("creating the net device"),
    ));
    let mut input = FuzzInput::new(data);
    let setup = input.u8();
    let mut features_ = features::VERSION_1 | net_features::MAC | net_features::STATUS;
    if setup & 1 != 0 {
        features_ |= net_features::MRG_RXBUF;
    }
    if setup & 2 != 0 {
        features_ |= features::RING_EVENT_IDX;
    }
    if setup & 4 != 0 {
        features_ |= net_features::CSUM
            | net_features::HOST_TSO4
            | net_features::HOST_TSO6
            | net_features::GUEST_CSUM
            | net_features::GUEST_TSO4
            | net_features::GUEST_TSO6;
    }
    let queue_size = QUEUE_SIZES[usize::from((setup >> 3) & 7) % QUEUE_SIZES.len()];
    let drv = TestDriver::new(dev.clone(), guest_memory(MEM_SIZE as usize));
    let mut h = Harness {
        drv,
        dev,
        sock: &env.sock,
        env: &env,
        kernel_drops: kernel_drops(&env),
        kernel_drops_used: 0,
        features: features_,
        queue_size,
        started: false,
        lawless: false,
        next_free: ARENA,
        tx_pending: HashMap::new(),
        rx_chains: HashMap::new(),
        published: Default::default(),
        done: Default::default(),
        run_tag,
        unmatched_drops: 0,
        rx_unsynced: false,
        rx_partial: VecDeque::new(),
        injected: VecDeque::new(),
        readonly: Vec::new(),
        last: NetCounters::default(),
        summary: Summary::default(),
    };
    h.start(setup & 0x40 == 0);
    for _ in 0..MAX_OPS {
        if input.done() {
            break;
        }
        match input.u8() % 8 {
            0 => h.tx(&mut input),
            1 => h.rx(&mut input),
            2 => h.inject(&mut input),
            3 => h.raw(&mut input),
            4 => h.jump(&mut input),
            5 => {
                let queue = u16::from(input.u8() & 1);
                if h.started {
                    h.drv.notify(queue);
                } else {
                    // DRIVER_OK, late.
                    h.started = h.drv.driver_ok();
                }
            }
            6 => h.restart(),
            // A frame sent into the tap is readable from it when `send` returns: a step
            // of its own is all the waiting it needs (and waiting longer would cost
            // the fuzzer most of its speed).
            _ => {}
        }
        h.settle();
    }
    // Check everything once more.
    h.settle();
    h.check_readonly();
    h.summary
}

impl Harness<'_> {
    fn start(&mut self, driver_ok: bool) {
        self.started = false;
        if !self.drv.negotiate(self.features) {
            panic!("the device refused features {:#x}", self.features);
        }
        // The rings go to the same fixed places every time (the driver's allocator would
        // otherwise move them up into the arena with each reset), zeroed, as a driver
        // that reuses its rings after a reset leaves them.
        for queue in [RX_QUEUE, TX_QUEUE] {
            let base = RINGS + u64::from(queue) * RING_STRIDE;
            let zeros = vec![0u8; RING_STRIDE as usize];
            vm_memory::Bytes::write_slice(&self.drv.mem, &zeros, vm_memory::GuestAddress(base))
                .expect("zeroing the rings");
            self.drv
                .setup_queue_at(queue, self.queue_size, base, base + 0x1000, base + 0x2000);
        }
        if driver_ok {
            self.started = self.drv.driver_ok();
            assert!(self.started, "the device did not start");
        }
    }

    fn restart(&mut self) {
        // Frames the device held when reset are dropped (and counted); those in the
        // tap's queue are delivered to the next driver. Either way the order holds.
        self.check_readonly();
        self.drv.reset();
        self.tx_pending.clear();
        self.rx_chains.clear();
        self.rx_partial.clear();
        self.readonly.clear();
        self.published = Default::default();
        self.done = Default::default();
        if self.lawless {
            self.rx_unsynced = true;
        }
        self.lawless = false;
        self.next_free = ARENA;
        self.start(true);
    }

    /// `len` bytes of guest memory, or `None` when the arena is used up.
    fn alloc(&mut self, len: u32) -> Option<u64> {
        let addr = self.next_free;
        let end = addr.checked_add(u64::from(len).max(1))?;
        if end > MEM_SIZE {
            return None;
        }
        self.next_free = (end + 15) & !15;
        Some(addr)
    }

    /// Lays out buffers of `total` bytes split into `count` pieces, perturbed by
    /// `perturb` (bits 0-1: one piece goes the wrong way, lies outside memory, or is
    /// empty; bits 2-3 which piece; bits 4-5 where outside memory; bit 6, for the
    /// caller: publish without a notification). Returns the pieces and whether a perturbation
    /// makes the chain bad.
    fn layout(
        &mut self,
        total: u32,
        count: u8,
        perturb: u8,
        writable: bool,
    ) -> Option<(Vec<Piece>, bool)> {
        let count = u32::from(count % 4) + 1;
        let mut pieces = Vec::new();
        let mut left = total;
        for i in 0..count {
            let len = if i + 1 == count {
                left
            } else {
                left / (count - i)
            };
            left -= len;
            let addr = self.alloc(len)?;
            pieces.push(Piece {
                addr,
                len,
                writable,
            });
        }
        let which = usize::from(perturb >> 2 & 3) % pieces.len();
        let mut bad = false;
        match perturb & 3 {
            1 => {
                pieces[which].writable = !writable;
                bad = pieces[which].len > 0;
            }
            2 => {
                // Across the end of guest memory, past it, far past it, or so far that
                // the end address overflows.
                let piece = &mut pieces[which];
                piece.addr = match perturb >> 4 & 3 {
                    0 if piece.len >= 2 => MEM_SIZE - 1,
                    0 | 1 => MEM_SIZE,
                    2 => 1 << 40,
                    _ => u64::MAX - 8,
                };
                bad = piece.len > 0;
            }
            3 => {
                // An empty piece is skipped, and the bytes it had are gone from the chain.
                pieces[which].len = 0;
            }
            _ => {}
        }
        Some((pieces, bad))
    }

    fn publish(&mut self, queue: u16, pieces: &[Piece]) -> u16 {
        let head = self.publish_descs(queue, pieces);
        self.published[usize::from(queue)].push_back((head, pieces.len()));
        head
    }

    /// A chain of the harness's was used: its slots are free once older ones are.
    fn retire(&mut self, queue: u16, head: u16) {
        let q = usize::from(queue);
        self.done[q].insert(head);
        while let Some(&(oldest, _)) = self.published[q].front() {
            if !self.done[q].remove(&oldest) {
                break;
            }
            self.published[q].pop_front();
        }
    }

    fn publish_descs(&mut self, queue: u16, pieces: &[Piece]) -> u16 {
        let descs: Vec<Desc> = pieces
            .iter()
            .map(|p| Desc {
                addr: p.addr,
                len: p.len,
                writable: p.writable,
            })
            .collect();
        self.drv.add_chain(queue, &descs)
    }

    /// Op 0: a tx chain. Arguments: length (u32, mod MAX_FRAME_LEN + 64), piece count,
    /// perturbation, 12 header bytes.
    fn tx(&mut self, input: &mut FuzzInput) {
        let total = input.u32() % (MAX_FRAME_LEN as u32 + 64);
        let count = input.u8();
        let perturb = input.u8();
        let hdr = input.bytes(VNET_HDR_LEN);
        let Some((pieces, mut bad)) = self.layout(total, count, perturb, false) else {
            return;
        };
        let mut bytes = hdr;
        bytes.resize(total as usize, 0);
        for (i, b) in bytes.iter_mut().enumerate().skip(VNET_HDR_LEN) {
            *b = (i as u8).wrapping_mul(7) ^ perturb;
        }
        let mut at = 0usize;
        for p in &pieces {
            let end = at + p.len as usize;
            if p.in_memory() {
                let _ = vm_memory::Bytes::write_slice(
                    &self.drv.mem,
                    &bytes[at..end],
                    vm_memory::GuestAddress(p.addr),
                );
                // The device never writes a tx chain, whichever way its buffers go.
                self.readonly.push((p.addr, bytes[at..end].to_vec()));
            }
            at = end;
        }
        let effective: u64 = pieces.iter().map(|p| u64::from(p.len)).sum();
        if effective < VNET_HDR_LEN as u64 || effective > MAX_FRAME_LEN as u64 {
            bad = true;
        }
        if self.queue_full(TX_QUEUE, pieces.len()) {
            return;
        }
        let head = self.publish(TX_QUEUE, &pieces);
        self.tx_pending.insert(head, bad);
        if perturb & 0x40 == 0 && self.started {
            self.drv.notify(TX_QUEUE);
        }
    }

    /// Op 1: an rx chain. Arguments: length (u16 mod 20000), piece count, perturbation.
    fn rx(&mut self, input: &mut FuzzInput) {
        let total = u32::from(input.u16()) % 20_000;
        let count = input.u8();
        let perturb = input.u8();
        let Some((pieces, mut bad)) = self.layout(total, count, perturb, true) else {
            return;
        };
        let effective: u64 = pieces.iter().map(|p| u64::from(p.len)).sum();
        if effective < VNET_HDR_LEN as u64 {
            bad = true;
        }
        // A readable piece after writable ones, or a readable piece only: bad either way
        // (already predicted). Poison readable pieces to see they stay untouched.
        for p in &pieces {
            if !p.writable && p.in_memory() {
                let poison = vec![POISON; p.len as usize];
                let _ = vm_memory::Bytes::write_slice(
                    &self.drv.mem,
                    &poison,
                    vm_memory::GuestAddress(p.addr),
                );
                self.readonly.push((p.addr, poison));
            }
        }
        if self.queue_full(RX_QUEUE, pieces.len()) {
            return;
        }
        let head = self.publish(RX_QUEUE, &pieces);
        self.rx_chains.insert(head, RxChain { pieces, bad });
        if perturb & 0x40 == 0 && self.started {
            self.drv.notify(RX_QUEUE);
        }
    }

    /// Whether publishing a chain of `count` descriptors would overwrite descriptors of
    /// chains still in flight (the driver writes consecutive slots), or publish more
    /// chains than the avail ring holds.
    fn queue_full(&self, queue: u16, count: usize) -> bool {
        let published = &self.published[usize::from(queue)];
        let span: usize = published.iter().map(|&(_, n)| n).sum();
        let size = usize::from(self.queue_size);
        span + count > size || published.len() + 1 > size
    }

    /// Op 2: a frame into the tap. Arguments: length (u16 mod the MTU), seed.
    fn inject(&mut self, input: &mut FuzzInput) {
        let len = 14 + usize::from(input.u16()) % (MTU + 1);
        let seed = input.u8();
        let mut frame = Vec::with_capacity(len);
        frame.extend_from_slice(&MAC);
        frame.extend_from_slice(&[0x02, seed]);
        frame.extend_from_slice(&self.run_tag.to_be_bytes());
        frame.extend_from_slice(&[0x88, 0xb5]);
        frame.extend((14..len).map(|i| (i as u8) ^ seed));
        if self.sock.send(&frame).is_ok() {
            self.injected.push_back(frame);
        }
    }

    /// Op 3: a raw descriptor. Arguments: queue, slot, address, length, flags, next, and
    /// whether to publish it.
    fn raw(&mut self, input: &mut FuzzInput) {
        let queue = u16::from(input.u8() & 1);
        let slot = input.u16() % self.queue_size;
        let addr = u64::from(input.u32()) % (MEM_SIZE + 0x1000);
        let len = u32::from(input.u16());
        let flags = u16::from(input.u8()) & (VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE | 4);
        let next = input.u16();
        let publish = input.u8() & 1 != 0;
        self.lawless = true;
        self.drv.write_desc(queue, slot, addr, len, flags, next);
        if publish {
            self.drv.publish_avail(queue, slot);
        }
    }

    /// Op 4: the avail index of a queue jumps. Arguments: queue, new index.
    fn jump(&mut self, input: &mut FuzzInput) {
        let queue = u16::from(input.u8() & 1);
        let idx = input.u16();
        self.lawless = true;
        self.drv.set_avail_idx(queue, idx);
    }

    /// Runs the device until it is idle and checks what it did.
    fn settle(&mut self) {
        self.drv.run_events();
        let counters = self.counters();
        if self.drv.needs_reset() {
            assert!(
                self.lawless,
                "the device asked for a reset with sound rings"
            );
            self.summary.broken += 1;
            self.restart();
            self.last = self.counters();
            return;
        }
        if self.lawless {
            // Which chains the used entries are is unknown now; the next reset starts
            // over.
            while self.drv.used(TX_QUEUE).is_some() {}
            while self.drv.used(RX_QUEUE).is_some() {}
            self.last = counters;
            return;
        }
        self.check_tx(counters);
        self.check_rx(counters);
        self.last = counters;
    }

    /// Device-readable buffers still hold what the harness put there. Checked before a
    /// reset and at the end of a run, not after every step: the buffers of big tx
    /// frames add up to megabytes.
    fn check_readonly(&self) {
        if self.lawless {
            // Raw descriptors may have sent the device's writes anywhere.
            return;
        }
        for (addr, bytes) in &self.readonly {
            assert!(
                self.drv.read_bytes(*addr, bytes.len()) == *bytes,
                "the device wrote into a device-readable buffer at {addr:#x}"
            );
        }
    }

    fn counters(&self) -> NetCounters {
        self.dev
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .counters()
    }

    fn check_tx(&mut self, counters: NetCounters) {
        let (mut frames, mut refused, mut bad) = (0u64, 0u64, 0u64);
        while let Some((head, len)) = self.drv.used(TX_QUEUE) {
            assert_eq!(len, 0, "a tx chain used with a length");
            let head = u16::try_from(head).expect("a used id past the queue");
            let was_bad = self
                .tx_pending
                .remove(&head)
                .unwrap_or_else(|| panic!("tx chain {head} used but not pending"));
            self.retire(TX_QUEUE, head);
            if was_bad {
                bad += 1;
            } else {
                frames += 1;
            }
        }
        let written = counters.tx_frames - self.last.tx_frames;
        refused += counters.tx_dropped - self.last.tx_dropped;
        assert_eq!(counters.tx_bad_chains - self.last.tx_bad_chains, bad);
        assert_eq!(written + refused, frames, "tx frames: written + refused");
        self.summary.tx_frames += written as u32;
        self.summary.tx_refused += refused as u32;
        self.summary.tx_bad += bad as u32;
    }

    fn check_rx(&mut self, counters: NetCounters) {
        let mut bad = 0u64;
        self.unmatched_drops += counters.rx_dropped - self.last.rx_dropped;
        let mut delivered = 0u64;
        while let Some((head, len)) = self.drv.used(RX_QUEUE) {
            let head = u16::try_from(head).expect("a used id past the queue");
            let chain = self
                .rx_chains
                .get(&head)
                .unwrap_or_else(|| panic!("rx chain {head} used but not posted"));
            if chain.bad {
                assert_eq!(len, 0, "a bad rx chain used with a length");
                assert!(self.rx_partial.is_empty(), "a bad chain inside a frame");
                self.rx_chains.remove(&head);
                self.retire(RX_QUEUE, head);
                bad += 1;
                continue;
            }
            let capacity: u32 = chain.pieces.iter().map(|p| p.len).sum();
            assert!(
                len > 0 && len <= capacity,
                "rx used length {len} of {capacity}"
            );
            self.rx_partial.push_back((head, len));
            let first = self.read_chain(self.rx_partial[0].0, self.rx_partial[0].1);
            assert!(first.len() >= VNET_HDR_LEN, "a frame without a header");
            let num = usize::from(u16::from_le_bytes([first[10], first[11]]));
            let mergeable = self.features & net_features::MRG_RXBUF != 0;
            assert!(num >= 1 && (mergeable || num == 1), "num_buffers {num}");
            if self.rx_partial.len() < num {
                continue;
            }
            let mut bytes = Vec::new();
            for (head, len) in std::mem::take(&mut self.rx_partial) {
                bytes.extend(self.read_chain(head, len));
                self.rx_chains.remove(&head);
                self.retire(RX_QUEUE, head);
            }
            delivered += 1;
            self.match_frame(&bytes[VNET_HDR_LEN..]);
        }
        assert_eq!(counters.rx_bad_chains - self.last.rx_bad_chains, bad);
        assert_eq!(counters.rx_frames - self.last.rx_frames, delivered);
        self.summary.rx_frames += delivered as u32;
        self.summary.rx_bad += bad as u32;
    }

    /// Checks a frame the guest received against those sent into the tap: the next one,
    /// after as many as the device counted dropped.
    fn match_frame(&mut self, frame: &[u8]) {
        let tag = self.run_tag.to_be_bytes();
        if frame.get(8..12) != Some(&tag[..]) || frame.get(12..14) != Some(&[0x88, 0xb5][..]) {
            // A frame of an earlier run, still on its way when this one began.
            return;
        }
        if self.rx_unsynced {
            if let Some(at) = self.injected.iter().position(|f| f == frame) {
                self.injected.drain(..=at);
            }
            return;
        }
        loop {
            let Some(next) = self.injected.pop_front() else {
                panic!("the guest received a frame never sent into the tap");
            };
            if next == frame {
                return;
            }
            if self.unmatched_drops == 0 {
                // Not the device's doing if the kernel dropped it before the tap's fd.
                let kernel = kernel_drops(self.env) - self.kernel_drops;
                if kernel > self.kernel_drops_used {
                    self.kernel_drops_used += 1;
                    continue;
                }
            }
            assert!(
                self.unmatched_drops > 0,
                "a frame sent into the tap went missing (or came out of order): expected {} bytes (source {:02x?}), got {} bytes (source {:02x?}), {} more sent; device counters {:?}; the tap's kernel drops {}",
                next.len(),
                next.get(6..12),
                frame.len(),
                frame.get(6..12),
                self.injected.len(),
                self.last,
                kernel_drops(self.env) - self.kernel_drops,
            );
            self.unmatched_drops -= 1;
        }
    }

    /// The first `len` bytes of rx chain `head`.
    fn read_chain(&self, head: u16, len: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut left = len as usize;
        for p in &self.rx_chains[&head].pieces {
            if left == 0 {
                break;
            }
            let n = left.min(p.len as usize);
            out.extend(self.drv.read_bytes(p.addr, n));
            left -= n;
        }
        assert_eq!(left, 0, "used length past the chain");
        out
    }
}
