//! The container's OCI runtime spec: read from a bundle, or made for an image or a bare
//! root file system the way runc's `spec` would, with the image's defaults.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Process, Spec, User};

use husk_storage::ImageDefaults;

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum SpecError {
    /// bundle {0} has no config.json
    NoConfig(PathBuf),
    /// cannot read {path}: {source}
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// {path}: {message}
    Invalid { path: PathBuf, message: String },
    /// the root file system {0} is not a directory
    NoRootfs(PathBuf),
    /// --user {0:?}: give a numeric UID[:GID]
    BadUser(String),
    /// no command to run: give one after `--`, or use an image that has one
    NoCommand,
}

/// A bundle's spec and the absolute path of its root file system.
pub fn load_bundle(bundle: &Path) -> Result<(Spec, PathBuf), SpecError> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => SpecError::NoConfig(bundle.to_owned()),
        _ => SpecError::Read {
            path: path.clone(),
            source,
        },
    })?;
    let spec = parse(&text).map_err(|message| SpecError::Invalid {
        path: path.clone(),
        message,
    })?;
    let invalid = |message: &str| SpecError::Invalid {
        path: path.clone(),
        message: message.to_owned(),
    };
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| invalid("root: missing (the container needs a root file system)"))?;
    if spec.process().is_none() {
        return Err(invalid(
            "process: missing (the container needs a process to run)",
        ));
    }
    if spec
        .process()
        .as_ref()
        .and_then(|p| p.args().as_ref())
        .is_none_or(|args| args.is_empty())
    {
        return Err(invalid("process.args: empty (nothing to run)"));
    }
    let rootfs = bundle.join(root.path());
    if !rootfs.is_dir() {
        return Err(SpecError::NoRootfs(rootfs));
    }
    Ok((spec, rootfs))
}

/// Parses a spec, naming the field (as a JSON path) that is wrong.
pub fn parse(text: &[u8]) -> Result<Spec, String> {
    let mut json = serde_json::Deserializer::from_slice(text);
    serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let path = e.path().to_string();
        match path.as_str() {
            "." | "" => e.inner().to_string(),
            _ => format!("{path}: {}", e.inner()),
        }
    })
}

/// What `husk run` asks of a container made from an image or a directory.
#[derive(Debug, Clone, Default)]
pub struct ProcessOverrides {
    /// Replaces the image's command (its entrypoint stays).
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub user: Option<String>,
    pub terminal: bool,
    pub hostname: Option<String>,
}

/// A spec like runc's default one, running what the image and the overrides say.
pub fn for_image(
    defaults: &ImageDefaults,
    overrides: &ProcessOverrides,
    rootfs: &Path,
) -> Result<Spec, SpecError> {
    // The command replaces the image's cmd; its entrypoint stays.
    let mut args = defaults.entrypoint.clone();
    match overrides.command.is_empty() {
        true => args.extend(defaults.cmd.iter().cloned()),
        false => args.extend(overrides.command.iter().cloned()),
    }
    let mut env = defaults.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    let user = match &defaults.user {
        Some(user) if !user.is_empty() => parse_user(user)?,
        _ => User::default(),
    };
    let mut process = Process::default();
    process
        .set_args(Some(args))
        .set_env(Some(env))
        .set_user(user)
        .set_cwd(
            defaults
                .working_dir
                .clone()
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| "/".into())
                .into(),
        );
    let mut spec = Spec::default();
    spec.set_process(Some(process)).set_hostname(Some(
        overrides.hostname.clone().unwrap_or_else(|| "husk".into()),
    ));
    if let Some(root) = spec.root_mut() {
        root.set_path(rootfs.to_owned()).set_readonly(Some(false));
    }
    let overrides = ProcessOverrides {
        command: Vec::new(),
        ..overrides.clone()
    };
    apply_overrides(&mut spec, &overrides)?;
    Ok(spec)
}

/// Applies the command line's wishes to a spec's process: the command replaces its
/// args, variables replace ones of the same name, and the user and terminal are set.
pub fn apply_overrides(spec: &mut Spec, overrides: &ProcessOverrides) -> Result<(), SpecError> {
    let mut process = spec.process().clone().unwrap_or_default();
    if !overrides.command.is_empty() {
        process.set_args(Some(overrides.command.clone()));
    }
    let mut env = process.env().clone().unwrap_or_default();
    for pair in &overrides.env {
        let key = pair.split('=').next().unwrap_or(pair);
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(pair.clone());
    }
    if overrides.terminal {
        process.set_terminal(Some(true));
        if !env.iter().any(|e| e.starts_with("TERM=")) {
            env.push("TERM=xterm".into());
        }
    }
    process.set_env(Some(env));
    if let Some(user) = &overrides.user {
        process.set_user(parse_user(user)?);
    }
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(SpecError::NoCommand);
    }
    spec.set_process(Some(process));
    Ok(())
}

/// `UID[:GID]`, numbers only (names would need the image's /etc/passwd).
pub fn parse_user(user: &str) -> Result<User, SpecError> {
    let bad = || SpecError::BadUser(user.to_owned());
    let (uid, gid) = match user.split_once(':') {
        Some((uid, gid)) => (uid, Some(gid)),
        None => (user, None),
    };
    let uid: u32 = uid.parse().map_err(|_| bad())?;
    let gid: u32 = match gid {
        Some(gid) => gid.parse().map_err(|_| bad())?,
        None => uid,
    };
    let mut parsed = User::default();
    parsed.set_uid(uid).set_gid(gid);
    Ok(parsed)
}

/// The path of the network namespace the spec (as JSON) joins, if it names one: CNI's
/// namespace of a pod, `/var/run/netns/cni-…`.
pub fn network_namespace_path(spec: &serde_json::Value) -> Option<PathBuf> {
    network_namespaces(spec)
        .find_map(|namespace| namespace.get("path")?.as_str())
        .map(PathBuf::from)
}

/// Where a container finds its resolver configuration.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The spec for a container in a VM, whose network is the pod's: it stays in the VM's
/// network namespace rather than joining a host path, which the guest has not got; and
/// a host file bound at `/etc/resolv.conf` (CRI's per-pod one) becomes the guest's,
/// which the agent writes from the same file's contents ([`resolver`]).
pub fn for_vm(spec: &serde_json::Value) -> serde_json::Value {
    let mut spec = spec.clone();
    if let Some(namespaces) = spec
        .pointer_mut("/linux/namespaces")
        .and_then(|n| n.as_array_mut())
    {
        namespaces.retain(|namespace| !(is_network(namespace) && namespace.get("path").is_some()));
    }
    if let Some(mounts) = spec.get_mut("mounts").and_then(|m| m.as_array_mut()) {
        for mount in mounts.iter_mut().filter(|m| is_resolv_conf(m)) {
            mount["source"] = RESOLV_CONF.into();
        }
    }
    spec
}

/// The name servers and search domains of the host file the spec binds at
/// `/etc/resolv.conf`, if it binds one that can be read: what a VM's agent writes into
/// the guest's own `/etc/resolv.conf`.
pub fn resolver(spec: &serde_json::Value) -> Option<(Vec<String>, Vec<String>)> {
    let mounts = spec.get("mounts")?.as_array()?;
    let source = mounts
        .iter()
        .filter(|m| is_resolv_conf(m))
        .find_map(|m| m.get("source")?.as_str())?;
    match std::fs::read_to_string(source) {
        Ok(text) => Some(parse_resolv_conf(&text)),
        Err(e) => {
            log::warn!("the spec's {RESOLV_CONF}, {source}: {e}");
            None
        }
    }
}

fn is_resolv_conf(mount: &serde_json::Value) -> bool {
    mount.get("destination").and_then(|d| d.as_str()) == Some(RESOLV_CONF)
}

/// `nameserver` and `search` lines of a resolv.conf (the last `search` wins, as for the
/// C library); options and comments are left out.
fn parse_resolv_conf(text: &str) -> (Vec<String>, Vec<String>) {
    let (mut servers, mut search) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => servers.extend(words.next().map(str::to_owned)),
            Some("search") => search = words.map(str::to_owned).collect(),
            _ => {}
        }
    }
    (servers, search)
}

fn network_namespaces(spec: &serde_json::Value) -> impl Iterator<Item = &serde_json::Value> {
    spec.pointer("/linux/namespaces")
        .and_then(|n| n.as_array())
        .into_iter()
        .flatten()
        .filter(|namespace| is_network(namespace))
}

fn is_network(namespace: &serde_json::Value) -> bool {
    namespace.get("type").and_then(|t| t.as_str()) == Some("network")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_field_is_named() {
        let err = parse(
            br#"{"ociVersion": "1.0.2", "process": {"user": {"uid": "x", "gid": 0}, "cwd": "/"}}"#,
        )
        .unwrap_err();
        assert!(err.starts_with("process.user.uid:"), "{err}");
        let err = parse(b"{").unwrap_err();
        assert!(err.contains("EOF"), "{err}");
        let err = parse(br#"{"ociVersion": "1.0.2", "mounts": [{"destination": 5}]}"#).unwrap_err();
        assert!(err.starts_with("mounts[0].destination:"), "{err}");
    }

    #[test]
    fn image_defaults_and_overrides() {
        let defaults = ImageDefaults {
            env: vec!["PATH=/bin".into(), "A=1".into()],
            entrypoint: vec!["/bin/tini".into()],
            cmd: vec!["sh".into()],
            working_dir: Some("/work".into()),
            user: Some("7:8".into()),
        };
        let spec = for_image(&defaults, &ProcessOverrides::default(), Path::new("/r")).unwrap();
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.args().as_ref().unwrap(), &["/bin/tini", "sh"]);
        assert_eq!(process.cwd(), Path::new("/work"));
        assert_eq!((process.user().uid(), process.user().gid()), (7, 8));

        let overrides = ProcessOverrides {
            command: vec!["echo".into(), "hi".into()],
            env: vec!["A=2".into()],
            user: Some("0".into()),
            ..Default::default()
        };
        let spec = for_image(&defaults, &overrides, Path::new("/r")).unwrap();
        let process = spec.process().as_ref().unwrap();
        assert_eq!(
            process.args().as_ref().unwrap(),
            &["/bin/tini", "echo", "hi"]
        );
        assert_eq!(process.env().as_ref().unwrap(), &["PATH=/bin", "A=2"]);
        assert_eq!(process.user().uid(), 0);

        let empty = ImageDefaults::default();
        assert!(matches!(
            for_image(&empty, &ProcessOverrides::default(), Path::new("/r")),
            Err(SpecError::NoCommand)
        ));
        assert!(parse_user("root").is_err());
        assert!(parse_user("1:x").is_err());
    }

    #[test]
    fn a_vm_keeps_its_own_network_namespace() {
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": { "namespaces": [
                { "type": "pid" },
                { "type": "network", "path": "/var/run/netns/cni-1" },
            ]}
        });
        assert_eq!(
            network_namespace_path(&spec),
            Some(PathBuf::from("/var/run/netns/cni-1"))
        );
        let in_vm = for_vm(&spec);
        assert_eq!(
            in_vm["linux"]["namespaces"],
            serde_json::json!([{ "type": "pid" }])
        );
        assert_eq!(network_namespace_path(&in_vm), None);
        // A new network namespace (no path) is the container's own, in the VM too.
        let own = serde_json::json!({ "linux": { "namespaces": [{ "type": "network" }] } });
        assert_eq!(network_namespace_path(&own), None);
        assert_eq!(for_vm(&own), own);
        assert_eq!(network_namespace_path(&serde_json::json!({})), None);
    }

    #[test]
    fn a_vm_gets_the_pods_resolver_from_the_file_cri_binds() {
        let dir = std::env::temp_dir().join(format!("husk-resolv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("resolv.conf");
        std::fs::write(
            &file,
            "# by CRI\nsearch a.svc b.svc\nnameserver 10.96.0.10\noptions ndots:5\nnameserver 1.1.1.1\n",
        )
        .unwrap();
        let spec = serde_json::json!({
            "mounts": [
                { "destination": "/etc/hosts", "source": "/x/hosts", "type": "bind" },
                { "destination": "/etc/resolv.conf", "source": file, "type": "bind" },
            ]
        });
        assert_eq!(
            resolver(&spec),
            Some((
                vec!["10.96.0.10".to_owned(), "1.1.1.1".to_owned()],
                vec!["a.svc".to_owned(), "b.svc".to_owned()]
            ))
        );
        let in_vm = for_vm(&spec);
        assert_eq!(in_vm["mounts"][1]["source"], "/etc/resolv.conf");
        assert_eq!(in_vm["mounts"][0]["source"], "/x/hosts");
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(resolver(&spec), None, "an unreadable file gives nothing");
        assert_eq!(resolver(&serde_json::json!({})), None);
    }
}
