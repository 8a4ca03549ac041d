//! The differential test's engine: runs a table of request byte strings against two servers (the
//! real memcached 1.6.18 and ours) over TCP and compares the replies byte for byte, after replacing
//! CAS values, which legitimately differ in value, by their order of first appearance.
//!
//! A case is a list of steps sent on one fresh connection after a `flush_all` on another. After each
//! step a sentinel request is sent and the reply is read until the sentinel's answer ends it, so no
//! fixed wait is needed: text `mg kumo_sentinel Okumo_end` (answered `EN Okumo_end`), binary NOOP
//! with opaque `kumo`. A case that closes the connection is sent without a sentinel and read to EOF.
//! A step can reuse the CAS the server sent last: `{CAS}` in text, [`CAS_PLACEHOLDER`] in a binary
//! header.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// In a binary step, these 8 bytes are replaced by the last CAS the server sent on the connection.
pub const CAS_PLACEHOLDER: u64 = 0xca5c_a5ca_5ca5_ca5c;
const TEXT_SENTINEL: &[u8] = b"mg kumo_sentinel Okumo_end\r\n";
const TEXT_SENTINEL_REPLY: &[u8] = b"EN Okumo_end\r\n";
const SENTINEL_OPAQUE: u32 = u32::from_be_bytes(*b"kumo");
/// How long a reply may take before the step is recorded as timed out (a hang is a difference).
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// One row of the table.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    pub binary: bool,
    pub steps: Vec<Vec<u8>>,
    /// The last step closes the connection: read to EOF instead of sending a sentinel.
    pub closes: bool,
    /// A deliberate difference: why, and our (CAS-normalised) reply to the whole case.
    pub deliberate: Option<(&'static str, Vec<u8>)>,
    /// How long a reply may take; short for the few inputs memcached never answers.
    pub timeout: Duration,
    /// Send each step one byte per write, so the server reads requests in pieces.
    pub byte_by_byte: bool,
}

impl Case {
    pub fn text(name: &str, steps: &[&str]) -> Case {
        Case::text_bytes(name, steps.iter().map(|s| s.as_bytes().to_vec()).collect())
    }

    pub fn text_bytes(name: &str, steps: Vec<Vec<u8>>) -> Case {
        Case {
            name: name.to_string(),
            binary: false,
            steps,
            closes: false,
            deliberate: None,
            timeout: REPLY_TIMEOUT,
            byte_by_byte: false,
        }
    }

    pub fn binary(name: &str, steps: Vec<Vec<u8>>) -> Case {
        Case {
            binary: true,
            ..Case::text_bytes(name, steps)
        }
    }

    pub fn closes(mut self) -> Case {
        self.closes = true;
        self
    }

    pub fn deliberate(mut self, why: &'static str, ours: &[u8]) -> Case {
        self.deliberate = Some((why, ours.to_vec()));
        self
    }

    /// The same case sent one byte per write.
    pub fn byte_by_byte(mut self) -> Case {
        self.byte_by_byte = true;
        self
    }

    /// memcached 1.6.18 hangs on this input (it waits for bytes that never come): wait less.
    pub fn hangs_memcached(mut self) -> Case {
        self.timeout = Duration::from_millis(500);
        self
    }
}

/// What one server answered to a case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transcript {
    /// All replies, CAS values replaced by their ordinal.
    pub replies: Vec<u8>,
    pub closed: bool,
    /// A step whose reply did not complete within [`REPLY_TIMEOUT`].
    pub timed_out: bool,
}

/// Runs one case against the server at `addr`.
pub fn run_case(addr: SocketAddr, case: &Case) -> Transcript {
    flush(addr);
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream
        .set_read_timeout(Some(case.timeout))
        .expect("timeout");
    let mut raw = Vec::new();
    let mut last_cas = 0u64;
    let mut closed = false;
    let mut timed_out = false;
    for (i, step) in case.steps.iter().enumerate() {
        let last = i + 1 == case.steps.len();
        let mut input = substitute_cas(step, last_cas, case.binary);
        let sentinel = sentinel_reply(case.binary);
        let with_sentinel = !(last && case.closes);
        if with_sentinel {
            input.extend_from_slice(&sentinel_request(case.binary));
        }
        let written = if case.byte_by_byte {
            input.chunks(1).try_for_each(|byte| stream.write_all(byte))
        } else {
            stream.write_all(&input)
        };
        if written.is_err() {
            closed = true;
            break;
        }
        let mut reply = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            if with_sentinel && reply.ends_with(&sentinel) {
                reply.truncate(reply.len() - sentinel.len());
                break;
            }
            match stream.read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => reply.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    closed = true;
                    break;
                }
                Err(_) => {
                    timed_out = true;
                    break;
                }
            }
        }
        if let Some(cas) = cas_values(&reply, case.binary).last() {
            last_cas = *cas;
        }
        raw.extend_from_slice(&reply);
        if closed || timed_out {
            break;
        }
    }
    Transcript {
        replies: normalise_cas(&raw, case.binary),
        closed,
        timed_out,
    }
}

fn flush(addr: SocketAddr) {
    let mut stream = TcpStream::connect(addr).expect("connect for flush_all");
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .expect("timeout");
    stream.write_all(b"flush_all\r\n").expect("flush_all");
    let mut ok = [0u8; 4];
    stream.read_exact(&mut ok).expect("flush_all reply");
    assert_eq!(&ok, b"OK\r\n", "flush_all on {addr}");
}

fn sentinel_request(binary: bool) -> Vec<u8> {
    if !binary {
        return TEXT_SENTINEL.to_vec();
    }
    let mut frame = vec![0x80, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    frame.extend_from_slice(&SENTINEL_OPAQUE.to_be_bytes());
    frame.extend_from_slice(&[0; 8]);
    frame
}

fn sentinel_reply(binary: bool) -> Vec<u8> {
    if !binary {
        return TEXT_SENTINEL_REPLY.to_vec();
    }
    let mut frame = vec![0x81, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    frame.extend_from_slice(&SENTINEL_OPAQUE.to_be_bytes());
    frame.extend_from_slice(&[0; 8]);
    frame
}

fn substitute_cas(step: &[u8], cas: u64, binary: bool) -> Vec<u8> {
    let (needle, with): (Vec<u8>, Vec<u8>) = if binary {
        (
            CAS_PLACEHOLDER.to_be_bytes().to_vec(),
            cas.to_be_bytes().to_vec(),
        )
    } else {
        (b"{CAS}".to_vec(), cas.to_string().into_bytes())
    };
    let mut out = Vec::with_capacity(step.len());
    let mut at = 0;
    while at < step.len() {
        if step[at..].starts_with(&needle) {
            out.extend_from_slice(&with);
            at += needle.len();
        } else {
            out.push(step[at]);
            at += 1;
        }
    }
    out
}

/// A reply stream cut into its parts, CAS values marked, so they can be listed or rewritten.
enum Piece<'a> {
    Bytes(&'a [u8]),
    Cas(u64),
}

/// Splits replies into pieces: binary frames by header, text by line (skipping data blocks), with
/// every CAS value (binary header, `VALUE` line 5th token, meta `c<cas>` token) as its own piece.
fn pieces(replies: &[u8], binary: bool) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < replies.len() {
        let rest = &replies[at..];
        if binary {
            if rest.len() < 24 {
                out.push(Piece::Bytes(rest));
                break;
            }
            let body = u32::from_be_bytes([rest[8], rest[9], rest[10], rest[11]]) as usize;
            let end = (24 + body).min(rest.len());
            let cas = u64::from_be_bytes(rest[16..24].try_into().unwrap_or([0; 8]));
            out.push(Piece::Bytes(&rest[..16]));
            out.push(Piece::Cas(cas));
            out.push(Piece::Bytes(&rest[24..end]));
            at += end;
            continue;
        }
        let Some(newline) = rest.iter().position(|&b| b == b'\n') else {
            out.push(Piece::Bytes(rest));
            break;
        };
        let line = &rest[..=newline];
        let words: Vec<&[u8]> = line
            .strip_suffix(b"\r\n")
            .unwrap_or(line)
            .split(|&b| b == b' ')
            .collect();
        let mut data = 0;
        let mut start = 0;
        let mut offset = 0;
        let is_meta = words[0].len() == 2 && words[0].iter().all(u8::is_ascii_uppercase);
        for (i, word) in words.iter().enumerate() {
            let cas_token = if words[0] == b"VALUE" && i == 4 {
                Some(&word[..])
            } else if is_meta && i > 0 && word.first() == Some(&b'c') {
                Some(&word[1..])
            } else {
                None
            };
            if let Some(digits) = cas_token.filter(|d| !d.is_empty()) {
                if let Some(cas) = std::str::from_utf8(digits)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    let token_start = offset + word.len() - digits.len();
                    out.push(Piece::Bytes(&line[start..token_start]));
                    out.push(Piece::Cas(cas));
                    start = token_start + digits.len();
                }
            }
            offset += word.len() + 1;
        }
        out.push(Piece::Bytes(&line[start..]));
        let len_at = match words[0] {
            b"VALUE" => Some(3),
            b"VA" => Some(1),
            _ => None,
        };
        if let Some(len) = len_at
            .and_then(|i| words.get(i))
            .and_then(|w| std::str::from_utf8(w).ok())
            .and_then(|s| s.parse::<usize>().ok())
        {
            data = (len + 2).min(rest.len() - line.len());
        }
        out.push(Piece::Bytes(&rest[line.len()..line.len() + data]));
        at += line.len() + data;
    }
    out
}

/// The CAS values in `replies`, in order (zeros included).
pub fn cas_values(replies: &[u8], binary: bool) -> Vec<u64> {
    pieces(replies, binary)
        .into_iter()
        .filter_map(|p| match p {
            Piece::Cas(cas) => Some(cas),
            Piece::Bytes(_) => None,
        })
        .filter(|&cas| cas != 0)
        .collect()
}

/// `replies` with every non-zero CAS replaced by its order of first appearance (1, 2, ...).
pub fn normalise_cas(replies: &[u8], binary: bool) -> Vec<u8> {
    let mut seen: Vec<u64> = Vec::new();
    let mut out = Vec::with_capacity(replies.len());
    for piece in pieces(replies, binary) {
        match piece {
            Piece::Bytes(bytes) => out.extend_from_slice(bytes),
            Piece::Cas(0) if binary => out.extend_from_slice(&[0; 8]),
            Piece::Cas(0) => out.push(b'0'),
            Piece::Cas(cas) => {
                let ordinal = match seen.iter().position(|&c| c == cas) {
                    Some(i) => i + 1,
                    None => {
                        seen.push(cas);
                        seen.len()
                    }
                } as u64;
                if binary {
                    out.extend_from_slice(&ordinal.to_be_bytes());
                } else {
                    out.extend_from_slice(ordinal.to_string().as_bytes());
                }
            }
        }
    }
    out
}

/// Printable form of a transcript or request: text escaped, binary as one hex line per frame.
pub fn show(bytes: &[u8], binary: bool) -> String {
    if !binary {
        return format!("{:?}", String::from_utf8_lossy(&shorten(bytes)));
    }
    let mut out = String::new();
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let len = if rest.len() >= 24 {
            24 + u32::from_be_bytes([rest[8], rest[9], rest[10], rest[11]]) as usize
        } else {
            rest.len()
        };
        let frame = &rest[..len.min(rest.len())];
        let hex: Vec<String> = shorten(frame).iter().map(|b| format!("{b:02x}")).collect();
        out.push_str(&format!("\n      [{}]", hex.join(" ")));
        at += frame.len();
    }
    out
}

/// Long values are cut in the middle so a failure stays readable.
fn shorten(bytes: &[u8]) -> Vec<u8> {
    if bytes.len() <= 400 {
        return bytes.to_vec();
    }
    let mut out = bytes[..200].to_vec();
    out.extend_from_slice(format!("...<{} bytes>...", bytes.len() - 400).as_bytes());
    out.extend_from_slice(&bytes[bytes.len() - 200..]);
    out
}

/// Runs every case against both servers and returns the name and a description of each
/// unexpected difference.
pub fn compare_all(
    reference: SocketAddr,
    ours: SocketAddr,
    cases: &[Case],
) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let mut timeouts = 0;
    for case in cases {
        let theirs = run_case(reference, case);
        let mine = run_case(ours, case);
        timeouts += usize::from(theirs.timed_out || mine.timed_out);
        if timeouts > 20 {
            let report = format!("stopped after 20 timeouts, at case {}", case.name);
            problems.push((case.name.clone(), report));
            break;
        }
        let input: Vec<u8> = case.steps.concat();
        let report = |what: &str| {
            format!(
                "{}: {what}\n    input     {}\n    memcached {} (closed {}, timeout {})\n    ours      {} (closed {}, timeout {})",
                case.name,
                show(&input, case.binary),
                show(&theirs.replies, case.binary),
                theirs.closed,
                theirs.timed_out,
                show(&mine.replies, case.binary),
                mine.closed,
                mine.timed_out,
            )
        };
        let problem = match &case.deliberate {
            None if theirs != mine => report("differs"),
            Some((why, expected)) if mine.replies != *expected || mine.timed_out => {
                report(&format!(
                    "deliberate difference ({why}) not as documented; expected ours {}",
                    show(expected, case.binary)
                ))
            }
            Some((why, _)) if theirs == mine => report(&format!(
                "listed as a deliberate difference ({why}) but memcached now agrees"
            )),
            _ => continue,
        };
        problems.push((case.name.clone(), problem));
    }
    problems
}

/// Where two transcripts first differ, as the differing frame or line of each (for assertions
/// on long transcripts, whose full text would drown the failure).
pub fn first_difference(a: &Transcript, b: &Transcript, binary: bool) -> Option<String> {
    if a == b {
        return None;
    }
    let units = |bytes: &[u8]| -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let rest = &bytes[at..];
            let len = if binary && rest.len() >= 24 {
                24 + u32::from_be_bytes([rest[8], rest[9], rest[10], rest[11]]) as usize
            } else if binary {
                rest.len()
            } else {
                rest.iter()
                    .position(|&c| c == b'\n')
                    .map_or(rest.len(), |i| i + 1)
            };
            let len = len.min(rest.len());
            out.push(rest[..len].to_vec());
            at += len;
        }
        out
    };
    let (left, right) = (units(&a.replies), units(&b.replies));
    let index = left
        .iter()
        .zip(&right)
        .position(|(l, r)| l != r)
        .unwrap_or(left.len().min(right.len()));
    let empty = Vec::new();
    Some(format!(
        "unit {index} of {}/{}: {} vs {} (closed {}/{}, timeout {}/{})",
        left.len(),
        right.len(),
        show(left.get(index).unwrap_or(&empty), binary),
        show(right.get(index).unwrap_or(&empty), binary),
        a.closed,
        b.closed,
        a.timed_out,
        b.timed_out
    ))
}
