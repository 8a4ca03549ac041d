//! Rebalance planning and completion (kumofs's "replace"), as pure functions over [`RoutingState`].
//!
//! A rebalance moves the cluster from the read table (where reads go, the old layout) to the write
//! table (where writes already go). It has two phases, each identified by a *target*, which is always
//! the write table's version while the phase runs:
//!
//! 1. **Copying**: every active server of either table scans its records and sends each record whose
//!    first live owner under the read table is itself to the owners under the write table that lack
//!    it (all owners for a full replace). Reads stay on the read table.
//! 2. When every participant reported `PhaseDone(target)`, reads switch: the write table gets a new
//!    version, the read table becomes a copy of it, and **Dropping** starts under that new target:
//!    every active server removes the keys it no longer owns. When all reported, the rebalance ends.
//!
//! Safety rules, which the simulation tests check:
//! - Reads switch only when every participant of the *current* copy target finished it. A report
//!   names its target, so a late report about an earlier attempt or phase never counts.
//! - Any change of the tables while a phase runs (a server marked fault, or recovered) restarts that
//!   phase under a new target: the remaining servers recompute who sends what, so the keys of a
//!   lost sender are sent by their next live owner. A copy is never finished "as if nothing happened".
//! - A new membership change (attach, detach, replace) starts a new rebalance from the current read
//!   table; an unfinished drop is simply abandoned (old copies stay until the next completed drop).

use std::collections::BTreeSet;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::clock::Hlc;
use super::state::RoutingState;
use super::table::TableSpec;

/// What a rebalance is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Servers copy keys that moved to their new owners; reads follow the old table.
    Copying,
    /// Reads switched; servers drop keys they no longer own.
    Dropping,
}

/// A rebalance in progress, as servers see it in the routing snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rebalance {
    /// Identifies the current phase: the write table's version when the phase (re)started.
    /// Reports name it.
    pub target: u64,
    /// Copy every record to all of its owners, not just the moved ones.
    pub full: bool,
    pub phase: Phase,
    /// Servers that have not reported the end of the current phase.
    pub waiting: BTreeSet<SocketAddr>,
    /// Servers that take part in the current phase.
    pub total: usize,
}

/// The manager's own notes about a rebalance (not needed by servers): shown by `kumoctl status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebalanceRun {
    /// Attempts of the current phase: 1, plus one for every restart after the tables changed.
    pub attempt: u32,
    /// Why the rebalance started.
    pub reason: String,
    /// Why the current phase was last restarted, if it was.
    pub restarted_because: Option<String>,
    /// Wall-clock milliseconds when the rebalance started and when the current phase (re)started.
    pub started_ms: u64,
    pub phase_started_ms: u64,
}

/// A source of fresh versions for one decision: the manager's clock at one wall-clock time.
pub struct Stamper<'a> {
    pub hlc: &'a mut Hlc,
    pub wall_ms: u64,
}

impl Stamper<'_> {
    /// A version newer than every version seen so far.
    pub fn fresh(&mut self) -> u64 {
        self.hlc.now(self.wall_ms)
    }
}

/// Servers that take part in a copy phase: every active server of either table (senders are active
/// in the read table, receivers in the write table).
pub fn copy_participants(write: &TableSpec, read: &TableSpec) -> BTreeSet<SocketAddr> {
    write.active().chain(read.active()).collect()
}

/// Starts a rebalance towards the current write table, replacing any running one. The write table
/// gets a new version, which is the copy phase's target.
pub fn start(routing: &mut RoutingState, full: bool, reason: String, stamp: &mut Stamper<'_>) {
    let target = stamp.fresh();
    routing.write.version = target;
    let waiting = copy_participants(&routing.write, &routing.read);
    routing.rebalance = Some(Rebalance {
        target,
        full,
        phase: Phase::Copying,
        total: waiting.len(),
        waiting,
    });
    routing.run = Some(RebalanceRun {
        attempt: 1,
        reason,
        restarted_because: None,
        started_ms: stamp.wall_ms,
        phase_started_ms: stamp.wall_ms,
    });
    advance(routing, stamp);
}

/// `server` finished the phase named `target`. Returns whether anything changed (a report about
/// another target, or a repeated one, changes nothing).
pub fn phase_done(
    routing: &mut RoutingState,
    server: SocketAddr,
    target: u64,
    stamp: &mut Stamper<'_>,
) -> bool {
    let Some(r) = &mut routing.rebalance else {
        return false;
    };
    if r.target != target || !r.waiting.remove(&server) {
        return false;
    }
    advance(routing, stamp);
    true
}

/// The tables changed while a rebalance runs (the caller already gave the write table its new
/// version): the current phase restarts under that version, with every participant again.
pub fn restart_phase(
    routing: &mut RoutingState,
    why: String,
    wall_ms: u64,
    stamp: &mut Stamper<'_>,
) {
    let Some(r) = &mut routing.rebalance else {
        return;
    };
    r.target = routing.write.version;
    r.waiting = match r.phase {
        Phase::Copying => copy_participants(&routing.write, &routing.read),
        Phase::Dropping => routing.write.active().collect(),
    };
    r.total = r.waiting.len();
    if let Some(run) = &mut routing.run {
        run.attempt += 1;
        run.restarted_because = Some(why);
        run.phase_started_ms = wall_ms;
    }
    advance(routing, stamp);
}

/// Moves to the next phase when nobody is left waiting.
fn advance(routing: &mut RoutingState, stamp: &mut Stamper<'_>) {
    loop {
        let Some(r) = &mut routing.rebalance else {
            return;
        };
        if !r.waiting.is_empty() {
            return;
        }
        match r.phase {
            Phase::Copying => {
                // Every participant copied: reads switch, under a new target for the drop phase so
                // that a late copy report is never taken for a drop report.
                let target = stamp.fresh();
                routing.write.version = target;
                routing.read = routing.write.clone();
                r.phase = Phase::Dropping;
                r.target = target;
                r.waiting = routing.write.active().collect();
                r.total = r.waiting.len();
                if let Some(run) = &mut routing.run {
                    run.attempt = 1;
                    run.restarted_because = None;
                    run.phase_started_ms = stamp.wall_ms;
                }
            }
            Phase::Dropping => {
                routing.rebalance = None;
                routing.run = None;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::table::NodeState;

    fn addr(n: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 19800 + n))
    }

    fn table(version: u64, n: u16) -> TableSpec {
        TableSpec {
            version,
            nodes: (1..=n).map(|i| (addr(i), NodeState::Active)).collect(),
        }
    }

    fn routing(read: u16, write: u16) -> RoutingState {
        RoutingState {
            write: table(1, write),
            read: table(1, read),
            ..RoutingState::default()
        }
    }

    #[test]
    fn copy_then_switch_then_drop() {
        let mut hlc = Hlc::new();
        let mut s = Stamper {
            hlc: &mut hlc,
            wall_ms: 1000,
        };
        let mut r = routing(3, 4);
        start(&mut r, false, "attach".into(), &mut s);
        let copy_target = r.write.version;
        let reb = r.rebalance.clone().unwrap();
        assert_eq!(reb.target, copy_target);
        assert_eq!(reb.phase, Phase::Copying);
        assert_eq!(reb.total, 4);
        for n in 1..=3 {
            assert!(phase_done(&mut r, addr(n), copy_target, &mut s));
            assert_ne!(r.read.nodes, r.write.nodes, "reads switched early");
        }
        // Stale and repeated reports change nothing.
        assert!(!phase_done(&mut r, addr(4), copy_target - 1, &mut s));
        assert!(!phase_done(&mut r, addr(1), copy_target, &mut s));
        assert!(phase_done(&mut r, addr(4), copy_target, &mut s));
        assert_eq!(r.read, r.write);
        let drop = r.rebalance.clone().unwrap();
        assert_eq!(drop.phase, Phase::Dropping);
        assert!(drop.target > copy_target);
        // A late copy report is not a drop report.
        assert!(!phase_done(&mut r, addr(1), copy_target, &mut s));
        for n in 1..=4 {
            phase_done(&mut r, addr(n), drop.target, &mut s);
        }
        assert!(r.rebalance.is_none() && r.run.is_none());
    }

    #[test]
    fn restart_names_a_new_target_and_waits_for_everyone_again() {
        let mut hlc = Hlc::new();
        let mut s = Stamper {
            hlc: &mut hlc,
            wall_ms: 1000,
        };
        let mut r = routing(3, 4);
        start(&mut r, false, "attach".into(), &mut s);
        let first = r.write.version;
        phase_done(&mut r, addr(1), first, &mut s);
        phase_done(&mut r, addr(2), first, &mut s);
        // Server 3 is lost: the caller marks it fault and gives the tables a new version.
        r.write.set(addr(3), NodeState::Fault);
        r.read.set(addr(3), NodeState::Fault);
        r.write.version = s.fresh();
        restart_phase(&mut r, "lost 127.0.0.1:19803".into(), 2000, &mut s);
        let reb = r.rebalance.clone().unwrap();
        assert!(reb.target > first);
        assert_eq!(reb.phase, Phase::Copying);
        assert_eq!(reb.waiting.len(), 3);
        assert_eq!(r.run.as_ref().unwrap().attempt, 2);
        assert!(!phase_done(&mut r, addr(4), first, &mut s));
        assert_eq!(r.rebalance.as_ref().unwrap().waiting.len(), 3);
    }

    #[test]
    fn nothing_to_wait_for_finishes_at_once() {
        let mut hlc = Hlc::new();
        let mut s = Stamper {
            hlc: &mut hlc,
            wall_ms: 1000,
        };
        let mut r = RoutingState::default();
        start(&mut r, true, "replace".into(), &mut s);
        assert!(r.rebalance.is_none());
        assert_eq!(r.read, r.write);
    }
}
