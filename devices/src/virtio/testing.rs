//! A host-side virtio driver for tests, fuzzing and benchmarks (DESIGN.md, layer 2).
//!
//! [`TestDriver`] plays the guest: it talks to a device through a real [`MmioTransport`],
//! lays out split virtqueues in guest memory, publishes descriptor chains, notifies, and
//! runs the device's event-loop handlers with an `event_manager::EventManager` of its
//! own, exactly as the VMM's event loop would. Raw helpers write arbitrary descriptors
//! and ring indexes, so tests can play a hostile guest too.
//!
//! This is test code: it panics on its own misuse (say, running out of guest memory),
//! never on what the device does.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use super::mmio::status;
use super::{GuestMemory, Interrupt, MmioTransport, VirtioDevice};
use crate::BusDevice;

/// Descriptor flags (virtio 1.2, 2.7.5).
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;

/// Guest RAM of `size` bytes at guest address 0.
pub fn guest_memory(size: usize) -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), size)]).expect("allocating test guest memory")
}

/// One buffer of a descriptor chain.
#[derive(Clone, Copy, Debug)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

impl Desc {
    /// A buffer the device reads (driver → device).
    pub fn readable(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            writable: false,
        }
    }

    /// A buffer the device writes (device → driver).
    pub fn writable(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            writable: true,
        }
    }
}

/// Where the driver put one queue, and how far it has got.
#[derive(Clone, Copy, Debug)]
pub struct DriverQueue {
    pub size: u16,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    /// The avail index the driver will publish next.
    next_avail: u16,
    /// The used index up to which the driver has consumed.
    next_used: u16,
    /// The descriptor slot the next chain starts at.
    next_desc: u16,
}

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// The register offsets the driver uses (a subset of virtio 1.2, 4.2.2).
mod reg {
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const CONFIG: u64 = 0x100;
}

pub struct TestDriver {
    pub mem: GuestMemory,
    pub transport: MmioTransport,
    events: EventManager<Subscriber>,
    irq: EventFd,
    queues: Vec<Option<DriverQueue>>,
    /// Bump allocator over guest memory, from 64 KiB up.
    next_free: u64,
}

impl TestDriver {
    /// Wraps `device` in a transport over `mem` and an event manager of the driver's own.
    pub fn new<D>(device: Arc<Mutex<D>>, mem: GuestMemory) -> Self
    where
        D: VirtioDevice + MutEventSubscriber + Send + 'static,
    {
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("creating the test irq event fd");
        let interrupt = Arc::new(Interrupt::new(
            irq.try_clone().expect("cloning the test irq event fd"),
        ));
        let queue_count = device
            .lock()
            .expect("test device lock")
            .queue_max_sizes()
            .len();
        let transport = MmioTransport::new(device.clone(), mem.clone(), interrupt);
        let mut events: EventManager<Subscriber> =
            EventManager::new().expect("creating the test event manager");
        events.add_subscriber(device);
        Self {
            mem,
            transport,
            events,
            irq,
            queues: vec![None; queue_count],
            next_free: 0x1_0000,
        }
    }

    pub fn read_reg(&mut self, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        self.transport.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    pub fn write_reg(&mut self, offset: u64, value: u32) {
        self.transport.write(offset, &value.to_le_bytes());
    }

    /// Reads the device configuration space.
    pub fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        self.transport.read(reg::CONFIG + offset, data);
    }

    pub fn status(&mut self) -> u32 {
        self.read_reg(reg::STATUS)
    }

    pub fn needs_reset(&mut self) -> bool {
        self.status() & status::DEVICE_NEEDS_RESET != 0
    }

    pub fn device_features(&mut self) -> u64 {
        self.write_reg(reg::DEVICE_FEATURES_SEL, 0);
        let low = self.read_reg(reg::DEVICE_FEATURES);
        self.write_reg(reg::DEVICE_FEATURES_SEL, 1);
        let high = self.read_reg(reg::DEVICE_FEATURES);
        u64::from(low) | (u64::from(high) << 32)
    }

    /// Resets the device, then ACKNOWLEDGE, DRIVER, the driver features, FEATURES_OK.
    /// Returns whether the device accepted the features.
    pub fn negotiate(&mut self, features: u64) -> bool {
        self.reset();
        self.write_reg(reg::STATUS, status::ACKNOWLEDGE);
        self.write_reg(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        self.write_reg(reg::DRIVER_FEATURES_SEL, 0);
        self.write_reg(reg::DRIVER_FEATURES, features as u32);
        self.write_reg(reg::DRIVER_FEATURES_SEL, 1);
        self.write_reg(reg::DRIVER_FEATURES, (features >> 32) as u32);
        let wanted = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.write_reg(reg::STATUS, wanted);
        self.status() & status::FEATURES_OK != 0
    }

    /// Allocates rings for queue `index` with `size` entries, writes the layout and sets
    /// the queue ready. The size is written as is, so a test may pass a bad one.
    pub fn setup_queue(&mut self, index: u16, size: u16) {
        let entries = u64::from(size.max(1));
        let desc_table = self.alloc(16 * entries);
        let avail_ring = self.alloc(6 + 2 * entries);
        let used_ring = self.alloc(6 + 8 * entries);
        self.setup_queue_at(index, size, desc_table, avail_ring, used_ring);
    }

    /// Writes a queue layout at the given addresses, whatever they are.
    pub fn setup_queue_at(
        &mut self,
        index: u16,
        size: u16,
        desc_table: u64,
        avail_ring: u64,
        used_ring: u64,
    ) {
        self.write_reg(reg::QUEUE_SEL, u32::from(index));
        self.write_reg(reg::QUEUE_NUM, u32::from(size));
        for (low, high, addr) in [
            (reg::QUEUE_DESC_LOW, reg::QUEUE_DESC_HIGH, desc_table),
            (reg::QUEUE_DRIVER_LOW, reg::QUEUE_DRIVER_HIGH, avail_ring),
            (reg::QUEUE_DEVICE_LOW, reg::QUEUE_DEVICE_HIGH, used_ring),
        ] {
            self.write_reg(low, addr as u32);
            self.write_reg(high, (addr >> 32) as u32);
        }
        self.write_reg(reg::QUEUE_READY, 1);
        if let Some(slot) = self.queues.get_mut(usize::from(index)) {
            *slot = Some(DriverQueue {
                size,
                desc_table,
                avail_ring,
                used_ring,
                next_avail: 0,
                next_used: 0,
                next_desc: 0,
            });
        }
    }

    pub fn queue_num_max(&mut self, index: u16) -> u32 {
        self.write_reg(reg::QUEUE_SEL, u32::from(index));
        self.read_reg(reg::QUEUE_NUM_MAX)
    }

    /// Sets DRIVER_OK; returns whether the device started (did not ask for a reset).
    pub fn driver_ok(&mut self) -> bool {
        let current = self.status();
        self.write_reg(reg::STATUS, current | status::DRIVER_OK);
        let now = self.status();
        now & status::DRIVER_OK != 0 && now & status::DEVICE_NEEDS_RESET == 0
    }

    /// Negotiates `features`, sets up every queue with its maximum size (or
    /// `queue_size` if smaller) and starts the device. Panics if the device refuses.
    pub fn start(&mut self, features: u64, queue_size: u16) {
        assert!(self.negotiate(features), "the device refused {features:#x}");
        for index in 0..self.queues.len() as u16 {
            let max = self.queue_num_max(index) as u16;
            self.setup_queue(index, max.min(queue_size));
        }
        assert!(self.driver_ok(), "the device did not start");
    }

    /// Writes 0 to the status: the device resets and the driver forgets its queues.
    pub fn reset(&mut self) {
        self.write_reg(reg::STATUS, 0);
        for queue in &mut self.queues {
            *queue = None;
        }
    }

    /// `len` bytes of guest memory, 16-byte aligned and zeroed.
    pub fn alloc(&mut self, len: u64) -> u64 {
        let addr = self.next_free;
        let end = addr + len.max(1);
        let mem_end = self.mem.last_addr().0 + 1;
        assert!(end <= mem_end, "test guest memory exhausted");
        self.next_free = (end + 15) & !15;
        self.mem
            .write_slice(&vec![0u8; len as usize], GuestAddress(addr))
            .expect("zeroing test guest memory");
        addr
    }

    /// Allocates a buffer holding `bytes`.
    pub fn alloc_bytes(&mut self, bytes: &[u8]) -> u64 {
        let addr = self.alloc(bytes.len() as u64);
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .expect("writing test guest memory");
        addr
    }

    pub fn read_bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len];
        self.mem
            .read_slice(&mut data, GuestAddress(addr))
            .expect("reading test guest memory");
        data
    }

    fn queue(&self, index: u16) -> DriverQueue {
        self.queues
            .get(usize::from(index))
            .copied()
            .flatten()
            .expect("queue not set up by the test driver")
    }

    fn queue_mut(&mut self, index: u16) -> &mut DriverQueue {
        self.queues
            .get_mut(usize::from(index))
            .and_then(Option::as_mut)
            .expect("queue not set up by the test driver")
    }

    /// Writes descriptor `slot` of queue `index` as given, flags and next included.
    pub fn write_desc(
        &mut self,
        index: u16,
        slot: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let queue = self.queue(index);
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem
            .write_slice(&raw, GuestAddress(queue.desc_table + 16 * u64::from(slot)))
            .expect("writing a descriptor");
    }

    /// Puts `head` in the next avail ring entry and publishes it.
    pub fn publish_avail(&mut self, index: u16, head: u16) {
        let queue = self.queue(index);
        let entry = u64::from(queue.next_avail % queue.size.max(1));
        self.mem
            .write_obj(head, GuestAddress(queue.avail_ring + 4 + 2 * entry))
            .expect("writing the avail ring");
        let next = queue.next_avail.wrapping_add(1);
        self.set_avail_idx(index, next);
    }

    /// Writes the avail ring's index directly (a hostile driver may jump it).
    pub fn set_avail_idx(&mut self, index: u16, idx: u16) {
        let queue = self.queue_mut(index);
        queue.next_avail = idx;
        let addr = queue.avail_ring + 2;
        self.mem
            .write_obj(idx, GuestAddress(addr))
            .expect("writing the avail index");
    }

    /// Writes `descs` as one chain into consecutive descriptor slots and publishes it.
    /// Returns the head's slot.
    pub fn add_chain(&mut self, index: u16, descs: &[Desc]) -> u16 {
        let queue = self.queue(index);
        let size = queue.size.max(1);
        let head = queue.next_desc % size;
        let mut slot = head;
        for (i, desc) in descs.iter().enumerate() {
            let next = (slot + 1) % size;
            let mut flags = if desc.writable { VIRTQ_DESC_F_WRITE } else { 0 };
            if i + 1 < descs.len() {
                flags |= VIRTQ_DESC_F_NEXT;
            }
            self.write_desc(index, slot, desc.addr, desc.len, flags, next);
            slot = next;
        }
        self.queue_mut(index).next_desc = slot;
        self.publish_avail(index, head);
        head
    }

    /// Notifies queue `index` through the transport's `QueueNotify` register.
    pub fn notify(&mut self, index: u16) {
        self.write_reg(reg::QUEUE_NOTIFY, u32::from(index));
    }

    /// Runs the device's event handlers until nothing is pending.
    pub fn run_events(&mut self) {
        // Bounded: a device that keeps itself busy forever is a bug the test should see
        // as a failure, not a hang.
        for _ in 0..10_000 {
            match self.events.run_with_timeout(0) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) => panic!("test event loop failed: {e:?}"),
            }
        }
        panic!("the device never went idle");
    }

    /// Runs the device's handlers, waiting up to `timeout_ms` for the first event (for
    /// devices whose work starts from a host socket).
    pub fn run_events_for(&mut self, timeout_ms: i32) -> usize {
        match self.events.run_with_timeout(timeout_ms) {
            Ok(n) => n,
            Err(e) => panic!("test event loop failed: {e:?}"),
        }
    }

    /// The next used element the driver has not consumed: (descriptor head, length).
    pub fn used(&mut self, index: u16) -> Option<(u32, u32)> {
        let queue = self.queue(index);
        let used_idx: u16 = self
            .mem
            .read_obj(GuestAddress(queue.used_ring + 2))
            .expect("reading the used index");
        if used_idx == queue.next_used {
            return None;
        }
        let entry = u64::from(queue.next_used % queue.size.max(1));
        let elem = queue.used_ring + 4 + 8 * entry;
        let id: u32 = self.mem.read_obj(GuestAddress(elem)).expect("used ring");
        let len: u32 = self
            .mem
            .read_obj(GuestAddress(elem + 4))
            .expect("used ring");
        self.queue_mut(index).next_used = queue.next_used.wrapping_add(1);
        Some((id, len))
    }

    /// Writes the `used_event` field (EVENT_IDX): the device should interrupt once its
    /// used index passes `idx`.
    pub fn set_used_event(&mut self, index: u16, idx: u16) {
        let queue = self.queue(index);
        let addr = queue.avail_ring + 4 + 2 * u64::from(queue.size);
        self.mem
            .write_obj(idx, GuestAddress(addr))
            .expect("writing used_event");
    }

    /// How many interrupts the device raised since the last call.
    pub fn take_interrupts(&mut self) -> u64 {
        self.irq.read().unwrap_or(0)
    }

    pub fn interrupt_status(&mut self) -> u32 {
        self.read_reg(reg::INTERRUPT_STATUS)
    }

    pub fn ack_interrupt(&mut self, bits: u32) {
        self.write_reg(reg::INTERRUPT_ACK, bits);
    }
}

/// A fuzz input read front to back as a little program; zeros once it runs out. Shared
/// by the devices' fuzzing harnesses.
pub struct FuzzInput<'a> {
    data: &'a [u8],
}

impl<'a> FuzzInput<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }
    pub fn done(&self) -> bool {
        self.data.is_empty()
    }
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u8()).collect()
    }
}

/// The inputs kept in `fuzz/regressions/<target>/` (every file but the README), for the
/// tests that replay them. Panics if the directory cannot be read: it is part of the
/// repository.
pub fn fuzz_regressions(target: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "cannot read the fuzz regressions in {}: {e} (they belong to the repository)",
            dir.display()
        )
    });
    let mut inputs = Vec::new();
    for entry in entries {
        let path = entry.expect("listing fuzz regressions").path();
        if path.extension().is_some_and(|e| e == "md") {
            continue;
        }
        inputs.push(std::fs::read(&path).expect("reading a fuzz regression"));
    }
    inputs
}

/// `count` pseudo-random fuzz programs for the harnesses' tests, from an xorshift64
/// stream seeded with `seed` (deterministic, so a failure repeats): each `min_len` bytes
/// plus up to `spread` more, two thirds of them small numbers (0-7), which the programs'
/// fields (counts, indexes, choices) like, the rest any byte.
pub fn random_programs(seed: u64, count: usize, min_len: usize, spread: u64) -> Vec<Vec<u8>> {
    let mut state = seed;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..count)
        .map(|_| {
            let len = min_len + (next() % spread.max(1)) as usize;
            (0..len)
                .map(|_| {
                    let r = next();
                    match r % 3 {
                        0 => (r >> 8) as u8,
                        _ => (r >> 8) as u8 % 8,
                    }
                })
                .collect()
        })
        .collect()
}
