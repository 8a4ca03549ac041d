//! The server's data directory (`-s PATH`): one storage engine per shard and a meta file that pins
//! the shard count.
//!
//! # Layout
//!
//! ```text
//! PATH/kumo-server.meta   text, one line: "kumofs-server shards=N\n"
//! PATH/shard-0/           the storage engine of shard 0 (segments, snapshot; see crate::storage)
//! PATH/shard-1/           ...
//! ```
//!
//! A key lives in shard `ring::core_of(hash, N)`, so reopening a store with another shard count
//! would look every key up in the wrong engine. The meta file is written when the store is created
//! and checked on every start; a mismatch is refused with an error that says how to fix it.
//!
//! Beside the engines the directory holds small text files of the cluster side, each written to a
//! temporary name and renamed into place:
//!
//! ```text
//! PATH/shard-N.clock          "<u64>\n": newest version shard N issued or saw (see load_clock)
//! PATH/kumo-server.horizon    "<u64>\n": the GC horizon last known while this server was active
//! PATH/kumo-server.backup     "<u64>\n": id of the last backup order this server carried out
//! ```
//!
//! The last part of this file holds tombstone collection bounded by the cluster's GC horizon.

use std::path::{Path, PathBuf};

use crate::storage::{Config, Durability, Engine, StorageError, TombstoneGc};

/// Name of the meta file inside the store directory.
pub const META_FILE: &str = "kumo-server.meta";

/// Opens (creating if needed) the store at `dir` for `shards` shards and returns one engine per
/// shard, in shard order. Errors are sentences meant for the operator.
pub fn open_store(
    dir: &Path,
    shards: usize,
    durability: Durability,
) -> Result<Vec<Engine>, String> {
    if shards == 0 {
        return Err("a store needs at least one shard".into());
    }
    if dir.exists() && !dir.is_dir() {
        return Err(format!(
            "store path {} exists and is not a directory (-s names a directory in kumofs-rs)",
            dir.display()
        ));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create store directory {}: {e}", dir.display()))?;
    check_meta(dir, shards)?;
    (0..shards)
        .map(|shard| {
            let mut config = Config::new(shard_dir(dir, shard));
            config.durability = durability;
            Engine::open(config)
                .map(|(engine, _report)| engine)
                .map_err(|e| format!("cannot open {}: {e}", shard_dir(dir, shard).display()))
        })
        .collect()
}

/// Directory of one shard's engine.
pub fn shard_dir(dir: &Path, shard: usize) -> PathBuf {
    dir.join(format!("shard-{shard}"))
}

/// Reads the meta file, or writes it for a new store; fails when the counts differ.
fn check_meta(dir: &Path, shards: usize) -> Result<(), String> {
    let path = dir.join(META_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let stored = parse_meta(&text).ok_or_else(|| {
                format!(
                    "{} is not a kumo-server meta file (expected \"kumofs-server shards=N\")",
                    path.display()
                )
            })?;
            if stored != shards {
                return Err(format!(
                    "store {} was created with {stored} shards but this server would run {shards}: \
                     start it with --cpus selecting {stored} CPUs, or use an empty -s directory \
                     (the data of a store cannot be re-sharded in place)",
                    dir.display()
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if has_shard_dirs(dir) {
                return Err(format!(
                    "store {} holds shard directories but no {META_FILE}; refusing to guess its \
                     shard count",
                    dir.display()
                ));
            }
            let tmp = dir.join(format!("{META_FILE}.tmp"));
            std::fs::write(&tmp, format!("kumofs-server shards={shards}\n"))
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// The shard count of an existing store (or backup) directory, from its meta file.
pub fn read_shard_count(dir: &Path) -> Result<usize, String> {
    let path = dir.join(META_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("{} is not a kumo-server store: {e}", dir.display()))?;
    parse_meta(&text).ok_or_else(|| format!("{} is not a kumo-server meta file", path.display()))
}

fn parse_meta(text: &str) -> Option<usize> {
    let count = text.trim().strip_prefix("kumofs-server shards=")?;
    count.parse::<usize>().ok().filter(|&n| n > 0)
}

fn has_shard_dirs(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("shard-"))
        })
        .unwrap_or(false)
}

/// Physical milliseconds added to a remembered clock on start: covers versions issued after the
/// last periodic save (see [`save_clock`]) before a crash.
pub const CLOCK_SAVE_MARGIN_MS: u64 = 60_000;

/// Where shard `shard` remembers the newest version it issued or observed.
fn clock_path(dir: &Path, shard: usize) -> PathBuf {
    dir.join(format!("shard-{shard}.clock"))
}

/// The version to start shard `shard`'s clock from: the saved one plus [`CLOCK_SAVE_MARGIN_MS`], so
/// that a restart on a host whose wall clock went back can never stamp a write older than data it
/// already holds (a replica would then keep the older value). 0 when nothing was saved.
pub fn load_clock(dir: &Path, shard: usize) -> u64 {
    let Ok(text) = std::fs::read_to_string(clock_path(dir, shard)) else {
        return 0;
    };
    let Ok(saved) = text.trim().parse::<u64>() else {
        return 0;
    };
    let margin = crate::cluster::clock::version_at(CLOCK_SAVE_MARGIN_MS);
    saved.saturating_add(margin)
}

/// Saves the clock of shard `shard` (write to a temporary file, then rename).
pub fn save_clock(dir: &Path, shard: usize, version: u64) -> std::io::Result<()> {
    let path = clock_path(dir, shard);
    let tmp = path.with_extension("clock.tmp");
    std::fs::write(&tmp, format!("{version}\n"))?;
    std::fs::rename(&tmp, &path)
}

/// Reads a `"<u64>\n"` file; 0 when it is missing or unreadable.
fn read_u64_file(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

/// Writes a `"<u64>\n"` file durably: temporary file, fsync, rename, fsync of the directory.
fn write_u64_file(path: &Path, value: u64) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut file, format!("{value}\n").as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn horizon_path(dir: &Path) -> PathBuf {
    dir.join("kumo-server.horizon")
}

/// The GC horizon this server last knew while it was an active member (0 = never).
pub fn load_horizon(dir: &Path) -> u64 {
    read_u64_file(&horizon_path(dir))
}

/// Remembers the GC horizon known while active (see `manager_link`'s rejoin rule).
pub fn save_horizon(dir: &Path, horizon: u64) -> std::io::Result<()> {
    write_u64_file(&horizon_path(dir), horizon)
}

fn backup_path(dir: &Path) -> PathBuf {
    dir.join("kumo-server.backup")
}

/// Id of the last backup order carried out (0 = none).
pub fn load_last_backup(dir: &Path) -> u64 {
    read_u64_file(&backup_path(dir))
}

pub fn save_last_backup(dir: &Path, id: u64) -> std::io::Result<()> {
    write_u64_file(&backup_path(dir), id)
}

/// Tombstone collection bounded by the cluster's GC horizon: from now on compaction may drop
/// tombstones whose version is below `horizon` and whose delete is at least `min_age_secs` old
/// (besides expired values and flushed records), and it takes the oldest segment next. The work
/// itself is done by the store's bounded compaction ticks; `Stats::records_dropped` counts it.
/// A horizon of 0 (none known yet) keeps every tombstone.
pub fn collect_garbage(
    engine: &mut Engine,
    horizon: u64,
    min_age_secs: u32,
) -> Result<(), StorageError> {
    engine.collect_tombstones(TombstoneGc {
        min_age_secs,
        below_version: Some(horizon),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_pins_the_shard_count() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        assert_eq!(open_store(&store, 2, Durability::None).unwrap().len(), 2);
        assert!(store.join("shard-1").is_dir());
        assert_eq!(open_store(&store, 2, Durability::None).unwrap().len(), 2);
        let err = open_store(&store, 3, Durability::None).err().unwrap();
        assert!(err.contains("created with 2 shards"), "{err}");
    }

    #[test]
    fn the_clock_survives_with_a_margin() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_clock(dir.path(), 0), 0);
        let version = crate::cluster::clock::version_at(1_764_000_000_000) + 7;
        save_clock(dir.path(), 0, version).unwrap();
        let margin = crate::cluster::clock::version_at(CLOCK_SAVE_MARGIN_MS);
        assert_eq!(load_clock(dir.path(), 0), version + margin);
        assert_eq!(load_clock(dir.path(), 1), 0);
        std::fs::write(clock_path(dir.path(), 0), b"junk").unwrap();
        assert_eq!(load_clock(dir.path(), 0), 0);
    }

    fn engine(dir: &Path) -> Engine {
        let mut config = Config::new(dir.join("e"));
        config.durability = Durability::None;
        Engine::open(config).unwrap().0
    }

    #[test]
    fn the_stored_version_counts_tombstones_and_flushed_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = engine(dir.path());
        assert_eq!(e.stored_version(b"k").unwrap(), None);
        e.put(b"k", b"v", 0, 0, 50).unwrap();
        assert_eq!(e.stored_version(b"k").unwrap(), Some(50));
        e.delete(b"k", 90).unwrap();
        assert_eq!(e.stored_version(b"k").unwrap(), Some(90));
        e.flush(100).unwrap();
        assert_eq!(e.stored_version(b"k").unwrap(), Some(90));
        assert_eq!(e.flush_version(), 100);
        assert!(e.stored_version(b"").is_err());
    }

    /// Runs compaction until it is idle; returns the records it dropped.
    fn compact_all(e: &mut Engine) -> u64 {
        let before = e.stats().records_dropped;
        for _ in 0..100 {
            if e.compact_step(1 << 20).unwrap().idle {
                break;
            }
        }
        e.stats().records_dropped - before
    }

    #[test]
    fn garbage_collection_keeps_tombstones_at_or_above_the_horizon() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = engine(dir.path());
        e.set_clock(Some(1_000_000));
        for (key, version) in [("a", 10u64), ("b", 20), ("c", 30)] {
            e.put(key.as_bytes(), b"v", 0, 0, version).unwrap();
            e.delete(key.as_bytes(), version + 1).unwrap();
        }
        e.put(b"live", b"v", 0, 0, 5).unwrap();
        e.put(b"expired", b"v", 0, 999_999, 6).unwrap();
        // Compaction alone never drops a tombstone.
        compact_all(&mut e);
        assert_eq!(e.stats().tombstones, 3);
        // Deleted just now: too young for a 60 s minimum age whatever the horizon.
        collect_garbage(&mut e, u64::MAX, 60).unwrap();
        compact_all(&mut e);
        assert_eq!(e.stats().tombstones, 3);
        assert_eq!(e.get(b"expired").unwrap(), None);
        e.set_clock(Some(1_000_100));
        // Old enough, but only the tombstones below the horizon go.
        collect_garbage(&mut e, 21, 60).unwrap();
        compact_all(&mut e);
        assert_eq!(e.stats().tombstones, 2);
        collect_garbage(&mut e, 0, 60).unwrap();
        compact_all(&mut e);
        assert_eq!(e.stats().tombstones, 2);
        collect_garbage(&mut e, 32, 60).unwrap();
        compact_all(&mut e);
        assert_eq!(e.stats().tombstones, 0);
        assert_eq!(e.get(b"live").unwrap().map(|i| i.version), Some(5));
        // A tombstone at or above the last horizon stays, however old.
        e.delete(b"live", 40).unwrap();
        e.set_clock(Some(2_000_000));
        compact_all(&mut e);
        assert_eq!(e.stored_version(b"live").unwrap(), Some(40));
    }

    #[test]
    fn dropping_below_a_version_forgets_values_and_tombstones() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = engine(dir.path());
        e.put(b"old", b"v", 0, 0, 10).unwrap();
        e.put(b"gone", b"v", 0, 0, 11).unwrap();
        e.delete(b"gone", 12).unwrap();
        e.put(b"new", b"v", 0, 0, 30).unwrap();
        assert_eq!(
            e.drop_below_in(0..=u32::MAX, 20, |k| k != b"old").unwrap(),
            1
        );
        assert_eq!(e.stored_version(b"old").unwrap(), Some(10));
        assert_eq!(e.drop_below_in(0..=u32::MAX, 20, |_| true).unwrap(), 1);
        assert_eq!(e.stored_version(b"old").unwrap(), None);
        assert_eq!(e.stored_version(b"gone").unwrap(), None);
        assert_eq!(e.get(b"new").unwrap().map(|i| i.version), Some(30));
        // An older copy arriving later is accepted again: it is what the copy phase sends.
        assert_eq!(
            e.put_if_newer(b"old", b"w", 0, 0, 15).unwrap(),
            crate::storage::WriteOutcome::Stored
        );
    }

    #[test]
    fn horizon_and_backup_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_horizon(dir.path()), 0);
        save_horizon(dir.path(), 1234).unwrap();
        assert_eq!(load_horizon(dir.path()), 1234);
        assert_eq!(load_last_backup(dir.path()), 0);
        save_last_backup(dir.path(), 7).unwrap();
        assert_eq!(load_last_backup(dir.path()), 7);
        std::fs::write(horizon_path(dir.path()), b"junk").unwrap();
        assert_eq!(load_horizon(dir.path()), 0);
    }

    #[test]
    fn bad_paths_and_meta_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(open_store(&file, 1, Durability::None).is_err());
        let store = dir.path().join("s");
        std::fs::create_dir_all(&store).unwrap();
        std::fs::write(store.join(META_FILE), b"garbage").unwrap();
        assert!(open_store(&store, 1, Durability::None).is_err());
        assert_eq!(parse_meta("kumofs-server shards=4\n"), Some(4));
        assert_eq!(parse_meta("kumofs-server shards=0"), None);
    }
}
