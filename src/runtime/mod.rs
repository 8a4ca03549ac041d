//! The runtime: glommio executors, one pinned per CPU, and everything a shard needs from them
//! (cross-shard messages, listeners, timers, shutdown). glommio is named only inside this module so
//! that moving to another io_uring runtime later touches one place.
//!
//! # Shape
//!
//! [`Runtime::start`] runs a user closure `Fn(ShardContext<M>) -> impl Future` on every shard. A
//! [`ShardContext`] gives the shard id and count, [`ShardContext::send_to`] / [`ShardContext::recv`]
//! over a typed mesh of bounded channels (see `shard` for why a drainer task per peer makes this
//! deadlock-free), and the [`ShutdownSignal`]. SIGINT/SIGTERM ([`Shutdown::install_signal_handler`])
//! or [`Shutdown::trigger`] stop every shard: listeners stop accepting, the closures return, and
//! [`Runtime::join`] returns `Ok`.
//!
//! # Binding a connection to the core that owns its keys
//!
//! Every shard binds the same listening address ([`Listener::bind`], SO_REUSEPORT), so the kernel
//! hands a new connection to an arbitrary shard. Gateways and peer servers open one connection per
//! remote shard, and the first frame they send is a hello naming the shard they want (see
//! `rpc::Hello`). The accepting shard reads that hello; if it names another shard, it wraps the socket
//! and any bytes read past the hello in a [`HandedOffStream`] (a dup'ed file descriptor, `Send`),
//! sends it over the mesh to the owner, and forgets it. The owner calls
//! [`HandedOffStream::into_stream`] and serves it as if it had accepted it. After that one hop, every
//! request on the connection lands on the core that owns its keys, with no cross-core traffic.
//!
//! # Many client sockets
//!
//! Sockets that carry one small request at a time from many clients (a gateway's memcached
//! connections) read through [`Readiness`]: one edge-triggered epoll per shard, polled once per
//! executor turn, instead of an io_uring poll per read (see `ready` for what that saves). Writes
//! and every other socket stay with glommio.
//!
//! # Tasks and shutdown
//!
//! When a shard's closure returns, its executor stops polling: detached tasks ([`spawn`]) are not
//! run again and the sockets they hold are not closed. Tasks that own connections must therefore
//! watch the [`ShutdownSignal`] themselves (race their work with `signal.wait()` and return), so
//! that peers see the connection close.
//!
//! # Resource limits
//!
//! Each executor locks memory for its io_uring rings and registered buffers. [`RuntimeConfig`]
//! defaults keep that small enough for 16 shards under an 8 MiB `ulimit -l`; a machine without
//! io_uring or with too little locked memory gets one [`RuntimeError::ExecutorStart`] explaining it.

mod cpus;
mod net;
mod ready;
mod shard;
mod shutdown;
mod time;

pub use cpus::{available_cpus, parse_cpu_list, MAX_CPU};
pub use net::{
    accept_local_until, accept_until, connect, HandedOffStream, Listener, LocalListener, Stream,
    TcpStream,
};
pub use ready::Readiness;
pub use shard::{Runtime, RuntimeConfig, ShardContext};
pub use shutdown::{Shutdown, ShutdownSignal, POLL_INTERVAL};
pub use time::{sleep, timeout, yield_now, Elapsed};

/// Spawns a detached task on the current shard.
pub fn spawn<F>(fut: F)
where
    F: std::future::Future + 'static,
    F::Output: 'static,
{
    glommio::spawn_local(fut).detach();
}

/// Errors of starting or running shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeError {
    /// A `--cpus` list that does not parse or selects nothing.
    BadCpuList(String),
    /// An executor could not be created: no io_uring, or too little locked memory.
    ExecutorStart { shard: usize, detail: String },
    /// The target shard does not exist or has stopped.
    PeerGone(usize),
    /// A shard thread panicked.
    ShardPanicked(usize),
    /// Any other OS error while starting.
    Io(String),
}

impl RuntimeError {
    pub(crate) fn executor_start(
        shard: usize,
        shards: usize,
        detail: String,
        config: &RuntimeConfig,
    ) -> RuntimeError {
        let memlock = memlock_limit()
            .map(|bytes| format!("{} KiB", bytes / 1024))
            .unwrap_or_else(|| "unlimited".into());
        RuntimeError::ExecutorStart {
            shard,
            detail: format!(
                "{detail}. kumofs needs io_uring (Linux 5.8+, not disabled by \
                 kernel.io_uring_disabled or a seccomp profile) and locked memory for {shards} \
                 executors (ring depth {}, {} KiB of I/O buffers each; `ulimit -l` is {memlock}): \
                 raise `ulimit -l`, or start fewer shards with --cpus",
                config.ring_depth,
                config.io_memory / 1024
            ),
        }
    }
}

/// RLIMIT_MEMLOCK soft limit in bytes; `None` when unlimited or unknown.
fn memlock_limit() -> Option<u64> {
    // SAFETY: getrlimit writes one rlimit struct.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    (rc == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

impl std::fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuntimeError::BadCpuList(why) => write!(f, "bad CPU list {why}"),
            RuntimeError::ExecutorStart { shard, detail } => {
                write!(f, "cannot start the executor of shard {shard}: {detail}")
            }
            RuntimeError::PeerGone(shard) => write!(f, "shard {shard} is not running"),
            RuntimeError::ShardPanicked(shard) => write!(f, "shard {shard} panicked"),
            RuntimeError::Io(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for RuntimeError {}
