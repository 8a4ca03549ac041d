//! The differential tables of `protocol_diff_text` and `protocol_diff_binary`, run against a real
//! kumo-gateway (one manager, one server) instead of the protocol layer's test store: what a
//! client sees end to end, compared byte for byte with memcached 1.6.18.
//!
//! The protocol layer's deliberate differences apply here too. On top of them, the gateway and
//! server differ in the ways listed in [`GATEWAY_DIFFERENCES`], each named by case; any other
//! difference fails the test. A listed case that now agrees is printed (so the list can shrink)
//! but does not fail, since it may agree only by chance (a CAS order, say).
//!
//! The second test sends two long pipelines to the gateway whole and then one byte per write, and
//! requires the same replies.
//!
//! Needs the workspace binaries (`cargo build --workspace --bins`, as `make test` does first).

mod protocol_support;
mod support;

use protocol_support::diff::{compare_all, first_difference, run_case};
use protocol_support::external::Memcached;
use protocol_support::{cases_binary, cases_text, pipelines};
use support::{raw_exchange, wait_until, Cluster, READY_TIMEOUT};

/// Cases where kumofs (gateway and server) answers differently from memcached, and why, each named
/// `text/<case>` or `binary/<case>` (a text and a binary case may share a name). None of these are
/// protocol-layer differences: the decoder hands the gateway every field it needs. All are
/// deliberate; `src/protocol/CONFORMANCE.md` explains them.
const GATEWAY_DIFFERENCES: &[(&str, &[&str])] = &[
    (
        "VERSION answers kumofs's own version",
        &[
            "text/version",
            "text/version args",
            "text/pipelined mix",
            "binary/version",
            "binary/opcode 0x0b bare",
        ],
    ),
    (
        "a touch is a write: it gives the item a new CAS (memcached keeps the CAS), so that the \
         replicas, which keep the newest version, all take the new expiry",
        &[
            "binary/gat hit and miss",
            "binary/gatq hit and miss",
            "binary/gatk hit and miss",
            "binary/gatkq hit and miss",
            "binary/touch",
            "binary/touch expires",
            "binary/gat expires",
            "binary/pipelined writes to one key",
        ],
    ),
];

fn known(name: &str) -> Option<&'static str> {
    GATEWAY_DIFFERENCES
        .iter()
        .find(|(_, cases)| cases.contains(&name))
        .map(|(why, _)| *why)
}

/// `problems` with each case name qualified by its dialect (`text/` or `binary/`).
fn qualified(dialect: &str, problems: Vec<(String, String)>) -> Vec<(String, String)> {
    problems
        .into_iter()
        .map(|(name, report)| (format!("{dialect}/{name}"), report))
        .collect()
}

/// A manager, one attached server and a gateway, each on CPU 0.
fn one_server_cluster() -> Cluster {
    let mut cluster = Cluster::start_manager();
    cluster.server_args = vec!["--cpus".into(), "0".into()];
    cluster.add_server();
    cluster.attach();
    cluster.start_gateway(&["--cpus", "0"]);
    // Start once the server has its routing, so that no case pays for a routing retry: wait until
    // a written key reads back. (Reads and writes right after an attach are `gateway_attach`'s
    // subject.)
    let text = cluster.text_addr.expect("text port");
    wait_until("the gateway to read its writes", READY_TIMEOUT, || {
        let reply = raw_exchange(text, b"set ready 0 0 1\r\n1\r\nget ready\r\n", |r| {
            r.ends_with(b"END\r\n") || r.ends_with(b"ERROR\r\n")
        });
        reply == b"STORED\r\nVALUE ready 0 1\r\n1\r\nEND\r\n"
    });
    cluster
}

#[test]
fn gateway_replies_match_memcached() {
    let Some(memcached) = Memcached::start(&[]) else {
        return;
    };
    let cluster = one_server_cluster();
    let text = cluster.text_addr.expect("text port");
    let binary = cluster.binary_addr.expect("binary port");
    let text_cases = cases_text::all_cases();
    let binary_cases = cases_binary::all_cases();
    let mut problems = qualified("text", compare_all(memcached.addr, text, &text_cases));
    problems.extend(qualified(
        "binary",
        compare_all(memcached.addr, binary, &binary_cases),
    ));
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
        cluster
            .logs()
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn gateway_reads_split_requests_like_whole_ones() {
    let cluster = one_server_cluster();
    let text = cluster.text_addr.expect("text port");
    let binary = cluster.binary_addr.expect("binary port");
    for (addr, case) in [
        (text, pipelines::text_pipeline()),
        (binary, pipelines::binary_pipeline()),
    ] {
        let whole = run_case(addr, &case);
        let split = run_case(addr, &case.clone().byte_by_byte());
        assert!(
            !whole.timed_out && !whole.closed,
            "{}: closed or timed out\n{}",
            case.name,
            cluster.logs()
        );
        if let Some(difference) = first_difference(&whole, &split, case.binary) {
            panic!("{}: whole and split differ at {difference}", case.name);
        }
    }
}
