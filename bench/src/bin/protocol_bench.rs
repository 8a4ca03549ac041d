//! Micro-benchmark of the protocol layer on one core: requests parsed per second (text get, text set
//! with 32-byte values, a pipelined 10:1 get:set mix in batches of 16, meta get, binary get and set)
//! and replies composed per second (text VALUE+END, text STORED, meta VA, binary get hit), all from
//! and into memory, no I/O.
//!
//! Rates are per CPU-second of the benchmark thread (the machine is shared; the wall-clock rate is
//! printed beside it). Run: `cargo run --release -p kumofs-bench --bin protocol_bench [seconds]`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use kumofs::protocol::{
    encode, opcode, write_binary_request, Command, Decoder, Dialect, KeyList, Limits, Reply,
    ReplyContext, Request, StoreMode, Value,
};

const BATCH: usize = 1024;

/// Appends one reply to a write buffer.
type Composer<'a> = dyn Fn(&mut Vec<u8>) + 'a;

/// CPU time this thread has used: unlike the wall clock, it does not count the time other processes
/// (several engineers share these two cores) hold the core.
fn thread_cpu_seconds() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to the pointer it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9
}

/// Operations per second of one case: per CPU-second of this thread and per wall-clock second.
struct Rate {
    cpu: f64,
    wall: f64,
}

/// Runs `round` (which handles `per_round` operations) for about `budget` of CPU time.
fn measure(budget: Duration, per_round: usize, mut round: impl FnMut()) -> Rate {
    for _ in 0..3 {
        round();
    }
    let start = Instant::now();
    let cpu_start = thread_cpu_seconds();
    let mut rounds = 0u64;
    while thread_cpu_seconds() - cpu_start < budget.as_secs_f64() {
        for _ in 0..16 {
            round();
        }
        rounds += 16;
    }
    let ops = rounds as f64 * per_round as f64;
    Rate {
        cpu: ops / (thread_cpu_seconds() - cpu_start),
        wall: ops / start.elapsed().as_secs_f64(),
    }
}

/// Decodes every request of `stream` with a fresh decoder, as a gateway does for one read.
fn parse_all(stream: &[u8], text: bool) -> usize {
    let limits = Limits::default();
    let mut decoder = if text {
        Decoder::text(limits)
    } else {
        Decoder::binary(limits)
    };
    let mut at = 0;
    let mut count = 0;
    while let Ok(Some((request, used))) = decoder.decode(&stream[at..]) {
        black_box(&request);
        at += used;
        count += 1;
    }
    count
}

fn text_gets(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| format!("get key:{i:08}\r\n").into_bytes())
        .collect()
}

fn text_sets(n: usize) -> Vec<u8> {
    let value = [b'v'; 32];
    let mut out = Vec::new();
    for i in 0..n {
        out.extend_from_slice(format!("set key:{i:08} 0 0 32\r\n").as_bytes());
        out.extend_from_slice(&value);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Batches of 16 pipelined requests, 10 gets per set, like memtier's --ratio=1:10 --pipeline=16.
fn text_mix(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        if i % 11 == 10 {
            out.extend_from_slice(format!("set key:{i:08} 0 0 32\r\n").as_bytes());
            out.extend_from_slice(&[b'v'; 32]);
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(format!("get key:{i:08}\r\n").as_bytes());
        }
    }
    out
}

/// Meta gets asking for the value, flags and CAS, as a meta-protocol client would.
fn meta_gets(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| format!("mg key:{i:08} v f c\r\n").into_bytes())
        .collect()
}

fn binary_sets(n: usize) -> Vec<u8> {
    let value = [b'v'; 32];
    let mut out = Vec::new();
    for i in 0..n {
        let key = format!("key:{i:08}");
        let mut ctx = ReplyContext::text();
        ctx.dialect = Dialect::Binary;
        ctx.opcode = opcode::SET;
        ctx.opaque = i as u32;
        let command = Command::Store {
            mode: StoreMode::Set,
            key: key.as_bytes().into(),
            flags: 0,
            exptime: 0,
            value: &value,
            cas: None,
        };
        write_binary_request(&Request { command, ctx }, &mut out);
    }
    out
}

fn binary_gets(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        let key = format!("key:{i:08}");
        let mut ctx = ReplyContext::text();
        ctx.dialect = Dialect::Binary;
        ctx.opcode = opcode::GET;
        ctx.opaque = i as u32;
        let keys = KeyList::One(key.as_bytes().into());
        let command = Command::Get {
            keys,
            with_cas: true,
            touch: None,
        };
        write_binary_request(&Request { command, ctx }, &mut out);
    }
    out
}

fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let budget = Duration::from_secs_f64(seconds);
    println!(
        "protocol_bench: one thread, {BATCH} requests per buffer, {seconds} CPU-second(s) per case"
    );

    let gets = text_gets(BATCH);
    let sets = text_sets(BATCH);
    let mix = text_mix(BATCH);
    let meta = meta_gets(BATCH);
    let bin = binary_gets(BATCH);
    let bin_sets = binary_sets(BATCH);
    assert_eq!(parse_all(&gets, true), BATCH);
    assert_eq!(parse_all(&sets, true), BATCH);
    assert_eq!(parse_all(&mix, true), BATCH);
    assert_eq!(parse_all(&meta, true), BATCH);
    assert_eq!(parse_all(&bin, false), BATCH);
    assert_eq!(parse_all(&bin_sets, false), BATCH);
    let cases: [(&str, &[u8], bool); 6] = [
        ("parse text get", &gets, true),
        ("parse text set (32 B)", &sets, true),
        ("parse text mix 10:1, pipeline 16", &mix, true),
        ("parse meta mg v f c", &meta, true),
        ("parse binary get", &bin, false),
        ("parse binary set (32 B)", &bin_sets, false),
    ];
    for (name, stream, text) in cases {
        // The mix is parsed in 16-request reads, one decoder per read as a connection would see it.
        let rate = if name.contains("pipeline") {
            let chunks: Vec<&[u8]> = split_requests(stream, 16);
            measure(budget, BATCH, || {
                for chunk in &chunks {
                    black_box(parse_all(chunk, true));
                }
            })
        } else {
            measure(budget, BATCH, || {
                black_box(parse_all(stream, text));
            })
        };
        println!(
            "{name:<40} {:>8.2} M requests per CPU-second ({:>6.2} M/s wall)",
            rate.cpu / 1e6,
            rate.wall / 1e6
        );
    }

    let data = [b'v'; 32];
    let value = Value {
        key: b"key:00000001",
        flags: 0,
        cas: 12345,
        data: &data,
        ttl: -1,
    };
    let text_ctx = ReplyContext::text();
    let mut bin_ctx = ReplyContext::text();
    bin_ctx.dialect = Dialect::Binary;
    bin_ctx.opcode = opcode::GET;
    let mut meta_ctx = ReplyContext::text();
    meta_ctx.dialect = Dialect::Meta;
    let mut meta_decoder = Decoder::text(Limits::default());
    if let Ok(Some((request, _))) = meta_decoder.decode(b"mg key:00000001 v f c\r\n") {
        meta_ctx = request.ctx;
    }
    let mut out = Vec::with_capacity(BATCH * 128);
    let compose: [(&str, &Composer); 4] = [
        ("compose text VALUE+END (32 B)", &|out| {
            encode(&Reply::Value(value), &text_ctx, out);
            encode(&Reply::End, &text_ctx, out);
        }),
        ("compose text STORED", &|out| {
            encode(&Reply::Stored(1), &text_ctx, out)
        }),
        ("compose meta VA f c (32 B)", &|out| {
            encode(&Reply::Value(value), &meta_ctx, out)
        }),
        ("compose binary get hit (32 B)", &|out| {
            encode(&Reply::Value(value), &bin_ctx, out)
        }),
    ];
    for (name, write) in compose {
        let rate = measure(budget, BATCH, || {
            out.clear();
            for _ in 0..BATCH {
                write(&mut out);
            }
            black_box(&out);
        });
        println!(
            "{name:<40} {:>8.2} M replies per CPU-second ({:>6.2} M/s wall)",
            rate.cpu / 1e6,
            rate.wall / 1e6
        );
    }
}

/// Splits a text stream into slices of `per` whole requests each.
fn split_requests(stream: &[u8], per: usize) -> Vec<&[u8]> {
    let mut decoder = Decoder::text(Limits::default());
    let (mut at, mut start, mut count) = (0, 0, 0);
    let mut out = Vec::new();
    while let Ok(Some((_, used))) = decoder.decode(&stream[at..]) {
        at += used;
        count += 1;
        if count == per {
            out.push(&stream[start..at]);
            start = at;
            count = 0;
        }
    }
    if start < at {
        out.push(&stream[start..at]);
    }
    out
}
