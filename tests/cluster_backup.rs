//! Backup -> merge -> restore with real kumo-server processes and a scripted manager: a backup
//! order makes every active server write a copy of its store while it serves and report it;
//! `kumomergedb` merges backups newest-version-wins (deletes included); a server started on the
//! merged store serves every key at its newest version and no deleted key.

mod cluster_support;
mod server_support;
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cluster_support::{logs_of, wait_adopted, wait_or, FakeManager, ServerProc};
use kumofs::ring::{key_hash, NodeState};
use kumofs::rpc::messages::{BackupOrder, BackupState, DataResponse, RoutingSnapshot, WriteOp};
use server_support::{value_of, DataClient};
use support::run_tool;

fn write(snapshot: &RoutingSnapshot, key: &str, op: WriteOp, value: &str) -> DataResponse {
    let coordinator = snapshot
        .write
        .coordinator(key_hash(key.as_bytes()))
        .expect("owner");
    DataClient::connect(coordinator).write(key, op, value, 0, 0)
}

/// Orders backup `id` and waits until every server reported it; returns their paths.
fn backup(fake: &FakeManager, servers: &[ServerProc], id: u64, suffix: &str) -> Vec<PathBuf> {
    fake.publish(|s| {
        s.backup = Some(BackupOrder {
            id,
            suffix: suffix.into(),
        })
    });
    let logs = || logs_of(&servers.iter().collect::<Vec<_>>());
    wait_or(
        "every server's BackupDone",
        Duration::from_secs(60),
        logs,
        || {
            let state = fake.state.lock().expect("lock");
            servers.iter().all(|s| {
                state
                    .backup_done
                    .iter()
                    .any(|(a, i, _)| *a == s.addr && *i == id)
            })
        },
    );
    let state = fake.state.lock().expect("lock");
    servers
        .iter()
        .map(|s| {
            let (_, _, result) = state
                .backup_done
                .iter()
                .find(|(a, i, _)| *a == s.addr && *i == id)
                .expect("reported");
            match result {
                BackupState::Done { path, records } => {
                    assert!(*records > 0, "{} backed up nothing", s.name);
                    PathBuf::from(path)
                }
                other => panic!("{} failed its backup: {other:?}", s.name),
            }
        })
        .collect()
}

fn merge(dst: &Path, sources: &[&Path]) -> String {
    let mut args = vec![dst.display().to_string()];
    args.extend(sources.iter().map(|s| s.display().to_string()));
    let out = run_tool("kumomergedb", &args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "kumomergedb failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn backup_merge_and_restore_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = FakeManager::start();
    let servers: Vec<ServerProc> = ["a", "b", "c"]
        .iter()
        .map(|n| ServerProc::start(n, dir.path(), fake.addr, &["--cpus", "0-1"]))
        .collect();
    for s in &servers {
        fake.wait_registered(s.addr);
    }
    let nodes: Vec<(SocketAddr, NodeState)> = servers
        .iter()
        .map(|s| (s.addr, NodeState::Active))
        .collect();
    let snapshot = fake.settle(&nodes);
    for s in &servers {
        wait_adopted(s.addr, snapshot.epoch, String::new);
    }
    for i in 0..200 {
        let key = format!("b{i}");
        assert!(matches!(
            write(&snapshot, &key, WriteOp::Set, "old"),
            DataResponse::Stored { .. }
        ));
    }
    let first = backup(&fake, &servers, 1, "first");
    for (path, s) in first.iter().zip(&servers) {
        assert_eq!(path, &dir.path().join(format!("{}-store-first", s.name)));
        assert!(path.join("kumo-server.meta").is_file());
    }
    // Then b0..b49 change and b50..b99 are deleted, and a second backup is taken.
    for i in 0..50 {
        assert!(matches!(
            write(&snapshot, &format!("b{i}"), WriteOp::Set, "new"),
            DataResponse::Stored { .. }
        ));
    }
    for i in 50..100 {
        assert_eq!(
            write(&snapshot, &format!("b{i}"), WriteOp::Delete, ""),
            DataResponse::Deleted
        );
    }
    let second = backup(&fake, &servers, 2, "second");

    // Old backup of a, newest backup of b: the newest version of each key wins, deletes too.
    let merged = dir.path().join("merged");
    let out = merge(&merged, &[&first[0], &second[1]]);
    assert!(out.starts_with("merged "), "{out}");
    // One source is enough.
    let single = dir.path().join("single");
    assert!(merge(&single, &[&first[2]]).contains("of 200 records"));

    // A server started on the merged store serves it.
    let restored = FakeManager::start();
    let mut server = ServerProc::start("restored", dir.path(), restored.addr, &["--cpus", "0-1"]);
    server.kill();
    std::fs::remove_dir_all(&server.store).ok();
    std::fs::rename(&merged, &server.store).expect("move the merged store in place");
    server.restart();
    restored.wait_registered(server.addr);
    let snapshot = restored.settle(&[(server.addr, NodeState::Active)]);
    wait_adopted(server.addr, snapshot.epoch, || server.logs());
    let mut client = DataClient::connect(server.addr);
    for i in 0..200 {
        let key = format!("b{i}");
        let expected = match i {
            0..=49 => Some("new"),
            50..=99 => None,
            _ => Some("old"),
        };
        assert_eq!(
            value_of(&client.get(&key)).map(|v| v.0),
            expected.map(String::from),
            "{key} after restore\n{}",
            server.logs()
        );
    }
    // A backup is not redone after a restart (the order is still in the snapshot).
    let mut a = servers.into_iter().next().expect("a");
    a.restart();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!a
        .logs()
        .split("(start 2)")
        .nth(1)
        .unwrap_or("")
        .contains("backup 2: starting"));
}

#[test]
fn kumomergedb_rejects_bad_arguments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run_tool("kumomergedb", &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage"));
    let missing = dir.path().join("missing");
    let out = run_tool(
        "kumomergedb",
        &[
            dir.path().join("dst").display().to_string(),
            missing.display().to_string(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a kumo-server store"));
    let out = run_tool(
        "kumomergedb",
        &["--shards".into(), "0".into(), "a".into(), "b".into()],
    );
    assert_eq!(out.status.code(), Some(1));
}

/// `kumoctl backup` with the real manager: every server writes `<store>-<suffix>` and kumoctl
/// prints each one's result. Waits on the manager side (backup orders): skipped, with a message,
/// against a manager that answers that backups are not implemented.
#[test]
fn kumoctl_backup_makes_every_server_write_its_copy() {
    let cluster = cluster_support::RealCluster::start(3, &["--cpus", "0-1"]);
    let mut client = cluster_support::TextClient::connect(cluster.gateway());
    for i in 0..30 {
        assert_eq!(client.set(&format!("bk-{i}"), "v").expect("set"), "STORED");
    }
    let out = support::kumoctl(cluster.manager(), &["backup", "nightly"]);
    if out.contains("not implemented") {
        eprintln!("skipped: waits on the manager side (backup orders): {out}");
        return;
    }
    for s in &cluster.servers {
        let dir = s.store.with_file_name(format!("{}-store-nightly", s.name));
        assert!(
            dir.join("kumo-server.meta").is_file(),
            "no backup at {}\n{out}",
            dir.display()
        );
        assert!(out.contains(&s.addr.to_string()), "{out}");
    }
    let merged = cluster.dir.path().join("merged");
    let sources: Vec<PathBuf> = cluster
        .servers
        .iter()
        .map(|s| s.store.with_file_name(format!("{}-store-nightly", s.name)))
        .collect();
    let refs: Vec<&Path> = sources.iter().map(PathBuf::as_path).collect();
    let out = merge(&merged, &refs);
    assert!(out.contains("of 90 records"), "{out}");
}
