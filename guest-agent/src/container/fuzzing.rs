//! The fuzzing harness for the agent's OCI spec handling (`fuzz/fuzz_targets/oci_spec.rs`),
//! also run by the ordinary tests (`guest-agent/tests/oci_spec_fuzz.rs`). It is reached
//! as `husk_agent::fuzzing` through the library target (`lib.rs`, feature `fuzzing`);
//! the agent binary does not use it.
//!
//! [`oci_spec`] reads the input as the JSON of a `CreateContainer` spec and runs it
//! through everything the agent computes from a spec before it touches the system, in
//! the order the agent does: [`parse_spec`] (with the seccomp profile's preparation),
//! [`validate`], the spawn plan's JSON round trip to the helper (which parses and
//! validates the spec again), the process checks of an exec, the capability sets, mount
//! options and propagation, the `/dev` plan, the seccomp compiler and the cgroup
//! settings; `linux.resources` is also decoded on its own, as `UpdateResources` does.
//! Nothing is spawned, mounted or written.
//!
//! A finding is a panic: the agent's, or a failed invariant: the spawn plan of a spec
//! the agent accepted must reach the helper unchanged, and still valid.

use std::path::PathBuf;

use oci_spec::runtime::{LinuxResources, Spec};
use rustix::thread::CapabilitySet;

use super::spawn::{SpawnKind, SpawnPlan};
use super::{
    caps, cgroups, devices, mounts, parse_spec, seccomp, user, validate, validate_process,
};

/// How far one input got (for tests that check the harness gets somewhere).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The input is JSON.
    pub json: bool,
    /// `linux.resources` decoded on its own (`UpdateResources`) into this many cgroup
    /// settings (`None`: decoded, but refused).
    pub update_resources: Option<Option<usize>>,
    /// `parse_spec` took it.
    pub parsed: bool,
    /// `validate` took it (the agent would create the container).
    pub valid: bool,
    /// The process passed the checks of an exec.
    pub process_valid: bool,
    /// The seccomp profile compiled, into a program of this many instructions.
    pub seccomp: Option<usize>,
    /// The cgroup settings `linux.resources` asks for (`None`: refused or absent).
    pub cgroup_settings: Option<usize>,
}

/// Runs the spec handling over `data` (see the module docs).
pub fn oci_spec(data: &[u8]) -> Summary {
    let mut summary = Summary::default();
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return summary;
    };
    summary.json = true;
    if let Some(resources) = value.pointer("/linux/resources") {
        if let Ok(resources) = serde_json::from_value::<LinuxResources>(resources.clone()) {
            summary.update_resources = Some(cgroups::settings(&resources).ok().map(|s| s.len()));
        }
    }
    let Ok(spec) = parse_spec(value) else {
        return summary;
    };
    summary.parsed = true;
    summary.valid = validate(&spec).is_ok();
    if summary.valid {
        spawn_plan_round_trip(&spec);
    }

    if let Some(process) = spec.process() {
        summary.process_valid = validate_process(process).is_ok();
        let wanted = caps::Wanted::new(process.capabilities().as_ref(), CapabilitySet::all());
        let _ = caps::names(wanted.bounding | wanted.ambient);
        if let Some(c) = process.capabilities() {
            let _ = caps::check(c);
        }
        let _ = user::umask(process.user());
    }
    for mount in spec.mounts().iter().flatten() {
        let _ = mounts::parse_options(mount.options().as_deref().unwrap_or_default());
    }
    let _ = devices::DevPlan::new(spec.mounts().as_deref().unwrap_or_default());
    if let Some(linux) = spec.linux() {
        if let Some(propagation) = linux.rootfs_propagation() {
            let _ = mounts::parse_propagation(propagation);
        }
        if let Some(profile) = linux.seccomp() {
            summary.seccomp = seccomp::compile(profile).ok().map(|p| p.len());
        }
        if let Some(resources) = linux.resources() {
            summary.cgroup_settings = cgroups::settings(resources).ok().map(|s| s.len());
        }
    }
    summary
}

/// The agent sends an accepted spec to its helper as JSON (`spawn::spawn`); the helper
/// parses it and validates it again. Both must give back what the agent had.
fn spawn_plan_round_trip(spec: &Spec) {
    let init = SpawnPlan {
        container_id: "c".to_owned(),
        kind: SpawnKind::Init {
            spec: spec.clone(),
            rootfs: PathBuf::from("/rootfs"),
        },
        cgroup: None,
        terminal: false,
    };
    let json = serde_json::to_vec(&init).expect("a spawn plan encodes");
    let back: SpawnPlan = match serde_json::from_slice(&json) {
        Ok(back) => back,
        Err(e) => panic!(
            "the helper cannot parse the spawn plan of an accepted spec: {e}\n{}",
            String::from_utf8_lossy(&json)
        ),
    };
    let SpawnKind::Init { spec: back, .. } = back.kind else {
        panic!("the spawn plan changed kind");
    };
    assert_eq!(&back, spec, "the spec changed on its way to the helper");
    if let Err(e) = validate(&back) {
        panic!("the helper refuses a spec the agent accepted: {e}");
    }
}
