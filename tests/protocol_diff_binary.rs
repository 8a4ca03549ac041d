//! Differential test of the binary protocol: every request of `protocol_support::cases_binary` (each opcode, quiet
//! forms, CAS, errors, bad headers, limits, and all 256 opcodes in a bare frame) is sent to a real
//! memcached 1.6.18 and to `kumofs::protocol` driving the test store of `protocol_support`, and the
//! replies are compared byte for byte (CAS header fields by order of appearance). Any difference
//! not listed as deliberate fails the test.
//!
//! Deliberate differences (each case carries its reason and our exact reply):
//! - the item size limit counts the value only (memcached also counts its item header and key);
//! - an unknown command's body is swallowed exactly (memcached 1.6.18 swallows past it and loses
//!   the next request or hangs); binary verbosity (0x1b), which memcached 1.6.18 does not
//!   implement, is such an unknown command;
//! - SASL is never configured: list-mechs answers "Unknown command" like memcached without `-S`,
//!   and so do auth and step;
//! - `stat` bodies differ by nature; only their shape is compared (`stats_have_the_same_shape`).

mod protocol_support;

use kumofs::protocol::opcode::STAT;
use protocol_support::cases_binary::{all_cases, case, get};
use protocol_support::diff::{compare_all, run_case};
use protocol_support::external::Memcached;
use protocol_support::start_server;

#[test]
fn binary_replies_match_memcached() {
    let Some(memcached) = Memcached::start(&[]) else {
        return;
    };
    let ours = std::net::SocketAddr::from(([127, 0, 0, 1], start_server()));
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

/// The frames of a stat reply: (status, whether the key is empty) per frame.
fn stat_shape(replies: &[u8]) -> Vec<(u16, bool)> {
    let mut shape = Vec::new();
    let mut at = 0;
    while at + 24 <= replies.len() {
        let head = &replies[at..at + 24];
        let status = u16::from_be_bytes([head[6], head[7]]);
        let key_len = u16::from_be_bytes([head[2], head[3]]);
        let body = u32::from_be_bytes([head[8], head[9], head[10], head[11]]) as usize;
        let item = (status, key_len == 0);
        if shape.last() != Some(&item) {
            shape.push(item);
        }
        at += 24 + body;
    }
    shape
}

#[test]
fn stats_have_the_same_shape() {
    let Some(memcached) = Memcached::start(&[]) else {
        return;
    };
    let ours = std::net::SocketAddr::from(([127, 0, 0, 1], start_server()));
    for group in ["", "settings", "items", "slabs", "sizes", "conns"] {
        let case = case(group, &[get(STAT, group.as_bytes())]);
        let theirs = stat_shape(&run_case(memcached.addr, &case).replies);
        let mine = stat_shape(&run_case(ours, &case).replies);
        assert_eq!(mine, theirs, "stat {group:?}");
    }
}
