//! kumohash: where does a key live?
//!
//! `kumohash -m MANAGER[:19700] COMMAND ...` uses the manager's write table (where writes go);
//! `kumohash SERVER[:19800] ... -- COMMAND ...` builds a ring from the listed servers (all active).
//! A listed server without a port is on 19800, the server port (kumofs's tool used 19700 there).
//! Commands: `hash KEY...` (the 64-bit key hash), `assign KEY...` (the key's three servers, the
//! first is the coordinator; fault servers are shown and marked), `dump` (every virtual node).

use std::net::SocketAddr;
use std::process::exit;
use std::time::Duration;

use kumofs::cli;
use kumofs::ring::{key_hash, NodeState, RoutingTable};
use kumofs::rpc::blocking;
use kumofs::rpc::messages::{ManagerRequest, ManagerResponse};
use serde_json::json;

const USAGE: &str = "usage: kumohash -m <manager[:19700]> <command> [args] [--json]
       kumohash <server[:19800]>... -- <command> [args] [--json]

commands:
  hash KEY...      print the 64-bit hash of each key
  assign KEY...    print the servers that store each key (0: coordinator, 1: and 2: replicas)
  dump             print every virtual node of the ring, in ring order
";

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let before = args.len();
    args.retain(|a| a != "--json");
    let json = args.len() != before;
    if args.is_empty() || args.iter().any(|a| a == "-h" || a == "--help") {
        eprint!("{USAGE}");
        exit(if args.is_empty() { 1 } else { 0 });
    }
    let (table, rest) = if args[0] == "-m" {
        let Some(manager) = args.get(1) else {
            die("-m needs a manager address")
        };
        let manager = cli::parse_peer_addr(manager, 19700).unwrap_or_else(|e| die(&e.0));
        (Some(manager_table(manager)), args[2..].to_vec())
    } else if let Some(split) = args.iter().position(|a| a == "--") {
        let servers: Vec<(SocketAddr, NodeState)> = args[..split]
            .iter()
            .map(|s| {
                (
                    cli::parse_peer_addr(s, 19800).unwrap_or_else(|e| die(&e.0)),
                    NodeState::Active,
                )
            })
            .collect();
        let table = RoutingTable::new(0, servers).unwrap_or_else(|e| die(&e.to_string()));
        (Some(table), args[split + 1..].to_vec())
    } else {
        (None, args.clone())
    };
    let Some(command) = rest.first() else {
        die("no command given")
    };
    let keys = &rest[1..];
    if matches!(command.as_str(), "hash" | "assign") && keys.is_empty() {
        die(&format!("no keys given to {command}"));
    }
    match (command.as_str(), table) {
        ("hash", _) => {
            for key in keys {
                let hash = key_hash(key.as_bytes());
                if json {
                    println!("{}", json!({"key": key, "hash": format!("{hash:016x}")}));
                } else {
                    println!("{hash:016x}  {key}");
                }
            }
        }
        ("assign", Some(table)) => {
            for key in keys {
                let hash = key_hash(key.as_bytes());
                let servers: Vec<(SocketAddr, &str)> = table
                    .ring()
                    .assigned(hash)
                    .iter()
                    .map(|addr| {
                        let state = match table.state_of(addr) {
                            Some(NodeState::Fault) => "fault",
                            _ => "active",
                        };
                        (*addr, state)
                    })
                    .collect();
                if json {
                    let list: Vec<_> = servers
                        .iter()
                        .map(|(a, s)| json!({"server": a.to_string(), "state": s}))
                        .collect();
                    println!(
                        "{}",
                        json!({"key": key, "hash": format!("{hash:016x}"), "servers": list})
                    );
                } else {
                    println!("{hash:016x}  {key}");
                    for (i, (addr, state)) in servers.iter().enumerate() {
                        let mark = if *state == "fault" { "  (fault)" } else { "" };
                        println!("  {i}: {addr}{mark}");
                    }
                }
            }
        }
        ("dump", Some(table)) => {
            let ring = table.ring();
            let nodes = ring.nodes();
            for (position, index) in ring.vnodes() {
                let addr = nodes
                    .get(index)
                    .map(|(a, _)| a.to_string())
                    .unwrap_or_default();
                if json {
                    println!(
                        "{}",
                        json!({"position": format!("{position:016x}"), "server": addr})
                    );
                } else {
                    println!("{position:016x}  {addr}");
                }
            }
        }
        ("assign" | "dump", None) => die("assign and dump need -m MANAGER or a server list"),
        (other, _) => die(&format!("unknown command {other}")),
    }
}

/// The write table (where new writes go) from the manager.
fn manager_table(manager: SocketAddr) -> RoutingTable {
    let request = ManagerRequest::GetRouting { known_version: 0 };
    match blocking::call(manager, &request, Duration::from_secs(10)) {
        Ok(ManagerResponse::Routing(snapshot)) => snapshot.write,
        Ok(ManagerResponse::UpToDate) => RoutingTable::empty(),
        Ok(other) => die(&format!("unexpected answer from {manager}: {other:?}")),
        Err(e) => die(&format!("manager {manager}: {e}")),
    }
}

fn die(message: &str) -> ! {
    eprintln!("kumohash: {message}");
    exit(1);
}
