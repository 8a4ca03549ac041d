//! kumostat and kumotop against a real manager and three real servers.

mod cluster_support;
mod server_support;
mod support;

use std::net::SocketAddr;

use cluster_support::{RealCluster, TextClient};
use support::run_tool;

fn tool(name: &str, args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let out = run_tool(name, &args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn kumostat(server: SocketAddr, command: &str) -> String {
    let (code, out, err) = tool("kumostat", &[&server.to_string(), command]);
    assert_eq!(code, 0, "kumostat {server} {command}: {err}");
    out.trim_end().to_string()
}

#[test]
fn kumostat_and_kumotop_report_every_server() {
    let cluster = RealCluster::start(3, &["--cpus", "0-1"]);
    let mut client = TextClient::connect(cluster.gateway());
    for i in 0..20 {
        assert_eq!(
            client.set(&format!("stat-{i}"), "v").expect("set"),
            "STORED"
        );
    }
    let first = &cluster.servers[0];
    let pid = first.daemon.as_ref().expect("running").child.id();
    assert_eq!(kumostat(first.addr, "pid"), pid.to_string());
    assert_eq!(kumostat(first.addr, "items"), "20");
    assert_eq!(kumostat(first.addr, "hscheck"), "true");
    // The server adopts the manager's last snapshot of the rebalance within a keepalive.
    for s in &cluster.servers {
        cluster_support::wait("replstat ready", || kumostat(s.addr, "replstat") == "ready");
    }
    assert!(kumostat(first.addr, "version").starts_with("0."));
    let now = kumofs::cluster::clock::wall_ms() / 1000;
    let time: u64 = kumostat(first.addr, "time").parse().expect("time");
    assert!(time.abs_diff(now) < 60);
    let _: u64 = kumostat(first.addr, "uptime").parse().expect("uptime");
    let sets: u64 = (0..3)
        .map(|i| {
            kumostat(cluster.servers[i].addr, "cmd_set")
                .parse::<u64>()
                .expect("cmd_set")
        })
        .sum();
    assert_eq!(sets, 20, "each set is counted once, by its coordinator");
    let whs = kumostat(first.addr, "whs");
    for s in &cluster.servers {
        assert!(whs.contains(&format!("  {}  (active)", s.addr)), "{whs}");
    }
    assert!(kumostat(first.addr, "stats").ends_with("END"));

    // -m: every active server, each line prefixed.
    let manager = cluster.manager().to_string();
    let (code, out, err) = tool("kumostat", &["-m", &manager, "items"]);
    assert_eq!(code, 0, "{err}");
    for s in &cluster.servers {
        assert!(out.contains(&format!("{}: 20\n", s.addr)), "{out}");
    }
    let (code, out, _) = tool("kumostat", &["-m", &manager, "replstat", "--json"]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(json[cluster.servers[1].addr.to_string()], "ready");
    let (_, out, _) = tool("kumostat", &[&first.addr.to_string(), "whs", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(json["nodes"].as_array().map(Vec::len), Some(3));

    // Bad input: a clear error and a non-zero status.
    let (code, _, err) = tool("kumostat", &[&first.addr.to_string(), "bogus"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown command"), "{err}");
    let (code, _, err) = tool("kumostat", &["127.0.0.1:1", "pid"]);
    assert_eq!(code, 1);
    assert!(err.contains("127.0.0.1:1"), "{err}");

    // kumotop --once: one frame with a line per server and its request rates.
    let (code, out, err) = tool("kumotop", &["-m", &manager, "--once", "--interval", "0.3"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("kumotop") && lines[0].ends_with("3 servers"),
        "{out}"
    );
    assert!(lines[1].starts_with("address"), "{out}");
    for s in &cluster.servers {
        let line = lines
            .iter()
            .find(|l| l.starts_with(&s.addr.to_string()))
            .unwrap_or_else(|| panic!("no line for {} in\n{out}", s.addr));
        assert!(line.ends_with("ready"), "{line}");
        assert!(
            line.split_whitespace().nth(8) == Some("20"),
            "items column: {line}"
        );
    }
    let (code, out, _) = tool(
        "kumotop",
        &[
            &first.addr.to_string(),
            "127.0.0.1:1",
            "--once",
            "--interval",
            "0.1",
        ],
    );
    assert_eq!(code, 0);
    assert!(
        out.contains("127.0.0.1:1") && out.contains("unreachable"),
        "{out}"
    );
}
