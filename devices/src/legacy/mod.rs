//! Legacy PC devices: the COM1 console, the i8042 reset line and husk's boot-timer port.

mod boot_timer;
mod i8042;
mod serial;

pub use boot_timer::{BootTimer, BOOT_TIMER_PORT};
pub use i8042::{I8042, I8042_PORT_BASE, I8042_PORT_LEN};
pub use serial::{EventFdTrigger, Serial, COM1_IRQ, COM1_PORT_BASE, COM1_PORT_LEN};
