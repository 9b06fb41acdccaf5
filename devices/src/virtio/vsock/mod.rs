//! virtio-vsock (virtio 1.2, 5.10) with a "hybrid" host side: the host end of every
//! connection is a Unix stream socket.
//!
//! - Host to guest: a client connects to the device's Unix socket (`uds_path`), writes
//!   `CONNECT <port>\n`, and once the guest accepts gets `OK <host_port>\n`; from then on
//!   the socket carries the stream's bytes both ways. If the guest refuses (RST) the
//!   client's socket is closed. In-process callers get the same stream without the
//!   socket hop from [`VsockConnector::connect`].
//! - Guest to host: a guest connection to CID 2, port `P` is connected to the Unix
//!   socket `<uds_path>_P`; if nothing listens there the guest gets an RST.
//!
//! Flow control is the spec's credit scheme (5.10.6.3) both ways. Host data is read from
//! a host socket only into an rx buffer the guest has given, and only as far as the
//! guest's credit goes; when the credit is used up the socket is not read (and not
//! polled for input) until the guest returns credit. Guest data the host socket cannot
//! take at once is buffered up to the [`TX_BUF_ALLOC`] bytes the device advertises per
//! connection; a guest that sends more than that is reset. So neither a slow host
//! reader nor a slow guest makes the VMM buffer without bound.
//!
//! All queue and socket work runs in `MutEventSubscriber::process` on the event loop;
//! the transport only activates and resets the device.

mod connection;
mod connector;
mod device;
#[cfg(any(test, feature = "test-utils"))]
pub mod fuzzing;
mod muxer;
pub mod packet;

use std::time::Duration;

pub use connector::VsockConnector;
pub use device::{Vsock, VsockError};

/// Queue indexes (virtio 1.2, 5.10.2).
pub const RX_QUEUE: u16 = 0;
pub const TX_QUEUE: u16 = 1;
pub const EVENT_QUEUE: u16 = 2;
/// The largest size of each queue.
pub const QUEUE_MAX_SIZE: u16 = 256;

/// The receive buffer the device advertises per connection (`buf_alloc`): how much guest
/// data it holds for a host socket that is not reading.
pub const TX_BUF_ALLOC: usize = 256 * 1024;
/// The device tells the guest about freed buffer space (CREDIT_UPDATE) once this much
/// has reached the host since the guest last heard.
pub const CREDIT_UPDATE_THRESHOLD: u32 = 64 * 1024;
/// The largest payload of one packet, either way.
pub const MAX_PKT_PAYLOAD: usize = 64 * 1024;
/// Connections at once (host- and guest-initiated); more are refused.
pub const MAX_CONNECTIONS: usize = 1024;
/// Clients of the hybrid socket that have not sent their `CONNECT` line yet.
pub const MAX_HANDSHAKES: usize = 128;
/// How long a client of the hybrid socket may take to send its `CONNECT` line.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the guest may take to answer a host `CONNECT` (RESPONSE or RST).
pub const HOST_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection the guest has shut down both ways may wait for its buffered
/// data to reach a host socket that is not reading before it is reset.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
