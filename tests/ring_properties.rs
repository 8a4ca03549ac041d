//! Property tests of the ring on random clusters: assignment size and distinctness, coordinator rule,
//! fault skipping, and order independence.

use kumofs::ring::{NodeState, Ring, RoutingTable, REPLICAS};
use proptest::prelude::*;
use std::net::SocketAddr;

fn cluster() -> impl Strategy<Value = Vec<(SocketAddr, NodeState)>> {
    proptest::collection::btree_map((any::<[u8; 4]>(), 1u16..), any::<bool>(), 0..9).prop_map(|m| {
        m.into_iter()
            .map(|((ip, port), fault)| {
                let state = if fault {
                    NodeState::Fault
                } else {
                    NodeState::Active
                };
                (SocketAddr::from((ip, port)), state)
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn assignment_rules_hold(nodes in cluster(), hashes in proptest::collection::vec(any::<u64>(), 1..50)) {
        let ring = Ring::new(&nodes).unwrap();
        let mut shuffled = nodes.clone();
        shuffled.reverse();
        let other = Ring::new(&shuffled).unwrap();
        for h in hashes {
            let all = ring.assigned(h);
            prop_assert_eq!(all.len(), REPLICAS.min(nodes.len()));
            let mut distinct = all.to_vec();
            distinct.sort();
            distinct.dedup();
            prop_assert_eq!(distinct.len(), all.len());
            let again = other.assigned(h);
            prop_assert_eq!(all.as_slice(), again.as_slice());

            let state = |a: &SocketAddr| nodes.iter().find(|(n, _)| n == a).map(|(_, s)| *s);
            let live = ring.assign(h);
            let expect: Vec<SocketAddr> =
                all.iter().copied().filter(|a| state(a) == Some(NodeState::Active)).collect();
            prop_assert_eq!(live.as_slice(), &expect[..]);
            prop_assert_eq!(ring.coordinator(h), expect.first().copied());
            for (i, a) in live.indexes().iter().zip(live.iter()) {
                prop_assert_eq!(ring.nodes()[usize::from(*i)].0, *a);
            }
        }
    }

    #[test]
    fn tables_round_trip_through_msgpack(nodes in cluster(), version in any::<u64>()) {
        let table = RoutingTable::new(version, nodes).unwrap();
        let bytes = rmp_serde::to_vec(&table).unwrap();
        let back: RoutingTable = rmp_serde::from_slice(&bytes).unwrap();
        prop_assert_eq!(back, table);
    }

    #[test]
    fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = rmp_serde::from_slice::<RoutingTable>(&bytes);
    }
}
