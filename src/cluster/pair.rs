//! The manager pair (`-p`): who drives, and what the two managers tell each other.
//!
//! Both managers serve servers, gateways and kumoctl from the same synced state (see
//! [`super::state`]), but only one *drives*: it alone judges servers down, runs attach, detach and
//! rebalances, advances the garbage-collection horizon and orders backups. As in kumofs, the manager
//! with the smaller address has priority. The other one is a *follower*: it forwards commands and
//! rebalance reports to the driver, and takes over when it has not been able to exchange a sync
//! with its partner for `timeout_ms`. A manager that starts up *catches up* first: until its first
//! successful exchange with the partner (or `timeout_ms` without one) it drives nothing, so a
//! restarted manager never acts on the stale state it loaded from disk.
//!
//! A partition between the two managers (each still reaching servers) makes both drive; the join of
//! their states when the partition heals keeps the newest routing, so they converge, but decisions
//! made on the losing side in the meantime are superseded. kumofs has the same limit. Meanwhile
//! servers and gateways, which hear both sides, follow the side with the newer write table (see
//! `RoutingSnapshot::supersedes`), the one the join will keep, not whichever side changed last.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::liveness::HeardServer;

/// What a manager is doing in its pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// It drives (always, without a partner).
    Leader,
    /// The partner drives; commands are forwarded to it.
    Follower,
    /// Just started: waiting for the partner's state before driving anything.
    CatchingUp,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::CatchingUp => "catching up",
        }
    }
}

/// What a manager tells its partner besides its state: the servers it heard from itself, so the
/// driver does not judge down a server that only its partner can reach.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PartnerView {
    pub heard: Vec<HeardServer>,
}

/// This manager's link to its partner.
#[derive(Debug, Clone)]
pub struct Pair {
    partner: SocketAddr,
    timeout_ms: u64,
    started_ms: u64,
    /// Last successful exchange (either direction), in monotonic milliseconds.
    last_contact_ms: Option<u64>,
    /// Whether the partner's state was merged at least once since start-up.
    synced: bool,
}

impl Pair {
    pub fn new(partner: SocketAddr, timeout_ms: u64, now_ms: u64) -> Self {
        Pair {
            partner,
            timeout_ms,
            started_ms: now_ms,
            last_contact_ms: None,
            synced: false,
        }
    }

    pub fn partner(&self) -> SocketAddr {
        self.partner
    }

    /// A sync with the partner succeeded (we merged its state).
    pub fn contact(&mut self, now_ms: u64) {
        self.last_contact_ms = Some(now_ms);
        self.synced = true;
    }

    /// Exchanged a sync within the timeout.
    pub fn reachable(&self, now_ms: u64) -> bool {
        self.last_contact_ms
            .is_some_and(|t| now_ms.saturating_sub(t) < self.timeout_ms)
    }

    /// The role of manager `me` at `now_ms`.
    pub fn role(&self, me: SocketAddr, now_ms: u64) -> Role {
        let waited_enough = now_ms.saturating_sub(self.started_ms) >= self.timeout_ms;
        if !self.synced && !waited_enough {
            Role::CatchingUp
        } else if me < self.partner || !self.reachable(now_ms) {
            Role::Leader
        } else {
            Role::Follower
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 19700 + n))
    }

    #[test]
    fn smaller_address_drives_once_synced() {
        let mut p = Pair::new(addr(2), 1000, 0);
        assert_eq!(p.role(addr(1), 10), Role::CatchingUp);
        p.contact(20);
        assert_eq!(p.role(addr(1), 30), Role::Leader);
        // Still the leader when the partner goes away.
        assert_eq!(p.role(addr(1), 5000), Role::Leader);
    }

    #[test]
    fn larger_address_follows_while_the_partner_answers() {
        let mut p = Pair::new(addr(1), 1000, 0);
        p.contact(10);
        assert_eq!(p.role(addr(2), 500), Role::Follower);
        assert_eq!(p.role(addr(2), 1010), Role::Leader);
        p.contact(1200);
        assert_eq!(p.role(addr(2), 1300), Role::Follower);
    }

    #[test]
    fn a_lone_manager_drives_after_the_timeout() {
        let p = Pair::new(addr(1), 1000, 0);
        assert_eq!(p.role(addr(2), 999), Role::CatchingUp);
        assert_eq!(p.role(addr(2), 1000), Role::Leader);
        assert!(!p.reachable(1000));
    }
}
