//! The vsock device: virtqueues on one side, the [`Muxer`]'s host sockets on the other.

use std::io;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::connector::VsockConnector;
use super::muxer::{port_path, ConnectRequest, Muxer, FIRST_SOCKET_TOKEN};
use super::packet::{op, PacketHeader, HDR_LEN, HOST_CID, TYPE_STREAM};
use super::{EVENT_QUEUE, MAX_PKT_PAYLOAD, QUEUE_MAX_SIZE, RX_QUEUE, TX_QUEUE};
use crate::virtio::chain::{serve_queue, ChainBuffers, Served};
use crate::virtio::{
    device_type, features, ActivateContext, ActivateError, GuestMemory, Interrupt, VirtioDevice,
};

/// Epoll tokens of the device's own fds; host sockets use [`FIRST_SOCKET_TOKEN`] and up.
const TOKEN_LISTENER: u32 = 3;
const TOKEN_CONNECTOR: u32 = 4;
const TOKEN_TIMER: u32 = 5;
const TOKEN_KICK: u32 = 6;
const _: () = assert!(TOKEN_KICK < FIRST_SOCKET_TOKEN);

const QUEUE_SIZES: [u16; 3] = [QUEUE_MAX_SIZE; 3];

/// How long the listener rests after accept() failed for a reason other than "no client".
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum VsockError {
    /// vsock guest CID {0} is invalid: it must be at least 3 and below 4294967295 (0, 1 and 2 are reserved, and so is -1U)
    InvalidCid(u64),
    /// the vsock socket path {0} is too long: with "_<port>" appended it must fit the 107 bytes of a Unix socket address
    PathTooLong(String),
    /// the vsock socket path {0} already exists; remove it (a stale socket of an earlier VM?) or choose another
    PathExists(String),
    /// cannot listen on the vsock socket {path}: {source}
    Bind { path: String, source: io::Error },
    /// cannot create the vsock device's event fds: {0}
    EventFd(io::Error),
}

struct Active {
    mem: GuestMemory,
    queues: Vec<Queue>,
    interrupt: Arc<Interrupt>,
}

impl Active {
    /// Serves queue `index` with `serve`, which also gets the guest memory.
    fn serve(
        &mut self,
        index: u16,
        name: &str,
        mut serve: impl FnMut(&GuestMemory, DescriptorChain<&GuestMemory>) -> Served,
    ) {
        let mem = &self.mem;
        if let Some(queue) = self.queues.get_mut(usize::from(index)) {
            serve_queue(queue, mem, &self.interrupt, name, |chain| serve(mem, chain));
        }
    }
}

pub struct Vsock {
    guest_cid: u64,
    uds_path: PathBuf,
    queue_events: Vec<EventFd>,
    listener: UnixListener,
    connector_tx: mpsc::Sender<ConnectRequest>,
    connector_rx: mpsc::Receiver<ConnectRequest>,
    connector_kick: Arc<EventFd>,
    /// Wakes the event loop after the transport activated or reset the device.
    kick: EventFd,
    timer: TimerFd,
    timer_at: Option<Instant>,
    /// Set while the listener is out of the epoll set after accept() failed.
    listener_paused_until: Option<Instant>,
    active: Option<Active>,
    muxer: Muxer,
    tx_scratch: Vec<u8>,
}

impl Vsock {
    /// A vsock device for a guest with CID `guest_cid`, listening for host clients on the
    /// Unix socket `uds_path` (which must not exist yet).
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> Result<Vsock, VsockError> {
        if !(3..u64::from(u32::MAX)).contains(&guest_cid) {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        let shown = uds_path.display().to_string();
        // `sun_path` holds 108 bytes with the NUL; the longest guest-initiated path is
        // `<uds>_4294967295`.
        if port_path(&uds_path, u32::MAX).as_os_str().len() > 107 {
            return Err(VsockError::PathTooLong(shown));
        }
        if uds_path.symlink_metadata().is_ok() {
            return Err(VsockError::PathExists(shown));
        }
        // Everything that can fail goes before the bind, which leaves a file behind.
        let eventfd = || EventFd::new(libc::EFD_NONBLOCK).map_err(VsockError::EventFd);
        let queue_events = (0..QUEUE_SIZES.len())
            .map(|_| eventfd())
            .collect::<Result<Vec<_>, _>>()?;
        let connector_kick = Arc::new(eventfd()?);
        let kick = eventfd()?;
        let timer = TimerFd::new()
            .map_err(|e| VsockError::EventFd(io::Error::from_raw_os_error(e.errno())))?;
        let listener = UnixListener::bind(&uds_path).map_err(|source| VsockError::Bind {
            path: shown.clone(),
            source,
        })?;
        if let Err(source) = listener.set_nonblocking(true) {
            let _ = std::fs::remove_file(&uds_path);
            return Err(VsockError::Bind {
                path: shown,
                source,
            });
        }
        let (connector_tx, connector_rx) = mpsc::channel();
        Ok(Vsock {
            guest_cid,
            uds_path: uds_path.clone(),
            queue_events,
            listener,
            connector_tx,
            connector_rx,
            connector_kick,
            kick,
            timer,
            timer_at: None,
            listener_paused_until: None,
            active: None,
            muxer: Muxer::new(guest_cid, uds_path),
            tx_scratch: vec![0u8; MAX_PKT_PAYLOAD],
        })
    }

    /// A handle for opening streams to guest ports from other threads.
    pub fn connector(&self) -> VsockConnector {
        VsockConnector::new(self.connector_tx.clone(), self.connector_kick.clone())
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// Open connections, for tests and diagnostics.
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    /// Started by the driver and not broken.
    fn runnable(&self) -> bool {
        self.active
            .as_ref()
            .is_some_and(|a| !a.interrupt.needs_reset())
    }

    /// Takes packets off the tx queue and hands them to the muxer.
    fn process_tx(&mut self, now: Instant) {
        let Self {
            active,
            muxer,
            guest_cid,
            tx_scratch,
            ..
        } = self;
        let Some(active) = active.as_mut() else {
            return;
        };
        active.serve(TX_QUEUE, "vsock: tx queue", |mem, chain| {
            tx_packet(muxer, mem, *guest_cid, chain, tx_scratch, now);
            Served::Used(0)
        });
    }

    /// Fills rx buffers with what the muxer owes the guest.
    fn process_rx(&mut self) {
        let Self { active, muxer, .. } = self;
        let Some(active) = active.as_mut() else {
            return;
        };
        active.serve(RX_QUEUE, "vsock: rx queue", |mem, chain| {
            if !muxer.has_rx_work() {
                return Served::Later;
            }
            let len = match ChainBuffers::collect(mem, chain, true) {
                Ok(bufs) if bufs.len() >= HDR_LEN => {
                    // Nothing fits this buffer now: leave it for later.
                    let Some((hdr, n)) = muxer.next_packet(bufs.len() - HDR_LEN) else {
                        return Served::Later;
                    };
                    let payload = muxer.payload(n);
                    if bufs.write_at(mem, 0, &hdr.to_bytes())
                        && bufs.write_at(mem, HDR_LEN, payload)
                    {
                        (HDR_LEN + n) as u32
                    } else {
                        log::warn!("vsock: cannot write an rx packet");
                        0
                    }
                }
                Ok(bufs) => {
                    log::warn!("vsock: rx buffer of {} bytes is too short", bufs.len());
                    0
                }
                Err(e) => {
                    log::warn!("vsock: bad rx buffer: {e}");
                    0
                }
            };
            Served::Used(len)
        });
    }

    /// Arms the timer for the earliest deadline.
    fn update_timer(&mut self, now: Instant, force: bool) {
        if !force && !self.muxer.take_deadlines_changed() {
            return;
        }
        let next = match (self.muxer.next_deadline(), self.listener_paused_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if next == self.timer_at && !force {
            return;
        }
        self.timer_at = next;
        let result = match next {
            Some(at) => {
                // A zero duration would disarm the timer.
                let wait = at
                    .saturating_duration_since(now)
                    .max(Duration::from_millis(1));
                self.timer.reset(wait, None)
            }
            None => self.timer.clear(),
        };
        if let Err(e) = result {
            log::error!("vsock: cannot arm the timer: {e}");
        }
    }
}

/// Parses one tx chain and hands the packet to the muxer; bad packets are dropped, with
/// an RST when they name a connection.
fn tx_packet<I>(
    muxer: &mut Muxer,
    mem: &GuestMemory,
    guest_cid: u64,
    chain: I,
    scratch: &mut [u8],
    now: Instant,
) where
    I: Iterator<Item = virtio_queue::desc::split::Descriptor>,
{
    let bufs = match ChainBuffers::collect(mem, chain, false) {
        Ok(bufs) => bufs,
        Err(e) => {
            log::warn!("vsock: bad tx packet: {e}");
            return;
        }
    };
    let mut raw = [0u8; HDR_LEN];
    if !bufs.read_at(mem, 0, &mut raw) {
        log::warn!("vsock: tx packet of {} bytes is too short", bufs.len());
        return;
    }
    let hdr = PacketHeader::from_bytes(&raw);
    if hdr.src_cid != guest_cid {
        log::warn!("vsock: tx packet from CID {} dropped", hdr.src_cid);
        return;
    }
    let len = hdr.len as usize;
    let room = bufs.len().saturating_sub(HDR_LEN);
    let bad = if hdr.dst_cid != HOST_CID {
        Some("not for the host")
    } else if hdr.type_ != TYPE_STREAM {
        Some("not a stream packet")
    } else if !(op::REQUEST..=op::CREDIT_REQUEST).contains(&hdr.op) {
        Some("unknown op")
    } else if len > MAX_PKT_PAYLOAD || len > room {
        Some("bad length")
    } else {
        None
    };
    if let Some(why) = bad {
        log::warn!(
            "vsock: tx packet {}:{} -> {}:{} op {} len {len} refused: {why}",
            hdr.src_cid,
            hdr.src_port,
            hdr.dst_cid,
            hdr.dst_port,
            hdr.op
        );
        muxer.reject(&hdr);
        return;
    }
    let payload = if hdr.op == op::RW {
        let Some(payload) = scratch.get_mut(..len) else {
            muxer.reject(&hdr);
            return;
        };
        if !bufs.read_at(mem, HDR_LEN, payload) {
            muxer.reject(&hdr);
            return;
        }
        &payload[..]
    } else {
        &[][..]
    };
    muxer.handle_guest_packet(&hdr, payload, now);
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        features::VERSION_1 | features::RING_EVENT_IDX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        let config = self.guest_cid.to_le_bytes();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| config.get(at).copied())
                .unwrap_or(0);
        }
    }

    fn activate(&mut self, context: ActivateContext) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        if context.queues.len() != QUEUE_SIZES.len() {
            return Err(ActivateError::Backend(format!(
                "vsock needs {} queues, got {}",
                QUEUE_SIZES.len(),
                context.queues.len()
            )));
        }
        let event_idx = context.acked_features & features::RING_EVENT_IDX != 0;
        let mut queues = context.queues;
        for queue in &mut queues {
            queue.set_event_idx(event_idx);
        }
        self.active = Some(Active {
            mem: context.mem,
            queues,
            interrupt: context.interrupt,
        });
        // Let the event loop look at the queues once.
        if let Err(e) = self.kick.write(1) {
            log::warn!("vsock: cannot wake the event loop: {e}");
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.muxer.reset_all();
        // The event loop closes the sockets (they leave its epoll set first).
        if let Err(e) = self.kick.write(1) {
            log::warn!("vsock: cannot wake the event loop: {e}");
        }
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        let mut add = |events: Events, what: &str| {
            if let Err(e) = ops.add(events) {
                log::error!("vsock: cannot watch the {what}: {e:?}");
            }
        };
        for (index, event) in self.queue_events.iter().enumerate() {
            add(
                Events::with_data(event, index as u32, EventSet::IN),
                "queue",
            );
        }
        add(
            Events::with_data(&self.listener, TOKEN_LISTENER, EventSet::IN),
            "listener",
        );
        add(
            Events::with_data(self.connector_kick.as_ref(), TOKEN_CONNECTOR, EventSet::IN),
            "connector",
        );
        add(
            Events::with_data(&self.timer, TOKEN_TIMER, EventSet::IN),
            "timer",
        );
        add(
            Events::with_data(&self.kick, TOKEN_KICK, EventSet::IN),
            "kick",
        );
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let now = Instant::now();
        let token = events.data();
        let mut timer_fired = false;
        match token {
            t if t == u32::from(RX_QUEUE) || t == u32::from(EVENT_QUEUE) => {
                if let Some(event) = self.queue_events.get(t as usize) {
                    let _ = event.read();
                }
                // New rx buffers are used below; event buffers are not used at all.
            }
            t if t == u32::from(TX_QUEUE) => {
                if let Some(event) = self.queue_events.get(t as usize) {
                    let _ = event.read();
                }
                if self.runnable() {
                    self.process_tx(now);
                }
            }
            TOKEN_LISTENER => {
                if !self.muxer.accept(&self.listener, now) {
                    // accept() keeps failing (out of fds?) while the client waits in the
                    // backlog: stop watching the listener for a while instead of spinning.
                    if let Err(e) = ops.remove(Events::new(&self.listener, EventSet::IN)) {
                        log::error!("vsock: cannot pause the listener: {e:?}");
                    }
                    self.listener_paused_until = Some(now + ACCEPT_RETRY);
                    timer_fired = true;
                }
            }
            TOKEN_CONNECTOR => {
                let _ = self.connector_kick.read();
                let active = self.runnable();
                while let Ok(request) = self.connector_rx.try_recv() {
                    self.muxer.connector_request(request, active, now);
                }
            }
            TOKEN_TIMER => {
                // Re-arming below clears the expiry; reading could block if it was
                // re-armed since epoll reported it.
                timer_fired = true;
                self.muxer.expire(now);
                if self.listener_paused_until.is_some_and(|at| at <= now) {
                    self.listener_paused_until = None;
                    let events = Events::with_data(&self.listener, TOKEN_LISTENER, EventSet::IN);
                    if let Err(e) = ops.add(events) {
                        log::error!("vsock: cannot watch the listener again: {e:?}");
                    }
                }
            }
            TOKEN_KICK => {
                let _ = self.kick.read();
                if self.runnable() {
                    self.process_tx(now);
                }
            }
            token => {
                let active = self.runnable();
                self.muxer
                    .host_event(token, events.event_set(), active, now);
            }
        }
        // Socket work and tx packets may have left packets for the guest; epoll changes
        // can reset connections, which leaves RSTs: two rounds cover that.
        for _ in 0..2 {
            if self.runnable() {
                self.process_rx();
            }
            if !self.muxer.sync(ops) {
                break;
            }
        }
        self.update_timer(now, timer_fired);
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        // The socket file is ours; leaving it would make the next `new` fail.
        if let Err(e) = std::fs::remove_file(&self.uds_path) {
            log::debug!("vsock: removing {}: {e}", self.uds_path.display());
        }
    }
}
