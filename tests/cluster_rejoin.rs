//! A server that was away comes back with its old data and brings back nothing that was deleted or
//! flushed meanwhile (real kumo-server processes, scripted manager):
//! - marked fault and recovered: the copy phase brings it every newer version and tombstone;
//! - detached while the GC horizon advanced (tombstones collected elsewhere): it drops its records
//!   below the horizon before serving, and the copy phase refills it;
//! - down during a `flush_all`: it adopts the live servers' flush version.

mod cluster_support;
mod server_support;
mod support;

use std::net::SocketAddr;

use cluster_support::{logs_of, wait, wait_adopted, FakeManager, ServerProc};
use kumofs::cluster::clock::{version_at, wall_ms};
use kumofs::ring::{key_hash, NodeState};
use kumofs::rpc::messages::{DataRequest, DataResponse, RoutingSnapshot, WriteOp};
use server_support::{value_of, DataClient};

const ARGS: &[&str] = &["--cpus", "0-1", "--gc-interval", "0.1", "-gX", "0"];

struct Three {
    fake: FakeManager,
    servers: Vec<ServerProc>,
    _dir: tempfile::TempDir,
}

impl Three {
    fn start() -> Three {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = FakeManager::start();
        let servers: Vec<ServerProc> = ["a", "b", "c"]
            .iter()
            .map(|n| ServerProc::start(n, dir.path(), fake.addr, ARGS))
            .collect();
        for s in &servers {
            fake.wait_registered(s.addr);
        }
        let three = Three {
            fake,
            servers,
            _dir: dir,
        };
        let snapshot = three.fake.settle(&three.states([true, true, true]));
        three.adopted(&snapshot, &[0, 1, 2]);
        three
    }

    fn states(&self, active: [bool; 3]) -> Vec<(SocketAddr, NodeState)> {
        self.servers
            .iter()
            .zip(active)
            .map(|(s, a)| {
                (
                    s.addr,
                    if a {
                        NodeState::Active
                    } else {
                        NodeState::Fault
                    },
                )
            })
            .collect()
    }

    fn logs(&self) -> String {
        logs_of(&self.servers.iter().collect::<Vec<_>>())
    }

    fn adopted(&self, snapshot: &RoutingSnapshot, which: &[usize]) {
        for &i in which {
            wait_adopted(self.servers[i].addr, snapshot.epoch, || self.logs());
        }
    }

    /// Writes through the key's coordinator under `snapshot`.
    fn write(
        &self,
        snapshot: &RoutingSnapshot,
        key: &str,
        op: WriteOp,
        value: &str,
    ) -> DataResponse {
        let coordinator = snapshot
            .write
            .coordinator(key_hash(key.as_bytes()))
            .expect("a coordinator");
        DataClient::connect(coordinator).write(key, op, value, 0, 0)
    }

    fn get(&self, i: usize, key: &str) -> Option<String> {
        value_of(&DataClient::connect(self.servers[i].addr).get(key)).map(|v| v.0)
    }
}

fn keys(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

/// Fills the cluster, takes `c` away, deletes and rewrites keys meanwhile; returns the snapshot.
fn change_while_c_is_away(three: &mut Three) -> RoutingSnapshot {
    let snapshot = three
        .fake
        .state
        .lock()
        .expect("lock")
        .snapshot
        .clone()
        .expect("snapshot");
    for key in keys("k", 0..40) {
        assert!(matches!(
            three.write(&snapshot, &key, WriteOp::Set, "v1"),
            DataResponse::Stored { .. }
        ));
    }
    three.servers[2].kill();
    let snapshot = three.fake.settle(&three.states([true, true, false]));
    three.adopted(&snapshot, &[0, 1]);
    for key in keys("k", 0..10) {
        assert_eq!(
            three.write(&snapshot, &key, WriteOp::Delete, ""),
            DataResponse::Deleted
        );
    }
    for key in keys("k", 10..20) {
        assert!(matches!(
            three.write(&snapshot, &key, WriteOp::Set, "v2"),
            DataResponse::Stored { .. }
        ));
    }
    for key in keys("n", 0..10) {
        assert!(matches!(
            three.write(&snapshot, &key, WriteOp::Set, "new"),
            DataResponse::Stored { .. }
        ));
    }
    snapshot
}

/// What every server must answer once `c` is back and the rebalance is over.
fn check_everything(three: &Three) {
    for i in 0..3 {
        let name = &three.servers[i].name;
        for key in keys("k", 0..10) {
            assert_eq!(
                three.get(i, &key),
                None,
                "{key} came back on {name}\n{}",
                three.logs()
            );
        }
        for key in keys("k", 10..20) {
            assert_eq!(three.get(i, &key).as_deref(), Some("v2"), "{key} on {name}");
        }
        for key in keys("k", 20..40) {
            assert_eq!(three.get(i, &key).as_deref(), Some("v1"), "{key} on {name}");
        }
        for key in keys("n", 0..10) {
            assert_eq!(
                three.get(i, &key).as_deref(),
                Some("new"),
                "{key} on {name}"
            );
        }
    }
}

#[test]
fn a_recovered_server_gets_every_newer_version_and_tombstone_from_the_copy_phase() {
    let mut three = Three::start();
    change_while_c_is_away(&mut three);
    three.servers[2].restart();
    three.fake.wait_registered(three.servers[2].addr);
    // `attach`: c is active for writes at once, reads stay on a and b until the copy is done.
    let logs = || three.logs();
    three
        .fake
        .rebalance(&three.states([true, true, true]), logs);
    check_everything(&three);
    // The horizon never moved: nothing was dropped on rejoin, the tombstones did the work.
    assert!(!three.servers[2]
        .logs()
        .contains("rejoin: the GC horizon advanced"));
}

#[test]
fn a_server_detached_while_the_horizon_advanced_drops_its_old_records_on_rejoin() {
    let mut three = Three::start();
    change_while_c_is_away(&mut three);
    // Detached; with every remaining server active the horizon advances and the tombstones of
    // the deletes c missed are collected.
    let (a, b) = (three.servers[0].addr, three.servers[1].addr);
    let two = [(a, NodeState::Active), (b, NodeState::Active)];
    three.fake.settle(&two);
    let horizon = version_at(wall_ms());
    let snapshot = three.fake.set_horizon(horizon);
    three.adopted(&snapshot, &[0, 1]);
    for i in 0..2 {
        let mut client = DataClient::connect(three.servers[i].addr);
        wait("the tombstones to be collected", || {
            client.stats()["tombstones"] == "0"
        });
    }
    three.servers[2].restart();
    three.fake.wait_registered(three.servers[2].addr);
    let logs = || three.logs();
    three
        .fake
        .rebalance(&three.states([true, true, true]), logs);
    check_everything(&three);
    assert!(three.servers[2]
        .logs()
        .contains("rejoin: the GC horizon advanced"));
    let saved = std::fs::read_to_string(three.servers[2].store.join("kumo-server.horizon"))
        .expect("horizon file");
    assert_eq!(saved.trim(), horizon.to_string());
}

#[test]
fn a_server_down_during_flush_all_adopts_the_flush_when_it_returns() {
    let mut three = Three::start();
    let snapshot = three
        .fake
        .state
        .lock()
        .expect("lock")
        .snapshot
        .clone()
        .expect("snapshot");
    for key in keys("f", 0..20) {
        assert!(matches!(
            three.write(&snapshot, &key, WriteOp::Set, "before"),
            DataResponse::Stored { .. }
        ));
    }
    three.servers[2].kill();
    let snapshot = three.fake.settle(&three.states([true, true, false]));
    three.adopted(&snapshot, &[0, 1]);
    let mut a = DataClient::connect(three.servers[0].addr);
    assert_eq!(
        a.call(&DataRequest::FlushAll { delay: 0 }),
        DataResponse::Flushed
    );
    for i in 0..2 {
        assert_eq!(three.get(i, "f0"), None);
    }
    assert!(matches!(
        three.write(&snapshot, "after", WriteOp::Set, "x"),
        DataResponse::Stored { .. }
    ));
    let flush = a.stats()["flush_version"].clone();
    assert_ne!(flush, "0");
    assert_eq!(
        DataClient::connect(three.servers[1].addr).stats()["flush_version"],
        flush
    );

    three.servers[2].restart();
    three.fake.wait_registered(three.servers[2].addr);
    let logs = || three.logs();
    three
        .fake
        .rebalance(&three.states([true, true, true]), logs);
    let mut c = DataClient::connect(three.servers[2].addr);
    assert_eq!(c.stats()["flush_version"], flush);
    for key in keys("f", 0..20) {
        assert_eq!(three.get(2, &key), None, "{key} survived the flush on c");
    }
    assert_eq!(three.get(2, "after").as_deref(), Some("x"));
    // And a flush survives a restart.
    three.servers[0].restart();
    let current = three
        .fake
        .state
        .lock()
        .expect("lock")
        .snapshot
        .clone()
        .expect("snapshot");
    three.adopted(&current, &[0]);
    assert_eq!(three.get(0, "after").as_deref(), Some("x"));
    assert_eq!(
        DataClient::connect(three.servers[0].addr).stats()["flush_version"],
        flush
    );
    assert_eq!(three.get(0, "f1"), None);
}
