//! Virtio devices and their virtio-mmio transport (virtio 1.2, "modern" only).
//!
//! A device implements [`VirtioDevice`] for the transport (features, configuration
//! space, activation, reset) and `event_manager::MutEventSubscriber` for the VMM's event
//! loop, where all of its queue processing happens. The transport lives on the MMIO bus
//! and is driven from vCPU threads; both sides share the device behind one mutex.
//!
//! Queue notifications reach the device through one [`EventFd`] per queue, which the VMM
//! registers with KVM as an ioeventfd on the transport's `QueueNotify` register (so a
//! notification never leaves the kernel) and the device registers with the event loop.
//! Interrupts leave through [`Interrupt`], an irqfd plus the transport's interrupt status.

pub mod block;
pub mod chain;
pub mod interrupt;
pub mod mmio;
pub mod net;
pub mod vsock;

#[cfg(any(test, feature = "test-utils"))]
pub mod testing;

use vmm_sys_util::eventfd::EventFd;

pub use interrupt::Interrupt;
pub use mmio::{MmioTransport, MMIO_WINDOW_SIZE};

/// The guest memory every device works on.
pub type GuestMemory = vm_memory::GuestMemoryMmap;

/// Device ids (virtio 1.2, section 5).
pub mod device_type {
    pub const NET: u32 = 1;
    pub const BLOCK: u32 = 2;
    pub const VSOCK: u32 = 19;
}

/// Feature bits every device may offer (virtio 1.2, section 6).
pub mod features {
    /// Descriptors may point to tables of descriptors.
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    /// `used_event` / `avail_event` suppress notifications and interrupts.
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// A modern (virtio 1.x) device: required by this transport.
    pub const VERSION_1: u64 = 1 << 32;
}

/// What a device needs to start serving its queues.
pub struct ActivateContext {
    pub mem: GuestMemory,
    /// One per queue, configured and checked by the transport, in queue-index order.
    pub queues: Vec<virtio_queue::Queue>,
    /// The features the driver accepted (a subset of [`VirtioDevice::features`]).
    pub acked_features: u64,
    pub interrupt: std::sync::Arc<Interrupt>,
}

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum ActivateError {
    /// The device is already active
    AlreadyActive,
    /// The device cannot start: {0}
    Backend(String),
}

/// The transport-facing side of a virtio device.
pub trait VirtioDevice: Send {
    /// The virtio device id ([`device_type`]).
    fn device_type(&self) -> u32;

    /// The largest size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// The features the device offers, [`features::VERSION_1`] included.
    fn features(&self) -> u64;

    /// Reads the device-specific configuration space. Bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the device-specific configuration space. Most devices have nothing
    /// writable and ignore it.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::warn!(
            "virtio device type {}: ignored a config write of {} bytes at {offset:#x}",
            self.device_type(),
            data.len()
        );
    }

    /// The `ConfigGeneration` register: a device whose configuration space changes while
    /// the driver runs bumps it with every change, so that a driver reading a field in
    /// several accesses sees a torn read (virtio 1.2, 2.5.1).
    fn config_generation(&self) -> u32 {
        0
    }

    /// The driver set DRIVER_OK: start serving the queues.
    fn activate(&mut self, context: ActivateContext) -> Result<(), ActivateError>;

    /// The driver reset the device: drop the queues and any state tied to them (open
    /// connections, in-flight requests) and go back to the state before `activate`.
    fn reset(&mut self);

    /// One event fd per queue, signalled when the driver notifies that queue.
    fn queue_events(&self) -> &[EventFd];
}
