//! Recovery: Bitcask-style corruption tests (truncation at every offset of the last record, a bit
//! flipped in every byte of every record, junk appended, the snapshot deleted or damaged, a
//! compacted segment brought back) and a property test that opens stores holding random bytes.
//! The crash test (a child process killed while writing) is in storage_crash.rs.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use kumofs::storage::record::HEADER_LEN;
use kumofs::storage::{Config, Durability, Engine, RecoveryReport};

fn config(dir: &Path) -> Config {
    let mut cfg = Config::new(dir);
    cfg.durability = Durability::EveryWrite;
    cfg
}

fn open(dir: &Path) -> (Engine, RecoveryReport) {
    Engine::open(config(dir)).unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn seg1(dir: &Path) -> PathBuf {
    dir.join("seg-00000001.log")
}

/// Writes `keys` (each value = key repeated twice) into a fresh store; returns record offsets.
fn populate(dir: &Path, keys: &[&str]) -> Vec<(usize, usize)> {
    let (mut e, _) = open(dir);
    let mut offsets = Vec::new();
    let mut at = 0;
    for (i, k) in keys.iter().enumerate() {
        let value = k.repeat(2);
        e.put(k.as_bytes(), value.as_bytes(), 0, 0, i as u64 + 1)
            .unwrap();
        let len = HEADER_LEN + k.len() + value.len();
        offsets.push((at, len));
        at += len;
    }
    e.sync().unwrap();
    offsets
}

fn value(e: &mut Engine, k: &str) -> Option<Vec<u8>> {
    e.get(k.as_bytes()).unwrap().map(|i| i.value)
}

const KEYS: [&str; 5] = ["alpha", "beta", "gamma", "delta", "epsilon"];

#[test]
fn truncating_the_last_record_at_every_offset() {
    let base = tempfile::tempdir().unwrap();
    let offsets = populate(base.path(), &KEYS);
    let (start, len) = *offsets.last().unwrap();
    for cut in start..start + len {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(base.path(), dir.path());
        fs::OpenOptions::new()
            .write(true)
            .open(seg1(dir.path()))
            .unwrap()
            .set_len(cut as u64)
            .unwrap();
        let (mut e, report) = open(dir.path());
        assert_eq!(report.truncated_bytes, (cut - start) as u64, "cut {cut}");
        assert_eq!(value(&mut e, "epsilon"), None, "cut {cut}");
        for k in &KEYS[..4] {
            assert_eq!(
                value(&mut e, k),
                Some(k.repeat(2).into_bytes()),
                "cut {cut}"
            );
        }
        assert_eq!(fs::metadata(seg1(dir.path())).unwrap().len(), start as u64);
    }
}

#[test]
fn flipping_a_bit_in_each_byte_of_each_record() {
    let base = tempfile::tempdir().unwrap();
    let offsets = populate(base.path(), &KEYS);
    let pristine = fs::read(seg1(base.path())).unwrap();
    for (victim, &(start, len)) in offsets.iter().enumerate() {
        for at in start..start + len {
            let dir = tempfile::tempdir().unwrap();
            let mut bytes = pristine.clone();
            bytes[at] ^= 1 << (at % 8);
            fs::write(seg1(dir.path()), &bytes).unwrap();
            let (mut e, report) = open(dir.path());
            let context = format!("record {victim}, byte {at}");
            assert_eq!(value(&mut e, KEYS[victim]), None, "{context}");
            // The header checksum covers bytes 4..32 and the body checksum the rest: a flip in
            // the body is skipped by length, anywhere else by resynchronising (or cut, at the end).
            let in_body = at - start >= HEADER_LEN;
            if in_body {
                assert_eq!(report.bad_records, 1, "{context}: {report:?}");
            } else {
                assert!(
                    report.skipped_bytes + report.truncated_bytes > 0,
                    "{context}: {report:?}"
                );
            }
            for (i, k) in KEYS.iter().enumerate().filter(|(i, _)| *i != victim) {
                assert_eq!(
                    value(&mut e, k),
                    Some(k.repeat(2).into_bytes()),
                    "{context}: record {i} must survive"
                );
            }
            assert_eq!(e.stats().items, KEYS.len() as u64 - 1, "{context}");
        }
    }
}

#[test]
fn a_compacted_segment_brought_back_by_a_crash_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_size = 4096;
    let (mut e, _) = Engine::open(cfg.clone()).unwrap();
    for round in 0..6u64 {
        for k in 0..40u64 {
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
    e.sync().unwrap();
    // Keep a copy of every segment, then compact (retiring some) and make it all durable.
    let saved = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), saved.path());
    let mut retired = 0;
    for _ in 0..10_000 {
        let p = e.compact_step(64).unwrap();
        retired += p.segments_retired;
        if p.idle {
            break;
        }
    }
    assert!(retired > 0);
    e.sync().unwrap();
    e.write_snapshot().unwrap();
    drop(e);
    // "The crash": deleted segment files reappear.
    let mut restored = 0;
    for entry in fs::read_dir(saved.path()).unwrap() {
        let entry = entry.unwrap();
        let to = dir.path().join(entry.file_name());
        if !to.exists() {
            fs::copy(entry.path(), to).unwrap();
            restored += 1;
        }
    }
    assert_eq!(restored, retired);
    let (mut e, report) = Engine::open(cfg).unwrap();
    assert!(report.snapshot_loaded, "{report:?}");
    assert_eq!(u64::from(report.stale_segments), retired, "{report:?}");
    for k in 0..40u64 {
        assert_eq!(
            value(&mut e, &format!("key{k}")),
            Some(format!("v5-{k}").into_bytes()),
            "key{k}"
        );
    }
}

#[test]
fn junk_after_the_end_is_ignored_and_cut() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path(), &KEYS);
    let junk: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
    fs::OpenOptions::new()
        .append(true)
        .open(seg1(dir.path()))
        .unwrap()
        .write_all(&junk)
        .unwrap();
    let (mut e, report) = open(dir.path());
    assert_eq!(report.truncated_bytes, 1000);
    for k in KEYS {
        assert_eq!(value(&mut e, k), Some(k.repeat(2).into_bytes()));
    }
    // And a store of pure junk opens empty without panicking.
    let dir = tempfile::tempdir().unwrap();
    fs::write(seg1(dir.path()), &junk).unwrap();
    fs::write(dir.path().join("index.snap"), &junk).unwrap();
    let (e, report) = open(dir.path());
    assert!(e.is_empty() && report.snapshot_rejected.is_some());
}

#[test]
fn missing_or_damaged_snapshot_falls_back_to_a_scan() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path(), &KEYS);
    let (mut e, _) = open(dir.path());
    e.delete(b"beta", 100).unwrap();
    e.write_snapshot().unwrap();
    drop(e);
    let snap = dir.path().join("index.snap");
    let good = fs::read(&snap).unwrap();
    for case in ["missing", "flipped", "short"] {
        match case {
            "missing" => fs::remove_file(&snap).unwrap(),
            "flipped" => {
                let mut bad = good.clone();
                bad[20] ^= 1;
                fs::write(&snap, bad).unwrap();
            }
            _ => fs::write(&snap, &good[..good.len() / 2]).unwrap(),
        }
        let (mut e, report) = open(dir.path());
        assert!(!report.snapshot_loaded, "{case}");
        assert_eq!(report.snapshot_rejected.is_some(), case != "missing");
        assert_eq!(value(&mut e, "beta"), None, "{case}");
        assert_eq!(
            value(&mut e, "gamma"),
            Some(b"gammagamma".to_vec()),
            "{case}"
        );
    }
    fs::write(&snap, &good).unwrap();
    let (mut e, report) = open(dir.path());
    assert!(report.snapshot_loaded);
    assert_eq!(value(&mut e, "alpha"), Some(b"alphaalpha".to_vec()));
}

#[test]
fn damage_under_a_running_engine_is_never_returned() {
    let dir = tempfile::tempdir().unwrap();
    let (mut e, _) = open(dir.path());
    e.put(b"k", b"precious", 0, 0, 1).unwrap();
    e.sync().unwrap();
    // The open engine appends to segment 1 (a fresh store); flip the last value byte under it,
    // in place (the engine reads it through its memory map).
    let path = seg1(dir.path());
    let bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[bytes[last] ^ 1], last as u64).unwrap();
    assert!(e.get(b"k").is_err());
    // The key stays writable.
    e.put(b"k", b"fresh", 0, 0, 2).unwrap();
    assert_eq!(value(&mut e, "k"), Some(b"fresh".to_vec()));
}

// ---- random damage ----

/// One way to damage a store.
#[derive(Clone, Debug)]
enum Damage {
    /// Overwrite bytes of segment 1 at an offset (taken modulo its length).
    Overwrite(usize, Vec<u8>),
    /// Cut segment 1 to a length (modulo its length).
    Truncate(usize),
    /// Append bytes to segment 1.
    Append(Vec<u8>),
    /// Replace the snapshot with random bytes.
    SnapshotJunk(Vec<u8>),
    /// Overwrite bytes of the snapshot and fix its checksum, so its contents are parsed.
    SnapshotResealed(usize, Vec<u8>),
    /// Write a second segment made of random bytes.
    JunkSegment(Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    let bytes = || proptest::collection::vec(any::<u8>(), 1..64);
    prop_oneof![
        (any::<usize>(), bytes()).prop_map(|(at, b)| Damage::Overwrite(at, b)),
        any::<usize>().prop_map(Damage::Truncate),
        bytes().prop_map(Damage::Append),
        proptest::collection::vec(any::<u8>(), 0..400).prop_map(Damage::SnapshotJunk),
        (any::<usize>(), bytes()).prop_map(|(at, b)| Damage::SnapshotResealed(at, b)),
        proptest::collection::vec(any::<u8>(), 0..400).prop_map(Damage::JunkSegment),
    ]
}

fn overwrite(path: &Path, at: usize, patch: &[u8]) {
    let mut bytes = fs::read(path).unwrap();
    if bytes.is_empty() {
        return;
    }
    let at = at % bytes.len();
    for (i, b) in patch.iter().enumerate() {
        if let Some(slot) = bytes.get_mut(at + i) {
            *slot = *b;
        }
    }
    fs::write(path, bytes).unwrap();
}

fn apply_damage(dir: &Path, damage: &Damage) {
    let snap = dir.join("index.snap");
    match damage {
        Damage::Overwrite(at, patch) => overwrite(&seg1(dir), *at, patch),
        Damage::Truncate(len) => {
            let file = fs::OpenOptions::new().write(true).open(seg1(dir)).unwrap();
            let full = file.metadata().unwrap().len() as usize;
            file.set_len((len % (full + 1)) as u64).unwrap();
        }
        Damage::Append(junk) => fs::OpenOptions::new()
            .append(true)
            .open(seg1(dir))
            .unwrap()
            .write_all(junk)
            .unwrap(),
        Damage::SnapshotJunk(junk) => fs::write(&snap, junk).unwrap(),
        Damage::SnapshotResealed(at, patch) => {
            let mut bytes = fs::read(&snap).unwrap();
            // An earlier damage may have left a snapshot too short to carry a checksum.
            let Some(body) = bytes.len().checked_sub(4).filter(|&body| body > 0) else {
                return;
            };
            let at = at % body;
            for (i, b) in patch.iter().enumerate() {
                if at + i < body {
                    bytes[at + i] = *b;
                }
            }
            let crc = crc32fast::hash(&bytes[..body]);
            bytes[body..].copy_from_slice(&crc.to_le_bytes());
            fs::write(&snap, bytes).unwrap();
        }
        Damage::JunkSegment(junk) => fs::write(dir.join("seg-00000002.log"), junk).unwrap(),
    }
}

fn random_damage_never_panics(damages: Vec<Damage>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut e, _) = open(dir.path());
        for (i, k) in KEYS.iter().enumerate() {
            e.put(k.as_bytes(), k.repeat(2).as_bytes(), 0, 0, i as u64 + 1)
                .unwrap();
        }
        e.delete(b"beta", 50).unwrap();
        e.write_snapshot().unwrap();
    }
    for d in &damages {
        apply_damage(dir.path(), d);
    }
    let (mut e, _report) = open(dir.path());
    // Whatever survived reads back whole: a key's value is the one written, or it is missing.
    for k in KEYS {
        if let Ok(Some(item)) = e.get(k.as_bytes()) {
            prop_assert_eq!(item.value, k.repeat(2).into_bytes(), "key {}", k);
        }
    }
    let mut visited = Vec::new();
    e.for_each(true, |entry| {
        visited.push((entry.key.to_vec(), entry.value.to_vec(), entry.tombstone));
        true
    })
    .unwrap();
    for (key, value, tombstone) in visited {
        let key = String::from_utf8(key).expect("a key that was never written");
        prop_assert!(KEYS.contains(&key.as_str()), "unknown key {}", key);
        if !tombstone {
            prop_assert_eq!(value, key.repeat(2).into_bytes());
        }
    }
    // And the store stays usable: writes, compaction and a restart work.
    e.put(b"after", b"damage", 0, 0, 100).unwrap();
    for _ in 0..100 {
        if e.compact_step(64).unwrap().idle {
            break;
        }
    }
    e.sync().unwrap();
    drop(e);
    let (mut e, _) = open(dir.path());
    prop_assert_eq!(value(&mut e, "after"), Some(b"damage".to_vec()));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]
    #[test]
    fn recovery_never_panics_on_random_damage(
        damages in proptest::collection::vec(damage(), 1..4)
    ) {
        random_damage_never_panics(damages)?;
    }
}
