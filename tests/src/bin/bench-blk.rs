//! virtio-blk device benchmark (issue 3): what the device itself costs. The host-side
//! test driver (DESIGN.md, layer 2) submits requests to a real `Block` device through
//! the virtio-mmio transport and the device's event handlers, and a plain host thread
//! does the same I/O directly on the same file (`pread`/`pwrite`/`fdatasync`); both
//! are printed side by side with the ratio device/direct.
//!
//!     cargo run --release -p husk-tests --bin bench-blk -- --runs 5
//!
//! Workloads: 4 KiB random reads, 4 KiB random writes (32 requests per notification),
//! 1 MiB sequential writes and reads (8 per notification), and a flush-heavy one (each
//! 4 KiB write followed by a FLUSH). The file lives in `--dir` (default: /var/tmp), so
//! both sides go through the same page cache and file system. The driver's own work
//! (writing descriptors, reading the used ring) counts against the device, as a guest
//! driver's would. Every request must complete with status OK, or the run fails.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use husk_devices::virtio::block::{Block, BlockConfig};
use husk_devices::virtio::testing::{guest_memory, Desc, TestDriver};
use husk_tests::Error;
use vm_memory::{Bytes, GuestAddress};

const SECTOR: u64 = 512;
const FILE_SIZE: u64 = 256 << 20;
const REQ_IN: u32 = 0;
const REQ_OUT: u32 = 1;
const REQ_FLUSH: u32 = 4;
const STATUS_OK: u8 = 0;

const USAGE: &str = "usage: bench-blk [--runs N (default 5)] [--dir DIR (default /var/tmp)]";

struct Options {
    runs: usize,
    dir: PathBuf,
}

fn parse_options() -> Result<Options, Error> {
    let mut options = Options {
        runs: 5,
        dir: PathBuf::from("/var/tmp"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| Error(format!("{arg} needs a value\n{USAGE}")))?;
        match arg.as_str() {
            "--runs" => {
                options.runs = value
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| Error(format!("--runs wants a positive number\n{USAGE}")))?
            }
            "--dir" => options.dir = PathBuf::from(value),
            _ => return Err(Error(format!("unknown option {arg}\n{USAGE}"))),
        }
    }
    Ok(options)
}

/// One kind of I/O: `count` requests of `size` bytes, `batch` per notification, each
/// write optionally followed by a flush.
#[derive(Clone, Copy)]
struct Workload {
    name: &'static str,
    write: bool,
    size: u32,
    count: usize,
    batch: usize,
    random: bool,
    flush_each: bool,
}

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "4 KiB random read",
        write: false,
        size: 4096,
        count: 20_000,
        batch: 32,
        random: true,
        flush_each: false,
    },
    Workload {
        name: "4 KiB random write",
        write: true,
        size: 4096,
        count: 20_000,
        batch: 32,
        random: true,
        flush_each: false,
    },
    Workload {
        name: "1 MiB sequential write",
        write: true,
        size: 1 << 20,
        count: 256,
        batch: 8,
        random: false,
        flush_each: false,
    },
    Workload {
        name: "1 MiB sequential read",
        write: false,
        size: 1 << 20,
        count: 256,
        batch: 8,
        random: false,
        flush_each: false,
    },
    Workload {
        name: "4 KiB write + flush",
        write: true,
        size: 4096,
        count: 300,
        batch: 1,
        random: true,
        flush_each: true,
    },
];

/// The byte offsets of a workload's requests: a fixed pseudo-random sequence (xorshift)
/// for random ones, so both sides do exactly the same I/O.
fn offsets(w: &Workload) -> Vec<u64> {
    let slots = FILE_SIZE / u64::from(w.size);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..w.count as u64)
        .map(|i| {
            let slot = if w.random {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state % slots
            } else {
                i % slots
            };
            slot * u64::from(w.size)
        })
        .collect()
}

/// The same I/O, done directly on the file by this thread.
fn run_direct(file: &File, w: &Workload, offsets: &[u64]) -> Result<Duration, Error> {
    let mut buffer = vec![0x5au8; w.size as usize];
    let start = Instant::now();
    for &offset in offsets {
        let result = if w.write {
            file.write_all_at(&buffer, offset)
        } else {
            file.read_exact_at(&mut buffer, offset)
        };
        result.map_err(|e| Error(format!("direct I/O at {offset}: {e}")))?;
        if w.flush_each {
            file.sync_data()
                .map_err(|e| Error(format!("direct fdatasync: {e}")))?;
        }
    }
    Ok(start.elapsed())
}

/// Guest addresses of one request slot: header, data, status.
struct Slot {
    header: u64,
    data: u64,
    status: u64,
}

/// The same I/O through the virtio-blk device.
fn run_device(path: &Path, w: &Workload, offsets: &[u64]) -> Result<Duration, Error> {
    let device = Block::new(BlockConfig {
        path: path.to_path_buf(),
        read_only: false,
        serial: None,
    })
    .map_err(|e| Error(format!("creating the device: {e}")))?;
    let device = Arc::new(Mutex::new(device));
    let per_batch = w.batch * if w.flush_each { 2 } else { 1 };
    let mem = guest_memory(64 << 20);
    let mut driver = TestDriver::new(device, mem.clone());
    let features = driver.device_features();
    driver.start(features, 256);
    let slots: Vec<Slot> = (0..per_batch)
        .map(|_| Slot {
            header: driver.alloc(16),
            data: driver.alloc(u64::from(w.size)),
            status: driver.alloc(1),
        })
        .collect();
    for slot in &slots {
        mem.write_slice(&vec![0x5au8; w.size as usize], GuestAddress(slot.data))
            .map_err(|e| Error(format!("filling guest memory: {e}")))?;
    }

    let start = Instant::now();
    for batch in offsets.chunks(w.batch) {
        let mut submitted = 0;
        for &offset in batch {
            let kind = if w.write { REQ_OUT } else { REQ_IN };
            submit(&mut driver, &mem, &slots[submitted], kind, offset, w.size)?;
            submitted += 1;
            if w.flush_each {
                submit(&mut driver, &mem, &slots[submitted], REQ_FLUSH, 0, 0)?;
                submitted += 1;
            }
        }
        driver.notify(0);
        driver.run_events();
        for _ in 0..submitted {
            driver
                .used(0)
                .ok_or_else(|| Error("the device did not complete a request".into()))?;
        }
        for slot in &slots[..submitted] {
            let status: u8 = mem
                .read_obj(GuestAddress(slot.status))
                .map_err(|e| Error(format!("reading a status: {e}")))?;
            if status != STATUS_OK {
                return Err(Error(format!(
                    "{}: request failed with status {status}",
                    w.name
                )));
            }
        }
    }
    Ok(start.elapsed())
}

fn submit(
    driver: &mut TestDriver,
    mem: &husk_devices::virtio::GuestMemory,
    slot: &Slot,
    kind: u32,
    offset: u64,
    size: u32,
) -> Result<(), Error> {
    let mut header = [0u8; 16];
    header[0..4].copy_from_slice(&kind.to_le_bytes());
    header[8..16].copy_from_slice(&(offset / SECTOR).to_le_bytes());
    mem.write_slice(&header, GuestAddress(slot.header))
        .map_err(|e| Error(format!("writing a header: {e}")))?;
    mem.write_obj(0xffu8, GuestAddress(slot.status))
        .map_err(|e| Error(format!("writing a status: {e}")))?;
    let mut chain = vec![Desc::readable(slot.header, 16)];
    match kind {
        REQ_OUT => chain.push(Desc::readable(slot.data, size)),
        REQ_IN => chain.push(Desc::writable(slot.data, size)),
        _ => {}
    }
    chain.push(Desc::writable(slot.status, 1));
    driver.add_chain(0, &chain);
    Ok(())
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn run() -> Result<(), Error> {
    let options = parse_options()?;
    let path = options
        .dir
        .join(format!("husk-bench-blk-{}.img", std::process::id()));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| Error(format!("creating {}: {e}", path.display())))?;
    let result = (|| {
        // Written out (not sparse), so reads hit real blocks on both sides.
        let chunk = vec![0xa5u8; 1 << 20];
        for i in 0..FILE_SIZE / (1 << 20) {
            file.write_all_at(&chunk, i << 20)
                .map_err(|e| Error(format!("filling {}: {e}", path.display())))?;
        }
        file.sync_all()
            .map_err(|e| Error(format!("syncing {}: {e}", path.display())))?;
        println!(
            "virtio-blk device vs direct file I/O, {} runs each (interleaved), median; file {} MiB in {}",
            options.runs,
            FILE_SIZE >> 20,
            options.dir.display()
        );
        println!(
            "{:<24} {:>12} {:>12} {:>10} {:>10} {:>7}",
            "workload", "device op/s", "direct op/s", "dev MB/s", "dir MB/s", "ratio"
        );
        for w in WORKLOADS {
            let offsets = offsets(w);
            let (mut device, mut direct) = (Vec::new(), Vec::new());
            for _ in 0..options.runs {
                device.push(run_device(&path, w, &offsets)?);
                direct.push(run_direct(&file, w, &offsets)?);
            }
            let (device, direct) = (median(device), median(direct));
            let ops = |d: Duration| w.count as f64 / d.as_secs_f64();
            let mbs = |d: Duration| (w.count as f64 * f64::from(w.size)) / d.as_secs_f64() / 1e6;
            println!(
                "{:<24} {:>12.0} {:>12.0} {:>10.1} {:>10.1} {:>7.2}",
                w.name,
                ops(device),
                ops(direct),
                mbs(device),
                mbs(direct),
                ops(device) / ops(direct)
            );
        }
        println!("ratio = device op/s / direct op/s (1.00 = the device adds nothing)");
        Ok(())
    })();
    let _ = std::fs::remove_file(&path);
    result
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-blk: {e}");
            ExitCode::FAILURE
        }
    }
}
