//! The glommio adaptor: one [`Engine`] per shard, with fsync moved off the shard's thread.
//!
//! Reads and writes call the engine directly through [`ShardStore::engine`] (they only touch the
//! page cache, so they never block on the disk). Durability is applied afterwards:
//! - `EveryWrite`: [`ShardStore::durable`] completes after an fsync that started after the write.
//!   All writes waiting while one fsync runs share the next one, which is group commit for free.
//! - `GroupCommit(interval)`: the maintenance task fsyncs every interval; `durable` returns at once.
//! - `None`: nothing is fsynced explicitly.
//!
//! fsync runs on glommio's blocking-task pool with duplicated file handles, so the executor keeps
//! serving other connections meanwhile. The maintenance task also runs bounded compaction steps.

use std::cell::{Cell, RefCell, RefMut};
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::Duration;

use super::{Durability, Engine, StorageError};

/// Slots examined per compaction tick: about a millisecond of work.
const COMPACT_BUDGET: u64 = 16 * 1024;

/// A shard's store. Keep it in an `Rc`; never hold the engine borrow across an `.await`.
pub struct ShardStore {
    engine: RefCell<Engine>,
    durability: Durability,
    /// Number of writes that asked for durability so far.
    write_gen: Cell<u64>,
    /// All writes up to this generation are fsynced.
    synced_gen: Cell<u64>,
    syncing: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
    fsyncs: Cell<u64>,
}

impl ShardStore {
    pub fn new(engine: Engine) -> Rc<ShardStore> {
        let durability = engine.config().durability;
        Rc::new(ShardStore {
            engine: RefCell::new(engine),
            durability,
            write_gen: Cell::new(0),
            synced_gen: Cell::new(0),
            syncing: Cell::new(false),
            waiters: RefCell::new(Vec::new()),
            fsyncs: Cell::new(0),
        })
    }

    /// The engine, for the synchronous operations.
    pub fn engine(&self) -> RefMut<'_, Engine> {
        self.engine.borrow_mut()
    }

    /// fsync rounds run so far (each may cover many writes).
    pub fn fsyncs(&self) -> u64 {
        self.fsyncs.get()
    }

    /// Call after a write, before acknowledging it: waits for what the durability policy promises.
    pub async fn durable(&self) -> Result<(), StorageError> {
        let generation = self.write_gen.get() + 1;
        self.write_gen.set(generation);
        match self.durability {
            Durability::EveryWrite => self.sync_up_to(generation).await,
            Durability::GroupCommit(_) | Durability::None => Ok(()),
        }
    }

    /// fsyncs everything written so far, off the executor thread.
    pub async fn sync_now(&self) -> Result<(), StorageError> {
        self.write_gen.set(self.write_gen.get() + 1);
        self.sync_up_to(self.write_gen.get()).await
    }

    /// Writes the index snapshot without blocking the shard on I/O: the index is encoded here
    /// (CPU, about 0.3 s at 10 M keys), then the segments are fsynced and the file written on the
    /// blocking pool. Call it periodically and at shutdown to keep restarts short.
    pub async fn write_snapshot(&self) -> Result<(), StorageError> {
        let image = self.engine.borrow().capture_snapshot();
        self.sync_now().await?;
        glommio::executor()
            .spawn_blocking(move || image.install())
            .await
    }

    async fn sync_up_to(&self, generation: u64) -> Result<(), StorageError> {
        loop {
            if self.synced_gen.get() >= generation {
                return Ok(());
            }
            if self.syncing.get() {
                self.wait_for_sync().await;
                continue;
            }
            self.syncing.set(true);
            let covered = self.write_gen.get();
            let files = self.engine.borrow_mut().take_unsynced();
            let result = match files {
                Ok(files) => {
                    let ids: Vec<u32> = files.iter().map(|(id, _)| *id).collect();
                    let synced = glommio::executor()
                        .spawn_blocking(move || files.iter().try_for_each(|(_, f)| f.sync_data()))
                        .await;
                    if synced.is_err() {
                        // Not durable: keep them pending so the next fsync retries them.
                        let mut engine = self.engine.borrow_mut();
                        ids.into_iter().for_each(|id| engine.mark_unsynced(id));
                    }
                    synced
                }
                Err(StorageError::Io(e)) => Err(e),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            self.syncing.set(false);
            self.fsyncs.set(self.fsyncs.get() + 1);
            if result.is_ok() {
                self.synced_gen.set(self.synced_gen.get().max(covered));
            }
            for waker in self.waiters.borrow_mut().drain(..) {
                waker.wake();
            }
            result?;
        }
    }

    async fn wait_for_sync(&self) {
        let mut registered = false;
        futures_lite::future::poll_fn(|cx| {
            if registered {
                return Poll::Ready(());
            }
            registered = true;
            self.waiters.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Spawns the shard's maintenance loop (group-commit fsync and compaction ticks) on the current
    /// executor. It stops by itself once the store is dropped.
    pub fn spawn_maintenance(self: &Rc<Self>) -> glommio::Task<()> {
        let weak: Weak<ShardStore> = Rc::downgrade(self);
        let interval = match self.durability {
            Durability::GroupCommit(every) => every.max(Duration::from_millis(1)),
            _ => Duration::from_millis(10),
        };
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(interval).await;
                let Some(store) = weak.upgrade() else {
                    return;
                };
                let pending = store.engine.borrow().has_unsynced();
                if pending && matches!(store.durability, Durability::GroupCommit(_)) {
                    // A failed background fsync is retried next tick; writes stay unsynced.
                    let _ = store.sync_now().await;
                }
                let _ = store.engine.borrow_mut().compact_step(COMPACT_BUDGET);
            }
        })
    }
}
