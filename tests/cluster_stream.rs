//! Rebalance copies over the stream port, with real kumo-server processes and a scripted manager:
//! the copy is paced to `--copy-rate`, reports its progress in keepalives, waits for a receiver
//! that has not adopted the new routing yet, survives a receiver that freezes or is killed and
//! restarted, and starts over when the manager restarts the phase under a new target.

mod cluster_support;
mod server_support;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cluster_support::{logs_of, wait_adopted, wait_or, FakeManager, ServerProc};
use kumofs::ring::{key_hash, NodeState};
use kumofs::rpc::messages::{DataRequest, DataResponse, WriteOp};
use server_support::{value_of, DataClient};

/// Keys and value size: about 3 MiB to copy to the third server.
const KEYS: usize = 3000;
const VALUE: usize = 1000;
/// --copy-rate of every server, MiB/s.
const RATE_MIB: f64 = 1.0;

struct Setup {
    fake: FakeManager,
    servers: Vec<ServerProc>,
    _dir: tempfile::TempDir,
}

impl Setup {
    /// Two servers holding [`KEYS`] keys and a third, registered but not attached.
    fn start() -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = FakeManager::start();
        let args = ["--cpus", "0-1", "--copy-rate", "1"];
        let servers: Vec<ServerProc> = ["a", "b", "c"]
            .iter()
            .map(|n| ServerProc::start(n, dir.path(), fake.addr, &args))
            .collect();
        for s in &servers {
            fake.wait_registered(s.addr);
        }
        let setup = Setup {
            fake,
            servers,
            _dir: dir,
        };
        let two = setup.nodes(2);
        let snapshot = setup.fake.settle(&two);
        let mut clients: Vec<(SocketAddr, DataClient)> = setup.servers[..2]
            .iter()
            .map(|s| (s.addr, DataClient::connect(s.addr)))
            .collect();
        for s in &setup.servers[..2] {
            wait_adopted(s.addr, snapshot.epoch, || setup.logs());
        }
        let value = "v".repeat(VALUE);
        for i in 0..KEYS {
            let key = format!("stream-{i}");
            let hash = key_hash(key.as_bytes());
            let coordinator = snapshot.write.coordinator(hash).expect("owner");
            let client = &mut clients
                .iter_mut()
                .find(|(a, _)| *a == coordinator)
                .expect("client")
                .1;
            let request = DataRequest::Write {
                hash,
                key: key.into_bytes(),
                op: WriteOp::Set,
                value: value.clone().into_bytes(),
                flags: 0,
                exptime: 0,
                noreply: true,
            };
            assert!(matches!(client.call(&request), DataResponse::Stored { .. }));
        }
        for (_, client) in clients.iter_mut() {
            wait_or(
                "every key on both servers",
                Duration::from_secs(30),
                || setup.logs(),
                || client.stats()["items"] == KEYS.to_string(),
            );
        }
        setup
    }

    fn nodes(&self, n: usize) -> Vec<(SocketAddr, NodeState)> {
        self.servers[..n]
            .iter()
            .map(|s| (s.addr, NodeState::Active))
            .collect()
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.servers.iter().map(|s| s.addr).collect()
    }

    fn logs(&self) -> String {
        logs_of(&self.servers.iter().collect::<Vec<_>>())
    }

    fn stat(&self, i: usize, key: &str) -> u64 {
        DataClient::connect(self.servers[i].addr).stats()[key]
            .parse()
            .unwrap_or(0)
    }

    /// Ends the rebalance and checks that the third server holds every key.
    fn finish_and_check(&self, target: u64) {
        let logs = || self.logs();
        self.fake.wait_phase_done(&self.addrs(), target, logs);
        self.fake.start_drop();
        self.fake.wait_phase_done(&self.addrs(), target, logs);
        self.fake.publish(|s| s.rebalance = None);
        assert_eq!(self.stat(2, "items"), KEYS as u64, "{}", self.logs());
        let mut c = DataClient::connect(self.servers[2].addr);
        for i in (0..KEYS).step_by(97) {
            let key = format!("stream-{i}");
            assert_eq!(
                value_of(&c.get(&key)).map(|v| v.0.len()),
                Some(VALUE),
                "{key} on c"
            );
        }
    }
}

#[test]
fn a_paced_copy_waits_for_the_receiver_survives_a_freeze_and_reports_progress() {
    let setup = Setup::start();
    let (a, b, c) = (
        setup.servers[0].addr,
        setup.servers[1].addr,
        setup.servers[2].addr,
    );
    // c does not get the new routing yet: copies to it must wait, not be lost.
    setup.fake.hold(c, true);
    let started = Instant::now();
    let target = setup.fake.start_copy(&setup.nodes(3), false);
    wait_or(
        "progress reports",
        Duration::from_secs(30),
        || setup.logs(),
        || {
            [a, b].iter().all(|s| {
                setup
                    .fake
                    .progress_of(*s)
                    .iter()
                    .any(|p| p.target == target && p.total == KEYS as u64)
            })
        },
    );
    std::thread::sleep(Duration::from_millis(800));
    for s in [a, b] {
        let last = setup.fake.progress_of(s).last().cloned().expect("progress");
        assert_eq!(
            last.sent, 0,
            "{s} sent copies before the receiver adopted the routing"
        );
    }
    setup.fake.hold(c, false);
    // Frozen mid-copy: the senders retry until it answers again.
    wait_or(
        "the copy to start",
        Duration::from_secs(30),
        || setup.logs(),
        || setup.stat(2, "copy_received") > 0,
    );
    setup.servers[2].freeze();
    std::thread::sleep(Duration::from_millis(1500));
    setup.servers[2].thaw();
    let logs = || setup.logs();
    setup.fake.wait_phase_done(&setup.addrs(), target, logs);
    let elapsed = started.elapsed().as_secs_f64();

    // Paced: no sender went faster than --copy-rate.
    let rate = RATE_MIB * 1024.0 * 1024.0;
    let sent_bytes: Vec<u64> = (0..2).map(|i| setup.stat(i, "copy_bytes")).collect();
    let sent_records: u64 = (0..2).map(|i| setup.stat(i, "copy_records")).sum();
    assert_eq!(sent_records, KEYS as u64, "every key is sent exactly once");
    let slowest = sent_bytes.iter().copied().max().unwrap_or(0) as f64 / rate;
    assert!(
        elapsed >= slowest * 0.9,
        "the copy took {elapsed:.2} s, less than {slowest:.2} s at {RATE_MIB} MiB/s ({sent_bytes:?})"
    );
    // Progress went up during the copy, not only at the end.
    let reports = setup.fake.progress_of(a);
    assert!(
        reports
            .iter()
            .any(|p| p.target == target && p.sent > 0 && p.done < p.total),
        "no progress report mid-copy: {reports:?}"
    );
    setup.finish_and_check(target);
}

#[test]
fn a_restarted_phase_and_a_killed_receiver_lose_nothing() {
    let mut setup = Setup::start();
    let a = setup.servers[0].addr;
    let first = setup.fake.start_copy(&setup.nodes(3), false);
    wait_or(
        "the copy to start",
        Duration::from_secs(30),
        || setup.logs(),
        || setup.stat(2, "copy_received") > 0,
    );
    // The receiver dies and comes back on its store; the manager restarts the copy phase.
    setup.servers[2].kill();
    setup.servers[2].restart();
    let second = setup.fake.restart_copy();
    setup.finish_and_check(second);
    let state = setup.fake.state.lock().expect("lock");
    assert!(
        !state.phase_done.contains(&(a, first)),
        "a finished a copy phase the manager had replaced"
    );
}
