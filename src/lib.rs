//! kumofs-rs: a scalable, highly available distributed key-value store that speaks the memcached
//! protocols, re-implemented in Rust on a thread-per-core runtime.
//!
//! # Processes
//!
//! - `kumo-manager` (1, or a pair): membership and the routing tables. Never on the data path.
//! - `kumo-server` (many): stores data in [`storage`], coordinates and replicates writes.
//! - `kumo-gateway` (one per application host): speaks [`protocol`] to memcached clients and routes
//!   every request to the server that owns its key.
//!
//! # Subsystems
//!
//! | module | owns |
//! |---|---|
//! | [`protocol`] | memcached text, meta, binary and async-binary wire formats; no I/O |
//! | [`storage`] | the log-structured hash file, one instance per core |
//! | [`ring`] | consistent hashing: key hash to servers and to cores |
//! | [`rpc`] | msgpack internal RPC framing and messages |
//! | [`cluster`] | sans-IO cluster logic: hybrid logical clock, membership, rebalance |
//! | [`runtime`] | glommio executors, shards, listeners |
//! | [`manager`], [`server`], [`gateway`] | the three daemons |

pub mod cli;
pub mod cluster;
pub mod gateway;
pub mod manager;
pub mod protocol;
pub mod ring;
pub mod rpc;
pub mod runtime;
pub mod server;
pub mod storage;
