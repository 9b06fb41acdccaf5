//! The library target of `husk-agent`: its container code (`mod.rs`, the same files the
//! binary compiles as its `container` module) with the fuzzing harness, for the fuzz
//! target `oci_spec` (`fuzz/`) and the tests, and its network configuration
//! (`network.rs`, the binary's `network` module), for the tests. The container code is
//! there only with the `fuzzing` feature; the agent is the binary (`src/main.rs`).

#[cfg(feature = "fuzzing")]
#[path = "mod.rs"]
pub mod container;

#[cfg(feature = "fuzzing")]
pub use container::fuzzing;

#[path = "../network.rs"]
pub mod network;
