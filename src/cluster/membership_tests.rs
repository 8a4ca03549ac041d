//! Unit tests of the manager's state machine, one behaviour at a time (the pair's in
//! [`pair`]). The randomised pair and network simulation is in `tests/cluster_manager_sim`.

use super::*;
use crate::cluster::state::ServerInfo;

const T0: u64 = 1_764_000_000_000;

fn addr(n: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 19800 + n))
}

fn mgr(n: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 19700 + n))
}

fn at(ms: u64) -> Now {
    Now {
        mono_ms: ms,
        wall_ms: T0 + ms,
    }
}

fn config() -> MembershipConfig {
    MembershipConfig {
        fault_after_ms: 1000,
        auto_replace: false,
        replace_delay_ms: 300,
        gc_lag_ms: 5000,
    }
}

fn machine() -> Membership {
    Membership::new(mgr(1), None, config(), None, at(0)).unwrap()
}

fn ka(m: &mut Membership, n: u16, ms: u64) {
    pair::ka_saying(m, n, ms, Vec::new());
}

fn run(m: &mut Membership, command: Command, ms: u64) -> Reply {
    match m.command(command, at(ms), false) {
        Outcome::Done(reply) => reply,
        Outcome::Forward => panic!("forwarded"),
    }
}

fn done_all(m: &mut Membership, ms: u64) {
    let r = m.state().routing.rebalance.clone().expect("a rebalance");
    for server in r.waiting {
        run(
            m,
            Command::PhaseDone {
                addr: server,
                target: r.target,
            },
            ms,
        );
    }
}

fn routing(m: &Membership) -> &crate::cluster::state::RoutingState {
    &m.state().routing
}

#[test]
fn servers_appear_not_attached_then_attach() {
    let mut m = machine();
    for n in 1..=3 {
        ka(&mut m, n, 0);
    }
    assert_eq!(
        m.status(at(0)).not_attached,
        vec![addr(1), addr(2), addr(3)]
    );
    assert_eq!(m.state().servers.len(), 3);
    let epoch = m.state().epoch;
    assert_eq!(
        run(&mut m, Command::Attach { replace: false }, 10),
        Reply::Ok
    );
    assert!(m.state().epoch > epoch);
    assert!(m.status(at(10)).not_attached.is_empty());
    assert_eq!(routing(&m).write.active().count(), 3);
    // Without replace, reads still follow the old (empty) table, and the status says so.
    assert_ne!(routing(&m).read, routing(&m).write);
    assert!(routing(&m).rebalance.is_none());
}

#[test]
fn attach_with_replace_copies_then_switches_reads_then_drops() {
    let mut m = machine();
    for n in 1..=3 {
        ka(&mut m, n, 0);
    }
    run(&mut m, Command::Attach { replace: true }, 1);
    done_all(&mut m, 2);
    done_all(&mut m, 3);
    assert!(routing(&m).is_settled());
    ka(&mut m, 4, 4);
    run(&mut m, Command::Attach { replace: true }, 5);
    let r = routing(&m).rebalance.clone().unwrap();
    assert_eq!((r.phase, r.total), (Phase::Copying, 4));
    assert_eq!(r.target, routing(&m).write.version);
    assert_eq!(routing(&m).read.active().count(), 3);
    for n in 1..=3 {
        run(
            &mut m,
            Command::PhaseDone {
                addr: addr(n),
                target: r.target,
            },
            6,
        );
    }
    assert_ne!(
        routing(&m).read,
        routing(&m).write,
        "switched before all copied"
    );
    run(
        &mut m,
        Command::PhaseDone {
            addr: addr(4),
            target: r.target,
        },
        7,
    );
    assert_eq!(routing(&m).read, routing(&m).write);
    assert_eq!(
        routing(&m).rebalance.as_ref().unwrap().phase,
        Phase::Dropping
    );
    done_all(&mut m, 8);
    assert!(routing(&m).is_settled());
}

#[test]
fn attaching_many_servers_at_once() {
    let mut m = machine();
    for n in 1..=40 {
        ka(&mut m, n, 0);
    }
    run(&mut m, Command::Attach { replace: true }, 1);
    assert_eq!(routing(&m).write.active().count(), 40);
    assert_eq!(routing(&m).rebalance.as_ref().unwrap().total, 40);
    assert!(m.state().snapshot().is_ok());
}

#[test]
fn silent_server_becomes_fault_and_recovers_on_attach() {
    let mut m = machine();
    for n in 1..=3 {
        ka(&mut m, n, 0);
    }
    run(&mut m, Command::Attach { replace: true }, 1);
    done_all(&mut m, 2);
    done_all(&mut m, 3);
    ka(&mut m, 1, 900);
    ka(&mut m, 2, 900);
    m.tick(at(999));
    assert!(routing(&m).write.is_active(addr(3)));
    let version = routing(&m).write.version;
    m.tick(at(1000));
    assert_eq!(routing(&m).write.state_of(addr(3)), Some(NodeState::Fault));
    assert_eq!(routing(&m).read, routing(&m).write);
    assert!(routing(&m).write.version > version);
    // It comes back: listed as not attached (and still fault) until attach recovers it.
    ka(&mut m, 3, 1100);
    assert_eq!(m.status(at(1100)).not_attached, vec![addr(3)]);
    run(&mut m, Command::Attach { replace: false }, 1101);
    assert!(routing(&m).write.is_active(addr(3)));
    // Detach has nothing to remove now.
    let version = routing(&m).write.version;
    run(&mut m, Command::Detach { replace: false }, 1102);
    assert_eq!(routing(&m).write.version, version);
}

#[test]
fn detach_removes_fault_servers_and_rebalances() {
    let mut m = machine();
    ka(&mut m, 1, 0);
    ka(&mut m, 2, 0);
    run(&mut m, Command::Attach { replace: true }, 1);
    done_all(&mut m, 2);
    done_all(&mut m, 3);
    ka(&mut m, 1, 1500);
    m.tick(at(1500));
    run(&mut m, Command::Detach { replace: true }, 1501);
    assert_eq!(routing(&m).write.nodes, vec![(addr(1), NodeState::Active)]);
    let r = routing(&m).rebalance.clone().unwrap();
    assert_eq!(r.waiting.len(), 1);
    assert_eq!(
        m.status(at(1501)).rebalance_run.unwrap().reason,
        "detach 127.0.0.1:19802"
    );
}

#[test]
fn losing_a_sender_restarts_the_copy_under_a_new_target() {
    let mut m = machine();
    for n in 1..=3 {
        ka(&mut m, n, 0);
    }
    run(&mut m, Command::Attach { replace: true }, 1);
    done_all(&mut m, 2);
    done_all(&mut m, 3);
    ka(&mut m, 4, 100);
    run(&mut m, Command::Attach { replace: true }, 100);
    let first = routing(&m).rebalance.clone().unwrap();
    for n in [1, 2, 4] {
        run(
            &mut m,
            Command::PhaseDone {
                addr: addr(n),
                target: first.target,
            },
            200,
        );
    }
    // Server 3 (a sender under the read table) goes silent before it reports.
    for n in [1, 2, 4] {
        ka(&mut m, n, 1050);
    }
    m.tick(at(1050));
    let second = routing(&m).rebalance.clone().unwrap();
    assert_eq!(second.phase, Phase::Copying, "reads must not switch");
    assert!(second.target > first.target);
    assert_eq!(second.waiting.len(), 3);
    let run_notes = m.status(at(1050)).rebalance_run.unwrap();
    assert_eq!(run_notes.attempt, 2);
    assert_eq!(
        run_notes.restarted_because.as_deref(),
        Some("lost 127.0.0.1:19803")
    );
    // Reports of the first attempt no longer count.
    run(
        &mut m,
        Command::PhaseDone {
            addr: addr(1),
            target: first.target,
        },
        1051,
    );
    assert_eq!(routing(&m).rebalance.as_ref().unwrap().waiting.len(), 3);
    done_all(&mut m, 1052);
    assert_eq!(
        routing(&m).rebalance.as_ref().unwrap().phase,
        Phase::Dropping
    );
}

#[test]
fn restored_state_gives_attached_servers_one_window() {
    let mut m = machine();
    ka(&mut m, 1, 0);
    ka(&mut m, 2, 0);
    run(&mut m, Command::Attach { replace: true }, 1);
    done_all(&mut m, 2);
    done_all(&mut m, 3);
    let saved = m.state().clone();
    let mut m = Membership::new(mgr(1), None, config(), Some(saved.clone()), at(50_000)).unwrap();
    assert_eq!(m.state(), &saved);
    assert!(m.clock() >= saved.epoch);
    m.tick(at(50_500));
    assert!(routing(&m).write.is_active(addr(1)));
    assert!(!m.horizon_may_advance(at(50_500)), "assumed is not heard");
    ka(&mut m, 1, 50_900);
    m.tick(at(51_000));
    assert!(routing(&m).write.is_active(addr(1)));
    assert_eq!(routing(&m).write.state_of(addr(2)), Some(NodeState::Fault));
}

#[test]
fn auto_replace_waits_for_quiet_then_attaches_and_detaches() {
    let mut m = Membership::new(
        mgr(1),
        None,
        MembershipConfig {
            auto_replace: true,
            ..config()
        },
        None,
        at(0),
    )
    .unwrap();
    assert!(m.state().auto_replace.value);
    ka(&mut m, 1, 0);
    m.tick(at(10));
    ka(&mut m, 2, 200);
    m.tick(at(200));
    m.tick(at(400));
    assert!(
        routing(&m).write.nodes.is_empty(),
        "the second join restarted the delay"
    );
    m.tick(at(500));
    assert_eq!(routing(&m).write.active().count(), 2);
    assert!(routing(&m).rebalance.is_some());
    done_all(&mut m, 510);
    done_all(&mut m, 520);
    // Server 2 dies: marked fault, then detached after the delay, with a rebalance.
    for ms in (600..=1300).step_by(100) {
        ka(&mut m, 1, ms);
        m.tick(at(ms));
    }
    assert_eq!(routing(&m).write.state_of(addr(2)), Some(NodeState::Fault));
    for ms in (1400..=2000).step_by(100) {
        ka(&mut m, 1, ms);
        m.tick(at(ms));
    }
    assert_eq!(routing(&m).write.nodes, vec![(addr(1), NodeState::Active)]);
    assert_eq!(
        m.status(at(2000)).rebalance_run.unwrap().reason,
        "auto-replace"
    );
}

#[test]
fn auto_replace_can_be_switched_at_runtime() {
    let mut m = machine();
    ka(&mut m, 1, 0);
    assert_eq!(
        run(&mut m, Command::SetAutoReplace(true), 1),
        Reply::AutoReplace(true)
    );
    m.tick(at(2));
    assert!(
        routing(&m).write.is_active(addr(1)),
        "enabling acts at once"
    );
    assert_eq!(
        run(&mut m, Command::SetAutoReplace(false), 3),
        Reply::AutoReplace(false)
    );
    ka(&mut m, 2, 4);
    m.tick(at(2000));
    assert!(!routing(&m).write.is_active(addr(2)));
}

#[test]
fn horizon_advances_only_when_settled_and_everyone_is_heard() {
    let mut m = machine();
    let heartbeat = |m: &mut Membership, ms: u64, servers: &[u16]| {
        for n in servers {
            ka(m, *n, ms);
        }
        m.tick(at(ms));
    };
    heartbeat(&mut m, 0, &[1, 2]);
    assert_eq!(m.state().gc_horizon, 0, "no server attached");
    run(&mut m, Command::Attach { replace: true }, 1);
    heartbeat(&mut m, 10_000, &[1, 2]);
    assert_eq!(m.state().gc_horizon, 0, "a rebalance runs");
    done_all(&mut m, 10_001);
    heartbeat(&mut m, 10_002, &[1, 2]);
    assert_eq!(m.state().gc_horizon, 0, "still dropping");
    done_all(&mut m, 10_003);
    heartbeat(&mut m, 10_004, &[1, 2]);
    let h = m.state().gc_horizon;
    assert_eq!(h, version_at(T0 + 10_004 - 5000));
    // Small steps are skipped so the snapshot does not change on every tick.
    heartbeat(&mut m, 10_800, &[1, 2]);
    assert_eq!(m.state().gc_horizon, h);
    heartbeat(&mut m, 11_100, &[1, 2]);
    assert!(m.state().gc_horizon > h);
    // Server 2 goes silent: marked fault, the horizon freezes.
    let h = m.state().gc_horizon;
    for ms in (11_200..14_000).step_by(200) {
        heartbeat(&mut m, ms, &[1]);
    }
    assert_eq!(routing(&m).write.state_of(addr(2)), Some(NodeState::Fault));
    assert_eq!(m.state().gc_horizon, h);
}

#[test]
fn backup_order_results_and_failures() {
    let mut m = machine();
    for n in 1..=3 {
        ka(&mut m, n, 0);
    }
    assert!(matches!(
        run(&mut m, Command::Backup { suffix: "x".into() }, 1),
        Reply::Error(e) if e.contains("no active server")
    ));
    run(&mut m, Command::Attach { replace: false }, 1);
    assert!(matches!(
        run(&mut m, Command::Backup { suffix: "../etc".into() }, 2),
        Reply::Error(e) if e.contains("invalid backup suffix")
    ));
    let Reply::Backup(report) = run(
        &mut m,
        Command::Backup {
            suffix: "20250101".into(),
        },
        2,
    ) else {
        panic!("no report")
    };
    assert_eq!(report.servers.len(), 3);
    let order = m.state().snapshot().unwrap().backup.unwrap();
    assert_eq!((order.id, order.suffix.as_str()), (report.id, "20250101"));
    let done = BackupState::Done {
        path: "/d/x".into(),
        records: 5,
    };
    assert_eq!(
        m.backup_done(addr(1), report.id, done.clone(), at(3)),
        Reply::Ok
    );
    assert!(matches!(
        m.backup_done(addr(1), 1, done.clone(), at(3)),
        Reply::Error(_)
    ));
    assert!(matches!(
        m.backup_done(addr(9), report.id, done.clone(), at(3)),
        Reply::Error(_)
    ));
    m.backup_done(
        addr(2),
        report.id,
        BackupState::Failed("disk full".into()),
        at(4),
    );
    // Server 3 dies before it finishes: its part fails and the order leaves the snapshot.
    ka(&mut m, 1, 900);
    ka(&mut m, 2, 900);
    m.tick(at(1500));
    let report = m.backup_report(report.id).unwrap();
    assert!(matches!(&report.servers[2].1, BackupState::Failed(why) if why.contains("down")));
    assert_eq!(report.servers[0].1, done);
    assert!(m.state().snapshot().unwrap().backup.is_none());
}

#[test]
fn a_manager_older_than_the_servers_says_so() {
    let mut m = machine();
    ka(&mut m, 1, 0);
    assert_eq!(m.stale_warning(), None);
    m.keepalive(
        KeepAlive {
            addr: addr(2),
            info: ServerInfo {
                shards: 1,
                stream_port: 1,
            },
            routing_version: version_at(T0) + 99,
            progress: None,
            managers: Vec::new(),
        },
        at(1),
    );
    let warning = m.stale_warning().unwrap();
    assert!(
        warning.contains("127.0.0.1:19802 has routing tables"),
        "{warning}"
    );
    assert_eq!(m.status(at(1)).warnings, vec![warning]);
    // Once this manager has tables (here: a deliberate new start), the warning goes.
    run(&mut m, Command::Attach { replace: false }, 2);
    assert_eq!(m.stale_warning(), None);
}

#[test]
fn attach_with_nothing_new_leaves_a_running_rebalance_alone() {
    let mut m = machine();
    for n in 1..=3 {
        ka(&mut m, n, 0);
    }
    run(&mut m, Command::Attach { replace: true }, 1);
    done_all(&mut m, 2);
    let dropping = routing(&m).rebalance.clone().unwrap();
    assert_eq!(dropping.phase, Phase::Dropping);
    run(&mut m, Command::Attach { replace: true }, 3);
    run(&mut m, Command::Detach { replace: true }, 3);
    assert_eq!(routing(&m).rebalance.as_ref(), Some(&dropping));
    // An explicit replace restarts it.
    run(&mut m, Command::Replace { full: false }, 4);
    assert_eq!(
        routing(&m).rebalance.as_ref().unwrap().phase,
        Phase::Copying
    );
}

/// A manager that did not run for a while (the host froze) does not judge servers down for its
/// own silence: each gets a fault window to be heard again.
#[test]
fn a_manager_back_from_a_stall_gives_servers_a_fault_window() {
    let mut m = machine();
    ka(&mut m, 1, 0);
    ka(&mut m, 2, 0);
    run(&mut m, Command::Attach { replace: false }, 1);
    // Nothing ran from 100 to 3000.
    m.resumed(at(3000));
    m.tick(at(3000));
    assert_eq!(routing(&m).write.active().count(), 2);
    ka(&mut m, 1, 3100);
    m.tick(at(4000));
    assert_eq!(routing(&m).write.state_of(addr(1)), Some(NodeState::Active));
    assert_eq!(routing(&m).write.state_of(addr(2)), Some(NodeState::Fault));
}

#[path = "membership_pair_tests.rs"]
mod pair;
