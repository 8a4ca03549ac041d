//! kumoctl: administer a kumofs cluster through its manager.
//!
//! `kumoctl MANAGER[:19700] COMMAND [ARGS] [--json]`

use std::process::exit;
use std::time::Duration;

use kumoctl::format::status_text;
use kumofs::cli;
use kumofs::rpc::blocking;
use kumofs::rpc::messages::{ManagerRequest, ManagerResponse};

const USAGE: &str = "usage: kumoctl <manager[:19700]> <command> [--json]

commands:
  status                  show the attached and not attached servers (alias: stat)
  attach                  attach every new server and recover fault ones, then rebalance
  attach-noreplace        attach without rebalancing (follow with `replace`)
  detach                  remove fault servers, then rebalance
  detach-noreplace        remove fault servers without rebalancing
  replace                 rebalance to the current membership
  full-replace            rebalance, copying every record to all of its owners
  backup [suffix]         make every server write a copy of its data
  enable-auto-replace     attach/detach automatically
  disable-auto-replace
";

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let json = take_flag(&mut args, "--json");
    if take_flag(&mut args, "--help") || take_flag(&mut args, "-h") || args.len() < 2 {
        eprint!("{USAGE}");
        exit(if args.is_empty() { 0 } else { 1 });
    }
    let manager = match cli::parse_peer_addr(&args[0], 19700) {
        Ok(addr) => addr,
        Err(e) => die(&e.0),
    };
    let request = match (args[1].as_str(), args.get(2)) {
        ("status" | "stat", None) => ManagerRequest::Status,
        ("attach", None) => ManagerRequest::Attach { replace: true },
        ("attach-noreplace", None) => ManagerRequest::Attach { replace: false },
        ("detach", None) => ManagerRequest::Detach { replace: true },
        ("detach-noreplace", None) => ManagerRequest::Detach { replace: false },
        ("replace", None) => ManagerRequest::Replace { full: false },
        ("full-replace", None) => ManagerRequest::Replace { full: true },
        ("backup", suffix) => ManagerRequest::Backup {
            suffix: suffix.cloned().unwrap_or_else(today),
        },
        ("enable-auto-replace", None) => ManagerRequest::SetAutoReplace(true),
        ("disable-auto-replace", None) => ManagerRequest::SetAutoReplace(false),
        (command, _) => {
            eprint!("{USAGE}");
            die(&format!("unknown command or wrong arguments: {command}"));
        }
    };
    let response: ManagerResponse = match blocking::call(manager, &request, Duration::from_secs(10))
    {
        Ok(r) => r,
        Err(e) => die(&format!("manager {manager}: {e}")),
    };
    match response {
        ManagerResponse::Status(report) if json => println!("{}", to_json(&report)),
        ManagerResponse::Status(report) => print!("{}", status_text(&report)),
        ManagerResponse::AutoReplace(on) if json => println!("{{\"auto_replace\":{on}}}"),
        ManagerResponse::AutoReplace(on) => println!("{on}"),
        ManagerResponse::Error(e) => die(&e),
        _ if json => println!("{{\"ok\":true}}"),
        _ => {}
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

/// Today's date as YYYYMMDD (UTC), the default backup suffix.
fn today() -> String {
    let (year, month, day) = kumoctl::format::utc_date(kumofs::cluster::clock::wall_ms() / 1000);
    format!("{year}{month:02}{day:02}")
}

fn die(message: &str) -> ! {
    eprintln!("kumoctl: {message}");
    exit(1);
}
