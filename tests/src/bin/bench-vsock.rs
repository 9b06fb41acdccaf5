//! virtio-vsock device benchmark (issue 3): what the device costs a host ↔ guest stream.
//!
//! A host client connects through the device's hybrid Unix socket (`CONNECT 5000`) to a
//! guest played by the layer-2 test driver (DESIGN.md) on real guest memory, which
//! behaves like Linux's virtio-vsock driver: 4 KiB receive buffers, packets of up to
//! 64 KiB on transmit, credit updates as it consumes. The same client also talks to a
//! plain Unix socket pair whose other end a host thread serves the same way: the peer
//! that shows what the device adds. One run, side by side, as ratios:
//!
//!     cargo run --release -p husk-tests --bin bench-vsock -- --runs 5
//!
//! Per connection: `--pings` round trips of 64 bytes (the median round trip), then
//! `--mib` MiB host → guest, then the same guest → host (MB/s). Both sides check every
//! byte they receive against the pattern, so a run that moved wrong data fails.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use husk_devices::virtio::features;
use husk_devices::virtio::testing::{guest_memory, Desc, TestDriver};
use husk_devices::virtio::vsock::packet::{op, PacketHeader, HDR_LEN, HOST_CID, TYPE_STREAM};
use husk_devices::virtio::vsock::{Vsock, RX_QUEUE, TX_QUEUE};
use husk_tests::Error;
use vm_memory::{Bytes, GuestAddress};

const GUEST_CID: u64 = 3;
const GUEST_PORT: u32 = 5000;
const QSIZE: u16 = 256;
/// Linux's receive buffer (VIRTIO_VSOCK_DEFAULT_RX_BUF_SIZE) and largest tx packet.
const RX_PAYLOAD: u32 = 4096;
const TX_PAYLOAD: usize = 64 * 1024;
const TX_SLOTS: usize = 64;
/// The guest's advertised receive buffer (Linux's default socket buffer is 256 KiB).
const GUEST_BUF_ALLOC: u32 = 256 * 1024;
const PING_LEN: usize = 64;
/// The byte the guest sends when it has taken in everything the host sent.
const ACK: u8 = b'K';
/// Nothing should take this long; past it the run fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(120);

const USAGE: &str = "usage: bench-vsock [--runs N (5)] [--pings N (5000)] [--mib N (256)]";

struct Options {
    runs: usize,
    pings: usize,
    bytes: u64,
}

fn parse_options() -> Result<Options, Error> {
    let mut options = Options {
        runs: 5,
        pings: 5000,
        bytes: 256 << 20,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value: u64 = args
            .next()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| Error(format!("{arg} needs a positive number\n{USAGE}")))?;
        match arg.as_str() {
            "--runs" => options.runs = value as usize,
            "--pings" => options.pings = value as usize,
            "--mib" => options.bytes = value << 20,
            _ => return Err(Error(format!("unknown option {arg}\n{USAGE}"))),
        }
    }
    Ok(options)
}

/// The streams' content: byte `i` is `PATTERN[i % PATTERN_PERIOD]`, an odd period so a
/// shifted or repeated piece shows. Filling and checking are copies and compares of the
/// table, so the client and peers cost little next to what is measured.
const PATTERN_PERIOD: usize = (1 << 20) + 7;
/// The longest piece filled or checked at once.
const MAX_PIECE: usize = 256 * 1024;

fn pattern_table() -> &'static [u8] {
    static TABLE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..PATTERN_PERIOD + MAX_PIECE)
            .map(|i| {
                let i = (i % PATTERN_PERIOD) as u64;
                (i.wrapping_mul(31) ^ (i >> 11)) as u8
            })
            .collect()
    })
}

/// The `len` bytes of the stream from offset `from`.
fn pattern_at(from: u64, len: usize) -> &'static [u8] {
    let at = (from % PATTERN_PERIOD as u64) as usize;
    &pattern_table()[at..at + len.min(MAX_PIECE)]
}

fn fill_pattern(buf: &mut [u8], from: u64) {
    buf.copy_from_slice(pattern_at(from, buf.len()));
}

fn check_pattern(buf: &[u8], from: u64, who: &str) -> Result<(), Error> {
    if buf == pattern_at(from, buf.len()) {
        Ok(())
    } else {
        Err(Error(format!(
            "{who}: wrong data at {from}..+{}",
            buf.len()
        )))
    }
}

/// What the client measured on one connection.
struct Figures {
    rtt: Duration,
    to_guest: Duration,
    from_guest: Duration,
}

/// The host client: pings, a stream to the guest, a stream from it.
fn client(mut stream: UnixStream, pings: usize, bytes: u64) -> Result<Figures, Error> {
    let io = |what: &'static str| move |e: std::io::Error| Error(format!("client {what}: {e}"));
    stream
        .set_read_timeout(Some(PATIENCE))
        .map_err(io("timeout"))?;
    let mut rtts = Vec::with_capacity(pings);
    let mut ping = [0u8; PING_LEN];
    let mut pong = [0u8; PING_LEN];
    for i in 0..pings {
        fill_pattern(&mut ping, i as u64);
        let start = Instant::now();
        stream.write_all(&ping).map_err(io("ping"))?;
        stream.read_exact(&mut pong).map_err(io("pong"))?;
        rtts.push(start.elapsed());
        if pong != ping {
            return Err(Error("client: the echo differs from the ping".into()));
        }
    }
    let rtt = median(rtts);

    let mut chunk = vec![0u8; MAX_PIECE];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(chunk.len() as u64) as usize;
        fill_pattern(&mut chunk[..n], sent);
        stream.write_all(&chunk[..n]).map_err(io("send"))?;
        sent += n as u64;
    }
    let mut ack = [0u8; 1];
    stream.read_exact(&mut ack).map_err(io("ack"))?;
    let to_guest = start.elapsed();
    if ack[0] != ACK {
        return Err(Error(format!(
            "client: expected the ack, got {:#x}",
            ack[0]
        )));
    }

    let start = Instant::now();
    let mut got = 0u64;
    while got < bytes {
        let n = stream.read(&mut chunk).map_err(io("receive"))?;
        if n == 0 {
            return Err(Error(format!("client: the stream ended after {got} bytes")));
        }
        check_pattern(&chunk[..n], got, "client")?;
        got += n as u64;
    }
    let from_guest = start.elapsed();
    Ok(Figures {
        rtt,
        to_guest,
        from_guest,
    })
}

/// The peer without a device: the same protocol on the other end of a socket pair.
fn direct_peer(mut stream: UnixStream, pings: usize, bytes: u64) -> Result<(), Error> {
    let io = |what: &'static str| move |e: std::io::Error| Error(format!("peer {what}: {e}"));
    let mut ping = [0u8; PING_LEN];
    for _ in 0..pings {
        stream.read_exact(&mut ping).map_err(io("ping"))?;
        stream.write_all(&ping).map_err(io("pong"))?;
    }
    let mut chunk = vec![0u8; TX_PAYLOAD];
    let mut got = 0u64;
    while got < bytes {
        let n = (bytes - got).min(chunk.len() as u64) as usize;
        let n = stream.read(&mut chunk[..n]).map_err(io("receive"))?;
        if n == 0 {
            return Err(Error("peer: the stream ended early".into()));
        }
        check_pattern(&chunk[..n], got, "peer")?;
        got += n as u64;
    }
    stream.write_all(&[ACK]).map_err(io("ack"))?;
    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(chunk.len() as u64) as usize;
        fill_pattern(&mut chunk[..n], sent);
        stream.write_all(&chunk[..n]).map_err(io("send"))?;
        sent += n as u64;
    }
    Ok(())
}

/// Where the guest is in the protocol.
enum Phase {
    /// Echoing pings; this many bytes still to echo.
    Echo(u64),
    /// Taking in the host's stream; bytes taken so far.
    Sink(u64),
    /// Sending its own stream; bytes sent so far.
    Source(u64),
    Done,
}

/// The guest: a Linux-like vsock driver on the test driver, for one connection.
struct Guest {
    drv: TestDriver,
    rx_addr: Vec<u64>,
    rx_posted: usize,
    tx_addr: Vec<u64>,
    tx_posted: usize,
    tx_in_flight: usize,
    host_port: Option<u32>,
    /// Bytes consumed (`fwd_cnt`) and the value last told to the device.
    fwd_cnt: u32,
    fwd_cnt_told: u32,
    /// The device's receive buffer and how much of what we sent it has passed on.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    tx_cnt: u32,
    phase: Phase,
    bytes: u64,
    scratch: Vec<u8>,
}

impl Guest {
    fn new(device: Arc<Mutex<Vsock>>, pings: usize, bytes: u64) -> Self {
        let mut drv = TestDriver::new(device, guest_memory(64 << 20));
        drv.start(features::VERSION_1 | features::RING_EVENT_IDX, QSIZE);
        let rx_addr = (0..QSIZE)
            .map(|_| drv.alloc(HDR_LEN as u64 + u64::from(RX_PAYLOAD)))
            .collect();
        let tx_addr = (0..TX_SLOTS)
            .map(|_| drv.alloc((HDR_LEN + TX_PAYLOAD) as u64))
            .collect();
        let mut guest = Guest {
            drv,
            rx_addr,
            rx_posted: 0,
            tx_addr,
            tx_posted: 0,
            tx_in_flight: 0,
            host_port: None,
            fwd_cnt: 0,
            fwd_cnt_told: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            phase: Phase::Echo((pings * PING_LEN) as u64),
            bytes,
            scratch: vec![0u8; TX_PAYLOAD],
        };
        guest.post_rx(usize::from(QSIZE));
        guest
    }

    fn post_rx(&mut self, n: usize) {
        for _ in 0..n {
            let addr = self.rx_addr[self.rx_posted % usize::from(QSIZE)];
            self.drv.add_chain(
                RX_QUEUE,
                &[Desc::writable(addr, HDR_LEN as u32 + RX_PAYLOAD)],
            );
            self.rx_posted += 1;
        }
        self.drv.notify(RX_QUEUE);
    }

    /// Queues one packet on the tx queue (sent at the next `flush_tx`).
    fn send(&mut self, op: u16, payload: &[u8]) -> Result<(), Error> {
        let Some(host_port) = self.host_port else {
            return Err(Error("guest: sending before a connection".into()));
        };
        if self.tx_in_flight == TX_SLOTS {
            self.flush_tx();
        }
        let hdr = PacketHeader {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port: GUEST_PORT,
            dst_port: host_port,
            len: payload.len() as u32,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: GUEST_BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        };
        let addr = self.tx_addr[self.tx_posted % TX_SLOTS];
        let write = |at: u64, data: &[u8]| {
            self.drv
                .mem
                .write_slice(data, GuestAddress(at))
                .map_err(|e| Error(format!("guest memory: {e}")))
        };
        write(addr, &hdr.to_bytes())?;
        write(addr + HDR_LEN as u64, payload)?;
        self.drv.add_chain(
            TX_QUEUE,
            &[Desc::readable(addr, (HDR_LEN + payload.len()) as u32)],
        );
        self.tx_posted += 1;
        self.tx_in_flight += 1;
        self.fwd_cnt_told = self.fwd_cnt;
        if op == op::RW {
            self.tx_cnt = self.tx_cnt.wrapping_add(payload.len() as u32);
        }
        Ok(())
    }

    /// Hands queued packets to the device and takes back the buffers it is done with.
    fn flush_tx(&mut self) {
        if self.tx_in_flight == 0 {
            return;
        }
        self.drv.notify(TX_QUEUE);
        self.drv.run_events();
        while self.drv.used(TX_QUEUE).is_some() {
            self.tx_in_flight -= 1;
        }
    }

    /// Handles what the device put in rx buffers; returns whether anything came.
    fn receive(&mut self) -> Result<bool, Error> {
        let mut used = 0;
        while let Some((head, len)) = self.drv.used(RX_QUEUE) {
            used += 1;
            let addr = self.rx_addr[head as usize % usize::from(QSIZE)];
            let len = len as usize;
            if len < HDR_LEN {
                return Err(Error(format!("guest: rx packet of {len} bytes")));
            }
            let mut raw = [0u8; HDR_LEN];
            self.drv
                .mem
                .read_slice(&mut raw, GuestAddress(addr))
                .map_err(|e| Error(format!("guest memory: {e}")))?;
            let hdr = PacketHeader::from_bytes(&raw);
            let payload_len = len - HDR_LEN;
            self.drv
                .mem
                .read_slice(
                    &mut self.scratch[..payload_len],
                    GuestAddress(addr + HDR_LEN as u64),
                )
                .map_err(|e| Error(format!("guest memory: {e}")))?;
            self.peer_buf_alloc = hdr.buf_alloc;
            self.peer_fwd_cnt = hdr.fwd_cnt;
            match hdr.op {
                op::REQUEST => {
                    self.host_port = Some(hdr.src_port);
                    self.send(op::RESPONSE, &[])?;
                }
                op::RW => self.consume(payload_len)?,
                op::CREDIT_UPDATE => {}
                op::CREDIT_REQUEST => self.send(op::CREDIT_UPDATE, &[])?,
                op::SHUTDOWN | op::RST => self.phase = Phase::Done,
                other => return Err(Error(format!("guest: unexpected op {other}"))),
            }
        }
        if used > 0 {
            self.post_rx(used);
        }
        Ok(used > 0)
    }

    /// Takes in `n` bytes of payload (in `scratch`) as the phase wants.
    fn consume(&mut self, n: usize) -> Result<(), Error> {
        self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
        match self.phase {
            Phase::Echo(left) => {
                let echo = self.scratch[..n].to_vec();
                self.send(op::RW, &echo)?;
                let left = left.saturating_sub(n as u64);
                self.phase = if left == 0 {
                    Phase::Sink(0)
                } else {
                    Phase::Echo(left)
                };
            }
            Phase::Sink(got) => {
                check_pattern(&self.scratch[..n], got, "guest")?;
                let got = got + n as u64;
                if got >= self.bytes {
                    self.send(op::RW, &[ACK])?;
                    self.phase = Phase::Source(0);
                } else {
                    self.phase = Phase::Sink(got);
                    // Linux tells the peer about freed space once a quarter is free.
                    if self.fwd_cnt.wrapping_sub(self.fwd_cnt_told) >= GUEST_BUF_ALLOC / 4 {
                        self.send(op::CREDIT_UPDATE, &[])?;
                    }
                }
            }
            _ => return Err(Error("guest: data after the host's stream".into())),
        }
        Ok(())
    }

    /// Sends as much of the guest's stream as the device's credit allows.
    fn source(&mut self) -> Result<(), Error> {
        let Phase::Source(mut sent) = self.phase else {
            return Ok(());
        };
        loop {
            let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
            let credit = self.peer_buf_alloc.saturating_sub(in_flight) as u64;
            let n = (self.bytes - sent).min(credit).min(TX_PAYLOAD as u64) as usize;
            if n == 0 {
                break;
            }
            let mut payload = std::mem::take(&mut self.scratch);
            fill_pattern(&mut payload[..n], sent);
            let result = self.send(op::RW, &payload[..n]);
            self.scratch = payload;
            result?;
            sent += n as u64;
        }
        self.phase = if sent >= self.bytes {
            Phase::Done
        } else {
            Phase::Source(sent)
        };
        Ok(())
    }

    /// Runs the guest and the device until the client is finished.
    fn serve(&mut self, client: &thread::JoinHandle<Result<Figures, Error>>) -> Result<(), Error> {
        let start = Instant::now();
        while !client.is_finished() {
            if start.elapsed() > PATIENCE {
                return Err(Error("guest: the run takes too long".into()));
            }
            // Wait briefly for the host socket, then do what arrived.
            self.drv.run_events_for(1);
            self.drv.run_events();
            while self.receive()? {
                self.source()?;
                self.flush_tx();
            }
            self.source()?;
            self.flush_tx();
        }
        Ok(())
    }
}

/// One connection through the device.
fn run_device(dir: &std::path::Path, pings: usize, bytes: u64) -> Result<Figures, Error> {
    let uds = dir.join("v.sock");
    let device = Vsock::new(GUEST_CID, uds.clone())
        .map_err(|e| Error(format!("creating the device: {e}")))?;
    let device = Arc::new(Mutex::new(device));
    let mut guest = Guest::new(device, pings, bytes);
    let client = thread::spawn(move || -> Result<Figures, Error> {
        let mut stream = UnixStream::connect(&uds)
            .map_err(|e| Error(format!("connecting to {}: {e}", uds.display())))?;
        stream
            .write_all(format!("CONNECT {GUEST_PORT}\n").as_bytes())
            .map_err(|e| Error(format!("CONNECT: {e}")))?;
        stream
            .set_read_timeout(Some(PATIENCE))
            .map_err(|e| Error(format!("timeout: {e}")))?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while byte[0] != b'\n' {
            stream
                .read_exact(&mut byte)
                .map_err(|e| Error(format!("reading the OK line: {e}")))?;
            line.push(byte[0]);
        }
        if !line.starts_with(b"OK ") {
            return Err(Error(format!(
                "CONNECT answered {:?}",
                String::from_utf8_lossy(&line)
            )));
        }
        client(stream, pings, bytes)
    });
    let served = guest.serve(&client);
    let figures = client
        .join()
        .map_err(|_| Error("the client thread panicked".into()))?;
    served?;
    figures
}

/// The same connection over a socket pair.
fn run_direct(pings: usize, bytes: u64) -> Result<Figures, Error> {
    let (a, b) = UnixStream::pair().map_err(|e| Error(format!("socketpair: {e}")))?;
    let peer = thread::spawn(move || direct_peer(b, pings, bytes));
    let figures = client(a, pings, bytes);
    peer.join()
        .map_err(|_| Error("the peer thread panicked".into()))??;
    figures
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn run() -> Result<(), Error> {
    let options = parse_options()?;
    let dir = std::env::temp_dir().join(format!("husk-bench-vsock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error(format!("{}: {e}", dir.display())))?;
    let result = (|| {
        let (mut device, mut direct) = (Vec::new(), Vec::new());
        for _ in 0..options.runs {
            device.push(run_device(&dir, options.pings, options.bytes)?);
            direct.push(run_direct(options.pings, options.bytes)?);
        }
        let mib = options.bytes >> 20;
        println!(
            "virtio-vsock device (hybrid Unix socket) vs a Unix socket pair, {} runs each \
             (interleaved), median; {} pings of {PING_LEN} bytes, {mib} MiB each way",
            options.runs, options.pings
        );
        println!(
            "{:<22} {:>12} {:>12} {:>7}",
            "", "device", "socketpair", "ratio"
        );
        let us = |f: &dyn Fn(&Figures) -> Duration, v: &[Figures]| {
            median(v.iter().map(f).collect()).as_secs_f64() * 1e6
        };
        let mbs = |f: &dyn Fn(&Figures) -> Duration, v: &[Figures]| {
            options.bytes as f64 / median(v.iter().map(f).collect()).as_secs_f64() / 1e6
        };
        let (d, s) = (us(&|f| f.rtt, &device), us(&|f| f.rtt, &direct));
        println!(
            "{:<22} {:>10.1}us {:>10.1}us {:>7.2}",
            "round trip (64 B)",
            d,
            s,
            d / s
        );
        for (name, pick) in [
            (
                "host -> guest MB/s",
                &(|f: &Figures| f.to_guest) as &dyn Fn(&Figures) -> Duration,
            ),
            ("guest -> host MB/s", &|f: &Figures| f.from_guest),
        ] {
            let (d, s) = (mbs(pick, &device), mbs(pick, &direct));
            println!("{name:<22} {d:>12.0} {s:>12.0} {:>7.2}", d / s);
        }
        println!(
            "ratio = device / socketpair (round trip: higher is slower; MB/s: lower is slower)"
        );
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-vsock: {e}");
            ExitCode::FAILURE
        }
    }
}
