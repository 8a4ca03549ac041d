//! Shard 0's link to the managers: keepalives, routing adoption (with the rejoin rule), rebalance
//! phases and backups.
//!
//! Every [`KEEPALIVE_INTERVAL`], shard 0 sends `KeepAlive { addr, stream_port, shards,
//! routing_version, progress, managers }` to every manager (`-m` and `-p`), where `routing_version`
//! is the epoch of the snapshot it holds, `progress` the rebalance phase it is running, if any, and
//! `managers` how long ago each manager last answered and the write table it offered then: the
//! follower of a manager pair cut off from its partner takes over only when servers lost the
//! partner too (see [`crate::cluster::pair`]). A
//! manager with another epoch answers `Routing(snapshot)`; if that snapshot supersedes the one
//! held (a newer write table, or the same one under a newer epoch: the two sides of a split
//! manager pair may offer different ones), shard 0 adopts it and sends it to every other shard
//! over the mesh. A manager that is down costs one failed call per round and a
//! warning when it goes away; the server keeps serving with the snapshot it has.
//!
//! # Rejoin without resurrection
//!
//! Before adopting a snapshot in which this server is an active member of the write table while it
//! was not one a moment ago (including the first snapshot after a start), shard 0 checks whether it
//! is *returning*: not a live owner under the read table, i.e. a server the coming copy phase will
//! refill. If so, and the GC horizon advanced past the one it last knew as an active member (kept
//! in the store directory), tombstones of deletes it missed may already be collected elsewhere, so
//! every record below the current horizon is dropped on every shard (and made durable) before the
//! snapshot is adopted: its live copies elsewhere are authoritative and the copy phase brings them
//! back. Copies sent under that snapshot wait (`NotReady`) until it is adopted, so nothing copied
//! is dropped. It also adopts the highest flush version of the live servers (a `flush_all` it
//! missed). While active, every horizon it sees is persisted. The same drop, restricted to the
//! keys a copy phase newly assigns to this server, runs before adopting the snapshot that starts
//! the copy: what it holds of those keys below the horizon can only be a leftover copy whose
//! deletes may be collected already.
//!
//! # Rebalance phases
//!
//! When the snapshot's rebalance is in a phase this server has not finished (its own record of done
//! `(target, phase)` pairs wins over the snapshot's `waiting` list, which can be stale), shard 0 runs
//! the phase on every shard in the background and then sends `PhaseDone` to every manager. It is
//! sent again if no manager accepted it, or if a snapshot newer than the one held when it was
//! accepted still lists this server as waiting (a lost message, a manager restart); never twice
//! under one snapshot, because a late repeat of a copy report could count as the end of the drop
//! phase for a manager that names both phases by one target.
//! A phase whose target the manager replaced stops at its next chunk and the new one starts.
//!
//! # Backups
//!
//! A `BackupOrder` in the snapshot is carried out once per id by an active server (see
//! [`super::backup`]); the result is sent as `BackupDone` to every manager until one accepts it.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future;
use glommio::channels::local_channel::{self, LocalSender};

use super::maintenance::{on_every_shard, ClusterCall, ReplStatPhase};
use super::rebalance::PhaseCounters;
use super::shard::{is_copy, Shard, ShardMsg};
use crate::ring::NodeState;
use crate::rpc::messages::{
    BackupState, ManagerContact, ManagerRequest, ManagerResponse, RoutingSnapshot,
};
use crate::rpc::{ClientConfig, RpcClient};
use crate::runtime;

/// How often keepalives go to each manager.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_millis(500);
/// How long a finished backup's result is offered to the managers.
const BACKUP_REPORT_FOR: Duration = Duration::from_secs(600);

type ManagerClient = RpcClient<ManagerRequest, ManagerResponse>;

/// Shard 0's bookkeeping.
#[derive(Default)]
struct Link {
    /// `(target, copy?)` phases finished by every shard.
    done: RefCell<Vec<(u64, bool)>>,
    /// Phases reported to a manager, with the epoch of the snapshot held when reporting.
    reported: RefCell<Vec<((u64, bool), u64)>>,
    running: Cell<Option<(u64, bool)>>,
    /// An adoption (possibly with its rejoin work) is under way.
    adopting: Cell<bool>,
    /// Active in the write table of the snapshot held.
    was_active: Cell<bool>,
    /// The copy target whose newly assigned keys were cleaned below the horizon.
    prepared_copy: Cell<Option<u64>>,
    /// The GC horizon last known while active (persisted).
    horizon: Cell<u64>,
    /// The last backup order carried out (persisted), one running, one result to report.
    last_backup: Cell<u64>,
    backup_running: Cell<bool>,
    backup_report: RefCell<Option<(u64, BackupState, Instant)>>,
    /// Per manager: when it last answered a keepalive (or when we started asking), and the write
    /// table version it offered then (`None` before its first answer).
    contacts: RefCell<Vec<(SocketAddr, Instant, Option<u64>)>>,
}

impl Link {
    /// What the keepalives say about every manager.
    fn contacts(&self) -> Vec<ManagerContact> {
        self.contacts
            .borrow()
            .iter()
            .map(|(addr, at, write_version)| ManagerContact {
                addr: *addr,
                silent_ms: u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX),
                write_version: *write_version,
            })
            .collect()
    }

    /// `manager` answered a keepalive, offering a routing with write table `write_version`.
    fn answered(&self, manager: SocketAddr, write_version: Option<u64>) {
        if let Some(entry) = self
            .contacts
            .borrow_mut()
            .iter_mut()
            .find(|(addr, _, _)| *addr == manager)
        {
            entry.1 = Instant::now();
            entry.2 = write_version.or(entry.2);
        }
    }
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
    let link = Rc::new(Link::default());
    *link.contacts.borrow_mut() = shard
        .config
        .managers
        .iter()
        .map(|&addr| (addr, Instant::now(), None))
        .collect();
    link.horizon
        .set(super::store::load_horizon(&shard.config.store));
    link.last_backup
        .set(super::store::load_last_backup(&shard.config.store));
    // One loop per manager, so a manager that hangs never delays the keepalives to the other.
    // A new snapshot wakes the rebalance driver at once instead of at its next round.
    let (wake, woken) = local_channel::new_bounded::<()>(1);
    let wake = Rc::new(wake);
    for client in &clients {
        runtime::spawn(keepalive_loop(
            shard.clone(),
            link.clone(),
            client.clone(),
            wake.clone(),
        ));
    }
    let stop = shard.ctx.shutdown_signal();
    while !stop.is_fired() {
        drive_rebalance(&shard, &clients, &link).await;
        drive_backup(&shard, &clients, &link).await;
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

async fn keepalive_loop(
    shard: Rc<Shard>,
    link: Rc<Link>,
    client: ManagerClient,
    wake: Rc<LocalSender<()>>,
) {
    let stop = shard.ctx.shutdown_signal();
    let mut reachable = true;
    while !stop.is_fired() {
        let progress = shard.cluster.progress.borrow().as_ref().map(|p| p.report());
        let held = shard.routing();
        let keepalive = ManagerRequest::KeepAlive {
            addr: shard.me(),
            stream_port: shard.config.stream_port,
            shards: u16::try_from(shard.count).unwrap_or(u16::MAX),
            routing_version: held.epoch,
            progress,
            managers: link.contacts(),
        };
        match client.call(&keepalive).await {
            Ok(ManagerResponse::Routing(snapshot)) => {
                reachable = true;
                link.answered(client.addr(), Some(snapshot.write.version()));
                // Adopting may take a while (the rejoin drop walks the store): it runs on its own
                // so that keepalives go on meanwhile (the manager would judge us down otherwise).
                if snapshot.supersedes(&shard.routing()) && !link.adopting.replace(true) {
                    let (shard, link, wake) = (shard.clone(), link.clone(), wake.clone());
                    runtime::spawn(async move {
                        if adopt(&shard, &link, snapshot).await {
                            // Full means a wake-up is pending already.
                            let _ = wake.try_send(());
                        }
                        link.adopting.set(false);
                    });
                }
            }
            Ok(ManagerResponse::Error(e)) => {
                link.answered(client.addr(), None);
                crate::warn!("manager {}: {e}", client.addr());
            }
            Ok(_) => {
                // `UpToDate`: it serves the snapshot we held when asking.
                link.answered(client.addr(), Some(held.write.version()));
                reachable = true;
            }
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

/// Adopts a newer snapshot (after the rejoin work it calls for); false if it was not adopted.
/// The caller holds `link.adopting`, so only one adoption runs at a time; a snapshot that arrives
/// meanwhile is offered again by the next keepalive answer.
async fn adopt(shard: &Rc<Shard>, link: &Link, snapshot: RoutingSnapshot) -> bool {
    if !snapshot.supersedes(&shard.routing()) {
        return false;
    }
    match prepare(shard, link, &snapshot).await {
        Ok(()) => adopt_everywhere(shard, snapshot).await,
        Err(e) => {
            crate::warn!(
                "routing epoch {} not adopted yet (retried next round): {e}",
                snapshot.epoch
            );
            false
        }
    }
}

/// The rejoin rule of the module doc, and the persisted horizon.
async fn prepare(shard: &Rc<Shard>, link: &Link, snapshot: &RoutingSnapshot) -> Result<(), String> {
    let me = shard.me();
    let active = snapshot.write.state_of(&me) == Some(NodeState::Active);
    let horizon = snapshot.gc_horizon;
    let mut dropped_all = false;
    if active && !link.was_active.get() {
        let returning = snapshot.read.state_of(&me) != Some(NodeState::Active);
        let known = link.horizon.get();
        if returning && horizon > known {
            crate::info!(
                "rejoin: the GC horizon advanced from {known} to {horizon} while this server was \
                 away; dropping its records older than that before serving"
            );
            on_every_shard(shard, || ClusterCall::DropBelow {
                horizon,
                only_new: None,
            })
            .await?;
            dropped_all = true;
        }
        super::flush::catch_up(shard, snapshot).await?;
    }
    // The same rule for the keys a copy phase is about to refill: whatever this server holds of
    // them below the horizon is a leftover (a copy replicated to it while it dropped what it no
    // longer owned, say) whose deletes may be collected already; the copy brings the live ones.
    let copy_target = snapshot
        .rebalance
        .as_ref()
        .filter(|r| r.phase == crate::cluster::membership::Phase::Copying)
        .map(|r| r.target);
    if let Some(target) = copy_target {
        if active && horizon > 0 && !dropped_all && link.prepared_copy.get() != Some(target) {
            on_every_shard(shard, || ClusterCall::DropBelow {
                horizon,
                only_new: Some(Box::new(snapshot.clone())),
            })
            .await?;
        }
        link.prepared_copy.set(Some(target));
    }
    if active && horizon > link.horizon.get() {
        super::store::save_horizon(&shard.config.store, horizon)
            .map_err(|e| format!("cannot save the GC horizon: {e}"))?;
        link.horizon.set(horizon);
    }
    link.was_active.set(active);
    Ok(())
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

async fn drive_rebalance(shard: &Rc<Shard>, managers: &[ManagerClient], link: &Rc<Link>) {
    let routing = shard.routing();
    let me = shard.me();
    let state = &shard.cluster;
    let Some(rebalance) = &routing.rebalance else {
        if link.running.get().is_none() {
            state.phase.set(ReplStatPhase::Idle);
        }
        return;
    };
    let key = (rebalance.target, is_copy(rebalance.phase));
    if link.done.borrow().contains(&key) {
        // Reported already; again only if a snapshot newer than the one we reported under still
        // waits for us (the report was lost, or a manager restarted). Repeating it under the same
        // snapshot could let a late copy report count for the drop phase of a manager that names
        // both phases by the same target.
        let reported = link
            .reported
            .borrow()
            .iter()
            .any(|(k, epoch)| *k == key && *epoch >= routing.epoch);
        if rebalance.waiting.contains(&me)
            && !reported
            && report_done(managers, shard, rebalance.target).await
        {
            link.reported.borrow_mut().push((key, routing.epoch));
        }
        return;
    }
    if !rebalance.waiting.contains(&me) || link.running.get().is_some() {
        // Not our turn, or a phase runs (a superseded one stops at its next chunk).
        return;
    }
    link.running.set(Some(key));
    let progress = Arc::new(PhaseCounters::new(rebalance.target, rebalance.phase));
    *state.progress.borrow_mut() = Some(progress.clone());
    state.phase.set(if key.1 {
        ReplStatPhase::Copying
    } else {
        ReplStatPhase::Dropping
    });
    let (shard, link, managers) = (shard.clone(), link.clone(), managers.to_vec());
    runtime::spawn(async move {
        let phase = if key.1 { "copy" } else { "drop" };
        crate::info!("rebalance {}: starting the {phase} phase", key.0);
        let started = Instant::now();
        let snapshot = routing.clone();
        let result = on_every_shard(&shard, || ClusterCall::Phase {
            snapshot: Box::new((*snapshot).clone()),
            progress: progress.clone(),
        })
        .await;
        link.running.set(None);
        let state = &shard.cluster;
        match result {
            // Retried (resuming where it stopped) on a later round, or replaced by a newer phase.
            Err(e) => {
                state.phase.set(ReplStatPhase::Idle);
                crate::warn!("rebalance {}: {phase} phase stopped: {e}", key.0);
            }
            Ok(_) => {
                let p = progress.report();
                crate::info!(
                    "rebalance {}: {phase} phase done in {:.1} s ({} records scanned, {} sent, {} bytes)",
                    key.0,
                    started.elapsed().as_secs_f64(),
                    p.done,
                    p.sent,
                    progress.bytes.load(std::sync::atomic::Ordering::Relaxed)
                );
                state.phase.set(if key.1 {
                    ReplStatPhase::CopyDone
                } else {
                    ReplStatPhase::DropDone
                });
                link.done.borrow_mut().push(key);
                if report_done(&managers, &shard, key.0).await {
                    let epoch = shard.routing().epoch;
                    link.reported.borrow_mut().push((key, epoch));
                }
            }
        }
        let mut slot = state.progress.borrow_mut();
        if slot.as_ref().is_some_and(|p| Arc::ptr_eq(p, &progress)) {
            *slot = None;
        }
    });
}

/// Starts the snapshot's backup order if this server has not done it, and offers a finished
/// backup's result to the managers until one accepts it.
async fn drive_backup(shard: &Rc<Shard>, managers: &[ManagerClient], link: &Rc<Link>) {
    let pending = link.backup_report.borrow().clone();
    if let Some((id, state, since)) = pending {
        let request = ManagerRequest::BackupDone {
            addr: shard.me(),
            id,
            state,
        };
        let mut accepted = false;
        for client in managers {
            match client.call(&request).await {
                Ok(ManagerResponse::Ok | ManagerResponse::Backup(_)) => accepted = true,
                Ok(other) => crate::info!("BackupDone to {}: {other:?}", client.addr()),
                Err(e) => crate::info!("BackupDone to {}: {e}", client.addr()),
            }
        }
        if accepted || since.elapsed() > BACKUP_REPORT_FOR {
            *link.backup_report.borrow_mut() = None;
        }
    }
    let routing = shard.routing();
    let Some(order) = routing.backup.clone() else {
        return;
    };
    let active = routing.write.state_of(&shard.me()) == Some(NodeState::Active);
    if !active || order.id == link.last_backup.get() || link.backup_running.replace(true) {
        return;
    }
    let (shard, link) = (shard.clone(), link.clone());
    runtime::spawn(async move {
        crate::info!("backup {}: starting (suffix {:?})", order.id, order.suffix);
        let state = super::backup::run(&shard, &order).await;
        if let Err(e) = super::store::save_last_backup(&shard.config.store, order.id) {
            crate::warn!("backup {}: cannot remember it was done: {e}", order.id);
        }
        link.last_backup.set(order.id);
        *link.backup_report.borrow_mut() = Some((order.id, state, Instant::now()));
        link.backup_running.set(false);
    });
}

/// Sends `PhaseDone` to every manager; true if at least one accepted it.
async fn report_done(managers: &[ManagerClient], shard: &Shard, target: u64) -> bool {
    let mut accepted = false;
    for client in managers {
        let request = ManagerRequest::PhaseDone {
            addr: shard.me(),
            target,
        };
        match client.call(&request).await {
            Ok(ManagerResponse::Error(e)) => crate::info!("PhaseDone to {}: {e}", client.addr()),
            Ok(_) => accepted = true,
            Err(e) => crate::info!("PhaseDone to {}: {e}", client.addr()),
        }
    }
    accepted
}
