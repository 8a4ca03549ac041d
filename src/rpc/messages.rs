//! The message enums, one request enum and one response enum per peer pair:
//!
//! - gateway -> server, data path: [`DataRequest`] / [`DataResponse`];
//! - server -> server, replication and rebalance copy: [`ReplicationRequest`] / [`ReplicationResponse`];
//! - server, gateway and kumoctl -> manager: [`ManagerRequest`] / [`ManagerResponse`].
//!
//! Keys and values travel as msgpack binary (`serde_bytes`), never as arrays of integers. Routing
//! tables are [`RoutingTable`]s, serialized as their version and node list.
//! These enums are encoded by name (rmp-serde `to_vec`), so adding a variant at the end does not
//! change the encoding of existing ones.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::cluster::membership::{Rebalance, StatusReport};
use crate::ring::RoutingTable;

/// What a data write does; the value and its metadata travel beside it in [`DataRequest::Write`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    Incr {
        delta: u64,
    },
    Decr {
        delta: u64,
    },
    /// Update only the expiry time.
    Touch,
    Delete,
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
        exptime: u32,
        /// The client will not read the answer: the server may reply before replication completes.
        noreply: bool,
    },
    /// Flush every key after `delay` seconds (0 = now).
    FlushAll {
        delay: u32,
    },
    Stats,
}

/// Server -> gateway answers to [`DataRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataResponse {
    Value {
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        flags: u32,
        version: u64,
    },
    NotFound,
    Stored {
        version: u64,
    },
    NotStored,
    /// CAS mismatch.
    Exists,
    Deleted,
    Number {
        value: u64,
        version: u64,
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
}

/// One record copied to a replica: newest `version` wins on the receiver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

/// Server -> server requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicationRequest {
    /// Apply these records (write replication or rebalance copy), newest version wins.
    Replicate { records: Vec<ReplicaRecord> },
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
}

/// Everything a server or gateway needs to route: both tables, each server's shard count (so a
/// client can compute a key's core on it), and the rebalance in progress, if any.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingSnapshot {
    /// Stamped by the manager on every change (a hybrid-logical-clock value): a receiver adopts a
    /// snapshot whose epoch is newer than its own. Table versions alone do not do, because switching
    /// reads to the write table at the end of a rebalance changes no table version.
    pub epoch: u64,
    pub write: RoutingTable,
    pub read: RoutingTable,
    /// Shard (core) count of every known server.
    pub shards: Vec<(SocketAddr, u16)>,
    pub rebalance: Option<Rebalance>,
}

impl RoutingSnapshot {
    /// An empty snapshot (epoch 0): what a process has before it heard from a manager.
    pub fn empty() -> Self {
        RoutingSnapshot {
            epoch: 0,
            write: RoutingTable::empty(),
            read: RoutingTable::empty(),
            shards: Vec::new(),
            rebalance: None,
        }
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
    /// address, stream port for rebalance copies, shard count, and the routing version it has.
    /// The manager answers with [`ManagerResponse::Routing`] when it has a newer one.
    KeepAlive {
        addr: SocketAddr,
        stream_port: u16,
        shards: u16,
        routing_version: u64,
    },
    /// A gateway (or tool) asks for the routing snapshot if newer than `known_version`.
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
}

/// Manager answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ManagerResponse {
    Ok,
    /// The caller already has the newest routing.
    UpToDate,
    Routing(RoutingSnapshot),
    Status(StatusReport),
    AutoReplace(bool),
    Error(String),
}
