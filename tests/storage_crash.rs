//! Crash test in the style of sled's: a child process (this test binary, re-executed) writes a
//! known pattern through the real shard adaptor ([`ShardStore`] on a glommio executor) with the
//! "every write" policy, acknowledging each write on a pipe once `durable()` returned; the parent
//! kills it with SIGKILL at a random moment, or the child leaves by `process::exit` (no
//! destructors, so nothing buffered is flushed on the way out) after a random number of
//! acknowledgements. After every death the parent reopens the store and checks every round so
//! far: each acknowledged write is there, each acknowledged delete holds, and any other key is
//! either absent or whole.
//!
//! The child runs four concurrent writers (so acknowledgements share fsync rounds), takes index
//! snapshots, and asks for tombstone GC, so compaction, segment retirement and snapshot installs
//! are all under way when it dies. A kill does not drop the page cache, so this test proves the
//! process-level protocol (nothing acknowledged is only in a buffer, nothing torn is returned);
//! that an fsync really reached the disk is the kernel's promise and is not simulated here.
//!
//! `make test` runs a handful of rounds; `KUMO_HEAVY=1` (make test-heavy) runs 100.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use kumofs::storage::{Config, Durability, Engine, ShardStore};

const CHILD_DIR: &str = "KUMO_STORAGE_CRASH_DIR";
const CHILD_START: &str = "KUMO_STORAGE_CRASH_START";
const CHILD_EXIT_AT: &str = "KUMO_STORAGE_CRASH_EXIT_AT";
/// Operations of one round are numbered from `round * ROUND_SPAN`, so rounds never share keys.
const ROUND_SPAN: u64 = 1_000_000;
const WRITERS: u64 = 4;

fn config(dir: &Path) -> Config {
    let mut cfg = Config::new(dir);
    cfg.durability = Durability::EveryWrite;
    cfg.segment_size = 32 * 1024;
    cfg.compact_garbage_ratio = 0.2;
    cfg
}

fn op_key(j: u64) -> Vec<u8> {
    format!("crash-key-{j}").into_bytes()
}

fn op_value(j: u64) -> Vec<u8> {
    format!("value-{j}-")
        .repeat((j % 40) as usize + 1)
        .into_bytes()
}

/// Operation `j` of a round starting at `start`: every 7th deletes the key put 3 operations
/// earlier; the rest put their own key. Versions are `j + 1`, and both kinds are conditional on
/// the version (`*_if_newer`), so the outcome does not depend on which writer ran first.
fn deletes(j: u64, start: u64) -> Option<u64> {
    (j % 7 == 6 && j >= start + 3).then(|| j - 3)
}

/// The child: only does something when the parent set the environment.
#[test]
fn crash_writer_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let start: u64 = std::env::var(CHILD_START).unwrap().parse().unwrap();
    let exit_at: Option<u64> = std::env::var(CHILD_EXIT_AT)
        .ok()
        .and_then(|v| v.parse().ok());
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 << 10)
        .ring_depth(64)
        .spawn(move || async move {
            let (engine, _) = Engine::open(config(Path::new(&dir))).unwrap();
            let store = ShardStore::new(engine);
            let _maintenance = store.spawn_maintenance();
            let acks = Rc::new(std::cell::Cell::new(0u64));
            let mut writers = Vec::new();
            for t in 0..WRITERS {
                let (store, acks) = (store.clone(), acks.clone());
                writers.push(glommio::spawn_local(async move {
                    for i in 0.. {
                        let j = start + t + WRITERS * i;
                        let version = j + 1;
                        match deletes(j, start) {
                            Some(victim) => {
                                let key = op_key(victim);
                                store.engine().delete_if_newer(&key, version).unwrap();
                            }
                            None => {
                                let (key, value) = (op_key(j), op_value(j));
                                store
                                    .engine()
                                    .put_if_newer(&key, &value, 0, 0, version)
                                    .unwrap();
                            }
                        }
                        store.durable().await.unwrap();
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "ack {j}").unwrap();
                        out.flush().unwrap();
                        drop(out);
                        acks.set(acks.get() + 1);
                        if exit_at.is_some_and(|n| acks.get() >= n) {
                            std::process::exit(0);
                        }
                        if t == 0 && i % 150 == 149 {
                            store.write_snapshot().await.unwrap();
                        }
                        if t == 1 && i % 100 == 99 {
                            store.engine().gc_tombstones(0).unwrap();
                        }
                    }
                }));
            }
            for w in writers {
                w.await;
            }
        })
        .unwrap()
        .join()
        .unwrap();
}

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Runs one child until it is killed after `kill_after` or exits after `exit_at` acks; returns
/// the operations it acknowledged.
fn run_child(dir: &Path, start: u64, kill_after: Duration, exit_at: Option<u64>) -> BTreeSet<u64> {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args([
        "crash_writer_child",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_DIR, dir)
    .env(CHILD_START, start.to_string())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    if let Some(n) = exit_at {
        cmd.env(CHILD_EXIT_AT, n.to_string());
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut acked = BTreeSet::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // The harness prints "test crash_writer_child ... " before the first ack.
            if let Some(j) = line.split("ack ").nth(1).and_then(|n| n.parse().ok()) {
                acked.insert(j);
            }
        }
        acked
    });
    let began = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if began.elapsed() >= kill_after {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    reader.join().unwrap()
}

/// Checks every operation of one round against the reopened engine.
fn check_round(e: &mut Engine, start: u64, acked: &BTreeSet<u64>, context: &str) {
    let Some(&last) = acked.iter().next_back() else {
        return;
    };
    // Operations past the last acknowledged one may have been applied too: look a bit beyond.
    for j in start..=last + 2 * WRITERS {
        if deletes(j, start).is_some() {
            continue;
        }
        let got = e.get(&op_key(j)).unwrap().map(|item| item.value);
        let delete_op = j + 3;
        let delete_acked = deletes(delete_op, start) == Some(j) && acked.contains(&delete_op);
        let may_be_deleted = deletes(delete_op, start) == Some(j);
        if delete_acked {
            assert_eq!(got, None, "{context}: key {j} was deleted (acknowledged)");
        } else if acked.contains(&j) && !may_be_deleted {
            assert_eq!(
                got,
                Some(op_value(j)),
                "{context}: acknowledged key {j} lost"
            );
        } else if acked.contains(&j) && got.is_none() {
            // Its delete ran but was not acknowledged yet: allowed.
        } else if let Some(v) = got {
            assert_eq!(v, op_value(j), "{context}: key {j} half-written");
        }
    }
}

fn crash_rounds(rounds: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = XorShift(0x2545_F491_4F6C_DD1D ^ u64::from(std::process::id()));
    let mut history: Vec<(u64, BTreeSet<u64>)> = Vec::new();
    let mut total = 0;
    for round in 0..rounds {
        let start = round * ROUND_SPAN;
        let exit_mode = round % 2 == 1;
        let (kill_after, exit_at) = if exit_mode {
            (Duration::from_secs(30), Some(1 + rng.next() % 400))
        } else {
            (Duration::from_millis(20 + rng.next() % 200), None)
        };
        let acked = run_child(dir.path(), start, kill_after, exit_at);
        if let Some(n) = exit_at {
            assert!(
                acked.len() as u64 >= n,
                "round {round}: the child died before exiting by itself ({} of {n} acks)",
                acked.len()
            );
        }
        total += acked.len();
        history.push((start, acked));
        let (mut e, report) = Engine::open(config(dir.path())).unwrap();
        let how = if exit_mode { "exit" } else { "SIGKILL" };
        eprintln!(
            "crash round {round} ({how}): {} acked, {report:?}",
            history[history.len() - 1].1.len()
        );
        for (i, (start, acked)) in history.iter().enumerate() {
            check_round(
                &mut e,
                *start,
                acked,
                &format!("round {round}, writes of round {i}"),
            );
        }
    }
    assert!(total > 0, "the writer never acknowledged anything");
}

#[test]
fn crash_test_a_handful_of_deaths() {
    crash_rounds(6);
}

#[test]
#[ignore]
fn crash_test_heavy() {
    if std::env::var("KUMO_HEAVY").is_err() {
        return;
    }
    crash_rounds(100);
}
