//! The block device: the request queue on one side, the [`Disk`] on the other.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::disk::Disk;
use super::request::{status, write_status, Request, RequestError, RequestKind};
use super::{features as blk_features, ID_LEN, QUEUE_MAX_SIZE, SECTOR_SIZE};
use crate::virtio::chain::{serve_queue, Served};
use crate::virtio::{
    device_type, features, ActivateContext, ActivateError, GuestMemory, Interrupt, VirtioDevice,
};

const QUEUE_SIZES: [u16; 1] = [QUEUE_MAX_SIZE];

/// Epoll tokens: the request queue's notifications, and the wake-up after activation.
const TOKEN_QUEUE: u32 = 0;
const TOKEN_KICK: u32 = 1;

/// Length of the configuration space this device fills (up to `blk_size`).
const CONFIG_LEN: usize = 24;

/// What a drive is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    /// The backing file (raw) or block device.
    pub path: PathBuf,
    /// The guest may not write; the file is opened read-only.
    pub read_only: bool,
    /// The serial GET_ID returns (`/sys/block/vdX/serial` in a Linux guest), at most
    /// [`ID_LEN`] bytes; none reads as empty.
    pub serial: Option<String>,
}

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum BlockError {
    /// cannot open the drive {path}: {source}
    Open { path: String, source: io::Error },
    /// the drive {0} is neither a regular file nor a block device
    NotAFile(String),
    /// the drive {path} is in use by another process (it holds a lock on it): {source}
    Locked { path: String, source: io::Error },
    /// the drive id (its serial) {0:?} is longer than 20 bytes
    SerialTooLong(String),
    /// cannot create the block device's event fds: {0}
    EventFd(io::Error),
}

/// Requests served and failed, for tests and diagnostics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BlockCounters {
    pub requests: u64,
    pub errors: u64,
}

struct Active {
    mem: GuestMemory,
    queue: Queue,
    interrupt: Arc<Interrupt>,
}

pub struct Block {
    disk: Disk,
    serial: [u8; ID_LEN],
    config: [u8; CONFIG_LEN],
    queue_events: Vec<EventFd>,
    kick: EventFd,
    active: Option<Active>,
    counters: BlockCounters,
}

impl Block {
    pub fn new(config: BlockConfig) -> Result<Block, BlockError> {
        let mut serial = [0u8; ID_LEN];
        if let Some(id) = &config.serial {
            let bytes = id.as_bytes();
            let Some(dst) = serial.get_mut(..bytes.len()) else {
                return Err(BlockError::SerialTooLong(id.clone()));
            };
            dst.copy_from_slice(bytes);
        }
        let eventfd = || EventFd::new(libc::EFD_NONBLOCK).map_err(BlockError::EventFd);
        let queue_events = vec![eventfd()?];
        let kick = eventfd()?;
        let disk = Disk::open(&config.path, config.read_only)?;

        // struct virtio_blk_config: capacity (le64) at 0, seg_max (le32) at 12, blk_size
        // (le32) at 20; the fields between (size_max, geometry) are not offered.
        let mut space = [0u8; CONFIG_LEN];
        space[0..8].copy_from_slice(&disk.capacity().to_le_bytes());
        space[12..16].copy_from_slice(&u32::from(QUEUE_MAX_SIZE - 2).to_le_bytes());
        space[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        Ok(Block {
            disk,
            serial,
            config: space,
            queue_events,
            kick,
            active: None,
            counters: BlockCounters::default(),
        })
    }

    /// Size in sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.capacity()
    }

    pub fn counters(&self) -> BlockCounters {
        self.counters
    }

    fn process_queue(&mut self) {
        let Self {
            disk,
            serial,
            active,
            counters,
            ..
        } = self;
        let Some(Active {
            mem,
            queue,
            interrupt,
        }) = active.as_mut()
        else {
            return;
        };
        if interrupt.needs_reset() {
            return;
        }
        serve_queue(queue, mem, interrupt, "virtio-blk", |chain| {
            counters.requests += 1;
            let (request, result) =
                match Request::parse(mem, chain, disk.capacity(), disk.read_only()) {
                    Ok(request) => {
                        let result =
                            execute(disk, serial, mem, &request).map(|()| request.used_len());
                        (Some(request.buffers.writable), result)
                    }
                    Err((e, buffers)) => (buffers.map(|b| b.writable), Err(e)),
                };
            let (status, used) = match result {
                Ok(used) => (status::OK, used),
                Err(e) => {
                    counters.errors += 1;
                    log::warn!("virtio-blk: request failed: {e}");
                    (e.status(), 1)
                }
            };
            match request {
                Some(writable) if write_status(mem, &writable, status) => Served::Used(used),
                // No place for the status: the driver sees a used length of 0.
                _ => Served::Used(0),
            }
        });
    }
}

/// Serves a checked request.
fn execute(
    disk: &Disk,
    serial: &[u8; ID_LEN],
    mem: &GuestMemory,
    request: &Request,
) -> Result<(), RequestError> {
    let ranges = request.data_ranges().ok_or(RequestError::NoStatus)?;
    match request.kind {
        RequestKind::In { sector, .. } => disk.read(mem, &ranges, sector)?,
        RequestKind::Out { sector, .. } => disk.write(mem, &ranges, sector)?,
        RequestKind::Flush => disk.flush()?,
        RequestKind::GetId { len } => {
            if !request.buffers.writable.write_at(mem, 0, &serial[..len]) {
                return Err(RequestError::NoStatus);
            }
        }
    }
    Ok(())
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        let ro = if self.disk.read_only() {
            blk_features::RO
        } else {
            0
        };
        features::VERSION_1
            | features::RING_EVENT_IDX
            | features::RING_INDIRECT_DESC
            | blk_features::SEG_MAX
            | blk_features::BLK_SIZE
            | blk_features::FLUSH
            | ro
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
        let (Some(mut queue), None) = (queues.next(), queues.next()) else {
            return Err(ActivateError::Backend(
                "virtio-blk needs exactly one queue".into(),
            ));
        };
        queue.set_event_idx(context.acked_features & features::RING_EVENT_IDX != 0);
        self.active = Some(Active {
            mem: context.mem,
            queue,
            interrupt: context.interrupt,
        });
        // Requests queued before DRIVER_OK: let the event loop look once.
        if let Err(e) = self.kick.write(1) {
            log::warn!("virtio-blk: cannot wake the event loop: {e}");
        }
        Ok(())
    }

    fn reset(&mut self) {
        // Requests complete synchronously, so none is in flight here.
        self.active = None;
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }
}

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        for (fd, token, what) in [
            (&self.queue_events[0], TOKEN_QUEUE, "queue"),
            (&self.kick, TOKEN_KICK, "kick"),
        ] {
            if let Err(e) = ops.add(Events::with_data(fd, token, EventSet::IN)) {
                log::error!("virtio-blk: cannot watch the {what}: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = match events.data() {
            TOKEN_QUEUE => &self.queue_events[0],
            _ => &self.kick,
        };
        // A failed read only means nobody signalled since the last one.
        let _ = fd.read();
        self.process_queue();
    }
}
