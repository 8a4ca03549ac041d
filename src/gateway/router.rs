//! One gateway shard's view of the cluster: the routing snapshot polled from the manager(s) and the
//! [`Pipe`]s to every (server, server shard) this shard has talked to.
//!
//! A pipe is created on first use with a hello naming the server shard, so the server binds the
//! connection to the core that owns the keys sent on it. All client connections of the gateway shard
//! share these pipes, which coalesce the calls of one executor turn into one write.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::rpc::messages::{ManagerRequest, ManagerResponse, RoutingSnapshot};
use crate::rpc::{ClientConfig, Hello, Pipe, PipeConfig, RpcClient, RpcError};
use crate::runtime::{self, ShutdownSignal};

/// How often every shard asks the manager(s) for a newer routing snapshot.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Refreshes asked for by failing requests closer together than this are merged into one.
const MIN_REFRESH_GAP: Duration = Duration::from_millis(50);

/// A router that follows another's snapshot waits this long at most for a newer one, looking
/// every [`FOLLOW_STEP`]. Three keepalive intervals (500 ms each, plus the call): the keepalive
/// answered just before an attach still carries the old table, so the new one can come two
/// keepalives after the request, later still on a loaded machine.
const FOLLOW_WAIT: Duration = Duration::from_millis(1500);
const FOLLOW_STEP: Duration = Duration::from_millis(10);

type ManagerClient = RpcClient<ManagerRequest, ManagerResponse>;

/// Where a router takes its snapshot from when it does not poll the managers (a gateway inside a
/// kumo-server uses the server's).
pub type SnapshotSource = Rc<dyn Fn() -> Rc<RoutingSnapshot>>;

/// The routing state and server connections of one gateway shard.
pub struct Router {
    snapshot: RefCell<Rc<RoutingSnapshot>>,
    source: Option<SnapshotSource>,
    managers: Vec<ManagerClient>,
    pipes: RefCell<HashMap<(SocketAddr, u32), Pipe>>,
    /// When the last completed round of questions to the managers was asked.
    last_refresh: Cell<Option<Instant>>,
    refreshing: Cell<bool>,
    peer_name: String,
}

impl Router {
    pub fn new(managers: Vec<SocketAddr>, shard: usize) -> Router {
        let manager_config = ClientConfig {
            call_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            backoff_max: Duration::from_millis(500),
            ..Default::default()
        };
        Router {
            snapshot: RefCell::new(Rc::new(RoutingSnapshot::empty())),
            source: None,
            managers: managers
                .into_iter()
                .map(|addr| RpcClient::new(addr, manager_config.clone()))
                .collect(),
            pipes: RefCell::new(HashMap::new()),
            last_refresh: Cell::new(None),
            refreshing: Cell::new(false),
            peer_name: format!("gateway pid {} shard {shard}", std::process::id()),
        }
    }

    /// A router that takes every snapshot from `source` and polls no manager.
    pub fn following(source: SnapshotSource, shard: usize) -> Router {
        let mut router = Router::new(Vec::new(), shard);
        router.source = Some(source);
        router
    }

    /// The current snapshot (cheap: an `Rc`).
    pub fn snapshot(&self) -> Rc<RoutingSnapshot> {
        match &self.source {
            Some(source) => source(),
            None => self.snapshot.borrow().clone(),
        }
    }

    /// Adopts `snapshot` if it is newer than the one held; returns whether it did.
    pub fn adopt(&self, snapshot: RoutingSnapshot) -> bool {
        if !snapshot.supersedes(&self.snapshot.borrow()) {
            return false;
        }
        crate::info!(
            "gateway: routing epoch {} (write v{} with {} servers, read v{})",
            snapshot.epoch,
            snapshot.write.version(),
            snapshot.write.nodes().len(),
            snapshot.read.version()
        );
        *self.snapshot.borrow_mut() = Rc::new(snapshot);
        true
    }

    /// The pipe to shard `shard` of `server`, created on first use.
    pub fn pipe(&self, server: SocketAddr, shard: u32) -> Pipe {
        if let Some(pipe) = self.pipes.borrow().get(&(server, shard)) {
            return pipe.clone();
        }
        let config = PipeConfig {
            connect_timeout: Duration::from_secs(1),
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(500),
            hello: Some(Hello {
                target_shard: Some(shard),
                peer: self.peer_name.clone(),
            }),
            ..PipeConfig::default()
        };
        let pipe = Pipe::new(server, config);
        self.pipes
            .borrow_mut()
            .insert((server, shard), pipe.clone());
        pipe
    }

    /// Asks the managers for a newer snapshot now (merged with other refreshes asked for within a
    /// few milliseconds). Returns once the answer, or the failure, is in.
    pub async fn refresh(&self) {
        if let Some(source) = &self.source {
            Self::follow(source).await;
            return;
        }
        let recent = self
            .last_refresh
            .get()
            .is_some_and(|at| at.elapsed() < MIN_REFRESH_GAP);
        if recent {
            return;
        }
        if self.refreshing.get() {
            // Another task is refreshing: give it the time of one manager round trip.
            runtime::sleep(MIN_REFRESH_GAP).await;
            return;
        }
        self.fetch().await;
    }

    /// Like [`Router::refresh`], but returns only once the managers answered a question asked
    /// after this call began (or they failed to), so that a change the manager made just before
    /// (a `kumoctl attach`) is seen. Used when the snapshot has no server at all: refreshes stay
    /// at most one per [`MIN_REFRESH_GAP`], a caller waits for the next one instead.
    pub async fn refresh_fresh(&self) {
        if let Some(source) = &self.source {
            Self::follow(source).await;
            return;
        }
        let since = Instant::now();
        // Bounded: a refresh takes at most the managers' call timeouts.
        for _ in 0..1000 {
            if self.last_refresh.get().is_some_and(|at| at >= since) {
                return;
            }
            if self.refreshing.get() {
                runtime::sleep(FOLLOW_STEP).await;
                continue;
            }
            if let Some(wait) = self
                .last_refresh
                .get()
                .and_then(|at| MIN_REFRESH_GAP.checked_sub(at.elapsed()))
            {
                runtime::sleep(wait).await;
                continue;
            }
            self.fetch().await;
            return;
        }
    }

    /// The source is kept current by its owner (a server's keepalives, every 500 ms): waits for a
    /// newer snapshot, up to [`FOLLOW_WAIT`].
    async fn follow(source: &SnapshotSource) {
        let known = source().epoch;
        for _ in 0..(FOLLOW_WAIT.as_millis() / FOLLOW_STEP.as_millis()) {
            runtime::sleep(FOLLOW_STEP).await;
            if source().epoch != known {
                break;
            }
        }
    }

    /// One round of questions to the managers; `last_refresh` records when it was asked.
    async fn fetch(&self) {
        self.refreshing.set(true);
        let _reset = ResetOnDrop(&self.refreshing);
        let asked = Instant::now();
        for manager in &self.managers {
            let known_version = self.snapshot.borrow().epoch;
            match manager
                .call(&ManagerRequest::GetRouting { known_version })
                .await
            {
                Ok(ManagerResponse::Routing(snapshot)) => {
                    self.adopt(snapshot);
                }
                Ok(ManagerResponse::UpToDate) => {}
                Ok(other) => {
                    crate::warn!("gateway: manager {} answered {other:?}", manager.addr());
                }
                Err(RpcError::Transport(_)) | Err(RpcError::Timeout) => {}
                Err(e) => {
                    crate::warn!("gateway: manager {}: {e}", manager.addr());
                }
            }
        }
        self.last_refresh.set(Some(asked));
    }

    /// Polls the managers every [`POLL_INTERVAL`] until `stop` fires.
    pub async fn poll_managers(&self, stop: &ShutdownSignal) {
        while !stop.is_fired() {
            self.refresh().await;
            futures_lite::future::or(runtime::sleep(POLL_INTERVAL), stop.wait()).await;
        }
    }
}

struct ResetOnDrop<'a>(&'a Cell<bool>);

impl Drop for ResetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}
