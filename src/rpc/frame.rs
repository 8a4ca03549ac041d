//! The wire frame of internal RPC and its sans-IO encoder/decoder.
//!
//! # Frame layout (byte by byte)
//!
//! ```text
//! offset  size  field
//! 0       4     length L: u32 big-endian, bytes that follow (header 9 + payload); 9 <= L <= MAX_FRAME_LEN
//! 4       1     kind: 0 = request, 1 = response, 2 = error response, 3 = hello
//! 5       8     id: u64 big-endian; a response carries its request's id; hello uses 0
//! 13      L-9   payload: msgpack (rmp-serde `to_vec`: structs as arrays, enum variants by name)
//!               request  -> the peer pair's request enum
//!               response -> the peer pair's response enum
//!               error    -> a msgpack string, the remote error message
//!               hello    -> [`Hello`]
//! ```
//!
//! The fixed header keeps dispatch cheap and lets a receiver answer "bad request" for one id whose
//! payload does not decode without dropping the connection. A length above [`MAX_FRAME_LEN`] or below
//! the header size is a protocol error raised before any allocation; the decoder grows its buffer only
//! as bytes actually arrive.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::RpcError;

/// Bytes before the length-counted part.
pub const LENGTH_PREFIX: usize = 4;
/// kind (1) + id (8).
pub const HEADER_LEN: usize = 9;
/// Largest accepted L: a 64 MiB value plus key, fields and header.
pub const MAX_FRAME_LEN: usize = (64 << 20) + (64 << 10);

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    Request = 0,
    Response = 1,
    Error = 2,
    Hello = 3,
}

impl FrameKind {
    fn from_byte(byte: u8) -> Option<FrameKind> {
        match byte {
            0 => Some(FrameKind::Request),
            1 => Some(FrameKind::Response),
            2 => Some(FrameKind::Error),
            3 => Some(FrameKind::Hello),
            _ => None,
        }
    }
}

/// First frame a client may send on a new connection: which shard of the server should serve it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The shard (core) the connection wants; `None` = whichever accepted it.
    pub target_shard: Option<u32>,
    /// Free-form name of the caller, for logs ("gateway 10.0.0.1:5000").
    pub peer: String,
}

/// A decoded frame whose payload is still msgpack bytes (borrowed from the decoder).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub kind: FrameKind,
    pub id: u64,
    pub payload: &'a [u8],
}

impl Frame<'_> {
    /// Decodes the payload as `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, RpcError> {
        rmp_serde::from_slice(self.payload).map_err(|e| {
            RpcError::Protocol(format!("bad {:?} payload (id {}): {e}", self.kind, self.id))
        })
    }
}

/// Appends one frame to `out`, its payload encoded with rmp-serde. On error `out` is left as it was.
pub fn encode_frame<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    kind: FrameKind,
    id: u64,
    payload: &T,
) -> Result<(), RpcError> {
    let start = out.len();
    let mut failed = None;
    encode_frame_with(out, kind, id, |out| {
        failed = rmp_serde::encode::write(out, payload).err();
    })?;
    match failed {
        None => Ok(()),
        Some(e) => {
            out.truncate(start);
            Err(RpcError::Protocol(format!("cannot encode {kind:?}: {e}")))
        }
    }
}

/// Appends one frame whose payload `write` appends (a hand encoder, or rmp-serde). A payload that
/// makes the frame longer than [`MAX_FRAME_LEN`] is removed again and reported.
pub fn encode_frame_with(
    out: &mut Vec<u8>,
    kind: FrameKind,
    id: u64,
    write: impl FnOnce(&mut Vec<u8>),
) -> Result<(), RpcError> {
    let start = out.len();
    out.extend_from_slice(&[0; LENGTH_PREFIX]);
    out.push(kind as u8);
    out.extend_from_slice(&id.to_be_bytes());
    write(out);
    let len = out.len() - start - LENGTH_PREFIX;
    if len > MAX_FRAME_LEN {
        out.truncate(start);
        return Err(RpcError::Protocol(format!(
            "{kind:?} frame of {len} bytes exceeds the {MAX_FRAME_LEN} byte limit"
        )));
    }
    // len <= MAX_FRAME_LEN < u32::MAX, checked just above.
    out[start..start + LENGTH_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Splits a byte stream into frames. Feed it with [`FrameDecoder::spare`] + [`FrameDecoder::commit`]
/// (read straight into its buffer) or [`FrameDecoder::push`]; take frames with
/// [`FrameDecoder::next_frame`].
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    start: usize,
    /// End of valid bytes in `buf` (the rest is spare capacity handed to reads).
    end: usize,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts with bytes that were read before this decoder existed (e.g. past a hello).
    pub fn with_bytes(bytes: Vec<u8>) -> Self {
        let end = bytes.len();
        FrameDecoder {
            buf: bytes,
            start: 0,
            end,
        }
    }

    /// Bytes received and not yet returned as frames.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Consumes the decoder, returning its unconsumed bytes (for handing a connection on).
    pub fn into_buffered(mut self) -> Vec<u8> {
        self.buf.truncate(self.end);
        self.buf.drain(..self.start);
        self.buf
    }

    /// A writable area of at least `at_least` bytes after the buffered data.
    pub fn spare(&mut self, at_least: usize) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 && self.buf.len() - self.end < at_least {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < at_least {
            self.buf.resize(self.end + at_least, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Marks `n` bytes of the last [`FrameDecoder::spare`] area as received.
    pub fn commit(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Copies `bytes` in (tests and callers that do not read into the decoder directly).
    pub fn push(&mut self, bytes: &[u8]) {
        let spare = self.spare(bytes.len());
        spare[..bytes.len()].copy_from_slice(bytes);
        self.commit(bytes.len());
    }

    /// The next complete frame, `None` if more bytes are needed, or an error for a stream that can
    /// never be valid (the connection must then be closed).
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, RpcError> {
        let available = &self.buf[self.start..self.end];
        if available.len() < LENGTH_PREFIX {
            return Ok(None);
        }
        let mut prefix = [0u8; LENGTH_PREFIX];
        prefix.copy_from_slice(&available[..LENGTH_PREFIX]);
        let len = u32::from_be_bytes(prefix) as usize;
        if !(HEADER_LEN..=MAX_FRAME_LEN).contains(&len) {
            return Err(RpcError::Protocol(format!(
                "frame length {len} outside {HEADER_LEN}..={MAX_FRAME_LEN}"
            )));
        }
        if available.len() < LENGTH_PREFIX + len {
            return Ok(None);
        }
        let body = &available[LENGTH_PREFIX..LENGTH_PREFIX + len];
        let Some(kind) = FrameKind::from_byte(body[0]) else {
            return Err(RpcError::Protocol(format!(
                "unknown frame kind {}",
                body[0]
            )));
        };
        let mut id = [0u8; 8];
        id.copy_from_slice(&body[1..HEADER_LEN]);
        self.start += LENGTH_PREFIX + len;
        let payload = &self.buf[self.start - len + HEADER_LEN..self.start];
        Ok(Some(Frame {
            kind,
            id: u64::from_be_bytes(id),
            payload,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_bytes_match_the_documented_layout() {
        let mut out = Vec::new();
        encode_frame(&mut out, FrameKind::Response, 0x0102, &7u8).unwrap();
        assert_eq!(out, [0, 0, 0, 10, 1, 0, 0, 0, 0, 0, 0, 1, 2, 7]);
    }

    #[test]
    fn oversized_length_is_rejected_before_allocating() {
        let mut decoder = FrameDecoder::new();
        decoder.push(&u32::MAX.to_be_bytes());
        assert!(matches!(decoder.next_frame(), Err(RpcError::Protocol(_))));
        assert!(decoder.buffered().len() < 16);
    }

    #[test]
    fn too_short_length_and_unknown_kind_are_errors() {
        let mut decoder = FrameDecoder::new();
        decoder.push(&[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(decoder.next_frame().is_err());
        let mut decoder = FrameDecoder::new();
        decoder.push(&[0, 0, 0, 9, 9, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(decoder.next_frame().is_err());
    }

    #[test]
    fn leftover_bytes_survive_into_buffered() {
        let mut bytes = Vec::new();
        encode_frame(
            &mut bytes,
            FrameKind::Hello,
            0,
            &Hello {
                target_shard: Some(1),
                peer: "t".into(),
            },
        )
        .unwrap();
        encode_frame(&mut bytes, FrameKind::Request, 5, &"x").unwrap();
        let mut decoder = FrameDecoder::new();
        decoder.push(&bytes[..bytes.len() - 1]);
        let hello: Hello = decoder.next_frame().unwrap().unwrap().decode().unwrap();
        assert_eq!(hello.target_shard, Some(1));
        assert!(decoder.next_frame().unwrap().is_none());
        let rest = decoder.into_buffered();
        let mut again = FrameDecoder::with_bytes(rest);
        again.push(&bytes[bytes.len() - 1..]);
        let frame = again.next_frame().unwrap().unwrap();
        assert_eq!((frame.kind, frame.id), (FrameKind::Request, 5));
        assert_eq!(frame.decode::<String>().unwrap(), "x");
    }
}
