//! The host side of the hybrid vsock: the table of connections, the Unix sockets behind
//! them, and the translation between guest packets and host socket I/O.
//!
//! The muxer never touches a virtqueue. Guest packets come in through
//! [`Muxer::handle_guest_packet`]; packets for the guest are made one at a time by
//! [`Muxer::next_packet`] when the device holds an rx buffer, from what each connection
//! owes (a small set of flags, plus data still sitting in its host socket), so the
//! pending work for the guest is bounded by the number of connections whatever the
//! guest does with its rx queue. Changes to the epoll set are collected and applied by
//! [`Muxer::sync`], which needs the event loop's `EventOps`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::io::{self, ErrorKind, Read};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use event_manager::{EventOps, EventSet, Events};

use super::connection::{Connection, HostSock, Origin, WriteOutcome};
use super::packet::{op, shutdown, PacketHeader, HOST_CID, TYPE_STREAM};
use super::{
    CLOSE_TIMEOUT, HANDSHAKE_TIMEOUT, HOST_CONNECT_TIMEOUT, MAX_CONNECTIONS, MAX_HANDSHAKES,
    MAX_PKT_PAYLOAD, TX_BUF_ALLOC,
};

/// The first epoll token used for host sockets; smaller ones are the device's own.
pub(crate) const FIRST_SOCKET_TOKEN: u32 = 16;
/// The first local port handed out to host-initiated connections.
const FIRST_HOST_PORT: u32 = 1024;
/// The longest `CONNECT <port>\n` line accepted.
const MAX_LINE: usize = 32;
/// RSTs for packets that name no connection, waiting for rx buffers; more are dropped.
const MAX_STRAY_RSTS: usize = 256;

/// A client of the hybrid socket that has not finished its `CONNECT` line.
struct Handshake {
    sock: HostSock,
    line: Vec<u8>,
    deadline: Instant,
}

/// A connection request from the in-process connector.
pub(crate) struct ConnectRequest {
    pub port: u32,
    pub stream: UnixStream,
    pub reply: mpsc::Sender<io::Result<()>>,
    pub deadline: Instant,
}

pub(crate) struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    conns: HashMap<u32, Connection>,
    /// (local port, guest port) -> token.
    by_key: HashMap<(u32, u32), u32>,
    /// Local ports of live host-initiated connections.
    host_ports: HashSet<u32>,
    handshakes: HashMap<u32, Handshake>,
    /// Connections owing the guest a packet, in turn.
    ready: VecDeque<u32>,
    /// RSTs for packets that named no connection (already addressed).
    stray_rsts: VecDeque<PacketHeader>,
    /// Sockets to take out of epoll and close.
    closing: Vec<HostSock>,
    /// Tokens whose epoll interest may have changed.
    dirty: Vec<u32>,
    next_token: u32,
    next_port: u32,
    /// A deadline was set since the device last looked at the timer.
    deadlines_changed: bool,
    scratch: Vec<u8>,
}

impl Muxer {
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> Self {
        Self {
            guest_cid,
            uds_path,
            conns: HashMap::new(),
            by_key: HashMap::new(),
            host_ports: HashSet::new(),
            handshakes: HashMap::new(),
            ready: VecDeque::new(),
            stray_rsts: VecDeque::new(),
            closing: Vec::new(),
            dirty: Vec::new(),
            next_token: FIRST_SOCKET_TOKEN,
            next_port: FIRST_HOST_PORT,
            deadlines_changed: false,
            scratch: vec![0u8; MAX_PKT_PAYLOAD],
        }
    }

    /// Live connections (including ones whose RST is still owed).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    fn alloc_token(&mut self) -> u32 {
        loop {
            let token = self.next_token;
            self.next_token = token.checked_add(1).unwrap_or(FIRST_SOCKET_TOKEN);
            if !self.conns.contains_key(&token) && !self.handshakes.contains_key(&token) {
                return token;
            }
        }
    }

    fn alloc_host_port(&mut self, peer_port: u32) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let port = self.next_port;
            self.next_port = port.checked_add(1).unwrap_or(FIRST_HOST_PORT);
            if !self.host_ports.contains(&port) && !self.by_key.contains_key(&(port, peer_port)) {
                return Some(port);
            }
        }
        None
    }

    /// Re-files a connection after its state changed: into the ready queue if it owes
    /// the guest a packet, and up for an epoll update.
    fn touch(&mut self, token: u32) {
        if let Some(conn) = self.conns.get_mut(&token) {
            if !conn.in_ready && conn.has_rx_work() {
                conn.in_ready = true;
                self.ready.push_back(token);
            }
            self.dirty.push(token);
        }
    }

    pub fn has_rx_work(&self) -> bool {
        !self.stray_rsts.is_empty() || !self.ready.is_empty()
    }

    /// Queues an RST answering `hdr`, which named no live connection.
    fn stray_rst(&mut self, hdr: &PacketHeader) {
        if hdr.op == op::RST {
            return;
        }
        if self.stray_rsts.len() >= MAX_STRAY_RSTS {
            log::debug!("vsock: dropping an RST, too many queued");
            return;
        }
        self.stray_rsts.push_back(PacketHeader {
            src_cid: hdr.dst_cid,
            dst_cid: self.guest_cid,
            src_port: hdr.dst_port,
            dst_port: hdr.src_port,
            len: 0,
            type_: TYPE_STREAM,
            op: op::RST,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        });
    }

    /// Ends a connection: the host socket closes now, the guest gets an RST (unless it
    /// never heard of the connection), then the entry goes.
    fn reset_conn(&mut self, token: u32, why: io::ErrorKind) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if let Origin::Connector(reply) = &mut conn.origin {
            if let Some(reply) = reply.take() {
                let _ = reply.send(Err(io::Error::from(why)));
            }
        }
        if let Some(sock) = conn.sock.take() {
            self.closing.push(sock);
        }
        if conn.pend_request {
            // The guest never saw the REQUEST: nothing to reset on its side.
            self.free(token);
            return;
        }
        conn.pend_rst = true;
        conn.deadline = None;
        self.touch(token);
    }

    /// Forgets a connection at once.
    fn free(&mut self, token: u32) {
        if let Some(mut conn) = self.conns.remove(&token) {
            self.by_key.remove(&(conn.local_port, conn.peer_port));
            if !matches!(conn.origin, Origin::Guest) {
                self.host_ports.remove(&conn.local_port);
            }
            if let Some(sock) = conn.sock.take() {
                self.closing.push(sock);
            }
        }
    }

    /// Sends an RST and frees the connection once both directions are over.
    fn check_finished(&mut self, token: u32) {
        if let Some(conn) = self.conns.get(&token) {
            if !conn.pend_rst && conn.finished() {
                self.reset_conn(token, ErrorKind::ConnectionReset);
            }
        }
    }

    // ---------------------------------------------------------------- guest -> host

    /// A packet from the guest whose addressing and length the device has checked
    /// (src_cid is the guest's, dst_cid the host's, type STREAM, payload complete).
    pub fn handle_guest_packet(&mut self, hdr: &PacketHeader, payload: &[u8], now: Instant) {
        let key = (hdr.dst_port, hdr.src_port);
        let Some(&token) = self.by_key.get(&key) else {
            match hdr.op {
                op::REQUEST => self.guest_connect(hdr),
                op::RST => {}
                _ => self.stray_rst(hdr),
            }
            return;
        };
        let Some(conn) = self.conns.get_mut(&token) else {
            self.by_key.remove(&key);
            return;
        };
        if conn.pend_rst {
            // Only the RST to the guest is left; an RST from the guest settles it too.
            if hdr.op == op::RST {
                self.free(token);
            }
            return;
        }
        conn.update_peer_credit(hdr);
        match hdr.op {
            op::RST => {
                if let Origin::Connector(reply) = &mut conn.origin {
                    if let Some(reply) = reply.take() {
                        let _ = reply.send(Err(io::Error::from(ErrorKind::ConnectionRefused)));
                    }
                }
                self.free(token);
                return;
            }
            op::RESPONSE => {
                if !conn.connecting || conn.pend_request {
                    self.reset_conn(token, ErrorKind::ConnectionReset);
                    return;
                }
                conn.connecting = false;
                conn.deadline = None;
                match &mut conn.origin {
                    Origin::HostUds => {
                        conn.control_out = format!("OK {}\n", conn.local_port).into_bytes();
                        if !conn.flush() {
                            self.reset_conn(token, ErrorKind::ConnectionReset);
                            return;
                        }
                    }
                    Origin::Connector(reply) => {
                        let delivered = reply.take().is_some_and(|r| r.send(Ok(())).is_ok());
                        if !delivered {
                            // The caller gave up waiting.
                            self.reset_conn(token, ErrorKind::TimedOut);
                            return;
                        }
                    }
                    Origin::Guest => {}
                }
            }
            op::SHUTDOWN => {
                if conn.connecting {
                    self.reset_conn(token, ErrorKind::ConnectionRefused);
                    return;
                }
                let flags = hdr.flags & shutdown::BOTH;
                conn.guest_rcv_done |= flags & shutdown::RCV != 0;
                conn.guest_send_done |= flags & shutdown::SEND != 0;
                conn.apply_guest_shutdown();
                if conn.guest_rcv_done && conn.guest_send_done && conn.deadline.is_none() {
                    conn.deadline = now.checked_add(CLOSE_TIMEOUT);
                    self.deadlines_changed = true;
                }
                self.check_finished(token);
            }
            op::RW => {
                if conn.connecting || conn.guest_send_done {
                    self.reset_conn(token, ErrorKind::ConnectionReset);
                    return;
                }
                match conn.push_guest_data(payload) {
                    WriteOutcome::Ok => {}
                    WriteOutcome::Broken => {
                        self.reset_conn(token, ErrorKind::ConnectionReset);
                        return;
                    }
                    WriteOutcome::Overrun => {
                        log::warn!(
                            "vsock: guest port {} sent more than its credit of {TX_BUF_ALLOC} bytes",
                            conn.peer_port
                        );
                        self.reset_conn(token, ErrorKind::ConnectionReset);
                        return;
                    }
                }
            }
            op::CREDIT_UPDATE => {}
            op::CREDIT_REQUEST => conn.pend_credit_update = true,
            _ => {
                self.reset_conn(token, ErrorKind::ConnectionReset);
                return;
            }
        }
        self.touch(token);
    }

    /// A packet the device refused (bad type, length or op): the connection it names
    /// is reset, or an RST answers it.
    pub fn reject(&mut self, hdr: &PacketHeader) {
        match self.by_key.get(&(hdr.dst_port, hdr.src_port)).copied() {
            Some(token) if hdr.dst_cid == HOST_CID => {
                if hdr.op == op::RST {
                    self.free(token);
                } else {
                    self.reset_conn(token, ErrorKind::ConnectionReset);
                }
            }
            _ => self.stray_rst(hdr),
        }
    }

    /// The guest connects to host port `dst_port`: the Unix socket `<uds>_<port>`.
    fn guest_connect(&mut self, hdr: &PacketHeader) {
        if self.conns.len() >= MAX_CONNECTIONS {
            log::warn!("vsock: refusing a guest connection, {MAX_CONNECTIONS} are open");
            self.stray_rst(hdr);
            return;
        }
        let path = port_path(&self.uds_path, hdr.dst_port);
        let stream = match connect_nonblocking(&path) {
            Ok(stream) => stream,
            Err(e) => {
                log::debug!("vsock: guest connection to {}: {e}", path.display());
                self.stray_rst(hdr);
                return;
            }
        };
        let token = self.alloc_token();
        let sock = HostSock::new(stream);
        let mut conn = Connection::new(hdr.dst_port, hdr.src_port, sock, Origin::Guest);
        conn.update_peer_credit(hdr);
        conn.pend_response = true;
        self.by_key.insert((hdr.dst_port, hdr.src_port), token);
        self.conns.insert(token, conn);
        self.touch(token);
    }

    // ---------------------------------------------------------------- host -> guest

    /// Opens a connection to guest port `port` for a host stream.
    fn host_connect(
        &mut self,
        token: u32,
        port: u32,
        sock: HostSock,
        origin: Origin,
        deadline: Option<Instant>,
    ) -> Result<(), (HostSock, Origin)> {
        if self.conns.len() >= MAX_CONNECTIONS {
            log::warn!("vsock: refusing a host connection, {MAX_CONNECTIONS} are open");
            return Err((sock, origin));
        }
        let Some(local_port) = self.alloc_host_port(port) else {
            return Err((sock, origin));
        };
        let mut conn = Connection::new(local_port, port, sock, origin);
        conn.connecting = true;
        conn.pend_request = true;
        conn.deadline = deadline;
        self.deadlines_changed = true;
        self.by_key.insert((local_port, port), token);
        self.host_ports.insert(local_port);
        self.conns.insert(token, conn);
        self.touch(token);
        Ok(())
    }

    /// A request from the in-process connector.
    pub fn connector_request(&mut self, request: ConnectRequest, active: bool, now: Instant) {
        if !active {
            let _ = request
                .reply
                .send(Err(io::Error::from(ErrorKind::NotConnected)));
            return;
        }
        if request.deadline <= now {
            // The caller has given up already.
            return;
        }
        let origin = Origin::Connector(Some(request.reply));
        let token = self.alloc_token();
        let sock = HostSock::new(request.stream);
        if let Err((_, Origin::Connector(Some(reply)))) =
            self.host_connect(token, request.port, sock, origin, Some(request.deadline))
        {
            let _ = reply.send(Err(io::Error::other("too many vsock connections")));
        }
    }

    /// Accepts clients of the hybrid socket; they still have to send `CONNECT <port>\n`.
    /// False when accept() fails for another reason than an empty backlog.
    pub fn accept(&mut self, listener: &UnixListener, now: Instant) -> bool {
        // Bounded per wake-up so that a flood of clients cannot starve the queues.
        for _ in 0..64 {
            let stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) => {
                    log::warn!("vsock: accepting on {}: {e}", self.uds_path.display());
                    return false;
                }
            };
            if self.handshakes.len() >= MAX_HANDSHAKES || stream.set_nonblocking(true).is_err() {
                log::warn!("vsock: dropping a client of {}", self.uds_path.display());
                continue;
            }
            let token = self.alloc_token();
            let deadline = now.checked_add(HANDSHAKE_TIMEOUT).unwrap_or(now);
            self.handshakes.insert(
                token,
                Handshake {
                    sock: HostSock::new(stream),
                    line: Vec::new(),
                    deadline,
                },
            );
            self.dirty.push(token);
            self.deadlines_changed = true;
        }
        true
    }

    /// Readiness of a host socket.
    pub fn host_event(&mut self, token: u32, events: EventSet, active: bool, now: Instant) {
        if self.handshakes.contains_key(&token) {
            self.handshake_event(token, active, now);
            return;
        }
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if conn.sock.is_none() {
            return;
        }
        let hung_up = events.intersects(EventSet::HANG_UP | EventSet::ERROR);
        if hung_up {
            if conn.connecting {
                // The host client went away before the guest answered.
                self.reset_conn(token, ErrorKind::ConnectionAborted);
                return;
            }
            conn.hup = true;
            conn.readable = true;
            // Nobody reads on the host any more: what the guest sent is dropped.
            conn.discard_tx();
            if let Some(sock) = conn.sock.as_mut() {
                sock.watch = false;
            }
        } else {
            if events.contains(EventSet::IN) {
                conn.readable = true;
            }
            if events.contains(EventSet::OUT) {
                if !conn.flush() {
                    self.reset_conn(token, ErrorKind::ConnectionReset);
                    return;
                }
                conn.apply_guest_shutdown();
            }
        }
        self.check_finished(token);
        self.touch(token);
    }

    fn handshake_event(&mut self, token: u32, active: bool, now: Instant) {
        let Some(hs) = self.handshakes.get_mut(&token) else {
            return;
        };
        // One byte at a time: whatever follows the line is data for the guest and must
        // stay in the socket.
        let mut byte = [0u8; 1];
        let port = loop {
            match hs.sock.stream.read(&mut byte) {
                Ok(0) => break None,
                Ok(_) => {
                    if byte[0] == b'\n' {
                        break parse_connect(&hs.line);
                    }
                    if hs.line.len() >= MAX_LINE {
                        break None;
                    }
                    hs.line.push(byte[0]);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => break None,
            }
        };
        let Some(hs) = self.handshakes.remove(&token) else {
            return;
        };
        let Some(port) = port else {
            log::debug!("vsock: dropping a client with a bad CONNECT line");
            self.closing.push(hs.sock);
            return;
        };
        if !active {
            log::debug!("vsock: CONNECT {port} while the device is not running");
            self.closing.push(hs.sock);
            return;
        }
        // The socket keeps its epoll registration, and so its token, as the connection's.
        let deadline = now.checked_add(HOST_CONNECT_TIMEOUT);
        if let Err((sock, _)) = self.host_connect(token, port, hs.sock, Origin::HostUds, deadline) {
            self.closing.push(sock);
        }
    }

    /// Whether a deadline was set since the last call.
    pub fn take_deadlines_changed(&mut self) -> bool {
        std::mem::take(&mut self.deadlines_changed)
    }

    /// The earliest deadline of any connection or client.
    pub fn next_deadline(&self) -> Option<Instant> {
        let conns = self.conns.values().filter_map(|c| c.deadline);
        let clients = self.handshakes.values().map(|h| h.deadline);
        conns.chain(clients).min()
    }

    /// Resets connections and drops clients whose deadline has passed.
    pub fn expire(&mut self, now: Instant) {
        let late: Vec<u32> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(&t, _)| t)
            .collect();
        for token in late {
            log::debug!("vsock: connection {token} timed out");
            self.reset_conn(token, ErrorKind::TimedOut);
        }
        let late: Vec<u32> = self
            .handshakes
            .iter()
            .filter(|(_, h)| h.deadline <= now)
            .map(|(&t, _)| t)
            .collect();
        for token in late {
            if let Some(hs) = self.handshakes.remove(&token) {
                self.closing.push(hs.sock);
            }
        }
    }

    /// The next packet for the guest, for an rx buffer with room for `room` payload
    /// bytes: the header and the payload length (the payload is in [`Self::payload`]).
    pub fn next_packet(&mut self, room: usize) -> Option<(PacketHeader, usize)> {
        if let Some(hdr) = self.stray_rsts.pop_front() {
            return Some((hdr, 0));
        }
        // Each connection gets one look; one that cannot use this buffer (a data-only
        // backlog and no room for data) goes back in line.
        for _ in 0..self.ready.len() {
            let Some(token) = self.ready.pop_front() else {
                break;
            };
            let Some(conn) = self.conns.get_mut(&token) else {
                continue;
            };
            conn.in_ready = false;
            let packet = self.packet_for(token, room);
            self.touch(token);
            if packet.is_some() {
                return packet;
            }
        }
        None
    }

    pub fn payload(&self, len: usize) -> &[u8] {
        self.scratch.get(..len).unwrap_or_default()
    }

    fn packet_for(&mut self, token: u32, room: usize) -> Option<(PacketHeader, usize)> {
        let guest_cid = self.guest_cid;
        let conn = self.conns.get_mut(&token)?;
        if conn.pend_rst {
            let hdr = conn.header(guest_cid, op::RST, 0, 0);
            self.free(token);
            return Some((hdr, 0));
        }
        conn.sock.as_ref()?;
        if conn.pend_request {
            conn.pend_request = false;
            return Some((conn.header(guest_cid, op::REQUEST, 0, 0), 0));
        }
        if conn.pend_response {
            conn.pend_response = false;
            return Some((conn.header(guest_cid, op::RESPONSE, 0, 0), 0));
        }
        if conn.readable && conn.may_read() {
            let max = room
                .min(MAX_PKT_PAYLOAD)
                .min(conn.peer_credit() as usize)
                .min(self.scratch.len());
            if max > 0 {
                let buf = self.scratch.get_mut(..max).unwrap_or_default();
                match conn.read_host(buf) {
                    Some(0) => {
                        conn.readable = false;
                        conn.host_eof = true;
                        conn.pend_shutdown |= shutdown::SEND;
                        if conn.hup {
                            conn.pend_shutdown |= shutdown::RCV;
                        }
                    }
                    Some(n) => {
                        conn.rx_cnt = conn.rx_cnt.wrapping_add(n as u32);
                        if conn.peer_credit() == 0 && !conn.credit_requested {
                            conn.pend_credit_request = true;
                        }
                        let hdr = conn.header(guest_cid, op::RW, 0, n as u32);
                        return Some((hdr, n));
                    }
                    None => conn.readable = false,
                }
            }
        }
        if conn.pend_shutdown != 0 {
            let flags = conn.take_shutdown();
            let hdr = conn.header(guest_cid, op::SHUTDOWN, flags, 0);
            self.check_finished(token);
            return Some((hdr, 0));
        }
        if conn.pend_credit_update {
            return Some((conn.header(guest_cid, op::CREDIT_UPDATE, 0, 0), 0));
        }
        if conn.pend_credit_request {
            conn.pend_credit_request = false;
            conn.credit_requested = true;
            return Some((conn.header(guest_cid, op::CREDIT_REQUEST, 0, 0), 0));
        }
        None
    }

    // ---------------------------------------------------------------- lifecycle

    /// The driver reset the device: every connection ends (host sockets are shut down
    /// now and closed on the next [`Self::sync`]); clients still sending their
    /// `CONNECT` line stay.
    pub fn reset_all(&mut self) {
        for (_, mut conn) in self.conns.drain() {
            if let Origin::Connector(reply) = &mut conn.origin {
                if let Some(reply) = reply.take() {
                    let _ = reply.send(Err(io::Error::from(ErrorKind::NotConnected)));
                }
            }
            if let Some(sock) = conn.sock.take() {
                let _ = sock.stream.shutdown(Shutdown::Both);
                self.closing.push(sock);
            }
        }
        self.by_key.clear();
        self.host_ports.clear();
        self.ready.clear();
        self.stray_rsts.clear();
    }

    /// Applies epoll changes and closes sockets that are done. Returns whether epoll
    /// refused a socket, whose connection was reset (and now owes the guest an RST).
    pub fn sync(&mut self, ops: &mut EventOps) -> bool {
        for sock in self.closing.drain(..) {
            if sock.registered {
                if let Err(e) = ops.remove(Events::empty(&sock.stream)) {
                    log::warn!("vsock: removing a socket from epoll: {e:?}");
                }
            }
        }
        let mut failed = Vec::new();
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for token in dirty.drain(..) {
            let ok = if let Some(conn) = self.conns.get_mut(&token) {
                let wanted = conn.wanted_interest();
                match conn.sock.as_mut() {
                    Some(sock) => register(ops, token, sock, wanted),
                    None => true,
                }
            } else if let Some(hs) = self.handshakes.get_mut(&token) {
                register(ops, token, &mut hs.sock, libc::EPOLLIN as u32)
            } else {
                true
            };
            if !ok {
                failed.push(token);
            }
        }
        self.dirty = dirty;
        let any_failed = !failed.is_empty();
        for token in failed {
            if let Some(hs) = self.handshakes.remove(&token) {
                self.closing.push(hs.sock);
            }
            self.reset_conn(token, ErrorKind::Other);
        }
        // Sockets of connections reset just now.
        for sock in self.closing.drain(..) {
            if sock.registered {
                let _ = ops.remove(Events::empty(&sock.stream));
            }
        }
        any_failed
    }
}

/// Puts a socket in the epoll set with `wanted` events (or takes it out if it is no
/// longer watched). False if epoll refused.
fn register(ops: &mut EventOps, token: u32, sock: &mut HostSock, wanted: u32) -> bool {
    let events = || Events::with_data(&sock.stream, token, EventSet::from_bits_truncate(wanted));
    if !sock.watch {
        if sock.registered {
            sock.registered = false;
            if let Err(e) = ops.remove(Events::empty(&sock.stream)) {
                log::warn!("vsock: removing a socket from epoll: {e:?}");
            }
        }
        return true;
    }
    if !sock.registered {
        if let Err(e) = ops.add(events()) {
            log::warn!("vsock: adding a socket to epoll: {e:?}");
            return false;
        }
        sock.registered = true;
        sock.interest = wanted;
    } else if sock.interest != wanted {
        if let Err(e) = ops.modify(events()) {
            log::warn!("vsock: changing a socket's epoll events: {e:?}");
            return false;
        }
        sock.interest = wanted;
    }
    true
}

/// `CONNECT <port>` (a trailing `\r` is tolerated).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let port = line.strip_prefix("CONNECT ")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

/// `<uds>_<port>`.
pub(crate) fn port_path(uds: &Path, port: u32) -> PathBuf {
    let mut path = OsString::from(uds.as_os_str());
    path.push(format!("_{port}"));
    PathBuf::from(path)
}

/// Connects to a Unix stream socket without blocking: a listener whose backlog is full
/// refuses (EAGAIN) instead of stalling the event loop.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;

    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: plain syscall with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket this function owns; OwnedFd closes it on every path.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un of at least `len` bytes that outlives the
    // call; `fd` is an open socket.
    let rc = unsafe {
        libc::connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
            len as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 4294967295\r"), Some(u32::MAX));
        assert_eq!(parse_connect(b"CONNECT 4294967296"), None);
        assert_eq!(parse_connect(b"CONNECT +5"), None);
        assert_eq!(parse_connect(b"CONNECT "), None);
        assert_eq!(parse_connect(b"connect 5"), None);
        assert_eq!(parse_connect(b"\xff"), None);
    }

    #[test]
    fn port_paths() {
        assert_eq!(
            port_path(Path::new("/run/v.sock"), 52),
            PathBuf::from("/run/v.sock_52")
        );
    }
}
