//! Property test of the meta commands: any valid `mg`, `ms`, `md`, `ma` request (random keys, base64
//! keys, values, return flags in any order, opaque, TTL, client flags, CAS, modes, delta, vivify)
//! decodes to the command and reply context it was written from, and a stream of them split at
//! any byte boundary decodes to the same requests.

use std::borrow::Cow;

use kumofs::protocol::{Command, Decoder, Dialect, KeyList, Limits, Request, StoreMode};
use proptest::prelude::*;

fn key() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![b'a'..=b'z', b'0'..=b'9', Just(b'_'), Just(b':')],
        1..20,
    )
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..64)
}

/// Decodes `stream` as if it arrived in two reads, split at `split`.
fn split_decode(stream: &[u8], split: usize) -> Vec<String> {
    let mut decoder = Decoder::text(Limits::default());
    let mut seen = Vec::new();
    let mut buffer = stream[..split].to_vec();
    for more in [&stream[split..], &[][..]] {
        let mut at = 0;
        while let Some((request, used)) = decoder.decode(&buffer[at..]).expect("valid stream") {
            seen.push(meta_normal(&request));
            at += used;
        }
        buffer.drain(..at);
        buffer.extend_from_slice(more);
    }
    assert!(buffer.is_empty(), "split at {split}: bytes left undecoded");
    seen
}

/// A meta command as the test writes it.
#[derive(Clone, Debug)]
struct MetaSpec {
    /// 0 mg, 1 ms, 2 md, 3 ma.
    cmd: u8,
    key: Vec<u8>,
    base64: bool,
    value: Vec<u8>,
    quiet: bool,
    opaque: Option<Vec<u8>>,
    ttl: Option<i64>,
    client_flags: Option<u32>,
    cas: Option<u64>,
    /// Return flags (`c f k s t`) in request order.
    returns: Vec<u8>,
    /// Index into the command's modes.
    mode: Option<usize>,
    delta: Option<u64>,
    vivify: Option<(i64, u64)>,
}

fn meta_spec() -> impl Strategy<Value = MetaSpec> {
    let returns = proptest::sample::subsequence(b"cfkst".to_vec(), 0..=5).prop_shuffle();
    (
        (0u8..4, key(), any::<bool>(), value(), any::<bool>()),
        proptest::option::of(proptest::collection::vec(b'a'..=b'z', 0..31)),
        proptest::option::of(-1000i64..1_000_000),
        proptest::option::of(any::<u32>()),
        proptest::option::of(1u64..u64::MAX),
        returns,
        proptest::option::of(0usize..4),
        proptest::option::of(any::<u64>()),
        proptest::option::of((0i64..100_000, any::<u64>())),
    )
        .prop_map(
            |(
                (cmd, key, base64, value, quiet),
                opaque,
                ttl,
                flags,
                cas,
                returns,
                mode,
                delta,
                vivify,
            )| {
                MetaSpec {
                    cmd,
                    key,
                    base64,
                    value,
                    quiet,
                    opaque,
                    ttl,
                    client_flags: flags,
                    cas,
                    returns,
                    mode,
                    delta,
                    vivify,
                }
            },
        )
}

const MS_MODES: [(u8, StoreMode); 4] = [
    (b'S', StoreMode::Set),
    (b'E', StoreMode::Add),
    (b'A', StoreMode::Append),
    (b'R', StoreMode::Replace),
];
const MA_MODES: [(u8, bool); 4] = [(b'I', true), (b'+', true), (b'D', false), (b'-', false)];

fn b64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let mut block = [0u8; 3];
        block[..chunk.len()].copy_from_slice(chunk);
        let n = (u32::from(block[0]) << 16) | (u32::from(block[1]) << 8) | u32::from(block[2]);
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize])
            } else {
                '='
            });
        }
    }
    out
}

/// Writes `spec` (only the flags its command uses) and returns the request it must decode to,
/// in the printable form of `normal`.
fn write_meta(spec: &MetaSpec, out: &mut Vec<u8>) -> String {
    let name = ["mg", "ms", "md", "ma"][usize::from(spec.cmd)];
    let key = if spec.base64 {
        b64(&spec.key)
    } else {
        String::from_utf8_lossy(&spec.key).into_owned()
    };
    let mut line = format!("{name} {key}");
    if spec.cmd == 1 {
        line.push_str(&format!(" {}", spec.value.len()));
    }
    let mut flags: Vec<String> = Vec::new();
    let echoes: &[u8] = match spec.cmd {
        0 => b"cfkst",
        1 => b"ck",
        2 => b"k",
        _ => b"ckt",
    };
    let returns: Vec<u8> = spec
        .returns
        .iter()
        .copied()
        .filter(|r| echoes.contains(r))
        .collect();
    flags.extend(returns.iter().map(|r| char::from(*r).to_string()));
    if spec.base64 {
        flags.push("b".into());
    }
    if spec.quiet {
        flags.push("q".into());
    }
    let ttl = spec.ttl.filter(|_| spec.cmd != 2);
    if let Some(ttl) = ttl {
        flags.push(format!("T{ttl}"));
    }
    let cas = spec.cas.filter(|_| spec.cmd != 0);
    if let Some(cas) = cas {
        flags.push(format!("C{cas}"));
    }
    let client_flags = spec.client_flags.filter(|_| spec.cmd == 1);
    if let Some(f) = client_flags {
        flags.push(format!("F{f}"));
    }
    if let (Some(i), 1) = (spec.mode, spec.cmd) {
        flags.push(format!("M{}", char::from(MS_MODES[i].0)));
    }
    if let (Some(i), 3) = (spec.mode, spec.cmd) {
        flags.push(format!("M{}", char::from(MA_MODES[i].0)));
    }
    let delta = spec.delta.filter(|_| spec.cmd == 3);
    if let Some(d) = delta {
        flags.push(format!("D{d}"));
    }
    let vivify = spec.vivify.filter(|_| spec.cmd == 3);
    if let Some((ttl, initial)) = vivify {
        flags.push(format!("N{ttl}"));
        flags.push(format!("J{initial}"));
    }
    if let Some(opaque) = &spec.opaque {
        flags.push(format!("O{}", String::from_utf8_lossy(opaque)));
    }
    for flag in &flags {
        line.push(' ');
        line.push_str(flag);
    }
    line.push_str("\r\n");
    out.extend_from_slice(line.as_bytes());
    let key = Cow::Borrowed(&spec.key[..]);
    let command = match spec.cmd {
        0 => Command::Get {
            keys: KeyList::One(key),
            with_cas: returns.contains(&b'c'),
            touch: ttl,
        },
        1 => {
            out.extend_from_slice(&spec.value);
            out.extend_from_slice(b"\r\n");
            Command::Store {
                mode: spec.mode.map_or(StoreMode::Set, |i| MS_MODES[i].1),
                key,
                flags: client_flags.unwrap_or(0),
                exptime: ttl.unwrap_or(0),
                value: &spec.value,
                cas,
            }
        }
        2 => Command::Delete {
            key,
            cas: cas.unwrap_or(0),
        },
        _ => Command::Arith {
            incr: spec.mode.is_none_or(|i| MA_MODES[i].1),
            key,
            delta: delta.unwrap_or(1),
            initial: vivify.map(|(ttl, initial)| (initial, ttl)),
            cas: cas.unwrap_or(0),
            touch: ttl,
        },
    };
    let mut expected_returns = returns.clone();
    if spec.opaque.is_some() {
        expected_returns.push(b'O');
    }
    let printable = |command: &Command<'_>| match command {
        Command::Get {
            keys,
            with_cas,
            touch,
        } => {
            let keys: Vec<&[u8]> = keys.iter().collect();
            format!("Get {keys:?} {with_cas} {touch:?}")
        }
        other => format!("{other:?}"),
    };
    format!(
        "{} quiet {} returns {:?} opaque {:?} base64 {}",
        printable(&command),
        spec.quiet,
        String::from_utf8_lossy(&expected_returns),
        spec.opaque.as_deref().map(String::from_utf8_lossy),
        spec.base64
    )
}

/// The same printable form, from a decoded meta request.
fn meta_normal(request: &Request<'_>) -> String {
    let command = match &request.command {
        Command::Get {
            keys,
            with_cas,
            touch,
        } => {
            let keys: Vec<&[u8]> = keys.iter().collect();
            format!("Get {keys:?} {with_cas} {touch:?}")
        }
        other => format!("{other:?}"),
    };
    let meta = &request.ctx.meta;
    format!(
        "{command} quiet {} returns {:?} opaque {:?} base64 {}",
        request.ctx.quiet,
        String::from_utf8_lossy(meta.returns()),
        meta.returns()
            .contains(&b'O')
            .then(|| String::from_utf8_lossy(meta.opaque.as_bytes())),
        meta.base64
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn meta_requests_round_trip(specs in proptest::collection::vec(meta_spec(), 1..5)) {
        let mut stream = Vec::new();
        let expected: Vec<String> = specs.iter().map(|s| write_meta(s, &mut stream)).collect();
        let mut decoder = Decoder::text(Limits::default());
        let mut at = 0;
        let mut decoded = Vec::new();
        while let Some((request, used)) = decoder.decode(&stream[at..]).unwrap() {
            prop_assert_eq!(request.ctx.dialect, Dialect::Meta);
            decoded.push(meta_normal(&request));
            at += used;
        }
        prop_assert_eq!(at, stream.len());
        prop_assert_eq!(&decoded, &expected);
        for split in 0..stream.len() {
            prop_assert_eq!(&split_decode(&stream, split), &expected);
        }
    }
}
