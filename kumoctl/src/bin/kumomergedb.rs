//! kumomergedb: merges kumo-server stores (backups) into one, newest version wins.
//!
//! `kumomergedb [--shards N] DST SRC...`
//!
//! Every SRC is a store directory (`-s` of a server, or a backup `<store>-<suffix>` written on
//! `kumoctl backup`). Every record of every source, values and tombstones alike, is applied to DST
//! with newest-version-wins, so a key ends up with its newest version over all sources, and a key
//! whose newest record is a delete stays deleted (its tombstone is kept, so merging DST again
//! later still respects it). Records hidden by a source's `flush_all` or expired are skipped.
//! One source is enough (kumofs's tool wanted two).
//!
//! DST is created if missing, with `--shards N` shards (default: the first source's count); a
//! server started on DST must run that many shards (`--cpus`). Restore as kumofs documents it:
//! merge the backups, copy the result to every server's `-s`, start them, attach; the rebalance's
//! drop phase removes from each server what it does not own. Sources are opened as a server opens
//! its store (a torn tail is truncated). Prints `merged N records of M records`.

use std::path::{Path, PathBuf};
use std::process::exit;

use kumofs::ring::{core_of, key_hash};
use kumofs::server::rebalance::{chunk_at_step, chunk_count, chunk_tags};
use kumofs::server::store;
use kumofs::storage::{Config, Durability, Engine, WriteOutcome};

const USAGE: &str = "usage: kumomergedb [--shards N] <dst store> <src store>...

Merges kumo-server stores or backups into <dst store>, newest version of each key wins
(deletes included). <dst store> is created if missing.
";

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{USAGE}");
        exit(0);
    }
    let mut shards = None;
    if let Some(at) = args.iter().position(|a| a == "--shards") {
        let n: usize = args
            .get(at + 1)
            .and_then(|v| v.parse().ok())
            .filter(|n| (1..=1024).contains(n))
            .unwrap_or_else(|| die("--shards needs a count between 1 and 1024"));
        shards = Some(n);
        args.drain(at..at + 2);
    }
    if args.len() < 2 || args.iter().any(|a| a.starts_with('-')) {
        eprint!("{USAGE}");
        exit(2);
    }
    let dst = PathBuf::from(&args[0]);
    let sources: Vec<PathBuf> = args[1..].iter().map(PathBuf::from).collect();
    match merge(&dst, &sources, shards) {
        Ok((merged, total)) => println!("merged {merged} records of {total} records"),
        Err(e) => die(&e),
    }
}

/// Merges `sources` into `dst`; returns (records applied, records read).
fn merge(dst: &Path, sources: &[PathBuf], shards: Option<usize>) -> Result<(u64, u64), String> {
    for source in sources {
        if source == dst {
            return Err(format!(
                "{} is both the destination and a source",
                dst.display()
            ));
        }
    }
    let shards = match shards {
        Some(n) => n,
        None => store::read_shard_count(&sources[0])?,
    };
    let mut out = store::open_store(dst, shards, Durability::None)?;
    let (mut merged, mut total) = (0u64, 0u64);
    for source in sources {
        let count = store::read_shard_count(source)?;
        for shard in 0..count {
            let dir = store::shard_dir(source, shard);
            let mut config = Config::new(&dir);
            config.durability = Durability::None;
            let (mut engine, _) =
                Engine::open(config).map_err(|e| format!("cannot open {}: {e}", dir.display()))?;
            let mut failed = None;
            // In chunks spread over the tag space, not in tag order: an engine fed keys in tag
            // order builds one long probe cluster (see `chunk_at_step`).
            let chunks = chunk_count(engine.len() as u64, engine.stats().bytes_live);
            for step in 0..chunks {
                let tags = chunk_tags(chunk_at_step(step, chunks), chunks);
                engine
                    .for_each_in(tags, true, |entry| {
                        total += 1;
                        let target = &mut out[core_of(key_hash(entry.key), shards)];
                        let applied = if entry.tombstone {
                            target.delete_if_newer(entry.key, entry.version)
                        } else {
                            target.put_if_newer(
                                entry.key,
                                entry.value,
                                entry.flags,
                                entry.expiry,
                                entry.version,
                            )
                        };
                        match applied {
                            Ok(WriteOutcome::Stored | WriteOutcome::Deleted) => merged += 1,
                            Ok(_) => {}
                            Err(e) => {
                                failed = Some(format!("writing {}: {e}", dst.display()));
                                return false;
                            }
                        }
                        true
                    })
                    .map_err(|e| format!("reading {}: {e}", dir.display()))?;
                if let Some(e) = failed.take() {
                    return Err(e);
                }
            }
        }
    }
    for (shard, engine) in out.iter_mut().enumerate() {
        engine
            .write_snapshot()
            .map_err(|e| format!("syncing {}: {e}", store::shard_dir(dst, shard).display()))?;
    }
    Ok((merged, total))
}

fn die(message: &str) -> ! {
    eprintln!("kumomergedb: {message}");
    exit(1);
}
