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

use std::net::SocketAddr;
use std::rc::Rc;

use super::shard::{Shard, ShardAnswer, ShardCall, ShardCounters};
use crate::ring::{core_of, key_hash, NodeState, RoutingTable};
use crate::rpc::data_codec::{self, DataRequestRef};
use crate::rpc::messages::{DataRequest, DataResponse, ReplicaRecord, WriteOp};
use crate::rpc::Responder;
use crate::runtime;

/// Answers one request frame of a gateway connection. A get of a key of this shard is answered
/// inline, its response appended to the connection's output at once (no task, no future: the
/// responses of one read leave in one write); everything else runs in a task of its own.
pub(crate) fn serve_frame(shard: &Rc<Shard>, id: u64, payload: &[u8], responder: &Rc<Responder>) {
    let request = match data_codec::decode_request(payload) {
        Some(DataRequestRef::Get { hash, key }) if core_of(hash, shard.count) == shard.id => {
            let response = get(shard, hash, key);
            responder.respond_with(id, |out| {
                // Infallible for the responses of a get.
                let _ = data_codec::put_response(out, &response);
            });
            return;
        }
        Some(request) => request.to_owned(),
        None => match rmp_serde::from_slice::<DataRequest>(payload) {
            Ok(request) => request,
            Err(e) => return responder.respond_error(id, &format!("bad request: {e}")),
        },
    };
    let shard = shard.clone();
    responder.spawn(
        id,
        async move { Ok::<_, String>(handle(&shard, request).await) },
        |out, response| data_codec::put_response(out, response).map_err(|e| e.to_string()),
    );
}
use crate::storage::{Engine, IncrOutcome, StorageError, WriteOutcome};

/// Entry point of a gateway connection's request on any shard.
pub(crate) async fn handle(shard: &Rc<Shard>, request: DataRequest) -> DataResponse {
    match &request {
        DataRequest::Get { hash, .. } | DataRequest::Write { hash, .. } => {
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
    match request {
        DataRequest::Get { hash, key } => get(shard, hash, &key),
        DataRequest::Write {
            hash,
            key,
            op,
            value,
            flags,
            exptime,
            noreply,
        } => {
            let write = Write {
                key,
                op,
                value,
                flags,
                exptime,
            };
            coordinate_write(shard, hash, write, noreply).await
        }
        DataRequest::FlushAll { delay } => super::flush::flush_all(shard, delay).await,
        DataRequest::Stats => DataResponse::Stats(stats(shard).await),
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

/// Whether `me` is among the live owners of `hash` in `table`; a table of one server needs no walk
/// of the ring.
fn is_live_owner(table: &RoutingTable, hash: u64, me: SocketAddr) -> bool {
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
            }
        }
        Ok(None) => DataResponse::NotFound,
        Err(e) => DataResponse::Error(e.to_string()),
    }
}

/// The parts of a `DataRequest::Write` that [`apply_write`] needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    pub key: Vec<u8>,
    pub op: WriteOp,
    pub value: Vec<u8>,
    pub flags: u32,
    /// Absolute unix seconds, 0 = never.
    pub exptime: u32,
}

async fn coordinate_write(
    shard: &Rc<Shard>,
    hash: u64,
    write: Write,
    noreply: bool,
) -> DataResponse {
    if key_hash(&write.key) != hash {
        return DataResponse::Error("the hash does not match the key".into());
    }
    let routing = shard.routing();
    let me = shard.me();
    if routing.write.coordinator(hash) != Some(me) {
        return DataResponse::NotOwner {
            routing_version: routing.epoch,
        };
    }
    let counter = match write.op {
        WriteOp::Delete => &shard.counters.cmd_delete,
        _ => &shard.counters.cmd_set,
    };
    super::shard::Counters::bump(counter, 1);
    // Refused before anything is written when a replica's backlog is full (see server::backlog).
    let targets = match super::replication::admit(shard, &routing, hash) {
        Ok(targets) => targets,
        Err(why) => return DataResponse::Error(why),
    };
    // Stamp above the key's stored version (value or tombstone), whatever clock stamped it.
    match super::store::stored_version(&mut shard.store.engine(), &write.key) {
        Ok(Some(stored)) => {
            shard.observe_version(stored);
        }
        Ok(None) => {}
        Err(e) => return DataResponse::Error(e.to_string()),
    }
    let version = shard.next_version();
    let applied = apply_write(&mut shard.store.engine(), hash, &write, version);
    let (response, record) = match applied {
        Ok(done) => done,
        Err(e) => return DataResponse::Error(e.to_string()),
    };
    let Some(record) = record else {
        return response;
    };
    if let Err(e) = shard.store.durable().await {
        return DataResponse::Error(format!("storage sync failed: {e}"));
    }
    if targets.is_empty() {
        return response;
    }
    if noreply {
        let shard = shard.clone();
        runtime::spawn(async move {
            if let Err(e) = super::replication::replicate(&shard, &routing, &targets, record).await
            {
                crate::warn!("replication of a noreply write failed: {e}");
            }
        });
        return response;
    }
    match super::replication::replicate(shard, &routing, &targets, record).await {
        Ok(()) => response,
        // The local copy is written and some replicas may have it: the write is indefinite, as in
        // kumofs. The gateway retries it; a retried set simply writes a newer version.
        Err(e) => DataResponse::Error(format!("stored locally but replication failed: {e}")),
    }
}

/// Applies one write to `engine` stamped `version`. Returns the answer for the client and, when
/// something was written, the record to replicate (the full resulting record, so replicas never need
/// the old value: append, incr and touch replicate their outcome).
pub fn apply_write(
    engine: &mut Engine,
    hash: u64,
    write: &Write,
    version: u64,
) -> Result<(DataResponse, Option<ReplicaRecord>), StorageError> {
    let key = write.key.as_slice();
    let stored = |engine: &mut Engine| -> Result<Option<ReplicaRecord>, StorageError> {
        Ok(engine.get(key)?.map(|item| ReplicaRecord {
            hash,
            key: key.to_vec(),
            value: item.value,
            flags: item.flags,
            exptime: item.expiry,
            version: item.version,
            tombstone: false,
        }))
    };
    let as_set = || ReplicaRecord {
        hash,
        key: key.to_vec(),
        value: write.value.clone(),
        flags: write.flags,
        exptime: write.exptime,
        version,
        tombstone: false,
    };
    let (value, flags, exptime) = (write.value.as_slice(), write.flags, write.exptime);
    let outcome = match &write.op {
        WriteOp::Set => {
            engine.put(key, value, flags, exptime, version)?;
            WriteOutcome::Stored
        }
        WriteOp::Add => engine.add(key, value, flags, exptime, version)?,
        WriteOp::Replace => engine.replace(key, value, flags, exptime, version)?,
        WriteOp::Cas { version: expected } => {
            engine.put_if_version(key, value, flags, exptime, *expected, version)?
        }
        WriteOp::Append => engine.append(key, value, version)?,
        WriteOp::Prepend => engine.prepend(key, value, version)?,
        WriteOp::Touch => match engine.touch(key, exptime, version)? {
            WriteOutcome::Stored => return Ok((DataResponse::Touched, stored(engine)?)),
            other => other,
        },
        WriteOp::Incr { delta } | WriteOp::Decr { delta } => {
            let outcome = if matches!(write.op, WriteOp::Incr { .. }) {
                engine.incr(key, *delta, version)?
            } else {
                engine.decr(key, *delta, version)?
            };
            return Ok(match outcome {
                IncrOutcome::Value(value) => {
                    (DataResponse::Number { value, version }, stored(engine)?)
                }
                IncrOutcome::NotFound => (DataResponse::NotFound, None),
                IncrOutcome::NonNumeric => (DataResponse::NonNumeric, None),
            });
        }
        WriteOp::Delete => match engine.delete(key, version)? {
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
        },
    };
    Ok(match outcome {
        WriteOutcome::Stored => {
            let record = match write.op {
                WriteOp::Append | WriteOp::Prepend => stored(engine)?,
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
mod tests {
    use super::*;
    use crate::storage::{Config, Durability};

    fn engine() -> (tempfile::TempDir, Engine) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new(dir.path().join("e"));
        config.durability = Durability::None;
        let (engine, _) = Engine::open(config).unwrap();
        (dir, engine)
    }

    fn write(op: WriteOp, value: &str, flags: u32, exptime: u32) -> Write {
        Write {
            key: b"k".to_vec(),
            op,
            value: value.as_bytes().to_vec(),
            flags,
            exptime,
        }
    }

    #[test]
    fn live_owner_check_matches_the_ring() {
        let addr = |i: u16| SocketAddr::from(([127, 0, 0, 1], 19800 + i));
        let tables = [
            RoutingTable::new(1, vec![(addr(0), NodeState::Active)]).unwrap(),
            RoutingTable::new(1, vec![(addr(0), NodeState::Fault)]).unwrap(),
            RoutingTable::new(
                1,
                (0..5)
                    .map(|i| {
                        (
                            addr(i),
                            if i == 3 {
                                NodeState::Fault
                            } else {
                                NodeState::Active
                            },
                        )
                    })
                    .collect(),
            )
            .unwrap(),
        ];
        for i in 0..300u64 {
            let hash = key_hash(&i.to_le_bytes());
            for table in &tables {
                for me in 0..5 {
                    assert_eq!(
                        is_live_owner(table, hash, addr(me)),
                        table.assign(hash).contains(&addr(me))
                    );
                }
            }
        }
    }

    #[test]
    fn set_and_conditional_writes_map_onto_the_engine() {
        let (_dir, mut e) = engine();
        let (resp, rec) = apply_write(&mut e, 9, &write(WriteOp::Add, "a", 3, 0), 10).unwrap();
        assert_eq!(resp, DataResponse::Stored { version: 10 });
        let rec = rec.unwrap();
        assert_eq!(
            (rec.hash, rec.value.as_slice(), rec.flags, rec.version),
            (9, &b"a"[..], 3, 10)
        );
        let (resp, rec) = apply_write(&mut e, 9, &write(WriteOp::Add, "b", 0, 0), 11).unwrap();
        assert_eq!((resp, rec), (DataResponse::NotStored, None));
        let cas = |v| write(WriteOp::Cas { version: v }, "c", 0, 0);
        assert_eq!(
            apply_write(&mut e, 9, &cas(99), 12).unwrap().0,
            DataResponse::Exists
        );
        assert_eq!(
            apply_write(&mut e, 9, &cas(10), 13).unwrap().0,
            DataResponse::Stored { version: 13 }
        );
        let (resp, rec) = apply_write(&mut e, 9, &write(WriteOp::Append, "+", 0, 0), 14).unwrap();
        assert_eq!(resp, DataResponse::Stored { version: 14 });
        assert_eq!(
            rec.unwrap().value,
            b"c+",
            "append replicates the whole new value"
        );
    }

    #[test]
    fn incr_touch_and_delete_replicate_their_outcome() {
        let (_dir, mut e) = engine();
        apply_write(&mut e, 1, &write(WriteOp::Set, "41", 5, 0), 1).unwrap();
        let (resp, rec) =
            apply_write(&mut e, 1, &write(WriteOp::Incr { delta: 1 }, "", 0, 0), 2).unwrap();
        assert_eq!(
            resp,
            DataResponse::Number {
                value: 42,
                version: 2
            }
        );
        let rec = rec.unwrap();
        assert_eq!(
            (rec.value.as_slice(), rec.flags, rec.version),
            (&b"42"[..], 5, 2)
        );
        let far = u32::MAX - 1;
        let (resp, rec) = apply_write(&mut e, 1, &write(WriteOp::Touch, "", 0, far), 3).unwrap();
        assert_eq!(resp, DataResponse::Touched);
        assert_eq!(rec.unwrap().exptime, far);
        let (resp, rec) = apply_write(&mut e, 1, &write(WriteOp::Delete, "", 0, 0), 4).unwrap();
        assert_eq!(resp, DataResponse::Deleted);
        let rec = rec.unwrap();
        assert!(rec.tombstone && rec.value.is_empty() && rec.version == 4);
        let (resp, rec) = apply_write(&mut e, 1, &write(WriteOp::Delete, "", 0, 0), 5).unwrap();
        assert_eq!((resp, rec), (DataResponse::NotFound, None));
        let (resp, rec) =
            apply_write(&mut e, 1, &write(WriteOp::Decr { delta: 1 }, "", 0, 0), 6).unwrap();
        assert_eq!((resp, rec), (DataResponse::NotFound, None));
    }
}
