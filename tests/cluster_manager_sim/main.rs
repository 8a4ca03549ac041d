//! Deterministic simulation of a manager pair and fake servers over a lossy network.
//!
//! Two [`Membership`] machines and a handful of fake servers exchange the messages the real
//! processes exchange (keepalives and snapshot answers, phase reports, pair syncs, forwarded
//! commands). A seeded RNG decides every delay and drop, cuts links (partitions) for a while,
//! crashes and restarts servers and managers (a restarted manager loads the state it had persisted),
//! and plays an operator who attaches, detaches, replaces and orders backups on either manager.
//! After every step the invariants of issue 5 are checked:
//!
//! - no manager's state epoch, write-table version or horizon ever goes back;
//! - reads switch (end of a copy phase) only when every server that is active in the read table
//!   before and after the switch finished copying that very target;
//! - the horizon advances only while the deciding manager sees every server of the write table
//!   active, no rebalance and equal tables, and never while a server of the write table has been
//!   down longer than failure detection can take;
//! - both managers drive at once only shortly after the network lost messages at random (news
//!   from servers about the leader may be lost then): cuts between the managers or between a
//!   manager and servers, crashes and restarts never make both drive;
//! - after the network heals, the managers converge to one state (same epoch), every live server
//!   adopts it, and an attach then completes its rebalance and a backup completes.
//!
//! `KUMO_HEAVY=1` runs many more schedules; `KUMO_SIM_SCHEDULES=N KUMO_SIM_FIRST_SEED=S` runs
//! seeds `S..S+N`, and `KUMO_SIM_TRACE=FILE` writes the whole trace of a failing schedule there.
//!
//! Below the schedules, one test per situation of a pair cut off from itself (`cluster::pair`).

mod events;
mod world;

use kumofs::cluster::membership::{Command, Outcome, Reply};
use kumofs::cluster::pair::Role;
use kumofs::ring::NodeState;
use kumofs::rpc::messages::BackupState;
use world::{Node, Sim, Stats, FAULT_AFTER, KEEPALIVE, MAX_DELAY, STEP, SYNC};

fn run_schedule(seed: u64) -> Stats {
    let mut sim = Sim::new(seed, 3 + (seed % 3) as usize);
    // Start: everyone up, attach through either manager.
    sim.run_for(3000);
    let i = (seed % 2) as usize;
    sim.run_command_checked(i, Command::Attach { replace: true });
    // Chaos.
    for _ in 0..(40_000 / STEP) {
        if sim.rng.chance(30) {
            sim.chaos();
        }
        sim.step();
    }
    // Heal and let everything settle.
    sim.heal();
    sim.run_for(4 * FAULT_AFTER);
    let leader = sim.leader();
    sim.run_command_checked(leader, Command::Attach { replace: true });
    let mut waited = 0;
    while waited < 60_000 {
        sim.run_for(STEP);
        waited += STEP;
        let state = sim.mgrs[leader].m.as_ref().unwrap().state();
        if state.routing.is_settled() && sim.converged() {
            break;
        }
    }
    let state = sim.mgrs[leader].m.as_ref().unwrap().state().clone();
    if !state.routing.is_settled() {
        sim.fail(format!(
            "the rebalance did not finish after healing: {:?}",
            state.routing
        ));
    }
    if !sim.converged() {
        let epochs: Vec<u64> = sim.srvs.iter().map(|s| s.epoch).collect();
        sim.fail(format!("no convergence: manager states differ or servers lag (servers {epochs:?}, managers {} {})",
            sim.mgrs[0].m.as_ref().unwrap().state().epoch, sim.mgrs[1].m.as_ref().unwrap().state().epoch));
    }
    if state.routing.write.active().count() != sim.srvs.len() {
        sim.fail(format!(
            "not every server is attached after the final attach: {:?}",
            state.routing.write
        ));
    }
    // A backup ordered now completes on every server.
    sim.run_command_checked(
        leader,
        Command::Backup {
            suffix: "final".into(),
        },
    );
    sim.run_for(10_000);
    let report = sim.mgrs[1 - leader]
        .m
        .as_ref()
        .unwrap()
        .state()
        .backup
        .clone()
        .unwrap();
    if report.suffix != "final"
        || report
            .servers
            .iter()
            .any(|(_, s)| !matches!(s, BackupState::Done { .. }))
    {
        sim.fail(format!("the final backup did not complete: {report:?}"));
    }
    sim.stats
}

#[test]
fn pair_and_servers_keep_the_invariants_under_loss_partitions_and_crashes() {
    let schedules = match std::env::var("KUMO_SIM_SCHEDULES") {
        Ok(n) => n.parse().expect("KUMO_SIM_SCHEDULES is a number"),
        Err(_) if std::env::var_os("KUMO_HEAVY").is_some() => 3000,
        Err(_) => 150,
    };
    let mut total = Stats::default();
    let first: u64 = std::env::var("KUMO_SIM_FIRST_SEED")
        .map_or(0, |s| s.parse().expect("KUMO_SIM_FIRST_SEED is a number"));
    for seed in first..first + schedules {
        let s = run_schedule(seed);
        total.switches += s.switches;
        total.restarts += s.restarts;
        total.horizon_steps += s.horizon_steps;
        total.leaders_at_once += s.leaders_at_once;
        total.manager_restarts += s.manager_restarts;
        total.deferred += s.deferred;
        total.takeovers += s.takeovers;
    }
    println!("{schedules} schedules: {total:?}");
    // The schedules must exercise what they check.
    assert!(total.switches > schedules, "{total:?}");
    assert!(total.restarts > 0, "{total:?}");
    assert!(total.horizon_steps > schedules, "{total:?}");
    assert!(total.manager_restarts > 0, "{total:?}");
    // The follower was cut off from a live leader and did not drive, and took over from a dead one.
    assert!(total.deferred > 0, "{total:?}");
    assert!(total.takeovers > 0, "{total:?}");
}

#[test]
fn both_managers_restarting_do_not_take_a_dead_server_for_alive() {
    let mut sim = Sim::new(11, 3);
    sim.run_for(3000);
    sim.run_command_checked(0, Command::Attach { replace: true });
    sim.run_for(8000);
    assert!(sim.mgrs[0].m.as_ref().unwrap().state().routing.is_settled());
    // Both managers stop; while they are away server 3 dies; then both come back.
    sim.mgrs[0].m = None;
    sim.mgrs[1].m = None;
    sim.run_for(1000);
    sim.srvs[2].up = false;
    sim.srvs[2].down_since = Some(sim.now);
    sim.run_for(10_000);
    let horizon = sim.mgrs[0].persisted.gc_horizon;
    sim.restart_manager(0);
    sim.restart_manager(1);
    // Every tick is checked by `decide`: no horizon step while server 3 is assumed alive.
    sim.run_for(2 * FAULT_AFTER + 1000);
    let state = sim.mgrs[0].m.as_ref().unwrap().state().clone();
    assert_eq!(
        state.routing.write.state_of(sim.srvs[2].addr),
        Some(kumofs::ring::NodeState::Fault)
    );
    assert_eq!(state.gc_horizon, horizon);
}

#[test]
fn a_quiet_network_converges_in_a_few_rounds() {
    let mut sim = Sim::new(7, 3);
    sim.run_for(3000);
    sim.run_command_checked(1, Command::Attach { replace: true });
    sim.run_for(6000);
    let mut waited = 0;
    while !sim.converged() {
        assert!(waited < 5000, "no convergence on a quiet network");
        sim.run_for(STEP);
        waited += STEP;
    }
    let state = sim.mgrs[0].m.as_ref().unwrap().state();
    assert!(state.routing.is_settled());
    assert_eq!(state.routing.write.active().count(), 3);
    assert!(state.gc_horizon > 0, "the horizon moves once all is well");
}

// Who drives in a pair cut off from itself (`cluster::pair`), one situation at a time.

/// A settled cluster of `servers` attached through manager 0, the pair in touch.
fn settled(seed: u64, servers: usize) -> Sim {
    let mut sim = Sim::new(seed, servers);
    sim.run_for(3000);
    sim.run_command_checked(0, Command::Attach { replace: true });
    sim.run_for(8000);
    assert!(sim.mgrs[0].m.as_ref().unwrap().state().routing.is_settled());
    assert!(sim.converged());
    assert_eq!(sim.role(0), Role::Leader);
    assert_eq!(sim.role(1), Role::Follower);
    sim
}

/// Runs `ms`, checking `each` after every step.
fn run_checking(sim: &mut Sim, ms: u64, mut each: impl FnMut(&Sim)) {
    let end = sim.now + ms;
    while sim.now < end {
        sim.step();
        each(sim);
    }
}

fn error_of(outcome: Option<Outcome>) -> String {
    match outcome {
        Some(Outcome::Done(Reply::Error(e))) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn kill_server(sim: &mut Sim, s: usize) {
    sim.srvs[s].up = false;
    sim.srvs[s].down_since = Some(sim.now);
}

/// The manager link is cut while servers reach both: only the leader makes membership decisions
/// (an attach through the follower is refused naming the leader, an attach through the leader and
/// its rebalance go through, two lost servers are marked fault by the leader alone); after the heal
/// the pair converges on the leader's decisions and the roles are as before.
#[test]
fn a_cut_between_the_managers_leaves_one_driver() {
    let mut sim = settled(21, 3);
    let follower_state = sim.state(1).clone();
    sim.cuts.push((Node::M(0), Node::M(1), u64::MAX));
    let follower_never_drives = |sim: &Sim| {
        assert_ne!(sim.role(1), Role::Leader, "t={}", sim.now);
        assert_eq!(
            sim.state(1),
            &follower_state,
            "the follower changed its state"
        );
    };
    run_checking(&mut sim, 3 * FAULT_AFTER, follower_never_drives);
    assert_eq!(sim.role(0), Role::Leader);
    assert_eq!(sim.role(1), Role::Follower);
    assert!(!sim.mgrs[1]
        .m
        .as_ref()
        .unwrap()
        .partner_reachable(sim.mgr_now(1)));

    sim.add_server();
    run_checking(&mut sim, 2 * KEEPALIVE, follower_never_drives);
    let refused = error_of(sim.command(1, Command::Attach { replace: true }));
    let leader = sim.mgrs[0].addr.to_string();
    assert!(
        refused.contains(&format!("partner {leader} drives")),
        "{refused}"
    );
    assert_eq!(
        sim.command(0, Command::Attach { replace: true }),
        Some(Outcome::Done(Reply::Ok))
    );
    run_checking(&mut sim, 10_000, follower_never_drives);
    let routing = &sim.state(0).routing;
    assert!(routing.is_settled(), "{routing:?}");
    assert_eq!(routing.write.active().count(), 4);

    kill_server(&mut sim, 0);
    kill_server(&mut sim, 1);
    run_checking(&mut sim, 2 * FAULT_AFTER, follower_never_drives);
    for s in [0, 1] {
        let addr = sim.srvs[s].addr;
        assert_eq!(
            sim.state(0).routing.write.state_of(addr),
            Some(NodeState::Fault)
        );
    }

    sim.cuts.clear();
    sim.run_for(2 * SYNC + 2 * MAX_DELAY);
    assert_eq!(
        sim.state(0),
        sim.state(1),
        "the pair did not converge after the heal"
    );
    assert_eq!(sim.role(0), Role::Leader);
    assert_eq!(sim.role(1), Role::Follower);
    assert_eq!(sim.state(1).routing.write.fault().count(), 2);
}

/// The leader dies: once servers stopped hearing it for the timeout the follower takes over,
/// with the link to it cut beforehand or not; when it comes back the roles are as before.
#[test]
fn the_follower_takes_over_when_servers_stop_hearing_the_leader() {
    for cut_first in [false, true] {
        let mut sim = settled(22, 3);
        if cut_first {
            sim.cuts.push((Node::M(0), Node::M(1), u64::MAX));
            sim.run_for(2 * FAULT_AFTER);
            assert_eq!(sim.role(1), Role::Follower);
        }
        let died = sim.now;
        sim.mgrs[0].m = None;
        while sim.role(1) != Role::Leader {
            sim.step();
            assert!(sim.now - died < 3 * FAULT_AFTER, "no take-over");
        }
        // The servers' last answers from it were at most a delay after it died; their reports of
        // the silence come with the next keepalive after a timeout.
        let bound = FAULT_AFTER + KEEPALIVE + 2 * MAX_DELAY + STEP;
        assert!(
            sim.now - died <= bound,
            "took over after {} ms",
            sim.now - died
        );
        // It drives: a lost server is marked fault.
        kill_server(&mut sim, 2);
        sim.run_for(FAULT_AFTER + 2 * KEEPALIVE);
        let lost = sim.srvs[2].addr;
        assert_eq!(
            sim.state(1).routing.write.state_of(lost),
            Some(NodeState::Fault)
        );
        // Back, and the link heals.
        sim.cuts.clear();
        sim.restart_manager(0);
        sim.run_for(FAULT_AFTER);
        assert_eq!(sim.role(0), Role::Leader);
        assert_eq!(sim.role(1), Role::Follower);
        assert_eq!(
            sim.state(0).routing.write.state_of(lost),
            Some(NodeState::Fault)
        );
    }
}

/// A follower that restarts while the manager link is cut (from its state file, possibly old)
/// catches up as far as it can and stays a follower: servers hear the leader.
#[test]
fn a_follower_restarted_during_a_cut_stays_a_follower() {
    let mut sim = settled(23, 3);
    sim.cuts.push((Node::M(0), Node::M(1), u64::MAX));
    sim.mgrs[1].m = None;
    sim.run_for(1000);
    sim.restart_manager(1);
    run_checking(&mut sim, 4 * FAULT_AFTER, |sim| {
        assert_ne!(sim.role(1), Role::Leader, "t={}", sim.now)
    });
    assert_eq!(sim.role(0), Role::Leader);
}

/// The leader is away long enough for the follower to take over and attach a server; it comes back
/// from its old state file while the link is cut: it follows the partner (servers hear that one
/// with newer routing) instead of undoing the attach; after the heal it takes the newer state and
/// leads again.
#[test]
fn a_leader_back_with_an_older_state_follows_the_partner_that_drove() {
    let mut sim = settled(24, 3);
    sim.mgrs[0].m = None;
    sim.run_for(2 * FAULT_AFTER);
    assert_eq!(sim.role(1), Role::Leader);
    sim.add_server();
    sim.run_for(2 * KEEPALIVE);
    assert_eq!(
        sim.command(1, Command::Attach { replace: true }),
        Some(Outcome::Done(Reply::Ok))
    );
    sim.run_for(10_000);
    let newer = sim.state(1).routing.clone();
    assert!(newer.is_settled() && newer.write.active().count() == 4);
    sim.cuts.push((Node::M(0), Node::M(1), u64::MAX));
    // What the partner sent before the cut is delivered (or lost) before the restart.
    sim.run_for(MAX_DELAY + STEP);
    sim.restart_manager(0);
    assert!(sim.state(0).routing.write.version < newer.write.version);
    run_checking(&mut sim, 4 * FAULT_AFTER, |sim| {
        let news = |i: usize| {
            let m = sim.mgrs[i].m.as_ref().unwrap();
            (
                m.servers_hear_partner(sim.mgr_now(i)),
                m.state().routing.write.version,
            )
        };
        assert_ne!(
            sim.role(0),
            Role::Leader,
            "t={} {:?} {:?}",
            sim.now,
            news(0),
            news(1)
        );
        assert_eq!(
            sim.role(1),
            Role::Leader,
            "t={} {:?} {:?}",
            sim.now,
            news(0),
            news(1)
        );
    });
    assert_eq!(sim.state(1).routing, newer, "the attach stands");
    sim.cuts.clear();
    sim.run_for(2 * SYNC + 2 * MAX_DELAY);
    assert_eq!(sim.role(0), Role::Leader);
    assert_eq!(sim.role(1), Role::Follower);
    assert_eq!(sim.state(0).routing, newer);
}

/// A follower cut off from its partner and from every server hears nothing about the leader: it
/// does not take over (it would mark every server fault), and changes nothing.
#[test]
fn a_follower_cut_off_from_everything_does_not_drive() {
    let mut sim = settled(25, 3);
    let before = sim.state(1).clone();
    sim.cuts.push((Node::M(0), Node::M(1), u64::MAX));
    for s in 0..sim.srvs.len() {
        sim.cuts.push((Node::S(s), Node::M(1), u64::MAX));
    }
    run_checking(&mut sim, 5 * FAULT_AFTER, |sim| {
        assert_ne!(sim.role(1), Role::Leader, "t={}", sim.now)
    });
    assert_eq!(sim.state(1), &before);
    let refused = error_of(sim.command(1, Command::Detach { replace: true }));
    assert!(refused.contains("no server"), "{refused}");
}
