//! Three real servers with two shards each: writes to a key's coordinator reach all three owners,
//! deletes replicate as tombstones, and keys spread over every server and shard.

mod server_support;
mod support;

use kumofs::ring::key_hash;
use kumofs::rpc::messages::{DataResponse, WriteOp};
use server_support::{routing, value_of, DataClient};
use support::{wait_until, Cluster, READY_TIMEOUT};

#[test]
fn writes_reach_every_owner_and_keys_spread_over_servers_and_shards() {
    let mut cluster = Cluster::start_manager();
    cluster.server_args = vec!["--cpus".into(), "0-1".into()];
    for _ in 0..3 {
        cluster.add_server();
    }
    cluster.attach();
    let manager = cluster.manager_addr;
    // Reads switch to the new table once every server reported its copy phase.
    wait_until("three servers in both tables", READY_TIMEOUT, || {
        let snapshot = routing(manager);
        snapshot.write.nodes().len() == 3 && snapshot.read == snapshot.write
    });
    let snapshot = routing(manager);
    let mut clients: Vec<(std::net::SocketAddr, DataClient)> = cluster
        .server_addrs
        .iter()
        .map(|&a| (a, DataClient::connect(a)))
        .collect();
    let client_of = |clients: &mut Vec<(std::net::SocketAddr, DataClient)>, addr| {
        clients
            .iter()
            .position(|(a, _)| *a == addr)
            .expect("known server")
    };

    // Every server must have adopted the routing before it accepts its keys.
    for (_, client) in &mut clients {
        wait_until("server to adopt routing", READY_TIMEOUT, || {
            client.stats()["routing_epoch"].parse::<u64>().unwrap_or(0) >= snapshot.epoch
        });
    }

    let keys: Vec<String> = (0..300).map(|i| format!("key-{i}")).collect();
    let mut versions = Vec::new();
    for key in &keys {
        let coordinator = snapshot
            .write
            .coordinator(key_hash(key.as_bytes()))
            .expect("owner");
        let at = client_of(&mut clients, coordinator);
        let answer = clients[at].1.set(key, &format!("value of {key}"));
        let DataResponse::Stored { version } = answer else {
            panic!("set {key} on {coordinator}: {answer:?}\n{}", cluster.logs())
        };
        versions.push(version);
    }
    for (key, version) in keys.iter().zip(&versions) {
        let owners = snapshot.write.assign(key_hash(key.as_bytes()));
        assert_eq!(owners.as_slice().len(), 3);
        for owner in owners.as_slice() {
            let at = client_of(&mut clients, *owner);
            assert_eq!(
                value_of(&clients[at].1.get(key)),
                Some((format!("value of {key}"), *version)),
                "{key} on {owner}"
            );
        }
    }

    // A write to a server that is not the coordinator is refused with the routing epoch.
    let key = &keys[0];
    let coordinator = snapshot
        .write
        .coordinator(key_hash(key.as_bytes()))
        .expect("owner");
    let other = cluster
        .server_addrs
        .iter()
        .find(|a| **a != coordinator)
        .copied()
        .expect("other");
    let at = client_of(&mut clients, other);
    assert!(matches!(
        clients[at].1.set(key, "x"),
        DataResponse::NotOwner { .. }
    ));

    // Deletes and read-modify-writes replicate their outcome.
    let at = client_of(&mut clients, coordinator);
    assert_eq!(
        clients[at].1.write(key, WriteOp::Delete, "", 0, 0),
        DataResponse::Deleted
    );
    let key2 = &keys[1];
    let coordinator2 = snapshot
        .write
        .coordinator(key_hash(key2.as_bytes()))
        .expect("owner");
    let at2 = client_of(&mut clients, coordinator2);
    assert!(matches!(
        clients[at2].1.write(key2, WriteOp::Append, "+", 0, 0),
        DataResponse::Stored { .. }
    ));
    for owner in cluster.server_addrs.clone() {
        let at = client_of(&mut clients, owner);
        assert_eq!(
            clients[at].1.get(key),
            DataResponse::NotFound,
            "deleted on {owner}"
        );
        assert_eq!(
            value_of(&clients[at].1.get(key2)).map(|v| v.0),
            Some(format!("value of {key2}+")),
            "appended on {owner}"
        );
    }

    // With 3 servers and 3 copies every server holds every key, spread over both shards.
    for (addr, client) in &mut clients {
        let stats = client.stats();
        assert_eq!(stats["curr_items"], "299", "{addr}: {stats:?}");
        for shard in 0..2 {
            let items: u64 = stats[&format!("shard{shard}_items")]
                .parse()
                .expect("number");
            assert!(items > 100, "{addr} shard {shard} holds only {items} keys");
        }
        assert!(stats["repl_applied"].parse::<u64>().expect("number") > 0);
    }
}

#[test]
fn writes_go_on_with_two_copies_when_a_server_dies() {
    let mut cluster = Cluster::start_manager();
    cluster.server_args = vec!["--cpus".into(), "0-1".into()];
    for _ in 0..3 {
        cluster.add_server();
    }
    cluster.attach();
    let manager = cluster.manager_addr;
    wait_until("three servers in both tables", READY_TIMEOUT, || {
        let snapshot = routing(manager);
        snapshot.write.nodes().len() == 3 && snapshot.read == snapshot.write
    });
    let dead = cluster.server_addrs[2];
    cluster.servers[2].kill();

    // Until the manager marks the dead server fault, writes fail (replication cannot complete);
    // then the remaining copies take them, whoever coordinated before.
    let keys: Vec<String> = (0..50).map(|i| format!("after-{i}")).collect();
    let mut clients: Vec<(std::net::SocketAddr, DataClient)> = cluster.server_addrs[..2]
        .iter()
        .map(|&a| (a, DataClient::connect(a)))
        .collect();
    server_support::wait_or_dump(
        "the dead server to be skipped",
        || cluster.logs(),
        || {
            let snapshot = routing(manager);
            keys.iter().all(|key| {
                let Some(coordinator) = snapshot.write.coordinator(key_hash(key.as_bytes())) else {
                    return false;
                };
                let Some((_, client)) = clients.iter_mut().find(|(a, _)| *a == coordinator) else {
                    return false;
                };
                matches!(client.set(key, key), DataResponse::Stored { .. })
            })
        },
    );
    for key in &keys {
        for (addr, client) in &mut clients {
            assert_eq!(
                value_of(&client.get(key)).map(|v| v.0),
                Some(key.clone()),
                "{key} on {addr}"
            );
        }
    }
    assert!(!routing(manager)
        .write
        .assign(key_hash(keys[0].as_bytes()))
        .contains(&dead));
}
