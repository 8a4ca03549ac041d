//! A heavier run (ignored unless `KUMO_HEAVY=1`): many client threads write to the coordinators of
//! a 3-server cluster and verify every acknowledged write on all three owners; prints ops/s.

mod server_support;
mod support;

use std::time::Instant;

use kumofs::ring::key_hash;
use kumofs::rpc::messages::DataResponse;
use server_support::{routing, value_of, wait_or_dump, DataClient};
use support::Cluster;

#[test]
#[ignore]
fn replicated_writes_under_load() {
    if std::env::var("KUMO_HEAVY").is_err() {
        return;
    }
    let mut cluster = Cluster::start_manager();
    for _ in 0..3 {
        cluster.add_server();
    }
    cluster.attach();
    let manager = cluster.manager_addr;
    wait_or_dump(
        "three servers in both tables",
        || cluster.logs(),
        || {
            let snapshot = routing(manager);
            snapshot.write.nodes().len() == 3 && snapshot.read == snapshot.write
        },
    );
    let snapshot = routing(manager);
    for addr in &cluster.server_addrs {
        let mut client = DataClient::connect(*addr);
        wait_or_dump(
            "servers to adopt the routing",
            || cluster.logs(),
            || client.stats()["routing_epoch"].parse::<u64>().unwrap_or(0) >= snapshot.epoch,
        );
    }
    let (threads, per_thread) = (16, 2_000);
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let snapshot = snapshot.clone();
            let servers = cluster.server_addrs.clone();
            std::thread::spawn(move || {
                let mut clients: Vec<DataClient> =
                    servers.iter().map(|a| DataClient::connect(*a)).collect();
                for i in 0..per_thread {
                    let key = format!("load-{t}-{i}");
                    let owner = snapshot
                        .write
                        .coordinator(key_hash(key.as_bytes()))
                        .expect("owner");
                    let at = servers.iter().position(|a| *a == owner).expect("known");
                    let answer = clients[at].set(&key, &key);
                    assert!(
                        matches!(answer, DataResponse::Stored { .. }),
                        "{key}: {answer:?}"
                    );
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker");
    }
    let elapsed = start.elapsed();
    let total = threads * per_thread;
    println!(
        "{total} replicated sets (3 copies) in {elapsed:?}: {:.0} ops/s with {threads} blocking clients",
        total as f64 / elapsed.as_secs_f64()
    );
    let mut clients: Vec<DataClient> = cluster
        .server_addrs
        .iter()
        .map(|a| DataClient::connect(*a))
        .collect();
    for t in 0..threads {
        for i in (0..per_thread).step_by(97) {
            let key = format!("load-{t}-{i}");
            for client in &mut clients {
                assert_eq!(value_of(&client.get(&key)).map(|v| v.0), Some(key.clone()));
            }
        }
    }
}
