//! Conditional writes at a key's new coordinator while a rebalance copies the key to it.
//!
//! During a rebalance's copy phase writes follow the write table at once, so the new coordinator
//! of a moving key takes its writes before the copy brought it the key. A plain set does not care
//! (newest version wins, whatever the copy brings later), but a conditional write (delete, add,
//! replace, append, prepend, cas, incr, decr, touch, get-and-touch) answers from the key's state,
//! and the new coordinator alone does not know it: a delete would answer NOT_FOUND and write
//! nothing (and the copy would bring the value back), an add of an existing key would succeed, a
//! replace, append or incr would fail.
//!
//! # The rule
//!
//! A write other than a set, coordinated here, of a key that has no record here (no value and no
//! tombstone: [`crate::storage::Engine::stored_version`] is `None`), while this server is not a
//! live owner of the key under the read table and the read table has one, first *pulls* the key:
//! it asks the read table's first live owner for the key's record ([`ReplicationRequest::Pull`],
//! on the replication connection to that peer's owning shard), failing over to the next live owner
//! on an error or timeout, installs what it gets exactly as a replica or a rebalance copy would
//! (newest version wins, the version, flags and expiry as they were, a tombstone as a tombstone),
//! and only then runs the write as usual. An answer without a record means the key is absent.
//! [`sources`] is that decision, a pure function.
//!
//! Why this is sound: the read table's owners hold every acknowledged write of the key. Before the
//! copy phase they were its owners, and during it every write coordinated here is replicated to
//! them too ([`super::replication::replica_targets`]), so what the first of them answers is the
//! state a read would see, which is what the conditional write must see. A key that has a record
//! here needs no pull: it came from a copy or a replica (the old owner's state) or from a write
//! coordinated here (newer than the old owner's). A key this server owns under the read table is
//! held here already, and with no live owner under the read table (the first attach) there is
//! nothing to ask. Once installed, the pulled record is just an early copy: the copy that arrives
//! later is older or equal and changes nothing, and the write stamped above it wins everywhere.
//! Pulling only the key at hand, only for conditional writes of absent keys and only during a copy
//! phase, keeps the cost at one extra round trip for exactly the writes that were wrong without it.
//!
//! # Order
//!
//! The data path promises that the requests of one gateway connection take effect in the order
//! they arrive (see [`super::data`]). While a key's pull runs, every later get, `GetNewest` and
//! write of that key on this shard waits in the key's queue ([`Pulls`]), and when the pull ends the
//! queue is run, in order, synchronously, before anything else can touch the key; a queued
//! conditional write does not pull again. Requests of other keys are not held up. So every keyed
//! request of the data path enters through [`start`], which runs it at once (the common case: one
//! look-up in an empty map more than before) or queues it, and [`complete`] yields its answer.
//! The embedded gateway's in-place get (`server::gateway`) declines a key being pulled and sends
//! the get through [`start`] too.
//!
//! # Bounds
//!
//! Each owner asked gets [`PULL_CALL_TIMEOUT`], and at most the key's three live owners are asked,
//! so a pull ends within about 1.5 s. A pull that gets no usable answer fails the writes that
//! needed it with an error the gateway retries (queued gets and sets run as usual); an answer that
//! is not a `Pulled` counts as a failure of that owner, never as "absent".
//!
//!
//! # Limit
//!
//! A record held here from before the copy phase and older than the old owners' (a server that
//! rejoins with data above the GC horizon, or a leftover copy of an earlier rebalance) is taken
//! as the key's state, by a conditional write as by a `GetNewest`, until the copy overwrites it
//! (newest wins). Pulling for every conditional write of a key this server does not own under the
//! read table would close that too, at one round trip for each such write instead of one per key.
//!
//! [`ReplicationRequest::Pull`]: crate::rpc::messages::ReplicationRequest::Pull

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};

use super::data::{begin_write, is_live_owner, Begun, Write};
use super::shard::{Counters, Shard};
use crate::ring::{core_of, key_hash};
use crate::rpc::messages::{
    DataRequest, DataResponse, ReplicaRecord, ReplicationRequest, ReplicationResponse,
    RoutingSnapshot, WriteOp,
};
use crate::runtime;

/// Limit of one pull call to one owner.
pub const PULL_CALL_TIMEOUT: Duration = Duration::from_millis(500);

/// Whether a write of `hash` (op `op`), coordinated by `me`, of a key of which this server `held`
/// a record or not, must pull the key first, and from which servers, in the order to ask them:
/// empty when no pull is needed (see the module doc for the rule).
pub fn sources(
    routing: &RoutingSnapshot,
    hash: u64,
    me: SocketAddr,
    op: WriteOp,
    held: bool,
) -> Vec<SocketAddr> {
    if held || op == WriteOp::Set {
        return Vec::new();
    }
    // Settled tables: the coordinator is the read table's first live owner and holds the key.
    if !routing.tables_differ() {
        return Vec::new();
    }
    if is_live_owner(&routing.read, hash, me) {
        return Vec::new();
    }
    routing
        .read
        .assign(hash)
        .iter()
        .copied()
        .filter(|owner| *owner != me)
        .collect()
}

/// A get, `GetNewest` or write of a key of this shard, borrowed from its request.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Keyed<'a> {
    Get(u64, &'a [u8]),
    GetNewest(u64, &'a [u8]),
    /// The write, and whether it is `noreply`.
    Write(u64, Write<'a>, bool),
}

impl<'a> Keyed<'a> {
    /// The keyed request `request` is, if it is one.
    pub(crate) fn of(request: &'a DataRequest) -> Option<Keyed<'a>> {
        Some(match request {
            DataRequest::Get { hash, key } => Keyed::Get(*hash, key),
            DataRequest::GetNewest { hash, key } => Keyed::GetNewest(*hash, key),
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
                    op: *op,
                    value,
                    flags: *flags,
                    exptime: *exptime,
                };
                Keyed::Write(*hash, write, *noreply)
            }
            DataRequest::FlushAll { .. } | DataRequest::Stats => return None,
        })
    }

    fn hash(&self) -> u64 {
        match self {
            Keyed::Get(hash, _) | Keyed::GetNewest(hash, _) | Keyed::Write(hash, ..) => *hash,
        }
    }

    fn key(&self) -> &'a [u8] {
        match self {
            Keyed::Get(_, key) | Keyed::GetNewest(_, key) => key,
            Keyed::Write(_, write, _) => write.key,
        }
    }

    /// The owned request, to queue behind a pull.
    fn to_request(self) -> DataRequest {
        match self {
            Keyed::Get(hash, key) => DataRequest::Get {
                hash,
                key: key.to_vec(),
            },
            Keyed::GetNewest(hash, key) => DataRequest::GetNewest {
                hash,
                key: key.to_vec(),
            },
            Keyed::Write(hash, write, noreply) => DataRequest::Write {
                hash,
                key: write.key.to_vec(),
                op: write.op,
                value: write.value.to_vec(),
                flags: write.flags,
                exptime: write.exptime,
                noreply,
            },
        }
    }

    /// Runs the request's synchronous part now.
    fn run(&self, shard: &Shard, pull: PullCheck<'_>) -> Begun {
        match *self {
            Keyed::Get(hash, key) => Begun::Done(super::data::get(shard, hash, key)),
            Keyed::GetNewest(hash, key) => Begun::Done(super::data::get_newest(shard, hash, key)),
            Keyed::Write(hash, ref write, noreply) => {
                begin_write(shard, hash, write, noreply, pull)
            }
        }
    }
}

/// How far a keyed request got when it arrived.
pub(crate) enum Step {
    /// It ran (answered, or applied and waiting for [`super::data::finish_write`]).
    Now(Begun),
    /// It waits for its key's pull, then runs.
    Later(Waiting),
}

/// Starts a keyed request of this shard: it runs now unless its key is being pulled (then it
/// queues behind the pull) or it is a write that needs a pull (then it starts one and runs first
/// when the pull is done). Either way requests of one key run in the order they arrive.
pub(crate) fn start(shard: &Rc<Shard>, keyed: Keyed<'_>) -> Step {
    let key = keyed.key();
    if shard.pulls.waiting(key) {
        return Step::Later(defer(shard, key, keyed.to_request()));
    }
    match keyed.run(shard, PullCheck::Allowed) {
        Begun::Pull(sources) => {
            let request = keyed.to_request();
            Step::Later(start_pull(shard, keyed.hash(), key, request, sources))
        }
        begun => Step::Now(begun),
    }
}

/// Runs a request that waited for its key's pull (`pull` says how the pull went).
fn run_deferred(shard: &Shard, request: &DataRequest, pull: PullCheck<'_>) -> Begun {
    match Keyed::of(request).map(|keyed| keyed.run(shard, pull)) {
        Some(Begun::Pull(_)) | None => Begun::Done(DataResponse::Error(
            "internal: a queued request asked for a second pull".into(),
        )),
        Some(begun) => begun,
    }
}

/// The answer of a started request, once its write is durable and replicated.
pub(crate) async fn complete(shard: &Rc<Shard>, step: Step) -> DataResponse {
    let begun = match step {
        Step::Now(begun) => begun,
        Step::Later(waiting) => waiting.outcome().await,
    };
    match begun {
        Begun::Done(response) => response,
        Begun::Applied(applied) => super::data::finish_write(shard, applied).await,
        Begun::Pull(_) => DataResponse::Error("internal: a pull was not started".into()),
    }
}

/// What the requests queued behind a pull run with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PullCheck<'a> {
    /// A fresh request: it may start a pull.
    Allowed,
    /// The key's pull is done: never pull again.
    Done,
    /// The key's pull failed (why): a write that needs one answers an error.
    Failed(&'a str),
}

/// A request waiting for its key's pull, and where its outcome goes.
struct Deferred {
    request: DataRequest,
    outcome: LocalSender<Begun>,
}

/// The keys of this shard being pulled, each with the requests waiting for it, in arrival order.
#[derive(Default)]
pub(crate) struct Pulls {
    pending: RefCell<HashMap<Vec<u8>, VecDeque<Deferred>>>,
}

impl Pulls {
    /// Whether a pull of `key` runs (its requests must queue behind it).
    pub(crate) fn waiting(&self, key: &[u8]) -> bool {
        let pending = self.pending.borrow();
        !pending.is_empty() && pending.contains_key(key)
    }

    /// Queues `request` behind the running pull of `key`.
    fn queue(&self, key: &[u8], request: DataRequest) -> Waiting {
        let (outcome, receiver) = local_channel::new_bounded(1);
        let deferred = Deferred { request, outcome };
        self.pending
            .borrow_mut()
            .entry(key.to_vec())
            .or_default()
            .push_back(deferred);
        Waiting(receiver)
    }
}

/// The outcome of a request that waits for a pull: what it would have been had it run at once.
pub(crate) struct Waiting(LocalReceiver<Begun>);

impl Waiting {
    pub(crate) async fn outcome(self) -> Begun {
        match self.0.recv().await {
            Some(begun) => begun,
            None => Begun::Done(DataResponse::Error(
                "the pull of the key was abandoned; retry".into(),
            )),
        }
    }
}

/// Queues `request` (a get, `GetNewest` or write of `key`) behind the running pull of `key`.
fn defer(shard: &Shard, key: &[u8], request: DataRequest) -> Waiting {
    shard.pulls.queue(key, request)
}

/// Starts pulling `key` from `sources` for `request` (the write that needs it), which runs first
/// once the pull is done.
fn start_pull(
    shard: &Rc<Shard>,
    hash: u64,
    key: &[u8],
    request: DataRequest,
    sources: Vec<SocketAddr>,
) -> Waiting {
    let waiting = shard.pulls.queue(key, request);
    let guard = Drain {
        shard: shard.clone(),
        key: key.to_vec(),
        done: false,
    };
    runtime::spawn(run(guard, hash, sources));
    waiting
}

/// Runs the queue of a key once its pull ended; if the pull task is dropped before (shutdown),
/// the queued requests are answered with an error instead of waiting forever.
struct Drain {
    shard: Rc<Shard>,
    key: Vec<u8>,
    done: bool,
}

impl Drain {
    /// Runs every request queued for the key, in order, with no await in between: nothing can
    /// reach the key before the queue is empty and gone.
    fn run(mut self, check: PullCheck<'_>) {
        self.done = true;
        let queue = self.shard.pulls.pending.borrow_mut().remove(&self.key);
        for deferred in queue.unwrap_or_default() {
            let begun = run_deferred(&self.shard, &deferred.request, check);
            // The waiter is gone only when its connection closed; nothing to answer then.
            let _ = deferred.outcome.try_send(begun);
        }
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        if !self.done {
            // Dropping the senders answers every waiter with an error.
            self.shard.pulls.pending.borrow_mut().remove(&self.key);
        }
    }
}

async fn run(drain: Drain, hash: u64, sources: Vec<SocketAddr>) {
    let shard = drain.shard.clone();
    Counters::bump(&shard.counters.pulls, 1);
    let fetched = fetch(&shard, hash, &drain.key, &sources).await;
    let installed = fetched.and_then(|record| match record {
        Some(record) => super::replication::install(&shard, std::slice::from_ref(&record))
            .map(|_| ())
            .map_err(|e| format!("installing the pulled record: {e}")),
        None => Ok(()),
    });
    match installed {
        Ok(()) => drain.run(PullCheck::Done),
        Err(why) => {
            Counters::bump(&shard.counters.pull_failures, 1);
            crate::info!("pull of a moving key failed: {why}");
            let why = format!("pulling the key from its old owners failed ({why}); retry");
            drain.run(PullCheck::Failed(&why));
        }
    }
}

/// Asks `sources` in turn for the key's record; `Ok(None)`: the first that answered holds none.
async fn fetch(
    shard: &Rc<Shard>,
    hash: u64,
    key: &[u8],
    sources: &[SocketAddr],
) -> Result<Option<ReplicaRecord>, String> {
    let request = ReplicationRequest::Pull {
        hash,
        key: key.to_vec(),
    };
    let routing = shard.routing();
    let mut failures = Vec::new();
    for &source in sources {
        let client = shard.peers.get(
            shard.me(),
            source,
            core_of(hash, routing.shards_of(&source)),
        );
        match client.call_with_timeout(&request, PULL_CALL_TIMEOUT).await {
            Ok(ReplicationResponse::Pulled { record }) => match record {
                Some(record) if record.key != key => {
                    failures.push(format!("{source}: answered another key"));
                }
                record => return Ok(record),
            },
            Ok(ReplicationResponse::Error(e)) => failures.push(format!("{source}: {e}")),
            Ok(other) => failures.push(format!("{source}: unexpected answer {other:?}")),
            Err(e) => failures.push(format!("{source}: {e}")),
        }
    }
    if failures.is_empty() {
        failures.push("no live owner to ask".into());
    }
    Err(failures.join("; "))
}

/// Answers a [`ReplicationRequest::Pull`] for a key of this shard: its record as a copy would
/// send it (value or tombstone), or none. Refused unless this server owns the key under its read
/// table, the owners that hold every acknowledged write of it: one that no longer owns it may have
/// dropped it, and one that owns it under the write table only may wait for its copy, so "none"
/// from either could be a lie. The asker then tries another owner.
pub(crate) fn answer(shard: &Shard, hash: u64, key: &[u8]) -> ReplicationResponse {
    if key_hash(key) != hash {
        return ReplicationResponse::Error("the hash does not match the key".into());
    }
    let routing = shard.routing();
    let me = shard.me();
    if !is_live_owner(&routing.read, hash, me) {
        return ReplicationResponse::Error(format!(
            "{me} does not own the key under its read table (routing epoch {})",
            routing.epoch
        ));
    }
    let found = shard
        .store
        .engine()
        .visit_record(key, |entry| ReplicaRecord {
            hash,
            key: entry.key.to_vec(),
            value: entry.value.to_vec(),
            flags: entry.flags,
            exptime: entry.expiry,
            version: entry.version,
            tombstone: entry.tombstone,
        });
    match found {
        Ok(record) => ReplicationResponse::Pulled { record },
        Err(e) => ReplicationResponse::Error(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::membership::{Phase, Rebalance};
    use crate::ring::{NodeState, RoutingTable};

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, i], 19800))
    }

    fn table(version: u64, servers: &[(u8, NodeState)]) -> RoutingTable {
        let nodes = servers.iter().map(|&(i, s)| (addr(i), s)).collect();
        RoutingTable::new(version, nodes).unwrap()
    }

    /// Three servers; a fourth attached, its copy phase running.
    fn copying() -> RoutingSnapshot {
        let old = [
            (1, NodeState::Active),
            (2, NodeState::Active),
            (3, NodeState::Active),
        ];
        let mut new = old.to_vec();
        new.push((4, NodeState::Active));
        RoutingSnapshot {
            epoch: 10,
            read: table(1, &old),
            write: table(2, &new),
            rebalance: Some(Rebalance {
                target: 2,
                full: false,
                phase: Phase::Copying,
                waiting: Default::default(),
                total: 4,
            }),
            ..RoutingSnapshot::empty()
        }
    }

    /// A key the new server coordinates under the write table.
    fn moving(routing: &RoutingSnapshot) -> u64 {
        (0..10_000u64)
            .map(|i| key_hash(format!("k{i}").as_bytes()))
            .find(|&h| routing.write.coordinator(h) == Some(addr(4)))
            .unwrap()
    }

    const CONDITIONAL: [WriteOp; 12] = [
        WriteOp::Add,
        WriteOp::Replace,
        WriteOp::Append,
        WriteOp::Prepend,
        WriteOp::Cas { version: 7 },
        WriteOp::Incr(crate::rpc::messages::Arith {
            delta: 1,
            cas: 0,
            initial: None,
            touch: None,
        }),
        WriteOp::Decr(crate::rpc::messages::Arith {
            delta: 1,
            cas: 0,
            initial: Some(0),
            touch: None,
        }),
        WriteOp::Touch,
        WriteOp::Delete,
        WriteOp::DeleteCas { version: 7 },
        WriteOp::AppendCas { version: 7 },
        WriteOp::GetAndTouch,
    ];

    #[test]
    fn a_conditional_write_of_an_absent_moving_key_pulls_from_the_read_owners_in_order() {
        let routing = copying();
        let hash = moving(&routing);
        let owners: Vec<SocketAddr> = routing.read.assign(hash).iter().copied().collect();
        assert_eq!(owners.len(), 3);
        for op in CONDITIONAL {
            assert_eq!(
                sources(&routing, hash, addr(4), op, false),
                owners,
                "{op:?}"
            );
        }
    }

    #[test]
    fn no_pull_for_a_set_a_held_key_or_settled_tables() {
        let routing = copying();
        let hash = moving(&routing);
        assert!(sources(&routing, hash, addr(4), WriteOp::Set, false).is_empty());
        // A tombstone is a record too: `held` covers it.
        assert!(sources(&routing, hash, addr(4), WriteOp::Delete, true).is_empty());
        let settled = RoutingSnapshot {
            read: routing.write.clone(),
            rebalance: None,
            ..routing.clone()
        };
        assert!(sources(&settled, hash, addr(4), WriteOp::Delete, false).is_empty());
    }

    #[test]
    fn no_pull_by_a_read_owner_or_without_one() {
        let routing = copying();
        // A key whose write coordinator owns it under the read table too holds it already.
        let kept = (0..10_000u64)
            .map(|i| key_hash(format!("k{i}").as_bytes()))
            .find(|&h| {
                let c = routing.write.coordinator(h).unwrap();
                routing.read.assign(h).contains(&c)
            })
            .unwrap();
        let coordinator = routing.write.coordinator(kept).unwrap();
        assert!(sources(&routing, kept, coordinator, WriteOp::Add, false).is_empty());
        // The first attach: the read table is empty, nobody to ask.
        let first = RoutingSnapshot {
            read: RoutingTable::empty(),
            ..routing.clone()
        };
        let hash = moving(&routing);
        assert!(sources(&first, hash, addr(4), WriteOp::Add, false).is_empty());
        // Read owners marked fault are not asked; none live: no pull.
        let faulty = [
            (1, NodeState::Fault),
            (2, NodeState::Fault),
            (3, NodeState::Fault),
        ];
        let dead = RoutingSnapshot {
            read: table(1, &faulty),
            ..routing.clone()
        };
        assert!(sources(&dead, hash, addr(4), WriteOp::Add, false).is_empty());
        let one = [
            (1, NodeState::Active),
            (2, NodeState::Fault),
            (3, NodeState::Fault),
        ];
        let partly = RoutingSnapshot {
            read: table(1, &one),
            ..routing
        };
        assert_eq!(
            sources(&partly, hash, addr(4), WriteOp::Add, false),
            vec![addr(1)]
        );
    }
}
