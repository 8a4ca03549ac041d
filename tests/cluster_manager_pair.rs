//! The seed's tutorial with real processes: two managers (`-p` each other), three servers and a
//! gateway talking to both. Then, under a client that keeps writing and reading through the
//! gateway: one manager is killed (nothing stops, the other drives a rebalance), it restarts and
//! catches up, both managers stop (the cluster keeps serving) and restart with their state intact.

mod cluster_manager_support;
mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster_manager_support::{local, logs_in, manager_addr, start_manager, status};
use kumofs::cluster::membership::StatusReport;
use kumofs::cluster::pair::Role;
use support::{bin, free_port, run_tool, wait_for_port, wait_until, Daemon};

/// Fault detection of these managers: 0.5 s x 6 = 3 s (loaded test machines are slow).
const TIMING: &[&str] = &["-Ys", "0.5", "-Yn", "6"];
const WAIT: Duration = Duration::from_secs(30);

fn kumoctl(manager: SocketAddr, args: &[&str]) -> String {
    let mut all = vec![manager.to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    let out = run_tool("kumoctl", &all);
    assert!(
        out.status.success(),
        "kumoctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The status text without its first two lines (the timestamp) and without warnings.
fn membership_lines(text: &str) -> Vec<String> {
    text.lines()
        .skip(2)
        .filter(|l| !l.starts_with("warning:"))
        .map(str::to_string)
        .collect()
}

fn settled_with(report: &StatusReport, n: usize) -> bool {
    report.write.active().count() == n && report.rebalance.is_none() && report.read == report.write
}

/// A client that writes and reads back through the gateway until stopped, counting failures.
struct Writer {
    stop: Arc<AtomicBool>,
    errors: Arc<Mutex<Vec<String>>>,
    acknowledged: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(gateway: SocketAddr) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let acknowledged = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, errors, acknowledged) = (stop.clone(), errors.clone(), acknowledged.clone());
            std::thread::spawn(move || {
                let url = format!("memcache://{gateway}?timeout=20&protocol=ascii");
                let client = memcache::Client::connect(url).expect("connect to the gateway");
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("pair-{}", i % 500);
                    let value = format!("value-{i}");
                    match client.set(&key, value.as_str(), 0) {
                        Ok(()) => {
                            acknowledged.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => errors.lock().unwrap().push(format!("set {key}: {e}")),
                    }
                    match client.get::<String>(&key) {
                        Ok(Some(got)) if got == value => {}
                        other => errors.lock().unwrap().push(format!("get {key}: {other:?}")),
                    }
                    i += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        Writer {
            stop,
            errors,
            acknowledged,
            thread: Some(thread),
        }
    }

    /// Waits until `more` further sets were acknowledged (the cluster is serving).
    fn wait_for_progress(&self, more: u64, context: &str) {
        let target = self.acknowledged.load(Ordering::Relaxed) + more;
        wait_until(context, WAIT, || {
            self.acknowledged.load(Ordering::Relaxed) >= target
        });
    }

    fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (self.acknowledged.load(Ordering::Relaxed), self.errors())
    }
}

#[test]
fn tutorial_pair_survives_losing_and_restarting_managers() {
    let dir = tempfile::tempdir().unwrap();
    let (m1, m2) = (manager_addr(), manager_addr());
    let (d1, d2) = (dir.path().join("m1"), dir.path().join("m2"));
    let start = |name: &str, me: SocketAddr, partner: SocketAddr, state: &std::path::Path| {
        start_manager(dir.path(), name, me, Some(partner), state, TIMING)
    };
    let mut mgr1 = start("manager1", m1, m2, &d1);
    let mut mgr2 = start("manager2", m2, m1, &d2);

    // kumo-server -v -l svrN -m svr1 -p svr2 -s DB, three times.
    let mut servers = Vec::new();
    let mut server_addrs: Vec<SocketAddr> = Vec::new();
    for n in 1..=3 {
        let addr = local(free_port());
        let args: Vec<String> = [
            "-v",
            "-l",
            &addr.to_string(),
            "-L",
            &free_port().to_string(),
            "-m",
            &m1.to_string(),
            "-p",
            &m2.to_string(),
            "-s",
            &dir.path().join(format!("db{n}")).display().to_string(),
            "--cpus",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        servers.push(Daemon::spawn(
            &format!("server{n}"),
            &bin("kumo-server"),
            &args,
            dir.path(),
        ));
        wait_for_port(addr);
        server_addrs.push(addr);
    }
    server_addrs.sort();
    let logs = || {
        let mut out = String::new();
        for name in [
            "manager1",
            "manager2",
            "manager1-again",
            "manager2-again",
            "gateway",
        ] {
            let path = dir.path().join(format!("{name}.log"));
            if let Ok(text) = std::fs::read_to_string(&path) {
                out.push_str(&format!("--- {name}\n{text}"));
            }
        }
        out
    };

    // kumoctl svr1 status: both managers list the three servers as not attached.
    let mut expected = vec![
        "attached node:".to_string(),
        "not attached node:".to_string(),
    ];
    expected.extend(server_addrs.iter().map(|a| format!("  {a}")));
    for m in [m1, m2] {
        wait_until("the servers to be recognised", WAIT, || {
            membership_lines(&kumoctl(m, &["status"])) == expected
        });
    }
    // kumoctl svr1 attach; both list them attached and active.
    assert_eq!(kumoctl(m1, &["attach"]), "");
    let mut attached = vec!["attached node:".to_string()];
    attached.extend(server_addrs.iter().map(|a| format!("  {a}  (active)")));
    attached.push("not attached node:".into());
    for m in [m1, m2] {
        wait_until("the servers to be attached", WAIT, || {
            status(m).is_some_and(|r| settled_with(&r, 3))
        });
        assert_eq!(membership_lines(&kumoctl(m, &["status"])), attached);
    }

    // kumo-gateway -v -m svr1 -p svr2 -t 11211
    let text = local(free_port());
    let gateway_args: Vec<String> = [
        "-v",
        "-m",
        &m1.to_string(),
        "-p",
        &m2.to_string(),
        "-t",
        &text.to_string(),
        "--cpus",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let _gateway = Daemon::spawn("gateway", &bin("kumo-gateway"), &gateway_args, dir.path());
    wait_for_port(text);
    let writer = Writer::start(text);
    writer.wait_for_progress(50, "the first writes");

    // Kill the driving manager: nothing stops, and the other drives a rebalance on its own.
    let leader_is_m1 = status(m1).unwrap().role == Role::Leader;
    let (killed, killed_dir, survivor) = if leader_is_m1 {
        (m1, &d1, m2)
    } else {
        (m2, &d2, m1)
    };
    if leader_is_m1 {
        mgr1.kill()
    } else {
        mgr2.kill()
    }
    wait_until("the survivor to drive", WAIT, || {
        status(survivor).is_some_and(|r| r.role == Role::Leader)
    });
    assert!(kumoctl(survivor, &["status"])
        .contains(&format!("warning: partner manager {killed} is unreachable")));
    assert_eq!(kumoctl(survivor, &["enable-auto-replace"]), "true\n");
    assert_eq!(kumoctl(survivor, &["replace"]), "");
    wait_until("the rebalance run by the survivor", WAIT, || {
        status(survivor).is_some_and(|r| settled_with(&r, 3))
    });
    writer.wait_for_progress(100, "writes with one manager");
    assert_eq!(writer.errors(), Vec::<String>::new(), "{}", logs());

    // Restart it: it catches up from its partner (the change made while it was away included).
    let again = if leader_is_m1 {
        "manager1-again"
    } else {
        "manager2-again"
    };
    let restarted = start_manager(
        dir.path(),
        again,
        killed,
        Some(survivor),
        killed_dir,
        TIMING,
    );
    if leader_is_m1 {
        mgr1 = restarted
    } else {
        mgr2 = restarted
    }
    wait_until("the restarted manager to catch up", WAIT, || {
        match (status(killed), status(survivor)) {
            (Some(a), Some(b)) => a.auto_replace && a.epoch == b.epoch && a.write == b.write,
            _ => false,
        }
    });
    assert_eq!(membership_lines(&kumoctl(killed, &["status"])), attached);

    // Stop both managers: servers and gateway keep serving with the tables they hold.
    let before = kumoctl(m1, &["status"]);
    assert_eq!(mgr1.terminate(Duration::from_secs(10)), Some(0));
    assert_eq!(mgr2.terminate(Duration::from_secs(10)), Some(0));
    writer.wait_for_progress(100, "writes with no manager");
    // Restart both: the state is intact.
    let _mgr1 = start("manager1-again2", m1, m2, &d1);
    let _mgr2 = start("manager2-again2", m2, m1, &d2);
    for m in [m1, m2] {
        wait_until("the managers to be back", WAIT, || status(m).is_some());
        let after = kumoctl(m, &["status"]);
        assert_eq!(membership_lines(&after), attached, "{after}");
        // Same hash space timestamp: nothing changed the tables.
        assert_eq!(
            after.lines().nth(1),
            before.lines().nth(1),
            "{before}\n{after}"
        );
        assert!(status(m).unwrap().auto_replace);
    }
    writer.wait_for_progress(100, "writes after the restart");
    let (acknowledged, errors) = writer.finish();
    assert_eq!(errors, Vec::<String>::new(), "{}", logs());
    assert!(acknowledged > 350);
}

/// Starts two managers, `servers` servers and a gateway; returns everything to keep alive.
struct PairCluster {
    dir: tempfile::TempDir,
    managers: [SocketAddr; 2],
    daemons: [Option<Daemon>; 2],
    _servers: Vec<Daemon>,
    _gateway: Daemon,
    text: SocketAddr,
}

impl PairCluster {
    fn start(servers: usize) -> PairCluster {
        let dir = tempfile::tempdir().unwrap();
        let managers = [manager_addr(), manager_addr()];
        let daemons = [0, 1].map(|i| {
            let state = dir.path().join(format!("m{i}"));
            Some(start_manager(
                dir.path(),
                &format!("manager{i}"),
                managers[i],
                Some(managers[1 - i]),
                &state,
                TIMING,
            ))
        });
        let mut server_daemons = Vec::new();
        for n in 0..servers {
            let addr = local(free_port());
            let args: Vec<String> = [
                "-l",
                &addr.to_string(),
                "-L",
                &free_port().to_string(),
                "-m",
                &managers[0].to_string(),
                "-p",
                &managers[1].to_string(),
                "-s",
                &dir.path().join(format!("db{n}")).display().to_string(),
                "--cpus",
                "0",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let name = format!("server{n}");
            server_daemons.push(Daemon::spawn(&name, &bin("kumo-server"), &args, dir.path()));
            wait_for_port(addr);
        }
        wait_until("servers heard", WAIT, || {
            status(managers[0]).is_some_and(|r| r.not_attached.len() == servers)
        });
        kumoctl(managers[0], &["attach"]);
        wait_until("attached", WAIT, || {
            status(managers[1]).is_some_and(|r| settled_with(&r, servers))
        });
        let text = local(free_port());
        let args: Vec<String> = [
            "-m",
            &managers[0].to_string(),
            "-p",
            &managers[1].to_string(),
            "-t",
            &text.to_string(),
            "--cpus",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let gateway = Daemon::spawn("gateway", &bin("kumo-gateway"), &args, dir.path());
        wait_for_port(text);
        PairCluster {
            dir,
            managers,
            daemons,
            _servers: server_daemons,
            _gateway: gateway,
            text,
        }
    }

    /// Every log of the cluster's processes so far.
    fn logs(&self) -> String {
        logs_in(self.dir.path())
    }

    fn restart(&mut self, i: usize, cycle: usize) {
        let state = self.dir.path().join(format!("m{i}"));
        self.daemons[i] = Some(start_manager(
            self.dir.path(),
            &format!("manager{i}-{cycle}"),
            self.managers[i],
            Some(self.managers[1 - i]),
            &state,
            TIMING,
        ));
    }
}

/// Many rounds of killing one manager (or both), changing the cluster through the survivor, and
/// restarting, under a client that must never see an error. `make test-heavy` runs it.
#[test]
#[ignore = "long: run with --include-ignored (make test-heavy)"]
fn managers_killed_and_restarted_in_a_loop() {
    let mut cluster = PairCluster::start(3);
    let writer = Writer::start(cluster.text);
    writer.wait_for_progress(50, "first writes");
    let rounds = 20;
    for cycle in 0..rounds {
        let victim = cycle % 2;
        let survivor = cluster.managers[1 - victim];
        if let Some(mut d) = cluster.daemons[victim].take() {
            d.kill();
        }
        if cycle % 5 == 4 {
            // Both at once: the cluster serves without managers, then both come back.
            if let Some(mut d) = cluster.daemons[1 - victim].take() {
                d.kill();
            }
            writer.wait_for_progress(50, "writes without managers");
            cluster.restart(1 - victim, cycle);
        } else {
            wait_until("the survivor to drive", WAIT, || {
                status(survivor).is_some_and(|r| r.role == Role::Leader)
            });
            kumoctl(survivor, &["replace"]);
        }
        cluster.restart(victim, cycle);
        let [a, b] = cluster.managers;
        let start = std::time::Instant::now();
        loop {
            let (x, y) = (status(a), status(b));
            if let (Some(x), Some(y)) = (&x, &y) {
                if x.epoch == y.epoch && settled_with(x, 3) {
                    break;
                }
            }
            if start.elapsed() > WAIT {
                panic!(
                    "round {cycle}: the pair did not converge and settle:\n{x:?}\n{y:?}\n{}",
                    cluster.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        writer.wait_for_progress(30, "writes after the round");
        assert_eq!(writer.errors(), Vec::<String>::new(), "round {cycle}");
    }
    let (acknowledged, errors) = writer.finish();
    assert_eq!(errors, Vec::<String>::new());
    println!("{rounds} rounds, {acknowledged} acknowledged sets, no error");
}
