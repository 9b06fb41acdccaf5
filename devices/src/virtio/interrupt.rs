//! The interrupt line of one virtio-mmio device, shared by the transport (which reads and
//! acknowledges the status) and the device (which raises it).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use vmm_sys_util::eventfd::EventFd;

/// `InterruptStatus` bit: a queue has new used buffers.
pub const INT_USED_RING: u32 = 1;
/// `InterruptStatus` bit: the configuration (or the device status) changed.
pub const INT_CONFIG_CHANGE: u32 = 2;

pub struct Interrupt {
    status: AtomicU32,
    needs_reset: AtomicBool,
    irqfd: EventFd,
}

impl Interrupt {
    /// `irqfd` is the event fd the VMM registered with KVM for the device's IRQ.
    pub fn new(irqfd: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            irqfd,
        }
    }

    /// Tells the driver that a queue has new used buffers.
    pub fn signal_used_queue(&self) {
        self.raise(INT_USED_RING);
    }

    /// Tells the driver that the configuration space changed.
    pub fn signal_config_change(&self) {
        self.raise(INT_CONFIG_CHANGE);
    }

    /// The device met something it cannot go on from (a broken ring, say): the transport
    /// shows DEVICE_NEEDS_RESET in its status until the driver resets the device, and
    /// the driver hears of it through a configuration-change interrupt.
    pub fn set_needs_reset(&self) {
        if !self.needs_reset.swap(true, Ordering::AcqRel) {
            self.raise(INT_CONFIG_CHANGE);
        }
    }

    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::Acquire)
    }

    /// The `InterruptStatus` register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire)
    }

    /// The `InterruptACK` register: the driver has handled these causes.
    pub fn acknowledge(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::AcqRel);
    }

    /// Forgets every cause; used on device reset.
    pub fn clear(&self) {
        self.status.store(0, Ordering::Release);
        self.needs_reset.store(false, Ordering::Release);
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::AcqRel);
        if let Err(e) = self.irqfd.write(1) {
            // Only an overflowing counter (2^64 - 2 unread signals) makes this fail.
            log::error!("virtio: cannot signal an interrupt: {e}");
        }
    }
}
