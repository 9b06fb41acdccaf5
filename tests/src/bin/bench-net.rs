//! virtio-net device benchmark (issue 7): what the device itself costs. The host-side
//! test driver (DESIGN.md, layer 2) moves frames through a real `Net` device on a tap,
//! and a plain host thread moves the same frames through a second, identical tap
//! directly (`write()` and `read()` on its fd); both are printed side by side with the
//! ratio device/direct.
//!
//!     cargo run --release -p husk-tests --bin bench-net -- --runs 5
//!
//! Needs root: it makes a network namespace of its own and its taps there, so nothing
//! shows on the host and nothing is left when it ends.
//!
//! tx (guest → tap): batches of 64 frames, each a tx chain of the 12-byte header and
//! the frame, one notification per batch; the direct side writes the same frames (with
//! the same header) to its tap. On both sides each batch is then read back from a raw
//! packet socket on the tap interface, so a frame counts only once the host saw it.
//! rx (tap → guest): batches of 64 frames sent into the tap from a packet socket; the
//! device delivers them into mergeable rx buffers of 4 KiB (a Linux guest's), reposted
//! every batch, and the direct side reads them from its tap's fd. The driver's own work
//! (writing descriptors, reading the used ring) counts against the device, as a guest
//! driver's would. Every frame must arrive, or the run fails.

use std::os::unix::io::AsRawFd;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use husk_devices::virtio::net::testing::{disable_ipv6, set_mtu, NetNs, PacketSocket};
use husk_devices::virtio::net::{
    features as net, Net, NetConfig, Tap, QUEUE_MAX_SIZE, RX_QUEUE, TX_QUEUE, VNET_HDR_LEN,
};
use husk_devices::virtio::testing::{guest_memory, Desc, TestDriver};
use husk_devices::virtio::{features, GuestMemory};
use husk_tests::Error;
use vm_memory::{Bytes, GuestAddress};

const USAGE: &str = "usage: bench-net [--runs N (default 5)]";
const MAC: [u8; 6] = [0x02, 0x48, 0x55, 0x53, 0x4b, 0x01];
const BATCH: usize = 64;
/// The guest's rx buffers (mergeable).
const RX_BUF: u32 = 4096;
const WAIT: Duration = Duration::from_secs(5);
const FEATURES: u64 = features::VERSION_1
    | features::RING_EVENT_IDX
    | net::MAC
    | net::STATUS
    | net::MRG_RXBUF
    | net::CSUM
    | net::GUEST_CSUM;

struct Options {
    runs: usize,
}

fn parse_options() -> Result<Options, Error> {
    let mut options = Options { runs: 5 };
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
            _ => return Err(Error(format!("unknown option {arg}\n{USAGE}"))),
        }
    }
    Ok(options)
}

#[derive(Clone, Copy, PartialEq)]
enum Direction {
    Tx,
    Rx,
}

#[derive(Clone, Copy)]
struct Workload {
    name: &'static str,
    direction: Direction,
    /// Ethernet frame length (no virtio-net header).
    size: usize,
    count: usize,
}

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "tx 60 B",
        direction: Direction::Tx,
        size: 60,
        count: 64_000,
    },
    Workload {
        name: "tx 1514 B",
        direction: Direction::Tx,
        size: 1514,
        count: 64_000,
    },
    Workload {
        name: "tx 9014 B",
        direction: Direction::Tx,
        size: 9014,
        count: 19_200,
    },
    Workload {
        name: "rx 60 B",
        direction: Direction::Rx,
        size: 60,
        count: 64_000,
    },
    Workload {
        name: "rx 1514 B",
        direction: Direction::Rx,
        size: 1514,
        count: 64_000,
    },
    Workload {
        name: "rx 9014 B",
        direction: Direction::Rx,
        size: 9014,
        count: 19_200,
    },
];

/// A frame to the guest's MAC of an ethertype no stack answers, `size` bytes long.
fn frame(size: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(size);
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend((14..size).map(|i| i as u8));
    f
}

/// A tap in the namespace, up, MTU 9000, with a packet socket on it whose receive
/// buffer holds a whole batch of the largest frames.
fn tap(ns: &NetNs) -> Result<(Tap, PacketSocket), Error> {
    ns.run(|| -> Result<(Tap, PacketSocket), String> {
        let tap = Tap::open("bench%d").map_err(|e| e.to_string())?;
        disable_ipv6(tap.name()).map_err(|e| format!("disabling IPv6: {e}"))?;
        set_mtu(tap.name(), 9000).map_err(|e| format!("setting the MTU: {e}"))?;
        tap.set_up().map_err(|e| e.to_string())?;
        let sock = PacketSocket::bind(tap.name(), false).map_err(|e| e.to_string())?;
        let size: libc::c_int = 16 << 20;
        // SAFETY: the option value is one int, as long as the length says.
        let ret = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if ret < 0 {
            return Err(format!(
                "SO_RCVBUFFORCE: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok((tap, sock))
    })
    .map_err(|e| Error(format!("setting up a tap (bench-net needs root): {e}")))
}

/// Receives `count` frames that arrived on the packet socket's interface (not those it
/// sent), into `buf`.
fn drain(sock: &PacketSocket, count: usize, buf: &mut [u8]) -> Result<(), Error> {
    let deadline = Instant::now() + WAIT;
    let mut got = 0;
    while got < count {
        // SAFETY: `sockaddr_ll` is plain old data; all zeros is a valid value.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: the kernel writes at most `buf.len()` bytes into `buf` and at most
        // `from_len` bytes into `from`.
        let n = unsafe {
            libc::recvfrom(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut from_len,
            )
        };
        if n >= 0 {
            if from.sll_pkttype != libc::PACKET_OUTGOING {
                got += 1;
            }
            continue;
        }
        if Instant::now() > deadline {
            return Err(Error(format!(
                "only {got} of {count} frames reached the packet socket"
            )));
        }
        let mut pfd = libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, as the count says.
        unsafe { libc::poll(&mut pfd, 1, 10) };
    }
    Ok(())
}

/// tx directly: the same header and frame written to the tap.
fn tx_direct(tap: &Tap, sock: &PacketSocket, w: &Workload) -> Result<Duration, Error> {
    let mut bytes = vec![0u8; VNET_HDR_LEN];
    bytes.extend(frame(w.size));
    let mut buf = vec![0u8; 70_000];
    let start = Instant::now();
    for _ in 0..w.count / BATCH {
        for _ in 0..BATCH {
            tap.write(&bytes)
                .map_err(|e| Error(format!("writing the tap: {e}")))?;
        }
        drain(sock, BATCH, &mut buf)?;
    }
    Ok(start.elapsed())
}

/// rx directly: frames sent into the tap, read from its fd.
fn rx_direct(tap: &Tap, sock: &PacketSocket, w: &Workload) -> Result<Duration, Error> {
    let f = frame(w.size);
    let mut buf = vec![0u8; 70_000];
    let start = Instant::now();
    for _ in 0..w.count / BATCH {
        for _ in 0..BATCH {
            sock.send(&f)
                .map_err(|e| Error(format!("sending into the tap: {e}")))?;
        }
        let deadline = Instant::now() + WAIT;
        let mut got = 0;
        while got < BATCH {
            match tap.read(&mut buf) {
                Ok(n) if n == VNET_HDR_LEN + w.size => got += 1,
                Ok(n) => return Err(Error(format!("read a frame of {n} bytes"))),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err(Error(format!("only {got} of {BATCH} frames came")));
                    }
                    let mut pfd = libc::pollfd {
                        fd: tap.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one pollfd, as the count says.
                    unsafe { libc::poll(&mut pfd, 1, 10) };
                }
                Err(e) => return Err(Error(format!("reading the tap: {e}"))),
            }
        }
    }
    Ok(start.elapsed())
}

fn start_device(tap: Tap) -> Result<(TestDriver, Arc<Mutex<Net>>, GuestMemory), Error> {
    let dev = Net::new(NetConfig { tap, mac: MAC })
        .map_err(|e| Error(format!("creating the device: {e}")))?;
    let dev = Arc::new(Mutex::new(dev));
    let mem = guest_memory(64 << 20);
    let mut driver = TestDriver::new(dev.clone(), mem.clone());
    driver.start(FEATURES, QUEUE_MAX_SIZE);
    Ok((driver, dev, mem))
}

/// tx through the device.
fn tx_device(tap: Tap, sock: &PacketSocket, w: &Workload) -> Result<Duration, Error> {
    let (mut driver, dev, mem) = start_device(tap)?;
    let mut bytes = vec![0u8; VNET_HDR_LEN];
    bytes.extend(frame(w.size));
    let len = bytes.len() as u32;
    let slots: Vec<u64> = (0..BATCH).map(|_| driver.alloc(u64::from(len))).collect();
    for &slot in &slots {
        mem.write_slice(&bytes, GuestAddress(slot))
            .map_err(|e| Error(format!("filling guest memory: {e}")))?;
    }
    let mut buf = vec![0u8; 70_000];
    let start = Instant::now();
    for _ in 0..w.count / BATCH {
        for &slot in &slots {
            driver.add_chain(TX_QUEUE, &[Desc::readable(slot, len)]);
        }
        driver.notify(TX_QUEUE);
        driver.run_events();
        for _ in 0..BATCH {
            driver
                .used(TX_QUEUE)
                .ok_or_else(|| Error("the device did not use a tx chain".into()))?;
        }
        drain(sock, BATCH, &mut buf)?;
    }
    let elapsed = start.elapsed();
    let c = dev
        .lock()
        .map_err(|_| Error("device lock".into()))?
        .counters();
    if c.tx_frames != (w.count / BATCH * BATCH) as u64 || c.tx_dropped + c.tx_bad_chains > 0 {
        return Err(Error(format!("tx went wrong: {c:?}")));
    }
    Ok(elapsed)
}

/// rx through the device.
fn rx_device(tap: Tap, sock: &PacketSocket, w: &Workload) -> Result<Duration, Error> {
    let (mut driver, dev, _mem) = start_device(tap)?;
    let per_frame = (VNET_HDR_LEN + w.size).div_ceil(RX_BUF as usize);
    let chains = BATCH * per_frame;
    if chains > usize::from(QUEUE_MAX_SIZE) {
        return Err(Error(format!("{chains} rx buffers do not fit the queue")));
    }
    let bufs: Vec<u64> = (0..chains)
        .map(|_| driver.alloc(u64::from(RX_BUF)))
        .collect();
    let f = frame(w.size);
    let batches = w.count / BATCH;
    let start = Instant::now();
    for batch in 1..=batches {
        for &buf in &bufs {
            driver.add_chain(RX_QUEUE, &[Desc::writable(buf, RX_BUF)]);
        }
        driver.notify(RX_QUEUE);
        for _ in 0..BATCH {
            sock.send(&f)
                .map_err(|e| Error(format!("sending into the tap: {e}")))?;
        }
        let want = (batch * BATCH) as u64;
        let deadline = Instant::now() + WAIT;
        loop {
            driver.run_events();
            let c = dev
                .lock()
                .map_err(|_| Error("device lock".into()))?
                .counters();
            if c.rx_frames >= want {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error(format!("rx stalled: {c:?}")));
            }
            driver.run_events_for(10);
        }
        for _ in 0..chains {
            driver
                .used(RX_QUEUE)
                .ok_or_else(|| Error("a frame without its rx chains".into()))?;
        }
    }
    let elapsed = start.elapsed();
    let c = dev
        .lock()
        .map_err(|_| Error("device lock".into()))?
        .counters();
    if c.rx_dropped + c.rx_bad_chains > 0 {
        return Err(Error(format!("rx went wrong: {c:?}")));
    }
    Ok(elapsed)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn run() -> Result<(), Error> {
    let options = parse_options()?;
    let ns = NetNs::new().map_err(|e| {
        Error(format!(
            "cannot create a network namespace (bench-net needs root): {e}"
        ))
    })?;
    println!(
        "virtio-net device vs direct tap I/O, {} runs each (interleaved), median; batches of {BATCH} frames",
        options.runs
    );
    println!(
        "{:<12} {:>13} {:>13} {:>10} {:>10} {:>7}",
        "workload", "device pkt/s", "direct pkt/s", "dev MB/s", "dir MB/s", "ratio"
    );
    for w in WORKLOADS {
        let (mut device, mut direct) = (Vec::new(), Vec::new());
        for _ in 0..options.runs {
            // A fresh tap for each side and run: the device owns its tap.
            let (dev_tap, dev_sock) = tap(&ns)?;
            let (dir_tap, dir_sock) = tap(&ns)?;
            match w.direction {
                Direction::Tx => {
                    device.push(tx_device(dev_tap, &dev_sock, w)?);
                    direct.push(tx_direct(&dir_tap, &dir_sock, w)?);
                }
                Direction::Rx => {
                    device.push(rx_device(dev_tap, &dev_sock, w)?);
                    direct.push(rx_direct(&dir_tap, &dir_sock, w)?);
                }
            }
        }
        let frames = (w.count / BATCH * BATCH) as f64;
        let (device, direct) = (median(device), median(direct));
        let pps = |d: Duration| frames / d.as_secs_f64();
        let mbs = |d: Duration| frames * w.size as f64 / d.as_secs_f64() / 1e6;
        println!(
            "{:<12} {:>13.0} {:>13.0} {:>10.1} {:>10.1} {:>7.2}",
            w.name,
            pps(device),
            pps(direct),
            mbs(device),
            mbs(direct),
            pps(device) / pps(direct)
        );
    }
    println!("ratio = device pkt/s / direct pkt/s (1.00 = the device adds nothing); MB/s of Ethernet frames");
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-net: {e}");
            ExitCode::FAILURE
        }
    }
}
