//! The manager's membership and routing state machine (sans-IO).
//!
//! It owns what kumofs calls the hash spaces: the *write* table (kumofs `whs`), which writes follow,
//! and the *read* table (`rhs`), which reads follow. Outside a rebalance they are equal. It is driven by
//! events (a server's keepalive, an admin command, a server reporting that its copy phase finished) and
//! by `tick(now)`, and answers with [`Action`]s for the caller to carry out: push tables, tell servers
//! to start copying or dropping. It reads no clock and opens no socket, so tests drive it step by step
//! with any interleaving of messages, including lost ones.
//!
//! Lifecycle of a server: it sends keepalives and appears as *not attached*; `attach` puts it in the
//! write table as active; missed keepalives for `fault_after_ms` mark it *fault* in both tables (its
//! ring positions stay, its keys are served by the remaining copies); `attach` again recovers it;
//! `detach` removes fault servers from the ring. Every change of a table gets a new version, taken from
//! the caller's hybrid logical clock, so a newer table always wins when managers, servers and gateways
//! compare them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

pub use crate::ring::NodeState;

/// One routing table: the attached servers with their states, under a version.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TableSpec {
    /// Hybrid-logical-clock version; the newer table wins everywhere.
    pub version: u64,
    /// Attached servers, sorted by address.
    pub nodes: Vec<(SocketAddr, NodeState)>,
}

impl TableSpec {
    fn state_of(&self, addr: SocketAddr) -> Option<NodeState> {
        self.nodes.iter().find(|(a, _)| *a == addr).map(|(_, s)| *s)
    }

    fn set(&mut self, addr: SocketAddr, state: NodeState) {
        match self.nodes.iter_mut().find(|(a, _)| *a == addr) {
            Some(entry) => entry.1 = state,
            None => {
                self.nodes.push((addr, state));
                self.nodes.sort_by_key(|(a, _)| *a);
            }
        }
    }

    /// Active servers of this table.
    pub fn active(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.nodes
            .iter()
            .filter(|(_, s)| *s == NodeState::Active)
            .map(|(a, _)| *a)
    }
}

/// What a rebalance is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Servers copy keys that moved to their new owners; reads follow the old table.
    Copying,
    /// Reads switched; servers drop keys they no longer own.
    Dropping,
}

/// A rebalance in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rebalance {
    /// Version of the write table this rebalance moves data to; reports name it.
    pub target: u64,
    /// Copy every record to all of its owners, not just the moved ones.
    pub full: bool,
    pub phase: Phase,
    /// Servers that have not reported the end of the current phase.
    pub waiting: BTreeSet<SocketAddr>,
    /// Servers that took part.
    pub total: usize,
}

/// Something the caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send both tables to every server and gateway.
    PushRouting,
    /// Tell `server` to copy the keys it must hand over under the current tables.
    StartCopy {
        server: SocketAddr,
        target: u64,
        full: bool,
    },
    /// Tell `server` to drop keys it does not own under the write table.
    StartDrop { server: SocketAddr, target: u64 },
}

/// Tunables.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// A server that sent nothing for this long is judged down.
    pub fault_after_ms: u64,
    /// Attach new and detach fault servers by itself, then rebalance (`-a`).
    pub auto_replace: bool,
    /// Delay before an automatic replace, so that events close together make one (`-Rs`).
    pub replace_delay_ms: u64,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        Self {
            fault_after_ms: 10_000,
            auto_replace: false,
            replace_delay_ms: 4_000,
        }
    }
}

#[derive(Debug, Clone)]
struct Seen {
    last_ms: u64,
    alive: bool,
}

/// The state machine.
#[derive(Debug, Clone)]
pub struct Membership {
    config: MembershipConfig,
    seen: BTreeMap<SocketAddr, Seen>,
    write: TableSpec,
    read: TableSpec,
    rebalance: Option<Rebalance>,
    auto_replace_at: Option<u64>,
}

/// A summary for `kumoctl status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub write: TableSpec,
    pub read: TableSpec,
    /// Servers that are alive but not active in the write table.
    pub not_attached: Vec<SocketAddr>,
    pub rebalance: Option<Rebalance>,
    pub auto_replace: bool,
}

impl Membership {
    pub fn new(config: MembershipConfig) -> Self {
        Self {
            config,
            seen: BTreeMap::new(),
            write: TableSpec::default(),
            read: TableSpec::default(),
            rebalance: None,
            auto_replace_at: None,
        }
    }

    /// Restores tables persisted by an earlier run (or received from the partner).
    pub fn restore(&mut self, write: TableSpec, read: TableSpec) {
        self.write = write;
        self.read = read;
    }

    pub fn write_table(&self) -> &TableSpec {
        &self.write
    }

    pub fn read_table(&self) -> &TableSpec {
        &self.read
    }

    pub fn rebalance(&self) -> Option<&Rebalance> {
        self.rebalance.as_ref()
    }

    pub fn auto_replace(&self) -> bool {
        self.config.auto_replace
    }

    /// A server said it is alive (registration or keepalive).
    pub fn keepalive(&mut self, server: SocketAddr, now_ms: u64) -> Vec<Action> {
        let entry = self.seen.entry(server).or_insert(Seen {
            last_ms: now_ms,
            alive: false,
        });
        entry.last_ms = now_ms;
        let was_alive = std::mem::replace(&mut entry.alive, true);
        if !was_alive
            && self.config.auto_replace
            && self.write.state_of(server) != Some(NodeState::Active)
        {
            self.auto_replace_at = Some(now_ms + self.config.replace_delay_ms);
        }
        Vec::new()
    }

    /// Advances time: judges silent servers down, runs a due automatic replace.
    pub fn tick(&mut self, now_ms: u64, version: u64) -> Vec<Action> {
        let mut lost = Vec::new();
        for (addr, seen) in &mut self.seen {
            if seen.alive && now_ms.saturating_sub(seen.last_ms) >= self.config.fault_after_ms {
                seen.alive = false;
                lost.push(*addr);
            }
        }
        let mut actions = Vec::new();
        let mut changed = false;
        for addr in lost {
            if self.write.state_of(addr) == Some(NodeState::Active) {
                self.write.set(addr, NodeState::Fault);
                changed = true;
            }
            if self.read.state_of(addr) == Some(NodeState::Active) {
                self.read.set(addr, NodeState::Fault);
                changed = true;
            }
            if let Some(r) = &mut self.rebalance {
                // A lost server cannot report; the rebalance goes on without it, and its keys keep
                // their other copies. A later `replace` or attach repairs what it held.
                r.waiting.remove(&addr);
            }
            if self.config.auto_replace {
                self.auto_replace_at = Some(now_ms + self.config.replace_delay_ms);
            }
        }
        if changed {
            self.write.version = version;
            self.read.version = version;
            actions.push(Action::PushRouting);
            actions.extend(self.advance_rebalance(version));
        }
        if let Some(at) = self.auto_replace_at {
            if now_ms >= at {
                self.auto_replace_at = None;
                let mut more = self.attach(false, version);
                more.extend(self.detach(true, version));
                actions.extend(more);
            }
        }
        actions
    }

    /// Attaches every alive server that is not active in the write table, recovering fault ones.
    pub fn attach(&mut self, replace: bool, version: u64) -> Vec<Action> {
        let mut changed = false;
        for (addr, seen) in &self.seen {
            if seen.alive && self.write.state_of(*addr) != Some(NodeState::Active) {
                self.write.set(*addr, NodeState::Active);
                changed = true;
            }
        }
        self.after_membership_change(changed, replace, version)
    }

    /// Removes fault servers from the write table.
    pub fn detach(&mut self, replace: bool, version: u64) -> Vec<Action> {
        let before = self.write.nodes.len();
        self.write.nodes.retain(|(_, s)| *s == NodeState::Active);
        let changed = self.write.nodes.len() != before;
        self.after_membership_change(changed, replace, version)
    }

    fn after_membership_change(
        &mut self,
        changed: bool,
        replace: bool,
        version: u64,
    ) -> Vec<Action> {
        if changed {
            self.write.version = version;
        }
        if replace {
            self.start_replace(false, version)
        } else if changed {
            vec![Action::PushRouting]
        } else {
            Vec::new()
        }
    }

    /// Starts (or restarts) a rebalance towards the current write table.
    pub fn start_replace(&mut self, full: bool, version: u64) -> Vec<Action> {
        if self.write == self.read && !full {
            self.rebalance = None;
            return vec![Action::PushRouting];
        }
        if self.write.version <= self.read.version {
            // Keep "newer wins" meaningful: the target must be newer than what reads follow.
            self.write.version = version.max(self.read.version + 1);
        }
        let servers: BTreeSet<SocketAddr> = self
            .write
            .active()
            .chain(self.read.active())
            .filter(|a| self.seen.get(a).is_some_and(|s| s.alive))
            .collect();
        let target = self.write.version;
        let mut actions = vec![Action::PushRouting];
        actions.extend(servers.iter().map(|s| Action::StartCopy {
            server: *s,
            target,
            full,
        }));
        self.rebalance = Some(Rebalance {
            target,
            full,
            phase: Phase::Copying,
            total: servers.len(),
            waiting: servers,
        });
        actions.extend(self.advance_rebalance(version));
        actions
    }

    /// A server finished its part of the current phase.
    pub fn phase_done(&mut self, server: SocketAddr, target: u64, version: u64) -> Vec<Action> {
        match &mut self.rebalance {
            Some(r) if r.target == target => {
                r.waiting.remove(&server);
            }
            // A report about an older rebalance: ignore it, the newer one supersedes it.
            _ => return Vec::new(),
        }
        self.advance_rebalance(version)
    }

    fn advance_rebalance(&mut self, _version: u64) -> Vec<Action> {
        let Some(r) = &mut self.rebalance else {
            return Vec::new();
        };
        if !r.waiting.is_empty() {
            return Vec::new();
        }
        match r.phase {
            Phase::Copying => {
                self.read = self.write.clone();
                let servers: BTreeSet<SocketAddr> = self
                    .write
                    .active()
                    .filter(|a| self.seen.get(a).is_some_and(|s| s.alive))
                    .collect();
                r.phase = Phase::Dropping;
                r.total = servers.len();
                let target = r.target;
                let mut actions = vec![Action::PushRouting];
                actions.extend(
                    servers
                        .iter()
                        .map(|s| Action::StartDrop { server: *s, target }),
                );
                r.waiting = servers;
                if r.waiting.is_empty() {
                    self.rebalance = None;
                }
                actions
            }
            Phase::Dropping => {
                // Publish the end, so servers and gateways stop seeing a rebalance in progress.
                self.rebalance = None;
                vec![Action::PushRouting]
            }
        }
    }

    pub fn set_auto_replace(&mut self, on: bool, now_ms: u64) {
        self.config.auto_replace = on;
        if on {
            self.auto_replace_at = Some(now_ms);
        }
    }

    /// Adopts tables from the partner manager when they are newer (newest wins).
    pub fn merge_partner(&mut self, write: TableSpec, read: TableSpec) -> bool {
        let mut changed = false;
        if write.version > self.write.version {
            self.write = write;
            changed = true;
        }
        if read.version > self.read.version {
            self.read = read;
            changed = true;
        }
        changed
    }

    pub fn status(&self) -> StatusReport {
        let not_attached = self
            .seen
            .iter()
            .filter(|(a, s)| s.alive && self.write.state_of(**a) != Some(NodeState::Active))
            .map(|(a, _)| *a)
            .collect();
        StatusReport {
            write: self.write.clone(),
            read: self.read.clone(),
            not_attached,
            rebalance: self.rebalance.clone(),
            auto_replace: self.config.auto_replace,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 19800 + n))
    }

    fn machine() -> Membership {
        Membership::new(MembershipConfig {
            fault_after_ms: 1000,
            ..Default::default()
        })
    }

    #[test]
    fn servers_appear_not_attached_then_attach() {
        let mut m = machine();
        for n in 1..=3 {
            m.keepalive(addr(n), 0);
        }
        assert_eq!(m.status().not_attached, vec![addr(1), addr(2), addr(3)]);
        let actions = m.attach(false, 10);
        assert_eq!(actions, vec![Action::PushRouting]);
        assert!(m.status().not_attached.is_empty());
        assert_eq!(m.write_table().version, 10);
        assert_eq!(m.write_table().active().count(), 3);
    }

    #[test]
    fn attach_with_replace_copies_then_switches_reads_then_drops() {
        let mut m = machine();
        m.keepalive(addr(1), 0);
        m.attach(true, 5);
        // One server, empty read table: it still takes part.
        let r = m.rebalance().cloned().unwrap();
        assert_eq!(r.phase, Phase::Copying);
        m.keepalive(addr(2), 1);
        let actions = m.attach(true, 20);
        let copies: Vec<_> = actions
            .iter()
            .filter(|a| matches!(a, Action::StartCopy { .. }))
            .collect();
        assert_eq!(copies.len(), 2);
        assert_ne!(m.read_table(), m.write_table());
        assert!(m.phase_done(addr(1), 20, 21).is_empty());
        // A stale report for an older rebalance changes nothing.
        assert!(m.phase_done(addr(2), 5, 22).is_empty());
        let actions = m.phase_done(addr(2), 20, 23);
        assert_eq!(actions[0], Action::PushRouting);
        assert_eq!(m.read_table(), m.write_table());
        assert_eq!(m.rebalance().unwrap().phase, Phase::Dropping);
        assert!(m.phase_done(addr(1), 20, 24).is_empty());
        assert_eq!(m.phase_done(addr(2), 20, 25), vec![Action::PushRouting]);
        assert!(m.rebalance().is_none());
    }

    #[test]
    fn silent_server_becomes_fault_and_recovers_on_attach() {
        let mut m = machine();
        for n in 1..=3 {
            m.keepalive(addr(n), 0);
        }
        m.attach(false, 1);
        m.start_replace(false, 2);
        m.keepalive(addr(1), 900);
        m.keepalive(addr(2), 900);
        assert!(m.tick(999, 3).is_empty());
        let actions = m.tick(1000, 4);
        assert_eq!(actions, vec![Action::PushRouting]);
        assert_eq!(m.write_table().state_of(addr(3)), Some(NodeState::Fault));
        assert_eq!(m.write_table().version, 4);
        // It comes back: listed as not attached until attach recovers it.
        m.keepalive(addr(3), 1100);
        assert_eq!(m.status().not_attached, vec![addr(3)]);
        m.attach(false, 5);
        assert_eq!(m.write_table().state_of(addr(3)), Some(NodeState::Active));
        // Detach removes nothing now.
        assert!(m.detach(false, 6).is_empty());
    }

    #[test]
    fn detach_removes_fault_servers() {
        let mut m = machine();
        m.keepalive(addr(1), 0);
        m.keepalive(addr(2), 0);
        m.attach(false, 1);
        m.keepalive(addr(1), 5000);
        m.tick(5000, 2);
        m.detach(false, 3);
        assert_eq!(m.write_table().nodes, vec![(addr(1), NodeState::Active)]);
    }

    #[test]
    fn losing_a_server_mid_rebalance_does_not_block_it() {
        let mut m = machine();
        for n in 1..=3 {
            m.keepalive(addr(n), 0);
        }
        m.attach(true, 1);
        m.phase_done(addr(1), 1, 2);
        m.phase_done(addr(2), 1, 2);
        m.keepalive(addr(1), 1500);
        m.keepalive(addr(2), 1500);
        let actions = m.tick(1500, 7);
        assert!(actions.contains(&Action::PushRouting));
        assert_eq!(m.rebalance().unwrap().phase, Phase::Dropping);
    }

    #[test]
    fn partner_tables_newest_wins() {
        let mut m = machine();
        let newer = TableSpec {
            version: 9,
            nodes: vec![(addr(1), NodeState::Active)],
        };
        assert!(m.merge_partner(newer.clone(), newer.clone()));
        assert!(!m.merge_partner(TableSpec::default(), TableSpec::default()));
        assert_eq!(m.write_table(), &newer);
    }

    #[test]
    fn auto_replace_attaches_after_the_delay() {
        let mut m = Membership::new(MembershipConfig {
            fault_after_ms: 1000,
            auto_replace: true,
            replace_delay_ms: 100,
        });
        m.keepalive(addr(1), 0);
        m.keepalive(addr(2), 50);
        assert!(m.tick(60, 1).is_empty());
        let actions = m.tick(150, 2);
        assert!(actions
            .iter()
            .any(|a| matches!(a, Action::StartCopy { .. })));
        assert_eq!(m.write_table().active().count(), 2);
    }
}
