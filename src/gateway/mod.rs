//! kumo-gateway: speaks the memcached protocols to applications and routes every request to the
//! kumo-server that owns its key. The gateway stores nothing; it owns the client connections, the
//! routing snapshot it polls from the manager(s), and the RPC connections to the servers.
//!
//! # Shape
//!
//! One shard per CPU ([`run`]). Every shard binds every protocol port with SO_REUSEPORT, so the kernel
//! spreads client connections over the shards, and a connection then lives on its shard for good.
//! Each shard has its own [`router::Router`]: a copy of the routing snapshot (polled every
//! [`router::POLL_INTERVAL`], and at once after a `NotOwner` answer or a transport error) and one
//! lazily created [`Pipe`](crate::rpc::Pipe) per (server, server shard). A key is sent on the
//! connection bound to the server core that owns it (`ring::core_of`), so the server never hops
//! cores, and all requests of all client connections of this shard to one server shard share that
//! connection and coalesce into one write per executor turn. Nothing is shared between gateway
//! shards.
//!
//! # Per connection
//!
//! [`conn`] reads into a buffer, starts every complete request at once ([`dispatch`]), and writes
//! every reply that is ready with one write: text and binary answer in request order, async binary
//! (`-c`, "cloudy") writes answers as they complete. The connection reads nothing more until the
//! batch is answered, so a client that never reads its answers stops being read from (memory per
//! connection stays bounded by one batch). The common requests cost no future, task, timer or
//! allocation ([`batch`]); the others, and retries, run as futures ([`exec`]).
//!
//! # Inside a kumo-server
//!
//! The same code serves the memcached ports of `kumo-server -t/-b/-c` ([`serve_embedded`]): there a
//! [`LocalServer`] answers the keys of the server's own shard from its engine, with no RPC at all,
//! and the keys of its other shards over the server's own mesh; only keys of other servers go out
//! on pipes.
//!
//! # Semantics
//!
//! memcached 1.6 as a client sees it: flags and expiry always work (kumofs's `-F`/`-E` are accepted
//! no-ops), expiry is converted to absolute unix seconds before it is sent (and the time left is
//! shown from the absolute expiry the server answers with, meta `t`), the CAS token is the version
//! the server returns, deletes of missing keys answer `NOT_FOUND`. Every command is one call per
//! key: the coordinator applies a read-modify-write (an incr/decr with a CAS, an initial value or a
//! new expiry, a CAS append or delete, a get-and-touch) in one step, so the requests of one
//! connection take effect in request order (see [`batch`], "Order"). Reads try the live owners of
//! the read table in order and fail over on errors (during a rebalance, a key that moves is asked
//! of its write coordinator first, see [`dispatch::read_from`]); writes go to the coordinator of
//! the write table and are retried with backoff after a routing refresh, within bounded time.
//! Where kumofs still answers differently from memcached, and why: `src/protocol/CONFORMANCE.md`.

mod batch;
mod conn;
mod dispatch;
mod exec;
mod expiry;
mod input;
mod router;
mod stats;

pub use expiry::absolute_exptime;
pub use router::{Router, POLL_INTERVAL};
pub use stats::Counters;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use crate::protocol::Limits;
use crate::rpc::data_codec::DataResponseRef;
use crate::rpc::messages::{DataRequest, DataResponse, RoutingSnapshot};
use crate::runtime::{
    self, Listener, Runtime, RuntimeConfig, RuntimeError, ShardContext, Shutdown, ShutdownSignal,
};

/// Which protocol a listening port speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortKind {
    /// `-t`: text, meta and (detected from the first byte, as memcached does) binary.
    Text,
    /// `-b`: binary (text detected too), replies in request order.
    Binary,
    /// `-c`: binary framing, replies written as each completes (matched by opaque).
    AsyncBinary,
}

/// Everything a gateway needs; built by `kumo-gateway` from its command line.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// `-m` and `-p`: the manager(s) to poll for routing.
    pub managers: Vec<SocketAddr>,
    /// The ports to serve, with their protocol.
    pub listen: Vec<(SocketAddr, PortKind)>,
    /// CPUs to run one shard on each (`--cpus`); `None` = all.
    pub cpus: Option<Vec<usize>>,
    /// Decoder limits (`-I` sets `max_item`).
    pub limits: Limits,
    /// `-G`: rounds over a key's live owners before a get fails.
    pub get_retry: u32,
    /// `-S`: tries of a store (including incr/decr/touch) before it fails.
    pub set_retry: u32,
    /// `-D`: tries of a delete before it fails.
    pub delete_retry: u32,
    /// `-rn`: a routing refresh is forced after this many consecutive errors of one request (an
    /// error that says the routing is stale, `NotOwner`, forces it at once).
    pub renew_threshold: u32,
    /// `-Ad`: answer deletes before the replicas acknowledged.
    pub async_delete: bool,
    /// `-k`: prefix added to every key (hashed and stored), invisible to clients.
    pub key_prefix: Vec<u8>,
    /// Time limit of one server call (`-Ci` scales it in kumofs; here it is fixed per call kind).
    pub call_timeout: Duration,
    /// Upper bound of the time one write spends retrying.
    pub write_deadline: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            managers: Vec::new(),
            listen: Vec::new(),
            cpus: None,
            limits: Limits::default(),
            get_retry: 5,
            set_retry: 20,
            delete_retry: 20,
            renew_threshold: 4,
            async_delete: false,
            key_prefix: Vec::new(),
            call_timeout: Duration::from_secs(3),
            write_deadline: Duration::from_secs(10),
        }
    }
}

/// The kumo-server a gateway shard runs inside (`kumo-server -t/-b/-c`), as the gateway sees it.
pub trait LocalServer {
    /// The server's address in the ring: keys routed there are served in-process.
    fn addr(&self) -> SocketAddr;
    /// The server shard this gateway shard runs on.
    fn shard(&self) -> usize;
    /// The server's routing snapshot: the gateway routes with it (and polls no manager itself).
    fn routing(&self) -> Rc<RoutingSnapshot>;
    /// Serves a get of a key owned by this very shard from its engine, now, and hands the answer
    /// to `answer`. The caller found this server among the key's owners in [`Self::routing`].
    /// `newest`: answer as to a `DataRequest::GetNewest` (`Absent` when no record is held).
    /// Returns false, without answering, when the get cannot be served now (the server is
    /// fetching the key for a write sent before it): the caller then sends it with [`Self::call`].
    fn get_now(
        &self,
        key: &[u8],
        newest: bool,
        answer: &mut dyn FnMut(DataResponseRef<'_>),
    ) -> bool;
    /// Any data request to this server, served in-process: on the key's shard (over the mesh when
    /// that is another one), with the server's checks, versioning and replication.
    fn call(&self, request: DataRequest) -> Pin<Box<dyn Future<Output = DataResponse>>>;
}

/// Per-shard state shared by every connection of the shard.
pub(crate) struct Shard {
    pub config: Rc<GatewayConfig>,
    pub router: Router,
    pub counters: Counters,
    pub started_unix: u64,
    /// Set when the gateway runs inside a kumo-server.
    pub local: Option<Rc<dyn LocalServer>>,
}

/// Runs the gateway until `shutdown` fires (SIGINT/SIGTERM when the caller installed the handler).
///
/// Fails early with a clear error when a port cannot be bound or no shard can start.
pub fn run(config: GatewayConfig, shutdown: Shutdown) -> Result<(), RuntimeError> {
    if config.managers.is_empty() {
        return Err(RuntimeError::Io("no manager address given".into()));
    }
    if config.listen.is_empty() {
        return Err(RuntimeError::Io(
            "at least one of -t, -b or -c is required".into(),
        ));
    }
    // Probe every port once from here, so "address in use" is one clear error at start-up.
    for (addr, _) in &config.listen {
        let probe = std::net::TcpListener::bind(*addr)
            .map_err(|e| RuntimeError::Io(format!("cannot listen on {addr}: {e}")));
        drop(probe?);
    }
    let runtime_config = RuntimeConfig {
        name: "kumo-gateway".into(),
        cpus: config.cpus.clone(),
        ..Default::default()
    };
    let started_unix = expiry::now_unix();
    let runtime = Runtime::start(runtime_config, shutdown, move |ctx: ShardContext<()>| {
        let config = Rc::new(config.clone());
        async move { serve_shard(config, ctx, started_unix).await }
    })?;
    runtime.join()
}

async fn serve_shard(config: Rc<GatewayConfig>, ctx: ShardContext<()>, started_unix: u64) {
    let stop = ctx.shutdown_signal();
    let mut listeners = Vec::new();
    for &(addr, kind) in &config.listen {
        match Listener::bind(addr) {
            Ok(listener) => listeners.push((listener, kind)),
            Err(e) => {
                crate::warn!("gateway shard {}: cannot listen on {addr}: {e}", ctx.id());
                ctx.shutdown_all();
                return;
            }
        }
    }
    if ctx.id() == 0 {
        for (addr, kind) in &config.listen {
            crate::info!("kumo-gateway listening on {addr} ({kind:?})");
        }
    }
    start_shard(config, ctx.id(), None, listeners, &stop, started_unix);
    stop.wait().await;
    // Give connection tasks one poll interval to see the signal and close their sockets.
    runtime::sleep(Duration::from_millis(50)).await;
}

/// Serves the memcached ports of one shard of a kumo-server (`-t/-b/-c`): `listeners` are bound on
/// this shard already; `local` is the server itself. Returns at once; the work runs in tasks of the
/// current shard until `stop` fires.
pub fn serve_embedded(
    config: GatewayConfig,
    shard_id: usize,
    local: Rc<dyn LocalServer>,
    listeners: Vec<(Listener, PortKind)>,
    stop: &ShutdownSignal,
) {
    let started_unix = expiry::now_unix();
    start_shard(
        Rc::new(config),
        shard_id,
        Some(local),
        listeners,
        stop,
        started_unix,
    );
}

/// Starts a gateway shard's tasks: the routing poll and one accept loop per listener.
fn start_shard(
    config: Rc<GatewayConfig>,
    shard_id: usize,
    local: Option<Rc<dyn LocalServer>>,
    listeners: Vec<(Listener, PortKind)>,
    stop: &ShutdownSignal,
    started_unix: u64,
) {
    let router = match &local {
        None => Router::new(config.managers.clone(), shard_id),
        Some(local) => {
            let local = local.clone();
            Router::following(Rc::new(move || local.routing()), shard_id)
        }
    };
    let shard = Rc::new(Shard {
        router,
        config,
        counters: Counters::default(),
        started_unix,
        local,
    });
    if shard.local.is_none() {
        let polling = shard.clone();
        let poll_stop = stop.clone();
        runtime::spawn(async move { polling.router.poll_managers(&poll_stop).await });
    }
    for (listener, kind) in listeners {
        let shard = shard.clone();
        let stop = stop.clone();
        runtime::spawn(async move {
            while let Some(stream) = runtime::accept_until(&listener, &stop).await {
                let shard = shard.clone();
                let stop = stop.clone();
                runtime::spawn(async move { conn::serve_client(stream, kind, shard, stop).await });
            }
        });
    }
}
