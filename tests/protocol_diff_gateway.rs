//! The differential tables of `protocol_diff_text` and `protocol_diff_binary`, run against a real
//! kumo-gateway (one manager, one server) instead of the protocol layer's test store: what a
//! client sees end to end, compared byte for byte with memcached 1.6.18.
//!
//! The protocol layer's deliberate differences apply here too. On top of them, the gateway and
//! server differ in the ways listed in [`GATEWAY_DIFFERENCES`], each named by case; any other
//! difference fails the test. A listed case that now agrees is printed (so the list can shrink)
//! but does not fail, since it may agree only by chance (a CAS order, say).
//!
//! Needs the workspace binaries (`cargo build --workspace --bins`, as `make test` does first).

mod protocol_support;
mod support;

use protocol_support::diff::compare_all;
use protocol_support::external::Memcached;
use protocol_support::{cases_binary, cases_text};
use support::Cluster;

/// Cases where kumofs (gateway and server) answers differently from memcached, and why. None of
/// these are protocol-layer differences: the decoder hands the gateway every field it needs.
const GATEWAY_DIFFERENCES: &[(&str, &[&str])] = &[
    (
        "VERSION answers kumofs's own version",
        &["version", "version args", "pipelined mix", "opcode 0x0b bare"],
    ),
    (
        "a touch is a write: it gives the item a new CAS (memcached keeps the CAS)",
        &[
            "gat hit and miss",
            "gatq hit and miss",
            "gatk hit and miss",
            "gatkq hit and miss",
            "touch",
            "touch expires",
            "gat expires",
        ],
    ),
    (
        "a get-and-touch to a past time answers a miss (memcached answers the value, then drops it)",
        &["gat negative expires", "mg T expires"],
    ),
    (
        "gateway: mg/ma `t` always shows -1 (Value::ttl is not filled in) and ma `T` is ignored",
        &["mg T touches", "mg ttl", "mg plus signs", "ma T"],
    ),
    (
        "gateway: incr/decr ignore the CAS (binary CAS field, meta `C`)",
        &["ma C", "ma failures with c t", "incr cas"],
    ),
    (
        "gateway: append/prepend ignore the binary CAS field",
        &["append cas", "prepend cas"],
    ),
    (
        "gateway/server: the item an incr/decr with an initial value creates is not found afterwards",
        &["ma N q", "ma N T", "incr miss create", "decr miss create"],
    ),
];

fn known(name: &str) -> Option<&'static str> {
    GATEWAY_DIFFERENCES
        .iter()
        .find(|(_, cases)| cases.contains(&name))
        .map(|(why, _)| *why)
}

#[test]
fn gateway_replies_match_memcached() {
    let Some(memcached) = Memcached::start(&[]) else {
        return;
    };
    let mut cluster = Cluster::start_manager();
    cluster.server_args = vec!["--cpus".into(), "0".into()];
    cluster.add_server();
    cluster.attach();
    cluster.start_gateway(&["--cpus", "0"]);
    let text = cluster.text_addr.expect("text port");
    let binary = cluster.binary_addr.expect("binary port");
    let text_cases = cases_text::all_cases();
    let binary_cases = cases_binary::all_cases();
    let mut problems = compare_all(memcached.addr, text, &text_cases);
    problems.extend(compare_all(memcached.addr, binary, &binary_cases));
    let (listed, unexpected): (Vec<_>, Vec<_>) =
        problems.iter().partition(|(name, _)| known(name).is_some());
    let listed_names: Vec<&str> = listed.iter().map(|(name, _)| name.as_str()).collect();
    for (why, cases) in GATEWAY_DIFFERENCES {
        for case in cases.iter().filter(|c| !listed_names.contains(c)) {
            eprintln!("listed gateway difference now agrees with memcached: {case} ({why})");
        }
    }
    assert!(
        unexpected.is_empty(),
        "{} of {} cases differ between kumo-gateway and memcached 1.6.18:\n\n{}\n\n{}",
        unexpected.len(),
        text_cases.len() + binary_cases.len(),
        unexpected
            .iter()
            .map(|(_, report)| report.as_str())
            .collect::<Vec<_>>()
            .join("\n\n"),
        cluster.logs().lines().rev().take(40).collect::<Vec<_>>().join("\n")
    );
}
