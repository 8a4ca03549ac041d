//! Hand-written msgpack for the data path's hot messages: `DataRequest::Get`/`GetNewest`/`Write`
//! and the `DataResponse`s they get. The bytes are exactly what rmp-serde writes for the same
//! values (tests below check it), so either side may use either codec; the hand codec only saves
//! the work serde does per message: matching variant names through a visitor, and above all
//! allocating a `Vec` for every key and value. Decoding borrows keys and values from the frame
//! instead.
//!
//! # Layout (rmp-serde's, written out)
//!
//! An enum variant with fields is a map of one entry: the variant name as a msgpack string, then its
//! fields as an array in declaration order; a variant without fields is just its name as a string.
//! Integers use the shortest msgpack form (positive fixint, then `0xcc` u8, `0xcd` u16, `0xce` u32,
//! `0xcf` u64, big endian); bytes are `bin` (`0xc4` len8, `0xc5` len16, `0xc6` len32); `bool` is
//! `0xc2`/`0xc3`; strings are fixstr `0xa0|len`, `0xd9` len8, `0xda` len16, `0xdb` len32.
//!
//! ```text
//! Get       81 a3 "Get"       92 hash bin(key)
//! GetNewest 81 a9 "GetNewest" 92 hash bin(key)
//! Write     81 a5 "Write"     97 hash bin(key) op bin(value) flags exptime noreply
//!             op: a3 "Set" | a3 "Add" | a7 "Replace" | a6 "Append" | a7 "Prepend" | a5 "Touch"
//!                 | a6 "Delete" | ab "GetAndTouch" | 81 a3 "Cas" 91 version
//!                 | 81 a9 "AppendCas" 91 version | 81 aa "PrependCas" 91 version
//!                 | 81 a9 "DeleteCas" 91 version
//!                 | 81 a4 "Incr" 94 delta cas initial touch
//!                 | 81 a4 "Decr" 94 delta cas initial touch
//!             (initial and touch: c0 (nil) for none, else the number)
//! Value     81 a5 "Value"     94 bin(value) flags version exptime
//! Stored    81 a6 "Stored"    91 version
//! Number    81 a6 "Number"    93 value version exptime
//! NotOwner  81 a8 "NotOwner"  91 routing_version
//! Error     81 a5 "Error"     str(message)
//! NotFound, NotStored, Exists, Deleted, NonNumeric, Touched, Flushed, Absent: the name alone
//! ```
//!
//! Anything the decoders here do not recognise (other variants, other integer widths) returns
//! `None`, and the caller falls back to rmp-serde, so this is an optimisation and never a dialect.

use super::messages::{Arith, DataRequest, DataResponse, WriteOp};
use super::RpcError;

/// A data request whose key and value borrow from the frame it was decoded from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataRequestRef<'a> {
    Get {
        hash: u64,
        key: &'a [u8],
    },
    GetNewest {
        hash: u64,
        key: &'a [u8],
    },
    Write {
        hash: u64,
        key: &'a [u8],
        op: WriteOp,
        value: &'a [u8],
        flags: u32,
        exptime: u32,
        noreply: bool,
    },
}

impl DataRequestRef<'_> {
    /// The owned message (for the paths that keep a request beyond its frame).
    pub fn to_owned(&self) -> DataRequest {
        match *self {
            DataRequestRef::Get { hash, key } => DataRequest::Get {
                hash,
                key: key.to_vec(),
            },
            DataRequestRef::GetNewest { hash, key } => DataRequest::GetNewest {
                hash,
                key: key.to_vec(),
            },
            DataRequestRef::Write {
                hash,
                key,
                op,
                value,
                flags,
                exptime,
                noreply,
            } => DataRequest::Write {
                hash,
                key: key.to_vec(),
                op,
                value: value.to_vec(),
                flags,
                exptime,
                noreply,
            },
        }
    }
}

/// A data response whose value borrows from the frame it was decoded from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataResponseRef<'a> {
    Value {
        value: &'a [u8],
        flags: u32,
        version: u64,
        exptime: u32,
    },
    NotFound,
    Stored {
        version: u64,
    },
    NotStored,
    Exists,
    Deleted,
    Number {
        value: u64,
        version: u64,
        exptime: u32,
    },
    NonNumeric,
    Touched,
    Flushed,
    NotOwner {
        routing_version: u64,
    },
    Error(&'a str),
    Absent,
}

impl DataResponseRef<'_> {
    pub fn to_owned(&self) -> DataResponse {
        match *self {
            DataResponseRef::Value {
                value,
                flags,
                version,
                exptime,
            } => DataResponse::Value {
                value: value.to_vec(),
                flags,
                version,
                exptime,
            },
            DataResponseRef::NotFound => DataResponse::NotFound,
            DataResponseRef::Stored { version } => DataResponse::Stored { version },
            DataResponseRef::NotStored => DataResponse::NotStored,
            DataResponseRef::Exists => DataResponse::Exists,
            DataResponseRef::Deleted => DataResponse::Deleted,
            DataResponseRef::Number {
                value,
                version,
                exptime,
            } => DataResponse::Number {
                value,
                version,
                exptime,
            },
            DataResponseRef::NonNumeric => DataResponse::NonNumeric,
            DataResponseRef::Touched => DataResponse::Touched,
            DataResponseRef::Flushed => DataResponse::Flushed,
            DataResponseRef::NotOwner { routing_version } => {
                DataResponse::NotOwner { routing_version }
            }
            DataResponseRef::Error(message) => DataResponse::Error(message.to_string()),
            DataResponseRef::Absent => DataResponse::Absent,
        }
    }

    /// The borrowed view of a response, for the variants this codec knows (`None` for `Stats`).
    pub fn of(response: &DataResponse) -> Option<DataResponseRef<'_>> {
        Some(match response {
            DataResponse::Value {
                value,
                flags,
                version,
                exptime,
            } => DataResponseRef::Value {
                value,
                flags: *flags,
                version: *version,
                exptime: *exptime,
            },
            DataResponse::NotFound => DataResponseRef::NotFound,
            DataResponse::Stored { version } => DataResponseRef::Stored { version: *version },
            DataResponse::NotStored => DataResponseRef::NotStored,
            DataResponse::Exists => DataResponseRef::Exists,
            DataResponse::Deleted => DataResponseRef::Deleted,
            DataResponse::Number {
                value,
                version,
                exptime,
            } => DataResponseRef::Number {
                value: *value,
                version: *version,
                exptime: *exptime,
            },
            DataResponse::NonNumeric => DataResponseRef::NonNumeric,
            DataResponse::Touched => DataResponseRef::Touched,
            DataResponse::Flushed => DataResponseRef::Flushed,
            DataResponse::NotOwner { routing_version } => DataResponseRef::NotOwner {
                routing_version: *routing_version,
            },
            DataResponse::Error(message) => DataResponseRef::Error(message),
            DataResponse::Absent => DataResponseRef::Absent,
            DataResponse::Stats(_) => return None,
        })
    }
}

// ---- encoding ----

pub(super) fn put_uint(out: &mut Vec<u8>, v: u64) {
    if v < 128 {
        out.push(v as u8);
    } else if v < 256 {
        out.extend_from_slice(&[0xcc, v as u8]);
    } else if v < 65536 {
        out.push(0xcd);
        out.extend_from_slice(&(v as u16).to_be_bytes());
    } else if v < (1 << 32) {
        out.push(0xce);
        out.extend_from_slice(&(v as u32).to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

pub(super) fn put_bin_len(out: &mut Vec<u8>, len: usize) {
    if len < 256 {
        out.extend_from_slice(&[0xc4, len as u8]);
    } else if len < 65536 {
        out.push(0xc5);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0xc6);
        out.extend_from_slice(&(len.min(u32::MAX as usize) as u32).to_be_bytes());
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = s.len();
    if len < 32 {
        out.push(0xa0 | len as u8);
    } else if len < 256 {
        out.extend_from_slice(&[0xd9, len as u8]);
    } else if len < 65536 {
        out.push(0xda);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(len.min(u32::MAX as usize) as u32).to_be_bytes());
    }
    out.extend_from_slice(s.as_bytes());
}

/// `{name: [` with `fields` array entries to follow.
pub(super) fn put_variant(out: &mut Vec<u8>, name: &str, fields: u8) {
    out.push(0x81);
    put_str(out, name);
    out.push(0x90 | fields);
}

/// A key that may be stored under a prefix: `prefix` then `key`, sent as one `bin`.
#[derive(Clone, Copy, Debug)]
pub struct KeyParts<'a> {
    pub prefix: &'a [u8],
    pub key: &'a [u8],
}

impl KeyParts<'_> {
    fn put(&self, out: &mut Vec<u8>) {
        put_bin_len(out, self.prefix.len() + self.key.len());
        out.extend_from_slice(self.prefix);
        out.extend_from_slice(self.key);
    }
}

/// Appends the payload of `DataRequest::Get`.
pub fn put_get(out: &mut Vec<u8>, hash: u64, key: KeyParts<'_>) {
    put_variant(out, "Get", 2);
    put_uint(out, hash);
    key.put(out);
}

/// Appends the payload of `DataRequest::GetNewest`.
pub fn put_get_newest(out: &mut Vec<u8>, hash: u64, key: KeyParts<'_>) {
    put_variant(out, "GetNewest", 2);
    put_uint(out, hash);
    key.put(out);
}

/// An `Option<u64>` as rmp-serde writes it: nil, or the number.
fn put_option(out: &mut Vec<u8>, value: Option<u64>) {
    match value {
        None => out.push(0xc0),
        Some(v) => put_uint(out, v),
    }
}

fn put_op(out: &mut Vec<u8>, op: WriteOp) {
    let (name, field) = match op {
        WriteOp::Set => ("Set", None),
        WriteOp::Add => ("Add", None),
        WriteOp::Replace => ("Replace", None),
        WriteOp::Append => ("Append", None),
        WriteOp::Prepend => ("Prepend", None),
        WriteOp::Touch => ("Touch", None),
        WriteOp::Delete => ("Delete", None),
        WriteOp::GetAndTouch => ("GetAndTouch", None),
        WriteOp::Cas { version } => ("Cas", Some(version)),
        WriteOp::AppendCas { version } => ("AppendCas", Some(version)),
        WriteOp::PrependCas { version } => ("PrependCas", Some(version)),
        WriteOp::DeleteCas { version } => ("DeleteCas", Some(version)),
        WriteOp::Incr(arith) => return put_arith(out, "Incr", arith),
        WriteOp::Decr(arith) => return put_arith(out, "Decr", arith),
    };
    match field {
        None => put_str(out, name),
        Some(value) => {
            put_variant(out, name, 1);
            put_uint(out, value);
        }
    }
}

fn put_arith(out: &mut Vec<u8>, name: &str, arith: Arith) {
    put_variant(out, name, 4);
    put_uint(out, arith.delta);
    put_uint(out, arith.cas);
    put_option(out, arith.initial);
    put_option(out, arith.touch.map(u64::from));
}

/// The fields of a `DataRequest::Write` besides its key.
#[derive(Clone, Copy, Debug)]
pub struct WriteFields<'a> {
    pub op: WriteOp,
    pub value: &'a [u8],
    pub flags: u32,
    pub exptime: u32,
    pub noreply: bool,
}

/// Appends the payload of `DataRequest::Write`.
pub fn put_write(out: &mut Vec<u8>, hash: u64, key: KeyParts<'_>, fields: WriteFields<'_>) {
    put_variant(out, "Write", 7);
    put_uint(out, hash);
    key.put(out);
    put_op(out, fields.op);
    put_bin_len(out, fields.value.len());
    out.extend_from_slice(fields.value);
    put_uint(out, u64::from(fields.flags));
    put_uint(out, u64::from(fields.exptime));
    out.push(if fields.noreply { 0xc3 } else { 0xc2 });
}

/// Appends the payload of a request (hand-encoded when it is a get or a write, else rmp-serde).
pub fn put_request(out: &mut Vec<u8>, request: &DataRequest) -> Result<(), RpcError> {
    match request {
        DataRequest::Get { hash, key } => put_get(out, *hash, KeyParts { prefix: &[], key }),
        DataRequest::GetNewest { hash, key } => {
            put_get_newest(out, *hash, KeyParts { prefix: &[], key })
        }
        DataRequest::Write {
            hash,
            key,
            op,
            value,
            flags,
            exptime,
            noreply,
        } => put_write(
            out,
            *hash,
            KeyParts { prefix: &[], key },
            WriteFields {
                op: *op,
                value,
                flags: *flags,
                exptime: *exptime,
                noreply: *noreply,
            },
        ),
        other => rmp_serde::encode::write(out, other)
            .map_err(|e| RpcError::Protocol(format!("cannot encode a data request: {e}")))?,
    }
    Ok(())
}

/// Appends the payload of a `DataResponse::Value`.
pub fn put_value(out: &mut Vec<u8>, value: &[u8], flags: u32, version: u64, exptime: u32) {
    put_variant(out, "Value", 4);
    put_bin_len(out, value.len());
    out.extend_from_slice(value);
    put_uint(out, u64::from(flags));
    put_uint(out, version);
    put_uint(out, u64::from(exptime));
}

/// Appends the payload of `response`.
pub fn put_response_ref(out: &mut Vec<u8>, response: DataResponseRef<'_>) {
    match response {
        DataResponseRef::Value {
            value,
            flags,
            version,
            exptime,
        } => put_value(out, value, flags, version, exptime),
        DataResponseRef::NotFound => put_str(out, "NotFound"),
        DataResponseRef::Stored { version } => {
            put_variant(out, "Stored", 1);
            put_uint(out, version);
        }
        DataResponseRef::NotStored => put_str(out, "NotStored"),
        DataResponseRef::Exists => put_str(out, "Exists"),
        DataResponseRef::Deleted => put_str(out, "Deleted"),
        DataResponseRef::Number {
            value,
            version,
            exptime,
        } => {
            put_variant(out, "Number", 3);
            put_uint(out, value);
            put_uint(out, version);
            put_uint(out, u64::from(exptime));
        }
        DataResponseRef::NonNumeric => put_str(out, "NonNumeric"),
        DataResponseRef::Touched => put_str(out, "Touched"),
        DataResponseRef::Flushed => put_str(out, "Flushed"),
        DataResponseRef::NotOwner { routing_version } => {
            put_variant(out, "NotOwner", 1);
            put_uint(out, routing_version);
        }
        DataResponseRef::Error(message) => {
            out.push(0x81);
            put_str(out, "Error");
            put_str(out, message);
        }
        DataResponseRef::Absent => put_str(out, "Absent"),
    }
}

/// Appends the payload of any response (rmp-serde for the variants without a hand encoding).
pub fn put_response(out: &mut Vec<u8>, response: &DataResponse) -> Result<(), RpcError> {
    match DataResponseRef::of(response) {
        Some(view) => put_response_ref(out, view),
        None => rmp_serde::encode::write(out, response)
            .map_err(|e| RpcError::Protocol(format!("cannot encode a data response: {e}")))?,
    }
    Ok(())
}

// ---- decoding ----

/// A cursor over msgpack bytes; every method returns `None` on anything unexpected. Shared with
/// [`super::replica_codec`].
pub(super) struct Reader<'a> {
    pub(super) buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.buf.split_first()?;
        self.buf = rest;
        Some(b)
    }

    pub(super) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }

    pub(super) fn be(&mut self, n: usize) -> Option<u64> {
        Some(
            self.take(n)?
                .iter()
                .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)),
        )
    }

    pub(super) fn uint(&mut self) -> Option<u64> {
        match self.byte()? {
            b @ 0x00..=0x7f => Some(u64::from(b)),
            0xcc => self.be(1),
            0xcd => self.be(2),
            0xce => self.be(4),
            0xcf => self.be(8),
            _ => None,
        }
    }

    pub(super) fn u32(&mut self) -> Option<u32> {
        u32::try_from(self.uint()?).ok()
    }

    /// An optional number: `Some(None)` for nil.
    fn option_uint(&mut self) -> Option<Option<u64>> {
        if self.buf.first() == Some(&0xc0) {
            self.byte()?;
            return Some(None);
        }
        Some(Some(self.uint()?))
    }

    pub(super) fn bool(&mut self) -> Option<bool> {
        match self.byte()? {
            0xc2 => Some(false),
            0xc3 => Some(true),
            _ => None,
        }
    }

    pub(super) fn bin(&mut self) -> Option<&'a [u8]> {
        let len = match self.byte()? {
            0xc4 => self.be(1)?,
            0xc5 => self.be(2)?,
            0xc6 => self.be(4)?,
            _ => return None,
        };
        self.take(usize::try_from(len).ok()?)
    }

    /// A msgpack string's bytes (names are compared as bytes: no UTF-8 check on the hot path).
    pub(super) fn str_bytes(&mut self) -> Option<&'a [u8]> {
        let len = match self.byte()? {
            b @ 0xa0..=0xbf => u64::from(b & 0x1f),
            0xd9 => self.be(1)?,
            0xda => self.be(2)?,
            0xdb => self.be(4)?,
            _ => return None,
        };
        self.take(usize::try_from(len).ok()?)
    }

    fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.str_bytes()?).ok()
    }

    /// An enum: `(name, Some(field count))` for `{name: [..]}`, `(name, None)` for a bare name.
    /// A variant holding one non-array value (`Error`) is reported with `Some(0)` and left at the value.
    pub(super) fn variant(&mut self) -> Option<(&'a [u8], Option<u8>)> {
        match *self.buf.first()? {
            0x81 => {
                self.byte()?;
                let name = self.str_bytes()?;
                match *self.buf.first()? {
                    b @ 0x90..=0x9f => {
                        self.byte()?;
                        Some((name, Some(b & 0x0f)))
                    }
                    _ => Some((name, Some(0))),
                }
            }
            _ => Some((self.str_bytes()?, None)),
        }
    }

    pub(super) fn end(&self) -> Option<()> {
        self.buf.is_empty().then_some(())
    }
}

fn op(reader: &mut Reader<'_>) -> Option<WriteOp> {
    Some(match reader.variant()? {
        (b"Set", None) => WriteOp::Set,
        (b"Add", None) => WriteOp::Add,
        (b"Replace", None) => WriteOp::Replace,
        (b"Append", None) => WriteOp::Append,
        (b"Prepend", None) => WriteOp::Prepend,
        (b"Touch", None) => WriteOp::Touch,
        (b"Delete", None) => WriteOp::Delete,
        (b"GetAndTouch", None) => WriteOp::GetAndTouch,
        (b"Cas", Some(1)) => WriteOp::Cas {
            version: reader.uint()?,
        },
        (b"AppendCas", Some(1)) => WriteOp::AppendCas {
            version: reader.uint()?,
        },
        (b"PrependCas", Some(1)) => WriteOp::PrependCas {
            version: reader.uint()?,
        },
        (b"DeleteCas", Some(1)) => WriteOp::DeleteCas {
            version: reader.uint()?,
        },
        (b"Incr", Some(4)) => WriteOp::Incr(arith(reader)?),
        (b"Decr", Some(4)) => WriteOp::Decr(arith(reader)?),
        _ => return None,
    })
}

fn arith(reader: &mut Reader<'_>) -> Option<Arith> {
    Some(Arith {
        delta: reader.uint()?,
        cas: reader.uint()?,
        initial: reader.option_uint()?,
        touch: match reader.option_uint()? {
            None => None,
            Some(at) => Some(u32::try_from(at).ok()?),
        },
    })
}

/// Decodes a get or write request without copying; `None` for other requests or unexpected bytes
/// (decode those with rmp-serde).
pub fn decode_request(payload: &[u8]) -> Option<DataRequestRef<'_>> {
    let mut r = Reader { buf: payload };
    let request = match r.variant()? {
        (b"Get", Some(2)) => DataRequestRef::Get {
            hash: r.uint()?,
            key: r.bin()?,
        },
        (b"GetNewest", Some(2)) => DataRequestRef::GetNewest {
            hash: r.uint()?,
            key: r.bin()?,
        },
        (b"Write", Some(7)) => DataRequestRef::Write {
            hash: r.uint()?,
            key: r.bin()?,
            op: op(&mut r)?,
            value: r.bin()?,
            flags: r.u32()?,
            exptime: r.u32()?,
            noreply: r.bool()?,
        },
        _ => return None,
    };
    r.end()?;
    Some(request)
}

/// Decodes a response without copying; `None` for `Stats` or unexpected bytes.
pub fn decode_response(payload: &[u8]) -> Option<DataResponseRef<'_>> {
    let mut r = Reader { buf: payload };
    let response = match r.variant()? {
        (b"Value", Some(4)) => DataResponseRef::Value {
            value: r.bin()?,
            flags: r.u32()?,
            version: r.uint()?,
            exptime: r.u32()?,
        },
        (b"NotFound", None) => DataResponseRef::NotFound,
        (b"Stored", Some(1)) => DataResponseRef::Stored { version: r.uint()? },
        (b"NotStored", None) => DataResponseRef::NotStored,
        (b"Exists", None) => DataResponseRef::Exists,
        (b"Deleted", None) => DataResponseRef::Deleted,
        (b"Number", Some(3)) => DataResponseRef::Number {
            value: r.uint()?,
            version: r.uint()?,
            exptime: r.u32()?,
        },
        (b"NonNumeric", None) => DataResponseRef::NonNumeric,
        (b"Touched", None) => DataResponseRef::Touched,
        (b"Flushed", None) => DataResponseRef::Flushed,
        (b"NotOwner", Some(1)) => DataResponseRef::NotOwner {
            routing_version: r.uint()?,
        },
        (b"Error", Some(0)) => DataResponseRef::Error(r.str()?),
        (b"Absent", None) => DataResponseRef::Absent,
        _ => return None,
    };
    r.end()?;
    Some(response)
}

/// Decodes any request: the hand decoder first, rmp-serde for the rest.
pub fn decode_request_owned(payload: &[u8]) -> Result<DataRequest, RpcError> {
    match decode_request(payload) {
        Some(request) => Ok(request.to_owned()),
        None => rmp_serde::from_slice(payload)
            .map_err(|e| RpcError::Protocol(format!("bad data request: {e}"))),
    }
}

/// Decodes any response: the hand decoder first, rmp-serde for the rest.
pub fn decode_response_owned(payload: &[u8]) -> Result<DataResponse, RpcError> {
    match decode_response(payload) {
        Some(response) => Ok(response.to_owned()),
        None => rmp_serde::from_slice(payload)
            .map_err(|e| RpcError::Protocol(format!("bad data response: {e}"))),
    }
}

#[cfg(test)]
#[path = "data_codec_tests.rs"]
mod tests;
