//! Streams to guest ports for the runtime, without the Unix-socket hop.

use std::io::{self, ErrorKind};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use super::muxer::ConnectRequest;

/// Opens streams to guest ports from any thread. Each stream is one end of a socket
/// pair; the device's event loop holds the other end and relays it to the guest exactly
/// like a client of the hybrid Unix socket.
#[derive(Clone)]
pub struct VsockConnector {
    requests: mpsc::Sender<ConnectRequest>,
    kick: Arc<EventFd>,
}

impl VsockConnector {
    pub(crate) fn new(requests: mpsc::Sender<ConnectRequest>, kick: Arc<EventFd>) -> Self {
        Self { requests, kick }
    }

    /// Connects to guest port `port`, waiting up to `timeout` for the guest to accept.
    ///
    /// Errors: `ConnectionRefused` if the guest refuses (nothing listens on the port),
    /// `TimedOut` if it does not answer in time (the half-open connection is then reset
    /// by the device), `NotConnected` if the device is not running (not started by the
    /// guest driver yet, reset, or gone).
    pub fn connect(&self, port: u32, timeout: Duration) -> io::Result<UnixStream> {
        let (ours, theirs) = UnixStream::pair()?;
        theirs.set_nonblocking(true)?;
        let deadline = Instant::now()
            .checked_add(timeout)
            .ok_or_else(|| io::Error::new(ErrorKind::InvalidInput, "timeout too large"))?;
        let (reply, answer) = mpsc::channel();
        self.requests
            .send(ConnectRequest {
                port,
                stream: theirs,
                reply,
                deadline,
            })
            .map_err(|_| io::Error::new(ErrorKind::NotConnected, "the vsock device is gone"))?;
        self.kick.write(1)?;
        match answer.recv_timeout(timeout) {
            Ok(Ok(())) => Ok(ours),
            Ok(Err(e)) => Err(io::Error::new(
                e.kind(),
                format!("vsock connection to guest port {port}: {e}"),
            )),
            Err(RecvTimeoutError::Timeout) => Err(io::Error::new(
                ErrorKind::TimedOut,
                format!("the guest did not answer a connection to port {port} in {timeout:?}"),
            )),
            Err(RecvTimeoutError::Disconnected) => Err(io::Error::new(
                ErrorKind::NotConnected,
                "the vsock device dropped the connection request",
            )),
        }
    }
}
