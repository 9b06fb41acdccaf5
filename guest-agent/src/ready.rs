//! The readiness signal to the VMM: one byte written to the boot-timer I/O port, which
//! husk timestamps from its own process start (`husk: guest ready after N ms`).

use crate::error::Error;

/// The VMM's boot-timer port (husk-devices' `boot_timer`).
pub const READY_PORT: u16 = 0x440;

/// Writes one byte to [`READY_PORT`].
#[cfg(target_arch = "x86_64")]
pub fn signal_ready() -> Result<(), Error> {
    const BYTE: u8 = 1;
    // SAFETY: ioperm() only widens this process's own I/O permission bitmap, to this one
    // port; the `out` runs only once that succeeded, so it cannot fault. The instruction
    // reads only the two registers given, touches no memory, stack or flags, and the byte
    // goes to the VMM's boot-timer device, which has no effect on guest state.
    let granted = unsafe {
        let granted = libc::ioperm(libc::c_ulong::from(READY_PORT), 1, 1) == 0;
        if granted {
            core::arch::asm!(
                "out dx, al",
                in("dx") READY_PORT,
                in("al") BYTE,
                options(nomem, nostack, preserves_flags)
            );
        }
        granted
    };
    if granted {
        Ok(())
    } else {
        Err(Error::Ioperm {
            port: READY_PORT,
            source: std::io::Error::last_os_error(),
        })
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub fn signal_ready() -> Result<(), Error> {
    Err(Error::NoPortIo)
}
