//! Incremental compaction and garbage collection.
//!
//! Compaction picks the closed segment with the most garbage (above
//! [`super::Config::compact_garbage_ratio`]) and walks the index a bounded number of slots per
//! [`Engine::compact_step`], copying every record that still lives in that segment to the active
//! segment. Reads and writes go on between steps. The victim file is deleted only when its live
//! byte count reaches zero and the copies are fsynced; if index changes between steps (a removal
//! shifting slots backwards, or growth) let a record slip past the cursor, the walk starts over.
//!
//! Dropping an entry from the index (an aged tombstone, an expired value, a flushed record) is done
//! only for records in the oldest segment. Why: a full scan (when the snapshot is lost) replays the
//! log, and a dropped entry whose older record still sat in an earlier segment would come back to
//! life. Nothing older than the oldest segment exists, and records later in the same segment win
//! the replay, so these drops are safe. Elsewhere such entries are copied like live ones.
//! [`Engine::gc_tombstones`] therefore works as a cleaner: each call drops what it can in the
//! oldest segment and asks compaction to rewrite that segment next, so repeated calls sweep the log
//! from old to new.

use std::fs;

use super::engine::{read_slot, read_slot_prefix, segment_path};
use super::index::Slot;
use super::record::{self, Header, Kind, HEADER_LEN};
use super::{Engine, StorageError};

/// Progress of an in-flight compaction.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cursor {
    victim: u32,
    next_slot: usize,
}

/// What one [`Engine::compact_step`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactProgress {
    /// Index slots examined.
    pub slots_examined: u64,
    /// Records copied to the active segment.
    pub records_moved: u64,
    /// Bytes copied.
    pub bytes_moved: u64,
    /// Entries dropped (expired, flushed, or unreadable).
    pub records_dropped: u64,
    /// Segment files deleted.
    pub segments_removed: u64,
    /// True when there was nothing worth compacting.
    pub idle: bool,
}

impl Engine {
    fn pick_victim(&mut self) -> Option<u32> {
        if self.gc_requested {
            self.gc_requested = false;
            if let Some((&oldest, _)) = self.segments.iter().next() {
                if oldest != self.active {
                    return Some(oldest);
                }
            }
        }
        self.segments
            .iter()
            .filter(|(&id, seg)| id != self.active && seg.len > 0)
            .map(|(&id, seg)| (id, seg.len.saturating_sub(seg.live) as f64 / seg.len as f64))
            .filter(|&(_, ratio)| ratio >= self.cfg.compact_garbage_ratio)
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(id, _)| id)
    }

    /// Does at most `budget` units of compaction work (one unit per slot examined, plus one per
    /// KiB copied) and returns what it did.
    pub fn compact_step(&mut self, budget: u64) -> Result<CompactProgress, StorageError> {
        let mut progress = CompactProgress::default();
        let cursor = match self.compaction {
            Some(c) if self.segments.contains_key(&c.victim) => c,
            _ => match self.pick_victim() {
                Some(victim) => Cursor {
                    victim,
                    next_slot: 0,
                },
                None => {
                    self.compaction = None;
                    progress.idle = true;
                    return Ok(progress);
                }
            },
        };
        let mut cursor = cursor;
        let mut spent = 0u64;
        let capacity = self.index.slots().len();
        while spent < budget && cursor.next_slot < capacity {
            let pos = cursor.next_slot;
            cursor.next_slot += 1;
            spent += 1;
            progress.slots_examined += 1;
            let slot = self.index.get(pos);
            if slot.is_empty() || slot.segment() != cursor.victim {
                continue;
            }
            let dropped_before = progress.records_dropped;
            let moved = self.relocate(slot, &mut progress)?;
            spent += moved / 1024;
            if progress.records_dropped > dropped_before {
                // The removal may have shifted a later slot into `pos`: look at it again.
                cursor.next_slot = pos;
            }
        }
        if cursor.next_slot >= capacity {
            let live = self.segments.get(&cursor.victim).map_or(0, |s| s.live);
            if live == 0 {
                // The copies must be durable before the originals disappear.
                self.sync()?;
                if let Some(seg) = self.segments.remove(&cursor.victim) {
                    drop(seg);
                    fs::remove_file(segment_path(&self.cfg.dir, cursor.victim))?;
                    fs::File::open(&self.cfg.dir)?.sync_all()?;
                    progress.segments_removed += 1;
                }
                self.unsynced.retain(|&id| id != cursor.victim);
                self.compaction = None;
                return Ok(progress);
            }
            cursor.next_slot = 0;
        }
        self.compaction = Some(cursor);
        Ok(progress)
    }

    /// Copies one record to the active segment (or drops it); returns bytes copied.
    fn relocate(
        &mut self,
        slot: Slot,
        progress: &mut CompactProgress,
    ) -> Result<u64, StorageError> {
        let mut buf = std::mem::take(&mut self.buf);
        let outcome = self.relocate_in(slot, &mut buf, progress);
        self.buf = buf;
        outcome
    }

    fn relocate_in(
        &mut self,
        slot: Slot,
        buf: &mut Vec<u8>,
        progress: &mut CompactProgress,
    ) -> Result<u64, StorageError> {
        read_slot(&self.segments, slot, buf)?;
        let oldest = self.segments.keys().next() == Some(&slot.segment());
        let keep = match record::decode(buf) {
            Ok(rec) => !(oldest && self.droppable(&rec.header, self.now())),
            Err(_) => false,
        };
        if !keep {
            self.remove_slot(slot);
            progress.records_dropped += 1;
            return Ok(0);
        }
        let new = self.append_raw(buf, slot.tag, slot.is_tombstone())?;
        let pos = self
            .index
            .candidates(slot.tag)
            .find(|&p| self.index.get(p) == slot);
        if let Some(pos) = pos {
            self.install(Some((pos, slot)), new);
        }
        progress.records_moved += 1;
        progress.bytes_moved += buf.len() as u64;
        Ok(buf.len() as u64)
    }

    /// True when an entry may leave the index (if its record is in the oldest segment).
    fn droppable(&self, h: &Header, now: u32) -> bool {
        if h.version < self.flush_version {
            return true;
        }
        match h.kind {
            Kind::Value => h.expiry != 0 && h.expiry <= now,
            Kind::Tombstone => self
                .tombstone_min_age
                .is_some_and(|age| now.saturating_sub(h.expiry) >= age),
        }
    }

    /// Tombstone garbage collection with a minimum age: drops tombstones whose delete (the time
    /// stored in the tombstone) is at least `min_age_secs` old, plus expired values and flushed
    /// records, among the entries in the oldest segment; then asks compaction to rewrite that
    /// segment next (it drops the same kinds of entries as it goes). Returns entries dropped now.
    ///
    /// After a tombstone is dropped, a replicated write of any version for that key is accepted
    /// again, so `min_age_secs` must exceed the longest time a replica can miss a delete.
    pub fn gc_tombstones(&mut self, min_age_secs: u32) -> Result<u64, StorageError> {
        self.tombstone_min_age = Some(min_age_secs);
        self.gc_requested = true;
        let now = self.now();
        let Some(&oldest) = self.segments.keys().next() else {
            return Ok(0);
        };
        let mut doomed = Vec::new();
        for pos in 0..self.index.slots().len() {
            let slot = self.index.get(pos);
            if slot.is_empty() || slot.segment() != oldest {
                continue;
            }
            read_slot_prefix(&self.segments, slot, HEADER_LEN, &mut self.buf)?;
            match Header::decode(&self.buf) {
                Ok(h) if self.droppable(&h, now) => doomed.push(slot),
                _ => {}
            }
        }
        let mut dropped = 0;
        for slot in doomed {
            dropped += u64::from(self.remove_slot(slot));
        }
        Ok(dropped)
    }
}
