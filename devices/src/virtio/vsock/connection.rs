//! One vsock stream between a guest port and a host Unix socket, and its credit
//! accounting (virtio 1.2, 5.10.6.3).
//!
//! Nothing here touches the queues: a connection only records which packets it owes the
//! guest, and the muxer turns those into packets when the guest has given an rx buffer.
//! Data from the host is never copied into the VMM ahead of time: it stays in the host
//! socket until an rx buffer and the guest's credit allow reading it.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::Instant;

use super::packet::{shutdown, PacketHeader, HOST_CID};
use super::{CREDIT_UPDATE_THRESHOLD, TX_BUF_ALLOC};

/// A host socket as the event loop sees it.
#[derive(Debug)]
pub(crate) struct HostSock {
    pub stream: UnixStream,
    /// Whether the fd is in the epoll set, and with which events.
    pub registered: bool,
    pub interest: u32,
    /// Whether the fd should be in the epoll set at all (false after a hang-up, which
    /// epoll reports whatever the interest).
    pub watch: bool,
}

impl HostSock {
    pub fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            registered: false,
            interest: 0,
            watch: true,
        }
    }
}

/// Who asked for the connection.
#[derive(Debug)]
pub(crate) enum Origin {
    /// A client of the hybrid Unix socket, which gets `OK <port>\n` once the guest
    /// accepts.
    HostUds,
    /// The in-process connector, waiting on this channel.
    Connector(Option<mpsc::Sender<io::Result<()>>>),
    /// The guest connected to a host listener at `<uds>_<port>`.
    Guest,
}

/// What the host socket did when asked to take bytes.
pub(crate) enum WriteOutcome {
    /// Everything written or queued.
    Ok,
    /// The host side is gone: the connection must be reset.
    Broken,
    /// The guest sent more than the credit it was given: it must be reset.
    Overrun,
}

#[derive(Debug)]
pub(crate) struct Connection {
    /// The host side's port (`src_port` of packets to the guest).
    pub local_port: u32,
    /// The guest's port.
    pub peer_port: u32,
    /// `None` once the connection is being reset: only the RST to the guest is left.
    pub sock: Option<HostSock>,
    pub origin: Origin,
    /// REQUEST sent (or owed) and no RESPONSE yet.
    pub connecting: bool,

    // Host -> guest.
    /// Bytes sent to the guest so far (wrapping).
    pub rx_cnt: u32,
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
    /// The host socket reported readable and has not yet been read dry.
    pub readable: bool,
    /// The host socket reached end of file.
    pub host_eof: bool,
    /// The host socket hung up (no reader left on the host either).
    pub hup: bool,

    // Guest -> host.
    /// Bytes for the host that its socket could not take yet (at most `TX_BUF_ALLOC`).
    pub tx_buf: VecDeque<u8>,
    /// Bytes of the hybrid protocol (`OK <port>\n`) to write before any data.
    pub control_out: Vec<u8>,
    /// Guest bytes delivered to the host socket (wrapping).
    pub fwd_cnt: u32,
    /// `fwd_cnt` as last told to the guest.
    pub last_fwd_cnt_sent: u32,
    pub guest_send_done: bool,
    pub guest_rcv_done: bool,
    /// The host socket was shut down for writing (the guest will send nothing more).
    pub host_write_shut: bool,
    /// SHUTDOWN(SEND) went to the guest: the host will send nothing more.
    pub eof_sent: bool,

    // Packets owed to the guest.
    pub pend_request: bool,
    pub pend_response: bool,
    pub pend_rst: bool,
    pub pend_shutdown: u32,
    pub pend_credit_update: bool,
    pub pend_credit_request: bool,
    /// A CREDIT_REQUEST went out and no packet from the guest has come back since.
    pub credit_requested: bool,

    /// When the connection is reset if it has not got further (connect or close).
    pub deadline: Option<Instant>,
    /// Whether the connection is in the muxer's ready queue.
    pub in_ready: bool,
}

impl Connection {
    pub fn new(local_port: u32, peer_port: u32, sock: HostSock, origin: Origin) -> Self {
        Self {
            local_port,
            peer_port,
            sock: Some(sock),
            origin,
            connecting: false,
            rx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            readable: false,
            host_eof: false,
            hup: false,
            tx_buf: VecDeque::new(),
            control_out: Vec::new(),
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            guest_send_done: false,
            guest_rcv_done: false,
            host_write_shut: false,
            eof_sent: false,
            pend_request: false,
            pend_response: false,
            pend_rst: false,
            pend_shutdown: 0,
            pend_credit_update: false,
            pend_credit_request: false,
            credit_requested: false,
            deadline: None,
            in_ready: false,
        }
    }

    /// How many more bytes the guest can take (its `buf_alloc` minus what is in flight).
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Records the credit fields every guest packet carries.
    pub fn update_peer_credit(&mut self, hdr: &PacketHeader) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
        self.credit_requested = false;
    }

    /// Whether the host socket should be read (given an rx buffer).
    pub fn may_read(&self) -> bool {
        self.sock.is_some()
            && !self.connecting
            && !self.pend_rst
            && !self.host_eof
            && !self.guest_rcv_done
            && self.peer_credit() > 0
    }

    /// Whether the connection owes the guest a packet now.
    pub fn has_rx_work(&self) -> bool {
        self.pend_rst
            || (self.sock.is_some()
                && (self.pend_request
                    || self.pend_response
                    || self.pend_shutdown != 0
                    || self.pend_credit_update
                    || self.pend_credit_request
                    || (self.readable && self.may_read())))
    }

    /// The epoll events the host socket needs now.
    pub fn wanted_interest(&self) -> u32 {
        let mut events = 0;
        if self.may_read() && !self.readable {
            events |= libc::EPOLLIN as u32;
        }
        if !self.pend_rst && (!self.tx_buf.is_empty() || !self.control_out.is_empty()) {
            events |= libc::EPOLLOUT as u32;
        }
        events
    }

    /// A header from the host side of this connection to the guest.
    pub fn header(&mut self, guest_cid: u64, op: u16, flags: u32, len: u32) -> PacketHeader {
        // Every packet carries our credit, so the guest is up to date after any of them.
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.pend_credit_update = false;
        PacketHeader {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            type_: super::packet::TYPE_STREAM,
            op,
            flags,
            buf_alloc: TX_BUF_ALLOC as u32,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// Takes guest data for the host socket: written at once if it can be, else queued
    /// within the credit the guest was given.
    pub fn push_guest_data(&mut self, data: &[u8]) -> WriteOutcome {
        if self.hup {
            // Nobody on the host reads any more; the data is dropped but counted, so the
            // guest is not left waiting for credit.
            self.forwarded(data.len());
            return WriteOutcome::Ok;
        }
        if self.tx_buf.len().saturating_add(data.len()) > TX_BUF_ALLOC {
            return WriteOutcome::Overrun;
        }
        let mut rest = data;
        if self.tx_buf.is_empty() && self.control_out.is_empty() {
            let Some(sock) = self.sock.as_mut() else {
                return WriteOutcome::Ok;
            };
            match write_some(&mut sock.stream, rest) {
                Ok(n) => {
                    rest = rest.get(n..).unwrap_or_default();
                    self.forwarded(n);
                }
                Err(_) => return WriteOutcome::Broken,
            }
        }
        self.tx_buf.extend(rest);
        WriteOutcome::Ok
    }

    /// Writes queued bytes to the host socket as far as it takes them. Returns false if
    /// the host side is gone.
    pub fn flush(&mut self) -> bool {
        let Some(sock) = self.sock.as_mut() else {
            return true;
        };
        while !self.control_out.is_empty() {
            match write_some(&mut sock.stream, &self.control_out) {
                Ok(0) => return true,
                Ok(n) => {
                    self.control_out.drain(..n.min(self.control_out.len()));
                }
                Err(_) => return false,
            }
        }
        let mut total = 0;
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match write_some(&mut sock.stream, front) {
                Ok(0) => break,
                Ok(n) => {
                    self.tx_buf.drain(..n.min(self.tx_buf.len()));
                    total += n;
                }
                Err(_) => return false,
            }
        }
        if self.tx_buf.is_empty() && self.tx_buf.capacity() > 64 * 1024 {
            self.tx_buf.shrink_to(4096);
        }
        self.forwarded(total);
        true
    }

    /// The host side stopped reading for good: queued guest data is dropped (and
    /// counted as forwarded, so the guest's credit comes back).
    pub fn discard_tx(&mut self) {
        let dropped = self.tx_buf.len();
        self.tx_buf = VecDeque::new();
        self.control_out.clear();
        self.forwarded(dropped);
    }

    /// `n` guest bytes reached the host; the guest hears about it once a good share of
    /// its credit has come back.
    fn forwarded(&mut self, n: usize) {
        self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
        if self.fwd_cnt.wrapping_sub(self.last_fwd_cnt_sent) >= CREDIT_UPDATE_THRESHOLD {
            self.pend_credit_update = true;
        }
    }

    /// Applies the guest's SHUTDOWN to the host socket once its data is through.
    pub fn apply_guest_shutdown(&mut self) {
        let Some(sock) = self.sock.as_ref() else {
            return;
        };
        if self.guest_rcv_done {
            // Reads by the guest are over; a host writer sees EPIPE from now on.
            let _ = sock.stream.shutdown(Shutdown::Read);
        }
        if self.guest_send_done
            && !self.host_write_shut
            && self.tx_buf.is_empty()
            && self.control_out.is_empty()
        {
            let _ = sock.stream.shutdown(Shutdown::Write);
            self.host_write_shut = true;
        }
    }

    /// Both directions are over: nothing more can flow either way.
    pub fn finished(&self) -> bool {
        let to_host_done = (self.guest_send_done && self.host_write_shut) || self.hup;
        let to_guest_done = self.eof_sent || self.guest_rcv_done;
        !self.connecting && to_host_done && to_guest_done
    }

    /// Reads host data for the guest into `buf`: Some(n > 0) bytes, Some(0) at end of
    /// file, None when nothing is there right now (or the socket failed, which is
    /// reported as end of file with `hup` set).
    pub fn read_host(&mut self, buf: &mut [u8]) -> Option<usize> {
        let sock = self.sock.as_mut()?;
        loop {
            match sock.stream.read(buf) {
                Ok(n) => return Some(n),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return None,
                Err(_) => {
                    self.hup = true;
                    return Some(0);
                }
            }
        }
    }

    /// A header for the SHUTDOWN the host side owes, if any.
    pub fn take_shutdown(&mut self) -> u32 {
        let flags = self.pend_shutdown & shutdown::BOTH;
        self.pend_shutdown = 0;
        if flags & shutdown::SEND != 0 {
            self.eof_sent = true;
        }
        flags
    }
}

/// One non-blocking write; Ok(0) when the socket is full.
fn write_some(stream: &mut UnixStream, data: &[u8]) -> io::Result<usize> {
    if data.is_empty() {
        return Ok(0);
    }
    loop {
        match stream.write(data) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(0),
            Err(e) => return Err(e),
        }
    }
}
