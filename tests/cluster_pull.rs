//! A key's new coordinator pulls the key from its old owner before a conditional write (see
//! `server::pull`), with real kumo-server processes and a scripted manager that splits the tables
//! without running a copy: reads follow server `a` (which holds the data), writes server `b`.
//!
//! - every conditional write answers from `a`'s state and leaves the result on both;
//! - requests of a key that arrive while its pull runs take effect after it, in order;
//! - a pull whose old owner is frozen, or answers nonsense, fails the write with an error within
//!   its bound (never a hang, never a wrong answer), and the write succeeds once retried.

mod cluster_support;
mod server_support;
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_support::{logs_of, wait_adopted, FakeManager, ServerProc};
use kumofs::ring::{core_of, key_hash, NodeState};
use kumofs::rpc::frame::{encode_frame, FrameDecoder, FrameKind};
use kumofs::rpc::messages::{
    Arith, DataRequest, DataResponse, ReplicationRequest, ReplicationResponse, WriteOp,
};
use server_support::{pipelined, value_of, DataClient};

struct Split {
    fake: FakeManager,
    servers: Vec<ServerProc>,
    _dir: tempfile::TempDir,
}

impl Split {
    /// `a` alone holds `keys` (set to their names) and whatever `prepare` does to it; then reads
    /// follow `a`, writes `b`.
    fn start(keys: &[&str], prepare: impl FnOnce(&mut DataClient)) -> Split {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = FakeManager::start();
        let args = ["--cpus", "0-1"];
        let servers: Vec<ServerProc> = ["a", "b"]
            .iter()
            .map(|n| ServerProc::start(n, dir.path(), fake.addr, &args))
            .collect();
        for s in &servers {
            fake.wait_registered(s.addr);
        }
        let split = Split {
            fake,
            servers,
            _dir: dir,
        };
        let (a, b) = (split.a(), split.b());
        let settled = split.fake.settle(&[(a, NodeState::Active)]);
        wait_adopted(a, settled.epoch, || split.logs());
        let mut client = DataClient::connect(a);
        for key in keys {
            assert!(matches!(client.set(key, key), DataResponse::Stored { .. }));
        }
        prepare(&mut client);
        let write = split.fake.table(&[(b, NodeState::Active)]);
        let snapshot = split.fake.publish(|s| s.write = write);
        for server in [a, b] {
            wait_adopted(server, snapshot.epoch, || split.logs());
        }
        split
    }

    fn a(&self) -> SocketAddr {
        self.servers[0].addr
    }

    fn b(&self) -> SocketAddr {
        self.servers[1].addr
    }

    fn logs(&self) -> String {
        logs_of(&self.servers.iter().collect::<Vec<_>>())
    }

    fn stat(&self, server: SocketAddr, name: &str) -> u64 {
        DataClient::connect(server).stats()[name]
            .parse()
            .unwrap_or(0)
    }
}

fn write(key: &str, op: WriteOp, value: &str) -> DataRequest {
    DataRequest::Write {
        hash: key_hash(key.as_bytes()),
        key: key.as_bytes().to_vec(),
        op,
        value: value.as_bytes().to_vec(),
        flags: 0,
        exptime: 0,
        noreply: false,
    }
}

fn get_newest(key: &str) -> DataRequest {
    DataRequest::GetNewest {
        hash: key_hash(key.as_bytes()),
        key: key.as_bytes().to_vec(),
    }
}

/// The value `server` holds for `key`: `Some((value, version))`, or `None` when it reads missing.
fn held(server: SocketAddr, key: &str) -> Option<(String, u64)> {
    match DataClient::connect(server).get(key) {
        DataResponse::NotFound => None,
        response => Some(value_of(&response).unwrap_or_else(|| panic!("{key}: {response:?}"))),
    }
}

#[test]
fn conditional_writes_at_the_new_coordinator_answer_from_the_old_owners_state() {
    let keys = ["del", "add", "rep", "app", "cas", "num", "touch", "gone"];
    let split = Split::start(&keys, |old| {
        assert!(matches!(old.set("num", "41"), DataResponse::Stored { .. }));
        // A key deleted on the old owner: the pull brings the tombstone, not "absent".
        assert_eq!(
            old.write("gone", WriteOp::Delete, "", 0, 0),
            DataResponse::Deleted
        );
    });
    let (a, b) = (split.a(), split.b());
    let mut old = DataClient::connect(a);
    // Only a write coordinated by `b` counts here: `a` refuses them now.
    assert!(matches!(
        old.write("del", WriteOp::Delete, "", 0, 0),
        DataResponse::NotOwner { .. }
    ));
    let cas = held(a, "cas").expect("cas on a").1;

    let mut new = DataClient::connect(b);
    let mut run = |key: &str, op: WriteOp, value: &str| new.call(&write(key, op, value));
    assert_eq!(run("del", WriteOp::Delete, ""), DataResponse::Deleted);
    assert_eq!(run("add", WriteOp::Add, "x"), DataResponse::NotStored);
    assert!(matches!(
        run("rep", WriteOp::Replace, "replaced"),
        DataResponse::Stored { .. }
    ));
    assert!(matches!(
        run("app", WriteOp::Append, "+tail"),
        DataResponse::Stored { .. }
    ));
    assert!(matches!(
        run("cas", WriteOp::Cas { version: cas }, "swapped"),
        DataResponse::Stored { .. }
    ));
    assert!(matches!(
        run("num", WriteOp::Incr(Arith::by(1)), ""),
        DataResponse::Number { value: 42, .. }
    ));
    assert_eq!(run("touch", WriteOp::Touch, ""), DataResponse::Touched);
    assert_eq!(run("gone", WriteOp::Delete, ""), DataResponse::NotFound);
    assert_eq!(run("never", WriteOp::Delete, ""), DataResponse::NotFound);
    assert_eq!(run("never", WriteOp::Replace, "x"), DataResponse::NotStored);

    // Both servers hold the outcome (`b` coordinated and replicated it to the read owner `a`).
    for server in [a, b] {
        let value = |key: &str| held(server, key).map(|(v, _)| v);
        assert_eq!(value("del"), None, "on {server}");
        assert_eq!(value("add").as_deref(), Some("add"), "on {server}");
        assert_eq!(value("rep").as_deref(), Some("replaced"), "on {server}");
        assert_eq!(value("app").as_deref(), Some("app+tail"), "on {server}");
        assert_eq!(value("cas").as_deref(), Some("swapped"), "on {server}");
        assert_eq!(value("num").as_deref(), Some("42"), "on {server}");
        assert_eq!(value("gone"), None, "on {server}");
    }
    // The pulled record kept its version: the failed add left `b` with exactly `a`'s record.
    assert_eq!(held(b, "add"), held(a, "add"));
    // One pull per write above: none of those keys had a record on `b` before its write (a key
    // the old owner does not hold is pulled again by the next conditional write: "never").
    assert_eq!(split.stat(b, "pulls"), 10, "{}", split.logs());
    assert_eq!(split.stat(b, "pull_failures"), 0);
}

#[test]
fn requests_behind_a_pull_take_effect_in_arrival_order() {
    let keys = ["k1", "k2", "k3"];
    let split = Split::start(&keys, |_| {});
    let (a, b) = (split.a(), split.b());
    let shards = split.stat(b, "shards") as usize;
    for key in keys {
        let core = core_of(key_hash(key.as_bytes()), shards) as u32;
        // One write on one connection: the get and the writes behind the delete (or append) wait
        // for its pull, then run in order; none pulls again.
        let answers = pipelined(
            b,
            core,
            &[
                write(key, WriteOp::Append, "+1"),
                get_newest(key),
                write(key, WriteOp::Append, "+2"),
                write(key, WriteOp::Add, "no"),
                get_newest(key),
                write(key, WriteOp::Delete, ""),
                get_newest(key),
                write(key, WriteOp::Add, "again"),
                get_newest(key),
            ],
        );
        let value = |response: &DataResponse| value_of(response).map(|(v, _)| v);
        assert!(
            matches!(answers[0], DataResponse::Stored { .. }),
            "{answers:?}"
        );
        assert_eq!(value(&answers[1]), Some(format!("{key}+1")), "{answers:?}");
        assert!(
            matches!(answers[2], DataResponse::Stored { .. }),
            "{answers:?}"
        );
        assert_eq!(answers[3], DataResponse::NotStored, "{answers:?}");
        assert_eq!(
            value(&answers[4]),
            Some(format!("{key}+1+2")),
            "{answers:?}"
        );
        assert_eq!(answers[5], DataResponse::Deleted, "{answers:?}");
        assert_eq!(answers[6], DataResponse::NotFound, "{answers:?}");
        assert!(
            matches!(answers[7], DataResponse::Stored { .. }),
            "{answers:?}"
        );
        assert_eq!(value(&answers[8]).as_deref(), Some("again"), "{answers:?}");
        assert_eq!(held(a, key).map(|(v, _)| v).as_deref(), Some("again"));
    }
    assert_eq!(split.stat(b, "pulls"), keys.len() as u64);
}

#[test]
fn a_pull_that_gets_no_usable_answer_fails_the_write_in_bounded_time() {
    let keys = ["frozen", "nonsense"];
    let split = Split::start(&keys, |_| {});
    let (a, b) = (split.a(), split.b());
    let mut new = DataClient::connect(b);

    // The old owner hangs: the pull times out, the delete answers an error the gateway retries.
    split.servers[0].freeze();
    let started = Instant::now();
    let answer = new.call(&write("frozen", WriteOp::Delete, ""));
    let took = started.elapsed();
    split.servers[0].thaw();
    assert!(
        matches!(&answer, DataResponse::Error(why) if why.contains("pull")),
        "{answer:?}"
    );
    assert!(took < Duration::from_secs(3), "the pull took {took:?}");
    assert_eq!(split.stat(b, "pull_failures"), 1);
    // Retried once the old owner answers again, it does what it should.
    assert_eq!(
        new.call(&write("frozen", WriteOp::Delete, "")),
        DataResponse::Deleted
    );
    assert_eq!(held(a, "frozen"), None);

    // An old owner that answers a pull with something else than a record is not believed.
    let liar = Liar::start(ReplicationResponse::Ack {
        applied: 0,
        stale: 0,
    });
    let read = split.fake.table(&[(liar.addr, NodeState::Active)]);
    let snapshot = split.fake.publish(|s| s.read = read);
    wait_adopted(b, snapshot.epoch, || split.logs());
    let answer = new.call(&write("nonsense", WriteOp::Replace, "x"));
    assert!(
        matches!(&answer, DataResponse::Error(why) if why.contains("unexpected answer")),
        "{answer:?}"
    );
    assert!(liar.pulls() > 0, "the pull never reached the fake owner");
    // A set needs no pull, and the server still serves.
    assert!(matches!(
        new.call(&write("nonsense", WriteOp::Set, "y")),
        DataResponse::Stored { .. }
    ));
    assert_eq!(held(b, "nonsense").map(|(v, _)| v).as_deref(), Some("y"));
}

/// A fake old owner: answers every replication request with one fixed response.
struct Liar {
    addr: SocketAddr,
    pulls: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Liar {
    fn start(response: ReplicationResponse) -> Liar {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let pulls = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (st, count) = (stop.clone(), pulls.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                conn.set_nonblocking(false).ok();
                let (response, count) = (response.clone(), count.clone());
                std::thread::spawn(move || {
                    let mut decoder = FrameDecoder::new();
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        while let Ok(Some(frame)) = decoder.next_frame() {
                            if frame.kind != FrameKind::Request {
                                continue;
                            }
                            if let Ok(ReplicationRequest::Pull { .. }) = frame.decode() {
                                count.fetch_add(1, Ordering::SeqCst);
                            }
                            let mut out = Vec::new();
                            encode_frame(&mut out, FrameKind::Response, frame.id, &response)
                                .expect("encode");
                            if conn.write_all(&out).is_err() {
                                return;
                            }
                        }
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => decoder.push(&buf[..n]),
                        }
                    }
                });
            }
        });
        Liar { addr, pulls, stop }
    }

    fn pulls(&self) -> u64 {
        self.pulls.load(Ordering::SeqCst)
    }
}

impl Drop for Liar {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// What a pull costs a write: one at a time, an append of each of `KEYS` keys that needs a pull,
/// then a second append of each (held by then). Prints the latencies; asserts nothing about
/// speed (run by `make test-heavy`, or `cargo test --release --test cluster_pull -- --ignored
/// --nocapture`; figures go to perf/results).
#[test]
#[ignore]
fn measure_the_cost_of_a_pull() {
    const KEYS: usize = 2000;
    let keys: Vec<String> = (0..KEYS).map(|i| format!("cost-{i}")).collect();
    let names: Vec<&str> = keys.iter().map(String::as_str).collect();
    let split = Split::start(&names, |_| {});
    let b = split.b();
    let mut new = DataClient::connect(b);
    let mut round = |what: &str| {
        let mut took: Vec<Duration> = keys
            .iter()
            .map(|key| {
                let started = Instant::now();
                let answer = new.call(&write(key, WriteOp::Append, "+"));
                assert!(matches!(answer, DataResponse::Stored { .. }), "{answer:?}");
                started.elapsed()
            })
            .collect();
        took.sort();
        let mean = took.iter().sum::<Duration>() / took.len() as u32;
        let at = |q: f64| took[((took.len() - 1) as f64 * q) as usize];
        eprintln!(
            "{what}: {} appends, mean {:?}, p50 {:?}, p99 {:?}",
            took.len(),
            mean,
            at(0.5),
            at(0.99)
        );
    };
    round("append that pulls the key first");
    round("append of a key held");
    assert_eq!(split.stat(b, "pulls"), KEYS as u64);
}
