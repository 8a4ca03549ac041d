//! What `kumoctl status` shows: the tables, the servers that are alive but not attached, the
//! rebalance with every participant's progress, the pair, the horizon and the last backup.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::membership::{Membership, Now};
use super::pair::{Role, ServersHear};
use super::rebalance::{copy_participants, Phase, Rebalance, RebalanceRun};
use super::table::TableSpec;
use crate::rpc::messages::{BackupReport, PhaseProgress};

/// One participant of the current rebalance phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerProgress {
    pub addr: SocketAddr,
    /// It reported the end of the current phase.
    pub done: bool,
    /// The last progress it reported for the current phase (target and phase match).
    pub progress: Option<PhaseProgress>,
}

/// The partner as this manager sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartnerStatus {
    pub addr: SocketAddr,
    /// A sync was exchanged within the fault window.
    pub reachable: bool,
    /// What servers said about it within the fault window: `Some(true)` a server heard it,
    /// `Some(false)` servers report it silent, `None` no server reported on it.
    #[serde(default)]
    pub servers_hear: Option<bool>,
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
    /// Attempt, reason and start times of the rebalance.
    pub rebalance_run: Option<RebalanceRun>,
    /// Every participant of the current rebalance phase, in address order.
    pub progress: Vec<ServerProgress>,
    /// The manager that answered, and its role in the pair.
    pub manager: SocketAddr,
    pub role: Role,
    pub partner: Option<PartnerStatus>,
    /// Epoch of the routing snapshot this manager serves.
    pub epoch: u64,
    pub gc_horizon: u64,
    pub backup: Option<BackupReport>,
    /// Problems the operator should know about (for example a state file that cannot be written).
    pub warnings: Vec<String>,
}

pub(super) fn report(m: &Membership, now: Now) -> StatusReport {
    let state = m.state();
    let routing = &state.routing;
    let liveness = m.liveness();
    let not_attached = liveness
        .confirmed_servers(now.mono_ms)
        .into_iter()
        .filter(|a| !routing.write.is_active(*a))
        .collect();
    let progress = match &routing.rebalance {
        None => Vec::new(),
        Some(r) => {
            let participants: Vec<SocketAddr> = match r.phase {
                Phase::Copying => copy_participants(&routing.write, &routing.read)
                    .into_iter()
                    .collect(),
                Phase::Dropping => routing.write.active().collect(),
            };
            participants
                .into_iter()
                .chain(r.waiting.iter().copied())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .map(|addr| ServerProgress {
                    addr,
                    done: !r.waiting.contains(&addr),
                    progress: liveness
                        .latest(addr)
                        .and_then(|h| h.progress.clone())
                        .filter(|p| p.target == r.target && p.phase == r.phase),
                })
                .collect()
        }
    };
    StatusReport {
        write: routing.write.clone(),
        read: routing.read.clone(),
        not_attached,
        rebalance: routing.rebalance.clone(),
        auto_replace: state.auto_replace.value,
        rebalance_run: routing.run.clone(),
        progress,
        manager: m.me(),
        role: m.role(now),
        partner: m.partner().map(|addr| PartnerStatus {
            addr,
            reachable: m.partner_reachable(now),
            servers_hear: match m.servers_hear_partner(now) {
                Some(ServersHear::Yes(_)) => Some(true),
                Some(ServersHear::No) => Some(false),
                Some(ServersHear::Unknown) | None => None,
            },
        }),
        epoch: state.epoch,
        gc_horizon: state.gc_horizon,
        backup: state.backup.clone(),
        warnings: m.stale_warning().into_iter().collect(),
    }
}
