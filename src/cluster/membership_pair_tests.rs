//! Unit tests of the manager pair inside the state machine: one driver, forwarding, joins,
//! and who drives when the managers cannot reach each other (see `cluster::pair`).

use super::*;

/// A keepalive from server `n` that also says how recently each manager answered it.
pub(super) fn ka_saying(m: &mut Membership, n: u16, ms: u64, managers: Vec<ManagerContact>) {
    m.keepalive(
        KeepAlive {
            addr: addr(n),
            info: ServerInfo {
                shards: 2,
                stream_port: 19900 + n,
            },
            routing_version: 0,
            progress: None,
            managers,
        },
        at(ms),
    );
}

/// What a server says of manager `mgr(n)`: it answered `silent_ms` ago, offering `write`.
fn heard(n: u16, silent_ms: u64, write: u64) -> Vec<ManagerContact> {
    vec![ManagerContact {
        addr: mgr(n),
        silent_ms,
        write_version: Some(write),
    }]
}

fn pair() -> (Membership, Membership) {
    let a = Membership::new(mgr(1), Some(mgr(2)), config(), None, at(0)).unwrap();
    let b = Membership::new(mgr(2), Some(mgr(1)), config(), None, at(0)).unwrap();
    (a, b)
}

fn sync(from: &mut Membership, to: &mut Membership, ms: u64) {
    let state = from.state().clone();
    let view = from.partner_view(at(ms));
    to.partner_sync(from.me(), state, &view, at(ms)).unwrap();
    let state = to.state().clone();
    let view = to.partner_view(at(ms));
    from.partner_answer(to.me(), state, &view, at(ms), at(ms))
        .unwrap();
}

#[test]
fn the_pair_has_one_driver_and_converges() {
    let (mut a, mut b) = pair();
    assert!(matches!(
        a.command(Command::Attach { replace: true }, at(1), false),
        Outcome::Done(Reply::Error(e)) if e.contains("starting")
    ));
    sync(&mut a, &mut b, 10);
    assert_eq!(a.role(at(10)), Role::Leader);
    assert_eq!(b.role(at(10)), Role::Follower);
    // Server 1 is heard by the follower only: the leader can still attach it.
    ka(&mut b, 1, 20);
    sync(&mut b, &mut a, 20);
    assert_eq!(
        b.command(Command::Attach { replace: true }, at(21), false),
        Outcome::Forward
    );
    run(&mut a, Command::Attach { replace: true }, 21);
    a.tick(at(22));
    assert!(
        a.state().server(addr(1)).is_some(),
        "learned from the partner"
    );
    sync(&mut a, &mut b, 23);
    assert_eq!(a.state(), b.state());
    // The follower does not judge servers down; the leader keeps server 1 alive via the view.
    for ms in (100..3000).step_by(100) {
        let w = a.state().routing.write.version;
        ka_saying(&mut b, 1, ms, heard(1, 50, w));
        b.tick(at(ms));
        sync(&mut b, &mut a, ms);
        a.tick(at(ms));
    }
    assert!(a.state().routing.write.is_active(addr(1)));
    // The leader goes away (its last sync and its last answer to server 1 at 2900): the follower
    // takes over once the timeout passed on both, and drives.
    let w = a.state().routing.write.version;
    for ms in (3000..3900).step_by(100) {
        ka_saying(&mut b, 1, ms, heard(1, ms - 2900, w));
        b.tick(at(ms));
        assert_eq!(b.role(at(ms)), Role::Follower, "at {ms}");
    }
    ka_saying(&mut b, 1, 3900, heard(1, 1000, w));
    assert_eq!(b.role(at(3900)), Role::Leader);
    let epoch = b.state().epoch;
    done_all(&mut b, 4200);
    assert!(b.state().epoch > epoch);
    // The old leader comes back with its older state and catches up.
    sync(&mut a, &mut b, 4300);
    assert_eq!(a.state(), b.state());
    assert_eq!(a.role(at(4300)), Role::Leader);
    assert_eq!(b.role(at(4300)), Role::Follower);
}

#[test]
fn an_unknown_partner_is_refused() {
    let (mut a, _) = pair();
    let err = a
        .partner_sync(
            mgr(3),
            ClusterState::default(),
            &PartnerView::default(),
            at(1),
        )
        .unwrap_err();
    assert!(err.contains("unknown partner"), "{err}");
    let mut solo = machine();
    assert!(solo
        .partner_sync(
            mgr(2),
            ClusterState::default(),
            &PartnerView::default(),
            at(1)
        )
        .is_err());
}

#[test]
fn a_split_pair_joins_to_the_newest_tables() {
    let (mut a, mut b) = pair();
    sync(&mut a, &mut b, 10);
    ka(&mut a, 1, 20);
    run(&mut a, Command::Attach { replace: false }, 21);
    sync(&mut a, &mut b, 22);
    // Partition: servers lost the first manager too (b hears them say so, a still hears server 1),
    // so both drive after the timeout and change routing differently.
    ka_saying(&mut b, 2, 2000, heard(1, 1500, 0));
    ka(&mut a, 1, 2000);
    ka(&mut b, 1, 2000);
    assert_eq!(b.role(at(2000)), Role::Leader);
    run(&mut a, Command::Replace { full: false }, 2001);
    run(&mut b, Command::Attach { replace: true }, 2002);
    let newest = b.state().routing.clone();
    let (ea, eb) = (a.state().epoch, b.state().epoch);
    sync(&mut a, &mut b, 2003);
    assert_eq!(a.state().routing, newest);
    assert_eq!(a.state(), b.state());
    assert!(a.state().epoch > ea.max(eb) || a.state().epoch == eb);
}

/// A cut between the managers while servers hear both: the follower keeps following, refuses
/// commands naming the driver and judges nobody down; the leader decides alone; when servers stop
/// hearing the leader the follower takes over within the timeout; after the heal roles come back.
#[test]
fn a_cut_follower_follows_while_servers_hear_the_leader() {
    let (mut a, mut b) = pair();
    sync(&mut a, &mut b, 10);
    for n in 1..=4 {
        ka(&mut a, n, 20);
    }
    run(&mut a, Command::Attach { replace: false }, 21);
    sync(&mut a, &mut b, 22);
    let before = b.state().clone();
    // The cut: no more syncs. Servers 1 to 3 still hear both; server 4 dies.
    for ms in (100..5000).step_by(100) {
        let w = a.state().routing.write.version;
        for n in 1..=3 {
            ka(&mut a, n, ms);
            ka_saying(&mut b, n, ms, heard(1, 100, w));
        }
        a.tick(at(ms));
        b.tick(at(ms));
        assert_eq!(a.role(at(ms)), Role::Leader, "at {ms}");
        assert_eq!(b.role(at(ms)), Role::Follower, "at {ms}");
    }
    assert!(!b.partner_reachable(at(5000)));
    assert_eq!(routing(&a).write.state_of(addr(4)), Some(NodeState::Fault));
    assert_eq!(b.state(), &before, "the follower changed nothing");
    // A command at the follower is refused, naming the manager that drives.
    match b.command(Command::Attach { replace: true }, at(5000), false) {
        Outcome::Done(Reply::Error(e)) => {
            assert!(e.contains(&format!("partner {} drives", mgr(1))), "{e}")
        }
        other => panic!("{other:?}"),
    }
    let status = b.status(at(5000));
    assert_eq!(status.role, Role::Follower);
    assert_eq!(status.partner.unwrap().servers_hear, Some(true));
    assert!(matches!(
        a.command(Command::Detach { replace: true }, at(5000), false),
        Outcome::Done(Reply::Ok)
    ));
    // The leader dies (its last answer to servers at 5000): the follower takes over within the
    // timeout and is the one that judges server 4 down.
    let w = a.state().routing.write.version;
    let mut took_over = None;
    for ms in (5100..7000).step_by(100) {
        for n in 1..=3 {
            ka_saying(&mut b, n, ms, heard(1, ms - 5000, w));
        }
        b.tick(at(ms));
        if took_over.is_none() && b.role(at(ms)) == Role::Leader {
            took_over = Some(ms);
        }
    }
    assert_eq!(took_over, Some(6000), "one timeout after the last answer");
    assert_eq!(routing(&b).write.state_of(addr(4)), Some(NodeState::Fault));
    // It comes back and the link heals: the pair joins and the first one leads again.
    sync(&mut a, &mut b, 7000);
    assert_eq!(a.state(), b.state());
    assert_eq!(a.role(at(7000)), Role::Leader);
    assert_eq!(b.role(at(7000)), Role::Follower);
}

/// No server tells the follower anything about its partner (it is cut off from everything, or
/// there are no servers): it does not take over, so it cannot mark every server fault alone.
#[test]
fn a_follower_without_news_from_servers_does_not_take_over() {
    let (mut a, mut b) = pair();
    sync(&mut a, &mut b, 10);
    for n in 1..=3 {
        ka(&mut a, n, 20);
        ka(&mut b, n, 20);
    }
    run(&mut a, Command::Attach { replace: false }, 21);
    sync(&mut a, &mut b, 22);
    let before = b.state().clone();
    for ms in (100..10_000).step_by(100) {
        b.tick(at(ms));
        assert_eq!(b.role(at(ms)), Role::Follower, "at {ms}");
    }
    assert_eq!(b.state(), &before);
    assert_eq!(b.status(at(10_000)).partner.unwrap().servers_hear, None);
    match b.command(Command::SetAutoReplace(true), at(10_000), false) {
        Outcome::Done(Reply::Error(e)) => assert!(e.contains("no server"), "{e}"),
        other => panic!("{other:?}"),
    }
}
