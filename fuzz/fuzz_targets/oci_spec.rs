//! Fuzz target: the JSON of a `CreateContainer` spec, through everything the agent
//! computes from a spec before it touches the system: `parse_spec` (with the seccomp
//! profile's preparation), `validate`, the spawn plan's JSON round trip to the helper,
//! the exec process checks, capability sets, mount options and propagation, the `/dev`
//! plan, the seccomp compiler and the cgroup settings (also of `linux.resources` decoded
//! alone, as `UpdateResources` does). Nothing is spawned, mounted or written. No step may
//! panic, and a spec the agent accepts must reach its helper unchanged and still valid.
//! The harness is `guest-agent/src/container/fuzzing.rs`.
//!
//! Run: `cd fuzz && cargo +nightly fuzz run oci_spec -- -max_total_time=600`
//! Inputs that found bugs live in `fuzz/regressions/oci_spec/` and are replayed by
//! `cargo test -p husk-agent --test oci_spec_fuzz fuzz_regressions_replay`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _summary = husk_agent::fuzzing::oci_spec(data);
});
