//! kumohash: `hash`, `assign` and `dump` against a manager (`-m`) or a server list, in text and
//! JSON, with the default server port 19800 (kumofs's tool used 19700 there by mistake).

mod cluster_manager_support;
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use cluster_manager_support::{manager_addr, start_manager, status, Behaviour, FakeServer};
use kumofs::ring::{key_hash, VNODES_PER_SERVER};
use support::{run_tool, wait_until};

fn kumohash(args: &[&str]) -> (i32, String, String) {
    let out = run_tool(
        "kumohash",
        &args.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(args: &[&str]) -> String {
    let (code, out, err) = kumohash(args);
    assert_eq!(code, 0, "kumohash {args:?}: {out}{err}");
    out
}

#[test]
fn hash_assign_and_dump_from_a_manager_or_a_server_list() {
    let dir = tempfile::tempdir().unwrap();
    let mgr = manager_addr();
    let _manager = start_manager(dir.path(), "manager", mgr, None, dir.path(), &[]);
    let servers: Vec<FakeServer> = (0..3)
        .map(|_| FakeServer::start(vec![mgr], Behaviour::default()))
        .collect();
    wait_until("servers heard", Duration::from_secs(20), || {
        status(mgr).is_some_and(|r| r.not_attached.len() == 3)
    });
    let out = run_tool("kumoctl", &[mgr.to_string(), "attach".into()]);
    assert!(out.status.success());
    wait_until("attached", Duration::from_secs(20), || {
        status(mgr).is_some_and(|r| r.write.nodes.len() == 3)
    });
    let m = mgr.to_string();
    let list: Vec<String> = servers.iter().map(|s| s.addr.to_string()).collect();

    // hash: `%016x  key`, no table needed.
    assert_eq!(
        ok(&["hash", "alpha", "beta"]),
        format!(
            "{:016x}  alpha\n{:016x}  beta\n",
            key_hash(b"alpha"),
            key_hash(b"beta")
        )
    );

    // assign: the same answer from the manager's table and from the server list.
    let from_manager = ok(&["-m", &m, "assign", "alpha", "beta"]);
    let mut args: Vec<&str> = list.iter().map(String::as_str).collect();
    args.extend(["--", "assign", "alpha", "beta"]);
    assert_eq!(ok(&args), from_manager);
    let lines: Vec<&str> = from_manager.lines().collect();
    assert_eq!(lines.len(), 8, "{from_manager}");
    assert_eq!(lines[0], format!("{:016x}  alpha", key_hash(b"alpha")));
    for (i, line) in lines[1..4].iter().enumerate() {
        assert!(
            line.starts_with(&format!("  {i}: 127.0.0.1:")),
            "{from_manager}"
        );
    }

    // dump: every virtual node, in ring order.
    let dump = ok(&["-m", &m, "dump"]);
    let positions: Vec<u64> = dump
        .lines()
        .map(|l| u64::from_str_radix(&l[..16], 16).expect("hex position"))
        .collect();
    assert_eq!(positions.len(), 3 * VNODES_PER_SERVER as usize);
    assert!(positions.windows(2).all(|w| w[0] <= w[1]));

    // --json: one object per line.
    for line in ok(&["-m", &m, "assign", "alpha", "--json"]).lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
        assert_eq!(v["key"], "alpha");
        assert_eq!(v["servers"].as_array().map(Vec::len), Some(3));
    }
    drop(servers);
}

#[test]
fn a_server_without_a_port_means_19800() {
    let out = ok(&["127.0.0.1", "--", "assign", "k"]);
    let expected: SocketAddr = "127.0.0.1:19800".parse().unwrap();
    assert!(out.contains(&format!("  0: {expected}")), "{out}");
}

#[test]
fn errors_are_clear() {
    let (code, _, err) = kumohash(&["assign", "k"]);
    assert_eq!(code, 1);
    assert!(err.contains("need -m MANAGER or a server list"), "{err}");
    let (code, _, err) = kumohash(&["127.0.0.1", "--", "frob"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown command frob"), "{err}");
    let (code, _, err) = kumohash(&["-m"]);
    assert_eq!(code, 1);
    assert!(err.contains("-m needs a manager address"), "{err}");
    let (code, _, err) = kumohash(&["hash"]);
    assert_eq!(code, 1);
    assert!(err.contains("no keys given"), "{err}");
}
