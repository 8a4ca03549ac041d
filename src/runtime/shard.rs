//! Starting the executors ([`Runtime`]) and what each shard's code sees ([`ShardContext`]).
//!
//! # Start-up
//!
//! One OS thread per selected CPU creates its glommio executor (pinned with `Placement::Fixed`) and
//! reports success or the error to the starting thread, then waits for "go". Only when *every*
//! executor exists does anything run; otherwise all threads are told to stop and [`Runtime::start`]
//! returns one [`RuntimeError::ExecutorStart`] explaining io_uring / locked-memory requirements. This
//! two-phase start matters because the channel mesh `join()` waits for every shard: a shard that
//! failed to start would otherwise hang the others forever.
//!
//! # Cross-shard messages (the deadlock-free pattern)
//!
//! glommio's mesh channels are bounded and single-producer/single-consumer. If shard A blocks sending a
//! request to B while B blocks sending a response to A, and neither is reading, both hang. So each
//! shard runs one *drainer task per peer* that does nothing but move messages from the bounded mesh
//! channel into the shard's local unbounded inbox ([`ShardContext::recv`]). A bounded channel is thus
//! always being emptied no matter what the shard's own tasks are waiting on, and a sender only waits
//! for the peer's drainer, never for the peer's application logic. The price is that the inbox is
//! unbounded: protocols on top must bound their own outstanding requests (the RPC layer does, with
//! per-call timeouts and one in-flight window per connection).

use std::future::Future;
use std::rc::Rc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use glommio::channels::channel_mesh::{MeshBuilder, Receivers, Senders};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::{LocalExecutorBuilder, Placement};

use super::shutdown::{Shutdown, ShutdownSignal};
use super::{cpus, RuntimeError};

/// How to start the shards.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Thread name prefix (`NAME-SHARD`).
    pub name: String,
    /// CPUs to run one shard on each; `None` = every CPU in the process affinity mask.
    pub cpus: Option<Vec<usize>>,
    /// Pin each shard to its CPU. Tests that want more shards than CPUs turn this off.
    pub pin: bool,
    /// Shard count when `pin` is false (ignored when pinned: one shard per CPU).
    pub unpinned_shards: usize,
    /// io_uring submission queue depth of each of the executor's rings.
    pub ring_depth: usize,
    /// Bytes of registered (locked) I/O buffer memory per executor.
    pub io_memory: usize,
    /// Capacity of each bounded cross-shard channel.
    pub mesh_capacity: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        // ring_depth 64 and 128 KiB of buffers keep one executor well under the 512 KiB of locked
        // memory budgeted per shard, so 16 shards fit in an 8 MiB memlock limit.
        RuntimeConfig {
            name: "kumo".into(),
            cpus: None,
            pin: true,
            unpinned_shards: 2,
            ring_depth: 64,
            io_memory: 128 << 10,
            mesh_capacity: 1024,
        }
    }
}

/// Running shards. Dropping it does not stop them; call [`Runtime::join`] after triggering shutdown.
pub struct Runtime {
    threads: Vec<JoinHandle<Result<(), RuntimeError>>>,
    shutdown: Shutdown,
}

impl Runtime {
    /// Starts one executor per shard and runs `shard_main(ctx)` on each.
    ///
    /// Returns once every executor exists (or the first start error). The shards stop when their
    /// futures return; they should return when [`ShardContext::shutdown_signal`] fires.
    pub fn start<M, F, Fut>(
        config: RuntimeConfig,
        shutdown: Shutdown,
        shard_main: F,
    ) -> Result<Runtime, RuntimeError>
    where
        M: Send + 'static,
        F: Fn(ShardContext<M>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let placements: Vec<Placement> = if config.pin {
            let cpus = match &config.cpus {
                Some(cpus) => cpus.clone(),
                None => cpus::available_cpus()?,
            };
            cpus.into_iter().map(Placement::Fixed).collect()
        } else {
            (0..config.unpinned_shards.max(1))
                .map(|_| Placement::Unbound)
                .collect()
        };
        if placements.is_empty() {
            return Err(RuntimeError::BadCpuList("no CPU selected".into()));
        }
        let count = placements.len();
        let shard_main = std::sync::Arc::new(shard_main);
        let mesh: MeshBuilder<M, _> = MeshBuilder::full(count, config.mesh_capacity.max(1));
        let (ready_tx, ready_rx) = mpsc::channel::<(usize, Result<(), String>)>();
        let mut go_senders = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for (id, placement) in placements.into_iter().enumerate() {
            let (go_tx, go_rx) = mpsc::channel::<bool>();
            go_senders.push(go_tx);
            let ready_tx = ready_tx.clone();
            let config = config.clone();
            let mesh = mesh.clone();
            let shutdown = shutdown.clone();
            let shard_main = shard_main.clone();
            let thread = std::thread::Builder::new()
                .name(format!("{}-{id}", config.name))
                .spawn(move || {
                    let made = LocalExecutorBuilder::new(placement.clone())
                        .name(&format!("{}-{id}", config.name))
                        .ring_depth(config.ring_depth)
                        .io_memory(config.io_memory)
                        .make();
                    let executor = match made {
                        Ok(executor) => {
                            let _ = ready_tx.send((id, Ok(())));
                            executor
                        }
                        Err(e) => {
                            let _ = ready_tx.send((id, Err(format!("{placement:?}: {e}"))));
                            return Ok(());
                        }
                    };
                    if go_rx.recv() != Ok(true) {
                        return Ok(());
                    }
                    executor.run(async move {
                        let ctx = ShardContext::connect(count, mesh, shutdown).await?;
                        shard_main(ctx).await;
                        Ok(())
                    })
                })
                .map_err(|e| RuntimeError::Io(format!("spawning shard thread {id}: {e}")))?;
            threads.push(thread);
        }
        drop(ready_tx);
        let mut failure = None;
        for _ in 0..count {
            match ready_rx.recv() {
                Ok((_, Ok(()))) => {}
                Ok((id, Err(detail))) => {
                    failure.get_or_insert((id, detail));
                }
                Err(_) => {
                    failure
                        .get_or_insert((usize::MAX, "a shard thread died while starting".into()));
                }
            }
        }
        let go = failure.is_none();
        for go_tx in &go_senders {
            let _ = go_tx.send(go);
        }
        if let Some((shard, detail)) = failure {
            for thread in threads {
                let _ = thread.join();
            }
            return Err(RuntimeError::executor_start(shard, count, detail, &config));
        }
        Ok(Runtime { threads, shutdown })
    }

    /// [`Runtime::start`] then [`Runtime::join`]: the shape of a daemon's `main`.
    pub fn run<M, F, Fut>(
        config: RuntimeConfig,
        shutdown: Shutdown,
        shard_main: F,
    ) -> Result<(), RuntimeError>
    where
        M: Send + 'static,
        F: Fn(ShardContext<M>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        Self::start(config, shutdown, shard_main)?.join()
    }

    /// The flag that stops this runtime's shards.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    pub fn shard_count(&self) -> usize {
        self.threads.len()
    }

    /// Waits for every shard to return. A panicked shard triggers shutdown of the others and is
    /// reported as [`RuntimeError::ShardPanicked`].
    pub fn join(self) -> Result<(), RuntimeError> {
        let mut result = Ok(());
        for (id, thread) in self.threads.into_iter().enumerate() {
            let outcome = match thread.join() {
                Ok(outcome) => outcome,
                Err(_) => Err(RuntimeError::ShardPanicked(id)),
            };
            if let Err(e) = outcome {
                self.shutdown.trigger();
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        result
    }
}

/// What a shard's code gets: its identity, the mesh to other shards, and the shutdown signal.
pub struct ShardContext<M: Send + 'static> {
    id: usize,
    count: usize,
    senders: Option<Rc<Senders<M>>>,
    inbox_tx: Rc<LocalSender<(usize, M)>>,
    inbox: LocalReceiver<(usize, M)>,
    shutdown: Shutdown,
    signal: ShutdownSignal,
}

impl<M: Send + 'static> ShardContext<M> {
    /// Joins the mesh. The shard id is the mesh's peer id (the order in which shards joined), not
    /// the start-up thread index: glommio indexes its channels by peer id.
    async fn connect(
        count: usize,
        mesh: MeshBuilder<M, glommio::channels::channel_mesh::Full>,
        shutdown: Shutdown,
    ) -> Result<Self, RuntimeError> {
        let (inbox_tx, inbox) = local_channel::new_unbounded();
        let inbox_tx = Rc::new(inbox_tx);
        let (id, senders) = if count > 1 {
            let (senders, receivers) = mesh
                .join()
                .await
                .map_err(|e| RuntimeError::Io(format!("joining the channel mesh: {e}")))?;
            let id = senders.peer_id();
            let receivers = Rc::new(receivers);
            for peer in (0..count).filter(|&peer| peer != id) {
                glommio::spawn_local(drain_peer(receivers.clone(), peer, inbox_tx.clone()))
                    .detach();
            }
            (id, Some(Rc::new(senders)))
        } else {
            (0, None)
        };
        let signal = ShutdownSignal::spawn_watcher(shutdown.clone());
        Ok(ShardContext {
            id,
            count,
            senders,
            inbox_tx,
            inbox,
            shutdown,
            signal,
        })
    }

    /// This shard's index, `0..shard_count()`.
    pub fn id(&self) -> usize {
        self.id
    }

    pub fn shard_count(&self) -> usize {
        self.count
    }

    /// Sends `msg` to shard `to` (which may be this shard). Waits only while the bounded channel to
    /// that shard is full, which lasts until the peer's drainer task runs.
    pub async fn send_to(&self, to: usize, msg: M) -> Result<(), RuntimeError> {
        if to == self.id {
            return self
                .inbox_tx
                .try_send((self.id, msg))
                .map_err(|_| RuntimeError::PeerGone(to));
        }
        match &self.senders {
            Some(senders) if to < self.count => senders
                .send_to(to, msg)
                .await
                .map_err(|_| RuntimeError::PeerGone(to)),
            _ => Err(RuntimeError::PeerGone(to)),
        }
    }

    /// Next message from any shard, as `(from_shard, message)`.
    pub async fn recv(&self) -> Option<(usize, M)> {
        self.inbox.recv().await
    }

    /// Resolves once shutdown was requested (signal, [`ShardContext::shutdown_all`] or the handle).
    pub fn shutdown_signal(&self) -> ShutdownSignal {
        self.signal.clone()
    }

    /// Asks every shard of this runtime to stop.
    pub fn shutdown_all(&self) {
        self.shutdown.trigger();
    }
}

/// Moves messages from the bounded mesh channel of one peer into the local inbox, forever.
async fn drain_peer<M: Send + 'static>(
    receivers: Rc<Receivers<M>>,
    peer: usize,
    inbox: Rc<LocalSender<(usize, M)>>,
) {
    while let Ok(Some(msg)) = receivers.recv_from(peer).await {
        if inbox.try_send((peer, msg)).is_err() {
            break;
        }
    }
}
