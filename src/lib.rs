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
//! # Threads
//!
//! ```text
//!  kumo-gateway                         kumo-server (one per host, many hosts)
//!  +--------------------------+         +--------------------------------------+
//!  | shard 0 (CPU 0)          |  TCP,   | shard 0 (CPU 0): engine shard-0,     |
//!  |  client conns, router,   |-------->|  clock, routing copy, its conns      |
//!  |  a pipe per server shard |  one    |            ^  mesh (bounded          |
//!  | shard 1 (CPU 1) ...      |  conn   |            v  channels)              |
//!  +--------------------------+  per    | shard 1 (CPU 1): engine shard-1 ...  |
//!                                shard  +--------------------------------------+
//! ```
//!
//! Every server and gateway runs one pinned glommio executor per CPU ([`runtime`]); a shard owns
//! its connections and, in a server, its storage engine; nothing is shared between shards, and work
//! for another core crosses the mesh as a message. A key's 64-bit hash picks its three servers on
//! the [`ring`] and, independently, its core on each (`ring::core_of`); a gateway's connection
//! to a server names the server core it wants in its first frame, so a request lands on the core
//! that owns its key. Between processes of one host the connections are Unix sockets rather
//! than loopback TCP (`runtime::net`, "Local connections").
//!
//! # The path of a set
//!
//! 1. The gateway shard that accepted the client connection decodes `set` ([`protocol`]), finds
//!    the key's coordinator (first live server of its three) and queues the request on the pipe to
//!    that server's owning core; all requests read in one executor turn leave in one write.
//! 2. The server core ([`server::data`]) checks it coordinates the key, stamps a version above the
//!    clock and the stored version, appends the record to its engine and hands it to the
//!    replication queues (`server::fanout`), one per (peer server, peer core).
//! 3. A queue's flusher sends everything queued as one `Replicate` call; the replica core decodes
//!    the batch in place and applies it newest-version-wins ([`storage`]'s batch apply).
//! 4. When the last replica of the write acknowledged, the queue answers the gateway's request
//!    (no task per write); the gateway writes `STORED` with every other reply of that client read.
//!
//! A get takes step 1 to one live owner and is answered inline by that core from its engine.
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

// The docs describe the internals too (module docs link to private items): `make doc` builds
// them with --document-private-items.
#![allow(rustdoc::private_intra_doc_links)]

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
