//! kumoctl: administer a kumofs cluster through its manager (either manager of a pair).
//!
//! `kumoctl MANAGER[:19700] COMMAND [ARGS] [--json] [--timeout SEC]`
//!
//! Output follows kumofs's Ruby tool: `status` prints the seed's table, `enable-auto-replace` and
//! `disable-auto-replace` print `true`/`false`, the membership commands print nothing. `backup`
//! waits until every server reported (kumofs answered at once and never said when it was done) and
//! prints each server's result. Exit status: 0 on success, 1 on any error (and when a backup failed
//! on some server or did not finish in time).

use std::net::SocketAddr;
use std::process::exit;
use std::time::{Duration, Instant};

use kumoctl::format::{backup_text, status_text};
use kumofs::cli;
use kumofs::rpc::blocking;
use kumofs::rpc::messages::{BackupReport, BackupState, ManagerRequest, ManagerResponse};
use serde_json::json;

const USAGE: &str = "usage: kumoctl <manager[:19700]> <command> [--json] [--timeout <sec>]

commands:
  status                  show the attached and not attached servers and any rebalance (alias: stat)
  attach                  attach every new server and recover fault ones, then rebalance
  attach-noreplace        attach without rebalancing (follow with `replace`)
  detach                  remove fault servers, then rebalance
  detach-noreplace        remove fault servers without rebalancing
  replace                 rebalance to the current membership (repairs a failed rebalance)
  full-replace            rebalance, copying every record to all of its owners
  backup [suffix]         make every server write a copy of its data (default suffix: today,
                          YYYYMMDD) and wait until all reported (at most --timeout, default 600 s)
  enable-auto-replace     attach and detach by itself, then rebalance; prints true
  disable-auto-replace    prints false

options:
  --json                  print the answer as JSON
  --timeout <sec>         how long `backup` waits for the servers (default 600)
";

/// How long one call to the manager may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `backup` asks for the servers' results.
const POLL: Duration = Duration::from_millis(200);

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let json = take_flag(&mut args, "--json");
    let timeout = take_value(&mut args, "--timeout").map(|t| match t.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 && secs < 1e7 => Duration::from_secs_f64(secs),
        _ => die(&format!(
            "--timeout needs a positive number of seconds, not {t:?}"
        )),
    });
    if take_flag(&mut args, "--help") || take_flag(&mut args, "-h") {
        print!("{USAGE}");
        exit(0);
    }
    if args.len() < 2 {
        eprint!("{USAGE}");
        exit(1);
    }
    let manager = match cli::parse_peer_addr(&args[0], 19700) {
        Ok(addr) => addr,
        Err(e) => die(&e.0),
    };
    let command = args[1].as_str();
    let request = match (command, &args[2..]) {
        ("status" | "stat", []) => ManagerRequest::Status,
        ("attach", []) => ManagerRequest::Attach { replace: true },
        ("attach-noreplace", []) => ManagerRequest::Attach { replace: false },
        ("detach", []) => ManagerRequest::Detach { replace: true },
        ("detach-noreplace", []) => ManagerRequest::Detach { replace: false },
        ("replace", []) => ManagerRequest::Replace { full: false },
        ("full-replace", []) => ManagerRequest::Replace { full: true },
        ("backup", []) => ManagerRequest::Backup { suffix: today() },
        ("backup", [suffix]) => ManagerRequest::Backup {
            suffix: suffix.clone(),
        },
        ("enable-auto-replace", []) => ManagerRequest::SetAutoReplace(true),
        ("disable-auto-replace", []) => ManagerRequest::SetAutoReplace(false),
        _ => {
            eprint!("{USAGE}");
            die(&format!(
                "unknown command or wrong arguments: {}",
                args[1..].join(" ")
            ));
        }
    };
    let response = call(manager, &request);
    match response {
        ManagerResponse::Status(report) if json => println!("{}", to_json(&report)),
        ManagerResponse::Status(report) => print!("{}", status_text(&report)),
        ManagerResponse::AutoReplace(on) if json => println!("{}", json!({ "auto_replace": on })),
        ManagerResponse::AutoReplace(on) => println!("{on}"),
        ManagerResponse::Backup(report) => {
            let timeout = timeout.unwrap_or(Duration::from_secs(600));
            wait_for_backup(manager, report, timeout, json)
        }
        ManagerResponse::Ok if json => println!("{}", json!({ "ok": true, "command": command })),
        ManagerResponse::Ok => {}
        ManagerResponse::Error(e) if json => {
            println!("{}", json!({ "ok": false, "error": e }));
            exit(1);
        }
        ManagerResponse::Error(e) => die(&e),
        other => die(&format!("unexpected answer from {manager}: {other:?}")),
    }
}

fn call(manager: SocketAddr, request: &ManagerRequest) -> ManagerResponse {
    match blocking::call(manager, request, CALL_TIMEOUT) {
        Ok(r) => r,
        Err(e) => die(&format!("manager {manager}: {e}")),
    }
}

/// Polls the backup until no server is pending or `timeout` passes, prints every server's result
/// and exits non-zero unless all succeeded.
fn wait_for_backup(manager: SocketAddr, mut report: BackupReport, timeout: Duration, json: bool) {
    let start = Instant::now();
    let mut last_error = None;
    let pending = |r: &BackupReport| r.servers.iter().any(|(_, s)| *s == BackupState::Pending);
    while pending(&report) && start.elapsed() < timeout {
        std::thread::sleep(POLL);
        let request = ManagerRequest::BackupStatus { id: report.id };
        // A manager that restarts or a partner that has not synced yet is retried until the end.
        match blocking::call(manager, &request, CALL_TIMEOUT) {
            Ok(ManagerResponse::Backup(r)) if r.id == report.id => {
                report = r;
                last_error = None;
            }
            Ok(ManagerResponse::Error(e)) => last_error = Some(e),
            Ok(other) => last_error = Some(format!("unexpected answer: {other:?}")),
            Err(e) => last_error = Some(e.to_string()),
        }
    }
    let timed_out = pending(&report);
    let failed = report
        .servers
        .iter()
        .any(|(_, s)| matches!(s, BackupState::Failed(_)));
    if json {
        println!(
            "{}",
            to_json(&json!({
                "backup": report,
                "complete": !timed_out,
                "ok": !timed_out && !failed,
            }))
        );
    } else {
        print!("{}", backup_text(&report, timed_out));
    }
    if timed_out {
        let why = last_error.map_or(String::new(), |e| format!(" (last error: {e})"));
        die(&format!(
            "backup {} did not finish within {:.0} s{why}",
            report.suffix,
            timeout.as_secs_f64()
        ));
    }
    if failed {
        die(&format!("backup {} failed on some servers", report.suffix));
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| die(&format!("cannot format JSON: {e}")))
}

fn take_flag(args: &mut Vec<String>, flag: &str) -> bool {
    let before = args.len();
    args.retain(|a| a != flag);
    args.len() != before
}

fn take_value(args: &mut Vec<String>, option: &str) -> Option<String> {
    let at = args.iter().position(|a| a == option)?;
    args.remove(at);
    if at >= args.len() {
        die(&format!("{option} needs a value"));
    }
    Some(args.remove(at))
}

/// Today's date as YYYYMMDD (UTC), the default backup suffix (as kumofs's tool, which used the
/// local time).
fn today() -> String {
    let (year, month, day) = kumoctl::format::utc_date(kumofs::cluster::clock::wall_ms() / 1000);
    format!("{year}{month:02}{day:02}")
}

fn die(message: &str) -> ! {
    eprintln!("kumoctl: {message}");
    exit(1);
}
