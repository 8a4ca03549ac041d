//! Human output of the admin tools, in the seed's formats.
//!
//! `kumoctl status` prints the routing table the way kumofs's Ruby tool did (dates in Ruby 1.8's
//! `Time#to_s` shape, in UTC: `Wed Dec 03 13:15:55 +0000 2008`), plus, only when there is one, the
//! rebalance in progress with each server's progress (which kumofs never showed and its users asked
//! for) and warnings about the manager pair or the state file.

use kumofs::cluster::membership::{NodeState, Phase, Rebalance, StatusReport};
use kumofs::cluster::pair::Role;
use kumofs::rpc::messages::{BackupReport, BackupState};

/// Splits a hybrid-logical-clock version into unix milliseconds and the logical counter.
pub fn split_version(version: u64) -> (u64, u64) {
    (version >> 16, version & 0xffff)
}

/// Formats unix seconds as Ruby 1.8's `Time#to_s` in UTC: `Wed Dec 03 22:15:55 +0000 2008`.
pub fn ruby_time(unix_secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix_secs / 86_400;
    let rem = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{} {} {:02} {:02}:{:02}:{:02} +0000 {}",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        day,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        year
    )
}

/// The UTC calendar date (year, month 1-12, day 1-31) of a unix time.
pub fn utc_date(unix_secs: u64) -> (i64, u32, u32) {
    civil_from_days((unix_secs / 86_400) as i64)
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31), proleptic Gregorian calendar.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The text of `kumoctl MGR status`: the seed's lines, then (only when there is something to say)
/// the rebalance with every participant's progress and warnings.
pub fn status_text(report: &StatusReport) -> String {
    let (ms, clock) = split_version(report.write.version);
    let mut out = String::from("hash space timestamp:\n");
    out.push_str(&format!("  {} clock {}\n", ruby_time(ms / 1000), clock));
    out.push_str("attached node:\n");
    for (addr, state) in &report.write.nodes {
        let state = match state {
            NodeState::Active => "active",
            NodeState::Fault => "fault",
        };
        out.push_str(&format!("  {addr}  ({state})\n"));
    }
    out.push_str("not attached node:\n");
    for addr in &report.not_attached {
        out.push_str(&format!("  {addr}\n"));
    }
    match &report.rebalance {
        Some(r) => out.push_str(&rebalance_text(report, r)),
        None if report.read != report.write => out.push_str(
            "rebalance: none running, but reads still follow an older table than writes; run \
             `kumoctl MANAGER replace`\n",
        ),
        None => {}
    }
    if let Some(partner) = &report.partner {
        if !partner.reachable {
            out.push_str(&format!(
                "warning: partner manager {} is unreachable\n",
                partner.addr
            ));
            // Who drives while the pair is cut off (see kumofs::cluster::pair).
            match (report.role, partner.servers_hear) {
                (Role::Follower, Some(true)) => out.push_str(&format!(
                    "warning: servers still hear {0}, which drives; this manager does not: send \
                     membership commands to {0}\n",
                    partner.addr
                )),
                (Role::Follower, _) => out.push_str(&format!(
                    "warning: no server reports on {0}: this manager does not take over until \
                     servers say {0} is gone (servers must list it by the address it listens on)\n",
                    partner.addr
                )),
                _ => {}
            }
        }
    }
    if report.role == Role::CatchingUp {
        out.push_str("warning: this manager just started and waits for its partner's state\n");
    }
    for warning in &report.warnings {
        out.push_str(&format!("warning: {warning}\n"));
    }
    out
}

fn rebalance_text(report: &StatusReport, r: &Rebalance) -> String {
    let phase = match r.phase {
        Phase::Copying => "copying",
        Phase::Dropping => "dropping",
    };
    let mut head = phase.to_string();
    if r.full {
        head.push_str(" (full)");
    }
    if let Some(run) = &report.rebalance_run {
        head.push_str(&format!(", {}", run.reason));
        if run.attempt > 1 {
            head.push_str(&format!(", attempt {}", run.attempt));
        }
        if let Some(why) = &run.restarted_because {
            head.push_str(&format!(" (restarted: {why})"));
        }
    }
    let mut out = format!(
        "rebalance: {head}; {} of {} servers done\n",
        r.total.saturating_sub(r.waiting.len()),
        r.total
    );
    for p in &report.progress {
        let what = if p.done {
            "done".to_string()
        } else {
            match &p.progress {
                Some(p) if p.phase == Phase::Copying => format!(
                    "{phase}: {} of {} records scanned, {} sent",
                    p.done, p.total, p.sent
                ),
                Some(p) => format!("{phase}: {} of {} records scanned", p.done, p.total),
                None => format!("{phase}: no progress reported yet"),
            }
        };
        out.push_str(&format!("  {}  {what}\n", p.addr));
    }
    out
}

/// The text of `kumoctl MGR backup`: one line per server.
pub fn backup_text(report: &BackupReport, timed_out: bool) -> String {
    let mut out = format!("backup {}:\n", report.suffix);
    for (addr, state) in &report.servers {
        let line = match state {
            BackupState::Done { path, records } => format!("done  {path}  ({records} records)"),
            BackupState::Failed(why) => format!("failed  {why}"),
            BackupState::Pending if timed_out => "not finished (timed out)".to_string(),
            BackupState::Pending => "running".to_string(),
        };
        out.push_str(&format!("  {addr}  {line}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kumofs::cluster::membership::{RebalanceRun, ServerProgress, TableSpec};
    use kumofs::cluster::status::PartnerStatus;
    use kumofs::rpc::messages::PhaseProgress;
    use std::net::SocketAddr;

    #[test]
    fn ruby_time_matches_known_dates() {
        assert_eq!(ruby_time(0), "Thu Jan 01 00:00:00 +0000 1970");
        // 2008-12-03 13:15:55 UTC (the seed's example, in +0900, is 22:15:55).
        assert_eq!(ruby_time(1_228_310_155), "Wed Dec 03 13:15:55 +0000 2008");
        assert_eq!(ruby_time(1_709_251_200), "Fri Mar 01 00:00:00 +0000 2024");
    }

    fn report(write: TableSpec, read: TableSpec, not_attached: Vec<SocketAddr>) -> StatusReport {
        StatusReport {
            write,
            read,
            not_attached,
            rebalance: None,
            auto_replace: false,
            rebalance_run: None,
            progress: Vec::new(),
            manager: "127.0.0.1:19700".parse().unwrap(),
            role: Role::Leader,
            partner: None,
            epoch: 1,
            gc_horizon: 0,
            backup: None,
            warnings: Vec::new(),
        }
    }

    #[test]
    fn status_in_the_seed_format() {
        let a = "192.168.0.101:19800".parse().unwrap();
        let b = "192.168.0.104:19800".parse().unwrap();
        let table = TableSpec {
            version: (1_228_310_155_000u64 << 16) | 62,
            nodes: vec![(a, NodeState::Active), (b, NodeState::Fault)],
        };
        assert_eq!(
            status_text(&report(table.clone(), table, vec![b])),
            "hash space timestamp:\n  Wed Dec 03 13:15:55 +0000 2008 clock 62\nattached node:\n  \
             192.168.0.101:19800  (active)\n  192.168.0.104:19800  (fault)\nnot attached node:\n  \
             192.168.0.104:19800\n"
        );
    }

    #[test]
    fn status_shows_rebalance_progress_and_warnings() {
        let a: SocketAddr = "10.0.0.1:19800".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:19800".parse().unwrap();
        let write = TableSpec {
            version: 5 << 16,
            nodes: vec![(a, NodeState::Active), (b, NodeState::Active)],
        };
        let read = TableSpec {
            version: 4 << 16,
            nodes: vec![(a, NodeState::Active)],
        };
        let mut r = report(write, read, Vec::new());
        r.rebalance = Some(Rebalance {
            target: 5 << 16,
            full: false,
            phase: Phase::Copying,
            waiting: [a].into_iter().collect(),
            total: 2,
        });
        r.rebalance_run = Some(RebalanceRun {
            attempt: 2,
            reason: "attach 10.0.0.2:19800".into(),
            restarted_because: Some("lost 10.0.0.3:19800".into()),
            started_ms: 0,
            phase_started_ms: 0,
        });
        r.progress = vec![
            ServerProgress {
                addr: a,
                done: false,
                progress: Some(PhaseProgress {
                    target: 5 << 16,
                    phase: Phase::Copying,
                    done: 10,
                    total: 40,
                    sent: 3,
                }),
            },
            ServerProgress {
                addr: b,
                done: true,
                progress: None,
            },
        ];
        r.partner = Some(PartnerStatus {
            addr: "10.0.0.9:19700".parse().unwrap(),
            reachable: false,
            servers_hear: Some(false),
        });
        let text = status_text(&r);
        assert!(text.ends_with(
            "not attached node:\nrebalance: copying, attach 10.0.0.2:19800, attempt 2 (restarted: \
             lost 10.0.0.3:19800); 1 of 2 servers done\n  10.0.0.1:19800  copying: 10 of 40 \
             records scanned, 3 sent\n  10.0.0.2:19800  done\nwarning: partner manager \
             10.0.0.9:19700 is unreachable\n"
        ), "{text}");
        // A follower cut off from the driving partner says where commands go.
        r.role = Role::Follower;
        r.partner = Some(PartnerStatus {
            addr: "10.0.0.9:19700".parse().unwrap(),
            reachable: false,
            servers_hear: Some(true),
        });
        assert!(status_text(&r).ends_with(
            "warning: partner manager 10.0.0.9:19700 is unreachable\nwarning: servers still hear \
             10.0.0.9:19700, which drives; this manager does not: send membership commands to \
             10.0.0.9:19700\n"
        ));
        r.rebalance = None;
        r.partner = None;
        assert!(status_text(&r).contains("run `kumoctl MANAGER replace`"));
    }

    #[test]
    fn backup_lists_every_server() {
        let report = BackupReport {
            id: 1,
            suffix: "20250101".into(),
            servers: vec![
                (
                    "10.0.0.1:19800".parse().unwrap(),
                    BackupState::Done {
                        path: "/d/s-20250101".into(),
                        records: 12,
                    },
                ),
                (
                    "10.0.0.2:19800".parse().unwrap(),
                    BackupState::Failed("disk full".into()),
                ),
                ("10.0.0.3:19800".parse().unwrap(), BackupState::Pending),
            ],
        };
        assert_eq!(
            backup_text(&report, true),
            "backup 20250101:\n  10.0.0.1:19800  done  /d/s-20250101  (12 records)\n  \
             10.0.0.2:19800  failed  disk full\n  10.0.0.3:19800  not finished (timed out)\n"
        );
    }
}
