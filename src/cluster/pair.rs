//! The manager pair (`-p`): who drives, and what the two managers tell each other.
//!
//! Both managers serve servers, gateways and kumoctl from the same synced state (see
//! [`super::state`]), but only one *drives*: it alone judges servers down, runs attach, detach and
//! rebalances, advances the garbage-collection horizon and orders backups. As in kumofs, the manager
//! with the smaller address has priority (the *first* manager). The other one is a *follower*: it
//! forwards commands and rebalance reports to the driver. A manager that starts up *catches up*
//! first: until its first successful exchange with the partner (or `timeout_ms` without one) it
//! drives nothing, so a restarted manager does not act on the state it loaded from disk while its
//! partner can give it a newer one.
//!
//! # Taking over: only when the servers lost the partner too
//!
//! While the two managers are in touch (see below), the first one drives. When the syncs stop,
//! that alone does not tell a dead partner from a cut between the two managers. kumofs (and this
//! code before) let the follower take over on the missing syncs alone, so a cut of the manager link
//! made *both* drive; at the heal the join keeps the routing with the newer write table whole and
//! silently drops the other side's decisions, and when the dropped side had attached a server and
//! run the drop phase of its rebalance, keys were lost with only two of their three servers down
//! (`tests/cluster_partition_pair.rs`).
//!
//! So the servers decide. Every keepalive says, for every manager the server sends keepalives to,
//! how long ago that manager last answered and which write table version it offered then
//! ([`ManagerContact`]). A manager out of touch with its partner keeps the freshest such news about
//! the partner, and:
//!
//! - if some server heard the partner within `timeout_ms`, the partner drives when the routing it
//!   offers is newer than this manager's (a greater write table version), or as new and the partner
//!   is the first manager; otherwise this manager drives. With the link cut and both alive, both
//!   compute the same answer from the same news, so exactly one drives: the first, unless the other
//!   holds newer routing (it drove while the first was away, and the first came back with the
//!   older state from its disk), in which case the one whose decisions the heal will keep drives;
//! - if servers report the partner silent for `timeout_ms` (a server that never had an answer from
//!   it counts once it has asked for that long), it is gone for the cluster too, and this manager
//!   drives;
//! - if no server heard the partner within `timeout_ms` and none said it lost it (no servers,
//!   none reaching this manager, or the last ones went away), the first manager drives and the
//!   follower does not: it cannot tell a dead partner from being cut off itself, and a follower cut
//!   off from everything that drove would mark every server fault under a new write table, which
//!   the heal would keep.
//!
//! A follower that does not drive while its partner is unreachable cannot forward commands either:
//! it answers them with an error naming the manager to send them to, and keeps serving status and
//! routing.
//!
//! The news about the partner is taken in time order (the freshest report wins), in this
//! manager's monotonic milliseconds: a report received at `t` saying "silent for `s`" means heard at
//! `t - s`, a little later than true by the keepalive's transit time, which only delays a take-over.
//! A take-over happens `timeout_ms` after the partner's last answer to any server (or to this
//! manager), plus up to a keepalive round.
//!
//! # In touch: a lease for the first manager
//!
//! The second manager is in touch, and follows, while it exchanged a sync (either direction)
//! within `timeout_ms`. The first one is in touch, and leads, while an answer came to a sync it
//! *sent* less than `timeout_ms` ago: the partner took that sync in before answering, so it follows
//! at least until `timeout_ms` after the first sent it (a lease). A sync the partner sent proves it
//! alive, not that it follows: it may have been driving on servers' word when it sent it. So after a
//! start or a heal, the first manager waits for its lease (a sync round trip, driving nothing)
//! rather than overlap with a partner that drove; if its own syncs keep failing while the
//! partner's arrive (a link that works one way), it waits `timeout_ms` (after the exchanges
//! resumed or its lease ended, whichever is later), then decides from servers' news as if out of
//! touch.
//!
//! # What the rule cannot handle
//!
//! - A manager that servers hear but that cannot act (it answers keepalives yet its ticks or its
//!   state file are stuck): the follower defers to it for as long as servers hear it.
//! - A first manager cut off from everything (partner and servers) still drives, as before: it
//!   marks every server fault, and if its write table is the newer one at the heal, the pair keeps
//!   it (the servers are then attached again by hand or by auto-replace). A real partition of the
//!   servers into two halves, each hearing one manager, makes both drive as well: telling which
//!   half may decide needs a majority, which a pair does not have.
//! - Servers must name the managers by the addresses the managers listen on (`-l`; `-p` of the
//!   managers themselves): a report about another name is no news about the partner.
//! - A manager restarted with an older state than its partner's while the link is cut, whose
//!   partner then dies too, drives on its older state once servers stop hearing the partner: it
//!   cannot fetch the newer one from anywhere. "Newer" is the write table version only: a partner
//!   whose decisions left it unchanged (the end of a drop phase) is not seen as ahead.
//! - A manager that does not run for `timeout_ms` (its host froze) looks dead to servers and its
//!   partner takes over; when it runs again both drive until the news of its return reaches the
//!   partner (a keepalive round), then the usual rule settles who goes on. Keepalives lost at
//!   random do the same to a live one, rarely. Back from a stall, a manager gives every server a
//!   fault window before judging it down ([`super::membership::Membership::resumed`]).
//! - The lease is counted in the first manager's clock from when it sent the sync; the partner's
//!   promise runs in its own clock from when it took it in. Both are monotonic clocks of the same
//!   rate, so the lease ends first.
//! - Who drives changes with pauses: up to a sync round trip at a start or a heal, and up to
//!   `timeout_ms` on a link that works one way, nobody drives.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::liveness::HeardServer;
use crate::rpc::messages::ManagerContact;

/// What a manager is doing in its pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// It drives (always, without a partner).
    Leader,
    /// The partner drives: commands are forwarded to it (or refused while it is unreachable).
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

/// What servers said about the partner lately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServersHear {
    /// A server heard it within the timeout, offering this write table version.
    Yes(u64),
    /// None heard it within the timeout, and a server said within the timeout that it has not
    /// heard it for that long.
    No,
    /// No server said anything either way within the timeout (a report that the partner was
    /// heard a while ago, less than the timeout, is no news once that hearing is old).
    Unknown,
}

/// This manager's link to its partner.
#[derive(Debug, Clone)]
pub struct Pair {
    partner: SocketAddr,
    timeout_ms: u64,
    started_ms: u64,
    /// Last successful exchange (either direction), in monotonic milliseconds.
    last_contact_ms: Option<u64>,
    /// Start of the current run of exchanges (none more than the timeout apart).
    touch_since_ms: u64,
    /// Whether the partner's state was merged at least once since start-up.
    synced: bool,
    /// Until when the partner surely follows: `timeout_ms` after we sent a sync it answered (the
    /// first manager leads only under this lease, see the module docs).
    lease_until_ms: Option<u64>,
    /// When a server last reported the partner silent for the timeout or longer.
    silent_news_ms: Option<u64>,
    /// The latest time a server heard the partner (`report time - silent_ms`), with the write table
    /// version it offered then.
    heard: Option<(u64, u64)>,
}

impl Pair {
    pub fn new(partner: SocketAddr, timeout_ms: u64, now_ms: u64) -> Self {
        Pair {
            partner,
            timeout_ms,
            started_ms: now_ms,
            last_contact_ms: None,
            touch_since_ms: now_ms,
            synced: false,
            lease_until_ms: None,
            silent_news_ms: None,
            heard: None,
        }
    }

    pub fn partner(&self) -> SocketAddr {
        self.partner
    }

    /// A sync with the partner succeeded (we merged its state).
    pub fn contact(&mut self, now_ms: u64) {
        if !self.reachable(now_ms) {
            self.touch_since_ms = now_ms;
        }
        self.last_contact_ms = Some(now_ms);
        self.synced = true;
    }

    /// The partner answered a sync we sent at `asked_ms` (after taking it in: [`Pair::contact`] is
    /// called for the answer too).
    pub fn answered(&mut self, asked_ms: u64, now_ms: u64) {
        // A time ahead of now is not ours (a previous life's question): no lease from it.
        if asked_ms <= now_ms {
            let until = asked_ms + self.timeout_ms;
            self.lease_until_ms = Some(self.lease_until_ms.map_or(until, |u| u.max(until)));
        }
    }

    /// Exchanged a sync within the timeout.
    pub fn reachable(&self, now_ms: u64) -> bool {
        self.last_contact_ms
            .is_some_and(|t| now_ms.saturating_sub(t) < self.timeout_ms)
    }

    /// A server's keepalive arrived with what it knows of the managers; only the entry about the
    /// partner matters here.
    pub fn server_report(&mut self, contacts: &[ManagerContact], now_ms: u64) {
        let Some(contact) = contacts.iter().find(|c| c.addr == self.partner) else {
            return;
        };
        // Silent for the timeout: news that this server lost the partner. A server that never had
        // an answer counts once it has asked for that long (before, it may have just started).
        if contact.silent_ms >= self.timeout_ms {
            self.silent_news_ms = Some(now_ms);
        }
        let Some(offered) = contact.write_version else {
            return;
        };
        let at = now_ms.saturating_sub(contact.silent_ms);
        // The freshest hearing wins; a report of an older one (a server that has not had an answer
        // for a while) says nothing new. At the same time, the newer routing.
        let news = (at, offered);
        if self.heard.is_none_or(|old| news > old) {
            self.heard = Some(news);
        }
    }

    /// What servers said about the partner within the timeout.
    pub fn servers_hear(&self, now_ms: u64) -> ServersHear {
        let recent = |t: u64| now_ms.saturating_sub(t) < self.timeout_ms;
        match self.heard {
            Some((at, offered)) if recent(at) => ServersHear::Yes(offered),
            _ if self.silent_news_ms.is_some_and(recent) => ServersHear::No,
            _ => ServersHear::Unknown,
        }
    }

    /// The role of manager `me`, whose write table has version `mine`, at `now_ms` (see the
    /// module docs).
    pub fn role(&self, me: SocketAddr, mine: u64, now_ms: u64) -> Role {
        let waited_enough = now_ms.saturating_sub(self.started_ms) >= self.timeout_ms;
        let first = me < self.partner;
        if !self.synced && !waited_enough {
            return Role::CatchingUp;
        }
        let in_touch = if first {
            self.lease_until_ms.is_some_and(|u| now_ms < u)
        } else {
            self.reachable(now_ms)
        };
        if in_touch {
            return if first { Role::Leader } else { Role::Follower };
        }
        // The first manager hears from its partner but holds no lease: it waits for one, for up
        // to a timeout after the exchanges resumed or the last lease ended, whichever is later.
        let waiting_since = self.lease_until_ms.unwrap_or(0).max(self.touch_since_ms);
        if first && self.reachable(now_ms) && now_ms < waiting_since + self.timeout_ms {
            return Role::Follower;
        }
        if self.partner_drives(first, mine, now_ms) {
            Role::Follower
        } else {
            Role::Leader
        }
    }

    /// Why manager `me`, following while it cannot reach the partner, refuses a command, and
    /// where to send it.
    pub fn refusal(&self, me: SocketAddr, now_ms: u64) -> String {
        let partner = self.partner;
        match self.servers_hear(now_ms) {
            ServersHear::Yes(_) => format!(
                "manager {me} does not drive: its partner {partner} drives (servers still hear it) \
                 but {me} cannot reach it to pass the command on; send the command to {partner}"
            ),
            _ => format!(
                "manager {me} does not drive: it cannot reach its partner {partner}, and no server \
                 tells it that {partner} is gone; send the command to {partner}, or retry once \
                 servers report it gone"
            ),
        }
    }

    /// Cut off from the partner: whether it drives, from what servers say.
    fn partner_drives(&self, first: bool, mine: u64, now_ms: u64) -> bool {
        match self.servers_hear(now_ms) {
            ServersHear::Yes(theirs) => (theirs, !first) > (mine, first),
            ServersHear::No => false,
            ServersHear::Unknown => !first,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 19700 + n))
    }

    fn about(partner: u16, silent_ms: u64, write_version: Option<u64>) -> Vec<ManagerContact> {
        vec![
            ManagerContact {
                addr: addr(9),
                silent_ms: 0,
                write_version: Some(1),
            },
            ManagerContact {
                addr: addr(partner),
                silent_ms,
                write_version,
            },
        ]
    }

    /// The first manager's sync sent at `asked` is answered at `now`.
    fn exchange(p: &mut Pair, asked: u64, now: u64) {
        p.contact(now);
        p.answered(asked, now);
    }

    #[test]
    fn smaller_address_drives_once_synced() {
        let mut p = Pair::new(addr(2), 1000, 0);
        assert_eq!(p.role(addr(1), 5, 10), Role::CatchingUp);
        exchange(&mut p, 15, 20);
        assert_eq!(p.role(addr(1), 5, 30), Role::Leader);
        // Still the leader when the partner goes away, with or without news from servers.
        assert_eq!(p.role(addr(1), 5, 5000), Role::Leader);
        p.server_report(&about(2, 0, Some(5)), 5000);
        assert_eq!(p.role(addr(1), 5, 5000), Role::Leader);
    }

    #[test]
    fn larger_address_follows_while_the_partner_answers() {
        let mut p = Pair::new(addr(1), 1000, 0);
        p.contact(10);
        assert_eq!(p.role(addr(2), 5, 500), Role::Follower);
        p.contact(1200);
        assert_eq!(p.role(addr(2), 5, 1300), Role::Follower);
    }

    #[test]
    fn the_first_leads_under_a_lease_from_its_own_syncs() {
        // Just started: the partner's sync arrives first (it may have been driving when it sent
        // it), so the first one waits for the answer to its own.
        let mut p = Pair::new(addr(2), 1000, 0);
        p.contact(100);
        assert_eq!(p.role(addr(1), 5, 100), Role::Follower);
        exchange(&mut p, 120, 150);
        assert_eq!(p.role(addr(1), 5, 150), Role::Leader);
        // The lease runs from when the sync was sent; syncs every 500 ms renew it.
        assert_eq!(p.role(addr(1), 5, 1119), Role::Leader);
        exchange(&mut p, 600, 650);
        assert_eq!(p.role(addr(1), 5, 1500), Role::Leader);
        // An answer to a question from a previous life (later than now) gives no lease.
        let mut q = Pair::new(addr(2), 1000, 0);
        exchange(&mut q, 5000, 100);
        assert_eq!(q.role(addr(1), 5, 100), Role::Follower);
    }

    #[test]
    fn a_link_that_works_one_way_leaves_the_first_waiting_one_timeout() {
        let mut p = Pair::new(addr(2), 1000, 0);
        exchange(&mut p, 0, 10);
        // From 10 on, only the partner's syncs get through.
        for t in (500..3000).step_by(500) {
            p.contact(t);
            let expected = if t < 1000 {
                Role::Leader
            } else if t < 2000 {
                Role::Follower
            } else {
                Role::Leader
            };
            assert_eq!(p.role(addr(1), 5, t), expected, "at {t}");
        }
        // Decided from servers' news then: a partner heard with newer routing drives.
        p.server_report(&about(2, 0, Some(9)), 3000);
        p.contact(3000);
        assert_eq!(p.role(addr(1), 5, 3000), Role::Follower);
        // Exchanges that resume after a cut (long after the last lease) wait for a lease again.
        p.server_report(&about(2, 0, Some(5)), 9000);
        assert_eq!(p.role(addr(1), 5, 9000), Role::Leader);
        p.contact(9000);
        assert_eq!(p.role(addr(1), 5, 9000), Role::Follower);
        exchange(&mut p, 9100, 9150);
        assert_eq!(p.role(addr(1), 5, 9150), Role::Leader);
    }

    #[test]
    fn a_cut_follower_follows_while_servers_hear_the_partner() {
        let mut p = Pair::new(addr(1), 1000, 0);
        p.contact(10);
        for t in (100..10_000).step_by(500) {
            p.server_report(&about(1, 300, Some(5)), t);
            assert_eq!(p.role(addr(2), 5, t), Role::Follower, "at {t}");
            assert_eq!(p.servers_hear(t), ServersHear::Yes(5));
        }
        // A server that does not hear it changes nothing while another does.
        p.server_report(&about(1, 5000, Some(5)), 10_000);
        assert_eq!(p.role(addr(2), 5, 10_000), Role::Follower);
    }

    #[test]
    fn the_follower_takes_over_when_servers_stop_hearing_the_partner() {
        let mut p = Pair::new(addr(1), 1000, 0);
        p.contact(10);
        // The partner's last answer to a server was at 400.
        p.server_report(&about(1, 0, Some(5)), 400);
        for t in (500..1400).step_by(100) {
            p.server_report(&about(1, t - 400, Some(5)), t);
            assert_eq!(p.role(addr(2), 5, t), Role::Follower, "at {t}");
        }
        p.server_report(&about(1, 1000, Some(5)), 1400);
        assert_eq!(p.servers_hear(1400), ServersHear::No);
        assert_eq!(p.role(addr(2), 5, 1400), Role::Leader);
        // It answers again (to servers and to us): roles come back.
        p.server_report(&about(1, 0, Some(5)), 3000);
        assert_eq!(p.role(addr(2), 5, 3000), Role::Follower);
        p.contact(3000);
        assert_eq!(p.role(addr(2), 5, 3100), Role::Follower);
    }

    #[test]
    fn a_server_that_never_had_an_answer_is_news_after_the_timeout() {
        let mut p = Pair::new(addr(1), 1000, 0);
        p.contact(0);
        // Just started: no news (the follower does not drive on it).
        p.server_report(&about(1, 200, None), 1500);
        assert_eq!(p.servers_hear(1500), ServersHear::Unknown);
        assert_eq!(p.role(addr(2), 5, 1500), Role::Follower);
        // Asked for the whole timeout without an answer: the partner is silent for it.
        p.server_report(&about(1, 1300, None), 2600);
        assert_eq!(p.servers_hear(2600), ServersHear::No);
        assert_eq!(p.role(addr(2), 5, 2600), Role::Leader);
    }

    #[test]
    fn with_no_news_from_servers_only_the_first_manager_drives() {
        let mut p = Pair::new(addr(1), 1000, 0);
        p.contact(0);
        assert_eq!(p.servers_hear(5000), ServersHear::Unknown);
        assert_eq!(p.role(addr(2), 5, 5000), Role::Follower);
        // News about another manager is no news about the partner.
        p.server_report(&about(3, 5000, Some(5))[1..], 5000);
        assert_eq!(p.servers_hear(5000), ServersHear::Unknown);
        // The news gets old.
        p.server_report(&about(1, 5000, Some(5)), 6000);
        assert_eq!(p.role(addr(2), 5, 6000), Role::Leader);
        assert_eq!(p.role(addr(2), 5, 7000), Role::Follower);
        // A lone manager with no partner news at all (never synced): the first one drives.
        let lone = Pair::new(addr(2), 1000, 0);
        assert_eq!(lone.role(addr(1), 0, 999), Role::CatchingUp);
        assert_eq!(lone.role(addr(1), 0, 1000), Role::Leader);
        assert!(!lone.reachable(1000));
    }

    #[test]
    fn cut_off_the_one_with_the_newer_routing_drives() {
        // The first manager came back with an older state than the one its partner drove with.
        let mut first = Pair::new(addr(2), 1000, 0);
        let mut second = Pair::new(addr(1), 1000, 0);
        second.contact(0);
        first.server_report(&about(2, 100, Some(9)), 1500);
        second.server_report(&about(1, 100, Some(5)), 1500);
        assert_eq!(first.role(addr(1), 5, 1500), Role::Follower);
        assert_eq!(second.role(addr(2), 9, 1500), Role::Leader);
        // Same routing: the first one drives.
        first.server_report(&about(2, 0, Some(9)), 1600);
        second.server_report(&about(1, 0, Some(9)), 1600);
        assert_eq!(first.role(addr(1), 9, 1600), Role::Leader);
        assert_eq!(second.role(addr(2), 9, 1600), Role::Follower);
    }

    #[test]
    fn an_older_report_does_not_hide_a_fresher_one() {
        let mut p = Pair::new(addr(1), 1000, 0);
        p.contact(0);
        p.server_report(&about(1, 0, Some(7)), 2000);
        // Another server lost the partner long ago: arrives later, says less.
        p.server_report(&about(1, 1900, Some(6)), 2100);
        assert_eq!(p.servers_hear(2100), ServersHear::Yes(7));
    }
}
