//! Fuzz target: the bytes a peer sends on a control connection, decoded as the agent
//! decodes them (a hello, then requests: each frame as JSON, its id picked out, then a
//! `Request`, and the payloads decoded when the call is served) and as the runtime
//! decodes them (a hello reply, then responses and events), through the same
//! `read_frame` both use, over a reader that hands the bytes over in small pieces. No
//! decoder may panic, and whatever decodes must encode and decode to the same value. The
//! harness is `guest-agent/protocol/src/fuzzing.rs`.
//!
//! Run: `cd fuzz && cargo +nightly fuzz run protocol_decode -- -max_total_time=600`
//! Inputs that found bugs live in `fuzz/regressions/protocol_decode/` and are replayed by
//! `cargo test -p husk-protocol --test fuzz_harness fuzz_regressions_replay`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _summary = husk_protocol::fuzzing::decode(data);
});
