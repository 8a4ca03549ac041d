//! Differential test of the text and meta protocols: every request of the table below is sent to a
//! real memcached 1.6.18 (`/usr/bin/memcached -t 1`) and to `kumofs::protocol` driving the test
//! store of `protocol_support`, and the replies are compared byte for byte (CAS values by order of
//! appearance). Any difference not listed as deliberate fails the test.
//!
//! Deliberate differences (each case carries its reason and our exact reply):
//! - keys with control characters are refused (`CLIENT_ERROR bad command line format`);
//! - the item size limit counts the value only (memcached counts its item header and key too, so
//!   it refuses values a few dozen bytes under 1 MiB that we accept);
//! - a `decr` that shortens the number stores the digits only (memcached pads with spaces);
//! - meta flags that need per-item metadata kumofs does not keep (`h l` on mg, `N R` stale/recache
//!   on mg, `I` on ms/md) and `me` are refused with a clear error.
//!
//! Stats contents differ by nature; their shape is compared in `stats_have_the_same_shape`.

mod protocol_support;

use protocol_support::cases_text::{all_cases, case};
use protocol_support::diff::{compare_all, run_case};
use protocol_support::external::Memcached;
use protocol_support::start_server;

#[test]
fn text_and_meta_replies_match_memcached() {
    let Some(memcached) = Memcached::start(&[]) else {
        return;
    };
    let ours = start_server();
    let ours = std::net::SocketAddr::from(([127, 0, 0, 1], ours));
    let cases = all_cases();
    let problems = compare_all(memcached.addr, ours, &cases);
    assert!(
        problems.is_empty(),
        "{} of {} cases differ from memcached 1.6.18:\n\n{}",
        problems.len(),
        cases.len(),
        problems
            .iter()
            .map(|(_, report)| report.as_str())
            .collect::<Vec<_>>()
            .join("\n\n")
    );
}

/// The kind of answer a stats request gets: an error, a status word, or STAT lines and END.
fn stats_shape(replies: &[u8]) -> String {
    let text = String::from_utf8_lossy(replies);
    let mut shape = Vec::new();
    for line in text.split_terminator("\r\n") {
        let kind = if line.starts_with("STAT ") && line.split(' ').count() >= 3 {
            "STAT"
        } else {
            line
        };
        if shape.last() != Some(&kind) {
            shape.push(kind);
        }
    }
    shape.join(",")
}

#[test]
fn stats_have_the_same_shape() {
    let Some(memcached) = Memcached::start(&[]) else {
        return;
    };
    let ours = std::net::SocketAddr::from(([127, 0, 0, 1], start_server()));
    for group in [
        "stats",
        "stats settings",
        "stats items",
        "stats slabs",
        "stats sizes",
        "stats conns",
        "stats detail dump",
        "stats settings x",
        "stats items x",
        "stats slabs x",
        "stats conns x",
    ] {
        let case = case(group, &[&format!("{group}\r\n")]);
        let theirs = stats_shape(&run_case(memcached.addr, &case).replies);
        let mine = stats_shape(&run_case(ours, &case).replies);
        assert_eq!(mine, theirs, "{group}");
    }
}

/// CI once saw "connection refused" mid-test: two tests' memcacheds had picked the same free port,
/// the second exited on bind, and its readiness poll was answered by the first, which the other
/// test then killed. A memcached that is not the one answering on its port must not count as started.
#[test]
fn a_memcached_that_lost_its_port_is_not_taken_for_started() {
    let Some(first) = Memcached::start(&[]) else {
        return;
    };
    let program = std::path::Path::new("/usr/bin/memcached");
    assert!(
        Memcached::start_on(program, first.addr.port(), &[]).is_none(),
        "the first memcached's answers were taken for the second's"
    );
}
