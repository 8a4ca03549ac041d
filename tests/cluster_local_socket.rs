//! The local socket (see `runtime::net`): a gateway and servers on one host reach each other over
//! Unix sockets named `kumofs/ADDR`, and a server started with `--no-local-socket` is reached over
//! TCP. Which sockets carry the traffic is read from the kernel's table of Unix sockets,
//! `/proc/net/unix`, where an abstract name shows as `@kumofs/ADDR`.

mod cluster_support;
mod server_support;
mod support;

use std::net::SocketAddr;

use cluster_support::{read_all, RealCluster, TextClient};

/// The connected Unix sockets (state 03) bound to the local name of the server at `addr`: the
/// server's side of every connection it accepted there.
fn local_connections(addr: SocketAddr) -> usize {
    let name = format!("@kumofs/{addr}");
    let table = std::fs::read_to_string("/proc/net/unix").expect("read /proc/net/unix");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(5) == Some(&"03") && fields.get(7) == Some(&name.as_str())
        })
        .count()
}

/// Whether anything listens on the local name of `addr` (state 01).
fn local_listener(addr: SocketAddr) -> bool {
    let name = format!("@kumofs/{addr}");
    let table = std::fs::read_to_string("/proc/net/unix").expect("read /proc/net/unix");
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(5) == Some(&"01") && fields.get(7) == Some(&name.as_str())
    })
}

/// Writes keys through the gateway until every server has been written to, and reads them back.
fn write_and_read(cluster: &RealCluster) {
    let mut client = TextClient::connect(cluster.gateway());
    let keys: Vec<String> = (0..200).map(|i| format!("local-{i}")).collect();
    for key in &keys {
        assert_eq!(client.set(key, key).expect("set"), "STORED");
    }
    let bad = read_all(cluster.gateway(), &keys, |key| key.to_string());
    assert!(bad.is_empty(), "unreadable: {bad:?}");
}

#[test]
fn processes_on_one_host_connect_over_the_local_socket() {
    let cluster = RealCluster::start(3, &["--cpus", "0"]);
    write_and_read(&cluster);
    for server in &cluster.servers {
        assert!(
            local_listener(server.addr),
            "{} listens locally",
            server.addr
        );
        // The gateway's connection, and replication connections from the two other servers.
        let accepted = local_connections(server.addr);
        assert!(
            accepted >= 3,
            "{} accepted {accepted} local connections\n{}",
            server.addr,
            cluster.logs()
        );
    }
}

#[test]
fn a_server_started_with_no_local_socket_is_reached_over_tcp() {
    let cluster = RealCluster::start(3, &["--cpus", "0", "--no-local-socket"]);
    write_and_read(&cluster);
    for server in &cluster.servers {
        assert!(
            !local_listener(server.addr),
            "{} listens locally",
            server.addr
        );
        assert_eq!(local_connections(server.addr), 0, "{}", server.addr);
    }
}
