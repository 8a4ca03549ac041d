//! kumo-gateway: the memcached front end of a kumofs cluster.
//!
//! kumofs 0.4.13's options are all accepted. Differences, on purpose: flags and expiry always work,
//! so `-F` and `-E` are accepted and do nothing; `-As` is accepted and does nothing (it did nothing in
//! 0.4.13 either: `set ... noreply` is the asynchronous set); `-Ys -Yn -Ci -TR -TW` are accepted for
//! compatibility (timeouts here are per call, see `gateway::GatewayConfig`); `-lc` (the Tokyo Cabinet
//! local cache) is refused with an error because it is not supported.

// Every request allocates a few small buffers (keys, values, frames) and frees them on another
// task; mimalloc's per-thread free lists make that about half as costly as glibc's malloc, whose
// malloc/free/consolidate were 15% of a server's CPU in the cluster write benchmark.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use kumofs::cli::{self, daemon, OptSpec, Parsed};
use kumofs::gateway::{self, GatewayConfig, PortKind};
use kumofs::runtime::{parse_cpu_list, Shutdown};

const MANAGER_PORT: u16 = 19700;
const TEXT_PORT: u16 = 11411;
const BINARY_PORT: u16 = 11511;
const CLOUDY_PORT: u16 = 11611;

const SPECS: &[OptSpec] = &[
    OptSpec::value(
        "-m",
        "--manager1",
        "addr[:19700]",
        "manager address (required)",
    ),
    OptSpec::value(
        "-p",
        "--manager2",
        "addr[:19700]",
        "the other manager of the pair",
    ),
    OptSpec::value(
        "-t",
        "--memproto-text",
        "[addr:]port",
        "memcached text protocol (11411)",
    ),
    OptSpec::value(
        "-b",
        "--memproto-binary",
        "[addr:]port",
        "memcached binary protocol (11511)",
    ),
    OptSpec::value(
        "-c",
        "--cloudy",
        "[addr:]port",
        "asynchronous memcached binary protocol (11611)",
    ),
    OptSpec::value(
        "",
        "--cpus",
        "list",
        "CPUs to run a shard on each, e.g. 0-3,6 (default all)",
    ),
    OptSpec::value(
        "-I",
        "--item-size",
        "bytes[k|m]",
        "largest value (default 1m)",
    ),
    OptSpec::flag(
        "-F",
        "--memproto-save-flag",
        "accepted; flags are always stored",
    ),
    OptSpec::flag(
        "-E",
        "--memproto-save-expire",
        "accepted; expiry always works",
    ),
    OptSpec::value(
        "-G",
        "--get-retry",
        "n",
        "rounds over a key's copies before a get fails (5)",
    ),
    OptSpec::value(
        "-S",
        "--set-retry",
        "n",
        "tries of a store before it fails (20)",
    ),
    OptSpec::value(
        "-D",
        "--delete-retry",
        "n",
        "tries of a delete before it fails (20)",
    ),
    OptSpec::value(
        "-rn",
        "--renew-threshold",
        "n",
        "errors before the routing is re-fetched (4)",
    ),
    OptSpec::flag(
        "-As",
        "--async-replicate-set",
        "accepted; use `noreply` for async sets",
    ),
    OptSpec::flag(
        "-Ad",
        "--async-replicate-delete",
        "answer deletes before replicas ack",
    ),
    OptSpec::value(
        "-k",
        "--key-prefix",
        "string",
        "prefix stored with every key",
    ),
    OptSpec::value("-lc", "--local-cache", "name", "not supported (refused)"),
    OptSpec::value(
        "-Ys",
        "--connect-timeout",
        "sec",
        "accepted for compatibility",
    ),
    OptSpec::value(
        "-Yn",
        "--connect-retry-limit",
        "n",
        "accepted for compatibility",
    ),
    OptSpec::value(
        "-Ci",
        "--clock-interval",
        "sec",
        "accepted for compatibility",
    ),
    OptSpec::value(
        "-TR",
        "--read-threads",
        "n",
        "accepted; one shard per CPU instead",
    ),
    OptSpec::value(
        "-TW",
        "--write-threads",
        "n",
        "accepted; one shard per CPU instead",
    ),
    daemon::COMMON_SPECS[0],
    daemon::COMMON_SPECS[1],
    daemon::COMMON_SPECS[2],
];

fn main() {
    let synopsis =
        "kumo-gateway -m <addr[:port]> [-p <addr[:port]>] [-t port] [-b port] [-c port] [options]";
    let parsed = cli::parse_args_or_exit(synopsis, SPECS);
    let config = match config_from(&parsed) {
        Ok(config) => config,
        Err(e) => cli::exit_with_usage(synopsis, SPECS, &e),
    };
    if let Err(e) = start(&parsed, config) {
        eprintln!("kumo-gateway: {e}");
        std::process::exit(1);
    }
}

/// Parses `bytes`, `Nk` or `Nm`.
fn parse_size(text: &str) -> Result<usize, String> {
    let lower = text.to_ascii_lowercase();
    let (digits, unit) = match lower.strip_suffix('m') {
        Some(d) => (d, 1 << 20),
        None => match lower.strip_suffix('k') {
            Some(d) => (d, 1 << 10),
            None => (lower.as_str(), 1),
        },
    };
    let n: usize = digits
        .parse()
        .map_err(|_| format!("invalid item size {text:?}"))?;
    let bytes = n
        .checked_mul(unit)
        .ok_or_else(|| format!("item size {text:?} is too large"))?;
    if !(1024..=(64 << 20)).contains(&bytes) {
        return Err(format!("item size {text:?} must be between 1k and 64m"));
    }
    Ok(bytes)
}

fn config_from(parsed: &Parsed) -> Result<GatewayConfig, String> {
    if parsed.get("local-cache").is_some() {
        return Err("-lc (--local-cache) is not supported by kumofs-rs".into());
    }
    if !parsed.positional.is_empty() {
        return Err(format!("unexpected argument {:?}", parsed.positional[0]));
    }
    let mut config = GatewayConfig::default();
    let manager1 = parsed.required(&SPECS[0]).map_err(|e| e.0)?;
    config
        .managers
        .push(cli::parse_peer_addr(manager1, MANAGER_PORT).map_err(|e| e.0)?);
    if let Some(manager2) = parsed.get("manager2") {
        config
            .managers
            .push(cli::parse_peer_addr(manager2, MANAGER_PORT).map_err(|e| e.0)?);
    }
    for (long, port, kind) in [
        ("memproto-text", TEXT_PORT, PortKind::Text),
        ("memproto-binary", BINARY_PORT, PortKind::Binary),
        ("cloudy", CLOUDY_PORT, PortKind::AsyncBinary),
    ] {
        if let Some(text) = parsed.get(long) {
            let addr = cli::parse_listen_addr(text, port).map_err(|e| e.0)?;
            config.listen.push((addr, kind));
        }
    }
    if config.listen.is_empty() {
        return Err("at least one of -t, -b or -c is required".into());
    }
    if let Some(list) = parsed.get("cpus") {
        config.cpus = Some(parse_cpu_list(list).map_err(|e| e.to_string())?);
    }
    if let Some(size) = parsed.get("item-size") {
        config.limits.max_item = parse_size(size)?;
    }
    let count = |long: &str, default: u32| -> Result<u32, String> {
        let n: u32 = parsed.parse_or(long, default).map_err(|e| e.0)?;
        if n == 0 {
            return Err(format!("--{long} must be at least 1"));
        }
        Ok(n)
    };
    config.get_retry = count("get-retry", config.get_retry)?;
    config.set_retry = count("set-retry", config.set_retry)?;
    config.delete_retry = count("delete-retry", config.delete_retry)?;
    config.renew_threshold = count("renew-threshold", config.renew_threshold)?;
    config.async_delete = parsed.flag("async-replicate-delete");
    if let Some(prefix) = parsed.get("key-prefix") {
        if !prefix.bytes().all(|b| b > b' ' && b != 0x7f) {
            return Err("--key-prefix must not contain spaces or control characters".into());
        }
        config.key_prefix = prefix.as_bytes().to_vec();
        config.limits.max_key = config.limits.max_key.saturating_sub(prefix.len()).max(1);
    }
    Ok(config)
}

fn start(parsed: &Parsed, config: GatewayConfig) -> Result<(), String> {
    daemon::apply_common(parsed).map_err(|e| e.0)?;
    let shutdown = Shutdown::new();
    shutdown
        .install_signal_handler()
        .map_err(|e| e.to_string())?;
    gateway::run(config, shutdown).map_err(|e| e.to_string())
}
