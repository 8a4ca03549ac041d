//! The load generator's own tiny memcached codec: writes `get`/`set` requests in the text or binary
//! protocol and parses their replies incrementally. Deliberately separate from `kumofs::protocol`, so the
//! generator measures a server with code that is not the server's own.
//!
//! Text requests: `get <key>\r\n` and `set <key> 0 0 <len>\r\n<value>\r\n`; replies `VALUE <key>
//! <flags> <len>[ <cas>]\r\n<value>\r\nEND\r\n`, `END\r\n`, `STORED\r\n` or an error line.
//! Binary requests: a 24-byte header (magic 0x80, opcode 0x00 GET / 0x01 SET, key length u16 BE,
//! extras length, data type 0, vbucket 0, total body length u32 BE, opaque u32, CAS u64), then the SET
//! extras (flags u32, expiry u32), the key and the value. Replies have magic 0x81, the status u16 BE at
//! byte 6 (0 = ok, 1 = key not found) and the same body layout.

use std::io::Write;
use std::ops::Range;

/// Largest reply body accepted; bigger ones are reported as malformed instead of buffered.
pub const MAX_REPLY_BODY: usize = (1 << 20) + 1024;
/// Longest text reply line accepted.
pub const MAX_LINE: usize = 1024;

/// A request the generator sends: its kind and the number of its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Get(u64),
    Set(u64),
}

/// What the server answered to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Stored,
    /// A get hit; the value is this range of the parsed buffer.
    Hit(Range<usize>),
    Miss,
    /// The server answered with an error (counted, not fatal).
    ServerError,
}

/// A reply that no correct server sends: the connection cannot be trusted any further.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed reply: {}", self.0)
    }
}

/// The value the generator writes for key number `n`: `size` letters that depend on `n`, so a reader
/// can check any value it gets whatever the interleaving of writers.
pub fn value_byte(n: u64, i: usize) -> u8 {
    b'a' + ((n.wrapping_add(i as u64)) % 26) as u8
}

/// Whether `value` is what the generator writes for key `n` with values of `size` bytes.
pub fn value_matches(n: u64, size: usize, value: &[u8]) -> bool {
    value.len() == size
        && value
            .iter()
            .enumerate()
            .all(|(i, &b)| b == value_byte(n, i))
}

fn put_key(out: &mut Vec<u8>, prefix: &str, n: u64) {
    out.extend_from_slice(prefix.as_bytes());
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{n}");
}

fn put_value(out: &mut Vec<u8>, n: u64, size: usize) {
    out.extend((0..size).map(|i| value_byte(n, i)));
}

/// Appends a text-protocol request.
pub fn encode_text(out: &mut Vec<u8>, op: Op, prefix: &str, size: usize) {
    match op {
        Op::Get(n) => {
            out.extend_from_slice(b"get ");
            put_key(out, prefix, n);
            out.extend_from_slice(b"\r\n");
        }
        Op::Set(n) => {
            out.extend_from_slice(b"set ");
            put_key(out, prefix, n);
            let _ = write!(out, " 0 0 {size}\r\n");
            put_value(out, n, size);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Appends a binary-protocol request with the given opaque.
pub fn encode_binary(out: &mut Vec<u8>, op: Op, prefix: &str, size: usize, opaque: u32) {
    let (opcode, n, extras, value_len) = match op {
        Op::Get(n) => (0x00u8, n, 0usize, 0usize),
        Op::Set(n) => (0x01u8, n, 8, size),
    };
    let header_at = out.len();
    out.extend_from_slice(&[0u8; 24]);
    if extras == 8 {
        out.extend_from_slice(&[0u8; 8]); // flags 0, expiry 0
    }
    let key_at = out.len();
    put_key(out, prefix, n);
    let key_len = out.len() - key_at;
    put_value(out, n, value_len);
    let body = (extras + key_len + value_len) as u32;
    let h = &mut out[header_at..header_at + 24];
    h[0] = 0x80;
    h[1] = opcode;
    h[2..4].copy_from_slice(&(key_len as u16).to_be_bytes());
    h[4] = extras as u8;
    h[8..12].copy_from_slice(&body.to_be_bytes());
    h[12..16].copy_from_slice(&opaque.to_be_bytes());
}

fn find_line(buf: &[u8]) -> Result<Option<usize>, Malformed> {
    match buf.iter().take(MAX_LINE).position(|&b| b == b'\n') {
        Some(i) if i > 0 && buf[i - 1] == b'\r' => Ok(Some(i - 1)),
        Some(_) => Err(Malformed("line not ended by \\r\\n".into())),
        None if buf.len() >= MAX_LINE => Err(Malformed("reply line too long".into())),
        None => Ok(None),
    }
}

/// Parses one text reply to `op` at the start of `buf`: `Ok(None)` if more bytes are needed, else the
/// bytes consumed and the reply.
pub fn parse_text(buf: &[u8], op: Op) -> Result<Option<(usize, Reply)>, Malformed> {
    let Some(end) = find_line(buf)? else {
        return Ok(None);
    };
    let line = &buf[..end];
    let next = end + 2;
    if line.starts_with(b"ERROR")
        || line.starts_with(b"SERVER_ERROR")
        || line.starts_with(b"CLIENT_ERROR")
    {
        return Ok(Some((next, Reply::ServerError)));
    }
    match op {
        Op::Set(_) => match line {
            b"STORED" => Ok(Some((next, Reply::Stored))),
            b"NOT_STORED" | b"EXISTS" | b"NOT_FOUND" => Ok(Some((next, Reply::ServerError))),
            _ => Err(Malformed(format!(
                "unexpected reply to set: {:?}",
                String::from_utf8_lossy(line)
            ))),
        },
        Op::Get(_) => {
            if line == b"END" {
                return Ok(Some((next, Reply::Miss)));
            }
            let mut words = line.split(|&b| b == b' ');
            if words.next() != Some(b"VALUE") {
                return Err(Malformed(format!(
                    "unexpected reply to get: {:?}",
                    String::from_utf8_lossy(line)
                )));
            }
            let len_word = words
                .nth(2)
                .ok_or_else(|| Malformed("VALUE line without a length".into()))?;
            let len: usize = std::str::from_utf8(len_word)
                .ok()
                .and_then(|s| s.parse().ok())
                .filter(|&l| l <= MAX_REPLY_BODY)
                .ok_or_else(|| Malformed("bad VALUE length".into()))?;
            let value = next..next + len;
            let total = value.end + 2 + 5;
            if buf.len() < total {
                return Ok(None);
            }
            if &buf[value.end..total] != b"\r\nEND\r\n" {
                return Err(Malformed("value not followed by \\r\\nEND\\r\\n".into()));
            }
            Ok(Some((total, Reply::Hit(value))))
        }
    }
}

/// Parses one binary reply to `op` at the start of `buf` (same contract as [`parse_text`]); checks that
/// the reply carries `opaque`.
pub fn parse_binary(buf: &[u8], op: Op, opaque: u32) -> Result<Option<(usize, Reply)>, Malformed> {
    if buf.len() < 24 {
        return Ok(None);
    }
    if buf[0] != 0x81 {
        return Err(Malformed(format!("bad magic {:#x}", buf[0])));
    }
    let key_len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    let extras = usize::from(buf[4]);
    let status = u16::from_be_bytes([buf[6], buf[7]]);
    let body = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
    let got_opaque = u32::from_be_bytes([buf[12], buf[13], buf[14], buf[15]]);
    if body > MAX_REPLY_BODY || extras + key_len > body {
        return Err(Malformed(format!("bad body length {body}")));
    }
    if buf.len() < 24 + body {
        return Ok(None);
    }
    if got_opaque != opaque {
        return Err(Malformed(format!(
            "opaque {got_opaque} where {opaque} was expected"
        )));
    }
    let reply = match (status, op) {
        (0, Op::Set(_)) => Reply::Stored,
        (0, Op::Get(_)) => Reply::Hit(24 + extras + key_len..24 + body),
        (1, Op::Get(_)) => Reply::Miss,
        _ => Reply::ServerError,
    };
    Ok(Some((24 + body, reply)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn text_requests_are_memcached_commands() {
        let mut out = Vec::new();
        encode_text(&mut out, Op::Get(7), "k:", 3);
        encode_text(&mut out, Op::Set(7), "k:", 3);
        assert_eq!(out, b"get k:7\r\nset k:7 0 0 3\r\nhij\r\n");
    }

    #[test]
    fn binary_set_header_is_well_formed() {
        let mut out = Vec::new();
        encode_binary(&mut out, Op::Set(1), "k", 4, 9);
        assert_eq!(out.len(), 24 + 8 + 2 + 4);
        assert_eq!(&out[..8], &[0x80, 0x01, 0, 2, 8, 0, 0, 0]);
        assert_eq!(&out[8..12], &14u32.to_be_bytes());
        assert_eq!(&out[12..16], &9u32.to_be_bytes());
        assert_eq!(&out[32..34], b"k1");
        assert!(value_matches(1, 4, &out[34..]));
    }

    #[test]
    fn text_replies_parse_incrementally() {
        let hit = b"VALUE k:1 0 3\r\nbcd\r\nEND\r\n";
        for cut in 0..hit.len() {
            assert_eq!(parse_text(&hit[..cut], Op::Get(1)), Ok(None), "cut {cut}");
        }
        let (used, reply) = parse_text(hit, Op::Get(1)).unwrap().unwrap();
        assert_eq!(used, hit.len());
        assert_eq!(reply, Reply::Hit(15..18));
        assert!(value_matches(1, 3, &hit[15..18]));
        assert_eq!(
            parse_text(b"END\r\nxx", Op::Get(1)),
            Ok(Some((5, Reply::Miss)))
        );
        assert_eq!(
            parse_text(b"STORED\r\n", Op::Set(1)),
            Ok(Some((8, Reply::Stored)))
        );
        assert_eq!(
            parse_text(b"SERVER_ERROR oom\r\n", Op::Set(1)),
            Ok(Some((18, Reply::ServerError)))
        );
        assert!(parse_text(b"VALUE k 0 99999999999\r\n", Op::Get(1)).is_err());
        assert!(parse_text(b"VALUE k 0 1\r\nxEND\r\n\r\n", Op::Get(1)).is_err());
        assert!(parse_text(b"STORED\n", Op::Set(1)).is_err());
        assert!(parse_text(&[b'x'; MAX_LINE], Op::Set(1)).is_err());
    }

    #[test]
    fn binary_replies_parse() {
        let mut hit = vec![0x81, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 5];
        hit.extend_from_slice(&[0; 8]);
        hit.extend_from_slice(&[0, 0, 0, 0, b'a', b'b', b'c']);
        assert_eq!(parse_binary(&hit[..30], Op::Get(0), 5), Ok(None));
        assert_eq!(
            parse_binary(&hit, Op::Get(0), 5),
            Ok(Some((31, Reply::Hit(28..31))))
        );
        assert!(parse_binary(&hit, Op::Get(0), 6).is_err());
        let mut miss = hit[..24].to_vec();
        miss[4] = 0;
        miss[7] = 1;
        miss[11] = 0;
        assert_eq!(
            parse_binary(&miss, Op::Get(0), 5),
            Ok(Some((24, Reply::Miss)))
        );
        assert_eq!(
            parse_binary(&miss, Op::Set(0), 5),
            Ok(Some((24, Reply::ServerError)))
        );
        let mut huge = miss.clone();
        huge[8] = 0x7f;
        assert!(parse_binary(&huge, Op::Get(0), 5).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn parsers_never_panic_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..200), get in any::<bool>()) {
            let op = if get { Op::Get(3) } else { Op::Set(3) };
            if let Ok(Some((used, reply))) = parse_text(&bytes, op) {
                prop_assert!(used <= bytes.len());
                if let Reply::Hit(r) = reply { prop_assert!(r.end <= used); }
            }
            if let Ok(Some((used, reply))) = parse_binary(&bytes, op, 0) {
                prop_assert!(used <= bytes.len());
                if let Reply::Hit(r) = reply { prop_assert!(r.end <= used); }
            }
        }

        #[test]
        fn encoded_text_get_and_value_round_trip(n in any::<u64>(), size in 0usize..300) {
            let mut reply = format!("VALUE memtier-{n} 0 {size}\r\n").into_bytes();
            put_value(&mut reply, n, size);
            reply.extend_from_slice(b"\r\nEND\r\n");
            let (used, parsed) = parse_text(&reply, Op::Get(n)).unwrap().unwrap();
            prop_assert_eq!(used, reply.len());
            match parsed {
                Reply::Hit(r) => prop_assert!(value_matches(n, size, &reply[r])),
                other => prop_assert!(false, "{:?}", other),
            }
        }
    }
}
