//! Partitions with real processes: the links between daemons run through the fault proxy of
//! `tests/fault_proxy/`, which the test cuts (connections closed, new ones refused) or turns into a
//! blackhole (connections open, nothing delivered: only timeouts tell) and heals again.
//!
//! - A server cut off from the manager while it still reaches its peers and the gateway: the
//!   manager marks it fault within its fault window, the gateway keeps serving every key from the
//!   other copies under a writing and verifying client, deletes made meanwhile do not reach it;
//!   healed and attached, it gets the three copies back and none of the deleted keys.
//! - The manager pair with the link between the two managers cut: both keep serving and driving;
//!   a server attached through one of them during the partition; healed, both converge on the
//!   same routing and no acknowledged write is lost.

mod cluster_manager_support;
mod cluster_support;
mod fault_proxy;
mod server_support;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cluster_manager_support::{local, manager_addr, start_manager, status};
use cluster_support::{
    check_copies, read_all, routing, wait_adopted, wait_or, RealCluster, ServerProc, Text,
    TextClient, Writer,
};
use fault_proxy::{FaultProxy, Mode};
use kumofs::cluster::membership::StatusReport;
use kumofs::cluster::pair::Role;
use kumofs::ring::NodeState;
use server_support::{value_of, DataClient};
use support::{bin, free_port, kumoctl, wait_for_port, Daemon};

const ARGS: &[&str] = &["--cpus", "0-1"];
/// The manager's fault window in these tests: `-Ys 0.5 -Yn 3`.
const FAULT_WINDOW: Duration = Duration::from_millis(1500);
/// What a loaded 2-core machine may add to it: a tick, a keepalive interval, scheduling.
const SLACK: Duration = Duration::from_millis(2500);
const WAIT: Duration = Duration::from_secs(30);

#[test]
fn a_server_cut_off_from_the_manager_is_marked_fault_and_comes_back_with_nothing_lost() {
    server_isolated_from_the_manager(Mode::Cut);
}

#[test]
fn a_server_whose_keepalives_vanish_in_a_blackhole_is_marked_fault_and_comes_back() {
    server_isolated_from_the_manager(Mode::Blackhole);
}

fn server_isolated_from_the_manager(mode: Mode) {
    let mut cluster = RealCluster::manager_only(&["-Ys", "0.5", "-Yn", "3"]);
    let proxy = FaultProxy::start(cluster.manager());
    cluster.add_server(ARGS);
    cluster.add_server(ARGS);
    let isolated = cluster.add_server_via(proxy.addr, ARGS);
    cluster.attach();
    cluster.start_gateway();
    let gone = cluster.servers[isolated].addr;
    let others: Vec<SocketAddr> = cluster
        .servers
        .iter()
        .map(|s| s.addr)
        .filter(|a| *a != gone)
        .collect();

    let mut client = TextClient::connect(cluster.gateway());
    let doomed: Vec<String> = (0..100).map(|i| format!("doomed-{i}")).collect();
    let kept: Vec<String> = (0..100).map(|i| format!("kept-{i}")).collect();
    for key in doomed.iter().chain(&kept) {
        assert_eq!(client.set(key, &Writer::value(key)).expect("set"), "STORED");
    }
    let writer = Writer::start(cluster.gateway(), "isolated");
    writer.wait_more(100, WAIT);

    // The partition: only the link server -> manager is broken.
    proxy.set_mode(mode);
    let cut_at = Instant::now();
    let manager = cluster.manager();
    wait_or(
        &format!("{gone} to be marked fault"),
        WAIT,
        || cluster.logs(),
        || routing(manager).write.state_of(&gone) == Some(NodeState::Fault),
    );
    let detected = cut_at.elapsed();
    eprintln!("{mode:?}: marked fault {detected:?} after the partition");
    assert!(
        detected <= FAULT_WINDOW + SLACK,
        "{mode:?}: marked fault only after {detected:?} (window {FAULT_WINDOW:?})"
    );
    let epoch = routing(manager).epoch;
    for addr in &others {
        wait_adopted(*addr, epoch, || cluster.logs());
    }
    // It is really isolated: it still routes with the table in which it is active.
    let isolated_epoch = server_epoch(gone);
    assert!(
        isolated_epoch < epoch,
        "{gone} adopted epoch {isolated_epoch}"
    );

    // The gateway serves every key from the other copies; deletes do not reach the isolated one.
    writer.wait_more(200, WAIT);
    for key in &doomed {
        assert_eq!(client.delete(key).expect("delete"), "DELETED");
    }
    assert!(read_all(cluster.gateway(), &kept, Writer::value).is_empty());
    let mut stale = DataClient::connect(gone);
    assert!(
        doomed.iter().all(|k| value_of(&stale.get(k)).is_some()),
        "a delete reached the isolated server"
    );
    writer.wait_more(100, WAIT);
    if mode == Mode::Blackhole {
        assert!(
            proxy
                .counters()
                .dropped
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0,
            "no keepalive went into the blackhole"
        );
    }

    // Heal: it hears the manager again (and learns it is fault), then is attached back.
    proxy.heal();
    let epoch = routing(manager).epoch;
    wait_adopted(gone, epoch, || cluster.logs());
    cluster.attach();
    writer.wait_more(100, WAIT);
    let report = writer.finish();
    assert!(
        report.lost.is_empty(),
        "lost writes: {:?}\n{}",
        report.lost,
        cluster.logs()
    );
    assert!(
        report.errors.is_empty(),
        "{} client errors, first: {:?}\n{}",
        report.errors.len(),
        &report.errors[..report.errors.len().min(5)],
        cluster.logs()
    );
    assert!(report.acked.len() >= 500, "{} acked", report.acked.len());
    let bad = read_all(cluster.gateway(), &report.acked, Writer::value);
    assert!(bad.is_empty(), "unreadable: {:?}", &bad[..bad.len().min(5)]);
    let mut all = report.acked.clone();
    all.extend(kept.iter().cloned());
    cluster.check_copies(&all, Writer::value);
    for key in &doomed {
        assert_eq!(client.gets(key).expect("gets"), Text::Missing, "{key}");
    }
    for s in &cluster.servers {
        let mut server = DataClient::connect(s.addr);
        for key in &doomed {
            assert_eq!(
                value_of(&server.get(key)),
                None,
                "{key} came back on {}",
                s.name
            );
        }
    }
}

/// The routing epoch a server holds.
fn server_epoch(addr: SocketAddr) -> u64 {
    server_stat(addr, "routing_epoch")
        .parse()
        .expect("routing_epoch")
}

fn server_stat(addr: SocketAddr, name: &str) -> String {
    DataClient::connect(addr)
        .stats()
        .remove(name)
        .unwrap_or_else(|| panic!("{addr} has no stat {name}"))
}

fn settled_with(report: &StatusReport, n: usize) -> bool {
    report.write.active().count() == n && report.rebalance.is_none() && report.read == report.write
}

/// `kumoctl MANAGER status --json`, parsed.
fn status_json(manager: SocketAddr) -> serde_json::Value {
    let out = kumoctl(manager, &["status", "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json of {manager}: {e}: {out}"))
}

/// What both managers of a pair must agree on once synced: everything but who answers.
fn shared_view(status: &serde_json::Value) -> serde_json::Value {
    let mut v = status.clone();
    if let Some(map) = v.as_object_mut() {
        for field in ["manager", "role", "partner", "warnings", "progress"] {
            map.remove(field);
        }
    }
    v
}

#[test]
fn the_manager_pair_split_by_a_cut_keeps_serving_and_converges_after_the_heal() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (manager_addr(), manager_addr());
    // Each manager reaches the other only through a proxy; servers, gateway and kumoctl reach
    // both directly.
    let to_a = FaultProxy::start(a);
    let to_b = FaultProxy::start(b);
    let timing = |via: SocketAddr| {
        vec![
            "-Ys".to_string(),
            "0.5".into(),
            "-Yn".into(),
            "4".into(),
            "--gc-lag".into(),
            "4".into(),
            "--partner-via".into(),
            via.to_string(),
        ]
    };
    let (ta, tb) = (timing(to_b.addr), timing(to_a.addr));
    let ta: Vec<&str> = ta.iter().map(String::as_str).collect();
    let tb: Vec<&str> = tb.iter().map(String::as_str).collect();
    let _ma = start_manager(
        dir.path(),
        "managerA",
        a,
        Some(b),
        &dir.path().join("a"),
        &ta,
    );
    let _mb = start_manager(
        dir.path(),
        "managerB",
        b,
        Some(a),
        &dir.path().join("b"),
        &tb,
    );
    let logs = || {
        let mut out = String::new();
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        names.sort();
        for path in names
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
        {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            out.push_str(&format!("--- {}\n{text}", path.display()));
        }
        out
    };
    let partner = ["-p".to_string(), b.to_string(), "--cpus".into(), "0".into()];
    let partner: Vec<&str> = partner.iter().map(String::as_str).collect();
    let mut servers: Vec<ServerProc> = (1..=3)
        .map(|n| ServerProc::start(&format!("s{n}"), dir.path(), a, &partner))
        .collect();
    for m in [a, b] {
        wait_or("both managers to hear the servers", WAIT, logs, || {
            status(m).is_some_and(|r| r.not_attached.len() == 3)
        });
    }
    assert_eq!(kumoctl(a, &["attach"]), "");
    for m in [a, b] {
        wait_or("the three to be attached", WAIT, logs, || {
            status(m).is_some_and(|r| {
                settled_with(&r, 3) && r.partner.as_ref().is_some_and(|p| p.reachable)
            })
        });
    }
    // The sync really runs through the proxies.
    for p in [&to_a, &to_b] {
        assert!(
            p.counters()
                .forwarded
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
        );
    }
    let text = local(free_port());
    let gateway_args: Vec<String> = [
        "-v",
        "-m",
        &a.to_string(),
        "-p",
        &b.to_string(),
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
    let writer = Writer::start(text, "pair");
    writer.wait_more(100, WAIT);

    // Cut the link both ways: each manager soon drives on its own, and both keep answering.
    to_a.cut();
    to_b.cut();
    for m in [a, b] {
        wait_or("both managers to drive alone", WAIT, logs, || {
            status(m).is_some_and(|r| {
                r.role == Role::Leader && r.partner.as_ref().is_some_and(|p| !p.reachable)
            })
        });
        assert!(kumoctl(m, &["status"]).contains("unreachable"));
    }
    writer.wait_more(100, WAIT);

    // A fourth server, attached through the manager that follows when the pair is whole.
    servers.push(ServerProc::start("s4", dir.path(), a, &partner));
    let new = servers[3].addr;
    for m in [a, b] {
        wait_or(
            "both managers to hear the fourth server",
            WAIT,
            logs,
            || status(m).is_some_and(|r| r.not_attached.contains(&new)),
        );
    }
    let (through, other) = if a < b { (b, a) } else { (a, b) };
    assert_eq!(kumoctl(through, &["attach"]), "");
    wait_or("the attach to finish on its side", WAIT, logs, || {
        status(through).is_some_and(|r| settled_with(&r, 4))
    });
    // The other side never heard of it: the partition is real.
    let apart = status(other).expect("status");
    assert_eq!(apart.write.active().count(), 3, "{apart:?}");
    // The other side goes on with its own duties: with `--gc-lag 4` its GC horizon advances every
    // second, each step a new state there with a newer epoch than anything on the attach side.
    // Servers (and gateways) must keep following the newer write table, the one the pair keeps
    // when it heals, not whichever side changed last.
    let attached = status(through).expect("status").write.version;
    wait_or(
        "the other side to hold the newest epoch",
        WAIT,
        logs,
        || match (status(other), status(through)) {
            (Some(o), Some(t)) => o.epoch > t.epoch,
            _ => false,
        },
    );
    // Two more steps there: servers poll both managers every half second meanwhile.
    for _ in 0..2 {
        let horizon = status(other).expect("status").gc_horizon;
        wait_or("the other side's horizon to advance", WAIT, logs, || {
            status(other).is_some_and(|r| r.gc_horizon > horizon)
        });
    }
    for s in &servers {
        assert_eq!(
            server_stat(s.addr, "whs_version"),
            attached.to_string(),
            "{} routes with the other side's table\n{}",
            s.addr,
            logs()
        );
    }
    writer.wait_more(100, WAIT);

    // Heal: both converge on the same routing, with the fourth server in it.
    to_a.heal();
    to_b.heal();
    wait_or("the pair to converge", WAIT, logs, || {
        match (status(a), status(b)) {
            (Some(x), Some(y)) => {
                settled_with(&x, 4)
                    && x.epoch == y.epoch
                    && x.write == y.write
                    && x.partner.as_ref().is_some_and(|p| p.reachable)
                    && y.partner.as_ref().is_some_and(|p| p.reachable)
            }
            _ => false,
        }
    });
    let (ja, jb) = (status_json(a), status_json(b));
    assert_eq!(shared_view(&ja), shared_view(&jb), "{ja:#}\n{jb:#}");
    let roles = [status(a).expect("a").role, status(b).expect("b").role];
    assert!(
        roles.contains(&Role::Leader) && roles.contains(&Role::Follower),
        "roles after the heal: {roles:?}"
    );
    let epoch = status(a).expect("a").epoch;
    for s in &servers {
        wait_adopted(s.addr, epoch, logs);
    }
    writer.wait_more(100, WAIT);
    let report = writer.finish();
    assert!(
        report.lost.is_empty(),
        "lost writes: {:?}\n{}",
        report.lost,
        logs()
    );
    assert!(
        report.errors.is_empty(),
        "{} client errors, first: {:?}\n{}",
        report.errors.len(),
        &report.errors[..report.errors.len().min(5)],
        logs()
    );
    let bad = read_all(text, &report.acked, Writer::value);
    assert!(bad.is_empty(), "unreadable: {:?}", &bad[..bad.len().min(5)]);
    check_copies(a, &report.acked, Writer::value);
    check_copies(b, &report.acked, Writer::value);
}
