//! kumoctl against a real kumo-manager and fake servers: the seed's status format, attach and
//! detach, many servers at once, rebalance progress, backup completion and failure, auto-replace,
//! `--json`, and clear errors.

mod cluster_manager_support;
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use cluster_manager_support::{manager_addr, start_manager, status, Behaviour, FakeServer};
use support::{run_tool, wait_until, Daemon};

struct Setup {
    dir: tempfile::TempDir,
    manager: SocketAddr,
    daemon: Daemon,
}

fn manager(extra: &[&str]) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = manager_addr();
    let daemon = start_manager(dir.path(), "manager", addr, None, dir.path(), extra);
    Setup {
        dir,
        manager: addr,
        daemon,
    }
}

/// Runs kumoctl; returns (exit code, stdout, stderr).
fn kumoctl(manager: SocketAddr, args: &[&str]) -> (i32, String, String) {
    let mut all = vec![manager.to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    let out = run_tool("kumoctl", &all);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(manager: SocketAddr, args: &[&str]) -> String {
    let (code, out, err) = kumoctl(manager, args);
    assert_eq!(code, 0, "kumoctl {args:?}: {out}{err}");
    out
}

fn fakes(manager: SocketAddr, n: usize, behaviour: Behaviour) -> Vec<FakeServer> {
    (0..n)
        .map(|_| FakeServer::start(vec![manager], behaviour.clone()))
        .collect()
}

fn wait_status(
    s: &Setup,
    what: &str,
    cond: impl Fn(&kumofs::cluster::membership::StatusReport) -> bool,
) {
    wait_until(what, Duration::from_secs(40), || {
        status(s.manager).is_some_and(|r| cond(&r))
    });
}

fn sorted(servers: &[FakeServer]) -> Vec<SocketAddr> {
    let mut addrs: Vec<SocketAddr> = servers.iter().map(|f| f.addr).collect();
    addrs.sort();
    addrs
}

#[test]
fn status_in_the_seed_format_then_attach_fault_and_detach() {
    let s = manager(&[]);
    let servers = fakes(s.manager, 3, Behaviour::default());
    let addrs = sorted(&servers);
    wait_status(&s, "three servers heard", |r| r.not_attached.len() == 3);
    let text = ok(s.manager, &["status"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "hash space timestamp:");
    assert!(
        lines[1].starts_with("  ") && lines[1].contains(" clock "),
        "{text}"
    );
    assert_eq!(lines[2], "attached node:");
    assert_eq!(lines[3], "not attached node:");
    let listed: Vec<String> = addrs.iter().map(|a| format!("  {a}")).collect();
    assert_eq!(lines[4..].to_vec(), listed, "{text}");
    // `stat` is an alias; attach prints nothing, as in the seed's tutorial.
    assert_eq!(ok(s.manager, &["stat"]), text);
    assert_eq!(ok(s.manager, &["attach"]), "");
    wait_status(&s, "rebalance to finish", |r| {
        r.rebalance.is_none() && r.read == r.write && r.write.nodes.len() == 3
    });
    let text = ok(s.manager, &["status"]);
    let mut expected = vec!["attached node:".to_string()];
    expected.extend(addrs.iter().map(|a| format!("  {a}  (active)")));
    expected.push("not attached node:".into());
    assert_eq!(text.lines().skip(2).collect::<Vec<_>>(), expected, "{text}");
    // One server stops sending keepalives: fault (it keeps its place), then detach removes it.
    servers[0].set(|b| b.alive = false);
    let gone = servers[0].addr;
    wait_status(&s, "a fault server", |r| {
        r.write
            .nodes
            .iter()
            .any(|(a, st)| *a == gone && *st == kumofs::ring::NodeState::Fault)
    });
    assert!(ok(s.manager, &["status"]).contains(&format!("  {gone}  (fault)\n")));
    assert_eq!(ok(s.manager, &["detach"]), "");
    wait_status(&s, "detach and rebalance", |r| {
        r.write.nodes.len() == 2 && r.rebalance.is_none() && r.read == r.write
    });
    // It comes back: listed as not attached until attach-noreplace, which leaves reads behind
    // and says so, until `replace`.
    servers[0].set(|b| b.alive = true);
    wait_status(&s, "back as not attached", |r| r.not_attached == vec![gone]);
    assert_eq!(ok(s.manager, &["attach-noreplace"]), "");
    let text = ok(s.manager, &["status"]);
    assert!(text.contains("reads still follow an older table"), "{text}");
    assert_eq!(ok(s.manager, &["replace"]), "");
    wait_status(&s, "replace to finish", |r| {
        r.write.nodes.len() == 3 && r.rebalance.is_none() && r.read == r.write
    });
    drop(s.daemon);
}

#[test]
fn many_servers_attach_at_once() {
    let s = manager(&[]);
    let servers = fakes(s.manager, 16, Behaviour::default());
    wait_status(&s, "sixteen servers heard", |r| r.not_attached.len() == 16);
    ok(s.manager, &["attach"]);
    wait_status(&s, "sixteen attached and rebalanced", |r| {
        r.write.nodes.len() == 16 && r.rebalance.is_none() && r.read == r.write
    });
    drop(servers);
}

#[test]
fn rebalance_progress_shows_in_status_and_json() {
    let s = manager(&[]);
    let behaviour = Behaviour {
        finish_phases: false,
        progress: Some((5, 10, 2)),
        ..Behaviour::default()
    };
    let servers = fakes(s.manager, 3, behaviour);
    wait_status(&s, "three servers heard", |r| r.not_attached.len() == 3);
    ok(s.manager, &["attach"]);
    wait_status(&s, "progress from every server", |r| {
        r.progress.len() == 3 && r.progress.iter().all(|p| p.progress.is_some())
    });
    let text = ok(s.manager, &["status"]);
    let head = text
        .lines()
        .find(|l| l.starts_with("rebalance: "))
        .unwrap_or_else(|| panic!("no rebalance line: {text}"));
    assert!(head.starts_with("rebalance: copying, attach "), "{text}");
    assert!(head.ends_with("; 0 of 3 servers done"), "{text}");
    for f in &servers {
        let line = format!("  {}  copying: 5 of 10 records scanned, 2 sent", f.addr);
        assert!(text.contains(&line), "{text}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&ok(s.manager, &["status", "--json"])).expect("status --json is JSON");
    assert_eq!(json["rebalance"]["phase"], "Copying");
    assert_eq!(json["progress"][0]["progress"]["total"], 10);
    // One finishes: the line says so; all finish: reads switch and the drop phase runs.
    servers[0].set(|b| b.finish_phases = true);
    wait_status(&s, "one server done", |r| {
        r.progress.iter().filter(|p| p.done).count() == 1
    });
    assert!(ok(s.manager, &["status"]).contains(&format!("  {}  done\n", servers[0].addr)));
    for f in &servers {
        f.set(|b| b.finish_phases = true);
    }
    wait_status(&s, "the rebalance to end", |r| {
        r.rebalance.is_none() && r.read == r.write
    });
}

#[test]
fn backup_waits_for_every_server_and_reports_failures() {
    let s = manager(&[]);
    let servers = fakes(s.manager, 2, Behaviour::default());
    wait_status(&s, "two servers heard", |r| r.not_attached.len() == 2);
    ok(s.manager, &["attach"]);
    wait_status(&s, "attached", |r| {
        r.rebalance.is_none() && r.write.nodes.len() == 2
    });
    let text = ok(s.manager, &["backup", "nightly"]);
    let mut lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.remove(0), "backup nightly:");
    for (line, addr) in lines.iter().zip(sorted(&servers)) {
        assert_eq!(
            *line,
            format!(
                "  {addr}  done  /fake/{}/db-nightly  (10 records)",
                addr.port()
            )
        );
    }
    // The default suffix is today's date, YYYYMMDD.
    let text = ok(s.manager, &["backup"]);
    let suffix = text
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("backup ")
        .trim_end_matches(':');
    assert!(
        suffix.len() == 8 && suffix.bytes().all(|b| b.is_ascii_digit()),
        "{text}"
    );
    // One server fails: every result is printed and the exit status says it failed.
    servers[1].set(|b| b.backup = Some(Err("disk full".into())));
    let (code, out, err) = kumoctl(s.manager, &["backup", "second"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains(&format!("  {}  failed  disk full", servers[1].addr)),
        "{out}"
    );
    assert!(
        out.contains(&format!("  {}  done", servers[0].addr)),
        "{out}"
    );
    assert!(err.contains("failed on some servers"), "{err}");
    // A server that never answers: the wait ends at --timeout, non-zero.
    servers[1].set(|b| b.backup = None);
    let (code, out, err) = kumoctl(s.manager, &["backup", "third", "--timeout", "1", "--json"]);
    assert_eq!(code, 1, "{out}{err}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(json["complete"], false);
    assert_eq!(json["backup"]["suffix"], "third");
    assert!(err.contains("did not finish within 1 s"), "{err}");
    // Bad suffixes are refused before anything happens.
    let (code, _, err) = kumoctl(s.manager, &["backup", "../x"]);
    assert_eq!(code, 1);
    assert!(err.contains("invalid backup suffix"), "{err}");
}

#[test]
fn auto_replace_switch_and_json_answers() {
    let s = manager(&[]);
    assert_eq!(ok(s.manager, &["enable-auto-replace"]), "true\n");
    let servers = fakes(s.manager, 2, Behaviour::default());
    // Auto-replace attaches new servers after the replace delay (default 4 s) by itself.
    wait_status(&s, "auto attach", |r| {
        r.write.nodes.len() == 2 && r.rebalance.is_none()
    });
    assert_eq!(ok(s.manager, &["disable-auto-replace"]), "false\n");
    let json: serde_json::Value =
        serde_json::from_str(&ok(s.manager, &["enable-auto-replace", "--json"])).unwrap();
    assert_eq!(json["auto_replace"], true);
    let json: serde_json::Value =
        serde_json::from_str(&ok(s.manager, &["replace", "--json"])).unwrap();
    assert_eq!(json, serde_json::json!({"ok": true, "command": "replace"}));
    let report = status(s.manager).unwrap();
    assert!(report.auto_replace);
    drop(servers);
}

#[test]
fn errors_are_clear() {
    let s = manager(&[]);
    let (code, _, err) = kumoctl(s.manager, &["frobnicate"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("unknown command or wrong arguments: frobnicate"),
        "{err}"
    );
    let (code, _, err) = kumoctl(s.manager, &["status", "extra"]);
    assert_eq!(code, 1);
    assert!(err.contains("wrong arguments"), "{err}");
    let (code, _, err) = kumoctl(s.manager, &["backup", "x", "--timeout", "soon"]);
    assert_eq!(code, 1);
    assert!(err.contains("--timeout needs a positive number"), "{err}");
    // No manager there.
    let nobody: SocketAddr = cluster_manager_support::local(support::free_port());
    let (code, _, err) = kumoctl(nobody, &["status"]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("manager {nobody}")), "{err}");
    let out = run_tool("kumoctl", &["no-such-host.invalid".into(), "status".into()]);
    assert_eq!(out.status.code(), Some(1));
    let out = run_tool("kumoctl", &["--help".into()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("enable-auto-replace"));
    drop(s.dir);
}
