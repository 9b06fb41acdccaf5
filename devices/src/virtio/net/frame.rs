//! tx and rx chains as the device sees them, and how a received frame is laid over rx
//! chains: pure functions over guest memory, apart from the device and its tap, so that
//! the fuzz harness can drive them with any chain.

use crate::virtio::chain::{ChainBuffers, ChainError};
use crate::virtio::GuestMemory;

use super::{MAX_FRAME_LEN, VNET_HDR_LEN};

/// Offset of `num_buffers` in `virtio_net_hdr_v1`.
const NUM_BUFFERS_OFFSET: usize = 10;

/// Why a chain cannot carry a frame.
#[derive(Debug, thiserror::Error, displaydoc::Display, PartialEq, Eq)]
pub enum FrameError {
    /// {0}
    Chain(#[from] ChainError),
    /// the chain holds {0} bytes, fewer than the 12-byte virtio-net header
    TooShort(usize),
    /// the tx chain holds {0} bytes, more than the 65562 of the longest frame and its header
    TooLong(usize),
}

/// Checks a tx chain: device-readable buffers only, inside guest memory, holding a
/// header and a frame of at most [`MAX_FRAME_LEN`] bytes in all.
pub fn parse_tx<I>(mem: &GuestMemory, chain: I) -> Result<ChainBuffers, FrameError>
where
    I: Iterator<Item = virtio_queue::desc::split::Descriptor>,
{
    let buffers = ChainBuffers::collect(mem, chain, false)?;
    match buffers.len() {
        len if len < VNET_HDR_LEN => Err(FrameError::TooShort(len)),
        len if len > MAX_FRAME_LEN => Err(FrameError::TooLong(len)),
        _ => Ok(buffers),
    }
}

/// Checks an rx chain: device-writable buffers only, inside guest memory, with room for
/// at least the header (virtio 1.2, 5.1.6.3.1: every rx buffer holds one).
pub fn parse_rx<I>(mem: &GuestMemory, chain: I) -> Result<ChainBuffers, FrameError>
where
    I: Iterator<Item = virtio_queue::desc::split::Descriptor>,
{
    let buffers = ChainBuffers::collect(mem, chain, true)?;
    if buffers.len() < VNET_HDR_LEN {
        return Err(FrameError::TooShort(buffers.len()));
    }
    Ok(buffers)
}

/// How many of the rx chains of sizes `sizes` (in order) a frame of `frame_len` bytes
/// (header included) takes: the first alone without mergeable rx buffers, as many as it
/// needs with them (at most `u16::MAX`, the most `num_buffers` counts). `None` if they
/// do not hold it.
pub fn rx_buffers_needed(
    sizes: impl IntoIterator<Item = usize>,
    frame_len: usize,
    mergeable: bool,
) -> Option<usize> {
    let mut room = 0usize;
    for (i, size) in sizes.into_iter().enumerate() {
        if i >= usize::from(u16::MAX) || (!mergeable && i >= 1) {
            return None;
        }
        room = room.saturating_add(size);
        if room >= frame_len {
            return Some(i + 1);
        }
    }
    None
}

/// Writes `frame` (header included) over the first chains of `buffers`, sets
/// `num_buffers` in its header to the number of chains it took (1 without mergeable rx
/// buffers) and returns the bytes written into each of them. `None` if the chains do
/// not hold it, the frame has no header, or guest memory fails: nothing is then
/// promised to the driver, though some bytes may have been written.
pub fn write_rx(
    mem: &GuestMemory,
    buffers: &[&ChainBuffers],
    frame: &mut [u8],
    mergeable: bool,
) -> Option<Vec<u32>> {
    if frame.len() < VNET_HDR_LEN {
        return None;
    }
    let count = rx_buffers_needed(buffers.iter().map(|b| b.len()), frame.len(), mergeable)?;
    let num_buffers = u16::try_from(count).ok()?;
    frame
        .get_mut(NUM_BUFFERS_OFFSET..VNET_HDR_LEN)?
        .copy_from_slice(&num_buffers.to_le_bytes());
    let mut lens = Vec::with_capacity(count);
    let mut rest: &[u8] = frame;
    for buffer in buffers.iter().take(count) {
        let (piece, after) = rest.split_at(rest.len().min(buffer.len()));
        if !buffer.write_at(mem, 0, piece) {
            return None;
        }
        lens.push(u32::try_from(piece.len()).ok()?);
        rest = after;
    }
    rest.is_empty().then_some(lens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_needed() {
        assert_eq!(rx_buffers_needed([100], 100, false), Some(1));
        assert_eq!(rx_buffers_needed([99, 100], 100, false), None);
        assert_eq!(rx_buffers_needed([50, 50, 50], 100, true), Some(2));
        assert_eq!(rx_buffers_needed([50, 49], 100, true), None);
        assert_eq!(rx_buffers_needed([], 12, true), None);
        assert_eq!(rx_buffers_needed([usize::MAX, 1], 12, true), Some(1));
    }
}
