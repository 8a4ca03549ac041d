//! The message enums, one request enum and one response enum per peer pair:
//!
//! - gateway -> server, data path: [`DataRequest`] / [`DataResponse`];
//! - server -> server, replication and rebalance copy: [`ReplicationRequest`] / [`ReplicationResponse`];
//! - server, gateway and kumoctl -> manager: [`ManagerRequest`] / [`ManagerResponse`].
//!
//! Keys and values travel as msgpack binary (`serde_bytes`), never as arrays of integers. Routing
//! tables are an opaque msgpack blob here; the ring module owns their type.
//! These enums are encoded by name (rmp-serde `to_vec`), so adding a variant at the end does not
//! change the encoding of existing ones.

use serde::{Deserialize, Serialize};

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

/// A server's state as the manager sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerState {
    NotAttached,
    Active,
    Fault,
}

/// One server line of `kumoctl status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    pub addr: String,
    pub state: ServerState,
}

/// What the manager reports for `kumoctl status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub routing_version: u64,
    pub servers: Vec<ServerStatus>,
    pub auto_replace: bool,
    /// A rebalance is running.
    pub replacing: bool,
}

/// Requests to a manager (from servers, gateways, kumoctl and the partner manager).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ManagerRequest {
    /// A server announces itself (its data address, and its stream port for rebalance copies).
    Register {
        addr: String,
        stream_port: u16,
    },
    /// Periodic liveness report of a server, with the routing version it uses.
    KeepAlive {
        addr: String,
        routing_version: u64,
    },
    GetRouting,
    /// Manager -> partner manager or server/gateway: a newer routing table (opaque msgpack blob).
    RoutingPush {
        version: u64,
        #[serde(with = "serde_bytes")]
        table: Vec<u8>,
    },
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
}

/// Manager answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ManagerResponse {
    Ok,
    Registered,
    Routing {
        version: u64,
        #[serde(with = "serde_bytes")]
        table: Vec<u8>,
    },
    Status(ClusterStatus),
    Error(String),
}
