//! Failure detection: which servers are alive, judged from keepalives (sans-IO: times are passed in,
//! in milliseconds of a monotonic clock).
//!
//! Servers send a keepalive to both managers every half second. A server is *alive* while this
//! manager, or its partner (whose observations arrive with every pair sync, as ages), heard from it
//! within `fault_after_ms`; so a manager cut off from a server that its partner still hears does not
//! declare it down. Servers attached when the manager starts are *assumed* alive for one
//! `fault_after_ms` (a restarted manager must not declare the whole cluster down before the first
//! keepalives arrive), but only servers actually heard are *confirmed*: the garbage-collection
//! horizon advances only on confirmed liveness.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::state::ServerInfo;
use crate::rpc::messages::PhaseProgress;

/// The last keepalive heard from a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heard {
    /// When, in this manager's monotonic milliseconds.
    pub at_ms: u64,
    pub info: ServerInfo,
    /// The rebalance progress the server reported with it.
    pub progress: Option<PhaseProgress>,
}

/// One server a manager heard recently, as told to its partner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeardServer {
    pub addr: SocketAddr,
    /// Milliseconds since the last keepalive, when the view was made.
    pub age_ms: u64,
    pub info: ServerInfo,
    pub progress: Option<PhaseProgress>,
}

/// Keepalive bookkeeping of one manager.
#[derive(Debug, Clone)]
pub struct Liveness {
    fault_after_ms: u64,
    own: BTreeMap<SocketAddr, Heard>,
    partner: BTreeMap<SocketAddr, Heard>,
    /// Assumed alive until this time, unless heard of.
    assumed: BTreeMap<SocketAddr, u64>,
}

impl Liveness {
    pub fn new(fault_after_ms: u64) -> Self {
        Liveness {
            fault_after_ms,
            own: BTreeMap::new(),
            partner: BTreeMap::new(),
            assumed: BTreeMap::new(),
        }
    }

    pub fn fault_after_ms(&self) -> u64 {
        self.fault_after_ms
    }

    /// A keepalive from `addr`. Returns true if the server was not alive before it.
    pub fn heard(
        &mut self,
        addr: SocketAddr,
        info: ServerInfo,
        progress: Option<PhaseProgress>,
        now_ms: u64,
    ) -> bool {
        let was_alive = self.alive(addr, now_ms);
        self.own.insert(
            addr,
            Heard {
                at_ms: now_ms,
                info,
                progress,
            },
        );
        !was_alive
    }

    /// Gives `addrs` one fault window to be heard from (at start-up, for attached servers).
    pub fn assume_alive(&mut self, addrs: impl IntoIterator<Item = SocketAddr>, now_ms: u64) {
        for addr in addrs {
            self.assumed.insert(addr, now_ms + self.fault_after_ms);
        }
    }

    fn recent(&self, heard: Option<&Heard>, now_ms: u64) -> bool {
        heard.is_some_and(|h| now_ms.saturating_sub(h.at_ms) < self.fault_after_ms)
    }

    /// Heard from (by this manager or its partner) within the fault window.
    pub fn confirmed(&self, addr: SocketAddr, now_ms: u64) -> bool {
        self.recent(self.own.get(&addr), now_ms) || self.recent(self.partner.get(&addr), now_ms)
    }

    /// Confirmed, or still within its start-up grace.
    pub fn alive(&self, addr: SocketAddr, now_ms: u64) -> bool {
        self.confirmed(addr, now_ms) || self.assumed.get(&addr).is_some_and(|&t| now_ms < t)
    }

    /// Every server confirmed alive, in address order.
    pub fn confirmed_servers(&self, now_ms: u64) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = self
            .own
            .keys()
            .chain(self.partner.keys())
            .copied()
            .filter(|a| self.confirmed(*a, now_ms))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The newest keepalive heard from `addr` by either manager.
    pub fn latest(&self, addr: SocketAddr) -> Option<&Heard> {
        match (self.own.get(&addr), self.partner.get(&addr)) {
            (Some(a), Some(b)) => Some(if b.at_ms > a.at_ms { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    /// What this manager itself heard within the fault window, for its partner.
    pub fn own_view(&self, now_ms: u64) -> Vec<HeardServer> {
        self.own
            .iter()
            .filter(|(_, h)| self.recent(Some(h), now_ms))
            .map(|(addr, h)| HeardServer {
                addr: *addr,
                age_ms: now_ms.saturating_sub(h.at_ms),
                info: h.info,
                progress: h.progress.clone(),
            })
            .collect()
    }

    /// Takes in the partner's view (replacing the previous one).
    pub fn partner_view(&mut self, view: &[HeardServer], now_ms: u64) {
        self.partner = view
            .iter()
            .filter(|h| h.age_ms < self.fault_after_ms)
            .map(|h| {
                (
                    h.addr,
                    Heard {
                        at_ms: now_ms.saturating_sub(h.age_ms),
                        info: h.info,
                        progress: h.progress.clone(),
                    },
                )
            })
            .collect();
    }

    /// Forgets servers not heard of for a long time (so memory stays bounded) and ended grace.
    pub fn prune(&mut self, now_ms: u64) {
        let keep = self.fault_after_ms.saturating_mul(20).max(60_000);
        self.own
            .retain(|_, h| now_ms.saturating_sub(h.at_ms) < keep);
        self.partner
            .retain(|_, h| now_ms.saturating_sub(h.at_ms) < keep);
        self.assumed.retain(|_, t| now_ms < *t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 19800 + n))
    }

    const INFO: ServerInfo = ServerInfo {
        shards: 2,
        stream_port: 19900,
    };

    #[test]
    fn silent_for_the_window_means_down() {
        let mut l = Liveness::new(1000);
        assert!(l.heard(addr(1), INFO, None, 100));
        assert!(!l.heard(addr(1), INFO, None, 500));
        assert!(l.alive(addr(1), 1499));
        assert!(!l.alive(addr(1), 1500));
        assert!(l.heard(addr(1), INFO, None, 1600), "back after a silence");
    }

    #[test]
    fn start_up_grace_is_not_confirmation() {
        let mut l = Liveness::new(1000);
        l.assume_alive([addr(1)], 0);
        assert!(l.alive(addr(1), 999));
        assert!(!l.confirmed(addr(1), 10));
        assert!(!l.alive(addr(1), 1000));
        assert!(l.confirmed_servers(10).is_empty());
    }

    #[test]
    fn the_partner_view_keeps_a_server_alive() {
        let mut l = Liveness::new(1000);
        l.heard(addr(1), INFO, None, 0);
        // The partner heard it 100 ms before its view reached us at 1900.
        let view = vec![HeardServer {
            addr: addr(1),
            age_ms: 100,
            info: INFO,
            progress: None,
        }];
        l.partner_view(&view, 1900);
        assert!(l.alive(addr(1), 2700));
        assert!(!l.alive(addr(1), 2800));
        assert_eq!(l.latest(addr(1)).unwrap().at_ms, 1800);
        // Our own view only tells what we heard ourselves.
        assert!(l.own_view(1900).is_empty());
        assert_eq!(l.own_view(900).len(), 1);
    }
}
