//! Versioned routing tables as the manager publishes them, and the write/read pair used during a
//! rebalance.

use super::consistent::{Assignment, Ring, RingError};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;

/// A server is named by the address of its RPC listener (IPv4 or IPv6).
pub type NodeId = SocketAddr;

/// Whether a server of the ring is serving. A fault server keeps its ring positions (see [`Ring`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeState {
    Active,
    Fault,
}

/// The serialized form of a [`RoutingTable`]: `{ version, nodes: [(addr, state)] }`. The ring is not
/// sent; every receiver derives it, which is deterministic.
#[derive(Serialize, Deserialize)]
struct RoutingTableWire {
    version: u64,
    nodes: Vec<(SocketAddr, NodeState)>,
}

/// One version of the cluster's membership with its ring (derived once, shared by clones).
///
/// `version` orders tables: a receiver keeps the newest it has seen. Cloning is cheap (the ring is
/// behind an `Arc`), so every shard can hold its own copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RoutingTableWire", into = "RoutingTableWire")]
pub struct RoutingTable {
    version: u64,
    ring: Arc<Ring>,
}

impl TryFrom<RoutingTableWire> for RoutingTable {
    type Error = RingError;
    fn try_from(wire: RoutingTableWire) -> Result<Self, RingError> {
        RoutingTable::new(wire.version, wire.nodes)
    }
}

impl From<RoutingTable> for RoutingTableWire {
    fn from(table: RoutingTable) -> Self {
        RoutingTableWire {
            version: table.version,
            nodes: table.ring.nodes().to_vec(),
        }
    }
}

impl RoutingTable {
    /// Builds a table; fails on a duplicate address or too many nodes.
    pub fn new(version: u64, nodes: Vec<(SocketAddr, NodeState)>) -> Result<Self, RingError> {
        Ok(RoutingTable {
            version,
            ring: Arc::new(Ring::new(&nodes)?),
        })
    }

    /// The empty table every process starts with (version 0, no servers).
    pub fn empty() -> Self {
        RoutingTable {
            version: 0,
            ring: Arc::new(Ring::default_empty()),
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn nodes(&self) -> &[(SocketAddr, NodeState)] {
        self.ring.nodes()
    }

    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// The state of `node`, or `None` if it is not in the table.
    pub fn state_of(&self, node: &SocketAddr) -> Option<NodeState> {
        self.nodes()
            .iter()
            .find(|(a, _)| a == node)
            .map(|(_, s)| *s)
    }

    /// Live servers of `hash` (see [`Ring::assign`]).
    pub fn assign(&self, hash: u64) -> Assignment {
        self.ring.assign(hash)
    }

    /// The coordinator of `hash` (see [`Ring::coordinator`]).
    pub fn coordinator(&self, hash: u64) -> Option<SocketAddr> {
        self.ring.coordinator(hash)
    }

    /// Whether `node` is one of the servers assigned `hash`, fault or not (a replica checks this before
    /// it applies a replicated write, like kumofs).
    pub fn is_assigned(&self, hash: u64, node: &SocketAddr) -> bool {
        self.ring.assigned(hash).contains(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes() -> Vec<(SocketAddr, NodeState)> {
        vec![
            ("127.0.0.1:19800".parse().unwrap(), NodeState::Active),
            ("[::1]:19801".parse().unwrap(), NodeState::Fault),
            ("10.1.2.3:19800".parse().unwrap(), NodeState::Active),
        ]
    }

    #[test]
    fn msgpack_round_trip_rebuilds_the_ring() {
        let table = RoutingTable::new(42, nodes()).unwrap();
        let bytes = rmp_serde::to_vec(&table).unwrap();
        let back: RoutingTable = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, table);
        assert_eq!(back.version(), 42);
        for h in [0u64, 99, u64::MAX] {
            assert_eq!(back.assign(h), table.assign(h));
        }
    }

    #[test]
    fn decoding_a_table_with_duplicates_fails_cleanly() {
        let mut dup = nodes();
        dup.push(dup[0]);
        let wire = RoutingTableWire {
            version: 1,
            nodes: dup,
        };
        let bytes = rmp_serde::to_vec(&wire).unwrap();
        assert!(rmp_serde::from_slice::<RoutingTable>(&bytes).is_err());
        assert!(rmp_serde::from_slice::<RoutingTable>(&[0xc1, 0x00]).is_err());
    }

    #[test]
    fn a_key_moved_by_a_new_table_is_written_by_its_new_owner_and_read_from_the_old() {
        let (read, write) = (
            RoutingTable::new(1, nodes()[..2].to_vec()).unwrap(),
            RoutingTable::new(2, nodes()).unwrap(),
        );
        assert_eq!(read.state_of(&nodes()[1].0), Some(NodeState::Fault));
        assert_eq!(read.state_of(&nodes()[2].0), None);
        assert_eq!(RoutingTable::empty().coordinator(5), None);
        let moved = (0..10_000u64)
            .map(|i| crate::ring::key_hash(&i.to_le_bytes()))
            .find(|&h| write.coordinator(h) == Some(nodes()[2].0))
            .unwrap();
        assert_eq!(read.coordinator(moved), Some(nodes()[0].0));
        assert!(write.is_assigned(moved, &nodes()[2].0));
        assert!(!read.is_assigned(moved, &nodes()[2].0));
        assert!(read.is_assigned(moved, &nodes()[1].0));
    }
}
