//! What happens in the simulated world besides the managers' own work: fake servers running
//! phases and backups and sending keepalives and reports, and the random events of a schedule
//! (operator commands, crashes, partitions, loss, manager restarts, new servers).

use kumofs::cluster::membership::{Command, Phase};
use kumofs::rpc::messages::ManagerContact;

use super::world::{Msg, Node, Sim, KEEPALIVE};

impl Sim {
    pub fn server_step(&mut self, s: usize) {
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
            let managers: Vec<ManagerContact> = (0..2)
                .map(|m| {
                    let (at, write_version) = self.srvs[s].contacts[m];
                    ManagerContact {
                        addr: self.mgrs[m].addr,
                        silent_ms: self.now - at,
                        write_version,
                    }
                })
                .collect();
            for to in 0..2 {
                let managers = managers.clone();
                self.send(
                    Node::S(s),
                    Node::M(to),
                    Msg::KeepAlive {
                        from: s,
                        to,
                        epoch,
                        managers,
                    },
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
    pub fn chaos(&mut self) {
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
                    srv.write = 0;
                    srv.epoch = 0;
                    srv.rebalance = None;
                    srv.backup = None;
                    srv.done.clear();
                    srv.work = None;
                    srv.backup_work = None;
                } else {
                    srv.up = true;
                    srv.down_since = None;
                    srv.contacts = [(self.now, None); 2];
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
}
