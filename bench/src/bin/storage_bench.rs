//! Storage engine micro-benchmark: one engine on one thread (one core's share).
//!
//! Prints appends/s (fsync off, and group commit every 10 ms through the real shard adaptor on a
//! glommio executor), gets/s over a working set in the page cache, RAM per key, and restart time
//! with and without the index snapshot. Appends are measured batched as the server issues them
//! (the buffered appends of a batch of 16 writes reach the kernel in one `pwrite`) and, for
//! comparison, with a `pwrite` per append.
//! Run: `cargo run --release -p kumofs-bench --bin storage_bench` (KUMO_BENCH_KEYS overrides the
//! default of 10 million keys; KUMO_BENCH_DIR the directory, default a temporary one).

use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use kumofs::storage::{Config, Durability, Engine, ShardStore};

const VALUE: [u8; 32] = [b'v'; 32];
/// Writes per batch: what one turn of a shard's event loop typically applies under load.
const BATCH: u64 = 16;

fn key(i: u64, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(format!("key:{i:012}").as_bytes());
}

/// A field of /proc/self/status in bytes (RssAnon: heap; RssFile: mapped page-cache pages).
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kb| kb * 1024)
}

/// A small deterministic generator so the benchmark needs no crate.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn per_sec(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// CPU time this thread has used. Rates per CPU-second are what one core does when it is not
/// shared: the machine this runs on is shared by several builds, so wall-clock rates are noisy.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass and reads nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Wall-clock and CPU time of one phase.
#[derive(Clone, Copy)]
struct Timed {
    wall: Duration,
    cpu: Duration,
}

impl Timed {
    fn run<T, E>(f: impl FnOnce() -> Result<T, E>) -> Result<(T, Timed), E> {
        let (wall, cpu) = (Instant::now(), thread_cpu());
        let out = f()?;
        Ok((
            out,
            Timed {
                wall: wall.elapsed(),
                cpu: thread_cpu().saturating_sub(cpu),
            },
        ))
    }
    /// "N/s wall, M/s per CPU-second".
    fn rate(&self, n: u64) -> String {
        format!(
            "{:>10.0}/s wall, {:>10.0}/s per CPU-second",
            per_sec(n, self.wall),
            per_sec(n, self.cpu)
        )
    }
    fn secs(&self) -> String {
        format!(
            "{:>7.3} s wall, {:.3} s CPU",
            self.wall.as_secs_f64(),
            self.cpu.as_secs_f64()
        )
    }
}

/// Overwrites `n` random keys, handing appends to the kernel every `batch` writes.
fn overwrite(
    engine: &mut Engine,
    keys: u64,
    n: u64,
    batch: u64,
    first_version: u64,
) -> Result<Duration, Box<dyn std::error::Error>> {
    let mut rng = XorShift(0x1234_5678_9ABC_DEF1 ^ first_version);
    let mut k = Vec::new();
    let start = Instant::now();
    for i in 0..n {
        key(rng.next() % keys, &mut k);
        engine.put(&k, &VALUE, 0, 0, first_version + i)?;
        if (i + 1) % batch == 0 {
            engine.write_out()?;
        }
    }
    engine.write_out()?;
    Ok(start.elapsed())
}

/// Group commit through the shard adaptor: one task writes batches of [`BATCH`] (each write
/// followed by `durable()`, as the server does), yielding between batches; the maintenance task
/// writes each batch out and fsyncs every 10 ms through io_uring.
fn group_commit(
    cfg: Config,
    keys: u64,
    n: u64,
    first_version: u64,
) -> Result<(Timed, u64), String> {
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 << 10)
        .ring_depth(64)
        .spawn(move || async move {
            let mut cfg = cfg;
            cfg.durability = Durability::GroupCommit(Duration::from_millis(10));
            let (engine, _) = Engine::open(cfg).map_err(|e| e.to_string())?;
            let store = ShardStore::new(engine);
            let maintenance = store.spawn_maintenance();
            let mut rng = XorShift(0x0DDB_A11C_AFEF_00D5);
            let mut k = Vec::new();
            let (start, cpu) = (Instant::now(), thread_cpu());
            let mut i = 0;
            while i < n {
                for _ in 0..BATCH.min(n - i) {
                    key(rng.next() % keys, &mut k);
                    store
                        .engine()
                        .put(&k, &VALUE, 0, 0, first_version + i)
                        .map_err(|e| e.to_string())?;
                    store.durable().await.map_err(|e| e.to_string())?;
                    i += 1;
                }
                futures_lite::future::yield_now().await;
            }
            store.sync_now().await.map_err(|e| e.to_string())?;
            let elapsed = Timed {
                wall: start.elapsed(),
                cpu: thread_cpu().saturating_sub(cpu),
            };
            let fsyncs = store.fsyncs();
            drop(maintenance);
            store.write_snapshot().await.map_err(|e| e.to_string())?;
            Ok((elapsed, fsyncs))
        })
        .map_err(|e| e.to_string())?
        .join()
        .map_err(|e| e.to_string())?
}

fn gets(engine: &mut Engine, keys: u64, n: u64, seed: u64) -> Result<Duration, StorageErr> {
    let mut rng = XorShift(seed);
    let mut k = Vec::new();
    let mut found = 0u64;
    let start = Instant::now();
    for _ in 0..n {
        key(rng.next() % keys, &mut k);
        found += u64::from(engine.get(&k)?.is_some());
    }
    let elapsed = start.elapsed();
    assert_eq!(found, n, "every key must be found");
    Ok(elapsed)
}

type StorageErr = kumofs::storage::StorageError;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keys: u64 = std::env::var("KUMO_BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let tmp = tempfile::tempdir()?;
    let dir = std::env::var("KUMO_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| tmp.path().to_path_buf());
    let mut cfg = Config::new(&dir);
    cfg.durability = Durability::None;
    println!(
        "storage_bench: {keys} keys of 16 bytes, 32-byte values, dir {}",
        dir.display()
    );

    let anon0 = status_bytes("RssAnon:");
    let (mut engine, _) = Engine::open(cfg.clone())?;
    let mut k = Vec::new();
    let ((), load) = Timed::run(|| -> Result<(), StorageErr> {
        for i in 0..keys {
            key(i, &mut k);
            engine.put(&k, &VALUE, 0, 0, i + 1)?;
            if (i + 1) % BATCH == 0 {
                engine.write_out()?;
            }
        }
        engine.write_out()
    })?;
    let stats = engine.stats();
    let anon1 = status_bytes("RssAnon:");
    println!(
        "appends, fsync off, fresh keys, batches of {BATCH}:   {}",
        load.rate(keys)
    );
    println!(
        "index RAM per key:                      {:>12.1} bytes ({} bytes allocated / {} keys)",
        stats.index_bytes as f64 / keys as f64,
        stats.index_bytes,
        stats.items
    );
    println!(
        "anonymous RSS growth per key (heap):    {:>12.1} bytes",
        anon1.saturating_sub(anon0) as f64 / keys as f64
    );

    // Gets over the whole (page-cached) working set, random order: the first pass also maps the
    // pages into this process (minor faults), the second runs on a warm mapping.
    let n = keys.min(5_000_000);
    let (_, first) = Timed::run(|| gets(&mut engine, keys, n, 0x9E37_79B9_7F4A_7C15))?;
    let (_, warm) = Timed::run(|| gets(&mut engine, keys, n, 0x5851_F42D_4C95_7F2D))?;
    println!(
        "gets, cached working set, first pass:     {}",
        first.rate(n)
    );
    println!("gets, cached working set, warm:           {}", warm.rate(n));
    println!(
        "mapped page-cache pages (RssFile):      {:>12.1} MiB (file data, not heap)",
        status_bytes("RssFile:") as f64 / (1 << 20) as f64
    );

    // Overwrites on the warm mapping: batched, a pwrite per append, batched again (the two
    // batched runs show how much of a difference is noise).
    let n = (keys / 10).max(1);
    let (_, batched) = Timed::run(|| overwrite(&mut engine, keys, n, BATCH, keys + 1))?;
    let (_, single) = Timed::run(|| overwrite(&mut engine, keys, n, 1, keys + n + 1))?;
    let (_, again) = Timed::run(|| overwrite(&mut engine, keys, n, BATCH, keys + 2 * n + 1))?;
    println!(
        "appends, fsync off, overwrites, batches of {BATCH}: {}",
        batched.rate(n)
    );
    println!(
        "  (second batched run)                      {}",
        again.rate(n)
    );
    println!(
        "appends, fsync off, overwrites, pwrite each: {}",
        single.rate(n)
    );
    drop(engine);

    // Group commit through the shard adaptor (it writes a snapshot when done).
    let n = (keys / 5).max(1);
    let (gc, fsyncs) = group_commit(cfg.clone(), keys, n, 4 * keys)?;
    println!(
        "appends, group commit 10 ms (ShardStore, io_uring fsync): {} ({fsyncs} fsync rounds)",
        gc.rate(n)
    );

    let ((engine, report), with_snap) = Timed::run(|| Engine::open(cfg.clone()))?;
    assert!(report.snapshot_loaded && engine.len() as u64 == keys);
    println!(
        "restart with snapshot:                 {} ({} records after it)",
        with_snap.secs(),
        report.records_scanned
    );
    let mut engine = engine;
    let (image, capture) = Timed::run(|| Ok::<_, StorageErr>(engine.capture_snapshot()))?;
    let ((), install) = Timed::run(|| {
        engine.sync()?;
        image.install()
    })?;
    println!("snapshot capture (on the shard):       {}", capture.secs());
    println!(
        "snapshot install (fsync, write, rename): {}",
        install.secs()
    );
    drop(engine);
    std::fs::remove_file(dir.join("index.snap"))?;
    let ((engine, report), without) = Timed::run(|| Engine::open(cfg))?;
    assert!(!report.snapshot_loaded && engine.len() as u64 == keys);
    println!(
        "restart without snapshot (full scan):  {} ({} records)",
        without.secs(),
        report.records_scanned
    );
    Ok(())
}
