//! The manager's request handling around the [`Membership`] machine: it feeds the machine every
//! request with the time, forwards commands to the partner when this manager follows (and never
//! runs them itself when the partner does not answer: two managers must not both decide), and after
//! every input whose outcome changed the state's epoch it writes the state file (on a blocking
//! thread, so that a slow disk never silences the manager), then rebuilds the routing snapshot it
//! serves and wakes the partner sync.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use glommio::channels::local_channel::LocalSender;

use super::store::StateStore;
use crate::cluster::clock::wall_ms;
use crate::cluster::membership::{Command, KeepAlive, Membership, Now, Outcome, Reply};
use crate::cluster::pair::{Role, ServersHear};
use crate::cluster::state::{ClusterState, ServerInfo};
use crate::rpc::messages::{ManagerRequest, ManagerResponse, RoutingSnapshot};
use crate::rpc::RpcClient;

pub type ManagerClient = RpcClient<ManagerRequest, ManagerResponse>;

/// A state file write slower than this is logged.
const SLOW_SAVE: std::time::Duration = std::time::Duration::from_millis(250);

/// Everything one manager knows; lives on the manager's single shard.
pub struct ManagerService {
    membership: RefCell<Membership>,
    started: Instant,
    snapshot: RefCell<Rc<RoutingSnapshot>>,
    store: StateStore,
    /// Epoch of the newest state handed to the writer.
    queued: Cell<u64>,
    /// A write of the state file is under way.
    writing: Cell<bool>,
    /// Last failure to write the state file, shown by `kumoctl status` until a write succeeds.
    store_error: RefCell<Option<String>>,
    partner: Option<ManagerClient>,
    /// Wakes the partner sync loop after a change.
    wake_sync: RefCell<Option<LocalSender<()>>>,
    /// The role at the last tick, to log its changes.
    role: Cell<Option<Role>>,
}

impl ManagerService {
    /// `membership` was made from the loaded state; `partner` talks to the other manager.
    pub fn new(
        membership: Membership,
        started: Instant,
        store: StateStore,
        partner: Option<ManagerClient>,
    ) -> Rc<Self> {
        let service = Rc::new(ManagerService {
            membership: RefCell::new(membership),
            started,
            snapshot: RefCell::new(Rc::new(RoutingSnapshot::empty())),
            store,
            queued: Cell::new(u64::MAX),
            writing: Cell::new(false),
            store_error: RefCell::new(None),
            partner,
            wake_sync: RefCell::new(None),
            role: Cell::new(None),
        });
        // The first write runs here, before anything is served: the runtime is not serving yet.
        let state = service.membership.borrow().state().clone();
        service.queued.set(state.epoch);
        let saved = service.store.save(&state);
        service.saved(&state, saved);
        service
    }

    pub fn set_sync_waker(&self, waker: LocalSender<()>) {
        *self.wake_sync.borrow_mut() = Some(waker);
    }

    pub fn me(&self) -> SocketAddr {
        self.membership.borrow().me()
    }

    pub fn now(&self) -> Now {
        Now {
            mono_ms: self.started.elapsed().as_millis() as u64,
            wall_ms: wall_ms(),
        }
    }

    /// The snapshot currently served.
    pub fn snapshot(&self) -> Rc<RoutingSnapshot> {
        self.snapshot.borrow().clone()
    }

    /// After an input: if the state changed, have it written to the state file, then served and
    /// sent to the partner (see [`ManagerService::write_out`]).
    fn publish(self: &Rc<Self>) {
        let epoch = self.membership.borrow().state().epoch;
        if epoch == self.queued.get() {
            return;
        }
        self.queued.set(epoch);
        if self.writing.replace(true) {
            // The running writer takes the newest state after its current write.
            return;
        }
        let service = self.clone();
        crate::runtime::spawn(async move { service.write_out().await });
    }

    /// Writes the newest state to the state file on a blocking thread, then serves it: its fsyncs
    /// can take seconds on a busy disk, and this manager must answer keepalives meanwhile (a
    /// manager silent for the fault window looks dead to servers, and its partner then takes over,
    /// see `cluster::pair`). Servers and gateways only ever get a state that is on disk; the
    /// partner's syncs carry the newest one (the pair's join makes that harmless). Repeats while
    /// the state changed meanwhile; one write at a time, so states reach the file in order.
    async fn write_out(self: Rc<Self>) {
        loop {
            let state = self.membership.borrow().state().clone();
            let (store, copy) = (self.store.clone(), state.clone());
            let saving = Instant::now();
            let saved = glommio::executor()
                .spawn_blocking(move || store.save(&copy))
                .await;
            let took = saving.elapsed();
            if took > SLOW_SAVE {
                crate::warn!(
                    "manager: writing the state file took {} ms",
                    took.as_millis()
                );
            }
            self.saved(&state, saved);
            if self.membership.borrow().state().epoch == state.epoch {
                break;
            }
        }
        self.writing.set(false);
    }

    /// `state` was written (or failed to be): serve it and tell the partner.
    fn saved(&self, state: &ClusterState, result: Result<(), String>) {
        match result {
            Ok(()) => *self.store_error.borrow_mut() = None,
            Err(e) => {
                crate::warn!("manager: {e}");
                *self.store_error.borrow_mut() = Some(e);
            }
        }
        match state.snapshot() {
            Ok(snapshot) => {
                for change in routing_changes(&self.snapshot.borrow(), &snapshot) {
                    crate::info!("manager: {change}");
                }
                *self.snapshot.borrow_mut() = Rc::new(snapshot);
            }
            Err(e) => {
                crate::warn!("manager: cannot build the routing snapshot: {e}");
            }
        }
        if let Some(waker) = &*self.wake_sync.borrow() {
            // Full means a sync is pending already.
            let _ = waker.try_send(());
        }
    }

    /// Advances time: the driver's duties.
    pub fn tick(self: &Rc<Self>) {
        let now = self.now();
        self.membership.borrow_mut().tick(now);
        self.publish();
        self.log_role(now);
    }

    /// The tick came `gap` late: this manager was not running meanwhile.
    pub fn resumed_after_stall(&self, gap: std::time::Duration) {
        crate::warn!(
            "manager: did not run for {} ms; servers get a fault window to be heard again",
            gap.as_millis()
        );
        self.membership.borrow_mut().resumed(self.now());
    }

    /// Says in the log when this manager starts or stops driving, and why.
    fn log_role(&self, now: Now) {
        let membership = self.membership.borrow();
        let role = membership.role(now);
        if self.role.replace(Some(role)) == Some(role) {
            return;
        }
        let Some(partner) = membership.partner() else {
            return;
        };
        let link = if membership.partner_reachable(now) {
            "in touch"
        } else {
            "unreachable"
        };
        let servers = match membership.servers_hear_partner(now) {
            Some(ServersHear::Yes(_)) => "servers hear it",
            Some(ServersHear::No) => "servers lost it",
            _ => "no news of it from servers",
        };
        crate::info!(
            "manager: {} (partner {partner}: {link}, {servers})",
            role.name()
        );
    }

    /// The snapshot, unless the asker holds this very epoch. An asker with a newer epoch gets it
    /// too: that epoch may come from the other side of a split pair with an older write table, and
    /// only the asker can tell which one it follows (see `RoutingSnapshot::supersedes`).
    fn routing_since(&self, known: u64) -> ManagerResponse {
        let snapshot = self.snapshot.borrow();
        if snapshot.epoch != known {
            ManagerResponse::Routing((**snapshot).clone())
        } else {
            ManagerResponse::UpToDate
        }
    }

    /// Answers one request.
    pub async fn handle(self: &Rc<Self>, request: ManagerRequest) -> ManagerResponse {
        let now = self.now();
        match request {
            ManagerRequest::KeepAlive {
                addr,
                stream_port,
                shards,
                routing_version,
                progress,
                managers,
            } => {
                let keepalive = KeepAlive {
                    addr,
                    info: ServerInfo {
                        shards,
                        stream_port,
                    },
                    routing_version,
                    progress,
                    managers,
                };
                self.membership.borrow_mut().keepalive(keepalive, now);
                self.publish();
                self.routing_since(routing_version)
            }
            ManagerRequest::GetRouting { known_version } => self.routing_since(known_version),
            ManagerRequest::Status => {
                let mut report = self.membership.borrow().status(now);
                if let Some(e) = &*self.store_error.borrow() {
                    report.warnings.push(e.clone());
                }
                ManagerResponse::Status(Box::new(report))
            }
            ManagerRequest::Attach { replace } => self.command(Command::Attach { replace }).await,
            ManagerRequest::Detach { replace } => self.command(Command::Detach { replace }).await,
            ManagerRequest::Replace { full } => self.command(Command::Replace { full }).await,
            ManagerRequest::Backup { suffix } => self.command(Command::Backup { suffix }).await,
            ManagerRequest::SetAutoReplace(on) => self.command(Command::SetAutoReplace(on)).await,
            ManagerRequest::PhaseDone { addr, target } => {
                let command = Command::PhaseDone { addr, target };
                let outcome = self
                    .membership
                    .borrow_mut()
                    .command(command.clone(), now, false);
                match outcome {
                    Outcome::Done(reply) => {
                        self.publish();
                        to_response(reply)
                    }
                    Outcome::Forward => {
                        // The server sends its report to both managers and repeats it until the
                        // snapshot stops listing it, so a lost forward costs nothing.
                        let service = self.clone();
                        crate::runtime::spawn(async move {
                            let _ = service.forward(command, Forwarding::Report).await;
                        });
                        ManagerResponse::Ok
                    }
                }
            }
            ManagerRequest::BackupStatus { id } => {
                match self.membership.borrow().backup_report(id) {
                    Some(report) => ManagerResponse::Backup(report.clone()),
                    None => ManagerResponse::Error(format!(
                        "backup {id} is unknown to this manager (a newer backup replaced it, or \
                         the partner has not synced it yet)"
                    )),
                }
            }
            ManagerRequest::BackupDone { addr, id, state } => {
                let reply = self
                    .membership
                    .borrow_mut()
                    .backup_done(addr, id, state, now);
                self.publish();
                to_response(reply)
            }
            ManagerRequest::PartnerSync { from, state, view } => {
                let result = self
                    .membership
                    .borrow_mut()
                    .partner_sync(from, *state, &view, now);
                self.publish();
                match result {
                    Ok(()) => {
                        let membership = self.membership.borrow();
                        ManagerResponse::PartnerState {
                            state: Box::new(membership.state().clone()),
                            view: membership.partner_view(now),
                        }
                    }
                    Err(e) => {
                        crate::warn!("manager: partner sync from {from} refused: {e}");
                        ManagerResponse::Error(e)
                    }
                }
            }
            ManagerRequest::PartnerCommand { from, command } => {
                let partner = self.membership.borrow().partner();
                if partner != Some(from) {
                    return ManagerResponse::Error(format!(
                        "unknown partner {from}: this manager's partner is {}",
                        partner.map_or("none".to_string(), |p| p.to_string())
                    ));
                }
                let outcome = self.membership.borrow_mut().command(command, now, true);
                self.publish();
                match outcome {
                    Outcome::Done(reply) => to_response(reply),
                    Outcome::Forward => ManagerResponse::Error("internal: forwarded twice".into()),
                }
            }
        }
    }

    /// Runs a kumoctl command here, or at the driving partner.
    async fn command(self: &Rc<Self>, command: Command) -> ManagerResponse {
        let outcome = self
            .membership
            .borrow_mut()
            .command(command.clone(), self.now(), false);
        match outcome {
            Outcome::Done(reply) => {
                self.publish();
                to_response(reply)
            }
            Outcome::Forward => self.forward(command, Forwarding::Operator).await,
        }
    }

    /// Sends `command` to the driving partner.
    async fn forward(self: &Rc<Self>, command: Command, how: Forwarding) -> ManagerResponse {
        let Some(partner) = &self.partner else {
            return ManagerResponse::Error("internal: no partner to forward to".into());
        };
        let request = ManagerRequest::PartnerCommand {
            from: self.me(),
            command: command.clone(),
        };
        match partner.call(&request).await {
            Ok(
                response @ (ManagerResponse::Ok
                | ManagerResponse::AutoReplace(_)
                | ManagerResponse::Backup(_)
                | ManagerResponse::Error(_)),
            ) => {
                if how == Forwarding::Operator {
                    super::partner::sync_once(self, partner).await;
                }
                response
            }
            other if how == Forwarding::Report => ManagerResponse::Error(format!(
                "the driving manager {} did not take the report ({other:?}); send it again",
                partner.addr()
            )),
            other => {
                crate::warn!(
                    "manager: the partner {} did not run {command:?} ({other:?})",
                    partner.addr()
                );
                // Named as the partner names itself, not by the address dialled (a proxy, maybe).
                let name = self.membership.borrow().partner().unwrap_or(partner.addr());
                let why = match other {
                    Err(e) => e.to_string(),
                    Ok(answer) => format!("unexpected answer {answer:?}"),
                };
                ManagerResponse::Error(format!(
                    "manager {} does not drive and got no answer from its partner {name} for the \
                     command ({why}); it did not run here, and may not have run there: check \
                     `kumoctl {name} status`, retry, or send the command to {name}",
                    self.me(),
                ))
            }
        }
    }

    /// The request this manager sends its partner now.
    pub(super) fn sync_request(&self) -> ManagerRequest {
        let membership = self.membership.borrow();
        ManagerRequest::PartnerSync {
            from: membership.me(),
            state: Box::new(membership.state().clone()),
            view: membership.partner_view(self.now()),
        }
    }

    /// Takes in the partner's answer to a sync sent at `asked`.
    pub(super) fn partner_answered(self: &Rc<Self>, response: ManagerResponse, asked: Now) {
        let Some(partner) = self.membership.borrow().partner() else {
            return;
        };
        match response {
            ManagerResponse::PartnerState { state, view } => {
                let now = self.now();
                let result = self
                    .membership
                    .borrow_mut()
                    .partner_answer(partner, *state, &view, asked, now);
                if let Err(e) = result {
                    crate::warn!("manager: state from partner {partner} refused: {e}");
                }
                self.publish();
            }
            ManagerResponse::Error(e) => {
                crate::warn!("manager: partner {partner} refused our sync: {e}");
            }
            other => {
                crate::warn!("manager: partner {partner} answered a sync with {other:?}");
            }
        }
    }
}

/// Why a command is forwarded, which decides what happens after the partner answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forwarding {
    /// From kumoctl: after it ran, the partner's state is fetched, so a status asked of this
    /// manager right after shows the command's effect. If the partner does not answer, kumoctl gets
    /// an error: running it here could make two managers decide at once (this manager takes over
    /// only when servers lose the partner too, see `cluster::pair`).
    Operator,
    /// A server's report: dropped if the partner does not answer (the server repeats it until the
    /// snapshot shows it), so two managers never both decide on the same rebalance step.
    Report,
}

fn to_response(reply: Reply) -> ManagerResponse {
    match reply {
        Reply::Ok => ManagerResponse::Ok,
        Reply::AutoReplace(on) => ManagerResponse::AutoReplace(on),
        Reply::Backup(report) => ManagerResponse::Backup(report),
        Reply::Error(e) => ManagerResponse::Error(e),
    }
}

/// What an operator should read in the log when the routing changes: servers whose state in the
/// write or read table changed, and rebalance phases starting and ending.
fn routing_changes(old: &RoutingSnapshot, new: &RoutingSnapshot) -> Vec<String> {
    let mut out = Vec::new();
    for (name, before, after) in [
        ("write", &old.write, &new.write),
        ("read", &old.read, &new.read),
    ] {
        for (addr, state) in after.nodes() {
            let was = before.state_of(addr);
            if was != Some(*state) {
                let was = was.map_or_else(|| "absent".to_string(), |s| format!("{s:?}"));
                out.push(format!("{name} table: server {addr} {was} -> {state:?}"));
            }
        }
        for (addr, state) in before.nodes() {
            if after.state_of(addr).is_none() {
                out.push(format!("{name} table: server {addr} {state:?} -> removed"));
            }
        }
    }
    let phase = |s: &RoutingSnapshot| s.rebalance.as_ref().map(|r| (r.target, r.phase));
    match (phase(old), phase(new)) {
        (before, Some((target, now))) if before != Some((target, now)) => {
            out.push(format!("rebalance {target}: {now:?} phase"));
        }
        (Some((target, _)), None) => out.push(format!("rebalance {target} finished")),
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::{NodeState, RoutingTable};

    #[test]
    fn routing_changes_name_servers_and_phases() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let mut old = RoutingSnapshot::empty();
        old.write = RoutingTable::new(1, vec![(a, NodeState::Active)]).unwrap();
        old.read = old.write.clone();
        assert!(routing_changes(&old, &old).is_empty());
        let mut new = old.clone();
        new.write =
            RoutingTable::new(2, vec![(a, NodeState::Fault), (b, NodeState::Active)]).unwrap();
        let changes = routing_changes(&old, &new);
        assert_eq!(
            changes,
            vec![
                format!("write table: server {a} Active -> Fault"),
                format!("write table: server {b} absent -> Active"),
            ]
        );
    }
}
