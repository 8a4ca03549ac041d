//! Incremental compaction and garbage collection.
//!
//! Compaction picks the closed segment with the most garbage (above
//! [`super::Config::compact_garbage_ratio`]) and walks the index a bounded number of slots per
//! [`Engine::compact_step`], copying every record that still lives in that segment to the active
//! segment. Reads and writes go on between steps. Once the victim's live byte count reaches zero it
//! leaves the segment table and is retired: its file is deleted after the next sync round has made
//! the copies durable (see [`super::durability`]); compaction itself never waits on the disk. If
//! index changes between steps (a removal shifting slots backwards, or growth) let a record slip
//! past the cursor, the walk starts over.
//!
//! Dropping an entry from the index (an aged tombstone, an expired value, a flushed record) is done
//! only for records in the oldest segment. Why: a full scan (when the snapshot is lost) replays the
//! log, and a dropped entry whose older record still sat in an earlier segment would come back to
//! life. Nothing older than the oldest segment exists, and records later in the same segment win
//! the replay, so these drops are safe. Elsewhere such entries are copied like live ones.
//! [`Engine::collect_tombstones`] therefore works as a cleaner: each call asks compaction to walk
//! the oldest segment next, dropping what it may and copying the rest forward, so repeated calls
//! sweep the log from old to new. When the oldest segment is the active one (a small store), the
//! walk only drops and nothing is copied.
//!
//! Tombstone GC and the cluster: a tombstone may go only once no replica can still hold an older
//! value of its key that could come back through replication or rebalance. The engine offers two
//! bounds, both required to hold: a minimum age (`min_age_secs`, the time of the delete is stored
//! in the tombstone) and optionally a version (`below_version`): the cluster passes the version up
//! to which it knows every live copy has applied its deletes, e.g. the start of the last completed
//! rebalance or the smallest version all replicas acknowledged.

use super::engine::TombstoneGc;
use super::index::Slot;
use super::record::{self, Header, Kind};
use super::{Engine, StorageError};

/// Progress of an in-flight compaction.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cursor {
    victim: u32,
    next_slot: usize,
    /// The victim is the active segment (a GC walk of a one-segment store): drop, never copy.
    drop_only: bool,
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
    /// Segments emptied and retired (their files are deleted by the next sync round).
    pub segments_retired: u64,
    /// True when there was nothing worth compacting.
    pub idle: bool,
}

impl Engine {
    fn pick_victim(&mut self) -> Option<u32> {
        if self.gc_requested {
            self.gc_requested = false;
            if let Some((&oldest, _)) = self.segments.iter().next() {
                return Some(oldest);
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
                    drop_only: victim == self.active,
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
            let moved = self.relocate(slot, cursor.drop_only, &mut progress)?;
            spent += moved / 1024;
            if progress.records_dropped > dropped_before {
                // The removal may have shifted a later slot into `pos`: look at it again.
                cursor.next_slot = pos;
            }
        }
        if cursor.next_slot >= capacity {
            let live = self.segments.get(&cursor.victim).map_or(0, |s| s.live);
            if live == 0 && cursor.victim != self.active {
                // Out of the table now (nothing points into it); the file goes once the copies
                // are durable.
                self.segments.remove(&cursor.victim);
                self.pending.retire(cursor.victim);
                progress.segments_retired += 1;
                self.compaction = None;
                return Ok(progress);
            }
            if cursor.drop_only {
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
        drop_only: bool,
        progress: &mut CompactProgress,
    ) -> Result<u64, StorageError> {
        let mut buf = std::mem::take(&mut self.buf);
        let outcome = self.relocate_in(slot, drop_only, &mut buf, progress);
        self.buf = buf;
        outcome
    }

    fn relocate_in(
        &mut self,
        slot: Slot,
        drop_only: bool,
        buf: &mut Vec<u8>,
        progress: &mut CompactProgress,
    ) -> Result<u64, StorageError> {
        buf.clear();
        buf.extend_from_slice(self.record(slot)?);
        let oldest = self.segments.keys().next() == Some(&slot.segment());
        let keep = match record::decode(buf) {
            Ok(rec) => !(oldest && self.droppable(&rec.header, self.now())),
            Err(_) => false,
        };
        if !keep {
            self.remove_slot(slot);
            progress.records_dropped += 1;
            self.counters.records_dropped += 1;
            return Ok(0);
        }
        if drop_only {
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
            Kind::Tombstone => self.tombstone_gc.is_some_and(|gc| {
                now.saturating_sub(h.expiry) >= gc.min_age_secs
                    && gc.below_version.is_none_or(|below| h.version < below)
            }),
        }
    }

    /// Tombstone garbage collection with a minimum age: [`Engine::collect_tombstones`] with no
    /// version bound. The server calls it periodically with its `-g` setting.
    pub fn gc_tombstones(&mut self, min_age_secs: u32) -> Result<(), StorageError> {
        self.collect_tombstones(TombstoneGc {
            min_age_secs,
            below_version: None,
        })
    }

    /// Sets which tombstones may be dropped (see the module docs for the two bounds) and asks
    /// compaction to walk the oldest segment next. Never blocks: the work is done by the bounded
    /// [`Engine::compact_step`]s that follow, which drop such tombstones, expired values and
    /// flushed records found in the oldest segment; repeated calls sweep the log from old to new.
    ///
    /// After a tombstone is dropped, a replicated write of any version for that key is accepted
    /// again, so the bounds must exclude every delete a replica may still be missing.
    pub fn collect_tombstones(&mut self, gc: TombstoneGc) -> Result<(), StorageError> {
        self.tombstone_gc = Some(gc);
        // A walk in progress finishes first; the next pick takes the oldest segment.
        self.gc_requested = true;
        Ok(())
    }
}
