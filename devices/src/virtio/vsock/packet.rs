//! The virtio-vsock packet header (virtio 1.2, 5.10.6) and the moving of packets in and
//! out of descriptor chains.
//!
//! Every number in a header comes from the guest and is untrusted: parsing never fails
//! (any 44 bytes are a header), and what a field means is decided by the muxer.

/// Size of the header on the wire.
pub const HDR_LEN: usize = 44;

/// The host's CID: where hybrid connections from the guest go.
pub const HOST_CID: u64 = 2;

/// `type`: a stream socket, the only kind this device speaks (no SEQPACKET).
pub const TYPE_STREAM: u16 = 1;

/// `op` values (virtio 1.2, 5.10.6).
pub mod op {
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}

/// `flags` of a SHUTDOWN packet.
pub mod shutdown {
    /// The sender will receive no more data.
    pub const RCV: u32 = 1;
    /// The sender will send no more data.
    pub const SEND: u32 = 2;
    pub const BOTH: u32 = RCV | SEND;
}

/// A packet header, fields in host order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketHeader {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl PacketHeader {
    /// Decodes a little-endian header.
    pub fn from_bytes(raw: &[u8; HDR_LEN]) -> Self {
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let u32_at = |at: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&raw[at..at + 4]);
            u32::from_le_bytes(b)
        };
        let u16_at = |at: usize| u16::from_le_bytes([raw[at], raw[at + 1]]);
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encodes the header little endian.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut raw = [0u8; HDR_LEN];
        raw[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        raw[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        raw[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        raw[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        raw[24..28].copy_from_slice(&self.len.to_le_bytes());
        raw[28..30].copy_from_slice(&self.type_.to_le_bytes());
        raw[30..32].copy_from_slice(&self.op.to_le_bytes());
        raw[32..36].copy_from_slice(&self.flags.to_le_bytes());
        raw[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        raw[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_little_endian() {
        let hdr = PacketHeader {
            src_cid: 3,
            dst_cid: 2,
            src_port: 0x1122_3344,
            dst_port: 80,
            len: 5,
            type_: TYPE_STREAM,
            op: op::RW,
            flags: 0,
            buf_alloc: 1 << 18,
            fwd_cnt: 7,
        };
        let raw = hdr.to_bytes();
        assert_eq!(&raw[16..20], &[0x44, 0x33, 0x22, 0x11]);
        assert_eq!(raw[30], 5);
        assert_eq!(PacketHeader::from_bytes(&raw), hdr);
    }
}
