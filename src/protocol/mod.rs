//! The memcached wire formats kumo-gateway speaks: text (with the 1.6 meta commands), binary, and
//! async binary ("cloudy": binary framing, replies in completion order, matched by opaque). No I/O,
//! no storage, no cluster: decoders turn bytes into typed [`Request`]s that borrow from the read
//! buffer, and [`encode()`] turns a dialect-neutral [`Reply`] into bytes appended to a write buffer.
//!
//! The gateway loop this is built for:
//!
//! ```
//! use kumofs::protocol::{encode, Command, Decoder, Limits, Reply};
//! let mut decoder = Decoder::auto(Limits::default());
//! let input = b"set k 0 0 1\r\nv\r\nget k\r\n";
//! let (mut at, mut out) = (0, Vec::new());
//! while let Some((request, used)) = decoder.decode(&input[at..]).unwrap() {
//!     at += used;
//!     let reply = match request.command {
//!         Command::Store { .. } => Reply::Stored(1),
//!         _ => Reply::End,
//!     };
//!     encode(&reply, &request.ctx, &mut out);
//! }
//! assert_eq!(out, b"STORED\r\nEND\r\n");
//! ```
//!
//! Behaviour on bad input follows memcached 1.6.18, not kumofs 0.4.13 (whose quirks we do not copy):
//! errors are answered and the connection stays open, except for the few cases memcached closes
//! ([`ProtocolError`]).
//!
//! # What the gateway must do for each command
//!
//! - `Get`: one [`Reply::Value`] or [`Reply::Miss`] per key in order, then [`Reply::End`]. Binary
//!   Touch arrives as a `Get` with `touch` set (memcached answers it like GAT without the value).
//! - `TooLarge { remove_old }`: answer `Reply::Error(ErrorReply::TooLarge)` and delete the key if
//!   `remove_old`. `Skip`: nothing. `Reject(e)`: answer `Reply::Error(e)`.
//! - `Stats { sub }`: classify with [`StatsGroup::parse`] (binary: unknown group -> `Reply::NotFound`).
//! - `Arith`: compare `cas` when non-zero (`Reply::Exists`), set the `touch` expiry when applied, and
//!   answer [`Reply::Counter`] (with the TTL, for meta `t`) or `Reply::Number`.
//! - `Quit`: encode `Reply::Quit` (binary answers it unless quiet), write, close.
//! - On `Err(e)`: write `e.farewell()`, then close.
//!
//! # Deliberate differences from memcached 1.6.18
//!
//! Checked against a real memcached 1.6.18 by `tests/protocol_diff_*.rs`; the full list, and issue
//! 3 item by item, is in `src/protocol/CONFORMANCE.md`. In short: keys with control characters and
//! out-of-range numbers are refused (memcached accepts or wraps them); the item limit counts the
//! value only; a get line is bounded by [`Limits::max_get_line`]; meta `k` with `b` always echoes
//! base64; the meta flags that need item metadata kumofs does not keep (`mg h l N R`, `md I`, `ms I`
//! with `C`) are refused with `CLIENT_ERROR invalid flag` and `me` with `SERVER_ERROR`; a binary
//! unknown command's body (binary verbosity is one) is swallowed exactly.

mod base64;
mod binary;
mod encode;
mod meta;
mod request_writer;
mod text;
mod types;

pub use binary::{opcode, status, BinaryDecoder, HEADER_LEN};
pub use encode::{encode, encode_keyed};
pub use request_writer::{write_binary_request, write_text_request};
pub use text::{TextDecoder, MAX_LINE_WITHOUT_NEWLINE};
pub use types::{
    Command, Dialect, ErrorReply, Exptime, KeyList, MetaFlags, Opaque, Reply, ReplyContext,
    Request, StatsGroup, StoreMode, Value,
};

use std::fmt;

/// Size limits, the decoder's defence against abusive input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest key, 250 bytes in memcached.
    pub max_key: usize,
    /// Largest value (`-I`), 1 MiB by default.
    pub max_item: usize,
    /// Longest text line (a long multi-key get); memcached has no bound, we do.
    pub max_get_line: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_key: 250,
            max_item: 1024 * 1024,
            max_get_line: 1024 * 1024,
        }
    }
}

impl Limits {
    /// A key is 1..=max_key bytes with no space or control character.
    pub fn key_ok(&self, key: &[u8]) -> bool {
        !key.is_empty() && key.len() <= self.max_key && key.iter().all(|&b| b > b' ' && b != 0x7f)
    }
}

/// The connection must be closed. Write [`ProtocolError::farewell`] first (it may be empty).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// More than 2048 bytes without a newline that is not a get (or a get beyond `max_get_line`).
    LineTooLong,
    /// An HTTP request line: closed without a reply, as memcached does.
    HttpRequest,
    /// A binary request whose first byte is not the request magic 0x80.
    BadMagic(u8),
    /// A binary header whose lengths do not fit its opcode: answered 0x0004 and closed.
    InvalidBinary { opcode: u8, opaque: u32 },
    /// A binary header whose body is shorter than its key and extras: answered 0x0081 (as
    /// memcached 1.6.18 does) and closed.
    BinaryBodyTooShort { opcode: u8, opaque: u32 },
}

impl ProtocolError {
    /// The bytes memcached sends before closing.
    pub fn farewell(&self, out: &mut Vec<u8>) {
        match *self {
            ProtocolError::InvalidBinary { opcode, opaque } => {
                binary::write_error(out, opcode, opaque, status::EINVAL)
            }
            ProtocolError::BinaryBodyTooShort { opcode, opaque } => {
                binary::write_error(out, opcode, opaque, status::UNKNOWN_COMMAND)
            }
            _ => {}
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::LineTooLong => write!(f, "request line too long"),
            ProtocolError::HttpRequest => write!(f, "HTTP request on a memcached port"),
            ProtocolError::BadMagic(b) => write!(f, "bad binary magic byte 0x{b:02x}"),
            ProtocolError::InvalidBinary { opcode, .. } => {
                write!(f, "invalid binary request header for opcode 0x{opcode:02x}")
            }
            ProtocolError::BinaryBodyTooShort { opcode, .. } => {
                write!(
                    f,
                    "binary body shorter than key and extras, opcode 0x{opcode:02x}"
                )
            }
        }
    }
}

impl std::error::Error for ProtocolError {}

/// A per-connection decoder: fixed to one dialect, or picking text or binary from the first byte the
/// way memcached does (0x80 means binary).
#[derive(Clone, Debug)]
pub struct Decoder {
    state: DecoderState,
    limits: Limits,
}

#[derive(Clone, Debug)]
enum DecoderState {
    Undecided,
    Text(TextDecoder),
    Binary(BinaryDecoder),
}

impl Decoder {
    pub fn auto(limits: Limits) -> Decoder {
        Decoder {
            state: DecoderState::Undecided,
            limits,
        }
    }

    pub fn text(limits: Limits) -> Decoder {
        Decoder {
            state: DecoderState::Text(TextDecoder::new(limits)),
            limits,
        }
    }

    /// Binary and async binary: the framing is the same, only the gateway's reply order differs.
    pub fn binary(limits: Limits) -> Decoder {
        Decoder {
            state: DecoderState::Binary(BinaryDecoder::new(limits)),
            limits,
        }
    }

    /// Decodes the first request in `buf`: `Ok(None)` = need more bytes (nothing consumed), otherwise
    /// the request and the number of bytes it used. After `Ok(None)` call again with the same
    /// unconsumed bytes followed by newly read ones (the decoder remembers how far it searched).
    pub fn decode<'a>(
        &mut self,
        buf: &'a [u8],
    ) -> Result<Option<(Request<'a>, usize)>, ProtocolError> {
        if let DecoderState::Undecided = self.state {
            match buf.first() {
                None => return Ok(None),
                Some(&binary::REQUEST_MAGIC) => {
                    self.state = DecoderState::Binary(BinaryDecoder::new(self.limits))
                }
                Some(_) => self.state = DecoderState::Text(TextDecoder::new(self.limits)),
            }
        }
        match &mut self.state {
            DecoderState::Text(decoder) => decoder.decode(buf),
            DecoderState::Binary(decoder) => decoder.decode(buf),
            DecoderState::Undecided => Ok(None),
        }
    }
}
