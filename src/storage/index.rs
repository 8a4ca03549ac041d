//! The in-memory index: key hash to record location, 16 bytes per slot, no per-key allocation.
//!
//! An open-addressing table with linear probing. A slot holds a 32-bit tag (the upper half of the
//! key's xxh3 hash), the record length with a tombstone bit, and the record's location (segment id
//! and offset). Keys are not kept in RAM: a tag match is confirmed by reading the record back (from
//! the page cache), so the budget is 16 bytes / load factor per key. The home slot is taken from the
//! tag's top bits, so growing the table never needs the keys. Load stays in (0.425, 0.85], i.e.
//! 18.8 to 37.7 bytes per key.

/// One index entry. `meta == 0` marks an empty slot (no record is shorter than its header).
///
/// `repr(C)`: three integer fields, 16 bytes with no padding, every bit pattern valid. The index
/// snapshot stores the table as these bytes (little-endian), read and written as one block.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    pub tag: u32,
    /// Record length in bytes (bits 0..31) and the tombstone flag (bit 31).
    pub meta: u32,
    /// Segment id (upper 32 bits) and byte offset in the segment (lower 32 bits).
    pub loc: u64,
}

const TOMBSTONE_BIT: u32 = 1 << 31;

impl Slot {
    /// The table's memory as bytes, to read a snapshot into (then [`Slot::from_le_in_place`]).
    pub fn as_bytes_mut(slots: &mut [Slot]) -> &mut [u8] {
        // SAFETY: `Slot` is `repr(C)` with three integer fields and no padding (16 bytes, checked
        // below), so its memory is plain bytes and any byte pattern is a valid `Slot`.
        const _: () = assert!(std::mem::size_of::<Slot>() == 16);
        unsafe { std::slice::from_raw_parts_mut(slots.as_mut_ptr().cast::<u8>(), slots.len() * 16) }
    }

    /// Converts slots read as little-endian bytes to native order (nothing to do on x86/ARM).
    pub fn from_le_in_place(slots: &mut [Slot]) {
        if cfg!(target_endian = "big") {
            for s in slots {
                *s = Slot {
                    tag: u32::from_le(s.tag),
                    meta: u32::from_le(s.meta),
                    loc: u64::from_le(s.loc),
                };
            }
        }
    }

    /// Appends the table as little-endian bytes (one copy on little-endian machines).
    pub fn extend_le_bytes(out: &mut Vec<u8>, slots: &[Slot]) {
        if cfg!(target_endian = "little") {
            // SAFETY: as in `as_bytes_mut`, read-only.
            let bytes = unsafe {
                std::slice::from_raw_parts(slots.as_ptr().cast::<u8>(), slots.len() * 16)
            };
            out.extend_from_slice(bytes);
        } else {
            for s in slots {
                out.extend_from_slice(&s.tag.to_le_bytes());
                out.extend_from_slice(&s.meta.to_le_bytes());
                out.extend_from_slice(&s.loc.to_le_bytes());
            }
        }
    }

    pub fn new(tag: u32, len: u32, tombstone: bool, segment: u32, offset: u32) -> Slot {
        let meta = (len & !TOMBSTONE_BIT) | if tombstone { TOMBSTONE_BIT } else { 0 };
        Slot {
            tag,
            meta,
            loc: (u64::from(segment) << 32) | u64::from(offset),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.meta == 0
    }
    pub fn len(&self) -> u32 {
        self.meta & !TOMBSTONE_BIT
    }
    pub fn is_tombstone(&self) -> bool {
        self.meta & TOMBSTONE_BIT != 0
    }
    pub fn segment(&self) -> u32 {
        (self.loc >> 32) as u32
    }
    pub fn offset(&self) -> u32 {
        self.loc as u32
    }
}

/// The tag of a key: the upper 32 bits of its xxh3-64 hash.
pub fn tag_of(key: &[u8]) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(key) >> 32) as u32
}

/// The table. Capacity is a power of two, at least 16.
pub struct Index {
    slots: Vec<Slot>,
    shift: u32,
    len: usize,
}

impl Default for Index {
    fn default() -> Self {
        Index::with_capacity_pow2(16)
    }
}

impl Index {
    fn with_capacity_pow2(capacity: usize) -> Index {
        Index {
            slots: vec![Slot::default(); capacity],
            shift: 32 - capacity.trailing_zeros(),
            len: 0,
        }
    }

    /// Adopts raw slots (a snapshot) as they are, after checking in one sequential pass that every
    /// occupied slot is reachable from its home slot; `None` if the table is not a valid index.
    pub fn from_slots(slots: Vec<Slot>) -> Option<Index> {
        let capacity = slots.len();
        if capacity < 16 || !capacity.is_power_of_two() || capacity > 1 << 32 {
            return None;
        }
        let len = slots.iter().filter(|s| !s.is_empty()).count();
        if len * 100 > capacity * 85 {
            return None;
        }
        let index = Index {
            slots,
            shift: 32 - capacity.trailing_zeros(),
            len,
        };
        let mask = index.mask();
        // Walk once round the table starting just after an empty slot; a slot at `p` is reachable
        // if no empty slot lies between its home and `p`, i.e. its home is within the current run.
        let start = index.slots.iter().position(Slot::is_empty)?;
        let mut last_empty = start;
        for step in 1..=capacity {
            let p = (start + step) & mask;
            let slot = index.slots[p];
            if slot.is_empty() {
                last_empty = p;
            } else if p.wrapping_sub(index.home(slot.tag)) & mask
                >= p.wrapping_sub(last_empty) & mask
            {
                return None;
            }
        }
        Some(index)
    }

    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Bytes of RAM the table holds (the whole per-key cost of the engine).
    pub fn allocated_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot>()
    }

    fn home(&self, tag: u32) -> usize {
        (u64::from(tag) >> self.shift) as usize
    }
    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// Asks the CPU to start loading the home slot of `tag` (a hint; see [`super::batch`]).
    #[inline]
    pub fn prefetch_home(&self, tag: u32) {
        super::batch::prefetch(std::ptr::from_ref(&self.slots[self.home(tag)]).cast());
    }

    /// Positions of occupied slots carrying `tag`, in probe order. The caller confirms the key.
    pub fn candidates(&self, tag: u32) -> Candidates<'_> {
        Candidates {
            index: self,
            pos: self.home(tag),
            tag,
        }
    }

    /// Positions of the occupied slots whose tag lies in `tags`. The tag space is a stable cursor
    /// for chunked scans: a key's tag never changes, while its slot position moves on growth and
    /// removals.
    pub fn positions_in(&self, tags: std::ops::RangeInclusive<u32>) -> Vec<usize> {
        let (lo, hi) = (*tags.start(), *tags.end());
        let mut out = Vec::new();
        if lo > hi {
            return out;
        }
        let mask = self.mask();
        let first = self.home(lo);
        let last = self.home(hi);
        // Slots holding these tags lie between home(lo) and the first empty slot after home(hi).
        let span = (last + self.slots.len() - first) & mask;
        for step in 0..self.slots.len() {
            let p = (first + step) & mask;
            let slot = self.slots[p];
            if slot.is_empty() {
                if step >= span {
                    break;
                }
                continue;
            }
            if (lo..=hi).contains(&slot.tag) {
                out.push(p);
            }
        }
        out
    }

    pub fn get(&self, pos: usize) -> Slot {
        self.slots[pos]
    }

    /// Whether position `pos` still holds exactly `slot` (`false` past the end).
    pub fn holds(&self, pos: usize, slot: Slot) -> bool {
        self.slots.get(pos) == Some(&slot)
    }

    /// Overwrites an occupied slot with a record of the same key.
    pub fn replace(&mut self, pos: usize, slot: Slot) {
        debug_assert!(!self.slots[pos].is_empty() && !slot.is_empty());
        self.slots[pos] = slot;
    }

    /// Inserts a slot for a key known to be absent.
    pub fn insert(&mut self, slot: Slot) {
        if (self.len + 1) * 100 > self.slots.len() * 85 {
            self.grow();
        }
        self.place(slot);
    }

    fn place(&mut self, slot: Slot) {
        let mask = self.mask();
        let mut pos = self.home(slot.tag);
        while !self.slots[pos].is_empty() {
            pos = (pos + 1) & mask;
        }
        self.slots[pos] = slot;
        self.len += 1;
    }

    fn grow(&mut self) {
        let old = std::mem::take(&mut self.slots);
        *self = Index::with_capacity_pow2(old.len() * 2);
        for slot in old.into_iter().filter(|s| !s.is_empty()) {
            self.place(slot);
        }
    }

    /// Removes the slot at `pos`, shifting later members of the cluster back so probes stay valid.
    pub fn remove(&mut self, pos: usize) {
        let mask = self.mask();
        let mut hole = pos;
        let mut next = (pos + 1) & mask;
        loop {
            let slot = self.slots[next];
            if slot.is_empty() {
                break;
            }
            let home = self.home(slot.tag);
            // Move `slot` into the hole unless its home lies cyclically in (hole, next].
            let dist_next = next.wrapping_sub(home) & mask;
            let dist_hole = next.wrapping_sub(hole) & mask;
            if dist_next >= dist_hole {
                self.slots[hole] = slot;
                hole = next;
            }
            next = (next + 1) & mask;
        }
        self.slots[hole] = Slot::default();
        self.len -= 1;
    }
}

/// Iterator returned by [`Index::candidates`].
pub struct Candidates<'a> {
    index: &'a Index,
    pos: usize,
    tag: u32,
}

impl Iterator for Candidates<'_> {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        loop {
            let slot = self.index.slots[self.pos];
            if slot.is_empty() {
                return None;
            }
            let here = self.pos;
            self.pos = (self.pos + 1) & self.index.mask();
            if slot.tag == self.tag {
                return Some(here);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn find(index: &Index, tag: u32, loc: u32) -> Option<usize> {
        index
            .candidates(tag)
            .find(|&p| index.get(p).offset() == loc)
    }

    #[test]
    fn insert_grow_remove_against_a_map() {
        let mut index = Index::default();
        let mut model = HashMap::new();
        // Few distinct tags force long clusters and same-tag chains.
        for i in 0..5000u32 {
            let tag = (i % 97).wrapping_mul(0x9E37_79B9) | (i & 3);
            index.insert(Slot::new(tag, 40, false, 0, i));
            model.insert(i, tag);
        }
        for i in (0..5000u32).step_by(3) {
            let tag = model[&i];
            let pos = find(&index, tag, i).unwrap();
            index.remove(pos);
            model.remove(&i);
        }
        assert_eq!(index.len(), model.len());
        for (&i, &tag) in &model {
            assert!(find(&index, tag, i).is_some(), "lost {i}");
        }
        assert!(index.allocated_bytes() * 100 / index.len() <= 40 * 100);
        let rebuilt = Index::from_slots(index.slots().to_vec()).unwrap();
        for (&i, &tag) in &model {
            assert!(find(&rebuilt, tag, i).is_some());
        }
        // A slot moved before its home (unreachable by probing) is rejected.
        let mut broken = index.slots().to_vec();
        let cap = broken.len();
        let (p, slot) = broken
            .iter()
            .enumerate()
            .find(|(p, s)| !s.is_empty() && *p == index.home(s.tag))
            .map(|(p, s)| (p, *s))
            .unwrap();
        broken[p] = Slot::default();
        let before = (p + cap - 1) % cap;
        if broken[before].is_empty() {
            broken[before] = slot;
            assert!(Index::from_slots(broken).is_none());
        }
    }

    #[test]
    fn tag_ranges_cover_every_slot_once() {
        let mut index = Index::default();
        for i in 0..3000u32 {
            index.insert(Slot::new(i.wrapping_mul(0x9E37_79B9), 40, false, 0, i));
        }
        let mut seen = Vec::new();
        let chunk = 1u64 << 28;
        let mut lo = 0u64;
        while lo <= u64::from(u32::MAX) {
            let hi = (lo + chunk - 1).min(u64::from(u32::MAX));
            seen.extend(index.positions_in(lo as u32..=hi as u32));
            lo = hi + 1;
        }
        seen.sort_unstable();
        let occupied: Vec<usize> = (0..index.slots().len())
            .filter(|&p| !index.get(p).is_empty())
            .collect();
        assert_eq!(seen, occupied);
    }

    #[test]
    fn slot_fields() {
        let s = Slot::new(5, 77, true, 3, 1000);
        assert!(s.is_tombstone() && !s.is_empty());
        assert_eq!((s.len(), s.segment(), s.offset()), (77, 3, 1000));
        assert!(Index::from_slots(vec![Slot::default(); 15]).is_none());
    }
}
