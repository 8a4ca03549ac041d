//! The RPC client: one TCP connection per (shard, peer address), shared by every task of the shard.
//!
//! `call` queues the request frame on the connection's [`Outbox`] (so concurrent calls coalesce into
//! one write) and waits on a reply slot keyed by request id; a reader task decodes responses and fills
//! the slots. When the connection breaks, every pending call fails with [`RpcError::Transport`] and the
//! next call reconnects, after an exponential backoff if connecting itself failed. An optional
//! [`Hello`] is the first frame of every connection (it names the server shard to bind to).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::AsyncReadExt;
use glommio::sync::Semaphore;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::frame::{FrameDecoder, FrameKind, Hello};
use super::outbox::Outbox;
use super::sync::{reply_slot, SlotSender};
use super::RpcError;
use crate::runtime::{self, Stream};

/// Read size of the response reader.
const READ_CHUNK: usize = 64 << 10;

/// Client tuning.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Limit for one call, from queueing to response.
    pub call_timeout: Duration,
    pub connect_timeout: Duration,
    /// First wait after a failed connect; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Sent first on every (re)connect.
    pub hello: Option<Hello>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            call_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            hello: None,
        }
    }
}

type Reply<Resp> = Result<Resp, RpcError>;

/// One live connection: its queued output, calls awaiting replies, and its liveness.
struct Connection<Resp> {
    outbox: Outbox,
    pending: RefCell<HashMap<u64, SlotSender<Reply<Resp>>>>,
    broken: Cell<bool>,
    /// Socket fd while the reader task (which keeps the socket open) is alive; used to shut the
    /// socket down so a reader blocked in `read` wakes up when the connection is abandoned.
    reader_fd: Cell<Option<i32>>,
}

impl<Resp> Connection<Resp> {
    /// Marks the connection dead and fails every pending call with `reason`.
    fn fail(&self, reason: &str) {
        if self.broken.replace(true) {
            return;
        }
        self.outbox.abort();
        if let Some(fd) = self.reader_fd.get() {
            // SAFETY: the fd is open while reader_fd is Some (the reader task owns the socket).
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        for (_, slot) in pending {
            slot.send(Err(RpcError::Transport(reason.to_string())));
        }
    }
}

/// Drops a call's reply slot from the pending table when the call ends; a late response is then
/// ignored by the reader.
struct ForgetOnDrop<'a, Resp> {
    conn: &'a Connection<Resp>,
    id: u64,
}

impl<Resp> Drop for ForgetOnDrop<'_, Resp> {
    fn drop(&mut self) {
        self.conn.pending.borrow_mut().remove(&self.id);
    }
}

struct ClientInner<Resp> {
    addr: SocketAddr,
    config: ClientConfig,
    next_id: Cell<u64>,
    conn: RefCell<Option<Rc<Connection<Resp>>>>,
    /// Serialises (re)connecting so concurrent callers share one new connection.
    connecting: Semaphore,
    backoff: Cell<Duration>,
    retry_at: Cell<Option<Instant>>,
}

impl<Resp> Drop for ClientInner<Resp> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.borrow_mut().take() {
            conn.fail("client dropped");
        }
    }
}

/// A shard-local RPC client for one peer pair (`Req` out, `Resp` back). Clone it freely inside the
/// shard: clones share the connection.
pub struct RpcClient<Req, Resp> {
    inner: Rc<ClientInner<Resp>>,
    _request: PhantomData<fn(Req)>,
}

impl<Req, Resp> Clone for RpcClient<Req, Resp> {
    fn clone(&self) -> Self {
        RpcClient {
            inner: self.inner.clone(),
            _request: PhantomData,
        }
    }
}

impl<Req: Serialize, Resp: DeserializeOwned + 'static> RpcClient<Req, Resp> {
    /// A client for `addr`; it connects lazily on the first call.
    pub fn new(addr: SocketAddr, config: ClientConfig) -> Self {
        let backoff = config.backoff_min;
        RpcClient {
            inner: Rc::new(ClientInner {
                addr,
                config,
                next_id: Cell::new(1),
                conn: RefCell::new(None),
                connecting: Semaphore::new(1),
                backoff: Cell::new(backoff),
                retry_at: Cell::new(None),
            }),
            _request: PhantomData,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Whether a connection is currently up (no call in flight is needed to tell).
    pub fn is_connected(&self) -> bool {
        self.inner
            .conn
            .borrow()
            .as_ref()
            .is_some_and(|c| !c.broken.get())
    }

    /// Sends `request` and waits for its response, at most `config.call_timeout`.
    pub async fn call(&self, request: &Req) -> Result<Resp, RpcError> {
        self.call_with_timeout(request, self.inner.config.call_timeout)
            .await
    }

    pub async fn call_with_timeout(
        &self,
        request: &Req,
        limit: Duration,
    ) -> Result<Resp, RpcError> {
        self.call_pushing(limit, |outbox, id| {
            outbox.push(FrameKind::Request, id, request)
        })
        .await
    }

    /// [`RpcClient::call_with_timeout`] for a request already encoded (a `Req` as rmp-serde would
    /// write it, e.g. by [`super::replica_codec::ReplicateBuilder`]).
    pub async fn call_encoded_with_timeout(
        &self,
        payload: &[u8],
        limit: Duration,
    ) -> Result<Resp, RpcError> {
        self.call_pushing(limit, |outbox, id| {
            outbox.push_with(FrameKind::Request, id, |out| out.extend_from_slice(payload))
        })
        .await
    }

    /// A call whose request frame `push` queues with the given id.
    async fn call_pushing(
        &self,
        limit: Duration,
        push: impl FnOnce(&Outbox, u64) -> Result<(), RpcError>,
    ) -> Result<Resp, RpcError> {
        let deadline = Instant::now() + limit;
        let conn = match runtime::timeout(limit, self.connection()).await {
            Ok(conn) => conn?,
            Err(_) => return Err(RpcError::Timeout),
        };
        let id = self.inner.next_id.get();
        self.inner.next_id.set(id.wrapping_add(1));
        let (slot, reply) = reply_slot();
        push(&conn.outbox, id)?;
        conn.pending.borrow_mut().insert(id, slot);
        // Removes the pending entry however this call ends (timeout, or the caller dropping us).
        let _forget = ForgetOnDrop { conn: &conn, id };
        let left = deadline.saturating_duration_since(Instant::now());
        match runtime::timeout(left, reply).await {
            Ok(Some(result)) => result,
            Ok(None) => Err(RpcError::Transport("connection lost".into())),
            Err(_) => Err(RpcError::Timeout),
        }
    }

    /// The live connection, connecting first if there is none.
    async fn connection(&self) -> Result<Rc<Connection<Resp>>, RpcError> {
        if let Some(conn) = self.live() {
            return Ok(conn);
        }
        let _permit = self
            .inner
            .connecting
            .acquire_permit(1)
            .await
            .map_err(|e| RpcError::Transport(format!("connect lock: {e}")))?;
        if let Some(conn) = self.live() {
            return Ok(conn);
        }
        let inner = &self.inner;
        if let Some(at) = inner.retry_at.get() {
            if Instant::now() < at {
                return Err(RpcError::Transport(format!(
                    "{} unreachable; next reconnect in {:?}",
                    inner.addr,
                    at - Instant::now()
                )));
            }
        }
        match runtime::connect(inner.addr, inner.config.connect_timeout).await {
            Ok(stream) => {
                inner.retry_at.set(None);
                inner.backoff.set(inner.config.backoff_min);
                let conn = self.start_connection(stream)?;
                *inner.conn.borrow_mut() = Some(conn.clone());
                Ok(conn)
            }
            Err(e) => {
                let backoff = inner.backoff.get();
                inner.retry_at.set(Some(Instant::now() + backoff));
                inner
                    .backoff
                    .set((backoff * 2).min(inner.config.backoff_max));
                Err(RpcError::Transport(format!(
                    "connect to {}: {e}",
                    inner.addr
                )))
            }
        }
    }

    fn live(&self) -> Option<Rc<Connection<Resp>>> {
        self.inner
            .conn
            .borrow()
            .as_ref()
            .filter(|c| !c.broken.get())
            .cloned()
    }

    fn start_connection(&self, stream: Stream) -> Result<Rc<Connection<Resp>>, RpcError> {
        let conn = Rc::new(Connection {
            outbox: Outbox::default(),
            pending: RefCell::new(HashMap::new()),
            broken: Cell::new(false),
            reader_fd: Cell::new(Some(stream.as_raw_fd())),
        });
        if let Some(hello) = &self.inner.config.hello {
            conn.outbox.push(FrameKind::Hello, 0, hello)?;
        }
        let (mut reader, mut writer) = futures_lite::io::split(stream);
        let writing = conn.clone();
        runtime::spawn(async move {
            if let Err(e) = writing.outbox.run_writer(&mut writer).await {
                writing.fail(&format!("write: {e}"));
            }
        });
        let reading = conn.clone();
        runtime::spawn(async move {
            let reason = read_responses(&reading, &mut reader).await;
            reading.fail(&reason);
            reading.reader_fd.set(None);
        });
        Ok(conn)
    }
}

/// Reader task body: fills reply slots until the connection fails; returns why it stopped.
async fn read_responses<Resp: DeserializeOwned, R: futures_lite::AsyncRead + Unpin>(
    conn: &Connection<Resp>,
    reader: &mut R,
) -> String {
    let mut decoder = FrameDecoder::new();
    loop {
        let n = match reader.read(decoder.spare(READ_CHUNK)).await {
            Ok(0) => return "connection closed by peer".into(),
            Ok(n) => n,
            Err(e) => return format!("read: {e}"),
        };
        if conn.broken.get() {
            return "connection abandoned".into();
        }
        decoder.commit(n);
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => return e.to_string(),
            };
            let reply = match frame.kind {
                FrameKind::Response => frame.decode::<Resp>(),
                FrameKind::Error => match frame.decode::<String>() {
                    Ok(message) => Err(RpcError::Remote(message)),
                    Err(e) => Err(e),
                },
                other => return format!("protocol error: unexpected {other:?} frame from server"),
            };
            // No slot: the call timed out already; the late answer is dropped.
            if let Some(slot) = conn.pending.borrow_mut().remove(&frame.id) {
                slot.send(reply);
            }
        }
    }
}
