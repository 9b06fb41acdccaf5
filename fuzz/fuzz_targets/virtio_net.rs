//! Fuzz target: virtio-net tx chains of any length and header over any descriptor
//! layout (split, wrong-way, outside guest memory, empty pieces), rx chains of any
//! shape, frames of any length sent into the tap, raw descriptors and ring entries,
//! avail index jumps, notifications before and after DRIVER_OK and resets, against the
//! device on a real tap in a network namespace of the process's own (run as root). The
//! program the input encodes, and what the device must do with it, are in
//! `devices/src/virtio/net/fuzzing.rs`; the device must never panic, never spin, and
//! deliver every frame whole and in order or count it dropped.
//!
//! Run: `cd fuzz && cargo +nightly fuzz run virtio_net -- -max_total_time=600 -max_len=1024`
//! Inputs that found bugs live in `fuzz/regressions/virtio_net/` and are replayed by
//! `cargo test -p husk-devices --test virtio_net fuzz_regressions_replay`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _summary = husk_devices::virtio::net::fuzzing::run(data);
});
