//! Deterministic simulation of a manager pair and fake servers over a lossy network.
//!
//! Two [`Membership`] machines and a handful of fake servers exchange the messages the real
//! processes exchange (keepalives and snapshot answers, phase reports, pair syncs, forwarded
//! commands). A seeded RNG decides every delay and drop, cuts links (partitions) for a while,
//! crashes and restarts servers and managers (a restarted manager loads the state it had persisted),
//! and plays an operator who attaches, detaches, replaces and orders backups on either manager.
//! After every step the invariants of issue 5 are checked:
//!
//! - no manager's state epoch, write-table version or horizon ever goes back;
//! - reads switch (end of a copy phase) only when every server that is active in the read table
//!   before and after the switch finished copying that very target;
//! - the horizon advances only while the deciding manager sees every server of the write table
//!   active, no rebalance and equal tables, and never while a server of the write table has been
//!   down longer than failure detection can take;
//! - after the network heals, the managers converge to one state (same epoch), every live server
//!   adopts it, and an attach then completes its rebalance and a backup completes.
//!
//! `KUMO_HEAVY=1` runs many more schedules.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use kumofs::cluster::membership::{
    Command, KeepAlive, Membership, MembershipConfig, Now, Outcome, Phase, Rebalance,
};
use kumofs::cluster::pair::PartnerView;
use kumofs::cluster::state::{ClusterState, ServerInfo};
use kumofs::rpc::messages::{BackupOrder, BackupState};

const T0: u64 = 1_764_000_000_000;
const STEP: u64 = 50;
const KEEPALIVE: u64 = 500;
const TICK: u64 = 250;
const SYNC: u64 = 500;
const MAX_DELAY: u64 = 300;
const FAULT_AFTER: u64 = 2000;

/// SplitMix64: small, seeded, good enough to pick schedules.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Node {
    M(usize),
    S(usize),
}

#[derive(Debug)]
enum Msg {
    KeepAlive {
        from: usize,
        to: usize,
        epoch: u64,
    },
    Snapshot {
        to: usize,
        /// Active servers of the read table: who sends what in a copy depends on them.
        read_active: Vec<SocketAddr>,
        epoch: u64,
        rebalance: Option<Rebalance>,
        backup: Option<BackupOrder>,
    },
    PhaseDone {
        from: usize,
        to: usize,
        target: u64,
    },
    BackupDone {
        from: usize,
        to: usize,
        id: u64,
    },
    Sync {
        from: usize,
        to: usize,
        state: Box<ClusterState>,
        view: PartnerView,
        answer: bool,
    },
    Forward {
        to: usize,
        command: Command,
    },
    /// A forward that got no answer: the follower runs the command itself (as the service does).
    LocalApply {
        at: usize,
        command: Command,
    },
}

struct Mgr {
    m: Option<Membership>,
    addr: SocketAddr,
    /// Start of the current process, for its monotonic clock.
    born: u64,
    skew: u64,
    persisted: ClusterState,
    last_epoch: u64,
    last_write: u64,
    last_horizon: u64,
}

struct Srv {
    addr: SocketAddr,
    up: bool,
    epoch: u64,
    rebalance: Option<Rebalance>,
    read_active: Vec<SocketAddr>,
    backup: Option<BackupOrder>,
    backups_done: BTreeSet<u64>,
    done: BTreeSet<(u64, bool)>,
    /// (target, copy?, finish time, read-table active servers it computed its duties with).
    work: Option<(u64, bool, u64, Vec<SocketAddr>)>,
    backup_work: Option<(u64, u64)>,
    next_keepalive: u64,
    down_since: Option<u64>,
}

/// What the schedules exercised, so a run that checks nothing is noticed.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    switches: u64,
    restarts: u64,
    horizon_steps: u64,
    leaders_at_once: u64,
    manager_restarts: u64,
}

struct Sim {
    stats: Stats,
    rng: Rng,
    now: u64,
    mgrs: Vec<Mgr>,
    srvs: Vec<Srv>,
    queue: BTreeMap<(u64, u64), Msg>,
    seq: u64,
    cuts: Vec<(Node, Node, u64)>,
    drop_per_mille: u64,
    /// Finished copies: (server, target) -> the read table's active servers the copy assumed.
    copies: BTreeMap<(SocketAddr, u64), Vec<SocketAddr>>,
    trace: Vec<String>,
    seed: u64,
}

fn config() -> MembershipConfig {
    MembershipConfig {
        fault_after_ms: FAULT_AFTER,
        auto_replace: false,
        replace_delay_ms: 1000,
        // A horizon step every 2.5 s, slower than a change takes to reach every server.
        gc_lag_ms: 30_000,
    }
}

impl Sim {
    fn new(seed: u64, servers: usize) -> Sim {
        let mut rng = Rng(seed);
        let addrs = [
            SocketAddr::from(([10, 0, 0, 1], 19700)),
            SocketAddr::from(([10, 0, 0, 2], 19700)),
        ];
        let mgrs = (0..2)
            .map(|i| {
                let skew = rng.below(5000);
                let partner = addrs[1 - i];
                Mgr {
                    m: Some(
                        Membership::new(
                            addrs[i],
                            Some(partner),
                            config(),
                            None,
                            Now {
                                mono_ms: 0,
                                wall_ms: T0 + skew,
                            },
                        )
                        .unwrap(),
                    ),
                    addr: addrs[i],
                    born: 0,
                    skew,
                    persisted: ClusterState::default(),
                    last_epoch: 0,
                    last_write: 0,
                    last_horizon: 0,
                }
            })
            .collect();
        let mut sim = Sim {
            stats: Stats::default(),
            rng,
            now: 0,
            mgrs,
            srvs: Vec::new(),
            queue: BTreeMap::new(),
            seq: 0,
            cuts: Vec::new(),
            drop_per_mille: 0,
            copies: BTreeMap::new(),
            trace: Vec::new(),
            seed,
        };
        for _ in 0..servers {
            sim.add_server();
        }
        sim
    }

    fn add_server(&mut self) {
        let n = self.srvs.len() as u16 + 1;
        self.srvs.push(Srv {
            addr: SocketAddr::from(([10, 0, 1, n as u8], 19800)),
            up: true,
            epoch: 0,
            rebalance: None,
            read_active: Vec::new(),
            backup: None,
            backups_done: BTreeSet::new(),
            done: BTreeSet::new(),
            work: None,
            backup_work: None,
            next_keepalive: self.now,
            down_since: None,
        });
    }

    fn mgr_now(&self, i: usize) -> Now {
        let m = &self.mgrs[i];
        Now {
            mono_ms: self.now - m.born,
            wall_ms: T0 + self.now + m.skew,
        }
    }

    fn cut(&self, a: Node, b: Node) -> bool {
        self.cuts
            .iter()
            .any(|&(x, y, until)| self.now < until && ((x, y) == (a, b) || (x, y) == (b, a)))
    }

    /// Queues `msg` from `a` to `b`; false if the network dropped it.
    fn send(&mut self, a: Node, b: Node, msg: Msg) -> bool {
        if self.cut(a, b) || self.rng.chance(self.drop_per_mille) {
            return false;
        }
        let at = self.now + 1 + self.rng.below(MAX_DELAY);
        self.seq += 1;
        self.queue.insert((at, self.seq), msg);
        true
    }

    fn fail(&self, what: String) -> ! {
        let tail: Vec<&String> = self.trace.iter().rev().take(40).collect();
        panic!(
            "seed {}: t={} ms: {what}\nlast events (newest first):\n{tail:#?}",
            self.seed, self.now
        );
    }

    /// Runs `f` on manager `i` (if it is up) and checks the invariants of a local decision.
    fn decide<R>(
        &mut self,
        i: usize,
        what: &str,
        f: impl FnOnce(&mut Membership, Now) -> R,
    ) -> Option<R> {
        let now = self.mgr_now(i);
        let m = self.mgrs[i].m.as_mut()?;
        let before = m.state().clone();
        let result = f(m, now);
        let after = m.state().clone();
        self.trace
            .push(format!("t={} m{i} {what} epoch {}", self.now, after.epoch));
        // Reads switch only after every remaining sender copied the target. Checked where the
        // decision is made; a sync only carries a decision of the partner, checked there.
        if what != "sync" {
            self.check_switch(i, &before, &after);
            let attempt = |c: &ClusterState| c.routing.run.as_ref().map_or(0, |r| r.attempt);
            if attempt(&after) > attempt(&before) && attempt(&before) > 0 {
                self.stats.restarts += 1;
            }
        }
        // The horizon moves by a tick's decision; a sync may bring one made by the partner while
        // its state was settled, joined with a newer unsettled routing: that is not a decision.
        if what == "tick" && after.gc_horizon > before.gc_horizon {
            self.stats.horizon_steps += 1;
            let r = &after.routing;
            if !r.is_settled()
                || r.write
                    .nodes
                    .iter()
                    .any(|(_, st)| *st != kumofs::ring::NodeState::Active)
            {
                self.fail(format!(
                    "m{i} advanced the horizon while unsettled or with a fault server: {r:?}"
                ));
            }
            let bound = FAULT_AFTER + 2 * MAX_DELAY + KEEPALIVE + SYNC;
            for (addr, _) in &r.write.nodes {
                let srv = self.srvs.iter().find(|s| s.addr == *addr).unwrap();
                if srv.down_since.is_some_and(|d| self.now - d > bound) {
                    self.fail(format!(
                        "m{i} advanced the horizon while {addr} is down since {:?}",
                        srv.down_since
                    ));
                }
            }
        }
        Some(result)
    }

    fn check_switch(&mut self, i: usize, before: &ClusterState, after: &ClusterState) {
        let Some(Rebalance {
            phase: Phase::Copying,
            target,
            ..
        }) = &before.routing.rebalance
        else {
            return;
        };
        let switched = after.routing.read != before.routing.read
            && after.routing.read.nodes == after.routing.write.nodes
            && after
                .routing
                .rebalance
                .as_ref()
                .is_none_or(|r| r.phase == Phase::Dropping);
        if !switched {
            return;
        }
        self.stats.switches += 1;
        // Every sender still active copied, and computed what to send with the read table as it
        // is now: a sender lost after that left keys nobody sent.
        let senders: Vec<SocketAddr> = before.routing.read.active().collect();
        for s in &senders {
            if !after.routing.read.is_active(*s) {
                continue;
            }
            match self.copies.get(&(*s, *target)) {
                None => self.fail(format!(
                    "m{i} switched reads of copy target {target} but {s} never finished copying it"
                )),
                Some(assumed) if *assumed != senders => self.fail(format!(
                    "m{i} switched reads of copy target {target}: {s} copied assuming senders \
                     {assumed:?}, but the senders are now {senders:?}"
                )),
                Some(_) => {}
            }
        }
    }

    fn check_monotonic(&mut self) {
        for i in 0..2 {
            let Some(m) = &self.mgrs[i].m else { continue };
            let s = m.state();
            let (epoch, write, horizon) = (s.epoch, s.routing.write.version, s.gc_horizon);
            let g = &self.mgrs[i];
            if epoch < g.last_epoch || write < g.last_write || horizon < g.last_horizon {
                self.fail(format!("m{i} went back: epoch {} -> {epoch}, write {} -> {write}, horizon {} -> {horizon}", g.last_epoch, g.last_write, g.last_horizon));
            }
            let s = s.clone();
            let g = &mut self.mgrs[i];
            g.last_epoch = epoch;
            g.last_write = write;
            g.last_horizon = horizon;
            g.persisted = s;
        }
    }

    fn step(&mut self) {
        self.now += STEP;
        let leaders = (0..2)
            .filter(|&i| {
                self.mgrs[i]
                    .m
                    .as_ref()
                    .is_some_and(|m| m.role(self.mgr_now(i)) == kumofs::cluster::pair::Role::Leader)
            })
            .count();
        if leaders == 2 {
            self.stats.leaders_at_once += 1;
        }
        // Deliver what is due.
        let due: Vec<(u64, u64)> = self
            .queue
            .range(..(self.now + 1, 0))
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            let msg = self.queue.remove(&key).unwrap();
            self.deliver(msg);
            self.check_monotonic();
        }
        // Servers: keepalives, work, reports.
        for s in 0..self.srvs.len() {
            self.server_step(s);
        }
        // Managers: ticks and syncs.
        for i in 0..2 {
            if self.mgrs[i].m.is_none() {
                continue;
            }
            if (self.now - self.mgrs[i].born).is_multiple_of(TICK) {
                self.decide(i, "tick", |m, now| m.tick(now));
            }
            if (self.now - self.mgrs[i].born).is_multiple_of(SYNC) {
                self.sync(i, 1 - i, false);
            }
        }
        self.check_monotonic();
    }

    fn sync(&mut self, from: usize, to: usize, answer: bool) {
        let now = self.mgr_now(from);
        let Some(m) = &self.mgrs[from].m else { return };
        let msg = Msg::Sync {
            from,
            to,
            state: Box::new(m.state().clone()),
            view: m.partner_view(now),
            answer,
        };
        self.send(Node::M(from), Node::M(to), msg);
    }

    fn deliver(&mut self, msg: Msg) {
        match msg {
            Msg::KeepAlive { from, to, epoch } => {
                let srv = &self.srvs[from];
                let ka = KeepAlive {
                    addr: srv.addr,
                    info: ServerInfo {
                        shards: 1,
                        stream_port: 19900,
                    },
                    routing_version: epoch,
                    progress: None,
                };
                self.decide(to, "keepalive", |m, now| m.keepalive(ka, now));
                let Some(m) = &self.mgrs[to].m else { return };
                let state = m.state();
                if state.epoch > epoch {
                    let msg = Msg::Snapshot {
                        to: from,
                        epoch: state.epoch,
                        rebalance: state.routing.rebalance.clone(),
                        read_active: state.routing.read.active().collect(),
                        backup: state.backup_order(),
                    };
                    self.send(Node::M(to), Node::S(from), msg);
                }
            }
            Msg::Snapshot {
                to,
                epoch,
                rebalance,
                read_active,
                backup,
            } => {
                let srv = &mut self.srvs[to];
                if srv.up && epoch > srv.epoch {
                    srv.epoch = epoch;
                    srv.rebalance = rebalance;
                    srv.read_active = read_active;
                    srv.backup = backup;
                }
            }
            Msg::PhaseDone { from, to, target } => {
                let addr = self.srvs[from].addr;
                let command = Command::PhaseDone { addr, target };
                let c = command.clone();
                let outcome = self.decide(to, "phase done", |m, now| m.command(c, now, false));
                if outcome == Some(Outcome::Forward) {
                    // Fire and forget: the server repeats its report.
                    self.send(
                        Node::M(to),
                        Node::M(1 - to),
                        Msg::Forward {
                            to: 1 - to,
                            command,
                        },
                    );
                }
            }
            Msg::BackupDone { from, to, id } => {
                let addr = self.srvs[from].addr;
                let done = BackupState::Done {
                    path: format!("/data/{addr}"),
                    records: 1,
                };
                self.decide(to, "backup done", |m, now| {
                    m.backup_done(addr, id, done, now);
                });
            }
            Msg::Sync {
                from,
                to,
                state,
                view,
                answer,
            } => {
                let from_addr = self.mgrs[from].addr;
                let result = self.decide(to, "sync", |m, now| {
                    m.partner_sync(from_addr, *state, &view, now)
                });
                if let Some(Err(e)) = result {
                    self.fail(format!("m{to} refused a sync from m{from}: {e}"));
                }
                if !answer {
                    self.sync(to, from, true);
                }
            }
            Msg::Forward { to, command, .. } => {
                self.decide(to, "forwarded command", |m, now| {
                    let _ = m.command(command, now, true);
                });
            }
            Msg::LocalApply { at, command } => {
                self.decide(at, "local apply", |m, now| {
                    let _ = m.command(command, now, true);
                });
            }
        }
    }

    fn server_step(&mut self, s: usize) {
        if !self.srvs[s].up {
            return;
        }
        // Finish work.
        if let Some((target, copy, finish, assumed)) = self.srvs[s].work.clone() {
            if self.now >= finish {
                let srv = &mut self.srvs[s];
                srv.work = None;
                srv.done.insert((target, copy));
                if copy {
                    self.copies.insert((srv.addr, target), assumed);
                }
                self.trace.push(format!(
                    "t={} s{s} finished {} {target}",
                    self.now,
                    if copy { "copy" } else { "drop" }
                ));
            }
        }
        if let Some((id, finish)) = self.srvs[s].backup_work {
            if self.now >= finish {
                self.srvs[s].backup_work = None;
                self.srvs[s].backups_done.insert(id);
            }
        }
        // Start work the snapshot asks for.
        let addr = self.srvs[s].addr;
        if let Some(r) = self.srvs[s].rebalance.clone() {
            let key = (r.target, r.phase == Phase::Copying);
            if r.waiting.contains(&addr)
                && !self.srvs[s].done.contains(&key)
                && self.srvs[s].work.is_none()
            {
                let finish = self.now + 100 + self.rng.below(2000);
                let assumed = self.srvs[s].read_active.clone();
                self.srvs[s].work = Some((key.0, key.1, finish, assumed));
            }
        }
        if let Some(order) = self.srvs[s].backup.clone() {
            if !self.srvs[s].backups_done.contains(&order.id) && self.srvs[s].backup_work.is_none()
            {
                self.srvs[s].backup_work = Some((order.id, self.now + self.rng.below(1000)));
            }
        }
        // Keepalives and reports, every round, to both managers.
        if self.now >= self.srvs[s].next_keepalive {
            self.srvs[s].next_keepalive = self.now + KEEPALIVE;
            let epoch = self.srvs[s].epoch;
            for to in 0..2 {
                self.send(
                    Node::S(s),
                    Node::M(to),
                    Msg::KeepAlive { from: s, to, epoch },
                );
                if let Some(r) = &self.srvs[s].rebalance {
                    let key = (r.target, r.phase == Phase::Copying);
                    if r.waiting.contains(&addr) && self.srvs[s].done.contains(&key) {
                        let target = r.target;
                        self.send(
                            Node::S(s),
                            Node::M(to),
                            Msg::PhaseDone {
                                from: s,
                                to,
                                target,
                            },
                        );
                    }
                }
                if let Some(order) = &self.srvs[s].backup {
                    if self.srvs[s].backups_done.contains(&order.id) {
                        let id = order.id;
                        self.send(Node::S(s), Node::M(to), Msg::BackupDone { from: s, to, id });
                    }
                }
            }
        }
    }

    /// One random event of the schedule.
    fn chaos(&mut self) {
        let up_mgrs: Vec<usize> = (0..2).filter(|&i| self.mgrs[i].m.is_some()).collect();
        match self.rng.below(100) {
            0..=11 => {
                if let Some(&i) = up_mgrs.get(self.rng.below(up_mgrs.len() as u64) as usize) {
                    let command = match self.rng.below(10) {
                        0..=4 => Command::Attach { replace: true },
                        5 => Command::Attach { replace: false },
                        6 => Command::Detach { replace: true },
                        7 => Command::Replace { full: false },
                        8 => Command::Replace { full: true },
                        _ => Command::Backup { suffix: "b".into() },
                    };
                    self.trace
                        .push(format!("t={} operator {command:?} at m{i}", self.now));
                    self.run_command_checked(i, command);
                }
            }
            12..=17 => {
                let s = self.rng.below(self.srvs.len() as u64) as usize;
                let srv = &mut self.srvs[s];
                if srv.up {
                    srv.up = false;
                    srv.down_since = Some(self.now);
                    srv.epoch = 0;
                    srv.rebalance = None;
                    srv.backup = None;
                    srv.done.clear();
                    srv.work = None;
                    srv.backup_work = None;
                } else {
                    srv.up = true;
                    srv.down_since = None;
                }
                self.trace
                    .push(format!("t={} server s{s} up={}", self.now, self.srvs[s].up));
            }
            18..=21 => {
                let a = if self.rng.chance(500) {
                    Node::M(0)
                } else {
                    Node::S(self.rng.below(self.srvs.len() as u64) as usize)
                };
                let b = Node::M(1);
                let until = self.now + 500 + self.rng.below(8000);
                self.trace
                    .push(format!("t={} cut {a:?}-{b:?} until {until}", self.now));
                self.cuts.push((a, b, until));
            }
            22..=23 => {
                let i = self.rng.below(2) as usize;
                if self.mgrs[i].m.is_some() {
                    self.mgrs[i].m = None;
                    self.trace.push(format!("t={} manager m{i} down", self.now));
                } else {
                    self.restart_manager(i);
                }
            }
            28 => {
                // Both managers stop together and come back later (their state files survive).
                for i in 0..2 {
                    self.mgrs[i].m = None;
                }
                self.trace
                    .push(format!("t={} both managers down", self.now));
            }
            29 if (0..2).all(|i| self.mgrs[i].m.is_none()) => {
                for i in 0..2 {
                    self.restart_manager(i);
                }
            }
            24 if self.srvs.len() < 8 => {
                self.add_server();
                self.trace.push(format!("t={} new server", self.now));
            }
            25..=27 => {
                self.drop_per_mille = [0, 50, 200][self.rng.below(3) as usize];
            }
            _ => {}
        }
    }

    /// An operator command at manager `i`, forwarded like the service does.
    fn run_command_checked(&mut self, i: usize, command: Command) {
        let c = command.clone();
        let outcome = self.decide(i, "command", |m, now| m.command(c, now, false));
        if outcome == Some(Outcome::Forward) {
            let msg = Msg::Forward {
                to: 1 - i,
                command: command.clone(),
            };
            if !self.send(Node::M(i), Node::M(1 - i), msg) {
                // No answer from the partner: the service runs it here after the call times out.
                self.seq += 1;
                self.queue.insert(
                    (self.now + 1000, self.seq),
                    Msg::LocalApply { at: i, command },
                );
            }
        }
    }

    fn restart_manager(&mut self, i: usize) {
        self.stats.manager_restarts += 1;
        let partner = self.mgrs[1 - i].addr;
        self.mgrs[i].born = self.now;
        let now = self.mgr_now(i);
        let state = self.mgrs[i].persisted.clone();
        self.mgrs[i].m = Some(
            Membership::new(self.mgrs[i].addr, Some(partner), config(), Some(state), now).unwrap(),
        );
        self.trace
            .push(format!("t={} manager m{i} restarted", self.now));
    }

    fn heal(&mut self) {
        self.cuts.clear();
        self.drop_per_mille = 0;
        for i in 0..2 {
            if self.mgrs[i].m.is_none() {
                self.restart_manager(i);
            }
        }
        for s in &mut self.srvs {
            s.up = true;
            s.down_since = None;
        }
    }

    fn run_for(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.step();
        }
    }

    fn leader(&self) -> usize {
        (0..2)
            .find(|&i| {
                self.mgrs[i].m.as_ref().unwrap().role(self.mgr_now(i))
                    == kumofs::cluster::pair::Role::Leader
            })
            .unwrap_or_else(|| self.fail("no leader".into()))
    }

    fn converged(&self) -> bool {
        let (a, b) = (
            self.mgrs[0].m.as_ref().unwrap().state(),
            self.mgrs[1].m.as_ref().unwrap().state(),
        );
        a == b && self.srvs.iter().all(|s| s.epoch == a.epoch)
    }
}

fn run_schedule(seed: u64) -> Stats {
    let mut sim = Sim::new(seed, 3 + (seed % 3) as usize);
    // Start: everyone up, attach through either manager.
    sim.run_for(3000);
    let i = (seed % 2) as usize;
    sim.run_command_checked(i, Command::Attach { replace: true });
    // Chaos.
    for _ in 0..(40_000 / STEP) {
        if sim.rng.chance(30) {
            sim.chaos();
        }
        sim.step();
    }
    // Heal and let everything settle.
    sim.heal();
    sim.run_for(4 * FAULT_AFTER);
    let leader = sim.leader();
    sim.run_command_checked(leader, Command::Attach { replace: true });
    let mut waited = 0;
    while waited < 60_000 {
        sim.run_for(STEP);
        waited += STEP;
        let state = sim.mgrs[leader].m.as_ref().unwrap().state();
        if state.routing.is_settled() && sim.converged() {
            break;
        }
    }
    let state = sim.mgrs[leader].m.as_ref().unwrap().state().clone();
    if !state.routing.is_settled() {
        sim.fail(format!(
            "the rebalance did not finish after healing: {:?}",
            state.routing
        ));
    }
    if !sim.converged() {
        let epochs: Vec<u64> = sim.srvs.iter().map(|s| s.epoch).collect();
        sim.fail(format!("no convergence: manager states differ or servers lag (servers {epochs:?}, managers {} {})",
            sim.mgrs[0].m.as_ref().unwrap().state().epoch, sim.mgrs[1].m.as_ref().unwrap().state().epoch));
    }
    if state.routing.write.active().count() != sim.srvs.len() {
        sim.fail(format!(
            "not every server is attached after the final attach: {:?}",
            state.routing.write
        ));
    }
    // A backup ordered now completes on every server.
    sim.run_command_checked(
        leader,
        Command::Backup {
            suffix: "final".into(),
        },
    );
    sim.run_for(10_000);
    let report = sim.mgrs[1 - leader]
        .m
        .as_ref()
        .unwrap()
        .state()
        .backup
        .clone()
        .unwrap();
    if report.suffix != "final"
        || report
            .servers
            .iter()
            .any(|(_, s)| !matches!(s, BackupState::Done { .. }))
    {
        sim.fail(format!("the final backup did not complete: {report:?}"));
    }
    sim.stats
}

#[test]
fn pair_and_servers_keep_the_invariants_under_loss_partitions_and_crashes() {
    let schedules = match std::env::var("KUMO_SIM_SCHEDULES") {
        Ok(n) => n.parse().expect("KUMO_SIM_SCHEDULES is a number"),
        Err(_) if std::env::var_os("KUMO_HEAVY").is_some() => 3000,
        Err(_) => 150,
    };
    let mut total = Stats::default();
    for seed in 0..schedules {
        let s = run_schedule(seed);
        total.switches += s.switches;
        total.restarts += s.restarts;
        total.horizon_steps += s.horizon_steps;
        total.leaders_at_once += s.leaders_at_once;
        total.manager_restarts += s.manager_restarts;
    }
    println!("{schedules} schedules: {total:?}");
    // The schedules must exercise what they check.
    assert!(total.switches > schedules, "{total:?}");
    assert!(total.restarts > 0, "{total:?}");
    assert!(total.horizon_steps > schedules, "{total:?}");
    assert!(total.leaders_at_once > 0, "{total:?}");
    assert!(total.manager_restarts > 0, "{total:?}");
}

#[test]
fn both_managers_restarting_do_not_take_a_dead_server_for_alive() {
    let mut sim = Sim::new(11, 3);
    sim.run_for(3000);
    sim.run_command_checked(0, Command::Attach { replace: true });
    sim.run_for(8000);
    assert!(sim.mgrs[0].m.as_ref().unwrap().state().routing.is_settled());
    // Both managers stop; while they are away server 3 dies; then both come back.
    sim.mgrs[0].m = None;
    sim.mgrs[1].m = None;
    sim.run_for(1000);
    sim.srvs[2].up = false;
    sim.srvs[2].down_since = Some(sim.now);
    sim.run_for(10_000);
    let horizon = sim.mgrs[0].persisted.gc_horizon;
    sim.restart_manager(0);
    sim.restart_manager(1);
    // Every tick is checked by `decide`: no horizon step while server 3 is assumed alive.
    sim.run_for(2 * FAULT_AFTER + 1000);
    let state = sim.mgrs[0].m.as_ref().unwrap().state().clone();
    assert_eq!(
        state.routing.write.state_of(sim.srvs[2].addr),
        Some(kumofs::ring::NodeState::Fault)
    );
    assert_eq!(state.gc_horizon, horizon);
}

#[test]
fn a_quiet_network_converges_in_a_few_rounds() {
    let mut sim = Sim::new(7, 3);
    sim.run_for(3000);
    sim.run_command_checked(1, Command::Attach { replace: true });
    sim.run_for(6000);
    let mut waited = 0;
    while !sim.converged() {
        assert!(waited < 5000, "no convergence on a quiet network");
        sim.run_for(STEP);
        waited += STEP;
    }
    let state = sim.mgrs[0].m.as_ref().unwrap().state();
    assert!(state.routing.is_settled());
    assert_eq!(state.routing.write.active().count(), 3);
    assert!(state.gc_horizon > 0, "the horizon moves once all is well");
}
