//! The binary rows of the differential test (see `tests/protocol_diff_binary.rs`): each opcode,
//! quiet forms, CAS, errors, bad headers, limits and all 256 opcodes in a bare frame, each with
//! the reason and our exact reply where we differ from memcached 1.6.18 on purpose.

use kumofs::protocol::opcode::*;

use super::diff::{Case, CAS_PLACEHOLDER};

pub const OPAQUE: u32 = 0x0102_0304;

/// A request frame: magic, opcode, lengths, opaque, CAS, then extras, key and value.
pub fn frame(op: u8, key: &[u8], extras: &[u8], value: &[u8], cas: u64) -> Vec<u8> {
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

pub fn get(op: u8, key: &[u8]) -> Vec<u8> {
    frame(op, key, &[], &[], 0)
}

pub fn store(op: u8, key: &[u8], flags: u32, exptime: u32, value: &[u8], cas: u64) -> Vec<u8> {
    let mut extras = flags.to_be_bytes().to_vec();
    extras.extend_from_slice(&exptime.to_be_bytes());
    frame(op, key, &extras, value, cas)
}

pub fn set(key: &[u8], value: &[u8]) -> Vec<u8> {
    store(SET, key, 7, 0, value, 0)
}

pub fn concat(op: u8, key: &[u8], value: &[u8], cas: u64) -> Vec<u8> {
    frame(op, key, &[], value, cas)
}

pub fn arith(op: u8, key: &[u8], delta: u64, initial: u64, exptime: u32, cas: u64) -> Vec<u8> {
    let mut extras = delta.to_be_bytes().to_vec();
    extras.extend_from_slice(&initial.to_be_bytes());
    extras.extend_from_slice(&exptime.to_be_bytes());
    frame(op, key, &extras, &[], cas)
}

pub fn expiring(op: u8, key: &[u8], exptime: u32) -> Vec<u8> {
    frame(op, key, &exptime.to_be_bytes(), &[], 0)
}

pub fn bare(op: u8) -> Vec<u8> {
    frame(op, &[], &[], &[], 0)
}

/// Why some unknown-command cases differ: memcached 1.6.18 answers them, then swallows more bytes
/// than the request has (eating the next request, or waiting forever); we swallow exactly the body.
const SWALLOW_BUG: &str = "memcached 1.6.18 swallows past an unknown command's body";

fn unknown_reply(op: u8) -> Vec<u8> {
    [
        [0x81, op, 0, 0, 0, 0, 0, 0x81, 0, 0, 0, 15].as_slice(),
        &OPAQUE.to_be_bytes(),
        &[0; 8],
        b"Unknown command",
    ]
    .concat()
}

/// A success reply frame as our CAS-normalised transcripts show it: `cas` is its ordinal.
fn reply(op: u8, key_len: u16, extras_len: u8, body: &[u8], cas: u64) -> Vec<u8> {
    let [k0, k1] = key_len.to_be_bytes();
    [
        [0x81, op, k0, k1, extras_len, 0, 0, 0].as_slice(),
        &(body.len() as u32).to_be_bytes(),
        &OPAQUE.to_be_bytes(),
        &cas.to_be_bytes(),
        body,
    ]
    .concat()
}

pub fn case(name: &str, frames: &[Vec<u8>]) -> Case {
    Case::binary(name, vec![frames.concat()])
}

/// Two steps: the second may use the CAS the first one's replies ended with.
pub fn case2(name: &str, first: &[Vec<u8>], second: &[Vec<u8>]) -> Case {
    Case::binary(name, vec![first.concat(), second.concat()])
}

fn get_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (name, op) in [
        ("get", GET),
        ("getq", GETQ),
        ("getk", GETK),
        ("getkq", GETKQ),
    ] {
        cases.push(case(
            &format!("{name} hit and miss"),
            &[set(b"k", b"v"), get(op, b"k"), get(op, b"x"), bare(NOOP)],
        ));
    }
    for (name, op) in [
        ("gat", GAT),
        ("gatq", GATQ),
        ("gatk", GATK),
        ("gatkq", GATKQ),
    ] {
        cases.push(case(
            &format!("{name} hit and miss"),
            &[
                set(b"k", b"v"),
                expiring(op, b"k", 100),
                expiring(op, b"x", 100),
                get(GET, b"k"),
            ],
        ));
    }
    cases.extend([
        case(
            "touch",
            &[
                set(b"k", b"v"),
                expiring(TOUCH, b"k", 100),
                expiring(TOUCH, b"x", 1),
            ],
        ),
        case(
            "touch expires",
            &[
                set(b"k", b"v"),
                expiring(TOUCH, b"k", u32::MAX),
                get(GET, b"k"),
            ],
        ),
        case(
            "gat expires",
            &[
                set(b"k", b"v"),
                expiring(GAT, b"k", u32::MAX),
                get(GET, b"k"),
            ],
        ),
        case("get empty value", &[set(b"k", b""), get(GETK, b"k")]),
        case(
            "get key 250",
            &[set(&[b'k'; 250], b"v"), get(GETK, &[b'k'; 250])],
        ),
        case(
            "get binary key",
            &[set(b"\x00\x01 \r\n", b"v"), get(GETK, b"\x00\x01 \r\n")],
        ),
        case(
            "get large value",
            &[set(b"k", &vec![b'x'; 500_000]), get(GET, b"k")],
        ),
    ]);
    cases
}

fn store_cases() -> Vec<Case> {
    let mut cases = vec![
        case("set", &[set(b"k", b"v"), get(GET, b"k")]),
        case(
            "set flags and exptime",
            &[store(SET, b"k", u32::MAX, 100, b"v", 0), get(GET, b"k")],
        ),
        case(
            "set expired",
            &[store(SET, b"k", 1, u32::MAX, b"v", 0), get(GET, b"k")],
        ),
        case("setq", &[store(SETQ, b"k", 1, 0, b"v", 0), get(GET, b"k")]),
        case("set cas missing", &[store(SET, b"k", 0, 0, b"v", 5)]),
        case(
            "setq cas missing",
            &[store(SETQ, b"k", 0, 0, b"v", 5), bare(NOOP)],
        ),
        case2(
            "set cas",
            &[set(b"k", b"v")],
            &[
                store(SET, b"k", 0, 0, b"w", CAS_PLACEHOLDER),
                store(SET, b"k", 0, 0, b"x", CAS_PLACEHOLDER - 1),
                get(GET, b"k"),
            ],
        ),
        case(
            "add",
            &[
                store(ADD, b"k", 0, 0, b"v", 0),
                store(ADD, b"k", 0, 0, b"w", 0),
                get(GET, b"k"),
            ],
        ),
        case(
            "addq",
            &[
                store(ADDQ, b"k", 0, 0, b"v", 0),
                store(ADDQ, b"k", 0, 0, b"w", 0),
                bare(NOOP),
            ],
        ),
        case("add with cas", &[store(ADD, b"k", 0, 0, b"v", 5)]),
        case(
            "replace",
            &[
                store(REPLACE, b"k", 0, 0, b"v", 0),
                set(b"k", b"v"),
                store(REPLACE, b"k", 3, 0, b"w", 0),
                get(GET, b"k"),
            ],
        ),
        case(
            "replaceq",
            &[
                store(REPLACEQ, b"k", 0, 0, b"v", 0),
                set(b"k", b"v"),
                store(REPLACEQ, b"k", 0, 0, b"w", 0),
                bare(NOOP),
            ],
        ),
        case2(
            "replace cas",
            &[set(b"k", b"v")],
            &[
                store(REPLACE, b"k", 0, 0, b"w", 1),
                store(REPLACE, b"k", 0, 0, b"x", CAS_PLACEHOLDER),
                get(GET, b"k"),
            ],
        ),
        case("set empty key", &[store(SET, b"", 0, 0, b"v", 0)]).closes(),
        case("set no extras", &[frame(SET, b"k", &[], b"v", 0)]).closes(),
        case("set short extras", &[frame(SET, b"k", &[0; 4], b"v", 0)]).closes(),
        case("set key 251", &[set(&[b'k'; 251], b"v")]).closes(),
    ];
    for (name, op, quiet) in [("append", APPEND, APPENDQ), ("prepend", PREPEND, PREPENDQ)] {
        cases.push(case(
            name,
            &[
                concat(op, b"k", b"a", 0),
                set(b"k", b"v"),
                concat(op, b"k", b"a", 0),
                get(GET, b"k"),
            ],
        ));
        cases.push(case(
            &format!("{name}q"),
            &[
                concat(quiet, b"k", b"a", 0),
                set(b"k", b"v"),
                concat(quiet, b"k", b"a", 0),
                get(GET, b"k"),
            ],
        ));
        cases.push(case2(
            &format!("{name} cas"),
            &[set(b"k", b"v")],
            &[
                concat(op, b"k", b"a", 1),
                concat(op, b"k", b"b", CAS_PLACEHOLDER),
                get(GET, b"k"),
            ],
        ));
        cases.push(
            case(
                &format!("{name} with extras"),
                &[store(op, b"k", 0, 0, b"a", 0)],
            )
            .closes(),
        );
    }
    cases
}

fn too_large_cases() -> Vec<Case> {
    let big = vec![b'x'; 2 << 20];
    let mib = vec![b'x'; 1 << 20];
    vec![
        case(
            "set too large",
            &[set(b"k", b"v"), set(b"k", &big), get(GET, b"k")],
        ),
        case(
            "setq too large",
            &[
                set(b"k", b"v"),
                store(SETQ, b"k", 0, 0, &big, 0),
                get(GET, b"k"),
            ],
        ),
        case(
            "add too large",
            &[
                set(b"k", b"v"),
                store(ADD, b"k", 0, 0, &big, 0),
                get(GET, b"k"),
            ],
        ),
        case(
            "replace too large",
            &[
                set(b"k", b"v"),
                store(REPLACE, b"k", 0, 0, &big, 0),
                get(GET, b"k"),
            ],
        ),
        case(
            "append too large",
            &[
                set(b"k", b"v"),
                concat(APPEND, b"k", &big, 0),
                get(GET, b"k"),
            ],
        ),
        case(
            "set too large with cas",
            &[
                set(b"k", b"v"),
                store(SET, b"k", 0, 0, &big, 1),
                get(GET, b"k"),
            ],
        ),
        case("set 1 MiB exactly", &[set(b"k", &mib), get(GETK, b"j")]).deliberate(
            "the limit counts the value only",
            &[
                [0x81, SET, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0].as_slice(),
                &OPAQUE.to_be_bytes(),
                &1u64.to_be_bytes(),
                &[0x81, GETK, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1],
                &OPAQUE.to_be_bytes(),
                &[0; 8],
                b"j",
            ]
            .concat(),
        ),
    ]
}

fn other_cases() -> Vec<Case> {
    vec![
        case(
            "delete",
            &[
                set(b"k", b"v"),
                get(DELETE, b"k"),
                get(DELETE, b"k"),
                get(GET, b"k"),
            ],
        ),
        case(
            "deleteq",
            &[
                set(b"k", b"v"),
                get(DELETEQ, b"k"),
                get(DELETEQ, b"k"),
                bare(NOOP),
            ],
        ),
        case2(
            "delete cas",
            &[set(b"k", b"v")],
            &[
                frame(DELETE, b"k", &[], &[], 1),
                frame(DELETE, b"k", &[], &[], CAS_PLACEHOLDER),
            ],
        ),
        case("delete with value", &[frame(DELETE, b"k", &[], b"v", 0)]).closes(),
        case(
            "delete with extras",
            &[frame(DELETE, b"k", &[0; 4], &[], 0)],
        )
        .closes(),
        case(
            "incr",
            &[
                set(b"n", b"10"),
                arith(INCREMENT, b"n", 5, 0, 0, 0),
                get(GET, b"n"),
            ],
        ),
        case(
            "incr miss no create",
            &[arith(INCREMENT, b"n", 5, 0, u32::MAX, 0)],
        ),
        case(
            "incr miss create",
            &[arith(INCREMENT, b"n", 5, 42, 0, 0), get(GET, b"n")],
        ),
        case(
            "decr miss create",
            &[arith(DECREMENT, b"n", 5, 42, 100, 0), get(GET, b"n")],
        ),
        case(
            "incr wraps",
            &[
                set(b"n", b"18446744073709551615"),
                arith(INCREMENT, b"n", 2, 0, 0, 0),
            ],
        ),
        case(
            "decr floors",
            &[set(b"n", b"3"), arith(DECREMENT, b"n", 5, 0, 0, 0)],
        ),
        case(
            "incr non-numeric",
            &[set(b"n", b"abc"), arith(INCREMENT, b"n", 1, 0, 0, 0)],
        ),
        case(
            "incrq decrq",
            &[
                set(b"n", b"1"),
                arith(INCREMENTQ, b"n", 1, 0, 0, 0),
                arith(DECREMENTQ, b"x", 1, 0, u32::MAX, 0),
                get(GET, b"n"),
            ],
        ),
        case2(
            "incr cas",
            &[set(b"n", b"1")],
            &[
                arith(INCREMENT, b"n", 1, 0, 0, 1),
                arith(INCREMENT, b"n", 1, 0, 0, CAS_PLACEHOLDER),
            ],
        ),
        case(
            "incr short extras",
            &[frame(INCREMENT, b"n", &[0; 8], &[], 0)],
        )
        .closes(),
        case("incr no key", &[arith(INCREMENT, b"", 1, 0, 0, 0)]).closes(),
        case("flush", &[set(b"k", b"v"), bare(FLUSH), get(GET, b"k")]),
        case(
            "flush delay",
            &[
                set(b"k", b"v"),
                frame(FLUSH, &[], &100u32.to_be_bytes(), &[], 0),
                get(GET, b"k"),
            ],
        ),
        case(
            "flush zero delay",
            &[
                set(b"k", b"v"),
                frame(FLUSH, &[], &0u32.to_be_bytes(), &[], 0),
                get(GET, b"k"),
            ],
        ),
        case("flushq", &[set(b"k", b"v"), bare(FLUSHQ), get(GET, b"k")]),
        case("flush with key", &[frame(FLUSH, b"k", &[], &[], 0)]).closes(),
        case("noop", &[bare(NOOP)]),
        case("noop with value", &[frame(NOOP, &[], &[], b"x", 0)]).closes(),
        case("version", &[bare(VERSION)]),
        // memcached 1.6.18 has no binary verbosity: it answers "Unknown command", then waits for
        // bytes that never come.
        case(
            "verbosity",
            &[frame(VERBOSITY, &[], &1u32.to_be_bytes(), &[], 0)],
        )
        .deliberate(SWALLOW_BUG, &unknown_reply(VERBOSITY))
        .hangs_memcached(),
        case("unknown opcode with key", &[get(0x1f, b"k")])
            .deliberate(SWALLOW_BUG, &unknown_reply(0x1f))
            .hangs_memcached(),
        case("unknown opcode with key 251", &[get(0x30, &[b'k'; 251])]).closes(),
        case(
            "sasl auth with extras",
            &[frame(0x21, b"PLAIN", &[0; 4], b"x", 0), bare(NOOP)],
        ),
        case(
            "sasl auth extras only",
            &[frame(0x21, b"", &[0; 4], b"", 0)],
        )
        .closes(),
        case(
            "sasl list mechs with value",
            &[frame(SASL_LIST_MECHS, b"", &[], b"x", 0)],
        )
        .closes(),
        case(
            "set body shorter than extras",
            &[{
                let mut f = set(b"k", b"");
                f[11] = 4;
                f
            }],
        )
        .closes(),
        case(
            "get body shorter than key 251",
            &[{
                let mut f = get(GET, &[b'k'; 251]);
                f[11] = 1;
                f
            }],
        )
        .closes(),
        case("get with value", &[frame(GET, b"k", &[], b"v", 0)]).closes(),
        case("touch with value", &[frame(TOUCH, b"k", &[0; 4], b"v", 0)])
            .closes()
            .deliberate(
                "a body longer than touch takes is refused (memcached reads the rest as a header)",
                &[
                    [0x81, TOUCH, 0, 0, 0, 0, 0, 4, 0, 0, 0, 17].as_slice(),
                    &OPAQUE.to_be_bytes(),
                    &[0; 8],
                    b"Invalid arguments",
                ]
                .concat(),
            )
            .hangs_memcached(),
        case("stat with extras", &[frame(STAT, b"", &[0; 4], &[], 0)]).closes(),
        case(
            "incr with value",
            &[frame(INCREMENT, b"n", &[0; 20], b"v", 0)],
        )
        .closes(),
        case(
            "append without value",
            &[
                set(b"k", b"v"),
                concat(APPEND, b"k", b"", 0),
                get(GET, b"k"),
            ],
        ),
        case("quit with key", &[get(QUIT, b"k")]).closes(),
        case("stat unknown group", &[get(STAT, b"nonsense")]),
        case("stat reset", &[get(STAT, b"reset")]),
        case("quit", &[set(b"k", b"v"), bare(QUIT), bare(NOOP)]).closes(),
        case("quitq", &[set(b"k", b"v"), bare(QUITQ), bare(NOOP)]).closes(),
        case("sasl list mechs", &[bare(SASL_LIST_MECHS)]),
        case("sasl auth", &[frame(0x21, b"PLAIN", &[], b"\0u\0p", 0)]),
        case("sasl step", &[frame(0x22, b"PLAIN", &[], b"\0u\0p", 0)]),
        case(
            "unknown opcode with body",
            &[frame(0x50, b"k", &[1, 2, 3, 4], b"value", 0), bare(NOOP)],
        )
        .deliberate(
            SWALLOW_BUG,
            &[
                unknown_reply(0x50),
                [0x81, NOOP, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0].to_vec(),
                OPAQUE.to_be_bytes().to_vec(),
                vec![0; 8],
            ]
            .concat(),
        )
        .hangs_memcached(),
        case("bad magic after a request", &[bare(NOOP), vec![0x00; 24]]).closes(),
        case(
            "bad magic after a pipeline",
            &[
                set(b"a", b"1"),
                get(GETK, b"a"),
                arith(INCREMENT, b"a", 1, 0, 0, 0),
                get(GETKQ, b"b"),
                vec![0x00; 24],
            ],
        )
        .closes()
        .deliberate(
            "the replies to the requests before a closing error are written before the close \
             (memcached 1.6.18 closes with them unwritten)",
            &[
                reply(SET, 0, 0, &[], 1),
                reply(GETK, 1, 4, &[0, 0, 0, 7, b'a', b'1'], 1),
                reply(INCREMENT, 0, 0, &2u64.to_be_bytes(), 2),
            ]
            .concat(),
        ),
        case(
            "quit after a pipeline",
            &[
                set(b"a", b"1"),
                concat(APPEND, b"a", b"2", 0),
                get(GETK, b"a"),
                bare(QUIT),
                get(GET, b"a"),
            ],
        )
        .closes(),
        case(
            "response magic after a request",
            &[bare(NOOP), {
                let mut f = bare(NOOP);
                f[0] = 0x81;
                f
            }],
        )
        .closes(),
        case(
            "body shorter than key",
            &[{
                let mut f = get(GET, b"kk");
                f[11] = 1;
                f
            }],
        )
        .closes(),
        case(
            "data type and vbucket set",
            &[
                {
                    let mut f = set(b"k", b"v");
                    f[5] = 1;
                    f[7] = 9;
                    f
                },
                get(GET, b"k"),
            ],
        ),
        case(
            "pipelined writes to one key",
            &[
                set(b"a", b"1"),
                store(REPLACE, b"a", 9, 0, b"2", 0),
                concat(APPEND, b"a", b"3", 0),
                expiring(TOUCH, b"a", 100),
                get(GETK, b"a"),
                get(DELETEQ, b"a"),
                get(GET, b"a"),
                store(ADD, b"a", 1, 0, b"7", 0),
                arith(INCREMENT, b"a", 1, 0, 0, 0),
                get(GETK, b"a"),
            ],
        ),
        case(
            "pipelined mix",
            &[
                set(b"a", b"1"),
                get(GETQ, b"a"),
                get(GETKQ, b"b"),
                arith(INCREMENTQ, b"a", 1, 0, 0, 0),
                get(GETK, b"a"),
                get(DELETEQ, b"a"),
                bare(NOOP),
            ],
        ),
    ]
}

/// Every opcode in a bare frame, and every known one with a one-byte key: which are known, which
/// are refused how. (An unknown opcode with a body makes memcached 1.6.18 swallow bytes of the
/// next request; that case is in `other_cases` as a deliberate difference.)
fn every_opcode() -> Vec<Case> {
    let mut cases = Vec::new();
    for op in 0..=255u8 {
        // Quit closes; a request after it would make the kernel answer with a reset.
        let quits = [QUIT, QUITQ].contains(&op);
        // Stats replies differ by nature (see `stats_have_the_same_shape`).
        if op == VERBOSITY || op == STAT {
            continue;
        }
        let mut bare_case = case(&format!("opcode {op:#04x} bare"), &[bare(op)]);
        bare_case.closes = quits || closes_on_bare(op);
        cases.push(bare_case);
        // (0x1b verbosity and 0x1f are unknown; see "verbosity" and "unknown opcode with key".)
        if op <= GATKQ && op != VERBOSITY && op != 0x1f {
            let mut keyed = case(&format!("opcode {op:#04x} with key"), &[get(op, b"k")]);
            keyed.closes = quits || closes_with_key(op);
            cases.push(keyed);
        }
    }
    cases
}

/// Opcodes whose length check fails without a key (memcached answers 0x0004 and closes).
fn closes_on_bare(op: u8) -> bool {
    [
        GET, GETQ, GETK, GETKQ, SET, SETQ, ADD, ADDQ, REPLACE, REPLACEQ, DELETE, DELETEQ,
        INCREMENT, INCREMENTQ, DECREMENT, DECREMENTQ, APPEND, APPENDQ, PREPEND, PREPENDQ, TOUCH,
        GAT, GATQ, GATK, GATKQ, SASL_AUTH, SASL_STEP,
    ]
    .contains(&op)
}

/// Opcodes whose length check fails with a key and nothing else.
fn closes_with_key(op: u8) -> bool {
    [
        SET,
        SETQ,
        ADD,
        ADDQ,
        REPLACE,
        REPLACEQ,
        INCREMENT,
        INCREMENTQ,
        DECREMENT,
        DECREMENTQ,
        QUIT,
        QUITQ,
        FLUSH,
        FLUSHQ,
        NOOP,
        VERSION,
        TOUCH,
        GAT,
        GATQ,
        GATK,
        GATKQ,
        SASL_LIST_MECHS,
    ]
    .contains(&op)
}

pub fn all_cases() -> Vec<Case> {
    let mut cases = get_cases();
    cases.extend(store_cases());
    cases.extend(too_large_cases());
    cases.extend(other_cases());
    cases.extend(every_opcode());
    cases
}
