//! The ring itself: sorted virtual-node positions and the clockwise walk that assigns a key's servers.

use super::hash::vnode_position;
use super::routing::NodeState;
use std::fmt;
use std::net::SocketAddr;

/// Copies of every key: the coordinator plus two replicas.
pub const REPLICAS: usize = 3;

/// Virtual nodes per server. kumofs used 128, which leaves the busiest of 20 servers owning about 25%
/// more than the mean; the spread of a server's share shrinks as 1/sqrt(vnodes), and with 1024 the
/// busiest of 3..20 servers owns less than 10% above the mean (measured exactly in
/// `tests/ring_balance.rs`: worst 1.099). A ring of 60 servers is then 61,440 entries (about 600 KiB),
/// still one binary search per lookup.
pub const VNODES_PER_SERVER: u32 = 1024;

/// Most servers a ring may hold (node indexes are stored as u16).
pub const MAX_NODES: usize = 4096;

/// Why a node list cannot become a ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RingError {
    /// The same address appears twice.
    DuplicateNode(SocketAddr),
    /// More than [`MAX_NODES`] servers.
    TooManyNodes(usize),
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RingError::DuplicateNode(a) => write!(f, "node {a} is listed twice"),
            RingError::TooManyNodes(n) => write!(f, "{n} nodes, at most {MAX_NODES} allowed"),
        }
    }
}

impl std::error::Error for RingError {}

/// Up to [`REPLICAS`] distinct servers of a key, in ring order (first = coordinator candidate).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Assignment {
    addrs: [SocketAddr; REPLICAS],
    indexes: [u16; REPLICAS],
    len: u8,
}

impl Assignment {
    fn empty() -> Self {
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        Assignment {
            addrs: [unspecified; REPLICAS],
            indexes: [0; REPLICAS],
            len: 0,
        }
    }

    fn push(&mut self, index: u16, addr: SocketAddr) {
        let at = usize::from(self.len);
        if at < REPLICAS {
            self.addrs[at] = addr;
            self.indexes[at] = index;
            self.len += 1;
        }
    }

    /// The servers' addresses, in ring order.
    pub fn as_slice(&self) -> &[SocketAddr] {
        &self.addrs[..usize::from(self.len)]
    }

    /// The servers' indexes into [`Ring::nodes`], in ring order (handy to index per-server connections).
    pub fn indexes(&self) -> &[u16] {
        &self.indexes[..usize::from(self.len)]
    }

    /// Whether `addr` is one of the servers.
    pub fn contains(&self, addr: &SocketAddr) -> bool {
        self.as_slice().contains(addr)
    }
}

impl std::ops::Deref for Assignment {
    type Target = [SocketAddr];
    fn deref(&self) -> &[SocketAddr] {
        self.as_slice()
    }
}

impl fmt::Debug for Assignment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// A consistent-hashing ring built from a node list. Immutable: a change of membership builds a new one.
///
/// Every request of a gateway and every write of a server looks a key up, so a lookup is two array
/// reads instead of a walk: `buckets` narrows the search for the first virtual node at or after the
/// hash to the (usually one or two) virtual nodes sharing its top bits, and each [`VNode`] holds,
/// next to its position, the distinct servers met walking clockwise from it. So a lookup touches
/// two cache lines, one of the bucket table and one of the virtual nodes (profiles of the set
/// benchmark showed the lookup's cache misses; with successors in a table of their own it was
/// three).
#[derive(Clone, PartialEq, Eq)]
pub struct Ring {
    nodes: Vec<(SocketAddr, NodeState)>,
    /// The virtual nodes, sorted by position.
    vnodes: Vec<VNode>,
    /// `buckets[b]`: index of the first virtual node whose position's top `bucket_bits` bits are
    /// >= `b`; one more entry than buckets, the last being `vnodes.len()`.
    buckets: Vec<u32>,
    bucket_bits: u32,
}

/// One virtual node: 16 bytes, so four share a cache line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct VNode {
    position: u64,
    /// Index into [`Ring::nodes`] of the server owning it.
    owner: u16,
    /// The first `min(REPLICAS, nodes)` distinct node indexes clockwise from here (`owner` first).
    successors: [u16; REPLICAS],
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("nodes", &self.nodes)
            .field("vnodes", &self.vnodes.len())
            .finish()
    }
}

impl Ring {
    /// Builds the ring. The placement depends on the addresses only, not on the order of `nodes`
    /// (equal positions, a 2^-64 event, are ordered by address).
    pub fn new(nodes: &[(SocketAddr, NodeState)]) -> Result<Ring, RingError> {
        if nodes.len() > MAX_NODES {
            return Err(RingError::TooManyNodes(nodes.len()));
        }
        let mut sorted: Vec<&(SocketAddr, NodeState)> = nodes.iter().collect();
        sorted.sort_by_key(|(addr, _)| *addr);
        for pair in sorted.windows(2) {
            if pair[0].0 == pair[1].0 {
                return Err(RingError::DuplicateNode(pair[0].0));
            }
        }
        let mut entries: Vec<(u64, SocketAddr, u16)> =
            Vec::with_capacity(nodes.len() * VNODES_PER_SERVER as usize);
        for (index, (addr, _)) in nodes.iter().enumerate() {
            // MAX_NODES < u16::MAX, checked above.
            let index = index as u16;
            for vnode in 0..VNODES_PER_SERVER {
                entries.push((vnode_position(addr, vnode), *addr, index));
            }
        }
        entries.sort_unstable_by_key(|&(pos, addr, _)| (pos, addr));
        let positions: Vec<u64> = entries.iter().map(|e| e.0).collect();
        let owners: Vec<u16> = entries.iter().map(|e| e.2).collect();
        let successors = successors_of(&owners, REPLICAS.min(nodes.len()));
        let (buckets, bucket_bits) = buckets_of(&positions);
        let vnodes = positions
            .iter()
            .zip(&owners)
            .zip(successors)
            .map(|((&position, &owner), successors)| VNode {
                position,
                owner,
                successors,
            })
            .collect();
        Ok(Ring {
            nodes: nodes.to_vec(),
            vnodes,
            buckets,
            bucket_bits,
        })
    }

    /// A ring without servers: every lookup is empty.
    pub fn default_empty() -> Ring {
        Ring {
            nodes: Vec::new(),
            vnodes: Vec::new(),
            buckets: vec![0, 0],
            bucket_bits: 1,
        }
    }

    /// The node list the ring was built from, in its original order.
    pub fn nodes(&self) -> &[(SocketAddr, NodeState)] {
        &self.nodes
    }

    /// Number of virtual nodes on the ring.
    pub fn vnode_count(&self) -> usize {
        self.vnodes.len()
    }

    /// The sorted virtual nodes as (position, node index), e.g. for `kumohash dump`.
    pub fn vnodes(&self) -> impl Iterator<Item = (u64, usize)> + '_ {
        self.vnodes
            .iter()
            .map(|v| (v.position, usize::from(v.owner)))
    }

    /// The first [`REPLICAS`] distinct servers clockwise from `hash`, fault ones included (kumofs's
    /// `EACH_ASSIGN`). The first virtual node at or after `hash` owns it, wrapping past the top.
    pub fn assigned(&self, hash: u64) -> Assignment {
        self.walk(hash)
    }

    /// The live servers among [`Ring::assigned`]: fault servers are skipped, not replaced.
    pub fn assign(&self, hash: u64) -> Assignment {
        let all = self.assigned(hash);
        let mut live = Assignment::empty();
        for (&index, &addr) in all.indexes().iter().zip(all.as_slice()) {
            if self.nodes[usize::from(index)].1 == NodeState::Active {
                live.push(index, addr);
            }
        }
        live
    }

    /// The server that coordinates writes of `hash`: the first live one of its assigned servers.
    pub fn coordinator(&self, hash: u64) -> Option<SocketAddr> {
        self.assign(hash).first().copied()
    }

    fn walk(&self, hash: u64) -> Assignment {
        let mut out = Assignment::empty();
        let total = self.vnodes.len();
        if total == 0 {
            return out;
        }
        // The first position >= hash lies in hash's bucket, or is the first of a later one.
        let bucket = (hash >> (64 - self.bucket_bits)) as usize;
        let (lo, hi) = (
            self.buckets[bucket] as usize,
            self.buckets[bucket + 1] as usize,
        );
        let mut start = lo + self.vnodes[lo..hi].partition_point(|v| v.position < hash);
        if start == total {
            start = 0;
        }
        let wanted = REPLICAS.min(self.nodes.len());
        for &owner in &self.vnodes[start].successors[..wanted] {
            out.push(owner, self.nodes[usize::from(owner)].0);
        }
        out
    }

    /// The clockwise walk [`VNode::successors`] replaces, kept to test it against.
    #[cfg(test)]
    fn walk_slowly(&self, hash: u64) -> Assignment {
        let mut out = Assignment::empty();
        let total = self.vnodes.len();
        if total == 0 {
            return out;
        }
        let wanted = REPLICAS.min(self.nodes.len());
        let start = self.vnodes.partition_point(|v| v.position < hash);
        for step in 0..total {
            let owner = self.vnodes[(start + step) % total].owner;
            if !out.indexes().contains(&owner) {
                out.push(owner, self.nodes[usize::from(owner)].0);
                if out.as_slice().len() == wanted {
                    break;
                }
            }
        }
        out
    }
}

/// For every virtual node, the first `wanted` distinct owners clockwise from it (see
/// [`VNode::successors`]); `wanted` is at most the number of distinct owners.
fn successors_of(owners: &[u16], wanted: usize) -> Vec<[u16; REPLICAS]> {
    let total = owners.len();
    (0..total)
        .map(|start| {
            let mut found = [0u16; REPLICAS];
            let mut len = 0;
            for step in 0..total {
                let owner = owners[(start + step) % total];
                if !found[..len].contains(&owner) {
                    found[len] = owner;
                    len += 1;
                    if len == wanted {
                        break;
                    }
                }
            }
            found
        })
        .collect()
}

/// The bucket table of sorted `positions` (see [`Ring::buckets`]): about one bucket per position,
/// at least two.
fn buckets_of(positions: &[u64]) -> (Vec<u32>, u32) {
    let bits = positions
        .len()
        .next_power_of_two()
        .trailing_zeros()
        .clamp(1, 24);
    let count = 1usize << bits;
    let mut buckets = Vec::with_capacity(count + 1);
    let mut at = 0;
    for bucket in 0..count as u64 {
        let floor = bucket << (64 - bits);
        while at < positions.len() && positions[at] < floor {
            at += 1;
        }
        // At most MAX_NODES * VNODES_PER_SERVER (4 Mi) positions: fits a u32.
        buckets.push(at as u32);
    }
    buckets.push(positions.len() as u32);
    (buckets, bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 19800 + i))
    }

    fn active(n: u16) -> Vec<(SocketAddr, NodeState)> {
        (0..n).map(|i| (addr(i), NodeState::Active)).collect()
    }

    #[test]
    fn empty_ring_assigns_nothing() {
        let ring = Ring::new(&[]).unwrap();
        assert!(ring.assigned(7).is_empty());
        assert_eq!(ring.coordinator(7), None);
    }

    #[test]
    fn small_rings_assign_every_node_once() {
        for n in 1..=3u16 {
            let ring = Ring::new(&active(n)).unwrap();
            for h in [0, 1, u64::MAX, 1 << 63] {
                let a = ring.assigned(h);
                assert_eq!(a.len(), usize::from(n));
                let mut sorted = a.to_vec();
                sorted.sort();
                sorted.dedup();
                assert_eq!(sorted.len(), usize::from(n));
            }
        }
    }

    #[test]
    fn first_vnode_at_or_after_hash_owns_it_and_wraps() {
        let ring = Ring::new(&active(5)).unwrap();
        let (pos, owner) = ring.vnodes().nth(10).unwrap();
        assert_eq!(ring.assigned(pos)[0], addr(owner as u16));
        let (first_pos, first_owner) = ring.vnodes().next().unwrap();
        let (last_pos, _) = ring.vnodes().last().unwrap();
        assert_eq!(ring.assigned(first_pos)[0], addr(first_owner as u16));
        if last_pos < u64::MAX {
            assert_eq!(ring.assigned(last_pos + 1)[0], addr(first_owner as u16));
        }
    }

    #[test]
    fn duplicates_and_oversize_are_rejected() {
        let mut nodes = active(3);
        nodes.push((addr(1), NodeState::Fault));
        assert_eq!(Ring::new(&nodes), Err(RingError::DuplicateNode(addr(1))));
        let many: Vec<_> = (0..=MAX_NODES as u32)
            .map(|i| {
                (
                    SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 1)),
                    NodeState::Active,
                )
            })
            .collect();
        assert_eq!(
            Ring::new(&many),
            Err(RingError::TooManyNodes(MAX_NODES + 1))
        );
    }

    #[test]
    fn the_tables_give_the_walk_of_the_ring() {
        for n in [1u16, 2, 3, 4, 7, 20] {
            let ring = Ring::new(&active(n)).unwrap();
            let mut probes: Vec<u64> = vec![0, 1, u64::MAX, u64::MAX - 1, 1 << 63];
            for (pos, _) in ring.vnodes().step_by(7) {
                probes.extend([pos, pos.wrapping_add(1), pos.wrapping_sub(1)]);
            }
            probes.extend((0..5000u64).map(|i| crate::ring::key_hash(&i.to_le_bytes())));
            for h in probes {
                assert_eq!(ring.walk(h), ring.walk_slowly(h), "{n} nodes, hash {h:#x}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn any_hash_on_any_ring_walks_the_same(n in 1u16..12, hashes in proptest::collection::vec(proptest::num::u64::ANY, 64)) {
            let ring = Ring::new(&active(n)).unwrap();
            for h in hashes {
                proptest::prop_assert_eq!(ring.walk(h), ring.walk_slowly(h));
            }
        }
    }

    #[test]
    fn fault_nodes_keep_their_place_and_are_skipped() {
        let mut nodes = active(6);
        let ring = Ring::new(&nodes).unwrap();
        nodes[2].1 = NodeState::Fault;
        let degraded = Ring::new(&nodes).unwrap();
        for i in 0..2000u64 {
            let h = crate::ring::key_hash(&i.to_le_bytes());
            assert_eq!(ring.assigned(h), degraded.assigned(h));
            let live = degraded.assign(h);
            let expect: Vec<_> = ring
                .assigned(h)
                .iter()
                .copied()
                .filter(|a| *a != addr(2))
                .collect();
            assert_eq!(live.as_slice(), &expect[..]);
            assert_eq!(degraded.coordinator(h), expect.first().copied());
        }
    }
}
