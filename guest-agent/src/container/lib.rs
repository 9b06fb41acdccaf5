//! The library target of `husk-agent`: its container code (`mod.rs`, the same files the
//! binary compiles as its `container` module) with the fuzzing harness, for the fuzz
//! target `oci_spec` (`fuzz/`) and the tests. Empty without the `fuzzing` feature; the
//! agent is the binary (`src/main.rs`).

#[cfg(feature = "fuzzing")]
#[path = "mod.rs"]
pub mod container;

#[cfg(feature = "fuzzing")]
pub use container::fuzzing;
