//! Address-range dispatch from vCPU exits (port I/O or MMIO) to devices.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device that answers accesses within the range it was inserted at.
///
/// `offset` is relative to the start of that range. Reads fill `data` completely; a
/// device that has nothing to say leaves the bus's default (all ones, like an empty ISA
/// slot).
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, displaydoc::Display, PartialEq, Eq)]
pub enum BusError {
    /// The range {base:#x}+{len:#x} is empty or overflows the address space.
    InvalidRange { base: u64, len: u64 },
    /// The range {base:#x}+{len:#x} overlaps a device already on the bus.
    Overlap { base: u64, len: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Range {
    base: u64,
    len: u64,
}

impl Range {
    fn end(&self) -> u64 {
        // Checked at insertion: base + len never overflows.
        self.base + self.len
    }
}

/// One address space (port I/O or MMIO) with its devices.
#[derive(Default, Clone)]
pub struct Bus {
    devices: BTreeMap<Range, Arc<Mutex<dyn BusDevice>>>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at `[base, base + len)`.
    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        if len == 0 || base.checked_add(len).is_none() {
            return Err(BusError::InvalidRange { base, len });
        }
        let new = Range { base, len };
        if self
            .devices
            .keys()
            .any(|r| r.base < new.end() && new.base < r.end())
        {
            return Err(BusError::Overlap { base, len });
        }
        self.devices.insert(new, device);
        Ok(())
    }

    fn resolve(&self, addr: u64) -> Option<(u64, &Arc<Mutex<dyn BusDevice>>)> {
        let probe = Range {
            base: addr,
            len: u64::MAX,
        };
        let (range, device) = self.devices.range(..=probe).next_back()?;
        (addr < range.end()).then(|| (addr - range.base, device))
    }

    /// Reads from the device at `addr`; returns false (and all-ones data) when nothing
    /// is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        data.fill(0xff);
        match self.resolve(addr) {
            Some((offset, device)) => {
                lock(device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Writes to the device at `addr`; returns false when nothing is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((offset, device)) => {
                lock(device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// A device whose lock was poisoned by a panicking thread is still in a consistent state
/// for our devices (every access is a single register update), so keep serving it rather
/// than spreading the panic to every vCPU.
fn lock(device: &Mutex<dyn BusDevice>) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recorder(Vec<(u64, u8)>);
    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data[0]));
        }
    }

    #[test]
    fn dispatches_by_range_with_offsets() {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder(Vec::new())));
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fb, &mut b));
        assert_eq!(b, [3]);
        assert!(bus.write(0x3ff, &[9]));
        assert!(!bus.write(0x400, &[1]));
        assert!(!bus.read(0x3f7, &mut b));
        assert_eq!(b, [0xff]);
        assert_eq!(dev.lock().unwrap().0, vec![(7, 9)]);
    }

    #[test]
    fn rejects_overlaps_and_bad_ranges() {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder(Vec::new())));
        bus.insert(dev.clone(), 0x60, 5).unwrap();
        assert_eq!(
            bus.insert(dev.clone(), 0x64, 1),
            Err(BusError::Overlap { base: 0x64, len: 1 })
        );
        assert!(bus.insert(dev.clone(), 0x5f, 2).is_err());
        assert!(bus.insert(dev.clone(), 0x65, 1).is_ok());
        assert!(bus.insert(dev.clone(), 0x70, 0).is_err());
        assert!(bus.insert(dev, u64::MAX, 2).is_err());
    }
}
