//! The virtio-blk request format (virtio 1.2, 5.2.6) and its checks.
//!
//! A request is one descriptor chain: a device-readable 16-byte header (`type`,
//! `reserved`, `sector`), the data (device-readable for writes, device-writable for
//! reads and GET_ID), and a last device-writable byte for the status. Everything in it
//! comes from the guest; [`Request::parse`] turns a chain into a request the disk can
//! serve or into the error that decides its status.

use super::{ID_LEN, SECTOR_SIZE};
use crate::virtio::chain::{ChainBuffers, ChainError, SplitChain};
use crate::virtio::GuestMemory;

/// Request types.
pub mod req_type {
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
    pub const GET_ID: u32 = 8;
}

/// Values of the status byte.
pub mod status {
    pub const OK: u8 = 0;
    pub const IOERR: u8 = 1;
    pub const UNSUPP: u8 = 2;
}

/// Length of the request header.
pub const HEADER_LEN: usize = 16;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Read `len` bytes from `sector` into the device-writable data.
    In { sector: u64, len: usize },
    /// Write the `len` bytes of device-readable data to `sector`.
    Out { sector: u64, len: usize },
    /// Make every completed write durable.
    Flush,
    /// Write the serial (at most `len` bytes of it) into the device-writable data.
    GetId { len: usize },
}

/// Why a request fails; each maps to a status byte.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum RequestError {
    /// bad descriptor chain: {0}
    Chain(#[from] ChainError),
    /// no device-writable byte for the status
    NoStatus,
    /// the header is {0} bytes, not 16
    ShortHeader(usize),
    /// request type {0} is not supported
    Unsupported(u32),
    /// a {0} request has data the wrong way (device-readable and device-writable buffers do not match the request type)
    WrongDirection(&'static str),
    /// data length {0} is not a multiple of 512
    Unaligned(usize),
    /// sectors {sector}..+{sectors} lie past the end of the disk ({capacity} sectors)
    PastEnd {
        sector: u64,
        sectors: u64,
        capacity: u64,
    },
    /// write to a read-only disk
    ReadOnly,
    /// the drive slot holds no drive
    NoMedia,
    /// I/O error on the backing file: {0}
    Io(#[from] std::io::Error),
}

impl RequestError {
    /// The status the driver sees.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) => status::UNSUPP,
            _ => status::IOERR,
        }
    }
}

/// A checked request, ready for the disk.
#[derive(Debug)]
pub struct Request {
    pub kind: RequestKind,
    /// The chain's buffers: the header and write data, then read data and the status.
    pub buffers: SplitChain,
}

impl Request {
    /// Checks a chain's shape and header against a disk of `capacity` sectors.
    ///
    /// On error, `Some(buffers)` comes back with it when the chain has a place for the
    /// status byte, so the caller can still report the failure to the driver.
    pub fn parse<I>(
        mem: &GuestMemory,
        chain: I,
        capacity: u64,
        read_only: bool,
    ) -> Result<Request, (RequestError, Option<SplitChain>)>
    where
        I: Iterator<Item = virtio_queue::desc::split::Descriptor>,
    {
        let buffers = SplitChain::parse(mem, chain).map_err(|e| (e.into(), None))?;
        if buffers.writable.is_empty() {
            return Err((RequestError::NoStatus, None));
        }
        match Self::kind(mem, &buffers, capacity, read_only) {
            Ok(kind) => Ok(Request { kind, buffers }),
            Err(e) => Err((e, Some(buffers))),
        }
    }

    fn kind(
        mem: &GuestMemory,
        buffers: &SplitChain,
        capacity: u64,
        read_only: bool,
    ) -> Result<RequestKind, RequestError> {
        let mut header = [0u8; HEADER_LEN];
        if !buffers.readable.read_at(mem, 0, &mut header) {
            return Err(RequestError::ShortHeader(buffers.readable.len()));
        }
        let mut type_bytes = [0u8; 4];
        type_bytes.copy_from_slice(&header[0..4]);
        let mut sector_bytes = [0u8; 8];
        sector_bytes.copy_from_slice(&header[8..16]);
        let type_ = u32::from_le_bytes(type_bytes);
        let sector = u64::from_le_bytes(sector_bytes);

        // Bytes of data on each side, past the header and before the status byte.
        let readable_data = buffers.readable.len() - HEADER_LEN;
        let writable_data = buffers.writable.len() - 1;
        let kind = match type_ {
            req_type::IN => {
                if readable_data != 0 {
                    return Err(RequestError::WrongDirection("read"));
                }
                RequestKind::In {
                    sector,
                    len: writable_data,
                }
            }
            req_type::OUT => {
                if writable_data != 0 {
                    return Err(RequestError::WrongDirection("write"));
                }
                if read_only {
                    return Err(RequestError::ReadOnly);
                }
                RequestKind::Out {
                    sector,
                    len: readable_data,
                }
            }
            req_type::FLUSH => {
                if readable_data != 0 || writable_data != 0 {
                    return Err(RequestError::WrongDirection("flush"));
                }
                RequestKind::Flush
            }
            req_type::GET_ID => {
                if readable_data != 0 {
                    return Err(RequestError::WrongDirection("get-id"));
                }
                RequestKind::GetId {
                    len: writable_data.min(ID_LEN),
                }
            }
            other => return Err(RequestError::Unsupported(other)),
        };
        if let RequestKind::In { sector, len } | RequestKind::Out { sector, len } = kind {
            check_range(sector, len, capacity)?;
        }
        Ok(kind)
    }

    /// The guest ranges of the data: after the header for writes, before the status
    /// for reads and GET_ID.
    pub fn data_ranges(&self) -> Option<Vec<(u64, usize)>> {
        match self.kind {
            RequestKind::Out { len, .. } => self.buffers.readable.ranges(HEADER_LEN, len),
            RequestKind::In { len, .. } | RequestKind::GetId { len } => {
                self.buffers.writable.ranges(0, len)
            }
            RequestKind::Flush => Some(Vec::new()),
        }
    }

    /// Bytes the device writes into the chain when the request succeeds (data and the
    /// status byte): the used length the driver sees.
    pub fn used_len(&self) -> u32 {
        let data = match self.kind {
            RequestKind::In { len, .. } | RequestKind::GetId { len } => len,
            RequestKind::Out { .. } | RequestKind::Flush => 0,
        };
        // The data is a descriptor chain of at most 256 buffers of at most 4 GiB each in
        // guest memory; clamp rather than trust that it fits a u32.
        u32::try_from(data).unwrap_or(u32::MAX).saturating_add(1)
    }
}

/// Checks that `len` bytes at `sector` are whole sectors inside a disk of `capacity`
/// sectors.
fn check_range(sector: u64, len: usize, capacity: u64) -> Result<(), RequestError> {
    if !(len as u64).is_multiple_of(SECTOR_SIZE) {
        return Err(RequestError::Unaligned(len));
    }
    let sectors = len as u64 / SECTOR_SIZE;
    match sector.checked_add(sectors) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(RequestError::PastEnd {
            sector,
            sectors,
            capacity,
        }),
    }
}

/// Writes the status byte: the last device-writable byte of the chain.
pub fn write_status(mem: &GuestMemory, writable: &ChainBuffers, status: u8) -> bool {
    match writable.len().checked_sub(1) {
        Some(at) => writable.write_at(mem, at, &[status]),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_must_be_whole_sectors_inside_the_disk() {
        assert!(check_range(0, 4096, 8).is_ok());
        assert!(check_range(7, 512, 8).is_ok());
        assert!(matches!(
            check_range(8, 512, 8),
            Err(RequestError::PastEnd { .. })
        ));
        assert!(matches!(
            check_range(u64::MAX, 512, u64::MAX),
            Err(RequestError::PastEnd { .. })
        ));
        assert!(matches!(
            check_range(0, 100, 8),
            Err(RequestError::Unaligned(100))
        ));
        assert!(check_range(8, 0, 8).is_ok());
    }

    #[test]
    fn unsupported_requests_say_so() {
        assert_eq!(RequestError::Unsupported(11).status(), status::UNSUPP);
        assert_eq!(RequestError::ReadOnly.status(), status::IOERR);
    }
}
