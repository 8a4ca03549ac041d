//! Property test: the engine against a HashMap model, through random operation sequences that
//! include restarts (with and without the index snapshot), compaction steps, tombstone GC (by age
//! and by version), flushes and drops by predicate.
//!
//! GC makes the engine's state partly its own choice: compaction may drop an expired value or a
//! tombstone that the GC bounds allow, or keep it. The model tracks such records as "maybe gone":
//! they read as missing either way, and a conditional write older than them may be refused (still
//! held) or accepted (dropped). Everything else is exact, so a tombstone younger than the minimum
//! age, or at or above the version bound, must always still refuse an older replicated write.

use std::collections::HashMap;

use kumofs::storage::{Config, Durability, Engine, IncrOutcome, Item, TombstoneGc, WriteOutcome};
use proptest::prelude::*;

const T0: u32 = 1_000_000;

fn open(dir: &std::path::Path) -> Engine {
    let mut cfg = Config::new(dir);
    cfg.segment_size = 4096;
    cfg.compact_garbage_ratio = 0.3;
    cfg.durability = Durability::None;
    let (mut engine, _) = Engine::open(cfg).unwrap();
    engine.set_clock(Some(T0));
    engine
}

#[derive(Clone, Debug)]
enum Op {
    Put(u8, u8),
    PutIfNewer(u8, u8, u8),
    Cas(u8, u8, bool),
    Delete(u8),
    DeleteIfNewer(u8, u8),
    Add(u8, u8),
    Replace(u8, u8),
    Append(u8, u8),
    Prepend(u8, u8),
    Incr(u8, u8),
    Decr(u8, u8),
    Touch(u8, u8),
    Get(u8),
    Advance(u8),
    Compact(u8),
    Gc(u8, Option<u8>),
    Flush,
    Retain(u8),
    Reopen(bool),
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0u8..12;
    prop_oneof![
        4 => (k.clone(), any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        2 => (k.clone(), any::<u8>(), 0u8..4).prop_map(|(k, v, b)| Op::PutIfNewer(k, v, b)),
        2 => (k.clone(), any::<u8>(), any::<bool>()).prop_map(|(k, v, m)| Op::Cas(k, v, m)),
        2 => k.clone().prop_map(Op::Delete),
        1 => (k.clone(), 0u8..4).prop_map(|(k, b)| Op::DeleteIfNewer(k, b)),
        1 => (k.clone(), any::<u8>()).prop_map(|(k, v)| Op::Add(k, v)),
        1 => (k.clone(), any::<u8>()).prop_map(|(k, v)| Op::Replace(k, v)),
        1 => (k.clone(), any::<u8>()).prop_map(|(k, v)| Op::Append(k, v)),
        1 => (k.clone(), any::<u8>()).prop_map(|(k, v)| Op::Prepend(k, v)),
        1 => (k.clone(), any::<u8>()).prop_map(|(k, v)| Op::Incr(k, v)),
        1 => (k.clone(), any::<u8>()).prop_map(|(k, v)| Op::Decr(k, v)),
        1 => (k.clone(), any::<u8>()).prop_map(|(k, v)| Op::Touch(k, v)),
        3 => k.prop_map(Op::Get),
        1 => (0u8..8).prop_map(Op::Advance),
        1 => any::<u8>().prop_map(Op::Compact),
        1 => (0u8..8, proptest::option::of(0u8..40)).prop_map(|(a, b)| Op::Gc(a, b)),
        1 => Just(Op::Flush),
        1 => (0u8..12).prop_map(Op::Retain),
        1 => any::<bool>().prop_map(Op::Reopen),
    ]
}

#[derive(Clone, Debug)]
struct Rec {
    value: Vec<u8>,
    flags: u32,
    version: u64,
    expiry: u32,
    tomb: bool,
    /// GC may have dropped it from the engine (see the module docs).
    maybe_gone: bool,
}

struct Model {
    map: HashMap<Vec<u8>, Rec>,
    now: u32,
    flush: u64,
    /// The GC bounds the engine holds (forgotten on restart).
    gc: Option<TombstoneGc>,
}

/// What a conditional write older than the held record may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Held {
    /// Nothing (or only a flushed record) is held: the write goes in.
    No,
    /// A record at least as new is held: refused.
    Yes,
    /// A record at least as new may or may not still be held.
    Maybe,
}

impl Model {
    fn live(&self, key: &[u8]) -> Option<&Rec> {
        self.map.get(key).filter(|r| {
            !r.tomb && r.version >= self.flush && (r.expiry == 0 || r.expiry > self.now)
        })
    }
    fn held(&self, key: &[u8], version: u64) -> Held {
        match self.map.get(key) {
            Some(r) if r.version >= self.flush && r.version >= version => {
                if r.maybe_gone {
                    Held::Maybe
                } else {
                    Held::Yes
                }
            }
            _ => Held::No,
        }
    }
    /// After compaction steps: mark what the engine may have dropped by now.
    fn compacted(&mut self) {
        let (now, gc, flush) = (self.now, self.gc, self.flush);
        for r in self.map.values_mut() {
            let droppable = if r.version < flush {
                true
            } else if r.tomb {
                gc.is_some_and(|gc| {
                    now.saturating_sub(r.expiry) >= gc.min_age_secs
                        && gc.below_version.is_none_or(|b| r.version < b)
                })
            } else {
                r.expiry != 0 && r.expiry <= now
            };
            r.maybe_gone |= droppable;
        }
    }
    fn set(&mut self, key: &[u8], value: Vec<u8>, flags: u32, expiry: u32, version: u64) {
        self.map.insert(
            key.to_vec(),
            Rec {
                value,
                flags,
                version,
                expiry,
                tomb: false,
                maybe_gone: false,
            },
        );
    }
    fn tomb(&mut self, key: &[u8], version: u64) {
        let expiry = self.now;
        self.map.insert(
            key.to_vec(),
            Rec {
                value: vec![],
                flags: 0,
                version,
                expiry,
                tomb: true,
                maybe_gone: false,
            },
        );
    }
}

fn key_of(k: u8) -> Vec<u8> {
    format!("key-{k}").into_bytes()
}

fn val_of(v: u8) -> Vec<u8> {
    // Some values are numeric so incr/decr have something to work on.
    if v.is_multiple_of(3) {
        (u64::from(v) * 1000).to_string().into_bytes()
    } else {
        vec![v; v as usize % 40]
    }
}

fn exp_of(v: u8, now: u32) -> u32 {
    if v.is_multiple_of(4) {
        now + u32::from(v % 7) + 1
    } else {
        0
    }
}

fn run_model(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut e = open(dir.path());
    let mut m = Model {
        map: HashMap::new(),
        now: T0,
        flush: 0,
        gc: None,
    };
    for (v, op) in (101u64..).zip(ops) {
        match op {
            Op::Put(k, x) => {
                let (key, val, exp) = (key_of(k), val_of(x), exp_of(x, m.now));
                e.put(&key, &val, u32::from(x), exp, v).unwrap();
                m.set(&key, val, u32::from(x), exp, v);
            }
            Op::PutIfNewer(k, x, back) => {
                let ver = v - u64::from(back) * 3;
                let (key, val) = (key_of(k), val_of(x));
                let got = e.put_if_newer(&key, &val, 1, 0, ver).unwrap();
                match (m.held(&key, ver), got) {
                    (Held::Yes | Held::Maybe, WriteOutcome::NotStored) => {}
                    (Held::No | Held::Maybe, WriteOutcome::Stored) => {
                        m.set(&key, val.clone(), 1, 0, ver)
                    }
                    (held, got) => {
                        prop_assert!(false, "put_if_newer: held {:?}, got {:?}", held, got)
                    }
                }
            }
            Op::Cas(k, x, matching) => {
                let key = key_of(k);
                let current = m.live(&key).map(|r| r.version);
                let expected = match (current, matching) {
                    (Some(c), true) => c,
                    (Some(c), false) => c + 1,
                    (None, _) => 5,
                };
                let want = match current {
                    None => WriteOutcome::NotFound,
                    Some(c) if c != expected => WriteOutcome::Exists,
                    Some(_) => {
                        m.set(&key, val_of(x), 2, 0, v);
                        WriteOutcome::Stored
                    }
                };
                prop_assert_eq!(
                    e.put_if_version(&key, &val_of(x), 2, 0, expected, v)
                        .unwrap(),
                    want
                );
            }
            Op::Delete(k) => {
                let key = key_of(k);
                let want = if m.live(&key).is_some() {
                    m.tomb(&key, v);
                    WriteOutcome::Deleted
                } else {
                    WriteOutcome::NotFound
                };
                prop_assert_eq!(e.delete(&key, v).unwrap(), want);
            }
            Op::DeleteIfNewer(k, back) => {
                let key = key_of(k);
                let ver = v - u64::from(back) * 3;
                let got = e.delete_if_newer(&key, ver).unwrap();
                match (m.held(&key, ver), got) {
                    (Held::Yes | Held::Maybe, WriteOutcome::NotStored) => {}
                    (Held::No | Held::Maybe, WriteOutcome::Deleted) => m.tomb(&key, ver),
                    (held, got) => {
                        prop_assert!(false, "delete_if_newer: held {:?}, got {:?}", held, got)
                    }
                }
            }
            Op::Add(k, x) | Op::Replace(k, x) => {
                let is_add = matches!(op, Op::Add(..));
                let key = key_of(k);
                let present = m.live(&key).is_some();
                let want = if present != is_add {
                    m.set(&key, val_of(x), 3, 0, v);
                    WriteOutcome::Stored
                } else {
                    WriteOutcome::NotStored
                };
                let got = if is_add {
                    e.add(&key, &val_of(x), 3, 0, v).unwrap()
                } else {
                    e.replace(&key, &val_of(x), 3, 0, v).unwrap()
                };
                prop_assert_eq!(got, want);
            }
            Op::Append(k, x) | Op::Prepend(k, x) => {
                let front = matches!(op, Op::Prepend(..));
                let key = key_of(k);
                let extra = vec![x; 3];
                let want = match m.live(&key).cloned() {
                    Some(r) => {
                        let value = if front {
                            [extra.clone(), r.value].concat()
                        } else {
                            [r.value, extra.clone()].concat()
                        };
                        m.set(&key, value, r.flags, r.expiry, v);
                        WriteOutcome::Stored
                    }
                    None => WriteOutcome::NotStored,
                };
                let got = if front {
                    e.prepend(&key, &extra, v)
                } else {
                    e.append(&key, &extra, v)
                };
                prop_assert_eq!(got.unwrap(), want);
            }
            Op::Incr(k, d) | Op::Decr(k, d) => {
                let up = matches!(op, Op::Incr(..));
                let key = key_of(k);
                let want = match m.live(&key).cloned() {
                    None => IncrOutcome::NotFound,
                    Some(r) => match std::str::from_utf8(&r.value)
                        .ok()
                        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                        .and_then(|s| s.parse::<u64>().ok())
                    {
                        None => IncrOutcome::NonNumeric,
                        Some(n) => {
                            let n = if up {
                                n.wrapping_add(u64::from(d))
                            } else {
                                n.saturating_sub(u64::from(d))
                            };
                            m.set(&key, n.to_string().into_bytes(), r.flags, r.expiry, v);
                            IncrOutcome::Value(n)
                        }
                    },
                };
                let got = if up {
                    e.incr(&key, u64::from(d), v)
                } else {
                    e.decr(&key, u64::from(d), v)
                };
                prop_assert_eq!(got.unwrap(), want);
            }
            Op::Touch(k, x) => {
                let key = key_of(k);
                let exp = exp_of(x, m.now);
                let want = match m.live(&key).cloned() {
                    Some(r) => {
                        m.set(&key, r.value, r.flags, exp, v);
                        WriteOutcome::Stored
                    }
                    None => WriteOutcome::NotFound,
                };
                prop_assert_eq!(e.touch(&key, exp, v).unwrap(), want);
            }
            Op::Get(k) => {
                let key = key_of(k);
                let want = m.live(&key).map(|r| Item {
                    value: r.value.clone(),
                    flags: r.flags,
                    version: r.version,
                    expiry: r.expiry,
                });
                prop_assert_eq!(e.get(&key).unwrap(), want);
            }
            Op::Advance(s) => {
                m.now += u32::from(s);
                e.set_clock(Some(m.now));
            }
            Op::Compact(budget) => {
                e.compact_step(u64::from(budget) + 1).unwrap();
                m.compacted();
            }
            Op::Gc(age, bound) => {
                let gc = TombstoneGc {
                    min_age_secs: u32::from(age),
                    below_version: bound.map(|b| v.saturating_sub(u64::from(b) * 3)),
                };
                e.collect_tombstones(gc).unwrap();
                m.gc = Some(gc);
            }
            Op::Flush => {
                e.flush(v).unwrap();
                m.flush = v;
            }
            Op::Retain(k) => {
                // As the server does after a rebalance: drop, then persist the drop by a snapshot.
                let gone = key_of(k);
                let dropped = e.retain(|key| key != gone.as_slice()).unwrap();
                let held = m.map.remove(&gone);
                if held.as_ref().is_some_and(|r| !r.maybe_gone) {
                    prop_assert_eq!(dropped, 1);
                }
                e.write_snapshot().unwrap();
            }
            Op::Reopen(snapshot) => {
                if snapshot {
                    e.write_snapshot().unwrap();
                }
                drop(e);
                e = open(dir.path());
                e.set_clock(Some(m.now));
                m.gc = None;
            }
        }
    }
    // Final check of every key, after one more restart.
    drop(e);
    let mut e = open(dir.path());
    e.set_clock(Some(m.now));
    for k in 0..12 {
        let key = key_of(k);
        let want = m.live(&key).map(|r| r.value.clone());
        prop_assert_eq!(e.get(&key).unwrap().map(|i| i.value), want);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn engine_matches_a_hashmap_model(ops in proptest::collection::vec(op(), 1..120)) {
        run_model(ops)?;
    }
}
