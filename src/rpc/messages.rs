//! The message enums, one request enum and one response enum per peer pair:
//!
//! - gateway -> server, data path: [`DataRequest`] / [`DataResponse`];
//! - server -> server, replication and rebalance copy: [`ReplicationRequest`] / [`ReplicationResponse`];
//! - server, gateway, kumoctl and the partner manager -> manager: [`ManagerRequest`] /
//!   [`ManagerResponse`].
//!
//! Keys and values travel as msgpack binary (`serde_bytes`), never as arrays of integers. Routing
//! tables are [`RoutingTable`]s, serialized as their version and node list.
//! These enums are encoded by name (rmp-serde `to_vec`), so adding a variant at the end does not
//! change the encoding of existing ones.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::cluster::membership::{Command, Phase, Rebalance, StatusReport};
use crate::cluster::pair::PartnerView;
use crate::cluster::state::ClusterState;
use crate::ring::RoutingTable;

/// What a data write does; the value and its metadata travel beside it in [`DataRequest::Write`].
/// Every op is applied by the key's coordinator in one step, so the requests of one connection
/// take effect in the order they were sent (a read-modify-write never needs a second round trip).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    Set,
    Add,
    Replace,
    Append,
    Prepend,
    /// Store only if the current version (CAS token) is `version`.
    Cas {
        version: u64,
    },
    /// Answered with [`DataResponse::Number`] (or `NotFound`, `Exists`, `NonNumeric`).
    Incr(Arith),
    Decr(Arith),
    /// Update only the expiry time.
    Touch,
    Delete,
    /// Append only if the current version is `version` (binary append with a CAS).
    AppendCas {
        version: u64,
    },
    PrependCas {
        version: u64,
    },
    /// Delete only if the current version is `version` (binary and meta delete with a CAS).
    DeleteCas {
        version: u64,
    },
    /// Set a new expiry and answer the value as it was read, with its new version and expiry
    /// (`gat`, binary GAT and TOUCH, meta `mg T`): [`DataResponse::Value`] or `NotFound`. A past
    /// expiry answers the value once; then the key reads as missing.
    GetAndTouch,
}

/// An incr or decr (memcached's `incr`/`decr`, binary INCREMENT/DECREMENT, meta `ma`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arith {
    pub delta: u64,
    /// Apply only if the current version is this one (0: whatever it is); otherwise `Exists`.
    pub cas: u64,
    /// Create a missing key with this value (binary initial, meta `N`/`J`), expiring at the
    /// write's `exptime`. The CAS is not compared on creation (as memcached does).
    pub initial: Option<u64>,
    /// A new expiry, absolute unix seconds (0 = never), set with the result (meta `ma T`).
    pub touch: Option<u32>,
}

impl Arith {
    /// A plain incr/decr by `delta`.
    pub fn by(delta: u64) -> Arith {
        Arith {
            delta,
            ..Arith::default()
        }
    }
}

/// Gateway -> server requests. `hash` is the key's 64-bit hash, computed once by the gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataRequest {
    Get {
        hash: u64,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    Write {
        hash: u64,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        op: WriteOp,
        /// Empty for ops that carry no data (incr, decr, touch, delete).
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        flags: u32,
        /// Absolute unix seconds, 0 = never: the expiry of what the write stores (of a counter an
        /// incr/decr creates; the new expiry of a touch).
        exptime: u32,
        /// The client will not read the answer: the server may reply before replication completes.
        noreply: bool,
    },
    /// Flush every key after `delay` seconds (0 = now).
    FlushAll {
        delay: u32,
    },
    Stats,
    /// A get sent to the key's write coordinator while a rebalance moves the key (its first live
    /// owner under the read table is another server): answered like `Get`, except that a key of
    /// which this server holds no record at all (not even a tombstone) is answered
    /// [`DataResponse::Absent`], and the gateway then reads the read table's owner. So a get
    /// reads what the writes before it on its connection wrote, even before they were replicated.
    GetNewest {
        hash: u64,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
}

/// Server -> gateway answers to [`DataRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataResponse {
    Value {
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        flags: u32,
        version: u64,
        /// Absolute unix seconds, 0 = never (the gateway shows the time left, meta `t`).
        exptime: u32,
    },
    NotFound,
    Stored {
        version: u64,
    },
    NotStored,
    /// CAS mismatch.
    Exists,
    Deleted,
    /// The result of an incr/decr, the new version and the counter's expiry (as in `Value`).
    Number {
        value: u64,
        version: u64,
        exptime: u32,
    },
    /// incr/decr on a value that is not a decimal number.
    NonNumeric,
    Touched,
    Flushed,
    Stats(Vec<(String, String)>),
    /// This server does not own the key under its current routing table: refresh and retry.
    NotOwner {
        routing_version: u64,
    },
    Error(String),
    /// Answer to [`DataRequest::GetNewest`]: this server holds no record of the key.
    Absent,
}

/// One record copied to a replica: newest `version` wins on the receiver.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaRecord {
    pub hash: u64,
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub flags: u32,
    pub exptime: u32,
    pub version: u64,
    /// A delete: the record is a versioned tombstone and `value` is empty.
    pub tombstone: bool,
}

/// Server -> server requests. Write replication travels on the data port (`-l`), rebalance copies
/// on the stream port (`-L`); both ports accept every variant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicationRequest {
    /// Apply these records (write replication or rebalance copy), newest version wins.
    Replicate { records: Vec<ReplicaRecord> },
    /// A batch of a rebalance copy, sent under the routing snapshot with epoch `epoch` and write
    /// table version `write`: the receiver applies it (newest version wins) only once it routes
    /// with a snapshot at least as new in the order of [`RoutingSnapshot::supersedes`], so that
    /// anything it must do on joining (dropping records below the GC horizon) is done before
    /// copies land; until then it answers [`ReplicationResponse::NotReady`] and the sender retries.
    Copy {
        epoch: u64,
        write: u64,
        records: Vec<ReplicaRecord>,
    },
    /// First round of a cluster-wide `flush_all` (and of a joining server's catch-up): take in
    /// `observe` (so later versions are newer), answer [`ReplicationResponse::Clock`].
    Clock { observe: u64 },
    /// Second round of a cluster-wide `flush_all`: every record older than `version` reads as
    /// missing on every shard. Answered with [`ReplicationResponse::Flushed`].
    Flush { version: u64 },
    /// A key's new coordinator, during a rebalance's copy phase, asks an owner of the key under
    /// the read table for its record before a conditional write of a key it holds no record of
    /// (see `server::pull`). Answered with [`ReplicationResponse::Pulled`], or `Error` when the
    /// receiver does not own the key under its read table.
    Pull {
        hash: u64,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
}

/// Server -> server answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicationResponse {
    /// All records were applied or were older than what the replica holds.
    Ack {
        applied: u32,
        stale: u32,
    },
    Error(String),
    /// A `Copy` arrived before the receiver adopted the sender's routing (it has `epoch`).
    NotReady {
        epoch: u64,
    },
    /// The receiver's newest version over all its shards (after observing the request's) and its
    /// highest flush version.
    Clock {
        now: u64,
        flush: u64,
    },
    Flushed,
    /// Answer to [`ReplicationRequest::Pull`]: the key's record as the receiver holds it (a value
    /// or a tombstone, with its version, flags and expiry), or `None` when it holds none (or only
    /// an expired or flushed one).
    Pulled {
        record: Option<ReplicaRecord>,
    },
}

/// Everything a server or gateway needs to route: both tables, each server's shard count (so a
/// client can compute a key's core on it), and the rebalance in progress, if any.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingSnapshot {
    /// Stamped by the manager on every change (a hybrid-logical-clock value). A receiver adopts a
    /// snapshot with a newer write table, or the same write table under a newer epoch (see
    /// [`RoutingSnapshot::supersedes`]). Table versions alone do not do, because switching reads to
    /// the write table at the end of a rebalance changes no table version.
    pub epoch: u64,
    pub write: RoutingTable,
    pub read: RoutingTable,
    /// Shard (core) count of every known server.
    pub shards: Vec<(SocketAddr, u16)>,
    /// Stream port (`-L`) of every known server: rebalance copies are sent there.
    pub stream_ports: Vec<(SocketAddr, u16)>,
    pub rebalance: Option<Rebalance>,
    /// Tombstones whose version is below this may be collected: the manager advances it only while
    /// every attached server is active and no rebalance is running, so every live copy of a key has
    /// seen a delete older than it (0 = collect nothing).
    pub gc_horizon: u64,
    /// A backup every server must make once (servers remember the ids they did).
    pub backup: Option<BackupOrder>,
}

/// `kumoctl backup`: every server writes a consistent copy of its data named with `suffix`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupOrder {
    pub id: u64,
    pub suffix: String,
}

/// Where one server stands with a backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackupState {
    Pending,
    /// Written: the backup's path on the server and the records it holds.
    Done {
        path: String,
        records: u64,
    },
    Failed(String),
}

/// The state of a backup on every server that takes part.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupReport {
    pub id: u64,
    pub suffix: String,
    pub servers: Vec<(SocketAddr, BackupState)>,
}

/// What a server tells a manager, in every keepalive, about one manager it sends keepalives to.
/// msgpack array of three: `[addr, silent_ms, write_version]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagerContact {
    /// The manager as the server names it (`-m`, `-p`): its listen address.
    pub addr: SocketAddr,
    /// Milliseconds since that manager last answered a keepalive of this server, or, if it never
    /// did, since the server started asking it.
    pub silent_ms: u64,
    /// The write table version of the routing that manager offered in its last answer (the one the
    /// server held if it answered `UpToDate`); `None` before its first answer.
    pub write_version: Option<u64>,
}

/// How far a server is in the current rebalance phase (sent with its keepalives).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseProgress {
    pub target: u64,
    pub phase: Phase,
    /// Records scanned so far and in all (all shards).
    pub done: u64,
    pub total: u64,
    /// Records sent to their new owners so far.
    pub sent: u64,
}

impl RoutingSnapshot {
    /// An empty snapshot (epoch 0): what a process has before it heard from a manager.
    pub fn empty() -> Self {
        RoutingSnapshot {
            epoch: 0,
            write: RoutingTable::empty(),
            read: RoutingTable::empty(),
            shards: Vec::new(),
            stream_ports: Vec::new(),
            rebalance: None,
            gc_horizon: 0,
            backup: None,
        }
    }

    /// Whether reads and writes follow different tables (a rebalance runs, or an attach without
    /// one). Compares versions and node lists, never the rings built from them: every replicated
    /// write and every gateway batch asks.
    pub fn tables_differ(&self) -> bool {
        self.read.version() != self.write.version() || self.read.nodes() != self.write.nodes()
    }

    /// Whether a server or gateway holding `held` adopts `self`: a newer write table wins, and
    /// under the same write table the newer epoch. The epoch alone is not enough when the two
    /// managers of a pair both drive (they are cut off from each other and servers lost the first
    /// one, see `cluster::pair`): the side whose state changed last (its GC horizon moved, say) has
    /// the newest epoch while the other side attached or detached servers. Following the epoch, servers and gateways would switch between the two
    /// sides' tables on every change, writing under one and reading under the other, and a
    /// rebalance on either side could never finish. Ordered by write table first they follow the
    /// newest membership decision, which is also the routing the pair keeps when it joins its
    /// states again (see `cluster::state`).
    pub fn supersedes(&self, held: &RoutingSnapshot) -> bool {
        self.precedence() > held.precedence()
    }

    /// The order of [`RoutingSnapshot::supersedes`]: write table version, then epoch.
    pub fn precedence(&self) -> (u64, u64) {
        (self.write.version(), self.epoch)
    }

    /// Shard count of `server` (1 when unknown).
    pub fn shards_of(&self, server: &SocketAddr) -> usize {
        self.shards
            .iter()
            .find(|(addr, _)| addr == server)
            .map_or(1, |(_, n)| usize::from((*n).max(1)))
    }
}

/// Requests to a manager (from servers, gateways, kumoctl and the partner manager).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ManagerRequest {
    /// A server announces itself and says it is alive (sent every keepalive interval): its data
    /// address, stream port for rebalance copies, shard count, and the routing epoch it has.
    /// The manager answers with [`ManagerResponse::Routing`] when its epoch is another one.
    KeepAlive {
        addr: SocketAddr,
        stream_port: u16,
        shards: u16,
        routing_version: u64,
        /// Progress of the rebalance phase this server is running, if any.
        progress: Option<PhaseProgress>,
        /// How recently every manager this server sends keepalives to answered it, so that the
        /// follower of a pair cut off from its partner can tell whether servers still hear it
        /// (see `cluster::pair`). Added after the first release: a keepalive without it decodes
        /// with an empty list (a manager then has no news about its partner from that server).
        #[serde(default)]
        managers: Vec<ManagerContact>,
    },
    /// A gateway (or tool) asks for the routing snapshot unless it holds epoch `known_version`
    /// (the asker decides whether to adopt it: [`RoutingSnapshot::supersedes`]).
    GetRouting {
        known_version: u64,
    },
    /// kumoctl status.
    Status,
    Attach {
        replace: bool,
    },
    Detach {
        replace: bool,
    },
    Replace {
        full: bool,
    },
    Backup {
        suffix: String,
    },
    SetAutoReplace(bool),
    /// A server finished the current phase of rebalance `target`.
    PhaseDone {
        addr: SocketAddr,
        target: u64,
    },
    /// kumoctl polls a backup it started (answered with [`ManagerResponse::Backup`]).
    BackupStatus {
        id: u64,
    },
    /// A server finished (or failed) backup `id`.
    BackupDone {
        addr: SocketAddr,
        id: u64,
        state: BackupState,
    },
    /// Manager -> its partner (`-p`), every sync interval and after every change: the sender's
    /// state and the servers it heard from. Answered with [`ManagerResponse::PartnerState`]; a
    /// manager whose partner is not `from` answers `Error("unknown partner ...")`.
    PartnerSync {
        from: SocketAddr,
        state: Box<ClusterState>,
        view: PartnerView,
    },
    /// Manager -> its partner: a follower forwards a command to the driving manager, which runs
    /// it and answers as it would answer kumoctl.
    PartnerCommand {
        from: SocketAddr,
        command: Command,
    },
}

/// Manager answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ManagerResponse {
    Ok,
    /// The caller holds this manager's epoch already.
    UpToDate,
    Routing(RoutingSnapshot),
    Status(Box<StatusReport>),
    AutoReplace(bool),
    Error(String),
    /// Answer to `Backup` and `BackupStatus`.
    Backup(BackupReport),
    /// Answer to `PartnerSync`: the receiver's state (after joining the sender's) and view.
    PartnerState {
        state: Box<ClusterState>,
        view: PartnerView,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::NodeState;

    fn snapshot(write: u64, epoch: u64) -> RoutingSnapshot {
        let node = SocketAddr::from(([127, 0, 0, 1], 19800));
        let table = RoutingTable::new(write, vec![(node, NodeState::Active)]).unwrap();
        RoutingSnapshot {
            epoch,
            write: table.clone(),
            read: table,
            ..RoutingSnapshot::empty()
        }
    }

    /// A keepalive from a server that predates `managers` still decodes (with no news in it).
    #[test]
    fn a_keepalive_without_manager_contacts_decodes() {
        #[derive(Serialize)]
        enum Older {
            KeepAlive {
                addr: SocketAddr,
                stream_port: u16,
                shards: u16,
                routing_version: u64,
                progress: Option<PhaseProgress>,
            },
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], 19800));
        let older = Older::KeepAlive {
            addr,
            stream_port: 19900,
            shards: 2,
            routing_version: 7,
            progress: None,
        };
        let bytes = rmp_serde::to_vec(&older).unwrap();
        let decoded: ManagerRequest = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(
            decoded,
            ManagerRequest::KeepAlive {
                addr,
                stream_port: 19900,
                shards: 2,
                routing_version: 7,
                progress: None,
                managers: Vec::new(),
            }
        );
    }

    #[test]
    fn a_newer_write_table_supersedes_whatever_the_epoch() {
        let held = snapshot(10, 100);
        // The other side of a split pair: an older write table under a newer epoch.
        assert!(!snapshot(9, 200).supersedes(&held));
        assert!(snapshot(11, 50).supersedes(&held));
        // Same write table: the epoch decides (the end of a rebalance changes no table version).
        assert!(snapshot(10, 101).supersedes(&held));
        assert!(!snapshot(10, 100).supersedes(&held));
        assert!(!snapshot(10, 99).supersedes(&held));
        assert!(snapshot(1, 1).supersedes(&RoutingSnapshot::empty()));
    }
}
