//! What `kumostat` and `kumotop` ask servers and managers, and how they print it.
//!
//! Both read a server's `Stats` answer (the data-path request gateways use for `stats`): a list of
//! key/value strings summed over the server's shards, including the cluster keys (`clock`,
//! `whs_version`, `whs_nodes`, `rhs_*`, `hscheck`, `replstat`, ...; see kumo-server's
//! `server::maintenance::stats`). With `-m MANAGER` the servers are the manager's active ones.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use kumofs::ring::NodeState;
use kumofs::rpc::blocking;
use kumofs::rpc::messages::{DataRequest, DataResponse, ManagerRequest, ManagerResponse};
use serde_json::{json, Value};

/// Limit of one call to a server or manager.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A server's `Stats` answer.
pub type Stats = BTreeMap<String, String>;

/// Asks `server` for its stats.
pub fn server_stats(server: SocketAddr) -> Result<Stats, String> {
    match blocking::call(server, &DataRequest::Stats, CALL_TIMEOUT) {
        Ok(DataResponse::Stats(pairs)) => Ok(pairs.into_iter().collect()),
        Ok(other) => Err(format!("{server} answered {other:?}")),
        Err(e) => Err(format!("{server}: {e}")),
    }
}

/// The active servers of the manager's write table.
pub fn active_servers(manager: SocketAddr) -> Result<Vec<SocketAddr>, String> {
    match blocking::call(manager, &ManagerRequest::Status, CALL_TIMEOUT) {
        Ok(ManagerResponse::Status(report)) => Ok(report
            .write
            .nodes
            .iter()
            .filter(|(_, state)| *state == NodeState::Active)
            .map(|(addr, _)| *addr)
            .collect()),
        Ok(ManagerResponse::Error(e)) => Err(format!("manager {manager}: {e}")),
        Ok(other) => Err(format!("manager {manager} answered {other:?}")),
        Err(e) => Err(format!("manager {manager}: {e}")),
    }
}

/// The kumostat commands, each reading one or more stats keys.
pub const COMMANDS: &[&str] = &[
    "pid",
    "uptime",
    "time",
    "version",
    "cmd_get",
    "cmd_set",
    "cmd_delete",
    "items",
    "rhs",
    "whs",
    "hscheck",
    "replstat",
    "stats",
];

/// The text kumostat prints for `command` (without the `host:port: ` prefix of `-m`).
pub fn command_text(command: &str, stats: &Stats) -> Result<String, String> {
    let get = |key: &str| {
        stats
            .get(key)
            .cloned()
            .ok_or_else(|| format!("the server does not report {key:?}"))
    };
    match command {
        "stats" => {
            let mut out = String::new();
            for (key, value) in stats {
                out.push_str(&format!("STAT {key} {value}\n"));
            }
            out.push_str("END");
            Ok(out)
        }
        "whs" | "rhs" => {
            let version: u64 = get(&format!("{command}_version"))?.parse().unwrap_or(0);
            let nodes = get(&format!("{command}_nodes"))?;
            let (ms, clock) = crate::format::split_version(version);
            let mut out = format!("{} clock {clock}", crate::format::ruby_time(ms / 1000));
            for (addr, state) in parse_nodes(&nodes) {
                out.push_str(&format!("\n  {addr}  ({state})"));
            }
            Ok(out)
        }
        "items" => get("items"),
        name if COMMANDS.contains(&name) => get(name),
        other => Err(format!("unknown command {other:?}")),
    }
}

/// `addr=state,addr=state` as the server reports a table's nodes.
pub fn parse_nodes(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter(|part| !part.is_empty())
        .map(|part| match part.rsplit_once('=') {
            Some((addr, state)) => (addr.to_string(), state.to_string()),
            None => (part.to_string(), "?".to_string()),
        })
        .collect()
}

/// A stats value as JSON: numbers and booleans typed, the rest strings.
fn typed(value: &str) -> Value {
    if let Ok(n) = value.parse::<u64>() {
        return json!(n);
    }
    match value {
        "true" => json!(true),
        "false" => json!(false),
        _ => json!(value),
    }
}

/// The JSON kumostat prints for `command` of one server.
pub fn command_json(command: &str, stats: &Stats) -> Result<Value, String> {
    match command {
        "stats" => Ok(Value::Object(
            stats.iter().map(|(k, v)| (k.clone(), typed(v))).collect(),
        )),
        "whs" | "rhs" => {
            let version = stats
                .get(&format!("{command}_version"))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| format!("the server does not report {command}"))?;
            let nodes = stats
                .get(&format!("{command}_nodes"))
                .map(|n| parse_nodes(n))
                .unwrap_or_default();
            Ok(json!({
                "version": version,
                "nodes": nodes
                    .iter()
                    .map(|(addr, state)| json!({"addr": addr, "state": state}))
                    .collect::<Vec<_>>(),
            }))
        }
        _ => command_text(command, stats).map(|text| typed(&text)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> Stats {
        [
            ("pid", "42"),
            ("items", "7"),
            ("hscheck", "true"),
            ("replstat", "ready"),
            (
                "whs_version",
                &((1_228_310_155_000u64 << 16) | 3).to_string(),
            ),
            ("whs_nodes", "127.0.0.1:1=active,127.0.0.1:2=fault"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn commands_print_their_key() {
        let s = stats();
        assert_eq!(command_text("pid", &s).unwrap(), "42");
        assert_eq!(command_text("replstat", &s).unwrap(), "ready");
        assert!(command_text("uptime", &s).is_err());
        assert!(command_text("bogus", &s).is_err());
        assert_eq!(
            command_text("whs", &s).unwrap(),
            "Wed Dec 03 13:15:55 +0000 2008 clock 3\n  127.0.0.1:1  (active)\n  127.0.0.1:2  (fault)"
        );
        let text = command_text("stats", &s).unwrap();
        assert!(text.starts_with("STAT hscheck true\n") && text.ends_with("END"));
    }

    #[test]
    fn json_is_typed() {
        let s = stats();
        assert_eq!(command_json("pid", &s).unwrap(), json!(42));
        assert_eq!(command_json("hscheck", &s).unwrap(), json!(true));
        assert_eq!(command_json("replstat", &s).unwrap(), json!("ready"));
        let whs = command_json("whs", &s).unwrap();
        assert_eq!(whs["nodes"][1]["state"], json!("fault"));
        assert_eq!(command_json("stats", &s).unwrap()["items"], json!(7));
    }
}
