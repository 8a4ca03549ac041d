//! One routing table as the manager keeps it: the attached servers with their states, under a
//! version. The ring itself is not kept here; every process derives it from the node list
//! ([`crate::ring::RoutingTable`]), which is deterministic.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

pub use crate::ring::NodeState;

/// One routing table: the attached servers with their states, under a version.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TableSpec {
    /// Hybrid-logical-clock version; the newer table wins everywhere.
    pub version: u64,
    /// Attached servers, sorted by address, each listed once.
    pub nodes: Vec<(SocketAddr, NodeState)>,
}

impl TableSpec {
    /// The state of `addr` in this table, `None` when it is not attached.
    pub fn state_of(&self, addr: SocketAddr) -> Option<NodeState> {
        self.nodes.iter().find(|(a, _)| *a == addr).map(|(_, s)| *s)
    }

    /// Whether `addr` is attached and active.
    pub fn is_active(&self, addr: SocketAddr) -> bool {
        self.state_of(addr) == Some(NodeState::Active)
    }

    /// Sets the state of `addr`, adding it (in address order) when it is not attached.
    pub fn set(&mut self, addr: SocketAddr, state: NodeState) {
        match self.nodes.iter_mut().find(|(a, _)| *a == addr) {
            Some(entry) => entry.1 = state,
            None => {
                self.nodes.push((addr, state));
                self.nodes.sort_by_key(|(a, _)| *a);
            }
        }
    }

    /// Active servers of this table, in address order.
    pub fn active(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.nodes
            .iter()
            .filter(|(_, s)| *s == NodeState::Active)
            .map(|(a, _)| *a)
    }

    /// Fault servers of this table, in address order.
    pub fn fault(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.nodes
            .iter()
            .filter(|(_, s)| *s == NodeState::Fault)
            .map(|(a, _)| *a)
    }

    /// Same servers in the same states (the versions may differ).
    pub fn same_nodes(&self, other: &TableSpec) -> bool {
        self.nodes == other.nodes
    }

    /// Whether the table is well formed: sorted by address with no address twice. Tables loaded from
    /// disk or received from the partner are checked with this before they are used.
    pub fn is_well_formed(&self) -> bool {
        self.nodes.windows(2).all(|w| w[0].0 < w[1].0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 19800 + n))
    }

    #[test]
    fn set_keeps_address_order_and_one_entry_per_server() {
        let mut t = TableSpec::default();
        t.set(addr(3), NodeState::Active);
        t.set(addr(1), NodeState::Active);
        t.set(addr(3), NodeState::Fault);
        assert_eq!(
            t.nodes,
            vec![(addr(1), NodeState::Active), (addr(3), NodeState::Fault)]
        );
        assert!(t.is_well_formed());
        assert_eq!(t.active().collect::<Vec<_>>(), vec![addr(1)]);
        assert_eq!(t.fault().collect::<Vec<_>>(), vec![addr(3)]);
        assert!(t.is_active(addr(1)) && !t.is_active(addr(3)) && !t.is_active(addr(2)));
        let unsorted = TableSpec {
            version: 1,
            nodes: vec![(addr(2), NodeState::Active), (addr(1), NodeState::Active)],
        };
        assert!(!unsorted.is_well_formed());
    }
}
