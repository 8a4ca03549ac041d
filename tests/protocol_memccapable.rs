//! Client conformance of the protocol layer before the gateway exists: the test-only memcached of
//! `protocol_support` drives `kumofs::protocol`'s decoder and encoder; Debian's `memccapable` and the
//! `memcache` crate talk to it. The memccapable check is skipped with a message if it is not installed.

mod protocol_support;

use std::process::Command as Process;

use protocol_support::start_server;

#[test]
fn memccapable_passes_against_the_protocol_layer() {
    if Process::new("memccapable").arg("--help").output().is_err() {
        eprintln!("SKIPPED: memccapable (Debian libmemcached-tools) is not installed");
        return;
    }
    let port = start_server();
    // One stream, so each verdict follows its test name.
    let output = Process::new("sh")
        .args(["-c", &format!("memccapable -h 127.0.0.1 -p {port} 2>&1")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let failed: Vec<&str> = text.lines().filter(|l| l.contains("[FAIL]")).collect();
    let passed = text.lines().filter(|l| l.contains("[pass]")).count();
    eprintln!("{text}");
    assert!(failed.is_empty(), "memccapable failures: {failed:#?}");
    assert_eq!(passed, 54, "memccapable passed {passed} of 54");
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
