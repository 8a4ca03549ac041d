//! kumo-server: stores data, coordinates the writes of the keys it owns, and replicates them.
//!
//! # Shape
//!
//! One shard per selected CPU ([`crate::runtime::Runtime`]). Shard `i` owns the storage engine in
//! `PATH/shard-i` (see [`store`]), its connections, a hybrid logical clock and its copy of the
//! routing snapshot; a key lives on shard `ring::core_of(hash, shards)`. Every shard binds the
//! server address with SO_REUSEPORT; connections are bound to a shard by their hello and requests
//! for another core are forwarded over the mesh (see [`shard`]).
//!
//! - [`data`]: gateway requests (get, the write ops, stats);
//! - [`replication`]: replicating writes to the other owners and applying replicas;
//! - [`pull`]: a conditional write at a key's new coordinator during a rebalance's copy phase
//!   first fetches the key from its old owners;
//! - [`gateway`]: the memcached ports (`-t/-b/-c`), the gateway running inside the server;
//! - [`backlog`]: writes a live replica has not acknowledged yet, retried in the background;
//! - [`manager_link`]: keepalives to the managers, routing adoption and the rejoin rule, rebalance
//!   phases, backups;
//! - [`rebalance`]: a shard's copy and drop work during a rebalance;
//! - [`stream`]: the stream port (`-L`) where rebalance copies arrive;
//! - [`flush`]: `flush_all` with one flush version across the cluster;
//! - [`backup`]: online backups;
//! - [`maintenance`]: the cluster side's calls between shards, and the status for kumostat;
//! - [`store`]: the data directory.
//!
//! # Contract with gateways and peers
//!
//! - A gateway connection may open with `Hello { target_shard: Some(core_of(hash, shards)), .. }`;
//!   without a hello the accepting shard serves it and forwards each request to the key's core.
//! - `NotOwner { routing_version }` carries the epoch of the snapshot this server routes with.
//! - A peer server opens replication connections with a hello whose `peer` starts with
//!   [`shard::REPLICATION_PEER`]; they carry `ReplicationRequest`s on the same port as data.
//! - `Stats` answers for the whole server (all shards summed, plus `shardN_items`).
//!
//! # Versions and garbage
//!
//! A coordinator stamps a write above both its clock and the key's stored version, and every
//! version received (records, snapshot epochs) advances the receiving shard's clock. Tombstones are
//! collected every `--gc-interval` only below the snapshot's `gc_horizon` and once older than
//! `-gX` (see [`store::collect_garbage`]).
//!
//! # Known limits
//!
//! - A delayed `flush_all` is kept in memory only.
//! - A write whose replication fails is reported as an error but stays on the copies that took it
//!   (indefinite, as in kumofs); the gateway's retry writes a newer version, and the backlog
//!   delivers the failed one to the replica later (it loses to the newer one there).
//! - The records a rejoining server drops below the GC horizon are dropped from its index; if its
//!   index snapshot were lost before the next one is written, a full log scan could bring them
//!   back.
//!
//! # Shutdown
//!
//! SIGINT/SIGTERM stop the listeners and connections; every shard then fsyncs its engine and
//! writes its index snapshot, so the next start is fast and loses nothing acknowledged.

pub mod backlog;
pub mod backup;
pub mod data;
mod fanout;
pub mod flush;
mod gateway;
pub mod maintenance;
pub mod manager_link;
pub mod pull;
pub mod rebalance;
pub mod replication;
pub mod shard;
pub mod store;
pub mod stream;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use crate::runtime::{
    self, Listener, LocalListener, Runtime, RuntimeConfig, ShardContext, Shutdown,
};
use crate::storage::{Durability, Engine, ShardStore};
use shard::{Shard, ShardMsg};

/// Default data port (`-l`).
pub const DEFAULT_PORT: u16 = 19800;
/// Default stream port for rebalance copies (`-L`).
pub const DEFAULT_STREAM_PORT: u16 = 19900;

/// Settings of one server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to bind and the identity of this server in the ring (`-l`).
    pub listen: SocketAddr,
    /// Managers to register with (`-m`, `-p`).
    pub managers: Vec<SocketAddr>,
    /// Port of the stream listener on the `-l` IP, announced to the managers (`-L`).
    pub stream_port: u16,
    /// Store directory (`-s`).
    pub store: PathBuf,
    /// CPUs to run one shard on each; `None` = every CPU of the process.
    pub cpus: Option<Vec<usize>>,
    pub durability: Durability,
    /// Tombstones younger than this are never collected (`-gX`, seconds).
    pub tombstone_min_age: u32,
    /// The memcached ports this server serves itself (`-t/-b/-c`), with the gateway settings;
    /// `None`: clients go through a kumo-gateway.
    pub gateway: Option<crate::gateway::GatewayConfig>,
    /// Rebalance copies are paced to this many bytes per second per server (0 = unlimited).
    pub copy_rate: u64,
    /// How often tombstones and other garbage are collected.
    pub gc_interval: Duration,
    /// Also take connections from gateways and servers on this host over the Unix socket named
    /// after `listen` (see `runtime::net`); off with `--no-local-socket`.
    pub local_socket: bool,
}

/// Opens the store, starts the shards and serves until SIGINT/SIGTERM (or `shutdown`).
/// Every error is a sentence for the operator.
pub fn run(config: ServerConfig, shutdown: Shutdown) -> Result<(), String> {
    // Probe the memcached ports once from here, so "address in use" is one clear error.
    for (addr, _) in config.gateway.iter().flat_map(|g| &g.listen) {
        drop(
            std::net::TcpListener::bind(addr)
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?,
        );
    }
    let cpus = match &config.cpus {
        Some(cpus) => cpus.clone(),
        None => runtime::available_cpus().map_err(|e| e.to_string())?,
    };
    let engines = store::open_store(&config.store, cpus.len(), config.durability)?;
    let engines: Arc<Mutex<Vec<Option<Engine>>>> =
        Arc::new(Mutex::new(engines.into_iter().map(Some).collect()));
    let failure: Arc<Mutex<Option<String>>> = Arc::default();
    let runtime_config = RuntimeConfig {
        name: "kumo-server".into(),
        cpus: Some(cpus),
        ..RuntimeConfig::default()
    };
    let failed = failure.clone();
    let runtime = Runtime::start(
        runtime_config,
        shutdown,
        move |ctx: ShardContext<ShardMsg>| {
            let engine = engines
                .lock()
                .ok()
                .and_then(|mut all| all.get_mut(ctx.id()).and_then(Option::take));
            shard_main(config.clone(), engine, ctx, failed.clone())
        },
    )
    .map_err(|e| e.to_string())?;
    let joined = runtime.join().map_err(|e| e.to_string());
    if let Some(why) = failure.lock().ok().and_then(|mut f| f.take()) {
        return Err(why);
    }
    joined
}

async fn shard_main(
    config: ServerConfig,
    engine: Option<Engine>,
    ctx: ShardContext<ShardMsg>,
    failure: Arc<Mutex<Option<String>>>,
) {
    let fail = |why: String| {
        if let Ok(mut slot) = failure.lock() {
            slot.get_or_insert(why);
        }
        ctx.shutdown_all();
    };
    let Some(engine) = engine else {
        fail(format!("internal: no engine for shard {}", ctx.id()));
        return;
    };
    let listener = match Listener::bind(config.listen) {
        Ok(listener) => listener,
        Err(e) => {
            fail(format!("cannot listen on {}: {e}", config.listen));
            return;
        }
    };
    let stream_addr = SocketAddr::new(config.listen.ip(), config.stream_port);
    let stream_listener = match Listener::bind(stream_addr) {
        Ok(listener) => listener,
        Err(e) => {
            fail(format!(
                "cannot listen on the stream port {stream_addr} (-L): {e}"
            ));
            return;
        }
    };
    let store = ShardStore::new(engine);
    let maintenance = store.spawn_maintenance();
    let shard = Rc::new(Shard::new(config, store, ctx));
    shard.observe_version(store::load_clock(&shard.config.store, shard.id));
    if shard.id == 0 {
        crate::info!(
            "kumo-server {} listening with {} shards, store {}",
            shard.me(),
            shard.count,
            shard.config.store.display()
        );
        runtime::spawn(manager_link::run(shard.clone()));
    }
    runtime::spawn(shard.clone().run_inbox());
    runtime::spawn(housekeeping(shard.clone()));
    runtime::spawn(stream::serve(shard.clone(), stream_listener));
    if let Some(gateway) = &shard.config.gateway {
        if let Err(why) = gateway::start(&shard, gateway) {
            if let Ok(mut slot) = failure.lock() {
                slot.get_or_insert(why);
            }
            shard.ctx.shutdown_all();
        }
    }
    let stop = shard.ctx.shutdown_signal();
    if shard.id == 0 && shard.config.local_socket {
        serve_local(&shard, &listener);
    }
    while let Some(stream) = runtime::accept_until(&listener, &stop).await {
        runtime::spawn(shard.clone().route_accepted(stream.into()));
    }
    drop(listener);
    if let Err(e) = shard.store.write_snapshot().await {
        crate::warn!("shard {}: final sync failed: {e}", shard.id);
    }
    save_clock(&shard);
    drop(maintenance);
    if shard.id == 0 {
        crate::info!("kumo-server {} stopped", shard.me());
    }
}

/// Takes connections from this host on the Unix socket named after the TCP listener's address
/// (one shard listens; the hello of each connection picks its shard, as over TCP). Without it,
/// everything still works over TCP, so a failure to listen is only logged.
fn serve_local(shard: &Rc<Shard>, tcp: &Listener) {
    let local = tcp.local_addr().and_then(LocalListener::bind);
    let local = match local {
        Ok(local) => local,
        Err(e) => {
            crate::warn!("no local socket, connections from this host use TCP: {e}");
            return;
        }
    };
    let shard = shard.clone();
    runtime::spawn(async move {
        let stop = shard.ctx.shutdown_signal();
        while let Some(stream) = runtime::accept_local_until(&local, &stop).await {
            runtime::spawn(shard.clone().route_accepted(stream));
        }
    });
}

/// Saves the clock every [`CLOCK_SAVE_INTERVAL`] and collects garbage every `--gc-interval`:
/// tombstones below the snapshot's GC horizon and older than `-gX`, expired and flushed records
/// (see [`store::collect_garbage`]).
async fn housekeeping(shard: Rc<Shard>) {
    let stop = shard.ctx.shutdown_signal();
    let tick = CLOCK_SAVE_INTERVAL.min(shard.config.gc_interval);
    let mut last_save = std::time::Instant::now();
    let mut last_gc = std::time::Instant::now();
    loop {
        let _ = futures_lite::future::or(
            async {
                runtime::sleep(tick).await;
            },
            stop.wait(),
        )
        .await;
        if stop.is_fired() {
            return;
        }
        if last_save.elapsed() >= CLOCK_SAVE_INTERVAL {
            save_clock(&shard);
            last_save = std::time::Instant::now();
        }
        if last_gc.elapsed() >= shard.config.gc_interval {
            last_gc = std::time::Instant::now();
            let horizon = shard.routing().gc_horizon;
            let min_age = shard.config.tombstone_min_age;
            if let Err(e) = store::collect_garbage(&mut shard.store.engine(), horizon, min_age) {
                crate::warn!("shard {}: garbage collection failed: {e}", shard.id);
            }
        }
    }
}

/// How often the clock is saved; must stay well under `store::CLOCK_SAVE_MARGIN_MS`.
const CLOCK_SAVE_INTERVAL: Duration = Duration::from_secs(10);
/// Default of `--gc-interval`.
pub const DEFAULT_GC_INTERVAL: Duration = Duration::from_secs(60);
/// Default of `--copy-rate`, in bytes per second.
pub const DEFAULT_COPY_RATE: u64 = 32 << 20;

fn save_clock(shard: &Shard) {
    if let Err(e) = store::save_clock(&shard.config.store, shard.id, shard.clock_last()) {
        crate::warn!("shard {}: cannot save the clock: {e}", shard.id);
    }
}

/// Polls every future concurrently and returns their outputs in order.
pub(crate) async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pending: Vec<Option<Pin<Box<F>>>> =
        futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all_done = true;
        for (slot, output) in pending.iter_mut().zip(outputs.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => {
                        *output = Some(value);
                        *slot = None;
                    }
                    Poll::Pending => all_done = false,
                }
            }
        }
        if all_done {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}
