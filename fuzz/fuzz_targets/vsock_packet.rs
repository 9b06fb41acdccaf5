//! Fuzz target: arbitrary tx-queue contents (headers, payloads, descriptor layouts),
//! rx buffers, ring indexes and host-socket activity against a started vsock device.
//! The program the input encodes is described in
//! `devices/src/virtio/vsock/fuzzing.rs`; the device must never panic.
//!
//! Run: `cd fuzz && cargo +nightly fuzz run vsock_packet`
//! Inputs that found bugs live in `fuzz/regressions/vsock_packet/` and are replayed by
//! `cargo test -p husk-devices --test virtio_vsock fuzz_regressions_replay`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ops = husk_devices::virtio::vsock::fuzzing::run(data);
});
