//! The net device: the rx and tx queues on one side, the [`Tap`] on the other.
//!
//! Everything happens on the event loop, in [`MutEventSubscriber::process`], which is
//! also the only place where the device can change what it waits for on the tap: it
//! watches the tap for EPOLLIN while it can take frames (active, and not holding a frame
//! the guest has no buffers for) and for EPOLLOUT while tx waits for the tap to take
//! one. Both are level-triggered, so the device never waits for something it has not
//! asked for, and never spins on something it cannot act on.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::frame::{parse_rx, parse_tx, rx_buffers_needed, write_rx};
use super::tap::{Tap, TapError};
use super::{
    features as net_features, MAX_FRAME_LEN, QUEUE_MAX_SIZE, RX_QUEUE, STATUS_LINK_UP, TX_QUEUE,
    VNET_HDR_LEN,
};
use crate::virtio::chain::{serve_queue, ChainBuffers, GuestIoSlices, Served};
use crate::virtio::{
    device_type, features, ActivateContext, ActivateError, GuestMemory, Interrupt, VirtioDevice,
};

const QUEUE_SIZES: [u16; 2] = [QUEUE_MAX_SIZE; 2];

/// Epoll tokens: the queues' notifications (by queue index), the tap, and the wake-up
/// after activation.
const TOKEN_RX: u32 = RX_QUEUE as u32;
const TOKEN_TX: u32 = TX_QUEUE as u32;
const TOKEN_TAP: u32 = 2;
const TOKEN_KICK: u32 = 3;

/// Length of the configuration space: `mac` (6 bytes) and `status` (le16).
const CONFIG_LEN: usize = 8;

/// The offloads the guest may take that the device offers if the tap does, and the
/// `TUN_F_*` flag each needs on the tap.
const GUEST_OFFLOADS: [(u64, u32); 3] = [
    (net_features::GUEST_CSUM, libc::TUN_F_CSUM),
    (net_features::GUEST_TSO4, libc::TUN_F_TSO4),
    (net_features::GUEST_TSO6, libc::TUN_F_TSO6),
];

/// What a net device is made of.
#[derive(Debug)]
pub struct NetConfig {
    /// The host end, opened by the caller (in the namespace it belongs to).
    pub tap: Tap,
    /// The guest's MAC address (VIRTIO_NET_F_MAC).
    pub mac: [u8; 6],
}

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum NetError {
    /// cannot create the net device's event fds: {0}
    EventFd(io::Error),
    /// {0}
    Tap(#[from] TapError),
}

/// What the device did, for tests and diagnostics. Bytes are frame bytes, without the
/// virtio-net header.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames and bytes from the tap delivered to the guest.
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Frames from the tap that could not be delivered: longer than the guest's buffers
    /// can ever hold, cut short by the kernel, or held when the driver reset the device.
    pub rx_dropped: u64,
    /// rx chains that cannot take a frame (device-readable, outside guest memory, shorter
    /// than the header, cut short): returned unused.
    pub rx_bad_chains: u64,
    /// Times the device stopped reading the tap because the guest had no rx buffers.
    pub rx_waits: u64,
    /// Frames and bytes from the guest written to the tap.
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// tx frames the tap refused (a header it does not accept, say).
    pub tx_dropped: u64,
    /// tx chains that hold no frame (device-writable, outside guest memory, shorter than
    /// the header, longer than [`MAX_FRAME_LEN`], cut short): returned unused.
    pub tx_bad_chains: u64,
    /// Times tx waited for the tap to take more (EAGAIN).
    pub tx_waits: u64,
}

struct Active {
    mem: GuestMemory,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<Interrupt>,
    mergeable: bool,
}

pub struct Net {
    tap: Tap,
    mac: [u8; 6],
    config: [u8; CONFIG_LEN],
    /// The guest offloads the tap takes (a subset of the `GUEST_OFFLOADS` features).
    guest_offloads: u64,
    queue_events: Vec<EventFd>,
    kick: EventFd,
    active: Option<Active>,
    /// The frame read from the tap and not yet delivered: `rx_frame[..rx_len]`, if
    /// `rx_len` is not 0. One byte longer than the longest frame, so that a longer one
    /// (which the kernel would cut short to fit) shows.
    ///
    /// A bounce buffer rather than reading straight into the guest's buffers: a tap read
    /// takes a whole frame whose length is known only afterwards, so reading into rx
    /// chains would mean popping enough of them for the longest frame (64 KiB, dozens of
    /// mergeable buffers) before every read, and giving most back. One copy of a frame
    /// that was just written into a cache-warm buffer costs little next to that.
    rx_frame: Box<[u8]>,
    rx_len: usize,
    /// rx chains taken from the queue for the held frame but not used yet (with
    /// mergeable buffers a frame takes several; the queue may run dry between them).
    rx_held: VecDeque<(u16, ChainBuffers)>,
    /// The guest had no room for the held frame: stop reading the tap until it adds rx
    /// buffers (back-pressure: the frames wait in the tap's queue).
    rx_waiting: bool,
    /// The tap took no more (EAGAIN): tx waits for EPOLLOUT.
    tx_waiting: bool,
    /// The tap failed (deleted under us, say): no more frames are read from it.
    tap_failed: bool,
    /// The tap is registered with the event loop (it no longer is once it reported an
    /// error or a hang-up).
    tap_watched: bool,
    /// What the event loop watches the tap for.
    tap_interest: EventSet,
    counters: NetCounters,
}

impl Net {
    /// A device on `config.tap`. It offers the guest checksum and TSO offloads if the tap
    /// takes them.
    pub fn new(config: NetConfig) -> Result<Net, NetError> {
        let NetConfig { tap, mac } = config;
        let eventfd = || EventFd::new(libc::EFD_NONBLOCK).map_err(NetError::EventFd);
        let queue_events = vec![eventfd()?, eventfd()?];
        let kick = eventfd()?;
        // Ask the tap for every guest offload at once and then for fewer: an old kernel
        // (or another tap driver) may take only checksums, or nothing.
        let mut guest_offloads = 0;
        for count in (1..=GUEST_OFFLOADS.len()).rev() {
            let wanted = &GUEST_OFFLOADS[..count];
            let flags = wanted.iter().fold(0, |f, &(_, tun)| f | tun);
            if tap.set_offload(flags).is_ok() {
                guest_offloads = wanted.iter().fold(0, |f, &(feature, _)| f | feature);
                break;
            }
        }
        // Until a driver accepts them, the tap hands out only plain frames.
        tap.set_offload(0)?;
        let mut space = [0u8; CONFIG_LEN];
        space[0..6].copy_from_slice(&mac);
        space[6..8].copy_from_slice(&STATUS_LINK_UP.to_le_bytes());
        Ok(Net {
            tap,
            mac,
            config: space,
            guest_offloads,
            queue_events,
            kick,
            active: None,
            rx_frame: vec![0u8; MAX_FRAME_LEN + 1].into_boxed_slice(),
            rx_len: 0,
            rx_held: VecDeque::new(),
            rx_waiting: false,
            tx_waiting: false,
            tap_failed: false,
            tap_watched: false,
            tap_interest: EventSet::empty(),
            counters: NetCounters::default(),
        })
    }

    pub fn counters(&self) -> NetCounters {
        self.counters
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The tap's name.
    pub fn tap_name(&self) -> &str {
        self.tap.name()
    }

    /// The tap offloads (`TUN_F_*`) for the features the driver accepted (of those
    /// offered). TSO needs checksum offload on the tap (it refuses TSO alone), as it
    /// does in virtio (GUEST_TSO4 requires GUEST_CSUM).
    fn tap_offloads(&self, acked: u64) -> u32 {
        let on = |feature| acked & self.guest_offloads & feature != 0;
        if !on(net_features::GUEST_CSUM) {
            return 0;
        }
        GUEST_OFFLOADS
            .iter()
            .filter(|&&(feature, _)| on(feature))
            .fold(0, |flags, &(_, tun)| flags | tun)
    }

    /// Writes the guest's frames to the tap until the tx queue runs dry or the tap takes
    /// no more.
    fn process_tx(&mut self) {
        let Self {
            tap,
            active,
            counters,
            tx_waiting,
            ..
        } = self;
        let Some(Active {
            mem, tx, interrupt, ..
        }) = active.as_mut()
        else {
            return;
        };
        if interrupt.needs_reset() || *tx_waiting {
            return;
        }
        serve_queue(tx, mem, interrupt, "virtio-net tx", |chain| {
            let buffers = match parse_tx(mem, chain) {
                Ok(buffers) => buffers,
                Err(e) => {
                    counters.tx_bad_chains += 1;
                    log::warn!("virtio-net: dropped a tx chain: {e}");
                    return Served::Used(0);
                }
            };
            match write_frame(tap, mem, &buffers) {
                Ok(()) => {
                    counters.tx_frames += 1;
                    counters.tx_bytes += (buffers.len() - VNET_HDR_LEN) as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    counters.tx_waits += 1;
                    *tx_waiting = true;
                    return Served::Later;
                }
                Err(e) => {
                    counters.tx_dropped += 1;
                    log::warn!("virtio-net: the tap {} refused a frame: {e}", tap.name());
                }
            }
            // The device writes nothing into a tx chain.
            Served::Used(0)
        });
    }

    /// Delivers frames from the tap to the guest until the tap has none or the guest
    /// has no room for the next one.
    fn process_rx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if active.interrupt.needs_reset() || self.tap_failed {
            return;
        }
        self.rx_waiting = false;
        let mut used = false;
        let ok = loop {
            if self.rx_len == 0 {
                match self.tap.read(&mut self.rx_frame) {
                    Ok(0) => {
                        // A tap never reads as empty; were it to, reading on would spin.
                        log::error!(
                            "virtio-net: the tap {} read as empty, no longer receiving",
                            self.tap.name()
                        );
                        self.tap_failed = true;
                        break true;
                    }
                    Ok(len) if !(VNET_HDR_LEN..=MAX_FRAME_LEN).contains(&len) => {
                        // The tap never hands out less than a header; more than the
                        // longest frame was cut short by the kernel to fit the buffer.
                        self.counters.rx_dropped += 1;
                        log::warn!(
                            "virtio-net: dropped a frame of {len} bytes (or more) from the tap {}",
                            self.tap.name()
                        );
                        continue;
                    }
                    Ok(len) => self.rx_len = len,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break true,
                    Err(e) => {
                        log::error!(
                            "virtio-net: cannot read the tap {}, no longer receiving: {e}",
                            self.tap.name()
                        );
                        self.tap_failed = true;
                        break true;
                    }
                }
            }
            match deliver(
                active,
                &mut self.rx_held,
                &mut self.rx_frame[..self.rx_len],
                &mut self.counters,
                &mut used,
            ) {
                Delivery::Done => {
                    self.counters.rx_frames += 1;
                    self.counters.rx_bytes += (self.rx_len - VNET_HDR_LEN) as u64;
                    self.rx_len = 0;
                }
                Delivery::TooBig => {
                    self.counters.rx_dropped += 1;
                    log::warn!(
                        "virtio-net: dropped a frame of {} bytes from the tap {}: the guest's rx buffers cannot hold it",
                        self.rx_len,
                        self.tap.name()
                    );
                    self.rx_len = 0;
                }
                Delivery::NoBuffers => {
                    self.counters.rx_waits += 1;
                    self.rx_waiting = true;
                    break true;
                }
                Delivery::Broken => break false,
            }
        };
        let Active {
            mem, rx, interrupt, ..
        } = active;
        if !ok {
            interrupt.set_needs_reset();
            return;
        }
        if !used {
            return;
        }
        match rx.needs_notification(&*mem) {
            Ok(true) => interrupt.signal_used_queue(),
            Ok(false) => {}
            Err(e) => {
                log::warn!("virtio-net rx: {e}");
                interrupt.set_needs_reset();
            }
        }
    }

    /// What the event loop should watch the tap for now.
    fn wanted_interest(&self) -> EventSet {
        let mut wanted = EventSet::empty();
        let Some(active) = &self.active else {
            return wanted;
        };
        if self.tap_failed || active.interrupt.needs_reset() {
            return wanted;
        }
        if !self.rx_waiting {
            wanted |= EventSet::IN;
        }
        if self.tx_waiting {
            wanted |= EventSet::OUT;
        }
        wanted
    }

    fn update_interest(&mut self, ops: &mut EventOps) {
        let wanted = self.wanted_interest();
        if wanted == self.tap_interest {
            return;
        }
        match ops.modify(Events::with_data(&self.tap, TOKEN_TAP, wanted)) {
            Ok(()) => self.tap_interest = wanted,
            Err(e) => log::error!(
                "virtio-net: cannot watch the tap {}: {e:?}",
                self.tap.name()
            ),
        }
    }
}

/// Writes one tx frame to the tap, straight from guest memory.
fn write_frame(tap: &Tap, mem: &GuestMemory, buffers: &ChainBuffers) -> io::Result<()> {
    let outside = || io::Error::new(io::ErrorKind::InvalidInput, "outside guest memory");
    let ranges = buffers.ranges(0, buffers.len()).ok_or_else(outside)?;
    let slices = GuestIoSlices::new(mem, &ranges).ok_or_else(outside)?;
    let iovecs = slices.iovecs();
    // SAFETY: every iovec points into guest memory that `slices` keeps mapped (checked
    // to lie inside it when the chain was parsed); the kernel only reads it.
    let written = unsafe { tap.writev(&iovecs) }?;
    if written != buffers.len() {
        // A tap takes a frame whole or not at all; this is not expected.
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("the tap took {written} of {} bytes", buffers.len()),
        ));
    }
    Ok(())
}

/// What became of the held frame.
enum Delivery {
    /// In the guest's buffers.
    Done,
    /// No rx buffers the guest could ever give would hold it (the first chain of a
    /// driver without mergeable buffers, or every chain of the queue, are too short).
    TooBig,
    /// The guest has not given enough buffers yet.
    NoBuffers,
    /// The ring is broken.
    Broken,
}

/// Takes rx chains from the queue (into `held`) until they hold `frame`, then writes it
/// there and returns them to the driver. Chains that cannot take a frame are returned
/// unused as they come, before the chains of the frame (so they never fall among the
/// `num_buffers` used entries of one frame).
fn deliver(
    active: &mut Active,
    held: &mut VecDeque<(u16, ChainBuffers)>,
    frame: &mut [u8],
    counters: &mut NetCounters,
    used: &mut bool,
) -> Delivery {
    let Active {
        mem, rx, mergeable, ..
    } = active;
    let mergeable = *mergeable;
    loop {
        let sizes = held.iter().map(|(_, b)| b.len());
        if rx_buffers_needed(sizes, frame.len(), mergeable).is_some() {
            break;
        }
        // Without mergeable buffers the frame must fit the first chain; with them, the
        // queue cannot hold more chains than its size.
        if (!mergeable && !held.is_empty()) || held.len() >= usize::from(rx.size()) {
            return Delivery::TooBig;
        }
        let chain = match rx.iter(&*mem) {
            Ok(mut iter) => iter.next(),
            Err(e) => {
                log::warn!("virtio-net rx: {e}");
                return Delivery::Broken;
            }
        };
        let Some(chain) = chain else {
            // Out of buffers: ask the driver to notify when it adds some (with
            // EVENT_IDX this moves `avail_event`), then look again in case it just did.
            match rx.enable_notification(&*mem) {
                Ok(true) => continue,
                Ok(false) => return Delivery::NoBuffers,
                Err(e) => {
                    log::warn!("virtio-net rx: {e}");
                    return Delivery::Broken;
                }
            }
        };
        let head = chain.head_index();
        match parse_rx(mem, chain) {
            Ok(buffers) => held.push_back((head, buffers)),
            Err(e) => {
                counters.rx_bad_chains += 1;
                log::warn!("virtio-net: returned an rx chain unused: {e}");
                if let Err(e) = rx.add_used(&*mem, head, 0) {
                    log::warn!("virtio-net rx: {e}");
                    return Delivery::Broken;
                }
                *used = true;
            }
        }
    }
    let buffers: Vec<&ChainBuffers> = held.iter().map(|(_, b)| b).collect();
    let lens = match write_rx(mem, &buffers, frame, mergeable) {
        Some(lens) => lens,
        None => {
            // Cannot happen with chains checked on parse; return them rather than
            // keep them forever.
            log::warn!("virtio-net: cannot write a frame into the guest's rx buffers");
            vec![0; held.len()]
        }
    };
    for len in lens {
        let Some((head, _)) = held.pop_front() else {
            break;
        };
        if let Err(e) = rx.add_used(&*mem, head, len) {
            log::warn!("virtio-net rx: {e}");
            return Delivery::Broken;
        }
        *used = true;
    }
    Delivery::Done
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        features::VERSION_1
            | features::RING_EVENT_IDX
            | features::RING_INDIRECT_DESC
            | net_features::MAC
            | net_features::STATUS
            | net_features::MRG_RXBUF
            // The tap takes partial checksums and GSO frames from its writer whatever
            // its offloads (those are about what it hands out).
            | net_features::CSUM
            | net_features::HOST_TSO4
            | net_features::HOST_TSO6
            | self.guest_offloads
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| self.config.get(at).copied())
                .unwrap_or(0);
        }
    }

    fn activate(&mut self, context: ActivateContext) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let mut queues = context.queues.into_iter();
        let (Some(mut rx), Some(mut tx), None) = (queues.next(), queues.next(), queues.next())
        else {
            return Err(ActivateError::Backend(
                "virtio-net needs exactly two queues".into(),
            ));
        };
        let acked = context.acked_features;
        let event_idx = acked & features::RING_EVENT_IDX != 0;
        rx.set_event_idx(event_idx);
        tx.set_event_idx(event_idx);
        self.tap
            .set_offload(self.tap_offloads(acked))
            .map_err(|e| ActivateError::Backend(e.to_string()))?;
        self.active = Some(Active {
            mem: context.mem,
            rx,
            tx,
            interrupt: context.interrupt,
            mergeable: acked & net_features::MRG_RXBUF != 0,
        });
        // Frames queued before DRIVER_OK, and the tap to watch: let the event loop look.
        if let Err(e) = self.kick.write(1) {
            log::warn!("virtio-net: cannot wake the event loop: {e}");
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        if self.rx_len != 0 {
            // Read under the offloads of the old driver: the next may not take it.
            self.counters.rx_dropped += 1;
            self.rx_len = 0;
        }
        self.rx_held.clear();
        self.rx_waiting = false;
        self.tx_waiting = false;
        if let Err(e) = self.tap.set_offload(0) {
            log::warn!("virtio-net: {e}");
        }
        // The event loop stops watching the tap the next time it runs for this device.
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }
}

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        for (fd, token, what) in [
            (&self.queue_events[0], TOKEN_RX, "rx queue"),
            (&self.queue_events[1], TOKEN_TX, "tx queue"),
            (&self.kick, TOKEN_KICK, "kick"),
        ] {
            if let Err(e) = ops.add(Events::with_data(fd, token, EventSet::IN)) {
                log::error!("virtio-net: cannot watch the {what}: {e:?}");
            }
        }
        // Registered with no interest: what to watch it for follows the device's state.
        match ops.add(Events::with_data(&self.tap, TOKEN_TAP, EventSet::empty())) {
            Ok(()) => self.tap_watched = true,
            Err(e) => log::error!(
                "virtio-net: cannot watch the tap {}: {e:?}",
                self.tap.name()
            ),
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        // A failed read only means nobody signalled since the last one.
        match events.data() {
            TOKEN_RX => {
                let _ = self.queue_events[0].read();
                self.process_rx();
            }
            TOKEN_TX => {
                let _ = self.queue_events[1].read();
                self.process_tx();
            }
            TOKEN_TAP => {
                let set = events.event_set();
                if set.intersects(EventSet::ERROR | EventSet::HANG_UP) {
                    // Reported whatever the interest: stop watching, or it never ends.
                    log::error!(
                        "virtio-net: the tap {} failed; no longer watching it",
                        self.tap.name()
                    );
                    self.tap_failed = true;
                    self.tap_watched = false;
                    if let Err(e) =
                        ops.remove(Events::with_data(&self.tap, TOKEN_TAP, self.tap_interest))
                    {
                        log::error!("virtio-net: {e:?}");
                    }
                    return;
                }
                if set.contains(EventSet::OUT) {
                    self.tx_waiting = false;
                    self.process_tx();
                }
                if set.contains(EventSet::IN) {
                    self.process_rx();
                }
            }
            _ => {
                let _ = self.kick.read();
                self.process_tx();
                self.process_rx();
            }
        }
        if self.tap_watched {
            self.update_interest(ops);
        }
    }
}
