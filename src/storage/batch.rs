//! Newest-version-wins batches: what a replica does with a batch of replicated writes, applied
//! with the memory accesses of several records in flight at once.
//!
//! Applying one record costs two dependent cache misses once the store outgrows the CPU caches:
//! the index slot of the key's tag, then the record that slot points to, whose header and key
//! confirm the match (see [`super::engine`]). Record after record, the CPU waits for each miss in
//! turn. A batch knows its keys in advance, so [`Engine::apply_newer_batch`] runs three stages
//! [`DISTANCE`] records apart: hash a key and prefetch its home slot; later, read that slot's first
//! candidate and prefetch the record header (and the key bytes) it points to; later again, apply
//! the record for real with [`Engine::apply_newer`], which is `put_if_newer` / `delete_if_newer`
//! itself. The prefetches are hints and nothing else: the last stage looks everything up again, so
//! a record changed by an earlier one of the same batch (the same key twice, an index growth that
//! moved slots, a segment roll) is applied exactly as if the records came one by one, at worst
//! without the benefit of its prefetch.

use super::engine::find_tagged_in;
use super::index::tag_of;
use super::record::{Kind, HEADER_LEN};
use super::{Engine, StorageError, WriteOutcome};

/// Records between two stages of [`Engine::apply_newer_batch`]: far enough apart that a
/// prefetch has completed when its record gets there (one record's apply takes a few hundred
/// nanoseconds, a miss about one hundred), close enough that a few dozen lines in flight stay
/// in the L1 cache.
pub const DISTANCE: usize = 8;
/// Size of the ring of tags kept between the stages (a power of two above `2 * DISTANCE`).
const RING: usize = 32;
const _: () = assert!(RING.is_power_of_two() && RING > 2 * DISTANCE);

/// One record of a newest-version-wins batch (a replicated write, a rebalance copy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewerRecord<'a> {
    pub key: &'a [u8],
    /// Ignored for a tombstone.
    pub value: &'a [u8],
    /// Ignored for a tombstone.
    pub flags: u32,
    /// Unix seconds, 0 = never. Ignored for a tombstone, which records the time it is written.
    pub expiry: u32,
    pub version: u64,
    pub tombstone: bool,
}

/// What a batch did: records written, and records refused (older than what is held, or not
/// admitted by the caller).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NewerCounts {
    pub applied: u32,
    pub stale: u32,
}

/// Asks the CPU to start loading the cache line holding `p`. A hint: it never faults, whatever the
/// address, and does nothing on targets without the instruction.
#[inline(always)]
pub(crate) fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` only hints the cache; it reads nothing architecturally and never
    // faults, even on an unmapped address. SSE is part of every x86_64 CPU.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

impl Engine {
    /// Applies `records` in order, each exactly as [`Engine::put_if_newer`] (a value) or
    /// [`Engine::delete_if_newer`] (a tombstone) would, so a record later in the batch sees the
    /// earlier ones. `admit` is asked about each record just before it is applied; a record it
    /// refuses is counted stale and not written. Stops at the first error (bad key or value, I/O),
    /// with the records before it applied, as one-by-one calls would.
    pub fn apply_newer_batch(
        &mut self,
        records: &[NewerRecord<'_>],
        mut admit: impl FnMut(&NewerRecord<'_>) -> bool,
    ) -> Result<NewerCounts, StorageError> {
        let mut counts = NewerCounts::default();
        let mut tags = [0u32; RING];
        let n = records.len();
        for step in 0..n + 2 * DISTANCE {
            if let Some(record) = records.get(step) {
                let tag = tag_of(record.key);
                tags[step % RING] = tag;
                self.index.prefetch_home(tag);
            }
            if let Some(i) = step.checked_sub(DISTANCE).filter(|&i| i < n) {
                self.prefetch_record(records[i].key, tags[i % RING]);
            }
            let Some(i) = step.checked_sub(2 * DISTANCE).filter(|&i| i < n) else {
                continue;
            };
            let record = &records[i];
            if !admit(record) {
                counts.stale += 1;
                continue;
            }
            match self.apply_newer(record, tags[i % RING])? {
                WriteOutcome::Stored | WriteOutcome::Deleted => counts.applied += 1,
                _ => counts.stale += 1,
            }
        }
        Ok(counts)
    }

    /// Prefetches the record that `tag`'s first candidate slot points to: its header and the line
    /// holding the end of `key`, which the lookup compares.
    fn prefetch_record(&self, key: &[u8], tag: u32) {
        let Some(pos) = self.index.candidates(tag).next() else {
            return;
        };
        let Ok(bytes) = self.record(self.index.get(pos)) else {
            return;
        };
        prefetch(bytes.as_ptr());
        let key_end = (HEADER_LEN + key.len()).min(bytes.len()).saturating_sub(1);
        prefetch(bytes.as_ptr().wrapping_add(key_end));
    }

    /// Writes `record` unless a record (value or tombstone) with a version >= its version is held;
    /// records hidden by [`Engine::flush`] do not count. `tag` is `tag_of(record.key)`. The one
    /// implementation of [`Engine::put_if_newer`] and [`Engine::delete_if_newer`].
    pub(crate) fn apply_newer(
        &mut self,
        record: &NewerRecord<'_>,
        tag: u32,
    ) -> Result<WriteOutcome, StorageError> {
        debug_assert_eq!(tag, tag_of(record.key));
        let key = record.key;
        self.check_key(key)?;
        if !record.tombstone {
            self.check_value(record.value.len())?;
        }
        let old = find_tagged_in(&self.segments, &self.index, key, tag)?;
        if let Some(f) = &old {
            if f.header.version >= self.flush_version && f.header.version >= record.version {
                return Ok(WriteOutcome::NotStored);
            }
        }
        if record.tombstone {
            let now = self.now();
            self.write(old, Kind::Tombstone, key, b"", record.version, 0, now)?;
            Ok(WriteOutcome::Deleted)
        } else {
            let NewerRecord {
                value,
                flags,
                expiry,
                version,
                ..
            } = *record;
            self.write(old, Kind::Value, key, value, version, flags, expiry)?;
            Ok(WriteOutcome::Stored)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Config, Durability};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const NOW: u32 = 1_000_000;

    fn open(dir: &std::path::Path) -> Engine {
        let mut cfg = Config::new(dir);
        // Small segments: batches roll segments midway.
        cfg.segment_size = 2048;
        cfg.max_value_len = 48;
        cfg.durability = Durability::None;
        let (mut engine, _) = Engine::open(cfg).unwrap();
        engine.set_clock(Some(NOW));
        engine
    }

    /// A record as a test case describes it; `key` 255 stands for the empty (invalid) key.
    #[derive(Clone, Debug)]
    struct Case {
        key: u8,
        value_len: u8,
        flags: u32,
        expiry: u32,
        version: u64,
        tombstone: bool,
    }

    fn case(keys: u8) -> impl Strategy<Value = Case> {
        (
            prop_oneof![40 => 0..keys, 1 => Just(255u8)],
            prop_oneof![20 => 0u8..40, 1 => 49u8..60],
            0u32..3,
            prop_oneof![Just(0u32), Just(NOW - 1), Just(NOW + 100)],
            1u64..40,
            any::<bool>(),
        )
            .prop_map(|(key, value_len, flags, expiry, version, tombstone)| Case {
                key,
                value_len,
                flags,
                expiry,
                version,
                tombstone,
            })
    }

    /// Keys and values owned by the test, which `NewerRecord`s borrow.
    struct Owned {
        keys: Vec<Vec<u8>>,
        values: Vec<Vec<u8>>,
    }

    impl Owned {
        fn of(cases: &[Case]) -> Owned {
            let keys = cases
                .iter()
                .map(|c| match c.key {
                    255 => Vec::new(),
                    k => format!("key-{k}").into_bytes(),
                })
                .collect();
            let values = cases
                .iter()
                .map(|c| vec![c.key ^ c.version as u8; c.value_len as usize])
                .collect();
            Owned { keys, values }
        }

        fn records<'a>(&'a self, cases: &[Case]) -> Vec<NewerRecord<'a>> {
            cases
                .iter()
                .enumerate()
                .map(|(i, c)| NewerRecord {
                    key: &self.keys[i],
                    value: &self.values[i],
                    flags: c.flags,
                    expiry: c.expiry,
                    version: c.version,
                    tombstone: c.tombstone,
                })
                .collect()
        }
    }

    /// The reference: records applied one by one with the single-record calls.
    fn one_by_one(
        engine: &mut Engine,
        records: &[NewerRecord<'_>],
        admit: impl Fn(&NewerRecord<'_>) -> bool,
    ) -> Result<NewerCounts, StorageError> {
        let mut counts = NewerCounts::default();
        for r in records {
            if !admit(r) {
                counts.stale += 1;
                continue;
            }
            let outcome = if r.tombstone {
                engine.delete_if_newer(r.key, r.version)?
            } else {
                engine.put_if_newer(r.key, r.value, r.flags, r.expiry, r.version)?
            };
            match outcome {
                WriteOutcome::Stored | WriteOutcome::Deleted => counts.applied += 1,
                _ => counts.stale += 1,
            }
        }
        Ok(counts)
    }

    type State = (
        BTreeMap<Vec<u8>, (Vec<u8>, u64, u32, u32, bool)>,
        Vec<Option<u64>>,
    );

    /// Everything observable: every visible record (tombstones too), and the stored version of
    /// every possible key (flushed records included).
    fn state(engine: &mut Engine, keys: u8) -> State {
        let mut visible = BTreeMap::new();
        engine
            .for_each(true, |e| {
                let entry = (e.value.to_vec(), e.version, e.flags, e.expiry, e.tombstone);
                visible.insert(e.key.to_vec(), entry);
                true
            })
            .unwrap();
        let versions = (0..keys)
            .map(|k| {
                engine
                    .stored_version(format!("key-{k}").as_bytes())
                    .unwrap()
            })
            .collect();
        (visible, versions)
    }

    fn admit(r: &NewerRecord<'_>) -> bool {
        r.version % 7 != 3
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// A batch leaves the engine exactly as the same records applied one by one do: same
        /// counts (or the same failure), same records, same statistics. Few keys make duplicates
        /// within a batch common; many make the index grow midway.
        #[test]
        fn a_batch_equals_the_records_one_by_one(
            keys in prop_oneof![Just(6u8), Just(60u8)],
            before in proptest::collection::vec(case(60), 0..40),
            flush in proptest::option::of(0u64..30),
            batch in proptest::collection::vec(case(60), 0..120),
        ) {
            let keys_in = |cases: &[Case]| -> Vec<Case> {
                cases.iter().cloned().map(|mut c| {
                    if c.key != 255 {
                        c.key %= keys;
                    }
                    c
                }).collect()
            };
            let (before, batch) = (keys_in(&before), keys_in(&batch));
            let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let (mut a, mut b) = (open(dir_a.path()), open(dir_b.path()));
            let owned_before = Owned::of(&before);
            let earlier = owned_before.records(&before);
            let _ = one_by_one(&mut a, &earlier, |_| true);
            let _ = one_by_one(&mut b, &earlier, |_| true);
            if let Some(version) = flush {
                a.flush(version).unwrap();
                b.flush(version).unwrap();
            }
            let owned = Owned::of(&batch);
            let records = owned.records(&batch);
            let batched = a.apply_newer_batch(&records, admit);
            let single = one_by_one(&mut b, &records, admit);
            match (&batched, &single) {
                (Ok(x), Ok(y)) => prop_assert_eq!(x, y),
                (Err(x), Err(y)) => prop_assert_eq!(x.to_string(), y.to_string()),
                _ => prop_assert!(false, "batch {:?} vs one by one {:?}", batched, single),
            }
            prop_assert_eq!(state(&mut a, keys), state(&mut b, keys));
            prop_assert_eq!(a.stats(), b.stats());
        }
    }

    #[test]
    fn later_records_of_a_batch_see_earlier_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut engine = open(dir.path());
        let keys: Vec<Vec<u8>> = (0..1000).map(|i| format!("k{i}").into_bytes()).collect();
        fn put(key: &[u8], version: u64) -> NewerRecord<'_> {
            NewerRecord {
                key,
                value: b"v",
                flags: 0,
                expiry: 0,
                version,
                tombstone: false,
            }
        }
        // 1000 new keys into an empty index: it grows several times within the batch.
        let first: Vec<NewerRecord<'_>> = keys.iter().map(|k| put(k, 10)).collect();
        let counts = engine.apply_newer_batch(&first, |_| true).unwrap();
        assert_eq!((counts.applied, counts.stale), (1000, 0));
        // The same key three times: the older second copy loses to the first, the tombstone wins.
        let mut tomb = put(&keys[5], 12);
        tomb.tombstone = true;
        let same = [put(&keys[5], 11), put(&keys[5], 9), tomb, put(&keys[6], 10)];
        let counts = engine.apply_newer_batch(&same, |_| true).unwrap();
        assert_eq!((counts.applied, counts.stale), (2, 2));
        assert_eq!(engine.get(&keys[5]).unwrap(), None);
        assert_eq!(engine.stored_version(&keys[5]).unwrap(), Some(12));
        assert_eq!(engine.get(&keys[6]).unwrap().unwrap().version, 10);
        // Nothing to do: an empty batch.
        assert_eq!(
            engine.apply_newer_batch(&[], |_| true).unwrap(),
            NewerCounts::default()
        );
        assert_eq!(engine.len(), 1000);
    }
}
