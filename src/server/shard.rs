//! One shard of a kumo-server: its store, clock, routing view and peer clients, the messages shards
//! exchange over the runtime's mesh, and the connections it serves.
//!
//! # Connections and their role
//!
//! Every shard listens on the server address (`-l`, SO_REUSEPORT). The first frame of a connection
//! may be a [`Hello`]: its `target_shard` picks the shard that serves it (the accepting shard hands
//! the socket over the mesh otherwise), and its `peer` string picks the protocol. A `peer` that starts
//! with [`REPLICATION_PEER`] marks a server-to-server connection carrying
//! [`crate::rpc::messages::ReplicationRequest`]s; anything else (or no hello at all) is a gateway
//! connection carrying [`DataRequest`]s. One port, two request enums, chosen once per connection,
//! so the hot path never tries two decoders.
//!
//! # Calls between shards
//!
//! A request for a key of another core, a stats or flush fan-out and a rebalance phase cross shards as
//! `ShardMsg::Call`; the callee answers with `ShardMsg::Answer` carrying the same id. The runtime's
//! drainer tasks keep the bounded mesh channels moving, so a call never deadlocks on a full channel.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future;
use glommio::channels::local_channel::{self, LocalSender};

use super::maintenance::{ClusterAnswer, ClusterCall, ClusterState};
use super::ServerConfig;
use crate::cluster::clock::{wall_ms, Hlc};
use crate::cluster::membership::Phase;
use crate::rpc::messages::{
    DataRequest, DataResponse, ReplicaRecord, ReplicationResponse, RoutingSnapshot,
};
use crate::rpc::{read_hello, serve_frames, Hello};
use crate::runtime::{self, HandedOffStream, ShardContext, Stream};
use crate::storage::ShardStore;

/// Prefix of [`Hello::peer`] that marks a replication connection from another server.
pub const REPLICATION_PEER: &str = "kumo-server replication ";

/// How long a call to another shard of this process may take.
const SHARD_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one shard's part of a rebalance phase (or a purge or backup) may take.
const PHASE_CALL_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Messages between the shards of one server process.
pub(crate) enum ShardMsg {
    /// An accepted connection that belongs to the receiving shard.
    Adopt {
        stream: HandedOffStream,
        replication: bool,
    },
    /// A newer routing snapshot (sent by shard 0, which talks to the managers).
    Routing(Box<RoutingSnapshot>),
    Call {
        id: u64,
        call: ShardCall,
    },
    Answer {
        id: u64,
        answer: ShardAnswer,
    },
}

/// Work one shard asks of another.
pub(crate) enum ShardCall {
    /// A data request whose key belongs to the callee's core.
    Data(DataRequest),
    /// Replicated records whose keys belong to the callee's core.
    Replicate(Vec<ReplicaRecord>),
    /// A [`crate::rpc::messages::ReplicationRequest::Pull`] of a key of the callee's core;
    /// answered with `Replicate`.
    Pull { hash: u64, key: Vec<u8> },
    /// This shard's counters, for `Stats`.
    LocalStats,
    /// The cluster side's work on every shard: rebalance phases, flush, rejoin, backup, status.
    Cluster(ClusterCall),
}

pub(crate) enum ShardAnswer {
    Data(DataResponse),
    /// The answer to a `Replicate` or a `Pull`.
    Replicate(ReplicationResponse),
    Stats(ShardCounters),
    Cluster(ClusterAnswer),
}

/// Counters one shard reports for `Stats`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ShardCounters {
    pub items: u64,
    pub tombstones: u64,
    pub bytes: u64,
    pub cmd_get: u64,
    pub get_hits: u64,
    pub cmd_set: u64,
    pub cmd_delete: u64,
    pub repl_applied: u64,
    pub repl_stale: u64,
    pub pulls: u64,
    pub pull_failures: u64,
}

/// Request counters kept by the shard (the engine keeps the item counts).
#[derive(Default)]
pub(crate) struct Counters {
    pub cmd_get: Cell<u64>,
    pub get_hits: Cell<u64>,
    pub cmd_set: Cell<u64>,
    pub cmd_delete: Cell<u64>,
    pub repl_applied: Cell<u64>,
    pub repl_stale: Cell<u64>,
    /// Keys pulled from their old owners before a conditional write (see `server::pull`), and
    /// pulls that got no usable answer.
    pub pulls: Cell<u64>,
    pub pull_failures: Cell<u64>,
}

impl Counters {
    pub fn bump(cell: &Cell<u64>, by: u64) {
        cell.set(cell.get().wrapping_add(by));
    }
}

/// Everything a shard owns. Lives in an `Rc` on its executor; nothing here crosses threads.
pub(crate) struct Shard {
    pub id: usize,
    pub count: usize,
    pub config: ServerConfig,
    pub store: Rc<ShardStore>,
    pub ctx: ShardContext<ShardMsg>,
    pub counters: Counters,
    pub started: Instant,
    hlc: RefCell<Hlc>,
    routing: RefCell<Rc<RoutingSnapshot>>,
    next_call: Cell<u64>,
    pending: RefCell<HashMap<u64, LocalSender<ShardAnswer>>>,
    pub(crate) peers: super::replication::PeerClients,
    pub(crate) fanout: super::fanout::Fanout,
    pub(crate) cluster: ClusterState,
    /// Keys being pulled before a conditional write, with the requests queued behind them.
    pub(crate) pulls: super::pull::Pulls,
}

impl Shard {
    pub fn new(config: ServerConfig, store: Rc<ShardStore>, ctx: ShardContext<ShardMsg>) -> Self {
        Shard {
            id: ctx.id(),
            count: ctx.shard_count(),
            config,
            store,
            ctx,
            counters: Counters::default(),
            started: Instant::now(),
            hlc: RefCell::new(Hlc::new()),
            routing: RefCell::new(Rc::new(RoutingSnapshot::empty())),
            next_call: Cell::new(1),
            pending: RefCell::new(HashMap::new()),
            peers: Default::default(),
            fanout: Default::default(),
            cluster: ClusterState::default(),
            pulls: Default::default(),
        }
    }

    /// This server's address as the ring knows it.
    pub fn me(&self) -> SocketAddr {
        self.config.listen
    }

    /// A fresh version for a write coordinated here.
    pub fn next_version(&self) -> u64 {
        self.hlc.borrow_mut().now(wall_ms())
    }

    /// The newest version issued or observed (saved across restarts, see `store::save_clock`).
    pub fn clock_last(&self) -> u64 {
        self.hlc.borrow().last()
    }

    /// Takes in a version written elsewhere, so later local versions are newer.
    pub fn observe_version(&self, version: u64) -> bool {
        self.hlc.borrow_mut().observe(version, wall_ms()).is_ok()
    }

    pub fn routing(&self) -> Rc<RoutingSnapshot> {
        self.routing.borrow().clone()
    }

    /// Adopts `snapshot` if it is newer than the one held; returns whether it was.
    pub fn adopt_routing(&self, snapshot: RoutingSnapshot) -> bool {
        self.observe_version(snapshot.epoch);
        let mut current = self.routing.borrow_mut();
        if !snapshot.supersedes(&current) {
            return false;
        }
        *current = Rc::new(snapshot);
        true
    }

    /// Runs `call` on shard `to` (directly when that is this shard) and returns its answer.
    pub async fn call(self: &Rc<Self>, to: usize, call: ShardCall) -> Result<ShardAnswer, String> {
        if to == self.id {
            return Ok(self.clone().answer(call).await);
        }
        // A rebalance phase walks the whole shard: it may take far longer than a request.
        let limit = match &call {
            ShardCall::Cluster(call) if call.is_long() => PHASE_CALL_TIMEOUT,
            _ => SHARD_CALL_TIMEOUT,
        };
        let id = self.next_call.get();
        self.next_call.set(id.wrapping_add(1));
        let (tx, rx) = local_channel::new_bounded(1);
        self.pending.borrow_mut().insert(id, tx);
        if let Err(e) = self.ctx.send_to(to, ShardMsg::Call { id, call }).await {
            self.pending.borrow_mut().remove(&id);
            return Err(e.to_string());
        }
        let answer = runtime::timeout(limit, rx.recv()).await;
        self.pending.borrow_mut().remove(&id);
        match answer {
            Ok(Some(answer)) => Ok(answer),
            Ok(None) => Err(format!("shard {to} dropped the call")),
            Err(_) => Err(format!("shard {to} did not answer in time")),
        }
    }

    /// Runs `call` on every shard (this one included) and returns the answers in shard order.
    pub async fn call_all(
        self: &Rc<Self>,
        make: impl Fn() -> ShardCall,
    ) -> Vec<Result<ShardAnswer, String>> {
        let calls = (0..self.count).map(|to| self.call(to, make())).collect();
        super::join_all(calls).await
    }

    /// Does what another shard (or this one) asked.
    async fn answer(self: Rc<Self>, call: ShardCall) -> ShardAnswer {
        match call {
            ShardCall::Data(request) => {
                ShardAnswer::Data(super::data::handle_local(&self, request).await)
            }
            ShardCall::Replicate(records) => {
                ShardAnswer::Replicate(super::replication::apply_local(&self, records).await)
            }
            ShardCall::Pull { hash, key } => {
                ShardAnswer::Replicate(super::pull::answer(&self, hash, &key))
            }
            ShardCall::LocalStats => ShardAnswer::Stats(self.local_counters()),
            ShardCall::Cluster(call) => {
                ShardAnswer::Cluster(super::maintenance::answer(&self, call).await)
            }
        }
    }

    fn local_counters(&self) -> ShardCounters {
        let stats = self.store.engine().stats();
        let c = &self.counters;
        ShardCounters {
            items: stats.items,
            tombstones: stats.tombstones,
            bytes: stats.bytes_live,
            cmd_get: c.cmd_get.get(),
            get_hits: c.get_hits.get(),
            cmd_set: c.cmd_set.get(),
            cmd_delete: c.cmd_delete.get(),
            repl_applied: c.repl_applied.get(),
            repl_stale: c.repl_stale.get(),
            pulls: c.pulls.get(),
            pull_failures: c.pull_failures.get(),
        }
    }

    /// The shard's inbox loop: adopts handed-off connections, routing snapshots, and runs calls.
    pub async fn run_inbox(self: Rc<Self>) {
        while let Some((from, msg)) = self.ctx.recv().await {
            match msg {
                ShardMsg::Adopt {
                    stream,
                    replication,
                } => {
                    let (stream, buffered) = stream.into_stream();
                    self.clone().serve(stream, buffered, replication);
                }
                ShardMsg::Routing(snapshot) => {
                    self.adopt_routing(*snapshot);
                }
                ShardMsg::Call { id, call } => {
                    let shard = self.clone();
                    runtime::spawn(async move {
                        let answer = shard.clone().answer(call).await;
                        let _ = shard
                            .ctx
                            .send_to(from, ShardMsg::Answer { id, answer })
                            .await;
                    });
                }
                ShardMsg::Answer { id, answer } => {
                    if let Some(slot) = self.pending.borrow_mut().remove(&id) {
                        let _ = slot.try_send(answer);
                    }
                }
            }
        }
    }

    /// Reads the hello of a connection this shard accepted and serves it here or hands it over.
    pub async fn route_accepted(self: Rc<Self>, mut stream: Stream) {
        let (hello, buffered) = match read_hello(&mut stream).await {
            Ok(read) => read,
            Err(_) => return,
        };
        let replication = hello
            .as_ref()
            .is_some_and(|h: &Hello| h.peer.starts_with(REPLICATION_PEER));
        let target = hello
            .and_then(|h| h.target_shard)
            .map(|s| s as usize)
            .filter(|&s| s < self.count);
        match target {
            Some(to) if to != self.id => match HandedOffStream::new(stream, buffered) {
                Ok(stream) => {
                    let moved = ShardMsg::Adopt {
                        stream,
                        replication,
                    };
                    if let Err(e) = self.ctx.send_to(to, moved).await {
                        crate::warn!("handing a connection to shard {to} failed: {e}");
                    }
                }
                Err(e) => {
                    crate::warn!("handing a connection to shard {to} failed: {e}");
                }
            },
            _ => self.serve(stream, buffered, replication),
        }
    }

    /// Serves a connection on this shard until it closes or the server shuts down.
    pub fn serve(self: Rc<Self>, stream: Stream, buffered: Vec<u8>, replication: bool) {
        let stop = self.ctx.shutdown_signal();
        let shard = self;
        runtime::spawn(async move {
            let served = async {
                if replication {
                    serve_frames(stream, buffered, move |id, payload, responder| {
                        super::replication::serve_frame(&shard, id, payload, responder)
                    })
                    .await
                } else {
                    serve_frames(stream, buffered, move |id, payload, responder| {
                        super::data::serve_frame(&shard, id, payload, responder)
                    })
                    .await
                }
            };
            let _ = future::or(served, async {
                stop.wait().await;
                Ok(())
            })
            .await;
        });
    }
}

/// Whether a rebalance phase is a copy (true) or a drop (false); `Phase` itself has no `Hash`.
pub(crate) fn is_copy(phase: Phase) -> bool {
    phase == Phase::Copying
}
