//! The engine core: the segment table, index lookups, the append path and the primitive operations.
//!
//! Everything here is synchronous and owned by one shard. Lookups read records straight from the
//! segments' memory maps (no syscall), appends go to the active segment's tail (written out in
//! batches, see [`super::segment`]); fsync happens only in [`Engine::sync`] or in a sync round run
//! off the shard's thread ([`Engine::begin_sync`], see [`super::durability`]).

use std::collections::BTreeMap;
use std::fs::OpenOptions;

use super::batch::NewerRecord;
use super::index::{tag_of, Index, Slot};
use super::ops::WriteOutcome;
use super::record::{self, Header, Kind, HEADER_LEN};
use super::segment::{segment_path, Segment};
use super::{Config, Item, Stats, StorageError};

/// A record visited by [`Engine::for_each`].
#[derive(Clone, Copy, Debug)]
pub struct Entry<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub version: u64,
    pub flags: u32,
    pub expiry: u32,
    pub tombstone: bool,
}

/// A key's current index entry, with its header read back.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Found {
    pub pos: usize,
    pub slot: Slot,
    pub header: Header,
}

/// A key's record as one lookup found it (see [`Engine::held`]); the default is no lookup to
/// reuse.
#[derive(Clone, Copy, Debug, Default)]
pub struct Held(Option<Found>);

impl Held {
    /// The version of the record (value or tombstone, flushed or expired or not), if there is one.
    pub fn version(&self) -> Option<u64> {
        self.0.map(|found| found.header.version)
    }
}

/// Which tombstones garbage collection may drop (see [`Engine::collect_tombstones`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TombstoneGc {
    /// Only tombstones whose delete happened at least this many seconds ago.
    pub min_age_secs: u32,
    /// If set, only tombstones with a version below this one: the cluster passes the version up to
    /// which every live copy of the shard's keys is known to hold its deletes.
    pub below_version: Option<u64>,
}

/// One shard's store. See the module docs of [`crate::storage`].
pub struct Engine {
    pub(crate) cfg: Config,
    pub(crate) index: Index,
    pub(crate) segments: BTreeMap<u32, Segment>,
    pub(crate) active: u32,
    /// Records with a version below this read as missing (`flush_all`).
    pub(crate) flush_version: u64,
    pub(crate) counters: Stats,
    /// Tombstones in the index (kept so `stats` is O(segments)).
    pub(crate) tombstone_slots: u64,
    pub(crate) compaction: Option<super::compact::Cursor>,
    /// Set by `collect_tombstones`: which tombstones compaction may drop.
    pub(crate) tombstone_gc: Option<TombstoneGc>,
    /// Compaction should take the oldest segment next.
    pub(crate) gc_requested: bool,
    /// What the next sync round must cover (see [`super::durability`]).
    pub(crate) pending: super::durability::Pending,
    clock: Option<u32>,
    /// Scratch buffer (compaction copies a record through it).
    pub(crate) buf: Vec<u8>,
    wbuf: Vec<u8>,
}

/// Finds `key`'s index entry among `segments` (a free function so recovery can borrow the index
/// mutably while scanning a segment). A candidate that cannot be read or whose header fails its
/// checksum is not this key (nor any key we can serve); skipping it keeps the key writable despite
/// a damaged record or index entry.
pub(crate) fn find_in(
    segments: &BTreeMap<u32, Segment>,
    index: &Index,
    key: &[u8],
) -> Result<Option<Found>, StorageError> {
    find_tagged_in(segments, index, key, tag_of(key))
}

/// [`find_in`] with the key's tag (`tag_of(key)`) computed by the caller.
#[inline]
pub(crate) fn find_tagged_in(
    segments: &BTreeMap<u32, Segment>,
    index: &Index,
    key: &[u8],
    tag: u32,
) -> Result<Option<Found>, StorageError> {
    for pos in index.candidates(tag) {
        let slot = index.get(pos);
        let Ok(bytes) = record_of(segments, slot) else {
            continue;
        };
        let Ok(header) = Header::decode(bytes) else {
            continue;
        };
        if bytes.get(HEADER_LEN..HEADER_LEN + header.key_len as usize) == Some(key) {
            return Ok(Some(Found { pos, slot, header }));
        }
    }
    Ok(None)
}

/// The whole record `slot` points to (unverified).
#[inline]
pub(crate) fn record_of(
    segments: &BTreeMap<u32, Segment>,
    slot: Slot,
) -> Result<&[u8], StorageError> {
    segments
        .get(&slot.segment())
        .ok_or(StorageError::Corrupt("index points to a missing segment"))?
        .read(u64::from(slot.offset()), slot.len() as usize)
        .ok_or(StorageError::Corrupt(
            "index points past the end of a segment",
        ))
}

impl Engine {
    /// Opens (recovering if needed) the store in `cfg.dir`. See [`super::recovery`].
    pub fn open(cfg: Config) -> Result<(Engine, super::RecoveryReport), StorageError> {
        super::recovery::open(cfg)
    }

    pub(crate) fn empty(cfg: Config) -> Engine {
        Engine {
            cfg,
            index: Index::default(),
            segments: BTreeMap::new(),
            active: 0,
            flush_version: 0,
            counters: Stats::default(),
            tombstone_slots: 0,
            compaction: None,
            tombstone_gc: None,
            gc_requested: false,
            pending: Default::default(),
            clock: None,
            buf: Vec::new(),
            wbuf: Vec::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Fixes the engine's notion of "now" (unix seconds) for tests; `None` = the system clock.
    pub fn set_clock(&mut self, now: Option<u32>) {
        self.clock = now;
    }

    /// Current time in unix seconds, from the clock seam.
    pub fn now(&self) -> u32 {
        self.clock.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as u32)
                .unwrap_or(0)
        })
    }

    pub(crate) fn check_key(&self, key: &[u8]) -> Result<(), StorageError> {
        if key.is_empty() {
            return Err(StorageError::EmptyKey);
        }
        if key.len() > self.cfg.max_key_len.min(u16::MAX as usize) {
            return Err(StorageError::KeyTooLong(key.len()));
        }
        Ok(())
    }

    pub(crate) fn check_value(&self, len: usize) -> Result<(), StorageError> {
        if len > self.cfg.max_value_len {
            return Err(StorageError::ValueTooLarge(len));
        }
        Ok(())
    }

    /// Finds `key`'s index entry (value or tombstone, live or not).
    pub(crate) fn find(&self, key: &[u8]) -> Result<Option<Found>, StorageError> {
        find_in(&self.segments, &self.index, key)
    }

    /// The record `slot` points to (unverified).
    pub(crate) fn record(&self, slot: Slot) -> Result<&[u8], StorageError> {
        record_of(&self.segments, slot)
    }

    /// True when a found record is a value that reads as present now.
    pub(crate) fn is_live(&self, header: &Header) -> bool {
        header.kind == Kind::Value
            && header.version >= self.flush_version
            && (header.expiry == 0 || header.expiry > self.now())
    }

    /// Finds `key` and returns it only if live, after verifying the whole record's checksum (a
    /// damaged record is an error, never returned as data).
    pub(crate) fn find_live(&self, key: &[u8]) -> Result<Option<Found>, StorageError> {
        match self.find(key)? {
            Some(found) if self.is_live(&found.header) => {
                record::decode(self.record(found.slot)?)?;
                Ok(Some(found))
            }
            _ => Ok(None),
        }
    }

    /// Value bytes of a record found by `find_live` (which verified it).
    pub(crate) fn value_of(&self, found: &Found) -> Result<&[u8], StorageError> {
        let start = HEADER_LEN + found.header.key_len as usize;
        self.record(found.slot)?
            .get(start..found.header.record_len())
            .ok_or(StorageError::Corrupt("record shorter than its header says"))
    }

    /// Address space mapped for a segment that receives appends: it never needs a new mapping.
    fn reservation(&self) -> u64 {
        let record = HEADER_LEN + self.cfg.max_key_len + self.cfg.max_value_len;
        (self.cfg.segment_size + record as u64)
            .next_multiple_of(4096)
            .min(u64::from(u32::MAX))
    }

    /// Appends one encoded record to the active segment, rolling to a new segment when full.
    pub(crate) fn append_raw(
        &mut self,
        bytes: &[u8],
        tag: u32,
        tomb: bool,
    ) -> Result<Slot, StorageError> {
        let len = u32::try_from(bytes.len()).map_err(|_| StorageError::Full)?;
        let active_len = self.segments.get(&self.active).map_or(0, |s| s.len);
        if active_len > 0 && active_len + bytes.len() as u64 > self.cfg.segment_size {
            self.roll()?;
        }
        let seg = self
            .segments
            .get_mut(&self.active)
            .ok_or(StorageError::Corrupt("no active segment"))?;
        let offset = u32::try_from(seg.len).map_err(|_| StorageError::Full)?;
        if u64::from(offset) + u64::from(len) > u64::from(u32::MAX) {
            return Err(StorageError::Full);
        }
        seg.append(bytes)?;
        self.pending.mark_segment(self.active);
        Ok(Slot::new(tag, len, tomb, self.active, offset))
    }

    /// Starts a new active segment. Its directory entry is made durable by the next sync round,
    /// before anything in it is acknowledged as durable.
    pub(crate) fn roll(&mut self) -> Result<(), StorageError> {
        let id = self.active.checked_add(1).ok_or(StorageError::Full)?;
        if let Some(old) = self.segments.get_mut(&self.active) {
            old.write_out()?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(segment_path(&self.cfg.dir, id))?;
        let segment = Segment::fresh(file, self.reservation())?;
        self.segments.insert(id, segment);
        self.active = id;
        self.pending.directory = true;
        Ok(())
    }

    /// Hands every appended byte still held in memory to the kernel (one `pwrite`); the shard
    /// calls it once per batch of writes. Reads see appended records either way.
    pub fn write_out(&mut self) -> Result<(), StorageError> {
        for seg in self.segments.values_mut() {
            seg.write_out()?;
        }
        Ok(())
    }

    /// True when appended bytes are waiting for [`Engine::write_out`].
    pub fn has_tail(&self) -> bool {
        self.segments
            .get(&self.active)
            .is_some_and(Segment::has_tail)
    }

    /// Encodes and appends a record, then points the index at it (replacing `old` if given).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn write(
        &mut self,
        old: Option<Found>,
        kind: Kind,
        key: &[u8],
        value: &[u8],
        version: u64,
        flags: u32,
        expiry: u32,
    ) -> Result<(), StorageError> {
        let mut wbuf = std::mem::take(&mut self.wbuf);
        wbuf.clear();
        let encoded = record::encode(&mut wbuf, kind, key, value, version, flags, expiry);
        // The record replaced was found by this key's tag: no need to hash the key again.
        let tag = old.map_or_else(|| tag_of(key), |found| found.slot.tag);
        let result = encoded.and_then(|()| self.append_raw(&wbuf, tag, kind == Kind::Tombstone));
        self.wbuf = wbuf;
        let slot = result?;
        self.install(old.map(|f| (f.pos, f.slot)), slot);
        if kind == Kind::Tombstone {
            self.counters.deletes += 1;
        } else {
            self.counters.sets += 1;
        }
        Ok(())
    }

    /// Points the index at `new`, accounting the replaced record (if any) as garbage.
    pub(crate) fn install(&mut self, old: Option<(usize, Slot)>, new: Slot) {
        if let Some(seg) = self.segments.get_mut(&new.segment()) {
            seg.live += u64::from(new.len());
        }
        self.tombstone_slots += u64::from(new.is_tombstone());
        match old {
            Some((pos, slot)) => {
                self.unlive(slot);
                self.index.replace(pos, new);
            }
            None => self.index.insert(new),
        }
    }

    /// Accounts a record the index no longer points to as garbage.
    pub(crate) fn unlive(&mut self, slot: Slot) {
        self.tombstone_slots = self
            .tombstone_slots
            .saturating_sub(u64::from(slot.is_tombstone()));
        if let Some(seg) = self.segments.get_mut(&slot.segment()) {
            seg.live = seg.live.saturating_sub(u64::from(slot.len()));
        }
    }

    /// Removes the index entry currently holding exactly `slot` (found again by tag and location).
    pub(crate) fn remove_slot(&mut self, slot: Slot) -> bool {
        let pos = self
            .index
            .candidates(slot.tag)
            .find(|&p| self.index.get(p) == slot);
        match pos {
            Some(pos) => {
                self.index.remove(pos);
                self.unlive(slot);
                true
            }
            None => false,
        }
    }

    /// The live value of `key`; expired, deleted and flushed records read as missing.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Item>, StorageError> {
        self.counters.gets += 1;
        self.check_key(key)?;
        let Some(found) = self.find_live(key)? else {
            return Ok(None);
        };
        let h = found.header;
        Ok(Some(Item {
            value: self.value_of(&found)?.to_vec(),
            flags: h.flags,
            version: h.version,
            expiry: h.expiry,
        }))
    }

    /// Stores unconditionally.
    pub fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        flags: u32,
        expiry: u32,
        version: u64,
    ) -> Result<(), StorageError> {
        self.put_held(Held::default(), key, value, flags, expiry, version)
    }

    /// Stores only if no record (value or tombstone) with a version >= `version` is held.
    /// Records hidden by [`Engine::flush`] do not count. Replication and rebalance apply whole
    /// batches of these with [`Engine::apply_newer_batch`].
    pub fn put_if_newer(
        &mut self,
        key: &[u8],
        value: &[u8],
        flags: u32,
        expiry: u32,
        version: u64,
    ) -> Result<WriteOutcome, StorageError> {
        let record = NewerRecord {
            key,
            value,
            flags,
            expiry,
            version,
            tombstone: false,
        };
        self.apply_newer(&record, tag_of(key))
    }

    /// Compare-and-swap: stores only if the live record's version equals `expected`.
    #[allow(clippy::too_many_arguments)]
    pub fn put_if_version(
        &mut self,
        key: &[u8],
        value: &[u8],
        flags: u32,
        expiry: u32,
        expected: u64,
        version: u64,
    ) -> Result<WriteOutcome, StorageError> {
        self.check_key(key)?;
        self.check_value(value.len())?;
        let Some(found) = self.find_live(key)? else {
            return Ok(WriteOutcome::NotFound);
        };
        if found.header.version != expected {
            return Ok(WriteOutcome::Exists);
        }
        self.write(Some(found), Kind::Value, key, value, version, flags, expiry)?;
        Ok(WriteOutcome::Stored)
    }

    /// Deletes a live key by writing a tombstone stamped `version` and the current time.
    pub fn delete(&mut self, key: &[u8], version: u64) -> Result<WriteOutcome, StorageError> {
        self.check_key(key)?;
        let Some(found) = self.find_live(key)? else {
            return Ok(WriteOutcome::NotFound);
        };
        let now = self.now();
        self.write(Some(found), Kind::Tombstone, key, b"", version, 0, now)?;
        Ok(WriteOutcome::Deleted)
    }

    /// Replicated delete: writes the tombstone (even for an absent key) unless a record with a
    /// version >= `version` is held, so an older put can never resurrect the key.
    pub fn delete_if_newer(
        &mut self,
        key: &[u8],
        version: u64,
    ) -> Result<WriteOutcome, StorageError> {
        let record = NewerRecord {
            key,
            value: b"",
            flags: 0,
            expiry: 0,
            version,
            tombstone: true,
        };
        self.apply_newer(&record, tag_of(key))
    }

    /// Makes every record with a version below `before_version` read as missing (`flush_all`).
    /// Takes effect at once; the marker file is written durably by the next sync round (off the
    /// shard's thread; [`Engine::sync`] for a bare engine), like any write under the durability
    /// policy. The space is reclaimed by compaction and GC later.
    pub fn flush(&mut self, before_version: u64) -> Result<(), StorageError> {
        if before_version > self.flush_version {
            self.flush_version = before_version;
            self.pending.flush_version = Some(before_version);
        }
        Ok(())
    }

    /// Visits every live record (and, if asked, every tombstone) with its version.
    /// `visit` returns false to stop early. Blocks the shard for the whole pass: streaming callers
    /// use [`Engine::for_each_in`] chunk by chunk instead.
    pub fn for_each(
        &mut self,
        include_tombstones: bool,
        visit: impl FnMut(Entry<'_>) -> bool,
    ) -> Result<(), StorageError> {
        self.for_each_in(0..=u32::MAX, include_tombstones, visit)
    }

    /// Like [`Engine::for_each`], restricted to keys whose tag (upper 32 bits of the xxh3-64 key
    /// hash, see [`super::index::tag_of`]) lies in `tags`. Splitting `0..=u32::MAX` into ranges
    /// gives a resumable scan: every key present throughout is visited exactly once, whatever
    /// writes, growth or compaction happen between chunks.
    pub fn for_each_in(
        &mut self,
        tags: std::ops::RangeInclusive<u32>,
        include_tombstones: bool,
        mut visit: impl FnMut(Entry<'_>) -> bool,
    ) -> Result<(), StorageError> {
        let now = self.now();
        for pos in self.index.positions_in(tags) {
            let slot = self.index.get(pos);
            if slot.is_tombstone() && !include_tombstones {
                continue;
            }
            let Ok(rec) = record::decode(self.record(slot)?) else {
                continue;
            };
            let h = rec.header;
            let tombstone = h.kind == Kind::Tombstone;
            if h.version < self.flush_version || (!tombstone && h.expiry != 0 && h.expiry <= now) {
                continue;
            }
            let entry = Entry {
                key: rec.key,
                value: rec.value,
                version: h.version,
                flags: h.flags,
                expiry: h.expiry,
                tombstone,
            };
            if !visit(entry) {
                break;
            }
        }
        Ok(())
    }

    /// Drops from the index every key `keep` rejects (keys this shard no longer owns); returns how
    /// many. Nothing is written: the drop is durable once the next snapshot is written; a full
    /// scan without a snapshot may bring such keys back (the caller simply drops them again).
    /// Blocks for a whole pass; [`Engine::retain_in`] does it chunk by chunk.
    pub fn retain(&mut self, keep: impl FnMut(&[u8]) -> bool) -> Result<u64, StorageError> {
        self.retain_in(0..=u32::MAX, keep)
    }

    /// [`Engine::retain`] restricted to keys whose tag lies in `tags` (see [`Engine::for_each_in`]).
    pub fn retain_in(
        &mut self,
        tags: std::ops::RangeInclusive<u32>,
        mut keep: impl FnMut(&[u8]) -> bool,
    ) -> Result<u64, StorageError> {
        let mut doomed = Vec::new();
        for pos in self.index.positions_in(tags) {
            let slot = self.index.get(pos);
            let bytes = self.record(slot)?;
            let Ok(h) = Header::decode(bytes) else {
                continue;
            };
            if let Some(key) = bytes.get(HEADER_LEN..HEADER_LEN + h.key_len as usize) {
                if !keep(key) {
                    doomed.push(slot);
                }
            }
        }
        let mut dropped = 0;
        for slot in doomed {
            dropped += u64::from(self.remove_slot(slot));
        }
        Ok(dropped)
    }

    /// Drops from the index every record, value or tombstone, whose tag lies in `tags`, whose
    /// version is below `below_version` and whose key `which` selects; returns how many. What a
    /// rejoining server forgets of the keys it is about to be refilled with (a copy brings the
    /// live ones back, and nothing deleted meanwhile can resurrect). Durable once the next
    /// snapshot is written, like [`Engine::retain`].
    pub fn drop_below_in(
        &mut self,
        tags: std::ops::RangeInclusive<u32>,
        below_version: u64,
        mut which: impl FnMut(&[u8]) -> bool,
    ) -> Result<u64, StorageError> {
        let mut doomed = Vec::new();
        for pos in self.index.positions_in(tags) {
            let slot = self.index.get(pos);
            let bytes = self.record(slot)?;
            let Ok(h) = Header::decode(bytes) else {
                continue;
            };
            if h.version >= below_version {
                continue;
            }
            if let Some(key) = bytes.get(HEADER_LEN..HEADER_LEN + h.key_len as usize) {
                if which(key) {
                    doomed.push(slot);
                }
            }
        }
        let mut dropped = 0;
        for slot in doomed {
            dropped += u64::from(self.remove_slot(slot));
        }
        Ok(dropped)
    }

    /// The version of `key`'s current record, value or tombstone, flushed or expired or not
    /// (`None` if the index has none). A coordinator stamps a write above it.
    pub fn stored_version(&self, key: &[u8]) -> Result<Option<u64>, StorageError> {
        Ok(self.held(key)?.version())
    }

    /// `key`'s current record as [`Engine::stored_version`] sees it, kept for a
    /// [`Engine::put_held`] that follows, so a coordinator's set looks the key up once.
    pub fn held(&self, key: &[u8]) -> Result<Held, StorageError> {
        self.check_key(key)?;
        Ok(Held(self.find(key)?))
    }

    /// Stores unconditionally, reusing `held`, a lookup of the same key. It is reused only if the
    /// index still points where it did (no write, compaction step or growth moved it since);
    /// otherwise, and for a key that had no record, the key is looked up again.
    pub fn put_held(
        &mut self,
        held: Held,
        key: &[u8],
        value: &[u8],
        flags: u32,
        expiry: u32,
        version: u64,
    ) -> Result<(), StorageError> {
        self.check_key(key)?;
        self.check_value(value.len())?;
        let old = match held.0 {
            Some(found) if self.index.holds(found.pos, found.slot) => Some(found),
            _ => self.find(key)?,
        };
        self.write(old, Kind::Value, key, value, version, flags, expiry)
    }

    /// Hands `key`'s current record to `visit` as a rebalance copy would send it (see
    /// [`Engine::for_each_in`]): a value that reads as present, or a tombstone; `None` when the
    /// index has none, or only a flushed record or an expired value. The record is verified (a
    /// damaged one is an error).
    pub fn visit_record<R>(
        &self,
        key: &[u8],
        visit: impl FnOnce(Entry<'_>) -> R,
    ) -> Result<Option<R>, StorageError> {
        self.check_key(key)?;
        let Some(found) = self.find(key)? else {
            return Ok(None);
        };
        let h = found.header;
        let tombstone = h.kind == Kind::Tombstone;
        if h.version < self.flush_version || (!tombstone && h.expiry != 0 && h.expiry <= self.now())
        {
            return Ok(None);
        }
        let rec = record::decode(self.record(found.slot)?)?;
        Ok(Some(visit(Entry {
            key: rec.key,
            value: rec.value,
            version: h.version,
            flags: h.flags,
            expiry: h.expiry,
            tombstone,
        })))
    }

    /// Records with a version below this read as missing (the last `flush_all`).
    pub fn flush_version(&self) -> u64 {
        self.flush_version
    }

    /// Current counters; O(number of segments).
    pub fn stats(&self) -> Stats {
        let mut s = self.counters;
        s.tombstones = self.tombstone_slots;
        s.items = self.index.len() as u64 - self.tombstone_slots;
        s.bytes_live = 0;
        s.bytes_garbage = 0;
        for seg in self.segments.values() {
            s.bytes_live += seg.live;
            s.bytes_garbage += seg.len.saturating_sub(seg.live);
        }
        s.index_bytes = self.index.allocated_bytes() as u64;
        s.segments = self.segments.len() as u64;
        s
    }

    /// Number of keys (values and tombstones) in the index; O(1).
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

impl Drop for Engine {
    /// Hands buffered appends and a pending flush marker to the kernel (no fsync): a dropped
    /// engine loses nothing a process exit would not lose.
    fn drop(&mut self) {
        let _ = self.write_out();
        if let Some(version) = self.pending.flush_version.take() {
            let _ = super::recovery::write_flush_version(&self.cfg.dir, version);
        }
    }
}
