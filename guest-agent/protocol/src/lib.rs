//! The protocol between husk (the host) and `husk-agent` (PID 1 in the guest, or a host
//! process for the host backend and the tests).
//!
//! # Connections
//!
//! The agent listens on stream sockets: in the guest on vsock port
//! [`AGENT_VSOCK_PORT`] (1024; the host reaches it through the VMM's hybrid vsock
//! socket with `CONNECT 1024`), on the host on a Unix socket (`husk-agent --listen
//! unix:PATH`). The host opens every connection; each begins with one [`Hello`] frame
//! from the host and one [`HelloReply`] frame from the agent. A hello whose version is
//! not [`PROTOCOL_VERSION`] is answered with an error of kind
//! [`ErrorKind::VersionMismatch`] and the connection is closed.
//!
//! - **Control** (`Hello::Control`): one per host client. The host sends [`Request`]s,
//!   each with an id of its choosing; the agent answers each with a
//!   [`ServerMessage::Response`] carrying the same id, in whatever order the calls
//!   finish (a `Wait` may stay open while other calls come and go), and sends
//!   [`ServerMessage::Event`]s (process exits, OOM kills, its own log lines) when they
//!   happen. A request the agent cannot decode is answered with
//!   [`ErrorKind::BadRequest`] (id 0 when not even the id could be read); the
//!   connection goes on. A failed call is an [`AgentError`], never a dropped connection.
//! - **Stream** (`Hello::Stream`): one stdio stream of a process, opened by the host
//!   *before* the `CreateContainer` or `Exec` call that names it in its
//!   [`StdioConfig`]. After the hello the connection carries the stream's raw bytes, no
//!   framing: the process reads and writes the socket directly. The host ends stdin by
//!   shutting down its writing side (or with `CloseStdin`); the agent's side closes
//!   when the process and its children have closed theirs.
//!
//! # Frames
//!
//! A frame is a little-endian `u32` length followed by that many bytes of JSON (serde's
//! encoding of the types in [`messages`]); at most [`MAX_FRAME_LEN`] (4 MiB).
//! Enums are internally tagged: `{"kind": "control", "version": 2}`,
//! `{"id": 3, "call": {"call": "start_container", "container_id": "c1"}}`,
//! `{"type": "response", "id": 3, "result": {"Ok": {"reply": "done"}}}`.

pub mod frame;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod messages;
pub mod transport;

pub use frame::{read_frame, write_frame, FrameError, MAX_FRAME_LEN};
pub use messages::*;
pub use transport::{
    Connection, Connector, HybridVsockConnector, ListenAddress, Listener, UnixConnector,
    AGENT_VSOCK_PORT,
};
