//! Growing and rebalancing with real processes (real manager, servers and gateway on loopback):
//! - a fourth and a fifth server are attached under a writing and reading client with no client
//!   error, and every key ends with its three copies;
//! - a server killed during a rebalance's copy loses nothing: the manager restarts the copy phase
//!   and the remaining servers send what the lost one would have.

mod cluster_support;
mod server_support;
mod support;

use std::time::Duration;

use cluster_support::{read_all, wait_or, RealCluster, TextClient, Writer};
use server_support::DataClient;

#[test]
fn a_fourth_and_a_fifth_server_join_under_load_without_a_client_error() {
    let args = ["--cpus", "0-1"];
    let mut cluster = RealCluster::start(3, &args);
    let writer = Writer::start(cluster.gateway(), "grow");
    writer.wait_more(300, Duration::from_secs(30));
    for _ in 0..2 {
        cluster.add_server(&args);
        cluster.attach();
        writer.wait_more(200, Duration::from_secs(30));
    }
    let report = writer.finish();
    assert!(report.lost.is_empty(), "lost writes: {:?}", report.lost);
    assert!(
        report.errors.is_empty(),
        "{} client errors, first: {:?}\n{}",
        report.errors.len(),
        &report.errors[..report.errors.len().min(5)],
        cluster.logs()
    );
    cluster.check_copies(&report.acked, Writer::value);
    // The old owners dropped their copies. A write replicated under the old table to a server
    // that had finished its drop would stay there as a leftover: never read (that server is not
    // an owner), dropped by the next rebalance, and never brought back below the GC horizon (see
    // server::manager_link). The drop waits until every server routes with the new table, so
    // there are at most a few.
    let total: usize = cluster
        .servers
        .iter()
        .map(|s| {
            DataClient::connect(s.addr).stats()["items"]
                .parse::<usize>()
                .unwrap_or(0)
        })
        .sum();
    let copies = 3 * report.acked.len();
    assert!(
        total >= copies && total <= copies + copies / 100,
        "{total} records for {copies} copies"
    );
    eprintln!("{} leftover copies after two rebalances", total - copies);
}

/// Waits on the manager side: the manager must restart the copy phase when a sender is lost
/// (the manager on main at 7d3b9a7 finishes it as if nothing happened, and about a fifth of the
/// moved keys are then missing on their new owner). Skipped, with a message, against a manager
/// without the `--gc-lag` option, which came with that work.
#[test]
fn a_server_killed_during_a_rebalance_loses_nothing() {
    if !cluster_support::manager_supports("--gc-lag") {
        eprintln!(
            "skipped: waits on the manager side (restarting a copy phase after a lost sender)"
        );
        return;
    }
    // A slow copy (256 KiB/s per server) so that the kill lands in the middle of it.
    let args = ["--cpus", "0-1", "--copy-rate", "0.25"];
    let mut cluster = RealCluster::start(3, &args);
    let mut client = TextClient::connect(cluster.gateway());
    let keys: Vec<String> = (0..1500).map(|i| format!("moving-{i}")).collect();
    let value = |key: &str| format!("{key}:{}", "x".repeat(500));
    for key in &keys {
        let stored = client.set(key, &value(key));
        let stored = stored.unwrap_or_else(|e| panic!("set {key}: {e}\n{}", cluster.logs()));
        assert_eq!(stored, "STORED");
    }
    let fourth = cluster.add_server(&args);
    let out = support::kumoctl(cluster.manager(), &["attach"]);
    assert!(!out.to_lowercase().contains("error"), "{out}");
    let receiver = cluster.servers[fourth].addr;
    wait_or(
        "the copy to start",
        Duration::from_secs(30),
        || cluster.logs(),
        || DataClient::connect(receiver).stats()["copy_received"] != "0",
    );
    // Kill a sender mid-copy.
    cluster.servers[0].kill();
    cluster.wait_fault(0);
    cluster.wait_settled();
    let bad = read_all(cluster.gateway(), &keys, value);
    assert!(
        bad.is_empty(),
        "{} keys lost: {:?}\n{}",
        bad.len(),
        &bad[..bad.len().min(5)],
        cluster.logs()
    );
    // Every live owner of every key holds it (the dead one is skipped by the check).
    let mut clients = std::collections::HashMap::new();
    for chunk in keys.chunks(300) {
        for (key, owners) in chunk.iter().zip(cluster.assign(chunk)) {
            for (owner, active) in owners {
                if active {
                    let client = clients
                        .entry(owner)
                        .or_insert_with(|| DataClient::connect(owner));
                    assert_eq!(
                        server_support::value_of(&client.get(key)).map(|v| v.0),
                        Some(value(key)),
                        "{key} on {owner}"
                    );
                }
            }
        }
    }
}
