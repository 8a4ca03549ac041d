//! Write replication between servers, both directions.
//!
//! Sending: after the coordinating shard wrote a record locally, `replicate` sends it as part of a
//! [`ReplicationRequest::Replicate`] batch (see [`super::fanout`]) to every other live owner of the
//! key under the write table (and, while the tables differ, under the read table too),
//! concurrently, each on a connection bound to the shard that owns the key on that peer (one
//! [`RpcClient`] per (peer, shard), whose [`Hello`] names the shard and marks the connection as
//! replication, see [`super::shard::REPLICATION_PEER`]). A batch whose peer fails is retried
//! [`ATTEMPTS`] times with a short backoff; if it still fails every write of the batch fails, so the gateway retries it (the write is then indefinite, as in kumofs: some
//! copies may hold it), and the record goes to the replication backlog ([`super::backlog`]), which
//! keeps retrying that peer until it acknowledges or stops being an active member.
//!
//! Receiving: `serve_frame` and `handle` apply records newest-version-wins, a batch at a time
//! (`Engine::apply_newer_batch`, which is `put_if_newer` / `delete_if_newer` record by record with
//! the cache misses of several records overlapped), so a late or repeated copy never overwrites a
//! newer write, and observe every version so the shard's clock stays ahead of anything it has
//! stored. A batch of this shard's records is decoded without copying its keys and values.
//! Records of keys owned by another core of this server (a sender with a stale shard count) are
//! passed to that core over the mesh. A rebalance [`ReplicationRequest::Copy`] is applied the
//! same way once this shard routes with the sender's snapshot or a newer one. `Clock` and `Flush` are the two rounds of a cluster-wide flush ([`super::flush`]).
//! `Pull` asks for one key's record (a new coordinator before a conditional write, see
//! [`super::pull`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use super::fanout::{Outcome, WriteAcks};
use super::shard::{Counters, Shard, ShardAnswer, ShardCall, REPLICATION_PEER};
use crate::cluster::clock::plausible;
use crate::ring::{core_of, key_hash};
use crate::rpc::messages::{
    ReplicaRecord, ReplicationRequest, ReplicationResponse, RoutingSnapshot,
};
use crate::rpc::replica_codec::{self, DecodedReplication, ReplicaRecordRef, ReplicateBuilder};
use crate::rpc::sync::reply_slot;
use crate::rpc::{ClientConfig, Hello, Responder, RpcClient};
use crate::runtime;
use crate::storage::{NewerRecord, StorageError};

/// Tries per peer before a replication counts as failed.
pub const ATTEMPTS: u32 = 3;
/// Limit of one replication call of a client write: with [`ATTEMPTS`], a peer that silently
/// vanished costs a write about three seconds before it fails and the gateway retries.
pub const WRITE_CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// Limit of one rebalance copy call (a batch may carry many large values).
pub const COPY_CALL_TIMEOUT: Duration = Duration::from_secs(30);

type PeerClient = RpcClient<ReplicationRequest, ReplicationResponse>;

/// The shard's replication clients, one per (peer server, peer shard).
#[derive(Default)]
pub(crate) struct PeerClients {
    clients: RefCell<HashMap<(SocketAddr, usize), PeerClient>>,
}

impl PeerClients {
    pub(crate) fn get(&self, me: SocketAddr, peer: SocketAddr, shard: usize) -> PeerClient {
        self.clients
            .borrow_mut()
            .entry((peer, shard))
            .or_insert_with(|| {
                let config = ClientConfig {
                    call_timeout: COPY_CALL_TIMEOUT,
                    connect_timeout: Duration::from_secs(1),
                    backoff_min: Duration::from_millis(20),
                    backoff_max: Duration::from_millis(500),
                    hello: Some(Hello {
                        target_shard: u32::try_from(shard).ok(),
                        peer: format!("{REPLICATION_PEER}{me}"),
                    }),
                };
                RpcClient::new(peer, config)
            })
            .clone()
    }
}

/// The servers a write of `hash` coordinated by `me` must reach: the live owners under the write
/// table (`write_owners`, the write table's `assign(hash)`, which the caller already has) and,
/// during a rebalance, under the read table, without `me` and without duplicates.
pub fn replica_targets(
    routing: &RoutingSnapshot,
    hash: u64,
    write_owners: &[SocketAddr],
    me: SocketAddr,
) -> Vec<SocketAddr> {
    let mut targets = Vec::new();
    let rebalancing = routing.rebalance.is_some() || routing.tables_differ();
    let read = rebalancing.then(|| routing.read.assign(hash));
    let extra: &[SocketAddr] = read.as_ref().map_or(&[], |read| read.as_slice());
    for addr in write_owners.iter().chain(extra) {
        if *addr != me && !targets.contains(addr) {
            targets.push(*addr);
        }
    }
    targets
}

/// The replicas a write of `hash` coordinated here must reach, or the refusal to answer when one
/// of them has a full backlog (checked before anything is written, see [`super::backlog`]).
pub(crate) fn admit(
    shard: &Shard,
    routing: &RoutingSnapshot,
    hash: u64,
    write_owners: &[SocketAddr],
) -> Result<Vec<SocketAddr>, String> {
    let targets = replica_targets(routing, hash, write_owners, shard.me());
    match shard.cluster.backlog.full_peer(&targets) {
        Some(peer) => Err(format!(
            "replication backlog to {peer} is full; retry once it catches up or is marked fault"
        )),
        None => Ok(targets),
    }
}

/// Sends `record` to every target, batched with the other writes for the same peer shard (see
/// [`super::fanout`]); `outcome` runs once all answered (at once when there is no target). A
/// target that fails gets the record through the backlog later.
pub(crate) fn replicate_then(
    shard: &Rc<Shard>,
    routing: &RoutingSnapshot,
    targets: &[SocketAddr],
    record: &ReplicaRecordRef<'_>,
    outcome: Outcome,
) {
    let acks = WriteAcks::new(targets.len(), outcome);
    for &peer in targets {
        let peer_shard = core_of(record.hash, routing.shards_of(&peer));
        super::fanout::enqueue(shard, peer, peer_shard, record, acks.clone());
    }
}

/// [`replicate_then`] for a task: `Ok` once every target acknowledged.
pub(crate) async fn replicate(
    shard: &Rc<Shard>,
    routing: &RoutingSnapshot,
    targets: &[SocketAddr],
    record: ReplicaRecord,
) -> Result<(), String> {
    let (tx, rx) = reply_slot();
    replicate_then(shard, routing, targets, &record.as_ref(), Outcome::Slot(tx));
    rx.await
        .unwrap_or_else(|| Err("replication queue dropped the write".into()))
}

/// Sends `records` (all owned by `peer_shard` on `peer`) with retries, each call within `limit`.
pub(crate) async fn send_records(
    shard: &Rc<Shard>,
    peer: SocketAddr,
    peer_shard: usize,
    records: &[ReplicaRecord],
    limit: Duration,
) -> Result<(), String> {
    let mut batch = ReplicateBuilder::new();
    for record in records {
        batch.push(&record.as_ref());
    }
    let payload = batch.finish();
    call_with_retries(shard, peer, peer_shard, &payload, limit).await
}

/// Makes the request `payload` (a [`ReplicationRequest`] as rmp-serde encodes it, e.g. built by
/// [`ReplicateBuilder`]) to `peer_shard` on `peer`, up to [`ATTEMPTS`] times, each within `limit`,
/// until it is acknowledged.
pub(crate) async fn call_with_retries(
    shard: &Rc<Shard>,
    peer: SocketAddr,
    peer_shard: usize,
    payload: &[u8],
    limit: Duration,
) -> Result<(), String> {
    let client = shard.peers.get(shard.me(), peer, peer_shard);
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            runtime::sleep(Duration::from_millis(30 * u64::from(attempt))).await;
        }
        match client.call_encoded_with_timeout(payload, limit).await {
            Ok(ReplicationResponse::Ack { .. }) => return Ok(()),
            Ok(ReplicationResponse::Error(e)) => last = format!("{peer}: {e}"),
            Ok(other) => last = format!("{peer}: unexpected answer {other:?}"),
            Err(e) => last = format!("{peer}: {e}"),
        }
        crate::warn!(
            "replication to {peer} (shard {peer_shard}), attempt {}: {last}",
            attempt + 1
        );
    }
    Err(last)
}

/// Entry point of a replication connection's request frame (data or stream port). A `Replicate`
/// whose records all belong to this shard (the common case: the sender routed them here) is
/// decoded borrowing keys and values from the frame ([`replica_codec`]) and installed at once,
/// before the next frame is read; only its durability wait runs in a task. Everything else is
/// decoded with rmp-serde and handled by [`handle`] in a task of its own, as before.
pub(crate) fn serve_frame(shard: &Rc<Shard>, id: u64, payload: &[u8], responder: &Rc<Responder>) {
    let request = match replica_codec::decode_request(payload) {
        Ok(DecodedReplication::Replicate(records))
            if records.iter().all(|r| is_local(shard, r.key)) =>
        {
            let batch: Vec<NewerRecord<'_>> = records
                .iter()
                .map(|r| NewerRecord {
                    key: r.key,
                    value: r.value,
                    flags: r.flags,
                    expiry: r.exptime,
                    version: r.version,
                    tombstone: r.tombstone,
                })
                .collect();
            match install_batch(shard, &batch) {
                Ok((0, stale)) => respond_now(responder, id, &ack(0, stale)),
                Ok((applied, stale)) => {
                    let shard = shard.clone();
                    answer_later(responder, id, async move {
                        durable_ack(&shard, applied, stale).await
                    });
                }
                Err(e) => respond_now(responder, id, &ReplicationResponse::Error(e.to_string())),
            }
            return;
        }
        Ok(DecodedReplication::Replicate(records)) => ReplicationRequest::Replicate {
            records: records.iter().map(ReplicaRecordRef::to_owned).collect(),
        },
        Ok(DecodedReplication::Other(request)) => request,
        Err(e) => return responder.respond_error(id, &e.to_string()),
    };
    let shard = shard.clone();
    answer_later(responder, id, async move { handle(&shard, request).await });
}

fn ack(applied: u32, stale: u32) -> ReplicationResponse {
    ReplicationResponse::Ack { applied, stale }
}

/// Answers request `id` at once.
fn respond_now(responder: &Responder, id: u64, response: &ReplicationResponse) {
    responder.respond_encoded(id, |out| {
        rmp_serde::encode::write(out, response).map_err(|e| e.to_string())
    });
}

/// Answers request `id` from a task of its own, with what `response` resolves to.
fn answer_later(
    responder: &Rc<Responder>,
    id: u64,
    response: impl std::future::Future<Output = ReplicationResponse> + 'static,
) {
    responder.spawn(
        id,
        async move { Ok::<_, String>(response.await) },
        |out, response: &ReplicationResponse| {
            rmp_serde::encode::write(out, response).map_err(|e| e.to_string())
        },
    );
}

/// Whether `key` belongs to this shard (no hashing when the server has one shard).
fn is_local(shard: &Shard, key: &[u8]) -> bool {
    shard.count == 1 || core_of(key_hash(key), shard.count) == shard.id
}

/// Handles a decoded replication request.
pub(crate) async fn handle(shard: &Rc<Shard>, request: ReplicationRequest) -> ReplicationResponse {
    match request {
        ReplicationRequest::Replicate { records } => apply(shard, records).await,
        ReplicationRequest::Copy {
            epoch,
            write,
            records,
        } => {
            let mine = shard.routing();
            if mine.precedence() < (write, epoch) {
                return ReplicationResponse::NotReady { epoch: mine.epoch };
            }
            let count = records.len() as u64;
            let answer = apply(shard, records).await;
            if matches!(answer, ReplicationResponse::Ack { .. }) {
                let received = &shard.cluster.copy_received;
                received.set(received.get() + count);
            }
            answer
        }
        ReplicationRequest::Clock { observe } => {
            match super::maintenance::clock_of_all_shards(shard, observe).await {
                Ok((now, flush)) => ReplicationResponse::Clock { now, flush },
                Err(e) => ReplicationResponse::Error(e),
            }
        }
        ReplicationRequest::Flush { version } => {
            match super::flush::flush_every_shard(shard, version).await {
                Ok(()) => ReplicationResponse::Flushed,
                Err(e) => ReplicationResponse::Error(e),
            }
        }
        ReplicationRequest::Pull { hash, key } => {
            // Served by the key's shard (the asker picked it; a stale shard count lands elsewhere).
            let core = core_of(hash, shard.count);
            if core == shard.id {
                return super::pull::answer(shard, hash, &key);
            }
            match shard.call(core, ShardCall::Pull { hash, key }).await {
                Ok(ShardAnswer::Replicate(answer)) => answer,
                Ok(_) => ReplicationResponse::Error("internal: wrong answer from shard".into()),
                Err(e) => ReplicationResponse::Error(e),
            }
        }
    }
}

/// Applies records on the shards that own them, newest version wins.
async fn apply(shard: &Rc<Shard>, records: Vec<ReplicaRecord>) -> ReplicationResponse {
    // The common case: the sender routed every record to the core that owns it.
    if records.iter().all(|r| is_local(shard, &r.key)) {
        return apply_local(shard, records).await;
    }
    let mut by_core: HashMap<usize, Vec<ReplicaRecord>> = HashMap::new();
    for record in records {
        by_core
            .entry(core_of(key_hash(&record.key), shard.count))
            .or_default()
            .push(record);
    }
    let (mut applied, mut stale) = (0, 0);
    for (core, records) in by_core {
        let answer = if core == shard.id {
            apply_local(shard, records).await
        } else {
            match shard.call(core, ShardCall::Replicate(records)).await {
                Ok(ShardAnswer::Replicate(answer)) => answer,
                Ok(_) => ReplicationResponse::Error("internal: wrong answer from shard".into()),
                Err(e) => ReplicationResponse::Error(e),
            }
        };
        match answer {
            ReplicationResponse::Ack {
                applied: a,
                stale: s,
            } => {
                applied += a;
                stale += s;
            }
            error => return error,
        }
    }
    ReplicationResponse::Ack { applied, stale }
}

/// Applies records owned by this shard, newest version wins, then waits for durability.
pub(crate) async fn apply_local(
    shard: &Rc<Shard>,
    records: Vec<ReplicaRecord>,
) -> ReplicationResponse {
    match install(shard, &records) {
        Ok((0, stale)) => ack(0, stale),
        Ok((applied, stale)) => durable_ack(shard, applied, stale).await,
        Err(e) => ReplicationResponse::Error(e.to_string()),
    }
}

/// The answer to records installed here once they are durable (per the durability policy).
async fn durable_ack(shard: &Shard, applied: u32, stale: u32) -> ReplicationResponse {
    match shard.store.durable().await {
        Ok(()) => ack(applied, stale),
        Err(e) => ReplicationResponse::Error(format!("storage sync failed: {e}")),
    }
}

/// Writes records owned by this shard into its engine, newest version wins (what a replica does
/// with a replicated write or a copy, and a coordinator with a pulled record, see
/// [`super::pull`]); returns how many were applied and how many were older than what is held.
/// Durability is the caller's business.
pub(crate) fn install(
    shard: &Shard,
    records: &[ReplicaRecord],
) -> Result<(u32, u32), StorageError> {
    let batch: Vec<NewerRecord<'_>> = records
        .iter()
        .map(|r| NewerRecord {
            key: &r.key,
            value: &r.value,
            flags: r.flags,
            expiry: r.exptime,
            version: r.version,
            tombstone: r.tombstone,
        })
        .collect();
    install_batch(shard, &batch)
}

/// [`install`] of records borrowed from wherever they are, applied as one batch
/// ([`crate::storage::Engine::apply_newer_batch`]).
fn install_batch(shard: &Shard, records: &[NewerRecord<'_>]) -> Result<(u32, u32), StorageError> {
    // The clock takes in the newest version of the batch, so later local versions are newer than
    // every record here: one clock read per batch rather than per record, and the same clock
    // afterwards (nothing reads it while the batch is applied).
    let newest = records.iter().map(|r| r.version).filter(|&v| plausible(v));
    if let Some(newest) = newest.max() {
        shard.observe_version(newest);
    }
    // A version no correct clock makes is refused: storing it would pin the key forever.
    let counts = shard
        .store
        .engine()
        .apply_newer_batch(records, |r| plausible(r.version))?;
    Counters::bump(&shard.counters.repl_applied, u64::from(counts.applied));
    Counters::bump(&shard.counters.repl_stale, u64::from(counts.stale));
    Ok((counts.applied, counts.stale))
}
