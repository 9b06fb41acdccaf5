//! The fuzzing harness for the protocol decoders (`fuzz/fuzz_targets/protocol_decode.rs`),
//! also run by the ordinary tests (`guest-agent/protocol/tests/fuzz_harness.rs`).
//!
//! [`decode`] reads the input as the bytes a peer sent on a control connection and feeds
//! them, through [`read_frame`] and a reader that hands them over in small pieces (as a
//! socket does), to both sides' decoders, in the order and the way they use them:
//!
//! - **the agent** (`guest-agent/src/server.rs`): one [`Hello`] frame, then frames read
//!   as JSON values, each the id picked out first and then decoded as a [`Request`]; an
//!   undecodable frame is answered and the next one read, as the agent does. The calls
//!   whose payload the agent decodes later (`UpdateResources`' resources) get that
//!   decoding too.
//! - **the runtime** (`runtime/src/agent/mod.rs`): one [`HelloReply`], then
//!   [`ServerMessage`]s until the first error.
//!
//! Input layout: byte 0 picks the read size (`1 + byte % 64`, or everything at once when
//! it is 255); the rest is the byte stream.
//!
//! A finding is a panic: a decoder's, or a failed invariant. The invariant: whatever
//! decodes, encoded again with [`write_frame`], decodes to the same value.

use std::fmt::Debug;
use std::io::{self, Read};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::frame::{read_frame, write_frame, FrameError};
use crate::messages::{Call, Hello, HelloReply, Request, ServerMessage, PROTOCOL_VERSION};

/// What one input reached (for tests that check the harness gets somewhere).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The agent read a hello (of any version).
    pub hello: bool,
    /// ... of this protocol version (the agent would go on to read requests).
    pub hello_accepted: bool,
    /// Requests the agent decoded.
    pub requests: usize,
    /// Frames the agent answered with `BadRequest` and went on.
    pub bad_requests: usize,
    /// The runtime read the agent's hello reply.
    pub hello_reply: bool,
    /// Server messages the runtime decoded.
    pub server_messages: usize,
}

/// Hands out at most `chunk` bytes per read, like a socket.
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.chunk.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Runs both sides' decoders over `data` (see the module docs). Never panics unless a
/// decoder does or an invariant fails.
pub fn decode(data: &[u8]) -> Summary {
    let Some((&first, stream)) = data.split_first() else {
        return Summary::default();
    };
    let chunk = if first == 255 {
        usize::MAX
    } else {
        1 + usize::from(first % 64)
    };
    let mut summary = Summary::default();
    agent_side(
        &mut Chunked {
            data: stream,
            chunk,
        },
        &mut summary,
    );
    runtime_side(
        &mut Chunked {
            data: stream,
            chunk,
        },
        &mut summary,
    );
    summary
}

/// As `guest-agent/src/server.rs` reads a connection.
fn agent_side(reader: &mut impl Read, summary: &mut Summary) {
    let hello: Hello = match read_frame(reader) {
        Ok(hello) => hello,
        Err(_) => return,
    };
    round_trip(&hello);
    summary.hello = true;
    if hello.version() != PROTOCOL_VERSION {
        return;
    }
    summary.hello_accepted = true;
    // Hello::Stream: the rest is raw bytes, not frames; read them as requests anyway,
    // for coverage (the decoders must take any bytes).
    loop {
        match read_frame::<serde_json::Value>(reader) {
            Ok(value) => {
                round_trip(&value);
                let _id = value
                    .get("id")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0);
                match serde_json::from_value::<Request>(value) {
                    Ok(request) => {
                        round_trip(&request);
                        payloads(&request);
                        summary.requests += 1;
                    }
                    Err(_) => summary.bad_requests += 1,
                }
            }
            // A whole frame was read: the agent answers and reads on.
            Err(FrameError::Malformed(_)) => summary.bad_requests += 1,
            Err(_) => return,
        }
    }
}

/// The parts of a request the agent decodes only when it serves the call (the spec of
/// `CreateContainer` is the agent's own harness: `husk_agent::fuzzing`).
fn payloads(request: &Request) {
    if let Call::UpdateResources { resources, .. } = &request.call {
        if let Ok(resources) =
            serde_json::from_value::<oci_spec::runtime::LinuxResources>(resources.clone())
        {
            round_trip(&resources);
        }
    }
}

/// As `runtime/src/agent/mod.rs` reads the agent.
fn runtime_side(reader: &mut impl Read, summary: &mut Summary) {
    let reply: HelloReply = match read_frame(reader) {
        Ok(reply) => reply,
        Err(_) => return,
    };
    round_trip(&reply);
    summary.hello_reply = true;
    while let Ok(message) = read_frame::<ServerMessage>(reader) {
        round_trip(&message);
        summary.server_messages += 1;
    }
}

/// The invariant: `value` (just decoded from a frame) encodes into a frame that decodes
/// back to `value`.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T) {
    let mut wire = Vec::new();
    if let Err(e) = write_frame(&mut wire, value) {
        // Only a value that grew past the frame limit may fail to encode; a decoded
        // frame was at most the limit, and encoding it again may not grow it much.
        assert!(
            matches!(e, FrameError::TooLarge(_)),
            "a decoded value does not encode: {e} ({value:?})"
        );
        return;
    }
    let back: T = match read_frame(&mut wire.as_slice()) {
        Ok(back) => back,
        Err(e) => panic!(
            "a decoded value does not decode again: {e}\nvalue {value:?}\nwire {:?}",
            String::from_utf8_lossy(&wire[4..])
        ),
    };
    assert_eq!(&back, value, "a decoded value changes on a round trip");
}

/// One frame: the length prefix and `body` (for tests and seeds).
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(body);
    out
}
