//! The cluster state a manager keeps, shares with its partner and writes to disk: the routing tables
//! with the rebalance in progress, the garbage-collection horizon, the backup in progress, the
//! auto-replace switch and the servers it knows.
//!
//! # Syncing a pair: a join, component by component
//!
//! Two managers exchange their whole state and each keeps the *join* of both, which is the same
//! whichever side computes it and however often (commutative, associative, idempotent), so the pair
//! converges after any interleaving of lost, repeated and late messages:
//!
//! | component | join |
//! |---|---|
//! | routing (write table, read table, rebalance, its notes) | one unit: the greater `(write.version, stamp, origin)` wins |
//! | `gc_horizon` | the maximum |
//! | backup | the greater id wins; for the same id, each server's state moves Pending < Failed < Done |
//! | auto-replace | the greater `(stamp, value)` wins |
//! | known servers | per address, the greater `(stamp, info)` wins |
//!
//! Routing is one unit on purpose: the read table, the write table and the rebalance are only
//! consistent with each other, never mixed from two managers. Normally only one manager (the
//! driver, see [`super::pair`]) changes routing, so the unit just travels from it to the other.
//!
//! `epoch` versions the whole state (it is the routing snapshot's epoch): a manager stamps a new one
//! from its clock whenever its state changes, and after a join that equals the received state it
//! takes the greater of the two epochs, so two managers with the same state serve the same epoch.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::rebalance::{Rebalance, RebalanceRun};
use super::table::TableSpec;
use crate::ring::{RingError, RoutingTable, MAX_NODES};
use crate::rpc::messages::{BackupOrder, BackupReport, BackupState, RoutingSnapshot};

/// What a server tells the managers about itself in its keepalives; every client needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Shards (cores) the server runs: a client computes a key's core from it.
    pub shards: u16,
    /// Port of the server's stream listener (`-L`), where rebalance copies go.
    pub stream_port: u16,
}

/// A server the managers know, with the version of what they know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownServer {
    pub addr: SocketAddr,
    pub info: ServerInfo,
    pub stamp: u64,
}

/// The routing decisions, ordered and synced as one unit (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RoutingState {
    /// Where writes go (kumofs's whs).
    pub write: TableSpec,
    /// Where reads go (rhs); equal to `write` outside a rebalance.
    pub read: TableSpec,
    pub rebalance: Option<Rebalance>,
    pub run: Option<RebalanceRun>,
    /// Version of the last decision about routing.
    pub stamp: u64,
    /// The manager that made it (breaks ties between two managers' stamps).
    pub origin: Option<SocketAddr>,
}

impl RoutingState {
    /// Whether `self` wins over `other` in a join: the newer write table, then the later decision,
    /// then the manager's address. Two different units never tie in practice (one manager never
    /// issues a stamp twice); if they do, their encodings decide, so the join stays a join.
    fn newer_than(&self, other: &RoutingState) -> bool {
        let key = |r: &RoutingState| (r.write.version, r.stamp, r.origin);
        match key(self).cmp(&key(other)) {
            std::cmp::Ordering::Equal if self != other => {
                let bytes = |r: &RoutingState| serde_json::to_vec(r).unwrap_or_default();
                bytes(self) > bytes(other)
            }
            order => order == std::cmp::Ordering::Greater,
        }
    }

    /// Whether reads and writes follow the same table and nothing is being moved.
    pub fn is_settled(&self) -> bool {
        self.rebalance.is_none() && self.write == self.read
    }
}

/// A value with the version of its last change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Stamped<T> {
    pub value: T,
    pub stamp: u64,
}

/// Everything a manager keeps, shares with its partner and persists.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClusterState {
    /// Version of the whole state; the routing snapshot's epoch.
    pub epoch: u64,
    pub routing: RoutingState,
    /// Tombstones below this version may be collected (see cluster-design.md); never goes back.
    pub gc_horizon: u64,
    /// The last backup ordered, with every server's result so far.
    pub backup: Option<BackupReport>,
    pub auto_replace: Stamped<bool>,
    /// Servers that ever sent a keepalive, sorted by address.
    pub servers: Vec<KnownServer>,
}

impl ClusterState {
    /// Equal in everything but the epoch.
    pub fn same_content(&self, other: &ClusterState) -> bool {
        self.routing == other.routing
            && self.gc_horizon == other.gc_horizon
            && self.backup == other.backup
            && self.auto_replace == other.auto_replace
            && self.servers == other.servers
    }

    /// The join of two states (see the module docs); the epoch is left as `self`'s.
    pub fn join(&self, other: &ClusterState) -> ClusterState {
        let routing = if other.routing.newer_than(&self.routing) {
            other.routing.clone()
        } else {
            self.routing.clone()
        };
        let auto_replace = if (other.auto_replace.stamp, other.auto_replace.value)
            > (self.auto_replace.stamp, self.auto_replace.value)
        {
            other.auto_replace
        } else {
            self.auto_replace
        };
        ClusterState {
            epoch: self.epoch,
            routing,
            gc_horizon: self.gc_horizon.max(other.gc_horizon),
            backup: join_backup(self.backup.as_ref(), other.backup.as_ref()),
            auto_replace,
            servers: join_servers(&self.servers, &other.servers),
        }
    }

    /// What the manager knows about `addr`.
    pub fn server(&self, addr: SocketAddr) -> Option<&KnownServer> {
        self.servers.iter().find(|s| s.addr == addr)
    }

    /// Records `info` for `addr` under `stamp`; returns whether it was new or different.
    pub fn learn_server(&mut self, addr: SocketAddr, info: ServerInfo, stamp: u64) -> bool {
        match self.servers.binary_search_by_key(&addr, |s| s.addr) {
            Ok(i) if self.servers[i].info == info => false,
            Ok(i) => {
                self.servers[i].info = info;
                self.servers[i].stamp = stamp;
                true
            }
            Err(i) => {
                self.servers.insert(i, KnownServer { addr, info, stamp });
                true
            }
        }
    }

    /// The order servers must carry out, while some server has not finished it.
    pub fn backup_order(&self) -> Option<BackupOrder> {
        let report = self.backup.as_ref()?;
        let running = report
            .servers
            .iter()
            .any(|(_, s)| *s == BackupState::Pending);
        running.then(|| BackupOrder {
            id: report.id,
            suffix: report.suffix.clone(),
        })
    }

    /// The routing snapshot servers and gateways receive: both tables as rings, every known
    /// server's shard count and stream port, the rebalance, the horizon and the running backup.
    pub fn snapshot(&self) -> Result<RoutingSnapshot, RingError> {
        let routing = &self.routing;
        Ok(RoutingSnapshot {
            epoch: self.epoch,
            write: RoutingTable::new(routing.write.version, routing.write.nodes.clone())?,
            read: RoutingTable::new(routing.read.version, routing.read.nodes.clone())?,
            shards: self
                .servers
                .iter()
                .map(|s| (s.addr, s.info.shards))
                .collect(),
            stream_ports: self
                .servers
                .iter()
                .map(|s| (s.addr, s.info.stream_port))
                .collect(),
            rebalance: routing.rebalance.clone(),
            gc_horizon: self.gc_horizon,
            backup: self.backup_order(),
        })
    }

    /// Checks what a file or the partner gave us before it is used: tables sorted with no address
    /// twice and small enough to become rings, servers sorted, a rebalance that names servers.
    pub fn validate(&self) -> Result<(), String> {
        for (name, table) in [("write", &self.routing.write), ("read", &self.routing.read)] {
            if !table.is_well_formed() {
                return Err(format!(
                    "{name} table is not sorted or lists a server twice"
                ));
            }
            // With no address twice, the size is the only thing that could stop a ring being
            // built (checked without building one: this runs on every pair sync).
            if table.nodes.len() > MAX_NODES {
                return Err(format!(
                    "{name} table has {} servers, at most {MAX_NODES} allowed",
                    table.nodes.len()
                ));
            }
        }
        if !self.servers.windows(2).all(|w| w[0].addr < w[1].addr) {
            return Err("server list is not sorted or lists a server twice".into());
        }
        if let Some(report) = &self.backup {
            let mut addrs: Vec<_> = report.servers.iter().map(|(a, _)| *a).collect();
            addrs.sort();
            addrs.dedup();
            if addrs.len() != report.servers.len() {
                return Err("backup report lists a server twice".into());
            }
        }
        if self.routing.rebalance.is_some() != self.routing.run.is_some() {
            return Err("rebalance without its notes, or notes without a rebalance".into());
        }
        Ok(())
    }
}

/// Order of a server's backup results: Pending < Failed < Done; equal ranks by their text, so the
/// join is the same on both managers.
fn backup_rank(state: &BackupState) -> (u8, String) {
    match state {
        BackupState::Pending => (0, String::new()),
        BackupState::Failed(why) => (1, why.clone()),
        BackupState::Done { path, records } => (2, format!("{path}\0{records:020}")),
    }
}

fn join_backup(a: Option<&BackupReport>, b: Option<&BackupReport>) -> Option<BackupReport> {
    match (a, b) {
        (None, None) => None,
        (Some(x), None) | (None, Some(x)) => Some(x.clone()),
        (Some(a), Some(b)) if a.id != b.id => Some(if a.id > b.id { a } else { b }.clone()),
        (Some(a), Some(b)) => {
            let mut joined = a.clone();
            for (addr, theirs) in &b.servers {
                match joined.servers.iter_mut().find(|(x, _)| x == addr) {
                    Some((_, mine)) => {
                        if backup_rank(theirs) > backup_rank(mine) {
                            *mine = theirs.clone();
                        }
                    }
                    None => joined.servers.push((*addr, theirs.clone())),
                }
            }
            joined.servers.sort_by_key(|(a, _)| *a);
            Some(joined)
        }
    }
}

fn join_servers(a: &[KnownServer], b: &[KnownServer]) -> Vec<KnownServer> {
    let mut out: Vec<KnownServer> = a.to_vec();
    for theirs in b {
        match out.binary_search_by_key(&theirs.addr, |s| s.addr) {
            Ok(i) => {
                if (theirs.stamp, theirs.info) > (out[i].stamp, out[i].info) {
                    out[i] = theirs.clone();
                }
            }
            Err(i) => out.insert(i, theirs.clone()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::table::NodeState;
    use proptest::prelude::*;

    fn addr(n: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 19800 + n))
    }

    fn arb_state() -> impl Strategy<Value = ClusterState> {
        let routing = (0u64..4, 0u64..4, 0u16..3, 1u16..4, any::<bool>()).prop_map(
            |(wv, stamp, origin, n, fault)| {
                let mut write = TableSpec {
                    version: wv,
                    nodes: (1..=n).map(|i| (addr(i), NodeState::Active)).collect(),
                };
                if fault {
                    write.set(addr(1), NodeState::Fault);
                }
                RoutingState {
                    read: write.clone(),
                    write,
                    stamp,
                    origin: (origin > 0).then(|| SocketAddr::from(([10, 0, 0, 1], origin))),
                    ..RoutingState::default()
                }
            },
        );
        let backup = proptest::option::of((1u64..3, proptest::collection::vec(0u8..4, 2)))
            .prop_map(|b| {
                b.map(|(id, states)| BackupReport {
                    id,
                    suffix: "s".into(),
                    servers: states
                        .iter()
                        .enumerate()
                        .map(|(i, s)| {
                            let state = match s {
                                0 => BackupState::Pending,
                                1 => BackupState::Failed("x".into()),
                                2 => BackupState::Failed("y".into()),
                                _ => BackupState::Done {
                                    path: "p".into(),
                                    records: 1,
                                },
                            };
                            (addr(i as u16 + 1), state)
                        })
                        .collect(),
                })
            });
        let servers =
            proptest::collection::btree_map(1u16..4, (1u16..3, 0u64..3), 0..3).prop_map(|m| {
                m.into_iter()
                    .map(|(a, (shards, stamp))| KnownServer {
                        addr: addr(a),
                        info: ServerInfo {
                            shards,
                            stream_port: 1,
                        },
                        stamp,
                    })
                    .collect::<Vec<_>>()
            });
        (routing, 0u64..5, backup, any::<bool>(), 0u64..3, servers).prop_map(
            |(routing, gc_horizon, backup, on, stamp, servers)| ClusterState {
                epoch: 0,
                routing,
                gc_horizon,
                backup,
                auto_replace: Stamped { value: on, stamp },
                servers,
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// The join is commutative, associative and idempotent, so a pair converges whatever order
        /// its syncs arrive in.
        #[test]
        fn join_is_a_semilattice(a in arb_state(), b in arb_state(), c in arb_state()) {
            prop_assert!(a.join(&b).same_content(&b.join(&a)));
            prop_assert!(a.join(&b).join(&c).same_content(&a.join(&b.join(&c))));
            prop_assert!(a.join(&a).same_content(&a));
            let ab = a.join(&b);
            prop_assert!(ab.join(&b).same_content(&ab));
            prop_assert!(ab.gc_horizon >= a.gc_horizon.max(b.gc_horizon));
            prop_assert!(ab.routing.write.version >= a.routing.write.version);
        }
    }

    #[test]
    fn validate_refuses_malformed_input() {
        let mut s = ClusterState::default();
        assert!(s.validate().is_ok());
        s.routing.write.nodes = vec![(addr(2), NodeState::Active), (addr(1), NodeState::Active)];
        assert!(s.validate().unwrap_err().contains("write table"));
        s.routing.write.nodes.clear();
        s.servers = vec![
            KnownServer {
                addr: addr(1),
                info: ServerInfo {
                    shards: 1,
                    stream_port: 2,
                },
                stamp: 1,
            };
            2
        ];
        assert!(s.validate().unwrap_err().contains("server list"));
    }

    #[test]
    fn backup_order_only_while_a_server_is_pending() {
        let mut s = ClusterState {
            backup: Some(BackupReport {
                id: 7,
                suffix: "x".into(),
                servers: vec![(addr(1), BackupState::Pending)],
            }),
            ..ClusterState::default()
        };
        assert_eq!(s.backup_order().map(|o| o.id), Some(7));
        s.backup.as_mut().unwrap().servers[0].1 = BackupState::Failed("disk full".into());
        assert_eq!(s.backup_order(), None);
    }
}
