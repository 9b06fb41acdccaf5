//! The messages of the protocol. See the crate docs for how they travel.

use std::path::PathBuf;

use oci_spec::runtime::Process;
use serde::{Deserialize, Serialize};

/// The version both sides must speak; a mismatch fails the hello.
pub const PROTOCOL_VERSION: u32 = 4;

/// The first frame of every connection, from the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Hello {
    /// The control connection: requests, responses and events.
    Control { version: u32 },
    /// One stdio stream of a process that is about to be created; raw bytes follow.
    Stream {
        version: u32,
        container_id: String,
        /// `None` for the container's own process.
        exec_id: Option<String>,
        stream: StreamKind,
    },
}

impl Hello {
    pub fn version(&self) -> u32 {
        match self {
            Hello::Control { version } | Hello::Stream { version, .. } => *version,
        }
    }
}

/// Which stdio stream a stream connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    /// Host → process.
    Stdin,
    /// Process → host.
    Stdout,
    /// Process → host.
    Stderr,
    /// Both ways: the process's terminal (a pty in the agent).
    Terminal,
}

/// The agent's answer to a hello.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HelloReply {
    pub result: Result<AgentInfo, AgentError>,
}

/// Who answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub version: u32,
    /// The agent's own version (its crate version).
    pub agent_version: String,
    /// Why containers get no cgroup, so no resource limits, stats or OOM events (e.g. a
    /// host agent on a cgroup v1 host); `None` when they get one under cgroup v2.
    pub cgroups_unavailable: Option<String>,
}

/// A call from the host, with an id the response carries back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    pub call: Call,
}

/// What the host can ask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum Call {
    /// Answered with [`Reply::Pong`].
    Ping,
    /// Sandbox-wide settings, before the first container.
    ConfigureSandbox(SandboxConfig),
    /// Creates a container (its process created, not started: OCI `create`).
    CreateContainer(Box<CreateContainer>),
    /// Lets a created container's process run (OCI `start`).
    StartContainer { container_id: String },
    /// Starts another process in a running container.
    Exec(Box<ExecProcess>),
    /// Sends a signal to a container's process, to all of its processes (`all`), or to
    /// an exec'd process.
    Signal {
        container_id: String,
        exec_id: Option<String>,
        signal: i32,
        all: bool,
    },
    /// Blocks until the process exits; answered with [`Reply::Exited`].
    Wait {
        container_id: String,
        exec_id: Option<String>,
    },
    /// Closes the process's stdin (it reads end of file).
    CloseStdin {
        container_id: String,
        exec_id: Option<String>,
    },
    /// Sets the size of the process's terminal.
    ResizeTerminal {
        container_id: String,
        exec_id: Option<String>,
        rows: u16,
        cols: u16,
    },
    /// Resource use of a container (cgroup v2).
    Stats { container_id: String },
    /// Changes a container's resource limits: `resources` is an OCI `LinuxResources`
    /// object, applied to its cgroup as at creation.
    UpdateResources {
        container_id: String,
        resources: serde_json::Value,
    },
    /// The pids (as the agent sees them) of a container's processes.
    Pids { container_id: String },
    /// Removes a container whose processes have exited; with `force`, kills them first.
    RemoveContainer { container_id: String, force: bool },
    /// Kills every container, syncs file systems and powers the sandbox off.
    Shutdown,
}

/// Sandbox-wide settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SandboxConfig {
    pub hostname: Option<String>,
    /// Name servers for the sandbox's `/etc/resolv.conf`.
    pub dns_servers: Vec<String>,
    pub dns_search: Vec<String>,
    /// The host's wall clock, nanoseconds since the Unix epoch: the guest has no
    /// battery-backed clock, so the agent sets its clock from this.
    pub time_unix_ns: Option<u64>,
    /// Random bytes from the host, credited to the guest kernel's entropy pool (a fresh
    /// VM has little entropy of its own and no hardware RNG device).
    pub entropy: Vec<u8>,
    /// The sandbox's network interfaces (a VM's virtio-net devices); empty with the host
    /// backend, whose containers join the pod's network namespace as it is.
    pub interfaces: Vec<Interface>,
    /// Routes to add once every interface is up, in order (a gateway must be reachable
    /// through a route added before it, or through an interface's own prefix).
    pub routes: Vec<Route>,
}

/// A network interface for the agent to configure: found by its MAC, renamed, given its
/// MTU and addresses, and brought up. The loopback interface is always brought up and
/// is never listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// The name the interface gets in the guest (`eth0`, ...).
    pub name: String,
    /// The MAC the VMM gave the virtio-net device: how the agent tells interfaces apart.
    pub mac: MacAddress,
    /// The MTU, when it is not the device's default (1500).
    pub mtu: Option<u32>,
    pub addresses: Vec<IpPrefix>,
}

/// An Ethernet address, `aa:bb:cc:dd:ee:ff` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddress(pub [u8; 6]);

/// An address with its prefix length (`10.88.0.5/16`, `fd00::5/64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpPrefix {
    pub address: std::net::IpAddr,
    pub prefix_len: u8,
}

/// A route: `destination` (none for the default route) via `gateway` (none for a route
/// on the link), out of the interface named `interface`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub destination: Option<IpPrefix>,
    pub gateway: Option<std::net::IpAddr>,
    pub interface: String,
}

impl std::fmt::Display for MacAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl std::fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

// A prefix that is not `ADDRESS/LENGTH` (the doc comment below is its message). A length
// past the family's width reads; whoever applies the prefix refuses it (`husk-netlink`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, displaydoc::Display)]
/// not an address with its prefix length (such as 10.88.0.5/16): '{0}'
pub struct BadIpPrefix(pub String);

impl std::str::FromStr for IpPrefix {
    type Err = BadIpPrefix;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadIpPrefix(text.to_owned());
        let (address, len) = text.split_once('/').ok_or_else(bad)?;
        let address: std::net::IpAddr = address.parse().map_err(|_| bad())?;
        let prefix_len: u8 = len.parse().map_err(|_| bad())?;
        Ok(IpPrefix {
            address,
            prefix_len,
        })
    }
}

// A MAC that is not six `:`-separated hexadecimal bytes (the doc comment below is its
// message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, displaydoc::Display)]
/// not a MAC address (six hexadecimal bytes separated by ':'): '{0}'
pub struct BadMacAddress(pub String);

impl std::str::FromStr for MacAddress {
    type Err = BadMacAddress;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadMacAddress(text.to_owned());
        let mut bytes = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddress(bytes))
    }
}

impl Serialize for MacAddress {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddress {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A container to create.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateContainer {
    pub container_id: String,
    /// The OCI runtime spec (`config.json`), as JSON: the agent parses it, so that a
    /// spec it cannot take (an unknown namespace type, say) is an error naming the
    /// field in the reply to this call rather than an undecodable request.
    pub spec: serde_json::Value,
    pub rootfs: Rootfs,
    pub stdio: StdioConfig,
}

/// A process to start in a running container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecProcess {
    pub container_id: String,
    pub exec_id: String,
    pub process: Process,
    pub stdio: StdioConfig,
}

/// Where a container's root file system comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Rootfs {
    /// A virtio-blk drive found by its serial (the VMM's drive id), with this file
    /// system on it; mounted read-only when the spec's `root.readonly` says so.
    BlockDevice {
        serial: String,
        fs_type: String,
        /// The source is a shared image that must stay unchanged: the agent mounts it read-only as the lower layer of an overlay whose upper layer is the container's own (under the agent's run directory: guest memory in a VM, the sandbox directory on the host), removed with the container.
        #[serde(default)]
        overlay: bool,
    },
    /// A directory the agent can see (the host backend): bind-mounted.
    Directory {
        path: PathBuf,
        /// The source is a shared image that must stay unchanged: the agent mounts it read-only as the lower layer of an overlay whose upper layer is the container's own (under the agent's run directory: guest memory in a VM, the sandbox directory on the host), removed with the container.
        #[serde(default)]
        overlay: bool,
    },
}

/// Which stdio streams the host opened (or will open) for a process, as stream
/// connections. A stream the host does not open is `/dev/null`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StdioConfig {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    /// One `Terminal` stream instead of the three.
    pub terminal: bool,
}

/// What the agent answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Pong,
    /// The call did what it was asked; nothing to report.
    Done,
    /// A process was created (container) or started (exec); its pid as the agent sees it.
    Process {
        pid: i32,
    },
    Exited(ExitInfo),
    Stats(ContainerStats),
    Pids {
        pids: Vec<i32>,
    },
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    pub status: ExitStatus,
    /// When the agent reaped it, in nanoseconds since the Unix epoch (guest clock).
    pub exited_at_ns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
}

impl ExitStatus {
    /// The shell's convention: the code, or 128 + the signal.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(code) => code,
            ExitStatus::Signal(signal) => 128 + signal,
        }
    }
}

/// A container's resource use, from cgroup v2; absent numbers were not available.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStats {
    pub memory_current: Option<u64>,
    pub memory_max: Option<u64>,
    /// `memory.stat`, as its key/value pairs.
    pub memory_stat: Vec<(String, u64)>,
    pub memory_oom_kills: Option<u64>,
    pub cpu_usage_usec: Option<u64>,
    pub cpu_user_usec: Option<u64>,
    pub cpu_system_usec: Option<u64>,
    pub cpu_throttled_usec: Option<u64>,
    pub pids_current: Option<u64>,
    pub pids_max: Option<u64>,
    pub io_read_bytes: Option<u64>,
    pub io_write_bytes: Option<u64>,
}

/// A message from the agent on the control connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Response {
        id: u64,
        result: Result<Reply, AgentError>,
    },
    Event(Event),
}

/// Things that happen without being asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A container's process or an exec'd process exited.
    Exited {
        container_id: String,
        exec_id: Option<String>,
        info: ExitInfo,
    },
    /// The kernel's OOM killer killed a process of the container.
    Oom { container_id: String },
    /// A line of the agent's own log.
    Log { level: LogLevel, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

/// A failed call: what kind of failure, and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct AgentError {
    pub kind: ErrorKind,
    pub message: String,
}

impl AgentError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, displaydoc::Display)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// malformed request
    BadRequest,
    /// protocol version mismatch
    VersionMismatch,
    /// invalid OCI spec
    InvalidSpec,
    /// not found
    NotFound,
    /// already exists
    AlreadyExists,
    /// wrong state
    WrongState,
    /// not supported
    Unsupported,
    /// the operation failed
    Failed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_addresses_cross_the_protocol_as_text() {
        let mac: MacAddress = "02:aB:00:ff:10:9c".parse().expect("a MAC");
        assert_eq!(mac.0, [0x02, 0xab, 0x00, 0xff, 0x10, 0x9c]);
        let json = serde_json::to_string(&mac).expect("serialized");
        assert_eq!(json, "\"02:ab:00:ff:10:9c\"");
        assert_eq!(
            serde_json::from_str::<MacAddress>(&json).expect("parsed"),
            mac
        );
    }

    #[test]
    fn prefixes_read_and_print_as_address_slash_length() {
        for text in ["10.88.0.5/16", "0.0.0.0/0", "fd00::5/64", "::/128"] {
            let prefix: IpPrefix = text.parse().expect("a prefix");
            assert_eq!(prefix.to_string(), text);
        }
        let prefix: IpPrefix = "10.88.0.5/16".parse().expect("a prefix");
        assert_eq!(prefix.prefix_len, 16);
        for bad in [
            "10.88.0.5",
            "x/8",
            "10.0.0.1/",
            "10.0.0.1/-1",
            "10.0.0.1/256",
        ] {
            let error = bad.parse::<IpPrefix>().expect_err(bad);
            assert!(error.to_string().contains(bad), "{error}");
        }
    }

    #[test]
    fn malformed_mac_addresses_are_refused() {
        for text in [
            "",
            "02:ab:00:ff:10",
            "02:ab:00:ff:10:9c:00",
            "2:ab:00:ff:10:9c",
            "02-ab-00-ff-10-9c",
            "0g:ab:00:ff:10:9c",
            "+2:ab:00:ff:10:9c",
        ] {
            assert!(text.parse::<MacAddress>().is_err(), "{text:?} parsed");
        }
        let error = serde_json::from_str::<MacAddress>("\"nope\"").expect_err("refused");
        assert!(error.to_string().contains("not a MAC address"), "{error}");
    }
}
