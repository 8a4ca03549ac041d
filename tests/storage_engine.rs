//! Behaviour of every engine operation, and a property test of the engine against a HashMap model.

use std::collections::HashMap;

use kumofs::storage::{Config, Durability, Engine, IncrOutcome, Item, StorageError, WriteOutcome};
use proptest::prelude::*;

const T0: u32 = 1_000_000;

fn config(dir: &std::path::Path) -> Config {
    let mut cfg = Config::new(dir);
    cfg.segment_size = 4096;
    cfg.compact_garbage_ratio = 0.3;
    cfg.durability = Durability::None;
    cfg
}

fn open(dir: &std::path::Path) -> Engine {
    let (mut engine, _) = Engine::open(config(dir)).unwrap();
    engine.set_clock(Some(T0));
    engine
}

fn value(e: &mut Engine, key: &[u8]) -> Option<Vec<u8>> {
    e.get(key).unwrap().map(|i| i.value)
}

#[test]
fn put_get_overwrite_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = open(dir.path());
    assert_eq!(e.get(b"a").unwrap(), None);
    e.put(b"a", b"one", 7, 0, 1).unwrap();
    assert_eq!(
        e.get(b"a").unwrap(),
        Some(Item {
            value: b"one".to_vec(),
            flags: 7,
            version: 1,
            expiry: 0
        })
    );
    e.put(b"a", b"", 8, 0, 2).unwrap();
    assert_eq!(value(&mut e, b"a"), Some(vec![]));
    assert!(matches!(
        e.put(&[b'k'; 251], b"v", 0, 0, 3),
        Err(StorageError::KeyTooLong(251))
    ));
    assert!(matches!(
        e.put(b"", b"v", 0, 0, 3),
        Err(StorageError::EmptyKey)
    ));
    let big = vec![0u8; (1 << 20) + 1];
    assert!(matches!(
        e.put(b"b", &big, 0, 0, 3),
        Err(StorageError::ValueTooLarge(_))
    ));
    e.put(b"b", &big[1..], 0, 0, 3).unwrap();
    assert_eq!(value(&mut e, b"b").map(|v| v.len()), Some(1 << 20));
    // Records larger than one lookup read: overwrite and read-modify-write read them whole.
    e.put(b"c", &vec![b'x'; 10_000], 0, 0, 4).unwrap();
    assert_eq!(e.append(b"c", b"yz", 5).unwrap(), WriteOutcome::Stored);
    let c = value(&mut e, b"c").unwrap();
    assert_eq!((c.len(), &c[9_998..]), (10_002, &b"xxyz"[..]));
    assert!(matches!(
        e.append(b"b", b"!", 6),
        Err(StorageError::ValueTooLarge(_))
    ));
    let s = e.stats();
    assert_eq!((s.items, s.sets, s.gets), (3, 5, 5));
    assert!(s.bytes_garbage > 0 && s.bytes_live > 1 << 20);
}

#[test]
fn versions_cas_and_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = open(dir.path());
    assert_eq!(
        e.put_if_newer(b"k", b"v5", 0, 0, 5).unwrap(),
        WriteOutcome::Stored
    );
    assert_eq!(
        e.put_if_newer(b"k", b"v4", 0, 0, 4).unwrap(),
        WriteOutcome::NotStored
    );
    assert_eq!(
        e.put_if_newer(b"k", b"v5b", 0, 0, 5).unwrap(),
        WriteOutcome::NotStored
    );
    assert_eq!(
        e.put_if_version(b"k", b"x", 0, 0, 4, 6).unwrap(),
        WriteOutcome::Exists
    );
    assert_eq!(
        e.put_if_version(b"k", b"x", 0, 0, 5, 6).unwrap(),
        WriteOutcome::Stored
    );
    assert_eq!(
        e.put_if_version(b"nope", b"x", 0, 0, 5, 6).unwrap(),
        WriteOutcome::NotFound
    );
    assert_eq!(e.delete(b"k", 7).unwrap(), WriteOutcome::Deleted);
    assert_eq!(e.delete(b"k", 8).unwrap(), WriteOutcome::NotFound);
    assert_eq!(value(&mut e, b"k"), None);
    // A replicated older put must not resurrect the deleted key.
    assert_eq!(
        e.put_if_newer(b"k", b"old", 0, 0, 6).unwrap(),
        WriteOutcome::NotStored
    );
    assert_eq!(
        e.put_if_newer(b"k", b"new", 0, 0, 9).unwrap(),
        WriteOutcome::Stored
    );
    // Replicated delete of an absent key still leaves a tombstone.
    assert_eq!(e.delete_if_newer(b"z", 10).unwrap(), WriteOutcome::Deleted);
    assert_eq!(
        e.put_if_newer(b"z", b"old", 0, 0, 3).unwrap(),
        WriteOutcome::NotStored
    );
    assert_eq!(e.delete_if_newer(b"k", 2).unwrap(), WriteOutcome::NotStored);
    assert_eq!(e.stats().tombstones, 1);
    assert_eq!(e.stats().deletes, 2);
}

#[test]
fn expiry_touch_and_add() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = open(dir.path());
    e.put(b"k", b"v", 0, T0 + 10, 1).unwrap();
    assert_eq!(e.add(b"k", b"w", 0, 0, 2).unwrap(), WriteOutcome::NotStored);
    assert_eq!(e.touch(b"k", T0 + 20, 3).unwrap(), WriteOutcome::Stored);
    e.set_clock(Some(T0 + 15));
    assert_eq!(value(&mut e, b"k"), Some(b"v".to_vec()));
    e.set_clock(Some(T0 + 20));
    assert_eq!(value(&mut e, b"k"), None);
    assert_eq!(e.touch(b"k", 0, 4).unwrap(), WriteOutcome::NotFound);
    assert_eq!(
        e.replace(b"k", b"r", 0, 0, 5).unwrap(),
        WriteOutcome::NotStored
    );
    assert_eq!(e.add(b"k", b"w", 3, 0, 6).unwrap(), WriteOutcome::Stored);
    assert_eq!(
        e.get(b"k").unwrap().map(|i| (i.value, i.flags, i.version)),
        Some((b"w".to_vec(), 3, 6))
    );
    assert_eq!(
        e.replace(b"k", b"r", 0, 0, 7).unwrap(),
        WriteOutcome::Stored
    );
    assert_eq!(value(&mut e, b"k"), Some(b"r".to_vec()));
}

#[test]
fn append_prepend_incr_decr() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = open(dir.path());
    assert_eq!(e.append(b"k", b"x", 1).unwrap(), WriteOutcome::NotStored);
    e.put(b"k", b"mid", 42, T0 + 100, 2).unwrap();
    assert_eq!(e.append(b"k", b"-end", 3).unwrap(), WriteOutcome::Stored);
    assert_eq!(e.prepend(b"k", b"start-", 4).unwrap(), WriteOutcome::Stored);
    let item = e.get(b"k").unwrap().unwrap();
    assert_eq!(
        (item.value.as_slice(), item.flags, item.expiry, item.version),
        (&b"start-mid-end"[..], 42, T0 + 100, 4)
    );
    assert_eq!(e.incr(b"k", 1, 5).unwrap(), IncrOutcome::NonNumeric);
    assert_eq!(e.incr(b"n", 1, 5).unwrap(), IncrOutcome::NotFound);
    e.put(b"n", b"18446744073709551614", 0, 0, 6).unwrap();
    assert_eq!(e.incr(b"n", 3, 7).unwrap(), IncrOutcome::Value(1));
    assert_eq!(value(&mut e, b"n"), Some(b"1".to_vec()));
    assert_eq!(e.decr(b"n", 5, 8).unwrap(), IncrOutcome::Value(0));
    assert_eq!(e.incr(b"n", 10, 9).unwrap(), IncrOutcome::Value(10));
    assert_eq!(e.get(b"n").unwrap().unwrap().version, 9);
}

#[test]
fn flush_iterate_retain_and_gc() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = open(dir.path());
    for i in 0..10u64 {
        e.put(format!("k{i}").as_bytes(), b"v", 0, 0, i + 1)
            .unwrap();
    }
    e.flush(6).unwrap(); // versions 1..=5 vanish
    assert_eq!(value(&mut e, b"k4"), None);
    assert_eq!(value(&mut e, b"k5"), Some(b"v".to_vec()));
    e.delete(b"k9", 20).unwrap();
    let mut seen = Vec::new();
    e.for_each(true, |entry| {
        seen.push((
            String::from_utf8_lossy(entry.key).into_owned(),
            entry.tombstone,
        ));
        true
    })
    .unwrap();
    seen.sort();
    assert_eq!(seen.len(), 5);
    assert!(seen.contains(&("k9".into(), true)));
    assert_eq!(e.retain(|k| k != b"k5").unwrap(), 1);
    assert_eq!(value(&mut e, b"k5"), None);
    // The flush survives a reopen.
    drop(e);
    let mut e = open(dir.path());
    assert_eq!(value(&mut e, b"k4"), None);
    assert_eq!(value(&mut e, b"k6"), Some(b"v".to_vec()));
    // GC: a young tombstone stays, an old one goes (all in the oldest segment here).
    e.set_clock(Some(T0 + 100));
    let before = e.stats().tombstones;
    assert_eq!(before, 1);
    e.gc_tombstones(1000).unwrap();
    assert_eq!(e.stats().tombstones, 1);
    e.gc_tombstones(50).unwrap();
    assert_eq!(e.stats().tombstones, 0);
    assert_eq!(
        e.put_if_newer(b"k9", b"again", 0, 0, 1).unwrap(),
        WriteOutcome::Stored
    );
}

#[test]
fn compaction_reclaims_space_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = open(dir.path());
    let mut version = 0;
    for round in 0..20 {
        for k in 0..30 {
            version += 1;
            let v = format!("value-{round}-{k}");
            e.put(format!("key{k}").as_bytes(), v.as_bytes(), 0, 0, version)
                .unwrap();
        }
    }
    let before = e.stats();
    assert!(before.segments > 3);
    let mut removed = 0;
    for _ in 0..1000 {
        let p = e.compact_step(64).unwrap();
        removed += p.segments_removed;
        // Reads and writes interleave with compaction steps.
        assert_eq!(value(&mut e, b"key3"), Some(b"value-19-3".to_vec()));
        if p.idle {
            break;
        }
    }
    let after = e.stats();
    assert!(removed > 0);
    assert!(
        after.bytes_garbage < before.bytes_garbage,
        "{before:?} {after:?}"
    );
    assert_eq!(after.items, 30);
    drop(e);
    let (mut e, report) = Engine::open(config(dir.path())).unwrap();
    assert!(!report.snapshot_loaded);
    for k in 0..30 {
        assert_eq!(
            value(&mut e, format!("key{k}").as_bytes()),
            Some(format!("value-19-{k}").into_bytes())
        );
    }
}

#[test]
fn snapshot_restart_applies_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = open(dir.path());
    for k in 0..100u64 {
        e.put(format!("key{k}").as_bytes(), b"before", 0, 0, k + 1)
            .unwrap();
    }
    e.write_snapshot().unwrap();
    e.put(b"key1", b"after", 0, 0, 500).unwrap();
    e.delete(b"key2", 501).unwrap();
    drop(e);
    let (mut e, report) = Engine::open(config(dir.path())).unwrap();
    assert!(report.snapshot_loaded);
    assert_eq!(report.records_scanned, 2);
    assert_eq!(value(&mut e, b"key1"), Some(b"after".to_vec()));
    assert_eq!(value(&mut e, b"key2"), None);
    assert_eq!(value(&mut e, b"key99"), Some(b"before".to_vec()));
}

#[test]
fn snapshot_then_compaction_then_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = open(dir.path());
    for round in 0..5u64 {
        for k in 0..60u64 {
            let v = format!("v{round}-{k}");
            e.put(
                format!("key{k}").as_bytes(),
                v.as_bytes(),
                0,
                0,
                round * 100 + k + 1,
            )
            .unwrap();
        }
    }
    e.write_snapshot().unwrap();
    let mut removed = 0;
    for _ in 0..500 {
        let p = e.compact_step(32).unwrap();
        removed += p.segments_removed;
        if p.idle {
            break;
        }
    }
    assert!(removed > 0);
    drop(e);
    let (mut e, report) = Engine::open(config(dir.path())).unwrap();
    assert!(report.snapshot_loaded, "{report:?}");
    assert_eq!(e.stats().items, 60);
    for k in 0..60u64 {
        assert_eq!(
            value(&mut e, format!("key{k}").as_bytes()),
            Some(format!("v4-{k}").into_bytes())
        );
    }
}

// ---- the model test ----

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
    Gc(u8),
    Flush,
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
        1 => (0u8..8).prop_map(Op::Gc),
        1 => Just(Op::Flush),
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
}

struct Model {
    map: HashMap<Vec<u8>, Rec>,
    now: u32,
    flush: u64,
}

impl Model {
    fn live(&self, key: &[u8]) -> Option<&Rec> {
        self.map.get(key).filter(|r| {
            !r.tomb && r.version >= self.flush && (r.expiry == 0 || r.expiry > self.now)
        })
    }
    fn held_version(&self, key: &[u8]) -> Option<u64> {
        self.map
            .get(key)
            .map(|r| r.version)
            .filter(|&v| v >= self.flush)
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
    };
    let mut version = 100u64;
    let mut gc_since_snapshot = false;
    for op in ops {
        version += 1;
        let v = version;
        match op {
            Op::Put(k, x) => {
                let (key, val, exp) = (key_of(k), val_of(x), exp_of(x, m.now));
                e.put(&key, &val, u32::from(x), exp, v).unwrap();
                m.set(&key, val, u32::from(x), exp, v);
            }
            Op::PutIfNewer(k, x, back) => {
                let ver = v - u64::from(back) * 3;
                let (key, val) = (key_of(k), val_of(x));
                let want = if m.held_version(&key).is_some_and(|h| h >= ver) {
                    WriteOutcome::NotStored
                } else {
                    m.set(&key, val.clone(), 1, 0, ver);
                    WriteOutcome::Stored
                };
                prop_assert_eq!(e.put_if_newer(&key, &val, 1, 0, ver).unwrap(), want);
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
                let want = if m.held_version(&key).is_some_and(|h| h >= ver) {
                    WriteOutcome::NotStored
                } else {
                    m.tomb(&key, ver);
                    WriteOutcome::Deleted
                };
                prop_assert_eq!(e.delete_if_newer(&key, ver).unwrap(), want);
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
            }
            Op::Gc(age) => {
                // Only non-live entries may vanish; which tombstones go is the engine's business,
                // so the model forgets tombstones old enough (all reads of them agree either way
                // except put_if_newer, which the model then cannot predict: drop them from both).
                e.gc_tombstones(u32::from(age)).unwrap();
                gc_since_snapshot = true;
                let mut dropped = Vec::new();
                for (key, r) in &m.map {
                    if r.tomb || r.version < m.flush || (r.expiry != 0 && r.expiry <= m.now) {
                        dropped.push(key.clone());
                    }
                }
                for key in dropped {
                    // Align both: whatever the engine kept, make it forget too by flushing nothing;
                    // instead, overwrite with a fresh value in both so later ops stay predictable.
                    version += 1;
                    e.put(&key, b"refreshed", 0, 0, version).unwrap();
                    m.set(&key, b"refreshed".to_vec(), 0, 0, version);
                }
            }
            Op::Flush => {
                e.flush(v).unwrap();
                m.flush = v;
            }
            Op::Reopen(snapshot) => {
                if snapshot || gc_since_snapshot {
                    e.write_snapshot().unwrap();
                    gc_since_snapshot = false;
                }
                drop(e);
                e = open(dir.path());
                e.set_clock(Some(m.now));
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
