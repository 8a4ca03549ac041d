//! The data path: [`DataRequest`]s from gateways, answered with [`DataResponse`]s.
//!
//! A request first goes to the shard that owns its key (`ring::core_of(hash, shards)`), over the
//! mesh when the connection landed elsewhere (one hop at most: the owner never forwards again).
//! There, ownership is checked against the routing snapshot: a `Get` is served when this server is
//! among the key's live owners under the read or the write table; a write only when this server is the
//! key's coordinator (first live owner) under the write table. Anything else is `NotOwner`, carrying
//! the snapshot epoch this server routes with, so the gateway refreshes its table and retries.
//!
//! A write is stamped with a fresh version of the shard's hybrid logical clock (the CAS token),
//! above the key's stored version whatever clock stamped that one (so a clock running behind
//! never makes a newer write lose), applied to the engine by [`apply_write`] (a pure mapping of
//! [`WriteOp`] onto the engine, unit tested below), made durable per the `--durability` policy,
//! then replicated (see [`super::replication`]) before the answer leaves; `noreply` writes answer
//! after the local write. A write whose replicas include one with a full replication backlog is
//! refused before anything is written (see [`super::backlog`]).
//!
//! # Order
//!
//! The requests of one gateway connection take effect in the order they arrive: a get of a key
//! of this shard is answered inline, and a write of one is checked, stamped and applied inline
//! too ([`begin_write`]); only its replication (and under `--durability every` its fsync wait)
//! is waited for: by the replication queues, which answer the request when its last replica
//! acknowledged ([`super::fanout`]), or by a task ([`finish_write`]) when an fsync must come
//! first. So a get reads every write sent before it on the connection, and writes to
//! one key apply in the order they were sent, even when their answers leave in another order.
//! (glommio polls a newly spawned task once at once, which gave the same order when the whole
//! write ran in a task; doing the synchronous part inline keeps the order without relying on that,
//! and a write that writes nothing, a refused CAS say, costs no task.) The one exception, during a
//! rebalance's copy phase: a conditional write of a key this new coordinator holds nothing of
//! first pulls the key from its old owner, and the requests of that key that arrive meanwhile
//! queue behind it and run in order once it is done ([`super::pull`]).

use std::net::SocketAddr;
use std::rc::Rc;

use super::fanout::Outcome;
use super::pull::{complete, start, Keyed, PullCheck, Step};
use super::shard::{Shard, ShardAnswer, ShardCall, ShardCounters};
use crate::ring::{core_of, key_hash, NodeState, RoutingTable};
use crate::rpc::data_codec::{self, DataRequestRef};
use crate::rpc::messages::{
    Arith, DataRequest, DataResponse, ReplicaRecord, RoutingSnapshot, WriteOp,
};
use crate::rpc::{LaterAnswer, Responder};
use crate::storage::{Engine, Held, IncrOutcome, Item, StorageError, WriteOutcome};

/// Answers one request frame of a gateway connection. A get of a key of this shard is answered
/// inline, its response appended to the connection's output at once (no task, no future: the
/// responses of one read leave in one write); a write of a key of this shard is applied inline and
/// answered from a task once durable and replicated (see the module doc on order); a request of a
/// key being pulled waits in a task for the pull ([`super::pull`]); everything else runs in a task
/// of its own.
pub(crate) fn serve_frame(shard: &Rc<Shard>, id: u64, payload: &[u8], responder: &Rc<Responder>) {
    let here = |hash: u64| core_of(hash, shard.count) == shard.id;
    let request = match data_codec::decode_request(payload) {
        Some(DataRequestRef::Get { hash, key }) if here(hash) => {
            return respond(shard, responder, id, start(shard, Keyed::Get(hash, key)));
        }
        Some(DataRequestRef::GetNewest { hash, key }) if here(hash) => {
            return respond(
                shard,
                responder,
                id,
                start(shard, Keyed::GetNewest(hash, key)),
            );
        }
        Some(DataRequestRef::Write {
            hash,
            key,
            op,
            value,
            flags,
            exptime,
            noreply,
        }) if here(hash) => {
            let write = Write {
                key,
                op,
                value,
                flags,
                exptime,
            };
            let step = start(shard, Keyed::Write(hash, write, noreply));
            return respond(shard, responder, id, step);
        }
        Some(request) => request.to_owned(),
        None => match rmp_serde::from_slice::<DataRequest>(payload) {
            Ok(request) => request,
            Err(e) => return responder.respond_error(id, &format!("bad request: {e}")),
        },
    };
    let shard = shard.clone();
    answer_later(responder, id, async move { handle(&shard, request).await });
}

/// Answers a started request: at once when it is done; when the last of its replicas answers
/// when it is a write applied here under a durability policy that makes nobody wait (no task:
/// the replication queues answer it, see [`super::fanout`]); else from a task.
fn respond(shard: &Rc<Shard>, responder: &Rc<Responder>, id: u64, step: Step) {
    match step {
        Step::Now(Begun::Done(response)) => respond_now(responder, id, &response),
        Step::Now(Begun::Applied(applied)) if shard.store.durable_without_waiting() => {
            replicate_and_answer(shard, responder.defer(id), applied)
        }
        step => {
            let shard = shard.clone();
            answer_later(responder, id, async move { complete(&shard, step).await });
        }
    }
}

/// Replicates a write applied here and already as durable as the policy promises; `later` is
/// answered when every replica acknowledged (a noreply write's at once).
fn replicate_and_answer(shard: &Rc<Shard>, later: LaterAnswer, applied: Applied) {
    let Applied {
        response,
        record,
        routing,
        targets,
        noreply,
    } = applied;
    if noreply {
        replicate_noreply(shard, &routing, &targets, &record);
        return answer_replicated(later, response, Ok(()));
    }
    let outcome = Outcome::Respond(later, response);
    super::replication::replicate_then(shard, &routing, &targets, &record.as_ref(), outcome);
}

/// Replicates a noreply write, answered already: nobody waits, a failure is logged.
fn replicate_noreply(
    shard: &Rc<Shard>,
    routing: &RoutingSnapshot,
    targets: &[SocketAddr],
    record: &ReplicaRecord,
) {
    super::replication::replicate_then(shard, routing, targets, &record.as_ref(), Outcome::Log);
}

/// Answers a write once its replication is over (see [`replicate_and_answer`]).
pub(crate) fn answer_replicated(
    later: LaterAnswer,
    response: DataResponse,
    replicated: Result<(), String>,
) {
    let response = match replicated {
        Ok(()) => response,
        Err(e) => replication_failed(&e),
    };
    later.respond_with(|out| {
        // Infallible for every response but `Stats`, which is never a write's.
        let _ = data_codec::put_response(out, &response);
    });
}

/// The local copy is written and some replicas may have it: the write is indefinite, as in
/// kumofs. The gateway retries it; a retried set simply writes a newer version.
fn replication_failed(why: &str) -> DataResponse {
    DataResponse::Error(format!("stored locally but replication failed: {why}"))
}

/// Answers request `id` from a task of its own, with what `response` resolves to.
fn answer_later(
    responder: &Rc<Responder>,
    id: u64,
    response: impl std::future::Future<Output = DataResponse> + 'static,
) {
    responder.spawn(
        id,
        async move { Ok::<_, String>(response.await) },
        |out, response| data_codec::put_response(out, response).map_err(|e| e.to_string()),
    );
}

fn respond_now(responder: &Responder, id: u64, response: &DataResponse) {
    responder.respond_with(id, |out| {
        // Infallible for every response but `Stats`, which is never answered inline.
        let _ = data_codec::put_response(out, response);
    });
}

/// Entry point of a gateway connection's request on any shard.
pub(crate) async fn handle(shard: &Rc<Shard>, request: DataRequest) -> DataResponse {
    match &request {
        DataRequest::Get { hash, .. }
        | DataRequest::GetNewest { hash, .. }
        | DataRequest::Write { hash, .. } => {
            let owner = core_of(*hash, shard.count);
            if owner == shard.id {
                return handle_local(shard, request).await;
            }
            match shard.call(owner, ShardCall::Data(request)).await {
                Ok(ShardAnswer::Data(response)) => response,
                Ok(_) => DataResponse::Error("internal: wrong answer from shard".into()),
                Err(e) => DataResponse::Error(format!("forwarding to shard {owner}: {e}")),
            }
        }
        DataRequest::FlushAll { delay } => super::flush::flush_all(shard, *delay).await,
        DataRequest::Stats => DataResponse::Stats(stats(shard).await),
    }
}

/// Serves a request on this shard without forwarding (the caller routed it here).
pub(crate) async fn handle_local(shard: &Rc<Shard>, request: DataRequest) -> DataResponse {
    match &request {
        DataRequest::FlushAll { delay } => super::flush::flush_all(shard, *delay).await,
        DataRequest::Stats => DataResponse::Stats(stats(shard).await),
        _ => match Keyed::of(&request) {
            Some(keyed) => {
                let step = start(shard, keyed);
                complete(shard, step).await
            }
            None => DataResponse::Error("internal: not a keyed request".into()),
        },
    }
}

/// A get served by this shard (the caller routed it here).
pub(crate) fn get(shard: &Shard, hash: u64, key: &[u8]) -> DataResponse {
    if key_hash(key) != hash {
        return DataResponse::Error("the hash does not match the key".into());
    }
    let routing = shard.routing();
    let me = shard.me();
    if !is_live_owner(&routing.read, hash, me) && !is_live_owner(&routing.write, hash, me) {
        return DataResponse::NotOwner {
            routing_version: routing.epoch,
        };
    }
    read_here(shard, key)
}

/// A [`DataRequest::GetNewest`] served by this shard: a get that answers `Absent` when the key
/// has no record here at all, so the gateway reads the key's old owner instead.
pub(crate) fn get_newest(shard: &Shard, hash: u64, key: &[u8]) -> DataResponse {
    if key_hash(key) != hash {
        return DataResponse::Error("the hash does not match the key".into());
    }
    let routing = shard.routing();
    let me = shard.me();
    if !is_live_owner(&routing.write, hash, me) && !is_live_owner(&routing.read, hash, me) {
        return DataResponse::NotOwner {
            routing_version: routing.epoch,
        };
    }
    newest_here(shard, key)
}

/// Reads `key` from this shard's engine for a `GetNewest`; the caller checked that this server
/// owns it.
pub(crate) fn newest_here(shard: &Shard, key: &[u8]) -> DataResponse {
    // Bound first: the engine borrow must end before `read_here` borrows it again.
    let held = shard.store.engine().stored_version(key);
    match held {
        Ok(None) => DataResponse::Absent,
        Ok(Some(_)) => read_here(shard, key),
        Err(e) => DataResponse::Error(e.to_string()),
    }
}

/// Whether `me` is among the live owners of `hash` in `table`; a table of one server needs no walk
/// of the ring.
pub(crate) fn is_live_owner(table: &RoutingTable, hash: u64, me: SocketAddr) -> bool {
    match table.nodes() {
        [(addr, state)] => *addr == me && *state == NodeState::Active,
        _ => table.assign(hash).contains(&me),
    }
}

/// Reads `key` from this shard's engine; the caller checked that this server owns it.
pub(crate) fn read_here(shard: &Shard, key: &[u8]) -> DataResponse {
    super::shard::Counters::bump(&shard.counters.cmd_get, 1);
    match shard.store.engine().get(key) {
        Ok(Some(item)) => {
            super::shard::Counters::bump(&shard.counters.get_hits, 1);
            DataResponse::Value {
                value: item.value,
                flags: item.flags,
                version: item.version,
                exptime: item.expiry,
            }
        }
        Ok(None) => DataResponse::NotFound,
        Err(e) => DataResponse::Error(e.to_string()),
    }
}

/// The parts of a `DataRequest::Write` that [`apply_write`] needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Write<'a> {
    pub key: &'a [u8],
    pub op: WriteOp,
    pub value: &'a [u8],
    pub flags: u32,
    /// Absolute unix seconds, 0 = never.
    pub exptime: u32,
}

/// What [`begin_write`] did.
pub(crate) enum Begun {
    /// Nothing is left to do (refused, or nothing was written): the answer.
    Done(DataResponse),
    /// Written here; durability and replication follow in [`finish_write`].
    Applied(Applied),
    /// Nothing done: the key must be pulled from these servers first (see [`super::pull`]).
    Pull(Vec<SocketAddr>),
}

/// A write applied on this shard, waiting for durability and replication before its answer.
pub(crate) struct Applied {
    response: DataResponse,
    record: ReplicaRecord,
    routing: Rc<RoutingSnapshot>,
    targets: Vec<SocketAddr>,
    noreply: bool,
}

/// The synchronous part of a write coordinated here: the ownership and backlog checks, the
/// version stamp and the engine write. Runs inline, in request order (see the module doc). A
/// conditional write of a key that must be pulled first ([`super::pull::sources`]) does nothing
/// and answers [`Begun::Pull`] when `pull` allows one.
pub(crate) fn begin_write(
    shard: &Shard,
    hash: u64,
    write: &Write<'_>,
    noreply: bool,
    pull: PullCheck<'_>,
) -> Begun {
    if key_hash(write.key) != hash {
        return Begun::Done(DataResponse::Error(
            "the hash does not match the key".into(),
        ));
    }
    let routing = shard.routing();
    let me = shard.me();
    // One walk of the ring gives both the coordinator and the replicas.
    let owners = routing.write.assign(hash);
    if owners.first() != Some(&me) {
        return Begun::Done(DataResponse::NotOwner {
            routing_version: routing.epoch,
        });
    }
    let (held, stored) = match shard.store.engine().held(write.key) {
        Ok(held) => (held, held.version()),
        Err(e) => return Begun::Done(DataResponse::Error(e.to_string())),
    };
    if pull != PullCheck::Done {
        let sources = super::pull::sources(&routing, hash, me, write.op, stored.is_some());
        if !sources.is_empty() {
            return match pull {
                PullCheck::Failed(why) => Begun::Done(DataResponse::Error(why.to_string())),
                _ => Begun::Pull(sources),
            };
        }
    }
    let counter = match write.op {
        WriteOp::Delete | WriteOp::DeleteCas { .. } => &shard.counters.cmd_delete,
        _ => &shard.counters.cmd_set,
    };
    super::shard::Counters::bump(counter, 1);
    // Refused before anything is written when a replica's backlog is full (see server::backlog).
    let targets = match super::replication::admit(shard, &routing, hash, owners.as_slice()) {
        Ok(targets) => targets,
        Err(why) => return Begun::Done(DataResponse::Error(why)),
    };
    // Stamp above the key's stored version (value or tombstone), whatever clock stamped it.
    if let Some(stored) = stored {
        shard.observe_version(stored);
    }
    let version = shard.next_version();
    let applied = apply_write(&mut shard.store.engine(), hash, write, version, held);
    match applied {
        Ok((response, Some(record))) => Begun::Applied(Applied {
            response,
            record,
            routing,
            targets,
            noreply,
        }),
        Ok((response, None)) => Begun::Done(response),
        Err(e) => Begun::Done(DataResponse::Error(e.to_string())),
    }
}

/// The rest of a write [`begin_write`] applied: durability, then replication, then the answer.
pub(crate) async fn finish_write(shard: &Rc<Shard>, applied: Applied) -> DataResponse {
    let Applied {
        response,
        record,
        routing,
        targets,
        noreply,
    } = applied;
    if let Err(e) = shard.store.durable().await {
        return DataResponse::Error(format!("storage sync failed: {e}"));
    }
    if noreply {
        replicate_noreply(shard, &routing, &targets, &record);
        return response;
    }
    match super::replication::replicate(shard, &routing, &targets, record).await {
        Ok(()) => response,
        Err(e) => replication_failed(&e),
    }
}

/// Applies one write to `engine` stamped `version` (a set reuses the lookup `held`, see
/// [`Engine::put_held`]). Returns the answer for the client and, when
/// something was written, the record to replicate (the full resulting record, so replicas never need
/// the old value: append, incr and touch replicate their outcome). Every op is one step on one
/// shard, so its conditions (a CAS, a missing key) cannot change between the check and the write.
pub fn apply_write(
    engine: &mut Engine,
    hash: u64,
    write: &Write<'_>,
    version: u64,
    held: Held,
) -> Result<(DataResponse, Option<ReplicaRecord>), StorageError> {
    let key = write.key;
    let record_of = |item: Item| ReplicaRecord {
        hash,
        key: key.to_vec(),
        value: item.value,
        flags: item.flags,
        exptime: item.expiry,
        version: item.version,
        tombstone: false,
    };
    let stored = |engine: &mut Engine| -> Result<Option<ReplicaRecord>, StorageError> {
        Ok(engine.get(key)?.map(record_of))
    };
    let as_set = || ReplicaRecord {
        hash,
        key: key.to_vec(),
        value: write.value.to_vec(),
        flags: write.flags,
        exptime: write.exptime,
        version,
        tombstone: false,
    };
    // A CAS condition: `Err(answer)` when the live version is not `expected`.
    let check =
        |engine: &Engine, expected: u64| -> Result<Result<(), DataResponse>, StorageError> {
            Ok(match engine.live_version(key)? {
                None => Err(DataResponse::NotFound),
                Some(live) if live != expected => Err(DataResponse::Exists),
                Some(_) => Ok(()),
            })
        };
    let (value, flags, exptime) = (write.value, write.flags, write.exptime);
    let outcome = match &write.op {
        WriteOp::Set => {
            engine.put_held(held, key, value, flags, exptime, version)?;
            WriteOutcome::Stored
        }
        WriteOp::Add => engine.add(key, value, flags, exptime, version)?,
        WriteOp::Replace => engine.replace(key, value, flags, exptime, version)?,
        WriteOp::Cas { version: expected } => {
            engine.put_if_version(key, value, flags, exptime, *expected, version)?
        }
        WriteOp::Append => engine.append(key, value, version)?,
        WriteOp::Prepend => engine.prepend(key, value, version)?,
        WriteOp::AppendCas { version: expected } | WriteOp::PrependCas { version: expected } => {
            if let Err(answer) = check(engine, *expected)? {
                return Ok((answer, None));
            }
            match write.op {
                WriteOp::AppendCas { .. } => engine.append(key, value, version)?,
                _ => engine.prepend(key, value, version)?,
            }
        }
        WriteOp::Touch | WriteOp::GetAndTouch => {
            // Read first: a touch to a past time makes the item unreadable, yet its replicas must
            // get the new expiry and a get-and-touch answers the value once.
            let Some(item) = engine.get(key)? else {
                return Ok((DataResponse::NotFound, None));
            };
            engine.touch(key, exptime, version)?;
            let touched = Item {
                version,
                expiry: exptime,
                ..item
            };
            let response = match write.op {
                WriteOp::Touch => DataResponse::Touched,
                _ => DataResponse::Value {
                    value: touched.value.clone(),
                    flags: touched.flags,
                    version,
                    exptime,
                },
            };
            return Ok((response, Some(record_of(touched))));
        }
        WriteOp::Incr(arith) | WriteOp::Decr(arith) => {
            let incr = matches!(write.op, WriteOp::Incr(_));
            return arith_write(engine, write, arith, incr, version, stored);
        }
        WriteOp::Delete | WriteOp::DeleteCas { .. } => {
            if let WriteOp::DeleteCas { version: expected } = write.op {
                if let Err(answer) = check(engine, expected)? {
                    return Ok((answer, None));
                }
            }
            match engine.delete(key, version)? {
                WriteOutcome::Deleted => {
                    let tombstone = ReplicaRecord {
                        value: Vec::new(),
                        flags: 0,
                        exptime: 0,
                        tombstone: true,
                        ..as_set()
                    };
                    return Ok((DataResponse::Deleted, Some(tombstone)));
                }
                other => other,
            }
        }
    };
    Ok(match outcome {
        WriteOutcome::Stored => {
            let record = match write.op {
                WriteOp::Append
                | WriteOp::Prepend
                | WriteOp::AppendCas { .. }
                | WriteOp::PrependCas { .. } => stored(engine)?,
                _ => Some(as_set()),
            };
            (DataResponse::Stored { version }, record)
        }
        WriteOutcome::NotStored => (DataResponse::NotStored, None),
        WriteOutcome::Exists => (DataResponse::Exists, None),
        WriteOutcome::NotFound => (DataResponse::NotFound, None),
        WriteOutcome::Deleted => (DataResponse::Deleted, None),
    })
}

/// An incr or decr: creates a missing counter when asked to (with the write's expiry), else
/// compares the CAS, then applies the delta (and the new expiry of `touch`).
fn arith_write(
    engine: &mut Engine,
    write: &Write<'_>,
    arith: &Arith,
    incr: bool,
    version: u64,
    stored: impl Fn(&mut Engine) -> Result<Option<ReplicaRecord>, StorageError>,
) -> Result<(DataResponse, Option<ReplicaRecord>), StorageError> {
    let key = write.key;
    let number = |value: u64, record: Option<ReplicaRecord>| {
        let exptime = record.as_ref().map_or(0, |r| r.exptime);
        (
            DataResponse::Number {
                value,
                version,
                exptime,
            },
            record,
        )
    };
    match engine.live_version(key)? {
        None => {
            let Some(initial) = arith.initial else {
                return Ok((DataResponse::NotFound, None));
            };
            let digits = initial.to_string();
            match engine.add(key, digits.as_bytes(), 0, write.exptime, version)? {
                WriteOutcome::Stored => Ok(number(initial, stored(engine)?)),
                // Cannot happen (the key was just found missing on this very shard).
                _ => Ok((
                    DataResponse::Error("the counter could not be created".into()),
                    None,
                )),
            }
        }
        Some(live) if arith.cas != 0 && live != arith.cas => Ok((DataResponse::Exists, None)),
        Some(_) => Ok(
            match engine.incr_decr(key, incr, arith.delta, arith.touch, version)? {
                IncrOutcome::Value(value) => number(value, stored(engine)?),
                IncrOutcome::NotFound => (DataResponse::NotFound, None),
                IncrOutcome::NonNumeric => (DataResponse::NonNumeric, None),
            },
        ),
    }
}

/// Stats summed over every shard, plus per-shard item counts (`shardN_items`).
async fn stats(shard: &Rc<Shard>) -> Vec<(String, String)> {
    let mut total = ShardCounters::default();
    let mut per_shard = Vec::new();
    for (i, answer) in shard
        .call_all(|| ShardCall::LocalStats)
        .await
        .into_iter()
        .enumerate()
    {
        let Ok(ShardAnswer::Stats(c)) = answer else {
            continue;
        };
        per_shard.push((format!("shard{i}_items"), c.items.to_string()));
        total.items += c.items;
        total.tombstones += c.tombstones;
        total.bytes += c.bytes;
        total.cmd_get += c.cmd_get;
        total.get_hits += c.get_hits;
        total.cmd_set += c.cmd_set;
        total.cmd_delete += c.cmd_delete;
        total.repl_applied += c.repl_applied;
        total.repl_stale += c.repl_stale;
        total.pulls += c.pulls;
        total.pull_failures += c.pull_failures;
    }
    let now = crate::cluster::clock::wall_ms() / 1000;
    let routing = shard.routing();
    let mut out: Vec<(String, String)> = [
        ("pid", std::process::id().to_string()),
        ("uptime", shard.started.elapsed().as_secs().to_string()),
        ("time", now.to_string()),
        ("version", env!("CARGO_PKG_VERSION").to_string()),
        ("shards", shard.count.to_string()),
        ("curr_items", total.items.to_string()),
        ("items", total.items.to_string()),
        ("tombstones", total.tombstones.to_string()),
        ("bytes", total.bytes.to_string()),
        ("cmd_get", total.cmd_get.to_string()),
        ("get_hits", total.get_hits.to_string()),
        (
            "get_misses",
            (total.cmd_get - total.get_hits.min(total.cmd_get)).to_string(),
        ),
        ("cmd_set", total.cmd_set.to_string()),
        ("cmd_delete", total.cmd_delete.to_string()),
        ("repl_applied", total.repl_applied.to_string()),
        ("repl_stale", total.repl_stale.to_string()),
        ("pulls", total.pulls.to_string()),
        ("pull_failures", total.pull_failures.to_string()),
        ("routing_epoch", routing.epoch.to_string()),
        ("rebalancing", routing.rebalance.is_some().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    out.extend(per_shard);
    out.extend(super::maintenance::stats(shard).await);
    out
}

#[cfg(test)]
#[path = "data_tests.rs"]
mod tests;
