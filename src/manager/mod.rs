//! kumo-manager: membership and routing, never on the data path.
//!
//! The manager is one shard (it is not on the data path, so one core is plenty). It owns a
//! [`Membership`](crate::cluster::membership::Membership) state machine and feeds it the messages it
//! receives and a tick every [`TICK`]; what the machine decides becomes the *routing snapshot* that
//! servers receive in answer to their keepalives and gateways in answer to their polls. Distribution
//! is pull-based on purpose: a server or gateway that missed a change, restarted, or talked to the
//! other manager of a pair converges on its next poll, with no push to lose.

mod service;

pub use service::ManagerService;

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use crate::cluster::membership::MembershipConfig;
use crate::rpc::messages::{ManagerRequest, ManagerResponse};
use crate::rpc::{read_hello, serve_connection};
use crate::runtime::{
    self, Listener, Runtime, RuntimeConfig, RuntimeError, ShardContext, Shutdown,
};

/// How often the manager advances time (fault detection, automatic replace).
pub const TICK: Duration = Duration::from_millis(250);

/// Settings of one manager.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// The address other nodes use to reach this manager (`-l`).
    pub listen: SocketAddr,
    /// The other manager of the pair (`-p`).
    pub partner: Option<SocketAddr>,
    pub membership: MembershipConfig,
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
    let service = Rc::new(ManagerService::new(config.membership.clone()));
    crate::info!("kumo-manager listening on {}", config.listen);
    if let Some(partner) = config.partner {
        crate::info!("partner manager {partner} (pair synchronisation is not implemented yet)");
    }
    let stop = ctx.shutdown_signal();
    let ticker = service.clone();
    let tick_stop = stop.clone();
    runtime::spawn(async move {
        while !tick_stop.is_fired() {
            runtime::sleep(TICK).await;
            ticker.tick();
        }
    });
    while let Some(mut stream) = runtime::accept_until(&listener, &stop).await {
        let service = service.clone();
        runtime::spawn(async move {
            let (_hello, buffered) = read_hello(&mut stream).await?;
            serve_connection(stream, buffered, move |request: ManagerRequest| {
                let response: ManagerResponse = service.handle(request);
                async move { Ok::<_, String>(response) }
            })
            .await
        });
    }
}
