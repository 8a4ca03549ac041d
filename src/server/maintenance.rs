//! The cluster side's calls between the shards of one server, and the per-shard state they use.
//!
//! Shard 0 talks to the managers and drives everything that concerns the whole server: a rebalance
//! phase, the purge of a rejoining server, a cluster-wide flush, a backup, the status that
//! `kumostat` reads. Each of those needs every shard to do its part on its own engine, so shard 0
//! (or whichever shard received a request) sends a [`ClusterCall`] to every shard over the mesh
//! (`ShardCall::Cluster`) and waits for the [`ClusterAnswer`]s. Nothing here is shared between
//! threads except the rebalance progress counters, which are atomics read by the keepalive loop.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use super::backlog::Backlog;
use super::rebalance::{CopyCursor, PhaseCounters};
use super::shard::{Shard, ShardAnswer, ShardCall};
use crate::rpc::messages::RoutingSnapshot;

/// Work one shard asks every shard to do.
pub(crate) enum ClusterCall {
    /// Run this shard's part of the snapshot's rebalance phase, counting into `progress`.
    Phase {
        snapshot: Box<RoutingSnapshot>,
        progress: Arc<PhaseCounters>,
    },
    /// Drop the records below `horizon` (of the keys the snapshot newly assigns to this server, or
    /// of every key when it is `None`), then write the index snapshot (rejoin rule).
    DropBelow {
        horizon: u64,
        only_new: Option<Box<RoutingSnapshot>>,
    },
    /// Take in a version; answer this shard's newest version and flush version.
    Clock { observe: u64 },
    /// Hide every record older than this version (after taking it in as seen).
    FlushAt(u64),
    /// Copy this shard's records into the store at `dir` (its own `shard-N` inside it).
    Backup { dir: PathBuf },
    /// This shard's counters for `Stats`.
    Status,
}

impl ClusterCall {
    /// Calls that walk a whole shard and may take far longer than a request.
    pub fn is_long(&self) -> bool {
        matches!(
            self,
            ClusterCall::Phase { .. } | ClusterCall::DropBelow { .. } | ClusterCall::Backup { .. }
        )
    }
}

pub(crate) enum ClusterAnswer {
    Done(Result<(), String>),
    Clock {
        now: u64,
        flush: u64,
    },
    /// Records written (backup).
    Records(Result<u64, String>),
    Status(ShardStatus),
}

/// What `kumostat` and `kumotop` need from one shard beyond the data-path counters.
#[derive(Clone, Debug, Default)]
pub(crate) struct ShardStatus {
    pub clock: u64,
    pub flush_version: u64,
    /// Records waiting in the replication backlog, and the peers they wait for.
    pub backlog: u64,
    pub backlog_refused: u64,
    pub backlog_dropped: u64,
    pub copy_records: u64,
    pub copy_bytes: u64,
    pub copy_received: u64,
    pub gc_dropped: u64,
    /// Shard 0 only: the rebalance state (kumofs `replstat`).
    pub replstat: Option<ReplStat>,
}

/// Where this server stands in a rebalance, as kumofs's `replstat` names it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReplStat {
    /// Not an active member of the write table.
    Inactive,
    /// Running its copy phase.
    Copying,
    /// Copy done here, waiting for the other servers.
    Wait,
    /// Running its drop phase.
    Deleting,
    #[default]
    Ready,
}

impl ReplStat {
    pub fn name(self) -> &'static str {
        match self {
            ReplStat::Inactive => "inactive",
            ReplStat::Copying => "Copying",
            ReplStat::Wait => "WAIT",
            ReplStat::Deleting => "Deleting",
            ReplStat::Ready => "ready",
        }
    }
}

/// Per-shard state of the cluster side (a field of [`Shard`]).
#[derive(Default)]
pub(crate) struct ClusterState {
    pub backlog: Backlog,
    /// Where this shard's copy of the current rebalance stands, to resume after a failure.
    pub copy: RefCell<Option<CopyCursor>>,
    pub copy_records: Cell<u64>,
    pub copy_bytes: Cell<u64>,
    /// Records received by rebalance copies.
    pub copy_received: Cell<u64>,
    /// Shard 0: what the rebalance driver is doing, and the progress of the phase it runs.
    pub phase: Cell<ReplStatPhase>,
    pub progress: RefCell<Option<Arc<PhaseCounters>>>,
}

/// The driver's own state, from which [`ReplStat`] is derived with the routing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReplStatPhase {
    #[default]
    Idle,
    Copying,
    /// This server finished the copy phase of the current rebalance.
    CopyDone,
    Dropping,
    /// This server finished the drop phase of the current rebalance.
    DropDone,
}

/// Runs `call` on every shard; the first failure, if any.
pub(crate) async fn on_every_shard(
    shard: &Rc<Shard>,
    make: impl Fn() -> ClusterCall,
) -> Result<Vec<ClusterAnswer>, String> {
    let mut out = Vec::with_capacity(shard.count);
    for (i, answer) in shard
        .call_all(|| ShardCall::Cluster(make()))
        .await
        .into_iter()
        .enumerate()
    {
        match answer {
            Ok(ShardAnswer::Cluster(ClusterAnswer::Done(Err(e))))
            | Ok(ShardAnswer::Cluster(ClusterAnswer::Records(Err(e)))) => {
                return Err(format!("shard {i}: {e}"))
            }
            Ok(ShardAnswer::Cluster(answer)) => out.push(answer),
            Ok(_) => return Err(format!("shard {i}: internal: wrong answer")),
            Err(e) => return Err(format!("shard {i}: {e}")),
        }
    }
    Ok(out)
}

/// The newest version and the highest flush version over every shard, after each observed
/// `observe`.
pub(crate) async fn clock_of_all_shards(
    shard: &Rc<Shard>,
    observe: u64,
) -> Result<(u64, u64), String> {
    let mut newest = observe;
    let mut flush = 0;
    for answer in on_every_shard(shard, || ClusterCall::Clock { observe }).await? {
        if let ClusterAnswer::Clock { now, flush: f } = answer {
            newest = newest.max(now);
            flush = flush.max(f);
        }
    }
    Ok((newest, flush))
}

/// Does what another shard (or this one) asked.
pub(crate) async fn answer(shard: &Rc<Shard>, call: ClusterCall) -> ClusterAnswer {
    match call {
        ClusterCall::Phase { snapshot, progress } => {
            ClusterAnswer::Done(super::rebalance::run_phase(shard, &snapshot, &progress).await)
        }
        ClusterCall::DropBelow { horizon, only_new } => ClusterAnswer::Done(
            super::rebalance::drop_below(shard, horizon, only_new.as_deref()).await,
        ),
        ClusterCall::Clock { observe } => {
            shard.observe_version(observe);
            let now = shard.next_version();
            let flush = shard.store.engine().flush_version();
            ClusterAnswer::Clock { now, flush }
        }
        ClusterCall::FlushAt(version) => {
            shard.observe_version(version);
            let flushed = shard
                .store
                .engine()
                .flush(version)
                .map_err(|e| format!("flush: {e}"));
            ClusterAnswer::Done(flushed)
        }
        ClusterCall::Backup { dir } => {
            ClusterAnswer::Records(super::backup::copy_shard(shard, &dir).await)
        }
        ClusterCall::Status => ClusterAnswer::Status(status(shard)),
    }
}

fn status(shard: &Shard) -> ShardStatus {
    let state = &shard.cluster;
    let backlog = state.backlog.counters();
    let (flush_version, gc_dropped) = {
        let engine = shard.store.engine();
        (engine.flush_version(), engine.stats().records_dropped)
    };
    ShardStatus {
        clock: shard.clock_last(),
        flush_version,
        backlog: backlog.queued,
        backlog_refused: backlog.refused,
        backlog_dropped: backlog.dropped,
        copy_records: state.copy_records.get(),
        copy_bytes: state.copy_bytes.get(),
        copy_received: state.copy_received.get(),
        gc_dropped,
        replstat: (shard.id == 0).then(|| replstat(shard)),
    }
}

/// kumofs's `replstat` of this server (meaningful on shard 0, which drives rebalances): what the
/// driver runs, else what the snapshot still expects from this server.
pub(crate) fn replstat(shard: &Shard) -> ReplStat {
    let routing = shard.routing();
    let me = shard.me();
    if routing.write.state_of(&me) != Some(crate::ring::NodeState::Active) {
        return ReplStat::Inactive;
    }
    let copying = |r: &crate::cluster::membership::Rebalance| {
        r.phase == crate::cluster::membership::Phase::Copying
    };
    match (shard.cluster.phase.get(), &routing.rebalance) {
        (ReplStatPhase::Copying, _) => ReplStat::Copying,
        (ReplStatPhase::Dropping, _) => ReplStat::Deleting,
        (ReplStatPhase::CopyDone, Some(r)) if copying(r) => ReplStat::Wait,
        (ReplStatPhase::DropDone, Some(r)) if !copying(r) => ReplStat::Ready,
        (_, Some(r)) if r.waiting.contains(&me) && copying(r) => ReplStat::Copying,
        (_, Some(r)) if r.waiting.contains(&me) => ReplStat::Deleting,
        (_, Some(r)) if copying(r) => ReplStat::Wait,
        _ => ReplStat::Ready,
    }
}

/// The server's cluster statistics (all shards), as `Stats` key/value pairs for kumostat.
pub(crate) async fn stats(shard: &Rc<Shard>) -> Vec<(String, String)> {
    let mut total = ShardStatus::default();
    let mut replstat = None;
    if let Ok(answers) = on_every_shard(shard, || ClusterCall::Status).await {
        for answer in answers {
            if let ClusterAnswer::Status(s) = answer {
                total.clock = total.clock.max(s.clock);
                total.flush_version = total.flush_version.max(s.flush_version);
                total.backlog += s.backlog;
                total.backlog_refused += s.backlog_refused;
                total.backlog_dropped += s.backlog_dropped;
                total.copy_records += s.copy_records;
                total.copy_bytes += s.copy_bytes;
                total.copy_received += s.copy_received;
                total.gc_dropped += s.gc_dropped;
                replstat = replstat.or(s.replstat);
            }
        }
    }
    let routing = shard.routing();
    let nodes = |table: &crate::ring::RoutingTable| {
        table
            .nodes()
            .iter()
            .map(|(addr, state)| {
                let state = match state {
                    crate::ring::NodeState::Active => "active",
                    crate::ring::NodeState::Fault => "fault",
                };
                format!("{addr}={state}")
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let rebalance = match &routing.rebalance {
        Some(r) => format!("{} {:?}", r.target, r.phase),
        None => "none".into(),
    };
    [
        ("clock", total.clock.to_string()),
        ("whs_version", routing.write.version().to_string()),
        ("whs_nodes", nodes(&routing.write)),
        ("rhs_version", routing.read.version().to_string()),
        ("rhs_nodes", nodes(&routing.read)),
        (
            "hscheck",
            (routing.write.version() == routing.read.version()
                && routing.write.nodes() == routing.read.nodes())
            .to_string(),
        ),
        ("replstat", replstat.unwrap_or_default().name().to_string()),
        ("rebalance", rebalance),
        ("gc_horizon", routing.gc_horizon.to_string()),
        ("flush_version", total.flush_version.to_string()),
        ("repl_backlog", total.backlog.to_string()),
        ("repl_backlog_refused", total.backlog_refused.to_string()),
        ("repl_backlog_dropped", total.backlog_dropped.to_string()),
        ("copy_records", total.copy_records.to_string()),
        ("copy_bytes", total.copy_bytes.to_string()),
        ("copy_received", total.copy_received.to_string()),
        ("gc_dropped", total.gc_dropped.to_string()),
        ("stream_port", shard.config.stream_port.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}
