//! Framing: a little-endian u32 length, then that many bytes of JSON.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The largest frame either side sends or accepts (an OCI spec is tens of KiB).
pub const MAX_FRAME_LEN: usize = 4 << 20;

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum FrameError {
    /// the connection closed
    Closed,
    /// connection I/O failed: {0}
    Io(#[from] io::Error),
    /// a frame of {0} bytes is larger than the limit of 4 MiB
    TooLarge(usize),
    /// a frame does not hold a valid message: {0}
    Malformed(#[from] serde_json::Error),
}

/// Reads one frame and decodes it. A connection that closes between frames gives
/// [`FrameError::Closed`]; one that closes inside a frame gives an I/O error.
pub fn read_frame<T: DeserializeOwned>(reader: &mut impl Read) -> Result<T, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        match reader.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    Ok(serde_json::from_slice(&body)?)
}

/// Encodes `message` and writes it as one frame (one `write_all`, so frames written by
/// threads that share a connection under a lock never interleave).
pub fn write_frame<T: Serialize>(writer: &mut impl Write, message: &T) -> Result<(), FrameError> {
    let mut frame = vec![0u8; 4];
    serde_json::to_writer(&mut frame, message)?;
    let len = frame.len() - 4;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(len));
    }
    frame[..4].copy_from_slice(&(len as u32).to_le_bytes());
    writer.write_all(&frame)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{Call, Request};

    #[test]
    fn frames_round_trip() {
        let request = Request {
            id: 7,
            call: Call::Pids {
                container_id: "c1".into(),
            },
        };
        let mut wire = Vec::new();
        write_frame(&mut wire, &request).expect("encoding");
        assert_eq!(
            u32::from_le_bytes([wire[0], wire[1], wire[2], wire[3]]) as usize,
            wire.len() - 4
        );
        let back: Request = read_frame(&mut wire.as_slice()).expect("decoding");
        assert_eq!(back, request);
    }

    #[test]
    fn every_message_kind_round_trips() {
        use crate::messages::*;
        let messages = vec![
            ServerMessage::Event(Event::Log {
                level: LogLevel::Warn,
                message: "careful".into(),
            }),
            ServerMessage::Event(Event::Exited {
                container_id: "c".into(),
                exec_id: Some("e".into()),
                info: ExitInfo {
                    status: ExitStatus::Signal(9),
                    exited_at_ns: 5,
                },
            }),
            ServerMessage::Response {
                id: 1,
                result: Ok(Reply::Stats(ContainerStats::default())),
            },
            ServerMessage::Response {
                id: 2,
                result: Err(AgentError::new(ErrorKind::NotFound, "no such thing")),
            },
        ];
        for message in messages {
            let mut wire = Vec::new();
            write_frame(&mut wire, &message).expect("encoding");
            let back: ServerMessage = read_frame(&mut wire.as_slice()).expect("decoding");
            assert_eq!(back, message);
        }
    }

    #[test]
    fn bad_frames_are_errors() {
        let mut empty: &[u8] = &[];
        assert!(matches!(
            read_frame::<Request>(&mut empty),
            Err(FrameError::Closed)
        ));
        let mut short: &[u8] = &[1, 0];
        assert!(matches!(
            read_frame::<Request>(&mut short),
            Err(FrameError::Io(_))
        ));
        let huge = ((MAX_FRAME_LEN + 1) as u32).to_le_bytes();
        assert!(matches!(
            read_frame::<Request>(&mut &huge[..]),
            Err(FrameError::TooLarge(_))
        ));
        let mut garbage = 5u32.to_le_bytes().to_vec();
        garbage.extend_from_slice(b"nope!");
        assert!(matches!(
            read_frame::<Request>(&mut garbage.as_slice()),
            Err(FrameError::Malformed(_))
        ));
        let mut cut = 10u32.to_le_bytes().to_vec();
        cut.extend_from_slice(b"{\"id\"");
        assert!(matches!(
            read_frame::<Request>(&mut cut.as_slice()),
            Err(FrameError::Io(_))
        ));
    }
}
