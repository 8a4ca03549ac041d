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

use std::path::{Path, PathBuf};

use crate::storage::{Config, Durability, Engine};

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
