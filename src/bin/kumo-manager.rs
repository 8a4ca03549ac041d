//! kumo-manager: membership and routing tables of a kumofs cluster.

use std::time::Duration;

use kumofs::cli::{self, daemon, OptSpec, Parsed};
use kumofs::cluster::membership::MembershipConfig;
use kumofs::manager::{self, ManagerConfig};
use kumofs::runtime::Shutdown;

const DEFAULT_PORT: u16 = 19700;

const SPECS: &[OptSpec] = &[
    OptSpec::value(
        "-l",
        "--listen",
        "addr[:19700]",
        "address other nodes use to reach this manager (required)",
    ),
    OptSpec::value(
        "-p",
        "--partner",
        "addr[:19700]",
        "the other manager of the pair",
    ),
    OptSpec::flag(
        "-a",
        "--auto-replace",
        "attach and detach servers automatically, then rebalance",
    ),
    OptSpec::value(
        "-Rs",
        "--replace-delay",
        "sec",
        "delay before an automatic replace (default 4)",
    ),
    OptSpec::value(
        "-Ys",
        "--connect-timeout",
        "sec",
        "keepalive timeout step (default 2)",
    ),
    OptSpec::value(
        "-Yn",
        "--connect-retry-limit",
        "n",
        "missed steps before a server is judged down (default 3)",
    ),
    daemon::COMMON_SPECS[0],
    daemon::COMMON_SPECS[1],
    daemon::COMMON_SPECS[2],
];

fn main() {
    let synopsis = "kumo-manager -l <addr[:port]> [-p <partner[:port]>] [options]";
    let parsed = cli::parse_args_or_exit(synopsis, SPECS);
    if let Err(e) = start(&parsed) {
        cli::exit_with_usage(synopsis, SPECS, &e);
    }
}

fn start(parsed: &Parsed) -> Result<(), String> {
    let listen = cli::parse_listen_addr(parsed.required(&SPECS[0]).map_err(|e| e.0)?, DEFAULT_PORT)
        .map_err(|e| e.0)?;
    let partner = match parsed.get("partner") {
        Some(text) => Some(cli::parse_peer_addr(text, DEFAULT_PORT).map_err(|e| e.0)?),
        None => None,
    };
    let secs = |long: &str, default: f64| -> Result<Duration, String> {
        let v: f64 = parsed.parse_or(long, default).map_err(|e| e.0)?;
        if !(v.is_finite() && v > 0.0) {
            return Err(format!("--{long} must be a positive number of seconds"));
        }
        Ok(Duration::from_secs_f64(v))
    };
    let step = secs("connect-timeout", 2.0)?;
    let retries: u32 = parsed.parse_or("connect-retry-limit", 3).map_err(|e| e.0)?;
    let membership = MembershipConfig {
        fault_after_ms: (step * retries.max(1)).as_millis() as u64,
        auto_replace: parsed.flag("auto-replace"),
        replace_delay_ms: secs("replace-delay", 4.0)?.as_millis() as u64,
    };
    let listener = std::net::TcpListener::bind(listen)
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    daemon::apply_common(parsed).map_err(|e| e.0)?;
    let shutdown = Shutdown::new();
    shutdown
        .install_signal_handler()
        .map_err(|e| e.to_string())?;
    let config = ManagerConfig {
        listen,
        partner,
        membership,
    };
    manager::run(config, listener, shutdown).map_err(|e| e.to_string())
}
