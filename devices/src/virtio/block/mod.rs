//! virtio-blk (virtio 1.2, 5.2) backed by a raw host file or block device.
//!
//! One request queue. Every request is served synchronously on the event loop with
//! vectored `preadv`/`pwritev` straight between the backing file and guest memory (no
//! bounce buffer); a FLUSH completes only after `fdatasync` of the backing file
//! returned, so a write the guest saw flushed survives a crash of husk or the host.
//!
//! A request the device cannot serve gets an I/O-error (or "unsupported") status and
//! the queue goes on; only a broken ring (bad addresses or indexes) stops the device
//! and asks the driver for a reset. The backing file is locked (`flock`: shared when
//! read-only, exclusive otherwise) so two VMs never write one disk behind each other's
//! back.
//!
//! A drive may also be a spare slot with no media, into which media go and out of which
//! they come while the guest runs (see [`Block::empty`]): how a running VM takes drives
//! without hotplug.

mod device;
mod disk;
#[cfg(any(test, feature = "test-utils"))]
pub mod fuzzing;
pub mod request;

pub use device::{Block, BlockConfig, BlockCounters, BlockError, BlockMedia};

/// The size of the request queue; `seg_max` is two less (header and status).
pub const QUEUE_MAX_SIZE: u16 = 256;

/// Bytes per sector: the unit of `sector`, `capacity` and request lengths.
pub const SECTOR_SIZE: u64 = 512;

/// Length of the serial number GET_ID returns (NUL-padded, not NUL-terminated).
pub const ID_LEN: usize = 20;

/// Feature bits of virtio-blk (virtio 1.2, 5.2.3).
pub mod features {
    /// `seg_max` in the configuration is valid.
    pub const SEG_MAX: u64 = 1 << 2;
    /// The disk is read-only.
    pub const RO: u64 = 1 << 5;
    /// `blk_size` in the configuration is valid.
    pub const BLK_SIZE: u64 = 1 << 6;
    /// The FLUSH request exists (a volatile write cache that FLUSH empties).
    pub const FLUSH: u64 = 1 << 9;
}
