//! The simulated world of `cluster_manager_sim`: two managers, fake servers, a lossy network with
//! partitions, and the invariant checks made at every decision (see `main.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use kumofs::cluster::membership::{
    Command, KeepAlive, Membership, MembershipConfig, Now, Outcome, Phase, Rebalance,
};
use kumofs::cluster::pair::{PartnerView, Role};
use kumofs::cluster::state::{ClusterState, ServerInfo};
use kumofs::rpc::messages::{BackupOrder, BackupState, ManagerContact};

pub const T0: u64 = 1_764_000_000_000;
pub const STEP: u64 = 50;
pub const KEEPALIVE: u64 = 500;
pub const TICK: u64 = 250;
pub const SYNC: u64 = 500;
pub const MAX_DELAY: u64 = 300;
pub const FAULT_AFTER: u64 = 2000;

/// SplitMix64: small, seeded, good enough to pick schedules.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Node {
    M(usize),
    S(usize),
}

#[derive(Debug)]
pub enum Msg {
    KeepAlive {
        from: usize,
        to: usize,
        epoch: u64,
        /// What the server says about both managers (see `cluster::pair`).
        managers: Vec<ManagerContact>,
    },
    /// A manager's answer to a keepalive (a real one answers `UpToDate` when the server holds its
    /// epoch; the fake server then adopts nothing, and only notes the answer).
    Snapshot {
        from: usize,
        to: usize,
        /// Active servers of the read table: who sends what in a copy depends on them.
        read_active: Vec<SocketAddr>,
        /// Version of the write table: a server adopts a newer write table, or the same one under
        /// a newer epoch (`RoutingSnapshot::supersedes`).
        write: u64,
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
        /// When the sender sent it (its process start and monotonic time), for the answer.
        sent: (u64, u64),
        /// For an answer: the `sent` of the sync it answers.
        answers: Option<(u64, u64)>,
    },
    Forward {
        to: usize,
        command: Command,
    },
}

pub struct Mgr {
    pub m: Option<Membership>,
    pub addr: SocketAddr,
    /// Start of the current process, for its monotonic clock.
    pub born: u64,
    pub skew: u64,
    pub persisted: ClusterState,
    pub last_epoch: u64,
    pub last_write: u64,
    pub last_horizon: u64,
}

pub struct Srv {
    pub addr: SocketAddr,
    pub up: bool,
    pub write: u64,
    pub epoch: u64,
    pub rebalance: Option<Rebalance>,
    pub read_active: Vec<SocketAddr>,
    pub backup: Option<BackupOrder>,
    pub backups_done: BTreeSet<u64>,
    pub done: BTreeSet<(u64, bool)>,
    /// (target, copy?, finish time, read-table active servers it computed its duties with).
    pub work: Option<(u64, bool, u64, Vec<SocketAddr>)>,
    pub backup_work: Option<(u64, u64)>,
    pub next_keepalive: u64,
    pub down_since: Option<u64>,
    /// Per manager: when it last answered (or when the server started asking) and the write table
    /// version it offered then.
    pub contacts: [(u64, Option<u64>); 2],
}

/// What the schedules exercised, so a run that checks nothing is noticed.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub switches: u64,
    pub restarts: u64,
    pub horizon_steps: u64,
    /// Steps where both managers drove (allowed only when the network lost messages lately).
    pub leaders_at_once: u64,
    pub manager_restarts: u64,
    /// Steps where the follower could not reach the leader and did not drive.
    pub deferred: u64,
    /// Steps where the follower drove while the leader was down.
    pub takeovers: u64,
}

pub struct Sim {
    pub stats: Stats,
    pub rng: Rng,
    pub now: u64,
    pub mgrs: Vec<Mgr>,
    pub srvs: Vec<Srv>,
    pub queue: BTreeMap<(u64, u64), Msg>,
    pub seq: u64,
    pub cuts: Vec<(Node, Node, u64)>,
    pub drop_per_mille: u64,
    /// The last time the network dropped messages at random: both managers may drive for a while
    /// after it (servers' news of the leader can be lost), never otherwise.
    pub lossy_at: Option<u64>,
    /// Finished copies: (server, target) -> the read table's active servers the copy assumed.
    pub copies: BTreeMap<(SocketAddr, u64), Vec<SocketAddr>>,
    pub trace: Vec<String>,
    pub seed: u64,
}

pub fn config() -> MembershipConfig {
    MembershipConfig {
        fault_after_ms: FAULT_AFTER,
        auto_replace: false,
        replace_delay_ms: 1000,
        // A horizon step every 2.5 s, slower than a change takes to reach every server.
        gc_lag_ms: 30_000,
    }
}

impl Sim {
    pub fn new(seed: u64, servers: usize) -> Sim {
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
            lossy_at: None,
            copies: BTreeMap::new(),
            trace: Vec::new(),
            seed,
        };
        for _ in 0..servers {
            sim.add_server();
        }
        sim
    }

    pub fn add_server(&mut self) {
        let n = self.srvs.len() as u16 + 1;
        self.srvs.push(Srv {
            addr: SocketAddr::from(([10, 0, 1, n as u8], 19800)),
            up: true,
            write: 0,
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
            contacts: [(self.now, None); 2],
        });
    }

    pub fn mgr_now(&self, i: usize) -> Now {
        let m = &self.mgrs[i];
        Now {
            mono_ms: self.now - m.born,
            wall_ms: T0 + self.now + m.skew,
        }
    }

    pub fn cut(&self, a: Node, b: Node) -> bool {
        self.cuts
            .iter()
            .any(|&(x, y, until)| self.now < until && ((x, y) == (a, b) || (x, y) == (b, a)))
    }

    /// Queues `msg` from `a` to `b`; false if the network dropped it.
    pub fn send(&mut self, a: Node, b: Node, msg: Msg) -> bool {
        if self.cut(a, b) || self.rng.chance(self.drop_per_mille) {
            return false;
        }
        let at = self.now + 1 + self.rng.below(MAX_DELAY);
        self.seq += 1;
        self.queue.insert((at, self.seq), msg);
        true
    }

    pub fn fail(&self, what: String) -> ! {
        if let Ok(path) = std::env::var("KUMO_SIM_TRACE") {
            let _ = std::fs::write(path, self.trace.join("\n"));
        }
        let tail: Vec<&String> = self.trace.iter().rev().take(80).collect();
        panic!(
            "seed {}: t={} ms: {what}\nlast events (newest first):\n{tail:#?}",
            self.seed, self.now
        );
    }

    /// Runs `f` on manager `i` (if it is up) and checks the invariants of a local decision.
    pub fn decide<R>(
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

    pub fn check_switch(&mut self, i: usize, before: &ClusterState, after: &ClusterState) {
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

    pub fn check_monotonic(&mut self) {
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

    pub fn step(&mut self) {
        self.now += STEP;
        if self.drop_per_mille > 0 {
            self.lossy_at = Some(self.now);
        }
        self.check_roles();
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
                self.sync(i, 1 - i, None);
            }
        }
        self.check_monotonic();
    }

    /// Both managers drive at once only shortly after the network lost messages at random (then
    /// servers' news of the leader may not have reached the follower); counts what the schedules
    /// exercised of the pair's roles.
    fn check_roles(&mut self) {
        let role = |i: usize| {
            self.mgrs[i].m.as_ref().map(|m| {
                (
                    m.role(self.mgr_now(i)),
                    m.partner_reachable(self.mgr_now(i)),
                )
            })
        };
        let (first, second) = (role(0), role(1));
        let lead = |r: Option<(Role, bool)>| r.is_some_and(|(role, _)| role == Role::Leader);
        if lead(first) && lead(second) {
            self.stats.leaders_at_once += 1;
            let quiet = FAULT_AFTER + 2 * KEEPALIVE + 4 * MAX_DELAY;
            if self.lossy_at.is_none_or(|t| self.now - t > quiet) {
                let news: Vec<_> = (0..2)
                    .map(|i| {
                        let m = self.mgrs[i].m.as_ref().unwrap();
                        let now = self.mgr_now(i);
                        (m.servers_hear_partner(now), m.state().routing.write.version)
                    })
                    .collect();
                let cuts: Vec<_> = self.cuts.iter().filter(|c| c.2 > self.now).collect();
                self.fail(format!(
                    "both managers drive on a network that lost nothing lately: {first:?} \
                     {second:?}, servers' news and write versions {news:?}, cuts {cuts:?}, \
                     servers (up, contacts) {:?}",
                    self.srvs
                        .iter()
                        .map(|s| (s.up, s.contacts))
                        .collect::<Vec<_>>()
                ));
            }
        }
        if first.is_some()
            && second.is_some_and(|(role, reachable)| role == Role::Follower && !reachable)
        {
            self.stats.deferred += 1;
        }
        if first.is_none() && lead(second) {
            self.stats.takeovers += 1;
        }
    }

    /// A sync from manager `from` to `to`, or an answer to the one sent at `answers`.
    pub fn sync(&mut self, from: usize, to: usize, answers: Option<(u64, u64)>) {
        let now = self.mgr_now(from);
        let Some(m) = &self.mgrs[from].m else { return };
        let msg = Msg::Sync {
            from,
            to,
            state: Box::new(m.state().clone()),
            view: m.partner_view(now),
            sent: (self.mgrs[from].born, now.mono_ms),
            answers,
        };
        self.send(Node::M(from), Node::M(to), msg);
    }

    pub fn deliver(&mut self, msg: Msg) {
        match msg {
            Msg::KeepAlive {
                from,
                to,
                epoch,
                managers,
            } => {
                let srv = &self.srvs[from];
                let ka = KeepAlive {
                    addr: srv.addr,
                    info: ServerInfo {
                        shards: 1,
                        stream_port: 19900,
                    },
                    routing_version: epoch,
                    progress: None,
                    managers,
                };
                self.decide(to, "keepalive", |m, now| m.keepalive(ka, now));
                let Some(m) = &self.mgrs[to].m else { return };
                let state = m.state();
                let msg = Msg::Snapshot {
                    from: to,
                    to: from,
                    write: state.routing.write.version,
                    epoch: state.epoch,
                    rebalance: state.routing.rebalance.clone(),
                    read_active: state.routing.read.active().collect(),
                    backup: state.backup_order(),
                };
                self.send(Node::M(to), Node::S(from), msg);
            }
            Msg::Snapshot {
                from,
                to,
                write,
                epoch,
                rebalance,
                read_active,
                backup,
            } => {
                let now = self.now;
                let srv = &mut self.srvs[to];
                if srv.up {
                    srv.contacts[from] = (now, Some(write));
                }
                if srv.up && (write, epoch) > (srv.write, srv.epoch) {
                    srv.write = write;
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
                sent,
                answers,
            } => {
                let from_addr = self.mgrs[from].addr;
                let result = match answers {
                    // The answer to a question of a previous life of `to`: its connection died
                    // with it, the answer never arrives.
                    Some((born, _)) if born != self.mgrs[to].born => return,
                    Some((_, asked)) => self.decide(to, "sync", |m, now| {
                        let asked = Now {
                            mono_ms: asked,
                            ..now
                        };
                        m.partner_answer(from_addr, *state, &view, asked, now)
                    }),
                    None => self.decide(to, "sync", |m, now| {
                        m.partner_sync(from_addr, *state, &view, now)
                    }),
                };
                if let Some(Err(e)) = result {
                    self.fail(format!("m{to} refused a sync from m{from}: {e}"));
                }
                if answers.is_none() {
                    self.sync(to, from, Some(sent));
                }
            }
            Msg::Forward { to, command, .. } => {
                self.decide(to, "forwarded command", |m, now| {
                    let _ = m.command(command, now, true);
                });
            }
        }
    }

    /// An operator command at manager `i`, forwarded like the service does (a forward that gets
    /// no answer is an error for the operator: nothing runs).
    pub fn run_command_checked(&mut self, i: usize, command: Command) {
        self.command(i, command);
    }

    /// Like [`Sim::run_command_checked`], returning what manager `i` answered first.
    pub fn command(&mut self, i: usize, command: Command) -> Option<Outcome> {
        let c = command.clone();
        let outcome = self.decide(i, "command", |m, now| m.command(c, now, false));
        if outcome == Some(Outcome::Forward) {
            let msg = Msg::Forward { to: 1 - i, command };
            self.send(Node::M(i), Node::M(1 - i), msg);
        }
        outcome
    }

    pub fn restart_manager(&mut self, i: usize) {
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

    pub fn heal(&mut self) {
        self.cuts.clear();
        self.drop_per_mille = 0;
        for i in 0..2 {
            if self.mgrs[i].m.is_none() {
                self.restart_manager(i);
            }
        }
        let now = self.now;
        for s in &mut self.srvs {
            if !s.up {
                s.contacts = [(now, None); 2];
            }
            s.up = true;
            s.down_since = None;
        }
    }

    pub fn run_for(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.step();
        }
    }

    /// The role of manager `i`, which is up.
    pub fn role(&self, i: usize) -> Role {
        self.mgrs[i].m.as_ref().expect("up").role(self.mgr_now(i))
    }

    /// The state of manager `i`, which is up.
    pub fn state(&self, i: usize) -> &ClusterState {
        self.mgrs[i].m.as_ref().expect("up").state()
    }

    pub fn leader(&self) -> usize {
        (0..2)
            .find(|&i| self.mgrs[i].m.as_ref().unwrap().role(self.mgr_now(i)) == Role::Leader)
            .unwrap_or_else(|| self.fail("no leader".into()))
    }

    pub fn converged(&self) -> bool {
        let (a, b) = (
            self.mgrs[0].m.as_ref().unwrap().state(),
            self.mgrs[1].m.as_ref().unwrap().state(),
        );
        a == b && self.srvs.iter().all(|s| s.epoch == a.epoch)
    }
}
