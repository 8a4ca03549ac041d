//! The manager's request handling: membership state, its clock, and the routing snapshot it serves.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;

use crate::cluster::clock::{wall_ms, Hlc};
use crate::cluster::membership::{Action, Membership, MembershipConfig, TableSpec};
use crate::ring::RoutingTable;
use crate::rpc::messages::{ManagerRequest, ManagerResponse, RoutingSnapshot};

/// Everything one manager knows; lives on the manager's single shard.
pub struct ManagerService {
    membership: RefCell<Membership>,
    clock: RefCell<Hlc>,
    shards: RefCell<BTreeMap<SocketAddr, u16>>,
    snapshot: RefCell<Rc<RoutingSnapshot>>,
}

impl ManagerService {
    pub fn new(config: MembershipConfig) -> Self {
        ManagerService {
            membership: RefCell::new(Membership::new(config)),
            clock: RefCell::new(Hlc::new()),
            shards: RefCell::new(BTreeMap::new()),
            snapshot: RefCell::new(Rc::new(RoutingSnapshot::empty())),
        }
    }

    fn version(&self) -> u64 {
        self.clock.borrow_mut().now(wall_ms())
    }

    /// The snapshot currently served.
    pub fn snapshot(&self) -> Rc<RoutingSnapshot> {
        self.snapshot.borrow().clone()
    }

    /// Answers one request.
    pub fn handle(&self, request: ManagerRequest) -> ManagerResponse {
        match request {
            ManagerRequest::KeepAlive {
                addr,
                stream_port: _,
                shards,
                routing_version,
                progress: _,
            } => {
                let known = self.shards.borrow_mut().insert(addr, shards);
                if known.is_none() {
                    crate::info!("server {addr} joined ({shards} shards); not attached");
                }
                let actions = self.membership.borrow_mut().keepalive(addr, wall_ms());
                // A server's shard count is part of the snapshot: publish it when it is new.
                let shards_changed = known != Some(shards);
                self.apply(actions, shards_changed);
                self.routing_since(routing_version)
            }
            ManagerRequest::GetRouting { known_version } => self.routing_since(known_version),
            ManagerRequest::Status => ManagerResponse::Status(self.membership.borrow().status()),
            ManagerRequest::Attach { replace } => {
                let version = self.version();
                let actions = self.membership.borrow_mut().attach(replace, version);
                self.apply(actions, false);
                ManagerResponse::Ok
            }
            ManagerRequest::Detach { replace } => {
                let version = self.version();
                let actions = self.membership.borrow_mut().detach(replace, version);
                self.apply(actions, false);
                ManagerResponse::Ok
            }
            ManagerRequest::Replace { full } => {
                let version = self.version();
                let actions = self.membership.borrow_mut().start_replace(full, version);
                self.apply(actions, false);
                ManagerResponse::Ok
            }
            ManagerRequest::Backup { suffix: _ }
            | ManagerRequest::BackupStatus { .. }
            | ManagerRequest::BackupDone { .. } => {
                ManagerResponse::Error("backup is not implemented yet".into())
            }
            ManagerRequest::SetAutoReplace(on) => {
                self.membership.borrow_mut().set_auto_replace(on, wall_ms());
                ManagerResponse::AutoReplace(on)
            }
            ManagerRequest::PhaseDone { addr, target } => {
                let version = self.version();
                let actions = self
                    .membership
                    .borrow_mut()
                    .phase_done(addr, target, version);
                self.apply(actions, false);
                ManagerResponse::Ok
            }
        }
    }

    /// Advances time: fault detection and automatic replace.
    pub fn tick(&self) {
        let version = self.version();
        let actions = self.membership.borrow_mut().tick(wall_ms(), version);
        self.apply(actions, false);
    }

    fn routing_since(&self, known: u64) -> ManagerResponse {
        let snapshot = self.snapshot.borrow();
        if snapshot.epoch > known {
            ManagerResponse::Routing((**snapshot).clone())
        } else {
            ManagerResponse::UpToDate
        }
    }

    /// Publishes a new snapshot when the machine changed anything.
    fn apply(&self, actions: Vec<Action>, force: bool) {
        if actions.is_empty() && !force {
            return;
        }
        for action in &actions {
            crate::info!("manager: {action:?}");
        }
        let membership = self.membership.borrow();
        let build = |spec: &TableSpec| RoutingTable::new(spec.version, spec.nodes.clone());
        let (write, read) = match (
            build(membership.write_table()),
            build(membership.read_table()),
        ) {
            (Ok(w), Ok(r)) => (w, r),
            (Err(e), _) | (_, Err(e)) => {
                crate::warn!("manager: cannot build routing table: {e}");
                return;
            }
        };
        let epoch = self.version();
        let snapshot = RoutingSnapshot {
            epoch,
            write,
            read,
            shards: self.shards.borrow().iter().map(|(a, n)| (*a, *n)).collect(),
            rebalance: membership.rebalance().cloned(),
            ..RoutingSnapshot::empty()
        };
        *self.snapshot.borrow_mut() = Rc::new(snapshot);
    }
}
