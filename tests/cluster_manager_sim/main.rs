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
//! - after the network heals, the managers converge to one state (same epoch), every live server
//!   adopts it, and an attach then completes its rebalance and a backup completes.
//!
//! `KUMO_HEAVY=1` runs many more schedules.

mod events;
mod world;

use kumofs::cluster::membership::Command;
use kumofs::rpc::messages::BackupState;
use world::{Sim, Stats, FAULT_AFTER, STEP};

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
    for seed in 0..schedules {
        let s = run_schedule(seed);
        total.switches += s.switches;
        total.restarts += s.restarts;
        total.horizon_steps += s.horizon_steps;
        total.leaders_at_once += s.leaders_at_once;
        total.manager_restarts += s.manager_restarts;
    }
    println!("{schedules} schedules: {total:?}");
    // The schedules must exercise what they check.
    assert!(total.switches > schedules, "{total:?}");
    assert!(total.restarts > 0, "{total:?}");
    assert!(total.horizon_steps > schedules, "{total:?}");
    assert!(total.leaders_at_once > 0, "{total:?}");
    assert!(total.manager_restarts > 0, "{total:?}");
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
