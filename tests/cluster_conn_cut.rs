//! Connections cut under a running cluster, with real processes: the kernel aborts every TCP
//! connection to one server's data port (the gateway's connections to it and its peers'
//! replication connections) with `ss -K`, again and again, each time another server, while a
//! client writes and verifies through the gateway. The gateway and the coordinators reconnect and
//! retry: the client sees no error, no acknowledged write is lost, and every key keeps its three
//! copies.
//!
//! `ss -K` needs CAP_NET_ADMIN and a kernel with INET_DIAG_DESTROY; the test first checks that it
//! really aborts a connection of its own and says plainly that it did not run otherwise.

mod cluster_support;
mod server_support;
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use cluster_support::{read_all, RealCluster, Writer};

// TCP only: `ss -K` cuts TCP connections, and with the local socket a gateway and peers on this
// host would connect over Unix sockets instead.
const ARGS: &[&str] = &["--cpus", "0-1", "--no-local-socket"];
const WAIT: Duration = Duration::from_secs(30);

/// Aborts every TCP connection whose destination port is `port`; returns how many it aborted.
fn cut_connections_to(port: u16) -> usize {
    let out = Command::new("ss")
        .args(["-K", "-t", "-n", "dport", "=", &format!(":{port}")])
        .output()
        .expect("run ss");
    assert!(
        out.status.success(),
        "ss -K failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A header line, then one line per aborted socket.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// Whether `ss -K` aborts a connection here: cuts one of our own and watches it break.
fn can_cut_connections() -> bool {
    let Ok(listener) = TcpListener::bind("127.0.0.1:0") else {
        return false;
    };
    let Ok(port) = listener.local_addr().map(|a| a.port()) else {
        return false;
    };
    let Ok(mut client) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let Ok((_server, _)) = listener.accept() else {
        return false;
    };
    let cut = Command::new("ss")
        .args(["-K", "-t", "-n", "dport", "=", &format!(":{port}")])
        .output()
        .is_ok_and(|o| o.status.success());
    let _ = client.set_read_timeout(Some(Duration::from_millis(500)));
    let broken = client.write_all(b"x").is_err() || client.read(&mut [0u8; 1]).is_err();
    cut && broken
}

#[test]
fn connections_to_each_server_cut_again_and_again_lose_no_acknowledged_write() {
    if !can_cut_connections() {
        eprintln!(
            "NOT RUN: `ss -K` cannot abort connections here (needs root or CAP_NET_ADMIN and a \
             kernel with INET_DIAG_DESTROY)"
        );
        return;
    }
    // A fault window of 4 s (-Ys 0.5 -Yn 8): cut connections must not make a server look down,
    // and a loaded 2-core machine can starve a keepalive for well over the usual 1.5 s.
    let cluster = RealCluster::start_with(3, ARGS, &["-Yn", "8"]);
    let writer = Writer::start(cluster.gateway(), "cut");
    writer.wait_more(100, WAIT);
    let mut cut = 0;
    for round in 0..6 {
        let victim: SocketAddr = cluster.servers[round % 3].addr;
        cut += cut_connections_to(victim.port());
        // The writer goes on: the gateway and the peers reconnected.
        let before = writer.acked();
        writer.wait_more(50, WAIT);
        assert!(
            writer.acked() >= before + 50,
            "round {round}: the writer made no progress after the cut of {victim}\n{}",
            cluster.logs()
        );
    }
    // The gateway and two peers hold connections to every server: the cuts hit something.
    assert!(cut >= 6, "only {cut} connections were cut");
    let report = writer.finish();
    assert!(
        report.errors.is_empty() && report.lost.is_empty(),
        "{} client errors, {} lost: {:?} {:?}\n{}",
        report.errors.len(),
        report.lost.len(),
        &report.errors[..report.errors.len().min(5)],
        &report.lost[..report.lost.len().min(5)],
        cluster.logs()
    );
    let bad = read_all(cluster.gateway(), &report.acked, Writer::value);
    assert!(
        bad.is_empty(),
        "{} of {} acknowledged keys unreadable: {:?}",
        bad.len(),
        report.acked.len(),
        &bad[..bad.len().min(5)]
    );
    let status = support::kumoctl(cluster.manager(), &["status"]);
    assert!(
        !status.contains("fault"),
        "a server was judged down because its connections were cut:\n{status}\n{}",
        cluster.logs()
    );
    cluster.check_copies(&report.acked, Writer::value);
}
