//! Shard 0's link to the managers: keepalives, routing adoption, and rebalance phases.
//!
//! Every [`KEEPALIVE_INTERVAL`], shard 0 sends `KeepAlive { addr, stream_port, shards,
//! routing_version }` to every manager (`-m` and `-p`), where `routing_version` is the epoch of the
//! snapshot it holds. A manager with a newer snapshot answers `Routing(snapshot)`; shard 0 adopts it
//! and sends it to every other shard over the mesh. A manager that is down costs one failed call
//! per round and a warning when it goes away; the server keeps serving with the snapshot it has.
//!
//! When the snapshot's rebalance is in a phase this server has not finished (its own record of done
//! `(target, phase)` pairs wins over the snapshot's `waiting` list, which can be stale), shard 0 runs
//! the phase on every shard in the background and then sends `PhaseDone` to every manager. Until a
//! manager's snapshot stops listing this server as waiting, `PhaseDone` is sent again every round,
//! which is harmless (the manager ignores a repeat) and covers a lost message or a manager restart.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::future;
use glommio::channels::local_channel::{self, LocalSender};

use super::shard::{is_copy, Shard, ShardAnswer, ShardCall, ShardMsg};
use crate::rpc::messages::{ManagerRequest, ManagerResponse, RoutingSnapshot};
use crate::rpc::{ClientConfig, RpcClient};
use crate::runtime;

/// How often keepalives go to each manager.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_millis(500);

type ManagerClient = RpcClient<ManagerRequest, ManagerResponse>;

/// Rebalance bookkeeping of shard 0.
#[derive(Default)]
struct PhaseState {
    /// `(target, copy?)` phases finished by every shard.
    done: RefCell<Vec<(u64, bool)>>,
    running: Cell<Option<(u64, bool)>>,
}

/// Runs until shutdown. Call on shard 0 only.
pub(crate) async fn run(shard: Rc<Shard>) {
    let clients: Vec<ManagerClient> = shard
        .config
        .managers
        .iter()
        .map(|&addr| {
            let config = ClientConfig {
                call_timeout: Duration::from_secs(1),
                connect_timeout: Duration::from_millis(500),
                ..ClientConfig::default()
            };
            RpcClient::new(addr, config)
        })
        .collect();
    // One loop per manager, so a manager that hangs never delays the keepalives to the other.
    // A new snapshot wakes the rebalance driver at once instead of at its next round.
    let (wake, woken) = local_channel::new_bounded::<()>(1);
    let wake = Rc::new(wake);
    for client in &clients {
        runtime::spawn(keepalive_loop(shard.clone(), client.clone(), wake.clone()));
    }
    let phases = Rc::new(PhaseState::default());
    let stop = shard.ctx.shutdown_signal();
    while !stop.is_fired() {
        drive_rebalance(&shard, &clients, &phases).await;
        let _ = future::or(
            async {
                woken.recv().await;
            },
            pause(&stop),
        )
        .await;
    }
}

/// Sleeps one keepalive interval, or less if shutdown comes first.
async fn pause(stop: &crate::runtime::ShutdownSignal) {
    let _ = future::or(
        async {
            runtime::sleep(KEEPALIVE_INTERVAL).await;
        },
        stop.wait(),
    )
    .await;
}

async fn keepalive_loop(shard: Rc<Shard>, client: ManagerClient, wake: Rc<LocalSender<()>>) {
    let stop = shard.ctx.shutdown_signal();
    let mut reachable = true;
    while !stop.is_fired() {
        let keepalive = ManagerRequest::KeepAlive {
            addr: shard.me(),
            stream_port: shard.config.stream_port,
            shards: u16::try_from(shard.count).unwrap_or(u16::MAX),
            routing_version: shard.routing().epoch,
            progress: None,
        };
        match client.call(&keepalive).await {
            Ok(ManagerResponse::Routing(snapshot)) => {
                reachable = true;
                if adopt_everywhere(&shard, snapshot).await {
                    // Full means a wake-up is pending already.
                    let _ = wake.try_send(());
                }
            }
            Ok(ManagerResponse::Error(e)) => {
                crate::warn!("manager {}: {e}", client.addr());
            }
            Ok(_) => reachable = true,
            Err(e) => {
                if reachable {
                    crate::warn!("manager {} unreachable: {e}", client.addr());
                }
                reachable = false;
            }
        }
        pause(&stop).await;
    }
}

/// Adopts a newer snapshot on shard 0 and passes it to every other shard; false if it was not newer.
async fn adopt_everywhere(shard: &Rc<Shard>, snapshot: RoutingSnapshot) -> bool {
    if !shard.adopt_routing(snapshot.clone()) {
        return false;
    }
    crate::info!(
        "routing epoch {}: write table {} ({} nodes), read table {}{}",
        snapshot.epoch,
        snapshot.write.version(),
        snapshot.write.nodes().len(),
        snapshot.read.version(),
        match &snapshot.rebalance {
            Some(r) => format!(", rebalance {} {:?}", r.target, r.phase),
            None => String::new(),
        }
    );
    for to in 1..shard.count {
        let msg = ShardMsg::Routing(Box::new(snapshot.clone()));
        if let Err(e) = shard.ctx.send_to(to, msg).await {
            crate::warn!("passing routing to shard {to}: {e}");
        }
    }
    true
}

async fn drive_rebalance(shard: &Rc<Shard>, managers: &[ManagerClient], phases: &Rc<PhaseState>) {
    let routing = shard.routing();
    let Some(rebalance) = &routing.rebalance else {
        return;
    };
    let me = shard.me();
    if !rebalance.waiting.contains(&me) {
        return;
    }
    let key = (rebalance.target, is_copy(rebalance.phase));
    if phases.done.borrow().contains(&key) {
        report_done(managers, shard, rebalance.target).await;
        return;
    }
    if phases.running.get() == Some(key) {
        return;
    }
    phases.running.set(Some(key));
    let (shard, phases, managers) = (shard.clone(), phases.clone(), managers.to_vec());
    runtime::spawn(async move {
        let phase = if key.1 { "copy" } else { "drop" };
        crate::info!("rebalance {}: starting the {phase} phase", key.0);
        let snapshot = routing.clone();
        let answers = shard
            .call_all(|| ShardCall::Phase(Box::new((*snapshot).clone())))
            .await;
        let mut failed = None;
        for answer in answers {
            match answer {
                Ok(ShardAnswer::Done(Ok(()))) => {}
                Ok(ShardAnswer::Done(Err(e))) | Err(e) => failed = Some(e),
                Ok(_) => failed = Some("internal: wrong answer from shard".into()),
            }
        }
        phases.running.set(None);
        match failed {
            // Retried on a later keepalive round.
            Some(e) => {
                crate::warn!("rebalance {}: phase failed, will retry: {e}", key.0);
            }
            None => {
                phases.done.borrow_mut().push(key);
                report_done(&managers, &shard, key.0).await;
            }
        }
    });
}

async fn report_done(managers: &[ManagerClient], shard: &Shard, target: u64) {
    for client in managers {
        let request = ManagerRequest::PhaseDone {
            addr: shard.me(),
            target,
        };
        if let Err(e) = client.call(&request).await {
            crate::info!("PhaseDone to {}: {e}", client.addr());
        }
    }
}
