//! The server's part of an online rebalance ("replace"), one phase at a time, on every shard.
//!
//! While the manager's snapshot says `Copying`, writes already follow the new (write) table and reads
//! the old (read) one. Each shard then walks its records (values and tombstones) in 256 chunks of the
//! engine's tag space, yielding between chunks so clients keep being served. For every key whose
//! first live owner under the read table is this server (so exactly one server sends each key), it
//! sends the record to the write-table owners that are not read-table owners (to every other write
//! owner for a `full` replace), batched per (peer, shard) as [`ReplicationRequest::Replicate`]. The
//! receivers apply newest-version-wins, so a copy never overwrites a write that arrived meanwhile.
//!
//! In the `Dropping` phase reads follow the new table; each shard removes the keys this server is not
//! assigned under the write table, then writes its index snapshot so the drop survives a restart.
//!
//! Shard 0 runs a phase on all shards and reports `PhaseDone` (see [`super::manager_link`]).
//!
//! [`ReplicationRequest::Replicate`]: crate::rpc::messages::ReplicationRequest::Replicate

use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;

use super::shard::Shard;
use crate::cluster::membership::Phase;
use crate::ring::{core_of, key_hash};
use crate::rpc::messages::{ReplicaRecord, RoutingSnapshot};

/// Chunks the tag space is walked in (each is one synchronous engine pass).
const CHUNKS: u32 = 256;
/// Records per copy request.
const BATCH: usize = 256;

/// Runs the current phase of `snapshot`'s rebalance on this shard.
pub(crate) async fn run_phase(shard: &Rc<Shard>, snapshot: &RoutingSnapshot) -> Result<(), String> {
    let Some(rebalance) = &snapshot.rebalance else {
        return Ok(());
    };
    match rebalance.phase {
        Phase::Copying => copy(shard, snapshot, rebalance.full).await,
        Phase::Dropping => drop_unowned(shard, snapshot).await,
    }
}

/// Where this server must copy the record of `hash` during a copy phase.
pub fn copy_targets(
    snapshot: &RoutingSnapshot,
    hash: u64,
    me: SocketAddr,
    full: bool,
) -> Vec<SocketAddr> {
    if snapshot.read.coordinator(hash) != Some(me) {
        return Vec::new();
    }
    let old = snapshot.read.assign(hash);
    snapshot
        .write
        .assign(hash)
        .as_slice()
        .iter()
        .filter(|addr| **addr != me && (full || !old.contains(addr)))
        .copied()
        .collect()
}

async fn copy(shard: &Rc<Shard>, snapshot: &RoutingSnapshot, full: bool) -> Result<(), String> {
    let me = shard.me();
    let mut sent = 0u64;
    for chunk in 0..CHUNKS {
        let low = chunk << 24;
        let tags = low..=(low | 0x00ff_ffff);
        let mut batches: HashMap<(SocketAddr, usize), Vec<ReplicaRecord>> = HashMap::new();
        shard
            .store
            .engine()
            .for_each_in(tags, true, |entry| {
                let hash = key_hash(entry.key);
                for peer in copy_targets(snapshot, hash, me, full) {
                    let peer_shard = core_of(hash, snapshot.shards_of(&peer));
                    batches
                        .entry((peer, peer_shard))
                        .or_default()
                        .push(ReplicaRecord {
                            hash,
                            key: entry.key.to_vec(),
                            value: entry.value.to_vec(),
                            flags: entry.flags,
                            exptime: entry.expiry,
                            version: entry.version,
                            tombstone: entry.tombstone,
                        });
                }
                true
            })
            .map_err(|e| format!("scanning shard {}: {e}", shard.id))?;
        for ((peer, peer_shard), records) in batches {
            for batch in records.chunks(BATCH) {
                super::replication::send_records(
                    shard,
                    peer,
                    peer_shard,
                    batch,
                    super::replication::COPY_CALL_TIMEOUT,
                )
                .await?;
                sent += batch.len() as u64;
            }
        }
        futures_lite::future::yield_now().await;
    }
    crate::info!("rebalance: shard {} copied {sent} records", shard.id);
    Ok(())
}

async fn drop_unowned(shard: &Rc<Shard>, snapshot: &RoutingSnapshot) -> Result<(), String> {
    let me = shard.me();
    if !snapshot.write.nodes().iter().any(|(addr, _)| *addr == me) {
        // Never empty a server on a table that does not even list it (a detach in progress).
        return Ok(());
    }
    let dropped = shard
        .store
        .engine()
        .retain(|key| snapshot.write.is_assigned(key_hash(key), &me))
        .map_err(|e| format!("dropping on shard {}: {e}", shard.id))?;
    shard
        .store
        .write_snapshot()
        .await
        .map_err(|e| format!("snapshot of shard {}: {e}", shard.id))?;
    crate::info!(
        "rebalance: shard {} dropped {dropped} keys it no longer owns",
        shard.id
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::membership::Rebalance;
    use crate::ring::{NodeState, RoutingTable};

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 19800))
    }

    fn table(version: u64, n: u8) -> RoutingTable {
        RoutingTable::new(
            version,
            (1..=n).map(|i| (addr(i), NodeState::Active)).collect(),
        )
        .unwrap()
    }

    #[test]
    fn exactly_one_old_owner_copies_each_key_to_its_new_owners() {
        let snapshot = RoutingSnapshot {
            epoch: 2,
            write: table(2, 4),
            read: table(1, 3),
            shards: Vec::new(),
            rebalance: Some(Rebalance {
                target: 2,
                full: false,
                phase: Phase::Copying,
                waiting: Default::default(),
                total: 4,
            }),
            ..RoutingSnapshot::empty()
        };
        for hash in (0..2000u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)) {
            let senders: Vec<SocketAddr> = (1..=4)
                .map(addr)
                .filter(|me| !copy_targets(&snapshot, hash, *me, false).is_empty())
                .collect();
            let new_owners = snapshot.write.assign(hash);
            let old_owners = snapshot.read.assign(hash);
            let moved = new_owners
                .as_slice()
                .iter()
                .any(|a| !old_owners.contains(a));
            assert_eq!(senders.len(), usize::from(moved), "hash {hash:#x}");
            if let Some(sender) = senders.first() {
                assert_eq!(Some(*sender), snapshot.read.coordinator(hash));
                for target in copy_targets(&snapshot, hash, *sender, false) {
                    assert!(new_owners.contains(&target) && !old_owners.contains(&target));
                }
            }
            let coordinator = snapshot.read.coordinator(hash).unwrap();
            let full = copy_targets(&snapshot, hash, coordinator, true);
            assert_eq!(
                full.len(),
                new_owners
                    .as_slice()
                    .iter()
                    .filter(|a| **a != coordinator)
                    .count()
            );
        }
    }

    #[test]
    fn replica_targets_cover_both_tables_without_me() {
        let snapshot = RoutingSnapshot {
            epoch: 2,
            write: table(2, 4),
            read: table(1, 3),
            shards: Vec::new(),
            rebalance: None,
            ..RoutingSnapshot::empty()
        };
        for hash in (0..500u64).map(|i| i.wrapping_mul(0x2545_f491_4f6c_dd1d)) {
            let me = snapshot.write.coordinator(hash).unwrap();
            let targets = super::super::replication::replica_targets(&snapshot, hash, me);
            assert!(!targets.contains(&me));
            for owner in snapshot
                .write
                .assign(hash)
                .as_slice()
                .iter()
                .chain(snapshot.read.assign(hash).as_slice())
            {
                assert!(*owner == me || targets.contains(owner));
            }
            let mut unique = targets.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), targets.len());
        }
    }
}
