//! The memcached binary protocol (and its async "cloudy" use): request decoding and reply encoding.
//!
//! Every packet starts with a 24-byte header, all integers big-endian:
//!
//! ```text
//! byte 0      magic      0x80 request, 0x81 response
//! byte 1      opcode
//! bytes 2-3   key length
//! byte 4      extras length
//! byte 5      data type  (0)
//! bytes 6-7   vbucket id (request) / status (response)
//! bytes 8-11  total body length = extras + key + value
//! bytes 12-15 opaque     (echoed in the response; cloudy clients match replies by it)
//! bytes 16-23 CAS
//! ```
//!
//! followed by the extras, the key and the value. Header lengths are checked per opcode as
//! memcached 1.6 does (a mismatch is answered 0x0004 and the connection closed); values above the item
//! limit are answered 0x0003 and discarded as they arrive, never buffered whole.

use std::borrow::Cow;

use super::types::{
    Command, Dialect, ErrorReply, KeyList, Reply, ReplyContext, Request, StoreMode,
};
use super::{Limits, ProtocolError};

pub const HEADER_LEN: usize = 24;
pub(crate) const REQUEST_MAGIC: u8 = 0x80;
pub(crate) const RESPONSE_MAGIC: u8 = 0x81;

/// Opcodes of memcached 1.6's binary protocol.
pub mod opcode {
    pub const GET: u8 = 0x00;
    pub const SET: u8 = 0x01;
    pub const ADD: u8 = 0x02;
    pub const REPLACE: u8 = 0x03;
    pub const DELETE: u8 = 0x04;
    pub const INCREMENT: u8 = 0x05;
    pub const DECREMENT: u8 = 0x06;
    pub const QUIT: u8 = 0x07;
    pub const FLUSH: u8 = 0x08;
    pub const GETQ: u8 = 0x09;
    pub const NOOP: u8 = 0x0a;
    pub const VERSION: u8 = 0x0b;
    pub const GETK: u8 = 0x0c;
    pub const GETKQ: u8 = 0x0d;
    pub const APPEND: u8 = 0x0e;
    pub const PREPEND: u8 = 0x0f;
    pub const STAT: u8 = 0x10;
    pub const SETQ: u8 = 0x11;
    pub const ADDQ: u8 = 0x12;
    pub const REPLACEQ: u8 = 0x13;
    pub const DELETEQ: u8 = 0x14;
    pub const INCREMENTQ: u8 = 0x15;
    pub const DECREMENTQ: u8 = 0x16;
    pub const QUITQ: u8 = 0x17;
    pub const FLUSHQ: u8 = 0x18;
    pub const APPENDQ: u8 = 0x19;
    pub const PREPENDQ: u8 = 0x1a;
    pub const VERBOSITY: u8 = 0x1b;
    pub const TOUCH: u8 = 0x1c;
    pub const GAT: u8 = 0x1d;
    pub const GATQ: u8 = 0x1e;
    pub const SASL_LIST_MECHS: u8 = 0x20;
    pub const SASL_AUTH: u8 = 0x21;
    pub const SASL_STEP: u8 = 0x22;
    pub const GATK: u8 = 0x23;
    pub const GATKQ: u8 = 0x24;
}

/// Response status codes.
pub mod status {
    pub const SUCCESS: u16 = 0x0000;
    pub const KEY_ENOENT: u16 = 0x0001;
    pub const KEY_EEXISTS: u16 = 0x0002;
    pub const E2BIG: u16 = 0x0003;
    pub const EINVAL: u16 = 0x0004;
    pub const NOT_STORED: u16 = 0x0005;
    pub const DELTA_BADVAL: u16 = 0x0006;
    pub const UNKNOWN_COMMAND: u16 = 0x0081;
    pub const ENOMEM: u16 = 0x0082;
    pub const INTERNAL_ERROR: u16 = 0x0084;
}

/// The parsed fixed header of a request.
#[derive(Clone, Copy, Debug)]
struct Header {
    opcode: u8,
    key_len: usize,
    extras_len: usize,
    body_len: usize,
    opaque: u32,
    cas: u64,
}

impl Header {
    fn parse(bytes: &[u8; HEADER_LEN]) -> Header {
        Header {
            opcode: bytes[1],
            key_len: usize::from(u16::from_be_bytes([bytes[2], bytes[3]])),
            extras_len: usize::from(bytes[4]),
            body_len: u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            opaque: u32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]),
            cas: u64::from_be_bytes(bytes[16..24].try_into().unwrap_or([0; 8])),
        }
    }

    /// Whether the lengths fit the opcode, as memcached 1.6 checks them (the body is known to hold
    /// the key and extras).
    fn lengths_ok(&self, limits: &Limits) -> bool {
        use opcode::*;
        let (k, e, b) = (self.key_len, self.extras_len, self.body_len);
        if k > limits.max_key {
            return false;
        }
        match base_opcode(self.opcode) {
            GET | GETK => e == 0 && k > 0 && b == k,
            SET | ADD | REPLACE => e == 8 && k > 0,
            APPEND | PREPEND => e == 0 && k > 0,
            DELETE => e == 0 && k > 0 && b == k,
            INCREMENT | DECREMENT => e == 20 && k > 0 && b == k + 20,
            QUIT | NOOP | VERSION => e == 0 && k == 0 && b == 0,
            FLUSH => (e == 0 || e == 4) && k == 0 && b == e,
            STAT => e == 0 && b == k,
            TOUCH | GAT | GATK => e == 4 && k > 0 && b == k + 4,
            SASL_LIST_MECHS => e == 0 && k == 0 && b == 0,
            SASL_AUTH | SASL_STEP => e == 0 && k > 0,
            _ => true,
        }
    }
}

/// The non-quiet opcode a quiet one stands for.
pub(crate) fn base_opcode(op: u8) -> u8 {
    use opcode::*;
    match op {
        GETQ => GET,
        GETKQ => GETK,
        SETQ => SET,
        ADDQ => ADD,
        REPLACEQ => REPLACE,
        DELETEQ => DELETE,
        INCREMENTQ => INCREMENT,
        DECREMENTQ => DECREMENT,
        QUITQ => QUIT,
        FLUSHQ => FLUSH,
        APPENDQ => APPEND,
        PREPENDQ => PREPEND,
        GATQ => GAT,
        GATKQ => GATK,
        other => other,
    }
}

fn is_quiet(op: u8) -> bool {
    base_opcode(op) != op
}

/// Decodes binary requests; keeps only the count of refused body bytes still to discard.
#[derive(Clone, Debug)]
pub struct BinaryDecoder {
    limits: Limits,
    swallow: usize,
}

impl BinaryDecoder {
    pub fn new(limits: Limits) -> BinaryDecoder {
        BinaryDecoder { limits, swallow: 0 }
    }

    /// Decodes the first request in `buf`. `Ok(None)`: need more bytes, nothing consumed.
    pub fn decode<'a>(
        &mut self,
        buf: &'a [u8],
    ) -> Result<Option<(Request<'a>, usize)>, ProtocolError> {
        if self.swallow > 0 {
            let n = self.swallow.min(buf.len());
            if n == 0 {
                return Ok(None);
            }
            self.swallow -= n;
            let skip = Request {
                command: Command::Skip,
                ctx: context(opcode::NOOP, 0),
            };
            return Ok(Some((skip, n)));
        }
        let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        if head[0] != REQUEST_MAGIC {
            return Err(ProtocolError::BadMagic(head[0]));
        }
        let header = Header::parse(head);
        let ctx = context(header.opcode, header.opaque);
        if header.body_len < header.key_len + header.extras_len {
            return Err(ProtocolError::BinaryBodyTooShort {
                opcode: header.opcode,
                opaque: header.opaque,
            });
        }
        if !header.lengths_ok(&self.limits) {
            return Err(ProtocolError::InvalidBinary {
                opcode: header.opcode,
                opaque: header.opaque,
            });
        }
        let total = HEADER_LEN + header.body_len;
        let value_len = header.body_len - header.key_len - header.extras_len;
        let base = base_opcode(header.opcode);
        let known = known_opcode(base);
        if !known || value_len > self.limits.max_item {
            // Refuse without buffering: once the (small, bounded) key is here, reply and discard
            // the rest of the body as it arrives.
            let key_end = HEADER_LEN + header.extras_len + header.key_len;
            let Some(key) = buf.get(HEADER_LEN + header.extras_len..key_end) else {
                return Ok(None);
            };
            let here = total.min(buf.len());
            self.swallow = total - here;
            let command = if known {
                let remove_old = base == opcode::SET;
                Command::TooLarge {
                    key: Cow::Borrowed(key),
                    remove_old,
                }
            } else {
                Command::Reject(ErrorReply::UnknownCommand)
            };
            return Ok(Some((Request { command, ctx }, here)));
        }
        if buf.len() < total {
            return Ok(None);
        }
        let extras = &buf[HEADER_LEN..HEADER_LEN + header.extras_len];
        let key_start = HEADER_LEN + header.extras_len;
        let key = &buf[key_start..key_start + header.key_len];
        let value = &buf[key_start + header.key_len..total];
        let command = command(&header, extras, key, value);
        Ok(Some((Request { command, ctx }, total)))
    }
}

fn known_opcode(base: u8) -> bool {
    use opcode::*;
    matches!(
        base,
        GET | SET
            | ADD
            | REPLACE
            | DELETE
            | INCREMENT
            | DECREMENT
            | QUIT
            | FLUSH
            | NOOP
            | VERSION
            | GETK
            | APPEND
            | PREPEND
            | STAT
            | TOUCH
            | GAT
            | GATK
    )
}

fn context(op: u8, opaque: u32) -> ReplyContext {
    let base = base_opcode(op);
    ReplyContext {
        dialect: Dialect::Binary,
        quiet: is_quiet(op),
        with_cas: true,
        opcode: op,
        opaque,
        echo_key: base == opcode::GETK || base == opcode::GATK,
        meta: Default::default(),
    }
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_be_bytes)
}

fn be_u64(bytes: &[u8], at: usize) -> u64 {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// Builds the command of a request whose lengths were already checked against its opcode.
fn command<'a>(header: &Header, extras: &[u8], key: &'a [u8], value: &'a [u8]) -> Command<'a> {
    use opcode::*;
    let base = base_opcode(header.opcode);
    let owned_key = Cow::Borrowed(key);
    let cas = (header.cas != 0).then_some(header.cas);
    // memcached turns a set, add or replace that carries a CAS into a plain compare-and-swap.
    let store = |mode: StoreMode| Command::Store {
        mode: if cas.is_some() { StoreMode::Set } else { mode },
        key: Cow::Borrowed(key),
        flags: be_u32(extras, 0),
        exptime: i64::from(be_u32(extras, 4)),
        value,
        cas,
    };
    match base {
        GET | GETK => Command::Get {
            keys: KeyList::One(owned_key),
            with_cas: true,
            touch: None,
        },
        GAT | GATK => {
            let touch = Some(i64::from(be_u32(extras, 0)));
            Command::Get {
                keys: KeyList::One(owned_key),
                with_cas: true,
                touch,
            }
        }
        SET => store(StoreMode::Set),
        ADD => store(StoreMode::Add),
        REPLACE => store(StoreMode::Replace),
        // No extras: flags and expiry stay as they are.
        APPEND | PREPEND => Command::Store {
            mode: if base == APPEND {
                StoreMode::Append
            } else {
                StoreMode::Prepend
            },
            key: owned_key,
            flags: 0,
            exptime: 0,
            value,
            cas,
        },
        DELETE => Command::Delete {
            key: owned_key,
            cas: header.cas,
        },
        INCREMENT | DECREMENT => {
            let exptime = be_u32(extras, 16);
            let initial = (exptime != u32::MAX).then(|| (be_u64(extras, 8), i64::from(exptime)));
            Command::Arith {
                incr: base == INCREMENT,
                key: owned_key,
                delta: be_u64(extras, 0),
                initial,
                cas: header.cas,
                touch: None,
            }
        }
        // memcached answers a binary touch like a GAT without the value (flags in the extras), so
        // it is decoded as one; the encoder drops the value for this opcode.
        TOUCH => {
            let touch = Some(i64::from(be_u32(extras, 0)));
            Command::Get {
                keys: KeyList::One(owned_key),
                with_cas: true,
                touch,
            }
        }
        FLUSH => Command::FlushAll {
            delay: i64::from(be_u32(extras, 0)),
        },
        STAT => Command::Stats { sub: key },
        VERSION => Command::Version,
        NOOP => Command::Noop,
        QUIT => Command::Quit,
        _ => Command::Reject(ErrorReply::UnknownCommand),
    }
}

/// The variable fields of a response header.
struct ResponseHead {
    op: u8,
    key_len: usize,
    extras_len: usize,
    status: u16,
    body_len: usize,
    opaque: u32,
    cas: u64,
}

/// Appends a response header. Lengths were bounded by the limits (key <= 250, extras <= 4, body
/// <= item size), so the narrowing casts cannot truncate.
fn write_header(out: &mut Vec<u8>, head: ResponseHead) {
    out.push(RESPONSE_MAGIC);
    out.push(head.op);
    out.extend_from_slice(&(head.key_len as u16).to_be_bytes());
    out.push(head.extras_len as u8);
    out.push(0);
    out.extend_from_slice(&head.status.to_be_bytes());
    out.extend_from_slice(&(head.body_len as u32).to_be_bytes());
    out.extend_from_slice(&head.opaque.to_be_bytes());
    out.extend_from_slice(&head.cas.to_be_bytes());
}

fn status_message(status: u16) -> &'static [u8] {
    match status {
        status::KEY_ENOENT => b"Not found",
        status::KEY_EEXISTS => b"Data exists for key.",
        status::E2BIG => b"Too large.",
        status::EINVAL => b"Invalid arguments",
        status::NOT_STORED => b"Not stored.",
        status::DELTA_BADVAL => b"Non-numeric server-side value for incr or decr",
        status::UNKNOWN_COMMAND => b"Unknown command",
        status::ENOMEM => b"Out of memory",
        _ => b"Internal error",
    }
}

/// An error response with memcached's message as the body.
pub(crate) fn write_error(out: &mut Vec<u8>, op: u8, opaque: u32, status: u16) {
    let message = status_message(status);
    write_header(
        out,
        ResponseHead {
            op,
            key_len: 0,
            extras_len: 0,
            status,
            body_len: message.len(),
            opaque,
            cas: 0,
        },
    );
    out.extend_from_slice(message);
}

fn write_status(out: &mut Vec<u8>, ctx: &ReplyContext, status: u16, cas: u64) {
    write_header(
        out,
        ResponseHead {
            op: ctx.opcode,
            key_len: 0,
            extras_len: 0,
            status,
            body_len: 0,
            opaque: ctx.opaque,
            cas,
        },
    );
}

fn error_status(error: ErrorReply) -> u16 {
    match error {
        ErrorReply::UnknownCommand => status::UNKNOWN_COMMAND,
        ErrorReply::TooLarge => status::E2BIG,
        ErrorReply::NonNumeric => status::DELTA_BADVAL,
        ErrorReply::OutOfMemory => status::ENOMEM,
        ErrorReply::Server(_) => status::INTERNAL_ERROR,
        _ => status::EINVAL,
    }
}

/// Encodes one reply in the binary dialect.
pub(crate) fn encode(reply: &Reply<'_>, ctx: &ReplyContext, out: &mut Vec<u8>) {
    use opcode::*;
    let base = base_opcode(ctx.opcode);
    match *reply {
        Reply::Value(value) => {
            let key: &[u8] = if ctx.echo_key { value.key } else { &[] };
            let data: &[u8] = if base == TOUCH { &[] } else { value.data };
            let body = 4 + key.len() + data.len();
            write_header(
                out,
                ResponseHead {
                    op: ctx.opcode,
                    key_len: key.len(),
                    extras_len: 4,
                    status: 0,
                    body_len: body,
                    opaque: ctx.opaque,
                    cas: value.cas,
                },
            );
            out.extend_from_slice(&value.flags.to_be_bytes());
            out.extend_from_slice(key);
            out.extend_from_slice(data);
        }
        Reply::Miss(key) => {
            if ctx.quiet {
                return;
            }
            if ctx.echo_key {
                write_header(
                    out,
                    ResponseHead {
                        op: ctx.opcode,
                        key_len: key.len(),
                        extras_len: 0,
                        status: status::KEY_ENOENT,
                        body_len: key.len(),
                        opaque: ctx.opaque,
                        cas: 0,
                    },
                );
                out.extend_from_slice(key);
            } else {
                write_error(out, ctx.opcode, ctx.opaque, status::KEY_ENOENT);
            }
        }
        Reply::End => {
            if base == STAT {
                write_status(out, ctx, status::SUCCESS, 0);
            }
        }
        Reply::Stored(cas) => {
            if !ctx.quiet {
                write_status(out, ctx, status::SUCCESS, cas);
            }
        }
        Reply::NotStored => {
            let status = match base {
                ADD => status::KEY_EEXISTS,
                REPLACE => status::KEY_ENOENT,
                _ => status::NOT_STORED,
            };
            write_error(out, ctx.opcode, ctx.opaque, status);
        }
        Reply::Exists => write_error(out, ctx.opcode, ctx.opaque, status::KEY_EEXISTS),
        Reply::NotFound => write_error(out, ctx.opcode, ctx.opaque, status::KEY_ENOENT),
        Reply::Deleted | Reply::Touched | Reply::Ok | Reply::Quit | Reply::Reset => {
            if !ctx.quiet {
                write_status(out, ctx, status::SUCCESS, 0);
            }
        }
        Reply::Number(number, cas)
        | Reply::Counter {
            value: number, cas, ..
        } => {
            if !ctx.quiet {
                write_header(
                    out,
                    ResponseHead {
                        op: ctx.opcode,
                        key_len: 0,
                        extras_len: 0,
                        status: status::SUCCESS,
                        body_len: 8,
                        opaque: ctx.opaque,
                        cas,
                    },
                );
                out.extend_from_slice(&number.to_be_bytes());
            }
        }
        Reply::Version(version) => {
            write_header(
                out,
                ResponseHead {
                    op: ctx.opcode,
                    key_len: 0,
                    extras_len: 0,
                    status: status::SUCCESS,
                    body_len: version.len(),
                    opaque: ctx.opaque,
                    cas: 0,
                },
            );
            out.extend_from_slice(version.as_bytes());
        }
        Reply::Stat(name, value) => {
            let body = name.len() + value.len();
            write_header(
                out,
                ResponseHead {
                    op: ctx.opcode,
                    key_len: name.len(),
                    extras_len: 0,
                    status: status::SUCCESS,
                    body_len: body,
                    opaque: ctx.opaque,
                    cas: 0,
                },
            );
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(value.as_bytes());
        }
        Reply::Noop => write_status(out, ctx, status::SUCCESS, 0),
        Reply::Error(error) => write_error(out, ctx.opcode, ctx.opaque, error_status(error)),
    }
}
