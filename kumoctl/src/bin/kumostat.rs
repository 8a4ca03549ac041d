//! kumostat: one statistic of one server, or of every active server of a cluster.
//!
//! `kumostat SERVER[:19800] COMMAND [--json]` or `kumostat -m MANAGER[:19700] COMMAND [--json]`.
//! With `-m`, the command runs against every active server and each line is prefixed with
//! `host:port: ` (as kumofs's kumostat did); with `--json` the result is one JSON value, or one
//! object keyed by server address with `-m`. The exit status is 1 if any server failed.

use std::net::SocketAddr;
use std::process::exit;

use kumoctl::stat::{self, COMMANDS};
use kumofs::cli;
use serde_json::Value;

const USAGE: &str = "usage: kumostat <server[:19800]> <command> [--json]
       kumostat -m <manager[:19700]> <command> [--json]

commands:
  pid uptime time version       process id, seconds up, server unix time, server version
  cmd_get cmd_set cmd_delete    requests served (sets and deletes this server coordinated)
  items                         records held (replicas included, tombstones not)
  whs rhs                       the write / read routing table this server uses
  hscheck                       true when both tables are equal (no rebalance pending)
  replstat                      inactive, Copying, WAIT, Deleting or ready
  stats                         everything, memcached style (STAT key value ... END)
";

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let before = args.len();
    args.retain(|a| a != "--json");
    let json = args.len() != before;
    if args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{USAGE}");
        exit(0);
    }
    let (servers, command) = match args.as_slice() {
        [m, manager, command] if m == "-m" => {
            let manager = cli::parse_peer_addr(manager, 19700).unwrap_or_else(|e| die(&e.0));
            let servers = stat::active_servers(manager).unwrap_or_else(|e| die(&e));
            (Some(servers), command.clone())
        }
        [server, command] => {
            let server = cli::parse_peer_addr(server, 19800).unwrap_or_else(|e| die(&e.0));
            return single(server, command, json);
        }
        _ => {
            eprint!("{USAGE}");
            exit(2);
        }
    };
    check_command(&command);
    let servers = servers.unwrap_or_default();
    let mut failed = false;
    let mut by_server = serde_json::Map::new();
    for server in servers {
        let result = stat::server_stats(server).and_then(|stats| {
            if json {
                stat::command_json(&command, &stats).map(|v| (String::new(), v))
            } else {
                stat::command_text(&command, &stats).map(|t| (t, Value::Null))
            }
        });
        match result {
            Ok((text, value)) => {
                if json {
                    by_server.insert(server.to_string(), value);
                } else {
                    for line in text.lines() {
                        println!("{server}: {line}");
                    }
                }
            }
            Err(e) => {
                failed = true;
                if json {
                    by_server.insert(server.to_string(), serde_json::json!({ "error": e }));
                } else {
                    eprintln!("{server}: error: {e}");
                }
            }
        }
    }
    if json {
        println!("{}", Value::Object(by_server));
    }
    exit(i32::from(failed));
}

fn single(server: SocketAddr, command: &str, json: bool) {
    check_command(command);
    let stats = stat::server_stats(server).unwrap_or_else(|e| die(&e));
    let printed = if json {
        stat::command_json(command, &stats).map(|v| v.to_string())
    } else {
        stat::command_text(command, &stats)
    };
    match printed {
        Ok(text) => println!("{text}"),
        Err(e) => die(&e),
    }
}

fn check_command(command: &str) {
    if !COMMANDS.contains(&command) {
        eprint!("{USAGE}");
        die(&format!("unknown command {command:?}"));
    }
}

fn die(message: &str) -> ! {
    eprintln!("kumostat: {message}");
    exit(1);
}
