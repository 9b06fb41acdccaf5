//! A small CRI client for the end-to-end tests: the Kubernetes CRI API (`runtime.v1`,
//! from the `k8s-cri` crate) over gRPC (tonic) on containerd's Unix socket, the calls a
//! kubelet makes to run a pod, as plain blocking methods.
//!
//! Each client owns a current-thread tokio runtime and blocks on it for one call at a
//! time (the gRPC connection's own tasks run while a call is in flight, which is all
//! they need). Every call is bounded in time, so that a runtime that hangs fails the test
//! with the call's name instead of hanging it. Errors are [`Error`]s that name the call,
//! the object and the gRPC status.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use api::runtime_service_client::RuntimeServiceClient;
pub use k8s_cri::v1 as api;

use crate::Error;

/// The bound on a call that waits for nothing in the containers (everything but
/// ExecSync and StopContainer, which add their own timeouts to it): generous for a slow
/// machine, and still far from a hang.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// How long [`CriClient::connect`] waits for the CRI plugin to be initialized.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct CriClient {
    client: RuntimeServiceClient<Channel>,
    // Dropped after the client: the connection's tasks live on it.
    runtime: tokio::runtime::Runtime,
}

impl CriClient {
    /// Connects to the CRI service on containerd's socket `socket` and waits (30 s at
    /// most) until it answers Version: containerd serves gRPC before its CRI plugin has
    /// finished initializing, and refuses CRI calls until then.
    pub fn connect(socket: &Path) -> Result<CriClient, Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error(format!("cannot create a tokio runtime: {e}")))?;
        let socket_path: PathBuf = socket.to_owned();
        // The URI is required by the API and unused: the connector below ignores it.
        let endpoint = Endpoint::from_static("http://cri.invalid").connect_timeout(CALL_TIMEOUT);
        let channel = runtime
            .block_on(
                endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = socket_path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                })),
            )
            .map_err(|e| {
                Error(format!(
                    "cannot connect to the CRI service at {}: {e}",
                    socket.display()
                ))
            })?;
        let client = CriClient {
            client: RuntimeServiceClient::new(channel),
            runtime,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match client.version() {
                Ok(_) => return Ok(client),
                Err(e) if Instant::now() >= deadline => {
                    return Err(Error(format!(
                        "the CRI service at {} did not become ready within {} s: {e}",
                        socket.display(),
                        READY_TIMEOUT.as_secs()
                    )))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Runs one call on the client's runtime, bounded by `timeout`; `what` names the
    /// call and its object in errors.
    fn call<T, F, Fut>(&self, what: &str, timeout: Duration, f: F) -> Result<T, Error>
    where
        F: FnOnce(RuntimeServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        // A clone shares the connection; it lets every method take `&self`.
        let call = f(self.client.clone());
        match self
            .runtime
            .block_on(async { tokio::time::timeout(timeout, call).await })
        {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(Error(format!(
                "CRI {what} failed: {:?}: {}",
                status.code(),
                status.message()
            ))),
            Err(_) => Err(Error(format!(
                "CRI {what} did not answer within {} s",
                timeout.as_secs()
            ))),
        }
    }

    /// Version: the runtime's name and version, and the CRI API version it serves.
    pub fn version(&self) -> Result<api::VersionResponse, Error> {
        self.call("Version", CALL_TIMEOUT, |mut c| async move {
            c.version(api::VersionRequest {
                version: "v1".into(),
            })
            .await
        })
    }

    /// RunPodSandbox with `runtime_handler` (a runtime of containerd's CRI
    /// configuration; "" for its default); returns the pod's id.
    pub fn run_pod_sandbox(
        &self,
        config: &api::PodSandboxConfig,
        runtime_handler: &str,
    ) -> Result<String, Error> {
        let request = api::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: runtime_handler.into(),
        };
        let what = format!(
            "RunPodSandbox({}, runtime handler {runtime_handler:?})",
            pod_name(config)
        );
        self.call(&what, CALL_TIMEOUT, |mut c| async move {
            c.run_pod_sandbox(request).await
        })
        .map(|r| r.pod_sandbox_id)
    }

    /// PodSandboxStatus.
    pub fn pod_sandbox_status(&self, pod_id: &str) -> Result<api::PodSandboxStatus, Error> {
        let request = api::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.into(),
            verbose: false,
        };
        let what = format!("PodSandboxStatus({pod_id})");
        self.call(&what, CALL_TIMEOUT, |mut c| async move {
            c.pod_sandbox_status(request).await
        })?
        .status
        .ok_or_else(|| Error(format!("CRI {what} answered no status")))
    }

    /// StopPodSandbox: stops the pod's containers and its sandbox.
    pub fn stop_pod_sandbox(&self, pod_id: &str) -> Result<(), Error> {
        let request = api::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.into(),
        };
        self.call(
            &format!("StopPodSandbox({pod_id})"),
            CALL_TIMEOUT,
            |mut c| async move { c.stop_pod_sandbox(request).await },
        )
        .map(drop)
    }

    /// RemovePodSandbox: removes a stopped pod and its containers.
    pub fn remove_pod_sandbox(&self, pod_id: &str) -> Result<(), Error> {
        let request = api::RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.into(),
        };
        self.call(
            &format!("RemovePodSandbox({pod_id})"),
            CALL_TIMEOUT,
            |mut c| async move { c.remove_pod_sandbox(request).await },
        )
        .map(drop)
    }

    /// ListPodSandbox: every pod.
    pub fn list_pod_sandboxes(&self) -> Result<Vec<api::PodSandbox>, Error> {
        self.call("ListPodSandbox", CALL_TIMEOUT, |mut c| async move {
            c.list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
                .await
        })
        .map(|r| r.items)
    }

    /// CreateContainer in pod `pod_id` (created with `sandbox_config`); returns the
    /// container's id.
    pub fn create_container(
        &self,
        pod_id: &str,
        config: &api::ContainerConfig,
        sandbox_config: &api::PodSandboxConfig,
    ) -> Result<String, Error> {
        let request = api::CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(config.clone()),
            sandbox_config: Some(sandbox_config.clone()),
        };
        let name = config.metadata.as_ref().map_or("", |m| m.name.as_str());
        self.call(
            &format!("CreateContainer({name} in {pod_id})"),
            CALL_TIMEOUT,
            |mut c| async move { c.create_container(request).await },
        )
        .map(|r| r.container_id)
    }

    /// StartContainer.
    pub fn start_container(&self, id: &str) -> Result<(), Error> {
        let request = api::StartContainerRequest {
            container_id: id.into(),
        };
        self.call(
            &format!("StartContainer({id})"),
            CALL_TIMEOUT,
            |mut c| async move { c.start_container(request).await },
        )
        .map(drop)
    }

    /// ExecSync: runs `cmd` in the container, waits (at most `timeout`, whole seconds)
    /// and returns its output and exit code.
    pub fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout: Duration,
    ) -> Result<api::ExecSyncResponse, Error> {
        let request = api::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|&a| a.to_owned()).collect(),
            timeout: whole_seconds(timeout),
        };
        self.call(
            &format!("ExecSync({id}, {cmd:?})"),
            timeout.saturating_add(CALL_TIMEOUT),
            |mut c| async move { c.exec_sync(request).await },
        )
    }

    /// ContainerStatus.
    pub fn container_status(&self, id: &str) -> Result<api::ContainerStatus, Error> {
        let request = api::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        let what = format!("ContainerStatus({id})");
        self.call(&what, CALL_TIMEOUT, |mut c| async move {
            c.container_status(request).await
        })?
        .status
        .ok_or_else(|| Error(format!("CRI {what} answered no status")))
    }

    /// StopContainer: the stop signal (SIGTERM), then SIGKILL after `timeout` (whole
    /// seconds; zero kills at once). Returns once the container has exited.
    pub fn stop_container(&self, id: &str, timeout: Duration) -> Result<(), Error> {
        let request = api::StopContainerRequest {
            container_id: id.into(),
            timeout: whole_seconds(timeout),
        };
        self.call(
            &format!("StopContainer({id})"),
            timeout.saturating_add(CALL_TIMEOUT),
            |mut c| async move { c.stop_container(request).await },
        )
        .map(drop)
    }

    /// RemoveContainer.
    pub fn remove_container(&self, id: &str) -> Result<(), Error> {
        let request = api::RemoveContainerRequest {
            container_id: id.into(),
        };
        self.call(
            &format!("RemoveContainer({id})"),
            CALL_TIMEOUT,
            |mut c| async move { c.remove_container(request).await },
        )
        .map(drop)
    }

    /// ListContainers: every container, or those of one pod.
    pub fn list_containers(&self, pod_id: Option<&str>) -> Result<Vec<api::Container>, Error> {
        let filter = pod_id.map(|pod| api::ContainerFilter {
            pod_sandbox_id: pod.into(),
            ..Default::default()
        });
        self.call("ListContainers", CALL_TIMEOUT, |mut c| async move {
            c.list_containers(api::ListContainersRequest { filter })
                .await
        })
        .map(|r| r.containers)
    }
}

/// A pod that uses the host's network (so that no CNI is needed), with its own IPC
/// namespace and a PID namespace per container, as a kubelet would ask for a
/// `hostNetwork: true` pod named `name` (uid `uid`). Container logs go to
/// `log_directory`.
pub fn host_network_pod(name: &str, uid: &str, log_directory: &Path) -> api::PodSandboxConfig {
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: log_directory.to_string_lossy().into_owned(),
        linux: Some(api::LinuxPodSandboxConfig {
            security_context: Some(api::LinuxSandboxSecurityContext {
                namespace_options: Some(host_network_namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container `name` of a [`host_network_pod`] that runs `command` of `image` with the
/// environment `env`; its log is `<name>.log` in the pod's log directory.
pub fn container(
    name: &str,
    image: &str,
    command: &[&str],
    env: &[(&str, &str)],
) -> api::ContainerConfig {
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(api::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: command.iter().map(|&a| a.to_owned()).collect(),
        envs: env
            .iter()
            .map(|&(key, value)| api::KeyValue {
                key: key.into(),
                value: value.into(),
            })
            .collect(),
        log_path: format!("{name}.log"),
        labels: HashMap::from([("husk-test".to_owned(), name.to_owned())]),
        linux: Some(api::LinuxContainerConfig {
            security_context: Some(api::LinuxContainerSecurityContext {
                namespace_options: Some(host_network_namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The same pod on a network of its own (CNI's), as a kubelet asks for an ordinary pod.
pub fn pod_network_pod(name: &str, uid: &str, log_directory: &Path) -> api::PodSandboxConfig {
    let mut config = host_network_pod(name, uid, log_directory);
    if let Some(options) = config
        .linux
        .as_mut()
        .and_then(|linux| linux.security_context.as_mut())
        .and_then(|context| context.namespace_options.as_mut())
    {
        options.network = api::NamespaceMode::Pod.into();
    }
    config
}

/// A container of a [`pod_network_pod`]: it shares its pod's network.
pub fn pod_network_container(
    name: &str,
    image: &str,
    command: &[&str],
    env: &[(&str, &str)],
) -> api::ContainerConfig {
    let mut config = container(name, image, command, env);
    if let Some(options) = config
        .linux
        .as_mut()
        .and_then(|linux| linux.security_context.as_mut())
        .and_then(|context| context.namespace_options.as_mut())
    {
        options.network = api::NamespaceMode::Pod.into();
    }
    config
}

/// The namespaces of a host-network pod: the node's network, the pod's IPC, a PID
/// namespace per container (the kubelet's default).
fn host_network_namespaces() -> api::NamespaceOption {
    api::NamespaceOption {
        network: api::NamespaceMode::Node.into(),
        pid: api::NamespaceMode::Container.into(),
        ipc: api::NamespaceMode::Pod.into(),
        ..Default::default()
    }
}

/// A container state's name for messages ("CONTAINER_RUNNING"; the number if unknown).
pub fn container_state_name(state: i32) -> String {
    api::ContainerState::try_from(state)
        .map(|s| s.as_str_name().to_owned())
        .unwrap_or_else(|_| format!("state {state}"))
}

/// A pod state's name for messages ("SANDBOX_READY"; the number if unknown).
pub fn pod_state_name(state: i32) -> String {
    api::PodSandboxState::try_from(state)
        .map(|s| s.as_str_name().to_owned())
        .unwrap_or_else(|_| format!("state {state}"))
}

fn pod_name(config: &api::PodSandboxConfig) -> &str {
    config.metadata.as_ref().map_or("", |m| m.name.as_str())
}

/// CRI timeouts are whole seconds; a part of a second counts as one.
fn whole_seconds(timeout: Duration) -> i64 {
    let secs = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
    i64::try_from(secs).unwrap_or(i64::MAX)
}
