//! Places virtio devices in the machine: each gets a virtio-mmio window on the MMIO bus,
//! an IOAPIC pin wired to an irqfd, an ioeventfd per queue on the window's `QueueNotify`
//! register, a place in the event loop, and its `virtio_mmio.device=` entry on the kernel
//! command line (the guest kernel has no other way to find it: there is no ACPI or
//! device tree).

use std::sync::{Arc, Mutex};

use event_manager::MutEventSubscriber;
use husk_devices::virtio::{GuestMemory, Interrupt, MmioTransport, VirtioDevice, MMIO_WINDOW_SIZE};
use husk_devices::{Bus, BusError};
use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout::{VIRTIO_IRQ_FIRST, VIRTIO_IRQ_LAST, VIRTIO_MMIO_START};
use crate::event_loop::Subscriber;

/// The transport's `QueueNotify` register, where the guest writes a queue's index.
const QUEUE_NOTIFY_OFFSET: u64 = 0x50;

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum DeviceError {
    /// Too many virtio devices: at most {0} fit the interrupt lines
    TooManyDevices(u32),
    /// Cannot create an event fd for a device: {0}
    EventFd(std::io::Error),
    /// Cannot route interrupt {0} for a virtio device: {1}
    Irq(u32, kvm_ioctls::Error),
    /// Cannot register queue notifications for a virtio device: {0}
    IoEvent(kvm_ioctls::Error),
    /// Cannot place a virtio device on the bus: {0}
    Bus(#[from] BusError),
}

/// The virtio devices of one VM, as they are added.
pub struct DeviceManager {
    mmio_bus: Bus,
    subscribers: Vec<Subscriber>,
    cmdline: Vec<String>,
    next_irq: u32,
    next_addr: u64,
}

impl DeviceManager {
    pub fn new() -> Self {
        Self {
            mmio_bus: Bus::new(),
            subscribers: Vec::new(),
            cmdline: Vec::new(),
            next_irq: VIRTIO_IRQ_FIRST,
            next_addr: VIRTIO_MMIO_START,
        }
    }

    /// Adds a device; the guest finds them in the order they are added.
    pub fn add_virtio<D>(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemory,
        device: Arc<Mutex<D>>,
    ) -> Result<(), DeviceError>
    where
        D: VirtioDevice + MutEventSubscriber + Send + 'static,
    {
        if self.next_irq > VIRTIO_IRQ_LAST {
            return Err(DeviceError::TooManyDevices(
                VIRTIO_IRQ_LAST - VIRTIO_IRQ_FIRST + 1,
            ));
        }
        let (irq, base) = (self.next_irq, self.next_addr);

        let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
        vm.register_irqfd(&irqfd, irq)
            .map_err(|e| DeviceError::Irq(irq, e))?;
        {
            let locked = device.lock().unwrap_or_else(|p| p.into_inner());
            for (index, event) in locked.queue_events().iter().enumerate() {
                vm.register_ioevent(
                    event,
                    &IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET),
                    index as u32,
                )
                .map_err(DeviceError::IoEvent)?;
            }
        }
        let interrupt = Arc::new(Interrupt::new(irqfd));
        let transport = MmioTransport::new(device.clone(), mem.clone(), interrupt);
        self.mmio_bus
            .insert(Arc::new(Mutex::new(transport)), base, MMIO_WINDOW_SIZE)?;
        self.subscribers.push(device);
        self.cmdline.push(format!(
            "virtio_mmio.device={}K@{base:#x}:{irq}",
            MMIO_WINDOW_SIZE >> 10
        ));
        self.next_irq += 1;
        self.next_addr += MMIO_WINDOW_SIZE;
        Ok(())
    }

    /// What the kernel command line needs for the guest to find the devices.
    pub fn cmdline_entries(&self) -> &[String] {
        &self.cmdline
    }

    /// The MMIO bus for the vCPUs and the subscribers for the event loop.
    pub fn into_parts(self) -> (Bus, Vec<Subscriber>) {
        (self.mmio_bus, self.subscribers)
    }
}
