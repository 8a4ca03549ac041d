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
//! - [`data`]: gateway requests (get, the write ops, flush_all, stats);
//! - [`replication`]: replicating writes to the other owners and applying replicas;
//! - [`manager_link`]: keepalives to the managers, routing adoption, rebalance phases;
//! - [`rebalance`]: a shard's copy and drop work during a rebalance.
//!
//! # Shutdown
//!
//! SIGINT/SIGTERM stop the listeners and connections; every shard then fsyncs its engine and
//! writes its index snapshot, so the next start is fast and loses nothing acknowledged.

pub mod data;
pub mod manager_link;
pub mod rebalance;
pub mod replication;
pub mod shard;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use crate::runtime::{self, Listener, Runtime, RuntimeConfig, ShardContext, Shutdown};
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
    /// Announced to the managers (`-L`). Copies currently travel on the data port.
    pub stream_port: u16,
    /// Store directory (`-s`).
    pub store: PathBuf,
    /// CPUs to run one shard on each; `None` = every CPU of the process.
    pub cpus: Option<Vec<usize>>,
    pub durability: Durability,
    /// Tombstones younger than this are never collected (`-gN`, seconds).
    pub tombstone_min_age: u32,
}

/// Opens the store, starts the shards and serves until SIGINT/SIGTERM (or `shutdown`).
/// Every error is a sentence for the operator.
pub fn run(config: ServerConfig, shutdown: Shutdown) -> Result<(), String> {
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
    let store = ShardStore::new(engine);
    let maintenance = store.spawn_maintenance();
    let min_age = config.tombstone_min_age;
    let shard = Rc::new(Shard::new(config, store, ctx));
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
    runtime::spawn(collect_tombstones(shard.clone(), min_age));
    let stop = shard.ctx.shutdown_signal();
    while let Some(stream) = runtime::accept_until(&listener, &stop).await {
        runtime::spawn(shard.clone().route_accepted(stream));
    }
    drop(listener);
    if let Err(e) = shard.store.write_snapshot().await {
        crate::warn!("shard {}: final sync failed: {e}", shard.id);
    }
    drop(maintenance);
    if shard.id == 0 {
        crate::info!("kumo-server {} stopped", shard.me());
    }
}

/// Asks the engine to collect old tombstones now and then (`-gN` is the minimum age).
async fn collect_tombstones(shard: Rc<Shard>, min_age: u32) {
    let stop = shard.ctx.shutdown_signal();
    while !stop.is_fired() {
        let _ = futures_lite::future::or(
            async {
                runtime::sleep(Duration::from_secs(60)).await;
            },
            stop.wait(),
        )
        .await;
        if stop.is_fired() {
            return;
        }
        if let Err(e) = shard.store.engine().gc_tombstones(min_age) {
            crate::warn!("shard {}: tombstone collection failed: {e}", shard.id);
        }
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
