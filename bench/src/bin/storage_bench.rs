//! Storage engine micro-benchmark: one engine on one thread (one core's share).
//!
//! Prints appends/s (fsync off, and group commit every 10 ms), gets/s over a working set in the
//! page cache, index RAM per key, and restart time with and without the index snapshot.
//! Run: `cargo run --release -p kumofs-bench --bin storage_bench` (KUMO_BENCH_KEYS overrides the
//! default of 10 million keys; KUMO_BENCH_DIR the directory, default a temporary one).

use std::time::{Duration, Instant};

use kumofs::storage::{Config, Durability, Engine};

const VALUE: [u8; 32] = [b'v'; 32];

fn key(i: u64, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(format!("key:{i:012}").as_bytes());
}

/// Resident set size of this process in bytes (from /proc/self/statm).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
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

    let rss0 = rss_bytes();
    let (mut engine, _) = Engine::open(cfg.clone())?;
    let mut k = Vec::new();
    let start = Instant::now();
    for i in 0..keys {
        key(i, &mut k);
        engine.put(&k, &VALUE, 0, 0, i + 1)?;
    }
    let load = start.elapsed();
    let stats = engine.stats();
    let rss1 = rss_bytes();
    println!(
        "appends/s, fsync off (fresh keys):      {:>12.0}",
        per_sec(keys, load)
    );
    println!(
        "index RAM per key:                      {:>12.1} bytes ({} bytes allocated / {} keys)",
        stats.index_bytes as f64 / keys as f64,
        stats.index_bytes,
        stats.items
    );
    println!(
        "RSS growth per key (all heap):          {:>12.1} bytes",
        rss1.saturating_sub(rss0) as f64 / keys as f64
    );

    // Group commit: overwrite random keys, fsync whenever 10 ms have passed.
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let n = (keys / 5).max(1);
    let mut last_sync = Instant::now();
    let mut syncs = 0u64;
    let start = Instant::now();
    for i in 0..n {
        key(rng.next() % keys, &mut k);
        engine.put(&k, &VALUE, 0, 0, keys + i + 1)?;
        if i % 256 == 0 && last_sync.elapsed() >= Duration::from_millis(10) {
            engine.sync()?;
            syncs += 1;
            last_sync = Instant::now();
        }
    }
    engine.sync()?;
    let gc = start.elapsed();
    println!(
        "appends/s, group commit 10 ms (overwrites): {:>8.0} ({syncs} fsyncs)",
        per_sec(n, gc)
    );

    // Gets over the whole (page-cached) working set, random order.
    let n = keys.min(5_000_000);
    let start = Instant::now();
    let mut found = 0u64;
    for _ in 0..n {
        key(rng.next() % keys, &mut k);
        found += u64::from(engine.get(&k)?.is_some());
    }
    let gets = start.elapsed();
    assert_eq!(found, n, "every key must be found");
    println!(
        "gets/s, cached working set (random):    {:>12.0}",
        per_sec(n, gets)
    );

    // Restart with the snapshot, then without it.
    let start = Instant::now();
    engine.write_snapshot()?;
    println!(
        "snapshot write:                         {:>12.3} s",
        start.elapsed().as_secs_f64()
    );
    drop(engine);
    let start = Instant::now();
    let (engine, report) = Engine::open(cfg.clone())?;
    let with_snap = start.elapsed();
    assert!(report.snapshot_loaded && engine.len() as u64 == keys);
    println!(
        "restart with snapshot:                  {:>12.3} s",
        with_snap.as_secs_f64()
    );
    drop(engine);
    std::fs::remove_file(dir.join("index.snap"))?;
    let start = Instant::now();
    let (engine, report) = Engine::open(cfg)?;
    let without = start.elapsed();
    assert!(!report.snapshot_loaded && engine.len() as u64 == keys);
    println!(
        "restart without snapshot (full scan):   {:>12.3} s ({} records)",
        without.as_secs_f64(),
        report.records_scanned
    );
    Ok(())
}
