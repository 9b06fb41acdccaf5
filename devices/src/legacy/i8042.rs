//! The i8042 keyboard controller, reduced to what a microVM needs from it: the CPU reset
//! line. Linux booted with `reboot=k` resets the machine by writing 0xFE to the command
//! port, which is how a guest asks husk to end the VM cleanly.

use crate::bus::BusDevice;

/// Ports 0x60 (data) to 0x64 (status/command); 0x61 in between belongs to the in-kernel
/// PIT's speaker port, which KVM handles before it reaches us.
pub const I8042_PORT_BASE: u64 = 0x60;
pub const I8042_PORT_LEN: u64 = 5;

const COMMAND_OFFSET: u64 = 4;
const CMD_PULSE_RESET: u8 = 0xfe;

pub struct I8042 {
    on_reset: Box<dyn Fn() + Send>,
}

impl I8042 {
    /// `on_reset` runs when the guest pulses the reset line. It runs on the vCPU thread
    /// that wrote the command, so the VM can stop before that vCPU re-enters the guest.
    pub fn new(on_reset: Box<dyn Fn() + Send>) -> Self {
        Self { on_reset }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty (ready for a command), so a
        // guest polling before its reset command never waits. Data reads give 0.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_PULSE_RESET) {
            (self.on_reset)();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn reset_command_signals_only_on_command_port() {
        let resets = Arc::new(AtomicUsize::new(0));
        let counter = resets.clone();
        let mut dev = I8042::new(Box::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        }));
        dev.write(0, &[CMD_PULSE_RESET]);
        dev.write(COMMAND_OFFSET, &[0xd1]);
        assert_eq!(resets.load(Ordering::SeqCst), 0, "no reset expected yet");
        let mut status = [0xffu8];
        dev.read(COMMAND_OFFSET, &mut status);
        assert_eq!(status, [0]);
        dev.write(COMMAND_OFFSET, &[CMD_PULSE_RESET]);
        assert_eq!(resets.load(Ordering::SeqCst), 1);
    }
}
