//! The manager's state machine (sans-IO): membership, failure detection, rebalances, the
//! garbage-collection horizon, backups, auto-replace and the manager pair.
//!
//! It owns the [`ClusterState`] (routing tables, rebalance, horizon, backup, known servers), the
//! manager's hybrid logical clock, its [`Liveness`] view and its [`Pair`] link. Inputs are server
//! keepalives, [`Command`]s (from kumoctl, from servers' rebalance reports, forwarded by the
//! partner), partner syncs and [`Membership::tick`]; every input carries the time ([`Now`]), so the
//! machine reads no clock and opens no socket. Its output is its state: whenever
//! `state().epoch` changes, the caller persists the state, serves the new routing snapshot and
//! syncs its partner. Only the driving manager ([`Role::Leader`], see [`super::pair`]) decides; a
//! follower answers [`Outcome::Forward`] for commands (or refuses them if the partner is cut off).
//!
//! Lifecycle of a server: it sends keepalives and appears as *not attached*; `attach` makes it
//! active in the write table (recovering it if it was fault); when nobody heard from it for
//! `fault_after_ms` it is marked *fault* in both tables (its ring positions stay, its keys are served
//! by their remaining copies) and a running rebalance phase restarts; `detach` removes fault servers
//! from the ring. Every routing change gets a new version from the clock, so the newer table wins
//! wherever tables are compared.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use super::clock::{version_at, Hlc};
use super::liveness::Liveness;
use super::pair::{Pair, PartnerView, Role, ServersHear};
use super::rebalance::{self, Stamper};
use super::state::{ClusterState, ServerInfo, Stamped};
use crate::ring::RoutingTable;
use crate::rpc::messages::{BackupReport, BackupState, ManagerContact, PhaseProgress};

pub use super::rebalance::{Phase, Rebalance, RebalanceRun};
pub use super::status::{ServerProgress, StatusReport};
pub use super::table::{NodeState, TableSpec};

/// Tunables.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// A server nobody heard from for this long is judged down; also how long the partner may be
    /// silent before the follower takes over, and the start-up wait for the partner.
    pub fault_after_ms: u64,
    /// Turn auto-replace on at start (`-a`); otherwise the persisted or synced setting holds.
    pub auto_replace: bool,
    /// Delay before an automatic replace, so that events close together make one (`-Rs`).
    pub replace_delay_ms: u64,
    /// How far behind the wall clock the garbage-collection horizon runs. It must exceed the time
    /// a live replica can take to acknowledge a replicated delete, which is bounded by
    /// `fault_after_ms` (a replica that long silent is marked fault, which freezes the horizon).
    pub gc_lag_ms: u64,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        Self {
            fault_after_ms: 6_000,
            auto_replace: false,
            replace_delay_ms: 4_000,
            gc_lag_ms: 60_000,
        }
    }
}

/// The time of an input: monotonic milliseconds (for timeouts) and wall-clock milliseconds (for
/// versions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono_ms: u64,
    pub wall_ms: u64,
}

/// A keepalive's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepAlive {
    pub addr: SocketAddr,
    pub info: ServerInfo,
    /// The epoch of the routing snapshot the server holds.
    pub routing_version: u64,
    pub progress: Option<PhaseProgress>,
    /// How recently each manager answered the server (see [`super::pair`]).
    pub managers: Vec<ManagerContact>,
}

/// Something only the driving manager does.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Command {
    Attach {
        replace: bool,
    },
    Detach {
        replace: bool,
    },
    Replace {
        full: bool,
    },
    Backup {
        suffix: String,
    },
    SetAutoReplace(bool),
    /// A server finished the rebalance phase named `target`.
    PhaseDone {
        addr: SocketAddr,
        target: u64,
    },
}

/// The answer to a command.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Reply {
    Ok,
    AutoReplace(bool),
    Backup(BackupReport),
    Error(String),
}

/// What became of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done(Reply),
    /// This manager follows: send the command to the partner (and apply it here with
    /// `forwarded = true` if the partner cannot be reached).
    Forward,
}

/// Auto-replace timer: what needs doing, and when it will be done.
#[derive(Debug, Clone, Default)]
struct AutoReplace {
    /// (alive servers not active in the write table, fault servers of the write table).
    pending: (Vec<SocketAddr>, Vec<SocketAddr>),
    due_ms: Option<u64>,
    /// Run at the next tick, without waiting (auto-replace was just enabled).
    now: bool,
}

/// The manager's state machine.
#[derive(Debug, Clone)]
pub struct Membership {
    me: SocketAddr,
    config: MembershipConfig,
    hlc: Hlc,
    state: ClusterState,
    liveness: Liveness,
    pair: Option<Pair>,
    auto: AutoReplace,
    /// The newest routing epoch a server said it holds, and which server.
    newest_server_epoch: (u64, Option<SocketAddr>),
}

impl Membership {
    /// A manager at `me` with an optional partner, starting from `persisted` state if any.
    pub fn new(
        me: SocketAddr,
        partner: Option<SocketAddr>,
        config: MembershipConfig,
        persisted: Option<ClusterState>,
        now: Now,
    ) -> Result<Self, String> {
        let mut hlc = Hlc::new();
        let state = match persisted {
            Some(state) => {
                state.validate()?;
                hlc.observe(state.epoch, now.wall_ms)
                    .map_err(|e| format!("state epoch: {e}"))?;
                state
            }
            None => ClusterState::default(),
        };
        let mut liveness = Liveness::new(config.fault_after_ms);
        liveness.assume_alive(attached(&state), now.mono_ms);
        let pair = partner.map(|p| Pair::new(p, config.fault_after_ms, now.mono_ms));
        let mut m = Membership {
            me,
            config,
            hlc,
            state,
            liveness,
            pair,
            auto: AutoReplace::default(),
            newest_server_epoch: (0, None),
        };
        if m.config.auto_replace && !m.state.auto_replace.value {
            let stamp = m.hlc.now(now.wall_ms);
            m.state.auto_replace = Stamped { value: true, stamp };
            m.touch(now);
        }
        Ok(m)
    }

    pub fn me(&self) -> SocketAddr {
        self.me
    }

    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    pub fn config(&self) -> &MembershipConfig {
        &self.config
    }

    pub fn partner(&self) -> Option<SocketAddr> {
        self.pair.as_ref().map(Pair::partner)
    }

    pub fn partner_reachable(&self, now: Now) -> bool {
        self.pair.as_ref().is_some_and(|p| p.reachable(now.mono_ms))
    }

    pub fn role(&self, now: Now) -> Role {
        match &self.pair {
            None => Role::Leader,
            Some(pair) => pair.role(self.me, self.state.routing.write.version, now.mono_ms),
        }
    }

    /// What servers said lately about the partner.
    pub fn servers_hear_partner(&self, now: Now) -> Option<ServersHear> {
        self.pair.as_ref().map(|p| p.servers_hear(now.mono_ms))
    }

    pub(super) fn liveness(&self) -> &Liveness {
        &self.liveness
    }

    /// The newest clock value this manager issued or saw.
    pub fn clock(&self) -> u64 {
        self.hlc.last()
    }

    /// Gives the state a new epoch after a change.
    fn touch(&mut self, now: Now) {
        self.state.epoch = self.hlc.now(now.wall_ms);
    }

    /// Marks a routing decision made now.
    fn routing_changed(&mut self, now: Now) {
        self.state.routing.stamp = self.hlc.now(now.wall_ms);
        self.state.routing.origin = Some(self.me);
        self.touch(now);
    }

    /// A server's keepalive.
    pub fn keepalive(&mut self, ka: KeepAlive, now: Now) {
        // A corrupt or hostile epoch is not taken in; the keepalive still counts.
        if self.hlc.observe(ka.routing_version, now.wall_ms).is_ok()
            && ka.routing_version > self.newest_server_epoch.0
        {
            self.newest_server_epoch = (ka.routing_version, Some(ka.addr));
        }
        self.liveness
            .heard(ka.addr, ka.info, ka.progress, now.mono_ms);
        if let Some(pair) = &mut self.pair {
            pair.server_report(&ka.managers, now.mono_ms);
        }
        if self.role(now) == Role::Leader {
            let stamp = self.hlc.now(now.wall_ms);
            if self.state.learn_server(ka.addr, ka.info, stamp) {
                self.touch(now);
            }
        }
    }

    /// Runs a command, or says to forward it (a follower cut off from its partner refuses it).
    /// `forwarded` commands come from the partner: they run whatever the role.
    pub fn command(&mut self, command: Command, now: Now, forwarded: bool) -> Outcome {
        match (self.role(now), forwarded) {
            (Role::Leader, _) | (_, true) => {}
            (Role::Follower, false) if self.partner_reachable(now) => return Outcome::Forward,
            (Role::Follower, false) => {
                let why = self.pair.as_ref().map(|p| p.refusal(self.me, now.mono_ms));
                return Outcome::Done(Reply::Error(why.unwrap_or_default()));
            }
            (Role::CatchingUp, false) => {
                return Outcome::Done(Reply::Error(format!(
                    "manager {} is starting and waits for its partner's state; retry in a few \
                     seconds",
                    self.me
                )))
            }
        }
        let reply = match command {
            Command::Attach { replace } => self.attach(replace, now),
            Command::Detach { replace } => self.detach(replace, now),
            Command::Replace { full } => {
                let reason = if full { "full-replace" } else { "replace" };
                self.start_rebalance(full, reason.into(), now);
                Reply::Ok
            }
            Command::Backup { suffix } => self.order_backup(suffix, now),
            Command::SetAutoReplace(on) => {
                let stamp = self.hlc.now(now.wall_ms);
                self.state.auto_replace = Stamped { value: on, stamp };
                // Enabling does at once what is pending (at the next tick), as kumofs does.
                self.auto.now = on;
                self.touch(now);
                Reply::AutoReplace(on)
            }
            Command::PhaseDone { addr, target } => {
                let mut stamp = Stamper {
                    hlc: &mut self.hlc,
                    wall_ms: now.wall_ms,
                };
                if rebalance::phase_done(&mut self.state.routing, addr, target, &mut stamp) {
                    self.routing_changed(now);
                }
                Reply::Ok
            }
        };
        Outcome::Done(reply)
    }

    fn attach(&mut self, replace: bool, now: Now) -> Reply {
        // Shard counts and stream ports of servers only the partner heard, before they route.
        self.learn_from_partner(now);
        let new: Vec<SocketAddr> = self
            .liveness
            .confirmed_servers(now.mono_ms)
            .into_iter()
            .filter(|a| !self.state.routing.write.is_active(*a))
            .collect();
        let mut write = self.state.routing.write.clone();
        for addr in &new {
            write.set(*addr, NodeState::Active);
        }
        if let Err(e) = RoutingTable::new(write.version, write.nodes.clone()) {
            return Reply::Error(format!("cannot attach: {e}"));
        }
        if !new.is_empty() {
            write.version = self.hlc.now(now.wall_ms);
            self.state.routing.write = write;
            self.routing_changed(now);
        }
        if replace && (!new.is_empty() || self.needs_rebalance()) {
            self.start_rebalance(false, format!("attach {}", list(&new)), now);
        }
        Reply::Ok
    }

    fn detach(&mut self, replace: bool, now: Now) -> Reply {
        let gone: Vec<SocketAddr> = self.state.routing.write.fault().collect();
        if !gone.is_empty() {
            let write = &mut self.state.routing.write;
            write.nodes.retain(|(_, s)| *s == NodeState::Active);
            write.version = self.hlc.now(now.wall_ms);
            self.routing_changed(now);
        }
        if replace && (!gone.is_empty() || self.needs_rebalance()) {
            self.start_rebalance(false, format!("detach {}", list(&gone)), now);
        }
        Reply::Ok
    }

    /// Reads follow another table than writes and nothing is moving data: a change made without
    /// a rebalance (`attach-noreplace`), or by the partner. A running rebalance is left alone.
    fn needs_rebalance(&self) -> bool {
        let routing = &self.state.routing;
        routing.rebalance.is_none() && routing.write != routing.read
    }

    fn start_rebalance(&mut self, full: bool, reason: String, now: Now) {
        let mut stamp = Stamper {
            hlc: &mut self.hlc,
            wall_ms: now.wall_ms,
        };
        rebalance::start(&mut self.state.routing, full, reason, &mut stamp);
        self.routing_changed(now);
    }

    fn order_backup(&mut self, suffix: String, now: Now) -> Reply {
        if let Err(e) = check_backup_suffix(&suffix) {
            return Reply::Error(e);
        }
        let servers: Vec<(SocketAddr, BackupState)> = self
            .state
            .routing
            .write
            .active()
            .map(|a| (a, BackupState::Pending))
            .collect();
        if servers.is_empty() {
            return Reply::Error("no active server to back up".into());
        }
        let report = BackupReport {
            id: self.hlc.now(now.wall_ms),
            suffix,
            servers,
        };
        self.state.backup = Some(report.clone());
        self.touch(now);
        Reply::Backup(report)
    }

    /// A server's backup result. Any manager records it (results only ever move forward, so the
    /// pair's join keeps every one).
    pub fn backup_done(
        &mut self,
        addr: SocketAddr,
        id: u64,
        result: BackupState,
        now: Now,
    ) -> Reply {
        let Some(report) = self.state.backup.as_mut().filter(|r| r.id == id) else {
            return Reply::Error(format!("unknown backup {id}"));
        };
        let Some((_, state)) = report.servers.iter_mut().find(|(a, _)| *a == addr) else {
            return Reply::Error(format!("{addr} does not take part in backup {id}"));
        };
        if *state == BackupState::Pending && result != BackupState::Pending {
            *state = result;
            self.touch(now);
        }
        Reply::Ok
    }

    /// The report of backup `id`, if it is the one this manager knows.
    pub fn backup_report(&self, id: u64) -> Option<&BackupReport> {
        self.state.backup.as_ref().filter(|r| r.id == id)
    }

    /// What to send the partner besides the state.
    pub fn partner_view(&self, now: Now) -> PartnerView {
        PartnerView {
            heard: self.liveness.own_view(now.mono_ms),
        }
    }

    /// The partner's state and view arrived (its sync, or its answer to ours): join them in.
    pub fn partner_sync(
        &mut self,
        from: SocketAddr,
        state: ClusterState,
        view: &PartnerView,
        now: Now,
    ) -> Result<(), String> {
        let Some(pair) = &mut self.pair else {
            return Err(format!(
                "manager {} has no partner; {from} is unknown",
                self.me
            ));
        };
        if from != pair.partner() {
            return Err(format!(
                "unknown partner {from}: the partner of {} is {}",
                self.me,
                pair.partner()
            ));
        }
        state
            .validate()
            .map_err(|e| format!("state from {from}: {e}"))?;
        self.hlc
            .observe(state.epoch, now.wall_ms)
            .map_err(|e| format!("state from {from}: {e}"))?;
        pair.contact(now.mono_ms);
        self.liveness.partner_view(&view.heard, now.mono_ms);
        let joined = self.state.join(&state);
        if joined.same_content(&self.state) {
            if joined.same_content(&state) {
                self.state.epoch = self.state.epoch.max(state.epoch);
            }
            return Ok(());
        }
        let epoch = if joined.same_content(&state) && state.epoch > self.state.epoch {
            state.epoch
        } else {
            self.hlc.now(now.wall_ms)
        };
        self.state = joined;
        self.state.epoch = epoch;
        Ok(())
    }

    /// The partner's answer to a sync sent at `asked`: joined in like a sync, and it renews the
    /// first manager's lease (see [`super::pair`]).
    pub fn partner_answer(
        &mut self,
        from: SocketAddr,
        state: ClusterState,
        view: &PartnerView,
        asked: Now,
        now: Now,
    ) -> Result<(), String> {
        self.partner_sync(from, state, view, now)?;
        if let Some(pair) = &mut self.pair {
            pair.answered(asked.mono_ms, now.mono_ms);
        }
        Ok(())
    }

    /// This manager did not run for a while (its host froze): what servers sent meanwhile is
    /// unread yet, so attached servers get one fault window to be heard again, as at start-up.
    pub fn resumed(&mut self, now: Now) {
        self.liveness
            .assume_alive(attached(&self.state), now.mono_ms);
    }

    /// Advances time: the driver's duties (failure detection, backups, auto-replace, horizon).
    pub fn tick(&mut self, now: Now) {
        self.liveness.prune(now.mono_ms);
        if self.role(now) != Role::Leader {
            return;
        }
        self.learn_from_partner(now);
        self.mark_lost(now);
        self.fail_lost_backups(now);
        self.auto_replace(now);
        self.advance_horizon(now);
    }

    /// Records what the partner heard from servers this manager did not hear itself.
    fn learn_from_partner(&mut self, now: Now) {
        for addr in self.liveness.confirmed_servers(now.mono_ms) {
            let Some(info) = self.liveness.latest(addr).map(|h| h.info) else {
                continue;
            };
            let stamp = self.hlc.now(now.wall_ms);
            if self.state.learn_server(addr, info, stamp) {
                self.touch(now);
            }
        }
    }

    /// Marks fault every active server nobody heard from within the fault window.
    fn mark_lost(&mut self, now: Now) {
        let routing = &self.state.routing;
        let lost: BTreeSet<SocketAddr> = routing
            .write
            .active()
            .chain(routing.read.active())
            .filter(|a| !self.liveness.alive(*a, now.mono_ms))
            .collect();
        if lost.is_empty() {
            return;
        }
        let routing = &mut self.state.routing;
        let were_equal = routing.write == routing.read;
        let mut read_changed = false;
        for addr in &lost {
            if routing.write.is_active(*addr) {
                routing.write.set(*addr, NodeState::Fault);
            }
            if routing.read.is_active(*addr) {
                routing.read.set(*addr, NodeState::Fault);
                read_changed = true;
            }
        }
        if read_changed {
            routing.read.version = self.hlc.now(now.wall_ms);
        }
        // Always a new write version: it names the restarted phase of a running rebalance.
        routing.write.version = self.hlc.now(now.wall_ms);
        if were_equal {
            routing.read = routing.write.clone();
        }
        let why = format!("lost {}", list(&lost.iter().copied().collect::<Vec<_>>()));
        let mut stamp = Stamper {
            hlc: &mut self.hlc,
            wall_ms: now.wall_ms,
        };
        rebalance::restart_phase(routing, why, now.wall_ms, &mut stamp);
        self.routing_changed(now);
    }

    /// A backup cannot finish on a server that went down: it failed there.
    fn fail_lost_backups(&mut self, now: Now) {
        let write = &self.state.routing.write;
        let Some(report) = &mut self.state.backup else {
            return;
        };
        let mut changed = false;
        for (addr, state) in &mut report.servers {
            if *state == BackupState::Pending && !write.is_active(*addr) {
                *state = BackupState::Failed("the server went down before it finished".into());
                changed = true;
            }
        }
        if changed {
            self.touch(now);
        }
    }

    /// With auto-replace on: once nothing changed for the replace delay, attaches alive servers,
    /// detaches fault ones and rebalances.
    fn auto_replace(&mut self, now: Now) {
        if !self.state.auto_replace.value {
            self.auto = AutoReplace::default();
            return;
        }
        let write = &self.state.routing.write;
        let pending = (
            self.liveness
                .confirmed_servers(now.mono_ms)
                .into_iter()
                .filter(|a| !write.is_active(*a))
                .collect::<Vec<_>>(),
            write.fault().collect::<Vec<_>>(),
        );
        if pending != self.auto.pending {
            let nothing = pending.0.is_empty() && pending.1.is_empty();
            self.auto.pending = pending;
            if !nothing {
                self.auto.due_ms = Some(now.mono_ms + self.config.replace_delay_ms);
            }
        }
        if self.auto.now || self.auto.due_ms.is_some_and(|due| now.mono_ms >= due) {
            self.auto.due_ms = None;
            self.auto.now = false;
            let before = self.state.routing.write.version;
            self.attach(false, now);
            self.detach(false, now);
            if before != self.state.routing.write.version || self.needs_rebalance() {
                self.start_rebalance(false, "auto-replace".into(), now);
            }
        }
    }

    /// Whether the horizon may move now: this manager drives, every server of the write table is
    /// active and heard from, reads and writes follow the same table and nothing is being moved.
    pub fn horizon_may_advance(&self, now: Now) -> bool {
        let routing = &self.state.routing;
        self.role(now) == Role::Leader
            && routing.is_settled()
            && !routing.write.nodes.is_empty()
            && routing
                .write
                .nodes
                .iter()
                .all(|(a, s)| *s == NodeState::Active && self.liveness.confirmed(*a, now.mono_ms))
    }

    /// Moves the horizon to `now - gc_lag` in steps of a sixth of the lag (at least a second): each
    /// step is a new snapshot that every server and gateway fetches, so not on every tick.
    fn advance_horizon(&mut self, now: Now) {
        if !self.horizon_may_advance(now) {
            return;
        }
        let candidate = version_at(now.wall_ms.saturating_sub(self.config.gc_lag_ms));
        let step = version_at((self.config.gc_lag_ms / 6).max(1000));
        if candidate >= self.state.gc_horizon.saturating_add(step) {
            self.state.gc_horizon = candidate;
            self.touch(now);
        }
    }

    /// What `kumoctl status` shows.
    pub fn status(&self, now: Now) -> StatusReport {
        super::status::report(self, now)
    }

    /// A manager with no routing table hearing from a server that has one: its state file was
    /// lost (and the partner, if any, did not bring the state).
    pub fn stale_warning(&self) -> Option<String> {
        let (epoch, server) = self.newest_server_epoch;
        let server = server?;
        (self.state.routing.write.version == 0 && epoch > 0).then(|| {
            format!(
                "server {server} has routing tables (epoch {epoch}) but this manager has none: its \
                 state file is missing. `attach` now builds new tables from scratch; restore the \
                 state file (or start the partner) first if the cluster holds data"
            )
        })
    }
}

/// Servers active in the write or the read table.
fn attached(state: &ClusterState) -> Vec<SocketAddr> {
    let (write, read) = (&state.routing.write, &state.routing.read);
    write.active().chain(read.active()).collect()
}

/// A backup suffix becomes part of file names on every server.
fn check_backup_suffix(suffix: &str) -> Result<(), String> {
    let ok = !suffix.is_empty()
        && suffix.len() <= 64
        && suffix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !suffix.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid backup suffix {suffix:?}: use 1 to 64 letters, digits, '.', '_' or '-', not \
             starting with '.'"
        ))
    }
}

fn list(addrs: &[SocketAddr]) -> String {
    if addrs.is_empty() {
        return "(no server)".into();
    }
    addrs
        .iter()
        .map(SocketAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
#[path = "membership_tests.rs"]
mod tests;
