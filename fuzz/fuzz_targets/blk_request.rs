//! Fuzz target: virtio-blk requests of any type, sector and length over any descriptor
//! layout (split, wrong-way, out of order, outside guest memory, padded, indirect, cut
//! short by loops), raw descriptors and ring entries, avail index jumps, notifications
//! before and after DRIVER_OK and resets, against a writable or read-only drive on a
//! small real file. The program the input encodes, and the reference model every
//! request is checked against, are in `devices/src/virtio/block/fuzzing.rs`; the device
//! must never panic and always do what the model says.
//!
//! Run: `cd fuzz && cargo +nightly fuzz run blk_request -- -max_total_time=600`
//! Inputs that found bugs live in `fuzz/regressions/blk_request/` and are replayed by
//! `cargo test -p husk-devices --test virtio_block fuzz_regressions_replay`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _summary = husk_devices::virtio::block::fuzzing::run(data);
});
