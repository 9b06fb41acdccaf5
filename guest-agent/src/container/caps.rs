//! The five capability sets of a container process.
//!
//! `oci-spec` parses the names (`CAP_SYS_ADMIN`, `SYS_ADMIN`, any case; an unknown name
//! fails the spec's parsing); this module turns them into the kernel's bits and applies
//! them in the order the kernel allows:
//! 1. [`drop_bounding`] while still root with every capability (needs `CAP_SETPCAP`);
//! 2. the uid switch, with `PR_SET_KEEPCAPS` so the permitted set survives it
//!    (see `user.rs`);
//! 3. [`set_sets`]: effective, permitted and inheritable in one `capset`;
//! 4. [`raise_ambient`], one capability at a time.
//!
//! A capability the running kernel does not know (newer than its `CAP_LAST_CAP`) is
//! skipped, as runc does. An absent `process.capabilities` means no capabilities at all.

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};
use rustix::thread::{self, CapabilitySet, CapabilitySets};

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum CapsError {
    /// process.capabilities.bounding: dropping {cap} from the bounding set: {source}
    Bounding {
        cap: String,
        source: rustix::io::Errno,
    },
    /// process.capabilities: setting the effective, permitted and inheritable sets: {0}
    Set(rustix::io::Errno),
    /// process.capabilities.ambient: clearing the ambient set: {0}
    ClearAmbient(rustix::io::Errno),
    /// process.capabilities.ambient: raising {cap}: {source}
    Ambient {
        cap: String,
        source: rustix::io::Errno,
    },
}

/// Every capability with its kernel name, in kernel order.
const NAMES: [(&str, CapabilitySet); 41] = [
    ("CAP_CHOWN", CapabilitySet::CHOWN),
    ("CAP_DAC_OVERRIDE", CapabilitySet::DAC_OVERRIDE),
    ("CAP_DAC_READ_SEARCH", CapabilitySet::DAC_READ_SEARCH),
    ("CAP_FOWNER", CapabilitySet::FOWNER),
    ("CAP_FSETID", CapabilitySet::FSETID),
    ("CAP_KILL", CapabilitySet::KILL),
    ("CAP_SETGID", CapabilitySet::SETGID),
    ("CAP_SETUID", CapabilitySet::SETUID),
    ("CAP_SETPCAP", CapabilitySet::SETPCAP),
    ("CAP_LINUX_IMMUTABLE", CapabilitySet::LINUX_IMMUTABLE),
    ("CAP_NET_BIND_SERVICE", CapabilitySet::NET_BIND_SERVICE),
    ("CAP_NET_BROADCAST", CapabilitySet::NET_BROADCAST),
    ("CAP_NET_ADMIN", CapabilitySet::NET_ADMIN),
    ("CAP_NET_RAW", CapabilitySet::NET_RAW),
    ("CAP_IPC_LOCK", CapabilitySet::IPC_LOCK),
    ("CAP_IPC_OWNER", CapabilitySet::IPC_OWNER),
    ("CAP_SYS_MODULE", CapabilitySet::SYS_MODULE),
    ("CAP_SYS_RAWIO", CapabilitySet::SYS_RAWIO),
    ("CAP_SYS_CHROOT", CapabilitySet::SYS_CHROOT),
    ("CAP_SYS_PTRACE", CapabilitySet::SYS_PTRACE),
    ("CAP_SYS_PACCT", CapabilitySet::SYS_PACCT),
    ("CAP_SYS_ADMIN", CapabilitySet::SYS_ADMIN),
    ("CAP_SYS_BOOT", CapabilitySet::SYS_BOOT),
    ("CAP_SYS_NICE", CapabilitySet::SYS_NICE),
    ("CAP_SYS_RESOURCE", CapabilitySet::SYS_RESOURCE),
    ("CAP_SYS_TIME", CapabilitySet::SYS_TIME),
    ("CAP_SYS_TTY_CONFIG", CapabilitySet::SYS_TTY_CONFIG),
    ("CAP_MKNOD", CapabilitySet::MKNOD),
    ("CAP_LEASE", CapabilitySet::LEASE),
    ("CAP_AUDIT_WRITE", CapabilitySet::AUDIT_WRITE),
    ("CAP_AUDIT_CONTROL", CapabilitySet::AUDIT_CONTROL),
    ("CAP_SETFCAP", CapabilitySet::SETFCAP),
    ("CAP_MAC_OVERRIDE", CapabilitySet::MAC_OVERRIDE),
    ("CAP_MAC_ADMIN", CapabilitySet::MAC_ADMIN),
    ("CAP_SYSLOG", CapabilitySet::SYSLOG),
    ("CAP_WAKE_ALARM", CapabilitySet::WAKE_ALARM),
    ("CAP_BLOCK_SUSPEND", CapabilitySet::BLOCK_SUSPEND),
    ("CAP_AUDIT_READ", CapabilitySet::AUDIT_READ),
    ("CAP_PERFMON", CapabilitySet::PERFMON),
    ("CAP_BPF", CapabilitySet::BPF),
    ("CAP_CHECKPOINT_RESTORE", CapabilitySet::CHECKPOINT_RESTORE),
];

/// The kernel's bit for an OCI capability.
pub fn bit(cap: Capability) -> CapabilitySet {
    match cap {
        Capability::AuditControl => CapabilitySet::AUDIT_CONTROL,
        Capability::AuditRead => CapabilitySet::AUDIT_READ,
        Capability::AuditWrite => CapabilitySet::AUDIT_WRITE,
        Capability::BlockSuspend => CapabilitySet::BLOCK_SUSPEND,
        Capability::Bpf => CapabilitySet::BPF,
        Capability::CheckpointRestore => CapabilitySet::CHECKPOINT_RESTORE,
        Capability::Chown => CapabilitySet::CHOWN,
        Capability::DacOverride => CapabilitySet::DAC_OVERRIDE,
        Capability::DacReadSearch => CapabilitySet::DAC_READ_SEARCH,
        Capability::Fowner => CapabilitySet::FOWNER,
        Capability::Fsetid => CapabilitySet::FSETID,
        Capability::IpcLock => CapabilitySet::IPC_LOCK,
        Capability::IpcOwner => CapabilitySet::IPC_OWNER,
        Capability::Kill => CapabilitySet::KILL,
        Capability::Lease => CapabilitySet::LEASE,
        Capability::LinuxImmutable => CapabilitySet::LINUX_IMMUTABLE,
        Capability::MacAdmin => CapabilitySet::MAC_ADMIN,
        Capability::MacOverride => CapabilitySet::MAC_OVERRIDE,
        Capability::Mknod => CapabilitySet::MKNOD,
        Capability::NetAdmin => CapabilitySet::NET_ADMIN,
        Capability::NetBindService => CapabilitySet::NET_BIND_SERVICE,
        Capability::NetBroadcast => CapabilitySet::NET_BROADCAST,
        Capability::NetRaw => CapabilitySet::NET_RAW,
        Capability::Perfmon => CapabilitySet::PERFMON,
        Capability::Setgid => CapabilitySet::SETGID,
        Capability::Setfcap => CapabilitySet::SETFCAP,
        Capability::Setpcap => CapabilitySet::SETPCAP,
        Capability::Setuid => CapabilitySet::SETUID,
        Capability::SysAdmin => CapabilitySet::SYS_ADMIN,
        Capability::SysBoot => CapabilitySet::SYS_BOOT,
        Capability::SysChroot => CapabilitySet::SYS_CHROOT,
        Capability::SysModule => CapabilitySet::SYS_MODULE,
        Capability::SysNice => CapabilitySet::SYS_NICE,
        Capability::SysPacct => CapabilitySet::SYS_PACCT,
        Capability::SysPtrace => CapabilitySet::SYS_PTRACE,
        Capability::SysRawio => CapabilitySet::SYS_RAWIO,
        Capability::SysResource => CapabilitySet::SYS_RESOURCE,
        Capability::SysTime => CapabilitySet::SYS_TIME,
        Capability::SysTtyConfig => CapabilitySet::SYS_TTY_CONFIG,
        Capability::Syslog => CapabilitySet::SYSLOG,
        Capability::WakeAlarm => CapabilitySet::WAKE_ALARM,
    }
}

/// The bits of a set of OCI capabilities (none for an absent set).
pub fn bits(caps: Option<&Capabilities>) -> CapabilitySet {
    caps.into_iter()
        .flatten()
        .fold(CapabilitySet::empty(), |set, cap| set | bit(*cap))
}

/// The kernel names of the capabilities in `set`, comma-separated.
pub fn names(set: CapabilitySet) -> String {
    NAMES
        .iter()
        .filter(|(_, bit)| set.contains(*bit))
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(",")
}

/// The capabilities the running kernel knows (those `PR_CAPBSET_READ` accepts).
pub fn supported() -> CapabilitySet {
    NAMES
        .iter()
        .filter(|(_, bit)| thread::capability_is_in_bounding_set(*bit).is_ok())
        .fold(CapabilitySet::empty(), |set, (_, bit)| set | *bit)
}

/// The five sets a process asks for, limited to what the kernel knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub bounding: CapabilitySet,
    pub effective: CapabilitySet,
    pub permitted: CapabilitySet,
    pub inheritable: CapabilitySet,
    pub ambient: CapabilitySet,
}

impl Wanted {
    pub fn new(caps: Option<&LinuxCapabilities>, supported: CapabilitySet) -> Wanted {
        let set = |pick: fn(&LinuxCapabilities) -> &Option<Capabilities>| {
            bits(caps.and_then(|c| pick(c).as_ref())) & supported
        };
        Wanted {
            bounding: set(LinuxCapabilities::bounding),
            effective: set(LinuxCapabilities::effective),
            permitted: set(LinuxCapabilities::permitted),
            inheritable: set(LinuxCapabilities::inheritable),
            ambient: set(LinuxCapabilities::ambient),
        }
    }
}

/// The consistency the kernel demands of the sets, checked up front so the error names
/// the set at fault: effective ⊆ permitted, inheritable ⊆ bounding, ambient ⊆ permitted
/// and ambient ⊆ inheritable. Returns (set, capability, the set it is missing from).
pub fn check(caps: &LinuxCapabilities) -> Result<(), (&'static str, String, &'static str)> {
    let w = Wanted::new(Some(caps), CapabilitySet::all());
    let rules = [
        ("effective", w.effective, "permitted", w.permitted),
        ("inheritable", w.inheritable, "bounding", w.bounding),
        ("ambient", w.ambient, "permitted", w.permitted),
        ("ambient", w.ambient, "inheritable", w.inheritable),
    ];
    for (set, subset, missing_from, superset) in rules {
        let extra = subset - superset;
        if !extra.is_empty() {
            return Err((set, names(extra), missing_from));
        }
    }
    Ok(())
}

/// Drops every capability not in `keep` from the bounding set.
pub fn drop_bounding(keep: CapabilitySet, supported: CapabilitySet) -> Result<(), CapsError> {
    for (name, bit) in NAMES {
        if supported.contains(bit) && !keep.contains(bit) {
            thread::remove_capability_from_bounding_set(bit).map_err(|source| {
                CapsError::Bounding {
                    cap: name.to_owned(),
                    source,
                }
            })?;
        }
    }
    Ok(())
}

/// Sets the effective, permitted and inheritable sets.
pub fn set_sets(wanted: &Wanted) -> Result<(), CapsError> {
    thread::set_capabilities(
        None,
        CapabilitySets {
            effective: wanted.effective,
            permitted: wanted.permitted,
            inheritable: wanted.inheritable,
        },
    )
    .map_err(CapsError::Set)
}

/// Replaces the ambient set with `wanted.ambient` (each capability must already be
/// permitted and inheritable).
pub fn raise_ambient(wanted: &Wanted) -> Result<(), CapsError> {
    thread::clear_ambient_capability_set().map_err(CapsError::ClearAmbient)?;
    for (name, bit) in NAMES {
        if wanted.ambient.contains(bit) {
            thread::configure_capability_in_ambient_set(bit, true).map_err(|source| {
                CapsError::Ambient {
                    cap: name.to_owned(),
                    source,
                }
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Capabilities, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn names_table_is_in_kernel_order() {
        for (i, (_, bit)) in NAMES.iter().enumerate() {
            assert_eq!(bit.bits(), 1u64 << i, "{}", NAMES[i].0);
        }
    }

    #[test]
    fn parses_names_in_every_accepted_form() -> Result<(), serde_json::Error> {
        let caps = parse(r#"["CAP_SYS_ADMIN", "NET_RAW", "cap_chown", "CAP_CHECKPOINT_RESTORE"]"#)?;
        let set = bits(Some(&caps));
        assert_eq!(set.bits(), (1 << 21) | (1 << 13) | 1 | (1 << 40));
        assert_eq!(
            names(set),
            "CAP_CHOWN,CAP_NET_RAW,CAP_SYS_ADMIN,CAP_CHECKPOINT_RESTORE"
        );
        Ok(())
    }

    #[test]
    fn every_oci_capability_maps_to_its_kernel_name() -> Result<(), serde_json::Error> {
        for (name, expected) in NAMES {
            let caps = parse(&format!("[\"{name}\"]"))?;
            assert_eq!(bits(Some(&caps)), expected, "{name}");
        }
        Ok(())
    }

    #[test]
    fn unknown_capability_is_a_parse_error() {
        assert!(parse(r#"["CAP_BOGUS"]"#).is_err());
    }

    #[test]
    fn absent_sets_are_empty_and_unsupported_bits_dropped() -> Result<(), serde_json::Error> {
        let caps: LinuxCapabilities =
            serde_json::from_str(r#"{"bounding": ["CAP_KILL", "CAP_BPF"]}"#)?;
        let w = Wanted::new(Some(&caps), CapabilitySet::KILL | CapabilitySet::CHOWN);
        assert_eq!(w.bounding, CapabilitySet::KILL);
        assert!(w.effective.is_empty() && w.ambient.is_empty());
        let none = Wanted::new(None, CapabilitySet::all());
        assert!(none.bounding.is_empty() && none.permitted.is_empty());
        Ok(())
    }

    #[test]
    fn supported_includes_the_classics() {
        let s = supported();
        assert!(
            s.contains(CapabilitySet::CHOWN | CapabilitySet::SYS_ADMIN | CapabilitySet::AUDIT_READ)
        );
    }
}
