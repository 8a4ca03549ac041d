//! Binary protocol, byte for byte: header and body of every reply kind and every error, checked
//! against what memcached 1.6.18 sends (captured from a real one), through the decoder, the test
//! store of `protocol_support` and the encoder.

mod protocol_support;

use kumofs::protocol::{
    encode, opcode, status, BinaryDecoder, Command, Limits, ProtocolError, Reply, Value,
};
use protocol_support::converse;

const OPAQUE: u32 = 0xdead_beef;

fn request(op: u8, key: &[u8], extras: &[u8], value: &[u8], cas: u64) -> Vec<u8> {
    let mut out = vec![0x80, op];
    out.extend_from_slice(&(key.len() as u16).to_be_bytes());
    out.push(extras.len() as u8);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&((extras.len() + key.len() + value.len()) as u32).to_be_bytes());
    out.extend_from_slice(&OPAQUE.to_be_bytes());
    out.extend_from_slice(&cas.to_be_bytes());
    out.extend_from_slice(extras);
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    out
}

fn response(op: u8, key: &[u8], extras: &[u8], status: u16, value: &[u8], cas: u64) -> Vec<u8> {
    let mut out = vec![0x81, op];
    out.extend_from_slice(&(key.len() as u16).to_be_bytes());
    out.push(extras.len() as u8);
    out.push(0);
    out.extend_from_slice(&status.to_be_bytes());
    out.extend_from_slice(&((extras.len() + key.len() + value.len()) as u32).to_be_bytes());
    out.extend_from_slice(&OPAQUE.to_be_bytes());
    out.extend_from_slice(&cas.to_be_bytes());
    out.extend_from_slice(extras);
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    out
}

fn set(op: u8, key: &[u8], flags: u32, value: &[u8], cas: u64) -> Vec<u8> {
    let mut extras = flags.to_be_bytes().to_vec();
    extras.extend_from_slice(&0u32.to_be_bytes());
    request(op, key, &extras, value, cas)
}

fn arith(op: u8, key: &[u8], delta: u64, initial: u64, exptime: u32) -> Vec<u8> {
    let mut extras = delta.to_be_bytes().to_vec();
    extras.extend_from_slice(&initial.to_be_bytes());
    extras.extend_from_slice(&exptime.to_be_bytes());
    request(op, key, &extras, &[], 0)
}

fn run(input: &[Vec<u8>]) -> (Vec<u8>, bool) {
    converse(&input.concat())
}

fn replies(input: &[Vec<u8>]) -> Vec<u8> {
    let (out, closed) = run(input);
    assert!(!closed, "connection closed");
    out
}

#[test]
fn get_hit_and_miss() {
    let out = replies(&[
        set(opcode::SET, b"k", 7, b"v", 0),
        request(opcode::GET, b"k", &[], &[], 0),
    ]);
    let expected = [
        response(opcode::SET, b"", b"", 0, b"", 1),
        response(opcode::GET, b"", &7u32.to_be_bytes(), 0, b"v", 1),
    ]
    .concat();
    assert_eq!(out, expected);
    let out = replies(&[
        set(opcode::SET, b"k", 7, b"v", 0),
        request(opcode::GETK, b"k", &[], &[], 0),
    ]);
    assert_eq!(
        &out[24..],
        &response(opcode::GETK, b"k", &7u32.to_be_bytes(), 0, b"v", 1)[..]
    );
    assert_eq!(
        replies(&[request(opcode::GET, b"nokey", &[], &[], 0)]),
        response(opcode::GET, b"", b"", status::KEY_ENOENT, b"Not found", 0)
    );
    assert_eq!(
        replies(&[request(opcode::GETK, b"nokey", &[], &[], 0)]),
        response(opcode::GETK, b"nokey", b"", status::KEY_ENOENT, b"", 0)
    );
    // Quiet gets say nothing on a miss.
    let out = replies(&[
        request(opcode::GETQ, b"a", &[], &[], 0),
        request(opcode::GETKQ, b"b", &[], &[], 0),
    ]);
    assert!(out.is_empty());
}

#[test]
fn touch_and_gat() {
    let exp = 5u32.to_be_bytes();
    assert_eq!(
        replies(&[request(opcode::TOUCH, b"nokey", &exp, &[], 0)]),
        response(opcode::TOUCH, b"", b"", status::KEY_ENOENT, b"Not found", 0)
    );
    let out = replies(&[
        set(opcode::SET, b"tk", 7, b"v", 0),
        request(opcode::TOUCH, b"tk", &exp, &[], 0),
    ]);
    // memcached: flags in the extras, no value; a touch does not change the CAS.
    assert_eq!(
        &out[24..],
        &response(opcode::TOUCH, b"", &7u32.to_be_bytes(), 0, b"", 1)[..]
    );
    let out = replies(&[
        set(opcode::SET, b"tk", 7, b"v", 0),
        request(opcode::GAT, b"tk", &exp, &[], 0),
    ]);
    assert_eq!(
        &out[24..],
        &response(opcode::GAT, b"", &7u32.to_be_bytes(), 0, b"v", 1)[..]
    );
    assert!(replies(&[request(opcode::GATQ, b"x", &exp, &[], 0)]).is_empty());
}

#[test]
fn store_replies_and_errors() {
    let out = replies(&[
        set(opcode::ADD, b"k", 0, b"a", 0),
        set(opcode::ADD, b"k", 0, b"a", 0),
        set(opcode::REPLACE, b"x", 0, b"a", 0),
        request(opcode::APPEND, b"x", &[], b"a", 0),
        set(opcode::SET, b"k", 0, b"b", 99),
        set(opcode::SETQ, b"k", 0, b"b", 0),
    ]);
    let expected = [
        response(opcode::ADD, b"", b"", 0, b"", 1),
        response(
            opcode::ADD,
            b"",
            b"",
            status::KEY_EEXISTS,
            b"Data exists for key.",
            0,
        ),
        response(
            opcode::REPLACE,
            b"",
            b"",
            status::KEY_ENOENT,
            b"Not found",
            0,
        ),
        response(
            opcode::APPEND,
            b"",
            b"",
            status::NOT_STORED,
            b"Not stored.",
            0,
        ),
        response(
            opcode::SET,
            b"",
            b"",
            status::KEY_EEXISTS,
            b"Data exists for key.",
            0,
        ),
    ]
    .concat();
    assert_eq!(out, expected);
}

#[test]
fn append_with_cas_compares_like_memcached() {
    let out = replies(&[
        set(opcode::SET, b"k", 0, b"a", 0),
        request(opcode::APPEND, b"k", &[], b"b", 5),
        request(opcode::APPEND, b"k", &[], b"c", 1),
        request(opcode::GET, b"k", &[], &[], 0),
    ]);
    let expected = [
        response(opcode::SET, b"", b"", 0, b"", 1),
        response(
            opcode::APPEND,
            b"",
            b"",
            status::KEY_EEXISTS,
            b"Data exists for key.",
            0,
        ),
        response(opcode::APPEND, b"", b"", 0, b"", 3),
        response(opcode::GET, b"", &0u32.to_be_bytes(), 0, b"ac", 3),
    ]
    .concat();
    assert_eq!(out, expected);
}

#[test]
fn delete_incr_decr() {
    let out = replies(&[
        request(opcode::DELETE, b"k", &[], &[], 0),
        set(opcode::SET, b"k", 0, b"a", 0),
        request(opcode::DELETEQ, b"k", &[], &[], 0),
        arith(opcode::INCREMENT, b"n", 1, 10, 0),
        arith(opcode::DECREMENT, b"n", 3, 0, 0),
        arith(opcode::INCREMENT, b"m", 1, 0, u32::MAX),
        set(opcode::SET, b"nn", 0, b"ab", 0),
        arith(opcode::INCREMENTQ, b"nn", 1, 0, 0),
    ]);
    let expected = [
        response(
            opcode::DELETE,
            b"",
            b"",
            status::KEY_ENOENT,
            b"Not found",
            0,
        ),
        response(opcode::SET, b"", b"", 0, b"", 1),
        response(opcode::INCREMENT, b"", b"", 0, &10u64.to_be_bytes(), 2),
        response(opcode::DECREMENT, b"", b"", 0, &7u64.to_be_bytes(), 3),
        response(
            opcode::INCREMENT,
            b"",
            b"",
            status::KEY_ENOENT,
            b"Not found",
            0,
        ),
        response(opcode::SET, b"", b"", 0, b"", 5),
        response(
            opcode::INCREMENTQ,
            b"",
            b"",
            status::DELTA_BADVAL,
            b"Non-numeric server-side value for incr or decr",
            0,
        ),
    ]
    .concat();
    assert_eq!(out, expected);
}

#[test]
fn misc_opcodes() {
    let out = replies(&[
        request(opcode::VERSION, b"", &[], &[], 0),
        request(opcode::NOOP, b"", &[], &[], 0),
        request(opcode::FLUSHQ, b"", &[], &[], 0),
        request(opcode::FLUSH, b"", &0u32.to_be_bytes(), &[], 0),
        request(opcode::VERBOSITY, b"", &1u32.to_be_bytes(), &[], 0),
    ]);
    let expected = [
        response(opcode::VERSION, b"", b"", 0, b"1.6.18", 0),
        response(opcode::NOOP, b"", b"", 0, b"", 0),
        response(opcode::FLUSH, b"", b"", 0, b"", 0),
        // memcached 1.6.18 does not implement binary verbosity.
        response(
            opcode::VERBOSITY,
            b"",
            b"",
            status::UNKNOWN_COMMAND,
            b"Unknown command",
            0,
        ),
    ]
    .concat();
    assert_eq!(out, expected);
    let (out, closed) = run(&[
        request(opcode::QUIT, b"", &[], &[], 0),
        request(opcode::NOOP, b"", &[], &[], 0),
    ]);
    assert!(closed);
    assert_eq!(out, response(opcode::QUIT, b"", b"", 0, b"", 0));
    let (out, closed) = run(&[request(opcode::QUITQ, b"", &[], &[], 0)]);
    assert!(closed && out.is_empty());
    // Stats: one response per stat, then an empty one.
    let out = replies(&[request(opcode::STAT, b"", &[], &[], 0)]);
    let expected = [
        response(opcode::STAT, b"pid", b"", 0, b"1", 0),
        response(opcode::STAT, b"curr_items", b"", 0, b"0", 0),
        response(opcode::STAT, b"", b"", 0, b"", 0),
    ]
    .concat();
    assert_eq!(out, expected);
}

#[test]
fn unknown_opcodes_and_sasl_answer_0x81_and_continue() {
    let unknown = response(
        0x30,
        b"",
        b"",
        status::UNKNOWN_COMMAND,
        b"Unknown command",
        0,
    );
    let out = replies(&[
        request(0x30, b"k", &[], b"abc", 0),
        request(opcode::NOOP, b"", &[], &[], 0),
    ]);
    assert_eq!(
        out,
        [unknown, response(opcode::NOOP, b"", b"", 0, b"", 0)].concat()
    );
    let out = replies(&[request(opcode::SASL_LIST_MECHS, b"", &[], &[], 0)]);
    assert_eq!(
        out,
        response(
            opcode::SASL_LIST_MECHS,
            b"",
            b"",
            status::UNKNOWN_COMMAND,
            b"Unknown command",
            0
        )
    );
}

#[test]
fn bad_headers_close_the_connection() {
    let einval = |op| response(op, b"", b"", status::EINVAL, b"Invalid arguments", 0);
    assert_eq!(
        run(&[request(opcode::GET, &[b'k'; 251], &[], &[], 0)]),
        (einval(opcode::GET), true)
    );
    assert_eq!(
        run(&[request(opcode::GET, b"k", b"1234", &[], 0)]),
        (einval(opcode::GET), true)
    );
    assert_eq!(
        run(&[request(opcode::SET, b"k", b"1234", b"v", 0)]),
        (einval(opcode::SET), true)
    );
    assert_eq!(
        run(&[request(opcode::NOOP, b"k", &[], &[], 0)]),
        (einval(opcode::NOOP), true)
    );
    let mut decoder = BinaryDecoder::new(Limits::default());
    let mut bad = request(opcode::GET, b"k", &[], &[], 0);
    bad[0] = 0x81;
    assert_eq!(decoder.decode(&bad), Err(ProtocolError::BadMagic(0x81)));
    // A body length smaller than key plus extras: "Unknown command", then closed.
    let mut short = request(opcode::GET, b"kk", &[], &[], 0);
    short[11] = 1;
    assert_eq!(
        decoder.decode(&short),
        Err(ProtocolError::BinaryBodyTooShort {
            opcode: opcode::GET,
            opaque: OPAQUE
        })
    );
    assert_eq!(
        run(&[short]),
        (
            response(
                opcode::GET,
                b"",
                b"",
                status::UNKNOWN_COMMAND,
                b"Unknown command",
                0
            ),
            true
        )
    );
}

#[test]
fn too_large_values_are_swallowed() {
    let big = vec![b'x'; 2_000_000];
    let out = replies(&[
        set(opcode::SET, b"big", 0, b"a", 0),
        set(opcode::SET, b"big", 0, &big, 0),
        request(opcode::GET, b"big", &[], &[], 0),
    ]);
    let expected = [
        response(opcode::SET, b"", b"", 0, b"", 1),
        response(opcode::SET, b"", b"", status::E2BIG, b"Too large.", 0),
        response(opcode::GET, b"", b"", status::KEY_ENOENT, b"Not found", 0),
    ]
    .concat();
    assert_eq!(out, expected);
    // Without buffering: only the header is needed to answer.
    let mut decoder = BinaryDecoder::new(Limits {
        max_item: 10,
        ..Limits::default()
    });
    let frame = set(opcode::SET, b"k", 0, &[b'x'; 100], 0);
    let (request, used) = decoder.decode(&frame[..40]).unwrap().unwrap();
    assert_eq!(used, 40);
    assert!(matches!(
        request.command,
        Command::TooLarge {
            remove_old: true,
            ..
        }
    ));
    let (request, used) = decoder.decode(&frame[40..]).unwrap().unwrap();
    assert_eq!((request.command, used), (Command::Skip, frame.len() - 40));
    // Split inside the extras or the key: wait for the key, then answer (no arithmetic underflow).
    for split in 0..33 {
        let mut decoder = BinaryDecoder::new(Limits {
            max_item: 10,
            ..Limits::default()
        });
        assert_eq!(decoder.decode(&frame[..split]), Ok(None), "split {split}");
    }
    let unknown = request_with_body(0x42, b"key", 5000);
    let mut decoder = BinaryDecoder::new(Limits::default());
    assert_eq!(decoder.decode(&unknown[..26]), Ok(None));
    let (request, used) = decoder.decode(&unknown[..100]).unwrap().unwrap();
    assert_eq!(
        (request.command, used),
        (
            Command::Reject(kumofs::protocol::ErrorReply::UnknownCommand),
            100
        )
    );
}

fn request_with_body(op: u8, key: &[u8], value_len: usize) -> Vec<u8> {
    request(op, key, &[], &vec![0u8; value_len], 0)
}

#[test]
fn partial_frames_consume_nothing() {
    let frame = set(opcode::SET, b"key", 1, b"value", 0);
    let mut decoder = BinaryDecoder::new(Limits::default());
    for end in 0..frame.len() {
        assert_eq!(
            decoder.decode(&frame[..end]),
            Ok(None),
            "prefix of {end} bytes"
        );
    }
    let (request, used) = decoder.decode(&frame).unwrap().unwrap();
    assert_eq!(used, frame.len());
    assert_eq!(request.ctx.opaque, OPAQUE);
}

#[test]
fn large_values_keep_their_length() {
    // kumofs 0.4.13 truncated value lengths to 16 bits; ours are 32-bit.
    let data = vec![7u8; 70_000];
    let ctx = BinaryDecoder::new(Limits::default())
        .decode(&request(opcode::GET, b"k", &[], &[], 0))
        .unwrap()
        .unwrap()
        .0
        .ctx;
    let mut out = Vec::new();
    let value = Value {
        key: b"k",
        flags: 0,
        cas: 9,
        data: &data,
        ttl: -1,
    };
    encode(&Reply::Value(value), &ctx, &mut out);
    assert_eq!(
        out,
        response(opcode::GET, b"", &0u32.to_be_bytes(), 0, &data, 9)
    );
}

#[test]
fn async_binary_replies_in_any_order_match_by_opaque() {
    // "cloudy": the gateway keeps each request's context and answers as results complete.
    let mut stream = Vec::new();
    for (i, key) in [b"a", b"b", b"c"].iter().enumerate() {
        let mut frame = request(opcode::GETK, *key, &[], &[], 0);
        frame[12..16].copy_from_slice(&(i as u32 + 1).to_be_bytes());
        stream.extend_from_slice(&frame);
    }
    let mut decoder = BinaryDecoder::new(Limits::default());
    let mut contexts = Vec::new();
    let mut at = 0;
    while let Some((request, used)) = decoder.decode(&stream[at..]).unwrap() {
        at += used;
        let key = request.command.clone();
        contexts.push((key, request.ctx));
    }
    assert_eq!(contexts.len(), 3);
    let mut out = Vec::new();
    for index in [2, 0, 1] {
        let (command, ctx) = &contexts[index];
        let Command::Get { keys, .. } = command else {
            panic!("not a get: {command:?}")
        };
        let key = keys.iter().next().unwrap();
        let value = Value {
            key,
            flags: 0,
            cas: 1,
            data: key,
            ttl: -1,
        };
        encode(&Reply::Value(value), ctx, &mut out);
    }
    let mut seen = Vec::new();
    for reply in out.chunks(24 + 4 + 2) {
        let opaque = u32::from_be_bytes(reply[12..16].try_into().unwrap());
        seen.push((opaque, reply[28], reply[29]));
    }
    assert_eq!(seen, [(3, b'c', b'c'), (1, b'a', b'a'), (2, b'b', b'b')]);
}

#[test]
fn add_and_replace_with_a_cas_are_compare_and_swap() {
    // memcached turns any store with a CAS into a compare-and-swap: an add of a missing key with
    // a CAS answers "Not found", an add of an existing one with its CAS stores.
    let out = replies(&[
        set(opcode::ADD, b"k", 0, b"v", 5),
        set(opcode::SET, b"k", 0, b"v", 0),
        set(opcode::ADD, b"k", 0, b"w", 2),
        set(opcode::REPLACE, b"k", 0, b"x", 2),
    ]);
    // (The test store spends a CAS on every store, failed or not.)
    let expected = [
        response(opcode::ADD, b"", b"", status::KEY_ENOENT, b"Not found", 0),
        response(opcode::SET, b"", b"", 0, b"", 2),
        response(opcode::ADD, b"", b"", 0, b"", 3),
        response(
            opcode::REPLACE,
            b"",
            b"",
            status::KEY_EEXISTS,
            b"Data exists for key.",
            0,
        ),
    ]
    .concat();
    assert_eq!(out, expected);
}

#[test]
fn incr_and_delete_compare_the_cas() {
    let mut cas_incr = request(opcode::INCREMENT, b"n", &[0; 20], &[], 99);
    cas_incr[31] = 1;
    let out = replies(&[
        set(opcode::SET, b"n", 0, b"5", 0),
        cas_incr,
        request(opcode::DELETE, b"n", &[], &[], 99),
        request(opcode::DELETE, b"n", &[], &[], 1),
    ]);
    let exists = |op| {
        response(
            op,
            b"",
            b"",
            status::KEY_EEXISTS,
            b"Data exists for key.",
            0,
        )
    };
    let expected = [
        response(opcode::SET, b"", b"", 0, b"", 1),
        exists(opcode::INCREMENT),
        exists(opcode::DELETE),
        response(opcode::DELETE, b"", b"", 0, b"", 0),
    ]
    .concat();
    assert_eq!(out, expected);
}

#[test]
fn sasl_lengths_are_checked_then_answered_unknown() {
    let einval = |op| response(op, b"", b"", status::EINVAL, b"Invalid arguments", 0);
    let unknown = |op| response(op, b"", b"", status::UNKNOWN_COMMAND, b"Unknown command", 0);
    assert_eq!(
        run(&[request(opcode::SASL_LIST_MECHS, b"k", &[], &[], 0)]),
        (einval(opcode::SASL_LIST_MECHS), true)
    );
    assert_eq!(
        run(&[request(opcode::SASL_AUTH, b"", &[], &[], 0)]),
        (einval(opcode::SASL_AUTH), true)
    );
    assert_eq!(
        run(&[request(opcode::SASL_STEP, b"PLAIN", &[0; 4], b"x", 0)]),
        (einval(opcode::SASL_STEP), true)
    );
    let out = replies(&[
        request(opcode::SASL_AUTH, b"PLAIN", &[], b"\0user\0pass", 0),
        request(opcode::NOOP, b"", &[], &[], 0),
    ]);
    assert_eq!(
        out,
        [
            unknown(opcode::SASL_AUTH),
            response(opcode::NOOP, b"", b"", 0, b"", 0)
        ]
        .concat()
    );
}
