//! Descriptor chains as devices see them, and the loop that serves a queue.
//!
//! Every descriptor comes from the guest and is untrusted. [`SplitChain::parse`] checks
//! a whole chain once (each buffer inside guest memory, device-readable buffers before
//! device-writable ones, a bounded length) and gives a device two runs of bytes it can
//! read from and write to at any offset without checking again. [`serve_queue`] pops
//! chains, hands them to a device and tells the driver about the used ones.

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::virtio::{GuestMemory, Interrupt};

/// Why a descriptor chain cannot be used.
#[derive(Debug, thiserror::Error, displaydoc::Display, PartialEq, Eq)]
pub enum ChainError {
    /// a descriptor goes the wrong way (device-writable where device-readable is needed, or the reverse)
    WrongDirection,
    /// a device-readable descriptor follows a device-writable one
    ReadableAfterWritable,
    /// a descriptor lies outside guest memory
    OutOfMemory,
    /// the chain has more than {0} descriptors
    TooLong(usize),
    /// the chain is empty
    Empty,
    /// the chain is cut short: its last descriptor points to a next one (a loop, a next index past the table, an unreadable descriptor or indirect table, or more than 4 GiB)
    Truncated,
}

/// The most descriptors one chain may have. Linux's virtio-blk uses at most the
/// advertised `seg_max` + 2, virtio-vsock one or two.
pub const MAX_DESCS: usize = 256;

/// Buffers of one descriptor chain that all go the same way, all inside guest memory,
/// seen as one run of bytes.
#[derive(Debug, Default)]
pub struct ChainBuffers {
    descs: Vec<(u64, usize)>,
    total: usize,
}

/// A descriptor chain split into its device-readable head and device-writable tail.
#[derive(Debug, Default)]
pub struct SplitChain {
    pub readable: ChainBuffers,
    pub writable: ChainBuffers,
}

impl SplitChain {
    /// Checks and splits `chain`. Zero-length descriptors are skipped.
    pub fn parse<I>(mem: &GuestMemory, chain: I) -> Result<Self, ChainError>
    where
        I: Iterator<Item = virtio_queue::desc::split::Descriptor>,
    {
        let mut split = SplitChain::default();
        // virtio-queue's iterator ends a chain quietly where it cannot go on (a loop
        // exhausts its length budget, a next index lies past the table, a descriptor or
        // indirect table cannot be read, the chain passes 4 GiB), so a broken chain looks
        // like a shorter valid one: a looping writable buffer would be taken for a read's
        // data and its status byte. A real chain ends with a descriptor without NEXT.
        let mut cut_short = false;
        for (count, desc) in chain.enumerate() {
            cut_short = desc.has_next();
            if count >= MAX_DESCS {
                return Err(ChainError::TooLong(MAX_DESCS));
            }
            let len = desc.len() as usize;
            if len == 0 {
                continue;
            }
            if !mem.check_range(desc.addr(), len) {
                return Err(ChainError::OutOfMemory);
            }
            let side = if desc.is_write_only() {
                &mut split.writable
            } else if split.writable.descs.is_empty() {
                &mut split.readable
            } else {
                return Err(ChainError::ReadableAfterWritable);
            };
            side.total = side.total.saturating_add(len);
            side.descs.push((desc.addr().0, len));
        }
        if cut_short {
            return Err(ChainError::Truncated);
        }
        Ok(split)
    }
}

impl ChainBuffers {
    /// Collects the descriptors of `chain`, which must all be device-writable
    /// (`writable`) or all device-readable, and not all empty.
    pub fn collect<I>(mem: &GuestMemory, chain: I, writable: bool) -> Result<Self, ChainError>
    where
        I: Iterator<Item = virtio_queue::desc::split::Descriptor>,
    {
        let split = SplitChain::parse(mem, chain)?;
        let (wanted, other) = if writable {
            (split.writable, split.readable)
        } else {
            (split.readable, split.writable)
        };
        if !other.descs.is_empty() {
            return Err(ChainError::WrongDirection);
        }
        if wanted.descs.is_empty() {
            return Err(ChainError::Empty);
        }
        Ok(wanted)
    }

    /// Total bytes.
    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Copies `buf.len()` bytes from offset `offset`; false if the buffers are too short
    /// or memory cannot be read.
    pub fn read_at(&self, mem: &GuestMemory, offset: usize, buf: &mut [u8]) -> bool {
        self.walk(offset, buf.len(), |addr, at, len| {
            buf.get_mut(at..at + len)
                .is_some_and(|dst| mem.read_slice(dst, GuestAddress(addr)).is_ok())
        })
    }

    /// Copies `buf` to offset `offset`; false if the buffers are too short or memory
    /// cannot be written.
    pub fn write_at(&self, mem: &GuestMemory, offset: usize, buf: &[u8]) -> bool {
        self.walk(offset, buf.len(), |addr, at, len| {
            buf.get(at..at + len)
                .is_some_and(|src| mem.write_slice(src, GuestAddress(addr)).is_ok())
        })
    }

    /// The guest ranges `(address, length)` of the bytes `offset..offset + count`, or
    /// `None` if they do not fit.
    pub fn ranges(&self, offset: usize, count: usize) -> Option<Vec<(u64, usize)>> {
        let mut ranges = Vec::new();
        self.walk(offset, count, |addr, _, len| {
            ranges.push((addr, len));
            true
        })
        .then_some(ranges)
    }

    /// Calls `f(guest_addr, offset_in_range, len)` for each piece of the byte range
    /// `offset..offset + count`; false if it does not fit or `f` fails.
    fn walk(
        &self,
        offset: usize,
        count: usize,
        mut f: impl FnMut(u64, usize, usize) -> bool,
    ) -> bool {
        match offset.checked_add(count) {
            Some(end) if end <= self.total => {}
            _ => return false,
        }
        let mut skip = offset;
        let mut at = 0;
        for &(addr, len) in &self.descs {
            if at == count {
                break;
            }
            if skip >= len {
                skip -= len;
                continue;
            }
            let piece = (len - skip).min(count - at);
            // `skip < len` and `addr + len` lies in guest memory (checked on parse), so
            // the sum cannot overflow.
            if !f(addr + skip as u64, at, piece) {
                return false;
            }
            skip = 0;
            at += piece;
        }
        at == count
    }
}

/// What a device did with a chain [`serve_queue`] gave it.
pub enum Served {
    /// Done: return it to the driver with this many bytes written.
    Used(u32),
    /// Cannot be served now (e.g. nothing to put in an rx buffer): leave it and every
    /// later chain on the queue, and stop.
    Later,
}

/// Serves the available chains of `queue` with `serve` until it runs dry (notifications
/// re-enabled) or `serve` says [`Served::Later`], then interrupts the driver if it
/// wants to hear about the used chains. A queue that breaks (bad ring addresses or
/// indexes) marks the device as needing a reset.
pub fn serve_queue<F>(
    queue: &mut Queue,
    mem: &GuestMemory,
    interrupt: &Interrupt,
    name: &str,
    mut serve: F,
) where
    F: FnMut(DescriptorChain<&GuestMemory>) -> Served,
{
    let mut used = false;
    let ok = loop {
        let chain = match queue.iter(mem) {
            Ok(mut iter) => iter.next(),
            Err(e) => {
                log::warn!("{name}: {e}");
                break false;
            }
        };
        let Some(chain) = chain else {
            // Re-enabling notifications races with the driver adding more: look again
            // if it did.
            match queue.enable_notification(mem) {
                Ok(true) => continue,
                Ok(false) => break true,
                Err(e) => {
                    log::warn!("{name}: {e}");
                    break false;
                }
            }
        };
        let head = chain.head_index();
        match serve(chain) {
            Served::Used(len) => {
                if let Err(e) = queue.add_used(mem, head, len) {
                    log::warn!("{name}: {e}");
                    break false;
                }
                used = true;
            }
            Served::Later => {
                queue.go_to_previous_position();
                break true;
            }
        }
    };
    if !ok {
        interrupt.set_needs_reset();
        return;
    }
    if !used {
        return;
    }
    match queue.needs_notification(mem) {
        Ok(true) => interrupt.signal_used_queue(),
        Ok(false) => {}
        Err(e) => {
            log::warn!("{name}: {e}");
            interrupt.set_needs_reset();
        }
    }
}

/// Host pointers to guest ranges, for vectored file I/O straight into guest memory.
///
/// Holds the pointer guards of `vm-memory` for as long as the slices are in use.
pub struct GuestIoSlices<'a> {
    slices: Vec<vm_memory::VolatileSlice<'a, ()>>,
}

impl<'a> GuestIoSlices<'a> {
    /// The host mappings of `ranges`, or `None` if one is not in guest memory.
    pub fn new(mem: &'a GuestMemory, ranges: &[(u64, usize)]) -> Option<Self> {
        let mut slices = Vec::with_capacity(ranges.len());
        for &(addr, len) in ranges {
            for slice in mem.get_slices(GuestAddress(addr), len) {
                slices.push(slice.ok()?);
            }
        }
        Some(Self { slices })
    }

    /// The slices as `iovec`s. They stay valid while `self` lives: guest memory is
    /// mapped for the life of the VM and the slices borrow it.
    pub fn iovecs(&self) -> Vec<libc::iovec> {
        self.slices
            .iter()
            .map(|s| libc::iovec {
                iov_base: s.ptr_guard_mut().as_ptr().cast(),
                iov_len: s.len(),
            })
            .collect()
    }

    /// Total bytes.
    pub fn len(&self) -> usize {
        self.slices.iter().map(|s| s.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
