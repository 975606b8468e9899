//! The frames an out-of-process engine (`neoscope serve`) and its clients exchange over a local
//! socket: a 4-byte big-endian length, then that many bytes of JSON. A frame larger than
//! [`MAX_FRAME`] or one that is not valid JSON of the expected type is refused with an error
//! (the connection is then closed; the server keeps serving others).
//!
//! A session: the client sends [`Hello`] with the server's token; the server answers
//! [`Welcome`] (or an error frame and closes). Then the client sends [`ClientFrame`]s and the
//! server sends [`ServerFrame`]s.

use std::io::{Read, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ErrorKind};
use crate::protocol::{Command, Event, RequestId};

/// Largest frame accepted, in bytes (a projection of the whole vocabulary is ~10 MB of JSON).
pub const MAX_FRAME: usize = 256 * 1024 * 1024;

/// Version of this framing; a client and server of different versions refuse each other.
pub const WIRE_VERSION: u32 = 1;

/// The client's first frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Framing version.
    pub version: u32,
    /// The token the server printed (or read from its token file).
    pub token: String,
}

/// The server's answer to a good [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// Framing version.
    pub version: u32,
    /// The engine's device, in words.
    pub device: String,
}

/// What a client sends after the handshake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientFrame {
    /// Run a command under this id (ids are the client's own).
    Run {
        /// Request id.
        id: RequestId,
        /// The command (boxed: commands are large, cancels tiny).
        command: Box<Command>,
    },
    /// Cancel a request.
    Cancel {
        /// Request id.
        id: RequestId,
    },
}

/// What the server sends after the handshake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerFrame {
    /// An engine event.
    Event(Event),
    /// The connection is refused or broken (bad token, bad frame); the server closes it next.
    Error(ApiError),
}

fn protocol(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::Protocol, msg)
}

/// Writes one frame.
pub fn write_frame<T: Serialize>(w: &mut impl Write, value: &T) -> Result<(), ApiError> {
    let bytes = serde_json::to_vec(value).map_err(|e| protocol(format!("encoding: {e}")))?;
    if bytes.len() > MAX_FRAME {
        return Err(protocol(format!(
            "frame of {} bytes is larger than the limit of {MAX_FRAME}",
            bytes.len()
        )));
    }
    let len = u32::try_from(bytes.len()).map_err(|_| protocol("frame too large"))?;
    w.write_all(&len.to_be_bytes())
        .and_then(|()| w.write_all(&bytes))
        .and_then(|()| w.flush())
        .map_err(|e| protocol(format!("connection: {e}")))
}

/// Reads one frame; `Ok(None)` at a clean end of the stream.
pub fn read_frame<T: DeserializeOwned>(r: &mut impl Read) -> Result<Option<T>, ApiError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(protocol(format!("connection: {e}"))),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(protocol(format!(
            "frame of {len} bytes is larger than the limit of {MAX_FRAME}"
        )));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)
        .map_err(|e| protocol(format!("connection: truncated frame ({e})")))?;
    serde_json::from_slice(&buf)
        .map(Some)
        .map_err(|e| protocol(format!("malformed frame: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_frames_are_refused() {
        let f = ClientFrame::Cancel { id: 7 };
        let mut buf = Vec::new();
        write_frame(&mut buf, &f).unwrap();
        let back: ClientFrame = read_frame(&mut buf.as_slice()).unwrap().unwrap();
        assert_eq!(back, f);
        // Garbage JSON.
        let mut bad = 5u32.to_be_bytes().to_vec();
        bad.extend_from_slice(b"xxxxx");
        let e = read_frame::<ClientFrame>(&mut bad.as_slice()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Protocol);
        assert!(e.message.contains("malformed"), "{e}");
        // Too long.
        let huge = u32::MAX.to_be_bytes();
        let e = read_frame::<ClientFrame>(&mut huge.as_slice()).unwrap_err();
        assert!(e.message.contains("larger than the limit"), "{e}");
        // Truncated.
        let mut cut = 10u32.to_be_bytes().to_vec();
        cut.extend_from_slice(b"{}");
        assert!(read_frame::<ClientFrame>(&mut cut.as_slice()).is_err());
        // Clean end.
        assert!(
            read_frame::<ClientFrame>(&mut [].as_slice())
                .unwrap()
                .is_none()
        );
    }
}
