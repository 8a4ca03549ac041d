//! kumo-server: stores data, coordinates and replicates writes of a kumofs cluster. With `-t`, `-b`
//! or `-c` it also serves the memcached protocols itself, like a kumo-gateway running on its cores
//! (`kumofs::server` module doc, "gateway").

// Every request allocates a few small buffers (keys, values, frames) and frees them on another
// task; mimalloc's per-thread free lists make that about half as costly as glibc's malloc, whose
// malloc/free/consolidate were 15% of a server's CPU in the cluster write benchmark.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Duration;

use kumofs::cli::{self, daemon, OptSpec, Parsed};
use kumofs::gateway::{GatewayConfig, PortKind};
use kumofs::runtime::{parse_cpu_list, Shutdown};
use kumofs::server::{self, ServerConfig, DEFAULT_PORT, DEFAULT_STREAM_PORT};
use kumofs::storage::Durability;

const MANAGER_PORT: u16 = 19700;

const SPECS: &[OptSpec] = &[
    OptSpec::value(
        "-l",
        "--listen",
        "addr[:19800]",
        "address to bind, as reachable by others (required)",
    ),
    OptSpec::value("-m", "--manager1", "addr[:19700]", "manager (required)"),
    OptSpec::value(
        "-p",
        "--manager2",
        "addr[:19700]",
        "the other manager of the pair",
    ),
    OptSpec::value(
        "-s",
        "--store",
        "dir",
        "store directory: one engine per shard (required, created if missing)",
    ),
    OptSpec::value(
        "-L",
        "--stream-listen",
        "port",
        "port for rebalance copies, on the -l address (default 19900)",
    ),
    OptSpec::value(
        "",
        "--cpus",
        "list",
        "CPUs to run one shard on each, e.g. 0,2-3 (default: all); fixed per store",
    ),
    OptSpec::flag(
        "",
        "--no-local-socket",
        "take connections from this host over TCP only, not over the Unix socket kumofs/ADDR",
    ),
    OptSpec::value(
        "",
        "--durability",
        "every|group[:MS]|none",
        "when writes are fsynced (default group:10)",
    ),
    OptSpec::value(
        "-gX",
        "--garbage-max-time",
        "sec",
        "minimum age before a tombstone is collected (default 3600)",
    ),
    OptSpec::value(
        "-gN",
        "--garbage-min-time",
        "sec",
        "accepted, ignored (kumofs GC tuning)",
    ),
    OptSpec::value(
        "-gS",
        "--garbage-mem-limit",
        "KB",
        "accepted, ignored (kumofs GC tuning)",
    ),
    OptSpec::value(
        "-S",
        "--replicate-set-retry",
        "n",
        "accepted, ignored (fixed retries)",
    ),
    OptSpec::value(
        "-D",
        "--replicate-delete-retry",
        "n",
        "accepted, ignored (fixed retries)",
    ),
    OptSpec::value(
        "-f",
        "--offer-tmp",
        "dir",
        "accepted, ignored (no temp files)",
    ),
    OptSpec::value("-M", "--replace-memory-limit", "MB", "accepted, ignored"),
    OptSpec::value("-Ci", "--clock-interval", "sec", "accepted, ignored"),
    OptSpec::value("-Ys", "--connect-timeout", "sec", "accepted, ignored"),
    OptSpec::value("-Yn", "--connect-retry-limit", "n", "accepted, ignored"),
    OptSpec::value(
        "-TR",
        "--read-threads",
        "n",
        "accepted, ignored (see --cpus)",
    ),
    OptSpec::value("-TW", "--write-threads", "n", "accepted, ignored"),
    OptSpec::value(
        "-t",
        "--memproto-text",
        "[addr:]port",
        "serve memcached text here too (no kumo-gateway needed)",
    ),
    OptSpec::value(
        "-b",
        "--memproto-binary",
        "[addr:]port",
        "serve memcached binary here too",
    ),
    OptSpec::value(
        "-c",
        "--cloudy",
        "[addr:]port",
        "serve asynchronous memcached binary here too",
    ),
    OptSpec::value(
        "",
        "--copy-rate",
        "MiB/s",
        "rebalance copy rate of this server (default 32, 0 = unlimited)",
    ),
    OptSpec::value(
        "",
        "--gc-interval",
        "sec",
        "how often tombstones and other garbage are collected (default 60)",
    ),
    daemon::COMMON_SPECS[0],
    daemon::COMMON_SPECS[1],
    daemon::COMMON_SPECS[2],
];

fn main() {
    let synopsis =
        "kumo-server -l <addr[:port]> -m <manager[:port]> [-p <manager2[:port]>] -s <dir> [-t [addr:]port] [-b [addr:]port] [-c [addr:]port] [options]";
    let parsed = cli::parse_args_or_exit(synopsis, SPECS);
    let config = match config_from(&parsed) {
        Ok(config) => config,
        Err(e) => cli::exit_with_usage(synopsis, SPECS, &e),
    };
    if let Err(e) = start(&parsed, config) {
        cli::exit_with_error(&e);
    }
}

fn config_from(parsed: &Parsed) -> Result<ServerConfig, String> {
    let listen = cli::parse_listen_addr(parsed.required(&SPECS[0]).map_err(|e| e.0)?, DEFAULT_PORT)
        .map_err(|e| e.0)?;
    let manager1 = cli::parse_peer_addr(parsed.required(&SPECS[1]).map_err(|e| e.0)?, MANAGER_PORT)
        .map_err(|e| e.0)?;
    let mut managers = vec![manager1];
    if let Some(text) = parsed.get("manager2") {
        let manager2 = cli::parse_peer_addr(text, MANAGER_PORT).map_err(|e| e.0)?;
        if manager2 == manager1 {
            return Err("-m and -p must be different".into());
        }
        managers.push(manager2);
    }
    let store = parsed.required(&SPECS[3]).map_err(|e| e.0)?.into();
    let stream_port: u16 = parsed
        .parse_or("stream-listen", DEFAULT_STREAM_PORT)
        .map_err(|e| e.0)?;
    let cpus = match parsed.get("cpus") {
        Some(list) => Some(parse_cpu_list(list).map_err(|e| e.to_string())?),
        None => None,
    };
    let durability = match parsed.get("durability") {
        Some(text) => parse_durability(text)?,
        None => Durability::default(),
    };
    let tombstone_min_age: u32 = parsed.parse_or("garbage-max-time", 3600).map_err(|e| e.0)?;
    let mut listen_memcached = Vec::new();
    for (long, kind) in [
        ("memproto-text", PortKind::Text),
        ("memproto-binary", PortKind::Binary),
        ("cloudy", PortKind::AsyncBinary),
    ] {
        if let Some(text) = parsed.get(long) {
            let addr = cli::parse_listen_addr(text, 0).map_err(|e| e.0)?;
            if addr.port() == 0 {
                return Err(format!("--{long} needs a port"));
            }
            listen_memcached.push((addr, kind));
        }
    }
    let gateway = (!listen_memcached.is_empty()).then(|| GatewayConfig {
        managers: managers.clone(),
        listen: listen_memcached,
        ..GatewayConfig::default()
    });
    let copy_rate_mib: f64 = parsed.parse_or("copy-rate", 32.0).map_err(|e| e.0)?;
    if !(0.0..=1e6).contains(&copy_rate_mib) {
        return Err(format!(
            "--copy-rate {copy_rate_mib} must be between 0 and 1000000 MiB/s"
        ));
    }
    let gc_secs: f64 = parsed.parse_or("gc-interval", 60.0).map_err(|e| e.0)?;
    if !(0.05..=86_400.0).contains(&gc_secs) {
        return Err(format!(
            "--gc-interval {gc_secs} must be between 0.05 and 86400 seconds"
        ));
    }
    Ok(ServerConfig {
        listen,
        managers,
        stream_port,
        store,
        cpus,
        durability,
        tombstone_min_age,
        gateway,
        copy_rate: (copy_rate_mib * 1024.0 * 1024.0) as u64,
        gc_interval: Duration::from_secs_f64(gc_secs),
        local_socket: !parsed.flag("no-local-socket"),
    })
}

/// `every`, `group`, `group:MS` or `none`.
fn parse_durability(text: &str) -> Result<Durability, String> {
    let bad = || format!("invalid --durability {text:?}: expected every, group[:MS] or none");
    match text {
        "every" => Ok(Durability::EveryWrite),
        "none" => Ok(Durability::None),
        "group" => Ok(Durability::default()),
        _ => {
            let ms: u64 = text
                .strip_prefix("group:")
                .and_then(|ms| ms.parse().ok())
                .filter(|&ms| ms > 0 && ms <= 60_000)
                .ok_or_else(bad)?;
            Ok(Durability::GroupCommit(Duration::from_millis(ms)))
        }
    }
}

fn start(parsed: &Parsed, config: ServerConfig) -> Result<(), String> {
    daemon::apply_common(parsed).map_err(|e| e.0)?;
    let shutdown = Shutdown::new();
    shutdown
        .install_signal_handler()
        .map_err(|e| e.to_string())?;
    server::run(config, shutdown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_values() {
        assert_eq!(parse_durability("every"), Ok(Durability::EveryWrite));
        assert_eq!(parse_durability("none"), Ok(Durability::None));
        assert_eq!(parse_durability("group"), Ok(Durability::default()));
        assert_eq!(
            parse_durability("group:25"),
            Ok(Durability::GroupCommit(Duration::from_millis(25)))
        );
        for bad in ["", "group:", "group:0", "group:x", "always", "group:999999"] {
            assert!(parse_durability(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn memcached_ports_make_a_gateway_config() {
        let config = |extra: &[&str]| {
            let mut args: Vec<String> = ["-l", "127.0.0.1", "-m", "127.0.0.1", "-s", "/tmp/x"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            args.extend(extra.iter().map(|s| s.to_string()));
            config_from(&cli::parse(SPECS, &args).unwrap())
        };
        assert!(config(&[]).unwrap().gateway.is_none());
        let gateway = config(&["-t", "11211", "-c", "127.0.0.1:11611"])
            .unwrap()
            .gateway
            .unwrap();
        assert_eq!(gateway.managers.len(), 1);
        let ports: Vec<(u16, PortKind)> = gateway
            .listen
            .iter()
            .map(|(addr, kind)| (addr.port(), *kind))
            .collect();
        assert_eq!(
            ports,
            vec![(11211, PortKind::Text), (11611, PortKind::AsyncBinary)]
        );
        assert!(config(&["-b", "127.0.0.1"])
            .unwrap_err()
            .contains("needs a port"));
        assert!(config(&["-t", "nonsense:port"]).is_err());
    }

    #[test]
    fn options_make_a_config() {
        let args: Vec<String> = [
            "-l",
            "127.0.0.1",
            "-m",
            "m1",
            "-p",
            "127.0.0.1:19701",
            "-s",
            "/tmp/x",
            "--cpus",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let parsed = cli::parse(SPECS, &args).unwrap();
        let config = config_from(&parsed);
        // A malformed manager address: a clear error, not a panic.
        assert!(config.is_err());
        let args: Vec<String> = [
            "-l",
            "127.0.0.1",
            "-m",
            "127.0.0.1",
            "-p",
            "127.0.0.1:19701",
            "-s",
            "/tmp/x",
            "-gX",
            "60",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let config = config_from(&cli::parse(SPECS, &args).unwrap()).unwrap();
        assert_eq!(config.listen.port(), DEFAULT_PORT);
        assert_eq!(config.managers.len(), 2);
        assert_eq!(config.stream_port, DEFAULT_STREAM_PORT);
        assert_eq!(config.tombstone_min_age, 60);
        let same: Vec<String> = [
            "-l",
            "127.0.0.1",
            "-m",
            "127.0.0.1",
            "-p",
            "127.0.0.1",
            "-s",
            "x",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let err = config_from(&cli::parse(SPECS, &same).unwrap()).unwrap_err();
        assert!(err.contains("must be different"), "{err}");
    }
}
