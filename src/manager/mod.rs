//! kumo-manager: membership and routing, never on the data path.
//!
//! The manager is one shard (it is not on the data path, so one core is plenty). It owns a
//! [`crate::cluster::membership::Membership`] state machine and feeds it the requests
//! it receives ([`service`]), a tick every [`TICK`], and the partner's state ([`partner`]); what
//! the machine decides becomes the *routing snapshot* that servers receive in answer to their
//! keepalives and gateways in answer to their polls, and is written to the state file ([`store`])
//! before it is served. Distribution is pull-based on purpose: a server or gateway that missed a
//! change, restarted, or talked to the other manager of a pair converges on its next poll, with no
//! push to lose.

mod partner;
mod service;
pub mod store;

pub use service::ManagerService;
pub use store::StateStore;

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::channels::local_channel;

use crate::cluster::membership::{Membership, MembershipConfig};
use crate::cluster::state::ClusterState;
use crate::rpc::{read_hello, serve_connection, ClientConfig, RpcClient};
use crate::runtime::{
    self, Listener, Runtime, RuntimeConfig, RuntimeError, ShardContext, Shutdown,
};

/// How often the manager advances time (fault detection, automatic replace, horizon).
pub const TICK: Duration = Duration::from_millis(250);
/// A tick this late means the manager itself was not running (see [`Membership::resumed`]).
const STALL: Duration = Duration::from_millis(1000);

/// Settings of one manager.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// The address other nodes use to reach this manager (`-l`).
    pub listen: SocketAddr,
    /// The other manager of the pair (`-p`): its name, the address it listens on.
    pub partner: Option<SocketAddr>,
    /// Where to dial the partner when that is not its name (`--partner-via`: a proxy or an
    /// address translation in between). The pair still knows the partner by `partner`: it is what
    /// the partner calls itself in its syncs, and what decides which manager has priority.
    pub partner_via: Option<SocketAddr>,
    pub membership: MembershipConfig,
    /// Where the state is written on every change.
    pub store: StateStore,
    /// The state read from `store` at start, if there was one.
    pub initial: Option<ClusterState>,
}

/// Runs a manager on `listener` (already bound) until `shutdown` fires.
pub fn run(
    config: ManagerConfig,
    listener: std::net::TcpListener,
    shutdown: Shutdown,
) -> Result<(), RuntimeError> {
    let runtime_config = RuntimeConfig {
        name: "kumo-manager".into(),
        pin: false,
        unpinned_shards: 1,
        ..Default::default()
    };
    let runtime = Runtime::start(runtime_config, shutdown, move |ctx: ShardContext<()>| {
        let config = config.clone();
        let listener = Listener::from_std(&listener);
        async move {
            let listener = match listener {
                Ok(l) => l,
                Err(e) => {
                    crate::warn!("manager: cannot use listener: {e}");
                    ctx.shutdown_all();
                    return;
                }
            };
            serve(config, listener, ctx).await;
        }
    })?;
    runtime.join()
}

async fn serve(config: ManagerConfig, listener: Listener, ctx: ShardContext<()>) {
    let started = Instant::now();
    let service = {
        let now = crate::cluster::membership::Now {
            mono_ms: 0,
            wall_ms: crate::cluster::clock::wall_ms(),
        };
        let membership = match Membership::new(
            config.listen,
            config.partner,
            config.membership.clone(),
            config.initial.clone(),
            now,
        ) {
            Ok(m) => m,
            Err(e) => {
                crate::warn!("manager: cannot use the state: {e}");
                ctx.shutdown_all();
                return;
            }
        };
        let partner = config
            .partner
            .map(|p| partner_client(config.partner_via.unwrap_or(p)));
        ManagerService::new(membership, started, config.store.clone(), partner)
    };
    crate::info!(
        "kumo-manager listening on {}, state file {}",
        config.listen,
        config.store.path().display()
    );
    let stop = ctx.shutdown_signal();
    if let Some(partner_addr) = config.partner {
        let dial = config.partner_via.unwrap_or(partner_addr);
        if dial == partner_addr {
            crate::info!("partner manager {partner_addr}");
        } else {
            crate::info!("partner manager {partner_addr}, reached through {dial}");
        }
        let (waker, woken) = local_channel::new_bounded::<()>(1);
        service.set_sync_waker(waker);
        // Its own connection, so a forwarded command never waits behind a sync or the reverse.
        runtime::spawn(partner::sync_loop(
            service.clone(),
            partner_client(dial),
            woken,
            stop.clone(),
        ));
    }
    let ticker = service.clone();
    let tick_stop = stop.clone();
    runtime::spawn(async move {
        let mut last = Instant::now();
        while !tick_stop.is_fired() {
            runtime::sleep(TICK).await;
            // This manager did not run for a while (the host froze, or the process was stopped):
            // the keepalives of that time wait unread in its sockets, and servers must not be
            // judged down for its own silence.
            let gap = last.elapsed();
            last = Instant::now();
            if gap > STALL {
                ticker.resumed_after_stall(gap);
            }
            ticker.tick();
        }
    });
    while let Some(mut stream) = runtime::accept_until(&listener, &stop).await {
        let service: Rc<ManagerService> = service.clone();
        let conn_stop = stop.clone();
        runtime::spawn(async move {
            let (_hello, buffered) = read_hello(&mut stream).await?;
            let served = serve_connection(stream, buffered, move |request| {
                let service = service.clone();
                async move { Ok::<_, String>(service.handle(request).await) }
            });
            futures_lite::future::or(served, async {
                conn_stop.wait().await;
                Ok(())
            })
            .await
        });
    }
}

/// A client of the partner manager: calls are short, so a partner that went away is noticed fast.
fn partner_client(addr: SocketAddr) -> service::ManagerClient {
    RpcClient::new(
        addr,
        ClientConfig {
            call_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_millis(500),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_millis(500),
            hello: None,
        },
    )
}
