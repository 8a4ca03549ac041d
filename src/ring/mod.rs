//! Consistent hashing: which servers hold a key, and which core of each server owns it.
//!
//! One 64-bit hash of the key ([`key_hash`]) does both jobs. Its value is the key's position on the
//! ring, where every server owns [`VNODES_PER_SERVER`] virtual nodes; the key belongs to the first
//! [`REPLICAS`] distinct servers found clockwise from that position ([`Ring::assigned`]). The same hash,
//! remixed, picks the core that owns the key inside each of those servers ([`core_of`]), so a request can be
//! sent straight to the owning core.
//!
//! Like kumofs, a server marked [`NodeState::Fault`] keeps its virtual nodes: the keys it held are not
//! handed to a fourth server, they just have fewer live copies until the server is detached (the ring is
//! rebuilt without it) or recovered. [`Ring::assign`] gives the live servers only, [`Ring::coordinator`]
//! the first of them, which stamps versions and replicates writes.
//!
//! The manager publishes versioned [`RoutingTable`]s; during a rebalance writes follow the new table and
//! reads the old one (kumofs's whs/rhs, carried together in [`crate::rpc::messages::RoutingSnapshot`]).
//! Everything here is pure and deterministic: the same
//! node list gives the same placement in every process, whatever the order of the list.

mod consistent;
mod hash;
mod routing;

pub use consistent::{Assignment, Ring, RingError, MAX_NODES, REPLICAS, VNODES_PER_SERVER};
pub use hash::{core_of, key_hash, vnode_position};
pub use routing::{NodeId, NodeState, RoutingTable};
