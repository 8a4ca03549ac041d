//! Online backup (`kumoctl backup [suffix]`): each active server writes a copy of its data while it
//! keeps serving, then reports where.
//!
//! The manager puts a `BackupOrder { id, suffix }` in the routing snapshot; shard 0 of every active
//! server carries each order out once (the id of the last one done is kept in the store directory,
//! so a restart does not redo it) and reports `BackupDone { addr, id, state }` to every manager.
//!
//! # What is written
//!
//! A complete store directory, the same layout as `-s` (meta file, `shard-N/` engines), named
//! `<store dir>-<suffix>` next to the store (kumofs named its copies `<db>-<suffix>`). It is built
//! as `<store dir>-<suffix>.tmp` and renamed into place once every shard's part is fsynced, so a
//! backup directory that exists is complete; an older backup of the same name is replaced.
//!
//! Each shard copies its records (values and tombstones, with their versions, flags and expiry
//! times) chunk by chunk of its tag space into a fresh engine, yielding between chunks, so clients
//! are served meanwhile. Every record is copied whole, at the version it had when its chunk was
//! read: a key written during the backup appears with its old or its new version, never a mix,
//! and every write acknowledged before the order arrived is in it (at that version or newer). The
//! copy is not a single instant across keys; merging the backups of all servers with
//! `kumomergedb` (newest version wins, tombstones respected) gives every key's newest version.
//!
//! A server can start from a backup directory (same shard count), or from a store that
//! `kumomergedb` made out of several backups.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::maintenance::{on_every_shard, ClusterAnswer, ClusterCall};
use super::rebalance::{chunk_count, chunk_tags};
use super::shard::Shard;
use crate::rpc::messages::{BackupOrder, BackupState};
use crate::storage::{Config, Durability, Engine};

/// The directory a backup with `suffix` of the store at `store` is written to.
pub fn backup_dir(store: &Path, suffix: &str) -> PathBuf {
    let name = store
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "store".into());
    store.with_file_name(format!("{name}-{suffix}"))
}

/// A suffix must name a sibling directory, nothing else.
pub fn check_suffix(suffix: &str) -> Result<(), String> {
    let ok = !suffix.is_empty()
        && suffix.len() <= 100
        && suffix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !suffix.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "backup suffix {suffix:?} must be 1-100 letters, digits, '-', '_' or '.' (not leading)"
        ))
    }
}

/// Carries out `order` on every shard; the state to report.
pub(crate) async fn run(shard: &Rc<Shard>, order: &BackupOrder) -> BackupState {
    match write_backup(shard, order).await {
        Ok((path, records)) => {
            crate::info!(
                "backup {}: {records} records written to {}",
                order.id,
                path.display()
            );
            BackupState::Done {
                path: path.display().to_string(),
                records,
            }
        }
        Err(e) => {
            crate::warn!("backup {} failed: {e}", order.id);
            BackupState::Failed(e)
        }
    }
}

async fn write_backup(shard: &Rc<Shard>, order: &BackupOrder) -> Result<(PathBuf, u64), String> {
    check_suffix(&order.suffix)?;
    let store = &shard.config.store;
    let dir = backup_dir(store, &order.suffix);
    let tmp = dir.with_extension(match dir.extension() {
        Some(ext) => format!("{}.tmp", ext.to_string_lossy()),
        None => "tmp".into(),
    });
    let io = |what: &str, path: &Path, e: std::io::Error| format!("{what} {}: {e}", path.display());
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io("cannot remove", &tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| io("cannot create", &tmp, e))?;
    // Writes the meta file (shard count) the way a server's own store has it.
    drop(super::store::open_store(
        &tmp,
        shard.count,
        Durability::None,
    )?);
    let mut records = 0;
    for answer in on_every_shard(shard, || ClusterCall::Backup { dir: tmp.clone() }).await? {
        if let ClusterAnswer::Records(Ok(n)) = answer {
            records += n;
        }
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| io("cannot replace", &dir, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| io("cannot rename to", &dir, e))?;
    if let Some(parent) = dir.parent() {
        std::fs::File::open(parent)
            .and_then(|f| f.sync_all())
            .map_err(|e| io("cannot sync", parent, e))?;
    }
    Ok((dir, records))
}

/// This shard's part: copies every record into `dir/shard-N`, then fsyncs it and writes its index
/// snapshot (off the shard's thread). Returns the number of records written.
pub(crate) async fn copy_shard(shard: &Rc<Shard>, dir: &Path) -> Result<u64, String> {
    let path = super::store::shard_dir(dir, shard.id);
    let mut config = Config::new(&path);
    config.durability = Durability::None;
    {
        let live = shard.store.engine();
        config.max_key_len = live.config().max_key_len;
        config.max_value_len = live.config().max_value_len;
    }
    let (mut copy, _) =
        Engine::open(config).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let (records, bytes) = {
        let engine = shard.store.engine();
        (engine.len() as u64, engine.stats().bytes_live)
    };
    let chunks = chunk_count(records, bytes);
    let mut written = 0u64;
    for step in 0..chunks {
        let chunk = super::rebalance::chunk_at_step(step, chunks);
        let mut failed = None;
        shard
            .store
            .engine()
            .for_each_in(chunk_tags(chunk, chunks), true, |entry| {
                let outcome = if entry.tombstone {
                    copy.delete_if_newer(entry.key, entry.version).map(|_| ())
                } else {
                    copy.put(
                        entry.key,
                        entry.value,
                        entry.flags,
                        entry.expiry,
                        entry.version,
                    )
                };
                match outcome {
                    Ok(()) => {
                        written += 1;
                        true
                    }
                    Err(e) => {
                        failed = Some(e.to_string());
                        false
                    }
                }
            })
            .map_err(|e| format!("reading shard {}: {e}", shard.id))?;
        if let Some(e) = failed {
            return Err(format!("writing {}: {e}", path.display()));
        }
        futures_lite::future::yield_now().await;
    }
    let finished = glommio::executor()
        .spawn_blocking(move || copy.write_snapshot())
        .await;
    finished.map_err(|e| format!("syncing {}: {e}", path.display()))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backups_sit_beside_the_store() {
        assert_eq!(
            backup_dir(Path::new("/var/kumo/db1"), "20261130"),
            PathBuf::from("/var/kumo/db1-20261130")
        );
        assert_eq!(backup_dir(Path::new("db"), "x"), PathBuf::from("db-x"));
    }

    #[test]
    fn suffixes_cannot_escape_the_directory() {
        assert!(check_suffix("20261130").is_ok());
        assert!(check_suffix("nightly-1.a_b").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "a b", &"x".repeat(101)] {
            assert!(check_suffix(bad).is_err(), "{bad:?}");
        }
    }
}
