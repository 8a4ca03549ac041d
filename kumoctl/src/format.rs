//! Human output of the admin tools, in the seed's formats.
//!
//! `kumoctl status` prints the routing table the way kumofs's Ruby tool did (dates in Ruby 1.8's
//! `Time#to_s` shape, `Wed Dec 03 22:15:55 +0000 2008`), plus one line about a rebalance in progress,
//! which kumofs never showed and its users asked for.

use kumofs::cluster::membership::{NodeState, Phase, StatusReport};

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

/// The text of `kumoctl MGR status`.
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
    if let Some(r) = &report.rebalance {
        let phase = match r.phase {
            Phase::Copying => "copying",
            Phase::Dropping => "dropping",
        };
        out.push_str(&format!(
            "rebalance: {phase}, {} of {} servers done{}\n",
            r.total - r.waiting.len(),
            r.total,
            if r.full { " (full)" } else { "" }
        ));
    } else if report.read.version != report.write.version {
        out.push_str("rebalance: read and write tables differ; run `kumoctl MGR replace`\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kumofs::cluster::membership::TableSpec;

    #[test]
    fn ruby_time_matches_known_dates() {
        assert_eq!(ruby_time(0), "Thu Jan 01 00:00:00 +0000 1970");
        // 2008-12-03 13:15:55 UTC (the seed's example, in +0900, is 22:15:55).
        assert_eq!(ruby_time(1_228_310_155), "Wed Dec 03 13:15:55 +0000 2008");
        assert_eq!(ruby_time(1_709_251_200), "Fri Mar 01 00:00:00 +0000 2024");
    }

    #[test]
    fn status_in_the_seed_format() {
        let a = "192.168.0.101:19800".parse().unwrap();
        let b = "192.168.0.104:19800".parse().unwrap();
        let table = TableSpec {
            version: (1_228_310_155_000u64 << 16) | 62,
            nodes: vec![(a, NodeState::Active), (b, NodeState::Fault)],
        };
        let report = StatusReport {
            write: table.clone(),
            read: table,
            not_attached: vec![b],
            rebalance: None,
            auto_replace: false,
        };
        assert_eq!(
            status_text(&report),
            "hash space timestamp:\n  Wed Dec 03 13:15:55 +0000 2008 clock 62\nattached node:\n  \
             192.168.0.101:19800  (active)\n  192.168.0.104:19800  (fault)\nnot attached node:\n  \
             192.168.0.104:19800\n"
        );
    }
}
