//! husk's boot-timer port: the guest agent writes a byte to it when it is ready, and the
//! VMM records the time elapsed since the husk process started. This measures boot time
//! from the VMM's own clock, without parsing the console (which may be off).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::bus::BusDevice;

/// The I/O port the guest writes to; `husk-agent` uses the same number.
pub const BOOT_TIMER_PORT: u64 = 0x440;

pub struct BootTimer {
    start: Instant,
    ready_after: Arc<OnceLock<Duration>>,
}

impl BootTimer {
    /// `start` is when the husk process started; the first write records `now - start`
    /// into `ready_after`.
    pub fn new(start: Instant, ready_after: Arc<OnceLock<Duration>>) -> Self {
        Self { start, ready_after }
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {
        let elapsed = self.start.elapsed();
        if self.ready_after.set(elapsed).is_ok() {
            log::info!("guest ready after {:.3} ms", elapsed.as_secs_f64() * 1000.0);
        }
    }
}
