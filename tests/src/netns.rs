//! A pod's network as CNI would leave it, for tests: a named network namespace (the
//! pod's) holding `eth0`, one end of a veth pair with an address and a default route, and
//! a second named namespace (the "host" side) holding the other end, the gateway. Traffic
//! stays between the two. Both namespaces go when the value is dropped.
//!
//! Made with `ip` (iproute2): test set-up, not the code under test.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::Error;

/// The pod's address, with its prefix, and the gateway's, on the veth pair.
pub const POD_ADDRESS: &str = "10.199.0.2/24";
pub const GATEWAY: &str = "10.199.0.1";
/// The MAC CNI gave the pod's `eth0`.
pub const POD_MAC: &str = "02:48:55:53:4b:02";
/// The pod's interface's MTU (not the default, so that passing it on is checked).
pub const POD_MTU: u32 = 1400;

pub struct PodNetns {
    /// The pod's namespace: `/run/netns/<pod>`.
    pub pod: String,
    /// The other end's namespace.
    pub peer: String,
}

impl PodNetns {
    /// Makes both namespaces; `tag` keeps names apart between tests.
    pub fn new(tag: &str) -> Result<PodNetns, Error> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}-{n}", std::process::id());
        let netns = PodNetns {
            pod: format!("husk-{tag}-pod-{id}"),
            peer: format!("husk-{tag}-peer-{id}"),
        };
        let (pod, peer) = (netns.pod.as_str(), netns.peer.as_str());
        let mtu = POD_MTU.to_string();
        for args in [
            vec!["netns", "add", pod],
            vec!["netns", "add", peer],
            vec![
                "-n", peer, "link", "add", "eth0", "type", "veth", "peer", "name", "veth-pod",
            ],
            vec!["-n", peer, "link", "set", "veth-pod", "netns", pod],
            vec!["-n", pod, "link", "set", "veth-pod", "name", "eth0"],
            vec![
                "-n", pod, "link", "set", "eth0", "address", POD_MAC, "mtu", &mtu, "up",
            ],
            vec!["-n", pod, "link", "set", "lo", "up"],
            vec!["-n", pod, "address", "add", POD_ADDRESS, "dev", "eth0"],
            vec!["-n", pod, "route", "add", "default", "via", GATEWAY],
            vec!["-n", peer, "link", "set", "eth0", "mtu", &mtu, "up"],
            vec!["-n", peer, "link", "set", "lo", "up"],
            vec![
                "-n",
                peer,
                "address",
                "add",
                &format!("{GATEWAY}/24"),
                "dev",
                "eth0",
            ],
        ] {
            ip(&args)?;
        }
        Ok(netns)
    }

    /// The pod namespace's path, as CNI hands it to a runtime.
    pub fn pod_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.pod)
    }

    /// Runs a command in the peer's namespace.
    pub fn in_peer(&self, program: &str, args: &[&str]) -> Result<Output, Error> {
        let mut all = vec!["netns", "exec", self.peer.as_str(), program];
        all.extend_from_slice(args);
        Command::new("ip")
            .args(&all)
            .output()
            .map_err(|e| Error(format!("ip {}: {e}", all.join(" "))))
    }

    /// Runs `work` on a thread in the peer's namespace.
    pub fn on_peer<T: Send>(&self, work: impl FnOnce() -> T + Send) -> Result<T, Error> {
        on_namespace(&self.peer, work)
    }

    /// Runs `ip ARGS` in the pod's namespace and returns its output.
    pub fn ip_in_pod(&self, args: &[&str]) -> Result<String, Error> {
        let mut all = vec!["-n", self.pod.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Runs `tc ARGS` in the pod's namespace and returns its output.
    pub fn tc_in_pod(&self, args: &[&str]) -> Result<String, Error> {
        let mut all = vec!["-n", self.pod.as_str()];
        all.extend_from_slice(args);
        run("tc", &all)
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        for name in [&self.pod, &self.peer] {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// Runs `work` on a thread of its own in a fresh network namespace
/// (`unshare(CLONE_NEWNET)`: only that thread moves), which goes when the thread ends; a
/// panic in `work` carries over. Needs root.
pub fn in_fresh_namespace<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: CLONE_NEWNET moves only this thread into a new network
                // namespace; no file descriptor table or memory is unshared.
                unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
                    .unwrap_or_else(|e| panic!("unshare(CLONE_NEWNET): {e}"));
                work()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Runs `work` on a thread of its own in the named network namespace.
pub fn on_namespace<T: Send>(name: &str, work: impl FnOnce() -> T + Send) -> Result<T, Error> {
    let path = PathBuf::from("/run/netns").join(name);
    let namespace =
        std::fs::File::open(&path).map_err(|e| Error(format!("{}: {e}", path.display())))?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                rustix::thread::move_into_link_name_space(
                    std::os::fd::AsFd::as_fd(&namespace),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .map_err(|e| Error(format!("entering {}: {e}", path.display())))?;
                Ok(work())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// `ip ARGS`, its stdout, or an error with its stderr.
pub fn ip(args: &[&str]) -> Result<String, Error> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> Result<String, Error> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| Error(format!("{program} {}: {e}", args.join(" "))))?;
    if !out.status.success() {
        return Err(Error(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
