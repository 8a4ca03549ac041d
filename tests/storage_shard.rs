//! The glommio adaptor: durable writes under "every write" share fsyncs and survive a reopen;
//! group commit syncs in the background.

use std::rc::Rc;
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};
use kumofs::storage::{Config, Durability, Engine, ShardStore};

#[test]
fn every_write_durability_with_concurrent_writers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let writes = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 << 10)
        .ring_depth(32)
        .spawn(move || async move {
            let mut cfg = Config::new(&path);
            cfg.durability = Durability::EveryWrite;
            let (engine, _) = Engine::open(cfg).unwrap();
            let store = ShardStore::new(engine);
            let mut tasks = Vec::new();
            for t in 0..8u64 {
                let store = Rc::clone(&store);
                tasks.push(glommio::spawn_local(async move {
                    for i in 0..20u64 {
                        let key = format!("t{t}-k{i}");
                        store
                            .engine()
                            .put(key.as_bytes(), b"v", 0, 0, t * 100 + i + 1)
                            .unwrap();
                        store.durable().await.unwrap();
                        // Acknowledged: nothing left unsynced for this write.
                    }
                }));
            }
            for task in tasks {
                task.await;
            }
            let n = store.engine().len();
            assert!(!store.engine().has_unsynced());
            // Concurrent writers waiting together share fsyncs.
            let fsyncs = store.fsyncs();
            assert!(fsyncs > 0 && fsyncs < 160, "{fsyncs} fsyncs for 160 writes");
            n
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(writes, 160);
    let (mut engine, _) = Engine::open(Config::new(dir.path())).unwrap();
    assert_eq!(engine.get(b"t7-k19").unwrap().unwrap().value, b"v");
}

#[test]
fn group_commit_syncs_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let unsynced_after = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 << 10)
        .ring_depth(32)
        .spawn(move || async move {
            let mut cfg = Config::new(&path);
            cfg.durability = Durability::GroupCommit(Duration::from_millis(5));
            let (engine, _) = Engine::open(cfg).unwrap();
            let store = ShardStore::new(engine);
            let maintenance = store.spawn_maintenance();
            store.engine().put(b"k", b"v", 0, 0, 1).unwrap();
            store.durable().await.unwrap(); // returns at once under group commit
            assert!(store.engine().has_unsynced());
            glommio::timer::sleep(Duration::from_millis(200)).await;
            let pending = store.engine().has_unsynced();
            store.engine().put(b"after", b"w", 0, 0, 2).unwrap();
            store.write_snapshot().await.unwrap();
            drop(maintenance);
            pending
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(!unsynced_after, "the maintenance task should have synced");
    let (mut engine, report) = Engine::open(Config::new(dir.path())).unwrap();
    assert!(report.snapshot_loaded);
    assert_eq!(report.records_scanned, 0);
    assert_eq!(engine.get(b"after").unwrap().unwrap().value, b"w");
}

#[test]
fn group_commit_keeps_its_interval_on_a_busy_executor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let (rounds, writes, tail_after_yield) = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 << 10)
        .ring_depth(32)
        .spawn(move || async move {
            let mut cfg = Config::new(&path);
            cfg.durability = Durability::GroupCommit(Duration::from_millis(10));
            let (engine, _) = Engine::open(cfg).unwrap();
            let store = ShardStore::new(engine);
            let maintenance = store.spawn_maintenance();
            // Never idle: the executor's timers alone would fire only between time slices.
            let began = std::time::Instant::now();
            let mut writes = 0u64;
            let mut tail_after_yield = false;
            while began.elapsed() < Duration::from_millis(400) {
                for _ in 0..16 {
                    let key = format!("k{writes}");
                    store
                        .engine()
                        .put(key.as_bytes(), b"v", 0, 0, writes + 1)
                        .unwrap();
                    store.durable().await.unwrap();
                    writes += 1;
                }
                futures_lite::future::yield_now().await;
            }
            let rounds = store.fsyncs();
            // The writer (in the store's latency-sensitive queue) writes the tail out within
            // about a millisecond of the last batch, without any timer.
            for _ in 0..3 {
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            tail_after_yield |= store.engine().has_tail();
            drop(maintenance);
            (rounds, writes, tail_after_yield)
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(!tail_after_yield, "appends were left in memory");
    // About 40 intervals passed; allow for a slow, shared machine.
    assert!(
        rounds >= 10,
        "{rounds} fsync rounds in 400 ms for {writes} writes"
    );
}
