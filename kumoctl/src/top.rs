//! The frames of `kumotop`: one line per server with its request counters, their rates since the
//! previous sample, its item count and its rebalance state (kumofs's kumotop columns:
//! `address #Get #Set #Del Get/s Set/s Del/s QPS items time clock status`). Pure: the binary takes
//! the samples and draws the text.

use std::time::Duration;

use crate::stat::Stats;

/// Terminals at least this wide get the extra columns.
pub const WIDE: usize = 130;

/// Two samples of one server (the older one may be missing, then rates are blank).
pub struct Sample<'a> {
    pub addr: String,
    pub now: Result<&'a Stats, &'a str>,
    pub before: Option<&'a Stats>,
}

fn num(stats: &Stats, key: &str) -> u64 {
    stats.get(key).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn rate(now: &Stats, before: Option<&Stats>, key: &str, elapsed: Duration) -> Option<f64> {
    let before = before?;
    let secs = elapsed.as_secs_f64();
    (secs > 0.0).then(|| num(now, key).saturating_sub(num(before, key)) as f64 / secs)
}

fn show_rate(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{r:.0}"))
}

/// One frame: a title line, the header and one line per server. `elapsed` is the time between
/// the two samples, `title` what goes first on the title line.
pub fn frame(title: &str, samples: &[Sample<'_>], elapsed: Duration, width: usize) -> String {
    let wide = width >= WIDE;
    let mut out = format!("{title}   {} servers", samples.len());
    out.push('\n');
    let mut header = format!(
        "{:<22} {:>10} {:>10} {:>9} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10} {:>6} {:<9}",
        "address",
        "#Get",
        "#Set",
        "#Del",
        "Get/s",
        "Set/s",
        "Del/s",
        "QPS",
        "items",
        "time",
        "clock",
        "status"
    );
    if wide {
        header.push_str(&format!(
            " {:>8} {:>8} {:>10} {:<20}",
            "tombs", "backlog", "copied", "rebalance"
        ));
    }
    out.push_str(header.trim_end());
    out.push('\n');
    for sample in samples {
        let stats = match sample.now {
            Ok(stats) => stats,
            Err(why) => {
                out.push_str(&format!("{:<22} unreachable: {why}\n", sample.addr));
                continue;
            }
        };
        let (get, set, del) = (
            rate(stats, sample.before, "cmd_get", elapsed),
            rate(stats, sample.before, "cmd_set", elapsed),
            rate(stats, sample.before, "cmd_delete", elapsed),
        );
        let qps = match (get, set, del) {
            (Some(g), Some(s), Some(d)) => Some(g + s + d),
            _ => None,
        };
        let time = num(stats, "time");
        let clock = num(stats, "clock") & 0xffff;
        let mut line = format!(
            "{:<22} {:>10} {:>10} {:>9} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10} {:>6} {:<9}",
            sample.addr,
            num(stats, "cmd_get"),
            num(stats, "cmd_set"),
            num(stats, "cmd_delete"),
            show_rate(get),
            show_rate(set),
            show_rate(del),
            show_rate(qps),
            num(stats, "items"),
            time,
            clock,
            stats.get("replstat").map_or("?", String::as_str),
        );
        if wide {
            line.push_str(&format!(
                " {:>8} {:>8} {:>10} {:<20}",
                num(stats, "tombstones"),
                num(stats, "repl_backlog"),
                num(stats, "copy_records"),
                stats.get("rebalance").map_or("?", String::as_str),
            ));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(get: u64, set: u64) -> Stats {
        [
            ("cmd_get", get.to_string()),
            ("cmd_set", set.to_string()),
            ("cmd_delete", "0".to_string()),
            ("items", "12".to_string()),
            ("replstat", "ready".to_string()),
            ("rebalance", "none".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    #[test]
    fn rates_come_from_two_samples() {
        let (before, now) = (stats(100, 10), stats(300, 60));
        let samples = [
            Sample {
                addr: "127.0.0.1:19801".into(),
                now: Ok(&now),
                before: Some(&before),
            },
            Sample {
                addr: "127.0.0.1:19802".into(),
                now: Err("connection refused"),
                before: None,
            },
        ];
        let text = frame("kumotop", &samples, Duration::from_secs(2), 80);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "kumotop   2 servers");
        assert!(lines[1].starts_with("address") && lines[1].ends_with("status"));
        let cols: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            &cols[..9],
            [
                "127.0.0.1:19801",
                "300",
                "60",
                "0",
                "100",
                "25",
                "0",
                "125",
                "12"
            ]
        );
        assert_eq!(cols.last(), Some(&"ready"));
        assert!(lines[3].contains("unreachable: connection refused"));
        let wide = frame("kumotop", &samples[..1], Duration::from_secs(2), 140);
        assert!(wide.lines().nth(1).unwrap().ends_with("rebalance"));
        assert!(wide.lines().nth(2).unwrap().ends_with("none"));
    }

    #[test]
    fn a_first_sample_has_no_rates() {
        let now = stats(1, 1);
        let samples = [Sample {
            addr: "a".into(),
            now: Ok(&now),
            before: None,
        }];
        let text = frame("t", &samples, Duration::from_secs(1), 80);
        assert!(text.lines().nth(2).unwrap().contains(" - "));
    }
}
