//! Containers from OCI runtime specs: checking a spec, creating the container's process
//! in its namespaces (`spawn`, `setup`), and the cgroup and seccomp pieces.

pub mod caps;
pub mod cgroups;
pub mod devices;
// The fuzzing harness (`husk_agent::fuzzing`, see lib.rs); the agent binary does not use it.
#[cfg(feature = "fuzzing")]
#[allow(dead_code)]
pub mod fuzzing;
pub mod mounts;
pub mod overlay;
pub mod seccomp;
pub mod setup;
pub mod spawn;
pub mod user;

use std::collections::HashSet;
use std::path::Path;

use oci_spec::runtime::{LinuxDeviceType, LinuxNamespaceType, Process, Spec};

/// A spec the agent will not run. Each message names the spec field at fault.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum SpecError {
    /// process: missing (the spec has no process to run)
    NoProcess,
    /// process.args: empty (nothing to execute)
    NoArgs,
    /// process.args[{0}]: contains a NUL byte
    NulInArg(usize),
    /// process.env[{0}]: contains a NUL byte
    NulInEnv(usize),
    /// process.cwd {0:?}: not an absolute path
    RelativeCwd(String),
    /// process.user.username {0:?}: not supported on Linux (a Windows-only field); give the user as numeric process.user.uid and gid
    Username(String),
    /// process.capabilities.{set}: {cap} is not in process.capabilities.{missing_from}
    Capability {
        set: &'static str,
        cap: String,
        missing_from: &'static str,
    },
    /// root.path: missing
    NoRoot,
    /// {0}
    Seccomp(#[from] seccomp::SeccompError),
    /// mounts[{index}].destination {path:?}: not an absolute path
    RelativeMount { index: usize, path: String },
    /// mounts[{index}].destination: a mount on / would hide the rootfs
    MountOnRoot { index: usize },
    /// mounts[{index}] ({path}): no type, and not a bind mount
    NoMountType { index: usize, path: String },
    /// mounts[{index}] ({path}): {why}
    MountOptions {
        index: usize,
        path: String,
        why: String,
    },
    /// linux.namespaces[{index}].type {name:?}: unknown namespace type (one of mount, cgroup, uts, ipc, user, pid, network, time)
    UnknownNamespace { index: usize, name: String },
    /// the spec is not a valid OCI runtime spec: {0}
    Parse(String),
    /// linux.namespaces: {0} namespaces are not supported (the agent runs containers without uid mapping)
    UnsupportedNamespace(String),
    /// linux.namespaces: the {0} namespace is listed twice
    DuplicateNamespace(String),
    /// hostname {0:?}: set without a UTS namespace in linux.namespaces (it would rename the sandbox)
    HostnameWithoutUts(String),
    /// domainname {0:?}: set without a UTS namespace in linux.namespaces
    DomainnameWithoutUts(String),
    /// linux.rootfsPropagation {0:?}: unknown (one of private, rprivate, slave, rslave, shared, rshared, unbindable, runbindable)
    Propagation(String),
    /// linux.devices[{index}].path {path:?}: not an absolute path
    RelativeDevice { index: usize, path: String },
    /// linux.devices[{index}].type: "a" is not a device type (c, b, u or p)
    DeviceType { index: usize },
    /// linux.{field}[{index}] {path:?}: not an absolute path
    RelativePath {
        field: &'static str,
        index: usize,
        path: String,
    },
}

/// Checks a container's spec before anything starts. Every error names the field at fault.
///
/// What it checks: a process with non-empty args (no NUL bytes in args or env), an
/// absolute cwd, numeric user (`process.user.username` is a Windows-only field in the
/// OCI spec and is refused: Linux containers name their user by `uid`/`gid`, which the
/// spec's types already make numbers), consistent capability sets, `root.path`, absolute
/// mount destinations with a type (or bind options) and known options, no user
/// namespace, no namespace listed twice, a UTS namespace if `hostname`/`domainname` are
/// set, a known `rootfsPropagation`, absolute device/masked/read-only paths.
///
/// Unknown namespace types never reach this function: `oci-spec`'s deserializer refuses
/// them while parsing the spec ("unknown variant `foo`, expected one of `mount`, `cgroup`,
/// `uts`, `ipc`, `user`, `pid`, `network`, `time`"), so that error comes from whoever parses
/// the JSON; [`parse_spec`] gives it with the field's name.
pub fn validate(spec: &Spec) -> Result<(), SpecError> {
    validate_process(spec.process().as_ref().ok_or(SpecError::NoProcess)?)?;
    let root = spec.root().as_ref().ok_or(SpecError::NoRoot)?;
    if root.path().as_os_str().is_empty() {
        return Err(SpecError::NoRoot);
    }
    for (index, mount) in spec.mounts().iter().flatten().enumerate() {
        let dest = mount.destination();
        let path = dest.display().to_string();
        if !dest.is_absolute() {
            return Err(SpecError::RelativeMount { index, path });
        }
        if dest == Path::new("/") {
            return Err(SpecError::MountOnRoot { index });
        }
        let options = mounts::parse_options(mount.options().as_deref().unwrap_or_default())
            .map_err(|why| SpecError::MountOptions {
                index,
                path: path.clone(),
                why: why.to_string(),
            })?;
        if mount.typ().is_none() && !options.bind {
            return Err(SpecError::NoMountType { index, path });
        }
    }
    let linux = spec.linux().as_ref();
    let namespaces = linux.and_then(|l| l.namespaces().as_ref());
    let mut seen = HashSet::new();
    for ns in namespaces.into_iter().flatten() {
        let typ = ns.typ();
        if typ == LinuxNamespaceType::User {
            return Err(SpecError::UnsupportedNamespace(typ.to_string()));
        }
        if !seen.insert(typ) {
            return Err(SpecError::DuplicateNamespace(typ.to_string()));
        }
    }
    if !seen.contains(&LinuxNamespaceType::Uts) {
        if let Some(name) = spec.hostname().as_ref().filter(|h| !h.is_empty()) {
            return Err(SpecError::HostnameWithoutUts(name.clone()));
        }
        if let Some(name) = spec.domainname().as_ref().filter(|h| !h.is_empty()) {
            return Err(SpecError::DomainnameWithoutUts(name.clone()));
        }
    }
    let Some(linux) = linux else {
        return Ok(());
    };
    if let Some(value) = linux
        .rootfs_propagation()
        .as_ref()
        .filter(|v| !v.is_empty())
    {
        if mounts::parse_propagation(value).is_none() {
            return Err(SpecError::Propagation(value.clone()));
        }
    }
    for (index, device) in linux.devices().iter().flatten().enumerate() {
        if !device.path().is_absolute() {
            return Err(SpecError::RelativeDevice {
                index,
                path: device.path().display().to_string(),
            });
        }
        if device.typ() == LinuxDeviceType::A {
            return Err(SpecError::DeviceType { index });
        }
    }
    for (field, paths) in [
        ("maskedPaths", linux.masked_paths()),
        ("readonlyPaths", linux.readonly_paths()),
    ] {
        for (index, path) in paths.iter().flatten().enumerate() {
            if !Path::new(path).is_absolute() {
                return Err(SpecError::RelativePath {
                    field,
                    index,
                    path: path.clone(),
                });
            }
        }
    }
    Ok(())
}

/// The namespace type names of the OCI spec (and `oci-spec`).
const NAMESPACE_TYPES: [&str; 8] = [
    "mount", "cgroup", "uts", "ipc", "user", "pid", "network", "time",
];

/// Parses a spec from JSON, naming an unknown namespace type by its field
/// (`linux.namespaces[1].type "bogus": unknown namespace type ...`) rather than with
/// serde's bare "unknown variant" (which `oci-spec`'s deserializer gives, and which would
/// fail a whole protocol frame if the spec were decoded along with it). Other parse errors
/// come back as serde's message.
pub fn parse_spec(mut value: serde_json::Value) -> Result<Spec, SpecError> {
    if let Some(profile) = value.pointer_mut("/linux/seccomp") {
        seccomp::prepare_json(profile)?;
    }
    if let Some(namespaces) = value
        .get("linux")
        .and_then(|l| l.get("namespaces"))
        .and_then(|n| n.as_array())
    {
        for (index, ns) in namespaces.iter().enumerate() {
            let name = ns.get("type").and_then(|t| t.as_str()).unwrap_or_default();
            if !NAMESPACE_TYPES.contains(&name) {
                return Err(SpecError::UnknownNamespace {
                    index,
                    name: name.to_owned(),
                });
            }
        }
    }
    serde_json::from_value(value).map_err(|e| SpecError::Parse(e.to_string()))
}

/// Checks the process part of a spec (also the process of an exec).
pub fn validate_process(process: &Process) -> Result<(), SpecError> {
    let args = process.args().as_deref().unwrap_or_default();
    if args.first().is_none_or(|a| a.is_empty()) {
        return Err(SpecError::NoArgs);
    }
    if let Some(i) = args.iter().position(|a| a.contains('\0')) {
        return Err(SpecError::NulInArg(i));
    }
    let env = process.env().as_deref().unwrap_or_default();
    if let Some(i) = env.iter().position(|e| e.contains('\0')) {
        return Err(SpecError::NulInEnv(i));
    }
    let cwd = process.cwd();
    if !cwd.as_os_str().is_empty() && !cwd.is_absolute() {
        return Err(SpecError::RelativeCwd(cwd.display().to_string()));
    }
    if let Some(name) = process.user().username() {
        return Err(SpecError::Username(name.clone()));
    }
    if let Some(c) = process.capabilities() {
        caps::check(c).map_err(|(set, cap, missing_from)| SpecError::Capability {
            set,
            cap,
            missing_from,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Result<Spec, serde_json::Error> {
        serde_json::from_str(json)
    }

    const GOOD: &str = r#"{
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs"},
        "process": {"user": {"uid": 0, "gid": 0}, "args": ["sh"], "cwd": "/"},
        "hostname": "box",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "uts"}, {"type": "mount"}]}
    }"#;

    fn check(edit: impl FnOnce(&mut serde_json::Value)) -> Result<(), String> {
        let mut value: serde_json::Value = serde_json::from_str(GOOD).map_err(|e| e.to_string())?;
        edit(&mut value);
        let spec: Spec = serde_json::from_value(value).map_err(|e| e.to_string())?;
        validate(&spec).map_err(|e| e.to_string())
    }

    #[test]
    fn good_spec_passes() {
        assert_eq!(check(|_| {}), Ok(()));
    }

    #[test]
    fn errors_name_the_field() {
        type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
        let cases: Vec<(Edit, &str)> =
            vec![
            (Box::new(|v| v["process"] = serde_json::Value::Null), "process: missing"),
            (Box::new(|v| v["process"]["args"] = serde_json::json!([])), "process.args: empty"),
            (Box::new(|v| v["root"] = serde_json::Value::Null), "root.path: missing"),
            (Box::new(|v| v["root"]["path"] = "".into()), "root.path: missing"),
            (
                Box::new(|v| v["mounts"][0]["destination"] = "proc".into()),
                "mounts[0].destination \"proc\": not an absolute path",
            ),
            (
                Box::new(|v| v["mounts"][0]["destination"] = "/".into()),
                "mounts[0].destination: a mount on /",
            ),
            (
                Box::new(|v| v["mounts"][0]["options"] = serde_json::json!(["idmap"])),
                "mounts[0] (/proc): ",
            ),
            (
                Box::new(|v| v["linux"]["namespaces"][1]["type"] = "pid".into()),
                "linux.namespaces: the pid namespace is listed twice",
            ),
            (
                Box::new(|v| v["linux"]["namespaces"][1]["type"] = "user".into()),
                "linux.namespaces: user namespaces are not supported",
            ),
            (
                Box::new(|v| v["linux"]["namespaces"][1]["type"] = "ipc".into()),
                "hostname \"box\": set without a UTS namespace",
            ),
            (
                Box::new(|v| v["process"]["user"]["username"] = "nobody".into()),
                "process.user.username \"nobody\": not supported on Linux",
            ),
            (
                Box::new(|v| v["process"]["cwd"] = "work".into()),
                "process.cwd \"work\": not an absolute path",
            ),
            (
                Box::new(|v| v["linux"]["rootfsPropagation"] = "sideways".into()),
                "linux.rootfsPropagation \"sideways\": unknown",
            ),
            (
                Box::new(|v| v["linux"]["maskedPaths"] = serde_json::json!(["proc/kcore"])),
                "linux.maskedPaths[0] \"proc/kcore\": not an absolute path",
            ),
            (
                Box::new(|v| {
                    v["linux"]["devices"] =
                        serde_json::json!([{"path": "dev/x", "type": "c", "major": 1, "minor": 3}])
                }),
                "linux.devices[0].path \"dev/x\": not an absolute path",
            ),
            (
                Box::new(|v| {
                    v["process"]["capabilities"] = serde_json::json!({
                        "effective": ["CAP_KILL"], "permitted": []
                    })
                }),
                "process.capabilities.effective: CAP_KILL is not in process.capabilities.permitted",
            ),
            (
                Box::new(|v| {
                    v["process"]["capabilities"] = serde_json::json!({
                        "ambient": ["CAP_KILL"], "permitted": ["CAP_KILL"]
                    })
                }),
                "process.capabilities.ambient: CAP_KILL is not in process.capabilities.inheritable",
            ),
        ];
        for (edit, expected) in cases {
            let got = check(edit);
            assert!(
                got.as_ref().is_err_and(|e| e.starts_with(expected)),
                "expected an error starting with {expected:?}, got {got:?}"
            );
        }
    }

    #[test]
    fn unknown_namespace_type_is_a_parse_error_naming_it() {
        let json = GOOD.replace(r#"{"type": "uts"}"#, r#"{"type": "bogus"}"#);
        let error = spec(&json).map(|_| ()).map_err(|e| e.to_string());
        assert!(
            error
                .as_ref()
                .is_err_and(|e| e.contains("unknown variant `bogus`")),
            "{error:?}"
        );
    }

    #[test]
    fn parse_spec_names_an_unknown_namespace_type() -> Result<(), serde_json::Error> {
        let json = GOOD.replace(r#"{"type": "uts"}"#, r#"{"type": "bogus"}"#);
        let error = parse_spec(serde_json::from_str(&json)?)
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert_eq!(
            error,
            Err(
                "linux.namespaces[1].type \"bogus\": unknown namespace type (one of mount, \
                 cgroup, uts, ipc, user, pid, network, time)"
                    .to_owned()
            )
        );
        assert!(parse_spec(serde_json::from_str(GOOD)?).is_ok());
        let bad_uid = GOOD.replace(r#""uid": 0"#, r#""uid": "root""#);
        let error = parse_spec(serde_json::from_str(&bad_uid)?)
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert!(
            error
                .as_ref()
                .is_err_and(|e| e.starts_with("the spec is not a valid OCI runtime spec: ")),
            "{error:?}"
        );
        Ok(())
    }

    #[test]
    fn non_numeric_uid_is_a_parse_error() {
        let json = GOOD.replace(r#""uid": 0"#, r#""uid": "root""#);
        assert!(spec(&json).is_err());
    }
}
