//! `containerd-shim-husk-v2`: husk as a containerd runtime (shim v2), on the
//! `containerd-shim` crate's synchronous server.
//!
//! containerd runs the binary with `start` (we start the shim server and print its
//! address), then talks to the server's Task service over ttrpc, and finally runs it with
//! `delete` to clean up after a shim that is gone. The shim process holds the sandbox:
//! with the builtin backend it is the VMM.
//!
//! One shim process per pod: containers whose `io.kubernetes.cri.sandbox-id` annotation
//! names a pod join its sandbox through its shim (a container without the annotation is
//! a pod of its own). The first container of a pod must be its sandbox container (the one
//! whose id is the pod's), as CRI creates them; the last one's deletion stops the
//! sandbox.

mod events;
mod metrics;
mod namespaces;
mod options;
mod task;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim as shim;
use shim::publisher::RemotePublisher;
use shim::{Config, DeleteResponse, ExitSignal, Flags};

use crate::cli::Context;
use crate::state::StateRoot;

/// The runtime's name in containerd (`--runtime io.containerd.husk.v2`).
pub const RUNTIME_ID: &str = "io.containerd.husk.v2";

/// The shim's state root for a containerd namespace: beside the CLI's containers, in a
/// directory whose name no container id can take.
pub fn state_root(context_root: &std::path::Path, namespace: &str) -> PathBuf {
    context_root.join(".containerd").join(namespace)
}

pub struct HuskShim {
    exit: Arc<ExitSignal>,
    /// The Task service's events, flushed before the shim exits.
    events: std::sync::Mutex<Option<Arc<events::Events>>>,
    namespace: String,
    id: String,
    /// The server's socket (`unix://PATH`; empty for the `start` and `delete` runs).
    socket: String,
}

fn shim_error(e: impl std::fmt::Display) -> shim::Error {
    shim::Error::Other(e.to_string())
}

/// The configuration and state root, as the CLI reads them (containerd passes
/// `HUSK_CONFIG` through its environment).
fn context(namespace: &str) -> Result<Context, String> {
    let config = crate::config::Config::load().map_err(|e| e.to_string())?;
    let base = config
        .root
        .clone()
        .unwrap_or_else(|| PathBuf::from(crate::state::DEFAULT_ROOT));
    Ok(Context {
        root: StateRoot::new(state_root(&base, namespace)),
        config,
    })
}

impl shim::Shim for HuskShim {
    type T = task::TaskService;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        HuskShim {
            exit: Arc::new(ExitSignal::default()),
            events: std::sync::Mutex::default(),
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            socket: args.socket.clone(),
        }
    }

    /// One shim per pod: the socket address is derived from the pod's id, so a container
    /// of a pod whose shim serves gets that shim's address. Only the first container of a
    /// pod starts a shim process.
    ///
    /// Answering a serving pod's address without spawning anything also keeps this
    /// process clear of a hang in the crate: a spawned process that exits at once (as one
    /// that finds the address serving does) sends SIGCHLD while this process drops its
    /// signal handlers on the way out, and signal-hook's handler then spun forever (seen
    /// under load: `ctr run` of a pod's second container hung).
    fn start_shim(&mut self, opts: shim::StartOpts) -> Result<String, shim::Error> {
        let annotations = bundle_annotations(Path::new("config.json"));
        let grouping = pod_id(&annotations, &opts.id).to_owned();
        let existing = shim::socket_address(&opts.address, &opts.namespace, &grouping);
        let address = match serving(&existing) {
            true => existing,
            false => shim::spawn(opts, &grouping, Vec::new())?.1,
        };
        // containerd finds the shim again after a restart through the bundle's `address`.
        shim::util::write_address(&address)?;
        Ok(address)
    }

    /// After the shim process is gone: whatever is left of its container goes.
    fn delete_shim(&mut self) -> Result<DeleteResponse, shim::Error> {
        let context = context(&self.namespace).map_err(shim_error)?;
        task::remove_leftovers(&context, &self.id).map_err(shim_error)?;
        let mut response = DeleteResponse::new();
        response.exit_status = 128 + libc::SIGKILL as u32;
        response.exited_at = Some(task::timestamp_now()).into();
        Ok(response)
    }

    /// Until Shutdown; then the socket goes (the crate removes it only through an
    /// `address` file in the first container's bundle, which containerd may have deleted
    /// by then). The server keeps its listening socket until it stops.
    fn wait(&mut self) {
        self.exit.wait();
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(events) = events {
            events.flush(std::time::Duration::from_secs(5));
        }
        let path = self.socket.strip_prefix("unix://").unwrap_or(&self.socket);
        if !path.is_empty() {
            if let Err(e) = std::fs::remove_file(path) {
                log::warn!("removing the shim's socket {path}: {e}");
            }
        }
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let events = Arc::new(events::Events::start(self.namespace.clone(), publisher));
        *self.events.lock().unwrap_or_else(|p| p.into_inner()) = Some(events.clone());
        task::TaskService::new(context(&self.namespace), events, self.exit.clone())
    }
}

/// The annotation by which CRI (or `ctr run --annotation`) names a container's pod.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// The pod a container belongs to: the one its annotation names, else its own.
pub fn pod_id<'a>(annotations: &'a BTreeMap<String, String>, container_id: &'a str) -> &'a str {
    annotations
        .get(SANDBOX_ID_ANNOTATION)
        .map(String::as_str)
        .filter(|id| !id.is_empty())
        .unwrap_or(container_id)
}

/// Whether a shim serves at `address` (`unix://PATH`): a stale socket file refuses.
fn serving(address: &str) -> bool {
    let path = address.strip_prefix("unix://").unwrap_or(address);
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

/// The annotations of the bundle's spec; none if it cannot be read (Create reports that).
fn bundle_annotations(config: &Path) -> BTreeMap<String, String> {
    #[derive(serde::Deserialize)]
    struct Annotated {
        #[serde(default)]
        annotations: BTreeMap<String, String>,
    }
    std::fs::read(config)
        .ok()
        .and_then(|json| serde_json::from_slice::<Annotated>(&json).ok())
        .map(|spec| spec.annotations)
        .unwrap_or_default()
}

/// The binary's `main`.
pub fn main() {
    shim::run::<HuskShim>(RUNTIME_ID, None);
}
