//! virtio-net (virtio 1.2, 5.1) on a Linux tap interface.
//!
//! Two queues, rx (0) and tx (1); no control queue, one queue pair. Every frame on
//! either queue starts with the 12-byte `virtio_net_hdr_v1`, and so does every frame on
//! the tap (IFF_VNET_HDR): the header goes through untouched, and the kernel does the
//! checksums and segmentation it asks for. The device offers checksum and TSO offloads
//! both ways (the guest's only where the tap takes them) and sets the tap's offloads to
//! what the driver accepted, so the tap never hands the guest a frame it cannot take.
//!
//! tx writes each chain to the tap with one `writev` straight from guest memory. rx
//! reads each frame from the tap into a bounce buffer, then copies it into one rx chain,
//! or several with mergeable rx buffers. When the guest has no rx buffers the device
//! keeps the frame it holds and stops reading the tap until the guest adds some (the
//! frames wait in the tap's queue: back-pressure, not drops; past the tap's queue
//! length, 500 frames unless set otherwise, the kernel drops them at the tap as it
//! would for any slow reader); when the tap takes no more (EAGAIN) tx waits for it to be
//! writable. A hostile chain is returned unused and
//! counted, and the device goes on; only a broken ring stops the device and asks the
//! driver for a reset.
//!
//! Each device owns its tap and keeps no global state: a VM may have several.

mod device;
pub mod frame;
#[cfg(any(test, feature = "test-utils"))]
pub mod fuzzing;
mod tap;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;

pub use device::{Net, NetConfig, NetCounters, NetError};
pub use tap::{Tap, TapError, VNET_HDR_LEN};

/// Queue indexes.
pub const RX_QUEUE: u16 = 0;
pub const TX_QUEUE: u16 = 1;

/// The size of each queue.
pub const QUEUE_MAX_SIZE: u16 = 256;

/// The longest frame either way, its header included: a 64 KiB GSO frame (65535 bytes
/// of IP packet), its Ethernet header and the 12-byte `virtio_net_hdr_v1` fit.
pub const MAX_FRAME_LEN: usize = 65562;

/// Feature bits of virtio-net (virtio 1.2, 5.1.3).
pub mod features {
    /// The device takes frames with a partial checksum (tx).
    pub const CSUM: u64 = 1 << 0;
    /// The driver takes frames with a partial checksum (rx).
    pub const GUEST_CSUM: u64 = 1 << 1;
    /// `mac` in the configuration is valid.
    pub const MAC: u64 = 1 << 5;
    /// The driver takes TCPv4 GSO frames (rx).
    pub const GUEST_TSO4: u64 = 1 << 7;
    /// The driver takes TCPv6 GSO frames (rx).
    pub const GUEST_TSO6: u64 = 1 << 8;
    /// The device takes TCPv4 GSO frames (tx).
    pub const HOST_TSO4: u64 = 1 << 11;
    /// The device takes TCPv6 GSO frames (tx).
    pub const HOST_TSO6: u64 = 1 << 12;
    /// One received frame may span several rx chains (`num_buffers` in its header).
    pub const MRG_RXBUF: u64 = 1 << 15;
    /// `status` in the configuration is valid.
    pub const STATUS: u64 = 1 << 16;
}

/// `virtio_net_hdr_v1.flags` (virtio 1.2, 5.1.6).
pub mod hdr_flags {
    /// The checksum at `csum_start + csum_offset` is to be completed.
    pub const NEEDS_CSUM: u8 = 1;
    /// The checksum has been checked.
    pub const DATA_VALID: u8 = 2;
}

/// `virtio_net_hdr_v1.gso_type`.
pub mod gso {
    pub const NONE: u8 = 0;
    pub const TCPV4: u8 = 1;
    pub const UDP: u8 = 3;
    pub const TCPV6: u8 = 4;
    pub const ECN: u8 = 0x80;
}

/// `status` in the configuration: the link is up.
pub const STATUS_LINK_UP: u16 = 1;
