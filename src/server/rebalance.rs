//! The server's part of an online rebalance ("replace"), one phase at a time, on every shard.
//!
//! While the manager's snapshot says `Copying`, writes already follow the new (write) table and reads
//! the old (read) one. Each shard then walks its records (values and tombstones) chunk by chunk of
//! the engine's tag space, yielding between chunks so clients keep being served. For every key whose
//! first live owner under the read table is this server (so exactly one server sends each key), it
//! sends the record to the write-table owners that are not read-table owners (to every other write
//! owner for a `full` replace), batched per (peer, shard) as [`ReplicationRequest::Copy`] over the
//! peer's stream port ([`super::stream`]). The receivers apply newest-version-wins, so a copy never
//! overwrites a write that arrived meanwhile.
//!
//! - Throttle: each shard paces its sends to `copy_rate / shards` bytes per second (`--copy-rate`),
//!   so a copy never takes the whole link or the receivers' disks from the clients.
//! - Resume: a batch that fails is retried in place with backoff (up to 5 s) for as long as the
//!   rebalance is the same and the receiver is an active member, so a receiver that restarts or a
//!   network blip delays the phase and loses nothing. The chunk reached is remembered per target
//!   ([`CopyCursor`]), so a phase that is run again (after a local error) continues where it
//!   stopped. When the manager restarts the phase under a new target (a sender was lost), the walk
//!   starts over, because who sends what changed.
//! - Abort: between chunks the shard checks that the snapshot still runs this copy phase of this
//!   target; if not it stops (the new phase, if any, is started by the driver).
//! - Progress: records scanned, the total at the start, and records sent are counted into
//!   [`PhaseCounters`] shared with the keepalive loop, which reports them to the managers.
//!
//! In the `Dropping` phase reads follow the new table; each shard waits two keepalive intervals (so
//! that every server routes with the new snapshot and stops replicating to old owners), then
//! removes the keys this server is not assigned under the current tables, chunk by chunk, and
//! writes its index snapshot so the drop survives a restart.
//!
//! Shard 0 runs a phase on all shards and reports `PhaseDone` (see [`super::manager_link`]).
//!
//! [`ReplicationRequest::Copy`]: crate::rpc::messages::ReplicationRequest::Copy

use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::shard::Shard;
use super::stream::{send_copy, CopyError};
use crate::cluster::membership::Phase;
use crate::ring::{core_of, key_hash, NodeState};
use crate::rpc::messages::{ReplicaRecord, RoutingSnapshot};
use crate::runtime;

/// Records per copy request.
const BATCH: usize = 256;
/// Bytes (keys and values) per copy request.
const BATCH_BYTES: usize = 1 << 20;
/// A chunk holds about this many records, so one synchronous engine pass stays short.
const RECORDS_PER_CHUNK: u64 = 256;
/// ... and about this many bytes, so one chunk's copies fit in memory.
const BYTES_PER_CHUNK: u64 = 4 << 20;
/// How long the drop phase waits before it starts (see `drop_unowned`).
const DROP_DELAY: Duration =
    Duration::from_millis(2 * super::manager_link::KEEPALIVE_INTERVAL.as_millis() as u64);
/// Longest pause between two tries of a failed batch.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Progress of the phase a server runs, summed over its shards (atomics: read by shard 0's
/// keepalive loop while every shard counts).
#[derive(Debug)]
pub struct PhaseCounters {
    pub target: u64,
    pub phase: Phase,
    /// Records scanned, records in all at the start, records sent to new owners, bytes sent.
    pub done: AtomicU64,
    pub total: AtomicU64,
    pub sent: AtomicU64,
    pub bytes: AtomicU64,
}

impl PhaseCounters {
    pub fn new(target: u64, phase: Phase) -> PhaseCounters {
        PhaseCounters {
            target,
            phase,
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The progress as the keepalive carries it.
    pub fn report(&self) -> crate::rpc::messages::PhaseProgress {
        crate::rpc::messages::PhaseProgress {
            target: self.target,
            phase: self.phase,
            done: self.done.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
        }
    }
}

/// Where a shard's copy of rebalance `target` stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyCursor {
    pub target: u64,
    /// The tag space is cut into this many chunks (fixed for the whole phase).
    pub chunks: u32,
    /// The next chunk to scan.
    pub next: u32,
    pub scanned: u64,
    pub sent: u64,
}

/// The tags of chunk `i` of `chunks` (a power of two).
pub fn chunk_tags(i: u32, chunks: u32) -> std::ops::RangeInclusive<u32> {
    let width = (1u64 << 32) / u64::from(chunks.max(1));
    let low = u64::from(i) * width;
    (low as u32)..=((low + width - 1) as u32)
}

/// The chunk a scan visits at step `step` of `chunks` (a power of two): the step with its bits
/// reversed, so consecutive steps land far apart in the tag space (0, chunks/2, chunks/4, ...).
///
/// Why: the engine's index puts a key at the slot given by its tag's top bits, in a table sized
/// for the keys it holds now. A receiver fed in tag order (a copy, a backup) would put every key so
/// far into the first part of a table sized for all of them, one ever-growing probe cluster: each
/// insert and lookup O(keys), a 1-million-key attach taking minutes at 100% CPU (starving the
/// server's keepalives until the manager judged it down). Visited in this order, the keys received
/// at any time are spread over the whole tag space and clusters stay about one chunk long.
pub fn chunk_at_step(step: u32, chunks: u32) -> u32 {
    let bits = chunks.max(1).trailing_zeros();
    if bits == 0 {
        return 0;
    }
    step.reverse_bits() >> (32 - bits)
}

/// How many chunks to cut a shard of `records` records and `bytes` bytes into: a power of two
/// between 256 and 2^20.
pub fn chunk_count(records: u64, bytes: u64) -> u32 {
    let want = (records / RECORDS_PER_CHUNK).max(bytes / BYTES_PER_CHUNK);
    want.clamp(256, 1 << 20).next_power_of_two() as u32
}

/// Runs the current phase of `snapshot`'s rebalance on this shard.
pub(crate) async fn run_phase(
    shard: &Rc<Shard>,
    snapshot: &RoutingSnapshot,
    progress: &PhaseCounters,
) -> Result<(), String> {
    let Some(rebalance) = &snapshot.rebalance else {
        return Ok(());
    };
    match rebalance.phase {
        Phase::Copying => copy(shard, snapshot, rebalance.full, progress).await,
        Phase::Dropping => drop_unowned(shard, snapshot, progress).await,
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

/// True while the shard's routing still runs `phase` of rebalance `target`.
fn still_running(shard: &Shard, target: u64, phase: Phase) -> bool {
    shard
        .routing()
        .rebalance
        .as_ref()
        .is_some_and(|r| r.target == target && r.phase == phase)
}

/// Paces sends to a byte rate (0 = unlimited).
pub struct Throttle {
    bytes_per_sec: u64,
    next: Instant,
}

impl Throttle {
    pub fn new(bytes_per_sec: u64) -> Throttle {
        Throttle {
            bytes_per_sec,
            next: Instant::now(),
        }
    }

    /// How long to wait after sending `bytes` at `now` (no credit is saved up while idle).
    pub fn delay_after(&mut self, bytes: u64, now: Instant) -> Duration {
        if self.bytes_per_sec == 0 {
            return Duration::ZERO;
        }
        self.next =
            self.next.max(now) + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        self.next.saturating_duration_since(now)
    }

    pub async fn pace(&mut self, bytes: u64) {
        let wait = self.delay_after(bytes, Instant::now());
        if wait >= Duration::from_millis(1) {
            runtime::sleep(wait).await;
        }
    }
}

fn record_size(record: &ReplicaRecord) -> usize {
    record.key.len() + record.value.len() + 40
}

async fn copy(
    shard: &Rc<Shard>,
    snapshot: &RoutingSnapshot,
    full: bool,
    progress: &PhaseCounters,
) -> Result<(), String> {
    let target = progress.target;
    let me = shard.me();
    let (records, bytes) = {
        let engine = shard.store.engine();
        (engine.len() as u64, engine.stats().bytes_live)
    };
    let resumed = *shard.cluster.copy.borrow();
    let mut cursor = match resumed {
        Some(c) if c.target == target => c,
        _ => CopyCursor {
            target,
            chunks: chunk_count(records, bytes),
            next: 0,
            scanned: 0,
            sent: 0,
        },
    };
    PhaseCounters::add(&progress.total, records.max(cursor.scanned));
    PhaseCounters::add(&progress.done, cursor.scanned);
    PhaseCounters::add(&progress.sent, cursor.sent);
    if cursor.next > 0 {
        crate::info!(
            "rebalance {target}: shard {} resumes its copy at chunk {} of {}",
            shard.id,
            cursor.next,
            cursor.chunks
        );
    }
    let rate = match shard.config.copy_rate {
        0 => 0,
        total => (total / shard.count.max(1) as u64).max(1),
    };
    let mut throttle = Throttle::new(rate);
    while cursor.next < cursor.chunks {
        if !still_running(shard, target, Phase::Copying) {
            return Err(format!("rebalance {target}: copy superseded"));
        }
        let mut batches: HashMap<(SocketAddr, usize), Vec<ReplicaRecord>> = HashMap::new();
        let mut scanned = 0u64;
        shard
            .store
            .engine()
            .for_each_in(
                chunk_tags(chunk_at_step(cursor.next, cursor.chunks), cursor.chunks),
                true,
                |entry| {
                    scanned += 1;
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
                },
            )
            .map_err(|e| format!("scanning shard {}: {e}", shard.id))?;
        for ((peer, peer_shard), records) in batches {
            let mut rest = records.as_slice();
            while !rest.is_empty() {
                let mut take = 0;
                let mut size = 0;
                while take < rest.len() && take < BATCH && (take == 0 || size < BATCH_BYTES) {
                    size += record_size(&rest[take]);
                    take += 1;
                }
                let (batch, tail) = rest.split_at(take);
                rest = tail;
                if deliver(shard, snapshot, target, peer, peer_shard, batch).await? {
                    let n = batch.len() as u64;
                    cursor.sent += n;
                    PhaseCounters::add(&progress.sent, n);
                    PhaseCounters::add(&progress.bytes, size as u64);
                    let state = &shard.cluster;
                    state.copy_records.set(state.copy_records.get() + n);
                    state.copy_bytes.set(state.copy_bytes.get() + size as u64);
                    throttle.pace(size as u64).await;
                }
            }
        }
        cursor.scanned += scanned;
        cursor.next += 1;
        PhaseCounters::add(&progress.done, scanned);
        *shard.cluster.copy.borrow_mut() = Some(cursor);
        futures_lite::future::yield_now().await;
    }
    crate::info!(
        "rebalance {target}: shard {} copied {} of {} records scanned",
        shard.id,
        cursor.sent,
        cursor.scanned
    );
    Ok(())
}

/// Sends one batch until it is applied. `Ok(false)`: skipped, because the receiver is no longer
/// an active member (the manager restarts the phase, or recovers it later with a copy of its
/// own). `Err`: the phase itself no longer runs.
async fn deliver(
    shard: &Rc<Shard>,
    snapshot: &RoutingSnapshot,
    target: u64,
    peer: SocketAddr,
    peer_shard: usize,
    batch: &[ReplicaRecord],
) -> Result<bool, String> {
    let mut backoff = Duration::from_millis(50);
    let mut complained = false;
    loop {
        let why = match send_copy(shard, snapshot, peer, peer_shard, batch.to_vec()).await {
            Ok(()) => return Ok(true),
            Err(CopyError::NotReady) => None,
            Err(CopyError::Failed(e)) => Some(e),
        };
        if !still_running(shard, target, Phase::Copying) {
            return Err(format!("rebalance {target}: copy superseded"));
        }
        if shard.routing().write.state_of(&peer) != Some(NodeState::Active) {
            crate::info!("rebalance {target}: {peer} is no longer active; its copies are skipped");
            return Ok(false);
        }
        if let Some(why) = why {
            if !complained {
                crate::warn!("rebalance {target}: copy to {peer} failed, retrying: {why}");
                complained = true;
            }
        }
        runtime::sleep(backoff).await;
        backoff = (backoff * 2).min(RETRY_MAX);
    }
}

async fn drop_unowned(
    shard: &Rc<Shard>,
    snapshot: &RoutingSnapshot,
    progress: &PhaseCounters,
) -> Result<(), String> {
    let me = shard.me();
    if !snapshot.write.nodes().iter().any(|(addr, _)| *addr == me) {
        // Never empty a server on a table that does not even list it (a detach in progress).
        return Ok(());
    }
    let target = progress.target;
    // Servers still routing with the copy phase's snapshot replicate writes to the old owners too;
    // give them the time to adopt the new one (they poll every keepalive interval), so that few
    // such writes land here after the drop and stay behind as leftovers.
    runtime::sleep(DROP_DELAY).await;
    let (records, bytes) = {
        let engine = shard.store.engine();
        (engine.len() as u64, engine.stats().bytes_live)
    };
    PhaseCounters::add(&progress.total, records);
    let chunks = chunk_count(records, bytes);
    let mut dropped = 0;
    for chunk in 0..chunks {
        // The newest tables decide, chunk by chunk: a key this server is assigned under either is
        // kept. So the drop goes on even if the manager ended or replaced the rebalance meanwhile
        // (a newer rebalance's new keys are assigned under its write table, hence kept), unless
        // this server left the write table.
        let routing = shard.routing();
        if !routing.write.nodes().iter().any(|(addr, _)| *addr == me) {
            return Err(format!("rebalance {target}: no longer in the write table"));
        }
        let mut scanned = 0;
        dropped += shard
            .store
            .engine()
            .retain_in(chunk_tags(chunk, chunks), |key| {
                scanned += 1;
                let hash = key_hash(key);
                routing.write.is_assigned(hash, &me) || routing.read.is_assigned(hash, &me)
            })
            .map_err(|e| format!("dropping on shard {}: {e}", shard.id))?;
        PhaseCounters::add(&progress.done, scanned);
        futures_lite::future::yield_now().await;
    }
    shard
        .store
        .write_snapshot()
        .await
        .map_err(|e| format!("snapshot of shard {}: {e}", shard.id))?;
    crate::info!(
        "rebalance {target}: shard {} dropped {dropped} keys it no longer owns",
        shard.id
    );
    Ok(())
}

/// The rejoin rule: drops the records below `horizon` on this shard (of the keys `only_new`
/// assigns to this server while it is not a live owner under its read table, or of every key),
/// chunk by chunk, then writes the index snapshot so the drop is durable before the server serves
/// or receives copies under the new routing.
pub(crate) async fn drop_below(
    shard: &Rc<Shard>,
    horizon: u64,
    only_new: Option<&RoutingSnapshot>,
) -> Result<(), String> {
    let me = shard.me();
    let (records, bytes) = {
        let engine = shard.store.engine();
        (engine.len() as u64, engine.stats().bytes_live)
    };
    let chunks = chunk_count(records, bytes);
    let mut dropped = 0;
    for chunk in 0..chunks {
        dropped += shard
            .store
            .engine()
            .drop_below_in(chunk_tags(chunk, chunks), horizon, |key| match only_new {
                Some(snapshot) => is_newly_mine(snapshot, key_hash(key), me),
                None => true,
            })
            .map_err(|e| format!("dropping old records on shard {}: {e}", shard.id))?;
        futures_lite::future::yield_now().await;
    }
    shard
        .store
        .write_snapshot()
        .await
        .map_err(|e| format!("snapshot of shard {}: {e}", shard.id))?;
    if dropped > 0 {
        crate::info!(
            "rejoin: shard {} dropped {dropped} records older than the GC horizon {horizon}",
            shard.id
        );
    }
    Ok(())
}

/// Whether `me` is a live owner of `hash` under the write table but not under the read table:
/// the copy phase will send it the key's current records.
pub fn is_newly_mine(snapshot: &RoutingSnapshot, hash: u64, me: SocketAddr) -> bool {
    snapshot.write.assign(hash).contains(&me) && !snapshot.read.assign(hash).contains(&me)
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
    fn chunk_steps_visit_every_chunk_once_spread_out() {
        for chunks in [1u32, 2, 256, 4096] {
            let mut seen: Vec<u32> = (0..chunks).map(|s| chunk_at_step(s, chunks)).collect();
            if chunks >= 4 {
                assert_eq!(&seen[..4], &[0, chunks / 2, chunks / 4, 3 * chunks / 4]);
            }
            seen.sort_unstable();
            assert_eq!(seen, (0..chunks).collect::<Vec<_>>());
        }
    }

    #[test]
    fn chunks_tile_the_tag_space() {
        for chunks in [256u32, 1024, 1 << 20] {
            assert_eq!(*chunk_tags(0, chunks).start(), 0);
            assert_eq!(*chunk_tags(chunks - 1, chunks).end(), u32::MAX);
            for i in [0, 1, chunks / 2, chunks - 2] {
                assert_eq!(
                    u64::from(*chunk_tags(i, chunks).end()) + 1,
                    u64::from(*chunk_tags(i + 1, chunks).start())
                );
            }
        }
        assert_eq!(chunk_count(0, 0), 256);
        assert_eq!(chunk_count(1_000_000, 0), 4096);
        assert_eq!(chunk_count(1000, 10 << 30), 4096);
        assert_eq!(chunk_count(u64::MAX, 0), 1 << 20);
    }

    #[test]
    fn the_throttle_paces_to_its_rate_without_saving_credit() {
        let t0 = Instant::now();
        let mut unlimited = Throttle::new(0);
        assert_eq!(unlimited.delay_after(1 << 30, t0), Duration::ZERO);
        let mut t = Throttle {
            bytes_per_sec: 1_000_000,
            next: t0,
        };
        assert_eq!(t.delay_after(500_000, t0), Duration::from_millis(500));
        assert_eq!(t.delay_after(500_000, t0), Duration::from_millis(1000));
        // After a long idle time the next send waits for itself only.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(t.delay_after(100_000, later), Duration::from_millis(100));
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
            let owners = snapshot.write.assign(hash);
            let targets =
                super::super::replication::replica_targets(&snapshot, hash, owners.as_slice(), me);
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
