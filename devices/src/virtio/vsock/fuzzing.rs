//! The fuzzing harness of the vsock device, shared by the `vsock_packet` fuzz target and
//! the test that replays the inputs that once found bugs.
//!
//! [`run`] reads the input as a little program for a hostile guest (and a busy host):
//! tx packets with chosen headers, payloads and descriptor layouts, rx buffers of any
//! shape, raw descriptors and ring indexes, notifications, resets, and host clients and
//! listeners doing their part over real Unix sockets. The device must never panic, never
//! spin, and keep its state consistent; anything else is a finding.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use vm_memory::{Bytes, GuestAddress};

use super::packet::{PacketHeader, HDR_LEN, HOST_CID, TYPE_STREAM};
use super::{Vsock, EVENT_QUEUE, RX_QUEUE, TX_QUEUE};
use crate::virtio::features;
use crate::virtio::testing::{
    guest_memory, FuzzInput, TestDriver, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};

const GUEST_CID: u64 = 3;
const QSIZE: u16 = 16;
const MEM_SIZE: usize = 1 << 20;
/// Where packets and rx buffers go: past the rings the driver allocates.
const ARENA: u64 = 0x8_0000;
const ARENA_SIZE: u64 = 0x7_0000;
/// Host ports with a listener (`<uds>_1`, `<uds>_2`); others have none.
const LISTEN_PORTS: [u32; 2] = [1, 2];

struct Paths {
    uds: PathBuf,
    _listeners: Vec<UnixListener>,
}

/// One directory per process; the device's socket is re-created each run, the host
/// listeners live as long as the process.
fn paths() -> &'static Paths {
    static PATHS: OnceLock<Paths> = OnceLock::new();
    PATHS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("husk-vsock-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating the fuzzing directory");
        let uds = dir.join("v.sock");
        let listeners = LISTEN_PORTS
            .iter()
            .map(|port| {
                let l = UnixListener::bind(super::muxer::port_path(&uds, *port))
                    .expect("binding a host listener");
                l.set_nonblocking(true).expect("non-blocking listener");
                l
            })
            .collect();
        // Writes to a host socket whose peer is gone must fail with EPIPE, not kill the
        // fuzzer (a Rust binary ignores SIGPIPE before main; libFuzzer's main does not).
        // SAFETY: setting a signal disposition to SIG_IGN has no memory effects.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        Paths {
            uds,
            _listeners: listeners,
        }
    })
}

/// Host ports the device used in packets to the guest (so tx packets can name them),
/// and the ops it sent.
fn learn_ports(
    drv: &mut TestDriver,
    rx_bufs: &[(u64, u32)],
    known: &mut Vec<u32>,
    ops: &mut Vec<u16>,
) {
    while let Some((head, len)) = drv.used(RX_QUEUE) {
        let Some(&(addr, _)) = rx_bufs.get(head as usize) else {
            continue;
        };
        if (len as usize) < HDR_LEN {
            continue;
        }
        let mut raw = [0u8; HDR_LEN];
        if drv.mem.read_slice(&mut raw, GuestAddress(addr)).is_ok() {
            let hdr = PacketHeader::from_bytes(&raw);
            if ops.len() < 256 {
                ops.push(hdr.op);
            }
            if known.len() < 16 {
                known.push(hdr.src_port);
            }
        }
    }
}

/// Runs one input against a fresh device. Returns the ops of the packets the guest
/// read back from its rx buffers (so tests can see how far an input got).
pub fn run(data: &[u8]) -> Vec<u16> {
    let mut seen_ops = Vec::new();
    let paths = paths();
    let _ = std::fs::remove_file(&paths.uds);
    let Ok(device) = Vsock::new(GUEST_CID, paths.uds.clone()) else {
        return seen_ops;
    };
    let device = Arc::new(Mutex::new(device));
    let mut drv = TestDriver::new(device.clone(), guest_memory(MEM_SIZE));
    let mut input = FuzzInput::new(data);

    let first = input.u8();
    let mut feats = features::VERSION_1;
    if first & 1 != 0 {
        feats |= features::RING_EVENT_IDX;
    }
    drv.start(feats, QSIZE);

    let mut clients: Vec<UnixStream> = Vec::new();
    let mut accepted: Vec<UnixStream> = Vec::new();
    let mut known_ports: Vec<u32> = vec![1024, 1025];
    // Rx buffers by descriptor slot, for reading back what the device wrote.
    let mut rx_bufs: Vec<(u64, u32)> = vec![(ARENA, 0); usize::from(QSIZE)];
    let mut cursor: u64 = 0;
    let mut alloc = |len: u64| {
        let len = len.min(ARENA_SIZE);
        if cursor + len > ARENA_SIZE {
            cursor = 0;
        }
        let addr = ARENA + cursor;
        cursor = (cursor + len + 15) & !15;
        addr
    };

    for _ in 0..96 {
        if input.done() {
            break;
        }
        match input.u8() % 10 {
            0..=2 => {
                // A tx packet, mostly well addressed, in one to three descriptors.
                let sel = input.u8();
                let known = known_ports.get(usize::from(input.u8()) % known_ports.len());
                let hdr = PacketHeader {
                    src_cid: if sel & 1 == 0 { GUEST_CID } else { input.u64() },
                    dst_cid: if sel & 2 == 0 { HOST_CID } else { input.u64() },
                    src_port: 1000 + u32::from(input.u8() % 4),
                    dst_port: match input.u8() % 4 {
                        0 => LISTEN_PORTS[0],
                        1 => known.copied().unwrap_or(3),
                        2 => 3,
                        _ => input.u32(),
                    },
                    len: if sel & 4 == 0 {
                        u32::from(input.u8())
                    } else {
                        input.u32()
                    },
                    type_: if sel & 8 == 0 {
                        TYPE_STREAM
                    } else {
                        input.u16()
                    },
                    op: u16::from(input.u8() % 9),
                    flags: u32::from(input.u8() % 5),
                    buf_alloc: if sel & 16 == 0 {
                        u32::from(input.u16()) << 4
                    } else {
                        input.u32()
                    },
                    fwd_cnt: input.u32(),
                };
                let payload_len = usize::from(input.u8()) * 2;
                let mut bytes = hdr.to_bytes().to_vec();
                bytes.extend(input.bytes(payload_len));
                let addr = alloc(bytes.len() as u64);
                let _ = drv.mem.write_slice(&bytes, GuestAddress(addr));
                let total = bytes.len() as u32;
                let cut1 = u32::from(input.u8()).min(total);
                let cut2 = (cut1 + u32::from(input.u8())).min(total);
                let mut descs = Vec::new();
                for (start, end) in [(0, cut1), (cut1, cut2), (cut2, total)] {
                    if end > start || descs.is_empty() {
                        descs.push(crate::virtio::testing::Desc {
                            addr: addr + u64::from(start),
                            len: end - start,
                            writable: sel & 32 != 0 && start == 0,
                        });
                    }
                }
                if sel & 64 != 0 {
                    // Somewhere outside guest memory.
                    if let Some(d) = descs.last_mut() {
                        d.addr = input.u64();
                    }
                }
                drv.add_chain(TX_QUEUE, &descs);
                drv.notify(TX_QUEUE);
                drv.run_events();
            }
            3 => {
                // Rx buffers of any shape.
                for _ in 0..(input.u8() % 4 + 1) {
                    let shape = input.u8();
                    let len = match shape % 4 {
                        0 => u32::from(input.u8()),
                        1 => HDR_LEN as u32,
                        _ => HDR_LEN as u32 + u32::from(input.u16() % 8192),
                    };
                    let addr = alloc(u64::from(len));
                    let desc = crate::virtio::testing::Desc {
                        addr,
                        len,
                        writable: shape & 0x80 == 0,
                    };
                    let head = drv.add_chain(RX_QUEUE, &[desc]);
                    if let Some(slot) = rx_bufs.get_mut(usize::from(head)) {
                        *slot = (addr, len);
                    }
                }
                drv.notify(RX_QUEUE);
                drv.run_events();
                learn_ports(&mut drv, &rx_bufs, &mut known_ports, &mut seen_ops);
            }
            4 => {
                // A raw descriptor and an avail entry: loops, bad indexes, anything.
                let q = [RX_QUEUE, TX_QUEUE, EVENT_QUEUE][usize::from(input.u8() % 3)];
                let slot = u16::from(input.u8()) % (QSIZE + 2);
                let addr = u64::from(input.u32());
                let len = u32::from(input.u16());
                let flags = u16::from(input.u8()) & (VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE | 4);
                let next = u16::from(input.u8()) % (QSIZE + 2);
                if slot < QSIZE {
                    drv.write_desc(q, slot, addr, len, flags, next);
                }
                drv.publish_avail(q, slot);
                drv.notify(q);
                drv.run_events();
            }
            5 => {
                // The avail index jumps.
                let q = if input.u8() & 1 == 0 {
                    RX_QUEUE
                } else {
                    TX_QUEUE
                };
                let idx = input.u16();
                drv.set_avail_idx(q, idx);
                drv.notify(q);
                drv.run_events();
            }
            6 => {
                // A host client of the hybrid socket.
                if clients.len() < 16 {
                    if let Ok(mut c) = UnixStream::connect(&paths.uds) {
                        let line = match input.u8() % 4 {
                            0 => b"CONNECT 5\n".to_vec(),
                            1 => format!("CONNECT {}\n", input.u32()).into_bytes(),
                            2 => {
                                let n = usize::from(input.u8() % 48);
                                input.bytes(n)
                            }
                            _ => b"CONNECT 6\nearly".to_vec(),
                        };
                        let _ = c.set_nonblocking(true);
                        let _ = c.write(&line);
                        clients.push(c);
                    }
                }
                drv.run_events();
            }
            7 => {
                // Host streams write, read, shut down or go away.
                let all = clients.len() + accepted.len();
                if all > 0 {
                    let pick = usize::from(input.u8()) % all;
                    let action = input.u8();
                    let stream = if pick < clients.len() {
                        clients.get_mut(pick)
                    } else {
                        accepted.get_mut(pick - clients.len())
                    };
                    if let Some(s) = stream {
                        match action % 5 {
                            0 | 1 => {
                                let n = usize::from(input.u8()) * 64;
                                let _ = s.write(&vec![action; n]);
                            }
                            2 => {
                                let mut buf = [0u8; 4096];
                                let _ = s.read(&mut buf);
                            }
                            3 => {
                                let _ = s.shutdown(Shutdown::Write);
                            }
                            _ => {
                                if pick < clients.len() {
                                    clients.swap_remove(pick);
                                } else {
                                    accepted.swap_remove(pick - clients.len());
                                }
                            }
                        }
                    }
                }
                drv.run_events();
            }
            8 => {
                // Host listeners accept what the guest dialled.
                for l in &paths._listeners {
                    while let Ok((s, _)) = l.accept() {
                        let _ = s.set_nonblocking(true);
                        if accepted.len() < 16 {
                            accepted.push(s);
                        }
                    }
                }
                drv.run_events();
            }
            _ => {
                // The driver resets the device and starts it again.
                drv.reset();
                drv.run_events();
                drv.start(feats, QSIZE);
                rx_bufs = vec![(ARENA, 0); usize::from(QSIZE)];
            }
        }
    }
    drv.run_events();
    drop(drv);
    drop(device);
    // Leftover guest connections to the listeners are refused by closing them.
    for l in &paths._listeners {
        while l.accept().is_ok() {}
    }
    seen_ops
}
