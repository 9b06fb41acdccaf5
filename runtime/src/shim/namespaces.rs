//! A pod's namespaces as its sandbox's agent sees them.
//!
//! CRI gives the containers of a pod the namespaces of its sandbox container as host paths,
//! `/proc/<pid>/ns/<type>`, with the pid containerd knows for that container (the shim's,
//! which holds the sandbox). They name nothing the agent can open. The same namespaces,
//! as the agent sees them, are those of the sandbox container's first process:
//! `/proc/<its pid in the sandbox>/ns/<type>`.
//!
//! Other paths (CNI's network namespace) are left as they are: `container` decides what
//! they mean for the sandbox.

use oci_spec::runtime::{LinuxNamespace, Spec};

/// Rewrites the spec's namespace paths for a container of a pod whose sandbox container's
/// process has `sandbox_pid` in the sandbox (`None`: this is the sandbox container).
pub fn for_sandbox(spec: &mut Spec, sandbox_pid: Option<i32>) -> Result<(), String> {
    let Some(namespaces) = spec
        .linux_mut()
        .as_mut()
        .and_then(|linux| linux.namespaces_mut().as_mut())
    else {
        return Ok(());
    };
    let mut kept = Vec::with_capacity(namespaces.len());
    for namespace in namespaces.drain(..) {
        let Some(path) = namespace.path().as_ref() else {
            kept.push(namespace);
            continue;
        };
        let text = path.to_string_lossy();
        if let Some(kind) = proc_namespace(&text) {
            let pid = sandbox_pid.ok_or_else(|| {
                format!(
                    "namespace path {text}: only the containers of a pod that runs can join \
                     its namespaces"
                )
            })?;
            let mut joined: LinuxNamespace = namespace.clone();
            joined.set_path(Some(format!("/proc/{pid}/ns/{kind}").into()));
            kept.push(joined);
        } else {
            kept.push(namespace);
        }
    }
    *namespaces = kept;
    Ok(())
}

/// `ipc` of `/proc/1234/ns/ipc`, or `None` for a path of another form.
fn proc_namespace(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/proc/")?;
    let (pid, rest) = rest.split_once('/')?;
    let kind = rest.strip_prefix("ns/")?;
    let plain = !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit());
    (plain && !kind.is_empty() && !kind.contains('/')).then_some(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(namespaces: serde_json::Value) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": { "namespaces": namespaces }
        }))
        .unwrap()
    }

    fn namespaces(spec: &Spec) -> serde_json::Value {
        serde_json::to_value(spec.linux().as_ref().unwrap().namespaces()).unwrap()
    }

    #[test]
    fn the_sandbox_containers_namespaces_become_the_agents_view_of_them() {
        let mut s = spec(serde_json::json!([
            { "type": "ipc", "path": "/proc/4242/ns/ipc" },
            { "type": "uts", "path": "/proc/4242/ns/uts" },
            { "type": "network", "path": "/var/run/netns/cni-1" },
            { "type": "mount" },
        ]));
        for_sandbox(&mut s, Some(7)).unwrap();
        assert_eq!(
            namespaces(&s),
            serde_json::json!([
                { "type": "ipc", "path": "/proc/7/ns/ipc" },
                { "type": "uts", "path": "/proc/7/ns/uts" },
                { "type": "network", "path": "/var/run/netns/cni-1" },
                { "type": "mount" },
            ])
        );
    }

    #[test]
    fn joining_without_a_running_pod_is_an_error() {
        let mut s = spec(serde_json::json!([{ "type": "ipc", "path": "/proc/1/ns/ipc" }]));
        let e = for_sandbox(&mut s, None).unwrap_err();
        assert!(e.contains("/proc/1/ns/ipc"), "{e}");
    }

    #[test]
    fn only_proc_namespace_paths_are_recognised() {
        assert_eq!(proc_namespace("/proc/12/ns/pid"), Some("pid"));
        assert_eq!(proc_namespace("/proc/self/ns/pid"), None);
        assert_eq!(proc_namespace("/proc/12/ns/"), None);
        assert_eq!(proc_namespace("/proc/12/ns/a/b"), None);
        assert_eq!(proc_namespace("/run/netns/x"), None);
    }
}
