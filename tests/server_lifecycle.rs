//! kumo-server process lifecycle: data survives SIGTERM and a restart on the same store, and bad
//! stores are refused with a clear error instead of a panic.

mod server_support;
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use server_support::{value_of, wait_or_dump, DataClient};
use support::{bin, free_port, kumoctl, wait_for_port, Cluster, Daemon};

fn server_args(addr: SocketAddr, manager: SocketAddr, store: &Path, cpus: &str) -> Vec<String> {
    vec![
        "-v".into(),
        "-l".into(),
        addr.to_string(),
        "-L".into(),
        free_port().to_string(),
        "-m".into(),
        manager.to_string(),
        "-s".into(),
        store.display().to_string(),
        "--cpus".into(),
        cpus.into(),
    ]
}

/// Waits for a daemon that should exit by itself; returns its exit code and log.
fn exit_of(mut daemon: Daemon) -> (Option<i32>, String) {
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = daemon.child.try_wait() {
            return (status.code(), daemon.log_text());
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{} did not exit",
            daemon.name
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn data_survives_sigterm_and_restart() {
    let mut cluster = Cluster::start_manager();
    cluster.server_args = vec!["--cpus".into(), "0-1".into()];
    let addr = cluster.add_server();
    cluster.attach();
    let mut client = DataClient::connect(addr);
    wait_or_dump(
        "the server to accept writes",
        || cluster.logs(),
        || {
            matches!(
                client.set("warmup", "x"),
                kumofs::rpc::messages::DataResponse::Stored { .. }
            )
        },
    );
    for i in 0..200 {
        client.set(&format!("k{i}"), &format!("v{i}"));
    }
    client.write("k0", kumofs::rpc::messages::WriteOp::Delete, "", 0, 0);
    drop(client);
    let code = cluster.servers[0].terminate(Duration::from_secs(20));
    assert_eq!(code, Some(0), "clean exit on SIGTERM:\n{}", cluster.logs());

    let store = cluster.dir.path().join("server1");
    let args = server_args(addr, cluster.manager_addr, &store, "0-1");
    let restarted = Daemon::spawn(
        "server1-again",
        &bin("kumo-server"),
        &args,
        cluster.dir.path(),
    );
    wait_for_port(addr);
    // The manager may have judged it down meanwhile: attach again (a no-op when it is active).
    kumoctl(cluster.manager_addr, &["attach"]);
    let mut client = DataClient::connect(addr);
    wait_or_dump(
        "the restarted server to serve reads",
        || {
            format!(
                "{}\n--- restarted\n{}",
                cluster.logs(),
                restarted.log_text()
            )
        },
        || value_of(&client.get("k1")).is_some(),
    );
    for i in 1..200 {
        assert_eq!(
            value_of(&client.get(&format!("k{i}"))).map(|v| v.0),
            Some(format!("v{i}"))
        );
    }
    assert_eq!(
        client.get("k0"),
        kumofs::rpc::messages::DataResponse::NotFound,
        "delete survives"
    );
    assert_eq!(
        client.stats()["curr_items"],
        "200",
        "{}",
        restarted.log_text()
    );
}

#[test]
fn bad_store_path_and_shard_mismatch_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manager = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"not a store").expect("write");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let daemon = Daemon::spawn(
        "bad-path",
        &bin("kumo-server"),
        &server_args(addr, manager, &file, "0"),
        dir.path(),
    );
    let (code, log) = exit_of(daemon);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("not a directory"), "{log}");
    assert!(!log.contains("panicked"), "{log}");

    // A store created with two shards, started again with one.
    let store = dir.path().join("store");
    let first = Daemon::spawn(
        "two-shards",
        &bin("kumo-server"),
        &server_args(addr, manager, &store, "0-1"),
        dir.path(),
    );
    wait_for_port(addr);
    drop(first);
    let addr2 = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let daemon = Daemon::spawn(
        "one-shard",
        &bin("kumo-server"),
        &server_args(addr2, manager, &store, "0"),
        dir.path(),
    );
    let (code, log) = exit_of(daemon);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("created with 2 shards") && log.contains("--cpus"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");

    // Missing required options print the usage and fail.
    let out = support::run_tool("kumo-server", &["-l".into(), addr.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("required but not set: -m"));
}
