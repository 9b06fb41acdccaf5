//! The fuzzing harness of the block device, shared by the `blk_request` fuzz target and
//! the test that replays the inputs that once found bugs.
//!
//! [`run`] reads the input as a little program for a hostile guest: requests of any type,
//! sector and length laid out over chosen descriptors (split anywhere, going the wrong
//! way, out of order, outside guest memory, 4 GiB long, padded past the chain limit,
//! through indirect tables good and bad, cut short by loops or dangling next indexes),
//! raw descriptors and ring entries, avail index jumps, notifications before and after
//! DRIVER_OK, and resets, against a drive (writable or read-only) on a small real file.
//!
//! A reference model predicts what the device must do with every chain the harness can
//! follow: the used length, the status byte, the data read, and what the file holds
//! afterwards. The device must match it, never panic, never spin, never write into a
//! device-readable buffer or outside the bytes it reports, and a read-only drive's file
//! never changes. Where the program makes the device's view unknowable (stale ring
//! entries, a read aimed at the rings themselves) the harness only watches for panics
//! until the next reset.
//!
//! The program: a setup byte (bit 0 read-only, bit 1 EVENT_IDX, bits 2-4 the queue size
//! among 1, 2, 4, 16, 64, 256, bit 5 a serial, bit 6 stay before DRIVER_OK), then up to
//! 128 operations, each an opcode byte (mod 10) and its arguments: 0-4 a request
//! (`Harness::request` reads type, sector, length, shape, layout and perturbations),
//! 5 a raw descriptor and maybe an avail entry, 6 an avail index jump, 7 a scribble on
//! the descriptor table or driver area, 8 a notification (or DRIVER_OK), 9 a reset. A
//! missing byte reads as zero. The test `fuzz_harness_reaches_every_outcome` in
//! `devices/tests/virtio_block.rs` spells out a seed byte by byte.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use vm_memory::{Bytes, GuestAddress};

use super::request::{req_type, status, HEADER_LEN};
use super::{features as blk_features, Block, BlockConfig, ID_LEN, SECTOR_SIZE};
use crate::virtio::chain::MAX_DESCS;
use crate::virtio::features;
use crate::virtio::testing::{
    guest_memory, FuzzInput, TestDriver, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
};

const Q: u16 = 0;
const MEM_SIZE: u64 = 1 << 20;
/// The rings, at fixed places below the arena (room for 256 entries each).
const DESC_TABLE: u64 = 0x1000;
const AVAIL_RING: u64 = 0x3000;
const USED_RING: u64 = 0x4000;
/// Where request buffers and indirect tables go.
const ARENA: u64 = 0x1_0000;
const ARENA_SIZE: u64 = 0x8_0000;
/// The disk: 64 sectors and 100 bytes the guest never sees.
const CAPACITY: u64 = 64;
const SECTOR: usize = SECTOR_SIZE as usize;
const FILE_LEN: usize = CAPACITY as usize * SECTOR + 100;
const QUEUE_SIZES: [u16; 6] = [1, 2, 4, 16, 64, 256];
const SERIAL: &[u8] = b"husk-fuzz-serial";
/// What device-writable buffers hold before the device writes them.
const POISON: u8 = 0xa5;

/// What the harness saw, for tests that check how far an input got.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Chains the model predicted and checked, by outcome.
    pub ok: u32,
    pub ioerr: u32,
    pub unsupp: u32,
    pub unanswered: u32,
    /// Of those, chains made of raw descriptors.
    pub raw: u32,
    /// Times the device asked for a reset, as predicted.
    pub broken: u32,
}

/// The backing file: one per process, rewritten at the start of every run.
fn disk_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("husk-blk-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating the fuzzing directory");
        dir.join("disk.img")
    })
}

/// Removes the backing file and its directory (for tests; the next run re-creates them).
pub fn remove_backing_file() {
    let _guard = run_lock();
    let path = disk_path();
    let _ = std::fs::remove_file(path);
    if let Some(dir) = path.parent() {
        let _ = std::fs::remove_dir(dir);
    }
}

/// Runs share the backing file (and its lock): one at a time.
fn run_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn initial_contents() -> Vec<u8> {
    (0..FILE_LEN)
        .map(|i| {
            (i as u32)
                .wrapping_mul(193)
                .wrapping_add((i / SECTOR) as u32 * 7) as u8
        })
        .collect()
}

/// One descriptor of a chain as the harness laid it out (or, for raw chains, as it
/// follows it through guest memory).
#[derive(Debug, Clone)]
struct Piece {
    addr: u64,
    len: u32,
    writable: bool,
    /// Whether the whole buffer lies in guest memory.
    in_mem: bool,
    /// What the buffer held when published (for raw chains, of readable buffers only).
    bytes: Vec<u8>,
}

impl Piece {
    fn end(&self) -> u64 {
        self.addr + u64::from(self.len)
    }
}

fn in_memory(addr: u64, len: u32) -> bool {
    addr.checked_add(u64::from(len))
        .is_some_and(|end| end <= MEM_SIZE)
}

/// What the device must do with a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Nothing can be said to the driver: used length 0, no byte written.
    Unanswered,
    /// The status byte only.
    Failed(u8),
    In {
        offset: usize,
        len: usize,
    },
    Out {
        offset: usize,
        data: Vec<u8>,
    },
    Flush,
    GetId(usize),
}

impl Outcome {
    fn used(&self) -> u32 {
        match self {
            Outcome::Unanswered => 0,
            Outcome::In { len, .. } | Outcome::GetId(len) => *len as u32 + 1,
            Outcome::Failed(_) | Outcome::Out { .. } | Outcome::Flush => 1,
        }
    }

    fn status(&self) -> Option<u8> {
        match self {
            Outcome::Unanswered => None,
            Outcome::Failed(s) => Some(*s),
            _ => Some(status::OK),
        }
    }
}

/// The reference model of a virtio-blk request (virtio 1.2, 5.2.6, and DESIGN.md: a chain
/// the device cannot answer on is returned with used length 0).
fn predict(pieces: &[Piece], cut_short: bool, read_only: bool) -> Outcome {
    if cut_short || pieces.len() > MAX_DESCS {
        return Outcome::Unanswered;
    }
    let mut readable = Vec::new();
    let (mut readable_len, mut writable_len) = (0u64, 0u64);
    for piece in pieces.iter().filter(|p| p.len > 0) {
        if !piece.in_mem {
            return Outcome::Unanswered;
        }
        if piece.writable {
            writable_len += u64::from(piece.len);
        } else if writable_len > 0 {
            return Outcome::Unanswered;
        } else {
            readable_len += u64::from(piece.len);
            readable.extend_from_slice(&piece.bytes);
        }
    }
    if writable_len == 0 {
        return Outcome::Unanswered;
    }
    if readable_len < HEADER_LEN as u64 {
        return Outcome::Failed(status::IOERR);
    }
    let type_ = u32::from_le_bytes([readable[0], readable[1], readable[2], readable[3]]);
    let mut sector = [0u8; 8];
    sector.copy_from_slice(&readable[8..16]);
    let sector = u64::from_le_bytes(sector);
    let readable_data = readable_len as usize - HEADER_LEN;
    let writable_data = writable_len as usize - 1;
    let range = |len: usize| -> Option<usize> {
        let sectors = len
            .is_multiple_of(SECTOR)
            .then_some(len as u64 / SECTOR_SIZE)?;
        let end = sector.checked_add(sectors)?;
        (end <= CAPACITY).then(|| sector as usize * SECTOR)
    };
    let ioerr = Outcome::Failed(status::IOERR);
    match type_ {
        req_type::IN if readable_data == 0 => match range(writable_data) {
            Some(offset) => Outcome::In {
                offset,
                len: writable_data,
            },
            None => ioerr,
        },
        req_type::OUT if writable_data == 0 && !read_only => match range(readable_data) {
            Some(offset) => Outcome::Out {
                offset,
                data: readable[HEADER_LEN..].to_vec(),
            },
            None => ioerr,
        },
        req_type::FLUSH if readable_data == 0 && writable_data == 0 => Outcome::Flush,
        req_type::GET_ID if readable_data == 0 => Outcome::GetId(writable_data.min(ID_LEN)),
        req_type::IN | req_type::OUT | req_type::FLUSH | req_type::GET_ID => ioerr,
        _ => Outcome::Failed(status::UNSUPP),
    }
}

/// A published chain and what must become of it.
#[derive(Debug)]
struct Chain {
    head: u16,
    pieces: Vec<Piece>,
    outcome: Outcome,
    /// Made of raw descriptors: buffers may overlap, so only the used length, the status
    /// and the file are checked.
    raw: bool,
}

#[derive(Debug)]
enum Expect {
    Chain(Chain),
    /// The device must find the ring broken here and ask for a reset.
    Breaks,
}

/// Follows a chain in guest memory exactly as virtio-queue's iterator does: the
/// descriptors it yields, and whether it was cut short (its last one has NEXT).
fn walk(drv: &TestDriver, qsize: u16, head: u16) -> (Vec<Piece>, bool) {
    let (mut table, mut size, mut ttl, mut index) = (DESC_TABLE, qsize, qsize, head);
    let mut indirect = false;
    let mut yielded: u32 = 0;
    let mut pieces = Vec::new();
    let mut cut_short = false;
    while ttl > 0 && index < size {
        let Some(at) = table.checked_add(16 * u64::from(index)) else {
            break;
        };
        let mut raw = [0u8; 16];
        if drv.mem.read_slice(&mut raw, GuestAddress(at)).is_err() {
            break;
        }
        let addr = u64::from_le_bytes(raw[0..8].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(raw[8..12].try_into().unwrap_or_default());
        let flags = u16::from_le_bytes([raw[12], raw[13]]);
        let next = u16::from_le_bytes([raw[14], raw[15]]);
        if flags & VIRTQ_DESC_F_INDIRECT != 0 {
            if indirect || !len.is_multiple_of(16) || len / 16 > u32::from(u16::MAX) {
                break;
            }
            (table, size, index, indirect) = (addr, (len / 16) as u16, 0, true);
            ttl = size;
            continue;
        }
        let Some(total) = yielded.checked_add(len) else {
            break;
        };
        yielded = total;
        let writable = flags & VIRTQ_DESC_F_WRITE != 0;
        let in_mem = in_memory(addr, len);
        let mut bytes = Vec::new();
        if in_mem && !writable {
            bytes = vec![0; len as usize];
            let _ = drv.mem.read_slice(&mut bytes, GuestAddress(addr));
        }
        pieces.push(Piece {
            addr,
            len,
            writable,
            in_mem,
            bytes,
        });
        cut_short = flags & VIRTQ_DESC_F_NEXT != 0;
        if cut_short {
            index = next;
            ttl -= 1;
        } else {
            ttl = 0;
        }
    }
    (pieces, cut_short)
}

struct Harness {
    drv: TestDriver,
    read_only: bool,
    serial: [u8; ID_LEN],
    features: u64,
    qsize: u16,
    started: bool,
    /// The device's view can no longer be predicted (until the next reset).
    tainted: bool,
    next_used: u16,
    next_slot: u16,
    pending: VecDeque<Expect>,
    pending_slots: u16,
    /// Arena allocation cursor.
    cursor: u64,
    /// What the backing file must hold.
    shadow: Vec<u8>,
    summary: Summary,
}

impl Harness {
    fn read_file(&self) -> Vec<u8> {
        std::fs::read(disk_path()).expect("reading the backing file")
    }

    fn alloc(&mut self, len: u64) -> Option<u64> {
        if self.cursor + len > ARENA_SIZE {
            if !self.pending.is_empty() {
                return None;
            }
            self.cursor = 0;
        }
        let addr = ARENA + self.cursor;
        self.cursor = (self.cursor + len + 15) & !15;
        Some(addr)
    }

    fn write_mem(&self, addr: u64, bytes: &[u8]) {
        self.drv
            .mem
            .write_slice(bytes, GuestAddress(addr))
            .expect("writing guest memory");
    }

    fn read_mem(&self, addr: u64, len: usize) -> Vec<u8> {
        self.drv.read_bytes(addr, len)
    }

    /// The driver resets the device and sets it up again (started or not).
    fn restart(&mut self, start: bool) {
        self.drv.reset();
        self.write_mem(DESC_TABLE, &vec![0; (ARENA - DESC_TABLE) as usize]);
        assert!(self.drv.negotiate(self.features), "features refused");
        self.drv
            .setup_queue_at(Q, self.qsize, DESC_TABLE, AVAIL_RING, USED_RING);
        self.next_used = 0;
        self.next_slot = 0;
        self.pending.clear();
        self.pending_slots = 0;
        self.tainted = false;
        self.cursor = 0;
        self.started = false;
        if !self.read_only {
            self.shadow = self.read_file();
        }
        if start {
            self.start();
        }
    }

    fn start(&mut self) {
        assert!(self.drv.driver_ok(), "a good layout was refused");
        self.started = true;
        self.drv.run_events();
        self.drain();
    }

    fn notify(&mut self) {
        self.drv.notify(Q);
        self.drv.run_events();
        self.drain();
    }

    /// Checks every chain the device used against what was expected of it, and the file.
    fn drain(&mut self) {
        let used_idx: u16 = self
            .drv
            .mem
            .read_obj(GuestAddress(USED_RING + 2))
            .expect("reading the used index");
        let count = used_idx.wrapping_sub(self.next_used);
        if !self.tainted {
            assert!(
                self.started || count == 0,
                "the device served a chain before DRIVER_OK"
            );
            for i in 0..count {
                let slot = u64::from(self.next_used.wrapping_add(i) % self.qsize);
                let elem = USED_RING + 4 + 8 * slot;
                let id: u32 = self.drv.mem.read_obj(GuestAddress(elem)).expect("used");
                let len: u32 = self.drv.mem.read_obj(GuestAddress(elem + 4)).expect("used");
                match self.pending.pop_front() {
                    Some(Expect::Chain(chain)) => self.check(&chain, id, len),
                    Some(Expect::Breaks) => panic!("the device went past a broken ring"),
                    None => panic!("the device used chain {id} that nobody published"),
                }
            }
        }
        self.next_used = used_idx;
        let broken = self.drv.needs_reset();
        if !self.tainted {
            let breaks = matches!(self.pending.front(), Some(Expect::Breaks));
            assert_eq!(broken, breaks, "needs-reset {broken}, expected {breaks}");
            assert!(
                !self.started || broken || self.pending.is_empty(),
                "the device left {} published chains alone",
                self.pending.len()
            );
            if breaks {
                self.summary.broken += 1;
                // Nothing more is predictable until the driver resets the device.
                self.tainted = true;
            }
        }
        if self.pending.is_empty() {
            self.pending_slots = 0;
        }
        let file = self.read_file();
        if self.read_only {
            assert!(file == self.shadow, "the read-only drive's file changed");
        } else if !self.tainted {
            assert!(
                file == self.shadow,
                "the file is not what the requests made it"
            );
        }
    }

    fn check(&mut self, chain: &Chain, id: u32, len: u32) {
        let Chain {
            head,
            pieces,
            outcome,
            raw,
        } = chain;
        let raw = *raw;
        assert_eq!(id, u32::from(*head), "used chains out of order");
        let writable: Vec<&Piece> = pieces.iter().filter(|p| p.writable && p.len > 0).collect();
        let writable_len: u64 = writable.iter().map(|p| u64::from(p.len)).sum();
        assert!(
            u64::from(len) <= writable_len,
            "used length {len} > {writable_len} writable bytes"
        );
        assert_eq!(len, outcome.used(), "used length for {outcome:?}");
        match outcome {
            Outcome::Unanswered => self.summary.unanswered += 1,
            Outcome::Failed(status::UNSUPP) => self.summary.unsupp += 1,
            Outcome::Failed(_) => self.summary.ioerr += 1,
            _ => self.summary.ok += 1,
        }
        if raw {
            self.summary.raw += 1;
        }
        if let (Some(expected), Some(last)) = (outcome.status(), writable.last()) {
            let got = self.read_mem(last.end() - 1, 1)[0];
            assert_eq!(got, expected, "status for {outcome:?}");
        }
        if let Outcome::Out { offset, data } = outcome {
            self.shadow[*offset..*offset + data.len()].copy_from_slice(data);
        }
        if raw {
            return;
        }
        // The device never writes a device-readable buffer.
        for piece in pieces
            .iter()
            .filter(|p| !p.writable && p.in_mem && p.len > 0)
        {
            assert!(
                self.read_mem(piece.addr, piece.bytes.len()) == piece.bytes,
                "a device-readable buffer changed"
            );
        }
        if writable.iter().any(|p| !p.in_mem) {
            return;
        }
        // The device-writable bytes: what was there, what the device wrote.
        let mut before = Vec::new();
        let mut after = Vec::new();
        for piece in &writable {
            before.extend_from_slice(&piece.bytes);
            after.extend(self.read_mem(piece.addr, piece.len as usize));
        }
        let mut expected = before.clone();
        match outcome {
            Outcome::Unanswered => {}
            Outcome::In { offset, len } => {
                expected[..*len].copy_from_slice(&self.shadow[*offset..*offset + len]);
            }
            Outcome::GetId(n) => {
                let mut id = [0u8; ID_LEN];
                id.copy_from_slice(&self.serial);
                expected[..*n].copy_from_slice(&id[..*n]);
            }
            Outcome::Failed(_) | Outcome::Out { .. } | Outcome::Flush => {}
        }
        if let Some(s) = outcome.status() {
            if let Some(last) = expected.last_mut() {
                *last = s;
            }
        }
        assert!(after == expected, "device-writable bytes for {outcome:?}");
    }

    /// A request built by the harness, predicted by the model.
    fn request(&mut self, input: &mut FuzzInput) {
        if self.tainted || self.drv.needs_reset() {
            self.restart(true);
        }
        if self.pending.is_empty() && self.cursor > ARENA_SIZE / 2 {
            self.cursor = 0;
        }
        let type_ = match input.u8() % 8 {
            0 | 1 => req_type::IN,
            2 | 3 => req_type::OUT,
            4 => req_type::FLUSH,
            5 => req_type::GET_ID,
            6 => input.u32(),
            _ => [2, 11, 13][usize::from(input.u8() % 3)],
        };
        let sector = match input.u8() % 4 {
            0 | 1 => u64::from(input.u8()) % (CAPACITY + 4),
            2 => CAPACITY.wrapping_sub(u64::from(input.u8() % 4)),
            _ => input.u64(),
        };
        let data_len = match input.u8() % 4 {
            0 => 0,
            1 | 2 => usize::from(input.u8() % 40) * SECTOR,
            _ => usize::from(input.u16()) % (20 << 10),
        };
        let shape = input.u8();
        let header_len = if shape & 1 != 0 {
            usize::from(input.u8()) % HEADER_LEN
        } else {
            HEADER_LEN
        };
        // The data goes the way the type wants (none for FLUSH), the other way, or both.
        let natural_writable = matches!(type_, req_type::IN | req_type::GET_ID);
        let natural = if type_ == req_type::FLUSH {
            0
        } else {
            data_len
        };
        let (readable_data, writable_data) = match (shape >> 1) % 4 {
            0 | 1 if natural_writable => (0, natural),
            0 | 1 => (natural, 0),
            2 if natural_writable => (data_len, 0),
            2 => (0, data_len),
            _ => (data_len, data_len),
        };
        let with_status = (shape >> 3) % 8 != 7;
        let status_apart = shape & 0x40 == 0;

        let mut header = [0u8; HEADER_LEN];
        header[0..4].copy_from_slice(&type_.to_le_bytes());
        header[4..8].copy_from_slice(&u32::from(shape).to_le_bytes());
        header[8..16].copy_from_slice(&sector.to_le_bytes());
        let seed = input.u8();
        let mut readable = header[..header_len].to_vec();
        readable.extend((0..readable_data).map(|i| (i as u8).wrapping_mul(seed) ^ seed));
        let writable = vec![POISON; writable_data + usize::from(with_status)];

        let mut pieces = Vec::new();
        let parts = usize::from(input.u8() % 4) + 1;
        self.cut(input, &readable, parts, false, &mut pieces);
        let parts = usize::from(input.u8() % 4) + 1;
        if status_apart && with_status {
            let (data, st) = writable.split_at(writable_data);
            self.cut(input, data, parts, true, &mut pieces);
            self.cut(input, st, 1, true, &mut pieces);
        } else {
            self.cut(input, &writable, parts, true, &mut pieces);
        }
        if pieces.iter().any(|p| p.addr == 0) {
            return; // the arena is full of pending requests
        }

        let perturb = input.u8();
        let n = pieces.len();
        if perturb & 1 != 0 {
            // A buffer going the wrong way.
            let piece = &mut pieces[usize::from(input.u8()) % n];
            piece.writable = !piece.writable;
        }
        if perturb & 2 != 0 {
            // A buffer outside guest memory (or across its end), maybe 4 GiB long.
            let which = input.u8();
            let piece = &mut pieces[usize::from(which) % n];
            if which & 0x80 != 0 {
                piece.len = u32::MAX - u32::from(input.u8());
            }
            piece.addr = match input.u8() % 4 {
                0 => MEM_SIZE.saturating_sub(u64::from(piece.len / 2)),
                1 => u64::MAX - u64::from(input.u8()),
                2 => (1 << 40) + u64::from(input.u16()),
                _ => MEM_SIZE + u64::from(input.u32()),
            };
            piece.in_mem = in_memory(piece.addr, piece.len);
        }
        if perturb & 4 != 0 {
            // Two buffers swap places.
            let (a, b) = (usize::from(input.u8()) % n, usize::from(input.u8()) % n);
            pieces.swap(a, b);
        }
        if perturb & 8 != 0 {
            // Empty descriptors in front, maybe past the chain limit.
            let count = usize::from(input.u8()) + if perturb & 0x80 != 0 { 256 } else { 0 };
            let writable = perturb & 0x40 != 0;
            let pad = Piece {
                addr: ARENA,
                len: 0,
                writable,
                in_mem: true,
                bytes: Vec::new(),
            };
            pieces.splice(0..0, std::iter::repeat_n(pad, count));
        }
        let cut_short = perturb & 0x10 != 0;
        let cut_target = if cut_short { input.u8() } else { 0 };
        let n = pieces.len() as u16;
        let free = self.qsize - self.pending_slots;
        let indirect = perturb & 0x20 != 0 || n > free;
        if indirect && free == 0 {
            return;
        }

        let head = self.next_slot;
        let mut table_ok = true;
        if indirect {
            let Some(table) = self.alloc(16 * u64::from(n)) else {
                return;
            };
            let entries: Vec<(u64, u32, u16, u16)> = (0..n)
                .map(|i| {
                    let last = i + 1 == n;
                    let next = match (last, cut_target & 1) {
                        (false, _) => i + 1,
                        (true, 0) => 0,
                        (true, _) => n + u16::from(cut_target >> 1),
                    };
                    (i, next)
                })
                .map(|(i, next)| desc_entry(&pieces[usize::from(i)], next, i + 1 < n || cut_short))
                .collect();
            let mut raw = Vec::with_capacity(16 * entries.len());
            for (addr, len, flags, next) in entries {
                raw.extend_from_slice(&addr.to_le_bytes());
                raw.extend_from_slice(&len.to_le_bytes());
                raw.extend_from_slice(&flags.to_le_bytes());
                raw.extend_from_slice(&next.to_le_bytes());
            }
            self.write_mem(table, &raw);
            let (table_addr, table_len) = match input.u8() % 16 {
                0 => (MEM_SIZE - 8, 16 * u32::from(n)),
                1 => (table, 16 * u32::from(n) + u32::from(input.u8() % 15) + 1),
                2 => (table, 0),
                _ => (table, 16 * u32::from(n)),
            };
            table_ok = table_addr == table && table_len == 16 * u32::from(n);
            self.drv
                .write_desc(Q, head, table_addr, table_len, VIRTQ_DESC_F_INDIRECT, 0);
            self.next_slot = (head + 1) % self.qsize;
            self.pending_slots += 1;
        } else {
            for i in 0..n {
                let slot = (head + i) % self.qsize;
                let next = if i + 1 < n {
                    (slot + 1) % self.qsize
                } else if cut_target & 1 == 0 {
                    head
                } else {
                    self.qsize + u16::from(cut_target >> 1)
                };
                let (addr, len, flags, next) =
                    desc_entry(&pieces[usize::from(i)], next, i + 1 < n || cut_short);
                self.drv.write_desc(Q, slot, addr, len, flags, next);
            }
            self.next_slot = (head + n) % self.qsize;
            self.pending_slots += n;
        }
        let outcome = if table_ok {
            predict(&pieces, cut_short, self.read_only)
        } else {
            Outcome::Unanswered
        };
        self.drv.publish_avail(Q, head);
        self.pending.push_back(Expect::Chain(Chain {
            head,
            pieces,
            outcome,
            raw: false,
        }));
        self.notify();
    }

    /// Lays `bytes` out over `parts` buffers cut at points the input chooses.
    fn cut(
        &mut self,
        input: &mut FuzzInput,
        bytes: &[u8],
        parts: usize,
        writable: bool,
        out: &mut Vec<Piece>,
    ) {
        let mut cuts: Vec<usize> = (1..parts)
            .map(|_| usize::from(input.u16()) % (bytes.len() + 1))
            .collect();
        cuts.push(0);
        cuts.push(bytes.len());
        cuts.sort_unstable();
        for pair in cuts.windows(2) {
            let part = &bytes[pair[0]..pair[1]];
            let addr = self.alloc(part.len() as u64).unwrap_or(0);
            if addr != 0 {
                self.write_mem(addr, part);
            }
            out.push(Piece {
                addr,
                len: part.len() as u32,
                writable,
                in_mem: true,
                bytes: part.to_vec(),
            });
        }
    }

    /// One raw descriptor, and maybe an avail entry: loops, bad indexes, anything.
    fn raw(&mut self, input: &mut FuzzInput) {
        let slot = u16::from(input.u8()) % self.qsize;
        let sel = input.u8();
        let addr = match sel % 4 {
            0 | 1 => ARENA + u64::from(input.u16()) * 8,
            2 => MEM_SIZE - u64::from(input.u8()),
            _ => input.u64(),
        };
        let len = if sel & 4 == 0 {
            u32::from(input.u16())
        } else {
            input.u32()
        };
        let flags = u16::from(input.u8() & 7);
        let next = u16::from(input.u8());
        self.drv.write_desc(Q, slot, addr, len, flags, next);
        if !self.started && !self.pending.is_empty() {
            // It may be part of a chain waiting for DRIVER_OK.
            self.tainted = true;
        }
        if sel & 8 == 0 {
            return;
        }
        let head = input.u16() % (self.qsize + 2);
        // Published before the walk: a chain may read the driver area itself.
        self.drv.publish_avail(Q, head);
        if !self.started {
            // Served at DRIVER_OK, after whatever the program does to the table till then.
            self.tainted = true;
        } else if !self.tainted && !self.drv.needs_reset() {
            if head >= self.qsize {
                self.pending.push_back(Expect::Breaks);
            } else {
                let (pieces, cut_short) = walk(&self.drv, self.qsize, head);
                // A chain that writes into the rings makes the driver's view of them
                // (and the device's) unknowable.
                if pieces
                    .iter()
                    .any(|p| p.writable && p.len > 0 && p.in_mem && p.addr < ARENA)
                {
                    self.tainted = true;
                }
                let outcome = predict(&pieces, cut_short, self.read_only);
                self.pending.push_back(Expect::Chain(Chain {
                    head,
                    pieces,
                    outcome,
                    raw: true,
                }));
            }
        }
        if self.started || sel & 16 != 0 {
            self.notify();
        }
    }

    /// The avail index jumps.
    fn jump(&mut self, input: &mut FuzzInput) {
        let idx = input.u16();
        let behind = u16::from(input.u8() % 4);
        let published: u16 = self
            .drv
            .mem
            .read_obj(GuestAddress(AVAIL_RING + 2))
            .expect("reading the avail index");
        // Mostly a little way ahead, into stale entries; sometimes anywhere.
        let idx = if idx & 1 == 0 {
            published.wrapping_add(behind)
        } else {
            idx
        };
        let ahead = idx.wrapping_sub(published);
        if ahead != 0 {
            if self.started && !self.tainted && !self.drv.needs_reset() && ahead > self.qsize {
                self.pending.push_back(Expect::Breaks);
            } else {
                self.tainted = true;
            }
        }
        self.drv.set_avail_idx(Q, idx);
        self.notify();
    }

    /// Random bytes in the descriptor table or the driver area (not its index).
    fn scribble(&mut self, input: &mut FuzzInput) {
        let value = input.u16();
        let at = match input.u8() % 3 {
            0 => DESC_TABLE + u64::from(input.u16()) % (16 * u64::from(self.qsize)),
            1 => AVAIL_RING + 4 + 2 * (u64::from(input.u8()) % u64::from(self.qsize)),
            // used_event: when the driver wants its next interrupt.
            _ => AVAIL_RING + 4 + 2 * u64::from(self.qsize),
        };
        if !self.pending.is_empty() {
            self.tainted = true;
        }
        self.write_mem(at, &value.to_le_bytes());
        self.notify();
    }
}

/// A descriptor-table entry for `piece`.
fn desc_entry(piece: &Piece, next: u16, has_next: bool) -> (u64, u32, u16, u16) {
    let mut flags = if piece.writable {
        VIRTQ_DESC_F_WRITE
    } else {
        0
    };
    if has_next {
        flags |= VIRTQ_DESC_F_NEXT;
    }
    (piece.addr, piece.len, flags, next)
}

/// Runs one input against a fresh drive on the shared backing file.
pub fn run(data: &[u8]) -> Summary {
    let _guard = run_lock();
    let initial = initial_contents();
    if let Some(dir) = disk_path().parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(disk_path(), &initial).expect("writing the backing file");
    let mut input = FuzzInput::new(data);

    let setup = input.u8();
    let read_only = setup & 1 != 0;
    let serial = (setup & 0x20 != 0).then(|| String::from_utf8_lossy(SERIAL).into_owned());
    let Ok(device) = Block::new(BlockConfig {
        path: disk_path().clone(),
        read_only,
        serial,
    }) else {
        panic!("cannot open the fuzzing disk");
    };
    assert_eq!(device.capacity(), CAPACITY);
    let device = Arc::new(Mutex::new(device));
    let mut serial_bytes = [0u8; ID_LEN];
    if setup & 0x20 != 0 {
        serial_bytes[..SERIAL.len()].copy_from_slice(SERIAL);
    }
    let mut feats = features::VERSION_1
        | features::RING_INDIRECT_DESC
        | blk_features::SEG_MAX
        | blk_features::BLK_SIZE
        | blk_features::FLUSH;
    if setup & 2 != 0 {
        feats |= features::RING_EVENT_IDX;
    }
    if read_only {
        feats |= blk_features::RO;
    }
    let mut h = Harness {
        drv: TestDriver::new(device.clone(), guest_memory(MEM_SIZE as usize)),
        read_only,
        serial: serial_bytes,
        features: feats,
        qsize: QUEUE_SIZES[usize::from((setup >> 2) & 7) % QUEUE_SIZES.len()],
        started: false,
        tainted: false,
        next_used: 0,
        next_slot: 0,
        pending: VecDeque::new(),
        pending_slots: 0,
        cursor: 0,
        shadow: initial.clone(),
        summary: Summary::default(),
    };
    // Notifications before anything is set up go nowhere.
    h.drv.notify(Q);
    h.drv.run_events();
    h.restart(setup & 0x40 == 0);

    for _ in 0..128 {
        if input.done() {
            break;
        }
        match input.u8() % 10 {
            0..=4 => h.request(&mut input),
            5 => h.raw(&mut input),
            6 => h.jump(&mut input),
            7 => h.scribble(&mut input),
            8 => {
                if h.started {
                    h.notify();
                } else {
                    h.start();
                }
            }
            _ => {
                let start = input.u8() & 1 == 0;
                h.restart(start);
            }
        }
    }
    if !h.started && !h.tainted {
        // Whatever waited for DRIVER_OK is served now.
        h.start();
    }
    h.drv.run_events();
    h.drain();
    let summary = h.summary;
    drop(h);
    let device = Arc::try_unwrap(device)
        .ok()
        .and_then(|m| m.into_inner().ok());
    assert!(device.is_some(), "the device outlived its driver");
    drop(device);
    if read_only {
        assert!(
            std::fs::read(disk_path()).expect("reading the backing file") == initial,
            "the read-only drive's file changed"
        );
    }
    summary
}
