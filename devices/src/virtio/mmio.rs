//! The virtio-mmio transport, version 2 (virtio 1.2, section 4.2): the register window
//! through which the guest driver discovers a device, negotiates features, lays out the
//! queues and starts or resets the device.
//!
//! The transport keeps the queue layout the driver writes as plain numbers and builds the
//! `virtio_queue::Queue`s only when the driver sets DRIVER_OK, where every size and
//! address is checked at once; a layout that does not hold up marks the device as
//! needing a reset instead of starting it.

use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use super::{features, ActivateContext, GuestMemory, Interrupt, VirtioDevice};
use crate::BusDevice;

/// Size of each device's MMIO window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;

/// "virt", little endian.
const MAGIC_VALUE: u32 = 0x7472_6976;
const VERSION: u32 = 2;
/// Vendor id reported to the driver ("HUSK" would not fit the spirit of PCI ids; any
/// value is allowed for virtio-mmio).
const VENDOR_ID: u32 = 0x4b53_5548;

/// Register offsets (virtio 1.2, 4.2.2).
mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
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
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// What the driver wrote about one queue, before it is checked.
#[derive(Clone, Copy, Debug, Default)]
struct QueueLayout {
    size: u16,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
}

pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemory,
    interrupt: Arc<Interrupt>,
    device_status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    queues: Vec<QueueLayout>,
    queue_max_sizes: Vec<u16>,
}

impl MmioTransport {
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
    ) -> Self {
        let queue_max_sizes = lock(&device).queue_max_sizes().to_vec();
        let queues = queue_max_sizes
            .iter()
            .map(|&max| QueueLayout {
                size: max,
                ..Default::default()
            })
            .collect();
        Self {
            device,
            mem,
            interrupt,
            device_status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            queues,
            queue_max_sizes,
        }
    }

    /// The `Status` register as the driver reads it.
    pub fn status(&self) -> u32 {
        let mut value = self.device_status;
        if self.interrupt.needs_reset() {
            value |= status::DEVICE_NEEDS_RESET;
        }
        value
    }

    fn has_status(&self, bits: u32) -> bool {
        self.device_status & bits == bits
    }

    /// The driver may lay out queues and acknowledge features only between DRIVER (or
    /// FEATURES_OK for queues) and DRIVER_OK.
    fn queue_config_allowed(&self) -> bool {
        self.has_status(status::FEATURES_OK) && !self.has_status(status::DRIVER_OK)
    }

    fn selected_queue(&mut self) -> Option<&mut QueueLayout> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn read_register(&self, offset: u64) -> u32 {
        let device = lock(&self.device);
        let selected = self.queues.get(self.queue_sel as usize);
        match offset {
            reg::MAGIC_VALUE => MAGIC_VALUE,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => device.features() as u32,
                1 => (device.features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self
                .queue_max_sizes
                .get(self.queue_sel as usize)
                .copied()
                .map_or(0, u32::from),
            reg::QUEUE_READY => selected.map_or(0, |q| u32::from(q.ready)),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.status(),
            // No shared memory regions: their length reads as all ones (virtio 1.2, 4.2.2).
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH => u32::MAX,
            reg::CONFIG_GENERATION => device.config_generation(),
            _ => {
                log::debug!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::DRIVER_FEATURES => {
                if !self.has_status(status::DRIVER) || self.has_status(status::FEATURES_OK) {
                    log::warn!("virtio-mmio: driver features written out of order, ignored");
                    return;
                }
                let shift = match self.driver_features_sel {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                self.acked_features &= !(u64::from(u32::MAX) << shift);
                self.acked_features |= u64::from(value) << shift;
            }
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NUM
            | reg::QUEUE_READY
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => self.write_queue_register(offset, value),
            reg::QUEUE_NOTIFY => self.notify(value),
            reg::INTERRUPT_ACK => self.interrupt.acknowledge(value),
            reg::STATUS => self.write_status(value),
            _ => log::debug!("virtio-mmio: write of {value:#x} to register {offset:#x} ignored"),
        }
    }

    fn write_queue_register(&mut self, offset: u64, value: u32) {
        if !self.queue_config_allowed() {
            log::warn!("virtio-mmio: queue register {offset:#x} written outside set-up, ignored");
            return;
        }
        let Some(queue) = self.selected_queue() else {
            log::warn!("virtio-mmio: queue register {offset:#x} written for a missing queue");
            return;
        };
        let set_low = |field: &mut u64| *field = (*field & !0xffff_ffff) | u64::from(value);
        let set_high = |field: &mut u64| *field = (*field & 0xffff_ffff) | (u64::from(value) << 32);
        match offset {
            // Checked when the driver starts the device; the register only keeps 16 bits.
            reg::QUEUE_NUM => queue.size = value as u16,
            reg::QUEUE_READY => queue.ready = value == 1,
            reg::QUEUE_DESC_LOW => set_low(&mut queue.desc_table),
            reg::QUEUE_DESC_HIGH => set_high(&mut queue.desc_table),
            reg::QUEUE_DRIVER_LOW => set_low(&mut queue.avail_ring),
            reg::QUEUE_DRIVER_HIGH => set_high(&mut queue.avail_ring),
            reg::QUEUE_DEVICE_LOW => set_low(&mut queue.used_ring),
            reg::QUEUE_DEVICE_HIGH => set_high(&mut queue.used_ring),
            _ => {}
        }
    }

    /// A `QueueNotify` write that KVM did not turn into an ioeventfd signal (no ioeventfd
    /// registered, as in the host-side tests): pass it on to the same event fd.
    fn notify(&self, queue: u32) {
        let device = lock(&self.device);
        match device.queue_events().get(queue as usize) {
            Some(event) => {
                if let Err(e) = event.write(1) {
                    log::error!("virtio-mmio: cannot signal queue {queue}: {e}");
                }
            }
            None => log::warn!("virtio-mmio: notification for missing queue {queue}"),
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let added = value & !self.device_status;
        // The driver only ever adds bits (virtio 1.2, 3.1.1); FAILED may come at any time.
        if value & self.device_status != self.device_status {
            log::warn!(
                "virtio-mmio: status {value:#x} drops bits of {:#x}, ignored",
                self.device_status
            );
            return;
        }
        if added & status::FEATURES_OK != 0 && !self.features_acceptable() {
            // Leaving FEATURES_OK clear tells the driver the features were refused.
            self.device_status = value & !status::FEATURES_OK;
            return;
        }
        if added & status::DRIVER_OK != 0 {
            if !self.has_status(status::FEATURES_OK) {
                log::warn!("virtio-mmio: DRIVER_OK before FEATURES_OK, ignored");
                return;
            }
            self.device_status = value;
            self.activate();
            return;
        }
        self.device_status = value;
    }

    /// The acknowledged features must be ones the device offered, and must include
    /// VERSION_1: this transport speaks only the modern interface.
    fn features_acceptable(&self) -> bool {
        let offered = lock(&self.device).features();
        let ok =
            self.acked_features & !offered == 0 && self.acked_features & features::VERSION_1 != 0;
        if !ok {
            log::warn!(
                "virtio-mmio: driver features {:#x} refused (device offers {offered:#x})",
                self.acked_features
            );
        }
        ok
    }

    /// Builds the queues from what the driver wrote and starts the device; on any
    /// inconsistency the device is marked as needing a reset instead.
    fn activate(&mut self) {
        let queues = match self.build_queues() {
            Ok(queues) => queues,
            Err(why) => {
                log::warn!("virtio-mmio: cannot start the device: {why}");
                self.interrupt.set_needs_reset();
                return;
            }
        };
        let context = ActivateContext {
            mem: self.mem.clone(),
            queues,
            acked_features: self.acked_features,
            interrupt: self.interrupt.clone(),
        };
        if let Err(e) = lock(&self.device).activate(context) {
            log::warn!("virtio-mmio: {e}");
            self.interrupt.set_needs_reset();
        }
    }

    fn build_queues(&self) -> Result<Vec<Queue>, String> {
        let event_idx = self.acked_features & features::RING_EVENT_IDX != 0;
        self.queues
            .iter()
            .zip(&self.queue_max_sizes)
            .enumerate()
            .map(|(index, (layout, &max_size))| {
                let bad = |what: String| format!("queue {index}: {what}");
                if !layout.ready {
                    return Err(bad("not ready".into()));
                }
                let mut queue = Queue::new(max_size).map_err(|e| bad(e.to_string()))?;
                queue
                    .try_set_size(layout.size)
                    .map_err(|_| bad(format!("size {} (max {max_size})", layout.size)))?;
                queue
                    .try_set_desc_table_address(GuestAddress(layout.desc_table))
                    .map_err(|e| bad(format!("descriptor table: {e}")))?;
                queue
                    .try_set_avail_ring_address(GuestAddress(layout.avail_ring))
                    .map_err(|e| bad(format!("driver area: {e}")))?;
                queue
                    .try_set_used_ring_address(GuestAddress(layout.used_ring))
                    .map_err(|e| bad(format!("device area: {e}")))?;
                queue.set_event_idx(event_idx);
                queue.set_ready(true);
                if !queue.is_valid(&self.mem) {
                    return Err(bad("rings outside guest memory".into()));
                }
                Ok(queue)
            })
            .collect()
    }

    fn reset(&mut self) {
        lock(&self.device).reset();
        self.interrupt.clear();
        self.device_status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.acked_features = 0;
        self.queue_sel = 0;
        for (queue, &max) in self.queues.iter_mut().zip(&self.queue_max_sizes) {
            *queue = QueueLayout {
                size: max,
                ..Default::default()
            };
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            data.fill(0);
            lock(&self.device).read_config(offset - reg::CONFIG, data);
            return;
        }
        // Registers are 32 bits wide and read whole (virtio 1.2, 4.2.2.2).
        if data.len() != 4 || !offset.is_multiple_of(4) {
            log::warn!(
                "virtio-mmio: {}-byte read at {offset:#x} ignored",
                data.len()
            );
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            lock(&self.device).write_config(offset - reg::CONFIG, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            log::warn!(
                "virtio-mmio: {}-byte write at {offset:#x} ignored",
                data.len()
            );
            return;
        };
        if !offset.is_multiple_of(4) {
            log::warn!("virtio-mmio: unaligned write at {offset:#x} ignored");
            return;
        }
        self.write_register(offset, u32::from_le_bytes(bytes));
    }
}

/// A device whose lock was poisoned keeps serving: the transport never leaves it half
/// updated, and a panic elsewhere must not spread to the vCPU threads.
fn lock(device: &Mutex<dyn VirtioDevice>) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testing::{guest_memory, TestDriver};
    use crate::virtio::ActivateError;
    use event_manager::{EventOps, Events, MutEventSubscriber};
    use vmm_sys_util::eventfd::EventFd;

    /// A device with two queues that records what the transport does to it.
    struct Recorder {
        queue_events: Vec<EventFd>,
        activations: Vec<(u64, Vec<u16>)>,
        resets: usize,
        config: [u8; 8],
    }

    impl Recorder {
        fn new() -> Self {
            Self {
                queue_events: (0..2)
                    .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
                    .collect(),
                activations: Vec::new(),
                resets: 0,
                config: *b"husk-cfg",
            }
        }
    }

    const OFFERED: u64 = features::VERSION_1 | features::RING_EVENT_IDX | 1;

    impl VirtioDevice for Recorder {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn features(&self) -> u64 {
            OFFERED
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, byte) in data.iter_mut().enumerate() {
                *byte = self.config.get(offset as usize + i).copied().unwrap_or(0);
            }
        }
        fn activate(&mut self, context: ActivateContext) -> Result<(), ActivateError> {
            self.activations.push((
                context.acked_features,
                context.queues.iter().map(|q| q.size()).collect(),
            ));
            Ok(())
        }
        fn reset(&mut self) {
            self.resets += 1;
        }
        fn queue_events(&self) -> &[EventFd] {
            &self.queue_events
        }
    }

    impl MutEventSubscriber for Recorder {
        fn process(&mut self, _events: Events, _ops: &mut EventOps) {}
        fn init(&mut self, _ops: &mut EventOps) {}
    }

    fn driver() -> (Arc<Mutex<Recorder>>, TestDriver) {
        let device = Arc::new(Mutex::new(Recorder::new()));
        let driver = TestDriver::new(device.clone(), guest_memory(1 << 20));
        (device, driver)
    }

    #[test]
    fn identifies_as_a_modern_virtio_mmio_device() {
        let (_, mut drv) = driver();
        assert_eq!(drv.read_reg(reg::MAGIC_VALUE), MAGIC_VALUE);
        assert_eq!(drv.read_reg(reg::VERSION), 2);
        assert_eq!(drv.read_reg(reg::DEVICE_ID), 42);
        assert_eq!(drv.device_features(), OFFERED);
        assert_eq!(drv.queue_num_max(0), 16);
        assert_eq!(drv.queue_num_max(1), 8);
        assert_eq!(drv.queue_num_max(2), 0);
        let mut config = [0u8; 4];
        drv.read_config(4, &mut config);
        assert_eq!(&config, b"-cfg");
        drv.read_config(6, &mut config);
        assert_eq!(&config, b"fg\0\0");
    }

    #[test]
    fn starts_the_device_with_the_negotiated_layout() {
        let (device, mut drv) = driver();
        assert!(drv.negotiate(features::VERSION_1 | 1));
        drv.setup_queue(0, 8);
        drv.setup_queue(1, 8);
        assert!(drv.driver_ok());
        let device = device.lock().unwrap();
        assert_eq!(
            device.activations,
            vec![(features::VERSION_1 | 1, vec![8, 8])]
        );
    }

    #[test]
    fn refuses_features_not_offered_or_without_version_1() {
        let (_, mut drv) = driver();
        assert!(!drv.negotiate(features::VERSION_1 | 2));
        assert!(!drv.negotiate(1));
        assert!(drv.negotiate(features::VERSION_1));
    }

    #[test]
    fn a_bad_queue_layout_needs_a_reset_instead_of_starting() {
        for (size, desc_table) in [(6u16, 0x1000u64), (32, 0x1000), (8, 0x1001), (8, 1 << 40)] {
            let (device, mut drv) = driver();
            assert!(drv.negotiate(features::VERSION_1));
            drv.setup_queue_at(0, size, desc_table, 0x2000, 0x3000);
            drv.setup_queue(1, 8);
            assert!(!drv.driver_ok(), "size {size} at {desc_table:#x} accepted");
            assert!(drv.needs_reset());
            assert!(device.lock().unwrap().activations.is_empty());
            // A reset clears the condition and the device can start properly.
            drv.reset();
            assert!(!drv.needs_reset());
            drv.start(features::VERSION_1, 8);
            assert_eq!(device.lock().unwrap().activations.len(), 1);
        }
    }

    #[test]
    fn queues_must_all_be_ready() {
        let (device, mut drv) = driver();
        assert!(drv.negotiate(features::VERSION_1));
        drv.setup_queue(0, 8);
        assert!(!drv.driver_ok());
        assert!(device.lock().unwrap().activations.is_empty());
    }

    #[test]
    fn status_only_moves_forward_and_zero_resets() {
        let (device, mut drv) = driver();
        drv.start(features::VERSION_1, 8);
        // Dropping DRIVER_OK without a reset is ignored.
        drv.write_reg(reg::STATUS, status::ACKNOWLEDGE);
        assert_ne!(drv.status() & status::DRIVER_OK, 0);
        drv.reset();
        assert_eq!(drv.status(), 0);
        assert_eq!(device.lock().unwrap().resets, 2); // negotiate's reset + this one
    }

    #[test]
    fn queue_registers_are_frozen_after_driver_ok() {
        let (_, mut drv) = driver();
        drv.start(features::VERSION_1, 8);
        drv.write_reg(reg::QUEUE_SEL, 0);
        drv.write_reg(reg::QUEUE_READY, 0);
        assert_eq!(drv.read_reg(reg::QUEUE_READY), 1);
    }

    #[test]
    fn notify_signals_the_queue_event_and_odd_accesses_are_ignored() {
        let (device, mut drv) = driver();
        drv.start(features::VERSION_1, 8);
        drv.notify(1);
        drv.write_reg(reg::QUEUE_NOTIFY, 7); // no such queue
        let device = device.lock().unwrap();
        assert_eq!(device.queue_events[1].read().unwrap(), 1);
        assert!(device.queue_events[0].read().is_err());
        drop(device);
        let mut byte = [0u8; 1];
        drv.transport.read(reg::MAGIC_VALUE, &mut byte);
        assert_eq!(byte, [0]);
        drv.transport.write(reg::STATUS + 1, &[1, 0, 0, 0]);
        drv.transport.write(reg::STATUS, &[0, 0]);
        assert_ne!(drv.status() & status::DRIVER_OK, 0);
    }

    #[test]
    fn interrupt_status_and_ack() {
        let (_, mut drv) = driver();
        drv.start(features::VERSION_1, 8);
        drv.transport.interrupt.signal_used_queue();
        drv.transport.interrupt.signal_config_change();
        assert_eq!(drv.interrupt_status(), 3);
        assert_eq!(drv.take_interrupts(), 2);
        drv.ack_interrupt(1);
        assert_eq!(drv.interrupt_status(), 2);
    }
}
