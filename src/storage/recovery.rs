//! Opening a store: the index snapshot, segment scans, torn-tail truncation and damage reports.
//!
//! Open loads `index.snap` when it is present and valid, then scans only the bytes appended after
//! it; without a valid snapshot it scans every segment from the start. Scanning applies records in
//! log order (segment id, then offset), last one wins: compaction only ever copies a key's current
//! record forward, so log order is the order the writes were applied in. Nothing read from disk is
//! trusted before its checksum matches, and every length is bounded before it is allocated.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

use super::engine::find_in;
use super::index::{tag_of, Index, Slot};
use super::record::{self, Header, HEADER_LEN};
use super::segment::{segment_path, Segment};
use super::{Config, Engine, StorageError};

const SNAPSHOT: &str = "index.snap";
const SNAPSHOT_MAGIC: &[u8; 8] = b"KUMOSNP1";
const FLUSH_META: &str = "flush.meta";

/// What open found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// True when the index came from the snapshot.
    pub snapshot_loaded: bool,
    /// Why a present snapshot was rejected, if it was.
    pub snapshot_rejected: Option<String>,
    pub segments: u32,
    /// Records applied from segment scans.
    pub records_scanned: u64,
    /// Records whose header was intact but whose body checksum failed (skipped).
    pub bad_records: u64,
    /// Bytes skipped while resynchronising after a damaged header, or ignored as junk.
    pub skipped_bytes: u64,
    /// Bytes cut off the end of the last segment (a torn write or junk).
    pub truncated_bytes: u64,
    /// Segments found on disk that the snapshot shows were already compacted away (a deletion
    /// a crash undid); they are deleted unread.
    pub stale_segments: u32,
}

/// Persists the flush version atomically (write, fsync, rename, fsync the directory).
pub(crate) fn write_flush_version(dir: &Path, version: u64) -> Result<(), StorageError> {
    let mut bytes = version.to_le_bytes().to_vec();
    bytes.extend_from_slice(&crc32fast::hash(&bytes).to_le_bytes());
    write_atomically(dir, FLUSH_META, &bytes)
}

fn read_flush_version(dir: &Path) -> u64 {
    match fs::read(dir.join(FLUSH_META)) {
        Ok(b) if b.len() == 12 && crc32fast::hash(&b[..8]).to_le_bytes() == b[8..12] => {
            let mut v = [0u8; 8];
            v.copy_from_slice(&b[..8]);
            u64::from_le_bytes(v)
        }
        // A damaged or missing flush marker means "no flush": older data may reappear, but
        // nothing acknowledged is lost. The marker is written atomically, so this is rare.
        _ => 0,
    }
}

fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

pub(crate) fn open(cfg: Config) -> Result<(Engine, RecoveryReport), StorageError> {
    fs::create_dir_all(&cfg.dir)?;
    let mut cfg = cfg;
    // Offsets are u32: keep every segment addressable.
    cfg.segment_size = cfg.segment_size.clamp(4096, 1 << 31);
    cfg.max_key_len = cfg.max_key_len.min(u16::MAX as usize);
    let mut engine = Engine::empty(cfg);
    let mut report = RecoveryReport::default();
    let dir = engine.cfg.dir.clone();
    engine.flush_version = read_flush_version(&dir);

    let mut ids = Vec::new();
    for entry in fs::read_dir(&dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(id) = name
            .strip_prefix("seg-")
            .and_then(|r| r.strip_suffix(".log"))
            .and_then(|n| n.parse::<u32>().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    for &id in &ids {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(segment_path(&dir, id))?;
        let len = file.metadata()?.len().min(u64::from(u32::MAX));
        engine.segments.insert(id, Segment::existing(file, len)?);
    }
    report.segments = ids.len() as u32;

    // Where each segment's scan starts: after the snapshot's view of it, or at 0.
    let mut scan_from: Vec<(u32, u64)> = ids.iter().map(|&id| (id, 0)).collect();
    match load_snapshot(&engine, &dir) {
        Ok(Some((index, seen))) => {
            engine.index = index;
            report.snapshot_loaded = true;
            for (id, from) in scan_from.iter_mut() {
                if let Some(&len) = seen.get(id) {
                    *from = len;
                }
            }
            // Segment ids only grow, and the snapshot lists every segment that existed when it
            // was taken: an older id it does not list had been compacted away (its records
            // copied forward) and only a crash brought its file back. Replaying it would let
            // its stale records override the snapshot.
            let newest_seen = seen.keys().next_back().copied().unwrap_or(0);
            let stale: Vec<u32> = ids
                .iter()
                .copied()
                .filter(|id| *id < newest_seen && !seen.contains_key(id))
                .collect();
            for id in stale {
                engine.segments.remove(&id);
                fs::remove_file(segment_path(&dir, id))?;
                report.stale_segments += 1;
            }
            scan_from.retain(|(id, _)| engine.segments.contains_key(id));
            ids.retain(|id| engine.segments.contains_key(id));
        }
        Ok(None) => {}
        Err(why) => report.snapshot_rejected = Some(why),
    }

    let last = ids.last().copied();
    for (id, from) in scan_from {
        scan_segment(&mut engine, id, from, Some(id) == last, &mut report)?;
    }

    // Live bytes per segment follow from the index (one sequential pass, dense per-id sums).
    let min_id = engine.segments.keys().next().copied().unwrap_or(0);
    let max_id = engine.segments.keys().next_back().copied().unwrap_or(0);
    let mut live = vec![0u64; (max_id - min_id) as usize + 1];
    let mut tombstones = 0u64;
    for slot in engine.index.slots().iter().filter(|s| !s.is_empty()) {
        tombstones += u64::from(slot.is_tombstone());
        if let Some(sum) = slot
            .segment()
            .checked_sub(min_id)
            .and_then(|i| live.get_mut(i as usize))
        {
            *sum += u64::from(slot.len());
        }
    }
    engine.tombstone_slots = tombstones;
    for (id, seg) in engine.segments.iter_mut() {
        seg.live = live[(id - min_id) as usize];
    }
    // Always append to a fresh segment: the old tail may end in bytes we chose to ignore.
    engine.active = last.unwrap_or(0);
    engine.roll()?;
    Ok((engine, report))
}

/// Loads and validates the snapshot. `Ok(None)`: no snapshot; `Err`: present but unusable.
/// Segment id to length: how far the snapshot saw each segment.
type SegmentLens = BTreeMap<u32, u64>;

fn load_snapshot(engine: &Engine, dir: &Path) -> Result<Option<(Index, SegmentLens)>, String> {
    // The slot table is read straight into the memory the index will own (one copy from the page
    // cache, no intermediate buffer): at 10 M keys it is 256 MiB.
    let mut file = match File::open(dir.join(SNAPSHOT)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("unreadable: {e}")),
    };
    let file_len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut crc = crc32fast::Hasher::new();
    let mut read = |buf: &mut [u8]| -> Result<(), String> {
        file.read_exact(buf).map_err(|_| "truncated".to_string())?;
        crc.update(buf);
        Ok(())
    };
    let mut head = [0u8; 12];
    read(&mut head)?;
    if &head[..8] != SNAPSHOT_MAGIC {
        return Err("bad magic or too short".into());
    }
    let nseg = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as u64;
    if 12 + nseg * 12 + 8 + 4 > file_len {
        return Err("segment count out of range".into());
    }
    let mut table = vec![0u8; nseg as usize * 12 + 8];
    read(&mut table)?;
    let mut seen = BTreeMap::new();
    for entry in table[..nseg as usize * 12].chunks_exact(12) {
        let id = u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]);
        let mut len = [0u8; 8];
        len.copy_from_slice(&entry[4..12]);
        seen.insert(id, u64::from_le_bytes(len));
    }
    let mut cap = [0u8; 8];
    cap.copy_from_slice(&table[nseg as usize * 12..]);
    let cap = u64::from_le_bytes(cap);
    if cap
        .checked_mul(16)
        .and_then(|b| b.checked_add(12 + nseg * 12 + 8 + 4))
        != Some(file_len)
    {
        return Err("slot count does not match the file size".into());
    }
    if !(16..=1 << 32).contains(&cap) || !cap.is_power_of_two() {
        return Err("bad slot count".into());
    }
    let mut slots = vec![Slot::default(); cap as usize];
    read(Slot::as_bytes_mut(&mut slots))?;
    let mut stored_crc = [0u8; 4];
    file.read_exact(&mut stored_crc)
        .map_err(|_| "truncated".to_string())?;
    if crc.finalize().to_le_bytes() != stored_crc {
        return Err("checksum mismatch".into());
    }
    Slot::from_le_in_place(&mut slots);
    // Per segment id (dense, offset by the smallest id): the length the snapshot saw, if the
    // segment still exists (`Some(None)` when compaction has removed it since).
    let (Some(&min_id), Some(&max_id)) = (seen.keys().next(), seen.keys().next_back()) else {
        return Err("no segments".into());
    };
    if max_id - min_id > 1 << 20 {
        return Err("segment ids out of range".into());
    }
    let mut known: Vec<Option<Option<u64>>> = vec![None; (max_id - min_id) as usize + 1];
    for (&id, &len) in &seen {
        known[(id - min_id) as usize] = Some(match engine.segments.get(&id) {
            Some(seg) if seg.len >= len => Some(len),
            Some(_) => return Err("a segment is shorter than the snapshot saw".into()),
            None => None,
        });
    }
    for slot in slots.iter_mut().filter(|s| !s.is_empty()) {
        let entry = slot
            .segment()
            .checked_sub(min_id)
            .and_then(|i| known.get(i as usize).copied().flatten());
        match entry {
            None => return Err("slot points to an unknown segment".into()),
            // The segment was compacted away after the snapshot: the copy is in the scanned
            // tail. The slot becomes a removal marker below so probing stays valid.
            Some(None) => slot.meta = u32::MAX,
            Some(Some(seen_len)) => {
                if (slot.len() as usize) < HEADER_LEN
                    || u64::from(slot.offset()) + u64::from(slot.len()) > seen_len
                {
                    return Err("slot points outside its segment".into());
                }
            }
        }
    }
    let mut index = Index::from_slots(slots).ok_or("bad slot table")?;
    let stale: Vec<Slot> = index
        .slots()
        .iter()
        .copied()
        .filter(|s| s.meta == u32::MAX)
        .collect();
    for slot in stale {
        if let Some(pos) = index.candidates(slot.tag).find(|&p| index.get(p) == slot) {
            index.remove(pos);
        }
    }
    Ok(Some((index, seen)))
}

/// An encoded index snapshot, captured from an engine and not yet on disk.
///
/// Format: magic `KUMOSNP1`; u32 segment count; per segment u32 id, u64 length; u64 slot count;
/// the raw slots (u32 tag, u32 meta, u64 location, little-endian); u32 CRC32 (crc32fast) of all
/// preceding bytes. Installed by writing a temporary file and renaming it into place.
pub struct SnapshotImage {
    dir: std::path::PathBuf,
    bytes: Vec<u8>,
}

impl SnapshotImage {
    /// Writes the image durably. Blocking: the shard adaptor runs it on the blocking pool. The
    /// segment bytes it refers to must be fsynced first (see [`Engine::capture_snapshot`]).
    pub fn install(&self) -> Result<(), StorageError> {
        write_atomically(&self.dir, SNAPSHOT, &self.bytes)
    }
}

impl Engine {
    /// Writes the index snapshot now, after an fsync, so it never refers to bytes a crash could
    /// lose. Blocks for the fsync and the write (about 1 s at 10 M keys).
    pub fn write_snapshot(&mut self) -> Result<(), StorageError> {
        let image = self.capture_snapshot();
        self.sync()?;
        image.install()
    }

    /// Encodes the index as it is now (CPU only, no I/O). The caller must fsync every segment
    /// (e.g. [`Engine::sync`]) after capturing and before [`SnapshotImage::install`].
    pub fn capture_snapshot(&self) -> SnapshotImage {
        let slots = self.index.slots();
        let mut out = Vec::with_capacity(32 + self.segments.len() * 12 + slots.len() * 16);
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&(self.segments.len() as u32).to_le_bytes());
        for (id, seg) in &self.segments {
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&seg.len.to_le_bytes());
        }
        out.extend_from_slice(&(slots.len() as u64).to_le_bytes());
        Slot::extend_le_bytes(&mut out, slots);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        SnapshotImage {
            dir: self.cfg.dir.clone(),
            bytes: out,
        }
    }
}

/// What the scanner found at one position of a segment.
enum Step {
    Record { len: usize },
    BadBody { len: usize },
    Resync { skip: usize },
    End { junk: usize },
}

/// Scans segment `id` from byte `from` (through its memory map), applying every valid record to
/// the index; a torn or junk tail of the last segment is cut off.
fn scan_segment(
    engine: &mut Engine,
    id: u32,
    from: u64,
    is_last: bool,
    report: &mut RecoveryReport,
) -> Result<(), StorageError> {
    let Engine {
        segments, index, ..
    } = engine;
    let Some(data) = segments.get(&id).and_then(|seg| seg.read_to_end(from)) else {
        return Ok(());
    };
    let mut pos = 0usize;
    let mut cut = None;
    while pos < data.len() {
        let step = match record::decode(&data[pos..]) {
            Ok(rec) => {
                let len = rec.header.record_len();
                let offset = from as usize + pos;
                apply(
                    segments,
                    index,
                    id,
                    offset as u32,
                    rec.key,
                    &rec.header,
                    len as u32,
                )?;
                Step::Record { len }
            }
            Err(StorageError::Corrupt("body checksum mismatch")) => {
                // The header checksum held, so its length is trusted: skip exactly this record.
                let len = Header::decode(&data[pos..]).map_or(1, |h| h.record_len());
                Step::BadBody { len }
            }
            Err(_) => match resync(data, pos + 1) {
                Some(next) => Step::Resync { skip: next - pos },
                None => Step::End {
                    junk: data.len() - pos,
                },
            },
        };
        match step {
            Step::Record { len } => {
                report.records_scanned += 1;
                pos += len;
            }
            Step::BadBody { len } => {
                report.bad_records += 1;
                pos += len;
            }
            Step::Resync { skip } => {
                report.skipped_bytes += skip as u64;
                pos += skip;
            }
            Step::End { junk } => {
                if is_last {
                    report.truncated_bytes += junk as u64;
                    cut = Some(from + pos as u64);
                } else {
                    report.skipped_bytes += junk as u64;
                }
                break;
            }
        }
    }
    if let (Some(keep), Some(seg)) = (cut, engine.segments.get_mut(&id)) {
        seg.truncate(keep)?;
    }
    Ok(())
}

/// The first position at or after `from` where a whole, valid record starts.
fn resync(data: &[u8], from: usize) -> Option<usize> {
    (from..data.len().saturating_sub(HEADER_LEN - 1))
        .filter(|&p| data[p + 8] == record::MAGIC)
        .find(|&p| record::decode(&data[p..]).is_ok())
}

fn apply(
    segments: &BTreeMap<u32, Segment>,
    index: &mut Index,
    seg: u32,
    offset: u32,
    key: &[u8],
    header: &Header,
    len: u32,
) -> Result<(), StorageError> {
    let tomb = header.kind == record::Kind::Tombstone;
    let slot = Slot::new(tag_of(key), len, tomb, seg, offset);
    // A slot whose record cannot be read back is replaced rather than failing the open.
    match find_in(segments, index, key).unwrap_or(None) {
        Some(found) => index.replace(found.pos, slot),
        None => index.insert(slot),
    }
    Ok(())
}
