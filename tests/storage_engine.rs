//! Behaviour of every engine operation (the model-based property test is in storage_model.rs).

use kumofs::storage::{Config, Durability, Engine, IncrOutcome, Item, StorageError, WriteOutcome};

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

/// Runs compaction steps until it has nothing left to do; returns the segments retired.
fn compact_until_idle(e: &mut Engine) -> u64 {
    let mut retired = 0;
    for _ in 0..10_000 {
        let p = e.compact_step(64).unwrap();
        retired += p.segments_retired;
        if p.idle {
            return retired;
        }
    }
    panic!("compaction never went idle");
}

fn segment_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            let name = name.to_string_lossy();
            name.starts_with("seg-") && name.ends_with(".log")
        })
        .count()
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
    compact_until_idle(&mut e);
    assert_eq!(e.stats().tombstones, 1);
    e.gc_tombstones(50).unwrap();
    compact_until_idle(&mut e);
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
        removed += p.segments_retired;
        // Reads and writes interleave with compaction steps.
        assert_eq!(value(&mut e, b"key3"), Some(b"value-19-3".to_vec()));
        if p.idle {
            break;
        }
    }
    let after = e.stats();
    assert!(removed > 0);
    // Retired files stay until a sync round has made the copies durable.
    let files_before_sync = segment_files(dir.path());
    assert_eq!(files_before_sync as u64, after.segments + removed);
    e.sync().unwrap();
    assert_eq!(segment_files(dir.path()) as u64, after.segments);
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
        removed += p.segments_retired;
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

#[test]
fn chunked_scans_visit_each_key_once_despite_writes_between_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = open(dir.path());
    for k in 0..500u64 {
        e.put(format!("key{k}").as_bytes(), b"v", 0, 0, k + 1)
            .unwrap();
    }
    e.delete(b"key7", 1000).unwrap();
    let mut seen = std::collections::HashMap::new();
    let chunks = 64u64;
    let width = (1u64 << 32) / chunks;
    for c in 0..chunks {
        let lo = (c * width) as u32;
        let hi = ((c + 1) * width - 1) as u32;
        e.for_each_in(lo..=hi, false, |entry| {
            *seen.entry(entry.key.to_vec()).or_insert(0) += 1;
            true
        })
        .unwrap();
        // Writes between chunks grow the index and move slots.
        for j in 0..40u64 {
            e.put(
                format!("new{c}-{j}").as_bytes(),
                b"n",
                0,
                0,
                10_000 + c * 100 + j,
            )
            .unwrap();
        }
    }
    for k in (0..500u64).filter(|&k| k != 7) {
        assert_eq!(seen.get(format!("key{k}").as_bytes()), Some(&1), "key{k}");
    }
    assert!(!seen.contains_key(&b"key7"[..]));
    assert!(seen.values().all(|&n| n == 1));
    // Chunked retain drops exactly the rejected keys.
    let mut dropped = 0;
    for c in 0..chunks {
        let (lo, hi) = ((c * width) as u32, ((c + 1) * width - 1) as u32);
        dropped += e.retain_in(lo..=hi, |k| !k.starts_with(b"new")).unwrap();
    }
    assert_eq!(dropped, chunks * 40);
    assert_eq!(e.stats().items, 499);
}

#[test]
fn counters_track_items_bytes_and_operations() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = open(dir.path());
    let rec = |key: usize, value: usize| (kumofs::storage::record::HEADER_LEN + key + value) as u64;
    e.put(b"a", b"1111", 0, 0, 1).unwrap();
    e.put(b"bb", b"22", 0, 0, 2).unwrap();
    e.put(b"a", b"333", 0, 0, 3).unwrap();
    assert!(e.get(b"a").unwrap().is_some());
    assert!(e.get(b"zz").unwrap().is_none());
    assert_eq!(e.delete(b"bb", 4).unwrap(), WriteOutcome::Deleted);
    assert_eq!(e.delete(b"bb", 5).unwrap(), WriteOutcome::NotFound);
    let s = e.stats();
    assert_eq!((s.items, s.tombstones), (1, 1));
    assert_eq!((s.sets, s.deletes, s.gets), (3, 1, 2));
    assert_eq!(s.bytes_live, rec(1, 3) + rec(2, 0));
    assert_eq!(s.bytes_garbage, rec(1, 4) + rec(2, 2));
    assert_eq!(s.segments, 1);
    // Items and bytes are recomputed on open; operation counters count this process only.
    drop(e);
    let e = open(dir.path());
    let r = e.stats();
    assert_eq!((r.items, r.tombstones), (1, 1));
    assert_eq!(
        (r.bytes_live, r.bytes_garbage),
        (s.bytes_live, s.bytes_garbage)
    );
    assert_eq!((r.sets, r.deletes, r.gets), (0, 0, 0));
}

#[test]
fn compacted_segments_are_deleted_only_after_a_round_that_began_after_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = open(dir.path());
    for round in 0..10u64 {
        for k in 0..30u64 {
            e.put(
                format!("key{k}").as_bytes(),
                b"some value bytes",
                0,
                0,
                round * 100 + k + 1,
            )
            .unwrap();
        }
    }
    let early = e.begin_sync().unwrap();
    let retired = compact_until_idle(&mut e);
    assert!(retired > 0);
    let files = segment_files(dir.path());
    // A round that began before the retirement does not cover the copies.
    assert_eq!(e.finish_sync(early, true).unwrap(), 0);
    assert_eq!(segment_files(dir.path()), files);
    // A failed round deletes nothing and leaves everything pending.
    e.put(b"late", b"write", 0, 0, 5000).unwrap();
    let failed = e.begin_sync().unwrap();
    assert_eq!(e.finish_sync(failed, false).unwrap(), 0);
    assert!(e.has_unsynced() && e.needs_housekeeping_sync());
    assert_eq!(segment_files(dir.path()), files);
    let mut round = e.begin_sync().unwrap();
    for file in round.take_files() {
        file.sync_data().unwrap();
    }
    assert_eq!(e.finish_sync(round, true).unwrap(), retired);
    assert_eq!(segment_files(dir.path()) as u64, files as u64 - retired);
    for k in 0..30u64 {
        assert_eq!(
            value(&mut e, format!("key{k}").as_bytes()),
            Some(b"some value bytes".to_vec())
        );
    }
}

#[test]
fn buffered_appends_are_readable_and_reach_the_file_on_write_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = open(dir.path());
    e.put(b"k", b"buffered", 0, 0, 1).unwrap();
    assert!(e.has_tail());
    assert_eq!(value(&mut e, b"k"), Some(b"buffered".to_vec()));
    let seg = dir.path().join("seg-00000001.log");
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), 0);
    e.write_out().unwrap();
    assert!(!e.has_tail());
    let on_disk = std::fs::metadata(&seg).unwrap().len();
    assert_eq!(
        on_disk,
        (kumofs::storage::record::HEADER_LEN + 1 + 8) as u64
    );
    // Read back through the memory map now, and after more appends past it.
    assert_eq!(value(&mut e, b"k"), Some(b"buffered".to_vec()));
    e.put(b"k2", b"x", 0, 0, 2).unwrap();
    assert_eq!(value(&mut e, b"k"), Some(b"buffered".to_vec()));
    assert_eq!(value(&mut e, b"k2"), Some(b"x".to_vec()));
}

#[test]
fn visit_record_hands_out_a_key_as_a_copy_would_send_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = open(dir.path());
    let owned = |e: &Engine, key: &[u8]| {
        e.visit_record(key, |r| {
            (
                r.key.to_vec(),
                r.value.to_vec(),
                r.flags,
                r.expiry,
                r.version,
                r.tombstone,
            )
        })
        .unwrap()
    };
    e.put(b"v", b"value", 7, T0 + 10, 3).unwrap();
    assert_eq!(
        owned(&e, b"v"),
        Some((b"v".to_vec(), b"value".to_vec(), 7, T0 + 10, 3, false))
    );
    // A tombstone is a record (with its version and its delete time).
    e.put(b"d", b"x", 0, 0, 4).unwrap();
    e.delete(b"d", 5).unwrap();
    assert_eq!(
        owned(&e, b"d"),
        Some((b"d".to_vec(), vec![], 0, T0, 5, true))
    );
    assert_eq!(owned(&e, b"absent"), None);
    // An expired value and a flushed record are none.
    e.set_clock(Some(T0 + 10));
    assert_eq!(owned(&e, b"v"), None);
    e.flush(6).unwrap();
    assert_eq!(owned(&e, b"d"), None);
    assert!(e.visit_record(b"", |_| ()).is_err());
}

#[test]
fn a_held_lookup_is_reused_only_while_the_index_still_points_there() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = open(dir.path());
    e.put(b"k", b"one", 0, 0, 1).unwrap();
    let held = e.held(b"k").unwrap();
    assert_eq!(held.version(), Some(1));
    e.put_held(held, b"k", b"two", 0, 0, 2).unwrap();
    assert_eq!(value(&mut e, b"k"), Some(b"two".to_vec()));

    // Stale: the key was written again after the lookup; the write still replaces, not adds.
    let stale = e.held(b"k").unwrap();
    e.put(b"k", b"three", 0, 0, 3).unwrap();
    e.put_held(stale, b"k", b"four", 0, 0, 4).unwrap();
    // Absent when looked up, written before the held put.
    let absent = e.held(b"new").unwrap();
    assert_eq!(absent.version(), None);
    e.put(b"new", b"x", 0, 0, 5).unwrap();
    e.put_held(absent, b"new", b"y", 0, 0, 6).unwrap();
    // Moved by compaction between the lookup and the put.
    let moved = e.held(b"new").unwrap();
    for i in 0..200u32 {
        e.put(b"churn", &i.to_be_bytes(), 0, 0, 10 + u64::from(i))
            .unwrap();
    }
    compact_until_idle(&mut e);
    e.put_held(moved, b"new", b"z", 0, 0, 500).unwrap();

    assert_eq!(value(&mut e, b"k"), Some(b"four".to_vec()));
    assert_eq!(value(&mut e, b"new"), Some(b"z".to_vec()));
    let mut keys = Vec::new();
    e.for_each(true, |entry| {
        keys.push(entry.key.to_vec());
        true
    })
    .unwrap();
    keys.sort();
    assert_eq!(
        keys,
        vec![b"churn".to_vec(), b"k".to_vec(), b"new".to_vec()]
    );
    assert_eq!(e.len(), 3);
}
