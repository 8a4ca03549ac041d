//! The glommio adaptor: one [`Engine`] per shard, with every fsync off the shard's thread.
//!
//! What runs where:
//! - Reads and writes call the engine directly through [`ShardStore::engine`], on the shard's
//!   thread, without a syscall: reads come from the segments' memory maps, writes go to an
//!   in-memory tail. The writer task (part of the maintenance task) hands the tail to the kernel
//!   with one `pwrite` per batch: it is woken by the first write of a batch and runs when the
//!   executor next switches to the store's latency-sensitive task queue (within about
//!   [`SYNC_LATENCY`] under load, at once when idle). A `pwrite` into the page cache does not wait
//!   on the disk. Reads see appends that are still in the tail.
//! - fsync (`fdatasync`) is submitted to the executor's io_uring through glommio's `BufferedFile`
//!   on duplicated descriptors: the kernel runs it while the executor serves other connections.
//! - Writing the index snapshot (hundreds of MiB at 10 M keys) and the rare `flush_all` marker
//!   run on glommio's blocking-thread pool: plain `write`/`rename` sequences with no io_uring gain.
//!
//! Durability policies:
//! - `EveryWrite`: [`ShardStore::durable`] completes after a sync round that began after the
//!   write. All writes waiting while one round runs share the next one (group commit for free).
//! - `GroupCommit(interval)`: the maintenance task runs a round every interval; `durable` returns
//!   at once. A crash loses at most the writes of the last interval.
//! - `None`: no fsync for data; rounds still run for directory entries, flush markers and the
//!   deletion of compacted segments (a compacted segment is deleted only after its copies are
//!   durable, whatever the policy).
//!
//! Why the engine itself is synchronous rather than built on glommio's async files: its logic
//! (index, codec, compaction planning) stays testable without io_uring, and the operations the
//! server calls in its hot path never wait on anything, so there is nothing for them to await.

use std::cell::{Cell, RefCell, RefMut};
use std::os::unix::io::{FromRawFd, IntoRawFd};
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use glommio::io::BufferedFile;
use glommio::{Latency, Shares, TaskQueueHandle};

use super::{Durability, Engine, StorageError};

/// Slots examined per compaction tick: about a millisecond of work.
const COMPACT_BUDGET: u64 = 16 * 1024;

/// The latency the store's task queue asks of the executor. glommio preempts busy queues so that
/// a latency-sensitive one runs (and the io_uring completions it waits for are reaped) at least
/// this often; without it a saturated shard would reap an fsync's completion, and fire the
/// group-commit timer, only between 100 ms time slices.
const SYNC_LATENCY: Duration = Duration::from_millis(1);

/// A shard's store. Keep it in an `Rc`; never hold the engine borrow across an `.await`.
pub struct ShardStore {
    /// This store, for the detached sync rounds `durable` starts under group commit.
    me: Weak<ShardStore>,
    /// When the last sync round began.
    last_round: Cell<Instant>,
    /// The latency-sensitive task queue the maintenance task and sync rounds run in (made by
    /// `spawn_maintenance`).
    queue: Cell<Option<TaskQueueHandle>>,
    engine: RefCell<Engine>,
    durability: Durability,
    /// Number of writes that asked for durability so far.
    write_gen: Cell<u64>,
    /// All writes up to this generation are fsynced.
    synced_gen: Cell<u64>,
    syncing: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
    fsyncs: Cell<u64>,
    /// The writer task is due to write the buffered appends out.
    write_out_scheduled: Cell<bool>,
    writer: RefCell<Option<Waker>>,
}

impl ShardStore {
    pub fn new(engine: Engine) -> Rc<ShardStore> {
        let durability = engine.config().durability;
        Rc::new_cyclic(|me| ShardStore {
            me: me.clone(),
            last_round: Cell::new(Instant::now()),
            queue: Cell::new(None),
            engine: RefCell::new(engine),
            durability,
            write_gen: Cell::new(0),
            synced_gen: Cell::new(0),
            syncing: Cell::new(false),
            waiters: RefCell::new(Vec::new()),
            fsyncs: Cell::new(0),
            write_out_scheduled: Cell::new(false),
            writer: RefCell::new(None),
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
        if self.durable_without_waiting() {
            return Ok(());
        }
        let generation = self.write_gen.get() + 1;
        self.write_gen.set(generation);
        self.sync_up_to(generation).await
    }

    /// [`ShardStore::durable`] for a caller that would rather not await: under a policy that
    /// makes nobody wait (group commit, none) it does the same bookkeeping and returns true; under
    /// `every` it does nothing and returns false, and the caller must await `durable`.
    pub fn durable_without_waiting(&self) -> bool {
        match self.durability {
            Durability::EveryWrite => false,
            Durability::GroupCommit(every) => {
                self.write_gen.set(self.write_gen.get() + 1);
                // A busy executor runs its timers only between time slices (up to glommio's
                // preemption period, 100 ms by default), so the writes themselves start the
                // round when the interval has passed; the maintenance tick covers idle times.
                // Only the first write since the last write-out looks at the clock: the writes of
                // one executor turn happen at the same time, and a clock read per write showed
                // in profiles.
                if !self.write_out_scheduled.get()
                    && !self.syncing.get()
                    && self.last_round.get().elapsed() >= every
                {
                    self.spawn_round();
                }
                self.schedule_write_out();
                true
            }
            Durability::None => {
                self.write_gen.set(self.write_gen.get() + 1);
                self.schedule_write_out();
                true
            }
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
            let result = self.sync_round().await;
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

    /// One round (see [`crate::storage::durability`]): begin on the engine, fsync through the
    /// executor's io_uring, write a pending flush marker on the blocking pool, finish.
    async fn sync_round(&self) -> Result<(), StorageError> {
        self.last_round.set(Instant::now());
        let mut round = self.engine.borrow_mut().begin_sync()?;
        let mut result = Ok(());
        for file in round.take_files() {
            // SAFETY: `into_raw_fd` gives up ownership of a descriptor duplicated for this round;
            // the BufferedFile owns it from here and closes it.
            let file = unsafe { BufferedFile::from_raw_fd(file.into_raw_fd()) };
            let synced = file.fdatasync().await;
            let _ = file.close().await;
            if let Err(e) = synced {
                result = Err(StorageError::Io(std::io::Error::other(e.to_string())));
                break;
            }
        }
        if let (Ok(()), Some(marker)) = (&result, round.flush_marker()) {
            result = glommio::executor().spawn_blocking(marker).await;
        }
        let finished = self.engine.borrow_mut().finish_sync(round, result.is_ok());
        result?;
        finished.map(|_| ())
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

    /// Wakes the store's writer task, which hands the buffered appends to the kernel with one
    /// `pwrite` when it next runs (see the module docs).
    fn schedule_write_out(&self) {
        if !self.write_out_scheduled.get() && self.engine.borrow().has_tail() {
            self.write_out_scheduled.set(true);
            if let Some(waker) = self.writer.borrow_mut().take() {
                waker.wake();
            }
        }
    }

    async fn write_out_requested(&self) {
        futures_lite::future::poll_fn(|cx| {
            if self.write_out_scheduled.get() {
                return Poll::Ready(());
            }
            *self.writer.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Spawns the shard's maintenance task on the current executor: the writer (one `pwrite` per
    /// batch of writes), the group-commit fsync, sync rounds for directory changes, flush markers
    /// and compacted segments (under every policy), and bounded compaction ticks. It runs in a
    /// latency-sensitive task queue of its own (see [`SYNC_LATENCY`]), stops by itself once the
    /// store is dropped, and when the returned task is dropped.
    pub fn spawn_maintenance(self: &Rc<Self>) -> glommio::Task<()> {
        let queue = glommio::executor().create_task_queue(
            Shares::default(),
            Latency::Matters(SYNC_LATENCY),
            "kumo-storage",
        );
        self.queue.set(Some(queue));
        match glommio::spawn_local_into(maintenance(Rc::downgrade(self)), queue) {
            Ok(task) => task,
            Err(e) => {
                crate::warn!("storage task queue unusable ({e}); using the default one");
                self.queue.set(None);
                glommio::spawn_local(maintenance(Rc::downgrade(self)))
            }
        }
    }

    /// Starts a sync round in the background, on the store's task queue.
    fn spawn_round(&self) {
        let Some(store) = self.me.upgrade() else {
            return;
        };
        let round = async move {
            let _ = store.sync_now().await;
        };
        let spawned = match self.queue.get() {
            Some(queue) => glommio::spawn_local_into(round, queue).ok(),
            None => Some(glommio::spawn_local(round)),
        };
        // If the queue is gone the maintenance tick runs the round instead.
        if let Some(task) = spawned {
            task.detach();
        }
    }
}

/// The maintenance task's body (see [`ShardStore::spawn_maintenance`]).
async fn maintenance(weak: Weak<ShardStore>) {
    let Some(interval) = weak.upgrade().map(|store| match store.durability {
        Durability::GroupCommit(every) => every.max(Duration::from_millis(1)),
        _ => Duration::from_millis(10),
    }) else {
        return;
    };
    let writer_weak = weak.clone();
    let writer = async move {
        loop {
            let Some(store) = writer_weak.upgrade() else {
                return;
            };
            store.write_out_requested().await;
            // Let every task that is ready now add its writes first.
            futures_lite::future::yield_now().await;
            store.write_out_scheduled.set(false);
            // A failed write-out keeps the tail; the next batch or tick retries it.
            let _ = store.engine.borrow_mut().write_out();
        }
    };
    let ticker = async move {
        loop {
            glommio::timer::sleep(interval).await;
            let Some(store) = weak.upgrade() else {
                return;
            };
            let _ = store.engine.borrow_mut().write_out();
            let (pending, housekeeping) = {
                let engine = store.engine.borrow();
                (engine.has_unsynced(), engine.needs_housekeeping_sync())
            };
            let due = match store.durability {
                Durability::GroupCommit(every) => store.last_round.get().elapsed() >= every,
                _ => false,
            };
            if (pending && due) || housekeeping {
                // A failed background round is retried next tick; its work stays pending.
                let _ = store.sync_now().await;
            }
            let _ = store.engine.borrow_mut().compact_step(COMPACT_BUDGET);
        }
    };
    futures_lite::future::or(writer, ticker).await
}
