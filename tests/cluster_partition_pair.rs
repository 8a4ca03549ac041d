//! The manager pair split by a cut, with real processes: each manager reaches its partner only
//! through a fault proxy (`kumo-manager -p PARTNER --partner-via PROXY`), while servers, the
//! gateway and kumoctl reach both directly. Cutting both proxies splits the pair and nothing else.
//!
//! Servers still hear both managers, so only the leader drives (`cluster::pair`): the follower
//! keeps serving status and routing, refuses membership commands naming the leader, and changes
//! nothing of its own.
//!
//! - Split (a cut, or a blackhole): an attach through the follower is refused, one through the
//!   leader runs its rebalance; the leader's horizon keeps moving while the follower's state stays
//!   as it was; every server routes with the leader's table; healed, both converge on the same
//!   routing, every server follows it, no acknowledged write is lost and every key has its three
//!   copies.
//! - Split, then two of the old servers die: the leader alone marks them fault (the follower, with
//!   a shorter fault window, marks nothing). This is the case that lost about 1400 of 6500
//!   acknowledged keys when both managers drove during a split (the follower's table without the
//!   attached server won at the heal after the attach's drop phase ran); now nothing is lost, and
//!   once the two come back and rejoin every key has its three copies again.

mod cluster_manager_support;
mod cluster_support;
mod fault_proxy;
mod server_support;
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use cluster_manager_support::{local, logs_in, manager_addr, start_manager, status};
use cluster_support::{check_copies, read_all, wait_adopted, wait_or, ServerProc, Writer};
use fault_proxy::{FaultProxy, Mode};
use kumofs::cluster::membership::StatusReport;
use kumofs::cluster::pair::Role;
use kumofs::ring::NodeState;
use server_support::DataClient;
use support::{bin, free_port, kumoctl, wait_for_port, Daemon};

const WAIT: Duration = Duration::from_secs(30);

/// Two managers linked through proxies, servers and a gateway (text protocol) using both.
struct SplitPair {
    dir: tempfile::TempDir,
    /// The manager with the smaller address (it drives while the pair is whole) and the other.
    first: SocketAddr,
    second: SocketAddr,
    to_first: FaultProxy,
    to_second: FaultProxy,
    _managers: Vec<Daemon>,
    servers: Vec<ServerProc>,
    gateway: Option<Daemon>,
    text: SocketAddr,
}

impl SplitPair {
    /// `first_args` and `second_args` are more options for each manager; `n` servers attached.
    fn start(n: usize, first_args: &[&str], second_args: &[&str]) -> SplitPair {
        let dir = tempfile::tempdir().unwrap();
        let (x, y) = (manager_addr(), manager_addr());
        let (first, second) = (x.min(y), x.max(y));
        let to_first = FaultProxy::start(first);
        let to_second = FaultProxy::start(second);
        let start =
            |name: &str, me: SocketAddr, partner: SocketAddr, via: SocketAddr, more: &[&str]| {
                let via = via.to_string();
                let mut args = vec!["--partner-via", via.as_str()];
                args.extend_from_slice(more);
                start_manager(
                    dir.path(),
                    name,
                    me,
                    Some(partner),
                    &dir.path().join(name),
                    &args,
                )
            };
        let managers = vec![
            start("first", first, second, to_second.addr, first_args),
            start("second", second, first, to_first.addr, second_args),
        ];
        let mut pair = SplitPair {
            text: local(free_port()),
            gateway: None,
            dir,
            first,
            second,
            to_first,
            to_second,
            _managers: managers,
            servers: Vec::new(),
        };
        for _ in 0..n {
            pair.add_server();
        }
        assert_eq!(kumoctl(first, &["attach"]), "");
        for m in [first, second] {
            pair.wait(&format!("{n} servers attached, pair in touch"), || {
                status(m).is_some_and(|r| settled_with(&r, n) && partner_reachable(&r))
            });
        }
        // The sync really runs through the proxies.
        for p in [&pair.to_first, &pair.to_second] {
            assert!(
                p.counters()
                    .forwarded
                    .load(std::sync::atomic::Ordering::Relaxed)
                    > 0
            );
        }
        let args: Vec<String> = [
            "-v",
            "-m",
            &first.to_string(),
            "-p",
            &second.to_string(),
            "-t",
            &pair.text.to_string(),
            "--cpus",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let gateway = Daemon::spawn("gateway", &bin("kumo-gateway"), &args, pair.dir.path());
        pair.gateway = Some(gateway);
        wait_for_port(pair.text);
        pair
    }

    /// Starts one more server using both managers; waits until both hear it.
    fn add_server(&mut self) -> SocketAddr {
        let args = [
            "-p".to_string(),
            self.second.to_string(),
            "--cpus".into(),
            "0".into(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let name = format!("s{}", self.servers.len() + 1);
        let server = ServerProc::start(&name, self.dir.path(), self.first, &args);
        let addr = server.addr;
        self.servers.push(server);
        for m in [self.first, self.second] {
            self.wait(&format!("both managers to hear {addr}"), || {
                status(m).is_some_and(|r| {
                    r.not_attached.contains(&addr) || r.write.state_of(addr).is_some()
                })
            });
        }
        addr
    }

    /// Breaks the link both ways (`Mode::Cut` or `Mode::Blackhole`) and waits until both managers
    /// see it; the first one drives, the second one follows (servers still hear the first).
    fn split(&self, mode: Mode) {
        self.to_first.set_mode(mode);
        self.to_second.set_mode(mode);
        for m in [self.first, self.second] {
            self.wait("both managers to see the partner unreachable", || {
                status(m).is_some_and(|r| !partner_reachable(&r))
            });
        }
        let (leader, follower) = (status(self.first), status(self.second));
        assert_eq!(
            leader.map(|r| r.role),
            Some(Role::Leader),
            "{}",
            self.logs()
        );
        let follower = follower.expect("status of the follower");
        assert_eq!(
            follower.role,
            Role::Follower,
            "{follower:?}\n{}",
            self.logs()
        );
        assert_eq!(follower.partner.and_then(|p| p.servers_hear), Some(true));
        let text = kumoctl(self.second, &["status"]);
        assert!(
            text.contains(&format!(
                "warning: servers still hear {}, which drives",
                self.first
            )),
            "{text}"
        );
    }

    /// Attach through the follower during a split: refused, naming the manager that drives.
    fn attach_through_the_follower_is_refused(&self) {
        let refused = kumoctl(self.second, &["attach"]);
        assert!(
            refused.contains(&format!("partner {} drives", self.first))
                && refused.contains("send the command to"),
            "{refused}"
        );
    }

    /// Heals the link and waits until both managers hold the same state again, the first one
    /// leading and the second following.
    fn heal(&self) {
        self.to_first.heal();
        self.to_second.heal();
        self.wait(
            "the pair to converge, roles as before the split",
            || match (status(self.first), status(self.second)) {
                (Some(x), Some(y)) => {
                    x.epoch == y.epoch
                        && x.write == y.write
                        && partner_reachable(&x)
                        && partner_reachable(&y)
                        && x.role == Role::Leader
                        && y.role == Role::Follower
                }
                _ => false,
            },
        );
    }

    fn wait(&self, what: &str, cond: impl FnMut() -> bool) {
        wait_or(what, WAIT, || self.logs(), cond)
    }

    /// Runs `check`; if it panics, prints every log first.
    fn with_logs(&self, check: impl FnOnce()) {
        if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(check)) {
            eprintln!("{}", self.logs());
            std::panic::resume_unwind(panic);
        }
    }

    fn logs(&self) -> String {
        logs_in(self.dir.path())
    }
}

fn settled_with(report: &StatusReport, n: usize) -> bool {
    report.write.active().count() == n && report.rebalance.is_none() && report.read == report.write
}

fn partner_reachable(report: &StatusReport) -> bool {
    report.partner.as_ref().is_some_and(|p| p.reachable)
}

fn server_stat(addr: SocketAddr, name: &str) -> String {
    DataClient::connect(addr)
        .stats()
        .remove(name)
        .unwrap_or_else(|| panic!("{addr} has no stat {name}"))
}

/// `kumoctl MANAGER status --json`, parsed.
fn status_json(manager: SocketAddr) -> serde_json::Value {
    let out = kumoctl(manager, &["status", "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json of {manager}: {e}: {out}"))
}

/// What both managers of a pair must agree on once synced: everything but who answers.
fn shared_view(status: &serde_json::Value) -> serde_json::Value {
    let mut v = status.clone();
    if let Some(map) = v.as_object_mut() {
        for field in ["manager", "role", "partner", "warnings", "progress"] {
            map.remove(field);
        }
    }
    v
}

/// Checks what the writer saw and that every acknowledged key is readable with three copies.
fn check_nothing_lost(pair: &SplitPair, writer: Writer) {
    let report = writer.finish();
    assert!(
        report.lost.is_empty(),
        "lost writes: {:?}\n{}",
        report.lost,
        pair.logs()
    );
    assert!(
        report.errors.is_empty(),
        "{} client errors, first: {:?}\n{}",
        report.errors.len(),
        &report.errors[..report.errors.len().min(5)],
        pair.logs()
    );
    let bad = read_all(pair.text, &report.acked, Writer::value);
    assert!(
        bad.is_empty(),
        "{} of {} acknowledged keys unreadable: {:?}",
        bad.len(),
        report.acked.len(),
        &bad[..bad.len().min(5)]
    );
    pair.with_logs(|| {
        check_copies(pair.first, &report.acked, Writer::value);
        check_copies(pair.second, &report.acked, Writer::value);
    });
}

#[test]
fn the_manager_pair_split_by_a_cut_keeps_serving_and_converges_after_the_heal() {
    split_attach_heal(Mode::Cut);
}

/// The same with the link silently dropping everything: the managers only notice the split
/// through their call timeouts, and find each other again when the link heals.
#[test]
fn the_manager_pair_split_by_a_blackhole_keeps_serving_and_converges_after_the_heal() {
    split_attach_heal(Mode::Blackhole);
}

fn split_attach_heal(mode: Mode) {
    // `--gc-lag 4`: the horizon of a settled cluster advances every second.
    let timing = ["-Ys", "0.5", "-Yn", "4", "--gc-lag", "4"];
    let mut pair = SplitPair::start(3, &timing, &timing);
    let writer = Writer::start(pair.text, "pair");
    writer.wait_more(100, WAIT);

    pair.split(mode);
    let before = status(pair.second).expect("status");
    writer.wait_more(100, WAIT);

    // A fourth server: the follower refuses to attach it, the leader attaches it.
    let fourth = pair.add_server();
    pair.attach_through_the_follower_is_refused();
    assert_eq!(kumoctl(pair.first, &["attach"]), "");
    pair.wait("the attach to finish", || {
        status(pair.first).is_some_and(|r| settled_with(&r, 4))
    });
    // The leader goes on with its duties (two horizon steps); the follower decides nothing: its
    // tables and horizon are the ones it had when the link broke.
    for _ in 0..2 {
        let horizon = status(pair.first).expect("status").gc_horizon;
        pair.wait("the leader's horizon to advance", || {
            status(pair.first).is_some_and(|r| r.gc_horizon > horizon)
        });
    }
    let apart = status(pair.second).expect("status");
    assert_eq!(apart.role, Role::Follower);
    assert_eq!(
        (&apart.write, &apart.read, apart.gc_horizon),
        (&before.write, &before.read, before.gc_horizon),
        "the follower changed its state during the split"
    );
    assert!(apart.not_attached.contains(&fourth));
    let attached = status(pair.first).expect("status").write.version;
    for s in &pair.servers {
        assert_eq!(
            server_stat(s.addr, "whs_version"),
            attached.to_string(),
            "{} does not route with the leader's table\n{}",
            s.addr,
            pair.logs()
        );
    }
    writer.wait_more(100, WAIT);

    // Heal: both converge on the same routing, with the fourth server in it.
    pair.heal();
    pair.wait("the pair to settle with four", || {
        status(pair.second).is_some_and(|r| settled_with(&r, 4))
    });
    // `kumoctl status --json` of both agree but for who answers. Polled: the horizon moves every
    // second, and the follower learns each step one sync later.
    let mut last = (serde_json::Value::Null, serde_json::Value::Null);
    let agreed = (0..100).any(|_| {
        last = (status_json(pair.first), status_json(pair.second));
        let same = shared_view(&last.0) == shared_view(&last.1);
        if !same {
            std::thread::sleep(Duration::from_millis(50));
        }
        same
    });
    assert!(agreed, "the managers disagree:\n{:#}\n{:#}", last.0, last.1);
    let roles = || [pair.first, pair.second].map(|m| status(m).map(|r| (r.role, r.partner)));
    assert_eq!(
        roles().map(|r| r.map(|r| r.0)),
        [Some(Role::Leader), Some(Role::Follower)],
        "{:?}\n{}",
        roles(),
        pair.logs()
    );
    let epoch = status(pair.first).expect("first").epoch;
    for s in &pair.servers {
        wait_adopted(s.addr, epoch, || pair.logs());
    }
    writer.wait_more(100, WAIT);
    check_nothing_lost(&pair, writer);
}

/// The case that lost acknowledged writes while both managers drove during a split (the
/// follower, whose table never had the attached server, marked two lost servers fault last, so its
/// table won at the heal after the attach's drop phase ran). Now, during the split, only the
/// leader makes membership decisions: the attach goes through the leader (the follower refuses
/// it), two of the three old servers die and the leader alone marks them fault (the follower's
/// fault window is the shorter one here: it would have marked them first); after the heal nothing
/// acknowledged is lost, and once the two are back and attached every key has its 3 copies.
#[test]
fn two_servers_lost_during_the_split_are_marked_fault_by_the_leader_only() {
    // The first manager judges servers down 3 s after their last keepalive, the second after 2 s.
    let first = ["-Ys", "0.5", "-Yn", "6"];
    let second = ["-Ys", "0.5", "-Yn", "4"];
    let mut pair = SplitPair::start(3, &first, &second);
    let writer = Writer::start(pair.text, "undo");
    writer.wait_more(100, WAIT);
    pair.split(Mode::Cut);
    let before = status(pair.second).expect("status");

    pair.add_server();
    pair.attach_through_the_follower_is_refused();
    assert_eq!(kumoctl(pair.first, &["attach"]), "");
    pair.wait("the attach to finish", || {
        status(pair.first).is_some_and(|r| settled_with(&r, 4))
    });
    writer.wait_more(200, WAIT);

    // Two of the three first servers die (a key's copies may be on the fourth and those two).
    let victims = [pair.servers[1].addr, pair.servers[2].addr];
    pair.servers[1].kill();
    pair.servers[2].kill();
    pair.wait("the leader to mark the lost servers fault", || {
        status(pair.first).is_some_and(|r| {
            victims
                .iter()
                .all(|v| r.write.state_of(*v) == Some(NodeState::Fault))
        })
    });
    // By now the follower's own (shorter) fault window has long passed: it marked nothing.
    let apart = status(pair.second).expect("status");
    assert_eq!(apart.role, Role::Follower, "{}", pair.logs());
    assert_eq!(apart.write, before.write, "the follower changed the tables");
    for v in victims {
        assert_eq!(apart.write.state_of(v), Some(NodeState::Active));
    }
    writer.wait_more(100, WAIT);

    // Heal: the pair keeps the leader's decisions.
    pair.heal();
    let joined = status(pair.second).expect("status");
    assert_eq!(joined.write.active().count(), 2);
    assert_eq!(joined.write.fault().count(), 2);
    writer.wait_more(100, WAIT);
    let report = writer.finish();
    let bad = read_all(pair.text, &report.acked, Writer::value);
    assert!(
        report.lost.is_empty() && bad.is_empty(),
        "{} lost by the writer, {} of {} acknowledged keys unreadable: {:?}\n{}",
        report.lost.len(),
        bad.len(),
        report.acked.len(),
        &bad[..bad.len().min(5)],
        pair.logs()
    );

    // The two come back and are attached again (through the follower: in touch again, it passes
    // the command on): every acknowledged key has its three copies.
    pair.servers[1].restart();
    pair.servers[2].restart();
    pair.wait("both managers to hear the two again", || {
        [pair.first, pair.second]
            .iter()
            .all(|m| status(*m).is_some_and(|r| victims.iter().all(|v| r.not_attached.contains(v))))
    });
    assert_eq!(kumoctl(pair.second, &["attach"]), "");
    for m in [pair.first, pair.second] {
        pair.wait("four active servers again", || {
            status(m).is_some_and(|r| settled_with(&r, 4))
        });
    }
    pair.with_logs(|| check_copies(pair.first, &report.acked, Writer::value));
}
