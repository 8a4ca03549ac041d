//! Conditional writes during a rebalance's copy phase, with real processes (manager, servers and
//! gateway on loopback).
//!
//! While a fourth server is attached and the old servers copy it the keys it now coordinates
//! (slowly: `--copy-rate` is tiny, so most keys are not copied yet), the gateway sends writes of
//! those keys to it at once. A conditional write (delete, add, replace, append, cas, incr) of a
//! key it does not hold yet must answer from the key's real state, which the old owners hold:
//! delete answers DELETED and the key stays deleted once the copy brings the old value, add of an
//! existing key answers NOT_STORED, replace/append/cas/incr succeed, and every copy of every key
//! holds the result after the rebalance settles. (Before the fix the new coordinator answered
//! from its own store alone: NOT_FOUND for the delete, which then did not happen, STORED for the
//! add, NOT_STORED/NOT_FOUND for the others.)

mod cluster_support;
mod server_support;
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use cluster_support::{routing, wait_adopted, wait_or, RealCluster, Text, TextClient};
use kumofs::ring::key_hash;
use kumofs::rpc::messages::DataResponse;
use server_support::DataClient;

/// Keys loaded before the attach; about a quarter of them move to the new server as coordinator.
const KEYS: usize = 2400;
/// Keys of each kind of conditional write.
const PER_KIND: usize = 30;

fn original(key: &str) -> String {
    format!("{key}:{}", "o".repeat(48))
}

/// What a key must read as on every copy once the rebalance settled (`None`: deleted).
type Expected = BTreeMap<String, Option<String>>;

#[test]
fn conditional_writes_during_a_copy_see_the_keys_not_copied_yet() {
    // About 8 KiB/s of copy per server: the copy of the moved keys (about 200 KiB over three
    // senders) takes about eight seconds, and the writes below take well under one.
    let args = ["--cpus", "0-1", "--copy-rate", "0.008"];
    let mut cluster = RealCluster::start(3, &args);
    let gateway = cluster.gateway();
    let mut client = TextClient::connect(gateway);
    let keys: Vec<String> = (0..KEYS).map(|i| format!("cw-{i}")).collect();
    let counters: Vec<String> = (0..KEYS / 4).map(|i| format!("cn-{i}")).collect();
    let mut pairs: Vec<(String, String)> = keys.iter().map(|k| (k.clone(), original(k))).collect();
    pairs.extend(counters.iter().map(|k| (k.clone(), "100".to_string())));
    for chunk in pairs.chunks(200) {
        let answers = client.set_many(chunk).expect("set");
        assert!(answers.iter().all(|a| a == "STORED"), "{answers:?}");
    }

    let fourth = cluster.add_server(&args);
    let new = cluster.servers[fourth].addr;
    let out = support::kumoctl(cluster.manager(), &["attach"]);
    assert!(!out.to_lowercase().contains("error"), "attach: {out}");
    let manager = cluster.manager();
    wait_or(
        "kumoctl status to show the copy phase",
        Duration::from_secs(30),
        || cluster.logs(),
        || support::kumoctl(manager, &["status"]).contains("rebalance: copying"),
    );
    // The keys the new server coordinates under the new (write) table: the old servers hold them,
    // the new one gets them only when the copy reaches them.
    // Polled: `routing` answers an empty table when a call fails (seen once under a loaded
    // `make test`), and an empty table would read as "no copy phase".
    wait_or(
        "the manager to hand out the copy phase's tables",
        Duration::from_secs(30),
        || cluster.logs(),
        || {
            let snapshot = routing(manager);
            !snapshot.write.nodes().is_empty() && snapshot.read != snapshot.write
        },
    );
    let snapshot = routing(manager);
    assert!(snapshot.read != snapshot.write, "the copy phase runs");
    // Every server routes with the copy phase's tables (an old coordinator that does not yet
    // would still take the writes itself), and the copy is under way.
    for server in &cluster.servers {
        wait_adopted(server.addr, snapshot.epoch, || cluster.logs());
    }
    wait_or(
        "the copy to start",
        Duration::from_secs(30),
        || cluster.logs(),
        || DataClient::connect(new).stats()["copy_received"] != "0",
    );
    let moving = |list: &[String]| -> Vec<String> {
        list.iter()
            .filter(|k| snapshot.write.coordinator(key_hash(k.as_bytes())) == Some(new))
            .cloned()
            .collect()
    };
    let moved = moving(&keys);
    let moved_counters = moving(&counters);
    assert!(
        moved.len() >= 6 * PER_KIND && moved_counters.len() >= PER_KIND,
        "{} moving keys, {} moving counters",
        moved.len(),
        moved_counters.len()
    );

    let mut expected = Expected::new();
    let mut groups = moved.chunks(PER_KIND);
    let mut next = || groups.next().expect("enough moving keys");
    for key in next() {
        assert_eq!(
            client.delete(key).expect("delete"),
            "DELETED",
            "delete {key}"
        );
        assert_eq!(
            client.gets(key).expect("get"),
            Text::Missing,
            "{key} after delete"
        );
        expected.insert(key.clone(), None);
    }
    for key in next() {
        let answer = client.store("add", key, "added").expect("add");
        assert_eq!(answer, "NOT_STORED", "add of the existing {key}");
        expected.insert(key.clone(), Some(original(key)));
    }
    for key in next() {
        let value = format!("replaced {key}");
        let answer = client.store("replace", key, &value).expect("replace");
        assert_eq!(answer, "STORED", "replace {key}");
        assert_eq!(read(&mut client, key), Some(value.clone()), "{key}");
        expected.insert(key.clone(), Some(value));
    }
    for key in next() {
        let answer = client.store("append", key, "+tail").expect("append");
        assert_eq!(answer, "STORED", "append {key}");
        let value = format!("{}+tail", original(key));
        assert_eq!(read(&mut client, key), Some(value.clone()), "{key}");
        expected.insert(key.clone(), Some(value));
    }
    for key in next() {
        // The token read from the old owner is the key's version, which the new coordinator
        // must compare against.
        let Text::Value { value, cas } = client.gets(key).expect("gets") else {
            panic!("{key} is missing before its cas");
        };
        assert_eq!(value, original(key));
        let value = format!("swapped {key}");
        let answer = client
            .cas(key, &value, cas.expect("a cas token"))
            .expect("cas");
        assert_eq!(answer, "STORED", "cas {key}");
        expected.insert(key.clone(), Some(value));
    }
    for key in &moved_counters[..PER_KIND] {
        assert_eq!(client.incr(key, 7).expect("incr"), "107", "incr {key}");
        expected.insert(key.clone(), Some("107".to_string()));
    }
    // A delete and a get sent together: the get reads the delete (it waits for the key's pull
    // behind the delete on the new coordinator, instead of reading the old owner).
    for key in next() {
        let answers = client
            .pipeline(&format!("delete {key}\r\nget {key}\r\n"), 2)
            .expect("delete and get");
        assert_eq!(answers, ["DELETED", "END"], "{key}");
        expected.insert(key.clone(), None);
    }
    // The writes above ran during the copy phase (else they proved nothing), and the new
    // coordinator pulled keys the copy had not brought yet.
    let status = support::kumoctl(manager, &["status"]);
    assert!(
        status.contains("rebalance: copying"),
        "the copy ended before the writes did: {status}"
    );
    let stats = DataClient::connect(new).stats();
    let pulls: u64 = stats["pulls"].parse().expect("pulls");
    eprintln!("{pulls} pulls for {} conditional writes", expected.len());
    assert!(pulls > 0, "no write needed a pull: {stats:?}");
    assert_eq!(stats["pull_failures"], "0");

    cluster.wait_settled();
    // Through the gateway, and on every copy the settled table names.
    for (key, want) in &expected {
        assert_eq!(&read(&mut client, key), want, "{key} after the rebalance");
    }
    let names: Vec<String> = expected.keys().cloned().collect();
    let mut servers: BTreeMap<SocketAddr, DataClient> = BTreeMap::new();
    for (key, owners) in names.iter().zip(cluster.assign(&names)) {
        let active: Vec<SocketAddr> = owners.iter().filter(|o| o.1).map(|o| o.0).collect();
        assert_eq!(active.len(), 3, "{key}: {owners:?}");
        for owner in active {
            let server = servers
                .entry(owner)
                .or_insert_with(|| DataClient::connect(owner));
            let held = match server.get(key) {
                DataResponse::Value { value, .. } => Some(String::from_utf8_lossy(&value).into()),
                DataResponse::NotFound => None,
                other => panic!("{key} on {owner}: {other:?}"),
            };
            assert_eq!(&held, &expected[key], "{key} on {owner}");
        }
    }
    // The keys nobody wrote moved intact.
    let untouched: Vec<String> = keys
        .iter()
        .filter(|k| !expected.contains_key(*k))
        .step_by(7)
        .cloned()
        .collect();
    cluster.check_copies(&untouched, original);
}

/// The value of `key` through the gateway (`None`: missing).
fn read(client: &mut TextClient, key: &str) -> Option<String> {
    match client.gets(key).expect("get") {
        Text::Value { value, .. } => Some(value),
        Text::Missing => None,
        Text::Line(line) => panic!("get {key}: {line}"),
    }
}
