//! Client conformance of the protocol layer through the test store of `protocol_support`:
//! Debian's `memccapable` (54 checks; the test fails if it is not installed, unless
//! `KUMO_SKIP_EXTERNAL=1`), and the `memcache` crate's text and binary clients, including
//! pipelined requests and requests split at every byte.

mod protocol_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use protocol_support::external::memccapable_passes;
use protocol_support::start_server;

#[test]
fn memccapable_passes_against_the_protocol_layer() {
    memccapable_passes(start_server());
}

/// The memcache crate speaks binary by default and ascii with `protocol=ascii`.
fn client_round_trips(protocol: &str) {
    let port = start_server();
    let url = format!("memcache://127.0.0.1:{port}?timeout=5&protocol={protocol}");
    let client = memcache::connect(url).unwrap();
    client.set("alpha", "one", 0).unwrap();
    assert_eq!(
        client.get::<String>("alpha").unwrap().as_deref(),
        Some("one")
    );
    // The crate reports a refused add as an error in binary and as Ok in ascii; either way the
    // value must stay.
    let _ = client.add("alpha", "two", 0);
    assert_eq!(
        client.get::<String>("alpha").unwrap().as_deref(),
        Some("one")
    );
    client.append("alpha", "!").unwrap();
    client.prepend("alpha", "<").unwrap();
    assert_eq!(
        client.get::<String>("alpha").unwrap().as_deref(),
        Some("<one!")
    );
    client.set("n", 10u64, 0).unwrap();
    assert_eq!(client.increment("n", 5).unwrap(), 15);
    assert_eq!(client.decrement("n", 20).unwrap(), 0);
    let many: std::collections::HashMap<String, String> =
        client.gets(&["alpha", "n", "none"]).unwrap();
    assert_eq!(many.len(), 2);
    assert_eq!(many["n"], "0");
    assert!(client.touch("alpha", 100).unwrap());
    assert!(!client.touch("none", 100).unwrap());
    assert!(client.delete("alpha").unwrap());
    assert!(!client.delete("alpha").unwrap());
    assert_eq!(client.get::<String>("alpha").unwrap(), None);
    // A value near the 1 MiB limit, and one over it (refused, old value removed).
    let big = "x".repeat(1024 * 1024 - 512);
    client.set("big", big.as_str(), 0).unwrap();
    assert_eq!(
        client.get::<String>("big").unwrap().map(|v| v.len()),
        Some(big.len())
    );
    let huge = "y".repeat(2 * 1024 * 1024);
    assert!(client.set("big", huge.as_str(), 0).is_err());
    assert!(
        client.get::<String>("big").unwrap().is_none(),
        "old value must be gone"
    );
    assert!(client.version().unwrap().iter().all(|(_, v)| v == "1.6.18"));
    client.flush().unwrap();
    assert_eq!(client.get::<String>("n").unwrap(), None);
}

#[test]
fn memcache_crate_binary_client_round_trips() {
    client_round_trips("binary");
}

#[test]
fn memcache_crate_ascii_client_round_trips() {
    client_round_trips("ascii");
}

/// The crate's multi-key get is a pipeline in binary (GETKQ per key, then NOOP) and one long
/// `gets` line in ascii; its `cas` uses the token the server handed out.
fn client_pipelines_and_cas(protocol: &str) {
    let port = start_server();
    let url = format!("memcache://127.0.0.1:{port}?timeout=5&protocol={protocol}");
    let client = memcache::connect(url).unwrap();
    let keys: Vec<String> = (0..300).map(|i| format!("key{i}")).collect();
    for (i, key) in keys.iter().enumerate().filter(|(i, _)| i % 3 != 0) {
        client.set(key, i as u64, 0).unwrap();
    }
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let found: std::collections::HashMap<String, u64> = client.gets(&refs).unwrap();
    assert_eq!(found.len(), 200);
    assert!(found.iter().all(|(k, v)| *k == format!("key{v}")));
    // cas: the token from gets swaps once, then is stale.
    let (_, _, token) = client
        .get::<(Vec<u8>, u32, Option<u64>)>("key1")
        .unwrap()
        .unwrap();
    let token = token.expect("a CAS token");
    assert_ne!(token, 0);
    assert!(client.cas("key1", "swapped", 0, token).unwrap());
    assert!(!client.cas("key1", "again", 0, token).unwrap());
    assert_eq!(
        client.get::<String>("key1").unwrap().as_deref(),
        Some("swapped")
    );
}

#[test]
fn memcache_crate_binary_pipelines_and_cas() {
    client_pipelines_and_cas("binary");
}

#[test]
fn memcache_crate_ascii_pipelines_and_cas() {
    client_pipelines_and_cas("ascii");
}

/// Sends `case` whole, then one byte per write, and requires the same replies.
fn split_like_whole(case: protocol_support::diff::Case) {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], start_server()));
    let whole = protocol_support::diff::run_case(addr, &case);
    let split = protocol_support::diff::run_case(addr, &case.clone().byte_by_byte());
    assert!(!whole.timed_out && !whole.closed, "{}", case.name);
    if let Some(difference) = protocol_support::diff::first_difference(&whole, &split, case.binary)
    {
        panic!("{}: whole and split differ at {difference}", case.name);
    }
}

#[test]
fn text_requests_split_at_every_byte_read_like_whole_ones() {
    split_like_whole(protocol_support::pipelines::text_pipeline());
}

#[test]
fn binary_requests_split_at_every_byte_read_like_whole_ones() {
    split_like_whole(protocol_support::pipelines::binary_pipeline());
}

/// A raw check of the same thing on the wire: a get split inside its key and line ending.
#[test]
fn a_request_split_across_writes_is_answered_once_complete() {
    let port = start_server();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    for piece in [
        &b"set k 0 0 5\r\nhe"[..],
        b"llo\r",
        b"\nget",
        b" k\r",
        b"\n",
    ] {
        stream.write_all(piece).unwrap();
    }
    let want = b"STORED\r\nVALUE k 0 5\r\nhello\r\nEND\r\n";
    let mut got = vec![0; want.len()];
    stream.read_exact(&mut got).unwrap();
    assert_eq!(got, want);
}

/// A conformance test must fail, not pass silently, when its external program is missing:
/// only `KUMO_SKIP_EXTERNAL=1` turns that into a skip.
#[test]
fn a_missing_external_program_fails_the_test() {
    let missing = std::panic::catch_unwind(|| {
        protocol_support::external::required_program("/nonexistent/memccapable", "nothing")
    });
    if std::env::var("KUMO_SKIP_EXTERNAL").as_deref() == Ok("1") {
        assert!(matches!(missing, Ok(None)));
    } else {
        assert!(missing.is_err(), "a missing program must fail the test");
    }
}
