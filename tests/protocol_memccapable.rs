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

#[test]
fn memcache_crate_client_round_trips() {
    let port = start_server();
    let client = memcache::connect(format!("memcache://127.0.0.1:{port}?timeout=5")).unwrap();
    client.set("alpha", "one", 0).unwrap();
    assert_eq!(
        client.get::<String>("alpha").unwrap().as_deref(),
        Some("one")
    );
    assert!(client.add("alpha", "two", 0).is_err());
    client.append("alpha", "!").unwrap();
    assert_eq!(
        client.get::<String>("alpha").unwrap().as_deref(),
        Some("one!")
    );
    client.set("n", 10u64, 0).unwrap();
    assert_eq!(client.increment("n", 5).unwrap(), 15);
    assert_eq!(client.decrement("n", 20).unwrap(), 0);
    assert!(client.delete("alpha").unwrap());
    assert!(!client.delete("alpha").unwrap());
    assert_eq!(client.get::<String>("alpha").unwrap(), None);
}
