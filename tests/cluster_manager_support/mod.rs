//! Helpers of the manager and kumoctl tests: real `kumo-manager` processes (alone or as a pair, with
//! their state directory), typed status calls, and *fake servers*: threads that speak the server's
//! side of the manager protocol (keepalives with progress, phase and backup reports) with a
//! behaviour the test controls, so the manager's side can be tested before or without real servers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kumofs::cluster::membership::{Phase, StatusReport};
use kumofs::rpc::blocking::{self, BlockingClient};
use kumofs::rpc::messages::{
    BackupState, ManagerContact, ManagerRequest, ManagerResponse, PhaseProgress, RoutingSnapshot,
};

use crate::support::{bin, free_port, wait_for_port, Daemon};

/// Every `*.log` file in `dir`, in name order, each under a `--- PATH` line.
pub fn logs_in(dir: &Path) -> String {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    paths.sort();
    let mut out = String::new();
    for path in paths
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
    {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        out.push_str(&format!("--- {}\n{text}", path.display()));
    }
    out
}

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Starts `kumo-manager -v -l ADDR [-p PARTNER] -s DIR -Ys 0.5 -Yn 4 EXTRA...` and waits for its
/// port. Fault detection takes two seconds: short tests, yet no false alarm on a loaded machine.
pub fn start_manager(
    log_dir: &Path,
    name: &str,
    addr: SocketAddr,
    partner: Option<SocketAddr>,
    state_dir: &Path,
    extra: &[&str],
) -> Daemon {
    let mut args: Vec<String> = vec![
        "-v".into(),
        "-l".into(),
        addr.to_string(),
        "-s".into(),
        state_dir.display().to_string(),
        "-Ys".into(),
        "0.5".into(),
        "-Yn".into(),
        "4".into(),
    ];
    if let Some(p) = partner {
        args.push("-p".into());
        args.push(p.to_string());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let daemon = Daemon::spawn(name, &bin("kumo-manager"), &args, log_dir);
    wait_for_port(addr);
    daemon
}

/// A free address for a manager.
pub fn manager_addr() -> SocketAddr {
    // Managers are killed and restarted on their address.
    local(crate::support::restartable_port())
}

/// The manager's status, or `None` if it does not answer.
pub fn status(manager: SocketAddr) -> Option<StatusReport> {
    match blocking::call(manager, &ManagerRequest::Status, Duration::from_secs(5)) {
        Ok(ManagerResponse::Status(report)) => Some(*report),
        _ => None,
    }
}

/// What a fake server does; changed by the test while it runs.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// Send keepalives (false: the server looks dead).
    pub alive: bool,
    /// Report the end of every rebalance phase it is asked to run.
    pub finish_phases: bool,
    /// Progress sent with keepalives while a phase runs: (done, total, sent).
    pub progress: Option<(u64, u64, u64)>,
    /// How to answer a backup order: `Some(Ok(records))`, `Some(Err(why))`, or `None` to ignore it.
    pub backup: Option<Result<u64, String>>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            alive: true,
            finish_phases: true,
            progress: None,
            backup: Some(Ok(10)),
        }
    }
}

/// A thread that behaves like a server towards the managers.
pub struct FakeServer {
    pub addr: SocketAddr,
    pub behaviour: Arc<Mutex<Behaviour>>,
    pub snapshot: Arc<Mutex<RoutingSnapshot>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeServer {
    /// Starts sending keepalives to `managers` every 100 ms.
    pub fn start(managers: Vec<SocketAddr>, behaviour: Behaviour) -> FakeServer {
        let addr = local(free_port());
        let behaviour = Arc::new(Mutex::new(behaviour));
        let snapshot = Arc::new(Mutex::new(RoutingSnapshot::empty()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (behaviour, snapshot, stop) = (behaviour.clone(), snapshot.clone(), stop.clone());
            std::thread::spawn(move || run(addr, managers, behaviour, snapshot, stop))
        };
        FakeServer {
            addr,
            behaviour,
            snapshot,
            stop,
            thread: Some(thread),
        }
    }

    pub fn set(&self, change: impl FnOnce(&mut Behaviour)) {
        change(&mut self.behaviour.lock().unwrap());
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One connection per manager, kept open (as a real server does) and reopened after an error.
struct Links(Vec<(SocketAddr, Option<BlockingClient>)>);

impl Links {
    fn call(&mut self, manager: SocketAddr, request: &ManagerRequest) -> Option<ManagerResponse> {
        let (_, link) = self.0.iter_mut().find(|(a, _)| *a == manager)?;
        if link.is_none() {
            *link = BlockingClient::connect(manager, Duration::from_millis(500)).ok();
        }
        let answer = link.as_mut()?.call(request);
        if answer.is_err() {
            *link = None;
        }
        answer.ok()
    }
}

fn run(
    addr: SocketAddr,
    managers: Vec<SocketAddr>,
    behaviour: Arc<Mutex<Behaviour>>,
    snapshot: Arc<Mutex<RoutingSnapshot>>,
    stop: Arc<AtomicBool>,
) {
    let mut backups_done = Vec::new();
    let mut links = Links(managers.iter().map(|m| (*m, None)).collect());
    // Per manager, as a real server tells them: its last answer and the write table it offered.
    let mut contacts: Vec<(SocketAddr, std::time::Instant, Option<u64>)> = managers
        .iter()
        .map(|m| (*m, std::time::Instant::now(), None))
        .collect();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        let b = behaviour.lock().unwrap().clone();
        if !b.alive {
            continue;
        }
        let current = snapshot.lock().unwrap().clone();
        let progress = match (&current.rebalance, b.progress) {
            (Some(r), Some((done, total, sent))) if r.waiting.contains(&addr) => {
                Some(PhaseProgress {
                    target: r.target,
                    phase: r.phase,
                    done,
                    total,
                    sent: if r.phase == Phase::Copying { sent } else { 0 },
                })
            }
            _ => None,
        };
        for (i, manager) in managers.iter().enumerate() {
            let held = snapshot.lock().unwrap().clone();
            let keepalive = ManagerRequest::KeepAlive {
                addr,
                stream_port: 1,
                shards: 1,
                routing_version: held.epoch,
                progress: progress.clone(),
                managers: contacts
                    .iter()
                    .map(|(addr, at, write_version)| ManagerContact {
                        addr: *addr,
                        silent_ms: at.elapsed().as_millis() as u64,
                        write_version: *write_version,
                    })
                    .collect(),
            };
            let offered = match links.call(*manager, &keepalive) {
                Some(ManagerResponse::Routing(newer)) => {
                    let offered = newer.write.version();
                    let mut held = snapshot.lock().unwrap();
                    if newer.epoch > held.epoch {
                        *held = newer;
                    }
                    Some(offered)
                }
                Some(_) => Some(held.write.version()),
                None => None,
            };
            if offered.is_some() {
                contacts[i] = (*manager, std::time::Instant::now(), offered);
            }
        }
        let current = snapshot.lock().unwrap().clone();
        if let Some(r) = &current.rebalance {
            if b.finish_phases && r.waiting.contains(&addr) {
                for manager in &managers {
                    links.call(
                        *manager,
                        &ManagerRequest::PhaseDone {
                            addr,
                            target: r.target,
                        },
                    );
                }
            }
        }
        if let (Some(order), Some(result)) = (&current.backup, &b.backup) {
            if !backups_done.contains(&order.id) {
                let state = match result {
                    Ok(records) => BackupState::Done {
                        path: format!("/fake/{}/db-{}", addr.port(), order.suffix),
                        records: *records,
                    },
                    Err(why) => BackupState::Failed(why.clone()),
                };
                let mut reported = false;
                for manager in &managers {
                    let request = ManagerRequest::BackupDone {
                        addr,
                        id: order.id,
                        state: state.clone(),
                    };
                    reported |= matches!(links.call(*manager, &request), Some(ManagerResponse::Ok));
                }
                if reported {
                    backups_done.push(order.id);
                }
            }
        }
    }
}
