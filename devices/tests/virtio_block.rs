//! Layer-2 tests of virtio-blk: a host-side driver plays the guest on real guest memory,
//! and a real file under the temporary directory is the disk.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use husk_devices::virtio::block::request::{req_type, status, HEADER_LEN};
use husk_devices::virtio::block::{
    features as blk, Block, BlockConfig, BlockError, BlockMedia, ID_LEN, QUEUE_MAX_SIZE,
    SECTOR_SIZE,
};
use husk_devices::virtio::interrupt::INT_CONFIG_CHANGE;
use husk_devices::virtio::testing::{
    guest_memory, Desc, TestDriver, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};
use husk_devices::virtio::{device_type, features, GuestMemory, VirtioDevice};
use husk_devices::BusDevice;
use vm_memory::{Bytes, GuestAddress};

const Q: u16 = 0;
/// The transport's `ConfigGeneration` register.
const CONFIG_GENERATION: u64 = 0x0fc;
const MEM_SIZE: usize = 16 << 20;
/// Sectors of the default test disk.
const SECTORS: u64 = 64;
const SECTOR: usize = SECTOR_SIZE as usize;
/// What a status buffer holds before the device writes it.
const UNTOUCHED: u8 = 0xee;
/// The features a Linux guest acknowledges (all that a writable drive offers).
const DRIVER_FEATURES: u64 = features::VERSION_1
    | features::RING_EVENT_IDX
    | features::RING_INDIRECT_DESC
    | blk::SEG_MAX
    | blk::BLK_SIZE
    | blk::FLUSH;

/// A file under the temporary directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn path(tag: &str) -> PathBuf {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        std::env::temp_dir().join(format!(
            "husk-blk-{}-{}-{tag}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ))
    }

    fn with_contents(contents: &[u8]) -> Self {
        let path = Self::path("disk");
        std::fs::write(&path, contents).expect("creating a backing file");
        Self(path)
    }

    /// A disk of `len` bytes of a recognisable pattern.
    fn disk(len: usize) -> Self {
        Self::with_contents(&pattern(1, len))
    }

    fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.0).expect("reading a backing file")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn pattern(seed: u32, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed * 97) as u8
                ^ (i >> 9) as u8
        })
        .collect()
}

fn config(path: &Path, read_only: bool, serial: Option<&str>) -> BlockConfig {
    BlockConfig {
        path: path.to_path_buf(),
        read_only,
        serial: serial.map(str::to_owned),
    }
}

/// The guest side of one drive.
struct Drive {
    drv: TestDriver,
    dev: Arc<Mutex<Block>>,
    file: TempFile,
}

impl Drive {
    /// A started, writable drive of [`SECTORS`] sectors.
    fn new() -> Self {
        let mut drive = Self::unstarted(TempFile::disk(SECTORS as usize * SECTOR), false, None);
        drive.start();
        drive
    }

    fn unstarted(file: TempFile, read_only: bool, serial: Option<&str>) -> Self {
        Self::on_memory(file, read_only, serial, guest_memory(MEM_SIZE))
    }

    fn on_memory(file: TempFile, read_only: bool, serial: Option<&str>, mem: GuestMemory) -> Self {
        let dev = Arc::new(Mutex::new(
            Block::new(config(&file.0, read_only, serial)).expect("creating the block device"),
        ));
        let drv = TestDriver::new(dev.clone(), mem);
        Self { drv, dev, file }
    }

    /// A spare slot with no media, not started; `file` is what the test will put in it.
    fn spare(file: TempFile) -> Self {
        let dev = Arc::new(Mutex::new(Block::empty().expect("creating a spare slot")));
        let drv = TestDriver::new(dev.clone(), guest_memory(MEM_SIZE));
        Self { drv, dev, file }
    }

    /// Puts the drive's file into the slot, as the VMM's drive handle does.
    fn insert(&mut self, read_only: bool, serial: &str) -> Result<(), BlockError> {
        let media = BlockMedia::open(config(&self.file.0, read_only, Some(serial)))?;
        self.dev.lock().unwrap().insert_media(media)
    }

    /// The `ConfigGeneration` register.
    fn generation(&mut self) -> u32 {
        self.drv.read_reg(CONFIG_GENERATION)
    }

    /// The capacity in the configuration space, read the way Linux reads a 64-bit
    /// field: until the generation is the same before and after.
    fn config_capacity(&mut self) -> u64 {
        loop {
            let before = self.generation();
            let mut cap = [0u8; 8];
            self.drv.read_config(0, &mut cap[..4]);
            self.drv.read_config(4, &mut cap[4..]);
            if self.generation() == before {
                return u64::from_le_bytes(cap);
            }
        }
    }

    fn start(&mut self) {
        let ro = self.drv.device_features() & blk::RO;
        self.drv.start(DRIVER_FEATURES | ro, QUEUE_MAX_SIZE);
    }

    fn restart(&mut self) {
        self.drv.reset();
        self.start();
    }

    fn header(&mut self, type_: u32, sector: u64) -> u64 {
        let mut raw = [0u8; HEADER_LEN];
        raw[0..4].copy_from_slice(&type_.to_le_bytes());
        raw[8..16].copy_from_slice(&sector.to_le_bytes());
        self.drv.alloc_bytes(&raw)
    }

    /// A one-byte status buffer.
    fn status_buf(&mut self) -> u64 {
        self.drv.alloc_bytes(&[UNTOUCHED])
    }

    /// A buffer of `len` bytes of `fill`.
    fn buf(&mut self, len: usize, fill: u8) -> u64 {
        self.drv.alloc_bytes(&vec![fill; len])
    }

    fn byte(&self, addr: u64) -> u8 {
        self.drv.read_bytes(addr, 1)[0]
    }

    /// Runs the device and returns the used length of the chain at `head`, if used.
    fn complete(&mut self, head: u16) -> Option<u32> {
        self.drv.notify(Q);
        self.drv.run_events();
        let used = self.drv.used(Q);
        assert_eq!(self.drv.used(Q), None, "more than one chain used");
        used.map(|(id, len)| {
            assert_eq!(id, u32::from(head));
            len
        })
    }

    /// Publishes `descs` as one chain and runs the device: the used length.
    fn submit(&mut self, descs: &[Desc]) -> Option<u32> {
        let head = self.drv.add_chain(Q, descs);
        self.complete(head)
    }

    /// Reads `len` bytes at `sector`: (status, data).
    fn read(&mut self, sector: u64, len: usize) -> (u8, Vec<u8>) {
        let hdr = self.header(req_type::IN, sector);
        let data = self.buf(len, 0xaa);
        let st = self.status_buf();
        let used = self.submit(&[
            Desc::readable(hdr, HEADER_LEN as u32),
            Desc::writable(data, len as u32),
            Desc::writable(st, 1),
        ]);
        let status = self.byte(st);
        let expected = if status == status::OK {
            len as u32 + 1
        } else {
            1
        };
        assert_eq!(used, Some(expected), "read of {len} at {sector}");
        (status, self.drv.read_bytes(data, len))
    }

    /// Writes `data` at `sector`: the status.
    fn write(&mut self, sector: u64, data: &[u8]) -> u8 {
        let hdr = self.header(req_type::OUT, sector);
        let buf = self.drv.alloc_bytes(data);
        let st = self.status_buf();
        let used = self.submit(&[
            Desc::readable(hdr, HEADER_LEN as u32),
            Desc::readable(buf, data.len() as u32),
            Desc::writable(st, 1),
        ]);
        assert_eq!(used, Some(1), "write of {} at {sector}", data.len());
        self.byte(st)
    }

    fn flush(&mut self) -> u8 {
        let hdr = self.header(req_type::FLUSH, 0);
        let st = self.status_buf();
        let used = self.submit(&[
            Desc::readable(hdr, HEADER_LEN as u32),
            Desc::writable(st, 1),
        ]);
        assert_eq!(used, Some(1));
        self.byte(st)
    }

    /// GET_ID into a buffer of `len` bytes (preset to 0xaa): (status, used, buffer).
    fn get_id(&mut self, len: usize) -> (u8, Option<u32>, Vec<u8>) {
        let hdr = self.header(req_type::GET_ID, 0);
        let buf = self.buf(len, 0xaa);
        let st = self.status_buf();
        let used = self.submit(&[
            Desc::readable(hdr, HEADER_LEN as u32),
            Desc::writable(buf, len as u32),
            Desc::writable(st, 1),
        ]);
        (self.byte(st), used, self.drv.read_bytes(buf, len))
    }

    /// The file's bytes of `sectors` sectors at `sector`.
    fn file_sectors(&self, sector: u64, sectors: usize) -> Vec<u8> {
        let start = sector as usize * SECTOR;
        self.file.contents()[start..start + sectors * SECTOR].to_vec()
    }

    /// The drive serves good requests: reads match the file, writes reach it.
    fn assert_works(&mut self) {
        assert!(!self.drv.needs_reset());
        let (st, data) = self.read(0, 2 * SECTOR);
        assert_eq!(st, status::OK);
        assert_eq!(data, self.file_sectors(0, 2));
        if self.drv.device_features() & blk::RO == 0 {
            let new = pattern(0x77, SECTOR);
            assert_eq!(self.write(SECTORS - 1, &new), status::OK);
            assert_eq!(self.file_sectors(SECTORS - 1, 1), new);
            let (st, back) = self.read(SECTORS - 1, SECTOR);
            assert_eq!((st, back), (status::OK, new));
        }
        assert!(!self.drv.needs_reset());
    }

    /// Writes one raw descriptor into `slot`.
    fn raw_desc(&mut self, slot: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.drv.write_desc(Q, slot, addr, len, flags, next);
    }

    /// Writes an indirect table of `entries` (addr, len, flags, next): its address.
    fn table(&mut self, entries: &[(u64, u32, u16, u16)]) -> u64 {
        let mut raw = Vec::with_capacity(16 * entries.len());
        for &(addr, len, flags, next) in entries {
            raw.extend_from_slice(&addr.to_le_bytes());
            raw.extend_from_slice(&len.to_le_bytes());
            raw.extend_from_slice(&flags.to_le_bytes());
            raw.extend_from_slice(&next.to_le_bytes());
        }
        self.drv.alloc_bytes(&raw)
    }

    /// Publishes one descriptor in `slot` pointing to an indirect table and runs the
    /// device: the used length.
    fn submit_indirect(&mut self, slot: u16, table: u64, table_len: u32) -> Option<u32> {
        self.raw_desc(slot, table, table_len, VIRTQ_DESC_F_INDIRECT, 0);
        self.drv.publish_avail(Q, slot);
        self.complete(slot)
    }

    fn counters(&self) -> (u64, u64) {
        let c = self.dev.lock().unwrap().counters();
        (c.requests, c.errors)
    }
}

/// Indirect-table entries for a chain of `descs`, linked in order.
fn linked(descs: &[Desc]) -> Vec<(u64, u32, u16, u16)> {
    descs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mut flags = if d.writable { VIRTQ_DESC_F_WRITE } else { 0 };
            if i + 1 < descs.len() {
                flags |= VIRTQ_DESC_F_NEXT;
            }
            (d.addr, d.len, flags, i as u16 + 1)
        })
        .collect()
}

#[test]
fn identity_config_and_features() {
    let mut d = Drive::unstarted(TempFile::disk(SECTORS as usize * SECTOR), false, None);
    assert_eq!(d.dev.lock().unwrap().device_type(), device_type::BLOCK);
    assert_eq!(d.dev.lock().unwrap().capacity(), SECTORS);
    assert_eq!(d.drv.queue_num_max(Q), u32::from(QUEUE_MAX_SIZE));
    assert_eq!(d.drv.queue_num_max(1), 0);
    assert_eq!(d.drv.device_features(), DRIVER_FEATURES);

    let mut cfg = [0u8; 24];
    d.drv.read_config(0, &mut cfg);
    assert_eq!(u64::from_le_bytes(cfg[0..8].try_into().unwrap()), SECTORS);
    assert_eq!(u32::from_le_bytes(cfg[12..16].try_into().unwrap()), 254);
    assert_eq!(u32::from_le_bytes(cfg[20..24].try_into().unwrap()), 512);
    assert_eq!(cfg[8..12], [0; 4], "size_max is not offered");
    assert_eq!(cfg[16..20], [0; 4], "geometry is not offered");
    // Field-sized reads, as Linux does them, and reads past the end.
    let mut seg_max = [0u8; 4];
    d.drv.read_config(12, &mut seg_max);
    assert_eq!(u32::from_le_bytes(seg_max), u32::from(QUEUE_MAX_SIZE) - 2);
    let mut tail = [0xffu8; 8];
    d.drv.read_config(20, &mut tail);
    assert_eq!(tail, [0, 2, 0, 0, 0, 0, 0, 0]);
    d.drv.read_config(0x1000, &mut tail);
    assert_eq!(tail, [0; 8]);
    // The configuration is read-only.
    d.drv.transport.write(0x100, &[9, 9, 9, 9]);
    d.drv.read_config(0, &mut cfg[..8]);
    assert_eq!(u64::from_le_bytes(cfg[0..8].try_into().unwrap()), SECTORS);

    // RO is offered only for a read-only drive, and a writable one refuses it.
    assert!(!d.drv.negotiate(DRIVER_FEATURES | blk::RO));
    let mut ro = Drive::unstarted(TempFile::disk(4 * SECTOR), true, None);
    assert_eq!(ro.drv.device_features(), DRIVER_FEATURES | blk::RO);
    assert!(ro.drv.negotiate(DRIVER_FEATURES | blk::RO));
    // A driver may take any subset (with VERSION_1).
    assert!(d.drv.negotiate(features::VERSION_1));
    assert!(!d.drv.negotiate(blk::FLUSH));
}

#[test]
fn a_partial_last_sector_is_not_visible() {
    let len = 4 * SECTOR + 100;
    let mut d = Drive::unstarted(TempFile::disk(len), false, None);
    d.start();
    assert_eq!(d.dev.lock().unwrap().capacity(), 4);
    let mut cap = [0u8; 8];
    d.drv.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 4);
    let original = d.file.contents();
    let (st, data) = d.read(3, SECTOR);
    assert_eq!(
        (st, data.as_slice()),
        (status::OK, &original[3 * SECTOR..4 * SECTOR])
    );
    assert_eq!(d.read(4, SECTOR).0, status::IOERR);
    assert_eq!(d.read(3, 2 * SECTOR).0, status::IOERR);
    assert_eq!(d.write(3, &[7; SECTOR]), status::OK);
    assert_eq!(d.write(4, &[7; SECTOR]), status::IOERR);
    let now = d.file.contents();
    assert_eq!(now.len(), len);
    assert_eq!(now[3 * SECTOR..4 * SECTOR], [7; SECTOR]);
    assert_eq!(
        now[4 * SECTOR..],
        original[4 * SECTOR..],
        "the tail changed"
    );

    // An empty file is a disk of no sectors: no data, but FLUSH and GET_ID work.
    let mut empty = Drive::unstarted(TempFile::with_contents(&[]), false, None);
    empty.start();
    assert_eq!(empty.dev.lock().unwrap().capacity(), 0);
    assert_eq!(empty.read(0, SECTOR).0, status::IOERR);
    assert_eq!(empty.read(0, 0).0, status::OK);
    assert_eq!(empty.flush(), status::OK);
    assert_eq!(empty.get_id(ID_LEN).0, status::OK);
}

#[test]
fn read_write_and_flush() {
    let mut d = Drive::new();
    let original = d.file.contents();
    let (st, data) = d.read(0, SECTOR);
    assert_eq!((st, data.as_slice()), (status::OK, &original[..SECTOR]));
    let (st, data) = d.read(10, 8 * SECTOR);
    assert_eq!(
        (st, data.as_slice()),
        (status::OK, &original[10 * SECTOR..18 * SECTOR])
    );

    let new = pattern(5, 3 * SECTOR);
    assert_eq!(d.write(20, &new), status::OK);
    let now = d.file.contents();
    assert_eq!(now[20 * SECTOR..23 * SECTOR], new[..]);
    assert_eq!(now[..20 * SECTOR], original[..20 * SECTOR]);
    assert_eq!(now[23 * SECTOR..], original[23 * SECTOR..]);
    assert_eq!(d.read(20, 3 * SECTOR), (status::OK, new));
    assert_eq!(d.flush(), status::OK);
    // The whole disk at once, and nothing at all.
    assert_eq!(d.read(0, SECTORS as usize * SECTOR), (status::OK, now));
    assert_eq!(d.read(SECTORS, 0), (status::OK, vec![]));
    assert_eq!(d.write(5, &[]), status::OK);
    assert_eq!(d.counters(), (8, 0));
    // With EVENT_IDX an interrupt comes when the used index passes used_event.
    d.drv.take_interrupts();
    d.drv.set_used_event(Q, 8);
    assert_eq!(d.flush(), status::OK);
    assert_eq!(d.drv.take_interrupts(), 1);
    d.drv.set_used_event(Q, 100);
    assert_eq!(d.flush(), status::OK);
    assert_eq!(d.drv.take_interrupts(), 0);
}

#[test]
fn works_without_event_idx_or_indirect() {
    let mut d = Drive::unstarted(TempFile::disk(SECTORS as usize * SECTOR), false, None);
    d.drv.start(features::VERSION_1, 16);
    d.drv.take_interrupts();
    for i in 0..40u64 {
        // More requests than the queue has entries: the ring wraps.
        assert_eq!(d.write(i % SECTORS, &pattern(i as u32, SECTOR)), status::OK);
        assert_eq!(d.drv.take_interrupts(), 1);
    }
    d.assert_works();
}

#[test]
fn get_id_returns_the_serial_padded_or_cut() {
    let mut d = Drive::unstarted(TempFile::disk(SECTOR), false, Some("husk-disk-0"));
    d.start();
    let mut padded = b"husk-disk-0".to_vec();
    padded.resize(ID_LEN, 0);
    let (st, used, id) = d.get_id(ID_LEN);
    assert_eq!(
        (st, used, id),
        (status::OK, Some(ID_LEN as u32 + 1), padded.clone())
    );
    // A shorter buffer gets a prefix.
    let (st, used, id) = d.get_id(5);
    assert_eq!((st, used, id), (status::OK, Some(6), b"husk-".to_vec()));
    // A longer one gets the 20 bytes and the rest is left alone.
    let (st, used, id) = d.get_id(40);
    assert_eq!((st, used), (status::OK, Some(ID_LEN as u32 + 1)));
    assert_eq!(id[..ID_LEN], padded[..]);
    assert_eq!(id[ID_LEN..], [0xaa; 20]);
    // No buffer at all: nothing but the status.
    let hdr = d.header(req_type::GET_ID, 0);
    let st = d.status_buf();
    let used = d.submit(&[Desc::readable(hdr, 16), Desc::writable(st, 1)]);
    assert_eq!((used, d.byte(st)), (Some(1), status::OK));
    // Split over two buffers.
    let hdr = d.header(req_type::GET_ID, 0);
    let (a, b) = (d.buf(7, 0), d.buf(13, 0));
    let st = d.status_buf();
    let used = d.submit(&[
        Desc::readable(hdr, 16),
        Desc::writable(a, 7),
        Desc::writable(b, 13),
        Desc::writable(st, 1),
    ]);
    assert_eq!((used, d.byte(st)), (Some(21), status::OK));
    assert_eq!(d.drv.read_bytes(a, 7), padded[..7]);
    assert_eq!(d.drv.read_bytes(b, 13), padded[7..]);

    // A serial of exactly 20 bytes has no NUL; none at all reads as zeros.
    let full = "ABCDEFGHIJKLMNOPQRST";
    let mut d = Drive::unstarted(TempFile::disk(SECTOR), true, Some(full));
    d.start();
    assert_eq!(d.get_id(ID_LEN).2, full.as_bytes());
    let mut d = Drive::unstarted(TempFile::disk(SECTOR), false, None);
    d.start();
    assert_eq!(d.get_id(ID_LEN).2, vec![0; ID_LEN]);
}

#[test]
fn data_spread_over_many_buffers() {
    let mut d = Drive::new();
    let original = d.file.contents();

    // A read into buffers whose sizes are not whole sectors.
    let hdr = d.header(req_type::IN, 2);
    let sizes = [100usize, 412, 1, 1023, 512];
    let bufs: Vec<u64> = sizes.iter().map(|&n| d.buf(n, 0)).collect();
    let last = d.buf(1, UNTOUCHED);
    let mut descs = vec![Desc::readable(hdr, 16)];
    descs.extend(
        bufs.iter()
            .zip(sizes)
            .map(|(&a, n)| Desc::writable(a, n as u32)),
    );
    descs.push(Desc::writable(last, 1));
    assert_eq!(d.submit(&descs), Some(2049));
    assert_eq!(d.byte(last), status::OK);
    let mut got = Vec::new();
    for (&a, n) in bufs.iter().zip(sizes) {
        got.extend(d.drv.read_bytes(a, n));
    }
    assert_eq!(got, original[2 * SECTOR..6 * SECTOR]);

    // Data and status in one buffer.
    let hdr = d.header(req_type::IN, 1);
    let buf = d.buf(SECTOR + 1, UNTOUCHED);
    assert_eq!(
        d.submit(&[
            Desc::readable(hdr, 16),
            Desc::writable(buf, SECTOR as u32 + 1)
        ]),
        Some(SECTOR as u32 + 1)
    );
    let got = d.drv.read_bytes(buf, SECTOR + 1);
    assert_eq!(got[..SECTOR], original[SECTOR..2 * SECTOR]);
    assert_eq!(got[SECTOR], status::OK);

    // A write with the header and the data in one buffer, the rest in two more; the
    // header itself split over two buffers.
    let new = pattern(9, 3 * SECTOR);
    let mut first = [0u8; 16];
    first[0..4].copy_from_slice(&req_type::OUT.to_le_bytes());
    first[8..16].copy_from_slice(&30u64.to_le_bytes());
    let h1 = d.drv.alloc_bytes(&first[..5]);
    let mut rest = first[5..].to_vec();
    rest.extend_from_slice(&new[..700]);
    let h2 = d.drv.alloc_bytes(&rest);
    let b = d.drv.alloc_bytes(&new[700..1400]);
    let c = d.drv.alloc_bytes(&new[1400..]);
    let st = d.status_buf();
    let used = d.submit(&[
        Desc::readable(h1, 5),
        Desc::readable(h2, rest.len() as u32),
        Desc::readable(b, 700),
        Desc::readable(c, (new.len() - 1400) as u32),
        Desc::writable(st, 1),
    ]);
    assert_eq!((used, d.byte(st)), (Some(1), status::OK));
    assert_eq!(d.file_sectors(30, 3), new);

    // Zero-length descriptors anywhere are ignored.
    let hdr = d.header(req_type::IN, 30);
    let buf = d.buf(SECTOR, 0);
    let st = d.status_buf();
    let used = d.submit(&[
        Desc::readable(hdr, 0),
        Desc::readable(hdr, 16),
        Desc::readable(buf, 0),
        Desc::writable(buf, SECTOR as u32),
        Desc::writable(0, 0),
        Desc::writable(st, 1),
        Desc::writable(1 << 50, 0),
    ]);
    assert_eq!((used, d.byte(st)), (Some(513), status::OK));
    assert_eq!(d.drv.read_bytes(buf, SECTOR), new[..SECTOR]);
}

#[test]
fn seg_max_segments_work_and_longer_chains_are_refused() {
    let mut d = Drive::new();
    let original = d.file.contents();
    // The whole disk in seg_max (254) buffers: header, data and status fill the queue.
    let total = SECTORS as usize * SECTOR;
    let mut sizes = vec![total / 254; 254];
    sizes[253] += total - sizes.iter().sum::<usize>();
    let hdr = d.header(req_type::IN, 0);
    let data = d.buf(total, 0);
    let st = d.status_buf();
    let mut descs = vec![Desc::readable(hdr, 16)];
    let mut at = 0;
    for &n in &sizes {
        descs.push(Desc::writable(data + at as u64, n as u32));
        at += n;
    }
    descs.push(Desc::writable(st, 1));
    assert_eq!(descs.len(), 256);
    assert_eq!(d.submit(&descs), Some(total as u32 + 1));
    assert_eq!(d.byte(st), status::OK);
    assert_eq!(d.drv.read_bytes(data, total), original);

    // 255 segments (257 descriptors, through an indirect table), though a fine read of
    // the whole disk otherwise: refused unanswered.
    let mut sizes = vec![128usize; 255];
    sizes[254] = 256;
    assert_eq!(sizes.iter().sum::<usize>(), total);
    let data = d.buf(sizes.iter().sum(), 0x55);
    let mut descs = vec![Desc::readable(hdr, 16)];
    let mut at = 0;
    for &n in &sizes {
        descs.push(Desc::writable(data + at, n as u32));
        at += n as u64;
    }
    let st = d.status_buf();
    descs.push(Desc::writable(st, 1));
    let table = d.table(&linked(&descs));
    assert_eq!(
        d.submit_indirect(0, table, 16 * descs.len() as u32),
        Some(0)
    );
    assert_eq!(d.byte(st), UNTOUCHED);
    assert_eq!(d.drv.read_bytes(data, 16), [0x55; 16]);
    d.assert_works();
}

#[test]
fn indirect_descriptors() {
    let mut d = Drive::new();
    let original = d.file.contents();
    let hdr = d.header(req_type::IN, 4);
    let (a, b) = (d.buf(SECTOR, 0), d.buf(SECTOR, 0));
    let st = d.status_buf();
    let descs = [
        Desc::readable(hdr, 16),
        Desc::writable(a, SECTOR as u32),
        Desc::writable(b, SECTOR as u32),
        Desc::writable(st, 1),
    ];
    let table = d.table(&linked(&descs));
    assert_eq!(d.submit_indirect(3, table, 64), Some(1025));
    assert_eq!(d.byte(st), status::OK);
    assert_eq!(
        d.drv.read_bytes(a, SECTOR),
        original[4 * SECTOR..5 * SECTOR]
    );
    assert_eq!(
        d.drv.read_bytes(b, SECTOR),
        original[5 * SECTOR..6 * SECTOR]
    );

    // A write through a table whose entries are linked out of order.
    let new = pattern(3, SECTOR);
    let hdr = d.header(req_type::OUT, 9);
    let data = d.drv.alloc_bytes(&new);
    let st = d.status_buf();
    let table = d.table(&[
        (st, 1, VIRTQ_DESC_F_WRITE, 0),
        (hdr, 16, VIRTQ_DESC_F_NEXT, 2),
        (data, SECTOR as u32, VIRTQ_DESC_F_NEXT, 0),
    ]);
    // The chain starts at entry 0 of the table: just the status, so no header.
    assert_eq!(d.submit_indirect(0, table, 48), Some(1));
    assert_eq!(d.byte(st), status::IOERR);
    assert_eq!(d.file_sectors(9, 1), original[9 * SECTOR..10 * SECTOR]);

    // Bad tables: a length that is not a multiple of 16, an empty one, one outside
    // memory, one that wraps, an indirect descriptor inside a table, a table whose chain
    // runs past its end.
    let st = d.status_buf();
    let good = linked(&[Desc::readable(hdr, 16), Desc::writable(st, 1)]);
    let t = d.table(&good);
    let mem_end = MEM_SIZE as u64;
    let nested_inner = d.table(&good);
    let nested = d.table(&[(nested_inner, 32, VIRTQ_DESC_F_INDIRECT, 0)]);
    let past_end = d.table(&[
        (hdr, 16, VIRTQ_DESC_F_NEXT, 1),
        (st, 1, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2),
    ]);
    for (table, len) in [
        (t, 31),
        (t, 0),
        (mem_end - 8, 32),
        (u64::MAX - 15, 32),
        (1 << 40, 32),
        (nested, 16),
        (past_end, 32),
    ] {
        assert_eq!(
            d.submit_indirect(1, table, len),
            Some(0),
            "table at {table:#x}+{len}"
        );
        assert_eq!(d.byte(st), UNTOUCHED, "table at {table:#x}+{len}");
        d.assert_works();
    }
    // The same table, well formed, works (the header is the OUT one: status OK).
    assert_eq!(d.submit_indirect(1, t, 32), Some(1));
    assert_eq!(d.byte(st), status::OK);
}

#[test]
fn a_read_only_drive_refuses_writes() {
    let mut d = Drive::unstarted(TempFile::disk(8 * SECTOR), true, Some("ro"));
    d.start();
    let original = d.file.contents();
    assert_eq!(d.write(0, &[1; SECTOR]), status::IOERR);
    assert_eq!(d.write(7, &[1; SECTOR]), status::IOERR);
    assert_eq!(d.write(8, &[1; SECTOR]), status::IOERR);
    assert_eq!(d.write(0, &[]), status::IOERR);
    assert_eq!(d.read(0, 8 * SECTOR), (status::OK, original.clone()));
    assert_eq!(d.flush(), status::OK);
    assert_eq!(d.get_id(2).2, b"ro");
    assert_eq!(d.file.contents(), original);
    assert_eq!(d.counters(), (7, 4));
    d.assert_works();
}

#[test]
fn buffers_outside_guest_memory_are_refused_unanswered() {
    let mut d = Drive::new();
    let mem_end = MEM_SIZE as u64;
    for (what, addr, len) in [
        ("far away", 1u64 << 40, SECTOR as u32),
        ("wrapping", u64::MAX - 100, SECTOR as u32),
        ("at the very end", u64::MAX, 1),
        ("across the end of memory", mem_end - 256, SECTOR as u32),
        ("just past the end", mem_end, SECTOR as u32),
        ("4 GiB long", 0x1_0000, u32::MAX),
    ] {
        for type_ in [req_type::IN, req_type::OUT] {
            let before = d.file.contents();
            let hdr = d.header(type_, 0);
            let st = d.status_buf();
            let data = if type_ == req_type::IN {
                Desc::writable(addr, len)
            } else {
                Desc::readable(addr, len)
            };
            let used = d.submit(&[Desc::readable(hdr, 16), data, Desc::writable(st, 1)]);
            assert_eq!((used, d.byte(st)), (Some(0), UNTOUCHED), "{what}");
            // The header outside memory (or across its end), and the status.
            let hdr_out = if addr < mem_end { mem_end - 8 } else { addr };
            let used = d.submit(&[Desc::readable(hdr_out, 16), Desc::writable(st, 1)]);
            assert_eq!((used, d.byte(st)), (Some(0), UNTOUCHED), "{what}");
            let st_out = addr.max(mem_end);
            let used = d.submit(&[Desc::readable(hdr, 16), Desc::writable(st_out, 1)]);
            assert_eq!(used, Some(0), "{what}");
            assert_eq!(d.file.contents(), before, "{what}");
            d.assert_works();
        }
    }
}

#[test]
fn descriptor_loops_and_chains_longer_than_the_queue() {
    let mut d = Drive::new();
    let hdr = d.header(req_type::IN, 0);
    // 255 bytes looping on itself: taken for a chain, 255 copies of it would make a read
    // of 127 sectors (65025 bytes with the status).
    let buf = d.buf(255, 0x11);
    d.raw_desc(10, hdr, 16, VIRTQ_DESC_F_NEXT, 11);
    d.raw_desc(11, buf, 255, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 11);
    d.drv.publish_avail(Q, 10);
    assert_eq!(d.complete(10), Some(0));
    assert_eq!(d.drv.read_bytes(buf, 255), [0x11; 255]);
    d.assert_works();

    // A two-descriptor cycle back to the head.
    let st = d.status_buf();
    d.raw_desc(20, hdr, 16, VIRTQ_DESC_F_NEXT, 21);
    d.raw_desc(21, st, 1, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 20);
    d.drv.publish_avail(Q, 20);
    assert_eq!(d.complete(20), Some(0));
    assert_eq!(d.byte(st), UNTOUCHED);
    d.assert_works();

    // A next index past the end of the table.
    for next in [QUEUE_MAX_SIZE, u16::MAX] {
        d.raw_desc(30, hdr, 16, VIRTQ_DESC_F_NEXT, 31);
        d.raw_desc(31, st, 1, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, next);
        d.drv.publish_avail(Q, 30);
        assert_eq!(d.complete(30), Some(0));
        assert_eq!(d.byte(st), UNTOUCHED);
        d.assert_works();
    }

    // A loop inside an indirect table.
    let table = d.table(&[
        (hdr, 16, VIRTQ_DESC_F_NEXT, 1),
        (buf, 255, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1),
    ]);
    assert_eq!(d.submit_indirect(40, table, 32), Some(0));
    assert_eq!(d.drv.read_bytes(buf, 255), [0x11; 255]);
    d.assert_works();

    // A queue of 8 and a "chain" of 9: it can only loop.
    let mut small = Drive::unstarted(TempFile::disk(SECTORS as usize * SECTOR), false, None);
    small.drv.start(DRIVER_FEATURES, 8);
    let hdr = small.header(req_type::IN, 0);
    let bufs: Vec<u64> = (0..8).map(|_| small.buf(129, 0x22)).collect();
    small.raw_desc(0, hdr, 16, VIRTQ_DESC_F_NEXT, 1);
    for slot in 1..8u16 {
        let (buf, next) = (bufs[usize::from(slot)], (slot + 1) % 8);
        small.raw_desc(slot, buf, 64, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, next);
    }
    small.drv.publish_avail(Q, 0);
    assert_eq!(small.complete(0), Some(0));
    for &b in &bufs[1..] {
        assert_eq!(small.drv.read_bytes(b, 129), [0x22; 129]);
    }
    // Exactly 8 descriptors (the whole queue) make a fine chain: 6 * 64 + 129 bytes.
    small.raw_desc(7, bufs[7], 129, VIRTQ_DESC_F_WRITE, 0);
    small.drv.publish_avail(Q, 0);
    assert_eq!(small.complete(0), Some(513));
    assert_eq!(small.byte(bufs[7] + 128), status::OK);
    small.assert_works();
    d.assert_works();
}

#[test]
fn data_going_the_wrong_way() {
    let mut d = Drive::new();
    let original = d.file.contents();

    // OUT with device-writable data: refused, the data buffer untouched.
    let hdr = d.header(req_type::OUT, 0);
    let data = d.buf(SECTOR, 0x33);
    let st = d.status_buf();
    let used = d.submit(&[
        Desc::readable(hdr, 16),
        Desc::writable(data, 512),
        Desc::writable(st, 1),
    ]);
    assert_eq!((used, d.byte(st)), (Some(1), status::IOERR));
    assert_eq!(d.drv.read_bytes(data, SECTOR), [0x33; SECTOR]);
    assert_eq!(d.file.contents(), original);

    // IN with device-readable data: refused, nothing read into it.
    let hdr = d.header(req_type::IN, 0);
    let st = d.status_buf();
    let used = d.submit(&[
        Desc::readable(hdr, 16),
        Desc::readable(data, 512),
        Desc::writable(st, 1),
    ]);
    assert_eq!((used, d.byte(st)), (Some(1), status::IOERR));
    assert_eq!(d.drv.read_bytes(data, SECTOR), [0x33; SECTOR]);

    // A readable buffer after a writable one: not a chain the device can use.
    let st = d.status_buf();
    let used = d.submit(&[
        Desc::readable(hdr, 16),
        Desc::writable(st, 1),
        Desc::readable(data, 512),
    ]);
    assert_eq!((used, d.byte(st)), (Some(0), UNTOUCHED));

    // A device-writable header: no header at all.
    let st = d.status_buf();
    let used = d.submit(&[Desc::writable(hdr, 16), Desc::writable(st, 1)]);
    assert_eq!((used, d.byte(st)), (Some(1), status::IOERR));

    // FLUSH and GET_ID with data they do not take.
    for (type_, extra) in [
        (req_type::FLUSH, Desc::readable(data, 512)),
        (req_type::FLUSH, Desc::writable(data, 512)),
        (req_type::GET_ID, Desc::readable(data, 20)),
    ] {
        let hdr = d.header(type_, 0);
        let st = d.status_buf();
        assert_eq!(
            d.submit(&[Desc::readable(hdr, 16), extra, Desc::writable(st, 1)]),
            Some(1)
        );
        assert_eq!(d.byte(st), status::IOERR);
    }
    assert_eq!(d.drv.read_bytes(data, SECTOR), [0x33; SECTOR]);
    assert_eq!(d.file.contents(), original);
    assert_eq!(d.counters(), (7, 7));
    d.assert_works();
}

#[test]
fn malformed_requests_get_an_error_status() {
    let mut d = Drive::new();
    let original = d.file.contents();

    // A header of 8 bytes (or of 15, or none).
    for len in [0u32, 8, 15] {
        let hdr = d.header(req_type::IN, 0);
        let st = d.status_buf();
        let used = d.submit(&[Desc::readable(hdr, len), Desc::writable(st, 1)]);
        assert_eq!(
            (used, d.byte(st)),
            (Some(1), status::IOERR),
            "header of {len}"
        );
    }
    let st = d.status_buf();
    assert_eq!(d.submit(&[Desc::writable(st, 1)]), Some(1));
    assert_eq!(d.byte(st), status::IOERR);

    // No status byte: nowhere to answer, and a write without one is not done.
    let hdr = d.header(req_type::OUT, 0);
    let data = d.buf(SECTOR, 0x44);
    assert_eq!(
        d.submit(&[Desc::readable(hdr, 16), Desc::readable(data, 512)]),
        Some(0)
    );
    assert_eq!(d.submit(&[Desc::readable(hdr, 16)]), Some(0));
    let hdr = d.header(req_type::IN, 0);
    assert_eq!(d.submit(&[Desc::readable(hdr, 16)]), Some(0));
    assert_eq!(d.file.contents(), original);

    // Past the end, and sector + length overflowing.
    for (sector, len) in [
        (SECTORS, SECTOR),
        (SECTORS - 1, 2 * SECTOR),
        (SECTORS + 1, 0),
        (u64::MAX, SECTOR),
        (u64::MAX, 0),
        (u64::MAX / SECTOR_SIZE, SECTOR),
        (u64::MAX - 1, 4 * SECTOR),
        (1 << 63, SECTOR),
    ] {
        assert_eq!(
            d.read(sector, len).0,
            status::IOERR,
            "read {len} at {sector}"
        );
        assert_eq!(
            d.write(sector, &vec![0x44; len]),
            status::IOERR,
            "write at {sector}"
        );
    }
    // Lengths that are not whole sectors.
    for len in [1, 100, 511, 513, SECTOR * 3 - 1] {
        assert_eq!(d.read(0, len).0, status::IOERR, "read of {len}");
        assert_eq!(
            d.write(0, &vec![0x44; len]),
            status::IOERR,
            "write of {len}"
        );
    }
    assert_eq!(d.file.contents(), original);

    // Unknown request types: "unsupported" (DISCARD, WRITE_ZEROES and GET_LIFETIME too,
    // which are not offered).
    for type_ in [2, 3, 5, 7, 9, 11, 13, 14, 0x8000_0000, u32::MAX] {
        let hdr = d.header(type_, 0);
        let st = d.status_buf();
        let used = d.submit(&[Desc::readable(hdr, 16), Desc::writable(st, 1)]);
        assert_eq!(
            (used, d.byte(st)),
            (Some(1), status::UNSUPP),
            "type {type_}"
        );
    }
    assert_eq!(d.counters(), (4 + 3 + 16 + 10 + 10, 4 + 3 + 16 + 10 + 10));
    d.assert_works();
}

#[test]
fn a_queue_size_that_is_not_a_power_of_two_is_refused() {
    let mut d = Drive::unstarted(TempFile::disk(SECTORS as usize * SECTOR), false, None);
    for size in [0u16, 3, 100, 255, 512, u16::MAX] {
        assert!(d.drv.negotiate(DRIVER_FEATURES));
        d.drv.setup_queue(Q, size);
        assert!(!d.drv.driver_ok(), "size {size} accepted");
        assert!(d.drv.needs_reset(), "size {size}");
        // Requests sent anyway are not served.
        d.drv.notify(Q);
        d.drv.run_events();
        d.drv.reset();
        assert!(!d.drv.needs_reset());
    }
    for size in [4u16, 8, 256] {
        d.drv.start(DRIVER_FEATURES, size);
        d.assert_works();
    }
}

#[test]
fn requests_queued_before_driver_ok_are_served_once_started() {
    let mut d = Drive::unstarted(TempFile::disk(SECTORS as usize * SECTOR), false, None);
    // Notifications with no queue at all, then with a queue but before DRIVER_OK.
    d.drv.notify(Q);
    d.drv.run_events();
    assert!(d.drv.negotiate(DRIVER_FEATURES));
    d.drv.notify(Q);
    d.drv.run_events();
    d.drv.setup_queue(Q, 16);
    let new = pattern(11, SECTOR);
    let hdr_w = d.header(req_type::OUT, 3);
    let data = d.drv.alloc_bytes(&new);
    let st_w = d.status_buf();
    d.drv.add_chain(
        Q,
        &[
            Desc::readable(hdr_w, 16),
            Desc::readable(data, 512),
            Desc::writable(st_w, 1),
        ],
    );
    let hdr_r = d.header(req_type::IN, 3);
    let back = d.buf(SECTOR, 0);
    let st_r = d.status_buf();
    d.drv.add_chain(
        Q,
        &[
            Desc::readable(hdr_r, 16),
            Desc::writable(back, 512),
            Desc::writable(st_r, 1),
        ],
    );
    d.drv.notify(Q);
    d.drv.run_events();
    assert_eq!(d.drv.used(Q), None);
    assert_eq!(d.byte(st_w), UNTOUCHED);
    assert_ne!(d.file_sectors(3, 1), new);

    // DRIVER_OK, and no further notification: both are served, in order.
    assert!(d.drv.driver_ok());
    d.drv.run_events();
    assert_eq!(d.drv.used(Q), Some((0, 1)));
    assert_eq!(d.drv.used(Q), Some((3, 513)));
    assert_eq!((d.byte(st_w), d.byte(st_r)), (status::OK, status::OK));
    assert_eq!(d.drv.read_bytes(back, SECTOR), new);
    assert_eq!(d.file_sectors(3, 1), new);
    d.assert_works();
}

#[test]
fn a_broken_ring_needs_a_reset() {
    let mut d = Drive::unstarted(TempFile::disk(SECTORS as usize * SECTOR), false, None);
    let mem_end = MEM_SIZE as u64;
    // Rings outside memory, across its end, or misaligned: DRIVER_OK is refused.
    for (desc, avail, used) in [
        (1u64 << 40, 0x1000, 0x2000),
        (0x1000, mem_end - 8, 0x2000),
        (0x1000, 0x2000, mem_end - 16),
        (u64::MAX - 15, 0x2000, 0x3000),
        (0x1001, 0x2000, 0x3000),
        (0x1000, 0x2001, 0x3000),
        (0x1000, 0x2000, 0x3002),
    ] {
        assert!(d.drv.negotiate(DRIVER_FEATURES));
        d.drv.setup_queue_at(Q, 16, desc, avail, used);
        assert!(
            !d.drv.driver_ok(),
            "rings at {desc:#x} {avail:#x} {used:#x}"
        );
        assert!(d.drv.needs_reset());
        d.drv.reset();
    }
    d.start();
    d.assert_works();

    // The avail index jumps past what the ring can hold.
    d.drv.set_avail_idx(Q, 1000);
    d.drv.notify(Q);
    d.drv.run_events();
    assert!(d.drv.needs_reset());
    // While broken it serves nothing.
    let hdr = d.header(req_type::FLUSH, 0);
    let st = d.status_buf();
    d.drv
        .add_chain(Q, &[Desc::readable(hdr, 16), Desc::writable(st, 1)]);
    d.drv.notify(Q);
    d.drv.run_events();
    assert_eq!(d.byte(st), UNTOUCHED);
    d.restart();
    d.assert_works();

    // A head index past the end of the descriptor table.
    d.drv.publish_avail(Q, QUEUE_MAX_SIZE);
    d.drv.notify(Q);
    d.drv.run_events();
    assert!(d.drv.needs_reset());
    d.restart();
    d.assert_works();

    // The index going back.
    d.drv.set_avail_idx(Q, 0xfff0);
    d.drv.notify(Q);
    d.drv.run_events();
    assert!(d.drv.needs_reset());
    d.restart();
    d.assert_works();
}

#[test]
fn two_drives_on_one_guest_memory() {
    let mem = guest_memory(MEM_SIZE);
    let mut a = Drive::on_memory(
        TempFile::disk(SECTORS as usize * SECTOR),
        false,
        None,
        mem.clone(),
    );
    let mut b = Drive::on_memory(
        TempFile::disk(SECTORS as usize * SECTOR),
        false,
        Some("b"),
        mem.clone(),
    );
    // Each driver allocates from its own half of guest memory.
    b.drv.alloc(MEM_SIZE as u64 / 2);
    a.start();
    b.start();
    a.assert_works();
    b.assert_works();
    let b_file = b.file.contents();

    // Break a's ring.
    a.drv.set_avail_idx(Q, 999);
    a.drv.notify(Q);
    a.drv.run_events();
    assert!(a.drv.needs_reset());
    b.assert_works();
    assert_eq!(b.get_id(1).2, b"b");
    assert!(!b.drv.needs_reset());

    // A descriptor loop on a: b does not notice.
    a.restart();
    let hdr = a.header(req_type::IN, 0);
    let st = a.status_buf();
    a.raw_desc(0, hdr, 16, VIRTQ_DESC_F_NEXT, 1);
    a.raw_desc(1, st, 1, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 0);
    a.drv.publish_avail(Q, 0);
    assert_eq!(a.complete(0), Some(0));
    b.assert_works();
    a.assert_works();
    // A write from b's descriptor table to a's disk (the guest's memory is all its own):
    // it reaches a's file, and b reads on undisturbed.
    let b_ring = 0x1_0000 + MEM_SIZE as u64 / 2;
    let hdr = a.header(req_type::OUT, 5);
    let st = a.status_buf();
    let used = a.submit(&[
        Desc::readable(hdr, 16),
        Desc::readable(b_ring, 512),
        Desc::writable(st, 1),
    ]);
    assert_eq!((used, a.byte(st)), (Some(1), status::OK));
    assert_eq!(a.file_sectors(5, 1), a.drv.read_bytes(b_ring, SECTOR));
    b.assert_works();
    assert_eq!(b.file.contents(), b_file);
}

#[test]
fn a_buffer_across_two_memory_regions() {
    let half = MEM_SIZE / 2;
    let mem =
        GuestMemory::from_ranges(&[(GuestAddress(0), half), (GuestAddress(half as u64), half)])
            .expect("two regions");
    let mut d = Drive::on_memory(
        TempFile::disk(SECTORS as usize * SECTOR),
        false,
        None,
        mem.clone(),
    );
    d.start();
    let original = d.file.contents();
    let hdr = d.header(req_type::IN, 1);
    let st = d.status_buf();
    let across = half as u64 - 1000;
    let used = d.submit(&[
        Desc::readable(hdr, 16),
        Desc::writable(across, 4096),
        Desc::writable(st, 1),
    ]);
    assert_eq!((used, d.byte(st)), (Some(4097), status::OK));
    assert_eq!(d.drv.read_bytes(across, 4096), original[SECTOR..9 * SECTOR]);
    // And back out to the disk.
    mem.write_slice(&pattern(4, 4096), GuestAddress(across))
        .unwrap();
    let hdr = d.header(req_type::OUT, 20);
    let used = d.submit(&[
        Desc::readable(hdr, 16),
        Desc::readable(across, 4096),
        Desc::writable(st, 1),
    ]);
    assert_eq!((used, d.byte(st)), (Some(1), status::OK));
    assert_eq!(d.file_sectors(20, 8), pattern(4, 4096));
    d.assert_works();
}

#[test]
fn bad_configurations_are_refused() {
    let missing = TempFile::path("missing");
    let err = Block::new(config(&missing, false, None))
        .err()
        .expect("a missing file");
    assert!(matches!(err, BlockError::Open { .. }), "{err}");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
    assert!(Block::new(config(&missing, true, None)).is_err());

    let dir = TempFile(TempFile::path("dir"));
    std::fs::create_dir(&dir.0).unwrap();
    let err = Block::new(config(&dir.0, true, None))
        .err()
        .expect("a directory");
    assert!(matches!(err, BlockError::NotAFile(_)), "{err}");

    let file = TempFile::disk(SECTOR);
    let long = "123456789012345678901";
    let err = Block::new(config(&file.0, false, Some(long)))
        .err()
        .expect("a long serial");
    assert!(matches!(err, BlockError::SerialTooLong(_)), "{err}");
    // 20 bytes, but of UTF-8: "é" is two bytes, so eleven of them are 22.
    assert!(Block::new(config(&file.0, false, Some(&"é".repeat(11)))).is_err());
    drop(Block::new(config(&file.0, false, Some(&"é".repeat(10)))).expect("20 bytes"));

    // Locks: one writer and nobody else, or any number of readers.
    let writer = Block::new(config(&file.0, false, None)).expect("the writer");
    for read_only in [false, true] {
        let err = Block::new(config(&file.0, read_only, None))
            .err()
            .expect("locked");
        assert!(matches!(err, BlockError::Locked { .. }), "{err}");
    }
    drop(writer);
    let r1 = Block::new(config(&file.0, true, None)).expect("a reader");
    let r2 = Block::new(config(&file.0, true, None)).expect("a second reader");
    let err = Block::new(config(&file.0, false, None))
        .err()
        .expect("readers lock out a writer");
    assert!(matches!(err, BlockError::Locked { .. }), "{err}");
    drop((r1, r2));
    drop(Block::new(config(&file.0, false, None)).expect("free again"));

    // A file the process may not write is fine read-only (unless we are root).
    let ro_file = TempFile::disk(SECTOR);
    let mut perms = std::fs::metadata(&ro_file.0).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o444);
    std::fs::set_permissions(&ro_file.0, perms).unwrap();
    drop(Block::new(config(&ro_file.0, true, None)).expect("read-only open"));
}

/// Inputs of the `blk_request` fuzz target that once found bugs, replayed through the
/// same harness (`husk_devices::virtio::block::fuzzing::run`), plus a few hand-made ones.
/// Every request to an empty slot fails with an I/O error, whatever it asks.
fn assert_empty(d: &mut Drive) {
    assert_eq!(d.config_capacity(), 0);
    assert_eq!(d.dev.lock().unwrap().capacity(), 0);
    assert!(!d.dev.lock().unwrap().has_media());
    assert_eq!(d.read(0, SECTOR).0, status::IOERR);
    assert_eq!(d.read(0, 0).0, status::IOERR);
    assert_eq!(d.write(0, &[5; SECTOR]), status::IOERR);
    assert_eq!(d.flush(), status::IOERR);
    let (st, used, id) = d.get_id(ID_LEN);
    assert_eq!((st, used), (status::IOERR, Some(1)));
    assert_eq!(id, [0xaa; ID_LEN], "an empty slot wrote a serial");
    let hdr = d.header(0x7f, 0);
    let st = d.status_buf();
    assert_eq!(
        d.submit(&[Desc::readable(hdr, 16), Desc::writable(st, 1)]),
        Some(1)
    );
    assert_eq!(d.byte(st), status::IOERR);
    assert!(!d.drv.needs_reset());
}

#[test]
fn a_spare_slot_without_media_fails_every_request() {
    let mut d = Drive::spare(TempFile::disk(SECTOR));
    // The features of a writable drive, and no more, whatever goes in later.
    assert_eq!(d.drv.device_features(), DRIVER_FEATURES);
    d.start();
    assert_empty(&mut d);
    assert_eq!(d.dev.lock().unwrap().media_id(), None);
    assert_eq!(d.dev.lock().unwrap().remove_media().map(|_| ()), None);
    // The configuration besides the capacity is that of any drive.
    let mut cfg = [0u8; 24];
    d.drv.read_config(0, &mut cfg);
    assert_eq!(u32::from_le_bytes(cfg[12..16].try_into().unwrap()), 254);
    assert_eq!(u32::from_le_bytes(cfg[20..24].try_into().unwrap()), 512);
    // Nothing changed, so no configuration interrupt.
    assert_eq!(d.drv.interrupt_status() & INT_CONFIG_CHANGE, 0);
}

#[test]
fn media_put_into_a_running_slot_are_served_and_announced() {
    let mut d = Drive::spare(TempFile::disk(SECTORS as usize * SECTOR));
    d.start();
    let original = d.file.contents();
    let gen0 = d.generation();
    d.drv.take_interrupts();
    d.drv.ack_interrupt(u32::MAX);

    d.insert(true, "rootfs1").expect("attaching");
    assert_ne!(d.drv.interrupt_status() & INT_CONFIG_CHANGE, 0);
    assert!(d.drv.take_interrupts() >= 1, "no interrupt raised");
    let gen1 = d.generation();
    assert_ne!(gen1, gen0, "ConfigGeneration did not change");
    assert_eq!(d.config_capacity(), SECTORS);
    assert_eq!(d.dev.lock().unwrap().media_id(), Some("rootfs1"));
    // The features stay those negotiated at boot: no RO.
    assert_eq!(d.drv.device_features() & blk::RO, 0);
    d.drv.ack_interrupt(INT_CONFIG_CHANGE);
    assert_eq!(d.drv.interrupt_status() & INT_CONFIG_CHANGE, 0);

    let (st, used, id) = d.get_id(ID_LEN);
    assert_eq!((st, used), (status::OK, Some(ID_LEN as u32 + 1)));
    assert_eq!(&id[..7], b"rootfs1");
    assert_eq!(id[7..], [0; ID_LEN - 7]);
    assert_eq!(
        d.read(0, SECTORS as usize * SECTOR),
        (status::OK, original.clone())
    );
    // Read-only media: the guest was never told (no RO feature), so the device refuses
    // writes and flushes itself, and the file stays as it was.
    assert_eq!(d.write(0, &[9; SECTOR]), status::IOERR);
    assert_eq!(d.write(SECTORS - 1, &[9; SECTOR]), status::IOERR);
    assert_eq!(d.flush(), status::IOERR);
    assert_eq!(d.file.contents(), original);
    assert_eq!(d.read(0, SECTOR), (status::OK, original[..SECTOR].to_vec()));
    assert_eq!(d.read(SECTORS, SECTOR).0, status::IOERR);

    // A slot holds one drive at a time.
    assert!(matches!(
        d.insert(true, "other"),
        Err(BlockError::SlotInUse)
    ));
    assert_eq!(d.dev.lock().unwrap().media_id(), Some("rootfs1"));
    assert_eq!(d.generation(), gen1);

    // Out again: empty, announced, and the file is free for a writer.
    d.drv.take_interrupts();
    let media = d
        .dev
        .lock()
        .unwrap()
        .remove_media()
        .expect("media in the slot");
    assert_eq!(media.id(), Some("rootfs1"));
    drop(media);
    assert_ne!(d.drv.interrupt_status() & INT_CONFIG_CHANGE, 0);
    assert!(d.drv.take_interrupts() >= 1);
    let gen2 = d.generation();
    assert_ne!(gen2, gen1);
    d.drv.ack_interrupt(INT_CONFIG_CHANGE);
    assert_empty(&mut d);

    // The slot takes other media, writable this time: writes and flushes work.
    d.insert(false, "rootfs2").expect("attaching again");
    assert_ne!(d.generation(), gen2);
    assert_eq!(d.config_capacity(), SECTORS);
    assert_eq!(&d.get_id(7).2, b"rootfs2");
    let new = pattern(3, SECTOR);
    assert_eq!(d.write(2, &new), status::OK);
    assert_eq!(d.flush(), status::OK);
    assert_eq!(d.file_sectors(2, 1), new);
    assert!(!d.drv.needs_reset());
}

#[test]
fn media_put_into_a_slot_before_the_driver_starts() {
    let mut d = Drive::spare(TempFile::disk(8 * SECTOR));
    d.insert(false, "early")
        .expect("attaching before the driver");
    // No driver yet: nobody to interrupt; it reads the configuration when it starts.
    assert_eq!(d.drv.take_interrupts(), 0);
    d.start();
    assert_eq!(d.config_capacity(), 8);
    assert_eq!(&d.get_id(5).2, b"early");
    assert_eq!(d.read(0, SECTOR), (status::OK, d.file_sectors(0, 1)));
    // A driver reset keeps the media.
    d.restart();
    assert_eq!(d.config_capacity(), 8);
    assert_eq!(d.write(7, &[1; SECTOR]), status::OK);
}

#[test]
fn media_that_cannot_be_opened_leave_the_slot_empty() {
    let mut d = Drive::spare(TempFile::disk(8 * SECTOR));
    d.start();
    let gen = d.generation();
    let missing = TempFile::path("missing");
    assert!(matches!(
        BlockMedia::open(config(&missing, true, Some("x"))),
        Err(BlockError::Open { .. })
    ));
    assert!(matches!(
        BlockMedia::open(config(&d.file.0, true, Some(&"x".repeat(ID_LEN + 1)))),
        Err(BlockError::SerialTooLong(_))
    ));
    // A file another writer holds.
    let writer = Block::new(config(&d.file.0, false, None)).expect("the writer");
    assert!(matches!(
        d.insert(true, "locked"),
        Err(BlockError::Locked { .. })
    ));
    drop(writer);
    assert_eq!(d.generation(), gen);
    assert_empty(&mut d);
    d.insert(true, "now").expect("free again");
    assert_eq!(d.config_capacity(), 8);
}

#[test]
fn fuzz_regressions_replay() {
    use husk_devices::virtio::block::fuzzing;
    let mut inputs = husk_devices::virtio::testing::fuzz_regressions("blk_request");
    inputs.push((0u8..=255).collect());
    inputs.push(vec![0xff; 300]);
    inputs.push(vec![0; 300]);
    for input in &inputs {
        fuzzing::run(input);
    }
    fuzzing::remove_backing_file();
}

/// The harness really reaches every outcome: a hand-made input (the fuzzer's seed) gets
/// data read and written, a flush, the id, "unsupported", I/O errors, unanswered chains
/// (a missing status, a loop), a raw chain, and a broken ring.
#[test]
fn fuzz_harness_reaches_every_outcome() {
    use husk_devices::virtio::block::fuzzing;
    #[rustfmt::skip]
    let seed: Vec<u8> = vec![
        0x36,                               // writable, EVENT_IDX, queue of 256, a serial
        0, 0, 0, 3, 1, 2, 0, 0, 0, 0, 0,    // IN of 2 sectors at 3
        0, 2, 0, 5, 1, 1, 0, 7, 0, 0, 0,    // OUT of 1 sector at 5
        0, 0, 0, 5, 1, 1, 0, 0, 0, 0, 0,    // IN of it back
        0, 4, 0, 0, 0, 0, 0, 0, 0, 0,       // FLUSH
        0, 5, 0, 0, 3, 20, 0, 0, 0, 0, 0, 0, // GET_ID into 20 bytes
        0, 7, 1, 0, 0, 0, 0, 0, 0, 0, 0,    // type 11 (DISCARD): unsupported
        0, 0, 2, 0, 1, 1, 0, 0, 0, 0, 0,    // IN past the end: I/O error
        0, 0, 0, 0, 0, 0x38, 0, 0, 0, 0,    // IN without a status byte: unanswered
        0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0x10, 0, // IN looping back to its head: unanswered
        5, 200, 8, 0, 0, 16, 0, 0, 0, 200, 0, // a raw 16-byte chain at slot 200
        6, 0xe9, 0x03, 0,                   // the avail index jumps to 1001: broken
        0, 0, 0, 3, 1, 2, 0, 0, 0, 0, 0,    // (reset, then) IN again
    ];
    let summary = fuzzing::run(&seed);
    fuzzing::remove_backing_file();
    assert_eq!(
        summary,
        fuzzing::Summary {
            ok: 6,
            ioerr: 1,
            unsupp: 1,
            unanswered: 3,
            raw: 1,
            broken: 1,
        }
    );
}

/// Pseudo-random programs through the harness: its model and the device agree.
#[test]
fn fuzz_harness_random_programs() {
    use husk_devices::virtio::block::fuzzing;
    let mut total = fuzzing::Summary::default();
    for input in husk_devices::virtio::testing::random_programs(0x9e37_79b9_7f4a_7c15, 300, 16, 600)
    {
        let s = fuzzing::run(&input);
        total.ok += s.ok;
        total.ioerr += s.ioerr;
        total.unsupp += s.unsupp;
        total.unanswered += s.unanswered;
        total.raw += s.raw;
        total.broken += s.broken;
    }
    fuzzing::remove_backing_file();
    assert!(
        total.ok > 0 && total.ioerr > 0 && total.unanswered > 0,
        "{total:?}"
    );
}

/// Issue 8's fault test: the host file system behind a drive fills up. Writes that find
/// no space get an I/O error status, nothing else changes, the device keeps serving reads
/// and flushes, and writes work again once there is space. Needs root, for a small tmpfs
/// (the full file system).
#[test]
fn a_full_host_disk_fails_writes_with_io_errors_and_the_device_lives_on() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test mounts a small tmpfs to fill up and must run as root"
    );
    let dir = TempFile::path("full-fs");
    std::fs::create_dir_all(&dir).expect("a mount point");
    let _dir = TempFile(dir.clone());
    // 64 KiB of space under a drive of 1 MiB: the file is sparse, so writes need space.
    rustix::mount::mount(
        "tmpfs",
        &dir,
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        c"size=64k",
    )
    .expect("mounting a 64 KiB tmpfs");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
        }
    }
    let _mounted = Unmount(dir.clone());
    let disk = dir.join("disk");
    let file = std::fs::File::create(&disk).expect("the drive's file");
    file.set_len(1 << 20).expect("a sparse 1 MiB file");
    drop(file);
    let mut d = Drive::unstarted(TempFile(disk.clone()), false, Some("full"));
    d.start();
    // Fill the file system: 256 KiB of writes into 64 KiB of space.
    let chunk = pattern(9, 16 * SECTOR);
    let statuses: Vec<u8> = (0..32).map(|i| d.write(i * 16, &chunk)).collect();
    assert!(
        statuses.contains(&status::OK),
        "no write fit at all: {statuses:?}"
    );
    assert!(statuses
        .iter()
        .all(|s| *s == status::OK || *s == status::IOERR));
    let failed = statuses.iter().filter(|s| **s == status::IOERR).count();
    assert!(failed > 0, "a full file system took 256 KiB: {statuses:?}");
    let (requests, errors) = d.counters();
    assert_eq!((requests, errors), (32, failed as u64));
    // What was acknowledged is in the file; the device still reads and flushes.
    let contents = std::fs::read(&disk).expect("reading the file");
    for (i, st) in statuses.iter().enumerate() {
        if *st == status::OK {
            let at = i * 16 * SECTOR;
            assert_eq!(contents[at..at + chunk.len()], chunk[..], "write {i}");
        }
    }
    assert_eq!(d.flush(), status::OK);
    let (st, data) = d.read(0, 16 * SECTOR);
    assert_eq!((st, data), (status::OK, contents[..16 * SECTOR].to_vec()));
    assert!(!d.drv.needs_reset());
    // Space again (the guest discards nothing; the host frees the file's tail): writes
    // into the freed range work.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .expect("open");
    file.set_len(16 * SECTOR as u64).expect("freeing space");
    file.set_len(1 << 20).expect("the size back");
    drop(file);
    assert_eq!(d.write(16, &chunk), status::OK);
    assert_eq!(d.read(16, 16 * SECTOR), (status::OK, chunk));
}
