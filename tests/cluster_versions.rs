//! Versions, the replication backlog and tombstone collection, with real kumo-server processes and
//! a scripted manager (tests/cluster_support): a write is stamped above the key's stored version
//! even when that version came from a clock a day ahead; a replica that misses writes gets them from
//! the coordinator's backlog, which is dropped once the replica is marked fault; tombstones are
//! collected only below the snapshot's GC horizon.

mod cluster_support;
mod server_support;
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use cluster_support::{logs_of, wait, wait_adopted, wait_or, FakeManager, PeerConn, ServerProc};
use kumofs::cluster::clock::{version_at, wall_ms};
use kumofs::ring::{key_hash, NodeState};
use kumofs::rpc::messages::{
    DataRequest, DataResponse, ReplicaRecord, ReplicationRequest, ReplicationResponse,
    RoutingSnapshot, WriteOp,
};
use server_support::{value_of, DataClient};

fn start_servers(
    fake: &FakeManager,
    dir: &std::path::Path,
    n: usize,
    extra: &[&str],
) -> Vec<ServerProc> {
    let mut args = vec!["--cpus", "0-1"];
    args.extend_from_slice(extra);
    let servers: Vec<ServerProc> = (0..n)
        .map(|i| ServerProc::start(&format!("s{i}"), dir, fake.addr, &args))
        .collect();
    for s in &servers {
        fake.wait_registered(s.addr);
    }
    servers
}

fn all_active(servers: &[ServerProc]) -> Vec<(SocketAddr, NodeState)> {
    servers
        .iter()
        .map(|s| (s.addr, NodeState::Active))
        .collect()
}

fn stat(client: &mut DataClient, key: &str) -> u64 {
    client.stats()[key].parse().unwrap_or(0)
}

/// Waits until every server routes with `snapshot`.
fn adopted(servers: &[&ServerProc], snapshot: &RoutingSnapshot) {
    for s in servers {
        wait_adopted(s.addr, snapshot.epoch, || logs_of(servers));
    }
}

fn record(key: &str, value: &str, version: u64, tombstone: bool) -> ReplicaRecord {
    ReplicaRecord {
        hash: key_hash(key.as_bytes()),
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        flags: 0,
        exptime: 0,
        version,
        tombstone,
    }
}

#[test]
fn a_write_is_stamped_above_a_stored_version_from_a_clock_a_day_ahead() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = FakeManager::start();
    let servers = start_servers(&fake, dir.path(), 3, &[]);
    let snapshot = fake.settle(&all_active(&servers));
    adopted(&servers.iter().collect::<Vec<_>>(), &snapshot);
    let logs = || logs_of(&servers.iter().collect::<Vec<_>>());

    let future = version_at(wall_ms() + 86_400_000);
    for (key, tombstone) in [("ahead-value", false), ("ahead-delete", true)] {
        // A coordinator whose clock ran a day ahead wrote (or deleted) the key on every copy.
        for s in &servers {
            let answer = PeerConn::open(s.addr, None).call(&ReplicationRequest::Replicate {
                records: vec![record(key, "from the future", future, tombstone)],
            });
            assert_eq!(
                answer,
                ReplicationResponse::Ack {
                    applied: 1,
                    stale: 0
                }
            );
        }
        let coordinator = snapshot
            .write
            .coordinator(key_hash(key.as_bytes()))
            .expect("owner");
        let mut client = DataClient::connect(coordinator);
        let DataResponse::Stored { version } = client.set(key, "now") else {
            panic!("set {key} failed\n{}", logs())
        };
        assert!(
            version > future,
            "{key}: version {version:#x} is not above {future:#x}"
        );
        for s in &servers {
            assert_eq!(
                value_of(&DataClient::connect(s.addr).get(key)),
                Some(("now".to_string(), version)),
                "{key} on {}\n{}",
                s.addr,
                logs()
            );
        }
        // The new version is the CAS token.
        assert!(matches!(
            client.write(key, WriteOp::Cas { version }, "cas", 0, 0),
            DataResponse::Stored { .. }
        ));
    }
}

#[test]
fn a_frozen_replica_gets_missed_writes_from_the_backlog_until_it_is_marked_fault() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = FakeManager::start();
    let servers = start_servers(&fake, dir.path(), 3, &[]);
    let snapshot = fake.settle(&all_active(&servers));
    adopted(&servers.iter().collect::<Vec<_>>(), &snapshot);
    let logs = || logs_of(&servers.iter().collect::<Vec<_>>());
    let (a, b, c) = (&servers[0], &servers[1], &servers[2]);
    // Keys coordinated by `a` (with 3 servers, `b` and `c` hold a copy of every key).
    let keys: Vec<String> = (0..1000)
        .map(|i| format!("backlog-{i}"))
        .filter(|k| snapshot.write.coordinator(key_hash(k.as_bytes())) == Some(a.addr))
        .take(4)
        .collect();
    let mut client = DataClient::connect(a.addr);

    b.freeze();
    let answer = client.set(&keys[0], "sync");
    assert!(
        matches!(&answer, DataResponse::Error(why) if why.contains("replication failed")),
        "{answer:?}"
    );
    let noreply = DataRequest::Write {
        hash: key_hash(keys[1].as_bytes()),
        key: keys[1].as_bytes().to_vec(),
        op: WriteOp::Set,
        value: b"noreply".to_vec(),
        flags: 0,
        exptime: 0,
        noreply: true,
    };
    assert!(matches!(client.call(&noreply), DataResponse::Stored { .. }));
    wait("both writes in the backlog", || {
        stat(&mut client, "repl_backlog") == 2
    });
    let mut on_c = DataClient::connect(c.addr);
    assert_eq!(
        value_of(&on_c.get(&keys[0])).map(|v| v.0),
        Some("sync".into())
    );
    b.thaw();
    let mut on_b = DataClient::connect(b.addr);
    wait_or(
        "the backlog to reach b",
        Duration::from_secs(30),
        logs,
        || {
            value_of(&on_b.get(&keys[0])).map(|v| v.0) == Some("sync".into())
                && value_of(&on_b.get(&keys[1])).map(|v| v.0) == Some("noreply".into())
        },
    );
    wait("an empty backlog", || {
        stat(&mut client, "repl_backlog") == 0
    });

    // Frozen again, then marked fault: the backlog for it is dropped and writes go on without it.
    b.freeze();
    assert!(matches!(
        client.set(&keys[2], "missed"),
        DataResponse::Error(_)
    ));
    assert_eq!(stat(&mut client, "repl_backlog"), 1);
    let states = [
        (a.addr, NodeState::Active),
        (b.addr, NodeState::Fault),
        (c.addr, NodeState::Active),
    ];
    let snapshot = fake.settle(&states);
    adopted(&[a, c], &snapshot);
    wait("the backlog of the fault replica to be dropped", || {
        stat(&mut client, "repl_backlog") == 0 && stat(&mut client, "repl_backlog_dropped") == 1
    });
    assert!(matches!(
        client.set(&keys[3], "two copies"),
        DataResponse::Stored { .. }
    ));
    assert_eq!(
        value_of(&on_c.get(&keys[3])).map(|v| v.0),
        Some("two copies".into())
    );
    b.thaw();
}

#[test]
fn tombstones_are_collected_only_below_the_gc_horizon() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = FakeManager::start();
    let servers = start_servers(&fake, dir.path(), 1, &["--gc-interval", "0.1", "-gX", "0"]);
    let snapshot = fake.settle(&all_active(&servers));
    adopted(&servers.iter().collect::<Vec<_>>(), &snapshot);
    let mut client = DataClient::connect(servers[0].addr);
    for key in ["old-1", "old-2"] {
        assert!(matches!(client.set(key, "v"), DataResponse::Stored { .. }));
        assert_eq!(
            client.write(key, WriteOp::Delete, "", 0, 0),
            DataResponse::Deleted
        );
    }
    assert_eq!(stat(&mut client, "tombstones"), 2);
    // Horizon 0: garbage collection runs every 0.1 s and must keep them.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(stat(&mut client, "tombstones"), 2);
    assert_eq!(stat(&mut client, "gc_dropped"), 0);

    let horizon = version_at(wall_ms());
    assert!(matches!(
        client.set("new", "v"),
        DataResponse::Stored { .. }
    ));
    assert_eq!(
        client.write("new", WriteOp::Delete, "", 0, 0),
        DataResponse::Deleted
    );
    let snapshot = fake.set_horizon(horizon);
    adopted(&servers.iter().collect::<Vec<_>>(), &snapshot);
    wait("the old tombstones to be collected", || {
        stat(&mut client, "tombstones") == 1 && stat(&mut client, "gc_dropped") == 2
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        stat(&mut client, "tombstones"),
        1,
        "a tombstone above the horizon was collected"
    );
}

/// The two sides of a split manager pair offer different snapshots; a server follows the newer
/// write table whatever the epochs say, and takes a rebalance copy only once it routes with the
/// sender's snapshot or a newer one in that order.
#[test]
fn a_newer_epoch_with_an_older_write_table_is_not_adopted_and_copies_wait_in_that_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = FakeManager::start();
    let servers = start_servers(&fake, dir.path(), 1, &[]);
    let logs = || logs_of(&servers.iter().collect::<Vec<_>>());
    let nodes = all_active(&servers);
    let older = fake.table(&nodes);
    let held = fake.settle(&nodes);
    adopted(&[&servers[0]], &held);
    let addr = servers[0].addr;
    let mut client = DataClient::connect(addr);
    let whs = |client: &mut DataClient| stat(client, "whs_version");
    assert_eq!(whs(&mut client), held.write.version());

    // An older write table under a newer epoch, offered on every keepalive.
    let stale = fake.publish(|s| {
        s.write = older.clone();
        s.read = older.clone();
    });
    assert!(stale.epoch > held.epoch && stale.write.version() < held.write.version());
    let seen = fake.keepalives_of(addr);
    wait_or(
        "two keepalives answered with it",
        Duration::from_secs(10),
        logs,
        || fake.keepalives_of(addr) >= seen + 2,
    );
    assert_eq!(whs(&mut client), held.write.version(), "{}", logs());
    assert_eq!(stat(&mut client, "routing_epoch"), held.epoch);

    let mut peer = PeerConn::open(addr, None);
    let mut copy = |epoch: u64, write: u64, key: &str| {
        let records = vec![record(key, "copied", version_at(wall_ms()), false)];
        peer.call(&ReplicationRequest::Copy {
            epoch,
            write,
            records,
        })
    };
    let (e, w) = (held.epoch, held.write.version());
    // Sent under a newer write table (even with an older epoch): not ready.
    assert!(matches!(
        copy(e - 1, w + 1, "copy-newer-table"),
        ReplicationResponse::NotReady { .. }
    ));
    // Same table, newer epoch: not ready either.
    assert!(matches!(
        copy(e + 1, w, "copy-newer-epoch"),
        ReplicationResponse::NotReady { .. }
    ));
    // The held snapshot, or an older write table under any epoch: applied.
    for (epoch, write, key) in [
        (e, w, "copy-same"),
        (stale.epoch, older.version(), "copy-older"),
    ] {
        assert!(matches!(
            copy(epoch, write, key),
            ReplicationResponse::Ack { applied: 1, .. }
        ));
    }
    assert_eq!(
        value_of(&client.get("copy-same")).map(|v| v.0),
        Some("copied".into())
    );
    assert_eq!(value_of(&client.get("copy-newer-table")), None);
}
