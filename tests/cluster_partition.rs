//! Partitions with real processes: the links between daemons run through the fault proxy of
//! `tests/fault_proxy/`, which the test cuts (connections closed, new ones refused) or turns into a
//! blackhole (connections open, nothing delivered: only timeouts tell) and heals again.
//!
//! - A server cut off from the manager while it still reaches its peers and the gateway: the
//!   manager marks it fault within its fault window, the gateway keeps serving every key from the
//!   other copies under a writing and verifying client, deletes made meanwhile do not reach it;
//!   healed and attached, it gets the three copies back and none of the deleted keys.
//!
//! The manager pair split by a cut is in `cluster_partition_pair.rs`.

mod cluster_support;
mod fault_proxy;
mod server_support;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cluster_support::{
    read_all, routing, wait_adopted, wait_or, RealCluster, Text, TextClient, Writer,
};
use fault_proxy::{FaultProxy, Mode};
use kumofs::ring::NodeState;
use server_support::{value_of, DataClient};

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

    // The gateway (the shard serving `client`) follows too: a delete sent before it did would
    // still go to the isolated server, which believes it coordinates its keys.
    wait_or(
        "the gateway to route with the new table",
        WAIT,
        || cluster.logs(),
        || {
            client
                .stat("routing_epoch")
                .ok()
                .flatten()
                .and_then(|e| e.parse::<u64>().ok())
                .is_some_and(|e| e >= epoch)
        },
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
