//! A pipe: the data-path client of one gateway shard to one server shard, shared by every client
//! connection of the gateway shard.
//!
//! Unlike [`super::RpcClient`], a call here is not a future. [`Pipe::start`] appends the request
//! frame (written by the caller's encoder, straight into the pipe's output buffer) and records a
//! [`Completion`] and a tag; when the response arrives, the reader task hands the frame, still in its
//! read buffer, to `Completion::complete`. So a call costs no task, no future, no timer and no
//! allocation: the pending table is a queue indexed by request id (ids are consecutive), and one
//! sweep task per pipe, running only while calls are pending, expires the calls whose deadline
//! passed.
//!
//! Everything appended while the executor runs other tasks (every client connection of the shard
//! that read requests for this server shard) leaves in one write: the writer task is woken by the
//! first append and runs after them. Responses of one read are dispatched in one pass.
//!
//! The connection is opened on first use (its first frame is the [`Hello`] naming the server shard)
//! and again after it breaks. A break fails every pending call with [`RpcError::Transport`]; a
//! failed connect also makes calls fail at once until a backoff (doubling from `backoff_min` to
//! `backoff_max`) has passed, so a dead server costs callers no waiting.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};

use super::data_codec;
use super::frame::{encode_frame, encode_frame_with, Frame, FrameDecoder, FrameKind, Hello};
use super::messages::{DataRequest, DataResponse};
use super::sync::Notify;
use super::RpcError;
use crate::runtime;

/// Read size of the response reader.
const READ_CHUNK: usize = 64 << 10;

/// Receives the outcome of calls made through a [`Pipe`].
pub trait Completion {
    /// Called exactly once per call: with the response frame (kind `Response` or `Error`, its
    /// payload borrowed from the pipe's read buffer), or with why the call failed. Must not block;
    /// it runs inside the pipe's reader (or sweep) task.
    fn complete(&self, tag: u32, outcome: Result<Frame<'_>, RpcError>);
}

/// Pipe tuning.
#[derive(Clone, Debug)]
pub struct PipeConfig {
    pub connect_timeout: Duration,
    /// First wait after a failed connect; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How often pending calls are checked against their deadlines (the precision of timeouts).
    pub sweep_interval: Duration,
    /// Sent first on every connection.
    pub hello: Option<Hello>,
}

impl Default for PipeConfig {
    fn default() -> Self {
        PipeConfig {
            connect_timeout: Duration::from_secs(1),
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(500),
            sweep_interval: Duration::from_millis(20),
            hello: None,
        }
    }
}

/// The shard-local client of one server shard. Clones share the connection.
#[derive(Clone)]
pub struct Pipe {
    inner: Rc<Inner>,
}

struct Inner {
    addr: SocketAddr,
    config: PipeConfig,
    state: RefCell<State>,
    /// Wakes the writer of the current connection.
    writer: Notify,
    sweeping: Cell<bool>,
}

struct State {
    /// Frames waiting for the writer.
    out: Vec<u8>,
    /// Calls awaiting their response; entry `i` is request id `first_id + i` (`None` once done).
    pending: VecDeque<Option<Pending>>,
    first_id: u64,
    next_id: u64,
    link: Link,
    backoff: Duration,
    /// Bumped per connection: tasks of an older connection leave the state alone.
    generation: u64,
}

enum Link {
    Down,
    Connecting,
    Up,
    /// The last connect failed; calls fail at once until `at`.
    Retry {
        at: Instant,
        why: String,
    },
}

struct Pending {
    sink: Rc<dyn Completion>,
    tag: u32,
    deadline: Instant,
}

impl Pipe {
    /// A pipe to `addr`; it connects on the first call.
    pub fn new(addr: SocketAddr, config: PipeConfig) -> Pipe {
        let backoff = config.backoff_min;
        Pipe {
            inner: Rc::new(Inner {
                addr,
                config,
                state: RefCell::new(State {
                    out: Vec::new(),
                    pending: VecDeque::new(),
                    first_id: 1,
                    next_id: 1,
                    link: Link::Down,
                    backoff,
                    generation: 0,
                }),
                writer: Notify::default(),
                sweeping: Cell::new(false),
            }),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Whether the connection is up.
    pub fn is_connected(&self) -> bool {
        matches!(self.inner.state.borrow().link, Link::Up)
    }

    /// Calls awaiting a response.
    pub fn pending(&self) -> usize {
        let state = self.inner.state.borrow();
        state.pending.iter().filter(|p| p.is_some()).count()
    }

    /// Starts a call: `write` appends the request payload; `sink.complete(tag, ..)` is called with
    /// the outcome later (never from inside this function). Fails at once, without calling the sink,
    /// while the server is in connect backoff or when the frame cannot be encoded.
    pub fn start(
        &self,
        sink: &Rc<dyn Completion>,
        tag: u32,
        deadline: Instant,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), RpcError> {
        let inner = &self.inner;
        let mut state = inner.state.borrow_mut();
        match &state.link {
            Link::Up | Link::Connecting => {}
            Link::Down => self.connect(&mut state),
            Link::Retry { at, why } => {
                if Instant::now() < *at {
                    return Err(RpcError::Transport(format!(
                        "{} unreachable ({why}); next connect in {:?}",
                        inner.addr,
                        at.saturating_duration_since(Instant::now())
                    )));
                }
                self.connect(&mut state);
            }
        }
        let id = state.next_id;
        encode_frame_with(&mut state.out, FrameKind::Request, id, write)?;
        state.next_id += 1;
        state.pending.push_back(Some(Pending {
            sink: sink.clone(),
            tag,
            deadline,
        }));
        let up = matches!(state.link, Link::Up);
        drop(state);
        if up {
            inner.writer.notify();
        }
        if !inner.sweeping.replace(true) {
            runtime::spawn(sweep(inner.clone()));
        }
        Ok(())
    }

    /// A whole call as a future: for the paths that are not worth a hand-written state machine
    /// (retries, failover, flush_all). The request is hand-encoded when it is a get or a write.
    pub async fn call(
        &self,
        request: &DataRequest,
        limit: Duration,
    ) -> Result<DataResponse, RpcError> {
        let mut payload = Vec::new();
        data_codec::put_request(&mut payload, request)?;
        let slot = Rc::new(OneShot::default());
        let sink: Rc<dyn Completion> = slot.clone();
        self.start(&sink, 0, Instant::now() + limit, |out| {
            out.extend_from_slice(&payload)
        })?;
        std::future::poll_fn(|cx| match slot.result.borrow_mut().take() {
            Some(result) => Poll::Ready(result),
            None => {
                *slot.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Starts connecting (state is `Down` or an expired `Retry`); requests queue meanwhile.
    fn connect(&self, state: &mut State) {
        state.generation += 1;
        state.link = Link::Connecting;
        debug_assert!(state.out.is_empty());
        if let Some(hello) = &self.inner.config.hello {
            // Encoding a hello cannot fail (a short string and a number).
            let _ = encode_frame(&mut state.out, FrameKind::Hello, 0, hello);
        }
        runtime::spawn(run_connection(self.inner.clone(), state.generation));
    }
}

/// A [`Completion`] that keeps the decoded response for [`Pipe::call`].
#[derive(Default)]
struct OneShot {
    result: RefCell<Option<Result<DataResponse, RpcError>>>,
    waker: RefCell<Option<Waker>>,
}

impl Completion for OneShot {
    fn complete(&self, _tag: u32, outcome: Result<Frame<'_>, RpcError>) {
        let result = outcome.and_then(|frame| match frame.kind {
            FrameKind::Response => data_codec::decode_response_owned(frame.payload),
            _ => {
                Err(RpcError::Remote(frame.decode::<String>().unwrap_or_else(
                    |e| format!("undecodable error frame: {e}"),
                )))
            }
        });
        *self.result.borrow_mut() = Some(result);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }
}

impl Inner {
    /// Fails every pending call of connection `generation` and forgets its queued output.
    fn fail(&self, generation: u64, why: &str, next: Link) {
        let failed: Vec<Pending> = {
            let mut state = self.state.borrow_mut();
            if state.generation != generation {
                return;
            }
            state.link = next;
            state.out.clear();
            state.first_id = state.next_id;
            state.pending.drain(..).flatten().collect()
        };
        // The writer of this connection may be parked: let it see the new state and leave.
        self.writer.notify();
        for call in failed {
            call.sink
                .complete(call.tag, Err(RpcError::Transport(why.to_string())));
        }
    }

    /// Hands a response frame to its call, if the call is still waiting.
    fn dispatch(&self, frame: Frame<'_>) {
        let call = {
            let mut state = self.state.borrow_mut();
            let call = frame
                .id
                .checked_sub(state.first_id)
                .and_then(|index| usize::try_from(index).ok())
                .and_then(|index| state.pending.get_mut(index))
                .and_then(Option::take);
            while let Some(None) = state.pending.front() {
                state.pending.pop_front();
                state.first_id += 1;
            }
            call
        };
        // No call: it timed out already and the late answer is dropped.
        if let Some(call) = call {
            call.sink.complete(call.tag, Ok(frame));
        }
    }
}

/// One connection's life: connect, then write and read until either side fails.
async fn run_connection(inner: Rc<Inner>, generation: u64) {
    let connected = runtime::connect(inner.addr, inner.config.connect_timeout).await;
    let stream = match connected {
        Ok(stream) => stream,
        Err(e) => {
            let why = format!("connect to {}: {e}", inner.addr);
            let at = {
                let mut state = inner.state.borrow_mut();
                let backoff = state.backoff;
                state.backoff = (backoff * 2).min(inner.config.backoff_max);
                Instant::now() + backoff
            };
            inner.fail(
                generation,
                &why,
                Link::Retry {
                    at,
                    why: why.clone(),
                },
            );
            return;
        }
    };
    {
        let mut state = inner.state.borrow_mut();
        if state.generation != generation {
            return;
        }
        state.link = Link::Up;
        state.backoff = inner.config.backoff_min;
    }
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let why = futures_lite::future::or(
        write_loop(&inner, generation, &mut writer),
        read_loop(&inner, generation, &mut reader),
    )
    .await;
    inner.fail(generation, &why, Link::Down);
}

/// Writes whatever is queued, one write per batch, until the connection fails or is replaced.
async fn write_loop<W: futures_lite::AsyncWrite + Unpin>(
    inner: &Inner,
    generation: u64,
    writer: &mut W,
) -> String {
    let mut batch = Vec::new();
    loop {
        {
            let mut state = inner.state.borrow_mut();
            if state.generation != generation || !matches!(state.link, Link::Up) {
                return "connection replaced".into();
            }
            std::mem::swap(&mut state.out, &mut batch);
        }
        if batch.is_empty() {
            inner.writer.notified().await;
            continue;
        }
        if let Err(e) = writer.write_all(&batch).await {
            return format!("write to {}: {e}", inner.addr);
        }
        batch.clear();
        if batch.capacity() > 4 * READ_CHUNK {
            batch = Vec::new();
        }
    }
}

/// Decodes responses and completes their calls until the connection fails.
async fn read_loop<R: futures_lite::AsyncRead + Unpin>(
    inner: &Inner,
    generation: u64,
    reader: &mut R,
) -> String {
    let mut decoder = FrameDecoder::new();
    loop {
        let n = match reader.read(decoder.spare(READ_CHUNK)).await {
            Ok(0) => return format!("{} closed the connection", inner.addr),
            Ok(n) => n,
            Err(e) => return format!("read from {}: {e}", inner.addr),
        };
        if inner.state.borrow().generation != generation {
            return "connection replaced".into();
        }
        decoder.commit(n);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => match frame.kind {
                    FrameKind::Response | FrameKind::Error => inner.dispatch(frame),
                    other => return format!("unexpected {other:?} frame from {}", inner.addr),
                },
                Ok(None) => break,
                Err(e) => return format!("from {}: {e}", inner.addr),
            }
        }
    }
}

/// Expires pending calls whose deadline passed; runs while any call is pending.
async fn sweep(inner: Rc<Inner>) {
    loop {
        runtime::sleep(inner.config.sweep_interval).await;
        let now = Instant::now();
        let expired: Vec<Pending> = {
            let mut state = inner.state.borrow_mut();
            let mut expired = Vec::new();
            for entry in state.pending.iter_mut() {
                if entry.as_ref().is_some_and(|call| call.deadline <= now) {
                    expired.extend(entry.take());
                }
            }
            while let Some(None) = state.pending.front() {
                state.pending.pop_front();
                state.first_id += 1;
            }
            if state.pending.is_empty() {
                inner.sweeping.set(false);
            }
            expired
        };
        for call in expired {
            call.sink.complete(call.tag, Err(RpcError::Timeout));
        }
        if !inner.sweeping.get() {
            return;
        }
    }
}
