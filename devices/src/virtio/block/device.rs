//! The block device: the request queue on one side, the [`Disk`] on the other.
//!
//! A device either holds its media from the start ([`Block::new`]) or is a spare slot
//! ([`Block::empty`]): virtio-mmio has no hotplug, so a VM that must take drives while it
//! runs is given empty drives at boot, and media go in and out of them later
//! ([`Block::insert_media`], [`Block::remove_media`]). An empty slot has capacity 0 and an
//! empty serial, and answers every request with an I/O error. A media change rewrites the
//! configuration space, bumps the configuration generation and raises the
//! configuration-change interrupt: Linux's virtio_blk then re-reads the capacity, and
//! reads the serial anew (GET_ID) each time `/sys/block/vdX/serial` is read.
//!
//! Requests complete synchronously while the device's lock is held, and a media change
//! takes the same lock: it always falls between two requests, never across one.

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
    /// the drive slot already holds a drive
    SlotInUse,
}

/// Requests served and failed, for tests and diagnostics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BlockCounters {
    pub requests: u64,
    pub errors: u64,
}

/// An opened backing file and the serial that goes with it: what a drive slot holds.
/// Opened apart from the device, so that a slow open never holds the device's lock.
pub struct BlockMedia {
    disk: Disk,
    serial: [u8; ID_LEN],
    id: Option<String>,
}

impl BlockMedia {
    /// Checks the serial, then opens and locks the backing file.
    pub fn open(config: BlockConfig) -> Result<BlockMedia, BlockError> {
        let mut serial = [0u8; ID_LEN];
        if let Some(id) = &config.serial {
            let bytes = id.as_bytes();
            let Some(dst) = serial.get_mut(..bytes.len()) else {
                return Err(BlockError::SerialTooLong(id.clone()));
            };
            dst.copy_from_slice(bytes);
        }
        let disk = Disk::open(&config.path, config.read_only)?;
        Ok(BlockMedia {
            disk,
            serial,
            id: config.serial,
        })
    }

    /// The serial (the VMM's drive id), if it has one.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// Size in sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.capacity()
    }

    pub fn read_only(&self) -> bool {
        self.disk.read_only()
    }
}

struct Active {
    mem: GuestMemory,
    queue: Queue,
    interrupt: Arc<Interrupt>,
}

pub struct Block {
    /// None: an empty slot.
    media: Option<BlockMedia>,
    /// Whether the device offers VIRTIO_BLK_F_RO. Fixed when the device is made, since
    /// the driver reads the features only once: media put in later cannot change it.
    offers_ro: bool,
    config: [u8; CONFIG_LEN],
    /// The `ConfigGeneration` register: bumped on every media change.
    generation: u32,
    queue_events: Vec<EventFd>,
    kick: EventFd,
    active: Option<Active>,
    counters: BlockCounters,
}

impl Block {
    /// A drive with its media from the start; it offers VIRTIO_BLK_F_RO when read-only.
    pub fn new(config: BlockConfig) -> Result<Block, BlockError> {
        let media = BlockMedia::open(config)?;
        let mut block = Block::empty()?;
        block.offers_ro = media.read_only();
        block.set_media(Some(media));
        block.generation = 0;
        Ok(block)
    }

    /// A spare drive slot: no media (capacity 0, every request fails with an I/O error)
    /// until [`Block::insert_media`]. It never offers VIRTIO_BLK_F_RO; read-only media
    /// put in it refuse writes and flushes with an I/O error instead.
    pub fn empty() -> Result<Block, BlockError> {
        let eventfd = || EventFd::new(libc::EFD_NONBLOCK).map_err(BlockError::EventFd);
        let queue_events = vec![eventfd()?];
        let kick = eventfd()?;
        // struct virtio_blk_config: capacity (le64) at 0, seg_max (le32) at 12, blk_size
        // (le32) at 20; the fields between (size_max, geometry) are not offered.
        let mut space = [0u8; CONFIG_LEN];
        space[12..16].copy_from_slice(&u32::from(QUEUE_MAX_SIZE - 2).to_le_bytes());
        space[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        Ok(Block {
            media: None,
            offers_ro: false,
            config: space,
            generation: 0,
            queue_events,
            kick,
            active: None,
            counters: BlockCounters::default(),
        })
    }

    /// Size in sectors (0 without media).
    pub fn capacity(&self) -> u64 {
        self.media.as_ref().map_or(0, BlockMedia::capacity)
    }

    pub fn has_media(&self) -> bool {
        self.media.is_some()
    }

    /// The id (serial) of the media in the device, if any and if it has one.
    pub fn media_id(&self) -> Option<&str> {
        self.media.as_ref().and_then(BlockMedia::id)
    }

    /// Puts media into an empty device and tells the driver (configuration change).
    pub fn insert_media(&mut self, media: BlockMedia) -> Result<(), BlockError> {
        if self.media.is_some() {
            return Err(BlockError::SlotInUse);
        }
        self.set_media(Some(media));
        self.config_changed();
        Ok(())
    }

    /// Takes the media out (the device reads as empty again) and tells the driver.
    /// Requests the driver sends from now on fail with an I/O error.
    pub fn remove_media(&mut self) -> Option<BlockMedia> {
        let media = self.media.take()?;
        self.set_media(None);
        self.config_changed();
        Some(media)
    }

    pub fn counters(&self) -> BlockCounters {
        self.counters
    }

    fn set_media(&mut self, media: Option<BlockMedia>) {
        let capacity = media.as_ref().map_or(0, BlockMedia::capacity);
        self.config[0..8].copy_from_slice(&capacity.to_le_bytes());
        self.media = media;
        self.generation = self.generation.wrapping_add(1);
    }

    /// Raises the configuration-change interrupt if a driver is there to hear it; one
    /// that starts later reads the new configuration anyway.
    fn config_changed(&self) {
        if let Some(active) = &self.active {
            active.interrupt.signal_config_change();
        }
    }

    fn process_queue(&mut self) {
        let Self {
            media,
            offers_ro,
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
        let media = media.as_ref();
        let (capacity, read_only) = media.map_or((0, true), |m| (m.capacity(), m.read_only()));
        serve_queue(queue, mem, interrupt, "virtio-blk", |chain| {
            counters.requests += 1;
            let (request, result) = match Request::parse(mem, chain, capacity, read_only) {
                Ok(request) => {
                    let result = match media {
                        Some(media) => execute(media, *offers_ro, mem, &request),
                        None => Err(RequestError::NoMedia),
                    }
                    .map(|()| request.used_len());
                    (Some(request.buffers.writable), result)
                }
                Err((e, buffers)) => {
                    // A request for an empty slot fails as such, whatever its shape, if
                    // there is a place for the status (an unsupported type included:
                    // the driver must not learn anything from a slot with nothing in it).
                    let e = if media.is_none() && buffers.is_some() {
                        RequestError::NoMedia
                    } else {
                        e
                    };
                    (buffers.map(|b| b.writable), Err(e))
                }
            };
            let (status, used) = match result {
                Ok(used) => (status::OK, used),
                Err(e) => {
                    counters.errors += 1;
                    // An empty slot failing requests is normal (a guest reading the
                    // serial of every disk, say): not worth a warning each time.
                    if matches!(e, RequestError::NoMedia) {
                        log::debug!("virtio-blk: request failed: {e}");
                    } else {
                        log::warn!("virtio-blk: request failed: {e}");
                    }
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
    media: &BlockMedia,
    offers_ro: bool,
    mem: &GuestMemory,
    request: &Request,
) -> Result<(), RequestError> {
    let disk = &media.disk;
    let ranges = request.data_ranges().ok_or(RequestError::NoStatus)?;
    match request.kind {
        RequestKind::In { sector, .. } => disk.read(mem, &ranges, sector)?,
        RequestKind::Out { sector, .. } => disk.write(mem, &ranges, sector)?,
        // Read-only media in a slot that told the driver it is writable: the driver may
        // think it wrote something, so a flush must not report it durable.
        RequestKind::Flush if disk.read_only() && !offers_ro => return Err(RequestError::ReadOnly),
        RequestKind::Flush => disk.flush()?,
        RequestKind::GetId { len } => {
            if !request
                .buffers
                .writable
                .write_at(mem, 0, &media.serial[..len])
            {
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
        let ro = if self.offers_ro { blk_features::RO } else { 0 };
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

    fn config_generation(&self) -> u32 {
        self.generation
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
