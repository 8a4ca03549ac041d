//! The replication backlog: writes a live replica has not acknowledged yet, retried in the
//! background until it does or the manager stops listing it as active.
//!
//! Why it exists: the manager advances the GC horizon on the promise that a delete older than it
//! reached every live copy of its key (cluster-design.md). A write whose replication fails (the
//! replica is slow, restarting, or unreachable for less than the manager's fault detection time)
//! is answered with an error to the client, but it is already on the coordinator, so its replicas
//! must get it eventually; the same holds for `noreply` writes, which nobody waits for.
//!
//! Shape: one queue per peer server on each shard, holding only the newest record per key (a newer
//! write of the key replaces the queued one, since the replica applies newest-wins anyway). A task
//! per shard drains it in batches with exponential backoff (50 ms to 5 s). A peer's queue is
//! dropped as soon as the routing no longer lists the peer as active in either table: a fault peer
//! freezes the horizon and gets the keys back by the copy phase of the `attach` that recovers it.
//!
//! Bounds: [`MAX_RECORDS`] records and [`MAX_BYTES`] bytes per peer. A coordinator refuses a new
//! write to a key whose replicas include a peer with a full queue (before writing anything), so
//! nothing is ever written that could not be delivered; the gateway retries the write, and within
//! seconds the manager marks the peer fault or it catches up.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::shard::Shard;
use crate::ring::{core_of, NodeState};
use crate::rpc::messages::{ReplicaRecord, RoutingSnapshot};
use crate::runtime;

/// Most records queued for one peer.
pub const MAX_RECORDS: usize = 100_000;
/// Most bytes (keys and values) queued for one peer.
pub const MAX_BYTES: usize = 64 << 20;
/// Records per retry call.
const BATCH: usize = 256;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

#[derive(Default)]
struct PeerQueue {
    records: HashMap<Vec<u8>, ReplicaRecord>,
    bytes: usize,
}

impl PeerQueue {
    fn is_full(&self) -> bool {
        self.records.len() >= MAX_RECORDS || self.bytes >= MAX_BYTES
    }

    fn size_of(record: &ReplicaRecord) -> usize {
        record.key.len() + record.value.len() + 48
    }

    fn push(&mut self, record: ReplicaRecord) {
        let size = Self::size_of(&record);
        match self.records.get(&record.key) {
            Some(queued) if queued.version >= record.version => {}
            Some(queued) => {
                self.bytes = self.bytes - Self::size_of(queued) + size;
                self.records.insert(record.key.clone(), record);
            }
            None => {
                self.bytes += size;
                self.records.insert(record.key.clone(), record);
            }
        }
    }

    /// Removes `key` if the queued record is still the one with `version` (a newer one may have
    /// replaced it while the older was in flight).
    fn acknowledged(&mut self, key: &[u8], version: u64) {
        if self.records.get(key).is_some_and(|r| r.version == version) {
            if let Some(record) = self.records.remove(key) {
                self.bytes -= Self::size_of(&record);
            }
        }
    }
}

/// Counters for `Stats`.
#[derive(Clone, Copy, Debug, Default)]
pub struct BacklogCounters {
    /// Records queued now (all peers).
    pub queued: u64,
    /// Writes refused because a replica's queue was full.
    pub refused: u64,
    /// Records dropped because their peer stopped being an active member.
    pub dropped: u64,
}

/// One shard's backlog (a field of the shard's cluster state).
#[derive(Default)]
pub struct Backlog {
    peers: RefCell<HashMap<SocketAddr, PeerQueue>>,
    draining: Cell<bool>,
    refused: Cell<u64>,
    dropped: Cell<u64>,
}

impl Backlog {
    /// The first of `peers` whose queue is full, counting the refusal.
    pub fn full_peer(&self, peers: &[SocketAddr]) -> Option<SocketAddr> {
        let queues = self.peers.borrow();
        let full = peers
            .iter()
            .find(|p| queues.get(p).is_some_and(PeerQueue::is_full))
            .copied();
        if full.is_some() {
            self.refused.set(self.refused.get() + 1);
        }
        full
    }

    pub fn counters(&self) -> BacklogCounters {
        BacklogCounters {
            queued: self
                .peers
                .borrow()
                .values()
                .map(|q| q.records.len() as u64)
                .sum(),
            refused: self.refused.get(),
            dropped: self.dropped.get(),
        }
    }

    fn push(&self, peer: SocketAddr, record: ReplicaRecord) {
        self.peers
            .borrow_mut()
            .entry(peer)
            .or_default()
            .push(record);
    }

    /// Forgets the queues of peers that are no longer active in either table.
    fn forget_departed(&self, routing: &RoutingSnapshot) {
        let mut queues = self.peers.borrow_mut();
        queues.retain(|peer, queue| {
            let live = is_active_member(routing, peer);
            if !live {
                let n = queue.records.len() as u64;
                self.dropped.set(self.dropped.get() + n);
                crate::info!("replication backlog: {peer} is no longer active; {n} records dropped (the copy phase of its recovery resends them)");
            }
            live && !queue.records.is_empty()
        });
    }

    /// Peers with queued records.
    fn waiting_peers(&self) -> Vec<SocketAddr> {
        self.peers.borrow().keys().copied().collect()
    }

    /// Up to [`BATCH`] records queued for `peer`, all owned by one of its shards.
    fn next_batch(
        &self,
        routing: &RoutingSnapshot,
        peer: SocketAddr,
    ) -> Option<(usize, Vec<ReplicaRecord>)> {
        let queues = self.peers.borrow();
        let queue = queues.get(&peer)?;
        let shards = routing.shards_of(&peer);
        let peer_shard = core_of(queue.records.values().next()?.hash, shards);
        let batch: Vec<ReplicaRecord> = queue
            .records
            .values()
            .filter(|r| core_of(r.hash, shards) == peer_shard)
            .take(BATCH)
            .cloned()
            .collect();
        Some((peer_shard, batch))
    }

    fn acknowledged(&self, peer: SocketAddr, batch: &[ReplicaRecord]) {
        if let Some(queue) = self.peers.borrow_mut().get_mut(&peer) {
            for record in batch {
                queue.acknowledged(&record.key, record.version);
            }
        }
    }
}

/// Whether `peer` is active in the write or the read table.
fn is_active_member(routing: &RoutingSnapshot, peer: &SocketAddr) -> bool {
    routing.write.state_of(peer) == Some(NodeState::Active)
        || routing.read.state_of(peer) == Some(NodeState::Active)
}

/// Queues `record` for `peer` and makes sure the shard's drain task runs.
pub(crate) fn enqueue(shard: &Rc<Shard>, peer: SocketAddr, record: ReplicaRecord) {
    let backlog = &shard.cluster.backlog;
    backlog.push(peer, record);
    if !backlog.draining.replace(true) {
        runtime::spawn(drain(shard.clone()));
    }
}

/// Sends queued records until every queue is empty or forgotten. Each peer has its own backoff, so
/// an unreachable peer does not slow the delivery to the others.
async fn drain(shard: Rc<Shard>) {
    let stop = shard.ctx.shutdown_signal();
    let backlog = &shard.cluster.backlog;
    // peer -> (next try, current backoff)
    let mut retry: HashMap<SocketAddr, (Instant, Duration)> = HashMap::new();
    while !stop.is_fired() {
        let routing = shard.routing();
        backlog.forget_departed(&routing);
        let peers = backlog.waiting_peers();
        if peers.is_empty() {
            break;
        }
        retry.retain(|peer, _| peers.contains(peer));
        let now = Instant::now();
        let mut next_wake = now + BACKOFF_MAX;
        let mut sent_any = false;
        for peer in peers {
            let (at, backoff) = *retry
                .entry(peer)
                .or_insert((now + BACKOFF_MIN, BACKOFF_MIN));
            if at > now {
                next_wake = next_wake.min(at);
                continue;
            }
            let Some((peer_shard, batch)) = backlog.next_batch(&routing, peer) else {
                continue;
            };
            let limit = super::replication::WRITE_CALL_TIMEOUT;
            match super::replication::send_records(&shard, peer, peer_shard, &batch, limit).await {
                Ok(()) => {
                    backlog.acknowledged(peer, &batch);
                    retry.insert(peer, (Instant::now(), BACKOFF_MIN));
                    sent_any = true;
                }
                Err(e) => {
                    crate::info!(
                        "replication backlog: {} records for {peer} not delivered yet: {e}",
                        batch.len()
                    );
                    let at = Instant::now() + backoff;
                    retry.insert(peer, (at, (backoff * 2).min(BACKOFF_MAX)));
                    next_wake = next_wake.min(at);
                }
            }
        }
        if !sent_any {
            let pause = next_wake.saturating_duration_since(Instant::now());
            let _ = futures_lite::future::or(
                async {
                    runtime::sleep(pause.max(Duration::from_millis(1))).await;
                },
                stop.wait(),
            )
            .await;
        }
    }
    backlog.draining.set(false);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, version: u64, value_len: usize) -> ReplicaRecord {
        ReplicaRecord {
            hash: crate::ring::key_hash(key.as_bytes()),
            key: key.as_bytes().to_vec(),
            value: vec![b'x'; value_len],
            flags: 0,
            exptime: 0,
            version,
            tombstone: false,
        }
    }

    #[test]
    fn a_queue_keeps_the_newest_record_per_key_and_counts_bytes() {
        let mut q = PeerQueue::default();
        q.push(record("a", 5, 10));
        q.push(record("a", 3, 100));
        assert_eq!(q.records["a".as_bytes()].version, 5);
        assert_eq!(q.bytes, 1 + 10 + 48);
        q.push(record("a", 7, 20));
        assert_eq!(q.bytes, 1 + 20 + 48);
        // An acknowledgement of an older version leaves the newer queued.
        q.acknowledged(b"a", 5);
        assert_eq!(q.records.len(), 1);
        q.acknowledged(b"a", 7);
        assert!(q.records.is_empty());
        assert_eq!(q.bytes, 0);
    }

    #[test]
    fn a_full_queue_refuses_and_departed_peers_are_forgotten() {
        let backlog = Backlog::default();
        let peer: SocketAddr = "10.0.0.1:19800".parse().unwrap();
        let other: SocketAddr = "10.0.0.2:19800".parse().unwrap();
        backlog.push(peer, record("big", 1, MAX_BYTES));
        assert_eq!(backlog.full_peer(&[other, peer]), Some(peer));
        assert_eq!(backlog.full_peer(&[other]), None);
        assert_eq!(backlog.counters().refused, 1);
        assert_eq!(backlog.counters().queued, 1);
        // An empty routing lists nobody: the queue goes, counted as dropped.
        backlog.forget_departed(&RoutingSnapshot::empty());
        assert_eq!(backlog.counters().queued, 0);
        assert_eq!(backlog.counters().dropped, 1);
    }
}
