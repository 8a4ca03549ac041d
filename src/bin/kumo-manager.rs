//! kumo-manager: membership and routing tables of a kumofs cluster.

use std::path::PathBuf;
use std::time::Duration;

use kumofs::cli::{self, daemon, OptSpec, Parsed};
use kumofs::cluster::membership::MembershipConfig;
use kumofs::manager::{self, ManagerConfig, StateStore};
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
    OptSpec::value(
        "",
        "--partner-via",
        "addr[:19700]",
        "dial the partner here instead of at -p (a proxy or address translation in between)",
    ),
    OptSpec::value(
        "-s",
        "--state-dir",
        "dir",
        "where the state file kumo-manager-<ip>_<port>.state is kept (default: .)",
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
        "quiet time before an automatic replace (default 4)",
    ),
    OptSpec::value(
        "-Ys",
        "--connect-timeout",
        "sec",
        "keepalive step: a server or the partner silent for Ys x Yn is down (default 2)",
    ),
    OptSpec::value(
        "-Yn",
        "--connect-retry-limit",
        "n",
        "missed steps before a server or the partner is judged down (default 3)",
    ),
    OptSpec::value(
        "",
        "--gc-lag",
        "sec",
        "tombstones older than this may be collected when all is well (default 60)",
    ),
    daemon::COMMON_SPECS[0],
    daemon::COMMON_SPECS[1],
    daemon::COMMON_SPECS[2],
];

fn main() {
    let synopsis = "kumo-manager -l <addr[:port]> [-p <partner[:port]>] [-s <dir>] [options]";
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
    if partner == Some(listen) {
        return Err("-p names this manager itself; give the other manager's address".into());
    }
    let partner_via = match parsed.get("partner-via") {
        Some(_) if partner.is_none() => {
            return Err("--partner-via needs -p (the partner's own address)".into())
        }
        Some(text) => Some(cli::parse_peer_addr(text, DEFAULT_PORT).map_err(|e| e.0)?),
        None => None,
    };
    let secs = |long: &str, default: f64| -> Result<Duration, String> {
        let v: f64 = parsed.parse_or(long, default).map_err(|e| e.0)?;
        if !(v.is_finite() && v > 0.0 && v < 1e6) {
            return Err(format!("--{long} must be a positive number of seconds"));
        }
        Ok(Duration::from_secs_f64(v))
    };
    let step = secs("connect-timeout", 2.0)?;
    let retries: u32 = parsed.parse_or("connect-retry-limit", 3).map_err(|e| e.0)?;
    if retries == 0 || retries > 1000 {
        return Err("--connect-retry-limit must be between 1 and 1000".into());
    }
    let fault_after = step * retries;
    let gc_lag = secs("gc-lag", 60.0)?;
    if gc_lag < fault_after * 2 {
        return Err(format!(
            "--gc-lag must be at least twice the fault timeout (-Ys x -Yn = {:.1} s)",
            fault_after.as_secs_f64()
        ));
    }
    let membership = MembershipConfig {
        fault_after_ms: fault_after.as_millis() as u64,
        auto_replace: parsed.flag("auto-replace"),
        replace_delay_ms: secs("replace-delay", 4.0)?.as_millis() as u64,
        gc_lag_ms: gc_lag.as_millis() as u64,
    };
    let dir = PathBuf::from(parsed.get("state-dir").unwrap_or("."));
    // Read and rewrite the state before anything else: a corrupt file or a directory that cannot
    // be written stops the start here, with the message on the terminal (and no usage text: the
    // arguments are fine).
    let store = StateStore::open(&dir, listen).unwrap_or_else(|e| cli::exit_with_error(&e));
    let initial = store.load().unwrap_or_else(|e| cli::exit_with_error(&e));
    if let Err(e) = store.save(&initial.clone().unwrap_or_default()) {
        cli::exit_with_error(&e);
    }
    let listener = std::net::TcpListener::bind(listen)
        .unwrap_or_else(|e| cli::exit_with_error(&format!("cannot listen on {listen}: {e}")));
    daemon::apply_common(parsed).map_err(|e| e.0)?;
    match &initial {
        Some(state) => kumofs::info!(
            "loaded state from {}: {} servers attached, epoch {}",
            store.path().display(),
            state.routing.write.nodes.len(),
            state.epoch
        ),
        None => kumofs::info!(
            "no state file at {}: starting with an empty cluster state",
            store.path().display()
        ),
    }
    let shutdown = Shutdown::new();
    shutdown
        .install_signal_handler()
        .map_err(|e| e.to_string())?;
    let config = ManagerConfig {
        listen,
        partner,
        partner_via,
        membership,
        store,
        initial,
    };
    manager::run(config, listener, shutdown).map_err(|e| e.to_string())
}
