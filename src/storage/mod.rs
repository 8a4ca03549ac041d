//! The storage engine: a hand-written log-structured hash file, one instance per shard (core).
//!
//! Records are appended to numbered segment files (`seg-00000001.log`, ...) with a CRC on every
//! record ([`record`]). An open-addressing [`index`] maps a key's hash to its newest record's
//! location in 16 bytes per slot; keys live only in the segments, which are memory-mapped
//! read-only, so confirming a hash match and reading a value are memory reads of the page cache
//! with no syscall. Appends collect in memory and reach the kernel with one `pwrite` per batch of
//! writes ([`segment`]), so a working set that fits in RAM never waits on the disk; only fsync
//! does, and the glommio adaptor ([`shard`]) submits it to io_uring off the executor's path.
//!
//! The [`Engine`] itself is synchronous and single-threaded (no locks, no async), so all of its
//! logic runs in plain unit tests. Layout:
//! - [`engine`]: open, the index lookups, the write path and the primitive operations;
//! - [`segment`]: one segment file, its memory map and its unwritten tail;
//! - [`batch`]: newest-version-wins batches (replication) with their cache misses overlapped;
//! - [`ops`]: the read-modify-write hooks of the memcached layer (add, replace, append, incr ...);
//! - [`recovery`]: full segment scans, torn-tail truncation, the index snapshot;
//! - [`compact`]: incremental compaction and tombstone garbage collection;
//! - [`durability`]: what is not yet durable, and the sync rounds that make it so.
//!
//! Assumptions: versions are opaque u64s, compared only (the cluster stores a hybrid logical clock
//! there). Time is unix seconds from a clock seam ([`Engine::set_clock`]); a tombstone records the
//! time of its delete in its expiry field, and tombstone GC ages tombstones by that time.

pub mod batch;
pub mod compact;
pub mod durability;
pub mod engine;
pub mod index;
pub mod ops;
pub mod record;
pub mod recovery;
pub mod segment;
pub mod shard;

use std::path::PathBuf;
use std::time::Duration;

pub use batch::{NewerCounts, NewerRecord};
pub use compact::CompactProgress;
pub use durability::SyncRound;
pub use engine::{Engine, Entry, Held, TombstoneGc};
pub use ops::{IncrOutcome, WriteOutcome};
pub use recovery::{RecoveryReport, SnapshotImage};
pub use shard::ShardStore;

/// When appended records are forced to stable storage.
///
/// The [`Engine`] only records the policy: it never fsyncs by itself. [`ShardStore`] applies it
/// with sync rounds off the shard's thread (see [`durability`]); callers of a bare engine call
/// [`Engine::sync`], which also makes directory changes, the `flush_all` marker and the deletion
/// of compacted segments durable. Opening a store (recovery) and [`Engine::write_snapshot`] are the
/// only other blocking fsyncs, and neither runs on a serving shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// A write is acknowledged only after an fsync covering it (writes pending together share one).
    EveryWrite,
    /// An fsync runs every interval; a crash loses at most the last interval of writes.
    GroupCommit(Duration),
    /// Never fsync explicitly (the OS writes back when it likes).
    None,
}

impl Default for Durability {
    /// Group commit every 10 ms: a tenth of memcached's typical client timeout, one fsync per tick.
    fn default() -> Self {
        Durability::GroupCommit(Duration::from_millis(10))
    }
}

/// Settings of one engine instance.
#[derive(Clone, Debug)]
pub struct Config {
    /// The directory holding this shard's segments and snapshot (created if missing).
    pub dir: PathBuf,
    /// Longest accepted key in bytes (at most 65535).
    pub max_key_len: usize,
    /// Largest accepted value in bytes.
    pub max_value_len: usize,
    /// A segment is closed and a new one started once it reaches this size.
    pub segment_size: u64,
    /// Compaction considers a closed segment once garbage / size reaches this ratio.
    pub compact_garbage_ratio: f64,
    pub durability: Durability,
}

impl Config {
    /// Defaults: keys up to 250 bytes, values up to 1 MiB, 64 MiB segments, compaction at 50%.
    pub fn new(dir: impl Into<PathBuf>) -> Config {
        Config {
            dir: dir.into(),
            max_key_len: 250,
            max_value_len: 1 << 20,
            segment_size: 64 << 20,
            compact_garbage_ratio: 0.5,
            durability: Durability::default(),
        }
    }
}

/// A live value as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub value: Vec<u8>,
    pub flags: u32,
    pub version: u64,
    /// Unix seconds, 0 = never.
    pub expiry: u32,
}

/// Counters of one engine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Live (non-tombstone) keys in the index, including expired ones not yet reclaimed.
    pub items: u64,
    /// Tombstones held in the index.
    pub tombstones: u64,
    /// Bytes of records the index points to.
    pub bytes_live: u64,
    /// Bytes in segment files no longer pointed to (reclaimable by compaction).
    pub bytes_garbage: u64,
    pub gets: u64,
    pub sets: u64,
    pub deletes: u64,
    /// RAM held by the index.
    pub index_bytes: u64,
    pub segments: u64,
    /// Records compaction dropped since start: expired values, flushed records and collected
    /// tombstones.
    pub records_dropped: u64,
}

/// Everything that can go wrong in the engine.
#[derive(Debug)]
pub enum StorageError {
    Io(std::io::Error),
    EmptyKey,
    KeyTooLong(usize),
    ValueTooLarge(usize),
    /// A record failed verification (while reading or scanning).
    Corrupt(&'static str),
    /// A record's header is valid but the data ends before the record does.
    Truncated,
    /// The engine ran out of segment ids or offsets (u32).
    Full,
}

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageError::Io(e) => write!(f, "storage I/O error: {e}"),
            StorageError::EmptyKey => write!(f, "empty key"),
            StorageError::KeyTooLong(n) => write!(f, "key of {n} bytes is too long"),
            StorageError::ValueTooLarge(n) => write!(f, "value of {n} bytes is too large"),
            StorageError::Corrupt(why) => write!(f, "corrupt record: {why}"),
            StorageError::Truncated => write!(f, "truncated record"),
            StorageError::Full => write!(f, "storage address space exhausted"),
        }
    }
}

impl std::error::Error for StorageError {}

impl From<std::io::Error> for StorageError {
    fn from(e: std::io::Error) -> Self {
        StorageError::Io(e)
    }
}
