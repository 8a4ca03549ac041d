//! Online rebalance with real servers: a fourth server is attached to three holding data; the keys
//! that move are copied to it, reads switch, and the old owners drop what they no longer own.

mod server_support;
mod support;

use std::net::SocketAddr;

use kumofs::ring::key_hash;
use kumofs::rpc::messages::DataResponse;
use server_support::{routing, value_of, wait_or_dump, DataClient};
use support::Cluster;

fn client_for(clients: &mut [(SocketAddr, DataClient)], addr: SocketAddr) -> &mut DataClient {
    &mut clients
        .iter_mut()
        .find(|(a, _)| *a == addr)
        .expect("known server")
        .1
}

/// Waits until the manager's tables both list `n` servers and every server routes with them.
fn settle(cluster: &Cluster, clients: &mut [(SocketAddr, DataClient)], n: usize) -> u64 {
    let manager = cluster.manager_addr;
    wait_or_dump(
        &format!("{n} servers in both tables"),
        || cluster.logs(),
        || {
            let snapshot = routing(manager);
            snapshot.write.nodes().len() == n && snapshot.read == snapshot.write
        },
    );
    let epoch = routing(manager).epoch;
    for (_, client) in clients.iter_mut() {
        wait_or_dump(
            "servers to adopt the routing",
            || cluster.logs(),
            || client.stats()["routing_epoch"].parse::<u64>().unwrap_or(0) >= epoch,
        );
    }
    epoch
}

#[test]
fn attaching_a_fourth_server_copies_moved_keys_and_drops_old_copies() {
    let mut cluster = Cluster::start_manager();
    cluster.server_args = vec!["--cpus".into(), "0-1".into()];
    for _ in 0..3 {
        cluster.add_server();
    }
    cluster.attach();
    let mut clients: Vec<(SocketAddr, DataClient)> = cluster
        .server_addrs
        .iter()
        .map(|&a| (a, DataClient::connect(a)))
        .collect();
    settle(&cluster, &mut clients, 3);
    let before = routing(cluster.manager_addr);

    let keys: Vec<String> = (0..400).map(|i| format!("moving-{i}")).collect();
    let mut versions = Vec::new();
    for key in &keys {
        let coordinator = before
            .write
            .coordinator(key_hash(key.as_bytes()))
            .expect("owner");
        match client_for(&mut clients, coordinator).set(key, key) {
            DataResponse::Stored { version } => versions.push(version),
            other => panic!("set {key}: {other:?}\n{}", cluster.logs()),
        }
    }

    let fourth = cluster.add_server();
    clients.push((fourth, DataClient::connect(fourth)));
    cluster.attach();
    settle(&cluster, &mut clients, 4);
    let after = routing(cluster.manager_addr);

    let mut moved = 0;
    for (key, version) in keys.iter().zip(&versions) {
        let owners = after.write.assign(key_hash(key.as_bytes()));
        moved += usize::from(owners.contains(&fourth));
        for owner in owners.as_slice() {
            assert_eq!(
                value_of(&client_for(&mut clients, *owner).get(key)),
                Some((key.clone(), *version)),
                "{key} on {owner}\n{}",
                cluster.logs()
            );
        }
    }
    assert!(
        moved > 100,
        "only {moved} of 400 keys moved to the fourth server"
    );

    // The drop phase leaves exactly three copies of every key.
    wait_or_dump(
        "old copies to be dropped",
        || cluster.logs(),
        || {
            let total: u64 = clients
                .iter_mut()
                .map(|(_, c)| c.stats()["curr_items"].parse::<u64>().unwrap_or(0))
                .sum();
            total == 3 * keys.len() as u64
        },
    );
}
